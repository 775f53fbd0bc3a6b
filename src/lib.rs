//! pgtarn: a PostgreSQL connection pooler.
//!
//! [`Pgtarn::bind`] opens the listener; [`Pgtarn::run`] accepts clients
//! until the shutdown signal. Each client runs in its own task
//! ([`frontend::handle`]); servers come from per-(database, user) pools
//! ([`pool`]).
#![warn(missing_docs)]

pub mod admin;
pub mod auth;
pub mod auth_query;
pub mod backend;
pub mod config;
pub mod frontend;
pub mod listen;
pub mod metrics;
pub mod net;
pub mod pool;
pub mod protocol;
pub mod shutdown;
pub mod stats;
pub mod tls;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use arc_swap::{ArcSwap, ArcSwapOption};
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;
use tracing::info;

use config::Config;
use frontend::cancel::CancelRegistry;
use pool::Registry;
use shutdown::Shutdown;

/// What every client task shares.
#[derive(Debug)]
pub struct Context {
    /// The configuration in force (swapped on reload).
    config: ArcSwap<Config>,
    /// Where the configuration was read from, for `RELOAD` and `SIGHUP`.
    pub config_path: std::sync::Mutex<Option<std::path::PathBuf>>,
    /// The pools.
    pub registry: Registry,
    /// Client cancel keys.
    pub cancels: Arc<CancelRegistry>,
    /// Client connections against `max_client_conn`.
    pub client_slots: Arc<frontend::slots::ClientSlots>,
    /// Held by each configuration change (RELOAD, SIGHUP, console SET), so
    /// that none starts from a configuration another is replacing.
    config_change: std::sync::Mutex<()>,
    /// The rules of `auth_hba_file`, if one is configured.
    hba: ArcSwapOption<auth::hba::Hba>,
    /// pgtarn's TLS identity for clients, unless `tls.client.mode` is
    /// `disable`.
    client_tls: ArcSwapOption<tls::ServerTls>,
    /// Configured users' secrets, prepared at start and on reload.
    users: ArcSwap<Users>,
    /// Users looked up with `auth_query`.
    pub auth_query: auth_query::AuthQuery,
    /// Random per process; salts the mock secrets of unknown users.
    pub mock_nonce: [u8; 32],
    /// Logged-in clients (`SHOW CLIENTS`).
    pub clients: Arc<stats::clients::ConnList>,
    /// Clients still in startup or authentication.
    pub logging_in: AtomicUsize,
    /// Signals shutdown to the accept loop and every session.
    shutdown: shutdown::Trigger,
    /// Set for a fast shutdown: no time for transactions to finish.
    fast_shutdown: std::sync::atomic::AtomicBool,
    /// Wakes a graceful drain in progress when a fast shutdown is asked.
    fast_wake: tokio::sync::Notify,
    /// The shutdown state as the accept loop and sessions see it.
    shutdown_state: Shutdown,
}

/// Configured users by name.
pub type Users = HashMap<String, Arc<frontend::auth::UserAuth>>;

/// The configured users' secrets, prepared. A user whose password is the
/// same as in `old` keeps its prepared secret, and so its SCRAM salt: a
/// reload must not tell real users (whose salt would change) from unknown
/// ones (whose mock salt does not).
fn users_of(config: &Config, old: Option<(&Config, &Users)>) -> Users {
    config
        .users
        .iter()
        .filter_map(|(name, u)| {
            let kept = old.and_then(|(config, users)| {
                let same = config.users.get(name)?.password == u.password;
                same.then(|| users.get(name).cloned()).flatten()
            });
            let prepared = match kept {
                Some(k) => k,
                None => Arc::new(frontend::auth::UserAuth::new(
                    auth::Secret::parse(&u.password).ok()?,
                )),
            };
            Some((name.clone(), prepared))
        })
        .collect()
}

impl Context {
    /// The configuration in force.
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// Configured users.
    pub fn users(&self) -> Arc<Users> {
        self.users.load_full()
    }

    /// pgtarn's TLS identity for clients, if client TLS is on.
    pub fn client_tls(&self) -> Option<Arc<tls::ServerTls>> {
        self.client_tls.load_full()
    }

