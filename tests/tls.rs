//! TLS end to end: real clients (psql, tokio-postgres over rustls) talking
//! TLS to pgtarn (`[tls.client]`), pgtarn talking TLS to a Postgres that
//! only accepts `hostssl` logins (`[tls.server]`), cancel requests over
//! TLS, mutual TLS, PostgreSQL 17 direct TLS, hostile handshakes, and
//! large transfers to slow peers over TLS (each with a plaintext control).

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::certs::TestCerts;
use common::pooler::Pooler;
use common::{PgOptions, PgServer, wait_until};
use pgtarn::protocol::encode;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_postgres::error::SqlState;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{Client, NoTls, Socket};
use tokio_postgres_rustls::MakeRustlsConnect;

/// The SSLRequest packet: length 8, code 80877103.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
/// The first 8 bytes of a CancelRequest: length 16, code 80877102.
const CANCEL_REQUEST_HEAD: [u8; 8] = [0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e];
/// Time limit for anything that should be quick (a login, a query).
const QUICK: Duration = Duration::from_secs(10);
/// pg_hba.conf of the TLS-only upstream: plaintext TCP matches no line.
const HBA_TLS_ONLY: &str = "local all all trust\nhostssl all all 127.0.0.1/32 scram-sha-256\n";

// ---------------------------------------------------------------------------
// helpers

/// Runs `fut`, panicking if it takes longer than `limit`.
async fn within<T>(limit: Duration, what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: no result within {limit:?}"))
}

