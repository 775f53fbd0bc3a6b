//! Pools of server connections, one per (database, user).
//!
//! Each [`Pool`] wraps a `deadpool` pool with our [`Manager`]. Clients that
//! find every server busy wait on deadpool's semaphore, which is fair
//! (FIFO), for at most `query_wait_timeout`. Idle servers are handed out
//! most-recently-used first, so the surplus ages out under
//! `server_idle_timeout`.

mod guard;
mod health;
mod manager;
mod registry;

use std::borrow::Borrow;
use std::collections::HashMap;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use deadpool::managed::{self, PoolError, QueueMode, TimeoutType, Timeouts};
use tracing::{info, warn};

use crate::auth::Secret;
use crate::auth::scram_client::ScramKeys;
use crate::backend::limit::{DbLimit, Evict};
use crate::backend::{BackendError, Credential, Target};
use crate::config::PoolMode;
use crate::stats::clients::ConnList;
use crate::stats::{CloseReason, PoolStats};
pub use guard::Checkout;
pub use health::HealthSettings;
pub use manager::Manager;
pub use registry::{LookupError, Registry};

/// Identifies a pool: the database name clients use, and the user.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PoolKey {
    /// Database name as clients know it.
    pub database: String,
    /// User name.
    pub user: String,
}

impl Hash for PoolKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (self as &dyn KeyRef).hash(state);
    }
}

/// A pool key as borrowed strings (database, user), so that looking a
/// pool up at every login allocates nothing. [`PoolKey`] hashes through
/// it, so both hash alike.
pub(crate) trait KeyRef {
    /// (database, user).
    fn parts(&self) -> (&str, &str);
}

impl KeyRef for PoolKey {
    fn parts(&self) -> (&str, &str) {
        (&self.database, &self.user)
    }
}

impl KeyRef for (&str, &str) {
    fn parts(&self) -> (&str, &str) {
        (self.0, self.1)
    }
}

impl<'a> Borrow<dyn KeyRef + 'a> for PoolKey {
    fn borrow(&self) -> &(dyn KeyRef + 'a) {
        self
    }
}

impl Hash for dyn KeyRef + '_ {
    fn hash<H: Hasher>(&self, state: &mut H) {
        let (database, user) = self.parts();
        database.hash(state);
        user.hash(state);
    }
}

impl PartialEq for dyn KeyRef + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.parts() == other.parts()
    }
}

impl Eq for dyn KeyRef + '_ {}

impl std::fmt::Display for PoolKey {
    /// `user@database`, as logs name a client.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.user, self.database)
    }
}

/// The settings one pool runs with.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// Session or transaction pooling.
    pub mode: PoolMode,
    /// Most server connections.
    pub size: usize,
    /// Extra connections once a client has waited `reserve_timeout`.
    pub reserve: usize,
    /// How long a client waits before the reserve may be used.
    pub reserve_timeout: Duration,
    /// Server connections kept open.
    pub min_size: usize,
    /// Longest wait for a server.
    pub wait_timeout: Duration,
    /// Time limit for connecting and logging in.
    pub connect_timeout: Duration,
    /// Unused connections above `min_size` close after this long.
    pub idle_timeout: Duration,
    /// Connections close once this old.
    pub lifetime: Duration,
    /// SQL that resets a session-mode connection.
    pub reset_query: String,
    /// `connect_query`: run on each new connection (and after
    /// `reset_query`), if any.
    pub connect_query: Option<Arc<str>>,
    /// Time limit for `reset_query`.
    pub reset_timeout: Duration,
    /// Named prepared statements kept per server in transaction mode; 0
    /// passes them through untouched.
    pub max_prepared_statements: usize,
    /// What one client may keep prepared.
    pub client_statement_limits: StatementLimits,
    /// `server_check_query`, `server_check_delay`, `server_login_retry`.
    pub health: HealthSettings,
}