    /// Re-reads the configuration file and applies it; on any error the
    /// old configuration stays in force and the error is returned.
    pub fn reload(&self) -> Result<(), String> {
        let path = self
            .config_path
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let Some(path) = path else {
            return Err("pgtarn was not started from a configuration file".into());
        };
        let _one_change = self.lock_config_changes();
        let result = Config::load(&path)
            .map_err(|e| e.to_string())
            .and_then(|c| self.apply(c));
        let label = if result.is_ok() { "ok" } else { "error" };
        self.registry
            .metrics
            .reloads
            .with_label_values(&[label])
            .inc();
        match &result {
            Ok(()) => info!(path = %path.display(), "configuration reloaded"),
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "reload failed; the old configuration stays in force")
            }
        }
        result
    }

    /// Serializes configuration changes: hold the guard from reading the
    /// configuration in force to applying the new one.
    pub fn lock_config_changes(&self) -> std::sync::MutexGuard<'_, ()> {
        self.config_change.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies a new, already validated configuration: users, passwords,
    /// pool sizes, timeouts, TLS certificates and databases change without
    /// dropping connected clients. `listen_addr`, `metrics_addr` and
    /// `workers` need a restart.
    pub fn apply(&self, new: Config) -> Result<(), String> {
        new.validate().map_err(|e| e.to_string())?;
        let client_tls = client_tls(&new.tls.client).map_err(|e| e.to_string())?;
        let hba = load_hba(&new.pgtarn)?;
        let new = Arc::new(new);
        let users = users_of(&new, Some((&self.config(), &self.users())));
        let secret_of = |user: &str| users.get(user).map(|u| u.secret.clone());
        self.registry
            .apply(new.clone(), secret_of)
            .map_err(|e| e.to_string())?;
        self.client_slots.set_limit(new.pgtarn.max_client_conn);
        self.client_tls.store(client_tls.map(Arc::new));
        self.hba.store(hba.map(Arc::new));
        self.users.store(Arc::new(users));
        self.config.store(new);
        Ok(())
    }

    /// How to authenticate a client: `configured` (the database's or
    /// `[pgtarn]`'s `auth_type`), or with `hba` the method of the first
    /// `auth_hba_file` rule that matches; an error when the file refuses
    /// the connection.
    pub fn auth_method(
        &self,
        configured: config::AuthType,
        c: &auth::hba::Connection<'_>,
    ) -> Result<config::AuthType, frontend::error::ClientError> {
        if configured != config::AuthType::Hba {
            return Ok(configured);
        }
        let rule = self.hba.load().as_ref().and_then(|h| h.method(c));
        match rule {
            Some(auth::hba::Method::Auth(method)) => Ok(method),
            refused => Err(frontend::error::ClientError::HbaRefused {
                rejected: refused.is_some(),
                host: c.addr.map_or("[local]".into(), |a| a.to_string()),
                user: c.user.to_owned(),
                database: c.database.to_owned(),
                tls: c.tls,
            }),
        }
    }

    /// Starts a graceful shutdown (admin `SHUTDOWN`, `SIGTERM`): running
    /// transactions get `shutdown_timeout` to finish.
    pub fn request_shutdown(&self) {
        self.shutdown.trigger();
    }

    /// Starts a shutdown that waits for the clients (admin `SHUTDOWN
    /// WAIT_FOR_CLIENTS`, as in PgBouncer): pgtarn stops accepting,
    /// serves its connected clients as before and exits once the last has
    /// left. A graceful or fast shutdown asked for meanwhile takes over.
    pub fn request_shutdown_after_clients(&self) {
        self.shutdown.close_listener();
    }

    /// True once `SHUTDOWN WAIT_FOR_CLIENTS` (or a shutdown) has been
    /// asked for: new clients are refused (`/readyz` says not ready).
    pub fn is_closing_listener(&self) -> bool {
        self.shutdown_state.is_closing()
    }

    /// Starts a fast shutdown (`SIGINT`): every client is disconnected
    /// with 57P01 at once.
    pub fn request_fast_shutdown(&self) {
        self.fast_shutdown.store(true, Ordering::SeqCst);
        self.fast_wake.notify_one();
        self.shutdown.trigger();
    }

    /// Disconnects every client of `database` (admin `KILL`).
    pub fn kill_clients(&self, database: &str) {
        for c in self.clients.snapshot() {
            if c.facts.database == database {
                c.kill(stats::clients::KillReason::Admin);
            }
        }
    }

    /// Disconnects the client with this id (`KILL_CLIENT`); false if there
    /// is none.
    pub fn kill_client(&self, id: u64) -> bool {
        let clients = self.clients.snapshot();
        let found = clients.iter().find(|c| c.id == id);
        found
            .inspect(|c| c.kill(stats::clients::KillReason::Admin))
            .is_some()
    }

    /// Completes once a fast shutdown has been asked for.
    async fn fast_requested(&self) {
        if !self.fast_shutdown.load(Ordering::SeqCst) {
            self.fast_wake.notified().await;
        }
    }

    /// Counts a client as logging in until the returned guard drops.
    pub fn count_login(&self) -> LoggingIn<'_> {
        self.logging_in.fetch_add(1, Ordering::Relaxed);
        LoggingIn(&self.logging_in)
    }
}

