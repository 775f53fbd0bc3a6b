//! A minimal raw wire-protocol client for tests that must control exactly
//! what is sent and how fast replies are read (trust auth only).

use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use pgtarn::protocol::encode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A raw client connection.
pub struct Raw {
    /// The socket.
    pub stream: TcpStream,
    buf: BytesMut,
}

#[allow(dead_code)]
impl Raw {
    /// Opens a TCP connection without logging in.
    pub async fn open(addr: std::net::SocketAddr) -> Raw {
        let stream = TcpStream::connect(addr).await.expect("connect");
        Raw {
            stream,
            buf: BytesMut::new(),
        }
    }

    /// Wraps an already connected socket.
    pub fn from_stream(stream: TcpStream) -> Raw {
        Raw {
            stream,
            buf: BytesMut::new(),
        }
    }

    /// Opens and logs in (trust auth) as `user` to `db`, reading up to the
    /// first ReadyForQuery.
    pub async fn login(addr: std::net::SocketAddr, user: &str, db: &str) -> Raw {
        let mut raw = Raw::open(addr).await;
        raw.send(&encode::startup_message(&[
            ("user", user),
            ("database", db),
        ]))
        .await;
        raw.read_until(b'Z').await;
        raw
    }

    /// Reads and discards bytes until end of file; returns how many.
    pub async fn drain(&mut self) -> usize {
        let mut n = 0;
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            match tokio::io::AsyncReadExt::read(&mut self.stream, &mut chunk).await {
                Ok(0) | Err(_) => return n,
                Ok(k) => n += k,
            }
        }
    }

    /// Writes raw bytes.
    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// Sends a simple Query.
    pub async fn query(&mut self, sql: &str) {
        let mut b = BytesMut::new();
        encode::query(&mut b, sql);
        self.send(&b).await;
    }

    /// Reads one message: (tag, body), or `None` at EOF.
    pub async fn read(&mut self) -> Option<(u8, Bytes)> {
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]])
                    as usize;
                if self.buf.len() > len {
                    let tag = self.buf[0];
                    self.buf.advance(5);
                    return Some((tag, self.buf.split_to(len - 4).freeze()));
                }
            }
            self.buf.reserve(64 * 1024);
            if self.stream.read_buf(&mut self.buf).await.expect("read") == 0 {
                return None;
            }
        }
    }

    /// Reads messages until one with `tag`, returning all of them.
    pub async fn read_until(&mut self, tag: u8) -> Vec<(u8, Bytes)> {
        let mut out = Vec::new();
        let deadline = Duration::from_secs(30);
        tokio::time::timeout(deadline, async {
            while let Some(m) = self.read().await {
                let done = m.0 == tag;
                out.push(m);
                if done {
                    return;
                }
            }
        })
        .await
        .expect("reply within 30s");
        out
    }

    /// Reads to EOF (deadline 10 s) and returns what came.
    pub async fn read_to_eof(&mut self) -> Vec<(u8, Bytes)> {
        let mut out = Vec::new();
        let all = async {
            while let Some(m) = self.read().await {
                out.push(m);
            }
        };
        tokio::time::timeout(Duration::from_secs(10), all)
            .await
            .expect("EOF within 10s");
        out
    }
}

/// The SQLSTATE (`C` field) of an ErrorResponse body.
#[allow(dead_code)]
pub fn sqlstate(body: &[u8]) -> String {
    pgtarn::protocol::backend::error_fields(body)
        .expect("error fields")
        .code
}

/// Extended-protocol message builders (text parameters only).
#[allow(dead_code)]
pub mod ext {
    use bytes::{BufMut, BytesMut};
    use pgtarn::protocol::encode::{message, put_cstr};

    fn one(tag: u8, body: impl FnOnce(&mut BytesMut)) -> Vec<u8> {
        let mut b = BytesMut::new();
        message(&mut b, tag, body);
        b.to_vec()
    }

    /// Parse `sql` as statement `name` (no parameter types).
    pub fn parse(name: &str, sql: &str) -> Vec<u8> {
        one(b'P', |b| {
            put_cstr(b, name.as_bytes());
            put_cstr(b, sql.as_bytes());
            b.put_i16(0);
        })
    }

    /// Bind statement `stmt` to the unnamed portal with text parameters.
    pub fn bind(stmt: &str, params: &[&str]) -> Vec<u8> {
        one(b'B', |b| {
            put_cstr(b, b"");
            put_cstr(b, stmt.as_bytes());
            b.put_i16(0);
            b.put_i16(params.len() as i16);
            for p in params {
                b.put_i32(p.len() as i32);
                b.put_slice(p.as_bytes());
            }
            b.put_i16(0);
        })
    }

    /// Describe statement `name`.
    pub fn describe(name: &str) -> Vec<u8> {
        one(b'D', |b| {
            b.put_u8(b'S');
            put_cstr(b, name.as_bytes());
        })
    }

    /// Close statement `name`.
    pub fn close(name: &str) -> Vec<u8> {
        one(b'C', |b| {
            b.put_u8(b'S');
            put_cstr(b, name.as_bytes());
        })
    }

    /// Execute the unnamed portal.
    pub fn execute() -> Vec<u8> {
        one(b'E', |b| {
            put_cstr(b, b"");
            b.put_i32(0);
        })
    }

    /// Sync.
    pub fn sync() -> Vec<u8> {
        one(b'S', |_| {})
    }

    /// Bind + Execute + Sync of `stmt`.
    pub fn run(stmt: &str, params: &[&str]) -> Vec<u8> {
        [bind(stmt, params), execute(), sync()].concat()
    }
}

/// The tags of a reply sequence, as a string (e.g. "12DCZ").
#[allow(dead_code)]
pub fn tags(msgs: &[(u8, Bytes)]) -> String {
    msgs.iter().map(|(t, _)| *t as char).collect()
}

/// The first column of each DataRow, as text.
#[allow(dead_code)]
pub fn first_columns(msgs: &[(u8, Bytes)]) -> Vec<String> {
    msgs.iter()
        .filter(|(t, _)| *t == b'D')
        .map(|(_, body)| {
            let cols = pgtarn::protocol::backend::data_row(body).expect("DataRow");
            String::from_utf8_lossy(cols[0].unwrap_or(b"NULL")).into_owned()
        })
        .collect()
}

/// The SQLSTATEs of the ErrorResponses in a reply sequence.
#[allow(dead_code)]
pub fn errors(msgs: &[(u8, Bytes)]) -> Vec<String> {
    msgs.iter()
        .filter(|(t, _)| *t == b'E')
        .map(|(_, b)| sqlstate(b))
        .collect()
}
