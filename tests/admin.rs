//! The admin console and the metrics endpoint, end to end: real Postgres,
//! pgtarn in-process, tokio-postgres clients holding and waiting for
//! servers while the console and `/metrics` report them.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::pg::PgServer;
use common::pooler::{self, Pooler};
use common::wait_until;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

const DEADLINE: Duration = Duration::from_secs(10);

const USERS: &str = "\n[users.admin]\npassword = \"admin-secret\"\n\
                     [users.watcher]\npassword = \"watcher-secret\"\n";

fn config(general: &str) -> String {
    let general = format!(
        "admin_users = [\"admin\"]\nstats_users = [\"watcher\"]\n\
         metrics_addr = \"127.0.0.1:0\"\n{general}"
    );
    pooler::config(PgServer::shared(), &general, "pool_size = 2") + USERS
}

async fn console(p: &Pooler, user: &str, db: &str) -> Result<Client, tokio_postgres::Error> {
    let conn = format!(
        "host=127.0.0.1 port={} user={user} password={user}-secret dbname={db}",
        p.addr.port()
    );
    let (client, connection) = tokio_postgres::connect(&conn, NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// Every row of a console command, as column name → text.
async fn rows(c: &Client, sql: &str) -> Vec<HashMap<String, String>> {
    let msgs = c.simple_query(sql).await.expect(sql);
    msgs.iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(
                r.columns()
                    .iter()
                    .enumerate()
                    .map(|(i, col)| (col.name().to_owned(), r.get(i).unwrap_or("").to_owned()))
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

/// Fills app's pool (`pool_size = 2`) with two clients inside a
/// transaction and queues a third one's `SELECT 42`: the two holders, and
/// the queued query (running once it gets a server).
async fn fill_the_pool_and_queue_one(
    p: &Pooler,
    admin: &Client,
) -> (
    Vec<Client>,
    tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
) {
    let mut holders = Vec::new();
    for _ in 0..2 {
        let c = p.connect().await;
        c.simple_query("BEGIN; SELECT 1").await.expect("begin");
        holders.push(c);
    }
    let waiter = p.connect().await;
    let query = tokio::spawn(async move { waiter.simple_query("SELECT 42").await.map(|_| ()) });
    wait_until("one client queued", DEADLINE, || async {
        pool_row(admin).await["cl_waiting"] == "1"
    })
    .await;
    (holders, query)
}

/// Issues `PAUSE app`, lets the holders commit, and waits for PAUSE to
/// return (it waits for their transactions).
async fn pause_once_the_holders_commit(admin: &Arc<Client>, holders: &[Client]) {
    let pause = {
        let admin = admin.clone();
        tokio::spawn(async move { admin.simple_query("PAUSE app").await.map(|_| ()) })
    };
    for h in holders {
        h.simple_query("COMMIT").await.expect("commit");
    }
    let paused = tokio::time::timeout(DEADLINE, pause).await;
    paused
        .expect("PAUSE returns once the transactions ended")
        .expect("join")
        .expect("PAUSE");
}

/// Waits until `SHOW POOLS` counts one waiting client, then checks that
/// `query` (that client's) has not finished.
async fn waits_while_paused<T>(admin: &Client, query: &tokio::task::JoinHandle<T>, what: &str) {
    wait_until("one client waits while paused", DEADLINE, || async {
        pool_row(admin).await["cl_waiting"] == "1"
    })
    .await;
    assert!(!query.is_finished(), "{what}");
}

async fn pool_row(c: &Client) -> HashMap<String, String> {
    let all = rows(c, "SHOW POOLS").await;
    all.into_iter()
        .find(|r| r["database"] == "app" && r["user"] == "app")
        .expect("the app pool is listed")
}

fn code(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.code().code().to_owned())
        .unwrap_or_else(|| format!("no SQLSTATE: {e}"))
}

/// A plain HTTP GET; returns (status code, body).
async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to metrics");
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("send request");
    let mut resp = String::new();
    s.read_to_string(&mut resp).await.expect("read response");
    let status = resp
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The value of the sample named exactly `series` (name and labels as
/// printed) in a text exposition.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn show_pools_and_metrics_count_holders_and_waiters_truly() {
    let p = Pooler::start(&config("")).await;
    // Two clients hold both servers inside transactions.
    let mut holders = Vec::new();
    for _ in 0..2 {
        let c = p.connect().await;
        c.simple_query("BEGIN; SELECT 1").await.expect("begin");
        holders.push(c);
    }
    // Three more wait for a server.
    let mut waiters = Vec::new();
    for _ in 0..3 {
        let c = p.connect().await;
        waiters.push(tokio::spawn(async move {
            c.simple_query("SELECT 42").await.map(|_| ())
        }));
    }
    let admin = console(&p, "admin", "pgtarn").await.expect("admin login");
    wait_until("three clients waiting", DEADLINE, || async {
        pool_row(&admin).await["cl_waiting"] == "3"
    })
    .await;
    let row = pool_row(&admin).await;
    assert_eq!(row["cl_active"], "2", "{row:?}");
    assert_eq!(row["sv_active"], "2", "{row:?}");
    assert_eq!(row["sv_idle"], "0", "{row:?}");
    assert_eq!(row["pool_mode"], "transaction");
    assert!(row["maxwait_us"].parse::<u32>().is_ok(), "{row:?}");

    let metrics = p.metrics_addr.expect("metrics endpoint");
    let (status, text) = http_get(metrics, "/metrics").await;
    assert_eq!(status, 200);
    let labels = "database=\"app\",pool_mode=\"transaction\",user=\"app\"";
    let with_state =
        |s: &str| format!("database=\"app\",pool_mode=\"transaction\",state=\"{s}\",user=\"app\"");
    let waiting = format!("pgtarn_pool_clients{{{}}}", with_state("waiting"));
    assert_eq!(sample(&text, &waiting), Some(3.0), "{text}");
    let saturation = format!("pgtarn_pool_saturation{{{labels}}}");
    assert_eq!(sample(&text, &saturation), Some(1.0), "{text}");
    let servers = format!("pgtarn_pool_servers{{{}}}", with_state("active"));
    assert_eq!(sample(&text, &servers), Some(2.0));

    let clients = rows(&admin, "SHOW CLIENTS").await;
    let waiting_clients = clients.iter().filter(|c| c["state"] == "waiting").count();
    assert_eq!(waiting_clients, 3, "{clients:?}");
    let servers = rows(&admin, "SHOW SERVERS").await;
    assert_eq!(servers.iter().filter(|s| s["state"] == "active").count(), 2);
    assert!(
        servers.iter().all(|s| s["remote_pid"] != "0"),
        "{servers:?}"
    );

    for h in &holders {
        h.simple_query("COMMIT").await.expect("commit");
    }
    for w in waiters {
        w.await.expect("join").expect("waiter served after commit");
    }
    wait_until("nobody waiting", DEADLINE, || async {
        pool_row(&admin).await["cl_waiting"] == "0"
    })
    .await;
    let stats = rows(&admin, "SHOW STATS").await;
    let app = stats
        .iter()
        .find(|r| r["database"] == "app")
        .expect("app stats");
    let xacts: u64 = app["total_xact_count"].parse().expect("number");
    assert!(xacts >= 5, "{app:?}");
    let (_, text) = http_get(metrics, "/metrics").await;
    let total = format!("pgtarn_pool_transactions_total{{{labels}}}");
    assert!(sample(&text, &total).is_some_and(|n| n >= 5.0), "{text}");
    assert_eq!(http_get(metrics, "/healthz").await.0, 200);
    assert_eq!(http_get(metrics, "/readyz").await.0, 200);
    p.stop().await;
}

#[tokio::test]
async fn console_permissions_and_unknown_commands() {
    let p = Pooler::start(&config("")).await;
    // An ordinary user authenticates but may not use the console.
    let Err(e) = console(&p, "app", "pgtarn").await else {
        panic!("app must be refused");
    };
    assert_eq!(code(&e), "42501");
    // The pgbouncer alias works for tooling.
    let watcher = console(&p, "watcher", "pgbouncer")
        .await
        .expect("stats user");
    let v = rows(&watcher, "SHOW VERSION").await;
    assert!(v[0]["version"].starts_with("pgtarn"), "{v:?}");
    let e = watcher
        .simple_query("PAUSE")
        .await
        .expect_err("stats user cannot pause");
    assert_eq!(code(&e), "42501");
    let e = watcher
        .simple_query("SHOW NONSENSE")
        .await
        .expect_err("unknown");
    assert_eq!(code(&e), "42601");
    let hint = e.as_db_error().and_then(|d| d.hint()).unwrap_or("");
    assert!(
        hint.contains("SHOW HELP") && hint.contains("RELOAD"),
        "{hint}"
    );
    // The console still answers after an error.
    let dbs = rows(&watcher, "SHOW DATABASES").await;
    assert_eq!(dbs[0]["name"], "app");
    assert_eq!(dbs[0]["pool_size"], "2");
    let cfg = rows(&watcher, "show config").await;
    let key = cfg
        .iter()
        .find(|r| r["key"] == "query_wait_timeout")
        .expect("key listed");
    assert_eq!(key["default"], "2m");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pause_holds_clients_until_resume_and_kill_disconnects() {
    let p = Pooler::start(&config("")).await;
    let admin = console(&p, "admin", "pgtarn").await.expect("admin login");
    let client = p.connect().await;
    client.simple_query("SELECT 1").await.expect("warm up");
    admin.simple_query("PAUSE app").await.expect("pause");
    let dbs = rows(&admin, "SHOW DATABASES").await;
    assert_eq!(dbs[0]["paused"], "1");
    let query = tokio::spawn(async move {
        let r = client.simple_query("SELECT 7").await.map(|_| ());
        (client, r)
    });
    waits_while_paused(&admin, &query, "a paused pool must not fail the client").await;
    admin.simple_query("RESUME app").await.expect("resume");
    let (client, r) = query.await.expect("join");
    r.expect("the query runs after RESUME");
    let e = admin
        .simple_query("RESUME app")
        .await
        .expect_err("not paused");
    assert_eq!(code(&e), "55000");

    admin.simple_query("KILL app").await.expect("kill");
    let e = client.simple_query("SELECT 1").await.expect_err("killed");
    assert!(code(&e) == "57P01" || e.is_closed(), "{e}");
    admin
        .simple_query("RESUME app")
        .await
        .expect("resume after kill");
    let again = p.connect().await;
    again
        .simple_query("SELECT 1")
        .await
        .expect("new clients work after RESUME");
    p.stop().await;
}

/// `KILL` reaches a client that stopped reading its result (no time limit
/// configured): pgtarn is blocked writing to it, and the server it holds
/// is blocked writing to pgtarn. The client is disconnected and its server
/// closed, not left pinned until the client reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_disconnects_a_client_that_stopped_reading() {
    let p = Pooler::start(&config("auth_type = \"trust\"")).await;
    let admin = console(&p, "admin", "pgtarn").await.expect("admin login");
    let mut raw = common::raw::Raw::login(p.addr, "app", "app").await;
    // About 100 MB of rows; the client reads none of it.
    raw.query("SELECT 'stalled', repeat('x', 1000) FROM generate_series(1, 100000)")
        .await;
    let su = PgServer::shared().superuser().await;
    wait_until(
        "the server is blocked writing to pgtarn",
        DEADLINE,
        || async {
            let row = su
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app' \
                 AND wait_event = 'ClientWrite' AND query LIKE 'SELECT ''stalled''%'",
                    &[],
                )
                .await
                .expect("pg_stat_activity");
            row.get::<_, i64>(0) == 1
        },
    )
    .await;
    admin.simple_query("KILL app").await.expect("kill");
    wait_until(
        "the stalled client's server is closed",
        DEADLINE,
        || async {
            let pool = pool_row(&admin).await;
            pool["sv_active"] == "0" && pool["cl_active"] == "0"
        },
    )
    .await;
    let drained = tokio::time::timeout(DEADLINE, raw.drain()).await;
    assert!(
        drained.is_ok(),
        "pgtarn closed the stalled client's connection"
    );
    admin.simple_query("RESUME app").await.expect("resume");
    let next = p.connect().await;
    next.simple_query("SELECT 1")
        .await
        .expect("new clients work after RESUME");
    p.stop().await;
}

/// `KILL` also reaches a client while pgtarn is blocked writing its
/// pipeline to a server that reads none of it (its first query waits on a
/// lock), with no `query_timeout` to end the wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_disconnects_a_client_whose_server_is_not_reading() {
    let p = Pooler::start(&config("auth_type = \"trust\"")).await;
    let admin = console(&p, "admin", "pgtarn").await.expect("admin login");
    let raw = common::raw::Raw::login(p.addr, "app", "app").await;
    let (holder, conn) = tokio_postgres::connect(&PgServer::shared().app_conn_str(), NoTls)
        .await
        .expect("connect to Postgres");
    tokio::spawn(conn);
    holder
        .simple_query("SELECT pg_advisory_lock(7315)")
        .await
        .expect("take the lock");
    // The blocked query, then 32 MB of queries behind it.
    let mut pipeline = bytes::BytesMut::new();
    pgtarn::protocol::encode::query(&mut pipeline, "SELECT pg_advisory_lock(7315)");
    let filler = format!("SELECT 1 -- {}", "x".repeat(64 * 1024));
    for _ in 0..512 {
        pgtarn::protocol::encode::query(&mut pipeline, &filler);
    }
    let mut raw = raw;
    let (mut rd, mut wr) = raw.stream.split();
    let write = wr.write_all(&pipeline);
    let kill = async {
        let su = PgServer::shared().superuser().await;
        wait_until("the server waits on the lock", DEADLINE, || async {
            let row = su
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app' \
                     AND wait_event_type = 'Lock' AND query LIKE '%pg_advisory_lock(7315)'",
                    &[],
                )
                .await
                .expect("pg_stat_activity");
            row.get::<_, i64>(0) == 1
        })
        .await;
        admin.simple_query("KILL app").await.expect("kill");
        wait_until("the client and its server are gone", DEADLINE, || async {
            let pool = pool_row(&admin).await;
            pool["sv_active"] == "0" && pool["cl_active"] == "0"
        })
        .await;
        let mut sink = Vec::new();
        let drained = tokio::time::timeout(DEADLINE, rd.read_to_end(&mut sink)).await;
        assert!(drained.is_ok(), "pgtarn closed the client's connection");
    };
    // The write ends (with an error) when pgtarn closes the connection.
    let write = async {
        let _ = tokio::time::timeout(DEADLINE * 3, write).await;
    };
    tokio::join!(write, kill);
    holder
        .simple_query("SELECT pg_advisory_unlock(7315)")
        .await
        .expect("unlock");
    admin.simple_query("RESUME app").await.expect("resume");
    let next = p.connect().await;
    next.simple_query("SELECT 1")
        .await
        .expect("new clients work");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reload_applies_a_new_pool_size_and_rejects_a_bad_file() {
    let text = config("");
    let (p, _dir, path) = reloadable(&text).await;
    let client = p.connect().await;
    client.simple_query("SELECT 1").await.expect("query");
    let admin = console(&p, "admin", "pgtarn").await.expect("admin login");
    std::fs::write(&path, text.replace("pool_size = 2", "pool_size = 3")).expect("write");
    let before = p.pool();
    admin.simple_query("RELOAD").await.expect("reload");
    let dbs = rows(&admin, "SHOW DATABASES").await;
    assert_eq!(dbs[0]["pool_size"], "3");
    let after = p.pool();
    assert!(
        std::sync::Arc::ptr_eq(&before, &after),
        "a size change keeps the pool"
    );
    assert_eq!(after.settings().size, 3, "and resizes it in place");
    client
        .simple_query("SELECT 1")
        .await
        .expect("connected client unaffected");

    std::fs::write(&path, text.replace("pool_size = 2", "pool_size = 0")).expect("write");
    let e = admin.simple_query("RELOAD").await.expect_err("bad config");
    assert_eq!(code(&e), "F0000");
    let msg = e
        .as_db_error()
        .map(|d| d.message().to_owned())
        .unwrap_or_default();
    assert!(msg.contains("pool_size"), "{msg}");
    let dbs = rows(&admin, "SHOW DATABASES").await;
    assert_eq!(dbs[0]["pool_size"], "3", "the old configuration stays");
    let (_, text) = http_get(p.metrics_addr.expect("metrics"), "/metrics").await;
    assert_eq!(
        sample(&text, "pgtarn_reloads_total{result=\"ok\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "pgtarn_reloads_total{result=\"error\"}"),
        Some(1.0)
    );
    client.simple_query("SELECT 1").await.expect("still fine");
    p.stop().await;
}

/// (name, type OID) of each column in a RowDescription body.
fn column_types(body: &[u8]) -> Vec<(String, u32)> {
    let n = u16::from_be_bytes([body[0], body[1]]) as usize;
    let mut at = 2;
    let mut out = Vec::new();
    for _ in 0..n {
        let end = at + body[at..].iter().position(|&b| b == 0).expect("name");
        let name = String::from_utf8_lossy(&body[at..end]).into_owned();
        let oid_at = end + 1 + 4 + 2;
        let oid = u32::from_be_bytes(body[oid_at..oid_at + 4].try_into().expect("oid"));
        out.push((name, oid));
        at = oid_at + 4 + 2 + 4 + 2;
    }
    out
}

#[tokio::test]
async fn console_columns_have_pgbouncers_types() {
    let p = Pooler::start(&config("auth_type = \"trust\"")).await;
    let mut raw = common::raw::Raw::login(p.addr, "admin", "pgbouncer").await;
    let expect: [(&str, &[(&str, u32)]); 2] = [
        (
            "SHOW POOLS",
            &[
                ("database", 25),
                ("cl_active", 23),
                ("maxwait_us", 23),
                ("pool_mode", 25),
            ],
        ),
        (
            "SHOW STATS",
            &[
                ("database", 25),
                ("total_xact_count", 1700),
                ("avg_wait_time", 1700),
            ],
        ),
    ];
    for (sql, want) in expect {
        raw.query(sql).await;
        let msgs = raw.read_until(b'Z').await;
        let (_, desc) = msgs
            .iter()
            .find(|(t, _)| *t == b'T')
            .expect("RowDescription");
        let types = column_types(desc);
        for (name, oid) in want {
            let got = types.iter().find(|(n, _)| n == name).map(|(_, o)| *o);
            assert_eq!(got, Some(*oid), "{sql}: column {name} in {types:?}");
        }
    }
    let pools = [
        "database",
        "user",
        "cl_active",
        "cl_waiting",
        "cl_active_cancel_req",
        "cl_waiting_cancel_req",
        "sv_active",
        "sv_active_cancel",
        "sv_being_canceled",
        "sv_idle",
        "sv_used",
        "sv_tested",
        "sv_login",
        "maxwait",
        "maxwait_us",
        "pool_mode",
    ];
    raw.query("SHOW POOLS").await;
    let msgs = raw.read_until(b'Z').await;
    let (_, desc) = msgs
        .iter()
        .find(|(t, _)| *t == b'T')
        .expect("RowDescription");
    let names: Vec<String> = column_types(desc).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, pools);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_closes_servers_and_shutdown_stops_pgtarn() {
    let p = Pooler::start(&config("")).await;
    let client = p.connect().await;
    client.simple_query("SELECT 1").await.expect("query");
    assert_eq!(p.pool().size(), 1);
    let admin = console(&p, "admin", "pgtarn").await.expect("admin");
    admin.simple_query("RECONNECT").await.expect("reconnect");
    assert_eq!(p.pool().size(), 0, "idle servers closed at once");
    client
        .simple_query("SELECT 2")
        .await
        .expect("a new server is opened");
    admin
        .simple_query("SHUTDOWN")
        .await
        .expect("shutdown accepted");
    wait_until("pgtarn stops accepting", DEADLINE, || async {
        tokio::net::TcpStream::connect(p.addr).await.is_err()
    })
    .await;
}

#[tokio::test]
async fn readyz_fails_while_an_upstream_is_unreachable() {
    let dead = common::process::free_port();
    let extra = format!("\n[databases.gone]\nhost = \"127.0.0.1\"\nport = {dead}\n");
    let text = config("").replace("[users.app]", &format!("{extra}\n[users.app]"));
    let p = Pooler::start(&text).await;
    let (status, body) = http_get(p.metrics_addr.expect("metrics"), "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("gone"), "names the database: {body}");
    assert_eq!(
        http_get(p.metrics_addr.expect("metrics"), "/healthz")
            .await
            .0,
        200
    );
    p.stop().await;
}

/// Runs `sql` over and over on `c` until `stop` is set; returns the client.
fn busy(c: Client, sql: &'static str, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Client> {
    tokio::spawn(async move {
        while !stop.load(Ordering::Relaxed) {
            c.simple_query(sql).await.expect(sql);
        }
        c
    })
}

/// The figures of database `app` in a `SHOW STATS*` answer.
async fn app_figures(c: &Client, sql: &str) -> HashMap<String, u64> {
    let all = rows(c, sql).await;
    let app = all
        .into_iter()
        .find(|r| r["database"] == "app")
        .unwrap_or_else(|| panic!("{sql}: no row for app"));
    app.into_iter()
        .filter(|(k, _)| k != "database")
        .map(|(k, val)| {
            let n = val
                .parse()
                .unwrap_or_else(|_| panic!("{sql}: {k} = {val:?}"));
            (k, n)
        })
        .collect()
}

/// Transactions in the last complete stats period of pool (app, `user`),
/// read from the pool without asking the console.
fn last_period_xacts(p: &Pooler, user: &str) -> u64 {
    p.ctx
        .registry
        .find("app", user)
        .map_or(0, |pool| pool.stats.last_period().delta.xact_count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stats_averages_are_the_last_periods_without_a_prior_show() {
    let p = Pooler::start(&config("stats_period = \"1s\"")).await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = busy(p.connect().await, "select pg_sleep(0.05)", stop.clone());
    wait_until("a busy stats period ended", DEADLINE, || async {
        last_period_xacts(&p, "app") >= 5
    })
    .await;
    // The console's first SHOW STATS already has the period's averages.
    let admin = console(&p, "admin", "pgtarn").await.expect("admin");
    let s = app_figures(&admin, "SHOW STATS").await;
    assert!(s["avg_xact_count"] >= 5, "{s:?}");
    assert!(s["avg_query_count"] >= 5, "{s:?}");
    assert!(s["avg_recv"] > 0 && s["avg_sent"] > 0, "{s:?}");
    let xact = s["avg_xact_time"];
    assert!(
        (45_000..=120_000).contains(&xact),
        "50 ms transactions: {s:?}"
    );
    assert!(s["avg_query_time"] >= 45_000, "{s:?}");

    // After an idle period the averages are zero again; totals stay.
    stop.store(true, Ordering::Relaxed);
    let _client = load.await.expect("load task");
    wait_until("an idle stats period ended", DEADLINE, || async {
        last_period_xacts(&p, "app") == 0
    })
    .await;
    let s = app_figures(&admin, "SHOW STATS").await;
    assert_eq!(
        (s["avg_xact_count"], s["avg_xact_time"], s["avg_recv"]),
        (0, 0, 0),
        "{s:?}"
    );
    assert!(s["total_xact_count"] >= 5, "{s:?}");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_databases_average_transaction_time_is_not_summed_over_its_users() {
    let user = "stats_two";
    let su = common::second_user(user).await;
    let text = config("stats_period = \"1s\"")
        + &format!("[users.{user}]\npassword = \"{user}-secret\"\n");
    let p = Pooler::start(&text).await;
    let stop = Arc::new(AtomicBool::new(false));
    let sql = "select pg_sleep(0.1)";
    let second = console(&p, user, "app").await.expect("second user");
    let loads = [
        busy(p.connect().await, sql, stop.clone()),
        busy(second, sql, stop.clone()),
    ];
    wait_until(
        "a period in which both pools were busy",
        DEADLINE,
        || async { last_period_xacts(&p, "app") >= 3 && last_period_xacts(&p, user) >= 3 },
    )
    .await;
    let admin = console(&p, "admin", "pgtarn").await.expect("admin");
    let s = app_figures(&admin, "SHOW STATS").await;
    let a = app_figures(&admin, "SHOW STATS_AVERAGES").await;
    stop.store(true, Ordering::Relaxed);
    for l in loads {
        l.await.expect("load task");
    }
    for (what, us) in [
        ("avg_xact_time", s["avg_xact_time"]),
        ("xact_time", a["xact_time"]),
    ] {
        assert!(
            (90_000..=150_000).contains(&us),
            "{what} = {us} µs for 100 ms transactions: {s:?} {a:?}"
        );
    }
    assert!((90_000..=150_000).contains(&s["avg_query_time"]), "{s:?}");
    // Per-second rates do add up over the users (~9/s each).
    assert!(s["avg_xact_count"] >= 10, "{s:?}");
    let _ = su
        .batch_execute(&format!("drop role if exists {user}"))
        .await;
    p.stop().await;
}

/// The column (name, type OID) list of `sql`'s RowDescription.
async fn columns_of(raw: &mut common::raw::Raw, sql: &str) -> Vec<(String, u32)> {
    raw.query(sql).await;
    let msgs = raw.read_until(b'Z').await;
    let (_, desc) = msgs
        .iter()
        .find(|(t, _)| *t == b'T')
        .unwrap_or_else(|| panic!("{sql}: no RowDescription"));
    column_types(desc)
}

#[tokio::test]
async fn stats_parts_and_lists_have_pgbouncers_columns() {
    let p = Pooler::start(&config("auth_type = \"trust\"")).await;
    let mut raw = common::raw::Raw::login(p.addr, "admin", "pgbouncer").await;
    let parts = [
        "database",
        "xact_count",
        "query_count",
        "bytes_received",
        "bytes_sent",
        "xact_time",
        "query_time",
        "wait_time",
    ];
    let numeric: Vec<(String, u32)> = parts
        .iter()
        .enumerate()
        .map(|(i, n)| (n.to_string(), if i == 0 { 25 } else { 1700 }))
        .collect();
    assert_eq!(columns_of(&mut raw, "SHOW STATS_TOTALS").await, numeric);
    assert_eq!(columns_of(&mut raw, "SHOW STATS_AVERAGES").await, numeric);
    let lists = vec![("list".to_string(), 25), ("items".to_string(), 23)];
    assert_eq!(columns_of(&mut raw, "SHOW LISTS").await, lists);
    let totals = vec![("name".to_string(), 25), ("value".to_string(), 1700)];
    assert_eq!(columns_of(&mut raw, "SHOW TOTALS").await, totals);
    let c = p.connect().await;
    assert_eq!(common::one(&c, "select 'counted'").await, "counted");
    let admin = console(&p, "admin", "pgbouncer").await.expect("admin");
    let rows = rows(&admin, "SHOW TOTALS").await;
    let names: Vec<&str> = rows.iter().map(|r| r["name"].as_str()).collect();
    assert_eq!(names.len(), 14, "{names:?}");
    assert_eq!(names[..2], ["total_xact_count", "total_query_count"]);
    assert_eq!(names[13], "avg_wait_time");
    let queries: u64 = rows[1]["value"].parse().expect("a number");
    assert!(queries >= 1, "{rows:?}");
    p.stop().await;
}

/// `SHOW LISTS` as (list, items), in order.
async fn lists(c: &Client) -> Vec<(String, i64)> {
    rows(c, "SHOW LISTS")
        .await
        .into_iter()
        .map(|r| (r["list"].clone(), r["items"].parse().expect("a number")))
        .collect()
}

fn item(lists: &[(String, i64)], name: &str) -> i64 {
    lists
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, items)| *items)
        .unwrap_or_else(|| panic!("{name} missing from {lists:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_lists_counts_clients_pools_and_servers() {
    let p = Pooler::start(&config("max_client_conn = 10")).await;
    let watcher = console(&p, "watcher", "pgbouncer").await.expect("watcher");
    let before = lists(&watcher).await;
    let names: Vec<&str> = before.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "databases",
            "users",
            "pools",
            "free_clients",
            "used_clients",
            "login_clients",
            "free_servers",
            "used_servers",
            "dns_names",
            "dns_zones",
            "dns_queries",
            "dns_pending",
        ]
    );
    assert_eq!(item(&before, "databases"), 1, "{before:?}");
    assert_eq!(item(&before, "users"), 3, "app, admin, watcher: {before:?}");
    assert_eq!(item(&before, "pools"), 0, "{before:?}");
    // The console session takes a max_client_conn slot, as in PgBouncer.
    assert_eq!(item(&before, "used_clients"), 1, "the console: {before:?}");
    assert_eq!(item(&before, "free_clients"), 9, "{before:?}");

    let client = p.connect().await;
    client.simple_query("SELECT 1").await.expect("query");
    wait_until("the client is listed", DEADLINE, || async {
        item(&lists(&watcher).await, "used_clients") == 2
    })
    .await;
    let now = lists(&watcher).await;
    assert_eq!(item(&now, "pools"), 1, "{now:?}");
    assert_eq!(item(&now, "free_clients"), 8, "{now:?}");
    assert_eq!(item(&now, "login_clients"), 0, "{now:?}");
    let used = item(&now, "used_servers");
    assert_eq!(used, p.pool().size() as i64, "{now:?}");
    assert!(used >= 1, "{now:?}");
    assert_eq!(used + item(&now, "free_servers"), 2, "pool_size: {now:?}");
    for dns in ["dns_names", "dns_zones", "dns_queries", "dns_pending"] {
        assert_eq!(item(&now, dns), 0);
    }

    drop(client);
    wait_until("the client is gone", DEADLINE, || async {
        let l = lists(&watcher).await;
        item(&l, "used_clients") == 1 && item(&l, "free_clients") == 9
    })
    .await;
    p.stop().await;
}

#[tokio::test]
async fn show_config_says_which_settings_need_a_restart() {
    let p = Pooler::start(&config("")).await;
    let admin = console(&p, "admin", "pgtarn").await.expect("admin");
    let cfg = rows(&admin, "SHOW CONFIG").await;
    let changeable = |key: &str| {
        cfg.iter()
            .find(|r| r["key"] == key)
            .map(|r| r["changeable"].clone())
            .unwrap_or_else(|| panic!("{key} not listed"))
    };
    for key in ["listen_addr", "so_reuseport", "workers", "metrics_addr"] {
        assert_eq!(changeable(key), "no", "{key}");
    }
    for key in ["query_wait_timeout", "stats_period", "max_client_conn"] {
        assert_eq!(changeable(key), "yes", "{key}");
    }
    p.stop().await;
}

/// `DISABLE db` refuses new clients of `db` with a clear error while its
/// connected clients go on; `ENABLE db` admits them again. `SHOW
/// DATABASES` and `SHOW STATE` say so, as in PgBouncer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disable_refuses_new_clients_until_enable() {
    let p = Pooler::start(&config("")).await;
    let admin = console(&p, "admin", "pgtarn").await.expect("admin login");
    let connected = p.connect().await;
    admin.simple_query("DISABLE app").await.expect("disable");
    let disabled = |all: Vec<HashMap<String, String>>| {
        let app = all.into_iter().find(|r| r["name"] == "app");
        app.expect("app is listed")["disabled"].clone()
    };
    assert_eq!(disabled(rows(&admin, "SHOW DATABASES").await), "1");
    let refused = tokio_postgres::connect(&p.conn_str(""), NoTls)
        .await
        .err()
        .expect("a new client is refused");
    assert_eq!(code(&refused), "55000", "{refused}");
    let db = refused.as_db_error().expect("an ErrorResponse");
    let text = db.message();
    assert!(
        text.contains("not currently accepting connections"),
        "{text}"
    );
    assert!(db.hint().is_some_and(|h| h.contains("ENABLE")));
    connected
        .simple_query("SELECT 1")
        .await
        .expect("a connected client goes on");
    let e = admin.simple_query("DISABLE nosuch").await.unwrap_err();
    assert_eq!(code(&e), "3D000");
    admin.simple_query("ENABLE app").await.expect("enable");
    assert_eq!(disabled(rows(&admin, "SHOW DATABASES").await), "0");
    let again = p.connect().await;
    again
        .simple_query("SELECT 1")
        .await
        .expect("admitted again");
    let state = |all: Vec<HashMap<String, String>>| -> Vec<(String, String)> {
        all.into_iter()
            .map(|r| (r["key"].clone(), r["value"].clone()))
            .collect()
    };
    let yes_no = |a: &str, p: &str| {
        vec![
            ("active".to_owned(), a.to_owned()),
            ("paused".to_owned(), p.to_owned()),
            ("suspended".to_owned(), "no".to_owned()),
        ]
    };
    assert_eq!(state(rows(&admin, "SHOW STATE").await), yes_no("yes", "no"));
    admin.simple_query("PAUSE").await.expect("pause");
    assert_eq!(state(rows(&admin, "SHOW STATE").await), yes_no("no", "yes"));
    admin.simple_query("RESUME").await.expect("resume");
    p.stop().await;
}

/// `KILL_CLIENT id` disconnects that client only (57P01), by the id
/// `SHOW CLIENTS` lists; an unknown id is an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_client_disconnects_one_client_by_id() {
    let p = Pooler::start(&config("")).await;
    let admin = console(&p, "admin", "pgtarn").await.expect("admin login");
    let doomed = p.connect_with("application_name=doomed").await;
    let spared = p.connect_with("application_name=spared").await;
    let clients = rows(&admin, "SHOW CLIENTS").await;
    let row = clients
        .iter()
        .find(|r| r["application_name"] == "doomed")
        .expect("the client is listed");
    let id = row["id"].clone();
    assert_eq!(row["ptr"], format!("0x{:x}", id.parse::<u64>().unwrap()));
    admin
        .simple_query(&format!("KILL_CLIENT {id}"))
        .await
        .expect("kill_client");
    let e = doomed.simple_query("SELECT 1").await.unwrap_err();
    assert!(e.is_closed() || code(&e) == "57P01", "{e}");
    spared
        .simple_query("SELECT 1")
        .await
        .expect("the other client goes on");
    let e = admin.simple_query("KILL_CLIENT 999999").await.unwrap_err();
    assert_eq!(code(&e), "42704");
    // Console sessions are listed too (as in PgBouncer), and can be ended.
    let conn = format!(
        "host=127.0.0.1 port={} user=admin password=admin-secret dbname=pgtarn application_name=doomed-console",
        p.addr.port()
    );
    let (other, connection) = tokio_postgres::connect(&conn, NoTls)
        .await
        .expect("console");
    tokio::spawn(connection);
    let clients = rows(&admin, "SHOW CLIENTS").await;
    let row = clients
        .iter()
        .find(|r| r["application_name"] == "doomed-console")
        .expect("the console session is listed");
    assert_eq!(
        (row["user"].as_str(), row["database"].as_str()),
        ("admin", "pgtarn")
    );
    let id = row["id"].clone();
    admin
        .simple_query(&format!("KILL_CLIENT {id}"))
        .await
        .expect("kill_client of a console session");
    let e = other.simple_query("SHOW VERSION").await.unwrap_err();
    assert!(e.is_closed() || code(&e) == "57P01", "{e}");
    p.stop().await;
}

/// After `RECONNECT`, a server in use is listed with `close_needed` = 1
/// and `WAIT_CLOSE` returns only once it has closed, after its client's
/// transaction ended (for switchover scripts, as in PgBouncer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_close_returns_once_servers_older_than_reconnect_are_gone() {
    let p = Pooler::start(&config("")).await;
    let admin = Arc::new(console(&p, "admin", "pgtarn").await.expect("admin login"));
    let holder = p.connect().await;
    holder.simple_query("BEGIN").await.expect("begin");
    let pid = holder
        .simple_query("SELECT pg_backend_pid()::text")
        .await
        .expect("pid");
    let pid = match &pid[1] {
        SimpleQueryMessage::Row(r) => r.get(0).unwrap().to_owned(),
        _ => panic!("a row"),
    };
    admin
        .simple_query("RECONNECT app")
        .await
        .expect("reconnect");
    let servers = rows(&admin, "SHOW SERVERS").await;
    let held = servers
        .iter()
        .find(|r| r["remote_pid"] == pid)
        .expect("the held server is listed");
    assert_eq!(held["close_needed"], "1");
    wait_close_ends_with_the_transaction(&admin, &holder).await;
    let servers = rows(&admin, "SHOW SERVERS").await;
    assert!(
        servers.iter().all(|r| r["remote_pid"] != pid),
        "the old server is gone: {servers:?}"
    );
    let next = p.connect().await;
    next.simple_query("SELECT 1").await.expect("new server");
    p.stop().await;
}

/// A reload that lowers `pool_size` while fewer servers are open than the
/// new size holds: the pool lends no more servers at once than the new
/// `pool_size` (before, the old size's room stayed, so a second client
/// got a second server of a pool of 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pool_size_lowered_by_reload_holds_with_few_servers_open() {
    let text = config("query_wait_timeout = \"1s\"");
    let (p, _dir, path) = reloadable(&text).await;
    let holder = p.connect().await;
    let waiter = p.connect().await;
    holder.simple_query("SELECT 1").await.expect("query");
    let admin = console(&p, "admin", "pgtarn").await.expect("admin login");
    std::fs::write(&path, text.replace("pool_size = 2", "pool_size = 1")).expect("write");
    admin.simple_query("RELOAD").await.expect("reload");
    let pool = p.pool();
    assert_eq!((pool.size(), pool.max_size()), (1, 1));
    holder.batch_execute("BEGIN").await.expect("begin");
    let e = waiter
        .simple_query("SELECT 1")
        .await
        .expect_err("pool_size 1 is taken: query_wait_timeout");
    assert_eq!(code(&e), "53300");
    assert!(pool.size() <= 1, "servers: {}", pool.size());
    holder.batch_execute("COMMIT").await.expect("commit");
    let next = p.connect().await;
    next.simple_query("SELECT 1").await.expect("served now");
    p.stop().await;
}

