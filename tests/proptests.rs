//! Property tests for the parsers that read untrusted bytes: the frame
//! [`Splitter`], the startup packet parser, both sides of SCRAM and the
//! config file. Each property feeds arbitrary (or structured-but-random)
//! input and checks the parser never panics, never over-allocates, and
//! either answers correctly or returns an error.
//!
//! Case counts are kept small enough for the whole file to run in well
//! under 20 s on a debug build; `PROPTEST_CASES` raises them.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::BytesMut;
use hmac::{Hmac, KeyInit, Mac};
use pgtarn::auth::scram::{
    ChannelBinding, SCRAM_SHA_256, SCRAM_SHA_256_PLUS, ScramError, ScramSecret, ScramServer,
};
use pgtarn::auth::scram_client::{PassthroughClient, ScramKeys};
use pgtarn::config::{Config, ConfigError};
use pgtarn::protocol::ProtocolError;
use pgtarn::protocol::frame::{
    HARD_MAX_LEN, HEADER_LEN, STREAM_THRESHOLD, client_streamable, server_streamable,
};
use pgtarn::protocol::startup::{self, MAX_STARTUP_LEN, StartupPacket};
use pgtarn::protocol::{Frame, Item, Splitter};
use proptest::prelude::*;
use sha2::{Digest, Sha256};

/// Cases per property unless `PROPTEST_CASES` says otherwise.
fn cases(n: u32) -> ProptestConfig {
    let n = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(n);
    ProptestConfig {
        cases: n,
        // Failure persistence files would land in tests/; the shrunk input
        // is printed in the failure message instead.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------
// Frame splitter
// ---------------------------------------------------------------------

/// One encoded message: tag, length, body.
fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    v.extend_from_slice(body);
    v
}

/// A piece of a byte stream: mostly well-formed messages (some large
/// enough to be streamed), sometimes raw garbage.
fn stream_piece() -> impl Strategy<Value = Vec<u8>> {
    let tag = prop_oneof![
        Just(b'D'),
        Just(b'd'),
        Just(b'Q'),
        Just(b'Z'),
        Just(b'N'),
        any::<u8>()
    ];
    prop_oneof![
        6 => (tag.clone(), proptest::collection::vec(any::<u8>(), 0..300))
            .prop_map(|(t, body)| msg(t, &body)),
        1 => (tag, STREAM_THRESHOLD - 100..STREAM_THRESHOLD + 9_000, any::<u8>())
            .prop_map(|(t, n, fill)| msg(t, &vec![fill; n])),
        1 => proptest::collection::vec(any::<u8>(), 1..12),
    ]
}

/// What feeding `input` to a splitter in `cuts` pieces produced.
struct SplitRun {
    /// Frames and chunks, flattened back to bytes, in order.
    out: Vec<u8>,
    /// Whether the splitter returned an error (it stops there).
    error: Option<ProtocolError>,
    /// Bytes still buffered at the end.
    leftover: Vec<u8>,
}

/// Feeds `input` split at `cuts` (positions, any order, any range) and
/// checks the per-item invariants on the way.
fn run_splitter(
    input: &[u8],
    cuts: &[usize],
    max_len: usize,
    streamable: fn(u8) -> bool,
) -> Result<SplitRun, TestCaseError> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
    points.push(input.len());
    points.sort_unstable();
    let mut splitter = Splitter::new(max_len, streamable);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut fed = 0;
    for point in points {
        buf.extend_from_slice(&input[fed..point]);
        fed = point;
        loop {
            let was_streaming = splitter.in_stream();
            match splitter.next(&mut buf) {
                Ok(None) => {
                    // Waiting for a buffered frame reserves at most its size.
                    prop_assert!(
                        buf.capacity() <= 2 * (max_len + HEADER_LEN + input.len()),
                        "capacity {} for max_len {max_len}",
                        buf.capacity()
                    );
                    break;
                }
                Ok(Some(Item::Frame(frame))) => {
                    prop_assert!(!was_streaming, "a frame inside a streamed message");
                    let raw = frame.raw().clone();
                    // Over the limit only a streamable message may come out
                    // whole, when all of it was already read (no memory is
                    // reserved for it); otherwise it is streamed.
                    prop_assert!(
                        raw.len() - 1 <= max_len || streamable(raw[0]),
                        "frame of {} bytes (tag {}) over max_len {max_len}",
                        raw.len(),
                        raw[0]
                    );
                    prop_assert_eq!(Frame::from_raw(raw.clone()), Some(frame));
                    out.extend_from_slice(&raw);
                }
                Ok(Some(Item::Chunk(chunk))) => {
                    prop_assert!(!chunk.is_empty(), "empty chunk");
                    if !was_streaming {
                        // The first chunk starts with the header.
                        prop_assert!(chunk.len() >= HEADER_LEN);
                        let len = u32::from_be_bytes(chunk[1..5].try_into().unwrap()) as usize;
                        prop_assert!(streamable(chunk[0]), "streamed tag {}", chunk[0]);
                        prop_assert!(
                            len + 1 > STREAM_THRESHOLD || len > max_len,
                            "streamed a {len}-byte frame"
                        );
                        prop_assert!(len <= HARD_MAX_LEN);
                    }
                    out.extend_from_slice(&chunk);
                }
                Err(e) => {
                    return Ok(SplitRun {
                        out,
                        error: Some(e),
                        leftover: buf.to_vec(),
                    });
                }
            }
        }
    }
    Ok(SplitRun {
        out,
        error: None,
        leftover: buf.to_vec(),
    })
}

