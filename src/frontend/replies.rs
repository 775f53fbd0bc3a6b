//! The replies a client is owed, in order, sans-IO.
//!
//! When pgtarn rewrites a client's extended-protocol messages it may send
//! messages the client did not (a Parse to prepare a statement on this
//! server, a Close to evict one) and skip messages the client did (a Parse
//! for a statement the server already has, a Close). Postgres answers
//! every message in order, so one queue entry per message sent says whose
//! reply comes next: replies to pgtarn's own messages are swallowed, and
//! made-up replies (ParseComplete, CloseComplete, errors) are released to the
//! client exactly when every earlier reply has been delivered.
//!
//! After an error in an extended-protocol message Postgres skips every
//! message up to the next Sync; the queue does the same with its entries.
//! A message pgtarn answered itself is skipped too: its made-up reply is
//! dropped and what pgtarn did for it (a statement named or forgotten) is
//! undone, latest first.
//!
//! A message pgtarn refuses (a duplicate statement name, a client limit, an
//! outdated statement) must fail the server's transaction as Postgres'
//! own error would, so pgtarn sends the server a Parse that fails for sure
//! in its place ([`Expect::Refused`]) and delivers its own error instead of
//! the server's.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::prepared::{Snapshot, Statement};
use crate::backend::state::CopyTracker;
use crate::net::Outbox;
use crate::protocol::backend::{self, TxStatus};
use crate::protocol::encode::{self, Severity};

/// `in_failed_sql_transaction`: Postgres' error for commands in a failed
/// transaction block.
const IN_FAILED_TRANSACTION: &str = "25P02";

/// The name and definition (query, no parameter types) of the Parse
/// pgtarn sends the server in place of a client message it refuses. It is
/// named so that the client's unnamed statement survives, as it does when
/// Postgres refuses a named Parse. The query passes the parser and fails
/// analysis whatever the catalog holds, with [`REFUSAL_CODE`]; in a
/// failed transaction Postgres reports 25P02 first, as it would for the
/// client's message, and that error (like any other but the planned one)
/// reaches the client as it is.
pub const REFUSAL: (&str, &[u8]) = (
    "pgtarn_refused",
    b"/* pgtarn refused a client message; this fails on purpose */ SELECT 1 ORDER BY 2\0\0\0",
);

/// `invalid_column_reference`: how [`REFUSAL`] fails as planned.
const REFUSAL_CODE: &str = "42P10";

/// A statement pgtarn sent a Parse for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    /// Its pgtarn-wide name.
    pub global: Arc<str>,
    /// The client's name, if this is the client's own Parse.
    pub client: Option<String>,
}

/// A server's copy of a statement: its global name and generation.
pub type Copy = (Arc<str>, u32);

/// Which message a reply belongs to; says which server message ends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// Parse: ParseComplete. `Some` for named statements.
    Parse(Option<Prepared>),
    /// Bind: BindComplete. For named statements, the server copy used
    /// (global name and generation).
    Bind(Option<Copy>),
    /// Describe of a statement: ParameterDescription, then RowDescription
    /// or NoData. For named statements, the server copy used.
    DescribeStatement(Option<Copy>),
    /// Describe of a portal: RowDescription or NoData.
    DescribePortal,
    /// Execute: CommandComplete, EmptyQueryResponse or PortalSuspended.
    Execute,
    /// Close: CloseComplete. `Some` for a statement pgtarn closed itself
    /// (evicted or outdated), which still exists if the Close is skipped.
    Close(Option<Arc<str>>),
    /// Sync: ReadyForQuery.
    Sync,
    /// Query or FunctionCall: ReadyForQuery (errors are part of it).
    Query,
    /// A Query that is `DISCARD ALL` or `DEALLOCATE ALL`, whose outcome
    /// the client's statements (those it had when it was sent) wait for:
    /// its CommandComplete means it ran.
    DiscardAll(Snapshot),
    /// The same sent as an Execute (of a bound `DISCARD ALL` or
    /// `DEALLOCATE ALL`): CommandComplete.
    ExecuteDiscardAll(Snapshot),
    /// pgtarn's failing Parse standing for a client message it refused:
    /// an ErrorResponse, replaced by this error for the client.
    Refused(Bytes),
    /// pgtarn's Describe of a copy it just prepared: ParameterDescription,
    /// then RowDescription or NoData, whose row shape is checked against
    /// the statement's ([`Effect::Shape`]). With the client's name if
    /// this is the client's own Parse.
    Shape(Copy, Option<String>),
}

