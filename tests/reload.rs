//! `SIGHUP` reloads the configuration file: new databases, pool sizes and
//! users take effect without dropping connected clients; an invalid file
//! is rejected with a log line naming the key, and the old configuration
//! stays in force.

mod common;

use std::time::Duration;

use common::pg::PgServer;
use common::process::{PgtarnProcess, free_port};
use common::{one, wait_until};
use tokio_postgres::NoTls;

const DEADLINE: Duration = Duration::from_secs(10);

fn config(pg: &PgServer, port: u16, extra: &str) -> String {
    format!(
        "[pgtarn]\nlisten_addr = \"127.0.0.1:{port}\"\n\
         [databases.app]\nhost = \"127.0.0.1\"\nport = {pg}\npool_size = 2\n\
         [users.app]\npassword = \"app-secret\"\n{extra}",
        pg = pg.port
    )
}

async fn connect(port: u16, db: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let s = format!("host=127.0.0.1 port={port} user=app password=app-secret dbname={db}");
    let (client, conn) = tokio_postgres::connect(&s, NoTls).await?;
    tokio::spawn(conn);
    Ok(client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_a_new_database_and_keeps_clients() {
    let pg = PgServer::shared();
    let port = free_port();
    let p = PgtarnProcess::start_logging(&config(pg, port, ""), port, "info");
    let kept = connect(port, "app").await.expect("connect");
    kept.simple_query("BEGIN; SELECT 1").await.expect("begin");
    assert!(
        connect(port, "app2").await.is_err(),
        "app2 is not configured yet"
    );

    let app2 = format!(
        "[databases.app2]\nhost = \"127.0.0.1\"\nport = {}\ndbname = \"app\"\n",
        pg.port
    );
    std::fs::write(&p.config_path, config(pg, port, &app2)).expect("write");
    p.signal(libc::SIGHUP);
    wait_until("reload logged", DEADLINE, || async {
        p.log().contains("configuration reloaded")
    })
    .await;
    let new = connect(port, "app2")
        .await
        .expect("the new database is reachable");
    assert_eq!(one(&new, "SELECT current_database()").await, "app");
    kept.simple_query("SELECT 2; COMMIT")
        .await
        .expect("the transaction survived the reload");

    std::fs::write(
        &p.config_path,
        config(pg, port, "[databases.bad]\npool_size = 0\n"),
    )
    .expect("write");
    p.signal(libc::SIGHUP);
    wait_until("rejection logged", DEADLINE, || async {
        p.log().contains("reload failed")
    })
    .await;
    let log = p.log();
    assert!(
        log.contains("databases.bad.pool_size"),
        "the log names the key: {log}"
    );
    let still = connect(port, "app2")
        .await
        .expect("the old configuration stays in force");
    assert_eq!(one(&still, "SELECT 1").await, "1");
    assert_eq!(one(&kept, "SELECT 3").await, "3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_new_users_and_passwords() {
    let pg = PgServer::shared();
    let port = free_port();
    let p = PgtarnProcess::start_logging(&config(pg, port, ""), port, "info");
    let kept = connect(port, "app").await.expect("connect");
    let as_postgres = format!(
        "host=127.0.0.1 port={port} user=postgres password={} dbname=app",
        pg.superuser_password
    );
    assert!(
        tokio_postgres::connect(&as_postgres, NoTls).await.is_err(),
        "not a user yet"
    );

    // A new user, and a new password for app.
    let users = format!(
        "[users.postgres]\npassword = \"{}\"\n",
        pg.superuser_password
    );
    let text = config(pg, port, &users).replace("app-secret", "rotated-secret");
    std::fs::write(&p.config_path, text).expect("write");
    p.signal(libc::SIGHUP);
    wait_until("reload logged", DEADLINE, || async {
        p.log().contains("configuration reloaded")
    })
    .await;
    let (su, conn) = tokio_postgres::connect(&as_postgres, NoTls)
        .await
        .expect("the new user logs in");
    tokio::spawn(conn);
    assert_eq!(one(&su, "SELECT current_user").await, "postgres");
    let Err(e) = connect(port, "app").await else {
        panic!("the old password must be refused");
    };
    assert_eq!(e.as_db_error().map(|d| d.code().code()), Some("28P01"));
    assert_eq!(
        one(&kept, "SELECT 1").await,
        "1",
        "a connected client stays"
    );
}

/// A reload that lowers `max_client_conn` below the clients connected
/// keeps them, refuses newcomers (53300), and holds the new limit once
/// clients leave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lowered_max_client_conn_holds_once_clients_leave() {
    let pg = PgServer::shared();
    let port = free_port();
    let with_limit = |limit: u32| {
        config(pg, port, "").replace(
            "[databases.app]",
            &format!("max_client_conn = {limit}\n[databases.app]"),
        )
    };
    let p = PgtarnProcess::start(&with_limit(4), port);
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(connect(port, "app").await.expect("within 4"));
    }
    std::fs::write(&p.config_path, with_limit(2)).unwrap();
    p.signal(libc::SIGHUP);
    wait_until("the lower limit is in force", DEADLINE, || async {
        connect(port, "app").await.is_err()
    })
    .await;
    for c in &clients {
        assert_eq!(one(c, "select 'kept'").await, "kept");
    }
    // Down to one client: exactly one more gets in.
    clients.truncate(1);
    let deadline = std::time::Instant::now() + DEADLINE;
    let second = loop {
        match connect(port, "app").await {
            Ok(c) => break c,
            Err(_) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("a second client is let in: {e}"),
        }
    };
    let e = connect(port, "app").await.expect_err("2 is the limit");
    assert_eq!(e.code().map(|c| c.code()), Some("53300"), "{e}");
    assert_eq!(one(&second, "select 'in'").await, "in");
}

/// Applies `toml` to a running in-process pgtarn, as a reload does.
fn apply(p: &common::pooler::Pooler, toml: &str) {
    let config = pgtarn::config::Config::from_toml(toml).expect("a valid config");
    p.ctx.apply(config).expect("the reload applies");
}

/// A reload that points a database elsewhere (here another upstream
/// database) moves its connected clients there too, at their next
/// transaction, as PgBouncer does: one pool, counted in SHOW POOLS, within
/// its pool_size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_upstream_takes_connected_clients_along() {
    use common::pooler::{self, Pooler};
    let pg = PgServer::shared();
    let before = pooler::config(pg, "", "pool_size = 1\ndbname = \"app\"");
    let p = Pooler::start(&before).await;
    let a = p.connect().await;
    assert_eq!(one(&a, "select current_database()::text").await, "app");
    let pool = p.pool();
    apply(
        &p,
        &before.replace("dbname = \"app\"", "dbname = \"postgres\""),
    );
    assert!(std::sync::Arc::ptr_eq(&pool, &p.pool()), "the same pool");
    assert_eq!(
        one(&a, "select current_database()::text").await,
        "postgres",
        "the connected client's next transaction"
    );
    let b = p.connect().await;
    assert_eq!(one(&b, "select current_database()::text").await, "postgres");
    assert_eq!(pool.size(), 1, "pool_size 1 holds across the reload");
    // The server goes back to the pool just after b's ReadyForQuery.
    let settled = || {
        let counts = pool.counts(None);
        (counts.cl_active, counts.sv_idle) == (2, 1)
    };
    wait_until("both clients idle, the server back", DEADLINE, || {
        std::future::ready(settled())
    })
    .await;
}

