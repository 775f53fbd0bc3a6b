//! Client authentication and upstream login, end to end: md5, trust per
//! database, SCRAM verifiers and md5 hashes in the config (SCRAM
//! passthrough upstream), auth_query, hostile SASL input, and no secret in
//! the logs.

mod common;

use common::pg::{PgOptions, PgServer};
use common::pooler::Pooler;
use common::process::{PgtarnProcess, free_port};
use common::raw::{Raw, sqlstate};
use pgtarn::protocol::encode;
use tokio_postgres::NoTls;

/// A config with database `app` on `pg` and the given extra lines.
fn config(pg: &PgServer, general: &str, database: &str, users: &str) -> String {
    format!(
        "[pgtarn]\nlisten_addr = \"127.0.0.1:0\"\n{general}\n\
         [databases.app]\nport = {}\n{database}\n{users}\n",
        pg.port
    )
}

fn conn_str(p: &Pooler, user: &str, password: &str) -> String {
    format!(
        "host=127.0.0.1 port={} user={user} password={password} dbname=app",
        p.addr.port()
    )
}

async fn query_as(p: &Pooler, user: &str, password: &str) -> Result<String, tokio_postgres::Error> {
    let (c, conn) = tokio_postgres::connect(&conn_str(p, user, password), NoTls).await?;
    tokio::spawn(conn);
    let row = c.query_one("select current_user::text", &[]).await?;
    Ok(row.get(0))
}

fn code(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.code().code().to_owned())
        .unwrap_or_else(|| e.to_string())
}

/// `app`'s SCRAM verifier as Postgres stores it.
async fn verifier(pg: &PgServer, role: &str) -> String {
    let su = pg.superuser().await;
    let row = su
        .query_one(
            "select rolpassword from pg_authid where rolname = $1",
            &[&role],
        )
        .await
        .unwrap();
    row.get(0)
}

#[tokio::test]
async fn md5_and_per_database_trust() {
    let pg = PgServer::shared();
    let users = "[users.app]\npassword = \"app-secret\"\n";
    let p = Pooler::start(&config(pg, "auth_type = \"md5\"", "", users)).await;
    assert_eq!(query_as(&p, "app", "app-secret").await.unwrap(), "app");
    assert_eq!(
        code(&query_as(&p, "app", "wrong").await.unwrap_err()),
        "28P01"
    );
    assert_eq!(
        code(&query_as(&p, "nobody", "x").await.unwrap_err()),
        "28P01"
    );
    let trusted = Pooler::start(&config(pg, "", "auth_type = \"trust\"", users)).await;
    let (c, conn) = tokio_postgres::connect(
        &format!(
            "host=127.0.0.1 port={} user=app dbname=app",
            trusted.addr.port()
        ),
        NoTls,
    )
    .await
    .expect("trust needs no password");
    tokio::spawn(conn);
    c.simple_query("select 1").await.unwrap();
}

/// With only the verifier configured, clients log in with SCRAM and pgtarn
/// logs in upstream with the ClientKey their proof revealed.
#[tokio::test]
async fn scram_verifier_in_config_logs_in_upstream_by_passthrough() {
    let pg = PgServer::shared();
    let users = format!(
        "[users.app]\npassword = \"{}\"\n",
        verifier(pg, "app").await
    );
    let p = Pooler::start(&config(pg, "", "", &users)).await;
    assert_eq!(query_as(&p, "app", "app-secret").await.unwrap(), "app");
    assert_eq!(
        code(&query_as(&p, "app", "wrong").await.unwrap_err()),
        "28P01"
    );
    for _ in 0..3 {
        assert_eq!(
            query_as(&p, "app", "app-secret").await.unwrap(),
            "app",
            "new servers log in too"
        );
    }
}

