//! TLS building blocks, on rustls with the ring crypto provider.
//!
//! * Client side of pgtarn ([`server_tls`]): the [`ServerTls`] acceptor
//!   presented to applications, optionally demanding client certificates
//!   (mTLS), plus the `tls-server-end-point` channel-binding hash that
//!   SCRAM-SHA-256-PLUS needs.
//! * Server side of pgtarn ([`upstream_tls`]): the rustls client config for
//!   connecting to Postgres, with libpq's `sslmode` semantics
//!   ([`UpstreamMode`]).
//!
//! Certificates and keys are read from PEM files; every error names the
//! file and what is wrong with it ([`TlsError`]).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Once};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig,
    SignatureScheme,
};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use sha2::{Digest, Sha224, Sha256, Sha384, Sha512};
use tokio_rustls::TlsAcceptor;

/// The ALPN protocol name of PostgreSQL (sent by PostgreSQL 17+ clients,
/// mandatory for their direct SSL connections).
pub const ALPN_POSTGRESQL: &[u8] = b"postgresql";

/// Installs the ring crypto provider as rustls' process default, once;
/// later calls are no-ops. Call at start-up before building any config.
pub fn install_crypto_provider() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // Err means another provider is already installed: keep it.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// The process-default provider (ring unless someone installed another).
fn provider() -> Arc<CryptoProvider> {
    install_crypto_provider();
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()))
}

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be opened or read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file is not well-formed PEM.
    #[error("{}: malformed PEM: {message}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What the PEM parser reported.
        message: String,
    },
    /// A certificate file holds no `CERTIFICATE` PEM block.
    #[error("{}: no certificate found (expected a PEM \"BEGIN CERTIFICATE\" block)", path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// A key file holds no private key PEM block.
    #[error("{}: no private key found (expected a PEM \"BEGIN PRIVATE KEY\", \"BEGIN RSA PRIVATE KEY\" or \"BEGIN EC PRIVATE KEY\" block)", path.display())]
    NoKey {
        /// The file.
        path: PathBuf,
    },
    /// A CA file holds a certificate that cannot be used as a trust anchor.
    #[error("{}: unusable CA certificate: {message}", path.display())]
    BadCa {
        /// The file.
        path: PathBuf,
        /// What rustls reported.
        message: String,
    },
    /// `verify-ca` / `verify-full` without a CA file.
    #[error("sslmode {mode} needs a CA certificate file to verify the server against")]
    MissingCa {
        /// The mode (`verify-ca` or `verify-full`).
        mode: &'static str,
    },
    /// A host that is neither a DNS name nor an IP address.
    #[error("{host:?} is not a valid DNS name or IP address for TLS")]
    InvalidServerName {
        /// The host as given.
        host: String,
    },
    /// rustls refused the configuration (the message names the files).
    #[error("TLS configuration: {0}")]
    Rustls(String),
}

/// What pgtarn presents to clients.
#[derive(Clone)]
pub struct ServerTls {
    /// Accepts TLS connections from clients.
    pub acceptor: TlsAcceptor,
    /// The `tls-server-end-point` channel-binding data for
    /// SCRAM-SHA-256-PLUS: the hash of pgtarn's (leaf) certificate per
    /// RFC 5929 §4.1 (SHA-256 when its signature algorithm uses MD5, SHA-1
    /// or SHA-256, otherwise that algorithm's hash; SHA-256 when unknown).
    pub end_point_hash: Vec<u8>,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("end_point_hash_len", &self.end_point_hash.len())
            .finish_non_exhaustive()
    }
}