proptest! {
    #![proptest_config(cases(1000))]

    /// Well-formed and garbage messages, split anywhere: no panic, no frame
    /// over the limit, and what comes out is exactly a prefix of the input
    /// (all of it, with the leftover, when there was no error).
    #[test]
    fn splitter_reassembles_any_stream_split_anywhere(
        pieces in proptest::collection::vec(stream_piece(), 0..12),
        cuts in proptest::collection::vec(any::<usize>(), 0..20),
        max_len in prop_oneof![Just(1024usize), Just(8192), Just(200_000)],
        server_side in any::<bool>(),
    ) {
        let input = pieces.concat();
        let streamable = if server_side { server_streamable } else { client_streamable };
        let run = run_splitter(&input, &cuts, max_len, streamable)?;
        prop_assert!(input.starts_with(&run.out), "output is not a prefix of the input");
        if run.error.is_none() {
            prop_assert_eq!([run.out, run.leftover].concat(), input);
        } else {
            prop_assert!(run.out.len() + run.leftover.len() <= input.len());
        }
    }

    /// Well-formed messages only: every message comes out, none is lost or
    /// merged, and frames keep their tags and bodies.
    #[test]
    fn splitter_returns_every_valid_message_in_order(
        bodies in proptest::collection::vec(
            (any::<u8>(), proptest::collection::vec(any::<u8>(), 0..200)), 0..20),
        cuts in proptest::collection::vec(any::<usize>(), 0..20),
    ) {
        let input: Vec<u8> = bodies.iter().flat_map(|(t, b)| msg(*t, b)).collect();
        let run = run_splitter(&input, &cuts, 1024, client_streamable)?;
        prop_assert!(run.error.is_none(), "{:?}", run.error);
        prop_assert!(run.leftover.is_empty());
        prop_assert_eq!(run.out, input);
    }

    /// A length field below 4, above the hard limit, or above `max_len` for
    /// a tag that may not be streamed is an error as soon as the header is
    /// readable — before any room is reserved for the body.
    #[test]
    fn splitter_rejects_bad_lengths_before_allocating(
        tag in any::<u8>(),
        len in prop_oneof![
            0u32..4,
            (HARD_MAX_LEN as u32 + 1)..=u32::MAX,
            1025u32..=(HARD_MAX_LEN as u32),
        ],
        tail in proptest::collection::vec(any::<u8>(), 0..16),
    ) {
        // Streamable messages over the threshold or over max_len (1024) are
        // streamed, not refused.
        let streamable_big = client_streamable(tag)
            && (len as usize + 1 > STREAM_THRESHOLD || len as usize > 1024);
        prop_assume!(!(streamable_big && len as usize <= HARD_MAX_LEN));
        let mut buf = BytesMut::with_capacity(64);
        buf.extend_from_slice(&[tag]);
        buf.extend_from_slice(&len.to_be_bytes());
        buf.extend_from_slice(&tail);
        let before = buf.capacity();
        let mut s = Splitter::new(1024, client_streamable);
        let err = s.next(&mut buf);
        prop_assert!(
            matches!(
                err,
                Err(ProtocolError::InvalidLength { .. } | ProtocolError::TooLarge { .. })
            ),
            "length {len}: {err:?}"
        );
        prop_assert_eq!(buf.capacity(), before, "reserved memory for length {}", len);
    }
}

