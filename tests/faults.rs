//! Upstream faults: what clients see, and how pgtarn recovers, when
//! Postgres dies, refuses, rejects the login, stops answering, or cuts a
//! connection mid-message. Faults come from a real `kill -9` of a
//! dedicated Postgres, or from the fault-injecting proxy between pgtarn
//! and Postgres ([`common::faultproxy`]). Every wait has a deadline.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::faultproxy::{Fault, FaultProxy};
use common::pooler::Pooler;
use common::{PgOptions, PgServer, one, wait_until};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_postgres::{Client, NoTls};

/// Deadline for anything that should happen promptly.
const DEADLINE: Duration = Duration::from_secs(20);

/// A pgtarn config (client auth `trust`, user `app` with `password`
/// upstream) with one `[databases.NAME]` per entry, each pointing at
/// upstream database `app` on the given port, with `db_extra` lines.
fn config(general: &str, dbs: &[(&str, u16)], db_extra: &str, password: &str) -> String {
    let mut s =
        format!("[pgtarn]\nlisten_addr = \"127.0.0.1:0\"\nauth_type = \"trust\"\n{general}\n");
    for (name, port) in dbs {
        s += &format!(
            "[databases.{name}]\nhost = \"127.0.0.1\"\nport = {port}\ndbname = \"app\"\n{db_extra}\n"
        );
    }
    s + &format!("[users.app]\npassword = \"{password}\"\n")
}

fn conn_str(p: &Pooler, db: &str) -> String {
    format!("host=127.0.0.1 port={} user=app dbname={db}", p.addr.port())
}

async fn connect(p: &Pooler, db: &str) -> Result<Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(&conn_str(p, db), NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// SQLSTATE, message and hint of a server error; panics on any other
/// error (a protocol error would mean the client got a garbled stream).
fn db_error(e: &tokio_postgres::Error) -> (String, String, Option<String>) {
    let d = e
        .as_db_error()
        .unwrap_or_else(|| panic!("expected an ErrorResponse, got: {e:?}"));
    (
        d.code().code().to_owned(),
        d.message().to_owned(),
        d.hint().map(str::to_owned),
    )
}

/// Runs `f` within [`DEADLINE`], panicking with `what` otherwise.
async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within {DEADLINE:?}"))
}

/// Waits until the pool `db`/`app` has `size` connections, `idle` idle
/// and nobody waiting.
async fn wait_stats(p: &Pooler, db: &str, size: usize, idle: usize) {
    let pool = p.ctx.registry.find(db, "app").expect("pool exists");
    let what = format!("pool {db} has size {size}, idle {idle}, waiting 0");
    wait_until(&what, DEADLINE, || {
        let pool = pool.clone();
        async move { pool.size() == size && pool.idle() == idle && pool.waiting() == 0 }
    })
    .await;
}

/// pgtarn (database `app`, the right password, `general` and `db_extra`
/// settings) in front of a fault proxy to the shared Postgres.
async fn behind_proxy(general: &str, db_extra: &str) -> (FaultProxy, Pooler) {
    let proxy = FaultProxy::start(pg_addr(PgServer::shared())).await;
    let dbs = [("app", proxy.addr.port())];
    let p = Pooler::start(&config(general, &dbs, db_extra, "app-secret")).await;
    (proxy, p)
}

fn pg_addr(pg: &PgServer) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], pg.port))
}

/// Runs blocking harness calls (kill, restart) off the async workers.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

// ---------------------------------------------------------------------
// The proxy itself, against an echo server.

async fn echo_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// Sends `msg` and reads back up to `msg.len()` bytes until EOF, error or
/// `wait`; returns what came and whether the connection ended.
async fn exchange(s: &mut TcpStream, msg: &[u8], wait: Duration) -> (Vec<u8>, bool) {
    let _ = s.write_all(msg).await;
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let end = Instant::now() + wait;
    while got.len() < msg.len() {
        let left = end.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (got, true),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => return (got, false),
        }
    }
    (got, false)
}

