//! Knowing when a server connection is idle, sans-IO.
//!
//! A server may be handed to another client only when it has answered every
//! Query and Sync sent to it (each produces exactly one ReadyForQuery), no
//! extended-protocol message is waiting for its Sync, no COPY FROM STDIN is
//! in progress, and the last ReadyForQuery said `I` (no transaction open).
//!
//! One wrinkle: during COPY FROM STDIN Postgres ignores Sync and Flush.
//! Drivers send Bind/Execute/Sync before they know the statement is a COPY,
//! and clients may send their CopyData and CopyDone right behind the query,
//! before CopyInResponse arrives. [`CopyTracker`] follows what a
//! CopyInResponse means for the messages already sent: the Syncs sent
//! after the Execute (or Query) that started the copy and before the
//! client's CopyDone or CopyFail get no ReadyForQuery, and a copy the
//! client already ended is not waited for. The copy also ends at an
//! ErrorResponse (Postgres then drops the client's remaining copy messages)
//! and, at the latest, at ReadyForQuery.

use crate::protocol::backend::TxStatus;

/// What a CopyInResponse means for the client messages sent before it, and
/// whether the server is in COPY FROM STDIN. Shared by [`ServerState`] and
/// the client's reply queue so that both count the same Syncs.
///
/// It assumes, as Postgres' own clients do, that the CopyInResponse answers
/// the last Execute or Query sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CopyTracker {
    /// The server is in COPY FROM STDIN and the client has not ended it.
    in_copy: bool,
    /// The last Execute, Query or FunctionCall sent was an Execute.
    extended: bool,
    /// Syncs sent since that command and before any CopyDone/CopyFail:
    /// Postgres ignores them if the command starts a copy.
    syncs: u32,
    /// CopyDone/CopyFail sent since that command, outside a copy: they end
    /// copies whose CopyInResponse has not arrived yet.
    ends: u32,
}

impl CopyTracker {
    /// An Execute (`extended`), Query or FunctionCall was sent.
    pub fn command(&mut self, extended: bool) {
        self.extended = extended;
        self.syncs = 0;
        self.ends = 0;
    }

    /// A Sync was sent; false if the server will ignore it (in a copy).
    pub fn sync(&mut self) -> bool {
        if self.in_copy {
            return false;
        }
        if self.ends == 0 {
            self.syncs += 1;
        }
        true
    }

    /// A CopyDone or CopyFail was sent.
    pub fn copy_end(&mut self) {
        if self.in_copy {
            self.in_copy = false;
        } else {
            self.ends = self.ends.saturating_add(1);
        }
    }

    /// A CopyInResponse arrived: returns how many Syncs sent before it
    /// Postgres ignored, and enters the copy unless the client ended it
    /// already.
    pub fn copy_in(&mut self) -> u32 {
        let ignored = std::mem::take(&mut self.syncs);
        if self.ends > 0 {
            self.ends -= 1;
        } else {
            self.in_copy = true;
        }
        ignored
    }

    /// An ErrorResponse arrived: it ends a copy in progress. True if that
    /// copy ran in the extended protocol, where Postgres now skips to Sync.
    pub fn error(&mut self) -> bool {
        std::mem::take(&mut self.in_copy) && self.extended
    }

    /// A ReadyForQuery arrived: no copy can be in progress.
    pub fn ready(&mut self) {
        self.in_copy = false;
    }

    /// True while the server is in COPY FROM STDIN.
    pub fn in_copy(&self) -> bool {
        self.in_copy
    }
}

/// What is outstanding on one server connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerState {
    /// ReadyForQuery messages still due (one per Query, FunctionCall, Sync).
    pending_ready: u32,
    /// Extended-protocol messages were sent since the last Sync.
    unsynced: bool,
    /// Transaction status from the last ReadyForQuery.
    tx: TxStatus,
    /// COPY FROM STDIN, and the Syncs it makes Postgres ignore.
    copy: CopyTracker,
}

impl ServerState {
    /// Records a client message forwarded to the server.
    pub fn on_client_message(&mut self, tag: u8) {
        match tag {
            // `sync` records the Sync; false if Postgres ignores it.
            b'S' if self.copy.sync() => {
                self.pending_ready += 1;
                self.unsynced = false;
            }
            b'Q' | b'F' => {
                self.pending_ready += 1;
                self.unsynced = false;
                self.copy.command(false);
            }
            b'E' => {
                self.unsynced = true;
                self.copy.command(true);
            }
            b'P' | b'B' | b'D' | b'C' => self.unsynced = true,
            b'c' | b'f' => self.copy.copy_end(),
            _ => {}
        }
    }

    /// Records a CopyInResponse: the Syncs sent since the Execute that
    /// started the copy (and before the client ended it) will get no
    /// ReadyForQuery.
    pub fn on_copy_in(&mut self) {
        let ignored = self.copy.copy_in();
        self.pending_ready = self.pending_ready.saturating_sub(ignored);
    }

    /// Records an ErrorResponse received from the server. One that ends a
    /// copy started by Execute leaves the server waiting for a Sync (the
    /// Syncs sent during the copy were ignored).
    pub fn on_error(&mut self) {
        if self.copy.error() {
            self.unsynced = true;
        }
    }

    /// Records a ReadyForQuery received from the server.
    pub fn on_ready(&mut self, status: TxStatus) {
        self.pending_ready = self.pending_ready.saturating_sub(1);
        self.tx = status;
        self.copy.ready();
    }

    /// The transaction status last reported.
    pub fn tx_status(&self) -> TxStatus {
        self.tx
    }