/// Builds the client-facing config from PEM files: `cert` (leaf first,
/// then any intermediates) and `key`. With `client_ca`, clients must
/// present a certificate signed by it (mTLS); otherwise no client
/// certificate is requested. ALPN `postgresql` is advertised but not
/// required: a client offering no ALPN is accepted, one offering only other
/// protocols is refused (`no_application_protocol`), as PostgreSQL does.
pub fn server_tls(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<ServerTls, TlsError> {
    let chain = load_certs(cert)?;
    let end_point_hash = end_point_hash(&chain[0]);
    let key_der = load_key(key)?;
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    let builder = match client_ca {
        Some(ca) => builder.with_client_cert_verifier(client_verifier(ca, provider)?),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key_der)
        .map_err(|e| TlsError::Rustls(format!("{} with {}: {e}", cert.display(), key.display())))?;
    config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
    Ok(ServerTls {
        acceptor: TlsAcceptor::from(Arc::new(config)),
        end_point_hash,
    })
}

/// Requires client certificates signed by a CA in `ca`.
fn client_verifier(
    ca: &Path,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    WebPkiClientVerifier::builder_with_provider(Arc::new(root_store(ca)?), provider)
        .build()
        .map_err(|e| TlsError::Rustls(format!("client CA {}: {e}", ca.display())))
}

/// libpq's `sslmode` for pgtarn → Postgres (defined with the config).
pub use crate::config::ServerTlsMode as UpstreamMode;

/// The rustls client config for connecting to Postgres in `mode` (`None`
/// for Disable), with libpq's semantics: Prefer/Require encrypt but accept
/// any certificate (handshake signatures are still verified); VerifyCa
/// checks the chain against `ca` but not the host name; VerifyFull checks
/// both (against the [`ServerName`] given when connecting, see
/// [`server_name`]). `ca` is required for VerifyCa/VerifyFull and ignored
/// otherwise. `cert_key` is an optional client certificate and key (PEM
/// files) for Postgres' `clientcert` authentication. ALPN `postgresql` is
/// offered, as libpq 17 does.
pub fn upstream_tls(
    mode: UpstreamMode,
    ca: Option<&Path>,
    cert_key: Option<(&Path, &Path)>,
) -> Result<Option<Arc<ClientConfig>>, TlsError> {
    let provider = provider();
    let verifier: Arc<dyn ServerCertVerifier> = match mode {
        UpstreamMode::Disable => return Ok(None),
        UpstreamMode::Prefer | UpstreamMode::Require => Arc::new(AcceptAnyCertificate {
            algorithms: provider.signature_verification_algorithms,
        }),
        UpstreamMode::VerifyCa => Arc::new(IgnoreHostName(webpki_verifier(mode, ca, &provider)?)),
        UpstreamMode::VerifyFull => webpki_verifier(mode, ca, &provider)?,
    };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match cert_key {
        Some((cert, key)) => builder
            .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
            .map_err(|e| {
                TlsError::Rustls(format!("{} with {}: {e}", cert.display(), key.display()))
            })?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
    Ok(Some(Arc::new(config)))
}

/// The standard verifier (chain and host name) against the CA in `ca`.
fn webpki_verifier(
    mode: UpstreamMode,
    ca: Option<&Path>,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<WebPkiServerVerifier>, TlsError> {
    let ca = ca.ok_or(TlsError::MissingCa {
        mode: mode.as_str(),
    })?;
    WebPkiServerVerifier::builder_with_provider(Arc::new(root_store(ca)?), provider.clone())
        .build()
        .map_err(|e| TlsError::Rustls(format!("CA {}: {e}", ca.display())))
}

/// The ServerName for a host string (IP address or DNS name; an IPv6
/// address may be written in brackets).
pub fn server_name(host: &str) -> Result<ServerName<'static>, TlsError> {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    ServerName::try_from(bare.to_owned()).map_err(|_| TlsError::InvalidServerName {
        host: host.to_owned(),
    })
}

/// sslmode prefer/require: any certificate is accepted, but the handshake
/// signatures must still be made with its key.
#[derive(Debug)]
struct AcceptAnyCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// sslmode verify-ca: the standard verifier with only the host-name
/// mismatch forgiven (webpki checks the name last, after the chain).
#[derive(Debug)]
struct IgnoreHostName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for IgnoreHostName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified =
            self.0
                .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now);
        match verified {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Every certificate in the PEM file `path` (at least one).
fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, e))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) in the PEM file `path`.
fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        pem::Error::NoItemsFound => TlsError::NoKey {
            path: path.to_owned(),
        },
        e => pem_error(path, e),
    })
}

/// A trust store of every certificate in the PEM file `path`.
fn root_store(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|e| TlsError::BadCa {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
    }
    Ok(roots)
}

fn pem_error(path: &Path, error: pem::Error) -> TlsError {
    let path = path.to_owned();
    match error {
        pem::Error::Io(source) => TlsError::Read { path, source },
        other => TlsError::Pem {
            path,
            message: other.to_string(),
        },
    }
}

/// The hash function of `tls-server-end-point` channel binding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EndPointHash {
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

impl EndPointHash {
    fn digest(self, data: &[u8]) -> Vec<u8> {
        match self {
            EndPointHash::Sha224 => Sha224::digest(data).to_vec(),
            EndPointHash::Sha256 => Sha256::digest(data).to_vec(),
            EndPointHash::Sha384 => Sha384::digest(data).to_vec(),
            EndPointHash::Sha512 => Sha512::digest(data).to_vec(),
        }
    }
}