/// A client counted in [`Context::logging_in`].
#[derive(Debug)]
pub struct LoggingIn<'a>(&'a AtomicUsize);

impl Drop for LoggingIn<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A bound, not yet running, pgtarn.
#[derive(Debug)]
pub struct Pgtarn {
    internal: Shutdown,
    listener: listen::Listeners,
    metrics: Option<TcpListener>,
    ctx: Arc<Context>,
}

impl Pgtarn {
    /// Binds `config.pgtarn.listen_addr` (port 0 picks a free port) and
    /// `unix_socket_dir`'s socket, and loads TLS certificates; errors name
    /// the address or file.
    pub async fn bind(config: Config) -> std::io::Result<Pgtarn> {
        tls::install_crypto_provider();
        let config = Arc::new(config);
        let client_tls = client_tls(&config.tls.client).map_err(std::io::Error::other)?;
        let hba = load_hba(&config.pgtarn).map_err(std::io::Error::other)?;
        let metrics = stats::Metrics::new();
        let registry = Registry::new(config.clone(), metrics).map_err(std::io::Error::other)?;
        let g = &config.pgtarn;
        let unix_dir = g.unix_socket_dir.as_deref();
        let keepalive = g.keepalive();
        let listener = listen::Listeners::bind(g.listen_addr, g.so_reuseport, unix_dir, keepalive)?;
        let metrics = match config.pgtarn.metrics_addr {
            Some(addr) => Some(TcpListener::bind(addr).await?),
            None => None,
        };
        let users = users_of(&config, None);
        let (trigger, internal) = shutdown::channel();
        let ctx = Context {
            registry,
            client_tls: ArcSwapOption::from(client_tls.map(Arc::new)),
            hba: ArcSwapOption::from(hba.map(Arc::new)),
            config_change: Default::default(),
            config_path: Default::default(),
            shutdown: trigger,
            fast_shutdown: Default::default(),
            fast_wake: Default::default(),
            shutdown_state: internal.clone(),
            cancels: Arc::default(),
            client_slots: frontend::slots::ClientSlots::new(config.pgtarn.max_client_conn),
            users: ArcSwap::from_pointee(users),
            auth_query: Default::default(),
            mock_nonce: rand::random(),
            clients: stats::clients::ConnList::new(1),
            logging_in: AtomicUsize::new(0),
            config: ArcSwap::new(config),
        };
        Ok(Pgtarn {
            internal,
            listener,
            metrics,
            ctx: Arc::new(ctx),
        })
    }

    /// The address clients connect to.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The Unix-domain socket's path, if `unix_socket_dir` is set.
    pub fn unix_path(&self) -> Option<&std::path::Path> {
        self.listener.unix_path()
    }

