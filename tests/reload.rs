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
    let e = connect(port, "app").await.err().expect("2 is the limit");
    assert_eq!(e.code().map(|c| c.code()), Some("53300"), "{e}");
    assert_eq!(one(&second, "select 'in'").await, "in");
}
