//! Forwarding a cancel request to the server running a query, over TLS when
//! that server's connections use it.

use std::net::SocketAddr;

use tokio::io::AsyncWriteExt;

use super::BackendError;
use super::tls::{UpstreamTls, negotiate};
use crate::net::Stream;
use crate::protocol::encode;
use crate::protocol::startup::CancelKey;

/// Where and how to cancel a server's running query.
#[derive(Debug, Clone)]
pub struct CancelTarget {
    /// The server's address.
    pub addr: SocketAddr,
    /// Its host name (for TLS verification).
    pub host: String,
    /// Its BackendKeyData.
    pub key: CancelKey,
    /// TLS settings, if its connections use TLS.
    pub tls: Option<UpstreamTls>,
}

impl CancelTarget {
    /// Opens a new connection and sends the CancelRequest.
    pub async fn send(&self) -> Result<(), BackendError> {
        let tcp = tokio::net::TcpStream::connect(self.addr).await?;
        let mut stream = match &self.tls {
            Some(tls) => negotiate(tcp, &self.host, tls).await?,
            None => Stream::Plain(tcp),
        };
        stream.send(&encode::cancel_request(self.key)).await?;
        stream.shutdown().await?;
        Ok(())
    }
}