/// A TOML string literal for a path.
fn toml_path(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

/// A pgtarn config for database `app` on `127.0.0.1:pg_port`, user `app`,
/// with extra `[pgtarn]` lines and `[tls.client]` / `[tls.server]` bodies.
fn config(pg_port: u16, general: &str, client_tls: &str, server_tls: &str) -> String {
    format!(
        "[pgtarn]\nlisten_addr = \"127.0.0.1:0\"\n{general}\n\
         [databases.app]\nhost = \"127.0.0.1\"\nport = {pg_port}\n\
         [users.app]\npassword = \"app-secret\"\n\
         [tls.client]\n{client_tls}\n\
         [tls.server]\n{server_tls}\n"
    )
}

/// Starts pgtarn with [`config`]'s arguments.
async fn tls_pooler(pg_port: u16, general: &str, client_tls: &str, server_tls: &str) -> Pooler {
    Pooler::start(&config(pg_port, general, client_tls, server_tls)).await
}

/// pgtarn in front of the shared Postgres (plain upstream) with client TLS
/// in `mode`, requiring client certificates when `mtls`; returns the fresh
/// test certificates with it.
async fn client_tls_pooler(general: &str, mode: &str, mtls: bool) -> (TestCerts, Pooler) {
    let certs = TestCerts::generate("app");
    let client = client_tls(&certs, mode, mtls);
    let pooler = tls_pooler(
        PgServer::shared().port,
        general,
        &client,
        "mode = \"disable\"",
    )
    .await;
    (certs, pooler)
}

/// `[tls.client]` body: `mode` with the test server certificate, and the
/// CA for mTLS when `mtls`.
fn client_tls(certs: &TestCerts, mode: &str, mtls: bool) -> String {
    let mut s = format!(
        "mode = \"{mode}\"\ncert = {}\nkey = {}\n",
        toml_path(&certs.server_cert),
        toml_path(&certs.server_key)
    );
    if mtls {
        s.push_str(&format!("ca = {}\n", toml_path(&certs.ca)));
    }
    s
}

/// A tokio-postgres connection string for `app` through `pooler` that
/// verifies the certificate for `localhost` while connecting to 127.0.0.1.
fn tls_conn_str(pooler: &Pooler, password: &str, extra: &str) -> String {
    format!(
        "host=localhost hostaddr=127.0.0.1 port={} user=app password={password} \
         dbname=app sslmode=require connect_timeout=10 {extra}",
        pooler.addr.port()
    )
}

/// Connects with `conn_str` and `tls`; spawns the connection task.
async fn try_connect<T>(conn_str: &str, tls: T) -> Result<Client, tokio_postgres::Error>
where
    T: MakeTlsConnect<Socket>,
    T::Stream: Send + 'static,
{
    let (client, conn) = within(
        QUICK,
        &format!("connect `{conn_str}`"),
        tokio_postgres::connect(conn_str, tls),
    )
    .await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// The error of a connection attempt that must fail (`what` says why).
async fn connect_err<T>(conn_str: &str, tls: T, what: &str) -> tokio_postgres::Error
where
    T: MakeTlsConnect<Socket>,
    T::Stream: Send + 'static,
{
    match try_connect(conn_str, tls).await {
        Ok(_) => panic!("{what}, but `{conn_str}` connected"),
        Err(e) => e,
    }
}

/// Connects or panics naming the connection string.
async fn connect<T>(conn_str: &str, tls: T) -> Client
where
    T: MakeTlsConnect<Socket>,
    T::Stream: Send + 'static,
{
    try_connect(conn_str, tls)
        .await
        .unwrap_or_else(|e| panic!("connecting with `{conn_str}` failed: {e:?}"))
}

/// `select 1` returns 1.
async fn assert_select_1(client: &Client) {
    let row = within(QUICK, "select 1", client.query_one("select 1::int4", &[]))
        .await
        .expect("select 1");
    assert_eq!(row.get::<_, i32>(0), 1);
}

/// SQLSTATE and message of a server error; panics on any other error.
fn db_error(e: &tokio_postgres::Error) -> (String, String) {
    let db = e
        .as_db_error()
        .unwrap_or_else(|| panic!("expected an ErrorResponse, got {e:?}"));
    (db.code().code().to_owned(), db.message().to_owned())
}

/// What a psql run produced.
struct PsqlRun {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// Runs psql (`-X -At`) with a libpq connection string and `-c` commands,
/// with `PGPASSWORD=app-secret` and no other PG* variables.
async fn psql(conninfo: &str, commands: &[&str]) -> PsqlRun {
    let mut cmd = tokio::process::Command::new(PgServer::shared().bin("psql"));
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("PGPASSWORD", "app-secret")
        .env("PGCONNECT_TIMEOUT", "10")
        .env("LC_ALL", "C")
        .args(["-X", "-At", "-d", conninfo])
        .kill_on_drop(true);
    for c in commands {
        cmd.args(["-c", c]);
    }
    let out = within(Duration::from_secs(20), "psql", cmd.output())
        .await
        .expect("run psql");
    PsqlRun {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Reads raw bytes until EOF (or a connection reset, which is also a
/// close); panics if the peer keeps the connection open past `limit`.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration, what: &str) -> Vec<u8> {
    let mut got = Vec::new();
    within(limit, &format!("{what}: connection closed"), async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
                Err(e) => panic!("{what}: read failed: {e}"),
            }
        }
    })
    .await;
    got
}

/// The uid Postgres runs as: `postgres` when the tests run as root (as
/// `tests/common/pg.rs` does), else ourselves (no chown needed).
fn postgres_uid() -> Option<u32> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    // SAFETY: NUL-terminated name; the result is read at once.
    let pw = unsafe { libc::getpwnam(c"postgres".as_ptr()) };
    assert!(!pw.is_null(), "running as root but no `postgres` OS user");
    // SAFETY: pw is non-null.
    Some(unsafe { (*pw).pw_uid })
}

/// A Postgres with `ssl = on` whose pg_hba.conf only has `hostssl` for
/// TCP, and the certificates it uses (server cert valid for localhost and
/// 127.0.0.1). Fields drop in order: server first, then its key files.
struct TlsUpstream {
    pg: PgServer,
    certs: TestCerts,
    _ssl_dir: TempDir,
}

impl TlsUpstream {
    fn start() -> TlsUpstream {
        let certs = TestCerts::generate("app");
        let ssl_dir = tempfile::Builder::new()
            .prefix("pgtarn-tls-test-")
            .tempdir()
            .expect("tempdir");
        let uid = postgres_uid();
        if let Some(uid) = uid {
            std::os::unix::fs::chown(ssl_dir.path(), Some(uid), None).expect("chown ssl dir");
        }
        let (cert, key) = certs.install_for_postgres(ssl_dir.path(), uid);
        let pg = PgServer::start(PgOptions {
            extra_conf: vec![
                "ssl = on".into(),
                format!("ssl_cert_file = '{}'", cert.display()),
                format!("ssl_key_file = '{}'", key.display()),
            ],
            hba: Some(HBA_TLS_ONLY.into()),
        });
        TlsUpstream {
            pg,
            certs,
            _ssl_dir: ssl_dir,
        }
    }

    /// A tokio-postgres connection string (TLS, SCRAM) as `app` to
    /// 127.0.0.1:`port` (this server, or a relay in front of it).
    fn conn_str(port: u16, sslmode: &str) -> String {
        format!(
            "host=localhost hostaddr=127.0.0.1 port={port} user=app password=app-secret \
             dbname=app sslmode={sslmode} connect_timeout=10"
        )
    }
}

/// A TCP relay in front of Postgres that records the first 8 bytes of
/// every connection (SSLRequest, CancelRequest, or a StartupMessage head).
struct RecordingProxy {
    port: u16,
    first_packets: Arc<Mutex<Vec<[u8; 8]>>>,
    task: JoinHandle<()>,
}

impl RecordingProxy {
    async fn start(upstream_port: u16) -> RecordingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let first_packets = Arc::new(Mutex::new(Vec::new()));
        let seen = first_packets.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut head = [0u8; 8];
                    if client.read_exact(&mut head).await.is_err() {
                        return;
                    }
                    seen.lock().unwrap().push(head);
                    let Ok(mut server) = TcpStream::connect(("127.0.0.1", upstream_port)).await
                    else {
                        return;
                    };
                    if server.write_all(&head).await.is_ok() {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        RecordingProxy {
            port,
            first_packets,
            task,
        }
    }

    fn packets(&self) -> Vec<[u8; 8]> {
        self.first_packets.lock().unwrap().clone()
    }
}

impl Drop for RecordingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A TCP relay in front of Postgres that reads what it forwards to
/// Postgres slowly: a 4 KiB receive buffer on its side of the connection
/// from pgtarn and a 1 ms pause after every [`RELAY_PACE`] bytes (replies
/// are relayed at full speed), so that pgtarn's writes to the server block
/// now and then. Counts the bytes it forwarded to Postgres.
struct SlowProxy {
    port: u16,
    forwarded: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl SlowProxy {
    async fn start(upstream_port: u16) -> SlowProxy {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
        let addr = std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, 0));
        socket.bind(&addr.into()).expect("bind");
        socket.listen(128).expect("listen");
        socket.set_nonblocking(true).expect("nonblocking");
        let listener = TcpListener::from_std(socket.into()).expect("tokio listener");
        let port = listener.local_addr().expect("addr").port();
        let forwarded = Arc::new(AtomicUsize::new(0));
        let count = forwarded.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let count = count.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream_port)).await else {
                        return;
                    };
                    let (mut from_client, mut to_client) = client.into_split();
                    let (mut from_server, mut to_server) = server.into_split();
                    let replies = tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut from_server, &mut to_client).await;
                        let _ = to_client.shutdown().await;
                    });
                    let mut buf = vec![0u8; 8192];
                    let mut since_pause = 0;
                    loop {
                        let n = match from_client.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if to_server.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                        count.fetch_add(n, Ordering::Relaxed);
                        since_pause += n;
                        if since_pause >= RELAY_PACE {
                            since_pause = 0;
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                    }
                    let _ = to_server.shutdown().await;
                    let _ = replies.await;
                });
            }
        });
        SlowProxy {
            port,
            forwarded,
            task,
        }
    }
}

