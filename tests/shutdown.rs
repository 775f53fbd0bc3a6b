//! Graceful and fast shutdown: running transactions finish (up to
//! `shutdown_timeout`), idle clients and the ones left at the end get
//! 57P01, and no new client is accepted.

mod common;

use std::time::{Duration, Instant};

use common::pg::PgServer;
use common::pooler::{self, Pooler};
use common::process::{PgtarnProcess, free_port};
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

/// A table `app` may write to, dropped and made anew.
async fn fresh_table(name: &str) -> tokio_postgres::Client {
    let pg = PgServer::shared();
    let (su, conn) = tokio_postgres::connect(&pg.superuser_conn_str("app"), NoTls)
        .await
        .expect("superuser");
    tokio::spawn(conn);
    let sql = format!(
        "drop table if exists {name}; create table {name} (id int); grant all on {name} to app"
    );
    su.batch_execute(&sql).await.expect("create table");
    su
}

async fn rows_in(su: &tokio_postgres::Client, table: &str) -> i64 {
    let sql = format!("select count(*) from {table}");
    su.query_one(&sql, &[]).await.expect("count").get(0)
}

/// A client queued for a server when KILL or shutdown comes is ended
/// there, with 57P01: its query never runs, not even on the server the
/// kill frees (a client told 57P01 must be able to trust that).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_waiting_for_a_server_are_ended_before_their_query_runs() {
    for how in ["KILL app", "SHUTDOWN"] {
        let table = format!(
            "waiting_{}_{}",
            &how[..4].to_lowercase(),
            std::process::id()
        );
        let su = fresh_table(&table).await;
        let general = "admin_users = [\"app\"]\nshutdown_timeout = \"10s\"";
        let p = Pooler::start(&pooler::config(
            PgServer::shared(),
            general,
            "pool_size = 1",
        ))
        .await;
        let (holder, holder_conn) = connect(&p).await;
        holder.batch_execute("begin").await.expect("begin");
        let (waiter, waiter_conn) = connect(&p).await;
        let insert = format!("insert into {table} values (1)");
        let waiting = tokio::spawn(async move { waiter.batch_execute(&insert).await });
        let pool = p.pool();
        common::wait_until("the client is queued", DEADLINE, || {
            let queued = pool.waiting();
            async move { queued == 1 }
        })
        .await;
        let admin = p.connect_with("dbname=pgtarn").await;
        admin.simple_query(how).await.expect(how);
        let expected = match how {
            "KILL app" => "57P01 terminating connection due to administrator command (KILL)",
            _ => "57P01 pgtarn is shutting down",
        };
        let e = tokio::time::timeout(DEADLINE, waiting)
            .await
            .expect("the waiting client is ended")
            .unwrap()
            .expect_err("ended by an error");
        let got = e
            .as_db_error()
            .map(|d| format!("{} {}", d.code().code(), d.message()));
        assert_eq!(got.as_deref(), Some(expected), "{how}: {e}");
        let _ = tokio::time::timeout(DEADLINE, waiter_conn).await;
        if how == "SHUTDOWN" {
            // The holder's transaction may finish; the freed server must
            // not then run the ended client's query.
            holder.batch_execute("commit").await.expect("commit");
        }
        drop(holder);
        let _ = tokio::time::timeout(DEADLINE, holder_conn).await;
        assert_eq!(
            rows_in(&su, &table).await,
            0,
            "{how}: the ended client's INSERT ran"
        );
        su.batch_execute(&format!("drop table {table}"))
            .await
            .unwrap();
    }
}

/// The signals, on the real binary: SIGTERM drains (a transaction in
/// progress goes on), and SIGINT during that drain makes it fast.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_during_a_graceful_drain_makes_it_fast() {
    let port = free_port();
    let toml = pooler::config(PgServer::shared(), "shutdown_timeout = \"30s\"", "")
        .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    let mut pgtarn = PgtarnProcess::start(&toml, port);
    let conn_str = format!("host=127.0.0.1 port={port} user=app password=app-secret dbname=app");
    let (client, conn) = tokio_postgres::connect(&conn_str, NoTls)
        .await
        .expect("connect");
    let conn: Conn = tokio::spawn(conn);
    client.batch_execute("begin").await.expect("begin");
    pgtarn.signal(libc::SIGTERM);
    let draining = tokio::task::block_in_place(|| !pgtarn.wait_exit(Duration::from_millis(500)));
    assert!(draining, "SIGTERM waits for the transaction");
    client
        .batch_execute("select 1")
        .await
        .expect("the transaction goes on");
    pgtarn.signal(libc::SIGINT);
    let t = Instant::now();
    let exited = tokio::task::block_in_place(|| pgtarn.wait_exit(DEADLINE));
    assert!(exited, "SIGINT during the drain; log:\n{}", pgtarn.log());
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "exited {:?} after SIGINT",
        t.elapsed()
    );
    assert_eq!(ended_with(conn).await, "57P01 pgtarn is shutting down");
}

