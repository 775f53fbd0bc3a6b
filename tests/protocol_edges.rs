//! Wire-protocol edge cases at pgtarn's front door: encryption requests,
//! malformed and oversized messages, half-open clients, relayed notices and
//! ParameterStatus, the login parameter set, stray cancel requests, and
//! COPY FROM STDIN that fails or whose data comes right behind the query.
//! pgtarn runs in-process with `auth_type = "trust"` so the raw client can
//! log in.

mod common;

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use common::one;
use common::pg::PgServer;
use common::pooler::Pooler;
use common::raw::{self, Raw, errors, ext, first_columns};
use common::wait_until;
use pgtarn::protocol::backend::error_fields;
use pgtarn::protocol::encode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

const DEADLINE: Duration = Duration::from_secs(10);
/// Request codes from the protocol documentation.
const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;
const CANCEL_REQUEST: u32 = 80_877_102;

async fn trust_pooler(general: &str) -> Pooler {
    trust_pooler_with("", general).await
}

/// A trust pooler with `database` settings (e.g. `pool_size`).
async fn trust_pooler_with(database: &str, general: &str) -> Pooler {
    Pooler::trust(general, database).await
}

/// An untagged startup-phase packet: length, code, then `rest`.
fn packet(code: u32, rest: &[u8]) -> Vec<u8> {
    let mut v = ((rest.len() + 8) as u32).to_be_bytes().to_vec();
    v.extend_from_slice(&code.to_be_bytes());
    v.extend_from_slice(rest);
    v
}

fn app_startup(extra: &[(&str, &str)]) -> bytes::Bytes {
    let mut params = vec![("user", "app"), ("database", "app")];
    params.extend_from_slice(extra);
    encode::startup_message(&params)
}

fn tags(msgs: &[(u8, bytes::Bytes)]) -> String {
    msgs.iter().map(|(t, _)| *t as char).collect()
}

/// The first column of the first DataRow in `msgs`.
fn first_value(msgs: &[(u8, bytes::Bytes)]) -> Option<String> {
    let (_, body) = msgs.iter().find(|(t, _)| *t == b'D')?;
    let len = i32::from_be_bytes(body[2..6].try_into().unwrap());
    let len = usize::try_from(len).ok()?;
    Some(String::from_utf8_lossy(&body[6..6 + len]).into_owned())
}

/// Name and value of a ParameterStatus body.
fn param_status(body: &[u8]) -> (String, String) {
    let mut parts = body.split(|b| *b == 0).map(String::from_utf8_lossy);
    let name = parts.next().expect("name").into_owned();
    let value = parts.next().expect("value").into_owned();
    (name, value)
}

/// Reads the next message (deadline 10 s), expects an ErrorResponse with
/// SQLSTATE 08P01 and then EOF; returns the error's message.
async fn expect_08p01_then_eof(raw: &mut Raw, what: &str) -> String {
    let next = timeout(DEADLINE, raw.read()).await;
    let (tag, body) = next
        .unwrap_or_else(|_| panic!("{what}: no reply within {DEADLINE:?}"))
        .unwrap_or_else(|| panic!("{what}: EOF without an ErrorResponse"));
    assert_eq!(tag as char, 'E', "{what}: expected an ErrorResponse");
    let fields = error_fields(&body).expect("error fields");
    assert_eq!(raw::sqlstate(&body), "08P01", "{what}: {fields}");
    let rest = raw.read_to_eof().await;
    assert!(
        rest.is_empty(),
        "{what}: messages after the error: {}",
        tags(&rest)
    );
    fields.message
}

/// Reads until pgtarn closes the connection (EOF or reset, deadline 10 s)
/// and splits what came into messages.
async fn read_until_closed(rd: &mut tokio::net::tcp::OwnedReadHalf) -> Vec<(u8, Vec<u8>)> {
    let mut bytes = Vec::new();
    let read_all = async {
        let mut chunk = [0u8; 8192];
        loop {
            match rd.read(&mut chunk).await {
                Ok(0) => return,
                Ok(n) => bytes.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return,
                Err(e) => panic!("read: {e}"),
            }
        }
    };
    timeout(DEADLINE, read_all)
        .await
        .expect("pgtarn closes the connection");
    let mut msgs = Vec::new();
    let mut rest = &bytes[..];
    while rest.len() >= 5 {
        let len = u32::from_be_bytes(rest[1..5].try_into().unwrap()) as usize;
        assert!(rest.len() > len, "truncated message from pgtarn");
        msgs.push((rest[0], rest[5..1 + len].to_vec()));
        rest = &rest[1 + len..];
    }
    assert!(rest.is_empty(), "trailing bytes from pgtarn: {rest:?}");
    msgs
}

