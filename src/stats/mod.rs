//! What pgtarn counts: the Prometheus metric families ([`Metrics`]), the
//! per-pool handles cut from them ([`PoolStats`]), and the list of
//! connected clients ([`clients::ConnList`]), and the `SHOW STATS`
//! averages, recomputed every `stats_period` ([`period`]).
//!
//! Every handle used on the relay path is resolved once (when a pool is
//! created), so recording is an atomic add or a histogram observation:
//! no label lookup, no allocation. Gauges that describe the present
//! (clients waiting, servers idle, saturation) are not kept up to date on
//! the hot path at all; [`crate::metrics`] computes them from the pools at
//! scrape time.

pub mod clients;
pub mod period;
mod pool;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use prometheus::{
    HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, core::Collector,
};

pub use period::{Averages, Window};
pub use pool::{CloseReason, PoolStats, StatsTotals};

/// Nanoseconds since the process's first call: a monotonic time that fits
/// in an atomic.
pub fn now_ns() -> u64 {
    ns_at(Instant::now())
}

/// `at` as a [`now_ns`] reading.
pub fn ns_at(at: Instant) -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    at.saturating_duration_since(epoch).as_nanos() as u64
}

/// Time elapsed since a [`now_ns`] reading.
pub fn since_ns(then: u64) -> Duration {
    Duration::from_nanos(now_ns().saturating_sub(then))
}

/// Histogram buckets for waits and durations, seconds: 100 µs to 60 s.
pub const DURATION_BUCKETS: [f64; 18] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];

/// The labels every per-pool metric carries.
pub const POOL_LABELS: [&str; 3] = ["database", "user", "pool_mode"];

/// Every metric family pgtarn exports, registered in one registry.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// The registry `/metrics` gathers.
    pub registry: Registry,
    /// `pgtarn_pool_clients{state}`: clients active / waiting per pool.
    pub pool_clients: IntGaugeVec,
    /// `pgtarn_pool_servers{state}`: servers active / idle / used / login /
    /// being_canceled.
    pub pool_servers: IntGaugeVec,
    /// `pgtarn_pool_size`: open server connections.
    pub pool_size: IntGaugeVec,
    /// `pgtarn_pool_max_size`: the pool's limit, `pool_size` (plus
    /// `reserve_pool_size` while the reserve is in use).
    pub pool_max_size: IntGaugeVec,
    /// `pgtarn_pool_saturation`: servers active / `pool_size`.
    pub pool_saturation: prometheus::GaugeVec,
    /// `pgtarn_pool_max_wait_seconds`: the longest current wait.
    pub pool_max_wait: prometheus::GaugeVec,
    /// `pgtarn_pool_wait_seconds`: checkout waits.
    pub wait: HistogramVec,
    /// `pgtarn_pool_transaction_seconds`: transaction durations.
    pub transaction: HistogramVec,
    /// `pgtarn_pool_query_seconds`: query durations.
    pub query: HistogramVec,
    /// `pgtarn_pool_transactions_total`.
    pub transactions: IntCounterVec,
    /// `pgtarn_pool_queries_total`.
    pub queries: IntCounterVec,
    /// `pgtarn_pool_received_bytes_total`: bytes from clients.
    pub received: IntCounterVec,
    /// `pgtarn_pool_sent_bytes_total`: bytes to clients.
    pub sent: IntCounterVec,
    /// `pgtarn_pool_client_logins_total`.
    pub logins: IntCounterVec,
    /// `pgtarn_pool_server_connections_opened_total`.
    pub opened: IntCounterVec,
    /// `pgtarn_pool_server_connections_closed_total{reason}`.
    pub closed: IntCounterVec,
    /// `pgtarn_pool_errors_total{class}`: errors clients got, by SQLSTATE class.
    pub errors: IntCounterVec,
    /// `pgtarn_pool_wait_timeouts_total`.
    pub wait_timeouts: IntCounterVec,
    /// `pgtarn_client_connections{state}`: process-wide, login / active /
    /// waiting.
    pub client_connections: IntGaugeVec,
    /// `pgtarn_tls_handshakes_total{side,result}`.
    pub tls_handshakes: IntCounterVec,
    /// `pgtarn_reloads_total{result}`.
    pub reloads: IntCounterVec,
}

