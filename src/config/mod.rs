//! Configuration: the TOML schema, its defaults, and validation.
//!
//! The file is read once into [`Config`], validated with
//! [`Config::validate`], then shared as `Arc<Config>`. Unknown keys are
//! errors. Durations are strings such as `"500ms"`, `"30s"`, `"10m"`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

pub mod tls;
pub use tls::{ClientTlsMode, ServerTlsMode};

/// Database names that reach the admin console rather than a pool.
pub const ADMIN_DATABASES: [&str; 2] = ["pgtarn", "pgbouncer"];

/// A configuration that failed to load; the message names the bad key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The path as given.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TOML does not parse or does not fit the schema.
    #[error("{0}")]
    Parse(String),
    /// A value is out of range or inconsistent with another.
    #[error("invalid value for {key}: {reason}")]
    Invalid {
        /// The dotted key, e.g. `databases.app.pool_size`.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[pgtarn]`: process-wide settings.
    #[serde(default)]
    pub pgtarn: General,
    /// `[databases.NAME]`: the databases clients may connect to, by the name
    /// they use.
    #[serde(default)]
    pub databases: BTreeMap<String, Database>,
    /// `[users.NAME]`: users and the passwords pgtarn uses for them upstream.
    #[serde(default)]
    pub users: BTreeMap<String, User>,
    /// `[tls.client]`, `[tls.server]`: TLS on both sides.
    #[serde(default)]
    pub tls: tls::Tls,
}

/// How long a server connection stays assigned to one client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    /// Assigned for one transaction, released at ReadyForQuery `I`.
    #[default]
    Transaction,
    /// Assigned until the client disconnects, then reset and reused.
    Session,
    /// Assigned for one statement (a simple query, or the extended
    /// protocol up to Sync); a transaction block ends the client with
    /// PgBouncer's `transaction blocks not allowed in statement pooling
    /// mode` (08P01).
    Statement,
}

impl PoolMode {
    /// The mode's name as written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            PoolMode::Transaction => "transaction",
            PoolMode::Session => "session",
            PoolMode::Statement => "statement",
        }
    }

    /// True for the modes that lend a server per transaction or statement
    /// (prepared statements and settings follow the client).
    pub fn shares_servers(self) -> bool {
        self != PoolMode::Session
    }
}

/// How pgtarn authenticates clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, Default)]
pub enum AuthType {
    /// SCRAM-SHA-256 against the user's configured password.
    #[default]
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    /// MD5 challenge against the user's password or md5 hash (a user whose
    /// secret is a SCRAM verifier is asked for SCRAM instead, as Postgres
    /// does).
    #[serde(rename = "md5")]
    Md5,
    /// No password is asked for: any client naming a configured user is let in.
    #[serde(rename = "trust")]
    Trust,
    /// The method comes from `auth_hba_file`, per connection.
    #[serde(rename = "hba")]
    Hba,
}

/// How a database with several hosts spreads its server connections.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum LoadBalanceHosts {
    /// Each new connection starts at the next host in turn.
    #[default]
    #[serde(rename = "round-robin")]
    RoundRobin,
    /// Each new connection starts at the first host.
    #[serde(rename = "disable")]
    Disable,
}

impl LoadBalanceHosts {
    /// The setting's value as written in the file.
    pub fn as_str(self) -> &'static str {
        match self {
            LoadBalanceHosts::RoundRobin => "round-robin",
            LoadBalanceHosts::Disable => "disable",
        }
    }
}