/// A reload that retires a pool (its `pool_mode` changed) closes the old
/// pool's servers when released: until then `SHOW SERVERS` lists a held
/// one with `close_needed` = 1 and `WAIT_CLOSE` waits for it (before,
/// the retired pool was no longer found by name, so its servers showed 0
/// and `WAIT_CLOSE` returned at once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_close_waits_for_the_servers_of_a_pool_retired_by_reload() {
    let text = config("");
    let (p, _dir, path) = reloadable(&text).await;
    let admin = Arc::new(console(&p, "admin", "pgtarn").await.expect("admin login"));
    let holder = p.connect().await;
    holder.simple_query("BEGIN").await.expect("begin");
    reload_into_session_mode(&admin, &text, &path).await;
    let servers = rows(&admin, "SHOW SERVERS").await;
    assert_eq!(servers.len(), 1, "{servers:?}");
    assert_eq!(servers[0]["close_needed"], "1", "{servers:?}");
    wait_close_ends_with_the_transaction(&admin, &holder).await;
    p.stop().await;
}

/// A database removed by a reload forgets its `DISABLE`: added back by a
/// later reload it takes clients again, as a new database would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_removed_and_added_back_is_no_longer_disabled() {
    let pg = PgServer::shared();
    let other = format!(
        "[databases.app_other]\nhost = \"127.0.0.1\"\nport = {}\ndbname = \"app\"\n",
        pg.port
    );
    let with = config("") + &other;
    let (p, _dir, path) = reloadable(&with).await;
    let admin = console(&p, "admin", "pgtarn").await.expect("admin login");
    admin
        .simple_query("DISABLE app_other")
        .await
        .expect("disable");
    let login = || {
        let s = p.conn_str("").replace("dbname=app", "dbname=app_other");
        async move {
            tokio_postgres::connect(&s, NoTls).await.map(|(c, conn)| {
                tokio::spawn(conn);
                c
            })
        }
    };
    let e = login().await.expect_err("disabled");
    assert_eq!(code(&e), "55000");
    std::fs::write(&path, config("")).expect("write");
    admin
        .simple_query("RELOAD")
        .await
        .expect("reload without it");
    std::fs::write(&path, &with).expect("write");
    admin
        .simple_query("RELOAD")
        .await
        .expect("reload with it again");
    let c = login().await.expect("the re-added database takes clients");
    c.simple_query("SELECT 1").await.expect("query");
    p.stop().await;
}

