//! Per-pool statistics: metric handles resolved once, live counts, and
//! the longest current wait.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use prometheus::{Histogram, IntCounter, IntCounterVec};

use super::Metrics;

/// One pool's counters and histograms (shared by `/metrics` and the admin
/// console) and its live client counts.
#[derive(Debug)]
pub struct PoolStats {
    labels: [String; 3],
    /// Checkout waits.
    pub wait: Histogram,
    /// Transaction durations.
    pub transaction: Histogram,
    /// Query durations.
    pub query: Histogram,
    /// Bytes received from clients.
    pub received: IntCounter,
    /// Bytes sent to clients.
    pub sent: IntCounter,
    /// Successful client logins.
    pub logins: IntCounter,
    /// Server connections opened.
    pub opened: IntCounter,
    /// `query_wait_timeout`s.
    pub wait_timeouts: IntCounter,
    transactions: IntCounter,
    queries: IntCounter,
    closed: IntCounterVec,
    errors: IntCounterVec,
    tls: IntCounterVec,
    /// Logged-in clients of this pool.
    pub clients: AtomicUsize,
    /// Server connections being opened.
    pub connecting: AtomicUsize,
    waiters: Mutex<BTreeMap<u64, Instant>>,
    next_waiter: AtomicU64,
    period: Mutex<Period>,
}

/// Why a server connection was closed: the log line says
/// [`CloseReason::text`], the metric's `reason` label [`CloseReason::label`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// Older than `server_lifetime`.
    Lifetime,
    /// Unused for `server_idle_timeout` above `min_pool_size`.
    IdleTimeout,
    /// Released while not idle (e.g. a client left inside a transaction).
    Dirty,
    /// Closed by the server, or unexpected input, found at checkout or
    /// while idle.
    Broken,
    /// `server_check_query` failed or did not answer.
    CheckFailed,
    /// The client's session ended with an error while holding it.
    ClientError,
    /// `server_reset_query` failed (session mode).
    ResetFailed,
    /// Admin `RECONNECT`, or a reload that retired the pool.
    Reconnect,
    /// A reload reduced `pool_size`.
    Resize,
}

impl CloseReason {
    /// The `reason` label value.
    pub fn label(self) -> &'static str {
        match self {
            CloseReason::Lifetime => "lifetime",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::Dirty => "dirty",
            CloseReason::Broken => "broken",
            CloseReason::CheckFailed => "check_failed",
            CloseReason::ClientError => "client_error",
            CloseReason::ResetFailed => "reset_failed",
            CloseReason::Reconnect => "reconnect",
            CloseReason::Resize => "resize",
        }
    }

    /// The wording in the log line.
    pub fn text(self) -> &'static str {
        match self {
            CloseReason::Lifetime => "server_lifetime reached",
            CloseReason::IdleTimeout => "server_idle_timeout reached",
            CloseReason::Dirty => "released while not idle",
            CloseReason::Broken => "closed by the server or unexpected input",
            CloseReason::CheckFailed => "server_check_query failed",
            CloseReason::ClientError => "session ended with an error",
            CloseReason::ResetFailed => "server_reset_query failed",
            CloseReason::Reconnect => "closed by RECONNECT or reload",
            CloseReason::Resize => "pool_size reduced",
        }
    }
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.text())
    }
}

/// Cumulative figures, as `SHOW STATS` reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StatsTotals {
    /// Transactions completed.
    pub xact_count: u64,
    /// Queries completed.
    pub query_count: u64,
    /// Bytes from clients.
    pub received: u64,
    /// Bytes to clients.
    pub sent: u64,
    /// Time spent in transactions, µs.
    pub xact_time_us: u64,
    /// Time spent in queries, µs.
    pub query_time_us: u64,
    /// Time clients waited for servers, µs.
    pub wait_time_us: u64,
}

#[derive(Debug, Default)]
struct Period {
    started: Option<Instant>,
    at_start: StatsTotals,
    averages: StatsTotals,
}

fn micros(h: &Histogram) -> u64 {
    (h.get_sample_sum() * 1e6).round() as u64
}

impl PoolStats {
    /// Handles for the pool (`database`, `user`, `pool_mode`).
    pub fn new(m: &Metrics, database: &str, user: &str, mode: &str) -> PoolStats {
        let l = [database, user, mode];
        PoolStats {
            labels: [database.into(), user.into(), mode.into()],
            wait: m.wait.with_label_values(&l),
            transaction: m.transaction.with_label_values(&l),
            query: m.query.with_label_values(&l),
            received: m.received.with_label_values(&l),
            sent: m.sent.with_label_values(&l),
            logins: m.logins.with_label_values(&l),
            opened: m.opened.with_label_values(&l),
            wait_timeouts: m.wait_timeouts.with_label_values(&l),
            transactions: m.transactions.with_label_values(&l),
            queries: m.queries.with_label_values(&l),
            closed: m.closed.clone(),
            errors: m.errors.clone(),
            tls: m.tls_handshakes.clone(),
            clients: AtomicUsize::new(0),
            connecting: AtomicUsize::new(0),
            waiters: Mutex::new(BTreeMap::new()),
            next_waiter: AtomicU64::new(0),
            period: Mutex::default(),
        }
    }

