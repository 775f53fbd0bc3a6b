//! The `SHOW` commands: PgBouncer's columns and column types.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use super::result::{ResultSet, Type, v};
use crate::Context;
use crate::stats::clients::{ConnInfo, ConnState};
use crate::stats::{Averages, StatsTotals, Window};

const POOLS: [(&str, Type); 16] = [
    ("database", Type::Text),
    ("user", Type::Text),
    ("cl_active", Type::Int4),
    ("cl_waiting", Type::Int4),
    ("cl_active_cancel_req", Type::Int4),
    ("cl_waiting_cancel_req", Type::Int4),
    ("sv_active", Type::Int4),
    ("sv_active_cancel", Type::Int4),
    ("sv_being_canceled", Type::Int4),
    ("sv_idle", Type::Int4),
    ("sv_used", Type::Int4),
    ("sv_tested", Type::Int4),
    ("sv_login", Type::Int4),
    ("maxwait", Type::Int4),
    ("maxwait_us", Type::Int4),
    ("pool_mode", Type::Text),
];

/// `SHOW POOLS`: one row per (database, user) pool. Cancel requests are
/// forwarded at once (never queued), so the other cancel columns are 0;
/// `sv_being_canceled` counts servers parked behind a cancel request.
pub fn pools(ctx: &Context) -> ResultSet {
    let mut rs = ResultSet::new(&POOLS);
    let check = crate::metrics::check_delay(ctx);
    for pool in sorted_pools(ctx) {
        let c = pool.counts(check);
        let wait = pool.stats.max_wait();
        rs.row(vec![
            v(&pool.key.database),
            v(&pool.key.user),
            v(c.cl_active),
            v(c.cl_waiting),
            v(0),
            v(0),
            v(c.sv_active),
            v(0),
            v(c.sv_being_canceled),
            v(c.sv_idle),
            v(c.sv_used),
            v(0),
            v(c.sv_login),
            v(wait.as_secs()),
            v(wait.subsec_micros()),
            v(pool.settings().mode.as_str()),
        ]);
    }
    rs
}

/// Every pool clients may use, those retired by a reload included.
fn sorted_pools(ctx: &Context) -> Vec<std::sync::Arc<crate::pool::Pool>> {
    let mut pools = ctx.registry.all_pools();
    pools.sort_by(|a, b| a.key.cmp(&b.key));
    pools
}

const STATS: [&str; 15] = [
    "database",
    "total_xact_count",
    "total_query_count",
    "total_received",
    "total_sent",
    "total_xact_time",
    "total_query_time",
    "total_wait_time",
    "avg_xact_count",
    "avg_query_count",
    "avg_recv",
    "avg_sent",
    "avg_xact_time",
    "avg_query_time",
    "avg_wait_time",
];

/// The columns of `SHOW STATS_TOTALS` and `SHOW STATS_AVERAGES`
/// (PgBouncer's names, the same for both).
const STATS_PARTS: [&str; 8] = [
    "database",
    "xact_count",
    "query_count",
    "bytes_received",
    "bytes_sent",
    "xact_time",
    "query_time",
    "wait_time",
];

/// A database's totals since start and its pools' last stats period.
#[derive(Debug, Default)]
struct DbStats {
    totals: StatsTotals,
    last: Window,
}

/// Every database with pools, its pools' figures added up.
fn stats_by_database(ctx: &Context) -> BTreeMap<String, DbStats> {
    let mut by_db: BTreeMap<String, DbStats> = BTreeMap::new();
    for pool in stats_pools(ctx) {
        let db = by_db.entry(pool.key.database.clone()).or_default();
        db.totals.add(&pool.stats.totals());
        db.last.merge(&pool.stats.last_period());
    }
    by_db
}

fn totals_figures(t: &StatsTotals) -> [u64; 7] {
    [
        t.xact_count,
        t.query_count,
        t.received,
        t.sent,
        t.xact_time_us,
        t.query_time_us,
        t.wait_time_us,
    ]
}

fn average_figures(a: &Averages) -> [u64; 7] {
    [
        a.xact_count,
        a.query_count,
        a.received,
        a.sent,
        a.xact_time_us,
        a.query_time_us,
        a.wait_time_us,
    ]
}

/// A result set of `numeric` figures per database, as PgBouncer's.
fn per_database(names: &[&'static str], rows: Vec<(String, Vec<u64>)>) -> ResultSet {
    let columns: Vec<(&str, Type)> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (*n, if i == 0 { Type::Text } else { Type::Numeric }))
        .collect();
    let mut rs = ResultSet::new(&columns);
    for (db, figures) in rows {
        let mut row = vec![v(db)];
        row.extend(figures.iter().map(v));
        rs.row(row);
    }
    rs
}

