//! Cancel requests: each client gets its own BackendKeyData from pgtarn; a
//! CancelRequest carrying it is forwarded, with the server's own key, to
//! the server running that client's query at that moment. Unknown keys
//! are ignored, as Postgres does.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::{debug, info};

use crate::protocol::startup::CancelKey;

pub use crate::backend::CancelTarget;

/// One client's current cancel target, updated as servers come and go.
#[derive(Debug, Default)]
pub struct CancelSlot(Mutex<Option<Arc<CancelTarget>>>);

impl CancelSlot {
    /// Records the server now serving the client (or `None`).
    pub fn set(&self, target: Option<Arc<CancelTarget>>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = target;
    }

    fn get(&self) -> Option<Arc<CancelTarget>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
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

    fn lookup(&self, key: CancelKey) -> Option<Arc<CancelTarget>> {
        let clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        let (secret, slot) = clients.get(&key.pid)?;
        (*secret == key.secret).then(|| slot.get()).flatten()
    }

    /// Forwards a cancel request for `key`, if it names a client whose
    /// query is running; otherwise does nothing. Delivery is abandoned
    /// after `limit` (`cancel_wait_timeout`).
    pub async fn cancel(&self, key: CancelKey, limit: Duration) {
        let Some(target) = self.lookup(key) else {
            debug!("cancel request for an unknown or idle client ignored");
            return;
        };
        send_cancel(&target, limit).await;
    }
}

/// Sends a cancel request to a server, giving up after `limit`.
pub async fn send_cancel(target: &CancelTarget, limit: Duration) {
    match tokio::time::timeout(limit, target.send()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => debug!(error = %e, "forwarding cancel request failed"),
        Err(_) => {
            info!(server = %target.addr, "cancel request not delivered within cancel_wait_timeout")
        }
    }
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
        r.slot.set(Some(Arc::new(CancelTarget {
            addr: std::net::SocketAddr::from(([127, 0, 0, 1], 5432)),
            host: "127.0.0.1".into(),
            key: server_key,
            tls: None,
        })));
        assert_eq!(reg.lookup(r.key).map(|t| t.key), Some(server_key));
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