impl Drop for SlowProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Send and receive queue sizes (bytes) of every IPv4 TCP socket whose
/// local port is `local` and remote port `remote` (0: any), from
/// /proc/net/tcp: what the kernel holds, as opposed to what a process
/// keeps in its own buffers.
fn tcp_queues(local: u16, remote: u16) -> Vec<(u16, u16, u64, u64)> {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let port = |addr: &str| u16::from_str_radix(addr.rsplit(':').next().unwrap_or(""), 16).ok();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (l, r) = (port(f.get(1)?)?, port(f.get(2)?)?);
            let (tx, rx) = f.get(4)?.split_once(':')?;
            let q = |h: &str| u64::from_str_radix(h, 16).ok();
            ((local == 0 || l == local) && (remote == 0 || r == remote)).then_some((
                l,
                r,
                q(tx)?,
                q(rx)?,
            ))
        })
        .collect()
}

/// Runs `select pg_sleep(30)` on `client`, cancels it with `cancel` once
/// it shows up as active in pg_stat_activity (seen through `observer`),
/// and asserts that the query fails with 57014 within 2 s of the cancel.
/// With `proxy`, also asserts that exactly one new upstream connection was
/// made for the cancel and that it started with an SSLRequest.
async fn sleep_and_cancel<F, Fut>(
    client: Client,
    observer: &Client,
    proxy: Option<&RecordingProxy>,
    cancel: F,
) where
    F: FnOnce(tokio_postgres::CancelToken) -> Fut,
    Fut: Future<Output = Result<(), tokio_postgres::Error>>,
{
    let token = client.cancel_token();
    let query =
        tokio::spawn(async move { client.simple_query("select pg_sleep(30)").await.map(drop) });
    wait_until("pg_sleep(30) is running", QUICK, || async {
        let row = observer
            .query_one(
                "select count(*) from pg_stat_activity \
                 where query = 'select pg_sleep(30)' and state = 'active'",
                &[],
            )
            .await
            .expect("pg_stat_activity");
        row.get::<_, i64>(0) == 1
    })
    .await;
    let before = proxy.map(|p| p.packets().len());
    let sent = Instant::now();
    within(QUICK, "cancel_query", cancel(token))
        .await
        .expect("send cancel request");
    let result = within(Duration::from_secs(2), "cancelled query", query)
        .await
        .expect("query task");
    let err = result.expect_err("the query must be cancelled");
    assert_eq!(
        err.code(),
        Some(&SqlState::QUERY_CANCELED),
        "expected 57014, got {err:?}"
    );
    assert!(sent.elapsed() < Duration::from_secs(2));
    if let (Some(proxy), Some(before)) = (proxy, before) {
        let packets = proxy.packets();
        assert_eq!(
            packets.len(),
            before + 1,
            "expected one upstream connection for the cancel: {packets:?}"
        );
        assert_eq!(
            packets[before], SSL_REQUEST,
            "the cancel connection to Postgres must start with an SSLRequest \
             (CancelRequest head would be {CANCEL_REQUEST_HEAD:?})"
        );
    }
}

// ---------------------------------------------------------------------------
// 1, 2: psql and tokio-postgres against `[tls.client] mode = "require"`

/// psql with `sslmode=verify-full` (fails unless pgtarn's certificate
/// verifies against the CA for `localhost`), with channel binding required
/// (SCRAM-SHA-256-PLUS) and disabled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_verify_full_with_and_without_channel_binding() {
    let (certs, pooler) = client_tls_pooler("", "require", false).await;
    let base = format!(
        "host=localhost port={} user=app dbname=app sslmode=verify-full sslrootcert={}",
        pooler.addr.port(),
        certs.ca.display()
    );
    for cb in ["require", "disable", "prefer"] {
        let run = psql(
            &format!("{base} channel_binding={cb}"),
            &["\\conninfo", "select 1"],
        )
        .await;
        assert!(
            run.ok,
            "psql channel_binding={cb} failed:\n{}{}",
            run.stdout, run.stderr
        );
        assert!(
            run.stdout.contains("SSL connection (protocol: TLSv1.3"),
            "channel_binding={cb}: {}",
            run.stdout
        );
        assert_eq!(
            run.stdout.lines().last(),
            Some("1"),
            "channel_binding={cb}: {}",
            run.stdout
        );
    }

    // Negative control: verify-full really verifies (another CA fails).
    let other = TestCerts::generate("app");
    let run = psql(
        &format!(
            "host=localhost port={} user=app dbname=app sslmode=verify-full sslrootcert={}",
            pooler.addr.port(),
            other.ca.display()
        ),
        &["select 1"],
    )
    .await;
    assert!(
        !run.ok,
        "an untrusted certificate must fail: {}",
        run.stdout
    );
    assert!(
        run.stderr.contains("certificate verify failed"),
        "{}",
        run.stderr
    );
}

/// A plaintext login against `mode = "require"`: FATAL 28000 "TLS is
/// required", both for tokio-postgres and for psql `sslmode=disable`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_login_is_refused_with_28000_when_tls_is_required() {
    let (certs, pooler) = client_tls_pooler("", "require", false).await;
    let err = connect_err(
        &pooler.conn_str("sslmode=disable"),
        NoTls,
        "plaintext login must be refused",
    )
    .await;
    let (code, message) = db_error(&err);
    assert_eq!(code, "28000", "{message}");
    assert!(message.contains("TLS is required"), "{message}");
    let db = err.as_db_error().expect("db error");
    assert_eq!(db.severity(), "FATAL");

    let run = psql(
        &format!(
            "host=127.0.0.1 port={} user=app dbname=app sslmode=disable",
            pooler.addr.port()
        ),
        &["select 1"],
    )
    .await;
    assert!(!run.ok, "psql sslmode=disable must fail: {}", run.stdout);
    assert!(
        run.stderr.contains("FATAL:  TLS is required"),
        "{}",
        run.stderr
    );

    // The same pgtarn still serves TLS clients.
    let tls = connect(
        &tls_conn_str(&pooler, "app-secret", ""),
        certs.tokio_postgres_tls(false),
    )
    .await;
    assert_select_1(&tls).await;
}

