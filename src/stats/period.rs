//! `SHOW STATS` averages: every `stats_period` a task ([`run`]) ends the
//! period of every pool, keeping what changed during it ([`Window`]); the
//! console turns a database's windows into averages ([`Averages`]).
//!
//! As in PgBouncer, the averages describe the last complete period whoever
//! asks and however often: counts and bytes per second, times per
//! transaction, query or server checkout. A database's figures come from
//! the raw changes of all its pools (one per user), added up and divided
//! once, so that two users' 100 ms transactions average 100 ms, not 200.

use std::sync::Arc;

use tokio::time::Instant;

use super::StatsTotals;
use crate::Context;
use crate::shutdown::Shutdown;

/// What changed over one stats period.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Window {
    /// Counts, bytes and times added during the period.
    pub delta: StatsTotals,
    /// The period's length, seconds (0 before the first period ends).
    pub secs: f64,
}

impl Window {
    /// Adds another pool's window of the same period.
    pub fn merge(&mut self, other: &Window) {
        self.delta.add(&other.delta);
        self.secs = self.secs.max(other.secs);
    }
}

/// Averages over one period, as `SHOW STATS` reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Averages {
    /// Transactions per second.
    pub xact_count: u64,
    /// Queries per second.
    pub query_count: u64,
    /// Bytes from clients per second.
    pub received: u64,
    /// Bytes to clients per second.
    pub sent: u64,
    /// µs per transaction.
    pub xact_time_us: u64,
    /// µs per query.
    pub query_time_us: u64,
    /// µs of waiting per server checkout.
    pub wait_time_us: u64,
}

impl Averages {
    /// The averages of `w`: zero for an empty or not yet ended period.
    pub fn of(w: &Window) -> Averages {
        let d = &w.delta;
        let per_sec = |n: u64| {
            if w.secs > 0.0 {
                (n as f64 / w.secs).round() as u64
            } else {
                0
            }
        };
        let per = |time: u64, n: u64| time.checked_div(n).unwrap_or(0);
        Averages {
            xact_count: per_sec(d.xact_count),
            query_count: per_sec(d.query_count),
            received: per_sec(d.received),
            sent: per_sec(d.sent),
            xact_time_us: per(d.xact_time_us, d.xact_count),
            query_time_us: per(d.query_time_us, d.query_count),
            wait_time_us: per(d.wait_time_us, d.checkouts),
        }
    }
}

/// Ends a stats period every `stats_period` (read again each time, so a
/// reload applies from the next period) until `shutdown`.
pub async fn run(ctx: Arc<Context>, mut shutdown: Shutdown) {
    let mut started = Instant::now();
    loop {
        let period = ctx.config().pgtarn.stats_period;
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tokio::time::sleep_until(started + period) => {}
        }
        let now = Instant::now();
        end_period(&ctx, (now - started).as_secs_f64());
        started = now;
    }
}

/// Ends the period, `secs` long, of every pool.
fn end_period(ctx: &Context, secs: f64) {
    for pool in ctx.registry.all_pools() {
        pool.stats.end_period(secs);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(xacts: u64, xact_us: u64, secs: f64) -> Window {
        Window {
            delta: StatsTotals {
                xact_count: xacts,
                query_count: xacts,
                received: 100 * xacts,
                sent: 1000 * xacts,
                xact_time_us: xact_us,
                query_time_us: xact_us,
                wait_time_us: 10 * xacts,
                checkouts: xacts,
            },
            secs,
        }
    }

    #[test]
    fn averages_are_rates_per_second_and_times_per_event() {
        let a = Averages::of(&window(20, 2_000_000, 2.0));
        assert_eq!(a.xact_count, 10);
        assert_eq!(a.query_count, 10);
        assert_eq!((a.received, a.sent), (1000, 10_000));
        assert_eq!(a.xact_time_us, 100_000);
        assert_eq!(a.query_time_us, 100_000);
        assert_eq!(a.wait_time_us, 10);
    }

    #[test]
    fn an_idle_or_unfinished_period_averages_zero() {
        assert_eq!(Averages::of(&window(0, 0, 1.0)), Averages::default());
        assert_eq!(Averages::of(&Window::default()), Averages::default());
        // Counted but not yet timed: no division by a zero-length period.
        let a = Averages::of(&window(5, 500, 0.0));
        assert_eq!((a.xact_count, a.xact_time_us), (0, 100));
    }

    #[test]
    fn merged_pools_divide_total_time_by_total_count() {
        // Two users' pools of one database: 10 transactions of 100 ms and
        // 30 of 200 ms over the same 10 s period.
        let mut db = window(10, 1_000_000, 10.0);
        db.merge(&window(30, 6_000_000, 10.0));
        let a = Averages::of(&db);
        assert_eq!(a.xact_time_us, 175_000, "7 s over 40 transactions");
        assert_eq!(a.xact_count, 4, "rates add up");
        assert_eq!(a.sent, 4000);
        assert_eq!(a.wait_time_us, 10);
    }

    #[test]
    fn merging_keeps_the_period_length() {
        let mut db = Window::default();
        db.merge(&window(1, 10, 60.0));
        assert_eq!(db.secs, 60.0);
        db.merge(&Window::default());
        assert_eq!(db.secs, 60.0, "a pool whose period has not ended yet");
    }
}
