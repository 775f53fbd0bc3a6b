//! Client session parameters, sans-IO.
//!
//! A client's startup parameters (application_name, client_encoding,
//! DateStyle, TimeZone, search_path, `options=-c name=value`, ...) are
//! settings it expects on whichever server serves it. [`ClientParams`]
//! holds them; [`ClientParams::sync_sql`] computes the one statement that
//! makes a server's settings match before the client's transaction runs.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use crate::protocol::encode;

/// Why a client's startup parameters are refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParamError {
    /// Something in `options` other than `-c name=value` / `--name=value`.
    #[error("unsupported startup option: {0}")]
    UnsupportedOption(String),
    /// A name that is not a valid setting name.
    #[error("invalid setting name: {0:?}")]
    InvalidName(String),
    /// A replication connection.
    #[error("replication connections are not supported by pgtarn")]
    Replication,
}

/// Lower-case setting name → (name as sent, value).
pub type Wanted = BTreeMap<String, (String, String)>;

/// Startup parameters that name settings (`options` included), in order.
fn setting_params<'a>(
    params: impl Iterator<Item = (&'a str, &'a str)>,
) -> impl Iterator<Item = (&'a str, &'a str)> {
    params.filter(|(k, _)| !k.starts_with("_pq_.") && *k != "user" && *k != "database")
}

/// True if `raw` holds exactly the pairs of `pairs`, in order.
fn same_pairs<'a>(
    raw: &[(String, String)],
    mut pairs: impl Iterator<Item = (&'a str, &'a str)>,
) -> bool {
    let mut raw = raw.iter();
    loop {
        match (raw.next(), pairs.next()) {
            (None, None) => return true,
            (Some((rk, rv)), Some((k, v))) if rk == k && rv == v => {}
            _ => return false,
        }
    }
}

/// The settings map for `params`, built by `build`, or the one an earlier
/// client on this thread logged in with if its setting parameters were the
/// same. Clients of one application usually log in with identical
/// settings: they then share one `Arc` (no map is built, and checkout sees
/// that a server is already in line with a client by comparing pointers).
/// Changes during a session copy the map first (`Arc::make_mut`).
fn shared<'a>(
    params: impl Iterator<Item = (&'a str, &'a str)> + Clone,
    build: impl FnOnce() -> Result<Wanted, ParamError>,
) -> Result<Arc<Wanted>, ParamError> {
    type Last = Option<(Vec<(String, String)>, Arc<Wanted>)>;
    thread_local! {
        static LAST: RefCell<Last> = const { RefCell::new(None) };
    }
    let hit = LAST.with(|last| match last.borrow().as_ref() {
        Some((raw, map)) if same_pairs(raw, setting_params(params.clone())) => Some(map.clone()),
        _ => None,
    });
    if let Some(map) = hit {
        return Ok(map);
    }
    let map = Arc::new(build()?);
    let raw = setting_params(params)
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    LAST.with(|last| *last.borrow_mut() = Some((raw, map.clone())));
    Ok(map)
}

/// The settings one client asked for at startup.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientParams {
    /// Lower-case name → (name as sent, value); shared with the servers
    /// last brought in line with it (see [`ClientParams::snapshot`]).
    wanted: Arc<Wanted>,
    /// The settings from the startup packet (what `RESET ALL` returns to).
    startup: Arc<Wanted>,
}