// ---------------------------------------------------------------------
// Startup packets
// ---------------------------------------------------------------------

/// A parameter name or value: anything without NUL, often short ASCII.
fn cstring() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z_.]{0,12}",
        any::<String>().prop_map(|s| s.replace('\0', "")),
    ]
}

/// A parsed StartupMessage's parameters, owned.
fn owned(m: &startup::StartupMessage) -> Vec<(String, String)> {
    m.params()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// The bytes of a StartupMessage with protocol 3.`minor`.
fn startup_bytes(minor: u16, params: &[(String, String)]) -> Vec<u8> {
    let mut v = vec![0, 0, 0, 0];
    v.extend_from_slice(&((3i32 << 16) | i32::from(minor)).to_be_bytes());
    for (k, val) in params {
        v.extend_from_slice(k.as_bytes());
        v.push(0);
        v.extend_from_slice(val.as_bytes());
        v.push(0);
    }
    v.push(0);
    let len = v.len() as u32;
    v[..4].copy_from_slice(&len.to_be_bytes());
    v
}

proptest! {
    #![proptest_config(cases(2000))]

    /// Arbitrary bytes: `packet_len` and `parse` never panic; a length is
    /// only accepted in 8..=10000; and whatever parses as a StartupMessage
    /// re-encodes to exactly the bytes it was parsed from.
    #[test]
    fn startup_parser_survives_arbitrary_bytes(
        bytes in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..64),
            // Valid-looking headers with arbitrary bodies.
            (any::<u16>(), proptest::collection::vec(any::<u8>(), 0..64)).prop_map(|(minor, body)| {
                let mut v = ((body.len() + 8) as u32).to_be_bytes().to_vec();
                v.extend_from_slice(&((3i32 << 16) | i32::from(minor)).to_be_bytes());
                v.extend_from_slice(&body);
                v
            }),
        ],
    ) {
        match startup::packet_len(&bytes) {
            None => prop_assert!(bytes.len() < 4),
            Some(Ok(n)) => prop_assert!((8..=MAX_STARTUP_LEN).contains(&n)),
            Some(Err(e)) => {
                let invalid = matches!(e, ProtocolError::InvalidLength { .. });
                prop_assert!(invalid, "{:?}", e);
            }
        }
        if let Ok(StartupPacket::Startup(m)) = startup::parse(&bytes) {
            let again = startup_bytes(m.minor_version, &owned(&m));
            prop_assert_eq!(&again[4..], &bytes[4..]);
        }
    }

    /// Generated packets of every kind parse back to what was encoded.
    #[test]
    fn startup_packets_round_trip(
        minor in any::<u16>(),
        params in proptest::collection::vec(
            (cstring().prop_filter("non-empty key", |k| !k.is_empty()), cstring()), 0..8),
        pid in any::<i32>(),
        secret in any::<i32>(),
    ) {
        let bytes = startup_bytes(minor, &params);
        if bytes.len() <= MAX_STARTUP_LEN {
            prop_assert_eq!(startup::packet_len(&bytes), Some(Ok(bytes.len())));
        }
        let StartupPacket::Startup(m) = startup::parse(&bytes).expect("valid packet") else {
            return Err(TestCaseError::fail("not a StartupMessage"));
        };
        prop_assert_eq!(m.minor_version, minor);
        prop_assert_eq!(&owned(&m), &params);

        let key = pgtarn::protocol::startup::CancelKey { pid, secret };
        let cancel = pgtarn::protocol::encode::cancel_request(key);
        prop_assert_eq!(startup::parse(&cancel), Ok(StartupPacket::Cancel(key)));
        let mut ssl = 8u32.to_be_bytes().to_vec();
        ssl.extend_from_slice(&startup::SSL_REQUEST.to_be_bytes());
        prop_assert_eq!(startup::parse(&ssl), Ok(StartupPacket::SslRequest));
    }
}

// ---------------------------------------------------------------------
// SCRAM, server side
// ---------------------------------------------------------------------

