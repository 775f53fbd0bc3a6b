//! The session loop: relays frames between one logged-in client and the
//! server lent to it.
//!
//! In transaction mode a server is checked out at the client's first
//! message and released as soon as it is idle again (ReadyForQuery `I`,
//! nothing outstanding). In session mode it is kept until the client
//! leaves, then reset with `server_reset_query` before going back.
//! Frames are forwarded as `Bytes` slices of the read buffers, a read's
//! worth at a time with one vectored write; while a peer is not reading,
//! the loop does not read more from the other side, so memory stays bounded.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::AsyncReadExt;
use tracing::debug;

use super::cancel::CancelSlot;
use super::error::ClientError;
use super::params::{ClientParams, quote};
use super::prepared::ClientStatements;
use super::settings::{Changed, changed_settings};
use super::translate::Translator;
use crate::backend::BackendError;
use crate::config::PoolMode;
use crate::net::{Outbox, Stream};
use crate::pool::{Checkout, Pool};
use crate::protocol::backend as msg;
use crate::protocol::encode;
use crate::protocol::sqlstate::QUERY_CANCELED;
use crate::protocol::{Frame, Item, ProtocolError, Splitter, extended};
use crate::shutdown::Shutdown;
use crate::stats::CloseReason;
use crate::stats::clients::{ConnState, KillReason, Listed};

/// How a session ended without error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The client sent Terminate.
    Terminated,
    /// The client closed its socket.
    Closed,
    /// pgtarn is shutting down.
    Shutdown,
    /// An admin ran `KILL` on the client's database.
    Killed,
}

/// One client's relay state.
#[derive(Debug)]
pub struct Session {
    /// The client's socket.
    pub client: Stream,
    /// Bytes read from the client, not yet forwarded.
    pub cbuf: BytesMut,
    /// Splits `cbuf` into frames.
    pub csplit: Splitter,
    /// The pool this client draws servers from.
    pub pool: Arc<Pool>,
    /// Settings the client wants on every server.
    pub params: ClientParams,
    /// The pool's login ParameterStatus set (the server defaults).
    pub defaults: Arc<Vec<(String, String)>>,
    /// Where cancel requests for this client go.
    pub cancel: Arc<CancelSlot>,
    server: Option<Checkout>,
    /// The pool's mode when the client logged in (a reload changes it for
    /// new clients only).
    mode: PoolMode,
    /// Named-statement tracking (transaction mode only).
    translator: Option<Translator>,
    /// Settings the client's queries changed since its server was attached
    /// (transaction mode only), read back when the transaction ends.
    changed: Changed,
    /// The client's prepared statements (by name; empty: the unnamed one)
    /// that change settings (transaction mode).
    set_statements: Vec<(Box<[u8]>, Changed)>,
    to_server: Outbox,
    to_client: Outbox,
    /// This client's entry in `SHOW CLIENTS`.
    pub listed: Option<Listed>,
    /// When the query and transaction in progress started.
    query_start: Option<Instant>,
    xact_start: Option<Instant>,
    /// Client-side time limits (0 = off).
    pub timeouts: SessionTimeouts,
    /// When pgtarn cancelled the running query for `query_timeout`.
    cancelled_at: Option<Instant>,
}

/// The time limits a session enforces; zero disables one.
#[derive(Debug, Clone, Copy, Default)]
pub struct SessionTimeouts {
    /// `client_idle_timeout`: idle outside a transaction.
    pub client_idle: Duration,
    /// `idle_transaction_timeout`: idle inside a transaction.
    pub idle_transaction: Duration,
    /// `query_timeout`: one query running.
    pub query: Duration,
    /// `cancel_wait_timeout`: a cancel request's delivery and effect.
    pub cancel_wait: Duration,
}

impl SessionTimeouts {
    /// The limits configured in `[pgtarn]`.
    pub fn from_config(g: &crate::config::General) -> Self {
        SessionTimeouts {
            client_idle: g.client_idle_timeout,
            idle_transaction: g.idle_transaction_timeout,
            query: g.query_timeout,
            cancel_wait: g.cancel_wait_timeout,
        }
    }
}

/// Which time limit expired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timer {
    ClientIdle,
    IdleTransaction,
    Query,
    CancelWait,
}

