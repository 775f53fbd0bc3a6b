//! Client authentication: trust, or SCRAM-SHA-256 against the user's
//! configured password. An unknown user goes through the same exchange
//! against a throwaway secret and gets the same error as a wrong password,
//! so the answer does not reveal which users exist.

use bytes::{BufMut, BytesMut};
use tokio::io::AsyncWriteExt;

use super::error::ClientError;
use super::handshake::read_frame;
use crate::auth::scram::{ChannelBinding, ScramSecret, ScramServer};
use crate::config::AuthType;
use crate::net::Stream;
use crate::protocol::reader::Reader;
use crate::protocol::{ProtocolError, Splitter, encode};

/// Largest authentication message accepted from a client, bytes.
const MAX_AUTH_MESSAGE: usize = 8192;

/// What the client's credentials are checked against.
#[derive(Debug, Clone, Copy)]
pub struct Credentials<'a> {
    /// The user's secret, `None` for an unknown user.
    pub secret: Option<&'a ScramSecret>,
    /// Per-process nonce that salts mock secrets for unknown users.
    pub mock_nonce: &'a [u8; 32],
}

/// Authenticates the client as `user`, ending with AuthenticationOk.
pub async fn authenticate(
    stream: &mut Stream,
    buf: &mut BytesMut,
    user: &str,
    creds: Credentials<'_>,
    auth_type: AuthType,
) -> Result<(), ClientError> {
    let secret = creds.secret;
    if auth_type == AuthType::ScramSha256 {
        scram(stream, buf, user, creds).await?;
    } else if secret.is_none() {
        return Err(ClientError::AuthFailed(user.to_owned()));
    }
    let mut out = BytesMut::new();
    encode::auth_ok(&mut out);
    stream.write_all(&out).await?;
    Ok(())
}

async fn scram(
    stream: &mut Stream,
    buf: &mut BytesMut,
    user: &str,
    creds: Credentials<'_>,
) -> Result<(), ClientError> {
    let failed = || ClientError::AuthFailed(user.to_owned());
    let known = creds.secret.is_some();
    let secret = match creds.secret {
        Some(s) => s.clone(),
        None => ScramSecret::mock(user, creds.mock_nonce),
    };
    let mut server = ScramServer::new(secret, ChannelBinding::None);
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
    let first = server.client_first(mechanism, data).map_err(|_| failed())?;
    send_auth(stream, 11, |b| b.put_slice(&first)).await?;
    let f = password_frame(stream, buf, &mut splitter).await?;
    let last = server.client_final(f.body()).map_err(|_| failed())?;
    if !known {
        return Err(failed());
    }
    send_auth(stream, 12, |b| b.put_slice(&last)).await
}

async fn send_auth(
    stream: &mut Stream,
    code: i32,
    body: impl FnOnce(&mut BytesMut),
) -> Result<(), ClientError> {
    let mut out = BytesMut::new();
    encode::message(&mut out, b'R', |b| {
        b.put_i32(code);
        body(b);
    });
    stream.write_all(&out).await?;
    Ok(())
}

async fn password_frame(
    stream: &mut Stream,
    buf: &mut BytesMut,
    splitter: &mut Splitter,
) -> Result<crate::protocol::Frame, ClientError> {
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
