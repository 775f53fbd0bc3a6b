//! The registry of pools: finds or creates the pool for (database, user)
//! and runs each pool's maintenance task.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{Pool, PoolKey, PoolSettings};
use crate::auth::Secret;
use crate::backend::{Credential, Target, UpstreamTls};
use crate::config::Config;
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

/// All pools, created on first use.
#[derive(Debug)]
pub struct Registry {
    config: Arc<Config>,
    pools: Mutex<HashMap<PoolKey, Arc<Pool>>>,
    /// TLS towards each database (by client-facing name), built at start.
    upstream_tls: HashMap<String, Option<UpstreamTls>>,
}

/// How often pool maintenance runs.
const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(1);

impl Registry {
    /// An empty registry for `config`; fails if a database's TLS settings
    /// cannot be loaded (the error names the files).
    pub fn new(config: Arc<Config>) -> Result<Self, TlsError> {
        let s = &config.tls.server;
        let cert_key = s.cert.as_deref().zip(s.key.as_deref());
        let mut upstream_tls = HashMap::new();
        for (name, db) in &config.databases {
            let mode = db.server_tls_mode.unwrap_or(s.mode);
            let tls = crate::tls::upstream_tls(mode, s.ca.as_deref(), cert_key)?.map(|config| {
                UpstreamTls {
                    config,
                    required: mode.requires_tls(),
                }
            });
            upstream_tls.insert(name.clone(), tls);
        }
        Ok(Registry {
            config,
            pools: Mutex::new(HashMap::new()),
            upstream_tls,
        })
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
        let key = PoolKey {
            database: database.to_owned(),
            user: user.to_owned(),
        };
        let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(pool) = pools.get(&key) {
            return Ok(pool.clone());
        }
        let pool = self.build(key.clone(), secret)?;
        pools.insert(key, pool.clone());
        spawn_maintenance(Arc::downgrade(&pool));
        Ok(pool)
    }

    /// The TLS settings towards `database`'s server, if it uses TLS.
    pub fn upstream_tls(&self, database: &str) -> Option<&UpstreamTls> {
        self.upstream_tls.get(database)?.as_ref()
    }

    /// The pool for `database` and `user`, if a client created it.
    pub fn find(&self, database: &str, user: &str) -> Option<Arc<Pool>> {
        let pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        let key = PoolKey {
            database: database.to_owned(),
            user: user.to_owned(),
        };
        pools.get(&key).cloned()
    }

    /// Every pool created so far.
    pub fn pools(&self) -> Vec<Arc<Pool>> {
        let pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        pools.values().cloned().collect()
    }

    fn build(&self, key: PoolKey, secret: Option<&Secret>) -> Result<Arc<Pool>, LookupError> {
        let c = &self.config;
        let db = c
            .databases
            .get(&key.database)
            .ok_or_else(|| LookupError::UnknownDatabase(key.database.clone()))?;
        let secret = secret.ok_or_else(|| LookupError::UnknownUser(key.user.clone()))?;
        let passthrough = Arc::new(Mutex::new(None));
        let credential = match secret {
            Secret::Password(p) => Credential::Password(p.clone()),
            Secret::Md5(h) => Credential::Md5Hash(h.clone()),
            Secret::Scram(_) => Credential::ScramKeys(passthrough.clone()),
        };
        let target = Target {
            host: db.host.clone(),
            port: db.port,
            dbname: db.upstream_name(&key.database).to_owned(),
            user: key.user.clone(),
            credential,
            max_message_len: c.pgtarn.max_message_len,
            tls: self.upstream_tls.get(&key.database).cloned().flatten(),
        };
        let g = &c.pgtarn;
        let settings = PoolSettings {
            mode: db.pool_mode,
            size: db.pool_size,
            min_size: db.min_pool_size,
            wait_timeout: g.query_wait_timeout,
            connect_timeout: g.server_connect_timeout,
            idle_timeout: g.server_idle_timeout,
            lifetime: g.server_lifetime,
            reset_query: g.server_reset_query.clone(),
            reset_timeout: g.server_reset_timeout,
            max_prepared_statements: g.max_prepared_statements,
            client_statement_limits: super::StatementLimits {
                max_statements: g.max_client_prepared_statements,
                max_bytes: g.max_client_prepared_bytes,
            },
            health: super::HealthSettings::from_general(g),
        };
        Ok(Pool::new(key, target, settings, passthrough))
    }

    /// Closes every pool.
    pub fn close_all(&self) {
        for pool in self.pools() {
            pool.close();
        }
    }
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