enum Event {
    Timeout(Timer),
    Killed(KillReason),
    Client(usize),
    Server(std::io::Result<usize>),
}

/// Keeps at least this much free room before a read.
const READ_ROOM: usize = 8 * 1024;

/// `SET` statements remembered for a client whose named statements pass
/// through to the server (`max_prepared_statements = 0`).
const MAX_PASSED_SET_STATEMENTS: usize = 1000;

fn make_room(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < READ_ROOM {
        buf.reserve(2 * READ_ROOM);
    }
}

impl Session {
    /// A session for a logged-in client.
    pub fn new(
        client: Stream,
        cbuf: BytesMut,
        csplit: Splitter,
        pool: Arc<Pool>,
        params: ClientParams,
        defaults: Arc<Vec<(String, String)>>,
        cancel: Arc<CancelSlot>,
    ) -> Session {
        let s = pool.settings();
        let translator = (s.mode.shares_servers() && s.max_prepared_statements > 0).then(|| {
            Translator::new(
                ClientStatements::new(s.client_statement_limits),
                s.max_prepared_statements,
                pool.known_statements.clone(),
            )
        });
        let mode = s.mode;
        Session {
            mode,
            translator,
            changed: Changed::default(),
            set_statements: Vec::new(),
            client,
            cbuf,
            csplit,
            pool,
            params,
            defaults,
            cancel,
            server: None,
            to_server: Outbox::default(),
            to_client: Outbox::default(),
            listed: None,
            query_start: None,
            xact_start: None,
            timeouts: SessionTimeouts::default(),
            cancelled_at: None,
        }
    }

    /// Relays until the client leaves, an error ends the session, or
    /// shutdown; then releases or discards the server. Shutdown reaches a
    /// listed session as a [`KillReason::Drain`]; `shutdown` covers one
    /// that was listed after the drain was announced.
    pub async fn run(&mut self, shutdown: &Shutdown) -> Result<End, ClientError> {
        if shutdown.is_triggered()
            && let Some(l) = &self.listed
        {
            l.kill(KillReason::Drain);
        }
        let result = match self.relay().await {
            Err(ClientError::Killed) => Ok(End::Killed),
            Err(ClientError::Shutdown) => Ok(End::Shutdown),
            r => r,
        };
        let mid_message = self.server.as_ref().is_some_and(|s| s.splitter.in_stream());
        self.finish(result.is_ok()).await;
        result.map_err(|e| match e {
            ClientError::ServerLost(error) => ClientError::ServerFailed {
                database: self.pool.key.database.clone(),
                error,
                mid_message,
            },
            other => other,
        })
    }

    async fn relay(&mut self) -> Result<End, ClientError> {
        if !self.cbuf.is_empty()
            && let Some(end) = self.on_client_data().await?
        {
            return Ok(end);
        }
        loop {
            let timer = self.next_timer();
            let event = match self.server.as_mut() {
                None => tokio::select! {
                    biased;
                    r = killed(&self.listed, KillReason::Drain) => Event::Killed(r),
                    t = expiry(timer) => Event::Timeout(t),
                    r = self.client.read_buf_lazily(&mut self.cbuf, READ_ROOM) => Event::Client(r?),
                },
                Some(server) => {
                    let server = &mut **server;
                    make_room(&mut self.cbuf);
                    make_room(&mut server.rbuf);
                    tokio::select! {
                        biased;
                        r = killed(&self.listed, KillReason::Admin) => Event::Killed(r),
                        t = expiry(timer) => Event::Timeout(t),
                        r = server.stream.read_buf(&mut server.rbuf) => Event::Server(r),
                        r = self.client.read_buf(&mut self.cbuf) => Event::Client(r?),
                    }
                }
            };
            match event {
                Event::Killed(KillReason::Admin) => return Ok(End::Killed),
                Event::Killed(KillReason::Drain | KillReason::Shutdown) => {
                    return Ok(End::Shutdown);
                }
                Event::Timeout(t) => self.on_timeout(t)?,
                Event::Client(0) => return Ok(End::Closed),
                Event::Client(n) => {
                    self.pool.stats.received.inc_by(n as u64);
                    if let Some(end) = self.on_client_data().await? {
                        return Ok(end);
                    }
                }
                Event::Server(Ok(0)) => return Err(ClientError::ServerLost(BackendError::Closed)),
                Event::Server(Ok(n)) => {
                    self.pool.stats.sent.inc_by(n as u64);
                    self.on_server_data().await?
                }
                Event::Server(Err(e)) => return Err(ClientError::ServerLost(e.into())),
            }
        }
    }

