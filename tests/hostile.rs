//! Hostile and broken clients against a real throwaway Postgres and pgtarn:
//! thousands of connections abandoned mid-startup (pgtarn's file
//! descriptors and memory must come back), a client vanishing in every
//! protocol state (no leaked or dirty server afterwards), and bad length
//! fields in the middle of a session (08P01 for that client only).
//!
//! The tests in this file run one at a time (they count backends
//! cluster-wide and are CPU-heavy on a small machine).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use common::pg::PgServer;
use common::pooler::{self, Pooler};
use common::process::{PgtarnProcess, free_port};
use common::raw::{self, Raw, ext};
use common::{one, wait_until};
use pgtarn::protocol::backend::{ErrorFields, error_fields};
use pgtarn::protocol::encode;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_postgres::NoTls;

/// Deadline for any single expected reply or condition.
const DEADLINE: Duration = Duration::from_secs(15);
const SSL_REQUEST: u32 = 80_877_103;
const CANCEL_REQUEST: u32 = 80_877_102;

/// Serialises the tests of this file.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ---------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------

/// Connects with tokio-postgres; the connection task is spawned.
async fn connect(conn_str: &str) -> tokio_postgres::Client {
    let (client, conn) = timeout(DEADLINE, tokio_postgres::connect(conn_str, NoTls))
        .await
        .unwrap_or_else(|_| panic!("connect within {DEADLINE:?}: {conn_str}"))
        .unwrap_or_else(|e| panic!("connect {conn_str}: {e}"));
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// The startup packet of user `app` to database `app`.
fn app_startup(application_name: &str) -> Bytes {
    encode::startup_message(&[
        ("user", "app"),
        ("database", "app"),
        ("application_name", application_name),
    ])
}

/// How far [`scram_login`] goes before returning.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum LoginStop {
    /// SASLInitialResponse sent and SASLContinue read.
    AfterClientFirst,
    /// SASLResponse (client-final) sent, nothing read.
    AfterClientFinal,
    /// Logged in: ReadyForQuery read.
    Ready,
}

/// Reads one message (deadline), panicking on EOF.
async fn expect_msg(raw: &mut Raw, what: &str) -> (u8, Bytes) {
    timeout(DEADLINE, raw.read())
        .await
        .unwrap_or_else(|_| panic!("{what}: no reply within {DEADLINE:?}"))
        .unwrap_or_else(|| panic!("{what}: EOF"))
}

/// An Authentication message with `code`; returns its data.
async fn expect_auth(raw: &mut Raw, code: i32, what: &str) -> Bytes {
    let (tag, body) = expect_msg(raw, what).await;
    if tag == b'E' {
        panic!("{what}: error {}", error_fields(&body).expect("fields"));
    }
    assert_eq!(tag, b'R', "{what}: expected Authentication");
    let got = i32::from_be_bytes(body[..4].try_into().expect("code"));
    assert_eq!(got, code, "{what}: authentication code");
    body.slice(4..)
}

/// Logs in as `app` with SCRAM over a raw connection, stopping at `stop`;
/// returns the connection and, at [`LoginStop::Ready`], the login messages
/// after AuthenticationOk (ParameterStatus, BackendKeyData, ReadyForQuery).
async fn scram_login(
    addr: std::net::SocketAddr,
    app_name: &str,
    stop: LoginStop,
) -> (Raw, Vec<(u8, Bytes)>) {
    let mut raw = Raw::open(addr).await;
    raw.send(&app_startup(app_name)).await;
    expect_auth(&mut raw, 10, "AuthenticationSASL").await;
    let mut scram = ScramSha256::new(b"app-secret", ChannelBinding::unsupported());
    raw.send(&encode::sasl_initial_response(
        "SCRAM-SHA-256",
        scram.message(),
    ))
    .await;
    let first = expect_auth(&mut raw, 11, "AuthenticationSASLContinue").await;
    if stop == LoginStop::AfterClientFirst {
        return (raw, Vec::new());
    }
    scram.update(&first).expect("server-first-message");
    raw.send(&encode::sasl_response(scram.message())).await;
    if stop == LoginStop::AfterClientFinal {
        return (raw, Vec::new());
    }
    let last = expect_auth(&mut raw, 12, "AuthenticationSASLFinal").await;
    scram.finish(&last).expect("server signature");
    expect_auth(&mut raw, 0, "AuthenticationOk").await;
    let login = raw.read_until(b'Z').await;
    (raw, login)
}