/// On the Unix-domain socket TLS is neither offered nor required, as in
/// Postgres: with `mode = "require"`, psql and tokio-postgres log in
/// there in plaintext (not refused with 28000).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_unix_socket_is_plaintext_even_when_tls_is_required() {
    let dir = tempfile::tempdir().expect("tempdir");
    let general = format!("unix_socket_dir = {}", toml_path(dir.path()));
    let (_certs, pooler) = client_tls_pooler(&general, "require", false).await;
    let conninfo = |mode: &str| {
        format!(
            "host={} port={} user=app password=app-secret dbname=app sslmode={mode}",
            dir.path().display(),
            pooler.addr.port()
        )
    };
    let run = psql(&conninfo("prefer"), &["select 1"]).await;
    assert!(run.ok, "{} {}", run.stdout, run.stderr);
    assert_select_1(&connect(&conninfo("prefer"), NoTls).await).await;
    // libpq never uses TLS on a Unix-domain socket, even when required.
    let run = psql(&conninfo("require"), &["select 1"]).await;
    assert!(run.ok, "{} {}", run.stdout, run.stderr);
}

// ---------------------------------------------------------------------------
// 3: tokio-postgres over rustls, SCRAM with and without channel binding

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_rustls_scram_with_and_without_channel_binding() {
    let (certs, pooler) = client_tls_pooler("", "require", false).await;
    for cb in ["require", "disable"] {
        let client = connect(
            &tls_conn_str(&pooler, "app-secret", &format!("channel_binding={cb}")),
            certs.tokio_postgres_tls(false),
        )
        .await;
        let row = within(
            QUICK,
            "query",
            client.query_one("select current_user::text, 40 + $1::int4", &[&2i32]),
        )
        .await
        .expect("query over TLS");
        assert_eq!(row.get::<_, String>(0), "app");
        assert_eq!(row.get::<_, i32>(1), 42);
    }
    for cb in ["require", "disable"] {
        let err = connect_err(
            &tls_conn_str(&pooler, "wrong-secret", &format!("channel_binding={cb}")),
            certs.tokio_postgres_tls(false),
            "wrong password must fail",
        )
        .await;
        let (code, message) = db_error(&err);
        assert_eq!(code, "28P01", "channel_binding={cb}: {message}");
        assert_eq!(message, "password authentication failed for user \"app\"");
    }
}

// ---------------------------------------------------------------------------
// large results and COPY over TLS, with slow peers

/// Rows of 1000 bytes in each slow-reader round (5 MB).
const SLOW_ROWS: i32 = 5_000;
/// The slow reader pauses 1 ms after every this many rows.
const SLOW_EVERY: usize = 50;
/// Receive buffer of the slow reader's socket: small, so that pgtarn's
/// socket to it is full most of the time.
const SLOW_RCVBUF: usize = 4096;
/// Rounds in [`slow_reader_rounds`].
const SLOW_ROUNDS: usize = 10;
/// Bytes the slow relay forwards between two 1 ms pauses.
const RELAY_PACE: usize = 64 * 1024;
/// Rounds of 10 MB in [`copy_in_rounds`].
const COPY_ROUNDS: usize = 6;

/// Connects over a socket whose receive buffer is `rcvbuf` bytes; returns
/// the client and the socket's local port.
async fn connect_small_rcvbuf<T>(conn_str: &str, mut tls: T, rcvbuf: usize) -> (Client, u16)
where
    T: MakeTlsConnect<TcpStream>,
    T::Stream: Send + 'static,
{
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket.set_recv_buffer_size(rcvbuf).expect("SO_RCVBUF");
    let config: tokio_postgres::Config = conn_str.parse().expect("conn str");
    let addr = std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, config.get_ports()[0]));
    socket.connect(&addr.into()).expect("connect");
    socket.set_nonblocking(true).expect("nonblocking");
    let tcp = TcpStream::from_std(socket.into()).expect("tokio socket");
    let local_port = tcp.local_addr().expect("local addr").port();
    let connector = tls
        .make_tls_connect("localhost")
        .unwrap_or_else(|_| panic!("tls connector"));
    let (client, conn) = within(QUICK, "connect", config.connect_raw(tcp, connector))
        .await
        .expect("connect_raw");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    (client, local_port)
}

