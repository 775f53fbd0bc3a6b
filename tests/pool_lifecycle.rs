//! The life of server connections: min_pool_size, server_idle_timeout,
//! server_lifetime, upstream authentication methods, and an unreachable
//! Postgres.

mod common;

use std::time::{Duration, Instant};

use common::one;
use common::pg::{PgOptions, PgServer};
use common::pooler::{self, Pooler};
use common::wait_until;
use tokio_postgres::NoTls;

const DEADLINE: Duration = Duration::from_secs(10);

/// Connects with `conn_str` and expects an ErrorResponse: (SQLSTATE, message).
async fn login_error(conn_str: &str) -> (String, String) {
    let err = tokio_postgres::connect(conn_str, NoTls)
        .await
        .err()
        .expect("the login fails");
    let db = err
        .as_db_error()
        .unwrap_or_else(|| panic!("an ErrorResponse, got: {err}"));
    (db.code().code().to_owned(), db.message().to_owned())
}

/// Client backends of role `app` as Postgres sees them.
async fn app_backends(admin: &tokio_postgres::Client) -> i64 {
    let sql = "select count(*) from pg_stat_activity where usename = 'app'";
    admin.query_one(sql, &[]).await.unwrap().get(0)
}

#[tokio::test]
async fn min_pool_size_is_filled_after_the_first_login() {
    let config = pooler::config(PgServer::shared(), "", "pool_size = 4\nmin_pool_size = 2");
    let p = Pooler::start(&config).await;
    let c = p.connect().await;
    assert_eq!(one(&c, "select 'only client'").await, "only client");
    let pool = p.pool();
    wait_until("the pool holds 2 idle servers", DEADLINE, || {
        let (size, idle) = (pool.size(), pool.idle());
        async move { size == 2 && idle == 2 }
    })
    .await;
}

/// Filling up to `min_pool_size` counts the servers already open, busy
/// ones too: with one server in a transaction, a `min_pool_size` of 2
/// opens one more, not two (before, the fill held `min_pool_size` servers
/// at once, so a busy one made it open one too many).
#[tokio::test]
async fn min_pool_size_counts_a_busy_server() {
    let text = |min: u32| {
        let database = format!("pool_size = 4\nmin_pool_size = {min}");
        pooler::config(PgServer::shared(), "", &database)
    };
    let p = Pooler::start(&text(0)).await;
    let c = p.connect().await;
    c.batch_execute("begin").await.unwrap();
    let pool = p.pool();
    assert_eq!((pool.size(), pool.idle()), (1, 0), "one server, busy");
    let config = pgtarn::config::Config::from_toml(&text(2)).expect("config");
    p.ctx.apply(config).expect("reload");
    wait_until("the fill leaves a server idle", DEADLINE, || {
        let idle = pool.idle();
        async move { idle >= 1 }
    })
    .await;
    assert_eq!((pool.size(), pool.idle()), (2, 1), "one busy, one idle");
    c.batch_execute("commit").await.unwrap();
    assert_eq!((pool.size(), pool.idle()), (2, 2));
}

#[tokio::test]
async fn idle_servers_close_down_to_min_pool_size() {
    let pg = PgServer::start(PgOptions::default());
    let general = "server_idle_timeout = \"1s\"";
    let p = Pooler::start(&pooler::config(
        &pg,
        general,
        "pool_size = 3\nmin_pool_size = 1",
    ))
    .await;
    let admin = pg.superuser().await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        let c = p.connect().await;
        c.batch_execute("begin").await.unwrap();
        clients.push(c);
    }
    assert_eq!(p.pool().size(), 3, "one server per open transaction");
    assert_eq!(app_backends(&admin).await, 3);
    for c in &clients {
        c.batch_execute("commit").await.unwrap();
    }
    let pool = p.pool();
    wait_until("the pool shrinks to min_pool_size", DEADLINE, || {
        let size = pool.size();
        async move { size == 1 }
    })
    .await;
    wait_until("Postgres sees one app backend", DEADLINE, || async {
        app_backends(&admin).await == 1
    })
    .await;
    assert_eq!(
        one(&clients[2], "select 'still served'").await,
        "still served"
    );
}

