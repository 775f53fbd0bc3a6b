//! Cancel requests: each client gets its own BackendKeyData from pgtarn; a
//! CancelRequest carrying it is forwarded, with the server's own key, to
//! the server running that client's query at that moment. Unknown keys
//! are ignored, as Postgres does.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::AsyncWriteExt;
use tracing::debug;

use crate::protocol::encode;
use crate::protocol::startup::CancelKey;

/// Where a client's query runs now: the server's address and key.
pub type CancelTarget = (SocketAddr, CancelKey);

/// One client's current cancel target, updated as servers come and go.
#[derive(Debug, Default)]
pub struct CancelSlot(Mutex<Option<CancelTarget>>);

impl CancelSlot {
    /// Records the server now serving the client (or `None`).
    pub fn set(&self, target: Option<CancelTarget>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = target;
    }

    fn get(&self) -> Option<CancelTarget> {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
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

    fn lookup(&self, key: CancelKey) -> Option<CancelTarget> {
        let clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        let (secret, slot) = clients.get(&key.pid)?;
        (*secret == key.secret).then(|| slot.get()).flatten()
    }

    /// Forwards a cancel request for `key`, if it names a client whose
    /// query is running; otherwise does nothing.
    pub async fn cancel(&self, key: CancelKey) {
        let Some((addr, server_key)) = self.lookup(key) else {
            debug!("cancel request for an unknown or idle client ignored");
            return;
        };
        let sent = async {
            let mut s = tokio::net::TcpStream::connect(addr).await?;
            s.write_all(&encode::cancel_request(server_key)).await?;
            s.shutdown().await
        };
        if let Err(e) = sent.await {
            debug!(error = %e, "forwarding cancel request failed");
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
        assert_eq!(reg.lookup(r.key), None, "idle client: nothing to cancel");
        let target = (
            SocketAddr::from(([127, 0, 0, 1], 5432)),
            CancelKey { pid: 1, secret: 2 },
        );
        r.slot.set(Some(target));
        assert_eq!(reg.lookup(r.key), Some(target));
        let wrong = CancelKey {
            secret: r.key.secret.wrapping_add(1),
            ..r.key
        };
        assert_eq!(reg.lookup(wrong), None);
        let key = r.key;
        drop(r);
        assert_eq!(reg.lookup(key), None, "unregistered on drop");
    }
}
