//! The live lists of client and server connections behind `SHOW CLIENTS`
//! and `SHOW SERVERS`.
//!
//! Each connection registers a [`ConnInfo`] (its fixed facts plus a few
//! atomics that change per transaction) and removes it when its
//! [`Listed`] guard drops.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI32, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::SystemTime;

use atomic_waker::AtomicWaker;

/// Why a connection was asked to end, from the mildest request up; a
/// stronger request overrides a milder one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum KillReason {
    /// Graceful shutdown: end at the next idle point (outside a
    /// transaction), letting the running one finish.
    Drain = 1,
    /// Admin `KILL`: end now.
    Admin = 2,
    /// Shutdown after `shutdown_timeout` (or a fast shutdown): end now.
    Shutdown = 3,
}

impl KillReason {
    fn from_u8(v: u8) -> Option<KillReason> {
        match v {
            1 => Some(KillReason::Drain),
            2 => Some(KillReason::Admin),
            3 => Some(KillReason::Shutdown),
            _ => None,
        }
    }
}

/// What a connection is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ConnState {
    /// Starting up or authenticating (a server: connecting).
    Login = 0,
    /// Logged in, no transaction (a server: idle in the pool).
    Idle = 1,
    /// A client with a server attached; a server lent to a client.
    Active = 2,
    /// A client waiting for a server.
    Waiting = 3,
}

impl ConnState {
    fn from_u8(v: u8) -> ConnState {
        match v {
            1 => ConnState::Idle,
            2 => ConnState::Active,
            3 => ConnState::Waiting,
            _ => ConnState::Login,
        }
    }
}

/// One connection as the admin console shows it.
#[derive(Debug)]
pub struct ConnInfo {
    /// Unique in the process (clients and servers have separate ranges).
    pub id: u64,
    /// The facts it was listed with.
    pub facts: NewConn,
    /// When it connected.
    pub connect_time: SystemTime,
    state: AtomicU8,
    since: AtomicU64,
    /// [`super::now_ns`] at connect and at the last request.
    connected_ns: u64,
    request_ns: AtomicU64,
    link: AtomicU64,
    remote_pid: AtomicI32,
    /// The strongest [`KillReason`] asked for so far (0: none), and the
    /// task waiting for it: an atomic load per poll on the relay path.
    kill: AtomicU8,
    kill_waker: AtomicWaker,
}

/// The facts a connection is listed with.
#[derive(Debug, Default)]
pub struct NewConn {
    /// User name.
    pub user: String,
    /// Database name as clients know it.
    pub database: String,
    /// The other end's address.
    pub peer: Option<SocketAddr>,
    /// Our end's address.
    pub local: Option<SocketAddr>,
    /// Whether the connection uses TLS.
    pub tls: bool,
    /// The client's `application_name`.
    pub application_name: String,
    /// A server's: its pool's last `RECONNECT` (or reload that moved or
    /// retired the pool), as [`super::now_ns`] (0: none). Shared with the
    /// pool, so the server's own pool judges it even once a reload has
    /// replaced that pool by name.
    pub retire_before: Option<Arc<AtomicU64>>,
    /// A server's: when its connect began, as [`super::now_ns`]. A
    /// `RECONNECT` while it was logging in retires it too (it may be
    /// headed for the old upstream).
    pub connect_began_ns: Option<u64>,
}

