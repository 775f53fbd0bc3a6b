//! Typed views of the server messages pgtarn reads: authentication requests,
//! ParameterStatus, BackendKeyData, ReadyForQuery and ErrorResponse.

use super::ProtocolError;
use super::reader::Reader;
use super::startup::CancelKey;

/// Transaction status reported by ReadyForQuery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TxStatus {
    /// `I`: not in a transaction block.
    #[default]
    Idle,
    /// `T`: in a transaction block.
    InTransaction,
    /// `E`: in a failed transaction block.
    Failed,
}

impl TxStatus {
    /// The status byte on the wire.
    pub fn byte(self) -> u8 {
        match self {
            TxStatus::Idle => b'I',
            TxStatus::InTransaction => b'T',
            TxStatus::Failed => b'E',
        }
    }
}

/// Parses a ReadyForQuery body.
pub fn ready_for_query(body: &[u8]) -> Result<TxStatus, ProtocolError> {
    match body {
        b"I" => Ok(TxStatus::Idle),
        b"T" => Ok(TxStatus::InTransaction),
        b"E" => Ok(TxStatus::Failed),
        _ => Err(ProtocolError::Malformed("ReadyForQuery")),
    }
}

/// Parses a ParameterStatus body into (name, value).
pub fn parameter_status(body: &[u8]) -> Result<(&str, &str), ProtocolError> {
    let mut r = Reader::new(body, "ParameterStatus");
    Ok((r.cstr()?, r.cstr()?))
}

/// Parses a DataRow body into its column values (`None` for NULL).
pub fn data_row(body: &[u8]) -> Result<Vec<Option<&[u8]>>, ProtocolError> {
    let mut r = Reader::new(body, "DataRow");
    let n = r.i16()?;
    let mut cols = Vec::with_capacity(usize::try_from(n).unwrap_or(0));
    for _ in 0..n {
        let len = r.i32()?;
        cols.push(match usize::try_from(len) {
            Ok(len) => Some(r.bytes(len)?),
            Err(_) => None,
        });
    }
    Ok(cols)
}

/// The result type a RowDescription body describes, as a hash of its
/// column count and each column's name, type and type modifier: what
/// DDL changes when Postgres reports `cached plan must not change result
/// type`. The table and column numbers and formats are left out, so that
/// tables of the same shape in other schemas agree.
pub fn row_shape(body: &[u8]) -> Result<u64, ProtocolError> {
    use std::hash::{Hash, Hasher};
    let mut r = Reader::new(body, "RowDescription");
    let n = r.i16()?;
    let mut h = std::hash::DefaultHasher::new();
    n.hash(&mut h);
    for _ in 0..n {
        r.cstr_bytes()?.hash(&mut h);
        let _table_and_column = r.bytes(6)?;
        r.i32()?.hash(&mut h);
        let _type_len = r.i16()?;
        r.i32()?.hash(&mut h);
        let _format = r.i16()?;
    }
    Ok(h.finish())
}

/// The [`row_shape`] of a statement that returns no rows (NoData).
pub const NO_ROWS: u64 = u64::MAX;

/// Parses a BackendKeyData body (protocol 3.0: two `i32`s).
pub fn backend_key_data(body: &[u8]) -> Result<CancelKey, ProtocolError> {
    let mut r = Reader::new(body, "BackendKeyData");
    Ok(CancelKey {
        pid: r.i32()?,
        secret: r.i32()?,
    })
}

/// An authentication request from the server (`R` message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthRequest<'a> {
    /// AuthenticationOk.
    Ok,
    /// AuthenticationCleartextPassword.
    Cleartext,
    /// AuthenticationMD5Password with its salt.
    Md5([u8; 4]),
    /// AuthenticationSASL with the mechanisms offered.
    Sasl(Vec<&'a str>),
    /// AuthenticationSASLContinue with server data.
    SaslContinue(&'a [u8]),
    /// AuthenticationSASLFinal with server data.
    SaslFinal(&'a [u8]),
    /// Any other method (Kerberos, GSS, SSPI...).
    Other(i32),
}

/// Parses an `R` message body.
pub fn auth_request(body: &[u8]) -> Result<AuthRequest<'_>, ProtocolError> {
    let mut r = Reader::new(body, "authentication request");
    Ok(match r.i32()? {
        0 => AuthRequest::Ok,
        3 => AuthRequest::Cleartext,
        5 => {
            let s = r.bytes(4)?;
            AuthRequest::Md5([s[0], s[1], s[2], s[3]])
        }
        10 => {
            let mut mechs = Vec::new();
            loop {
                let m = r.cstr()?;
                if m.is_empty() {
                    break;
                }
                mechs.push(m);
            }
            AuthRequest::Sasl(mechs)
        }
        11 => AuthRequest::SaslContinue(r.remaining()),
        12 => AuthRequest::SaslFinal(r.remaining()),
        n => AuthRequest::Other(n),
    })
}

/// The fields of an ErrorResponse or NoticeResponse that pgtarn uses.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ErrorFields {
    /// `S`: severity (ERROR, FATAL, ...).
    pub severity: String,
    /// `C`: SQLSTATE code.
    pub code: String,
    /// `M`: primary message.
    pub message: String,
}

