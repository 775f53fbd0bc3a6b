//! Smoke tests for the PostgreSQL test harness in `tests/common`.

mod common;

use std::net::{Ipv4Addr, TcpStream};
use std::time::Duration;

use common::{PgOptions, PgServer};
use tokio_postgres::NoTls;

/// The shared server accepts the superuser and `app` (SCRAM over TCP).
#[tokio::test]
async fn shared_server_accepts_superuser_and_app() {
    let pg = PgServer::shared();
    let su = pg.superuser().await;
    let row = su
        .query_one("select current_user::text", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "postgres");

    let (app, conn) = tokio_postgres::connect(&pg.app_conn_str(), NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let row = app
        .query_one(
            "select 1::int4, current_user::text, current_database()::text",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 1);
    assert_eq!(row.get::<_, String>(1), "app");
    assert_eq!(row.get::<_, String>(2), "app");
    let method = su
        .query_one(
            "select left(rolpassword, 13) from pg_authid where rolname = 'app'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(method.get::<_, String>(0), "SCRAM-SHA-256");
}

/// A private server honours `extra_conf`, and dropping it stops the server
/// and deletes its directory.
#[tokio::test]
async fn private_server_applies_options_and_cleans_up() {
    let opts = PgOptions {
        extra_conf: vec!["max_connections = 20".into()],
        ..PgOptions::default()
    };
    let pg = PgServer::start(opts);
    let (port, data_dir) = (pg.port, pg.data_dir.clone());
    {
        let su = pg.superuser().await;
        let row = su.query_one("show max_connections", &[]).await.unwrap();
        assert_eq!(row.get::<_, String>(0), "20");
    }
    drop(pg);
    assert!(!data_dir.exists(), "{} still exists", data_dir.display());
    let refused =
        TcpStream::connect_timeout(&(Ipv4Addr::LOCALHOST, port).into(), Duration::from_secs(2));
    assert!(refused.is_err(), "port {port} still accepts connections");
}
