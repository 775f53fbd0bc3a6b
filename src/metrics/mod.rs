//! The HTTP endpoint: `GET /metrics` (Prometheus text format), `GET
//! /healthz` (the process is up) and `GET /readyz` (every configured
//! upstream accepts TCP connections).
//!
//! Gauges describing the present (clients waiting, servers idle,
//! saturation) are computed from the pools when scraped; counters and
//! histograms are recorded as things happen (see [`crate::stats`]).

mod http;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use prometheus::{Encoder, TextEncoder};

use crate::Context;
use crate::stats::clients::ConnState;

pub use http::serve;

/// Sets every scrape-time gauge from the live pools and connections. The
/// per-pool gauges are cleared first, so that a pool a reload removed
/// leaves no frozen values behind.
pub fn refresh(ctx: &Context) {
    let m = &ctx.registry.metrics;
    m.pool_clients.reset();
    m.pool_servers.reset();
    m.pool_size.reset();
    m.pool_max_size.reset();
    m.pool_saturation.reset();
    m.pool_max_wait.reset();
    let check = check_delay(ctx);
    let mut waiting_total = 0;
    for pool in ctx.registry.pools() {
        let l = pool.stats.labels();
        let c = pool.counts(check);
        m.pool_clients
            .with_label_values(&with(&l, "active"))
            .set(c.cl_active as i64);
        m.pool_clients
            .with_label_values(&with(&l, "waiting"))
            .set(c.cl_waiting as i64);
        for (state, n) in [
            ("active", c.sv_active),
            ("idle", c.sv_idle),
            ("used", c.sv_used),
            ("login", c.sv_login),
            ("being_canceled", c.sv_being_canceled),
        ] {
            m.pool_servers
                .with_label_values(&with(&l, state))
                .set(n as i64);
        }
        let size = pool.settings().size.max(1);
        m.pool_size.with_label_values(&l).set(pool.size() as i64);
        m.pool_max_size
            .with_label_values(&l)
            .set(pool.max_size() as i64);
        m.pool_saturation
            .with_label_values(&l)
            .set(c.sv_active as f64 / size as f64);
        m.pool_max_wait
            .with_label_values(&l)
            .set(pool.stats.max_wait().as_secs_f64());
        waiting_total += c.cl_waiting;
    }
    let clients = ctx.clients.snapshot();
    let active = clients
        .iter()
        .filter(|c| c.state() != ConnState::Waiting)
        .count();
    let cc = &m.client_connections;
    cc.with_label_values(&["login"])
        .set(ctx.logging_in.load(Ordering::Relaxed) as i64);
    cc.with_label_values(&["active"]).set(active as i64);
    cc.with_label_values(&["waiting"])
        .set(waiting_total.min(clients.len()) as i64);
}

/// The pool labels plus a `state` label value.
fn with<'a>(l: &[&'a str; 3], state: &'a str) -> [&'a str; 4] {
    [l[0], l[1], l[2], state]
}

/// `server_check_delay` when health checks are on.
pub fn check_delay(ctx: &Context) -> Option<Duration> {
    let config = ctx.config();
    let g = &config.pgtarn;
    (!g.server_check_query.is_empty()).then_some(g.server_check_delay)
}

/// The Prometheus text exposition of every metric.
pub fn render(ctx: &Context) -> String {
    // One scrape at a time: `refresh` clears the per-pool gauges before
    // setting them anew.
    static SCRAPE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = SCRAPE.lock().unwrap_or_else(|p| p.into_inner());
    refresh(ctx);
    let families = ctx.registry.metrics.registry.gather();
    let mut out = Vec::new();
    // Encoding into a Vec cannot fail for well-formed families.
    let _ = TextEncoder::new().encode(&families, &mut out);
    String::from_utf8(out).unwrap_or_default()
}

/// Whether pgtarn accepts clients (not after `SHUTDOWN WAIT_FOR_CLIENTS`)
/// and every configured upstream accepts a connection (TCP, or its
/// Unix-domain socket) within `limit`; the error names the first one that
/// does not.
pub async fn ready(ctx: &Arc<Context>, limit: Duration) -> Result<(), String> {
    // After `SHUTDOWN WAIT_FOR_CLIENTS` the listener is closed: a load
    // balancer must stop sending clients, which would be refused.
    if ctx.is_closing_listener() {
        return Err("shutting down (SHUTDOWN WAIT_FOR_CLIENTS): new clients are refused".into());
    }
    let config = ctx.config();
    for (name, db) in &config.databases {
        probe_hosts(&db.host, db.port, limit)
            .await
            .map_err(|e| format!("database {name}: {e}"))?;
    }
    Ok(())
}

/// Whether one of `hosts` (a database's `host` setting) accepts a
/// connection within `limit`. All are tried at once, so that one whose
/// connect hangs (SYNs dropped) neither hides a later one that answers nor
/// multiplies the probe's time.
async fn probe_hosts(hosts: &str, port: u16, limit: Duration) -> Result<(), String> {
    let mut probes = tokio::task::JoinSet::new();
    for host in crate::backend::hosts(hosts) {
        let unix = crate::backend::unix_socket(host, port);
        let host = host.to_owned();
        probes.spawn(async move {
            match unix {
                Some(path) => tokio::net::UnixStream::connect(path).await.map(drop),
                None => tokio::net::TcpStream::connect((host.as_str(), port))
                    .await
                    .map(drop),
            }
        });
    }
    let first_success = async {
        let mut last = Err("no host configured".to_owned());
        while let Some(done) = probes.join_next().await {
            match done {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => last = Err(e.to_string()),
                Err(e) => last = Err(e.to_string()),
            }
        }
        last
    };
    // Dropping the set (on success or time-out) aborts the other probes.
    match tokio::time::timeout(limit, first_success).await {
        Ok(result) => result,
        Err(_) => Err("connect timed out".into()),
    }
}
