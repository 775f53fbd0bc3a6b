//! `pgtarn::tls` with the shared test certificates (`common/certs.rs`) and
//! a real tokio-postgres client talking to a scripted server that uses
//! pgtarn's [`ServerTls`]: SSLRequest and direct TLS, mTLS, and the
//! SCRAM-SHA-256-PLUS channel-binding data the client computes.

#[path = "common/certs.rs"]
mod certs;

use std::io;
use std::net::Ipv4Addr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use certs::TestCerts;
use pgtarn::tls::{ServerTls, UpstreamMode, server_tls, upstream_tls};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_postgres::config::{ChannelBinding, SslMode, SslNegotiation};

/// The SSLRequest packet: length 8, code 80877103.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
/// First byte of a TLS handshake record (a direct-TLS client).
const TLS_HANDSHAKE: u8 = 0x16;
/// GS2 header of SCRAM with `tls-server-end-point` channel binding.
const GS2_HEADER: &[u8] = b"p=tls-server-end-point,,";

#[test]
fn test_certs_load_into_pgtarn_tls() {
    let certs = TestCerts::generate("app");
    let server = server_tls(&certs.server_cert, &certs.server_key, Some(&certs.ca));
    assert_eq!(server.expect("server_tls").end_point_hash.len(), 32);
    let client = (certs.client_cert.as_path(), certs.client_key.as_path());
    let upstream = upstream_tls(UpstreamMode::VerifyFull, Some(&certs.ca), Some(client));
    assert!(upstream.expect("upstream_tls").is_some());
}

#[test]
fn install_for_postgres_copies_with_mode_0600_and_owner() {
    let certs = TestCerts::generate("app");
    let target = tempfile::tempdir().expect("tempdir");
    let uid = std::fs::metadata(target.path()).expect("stat").uid();
    let (cert, key) = certs.install_for_postgres(target.path(), Some(uid));
    let ca = certs.install_ca_for_postgres(target.path(), None);
    for (copy, original) in [
        (&cert, &certs.server_cert),
        (&key, &certs.server_key),
        (&ca, &certs.ca),
    ] {
        let meta = std::fs::metadata(copy).expect("stat copy");
        assert_eq!(
            meta.permissions().mode() & 0o777,
            0o600,
            "{}",
            copy.display()
        );
        assert_eq!(meta.uid(), uid);
        let same = std::fs::read(copy).expect("read") == std::fs::read(original).expect("read");
        assert!(same, "{} differs", copy.display());
    }
    assert_eq!(
        cert.file_name().and_then(|n| n.to_str()),
        Some("server.crt")
    );
    assert_eq!(key.file_name().and_then(|n| n.to_str()), Some("server.key"));
}

/// What the scripted server learned from the client.
#[derive(Debug)]
struct Login {
    direct: bool,
    client_certs: usize,
    user: String,
    mechanism: String,
    channel_binding: Vec<u8>,
}

#[tokio::test]
async fn tokio_postgres_channel_binding_matches_end_point_hash() {
    let certs = TestCerts::generate("app");
    let server = mtls_server(&certs);
    let (login, client) = login(&server, &certs, true, SslNegotiation::Postgres).await;
    assert!(
        client.is_err(),
        "the scripted server never finishes the login"
    );
    let login = login.expect("scripted server");
    assert!(!login.direct);
    assert_eq!(login.client_certs, 1);
    assert_eq!(login.user, "app");
    assert_eq!(login.mechanism, "SCRAM-SHA-256-PLUS");
    assert_eq!(
        login.channel_binding,
        [GS2_HEADER, &server.end_point_hash].concat()
    );
}

#[tokio::test]
async fn tokio_postgres_direct_tls_without_alpn_is_accepted() {
    let certs = TestCerts::generate("app");
    let server = mtls_server(&certs);
    let (login, _) = login(&server, &certs, true, SslNegotiation::Direct).await;
    let login = login.expect("scripted server");
    assert!(login.direct);
    assert_eq!(
        login.channel_binding,
        [GS2_HEADER, &server.end_point_hash].concat()
    );
}

#[tokio::test]
async fn tokio_postgres_without_client_cert_is_refused_under_mtls() {
    let certs = TestCerts::generate("app");
    let (login, client) = login(
        &mtls_server(&certs),
        &certs,
        false,
        SslNegotiation::Postgres,
    )
    .await;
    assert!(login.is_err(), "server must refuse: {login:?}");
    assert!(client.is_err());
}

fn mtls_server(certs: &TestCerts) -> ServerTls {
    server_tls(&certs.server_cert, &certs.server_key, Some(&certs.ca)).expect("server_tls")
}