#[tokio::test]
async fn proxy_passes_delays_refuses_cuts_drops_and_blackholes() {
    let proxy = FaultProxy::start(echo_server().await).await;
    let mut a = TcpStream::connect(proxy.addr).await.unwrap();
    assert_eq!(
        exchange(&mut a, b"hello", DEADLINE).await,
        (b"hello".to_vec(), false)
    );
    assert_eq!(proxy.accepted(), 1);

    proxy.set(Fault::Delay(Duration::from_millis(150)));
    let started = Instant::now();
    assert_eq!(exchange(&mut a, b"slow", DEADLINE).await.0, b"slow");
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "both directions wait"
    );

    proxy.set(Fault::Refuse);
    let mut refused = TcpStream::connect(proxy.addr).await.unwrap();
    assert_eq!(exchange(&mut refused, b"x", DEADLINE).await, (vec![], true));
    assert_eq!(
        exchange(&mut a, b"still", DEADLINE).await.0,
        b"still",
        "open ones pass"
    );

    proxy.set(Fault::CutAfter(3));
    assert_eq!(
        exchange(&mut a, b"abcdef", DEADLINE).await,
        (b"abc".to_vec(), true)
    );

    proxy.set(Fault::Blackhole);
    let mut black = TcpStream::connect(proxy.addr).await.unwrap();
    let short = Duration::from_millis(300);
    assert_eq!(
        exchange(&mut black, b"anyone?", short).await,
        (vec![], false)
    );
    proxy.set(Fault::Pass);
    let mut b = TcpStream::connect(proxy.addr).await.unwrap();
    assert_eq!(exchange(&mut b, b"back", DEADLINE).await.0, b"back");
    proxy.blackhole_existing();
    assert_eq!(exchange(&mut b, b"gone", short).await, (vec![], false));
    let mut c = TcpStream::connect(proxy.addr).await.unwrap();
    assert_eq!(
        exchange(&mut c, b"new", DEADLINE).await.0,
        b"new",
        "new ones pass"
    );

    let open = proxy.open();
    assert!(open >= 2, "black and b and c are open: {open}");
    proxy.drop_all();
    assert_eq!(exchange(&mut c, b"x", DEADLINE).await, (vec![], true));
    assert_eq!(exchange(&mut black, b"x", DEADLINE).await, (vec![], true));
    wait_until("every connection closed", DEADLINE, || async {
        proxy.open() == 0
    })
    .await;
    assert_eq!(proxy.accepted(), 5);
}

// ---------------------------------------------------------------------
// Postgres killed (kill -9) and restarted.

/// Clients idle in pgtarn while Postgres is killed and restarted see no
/// error: the dead idle server connections are closed by pool maintenance
/// (their sockets show EOF), or at the latest at checkout, and replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_killed_with_postgres_are_replaced_unseen() {
    let mut pg = PgServer::start(PgOptions::default());
    let p = Pooler::start(&config(
        "",
        &[("app", pg.port)],
        "pool_size = 3",
        "app-secret",
    ))
    .await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(connect(&p, "app").await.unwrap());
    }
    // Three transactions at once make three server connections.
    for c in &clients {
        c.batch_execute("BEGIN").await.unwrap();
    }
    let mut old_pids = Vec::new();
    for c in &clients {
        old_pids.push(one(c, "select pg_backend_pid()").await);
        c.batch_execute("COMMIT").await.unwrap();
    }
    wait_stats(&p, "app", 3, 3).await;

    blocking(|| pg.kill());
    // Pool maintenance notices the closed sockets by itself.
    wait_stats(&p, "app", 0, 0).await;
    blocking(|| pg.restart());

    for (i, c) in clients.iter().enumerate() {
        let pid = within("query after restart", one(c, "select pg_backend_pid()")).await;
        assert!(
            !old_pids.contains(&pid),
            "client {i} got a new server ({pid})"
        );
    }
    // The three dead ones were closed; one new connection served all.
    wait_stats(&p, "app", 1, 1).await;
}

