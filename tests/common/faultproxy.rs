//! A fault-injecting TCP proxy for tests: it sits between pgtarn and
//! Postgres and, switched at run time with [`FaultProxy::set`], passes
//! bytes through, delays them, refuses connections, cuts a connection
//! after N more server bytes, or swallows everything (blackhole).
//! [`FaultProxy::drop_all`] and [`FaultProxy::blackhole_existing`] act on
//! the connections open at that moment only.
//!
//! Counters ([`FaultProxy::accepted`], [`FaultProxy::open`]) let tests
//! assert how many connections pgtarn made.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What the proxy does, from the moment it is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward everything as it comes.
    Pass,
    /// Wait this long before connecting upstream for a new connection and
    /// before forwarding each chunk, in both directions.
    Delay(Duration),
    /// Close new connections at once (abruptly, with a reset); open ones
    /// keep passing.
    Refuse,
    /// Forward this many more bytes from server to client on every
    /// connection (counted from when the mode is set, or from the start
    /// for new connections), then close it abruptly.
    CutAfter(usize),
    /// The same, but then swallow everything on it, as [`Fault::Blackhole`]
    /// does, instead of closing: a server that stops answering mid-way.
    HangAfter(usize),
    /// Accept new connections and read and discard everything on new and
    /// open connections, in both directions; answer nothing, close nothing.
    Blackhole,
}

/// The mode and how many times it was set (so that `CutAfter` budgets
/// restart when it is set again).
#[derive(Debug, Clone, Copy)]
struct Mode {
    fault: Fault,
    epoch: u64,
}

struct Shared {
    upstream: SocketAddr,
    mode: watch::Sender<Mode>,
    /// Bumped by [`FaultProxy::drop_all`]; connections older than the
    /// bump close.
    drops: watch::Sender<u64>,
    /// Set on the connections open at [`FaultProxy::blackhole_existing`].
    conns: std::sync::Mutex<Vec<Arc<AtomicBool>>>,
    accepted: AtomicUsize,
    open: AtomicUsize,
}

/// A running proxy; stops listening (and closes every connection) on drop.
pub struct FaultProxy {
    /// Where pgtarn should connect.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
    conn_tasks: Arc<std::sync::Mutex<Vec<JoinHandle<()>>>>,
}

impl FaultProxy {
    /// Listens on a random loopback port and forwards to `upstream`
    /// (starting in [`Fault::Pass`]).
    pub async fn start(upstream: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let shared = Arc::new(Shared {
            upstream,
            mode: watch::Sender::new(Mode {
                fault: Fault::Pass,
                epoch: 0,
            }),
            drops: watch::Sender::new(0),
            conns: std::sync::Mutex::new(Vec::new()),
            accepted: AtomicUsize::new(0),
            open: AtomicUsize::new(0),
        });
        let conn_tasks = Arc::new(std::sync::Mutex::new(Vec::new()));
        let task = tokio::spawn(accept_loop(listener, shared.clone(), conn_tasks.clone()));
        FaultProxy {
            addr,
            shared,
            task,
            conn_tasks,
        }
    }

    /// Switches the mode.
    pub fn set(&self, fault: Fault) {
        self.shared.mode.send_modify(|m| {
            m.fault = fault;
            m.epoch += 1;
        });
    }

    /// The current mode.
    pub fn fault(&self) -> Fault {
        self.shared.mode.borrow().fault
    }

    /// Closes every connection open now, abruptly (reset on both sides);
    /// the mode is unchanged and later connections are unaffected.
    pub fn drop_all(&self) {
        self.shared.drops.send_modify(|n| *n += 1);
    }

    /// Makes the connections open now swallow everything, as
    /// [`Fault::Blackhole`] does, for good; later connections follow the
    /// mode. This is a server that vanished without closing its sockets.
    pub fn blackhole_existing(&self) {
        let conns = self.shared.conns.lock().unwrap();
        for black in conns.iter() {
            black.store(true, Ordering::SeqCst);
        }
    }

    /// Connections accepted so far (including refused ones).
    pub fn accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.shared.open.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
        let tasks = self.conn_tasks.lock().unwrap_or_else(|p| p.into_inner());
        for t in tasks.iter() {
            t.abort();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    tasks: Arc<std::sync::Mutex<Vec<JoinHandle<()>>>>,
) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            // Out of file descriptors or similar: do not spin.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        let task = tokio::spawn(serve(client, shared.clone()));
        let mut tasks = tasks.lock().unwrap_or_else(|p| p.into_inner());
        tasks.retain(|t| !t.is_finished());
        tasks.push(task);
    }
}

