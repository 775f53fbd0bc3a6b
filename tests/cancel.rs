//! Cancel requests and the server they were meant for: a cancel reaches
//! its client's query, the server is reused afterwards, and a cancel that
//! arrives as its query ends never cancels the next client's query on the
//! same server.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::pg::PgServer;
use common::pooler::{self, Pooler};
use common::{one, wait_until};
use tokio_postgres::{CancelToken, Client, NoTls};

const DEADLINE: Duration = Duration::from_secs(10);

async fn trust_pooler(database: &str) -> Pooler {
    Pooler::trust("", database).await
}

fn sqlstate(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.code().code().to_owned())
        .unwrap_or_else(|| format!("no SQLSTATE: {e}"))
}

/// A cancelled query fails with 57014, and its server, not closed, serves
/// the same client and the next one: the pool still holds one idle server.
#[tokio::test]
async fn a_cancel_reaches_its_query_and_the_server_is_reused() {
    let p = trust_pooler("pool_size = 1").await;
    let a = p.connect().await;
    let pid = one(&a, "select pg_backend_pid()::text").await;
    let token = a.cancel_token();
    let sleeper = tokio::spawn(async move {
        let r = a.simple_query("select pg_sleep(30)").await;
        (a, r)
    });
    let admin = PgServer::shared().superuser().await;
    wait_until("pg_sleep is running", DEADLINE, || {
        let admin = &admin;
        async move {
            let sql = "select count(*) from pg_stat_activity \
                       where query = 'select pg_sleep(30)' and state = 'active'";
            admin.query_one(sql, &[]).await.unwrap().get::<_, i64>(0) > 0
        }
    })
    .await;
    let started = Instant::now();
    token.cancel_query(NoTls).await.expect("cancel sent");
    let (a, r) = sleeper.await.expect("sleeper task");
    assert_eq!(sqlstate(&r.expect_err("cancelled")), "57014");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(one(&a, "select pg_backend_pid()::text").await, pid);
    let b = p.connect().await;
    assert_eq!(one(&b, "select pg_backend_pid()::text").await, pid);
    let pool = p.pool();
    wait_until("the server is idle in the pool", DEADLINE, || {
        let pool = &pool;
        async move { pool.size() == 1 && pool.idle() == 1 }
    })
    .await;
}

/// Client A keeps running short queries and keeps cancelling them (as a
/// client whose user presses ^C at random would), so some of its cancels
/// are still on their way to Postgres when its query ends and the pool's
/// only server goes to B. B, which never cancels anything, runs longer
/// queries on that server: none of them may be cancelled. PgBouncer keeps
/// a server out of the pool while a cancel forwarded for it is in flight;
/// so must pgtarn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_cancel_never_hits_another_clients_query() {
    let p = trust_pooler("pool_size = 1").await;
    let a = p.connect().await;
    let b = p.connect().await;
    let pid = one(&b, "select pg_backend_pid()::text").await;
    let stop = Arc::new(AtomicBool::new(false));
    let cancels = tokio::spawn(keep_cancelling(a.cancel_token(), stop.clone()));
    let a_task = tokio::spawn(run_until(a, stop.clone(), "select pg_sleep(0.001)"));
    // SHOW POOLS' sv_being_canceled, sampled meanwhile.
    let pool = p.pool();
    let sampler = {
        let (pool, stop) = (pool.clone(), stop.clone());
        tokio::spawn(async move {
            let mut most = 0;
            while !stop.load(Ordering::Relaxed) {
                most = most.max(pool.counts(None).sv_being_canceled);
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
            most
        })
    };
    let (b_ran, b_cancelled) = run_for(&b, Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let a_ran = a_task.await.expect("client A's queries");
    let sent = cancels.await.expect("client A's cancels");
    let parked_seen = sampler.await.expect("sampler");
    eprintln!("A: {a_ran} queries, {sent} cancels; B: {b_cancelled} of {b_ran} cancelled");
    assert_eq!(
        parked_seen, 1,
        "the server was seen parked (sv_being_canceled)"
    );
    wait_until("no server parked any more", DEADLINE, || {
        let parked = pool.counts(None).sv_being_canceled;
        async move { parked == 0 }
    })
    .await;
    assert!(
        a_ran > 50 && b_ran > 50 && sent > 50,
        "both clients ran queries"
    );
    assert_eq!(b_cancelled, 0, "B never asked for a cancel");
    // The server survived it all: parked, not closed.
    assert_eq!(one(&b, "select pg_backend_pid()::text").await, pid);
}

/// The same race with pgtarn's own cancels: A's queries last about as
/// long as `query_timeout`, so the cancel pgtarn sends for them is often
/// still on its way when they end; B's queries, shorter than the limit,
/// must never be cancelled "due to user request" (a stale cancel; B's own
/// timeout would say `query_timeout`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_query_timeout_cancel_never_hits_another_clients_query() {
    let general = "auth_type = \"trust\"\nquery_timeout = \"20ms\"";
    let config = pooler::config(PgServer::shared(), general, "pool_size = 1");
    let p = Pooler::start(&config).await;
    let a = p.connect().await;
    let b = p.connect().await;
    let stop = Arc::new(AtomicBool::new(false));
    let a_task = tokio::spawn(run_until(a, stop.clone(), "select pg_sleep(0.02)"));
    let end = Instant::now() + Duration::from_secs(3);
    let (mut b_ran, mut stale, mut own) = (0, 0, 0);
    while Instant::now() < end {
        b_ran += 1;
        match b.simple_query("select pg_sleep(0.005)").await {
            Ok(_) => {}
            Err(e) if e.to_string().contains("query_timeout") => own += 1,
            Err(e) => {
                assert_eq!(sqlstate(&e), "57014", "{e}");
                stale += 1;
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let a_ran = a_task.await.expect("client A's queries");
    eprintln!("A: {a_ran} queries; B: {stale} of {b_ran} hit by A's cancel, {own} timed out");
    assert!(a_ran > 20 && b_ran > 20, "both clients ran queries");
    assert_eq!(stale, 0, "B was cancelled by a query_timeout meant for A");
}

/// Runs `sql` on `a` until `stop`, cancelled or not; returns how many
/// times.
async fn run_until(a: Client, stop: Arc<AtomicBool>, sql: &'static str) -> usize {
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        let _ = a.simple_query(sql).await;
        n += 1;
    }
    n
}

/// Sends a cancel request for `token`'s client every millisecond or so
/// until `stop`; returns how many.
async fn keep_cancelling(token: CancelToken, stop: Arc<AtomicBool>) -> usize {
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        let _ = token.cancel_query(NoTls).await;
        tokio::time::sleep(Duration::from_millis(1)).await;
        n += 1;
    }
    n
}

/// Runs queries on `b` for `limit`; returns how many ran and how many
/// were cancelled.
async fn run_for(b: &Client, limit: Duration) -> (usize, usize) {
    let end = Instant::now() + limit;
    let (mut ran, mut cancelled) = (0, 0);
    while Instant::now() < end {
        ran += 1;
        if let Err(e) = b.simple_query("select pg_sleep(0.01)").await {
            assert_eq!(sqlstate(&e), "57014", "{e}");
            cancelled += 1;
        }
    }
    (ran, cancelled)
}
