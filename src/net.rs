//! Sockets: the [`Stream`] type both sides use, and the [`Outbox`] that
//! batches outgoing frames into one vectored write.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// A client or server connection.
#[derive(Debug)]
pub enum Stream {
    /// Plain TCP.
    Plain(TcpStream),
    /// A client connection over TLS (pgtarn is the TLS server).
    ServerTls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// A connection to Postgres over TLS (pgtarn is the TLS client).
    ClientTls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// Runs `$body` with `$s` bound to the inner stream, pinned.
macro_rules! each {
    ($self:expr, $s:ident => $body:expr) => {
        match $self.get_mut() {
            Stream::Plain($s) => $body,
            Stream::ServerTls($s) => $body,
            Stream::ClientTls($s) => $body,
        }
    };
}

impl Stream {
    /// The TCP socket underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::ServerTls(s) => s.get_ref().0,
            Stream::ClientTls(s) => s.get_ref().0,
        }
    }

    /// Writes all of `data` and flushes it (TLS streams may otherwise hold
    /// the last records back).
    pub async fn send(&mut self, data: &[u8]) -> io::Result<()> {
        self.write_all(data).await?;
        self.flush().await
    }

    /// True for a TLS connection.
    pub fn is_tls(&self) -> bool {
        !matches!(self, Stream::Plain(_))
    }

    /// True if the peer has closed the connection or sent unexpected bytes,
    /// checked without blocking (a `MSG_PEEK`). For idle connections only.
    pub fn has_pending_input_or_eof(&self) -> bool {
        let mut byte = [0u8; 1];
        let mut buf = ReadBuf::new(&mut byte);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        !matches!(self.tcp().poll_peek(&mut cx, &mut buf), Poll::Pending)
    }

    /// Reads into `buf` after making sure it has `room` bytes free, like
    /// `read_buf`. An idle plain connection (empty `buf`) first waits until
    /// the socket is readable with `buf`'s memory lent to a small
    /// per-thread stock of spare buffers, so that a client that sends
    /// nothing holds no read buffer (thousands of idle clients would
    /// otherwise hold `room` bytes each), while a busy one takes a buffer
    /// from the stock instead of allocating one per message. Cancel safe.
    pub async fn read_buf_lazily(&mut self, buf: &mut BytesMut, room: usize) -> io::Result<usize> {
        if buf.is_empty()
            && let Stream::Plain(s) = self
        {
            spare::put(std::mem::take(buf), room);
            s.readable().await?;
            *buf = spare::take();
        }
        if buf.capacity() - buf.len() < room {
            buf.reserve(2 * room);
        }
        self.read_buf(buf).await
    }

    /// Best-effort, non-blocking write of a Terminate on close (plain
    /// connections only: a TLS record cannot be written without awaiting).
    pub fn try_write_now(&self, data: &[u8]) {
        if let Stream::Plain(s) = self {
            let _ = s.try_write(data);
        }
    }
}

/// The per-thread stock of empty read buffers behind
/// [`Stream::read_buf_lazily`].
mod spare {
    use std::cell::RefCell;

    use bytes::BytesMut;

    /// Most buffers kept per thread.
    const STOCK: usize = 256;

    thread_local! {
        static BUFFERS: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
    }

    /// Keeps `buf` (empty) for reuse if it still has `room` bytes free.
    pub fn put(buf: BytesMut, room: usize) {
        if buf.capacity() < room {
            return;
        }
        BUFFERS.with(|b| {
            let mut b = b.borrow_mut();
            if b.len() < STOCK {
                b.push(buf);
            }
        });
    }

    /// A spare buffer, or an empty one (which allocates on first use).
    pub fn take() -> BytesMut {
        BUFFERS.with(|b| b.borrow_mut().pop()).unwrap_or_default()
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        each!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        each!(self, s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        each!(self, s => Pin::new(s).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::ServerTls(s) => s.is_write_vectored(),
            Stream::ClientTls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, s => Pin::new(s).poll_shutdown(cx))
    }
}

/// Frames waiting to be written to one peer, sent with vectored writes so
/// that a batch costs one system call and no copy.
#[derive(Debug, Default)]
pub struct Outbox {
    segments: Vec<Bytes>,
}

/// Most segments handed to one `writev`.
const IOV_BATCH: usize = 64;

impl Outbox {
    /// Queues bytes for the next [`Outbox::flush`].
    pub fn push(&mut self, bytes: Bytes) {
        if !bytes.is_empty() {
            self.segments.push(bytes);
        }
    }

    /// Takes everything queued, leaving the outbox empty.
    pub fn take(&mut self) -> Vec<Bytes> {
        std::mem::take(&mut self.segments)
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    /// Writes everything queued to `w` and flushes it, then empties the
    /// outbox.
    pub async fn flush<W: AsyncWrite + Unpin>(&mut self, w: &mut W) -> io::Result<()> {
        let mut first = 0;
        let mut offset = 0;
        while first < self.segments.len() {
            let segments = &self.segments;
            let mut n =
                std::future::poll_fn(|cx| poll_write_from(segments, first, offset, &mut *w, cx))
                    .await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            while n > 0 && first < self.segments.len() {
                let left = self.segments[first].len() - offset;
                if n >= left {
                    n -= left;
                    first += 1;
                    offset = 0;
                } else {
                    offset += n;
                    n = 0;
                }
            }
        }
        self.segments.clear();
        // TLS streams may hold encrypted records back until flushed (a
        // no-op for plain TCP).
        w.flush().await
    }
}

/// Writes `segments` from byte `offset` of segment `first` on, up to
/// [`IOV_BATCH`] of them at once. The `iovec` array lives only during the
/// poll, so it is no part of any future's state. One segment (the usual
/// reply or query) goes out with a plain `send`, which costs the kernel less
/// than `writev`.
fn poll_write_from<W: AsyncWrite + Unpin>(
    segments: &[Bytes],
    first: usize,
    offset: usize,
    w: &mut W,
    cx: &mut std::task::Context<'_>,
) -> std::task::Poll<io::Result<usize>> {
    let end = segments.len().min(first + IOV_BATCH);
    let head = &segments[first][offset..];
    let w = std::pin::Pin::new(w);
    if end - first == 1 {
        return w.poll_write(cx, head);
    }
    let mut iov = [IoSlice::new(&[]); IOV_BATCH];
    iov[0] = IoSlice::new(head);
    for (slot, seg) in iov[1..].iter_mut().zip(&segments[first + 1..end]) {
        *slot = IoSlice::new(seg);
    }
    w.poll_write_vectored(cx, &iov[..end - first])
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn outbox_writes_every_segment_in_order() {
        let (mut a, mut b) = tokio::io::duplex(7);
        let mut out = Outbox::default();
        let mut expected = Vec::new();
        for i in 0..200u8 {
            let seg = vec![i; usize::from(i % 5)];
            expected.extend_from_slice(&seg);
            out.push(Bytes::from(seg));
        }
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            b.read_to_end(&mut got).await.unwrap();
            got
        });
        out.flush(&mut a).await.unwrap();
        drop(a);
        assert_eq!(reader.await.unwrap(), expected);
        assert!(out.is_empty());
    }
}