/// Reads the next message, expects an ErrorResponse with SQLSTATE 08P01,
/// then EOF (or a reset); returns the error's message.
async fn expect_08p01_then_close(raw: &mut Raw, what: &str) -> String {
    let (tag, body) = expect_msg(raw, what).await;
    assert_eq!(tag as char, 'E', "{what}: expected an ErrorResponse");
    let fields = error_fields(&body).expect("error fields");
    assert_eq!(fields.code, "08P01", "{what}: {fields}");
    let mut rest = [0u8; 64];
    let end = timeout(DEADLINE, raw.stream.read(&mut rest))
        .await
        .unwrap_or_else(|_| panic!("{what}: not closed within {DEADLINE:?}"));
    assert!(
        matches!(end, Ok(0) | Err(_)),
        "{what}: data after the error: {end:?}"
    );
    fields.message
}

/// Counts `app` backends (`state` filter as SQL, e.g. `true`).
async fn app_backends(admin: &tokio_postgres::Client, filter: &str) -> i64 {
    let sql = format!(
        "select count(*) from pg_stat_activity where usename = 'app' \
         and backend_type = 'client backend' and ({filter})"
    );
    admin.query_one(&sql, &[]).await.expect(&sql).get(0)
}

/// Waits until the cluster has no `app` backend idle in a transaction and
/// at most `max` `app` backends in all, not counting the servers of the
/// client named `bystander` (whose transaction is open on purpose).
async fn wait_no_leaked_server(admin: &tokio_postgres::Client, max: i64, what: &str) {
    wait_until(
        &format!("{what}: no app backend idle in transaction and at most {max} in all"),
        DEADLINE,
        || async move {
            let others = "application_name <> 'bystander'";
            let idle_in_txn = format!("{others} and state like 'idle in transaction%'");
            app_backends(admin, &idle_in_txn).await == 0 && app_backends(admin, others).await <= max
        },
    )
    .await;
}

/// Waits until a statement containing `marker` is running.
async fn wait_running(admin: &tokio_postgres::Client, marker: &str) {
    let sql = "select count(*) from pg_stat_activity where state = 'active' \
               and query like '%' || $1 || '%' and pid <> pg_backend_pid()";
    wait_until(&format!("{marker} runs"), DEADLINE, || async move {
        let n: i64 = admin.query_one(sql, &[&marker]).await.expect(sql).get(0);
        n > 0
    })
    .await;
}

/// Number of open file descriptors of process `pid`.
fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("pgtarn's /proc/<pid>/fd")
        .count()
}

