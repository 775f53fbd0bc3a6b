//! Client-side time limits, end to end: `client_idle_timeout`,
//! `idle_transaction_timeout` and `query_timeout` (including a client that
//! stops reading a large result), each with its SQLSTATE, and the pool
//! left clean afterwards.

mod common;

use std::time::{Duration, Instant};

use common::pg::PgServer;
use common::pooler::{self, Pooler};
use common::raw::Raw;
use common::wait_until;
use tokio_postgres::NoTls;

const DEADLINE: Duration = Duration::from_secs(10);

async fn pooler(general: &str) -> Pooler {
    Pooler::trust(general, "pool_size = 1").await
}

/// Connects and returns the client plus the connection task, whose result
/// carries the error pgtarn ended the connection with.
async fn connect(
    p: &Pooler,
) -> (
    tokio_postgres::Client,
    tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
) {
    let (client, conn) = tokio_postgres::connect(&p.conn_str(""), NoTls)
        .await
        .expect("connect through pgtarn");
    (client, tokio::spawn(conn))
}

async fn ended_with(conn: tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>) -> String {
    let result = tokio::time::timeout(DEADLINE, conn)
        .await
        .expect("pgtarn ended the connection");
    let e = result
        .expect("join")
        .expect_err("the connection ends with an error");
    e.as_db_error()
        .map(|d| format!("{} {}", d.code().code(), d.message()))
        .unwrap_or_else(|| format!("no SQLSTATE: {e}"))
}

/// Backends of the test user that are idle inside a transaction.
async fn idle_in_transaction() -> i64 {
    let su = PgServer::shared().superuser().await;
    let row = su
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app' AND state LIKE 'idle in transaction%'",
            &[],
        )
        .await
        .expect("pg_stat_activity");
    row.get(0)
}

#[tokio::test]
async fn client_idle_timeout_disconnects_an_idle_client_with_57p05() {
    let p = pooler("client_idle_timeout = \"300ms\"").await;
    let (client, conn) = connect(&p).await;
    client
        .simple_query("SELECT 1")
        .await
        .expect("works at first");
    assert_eq!(ended_with(conn).await, "57P05 client_idle_timeout");
    // A busy client is not idle: queries spaced below the limit go on.
    let (busy, _conn) = connect(&p).await;
    for _ in 0..4 {
        busy.simple_query("SELECT pg_sleep(0.1)")
            .await
            .expect("busy client keeps working");
    }
    p.stop().await;
}

#[tokio::test]
async fn idle_transaction_timeout_ends_the_session_and_frees_the_server() {
    let p = pooler("idle_transaction_timeout = \"300ms\"").await;
    let (client, conn) = connect(&p).await;
    client.simple_query("BEGIN; SELECT 1").await.expect("begin");
    assert_eq!(ended_with(conn).await, "25P03 idle transaction timeout");
    wait_until("no backend left idle in transaction", DEADLINE, || async {
        idle_in_transaction().await == 0
    })
    .await;
    let (next, _conn) = connect(&p).await;
    assert_eq!(
        common::one(&next, "SELECT 2").await,
        "2",
        "pool_size 1 serves the next client"
    );
    p.stop().await;
}

/// A 10 s sleep ends within 3 s with `query_timeout`'s 57014.
async fn sleep_is_cut_by_query_timeout(client: &tokio_postgres::Client) {
    let started = Instant::now();
    let e = client
        .simple_query("SELECT pg_sleep(10)")
        .await
        .expect_err("timed out");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "{took:?}");
    let db = e.as_db_error().expect("an ErrorResponse");
    assert_eq!(db.code().code(), "57014");
    assert_eq!(db.message(), "canceling statement due to query_timeout");
}

#[tokio::test]
async fn query_timeout_cancels_the_query_and_keeps_the_client() {
    let p = pooler("query_timeout = \"300ms\"").await;
    let (client, _conn) = connect(&p).await;
    sleep_is_cut_by_query_timeout(&client).await;
    client
        .simple_query("SELECT 1")
        .await
        .expect("the client goes on");
    p.stop().await;
}