type HmacSha256 = Hmac<Sha256>;

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(key).expect("any key length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

fn xor(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
    std::array::from_fn(|i| a[i] ^ b[i])
}

/// `Hi()` of RFC 5802, written independently of pgtarn's.
fn salted_password(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut u = hmac(password, &[salt, &1u32.to_be_bytes()].concat());
    let mut out = u;
    for _ in 1..iterations {
        u = hmac(password, &u);
        out = xor(&out, &u);
    }
    out
}

/// A secret for `password` (raw bytes, no SASLprep) and the ClientKey.
fn secret_for(password: &[u8], salt: Vec<u8>, iterations: u32) -> (ScramSecret, [u8; 32]) {
    let salted = salted_password(password, &salt, iterations);
    let client_key = hmac(&salted, b"Client Key");
    let secret = ScramSecret {
        iterations,
        salt,
        stored_key: Sha256::digest(client_key).into(),
        server_key: hmac(&salted, b"Server Key"),
    };
    (secret, client_key)
}

/// A fresh server for a fixed secret.
fn server() -> ScramServer {
    let (secret, _) = secret_for(b"pw", vec![1, 2, 3], 1);
    ScramServer::new(secret, ChannelBinding::None)
}

/// A printable client nonce (no ',').
fn nonce() -> impl Strategy<Value = String> {
    "[!-+\\--~]{1,64}"
}

/// Text that looks like a SCRAM message: attributes from the grammar with
/// random values, in random order, sometimes with raw bytes.
fn scram_like() -> impl Strategy<Value = Vec<u8>> {
    let attr = prop_oneof![
        Just("n".to_owned()),
        Just("y".to_owned()),
        Just("p=tls-server-end-point".to_owned()),
        Just(String::new()),
        "[a-z]=[ -~]{0,40}",
        "(c|r|p|n|s|i|v|e|m|a)=[A-Za-z0-9+/=]{0,60}",
    ];
    prop_oneof![
        proptest::collection::vec(attr, 0..8).prop_map(|a| a.join(",").into_bytes()),
        proptest::collection::vec(any::<u8>(), 0..200),
        proptest::collection::vec(any::<u8>(), 1000..1100),
    ]
}

proptest! {
    #![proptest_config(cases(1000))]

    /// Any client-first-message and mechanism: an answer or an error, never
    /// a panic; only a well-formed message gets a server-first-message that
    /// echoes its nonce.
    #[test]
    fn scram_server_client_first_never_panics(
        data in scram_like(),
        mechanism in prop_oneof![
            Just(SCRAM_SHA_256.to_owned()),
            Just(SCRAM_SHA_256_PLUS.to_owned()),
            any::<String>(),
        ],
        tls in any::<bool>(),
    ) {
        let (secret, _) = secret_for(b"pw", vec![9; 16], 1);
        let binding = if tls {
            ChannelBinding::TlsServerEndPoint(vec![7; 32])
        } else {
            ChannelBinding::None
        };
        let mut server = ScramServer::new(secret, binding);
        match server.client_first(&mechanism, &data) {
            Ok(reply) => {
                let reply = String::from_utf8(reply).expect("UTF-8 reply");
                prop_assert!(reply.starts_with("r="), "{reply}");
                prop_assert!(data.len() <= 1024);
            }
            Err(e) => prop_assert!(!matches!(e, ScramError::InvalidProof | ScramError::OutOfOrder)),
        }
        prop_assert_eq!(server.client_key(), None);
    }

    /// After a valid client-first-message, any client-final-message that
    /// was not computed from the password is an error (never a panic, never
    /// a ClientKey), and the exchange is over.
    #[test]
    fn scram_server_rejects_arbitrary_client_final(
        client_nonce in nonce(),
        data in prop_oneof![
            scram_like(),
            // Right shape, echoing the right nonce, random proof.
            (any::<[u8; 32]>(), proptest::collection::vec(any::<u8>(), 0..40))
                .prop_map(|(proof, ext)| {
                    format!("c=biws,r=NONCE,p={}{}", STANDARD.encode(proof),
                        String::from_utf8_lossy(&ext)).into_bytes()
                }),
        ],
    ) {
        let mut server = server();
        let first = server
            .client_first(SCRAM_SHA_256, format!("n,,n=,r={client_nonce}").as_bytes())
            .expect("valid client-first");
        let first = String::from_utf8(first).expect("UTF-8");
        let full_nonce = first
            .strip_prefix("r=")
            .and_then(|r| r.split(',').next())
            .expect("nonce");
        let data = String::from_utf8_lossy(&data).replace("NONCE", full_nonce).into_bytes();
        prop_assert!(server.client_final(&data).is_err());
        prop_assert_eq!(server.client_key(), None);
        prop_assert!(matches!(server.client_final(&data), Err(ScramError::OutOfOrder)));
    }

    /// A full exchange computed independently (random password bytes,
    /// salt, iteration count, client nonce, extensions and channel binding)
    /// succeeds, returns the right server signature and ClientKey; with a
    /// different password it fails with InvalidProof.
    #[test]
    fn scram_server_accepts_a_correct_exchange(
        password in proptest::collection::vec(any::<u8>(), 0..40),
        wrong in proptest::collection::vec(any::<u8>(), 0..40),
        salt in proptest::collection::vec(any::<u8>(), 1..32),
        iterations in 1u32..64,
        client_nonce in nonce(),
        user in "[a-z=2C]{0,10}",
        extension in proptest::option::of("[a-z]=[a-z0-9]{0,8}"),
        cbind in proptest::option::of(proptest::collection::vec(any::<u8>(), 1..64)),
    ) {
        let (secret, client_key) = secret_for(&password, salt, iterations);
        let (binding, mechanism, gs2) = match &cbind {
            Some(data) => (
                ChannelBinding::TlsServerEndPoint(data.clone()),
                SCRAM_SHA_256_PLUS,
                "p=tls-server-end-point,,",
            ),
            None => (ChannelBinding::None, SCRAM_SHA_256, "n,,"),
        };
        let ext = extension.map(|e| format!(",{e}")).unwrap_or_default();
        let bare = format!("n={user},r={client_nonce}{ext}");
        let cbind_input = [gs2.as_bytes(), cbind.as_deref().unwrap_or_default()].concat();
        let without_proof_for = |server_first: &str| {
            let nonce = server_first
                .strip_prefix("r=")
                .and_then(|r| r.split(',').next())
                .expect("nonce")
                .to_owned();
            format!("c={},r={nonce}", STANDARD.encode(&cbind_input))
        };
        for (pw, good) in [(&password, true), (&wrong, false)] {
            // HMAC pads its key with zero bytes, so passwords that differ
            // only in trailing NULs are the same key to PBKDF2: not "wrong".
            let trimmed = |p: &[u8]| p.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
            if !good && wrong[..trimmed(&wrong)] == password[..trimmed(&password)] {
                continue;
            }
            let mut server = ScramServer::new(secret.clone(), binding.clone());
            let first = server
                .client_first(mechanism, format!("{gs2}{bare}").as_bytes())
                .expect("valid client-first");
            let first = String::from_utf8(first).expect("UTF-8");
            let echoes = first.starts_with(&format!("r={client_nonce}"));
            prop_assert!(echoes, "{}", first);
            let without_proof = without_proof_for(&first);
            let auth_message = format!("{bare},{first},{without_proof}");
            let salted = salted_password(pw, &secret.salt, iterations);
            let my_client_key = hmac(&salted, b"Client Key");
            let stored: [u8; 32] = Sha256::digest(my_client_key).into();
            let proof = xor(&my_client_key, &hmac(&stored, auth_message.as_bytes()));
            let fin = format!("{without_proof},p={}", STANDARD.encode(proof));
            let result = server.client_final(fin.as_bytes());
            if good {
                let reply = result.expect("correct proof accepted");
                let expected = hmac(&secret.server_key, auth_message.as_bytes());
                prop_assert_eq!(reply, format!("v={}", STANDARD.encode(expected)).into_bytes());
                prop_assert_eq!(server.client_key(), Some(client_key));
            } else {
                prop_assert!(matches!(result, Err(ScramError::InvalidProof)), "{result:?}");
                prop_assert_eq!(server.client_key(), None);
            }
        }
    }
}

proptest! {
    #![proptest_config(cases(24))]

    /// Secrets derived from any Unicode password (SASLprep included) let a
    /// standard client (postgres-protocol's) in.
    #[test]
    fn scram_secret_from_any_password_admits_a_standard_client(password in any::<String>()) {
        use postgres_protocol::authentication::sasl::{ChannelBinding as B, ScramSha256};
        let mut server = ScramServer::new(ScramSecret::from_password(&password), ChannelBinding::None);
        let mut client = ScramSha256::new(password.as_bytes(), B::unsupported());
        let first = server.client_first(SCRAM_SHA_256, client.message()).expect("client-first");
        client.update(&first).expect("server-first accepted by the client");
        let fin = server.client_final(client.message()).expect("proof accepted");
        client.finish(&fin).expect("server signature accepted by the client");
    }
}

// ---------------------------------------------------------------------
// SCRAM, client side (passthrough)
// ---------------------------------------------------------------------

fn passthrough() -> (PassthroughClient, String) {
    let client = PassthroughClient::new(ScramKeys {
        client_key: [1; 32],
        server_key: [2; 32],
    });
    let first = String::from_utf8(client.client_first()).expect("UTF-8");
    let nonce = first
        .strip_prefix("n,,n=,r=")
        .expect("our format")
        .to_owned();
    (client, nonce)
}

proptest! {
    #![proptest_config(cases(1000))]

    /// Any server-first-message: an error, or (only when it extends our
    /// nonce) a client-final-message echoing it; then any
    /// server-final-message is an error unless it carries the right
    /// signature. No panic anywhere, and server-final before server-first is
    /// OutOfOrder.
    #[test]
    fn scram_client_survives_arbitrary_server_messages(
        first in scram_like(),
        extend in proptest::option::of("[!-+\\--~]{0,30}"),
        rest in "[ -~]{0,40}",
        fin in scram_like(),
    ) {
        let (mut client, nonce) = passthrough();
        prop_assert!(matches!(client.server_final(&fin), Err(ScramError::OutOfOrder)));
        let first = match &extend {
            Some(ext) => format!("r={nonce}{ext}{rest}").into_bytes(),
            None => first,
        };
        match client.server_first(&first) {
            Ok(reply) => {
                let reply = String::from_utf8(reply).expect("UTF-8");
                let text = String::from_utf8_lossy(&first);
                let echoed = text.strip_prefix("r=").and_then(|r| r.split(',').next());
                prop_assert!(echoed.is_some_and(|n| n.starts_with(&nonce) && n.len() > nonce.len()));
                let expected = format!("c=biws,r={}", echoed.unwrap_or(""));
                prop_assert!(reply.starts_with(&expected), "{}", reply);
                prop_assert!(client.server_final(&fin).is_err());
            }
            Err(e) => prop_assert!(matches!(e, ScramError::Malformed(_))),
        }
    }

    /// Passthrough against pgtarn's own SCRAM server with random verifiers:
    /// both sides accept each other.
    #[test]
    fn scram_passthrough_round_trips(
        password in proptest::collection::vec(any::<u8>(), 0..32),
        salt in proptest::collection::vec(any::<u8>(), 1..32),
        iterations in 1u32..32,
    ) {
        let (secret, client_key) = secret_for(&password, salt, iterations);
        let keys = ScramKeys { client_key, server_key: secret.server_key };
        let mut upstream = ScramServer::new(secret, ChannelBinding::None);
        let mut client = PassthroughClient::new(keys);
        let first = upstream.client_first(SCRAM_SHA_256, &client.client_first()).expect("first");
        let last = client.server_first(&first).expect("server-first");
        let fin = upstream.client_final(&last).expect("proof accepted");
        prop_assert!(client.server_final(&fin).is_ok());
        prop_assert!(client.server_final(b"v=AAAA").is_err());
    }
}

// ---------------------------------------------------------------------
// Config
// ---------------------------------------------------------------------

/// Known keys per section, plus a few unknown ones.
const GENERAL_KEYS: &[&str] = &[
    "listen_addr",
    "max_client_conn",
    "query_wait_timeout",
    "server_connect_timeout",
    "server_idle_timeout",
    "server_lifetime",
    "client_login_timeout",
    "max_message_len",
    "auth_type",
    "server_reset_query",
    "server_reset_timeout",
    "workers",
    "max_prepared_statements",
    "auth_user",
    "admin_users",
    "metrics_addr",
    "stats_period",
    "query_timeout",
    "cancel_wait_timeout",
    "shutdown_timeout",
    "listen_port",
];
const DATABASE_KEYS: &[&str] = &[
    "host",
    "port",
    "dbname",
    "pool_mode",
    "pool_size",
    "min_pool_size",
    "auth_type",
    "server_tls_mode",
    "poolsize",
];
const USER_KEYS: &[&str] = &["password", "pasword"];
const TLS_KEYS: &[&str] = &["mode", "cert", "key", "ca", "crl"];

/// A TOML value of any type, biased towards plausible ones.
fn toml_value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        (0i64..70_000).prop_map(|n| n.to_string()),
        Just("0".to_owned()),
        any::<bool>().prop_map(|b| b.to_string()),
        "(0|1|500|30|120)(ms|s|m|h|d|)".prop_map(|s| format!("\"{s}\"")),
        prop_oneof![
            Just("\"127.0.0.1:6432\""),
            Just("\"[::1]:0\""),
            Just("\"localhost\""),
            Just("\"transaction\""),
            Just("\"session\""),
            Just("\"statement\""),
            Just("\"trust\""),
            Just("\"md5\""),
            Just("\"scram-sha-256\""),
            Just("\"disable\""),
            Just("\"require\""),
            Just("\"verify-full\""),
            Just("\"SCRAM-SHA-256$4096:c2FsdA==$AAAA:AAAA\""),
            Just("\"md50123456789abcdef0123456789abcdef\""),
            Just("[]"),
            Just("[\"app\"]"),
            Just("1.5"),
            Just("{ a = 1 }"),
        ]
        .prop_map(str::to_owned),
        any::<String>().prop_map(|s| toml::Value::String(s).to_string()),
    ]
}

