//! `SET key = value` on the console, as in PgBouncer: changes one
//! `[pgtarn]` setting of the running configuration, with the same checks
//! and effects as a reload, until the next `RELOAD` re-reads the file.

use crate::Context;
use crate::config::General;
use crate::protocol::sqlstate as code;

use super::command::Refusal;
use super::show::RESTART_ONLY;

/// `cant_change_runtime_param`, as Postgres answers for its own settings.
const CANT_CHANGE_RUNTIME_PARAM: &str = "55P02";
/// `invalid_parameter_value`.
const INVALID_PARAMETER_VALUE: &str = "22023";

/// Splits `key = value` or `key TO value` (what follows `SET`); a value
/// in single quotes is an SQL literal (`''` is one quote).
pub fn split(rest: &str) -> Option<(String, String)> {
    let rest = rest.trim().trim_end_matches(';').trim_end();
    // The key is one word; an `=` inside the value is the value's.
    let end = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(rest.len());
    let (key, after) = rest.split_at(end);
    let after = after.trim_start();
    let value = match after.strip_prefix('=') {
        Some(v) => v,
        None => {
            let to = after.get(..2).filter(|w| w.eq_ignore_ascii_case("to"))?;
            after[to.len()..].strip_prefix(char::is_whitespace)?
        }
    };
    let value = value.trim();
    if key.is_empty() || value.is_empty() {
        return None;
    }
    Some((key.to_ascii_lowercase(), unquote(value)))
}

fn unquote(value: &str) -> String {
    match value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')) {
        Some(inner) => inner.replace("''", "'"),
        None => value.to_owned(),
    }
}

/// Applies `key = value` to the running configuration.
pub fn apply(ctx: &Context, key: &str, value: &str) -> Result<(), Refusal> {
    if RESTART_ONLY.contains(&key) {
        let message = format!("parameter \"{key}\" cannot be changed without restarting pgtarn");
        return Err(Refusal::new(CANT_CHANGE_RUNTIME_PARAM, message, None));
    }
    let _one_change = ctx.lock_config_changes();
    let config = ctx.config();
    let general = with_setting(&config.pgtarn, key, value)?;
    let mut new = (*config).clone();
    new.pgtarn = general;
    ctx.apply(new).map_err(|e| invalid(key, &e))?;
    // `[pgtarn]` holds no secrets: the value can be logged.
    tracing::info!(%key, %value, "setting changed by SET on the admin console");
    Ok(())
}

/// `general` with `key` set to `value`, typed as the setting's current or
/// default value is (text, number, on/off, or a comma-separated list); an
/// empty value unsets an optional setting.
fn with_setting(general: &General, key: &str, value: &str) -> Result<General, Refusal> {
    let to_table = |g: &General| match toml::Value::try_from(g) {
        Ok(toml::Value::Table(t)) => t,
        _ => toml::Table::new(),
    };
    let mut table = to_table(general);
    let defaults = to_table(&General::default());
    // An optional setting (none by default) is unset by an empty value.
    if value.is_empty() && !defaults.contains_key(key) && table.contains_key(key) {
        table.remove(key);
    } else {
        let like = table.get(key).or_else(|| defaults.get(key));
        table.insert(key.to_owned(), typed(like, value));
    }
    match toml::Value::Table(table).try_into::<General>() {
        Ok(g) => Ok(g),
        Err(e) if e.message().contains("unknown field") => Err(Refusal::new(
            code::UNDEFINED_OBJECT,
            format!("unrecognized configuration parameter \"{key}\""),
            Some("SHOW CONFIG lists them."),
        )),
        Err(e) => Err(invalid(key, e.message())),
    }
}

