//! One upstream connection: connect, log in, know whether it is idle.
//!
//! [`ServerConn::connect`] opens TCP (or the Unix-domain socket, when the
//! host is a directory, as libpq reads it), sends the StartupMessage, answers the
//! server's authentication request (SCRAM-SHA-256, md5 or cleartext) and
//! collects ParameterStatus and BackendKeyData until the first
//! ReadyForQuery. Afterwards the session loop reads and writes the
//! connection's stream directly and reports every forwarded client message
//! and every ReadyForQuery to its [`ServerState`].

pub mod cancel;
pub mod limit;
mod login;
pub mod state;
pub mod statements;
pub mod tls;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::AsyncReadExt;

use crate::net::Stream;
use crate::protocol::backend::{self as msg, ErrorFields};
use crate::protocol::frame::server_streamable;
use crate::protocol::sqlstate::CONNECTION_FAILURE;
use crate::protocol::startup::CancelKey;
use crate::protocol::{Frame, Item, ProtocolError, Splitter, encode};
pub use cancel::{CancelTarget, InFlight};
pub use login::Credential;
pub use state::ServerState;
pub use tls::UpstreamTls;

/// Where a server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerAddr {
    /// A TCP address.
    Tcp(SocketAddr),
    /// A Unix-domain socket's path.
    Unix(std::path::PathBuf),
}

impl ServerAddr {
    /// The TCP address, if any.
    pub fn tcp(&self) -> Option<SocketAddr> {
        match self {
            ServerAddr::Tcp(a) => Some(*a),
            ServerAddr::Unix(_) => None,
        }
    }
}

impl std::fmt::Display for ServerAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServerAddr::Tcp(a) => a.fmt(f),
            ServerAddr::Unix(p) => p.display().fmt(f),
        }
    }
}

/// The Unix-domain socket that `host` and `port` name when `host` is a
/// directory (an absolute path), as libpq reads them:
/// `host/.s.PGSQL.port`.
pub fn unix_socket(host: &str, port: u16) -> Option<std::path::PathBuf> {
    host.starts_with('/')
        .then(|| std::path::Path::new(host).join(format!(".s.PGSQL.{port}")))
}

/// Where and as whom to connect upstream.
#[derive(Clone)]
pub struct Target {
    /// Host name or address, or several separated by commas (tried in
    /// turn, see [`Target::hosts`]).
    pub host: String,
    /// With several hosts: start each connect at the next one (round
    /// robin) rather than always at the first. Shared by the target's
    /// clones.
    pub round_robin: Option<Arc<std::sync::atomic::AtomicUsize>>,
    /// TCP port.
    pub port: u16,
    /// Database name upstream.
    pub dbname: String,
    /// User name upstream.
    pub user: String,
    /// What to log in with, if the server asks.
    pub credential: Credential,
    /// Largest message buffered whole, bytes.
    pub max_message_len: usize,
    /// TLS towards this server, unless disabled (never on a Unix-domain
    /// socket, as with libpq).
    pub tls: Option<UpstreamTls>,
    /// TCP keepalive for its connections.
    pub keepalive: crate::net::Keepalive,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}@{}:{}/{}",
            self.user, self.host, self.port, self.dbname
        )
    }
}

/// Why talking to a server failed.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// Socket error, including connection refused.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The server closed the connection.
    #[error("server closed the connection unexpectedly")]
    Closed,
    /// The server sent an ErrorResponse during login or a reset.
    #[error("{0}")]
    Server(ErrorFields),
    /// The server broke the protocol.
    #[error("protocol error from server: {0}")]
    Protocol(#[from] ProtocolError),
    /// Authentication could not proceed (e.g. no password configured).
    #[error("{0}")]
    Auth(String),
    /// A time limit passed.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The database stayed at `max_db_connections` for the whole wait.
    #[error("max_db_connections reached")]
    DatabaseFull,
    /// The user stayed at `max_user_connections` for the whole wait.
    #[error("max_user_connections reached")]
    UserFull,
    /// TLS could not be set up as configured.
    #[error("{0}")]
    Tls(String),
    /// A pool could not open a server connection (or repeats why it could
    /// not, under `server_login_retry`).
    #[error("{0}")]
    Connect(ConnectFailure),
}