/// `[pgtarn]`: process-wide settings.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct General {
    /// Address clients connect to. Default `"127.0.0.1:6432"`.
    pub listen_addr: SocketAddr,
    /// Sets `SO_REUSEPORT` on the listening socket so that a new pgtarn
    /// can listen on the same port while an old one drains (rolling
    /// restart). Default false.
    pub so_reuseport: bool,
    /// Directory of a Unix-domain socket clients may connect to as well,
    /// named `.s.PGSQL.<port>` after `listen_addr`'s port, as Postgres
    /// and PgBouncer name theirs (so `psql -h DIR -p PORT` finds it).
    /// Default none: TCP only.
    pub unix_socket_dir: Option<std::path::PathBuf>,
    /// Most server connections to one database, across the pools of all
    /// its users; a pool that needs one more when the database is full
    /// closes an idle connection of another pool of it, or waits
    /// (`query_wait_timeout`). 0 = no limit. Default 0.
    pub max_db_connections: usize,
    /// Most server connections of one user, across its pools (all
    /// databases), as `max_db_connections` does for a database. 0 = no
    /// limit. Default 0.
    pub max_user_connections: usize,
    /// Most client connections at once; the next one gets 53300.
    /// Default 1000.
    pub max_client_conn: usize,
    /// Most client connections to one database, across all its users;
    /// the next login gets 53300 `client connections exceeded
    /// (max_db_client_connections)` (PgBouncer's words). Console sessions
    /// do not count. 0 = no limit. Default 0.
    pub max_db_client_connections: usize,
    /// Most client connections of one user, across all databases, as
    /// `max_db_client_connections` does for a database. 0 = no limit.
    /// Default 0.
    pub max_user_client_connections: usize,
    /// Append the client's address to the `application_name` it logged in
    /// with (`app` if none), as PgBouncer's setting of the same name does:
    /// `psql - 10.0.0.7:52114`, so that `pg_stat_activity` shows where a
    /// query came from. A later `SET application_name` is left as is.
    /// Default false.
    pub application_name_add_host: bool,
    /// Extra server connections a pool may open, beyond `pool_size`, once
    /// a client has waited `reserve_pool_timeout` for a server (PgBouncer's
    /// reserve pool); they close again when nobody waits. 0 = none.
    /// Default 0.
    pub reserve_pool_size: usize,
    /// How long a client waits for a server before the pool may use its
    /// `reserve_pool_size`. Default `"5s"`.
    #[serde(with = "humantime_serde")]
    pub reserve_pool_timeout: Duration,
    /// How long a client may wait for a server before it gets the
    /// `query_wait_timeout` error. Default `"120s"`.
    #[serde(with = "humantime_serde")]
    pub query_wait_timeout: Duration,
    /// Time limit for connecting and logging in to Postgres. Default `"5s"`.
    #[serde(with = "humantime_serde")]
    pub server_connect_timeout: Duration,
    /// An unused server connection is closed after this long (down to
    /// `min_pool_size`); `"0s"` turns this off. Default `"10m"`.
    #[serde(with = "humantime_serde")]
    pub server_idle_timeout: Duration,
    /// A server connection is closed when released after being open this
    /// long. Default `"1h"`.
    #[serde(with = "humantime_serde")]
    pub server_lifetime: Duration,
    /// Time limit for a client's whole login (TLS handshake, startup and
    /// authentication, from connecting to ReadyForQuery).
    /// Default `"60s"`.
    #[serde(with = "humantime_serde")]
    pub client_login_timeout: Duration,
    /// Largest message pgtarn buffers whole, in bytes (large DataRow and
    /// CopyData messages are streamed and not bound by it). Default 8388608
    /// (8 MiB).
    pub max_message_len: usize,
    /// How clients authenticate: `"scram-sha-256"`, `"md5"` or `"trust"`;
    /// per database `auth_type` overrides it. Default `"scram-sha-256"`.
    pub auth_type: AuthType,
    /// A `pg_hba.conf`-style file that picks the method per connection
    /// type, database, user and client address when `auth_type = "hba"`
    /// (as in PgBouncer); read at start and on every reload. Default none.
    pub auth_hba_file: Option<std::path::PathBuf>,
    /// SQL run on a session-mode server before another client gets it.
    /// Default `"DISCARD ALL"`.
    pub server_reset_query: String,
    /// Time limit for `server_reset_query`; a server that misses it is
    /// closed. Default `"5s"`.
    #[serde(with = "humantime_serde")]
    pub server_reset_timeout: Duration,
    /// Threads that run client sessions; 0 picks half the CPU cores (at
    /// least one), leaving the rest to Postgres and the applications on a
    /// shared host. With 1, pgtarn runs a single-threaded runtime, which
    /// costs the least CPU per transaction. Default 0.
    pub workers: usize,
    /// Named prepared statements kept prepared on each server connection in
    /// transaction mode (least recently used ones are closed); 0 turns
    /// statement tracking off (named statements are then passed through
    /// untouched). Default 200.
    pub max_prepared_statements: usize,
    /// Most named prepared statements one client may have; the next Parse
    /// fails with 53400. Default 1000.
    pub max_client_prepared_statements: usize,
    /// Most bytes of prepared-statement text (Parse messages) one client may
    /// have; the next Parse fails with 53400. Default 4194304 (4 MiB).
    pub max_client_prepared_bytes: usize,
    /// User (configured in `[users]` with a plaintext password) that looks
    /// up users missing from `[users]` with `auth_query`. Default: none
    /// (unknown users are refused).
    pub auth_user: Option<String>,
    /// Query returning (user name, secret) for `$1`, run as `auth_user` in
    /// the client's database. Default
    /// `"SELECT usename, passwd FROM pg_shadow WHERE usename = $1"`.
    pub auth_query: String,
    /// How long an `auth_query` answer is reused. Default `"60s"`.
    #[serde(with = "humantime_serde")]
    pub auth_cache_ttl: Duration,
    /// Users allowed into the admin console (virtual database `pgtarn`,
    /// also `pgbouncer`) with every command. They authenticate like any
    /// user. Default: none.
    pub admin_users: Vec<String>,
    /// Users allowed into the admin console for read-only `SHOW` commands.
    /// Default: none.
    pub stats_users: Vec<String>,
    /// Address of the HTTP endpoint serving `/metrics` (Prometheus text
    /// format), `/healthz` and `/readyz`. Default: none (no endpoint).
    pub metrics_addr: Option<SocketAddr>,
    /// Window over which `SHOW STATS` averages are computed. Default `"60s"`.
    #[serde(with = "humantime_serde")]
    pub stats_period: Duration,
    /// A logged-in client idle (outside a transaction) this long is
    /// disconnected; 0 disables. Default `"0s"`.
    #[serde(with = "humantime_serde")]
    pub client_idle_timeout: Duration,
    /// A client idle inside a transaction this long gets 25P03 and is
    /// disconnected (its server is discarded); 0 disables. Default `"0s"`.
    #[serde(with = "humantime_serde")]
    pub idle_transaction_timeout: Duration,
    /// A query running this long is cancelled on the server and the client
    /// gets an error; 0 disables. Default `"0s"`.
    #[serde(with = "humantime_serde")]
    pub query_timeout: Duration,
    /// After a failed upstream login, new clients of that pool fail at once
    /// with the same error for this long instead of each trying again.
    /// Default `"15s"`.
    #[serde(with = "humantime_serde")]
    pub server_login_retry: Duration,
    /// Time limit for delivering a cancel request to Postgres. Default
    /// `"10s"`.
    #[serde(with = "humantime_serde")]
    pub cancel_wait_timeout: Duration,
    /// SQL run on a server connection that sat idle longer than
    /// `server_check_delay` before it is handed out; empty disables the
    /// check. Default `"SELECT 1"`.
    pub server_check_query: String,
    /// How long a server connection may sit idle before it is checked with
    /// `server_check_query`. Default `"30s"`.
    #[serde(with = "humantime_serde")]
    pub server_check_delay: Duration,
    /// On `SIGTERM` or admin `SHUTDOWN`, how long running transactions get
    /// to finish before remaining clients are disconnected with 57P01.
    /// Default `"30s"`.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// TCP keepalive on client and server connections, so that a peer
    /// gone without a word (a crashed host, a NAT that forgot the
    /// connection) is noticed. Default true.
    pub tcp_keepalive: bool,
    /// Idle time before the first keepalive probe; `"0s"` = the OS
    /// default (Linux: 2 hours). Default `"0s"`.
    #[serde(with = "humantime_serde")]
    pub tcp_keepidle: Duration,
    /// Time between unanswered keepalive probes; `"0s"` = the OS default
    /// (Linux: 75 s). Default `"0s"`.
    #[serde(with = "humantime_serde")]
    pub tcp_keepintvl: Duration,
    /// Unanswered probes before the connection is dropped; 0 = the OS
    /// default (Linux: 9). Default 0.
    pub tcp_keepcnt: u32,
}

