//! The monitoring stack around the metrics endpoint: the static checks of
//! `scripts/check-dashboard` (promtool, docker-compose, pgtarn
//! --check-config), and every query of the Grafana dashboard
//! (`config/grafana/dashboards/pgtarn.json`) run against a real Prometheus
//! that scrapes the pgtarn binary while it serves real load.
//!
//! Needs `promtool` and `prometheus` (Debian package `prometheus`) and
//! `docker-compose`; `.ci/run` installs them.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::pg::PgServer;
use common::process::{PgtarnProcess, free_port};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};

/// Prometheus scrapes pgtarn this often in the live test.
const SCRAPE_INTERVAL: &str = "1s";
/// Rate window substituted for `$__rate_interval`: ten scrapes.
const RATE_WINDOW: &str = "10s";
/// How long Prometheus may take to start and scrape pgtarn once.
const SCRAPE_DEADLINE: Duration = Duration::from_secs(20);
/// How long every dashboard query may take to return data once scraping works.
const QUERY_DEADLINE: Duration = Duration::from_secs(30);
/// Pause between two polls of Prometheus or an HTTP endpoint.
const POLL: Duration = Duration::from_millis(250);

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `scripts/check-dashboard` with `args`; returns (success, output).
fn check_dashboard(args: &[&str], with_binary: bool) -> (bool, String) {
    let mut cmd = Command::new(repo().join("scripts/check-dashboard"));
    cmd.args(args).current_dir(repo());
    if with_binary {
        cmd.env("PGTARN_BIN", env!("CARGO_BIN_EXE_pgtarn"));
    }
    let out = cmd
        .output()
        .expect("run scripts/check-dashboard (needs python3)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn dashboard_prometheus_and_compose_files_pass_their_checks() {
    let (ok, text) = check_dashboard(&[], true);
    println!("{text}");
    assert!(ok, "scripts/check-dashboard failed:\n{text}");
    for check in [
        "ok   dashboard lint",
        "ok   promtool check rules",
        "ok   promtool check config",
        "config -q",
        "ok   pgtarn --check-config",
    ] {
        assert!(text.contains(check), "check {check:?} did not run:\n{text}");
    }
}

/// The dashboard's queries with template variables substituted (rate
/// windows = [`RATE_WINDOW`]), as (panel id/refId, expr).
fn dashboard_exprs() -> Vec<(String, String)> {
    let (ok, text) = check_dashboard(&["--print-exprs", "--rate-interval", RATE_WINDOW], false);
    assert!(ok, "scripts/check-dashboard --print-exprs failed:\n{text}");
    let exprs: Vec<(String, String)> = text
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(id, e)| (id.to_owned(), e.to_owned()))
        .collect();
    assert!(exprs.len() >= 10, "too few dashboard exprs:\n{text}");
    exprs
}

/// Percent-encodes a URL query value.
fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A blocking HTTP/1.0 GET: (status, body), or an error text.
fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let timeout = Duration::from_secs(5);
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| e.to_string())?;
    let raw = String::from_utf8_lossy(&raw);
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no HTTP header end in {raw:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad status line in {head:?}"))?;
    Ok((status, body.to_owned()))
}

/// Polls `f` every [`POLL`] until it is true; false if `deadline` passes.
fn poll_until(deadline: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(POLL);
    }
}

