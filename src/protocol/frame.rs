//! Splitting a byte stream into protocol frames without copying.
//!
//! A regular message is a one-byte tag followed by a big-endian `u32` length
//! that counts itself but not the tag. [`Splitter::next`] checks the length
//! *before* reserving memory, then hands out the frame as a [`Bytes`] slice of
//! the read buffer (no copy). Large pass-through messages (result rows, COPY
//! data) are not buffered whole: once the header is known they are handed out
//! as [`Item::Chunk`]s as the bytes arrive, so memory stays bounded however
//! large a row is.

use bytes::{Bytes, BytesMut};

use super::ProtocolError;

/// Bytes in a message header: tag + length.
pub const HEADER_LEN: usize = 5;

/// Messages larger than this may be streamed (if their tag allows it)
/// instead of being buffered whole.
pub const STREAM_THRESHOLD: usize = 64 * 1024;

/// Postgres' own ceiling for any message (1 GiB).
pub const HARD_MAX_LEN: usize = 0x3fff_ffff;

/// One whole protocol message: tag, length and body, as received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    raw: Bytes,
}

impl Frame {
    /// Wraps an encoded message. Returns `None` unless `raw` is a complete,
    /// consistent message (header present, length field matching).
    pub fn from_raw(raw: Bytes) -> Option<Frame> {
        let (_, total) = peek_header(&raw)?;
        (total == raw.len()).then_some(Frame { raw })
    }

    /// The message tag (`b'Q'`, `b'Z'`, ...).
    pub fn tag(&self) -> u8 {
        self.raw[0]
    }

    /// The message body, after the length field.
    pub fn body(&self) -> &[u8] {
        &self.raw[HEADER_LEN..]
    }

    /// The whole encoded message.
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }

    /// The whole encoded message, consumed.
    pub fn into_raw(self) -> Bytes {
        self.raw
    }
}

/// What the splitter hands out.
#[derive(Debug, PartialEq, Eq)]
pub enum Item {
    /// A complete message.
    Frame(Frame),
    /// A piece of a large pass-through message: forward it as it is.
    Chunk(Bytes),
}

/// Reads a header: the tag and the total frame size (tag included), or
/// `None` when fewer than five bytes are available. Does not validate.
fn peek_header(buf: &[u8]) -> Option<(u8, usize)> {
    let head = buf.get(..HEADER_LEN)?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]);
    Some((head[0], len as usize + 1))
}

/// Splits one direction of a connection into [`Item`]s.
#[derive(Debug, Clone)]
pub struct Splitter {
    max_len: usize,
    streamable: fn(u8) -> bool,
    /// Bytes of a streamed message still to come.
    remaining: usize,
}

impl Splitter {
    /// A splitter that buffers messages of up to `max_len` bytes and streams
    /// larger messages whose tag satisfies `streamable`.
    pub fn new(max_len: usize, streamable: fn(u8) -> bool) -> Self {
        Splitter {
            max_len,
            streamable,
            remaining: 0,
        }
    }

    /// True while in the middle of a streamed message.
    pub fn in_stream(&self) -> bool {
        self.remaining > 0
    }

    /// Takes the next item off the front of `buf`, or `Ok(None)` when more
    /// bytes are needed (after reserving room for them, bounded by the
    /// limit). Errors are final: the stream is out of sync.
    pub fn next(&mut self, buf: &mut BytesMut) -> Result<Option<Item>, ProtocolError> {
        if self.remaining > 0 {
            if buf.is_empty() {
                return Ok(None);
            }
            let n = self.remaining.min(buf.len());
            self.remaining -= n;
            return Ok(Some(Item::Chunk(buf.split_to(n).freeze())));
        }
        let Some((tag, total)) = peek_header(buf) else {
            return Ok(None);
        };
        let len = total - 1;
        if !(4..=HARD_MAX_LEN).contains(&len) {
            return Err(ProtocolError::InvalidLength {
                tag: tag as char,
                len: i64::from(len as u32 as i32),
            });
        }
        // Large pass-through messages are streamed, and so is any one
        // over `max_len` that may be (even under the threshold).
        let stream = (total > STREAM_THRESHOLD || len > self.max_len) && (self.streamable)(tag);
        if !stream && len > self.max_len {
            return Err(ProtocolError::TooLarge {
                tag: tag as char,
                len,
                max: self.max_len,
            });
        }
        if buf.len() >= total {
            let raw = buf.split_to(total).freeze();
            return Ok(Some(Item::Frame(Frame { raw })));
        }
        if stream {
            self.remaining = total - buf.len();
            return Ok(Some(Item::Chunk(buf.split_to(buf.len()).freeze())));
        }
        buf.reserve(total - buf.len());
        Ok(None)
    }
}

