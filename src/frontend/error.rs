//! Everything that can end or fail a client's session, and the
//! ErrorResponse each one turns into. Wording follows PgBouncer's where it
//! has one, since people grep logs for it.

use crate::backend::BackendError;
use crate::pool::{CheckoutError, LookupError};
use crate::protocol::ProtocolError;
use crate::protocol::backend::ErrorFields;
use crate::protocol::sqlstate as code;
use crate::stats::clients::KillReason;

use super::params::ParamError;

/// A client session failure; [`ClientError::reply`] says what the client
/// is told.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The client's socket failed or closed: nobody to tell.
    #[error("client socket: {0}")]
    Io(#[from] std::io::Error),
    /// The client broke the protocol.
    #[error("{0}")]
    Protocol(#[from] ProtocolError),
    /// Unacceptable startup parameters.
    #[error("{0}")]
    Params(#[from] ParamError),
    /// No `user` in the startup packet.
    #[error("no PostgreSQL user name specified in startup packet")]
    NoUser,
    /// Unknown database.
    #[error("no such database: {0}")]
    UnknownDatabase(String),
    /// A transaction block in `statement` pool mode (PgBouncer's words).
    #[error("transaction blocks not allowed in statement pooling mode")]
    TransactionInStatementMode,
    /// The database takes no new clients (`DISABLE` on the console).
    #[error("database \"{0}\" is not currently accepting connections")]
    DatabaseDisabled(String),
    /// `auth_hba_file` has no rule for the connection (`rejected`: its
    /// rule says `reject`), in Postgres' words for `pg_hba.conf`.
    #[error(
        "{} for host \"{host}\", user \"{user}\", database \"{database}\", {}",
        if *rejected { "auth_hba_file rejects connection" } else { "no auth_hba_file entry" },
        if *tls { "SSL encryption" } else { "no encryption" }
    )]
    HbaRefused {
        /// True for a `reject` rule, false for no rule.
        rejected: bool,
        /// The client's address, `[local]` on the Unix socket.
        host: String,
        /// The login user.
        user: String,
        /// The database asked for.
        database: String,
        /// Whether the connection is encrypted.
        tls: bool,
    },
    /// Wrong password, unknown user, or failed SCRAM exchange.
    #[error("password authentication failed for user \"{0}\"")]
    AuthFailed(String),
    /// The TLS handshake with the client failed (nothing can be sent).
    #[error("TLS handshake failed: {0}")]
    Tls(String),
    /// A plaintext login while `tls.client.mode = "require"`.
    #[error(
        "TLS is required: this server accepts only encrypted connections (tls.client.mode = \"require\")"
    )]
    TlsRequired,
    /// Over `max_client_conn`.
    #[error("no more connections allowed (max_client_conn)")]
    TooManyClients,
    /// Over the database's `max_db_client_connections`.
    #[error("client connections exceeded (max_db_client_connections)")]
    DatabaseClientsFull,
    /// Over the user's `max_user_client_connections`.
    #[error("client connections exceeded (max_user_client_connections)")]
    UserClientsFull,
    /// Startup and authentication took longer than `client_login_timeout`.
    #[error("client_login_timeout")]
    LoginTimeout,
    /// No server for the client.
    #[error("{0}")]
    Checkout(#[from] CheckoutError),
    /// The server rejected the client's startup settings.
    #[error("{0}")]
    SettingRejected(ErrorFields),
    /// The server connection failed while serving the client (the
    /// session names the database before the client is told: see
    /// [`ClientError::ServerFailed`]).
    #[error("server connection failed: {0}")]
    ServerLost(BackendError),
    /// The server connection of `database` failed while serving the
    /// client. If it failed in the middle of a message already partly
    /// forwarded, nothing more can be said to the client: it is closed.
    #[error("server connection for database \"{database}\" failed: {error}")]
    ServerFailed {
        /// The database, as the client named it.
        database: String,
        /// What happened.
        error: BackendError,
        /// True if part of a message had been forwarded.
        mid_message: bool,
    },
    /// pgtarn is shutting down.
    #[error("pgtarn is shutting down")]
    Shutdown,
    /// The client stayed idle longer than `client_idle_timeout`.
    #[error("client_idle_timeout")]
    ClientIdleTimeout,
    /// The client stayed idle inside a transaction longer than
    /// `idle_transaction_timeout`.
    #[error("idle transaction timeout")]
    IdleTransactionTimeout,
    /// A cancelled query (`query_timeout`) did not end within
    /// `cancel_wait_timeout`.
    #[error("query_timeout")]
    QueryTimeout,
    /// The client stopped reading a result for longer than its time limit
    /// (`query_timeout`, or once the query is done `idle_transaction_timeout`
    /// or `client_idle_timeout`), or was killed meanwhile; a message may be
    /// cut, so the connection is closed without one.
    #[error("client stopped reading its result past its time limit or KILL")]
    StuckClient,
    /// An admin ran `KILL` on the client's database.
    #[error("terminating connection due to administrator command (KILL)")]
    Killed,
    /// A console login by a user in neither `admin_users` nor `stats_users`.
    #[error("not allowed: user \"{0}\" is not in admin_users or stats_users")]
    NotAdmin(String),
}