/// Limits on the named prepared statements one client may keep.
#[derive(Debug, Clone, Copy)]
pub struct StatementLimits {
    /// Most statements.
    pub max_statements: usize,
    /// Most bytes of stored Parse messages.
    pub max_bytes: usize,
}

/// pgtarn-wide statement names that parsed successfully on some server of
/// a pool, with their generation and row shape. A client's Parse of one of
/// them is answered without a server (the statement is prepared on a
/// server when the client first uses it). The generation goes up when the
/// statement's result type changed under it, so every server re-prepares
/// it: when a server reports it (`cached plan must not change result
/// type`), or when a copy prepared afresh on a server describes another
/// row shape than the one recorded for the generation.
#[derive(Debug, Default)]
pub struct KnownStatements(Mutex<HashMap<Arc<str>, Known>>);

/// What is known of one statement.
#[derive(Debug, Clone, Copy, Default)]
struct Known {
    generation: u32,
    /// Its row shape at this generation ([`crate::protocol::backend::row_shape`]),
    /// once a server described it.
    shape: Option<u64>,
}

/// What a fresh copy's row shape says of a statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShapeCheck {
    /// The generation's shape, or its first record.
    Same,
    /// Another shape: the statement's result type changed, and the pool
    /// moved on to this generation, whose shape the copy has.
    Changed(u32),
    /// The copy's generation is no longer current (or unknown): it says
    /// nothing.
    Outdated,
}

/// How often the min_pool_size fill, while the pool opens a connection,
/// looks for clients waiting for the idle connections it holds.
const FILL_CLIENT_CHECK: Duration = Duration::from_millis(5);

/// Entries after which [`KnownStatements`] starts afresh (it is a cache).
const MAX_KNOWN_STATEMENTS: usize = 10_000;

/// The generation after `generation` (never [`u32::MAX`], which servers'
/// caches use for "outdated").
fn next_generation(generation: u32) -> u32 {
    generation.wrapping_add(1) % (u32::MAX - 1)
}

impl KnownStatements {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Known>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// True if `name` parsed successfully before.
    pub fn contains(&self, name: &str) -> bool {
        self.lock().contains_key(name)
    }

    /// The current generation of `name` (0 if unknown).
    pub fn generation(&self, name: &str) -> u32 {
        self.lock().get(name).map_or(0, |k| k.generation)
    }

    /// True if a copy of `name` prepared afresh at `generation` must be
    /// checked before use: the generation is current and its row shape
    /// recorded, and the statement returns rows. (One that returns none,
    /// an INSERT without RETURNING say, cannot change its result type.)
    pub fn needs_check(&self, name: &str, generation: u32) -> bool {
        let map = self.lock();
        map.get(name).is_some_and(|k| {
            k.generation == generation
                && k.shape
                    .is_some_and(|s| s != crate::protocol::backend::NO_ROWS)
        })
    }

    /// Records that `name` parsed successfully. Past
    /// [`MAX_KNOWN_STATEMENTS`] the record starts afresh, except for the
    /// statements whose result type changed (generation above 0): their
    /// clients' statements would otherwise look outdated, and fail with
    /// 0A000 for nothing.
    pub fn insert(&self, name: Arc<str>) {
        let mut map = self.lock();
        if map.len() >= MAX_KNOWN_STATEMENTS && !map.contains_key(&name) {
            map.retain(|_, k| k.generation != 0);
            if map.len() >= MAX_KNOWN_STATEMENTS {
                map.clear();
            }
        }
        map.entry(name).or_default();
    }

    /// Records that the copy of `name` prepared at `generation` no longer
    /// has the statement's result type: every older copy is outdated. A
    /// later report about the same generation changes nothing.
    pub fn invalidate(&self, name: Arc<str>, generation: u32) {
        let mut map = self.lock();
        let known = map.entry(name).or_default();
        if known.generation == generation {
            *known = Known {
                generation: next_generation(generation),
                shape: None,
            };
        }
    }

