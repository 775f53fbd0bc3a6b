//! The one shutdown signal, passed down to every loop.

use tokio::sync::watch;

/// Receives the shutdown signal; cheap to clone.
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<bool>);

/// Sends the shutdown signal.
#[derive(Debug)]
pub struct Trigger(watch::Sender<bool>);

/// A connected trigger and receiver.
pub fn channel() -> (Trigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (Trigger(tx), Shutdown(rx))
}

impl Trigger {
    /// Signals shutdown to every receiver.
    pub fn trigger(&self) {
        let _ = self.0.send(true);
    }
}

impl Shutdown {
    /// Completes once shutdown is signalled (or the trigger is dropped).
    pub async fn wait(&mut self) {
        let _ = self.0.wait_for(|&v| v).await;
    }

    /// True once shutdown has been signalled.
    pub fn is_triggered(&self) -> bool {
        *self.0.borrow()
    }
}
