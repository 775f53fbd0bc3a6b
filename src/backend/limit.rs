//! `max_db_connections` and `max_user_connections`: one count of the
//! server connections open to a database, across the pools of all its
//! users (or of a user, across its databases: the same count, kept per
//! user; "database" below reads "user" then).
//!
//! A pool about to open a connection takes a [`DbSlot`], which the
//! connection holds until it is closed. When the database is full, the
//! pool closes an idle connection of one of the database's pools to make
//! room (as PgBouncer does: otherwise one user's idle connections would
//! starve another user until `server_idle_timeout`), then waits, first
//! come first served, for a slot to free up, or for a connection to go
//! idle (see [`DbSlot::waiting`]), which it closes in turn.
//!
//! The same record counts the database's (or user's) clients, for
//! `max_db_client_connections` and `max_user_client_connections`: a
//! logged-in client holds a [`ClientSeat`].

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::{Instant, timeout_at};

/// A pool that can close one of its idle connections on request.
pub trait Evict: Send + Sync + std::fmt::Debug {
    /// Closes one idle connection; false if it has none.
    fn evict_idle(&self) -> bool;
}

/// The server connections open to one database, against its limit.
#[derive(Debug, Default)]
pub struct DbLimit {
    /// The limit; 0 means none.
    max: AtomicUsize,
    /// Connections open or opening.
    open: AtomicUsize,
    /// Pools waiting for a slot.
    waiting: AtomicUsize,
    /// Signalled when a slot frees up.
    freed: Notify,
    /// The database's pools, asked for an idle connection to close.
    pools: Mutex<Vec<Weak<dyn Evict>>>,
    /// Clients logged in.
    clients: AtomicUsize,
}

/// One client's place in its database's (or user's) client count; freed
/// on drop.
#[derive(Debug)]
pub struct ClientSeat(Arc<DbLimit>);

impl Drop for ClientSeat {
    fn drop(&mut self) {
        self.0.clients.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One connection's place in its database's count; freed on drop.
#[derive(Debug)]
pub struct DbSlot(Arc<DbLimit>);

impl DbSlot {
    /// The database's count, if a pool is waiting for a slot: a
    /// connection going back to its pool idle must then tell it
    /// ([`DbLimit::went_idle`]) once it is there. One atomic load.
    pub fn waiting(&self) -> Option<Arc<DbLimit>> {
        (self.0.waiting.load(Ordering::Acquire) > 0).then(|| self.0.clone())
    }
}

impl Drop for DbSlot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        self.0.freed.notify_one();
    }
}

impl DbLimit {
    /// A count with limit `max` (0: none).
    pub fn new(max: usize) -> Arc<Self> {
        let limit = DbLimit::default();
        limit.max.store(max, Ordering::Relaxed);
        Arc::new(limit)
    }

    /// Changes the limit (a reload); waiting pools look again.
    pub fn set_max(&self, max: usize) {
        self.max.store(max, Ordering::Release);
        self.freed.notify_waiters();
    }

    /// The limit (0: none).
    pub fn max(&self) -> usize {
        self.max.load(Ordering::Relaxed)
    }

    /// A client's seat, unless `limit` clients (0: no limit) are in.
    pub fn take_client(self: &Arc<Self>, limit: usize) -> Option<ClientSeat> {
        // Counted only if under the limit: a burst of refused logins never
        // counts, even for a moment, against one that would fit.
        let under = |n: usize| (limit == 0 || n < limit).then_some(n + 1);
        let ordering = (Ordering::AcqRel, Ordering::Acquire);
        self.clients
            .fetch_update(ordering.0, ordering.1, under)
            .ok()?;
        Some(ClientSeat(self.clone()))
    }

    /// Clients logged in now.
    pub fn clients(&self) -> usize {
        self.clients.load(Ordering::Acquire)
    }

    /// Connections open or opening.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// A connection went back to its pool idle: waiting pools try to close
    /// it.
    pub fn went_idle(&self) {
        self.freed.notify_waiters();
    }

    /// Registers one of the database's pools for eviction.
    pub fn add_pool(&self, pool: Weak<dyn Evict>) {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        pools.retain(|p| p.strong_count() > 0);
        pools.push(pool);
    }

    /// A slot, at once if the database is below its limit; otherwise after
    /// closing an idle connection of one of its pools, or when one frees
    /// up within `wait`. `None` if none did.
    pub async fn take(self: &Arc<Self>, wait: Duration) -> Option<DbSlot> {
        if let Some(slot) = self.try_take() {
            return Some(slot);
        }
        let deadline = Instant::now() + wait;
        self.waiting.fetch_add(1, Ordering::AcqRel);
        let _waiting = Waiting(self);
        loop {
            let freed = self.freed.notified();
            let mut freed = std::pin::pin!(freed);
            freed.as_mut().enable();
            if let Some(slot) = self.try_take() {
                return Some(slot);
            }
            self.evict_one();
            if timeout_at(deadline, freed).await.is_err() {
                return self.try_take();
            }
        }
    }

