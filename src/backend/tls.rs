//! TLS to Postgres: the SSLRequest exchange and the handshake, for server
//! connections and for cancel requests alike.

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::BackendError;
use crate::net::Stream;
use crate::protocol::startup::SSL_REQUEST;

/// How pgtarn uses TLS towards one database.
#[derive(Clone)]
pub struct UpstreamTls {
    /// The rustls client configuration (verification per mode).
    pub config: Arc<rustls::ClientConfig>,
    /// True if a server that refuses TLS is an error (`require` and up).
    pub required: bool,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "UpstreamTls {{ required: {} }}", self.required)
    }
}

/// Asks `host` for TLS on `tcp` and performs the handshake if it agrees.
pub async fn negotiate(
    mut tcp: TcpStream,
    host: &str,
    tls: &UpstreamTls,
) -> Result<Stream, BackendError> {
    let mut request = 8u32.to_be_bytes().to_vec();
    request.extend_from_slice(&SSL_REQUEST.to_be_bytes());
    tcp.write_all(&request).await?;
    match tcp.read_u8().await? {
        b'S' => {
            let name =
                crate::tls::server_name(host).map_err(|e| BackendError::Tls(e.to_string()))?;
            let connector = TlsConnector::from(tls.config.clone());
            let stream = connector
                .connect(name, tcp)
                .await
                .map_err(|e| BackendError::Tls(format!("TLS handshake with {host} failed: {e}")))?;
            Ok(Stream::ClientTls(Box::new(stream)))
        }
        b'N' if tls.required => Err(BackendError::Tls(format!(
            "server {host} does not support TLS, but tls.server mode requires it"
        ))),
        b'N' => Ok(Stream::Plain(tcp)),
        other => Err(BackendError::Tls(format!(
            "unexpected answer {:?} to SSLRequest from {host}",
            other as char
        ))),
    }
}
