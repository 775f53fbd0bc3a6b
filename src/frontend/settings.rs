//! Finding the session settings a simple query changes, sans-IO.
//!
//! In transaction mode a client's `SET name ...` must follow it to every
//! server that serves it later. [`changed_settings`] reads a query's text
//! for `SET [SESSION] name`, `SET TIME ZONE`, `RESET name`, `RESET ALL` and
//! `DISCARD ALL`; the session then reads the settings' actual values when
//! the transaction ends. `SET LOCAL`, `SET ROLE`, `SET SESSION
//! AUTHORIZATION`, `SET TRANSACTION` and `set_config()` calls are not
//! tracked.

use std::collections::BTreeSet;

/// Settings a query changes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changed {
    /// Names (lower-case) set or reset; a set, so that a query of many
    /// `SET`s is read in linear time.
    pub names: BTreeSet<String>,
    /// `RESET ALL` or `DISCARD ALL`: everything back to the start.
    pub reset_all: bool,
    /// Names whose last change (after the last `RESET ALL`, if any) was
    /// `RESET name` or `SET name TO DEFAULT`.
    resets: BTreeSet<String>,
    /// Names set to a value after the last `RESET ALL` (with `reset_all`).
    kept: BTreeSet<String>,
}

impl Changed {
    /// True when the query changes nothing tracked.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty() && !self.reset_all
    }

    /// The names whose last change was a reset (`RESET name`, `SET name
    /// TO DEFAULT`, or a `RESET ALL` after their last `SET`): back to the
    /// value the client logged in with, if it sent one, not the server's
    /// default.
    pub fn resets(&self) -> Vec<String> {
        let reset =
            |n: &&String| self.resets.contains(*n) || (self.reset_all && !self.kept.contains(*n));
        self.names.iter().filter(reset).cloned().collect()
    }

    /// Adds what `other` changes (it came after). Linear in `other`'s size
    /// (a `RESET ALL` in `other` replaces what came before).
    pub fn merge(&mut self, other: Changed) {
        if other.is_empty() {
            return;
        }
        if other.reset_all {
            self.reset_all = true;
            self.resets = other.resets;
            self.kept = other.kept;
        } else {
            for n in &other.names {
                if other.resets.contains(n) {
                    self.resets.insert(n.clone());
                    self.kept.remove(n);
                } else {
                    self.resets.remove(n);
                    if self.reset_all {
                        self.kept.insert(n.clone());
                    }
                }
            }
        }
        self.names.extend(other.names);
    }
}

/// Cheap pre-check: could `sql` contain a tracked command at all? Looks
/// only where a statement can start, as [`changed_settings`] reads it (the
/// beginning and after each `;`, found with `memchr`), for a word starting
/// `set`, `reset` or `discard`: so `SELECT ...` or `UPDATE t SET ...` costs
/// no statement parsing, and one pass over the bytes.
fn may_change(sql: &[u8]) -> bool {
    std::iter::once(0)
        .chain(memchr::memchr_iter(b';', sql).map(|i| i + 1))
        .any(|start| starts_tracked_word(&sql[start..]))
}

/// True when `s`, after white space, starts with `set`, `reset` or
/// `discard` (any case).
fn starts_tracked_word(s: &[u8]) -> bool {
    let s = s.trim_ascii_start();
    [&b"set"[..], b"reset", b"discard"]
        .iter()
        .any(|w| s.get(..w.len()).is_some_and(|p| p.eq_ignore_ascii_case(w)))
}

/// The settings the simple query `sql` changes.
pub fn changed_settings(sql: &[u8]) -> Option<Changed> {
    if !may_change(sql) {
        return None;
    }
    Some(read_changes(sql)).filter(|c| !c.is_empty())
}

/// [`changed_settings`] without the pre-check.
fn read_changes(sql: &[u8]) -> Changed {
    let mut changed = Changed::default();
    let Ok(text) = std::str::from_utf8(sql) else {
        return changed;
    };
    for statement in split_statements(text) {
        let words = words(statement);
        changed.merge(classify(&words));
    }
    changed
}