/// `server_idle_timeout` counts from when a server went back to the pool,
/// not from when it was checked out: a server that has just served a
/// transaction longer than the timeout is not idle.
#[tokio::test]
async fn server_idle_timeout_counts_from_release() {
    let config = pooler::config(
        PgServer::shared(),
        "server_idle_timeout = \"2s\"",
        "pool_size = 1",
    );
    let p = Pooler::start(&config).await;
    let c = p.connect().await;
    c.batch_execute("select pg_sleep(2.5)").await.unwrap();
    let released = Instant::now();
    let pool = p.pool();
    // Maintenance runs every second: a server taken for idle since its
    // checkout would be closed within a second of its release.
    while released.elapsed() < Duration::from_millis(1500) {
        assert_eq!(
            pool.size(),
            1,
            "closed {:?} after release",
            released.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_until("the idle server closes", DEADLINE, || {
        let size = pool.size();
        async move { size == 0 }
    })
    .await;
    assert!(released.elapsed() >= Duration::from_secs(2));
}

#[tokio::test]
async fn servers_are_replaced_after_server_lifetime() {
    // `[pgtarn]`'s, then a database's own (PgBouncer's per-database
    // server_lifetime) over a general one that would not expire.
    let cases = [
        ("server_lifetime = \"1s\"", "pool_size = 1"),
        (
            "server_lifetime = \"1h\"",
            "pool_size = 1\nserver_lifetime = \"1s\"",
        ),
    ];
    for (general, database) in cases {
        let config = pooler::config(PgServer::shared(), general, database);
        let p = Pooler::start(&config).await;
        let c = p.connect().await;
        let first = one(&c, "select pg_backend_pid()").await;
        wait_until("a new server serves the client", DEADLINE, || {
            let (c, first) = (&c, &first);
            async move { one(c, "select pg_backend_pid()").await != *first }
        })
        .await;
    }
}

#[tokio::test]
async fn pgtarn_logs_in_upstream_with_md5() {
    let pg = PgServer::start(PgOptions {
        extra_conf: vec!["password_encryption = md5".into()],
        hba: Some("local all all trust\nhost all all 127.0.0.1/32 md5\n".into()),
    });
    let admin = pg.superuser().await;
    let sql = "select rolpassword from pg_authid where rolname = 'app'";
    let stored: String = admin.query_one(sql, &[]).await.unwrap().get(0);
    assert!(
        stored.starts_with("md5"),
        "app's password is stored as md5, so Postgres asks for md5: {stored}"
    );
    let p = Pooler::start(&pooler::config(&pg, "", "")).await;
    let c = p.connect().await;
    assert_eq!(one(&c, "select current_user").await, "app");
}

#[tokio::test]
async fn pgtarn_logs_in_upstream_with_a_cleartext_password() {
    let pg = PgServer::start(PgOptions {
        hba: Some("local all all trust\nhost all all 127.0.0.1/32 password\n".into()),
        ..PgOptions::default()
    });
    let p = Pooler::start(&pooler::config(&pg, "", "")).await;
    let c = p.connect().await;
    assert_eq!(one(&c, "select current_user").await, "app");
}

#[tokio::test]
async fn a_wrong_upstream_password_reaches_the_client_as_28p01() {
    let config = format!(
        "[pgtarn]\nlisten_addr = \"127.0.0.1:0\"\nauth_type = \"trust\"\n\
         [databases.app]\nport = {}\n[users.app]\npassword = \"wrong\"\n",
        PgServer::shared().port
    );
    let p = Pooler::start(&config).await;
    for _ in 0..2 {
        let (code, message) = login_error(&p.conn_str("")).await;
        assert_eq!(
            (code.as_str(), message.as_str()),
            (
                "28P01",
                "pgtarn: cannot connect to server for database \"app\": \
                 password authentication failed for user \"app\""
            )
        );
    }
}

#[tokio::test]
async fn an_unreachable_postgres_gives_08006_without_hanging() {
    // A socket bound but not listening holds the port: connecting to it
    // is refused, and no other test can take it meanwhile.
    let reserved =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    reserved
        .bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    let closed_port = reserved.local_addr().unwrap().as_socket().unwrap().port();
    let config = format!(
        "[pgtarn]\nlisten_addr = \"127.0.0.1:0\"\nserver_connect_timeout = \"2s\"\n\
         [databases.app]\nport = {}\n\
         [databases.dead]\nport = {closed_port}\ndbname = \"app\"\n\
         [users.app]\npassword = \"app-secret\"\n",
        PgServer::shared().port
    );
    let p = Pooler::start(&config).await;
    let dead = format!(
        "host=127.0.0.1 port={} user=app password=app-secret dbname=dead",
        p.addr.port()
    );
    for attempt in 1..=2 {
        let started = Instant::now();
        let (code, message) = tokio::time::timeout(DEADLINE, login_error(&dead))
            .await
            .unwrap_or_else(|_| panic!("attempt {attempt}: no answer within {DEADLINE:?}"));
        let took = started.elapsed();
        assert_eq!(code, "08006", "attempt {attempt}: {message}");
        assert!(
            took < Duration::from_secs(2) + Duration::from_secs(3),
            "attempt {attempt} took {took:?}"
        );
    }
    let c = p.connect().await;
    assert_eq!(one(&c, "select 'other database'").await, "other database");
}

/// A database whose `host` is a directory is reached on Postgres'
/// Unix-domain socket in it, as libpq reads `host` (here the only way in
/// for `app`: TCP is refused to it): a SCRAM login, queries, `/readyz`,
/// `SHOW SERVERS` addr `unix`, a cancel request (sent on the socket too), and a
/// server connection that Postgres closed while idle replaced unseen.
#[tokio::test]
async fn a_directory_host_is_postgres_unix_socket() {
    let pg = PgServer::start(PgOptions {
        hba: Some(
            "local all postgres trust\nlocal all all scram-sha-256\n\
             host all postgres 127.0.0.1/32 scram-sha-256\n"
                .into(),
        ),
        ..PgOptions::default()
    });
    let config = format!(
        "[pgtarn]\nlisten_addr = \"127.0.0.1:0\"\nadmin_users = [\"app\"]\n\
         [databases.app]\nhost = \"{}\"\nport = {}\npool_size = 1\n\
         [users.app]\npassword = \"app-secret\"\n",
        pg.socket_dir.display(),
        pg.port
    );
    let p = Pooler::start(&config).await;
    let c = p.connect().await;
    let sql = "select current_user || ' ' || (client_addr is null) \
               from pg_stat_activity where pid = pg_backend_pid()";
    assert_eq!(one(&c, sql).await, "app true", "on the socket");
    let ready = pgtarn::metrics::ready(&p.ctx, Duration::from_secs(5)).await;
    assert_eq!(ready, Ok(()), "/readyz probes the socket");
    let (console, task) = tokio_postgres::connect(&p.conn_str("dbname=pgbouncer"), NoTls)
        .await
        .expect("admin console");
    tokio::spawn(task);
    let servers = console
        .simple_query("show servers")
        .await
        .expect("show servers");
    let addrs: Vec<_> = servers
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get("addr").map(str::to_owned),
            _ => None,
        })
        .collect();
    assert_eq!(addrs, ["unix"]);
    // A cancel reaches the query.
    let token = c.cancel_token();
    let started = Instant::now();
    let (slept, _) = tokio::join!(c.simple_query("select pg_sleep(30)"), async {
        let su = pg.superuser().await;
        wait_until("the sleep runs", DEADLINE, || async {
            let sql = "select count(*) from pg_stat_activity where query like 'select pg_sleep%' \
                       and state = 'active'";
            su.query_one(sql, &[]).await.unwrap().get::<_, i64>(0) == 1
        })
        .await;
        token.cancel_query(NoTls).await.expect("cancel");
    });
    let err = slept.expect_err("cancelled");
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::QUERY_CANCELED)
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    // Postgres closes the idle server connection; the next query gets a
    // new one without an error.
    let su = pg.superuser().await;
    let kill = "select pg_terminate_backend(pid) from pg_stat_activity where usename = 'app'";
    su.simple_query(kill).await.expect("terminate");
    wait_until("the server connection is gone", DEADLINE, || async {
        let sql = "select count(*) from pg_stat_activity where usename = 'app'";
        su.query_one(sql, &[]).await.unwrap().get::<_, i64>(0) == 0
    })
    .await;
    assert_eq!(one(&c, "select 'again'").await, "again");
}