impl General {
    /// The TCP keepalive settings.
    pub fn keepalive(&self) -> crate::net::Keepalive {
        crate::net::Keepalive {
            enabled: self.tcp_keepalive,
            idle: self.tcp_keepidle,
            interval: self.tcp_keepintvl,
            count: self.tcp_keepcnt,
        }
    }

    /// The runtime threads `workers` asks for: itself, or for 0 half the
    /// CPU cores, at least one.
    pub fn worker_threads(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1)),
            n => n,
        }
    }

    /// Every setting as (key, value text), sorted by key; unset optional
    /// settings are left out.
    pub fn settings(&self) -> BTreeMap<String, String> {
        let Ok(toml::Value::Table(t)) = toml::Value::try_from(self) else {
            return BTreeMap::new();
        };
        t.into_iter()
            .map(|(k, v)| {
                let text = match v {
                    toml::Value::String(s) => s,
                    other => other.to_string(),
                };
                (k, text)
            })
            .collect()
    }
}

impl Default for General {
    fn default() -> Self {
        General {
            listen_addr: SocketAddr::from(([127, 0, 0, 1], 6432)),
            so_reuseport: false,
            unix_socket_dir: None,
            max_db_connections: 0,
            max_user_connections: 0,
            max_client_conn: 1000,
            max_db_client_connections: 0,
            max_user_client_connections: 0,
            application_name_add_host: false,
            reserve_pool_size: 0,
            reserve_pool_timeout: Duration::from_secs(5),
            query_wait_timeout: Duration::from_secs(120),
            server_connect_timeout: Duration::from_secs(5),
            server_idle_timeout: Duration::from_secs(600),
            server_lifetime: Duration::from_secs(3600),
            client_login_timeout: Duration::from_secs(60),
            max_message_len: 8 << 20,
            auth_type: AuthType::ScramSha256,
            auth_hba_file: None,
            server_reset_query: "DISCARD ALL".into(),
            server_reset_timeout: Duration::from_secs(5),
            workers: 0,
            max_prepared_statements: 200,
            max_client_prepared_statements: 1000,
            max_client_prepared_bytes: 4 << 20,
            auth_user: None,
            auth_query: "SELECT usename, passwd FROM pg_shadow WHERE usename = $1".into(),
            auth_cache_ttl: Duration::from_secs(60),
            admin_users: Vec::new(),
            stats_users: Vec::new(),
            metrics_addr: None,
            stats_period: Duration::from_secs(60),
            client_idle_timeout: Duration::ZERO,
            idle_transaction_timeout: Duration::ZERO,
            query_timeout: Duration::ZERO,
            server_login_retry: Duration::from_secs(15),
            cancel_wait_timeout: Duration::from_secs(10),
            server_check_query: "SELECT 1".into(),
            server_check_delay: Duration::from_secs(30),
            shutdown_timeout: Duration::from_secs(30),
            tcp_keepalive: true,
            tcp_keepidle: Duration::ZERO,
            tcp_keepintvl: Duration::ZERO,
            tcp_keepcnt: 0,
        }
    }
}