/// A console session waiting in `WAIT_CLOSE` (or `PAUSE`) ends when its
/// client leaves: its `max_client_conn` slot comes back, instead of the
/// wait holding it until the command could finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_console_client_leaving_a_waiting_command_frees_its_slot() {
    let p = Pooler::start(&config("auth_type = \"trust\"")).await;
    let admin = console(&p, "admin", "pgtarn").await.expect("admin login");
    let used = || async {
        let lists = rows(&admin, "SHOW LISTS").await;
        let row = lists.into_iter().find(|r| r["list"] == "used_clients");
        row.expect("used_clients")["items"].parse::<u32>().unwrap()
    };
    let holder = p.connect().await;
    holder.simple_query("BEGIN").await.expect("begin");
    holder
        .simple_query("SELECT 1")
        .await
        .expect("hold a server");
    admin
        .simple_query("RECONNECT app")
        .await
        .expect("reconnect");
    let before = used().await;
    let mut waiter = common::raw::Raw::login(p.addr, "admin", "pgtarn").await;
    wait_until("the waiter counted", DEADLINE, || async {
        used().await == before + 1
    })
    .await;
    // The held server must close first: WAIT_CLOSE waits.
    waiter.query("WAIT_CLOSE app").await;
    drop(waiter);
    wait_until("the waiter's slot back", DEADLINE, || async {
        used().await == before
    })
    .await;
    holder.simple_query("COMMIT").await.expect("commit");
    p.stop().await;
}