/// `connect_query` runs on each new server connection before a client
/// uses it; in session mode it runs again after `server_reset_query`
/// (`DISCARD ALL` would otherwise undo it for the next client).
#[tokio::test]
async fn connect_query_prepares_each_server_connection() {
    let database = "pool_size = 1\npool_mode = \"session\"\n\
                    connect_query = \"SET statement_timeout = '4321ms'\"";
    let p = Pooler::start(&pooler::config(PgServer::shared(), "", database)).await;
    for round in ["first client", "next client after the reset"] {
        let c = p.connect().await;
        assert_eq!(one(&c, "show statement_timeout").await, "4321ms", "{round}");
        drop(c);
        let pool = p.pool();
        wait_until("the server is back in the pool", DEADLINE, || {
            let idle = pool.idle();
            async move { idle == 1 }
        })
        .await;
    }
    assert_eq!(p.pool().size(), 1, "one server served both");
}

/// A failing `connect_query` fails the connection as a failed login does:
/// the client gets the server's SQLSTATE and a message naming
/// `connect_query`, and no server connection is left open.
#[tokio::test]
async fn a_failing_connect_query_is_a_failed_login() {
    let database = "connect_query = \"SELECT * FROM no_such_table_for_connect_query\"";
    let p = Pooler::start(&pooler::config(PgServer::shared(), "", database)).await;
    let (code, message) = login_error(&p.conn_str("")).await;
    assert_eq!(code, "42P01", "{message}");
    assert!(message.contains("connect_query failed"), "{message}");
    assert_eq!(p.pool().size(), 0);
}