/// Runs `SHUTDOWN WAIT_FOR_CLIENTS` from a console session over TCP,
/// leaves the console, and waits until TCP logins are refused.
async fn shut_down_waiting_for_clients(p: &Pooler) {
    let console = p.conn_str("").replace("dbname=app", "dbname=pgtarn");
    let (admin, admin_conn) = tokio_postgres::connect(&console, NoTls)
        .await
        .expect("console login");
    let admin_conn = tokio::spawn(admin_conn);
    admin
        .simple_query("SHUTDOWN WAIT_FOR_CLIENTS")
        .await
        .expect("SHUTDOWN WAIT_FOR_CLIENTS");
    drop(admin);
    let _ = admin_conn.await;
    let tcp = p.conn_str("");
    common::wait_until("TCP logins are refused", DEADLINE, || {
        let s = tcp.clone();
        async move { tokio_postgres::connect(&s, NoTls).await.is_err() }
    })
    .await;
}

/// `SHUTDOWN WAIT_FOR_CLIENTS` (PgBouncer's command for rolling restarts):
/// no new client gets in, the connected ones go on as before (an idle one
/// is not disconnected, new transactions run) and pgtarn exits once the
/// last has left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_wait_for_clients_exits_when_the_last_client_leaves() {
    let p = pooler("admin_users = [\"app\"]").await;
    let (a, _a_conn) = connect(&p).await;
    a.simple_query("BEGIN; SELECT 1").await.expect("begin");
    let (b, _b_conn) = connect(&p).await;
    shut_down_waiting_for_clients(&p).await;
    a.simple_query("COMMIT")
        .await
        .expect("the transaction commits");
    assert_eq!(common::one(&b, "select 'b goes on'").await, "b goes on");
    let again = "BEGIN; SELECT 2; COMMIT";
    a.batch_execute(again)
        .await
        .expect("a new transaction runs");
    assert!(p.is_running(), "two clients are still connected");
    drop(a);
    assert!(p.is_running(), "one client is still connected");
    drop(b);
    common::wait_until("pgtarn exits", DEADLINE, || {
        let running = p.is_running();
        async move { !running }
    })
    .await;
}

/// A plain HTTP GET to the metrics endpoint; its status code.
async fn http_status(addr: std::net::SocketAddr, path: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return 0;
    };
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("send request");
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp).await;
    resp.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// Once `SHUTDOWN WAIT_FOR_CLIENTS` has closed the listener, `/readyz`
/// says pgtarn is not ready: a load balancer (Kubernetes' readiness
/// probe) must stop sending clients that would be refused. `/healthz`
/// still says it is alive, as it keeps serving its clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_fails_once_shutdown_wait_for_clients_stops_accepting() {
    let p = pooler("metrics_addr = \"127.0.0.1:0\"").await;
    let metrics = p.metrics_addr.expect("metrics endpoint");
    let (client, _conn) = connect(&p).await;
    assert_eq!(http_status(metrics, "/readyz").await, 200, "ready at first");
    p.ctx.request_shutdown_after_clients();
    let conn_str = p.conn_str("");
    common::wait_until("new logins are refused", DEADLINE, || {
        let s = conn_str.clone();
        async move { tokio_postgres::connect(&s, NoTls).await.is_err() }
    })
    .await;
    assert_eq!(
        common::one(&client, "select 'still served'").await,
        "still served"
    );
    assert_eq!(http_status(metrics, "/healthz").await, 200, "alive");
    assert_eq!(
        http_status(metrics, "/readyz").await,
        503,
        "not ready: new clients are refused"
    );
    drop(client);
    common::wait_until("pgtarn exits", DEADLINE, || {
        let running = p.is_running();
        async move { !running }
    })
    .await;
}

/// During `SHUTDOWN WAIT_FOR_CLIENTS` the Unix-domain socket stays open
/// for the console, as in PgBouncer: an operator can still watch the
/// drain (`SHOW CLIENTS`), while other clients are refused there with
/// 57P01; pgtarn exits once every client, console included, has left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_stays_reachable_on_the_unix_socket_while_waiting_for_clients() {
    let dir = tempfile::tempdir().expect("tempdir");
    let general = format!(
        "admin_users = [\"app\"]\nunix_socket_dir = \"{}\"",
        dir.path().display()
    );
    let p = pooler(&general).await;
    let (a, _a_conn) = connect(&p).await;
    shut_down_waiting_for_clients(&p).await;
    let unix = |db: &str| {
        format!(
            "host={} port={} user=app password=app-secret dbname={db}",
            dir.path().display(),
            p.addr.port()
        )
    };
    let (console, conn) = tokio_postgres::connect(&unix("pgtarn"), NoTls)
        .await
        .expect("the console on the Unix socket");
    let conn = tokio::spawn(conn);
    common::wait_until("SHOW CLIENTS lists a and this console", DEADLINE, || {
        let console = &console;
        async move {
            let listed = console
                .simple_query("SHOW CLIENTS")
                .await
                .expect("SHOW CLIENTS");
            let row = |m: &&tokio_postgres::SimpleQueryMessage| {
                matches!(m, tokio_postgres::SimpleQueryMessage::Row(_))
            };
            listed.iter().filter(row).count() == 2
        }
    })
    .await;
    let e = tokio_postgres::connect(&unix("app"), NoTls).await.err();
    let e = e.expect("other clients are refused");
    let db = e.as_db_error().expect("an ErrorResponse");
    assert_eq!(
        (db.code().code(), db.message()),
        ("57P01", "pgtarn is shutting down")
    );
    assert_eq!(common::one(&a, "select 'a goes on'").await, "a goes on");
    drop(a);
    assert!(p.is_running(), "the console session is still connected");
    drop(console);
    let _ = conn.await;
    common::wait_until("pgtarn exits", DEADLINE, || {
        let running = p.is_running();
        async move { !running }
    })
    .await;
}