/// `[databases.NAME]`: one database clients may connect to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Database {
    /// Postgres host name or address; several, comma-separated, are tried
    /// in turn (see `load_balance_hosts`). Default `"127.0.0.1"`.
    #[serde(default = "default_host")]
    pub host: String,
    /// Postgres port. Default 5432.
    #[serde(default = "default_port")]
    pub port: u16,
    /// Database name upstream. Default: the section's name.
    pub dbname: Option<String>,
    /// With several hosts in `host` (comma-separated, as in PgBouncer):
    /// `"round-robin"` starts each new server connection at the next
    /// host in turn, `"disable"` always at the first; either way the
    /// others are tried in order when one does not answer. Default
    /// `"round-robin"`.
    #[serde(default)]
    pub load_balance_hosts: LoadBalanceHosts,
    /// Log in upstream as this user whatever user the client logged in
    /// as (PgBouncer's `user=` in a database entry, `force_user`): the
    /// database's clients share one pool, whose settings and
    /// `max_user_connections` are this user's. It must be in `[users]`,
    /// whose password pgtarn uses upstream. Clients still authenticate as
    /// themselves. Default: none.
    pub user: Option<String>,
    /// `"transaction"`, `"session"` or `"statement"`. Default
    /// `"transaction"`.
    #[serde(default)]
    pub pool_mode: PoolMode,
    /// Most server connections per (database, user) pool. Default 20.
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    /// Server connections kept open per pool once it exists. Default 0.
    #[serde(default)]
    pub min_pool_size: usize,
    /// SQL run on each new server connection of this database after its
    /// login, before any client uses it (PgBouncer's `connect_query`),
    /// within `server_connect_timeout`; in session mode again after
    /// `server_reset_query`. If it fails, the connection is closed and
    /// clients get its error, as for a failed login. A reload that
    /// changes it replaces the server connections (each when released),
    /// as a changed host does. Default: none.
    pub connect_query: Option<String>,
    /// Overrides `[pgtarn] server_lifetime` for this database's server
    /// connections. Default: none.
    #[serde(default, with = "humantime_serde")]
    pub server_lifetime: Option<Duration>,
    /// Overrides `[pgtarn] auth_type` for this database. Default: none.
    pub auth_type: Option<AuthType>,
    /// Overrides `[tls.server] mode` for this database. Default: none.
    pub server_tls_mode: Option<ServerTlsMode>,
    /// Overrides `[pgtarn] max_db_connections` for this database.
    /// Default: none.
    pub max_db_connections: Option<usize>,
    /// Overrides `[pgtarn] max_db_client_connections` for this database.
    /// Default: none.
    pub max_db_client_connections: Option<usize>,
    /// Overrides `[pgtarn] reserve_pool_size` for this database's pools.
    /// Default: none.
    pub reserve_pool_size: Option<usize>,
}

