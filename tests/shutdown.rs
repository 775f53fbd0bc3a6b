//! Graceful and fast shutdown: running transactions finish (up to
//! `shutdown_timeout`), idle clients and the ones left at the end get
//! 57P01, and no new client is accepted.

mod common;

use std::time::{Duration, Instant};

use common::pg::PgServer;
use common::pooler::{self, Pooler};
use tokio_postgres::NoTls;

const DEADLINE: Duration = Duration::from_secs(10);

type Conn = tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>;

async fn pooler(general: &str) -> Pooler {
    Pooler::start(&pooler::config(
        PgServer::shared(),
        general,
        "pool_size = 4",
    ))
    .await
}

async fn connect(p: &Pooler) -> (tokio_postgres::Client, Conn) {
    let (client, conn) = tokio_postgres::connect(&p.conn_str(""), NoTls)
        .await
        .expect("connect through pgtarn");
    (client, tokio::spawn(conn))
}

/// The SQLSTATE and message the connection was ended with.
async fn ended_with(conn: Conn) -> String {
    let result = tokio::time::timeout(DEADLINE, conn)
        .await
        .expect("connection ended");
    let e = result.expect("join").expect_err("ended by an error");
    e.as_db_error()
        .map(|d| format!("{} {}", d.code().code(), d.message()))
        .unwrap_or_else(|| format!("no SQLSTATE: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_lets_transactions_finish() {
    let p = pooler("shutdown_timeout = \"10s\"").await;
    let (busy, busy_conn) = connect(&p).await;
    busy.simple_query("BEGIN; SELECT 1").await.expect("begin");
    let (_idle, idle_conn) = connect(&p).await;
    let t = Instant::now();
    p.ctx.request_shutdown();
    assert_eq!(ended_with(idle_conn).await, "57P01 pgtarn is shutting down");
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "idle clients go at once"
    );
    // The running transaction is not cut.
    busy.simple_query("SELECT 2")
        .await
        .expect("the transaction goes on");
    busy.simple_query("COMMIT").await.expect("and commits");
    assert_eq!(ended_with(busy_conn).await, "57P01 pgtarn is shutting down");
    let refused = tokio_postgres::connect(&p.conn_str(""), NoTls).await;
    assert!(refused.is_err(), "no new clients after shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_timeout_ends_transactions_that_do_not_finish() {
    let p = pooler("shutdown_timeout = \"500ms\"").await;
    let (stuck, conn) = connect(&p).await;
    stuck.simple_query("BEGIN; SELECT 1").await.expect("begin");
    let t = Instant::now();
    p.ctx.request_shutdown();
    assert_eq!(ended_with(conn).await, "57P01 pgtarn is shutting down");
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_secs(4),
        "{took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_shutdown_disconnects_everyone_at_once() {
    let p = pooler("shutdown_timeout = \"30s\"").await;
    let (busy, conn) = connect(&p).await;
    busy.simple_query("BEGIN; SELECT 1").await.expect("begin");
    let t = Instant::now();
    p.ctx.request_fast_shutdown();
    assert_eq!(ended_with(conn).await, "57P01 pgtarn is shutting down");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
}
