//! Test certificates, generated at test time (never committed): a
//! throwaway CA, a server certificate signed by it and a client
//! certificate signed by it, as PEM files in a temporary directory.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tempfile::TempDir;
use tokio_postgres_rustls::MakeRustlsConnect;

/// Host names and addresses the server certificate is valid for.
#[allow(dead_code)]
pub const SERVER_NAMES: &[&str] = &["localhost", "127.0.0.1", "::1"];

/// A throwaway CA, a server certificate for `localhost` and 127.0.0.1
/// (and ::1) signed by it, and a client certificate (CN = the given user)
/// signed by it, written as PEM files into a temp dir that lives as long
/// as this value. Keys are ECDSA P-256 (PKCS#8), signatures
/// ecdsa-with-SHA256.
#[allow(dead_code)]
#[derive(Debug)]
pub struct TestCerts {
    /// The directory holding the files (removed on drop).
    pub dir: TempDir,
    /// The CA certificate (`ca.crt`).
    pub ca: PathBuf,
    /// The server certificate (`server.crt`).
    pub server_cert: PathBuf,
    /// The server private key (`server.key`).
    pub server_key: PathBuf,
    /// The client certificate (`client.crt`, CN = the user).
    pub client_cert: PathBuf,
    /// The client private key (`client.key`).
    pub client_key: PathBuf,
}

#[allow(dead_code)]
impl TestCerts {
    /// Generates the CA and both certificates and writes them out.
    pub fn generate(client_user: &str) -> TestCerts {
        let dir = tempfile::Builder::new()
            .prefix("pgtarn-certs-")
            .tempdir()
            .expect("create certificate temp dir");
        let (ca_pem, issuer) = new_ca();
        let server = new_leaf(
            &issuer,
            SERVER_NAMES,
            "localhost",
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let client = new_leaf(
            &issuer,
            &[],
            client_user,
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        let d = dir.path();
        TestCerts {
            ca: write(d, "ca.crt", &ca_pem),
            server_cert: write(d, "server.crt", &server.0),
            server_key: write(d, "server.key", &server.1),
            client_cert: write(d, "client.crt", &client.0),
            client_key: write(d, "client.key", &client.1),
            dir,
        }
    }

    /// Copies the server cert/key into `dir` as `server.crt` and
    /// `server.key` with mode 0600, owned by `uid` when given (Postgres'
    /// `ssl_cert_file`/`ssl_key_file` must be owned by the server's OS user
    /// and not group/world-readable). Returns (cert, key) paths.
    pub fn install_for_postgres(&self, dir: &Path, uid: Option<u32>) -> (PathBuf, PathBuf) {
        let cert = install(&self.server_cert, &dir.join("server.crt"), uid);
        let key = install(&self.server_key, &dir.join("server.key"), uid);
        (cert, key)
    }

    /// Copies the CA certificate into `dir` as `root.crt` (mode 0600, owned
    /// by `uid` when given), for Postgres' `ssl_ca_file` (client
    /// certificate authentication). Returns its path.
    pub fn install_ca_for_postgres(&self, dir: &Path, uid: Option<u32>) -> PathBuf {
        install(&self.ca, &dir.join("root.crt"), uid)
    }

    /// A tokio-postgres TLS connector trusting the CA (host names are
    /// verified); with `with_client_cert`, it presents the client
    /// certificate.
    pub fn tokio_postgres_tls(&self, with_client_cert: bool) -> MakeRustlsConnect {
        MakeRustlsConnect::new(self.client_config(with_client_cert))
    }

    /// The rustls client config behind [`TestCerts::tokio_postgres_tls`].
    pub fn client_config(&self, with_client_cert: bool) -> rustls::ClientConfig {
        pgtarn::tls::install_crypto_provider();
        let mut roots = rustls::RootCertStore::empty();
        for cert in read_certs(&self.ca) {
            roots.add(cert).expect("add test CA to root store");
        }
        let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
        if !with_client_cert {
            return builder.with_no_client_auth();
        }
        let key = PrivateKeyDer::from_pem_file(&self.client_key).expect("read client key");
        builder
            .with_client_auth_cert(read_certs(&self.client_cert), key)
            .expect("client certificate and key")
    }
}

/// A self-signed CA certificate (PEM) and its issuer.
fn new_ca() -> (String, Issuer<'static, KeyPair>) {
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "pgtarn test CA");
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate().expect("generate CA key");
    let cert = params.self_signed(&key).expect("self-sign CA");
    (cert.pem(), Issuer::new(params, key))
}

/// A certificate (PEM) for `names` with CN `cn` signed by `issuer`, and its
/// key (PKCS#8 PEM).
fn new_leaf(
    issuer: &Issuer<'static, KeyPair>,
    names: &[&str],
    cn: &str,
    usage: ExtendedKeyUsagePurpose,
) -> (String, String) {
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let mut params = CertificateParams::new(names).expect("valid subject names");
    params.distinguished_name.push(DnType::CommonName, cn);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    params.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate().expect("generate leaf key");
    let cert = params.signed_by(&key, issuer).expect("sign leaf");
    (cert.pem(), key.serialize_pem())
}

fn write(dir: &Path, name: &str, pem: &str) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, pem).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path
}

/// Copies `from` to `to` with mode 0600, owned by `uid` when given.
fn install(from: &Path, to: &Path, uid: Option<u32>) -> PathBuf {
    fs::copy(from, to).unwrap_or_else(|e| panic!("copy to {}: {e}", to.display()));
    fs::set_permissions(to, fs::Permissions::from_mode(0o600))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", to.display()));
    if let Some(uid) = uid {
        std::os::unix::fs::chown(to, Some(uid), None)
            .unwrap_or_else(|e| panic!("chown {}: {e}", to.display()));
    }
    to.to_owned()
}

fn read_certs(path: &Path) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}