/// A failed attempt to connect and log in to a pool's server, as that
/// pool's clients are told. It is a plain value (cloneable) so that
/// `server_login_retry` can hand the same error to later clients.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("pgtarn: cannot connect to server for database \"{database}\": {message}")]
pub struct ConnectFailure {
    /// The database as clients name it.
    pub database: String,
    /// SQLSTATE: the server's when it answered the login with an
    /// ErrorResponse (e.g. 28P01), else 08006.
    pub code: String,
    /// Why: the server's message, or the socket, TLS or timeout error.
    pub message: String,
    /// True when repeated from the `server_login_retry` cache, without a
    /// new attempt.
    pub cached: bool,
}

impl ConnectFailure {
    /// Describes `error`, met while connecting to the server of `database`.
    pub fn new(database: &str, error: &BackendError) -> Self {
        let (code, message) = match error {
            BackendError::Server(f) => (f.code.clone(), f.message.clone()),
            BackendError::Connect(f) => (f.code.clone(), f.message.clone()),
            e => (CONNECTION_FAILURE.to_owned(), e.to_string()),
        };
        ConnectFailure {
            database: database.to_owned(),
            code,
            message,
            cached: false,
        }
    }
}

/// A logged-in server connection.
#[derive(Debug)]
pub struct ServerConn {
    /// The socket.
    pub stream: Stream,
    /// Bytes read from the server and not yet handed on.
    pub rbuf: BytesMut,
    /// Splits `rbuf` into frames.
    pub splitter: Splitter,
    /// What is outstanding on the connection.
    pub state: ServerState,
    /// Current setting values known to pgtarn, keyed by lower-case name.
    pub settings: BTreeMap<String, String>,
    /// pgtarn-named prepared statements that exist on this server.
    pub statements: statements::StatementCache,
    /// When the connection was opened or last went back to its pool idle:
    /// how long it has been idle decides whether `server_check_query` runs
    /// before it is handed out again.
    pub idle_since: Instant,
    /// The ParameterStatus set received at login, in order.
    login_params: Vec<(String, String)>,
    key: CancelKey,
    addr: ServerAddr,
    host: String,
    tls: Option<UpstreamTls>,
    id: u64,
    /// The client settings this server was last brought in line with; reset
    /// to `None` whenever `settings` changes otherwise.
    pub synced_params: Option<Arc<BTreeMap<String, (String, String)>>>,
    /// Where cancel requests for this connection go, once logged in.
    cancel: Option<Arc<CancelTarget>>,
    /// The cancel requests in flight for this connection (shared with
    /// every [`CancelTarget`] built for it).
    in_flight: Arc<InFlight>,
    /// The connection's entry in `SHOW SERVERS`, set by the pool.
    pub listed: Option<crate::stats::clients::Listed>,
    /// Its place in its database's `max_db_connections` count, set by
    /// the pool.
    pub db_slot: Option<limit::DbSlot>,
    /// Its place in its user's `max_user_connections` count.
    pub user_slot: Option<limit::DbSlot>,
}

impl Target {
    /// The hosts of a comma-separated `host`, in the order to try them
    /// this time: from the next one in turn under round robin, else from
    /// the first.
    pub fn hosts(&self) -> Vec<&str> {
        let mut hosts: Vec<&str> = hosts(&self.host).collect();
        if let Some(next) = &self.round_robin
            && hosts.len() > 1
        {
            let first = next.fetch_add(1, Ordering::Relaxed) % hosts.len();
            hosts.rotate_left(first);
        }
        hosts
    }
}

