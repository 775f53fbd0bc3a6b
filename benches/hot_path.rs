//! Criterion micro-benchmarks for the relay hot path.
//!
//! - `splitter`: splitting a server's select-only replies into frames.
//! - `ready_for_query`: the same stream with every frame looked at the way
//!   the session loop does (ReadyForQuery parsed and fed to `ServerState`).
//! - `rewrite`: prepared-statement name rewriting (Parse and Bind read and
//!   rebuilt under pgtarn's statement name, as `frontend::translate` does).
//! - `relay`: pgtarn end to end over loopback sockets: a client pushes
//!   select-only round trips (`Q` -> T, D, C, Z) through a running pgtarn
//!   (transaction pooling, trust login) to a tiny fake PostgreSQL written
//!   here, so no real server is needed.
//!
//! `cargo bench --bench hot_path` (add `-- relay` to run one group).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use pgtarn::backend::ServerState;
use pgtarn::config::Config;
use pgtarn::frontend::prepared::global_name;
use pgtarn::protocol::backend::{TxStatus, ready_for_query};
use pgtarn::protocol::extended;
use pgtarn::protocol::{Item, Splitter, frame::server_streamable};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A server's answer to a select-only pgbench transaction, repeated.
fn select_reply(times: usize) -> BytesMut {
    let mut one = BytesMut::new();
    // RowDescription with one int4 column.
    let mut t = BytesMut::new();
    t.put_u16(1);
    t.put_slice(b"abalance\0");
    t.put_u32(0);
    t.put_u16(0);
    t.put_u32(23);
    t.put_i16(4);
    t.put_i32(-1);
    t.put_u16(0);
    for (tag, body) in [
        (b'T', &t[..]),
        (b'D', &b"\x00\x01\x00\x00\x00\x011"[..]),
        (b'C', &b"SELECT 1\0"[..]),
        (b'Z', &b"I"[..]),
    ] {
        one.put_u8(tag);
        one.put_u32(body.len() as u32 + 4);
        one.put_slice(body);
    }
    let mut all = BytesMut::with_capacity(one.len() * times);
    for _ in 0..times {
        all.put_slice(&one);
    }
    all
}

fn frame_splitting(c: &mut Criterion) {
    let input = select_reply(1000);
    let mut g = c.benchmark_group("splitter");
    g.throughput(Throughput::Bytes(input.len() as u64));
    g.bench_function("select_replies_x1000", |b| {
        b.iter(|| {
            let mut buf = input.clone();
            let mut s = Splitter::new(8 << 20, server_streamable);
            let mut n = 0;
            while let Ok(Some(item)) = s.next(&mut buf) {
                if let Item::Frame(f) = item {
                    n += usize::from(f.tag() == b'Z');
                }
            }
            n
        })
    });
    g.finish();
}

/// Splitting plus what the session loop does per server frame: parse
/// ReadyForQuery and update the server's state (one Query per reply).
fn ready_for_query_detection(c: &mut Criterion) {
    let input = select_reply(1000);
    let mut g = c.benchmark_group("ready_for_query");
    g.throughput(Throughput::Elements(1000));
    g.bench_function("select_replies_x1000", |b| {
        b.iter(|| {
            let mut buf = input.clone();
            let mut s = Splitter::new(8 << 20, server_streamable);
            let mut state = ServerState::default();
            let mut idle = 0;
            state.on_client_message(b'Q');
            while let Ok(Some(item)) = s.next(&mut buf) {
                if let Item::Frame(f) = item
                    && f.tag() == b'Z'
                {
                    state.on_ready(ready_for_query(f.body()).unwrap());
                    if state.is_idle() {
                        idle += 1;
                        state.on_client_message(b'Q');
                    }
                }
            }
            assert_eq!(state.tx_status(), TxStatus::Idle);
            idle
        })
    });
    g.finish();
}

fn frame(tag: u8, body: &[u8]) -> BytesMut {
    let mut b = BytesMut::new();
    b.put_u8(tag);
    b.put_u32(body.len() as u32 + 4);
    b.put_slice(body);
    b
}

/// pgbench -M prepared's Parse and Bind of `P_0`, rewritten under the
/// statement's pgtarn-wide name.
fn statement_rewriting(c: &mut Criterion) {
    let mut parse_body = BytesMut::new();
    parse_body.put_slice(b"P_0\0SELECT abalance FROM pgbench_accounts WHERE aid = $1;\0");
    parse_body.put_i16(0);
    let parse = frame(b'P', &parse_body).freeze();
    let mut bind_body = BytesMut::new();
    bind_body.put_slice(b"\0P_0\0");
    bind_body.put_i16(0); // parameter formats
    bind_body.put_i16(1); // one parameter
    bind_body.put_i32(5);
    bind_body.put_slice(b"12345");
    bind_body.put_i16(0); // result formats
    let bind = frame(b'B', &bind_body).freeze();
    let mut g = c.benchmark_group("rewrite");
    let mut buf = BytesMut::new();
    g.bench_function("parse", |b| {
        b.iter(|| {
            let p = extended::parse(&parse[5..]).unwrap();
            let name = global_name(p.definition);
            extended::make_parse(&mut buf, &name, p.definition)
        })
    });
    let name = global_name(extended::parse(&parse[5..]).unwrap().definition);
    g.bench_function("bind", |b| {
        b.iter(|| {
            let bd = extended::bind(&bind[5..]).unwrap();
            extended::make_bind(&mut buf, &bd, &name)
        })
    });
    g.finish();
}

// ------------------------------------------------------------------ relay --