/// An md5 hash in the config works for md5 clients and md5 servers.
#[tokio::test]
async fn md5_hash_in_config_against_an_md5_server() {
    let pg = PgServer::start(PgOptions {
        extra_conf: vec!["password_encryption = md5".into()],
        hba: Some("local all all trust\nhost all all 127.0.0.1/32 md5\n".into()),
    });
    let hash = postgres_protocol::password::md5(b"app-secret", "app");
    let users = format!("[users.app]\npassword = \"{hash}\"\n");
    let p = Pooler::start(&config(&pg, "auth_type = \"md5\"", "", &users)).await;
    assert_eq!(query_as(&p, "app", "app-secret").await.unwrap(), "app");
    assert_eq!(
        code(&query_as(&p, "app", "wrong").await.unwrap_err()),
        "28P01"
    );
}

/// Users missing from `[users]` are looked up with auth_query.
#[tokio::test]
async fn auth_query_finds_users_that_are_not_configured() {
    let pg = PgServer::shared();
    let su = pg.superuser().await;
    let role = format!("aq_{}", std::process::id());
    su.batch_execute(&format!("drop role if exists {role}; create role {role} login password 'aq-pw'; grant connect on database app to {role}"))
        .await
        .unwrap();
    let general = "auth_user = \"postgres\"\nauth_cache_ttl = \"1s\"";
    let users = format!(
        "[users.postgres]\npassword = \"{}\"\n",
        pg.superuser_password
    );
    let p = Pooler::start(&config(pg, general, "", &users)).await;
    assert_eq!(query_as(&p, &role, "aq-pw").await.unwrap(), role);
    assert_eq!(
        code(&query_as(&p, &role, "wrong").await.unwrap_err()),
        "28P01"
    );
    assert_eq!(
        code(&query_as(&p, "no_such_role", "x").await.unwrap_err()),
        "28P01"
    );
    drop(p);
    su.batch_execute(&format!("drop owned by {role}; drop role {role}"))
        .await
        .ok();
}

/// SASL messages that are truncated, oversized, out of order, or a user
/// name that is not UTF-8: each a clean error, and pgtarn keeps serving.
#[tokio::test]
async fn hostile_sasl_input_gets_clean_errors() {
    let pg = PgServer::shared();
    let users = "[users.app]\npassword = \"app-secret\"\n";
    let p = Pooler::start(&config(pg, "", "", users)).await;
    let start = encode::startup_message(&[("user", "app"), ("database", "app")]);
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    let mut truncated = vec![b'p'];
    truncated.extend_from_slice(&30u32.to_be_bytes());
    truncated.extend_from_slice(b"SCRAM-SHA-256\0\0\0\0\x20n,,n=,r=");
    cases.push(("truncated SASLInitialResponse", truncated));
    cases.push(("oversized SASL message", {
        let mut m = vec![b'p'];
        m.extend_from_slice(&(100_000u32).to_be_bytes());
        m.extend(vec![b'x'; 100_000 - 4]);
        m
    }));
    cases.push((
        "SASLResponse first",
        encode::sasl_response(b"c=biws,r=abc,p=AAAA").to_vec(),
    ));
    cases.push(("wrong message type", encode::terminate().to_vec()));
    for (what, msg) in cases {
        let (_, errors) = answer_to_sasl(&p, &start, what, &msg).await;
        assert!(
            errors == ["28P01"] || errors == ["08P01"],
            "{what}: expected one 28P01 or 08P01 error, got {errors:?}"
        );
    }
    let mut raw = Raw::open(p.addr).await;
    let mut bad_user = encode::startup_message(&[("database", "app")]).to_vec();
    bad_user.truncate(bad_user.len() - 1);
    bad_user.extend_from_slice(b"user\0\xff\xfe\0\0");
    let len = (bad_user.len() as u32).to_be_bytes();
    bad_user[..4].copy_from_slice(&len);
    raw.send(&bad_user).await;
    let replies = raw.read_to_eof().await;
    assert_eq!(
        replies
            .iter()
            .filter(|(t, _)| *t == b'E')
            .map(|(_, b)| sqlstate(b))
            .collect::<Vec<_>>(),
        ["08P01"]
    );
    assert_eq!(
        query_as(&p, "app", "app-secret").await.unwrap(),
        "app",
        "pgtarn still serves"
    );
}

