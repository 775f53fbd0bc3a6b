//! Per-pool statistics: metric handles resolved once, live counts, the
//! longest current wait, and the last stats period's changes.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use prometheus::{Histogram, IntCounter, IntCounterVec};

use super::Metrics;
use super::period::Window;

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
    /// Server connections parked until a cancel request for them is done
    /// (`sv_being_canceled`).
    pub being_canceled: AtomicUsize,
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
    /// Released while a cancel request sent for it may still land (its
    /// delivery was not confirmed within `cancel_wait_timeout`).
    CancelUnconfirmed,
    /// Closed while idle to make room for another pool of its database
    /// (`max_db_connections`).
    Evicted,
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
            CloseReason::CancelUnconfirmed => "cancel_unconfirmed",
            CloseReason::Evicted => "evicted",
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
            CloseReason::CancelUnconfirmed => "a cancel request for it may still land",
            CloseReason::Evicted => "closed to make room under max_db_connections",
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
    /// Server checkouts (each one a wait, however short).
    pub checkouts: u64,
}

impl StatsTotals {
    /// Adds `other`'s figures to these.
    pub fn add(&mut self, other: &StatsTotals) {
        for (sum, x) in self.fields_mut().into_iter().zip(other.fields()) {
            *sum += x;
        }
    }

    /// What was added between `earlier` and these totals.
    pub fn since(&self, earlier: &StatsTotals) -> StatsTotals {
        let mut d = *self;
        for (x, e) in d.fields_mut().into_iter().zip(earlier.fields()) {
            *x = x.saturating_sub(e);
        }
        d
    }

    fn fields(&self) -> [u64; 8] {
        [
            self.xact_count,
            self.query_count,
            self.received,
            self.sent,
            self.xact_time_us,
            self.query_time_us,
            self.wait_time_us,
            self.checkouts,
        ]
    }

    fn fields_mut(&mut self) -> [&mut u64; 8] {
        [
            &mut self.xact_count,
            &mut self.query_count,
            &mut self.received,
            &mut self.sent,
            &mut self.xact_time_us,
            &mut self.query_time_us,
            &mut self.wait_time_us,
            &mut self.checkouts,
        ]
    }
}

/// The pool's stats period: totals when the last one ended, and what
/// changed during it.
#[derive(Debug, Default)]
struct Period {
    at_end: StatsTotals,
    last: Window,
}

fn micros(h: &Histogram) -> u64 {
    (h.get_sample_sum() * 1e6).round() as u64
}

impl PoolStats {
    /// Handles for the pool (`database`, `user`, `pool_mode`).
    pub fn new(m: &Metrics, database: &str, user: &str, mode: &str) -> PoolStats {
        let l = [database, user, mode];
        let stats = PoolStats {
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
            being_canceled: AtomicUsize::new(0),
            waiters: Mutex::new(BTreeMap::new()),
            next_waiter: AtomicU64::new(0),
            period: Mutex::default(),
        };
        // A pool re-created under the same labels (a reload retired one and
        // a later one brought it back) shares the counters of the one it
        // replaced: its first period counts from their values now.
        let totals = stats.totals();
        stats.lock_period().at_end = totals;
        stats
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
        self.start_wait_since(Instant::now())
    }

    /// [`PoolStats::start_wait`] for a client waiting since `since` (one
    /// that waits again, e.g. held back by `PAUSE` after queuing).
    pub fn start_wait_since(&self, since: Instant) -> Waiting<'_> {
        let id = self.next_waiter.fetch_add(1, Ordering::Relaxed);
        self.lock_waiters().insert(id, since);
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
        // Entries are not in time order (a client may wait again since
        // an earlier moment).
        w.values().min().map(Instant::elapsed).unwrap_or_default()
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
            checkouts: self.wait.get_sample_count(),
        }
    }

    fn lock_period(&self) -> std::sync::MutexGuard<'_, Period> {
        self.period.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ends the current stats period, `secs` long: what changed since the
    /// previous end (or since the pool was created) becomes
    /// [`PoolStats::last_period`]. Called by [`super::period::run`].
    pub fn end_period(&self, secs: f64) {
        let now = self.totals();
        let mut p = self.lock_period();
        p.last = Window {
            delta: now.since(&p.at_end),
            secs,
        };
        p.at_end = now;
    }

    /// What changed during the last complete stats period (all zero
    /// before the first one ends).
    pub fn last_period(&self) -> Window {
        self.lock_period().last
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
    fn totals_add_up() {
        let m = Metrics::new();
        let s = PoolStats::new(&m, "db", "u", "transaction");
        s.transaction_done(Duration::from_millis(2));
        s.transaction_done(Duration::from_millis(4));
        s.query_done(Duration::from_millis(1));
        s.wait.observe(0.003);
        let t = s.totals();
        assert_eq!((t.xact_count, t.query_count, t.xact_time_us), (2, 1, 6000));
        assert_eq!((t.checkouts, t.wait_time_us), (1, 3000));
        let mut sum = t;
        sum.add(&t);
        assert_eq!(
            (sum.xact_count, sum.checkouts, sum.xact_time_us),
            (4, 2, 12_000)
        );
        assert_eq!(sum.since(&t), t);
        assert_eq!(t.since(&sum), StatsTotals::default(), "never negative");
    }

    #[test]
    fn a_period_holds_what_changed_during_it() {
        let m = Metrics::new();
        let s = PoolStats::new(&m, "db", "u", "transaction");
        s.transaction_done(Duration::from_millis(100));
        assert_eq!(s.last_period(), Window::default(), "no period ended yet");
        // The first period counts from the pool's creation.
        s.end_period(1.0);
        let w = s.last_period();
        assert_eq!(
            (w.delta.xact_count, w.delta.xact_time_us, w.secs),
            (1, 100_000, 1.0)
        );
        s.transaction_done(Duration::from_millis(50));
        s.transaction_done(Duration::from_millis(50));
        assert_eq!(s.last_period(), w, "unchanged until the period ends");
        s.end_period(2.0);
        let w = s.last_period();
        assert_eq!(
            (w.delta.xact_count, w.delta.xact_time_us, w.secs),
            (2, 100_000, 2.0)
        );
        s.end_period(1.0);
        assert_eq!(
            s.last_period().delta,
            StatsTotals::default(),
            "an idle period"
        );
    }
}