    /// Writes the server's output (and pgtarn's own replies) to the
    /// client. A client that stops reading is bounded by the time limit of
    /// the moment: `query_timeout` while a query runs,
    /// `idle_transaction_timeout` or `client_idle_timeout` otherwise (its
    /// server, if any, is then discarded, not pinned until the client
    /// reads). So is an admin's `KILL` (or the end of a shutdown).
    async fn flush_to_client(&mut self) -> Result<(), ClientError> {
        let timer = self.next_timer();
        tokio::select! {
            biased;
            r = self.to_client.flush(&mut self.client) => Ok(r?),
            _ = killed(&self.listed, KillReason::Admin) => Err(ClientError::StuckClient),
            _ = expiry(timer) => Err(ClientError::StuckClient),
        }
    }

    /// The time limit that applies in the current state, and when it ends.
    fn next_timer(&self) -> Option<(Instant, Timer)> {
        let t = &self.timeouts;
        let after = |d: Duration, timer| (!d.is_zero()).then(|| (Instant::now() + d, timer));
        let Some(server) = self.server.as_ref() else {
            return after(t.client_idle, Timer::ClientIdle);
        };
        if let Some(at) = self.cancelled_at {
            return Some((at + t.cancel_wait, Timer::CancelWait));
        }
        if server.state.query_in_progress() {
            let start = self.query_start?;
            return (!t.query.is_zero()).then(|| (start + t.query, Timer::Query));
        }
        if server.state.is_idle() {
            after(t.client_idle, Timer::ClientIdle)
        } else {
            after(t.idle_transaction, Timer::IdleTransaction)
        }
    }

    /// `query_timeout` for the query running now (or the wait for its
    /// cancel), whatever the server has been sent so far.
    fn query_timer(&self) -> Option<(Instant, Timer)> {
        if let Some(at) = self.cancelled_at {
            return Some((at + self.timeouts.cancel_wait, Timer::CancelWait));
        }
        let limit = self.timeouts.query;
        let start = self.query_start.filter(|_| !limit.is_zero())?;
        Some((start + limit, Timer::Query))
    }

    /// Acts on an expired time limit: ends the session, or cancels the
    /// running query (`query_timeout`).
    fn on_timeout(&mut self, timer: Timer) -> Result<(), ClientError> {
        match timer {
            Timer::ClientIdle => Err(ClientError::ClientIdleTimeout),
            Timer::IdleTransaction => Err(ClientError::IdleTransactionTimeout),
            Timer::CancelWait => Err(ClientError::QueryTimeout),
            Timer::Query => {
                let Some(server) = self.server.as_ref() else {
                    return Ok(());
                };
                debug!(server = server.id(), "query_timeout: cancelling the query");
                self.cancelled_at = Some(Instant::now());
                let target = server.cancel_target();
                let limit = self.timeouts.cancel_wait;
                super::cancel::spawn_cancel(&target, limit);
                Ok(())
            }
        }
    }

    /// Forwards every complete client frame; returns `Some` on Terminate.
    async fn on_client_data(&mut self) -> Result<Option<End>, ClientError> {
        let mut end = None;
        while let Some(item) = self.csplit.next(&mut self.cbuf)? {
            match item {
                Item::Frame(f) if f.tag() == b'X' => {
                    end = Some(End::Terminated);
                    break;
                }
                Item::Frame(f) => self.client_frame(f).await?,
                // The rest of a large CopyData: it goes where its start
                // went, and nowhere without a server (see `client_frame`).
                Item::Chunk(b) => {
                    if self.server.is_some() {
                        self.to_server.push(b);
                    }
                }
            }
        }
        self.flush_to_server().await?;
        if !self.to_client.is_empty() {
            self.flush_to_client().await?;
        }
        // A server held back while the client finished a message (the tail
        // of a CopyData after a failed COPY) goes back now.
        self.release_if_idle().await?;
        Ok(end)
    }

