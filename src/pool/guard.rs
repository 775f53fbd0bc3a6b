//! The checkout guard: a server connection lent to one client.
//!
//! Dropping the guard returns the connection to its pool only if it is
//! reusable (idle, in sync, still alive); otherwise the connection is taken
//! out of the pool and closed, so a dirty connection never reaches another
//! client. While a cancel request for the connection is in flight it is
//! parked instead, and released (as above) once the request is done: a
//! late cancel must not hit the next client's query. If a request's
//! outcome stays unknown (`cancel_wait_timeout`), the connection is closed.

use std::ops::{Deref, DerefMut};
use std::sync::atomic::Ordering;
use std::time::Instant;

use deadpool::managed::Object;
use tracing::info;

use super::manager::Manager;
use crate::backend::ServerConn;
use crate::stats::CloseReason;
use crate::stats::clients::ConnState;

/// A checked-out server connection.
#[derive(Debug)]
pub struct Checkout {
    obj: Option<Object<Manager>>,
}

impl Checkout {
    pub(super) fn new(obj: Object<Manager>) -> Self {
        if let Some(l) = &obj.listed {
            l.mark(ConnState::Active);
        }
        Checkout { obj: Some(obj) }
    }

    /// Closes the connection instead of returning it, whatever its state.
    pub fn discard(mut self, reason: CloseReason) {
        if let Some(obj) = self.obj.take() {
            close(obj, reason);
        }
    }
}

/// True if the pool holds more connections than its (reduced) size, so a
/// released one must close rather than go back.
fn over_size(obj: &Object<Manager>) -> bool {
    let Some(pool) = Object::pool(obj) else {
        return false;
    };
    let shrinking = &pool.manager().shrinking;
    if !shrinking.load(Ordering::Relaxed) {
        return false;
    }
    let status = pool.status();
    let over = status.size > status.max_size;
    if !over {
        shrinking.store(false, Ordering::Relaxed);
    }
    over
}

fn close(obj: Object<Manager>, reason: CloseReason) {
    if let Some(pool) = Object::pool(&obj) {
        pool.manager().stats.server_closed(reason);
    }
    let conn = Object::take(obj);
    info!(server = conn.id(), %reason, "server connection closed");
}

/// Parks `obj` until the cancel requests in flight for it are done, then
/// releases it, or closes it if one of them may still land.
fn park(obj: Object<Manager>) {
    if !obj.is_reusable() {
        return close(obj, CloseReason::Dirty);
    }
    let in_flight = obj.cancels_in_flight().clone();
    let counted = BeingCanceled::count(&obj);
    in_flight.release_after(Box::new(move |confirmed| {
        drop(counted);
        if confirmed {
            release(obj);
        } else {
            close(obj, CloseReason::CancelUnconfirmed);
        }
    }));
}

/// A parked connection, counted in its pool's `sv_being_canceled` until
/// dropped.
struct BeingCanceled(Option<std::sync::Arc<crate::stats::PoolStats>>);

impl BeingCanceled {
    fn count(obj: &Object<Manager>) -> Self {
        let stats = Object::pool(obj).map(|p| p.manager().stats.clone());
        if let Some(s) = &stats {
            s.being_canceled.fetch_add(1, Ordering::Relaxed);
        }
        BeingCanceled(stats)
    }
}

impl Drop for BeingCanceled {
    fn drop(&mut self) {
        if let Some(s) = &self.0 {
            s.being_canceled.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Returns `obj` to its pool if it is reusable, else closes it.
fn release(mut obj: Object<Manager>) {
    if !obj.is_reusable() {
        return close(obj, CloseReason::Dirty);
    }
    if over_size(&obj) {
        return close(obj, CloseReason::Resize);
    }
    obj.idle_since = Instant::now();
    if let Some(l) = &obj.listed {
        l.set_idle();
    }
    let waiting = [&obj.db_slot, &obj.user_slot].map(|s| s.as_ref().and_then(|s| s.waiting()));
    // Back to the pool; then a pool waiting under max_db_connections or
    // max_user_connections may close it.
    drop(obj);
    for limit in waiting.into_iter().flatten() {
        limit.went_idle();
    }
}

impl Drop for Checkout {
    fn drop(&mut self) {
        let Some(obj) = self.obj.take() else {
            return;
        };
        // One atomic load on the common path.
        if obj.cancels_in_flight().busy() {
            return park(obj);
        }
        release(obj);
    }
}

impl Deref for Checkout {
    type Target = ServerConn;
    fn deref(&self) -> &ServerConn {
        // `obj` is only `None` inside `drop`/`discard`, after which the
        // guard is gone.
        self.obj
            .as_ref()
            .expect("checkout guard used after release")
    }
}

impl DerefMut for Checkout {
    fn deref_mut(&mut self) -> &mut ServerConn {
        self.obj
            .as_mut()
            .expect("checkout guard used after release")
    }
}