/// A section: header, then key = value lines.
fn section(header: &'static str, keys: &'static [&'static str]) -> impl Strategy<Value = String> {
    (
        "[a-z]{1,6}",
        proptest::collection::vec((proptest::sample::select(keys), toml_value()), 0..6),
    )
        .prop_map(move |(name, kvs)| {
            let mut seen = std::collections::HashSet::new();
            let mut out = header.replace("NAME", &name) + "\n";
            for (k, v) in kvs {
                if seen.insert(k) {
                    out += &format!("{k} = {v}\n");
                }
            }
            out
        })
}

proptest! {
    #![proptest_config(cases(1500))]

    /// Any mix of known and unknown keys with values of any type: parsing
    /// and validation return Ok or an error, never panic; a validation
    /// error names a dotted key, and every error names a key or section
    /// that appears in the text.
    #[test]
    fn config_parse_and_validate_never_panic(
        sections in proptest::collection::vec(prop_oneof![
            section("[pgtarn]", GENERAL_KEYS),
            section("[databases.NAME]", DATABASE_KEYS),
            section("[users.NAME]", USER_KEYS),
            section("[tls.client]", TLS_KEYS),
            section("[tls.server]", TLS_KEYS),
        ], 0..5),
    ) {
        // Repeated table headers are a TOML error; keep the first of each.
        let mut seen = std::collections::HashSet::new();
        let text: String = sections
            .into_iter()
            .filter(|s| seen.insert(s.lines().next().unwrap_or_default().to_owned()))
            .collect();
        match Config::from_toml(&text) {
            Ok(config) => prop_assert!(config.validate().is_ok()),
            Err(ConfigError::Invalid { key, reason }) => {
                prop_assert!(!reason.is_empty());
                let head = key.split('.').next().unwrap_or_default();
                prop_assert!(
                    ["pgtarn", "databases", "users", "tls"].contains(&head),
                    "key {key:?}"
                );
                if head == "databases" || head == "users" {
                    let table = key.split('.').take(2).collect::<Vec<_>>().join(".");
                    prop_assert!(text.contains(&format!("[{table}]")), "{key} not in\n{text}");
                }
            }
            Err(ConfigError::Parse(message)) => {
                let named = text
                    .lines()
                    .filter_map(|l| l.split(" = ").next())
                    .chain(text.lines().filter(|l| l.starts_with('[')))
                    .map(|k| k.trim_matches(['[', ']']))
                    .any(|k| !k.is_empty() && message.contains(k));
                prop_assert!(named, "error names no key: {message}\n---\n{text}");
            }
            Err(e @ ConfigError::Read { .. }) => {
                return Err(TestCaseError::fail(format!("read error from text: {e}")));
            }
        }
    }

    /// Arbitrary text (mostly not TOML at all) is a parse error, never a
    /// panic.
    #[test]
    fn config_arbitrary_text_never_panics(text in any::<String>()) {
        let _ = Config::from_toml(&text);
    }
}
