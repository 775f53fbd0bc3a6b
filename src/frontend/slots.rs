//! `max_client_conn`: client connections counted against a limit that a
//! reload may lower or raise at any time, clients connected or not; and
//! the same counts per database and per user (`max_db_client_connections`,
//! `max_user_client_connections`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Client connections in use, and the limit in force.
#[derive(Debug)]
pub struct ClientSlots {
    used: AtomicUsize,
    limit: AtomicUsize,
}

impl ClientSlots {
    /// Slots for `limit` clients.
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(ClientSlots {
            used: AtomicUsize::new(0),
            limit: AtomicUsize::new(limit),
        })
    }

    /// Changes the limit. Clients already in stay; no new one gets in
    /// until fewer than `limit` are.
    pub fn set_limit(&self, limit: usize) {
        self.limit.store(limit, Ordering::Release);
    }

    /// A slot, held until the returned guard drops; `None` when the
    /// limit is reached.
    pub fn try_take(self: &Arc<Self>) -> Option<ClientSlot> {
        self.try_take_within(self.limit.load(Ordering::Acquire))
    }

    /// A slot if fewer than `limit` are taken, whatever the stored limit.
    fn try_take_within(self: &Arc<Self>, limit: usize) -> Option<ClientSlot> {
        let before = self.used.fetch_add(1, Ordering::AcqRel);
        if before >= limit {
            self.used.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(ClientSlot(self.clone()))
    }

    /// Slots free now (none when a lowered limit is still exceeded).
    pub fn free(&self) -> usize {
        self.limit
            .load(Ordering::Acquire)
            .saturating_sub(self.used())
    }

    /// Slots taken now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
}

/// One client's slot; given back on drop.
#[derive(Debug)]
pub struct ClientSlot(Arc<ClientSlots>);

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.0.used.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Client connections counted per name (a database's or a user's), each
/// against the limit the configuration gives at the time of the login.
#[derive(Debug, Default)]
pub struct NamedSlots(Mutex<HashMap<String, Arc<ClientSlots>>>);

impl NamedSlots {
    fn of(&self, name: &str) -> Arc<ClientSlots> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slots) = map.get(name) {
            return slots.clone();
        }
        let slots = ClientSlots::new(usize::MAX);
        map.insert(name.to_owned(), slots.clone());
        slots
    }

    /// A slot for one client of `name`, held until the guard drops;
    /// `None` when `limit` clients of `name` are in (0: no limit).
    pub fn try_take(&self, name: &str, limit: usize) -> Option<ClientSlot> {
        let limit = if limit == 0 { usize::MAX } else { limit };
        self.of(name).try_take_within(limit)
    }

    /// Clients of `name` now.
    pub fn used(&self, name: &str) -> usize {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.get(name).map_or(0, |s| s.used())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lowered_limit_holds_once_clients_leave() {
        let slots = ClientSlots::new(3);
        let held: Vec<_> = (0..3).map(|_| slots.try_take().expect("a slot")).collect();
        assert!(slots.try_take().is_none(), "full at 3");
        slots.set_limit(1);
        drop(held);
        assert_eq!(slots.used(), 0);
        let one = slots.try_take().expect("one slot");
        assert!(slots.try_take().is_none(), "the new limit is 1");
        slots.set_limit(2);
        let two = slots.try_take().expect("raised to 2");
        assert!(slots.try_take().is_none());
        drop((one, two));
        assert_eq!(slots.used(), 0);
    }

    #[test]
    fn named_slots_count_each_name_against_the_limit_given() {
        let named = NamedSlots::default();
        let a = named.try_take("a", 2).expect("first a");
        let _a2 = named.try_take("a", 2).expect("second a");
        assert!(named.try_take("a", 2).is_none(), "a is full at 2");
        let _b = named.try_take("b", 2).expect("b has its own count");
        assert!(
            named.try_take("a", 3).is_some(),
            "a raised limit lets one in"
        );
        assert_eq!(
            (named.used("a"), named.used("b"), named.used("c")),
            (2, 1, 0)
        );
        drop(a);
        assert!(named.try_take("a", 0).is_some(), "0 means no limit");
        assert_eq!(named.used("a"), 1);
    }
}
