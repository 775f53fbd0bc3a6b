//! The login conversation with Postgres: StartupMessage, authentication,
//! ParameterStatus and BackendKeyData up to the first ReadyForQuery.

use bytes::Bytes;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use tokio::io::AsyncWriteExt;

use super::{BackendError, ServerConn, Target};
use crate::protocol::backend::{self as msg, AuthRequest};
use crate::protocol::{ProtocolError, encode};

const SCRAM: &str = "SCRAM-SHA-256";

/// Logs `conn` in as `target.user`.
pub(super) async fn login(conn: &mut ServerConn, target: &Target) -> Result<(), BackendError> {
    let startup = encode::startup_message(&[("user", &target.user), ("database", &target.dbname)]);
    conn.stream.write_all(&startup).await?;
    let mut scram: Option<ScramSha256> = None;
    loop {
        let f = conn.read_frame().await?;
        match f.tag() {
            b'R' => {
                if let Some(reply) = answer_auth(f.body(), target, &mut scram)? {
                    conn.stream.write_all(&reply).await?;
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

fn password(target: &Target) -> Result<&str, BackendError> {
    target.password.as_deref().ok_or_else(|| {
        BackendError::Auth(format!(
            "server asked for a password for user \"{}\" but none is configured",
            target.user
        ))
    })
}

/// The reply to one authentication request, if one is due.
fn answer_auth(
    body: &[u8],
    target: &Target,
    scram: &mut Option<ScramSha256>,
) -> Result<Option<Bytes>, BackendError> {
    let sasl_err =
        |e: std::io::Error| BackendError::Auth(format!("SCRAM exchange with server failed: {e}"));
    Ok(match msg::auth_request(body)? {
        AuthRequest::Ok => None,
        AuthRequest::Cleartext => Some(encode::password_message(password(target)?.as_bytes())),
        AuthRequest::Md5(salt) => {
            let hash = md5_hash(target.user.as_bytes(), password(target)?.as_bytes(), salt);
            Some(encode::password_message(hash.as_bytes()))
        }
        AuthRequest::Sasl(mechs) => {
            if !mechs.contains(&SCRAM) {
                return Err(BackendError::Auth(format!(
                    "server offers no supported SASL mechanism: {mechs:?}"
                )));
            }
            let s = ScramSha256::new(password(target)?.as_bytes(), ChannelBinding::unsupported());
            let reply = encode::sasl_initial_response(SCRAM, s.message());
            *scram = Some(s);
            Some(reply)
        }
        AuthRequest::SaslContinue(data) => {
            let s = scram.as_mut().ok_or(ProtocolError::Unexpected('R'))?;
            s.update(data).map_err(sasl_err)?;
            Some(encode::sasl_response(s.message()))
        }
        AuthRequest::SaslFinal(data) => {
            let s = scram.as_mut().ok_or(ProtocolError::Unexpected('R'))?;
            s.finish(data).map_err(sasl_err)?;
            None
        }
        AuthRequest::Other(n) => {
            return Err(BackendError::Auth(format!(
                "server requested unsupported authentication method {n}"
            )));
        }
    })
}