impl From<LookupError> for ClientError {
    fn from(e: LookupError) -> Self {
        match e {
            LookupError::UnknownDatabase(d) => ClientError::UnknownDatabase(d),
            LookupError::UnknownUser(u) => ClientError::AuthFailed(u),
        }
    }
}

/// An error to send: SQLSTATE, message, optional hint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// SQLSTATE.
    pub code: String,
    /// Primary message.
    pub message: String,
    /// Hint, if any.
    pub hint: Option<&'static str>,
}

fn reply(code: &str, message: String, hint: Option<&'static str>) -> Option<Reply> {
    Some(Reply {
        code: code.to_owned(),
        message,
        hint,
    })
}

impl ClientError {
    /// What to tell the client before closing, if it can still be told.
    pub fn reply(&self) -> Option<Reply> {
        let msg = self.to_string();
        match self {
            ClientError::Io(_) | ClientError::Tls(_) | ClientError::StuckClient => None,
            ClientError::TlsRequired => reply(code::INVALID_AUTHORIZATION, msg, None),
            ClientError::Protocol(_) => reply(code::PROTOCOL_VIOLATION, msg, None),
            ClientError::Params(ParamError::Replication) => {
                reply(code::FEATURE_NOT_SUPPORTED, msg, None)
            }
            ClientError::Params(_) => reply(code::PROTOCOL_VIOLATION, msg, None),
            ClientError::NoUser => reply(code::INVALID_AUTHORIZATION, msg, None),
            ClientError::UnknownDatabase(_) => reply(code::INVALID_CATALOG_NAME, msg, None),
            ClientError::TransactionInStatementMode => reply(code::PROTOCOL_VIOLATION, msg, None),
            ClientError::DatabaseDisabled(_) => reply(
                code::OBJECT_NOT_IN_PREREQUISITE_STATE,
                msg,
                Some("An admin ran DISABLE on pgtarn's console; ENABLE admits new clients again."),
            ),
            ClientError::AuthFailed(_) => reply(code::INVALID_PASSWORD, msg, None),
            ClientError::HbaRefused { .. } => reply(code::INVALID_AUTHORIZATION, msg, None),
            ClientError::TooManyClients
            | ClientError::DatabaseClientsFull
            | ClientError::UserClientsFull => reply(code::TOO_MANY_CONNECTIONS, msg, None),
            ClientError::LoginTimeout => reply(code::PROTOCOL_VIOLATION, msg, None),
            ClientError::Checkout(e) => checkout_reply(e),
            ClientError::SettingRejected(f) => reply(&f.code, f.message.clone(), None),
            ClientError::ServerLost(_) => reply(code::CONNECTION_FAILURE, msg, None),
            ClientError::ServerFailed { mid_message, .. } => {
                (!mid_message).then_some(())?;
                reply(code::CONNECTION_FAILURE, msg, None)
            }
            ClientError::Shutdown => reply(code::ADMIN_SHUTDOWN, msg, None),
            ClientError::ClientIdleTimeout => reply(code::IDLE_SESSION_TIMEOUT, msg, None),
            ClientError::IdleTransactionTimeout => {
                reply(code::IDLE_IN_TRANSACTION_TIMEOUT, msg, None)
            }
            ClientError::QueryTimeout => reply(code::QUERY_CANCELED, msg, None),
            ClientError::Killed => reply(code::ADMIN_SHUTDOWN, msg, None),
            ClientError::NotAdmin(_) => reply(code::INSUFFICIENT_PRIVILEGE, msg, None),
        }
    }
}