/// Postgres killed mid-query: the client running the query gets 08006 at
/// once, the client waiting for a server gets 08006 naming the database,
/// a new client gets the same error from the server_login_retry cache;
/// after the restart pgtarn reconnects by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_killed_mid_query_fails_clients_fast_then_recovers() {
    let mut pg = PgServer::start(PgOptions::default());
    let general = "server_login_retry = \"1s\"";
    let p = Pooler::start(&config(
        general,
        &[("app", pg.port)],
        "pool_size = 1",
        "app-secret",
    ))
    .await;
    let running = Arc::new(connect(&p, "app").await.unwrap());
    let waiting = Arc::new(connect(&p, "app").await.unwrap());
    let r = running.clone();
    let in_flight = tokio::spawn(async move { r.simple_query("select pg_sleep(60)").await });
    let su = pg.superuser().await;
    wait_until("the query runs", DEADLINE, || {
        let su = &su;
        async move {
            let n = one(
                su,
                "select count(*) from pg_stat_activity where query = 'select pg_sleep(60)'",
            );
            n.await == "1"
        }
    })
    .await;
    let w = waiting.clone();
    let queued = tokio::spawn(async move { w.simple_query("select 1").await });
    let pool = p.pool();
    wait_until("a client waits", DEADLINE, || async { pool.waiting() == 1 }).await;
    drop(su);

    let killed = Instant::now();
    blocking(|| pg.kill());
    let e = within("in-flight error", in_flight)
        .await
        .unwrap()
        .unwrap_err();
    let (code, message, _) = db_error(&e);
    assert_eq!(code, "08006", "{message}");
    assert!(
        message.contains("database \"app\""),
        "names the database: {message}"
    );
    let e = within("waiting client's error", queued)
        .await
        .unwrap()
        .unwrap_err();
    let (code, message, _) = db_error(&e);
    assert_eq!(code, "08006", "{message}");
    assert!(
        message.starts_with("pgtarn: cannot connect to server for database \"app\": "),
        "{message}"
    );
    assert!(
        killed.elapsed() < Duration::from_secs(3),
        "{:?}",
        killed.elapsed()
    );

    // A new client (pgtarn still knows the login parameters) fails at its
    // first query, at once, with the cached error.
    let late = connect(&p, "app").await.unwrap();
    let started = Instant::now();
    let (code, message, hint) = db_error(&late.simple_query("select 1").await.unwrap_err());
    assert_eq!(code, "08006", "{message}");
    assert!(message.contains("database \"app\""), "{message}");
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(hint.is_some_and(|h| h.contains("server_login_retry")));
    wait_stats(&p, "app", 0, 0).await;

    blocking(|| pg.restart());
    let mut attempts = 0;
    wait_until("a new client succeeds after the restart", DEADLINE, || {
        attempts += 1;
        let p = &p;
        async move {
            match connect(p, "app").await {
                Ok(c) => c.simple_query("select 1").await.is_ok(),
                Err(_) => false,
            }
        }
    })
    .await;
    wait_stats(&p, "app", 1, 1).await;
    let c = connect(&p, "app").await.unwrap();
    assert_eq!(one(&c, "select 'back'").await, "back");
}

/// A backend terminated by Postgres (as on a fast shutdown) sends 57P01
/// FATAL before closing: the client gets that error, then pgtarn replaces
/// the connection for the next transaction.
#[tokio::test]
async fn terminated_backend_passes_57p01_to_the_client() {
    let pg = PgServer::shared();
    let p = Pooler::start(&config(
        "",
        &[("app", pg.port)],
        "pool_size = 1",
        "app-secret",
    ))
    .await;
    let c = Arc::new(connect(&p, "app").await.unwrap());
    let pid = one(&c, "select pg_backend_pid()").await;
    let c2 = c.clone();
    let sql = "select pg_sleep(60), 'terminate me'";
    let in_flight = tokio::spawn(async move { c2.simple_query(sql).await });
    let su = pg.superuser().await;
    wait_until("the query runs", DEADLINE, || {
        let su = &su;
        let q = format!(
            "select count(*) from pg_stat_activity \
             where pid = {pid} and query like '%terminate me%' and state = 'active'"
        );
        async move { one(su, &q).await == "1" }
    })
    .await;
    one(&su, &format!("select pg_terminate_backend({pid})")).await;
    let e = within("in-flight error", in_flight)
        .await
        .unwrap()
        .unwrap_err();
    let (code, message, _) = db_error(&e);
    assert_eq!(code, "57P01", "{message}");
    wait_stats(&p, "app", 0, 0).await;
    let c = connect(&p, "app").await.unwrap();
    assert_ne!(one(&c, "select pg_backend_pid()").await, pid);
}

// ---------------------------------------------------------------------
// Faults injected by the proxy.