impl Database {
    /// The most server connections to this database, across its users'
    /// pools, under `general`; 0: no limit.
    pub fn max_connections(&self, general: &General) -> usize {
        self.max_db_connections
            .unwrap_or(general.max_db_connections)
    }

    /// The most client connections to this database, across its users,
    /// under `general`; 0: no limit.
    pub fn max_client_connections(&self, general: &General) -> usize {
        self.max_db_client_connections
            .unwrap_or(general.max_db_client_connections)
    }
}

fn default_host() -> String {
    "127.0.0.1".into()
}
fn default_port() -> u16 {
    5432
}
fn default_pool_size() -> usize {
    20
}

/// `[users.NAME]`: a user clients may log in as.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    /// The user's secret, required, never logged: a plaintext password, a
    /// SCRAM verifier as in `pg_authid.rolpassword`
    /// (`SCRAM-SHA-256$4096:salt$StoredKey:ServerKey`), or an md5 hash
    /// (`md5` + 32 hex digits). Checked when clients log in; pgtarn logs in
    /// upstream with the password, the md5 hash (md5 servers), or SCRAM
    /// passthrough (verifier).
    pub password: String,
    /// Overrides the database's `pool_mode` for this user's pools.
    /// Default: none.
    pub pool_mode: Option<PoolMode>,
    /// Overrides the database's `pool_size` for this user's pools.
    /// Default: none.
    pub pool_size: Option<usize>,
    /// Overrides the database's `reserve_pool_size` for this user's
    /// pools. Default: none.
    pub reserve_pool_size: Option<usize>,
    /// Overrides `[pgtarn] max_user_connections` for this user.
    /// Default: none.
    pub max_user_connections: Option<usize>,
    /// Overrides `[pgtarn] max_user_client_connections` for this user.
    /// Default: none.
    pub max_user_client_connections: Option<usize>,
    /// Overrides `[pgtarn] query_timeout` for this user's clients.
    /// Default: none.
    #[serde(default, with = "humantime_serde")]
    pub query_timeout: Option<Duration>,
}

