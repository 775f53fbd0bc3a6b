//! PostgreSQL wire protocol v3, sans-IO.
//!
//! This module is a leaf: it knows bytes, not sockets. It splits byte streams
//! into frames without copying ([`frame`]), parses the startup packets
//! ([`startup`]), reads the few server messages the pooler must understand
//! ([`backend`]), builds the messages pgtarn itself sends ([`encode`]) and
//! names SQLSTATE codes ([`sqlstate`]).

pub mod backend;
pub mod encode;
pub mod extended;
pub mod frame;
pub mod reader;
pub mod sqlstate;
pub mod startup;

pub use frame::{Frame, Item, Splitter};

/// Errors found while decoding wire data. All of them mean the peer broke
/// the protocol; the connection cannot continue.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ProtocolError {
    /// A length field below the protocol minimum or above the hard limit.
    #[error("invalid message length {len} for message type {tag:?}")]
    InvalidLength {
        /// The message tag, as a character.
        tag: char,
        /// The length field as sent (signed, as Postgres reads it).
        len: i64,
    },
    /// A message larger than `max_message_len`.
    #[error(
        "message of type {tag:?} is {len} bytes, over the limit of {max} bytes (max_message_len)"
    )]
    TooLarge {
        /// The message tag, as a character.
        tag: char,
        /// Its length in bytes.
        len: usize,
        /// The configured limit in bytes.
        max: usize,
    },
    /// A message whose body does not parse.
    #[error("malformed {0}")]
    Malformed(&'static str),
    /// A message that is not allowed at this point of the conversation.
    #[error("unexpected message type {0:?}")]
    Unexpected(char),
    /// A startup request pgtarn does not support.
    #[error("{0}")]
    Unsupported(String),
}