impl ClientParams {
    /// Collects the settings from a StartupMessage's parameters.
    pub fn from_startup<'a>(
        params: impl Iterator<Item = (&'a str, &'a str)> + Clone,
    ) -> Result<ClientParams, ParamError> {
        if params.clone().any(|(k, _)| k == "replication") {
            return Err(ParamError::Replication);
        }
        let startup = shared(params.clone(), || {
            let mut map = Wanted::new();
            for (k, v) in setting_params(params.clone()).filter(|(k, _)| *k != "options") {
                insert(&mut map, k, v)?;
            }
            if let Some((_, opts)) = params.clone().find(|(k, _)| *k == "options") {
                for (k, v) in parse_options(opts)? {
                    insert(&mut map, &k, &v)?;
                }
            }
            Ok(map)
        })?;
        Ok(ClientParams {
            wanted: startup.clone(),
            startup,
        })
    }

    /// Records a value the client set during its session (`name` is
    /// lower-case).
    pub fn set(&mut self, name: &str, value: &str) {
        Arc::make_mut(&mut self.wanted)
            .insert(name.to_owned(), (name.to_owned(), value.to_owned()));
    }

    /// Sets `name` (lower-case) as if the client had sent it at startup,
    /// so that `RESET` returns to it; only at login (no change pending).
    pub fn set_at_login(&mut self, name: &str, value: &str) {
        let entry = (name.to_owned(), value.to_owned());
        Arc::make_mut(&mut self.startup).insert(name.to_owned(), entry);
        self.wanted = self.startup.clone();
    }

    /// Forgets a setting (it no longer exists, e.g. a custom one reset).
    pub fn remove(&mut self, name: &str) {
        Arc::make_mut(&mut self.wanted).remove(name);
    }

    /// Back to the startup value of `name` (lower-case), if the client sent
    /// one (`RESET name`); false if it did not.
    pub fn reset(&mut self, name: &str) -> bool {
        let Some(value) = self.startup.get(name) else {
            return false;
        };
        Arc::make_mut(&mut self.wanted).insert(name.to_owned(), value.clone());
        true
    }

    /// Back to the startup settings (`RESET ALL`, `DISCARD ALL`).
    pub fn reset_to_startup(&mut self) {
        self.wanted = self.startup.clone();
    }

    /// The settings wanted now, shared: a server that was brought in line
    /// with an equal snapshot and has not changed since needs no sync.
    pub fn snapshot(&self) -> Arc<Wanted> {
        self.wanted.clone()
    }

    /// The value the client asked for, by case-insensitive name.
    pub fn get(&self, name: &str) -> Option<&str> {
        // A linear, allocation-free scan: this runs for every reported
        // parameter at every login, over the few settings a client sent.
        self.wanted
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, (_, v))| v.as_str())
    }

    /// The ParameterStatus set to report at login: the server defaults,
    /// with the client's own values where it set a reported parameter.
    pub fn login_report<'a>(
        &'a self,
        defaults: &'a [(String, String)],
    ) -> impl Iterator<Item = (&'a str, &'a str)> {
        defaults
            .iter()
            .map(|(k, v)| (k.as_str(), self.get(k).unwrap_or(v)))
    }

    /// Appends [`ClientParams::login_report`] to `out` as ParameterStatus
    /// messages. The encoding is kept per thread for the last (defaults,
    /// settings) pair: clients of one application share both `Arc`s, so a
    /// login usually copies the bytes instead of encoding ~14 messages.
    pub fn encode_login_report(&self, defaults: &Arc<Vec<(String, String)>>, out: &mut BytesMut) {
        type Last = Option<(Arc<Vec<(String, String)>>, Arc<Wanted>, Bytes)>;
        thread_local! {
            static LAST: RefCell<Last> = const { RefCell::new(None) };
        }
        LAST.with(|last| {
            let mut last = last.borrow_mut();
            if let Some((d, w, bytes)) = last.as_ref()
                && Arc::ptr_eq(d, defaults)
                && Arc::ptr_eq(w, &self.wanted)
            {
                out.extend_from_slice(bytes);
                return;
            }
            let start = out.len();
            for (k, v) in self.login_report(defaults) {
                encode::parameter_status(out, k, v);
            }
            let bytes = Bytes::copy_from_slice(&out[start..]);
            *last = Some((defaults.clone(), self.wanted.clone(), bytes));
        })
    }

    /// The SQL that brings a server whose known settings are `current`
    /// (lower-case names) to what this client wants, given the pool's login
    /// `defaults`; also updates `current`. `None` when nothing differs.
    pub fn sync_sql(
        &self,
        current: &mut BTreeMap<String, String>,
        defaults: &[(String, String)],
    ) -> Option<String> {
        let mut sets = Vec::new();
        let mut resets = Vec::new();
        for (key, (name, value)) in self.wanted.iter() {
            if current.get(key) != Some(value) {
                sets.push(format!(
                    "pg_catalog.set_config({}, {}, false)",
                    quote(name),
                    quote(value)
                ));
                current.insert(key.clone(), value.clone());
            }
        }
        let stale: Vec<String> = current
            .keys()
            .filter(|k| !self.wanted.contains_key(*k))
            .filter(|k| default_of(defaults, k) != current.get(*k).map(String::as_str))
            .cloned()
            .collect();
        // Back to the login value where there is one (set, not `RESET`:
        // the login value may be `connect_query`'s, which `RESET` undoes).
        for key in stale {
            match default_of(defaults, &key) {
                Some(d) => {
                    sets.push(format!(
                        "pg_catalog.set_config({}, {}, false)",
                        quote(&key),
                        quote(d)
                    ));
                    current.insert(key, d.to_owned());
                }
                None => {
                    resets.push(format!("RESET {}", quote_ident(&key)));
                    current.remove(&key);
                }
            }
        }
        if sets.is_empty() && resets.is_empty() {
            return None;
        }
        let mut sql = String::new();
        if !sets.is_empty() {
            sql = format!("SELECT {}", sets.join(", "));
        }
        for r in resets {
            if !sql.is_empty() {
                sql.push_str("; ");
            }
            sql.push_str(&r);
        }
        Some(sql)
    }
}