/// Passwords, verifiers and proofs never reach the log, even at trace level.
#[tokio::test]
async fn no_secret_is_logged() {
    let pg = PgServer::shared();
    let port = free_port();
    let toml = format!(
        "[pgtarn]\nlisten_addr = \"127.0.0.1:{port}\"\n[databases.app]\nport = {}\n[users.app]\npassword = \"app-secret\"\n",
        pg.port
    );
    let pgtarn = PgtarnProcess::start_logging(&toml, port, "trace");
    let conn = |pw: &str| format!("host=127.0.0.1 port={port} user=app password={pw} dbname=app");
    let (c, task) = tokio_postgres::connect(&conn("app-secret"), NoTls)
        .await
        .unwrap();
    tokio::spawn(task);
    c.simple_query("select 1").await.unwrap();
    assert!(
        tokio_postgres::connect(&conn("hunter2-wrong"), NoTls)
            .await
            .is_err()
    );
    drop(c);
    common::wait_until(
        "pgtarn logged the disconnect",
        std::time::Duration::from_secs(10),
        || {
            let log = pgtarn.log();
            async move { log.contains("client disconnected") }
        },
    )
    .await;
    let log = pgtarn.log();
    for secret in ["app-secret", "hunter2-wrong", "SCRAM-SHA-256$", "p="] {
        assert!(!log.contains(secret), "the log contains {secret:?}");
    }
}

/// The SCRAM salt pgtarn offers `user` (the `s=` of server-first).
async fn offered_salt(p: &Pooler, user: &str) -> String {
    let mut raw = Raw::open(p.addr).await;
    raw.send(&encode::startup_message(&[
        ("user", user),
        ("database", "app"),
    ]))
    .await;
    let (tag, _) = raw.read().await.expect("AuthenticationSASL");
    assert_eq!(tag, b'R');
    raw.send(&encode::sasl_initial_response(
        "SCRAM-SHA-256",
        b"n,,n=,r=abcdefghijklmnop",
    ))
    .await;
    let (tag, body) = raw.read().await.expect("AuthenticationSASLContinue");
    assert_eq!(tag, b'R');
    let text = String::from_utf8_lossy(&body[4..]).into_owned();
    let salt = text.split(',').find_map(|a| a.strip_prefix("s="));
    salt.expect("a salt").to_owned()
}

/// Unknown users get a stable mock salt; a reload must not change a real
/// user's salt while the mock one stays, or comparing salts before and
/// after a reload would tell which users exist.
#[tokio::test]
async fn a_reload_does_not_tell_real_users_from_unknown_ones() {
    let pg = PgServer::shared();
    let users = "[users.app]\npassword = \"app-secret\"\n";
    let toml = config(pg, "auth_type = \"scram-sha-256\"", "", users);
    let p = Pooler::start(&toml).await;
    let real = offered_salt(&p, "app").await;
    let unknown = offered_salt(&p, "nobody").await;
    let reloaded = pgtarn::config::Config::from_toml(&toml).expect("config");
    p.ctx.apply(reloaded).expect("reload");
    assert_eq!(offered_salt(&p, "nobody").await, unknown);
    assert_eq!(
        offered_salt(&p, "app").await,
        real,
        "a real user's salt changed"
    );
    let c = p.connect().await;
    assert_eq!(common::one(&c, "select 'in'").await, "in");
}

