//! Fuzzes the frame `Splitter`: the first two bytes pick the limit, the
//! side (which tags may be streamed) and the read size; the rest is the
//! byte stream, fed in reads of that size. Panics if a frame exceeds the
//! limit (other than a streamable one that arrived whole), is inconsistent, or if the output is not a prefix of the input.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use pgtarn::protocol::frame::{STREAM_THRESHOLD, client_streamable, server_streamable};
use pgtarn::protocol::{Frame, Item, Splitter};

fuzz_target!(|data: &[u8]| {
    let [mode, step, input @ ..] = data else {
        return;
    };
    let max_len = [1024, 4096, 70_000, 1 << 20][usize::from(mode & 3)];
    let streamable = if mode & 4 == 0 {
        client_streamable
    } else {
        server_streamable
    };
    let step = usize::from(*step).max(1);
    let mut splitter = Splitter::new(max_len, streamable);
    let mut buf = BytesMut::new();
    let mut out = Vec::with_capacity(input.len());
    'feed: for piece in input.chunks(step) {
        buf.extend_from_slice(piece);
        loop {
            match splitter.next(&mut buf) {
                Ok(None) => break,
                Ok(Some(Item::Frame(f))) => {
                    // Only a streamable message that was already read
                    // whole may come out as one frame over the limit.
                    let raw = f.raw();
                    assert!(
                        raw.len() - 1 <= max_len
                            || (streamable(raw[0]) && raw.len() > STREAM_THRESHOLD),
                        "frame over max_len"
                    );
                    assert!(Frame::from_raw(f.raw().clone()).is_some(), "bad frame");
                    out.extend_from_slice(f.raw());
                }
                Ok(Some(Item::Chunk(c))) => {
                    assert!(!c.is_empty(), "empty chunk");
                    out.extend_from_slice(&c);
                }
                Err(_) => break 'feed,
            }
        }
        assert!(
            buf.capacity() <= 2 * (max_len + 5 + input.len()),
            "over-reserved"
        );
    }
    assert!(
        input.starts_with(&out),
        "output is not a prefix of the input"
    );
});