/// SHOW DATABASES and SHOW USERS `current_connections` count the servers
/// of a pool retired by a reload (`pool_mode` changed) that a client still
/// holds: they count against `max_db_connections` and
/// `max_user_connections` until they close, and the console said 0.
#[tokio::test]
async fn current_connections_count_the_servers_of_a_pool_retired_by_reload() {
    let text = config("");
    let (p, _dir, path) = reloadable(&text).await;
    let admin = console(&p, "admin", "pgtarn").await.expect("admin login");
    let holder = p.connect().await;
    holder.simple_query("BEGIN").await.expect("begin");
    reload_into_session_mode(&admin, &text, &path).await;
    let dbs = rows(&admin, "SHOW DATABASES").await;
    let app = dbs.iter().find(|r| r["name"] == "app").expect("app");
    assert_eq!(app["current_connections"], "1", "{dbs:?}");
    let users = rows(&admin, "SHOW USERS").await;
    let user = users.iter().find(|r| r["name"] == "app").expect("app");
    assert_eq!(user["current_connections"], "1", "{users:?}");
    holder.simple_query("COMMIT").await.expect("commit");
    p.stop().await;
}

/// `WAIT_CLOSE app` on `admin` while `holder` holds a retired server in a
/// transaction: it cannot end before the holder commits (the server's one
/// way to close), and ends once it has.
async fn wait_close_ends_with_the_transaction(admin: &Arc<Client>, holder: &Client) {
    let done = Arc::new(AtomicBool::new(false));
    let waiter = {
        let (admin, done) = (admin.clone(), done.clone());
        tokio::spawn(async move {
            admin
                .simple_query("WAIT_CLOSE app")
                .await
                .expect("wait_close");
            done.store(true, Ordering::SeqCst);
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!done.load(Ordering::SeqCst), "WAIT_CLOSE ended early");
    holder.simple_query("COMMIT").await.expect("commit");
    tokio::time::timeout(DEADLINE, waiter)
        .await
        .expect("WAIT_CLOSE ends once the server closed")
        .expect("waiter");
}

/// pgtarn started from `text`, which is also written to the file `RELOAD`
/// reads (in the returned directory, which must live as long).
/// Rewrites the configuration at `path` (`text`) with `pool_mode =
/// "session"` and reloads it: app's pool is retired, its clients stay on it.
async fn reload_into_session_mode(admin: &Client, text: &str, path: &std::path::Path) {
    let session_mode = text.replace("pool_size = 2", "pool_size = 2\npool_mode = \"session\"");
    std::fs::write(path, session_mode).expect("write");
    admin.simple_query("RELOAD").await.expect("reload");
}

async fn reloadable(text: &str) -> (Pooler, tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("pgtarn.toml");
    std::fs::write(&path, text).expect("write config");
    let p = Pooler::start(text).await;
    *p.ctx.config_path.lock().expect("lock") = Some(path.clone());
    (p, dir, path)
}

/// `max_db_client_connections` counts a database's clients (all users)
/// and `max_user_client_connections` a user's (all databases), as in
/// PgBouncer 1.24: the login past either gets 53300 with PgBouncer's
/// words, and gets in again once a client leaves. SHOW DATABASES and
/// SHOW USERS show each limit and count; console sessions do not count.
#[tokio::test]
async fn client_connection_limits_per_database_and_per_user() {
    let pg = PgServer::shared();
    let text = config("max_user_client_connections = 3").replace(
        "pool_size = 2",
        "pool_size = 2\nmax_db_client_connections = 2",
    ) + &format!(
        "[databases.app_other]\nhost = \"127.0.0.1\"\nport = {}\ndbname = \"app\"\n",
        pg.port
    );
    let p = Pooler::start(&text).await;
    let connect = |db: &str| {
        let s = p
            .conn_str("")
            .replace("dbname=app", &format!("dbname={db}"));
        async move {
            let (c, conn) = tokio_postgres::connect(&s, NoTls).await?;
            tokio::spawn(conn);
            Ok::<_, tokio_postgres::Error>(c)
        }
    };
    let refused = |e: tokio_postgres::Error| {
        let db = e.as_db_error().expect("an ErrorResponse");
        (db.code().code().to_owned(), db.message().to_owned())
    };
    let a1 = connect("app").await.expect("a1");
    let _a2 = connect("app").await.expect("a2");
    let e = connect("app").await.expect_err("app is full");
    let db_full = "client connections exceeded (max_db_client_connections)";
    assert_eq!(refused(e), ("53300".into(), db_full.into()));
    let _b1 = connect("app_other").await.expect("app_other has no limit");
    let e = connect("app_other").await.expect_err("user app is full");
    let user_full = "client connections exceeded (max_user_client_connections)";
    assert_eq!(refused(e), ("53300".into(), user_full.into()));
    let admin = console(&p, "admin", "pgtarn")
        .await
        .expect("console logins do not count");
    let dbs = rows(&admin, "SHOW DATABASES").await;
    let db = |name: &str| dbs.iter().find(|r| r["name"] == name).expect("row").clone();
    let counts = |r: HashMap<String, String>| {
        (
            r["max_client_connections"].clone(),
            r["current_client_connections"].clone(),
        )
    };
    assert_eq!(counts(db("app")), ("2".into(), "2".into()));
    assert_eq!(counts(db("app_other")), ("0".into(), "1".into()));
    let users = rows(&admin, "SHOW USERS").await;
    let app = users.iter().find(|r| r["name"] == "app").expect("app row");
    let user_counts = (
        app["max_user_client_connections"].as_str(),
        app["current_client_connections"].as_str(),
    );
    assert_eq!(user_counts, ("3", "3"));
    drop(a1);
    wait_until("a1's seat is given back", DEADLINE, || {
        let used = p.ctx.registry.database_clients("app");
        async move { used == 1 }
    })
    .await;
    let again = connect("app").await.expect("room again");
    assert_eq!(common::one(&again, "select 'in'").await, "in");
    p.stop().await;
}

/// `SET key = value` on the console changes a `[pgtarn]` setting of the
/// running pgtarn, as in PgBouncer, with the checks of a reload; `RELOAD`
/// goes back to the file. Settings that need a restart, unknown ones and
/// bad values are refused with Postgres' SQLSTATEs, and stats users may
/// not change anything.
#[tokio::test]
async fn set_changes_a_setting_until_reload() {
    let text = config("");
    let (p, _dir, _path) = reloadable(&text).await;
    let admin = console(&p, "admin", "pgtarn").await.expect("admin login");
    admin
        .simple_query("SET max_client_conn = 2")
        .await
        .expect("SET");
    let setting = |rows: Vec<HashMap<String, String>>, key: &str| {
        let row = rows.into_iter().find(|r| r["key"] == key).expect("row");
        row["value"].clone()
    };
    let shown = setting(rows(&admin, "SHOW CONFIG").await, "max_client_conn");
    assert_eq!(shown, "2");
    let _client = p.connect().await;
    let e = tokio_postgres::connect(&p.conn_str(""), NoTls).await.err();
    let e = e.expect("the console and one client fill max_client_conn = 2");
    assert_eq!(code(&e), "53300");
    let refused = |sql: &'static str| {
        let admin = &admin;
        async move { code(&admin.simple_query(sql).await.expect_err(sql)) }
    };
    assert_eq!(refused("SET listen_addr = '127.0.0.1:1'").await, "55P02");
    assert_eq!(refused("SET max_client_conn = 'many'").await, "22023");
    assert_eq!(refused("SET no_such_setting = 1").await, "42704");
    let watcher = console(&p, "watcher", "pgtarn").await;
    let e = watcher
        .expect_err("max_client_conn is full")
        .as_db_error()
        .map(|d| d.code().code().to_owned());
    assert_eq!(e.as_deref(), Some("53300"));
    admin.simple_query("RELOAD").await.expect("reload");
    let shown = setting(rows(&admin, "SHOW CONFIG").await, "max_client_conn");
    assert_eq!(shown, "1000", "RELOAD goes back to the file");
    let watcher = console(&p, "watcher", "pgtarn").await.expect("room again");
    let e = watcher
        .simple_query("SET max_client_conn = 5")
        .await
        .expect_err("stats users only SHOW");
    assert_eq!(code(&e), "42501");
    p.stop().await;
}

/// A database's `user` (PgBouncer's forced user): clients authenticate as
/// themselves — bob needs no Postgres role — and all of them share one
/// pool that logs in upstream as the forced user. SHOW DATABASES shows it
/// as `force_user`, SHOW CLIENTS the login users, SHOW POOLS the one pool.
/// A forced user missing from `[users]` is a configuration error.
#[tokio::test]
async fn a_databases_user_is_forced_upstream_for_every_client() {
    let text = config("").replace("pool_size = 2", "pool_size = 2\nuser = \"app\"")
        + "[users.bob]\npassword = \"bob-secret\"\n";
    let p = Pooler::start(&text).await;
    let bob_str = p.conn_str("").replace(
        "user=app password=app-secret",
        "user=bob password=bob-secret",
    );
    let (bob, conn) = tokio_postgres::connect(&bob_str, NoTls)
        .await
        .expect("bob logs in with his own password");
    tokio::spawn(conn);
    assert_eq!(common::one(&bob, "select current_user").await, "app");
    let app = p.connect().await;
    assert_eq!(common::one(&app, "select current_user").await, "app");
    let pools = p.ctx.registry.pools();
    let keys: Vec<_> = pools.iter().map(|p| p.key.user.as_str()).collect();
    assert_eq!(keys, ["app"], "one shared pool");
    let wrong = bob_str.replace("bob-secret", "not-bobs");
    let e = tokio_postgres::connect(&wrong, NoTls).await.err();
    assert_eq!(code(&e.expect("a wrong password fails")), "28P01");
    let admin = console(&p, "admin", "pgtarn").await.expect("admin login");
    let dbs = rows(&admin, "SHOW DATABASES").await;
    let db = dbs.iter().find(|r| r["name"] == "app").expect("app row");
    assert_eq!(db["force_user"], "app");
    let clients = rows(&admin, "SHOW CLIENTS").await;
    let mut users: Vec<_> = clients
        .iter()
        .filter(|r| r["database"] == "app")
        .map(|r| r["user"].as_str())
        .collect();
    users.sort_unstable();
    assert_eq!(users, ["app", "bob"]);
    assert_eq!(rows(&admin, "SHOW POOLS").await.len(), 1);
    // Client counts are the login users', the server count the pool's.
    let users = rows(&admin, "SHOW USERS").await;
    let count = |name: &str| {
        let row = users.iter().find(|r| r["name"] == name).expect("user row");
        (
            row["current_client_connections"].clone(),
            row["current_connections"].clone(),
        )
    };
    assert_eq!(count("bob"), ("1".into(), "0".into()));
    assert_eq!(count("app").0, "1");
    let ghost = text.replace("user = \"app\"", "user = \"ghost\"");
    let err = pgtarn::config::Config::from_toml(&ghost)
        .and_then(|c| c.validate().map(|()| c))
        .expect_err("an unknown forced user is refused");
    assert!(err.to_string().contains("databases.app.user"), "{err}");
    p.stop().await;
}

/// `SET` of a value holding a `;` inside its quotes, as PgBouncer's
/// `SET key = 'value'` accepts: the console used to split the query at
/// every `;`, applied the mangled `'RESET ALL` and then failed (42601).
#[tokio::test]
async fn set_takes_a_value_with_a_semicolon_in_quotes() {
    let p = Pooler::start(&config("")).await;
    let admin = console(&p, "admin", "pgtarn").await.expect("admin login");
    let value = |rows: Vec<HashMap<String, String>>| {
        let row = rows.into_iter().find(|r| r["key"] == "server_reset_query");
        row.expect("server_reset_query row")["value"].clone()
    };
    let before = value(rows(&admin, "SHOW CONFIG").await);
    let r = admin
        .simple_query("SET server_reset_query = 'RESET ALL; DISCARD ALL'")
        .await;
    let after = value(rows(&admin, "SHOW CONFIG").await);
    assert!(
        r.is_ok(),
        "SET refused: {:?}; server_reset_query was {before:?}, is now {after:?}",
        r.err().map(|e| e.to_string())
    );
    assert_eq!(after, "RESET ALL; DISCARD ALL");
    p.stop().await;
}

/// `PAUSE`: a client queued for a server (pool full) when PAUSE is issued
/// does not get one when the running transactions end; it waits for
/// RESUME as a client that came after the PAUSE does (PgBouncer: clients
/// wait). It used to run its transaction during the pause.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pause_keeps_a_queued_client_waiting() {
    let p = Pooler::start(&config("")).await;
    let admin = Arc::new(console(&p, "admin", "pgtarn").await.expect("admin login"));
    let (holders, query) = fill_the_pool_and_queue_one(&p, &admin).await;
    pause_once_the_holders_commit(&admin, &holders).await;
    // Paused, with no server busy: the queued client is still waiting.
    let ran = "the queued client ran its query while the pool was paused";
    waits_while_paused(&admin, &query, ran).await;
    admin.simple_query("RESUME app").await.expect("resume");
    let ran = tokio::time::timeout(DEADLINE, query)
        .await
        .expect("runs after RESUME");
    ran.expect("join").expect("SELECT 42");
    p.stop().await;
}