impl Expect {
    fn ended_by(&self, tag: u8) -> bool {
        match self {
            Expect::Parse(_) | Expect::Refused(_) => tag == b'1',
            Expect::Bind(_) => tag == b'2',
            Expect::DescribeStatement(_) | Expect::DescribePortal | Expect::Shape(..) => {
                matches!(tag, b'T' | b'n')
            }
            Expect::Execute | Expect::ExecuteDiscardAll(_) => matches!(tag, b'C' | b'I' | b's'),
            Expect::Close(_) => tag == b'3',
            Expect::Sync | Expect::Query | Expect::DiscardAll(_) => tag == b'Z',
        }
    }
}

/// A reply pgtarn makes up.
#[derive(Debug)]
enum Made {
    /// These bytes.
    Reply(Bytes),
    /// `DEALLOCATE`'s CommandComplete and ReadyForQuery, with the
    /// transaction status of the moment it is released; in a failed
    /// transaction, Postgres' 25P02 error instead.
    Deallocate,
}

#[derive(Debug)]
enum Entry {
    /// A reply from the server; `visible` unless pgtarn sent the message.
    Server { expect: Expect, visible: bool },
    /// A reply pgtarn made up, released when it reaches the front. `undo`
    /// is what to apply if Postgres would not have run the message it
    /// answers (skipped after an error, or in a failed transaction).
    Made { reply: Made, undo: Option<Effect> },
}

/// What a server message means for the statement caches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// A Parse succeeded.
    Prepared(Arc<str>),
    /// A Parse failed or was skipped: the statement does not exist.
    NotPrepared(Prepared),
    /// A Close pgtarn sent itself was skipped: the statement still exists.
    NotClosed(Arc<str>),
    /// The statement's result type changed under this copy (after DDL).
    Stale(Copy),
    /// A client's Parse that pgtarn answered was skipped: the client's
    /// name is free again.
    Unparsed(String),
    /// A client's Close or `DEALLOCATE` that pgtarn answered did not
    /// happen: the client still has the statement.
    Unclosed(String, Arc<Statement>),
    /// A `DISCARD ALL` or `DEALLOCATE ALL` ran: the client's statements
    /// of that moment are gone.
    Discarded(Snapshot),
    /// A copy prepared afresh described this row shape
    /// ([`backend::row_shape`]); with the client's name if this was the
    /// client's own Parse.
    Shape(Copy, Option<String>, u64),
}

/// Whether a server message goes on to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Send it to the client.
    Forward,
    /// Drop it: it answers a message pgtarn sent itself.
    Swallow,
}

/// The queue of replies owed to one client.
#[derive(Debug, Default)]
pub struct ReplyQueue {
    entries: VecDeque<Entry>,
    skipping: bool,
    /// COPY FROM STDIN, where the server ignores Sync.
    copy: CopyTracker,
}

impl ReplyQueue {
    /// True when no reply is owed.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// True while client messages must be dropped until the next Sync
    /// (after an error, as Postgres does).
    pub fn skipping(&self) -> bool {
        self.skipping
    }

    /// True while a row-shape check ([`Expect::Shape`]) is owed.
    pub fn checking(&self) -> bool {
        let check = |e: &Entry| {
            matches!(
                e,
                Entry::Server {
                    expect: Expect::Shape(..),
                    ..
                }
            )
        };
        self.entries.iter().any(check)
    }

    /// Records a client message that ends COPY FROM STDIN (CopyDone or
    /// CopyFail).
    pub fn copy_ended(&mut self) {
        self.copy.copy_end();
    }

    /// Records a message sent to the server.
    pub fn expect(&mut self, expect: Expect, visible: bool) {
        match expect {
            Expect::Sync => {
                if !self.copy.sync() {
                    return;
                }
                self.skipping = false;
            }
            Expect::Execute | Expect::ExecuteDiscardAll(_) => self.copy.command(true),
            Expect::Query | Expect::DiscardAll(_) => self.copy.command(false),
            _ => {}
        }
        self.entries.push_back(Entry::Server { expect, visible });
    }