    /// Queues one client frame for the server, or answers it locally.
    async fn client_frame(&mut self, f: Frame) -> Result<(), ClientError> {
        // Without a server the client is in no COPY: CopyData, CopyDone
        // and CopyFail are what is left of a COPY that failed, and
        // Postgres would ignore them too. They never take a server.
        if self.server.is_none() && matches!(f.tag(), b'd' | b'c' | b'f') {
            return Ok(());
        }
        // Noted whoever answers the frame: a Parse that pgtarn answers
        // itself defines a statement whose SET must be followed too.
        if self.mode.shares_servers() {
            self.note_changes(&f);
        }
        if let Some(t) = self.translator.as_mut()
            && self.server.is_none()
            && t.answer_locally(&f, &mut self.to_client)?
        {
            return Ok(());
        }
        let mut f = f;
        loop {
            self.attach().await?;
            start_timers(&mut self.query_start, &mut self.xact_start);
            let Some(server) = self.server.as_mut() else {
                return Ok(());
            };
            let held = match self.translator.as_mut() {
                Some(t) => t.client_frame(f, server, &mut self.to_server, &mut self.to_client)?,
                None => {
                    server.state.on_client_message(f.tag());
                    self.to_server.push(f.into_raw());
                    None
                }
            };
            let Some(held) = held else {
                return Ok(());
            };
            self.await_check().await?;
            f = held;
        }
    }

    /// Sends what is queued for the server and relays its replies until
    /// the row-shape check that a held client message waits for is done
    /// (see [`Translator::client_frame`]). It is part of the client's
    /// query: bounded by `query_timeout` and `KILL`, and by the client's
    /// leaving (what it sends meanwhile is kept for later).
    async fn await_check(&mut self) -> Result<(), ClientError> {
        self.flush_to_server().await?;
        while self
            .translator
            .as_ref()
            .is_some_and(|t| t.replies.checking())
        {
            // The ReadyForQuery of an earlier query of the pipeline ended
            // the query's timer: the held message's own runs from then.
            start_timers(&mut self.query_start, &mut self.xact_start);
            let timer = self.query_timer();
            let Some(server) = self.server.as_mut() else {
                return Ok(());
            };
            let server = &mut **server;
            make_room(&mut server.rbuf);
            let before = self.cbuf.len();
            let read = tokio::select! {
                biased;
                r = killed(&self.listed, KillReason::Admin) => return Err(r.into()),
                t = expiry(timer) => {
                    self.on_timeout(t)?;
                    continue;
                }
                r = server.stream.read_buf(&mut server.rbuf) => r,
                e = client_gone(&mut self.client, &mut self.cbuf) => return Err(e),
            };
            let read_ahead = self.cbuf.len() - before;
            self.pool.stats.received.inc_by(read_ahead as u64);
            match read {
                Ok(0) => return Err(ClientError::ServerLost(BackendError::Closed)),
                Ok(n) => {
                    self.pool.stats.sent.inc_by(n as u64);
                    self.on_server_data().await?;
                }
                Err(e) => return Err(ClientError::ServerLost(e.into())),
            }
        }
        Ok(())
    }

    /// Notes the settings a client frame changes (transaction mode): a
    /// simple query's `SET` at once; an extended-protocol one when a Bind
    /// of its statement shows that it runs.
    fn note_changes(&mut self, f: &Frame) {
        match f.tag() {
            b'Q' => {
                let sql = f.body().strip_suffix(b"\0").unwrap_or(f.body());
                if let Some(changes) = changed_settings(sql) {
                    self.changed.merge(changes);
                }
            }
            b'P' => {
                let Some((name, sql)) = two_strings(f.body()) else {
                    return;
                };
                let changes = changed_settings(sql);
                let sets = &mut self.set_statements;
                if !sets.is_empty() || changes.is_some() {
                    sets.retain(|(n, _)| **n != *name);
                }
                if let Some(changes) = changes {
                    sets.push((name.into(), changes));
                    self.bound_set_statements();
                }
            }
            // A statement closed is forgotten (a driver's statement cache
            // prepares and closes statements under ever new names).
            b'C' if !self.set_statements.is_empty() => {
                if let Ok((b'S', name)) = extended::target(f.body()) {
                    self.set_statements.retain(|(n, _)| **n != *name.as_bytes());
                }
            }
            b'B' if !self.set_statements.is_empty() => {
                let Some((_, name)) = two_strings(f.body()) else {
                    return;
                };
                if let Some((_, c)) = self.set_statements.iter().find(|(n, _)| **n == *name) {
                    self.changed.merge(c.clone());
                }
            }
            _ => {}
        }
    }

