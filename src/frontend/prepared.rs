//! A client's named prepared statements, for transaction pooling.
//!
//! Each statement the client prepares under its own name gets a pgtarn-wide
//! name derived from its definition (query text and parameter types), so
//! identical statements from different clients share one server-side
//! statement. The client's Parse, renamed, is kept so the statement can be
//! prepared on whichever server serves the client next.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use sha2::{Digest, Sha256};

use crate::protocol::extended;

/// One prepared statement as pgtarn knows it.
#[derive(Debug, PartialEq, Eq)]
pub struct Statement {
    /// The pgtarn-wide name used on servers.
    pub name: Arc<str>,
    /// The Parse frame that creates it under that name.
    pub parse: Bytes,
    /// The pool's generation of the statement when the client parsed it:
    /// an older one than the pool's current means the client's idea of its
    /// result type is out of date.
    pub generation: u32,
}

/// A client's statements with their names at one moment.
pub type Snapshot = Vec<(String, Arc<Statement>)>;

/// Why a client's Parse is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StatementError {
    /// The client already has a statement with this name (42P05).
    #[error("prepared statement \"{0}\" already exists")]
    AlreadyExists(String),
    /// Over `max_client_prepared_statements` (53400).
    #[error("too many prepared statements for this client (max_client_prepared_statements = {0})")]
    TooMany(usize),
    /// Over `max_client_prepared_bytes` (53400).
    #[error("prepared statements of this client exceed max_client_prepared_bytes = {0}")]
    TooLarge(usize),
}

pub use crate::pool::StatementLimits as Limits;

/// One client's statements, by the client's names.
#[derive(Debug)]
pub struct ClientStatements {
    by_name: HashMap<String, Arc<Statement>>,
    bytes: usize,
    limits: Limits,
}

/// The pgtarn-wide name for a statement definition: a hash of the query
/// text and parameter types (128 bits of SHA-256, so distinct definitions
/// never share a name in practice).
pub fn global_name(definition: &[u8]) -> Arc<str> {
    let digest = Sha256::digest(definition);
    let mut name = String::with_capacity(39);
    name.push_str("pgtarn_");
    for b in &digest[..16] {
        name.push_str(&format!("{b:02x}"));
    }
    name.into()
}

impl ClientStatements {
    /// No statements yet.
    pub fn new(limits: Limits) -> Self {
        ClientStatements {
            by_name: HashMap::new(),
            bytes: 0,
            limits,
        }
    }