/// Runs a tokio-postgres login (SCRAM with channel binding required)
/// against the scripted server.
async fn login(
    server: &ServerTls,
    certs: &TestCerts,
    with_client_cert: bool,
    negotiation: SslNegotiation,
) -> (io::Result<Login>, Result<(), tokio_postgres::Error>) {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let mut config = tokio_postgres::Config::new();
    config
        .host("localhost")
        .hostaddr(Ipv4Addr::LOCALHOST.into())
        .port(port)
        .user("app")
        .password("secret")
        .dbname("app")
        .ssl_mode(SslMode::Require)
        .ssl_negotiation(negotiation)
        .channel_binding(ChannelBinding::Require);
    let client = async {
        let tls = certs.tokio_postgres_tls(with_client_cert);
        config.connect(tls).await.map(drop)
    };
    let serve = async {
        let (tcp, _) = listener.accept().await?;
        scripted_server(tcp, server).await
    };
    let both = async { tokio::join!(serve, client) };
    tokio::time::timeout(Duration::from_secs(20), both)
        .await
        .expect("login timed out")
}

/// Plays Postgres up to the client's SCRAM final message.
async fn scripted_server(mut tcp: tokio::net::TcpStream, server: &ServerTls) -> io::Result<Login> {
    let mut first = [0u8; 1];
    tcp.peek(&mut first).await?;
    let direct = first[0] == TLS_HANDSHAKE;
    if !direct {
        let mut request = [0u8; 8];
        tcp.read_exact(&mut request).await?;
        assert_eq!(request, SSL_REQUEST);
        tcp.write_all(b"S").await?;
    }
    let mut tls = server.acceptor.accept(tcp).await?;
    let client_certs = tls.get_ref().1.peer_certificates().map_or(0, <[_]>::len);
    let startup = read_startup(&mut tls).await?;
    let user = startup_param(&startup, "user");
    let mechanisms = b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0";
    send(
        &mut tls,
        b'R',
        &[&10i32.to_be_bytes()[..], mechanisms].concat(),
    )
    .await?;
    let initial = read_message(&mut tls, b'p').await?;
    let (mechanism, client_first) = split_initial_response(&initial);
    // The nonce is the `r=` attribute; it may itself contain "r=" (any
    // printable character but ','), so split on ',' rather than search.
    let nonce = client_first
        .split(',')
        .find_map(|f| f.strip_prefix("r="))
        .unwrap_or_default();
    let salt = STANDARD.encode(b"pgtarn-test-salt");
    let server_first = format!("r={nonce}server,s={salt},i=4096");
    let continue_body = [&11i32.to_be_bytes()[..], server_first.as_bytes()].concat();
    send(&mut tls, b'R', &continue_body).await?;
    let client_final = String::from_utf8_lossy(&read_message(&mut tls, b'p').await?).into_owned();
    let c = client_final.split(',').find_map(|f| f.strip_prefix("c="));
    let channel_binding = STANDARD.decode(c.unwrap_or_default()).expect("base64 c=");
    Ok(Login {
        direct,
        client_certs,
        user,
        mechanism,
        channel_binding,
    })
}

/// SASLInitialResponse body: mechanism NUL, int32 length, data.
fn split_initial_response(body: &[u8]) -> (String, String) {
    let nul = body.iter().position(|&b| b == 0).expect("mechanism name");
    let mechanism = String::from_utf8_lossy(&body[..nul]).into_owned();
    let data = String::from_utf8_lossy(&body[nul + 5..]).into_owned();
    (mechanism, data)
}

fn startup_param(startup: &[u8], name: &str) -> String {
    let fields: Vec<&[u8]> = startup[4..].split(|&b| b == 0).collect();
    let value = fields
        .chunks(2)
        .find(|kv| kv[0] == name.as_bytes())
        .and_then(|kv| kv.get(1));
    String::from_utf8_lossy(value.copied().unwrap_or_default()).into_owned()
}

/// The StartupMessage body (after the length): version, then parameters.
async fn read_startup(s: &mut (impl AsyncRead + Unpin)) -> io::Result<Vec<u8>> {
    let len = s.read_i32().await?;
    let mut body = vec![0u8; usize::try_from(len - 4).expect("length")];
    s.read_exact(&mut body).await?;
    Ok(body)
}

/// A tagged frontend message's body; panics on another tag.
async fn read_message(s: &mut (impl AsyncRead + Unpin), tag: u8) -> io::Result<Vec<u8>> {
    let found = s.read_u8().await?;
    assert_eq!(found, tag, "unexpected message {:?}", char::from(found));
    let len = s.read_i32().await?;
    let mut body = vec![0u8; usize::try_from(len - 4).expect("length")];
    s.read_exact(&mut body).await?;
    Ok(body)
}

async fn send(s: &mut (impl AsyncWrite + Unpin), tag: u8, body: &[u8]) -> io::Result<()> {
    let len = i32::try_from(body.len() + 4).expect("length");
    s.write_all(&[&[tag][..], &len.to_be_bytes(), body].concat())
        .await?;
    s.flush().await
}
