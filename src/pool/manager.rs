//! The deadpool [`Manager`](managed::Manager) for server connections.
//!
//! deadpool calls `recycle` at every checkout, so it is a cheap state check
//! (idle, not past `server_lifetime` or a `RECONNECT`, peer still there)
//! plus, for a connection idle at least `server_check_delay`, one
//! `server_check_query` round trip; resets happen on release, before a
//! connection is returned. A connection that fails any of these is closed
//! and deadpool tries the next idle one or opens a new one, so the client
//! never sees it.
//!
//! `create` opens connections under `server_connect_timeout` and, after a
//! failure, repeats that failure for `server_login_retry` instead of
//! connecting again (see [`super::health`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use arc_swap::ArcSwap;
use deadpool::managed::{self, Metrics, RecycleError, RecycleResult};
use tracing::{info, warn};

use super::PoolSettings;
use super::health::{self, LoginRetry};
use crate::backend::limit::{self, DbLimit};
use crate::backend::{BackendError, ConnectFailure, ServerConn, Target};
use crate::stats::clients::{ConnList, ConnState, NewConn};
use crate::stats::{CloseReason, PoolStats};

/// Creates and checks server connections for one pool.
#[derive(Debug)]
pub struct Manager {
    /// Where connections go (swapped on reload).
    target: ArcSwap<Target>,
    settings: Arc<ArcSwap<PoolSettings>>,
    /// Connections created before this instant are closed at their next
    /// checkout (admin `RECONNECT`).
    /// ([`crate::stats::now_ns`]; 0 = none).
    /// Shared with the listed connections
    /// ([`crate::stats::clients::ConnInfo::close_needed`]).
    retire_before: Arc<AtomicU64>,
    login_retry: LoginRetry,
    /// Set while the pool holds more connections than a reduced
    /// `pool_size`: released connections are then closed (and counted).
    pub(super) shrinking: std::sync::atomic::AtomicBool,
    /// The ParameterStatus set of the first server connection.
    /// (Learned anew after a reload moved the pool to another upstream.)
    pub(super) defaults: arc_swap::ArcSwapOption<Vec<(String, String)>>,
    /// The pool's statistics.
    pub(super) stats: Arc<PoolStats>,
    /// Where server connections are listed (`SHOW SERVERS`).
    pub(super) servers: Arc<ConnList>,
    /// The database name clients use, for the list and error messages.
    pub(super) database: String,
    /// The database's `max_db_connections` count, shared by its pools.
    pub(super) db_limit: Arc<DbLimit>,
    /// The user's `max_user_connections` count, shared by its pools.
    pub(super) user_limit: Arc<DbLimit>,
}

/// Server connection ids, unique in the process.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl Manager {
    /// A manager connecting to `target`, recording into `stats` and
    /// listing its connections in `servers`.
    pub fn new(
        target: Target,
        settings: Arc<ArcSwap<PoolSettings>>,
        stats: Arc<PoolStats>,
        servers: Arc<ConnList>,
        database: String,
        (db_limit, user_limit): (Arc<DbLimit>, Arc<DbLimit>),
    ) -> Self {
        Manager {
            target: ArcSwap::from_pointee(target),
            settings,
            retire_before: Arc::default(),
            login_retry: LoginRetry::default(),
            shrinking: Default::default(),
            defaults: Default::default(),
            stats,
            servers,
            database,
            db_limit,
            user_limit,
        }
    }

    /// Connects and logs in within `server_connect_timeout`; with several
    /// hosts, each is given that long in turn until one logs in (a host
    /// that refuses, hangs or fails the login is skipped, as PgBouncer
    /// moves on to the next host after a failed connection).
    async fn connect(&self, id: u64) -> Result<ServerConn, BackendError> {
        // Counted until this future ends or is dropped (a client whose
        // login timed out abandons the connect).
        let _connecting = Connecting::count(&self.stats);
        let target = self.target.load_full();
        let hosts = target.hosts();
        let mut result = Err(BackendError::Io(std::io::Error::other(
            "no host configured",
        )));
        for (i, host) in hosts.iter().enumerate() {
            result = self.connect_host(&target, host, id).await;
            match &result {
                Err(e) if i + 1 < hosts.len() => {
                    info!(%host, error = %e, "cannot connect to this host, trying the next");
                }
                _ => break,
            }
        }
        match &result {
            Ok(conn) if conn.is_tls() => self.stats.server_tls(true),
            Err(BackendError::Tls(_)) => self.stats.server_tls(false),
            _ => {}
        }
        result
    }

    /// Connects and logs in to one host within `server_connect_timeout`.
    async fn connect_host(
        &self,
        target: &Arc<Target>,
        host: &str,
        id: u64,
    ) -> Result<ServerConn, BackendError> {
        let query = self.settings.load().connect_query.clone();
        let connect = async move {
            let mut conn = ServerConn::connect(target, host, id).await?;
            if let Some(sql) = query {
                conn.run_connect_query(&sql).await?;
            }
            Ok(conn)
        };
        let limit = self.settings.load().connect_timeout;
        let result = tokio::time::timeout(limit, connect).await;
        result.map_err(|_| BackendError::Timeout(limit))?
    }

    /// Why a connection must close before reuse as of `now`, if it must.
    pub fn expiry(
        &self,
        conn: &ServerConn,
        metrics: &Metrics,
        now: Instant,
    ) -> Option<CloseReason> {
        let age = now.saturating_duration_since(metrics.created);
        let retired = match &conn.listed {
            // As `SHOW SERVERS` and `WAIT_CLOSE` judge it.
            Some(listed) => listed.close_needed(),
            None => {
                let retire = self.retire_before.load(Ordering::Relaxed);
                let since = crate::stats::ns_at(now).saturating_sub(retire);
                retire != 0 && since <= age.as_nanos() as u64
            }
        };
        if retired {
            Some(CloseReason::Reconnect)
        } else if age >= self.settings.load().lifetime {
            Some(CloseReason::Lifetime)
        } else {
            None
        }
    }

    /// The upstream new connections go to.
    pub fn target(&self) -> Arc<Target> {
        self.target.load_full()
    }

    /// Sends new connections to `target` (a reload); forgets a failed
    /// login to the old one.
    pub fn set_target(&self, target: Target) {
        self.target.store(Arc::new(target));
        self.login_retry.succeeded();
    }

    /// Forgets the servers' ParameterStatus set, to learn it from the next
    /// connection (the upstream changed).
    pub fn forget_defaults(&self) {
        self.defaults.store(None);
    }

    /// Closes every connection that exists now at its next checkout.
    pub fn retire_existing(&self) {
        self.retire_before
            .store(crate::stats::now_ns().max(1), Ordering::Relaxed);
    }

    fn list(&self, conn: &mut ServerConn, connect_began_ns: u64) {
        let listed = self.servers.add(
            NewConn {
                user: self.target.load().user.clone(),
                database: self.database.clone(),
                peer: conn.addr().tcp(),
                tls: conn.is_tls(),
                retire_before: Some(self.retire_before.clone()),
                connect_began_ns: Some(connect_began_ns),
                ..Default::default()
            },
            ConnState::Idle,
        );
        listed.set_remote_pid(conn.backend_pid());
        conn.listed = Some(listed);
    }
}