/// Hint on an upstream login error repeated under `server_login_retry`.
const LOGIN_RETRY_HINT: &str =
    "The last login to this server failed; pgtarn tries again once server_login_retry has passed.";

fn checkout_reply(e: &CheckoutError) -> Option<Reply> {
    match e {
        CheckoutError::WaitTimeout => reply(
            code::TOO_MANY_CONNECTIONS,
            "query_wait_timeout".into(),
            Some(
                "All server connections of this pool stayed busy for query_wait_timeout; raise pool_size or query_wait_timeout, or shorten transactions.",
            ),
        ),
        CheckoutError::DatabaseFull => reply(
            code::TOO_MANY_CONNECTIONS,
            "query_wait_timeout".into(),
            Some(
                "The database's max_db_connections server connections, shared by all its users, stayed busy for query_wait_timeout; raise max_db_connections or query_wait_timeout, or shorten transactions.",
            ),
        ),
        CheckoutError::UserFull => reply(
            code::TOO_MANY_CONNECTIONS,
            "query_wait_timeout".into(),
            Some(
                "The user's max_user_connections server connections, shared by all its databases, stayed busy for query_wait_timeout; raise max_user_connections or query_wait_timeout, or shorten transactions.",
            ),
        ),
        CheckoutError::Connect(BackendError::Connect(f)) => {
            reply(&f.code, f.to_string(), f.cached.then_some(LOGIN_RETRY_HINT))
        }
        CheckoutError::Connect(BackendError::Server(f)) => reply(&f.code, f.message.clone(), None),
        CheckoutError::Connect(e) => reply(
            code::CONNECTION_FAILURE,
            format!("could not connect to server: {e}"),
            None,
        ),
        CheckoutError::Closed => {
            reply(code::ADMIN_SHUTDOWN, "pgtarn is shutting down".into(), None)
        }
    }
}

impl From<KillReason> for ClientError {
    /// How a session that was asked to end for `r` ends.
    fn from(r: KillReason) -> Self {
        match r {
            KillReason::Admin => ClientError::Killed,
            KillReason::Drain | KillReason::Shutdown => ClientError::Shutdown,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_carry_the_documented_sqlstates() {
        let code_of = |e: ClientError| e.reply().map(|r| r.code);
        assert_eq!(
            code_of(ClientError::TooManyClients).as_deref(),
            Some("53300")
        );
        assert_eq!(
            code_of(ClientError::UnknownDatabase("x".into())).as_deref(),
            Some("3D000")
        );
        assert_eq!(
            code_of(ClientError::AuthFailed("x".into())).as_deref(),
            Some("28P01")
        );
        assert_eq!(
            code_of(ProtocolError::Malformed("x").into()).as_deref(),
            Some("08P01")
        );
        assert_eq!(code_of(ClientError::Shutdown).as_deref(), Some("57P01"));
        assert_eq!(code_of(std::io::Error::other("gone").into()), None);
        let failure = crate::backend::ConnectFailure {
            database: "app".into(),
            code: "28P01".into(),
            message: "password authentication failed for user \"app\"".into(),
            cached: true,
        };
        let r = ClientError::from(CheckoutError::Connect(BackendError::Connect(failure)))
            .reply()
            .expect("a reply");
        assert_eq!(r.code, "28P01");
        assert_eq!(
            r.message,
            "pgtarn: cannot connect to server for database \"app\": password authentication failed for user \"app\""
        );
        assert_eq!(r.hint, Some(LOGIN_RETRY_HINT));
        let unknown_user: ClientError = LookupError::UnknownUser("eve".into()).into();
        assert_eq!(
            unknown_user.to_string(),
            "password authentication failed for user \"eve\""
        );
    }
}