/// Reads `select repeat('x', 1000) from generate_series(1, SLOW_ROWS)`
/// through `client`, pausing 1 ms every [`SLOW_EVERY`] rows; counts the
/// rows in `rows` as they come.
async fn read_slowly(client: &Client, rows: &AtomicUsize) {
    use futures_util::TryStreamExt;
    let stream = client
        .query_raw(
            "select repeat('x', 1000) from generate_series(1, $1::int4)",
            [SLOW_ROWS],
        )
        .await
        .expect("query_raw");
    let mut stream = std::pin::pin!(stream);
    while let Some(row) = stream.try_next().await.expect("row") {
        assert_eq!(row.get::<_, &str>(0).len(), 1000);
        if (rows.fetch_add(1, Ordering::Relaxed) + 1).is_multiple_of(SLOW_EVERY) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// [`SLOW_ROUNDS`] rounds of a 5 MB result to a slow reader with a small
/// receive buffer (`client`, local port `port`, connected to `pooler`):
/// every round must end (CommandComplete, ReadyForQuery) within 10 s (each
/// takes ~0.3 s) and the connection stays usable.
async fn slow_reader_rounds(pooler: &Pooler, client: &Client, port: u16, how: &str) {
    for round in 0..SLOW_ROUNDS {
        let rows = AtomicUsize::new(0);
        let read = tokio::time::timeout(Duration::from_secs(10), read_slowly(client, &rows)).await;
        let rows = rows.load(Ordering::Relaxed);
        if read.is_err() {
            let pgtarn_side = tcp_queues(pooler.addr.port(), port);
            let client_side = tcp_queues(port, pooler.addr.port());
            panic!(
                "{how}, round {round}: the result did not complete within 10 s: the client \
                 received {rows} of {SLOW_ROWS} rows and then nothing more. Kernel queues \
                 (local port, remote port, send-q, recv-q): pgtarn's socket {pgtarn_side:?}, \
                 client's socket {client_side:?} (both empty: the rest of the result is \
                 held inside pgtarn, not in flight)"
            );
        }
        assert_eq!(rows, SLOW_ROWS as usize, "{how}, round {round}");
        assert_select_1(client).await;
    }
}

/// A client that reads a large result slowly gets all of it over TLS, as
/// it does in plaintext (control: same pgtarn, same socket settings). When
/// a write to a TLS stream meets a full socket, tokio-rustls reports the
/// plaintext as written but keeps the encrypted tail until the stream is
/// written to again or flushed; if nothing follows, the client waits for
/// it forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_tls_reader_receives_the_whole_result() {
    let (certs, pooler) = client_tls_pooler("", "prefer", false).await;
    let (plain, port) =
        connect_small_rcvbuf(&pooler.conn_str("sslmode=disable"), NoTls, SLOW_RCVBUF).await;
    slow_reader_rounds(&pooler, &plain, port, "plaintext").await;
    let (tls, port) = connect_small_rcvbuf(
        &tls_conn_str(&pooler, "app-secret", ""),
        certs.tokio_postgres_tls(false),
        SLOW_RCVBUF,
    )
    .await;
    slow_reader_rounds(&pooler, &tls, port, "TLS").await;
}

/// Rounds of COPY FROM STDIN of 10 MB through `client` to Postgres behind
/// `relay`: each must end (CommandComplete) within 10 s with the right row
/// count (each takes well under a second).
async fn copy_in_rounds(client: &Client, relay: &SlowProxy, how: &str) {
    use futures_util::SinkExt;
    client
        .batch_execute("drop table if exists copy_tls; create table copy_tls (v text)")
        .await
        .expect("create table");
    let chunk = bytes::Bytes::from(format!("{}\n", "y".repeat(999)).repeat(100)); // 100 kB
    for round in 0..COPY_ROUNDS {
        let copy = async {
            let sink = client
                .copy_in::<_, bytes::Bytes>("copy copy_tls from stdin")
                .await
                .expect("copy_in");
            let mut sink = std::pin::pin!(sink);
            for _ in 0..100 {
                sink.send(chunk.clone()).await.expect("send copy data");
            }
            sink.as_mut().finish().await.expect("finish copy")
        };
        let before = relay.forwarded.load(Ordering::Relaxed);
        let Ok(rows) = tokio::time::timeout(Duration::from_secs(10), copy).await else {
            let forwarded = relay.forwarded.load(Ordering::Relaxed) - before;
            let pgtarn_side = tcp_queues(0, relay.port);
            let relay_side = tcp_queues(relay.port, 0);
            panic!(
                "{how}, round {round}: COPY of 10 MB did not end within 10 s; the relay \
                 forwarded {forwarded} bytes of it to Postgres. Kernel queues (local port, \
                 remote port, send-q, recv-q) towards the relay: {pgtarn_side:?}; relay's \
                 sockets: {relay_side:?} (empty queues: the rest is held inside pgtarn)"
            );
        };
        assert_eq!(rows, 10_000, "{how}, round {round}");
    }
}

/// COPY FROM STDIN through pgtarn to a Postgres that reads slowly (a
/// relay in between) completes over a TLS upstream as it does over a
/// plaintext one (control: the shared server, same relay). Writes to the
/// server go through the same unflushed path as writes to clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_in_to_a_slow_tls_upstream_completes() {
    let plain_relay = SlowProxy::start(PgServer::shared().port).await;
    let pooler = tls_pooler(plain_relay.port, "", "", "mode = \"disable\"").await;
    let client = within(QUICK, "connect", pooler.connect()).await;
    copy_in_rounds(&client, &plain_relay, "plaintext upstream").await;

    let up = TlsUpstream::start();
    let tls_relay = SlowProxy::start(up.pg.port).await;
    let server_tls = format!("mode = \"verify-full\"\nca = {}", toml_path(&up.certs.ca));
    let pooler = tls_pooler(tls_relay.port, "", "", &server_tls).await;
    let client = within(QUICK, "connect", pooler.connect()).await;
    copy_in_rounds(&client, &tls_relay, "TLS upstream").await;
}

