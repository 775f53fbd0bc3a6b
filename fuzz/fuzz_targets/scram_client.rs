//! Fuzzes the client side of SCRAM passthrough: arbitrary
//! server-first-message, then arbitrary server-final-message. The input
//! is split at the first NUL; the literal `NONCE` in the first part is
//! replaced by the client's nonce so that the fuzzer can reach the
//! server-final step.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgtarn::auth::scram_client::{PassthroughClient, ScramKeys};

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(2, |b| *b == 0);
    let first = parts.next().unwrap_or_default();
    let fin = parts.next().unwrap_or_default();
    let mut client = PassthroughClient::new(ScramKeys {
        client_key: [1; 32],
        server_key: [2; 32],
    });
    let ours = client.client_first();
    let nonce = &ours[b"n,,n=,r=".len()..];
    let mut first = first.to_vec();
    if let Some(at) = first.windows(5).position(|w| w == b"NONCE") {
        first.splice(at..at + 5, nonce.iter().copied());
    }
    assert!(client.server_final(fin).is_err(), "out of order");
    if let Ok(reply) = client.server_first(&first) {
        assert!(reply.starts_with(b"c=biws,r="));
        // ServerKey [2; 32] signs nothing the fuzzer can produce by chance.
        let _ = client.server_final(fin);
    }
});
