//! The registry of pools: finds or creates the pool for (database, user),
//! runs each pool's maintenance task, applies reloads, and pauses,
//! resumes and reconnects pools for the admin console.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tracing::info;

use super::{KeyRef, Pool, PoolKey, PoolSettings};
use crate::auth::Secret;
use crate::auth::scram_client::ScramKeys;
use crate::backend::limit::DbLimit;
use crate::backend::{Credential, Target, UpstreamTls};
use crate::config::{Config, Database, LoadBalanceHosts};
use crate::stats::clients::{ConnInfo, ConnList};
use crate::stats::{Metrics, PoolStats};
use crate::tls::TlsError;

/// Why no pool exists for a client's (database, user).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LookupError {
    /// The database is not configured.
    #[error("no such database: {0}")]
    UnknownDatabase(String),
    /// The user is not configured.
    #[error("no such user: {0}")]
    UnknownUser(String),
}

type TlsMap = HashMap<String, Option<UpstreamTls>>;

/// All pools, created on first use.
#[derive(Debug)]
pub struct Registry {
    config: ArcSwap<Config>,
    /// Metric families pools record into.
    pub metrics: Metrics,
    /// Every server connection (`SHOW SERVERS`).
    pub servers: Arc<ConnList>,
    pools: Mutex<HashMap<PoolKey, Arc<Pool>>>,
    /// TLS towards each database (by client-facing name).
    upstream_tls: ArcSwap<TlsMap>,
    /// Paused databases; `None` in the set pauses all.
    paused: Mutex<BTreeSet<Option<String>>>,
    /// Databases that take no new clients (`DISABLE`).
    disabled: Mutex<BTreeSet<String>>,
    /// Each database's `max_db_connections` count, shared by its pools.
    limits: Mutex<HashMap<String, Arc<DbLimit>>>,
    /// Each user's `max_user_connections` count, shared by its pools.
    user_limits: Mutex<HashMap<String, Arc<DbLimit>>>,
    /// Pools retired by a reload, alive while clients still use them:
    /// `PAUSE`, `RESUME`, `KILL` and `RECONNECT` reach them too.
    retired: Mutex<Vec<Weak<Pool>>>,
}

/// How often pool maintenance runs.
const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(1);

fn build_tls(config: &Config) -> Result<TlsMap, TlsError> {
    let s = &config.tls.server;
    let cert_key = s.cert.as_deref().zip(s.key.as_deref());
    let mut map = HashMap::new();
    for (name, db) in &config.databases {
        let mode = db.server_tls_mode.unwrap_or(s.mode);
        let tls =
            crate::tls::upstream_tls(mode, s.ca.as_deref(), cert_key)?.map(|config| UpstreamTls {
                config,
                required: mode.requires_tls(),
            });
        map.insert(name.clone(), tls);
    }
    Ok(map)
}

