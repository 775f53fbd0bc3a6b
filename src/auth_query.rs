//! `auth_query`: looking up users missing from `[users]` in Postgres.
//!
//! For a client naming an unknown user, pgtarn connects to the client's
//! database as `auth_user` (tokio-postgres, a dedicated connection per
//! lookup, with the database's upstream TLS settings) and runs `auth_query` with the user name as `$1`; the secret it
//! returns (a SCRAM verifier or an md5 hash from `pg_shadow`) authenticates
//! the client, and pgtarn then logs in upstream by SCRAM passthrough or with
//! the md5 hash. Answers, including "no such user", are cached for
//! `auth_cache_ttl`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tracing::warn;

use tokio_postgres::config::SslMode;

use crate::auth::Secret;
use crate::backend::UpstreamTls;
use crate::config::Config;
use crate::frontend::auth::UserAuth;

/// A cached answer: the user (or `None`: unknown) and when it was fetched.
type Cached = (Option<Arc<UserAuth>>, Instant);

/// The cache of looked-up users, by (database, user).
#[derive(Debug, Default)]
pub struct AuthQuery {
    cache: Mutex<HashMap<(String, String), Cached>>,
}

/// Most cached answers; past it the cache starts afresh.
const MAX_CACHED: usize = 10_000;

impl AuthQuery {
    /// The secret of `user` for `database`, or `None` if Postgres does not
    /// know the user, `auth_user` is not configured, or the lookup failed
    /// (logged; the client then gets the usual authentication error).
    ///
    /// `tls` is the database's upstream TLS setting: the lookup connection
    /// uses it as pgtarn's server connections do.
    pub async fn lookup(
        &self,
        config: &Config,
        database: &str,
        user: &str,
        tls: Option<&UpstreamTls>,
    ) -> Option<Arc<UserAuth>> {
        let auth_user = config.pgtarn.auth_user.as_deref()?;
        let key = (database.to_owned(), user.to_owned());
        if let Some(hit) = self.cached(&key, config) {
            return hit;
        }
        let found = match fetch(config, (auth_user, database, user), tls).await {
            Ok(secret) => secret.map(|s| Arc::new(UserAuth::new(s))),
            Err(e) => {
                warn!(user, database, error = %e, "auth_query failed");
                return None;
            }
        };
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= MAX_CACHED {
            cache.clear();
        }
        cache.insert(key, (found.clone(), Instant::now()));
        found
    }

    fn cached(&self, key: &(String, String), config: &Config) -> Option<Option<Arc<UserAuth>>> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let (found, at) = cache.get(key)?;
        (at.elapsed() < config.pgtarn.auth_cache_ttl).then(|| found.clone())
    }
}

async fn fetch(
    config: &Config,
    (auth_user, database, user): (&str, &str, &str),
    tls: Option<&UpstreamTls>,
) -> Result<Option<Secret>, String> {
    let db = config.databases.get(database).ok_or("unknown database")?;
    let Some(Ok(Secret::Password(password))) = config
        .users
        .get(auth_user)
        .map(|u| Secret::parse(&u.password))
    else {
        return Err("auth_user has no plaintext password".into());
    };
    // Each host in turn, each within server_connect_timeout for the whole
    // login (tokio-postgres' connect_timeout bounds only the socket
    // connect), as server connections skip a host that never answers.
    let limit = config.pgtarn.server_connect_timeout;
    let mut client = Err("no host configured".to_owned());
    for host in crate::backend::hosts(&db.host) {
        let mut pg = tokio_postgres::Config::new();
        pg.host(host)
            .port(db.port)
            .dbname(db.upstream_name(database))
            .user(auth_user)
            .password(&password)
            .application_name("pgtarn auth_query")
            .connect_timeout(limit);
        client = match tokio::time::timeout(limit, connect(&mut pg, tls)).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(format!("{host}: {e}")),
            Err(_) => Err(format!("{host}: login timed out after {limit:?}")),
        };
        if client.is_ok() {
            break;
        }
    }
    let client = client?;
    let row = client
        .query_opt(&config.pgtarn.auth_query, &[&user])
        .await
        .map_err(|e| e.to_string())?;
    let Some(row) = row else { return Ok(None) };
    let secret: Option<String> = row.try_get(1).map_err(|e| e.to_string())?;
    Ok(secret.and_then(|s| Secret::parse(&s).ok()))
}

/// Connects the lookup connection, over TLS when the database uses it.
async fn connect(
    pg: &mut tokio_postgres::Config,
    tls: Option<&UpstreamTls>,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let Some(tls) = tls else {
        let (client, conn) = pg.connect(tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        return Ok(client);
    };
    let mode = if tls.required {
        SslMode::Require
    } else {
        SslMode::Prefer
    };
    let connector = tokio_postgres_rustls::MakeRustlsConnect::new((*tls.config).clone());
    let (client, conn) = pg.ssl_mode(mode).connect(connector).await?;
    tokio::spawn(conn);
    Ok(client)
}