impl User {
    /// The most server connections of this user, across its pools, under
    /// `general`; 0: no limit.
    pub fn max_connections(&self, general: &General) -> usize {
        self.max_user_connections
            .unwrap_or(general.max_user_connections)
    }

    /// The most client connections of this user, across databases, under
    /// `general`; 0: no limit.
    pub fn max_client_connections(&self, general: &General) -> usize {
        self.max_user_client_connections
            .unwrap_or(general.max_user_client_connections)
    }
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("password", &"<redacted>")
            .field("pool_mode", &self.pool_mode)
            .field("pool_size", &self.pool_size)
            .field("reserve_pool_size", &self.reserve_pool_size)
            .field("max_user_connections", &self.max_user_connections)
            .field(
                "max_user_client_connections",
                &self.max_user_client_connections,
            )
            .field("query_timeout", &self.query_timeout)
            .finish()
    }
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::from_toml(&text)
    }

    /// Parses and validates TOML text.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks ranges and cross-field rules; the error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: String, reason: String| Err(ConfigError::Invalid { key, reason });
        let g = &self.pgtarn;
        if g.max_client_conn == 0 {
            return invalid("pgtarn.max_client_conn".into(), "must be at least 1".into());
        }
        if g.max_message_len < 1024 {
            return invalid(
                "pgtarn.max_message_len".into(),
                "must be at least 1024 bytes".into(),
            );
        }
        if let Some(dir) = &g.unix_socket_dir
            && !dir.is_dir()
        {
            let reason = format!("{} is not a directory", dir.display());
            return invalid("pgtarn.unix_socket_dir".into(), reason);
        }
        for (key, d) in [
            ("query_wait_timeout", g.query_wait_timeout),
            ("server_connect_timeout", g.server_connect_timeout),
            ("client_login_timeout", g.client_login_timeout),
            ("server_reset_timeout", g.server_reset_timeout),
            ("cancel_wait_timeout", g.cancel_wait_timeout),
            ("reserve_pool_timeout", g.reserve_pool_timeout),
            ("stats_period", g.stats_period),
            ("shutdown_timeout", g.shutdown_timeout),
        ] {
            if d.is_zero() {
                return invalid(format!("pgtarn.{key}"), "must be greater than 0".into());
            }
        }
        let hba = g.auth_type == AuthType::Hba
            || self
                .databases
                .values()
                .any(|d| d.auth_type == Some(AuthType::Hba));
        if hba && g.auth_hba_file.is_none() {
            let reason = "auth_type = \"hba\" needs auth_hba_file".into();
            return invalid("pgtarn.auth_hba_file".into(), reason);
        }
        for (name, db) in &self.databases {
            let key = |k: &str| format!("databases.{name}.{k}");
            if crate::config::ADMIN_DATABASES.contains(&name.as_str()) {
                return invalid(
                    format!("databases.{name}"),
                    "is the admin console's name".into(),
                );
            }
            if db.pool_size == 0 {
                return invalid(key("pool_size"), "must be at least 1".into());
            }
            if db.min_pool_size > db.pool_size {
                let reason = format!("{} exceeds pool_size ({})", db.min_pool_size, db.pool_size);
                return invalid(key("min_pool_size"), reason);
            }
            if crate::backend::hosts(&db.host).next().is_none() {
                return invalid(key("host"), "must name a host".into());
            }
            if let Some(user) = &db.user
                && !self.users.contains_key(user)
            {
                let reason = format!("user \"{user}\" is not in [users]");
                return invalid(key("user"), reason);
            }
        }
        for (name, user) in &self.users {
            if let Err(reason) = crate::auth::Secret::parse(&user.password) {
                return invalid(format!("users.{name}.password"), reason.to_string());
            }
            if user.pool_size == Some(0) {
                return invalid(
                    format!("users.{name}.pool_size"),
                    "must be at least 1".into(),
                );
            }
        }
        if let Some(name) = &g.auth_user {
            let plain = self
                .users
                .get(name)
                .map(|u| crate::auth::Secret::parse(&u.password));
            if !matches!(plain, Some(Ok(crate::auth::Secret::Password(_)))) {
                let reason = format!("\"{name}\" must be in [users] with a plaintext password");
                return invalid("pgtarn.auth_user".into(), reason);
            }
        }
        self.validate_tls()
    }

    fn validate_tls(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, reason: &str| {
            Err(ConfigError::Invalid {
                key: key.into(),
                reason: reason.into(),
            })
        };
        let c = &self.tls.client;
        if c.mode != ClientTlsMode::Disable && (c.cert.is_none() || c.key.is_none()) {
            return invalid(
                "tls.client.mode",
                "needs tls.client.cert and tls.client.key",
            );
        }
        // A client certificate can only come over TLS: with `allow` or
        // `prefer` a plaintext client would log in without one.
        if c.ca.is_some() && matches!(c.mode, ClientTlsMode::Allow | ClientTlsMode::Prefer) {
            return invalid(
                "tls.client.ca",
                "needs tls.client.mode = \"require\" (clients without TLS present no certificate)",
            );
        }
        let s = &self.tls.server;
        let modes = std::iter::once(s.mode)
            .chain(self.databases.values().filter_map(|d| d.server_tls_mode));
        if s.ca.is_none()
            && modes
                .clone()
                .any(|m| matches!(m, ServerTlsMode::VerifyCa | ServerTlsMode::VerifyFull))
        {
            return invalid("tls.server.ca", "is required by verify-ca and verify-full");
        }
        if s.cert.is_some() != s.key.is_some() {
            return invalid(
                "tls.server.cert",
                "tls.server.cert and tls.server.key go together",
            );
        }
        Ok(())
    }
}