/// The hosts of a `host` setting: comma-separated, blanks trimmed.
pub fn hosts(host: &str) -> impl Iterator<Item = &str> {
    host.split(',').map(str::trim).filter(|h| !h.is_empty())
}

/// Opens the socket to `host`: its Unix-domain socket, or TCP with TLS
/// as configured.
async fn open_host(target: &Target, host: &str) -> Result<(Stream, ServerAddr), BackendError> {
    if let Some(path) = unix_socket(host, target.port) {
        let unix = tokio::net::UnixStream::connect(&path)
            .await
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        return Ok((Stream::Unix(unix), ServerAddr::Unix(path)));
    }
    let tcp = tokio::net::TcpStream::connect((host, target.port)).await?;
    tcp.set_nodelay(true)?;
    target.keepalive.apply(&tcp)?;
    let addr = ServerAddr::Tcp(tcp.peer_addr()?);
    let stream = match &target.tls {
        Some(tls) => tls::negotiate(tcp, host, tls).await?,
        None => Stream::Plain(tcp),
    };
    Ok((stream, addr))
}

impl ServerConn {
    /// Connects and logs in to `host`, one of `target`'s hosts (see
    /// [`Target::hosts`]; trying the others is the caller's business, each
    /// within its own time limit); `id` names it in logs.
    pub async fn connect(target: &Target, host: &str, id: u64) -> Result<ServerConn, BackendError> {
        let (stream, addr) = open_host(target, host).await?;
        let host = host.to_owned();
        let tls = target.tls.clone().filter(|_| addr.tcp().is_some());
        let mut conn = ServerConn {
            stream,
            rbuf: BytesMut::with_capacity(16 * 1024),
            splitter: Splitter::new(target.max_message_len, server_streamable),
            state: ServerState::default(),
            settings: BTreeMap::new(),
            statements: Default::default(),
            idle_since: Instant::now(),
            login_params: Vec::new(),
            key: CancelKey { pid: 0, secret: 0 },
            addr,
            host,
            tls,
            id,
            listed: None,
            db_slot: None,
            user_slot: None,
            synced_params: None,
            cancel: None,
            in_flight: Arc::default(),
        };
        login::login(&mut conn, target).await?;
        conn.cancel = Some(Arc::new(conn.new_cancel_target()));
        Ok(conn)
    }

    /// The pgtarn-wide id of this connection.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The server's address.
    pub fn addr(&self) -> &ServerAddr {
        &self.addr
    }

    /// The Postgres backend process id.
    pub fn backend_pid(&self) -> i32 {
        self.key.pid
    }

    /// Whether the connection uses TLS.
    pub fn is_tls(&self) -> bool {
        self.stream.is_tls()
    }

    /// How to cancel this server's running query (built once, at login).
    pub fn cancel_target(&self) -> Arc<CancelTarget> {
        match &self.cancel {
            Some(t) => t.clone(),
            None => Arc::new(self.new_cancel_target()),
        }
    }

    fn new_cancel_target(&self) -> CancelTarget {
        CancelTarget {
            addr: self.addr.clone(),
            host: self.host.clone(),
            key: self.key,
            tls: self.tls.clone(),
            in_flight: self.in_flight.clone(),
        }
    }

    /// The cancel requests in flight for this connection: while one is,
    /// the connection must not be lent to another client.
    pub fn cancels_in_flight(&self) -> &Arc<InFlight> {
        &self.in_flight
    }

    /// The ParameterStatus values reported at login.
    pub fn login_params(&self) -> &[(String, String)] {
        &self.login_params
    }

    /// True when the connection may go back to the pool: idle, nothing
    /// buffered, and the server has not closed it or sent anything since.
    pub fn is_reusable(&self) -> bool {
        self.state.is_idle()
            && self.rbuf.is_empty()
            && !self.splitter.in_stream()
            && !self.stream.has_pending_input_or_eof()
    }

