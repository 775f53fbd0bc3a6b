//! Authentication, sans-IO: server-side SCRAM-SHA-256 for clients.
pub mod scram;