/// A pool retired by a reload (here its `pool_mode` changed; a removed
/// database is retired alike) keeps serving its connected clients, but
/// no longer fills up to `min_pool_size`: its idle servers were closed
/// by the reload, and opening new ones that only the leaving clients
/// could use would hold upstream connections for nothing.
#[tokio::test]
async fn a_pool_retired_by_reload_is_not_filled_to_min_pool_size() {
    let text = |mode: &str| {
        let database = format!("pool_size = 4\nmin_pool_size = 2\npool_mode = \"{mode}\"");
        pooler::config(PgServer::shared(), "", &database)
    };
    let (_p, old, c) = fill_then_reload(&text("session"), &text("transaction")).await;
    stays_unfilled(&old, &c).await;
}

/// Starts pgtarn with `before` (`min_pool_size` 2), holds one server
/// with a client, waits for the fill to open a second, then applies
/// `after`: pgtarn, the pool as it was, and the client.
async fn fill_then_reload(
    before: &str,
    after: &str,
) -> (
    Pooler,
    std::sync::Arc<pgtarn::pool::Pool>,
    tokio_postgres::Client,
) {
    let p = Pooler::start(before).await;
    let c = p.connect().await;
    assert_eq!(one(&c, "select 'holds one'").await, "holds one");
    let old = p.pool();
    wait_until("the fill opens a second server", DEADLINE, || {
        let (size, idle) = (old.size(), old.idle());
        async move { size == 2 && idle == 1 }
    })
    .await;
    let config = pgtarn::config::Config::from_toml(after).expect("config");
    p.ctx.apply(config).expect("reload");
    (p, old, c)
}

/// After a reload retired `old` (its idle server closed), a few
/// maintenance ticks leave it with only `c`'s server, which still serves:
/// "not refilled" has no event to wait for, hence the fixed wait.
async fn stays_unfilled(old: &pgtarn::pool::Pool, c: &tokio_postgres::Client) {
    assert_eq!(old.size(), 1, "the reload closed the idle server");
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let counts = (old.size(), old.idle());
    assert_eq!(counts, (1, 0), "only the client's server is left");
    assert_eq!(one(c, "select 'still served'").await, "still served");
}

/// Several hosts (PgBouncer's comma-separated `host`): one that does not
/// answer is skipped; with `load_balance_hosts = "round-robin"` (the
/// default) new server connections start at the next host in turn, with
/// `"disable"` always at the first.
#[tokio::test]
async fn several_hosts_are_taken_in_turn_and_a_dead_one_is_skipped() {
    let pg = PgServer::start(PgOptions {
        extra_conf: vec!["listen_addresses = '127.0.0.1,127.0.0.2'".into()],
        hba: Some("local all all trust\nhost all all 127.0.0.0/8 scram-sha-256\n".into()),
    });
    // Nothing listens on 127.0.0.3.
    let both: &[&str] = &["127.0.0.1", "127.0.0.2"];
    let cases = [
        ("127.0.0.1, 127.0.0.3, 127.0.0.2", "", both),
        (
            "127.0.0.3,127.0.0.2,127.0.0.1",
            "load_balance_hosts = \"disable\"",
            &["127.0.0.2"],
        ),
    ];
    for (hosts, balance, want) in cases {
        let text = pooler::config(&pg, "", &format!("pool_size = 3\n{balance}"))
            .replace("host = \"127.0.0.1\"", &format!("host = \"{hosts}\""));
        let p = Pooler::start(&text).await;
        let mut clients = Vec::new();
        let mut seen = Vec::new();
        for _ in 0..3 {
            let c = p.connect().await;
            c.batch_execute("begin").await.unwrap();
            seen.push(one(&c, "select host(inet_server_addr())").await);
            clients.push(c);
        }
        seen.sort();
        seen.dedup();
        assert_eq!(seen, want, "{hosts} {balance}");
    }
}