#[tokio::test]
async fn query_timeout_ends_a_client_that_stops_reading() {
    let p = pooler("query_timeout = \"1s\"").await;
    let mut raw = Raw::login(p.addr, "app", "app").await;
    // About 100 MB of rows; the client reads none of it.
    raw.query(
        "SELECT repeat('x', 1000) FROM generate_series(1, 100000) a, generate_series(1, 1) b",
    )
    .await;
    wait_until("the stuck client's server is gone", DEADLINE, || async {
        let pool = p.pool();
        pool.size() == 0
    })
    .await;
    // pgtarn closed the connection (a message may have been cut, so no
    // ErrorResponse can follow it): reading drains to end of file.
    let drained = tokio::time::timeout(DEADLINE, raw.drain()).await;
    assert!(
        drained.is_ok(),
        "pgtarn closed the stuck client's connection"
    );
    let (next, _conn) = connect(&p).await;
    next.simple_query("SELECT 1")
        .await
        .expect("the pool recovered");
    p.stop().await;
}

#[tokio::test]
async fn query_timeout_gives_up_on_a_cancel_that_cannot_be_delivered() {
    use common::faultproxy::{Fault, FaultProxy};
    let pg = PgServer::shared();
    let proxy = FaultProxy::start(std::net::SocketAddr::from(([127, 0, 0, 1], pg.port))).await;
    let general =
        "auth_type = \"trust\"\nquery_timeout = \"300ms\"\ncancel_wait_timeout = \"500ms\"";
    let text = pooler::config(pg, general, "pool_size = 1").replace(
        &format!("port = {}", pg.port),
        &format!("port = {}", proxy.addr.port()),
    );
    let p = Pooler::start(&text).await;
    let (client, conn) = connect(&p).await;
    client.simple_query("SELECT 1").await.expect("warm up");
    // The cancel request needs a new connection to Postgres: refuse it.
    proxy.set(Fault::Refuse);
    let started = Instant::now();
    let e = client
        .simple_query("SELECT pg_sleep(5)")
        .await
        .expect_err("timed out");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "{took:?}");
    let db = e.as_db_error().expect("an ErrorResponse");
    assert_eq!((db.code().code(), db.message()), ("57014", "query_timeout"));
    let closed = tokio::time::timeout(DEADLINE, conn)
        .await
        .expect("connection ended");
    assert!(closed.is_ok(), "the client was disconnected");
    wait_until("the server was discarded", DEADLINE, || async {
        p.pool().size() == 0
    })
    .await;
    proxy.set(Fault::Pass);
    let (next, _conn) = connect(&p).await;
    assert_eq!(common::one(&next, "SELECT 5").await, "5");
    p.stop().await;
}

/// `client_login_timeout` bounds the whole login, from connecting to
/// ReadyForQuery (as PgBouncer's does): a client that spends most of it
/// before its startup packet does not get a fresh limit for authenticating
/// (with a limit per phase it would be closed 1.8 s after connecting).
#[tokio::test]
async fn client_login_timeout_bounds_the_whole_login() {
    let general = "auth_type = \"scram-sha-256\"\nclient_login_timeout = \"1s\"";
    let p = Pooler::start(&pooler::config(
        PgServer::shared(),
        general,
        "pool_size = 1",
    ))
    .await;
    let started = Instant::now();
    let mut raw = Raw::open(p.addr).await;
    // A slow client: most of the limit passes before the startup packet.
    tokio::time::sleep(Duration::from_millis(800)).await;
    raw.send(&pgtarn::protocol::encode::startup_message(&[
        ("user", "app"),
        ("database", "app"),
    ]))
    .await;
    let (tag, _) = raw.read().await.expect("an authentication request");
    assert_eq!(tag, b'R');
    // It never answers: pgtarn closes once the login's 1 s is up.
    let rest = raw.read_to_eof().await;
    let waited = started.elapsed();
    assert!(rest.is_empty(), "sent {rest:?} before closing");
    assert!(
        (Duration::from_millis(900)..Duration::from_millis(1600)).contains(&waited),
        "closed {waited:?} after connecting; client_login_timeout is 1 s for the whole login"
    );
    // Others still log in.
    let (client, conn) = tokio_postgres::connect(&p.conn_str(""), NoTls)
        .await
        .expect("a prompt client logs in");
    tokio::spawn(conn);
    let row = tokio::time::timeout(DEADLINE, client.query_one("SELECT 1", &[]))
        .await
        .expect("SELECT 1 within the deadline")
        .expect("SELECT 1");
    assert_eq!(row.get::<_, i32>(0), 1);
}