#[tokio::test]
async fn ssl_and_gssenc_requests_are_refused_then_login_works() {
    let p = trust_pooler("").await;
    let mut raw = Raw::open(p.addr).await;
    for code in [SSL_REQUEST, GSSENC_REQUEST] {
        raw.send(&packet(code, b"")).await;
        let mut answer = [0u8; 1];
        timeout(DEADLINE, raw.stream.read_exact(&mut answer))
            .await
            .expect("an answer within 10 s")
            .expect("one byte");
        assert_eq!(answer, *b"N", "request {code} refused with N");
    }
    raw.send(&app_startup(&[])).await;
    let login = raw.read_until(b'Z').await;
    assert!(!login.iter().any(|(t, _)| *t == b'E'), "{}", tags(&login));
    raw.query("select 'after negotiation'").await;
    let reply = raw.read_until(b'Z').await;
    assert_eq!(first_value(&reply).as_deref(), Some("after negotiation"));
}

#[tokio::test]
async fn malformed_startup_packets_get_08p01_then_eof() {
    let p = trust_pooler("").await;
    let cases = [
        ("length 3", 3u32.to_be_bytes().to_vec()),
        ("length 0", 0u32.to_be_bytes().to_vec()),
        ("length 10_000_001", 10_000_001u32.to_be_bytes().to_vec()),
        ("negative length", 0xFFFF_FFF0u32.to_be_bytes().to_vec()),
        (
            "protocol 2.0",
            packet(2 << 16, b"user\0app\0database\0app\0\0"),
        ),
    ];
    for (what, bytes) in cases {
        let mut raw = Raw::open(p.addr).await;
        raw.send(&bytes).await;
        expect_08p01_then_eof(&mut raw, what).await;
    }
    let c = p.connect().await;
    assert_eq!(one(&c, "select 'still serving'").await, "still serving");
}

#[tokio::test]
async fn bad_or_oversized_messages_after_login_end_only_that_client() {
    let p = trust_pooler("max_message_len = 65536").await;
    let bystander = p.connect().await;
    assert_eq!(one(&bystander, "select 'before'").await, "before");
    for len in [2u32, 0x7fff_ffff] {
        let mut raw = Raw::login(p.addr, "app", "app").await;
        let mut msg = vec![b'Q'];
        msg.extend_from_slice(&len.to_be_bytes());
        raw.send(&msg).await;
        expect_08p01_then_eof(&mut raw, &format!("'Q' with length {len}")).await;
    }

    let raw = Raw::login(p.addr, "app", "app").await;
    let (mut rd, mut wr) = raw.stream.into_split();
    let mut query = BytesMut::new();
    encode::query(&mut query, &format!("select '{}'", "x".repeat(200_000)));
    // pgtarn may close before reading it all: the write may fail.
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(&query).await;
        wr
    });
    let msgs = read_until_closed(&mut rd).await;
    drop(writer.await.expect("writer task"));
    assert_eq!(msgs.len(), 1, "one ErrorResponse, then EOF");
    let (tag, body) = &msgs[0];
    assert_eq!(*tag as char, 'E');
    let fields = error_fields(body).expect("error fields");
    assert_eq!(fields.code, "08P01", "{fields}");
    assert!(fields.message.contains("max_message_len"), "{fields}");

    assert_eq!(one(&bystander, "select 'after'").await, "after");
    let fresh = p.connect().await;
    assert_eq!(one(&fresh, "select 'fresh'").await, "fresh");
}

#[tokio::test]
async fn two_hundred_half_startup_packets_leave_pgtarn_serving() {
    let p = trust_pooler("").await;
    let c = p.connect().await;
    assert_eq!(one(&c, "select 1").await, "1");
    let size = p.pool().size();
    let startup = app_startup(&[]);
    let half = &startup[..startup.len() / 2];
    for _ in 0..200 {
        let mut raw = Raw::open(p.addr).await;
        raw.send(half).await;
        drop(raw);
    }
    let fresh = timeout(DEADLINE, p.connect())
        .await
        .expect("a new client logs in within 10 s");
    assert_eq!(one(&fresh, "select 'served'").await, "served");
    assert_eq!(one(&c, "select 'old client'").await, "old client");
    assert_eq!(p.pool().size(), size, "no server opened or lost");
}