    /// True while a ReadyForQuery is still due or a COPY FROM STDIN is in
    /// progress: a query is running.
    pub fn awaiting_server(&self) -> bool {
        self.pending_ready > 0 || self.copy.in_copy()
    }

    /// True while a query is in progress as `query_timeout` sees it: a
    /// ReadyForQuery is due, a COPY FROM STDIN runs, or extended-protocol
    /// messages (an Execute followed by Flush, say) await their Sync.
    pub fn query_in_progress(&self) -> bool {
        self.awaiting_server() || self.unsynced
    }

    /// True when the connection can serve another client as it is.
    pub fn is_idle(&self) -> bool {
        self.pending_ready == 0
            && !self.unsynced
            && self.tx == TxStatus::Idle
            && !self.copy.in_copy()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simple_query_round_trip() {
        let mut s = ServerState::default();
        assert!(s.is_idle());
        s.on_client_message(b'Q');
        assert!(!s.is_idle());
        s.on_ready(TxStatus::Idle);
        assert!(s.is_idle());
    }

    #[test]
    fn pipelined_queries_wait_for_the_last_ready() {
        let mut s = ServerState::default();
        s.on_client_message(b'Q');
        s.on_client_message(b'Q');
        s.on_ready(TxStatus::Idle);
        assert!(!s.is_idle(), "second query still running");
        s.on_ready(TxStatus::Idle);
        assert!(s.is_idle());
    }

    #[test]
    fn extended_protocol_waits_for_sync() {
        let mut s = ServerState::default();
        for tag in [b'P', b'B', b'E'] {
            s.on_client_message(tag);
        }
        assert!(!s.is_idle(), "no Sync yet");
        s.on_client_message(b'H');
        assert!(!s.is_idle(), "Flush is not a Sync");
        s.on_client_message(b'S');
        s.on_ready(TxStatus::Idle);
        assert!(s.is_idle());
    }

    #[test]
    fn open_or_failed_transactions_are_not_idle() {
        let mut s = ServerState::default();
        s.on_client_message(b'Q');
        s.on_ready(TxStatus::InTransaction);
        assert!(!s.is_idle());
        s.on_client_message(b'Q');
        s.on_ready(TxStatus::Failed);
        assert!(!s.is_idle());
        assert_eq!(s.tx_status(), TxStatus::Failed);
    }

    #[test]
    fn syncs_during_copy_in_are_ignored_as_postgres_does() {
        let mut s = ServerState::default();
        for tag in [b'B', b'E', b'S'] {
            s.on_client_message(tag);
        }
        s.on_copy_in();
        for tag in [b'd', b'S', b'd', b'c', b'S'] {
            s.on_client_message(tag);
        }
        assert!(!s.is_idle());
        s.on_ready(TxStatus::Idle);
        assert!(
            s.is_idle(),
            "one ReadyForQuery, for the Sync after CopyDone"
        );
    }

    #[test]
    fn copy_data_does_not_change_the_count() {
        let mut s = ServerState::default();
        s.on_client_message(b'Q');
        for tag in [b'd', b'd', b'c'] {
            s.on_client_message(tag);
        }
        assert!(!s.is_idle());
        s.on_ready(TxStatus::Idle);
        assert!(s.is_idle());
    }

    #[test]
    fn copy_data_sent_behind_the_query_ends_a_copy_not_yet_started() {
        let mut s = ServerState::default();
        for tag in [b'Q', b'd', b'c'] {
            s.on_client_message(tag);
        }
        s.on_copy_in();
        assert!(!s.copy.in_copy(), "the client ended the copy already");
        s.on_ready(TxStatus::Idle);
        assert!(s.is_idle());
    }

    #[test]
    fn only_syncs_before_the_copy_done_are_ignored() {
        let mut s = ServerState::default();
        for tag in [b'B', b'E', b'S', b'd', b'c', b'S'] {
            s.on_client_message(tag);
        }
        s.on_copy_in();
        assert!(!s.is_idle(), "the Sync after CopyDone is answered");
        s.on_ready(TxStatus::Idle);
        assert!(s.is_idle());
    }

    #[test]
    fn a_copy_in_progress_is_not_idle() {
        let mut s = ServerState::default();
        for tag in [b'B', b'E', b'S'] {
            s.on_client_message(tag);
        }
        s.on_copy_in();
        assert!(!s.is_idle() && s.awaiting_server());
    }

    #[test]
    fn an_error_ends_an_extended_copy_and_waits_for_sync() {
        let mut s = ServerState::default();
        for tag in [b'B', b'E', b'S'] {
            s.on_client_message(tag);
        }
        s.on_copy_in();
        s.on_error();
        assert!(!s.is_idle(), "Postgres skips to the next Sync");
        for tag in [b'd', b'c', b'S'] {
            s.on_client_message(tag);
        }
        s.on_ready(TxStatus::Idle);
        assert!(s.is_idle());
    }

    #[test]
    fn an_error_ends_a_simple_copy_at_its_ready_for_query() {
        let mut s = ServerState::default();
        s.on_client_message(b'Q');
        s.on_copy_in();
        s.on_client_message(b'd');
        s.on_error();
        s.on_ready(TxStatus::Idle);
        assert!(s.is_idle());
        s.on_client_message(b'c');
        assert!(s.is_idle(), "a stray CopyDone changes nothing");
    }

    #[test]
    fn ready_for_query_ends_any_copy() {
        let mut s = ServerState::default();
        s.on_client_message(b'Q');
        s.on_copy_in();
        s.on_ready(TxStatus::Idle);
        assert!(s.is_idle());
    }
}