    /// The pool's label values: database, user, pool_mode.
    pub fn labels(&self) -> [&str; 3] {
        [&self.labels[0], &self.labels[1], &self.labels[2]]
    }

    /// Records a finished query.
    pub fn query_done(&self, took: Duration) {
        self.queries.inc();
        self.query.observe(took.as_secs_f64());
    }

    /// Records a finished transaction.
    pub fn transaction_done(&self, took: Duration) {
        self.transactions.inc();
        self.transaction.observe(took.as_secs_f64());
    }

    /// Records a closed server connection.
    pub fn server_closed(&self, reason: CloseReason) {
        let [d, u, m] = self.labels();
        self.closed
            .with_label_values(&[d, u, m, reason.label()])
            .inc();
    }

    /// Records a TLS handshake with Postgres.
    pub fn server_tls(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.tls.with_label_values(&["server", result]).inc();
    }

    /// Records an ErrorResponse sent to a client (`code` is the SQLSTATE).
    pub fn error(&self, code: &str) {
        let class = code.get(..2).unwrap_or("XX");
        let [d, u, m] = self.labels();
        self.errors.with_label_values(&[d, u, m, class]).inc();
    }

    /// Marks a client as waiting for a server until the returned guard drops.
    pub fn start_wait(&self) -> Waiting<'_> {
        let id = self.next_waiter.fetch_add(1, Ordering::Relaxed);
        self.lock_waiters().insert(id, Instant::now());
        Waiting { stats: self, id }
    }

    fn lock_waiters(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Instant>> {
        self.waiters.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Clients waiting for a server now.
    pub fn waiting(&self) -> usize {
        self.lock_waiters().len()
    }

    /// How long the longest-waiting client has waited (zero if none).
    pub fn max_wait(&self) -> Duration {
        let w = self.lock_waiters();
        w.values().next().map(Instant::elapsed).unwrap_or_default()
    }

    /// Cumulative totals.
    pub fn totals(&self) -> StatsTotals {
        StatsTotals {
            xact_count: self.transactions.get(),
            query_count: self.queries.get(),
            received: self.received.get(),
            sent: self.sent.get(),
            xact_time_us: micros(&self.transaction),
            query_time_us: micros(&self.query),
            wait_time_us: micros(&self.wait),
        }
    }

    /// Averages over the last complete `period`: counts and bytes per
    /// second, times per transaction or query (µs), wait per transaction.
    pub fn averages(&self, period: Duration) -> StatsTotals {
        let mut p = self.period.lock().unwrap_or_else(|p| p.into_inner());
        let now = self.totals();
        let started = *p.started.get_or_insert_with(Instant::now);
        let secs = started.elapsed().as_secs_f64();
        if secs >= period.as_secs_f64() {
            p.averages = average(&p.at_start, &now, secs);
            p.at_start = now;
            p.started = Some(Instant::now());
        }
        p.averages
    }
}

fn average(a: &StatsTotals, b: &StatsTotals, secs: f64) -> StatsTotals {
    let per_sec = |x: u64, y: u64| (y.saturating_sub(x) as f64 / secs).round() as u64;
    let per = |x: u64, y: u64, n: u64| y.saturating_sub(x).checked_div(n).unwrap_or(0);
    let xacts = b.xact_count.saturating_sub(a.xact_count);
    let queries = b.query_count.saturating_sub(a.query_count);
    StatsTotals {
        xact_count: per_sec(a.xact_count, b.xact_count),
        query_count: per_sec(a.query_count, b.query_count),
        received: per_sec(a.received, b.received),
        sent: per_sec(a.sent, b.sent),
        xact_time_us: per(a.xact_time_us, b.xact_time_us, xacts),
        query_time_us: per(a.query_time_us, b.query_time_us, queries),
        wait_time_us: per(a.wait_time_us, b.wait_time_us, xacts),
    }
}

/// A client's place among a pool's waiters; removed on drop.
#[derive(Debug)]
pub struct Waiting<'a> {
    stats: &'a PoolStats,
    id: u64,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.stats.lock_waiters().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_are_counted_while_they_last() {
        let m = Metrics::new();
        let s = PoolStats::new(&m, "db", "u", "transaction");
        assert_eq!(s.waiting(), 0);
        let a = s.start_wait();
        let b = s.start_wait();
        assert_eq!(s.waiting(), 2);
        drop(a);
        assert_eq!(s.waiting(), 1);
        assert!(s.max_wait() < Duration::from_secs(5));
        drop(b);
        assert_eq!(s.max_wait(), Duration::ZERO);
    }

    #[test]
    fn totals_add_up_and_averages_divide() {
        let m = Metrics::new();
        let s = PoolStats::new(&m, "db", "u", "transaction");
        s.transaction_done(Duration::from_millis(2));
        s.transaction_done(Duration::from_millis(4));
        s.query_done(Duration::from_millis(1));
        let t = s.totals();
        assert_eq!((t.xact_count, t.query_count, t.xact_time_us), (2, 1, 6000));
        let b = StatsTotals {
            xact_count: 20,
            xact_time_us: 2000,
            ..t
        };
        let a = StatsTotals {
            xact_count: 10,
            xact_time_us: 1000,
            ..t
        };
        let avg = average(&a, &b, 2.0);
        assert_eq!((avg.xact_count, avg.xact_time_us), (5, 100));
    }
}