/// A reload that changes nothing keeps every pool, including those of
/// users found by auth_query (who have no secret in the file), with
/// their idle server connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_changes_nothing_keeps_auth_query_pools() {
    use common::pooler::{self, Pooler};
    let pg = PgServer::shared();
    let su = pg.superuser().await;
    let role = format!("rl_aq_{}", std::process::id());
    let sql = format!(
        "drop role if exists {role}; create role {role} login password 'rl-pw'; \
         grant connect on database app to {role}"
    );
    su.batch_execute(&sql).await.unwrap();
    let toml = pooler::config(pg, "auth_user = \"postgres\"", "pool_size = 2")
        + &format!(
            "[users.postgres]\npassword = \"{}\"\n",
            pg.superuser_password
        );
    let p = Pooler::start(&toml).await;
    let conn = format!(
        "host=127.0.0.1 port={} user={role} password=rl-pw dbname=app",
        p.addr.port()
    );
    let (c, connection) = tokio_postgres::connect(&conn, NoTls).await.unwrap();
    tokio::spawn(connection);
    assert_eq!(one(&c, "select current_user::text").await, role);
    let pool = p.ctx.registry.find("app", &role).expect("the pool");
    let server = one(&c, "select pg_backend_pid()::text").await;
    apply(&p, &toml);
    let after = p.ctx.registry.find("app", &role).expect("still there");
    assert!(std::sync::Arc::ptr_eq(&pool, &after), "the same pool");
    assert_eq!(
        one(&c, "select pg_backend_pid()::text").await,
        server,
        "the same server"
    );
    drop(c);
    su.batch_execute(&format!("drop role {role}")).await.ok();
}

/// The present-state gauges of a pool whose database a reload removed
/// leave /metrics instead of freezing at their last values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_database_leaves_no_frozen_gauges() {
    use common::pooler::{self, Pooler};
    let pg = PgServer::shared();
    let other = format!("[databases.other]\nport = {}\ndbname = \"app\"\n", pg.port);
    let both = pooler::config(pg, "", "pool_size = 1") + &other;
    let p = Pooler::start(&both).await;
    let a = p.connect().await;
    a.batch_execute("begin").await.unwrap();
    let saturated =
        "pgtarn_pool_saturation{database=\"app\",pool_mode=\"transaction\",user=\"app\"} 1";
    assert!(pgtarn::metrics::render(&p.ctx).contains(saturated));
    let start = both.find("[databases.app]").unwrap();
    let end = start + both[start..].find("[users.app]").unwrap();
    let without_app = format!("{}{}", &both[..start], &both[end..]);
    apply(&p, &without_app);
    a.batch_execute("commit").await.unwrap();
    let text = pgtarn::metrics::render(&p.ctx);
    let frozen: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("pgtarn_pool_") && l.contains("database=\"app\""))
        .filter(|l| {
            !l.contains("_total")
                && !l.contains("_bucket")
                && !l.contains("_sum")
                && !l.contains("_count")
        })
        .collect();
    assert!(
        frozen.is_empty(),
        "gauges of a removed database:\n{}",
        frozen.join("\n")
    );
}