/// `SHOW STATS`: per database, totals since start and averages over the
/// last complete `stats_period` (counts and bytes per second; times in µs
/// per transaction, query or server checkout).
pub fn stats(ctx: &Context) -> ResultSet {
    let rows = stats_by_database(ctx)
        .into_iter()
        .map(|(db, s)| {
            let mut figures = totals_figures(&s.totals).to_vec();
            figures.extend(average_figures(&Averages::of(&s.last)));
            (db, figures)
        })
        .collect();
    per_database(&STATS, rows)
}

/// `SHOW STATS_TOTALS`: the totals of `SHOW STATS`, PgBouncer's names.
pub fn stats_totals(ctx: &Context) -> ResultSet {
    let rows = stats_by_database(ctx)
        .into_iter()
        .map(|(db, s)| (db, totals_figures(&s.totals).to_vec()))
        .collect();
    per_database(&STATS_PARTS, rows)
}

/// `SHOW STATS_AVERAGES`: the averages of `SHOW STATS`, PgBouncer's names.
pub fn stats_averages(ctx: &Context) -> ResultSet {
    let rows = stats_by_database(ctx)
        .into_iter()
        .map(|(db, s)| (db, average_figures(&Averages::of(&s.last)).to_vec()))
        .collect();
    per_database(&STATS_PARTS, rows)
}

/// The pools whose figures `SHOW STATS` and `SHOW TOTALS` add up: every
/// pool in use, those retired by a reload included, but one per label set
/// (a retired pool and the one that replaced it under the same labels
/// share their counters).
fn stats_pools(ctx: &Context) -> Vec<std::sync::Arc<crate::pool::Pool>> {
    let mut seen = BTreeSet::new();
    let mut pools = ctx.registry.all_pools();
    pools.retain(|p| seen.insert(p.stats.labels().map(str::to_owned)));
    pools
}

/// `SHOW TOTALS`: the figures of `SHOW STATS` over every database, one
/// `name`/`value` row each, as PgBouncer's.
pub fn totals(ctx: &Context) -> ResultSet {
    let mut all = DbStats::default();
    for pool in stats_pools(ctx) {
        all.totals.add(&pool.stats.totals());
        all.last.merge(&pool.stats.last_period());
    }
    let mut figures = totals_figures(&all.totals).to_vec();
    figures.extend(average_figures(&Averages::of(&all.last)));
    let mut rs = ResultSet::new(&[("name", Type::Text), ("value", Type::Numeric)]);
    for (name, value) in STATS[1..].iter().zip(figures) {
        rs.row(vec![v(name), v(value)]);
    }
    rs
}

/// `SHOW LISTS`: PgBouncer's object counts. pgtarn keeps no caches of
/// freed connections, so `free_clients` is the room left under
/// `max_client_conn` and `free_servers` the room left under the pools'
/// `pool_size`; it resolves no host names itself, so the `dns_*` are 0.
/// Admin console sessions are not counted among the clients.
pub fn lists(ctx: &Context) -> ResultSet {
    let config = ctx.config();
    let pools = ctx.registry.pools();
    let mut users: BTreeSet<&str> = config.users.keys().map(String::as_str).collect();
    users.extend(pools.iter().map(|p| p.key.user.as_str()));
    let (mut used_servers, mut free_servers) = (0, 0);
    for p in &pools {
        let open = p.size() + p.stats.connecting.load(Ordering::Relaxed);
        used_servers += open;
        free_servers += p.settings().size.saturating_sub(open);
    }
    let login = ctx.logging_in.load(Ordering::Relaxed);
    let counts = [
        ("databases", config.databases.len()),
        ("users", users.len()),
        ("pools", pools.len()),
        ("free_clients", ctx.client_slots.free()),
        ("used_clients", ctx.client_slots.used()),
        ("login_clients", login),
        ("free_servers", free_servers),
        ("used_servers", used_servers),
        ("dns_names", 0),
        ("dns_zones", 0),
        ("dns_queries", 0),
        ("dns_pending", 0),
    ];
    let mut rs = ResultSet::new(&[("list", Type::Text), ("items", Type::Int4)]);
    for (list, n) in counts {
        rs.row(vec![v(list), v(n)]);
    }
    rs
}

