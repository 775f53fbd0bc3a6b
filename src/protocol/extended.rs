//! Views and rewrites of the extended-query messages whose statement names
//! pgtarn changes: Parse, Bind, Describe and Close. Each rewrite builds a
//! new frame; everything after the names is copied unchanged.

use bytes::{BufMut, Bytes, BytesMut};

use super::reader::Reader;
use super::{Frame, ProtocolError, encode};

/// A Parse message: statement name, and the rest (query and parameter types).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parse<'a> {
    /// The statement name ("" for the unnamed statement).
    pub name: &'a str,
    /// Query text, NUL, parameter count and types: what defines the statement.
    pub definition: &'a [u8],
}

/// Reads a Parse body.
pub fn parse(body: &[u8]) -> Result<Parse<'_>, ProtocolError> {
    let mut r = Reader::new(body, "Parse");
    let name = r.cstr()?;
    let definition = r.remaining();
    let mut check = Reader::new(definition, "Parse");
    check.cstr_bytes()?;
    let n = check.i16()?;
    check.bytes(usize::try_from(n).map_err(|_| ProtocolError::Malformed("Parse"))? * 4)?;
    if !check.is_empty() {
        return Err(ProtocolError::Malformed("Parse"));
    }
    Ok(Parse { name, definition })
}

/// The query text of a Parse definition.
pub fn query_text(definition: &[u8]) -> &[u8] {
    let end = definition
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(definition.len());
    &definition[..end]
}

/// A Bind message's names and the bytes after them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bind<'a> {
    /// Destination portal.
    pub portal: &'a str,
    /// Source statement ("" for the unnamed statement).
    pub statement: &'a str,
    /// Parameter formats, values and result formats, unchanged.
    pub rest: &'a [u8],
}

/// Reads a Bind body.
pub fn bind(body: &[u8]) -> Result<Bind<'_>, ProtocolError> {
    let mut r = Reader::new(body, "Bind");
    Ok(Bind {
        portal: r.cstr()?,
        statement: r.cstr()?,
        rest: r.remaining(),
    })
}

/// The target of a Describe or Close: `b'S'` (statement) or `b'P'`
/// (portal), and its name.
pub fn target(body: &[u8]) -> Result<(u8, &str), ProtocolError> {
    let mut r = Reader::new(body, "Describe/Close");
    let kind = r.u8()?;
    let name = r.cstr()?;
    if !matches!(kind, b'S' | b'P') || !r.is_empty() {
        return Err(ProtocolError::Malformed("Describe/Close"));
    }
    Ok((kind, name))
}

fn build(buf: &mut BytesMut, tag: u8, body: impl FnOnce(&mut BytesMut)) -> Frame {
    encode::message(buf, tag, body);
    let raw = buf.split().freeze();
    Frame::from_raw(raw).expect("encoder output is a whole frame")
}

/// A Parse named `name` with `definition`, built in `buf`.
pub fn make_parse(buf: &mut BytesMut, name: &str, definition: &[u8]) -> Frame {
    build(buf, b'P', |b| {
        encode::put_cstr(b, name.as_bytes());
        b.put_slice(definition);
    })
}

/// `bind` with its statement name replaced by `statement`.
pub fn make_bind(buf: &mut BytesMut, bind: &Bind<'_>, statement: &str) -> Frame {
    build(buf, b'B', |b| {
        encode::put_cstr(b, bind.portal.as_bytes());
        encode::put_cstr(b, statement.as_bytes());
        b.put_slice(bind.rest);
    })
}

/// A Describe (`tag = b'D'`) or Close (`tag = b'C'`) of statement `name`.
pub fn make_statement_target(buf: &mut BytesMut, tag: u8, name: &str) -> Frame {
    build(buf, tag, |b| {
        b.put_u8(b'S');
        encode::put_cstr(b, name.as_bytes());
    })
}

/// ParseComplete.
pub fn parse_complete() -> Bytes {
    Bytes::from_static(b"1\0\0\0\x04")
}

/// CloseComplete.
pub fn close_complete() -> Bytes {
    Bytes::from_static(b"3\0\0\0\x04")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(f: &Frame) -> Vec<u8> {
        f.body().to_vec()
    }

    #[test]
    fn parse_round_trips_with_a_new_name() {
        let mut buf = BytesMut::new();
        let original = make_parse(&mut buf, "s1", b"select $1\0\0\x01\0\0\0\x17");
        let p = parse(original.body()).unwrap();
        assert_eq!(p.name, "s1");
        assert_eq!(query_text(p.definition), b"select $1");
        let renamed = make_parse(&mut buf, "pgtarn_x", p.definition);
        let q = parse(renamed.body()).unwrap();
        assert_eq!((q.name, q.definition), ("pgtarn_x", p.definition));
    }

    #[test]
    fn malformed_parse_is_an_error() {
        assert!(parse(b"s1\0select 1\0").is_err(), "no parameter count");
        assert!(
            parse(b"s1\0select 1\0\0\x02\0\0\0\x17").is_err(),
            "too few types"
        );
        assert!(parse(b"s1\0select 1\0\xff\xff").is_err(), "negative count");
        assert!(parse(b"s1").is_err());
    }

    #[test]
    fn bind_keeps_everything_but_the_statement_name() {
        let b = bind(b"p1\0s1\0\0\0\0\x01\0\0\0\x01x\0\0").unwrap();
        assert_eq!((b.portal, b.statement), ("p1", "s1"));
        let mut buf = BytesMut::new();
        let f = make_bind(&mut buf, &b, "g");
        assert_eq!(body(&f), b"p1\0g\0\0\0\0\x01\0\0\0\x01x\0\0");
        assert!(bind(b"p1\0").is_err());
    }

    #[test]
    fn describe_and_close_targets() {
        assert_eq!(target(b"Ss1\0").unwrap(), (b'S', "s1"));
        assert_eq!(target(b"P\0").unwrap(), (b'P', ""));
        assert!(target(b"Xs\0").is_err());
        assert!(target(b"S").is_err());
        let mut buf = BytesMut::new();
        let f = make_statement_target(&mut buf, b'C', "g");
        assert_eq!((f.tag(), body(&f)), (b'C', b"Sg\0".to_vec()));
    }
}
