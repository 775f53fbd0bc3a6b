mod common;

// Real drivers through pgtarn in transaction pooling mode: asyncpg (with
// its statement cache) and pgjdbc (with `prepareThreshold=1`) run a few
// thousand named prepared statements from 20 concurrent connections over a
// pool of 4 servers. The checks themselves live in `tests/drivers/` and run
// as child processes; pgtarn runs in-process.
//
// A driver that is not installed fails the test under CI (`CI=true`) and
// is skipped with a note elsewhere.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use common::pg::PgServer;
use common::pooler::{self, Pooler};
use tokio::process::Command;

/// Server connections pgtarn may open: far fewer than the 20 clients, so
/// statements are prepared on one server and executed on another.
const POOL_SIZE: usize = 4;
/// Longest a driver check may run (it is ~10 s normally).
const CHILD_DEADLINE: Duration = Duration::from_secs(180);
/// Where Debian's libpostgresql-jdbc-java puts the driver.
const PGJDBC_JAR: &str = "/usr/share/java/postgresql.jar";

fn drivers_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/drivers")
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// Fails under CI, else prints a skip note. Returns normally only off CI.
fn driver_missing(what: &str, install: &str) {
    let msg = format!("{what} is not installed; install it with: {install}");
    assert!(!in_ci(), "CI=true and {msg}");
    eprintln!("SKIP: {msg}");
}

/// Whether `program args` runs and exits 0 (output discarded).
async fn runs_ok(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .is_ok_and(|s| s.success())
}

/// Runs `cmd` to completion (killed after [`CHILD_DEADLINE`]) and returns
/// its output; panics if it cannot be started or runs too long.
async fn run(what: &str, cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    match tokio::time::timeout(CHILD_DEADLINE, child.wait_with_output()).await {
        Ok(out) => out.unwrap_or_else(|e| panic!("waiting for {what}: {e}")),
        Err(_) => panic!("{what} still running after {CHILD_DEADLINE:?}"),
    }
}

/// Panics with the child's whole output unless it exited 0; prints its
/// stdout otherwise.
fn assert_success(what: &str, out: &Output) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{what} failed ({}).\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
        out.status
    );
    print!("{stdout}");
}

async fn start_pooler() -> Pooler {
    let database = format!("pool_mode = \"transaction\"\npool_size = {POOL_SIZE}");
    Pooler::start(&pooler::config(PgServer::shared(), "", &database)).await
}

/// pgtarn kept its pool bound and still serves a fresh client.
async fn assert_pooler_healthy(p: &Pooler) {
    let size = p.pool().size();
    assert!(size <= POOL_SIZE, "pool grew to {size} > {POOL_SIZE}");
    let c = p.connect().await;
    let rows = c
        .query("select $1::int + 1", &[&41i32])
        .await
        .expect("query");
    assert_eq!(rows[0].get::<_, i32>(0), 42);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncpg_prepared_statements_in_transaction_mode() {
    if !runs_ok("python3", &["-c", "import asyncpg"]).await {
        driver_missing("python3 with asyncpg", "pip install asyncpg");
        return;
    }
    let p = start_pooler().await;
    let port = p.addr.port().to_string();
    let script = drivers_dir().join("asyncpg_check.py");
    let started = Instant::now();
    let out = run(
        "asyncpg_check.py",
        Command::new("python3")
            .arg(&script)
            .args(["127.0.0.1", &port])
            .env("ASYNCPG_CHECK_POOL_SIZE", POOL_SIZE.to_string()),
    )
    .await;
    assert_success("asyncpg_check.py", &out);
    println!("asyncpg check took {:?}", started.elapsed());
    assert_pooler_healthy(&p).await;
    p.stop().await;
}

/// psycopg 3 (libpq): SCRAM in plain and over TLS with and without channel
/// binding, and automatic prepared statements in transaction mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_scram_tls_and_prepared_statements() {
    if !runs_ok("python3", &["-c", "import psycopg"]).await {
        driver_missing("python3 with psycopg", "pip install 'psycopg[binary]'");
        return;
    }
    let certs = common::certs::TestCerts::generate("app");
    let pg = PgServer::shared();
    let toml = format!(
        "[pgtarn]\nlisten_addr = \"127.0.0.1:0\"\n[tls.client]\nmode = \"allow\"\n\
         cert = \"{}\"\nkey = \"{}\"\n[databases.app]\nport = {}\npool_size = {POOL_SIZE}\n\
         [users.app]\npassword = \"app-secret\"\n",
        certs.server_cert.display(),
        certs.server_key.display(),
        pg.port
    );
    let p = Pooler::start(&toml).await;
    let port = p.addr.port().to_string();
    let script = drivers_dir().join("psycopg_check.py");
    let ca = certs.ca.display().to_string();
    let out = run(
        "psycopg_check.py",
        Command::new("python3")
            .arg(&script)
            .args(["127.0.0.1", &port, &ca]),
    )
    .await;
    assert_success("psycopg_check.py", &out);
    assert_pooler_healthy(&p).await;
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgjdbc_prepared_statements_in_transaction_mode() {
    let jar = Path::new(PGJDBC_JAR);
    if !jar.is_file()
        || !runs_ok("java", &["-version"]).await
        || !runs_ok("javac", &["-version"]).await
    {
        driver_missing(
            "java, javac or the pgjdbc jar",
            "apt-get install -y libpostgresql-jdbc-java default-jdk-headless",
        );
        return;
    }
    let classes = tempfile::tempdir().expect("temp dir for classes");
    let source = drivers_dir().join("JdbcCheck.java");
    let out = run(
        "javac JdbcCheck.java",
        Command::new("javac")
            .arg("-nowarn")
            .arg("-cp")
            .arg(jar)
            .arg("-d")
            .arg(classes.path())
            .arg(&source),
    )
    .await;
    assert_success("javac JdbcCheck.java", &out);

    let p = start_pooler().await;
    let port = p.addr.port().to_string();
    let classpath = format!("{}:{}", jar.display(), classes.path().display());
    let started = Instant::now();
    let out = run(
        "JdbcCheck",
        Command::new("java")
            .arg("-cp")
            .arg(&classpath)
            .arg("JdbcCheck")
            .args(["127.0.0.1", &port])
            .env("JDBC_CHECK_POOL_SIZE", POOL_SIZE.to_string()),
    )
    .await;
    assert_success("JdbcCheck", &out);
    println!("jdbc check took {:?}", started.elapsed());
    assert_pooler_healthy(&p).await;
    p.stop().await;
}