/// RFC 5929 §4.1: the certificate hashed with its signature algorithm's
/// hash, MD5 and SHA-1 upgraded to SHA-256; SHA-256 when unknown (EdDSA).
fn end_point_hash(leaf: &CertificateDer<'_>) -> Vec<u8> {
    signature_hash(leaf)
        .unwrap_or(EndPointHash::Sha256)
        .digest(leaf)
}

/// DER tags used below.
const SEQUENCE: u8 = 0x30;
const OID: u8 = 0x06;
const CONTEXT_0: u8 = 0xa0;

/// The channel-binding hash for a signature algorithm OID (DER contents).
fn signature_oid_hash(oid: &[u8]) -> Option<EndPointHash> {
    use EndPointHash as H;
    match oid {
        // {md5,sha1,sha256,sha384,sha512,sha224}WithRSAEncryption:
        // 1.2.840.113549.1.1.{4,5,11,12,13,14}
        [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 1, 1, n] => match n {
            4 | 5 | 11 => Some(H::Sha256),
            12 => Some(H::Sha384),
            13 => Some(H::Sha512),
            14 => Some(H::Sha224),
            _ => None,
        },
        // ecdsa-with-SHA1: 1.2.840.10045.4.1; dsa-with-sha1: 1.2.840.10040.4.3
        [0x2a, 0x86, 0x48, 0xce, 0x3d, 4, 1] | [0x2a, 0x86, 0x48, 0xce, 0x38, 4, 3] => {
            Some(H::Sha256)
        }
        // ecdsa-with-SHA{224,256,384,512}: 1.2.840.10045.4.3.{1,2,3,4}
        [0x2a, 0x86, 0x48, 0xce, 0x3d, 4, 3, n] => sha2_by_index(*n),
        // dsa-with-sha{224,256}: 2.16.840.1.101.3.4.3.{1,2}
        [0x60, 0x86, 0x48, 1, 0x65, 3, 4, 3, n @ (1 | 2)] => sha2_by_index(*n),
        _ => None,
    }
}

/// The channel-binding hash for a digest algorithm OID (DER contents), as
/// found in RSASSA-PSS parameters.
fn digest_oid_hash(oid: &[u8]) -> Option<EndPointHash> {
    match oid {
        // sha1: 1.3.14.3.2.26
        [0x2b, 0x0e, 3, 2, 0x1a] => Some(EndPointHash::Sha256),
        // sha256, sha384, sha512, sha224: 2.16.840.1.101.3.4.2.{1,2,3,4}
        [0x60, 0x86, 0x48, 1, 0x65, 3, 4, 2, n] => match n {
            1 => Some(EndPointHash::Sha256),
            2 => Some(EndPointHash::Sha384),
            3 => Some(EndPointHash::Sha512),
            4 => Some(EndPointHash::Sha224),
            _ => None,
        },
        _ => None,
    }
}

/// SHA-224/256/384/512 for 1/2/3/4 (the last arc of the ECDSA and DSA
/// signature OIDs).
fn sha2_by_index(n: u8) -> Option<EndPointHash> {
    match n {
        1 => Some(EndPointHash::Sha224),
        2 => Some(EndPointHash::Sha256),
        3 => Some(EndPointHash::Sha384),
        4 => Some(EndPointHash::Sha512),
        _ => None,
    }
}

/// id-RSASSA-PSS (1.2.840.113549.1.1.10): the hash is in the parameters.
const RSASSA_PSS: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 1, 1, 10];

/// The hash of the certificate's `signatureAlgorithm` (`Certificate ::=
/// SEQUENCE { tbsCertificate, signatureAlgorithm, signatureValue }`).
fn signature_hash(cert: &[u8]) -> Option<EndPointHash> {
    let (cert, _) = der_expect(cert, SEQUENCE)?;
    let (_tbs, rest) = der_expect(cert, SEQUENCE)?;
    let (algorithm, _) = der_expect(rest, SEQUENCE)?;
    let (oid, params) = der_expect(algorithm, OID)?;
    if oid == RSASSA_PSS {
        return pss_hash(params);
    }
    signature_oid_hash(oid)
}