/// Adds a startup setting to `map`, checking its name.
fn insert(map: &mut Wanted, name: &str, value: &str) -> Result<(), ParamError> {
    let valid = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
    if !valid {
        return Err(ParamError::InvalidName(name.to_owned()));
    }
    let key = name.to_ascii_lowercase();
    map.insert(key, (name.to_owned(), value.to_owned()));
    Ok(())
}

fn default_of<'a>(defaults: &'a [(String, String)], key: &str) -> Option<&'a str> {
    defaults
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v.as_str())
}

/// A SQL string literal.
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A SQL identifier.
fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Parses libpq's `options`: whitespace-separated `-c name=value`,
/// `-cname=value` or `--name=value`, with `\` escaping the next character.
pub fn parse_options(opts: &str) -> Result<Vec<(String, String)>, ParamError> {
    let words = split_words(opts);
    let mut out = Vec::new();
    let mut i = 0;
    while i < words.len() {
        let w = &words[i];
        let assignment = if w == "-c" {
            i += 1;
            words
                .get(i)
                .cloned()
                .ok_or_else(|| ParamError::UnsupportedOption(w.clone()))?
        } else if let Some(rest) = w.strip_prefix("--").or_else(|| w.strip_prefix("-c")) {
            rest.to_owned()
        } else {
            return Err(ParamError::UnsupportedOption(w.clone()));
        };
        let (k, v) = assignment
            .split_once('=')
            .ok_or_else(|| ParamError::UnsupportedOption(assignment.clone()))?;
        out.push((k.replace('-', "_"), v.to_owned()));
        i += 1;
    }
    Ok(out)
}