    /// Keeps the remembered `SET` statements to those the client still
    /// has, once they are more than it may have: a Parse refused (over the
    /// client's limits) or failed on the server leaves its entry behind.
    /// The newest entry (its Parse is being handled) and the unnamed
    /// statement's stay. Statements passed through (no translator) keep
    /// the newest [`MAX_PASSED_SET_STATEMENTS`].
    fn bound_set_statements(&mut self) {
        let sets = &mut self.set_statements;
        let Some(t) = self.translator.as_ref() else {
            let excess = sets.len().saturating_sub(MAX_PASSED_SET_STATEMENTS);
            sets.drain(..excess);
            return;
        };
        if sets.len() <= t.statements.max_statements() {
            return;
        }
        let newest = sets.len() - 1;
        let mut i = 0;
        sets.retain(|(name, _)| {
            let has = |n| t.statements.get(n).is_some();
            let keep = i == newest || name.is_empty() || std::str::from_utf8(name).is_ok_and(has);
            i += 1;
            keep
        });
    }

    /// Checks out a server if none is attached and brings its settings in
    /// line with the client's.
    async fn attach(&mut self) -> Result<(), ClientError> {
        if self.server.is_some() {
            return Ok(());
        }
        let started = Instant::now();
        self.set_state(ConnState::Waiting, started);
        // A client waiting for a server holds none and has sent nothing of
        // its transaction: any kill (a drain too) ends it before its query
        // can run, on a server that a kill may just have freed. So does
        // its leaving: its query must not run for nobody.
        let before = self.cbuf.len();
        let (mut server, now) = tokio::select! {
            biased;
            r = self.pool.checkout_since(started) => r?,
            r = killed(&self.listed, KillReason::Drain) => return Err(r.into()),
            e = client_gone(&mut self.client, &mut self.cbuf) => return Err(e),
        };
        let read = self.cbuf.len() - before;
        self.pool.stats.received.inc_by(read as u64);
        if let Some(r) = self.listed.as_ref().and_then(|l| l.kill_requested()) {
            return Err(r.into());
        }
        if let (Some(me), Some(sv)) = (&self.listed, &server.listed) {
            me.set_link(sv.id);
            sv.set_link(me.id);
            sv.set_state_at(ConnState::Active, now);
        }
        self.set_state(ConnState::Active, now);
        self.query_start.get_or_insert(now);
        self.xact_start.get_or_insert(now);
        let wanted = self.params.snapshot();
        let in_sync = server
            .synced_params
            .as_ref()
            .is_some_and(|s| Arc::ptr_eq(s, &wanted) || **s == *wanted);
        if !in_sync {
            if let Some(sql) = self.params.sync_sql(&mut server.settings, &self.defaults) {
                // Part of the client's query: bounded by `query_timeout`
                // (a server that stops answering is then dropped).
                let synced = bounded(self.timeouts.query, server.run_internal(&sql)).await;
                match synced {
                    Ok(None) => {}
                    Ok(Some(rejected)) => return Err(ClientError::SettingRejected(rejected)),
                    Err(e) => return Err(ClientError::ServerLost(e)),
                }
            }
            server.synced_params = Some(wanted);
        }
        self.cancel.set(Some(server.cancel_target()));
        self.server = Some(server);
        Ok(())
    }

