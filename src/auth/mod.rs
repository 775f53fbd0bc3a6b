//! Authentication, sans-IO: server-side SCRAM-SHA-256 for clients, the
//! client side of SCRAM passthrough for upstream logins, and user secrets.
pub mod hba;
pub mod scram;
pub mod scram_client;
pub mod secret;

pub use secret::Secret;