const CONNS: [(&str, Type); 19] = [
    ("type", Type::Text),
    ("user", Type::Text),
    ("database", Type::Text),
    ("state", Type::Text),
    ("addr", Type::Text),
    ("port", Type::Int4),
    ("local_addr", Type::Text),
    ("local_port", Type::Int4),
    ("connect_time", Type::Text),
    ("request_time", Type::Text),
    ("wait", Type::Int4),
    ("wait_us", Type::Int4),
    ("close_needed", Type::Int4),
    ("ptr", Type::Text),
    ("id", Type::Int8),
    ("link", Type::Text),
    ("remote_pid", Type::Int4),
    ("tls", Type::Text),
    ("application_name", Type::Text),
];

/// `SHOW CLIENTS`: every logged-in client.
pub fn clients(ctx: &Context) -> ResultSet {
    conns(&ctx.clients.snapshot(), "C", client_state, |_| false)
}

/// `SHOW SERVERS`: every server connection; `close_needed` is 1 for one
/// that closes when next idle (older than a `RECONNECT`).
pub fn servers(ctx: &Context) -> ResultSet {
    let close_needed = |s: &ConnInfo| ctx.registry.close_needed(s);
    conns(
        &ctx.registry.servers.snapshot(),
        "S",
        server_state,
        close_needed,
    )
}

fn client_state(s: ConnState) -> &'static str {
    match s {
        ConnState::Waiting => "waiting",
        ConnState::Login => "login",
        ConnState::Idle | ConnState::Active => "active",
    }
}

fn server_state(s: ConnState) -> &'static str {
    match s {
        ConnState::Active => "active",
        ConnState::Login => "login",
        ConnState::Idle | ConnState::Waiting => "idle",
    }
}

fn conns(
    list: &[std::sync::Arc<ConnInfo>],
    kind: &str,
    state: fn(ConnState) -> &'static str,
    close_needed: impl Fn(&ConnInfo) -> bool,
) -> ResultSet {
    let mut rs = ResultSet::new(&CONNS);
    for c in list {
        let wait = c.wait();
        let link = c.link();
        rs.row(vec![
            v(kind),
            v(&c.facts.user),
            v(&c.facts.database),
            v(state(c.state())),
            // Only connections on a Unix-domain socket have no address.
            v(c.facts
                .peer
                .map_or_else(|| "unix".into(), |a| a.ip().to_string())),
            v(c.facts.peer.map_or(0, |a| a.port())),
            v(c.facts
                .local
                .map(|a| a.ip().to_string())
                .unwrap_or_default()),
            v(c.facts.local.map_or(0, |a| a.port())),
            v(timestamp(c.connect_time)),
            v(timestamp(
                SystemTime::UNIX_EPOCH + Duration::from_micros(c.request_time_us()),
            )),
            v(wait.as_secs()),
            v(wait.subsec_micros()),
            v(i32::from(close_needed(c))),
            v(format!("0x{:x}", c.id)),
            v(c.id),
            v(if link == 0 {
                String::new()
            } else {
                format!("0x{link:x}")
            }),
            v(c.remote_pid()),
            v(if c.facts.tls { "TLSv1.3" } else { "" }),
            v(&c.facts.application_name),
        ]);
    }
    rs
}

