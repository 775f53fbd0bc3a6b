//! Named prepared statements in transaction mode: rewriting a client's
//! extended-protocol messages for whichever server serves it.
//!
//! A client's Parse of `s1` becomes a Parse of the statement's pgtarn-wide
//! name, sent only if the server does not have it yet (otherwise pgtarn
//! answers ParseComplete itself). Bind and Describe of `s1` are rewritten,
//! preceded by a Parse if this server has not seen the statement. Close of
//! `s1` is answered by pgtarn (the server keeps the shared statement until
//! evicted). `DEALLOCATE`/`DISCARD ALL` sent as SQL are followed.
//!
//! Each Parse pgtarn sends is followed by its own Describe, so that the
//! pool knows the statement's row shape. DDL on another connection may
//! change it while no server has said so: a client's Bind or Describe
//! that needs the statement prepared afresh therefore waits for that
//! Describe (one round trip, on a server's first use of the statement),
//! and a changed shape fails the message as Postgres fails a statement
//! whose result type changed (`0A000`), instead of sending rows of a shape
//! the client never described.
//!
//! What pgtarn does for a message it answers itself (a Parse recorded, a
//! Close applied) is undone if Postgres would have skipped the message
//! after an earlier error. A message pgtarn refuses with its own error
//! (a duplicate name, a client limit, an outdated statement) is replaced,
//! on the server, by a Parse that fails for sure ([`REFUSAL`]), so that
//! the server fails the transaction and skips to Sync exactly as it would
//! have with Postgres' own error.

use bytes::{BufMut, Bytes, BytesMut};

use std::sync::Arc;

use super::prepared::{ClientStatements, Statement, StatementError, global_name};
use super::replies::{self, Copy, Effect, Expect, Prepared, REFUSAL, ReplyQueue, Route};
use crate::backend::ServerConn;
use crate::backend::statements::Cached;
use crate::net::Outbox;
use crate::pool::{KnownStatements, ShapeCheck};
use crate::protocol::backend::TxStatus;
use crate::protocol::encode::{self, Severity};
use crate::protocol::extended::{self, close_complete, parse_complete};
use crate::protocol::frame::HEADER_LEN;
use crate::protocol::{Frame, ProtocolError, sqlstate};

/// Per-client statement tracking and reply bookkeeping.
#[derive(Debug)]
pub struct Translator {
    /// The client's statements.
    pub statements: ClientStatements,
    /// Replies owed to the client.
    pub replies: ReplyQueue,
    /// Most statements kept prepared on one server.
    max_server_statements: usize,
    /// Statements that parsed before on this pool's servers.
    known: Arc<KnownStatements>,
    /// The client's unnamed statement is `DISCARD ALL`/`DEALLOCATE ALL`.
    unnamed_discards: bool,
    /// The client's unnamed portal runs `DISCARD ALL`/`DEALLOCATE ALL`.
    portal_discards: bool,
    buf: BytesMut,
    effects: Vec<Effect>,
}

/// Where a frame goes.
struct Sink<'a> {
    server: &'a mut ServerConn,
    to_server: &'a mut Outbox,
    to_client: &'a mut Outbox,
}

impl Sink<'_> {
    fn send(
        &mut self,
        replies: &mut ReplyQueue,
        frame: Bytes,
        tag: u8,
        expect: Option<Expect>,
        visible: bool,
    ) {
        self.server.state.on_client_message(tag);
        self.to_server.push(frame);
        if let Some(e) = expect {
            replies.expect(e, visible);
        }
    }
}

impl Translator {
    /// A translator for one client.
    pub fn new(
        statements: ClientStatements,
        max_server_statements: usize,
        known: Arc<KnownStatements>,
    ) -> Self {
        Translator {
            statements,
            replies: ReplyQueue::default(),
            max_server_statements,
            known,
            unnamed_discards: false,
            portal_discards: false,
            buf: BytesMut::new(),
            effects: Vec::new(),
        }
    }

