//! `max_client_conn`: client connections counted against a limit that a
//! reload may lower or raise at any time, clients connected or not.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

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
        let limit = self.limit.load(Ordering::Acquire);
        // Counted only if under the limit (see `DbLimit::take_client`).
        let under = |n: usize| (n < limit).then_some(n + 1);
        let ordering = (Ordering::AcqRel, Ordering::Acquire);
        self.used.fetch_update(ordering.0, ordering.1, under).ok()?;
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
}
