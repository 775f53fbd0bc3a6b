//! Sockets: the [`Stream`] type both sides use, and the [`Outbox`] that
//! batches outgoing frames into one vectored write.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

/// TCP keepalive settings (`tcp_keepalive` and friends); zeros leave the
/// OS default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Keepalive {
    /// Keepalive on at all.
    pub enabled: bool,
    /// Idle time before the first probe.
    pub idle: std::time::Duration,
    /// Time between probes.
    pub interval: std::time::Duration,
    /// Unanswered probes before the connection is dropped.
    pub count: u32,
}

impl Keepalive {
    /// Sets these options on `socket` (a listening socket passes them on
    /// to the connections it accepts, on Linux).
    pub fn apply(&self, socket: &impl std::os::fd::AsFd) -> io::Result<()> {
        let socket = socket2::SockRef::from(socket);
        if !self.enabled {
            return socket.set_keepalive(false);
        }
        let mut params = socket2::TcpKeepalive::new();
        if !self.idle.is_zero() {
            params = params.with_time(self.idle);
        }
        if !self.interval.is_zero() {
            params = params.with_interval(self.interval);
        }
        if self.count > 0 {
            params = params.with_retries(self.count);
        }
        socket.set_tcp_keepalive(&params)
    }
}

/// Where a client connected from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// A TCP client's address.
    Tcp(std::net::SocketAddr),
    /// A client on pgtarn's Unix-domain socket.
    Unix,
}

impl Peer {
    /// The TCP address, if any.
    pub fn addr(self) -> Option<std::net::SocketAddr> {
        match self {
            Peer::Tcp(a) => Some(a),
            Peer::Unix => None,
        }
    }
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Peer::Tcp(a) => a.fmt(f),
            Peer::Unix => f.write_str("unix socket"),
        }
    }
}

/// A client or server connection.
#[derive(Debug)]
pub enum Stream {
    /// Plain TCP.
    Plain(TcpStream),
    /// A client connection over TLS (pgtarn is the TLS server).
    ServerTls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// A connection to Postgres over TLS (pgtarn is the TLS client).
    ClientTls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// A connection over a Unix-domain socket (never TLS): a client on
    /// pgtarn's, or pgtarn on Postgres'.
    Unix(UnixStream),
}

/// Runs `$body` with `$s` bound to the inner stream, pinned.
macro_rules! each {
    ($self:expr, $s:ident => $body:expr) => {
        match $self.get_mut() {
            Stream::Plain($s) => $body,
            Stream::ServerTls($s) => $body,
            Stream::ClientTls($s) => $body,
            Stream::Unix($s) => $body,
        }
    };
}