impl managed::Manager for Manager {
    /// Boxed, so that deadpool moves a pointer, not the whole connection,
    /// in and out of its queue at every checkout and return.
    type Type = Box<ServerConn>;
    type Error = BackendError;

    async fn create(&self) -> Result<Box<ServerConn>, BackendError> {
        let retry = self.settings.load().health.login_retry;
        if let Some(failure) = self.login_retry.cached(retry) {
            return Err(BackendError::Connect(failure));
        }
        let wait = self.settings.load().wait_timeout;
        let (slot, user_slot) = match limit::take_both(&self.db_limit, &self.user_limit, wait).await
        {
            Ok(slots) => slots,
            Err(limit::Full::Database) => return Err(BackendError::DatabaseFull),
            Err(limit::Full::User) => return Err(BackendError::UserFull),
        };
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let began = crate::stats::now_ns();
        // Boxed: connecting and logging in (every host in turn, each with
        // its timer, and the connection being built) is a large future,
        // and it would otherwise be part of every client task's state
        // (checkout awaits this), costing memory for every idle client
        // (benches/compare.sh idle10k: 48 MiB boxed, 62-69 MiB not).
        let mut conn = match Box::pin(self.connect(id)).await {
            Ok(conn) => conn,
            Err(e) => {
                let failure = ConnectFailure::new(&self.database, &e);
                warn!(target = ?**self.target.load(), error = %failure, "server login failed");
                self.login_retry.failed(&failure, retry);
                return Err(BackendError::Connect(failure));
            }
        };
        self.login_retry.succeeded();
        info!(server = id, target = ?**self.target.load(), "server connection opened");
        self.stats.opened.inc();
        self.list(&mut conn, began);
        conn.db_slot = Some(slot);
        conn.user_slot = Some(user_slot);
        if self.defaults.load().is_none() {
            self.defaults
                .store(Some(Arc::new(conn.login_params().to_vec())));
        }
        Ok(Box::new(conn))
    }

    async fn recycle(
        &self,
        conn: &mut Box<ServerConn>,
        metrics: &Metrics,
    ) -> RecycleResult<BackendError> {
        let settings = self.settings.load();
        let now = Instant::now();
        let (reason, detail) = if let Some(why) = self.expiry(conn, metrics, now) {
            (why, None)
        } else if !conn.is_reusable() {
            (CloseReason::Broken, None)
        } else if !settings.health.needs_check(conn.idle_since, now) {
            return Ok(());
        } else {
            let (query, limit) = (&settings.health.check_query, settings.connect_timeout);
            // Boxed: the check is rare, and its state would otherwise be
            // part of every checkout future (so of every client's task).
            match Box::pin(health::check(conn, query, limit)).await {
                Ok(()) => return Ok(()),
                Err(why) => (CloseReason::CheckFailed, Some(why)),
            }
        };
        let detail = detail.unwrap_or_else(|| reason.text().to_owned());
        info!(server = conn.id(), reason = %detail, "server connection closed");
        self.stats.server_closed(reason);
        Err(RecycleError::message(detail))
    }
}

/// A server connection being opened, counted in `sv_login` until dropped.
struct Connecting<'a>(&'a PoolStats);

impl<'a> Connecting<'a> {
    fn count(stats: &'a PoolStats) -> Self {
        stats.connecting.fetch_add(1, Ordering::Relaxed);
        Connecting(stats)
    }
}

impl Drop for Connecting<'_> {
    fn drop(&mut self) {
        self.0.connecting.fetch_sub(1, Ordering::Relaxed);
    }
}
