//! The start of a client connection: startup packets before login, and
//! reading whole frames from the client during login.

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncReadExt;

use super::error::ClientError;
use crate::net::Stream;
use crate::protocol::startup::{self, CancelKey, StartupMessage, StartupPacket};
use crate::protocol::{Frame, Item, ProtocolError, Splitter};
use crate::tls::ServerTls;

/// What a new connection asked for.
#[derive(Debug)]
pub enum Hello {
    /// A login.
    Startup(StartupMessage),
    /// A cancel request.
    Cancel(CancelKey),
}

/// How many SSLRequest/GSSENCRequest answers a client may get.
const MAX_NEGOTIATIONS: usize = 2;

/// A failed start: the error, and the stream if it can still be told.
pub type HelloError = (Option<Stream>, ClientError);

/// Reads startup packets until a StartupMessage or CancelRequest arrives.
/// SSLRequest gets `S` and a TLS handshake when `tls` is configured (`N`
/// otherwise); so does a client that starts TLS directly (PostgreSQL 17
/// `sslnegotiation=direct`). GSSENCRequest gets `N`. `tls` is `None` on
/// a Unix-domain socket, where Postgres never offers TLS either.
pub async fn read_hello(
    mut stream: Stream,
    buf: &mut BytesMut,
    tls: Option<&ServerTls>,
) -> Result<(Stream, Hello), HelloError> {
    if let Some(tls) = tls
        && starts_with_tls_record(&stream).await
    {
        stream = upgrade(stream, tls).await?;
    }
    for _ in 0..=MAX_NEGOTIATIONS {
        let packet = match read_packet(&mut stream, buf).await {
            Ok(p) => p,
            Err(e) => return Err((Some(stream), e)),
        };
        let parsed = match startup::parse(&packet) {
            Ok(p) => p,
            Err(e) => return Err((Some(stream), e.into())),
        };
        match (parsed, tls) {
            (StartupPacket::SslRequest, Some(tls)) if !stream.is_tls() => {
                if !buf.is_empty() {
                    let e =
                        ProtocolError::Unsupported("data received before the TLS handshake".into());
                    return Err((None, e.into()));
                }
                if let Err(e) = stream.send(b"S").await {
                    return Err((None, e.into()));
                }
                stream = upgrade(stream, tls).await?;
            }
            (StartupPacket::SslRequest | StartupPacket::GssEncRequest, _) => {
                if let Err(e) = stream.send(b"N").await {
                    return Err((None, e.into()));
                }
            }
            (StartupPacket::Cancel(key), _) => return Ok((stream, Hello::Cancel(key))),
            (StartupPacket::Startup(m), _) => return Ok((stream, Hello::Startup(m))),
        }
    }
    Err((Some(stream), ProtocolError::Unexpected('\0').into()))
}

/// True if the client's first byte is a TLS handshake record (0x16).
async fn starts_with_tls_record(stream: &Stream) -> bool {
    let mut first = [0u8; 1];
    let Some(tcp) = stream.tcp() else {
        return false;
    };
    matches!(tcp.peek(&mut first).await, Ok(1) if first[0] == 0x16)
}

/// The TLS handshake on a plain client connection.
async fn upgrade(stream: Stream, tls: &ServerTls) -> Result<Stream, HelloError> {
    let Stream::Plain(tcp) = stream else {
        return Ok(stream);
    };
    match tls.acceptor.accept(tcp).await {
        Ok(s) => Ok(Stream::ServerTls(Box::new(s))),
        Err(e) => Err((None, ClientError::Tls(e.to_string()))),
    }
}

async fn read_packet(stream: &mut Stream, buf: &mut BytesMut) -> Result<Bytes, ClientError> {
    loop {
        if let Some(len) = startup::packet_len(buf) {
            let len = len?;
            if buf.len() >= len {
                return Ok(buf.split_to(len).freeze());
            }
            buf.reserve(len - buf.len());
        } else {
            buf.reserve(64);
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
    }
}

/// Reads one whole frame from the client (login messages only).
pub async fn read_frame(
    stream: &mut Stream,
    buf: &mut BytesMut,
    splitter: &mut Splitter,
) -> Result<Frame, ClientError> {
    loop {
        match splitter.next(buf)? {
            Some(Item::Frame(f)) => return Ok(f),
            Some(Item::Chunk(_)) => return Err(ProtocolError::Unexpected('d').into()),
            None => {}
        }
        buf.reserve(1024);
        if stream.read_buf(buf).await? == 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
    }
}
