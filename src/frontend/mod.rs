//! One client connection: startup, login, then the session loop.

pub mod auth;
pub mod cancel;
pub mod error;
mod handshake;
pub mod params;
pub mod prepared;
pub mod replies;
pub mod session;
pub mod settings;
pub mod slots;
pub mod translate;

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::time::Sleep;
use tracing::{Instrument, info};

use crate::Context;
use crate::backend::limit::ClientSeat;
use crate::config::ClientTlsMode;
use crate::net::{Peer, Stream};
use crate::protocol::Splitter;
use crate::protocol::backend::TxStatus;
use crate::protocol::encode::{self, Severity};
use crate::protocol::frame::client_streamable;
use crate::protocol::startup::StartupMessage;
use crate::shutdown::Shutdown;
use crate::stats::clients::{ConnState, NewConn};
use error::ClientError;
use handshake::Hello;
use params::ClientParams;
use session::{End, Session};

/// Serves one accepted client connection to the end.
pub async fn handle(stream: Stream, peer: Peer, ctx: Arc<Context>, shutdown: Shutdown) {
    // Opening (handshake, login, cancel requests, the admin console) is
    // boxed and freed once done: only the session loop's state stays in the
    // task for as long as the client is connected, idle or not.
    let mut opened = Box::pin(open(stream, peer, &ctx, &shutdown)).await;
    if let Some(client) = opened.as_mut() {
        client.serve(&shutdown).await;
    }
}

/// A logged-in client, listed and counted, ready for its session loop.
struct Opened {
    session: Session,
    /// Unregistered (`None`) when the session ends, before the goodbye.
    registration: Option<cancel::Registration>,
    _member: PoolMember,
    peer: Peer,
    _slot: slots::ClientSlot,
    _seats: Seats,
}

/// Reads the client's first packets and logs it in. Answers cancel requests
/// and admin console connections to the end; `None` when there is nothing
/// more to serve (done, refused or failed, each logged and answered).
async fn open(
    stream: Stream,
    peer: Peer,
    ctx: &Arc<Context>,
    shutdown: &Shutdown,
) -> Option<Opened> {
    let mut buf = BytesMut::with_capacity(1024);
    let config = ctx.config();
    let login_timeout = config.pgtarn.client_login_timeout;
    // Postgres never offers TLS on a Unix-domain socket either.
    let client_tls = ctx.client_tls().filter(|_| peer != Peer::Unix);
    let hello = handshake::read_hello(stream, &mut buf, client_tls.as_deref());
    let logging_in = ctx.count_login();
    // One limit for the whole login, from here to ReadyForQuery (as
    // PgBouncer's); dropped (`set(None)`) when the connection turns out to
    // be a cancel request or an admin console session.
    let mut deadline = std::pin::pin!(Some(tokio::time::sleep(login_timeout)));
    let hello = before(deadline.as_mut(), hello).await;
    count_tls(ctx, &hello);
    let (mut stream, startup) = match hello {
        Some(Ok((stream, Hello::Startup(m)))) => (stream, m),
        Some(Ok((_, Hello::Cancel(key)))) => {
            deadline.set(None);
            let limit = config.pgtarn.cancel_wait_timeout;
            ctx.cancels.cancel(key, limit).await;
            return None;
        }
        Some(Err((Some(mut stream), e))) => return fail(&mut stream, peer, &e).await,
        Some(Err((None, e))) => {
            info!(%peer, error = %e, "client connection refused");
            return None;
        }
        None => {
            info!(%peer, "client connection closed: client_login_timeout");
            return None;
        }
    };
    // A Unix-domain socket is local, guarded by its file's permissions.
    if config.tls.client.mode == ClientTlsMode::Require && !stream.is_tls() && peer != Peer::Unix {
        return fail(&mut stream, peer, &ClientError::TlsRequired).await;
    }
    // During `SHUTDOWN WAIT_FOR_CLIENTS` only the console is served (on
    // the Unix-domain socket, the one still open).
    if peer == Peer::Unix && ctx.is_closing_listener() && !is_admin_database(&startup) {
        return fail(&mut stream, peer, &ClientError::Shutdown).await;
    }
    // Console sessions count against max_client_conn too, as in PgBouncer.
    let Some(slot) = ctx.client_slots.try_take() else {
        return fail(&mut stream, peer, &ClientError::TooManyClients).await;
    };
    if is_admin_database(&startup) {
        let opening = Opening {
            peer,
            deadline: deadline.as_mut(),
            _logging_in: logging_in,
        };
        console(stream, buf, &startup, ctx, shutdown, opening).await;
        drop(slot);
        return None;
    }
    let login = before(deadline.as_mut(), login(stream, buf, &startup, ctx, peer)).await;
    let (mut session, registration, seats) = match login {
        Some(Ok(s)) => s,
        Some(Err((mut stream, e))) => return fail(&mut stream, peer, &e).await,
        None => {
            info!(%peer, client = %Who(&startup), "client login timed out");
            return None;
        }
    };
    drop(logging_in);
    info!(%peer, client = %session.pool.key, "client connected");
    let member = list_client(ctx, &mut session, &startup, peer);
    Some(Opened {
        session,
        registration: Some(registration),
        _member: member,
        peer,
        _slot: slot,
        _seats: seats,
    })
}