/// A real Prometheus server scraping one target; killed on drop.
struct Prometheus {
    addr: SocketAddr,
    child: Child,
    dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: SocketAddr) -> Prometheus {
        let dir = tempfile::Builder::new()
            .prefix("pgtarn-prometheus-")
            .tempdir()
            .expect("tempdir");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: {SCRAPE_INTERVAL}\n  evaluation_interval: {SCRAPE_INTERVAL}\n\
                 scrape_configs:\n  - job_name: pgtarn\n    static_configs:\n      - targets: [\"{target}\"]\n"
            ),
        )
        .expect("write prometheus.yml");
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log file");
        let child = Command::new(prometheus_binary())
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("spawn prometheus (Debian: apt-get install -y prometheus)");
        Prometheus { addr, child, dir }
    }

    fn log(&self) -> String {
        let log =
            std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Runs an instant query; Ok(number of series) or an error text.
    fn series(&self, expr: &str) -> Result<usize, String> {
        let (status, body) = http_get(
            self.addr,
            &format!("/api/v1/query?query={}", url_encode(expr)),
        )?;
        if status != 200 || !body.contains(r#""status":"success""#) {
            return Err(format!("HTTP {status}: {body}"));
        }
        Ok(body.matches(r#""metric":"#).count())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn prometheus_binary() -> PathBuf {
    ["/usr/bin/prometheus", "/usr/local/bin/prometheus"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("prometheus"))
}

async fn connect(port: u16) -> Client {
    let (client, conn) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user=app password=app-secret dbname=app"),
        NoTls,
    )
    .await
    .expect("connect through pgtarn");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// Drives pgtarn (pool_size 2, query_wait_timeout 1 s) through the events
/// the dashboard shows: a saturated pool, a client that waits and gets a
/// server, one that times out waiting, a division by zero (class 22) and a
/// client that vanishes inside a transaction.
async fn scenario(port: u16) {
    let a = connect(port).await;
    let b = connect(port).await;
    let waiter = connect(port).await;
    let late = connect(port).await;
    let (vanishing, vanishing_conn) = {
        let (client, conn) = tokio_postgres::connect(
            &format!("host=127.0.0.1 port={port} user=app password=app-secret dbname=app"),
            NoTls,
        )
        .await
        .expect("connect through pgtarn");
        (client, tokio::spawn(conn))
    };

    // Both servers held by open transactions: the pool is saturated.
    a.batch_execute("BEGIN; SELECT 1").await.expect("a begins");
    b.batch_execute("BEGIN; SELECT 1").await.expect("b begins");

    // A third client waits 1 s and gets query_wait_timeout.
    let err = waiter
        .simple_query("SELECT 1")
        .await
        .expect_err("a full pool times the waiter out");
    assert_eq!(
        err.code(),
        Some(&SqlState::from_code("53300")),
        "query_wait_timeout expected, got {err:?}"
    );

    // A fourth waits until `a` commits, then gets a server.
    let late_query = tokio::spawn(async move {
        late.simple_query("SELECT 1").await.expect("late client");
        late
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.batch_execute("COMMIT").await.expect("a commits");
    let late = late_query.await.expect("late task");

    // A client vanishes inside a transaction: its server is closed.
    vanishing
        .batch_execute("BEGIN; SELECT 1")
        .await
        .expect("vanishing client begins");
    vanishing_conn.abort();
    drop(vanishing);
    b.batch_execute("COMMIT").await.expect("b commits");

    // An error of class 22 (division by zero).
    let err = late
        .simple_query("SELECT 1/0")
        .await
        .expect_err("division by zero");
    assert_eq!(err.code(), Some(&SqlState::DIVISION_BY_ZERO));
    // The extended protocol too.
    let row = late
        .query_one("SELECT $1::int + 1", &[&41i32])
        .await
        .expect("extended query");
    assert_eq!(row.get::<_, i32>(0), 42);
}

/// Steady load until `stop`: more clients than servers running short
/// transactions and queries, so the pool stays saturated with waiters.
async fn background_load(port: u16, stop: Arc<AtomicBool>) {
    let mut tasks = Vec::new();
    for i in 0..5 {
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let client = connect(port).await;
            while !stop.load(Ordering::Relaxed) {
                let sql = if i % 2 == 0 {
                    "BEGIN; SELECT pg_sleep(0.02); COMMIT"
                } else {
                    "SELECT pg_sleep(0.01)"
                };
                // Errors (a rare query_wait_timeout on a busy machine) are
                // part of the load; a lost connection is not.
                if let Err(e) = client.batch_execute(sql).await
                    && client.is_closed()
                {
                    panic!("background client {i} lost its connection: {e}");
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("background client");
    }
}

#[test]
fn every_dashboard_query_returns_data_from_a_live_prometheus() {
    let started = Instant::now();
    let exprs = dashboard_exprs();
    let pg = PgServer::start(Default::default());
    let metrics_port = std::cell::Cell::new(0);
    let pgtarn = PgtarnProcess::start_on_free_port(|port| {
        metrics_port.set(free_port());
        let metrics = SocketAddr::from(([127, 0, 0, 1], metrics_port.get()));
        format!(
            "[pgtarn]\nlisten_addr = \"127.0.0.1:{port}\"\nmetrics_addr = \"{metrics}\"\n\
             query_wait_timeout = \"1s\"\n\
             [databases.app]\nport = {}\npool_size = 2\n\
             [users.app]\npassword = \"app-secret\"\n",
            pg.port
        )
    });
    let port = pgtarn.addr.port();
    let metrics = SocketAddr::from(([127, 0, 0, 1], metrics_port.get()));
    assert!(
        poll_until(Duration::from_secs(10), || {
            matches!(http_get(metrics, "/healthz"), Ok((200, _)))
        }),
        "pgtarn's /healthz on {metrics} did not answer 200; pgtarn log:\n{}",
        pgtarn.log()
    );

    let prometheus = Prometheus::start(metrics);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(scenario(port));
    let stop = Arc::new(AtomicBool::new(false));
    let load = runtime.spawn(background_load(port, stop.clone()));

    let up = r#"up{job="pgtarn"} == 1"#;
    assert!(
        poll_until(SCRAPE_DEADLINE, || prometheus.series(up) == Ok(1)),
        "prometheus did not scrape pgtarn successfully within {SCRAPE_DEADLINE:?} \
         ({up}: {:?}); prometheus log:\n{}",
        prometheus.series(up),
        prometheus.log()
    );

    // Every query must return at least one series; rates need two scrapes
    // of a series inside the window, so poll until all do. The scenario's
    // events must be visible too (each of these is empty if not).
    let pool = r#"database="app", user="app", pool_mode="transaction""#;
    let events: Vec<(String, String)> = [
        format!("pgtarn_pool_max_size{{{pool}}} == 2"),
        format!("max_over_time(pgtarn_pool_saturation{{{pool}}}[1m]) == 1"),
        format!(r#"max_over_time(pgtarn_pool_clients{{{pool}, state="waiting"}}[1m]) >= 1"#),
        format!("pgtarn_pool_wait_timeouts_total{{{pool}}} >= 1"),
        format!(r#"pgtarn_pool_errors_total{{{pool}, class="22"}} >= 1"#),
        format!("pgtarn_pool_wait_seconds_count{{{pool}}} >= 1"),
        format!("sum(pgtarn_pool_server_connections_closed_total{{{pool}}}) >= 1"),
        format!("pgtarn_pool_client_logins_total{{{pool}}} >= 10"),
    ]
    .into_iter()
    .map(|e| ("scenario".to_owned(), e))
    .collect();
    let mut empty: Vec<String> = Vec::new();
    poll_until(QUERY_DEADLINE, || {
        empty = exprs
            .iter()
            .chain(&events)
            .filter_map(|(id, expr)| match prometheus.series(expr) {
                Ok(n) if n > 0 => None,
                Ok(_) => Some(format!("{id}: {expr} -> empty")),
                Err(e) => Some(format!("{id}: {expr} -> {e}")),
            })
            .collect();
        empty.is_empty()
    });
    stop.store(true, Ordering::Relaxed);
    runtime.block_on(load).expect("background load");

    if !empty.is_empty() {
        let families: Vec<String> = match http_get(metrics, "/metrics") {
            Ok((_, body)) => body
                .lines()
                .filter_map(|l| l.strip_prefix("# TYPE "))
                .map(str::to_owned)
                .collect(),
            Err(e) => vec![format!("GET /metrics failed: {e}")],
        };
        panic!(
            "{} of {} dashboard and scenario queries returned no data after {QUERY_DEADLINE:?}:\n  {}\n\
             metric families pgtarn serves:\n  {}\npgtarn log:\n{}",
            empty.len(),
            exprs.len() + events.len(),
            empty.join("\n  "),
            families.join("\n  "),
            pgtarn.log()
        );
    }
    println!(
        "all {} dashboard queries and {} scenario checks returned data ({:.1?} in all)",
        exprs.len(),
        events.len(),
        started.elapsed()
    );
    drop(prometheus);
    drop(pgtarn);
}
