//! Encoders for the messages pgtarn itself produces, in both directions.

use bytes::{BufMut, Bytes, BytesMut};

use super::backend::TxStatus;
use super::startup::{CANCEL_REQUEST, CancelKey, PROTOCOL_3_0};

/// Appends a message with `tag` to `buf`, letting `body` write the body,
/// then fills in the length.
pub fn message(buf: &mut BytesMut, tag: u8, body: impl FnOnce(&mut BytesMut)) {
    buf.put_u8(tag);
    let at = buf.len();
    buf.put_u32(0);
    body(buf);
    let len = (buf.len() - at) as u32;
    buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

/// Writes `s` followed by a NUL byte.
pub fn put_cstr(buf: &mut BytesMut, s: &[u8]) {
    buf.put_slice(s);
    buf.put_u8(0);
}

/// Builds a one-message `Bytes`.
fn single(tag: u8, body: impl FnOnce(&mut BytesMut)) -> Bytes {
    let mut buf = BytesMut::new();
    message(&mut buf, tag, body);
    buf.freeze()
}

/// The severity of a message pgtarn generates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The statement failed; the session goes on.
    Error,
    /// The session ends.
    Fatal,
}

/// ErrorResponse with severity, SQLSTATE, message and an optional hint.
pub fn error_response(
    buf: &mut BytesMut,
    severity: Severity,
    code: &str,
    msg: &str,
    hint: Option<&str>,
) {
    let sev: &[u8] = match severity {
        Severity::Error => b"ERROR",
        Severity::Fatal => b"FATAL",
    };
    message(buf, b'E', |b| {
        for field in [b'S', b'V'] {
            b.put_u8(field);
            put_cstr(b, sev);
        }
        b.put_u8(b'C');
        put_cstr(b, code.as_bytes());
        b.put_u8(b'M');
        put_cstr(b, msg.as_bytes());
        if let Some(h) = hint {
            b.put_u8(b'H');
            put_cstr(b, h.as_bytes());
        }
        b.put_u8(0);
    });
}

/// ReadyForQuery.
pub fn ready_for_query(buf: &mut BytesMut, status: TxStatus) {
    message(buf, b'Z', |b| b.put_u8(status.byte()));
}

/// AuthenticationOk.
pub fn auth_ok(buf: &mut BytesMut) {
    message(buf, b'R', |b| b.put_i32(0));
}

/// ParameterStatus.
pub fn parameter_status(buf: &mut BytesMut, name: &str, value: &str) {
    message(buf, b'S', |b| {
        put_cstr(b, name.as_bytes());
        put_cstr(b, value.as_bytes());
    });
}

/// BackendKeyData.
pub fn backend_key_data(buf: &mut BytesMut, key: CancelKey) {
    message(buf, b'K', |b| {
        b.put_i32(key.pid);
        b.put_i32(key.secret);
    });
}

/// NegotiateProtocolVersion: the newest minor version pgtarn speaks (0) and
/// the protocol options (`_pq_.*`) it did not recognise.
pub fn negotiate_protocol_version(buf: &mut BytesMut, unrecognized: &[&str]) {
    message(buf, b'v', |b| {
        b.put_i32(0);
        b.put_i32(unrecognized.len() as i32);
        for o in unrecognized {
            put_cstr(b, o.as_bytes());
        }
    });
}

/// A StartupMessage (protocol 3.0) with the given parameters.
pub fn startup_message(params: &[(&str, &str)]) -> Bytes {
    let mut buf = BytesMut::new();
    buf.put_u32(0);
    buf.put_i32(PROTOCOL_3_0);
    for (k, v) in params {
        put_cstr(&mut buf, k.as_bytes());
        put_cstr(&mut buf, v.as_bytes());
    }
    buf.put_u8(0);
    let len = buf.len() as u32;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    buf.freeze()
}

/// A CancelRequest for `key`.
pub fn cancel_request(key: CancelKey) -> Bytes {
    let mut buf = BytesMut::with_capacity(16);
    buf.put_u32(16);
    buf.put_i32(CANCEL_REQUEST);
    buf.put_i32(key.pid);
    buf.put_i32(key.secret);
    buf.freeze()
}

/// PasswordMessage (cleartext or md5), NUL-terminated.
pub fn password_message(password: &[u8]) -> Bytes {
    single(b'p', |b| put_cstr(b, password))
}

/// SASLInitialResponse.
pub fn sasl_initial_response(mechanism: &str, data: &[u8]) -> Bytes {
    single(b'p', |b| {
        put_cstr(b, mechanism.as_bytes());
        b.put_i32(data.len() as i32);
        b.put_slice(data);
    })
}

/// SASLResponse.
pub fn sasl_response(data: &[u8]) -> Bytes {
    single(b'p', |b| b.put_slice(data))
}

/// A simple Query.
pub fn query(buf: &mut BytesMut, sql: &str) {
    message(buf, b'Q', |b| put_cstr(b, sql.as_bytes()));
}

/// Terminate.
pub fn terminate() -> Bytes {
    Bytes::from_static(b"X\0\0\0\x04")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::backend;
    use crate::protocol::frame::Frame;

    #[test]
    fn encoded_messages_round_trip_through_the_parsers() {
        let mut buf = BytesMut::new();
        error_response(&mut buf, Severity::Fatal, "53300", "too many", Some("wait"));
        let f = Frame::from_raw(buf.split().freeze()).unwrap();
        let e = backend::error_fields(f.body()).unwrap();
        assert_eq!((e.severity.as_str(), e.code.as_str()), ("FATAL", "53300"));
        ready_for_query(&mut buf, TxStatus::Failed);
        let f = Frame::from_raw(buf.split().freeze()).unwrap();
        assert_eq!(
            backend::ready_for_query(f.body()).unwrap(),
            TxStatus::Failed
        );
        let s = startup_message(&[("user", "u")]);
        assert_eq!(crate::protocol::startup::packet_len(&s), Some(Ok(s.len())));
        assert_eq!(cancel_request(CancelKey { pid: 1, secret: 2 }).len(), 16);
    }
}
