//! The pooler core, end to end: real Postgres, real tokio-postgres clients,
//! pgtarn in-process.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::one;
use common::pg::{PgOptions, PgServer};
use common::pooler::{self, Pooler};
use common::wait_until;
use futures_util::{SinkExt, TryStreamExt};
use tokio_postgres::types::Type;
use tokio_postgres::{NoTls, SimpleQueryMessage};

const DEADLINE: Duration = Duration::from_secs(10);

async fn pooler(general: &str, database: &str) -> Pooler {
    Pooler::start(&pooler::config(PgServer::shared(), general, database)).await
}

/// The first column of every row a simple query returned.
async fn column(client: &tokio_postgres::Client, sql: &str) -> Vec<String> {
    let msgs = client.simple_query(sql).await.expect(sql);
    msgs.iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap_or("NULL").to_owned()),
            _ => None,
        })
        .collect()
}

fn sqlstate(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.code().code().to_owned())
        .unwrap_or_else(|| format!("no SQLSTATE: {e}"))
}

/// A table name unique to one test run.
fn table(name: &str) -> String {
    format!("{name}_{}", std::process::id())
}

#[tokio::test]
async fn simple_extended_and_pipelined_queries() {
    let p = pooler("", "pool_size = 2").await;
    let c = p.connect().await;
    assert_eq!(
        column(&c, "select 1; select 'two' union all select 'three'").await,
        ["1", "two", "three"]
    );
    let row = c
        .query_typed(
            "select $1::int + 1, $2::text",
            &[(&41i32, Type::INT4), (&"x", Type::TEXT)],
        )
        .await
        .unwrap();
    assert_eq!(
        (row[0].get::<_, i32>(0), row[0].get::<_, String>(1)),
        (42, "x".to_string())
    );
    let queries = (0..20i32).map(|i| {
        let c = &c;
        async move {
            c.query_typed("select $1::int * 2", &[(&i, Type::INT4)])
                .await
        }
    });
    let results = futures_util::future::try_join_all(queries).await.unwrap();
    for (i, rows) in results.iter().enumerate() {
        assert_eq!(
            rows[0].get::<_, i32>(0),
            2 * i as i32,
            "pipelined answers stay in order"
        );
    }
    let err = c
        .simple_query("select 1; select 1/0; select 3")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), "22012");
    assert_eq!(one(&c, "select 'still fine'").await, "still fine");
}

#[tokio::test]
async fn rollback_and_error_inside_a_transaction() {
    let p = pooler("", "pool_size = 1").await;
    let t = table("rb");
    let c = p.connect().await;
    c.batch_execute(&format!("create table {t} (id int)"))
        .await
        .unwrap();
    c.batch_execute(&format!("begin; insert into {t} values (1); rollback"))
        .await
        .unwrap();
    assert_eq!(one(&c, &format!("select count(*) from {t}")).await, "0");
    c.batch_execute("begin").await.unwrap();
    let err = c.simple_query("select 1/0").await.unwrap_err();
    assert_eq!(sqlstate(&err), "22012");
    let err = c.simple_query("select 1").await.unwrap_err();
    assert_eq!(
        sqlstate(&err),
        "25P02",
        "the transaction stays failed (status E)"
    );
    c.batch_execute("rollback").await.unwrap();
    let other = p.connect().await;
    assert_eq!(
        one(&other, "select 'other client served'").await,
        "other client served"
    );
    c.batch_execute(&format!("drop table {t}")).await.unwrap();
}

#[tokio::test]
async fn copy_in_and_out_100k_rows() {
    let p = pooler("", "pool_size = 1").await;
    let t = table("copy");
    let c = p.connect().await;
    c.batch_execute(&format!("create table {t} (id int, name text)"))
        .await
        .unwrap();
    c.batch_execute("begin").await.unwrap();
    let sink = c.copy_in(&format!("copy {t} from stdin")).await.unwrap();
    futures_util::pin_mut!(sink);
    let mut data = String::new();
    for i in 0..100_000 {
        data.push_str(&format!("{i}\tname {i}\n"));
    }
    for chunk in data.as_bytes().chunks(100_000) {
        sink.send(bytes::Bytes::copy_from_slice(chunk))
            .await
            .unwrap();
    }
    assert_eq!(sink.finish().await.unwrap(), 100_000);
    let out = c.copy_out(&format!("copy {t} to stdout")).await.unwrap();
    let chunks: Vec<bytes::Bytes> = out.try_collect().await.unwrap();
    let text: Vec<u8> = chunks.concat();
    assert_eq!(
        text,
        data.as_bytes(),
        "COPY OUT returns exactly what went in"
    );
    c.batch_execute(&format!("commit; drop table {t}"))
        .await
        .unwrap();
}