/// The admin console's login is a login like any other: bounded by
/// `client_login_timeout` and counted against `max_client_conn`, so that
/// unauthenticated connections naming the console cannot pile up.
#[tokio::test]
async fn console_logins_are_bounded_and_counted_like_any_login() {
    let general = "auth_type = \"scram-sha-256\"\nclient_login_timeout = \"1s\"\n\
                   max_client_conn = 2\nadmin_users = [\"app\"]";
    let p = Pooler::start(&pooler::config(
        PgServer::shared(),
        general,
        "pool_size = 1",
    ))
    .await;
    let started = Instant::now();
    let mut stalled = Vec::new();
    for database in ["pgtarn", "pgbouncer"] {
        let mut raw = Raw::open(p.addr).await;
        raw.send(&pgtarn::protocol::encode::startup_message(&[
            ("user", "app"),
            ("database", database),
        ]))
        .await;
        let (tag, _) = raw.read().await.expect("an authentication request");
        assert_eq!(tag, b'R');
        stalled.push(raw);
    }
    // Both slots are taken by logins in progress: a third client is refused.
    let refused = tokio_postgres::connect(&p.conn_str(""), NoTls).await;
    let e = refused.err().expect("max_client_conn reached");
    assert_eq!(e.code().map(|c| c.code()), Some("53300"), "{e}");
    // Neither answers: each is closed once its login's 1 s is up.
    for raw in &mut stalled {
        let rest = raw.read_to_eof().await;
        assert!(rest.is_empty(), "sent {rest:?} before closing");
    }
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_millis(1800),
        "closed after {waited:?}"
    );
    // The slots are free again: the console and clients log in.
    let admin = p.connect_with("dbname=pgtarn").await;
    assert!(!admin.simple_query("SHOW POOLS").await.unwrap().is_empty());
    let (client, conn) = tokio_postgres::connect(&p.conn_str(""), NoTls)
        .await
        .expect("a client logs in");
    tokio::spawn(conn);
    assert_eq!(
        client
            .query_one("SELECT 1", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        1
    );
}

