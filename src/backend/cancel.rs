//! Forwarding a cancel request to the server running a query, over TLS when
//! that server's connections use it, and keeping track of the requests in
//! flight for each server connection.
//!
//! A cancel request travels on its own connection and Postgres acts on it
//! asynchronously: if the query it was meant for ends meanwhile and the
//! server goes back to the pool, the request would cancel whichever query
//! runs there next, another client's. So every request is counted in its
//! server's [`InFlight`] from the moment a client's cancel target is looked
//! up until Postgres has closed the cancel connection (which it does after
//! signalling the backend) or the request failed or was given up; while
//! the count is not zero, a released server is parked instead of going back
//! to the pool (PgBouncer's `sv_being_canceled`), see
//! [`InFlight::release_after`].

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::time::{Instant, timeout_at};

use super::tls::{UpstreamTls, negotiate};
use super::{BackendError, ServerAddr};
use crate::net::Stream;
use crate::protocol::encode;
use crate::protocol::startup::CancelKey;

/// Where and how to cancel a server's running query.
#[derive(Debug, Clone)]
pub struct CancelTarget {
    /// The server's address.
    pub addr: ServerAddr,
    /// Its host name (for TLS verification).
    pub host: String,
    /// Its BackendKeyData.
    pub key: CancelKey,
    /// TLS settings, if its connections use TLS.
    pub tls: Option<UpstreamTls>,
    /// The cancel requests in flight for this server connection (shared
    /// with the connection itself).
    pub in_flight: Arc<InFlight>,
}

/// How a cancel request ended, as far as pgtarn can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Postgres read the request and closed the connection: it has acted
    /// on it (signalled the backend, or ignored an unknown key).
    Delivered,
    /// Nothing reached Postgres (no connection, TLS refused).
    NotSent,
    /// The request may have reached Postgres but its closing the
    /// connection was not seen (an error or `cancel_wait_timeout`): it may
    /// still take effect at any time.
    Unconfirmed,
}

impl CancelTarget {
    /// Opens a new connection, sends the CancelRequest and waits until
    /// Postgres closes the connection, all within `limit`. `Ok` means
    /// [`Delivery::Delivered`].
    pub async fn deliver(&self, limit: Duration) -> Result<(), (Delivery, BackendError)> {
        let deadline = Instant::now() + limit;
        let late = || BackendError::Timeout(limit);
        let mut stream = match timeout_at(deadline, self.open()).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err((Delivery::NotSent, e)),
            Err(_) => return Err((Delivery::NotSent, late())),
        };
        match timeout_at(deadline, send_and_wait(&mut stream, self.key)).await {
            Ok(r) => r.map_err(|e| (Delivery::Unconfirmed, e)),
            Err(_) => Err((Delivery::Unconfirmed, late())),
        }
    }

    /// Opens the connection the request goes on.
    async fn open(&self) -> Result<Stream, BackendError> {
        let addr = match &self.addr {
            ServerAddr::Tcp(addr) => addr,
            ServerAddr::Unix(path) => {
                return Ok(Stream::Unix(tokio::net::UnixStream::connect(path).await?));
            }
        };
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        Ok(match &self.tls {
            Some(tls) => negotiate(tcp, &self.host, tls).await?,
            None => Stream::Plain(tcp),
        })
    }
}

/// Sends the request and reads until Postgres closes the connection (it
/// sends nothing back). A reset or a TLS stream cut without close_notify
/// also means Postgres is done with the request.
async fn send_and_wait(stream: &mut Stream, key: CancelKey) -> Result<(), BackendError> {
    stream.send(&encode::cancel_request(key)).await?;
    let mut buf = [0u8; 64];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return Ok(()),
            Ok(_) => {}
        }
    }
}

/// What runs when a parked server connection may leave the parking: with
/// `true` if every cancel request for it was accounted for, `false` if one
/// may still land (the connection must then be closed).
pub type Resume = Box<dyn FnOnce(bool) + Send>;

/// Bit of [`InFlight::word`] set once a request ended
/// [`Delivery::Unconfirmed`]; the bits below count requests in flight.
const UNCONFIRMED: usize = 1 << (usize::BITS - 1);

/// The cancel requests in flight for one server connection, and the
/// connection itself while it waits for them (parked).
#[derive(Default)]
pub struct InFlight {
    /// Requests in flight, plus [`UNCONFIRMED`]. Increments happen while
    /// the connection is lent (under the client's cancel slot lock, or by
    /// the session holding it); decrements under `parked`'s lock.
    word: AtomicUsize,
    parked: Mutex<Option<Resume>>,
}