/// A server connection that stops answering while idle (no FIN, no RST)
/// is caught by server_check_query (server_check_delay = 0s) within
/// server_connect_timeout; the client gets a fresh connection and no
/// error.
#[tokio::test]
async fn health_check_replaces_a_connection_that_stopped_answering() {
    let general = "server_check_delay = \"0s\"\nserver_connect_timeout = \"1s\"";
    let (proxy, p) = behind_proxy(general, "").await;
    let c = connect(&p, "app").await.unwrap();
    assert_eq!(one(&c, "select 1").await, "1");
    wait_stats(&p, "app", 1, 1).await;
    assert_eq!(proxy.accepted(), 1);

    proxy.blackhole_existing();
    let started = Instant::now();
    assert_eq!(within("query", one(&c, "select 2")).await, "2");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "the check waited: {took:?}"
    );
    assert_eq!(proxy.accepted(), 2, "one new connection");
    wait_stats(&p, "app", 1, 1).await;
    wait_until("the dead connection is closed", DEADLINE, || async {
        proxy.open() == 1
    })
    .await;
}

/// The check costs a round trip only when it is due: with every chunk
/// delayed 300 ms each way, a query on an idle connection takes one round
/// trip (~600 ms) when the check is off (empty server_check_query) or the
/// connection was used within server_check_delay, and two when the check
/// runs (server_check_delay = 0s).
#[tokio::test]
async fn server_check_query_runs_only_when_due() {
    let pg = PgServer::shared();
    let cases = [
        (
            "server_check_query = \"\"\nserver_check_delay = \"0s\"",
            false,
        ),
        ("server_check_delay = \"30s\"", false),
        ("server_check_delay = \"0s\"", true),
    ];
    for (general, checked) in cases {
        let proxy = FaultProxy::start(pg_addr(pg)).await;
        let p = Pooler::start(&config(
            general,
            &[("app", proxy.addr.port())],
            "",
            "app-secret",
        ))
        .await;
        let c = connect(&p, "app").await.unwrap();
        let pid = one(&c, "select pg_backend_pid()").await;
        wait_stats(&p, "app", 1, 1).await;
        proxy.set(Fault::Delay(Duration::from_millis(300)));
        let started = Instant::now();
        assert_eq!(one(&c, "select pg_backend_pid()").await, pid, "{general}");
        let took = started.elapsed();
        if checked {
            assert!(took >= Duration::from_millis(1150), "{general}: {took:?}");
        } else {
            assert!(took < Duration::from_millis(1100), "{general}: {took:?}");
        }
        assert_eq!(proxy.accepted(), 1, "{general}");
    }
}

/// Postgres refusing connections: the first client gets 08006 naming the
/// database; the next one, within server_login_retry, gets the same error
/// at once without a new connection attempt; once the time is up one
/// attempt is made and succeeds.
#[tokio::test]
async fn refused_connections_fail_fast_and_are_not_retried_within_server_login_retry() {
    let proxy = FaultProxy::start(pg_addr(PgServer::shared())).await;
    proxy.set(Fault::Refuse);
    let general = "server_login_retry = \"2s\"";
    let p = Pooler::start(&config(
        general,
        &[("app", proxy.addr.port())],
        "",
        "app-secret",
    ))
    .await;
    let started = Instant::now();
    let (code, first, hint) = db_error(&connect(&p, "app").await.expect_err("refused"));
    assert_eq!(code, "08006", "{first}");
    assert!(
        first.starts_with("pgtarn: cannot connect to server for database \"app\": "),
        "{first}"
    );
    assert_eq!(hint, None, "a fresh failure");
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(proxy.accepted(), 1);

    let started = Instant::now();
    let (code, again, hint) = db_error(&connect(&p, "app").await.expect_err("cached"));
    let took = started.elapsed();
    assert_eq!((code.as_str(), again.as_str()), ("08006", first.as_str()));
    assert!(hint.is_some_and(|h| h.contains("server_login_retry")));
    // The client's own SCRAM login to pgtarn is most of this on a loaded
    // machine; the proxy count below proves no upstream attempt was made.
    assert!(took < Duration::from_secs(1), "{took:?}");
    assert_eq!(proxy.accepted(), 1, "no new connection attempt");

    proxy.set(Fault::Pass);
    wait_until("a client gets in again", DEADLINE, || async {
        connect(&p, "app").await.is_ok()
    })
    .await;
    assert!(started.elapsed() >= Duration::from_millis(1800));
    assert_eq!(
        proxy.accepted(),
        2,
        "exactly one attempt after server_login_retry"
    );
    wait_stats(&p, "app", 1, 1).await;
}