    /// Answers `frame` without a server if possible (no server attached):
    /// Parse of a statement known to parse, Close of a statement, Flush,
    /// Sync, `DEALLOCATE name`, and anything while skipping to Sync. True
    /// if handled.
    pub fn answer_locally(
        &mut self,
        frame: &Frame,
        to_client: &mut Outbox,
    ) -> Result<bool, ProtocolError> {
        let tag = frame.tag();
        if tag == b'S' {
            self.replies.local_sync();
            let mut b = BytesMut::new();
            encode::ready_for_query(&mut b, TxStatus::Idle);
            self.replies.made(b.freeze(), to_client);
            return Ok(true);
        }
        // (CopyData, CopyDone and CopyFail never get here without a server:
        // the session drops them, as Postgres ignores them outside COPY.)
        if self.replies.skipping() || tag == b'H' {
            return Ok(true);
        }
        Ok(match tag {
            b'P' => self.parse_known(frame, to_client)?,
            b'C' => self.close(frame, to_client)?,
            b'Q' => self.deallocate(frame, TxStatus::Idle, to_client),
            _ => false,
        })
    }

    /// Handles a client frame for the attached `server`. Returns the frame
    /// back if it must wait for a row-shape check of a statement just
    /// prepared on this server: it is to be handed in again once
    /// [`ReplyQueue::checking`] is false (the replies before it have been
    /// read).
    pub fn client_frame(
        &mut self,
        frame: Frame,
        server: &mut ServerConn,
        to_server: &mut Outbox,
        to_client: &mut Outbox,
    ) -> Result<Option<Frame>, ProtocolError> {
        let tag = frame.tag();
        // Copy messages pass: they may end a copy that failed, and Postgres
        // ignores them outside one.
        if self.replies.skipping() && !matches!(tag, b'S' | b'd' | b'c' | b'f') {
            return Ok(None);
        }
        let mut sink = Sink {
            server,
            to_server,
            to_client,
        };
        match tag {
            b'P' => self.parse(frame, &mut sink)?,
            b'B' => return self.bind(frame, &mut sink),
            b'D' => return self.describe(frame, &mut sink),
            b'C' => {
                if !self.close(&frame, sink.to_client)? {
                    sink.send(
                        &mut self.replies,
                        frame.into_raw(),
                        tag,
                        Some(Expect::Close(None)),
                        true,
                    );
                }
            }
            b'Q' => self.query(frame, &mut sink),
            b'E' => {
                let expect = match self.portal_discards && frame.body().first() == Some(&0) {
                    true => Expect::ExecuteDiscardAll(self.statements.snapshot()),
                    false => Expect::Execute,
                };
                sink.send(&mut self.replies, frame.into_raw(), tag, Some(expect), true)
            }
            b'S' => sink.send(
                &mut self.replies,
                frame.into_raw(),
                tag,
                Some(Expect::Sync),
                true,
            ),
            b'F' => sink.send(
                &mut self.replies,
                frame.into_raw(),
                tag,
                Some(Expect::Query),
                true,
            ),
            b'c' | b'f' => {
                self.replies.copy_ended();
                sink.send(&mut self.replies, frame.into_raw(), tag, None, true)
            }
            _ => sink.send(&mut self.replies, frame.into_raw(), tag, None, true),
        }
        Ok(None)
    }

    /// Forwards a server frame to the client unless it answers pgtarn's
    /// own message, then releases the made-up replies it made due; applies
    /// what it means to `server`'s cache and to the client's statements.
    pub fn server_frame(&mut self, frame: Frame, server: &mut ServerConn, to_client: &mut Outbox) {
        let tag = frame.tag();
        if tag == b'E' {
            server.state.on_error();
        }
        // However it was sent (in a multi-statement query, say), the server
        // dropped every statement.
        if tag == b'C' && matches!(frame.body(), b"DEALLOCATE ALL\0" | b"DISCARD ALL\0") {
            server.statements.mark_all_outdated();
        }
        let route = self.replies.on_server(tag, frame.body(), &mut self.effects);
        if route == Route::Forward {
            to_client.push(frame.into_raw());
        }
        let status = server.state.tx_status();
        self.replies
            .release_due(to_client, status, &mut self.effects);
        for effect in self.effects.drain(..) {
            match effect {
                Effect::Prepared(g) => self.known.insert(g),
                Effect::NotPrepared(p) => {
                    server.statements.remove(&p.global);
                    if let Some(name) = p.client {
                        self.statements.remove(&name);
                    }
                }
                Effect::NotClosed(g) => server.statements.keep_outdated(g),
                Effect::Stale((g, generation)) => {
                    self.known.invalidate(g.clone(), generation);
                    server.statements.keep_outdated(g);
                }
                Effect::Unparsed(name) => {
                    self.statements.remove(&name);
                }
                Effect::Unclosed(name, stmt) => self.statements.restore(name, stmt),
                Effect::Discarded(snapshot) => self.statements.forget(snapshot),
                Effect::Shape((g, generation), client, shape) => {
                    let ShapeCheck::Changed(now) = self.known.check_shape(&g, generation, shape)
                    else {
                        continue;
                    };
                    // The copy has the new result type: current again, if
                    // it is still there (a later message of the pipeline
                    // may have evicted it).
                    server.statements.restamp(&g, generation, now);
                    if let Some(name) = client {
                        self.statements.restamp(&name, &g, generation, now);
                    }
                }
            }
        }
    }