impl std::fmt::Debug for InFlight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let word = self.word.load(Ordering::Relaxed);
        f.debug_struct("InFlight")
            .field("count", &(word & !UNCONFIRMED))
            .field("unconfirmed", &(word & UNCONFIRMED != 0))
            .finish()
    }
}

impl InFlight {
    /// True if a request is in flight or one was never confirmed: the
    /// connection must not simply go back to the pool. One atomic load,
    /// for the release path.
    pub fn busy(&self) -> bool {
        self.word.load(Ordering::SeqCst) != 0
    }

    /// Counts one more request in flight until the returned guard drops.
    /// Only while the connection is lent: under the lock that its release
    /// takes first (the client's cancel slot), or by its holder.
    pub fn begin(self: &Arc<Self>) -> InFlightGuard {
        self.word.fetch_add(1, Ordering::SeqCst);
        InFlightGuard {
            in_flight: self.clone(),
            delivery: Delivery::Unconfirmed,
        }
    }

    /// Runs `resume` once no request is in flight: at once if none is, else
    /// when the last one ends (the connection stays parked in `resume`
    /// meanwhile).
    pub fn release_after(&self, resume: Resume) {
        let mut parked = self.parked.lock().unwrap_or_else(|p| p.into_inner());
        let word = self.word.load(Ordering::SeqCst);
        if word & !UNCONFIRMED != 0 {
            *parked = Some(resume);
            return;
        }
        drop(parked);
        resume(word & UNCONFIRMED == 0);
    }

    /// Ends one request; returns the parked connection's resumption if it
    /// was the last one.
    fn end(&self, delivery: Delivery) -> Option<(Resume, bool)> {
        let mut parked = self.parked.lock().unwrap_or_else(|p| p.into_inner());
        if delivery == Delivery::Unconfirmed {
            self.word.fetch_or(UNCONFIRMED, Ordering::SeqCst);
        }
        let before = self.word.fetch_sub(1, Ordering::SeqCst);
        if before & !UNCONFIRMED != 1 {
            return None;
        }
        let resume = parked.take()?;
        Some((resume, before & UNCONFIRMED == 0))
    }
}

/// One cancel request counted in flight; ends it on drop, as
/// [`Delivery::Unconfirmed`] unless [`InFlightGuard::done`] said otherwise
/// (a request dropped half way may still land).
#[derive(Debug)]
pub struct InFlightGuard {
    in_flight: Arc<InFlight>,
    delivery: Delivery,
}

impl InFlightGuard {
    /// Records how the request ended and ends it.
    pub fn done(mut self, delivery: Delivery) {
        self.delivery = delivery;
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        // Outside the lock: resuming returns the connection to its pool.
        if let Some((resume, confirmed)) = self.in_flight.end(self.delivery) {
            resume(confirmed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A resumption that records what it was called with.
    fn recorder() -> (Arc<Mutex<Option<bool>>>, Resume) {
        let got = Arc::new(Mutex::new(None));
        let set = got.clone();
        (
            got,
            Box::new(move |ok| *set.lock().expect("not poisoned") = Some(ok)),
        )
    }

    fn called(got: &Mutex<Option<bool>>) -> Option<bool> {
        *got.lock().expect("not poisoned")
    }

    #[test]
    fn an_idle_connection_is_released_at_once() {
        let f = Arc::new(InFlight::default());
        assert!(!f.busy());
        let (got, resume) = recorder();
        f.release_after(resume);
        assert_eq!(called(&got), Some(true));
    }

    #[test]
    fn a_parked_connection_waits_for_the_last_request() {
        let f = Arc::new(InFlight::default());
        let (one, two) = (f.begin(), f.begin());
        assert!(f.busy());
        let (got, resume) = recorder();
        f.release_after(resume);
        one.done(Delivery::Delivered);
        assert_eq!(called(&got), None, "still one in flight");
        two.done(Delivery::NotSent);
        assert_eq!(called(&got), Some(true));
        assert!(!f.busy());
    }

    #[test]
    fn an_unconfirmed_request_closes_the_connection() {
        let f = Arc::new(InFlight::default());
        let g = f.begin();
        let (got, resume) = recorder();
        f.release_after(resume);
        drop(g);
        assert_eq!(called(&got), Some(false), "dropped = unconfirmed");
        assert!(f.busy(), "stays marked");
        let (got, resume) = recorder();
        f.release_after(resume);
        assert_eq!(called(&got), Some(false));
    }

    #[test]
    fn a_request_that_ends_before_the_release_leaves_it_alone() {
        let f = Arc::new(InFlight::default());
        f.begin().done(Delivery::Delivered);
        assert!(!f.busy());
    }
}