/// A wrong upstream password: 28P01 from Postgres reaches the client,
/// naming the database; a second client within server_login_retry gets
/// it at once, without a new login.
#[tokio::test]
async fn wrong_upstream_password_is_28p01_and_repeated_from_the_cache() {
    let proxy = FaultProxy::start(pg_addr(PgServer::shared())).await;
    let p = Pooler::start(&config("", &[("app", proxy.addr.port())], "", "wrong")).await;
    let (code, first, _) = db_error(&connect(&p, "app").await.expect_err("rejected"));
    assert_eq!(code, "28P01", "{first}");
    assert_eq!(
        first,
        "pgtarn: cannot connect to server for database \"app\": \
         password authentication failed for user \"app\""
    );
    let started = Instant::now();
    let (code, again, hint) = db_error(&connect(&p, "app").await.expect_err("cached"));
    let took = started.elapsed();
    assert_eq!((code.as_str(), again.as_str()), ("28P01", first.as_str()));
    assert!(hint.is_some_and(|h| h.contains("server_login_retry")));
    // The client's own SCRAM login to pgtarn is most of this on a loaded
    // machine; the proxy count below proves no upstream attempt was made.
    assert!(took < Duration::from_secs(1), "{took:?}");
    assert_eq!(proxy.accepted(), 1);
}

/// A server that accepts but never answers (blackhole), or answers too
/// slowly: server_connect_timeout fires with 08006 naming the database,
/// while another pool pointing straight at Postgres keeps working.
#[tokio::test]
async fn blackholed_or_slow_server_times_out_and_other_pools_are_unaffected() {
    let pg = PgServer::shared();
    let proxy = FaultProxy::start(pg_addr(pg)).await;
    proxy.set(Fault::Blackhole);
    let general = "server_connect_timeout = \"1s\"\nserver_login_retry = \"0s\"";
    let dbs = [("app", proxy.addr.port()), ("direct", pg.port)];
    let p = Pooler::start(&config(general, &dbs, "", "app-secret")).await;
    let direct = connect(&p, "direct").await.unwrap();

    for fault in [Fault::Blackhole, Fault::Delay(Duration::from_secs(3))] {
        proxy.set(fault);
        let accepted = proxy.accepted();
        let started = Instant::now();
        let pp = conn_str(&p, "app");
        let stuck = tokio::spawn(async move { tokio_postgres::connect(&pp, NoTls).await.err() });
        wait_until("pgtarn is connecting", DEADLINE, || async {
            proxy.accepted() == accepted + 1
        })
        .await;
        // Meanwhile the other pool answers promptly, repeatedly.
        for i in 0..5 {
            let t = Instant::now();
            assert_eq!(one(&direct, &format!("select {i}")).await, i.to_string());
            assert!(
                t.elapsed() < Duration::from_millis(500),
                "{:?}",
                t.elapsed()
            );
        }
        let fresh = connect(&p, "direct").await.unwrap();
        assert_eq!(one(&fresh, "select 'direct'").await, "direct");
        assert!(!stuck.is_finished(), "{fault:?}: still connecting");

        let e = within("connect timeout", stuck)
            .await
            .unwrap()
            .expect("an error");
        let took = started.elapsed();
        let (code, message, _) = db_error(&e);
        assert_eq!(code, "08006", "{fault:?}: {message}");
        assert_eq!(
            message,
            "pgtarn: cannot connect to server for database \"app\": timed out after 1s"
        );
        assert!(took >= Duration::from_millis(950), "{fault:?}: {took:?}");
        assert!(took < Duration::from_secs(3), "{fault:?}: {took:?}");
        wait_stats(&p, "app", 0, 0).await;
    }
    wait_stats(&p, "direct", 1, 1).await;
}

