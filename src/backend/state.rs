//! Knowing when a server connection is idle, sans-IO.
//!
//! A server may be handed to another client only when it has answered every
//! Query and Sync sent to it (each produces exactly one ReadyForQuery), no
//! extended-protocol message is waiting for its Sync, and the last
//! ReadyForQuery said `I` (no transaction open).
//!
//! One wrinkle: during COPY FROM STDIN Postgres ignores Sync and Flush.
//! Drivers send Bind/Execute/Sync before they know the statement is a COPY,
//! so when CopyInResponse arrives, the Syncs sent since the Execute (or
//! Query) that started it are dropped from the count, and so are Syncs sent
//! until the client's CopyDone or CopyFail.

use crate::protocol::backend::TxStatus;

/// What is outstanding on one server connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerState {
    /// ReadyForQuery messages still due (one per Query, FunctionCall, Sync).
    pending_ready: u32,
    /// Extended-protocol messages were sent since the last Sync.
    unsynced: bool,
    /// Transaction status from the last ReadyForQuery.
    tx: TxStatus,
    /// Syncs sent since the last Execute or Query.
    syncs_since_execute: u32,
    /// The server is in COPY FROM STDIN: Syncs are ignored.
    copy_in: bool,
}

impl ServerState {
    /// Records a client message forwarded to the server.
    pub fn on_client_message(&mut self, tag: u8) {
        match tag {
            b'S' if self.copy_in => {}
            b'S' => {
                self.pending_ready += 1;
                self.unsynced = false;
                self.syncs_since_execute += 1;
            }
            b'Q' | b'F' => {
                self.pending_ready += 1;
                self.unsynced = false;
                self.syncs_since_execute = 0;
            }
            b'E' => {
                self.unsynced = true;
                self.syncs_since_execute = 0;
            }
            b'P' | b'B' | b'D' | b'C' => self.unsynced = true,
            b'c' | b'f' => self.copy_in = false,
            _ => {}
        }
    }

    /// Records a CopyInResponse: the Syncs sent since the Execute that
    /// started the copy will get no ReadyForQuery.
    pub fn on_copy_in(&mut self) {
        self.pending_ready = self.pending_ready.saturating_sub(self.syncs_since_execute);
        self.syncs_since_execute = 0;
        self.copy_in = true;
    }

    /// Records a ReadyForQuery received from the server.
    pub fn on_ready(&mut self, status: TxStatus) {
        self.pending_ready = self.pending_ready.saturating_sub(1);
        self.tx = status;
    }

    /// The transaction status last reported.
    pub fn tx_status(&self) -> TxStatus {
        self.tx
    }

    /// True while a ReadyForQuery is still due: a query is running.
    pub fn awaiting_server(&self) -> bool {
        self.pending_ready > 0
    }

    /// True when the connection can serve another client as it is.
    pub fn is_idle(&self) -> bool {
        self.pending_ready == 0 && !self.unsynced && self.tx == TxStatus::Idle
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
}
