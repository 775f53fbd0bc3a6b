//! Startup packets: the untagged messages a client sends first
//! (StartupMessage, SSLRequest, GSSENCRequest, CancelRequest).

use super::ProtocolError;
use super::reader::Reader;

/// Postgres' own limit for a startup packet (MAX_STARTUP_PACKET_LENGTH).
pub const MAX_STARTUP_LEN: usize = 10_000;
/// Protocol version 3.0.
pub const PROTOCOL_3_0: i32 = 3 << 16;
/// SSLRequest code.
pub const SSL_REQUEST: i32 = 80_877_103;
/// GSSENCRequest code.
pub const GSSENC_REQUEST: i32 = 80_877_104;
/// CancelRequest code.
pub const CANCEL_REQUEST: i32 = 80_877_102;

/// A parsed startup packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    /// The client asks for TLS.
    SslRequest,
    /// The client asks for GSSAPI encryption.
    GssEncRequest,
    /// A request to cancel the query running for the given key.
    Cancel(CancelKey),
    /// A StartupMessage.
    Startup(StartupMessage),
}

/// A backend key: process id and secret, as in BackendKeyData.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CancelKey {
    /// The process id part.
    pub pid: i32,
    /// The secret part.
    pub secret: i32,
}

/// A StartupMessage: protocol version and parameters, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartupMessage {
    /// Requested minor protocol version (major is always 3).
    pub minor_version: u16,
    /// The parameters' names and values, back to back.
    text: String,
    /// Where each parameter is in `text`: name start, name end (= value
    /// start), value end. Two allocations per login instead of two per
    /// parameter, and lookups that only slice.
    spans: Vec<[u16; 3]>,
}

impl StartupMessage {
    /// The parameters as sent (`user`, `database`, `options`, GUCs,
    /// `_pq_.*`), in order.
    pub fn params(&self) -> impl Iterator<Item = (&str, &str)> + Clone {
        self.spans.iter().map(|&[a, b, c]| {
            let (a, b, c) = (usize::from(a), usize::from(b), usize::from(c));
            (&self.text[a..b], &self.text[b..c])
        })
    }

    /// The value of a parameter, if the client sent it.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params().find(|(k, _)| *k == name).map(|(_, v)| v)
    }

    /// The user, if the client named one (an empty name counts as none).
    pub fn user(&self) -> Option<&str> {
        self.param("user").filter(|u| !u.is_empty())
    }

    /// The database, which defaults to the user's name (as in Postgres).
    pub fn database(&self) -> Option<&str> {
        self.param("database")
            .filter(|d| !d.is_empty())
            .or(self.user())
    }
}

/// The total length of the startup packet at the front of `buf`, once its
/// length field is readable; validated against [`MAX_STARTUP_LEN`].
pub fn packet_len(buf: &[u8]) -> Option<Result<usize, ProtocolError>> {
    let head = buf.get(..4)?;
    let len = i32::from_be_bytes([head[0], head[1], head[2], head[3]]);
    Some(match usize::try_from(len) {
        Ok(n) if (8..=MAX_STARTUP_LEN).contains(&n) => Ok(n),
        _ => Err(ProtocolError::InvalidLength {
            tag: '\0',
            len: i64::from(len),
        }),
    })
}

/// Parses a whole startup packet (length field included).
pub fn parse(packet: &[u8]) -> Result<StartupPacket, ProtocolError> {
    let mut r = Reader::new(packet, "startup packet");
    let _len = r.i32()?;
    let code = r.i32()?;
    match code {
        SSL_REQUEST => Ok(StartupPacket::SslRequest),
        GSSENC_REQUEST => Ok(StartupPacket::GssEncRequest),
        CANCEL_REQUEST => {
            let pid = r.i32()?;
            let secret = r.i32()?;
            Ok(StartupPacket::Cancel(CancelKey { pid, secret }))
        }
        _ if code >> 16 == 3 => parse_params(r, code as u16).map(StartupPacket::Startup),
        _ => Err(ProtocolError::Unsupported(format!(
            "unsupported frontend protocol {}.{}: server supports 3.0",
            code >> 16,
            code & 0xffff
        ))),
    }
}