/// What a connection's opening holds until its login is done.
struct Opening<'a, 'b> {
    peer: Peer,
    /// The login's time limit.
    deadline: Pin<&'a mut Option<Sleep>>,
    /// Counted as logging in until dropped.
    _logging_in: crate::LoggingIn<'b>,
}

/// Serves an admin console connection: its login, within the login's time
/// limit, then its commands until it leaves.
async fn console(
    mut stream: Stream,
    mut buf: BytesMut,
    startup: &StartupMessage,
    ctx: &Arc<Context>,
    shutdown: &Shutdown,
    mut opening: Opening<'_, '_>,
) {
    let peer = opening.peer;
    let login = crate::admin::login(&mut stream, &mut buf, startup, ctx, opening.peer);
    let role = match before(opening.deadline.as_mut(), login).await {
        Some(Ok(role)) => role,
        Some(Err(e)) => {
            fail::<()>(&mut stream, peer, &e).await;
            return;
        }
        None => {
            info!(%peer, client = %Who(startup), "client login timed out");
            return;
        }
    };
    opening.deadline.set(None);
    drop(opening);
    // Listed in SHOW CLIENTS, as PgBouncer lists its console's clients.
    let new = NewConn {
        user: startup.user().unwrap_or("").to_owned(),
        database: startup.database().unwrap_or("").to_owned(),
        peer: peer.addr(),
        local: stream.tcp().and_then(|s| s.local_addr().ok()),
        tls: stream.is_tls(),
        application_name: startup.param("application_name").unwrap_or("").to_owned(),
        retire_before: None,
        connect_began_ns: None,
    };
    let listed = ctx.clients.add(new, ConnState::Active);
    let served = crate::admin::serve(stream, buf, role, ctx.clone(), shutdown.clone(), listed);
    if let Err((mut stream, e)) = served.await {
        fail::<()>(&mut stream, peer, &e).await;
    }
}

impl Opened {
    /// Runs the session loop to its end and reports how it ended. Takes
    /// `&mut self` so that the task holds one copy of the client, not one
    /// per future.
    async fn serve(&mut self, shutdown: &Shutdown) {
        let span = tracing::debug_span!("client", peer = %self.peer);
        let end = self.session.run(shutdown).instrument(span).await;
        drop(self.registration.take());
        if let Err(e) = &end
            && let Some(r) = e.reply()
        {
            self.session.pool.stats.error(&r.code);
        }
        let session = &mut self.session;
        report_end(&mut session.client, self.peer, &session.pool.key, end).await;
    }
}

/// `user@database` as a client's startup packet names them, for logs.
struct Who<'a>(&'a StartupMessage);

impl std::fmt::Display for Who<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let user = self.0.user().unwrap_or("?");
        write!(f, "{user}@{}", self.0.database().unwrap_or("?"))
    }
}

fn is_admin_database(startup: &StartupMessage) -> bool {
    startup
        .database()
        .is_some_and(|d| crate::config::ADMIN_DATABASES.contains(&d))
}