/// Closes with a reset instead of a FIN.
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

/// Counts a connection as open while it lives.
struct OpenGuard(Arc<Shared>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn serve(mut client: TcpStream, shared: Arc<Shared>) {
    shared.open.fetch_add(1, Ordering::SeqCst);
    let _open = OpenGuard(shared.clone());
    let black = Arc::new(AtomicBool::new(false));
    {
        let mut conns = shared.conns.lock().unwrap();
        conns.retain(|c| Arc::strong_count(c) > 1);
        conns.push(black.clone());
    }
    let mut drops = shared.drops.subscribe();
    drops.borrow_and_update();
    let at_accept = shared.mode.borrow().fault;
    match at_accept {
        Fault::Refuse => return reset(client),
        Fault::Blackhole => black.store(true, Ordering::SeqCst),
        Fault::Delay(d) => tokio::time::sleep(d).await,
        Fault::Pass | Fault::CutAfter(_) | Fault::HangAfter(_) => {}
    }
    if black.load(Ordering::SeqCst) {
        // Never connect upstream: swallow until the client gives up or the
        // proxy drops the connection.
        let dropped = tokio::select! {
            _ = swallow(&mut client) => false,
            _ = drops.changed() => true,
        };
        if dropped {
            reset(client);
        }
        return;
    }
    let Ok(server) = TcpStream::connect(shared.upstream).await else {
        return reset(client);
    };
    let _ = server.set_nodelay(true);
    let _ = client.set_nodelay(true);
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let end = tokio::select! {
        e = pump(&mut cr, &mut sw, false, &black, shared.mode.subscribe()) => e,
        e = pump(&mut sr, &mut cw, true, &black, shared.mode.subscribe()) => e,
        _ = drops.changed() => End::Abort,
    };
    if matches!(end, End::Abort) {
        // Closing with a zero linger sends RST instead of FIN.
        let _ = socket2::SockRef::from(cw.as_ref()).set_linger(Some(Duration::ZERO));
        let _ = socket2::SockRef::from(sw.as_ref()).set_linger(Some(Duration::ZERO));
    }
}

/// Reads and discards until EOF or an error.
async fn swallow(stream: &mut TcpStream) {
    let mut buf = vec![0u8; 16 * 1024];
    while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
}

/// How a connection ended.
enum End {
    /// A side closed or failed: close the other normally.
    Eof,
    /// Cut or dropped: reset both sides.
    Abort,
}

/// Forwards `from` to `to` under the current mode; `down` is the
/// server-to-client direction, the one `CutAfter` counts and the one
/// whose EOF a blackhole hides.
async fn pump(
    from: &mut OwnedReadHalf,
    to: &mut OwnedWriteHalf,
    down: bool,
    black: &AtomicBool,
    mut mode: watch::Receiver<Mode>,
) -> End {
    let mut buf = vec![0u8; 16 * 1024];
    // (epoch, bytes left) of the `CutAfter` in force.
    let mut budget: Option<(u64, usize)> = None;
    loop {
        let read = from.read(&mut buf).await;
        let m = *mode.borrow_and_update();
        let swallowing = black.load(Ordering::SeqCst) || m.fault == Fault::Blackhole;
        let n = match read {
            Ok(0) | Err(_) if swallowing && down => {
                // A blackholed server shows no EOF either.
                std::future::pending::<()>().await;
                0
            }
            Ok(0) | Err(_) => return End::Eof,
            Ok(n) => n,
        };
        if swallowing {
            continue;
        }
        let mut chunk = &buf[..n];
        let mut cut = false;
        match m.fault {
            Fault::Delay(d) => tokio::time::sleep(d).await,
            Fault::CutAfter(limit) | Fault::HangAfter(limit) if down => {
                let left = match budget {
                    Some((epoch, left)) if epoch == m.epoch => left,
                    _ => limit,
                };
                let take = left.min(n);
                chunk = &buf[..take];
                budget = Some((m.epoch, left - take));
                cut = left - take == 0;
            }
            _ => {}
        }
        if to.write_all(chunk).await.is_err() {
            return End::Eof;
        }
        if cut && matches!(m.fault, Fault::HangAfter(_)) {
            black.store(true, Ordering::SeqCst);
        } else if cut {
            return End::Abort;
        }
    }
}