/// `auth_type = "hba"` with `auth_hba_file` (PgBouncer's): the first rule
/// that matches the connection type, database, user and client address
/// picks the method, `reject` and no rule at all refuse with 28000 in
/// Postgres' words; the console is covered too, and a reload re-reads the
/// file.
#[tokio::test]
async fn auth_hba_file_picks_the_method_per_connection() {
    let pg = PgServer::shared();
    let dir = tempfile::tempdir().expect("tempdir");
    let hba = dir.path().join("hba.conf");
    let rules = "# pgtarn test\n\
                 host  app     app    127.0.0.1/32  trust\n\
                 host  app     bob    all           reject\n\
                 host  pgtarn  all    all           reject\n\
                 host  app     carol  10.0.0.0/8    scram-sha-256\n";
    std::fs::write(&hba, rules).expect("write hba");
    let general = format!(
        "auth_type = \"hba\"\nauth_hba_file = \"{}\"\nadmin_users = [\"app\"]",
        hba.display()
    );
    let users = "[users.app]\npassword = \"app-secret\"\n\
                 [users.bob]\npassword = \"bob-secret\"\n\
                 [users.carol]\npassword = \"carol-secret\"\n";
    // Upstream everyone is app (bob and carol have no Postgres role).
    let text = config(pg, &general, "user = \"app\"", users);
    let config_path = dir.path().join("pgtarn.toml");
    std::fs::write(&config_path, &text).expect("write config");
    let p = Pooler::start(&text).await;
    *p.ctx.config_path.lock().expect("lock") = Some(config_path);
    let who = query_as(&p, "app", "not-the-password").await;
    assert_eq!(who.expect("trusted from 127.0.0.1"), "app");
    let refused = |user: &'static str| {
        let p = &p;
        async move {
            let e = query_as(p, user, &format!("{user}-secret"))
                .await
                .expect_err(user);
            let db = e.as_db_error().expect("an ErrorResponse");
            (db.code().code().to_owned(), db.message().to_owned())
        }
    };
    let rejects = "auth_hba_file rejects connection for host \"127.0.0.1\", user \"bob\", \
                   database \"app\", no encryption";
    assert_eq!(refused("bob").await, ("28000".into(), rejects.into()));
    let (sqlstate, message) = refused("carol").await;
    assert_eq!(sqlstate, "28000");
    assert!(
        message.starts_with("no auth_hba_file entry for host"),
        "{message}"
    );
    // The file is read before anything else: a refused client does not
    // learn whether a database exists (Postgres checks pg_hba.conf first).
    let nosuch = conn_str(&p, "bob", "bob-secret").replace("dbname=app", "dbname=nosuch");
    let e = tokio_postgres::connect(&nosuch, NoTls).await.err();
    assert_eq!(e.map(|e| code(&e)).as_deref(), Some("28000"), "not 3D000");
    let console = conn_str(&p, "app", "app-secret").replace("dbname=app", "dbname=pgtarn");
    let e = tokio_postgres::connect(&console, NoTls).await.err();
    assert_eq!(
        e.map(|e| code(&e)).as_deref(),
        Some("28000"),
        "console rejected"
    );
    // carol gets a rule: a reload (SIGHUP, RELOAD) re-reads the file.
    std::fs::write(&hba, format!("{rules}host app carol all scram-sha-256\n")).expect("write");
    p.ctx.reload().expect("reload");
    assert_eq!(
        query_as(&p, "carol", "carol-secret").await.expect("carol"),
        "app"
    );
    let e = query_as(&p, "carol", "wrong")
        .await
        .expect_err("SCRAM applies");
    assert_eq!(code(&e), "28P01");
    // A file pgtarn cannot follow is refused whole, naming the line.
    std::fs::write(&hba, "host app all all ident\n").expect("write");
    let err = p.ctx.reload().expect_err("a bad file is refused");
    assert!(err.contains("line 1: unsupported method"), "{err}");
    let still = query_as(&p, "carol", "carol-secret").await;
    assert_eq!(still.expect("the old rules stay"), "app");
    let no_file = text.replace(&format!("auth_hba_file = \"{}\"\n", hba.display()), "");
    let err = pgtarn::config::Config::from_toml(&no_file).expect_err("hba needs a file");
    assert!(err.to_string().contains("auth_hba_file"), "{err}");
}