/// `YYYY-MM-DD HH:MM:SS UTC`, as PgBouncer prints times.
fn timestamp(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day) (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

const DATABASES: [(&str, Type); 17] = [
    ("name", Type::Text),
    ("host", Type::Text),
    ("port", Type::Int4),
    ("database", Type::Text),
    ("force_user", Type::Text),
    ("pool_size", Type::Int4),
    ("min_pool_size", Type::Int4),
    ("reserve_pool", Type::Int4),
    ("server_lifetime", Type::Int4),
    ("pool_mode", Type::Text),
    ("load_balance_hosts", Type::Text),
    ("max_connections", Type::Int4),
    ("current_connections", Type::Int4),
    ("max_client_connections", Type::Int4),
    ("current_client_connections", Type::Int4),
    ("paused", Type::Int4),
    ("disabled", Type::Int4),
];

/// `SHOW DATABASES`: the configured databases.
pub fn databases(ctx: &Context) -> ResultSet {
    let mut rs = ResultSet::new(&DATABASES);
    let config = ctx.config();
    for (name, db) in &config.databases {
        // The database's count, which includes the servers of pools
        // retired by a reload that clients still hold.
        let open = ctx.registry.database_connections(name);
        let max = db.max_connections(&config.pgtarn);
        rs.row(vec![
            v(name),
            v(&db.host),
            v(db.port),
            v(db.upstream_name(name)),
            db.user.as_deref().map(v).unwrap_or_default(),
            v(db.pool_size),
            v(db.min_pool_size),
            v(db.reserve_pool_size(&config.pgtarn)),
            v(db.server_lifetime
                .unwrap_or(config.pgtarn.server_lifetime)
                .as_secs()),
            v(db.pool_mode.as_str()),
            // As in PgBouncer: only for a list of hosts.
            match crate::backend::hosts(&db.host).nth(1) {
                Some(_) => v(db.load_balance_hosts.as_str()),
                None => None,
            },
            v(max),
            v(open),
            v(db.max_client_connections(&config.pgtarn)),
            v(ctx.registry.database_clients(name)),
            v(i32::from(ctx.registry.is_paused(name))),
            v(i32::from(ctx.registry.is_disabled(name))),
        ]);
    }
    rs
}

/// Settings only read at start: a reload cannot change them.
pub(super) const RESTART_ONLY: [&str; 5] = [
    "listen_addr",
    "so_reuseport",
    "unix_socket_dir",
    "metrics_addr",
    "workers",
];

/// `SHOW CONFIG`: every `[pgtarn]` setting with its default, and whether
/// a reload can change it.
pub fn config(ctx: &Context) -> ResultSet {
    let cols = [
        ("key", Type::Text),
        ("value", Type::Text),
        ("default", Type::Text),
        ("changeable", Type::Text),
    ];
    let mut rs = ResultSet::new(&cols);
    let now = ctx.config().pgtarn.settings();
    let defaults = crate::config::General::default().settings();
    let keys: BTreeSet<&String> = now.keys().chain(defaults.keys()).collect();
    for key in keys {
        let changeable = !RESTART_ONLY.contains(&key.as_str());
        rs.row(vec![
            v(key),
            now.get(key).cloned(),
            defaults.get(key).cloned(),
            v(if changeable { "yes" } else { "no" }),
        ]);
    }
    rs
}

/// `SHOW USERS`: configured users, their overrides of the databases' pool
/// settings, their `max_user_connections` and their open server
/// connections, their `max_user_client_connections` and their clients.
pub fn users(ctx: &Context) -> ResultSet {
    let mut rs = ResultSet::new(&[
        ("name", Type::Text),
        ("pool_size", Type::Int4),
        ("reserve_pool_size", Type::Int4),
        ("pool_mode", Type::Text),
        ("max_user_connections", Type::Int4),
        ("current_connections", Type::Int4),
        ("max_user_client_connections", Type::Int4),
        ("current_client_connections", Type::Int4),
    ]);
    let config = ctx.config();
    for (name, u) in &config.users {
        let open = ctx.registry.user_connections(name);
        // Unset overrides are NULL: the database's settings apply.
        rs.row(vec![
            v(name),
            u.pool_size.map(v).unwrap_or_default(),
            u.reserve_pool_size.map(v).unwrap_or_default(),
            u.pool_mode.map(|m| v(m.as_str())).unwrap_or_default(),
            v(u.max_connections(&config.pgtarn)),
            v(open),
            v(u.max_client_connections(&config.pgtarn)),
            v(ctx.registry.user_clients(name)),
        ]);
    }
    rs
}

/// `SHOW STATE`: whether pgtarn is active, paused (a `PAUSE` of every
/// database) or suspended (never: pgtarn has no `SUSPEND`).
pub fn state(ctx: &Context) -> ResultSet {
    let mut rs = ResultSet::new(&[("key", Type::Text), ("value", Type::Text)]);
    let paused = ctx.registry.is_paused_all();
    let yes_no = |b: bool| v(if b { "yes" } else { "no" });
    rs.row(vec![v("active"), yes_no(!paused)]);
    rs.row(vec![v("paused"), yes_no(paused)]);
    rs.row(vec![v("suspended"), yes_no(false)]);
    rs
}

/// `SHOW VERSION`.
pub fn version() -> ResultSet {
    let mut rs = ResultSet::new(&[("version", Type::Text)]);
    rs.row(vec![v(format!("pgtarn {}", env!("CARGO_PKG_VERSION")))]);
    rs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_print_like_pgbouncer() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_000);
        assert_eq!(timestamp(t), "2026-11-18 11:06:40 UTC");
        assert_eq!(timestamp(SystemTime::UNIX_EPOCH), "1970-01-01 00:00:00 UTC");
    }
}
