//! Cancel requests: each client gets its own BackendKeyData from pgtarn; a
//! CancelRequest carrying it is forwarded, with the server's own key, to
//! the server running that client's query at that moment. Unknown keys
//! are ignored, as Postgres does.
//!
//! A request is counted in flight for its server from the lookup (under
//! the client's slot lock, which a release takes to clear the slot before
//! the server is handed back) until Postgres has closed the cancel
//! connection; meanwhile the server is kept out of the pool (see
//! [`crate::backend::cancel`]), so a late cancel never reaches another
//! client's query.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::{debug, info};

use crate::backend::BackendError;
use crate::backend::cancel::{Delivery, InFlightGuard};
use crate::protocol::startup::CancelKey;

pub use crate::backend::CancelTarget;

/// One client's current cancel target, updated as servers come and go.
#[derive(Debug, Default)]
pub struct CancelSlot(Mutex<Option<Arc<CancelTarget>>>);

impl CancelSlot {
    /// Records the server now serving the client (or `None`). The slot
    /// must be cleared before that server is released: a cancel looked up
    /// before is then counted in flight in time to keep it out of the pool.
    pub fn set(&self, target: Option<Arc<CancelTarget>>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = target;
    }

    /// Starts a cancel for the server serving the client, if any, counting
    /// it in flight under the slot's lock.
    fn begin(&self) -> Option<PendingCancel> {
        let slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
        slot.as_ref().map(PendingCancel::begin)
    }
}

/// A cancel request counted in flight for its server, not yet sent.
#[derive(Debug)]
pub struct PendingCancel {
    target: Arc<CancelTarget>,
    guard: InFlightGuard,
}

impl PendingCancel {
    /// Counts a cancel for `target`'s server in flight. The caller holds
    /// that server (or the lock its release takes first).
    pub fn begin(target: &Arc<CancelTarget>) -> Self {
        PendingCancel {
            target: target.clone(),
            guard: target.in_flight.begin(),
        }
    }

    /// Delivers the request, giving up after `limit`, then lets the server
    /// go back to its pool (or be closed, if the outcome is unknown).
    pub async fn send(self, limit: Duration) {
        let target = &self.target;
        let delivery = match target.deliver(limit).await {
            Ok(()) => Delivery::Delivered,
            Err((d, BackendError::Timeout(_))) => {
                info!(server = %target.addr, "cancel request not delivered within cancel_wait_timeout");
                d
            }
            Err((d, e)) => {
                debug!(error = %e, "forwarding cancel request failed");
                d
            }
        };
        if delivery == Delivery::Unconfirmed {
            info!(server = %target.addr, "cancel request unconfirmed: its server connection will be closed");
        }
        self.guard.done(delivery);
    }
}

/// Every connected client's key, by pid.
#[derive(Debug, Default)]
pub struct CancelRegistry {
    clients: Mutex<HashMap<i32, (i32, Arc<CancelSlot>)>>,
}

/// A client's registration; unregisters on drop.
#[derive(Debug)]
pub struct Registration {
    registry: Arc<CancelRegistry>,
    /// The key the client was given.
    pub key: CancelKey,
    /// Where its query runs now.
    pub slot: Arc<CancelSlot>,
}

impl CancelRegistry {
    /// Gives a client a fresh, unique key.
    pub fn register(self: &Arc<Self>) -> Registration {
        let slot = Arc::new(CancelSlot::default());
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        let key = loop {
            let key = CancelKey {
                pid: rand::random::<i32>() & i32::MAX,
                secret: rand::random(),
            };
            if key.pid != 0 && !clients.contains_key(&key.pid) {
                break key;
            }
        };
        clients.insert(key.pid, (key.secret, slot.clone()));
        Registration {
            registry: self.clone(),
            key,
            slot,
        }
    }

    fn lookup(&self, key: CancelKey) -> Option<PendingCancel> {
        let clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        let (secret, slot) = clients.get(&key.pid)?;
        (*secret == key.secret).then(|| slot.begin()).flatten()
    }

    /// Forwards a cancel request for `key`, if it names a client whose
    /// query is running; otherwise does nothing. Delivery is abandoned
    /// after `limit` (`cancel_wait_timeout`).
    pub async fn cancel(&self, key: CancelKey, limit: Duration) {
        let Some(pending) = self.lookup(key) else {
            debug!("cancel request for an unknown or idle client ignored");
            return;
        };
        pending.send(limit).await;
    }
}

/// Cancels the query running on a server its caller holds (`query_timeout`):
/// counts the request in flight now, before returning, and delivers it in
/// a task, giving up after `limit`. The server cannot go back to the pool
/// until the request is done.
pub fn spawn_cancel(target: &Arc<CancelTarget>, limit: Duration) {
    let pending = PendingCancel::begin(target);
    tokio::spawn(pending.send(limit));
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut clients = self
            .registry
            .clients
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        clients.remove(&self.key.pid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_needs_the_right_secret_and_a_running_query() {
        let reg = Arc::new(CancelRegistry::default());
        let r = reg.register();
        assert!(
            reg.lookup(r.key).is_none(),
            "idle client: nothing to cancel"
        );
        let server_key = CancelKey { pid: 1, secret: 2 };
        let target = Arc::new(CancelTarget {
            addr: crate::backend::ServerAddr::Tcp(([127, 0, 0, 1], 5432).into()),
            host: "127.0.0.1".into(),
            key: server_key,
            tls: None,
            in_flight: Arc::default(),
        });
        r.slot.set(Some(target.clone()));
        let pending = reg.lookup(r.key).expect("a running query");
        assert_eq!(pending.target.key, server_key);
        assert!(target.in_flight.busy(), "counted in flight from the lookup");
        drop(pending);
        let wrong = CancelKey {
            secret: r.key.secret.wrapping_add(1),
            ..r.key
        };
        assert!(reg.lookup(wrong).is_none());
        let key = r.key;
        drop(r);
        assert!(reg.lookup(key).is_none(), "unregistered on drop");
    }
}