    /// Queues a made-up reply; it goes to `out` at once if nothing is owed
    /// before it.
    pub fn made(&mut self, reply: Bytes, out: &mut Outbox) {
        self.made_undoable(reply, None, out);
    }

    /// Queues a made-up reply whose message changed the client's
    /// statements; `undo` reverts that if the message is skipped. Sent at
    /// once if nothing is owed before it (then nothing can skip it).
    pub fn made_undoable(&mut self, reply: Bytes, undo: Option<Effect>, out: &mut Outbox) {
        if self.entries.is_empty() {
            out.push(reply);
        } else {
            let reply = Made::Reply(reply);
            self.entries.push_back(Entry::Made { reply, undo });
        }
    }

    /// Queues the reply to a `DEALLOCATE` pgtarn ran, whose statement is
    /// restored by `undo` if the transaction turns out failed or the query
    /// skipped. With nothing owed it goes out at once with `status`, which
    /// must not be [`TxStatus::Failed`].
    pub fn deallocated(&mut self, undo: Effect, status: TxStatus, out: &mut Outbox) {
        if self.entries.is_empty() {
            out.push(deallocate_reply(status));
        } else {
            let undo = Some(undo);
            self.entries.push_back(Entry::Made {
                reply: Made::Deallocate,
                undo,
            });
        }
    }

    /// Queues a made-up error and skips client messages until Sync
    /// (without a server: nothing ran that the error must fail).
    pub fn made_error(&mut self, error: Bytes, out: &mut Outbox) {
        self.made(error, out);
        self.skipping = true;
    }

    /// Skips client messages until Sync, after a refusal sent to the
    /// server as [`Expect::Refused`].
    pub fn skip_to_sync(&mut self) {
        self.skipping = true;
    }

    /// Ends skipping at a Sync handled without a server.
    pub fn local_sync(&mut self) {
        self.skipping = false;
    }

    /// Routes one server message and reports cache effects into `effects`.
    /// Made-up replies it makes due are released by the next
    /// [`ReplyQueue::release_due`], which must follow the message itself.
    pub fn on_server(&mut self, tag: u8, body: &[u8], effects: &mut Vec<Effect>) -> Route {
        match tag {
            b'N' | b'S' | b'A' => return Route::Forward,
            b'G' => {
                self.on_copy_in();
                return Route::Forward;
            }
            b'E' => {
                self.copy.error();
            }
            b'Z' => self.copy.ready(),
            _ => {}
        }
        let Some(Entry::Server { expect, visible }) = self.entries.front() else {
            return Route::Forward;
        };
        if tag == b'E' && !matches!(expect, Expect::Query | Expect::DiscardAll(_) | Expect::Sync) {
            return self.on_extended_error(body, effects);
        }
        if let (b'C', Expect::DiscardAll(s) | Expect::ExecuteDiscardAll(s)) = (tag, expect) {
            effects.push(Effect::Discarded(s.clone()));
        }
        let route = if *visible {
            Route::Forward
        } else {
            Route::Swallow
        };
        if expect.ended_by(tag) {
            match self.entries.pop_front() {
                Some(Entry::Server {
                    expect: Expect::Parse(Some(p)),
                    ..
                }) => effects.push(Effect::Prepared(p.global)),
                Some(Entry::Server {
                    expect: Expect::Shape(copy, client),
                    ..
                }) => {
                    let shape = match tag {
                        b'T' => backend::row_shape(body).ok(),
                        _ => Some(backend::NO_ROWS),
                    };
                    effects.extend(shape.map(|s| Effect::Shape(copy, client, s)));
                }
                // Cannot happen (the refusal fails for sure); the client
                // still gets its error.
                Some(Entry::Server {
                    expect: Expect::Refused(error),
                    ..
                }) => self.entries.push_front(Entry::Made {
                    reply: Made::Reply(error),
                    undo: None,
                }),
                _ => {}
            }
        }
        route
    }

    /// CopyInResponse: Postgres ignores the Syncs sent after the message
    /// that started the copy (the entry at the front) until the client
    /// ended it, and those sent until the copy ends.
    fn on_copy_in(&mut self) {
        let mut ignored = self.copy.copy_in();
        let mut i = 1;
        while ignored > 0 && i < self.entries.len() {
            if matches!(
                self.entries[i],
                Entry::Server {
                    expect: Expect::Sync,
                    ..
                }
            ) {
                self.entries.remove(i);
                ignored -= 1;
            } else {
                i += 1;
            }
        }
    }

