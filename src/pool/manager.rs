//! The deadpool [`Manager`](managed::Manager) for server connections.
//!
//! deadpool calls `recycle` at every checkout, so it is a cheap state check
//! (idle, not past `server_lifetime`, peer still there) plus, for a
//! connection idle at least `server_check_delay`, one `server_check_query`
//! round trip; resets happen on release, before a connection is returned.
//! A connection that fails any of these is closed and deadpool tries the
//! next idle one or opens a new one, so the client never sees it.
//!
//! `create` opens connections under `server_connect_timeout` and, after a
//! failure, repeats that failure for `server_login_retry` instead of
//! connecting again (see [`super::health`]).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use deadpool::managed::{self, Metrics, RecycleError, RecycleResult};
use tracing::{info, warn};

use super::health::{self, HealthSettings, LoginRetry};
use super::{PoolKey, PoolSettings};
use crate::backend::{BackendError, ConnectFailure, ServerConn, Target};

/// Creates and checks server connections for one pool.
#[derive(Debug)]
pub struct Manager {
    target: Target,
    /// The database as clients name it, for error messages.
    database: String,
    lifetime: Duration,
    connect_timeout: Duration,
    health: HealthSettings,
    login_retry: LoginRetry,
    /// The ParameterStatus set of the first server connection.
    pub(super) defaults: OnceLock<Vec<(String, String)>>,
}

/// Server connection ids, unique in the process.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl Manager {
    /// A manager connecting to `target` for the pool `key`.
    pub fn new(target: Target, key: &PoolKey, settings: &PoolSettings) -> Self {
        Manager {
            target,
            database: key.database.clone(),
            lifetime: settings.lifetime,
            connect_timeout: settings.connect_timeout,
            health: settings.health.clone(),
            login_retry: LoginRetry::default(),
            defaults: OnceLock::new(),
        }
    }

    /// Whether a connection is past `server_lifetime`.
    pub fn expired(&self, metrics: &Metrics) -> bool {
        metrics.age() >= self.lifetime
    }

    /// Connects and logs in within `server_connect_timeout`.
    async fn connect(&self, id: u64) -> Result<ServerConn, BackendError> {
        let connect = ServerConn::connect(&self.target, id);
        tokio::time::timeout(self.connect_timeout, connect)
            .await
            .map_err(|_| BackendError::Timeout(self.connect_timeout))?
    }
}

impl managed::Manager for Manager {
    type Type = ServerConn;
    type Error = BackendError;

    async fn create(&self) -> Result<ServerConn, BackendError> {
        let retry = self.health.login_retry;
        if let Some(failure) = self.login_retry.cached(retry) {
            return Err(BackendError::Connect(failure));
        }
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let conn = match self.connect(id).await {
            Ok(conn) => conn,
            Err(e) => {
                let failure = ConnectFailure::new(&self.database, &e);
                warn!(target = ?self.target, error = %failure, "server login failed");
                self.login_retry.failed(&failure, retry);
                return Err(BackendError::Connect(failure));
            }
        };
        self.login_retry.succeeded();
        info!(server = id, target = ?self.target, "server connection opened");
        self.defaults.get_or_init(|| conn.login_params().to_vec());
        Ok(conn)
    }

    async fn recycle(
        &self,
        conn: &mut ServerConn,
        metrics: &Metrics,
    ) -> RecycleResult<BackendError> {
        let reason = if self.expired(metrics) {
            "server_lifetime reached".to_owned()
        } else if !conn.is_reusable() {
            "closed by the server or not idle".to_owned()
        } else if !self.health.needs_check(conn.idle_since) {
            return Ok(());
        } else {
            let query = &self.health.check_query;
            match health::check(conn, query, self.connect_timeout).await {
                Ok(()) => return Ok(()),
                Err(why) => why,
            }
        };
        info!(server = conn.id(), reason = %reason, "server connection closed");
        Err(RecycleError::message(reason))
    }
}
