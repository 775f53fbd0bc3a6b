//! Which pgtarn-named prepared statements exist on one server connection,
//! bounded by `max_prepared_statements` with least-recently-used eviction.
//!
//! Each entry remembers the statement's generation when it was prepared:
//! when a statement's result type changes under it (after DDL) the pool
//! bumps the generation, and every server holding an older copy closes and
//! re-prepares it on next use.

use std::collections::HashMap;
use std::sync::Arc;

/// A generation that matches no current one: the entry must be replaced.
const OUTDATED: u32 = u32::MAX;

/// What a server has for a statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cached {
    /// Prepared and current.
    Fresh,
    /// Prepared, but an older generation: close it before preparing again.
    Outdated,
    /// Not prepared.
    Missing,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    last_use: u64,
    generation: u32,
}

/// The statements prepared on one server.
#[derive(Debug, Default)]
pub struct StatementCache {
    entries: HashMap<Arc<str>, Entry>,
    clock: u64,
}

impl StatementCache {
    /// Looks up `name` at the pool's current `generation`; a fresh entry
    /// is marked used.
    pub fn lookup(&mut self, name: &str, generation: u32) -> Cached {
        self.clock += 1;
        match self.entries.get_mut(name) {
            Some(e) if e.generation == generation => {
                e.last_use = self.clock;
                Cached::Fresh
            }
            Some(_) => Cached::Outdated,
            None => Cached::Missing,
        }
    }

    /// Records `name` as prepared at `generation`; returns the least
    /// recently used name to close first if that makes more than
    /// `capacity` entries.
    pub fn insert(&mut self, name: Arc<str>, generation: u32, capacity: usize) -> Option<Arc<str>> {
        self.clock += 1;
        let victim = if self.entries.len() >= capacity && !self.entries.contains_key(&name) {
            let lru = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.last_use)
                .map(|(n, _)| n.clone());
            lru.inspect(|n| {
                self.entries.remove(n);
            })
        } else {
            None
        };
        let entry = Entry {
            last_use: self.clock,
            generation,
        };
        self.entries.insert(name, entry);
        victim
    }

    /// Moves `name`, if it is still the copy prepared at `from`, to
    /// generation `to` (its row shape turned out to be `to`'s). A copy
    /// evicted or outdated since is left alone: it is not on the server
    /// as `from` any more.
    pub fn restamp(&mut self, name: &str, from: u32, to: u32) {
        if let Some(e) = self.entries.get_mut(name)
            && e.generation == from
        {
            e.generation = to;
        }
    }

    /// Records that `name` still exists on the server in an unknown
    /// version (an eviction Close was skipped).
    pub fn keep_outdated(&mut self, name: Arc<str>) {
        let entry = Entry {
            last_use: 0,
            generation: OUTDATED,
        };
        self.entries.insert(name, entry);
    }

    /// Forgets `name` (its Parse failed or was skipped).
    pub fn remove(&mut self, name: &str) {
        self.entries.remove(name);
    }

    /// After `DISCARD ALL` / `DEALLOCATE ALL` the statements may or may not
    /// exist: each is closed before it is prepared again.
    pub fn mark_all_outdated(&mut self) {
        for e in self.entries.values_mut() {
            e.generation = OUTDATED;
        }
    }

    /// Forgets everything (after a reset known to have succeeded).
    pub fn clear(&mut self) {
        self.entries.clear();
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
        assert_eq!(c.insert("a".into(), 0, 2), None);
        assert_eq!(c.insert("b".into(), 0, 2), None);
        assert_eq!(c.lookup("a", 0), Cached::Fresh);
        assert_eq!(c.insert("c".into(), 0, 2).as_deref(), Some("b"));
        assert_eq!(c.lookup("b", 0), Cached::Missing);
        assert_eq!(
            c.insert("c".into(), 0, 2),
            None,
            "re-inserting evicts nothing"
        );
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn restamping_leaves_an_evicted_or_outdated_copy_alone() {
        let mut c = StatementCache::default();
        c.insert("a".into(), 0, 1);
        c.restamp("a", 0, 1);
        assert_eq!(c.lookup("a", 1), Cached::Fresh);
        c.restamp("a", 0, 2);
        assert_eq!(c.lookup("a", 1), Cached::Fresh, "not the copy of 0");
        assert_eq!(c.insert("b".into(), 0, 1).as_deref(), Some("a"));
        c.restamp("a", 1, 2);
        assert_eq!(
            c.lookup("a", 2),
            Cached::Missing,
            "evicted: not brought back"
        );
        assert_eq!(c.lookup("b", 0), Cached::Fresh, "and evicts nothing");
        c.mark_all_outdated();
        c.restamp("b", 0, 1);
        assert_eq!(c.lookup("b", 1), Cached::Outdated);
    }

    #[test]
    fn older_generations_are_outdated() {
        let mut c = StatementCache::default();
        c.insert("a".into(), 0, 5);
        assert_eq!(c.lookup("a", 0), Cached::Fresh);
        assert_eq!(
            c.lookup("a", 1),
            Cached::Outdated,
            "the pool bumped the generation"
        );
        c.insert("a".into(), 1, 5);
        assert_eq!(c.lookup("a", 1), Cached::Fresh);
        c.mark_all_outdated();
        assert_eq!(c.lookup("a", 1), Cached::Outdated);
        c.keep_outdated("z".into());
        assert_eq!(c.lookup("z", 0), Cached::Outdated);
    }
}