    /// The statement the client calls `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<Statement>> {
        self.by_name.get(name)
    }

    /// Registers the client's Parse of `name` with `definition`, whose
    /// pgtarn-wide name is `global` (see [`global_name`]) at `generation`.
    pub fn add(
        &mut self,
        name: &str,
        definition: &[u8],
        (global, generation): (Arc<str>, u32),
        buf: &mut BytesMut,
    ) -> Result<Arc<Statement>, StatementError> {
        if self.by_name.contains_key(name) {
            return Err(StatementError::AlreadyExists(name.to_owned()));
        }
        if self.by_name.len() >= self.limits.max_statements {
            return Err(StatementError::TooMany(self.limits.max_statements));
        }
        // The client's name counts too: it may be as long as a message.
        if self.bytes + name.len() + definition.len() > self.limits.max_bytes {
            return Err(StatementError::TooLarge(self.limits.max_bytes));
        }
        let parse = extended::make_parse(buf, &global, definition).into_raw();
        let stmt = Arc::new(Statement {
            name: global,
            parse,
            generation,
        });
        self.bytes += name.len() + stmt.parse.len();
        self.by_name.insert(name.to_owned(), stmt.clone());
        Ok(stmt)
    }

    /// Forgets `name`; true if it existed.
    pub fn remove(&mut self, name: &str) -> bool {
        self.take(name).is_some()
    }

    /// Forgets `name`, returning its statement if it existed.
    pub fn take(&mut self, name: &str) -> Option<Arc<Statement>> {
        let stmt = self.by_name.remove(name)?;
        self.bytes -= name.len() + stmt.parse.len();
        Some(stmt)
    }

    /// Gives `name` back its statement `stmt`, as before a
    /// [`ClientStatements::take`] that did not happen after all.
    pub fn restore(&mut self, name: String, stmt: Arc<Statement>) {
        let name_len = name.len();
        self.bytes += name_len + stmt.parse.len();
        if let Some(old) = self.by_name.insert(name, stmt) {
            self.bytes -= name_len + old.parse.len();
        }
    }

    /// Moves the client's statement `name`, if it is still `global` at
    /// `from`, to generation `to`: its Parse turned out to describe the
    /// row shape of `to` (the result type changed just before it).
    pub fn restamp(&mut self, name: &str, global: &str, from: u32, to: u32) {
        let Some(stmt) = self.by_name.get_mut(name) else {
            return;
        };
        if *stmt.name == *global && stmt.generation == from {
            *stmt = Arc::new(Statement {
                name: stmt.name.clone(),
                parse: stmt.parse.clone(),
                generation: to,
            });
        }
    }

    /// Every statement with its name, as they are now.
    pub fn snapshot(&self) -> Snapshot {
        let named = self.by_name.iter().map(|(n, s)| (n.clone(), s.clone()));
        named.collect()
    }

    /// Forgets the statements of `snapshot` that are still the same (not
    /// those closed and parsed again since).
    pub fn forget(&mut self, snapshot: Snapshot) {
        for (name, stmt) in snapshot {
            if self.get(&name).is_some_and(|s| Arc::ptr_eq(s, &stmt)) {
                self.remove(&name);
            }
        }
    }

    /// Forgets every statement.
    pub fn clear(&mut self) {
        self.by_name.clear();
        self.bytes = 0;
    }

    /// Most statements the client may have
    /// (`max_client_prepared_statements`).
    pub fn max_statements(&self) -> usize {
        self.limits.max_statements
    }

    /// Number of statements.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// True when the client has no statements.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(definition: &[u8]) -> (Arc<str>, u32) {
        (global_name(definition), 0)
    }

    const LIMITS: Limits = Limits {
        max_statements: 2,
        max_bytes: 100,
    };

    #[test]
    fn forgetting_a_snapshot_spares_statements_parsed_since() {
        let mut buf = BytesMut::new();
        let mut c = ClientStatements::new(LIMITS);
        let def = b"select 1\0\0\0";
        c.add("s1", def, g(def), &mut buf).unwrap();
        c.add("s2", def, g(def), &mut buf).unwrap();
        let snapshot = c.snapshot();
        c.remove("s2");
        c.add("s2", def, g(def), &mut buf).unwrap();
        c.forget(snapshot);
        assert!(c.get("s1").is_none(), "in the snapshot");
        assert!(c.get("s2").is_some(), "parsed again since");
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn same_definition_same_global_name() {
        let mut buf = BytesMut::new();
        let mut a = ClientStatements::new(LIMITS);
        let mut b = ClientStatements::new(LIMITS);
        let x = a
            .add("s1", b"select 1\0\0\0", g(b"select 1\0\0\0"), &mut buf)
            .unwrap();
        let y = b
            .add("other", b"select 1\0\0\0", g(b"select 1\0\0\0"), &mut buf)
            .unwrap();
        let z = b
            .add("s1", b"select 2\0\0\0", g(b"select 2\0\0\0"), &mut buf)
            .unwrap();
        assert_eq!(x.name, y.name);
        assert_ne!(x.name, z.name);
        assert!(x.name.len() < 64, "fits NAMEDATALEN");
        let parse = crate::protocol::Frame::from_raw(x.parse.clone()).unwrap();
        assert_eq!(extended::parse(parse.body()).unwrap().name, &*x.name);
    }

    #[test]
    fn limits_and_duplicates_are_errors() {
        let mut buf = BytesMut::new();
        let mut c = ClientStatements::new(LIMITS);
        c.add("a", b"select 1\0\0\0", g(b"select 1\0\0\0"), &mut buf)
            .unwrap();
        assert_eq!(
            c.add("a", b"select 2\0\0\0", g(b"select 2\0\0\0"), &mut buf)
                .unwrap_err(),
            StatementError::AlreadyExists("a".into())
        );
        c.add("b", b"select 2\0\0\0", g(b"select 2\0\0\0"), &mut buf)
            .unwrap();
        assert_eq!(
            c.add("c", b"x\0\0\0", g(b"x\0\0\0"), &mut buf).unwrap_err(),
            StatementError::TooMany(2)
        );
        assert!(c.remove("a"));
        assert!(!c.remove("a"));
        let big = vec![b'x'; 200];
        assert_eq!(
            c.add("big", &big, g(&big), &mut buf).unwrap_err(),
            StatementError::TooLarge(100)
        );
        let a = c.take("b").unwrap();
        assert_eq!(c.len(), 0);
        c.restore("b".into(), a);
        assert_eq!(c.get("b").map(|s| s.generation), Some(0));
        assert!(c.take("b").is_some() && c.take("b").is_none());
        c.clear();
        assert!(c.is_empty());
    }
}