impl Registry {
    /// An empty registry for `config`; fails if a database's TLS settings
    /// cannot be loaded (the error names the files).
    pub fn new(config: Arc<Config>, metrics: Metrics) -> Result<Self, TlsError> {
        let upstream_tls = build_tls(&config)?;
        Ok(Registry {
            config: ArcSwap::new(config),
            metrics,
            servers: ConnList::new(1),
            pools: Mutex::new(HashMap::new()),
            upstream_tls: ArcSwap::from_pointee(upstream_tls),
            paused: Mutex::default(),
            disabled: Mutex::default(),
            limits: Mutex::default(),
            user_limits: Mutex::default(),
            retired: Mutex::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PoolKey, Arc<Pool>>> {
        self.pools.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The pool for `database` and `user`, created (with its maintenance
    /// task) on first use; `secret` is the user's, for logging in upstream
    /// (from `[users]` or `auth_query`).
    pub fn get(
        &self,
        database: &str,
        user: &str,
        secret: Option<&Secret>,
    ) -> Result<Arc<Pool>, LookupError> {
        let mut pools = self.lock();
        if let Some(pool) = pools.get(&(database, user) as &dyn KeyRef) {
            return Ok(pool.clone());
        }
        let key = PoolKey {
            database: database.to_owned(),
            user: user.to_owned(),
        };
        let pool = self.build(key.clone(), secret)?;
        if self.is_paused(database) {
            pool.set_paused(true);
        }
        pools.insert(key, pool.clone());
        spawn_maintenance(Arc::downgrade(&pool));
        Ok(pool)
    }

    /// The TLS settings towards `database`'s server, if it uses TLS.
    pub fn upstream_tls(&self, database: &str) -> Option<UpstreamTls> {
        self.upstream_tls.load().get(database)?.clone()
    }

    /// The pool for `database` and `user`, if a client created it.
    pub fn find(&self, database: &str, user: &str) -> Option<Arc<Pool>> {
        self.lock().get(&(database, user) as &dyn KeyRef).cloned()
    }

    /// Every pool created so far (and not retired by a reload).
    pub fn pools(&self) -> Vec<Arc<Pool>> {
        self.lock().values().cloned().collect()
    }

    /// Every pool clients may still use: [`Registry::pools`] and those
    /// retired by a reload that are still alive.
    pub fn all_pools(&self) -> Vec<Arc<Pool>> {
        let mut pools = self.pools();
        let mut retired = self.retired.lock().unwrap_or_else(|p| p.into_inner());
        retired.retain(|w| w.strong_count() > 0);
        pools.extend(retired.iter().filter_map(Weak::upgrade));
        pools
    }

    fn matching(&self, db: Option<&str>) -> Vec<Arc<Pool>> {
        let mut pools = self.all_pools();
        pools.retain(|p| db.is_none_or(|d| p.key.database == d));
        pools
    }

    fn build(&self, key: PoolKey, secret: Option<&Secret>) -> Result<Arc<Pool>, LookupError> {
        let c = self.config.load();
        let db = c
            .databases
            .get(&key.database)
            .ok_or_else(|| LookupError::UnknownDatabase(key.database.clone()))?;
        let secret = secret.ok_or_else(|| LookupError::UnknownUser(key.user.clone()))?;
        let passthrough = Arc::new(Mutex::new(None));
        let credential = credential(secret, &passthrough);
        let target = self.target(&c, db, &key, credential);
        let upstream = upstream(&c, &key);
        let settings = settings(&c, &key.database, &key.user)
            .ok_or_else(|| LookupError::UnknownDatabase(key.database.clone()))?;
        let stats = PoolStats::new(
            &self.metrics,
            &key.database,
            &key.user,
            settings.mode.as_str(),
        );
        let servers = self.servers.clone();
        let limit = limit_of(&self.limits, &key.database, db.max_connections(&c.pgtarn));
        let user_max = user_max_connections(&c, &key.user);
        let user_limit = limit_of(&self.user_limits, &key.user, user_max);
        let shared = super::Shared {
            stats: Arc::new(stats),
            servers,
            db_limit: limit,
            user_limit,
        };
        Ok(Pool::new(
            key,
            target,
            settings,
            passthrough,
            upstream,
            shared,
        ))
    }

    /// Where `key`'s connections go under `c`, to `db`, logging in with
    /// `credential`.
    fn target(&self, c: &Config, db: &Database, key: &PoolKey, credential: Credential) -> Target {
        let several = crate::backend::hosts(&db.host).nth(1).is_some();
        Target {
            host: db.host.clone(),
            round_robin: (several && db.load_balance_hosts == LoadBalanceHosts::RoundRobin)
                .then(Arc::default),
            port: db.port,
            dbname: db.upstream_name(&key.database).to_owned(),
            user: key.user.clone(),
            credential,
            max_message_len: c.pgtarn.max_message_len,
            tls: self.upstream_tls(&key.database),
            keepalive: c.pgtarn.keepalive(),
        }
    }

    /// Applies a reloaded configuration. Pools of removed databases are
    /// retired (new clients are refused, connected clients finish on the
    /// old pool), and so are pools whose `pool_mode` changed and pools of
    /// users other than their database's (new) forced `user` (new clients
    /// get a new pool). Other pools take the new sizes and timeouts at once, and
    /// new connections go to the new upstream with the new credentials
    /// (and TLS files read anew); when the upstream (address, database
    /// name, TLS settings) changed, the existing server connections are
    /// closed when released, as with `RECONNECT`, while clients stay
    /// connected.
    pub fn apply(
        &self,
        config: Arc<Config>,
        secret_of: impl Fn(&str) -> Option<Secret>,
    ) -> Result<(), TlsError> {
        let tls = build_tls(&config)?;
        self.upstream_tls.store(Arc::new(tls));
        self.config.store(config.clone());
        // A database removed by the reload forgets its `DISABLE`: added
        // again later, it is a new database.
        let mut disabled = self.disabled.lock().unwrap_or_else(|p| p.into_inner());
        disabled.retain(|db| config.databases.contains_key(db));
        drop(disabled);
        let mut pools = self.lock();
        let mut retired = Vec::new();
        pools.retain(|key, pool| {
            let db = config.databases.get(&key.database);
            let Some((db, settings)) = db.zip(settings(&config, &key.database, &key.user)) else {
                info!(database = %key.database, user = %key.user, "pool retired by reload: database removed");
                pool.retire();
                retired.push(Arc::downgrade(pool));
                return false;
            };
            // The pool mode is part of a pool's identity (its metric
            // labels): new clients get a new pool, connected ones keep
            // the mode they logged in with on the old one.
            if settings.mode != pool.settings().mode {
                info!(database = %key.database, user = %key.user, "pool retired by reload: pool_mode changed");
                pool.retire();
                retired.push(Arc::downgrade(pool));
                return false;
            }
            // Clients of a database whose forced user changed get the new
            // user's pool; connected ones finish on this one, retired (no
            // min_pool_size fill as the old user).
            if db.user.as_ref().is_some_and(|forced| *forced != key.user) {
                info!(database = %key.database, user = %key.user, "pool retired by reload: the database's user changed");
                pool.retire();
                retired.push(Arc::downgrade(pool));
                return false;
            }
            pool.update(settings);
            // A user found by auth_query has no secret in the file: its
            // pool keeps logging in as it did.
            let secret = secret_of(&key.user);
            let target = self.target(&config, db, key, pool.credential(secret.as_ref()));
            if pool.retarget(target, upstream(&config, key)) {
                info!(database = %key.database, user = %key.user, "upstream changed by reload: server connections replaced");
            }
            true
        });
        drop(pools);
        let mut old = self.retired.lock().unwrap_or_else(|p| p.into_inner());
        old.extend(retired);
        drop(old);
        let limits = self.limits.lock().unwrap_or_else(|e| e.into_inner());
        for (name, limit) in limits.iter() {
            if let Some(db) = config.databases.get(name) {
                limit.set_max(db.max_connections(&config.pgtarn));
            }
        }
        let user_limits = self.user_limits.lock().unwrap_or_else(|e| e.into_inner());
        for (name, limit) in user_limits.iter() {
            limit.set_max(user_max_connections(&config, name));
        }
        Ok(())
    }

    /// The server connections open (or opening) to database `name`, as
    /// `max_db_connections` counts them: retired pools' included.
    pub fn database_connections(&self, name: &str) -> usize {
        open_in(&self.limits, name)
    }

    /// The server connections open (or opening) for user `name` across
    /// its databases, as `max_user_connections` counts them.
    pub fn user_connections(&self, name: &str) -> usize {
        open_in(&self.user_limits, name)
    }

    /// The clients logged in to database `name` (0 before its first).
    pub fn database_clients(&self, name: &str) -> usize {
        clients_in(&self.limits, name)
    }

    /// The clients logged in as user `name`, across databases.
    pub fn user_clients(&self, name: &str) -> usize {
        clients_in(&self.user_limits, name)
    }

    /// User `name`'s count (server connections and clients), made if
    /// need be.
    pub fn user_limit(&self, name: &str) -> Arc<DbLimit> {
        let max = user_max_connections(&self.config.load(), name);
        limit_of(&self.user_limits, name, max)
    }

    /// Makes new checkouts of `db`'s pools (all pools if `None`) wait.
    pub fn pause(&self, db: Option<&str>) {
        self.paused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(db.map(str::to_owned));
        for pool in self.matching(db) {
            pool.set_paused(true);
        }
    }

    /// Waits until no server of `db`'s pools is in use, then closes their
    /// idle servers; false if `limit` passed first.
    pub async fn wait_paused(&self, db: Option<&str>, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            let pools = self.matching(db);
            if pools.iter().all(|p| p.size() == p.idle()) {
                for p in pools {
                    p.reconnect();
                }
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Lifts a pause of `db` (or of everything); false if it was not paused.
    pub fn resume(&self, db: Option<&str>) -> bool {
        let mut paused = self.paused.lock().unwrap_or_else(|p| p.into_inner());
        let was = match db {
            Some(d) => paused.remove(&Some(d.to_owned())),
            None => {
                let any = !paused.is_empty();
                paused.clear();
                any
            }
        };
        drop(paused);
        for pool in self.all_pools() {
            pool.set_paused(self.is_paused(&pool.key.database));
        }
        was
    }

    /// True if every database is paused (`PAUSE` without a name).
    pub fn is_paused_all(&self) -> bool {
        let paused = self.paused.lock().unwrap_or_else(|p| p.into_inner());
        paused.contains(&None)
    }

    /// True if `db` is paused (by name or by a pause of everything).
    pub fn is_paused(&self, db: &str) -> bool {
        let paused = self.paused.lock().unwrap_or_else(|p| p.into_inner());
        paused.contains(&None) || paused.contains(&Some(db.to_owned()))
    }

    /// Refuses new clients of `db` (`DISABLE`), or admits them again
    /// (`ENABLE`). Its clients stay.
    pub fn set_disabled(&self, db: &str, disabled: bool) {
        let mut set = self.disabled.lock().unwrap_or_else(|p| p.into_inner());
        if disabled {
            set.insert(db.to_owned());
        } else {
            set.remove(db);
        }
    }

    /// True if `db` takes no new clients.
    pub fn is_disabled(&self, db: &str) -> bool {
        let set = self.disabled.lock().unwrap_or_else(|p| p.into_inner());
        !set.is_empty() && set.contains(db)
    }

    /// True if server `s` must close: older than its own pool's last
    /// `RECONNECT` (or reload that moved or retired the pool).
    pub fn close_needed(&self, s: &ConnInfo) -> bool {
        s.close_needed()
    }

    /// Waits until no server of `db` (or of any database) must close
    /// (`WAIT_CLOSE`): each closes when it is next idle.
    pub async fn wait_closed(&self, db: Option<&str>) {
        loop {
            let servers = self.servers.snapshot();
            let mine = |s: &&Arc<ConnInfo>| db.is_none_or(|d| s.facts.database == d);
            if !servers.iter().filter(mine).any(|s| self.close_needed(s)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Closes `db`'s (or every) server connection as soon as it is idle.
    pub fn reconnect(&self, db: Option<&str>) {
        for pool in self.matching(db) {
            pool.reconnect();
        }
    }

    /// Closes every pool.
    pub fn close_all(&self) {
        for pool in self.pools() {
            pool.close();
        }
    }
}

/// Where a pool's connections go: upstream address, database name and
/// TLS settings, and how they are prepared (`connect_query`, whose
/// settings are the login values clients are told). Credentials, sizes,
/// timeouts and the pool mode change in place.
fn upstream(c: &Config, key: &PoolKey) -> String {
    let Some(db) = c.databases.get(&key.database) else {
        return String::new();
    };
    format!(
        "{}:{}/{}|{:?}|{:?}|{:?}",
        db.host,
        db.port,
        db.upstream_name(&key.database),
        db.server_tls_mode,
        c.tls.server,
        db.connect_query,
    )
}

/// How a pool logs in upstream with `secret`.
pub(super) fn credential(
    secret: &Secret,
    passthrough: &Arc<Mutex<Option<ScramKeys>>>,
) -> Credential {
    match secret {
        Secret::Password(p) => Credential::Password(p.clone()),
        Secret::Md5(h) => Credential::Md5Hash(h.clone()),
        Secret::Scram(_) => Credential::ScramKeys(passthrough.clone()),
    }
}

/// The count `name` keeps in `limits` (a database's or a user's), made
/// with limit `max` if it does not exist yet.
fn limit_of(limits: &Mutex<HashMap<String, Arc<DbLimit>>>, name: &str, max: usize) -> Arc<DbLimit> {
    let mut limits = limits.lock().unwrap_or_else(|e| e.into_inner());
    limits
        .entry(name.to_owned())
        .or_insert_with(|| DbLimit::new(max))
        .clone()
}

/// The connections `name`'s count in `limits` holds (0 if it has none).
fn open_in(limits: &Mutex<HashMap<String, Arc<DbLimit>>>, name: &str) -> usize {
    let limits = limits.lock().unwrap_or_else(|e| e.into_inner());
    limits.get(name).map_or(0, |l| l.open())
}

/// The clients `name`'s count in `limits` holds (0 if it has none).
fn clients_in(limits: &Mutex<HashMap<String, Arc<DbLimit>>>, name: &str) -> usize {
    let limits = limits.lock().unwrap_or_else(|e| e.into_inner());
    limits.get(name).map_or(0, |l| l.clients())
}

/// `user`'s `max_user_connections` under `c` (a user found by
/// `auth_query` has the `[pgtarn]` default).
fn user_max_connections(c: &Config, user: &str) -> usize {
    match c.users.get(user) {
        Some(u) => u.max_connections(&c.pgtarn),
        None => c.pgtarn.max_user_connections,
    }
}

/// The settings of `database`'s pool for `user`: a setting in
/// `[users.USER]` overrides the database's, as in PgBouncer.
fn settings(c: &Config, database: &str, user: &str) -> Option<PoolSettings> {
    let db = c.databases.get(database)?;
    let g = &c.pgtarn;
    let u = c.users.get(user);
    let size = u.and_then(|u| u.pool_size).unwrap_or(db.pool_size);
    Some(PoolSettings {
        mode: u.and_then(|u| u.pool_mode).unwrap_or(db.pool_mode),
        size,
        reserve: u
            .and_then(|u| u.reserve_pool_size)
            .unwrap_or(db.reserve_pool_size(g)),
        reserve_timeout: g.reserve_pool_timeout,
        min_size: db.min_pool_size.min(size),
        wait_timeout: g.query_wait_timeout,
        connect_timeout: g.server_connect_timeout,
        idle_timeout: g.server_idle_timeout,
        lifetime: db.server_lifetime.unwrap_or(g.server_lifetime),
        reset_query: g.server_reset_query.clone(),
        connect_query: db.connect_query.as_deref().map(Arc::from),
        reset_timeout: g.server_reset_timeout,
        max_prepared_statements: g.max_prepared_statements,
        client_statement_limits: super::StatementLimits {
            max_statements: g.max_client_prepared_statements,
            max_bytes: g.max_client_prepared_bytes,
        },
        health: super::HealthSettings::from_general(g),
    })
}

fn spawn_maintenance(pool: std::sync::Weak<Pool>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(MAINTENANCE_INTERVAL);
        loop {
            tick.tick().await;
            let Some(pool) = pool.upgrade() else { return };
            if pool.inner.is_closed() {
                return;
            }
            pool.maintain().await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn borrowed_keys_find_exactly_their_pool() {
        let key = |d: &str, u: &str| PoolKey {
            database: d.into(),
            user: u.into(),
        };
        let map: HashMap<PoolKey, u32> = [(key("app", "bob"), 1), (key("ab", "pbob"), 2)].into();
        assert_eq!(map.get(&("app", "bob") as &dyn KeyRef), Some(&1));
        assert_eq!(map.get(&("ab", "pbob") as &dyn KeyRef), Some(&2));
        assert_eq!(map.get(&("app", "pbob") as &dyn KeyRef), None);
        assert_eq!(map.get(&("appb", "ob") as &dyn KeyRef), None);
        assert_eq!(map.get(&("bob", "app") as &dyn KeyRef), None);
    }
}