    /// Forwards every server frame read so far to the client, watching
    /// ReadyForQuery and ParameterStatus; releases an idle server in
    /// transaction mode.
    async fn on_server_data(&mut self) -> Result<(), ClientError> {
        let Some(server) = self.server.as_mut() else {
            return Ok(());
        };
        let server = &mut **server;
        let bad = |e: ProtocolError| ClientError::ServerLost(e.into());
        while let Some(item) = server.splitter.next(&mut server.rbuf).map_err(bad)? {
            match item {
                Item::Chunk(b) => self.to_client.push(b),
                Item::Frame(mut f) => {
                    match f.tag() {
                        b'Z' => {
                            self.cancelled_at = None;
                            let status = msg::ready_for_query(f.body()).map_err(bad)?;
                            server.state.on_ready(status);
                            if self.mode == PoolMode::Statement && status != msg::TxStatus::Idle {
                                return Err(ClientError::TransactionInStatementMode);
                            }
                            finish_timers(
                                &self.pool,
                                &mut self.query_start,
                                &mut self.xact_start,
                                status,
                            );
                            // The next query of a pipeline runs from now,
                            // under its own `query_timeout`.
                            if server.state.query_in_progress() {
                                start_timers(&mut self.query_start, &mut self.xact_start);
                            }
                        }
                        b'E' => {
                            server.state.on_error();
                            // Counted as the client sees it: pgtarn's own
                            // error in place of its refusal's.
                            let made = self.translator.as_ref();
                            let made = made.and_then(|t| t.replies.refusal_error(f.body()));
                            match made.and_then(|m| Frame::from_raw(m.clone())) {
                                Some(m) => count_error(&self.pool, m.body()),
                                None => count_error(&self.pool, f.body()),
                            }
                            if self.cancelled_at.is_some() {
                                f = query_timeout_error(f);
                            }
                        }
                        b'S' => {
                            server.synced_params = None;
                            note_setting(&mut server.settings, f.body()).map_err(bad)?
                        }
                        b'G' => server.state.on_copy_in(),
                        _ => {}
                    }
                    match self.translator.as_mut() {
                        Some(t) => t.server_frame(f, server, &mut self.to_client),
                        None => self.to_client.push(f.into_raw()),
                    }
                }
            }
        }
        self.flush_to_client().await?;
        self.release_if_idle().await
    }

    /// Writes the queued client frames to the server. While the server
    /// takes no more, its output is read and relayed meanwhile: a server
    /// blocked writing results that nobody reads would never read the rest
    /// of ours (a client pipelining many queries with large results).
    /// `query_timeout` applies meanwhile: a query that blocks (on a lock,
    /// say) with a long pipeline behind it takes none of it. So does an
    /// admin's `KILL`.
    async fn flush_to_server(&mut self) -> Result<(), ClientError> {
        loop {
            let timer = match self.next_timer() {
                t @ Some((_, Timer::Query | Timer::CancelWait)) => t,
                _ => None,
            };
            let Some(server) = self.server.as_mut() else {
                return Ok(());
            };
            let server = &mut **server;
            let to_server = &mut self.to_server;
            make_room(&mut server.rbuf);
            let flush = std::future::poll_fn(|cx| {
                if let Poll::Ready(r) = to_server.poll_flush(&mut server.stream, cx) {
                    return Poll::Ready(Ok(r));
                }
                let read = tokio_util::io::poll_read_buf(
                    Pin::new(&mut server.stream),
                    cx,
                    &mut server.rbuf,
                );
                read.map(Err)
            });
            let step = tokio::select! {
                biased;
                step = flush => step,
                r = killed(&self.listed, KillReason::Admin) => return Err(r.into()),
                t = expiry(timer) => {
                    self.on_timeout(t)?;
                    continue;
                }
            };
            match step {
                Ok(flushed) => return flushed.map_err(|e| ClientError::ServerLost(e.into())),
                Err(Ok(0)) => return Err(ClientError::ServerLost(BackendError::Closed)),
                Err(Ok(n)) => {
                    self.pool.stats.sent.inc_by(n as u64);
                    self.on_server_data().await?;
                }
                Err(Err(e)) => return Err(ClientError::ServerLost(e.into())),
            }
        }
    }