    /// pgtarn's own error (a whole frame) that the client gets in place of
    /// the server's ErrorResponse `body`, when that is the planned failure
    /// of a refusal ([`Expect::Refused`]) at the front of the queue.
    pub fn refusal_error(&self, body: &[u8]) -> Option<&Bytes> {
        match self.entries.front() {
            Some(Entry::Server {
                expect: Expect::Refused(error),
                ..
            }) if failed_as_planned(body) => Some(error),
            _ => None,
        }
    }

    /// An ErrorResponse to an extended-protocol message: Postgres skips to
    /// the next Sync. What the skipped messages did is undone, latest
    /// first. The planned failure of pgtarn's refusal is replaced by
    /// pgtarn's error; any other (25P02 in a failed transaction, which
    /// Postgres checks first) reaches the client as it is.
    fn on_extended_error(&mut self, body: &[u8], effects: &mut Vec<Effect>) -> Route {
        let first = effects.len();
        let mut refusal = None;
        if let Some(Entry::Server { expect, .. }) = self.entries.pop_front() {
            match expect {
                Expect::Parse(Some(p)) => effects.push(Effect::NotPrepared(p)),
                Expect::Bind(Some(copy)) | Expect::DescribeStatement(Some(copy))
                    if result_type_changed(body) =>
                {
                    effects.push(Effect::Stale(copy))
                }
                Expect::Refused(error) if failed_as_planned(body) => refusal = Some(error),
                _ => {}
            }
        }
        if !self.skip_to_queued_sync(effects) {
            self.skipping = true;
        }
        effects[first..].reverse();
        match refusal {
            Some(error) => {
                let reply = Made::Reply(error);
                self.entries.push_front(Entry::Made { reply, undo: None });
                Route::Swallow
            }
            None => Route::Forward,
        }
    }

    /// Drops the entries before the next queued Sync, whose messages
    /// Postgres skips, reporting what did not happen; false if no Sync is
    /// queued yet.
    fn skip_to_queued_sync(&mut self, effects: &mut Vec<Effect>) -> bool {
        while let Some(entry) = self.entries.front() {
            if matches!(
                entry,
                Entry::Server {
                    expect: Expect::Sync,
                    ..
                }
            ) {
                return true;
            }
            match self.entries.pop_front() {
                Some(Entry::Server {
                    expect: Expect::Parse(Some(p)),
                    ..
                }) => effects.push(Effect::NotPrepared(p)),
                Some(Entry::Server {
                    expect: Expect::Close(Some(g)),
                    ..
                }) => effects.push(Effect::NotClosed(g)),
                Some(Entry::Made { undo: Some(u), .. }) => effects.push(u),
                _ => {}
            }
        }
        false
    }

    /// Sends the made-up replies that are now due (nothing owed before
    /// them) to `out`; `status` is the transaction status of the last
    /// ReadyForQuery. A `DEALLOCATE` in a failed transaction fails and its
    /// undo goes to `effects`.
    pub fn release_due(&mut self, out: &mut Outbox, status: TxStatus, effects: &mut Vec<Effect>) {
        while let Some(Entry::Made { .. }) = self.entries.front() {
            let Some(Entry::Made { reply, undo }) = self.entries.pop_front() else {
                return;
            };
            match reply {
                Made::Reply(reply) => out.push(reply),
                Made::Deallocate if status == TxStatus::Failed => {
                    out.push(failed_transaction_reply());
                    effects.extend(undo);
                }
                Made::Deallocate => out.push(deallocate_reply(status)),
            }
        }
    }
}

/// `DEALLOCATE`'s CommandComplete and ReadyForQuery.
pub fn deallocate_reply(status: TxStatus) -> Bytes {
    let mut b = BytesMut::new();
    encode::message(&mut b, b'C', |b| encode::put_cstr(b, b"DEALLOCATE"));
    encode::ready_for_query(&mut b, status);
    b.freeze()
}