fn unix_micros(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

impl ConnInfo {
    /// The current state.
    pub fn state(&self) -> ConnState {
        ConnState::from_u8(self.state.load(Ordering::Relaxed))
    }

    /// Moves to `state`; entering `Waiting` starts the wait clock, entering
    /// `Active` records the request time, both as of `at`.
    pub fn set_state_at(&self, state: ConnState, at: std::time::Instant) {
        self.state.store(state as u8, Ordering::Relaxed);
        match state {
            ConnState::Waiting => self.since.store(super::ns_at(at), Ordering::Relaxed),
            ConnState::Active => self.request_ns.store(super::ns_at(at), Ordering::Relaxed),
            _ => {}
        }
    }

    /// Back to idle, unlinked (no clock read).
    pub fn set_idle(&self) {
        self.mark(ConnState::Idle);
        self.link.store(0, Ordering::Relaxed);
    }

    /// Moves to `state` without touching the clocks.
    pub fn mark(&self, state: ConnState) {
        self.state.store(state as u8, Ordering::Relaxed);
    }

    /// Moves to `state` as of now.
    pub fn set_state(&self, state: ConnState) {
        self.set_state_at(state, std::time::Instant::now());
    }

    /// How long a waiting client has waited so far (zero otherwise).
    pub fn wait(&self) -> std::time::Duration {
        if self.state() != ConnState::Waiting {
            return Default::default();
        }
        super::since_ns(self.since.load(Ordering::Relaxed))
    }

    /// Last request, µs since the Unix epoch.
    pub fn request_time_us(&self) -> u64 {
        let after = self
            .request_ns
            .load(Ordering::Relaxed)
            .saturating_sub(self.connected_ns);
        unix_micros(self.connect_time) + after / 1000
    }

    /// [`super::now_ns`] when it connected.
    pub fn connected_ns(&self) -> u64 {
        self.connected_ns
    }

    /// True if this server must close (`close_needed`): it began to
    /// connect no later than its pool's last `RECONNECT` (or reload that
    /// moved or retired the pool). Always false for a client.
    pub fn close_needed(&self) -> bool {
        self.facts.retire_before.as_ref().is_some_and(|r| {
            let retire = r.load(Ordering::Relaxed);
            let began = self.facts.connect_began_ns.unwrap_or(self.connected_ns);
            retire != 0 && began <= retire
        })
    }

    /// The id of the linked peer (a client's server or a server's client); 0 if none.
    pub fn link(&self) -> u64 {
        self.link.load(Ordering::Relaxed)
    }

    /// Links to the peer with `id` (0 unlinks).
    pub fn set_link(&self, id: u64) {
        self.link.store(id, Ordering::Relaxed);
    }

    /// The Postgres backend's process id (servers).
    pub fn remote_pid(&self) -> i32 {
        self.remote_pid.load(Ordering::Relaxed)
    }

    /// Asks the connection's task to end; see [`Listed::killed`].
    pub fn kill(&self, reason: KillReason) {
        self.kill.fetch_max(reason as u8, Ordering::AcqRel);
        self.kill_waker.wake();
    }

    /// The strongest kill request so far, if any.
    pub fn kill_requested(&self) -> Option<KillReason> {
        KillReason::from_u8(self.kill.load(Ordering::Acquire))
    }

    /// Records the Postgres backend's process id.
    pub fn set_remote_pid(&self, pid: i32) {
        self.remote_pid.store(pid, Ordering::Relaxed);
    }
}

/// A list of live connections.
#[derive(Debug)]
pub struct ConnList {
    conns: Mutex<BTreeMap<u64, Arc<ConnInfo>>>,
    next_id: AtomicU64,
}

impl ConnList {
    /// An empty list whose ids start at `first_id`.
    pub fn new(first_id: u64) -> Arc<ConnList> {
        Arc::new(ConnList {
            conns: Mutex::default(),
            next_id: AtomicU64::new(first_id),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Arc<ConnInfo>>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lists a new connection in `state` until the returned guard drops.
    pub fn add(self: &Arc<Self>, c: NewConn, state: ConnState) -> Listed {
        let now = SystemTime::now();
        let now_ns = super::now_ns();
        let info = Arc::new(ConnInfo {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            facts: c,
            connect_time: now,
            state: AtomicU8::new(state as u8),
            since: AtomicU64::new(now_ns),
            connected_ns: now_ns,
            request_ns: AtomicU64::new(now_ns),
            link: AtomicU64::new(0),
            remote_pid: AtomicI32::new(0),
            kill: AtomicU8::new(0),
            kill_waker: AtomicWaker::new(),
        });
        self.lock().insert(info.id, info.clone());
        Listed {
            list: self.clone(),
            info,
        }
    }

    /// Every listed connection, oldest first.
    pub fn snapshot(&self) -> Vec<Arc<ConnInfo>> {
        self.lock().values().cloned().collect()
    }

    /// How many connections are listed.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True if none is listed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A connection's entry in a [`ConnList`]; dropping it unlists it.
#[derive(Debug)]
pub struct Listed {
    list: Arc<ConnList>,
    /// The entry.
    pub info: Arc<ConnInfo>,
}

impl Listed {
    /// Completes once [`ConnInfo::kill`] asked for `at_least` or stronger,
    /// with the reason (never otherwise). Can be polled again after it
    /// completed.
    pub fn killed(&self, at_least: KillReason) -> impl Future<Output = KillReason> + '_ {
        std::future::poll_fn(move |cx| {
            let ready = |v| KillReason::from_u8(v).filter(|r| *r >= at_least);
            if let Some(r) = ready(self.info.kill.load(Ordering::Acquire)) {
                return Poll::Ready(r);
            }
            self.info.kill_waker.register(cx.waker());
            match ready(self.info.kill.load(Ordering::Acquire)) {
                Some(r) => Poll::Ready(r),
                None => Poll::Pending,
            }
        })
    }
}

impl Drop for Listed {
    fn drop(&mut self) {
        self.list.lock().remove(&self.info.id);
    }
}

impl std::ops::Deref for Listed {
    type Target = ConnInfo;
    fn deref(&self) -> &ConnInfo {
        &self.info
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_leave_the_list_when_dropped() {
        let list = ConnList::new(1);
        let a = list.add(NewConn::default(), ConnState::Login);
        let b = list.add(NewConn::default(), ConnState::Idle);
        assert_eq!(list.len(), 2);
        assert_ne!(a.id, b.id);
        b.set_state(ConnState::Waiting);
        assert_eq!(b.state(), ConnState::Waiting);
        drop(a);
        assert_eq!(list.snapshot().len(), 1);
    }
}