/// Server messages pgtarn never needs to inspect and may stream when large:
/// DataRow, CopyData, NoticeResponse, NotificationResponse, FunctionCallResponse.
pub fn server_streamable(tag: u8) -> bool {
    matches!(tag, b'D' | b'd' | b'N' | b'A' | b'V')
}

/// Client messages that may be streamed when large: CopyData.
pub fn client_streamable(tag: u8) -> bool {
    tag == b'd'
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    fn split_all(s: &mut Splitter, buf: &mut BytesMut) -> Vec<Item> {
        let mut out = Vec::new();
        while let Some(item) = s.next(buf).unwrap() {
            out.push(item);
        }
        out
    }

    #[test]
    fn splits_whole_frames_and_waits_for_partial_ones() {
        let mut bytes = msg(b'Q', b"select 1\0");
        bytes.extend(msg(b'S', b""));
        let partial = msg(b'X', b"");
        bytes.extend_from_slice(&partial[..3]);
        let mut buf = BytesMut::from(&bytes[..]);
        let mut s = Splitter::new(1024, client_streamable);
        let items = split_all(&mut s, &mut buf);
        assert_eq!(items.len(), 2);
        let Item::Frame(f) = &items[0] else { panic!() };
        assert_eq!((f.tag(), f.body()), (b'Q', &b"select 1\0"[..]));
        assert_eq!(buf.len(), 3, "the partial header stays buffered");
        buf.extend_from_slice(&partial[3..]);
        let Some(Item::Frame(f)) = s.next(&mut buf).unwrap() else {
            panic!()
        };
        assert_eq!(f.tag(), b'X');
    }

    #[test]
    fn rejects_bad_lengths_before_allocating() {
        for len in [0u32, 3, 0x7fff_ffff, 0xffff_fff0] {
            let mut buf = BytesMut::from(&[b'Q'][..]);
            buf.extend_from_slice(&len.to_be_bytes());
            let mut s = Splitter::new(1024, client_streamable);
            let err = s.next(&mut buf).unwrap_err();
            assert!(
                matches!(err, ProtocolError::InvalidLength { .. }),
                "{len}: {err}"
            );
            assert!(buf.capacity() < 1 << 20, "no allocation for {len}");
        }
        let mut buf = BytesMut::from(&msg(b'Q', &[b'a'; 2000])[..]);
        let err = Splitter::new(1024, client_streamable)
            .next(&mut buf)
            .unwrap_err();
        assert!(matches!(
            err,
            ProtocolError::TooLarge {
                len: 2004,
                max: 1024,
                ..
            }
        ));
    }

    #[test]
    fn streams_large_passthrough_messages_in_chunks() {
        let body = vec![7u8; STREAM_THRESHOLD * 2];
        let whole = msg(b'D', &body);
        let mut s = Splitter::new(1024, server_streamable);
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for piece in whole.chunks(10_000) {
            buf.extend_from_slice(piece);
            for item in split_all(&mut s, &mut buf) {
                let Item::Chunk(c) = item else {
                    panic!("expected chunks")
                };
                got.extend_from_slice(&c);
            }
        }
        assert_eq!(got, whole);
        assert!(!s.in_stream());
        buf.extend_from_slice(&msg(b'Z', b"I"));
        assert!(matches!(s.next(&mut buf).unwrap(), Some(Item::Frame(_))));
    }

    #[test]
    fn streams_messages_over_a_small_max_len_below_the_threshold() {
        let whole = msg(b'D', &[1u8; 5000]);
        let mut s = Splitter::new(1024, server_streamable);
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for piece in whole.chunks(700) {
            buf.extend_from_slice(piece);
            for item in split_all(&mut s, &mut buf) {
                match item {
                    Item::Chunk(c) => got.extend_from_slice(&c),
                    Item::Frame(f) => got.extend_from_slice(f.raw()),
                }
            }
        }
        assert_eq!(got, whole, "a 5000-byte DataRow passes with max_len 1024");
        let mut buf = BytesMut::from(&msg(b'T', &[1u8; 5000])[..]);
        assert!(
            s.next(&mut buf).is_err(),
            "RowDescription must be buffered whole"
        );
    }

    #[test]
    fn frame_from_raw_checks_consistency() {
        assert!(Frame::from_raw(Bytes::from(msg(b'Z', b"I"))).is_some());
        assert!(Frame::from_raw(Bytes::from_static(b"Z\0\0\0\x09I")).is_none());
        assert!(Frame::from_raw(Bytes::from_static(b"Z\0")).is_none());
    }
}