// ---------------------------------------------------------------------------
// 4: TLS to a Postgres that only accepts hostssl logins

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_tls_modes_against_a_hostssl_only_server() {
    let up = TlsUpstream::start();
    let ca = toml_path(&up.certs.ca);

    // Every mode that requests TLS logs in (hostssl) and the upstream
    // backend reports an SSL connection.
    let modes = [
        format!("mode = \"verify-full\"\nca = {ca}"),
        format!("mode = \"verify-ca\"\nca = {ca}"),
        "mode = \"require\"".to_owned(),
        "mode = \"prefer\"".to_owned(),
    ];
    for server_tls in &modes {
        let pooler = tls_pooler(up.pg.port, "", "", server_tls).await;
        let client = within(QUICK, "connect", pooler.connect()).await;
        let row = within(
            QUICK,
            "pg_stat_ssl",
            client.query_one(
                "select ssl, current_user::text from pg_stat_ssl where pid = pg_backend_pid()",
                &[],
            ),
        )
        .await
        .unwrap_or_else(|e| panic!("{server_tls}: {e:?}"));
        assert!(row.get::<_, bool>(0), "{server_tls}: upstream not TLS");
        assert_eq!(row.get::<_, String>(1), "app");
        // A TLS server connection goes back to the pool and is reused: one
        // client's transactions, one after the other, all run on it.
        let mut pids = std::collections::BTreeSet::new();
        for _ in 0..20 {
            let row = within(
                QUICK,
                "pg_backend_pid",
                client.query_one("select pg_backend_pid()", &[]),
            )
            .await
            .expect("pg_backend_pid");
            pids.insert(row.get::<_, i32>(0));
        }
        assert_eq!(
            pids.len(),
            1,
            "{server_tls}: TLS server connections not reused: {pids:?}"
        );
    }

    // Per-database server_tls_mode overrides a global "disable".
    let toml = config(up.pg.port, "", "", "mode = \"disable\"")
        .replace("[users.app]", "server_tls_mode = \"require\"\n[users.app]");
    let pooler = Pooler::start(&toml).await;
    assert_select_1(&within(QUICK, "connect", pooler.connect()).await).await;

    // disable: Postgres refuses the plaintext login; its error reaches the
    // client with its SQLSTATE.
    let pooler = tls_pooler(up.pg.port, "", "", "mode = \"disable\"").await;
    let err = connect_err(
        &pooler.conn_str(""),
        NoTls,
        "plaintext upstream login must fail",
    )
    .await;
    let (code, message) = db_error(&err);
    assert_eq!(code, "28000", "{message}");
    assert!(message.contains("no pg_hba.conf entry"), "{message}");

    // verify-full against the wrong CA: a prompt 08006 naming the
    // certificate problem, no hang.
    let other = TestCerts::generate("app");
    let wrong = format!("mode = \"verify-full\"\nca = {}", toml_path(&other.ca));
    let pooler = tls_pooler(up.pg.port, "", "", &wrong).await;
    let started = Instant::now();
    let err = connect_err(
        &pooler.conn_str(""),
        NoTls,
        "untrusted upstream certificate must fail",
    )
    .await;
    let (code, message) = db_error(&err);
    assert_eq!(code, "08006", "{message}");
    assert!(
        message.contains("TLS") && message.to_lowercase().contains("certificate"),
        "{message}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
}

/// Against a Postgres without TLS (the shared one, `ssl = off`): `prefer`
/// (the default) falls back to plaintext, `require` fails promptly with
/// 08006 saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_prefer_falls_back_and_require_fails_without_server_tls() {
    let pg = PgServer::shared();
    let pooler = tls_pooler(pg.port, "", "", "").await;
    assert_select_1(&within(QUICK, "connect", pooler.connect()).await).await;

    let pooler = tls_pooler(pg.port, "", "", "mode = \"require\"").await;
    let started = Instant::now();
    let err = connect_err(&pooler.conn_str(""), NoTls, "require without server TLS").await;
    let (code, message) = db_error(&err);
    assert_eq!(code, "08006", "{message}");
    assert!(message.contains("does not support TLS"), "{message}");
    assert!(started.elapsed() < Duration::from_secs(3));
}

// ---------------------------------------------------------------------------
// 5: cancel requests to a TLS upstream

/// The upstream only has hostssl lines. A recording relay between pgtarn
/// and Postgres shows that pgtarn's cancel connection starts with an
/// SSLRequest (Postgres answers CancelRequest before consulting pg_hba,
/// so a plaintext cancel would also work: the relay is the proof).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_reaches_a_tls_upstream_over_tls() {
    let up = TlsUpstream::start();
    let proxy = RecordingProxy::start(up.pg.port).await;
    let ca = toml_path(&up.certs.ca);
    let server_tls = format!("mode = \"verify-full\"\nca = {ca}");

    // Client plain to pgtarn, pgtarn TLS to Postgres.
    let pooler = tls_pooler(proxy.port, "", "", &server_tls).await;
    let observer = within(QUICK, "connect", pooler.connect()).await;
    let client = within(QUICK, "connect", pooler.connect()).await;
    sleep_and_cancel(client, &observer, Some(&proxy), |t| async move {
        t.cancel_query(NoTls).await
    })
    .await;
    let packets = proxy.packets();
    assert!(
        packets.iter().all(|p| *p == SSL_REQUEST),
        "every upstream connection, the cancel one included, must start \
         with an SSLRequest; first packets: {packets:?}"
    );
    assert!(!packets.contains(&CANCEL_REQUEST_HEAD));

    // Client TLS to pgtarn too: the client's own cancel goes over TLS.
    let certs = TestCerts::generate("app");
    let pooler = tls_pooler(
        proxy.port,
        "",
        &client_tls(&certs, "require", false),
        &server_tls,
    )
    .await;
    let conn_str = tls_conn_str(&pooler, "app-secret", "");
    let observer = connect(&conn_str, certs.tokio_postgres_tls(false)).await;
    let client = connect(&conn_str, certs.tokio_postgres_tls(false)).await;
    let tls = certs.tokio_postgres_tls(false);
    sleep_and_cancel(client, &observer, Some(&proxy), |t| async move {
        t.cancel_query(tls).await
    })
    .await;
    assert!(proxy.packets().iter().all(|p| *p == SSL_REQUEST));

    // For the record (Postgres' behaviour, not pgtarn's): a plaintext
    // CancelRequest straight to the hostssl-only server is honoured too
    // (tokio-postgres sends it in plaintext with NoTls and sslmode=prefer;
    // the relay confirms it).
    let relay = RecordingProxy::start(up.pg.port).await;
    let tls = || up.certs.tokio_postgres_tls(false);
    let direct = connect(&TlsUpstream::conn_str(relay.port, "prefer"), tls()).await;
    let observer = connect(&TlsUpstream::conn_str(relay.port, "require"), tls()).await;
    sleep_and_cancel(direct, &observer, None, |t| async move {
        t.cancel_query(NoTls).await
    })
    .await;
    assert_eq!(relay.packets().last(), Some(&CANCEL_REQUEST_HEAD));
}