    /// The metrics endpoint's address, if `metrics_addr` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref()?.local_addr().ok()
    }

    /// The shared state (pools, settings), for inspection.
    pub fn context(&self) -> Arc<Context> {
        self.ctx.clone()
    }

    /// Accepts clients until `shutdown`, then lets sessions finish (up to
    /// a deadline) and closes the pools.
    pub async fn run(self, mut external: Shutdown) -> std::io::Result<()> {
        match self.unix_path() {
            Some(path) => {
                let path = path.display();
                info!(addr = %self.local_addr()?, unix = %path, "pgtarn listening");
            }
            None => info!(addr = %self.local_addr()?, "pgtarn listening"),
        }
        let shutdown = self.internal.clone();
        if let Some(l) = self.metrics {
            tokio::spawn(metrics::serve(l, self.ctx.clone(), shutdown.clone()));
        }
        tokio::spawn(stats::period::run(self.ctx.clone(), shutdown.clone()));
        // The client tasks, counted (not joined) so that shutdown can wait
        // for them: reaping each finished task through a JoinSet cost ~2,400
        // instructions per login.
        let clients = TaskTracker::new();
        // Made once: building the shutdown futures at every accept cost
        // ~1,800 instructions per login.
        // `SHUTDOWN WAIT_FOR_CLIENTS` comes on the same channel: one
        // future fewer to poll at every accept than a separate signal.
        let mut stop = shutdown.clone();
        let mut outside = external.clone();
        let stopped = async move {
            tokio::select! {
                _ = stop.wait_closing() => {}
                _ = outside.wait() => {}
            }
        };
        let mut stopped = std::pin::pin!(stopped);
        loop {
            let accepted = tokio::select! {
                _ = stopped.as_mut() => break,
                accepted = self.listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    info!(error = %e, "accept failed");
                    continue;
                }
            };
            // Boxed: spawning moves the future several times on its way
            // into the task, a pointer is cheaper to move than the
            // client's state machine (~1,000 instructions per login).
            let client = frontend::handle(stream, peer, self.ctx.clone(), shutdown.clone());
            clients.spawn(Box::pin(client));
        }
        if !shutdown.is_triggered() && !external.is_triggered() {
            info!(
                clients = clients.len(),
                "SHUTDOWN WAIT_FOR_CLIENTS: no new clients; exiting once every client has left"
            );
            // TCP closes; the Unix-domain socket stays for the console
            // (other clients are refused there), as in PgBouncer.
            let unix = self.listener.into_unix();
            clients.close();
            let mut stop = shutdown.clone();
            loop {
                let accepted = tokio::select! {
                    () = clients.wait() => break,
                    _ = stop.wait() => break,
                    _ = external.wait() => break,
                    a = async {
                        match &unix {
                            Some(u) => u.accept().await.ok(),
                            None => std::future::pending().await,
                        }
                    } => a,
                };
                if let Some((stream, peer)) = accepted {
                    let client = frontend::handle(stream, peer, self.ctx.clone(), shutdown.clone());
                    clients.spawn(Box::pin(client));
                }
            }
        } else {
            drop(self.listener);
        }
        self.ctx.shutdown.trigger();
        info!(clients = clients.len(), "shutting down");
        // Idle clients end now, the others at the end of their transaction.
        for c in self.ctx.clients.snapshot() {
            c.kill(stats::clients::KillReason::Drain);
        }
        clients.close();
        // A fast shutdown asked for during the drain cuts it short.
        let drain = self.ctx.config().pgtarn.shutdown_timeout;
        let finished = tokio::select! {
            done = drained(&clients, drain) => done,
            () = self.ctx.fast_requested() => false,
        };
        if !finished {
            info!(
                clients = clients.len(),
                "shutdown_timeout passed or fast shutdown: disconnecting the remaining clients"
            );
            for c in self.ctx.clients.snapshot() {
                c.kill(stats::clients::KillReason::Shutdown);
            }
            drained(&clients, FAREWELL_TIME).await;
        }
        self.ctx.registry.close_all();
        Ok(())
    }
}

/// How long disconnected clients get to receive their 57P01.
const FAREWELL_TIME: std::time::Duration = std::time::Duration::from_secs(2);

/// Waits up to `limit` for every client task to end; true if they did.
async fn drained(clients: &TaskTracker, limit: std::time::Duration) -> bool {
    tokio::time::timeout(limit, clients.wait()).await.is_ok()
}

/// Reads and parses `auth_hba_file`, if set.
fn load_hba(g: &config::General) -> Result<Option<auth::hba::Hba>, String> {
    let Some(path) = &g.auth_hba_file else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("auth_hba_file {}: {e}", path.display()))?;
    let hba = auth::hba::Hba::parse(&text)
        .map_err(|e| format!("auth_hba_file {}: {e}", path.display()))?;
    Ok(Some(hba))
}

fn client_tls(c: &config::tls::ClientTls) -> Result<Option<tls::ServerTls>, tls::TlsError> {
    match (c.mode, &c.cert, &c.key) {
        (config::ClientTlsMode::Disable, _, _) => Ok(None),
        (_, Some(cert), Some(key)) => tls::server_tls(cert, key, c.ca.as_deref()).map(Some),
        _ => Ok(None),
    }
}

/// Binds and runs pgtarn with `config` until `shutdown`.
pub async fn run(config: Config, shutdown: Shutdown) -> std::io::Result<()> {
    Pgtarn::bind(config).await?.run(shutdown).await
}
