//! Criterion micro-benchmarks for the relay hot path.

use bytes::{BufMut, BytesMut};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use pgtarn::protocol::{Item, Splitter, frame::server_streamable};

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

criterion_group!(benches, frame_splitting);
criterion_main!(benches);