/// `PAUSE` closes the servers for a maintenance window; with
/// `min_pool_size` the maintenance task used to open them again within a
/// second, during the pause.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pause_does_not_refill_min_pool_size() {
    let general = "admin_users = [\"admin\"]\nstats_users = [\"watcher\"]";
    let text = pooler::config(
        PgServer::shared(),
        general,
        "pool_size = 2\nmin_pool_size = 2",
    ) + USERS;
    let p = Pooler::start(&text).await;
    let admin = console(&p, "admin", "pgtarn").await.expect("admin login");
    let client = p.connect().await;
    client.simple_query("SELECT 1").await.expect("warm up");
    wait_until("min_pool_size open", DEADLINE, || async {
        pool_row(&admin).await["sv_idle"] == "2"
    })
    .await;
    admin.simple_query("PAUSE app").await.expect("pause");
    // Maintenance runs every second: three rounds.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let servers = rows(&admin, "SHOW SERVERS").await;
    assert!(
        servers.is_empty(),
        "servers opened while paused: {servers:?}"
    );
    admin.simple_query("RESUME app").await.expect("resume");
    wait_until(
        "min_pool_size open again after RESUME",
        DEADLINE,
        || async { pool_row(&admin).await["sv_idle"] == "2" },
    )
    .await;
    p.stop().await;
}