/// Lists a logged-in client (`SHOW CLIENTS`) and counts it in its pool
/// until the returned guard drops.
fn list_client(
    ctx: &Context,
    session: &mut Session,
    startup: &StartupMessage,
    peer: Peer,
) -> PoolMember {
    let pool = session.pool.clone();
    let new = NewConn {
        // The login user (the pool's may be the database's forced user).
        user: startup.user().unwrap_or(&pool.key.user).to_owned(),
        database: pool.key.database.clone(),
        peer: peer.addr(),
        local: session.client.tcp().and_then(|s| s.local_addr().ok()),
        tls: session.client.is_tls(),
        application_name: startup.param("application_name").unwrap_or("").to_owned(),
        retire_before: None,
        connect_began_ns: None,
    };
    session.listed = Some(ctx.clients.add(new, ConnState::Idle));
    pool.stats.logins.inc();
    pool.stats.clients.fetch_add(1, Ordering::Relaxed);
    PoolMember(pool)
}

/// A logged-in client's place in its pool's client count.
struct PoolMember(Arc<crate::pool::Pool>);

impl Drop for PoolMember {
    fn drop(&mut self) {
        self.0.stats.clients.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The outcome of reading a client's first packets (`None`: the login
/// timeout passed).
type HelloResult = Option<Result<(Stream, Hello), handshake::HelloError>>;

fn count_tls(ctx: &Context, hello: &HelloResult) {
    match hello {
        Some(Ok((s, _))) if s.is_tls() => ctx.registry.metrics.tls_handshake("client", true),
        Some(Err((_, ClientError::Tls(_)))) => ctx.registry.metrics.tls_handshake("client", false),
        _ => {}
    }
}

/// Runs `f` unless `deadline` passes first (`None`). A dropped deadline
/// never passes.
async fn before<F: std::future::Future>(
    deadline: Pin<&mut Option<Sleep>>,
    f: F,
) -> Option<F::Output> {
    let Some(deadline) = deadline.as_pin_mut() else {
        return Some(f.await);
    };
    tokio::select! {
        biased;
        r = f => Some(r),
        () = deadline => None,
    }
}

/// Logs in a client; on failure hands the stream back with the error.
async fn login(
    mut stream: Stream,
    mut buf: BytesMut,
    startup: &StartupMessage,
    ctx: &Arc<Context>,
    peer: Peer,
) -> Result<(Session, cancel::Registration, Seats), (Stream, ClientError)> {
    match login_steps(&mut stream, &mut buf, startup, ctx, peer).await {
        Ok(l) => {
            let config = ctx.config();
            let splitter = Splitter::new(config.pgtarn.max_message_len, client_streamable);
            let slot = l.registration.slot.clone();
            let (pool, params, defaults) = (l.pool, l.params, l.defaults);
            let mut session = Session::new(stream, buf, splitter, pool, params, defaults, slot);
            session.timeouts = session::SessionTimeouts::from_config(&config.pgtarn);
            if let Some(limit) = l.query_timeout {
                session.timeouts.query = limit;
            }
            Ok((session, l.registration, l.seats))
        }
        Err(e) => Err((stream, e)),
    }
}

/// `application_name_add_host`: the client's application name (`app`
/// if it sent none) followed by its address, as PgBouncer writes it.
fn app_name_with_host(name: Option<&str>, peer: Peer) -> String {
    let name = name.unwrap_or("app");
    match peer.addr() {
        Some(addr) => format!("{name} - {addr}"),
        None => format!("{name} - unix"),
    }
}

/// A client logged in, before its session is made.
struct LoggedIn {
    pool: Arc<crate::pool::Pool>,
    params: ClientParams,
    defaults: Arc<Vec<(String, String)>>,
    registration: cancel::Registration,
    seats: Seats,
    /// The user's own `query_timeout`, if it has one.
    query_timeout: Option<std::time::Duration>,
}

/// A client's places in the counts of its database's and its user's
/// clients (`max_db_client_connections`, `max_user_client_connections`).
struct Seats {
    _db: ClientSeat,
    _user: ClientSeat,
}

impl Seats {
    /// Takes both places in the counts `pool` shares with its database
    /// and user (no lookup; a forced user's pool has another user's, so
    /// the login user's is looked up), or says which limit is reached.
    fn take(
        ctx: &Context,
        pool: &crate::pool::Pool,
        user: &str,
        (db_limit, user_limit): (usize, usize),
    ) -> Result<Seats, ClientError> {
        let (db_count, user_count) = pool.limits();
        let db = db_count.take_client(db_limit);
        let db = db.ok_or(ClientError::DatabaseClientsFull)?;
        let user = match pool.key.user == user {
            true => user_count.take_client(user_limit),
            false => ctx.registry.user_limit(user).take_client(user_limit),
        };
        let user = user.ok_or(ClientError::UserClientsFull)?;
        Ok(Seats {
            _db: db,
            _user: user,
        })
    }
}

async fn login_steps(
    stream: &mut Stream,
    buf: &mut BytesMut,
    startup: &StartupMessage,
    ctx: &Arc<Context>,
    peer: Peer,
) -> Result<LoggedIn, ClientError> {
    negotiate_version(stream, startup).await?;
    let user = startup.user().ok_or(ClientError::NoUser)?;
    let database = startup.database().unwrap_or(user);
    let config = ctx.config();
    let db = config.databases.get(database);
    // auth_hba_file first, as Postgres checks pg_hba.conf: a client it
    // refuses learns nothing about the databases and costs no lookup.
    let conn = crate::auth::hba::Connection {
        addr: peer.addr().map(|a| a.ip()),
        tls: stream.is_tls(),
        database,
        user,
    };
    let configured = db.map_or(config.pgtarn.auth_type, |d| d.auth_type(&config.pgtarn));
    let method = ctx.auth_method(configured, &conn)?;
    let Some(db) = db else {
        return Err(ClientError::UnknownDatabase(database.to_owned()));
    };
    if ctx.registry.is_disabled(database) {
        return Err(ClientError::DatabaseDisabled(database.to_owned()));
    }
    let mut params = ClientParams::from_startup(startup.params())?;
    if config.pgtarn.application_name_add_host {
        // The name the client ends up with, also from `options=-c …`.
        let name = app_name_with_host(params.get("application_name"), peer);
        params.set_at_login("application_name", &name);
    }
    let found = match ctx.users().get(user) {
        Some(u) => Some(u.clone()),
        None => {
            // Boxed: the lookup (a tokio-postgres connection) is ~4.7 KB of
            // future that every login would otherwise carry and copy.
            let tls = ctx.registry.upstream_tls(database);
            let lookup = ctx.auth_query.lookup(&config, database, user, tls.as_ref());
            Box::pin(lookup).await
        }
    };
    let client_tls = ctx.client_tls();
    let creds = auth::Credentials {
        user: found.as_deref(),
        mock_nonce: &ctx.mock_nonce,
        channel_binding: stream
            .is_tls()
            .then_some(client_tls.as_deref())
            .flatten()
            .map(|t| &t.end_point_hash[..]),
    };
    // AuthenticationOk and the rest of the login answer go in one write.
    let mut out = BytesMut::with_capacity(512);
    let keys = auth::authenticate(stream, buf, user, creds, method, &mut out).await?;
    let secret = found.as_ref().map(|u| &u.secret);
    let pool = match db.user.as_deref() {
        // The forced user's secret logs the pool in upstream.
        Some(forced) if forced != user => {
            let users = ctx.users();
            let secret = users.get(forced).map(|u| &u.secret);
            ctx.registry.get(database, forced, secret)?
        }
        _ => {
            let pool = ctx.registry.get(database, user, secret)?;
            if let Some(keys) = keys {
                pool.learn_scram_keys(keys);
            }
            pool
        }
    };
    let user_conf = config.users.get(user);
    let user_limit = user_conf.map_or(config.pgtarn.max_user_client_connections, |u| {
        u.max_client_connections(&config.pgtarn)
    });
    let limits = (db.max_client_connections(&config.pgtarn), user_limit);
    let seats = Seats::take(ctx, &pool, user, limits)?;
    let defaults = pool.login_params().await?;
    let registration = ctx.cancels.register();
    params.encode_login_report(&defaults, &mut out);
    encode::backend_key_data(&mut out, registration.key);
    encode::ready_for_query(&mut out, TxStatus::Idle);
    stream.send(&out).await?;
    Ok(LoggedIn {
        pool,
        params,
        defaults,
        registration,
        seats,
        query_timeout: user_conf.and_then(|u| u.query_timeout),
    })
}

/// Answers a request for a newer minor protocol version or for protocol
/// options with NegotiateProtocolVersion (pgtarn speaks 3.0).
async fn negotiate_version(
    stream: &mut Stream,
    startup: &StartupMessage,
) -> Result<(), ClientError> {
    let options: Vec<&str> = startup
        .params()
        .filter(|(k, _)| k.starts_with("_pq_."))
        .map(|(k, _)| k)
        .collect();
    if startup.minor_version == 0 && options.is_empty() {
        return Ok(());
    }
    let mut out = BytesMut::new();
    encode::negotiate_protocol_version(&mut out, &options);
    stream.send(&out).await?;
    Ok(())
}

/// Sends the error for `e`, if the client can still hear it, and logs it.
/// Returns `None`: the connection has nothing more to serve.
async fn fail<T>(stream: &mut Stream, peer: Peer, e: &ClientError) -> Option<T> {
    info!(%peer, error = %e, "client connection refused");
    send_fatal(stream, e).await;
    None
}

/// How long a client gets to take its last message: one that has stopped
/// reading (its socket buffers full) is closed without it.
const FATAL_WRITE_LIMIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Sends the FATAL error for `e`, if it has one, and closes the stream:
/// within [`FATAL_WRITE_LIMIT`].
async fn send_fatal(stream: &mut Stream, e: &ClientError) {
    if let Some(r) = e.reply() {
        let mut out = BytesMut::new();
        encode::error_response(&mut out, Severity::Fatal, &r.code, &r.message, r.hint);
        let write = async {
            let _ = stream.send(&out).await;
            let _ = stream.shutdown().await;
        };
        let _ = tokio::time::timeout(FATAL_WRITE_LIMIT, write).await;
    }
}

async fn report_end(
    client: &mut Stream,
    peer: Peer,
    who: &crate::pool::PoolKey,
    end: Result<End, ClientError>,
) {
    match end {
        Ok(End::Terminated) => info!(%peer, client = %who, "client disconnected"),
        Ok(End::Closed) => info!(%peer, client = %who, "client disconnected: connection closed"),
        Ok(End::Killed) => {
            info!(%peer, client = %who, "client disconnected: KILL");
            send_fatal(client, &ClientError::Killed).await;
        }
        Ok(End::Shutdown) => {
            info!(%peer, client = %who, "client disconnected: shutdown");
            send_fatal(client, &ClientError::Shutdown).await;
        }
        Err(e) => {
            info!(%peer, client = %who, error = %e, "client disconnected with error");
            send_fatal(client, &e).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client that stopped reading, its socket buffers full, does not
    /// hold its session (and its `max_client_conn` slot) forever.
    #[tokio::test]
    async fn the_last_message_to_a_client_that_stopped_reading_is_bounded() {
        let (ours, _theirs) = tokio::net::UnixStream::pair().expect("socket pair");
        let chunk = vec![0u8; 64 * 1024];
        while ours.try_write(&chunk).is_ok() {}
        let mut stream = Stream::Unix(ours);
        let sent = tokio::time::timeout(
            FATAL_WRITE_LIMIT * 3,
            send_fatal(&mut stream, &ClientError::Killed),
        );
        assert!(sent.await.is_ok(), "send_fatal returned");
    }

    /// The size of a future an async fn returns, without calling it.
    fn future_size<A, B, C, D, F>(_: fn(A, B, C, D) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Every connected client's task holds this state for as long as the
    /// client stays connected, idle or not: 10,000 idle clients hold it
    /// 10,000 times (issue 7's memory target is 64 MiB for them). Large
    /// rare futures (a server login, an auth_query lookup, the opening)
    /// are boxed so that they do not count here. 367cb7b made a server
    /// login part of it again: 4,480 bytes instead of 3,304, and 62-69
    /// instead of 48-50 MiB with 10,000 idle clients.
    #[test]
    fn a_client_task_holds_little_state() {
        let size = future_size(handle);
        eprintln!("client task state: {size} bytes");
        assert!(size <= 3584, "client task state is {size} bytes");
    }
}
