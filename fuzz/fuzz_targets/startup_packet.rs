//! Fuzzes the startup packet parser with arbitrary bytes; a packet that
//! parses as a StartupMessage must re-encode to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgtarn::protocol::startup::{self, MAX_STARTUP_LEN, StartupPacket};

fuzz_target!(|data: &[u8]| {
    if let Some(Ok(n)) = startup::packet_len(data) {
        assert!((8..=MAX_STARTUP_LEN).contains(&n));
    }
    if let Ok(StartupPacket::Startup(m)) = startup::parse(data) {
        let mut again = ((3i32 << 16) | i32::from(m.minor_version))
            .to_be_bytes()
            .to_vec();
        for (k, v) in &m.params {
            again.extend_from_slice(k.as_bytes());
            again.push(0);
            again.extend_from_slice(v.as_bytes());
            again.push(0);
        }
        again.push(0);
        assert_eq!(&again[..], &data[4..], "round trip");
    }
});
