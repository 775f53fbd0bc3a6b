//! `[tls.client]` and `[tls.server]`: TLS between clients and pgtarn, and
//! between pgtarn and Postgres.

use std::path::PathBuf;

use serde::Deserialize;

/// `[tls]`: both directions.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// `[tls.client]`: clients connecting to pgtarn.
    #[serde(default)]
    pub client: ClientTls,
    /// `[tls.server]`: pgtarn connecting to Postgres.
    #[serde(default)]
    pub server: ServerTls,
}

/// Whether clients may or must use TLS (PgBouncer's `client_tls_sslmode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClientTlsMode {
    /// No TLS: SSLRequest is answered `N`.
    #[default]
    Disable,
    /// TLS if the client asks for it, plain otherwise.
    Allow,
    /// Same as `allow` on the server side: TLS if the client asks.
    Prefer,
    /// Clients must use TLS; a plaintext login gets 28000.
    Require,
}

/// `[tls.client]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientTls {
    /// `"disable"`, `"allow"`, `"prefer"` or `"require"`. Default `"disable"`.
    #[serde(default)]
    pub mode: ClientTlsMode,
    /// PEM certificate chain pgtarn presents. Required unless `disable`.
    pub cert: Option<PathBuf>,
    /// PEM private key for `cert`. Required unless `disable`.
    pub key: Option<PathBuf>,
    /// PEM CA bundle: when set, clients must present a certificate signed by
    /// it (mutual TLS); needs `mode = "require"` (refused with `allow` or
    /// `prefer`, which would let plaintext clients in without one).
    /// Default: none.
    pub ca: Option<PathBuf>,
}

/// libpq's `sslmode` for pgtarn's own connections to Postgres.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServerTlsMode {
    /// Plain TCP.
    Disable,
    /// TLS if the server offers it, without checking its certificate.
    #[default]
    Prefer,
    /// TLS required, certificate not checked.
    Require,
    /// TLS required, certificate checked against `ca`, host name not.
    VerifyCa,
    /// TLS required, certificate and host name checked.
    VerifyFull,
}

impl std::fmt::Display for ServerTlsMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl ServerTlsMode {
    /// The mode as written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            ServerTlsMode::Disable => "disable",
            ServerTlsMode::Prefer => "prefer",
            ServerTlsMode::Require => "require",
            ServerTlsMode::VerifyCa => "verify-ca",
            ServerTlsMode::VerifyFull => "verify-full",
        }
    }

    /// True if pgtarn sends an SSLRequest.
    pub fn requests_tls(self) -> bool {
        self != ServerTlsMode::Disable
    }

    /// True if a server that refuses TLS is an error.
    pub fn requires_tls(self) -> bool {
        !matches!(self, ServerTlsMode::Disable | ServerTlsMode::Prefer)
    }
}

/// `[tls.server]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTls {
    /// `"disable"`, `"prefer"`, `"require"`, `"verify-ca"` or
    /// `"verify-full"`; per database `server_tls_mode` overrides it.
    /// Default `"prefer"`.
    #[serde(default)]
    pub mode: ServerTlsMode,
    /// PEM CA bundle to check Postgres' certificate with. Required for
    /// `verify-ca` and `verify-full`.
    pub ca: Option<PathBuf>,
    /// PEM client certificate presented to Postgres. Default: none.
    pub cert: Option<PathBuf>,
    /// PEM private key for `cert`.
    pub key: Option<PathBuf>,
}