    fn parse(&mut self, frame: Frame, sink: &mut Sink<'_>) -> Result<(), ProtocolError> {
        let p = extended::parse(frame.body())?;
        if p.name.is_empty() {
            self.unnamed_discards = discards_all(p.definition);
            sink.send(
                &mut self.replies,
                frame.into_raw(),
                b'P',
                Some(Expect::Parse(None)),
                true,
            );
            return Ok(());
        }
        let stmt = match self.add(p.name, p.definition) {
            Ok(s) => s,
            Err(e) => {
                self.refuse_on_server(refusal(&e), sink);
                return Ok(());
            }
        };
        match Self::lookup(&stmt, sink) {
            Cached::Fresh => {
                let undo = self.undo(|| Effect::Unparsed(p.name.to_owned()));
                self.replies
                    .made_undoable(parse_complete(), undo, sink.to_client)
            }
            cached => self.prepare(&stmt, cached, Some(p.name.to_owned()), true, sink),
        }
        Ok(())
    }

    /// Records the client's statement at the pool's current generation.
    fn add(&mut self, name: &str, definition: &[u8]) -> Result<Arc<Statement>, StatementError> {
        let global = global_name(definition);
        let generation = self.known.generation(&global);
        self.statements
            .add(name, definition, (global, generation), &mut self.buf)
    }

    /// A Parse of a statement that parsed before on this pool: recorded and
    /// answered without a server. False if it must go to a server.
    fn parse_known(
        &mut self,
        frame: &Frame,
        to_client: &mut Outbox,
    ) -> Result<bool, ProtocolError> {
        let p = extended::parse(frame.body())?;
        if p.name.is_empty() || !self.known.contains(&global_name(p.definition)) {
            return Ok(false);
        }
        match self.add(p.name, p.definition) {
            Ok(_) => self.replies.made(parse_complete(), to_client),
            Err(e) => self.replies.made_error(refusal(&e), to_client),
        }
        Ok(true)
    }

    /// What undoes a change made for a message pgtarn answers, needed only
    /// if replies are still owed before it (one of them may be an error
    /// that makes Postgres skip the message).
    fn undo(&self, effect: impl FnOnce() -> Effect) -> Option<Effect> {
        (!self.replies.is_empty()).then(effect)
    }

    /// What the server has of `stmt`, at the generation the client parsed
    /// it (the pool's current one wherever this is called).
    fn lookup(stmt: &Statement, sink: &mut Sink<'_>) -> Cached {
        sink.server.statements.lookup(&stmt.name, stmt.generation)
    }

    /// Sends the Parse for `stmt` (after closing an outdated copy or an
    /// evicted statement, if needed).
    fn prepare(
        &mut self,
        stmt: &Statement,
        cached: Cached,
        client: Option<String>,
        visible: bool,
        sink: &mut Sink<'_>,
    ) {
        if cached == Cached::Outdated {
            self.close_on_server(stmt.name.clone(), sink);
        }
        let capacity = self.max_server_statements;
        if let Some(victim) =
            sink.server
                .statements
                .insert(stmt.name.clone(), stmt.generation, capacity)
        {
            self.close_on_server(victim, sink);
        }
        let expect = Expect::Parse(Some(Prepared {
            global: stmt.name.clone(),
            client: client.clone(),
        }));
        sink.send(
            &mut self.replies,
            stmt.parse.clone(),
            b'P',
            Some(expect),
            visible,
        );
        // Its row shape, to check against the statement's.
        let describe = extended::make_statement_target(&mut self.buf, b'D', &stmt.name).into_raw();
        let expect = Expect::Shape((stmt.name.clone(), stmt.generation), client);
        sink.send(&mut self.replies, describe, b'D', Some(expect), false);
    }