    /// Checks the row `shape` described by a copy of `name` prepared
    /// afresh at `generation` against the generation's, recording it if
    /// it is the first.
    pub fn check_shape(&self, name: &str, generation: u32, shape: u64) -> ShapeCheck {
        let mut map = self.lock();
        let Some(known) = map.get_mut(name).filter(|k| k.generation == generation) else {
            return ShapeCheck::Outdated;
        };
        match known.shape {
            Some(s) if s != shape => {
                known.generation = next_generation(generation);
                known.shape = Some(shape);
                ShapeCheck::Changed(known.generation)
            }
            _ => {
                known.shape = Some(shape);
                ShapeCheck::Same
            }
        }
    }
}

/// Why a client got no server.
#[derive(Debug, thiserror::Error)]
pub enum CheckoutError {
    /// No server became free within `query_wait_timeout`.
    #[error("query_wait_timeout")]
    WaitTimeout,
    /// The database's `max_db_connections` connections stayed busy for
    /// `query_wait_timeout`.
    #[error("query_wait_timeout")]
    DatabaseFull,
    /// The user's `max_user_connections` connections stayed busy for
    /// `query_wait_timeout`.
    #[error("query_wait_timeout")]
    UserFull,
    /// A new server connection could not be made.
    #[error("{0}")]
    Connect(BackendError),
    /// The pool is shutting down.
    #[error("pool is closed")]
    Closed,
}

/// One pool of server connections.
#[derive(Debug)]
pub struct Pool {
    /// Which database and user it serves.
    pub key: PoolKey,
    /// Its settings (swapped on reload).
    settings: Arc<ArcSwap<PoolSettings>>,
    /// Where the pool's connections go (address, database name, TLS
    /// settings): a reload that changes it replaces the connections.
    upstream: Mutex<String>,
    /// Statements known to parse on this pool's servers.
    pub known_statements: Arc<KnownStatements>,
    /// SCRAM passthrough keys, learned from a client's SCRAM login; used
    /// when the user's only secret is a verifier.
    passthrough: Arc<Mutex<Option<ScramKeys>>>,
    /// Counters, histograms and live counts.
    pub stats: Arc<PoolStats>,
    paused: AtomicBool,
    /// Its limit has gone down since it was made (see
    /// [`Pool::set_limit`]).
    lowered: AtomicBool,
    /// Retired by a reload ([`Pool::retire`]): it serves the clients it
    /// has, without filling up to `min_pool_size`.
    retired: AtomicBool,
    resumed: tokio::sync::Notify,
    inner: managed::Pool<Manager>,
}

/// A point-in-time view of a pool's servers and clients.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolCounts {
    /// Logged-in clients not waiting for a server.
    pub cl_active: usize,
    /// Clients waiting for a server.
    pub cl_waiting: usize,
    /// Servers lent to clients.
    pub sv_active: usize,
    /// Idle servers, recently used.
    pub sv_idle: usize,
    /// Idle servers due for a `server_check_query` before reuse.
    pub sv_used: usize,
    /// Servers being connected.
    pub sv_login: usize,
    /// Servers parked until a cancel request for them is done.
    pub sv_being_canceled: usize,
}

/// What a new pool records into and shares with other pools.
struct Shared {
    /// The pool's statistics.
    stats: Arc<PoolStats>,
    /// Where server connections are listed (`SHOW SERVERS`).
    servers: Arc<ConnList>,
    /// Its database's `max_db_connections` count.
    db_limit: Arc<DbLimit>,
    /// Its user's `max_user_connections` count.
    user_limit: Arc<DbLimit>,
}