impl std::fmt::Display for ErrorFields {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} (SQLSTATE {})",
            self.severity, self.message, self.code
        )
    }
}

/// Parses an ErrorResponse/NoticeResponse body; unknown fields are skipped.
pub fn error_fields(body: &[u8]) -> Result<ErrorFields, ProtocolError> {
    let mut r = Reader::new(body, "ErrorResponse");
    let mut e = ErrorFields::default();
    loop {
        let field = r.u8()?;
        if field == 0 {
            return Ok(e);
        }
        let value = String::from_utf8_lossy(r.cstr_bytes()?).into_owned();
        match field {
            b'S' => e.severity = value,
            b'C' => e.code = value,
            b'M' => e.message = value,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_server_messages() {
        assert_eq!(ready_for_query(b"T").unwrap(), TxStatus::InTransaction);
        assert!(ready_for_query(b"X").is_err());
        assert!(ready_for_query(b"").is_err());
        assert_eq!(
            parameter_status(b"TimeZone\0UTC\0").unwrap(),
            ("TimeZone", "UTC")
        );
        assert!(parameter_status(b"TimeZone\0UTC").is_err());
        let e = error_fields(b"SERROR\0C28P01\0Mbad\0Rauth.c\0\0").unwrap();
        assert_eq!(
            (e.severity.as_str(), e.code.as_str(), e.message.as_str()),
            ("ERROR", "28P01", "bad")
        );
        assert!(error_fields(b"SERROR\0").is_err());
        let mut sasl = 10i32.to_be_bytes().to_vec();
        sasl.extend_from_slice(b"SCRAM-SHA-256\0\0");
        assert_eq!(
            auth_request(&sasl).unwrap(),
            AuthRequest::Sasl(vec!["SCRAM-SHA-256"])
        );
        assert!(
            auth_request(&5i32.to_be_bytes()).is_err(),
            "md5 without salt"
        );
    }

    fn row_description(columns: &[(&str, u32, i32, i32)]) -> Vec<u8> {
        let mut b = (columns.len() as i16).to_be_bytes().to_vec();
        for (name, table, type_oid, typmod) in columns {
            b.extend_from_slice(name.as_bytes());
            b.push(0);
            b.extend_from_slice(&table.to_be_bytes());
            b.extend_from_slice(&1i16.to_be_bytes());
            b.extend_from_slice(&type_oid.to_be_bytes());
            b.extend_from_slice(&4i16.to_be_bytes());
            b.extend_from_slice(&typmod.to_be_bytes());
            b.extend_from_slice(&0i16.to_be_bytes());
        }
        b
    }

    #[test]
    fn row_shapes_follow_names_types_and_modifiers_only() {
        let shape = |cols: &[(&str, u32, i32, i32)]| row_shape(&row_description(cols)).unwrap();
        let a = shape(&[("a", 100, 23, -1)]);
        assert_eq!(a, shape(&[("a", 200, 23, -1)]), "another schema's table");
        assert_ne!(a, shape(&[("a", 100, 23, -1), ("b", 100, 23, -1)]));
        assert_ne!(a, shape(&[("a", 100, 20, -1)]), "another type");
        assert_ne!(a, shape(&[("a", 100, 23, 8)]), "another modifier");
        assert_ne!(a, shape(&[("b", 100, 23, -1)]), "renamed");
        assert_ne!(shape(&[]), NO_ROWS);
        let body = row_description(&[("a", 100, 23, -1)]);
        assert!(row_shape(&body[..body.len() - 1]).is_err(), "truncated");
    }
}