    /// In transaction mode, gives the server back once it is idle with
    /// nothing owed to the client and no message half-way in either
    /// direction (the client may be in the middle of a large CopyData whose
    /// COPY the server has already ended with an error: its tail must
    /// reach that server, which ignores it, not the next one).
    async fn release_if_idle(&mut self) -> Result<(), ClientError> {
        let Some(server) = self.server.as_ref() else {
            return Ok(());
        };
        let settled = self
            .translator
            .as_ref()
            .is_none_or(|t| t.replies.is_empty());
        let idle = server.state.is_idle()
            && self.to_server.is_empty()
            && !server.splitter.in_stream()
            && !self.csplit.in_stream()
            && settled;
        if idle && self.mode.shares_servers() {
            if !self.changed.is_empty() {
                self.track_settings().await?;
            }
            self.release();
        }
        Ok(())
    }

    /// Reads back the settings the client changed, on the server that ran
    /// the change, so that they follow the client to other servers.
    async fn track_settings(&mut self) -> Result<(), ClientError> {
        let changed = std::mem::take(&mut self.changed);
        let Some(server) = self.server.as_mut() else {
            return Ok(());
        };
        server.synced_params = None;
        if changed.reset_all {
            self.params.reset_to_startup();
            // Settings the server does not report are back to their
            // defaults; those it reports are what it last reported (and
            // the client was told): not the login value where
            // `connect_query` set it, which the reset undid. The client
            // keeps what it was told; other clients get the login value.
            let defaults = lowercase_map(&self.defaults);
            server.settings.retain(|k, _| defaults.contains_key(k));
            for (k, login) in defaults {
                let now = server.settings.entry(k.clone()).or_insert(login.clone());
                if *now != login {
                    self.params.set(&k, now);
                }
            }
        }
        if changed.names.is_empty() {
            return Ok(());
        }
        let mut columns: Vec<String> = changed
            .names
            .iter()
            .map(|n| format!("pg_catalog.current_setting({}, true)", quote(n)))
            .collect();
        // Whether each RESET held (not rolled back): the setting is at its
        // reset value on this server.
        let resets = changed.resets();
        columns.extend(resets.iter().map(|n| {
            format!(
                "(SELECT setting IS NOT DISTINCT FROM reset_val \
                 FROM pg_catalog.pg_settings WHERE lower(name) = {})",
                quote(n)
            )
        }));
        let sql = format!("SELECT {}", columns.join(", "));
        let read = bounded(self.timeouts.query, server.run_internal_row(&sql));
        let (row, _) = read.await.map_err(ClientError::ServerLost)?;
        let mut row = row.unwrap_or_default().into_iter();
        for (name, value) in changed.names.iter().zip(row.by_ref()) {
            match value {
                Some(v) => {
                    self.params.set(name, &v);
                    server.settings.insert(name.clone(), v);
                }
                None => {
                    self.params.remove(name);
                    server.settings.remove(name);
                }
            }
        }
        // Reset on this server to its default; the client's is the login
        // value, applied at the next checkout.
        for (name, held) in resets.iter().zip(row) {
            if held.as_deref() == Some("t") {
                self.params.reset(name);
            }
        }
        Ok(())
    }

    fn release(&mut self) {
        self.cancel.set(None);
        self.server = None;
        if let Some(l) = &self.listed {
            l.set_idle();
        }
    }

    fn set_state(&self, state: ConnState, at: Instant) {
        if let Some(l) = &self.listed {
            l.set_state_at(state, at);
            if state == ConnState::Idle {
                l.set_link(0);
            }
        }
    }

    /// Gives the server back at the end of the session: reset first in
    /// session mode, discarded after a failure or if it is not idle.
    async fn finish(&mut self, clean: bool) {
        self.cancel.set(None);
        let Some(mut server) = self.server.take() else {
            return;
        };
        if !clean {
            server.discard(CloseReason::ClientError);
            return;
        }
        if self.mode == PoolMode::Session && server.is_reusable() {
            let s = self.pool.settings();
            let reset =
                tokio::time::timeout(s.reset_timeout, server.run_internal(&s.reset_query)).await;
            if !matches!(reset, Ok(Ok(None))) {
                debug!(server = server.id(), "server_reset_query failed");
                server.discard(CloseReason::ResetFailed);
                return;
            }
            // The reset undid it: the next client expects it again.
            if let Some(sql) = &s.connect_query {
                let again = tokio::time::timeout(s.reset_timeout, server.run_connect_query(sql));
                if !matches!(again.await, Ok(Ok(()))) {
                    debug!(server = server.id(), "connect_query failed after the reset");
                    server.discard(CloseReason::ResetFailed);
                    return;
                }
            }
            server.settings = lowercase_map(&self.defaults);
            server.synced_params = None;
        }
        drop(server);
    }
}