impl Pool {
    /// A pool for `key` whose connections go to `target`.
    fn new(
        key: PoolKey,
        target: Target,
        settings: PoolSettings,
        passthrough: Arc<Mutex<Option<ScramKeys>>>,
        upstream: String,
        shared: Shared,
    ) -> Arc<Pool> {
        let Shared {
            stats,
            servers,
            db_limit,
            user_limit,
        } = shared;
        let size = settings.size;
        let settings = Arc::new(ArcSwap::from_pointee(settings));
        let manager = Manager::new(
            target,
            settings.clone(),
            stats.clone(),
            servers,
            key.database.clone(),
            (db_limit.clone(), user_limit.clone()),
        );
        let inner = managed::Pool::builder(manager)
            .max_size(size)
            .queue_mode(QueueMode::Lifo)
            .runtime(deadpool::Runtime::Tokio1)
            .build()
            .expect("a runtime is configured, so building cannot fail");
        let pool = Arc::new(Pool {
            key,
            settings,
            upstream: Mutex::new(upstream),
            paused: AtomicBool::new(false),
            lowered: AtomicBool::new(false),
            retired: AtomicBool::new(false),
            resumed: tokio::sync::Notify::new(),
            known_statements: Arc::default(),
            passthrough,
            stats,
            inner,
        });
        let evict: Arc<dyn Evict> = pool.clone();
        db_limit.add_pool(Arc::downgrade(&evict));
        user_limit.add_pool(Arc::downgrade(&evict));
        pool
    }

    /// The settings in force.
    pub fn settings(&self) -> arc_swap::Guard<Arc<PoolSettings>> {
        self.settings.load()
    }

    /// Applies new settings (reload): the size limit changes at once,
    /// timeouts from the next use.
    pub fn update(&self, settings: PoolSettings) {
        if settings.size != self.settings().size {
            let before = self.inner.status().size;
            if settings.size < before {
                self.inner
                    .manager()
                    .shrinking
                    .store(true, Ordering::Relaxed);
            }
            self.set_limit(settings.size);
            let closed = before.saturating_sub(self.inner.status().size);
            for _ in 0..closed {
                self.stats.server_closed(CloseReason::Resize);
            }
            if closed > 0 {
                info!(pool = ?self.key, closed, "idle server connections closed: pool_size reduced");
            }
        }
        self.settings.store(Arc::new(settings));
    }

    /// Closes idle connections now and every busy one when it is
    /// released (admin `RECONNECT`, reload of the upstream address).
    pub fn reconnect(&self) {
        self.inner.manager().retire_existing();
        let closed = self.inner.retain(|_, _| false);
        for _ in 0..closed.removed.len() {
            self.stats.server_closed(CloseReason::Reconnect);
        }
        if !closed.removed.is_empty() {
            info!(pool = ?self.key, closed = closed.removed.len(), "idle server connections closed (RECONNECT or reload)");
        }
    }

    /// Retires the pool (a reload removed its database, changed its
    /// `pool_mode` or gave its database another forced user): its idle connections close as with `RECONNECT`, and
    /// it no longer opens connections up to `min_pool_size`, which only
    /// the clients it still has could use.
    fn retire(&self) {
        self.retired.store(true, Ordering::Relaxed);
        self.reconnect();
    }

    /// What the pool logs in upstream with for `secret`; with none known
    /// (a user found by auth_query), what it logs in with now.
    fn credential(&self, secret: Option<&Secret>) -> Credential {
        match secret {
            Some(s) => registry::credential(s, &self.passthrough),
            None => self.inner.manager().target().credential.clone(),
        }
    }

    /// Sends new connections to `target` (a reload). If it is another
    /// `upstream`, the existing connections are closed as with
    /// `RECONNECT`, and `true` is returned; new credentials alone are
    /// only used for new connections.
    fn retarget(&self, target: Target, upstream: String) -> bool {
        let mut old = self.upstream.lock().unwrap_or_else(|p| p.into_inner());
        let moved = *old != upstream;
        *old = upstream;
        drop(old);
        let manager = self.inner.manager();
        manager.set_target(target);
        if moved {
            manager.forget_defaults();
            self.reconnect();
        }
        moved
    }