/// A client that stops reading once its query is done (ReadyForQuery
/// already queued for it, its transaction open) is still bound by
/// `idle_transaction_timeout`: its server is freed for others, rather than
/// pinned for as long as the client keeps the connection open.
#[tokio::test]
async fn idle_transaction_timeout_frees_the_server_of_a_client_that_stops_reading() {
    let p = pooler("idle_transaction_timeout = \"500ms\"\nquery_timeout = \"1s\"").await;
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let stream = socket.connect(p.addr).await.expect("connect");
    let mut raw = Raw::from_stream(stream);
    raw.send(&pgtarn::protocol::encode::startup_message(&[
        ("user", "app"),
        ("database", "app"),
    ]))
    .await;
    raw.read_until(b'Z').await;
    raw.query("BEGIN").await;
    raw.read_until(b'Z').await;
    let su = PgServer::shared().superuser().await;
    // Small results (each a single read for pgtarn, ReadyForQuery
    // included), one at a time, none read, until pgtarn stops taking the
    // client's queries: its socket to the client is full.
    let mut stuck = false;
    for i in 0..20_000 {
        let sql = format!("SELECT {i}, repeat('x', 6000)");
        raw.query(&sql).await;
        let ran = tokio::time::timeout(Duration::from_secs(2), async {
            loop {
                let row = su
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app' \
                         AND state = 'idle in transaction' AND query = $1",
                        &[&sql],
                    )
                    .await
                    .expect("pg_stat_activity");
                if row.get::<_, i64>(0) == 1 {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        if ran.is_err() {
            stuck = true;
            break;
        }
    }
    assert!(stuck, "pgtarn's socket to the client filled up");
    wait_until("the stalled client's server is freed", DEADLINE, || async {
        idle_in_transaction().await == 0 && p.pool().size() == 0
    })
    .await;
    let (next, _conn) = connect(&p).await;
    assert_eq!(
        common::one(&next, "SELECT 3").await,
        "3",
        "pool_size 1 serves the next client"
    );
    drop(raw);
    p.stop().await;
}

/// `query_timeout` cancels a query even while the client has a large
/// pipeline queued behind it: the server, blocked (here on a lock), reads
/// none of it, and pgtarn is blocked writing it to the server.
#[tokio::test]
async fn query_timeout_cancels_a_query_with_a_large_pipeline_behind_it() {
    use bytes::{Buf, BytesMut};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let p = pooler("query_timeout = \"500ms\"").await;
    let raw = Raw::login(p.addr, "app", "app").await;
    let pg = PgServer::shared();
    let (holder, conn) = tokio_postgres::connect(&pg.app_conn_str(), NoTls)
        .await
        .expect("connect to Postgres");
    tokio::spawn(conn);
    holder
        .simple_query("SELECT pg_advisory_lock(7314)")
        .await
        .expect("take the lock");
    // The blocked query, then 32 MB of queries behind it.
    let mut pipeline = BytesMut::new();
    pgtarn::protocol::encode::query(&mut pipeline, "SELECT pg_advisory_lock(7314)");
    let filler = format!("SELECT 1 -- {}", "x".repeat(64 * 1024));
    for _ in 0..512 {
        pgtarn::protocol::encode::query(&mut pipeline, &filler);
    }
    let Raw { stream, .. } = raw;
    let (mut rd, mut wr) = stream.into_split();
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(&pipeline).await;
        wr
    });
    let started = Instant::now();
    // RowDescription, then the error.
    let first = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buf = BytesMut::new();
        loop {
            if buf.len() >= 5 {
                let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
                if buf.len() > len {
                    let tag = buf[0];
                    buf.advance(5);
                    let body = buf.split_to(len - 4).freeze();
                    if tag != b'T' {
                        return (tag, body);
                    }
                    continue;
                }
            }
            assert_ne!(rd.read_buf(&mut buf).await.expect("read"), 0, "EOF");
        }
    })
    .await;
    let waited = started.elapsed();
    holder
        .simple_query("SELECT pg_advisory_unlock(7314)")
        .await
        .expect("release the lock");
    let (tag, body) = first.expect("the blocked query ends within 5 s");
    assert_eq!(tag, b'E', "an ErrorResponse first");
    assert_eq!(common::raw::sqlstate(&body), "57014", "after {waited:?}");
    drop(writer.await);
    p.stop().await;
}

/// A client that sends messages pgtarn answers itself (Sync, with no
/// server attached) and never reads its replies is bound by
/// `client_idle_timeout` too: it is disconnected rather than left
/// connected, holding its client slot, for as long as it likes.
#[tokio::test]
async fn client_idle_timeout_ends_a_client_that_sends_syncs_and_never_reads() {
    use tokio::io::AsyncWriteExt;
    let p = pooler("client_idle_timeout = \"500ms\"").await;
    let raw = Raw::login(p.addr, "app", "app").await;
    let Raw { stream, .. } = raw;
    let (rd, mut wr) = stream.into_split();
    // 8 MB of Syncs, each answered with a ReadyForQuery that is never read.
    let syncs = common::raw::ext::sync().repeat((8 << 20) / 5);
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(&syncs).await;
        wr
    });
    wait_until("pgtarn disconnected the client", DEADLINE, || async {
        p.pool().counts(None).cl_active == 0
    })
    .await;
    drop(rd);
    writer.abort();
    let (next, _conn) = connect(&p).await;
    assert_eq!(common::one(&next, "SELECT 4").await, "4");
    p.stop().await;
}