fn classify(words: &[String]) -> Changed {
    let lower: Vec<String> = words.iter().map(|w| w.to_ascii_lowercase()).collect();
    let l: Vec<&str> = lower.iter().map(String::as_str).collect();
    let name_at = |i: usize| words.get(i).map(|w| identifier(w));
    let to_default = matches!(
        l.as_slice(),
        ["reset", ..]
            | ["set", _, "to", "default", ..]
            | ["set", _, "default", ..]
            | ["set", "session", _, "to", "default", ..]
            | ["set", "session", _, "default", ..]
            | ["set", "time", "zone", "default" | "local", ..]
            | ["set", "session", "time", "zone", "default" | "local"]
    );
    let one = |name: Option<String>| Changed {
        names: name.iter().cloned().collect(),
        reset_all: false,
        resets: name.filter(|_| to_default).into_iter().collect(),
        kept: BTreeSet::new(),
    };
    match l.as_slice() {
        ["discard", "all", ..] | ["reset", "all", ..] => Changed {
            reset_all: true,
            ..Changed::default()
        },
        ["set" | "reset", "role" | "transaction" | "constraints", ..]
        | [
            "set" | "reset",
            "session",
            "authorization" | "characteristics",
            ..,
        ]
        | ["set", "local", ..] => Changed::default(),
        ["set", "session", "time", "zone", ..] | ["set" | "reset", "time", "zone", ..] => {
            one(Some("timezone".into()))
        }
        ["set", "session", _, ..] => one(name_at(2)),
        ["set" | "reset", _, ..] => one(name_at(1)),
        _ => Changed::default(),
    }
}

/// A GUC name as written: quoted names keep their case, others are folded.
fn identifier(word: &str) -> String {
    let word = word.split(['=']).next().unwrap_or(word);
    match word.strip_prefix('"').and_then(|w| w.strip_suffix('"')) {
        Some(q) => q.replace("\"\"", "\"").to_ascii_lowercase(),
        None => word.to_ascii_lowercase(),
    }
}

/// Splits on `;` outside quotes (single, double, dollar-less). Also splits
/// admin console queries, so that a quoted value may hold a `;`.
pub(crate) fn split_statements(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut quote) = (0, None::<char>);
    for (i, c) in text.char_indices() {
        match (quote, c) {
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, ';') => {
                out.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&text[start..]);
    out
}