impl Stream {
    /// The TCP socket underneath; `None` on a Unix-domain socket.
    pub fn tcp(&self) -> Option<&TcpStream> {
        match self {
            Stream::Plain(s) => Some(s),
            Stream::ServerTls(s) => Some(s.get_ref().0),
            Stream::ClientTls(s) => Some(s.get_ref().0),
            Stream::Unix(_) => None,
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
        !matches!(self, Stream::Plain(_) | Stream::Unix(_))
    }

    /// True if the peer has closed the connection or sent unexpected bytes,
    /// checked without blocking (a `MSG_PEEK`). For idle connections only.
    pub fn has_pending_input_or_eof(&self) -> bool {
        let mut byte = [0u8; 1];
        let mut buf = ReadBuf::new(&mut byte);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        if let Stream::Unix(s) = self {
            // Non-blocking socket: nothing to read is WouldBlock.
            let mut byte = [std::mem::MaybeUninit::uninit()];
            let peeked = socket2::SockRef::from(s).peek(&mut byte);
            return !matches!(peeked, Err(e) if e.kind() == io::ErrorKind::WouldBlock);
        }
        match self.tcp() {
            Some(tcp) => !matches!(tcp.poll_peek(&mut cx, &mut buf), Poll::Pending),
            None => false,
        }
    }

    /// Reads into `buf` after making sure it has `room` bytes free, like
    /// `read_buf`. An idle plain connection (empty `buf`) first waits until
    /// the socket is readable with `buf`'s memory lent to a small
    /// per-thread stock of spare buffers, so that a client that sends
    /// nothing holds no read buffer (thousands of idle clients would
    /// otherwise hold `room` bytes each), while a busy one takes a buffer
    /// from the stock instead of allocating one per message. Cancel safe.
    pub async fn read_buf_lazily(&mut self, buf: &mut BytesMut, room: usize) -> io::Result<usize> {
        if buf.is_empty() && matches!(self, Stream::Plain(_) | Stream::Unix(_)) {
            spare::put(std::mem::take(buf), room);
            match self {
                Stream::Plain(s) => s.readable().await?,
                Stream::Unix(s) => s.readable().await?,
                _ => {}
            }
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
        match self {
            Stream::Plain(s) => drop(s.try_write(data)),
            Stream::Unix(s) => drop(s.try_write(data)),
            _ => {}
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
            Stream::Unix(s) => s.is_write_vectored(),
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
    /// Progress of a flush that could not finish at once: the first
    /// segment not wholly written, and the bytes of it already written.
    first: usize,
    offset: usize,
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

    /// Takes everything queued and not yet written, leaving the outbox
    /// empty.
    pub fn take(&mut self) -> Vec<Bytes> {
        let mut segments = std::mem::take(&mut self.segments);
        segments.drain(..self.first.min(segments.len()));
        if let Some(head) = segments.first_mut() {
            let _ = head.split_to(self.offset.min(head.len()));
        }
        (self.first, self.offset) = (0, 0);
        segments
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    /// Writes everything queued to `w` and flushes it, then empties the
    /// outbox.
    pub async fn flush<W: AsyncWrite + Unpin>(&mut self, w: &mut W) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_flush(w, cx)).await
    }

    /// [`Outbox::flush`] as a poll: writes what `w` takes now and
    /// remembers how far it got, so that the caller may do something else
    /// (read the same peer) while `w` is full.
    pub fn poll_flush<W: AsyncWrite + Unpin>(
        &mut self,
        w: &mut W,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        while self.first < self.segments.len() {
            let n = match poll_write_from(&self.segments, self.first, self.offset, &mut *w, cx) {
                std::task::Poll::Ready(Ok(0)) => Err(io::ErrorKind::WriteZero.into()),
                std::task::Poll::Ready(r) => r,
                std::task::Poll::Pending => return std::task::Poll::Pending,
            };
            match n {
                Ok(n) => self.advance(n),
                Err(e) => {
                    self.clear();
                    return std::task::Poll::Ready(Err(e));
                }
            }
        }
        // TLS streams may hold encrypted records back until flushed (a
        // no-op for plain TCP).
        let flushed = std::task::ready!(std::pin::Pin::new(&mut *w).poll_flush(cx));
        self.clear();
        std::task::Poll::Ready(flushed)
    }

    /// Counts `n` more bytes as written.
    fn advance(&mut self, mut n: usize) {
        while n > 0 && self.first < self.segments.len() {
            let left = self.segments[self.first].len() - self.offset;
            if n >= left {
                n -= left;
                self.first += 1;
                self.offset = 0;
            } else {
                self.offset += n;
                n = 0;
            }
        }
    }

    fn clear(&mut self) {
        self.segments.clear();
        (self.first, self.offset) = (0, 0);
    }
}

/// Writes `segments` from byte `offset` of segment `first` on, up to
/// [`IOV_BATCH`] of them at once. A batch of at most [`COALESCE_MAX`] bytes
/// (a reply's RowDescription, DataRow, CommandComplete and ReadyForQuery,
/// or a pipeline of small messages) is copied into one buffer and goes out
/// with a plain `send`, which costs the kernel less than a `writev` of the
/// same bytes in several pieces; larger batches are written vectored (their
/// `iovec` array lives only during the poll, so it is no part of any
/// future's state).
fn poll_write_from<W: AsyncWrite + Unpin>(
    segments: &[Bytes],
    first: usize,
    offset: usize,
    w: &mut W,
    cx: &mut std::task::Context<'_>,
) -> std::task::Poll<io::Result<usize>> {
    let end = segments.len().min(first + IOV_BATCH);
    let head = &segments[first][offset..];
    let rest = &segments[first + 1..end];
    let w = std::pin::Pin::new(w);
    if rest.is_empty() {
        return w.poll_write(cx, head);
    }
    let total = head.len() + rest.iter().map(Bytes::len).sum::<usize>();
    if total <= COALESCE_MAX {
        return COALESCED.with_borrow_mut(|buf| {
            buf.clear();
            buf.extend_from_slice(head);
            rest.iter().for_each(|seg| buf.extend_from_slice(seg));
            w.poll_write(cx, buf)
        });
    }
    let mut iov = [IoSlice::new(&[]); IOV_BATCH];
    iov[0] = IoSlice::new(head);
    for (slot, seg) in iov[1..].iter_mut().zip(rest) {
        *slot = IoSlice::new(seg);
    }
    w.poll_write_vectored(cx, &iov[..=rest.len()])
}

/// Most bytes [`poll_write_from`] copies into one buffer rather than
/// writing them vectored.
const COALESCE_MAX: usize = 8 * 1024;

thread_local! {
    /// The buffer small batches are copied into (per thread, reused: it is
    /// only borrowed within one poll).
    static COALESCED: std::cell::RefCell<Vec<u8>> =
        std::cell::RefCell::new(Vec::with_capacity(COALESCE_MAX));
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

    /// Records how each write arrived: plain (`false`) or vectored (`true`),
    /// with its length; accepts at most `limit` bytes per call.
    #[derive(Default)]
    struct Recorder {
        calls: Vec<(bool, usize)>,
        data: Vec<u8>,
        limit: usize,
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<io::Result<usize>> {
            let n = buf.len().min(self.limit);
            self.calls.push((false, n));
            self.data.extend_from_slice(&buf[..n]);
            std::task::Poll::Ready(Ok(n))
        }

        fn poll_write_vectored(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> std::task::Poll<io::Result<usize>> {
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(self.limit - n);
                self.data.extend_from_slice(&b[..take]);
                n += take;
            }
            self.calls.push((true, n));
            std::task::Poll::Ready(Ok(n))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    async fn flush_all(sizes: &[usize], limit: usize) -> Recorder {
        let mut out = Outbox::default();
        let mut expected = Vec::new();
        for (i, &n) in sizes.iter().enumerate() {
            let seg = vec![i as u8; n];
            expected.extend_from_slice(&seg);
            out.push(Bytes::from(seg));
        }
        let mut w = Recorder {
            limit,
            ..Recorder::default()
        };
        out.flush(&mut w).await.unwrap();
        assert_eq!(w.data, expected);
        w
    }

    #[tokio::test]
    async fn a_small_reply_in_several_frames_goes_out_in_one_plain_write() {
        // RowDescription, DataRow, CommandComplete, ReadyForQuery.
        let w = flush_all(&[31, 13, 14, 6], usize::MAX).await;
        assert_eq!(w.calls, [(false, 64)]);
    }

    #[tokio::test]
    async fn large_batches_are_written_vectored_and_resume_after_short_writes() {
        let w = flush_all(&[COALESCE_MAX, 10, 3000], 5000).await;
        // 11,202 bytes: vectored while more than COALESCE_MAX remain, then
        // copied into one buffer, then the rest of the last segment.
        assert_eq!(w.calls, [(true, 5000), (false, 5000), (false, 1202)]);
    }
}