    /// Records the keys a client's SCRAM login revealed, for SCRAM
    /// passthrough upstream.
    pub fn learn_scram_keys(&self, keys: ScramKeys) {
        *self.passthrough.lock().unwrap_or_else(|p| p.into_inner()) = Some(keys);
    }

    /// Waits (FIFO, bounded by `query_wait_timeout`) for a server. A
    /// checkout that cannot complete at once is counted as waiting.
    pub async fn checkout(&self) -> Result<Checkout, CheckoutError> {
        self.checkout_since(Instant::now()).await.map(|(c, _)| c)
    }

    /// [`Pool::checkout`] for a client that started waiting at `started`;
    /// also returns when the wait ended.
    pub async fn checkout_since(
        &self,
        started: Instant,
    ) -> Result<(Checkout, Instant), CheckoutError> {
        let result = loop {
            if self.paused.load(Ordering::SeqCst) {
                let _waiting = self.stats.start_wait_since(started);
                self.wait_resumed().await;
            }
            match self.get(started).await {
                Ok(obj) if self.lowered.load(Ordering::Relaxed) && self.over_limit() => {
                    self.give_back_room(obj)
                }
                // Paused while this client was queued: the server goes
                // back (PAUSE can then close it) and the client waits for
                // RESUME like one that came after the PAUSE.
                Ok(obj) if self.paused.load(Ordering::SeqCst) => drop(obj),
                r => break r,
            }
        };
        let done = Instant::now();
        self.stats.wait.observe((done - started).as_secs_f64());
        match result {
            Ok(obj) => Ok((Checkout::new(obj), done)),
            Err(PoolError::Timeout(_)) => {
                self.stats.wait_timeouts.inc();
                Err(CheckoutError::WaitTimeout)
            }
            Err(PoolError::Backend(BackendError::DatabaseFull)) => {
                self.stats.wait_timeouts.inc();
                Err(CheckoutError::DatabaseFull)
            }
            Err(PoolError::Backend(BackendError::UserFull)) => {
                self.stats.wait_timeouts.inc();
                Err(CheckoutError::UserFull)
            }
            Err(PoolError::Backend(e)) => Err(CheckoutError::Connect(e)),
            Err(PoolError::Closed) => Err(CheckoutError::Closed),
            Err(e) => Err(CheckoutError::Connect(BackendError::Auth(e.to_string()))),
        }
    }

    /// One try at a server: first without waiting, as a free server (the
    /// common case) costs no timer; with none free, queued (FIFO) for
    /// `query_wait_timeout`.
    async fn get(
        &self,
        started: Instant,
    ) -> Result<managed::Object<Manager>, PoolError<BackendError>> {
        let now = Timeouts {
            wait: Some(Duration::ZERO),
            create: None,
            recycle: None,
        };
        let get = self.inner.timeout_get(&now);
        let mut get = std::pin::pin!(get);
        match poll_once(get.as_mut()).await {
            Some(Err(PoolError::Timeout(TimeoutType::Wait))) => {
                let _waiting = self.stats.start_wait_since(started);
                // Boxed: the queued path is the rare one, and keeping its
                // state out of this future keeps every checkout's small.
                Box::pin(self.queue(started)).await
            }
            Some(r) => r,
            None => {
                let _waiting = self.stats.start_wait_since(started);
                get.await
            }
        }
    }

    /// Sets the limit to `max` (a reload's `pool_size`, or back from the
    /// reserve). Once it has gone down, checkouts look for room left
    /// over from the larger limit ([`Pool::over_limit`]); a pool whose
    /// limit never went down does not pay for that look.
    fn set_limit(&self, max: usize) {
        if max < self.inner.status().max_size {
            self.lowered.store(true, Ordering::Relaxed);
        }
        self.inner.resize(max);
    }

    /// True if the pool holds more connections than its limit now. Right
    /// after a checkout this means the checkout was let in by room left
    /// over from a larger limit: deadpool's `resize` takes room back only
    /// for connections it can close, so shrinking the limit (the reserve
    /// released, `pool_size` reduced by a reload) while fewer connections
    /// were open left the old room usable.
    fn over_limit(&self) -> bool {
        let status = self.inner.status();
        status.size > status.max_size
    }