    /// Sends a Close of server statement `name` (evicted or outdated)
    /// whose reply the client does not see.
    fn close_on_server(&mut self, name: Arc<str>, sink: &mut Sink<'_>) {
        let close = extended::make_statement_target(&mut self.buf, b'C', &name).into_raw();
        let expect = Expect::Close(Some(name));
        sink.send(&mut self.replies, close, b'C', Some(expect), false);
    }

    /// Makes sure the statement the client calls `name` exists on the
    /// server, as the client knows it.
    ///
    /// A copy prepared afresh on this server may have a new result type
    /// that no server has reported yet (DDL on another connection): when
    /// the statement's row shape is known, the client's message waits
    /// ([`Use::Held`]) until the copy has described its own, so that a
    /// changed one fails as Postgres fails a statement whose result type
    /// changed.
    fn ensure(&mut self, name: &str, sink: &mut Sink<'_>) -> Use {
        let Some(stmt) = self.statements.get(name).cloned() else {
            return Use::Unknown;
        };
        let generation = self.known.generation(&stmt.name);
        if stmt.generation != generation {
            return Use::Outdated;
        }
        match Self::lookup(&stmt, sink) {
            Cached::Fresh => Use::Ready((stmt.name.clone(), generation)),
            cached => {
                let check = self.known.needs_check(&stmt.name, generation);
                self.prepare(&stmt, cached, None, false, sink);
                if !check {
                    return Use::Ready((stmt.name.clone(), generation));
                }
                sink.send(&mut self.replies, flush(), b'H', None, false);
                Use::Held
            }
        }
    }

    fn bind(&mut self, frame: Frame, sink: &mut Sink<'_>) -> Result<Option<Frame>, ProtocolError> {
        let b = extended::bind(frame.body())?;
        let unnamed_portal = b.portal.is_empty();
        let discards = if b.statement.is_empty() {
            self.unnamed_discards
        } else {
            self.statements.get(b.statement).is_some_and(|s| {
                extended::parse(&s.parse[HEADER_LEN..]).is_ok_and(|p| discards_all(p.definition))
            })
        };
        let stmt = if b.statement.is_empty() {
            Use::Unknown
        } else {
            self.ensure(b.statement, sink)
        };
        match stmt {
            Use::Held => return Ok(Some(frame)),
            Use::Ready(copy) => {
                let bind = extended::make_bind(&mut self.buf, &b, &copy.0).into_raw();
                sink.send(
                    &mut self.replies,
                    bind,
                    b'B',
                    Some(Expect::Bind(Some(copy))),
                    true,
                );
            }
            Use::Outdated => self.refuse_on_server(outdated_error(), sink),
            // Unnamed, or unknown: Postgres reports the unknown name itself.
            Use::Unknown => sink.send(
                &mut self.replies,
                frame.into_raw(),
                b'B',
                Some(Expect::Bind(None)),
                true,
            ),
        }
        // Bound, it runs as its simple-query form does (see `query`): the
        // server's statements may be gone from now on, the client's once
        // the Execute completes.
        if discards {
            sink.server.statements.mark_all_outdated();
        }
        if unnamed_portal {
            self.portal_discards = discards;
        }
        Ok(None)
    }

    fn describe(
        &mut self,
        frame: Frame,
        sink: &mut Sink<'_>,
    ) -> Result<Option<Frame>, ProtocolError> {
        let (kind, name) = extended::target(frame.body())?;
        if kind == b'P' {
            sink.send(
                &mut self.replies,
                frame.into_raw(),
                b'D',
                Some(Expect::DescribePortal),
                true,
            );
            return Ok(None);
        }
        let stmt = if name.is_empty() {
            Use::Unknown
        } else {
            self.ensure(name, sink)
        };
        match stmt {
            Use::Held => return Ok(Some(frame)),
            Use::Ready(copy) => {
                let raw = extended::make_statement_target(&mut self.buf, b'D', &copy.0).into_raw();
                sink.send(
                    &mut self.replies,
                    raw,
                    b'D',
                    Some(Expect::DescribeStatement(Some(copy))),
                    true,
                );
            }
            Use::Outdated => self.refuse_on_server(outdated_error(), sink),
            Use::Unknown => {
                let expect = Some(Expect::DescribeStatement(None));
                sink.send(&mut self.replies, frame.into_raw(), b'D', expect, true)
            }
        }
        Ok(None)
    }