/// Raises this process's open-file soft limit to its hard limit (at most
/// 65536), so batches of sockets fit; the pgtarn child inherits it.
fn raise_nofile_limit() {
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max.min(65_536);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

// ---------------------------------------------------------------------
// 10,000 abandoned startups
// ---------------------------------------------------------------------

/// Connections opened at once in one batch.
const BATCH: usize = 500;

/// Opens one connection and abandons it the `kind` way; the
/// full-startup-then-silence kind is returned open, to be closed by the
/// caller once the whole batch is in.
async fn abandon(addr: std::net::SocketAddr, kind: usize, startup: Bytes) -> Option<TcpStream> {
    let mut s = TcpStream::connect(addr).await.expect("connect to pgtarn");
    match kind % 4 {
        0 => None,
        1 => {
            let _ = s.write_all(&startup[..startup.len() / 2]).await;
            None
        }
        2 => {
            s.write_all(&startup).await.expect("send startup");
            let mut tag = [0u8; 1];
            timeout(DEADLINE, s.read_exact(&mut tag))
                .await
                .expect("pgtarn answers a startup packet")
                .expect("an answer");
            assert_eq!(tag, *b"R", "authentication request");
            Some(s)
        }
        _ => {
            let mut ssl = 8u32.to_be_bytes().to_vec();
            ssl.extend_from_slice(&SSL_REQUEST.to_be_bytes());
            let _ = s.write_all(&ssl).await;
            None
        }
    }
}

/// Opens and abandons `n` connections, `BATCH` at a time.
async fn storm(addr: std::net::SocketAddr, n: usize) {
    let startup = app_startup("storm");
    for start in (0..n).step_by(BATCH) {
        let batch = (start..(start + BATCH).min(n)).map(|i| abandon(addr, i, startup.clone()));
        let open = futures_util::future::join_all(batch).await;
        drop(open);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_abandoned_startups_leak_no_fds_or_memory() {
    let _serial = SERIAL.lock().await;
    raise_nofile_limit();
    let pg = PgServer::shared();
    let port = free_port();
    let toml = format!(
        "[pgtarn]\nlisten_addr = \"127.0.0.1:{port}\"\nmax_client_conn = 2000\n\
         [databases.app]\nhost = \"127.0.0.1\"\nport = {}\npool_size = 4\n\
         [users.app]\npassword = \"app-secret\"\n",
        pg.port
    );
    let pgtarn = PgtarnProcess::start(&toml, port);
    let pid = pgtarn.pid();
    let conn_str = format!(
        "host=127.0.0.1 port={port} user=app password=app-secret dbname=app \
         application_name=bystander"
    );
    let client = Arc::new(connect(&conn_str).await);
    assert_eq!(one(&client, "select 'before'").await, "before");
    let fds_before = fd_count(pid);

    // Warm-up: the allocator and runtime reach their working size; what
    // remains after the main run beyond this is a leak.
    storm(pgtarn.addr, 2 * BATCH).await;
    wait_until("fds back after the warm-up", DEADLINE, || async {
        fd_count(pid) <= fds_before
    })
    .await;
    let rss_before = pgtarn.rss_kib();

    // A normal client keeps querying throughout.
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    let bystander = tokio::spawn({
        let (client, stop, served) = (client.clone(), stop.clone(), served.clone());
        async move {
            while !stop.load(Ordering::Relaxed) {
                let rows = client.simple_query("select 'during'").await;
                rows.expect("the bystander's query during the storm");
                served.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    let started = std::time::Instant::now();
    storm(pgtarn.addr, 10_000).await;
    let storm_time = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    bystander.await.expect("bystander task");
    assert!(
        served.load(Ordering::Relaxed) > 0,
        "the bystander was served during the storm"
    );

    wait_until(
        &format!("pgtarn's fd count returns to {fds_before}"),
        DEADLINE,
        || async { fd_count(pid) <= fds_before },
    )
    .await;
    let limit = rss_before + 8 * 1024;
    wait_until(
        &format!("pgtarn's RSS returns under {limit} KiB (was {rss_before} KiB)"),
        DEADLINE,
        || async { pgtarn.rss_kib() < limit },
    )
    .await;
    assert_eq!(one(&client, "select 'after'").await, "after");
    let fresh = connect(&conn_str).await;
    assert_eq!(one(&fresh, "select 'fresh'").await, "fresh");
    eprintln!(
        "10000 abandoned connections in {storm_time:?}; bystander served {} queries; \
         fds {fds_before} -> {}; RSS {rss_before} -> {} KiB",
        served.load(Ordering::Relaxed),
        fd_count(pid),
        pgtarn.rss_kib()
    );
}

// ---------------------------------------------------------------------
// A client vanishing in every protocol state
// ---------------------------------------------------------------------

/// Where the client disappears.
#[derive(Clone, Copy, Debug)]
enum Vanish {
    BeforeStartup,
    MidStartup,
    AfterScramClientFirst,
    AfterScramClientFinal,
    IdleAfterLogin,
    MidSleepQuery,
    MidBigResult,
    InsideTransaction,
    MidExtendedWithoutSync,
    DuringCopyIn,
    DuringCopyOut,
    WithPendingCancel,
}

const EVERY_STATE: [Vanish; 12] = [
    Vanish::BeforeStartup,
    Vanish::MidStartup,
    Vanish::AfterScramClientFirst,
    Vanish::AfterScramClientFinal,
    Vanish::IdleAfterLogin,
    Vanish::MidSleepQuery,
    Vanish::MidBigResult,
    Vanish::InsideTransaction,
    Vanish::MidExtendedWithoutSync,
    Vanish::DuringCopyIn,
    Vanish::DuringCopyOut,
    Vanish::WithPendingCancel,
];

/// Sends `sql` and reads until the first message with `tag`.
async fn query_until(raw: &mut Raw, sql: &str, tag: u8) {
    raw.query(sql).await;
    let msgs = timeout(DEADLINE, raw.read_until(tag))
        .await
        .unwrap_or_else(|_| panic!("{sql}: no {} in time", tag as char));
    assert!(
        raw::errors(&msgs).is_empty(),
        "{sql}: {:?}",
        raw::errors(&msgs)
    );
}

/// Puts a client in state `how` and drops its socket without Terminate.
async fn vanish(how: Vanish, addr: std::net::SocketAddr, admin: &tokio_postgres::Client) {
    let name = format!("vanish-{how:?}");
    match how {
        Vanish::BeforeStartup => drop(Raw::open(addr).await),
        Vanish::MidStartup => {
            let mut raw = Raw::open(addr).await;
            let startup = app_startup(&name);
            raw.send(&startup[..startup.len() - 7]).await;
        }
        Vanish::AfterScramClientFirst => {
            scram_login(addr, &name, LoginStop::AfterClientFirst).await;
        }
        Vanish::AfterScramClientFinal => {
            scram_login(addr, &name, LoginStop::AfterClientFinal).await;
        }
        Vanish::IdleAfterLogin => {
            scram_login(addr, &name, LoginStop::Ready).await;
        }
        Vanish::MidSleepQuery => {
            let (mut raw, _) = scram_login(addr, &name, LoginStop::Ready).await;
            let marker = "hostile-sleep-marker";
            raw.query(&format!("select pg_sleep(2), '{marker}'")).await;
            wait_running(admin, marker).await;
        }
        Vanish::MidBigResult => {
            let (mut raw, _) = scram_login(addr, &name, LoginStop::Ready).await;
            raw.query("select g, repeat('x', 100) from generate_series(1, 3000000) g")
                .await;
            let (tag, _) = expect_msg(&mut raw, "RowDescription").await;
            assert_eq!(tag, b'T');
            expect_msg(&mut raw, "a DataRow").await;
        }
        Vanish::InsideTransaction => {
            let (mut raw, _) = scram_login(addr, &name, LoginStop::Ready).await;
            query_until(&mut raw, "begin", b'Z').await;
            query_until(&mut raw, "insert into hostile_rows values ('txn')", b'Z').await;
        }
        Vanish::MidExtendedWithoutSync => {
            let (mut raw, _) = scram_login(addr, &name, LoginStop::Ready).await;
            let sql = "insert into hostile_rows values ('extended')";
            raw.send(&[ext::parse("", sql), ext::bind("", &[]), ext::execute()].concat())
                .await;
            // Flush, so that Postgres runs the insert before the client goes.
            raw.send(&[b'H', 0, 0, 0, 4]).await;
            let msgs = timeout(DEADLINE, raw.read_until(b'C'))
                .await
                .expect("the insert completes");
            assert_eq!(raw::tags(&msgs), "12C");
        }
        Vanish::DuringCopyIn => {
            let (mut raw, _) = scram_login(addr, &name, LoginStop::Ready).await;
            query_until(&mut raw, "copy hostile_rows from stdin", b'G').await;
            let mut data = BytesMut::new();
            encode::message(&mut data, b'd', |b| b.put_slice(b"copied\n"));
            raw.send(&data).await;
        }
        Vanish::DuringCopyOut => {
            let (mut raw, _) = scram_login(addr, &name, LoginStop::Ready).await;
            raw.query("copy (select g from generate_series(1, 3000000) g) to stdout")
                .await;
            let (tag, _) = expect_msg(&mut raw, "CopyOutResponse").await;
            assert_eq!(tag, b'H');
            expect_msg(&mut raw, "CopyData").await;
        }
        Vanish::WithPendingCancel => {
            let (mut raw, login) = scram_login(addr, &name, LoginStop::Ready).await;
            let (_, key) = login
                .iter()
                .find(|(t, _)| *t == b'K')
                .expect("BackendKeyData");
            let marker = "hostile-cancel-marker";
            raw.query(&format!("select pg_sleep(2), '{marker}'")).await;
            wait_running(admin, marker).await;
            let mut cancel = 16u32.to_be_bytes().to_vec();
            cancel.extend_from_slice(&CANCEL_REQUEST.to_be_bytes());
            cancel.extend_from_slice(&key[..8]);
            let mut c = Raw::open(addr).await;
            c.send(&cancel).await;
            // Both go at once: the cancel is still in flight.
        }
    }
}

/// Runs every [`Vanish`] state against pgtarn in `mode` with a pool of one
/// server, checking after each that the next client gets a clean server.
async fn every_state_leaves_a_clean_pool(mode: &str) {
    let _serial = SERIAL.lock().await;
    let pg = PgServer::shared();
    let admin = connect(&pg.superuser_conn_str("app")).await;
    admin
        .batch_execute(
            "create table if not exists hostile_rows (x text); \
             grant all on hostile_rows to app; truncate hostile_rows",
        )
        .await
        .expect("create hostile_rows");
    let p = Pooler::start(&pooler::config(
        pg,
        "query_wait_timeout = \"5s\"",
        &format!("pool_size = 1\npool_mode = \"{mode}\""),
    ))
    .await;
    for how in EVERY_STATE {
        let what = format!("{mode} mode, client vanished {how:?}");
        vanish(how, p.addr, &admin).await;
        wait_no_leaked_server(&admin, 1, &what).await;
        let next = timeout(DEADLINE, p.connect())
            .await
            .unwrap_or_else(|_| panic!("{what}: the next client logs in"));
        // With one server in the pool, a leaked one would make this wait
        // (and fail with query_wait_timeout); a dirty one would still be in
        // a transaction.
        // (Simple protocol: there a statement that opens its own
        // transaction has statement_timestamp() = now().)
        let fresh_txn = "select (now() = statement_timestamp())::text \
                         || ' ' || (select count(*) from hostile_rows)";
        let answer = timeout(DEADLINE, one(&next, fresh_txn))
            .await
            .unwrap_or_else(|_| panic!("{what}: no answer"));
        let (own_txn, rows) = answer.split_once(' ').expect("two values");
        assert_eq!(
            own_txn, "true",
            "{what}: the query ran in a leftover transaction"
        );
        assert_eq!(
            rows, "0",
            "{what}: rows from the vanished client were committed"
        );
        let slow = "select 'not cancelled' from pg_sleep(0.3)";
        let answer = timeout(DEADLINE, next.simple_query(slow))
            .await
            .unwrap_or_else(|_| panic!("{what}: no answer"));
        assert!(
            answer.is_ok(),
            "{what}: a stale cancel or dirty state hit the next client: {answer:?}"
        );
        assert!(
            p.pool().size() <= 1,
            "{what}: pool size {}",
            p.pool().size()
        );
        drop(next);
    }
    wait_no_leaked_server(&admin, 1, &format!("{mode} mode, at the end")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_vanishing_in_any_state_leaves_a_clean_pool_transaction_mode() {
    every_state_leaves_a_clean_pool("transaction").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_vanishing_in_any_state_leaves_a_clean_pool_session_mode() {
    every_state_leaves_a_clean_pool("session").await;
}

// ---------------------------------------------------------------------
// Bad length fields after login
// ---------------------------------------------------------------------

/// Length fields that are never valid: below 4, at and above 2^31 (negative
/// as Postgres reads them), and 2^31-1 (over the 1 GiB hard limit).
const BAD_LENGTHS: [u32; 5] = [0, 3, 0x7fff_ffff, 0x8000_0000, 0xffff_fff0];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_lengths_mid_session_get_08p01_and_spare_other_clients() {
    let _serial = SERIAL.lock().await;
    let pg = PgServer::shared();
    let admin = connect(&pg.superuser_conn_str("app")).await;
    admin
        .batch_execute(
            "create table if not exists hostile_rows (x text); \
             grant all on hostile_rows to app; truncate hostile_rows",
        )
        .await
        .expect("create hostile_rows");
    let p = Pooler::start(&pooler::config(pg, "", "pool_size = 2")).await;
    let bystander = p.connect_with("application_name=bystander").await;
    bystander
        .batch_execute("begin; insert into hostile_rows values ('bystander')")
        .await
        .expect("bystander's open transaction");

    // (setup SQL, what it leaves the session in, tag to send)
    let contexts = [
        (None, "idle after login", b'Q'),
        (Some(("begin", b'Z')), "inside a transaction", b'Q'),
        (
            Some(("copy hostile_rows from stdin", b'G')),
            "during COPY IN",
            b'd',
        ),
        (Some(("begin", b'Z')), "inside a transaction (Parse)", b'P'),
    ];
    for (setup, state, tag) in contexts {
        for len in BAD_LENGTHS {
            let what = format!("{state}: '{}' with length {len:#x}", tag as char);
            let (mut raw, _) = scram_login(p.addr, "bad-length", LoginStop::Ready).await;
            if let Some((sql, until)) = setup {
                query_until(&mut raw, sql, until).await;
            }
            let mut msg = vec![tag];
            msg.extend_from_slice(&len.to_be_bytes());
            raw.send(&msg).await;
            expect_08p01_then_close(&mut raw, &what).await;
            // The bystander's transaction and the pool are untouched.
            let n = timeout(
                DEADLINE,
                one(&bystander, "select count(*) from hostile_rows"),
            )
            .await
            .unwrap_or_else(|_| panic!("{what}: the bystander is served"));
            assert_eq!(n, "1", "{what}");
            wait_no_leaked_server(&admin, 1, &what).await;
        }
    }

    // During SCRAM: a SASLResponse with a bad length.
    for len in BAD_LENGTHS {
        let what = format!("SASLResponse with length {len:#x}");
        let (mut raw, _) = scram_login(p.addr, "bad-sasl", LoginStop::AfterClientFirst).await;
        let mut msg = vec![b'p'];
        msg.extend_from_slice(&len.to_be_bytes());
        raw.send(&msg).await;
        expect_08p01_then_close(&mut raw, &what).await;
    }

    // 10 MB messages: a Query over max_message_len (8 MiB) ends the
    // session; 10 MB of CopyData is streamed and lands whole.
    let big = "x".repeat(10_000_000);
    let (raw, _) = scram_login(p.addr, "big", LoginStop::Ready).await;
    let mut query = BytesMut::new();
    encode::query(&mut query, &format!("select '{big}'"));
    let (tag, fields) = first_reply_while_sending(raw.stream, query.to_vec()).await;
    assert_eq!((tag, fields.code.as_str()), (b'E', "08P01"), "{fields}");
    assert!(fields.message.contains("max_message_len"), "{fields}");

    let (mut raw, _) = scram_login(p.addr, "big-copy", LoginStop::Ready).await;
    query_until(&mut raw, "copy hostile_rows from stdin", b'G').await;
    let mut data = BytesMut::new();
    encode::message(&mut data, b'd', |b| {
        b.put_slice(big.as_bytes());
        b.put_u8(b'\n');
    });
    encode::message(&mut data, b'c', |_| {});
    raw.send(&data).await;
    let done = raw.read_until(b'Z').await;
    assert_eq!(raw::tags(&done), "CZ", "{:?}", raw::errors(&done));
    raw.query("select length(x) from hostile_rows where x like 'xxx%'")
        .await;
    let rows = raw.read_until(b'Z').await;
    assert_eq!(raw::first_columns(&rows), ["10000000"]);

    // A 10 MB startup packet, actually sent.
    let mut packet = (10_000_008u32).to_be_bytes().to_vec();
    packet.extend_from_slice(&(3u32 << 16).to_be_bytes());
    packet.resize(10_000_008, b'a');
    let raw = Raw::open(p.addr).await;
    let (tag, fields) = first_reply_while_sending(raw.stream, packet).await;
    assert_eq!((tag, fields.code.as_str()), (b'E', "08P01"), "{fields}");

    bystander.batch_execute("rollback").await.expect("rollback");
    assert_eq!(
        one(
            &bystander,
            "select count(*) from hostile_rows where x = 'bystander'"
        )
        .await,
        "0"
    );
}

/// Sends `bytes` (pgtarn may close before reading them all) while reading
/// the first message back, which must be an error: its tag and fields.
async fn first_reply_while_sending(
    stream: tokio::net::TcpStream,
    bytes: Vec<u8>,
) -> (u8, ErrorFields) {
    let (mut rd, mut wr) = stream.into_split();
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(&bytes).await;
    });
    let mut head = vec![0u8; 5];
    timeout(DEADLINE, rd.read_exact(&mut head))
        .await
        .expect("an answer to a 10 MB message")
        .expect("an ErrorResponse header");
    let len = u32::from_be_bytes(head[1..5].try_into().expect("len")) as usize;
    let mut body = vec![0u8; len - 4];
    rd.read_exact(&mut body).await.expect("error body");
    let fields = error_fields(&body).expect("error fields");
    writer.await.expect("writer");
    (head[0], fields)
}

/// A COPY FROM STDIN fails on a bad row while the client is in the middle
/// of sending its next, large CopyData. Postgres ends the COPY and ignores
/// the rest of the data. The server must not go back to the pool before
/// the client's message is complete: its tail (here holding the bytes of a
/// Query message) would reach another server and run there as SQL, and the
/// first server, taken by another client meanwhile, would swallow that
/// client's query as the rest of the CopyData. The CopyDone that follows
/// takes no server.
#[tokio::test]
async fn copy_data_after_a_failed_copy_never_reaches_a_server_as_messages() {
    let _serial = SERIAL.lock().await;
    let general = "auth_type = \"trust\"";
    let p = Pooler::start(&pooler::config(
        PgServer::shared(),
        general,
        "pool_size = 2",
    ))
    .await;
    let admin = p.connect().await;
    admin
        .batch_execute(
            "drop table if exists copy_tail; create table copy_tail (i int);\
             drop table if exists copy_injected",
        )
        .await
        .unwrap();
    let mut c = Raw::login(p.addr, "app", "app").await;
    c.query("copy copy_tail from stdin").await;
    assert_eq!(raw::tags(&c.read_until(b'G').await), "G");
    // The tail: a Query, then Syncs as filler, 200 KB in all.
    let mut tail = BytesMut::new();
    encode::query(&mut tail, "create table copy_injected (i int)");
    while tail.len() < 200_000 {
        encode::message(&mut tail, b'S', |_| {});
    }
    let mut head = BytesMut::new();
    encode::message(&mut head, b'd', |b| b.put_slice(b"not a number\n"));
    head.put_u8(b'd');
    head.put_u32((95 + tail.len() + 4) as u32);
    head.put_slice(&[b'7'; 95]);
    // The bad row and the start of a large CopyData in one write.
    c.send(&head).await;
    assert_eq!(raw::errors(&c.read_until(b'Z').await), ["22P02"]);
    // Another client asks for a server while `c` is mid-message.
    let b = p.connect().await;
    let b_query = tokio::spawn(async move {
        let r = timeout(DEADLINE, b.simple_query("select 'b'")).await;
        r.map(|r| r.map(|_| ()))
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    c.send(&tail).await;
    let mut done = BytesMut::new();
    encode::message(&mut done, b'c', |_| {});
    c.send(&done).await;
    let b_answer = b_query.await.unwrap();
    assert!(
        matches!(b_answer, Ok(Ok(()))),
        "the other client's query: {b_answer:?}"
    );
    // `c` goes on normally.
    c.query("select 'c'").await;
    assert_eq!(raw::first_columns(&c.read_until(b'Z').await), ["c"]);
    let injected = one(
        &admin,
        "select (to_regclass('copy_injected') is not null)::text",
    )
    .await;
    assert_eq!(injected, "false", "COPY payload bytes ran as a query");
    assert_eq!(
        one(&admin, "select count(*)::text from copy_tail").await,
        "0"
    );
    let pool = p.pool();
    wait_until("both servers idle", DEADLINE, || {
        let all_idle = pool.idle() == pool.size();
        async move { all_idle }
    })
    .await;
}

// ---------------------------------------------------------------------
// Queries that are costly to read
// ---------------------------------------------------------------------

/// A query of many `SET`s of distinct settings (each to follow the client
/// to other servers) is read in linear time. Two such clients must not
/// hold pgtarn's worker threads for minutes: a bystander is answered
/// promptly meanwhile, and so are they. (The query fails at once on
/// Postgres, which runs none of the `SET`s: only pgtarn's reading counts.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_of_many_distinct_sets_do_not_stall_pgtarn() {
    let _serial = SERIAL.lock().await;
    let p = Pooler::trust("", "pool_size = 3").await;
    let bystander = p.connect().await;
    assert_eq!(one(&bystander, "select 'warm'").await, "warm");
    // About 3 MB: 100,000 custom settings after a statement that fails.
    let sets: String = (0..100_000)
        .map(|i| format!("SET pgtarn_test.s{i} = '1';"))
        .collect();
    let sql = format!("SELECT 1/0;{sets}");
    let started = std::time::Instant::now();
    let mut setters = Vec::new();
    for _ in 0..2 {
        let mut raw = Raw::login(p.addr, "app", "app").await;
        let sql = sql.clone();
        setters.push(tokio::spawn(async move {
            raw.query(&sql).await;
            raw::errors(&raw.read_until(b'Z').await)
        }));
    }
    let answered = timeout(DEADLINE, one(&bystander, "select 'meanwhile'")).await;
    let waited = started.elapsed();
    assert_eq!(answered.ok().as_deref(), Some("meanwhile"));
    assert!(
        waited < Duration::from_secs(5),
        "bystander waited {waited:?}"
    );
    for s in setters {
        let errors = timeout(DEADLINE, s).await.expect("the SETs are answered");
        assert_eq!(errors.expect("join"), ["22012"]);
    }
}