    /// Reads the next whole frame (login and internal queries only).
    async fn read_frame(&mut self) -> Result<Frame, BackendError> {
        loop {
            match self.splitter.next(&mut self.rbuf)? {
                Some(Item::Frame(f)) => return Ok(f),
                Some(Item::Chunk(_)) => {
                    return Err(ProtocolError::Malformed("oversized message").into());
                }
                None => {}
            }
            self.rbuf.reserve(8192);
            if self.stream.read_buf(&mut self.rbuf).await? == 0 {
                return Err(BackendError::Closed);
            }
        }
    }

    /// Runs `connect_query` on a fresh (or freshly reset) connection. The
    /// settings it reports (ParameterStatus) count as the connection's
    /// login values, which is what clients are told. An error, or a
    /// transaction left open, fails the connection.
    pub async fn run_connect_query(&mut self, sql: &str) -> Result<(), BackendError> {
        let mut buf = BytesMut::new();
        encode::query(&mut buf, sql);
        self.stream.send(&buf).await?;
        self.state.on_client_message(b'Q');
        let mut error = None;
        loop {
            let f = self.read_frame().await?;
            match f.tag() {
                b'Z' => {
                    self.state.on_ready(msg::ready_for_query(f.body())?);
                    break;
                }
                b'E' if error.is_none() => error = Some(msg::error_fields(f.body())?),
                b'S' => {
                    let (k, v) = msg::parameter_status(f.body())?;
                    self.note_login_param(k, v);
                }
                _ => {}
            }
        }
        if let Some(mut e) = error {
            e.message = format!("connect_query failed: {}", e.message);
            return Err(BackendError::Server(e));
        }
        if !self.state.is_idle() {
            let why = "connect_query left the connection inside a transaction";
            return Err(std::io::Error::other(why).into());
        }
        Ok(())
    }

    fn note_login_param(&mut self, name: &str, value: &str) {
        self.settings
            .insert(name.to_ascii_lowercase(), value.to_owned());
        match self.login_params.iter_mut().find(|(k, _)| k == name) {
            Some((_, v)) => *v = value.to_owned(),
            None => self.login_params.push((name.to_owned(), value.to_owned())),
        }
    }

    /// Runs `sql` as a simple query whose results nobody sees, waiting for
    /// its ReadyForQuery. Returns the first error the server reported.
    pub async fn run_internal(&mut self, sql: &str) -> Result<Option<ErrorFields>, BackendError> {
        self.run_internal_row(sql).await.map(|(_, err)| err)
    }

    /// Like [`ServerConn::run_internal`], also returning the text columns
    /// of the first row.
    pub async fn run_internal_row(&mut self, sql: &str) -> Result<InternalResult, BackendError> {
        let mut buf = BytesMut::new();
        encode::query(&mut buf, sql);
        self.stream.send(&buf).await?;
        self.state.on_client_message(b'Q');
        let (mut row, mut error) = (None, None);
        loop {
            let f = self.read_frame().await?;
            match f.tag() {
                b'Z' => {
                    self.state.on_ready(msg::ready_for_query(f.body())?);
                    return Ok((row, error));
                }
                b'E' if error.is_none() => error = Some(msg::error_fields(f.body())?),
                b'D' if row.is_none() => row = Some(text_columns(f.body())?),
                _ => {}
            }
        }
    }
}

/// The first row (text columns, `None` for NULL) and the first error of
/// an internal query.
pub type InternalResult = (Option<Vec<Option<String>>>, Option<ErrorFields>);

fn text_columns(body: &[u8]) -> Result<Vec<Option<String>>, ProtocolError> {
    let cols = msg::data_row(body)?;
    Ok(cols
        .into_iter()
        .map(|c| c.map(|b| String::from_utf8_lossy(b).into_owned()))
        .collect())
}

impl Drop for ServerConn {
    fn drop(&mut self) {
        self.stream.try_write_now(&encode::terminate());
    }
}