    /// Refuses a client message with `error` while a server is attached:
    /// the server gets the failing [`REFUSAL`] Parse in its place, so that
    /// it fails the transaction and skips to Sync as Postgres would after
    /// its own error; the client gets `error` in place of the server's.
    fn refuse_on_server(&mut self, error: Bytes, sink: &mut Sink<'_>) {
        let (name, definition) = REFUSAL;
        let parse = extended::make_parse(&mut self.buf, name, definition).into_raw();
        let expect = Some(Expect::Refused(error));
        sink.send(&mut self.replies, parse, b'P', expect, false);
        self.replies.skip_to_sync();
    }

    /// Close of a named statement: forgotten, answered by pgtarn. False
    /// for portals and the unnamed statement, which go to the server.
    fn close(&mut self, frame: &Frame, to_client: &mut Outbox) -> Result<bool, ProtocolError> {
        let (kind, name) = extended::target(frame.body())?;
        if kind == b'P' || name.is_empty() {
            return Ok(false);
        }
        let undo = match self.statements.take(name) {
            Some(stmt) => self.undo(|| Effect::Unclosed(name.to_owned(), stmt)),
            None => None,
        };
        self.replies
            .made_undoable(close_complete(), undo, to_client);
        Ok(true)
    }

    fn query(&mut self, frame: Frame, sink: &mut Sink<'_>) {
        let status = sink.server.state.tx_status();
        if self.deallocate(&frame, status, sink.to_client) {
            return;
        }
        let mut expect = Expect::Query;
        if let Some(which) = discard_all(frame.body()) {
            sink.server.statements.mark_all_outdated();
            if self.replies.is_empty() && which.runs_in(status) {
                self.statements.clear();
            } else {
                expect = Expect::DiscardAll(self.statements.snapshot());
            }
        }
        sink.send(
            &mut self.replies,
            frame.into_raw(),
            b'Q',
            Some(expect),
            true,
        );
    }

    /// `DEALLOCATE name` for a statement the client prepared through the
    /// protocol: forgotten and answered by pgtarn, with the transaction
    /// status of the moment its reply is due (`status` if that is now).
    /// In a failed transaction it fails with 25P02 and the statement
    /// stays, as in Postgres. True if handled.
    fn deallocate(&mut self, frame: &Frame, status: TxStatus, to_client: &mut Outbox) -> bool {
        let Some(name) = deallocate_target(frame.body()) else {
            return false;
        };
        if self.statements.get(&name).is_none() {
            return false;
        }
        if self.replies.is_empty() && status == TxStatus::Failed {
            self.replies
                .made(replies::failed_transaction_reply(), to_client);
            return true;
        }
        if let Some(stmt) = self.statements.take(&name) {
            let undo = Effect::Unclosed(name, stmt);
            self.replies.deallocated(undo, status, to_client);
        }
        true
    }
}

/// How a client's message may use the statement it names.
enum Use {
    /// Through this server copy.
    Ready(Copy),
    /// Not yet: the copy just prepared must describe its row shape first.
    Held,
    /// Not at all: its result type changed since the client parsed it.
    Outdated,
    /// The client has no such statement (or it is the unnamed one).
    Unknown,
}

/// A Flush: the server sends what it has.
fn flush() -> Bytes {
    let mut b = BytesMut::new();
    encode::message(&mut b, b'H', |_| {});
    b.freeze()
}

/// The error for a Parse pgtarn refuses.
fn refusal(e: &StatementError) -> Bytes {
    let code = match e {
        StatementError::AlreadyExists(_) => "42P05",
        StatementError::TooMany(_) | StatementError::TooLarge(_) => {
            sqlstate::CONFIGURATION_LIMIT_EXCEEDED
        }
    };
    let mut b = BytesMut::new();
    encode::error_response(&mut b, Severity::Error, code, &e.to_string(), None);
    b.freeze()
}

/// The error for a statement the client parsed before its result type
/// changed: it fails as it would on Postgres until the client prepares it
/// again. It carries Postgres' file and routine fields too: asyncpg and
/// pgjdbc recognise this error by its routine (`RevalidateCachedQuery`),
/// not its text, to re-prepare and retry.
fn outdated_error() -> Bytes {
    let mut b = BytesMut::new();
    encode::message(&mut b, b'E', |b| {
        let fields: [(u8, &[u8]); 6] = [
            (b'S', b"ERROR"),
            (b'V', b"ERROR"),
            (b'C', sqlstate::FEATURE_NOT_SUPPORTED.as_bytes()),
            (b'M', b"cached plan must not change result type"),
            (b'F', b"plancache.c"),
            (b'R', b"RevalidateCachedQuery"),
        ];
        for (field, value) in fields {
            b.put_u8(field);
            encode::put_cstr(b, value);
        }
        b.put_u8(0);
    });
    b.freeze()
}

