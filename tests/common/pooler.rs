//! Starts pgtarn in-process, on a free port, in front of a test Postgres.

use std::net::SocketAddr;
use std::sync::Arc;

use pgtarn::shutdown::{self, Trigger};
use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls};

use super::pg::PgServer;

/// A running in-process pgtarn; shut down on drop.
pub struct Pooler {
    /// Where clients connect.
    pub addr: SocketAddr,
    /// pgtarn's shared state, to observe pools.
    pub ctx: Arc<pgtarn::Context>,
    /// The metrics endpoint, if `metrics_addr` was configured.
    #[allow(dead_code)]
    pub metrics_addr: Option<SocketAddr>,
    trigger: Trigger,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

/// A pgtarn config for `pg` with database `app` (user `app`) using the
/// given `[databases.app]` extra lines and `[pgtarn]` extra lines.
#[allow(dead_code)]
pub fn config(pg: &PgServer, general: &str, database: &str) -> String {
    format!(
        "[pgtarn]\nlisten_addr = \"127.0.0.1:0\"\n{general}\n\
         [databases.app]\nhost = \"127.0.0.1\"\nport = {port}\n{database}\n\
         [users.app]\npassword = \"app-secret\"\n",
        port = pg.port
    )
}

impl Pooler {
    /// Starts pgtarn in front of the shared Postgres with client `trust`
    /// auth and [`config`]'s `general` and `database` extra lines.
    #[allow(dead_code)]
    pub async fn trust(general: &str, database: &str) -> Pooler {
        let general = format!("auth_type = \"trust\"\n{general}");
        Pooler::start(&config(PgServer::shared(), &general, database)).await
    }

    /// Starts pgtarn with the given TOML config.
    pub async fn start(toml: &str) -> Pooler {
        if let Ok(filter) = std::env::var("PGTARN_TEST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_test_writer()
                .try_init();
        }
        let config = pgtarn::config::Config::from_toml(toml).expect("test config is valid");
        let server = pgtarn::Pgtarn::bind(config).await.expect("bind pgtarn");
        let addr = server.local_addr().expect("local addr");
        let ctx = server.context();
        let metrics_addr = server.metrics_addr();
        let (trigger, shutdown) = shutdown::channel();
        let task = tokio::spawn(server.run(shutdown));
        Pooler {
            addr,
            ctx,
            metrics_addr,
            trigger,
            task: Some(task),
        }
    }

    /// A libpq-style connection string for `app` through pgtarn; `extra`
    /// is appended (e.g. `"application_name=x"`).
    pub fn conn_str(&self, extra: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=app password=app-secret dbname=app {extra}",
            self.addr.port()
        )
    }

    /// Connects as `app` through pgtarn; the connection task is spawned.
    pub async fn connect(&self) -> Client {
        self.connect_with("").await
    }

    /// Connects with extra connection-string settings.
    pub async fn connect_with(&self, extra: &str) -> Client {
        self.connect_killable(extra).await.0
    }

    /// Connects and returns the connection task too: aborting it closes
    /// the socket as if the client process died.
    pub async fn connect_killable(&self, extra: &str) -> (Client, JoinHandle<()>) {
        let (client, conn) = tokio_postgres::connect(&self.conn_str(extra), NoTls)
            .await
            .expect("connect through pgtarn");
        let task = tokio::spawn(async move {
            let _ = conn.await;
        });
        (client, task)
    }

    /// The pool for database `app`, user `app` (a client must have logged
    /// in already).
    #[allow(dead_code)]
    pub fn pool(&self) -> Arc<pgtarn::pool::Pool> {
        self.ctx
            .registry
            .find("app", "app")
            .expect("pool app/app exists once a client logged in")
    }

    /// True until pgtarn's `run` has returned.
    #[allow(dead_code)]
    pub fn is_running(&self) -> bool {
        self.task.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Signals shutdown and waits for pgtarn to stop.
    #[allow(dead_code)]
    pub async fn stop(mut self) {
        self.trigger.trigger();
        if let Some(task) = self.task.take() {
            task.await.expect("pgtarn task").expect("pgtarn run");
        }
    }
}

impl Drop for Pooler {
    fn drop(&mut self) {
        self.trigger.trigger();
    }
}