/// A client whose login times out while pgtarn is still opening a server
/// connection for it abandons that connect: `sv_login` (SHOW POOLS, the
/// `login` servers gauge) must not go on counting it.
#[tokio::test]
async fn an_abandoned_server_connect_is_no_longer_counted_as_logging_in() {
    let pg = PgServer::shared();
    let proxy = FaultProxy::start(pg_addr(pg)).await;
    proxy.set(Fault::Blackhole);
    let general = "client_login_timeout = \"1s\"\nserver_connect_timeout = \"60s\"";
    let p = Pooler::start(&config(
        general,
        &[("app", proxy.addr.port())],
        "",
        "app-secret",
    ))
    .await;
    let pp = conn_str(&p, "app");
    let login = tokio::spawn(async move { tokio_postgres::connect(&pp, NoTls).await.err() });
    let logging_in = || {
        let pool = p.ctx.registry.find("app", "app");
        pool.map(|pool| pool.counts(None).sv_login)
    };
    wait_until("pgtarn is connecting", DEADLINE, || async {
        logging_in() == Some(1)
    })
    .await;
    let refused = within("the login timeout", login).await.unwrap();
    assert!(refused.is_some(), "the login timed out");
    wait_until("no server counted as logging in", DEADLINE, || async {
        logging_in() == Some(0)
    })
    .await;
}

/// The connection cut in the middle of a large result: the client gets an
/// error, not a truncated success; the server connection is discarded and
/// the next query gets a new one and the whole result.
#[tokio::test]
async fn a_cut_mid_result_is_an_error_and_the_connection_is_discarded() {
    let (proxy, p) = behind_proxy("", "").await;
    let c = connect(&p, "app").await.unwrap();
    assert_eq!(one(&c, "select 1").await, "1");
    let sql = "select repeat('x', 1000) from generate_series(1, 5000)";

    proxy.set(Fault::CutAfter(100_000));
    let e = within("cut query", c.query(sql, &[])).await.unwrap_err();
    let (code, message, _) = db_error(&e);
    assert_eq!(code, "08006", "{message}");
    wait_stats(&p, "app", 0, 0).await;
    wait_until("the cut connection is gone", DEADLINE, || async {
        proxy.open() == 0
    })
    .await;

    proxy.set(Fault::Pass);
    let c = connect(&p, "app").await.unwrap();
    let rows = within("full query", c.query(sql, &[])).await.unwrap();
    assert_eq!(rows.len(), 5000);
    assert_eq!(proxy.accepted(), 2);
    wait_stats(&p, "app", 1, 1).await;
}

/// A cut inside a row large enough (over 64 KiB) for pgtarn to stream it
/// to the client in pieces: part of the row has reached the client, so no
/// well-formed ErrorResponse can follow; the client still gets an error
/// (its connection ends mid-message), never a truncated success.
#[tokio::test]
async fn a_cut_inside_a_streamed_row_is_still_an_error() {
    let (proxy, p) = behind_proxy("", "").await;
    let c = connect(&p, "app").await.unwrap();
    assert_eq!(one(&c, "select 1").await, "1");
    let sql = "select repeat('y', 100000) from generate_series(1, 40)";
    proxy.set(Fault::CutAfter(250_000));
    let result = within("cut query", c.query(sql, &[])).await;
    let e = result.expect_err("not a truncated success");
    assert!(e.as_db_error().is_none(), "no ErrorResponse fits: {e:?}");
    assert!(c.is_closed(), "the client's connection ended");
    wait_stats(&p, "app", 0, 0).await;
    proxy.set(Fault::Pass);
    let c = connect(&p, "app").await.unwrap();
    let rows = within("full query", c.query(sql, &[])).await.unwrap();
    assert_eq!(rows.len(), 40);
}

/// Every server connection dropped abruptly (RST) while idle: clients see
/// nothing, the dead connections are replaced at checkout.
#[tokio::test]
async fn connections_reset_while_idle_are_replaced_unseen() {
    let (proxy, p) = behind_proxy("", "").await;
    let a = connect(&p, "app").await.unwrap();
    let b = connect(&p, "app").await.unwrap();
    a.batch_execute("BEGIN").await.unwrap();
    b.batch_execute("BEGIN").await.unwrap();
    a.batch_execute("COMMIT").await.unwrap();
    b.batch_execute("COMMIT").await.unwrap();
    wait_stats(&p, "app", 2, 2).await;
    proxy.drop_all();
    wait_until("dropped", DEADLINE, || async { proxy.open() == 0 }).await;
    assert_eq!(one(&a, "select 'a'").await, "a");
    assert_eq!(one(&b, "select 'b'").await, "b");
    assert_eq!(proxy.accepted(), 3);
    wait_stats(&p, "app", 1, 1).await;
}