/// The words of a simple query, lower-cased, without a trailing `;`.
fn words(body: &[u8]) -> Option<Vec<String>> {
    let text = std::str::from_utf8(body.strip_suffix(b"\0")?).ok()?;
    let text = text.trim().trim_end_matches(';').trim();
    if text.len() > 200 || text.contains(';') {
        return None;
    }
    Some(text.split_ascii_whitespace().map(str::to_owned).collect())
}

/// The statement named by `DEALLOCATE [PREPARE] name` (not `ALL`).
fn deallocate_target(body: &[u8]) -> Option<String> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace())?;
    if !first.eq_ignore_ascii_case(&b'd') {
        return None;
    }
    let w = words(body)?;
    let name = match w.as_slice() {
        [d, p, name]
            if d.eq_ignore_ascii_case("deallocate") && p.eq_ignore_ascii_case("prepare") =>
        {
            name
        }
        [d, name] if d.eq_ignore_ascii_case("deallocate") => name,
        _ => return None,
    };
    if name.eq_ignore_ascii_case("all") {
        return None;
    }
    Some(
        match name.strip_prefix('"').and_then(|n| n.strip_suffix('"')) {
            Some(quoted) => quoted.replace("\"\"", "\""),
            None => name.to_ascii_lowercase(),
        },
    )
}

/// True if the query of a Parse definition is `DISCARD ALL` or
/// `DEALLOCATE [PREPARE] ALL`.
fn discards_all(definition: &[u8]) -> bool {
    let query = extended::query_text(definition);
    discard_all(&definition[..definition.len().min(query.len() + 1)]).is_some()
}

/// `DISCARD ALL` or `DEALLOCATE [PREPARE] ALL`.
/// `DISCARD ALL` or `DEALLOCATE [PREPARE] ALL`, which forget every
/// statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DiscardAll {
    Discard,
    Deallocate,
}

impl DiscardAll {
    /// True if Postgres runs it with the session in `status`: neither runs
    /// in a failed transaction, `DISCARD ALL` not in a transaction block.
    fn runs_in(self, status: TxStatus) -> bool {
        match status {
            TxStatus::Idle => true,
            TxStatus::InTransaction => self == DiscardAll::Deallocate,
            TxStatus::Failed => false,
        }
    }
}

/// Which statement-forgetting query `body` (a Query's) is, if any.
fn discard_all(body: &[u8]) -> Option<DiscardAll> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace())?;
    if !first.eq_ignore_ascii_case(&b'd') {
        return None;
    }
    let w = words(body)?;
    let lower: Vec<String> = w.iter().map(|s| s.to_ascii_lowercase()).collect();
    match lower
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["discard", "all"] => Some(DiscardAll::Discard),
        ["deallocate", "all"] | ["deallocate", "prepare", "all"] => Some(DiscardAll::Deallocate),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_deallocate_and_discard() {
        assert_eq!(deallocate_target(b"DEALLOCATE s1\0").as_deref(), Some("s1"));
        assert_eq!(
            deallocate_target(b"  deallocate prepare S1 ;\0").as_deref(),
            Some("s1")
        );
        assert_eq!(
            deallocate_target(b"deallocate \"My\"\"S\"\0").as_deref(),
            Some("My\"S")
        );
        assert_eq!(deallocate_target(b"deallocate all\0"), None);
        assert_eq!(deallocate_target(b"select 1\0"), None);
        assert_eq!(deallocate_target(b"deallocate a; select 1\0"), None);
        assert_eq!(discard_all(b"DISCARD ALL\0"), Some(DiscardAll::Discard));
        assert_eq!(
            discard_all(b"deallocate prepare all;\0"),
            Some(DiscardAll::Deallocate)
        );
        assert_eq!(discard_all(b"discard plans\0"), None);
        assert!(DiscardAll::Deallocate.runs_in(TxStatus::InTransaction));
        assert!(!DiscardAll::Discard.runs_in(TxStatus::InTransaction));
        assert!(!DiscardAll::Deallocate.runs_in(TxStatus::Failed));
    }
}