/// `PAUSE app` after a reload changed app's `pool_mode`: a client still on
/// the old (retired) pool waits too. PAUSE and RESUME used to reach only
/// the current pools, so it kept running transactions during the pause.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pause_reaches_clients_of_a_pool_retired_by_reload() {
    let text = config("");
    let (p, _dir, path) = reloadable(&text).await;
    let admin = console(&p, "admin", "pgtarn").await.expect("admin login");
    let old = p.connect().await;
    old.simple_query("SELECT 1").await.expect("warm up");
    reload_into_session_mode(&admin, &text, &path).await;
    admin.simple_query("PAUSE app").await.expect("pause");
    let r = tokio::time::timeout(Duration::from_secs(1), old.simple_query("SELECT 2")).await;
    assert!(
        r.is_err(),
        "a client of app ran a new transaction while app was paused: {r:?}"
    );
    admin.simple_query("RESUME app").await.expect("resume");
    let again = tokio::time::timeout(DEADLINE, old.simple_query("SELECT 3")).await;
    assert!(matches!(again, Ok(Ok(_))), "after RESUME: {again:?}");
    p.stop().await;
}

/// An extended-protocol exchange on the console (Parse, Describe, Sync,
/// as a driver's prepare sends) gets one ErrorResponse, then
/// ReadyForQuery, as Postgres answers a failed extended query (messages
/// after the error are skipped up to Sync); it used to get one per message.
#[tokio::test]
async fn console_extended_protocol_gets_one_error_per_sync() {
    let p = Pooler::start(&config("auth_type = \"trust\"")).await;
    let mut raw = common::raw::Raw::login(p.addr, "admin", "pgbouncer").await;
    use common::raw::ext as msg;
    let batch = [msg::parse("", "SHOW POOLS"), msg::describe(""), msg::sync()].concat();
    raw.send(&batch).await;
    let got = raw.read_until(b'Z').await;
    assert_eq!(
        common::raw::errors(&got).len(),
        1,
        "{}",
        common::raw::tags(&got)
    );
    // The next exchange gets its own error; a simple query sent before its
    // Sync is discarded with the rest (as Postgres does), and one after
    // the Sync runs.
    let mut show = bytes::BytesMut::new();
    pgtarn::protocol::encode::query(&mut show, "SHOW VERSION");
    let batch = [
        msg::parse("", "SHOW POOLS"),
        show.to_vec(),
        msg::sync(),
        show.to_vec(),
    ]
    .concat();
    raw.send(&batch).await;
    let got = raw.read_until(b'Z').await;
    assert_eq!(
        common::raw::errors(&got).len(),
        1,
        "{}",
        common::raw::tags(&got)
    );
    assert!(
        !got.iter().any(|(t, _)| *t == b'D'),
        "{}",
        common::raw::tags(&got)
    );
    let got = raw.read_until(b'Z').await;
    assert!(
        got.iter().any(|(t, _)| *t == b'D'),
        "{}",
        common::raw::tags(&got)
    );
    p.stop().await;
}