fn split_words(s: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => cur.extend(chars.next()),
            c if c.is_ascii_whitespace() => {
                if !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(v: &[(String, String)]) -> impl Iterator<Item = (&str, &str)> + Clone {
        v.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    fn startup(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn options_are_parsed_like_postgres() {
        let o =
            parse_options(r"-c search_path=a,b  -cstatement_timeout=5s --work-mem=4MB -c x=a\ b")
                .unwrap();
        let names: Vec<_> = o.iter().map(|(k, v)| format!("{k}={v}")).collect();
        assert_eq!(
            names,
            [
                "search_path=a,b",
                "statement_timeout=5s",
                "work_mem=4MB",
                "x=a b"
            ]
        );
        assert!(parse_options("-D /tmp").is_err());
        assert!(parse_options("-c").is_err());
        assert!(parse_options("-c noequals").is_err());
    }

    #[test]
    fn equal_startup_settings_share_one_snapshot_until_one_changes() {
        let s = startup(&[("user", "u"), ("application_name", "shared-test")]);
        let mut a = ClientParams::from_startup(pairs(&s)).unwrap();
        let b = ClientParams::from_startup(pairs(&s)).unwrap();
        assert!(Arc::ptr_eq(&a.snapshot(), &b.snapshot()));
        a.set("application_name", "changed");
        assert_eq!(a.get("application_name"), Some("changed"));
        assert_eq!(b.get("application_name"), Some("shared-test"));
        assert!(!Arc::ptr_eq(&a.snapshot(), &b.snapshot()));
        let other =
            ClientParams::from_startup(pairs(&startup(&[("application_name", "x")]))).unwrap();
        assert!(!Arc::ptr_eq(&other.snapshot(), &b.snapshot()));
        assert_eq!(b.get("application_name"), Some("shared-test"));
    }

    #[test]
    fn startup_params_become_settings() {
        let p = ClientParams::from_startup(pairs(&startup(&[
            ("user", "u"),
            ("database", "d"),
            ("application_name", "app1"),
            ("options", "-c search_path=s1"),
            ("_pq_.x", "1"),
        ])))
        .unwrap();
        assert_eq!(p.get("APPLICATION_NAME"), Some("app1"));
        assert_eq!(p.get("search_path"), Some("s1"));
        assert_eq!(p.get("user"), None);
        assert_eq!(
            ClientParams::from_startup(pairs(&startup(&[("replication", "true")]))),
            Err(ParamError::Replication)
        );
        assert!(ClientParams::from_startup(pairs(&startup(&[("bad name;", "x")]))).is_err());
    }

    #[test]
    fn sync_sets_what_differs_and_resets_what_others_left() {
        let defaults = startup(&[("application_name", ""), ("TimeZone", "UTC")]);
        let mut current: BTreeMap<String, String> = [
            ("application_name".to_string(), String::new()),
            ("timezone".into(), "UTC".into()),
        ]
        .into();
        let a = ClientParams::from_startup(pairs(&startup(&[
            ("application_name", "it's"),
            ("search_path", "s"),
        ])))
        .unwrap();
        let sql = a.sync_sql(&mut current, &defaults).unwrap();
        assert_eq!(
            sql,
            "SELECT pg_catalog.set_config('application_name', 'it''s', false), \
             pg_catalog.set_config('search_path', 's', false)"
        );
        assert_eq!(a.sync_sql(&mut current, &defaults), None, "already in sync");
        let b = ClientParams::default();
        let sql = b.sync_sql(&mut current, &defaults).unwrap();
        assert_eq!(
            sql,
            "SELECT pg_catalog.set_config('application_name', '', false); \
             RESET \"search_path\""
        );
        assert_eq!(
            current.get("application_name").map(String::as_str),
            Some("")
        );
        assert!(!current.contains_key("search_path"));
        assert_eq!(b.sync_sql(&mut current, &defaults), None);
    }

    #[test]
    fn login_report_overrides_defaults_with_client_values() {
        let defaults = startup(&[("application_name", ""), ("server_version", "15")]);
        let p = ClientParams::from_startup(pairs(&startup(&[("application_name", "x")]))).unwrap();
        let report: Vec<(&str, &str)> = p.login_report(&defaults).collect();
        assert_eq!(
            report,
            [("application_name", "x"), ("server_version", "15")]
        );
        assert_eq!(p.get("Application_Name"), Some("x"));
        let long = "x".repeat(100);
        assert_eq!(p.get(&long), None);
    }

    #[test]
    fn encoded_login_report_is_reused_only_for_the_same_snapshots() {
        let defaults = Arc::new(startup(&[("application_name", ""), ("TimeZone", "UTC")]));
        let encode = |p: &ClientParams, d: &Arc<Vec<(String, String)>>| {
            let mut out = BytesMut::from(&b"prefix"[..]);
            p.encode_login_report(d, &mut out);
            let mut want = BytesMut::from(&b"prefix"[..]);
            for (k, v) in p.login_report(d) {
                encode::parameter_status(&mut want, k, v);
            }
            assert_eq!(out, want);
            out
        };
        let a = ClientParams::from_startup(pairs(&startup(&[("application_name", "report-a")])))
            .unwrap();
        let first = encode(&a, &defaults);
        assert_eq!(encode(&a, &defaults), first);
        let b = ClientParams::from_startup(pairs(&startup(&[("application_name", "report-b")])))
            .unwrap();
        assert_ne!(encode(&b, &defaults), first);
        let other_defaults = Arc::new(startup(&[("application_name", ""), ("TimeZone", "CET")]));
        assert_ne!(encode(&b, &other_defaults), encode(&b, &defaults));
    }
}