/// Postgres' reply to a simple query in a failed transaction block.
pub fn failed_transaction_reply() -> Bytes {
    let mut b = BytesMut::new();
    let msg = "current transaction is aborted, commands ignored until end of transaction block";
    encode::error_response(&mut b, Severity::Error, IN_FAILED_TRANSACTION, msg, None);
    encode::ready_for_query(&mut b, TxStatus::Failed);
    b.freeze()
}

/// True for Postgres' `cached plan must not change result type` error.
fn result_type_changed(body: &[u8]) -> bool {
    backend::error_fields(body).is_ok_and(|e| {
        e.code == "0A000"
            && e.message
                .contains("cached plan must not change result type")
    })
}

/// True for the error [`REFUSAL`] is meant to get.
fn failed_as_planned(body: &[u8]) -> bool {
    backend::error_fields(body).is_ok_and(|e| e.code == REFUSAL_CODE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::encode::{self, Severity};
    use bytes::BytesMut;

    /// What the translator does with a server message: route it, forward
    /// it if so routed, then release made-up replies now due.
    fn step(
        q: &mut ReplyQueue,
        tag: u8,
        body: &[u8],
        out: &mut Outbox,
        fx: &mut Vec<Effect>,
    ) -> Route {
        let route = q.on_server(tag, body, fx);
        if route == Route::Forward {
            out.push(made(tag));
        }
        q.release_due(out, TxStatus::Idle, fx);
        route
    }

    fn drain(out: &mut Outbox) -> Vec<Bytes> {
        out.take()
    }

    fn made(tag: u8) -> Bytes {
        Bytes::from(vec![tag, 0, 0, 0, 4])
    }

    fn prepared(name: &str) -> Prepared {
        Prepared {
            global: name.into(),
            client: None,
        }
    }

    #[test]
    fn made_replies_wait_for_earlier_server_replies() {
        let (mut q, mut out, mut fx) = (ReplyQueue::default(), Outbox::default(), Vec::new());
        q.expect(Expect::Bind(None), true);
        q.made(made(b'1'), &mut out);
        q.expect(Expect::Execute, true);
        assert!(out.is_empty(), "the BindComplete comes first");
        assert_eq!(step(&mut q, b'2', b"", &mut out, &mut fx), Route::Forward);
        assert_eq!(
            drain(&mut out),
            [made(b'2'), made(b'1')],
            "released right after it"
        );
        assert_eq!(step(&mut q, b'D', b"", &mut out, &mut fx), Route::Forward);
        assert_eq!(step(&mut q, b'C', b"", &mut out, &mut fx), Route::Forward);
        assert!(q.is_empty());
        assert_eq!(drain(&mut out), [made(b'D'), made(b'C')]);
        q.made(made(b'3'), &mut out);
        assert_eq!(drain(&mut out), [made(b'3')], "nothing owed: sent at once");
    }

    #[test]
    fn replies_to_pgtarns_own_messages_are_swallowed() {
        let (mut q, mut out, mut fx) = (ReplyQueue::default(), Outbox::default(), Vec::new());
        q.expect(Expect::Close(Some("old".into())), false);
        q.expect(Expect::Parse(Some(prepared("g"))), false);
        q.expect(Expect::Bind(Some(("g".into(), 0))), true);
        assert_eq!(step(&mut q, b'3', b"", &mut out, &mut fx), Route::Swallow);
        assert_eq!(
            step(&mut q, b'N', b"", &mut out, &mut fx),
            Route::Forward,
            "notices always pass"
        );
        assert_eq!(step(&mut q, b'1', b"", &mut out, &mut fx), Route::Swallow);
        assert_eq!(step(&mut q, b'2', b"", &mut out, &mut fx), Route::Forward);
        assert!(q.is_empty());
        assert_eq!(fx, [Effect::Prepared("g".into())]);
    }

    #[test]
    fn a_shape_check_is_swallowed_and_reports_the_row_shape() {
        let (mut q, mut out, mut fx) = (ReplyQueue::default(), Outbox::default(), Vec::new());
        q.expect(Expect::Parse(Some(prepared("g"))), false);
        q.expect(Expect::Shape(("g".into(), 3), None), false);
        assert!(q.checking());
        assert_eq!(step(&mut q, b'1', b"", &mut out, &mut fx), Route::Swallow);
        assert_eq!(
            step(&mut q, b't', b"\0\0", &mut out, &mut fx),
            Route::Swallow
        );
        assert!(q.checking(), "the RowDescription is still due");
        let columns = b"\0\x01a\0\0\0\0\0\0\x01\0\0\0\x17\0\x04\xff\xff\xff\xff\0\0";
        assert_eq!(
            step(&mut q, b'T', columns, &mut out, &mut fx),
            Route::Swallow
        );
        assert!(!q.checking() && q.is_empty() && out.is_empty());
        let shape = backend::row_shape(columns).unwrap();
        assert_eq!(
            fx,
            [
                Effect::Prepared("g".into()),
                Effect::Shape(("g".into(), 3), None, shape)
            ]
        );
        fx.clear();
        q.expect(Expect::Shape(("h".into(), 0), Some("s1".into())), false);
        step(&mut q, b't', b"\0\0", &mut out, &mut fx);
        step(&mut q, b'n', b"", &mut out, &mut fx);
        assert_eq!(
            fx,
            [Effect::Shape(
                ("h".into(), 0),
                Some("s1".into()),
                backend::NO_ROWS
            )]
        );
    }

    #[test]
    fn a_shape_check_skipped_after_an_error_ends_with_no_effect() {
        let (mut q, mut out, mut fx) = (ReplyQueue::default(), Outbox::default(), Vec::new());
        q.expect(Expect::Execute, true);
        q.expect(Expect::Parse(Some(prepared("g"))), false);
        q.expect(Expect::Shape(("g".into(), 0), None), false);
        assert_eq!(
            step(&mut q, b'E', &error("57014"), &mut out, &mut fx),
            Route::Forward
        );
        assert!(!q.checking(), "nothing more comes before the Sync");
        assert_eq!(fx, [Effect::NotPrepared(prepared("g"))]);
        assert!(q.skipping());
    }

    #[test]
    fn an_error_skips_to_sync_and_reports_what_did_not_happen() {
        let (mut q, mut out, mut fx) = (ReplyQueue::default(), Outbox::default(), Vec::new());
        q.expect(Expect::Parse(Some(prepared("bad"))), true);
        q.expect(Expect::Close(Some("evicted".into())), false);
        q.expect(Expect::Parse(Some(prepared("later"))), false);
        q.made(made(b'3'), &mut out);
        q.expect(Expect::Sync, true);
        q.expect(Expect::Execute, true);
        let mut err = BytesMut::new();
        encode::error_response(&mut err, Severity::Error, "42601", "syntax error", None);
        assert_eq!(
            step(&mut q, b'E', &err[5..], &mut out, &mut fx),
            Route::Forward
        );
        assert_eq!(
            drain(&mut out),
            [made(b'E')],
            "made replies after the error are dropped, as Postgres skips"
        );
        assert_eq!(
            fx,
            [
                Effect::NotPrepared(prepared("later")),
                Effect::NotClosed("evicted".into()),
                Effect::NotPrepared(prepared("bad"))
            ],
            "undone latest first"
        );
        assert_eq!(step(&mut q, b'Z', b"I", &mut out, &mut fx), Route::Forward);
        assert!(!q.is_empty(), "the Execute after the Sync is still owed");
    }

    #[test]
    fn an_error_before_the_sync_arrives_skips_later_client_messages() {
        let (mut q, mut out, mut fx) = (ReplyQueue::default(), Outbox::default(), Vec::new());
        q.expect(Expect::Bind(None), true);
        step(&mut q, b'E', b"", &mut out, &mut fx);
        assert!(q.skipping());
        q.expect(Expect::Sync, true);
        assert!(!q.skipping());
    }

    #[test]
    fn result_type_change_marks_the_statement_stale() {
        let (mut q, mut out, mut fx) = (ReplyQueue::default(), Outbox::default(), Vec::new());
        q.expect(Expect::Bind(Some(("g".into(), 3))), true);
        let mut err = BytesMut::new();
        encode::error_response(
            &mut err,
            Severity::Error,
            "0A000",
            "cached plan must not change result type",
            None,
        );
        step(&mut q, b'E', &err[5..], &mut out, &mut fx);
        assert_eq!(fx, [Effect::Stale(("g".into(), 3))]);
    }

    #[test]
    fn syncs_sent_into_copy_in_get_no_reply() {
        let (mut q, mut out, mut fx) = (ReplyQueue::default(), Outbox::default(), Vec::new());
        q.expect(Expect::Bind(None), true);
        q.expect(Expect::Execute, true);
        q.expect(Expect::Sync, true);
        step(&mut q, b'2', b"", &mut out, &mut fx);
        step(&mut q, b'G', b"", &mut out, &mut fx);
        q.expect(Expect::Sync, true);
        q.copy_ended();
        q.expect(Expect::Sync, true);
        q.made(made(b'3'), &mut out);
        q.expect(Expect::Sync, true);
        step(&mut q, b'C', b"", &mut out, &mut fx);
        step(&mut q, b'Z', b"T", &mut out, &mut fx);
        assert_eq!(
            drain(&mut out),
            [made(b'2'), made(b'G'), made(b'C'), made(b'Z'), made(b'3')]
        );
        step(&mut q, b'Z', b"T", &mut out, &mut fx);
        assert!(q.is_empty());
    }

    #[test]
    fn errors_inside_a_simple_query_do_not_end_it() {
        let (mut q, mut out, mut fx) = (ReplyQueue::default(), Outbox::default(), Vec::new());
        q.expect(Expect::Query, true);
        step(&mut q, b'E', b"", &mut out, &mut fx);
        assert!(!q.skipping() && !q.is_empty());
        step(&mut q, b'Z', b"I", &mut out, &mut fx);
        assert!(q.is_empty());
    }

    #[test]
    fn a_discard_all_forgets_the_statements_only_if_it_completes() {
        let (mut q, mut out, mut fx) = (ReplyQueue::default(), Outbox::default(), Vec::new());
        q.expect(Expect::DiscardAll(Vec::new()), true);
        step(&mut q, b'E', &error("25P02"), &mut out, &mut fx);
        step(&mut q, b'Z', b"E", &mut out, &mut fx);
        assert_eq!(fx, []);
        q.expect(Expect::DiscardAll(Vec::new()), true);
        step(&mut q, b'C', b"DISCARD ALL\0", &mut out, &mut fx);
        assert_eq!(fx, [Effect::Discarded(Vec::new())]);
        step(&mut q, b'Z', b"I", &mut out, &mut fx);
        assert!(q.is_empty());
    }

    fn error(code: &str) -> Vec<u8> {
        let mut err = BytesMut::new();
        encode::error_response(&mut err, Severity::Error, code, "failed", None);
        err[5..].to_vec()
    }

    #[test]
    fn copy_data_sent_behind_the_query_does_not_start_a_copy() {
        let (mut q, mut out, mut fx) = (ReplyQueue::default(), Outbox::default(), Vec::new());
        q.expect(Expect::Bind(None), true);
        q.expect(Expect::Execute, true);
        q.expect(Expect::Sync, true);
        q.copy_ended();
        q.expect(Expect::Sync, true);
        step(&mut q, b'2', b"", &mut out, &mut fx);
        step(&mut q, b'G', b"", &mut out, &mut fx);
        step(&mut q, b'C', b"", &mut out, &mut fx);
        assert!(!q.is_empty(), "the Sync after CopyDone is answered");
        step(&mut q, b'Z', b"I", &mut out, &mut fx);
        assert!(q.is_empty());
        q.expect(Expect::Sync, true);
        assert!(!q.is_empty(), "not in a copy: Syncs are answered");
    }

    #[test]
    fn an_error_ends_the_copy_and_skips_to_the_next_sync() {
        let (mut q, mut out, mut fx) = (ReplyQueue::default(), Outbox::default(), Vec::new());
        q.expect(Expect::Execute, true);
        q.expect(Expect::Sync, true);
        step(&mut q, b'G', b"", &mut out, &mut fx);
        step(&mut q, b'E', &error("22P02"), &mut out, &mut fx);
        assert!(q.skipping() && q.is_empty());
        q.copy_ended();
        q.expect(Expect::Sync, true);
        assert!(!q.skipping(), "the Sync is answered");
        step(&mut q, b'Z', b"I", &mut out, &mut fx);
        assert!(q.is_empty());
    }

    #[test]
    fn skipped_made_replies_are_undone_latest_first() {
        let (mut q, mut out, mut fx) = (ReplyQueue::default(), Outbox::default(), Vec::new());
        q.expect(Expect::Execute, true);
        q.made_undoable(made(b'3'), Some(Effect::Unparsed("a".into())), &mut out);
        q.made_undoable(made(b'1'), Some(Effect::Unparsed("b".into())), &mut out);
        q.expect(Expect::Sync, true);
        step(&mut q, b'E', &error("22012"), &mut out, &mut fx);
        assert_eq!(drain(&mut out), [made(b'E')]);
        assert_eq!(
            fx,
            [Effect::Unparsed("b".into()), Effect::Unparsed("a".into())]
        );
        fx.clear();
        step(&mut q, b'Z', b"I", &mut out, &mut fx);
        drain(&mut out);
        q.made_undoable(made(b'1'), Some(Effect::Unparsed("c".into())), &mut out);
        assert_eq!(drain(&mut out), [made(b'1')], "nothing owed: sent at once");
        assert!(q.is_empty() && fx.is_empty());
    }

    #[test]
    fn a_refusal_fails_on_the_server_and_the_client_gets_pgtarns_error() {
        let (mut q, mut out, mut fx) = (ReplyQueue::default(), Outbox::default(), Vec::new());
        q.expect(Expect::Execute, true);
        q.expect(Expect::Refused(made(b'!')), false);
        q.skip_to_sync();
        assert!(q.skipping());
        q.expect(Expect::Sync, true);
        step(&mut q, b'C', b"", &mut out, &mut fx);
        assert_eq!(
            q.refusal_error(&error("22012")),
            None,
            "not the planned failure"
        );
        assert_eq!(q.refusal_error(&error(REFUSAL_CODE)), Some(&made(b'!')));
        let route = step(&mut q, b'E', &error(REFUSAL_CODE), &mut out, &mut fx);
        assert_eq!(route, Route::Swallow);
        assert_eq!(drain(&mut out), [made(b'C'), made(b'!')]);
        step(&mut q, b'Z', b"E", &mut out, &mut fx);
        assert!(q.is_empty());
        drain(&mut out);
        // In a failed transaction Postgres' 25P02 comes first.
        q.expect(Expect::Refused(made(b'!')), false);
        q.expect(Expect::Sync, true);
        let route = step(&mut q, b'E', &error("25P02"), &mut out, &mut fx);
        assert_eq!(route, Route::Forward);
        assert_eq!(drain(&mut out), [made(b'E')]);
    }

    #[test]
    fn a_refusal_after_an_earlier_error_is_dropped() {
        let (mut q, mut out, mut fx) = (ReplyQueue::default(), Outbox::default(), Vec::new());
        q.expect(Expect::Execute, true);
        q.expect(Expect::Refused(made(b'!')), false);
        q.expect(Expect::Sync, true);
        step(&mut q, b'E', &error("22012"), &mut out, &mut fx);
        step(&mut q, b'Z', b"I", &mut out, &mut fx);
        assert_eq!(drain(&mut out), [made(b'E'), made(b'Z')]);
        assert!(q.is_empty());
    }

    #[test]
    fn deallocate_replies_carry_the_status_when_released() {
        let (mut q, mut out, mut fx) = (ReplyQueue::default(), Outbox::default(), Vec::new());
        let undo = || Effect::Unparsed("s1".into());
        q.deallocated(undo(), TxStatus::Idle, &mut out);
        assert_eq!(drain(&mut out), [deallocate_reply(TxStatus::Idle)]);
        q.expect(Expect::Query, true);
        q.deallocated(undo(), TxStatus::Idle, &mut out);
        q.release_due(&mut out, TxStatus::InTransaction, &mut fx);
        assert!(out.is_empty(), "the BEGIN's reply comes first");
        q.on_server(b'Z', b"T", &mut fx);
        q.release_due(&mut out, TxStatus::InTransaction, &mut fx);
        assert_eq!(drain(&mut out), [deallocate_reply(TxStatus::InTransaction)]);
        q.expect(Expect::Query, true);
        q.deallocated(undo(), TxStatus::InTransaction, &mut out);
        q.on_server(b'Z', b"E", &mut fx);
        q.release_due(&mut out, TxStatus::Failed, &mut fx);
        assert_eq!(drain(&mut out), [failed_transaction_reply()]);
        assert_eq!(fx, [undo()], "the statement stays");
    }
}
