//! The start of a client connection: startup packets before login, and
//! reading whole frames from the client during login.

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::error::ClientError;
use crate::net::Stream;
use crate::protocol::startup::{self, CancelKey, StartupMessage, StartupPacket};
use crate::protocol::{Frame, Item, ProtocolError, Splitter};

/// What a new connection asked for.
#[derive(Debug)]
pub enum Hello {
    /// A login.
    Startup(StartupMessage),
    /// A cancel request.
    Cancel(CancelKey),
}

/// How many SSLRequest/GSSENCRequest refusals a client may get.
const MAX_NEGOTIATIONS: usize = 2;

/// Reads startup packets, refusing TLS and GSSAPI encryption with `N`,
/// until a StartupMessage or CancelRequest arrives.
pub async fn read_hello(stream: &mut Stream, buf: &mut BytesMut) -> Result<Hello, ClientError> {
    for _ in 0..=MAX_NEGOTIATIONS {
        let packet = read_packet(stream, buf).await?;
        match startup::parse(&packet)? {
            StartupPacket::SslRequest | StartupPacket::GssEncRequest => {
                stream.write_all(b"N").await?;
            }
            StartupPacket::Cancel(key) => return Ok(Hello::Cancel(key)),
            StartupPacket::Startup(m) => return Ok(Hello::Startup(m)),
        }
    }
    Err(ProtocolError::Unexpected('\0').into())
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
