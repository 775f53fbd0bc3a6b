//! The deadpool [`Manager`](managed::Manager) for server connections.
//!
//! deadpool calls `recycle` at every checkout, so it is a cheap state check
//! (idle, not past `server_lifetime`, peer still there); resets happen on
//! release, before a connection is returned.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use arc_swap::ArcSwap;

use deadpool::managed::{self, Metrics, RecycleError, RecycleResult};
use tracing::info;

use super::PoolSettings;
use crate::backend::{BackendError, ServerConn, Target};
use crate::stats::PoolStats;
use crate::stats::clients::{ConnList, ConnState, NewConn};

/// Creates and checks server connections for one pool.
#[derive(Debug)]
pub struct Manager {
    target: Target,
    settings: Arc<ArcSwap<PoolSettings>>,
    /// Connections created before this instant are closed at their next
    /// checkout (admin `RECONNECT`).
    retire_before: Mutex<Option<Instant>>,
    /// The ParameterStatus set of the first server connection.
    pub(super) defaults: OnceLock<Vec<(String, String)>>,
    /// The pool's statistics.
    pub(super) stats: Arc<PoolStats>,
    /// Where server connections are listed (`SHOW SERVERS`).
    pub(super) servers: Arc<ConnList>,
    /// The database name clients use, for the list.
    pub(super) database: String,
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
    ) -> Self {
        Manager {
            target,
            settings,
            retire_before: Mutex::new(None),
            defaults: OnceLock::new(),
            stats,
            servers,
            database,
        }
    }

    async fn connect(&self, id: u64) -> Result<ServerConn, BackendError> {
        self.stats.connecting.fetch_add(1, Ordering::Relaxed);
        let connect = ServerConn::connect(&self.target, id);
        let limit = self.settings.load().connect_timeout;
        let result = tokio::time::timeout(limit, connect).await;
        self.stats.connecting.fetch_sub(1, Ordering::Relaxed);
        let result = result.map_err(|_| BackendError::Timeout(limit))?;
        match &result {
            Ok(conn) if conn.is_tls() => self.stats.server_tls(true),
            Err(BackendError::Tls(_)) => self.stats.server_tls(false),
            _ => {}
        }
        result
    }

    /// Whether a connection is past `server_lifetime` or older than a
    /// `RECONNECT`.
    pub fn expired(&self, metrics: &Metrics) -> bool {
        let retired = self.retire_before.lock().unwrap_or_else(|p| p.into_inner());
        metrics.age() >= self.settings.load().lifetime
            || retired.is_some_and(|t| metrics.created < t)
    }

    /// Closes connections created before `t` at their next checkout.
    pub fn retire_older_than(&self, t: Instant) {
        *self.retire_before.lock().unwrap_or_else(|p| p.into_inner()) = Some(t);
    }
}

impl managed::Manager for Manager {
    type Type = ServerConn;
    type Error = BackendError;

    async fn create(&self) -> Result<ServerConn, BackendError> {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let mut conn = self.connect(id).await?;
        info!(server = id, target = ?self.target, "server connection opened");
        self.stats.opened.inc();
        let listed = self.servers.add(
            NewConn {
                user: self.target.user.clone(),
                database: self.database.clone(),
                peer: Some(conn.addr()),
                tls: conn.is_tls(),
                ..Default::default()
            },
            ConnState::Idle,
        );
        listed.set_remote_pid(conn.backend_pid());
        conn.listed = Some(listed);
        self.defaults.get_or_init(|| conn.login_params().to_vec());
        Ok(conn)
    }

    async fn recycle(
        &self,
        conn: &mut ServerConn,
        metrics: &Metrics,
    ) -> RecycleResult<BackendError> {
        let reason = if self.expired(metrics) {
            "server_lifetime reached"
        } else if !conn.is_reusable() {
            "closed by the server or not idle"
        } else {
            return Ok(());
        };
        info!(server = conn.id(), reason, "server connection closed");
        self.stats.server_closed(reason);
        Err(RecycleError::message(reason))
    }
}