impl Database {
    /// The client authentication method for this database.
    pub fn auth_type(&self, general: &General) -> AuthType {
        self.auth_type.unwrap_or(general.auth_type)
    }

    /// Extra connections each of this database's pools may open once a
    /// client has waited `reserve_pool_timeout`, under `general`.
    pub fn reserve_pool_size(&self, general: &General) -> usize {
        self.reserve_pool_size.unwrap_or(general.reserve_pool_size)
    }

    /// The database name to use upstream for client-facing name `name`.
    pub fn upstream_name<'a>(&'a self, name: &'a str) -> &'a str {
        self.dbname.as_deref().unwrap_or(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_example() {
        let c = Config::from_toml(
            r#"
            [pgtarn]
            listen_addr = "127.0.0.1:6432"
            max_client_conn = 1000
            query_wait_timeout = "120s"
            server_connect_timeout = "5s"
            server_idle_timeout = "10m"
            server_lifetime = "1h"
            [databases.app]
            host = "127.0.0.1"
            port = 5432
            dbname = "app"
            pool_mode = "transaction"
            pool_size = 20
            min_pool_size = 0
            [users.app]
            password = "secret"
            "#,
        )
        .unwrap();
        assert_eq!(c.pgtarn.server_idle_timeout, Duration::from_secs(600));
        assert_eq!(c.databases["app"].pool_mode, PoolMode::Transaction);
        assert!(
            !format!("{c:?}").contains("secret"),
            "passwords are redacted"
        );
    }

    #[test]
    fn errors_name_the_bad_key() {
        let err = |t: &str| Config::from_toml(t).unwrap_err().to_string();
        assert!(err("[pgtarn]\nlisten_port = 1").contains("listen_port"));
        assert!(err("[databases.a]\npool_size = 0").contains("databases.a.pool_size"));
        let e = err("[databases.a]\npool_size = 2\nmin_pool_size = 3");
        assert!(e.contains("databases.a.min_pool_size"), "{e}");
        assert!(err("[pgtarn]\nquery_wait_timeout = \"soon\"").contains("query_wait_timeout"));
        assert!(err("[databases.a]\npool_mode = \"banana\"").contains("pool_mode"));
        assert!(err("[users.u]\npasword = \"x\"").contains("pasword"));
    }

    #[test]
    fn workers_zero_means_half_the_cores_and_at_least_one() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let with = |workers| {
            General {
                workers,
                ..General::default()
            }
            .worker_threads()
        };
        assert_eq!(with(0), (cores / 2).max(1));
        assert_eq!(with(1), 1);
        assert_eq!(with(6), 6);
    }
}