    fn try_take(self: &Arc<Self>) -> Option<DbSlot> {
        let max = self.max.load(Ordering::Acquire);
        let taken = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (max == 0 || open < max).then_some(open + 1)
            });
        taken.ok().map(|_| DbSlot(self.clone()))
    }

    /// Asks the database's pools, in turn, to close an idle connection,
    /// until one did.
    fn evict_one(&self) {
        let pools: Vec<_> = {
            let pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
            pools.iter().filter_map(Weak::upgrade).collect()
        };
        let _closed_one = pools.iter().any(|p| p.evict_idle());
    }
}

/// Which of the two counts had no slot in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// The database's (`max_db_connections`).
    Database,
    /// The user's (`max_user_connections`).
    User,
}

/// A slot of the database's count and one of the user's, within `wait`.
/// Neither is held while waiting for the other, as PgBouncer checks both
/// before it opens a connection: a pool whose user is at its limit would
/// otherwise keep one of the database's places, empty, while it waits,
/// and the database's other users wait with it.
pub async fn take_both(
    db: &Arc<DbLimit>,
    user: &Arc<DbLimit>,
    wait: Duration,
) -> Result<(DbSlot, DbSlot), Full> {
    let deadline = Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let db_slot = db.take(left).await.ok_or(Full::Database)?;
        if let Some(user_slot) = user.try_take() {
            return Ok((db_slot, user_slot));
        }
        drop(db_slot);
        let left = deadline.saturating_duration_since(Instant::now());
        let user_slot = user.take(left).await.ok_or(Full::User)?;
        if let Some(db_slot) = db.try_take() {
            return Ok((db_slot, user_slot));
        }
        // The database filled up meanwhile: wait for it again, holding
        // nothing.
        drop(user_slot);
        if Instant::now() >= deadline {
            return Err(Full::Database);
        }
    }
}

/// A pool counted as waiting for a slot until dropped.
struct Waiting<'a>(&'a DbLimit);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_seats_count_against_the_limit_given() {
        let count = DbLimit::new(0);
        let a = count.take_client(2).expect("first");
        let _b = count.take_client(2).expect("second");
        assert!(count.take_client(2).is_none(), "full at 2");
        assert!(count.take_client(3).is_some(), "a raised limit lets one in");
        assert_eq!(
            count.clients(),
            2,
            "a refused or dropped seat is given back"
        );
        drop(a);
        let _c = count.take_client(0).expect("0 means no limit");
        assert_eq!(count.clients(), 2);
    }

    #[derive(Debug, Default)]
    struct Idle(Mutex<Vec<DbSlot>>);

    impl Evict for Idle {
        fn evict_idle(&self) -> bool {
            self.0.lock().unwrap().pop().is_some()
        }
    }

    #[tokio::test]
    async fn slots_are_counted_against_the_limit() {
        let limit = DbLimit::new(2);
        let a = limit.take(Duration::ZERO).await.unwrap();
        let _b = limit.take(Duration::ZERO).await.unwrap();
        assert_eq!(limit.open(), 2);
        assert!(limit.take(Duration::from_millis(10)).await.is_none());
        drop(a);
        assert!(limit.take(Duration::ZERO).await.is_some());
        limit.set_max(0);
        let many: Vec<_> = (0..10).map(|_| limit.try_take().unwrap()).collect();
        assert_eq!(limit.open(), 11);
        drop(many);
        assert_eq!(limit.open(), 1);
    }

    #[tokio::test]
    async fn a_full_database_closes_an_idle_connection_of_another_pool() {
        let limit = DbLimit::new(1);
        let other = Arc::new(Idle::default());
        let weak: Weak<dyn Evict> = Arc::downgrade(&(other.clone() as Arc<dyn Evict>));
        limit.add_pool(weak);
        other.0.lock().unwrap().push(limit.try_take().unwrap());
        let slot = limit.take(Duration::from_secs(5)).await;
        assert!(slot.is_some(), "the idle connection made room");
        assert!(other.0.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_waiting_pool_gets_the_slot_freed_by_a_closing_connection() {
        let limit = DbLimit::new(1);
        let busy = limit.try_take().unwrap();
        let waiter = tokio::spawn({
            let limit = limit.clone();
            async move { limit.take(Duration::from_secs(5)).await.is_some() }
        });
        tokio::task::yield_now().await;
        drop(busy);
        assert!(waiter.await.unwrap());
    }
}