// ---------------------------------------------------------------------------
// 6: mutual TLS

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_requires_a_client_certificate_from_the_ca() {
    let (certs, pooler) = client_tls_pooler("", "require", true).await;
    let conn_str = tls_conn_str(&pooler, "app-secret", "");

    let err = connect_err(
        &conn_str,
        certs.tokio_postgres_tls(false),
        "no client certificate: must fail",
    )
    .await;
    assert!(
        err.as_db_error().is_none(),
        "TLS-level failure expected: {err:?}"
    );

    // A certificate from another CA (the client trusts pgtarn's CA).
    let other = TestCerts::generate("app");
    let mut config = certs.client_config(false);
    let foreign = other.client_config(true);
    config.client_auth_cert_resolver = foreign.client_auth_cert_resolver.clone();
    let err = connect_err(
        &conn_str,
        MakeRustlsConnect::new(config),
        "foreign client certificate: must fail",
    )
    .await;
    assert!(
        err.as_db_error().is_none(),
        "TLS-level failure expected: {err:?}"
    );

    let client = connect(&conn_str, certs.tokio_postgres_tls(true)).await;
    assert_select_1(&client).await;
}

// ---------------------------------------------------------------------------
// 7: hostile handshakes

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_tls_handshakes_are_closed_and_others_still_served() {
    let (certs, pooler) =
        client_tls_pooler("client_login_timeout = \"1s\"", "require", false).await;
    let conn_str = tls_conn_str(&pooler, "app-secret", "");

    // SSLRequest, 'S', then 200 bytes of garbage instead of a ClientHello:
    // once as a TLS handshake record with a garbage body, once as noise.
    let mut record = vec![0x16, 0x03, 0x01, 0x00, 195];
    record.extend((0..195u32).map(|i| (i * 37 + 11) as u8));
    let noise: Vec<u8> = (0..200u32).map(|i| (i * 91 + 7) as u8).collect();
    for garbage in [record, noise] {
        assert_eq!(garbage.len(), 200);
        let mut tcp = TcpStream::connect(pooler.addr).await.expect("connect");
        tcp.write_all(&SSL_REQUEST).await.expect("write");
        let mut answer = [0u8; 1];
        within(QUICK, "SSLRequest answer", tcp.read_exact(&mut answer))
            .await
            .expect("read answer");
        assert_eq!(answer[0], b'S');
        tcp.write_all(&garbage).await.expect("write garbage");
        // A TLS alert may come first; the point is that it closes.
        read_until_closed(&mut tcp, Duration::from_secs(3), "garbage after 'S'").await;
        let client = connect(&conn_str, certs.tokio_postgres_tls(false)).await;
        assert_select_1(&client).await;
    }

    // SSLRequest, 'S', then silence: closed by client_login_timeout (1s).
    let mut tcp = TcpStream::connect(pooler.addr).await.expect("connect");
    let started = Instant::now();
    tcp.write_all(&SSL_REQUEST).await.expect("write");
    let mut answer = [0u8; 1];
    within(QUICK, "SSLRequest answer", tcp.read_exact(&mut answer))
        .await
        .expect("read answer");
    assert_eq!(answer[0], b'S');
    let got = read_until_closed(&mut tcp, Duration::from_secs(3), "stalled handshake").await;
    assert!(got.is_empty(), "stalled client was sent {got:?}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "closed after {waited:?}, before client_login_timeout"
    );

    // SSLRequest and a StartupMessage in one write: the StartupMessage
    // was sent before any TLS, so pgtarn must not answer 'S' and go on.
    let mut tcp = TcpStream::connect(pooler.addr).await.expect("connect");
    let mut both = SSL_REQUEST.to_vec();
    both.extend_from_slice(&encode::startup_message(&[
        ("user", "app"),
        ("database", "app"),
    ]));
    tcp.write_all(&both).await.expect("write");
    let got = read_until_closed(&mut tcp, Duration::from_secs(3), "pre-sent startup").await;
    assert!(
        !got.starts_with(b"S"),
        "pgtarn answered 'S' although plaintext data followed the SSLRequest: {got:?}"
    );
    assert!(got.is_empty(), "expected a silent close, got {got:?}");

    let client = connect(&conn_str, certs.tokio_postgres_tls(false)).await;
    assert_select_1(&client).await;
}

// ---------------------------------------------------------------------------
// 8: PostgreSQL 17 direct TLS (tokio-postgres `sslnegotiation=direct`)

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_tls_without_sslrequest() {
    let (certs, pooler) = client_tls_pooler("", "require", false).await;
    let conn_str = tls_conn_str(
        &pooler,
        "app-secret",
        "sslnegotiation=direct channel_binding=require",
    );
    // Without ALPN, and with ALPN "postgresql" as libpq 17 sends it.
    let client = connect(&conn_str, certs.tokio_postgres_tls(false)).await;
    assert_select_1(&client).await;
    let mut config = certs.client_config(false);
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    let client = connect(&conn_str, MakeRustlsConnect::new(config)).await;
    assert_select_1(&client).await;
}