fn parse_params(mut r: Reader<'_>, minor_version: u16) -> Result<StartupMessage, ProtocolError> {
    let mut text = String::with_capacity(r.remaining().len());
    let mut spans = Vec::new();
    // Offsets fit in u16: a startup packet is at most MAX_STARTUP_LEN bytes
    // (a longer one given to `parse` is refused here).
    let offset = |text: &String| {
        u16::try_from(text.len()).map_err(|_| ProtocolError::Malformed("startup packet"))
    };
    loop {
        let key = r.cstr()?;
        if key.is_empty() {
            break;
        }
        let value = r.cstr()?;
        let start = offset(&text)?;
        text.push_str(key);
        let middle = offset(&text)?;
        text.push_str(value);
        spans.push([start, middle, offset(&text)?]);
    }
    if !r.is_empty() {
        return Err(ProtocolError::Malformed("startup packet"));
    }
    Ok(StartupMessage {
        minor_version,
        text,
        spans,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(code: i32, rest: &[u8]) -> Vec<u8> {
        let mut v = ((rest.len() + 8) as i32).to_be_bytes().to_vec();
        v.extend_from_slice(&code.to_be_bytes());
        v.extend_from_slice(rest);
        v
    }

    #[test]
    fn parses_each_kind() {
        assert_eq!(
            parse(&packet(SSL_REQUEST, b"")).unwrap(),
            StartupPacket::SslRequest
        );
        assert_eq!(
            parse(&packet(GSSENC_REQUEST, b"")).unwrap(),
            StartupPacket::GssEncRequest
        );
        let mut key = 7i32.to_be_bytes().to_vec();
        key.extend_from_slice(&(-9i32).to_be_bytes());
        assert_eq!(
            parse(&packet(CANCEL_REQUEST, &key)).unwrap(),
            StartupPacket::Cancel(CancelKey { pid: 7, secret: -9 })
        );
        let p = parse(&packet(PROTOCOL_3_0, b"user\0bob\0database\0app\0\0")).unwrap();
        let StartupPacket::Startup(m) = p else {
            panic!()
        };
        assert_eq!(
            (m.param("user"), m.param("database")),
            (Some("bob"), Some("app"))
        );
    }

    #[test]
    fn parameters_come_back_in_order_with_empty_values() {
        let body = b"user\0bob\0application_name\0\0database\0app\0\0";
        let Ok(StartupPacket::Startup(m)) = parse(&packet(PROTOCOL_3_0, body)) else {
            panic!()
        };
        let params: Vec<_> = m.params().collect();
        assert_eq!(
            params,
            [
                ("user", "bob"),
                ("application_name", ""),
                ("database", "app")
            ]
        );
        assert_eq!(m.param("application_name"), Some(""));
        assert_eq!(m.param("options"), None);
        assert_eq!((m.user(), m.database()), (Some("bob"), Some("app")));
        let Ok(StartupPacket::Startup(m)) =
            parse(&packet(PROTOCOL_3_0, b"user\0bob\0database\0\0\0"))
        else {
            panic!()
        };
        assert_eq!(m.database(), Some("bob"), "an empty database is the user's");
        let Ok(StartupPacket::Startup(m)) = parse(&packet(PROTOCOL_3_0, b"user\0\0\0")) else {
            panic!()
        };
        assert_eq!((m.user(), m.database()), (None, None));
        // Longer than any startup packet pgtarn reads: refused, not sliced.
        let mut huge = Vec::new();
        for i in 0..9_000 {
            huge.extend_from_slice(format!("k{i}\0value\0").as_bytes());
        }
        huge.push(0);
        assert!(parse(&packet(PROTOCOL_3_0, &huge)).is_err());
    }

    #[test]
    fn rejects_malformed_packets() {
        assert!(
            parse(&packet(PROTOCOL_3_0, b"user\0bob\0")).is_err(),
            "no final NUL"
        );
        assert!(
            parse(&packet(PROTOCOL_3_0, b"user\0\xff\0\0")).is_err(),
            "not UTF-8"
        );
        assert!(
            parse(&packet(PROTOCOL_3_0, b"user\0bob\0\0junk")).is_err(),
            "trailing bytes"
        );
        assert!(parse(&packet(2 << 16, b"")).is_err(), "protocol 2");
        assert!(
            parse(&packet(CANCEL_REQUEST, b"\0\0")).is_err(),
            "short cancel"
        );
        for len in [0i32, 7, -1, 10_001, i32::MAX] {
            assert!(packet_len(&len.to_be_bytes()).unwrap().is_err(), "{len}");
        }
        assert_eq!(packet_len(&8i32.to_be_bytes()), Some(Ok(8)));
        assert_eq!(packet_len(&[0, 0]), None);
    }
}