/// Reads one message (tag, body) or `None` at EOF.
async fn read_msg(s: &mut TcpStream, buf: &mut BytesMut) -> Option<(u8, BytesMut)> {
    loop {
        if buf.len() >= 5 {
            let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
            if buf.len() > len {
                let mut m = buf.split_to(len + 1);
                let tag = m[0];
                let _ = m.split_to(5);
                return Some((tag, m));
            }
        }
        if s.read_buf(buf).await.ok()? == 0 {
            return None;
        }
    }
}

/// A fake PostgreSQL: trust login, then answers every Query with the
/// select-only reply (T, D, C, Z).
async fn fake_postgres(listener: TcpListener) {
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            return;
        };
        let _ = s.set_nodelay(true);
        tokio::spawn(async move {
            // StartupMessage: length, then the body.
            let mut len = [0u8; 4];
            if s.read_exact(&mut len).await.is_err() {
                return;
            }
            let mut body = vec![0u8; u32::from_be_bytes(len) as usize - 4];
            if s.read_exact(&mut body).await.is_err() {
                return;
            }
            let mut out = BytesMut::new();
            out.extend_from_slice(&frame(b'R', &0u32.to_be_bytes()));
            for (k, v) in [
                ("server_version", "15.0"),
                ("client_encoding", "UTF8"),
                ("DateStyle", "ISO, MDY"),
                ("TimeZone", "UTC"),
                ("integer_datetimes", "on"),
                ("standard_conforming_strings", "on"),
            ] {
                out.extend_from_slice(&frame(b'S', format!("{k}\0{v}\0").as_bytes()));
            }
            out.extend_from_slice(&frame(b'K', &[0, 0, 0, 1, 0, 0, 0, 2]));
            out.extend_from_slice(&frame(b'Z', b"I"));
            if s.write_all(&out).await.is_err() {
                return;
            }
            let reply = select_reply(1).freeze();
            let mut buf = BytesMut::with_capacity(8192);
            while let Some((tag, _)) = read_msg(&mut s, &mut buf).await {
                let sent = match tag {
                    b'Q' => s.write_all(&reply).await,
                    b'X' => return,
                    _ => Ok(()),
                };
                if sent.is_err() {
                    return;
                }
            }
        });
    }
}

/// Logs in to pgtarn at `addr` (trust) and returns the connection.
async fn client_login(addr: SocketAddr) -> (TcpStream, BytesMut) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let params = b"user\0app\0database\0app\0\0";
    let mut startup = BytesMut::new();
    startup.put_u32(8 + params.len() as u32);
    startup.put_u32(196608);
    startup.put_slice(params);
    s.write_all(&startup).await.unwrap();
    let mut buf = BytesMut::with_capacity(8192);
    loop {
        let (tag, body) = read_msg(&mut s, &mut buf).await.expect("login");
        assert_ne!(tag, b'E', "login failed: {body:?}");
        if tag == b'Z' {
            return (s, buf);
        }
    }
}

/// `n` select-only round trips on one client connection.
async fn round_trips(s: &mut TcpStream, buf: &mut BytesMut, n: u64) {
    let q = frame(
        b'Q',
        b"SELECT abalance FROM pgbench_accounts WHERE aid = 1;\0",
    )
    .freeze();
    for _ in 0..n {
        s.write_all(&q).await.unwrap();
        while let Some((tag, _)) = read_msg(s, buf).await {
            if tag == b'Z' {
                break;
            }
        }
    }
}

fn relay(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (trigger, shutdown) = pgtarn::shutdown::channel();
    let addr = rt.block_on(async {
        let pg = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pg_port = pg.local_addr().unwrap().port();
        tokio::spawn(fake_postgres(pg));
        let config = Config::from_toml(&format!(
            r#"
[pgtarn]
listen_addr = "127.0.0.1:0"

[databases.app]
host = "127.0.0.1"
port = {pg_port}
pool_mode = "transaction"
pool_size = 4
auth_type = "trust"

[users.app]
password = "unused"

[tls.server]
mode = "disable"
"#
        ))
        .unwrap();
        let server = pgtarn::Pgtarn::bind(config).await.unwrap();
        let addr = server.local_addr().unwrap();
        tokio::spawn(server.run(shutdown));
        addr
    });
    let mut g = c.benchmark_group("relay");
    g.throughput(Throughput::Elements(1));
    g.measurement_time(Duration::from_secs(5));
    // One client: each round trip is client -> pgtarn -> fake server and
    // back, with a server checkout and release per transaction.
    g.bench_function("select_round_trip_1_client", |b| {
        let (mut s, mut buf) = rt.block_on(client_login(addr));
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                round_trips(&mut s, &mut buf, iters).await;
                start.elapsed()
            })
        });
    });
    // Eight concurrent clients sharing four servers: time per round trip
    // overall (throughput), with checkout waits.
    g.bench_function("select_round_trip_8_clients_4_servers", |b| {
        let mut clients: Vec<_> = (0..8).map(|_| rt.block_on(client_login(addr))).collect();
        b.iter_custom(|iters| {
            let per = iters.div_ceil(8);
            rt.block_on(async {
                let start = Instant::now();
                let tasks: Vec<_> = clients
                    .drain(..)
                    .map(|(mut s, mut buf)| {
                        tokio::spawn(async move {
                            round_trips(&mut s, &mut buf, per).await;
                            (s, buf)
                        })
                    })
                    .collect();
                for t in tasks {
                    clients.push(t.await.unwrap());
                }
                start.elapsed()
            })
        });
    });
    g.finish();
    trigger.trigger();
}

criterion_group!(
    benches,
    frame_splitting,
    ready_for_query_detection,
    statement_rewriting,
    relay
);
criterion_main!(benches);