fn typed(like: Option<&toml::Value>, text: &str) -> toml::Value {
    use toml::Value;
    let text_value = || Value::String(text.to_owned());
    match like {
        Some(Value::Integer(_)) => text.parse().map_or_else(|_| text_value(), Value::Integer),
        Some(Value::Boolean(_)) => match text.to_ascii_lowercase().as_str() {
            "1" | "on" | "true" | "yes" => Value::Boolean(true),
            "0" | "off" | "false" | "no" => Value::Boolean(false),
            _ => text_value(),
        },
        // A duration written as a bare number means seconds, as in
        // PgBouncer's file (`SET query_timeout = 5`, `= 0.5`).
        Some(Value::String(s)) if humantime::parse_duration(s).is_ok() => {
            match text.parse::<f64>() {
                Ok(secs) if secs >= 0.0 => Value::String(format!("{}ms", (secs * 1000.0).round())),
                _ => text_value(),
            }
        }
        Some(Value::Array(_)) => Value::Array(
            text.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| Value::String(s.to_owned()))
                .collect(),
        ),
        _ => text_value(),
    }
}

fn invalid(key: &str, why: &str) -> Refusal {
    let message = format!("invalid value for parameter \"{key}\": {why}");
    Refusal::new(INVALID_PARAMETER_VALUE, message, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_splits_like_pgbouncer_and_postgres() {
        let kv = |k: &str, v: &str| Some((k.to_owned(), v.to_owned()));
        assert_eq!(split(" query_timeout = '5s';"), kv("query_timeout", "5s"));
        assert_eq!(split("max_client_conn TO 50"), kv("max_client_conn", "50"));
        let check = split("server_check_query = 'select ''x'''");
        assert_eq!(check, kv("server_check_query", "select 'x'"));
        assert_eq!(split("Admin_Users = 'a, b'"), kv("admin_users", "a, b"));
        assert_eq!(split("max_client_conn"), None);
        assert_eq!(split("max_client_conn 50"), None);
        let eq = split("server_check_query TO 'select ''a=b'''");
        assert_eq!(
            eq,
            kv("server_check_query", "select 'a=b'"),
            "= inside the value"
        );
        assert_eq!(split("query_timeout TO5"), None);
        assert_eq!(split("= 5"), None);
    }

    #[test]
    fn values_take_the_settings_type() {
        let g = General::default();
        let set = |k: &str, v: &str| with_setting(&g, k, v);
        assert_eq!(set("max_client_conn", "50").unwrap().max_client_conn, 50);
        assert!(!set("tcp_keepalive", "off").unwrap().tcp_keepalive);
        let timeout = set("query_timeout", "2s").unwrap().query_timeout;
        assert_eq!(timeout, std::time::Duration::from_secs(2));
        let bare = set("query_timeout", "5").unwrap().query_timeout;
        assert_eq!(
            bare,
            std::time::Duration::from_secs(5),
            "seconds, as in PgBouncer"
        );
        let half = set("query_wait_timeout", "0.5").unwrap().query_wait_timeout;
        assert_eq!(half, std::time::Duration::from_millis(500));
        assert_eq!(set("query_timeout", "-1").unwrap_err().code, "22023");
        let admins = set("admin_users", "a, b").unwrap().admin_users;
        assert_eq!(admins, ["a", "b"]);
        let auth_user = set("auth_user", "finder").unwrap().auth_user;
        assert_eq!(auth_user.as_deref(), Some("finder"));
        assert_eq!(set("max_client_conn", "many").unwrap_err().code, "22023");
        assert_eq!(set("no_such_thing", "1").unwrap_err().code, "42704");
    }

    /// An optional setting (default: none) set to `''` is unset again, as
    /// in PgBouncer (`SET auth_user = ''` turns auth_query off): before,
    /// it became `Some("")`, which the reload path refuses.
    #[test]
    fn an_empty_value_unsets_an_optional_setting() {
        let g = General {
            auth_user: Some("finder".into()),
            ..General::default()
        };
        let unset = with_setting(&g, "auth_user", "").unwrap();
        assert_eq!(unset.auth_user, None);
        let check = with_setting(&g, "server_check_query", "").unwrap();
        assert_eq!(check.server_check_query, "", "an empty text stays empty");
    }
}