    /// Closes `obj`, checked out beyond the limit ([`Pool::over_limit`]):
    /// taken out of the pool over its limit, its room is not given back,
    /// so the leftover room is gone and the client queues again.
    fn give_back_room(&self, obj: managed::Object<Manager>) {
        let reason = CloseReason::Resize;
        self.stats.server_closed(reason);
        let conn = managed::Object::take(obj);
        info!(server = conn.id(), %reason, "server connection closed: the pool was over its limit");
    }

    /// Waits in the FIFO queue for a server, for `query_wait_timeout`.
    /// Once the client has waited `reserve_pool_timeout` (since `started`)
    /// the pool may grow by `reserve_pool_size`; the client keeps its
    /// place in the queue meanwhile.
    async fn queue(
        &self,
        started: Instant,
    ) -> Result<managed::Object<Manager>, PoolError<BackendError>> {
        let settings = self.settings();
        let queued = Timeouts {
            wait: Some(settings.wait_timeout),
            create: None,
            recycle: None,
        };
        let get = self.inner.timeout_get(&queued);
        if settings.reserve == 0 {
            return get.await;
        }
        let mut get = std::pin::pin!(get);
        let reserve_at = tokio::time::Instant::from_std(started + settings.reserve_timeout);
        tokio::select! {
            biased;
            r = get.as_mut() => return r,
            _ = tokio::time::sleep_until(reserve_at) => self.use_reserve(),
        }
        get.await
    }

    /// Lets the pool grow by its `reserve_pool_size` (a client waited
    /// `reserve_pool_timeout`). As in PgBouncer, the extra connections
    /// then serve anyone until they close like the others (after
    /// `server_idle_timeout`, say); the limit goes back to `pool_size`
    /// once they have and nobody waits.
    fn use_reserve(&self) {
        let settings = self.settings();
        let grown = settings.size + settings.reserve;
        if self.inner.status().max_size < grown {
            self.inner.resize(grown);
            info!(pool = ?self.key, reserve = settings.reserve, "a client waited reserve_pool_timeout: reserve pool in use");
        }
    }

    /// The limit back to `pool_size` once the reserve's connections have
    /// closed and nobody waits.
    fn release_reserve(&self) {
        let status = self.inner.status();
        let size = self.settings().size;
        if status.max_size > size && status.size <= size && status.waiting == 0 {
            self.set_limit(size);
            info!(pool = ?self.key, "reserve pool connections closed: back to pool_size");
        }
    }

    /// The most server connections the pool may have now: `pool_size`,
    /// plus `reserve_pool_size` while the reserve is in use.
    pub fn max_size(&self) -> usize {
        self.inner.status().max_size
    }

    /// The ParameterStatus set a new client is told at login: the first
    /// server's, learned by connecting once if no server exists yet. Shared
    /// by all the pool's clients.
    pub async fn login_params(&self) -> Result<Arc<Vec<(String, String)>>, CheckoutError> {
        if let Some(p) = self.inner.manager().defaults.load_full() {
            return Ok(p);
        }
        let server = self.checkout().await?;
        let learned = self.inner.manager().defaults.load_full();
        Ok(learned.unwrap_or_else(|| Arc::new(server.login_params().to_vec())))
    }

    /// Clients and servers by state, as `SHOW POOLS` reports them.
    pub fn counts(&self, check_delay: Option<Duration>) -> PoolCounts {
        let status = self.inner.status();
        let mut used = 0;
        if let Some(delay) = check_delay {
            // `retain` visits the idle connections; keeping all of them.
            self.inner.retain(|conn, _| {
                used += usize::from(conn.idle_since.elapsed() >= delay);
                true
            });
        }
        let waiting = self.stats.waiting();
        let clients = self.stats.clients.load(Ordering::Relaxed);
        let idle = status.available.min(status.size);
        let parked = self.stats.being_canceled.load(Ordering::Relaxed);
        PoolCounts {
            cl_active: clients.saturating_sub(waiting),
            cl_waiting: waiting,
            sv_active: (status.size - idle).saturating_sub(parked),
            sv_idle: idle - used.min(idle),
            sv_used: used.min(idle),
            sv_login: self.stats.connecting.load(Ordering::Relaxed),
            sv_being_canceled: parked.min(status.size - idle),
        }
    }

