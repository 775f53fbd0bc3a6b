//! pgtarn as users run it: the binary, psql, pgbench, and a client that
//! reads a large result slowly.

mod common;

use std::process::Command;
use std::time::Duration;

use common::pg::PgServer;
use common::process::{PgtarnProcess, free_port};
use common::raw::Raw;

fn config(pg: &PgServer, port: u16, auth: &str, pool: &str) -> String {
    format!(
        "[pgtarn]\nlisten_addr = \"127.0.0.1:{port}\"\nauth_type = \"{auth}\"\n\
         [databases.app]\nport = {}\n{pool}\n[users.app]\npassword = \"app-secret\"\n",
        pg.port
    )
}

/// Runs a PG client tool against pgtarn as `app`, returning stdout; panics
/// with its output if it fails.
fn run_tool(pg: &PgServer, pgtarn: &PgtarnProcess, tool: &str, args: &[&str]) -> String {
    let out = Command::new(pg.bin(tool))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &pgtarn.addr.port().to_string(),
            "-U",
            "app",
        ])
        .args(args)
        .env("PGPASSWORD", "app-secret")
        .output()
        .expect("run tool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{tool} {args:?} failed:\n{text}");
    text
}

#[test]
fn psql_and_pgbench_run_through_pgtarn_without_failures() {
    let pg = PgServer::start(Default::default());
    let port = free_port();
    let pgtarn = PgtarnProcess::start(&config(&pg, port, "scram-sha-256", "pool_size = 5"), port);
    let out = run_tool(&pg, &pgtarn, "psql", &["-At", "-c", "select 40 + 2", "app"]);
    assert_eq!(out.trim(), "42");
    run_tool(&pg, &pgtarn, "pgbench", &["-i", "-s", "1", "app"]);
    for mode in [&["-S"][..], &[][..]] {
        let mut args = mode.to_vec();
        args.extend(["-c", "20", "-j", "2", "-t", "100", "app"]);
        assert_pgbench_ok(&run_tool(&pg, &pgtarn, "pgbench", &args), 2000);
    }
}

/// pgbench processed all `expected` transactions, none failed, no client
/// aborted.
fn assert_pgbench_ok(out: &str, expected: u32) {
    assert!(
        out.contains("number of failed transactions: 0 (0.000%)"),
        "{out}"
    );
    let processed = format!("number of transactions actually processed: {expected}/{expected}");
    assert!(out.contains(&processed), "{out}");
    assert!(!out.contains("aborted"), "{out}");
}

/// pgbench with named prepared statements, 50 clients on 5 servers in
/// transaction mode: no aborted client, no failed transaction.
#[test]
fn pgbench_prepared_mode_through_transaction_pooling() {
    let pg = PgServer::start(Default::default());
    let port = free_port();
    let pgtarn = PgtarnProcess::start(&config(&pg, port, "scram-sha-256", "pool_size = 5"), port);
    run_tool(&pg, &pgtarn, "pgbench", &["-i", "-s", "1", "app"]);
    for script in [&["-S"][..], &[][..]] {
        let mut args = vec!["-M", "prepared", "-c", "50", "-j", "2", "-t", "40"];
        args.extend(script);
        args.push("app");
        assert_pgbench_ok(&run_tool(&pg, &pgtarn, "pgbench", &args), 2000);
    }
}

#[test]
fn check_config_names_the_bad_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[databases.app]\npool_size = 5\nmin_pool_size = 9\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pgtarn"))
        .arg("--check-config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("databases.app.min_pool_size"), "{err}");
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/config/pgtarn.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_pgtarn"))
        .args(["--check-config", shipped])
        .output()
        .unwrap();
    assert!(out.status.success(), "the shipped config is valid");
}

/// A client that reads a 50 MB result slowly must not make pgtarn hold the
/// result in memory: its resident size stays within a few MiB of idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_does_not_make_pgtarn_buffer_the_result() {
    let pg = PgServer::shared();
    let port = free_port();
    let pgtarn = PgtarnProcess::start(&config(pg, port, "trust", ""), port);
    let mut warm = Raw::login(pgtarn.addr, "app", "app").await;
    warm.query("select 1").await;
    warm.read_until(b'Z').await;
    let baseline = pgtarn.rss_kib();
    let mut client = Raw::login(pgtarn.addr, "app", "app").await;
    client
        .query("select repeat('x', 1000) from generate_series(1, 50000)")
        .await;
    let (mut rows, mut bytes, mut peak) = (0u64, 0usize, baseline);
    while let Some((tag, body)) = client.read().await {
        match tag {
            b'D' => {
                rows += 1;
                bytes += body.len();
                if rows % 500 == 0 {
                    peak = peak.max(pgtarn.rss_kib());
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            b'Z' => break,
            _ => {}
        }
    }
    assert_eq!(rows, 50_000);
    assert!(bytes > 50_000_000);
    let growth_mib = (peak - baseline) / 1024;
    assert!(
        growth_mib < 16,
        "pgtarn grew by {growth_mib} MiB while relaying 50 MB to a slow reader"
    );
}

/// `unix_socket_dir`: psql connects with `-h DIR` as it would to Postgres
/// (SCRAM login, queries, the admin console, which lists the client as
/// `unix`); a socket file left by a dead process is replaced; the file is
/// gone once pgtarn exits.
#[tokio::test]
async fn clients_connect_on_the_unix_socket() {
    let pg = PgServer::shared();
    let dir = tempfile::tempdir().expect("tempdir");
    let make = |port: u16| {
        let general = format!(
            "unix_socket_dir = \"{}\"\nadmin_users = [\"app\"]\n",
            dir.path().display()
        );
        config(pg, port, "scram-sha-256", "pool_size = 2")
            .replace("[databases.app]", &format!("{general}[databases.app]"))
    };
    // A socket file nobody listens on, as a killed pgtarn leaves it.
    let port = free_port();
    let socket = dir.path().join(format!(".s.PGSQL.{port}"));
    drop(std::os::unix::net::UnixListener::bind(&socket).expect("stale socket"));
    assert!(socket.exists());
    let mut pgtarn = PgtarnProcess::start(&make(port), port);
    let psql = |db: &str, sql: &str| {
        let out = Command::new(pg.bin("psql"))
            .args(["-h", &dir.path().display().to_string()])
            .args(["-p", &port.to_string(), "-U", "app", "-At", "-c", sql, db])
            .env("PGPASSWORD", "app-secret")
            .output()
            .expect("run psql");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "psql {sql:?}: {text}{err}");
        text
    };
    assert_eq!(psql("app", "select 40 + 2").trim(), "42");
    // A client that stays, for SHOW CLIENTS.
    let conn = format!(
        "host={} port={port} user=app password=app-secret dbname=app",
        dir.path().display()
    );
    let (client, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
        .await
        .expect("tokio-postgres on the unix socket");
    tokio::spawn(connection);
    let row = client.query_one("select 7", &[]).await.expect("query");
    assert_eq!(row.get::<_, i32>(0), 7);
    let clients = psql("pgbouncer", "show clients");
    let app = clients.lines().find(|l| l.contains("|app|app|"));
    assert!(
        app.is_some_and(|l| l.split('|').nth(4) == Some("unix")),
        "{clients}"
    );
    drop(client);
    pgtarn.signal(libc::SIGTERM);
    assert!(pgtarn.wait_exit(Duration::from_secs(10)), "pgtarn exits");
    assert!(!socket.exists(), "the socket file is removed on exit");
}