/// A host that takes the TCP connection but never answers the login (a
/// hung server, a port kept open by a stuck proxy) is skipped like one
/// that refuses: after `server_connect_timeout` the next host is tried.
/// Before, the timeout ended the whole attempt, so with
/// `load_balance_hosts = "disable"` and such a host first every login
/// failed although the second host was up.
#[tokio::test]
async fn a_host_that_never_answers_the_login_is_skipped() {
    let pg = PgServer::shared();
    // Accepts connections (in the kernel's backlog) and never answers.
    let _hung = std::net::TcpListener::bind(("127.0.0.3", pg.port)).expect("bind 127.0.0.3");
    let general = "server_connect_timeout = \"1s\"\nserver_login_retry = \"0s\"";
    let text = pooler::config(pg, general, "load_balance_hosts = \"disable\"")
        .replace("host = \"127.0.0.1\"", "host = \"127.0.0.3,127.0.0.1\"");
    let p = Pooler::start(&text).await;
    let c = tokio::time::timeout(DEADLINE, tokio_postgres::connect(&p.conn_str(""), NoTls))
        .await
        .expect("the login ends within the deadline");
    let (c, conn) = c.expect("the second host serves the client");
    tokio::spawn(conn);
    assert_eq!(
        one(&c, "select host(inet_server_addr())").await,
        "127.0.0.1"
    );
}

/// A reload that gives a database a forced `user` moves its clients to
/// the forced user's pool: the pools of the other users are retired like
/// those of a removed database, so the one still serving a connected
/// client no longer fills up to `min_pool_size` (before, the reload only
/// closed its idle servers, and the fill opened them again as the old
/// user).
#[tokio::test]
async fn a_pool_left_by_a_forced_user_reload_is_not_filled_to_min_pool_size() {
    let text = |forced: &str| {
        let database =
            format!("pool_size = 4\nmin_pool_size = 2\npool_mode = \"session\"\n{forced}");
        pooler::config(PgServer::shared(), "", &database)
            + "[users.bob]\npassword = \"bob-secret\"\n"
    };
    let (p, old, c) = fill_then_reload(&text(""), &text("user = \"bob\"")).await;
    assert!(
        p.ctx.registry.find("app", "app").is_none(),
        "app's pool left"
    );
    stays_unfilled(&old, &c).await;
}

/// In transaction mode a setting that `connect_query` made is what every
/// client is told at login and expects: a client that changed it (or
/// reset everything) must not leave the shared server at Postgres's own
/// default for the next client (before, the next checkout brought the
/// server back with `RESET`, which undoes `connect_query` too, or, after
/// a `RESET ALL`, took the server to be at the login values already).
#[tokio::test]
async fn connect_query_settings_survive_other_clients_changes() {
    let database = "pool_size = 1\npool_mode = \"transaction\"\n\
                    connect_query = \"SET TimeZone = 'Pacific/Chatham'\"";
    let p = Pooler::start(&pooler::config(PgServer::shared(), "", database)).await;
    let other = p.connect().await;
    let c = p.connect().await;
    assert_eq!(one(&c, "show TimeZone").await, "Pacific/Chatham");
    other
        .batch_execute("SET TimeZone = 'Europe/Paris'")
        .await
        .expect("set");
    assert_eq!(one(&other, "show TimeZone").await, "Europe/Paris");
    for change in ["SET TimeZone = 'Europe/Paris'", "RESET ALL", "DISCARD ALL"] {
        other.batch_execute(change).await.expect(change);
        assert_eq!(
            one(&c, "show TimeZone").await,
            "Pacific/Chatham",
            "after {change}"
        );
        other
            .batch_execute("SET TimeZone = 'Asia/Tokyo'")
            .await
            .expect("set");
        assert_eq!(
            one(&c, "show TimeZone").await,
            "Pacific/Chatham",
            "before the next"
        );
    }
    assert_eq!(p.pool().size(), 1, "one server served both");
}