/// Most bytes read ahead from a client waiting for a server, to see it
/// leave; past them its socket is no longer watched until it has one.
const WAITING_READ_AHEAD: usize = 64 * 1024;

/// pgtarn's own exchange with a server, bounded by `limit`
/// (`query_timeout`; zero: none).
async fn bounded<T>(
    limit: Duration,
    exchange: impl Future<Output = Result<T, BackendError>>,
) -> Result<T, BackendError> {
    if limit.is_zero() {
        return exchange.await;
    }
    let timed = tokio::time::timeout(limit, exchange).await;
    timed.unwrap_or(Err(BackendError::Timeout(limit)))
}

/// Completes when the client closes its connection (or it fails), keeping
/// what it sends meanwhile in `buf` (up to 64 kB) for later.
pub(crate) async fn client_gone(client: &mut Stream, buf: &mut BytesMut) -> ClientError {
    while buf.len() < WAITING_READ_AHEAD {
        make_room(buf);
        match client.read_buf(buf).await {
            Ok(0) => return std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into(),
            Ok(_) => {}
            Err(e) => return e.into(),
        }
    }
    std::future::pending().await
}

/// Completes when `timer` expires (never if there is none).
async fn expiry(timer: Option<(Instant, Timer)>) -> Timer {
    match timer {
        Some((at, t)) => {
            tokio::time::sleep_until(at.into()).await;
            t
        }
        None => std::future::pending().await,
    }
}

/// The server's "canceling statement due to user request", when pgtarn
/// sent the cancel for `query_timeout`, says so instead.
fn query_timeout_error(f: Frame) -> Frame {
    let is_cancel = msg::error_fields(f.body()).is_ok_and(|e| e.code == QUERY_CANCELED);
    if !is_cancel {
        return f;
    }
    let mut out = BytesMut::new();
    encode::error_response(
        &mut out,
        encode::Severity::Error,
        QUERY_CANCELED,
        "canceling statement due to query_timeout",
        Some("The query ran longer than pgtarn's query_timeout and was cancelled on the server."),
    );
    Frame::from_raw(out.freeze()).unwrap_or(f)
}

/// Completes when the client is asked to end with `at_least` or stronger.
async fn killed(listed: &Option<Listed>, at_least: KillReason) -> KillReason {
    match listed {
        Some(l) => l.killed(at_least).await,
        None => std::future::pending().await,
    }
}

/// The first two NUL-terminated strings of a message body (Parse: name
/// and SQL; Bind: portal and statement).
fn two_strings(body: &[u8]) -> Option<(&[u8], &[u8])> {
    let mut parts = body.splitn(3, |&b| b == 0);
    Some((parts.next()?, parts.next()?))
}

/// Starts the query (and transaction) timers, unless running.
fn start_timers(query: &mut Option<Instant>, xact: &mut Option<Instant>) {
    if query.is_none() {
        let now = Instant::now();
        *query = Some(now);
        xact.get_or_insert(now);
    }
}

/// Records the query (and, at idle, the transaction) that a
/// ReadyForQuery ended.
fn finish_timers(
    pool: &Pool,
    query: &mut Option<Instant>,
    xact: &mut Option<Instant>,
    status: msg::TxStatus,
) {
    let Some(start) = query.take() else { return };
    let now = Instant::now();
    pool.stats.query_done(now - start);
    if status == msg::TxStatus::Idle
        && let Some(start) = xact.take()
    {
        pool.stats.transaction_done(now - start);
    }
}

fn count_error(pool: &Pool, body: &[u8]) {
    if let Ok(e) = msg::error_fields(body) {
        pool.stats.error(&e.code);
    }
}

fn note_setting(settings: &mut BTreeMap<String, String>, body: &[u8]) -> Result<(), ProtocolError> {
    let (k, v) = msg::parameter_status(body)?;
    settings.insert(k.to_ascii_lowercase(), v.to_owned());
    Ok(())
}

fn lowercase_map(params: &[(String, String)]) -> BTreeMap<String, String> {
    params
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
        .collect()
}