/// Drivers send Sync right after the Execute of a COPY FROM STDIN, and
/// Postgres ignores it: the server must still be released afterwards.
#[tokio::test]
async fn copy_in_outside_a_transaction_releases_the_server() {
    let p = pooler("", "pool_size = 1").await;
    let t = table("copy_auto");
    let c = p.connect().await;
    c.batch_execute(&format!("create table {t} (id int)"))
        .await
        .unwrap();
    let sink = c.copy_in(&format!("copy {t} from stdin")).await.unwrap();
    futures_util::pin_mut!(sink);
    sink.send(bytes::Bytes::from_static(b"1\n2\n3\n"))
        .await
        .unwrap();
    assert_eq!(sink.finish().await.unwrap(), 3);
    let other = p.connect().await;
    let sql = format!("select count(*) from {t}");
    let count = tokio::time::timeout(DEADLINE, one(&other, &sql)).await;
    assert_eq!(count.expect("the server was released"), "3");
    c.batch_execute(&format!("drop table {t}")).await.unwrap();
}

#[tokio::test]
async fn a_large_row_is_streamed_through() {
    let p = pooler("max_message_len = 1048576", "").await;
    let c = p.connect().await;
    let rows = c
        .query_typed("select repeat('x', 20000000)", &[])
        .await
        .unwrap();
    assert_eq!(rows[0].get::<_, String>(0).len(), 20_000_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_clients_share_five_servers() {
    let pg = PgServer::start(PgOptions::default());
    let p = Pooler::start(&pooler::config(&pg, "", "pool_size = 5")).await;
    let admin = pg.superuser().await;
    let peak = Arc::new(Mutex::new(0i64));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let monitor = {
        let (peak, done) = (peak.clone(), done.clone());
        tokio::spawn(async move {
            let sql = "select count(*) from pg_stat_activity where usename = 'app'";
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let n: i64 = admin.query_one(sql, &[]).await.unwrap().get(0);
                let mut peak = peak.lock().unwrap();
                *peak = (*peak).max(n);
            }
        })
    };
    let mut tasks = Vec::new();
    for i in 0..200i32 {
        let conn_str = p.conn_str("");
        tasks.push(tokio::spawn(async move {
            let (c, conn) = tokio_postgres::connect(&conn_str, NoTls).await.unwrap();
            tokio::spawn(conn);
            for j in 0..5i32 {
                let rows = c
                    .query_typed(
                        "select $1::int, pg_sleep(0.001)::text",
                        &[(&(i * 10 + j), Type::INT4)],
                    )
                    .await
                    .unwrap();
                assert_eq!(rows[0].get::<_, i32>(0), i * 10 + j);
            }
        }));
    }
    for t in tasks {
        t.await.expect("every client got right answers");
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    monitor.await.unwrap();
    let peak = *peak.lock().unwrap();
    assert!(
        (1..=5).contains(&peak),
        "Postgres saw {peak} connections from pgtarn, at most 5 allowed"
    );
    assert!(p.pool().size() <= 5);
}

#[tokio::test]
async fn waiting_clients_are_served_in_fifo_order() {
    let p = pooler("query_wait_timeout = \"20s\"", "pool_size = 1").await;
    let holder = p.connect().await;
    holder.batch_execute("begin").await.unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..5 {
        let c = p.connect().await;
        let order = order.clone();
        tasks.push(tokio::spawn(async move {
            c.batch_execute("select 1").await.unwrap();
            order.lock().unwrap().push(i);
        }));
        let pool = p.pool();
        wait_until("client queued", DEADLINE, || {
            let n = pool.waiting();
            async move { n == i + 1 }
        })
        .await;
    }
    holder.batch_execute("commit").await.unwrap();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(*order.lock().unwrap(), [0, 1, 2, 3, 4]);
}

#[tokio::test]
async fn query_wait_timeout_ends_the_wait_with_an_error() {
    let p = pooler("query_wait_timeout = \"500ms\"", "pool_size = 1").await;
    let holder = p.connect().await;
    holder.batch_execute("begin").await.unwrap();
    let waiter = p.connect().await;
    let started = Instant::now();
    let err = waiter.simple_query("select 1").await.unwrap_err();
    let waited = started.elapsed();
    let db = err.as_db_error().expect("an ErrorResponse");
    assert_eq!(
        (db.code().code(), db.message()),
        ("53300", "query_wait_timeout")
    );
    assert!(
        waited >= Duration::from_millis(450) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    holder.batch_execute("commit").await.unwrap();
    assert_eq!(
        one(&holder, "select 'holder unaffected'").await,
        "holder unaffected"
    );
}

#[tokio::test]
async fn max_client_conn_refuses_the_extra_client_only() {
    let p = pooler("max_client_conn = 2", "").await;
    let a = p.connect().await;
    let b = p.connect().await;
    let err = tokio_postgres::connect(&p.conn_str(""), NoTls)
        .await
        .err()
        .expect("third client refused");
    let db = err.as_db_error().expect("an ErrorResponse");
    assert_eq!(db.code().code(), "53300");
    assert_eq!(
        db.message(),
        "no more connections allowed (max_client_conn)"
    );
    assert_eq!(one(&a, "select 'a'").await, "a");
    assert_eq!(one(&b, "select 'b'").await, "b");
    drop(a);
    wait_until("a slot frees up", DEADLINE, || async {
        tokio_postgres::connect(&p.conn_str(""), NoTls)
            .await
            .is_ok()
    })
    .await;
}

#[tokio::test]
async fn a_client_killed_mid_transaction_does_not_leak_its_server() {
    let p = pooler("", "pool_size = 1").await;
    let t = table("killed");
    let setup = p.connect().await;
    setup
        .batch_execute(&format!("create table {t} (id int)"))
        .await
        .unwrap();
    drop(setup);
    let (a, a_conn) = p.connect_killable("").await;
    a.batch_execute(&format!("begin; insert into {t} values (1)"))
        .await
        .unwrap();
    let a_pid = one(&a, "select pg_backend_pid()").await;
    a_conn.abort();
    let b = p.connect().await;
    assert_eq!(
        one(&b, &format!("select count(*) from {t}")).await,
        "0",
        "B must not see A's open transaction"
    );
    assert_ne!(
        one(&b, "select pg_backend_pid()").await,
        a_pid,
        "A's dirty server is not reused"
    );
    assert_eq!(
        one(&b, "select now() = statement_timestamp()").await,
        "t",
        "B is not inside a transaction"
    );
    b.batch_execute(&format!("drop table {t}")).await.unwrap();
}

/// A client that disconnects while queued for a server leaves the queue
/// at once (as with PgBouncer): it is no longer counted in `cl_waiting`,
/// and the query it left behind never runs.
#[tokio::test]
async fn a_client_gone_while_queued_leaves_the_queue_and_its_query_never_runs() {
    let p = pooler("", "pool_size = 1").await;
    let t = table("queued");
    let holder = p.connect().await;
    holder
        .batch_execute(&format!("create table {t} (id int)"))
        .await
        .unwrap();
    holder.batch_execute("begin").await.unwrap();
    let (ghost, ghost_conn) = p.connect_killable("").await;
    let insert = format!("insert into {t} values (1)");
    let queued = tokio::spawn(async move { ghost.batch_execute(&insert).await });
    wait_until("the second client is queued", DEADLINE, || async {
        p.pool().counts(None).cl_waiting == 1
    })
    .await;
    ghost_conn.abort();
    let _ = queued.await;
    wait_until("the gone client left the queue", DEADLINE, || async {
        p.pool().counts(None).cl_waiting == 0
    })
    .await;
    holder.batch_execute("commit").await.unwrap();
    let next = p.connect().await;
    assert_eq!(one(&next, "select 'next'").await, "next");
    assert_eq!(
        one(&holder, &format!("select count(*) from {t}")).await,
        "0",
        "the gone client's insert did not run"
    );
    holder
        .batch_execute(&format!("drop table {t}"))
        .await
        .unwrap();
}

#[tokio::test]
async fn session_mode_resets_the_server_before_reuse() {
    let p = pooler("", "pool_mode = \"session\"\npool_size = 1").await;
    let a = p.connect().await;
    a.batch_execute("set work_mem = '1234kB'; prepare s as select 1")
        .await
        .unwrap();
    let stmt = a.prepare("select $1::int + 1").await.unwrap();
    assert_eq!(
        a.query_one(&stmt, &[&1i32]).await.unwrap().get::<_, i32>(0),
        2,
        "named statements work in session mode"
    );
    let a_pid = one(&a, "select pg_backend_pid()").await;
    drop((stmt, a));
    let b = p.connect().await;
    assert_eq!(
        one(&b, "select pg_backend_pid()").await,
        a_pid,
        "the server is reused"
    );
    assert_eq!(one(&b, "show work_mem").await, "4MB");
    let err = b.simple_query("execute s").await.unwrap_err();
    assert_eq!(
        sqlstate(&err),
        "26000",
        "prepared statements were discarded"
    );
}

#[tokio::test]
async fn cancel_request_reaches_the_running_query() {
    let p = pooler("", "pool_size = 2").await;
    let c = p.connect().await;
    let token = c.cancel_token();
    let sleeper = tokio::spawn(async move { c.simple_query("select pg_sleep(30)").await });
    let admin = PgServer::shared().superuser().await;
    wait_until("pg_sleep is running", DEADLINE, || {
        let admin = &admin;
        async move {
            let sql = "select count(*) from pg_stat_activity where query = 'select pg_sleep(30)' and state = 'active'";
            admin.query_one(sql, &[]).await.unwrap().get::<_, i64>(0) > 0
        }
    })
    .await;
    let started = Instant::now();
    token.cancel_query(NoTls).await.unwrap();
    let err = sleeper.await.unwrap().unwrap_err();
    assert_eq!(sqlstate(&err), "57014");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn startup_parameters_follow_the_client_to_any_server() {
    let p = pooler("", "pool_size = 1").await;
    let x = p
        .connect_with("application_name=xapp options='-c search_path=xschema'")
        .await;
    let y = p.connect_with("application_name=yapp").await;
    for _ in 0..3 {
        assert_eq!(one(&x, "show application_name").await, "xapp");
        assert_eq!(one(&x, "show search_path").await, "xschema");
        assert_eq!(one(&y, "show application_name").await, "yapp");
        assert_eq!(one(&y, "show search_path").await, "\"$user\", public");
    }
}

#[tokio::test]
async fn login_errors_carry_sqlstates() {
    let p = pooler("", "").await;
    let port = p.addr.port();
    let try_conn = |s: String| async move {
        tokio_postgres::connect(&s, NoTls)
            .await
            .err()
            .expect("refused")
    };
    let e = try_conn(format!(
        "host=127.0.0.1 port={port} user=app password=wrong dbname=app"
    ))
    .await;
    assert_eq!(sqlstate(&e), "28P01");
    let e = try_conn(format!(
        "host=127.0.0.1 port={port} user=nobody password=x dbname=app"
    ))
    .await;
    assert_eq!(sqlstate(&e), "28P01");
    assert_eq!(
        e.as_db_error().unwrap().message(),
        "password authentication failed for user \"nobody\""
    );
    let e = try_conn(format!(
        "host=127.0.0.1 port={port} user=app password=app-secret dbname=nope"
    ))
    .await;
    assert_eq!(sqlstate(&e), "3D000");
}

/// A client that pipelines many queries with large results, reading the
/// results while it writes (libpq's pipeline mode, pgjdbc batches), must
/// not deadlock: while the server takes no more queries because it is
/// blocked writing results, pgtarn has to go on reading and relaying them.
/// Here 2,000 queries of 8 KiB each (16 MiB, more than the socket buffers
/// hold) each return 64 KiB; without the relaying, progress stopped after
/// a few dozen results.
#[tokio::test]
async fn pipelined_queries_with_large_results_do_not_deadlock() {
    use bytes::BytesMut;
    use common::raw::Raw;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const QUERIES: usize = 2000;
    let p = pooler("auth_type = \"trust\"", "").await;
    let raw = Raw::login(p.addr, "app", "app").await;
    let (mut rd, mut wr) = tokio::io::split(raw.stream);
    let pad = "x".repeat(8192);
    let mut all = BytesMut::new();
    for _ in 0..QUERIES {
        let sql = format!("select repeat('y', 65536) /* {pad} */");
        pgtarn::protocol::encode::query(&mut all, &sql);
    }
    let writer = tokio::spawn(async move { wr.write_all(&all).await });
    let mut ready = 0;
    let mut pending = BytesMut::new();
    let mut buf = vec![0u8; 1 << 16];
    while ready < QUERIES {
        let read = tokio::time::timeout(DEADLINE, rd.read(&mut buf)).await;
        let n = read
            .unwrap_or_else(|_| panic!("no progress for 10 s after {ready} of {QUERIES} results"))
            .expect("read");
        assert!(n > 0, "EOF after {ready} results");
        pending.extend_from_slice(&buf[..n]);
        while pending.len() >= 5 {
            let len = u32::from_be_bytes([pending[1], pending[2], pending[3], pending[4]]) as usize;
            if pending.len() < len + 1 {
                break;
            }
            ready += usize::from(pending[0] == b'Z');
            let _ = pending.split_to(len + 1);
        }
    }
    writer.await.unwrap().expect("every query written");
}

/// A `SET` sent through the extended protocol (tokio-postgres `execute`,
/// pgjdbc) is tracked like one in a simple query: it follows its client,
/// and does not leak to the next client of the same server.
#[tokio::test]
async fn a_set_in_the_extended_protocol_follows_its_client_only() {
    let p = pooler("", "pool_size = 1").await;
    let a = p.connect().await;
    let b = p.connect().await;
    a.execute("SET statement_timeout = '1234ms'", &[])
        .await
        .unwrap();
    let shown = |row: tokio_postgres::Row| row.get::<_, String>(0);
    let b_sees = b.query_one("SHOW statement_timeout", &[]).await.unwrap();
    assert_eq!(shown(b_sees), "0", "the other client on the same server");
    let a_sees = a.query_one("SHOW statement_timeout", &[]).await.unwrap();
    assert_eq!(shown(a_sees), "1234ms", "the client that set it");
    a.execute("SET TimeZone = 'Asia/Tokyo'", &[]).await.unwrap();
    let b_zone = b.query_one("SHOW TimeZone", &[]).await.unwrap();
    assert_ne!(shown(b_zone), "Asia/Tokyo");
    let a_zone = a.query_one("SHOW TimeZone", &[]).await.unwrap();
    assert_eq!(shown(a_zone), "Asia/Tokyo");
}

/// `max_db_connections` bounds a database's server connections across
/// its users' pools: a second user's first query closes an idle
/// connection of the first user's pool to make room (never more than the
/// limit open); while the database's connections are all busy
/// the query waits for one to close, and gets `query_wait_timeout` if
/// none does in time.
#[tokio::test]
async fn max_db_connections_is_shared_by_the_databases_users() {
    let user = "dblimit_b";
    let su = common::second_user(user).await;
    let general = "auth_type = \"trust\"\nmax_db_connections = 2\nquery_wait_timeout = \"1s\"";
    let text = pooler::config(PgServer::shared(), general, "pool_size = 5")
        + &format!("[users.{user}]\npassword = \"{user}-secret\"\n");
    let p = Pooler::start(&text).await;
    // The database's server connections, as its pools count them.
    let upstream = || async {
        p.ctx
            .registry
            .pools()
            .iter()
            .map(|p| p.size())
            .sum::<usize>()
    };
    // The other user logs in first: its pool opens one connection.
    let b = p
        .connect_with(&format!("user={user} application_name=dblimit"))
        .await;
    assert_eq!(upstream().await, 1);
    // Two busy clients of `app`: the second closes b's idle connection.
    let a1 = p.connect_with("application_name=dblimit").await;
    let a2 = p.connect_with("application_name=dblimit").await;
    for a in [&a1, &a2] {
        a.batch_execute("begin; select 1").await.unwrap();
    }
    let b_pool = p.ctx.registry.find("app", user).expect("b's pool");
    assert_eq!(b_pool.size(), 0, "b's idle connection was closed");
    assert_eq!(upstream().await, 2);
    // Both busy: the other user waits, then gets query_wait_timeout.
    let err = b.simple_query("select 1").await.unwrap_err();
    let db = err.as_db_error().expect("an ErrorResponse");
    assert_eq!(
        (db.code().code(), db.message()),
        ("53300", "query_wait_timeout")
    );
    let hint = db.hint().unwrap_or_default();
    assert!(hint.contains("max_db_connections"), "{hint}");
    // Idle again: the other user's query closes one of them and runs.
    for a in [&a1, &a2] {
        a.batch_execute("commit").await.unwrap();
    }
    let b = p
        .connect_with(&format!("user={user} application_name=dblimit"))
        .await;
    assert_eq!(one(&b, "select current_user").await, user);
    assert!(upstream().await <= 2);
    let app_pool = p.ctx.registry.find("app", "app").expect("app's pool");
    assert_eq!(app_pool.size(), 1, "one of app's connections was closed");
    // A waiting query gets the connection a busy one frees.
    a1.batch_execute("begin; select 1").await.unwrap();
    b.batch_execute("begin").await.unwrap();
    let (waited, _) = tokio::join!(a2.simple_query("select 'freed'"), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        b.batch_execute("commit").await.unwrap();
    });
    assert!(waited.is_ok(), "{waited:?}");
    assert!(upstream().await <= 2);
    a1.batch_execute("commit").await.unwrap();
    let _ = su
        .batch_execute(&format!("drop role if exists {user}"))
        .await;
}

/// `reserve_pool_size`: a client that has waited `reserve_pool_timeout`
/// for a full pool gets one of the reserve's extra servers, while the
/// pool's own stay busy. As in PgBouncer the extra server then serves
/// anyone until it closes like the others (here after
/// `server_idle_timeout`), and the pool is back to `pool_size`. Without a
/// reserve the same client waits for the holder.
#[tokio::test]
async fn a_client_waiting_reserve_pool_timeout_gets_a_reserve_server() {
    let general = "query_wait_timeout = \"20s\"\nreserve_pool_timeout = \"300ms\"\n\
                   server_idle_timeout = \"1s\"";
    let p = pooler(general, "pool_size = 1\nreserve_pool_size = 1").await;
    let holder = p.connect().await;
    holder.batch_execute("begin").await.unwrap();
    let pool = p.pool();
    assert_eq!(pool.max_size(), 1);
    let waiter = p.connect().await;
    let started = Instant::now();
    assert_eq!(one(&waiter, "select 'served'").await, "served");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(5),
        "served from the reserve after reserve_pool_timeout: {waited:?}"
    );
    assert_eq!((pool.size(), pool.max_size()), (2, 2), "the reserve joined");
    // While it is open, the reserve server serves without a wait.
    let again = Instant::now();
    assert_eq!(one(&waiter, "select 'again'").await, "again");
    assert!(again.elapsed() < Duration::from_millis(250));
    holder.batch_execute("commit").await.unwrap();
    wait_until(
        "idle servers closed, limit back to pool_size",
        DEADLINE,
        || {
            let sizes = (pool.size(), pool.max_size());
            async move { sizes == (0, 1) }
        },
    )
    .await;
    // Without a reserve the client waits for the holder, however long.
    let p = pooler(general, "pool_size = 1").await;
    let holder = p.connect().await;
    holder.batch_execute("begin").await.unwrap();
    let waiter = p.connect().await;
    let query = tokio::spawn(async move { one(&waiter, "select 'late'").await });
    let pool = p.pool();
    wait_until("queued", DEADLINE, || {
        let n = pool.waiting();
        async move { n == 1 }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(pool.size(), 1, "no reserve: the pool did not grow");
    assert_eq!(pool.waiting(), 1, "still waiting");
    holder.batch_execute("commit").await.unwrap();
    assert_eq!(query.await.unwrap(), "late");
}

/// `max_user_connections` counts a user's server connections across all
/// its databases, as `max_db_connections` does for a database: a pool of
/// the user that needs one while the user is at the limit closes an idle
/// connection of the user's other pool, and while they are all busy it
/// waits, ending in `query_wait_timeout` with a hint naming the setting.
/// `[users.NAME]` `pool_size` and `pool_mode` override the database's.
#[tokio::test]
async fn max_user_connections_is_shared_by_the_users_databases() {
    let pg = PgServer::shared();
    let general = "auth_type = \"trust\"\nquery_wait_timeout = \"1s\"";
    let text = pooler::config(pg, general, "pool_size = 5")
        + "max_user_connections = 1\npool_size = 3\npool_mode = \"session\"\n"
        + &format!(
            "[databases.app_other]\nhost = \"127.0.0.1\"\nport = {}\ndbname = \"app\"\n",
            pg.port
        );
    let p = Pooler::start(&text).await;
    let a = p.connect().await;
    assert_eq!(one(&a, "select 'a'").await, "a");
    let a_pool = p.ctx.registry.find("app", "app").expect("a's pool");
    let settings = a_pool.settings();
    assert_eq!(settings.size, 3, "the user's pool_size");
    assert_eq!(settings.mode.as_str(), "session", "the user's pool_mode");
    drop(settings);
    // In session mode a holds its server: a login to the other database
    // (which needs a server to learn its parameters) waits.
    let other = |p: &Pooler| {
        let s = p.conn_str("").replace("dbname=app", "dbname=app_other");
        async move {
            let (c, conn) = tokio_postgres::connect(&s, NoTls).await?;
            tokio::spawn(conn);
            Ok::<_, tokio_postgres::Error>(c)
        }
    };
    let err = other(&p).await.expect_err("the login waited in vain");
    let db = err.as_db_error().expect("an ErrorResponse");
    assert_eq!(
        (db.code().code(), db.message()),
        ("53300", "query_wait_timeout")
    );
    let hint = db.hint().unwrap_or_default();
    assert!(hint.contains("max_user_connections"), "{hint}");
    // a leaves: its server goes idle, and the other database's pool
    // closes it to open its own.
    drop(a);
    wait_until("a's server idle", DEADLINE, || {
        let idle = a_pool.idle();
        async move { idle == 1 }
    })
    .await;
    let c = other(&p).await.expect("login to app_other");
    assert_eq!(one(&c, "select 'c'").await, "c");
    assert_eq!(a_pool.size(), 0, "a's idle server was closed");
    let open: usize = p.ctx.registry.pools().iter().map(|p| p.size()).sum();
    assert_eq!(open, 1, "never more than max_user_connections");
}

/// `pool_mode = "statement"`, as in PgBouncer: each statement may run on
/// another server (prepared statements and settings follow the client),
/// and a transaction block ends the client with PgBouncer's `FATAL
/// transaction blocks not allowed in statement pooling mode` (08P01) and
/// closes its server; other clients go on.
#[tokio::test]
async fn statement_mode_lends_servers_per_statement_and_refuses_transactions() {
    let p = pooler("", "pool_mode = \"statement\"\npool_size = 1").await;
    let a = p.connect().await;
    let b = p.connect().await;
    a.batch_execute("set application_name = 'a-stmt'")
        .await
        .unwrap();
    let stmt = a.prepare("select $1::int + 1").await.unwrap();
    for i in 0..3 {
        // One server: the clients take turns on it.
        assert_eq!(one(&b, "select 'b'").await, "b");
        let row = a.query_one(&stmt, &[&i]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), i + 1);
        assert_eq!(one(&a, "show application_name").await, "a-stmt");
    }
    let e = a.batch_execute("begin").await.unwrap_err();
    let db = e.as_db_error().expect("an ErrorResponse");
    assert_eq!(
        (db.code().code(), db.message()),
        (
            "08P01",
            "transaction blocks not allowed in statement pooling mode"
        )
    );
    assert!(a.is_closed() || a.simple_query("select 1").await.is_err());
    assert_eq!(one(&b, "select 'b goes on'").await, "b goes on");
}

/// Once the reserve's servers have closed and the limit is back to
/// `pool_size`, a full pool makes the next client wait
/// `reserve_pool_timeout` again: the reserve's room is not left open
/// (before, the pool kept `pool_size + reserve_pool_size` checkouts, so
/// the second client got a second server at once).
#[tokio::test]
async fn after_the_reserve_closes_a_full_pool_waits_reserve_pool_timeout_again() {
    let general = "query_wait_timeout = \"20s\"\nreserve_pool_timeout = \"1s\"\n\
                   server_idle_timeout = \"1s\"";
    let p = pooler(general, "pool_size = 1\nreserve_pool_size = 1").await;
    let holder = p.connect().await;
    let waiter = p.connect().await;
    let pool = p.pool();
    holder.batch_execute("begin").await.unwrap();
    assert_eq!(one(&waiter, "select 'reserve'").await, "reserve");
    assert_eq!((pool.size(), pool.max_size()), (2, 2), "the reserve joined");
    holder.batch_execute("commit").await.unwrap();
    wait_until("limit back to pool_size", DEADLINE, || {
        let sizes = (pool.size(), pool.max_size());
        async move { sizes == (0, 1) }
    })
    .await;
    holder.batch_execute("begin").await.unwrap();
    let started = Instant::now();
    assert_eq!(one(&waiter, "select 'waited'").await, "waited");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "a full pool of pool_size: the reserve again after reserve_pool_timeout: {waited:?}"
    );
    holder.batch_execute("commit").await.unwrap();
}

/// A user waiting at its `max_user_connections` does not hold a place of
/// `max_db_connections` meanwhile: another user of the database gets a
/// server at once, as in PgBouncer (which checks both limits before
/// opening a connection). Before, the waiting pool took the database's
/// last slot first and kept it, empty, while it waited on its user, so
/// the other user waited too (here the whole `query_wait_timeout`).
#[tokio::test]
async fn a_user_at_its_limit_does_not_block_other_users_of_a_full_database() {
    let user = "ulimit_b";
    let su = common::second_user(user).await;
    let pg = PgServer::shared();
    let general = "auth_type = \"trust\"\nmax_db_connections = 1\nquery_wait_timeout = \"4s\"";
    let text = pooler::config(pg, general, "pool_size = 5")
        + "max_user_connections = 1\n"
        + &format!(
            "[databases.app_other]\nhost = \"127.0.0.1\"\nport = {}\ndbname = \"app\"\n",
            pg.port
        )
        + &format!("[users.{user}]\npassword = \"{user}-secret\"\n");
    let p = Pooler::start(&text).await;
    let b = p
        .connect_with(&format!("user={user} application_name=ulimit"))
        .await;
    let a2 = p.connect_with("application_name=ulimit").await;
    let other = p.conn_str("application_name=ulimit");
    let other = other.replace("dbname=app", "dbname=app_other");
    let (a, conn) = tokio_postgres::connect(&other, NoTls).await.unwrap();
    tokio::spawn(conn);
    // a holds the user's only server, on app_other; app has none open.
    a.batch_execute("begin; select 1").await.unwrap();
    // a2 waits for its user's limit...
    let waiting = tokio::spawn(async move { a2.simple_query("select 'a2'").await.is_ok() });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // ...which is no reason for b, another user of app, to wait.
    let started = std::time::Instant::now();
    let got = tokio::time::timeout(Duration::from_secs(2), one(&b, "select 'b'")).await;
    assert_eq!(
        got.ok().as_deref(),
        Some("b"),
        "b waited {:?} for a database with no server open",
        started.elapsed()
    );
    a.batch_execute("commit").await.unwrap();
    assert!(waiting.await.unwrap(), "a2 ran once a's server was idle");
    let _ = su
        .batch_execute(&format!("drop role if exists {user}"))
        .await;
}

/// `application_name_add_host` (PgBouncer's): the client's address follows
/// its application name (`app` when it sent none), so the server's
/// `pg_stat_activity` shows where a query came from; a later SET stands.
#[tokio::test]
async fn application_name_add_host_appends_the_clients_address() {
    let p = pooler("application_name_add_host = true", "").await;
    let named = p.connect_with("application_name=reports").await;
    let sql = "select application_name from pg_stat_activity where pid = pg_backend_pid()";
    let shown = one(&named, sql).await;
    let port = shown
        .strip_prefix("reports - 127.0.0.1:")
        .unwrap_or_else(|| panic!("{shown}"));
    assert!(port.parse::<u16>().is_ok(), "{shown}");
    let unnamed = p.connect().await;
    let shown = one(&unnamed, "show application_name").await;
    assert!(shown.starts_with("app - 127.0.0.1:"), "{shown}");
    unnamed
        .batch_execute("set application_name = 'renamed'")
        .await
        .unwrap();
    assert_eq!(one(&unnamed, "show application_name").await, "renamed");
    unnamed
        .batch_execute("reset application_name")
        .await
        .unwrap();
    let shown = one(&unnamed, "show application_name").await;
    assert!(shown.starts_with("app - 127.0.0.1:"), "RESET: {shown}");
    // A name given with options=-c gets the address too.
    let opts = p.connect_with("options='-c application_name=batch'").await;
    let shown = one(&opts, "show application_name").await;
    assert!(shown.starts_with("batch - 127.0.0.1:"), "{shown}");
}