/// A connection's timer, from /proc/net/tcp: armed for keepalive
/// (`tr` 2) with the seconds until its next probe, or not.
#[derive(Debug, PartialEq)]
enum Timer {
    Keepalive(u64),
    Off,
}

/// The timer of the established IPv4 TCP socket with local port `local`
/// and, unless 0, remote port `remote`, once nothing it sent is waiting
/// for an acknowledgement (then the retransmit timer hides the other);
/// waits for that with a deadline.
async fn idle_timer(local: u16, remote: u16) -> Timer {
    let read = || -> Option<(String, u64)> {
        let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
        let port = |addr: &str| u16::from_str_radix(addr.rsplit(':').next()?, 16).ok();
        table.lines().skip(1).find_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (l, r) = (port(f.get(1)?)?, port(f.get(2)?)?);
            let established = f.get(3) == Some(&"01");
            if l != local || (remote != 0 && r != remote) || !established {
                return None;
            }
            let (timer, when) = f.get(5)?.split_once(':')?;
            Some((timer.to_owned(), u64::from_str_radix(when, 16).ok()? / 100))
        })
    };
    let deadline = Instant::now() + DEADLINE;
    loop {
        match read() {
            Some((timer, secs)) if timer == "02" => return Timer::Keepalive(secs),
            Some((timer, _)) if timer == "00" => return Timer::Off,
            other => assert!(Instant::now() < deadline, "port {local}: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `tcp_keepalive` (on by default) with `tcp_keepidle`: both the client's
/// connection to pgtarn and pgtarn's to Postgres have the keepalive timer
/// armed for that idle time; with `tcp_keepalive = false`, neither.
#[tokio::test]
async fn keepalive_is_set_on_client_and_server_connections() {
    let cases = [
        ("tcp_keepidle = \"7m\"", true),
        ("tcp_keepalive = false", false),
    ];
    for (general, on) in cases {
        let p = Pooler::trust(general, "pool_size = 1").await;
        let app = format!("keepalive-{on}");
        let c = p.connect_with(&format!("application_name={app}")).await;
        one(&c, "select 1").await;
        let sql =
            format!("select client_port from pg_stat_activity where application_name = '{app}'");
        let su = PgServer::shared().superuser().await;
        let row = su
            .query_one(&sql, &[])
            .await
            .expect("pgtarn's server connection");
        let server_side = u16::try_from(row.get::<_, i32>(0)).expect("port");
        let timers = [
            (
                "pgtarn → Postgres",
                idle_timer(server_side, PgServer::shared().port).await,
            ),
            ("client → pgtarn", idle_timer(p.addr.port(), 0).await),
        ];
        for (what, timer) in timers {
            match timer {
                Timer::Keepalive(secs) => {
                    assert!(on && (360..=420).contains(&secs), "{what}: {secs} s")
                }
                Timer::Off => assert!(!on, "{what}: no keepalive timer"),
            }
        }
    }
}

/// A server that stops answering while pgtarn brings its settings in line
/// with a client's (the step before the client's query) is bounded by
/// `query_timeout` like the query itself: the client gets an error instead
/// of hanging, the server is dropped, and the pool recovers.
#[tokio::test]
async fn a_server_dead_while_settings_are_synced_is_bounded_by_query_timeout() {
    let general = "query_timeout = \"500ms\"\ncancel_wait_timeout = \"500ms\"";
    let (proxy, p) = behind_proxy(general, "pool_size = 1").await;
    let named = |name: &str| format!("{} application_name={name}", conn_str(&p, "app"));
    let (a, conn) = tokio_postgres::connect(&named("first"), NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    assert_eq!(one(&a, "select 1").await, "1");
    wait_stats(&p, "app", 1, 1).await;
    // The next client's application_name must be set on the server first;
    // the server no longer answers.
    let (b, conn) = tokio_postgres::connect(&named("second"), NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    proxy.blackhole_existing();
    let started = Instant::now();
    let r = within("the second client's query", b.simple_query("select 2")).await;
    let e = r.expect_err("the query cannot have run");
    assert_eq!(db_error(&e).0, "08006", "{e}");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "took {took:?}");
    let c = connect(&p, "app").await.unwrap();
    assert_eq!(within("the pool recovers", one(&c, "select 3")).await, "3");
}

/// A server that stops answering while pgtarn reads back the settings a
/// client's `SET` changed (the client already has its reply) is bounded by
/// `query_timeout` too: the client is told at its next query, not left
/// hanging, and the pool recovers.
#[tokio::test]
async fn a_server_dead_while_settings_are_read_back_is_bounded_by_query_timeout() {
    let general = "query_timeout = \"500ms\"\ncancel_wait_timeout = \"500ms\"";
    let (proxy, p) = behind_proxy(general, "pool_size = 1").await;
    let a = connect(&p, "app").await.unwrap();
    assert_eq!(one(&a, "select 1").await, "1");
    wait_stats(&p, "app", 1, 1).await;
    // The SET's CommandComplete (9 bytes) and ReadyForQuery (6) pass; the
    // read-back that follows gets nothing.
    proxy.set(Fault::HangAfter(15));
    within("the SET", a.batch_execute("set work_mem = '7MB'"))
        .await
        .unwrap();
    let started = Instant::now();
    let r = within("the next query", a.simple_query("select 2")).await;
    let e = r.expect_err("the session ended with its server");
    assert!(e.is_closed() || db_error(&e).0 == "08006", "{e}");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "took {took:?}");
    proxy.set(Fault::Pass);
    let c = connect(&p, "app").await.unwrap();
    assert_eq!(within("the pool recovers", one(&c, "select 3")).await, "3");
}

/// A server whose login was still under way when `RECONNECT` ran (it may
/// be headed for the old upstream) is retired like the others: listed
/// with `close_needed` once connected, and replaced after its use.
#[tokio::test]
async fn a_server_logging_in_during_reconnect_is_retired_too() {
    let (proxy, p) = behind_proxy("", "pool_size = 1").await;
    // Each chunk through the proxy waits: the first server's login, which
    // the client's login needs, takes a while.
    proxy.set(Fault::Delay(Duration::from_millis(150)));
    let pool_login = tokio::spawn({
        let conn_str = p.conn_str("");
        async move {
            let (c, conn) = tokio_postgres::connect(&conn_str, NoTls).await?;
            tokio::spawn(conn);
            Ok::<_, tokio_postgres::Error>(c)
        }
    });
    wait_until("the server login began", DEADLINE, || async {
        proxy.accepted() == 1
    })
    .await;
    p.ctx.registry.reconnect(Some("app"));
    let client = within("the client login", pool_login)
        .await
        .unwrap()
        .unwrap();
    let servers = p.ctx.registry.servers.snapshot();
    assert_eq!(servers.len(), 1);
    assert!(servers[0].close_needed(), "began before the RECONNECT");
    proxy.set(Fault::Pass);
    assert_eq!(within("a query", one(&client, "select 1")).await, "1");
    wait_until("replaced", DEADLINE, || async {
        let servers = p.ctx.registry.servers.snapshot();
        servers.iter().all(|s| !s.close_needed())
    })
    .await;
}

/// The min_pool_size fill makes the pool open a connection by holding its
/// idle ones; while that connection is slow to log in (here: an upstream
/// that accepts and never answers, until server_connect_timeout), a
/// client that needs a server gets one of the idle ones at once instead
/// of waiting behind the fill for the whole connect timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_pool_size_fill_does_not_keep_idle_servers_from_clients() {
    let proxy = FaultProxy::start(pg_addr(PgServer::shared())).await;
    let text = |min: u32| {
        let db = format!("pool_size = 2\nmin_pool_size = {min}\npool_mode = \"transaction\"");
        let general = "server_connect_timeout = \"5s\"";
        config(general, &[("app", proxy.addr.port())], &db, "app-secret")
    };
    let p = Pooler::start(&text(0)).await;
    let c = connect(&p, "app").await.expect("login");
    assert_eq!(one(&c, "select 'first'").await, "first");
    wait_stats(&p, "app", 1, 1).await;
    // The next upstream connection hangs; the open one keeps passing.
    proxy.set(Fault::Blackhole);
    let config = pgtarn::config::Config::from_toml(&text(2)).expect("config");
    p.ctx.apply(config).expect("reload");
    wait_until("the fill connects upstream", DEADLINE, || {
        let accepted = proxy.accepted();
        async move { accepted >= 2 }
    })
    .await;
    proxy.set(Fault::Pass);
    let started = Instant::now();
    assert_eq!(one(&c, "select 'served'").await, "served");
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "the idle server was held by the fill for {took:?}"
    );
}