fn labels(extra: &[&'static str]) -> Vec<&'static str> {
    POOL_LABELS.iter().chain(extra).copied().collect()
}

fn register<C: Collector + Clone + 'static>(registry: &Registry, c: C) -> C {
    registry
        .register(Box::new(c.clone()))
        .expect("metric names are unique and valid");
    c
}

fn gauge(r: &Registry, name: &str, help: &str, extra: &[&'static str]) -> IntGaugeVec {
    let vec = IntGaugeVec::new(Opts::new(name, help), &labels(extra)).expect("valid metric");
    register(r, vec)
}

fn fgauge(r: &Registry, name: &str, help: &str) -> prometheus::GaugeVec {
    let vec = prometheus::GaugeVec::new(Opts::new(name, help), &POOL_LABELS).expect("valid metric");
    register(r, vec)
}

fn counter(r: &Registry, name: &str, help: &str, extra: &[&'static str]) -> IntCounterVec {
    let vec = IntCounterVec::new(Opts::new(name, help), &labels(extra)).expect("valid metric");
    register(r, vec)
}

fn histogram(r: &Registry, name: &str, help: &str) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(DURATION_BUCKETS.to_vec());
    register(
        r,
        HistogramVec::new(opts, &POOL_LABELS).expect("valid metric"),
    )
}

fn process_counter(r: &Registry, name: &str, help: &str, l: &[&str]) -> IntCounterVec {
    register(
        r,
        IntCounterVec::new(Opts::new(name, help), l).expect("valid metric"),
    )
}

impl Metrics {
    /// A fresh registry with every pgtarn metric family.
    pub fn new() -> Metrics {
        let r = Registry::new();
        let build = IntGaugeVec::new(
            Opts::new("pgtarn_build_info", "pgtarn's version; always 1."),
            &["version"],
        )
        .expect("valid metric");
        register(&r, build)
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        Metrics {
            pool_clients: gauge(
                &r,
                "pgtarn_pool_clients",
                "Logged-in clients by state: active (not waiting) or waiting for a server.",
                &["state"],
            ),
            pool_servers: gauge(
                &r,
                "pgtarn_pool_servers",
                "Server connections by state: active (lent to a client), idle, used (idle, due for a health check), login (connecting).",
                &["state"],
            ),
            pool_size: gauge(&r, "pgtarn_pool_size", "Open server connections.", &[]),
            pool_max_size: gauge(
                &r,
                "pgtarn_pool_max_size",
                "The pool's limit: pool_size, plus reserve_pool_size while the reserve is in use.",
                &[],
            ),
            pool_saturation: fgauge(
                &r,
                "pgtarn_pool_saturation",
                "Server connections in use divided by pool_size (1 = every server busy).",
            ),
            pool_max_wait: fgauge(
                &r,
                "pgtarn_pool_max_wait_seconds",
                "How long the longest-waiting client has waited for a server so far.",
            ),
            wait: histogram(
                &r,
                "pgtarn_pool_wait_seconds",
                "Time clients waited for a server connection.",
            ),
            transaction: histogram(
                &r,
                "pgtarn_pool_transaction_seconds",
                "Transaction durations, first message to ReadyForQuery idle.",
            ),
            query: histogram(
                &r,
                "pgtarn_pool_query_seconds",
                "Query durations, first message to ReadyForQuery.",
            ),
            transactions: counter(
                &r,
                "pgtarn_pool_transactions_total",
                "Transactions completed.",
                &[],
            ),
            queries: counter(
                &r,
                "pgtarn_pool_queries_total",
                "Queries completed (ReadyForQuery answers).",
                &[],
            ),
            received: counter(
                &r,
                "pgtarn_pool_received_bytes_total",
                "Bytes received from clients.",
                &[],
            ),
            sent: counter(
                &r,
                "pgtarn_pool_sent_bytes_total",
                "Bytes sent to clients.",
                &[],
            ),
            logins: counter(
                &r,
                "pgtarn_pool_client_logins_total",
                "Successful client logins.",
                &[],
            ),
            opened: counter(
                &r,
                "pgtarn_pool_server_connections_opened_total",
                "Server connections opened.",
                &[],
            ),
            closed: counter(
                &r,
                "pgtarn_pool_server_connections_closed_total",
                "Server connections closed, by reason.",
                &["reason"],
            ),
            errors: counter(
                &r,
                "pgtarn_pool_errors_total",
                "ErrorResponses sent to clients, by SQLSTATE class.",
                &["class"],
            ),
            wait_timeouts: counter(
                &r,
                "pgtarn_pool_wait_timeouts_total",
                "Clients that gave up waiting for a server (query_wait_timeout).",
                &[],
            ),
            client_connections: register(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "pgtarn_client_connections",
                        "Client connections by state: login, active, waiting.",
                    ),
                    &["state"],
                )
                .expect("valid metric"),
            ),
            tls_handshakes: process_counter(
                &r,
                "pgtarn_tls_handshakes_total",
                "TLS handshakes by side (client: clients to pgtarn; server: pgtarn to Postgres) and result.",
                &["side", "result"],
            ),
            reloads: process_counter(
                &r,
                "pgtarn_reloads_total",
                "Configuration reloads by result.",
                &["result"],
            ),
            registry: r,
        }
    }

    /// Counts a TLS handshake; `side` is `"client"` or `"server"`.
    pub fn tls_handshake(&self, side: &str, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.tls_handshakes.with_label_values(&[side, result]).inc();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
