//! The login conversation with Postgres: StartupMessage, authentication,
//! ParameterStatus and BackendKeyData up to the first ReadyForQuery.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

use super::{BackendError, ServerConn, Target};
use crate::auth::scram_client::{PassthroughClient, ScramKeys};
use crate::auth::secret::md5_response;
use crate::protocol::backend::{self as msg, AuthRequest};
use crate::protocol::{ProtocolError, encode};

const SCRAM: &str = "SCRAM-SHA-256";

/// What pgtarn logs in upstream with.
#[derive(Clone)]
pub enum Credential {
    /// A plaintext password: cleartext, md5 and SCRAM all work.
    Password(String),
    /// An md5 hash (`md5...`): md5 servers only.
    Md5Hash(String),
    /// SCRAM passthrough with keys learned from a client's SCRAM login
    /// (empty until a client has logged in).
    ScramKeys(Arc<Mutex<Option<ScramKeys>>>),
    /// Nothing: only servers that ask for no password (trust).
    None,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Credential::Password(_) => "password",
            Credential::Md5Hash(_) => "md5 hash",
            Credential::ScramKeys(_) => "SCRAM passthrough",
            Credential::None => "none",
        })
    }
}

/// An in-progress SASL exchange.
enum Sasl {
    Password(ScramSha256),
    Keys(PassthroughClient),
}

/// Logs `conn` in as `target.user`.
pub(super) async fn login(conn: &mut ServerConn, target: &Target) -> Result<(), BackendError> {
    let startup = encode::startup_message(&[("user", &target.user), ("database", &target.dbname)]);
    conn.stream.send(&startup).await?;
    let mut sasl = None;
    loop {
        let f = conn.read_frame().await?;
        match f.tag() {
            b'R' => {
                if let Some(reply) = answer_auth(f.body(), target, &mut sasl)? {
                    conn.stream.send(&reply).await?;
                }
            }
            b'S' => {
                let (k, v) = msg::parameter_status(f.body())?;
                conn.settings.insert(k.to_ascii_lowercase(), v.to_owned());
                conn.login_params.push((k.to_owned(), v.to_owned()));
            }
            b'K' => conn.key = msg::backend_key_data(f.body())?,
            b'Z' => {
                conn.state.on_ready(msg::ready_for_query(f.body())?);
                return Ok(());
            }
            b'E' => return Err(BackendError::Server(msg::error_fields(f.body())?)),
            b'N' | b'v' => {}
            t => return Err(ProtocolError::Unexpected(t as char).into()),
        }
    }
}

fn cannot(target: &Target, method: &str) -> BackendError {
    BackendError::Auth(format!(
        "server asked for {method} authentication for user \"{}\", which pgtarn cannot do with the configured {:?}",
        target.user, target.credential
    ))
}

/// The reply to one authentication request, if one is due.
fn answer_auth(
    body: &[u8],
    target: &Target,
    sasl: &mut Option<Sasl>,
) -> Result<Option<Bytes>, BackendError> {
    let failed = |e: &dyn std::fmt::Display| {
        BackendError::Auth(format!("SCRAM exchange with server failed: {e}"))
    };
    Ok(match msg::auth_request(body)? {
        AuthRequest::Ok => None,
        AuthRequest::Cleartext => match &target.credential {
            Credential::Password(p) => Some(encode::password_message(p.as_bytes())),
            _ => return Err(cannot(target, "cleartext password")),
        },
        AuthRequest::Md5(salt) => match &target.credential {
            Credential::Password(p) => Some(encode::password_message(
                md5_hash(target.user.as_bytes(), p.as_bytes(), salt).as_bytes(),
            )),
            Credential::Md5Hash(h) => {
                Some(encode::password_message(md5_response(h, salt).as_bytes()))
            }
            _ => return Err(cannot(target, "md5")),
        },
        AuthRequest::Sasl(mechs) => {
            if !mechs.contains(&SCRAM) {
                return Err(BackendError::Auth(format!(
                    "server offers no supported SASL mechanism: {mechs:?}"
                )));
            }
            let (state, first) = start_sasl(target)?;
            *sasl = Some(state);
            Some(encode::sasl_initial_response(SCRAM, &first))
        }
        AuthRequest::SaslContinue(data) => Some(encode::sasl_response(&match sasl.as_mut() {
            Some(Sasl::Password(s)) => {
                s.update(data).map_err(|e| failed(&e))?;
                s.message().to_vec()
            }
            Some(Sasl::Keys(c)) => c.server_first(data).map_err(|e| failed(&e))?,
            None => return Err(ProtocolError::Unexpected('R').into()),
        })),
        AuthRequest::SaslFinal(data) => {
            match sasl.as_mut() {
                Some(Sasl::Password(s)) => s.finish(data).map_err(|e| failed(&e))?,
                Some(Sasl::Keys(c)) => c.server_final(data).map_err(|e| failed(&e))?,
                None => return Err(ProtocolError::Unexpected('R').into()),
            }
            None
        }
        AuthRequest::Other(n) => {
            return Err(BackendError::Auth(format!(
                "server requested unsupported authentication method {n}"
            )));
        }
    })
}

fn start_sasl(target: &Target) -> Result<(Sasl, Vec<u8>), BackendError> {
    match &target.credential {
        Credential::Password(p) => {
            let s = ScramSha256::new(p.as_bytes(), ChannelBinding::unsupported());
            let first = s.message().to_vec();
            Ok((Sasl::Password(s), first))
        }
        Credential::ScramKeys(keys) => {
            let keys = *keys.lock().unwrap_or_else(|p| p.into_inner());
            let keys = keys.ok_or_else(|| {
                BackendError::Auth(format!(
                    "SCRAM passthrough for user \"{}\" needs a client to log in with SCRAM first",
                    target.user
                ))
            })?;
            let c = PassthroughClient::new(keys);
            let first = c.client_first();
            Ok((Sasl::Keys(c), first))
        }
        _ => Err(cannot(target, "SCRAM-SHA-256")),
    }
}