#[tokio::test]
async fn notices_and_parameter_status_are_relayed() {
    let p = trust_pooler("").await;
    let mut raw = Raw::login(p.addr, "app", "app").await;
    raw.query("DO $$ BEGIN RAISE NOTICE 'hello from pg'; END $$")
        .await;
    let reply = raw.read_until(b'Z').await;
    let notice = reply
        .iter()
        .find(|(t, _)| *t == b'N')
        .unwrap_or_else(|| panic!("no NoticeResponse in {}", tags(&reply)));
    let fields = error_fields(&notice.1).expect("notice fields");
    assert_eq!(fields.message, "hello from pg", "{fields}");

    raw.query("SET application_name = 'changed'").await;
    let reply = raw.read_until(b'Z').await;
    let statuses: Vec<_> = reply
        .iter()
        .filter(|(t, _)| *t == b'S')
        .map(|(_, b)| param_status(b))
        .collect();
    assert!(
        statuses.contains(&("application_name".into(), "changed".into())),
        "ParameterStatus messages: {statuses:?} in {}",
        tags(&reply)
    );
}

#[tokio::test]
async fn login_reports_the_parameter_status_set_and_a_key() {
    let p = trust_pooler("").await;
    let mut raw = Raw::open(p.addr).await;
    raw.send(&app_startup(&[("application_name", "myapp")]))
        .await;
    let login = raw.read_until(b'Z').await;
    assert!(!login.iter().any(|(t, _)| *t == b'E'), "{}", tags(&login));
    let params: BTreeMap<String, String> = login
        .iter()
        .filter(|(t, _)| *t == b'S')
        .map(|(_, b)| param_status(b))
        .collect();
    for name in [
        "server_version",
        "server_encoding",
        "client_encoding",
        "DateStyle",
        "TimeZone",
        "integer_datetimes",
        "standard_conforming_strings",
    ] {
        assert!(params.contains_key(name), "{name} missing from {params:?}");
    }
    assert_eq!(params["application_name"], "myapp", "{params:?}");
    assert_eq!(params["server_encoding"], "UTF8");
    assert_eq!(params["integer_datetimes"], "on");
    let keys: Vec<_> = login.iter().filter(|(t, _)| *t == b'K').collect();
    assert_eq!(keys.len(), 1, "one BackendKeyData in {}", tags(&login));
    assert_eq!(keys[0].1.len(), 8, "pid and secret");
    let (tag, body) = login.last().expect("messages");
    assert_eq!((*tag, &body[..]), (b'Z', &b"I"[..]), "{}", tags(&login));
}

#[tokio::test]
async fn unknown_cancel_keys_are_ignored_silently() {
    let p = trust_pooler("").await;
    let mut sleeper = Raw::open(p.addr).await;
    sleeper.send(&app_startup(&[])).await;
    let login = sleeper.read_until(b'Z').await;
    let (_, key) = login
        .iter()
        .find(|(t, _)| *t == b'K')
        .expect("BackendKeyData");
    let pid = u32::from_be_bytes(key[..4].try_into().unwrap());
    let secret = u32::from_be_bytes(key[4..8].try_into().unwrap());
    let marker = format!("cancel bystander {}", std::process::id());
    let sql = format!("select '{marker}', pg_sleep(2)");
    sleeper.query(&sql).await;
    let admin = PgServer::shared().superuser().await;
    wait_until("the bystander's query runs", DEADLINE, || {
        let (admin, sql) = (&admin, &sql);
        async move {
            let check =
                "select count(*) from pg_stat_activity where query = $1 and state = 'active'";
            let n: i64 = admin.query_one(check, &[sql]).await.unwrap().get(0);
            n > 0
        }
    })
    .await;
    let bogus = [
        (rand::random::<u32>(), rand::random::<u32>()),
        (pid, secret.wrapping_add(1)),
    ];
    for (pid, secret) in bogus {
        let mut raw = Raw::open(p.addr).await;
        let mut key = pid.to_be_bytes().to_vec();
        key.extend_from_slice(&secret.to_be_bytes());
        raw.send(&packet(CANCEL_REQUEST, &key)).await;
        let mut got = Vec::new();
        timeout(DEADLINE, raw.stream.read_to_end(&mut got))
            .await
            .expect("pgtarn closes the cancel connection")
            .expect("a clean close");
        assert!(got.is_empty(), "pgtarn answered a CancelRequest: {got:?}");
    }
    let reply = sleeper.read_until(b'Z').await;
    assert!(
        !reply.iter().any(|(t, _)| *t == b'E'),
        "the bystander's query failed: {}",
        tags(&reply)
    );
    assert_eq!(first_value(&reply), Some(marker), "{}", tags(&reply));
}