    /// Server connections open (busy or idle).
    pub fn size(&self) -> usize {
        self.inner.status().size
    }

    /// Server connections idle in the pool.
    pub fn idle(&self) -> usize {
        self.inner.status().available
    }

    /// The counts of the pool's database and of its user, which also
    /// count their clients.
    pub fn limits(&self) -> (&Arc<DbLimit>, &Arc<DbLimit>) {
        let manager = self.inner.manager();
        (&manager.db_limit, &manager.user_limit)
    }

    /// Clients waiting for a server.
    pub fn waiting(&self) -> usize {
        self.inner.status().waiting
    }

    /// Closes idle connections past `server_idle_timeout` (keeping
    /// `min_pool_size`) or `server_lifetime` or closed by the server, then
    /// opens connections up to `min_pool_size`.
    pub async fn maintain(&self) {
        let mut removable = self.size().saturating_sub(self.settings().min_size);
        let manager = self.inner.manager();
        // Closed connections are dropped with `retain`'s result.
        let _closed = self.inner.retain(|conn, m| {
            let reason = if let Some(why) = manager.expiry(conn, &m, Instant::now()) {
                why
            } else if !conn.is_reusable() {
                CloseReason::Broken
            } else if removable > 0
                && !self.settings().idle_timeout.is_zero()
                && conn.idle_since.elapsed() >= self.settings().idle_timeout
            {
                removable -= 1;
                CloseReason::IdleTimeout
            } else {
                return true;
            };
            info!(server = conn.id(), %reason, "server connection closed");
            self.stats.server_closed(reason);
            false
        });
        self.release_reserve();
        self.fill_to_min().await;
    }

    async fn fill_to_min(&self) {
        let status = self.inner.status();
        let min_size = self.settings().min_size;
        // Nor while paused: PAUSE closed the servers for a maintenance
        // window.
        if status.size >= min_size
            || status.waiting > 0
            || self.retired.load(Ordering::Relaxed)
            || self.paused.load(Ordering::SeqCst)
        {
            return;
        }
        // Not beyond max_db_connections or max_user_connections: filling
        // up would close other pools' idle connections, which would fill
        // up again in turn.
        let manager = self.inner.manager();
        let room = |limit: &DbLimit| match limit.max() {
            0 => usize::MAX,
            max => max.saturating_sub(limit.open()),
        };
        let room = room(&manager.db_limit).min(room(&manager.user_limit));
        let wanted = min_size.min(status.size.saturating_add(room));
        // Holding connections makes the pool create new ones once none is
        // idle; dropping them returns all of them. Counting the pool's
        // size (busy connections included) rather than those held keeps
        // a busy connection from making the fill open one too many.
        // A new connection may take up to `server_connect_timeout`: the
        // idle ones held meanwhile go back as soon as a client waits for
        // a server, and the fill stops there (it goes on at a later tick).
        let timeouts = Timeouts::wait_millis(0);
        let mut held = Vec::new();
        for _ in 0..wanted {
            if self.inner.status().size >= wanted || self.stats.waiting() > 0 {
                break;
            }
            let get = self.inner.timeout_get(&timeouts);
            let mut get = std::pin::pin!(get);
            let got = loop {
                tokio::select! {
                    biased;
                    r = get.as_mut() => break r,
                    () = tokio::time::sleep(FILL_CLIENT_CHECK), if !held.is_empty() => {
                        if self.stats.waiting() > 0 {
                            held.clear();
                        }
                    }
                }
            };
            match got {
                Ok(obj) => held.push(obj),
                Err(e) => {
                    warn!(pool = ?self.key, error = %e, "cannot open min_pool_size connections");
                    break;
                }
            }
        }
    }

