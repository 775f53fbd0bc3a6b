//! The one shutdown signal, passed down to every loop. Before it, a
//! shutdown that waits for the clients (`SHUTDOWN WAIT_FOR_CLIENTS`) only
//! stops the accept loop: sessions go on.

use tokio::sync::watch;

/// Running: accepting and serving.
const RUNNING: u8 = 0;
/// No longer accepting; sessions go on until their clients leave.
const CLOSING_LISTENER: u8 = 1;
/// Shutting down: every loop ends.
const SHUTTING_DOWN: u8 = 2;

/// Receives the shutdown signal; cheap to clone.
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<u8>);

/// Sends the shutdown signal.
#[derive(Debug)]
pub struct Trigger(watch::Sender<u8>);

/// A connected trigger and receiver.
pub fn channel() -> (Trigger, Shutdown) {
    let (tx, rx) = watch::channel(RUNNING);
    (Trigger(tx), Shutdown(rx))
}

impl Trigger {
    /// Signals shutdown to every receiver.
    pub fn trigger(&self) {
        let _ = self.0.send(SHUTTING_DOWN);
    }

    /// Stops the accept loop only (unless shutdown is already on).
    pub fn close_listener(&self) {
        self.0.send_if_modified(|state| {
            let running = *state == RUNNING;
            if running {
                *state = CLOSING_LISTENER;
            }
            running
        });
    }
}

impl Shutdown {
    /// Completes once shutdown is signalled (or the trigger is dropped).
    pub async fn wait(&mut self) {
        let _ = self.0.wait_for(|&v| v >= SHUTTING_DOWN).await;
    }

    /// Completes once the accept loop must stop: shutdown, or a shutdown
    /// that waits for the clients.
    pub async fn wait_closing(&mut self) {
        let _ = self.0.wait_for(|&v| v >= CLOSING_LISTENER).await;
    }

    /// True once shutdown has been signalled.
    pub fn is_triggered(&self) -> bool {
        *self.0.borrow() >= SHUTTING_DOWN
    }

    /// True once the accept loop must stop (either kind of shutdown).
    pub fn is_closing(&self) -> bool {
        *self.0.borrow() >= CLOSING_LISTENER
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closing_the_listener_is_not_a_shutdown_and_does_not_undo_one() {
        let (trigger, rx) = channel();
        assert!(!rx.is_closing() && !rx.is_triggered());
        trigger.close_listener();
        assert!(rx.is_closing() && !rx.is_triggered());
        trigger.trigger();
        assert!(rx.is_triggered());
        trigger.close_listener();
        assert!(rx.is_triggered(), "a shutdown stays a shutdown");
    }
}