/// auth_query with several hosts: a host that takes the TCP connection but
/// never answers the login is skipped after server_connect_timeout, as
/// server connections skip it. The lookup used to hand all hosts to one
/// tokio-postgres connect, whose connect_timeout bounds only the socket
/// connect, so it waited on that host until client_login_timeout and no
/// user found by auth_query could log in while the second host was up.
#[tokio::test]
async fn auth_query_skips_a_host_that_never_answers_the_login() {
    let pg = PgServer::shared();
    let su = pg.superuser().await;
    let role = format!("aqh_{}", std::process::id());
    su.batch_execute(&format!(
        "drop role if exists {role}; create role {role} login password 'aq-pw'; \
         grant connect on database app to {role}"
    ))
    .await
    .unwrap();
    // Accepts connections (in the kernel's backlog) and never answers.
    let _hung = std::net::TcpListener::bind(("127.0.0.3", pg.port)).expect("bind 127.0.0.3");
    let general = "auth_user = \"postgres\"\nserver_connect_timeout = \"1s\"\n\
                   server_login_retry = \"0s\"\nclient_login_timeout = \"8s\"";
    let database = "host = \"127.0.0.3,127.0.0.1\"\nload_balance_hosts = \"disable\"";
    let users = format!(
        "[users.postgres]\npassword = \"{}\"\n",
        pg.superuser_password
    );
    let p = Pooler::start(&config(pg, general, database, &users)).await;
    let started = std::time::Instant::now();
    let result = query_as(&p, &role, "aq-pw").await;
    let took = started.elapsed();
    su.batch_execute(&format!("drop owned by {role}; drop role {role}"))
        .await
        .ok();
    assert_eq!(
        result.map_err(|e| format!("{e} ({})", code(&e))),
        Ok(role),
        "the second host answers the lookup (after {took:?})"
    );
    assert!(took < std::time::Duration::from_secs(5), "{took:?}");
}

/// SCRAM negotiation errors are protocol violations (08P01), as in
/// Postgres' auth-scram.c, not a wrong password (28P01): channel-binding
/// data (`p=tls-server-end-point`) when SCRAM-SHA-256-PLUS was not offered,
/// PLUS selected when not offered, and a mechanism that was not offered.
/// All are refused, as before; they used to get 28P01.
#[tokio::test]
async fn scram_negotiation_errors_are_protocol_violations() {
    let pg = PgServer::shared();
    let users = "[users.app]\npassword = \"app-secret\"\n";
    let p = Pooler::start(&config(pg, "", "", users)).await;
    let start = encode::startup_message(&[("user", "app"), ("database", "app")]);
    let binding = b"p=tls-server-end-point,,n=,r=abcdef";
    let cases = [
        (
            "p= without PLUS offered",
            encode::sasl_initial_response("SCRAM-SHA-256", binding),
        ),
        (
            "PLUS selected but not offered",
            encode::sasl_initial_response("SCRAM-SHA-256-PLUS", binding),
        ),
        (
            "mechanism not offered",
            encode::sasl_initial_response("SCRAM-SHA-1", b"n,,n=,r=abcdef"),
        ),
    ];
    let mut got = Vec::new();
    for (what, msg) in cases {
        let (replies, errors) = answer_to_sasl(&p, &start, what, &msg).await;
        assert!(
            !replies.iter().any(|(t, _)| *t == b'R'),
            "{what}: refused, no SASLContinue"
        );
        got.push((what, errors));
    }
    for (what, errors) in &got {
        assert_eq!(errors, &["08P01"], "{what}: all results {got:?}");
    }
}

/// Logs in with `start` (a StartupMessage), checks that pgtarn asks for
/// SASL, sends `msg` and reads to the end: every reply, and the SQLSTATEs
/// of the errors among them.
async fn answer_to_sasl(
    p: &Pooler,
    start: &[u8],
    what: &str,
    msg: &[u8],
) -> (Vec<(u8, bytes::Bytes)>, Vec<String>) {
    let mut raw = Raw::open(p.addr).await;
    raw.send(start).await;
    let (tag, _) = raw.read().await.expect("AuthenticationSASL");
    assert_eq!(tag, b'R', "{what}");
    raw.send(msg).await;
    let replies = raw.read_to_eof().await;
    let errors = replies
        .iter()
        .filter(|(t, _)| *t == b'E')
        .map(|(_, b)| sqlstate(b))
        .collect();
    (replies, errors)
}
