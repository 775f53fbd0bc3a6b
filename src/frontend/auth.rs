//! Client authentication: SCRAM-SHA-256 (with `-PLUS` channel binding on
//! TLS), md5, or trust, against the user's configured secret. An unknown
//! user goes through the same exchange against a mock secret and gets the
//! same error as a wrong password, so the answer does not reveal which users
//! exist. Nothing here logs a password, a verifier or a proof.

use bytes::{BufMut, BytesMut};
use subtle::ConstantTimeEq;

use super::error::ClientError;
use super::handshake::read_frame;
use crate::auth::Secret;
use crate::auth::scram::{ChannelBinding, ScramError, ScramSecret, ScramServer};
use crate::auth::scram_client::ScramKeys;
use crate::auth::secret::md5_response;
use crate::config::AuthType;
use crate::net::Stream;
use crate::protocol::reader::Reader;
use crate::protocol::{Frame, ProtocolError, Splitter, encode};

/// Largest authentication message accepted from a client, bytes.
const MAX_AUTH_MESSAGE: usize = 8192;

/// A configured user's secrets, prepared once at start.
#[derive(Debug, Clone)]
pub struct UserAuth {
    /// The secret as configured.
    pub secret: Secret,
    /// The SCRAM secret clients are checked against (none for md5 hashes).
    pub scram: Option<ScramSecret>,
}

impl UserAuth {
    /// Prepares `secret` (derives the SCRAM secret of a password).
    pub fn new(secret: Secret) -> Self {
        let scram = secret.scram();
        UserAuth { secret, scram }
    }
}

/// What the client's credentials are checked against.
#[derive(Debug, Clone, Copy)]
pub struct Credentials<'a> {
    /// The user, `None` if unknown.
    pub user: Option<&'a UserAuth>,
    /// Per-process nonce that salts mock secrets for unknown users.
    pub mock_nonce: &'a [u8; 32],
    /// tls-server-end-point data when the client is on TLS.
    pub channel_binding: Option<&'a [u8]>,
}

/// Authenticates the client as `user`. The last messages of a successful
/// exchange (SCRAM's AuthenticationSASLFinal, then AuthenticationOk) are
/// appended to `out` for the caller to send with the rest of the login, so
/// that the client gets its whole answer in one segment and one wake-up.
/// Returns the SCRAM passthrough keys when the user's secret is a verifier
/// and the client proved it with SCRAM.
pub async fn authenticate(
    stream: &mut Stream,
    buf: &mut BytesMut,
    user: &str,
    creds: Credentials<'_>,
    method: AuthType,
    out: &mut BytesMut,
) -> Result<Option<ScramKeys>, ClientError> {
    let failed = || ClientError::AuthFailed(user.to_owned());
    // Hashed only when md5 is asked for: the hash costs an allocation and
    // an MD5 at every login otherwise.
    let md5_hash = match method {
        AuthType::Md5 => creds.user.and_then(|u| u.secret.md5_hash(user)),
        _ => None,
    };
    let keys = match method {
        AuthType::Trust if creds.user.is_some() => None,
        AuthType::Trust => return Err(failed()),
        AuthType::Md5 if md5_hash.is_some() || creds.user.is_none() => {
            md5(stream, buf, user, md5_hash.as_deref()).await?;
            None
        }
        AuthType::Md5 | AuthType::ScramSha256 => scram(stream, buf, user, creds, out).await?,
        // Resolved through auth_hba_file before this point.
        AuthType::Hba => return Err(failed()),
    };
    encode::auth_ok(out);
    Ok(keys)
}

/// The SCRAM exchange; appends AuthenticationSASLFinal to `out`.
async fn scram(
    stream: &mut Stream,
    buf: &mut BytesMut,
    user: &str,
    creds: Credentials<'_>,
    out: &mut BytesMut,
) -> Result<Option<ScramKeys>, ClientError> {
    let failed = || ClientError::AuthFailed(user.to_owned());
    let known = creds.user.and_then(|u| u.scram.as_ref());
    let secret = match known {
        Some(s) => s.clone(),
        None => ScramSecret::mock(user, creds.mock_nonce),
    };
    let server_key = secret.server_key;
    let binding = match creds.channel_binding {
        Some(hash) => ChannelBinding::TlsServerEndPoint(hash.to_vec()),
        None => ChannelBinding::None,
    };
    let mut server = ScramServer::new(secret, binding);
    let mut splitter = Splitter::new(MAX_AUTH_MESSAGE, |_| false);
    send_auth(stream, 10, |b| {
        for m in server.mechanisms() {
            encode::put_cstr(b, m.as_bytes());
        }
        b.put_u8(0);
    })
    .await?;
    let f = password_frame(stream, buf, &mut splitter).await?;
    let (mechanism, data) = sasl_initial_response(f.body())?;
    let first = server
        .client_first(mechanism, data)
        .map_err(|e| scram_error(e, user))?;
    send_auth(stream, 11, |b| b.put_slice(&first)).await?;
    let f = password_frame(stream, buf, &mut splitter).await?;
    let last = server
        .client_final(f.body())
        .map_err(|e| scram_error(e, user))?;
    if known.is_none() {
        return Err(failed());
    }
    put_auth(out, 12, |b| b.put_slice(&last));
    let passthrough = matches!(creds.user.map(|u| &u.secret), Some(Secret::Scram(_)));
    Ok(server
        .client_key()
        .filter(|_| passthrough)
        .map(|client_key| ScramKeys {
            client_key,
            server_key,
        }))
}