/// `query_timeout` applies to each query of a pipeline: a slow query sent
/// in one write behind a quick one is cancelled too (the quick one's
/// ReadyForQuery must not end the timer for the rest).
#[tokio::test]
async fn query_timeout_cancels_a_slow_query_pipelined_behind_a_quick_one() {
    let p = pooler("query_timeout = \"300ms\"").await;
    let mut raw = Raw::login(p.addr, "app", "app").await;
    let mut both = bytes::BytesMut::new();
    pgtarn::protocol::encode::query(&mut both, "SELECT 1");
    pgtarn::protocol::encode::query(&mut both, "SELECT pg_sleep(10)");
    let started = Instant::now();
    raw.send(&both).await;
    let first = raw.read_until(b'Z').await;
    assert!(first.iter().all(|(t, _)| *t != b'E'), "the quick one ran");
    let second = tokio::time::timeout(Duration::from_secs(5), raw.read_until(b'Z'))
        .await
        .expect("the slow one ended within 5 s");
    let errors = common::raw::errors(&second);
    assert_eq!(errors, ["57014"]);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    p.stop().await;
}

/// A user's own `query_timeout` (`[users.NAME]`, as in PgBouncer 1.24)
/// overrides the `[pgtarn]` one for that user's clients only.
#[tokio::test]
async fn a_users_query_timeout_overrides_the_general_one() {
    let text = pooler::config(PgServer::shared(), "query_timeout = \"20s\"", "")
        + "query_timeout = \"300ms\"\n";
    let p = Pooler::start(&text).await;
    let (client, _conn) = connect(&p).await;
    sleep_is_cut_by_query_timeout(&client).await;
    p.stop().await;
}

/// Flush: asks for the server's output without a Sync.
fn flush() -> Vec<u8> {
    vec![b'H', 0, 0, 0, 4]
}

/// A query run in the extended protocol with Flush instead of Sync (libpq
/// pipeline mode's `PQsendFlushRequest`, drivers that read a result before
/// syncing) is a running query: `query_timeout` cancels it as it would
/// the same query followed by Sync. It used to run to its end.
#[tokio::test]
async fn query_timeout_cancels_an_execute_followed_by_flush() {
    use common::raw::ext;
    let p = pooler("query_timeout = \"300ms\"").await;
    let mut raw = Raw::login(p.addr, "app", "app").await;
    let sleep = ext::parse("", "SELECT pg_sleep(10)");
    let msgs = [sleep, ext::bind("", &[]), ext::execute(), flush()].concat();
    let started = Instant::now();
    raw.send(&msgs).await;
    let got = tokio::time::timeout(Duration::from_secs(5), raw.read_until(b'E'))
        .await
        .unwrap_or_else(|_| panic!("no error within 5 s: query_timeout never fired"));
    assert_eq!(
        common::raw::errors(&got),
        ["57014"],
        "after {:?}",
        started.elapsed()
    );
    p.stop().await;
}

/// The same query is not ended by `idle_transaction_timeout`: its client
/// is not idle, its query is running (and there is no transaction). It
/// used to get FATAL 25P03 and lose its server.
#[tokio::test]
async fn idle_transaction_timeout_spares_a_running_execute_followed_by_flush() {
    use common::raw::ext;
    let p = pooler("idle_transaction_timeout = \"300ms\"").await;
    let mut raw = Raw::login(p.addr, "app", "app").await;
    let sleep = ext::parse("", "SELECT pg_sleep(1.5)");
    let msgs = [sleep, ext::bind("", &[]), ext::execute(), flush()].concat();
    raw.send(&msgs).await;
    let got = tokio::time::timeout(DEADLINE, raw.read_until(b'C'))
        .await
        .expect("the query ends");
    let errors = common::raw::errors(&got);
    assert!(
        errors.is_empty(),
        "the running query's client was disconnected: {errors:?}"
    );
    p.stop().await;
}

/// `server_idle_timeout = "0s"` disables the limit, as in PgBouncer ("If 0
/// then this timeout is disabled") and like the other `0s` (off) limits;
/// it used to close every idle server at each maintenance pass (a new
/// upstream connection per transaction).
#[tokio::test]
async fn server_idle_timeout_zero_disables_it() {
    let p = pooler("server_idle_timeout = \"0s\"").await;
    let (client, _conn) = connect(&p).await;
    assert_eq!(common::one(&client, "SELECT 1").await, "1");
    let pool = p.pool();
    assert_eq!(pool.size(), 1);
    // Three maintenance passes (one a second): the idle server stays. The
    // test shows that something does not happen, so it watches the whole
    // time and fails as soon as the server closes.
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        assert_eq!(pool.size(), 1, "the idle server was closed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    p.stop().await;
}
