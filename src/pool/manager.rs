//! The deadpool [`Manager`](managed::Manager) for server connections.
//!
//! deadpool calls `recycle` at every checkout, so it is a cheap state check
//! (idle, not past `server_lifetime`, peer still there); resets happen on
//! release, before a connection is returned.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use deadpool::managed::{self, Metrics, RecycleError, RecycleResult};
use tracing::info;

use crate::backend::{BackendError, ServerConn, Target};

/// Creates and checks server connections for one pool.
#[derive(Debug)]
pub struct Manager {
    target: Target,
    lifetime: Duration,
    connect_timeout: Duration,
    /// The ParameterStatus set of the first server connection.
    pub(super) defaults: OnceLock<Arc<Vec<(String, String)>>>,
}

/// Server connection ids, unique in the process.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl Manager {
    /// A manager connecting to `target`.
    pub fn new(target: Target, lifetime: Duration, connect_timeout: Duration) -> Self {
        Manager {
            target,
            lifetime,
            connect_timeout,
            defaults: OnceLock::new(),
        }
    }

    /// Whether a connection is past `server_lifetime`.
    pub fn expired(&self, metrics: &Metrics) -> bool {
        metrics.age() >= self.lifetime
    }
}

impl managed::Manager for Manager {
    type Type = ServerConn;
    type Error = BackendError;

    async fn create(&self) -> Result<ServerConn, BackendError> {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        // Boxed: connecting and logging in is a large future, and it would
        // otherwise be part of every client task's state (checkout awaits
        // this), costing memory for every idle client.
        let connect = Box::pin(ServerConn::connect(&self.target, id));
        let conn = tokio::time::timeout(self.connect_timeout, connect)
            .await
            .map_err(|_| BackendError::Timeout(self.connect_timeout))??;
        info!(server = id, target = ?self.target, "server connection opened");
        self.defaults
            .get_or_init(|| Arc::new(conn.login_params().to_vec()));
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
        Err(RecycleError::message(reason))
    }
}