/// The md5 challenge; `hash` is the user's md5 hash (`None`: unknown user).
async fn md5(
    stream: &mut Stream,
    buf: &mut BytesMut,
    user: &str,
    hash: Option<&str>,
) -> Result<(), ClientError> {
    let salt: [u8; 4] = rand::random();
    send_auth(stream, 5, |b| b.put_slice(&salt)).await?;
    let mut splitter = Splitter::new(MAX_AUTH_MESSAGE, |_| false);
    let f = password_frame(stream, buf, &mut splitter).await?;
    let mut r = Reader::new(f.body(), "PasswordMessage");
    let answer = r.cstr_bytes()?;
    let ok = hash.is_some_and(|h| bool::from(md5_response(h, salt).as_bytes().ct_eq(answer)));
    if ok {
        Ok(())
    } else {
        Err(ClientError::AuthFailed(user.to_owned()))
    }
}

async fn send_auth(
    stream: &mut Stream,
    code: i32,
    body: impl FnOnce(&mut BytesMut),
) -> Result<(), ClientError> {
    let mut out = BytesMut::new();
    put_auth(&mut out, code, body);
    stream.send(&out).await?;
    Ok(())
}

/// Appends an Authentication message with `code` to `out`.
fn put_auth(out: &mut BytesMut, code: i32, body: impl FnOnce(&mut BytesMut)) {
    encode::message(out, b'R', |b| {
        b.put_i32(code);
        body(b);
    });
}

async fn password_frame(
    stream: &mut Stream,
    buf: &mut BytesMut,
    splitter: &mut Splitter,
) -> Result<Frame, ClientError> {
    let f = read_frame(stream, buf, splitter).await?;
    if f.tag() != b'p' {
        return Err(ProtocolError::Unexpected(f.tag() as char).into());
    }
    Ok(f)
}

/// Parses SASLInitialResponse: mechanism, then length-prefixed data.
fn sasl_initial_response(body: &[u8]) -> Result<(&str, &[u8]), ProtocolError> {
    let mut r = Reader::new(body, "SASLInitialResponse");
    let mechanism = r.cstr()?;
    let len = r.i32()?;
    let data = match usize::try_from(len) {
        Ok(n) => r.bytes(n)?,
        Err(_) => &[],
    };
    if !r.is_empty() {
        return Err(ProtocolError::Malformed("SASLInitialResponse"));
    }
    Ok((mechanism, data))
}

/// As Postgres' auth-scram.c answers: a wrong proof or channel-binding
/// data that does not match fail authentication (28P01); a malformed or
/// mis-negotiated exchange is a protocol violation (08P01). Both come
/// the same for known and unknown users (the format is checked before
/// the secret is used).
fn scram_error(e: ScramError, user: &str) -> ClientError {
    match e {
        ScramError::InvalidProof | ScramError::ChannelBindingMismatch => {
            ClientError::AuthFailed(user.to_owned())
        }
        ScramError::UnsupportedMechanism(_) => ProtocolError::Unsupported(
            "the client selected a SASL mechanism that was not offered".into(),
        )
        .into(),
        other => ProtocolError::Unsupported(other.to_string()).into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sasl_initial_response_is_bounds_checked() {
        let mut body = b"SCRAM-SHA-256\0".to_vec();
        body.extend_from_slice(&3i32.to_be_bytes());
        body.extend_from_slice(b"abc");
        assert_eq!(
            sasl_initial_response(&body).unwrap(),
            ("SCRAM-SHA-256", &b"abc"[..])
        );
        body.truncate(body.len() - 1);
        assert!(sasl_initial_response(&body).is_err(), "truncated data");
        assert!(sasl_initial_response(b"SCRAM").is_err(), "no NUL");
        let mut big = b"M\0".to_vec();
        big.extend_from_slice(&i32::MAX.to_be_bytes());
        assert!(
            sasl_initial_response(&big).is_err(),
            "length beyond the body"
        );
    }
}