/// A reload that changes `connect_query` replaces the pool's server
/// connections, as a changed upstream does: clients logging in after it
/// get servers prepared by the new query, and are told its settings at
/// login (before, the idle servers prepared by the old query were still
/// handed out, and the login values stayed the old query's).
#[tokio::test]
async fn a_reload_that_changes_connect_query_replaces_the_servers() {
    let text = |zone: &str| {
        let database = format!(
            "pool_size = 1\npool_mode = \"transaction\"\n\
             connect_query = \"SET TimeZone = '{zone}'\""
        );
        pooler::config(PgServer::shared(), "", &database)
    };
    let p = Pooler::start(&text("Pacific/Chatham")).await;
    let before = p.connect().await;
    assert_eq!(one(&before, "show TimeZone").await, "Pacific/Chatham");
    let config = pgtarn::config::Config::from_toml(&text("Asia/Kathmandu")).expect("config");
    p.ctx.apply(config).expect("reload");
    let after = p.connect().await;
    assert_eq!(one(&after, "show TimeZone").await, "Asia/Kathmandu");
    assert_eq!(p.pool().size(), 1, "the old server was closed");
}

/// `/readyz` with several hosts: one host that answers is enough, even
/// when the first one's connect hangs (SYNs dropped: a host down behind a
/// firewall, the case several hosts are for). The probe used to share one
/// time limit between the hosts, so the hanging first host used it up and
/// the second, serving clients, was never tried (503 "connect timed out").
#[tokio::test]
async fn readyz_is_ready_when_a_later_host_answers_and_the_first_hangs() {
    use socket2::{Domain, Socket, Type};
    let pg = PgServer::shared();
    let addr: std::net::SocketAddr = format!("127.0.0.5:{}", pg.port).parse().unwrap();
    // Its own address (another test listens on 127.0.0.3 with the shared
    // server's port). A listener whose accept queue is full: Linux then
    // drops new SYNs, so a connect to it hangs.
    let hung = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    hung.set_reuse_address(true).unwrap();
    hung.bind(&addr.into()).expect("bind 127.0.0.5");
    hung.listen(0).unwrap();
    let _fill: Vec<_> = (0..3)
        .filter_map(|_| {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)).ok()
        })
        .collect();
    let probe = tokio::time::timeout(
        Duration::from_millis(500),
        tokio::net::TcpStream::connect(addr),
    )
    .await;
    assert!(probe.is_err(), "a connect to 127.0.0.5 hangs: {probe:?}");
    let general = "server_connect_timeout = \"1s\"\nserver_login_retry = \"0s\"";
    let text = pooler::config(pg, general, "load_balance_hosts = \"disable\"")
        .replace("host = \"127.0.0.1\"", "host = \"127.0.0.5,127.0.0.1\"");
    let p = Pooler::start(&text).await;
    // The database is reachable: a client is served by the second host.
    let c = p.connect().await;
    assert_eq!(
        one(&c, "select host(inet_server_addr())").await,
        "127.0.0.1"
    );
    // As the HTTP endpoint calls it (READY_CONNECT_LIMIT = 2s).
    let started = Instant::now();
    let ready = pgtarn::metrics::ready(&p.ctx, Duration::from_secs(2)).await;
    assert_eq!(ready, Ok(()), "the second host answers");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}

/// A `host` of only commas and blanks names no host: refused when the
/// configuration is read (it used to be accepted, every server login then
/// failed with "no host configured", and `/readyz`, trying no host at
/// all, said ready).
#[test]
fn a_host_setting_that_names_no_host_is_refused() {
    let text = pooler::config(PgServer::shared(), "", "")
        .replace("host = \"127.0.0.1\"", "host = \" , \"");
    let refused = pgtarn::config::Config::from_toml(&text)
        .err()
        .map(|e| e.to_string());
    let message = refused.expect("host = \" , \" is refused");
    assert!(
        message.contains("host") && message.contains("must name a host"),
        "{message}"
    );
}
