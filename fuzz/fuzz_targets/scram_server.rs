//! Fuzzes server-side SCRAM. The first byte picks the mechanism, whether
//! the client is on TLS, and whether the input is a client-first-message
//! or (after a valid client-first-message) a client-final-message. A
//! client-final-message not computed from the password must fail. In a
//! client-final-message the literal `NONCE` is replaced by the exchange's
//! nonce, so that the fuzzer gets past the nonce check.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgtarn::auth::scram::{
    ChannelBinding, SCRAM_SHA_256, SCRAM_SHA_256_PLUS, ScramSecret, ScramServer,
};

fn secret() -> ScramSecret {
    ScramSecret {
        iterations: 1,
        salt: vec![1, 2, 3, 4],
        stored_key: [7; 32],
        server_key: [8; 32],
    }
}

fuzz_target!(|data: &[u8]| {
    let [mode, rest @ ..] = data else {
        return;
    };
    let binding = if mode & 1 == 0 {
        ChannelBinding::None
    } else {
        ChannelBinding::TlsServerEndPoint(vec![9; 32])
    };
    let mechanism = if mode & 2 == 0 {
        SCRAM_SHA_256
    } else {
        SCRAM_SHA_256_PLUS
    };
    let mut server = ScramServer::new(secret(), binding);
    if mode & 4 == 0 {
        if let Ok(reply) = server.client_first(mechanism, rest) {
            assert!(reply.starts_with(b"r="));
        }
        assert!(server.client_key().is_none());
        return;
    }
    let reply = server
        .client_first(SCRAM_SHA_256, b"n,,n=,r=fuzznonce")
        .expect("a valid client-first-message");
    let nonce = reply[2..].split(|b| *b == b',').next().unwrap_or_default();
    let mut fin = rest.to_vec();
    if let Some(at) = fin.windows(5).position(|w| w == b"NONCE") {
        fin.splice(at..at + 5, nonce.iter().copied());
    }
    // StoredKey [7; 32] has no known preimage: no proof can pass.
    assert!(server.client_final(&fin).is_err());
    assert!(server.client_key().is_none());
});