// ---------------------------------------------------------------------------
// client modes that accept both

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_and_prefer_accept_plaintext_and_tls_clients() {
    let pg = PgServer::shared();
    let certs = TestCerts::generate("app");
    for mode in ["allow", "prefer"] {
        let pooler = tls_pooler(
            pg.port,
            "",
            &client_tls(&certs, mode, false),
            "mode = \"disable\"",
        )
        .await;
        let plain = connect(&pooler.conn_str("sslmode=disable"), NoTls).await;
        assert_select_1(&plain).await;
        let tls = connect(
            &tls_conn_str(&pooler, "app-secret", "channel_binding=require"),
            certs.tokio_postgres_tls(false),
        )
        .await;
        assert_select_1(&tls).await;
    }
}

/// auth_query uses the database's upstream TLS settings: against a server
/// that accepts TLS logins only, an unconfigured role is looked up and
/// logged in (SCRAM passthrough) through TLS.
#[tokio::test]
async fn auth_query_reaches_a_tls_only_upstream() {
    let up = TlsUpstream::start();
    let role = "aq_tls";
    let create = format!("create role {role} login password 'aq-pw'");
    let out = std::process::Command::new(up.pg.bin("psql"))
        .args([
            "-h",
            &up.pg.socket_dir.display().to_string(),
            "-p",
            &up.pg.port.to_string(),
        ])
        .args(["-U", "postgres", "-d", "app", "-c", &create])
        .output()
        .expect("run psql");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ca = toml_path(&up.certs.ca);
    let general = "auth_user = \"postgres\"";
    let toml = config(
        up.pg.port,
        general,
        "",
        &format!("mode = \"verify-full\"\nca = {ca}"),
    ) + &format!(
        "[users.postgres]\npassword = \"{}\"\n",
        up.pg.superuser_password
    );
    let pooler = Pooler::start(&toml).await;
    let conn_str = format!(
        "host=127.0.0.1 port={} user={role} password=aq-pw dbname=app",
        pooler.addr.port()
    );
    let (client, conn) = within(QUICK, "connect", tokio_postgres::connect(&conn_str, NoTls))
        .await
        .expect("an auth_query user logs in over a TLS-only upstream");
    tokio::spawn(conn);
    let row = within(
        QUICK,
        "query",
        client.query_one("select current_user::text", &[]),
    )
    .await
    .expect("query");
    assert_eq!(row.get::<_, String>(0), role);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_swaps_the_client_certificate_without_dropping_clients() {
    let (old, pooler) = client_tls_pooler("", "require", false).await;
    let new = TestCerts::generate("app");
    let text = config(
        PgServer::shared().port,
        "",
        &client_tls(&new, "require", false),
        "mode = \"disable\"",
    );
    let path = new.dir.path().join("pgtarn.toml");
    std::fs::write(&path, text).expect("write config");
    let conn_str = tls_conn_str(&pooler, "app-secret", "");
    let kept = connect(&conn_str, old.tokio_postgres_tls(false)).await;
    connect_err(
        &conn_str,
        new.tokio_postgres_tls(false),
        "the new CA is not in use yet",
    )
    .await;

    *pooler.ctx.config_path.lock().expect("lock") = Some(path);
    pooler.ctx.reload().expect("reload");
    let fresh = connect(&conn_str, new.tokio_postgres_tls(false)).await;
    assert_select_1(&fresh).await;
    connect_err(
        &conn_str,
        old.tokio_postgres_tls(false),
        "the old certificate is gone",
    )
    .await;
    assert_select_1(&kept).await;
}

/// An upstream CA file replaced in place (same path, as certificate
/// managers do) reaches the existing pool at the next reload: its new
/// server connections verify with the new CA.
#[tokio::test]
async fn reload_reads_an_upstream_ca_rotated_in_place() {
    let up = TlsUpstream::start();
    let wrong = TestCerts::generate("app");
    let ca_file = wrong.dir.path().join("upstream-ca.pem");
    std::fs::copy(&wrong.ca, &ca_file).expect("the old CA");
    let server_tls = format!("mode = \"verify-ca\"\nca = {}", toml_path(&ca_file));
    let text = config(up.pg.port, "server_login_retry = \"0s\"", "", &server_tls);
    let pooler = Pooler::start(&text).await;
    let refused = tokio_postgres::connect(&pooler.conn_str(""), NoTls).await;
    assert!(refused.is_err(), "the old CA does not verify the server");
    std::fs::copy(&up.certs.ca, &ca_file).expect("rotate the CA in place");
    let path = wrong.dir.path().join("pgtarn.toml");
    std::fs::write(&path, &text).expect("write config");
    *pooler.ctx.config_path.lock().expect("lock") = Some(path);
    pooler.ctx.reload().expect("reload");
    let client = connect(&pooler.conn_str(""), NoTls).await;
    assert_select_1(&client).await;
}

/// `[tls.client] ca` (mutual TLS) with mode "allow" or "prefer" is
/// refused: a client that skips TLS presents no certificate, and such a
/// client used to log in with just its password.
#[test]
fn a_client_ca_needs_mode_require() {
    let certs = TestCerts::generate("app");
    let port = PgServer::shared().port;
    for mode in ["allow", "prefer"] {
        let text = config(
            port,
            "",
            &client_tls(&certs, mode, true),
            "mode = \"disable\"",
        );
        let refused = pgtarn::config::Config::from_toml(&text)
            .err()
            .map(|e| e.to_string());
        let message = refused.unwrap_or_else(|| panic!("ca with mode {mode} is refused"));
        assert!(
            message.contains("tls.client.ca") && message.contains("require"),
            "{message}"
        );
    }
    let text = config(
        port,
        "",
        &client_tls(&certs, "require", true),
        "mode = \"disable\"",
    );
    pgtarn::config::Config::from_toml(&text).expect("ca with mode require");
}