fn msg(tag: u8, body: impl FnOnce(&mut BytesMut)) -> Vec<u8> {
    let mut b = BytesMut::new();
    encode::message(&mut b, tag, body);
    b.to_vec()
}

fn copy_data(data: &[u8]) -> Vec<u8> {
    msg(b'd', |b| b.put_slice(data))
}

fn copy_done() -> Vec<u8> {
    msg(b'c', |_| {})
}

/// Reads until `tag`, failing (instead of panicking after 30 s) after 5 s.
async fn read_until_5s(raw: &mut Raw, tag: u8) -> Option<Vec<(u8, Bytes)>> {
    let mut out = Vec::new();
    let r = timeout(Duration::from_secs(5), async {
        while let Some(m) = raw.read().await {
            let done = m.0 == tag;
            out.push(m);
            if done {
                return true;
            }
        }
        false
    })
    .await;
    match r {
        Ok(true) => Some(out),
        _ => {
            eprintln!("got so far: {}", tags(&out));
            None
        }
    }
}

/// COPY FROM STDIN sent through the extended protocol (as tokio-postgres
/// and libpq's PQexecParams do) that fails on a bad row while the client
/// is still sending data: Postgres reports the error, discards the rest
/// of the copy up to Sync, and the connection is usable again.
#[tokio::test]
async fn extended_copy_in_that_fails_mid_stream_leaves_the_session_usable() {
    copy_fail_case("edge_copy_fail_a", "").await;
}

/// Control: the same exchange without the statement translator.
#[tokio::test]
async fn control_extended_copy_failure_without_translator() {
    copy_fail_case("edge_copy_fail_b", "max_prepared_statements = 0").await;
}

async fn copy_fail_case(table: &str, general: &str) {
    let p = trust_pooler_with("pool_size = 1", general).await;
    p.connect()
        .await
        .batch_execute(&format!(
            "drop table if exists {table}; create table {table} (i int)"
        ))
        .await
        .unwrap();
    let mut c = Raw::login(p.addr, "app", "app").await;
    c.send(
        &[
            ext::parse("", &format!("copy {table} from stdin")),
            ext::bind("", &[]),
            ext::execute(),
            ext::sync(),
        ]
        .concat(),
    )
    .await;
    let got = read_until_5s(&mut c, b'G').await.expect("CopyInResponse");
    assert_eq!(tags(&got), "12G");
    // A bad row: the server fails the COPY at once.
    c.send(&copy_data(b"not a number\n")).await;
    let got = read_until_5s(&mut c, b'E').await.expect("the COPY error");
    assert_eq!(errors(&got), ["22P02"]);
    // The client finishes its side of the copy, as libpq does.
    c.send(&[copy_data(b"1\n"), copy_done(), ext::sync()].concat())
        .await;
    let got = read_until_5s(&mut c, b'Z').await.expect("ReadyForQuery");
    assert_eq!(tags(&got), "Z");
    // The connection must work again.
    c.query("select 'alive'").await;
    let got = read_until_5s(&mut c, b'Z')
        .await
        .expect("the simple query after the failed COPY gets an answer");
    assert_eq!(first_columns(&got), ["alive"]);
    c.send(&[ext::parse("", "select 'alive2'"), ext::run("", &[])].concat())
        .await;
    let got = read_until_5s(&mut c, b'Z')
        .await
        .expect("an extended query after the failed COPY gets an answer");
    assert_eq!(first_columns(&got), ["alive2"]);
}

