//! A rolling restart with `SO_REUSEPORT`: a new pgtarn starts on the same
//! port, the old one gets SIGTERM and drains, and clients under load lose
//! no transaction: every transaction a client saw commit is in the table,
//! and every one it saw fail never ran (so retrying it is safe).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::pg::PgServer;
use common::process::{PgtarnProcess, free_port};
use tokio_postgres::NoTls;

const CLIENTS: u64 = 8;

fn config(pg: &PgServer, port: u16) -> String {
    format!(
        "[pgtarn]\nlisten_addr = \"127.0.0.1:{port}\"\nso_reuseport = true\n\
         shutdown_timeout = \"10s\"\n\
         [databases.app]\nhost = \"127.0.0.1\"\nport = {}\npool_size = 4\n\
         [users.app]\npassword = \"app-secret\"\n",
        pg.port
    )
}

/// Runs one-row transactions until `stop`; returns how many committed.
/// A failed attempt (connection refused or closed, 57P01 at an idle
/// point) is retried on a new connection with a new id.
async fn load(
    conn_str: String,
    worker: u64,
    stop: Arc<AtomicBool>,
    retries: Arc<AtomicU64>,
) -> Vec<i64> {
    let mut committed = Vec::new();
    let mut seq = 0;
    let mut client: Option<tokio_postgres::Client> = None;
    while !stop.load(Ordering::Relaxed) {
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            match tokio_postgres::connect(&conn_str, NoTls).await {
                Ok((c, conn)) => {
                    tokio::spawn(conn);
                    client = Some(c);
                }
                Err(_) => {
                    retries.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
        }
        let Some(c) = client.as_ref() else { continue };
        seq += 1;
        let id = (worker << 32) | seq;
        let sql = format!("BEGIN; INSERT INTO rolling VALUES ({id}); COMMIT");
        match c.simple_query(&sql).await {
            Ok(_) => committed.push(id as i64),
            Err(_) => {
                retries.fetch_add(1, Ordering::Relaxed);
                client = None;
            }
        }
    }
    committed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_with_so_reuseport_loses_no_transaction() {
    let pg = PgServer::shared();
    let (su, conn) = tokio_postgres::connect(&pg.app_conn_str(), NoTls)
        .await
        .expect("direct connection");
    tokio::spawn(conn);
    su.batch_execute("DROP TABLE IF EXISTS rolling; CREATE TABLE rolling (id bigint PRIMARY KEY)")
        .await
        .expect("create table");
    let port = free_port();
    let toml = config(pg, port);
    let mut old = PgtarnProcess::start_logging(&toml, port, "info");
    let conn_str = format!("host=127.0.0.1 port={port} user=app password=app-secret dbname=app");
    let stop = Arc::new(AtomicBool::new(false));
    let retries = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..CLIENTS)
        .map(|w| tokio::spawn(load(conn_str.clone(), w, stop.clone(), retries.clone())))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let new = PgtarnProcess::start_beside(&toml, port);
    old.signal(libc::SIGTERM);
    let exited = tokio::task::spawn_blocking(move || (old.wait_exit(Duration::from_secs(15)), old))
        .await
        .expect("join");
    assert!(
        exited.0,
        "the old pgtarn drained and exited: {}",
        exited.1.log()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut acknowledged = Vec::new();
    for w in workers {
        acknowledged.extend(w.await.expect("join"));
    }
    let rows = su
        .query("SELECT id FROM rolling ORDER BY id", &[])
        .await
        .expect("select");
    let mut stored: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    acknowledged.sort_unstable();
    stored.sort_unstable();
    assert!(
        acknowledged.len() > 100,
        "the load ran: {}",
        acknowledged.len()
    );
    assert_eq!(
        stored, acknowledged,
        "every committed transaction is stored and nothing reported failed was committed"
    );
    assert!(
        new.log().contains("client connected"),
        "the new pgtarn took over clients"
    );
    println!(
        "rolling restart: {} transactions committed, {} attempts retried",
        acknowledged.len(),
        retries.load(Ordering::Relaxed)
    );
}
