//! SQLSTATE codes pgtarn uses in the errors it sends itself.

/// 08P01 protocol_violation.
pub const PROTOCOL_VIOLATION: &str = "08P01";
/// 08006 connection_failure: the upstream connection failed.
pub const CONNECTION_FAILURE: &str = "08006";
/// 08001 sqlclient_unable_to_establish_sqlconnection.
pub const UNABLE_TO_CONNECT: &str = "08001";
/// 08004 sqlserver_rejected_establishment_of_sqlconnection.
pub const CONNECTION_REJECTED: &str = "08004";
/// 53300 too_many_connections.
pub const TOO_MANY_CONNECTIONS: &str = "53300";
/// 57014 query_canceled.
pub const QUERY_CANCELED: &str = "57014";
/// 57P01 admin_shutdown.
pub const ADMIN_SHUTDOWN: &str = "57P01";
/// 28P01 invalid_password.
pub const INVALID_PASSWORD: &str = "28P01";
/// 28000 invalid_authorization_specification.
pub const INVALID_AUTHORIZATION: &str = "28000";
/// 3D000 invalid_catalog_name: unknown database.
pub const INVALID_CATALOG_NAME: &str = "3D000";
/// 0A000 feature_not_supported.
pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
/// 42704 undefined_object.
pub const UNDEFINED_OBJECT: &str = "42704";
/// 58000 system_error: a fault inside pgtarn.
pub const SYSTEM_ERROR: &str = "58000";
/// 53400 configuration_limit_exceeded.
pub const CONFIGURATION_LIMIT_EXCEEDED: &str = "53400";
/// insufficient_privilege
pub const INSUFFICIENT_PRIVILEGE: &str = "42501";
/// syntax_error
pub const SYNTAX_ERROR: &str = "42601";
/// object_not_in_prerequisite_state
pub const OBJECT_NOT_IN_PREREQUISITE_STATE: &str = "55000";
/// idle_in_transaction_session_timeout
pub const IDLE_IN_TRANSACTION_TIMEOUT: &str = "25P03";
/// idle_session_timeout
pub const IDLE_SESSION_TIMEOUT: &str = "57P05";
/// config_file_error
pub const CONFIG_FILE_ERROR: &str = "F0000";