/// A client may send its COPY data right behind the COPY query, without
/// waiting for CopyInResponse (Postgres reads it once the copy starts).
/// The server must go back to the pool clean: another client using the
/// extended protocol must not find it wedged.
#[tokio::test]
async fn copy_data_pipelined_behind_the_query_leaves_a_clean_server() {
    let mut q = BytesMut::new();
    encode::query(&mut q, "copy edge_pipe_copy from stdin");
    let sent = [q.to_vec(), copy_data(b"1\n2\n"), copy_done()].concat();
    pipelined_copy_case("edge_pipe_copy", &sent, "GCZ").await;
}

/// The same through the extended protocol, Sync before and after the
/// CopyDone, all in one write: Postgres ignores the first Sync (it comes
/// during the copy) and answers the second; the server must not be handed
/// back before that answer.
#[tokio::test]
async fn extended_copy_data_pipelined_behind_the_execute_leaves_a_clean_server() {
    let sent = [
        ext::parse("", "copy edge_pipe_copy_ext from stdin"),
        ext::bind("", &[]),
        ext::execute(),
        ext::sync(),
        copy_data(b"1\n2\n"),
        copy_done(),
        ext::sync(),
    ]
    .concat();
    pipelined_copy_case("edge_pipe_copy_ext", &sent, "12GCZ").await;
}

async fn pipelined_copy_case(table: &str, sent: &[u8], reply: &str) {
    let p = trust_pooler_with("pool_size = 1", "query_wait_timeout = \"3s\"").await;
    let admin = p.connect().await;
    admin
        .batch_execute(&format!(
            "drop table if exists {table}; create table {table} (i int)"
        ))
        .await
        .unwrap();
    drop(admin);
    let mut a = Raw::login(p.addr, "app", "app").await;
    a.send(sent).await;
    let got = read_until_5s(&mut a, b'Z').await.expect("COPY answered");
    assert_eq!(tags(&got), reply);
    // B uses the extended protocol (tokio-postgres), then C needs the
    // pool's only server.
    let b = p.connect().await;
    let row = b
        .query_one(&format!("select count(*)::text from {table}"), &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "2");
    let c = p.connect().await;
    let r = timeout(Duration::from_secs(10), c.simple_query("select 1")).await;
    assert!(
        matches!(r, Ok(Ok(_))),
        "C must get the server B is done with: {r:?}"
    );
    // A's connection works too, and finds a clean server.
    a.query("select 'a again'").await;
    let got = read_until_5s(&mut a, b'Z').await.expect("A's next query");
    assert_eq!(first_columns(&got), ["a again"]);
}

/// A server in COPY FROM STDIN started through the extended protocol has
/// answered every Sync it will answer for now (it ignores the one behind
/// the Execute), yet it is busy: it must not be handed to another client
/// until the copy ends.
#[tokio::test]
async fn a_server_in_copy_in_is_not_handed_to_another_client() {
    for general in ["", "max_prepared_statements = 0"] {
        let p = trust_pooler_with("pool_size = 1", general).await;
        let admin = p.connect().await;
        admin
            .batch_execute(
                "drop table if exists edge_busy_copy; create table edge_busy_copy (i int)",
            )
            .await
            .unwrap();
        drop(admin);
        let mut a = Raw::login(p.addr, "app", "app").await;
        let start = [
            ext::parse("", "copy edge_busy_copy from stdin"),
            ext::bind("", &[]),
            ext::execute(),
            ext::sync(),
        ]
        .concat();
        a.send(&start).await;
        let got = read_until_5s(&mut a, b'G').await.expect("CopyInResponse");
        assert_eq!(tags(&got), "12G");
        let b = p.connect().await;
        let b_query = tokio::spawn(async move {
            let row = b.query_one("select count(*)::text from edge_busy_copy", &[]);
            row.await.map(|r| r.get::<_, String>(0))
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        a.send(&[copy_data(b"1\n"), copy_done(), ext::sync()].concat())
            .await;
        let got = read_until_5s(&mut a, b'Z').await.expect("COPY answered");
        assert_eq!(tags(&got), "CZ", "{general}");
        let counted = timeout(Duration::from_secs(5), b_query).await;
        assert_eq!(
            counted.expect("B is served").unwrap().unwrap(),
            "1",
            "B waited for the copy to end ({general})"
        );
    }
}