    /// Pauses or resumes checkouts: while paused, clients wait (without
    /// `query_wait_timeout`) instead of getting a server.
    pub fn set_paused(&self, paused: bool) {
        self.paused.store(paused, Ordering::SeqCst);
        if !paused {
            self.resumed.notify_waiters();
        }
    }

    async fn wait_resumed(&self) {
        loop {
            let resumed = self.resumed.notified();
            let mut resumed = std::pin::pin!(resumed);
            resumed.as_mut().enable();
            if !self.paused.load(Ordering::SeqCst) {
                return;
            }
            resumed.await;
        }
    }

    /// Stops handing out connections; waiting clients get an error.
    pub fn close(&self) {
        self.inner.close();
    }
}

impl Evict for Pool {
    /// Closes one idle connection, unless the pool is at `min_pool_size`.
    fn evict_idle(&self) -> bool {
        if self.size() <= self.settings().min_size {
            return false;
        }
        let mut closed = false;
        let _closed = self.inner.retain(|conn, _| {
            if closed {
                return true;
            }
            closed = true;
            let reason = CloseReason::Evicted;
            info!(server = conn.id(), %reason, "server connection closed");
            self.stats.server_closed(reason);
            false
        });
        closed
    }
}

/// Polls `f` once: its output if it is ready at once, else `None` (and
/// `f` keeps its place, e.g. in the pool's wait queue).
async fn poll_once<F: Future>(mut f: Pin<&mut F>) -> Option<F::Output> {
    std::future::poll_fn(|cx| match f.as_mut().poll(cx) {
        Poll::Ready(v) => Poll::Ready(Some(v)),
        Poll::Pending => Poll::Ready(None),
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_copy_of_another_shape_moves_the_statement_on() {
        let known = KnownStatements::default();
        known.insert("g".into());
        assert!(!known.needs_check("g", 0), "nothing described yet");
        assert_eq!(
            known.check_shape("g", 0, 7),
            ShapeCheck::Same,
            "first record"
        );
        assert!(known.needs_check("g", 0));
        assert_eq!(known.check_shape("g", 0, 7), ShapeCheck::Same);
        assert_eq!(known.check_shape("g", 0, 8), ShapeCheck::Changed(1));
        assert_eq!(known.generation("g"), 1);
        assert!(
            known.needs_check("g", 1),
            "the new copy's shape is the new generation's"
        );
        assert_eq!(
            known.check_shape("g", 0, 9),
            ShapeCheck::Outdated,
            "a copy of an older generation says nothing"
        );
        known.insert("w".into());
        let no_rows = crate::protocol::backend::NO_ROWS;
        assert_eq!(known.check_shape("w", 0, no_rows), ShapeCheck::Same);
        assert!(!known.needs_check("w", 0), "no rows: nothing to check");
        known.invalidate("g".into(), 1);
        assert_eq!(known.generation("g"), 2);
        assert!(
            !known.needs_check("g", 2),
            "reported by a server: shape unknown"
        );
        assert_eq!(
            known.check_shape("h", 0, 1),
            ShapeCheck::Outdated,
            "unknown"
        );
    }

    #[test]
    fn starting_afresh_keeps_the_generations_of_changed_statements() {
        let known = KnownStatements::default();
        known.insert("changed".into());
        known.invalidate("changed".into(), 0);
        for i in 0..MAX_KNOWN_STATEMENTS {
            known.insert(format!("s{i}").into());
        }
        assert_eq!(known.generation("changed"), 1, "kept");
        assert!(!known.contains("s0"), "the others start afresh");
        assert!(known.contains(&format!("s{}", MAX_KNOWN_STATEMENTS - 1)));
    }
}
