//! Encoding admin console answers: result sets, notices, command tags.

use bytes::{BufMut, BytesMut};

use crate::protocol::encode::{message, put_cstr};

/// A column's type, as PgBouncer declares its admin columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    /// `text` (OID 25).
    Text,
    /// `int4` (OID 23).
    Int4,
    /// `int8` (OID 20).
    Int8,
    /// `numeric` (OID 1700): PgBouncer's type for `SHOW STATS` figures.
    Numeric,
}

impl Type {
    fn oid_and_len(self) -> (u32, i16) {
        match self {
            Type::Text => (25, -1),
            Type::Int4 => (23, 4),
            Type::Int8 => (20, 8),
            Type::Numeric => (1700, -1),
        }
    }
}

/// One result set being built: columns, then rows of text values.
#[derive(Debug)]
pub struct ResultSet {
    columns: Vec<(&'static str, Type)>,
    rows: Vec<Vec<Option<String>>>,
}

impl ResultSet {
    /// A result set with these columns.
    pub fn new(columns: &[(&'static str, Type)]) -> ResultSet {
        ResultSet {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; `None` is NULL.
    pub fn row(&mut self, values: Vec<Option<String>>) {
        debug_assert_eq!(values.len(), self.columns.len());
        self.rows.push(values);
    }

    /// Number of rows so far.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// True if no row was added.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// RowDescription, DataRows and CommandComplete `SHOW`.
    pub fn encode(&self, out: &mut BytesMut) {
        message(out, b'T', |b| {
            b.put_u16(self.columns.len() as u16);
            for (name, ty) in &self.columns {
                let (oid, len) = ty.oid_and_len();
                put_cstr(b, name.as_bytes());
                b.put_u32(0);
                b.put_i16(0);
                b.put_u32(oid);
                b.put_i16(len);
                b.put_i32(-1);
                b.put_i16(0);
            }
        });
        for row in &self.rows {
            message(out, b'D', |b| {
                b.put_u16(row.len() as u16);
                for v in row {
                    match v {
                        Some(v) => {
                            b.put_i32(v.len() as i32);
                            b.put_slice(v.as_bytes());
                        }
                        None => b.put_i32(-1),
                    }
                }
            });
        }
        command_complete(out, "SHOW");
    }
}

/// CommandComplete with `tag`.
pub fn command_complete(out: &mut BytesMut, tag: &str) {
    message(out, b'C', |b| put_cstr(b, tag.as_bytes()));
}

/// A NoticeResponse (severity NOTICE) with a message and detail.
pub fn notice(out: &mut BytesMut, text: &str, detail: &str) {
    message(out, b'N', |b| {
        for (field, value) in [
            (b'S', "NOTICE"),
            (b'V', "NOTICE"),
            (b'C', "00000"),
            (b'M', text),
            (b'D', detail),
        ] {
            b.put_u8(field);
            put_cstr(b, value.as_bytes());
        }
        b.put_u8(0);
    });
}

/// Text of a value, for a row.
pub fn v(x: impl ToString) -> Option<String> {
    Some(x.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_result_set_encodes_description_rows_and_tag() {
        let mut rs = ResultSet::new(&[("name", Type::Text), ("n", Type::Int4)]);
        rs.row(vec![v("a"), None]);
        let mut out = BytesMut::new();
        rs.encode(&mut out);
        assert_eq!(out[0], b'T');
        let tags: Vec<u8> = {
            let mut tags = Vec::new();
            let mut i = 0;
            while i < out.len() {
                tags.push(out[i]);
                let len = u32::from_be_bytes([out[i + 1], out[i + 2], out[i + 3], out[i + 4]]);
                i += 1 + len as usize;
            }
            tags
        };
        assert_eq!(tags, b"TDC");
    }
}
