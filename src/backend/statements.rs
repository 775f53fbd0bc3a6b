//! Which pgtarn-named prepared statements exist on one server connection,
//! bounded by `max_prepared_statements` with least-recently-used eviction.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// The statements prepared on one server.
#[derive(Debug, Default)]
pub struct StatementCache {
    /// Name → last use (a counter, higher is more recent).
    entries: HashMap<Arc<str>, u64>,
    /// Names whose server-side statement must be closed before reuse
    /// (e.g. after `cached plan must not change result type`).
    stale: HashSet<Arc<str>>,
    clock: u64,
}

impl StatementCache {
    /// True if `name` is prepared on the server; marks it used.
    pub fn touch(&mut self, name: &str) -> bool {
        self.clock += 1;
        match self.entries.get_mut(name) {
            Some(used) => {
                *used = self.clock;
                true
            }
            None => false,
        }
    }

    /// Records `name` as prepared; returns the least recently used name to
    /// close first if that makes more than `capacity` entries.
    pub fn insert(&mut self, name: Arc<str>, capacity: usize) -> Option<Arc<str>> {
        self.clock += 1;
        let victim = if self.entries.len() >= capacity && !self.entries.contains_key(&name) {
            let lru = self
                .entries
                .iter()
                .min_by_key(|(_, used)| **used)
                .map(|(n, _)| n.clone());
            lru.inspect(|n| {
                self.entries.remove(n);
            })
        } else {
            None
        };
        self.entries.insert(name, self.clock);
        victim
    }

    /// Forgets `name` (its Parse failed or was skipped).
    pub fn remove(&mut self, name: &str) {
        self.entries.remove(name);
    }

    /// Forgets `name` and remembers to close it on the server before it is
    /// prepared again.
    pub fn mark_stale(&mut self, name: Arc<str>) {
        self.entries.remove(&name);
        self.stale.insert(name);
    }

    /// True (once) if `name` must be closed before it is prepared again.
    pub fn take_stale(&mut self, name: &str) -> bool {
        self.stale.remove(name)
    }

    /// Marks every statement stale: after `DISCARD ALL` / `DEALLOCATE ALL`
    /// they may or may not exist, so each is closed before reuse.
    pub fn mark_all_stale(&mut self) {
        self.stale.extend(self.entries.drain().map(|(n, _)| n));
    }

    /// Forgets everything (after a reset known to have succeeded).
    pub fn clear(&mut self) {
        self.entries.clear();
        self.stale.clear();
    }

    /// Statements prepared.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no statement is prepared.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_the_least_recently_used() {
        let mut c = StatementCache::default();
        assert_eq!(c.insert("a".into(), 2), None);
        assert_eq!(c.insert("b".into(), 2), None);
        assert!(c.touch("a"));
        assert_eq!(c.insert("c".into(), 2).as_deref(), Some("b"));
        assert!(c.touch("a") && c.touch("c") && !c.touch("b"));
        assert_eq!(c.insert("c".into(), 2), None, "re-inserting evicts nothing");
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn stale_names_are_closed_once() {
        let mut c = StatementCache::default();
        c.insert("a".into(), 5);
        c.mark_stale("a".into());
        assert!(!c.touch("a"));
        assert!(c.take_stale("a"));
        assert!(!c.take_stale("a"));
    }
}