/// `RSASSA-PSS-params ::= SEQUENCE { hashAlgorithm [0] AlgorithmIdentifier
/// DEFAULT sha1, ... }`.
fn pss_hash(params: &[u8]) -> Option<EndPointHash> {
    let (params, _) = der_expect(params, SEQUENCE)?;
    match der_tlv(params) {
        Some((CONTEXT_0, hash_algorithm, _)) => {
            let (algorithm, _) = der_expect(hash_algorithm, SEQUENCE)?;
            let (oid, _) = der_expect(algorithm, OID)?;
            digest_oid_hash(oid)
        }
        _ => Some(EndPointHash::Sha256),
    }
}

/// Splits the DER element at the start of `input` into (tag, contents,
/// rest). Single-byte tags and definite lengths only (all DER needs here).
fn der_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let (len_bytes, rest) = rest.split_at(n);
        let len = len_bytes
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, rest)
    };
    if rest.len() < len {
        return None;
    }
    let (contents, rest) = rest.split_at(len);
    Some((tag, contents, rest))
}

/// Like [`der_tlv`], but only if the element has tag `tag`.
fn der_expect(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (found, contents, rest) = der_tlv(input)?;
    (found == tag).then_some((contents, rest))
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::time::Duration;

    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
        SignatureAlgorithm,
    };
    use tempfile::TempDir;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::TlsConnector;

    use super::*;

    /// A CA with a server certificate (localhost, 127.0.0.1) and a client
    /// certificate (CN app); a second, unrelated CA with its own client
    /// certificate; and a self-signed certificate. PEM files in `dir`.
    struct Pki {
        dir: TempDir,
        ca: PathBuf,
        server_cert: PathBuf,
        server_key: PathBuf,
        client_cert: PathBuf,
        client_key: PathBuf,
        other_ca: PathBuf,
        other_client_cert: PathBuf,
        other_client_key: PathBuf,
        self_signed_cert: PathBuf,
        self_signed_key: PathBuf,
    }

    impl Pki {
        fn new() -> Pki {
            let dir = tempfile::tempdir().expect("tempdir");
            let d = dir.path();
            let (ca, issuer) = new_ca("pgtarn test CA");
            let (other_ca, other_issuer) = new_ca("other CA");
            let p256 = &rcgen::PKCS_ECDSA_P256_SHA256;
            let server = new_leaf(&issuer, &["localhost", "127.0.0.1"], "localhost", p256);
            let client = new_leaf(&issuer, &[], "app", p256);
            let other_client = new_leaf(&other_issuer, &[], "app", p256);
            let key = KeyPair::generate().expect("key");
            let self_signed = CertificateParams::new(vec!["localhost".to_owned()])
                .and_then(|p| p.self_signed(&key))
                .expect("self-signed");
            Pki {
                ca: write(d, "ca.crt", &ca.pem()),
                server_cert: write(d, "server.crt", &server.0.pem()),
                server_key: write(d, "server.key", &server.1.serialize_pem()),
                client_cert: write(d, "client.crt", &client.0.pem()),
                client_key: write(d, "client.key", &client.1.serialize_pem()),
                other_ca: write(d, "other-ca.crt", &other_ca.pem()),
                other_client_cert: write(d, "other.crt", &other_client.0.pem()),
                other_client_key: write(d, "other.key", &other_client.1.serialize_pem()),
                self_signed_cert: write(d, "self.crt", &self_signed.pem()),
                self_signed_key: write(d, "self.key", &key.serialize_pem()),
                dir,
            }
        }

        fn server(&self, client_ca: Option<&Path>) -> ServerTls {
            server_tls(&self.server_cert, &self.server_key, client_ca).expect("server_tls")
        }

        fn client_auth(&self) -> Option<(&Path, &Path)> {
            Some((&self.client_cert, &self.client_key))
        }
    }

    fn new_ca(name: &str) -> (rcgen::Certificate, Issuer<'static, KeyPair>) {
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA cert");
        (cert, Issuer::new(params, key))
    }

    fn new_leaf(
        issuer: &Issuer<'static, KeyPair>,
        names: &[&str],
        cn: &str,
        alg: &'static SignatureAlgorithm,
    ) -> (rcgen::Certificate, KeyPair) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("names");
        params.distinguished_name.push(DnType::CommonName, cn);
        let key = KeyPair::generate_for(alg).expect("leaf key");
        let cert = params.signed_by(&key, issuer).expect("leaf cert");
        (cert, key)
    }

    fn write(dir: &Path, name: &str, pem: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, pem).expect("write PEM");
        path
    }

    /// What the client saw of a successful handshake.
    #[derive(Debug)]
    struct Seen {
        alpn: Option<Vec<u8>>,
        leaf: Vec<u8>,
    }

    /// Runs a TLS handshake over an in-memory pipe and exchanges one
    /// message. Returns (server: number of client certificates, client).
    async fn handshake(
        server: &ServerTls,
        client: Arc<ClientConfig>,
        host: &str,
    ) -> (io::Result<usize>, io::Result<Seen>) {
        let (client_io, server_io) = tokio::io::duplex(1 << 16);
        let name = server_name(host).expect("server name");
        let serve = async {
            let mut tls = server.acceptor.accept(server_io).await?;
            tls.write_all(b"ok").await?;
            tls.flush().await?;
            Ok(tls.get_ref().1.peer_certificates().map_or(0, <[_]>::len))
        };
        let connect = async {
            let mut tls = TlsConnector::from(client).connect(name, client_io).await?;
            let mut buf = [0u8; 2];
            tls.read_exact(&mut buf).await?;
            assert_eq!(&buf, b"ok");
            let conn = tls.get_ref().1;
            Ok(Seen {
                alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
                leaf: conn.peer_certificates().expect("server cert")[0].to_vec(),
            })
        };
        tokio::time::timeout(Duration::from_secs(10), async {
            tokio::join!(serve, connect)
        })
        .await
        .expect("handshake timed out")
    }

    fn rustls_error(e: &io::Error) -> Option<&rustls::Error> {
        e.get_ref()?.downcast_ref::<rustls::Error>()
    }

    fn upstream(mode: UpstreamMode, ca: Option<&Path>) -> Arc<ClientConfig> {
        upstream_tls(mode, ca, None)
            .expect("upstream_tls")
            .expect("a config")
    }

    #[test]
    fn install_crypto_provider_is_idempotent() {
        install_crypto_provider();
        install_crypto_provider();
        assert!(CryptoProvider::get_default().is_some());
    }

    #[test]
    fn server_tls_loads_generated_cert_and_key() {
        let pki = Pki::new();
        let tls = pki.server(None);
        assert_eq!(tls.end_point_hash.len(), 32);
        assert!(format!("{tls:?}").contains("ServerTls"));
        assert!(server_tls(&pki.server_cert, &pki.server_key, Some(&pki.ca)).is_ok());
    }

    #[test]
    fn missing_file_is_read_error_naming_path() {
        let pki = Pki::new();
        let missing = pki.dir.path().join("nope.crt");
        let err = server_tls(&missing, &pki.server_key, None).unwrap_err();
        assert!(
            matches!(&err, TlsError::Read { path, .. } if *path == missing),
            "{err:?}"
        );
        assert!(err.to_string().contains("nope.crt"), "{err}");
        let err = server_tls(&pki.server_cert, &missing, None).unwrap_err();
        assert!(
            matches!(&err, TlsError::Read { path, .. } if *path == missing),
            "{err:?}"
        );
    }

    #[test]
    fn pem_without_key_is_no_key_error_naming_path() {
        let pki = Pki::new();
        let err = server_tls(&pki.server_cert, &pki.server_cert, None).unwrap_err();
        assert!(
            matches!(&err, TlsError::NoKey { path } if *path == pki.server_cert),
            "{err:?}"
        );
        assert!(err.to_string().contains("server.crt"), "{err}");
    }

    #[test]
    fn pem_without_certificate_is_no_certificate_error() {
        let pki = Pki::new();
        let err = server_tls(&pki.server_key, &pki.server_key, None).unwrap_err();
        assert!(
            matches!(&err, TlsError::NoCertificate { path } if *path == pki.server_key),
            "{err:?}"
        );
        let garbage = write(pki.dir.path(), "garbage.pem", "not PEM at all\n");
        let err = server_tls(&garbage, &pki.server_key, None).unwrap_err();
        assert!(matches!(err, TlsError::NoCertificate { .. }), "{err:?}");
    }

    #[test]
    fn truncated_pem_is_pem_error() {
        let pki = Pki::new();
        let text = std::fs::read_to_string(&pki.server_cert).expect("read");
        let cut = write(pki.dir.path(), "cut.crt", &text[..text.len() / 2]);
        let err = server_tls(&cut, &pki.server_key, None).unwrap_err();
        assert!(
            matches!(&err, TlsError::Pem { path, .. } if *path == cut),
            "{err:?}"
        );
    }

    #[test]
    fn key_not_matching_certificate_is_rejected() {
        let pki = Pki::new();
        let err = server_tls(&pki.server_cert, &pki.client_key, None).unwrap_err();
        assert!(matches!(err, TlsError::Rustls(_)), "{err:?}");
        let text = err.to_string();
        assert!(
            text.contains("server.crt") && text.contains("client.key"),
            "{text}"
        );
    }

    #[test]
    fn end_point_hash_is_sha256_of_leaf_for_ecdsa_p256_sha256() {
        let pki = Pki::new();
        let leaf = load_certs(&pki.server_cert).expect("certs").remove(0);
        assert_eq!(signature_hash(&leaf), Some(EndPointHash::Sha256));
        let expected = Sha256::digest(leaf.as_ref()).to_vec();
        assert_eq!(pki.server(None).end_point_hash, expected);
    }

    #[test]
    fn end_point_hash_follows_signature_hash() {
        let (_, issuer) = new_ca("CA");
        let (p384, _) = new_leaf(&issuer, &["localhost"], "x", &rcgen::PKCS_ECDSA_P384_SHA384);
        let (_, ed_issuer) = {
            let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("ed25519");
            let params = CertificateParams::default();
            let cert = params.self_signed(&key).expect("cert");
            (cert, Issuer::new(params, key))
        };
        let (ed, _) = new_leaf(&ed_issuer, &["localhost"], "x", &rcgen::PKCS_ED25519);
        // The leaf's signature algorithm is the issuer's: the CA is P-256.
        assert_eq!(signature_hash(p384.der()), Some(EndPointHash::Sha256));
        assert_eq!(signature_hash(ed.der()), None);
        assert_eq!(
            end_point_hash(ed.der()),
            Sha256::digest(ed.der().as_ref()).to_vec()
        );
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).expect("key");
        let own = CertificateParams::default()
            .self_signed(&key)
            .expect("cert");
        assert_eq!(signature_hash(own.der()), Some(EndPointHash::Sha384));
        assert_eq!(
            end_point_hash(own.der()),
            Sha384::digest(own.der().as_ref()).to_vec()
        );
    }

    /// A minimal certificate-shaped DER: SEQUENCE { SEQUENCE {},
    /// SEQUENCE { OID, params }, BIT STRING }.
    fn fake_cert(oid: &[u8], params: &[u8]) -> Vec<u8> {
        let mut alg = vec![OID, oid.len() as u8];
        alg.extend_from_slice(oid);
        alg.extend_from_slice(params);
        let mut body = vec![SEQUENCE, 0, SEQUENCE, alg.len() as u8];
        body.extend_from_slice(&alg);
        body.extend_from_slice(&[0x03, 1, 0]);
        let mut cert = vec![SEQUENCE, 0x81, body.len() as u8];
        cert.extend_from_slice(&body);
        cert
    }

    #[test]
    fn signature_hash_table_and_pss_parameters() {
        let rsa = |n: u8| [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 1, 1, n];
        let null = [0x05, 0];
        // md5WithRSA, sha1WithRSA, sha256/384/512WithRSA.
        for (n, expected) in [
            (4, EndPointHash::Sha256),
            (5, EndPointHash::Sha256),
            (11, EndPointHash::Sha256),
            (12, EndPointHash::Sha384),
            (13, EndPointHash::Sha512),
        ] {
            assert_eq!(
                signature_hash(&fake_cert(&rsa(n), &null)),
                Some(expected),
                "rsa oid {n}"
            );
        }
        let sha384 = [0x60, 0x86, 0x48, 1, 0x65, 3, 4, 2, 2];
        let mut hash_alg = vec![SEQUENCE, 11, OID, 9];
        hash_alg.extend_from_slice(&sha384);
        let mut pss = vec![SEQUENCE, 15, CONTEXT_0, 13];
        pss.extend_from_slice(&hash_alg);
        assert_eq!(
            signature_hash(&fake_cert(&rsa(10), &pss)),
            Some(EndPointHash::Sha384)
        );
        let pss_default = [SEQUENCE, 0];
        assert_eq!(
            signature_hash(&fake_cert(&rsa(10), &pss_default)),
            Some(EndPointHash::Sha256)
        );
        let ecdsa = |n: u8| [0x2a, 0x86, 0x48, 0xce, 0x3d, 4, 3, n];
        assert_eq!(signature_oid_hash(&ecdsa(1)), Some(EndPointHash::Sha224));
        assert_eq!(signature_oid_hash(&ecdsa(4)), Some(EndPointHash::Sha512));
        assert_eq!(signature_oid_hash(&ecdsa(9)), None);
        assert_eq!(
            signature_oid_hash(&[0x2a, 0x86, 0x48, 0xce, 0x3d, 4, 1]),
            Some(EndPointHash::Sha256)
        );
        assert_eq!(
            signature_oid_hash(&[0x2a, 0x86, 0x48, 0xce, 0x38, 4, 3]),
            Some(EndPointHash::Sha256)
        );
        assert_eq!(
            signature_oid_hash(&[0x60, 0x86, 0x48, 1, 0x65, 3, 4, 3, 2]),
            Some(EndPointHash::Sha256)
        );
        assert_eq!(signature_oid_hash(&[0x2b, 0x65, 0x70]), None); // Ed25519
        assert_eq!(
            digest_oid_hash(&[0x2b, 0x0e, 3, 2, 0x1a]),
            Some(EndPointHash::Sha256)
        );
        assert_eq!(
            digest_oid_hash(&[0x60, 0x86, 0x48, 1, 0x65, 3, 4, 2, 3]),
            Some(EndPointHash::Sha512)
        );
        assert_eq!(signature_hash(b"\x30\x05\x30\x00"), None);
        assert_eq!(signature_hash(&[]), None);
        assert_eq!(EndPointHash::Sha512.digest(b"x").len(), 64);
        assert_eq!(EndPointHash::Sha224.digest(b"x").len(), 28);
    }

    #[tokio::test]
    async fn verify_full_accepts_matching_dns_name_and_ip() {
        let pki = Pki::new();
        let server = pki.server(None);
        for host in ["localhost", "127.0.0.1"] {
            let (s, c) = handshake(
                &server,
                upstream(UpstreamMode::VerifyFull, Some(&pki.ca)),
                host,
            )
            .await;
            let seen = c.expect("client handshake");
            s.expect("server handshake");
            assert_eq!(Sha256::digest(&seen.leaf).to_vec(), server.end_point_hash);
        }
    }

    #[tokio::test]
    async fn verify_full_rejects_wrong_name() {
        let pki = Pki::new();
        let config = upstream(UpstreamMode::VerifyFull, Some(&pki.ca));
        let (s, c) = handshake(&pki.server(None), config, "wrong.example").await;
        let err = c.expect_err("name mismatch must fail");
        assert!(
            matches!(
                rustls_error(&err),
                Some(rustls::Error::InvalidCertificate(
                    CertificateError::NotValidForName
                        | CertificateError::NotValidForNameContext { .. }
                ))
            ),
            "{err:?}"
        );
        assert!(s.is_err());
    }

    #[tokio::test]
    async fn verify_ca_accepts_wrong_name_but_not_untrusted_chain() {
        let pki = Pki::new();
        let server = pki.server(None);
        let config = upstream(UpstreamMode::VerifyCa, Some(&pki.ca));
        let (s, c) = handshake(&server, config, "wrong.example").await;
        c.expect("verify-ca ignores the host name");
        s.expect("server handshake");
        let config = upstream(UpstreamMode::VerifyCa, Some(&pki.other_ca));
        let (_, c) = handshake(&server, config, "localhost").await;
        let err = c.expect_err("untrusted chain must fail");
        assert!(
            matches!(
                rustls_error(&err),
                Some(rustls::Error::InvalidCertificate(
                    CertificateError::UnknownIssuer
                ))
            ),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn require_and_prefer_accept_self_signed_without_ca() {
        let pki = Pki::new();
        let server =
            server_tls(&pki.self_signed_cert, &pki.self_signed_key, None).expect("server_tls");
        for mode in [UpstreamMode::Prefer, UpstreamMode::Require] {
            let (s, c) = handshake(&server, upstream(mode, None), "wrong.example").await;
            c.expect("any certificate accepted");
            s.expect("server handshake");
        }
        let config = upstream(UpstreamMode::VerifyFull, Some(&pki.ca));
        let (_, c) = handshake(&server, config, "localhost").await;
        assert!(c.is_err(), "verify-full must reject the self-signed cert");
    }

    #[test]
    fn verify_modes_need_a_ca_and_disable_builds_nothing() {
        for mode in [UpstreamMode::VerifyCa, UpstreamMode::VerifyFull] {
            let err = upstream_tls(mode, None, None).unwrap_err();
            assert!(matches!(err, TlsError::MissingCa { mode: m } if m == mode.as_str()));
            assert!(err.to_string().contains(mode.as_str()), "{err}");
        }
        assert!(
            upstream_tls(UpstreamMode::Disable, None, None)
                .expect("ok")
                .is_none()
        );
        let pki = Pki::new();
        let err = upstream_tls(UpstreamMode::VerifyFull, Some(&pki.server_key), None).unwrap_err();
        assert!(matches!(err, TlsError::NoCertificate { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn mtls_requires_a_client_certificate_signed_by_the_ca() {
        let pki = Pki::new();
        let server = pki.server(Some(&pki.ca));
        let config = upstream(UpstreamMode::VerifyFull, Some(&pki.ca));
        let (s, _) = handshake(&server, config, "localhost").await;
        assert!(s.is_err(), "a client without certificate must be rejected");

        let with_cert = |cert: &Path, key: &Path| {
            upstream_tls(UpstreamMode::VerifyFull, Some(&pki.ca), Some((cert, key)))
                .expect("upstream_tls")
                .expect("config")
        };
        let (s, c) = handshake(
            &server,
            with_cert(&pki.client_cert, &pki.client_key),
            "localhost",
        )
        .await;
        assert_eq!(s.expect("client certificate accepted"), 1);
        c.expect("client handshake");

        let other = with_cert(&pki.other_client_cert, &pki.other_client_key);
        let (s, _) = handshake(&server, other, "localhost").await;
        assert!(s.is_err(), "a certificate from another CA must be rejected");
    }

    #[tokio::test]
    async fn without_client_ca_no_certificate_is_requested() {
        let pki = Pki::new();
        let config = upstream_tls(UpstreamMode::Require, None, pki.client_auth())
            .expect("upstream_tls")
            .expect("config");
        let (s, _) = handshake(&pki.server(None), config, "localhost").await;
        assert_eq!(s.expect("server handshake"), 0);
    }

    #[tokio::test]
    async fn alpn_postgresql_is_advertised_but_not_required() {
        let pki = Pki::new();
        let server = pki.server(None);
        let (_, c) = handshake(&server, upstream(UpstreamMode::Require, None), "localhost").await;
        assert_eq!(c.expect("handshake").alpn.as_deref(), Some(ALPN_POSTGRESQL));
        let alpn = |protocols: Vec<Vec<u8>>| {
            let mut config = (*upstream(UpstreamMode::Require, None)).clone();
            config.alpn_protocols = protocols;
            Arc::new(config)
        };
        let (_, c) = handshake(&server, alpn(vec![]), "localhost").await;
        assert_eq!(c.expect("no ALPN is fine").alpn, None);
        let (s, c) = handshake(&server, alpn(vec![b"h2".to_vec()]), "localhost").await;
        assert!(
            c.is_err() && s.is_err(),
            "only a foreign protocol is refused"
        );
    }

    #[test]
    fn upstream_mode_names_and_predicates() {
        #[derive(serde::Deserialize)]
        struct Conf {
            mode: UpstreamMode,
        }
        let all = [
            (UpstreamMode::Disable, "disable", false, false),
            (UpstreamMode::Prefer, "prefer", true, false),
            (UpstreamMode::Require, "require", true, true),
            (UpstreamMode::VerifyCa, "verify-ca", true, true),
            (UpstreamMode::VerifyFull, "verify-full", true, true),
        ];
        for (mode, name, requests, requires) in all {
            assert_eq!(mode.as_str(), name);
            assert_eq!(mode.to_string(), name);
            assert_eq!(mode.requests_tls(), requests, "{name}");
            assert_eq!(mode.requires_tls(), requires, "{name}");
            let conf: Conf = toml::from_str(&format!("mode = {name:?}")).expect(name);
            assert_eq!(conf.mode, mode);
        }
        assert!(toml::from_str::<Conf>("mode = \"verify_full\"").is_err());
    }

    #[test]
    fn server_name_parses_dns_names_and_ip_addresses() {
        assert!(matches!(
            server_name("db.example.com"),
            Ok(ServerName::DnsName(_))
        ));
        assert!(matches!(
            server_name("localhost"),
            Ok(ServerName::DnsName(_))
        ));
        assert!(matches!(
            server_name("127.0.0.1"),
            Ok(ServerName::IpAddress(_))
        ));
        assert!(matches!(server_name("::1"), Ok(ServerName::IpAddress(_))));
        assert!(matches!(server_name("[::1]"), Ok(ServerName::IpAddress(_))));
        let err = server_name("not a host").unwrap_err();
        assert!(matches!(&err, TlsError::InvalidServerName { host } if host == "not a host"));
        assert!(server_name("").is_err());
    }
}