/// The leading words of a statement (split on white space and `=`).
fn words(statement: &str) -> Vec<String> {
    statement
        .split(|c: char| c.is_ascii_whitespace() || c == '=')
        .filter(|w| !w.is_empty())
        .take(5)
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pre_check_skips_only_statements_without_set_or_discard() {
        assert!(!may_change(
            b"SELECT abalance FROM pgbench_accounts WHERE aid = 1"
        ));
        assert!(!may_change(b""));
        for (sql, may) in [
            (&b"SET x = 1"[..], true),
            (b"  reset all", true),
            (b"RESET ALL", true),
            (b"BEGIN; SET x = 1", true),
            (b"select 1;\n\tsEt x to 2", true),
            (b"x; discard all", true),
            (b"DISCARD", true),
            (b"update t sEt a = 1", false),
            (b"select set_config('a', 'b', false)", false),
            (b"select 'reset'", false),
            (b"xs", false),
            (b"se", false),
            (b"et", false),
            (b"discar", false),
            (b"iscard", false),
            (b"t", false),
            (b"r", false),
        ] {
            assert_eq!(may_change(sql), may, "{}", String::from_utf8_lossy(sql));
        }
    }

    #[test]
    fn the_pre_check_passes_everything_the_reader_finds() {
        let heads = [
            "",
            " ",
            "\n\t",
            "select 1;",
            "select ';'; ",
            "update t ",
            "x = 'a;b'; ",
        ];
        let bodies = [
            "set a = 1",
            "SET SESSION b TO 2",
            "Set time zone 'UTC'",
            "reset c",
            "RESET ALL",
            "discard all",
            "set local d = 1",
            "setx",
            "select set_config('e', '1', false)",
        ];
        for head in heads {
            for body in bodies {
                for tail in ["", ";", "; select 2"] {
                    let sql = format!("{head}{body}{tail}");
                    if !read_changes(sql.as_bytes()).is_empty() {
                        assert!(may_change(sql.as_bytes()), "{sql}");
                    }
                }
            }
        }
    }

    fn names(sql: &str) -> Vec<String> {
        changed_settings(sql.as_bytes())
            .unwrap_or_default()
            .names
            .into_iter()
            .collect()
    }

    #[test]
    fn finds_set_and_reset_targets() {
        assert_eq!(names("SET search_path TO a, b"), ["search_path"]);
        assert_eq!(names("set application_name='x'"), ["application_name"]);
        assert_eq!(
            names("SET SESSION statement_timeout = 5"),
            ["statement_timeout"]
        );
        assert_eq!(names("set time zone 'UTC'"), ["timezone"]);
        assert_eq!(names("SET \"Work_Mem\" = '8MB'"), ["work_mem"]);
        assert_eq!(
            names("begin; set a.b = 1; set c to 2; commit"),
            ["a.b", "c"]
        );
        assert_eq!(names("RESET search_path"), ["search_path"]);
        assert_eq!(names("select 'set x = 1; set y = 2'"), Vec::<String>::new());
    }

    #[test]
    fn ignores_what_is_not_session_state() {
        for sql in [
            "SET LOCAL search_path = a",
            "SET ROLE admin",
            "SET SESSION AUTHORIZATION bob",
            "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            "SET CONSTRAINTS ALL DEFERRED",
            "select * from settings",
            "update t set x = 1",
        ] {
            assert!(
                changed_settings(sql.as_bytes())
                    .unwrap_or_default()
                    .is_empty(),
                "{sql}"
            );
        }
    }

    #[test]
    fn finds_what_goes_back_to_the_login_value() {
        let resets = |sql: &str| {
            changed_settings(sql.as_bytes())
                .unwrap_or_default()
                .resets()
        };
        assert_eq!(resets("RESET work_mem"), ["work_mem"]);
        assert_eq!(resets("set work_mem to default"), ["work_mem"]);
        assert_eq!(resets("SET SESSION work_mem = DEFAULT"), ["work_mem"]);
        assert_eq!(resets("set time zone local"), ["timezone"]);
        assert_eq!(resets("set work_mem = '1MB'"), Vec::<String>::new());
        assert_eq!(
            resets("reset a; set a = 1; set b = 2"),
            Vec::<String>::new()
        );
        assert_eq!(resets("set a = 1; reset all; set b = 2"), ["a"]);
        assert_eq!(resets("reset all; set a = 1; reset a"), ["a"]);
        assert_eq!(resets("set a = 1; set b = 1; reset all; set b = 2"), ["a"]);
        // Across queries of one transaction, as the session merges them.
        let mut t = changed_settings(b"set a = 1; reset all").unwrap_or_default();
        t.merge(changed_settings(b"set a = 2").unwrap_or_default());
        assert_eq!(t.resets(), Vec::<String>::new());
        t.merge(changed_settings(b"reset all; reset b").unwrap_or_default());
        assert_eq!(t.resets(), ["a", "b"]);
        // Many RESET ALLs between many SETs stay linear.
        let sql: String = (0..50_000)
            .map(|i| format!("set s.x{i} = 1; reset all; "))
            .collect();
        let started = std::time::Instant::now();
        assert_eq!(
            changed_settings(sql.as_bytes())
                .unwrap_or_default()
                .resets()
                .len(),
            50_000
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn reset_all_and_discard_all_reset_everything() {
        assert!(changed_settings(b"RESET ALL").unwrap_or_default().reset_all);
        assert!(
            changed_settings(b"discard all;")
                .unwrap_or_default()
                .reset_all
        );
        assert!(
            !changed_settings(b"discard plans")
                .unwrap_or_default()
                .reset_all
        );
    }
}
