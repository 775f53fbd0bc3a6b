//! Upstream health: the `server_check_query` run on a connection that sat
//! idle, and the `server_login_retry` cache of the last failed login.
//!
//! Both follow PgBouncer:
//! * A connection idle for at least `server_check_delay` runs
//!   `server_check_query` before it is handed out (`0s` checks every time,
//!   an empty query never checks). If the check fails or does not answer
//!   within `server_connect_timeout`, the connection is closed and the
//!   client gets another one (a new one if none is idle); the client never
//!   sees the failed check.
//! * After a failed connect or login, a pool does not try again for
//!   `server_login_retry`: its clients get the same error at once. When
//!   the time is up, one attempt is made (others keep getting the cached
//!   error meanwhile); success clears the error, failure restarts the wait.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::backend::{ConnectFailure, ServerConn};
use crate::config::General;

/// The health settings of one pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthSettings {
    /// SQL run on a connection idle for `check_delay`; empty disables it.
    pub check_query: String,
    /// Idle time after which a connection is checked before use.
    pub check_delay: Duration,
    /// How long a failed login is repeated to clients without retrying;
    /// zero retries every time.
    pub login_retry: Duration,
}

impl HealthSettings {
    /// The settings from `[pgtarn]`.
    pub fn from_general(g: &General) -> Self {
        HealthSettings {
            check_query: g.server_check_query.clone(),
            check_delay: g.server_check_delay,
            login_retry: g.server_login_retry,
        }
    }

    /// True if a connection idle since `idle_since` must be checked.
    pub fn needs_check(&self, idle_since: Instant, now: Instant) -> bool {
        !self.check_query.trim().is_empty()
            && now.saturating_duration_since(idle_since) >= self.check_delay
    }
}

/// Runs `query` on `conn` within `limit`; `Err` says why the connection
/// must not be used.
pub async fn check(conn: &mut ServerConn, query: &str, limit: Duration) -> Result<(), String> {
    match tokio::time::timeout(limit, conn.run_internal(query)).await {
        Ok(Ok(None)) if conn.is_reusable() => Ok(()),
        Ok(Ok(None)) => Err("server_check_query left the connection busy".into()),
        Ok(Ok(Some(e))) => Err(format!("server_check_query failed: {}", e.message)),
        Ok(Err(e)) => Err(format!("server_check_query failed: {e}")),
        Err(_) => Err(format!("server_check_query got no answer within {limit:?}")),
    }
}

/// The last failed login of a pool, repeated for `server_login_retry`.
#[derive(Debug, Default)]
pub struct LoginRetry {
    last: Mutex<Option<Failed>>,
}

#[derive(Debug)]
struct Failed {
    failure: ConnectFailure,
    /// No new attempt before this.
    until: Instant,
}

impl LoginRetry {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Failed>> {
        self.last.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The error to repeat instead of connecting, if the last login failed
    /// less than `retry` ago. Once that time is up the caller is let
    /// through to make the one new attempt, and until it reports back (or
    /// `retry` passes again) other callers still get the old error.
    pub fn cached(&self, retry: Duration) -> Option<ConnectFailure> {
        let mut last = self.lock();
        let failed = last.as_mut()?;
        let now = Instant::now();
        if now < failed.until {
            return Some(ConnectFailure {
                cached: true,
                ..failed.failure.clone()
            });
        }
        failed.until = now + retry;
        None
    }

    /// Records a failed attempt: it is repeated for `retry`.
    pub fn failed(&self, failure: &ConnectFailure, retry: Duration) {
        if retry.is_zero() {
            return;
        }
        *self.lock() = Some(Failed {
            failure: failure.clone(),
            until: Instant::now() + retry,
        });
    }

    /// Records a successful login: the next failure starts afresh.
    pub fn succeeded(&self) {
        *self.lock() = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure() -> ConnectFailure {
        ConnectFailure {
            database: "app".into(),
            code: "28P01".into(),
            message: "password authentication failed for user \"app\"".into(),
            cached: false,
        }
    }

    #[test]
    fn a_failure_is_repeated_then_one_attempt_is_let_through() {
        let retry = LoginRetry::default();
        let window = Duration::from_millis(50);
        assert_eq!(retry.cached(window), None, "nothing failed yet");
        retry.failed(&failure(), window);
        let repeated = retry.cached(window).expect("cached");
        assert!(repeated.cached);
        assert_eq!(
            (repeated.code.as_str(), repeated.message),
            ("28P01", failure().message)
        );
        std::thread::sleep(window);
        assert_eq!(retry.cached(window), None, "the one new attempt");
        assert!(retry.cached(window).is_some(), "others wait for it");
        retry.succeeded();
        assert_eq!(retry.cached(window), None);
    }

    #[test]
    fn zero_login_retry_caches_nothing() {
        let retry = LoginRetry::default();
        retry.failed(&failure(), Duration::ZERO);
        assert_eq!(retry.cached(Duration::ZERO), None);
    }

    #[test]
    fn the_check_runs_when_idle_long_enough_and_configured() {
        let mut s = HealthSettings {
            check_query: "SELECT 1".into(),
            check_delay: Duration::ZERO,
            login_retry: Duration::ZERO,
        };
        let idle_since = Instant::now();
        assert!(s.needs_check(idle_since, idle_since));
        s.check_delay = Duration::from_secs(30);
        assert!(!s.needs_check(idle_since, idle_since + Duration::from_secs(29)));
        assert!(s.needs_check(idle_since, idle_since + Duration::from_secs(30)));
        s.check_delay = Duration::ZERO;
        s.check_query = " ".into();
        assert!(!s.needs_check(idle_since, idle_since));
    }
}