/// A pool re-created under the same labels (a reload retired it, a later
/// one brought it back) shares the counters of the one it replaced: its
/// first stats period used to report their whole history as averages
/// (`avg_xact_count` 300/s for one transaction).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_recreated_pools_first_period_does_not_include_the_old_pools_history() {
    let text = config("stats_period = \"1s\"");
    let (p, _dir, path) = reloadable(&text).await;
    let admin = console(&p, "admin", "pgtarn").await.expect("admin login");
    {
        let c = p.connect().await;
        for _ in 0..300 {
            c.simple_query("select 1").await.expect("select");
        }
    }
    reload_into_session_mode(&admin, &text, &path).await;
    std::fs::write(&path, &text).expect("write");
    admin.simple_query("RELOAD").await.expect("reload back");
    let c = p.connect().await;
    c.simple_query("select 1").await.expect("select");
    let new_pool = p.ctx.registry.find("app", "app").expect("the new pool");
    wait_until("the new pool's first period ended", DEADLINE, || async {
        new_pool.stats.last_period().secs > 0.0
    })
    .await;
    let s = app_figures(&admin, "SHOW STATS").await;
    assert!(
        s["avg_xact_count"] <= 5 && s["avg_query_count"] <= 5,
        "one transaction ran in the new pool's first period: {s:?}"
    );
    p.stop().await;
}