/// The server parameters a client gets at login (ParameterStatus) come
/// from the upstream in force: after a reload moves a pool to another
/// server, new clients get that server's, not the old one's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_move_logins_report_the_new_servers_parameters() {
    use common::pg::PgOptions;
    use common::pooler::{self, Pooler};
    use common::raw::Raw;
    let tokyo = PgServer::start(PgOptions {
        extra_conf: vec!["timezone = 'Asia/Tokyo'".into()],
        ..Default::default()
    });
    let general = "auth_type = \"trust\"";
    let before = pooler::config(PgServer::shared(), general, "pool_size = 1");
    let p = Pooler::start(&before).await;
    let reported_zone = || async {
        let mut raw = Raw::open(p.addr).await;
        let startup = [("user", "app"), ("database", "app")];
        raw.send(&pgtarn::protocol::encode::startup_message(&startup))
            .await;
        let login = raw.read_until(b'Z').await;
        let zone = login.iter().find_map(|(tag, body)| {
            let (k, v) = pgtarn::protocol::backend::parameter_status(body).ok()?;
            (*tag == b'S' && k == "TimeZone").then(|| v.to_owned())
        });
        zone.expect("a TimeZone ParameterStatus")
    };
    assert_ne!(reported_zone().await, "Asia/Tokyo");
    let port = format!("port = {}", PgServer::shared().port);
    apply(
        &p,
        &before.replacen(&port, &format!("port = {}", tokyo.port), 1),
    );
    assert_eq!(reported_zone().await, "Asia/Tokyo");
}

/// A reload that changes a database's `pool_mode` gives new clients a new
/// pool in the new mode (with its own metric labels); a connected client
/// keeps the mode it logged in with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_pool_mode_applies_to_new_clients() {
    use common::pooler::{self, Pooler};
    let pg = PgServer::shared();
    let before = pooler::config(pg, "", "pool_size = 2");
    let p = Pooler::start(&before).await;
    let a = p.connect().await;
    let old = p.pool();
    apply(
        &p,
        &before.replace("pool_size = 2", "pool_size = 2\npool_mode = \"session\""),
    );
    let b = p.connect().await;
    assert_eq!(one(&b, "select 'b'").await, "b");
    let new = p.pool();
    assert!(!std::sync::Arc::ptr_eq(&old, &new), "a new pool");
    assert_eq!(new.settings().mode.as_str(), "session");
    // B holds its server between transactions (session mode); A, in
    // transaction mode on the old pool, does not.
    assert_eq!(new.size() - new.idle(), 1, "B's server stays lent");
    assert_eq!(one(&a, "select 'a'").await, "a");
    assert_eq!(old.size(), old.idle(), "A's server went back");
    let text = pgtarn::metrics::render(&p.ctx);
    assert!(
        text.contains("pool_mode=\"session\""),
        "the new pool's labels"
    );
}

/// `SIGUSR1` pauses every database and `SIGUSR2` resumes them, as in
/// PgBouncer: `SHOW STATE` follows, and a query sent while paused waits
/// and runs once resumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr1_pauses_and_sigusr2_resumes() {
    let pg = PgServer::shared();
    let port = free_port();
    let admin = "[pgtarn]\nadmin_users = [\"app\"]\n";
    let text = config(pg, port, "").replacen("[pgtarn]\n", admin, 1);
    let p = PgtarnProcess::start_logging(&text, port, "info");
    let console = connect(port, "pgtarn").await.expect("console");
    let client = connect(port, "app").await.expect("connect");
    assert_eq!(one(&client, "SELECT 1").await, "1");
    let paused = || async {
        let rows = console.simple_query("SHOW STATE").await.expect("state");
        rows.iter().any(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => {
                r.get(0) == Some("paused") && r.get(1) == Some("yes")
            }
            _ => false,
        })
    };
    p.signal(libc::SIGUSR1);
    wait_until("paused", DEADLINE, paused).await;
    let waiting = tokio::spawn(async move { one(&client, "SELECT 2").await });
    wait_until("the query waits", DEADLINE, || async {
        let rows = console.simple_query("SHOW POOLS").await.expect("pools");
        rows.iter().any(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => {
                r.get("database") == Some("app") && r.get("cl_waiting") == Some("1")
            }
            _ => false,
        })
    })
    .await;
    p.signal(libc::SIGUSR2);
    wait_until("resumed", DEADLINE, || async { !paused().await }).await;
    let got = tokio::time::timeout(DEADLINE, waiting).await;
    assert_eq!(got.expect("the query ran").expect("task"), "2");
    let log = p.log();
    assert!(log.contains("SIGUSR1 received") && log.contains("SIGUSR2 received"));
}