/// SHOW POOLS lists a pool retired by a reload while a client still uses
/// it (its server is in SHOW SERVERS and counted in SHOW DATABASES); the
/// row used to be missing, `cl_active` and `sv_active` with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn show_pools_counts_a_retired_pool_still_in_use() {
    let text = config("");
    let (p, _dir, path) = reloadable(&text).await;
    let admin = console(&p, "admin", "pgtarn").await.expect("admin login");
    let holder = p.connect().await;
    holder.simple_query("BEGIN").await.expect("begin");
    reload_into_session_mode(&admin, &text, &path).await;
    let servers = rows(&admin, "SHOW SERVERS").await;
    let active_servers = servers.iter().filter(|r| r["state"] == "active").count();
    let pools = rows(&admin, "SHOW POOLS").await;
    let app: Vec<_> = pools.iter().filter(|r| r["database"] == "app").collect();
    let sum = |col: &str| -> u64 { app.iter().map(|r| r[col].parse::<u64>().unwrap()).sum() };
    assert_eq!(active_servers, 1, "{servers:?}");
    assert_eq!(
        (sum("cl_active"), sum("sv_active")),
        (1, 1),
        "SHOW POOLS {pools:?}, SHOW SERVERS {servers:?}"
    );
    holder.simple_query("COMMIT").await.expect("commit");
    p.stop().await;
}

/// SHOW POOLS `maxwait` counts from when a client started waiting, also
/// when PAUSE holds it back after it had queued; it used to restart from
/// 0 while SHOW CLIENTS showed the client's real wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn maxwait_of_a_queued_client_held_by_pause_keeps_counting() {
    let p = Pooler::start(&config("")).await;
    let admin = Arc::new(console(&p, "admin", "pgtarn").await.expect("admin login"));
    let (holders, query) = fill_the_pool_and_queue_one(&p, &admin).await;
    wait_until("the queued client has waited 2 s", DEADLINE, || async {
        pool_row(&admin).await["maxwait"].parse::<u64>().unwrap() >= 2
    })
    .await;
    pause_once_the_holders_commit(&admin, &holders).await;
    waits_while_paused(&admin, &query, "ran while paused").await;
    let pools = pool_row(&admin).await;
    assert!(
        pools["maxwait"].parse::<u64>().unwrap() >= 2,
        "the client has waited 2 s and more; SHOW POOLS {pools:?}"
    );
    admin.simple_query("RESUME app").await.expect("resume");
    let ran = tokio::time::timeout(DEADLINE, query)
        .await
        .expect("runs after RESUME");
    ran.expect("join").expect("SELECT 42");
    p.stop().await;
}
