//! Named prepared statements and session state in transaction mode, end to
//! end: raw protocol for exact reply sequences, tokio-postgres and pgbench
//! for real driver behaviour.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::one;
use common::pg::PgServer;
use common::pooler::{self, Pooler};
use common::raw::{Raw, errors, ext, first_columns, tags};

async fn trust_pooler(database: &str, general: &str) -> Pooler {
    Pooler::trust(general, database).await
}

/// Simple Query messages for `sql`, one per statement.
fn queries(sql: &[&str]) -> Vec<u8> {
    let mut b = bytes::BytesMut::new();
    for q in sql {
        pgtarn::protocol::encode::query(&mut b, q);
    }
    b.to_vec()
}

/// Sends `msg` and reads replies up to the `syncs`-th ReadyForQuery.
async fn round(raw: &mut Raw, msg: &[u8], syncs: usize) -> Vec<(u8, Bytes)> {
    raw.send(msg).await;
    let mut all = Vec::new();
    for _ in 0..syncs {
        all.extend(raw.read_until(b'Z').await);
    }
    all
}

#[tokio::test]
async fn clients_use_the_same_statement_names_without_clashing() {
    let p = trust_pooler("pool_size = 1", "").await;
    let mut a = Raw::login(p.addr, "app", "app").await;
    let mut b = Raw::login(p.addr, "app", "app").await;
    let prep = |sql: &str| [ext::parse("s1", sql), ext::sync()].concat();
    assert_eq!(tags(&round(&mut a, &prep("select 'a'"), 1).await), "1Z");
    assert_eq!(tags(&round(&mut b, &prep("select 'b'"), 1).await), "1Z");
    for _ in 0..3 {
        assert_eq!(
            first_columns(&round(&mut a, &ext::run("s1", &[]), 1).await),
            ["a"]
        );
        assert_eq!(
            first_columns(&round(&mut b, &ext::run("s1", &[]), 1).await),
            ["b"]
        );
    }
}

#[tokio::test]
async fn statement_errors_match_postgres() {
    let p = trust_pooler("pool_size = 2", "").await;
    let mut c = Raw::login(p.addr, "app", "app").await;
    let prep = |name: &str, sql: &str| [ext::parse(name, sql), ext::sync()].concat();
    round(&mut c, &prep("s1", "select 1"), 1).await;
    let dup = round(&mut c, &prep("s1", "select 2"), 1).await;
    assert_eq!(
        (tags(&dup), errors(&dup)),
        ("EZ".into(), vec!["42P05".to_string()])
    );
    let bad = round(&mut c, &prep("s2", "select * from no_such_table"), 1).await;
    assert_eq!(errors(&bad), ["42P01"]);
    let unknown = round(&mut c, &ext::run("s2", &[]), 1).await;
    assert_eq!(
        errors(&unknown),
        ["26000"],
        "a failed Parse leaves nothing behind"
    );
    assert_eq!(
        tags(&round(&mut c, &prep("s2", "select 2"), 1).await),
        "1Z",
        "the name is free again"
    );
    let closed = round(&mut c, &[ext::close("s1"), ext::sync()].concat(), 1).await;
    assert_eq!(tags(&closed), "3Z");
    assert_eq!(
        errors(&round(&mut c, &ext::run("s1", &[]), 1).await),
        ["26000"]
    );
    c.query("DEALLOCATE s2").await;
    let dealloc = c.read_until(b'Z').await;
    assert_eq!(tags(&dealloc), "CZ");
    assert_eq!(
        errors(&round(&mut c, &ext::run("s2", &[]), 1).await),
        ["26000"]
    );
    round(&mut c, &prep("s3", "select 3"), 1).await;
    c.query("DEALLOCATE ALL").await;
    c.read_until(b'Z').await;
    assert_eq!(
        errors(&round(&mut c, &ext::run("s3", &[]), 1).await),
        ["26000"]
    );
    round(&mut c, &prep("s3", "select 3"), 1).await;
    assert_eq!(
        first_columns(&round(&mut c, &ext::run("s3", &[]), 1).await),
        ["3"],
        "usable after DEALLOCATE ALL"
    );
}

#[tokio::test]
async fn pipelines_mix_named_and_unnamed_statements() {
    let p = trust_pooler("pool_size = 2", "").await;
    let mut c = Raw::login(p.addr, "app", "app").await;
    let batch = [
        ext::parse("s1", "select $1::int * 10"),
        ext::run("s1", &["1"]),
        ext::parse("", "select 'unnamed'"),
        ext::run("", &[]),
        ext::run("s1", &["2"]),
    ]
    .concat();
    let replies = round(&mut c, &batch, 3).await;
    assert_eq!(tags(&replies), "12DCZ12DCZ2DCZ");
    assert_eq!(first_columns(&replies), ["10", "unnamed", "20"]);
    let failing = [
        ext::parse("div", "select 1 / $1::int"),
        ext::bind("div", &["0"]),
        ext::execute(),
        ext::run("s1", &["3"]),
        ext::sync(),
        ext::run("s1", &["4"]),
    ]
    .concat();
    let replies = round(&mut c, &failing, 3).await;
    // A custom plan folds the parameter in, so 1/0 fails at Bind; Postgres
    // then skips everything up to the first Sync.
    assert_eq!(tags(&replies), "1EZZ2DCZ");
    assert_eq!(errors(&replies), ["22012"]);
    assert_eq!(first_columns(&replies), ["40"]);
}

#[tokio::test]
async fn per_client_statement_limit_is_a_clear_error() {
    let p = trust_pooler("", "max_client_prepared_statements = 3").await;
    let mut c = Raw::login(p.addr, "app", "app").await;
    for i in 0..3 {
        let r = round(
            &mut c,
            &[ext::parse(&format!("s{i}"), "select 1"), ext::sync()].concat(),
            1,
        )
        .await;
        assert_eq!(tags(&r), "1Z");
    }
    let r = round(
        &mut c,
        &[ext::parse("s3", "select 1"), ext::sync()].concat(),
        1,
    )
    .await;
    assert_eq!(errors(&r), ["53400"]);
    assert_eq!(
        first_columns(&round(&mut c, &ext::run("s0", &[]), 1).await),
        ["1"]
    );
}

/// `max_client_prepared_bytes` bounds what pgtarn keeps for a client's
/// statements, their names included: names of any length (up to
/// `max_message_len`) for one short query would otherwise let a client
/// hold `max_client_prepared_statements` times `max_message_len` of memory.
#[tokio::test]
async fn statement_names_count_toward_max_client_prepared_bytes() {
    let p = trust_pooler("", "max_client_prepared_bytes = 100000").await;
    let mut c = Raw::login(p.addr, "app", "app").await;
    let mut refused = None;
    for i in 0..5 {
        let name = format!("{i}{}", "n".repeat(40_000));
        let r = round(
            &mut c,
            &[ext::parse(&name, "select 1"), ext::sync()].concat(),
            1,
        )
        .await;
        if errors(&r) == ["53400"] {
            refused = Some(i);
            break;
        }
        assert_eq!(tags(&r), "1Z", "statement {i}");
    }
    assert_eq!(
        refused,
        Some(2),
        "the third 40 kB name passes max_client_prepared_bytes = 100000"
    );
    let first = format!("0{}", "n".repeat(40_000));
    assert_eq!(
        first_columns(&round(&mut c, &ext::run(&first, &[]), 1).await),
        ["1"],
        "the statements within the limit still run"
    );
}

#[tokio::test]
async fn the_server_cache_evicts_and_prepares_again() {
    let p = trust_pooler("pool_size = 1", "max_prepared_statements = 2").await;
    let mut c = Raw::login(p.addr, "app", "app").await;
    for k in 0..5 {
        round(
            &mut c,
            &[
                ext::parse(&format!("s{k}"), &format!("select {k}")),
                ext::sync(),
            ]
            .concat(),
            1,
        )
        .await;
    }
    for _ in 0..3 {
        for k in 0..5 {
            let r = round(&mut c, &ext::run(&format!("s{k}"), &[]), 1).await;
            assert_eq!(first_columns(&r), [k.to_string()]);
        }
    }
    c.query("select count(*) from pg_prepared_statements").await;
    let count = first_columns(&c.read_until(b'Z').await);
    assert_eq!(
        count,
        ["2"],
        "max_prepared_statements bounds the server side"
    );
}

fn sqlstate(e: &tokio_postgres::Error) -> Option<String> {
    e.as_db_error().map(|d| d.code().code().to_owned())
}

/// Prepares `sql`, retrying once after `cached plan must not change result
/// type` (counted in `seen`).
async fn prepare_retrying(
    c: &tokio_postgres::Client,
    sql: &str,
    seen: &mut usize,
) -> tokio_postgres::Statement {
    match c.prepare(sql).await {
        Ok(s) => s,
        Err(e) => {
            assert_eq!(sqlstate(&e).as_deref(), Some("0A000"), "{e}");
            *seen += 1;
            c.prepare(sql).await.expect("preparing again works")
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_tokio_postgres_tasks_on_four_servers_with_ddl() {
    let p = Pooler::start(&pooler::config(PgServer::shared(), "", "pool_size = 4")).await;
    let table = format!("ddl_{}", std::process::id());
    let setup = p.connect().await;
    setup
        .batch_execute(&format!(
            "create table {table} (id int primary key, v int); \
             insert into {table} select g, g * 2 from generate_series(1, 100) g"
        ))
        .await
        .unwrap();
    let type_changes = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for t in 0..100i32 {
        let (c, type_changes) = (p.connect().await, type_changes.clone());
        let shared_sql = format!("select * from {table} where id = $1");
        tasks.push(tokio::spawn(async move {
            // A client may see the result-type change once (at prepare or
            // at execution); preparing again then works.
            let mut seen = 0;
            let mut shared = prepare_retrying(&c, &shared_sql, &mut seen).await;
            let own = c.prepare(&format!("select $1::int + {t}")).await.unwrap();
            for i in 1..=20i32 {
                let row = c.query_one(&own, &[&i]).await.unwrap();
                assert_eq!(row.get::<_, i32>(0), i + t);
                match c.query_one(&shared, &[&i]).await {
                    Ok(row) => assert_eq!(row.get::<_, i32>(0), i),
                    Err(e) => {
                        assert_eq!(sqlstate(&e).as_deref(), Some("0A000"), "{e}");
                        seen += 1;
                        shared = prepare_retrying(&c, &shared_sql, &mut seen).await;
                        let row = c.query_one(&shared, &[&i]).await.unwrap();
                        assert_eq!(row.get::<_, i32>(0), i, "re-prepared statement works");
                    }
                }
            }
            assert!(
                seen <= 1,
                "a client sees the result-type change at most once, saw it {seen} times"
            );
            type_changes.fetch_add(seen, Ordering::Relaxed);
        }));
        if t == 50 {
            setup
                .batch_execute(&format!(
                    "alter table {table} add column extra int default 0"
                ))
                .await
                .unwrap();
        }
    }
    for task in tasks {
        task.await.expect("every task got right answers");
    }
    let seen = type_changes.load(Ordering::Relaxed);
    assert!(
        seen > 0,
        "the DDL changed the result type of a prepared statement"
    );
    setup
        .batch_execute(&format!("drop table {table}"))
        .await
        .unwrap();
}

#[tokio::test]
async fn set_commands_follow_the_client_to_any_server() {
    let p = Pooler::start(&pooler::config(PgServer::shared(), "", "pool_size = 2")).await;
    let a = p.connect().await;
    let b = p.connect().await;
    let holder = p.connect().await;
    a.batch_execute("set search_path = a_schema, public; set application_name = 'a-app'")
        .await
        .unwrap();
    a.batch_execute("begin; set statement_timeout = '7s'; rollback")
        .await
        .unwrap();
    a.batch_execute("set local work_mem = '7MB'").await.unwrap();
    for round in 0..4 {
        if round % 2 == 1 {
            holder.batch_execute("begin").await.unwrap();
        }
        assert_eq!(one(&a, "show search_path").await, "a_schema, public");
        assert_eq!(one(&a, "show application_name").await, "a-app");
        assert_eq!(
            one(&a, "show statement_timeout").await,
            "0",
            "rolled-back SET is not kept"
        );
        assert_eq!(
            one(&a, "show work_mem").await,
            "4MB",
            "SET LOCAL is not kept"
        );
        assert_eq!(
            one(&b, "show search_path").await,
            "\"$user\", public",
            "B never sees A's settings"
        );
        assert_eq!(one(&b, "show application_name").await, "");
        if round % 2 == 1 {
            holder.batch_execute("commit").await.unwrap();
        }
    }
    a.batch_execute("reset all").await.unwrap();
    assert_eq!(one(&a, "show search_path").await, "\"$user\", public");
    tokio::time::timeout(Duration::from_secs(5), b.batch_execute("select 1"))
        .await
        .unwrap()
        .unwrap();
}

/// `RESET name` and `SET name TO DEFAULT` return a setting to the value
/// the client logged in with (as with Postgres directly, where that is
/// the session's default), not to the server's default; so does `RESET
/// ALL` for a setting the same transaction changed first.
#[tokio::test]
async fn reset_returns_to_the_login_value() {
    let p = Pooler::start(&pooler::config(PgServer::shared(), "", "pool_size = 2")).await;
    let c = p
        .connect_with("application_name=login-app options='-c work_mem=7MB'")
        .await;
    for reset in [
        "reset work_mem",
        "set work_mem to default",
        "set work_mem = '9MB'; reset all",
    ] {
        c.batch_execute("set work_mem = '5MB'; set application_name = 'x'")
            .await
            .unwrap();
        c.batch_execute(reset).await.unwrap();
        c.batch_execute("reset application_name").await.unwrap();
        for _ in 0..2 {
            assert_eq!(one(&c, "show work_mem").await, "7MB", "after {reset:?}");
            assert_eq!(one(&c, "show application_name").await, "login-app");
        }
    }
    // Names whose pg_settings spelling has capitals (TimeZone) too.
    let tz = p.connect_with("options='-c TimeZone=Asia/Tokyo'").await;
    tz.batch_execute("set timezone = 'UTC'").await.unwrap();
    tz.batch_execute("reset timezone").await.unwrap();
    for _ in 0..2 {
        assert_eq!(one(&tz, "show timezone").await, "Asia/Tokyo");
    }
    // A RESET rolled back with its transaction changes nothing.
    c.batch_execute("set work_mem = '5MB'").await.unwrap();
    c.batch_execute("begin; reset work_mem; rollback")
        .await
        .unwrap();
    for _ in 0..2 {
        assert_eq!(one(&c, "show work_mem").await, "5MB", "after a rollback");
    }
}

/// The transaction status byte of the last ReadyForQuery in `msgs`.
fn last_status(msgs: &[(u8, Bytes)]) -> char {
    let (tag, body) = msgs.last().expect("messages");
    assert_eq!(*tag, b'Z', "{}", tags(msgs));
    body[0] as char
}

/// An error pgtarn makes up in the middle of a pipeline (here a duplicate
/// statement name, 42P05) must fail the pipeline's implicit transaction as
/// Postgres' own error would: the INSERT before it in the same Sync must
/// not be committed.
#[tokio::test]
async fn a_made_up_error_mid_pipeline_rolls_back_the_implicit_transaction() {
    made_up_error_case("prep_atomic_a", "").await;
}

/// Control: with named statements passed through (Postgres itself raises
/// the 42P05), the INSERT is rolled back.
#[tokio::test]
async fn control_postgres_error_mid_pipeline_rolls_back() {
    made_up_error_case("prep_atomic_b", "max_prepared_statements = 0").await;
}

async fn made_up_error_case(table: &str, general: &str) {
    let p = trust_pooler("pool_size = 1", general).await;
    let admin = p.connect().await;
    admin
        .batch_execute(&format!(
            "drop table if exists {table}; create table {table} (i int)"
        ))
        .await
        .unwrap();
    let mut c = Raw::login(p.addr, "app", "app").await;
    let prep = [ext::parse("s1", "select 1"), ext::sync()].concat();
    assert_eq!(tags(&round(&mut c, &prep, 1).await), "1Z");
    let insert = [
        ext::parse("", &format!("insert into {table} values (1)")),
        ext::bind("", &[]),
        ext::execute(),
    ]
    .concat();
    let got = round(
        &mut c,
        &[insert, ext::parse("s1", "select 2"), ext::sync()].concat(),
        1,
    )
    .await;
    assert_eq!(errors(&got), ["42P05"]);
    assert_eq!(tags(&got), "12CEZ");
    assert_eq!(
        one(&admin, &format!("select count(*)::text from {table}")).await,
        "0",
        "Postgres rolls the INSERT back: the pipeline's implicit transaction failed"
    );
    // s1 is untouched and the session goes on.
    assert_eq!(
        first_columns(&round(&mut c, &ext::run("s1", &[]), 1).await),
        ["1"]
    );
}

/// The same for pgtarn's own limits (53400) and for a statement outdated
/// by DDL (0A000, at Bind).
#[tokio::test]
async fn made_up_limit_and_outdated_errors_fail_the_pipeline_too() {
    let p = trust_pooler("pool_size = 1", "max_client_prepared_statements = 1").await;
    let admin = p.connect().await;
    admin
        .batch_execute(
            "drop table if exists prep_atomic_c; create table prep_atomic_c (i int);\
             drop table if exists prep_shape; create table prep_shape (a int);\
             insert into prep_shape values (1)",
        )
        .await
        .unwrap();
    let mut c = Raw::login(p.addr, "app", "app").await;
    let insert = [
        ext::parse("", "insert into prep_atomic_c values (1)"),
        ext::bind("", &[]),
        ext::execute(),
    ]
    .concat();
    let prep = [ext::parse("s1", "select * from prep_shape"), ext::sync()].concat();
    assert_eq!(tags(&round(&mut c, &prep, 1).await), "1Z");
    let over = [insert.clone(), ext::parse("s2", "select 2"), ext::sync()].concat();
    assert_eq!(errors(&round(&mut c, &over, 1).await), ["53400"]);
    // Another client sees the result type change and makes s1 outdated.
    let mut other = Raw::login(p.addr, "app", "app").await;
    round(&mut other, &prep, 1).await;
    admin
        .batch_execute("alter table prep_shape add column b int")
        .await
        .unwrap();
    let failed = round(&mut other, &ext::run("s1", &[]), 1).await;
    assert_eq!(errors(&failed), ["0A000"], "{}", tags(&failed));
    let stale = [insert, ext::run("s1", &[])].concat();
    let got = round(&mut c, &stale, 1).await;
    assert_eq!(errors(&got), ["0A000"], "{}", tags(&got));
    assert_eq!(
        one(&admin, "select count(*)::text from prep_atomic_c").await,
        "0",
        "neither INSERT was committed"
    );
}

/// Inside an explicit transaction, the same made-up error must leave the
/// transaction failed (ReadyForQuery 'E', later commands 25P02), as
/// Postgres does.
#[tokio::test]
async fn a_made_up_error_inside_a_transaction_fails_it() {
    made_up_error_in_transaction("").await;
}

/// Control: Postgres' own 42P05.
#[tokio::test]
async fn control_postgres_error_inside_a_transaction_fails_it() {
    made_up_error_in_transaction("max_prepared_statements = 0").await;
}

async fn made_up_error_in_transaction(general: &str) {
    let p = trust_pooler("pool_size = 1", general).await;
    let mut c = Raw::login(p.addr, "app", "app").await;
    let prep = [ext::parse("s1", "select 1"), ext::sync()].concat();
    round(&mut c, &prep, 1).await;
    c.query("begin").await;
    c.read_until(b'Z').await;
    let dup = [ext::parse("s1", "select 2"), ext::sync()].concat();
    let got = round(&mut c, &dup, 1).await;
    assert_eq!(errors(&got), ["42P05"]);
    assert_eq!(
        last_status(&got),
        'E',
        "ReadyForQuery status after an error in a transaction"
    );
    c.query("select 1").await;
    assert_eq!(errors(&c.read_until(b'Z').await), ["25P02"]);
    // In a failed transaction Postgres reports 25P02 before looking at the
    // statement name.
    let got = round(&mut c, &dup, 1).await;
    assert_eq!(errors(&got), ["25P02"]);
    assert_eq!(last_status(&got), 'E');
    c.query("rollback").await;
    assert_eq!(last_status(&c.read_until(b'Z').await), 'I');
}

/// pgtarn's refusal fails a named Parse on the server, so the client's
/// unnamed statement survives it, as it does Postgres' own 42P05.
#[tokio::test]
async fn a_made_up_error_keeps_the_unnamed_statement() {
    unnamed_statement_survives("").await;
}

/// Control: Postgres' own 42P05.
#[tokio::test]
async fn control_postgres_error_keeps_the_unnamed_statement() {
    unnamed_statement_survives("max_prepared_statements = 0").await;
}

async fn unnamed_statement_survives(general: &str) {
    let p = trust_pooler("pool_size = 1", general).await;
    let mut c = Raw::login(p.addr, "app", "app").await;
    let prep = [ext::parse("s1", "select 1"), ext::sync()].concat();
    round(&mut c, &prep, 1).await;
    c.query("begin").await;
    c.read_until(b'Z').await;
    let batch = [
        ext::parse("", "select 'kept'"),
        ext::sync(),
        ext::parse("s1", "select 2"),
        ext::sync(),
    ]
    .concat();
    let got = round(&mut c, &batch, 2).await;
    assert_eq!(
        (tags(&got), errors(&got)),
        ("1ZEZ".into(), vec!["42P05".into()])
    );
    // A simple query would drop the unnamed statement.
    let rollback = [ext::parse("rb", "rollback"), ext::run("rb", &[])].concat();
    assert_eq!(last_status(&round(&mut c, &rollback, 1).await), 'I');
    // The pool's only server serves the next transaction.
    let got = round(&mut c, &ext::run("", &[]), 1).await;
    assert_eq!(errors(&got), Vec::<String>::new(), "{}", tags(&got));
    assert_eq!(first_columns(&got), ["kept"]);
}

/// Postgres skips every message after an error up to Sync, so a Parse that
/// follows a failing Execute in the same pipeline creates nothing, and the
/// client may Parse the same name again. pgtarn answers a Parse of a
/// statement the server already has by itself; that answer is dropped
/// because of the earlier error, and the client's name must go with it.
#[tokio::test]
async fn a_parse_skipped_after_an_error_leaves_no_statement_behind() {
    parse_skipped_case("").await;
}

/// Controls: with named statements passed through to Postgres, both pass.
#[tokio::test]
async fn control_skipped_parse_and_close_on_postgres() {
    parse_skipped_case("max_prepared_statements = 0").await;
    close_skipped_case("max_prepared_statements = 0").await;
}

async fn parse_skipped_case(general: &str) {
    let p = trust_pooler("pool_size = 1", general).await;
    let mut c = Raw::login(p.addr, "app", "app").await;
    // The server has the definition already (under another client name).
    let first = [ext::parse("first", "select 42"), ext::sync()].concat();
    assert_eq!(tags(&round(&mut c, &first, 1).await), "1Z");
    let batch = [
        ext::parse("", "select 1/0"),
        ext::bind("", &[]),
        ext::execute(),
        ext::parse("second", "select 42"),
        ext::sync(),
    ]
    .concat();
    let got = round(&mut c, &batch, 1).await;
    assert_eq!(errors(&got), ["22012"]);
    // "second" was never created: preparing it now must work.
    let second = [ext::parse("second", "select 42"), ext::sync()].concat();
    let got = round(&mut c, &second, 1).await;
    assert_eq!(
        errors(&got),
        Vec::<String>::new(),
        "Postgres answers ParseComplete"
    );
}

/// The same for Close: a Close skipped after an error leaves the
/// statement in place on Postgres.
#[tokio::test]
async fn a_close_skipped_after_an_error_keeps_the_statement() {
    close_skipped_case("").await;
}

async fn close_skipped_case(general: &str) {
    let p = trust_pooler("pool_size = 1", general).await;
    let mut c = Raw::login(p.addr, "app", "app").await;
    let prep = [ext::parse("s1", "select 42"), ext::sync()].concat();
    assert_eq!(tags(&round(&mut c, &prep, 1).await), "1Z");
    let batch = [
        ext::parse("", "select 1/0"),
        ext::bind("", &[]),
        ext::execute(),
        ext::close("s1"),
        ext::sync(),
    ]
    .concat();
    let got = round(&mut c, &batch, 1).await;
    assert_eq!(errors(&got), ["22012"]);
    let got = round(&mut c, &ext::run("s1", &[]), 1).await;
    assert_eq!(errors(&got), Vec::<String>::new(), "s1 still exists");
    assert_eq!(first_columns(&got), ["42"]);
}

/// A Close and a Parse of the same name, both skipped: undone latest
/// first, the client keeps its original statement.
#[tokio::test]
async fn a_skipped_close_and_parse_of_one_name_keep_the_first_statement() {
    let p = trust_pooler("pool_size = 1", "").await;
    let mut c = Raw::login(p.addr, "app", "app").await;
    let prep = [ext::parse("s1", "select 42"), ext::sync()].concat();
    round(&mut c, &prep, 1).await;
    let batch = [
        ext::parse("", "select 1/0"),
        ext::bind("", &[]),
        ext::execute(),
        ext::close("s1"),
        ext::parse("s1", "select 43"),
        ext::sync(),
    ]
    .concat();
    assert_eq!(errors(&round(&mut c, &batch, 1).await), ["22012"]);
    let got = round(&mut c, &ext::run("s1", &[]), 1).await;
    assert_eq!(first_columns(&got), ["42"], "{}", tags(&got));
}

/// Preparing again a statement whose server copy is outdated (after DDL)
/// sends the server a Close and a Parse; when an earlier error makes
/// Postgres skip both, the old copy is still there and pgtarn must still
/// close it before the next Parse (else Postgres says it exists, 42P05).
#[tokio::test]
async fn a_skipped_re_prepare_of_an_outdated_statement_keeps_the_server_in_step() {
    let p = trust_pooler("pool_size = 1", "").await;
    let admin = p.connect().await;
    admin
        .batch_execute(
            "drop table if exists prep_reshape; create table prep_reshape (a int);\
             insert into prep_reshape values (1)",
        )
        .await
        .unwrap();
    let mut c = Raw::login(p.addr, "app", "app").await;
    let prep = [ext::parse("s1", "select * from prep_reshape"), ext::sync()].concat();
    round(&mut c, &prep, 1).await;
    admin
        .batch_execute("alter table prep_reshape add column b int")
        .await
        .unwrap();
    let got = round(&mut c, &ext::run("s1", &[]), 1).await;
    assert_eq!(errors(&got), ["0A000"]);
    round(&mut c, &[ext::close("s1"), ext::sync()].concat(), 1).await;
    let batch = [
        ext::parse("", "select 1/0"),
        ext::bind("", &[]),
        ext::execute(),
        ext::parse("s1", "select * from prep_reshape"),
        ext::sync(),
    ]
    .concat();
    assert_eq!(errors(&round(&mut c, &batch, 1).await), ["22012"]);
    let again = [
        ext::parse("s1", "select * from prep_reshape"),
        ext::run("s1", &[]),
    ]
    .concat();
    let got = round(&mut c, &again, 1).await;
    assert_eq!(errors(&got), Vec::<String>::new(), "{}", tags(&got));
    assert_eq!(first_columns(&got), ["1"]);
}

/// `DEALLOCATE name`, answered by pgtarn, reports the transaction status
/// Postgres would: 'T' when pipelined behind BEGIN, and 25P02 (the
/// statement kept) in a failed transaction, whether pgtarn learned of the
/// failure before or after the DEALLOCATE arrived.
#[tokio::test]
async fn deallocate_follows_the_transaction_status() {
    deallocate_in_transactions("").await;
}

/// Control: Postgres' own DEALLOCATE.
#[tokio::test]
async fn control_deallocate_on_postgres() {
    deallocate_in_transactions("max_prepared_statements = 0").await;
}

async fn deallocate_in_transactions(general: &str) {
    let p = trust_pooler("pool_size = 1", general).await;
    let mut c = Raw::login(p.addr, "app", "app").await;
    for s in ["s1", "s2", "s3"] {
        round(
            &mut c,
            &[ext::parse(s, "select 7"), ext::sync()].concat(),
            1,
        )
        .await;
    }
    let got = round(&mut c, &queries(&["begin", "deallocate s1"]), 2).await;
    assert_eq!(tags(&got), "CZCZ");
    assert_eq!(last_status(&got), 'T', "behind BEGIN");
    let got = round(&mut c, &queries(&["select 1/0", "deallocate s2"]), 2).await;
    assert_eq!(errors(&got), ["22012", "25P02"]);
    assert_eq!(last_status(&got), 'E');
    let got = round(&mut c, &queries(&["deallocate s3"]), 1).await;
    assert_eq!(errors(&got), ["25P02"]);
    assert_eq!(last_status(&got), 'E');
    round(&mut c, &queries(&["rollback"]), 1).await;
    for (s, kept) in [("s1", false), ("s2", true), ("s3", true)] {
        let got = round(&mut c, &ext::run(s, &[]), 1).await;
        let want: &[&str] = if kept { &[] } else { &["26000"] };
        assert_eq!(errors(&got), want, "{s}");
    }
}

/// `DISCARD ALL` / `DEALLOCATE ALL` that Postgres refuses (inside a
/// transaction block, or in a failed transaction) leave the client's
/// statements as they were; one that runs forgets them, even inside a
/// transaction (`DEALLOCATE ALL` is not rolled back).
#[tokio::test]
async fn a_refused_discard_all_keeps_the_statements() {
    discard_all_in_transactions("").await;
}

/// Control: the same against Postgres' own statements.
#[tokio::test]
async fn control_discard_all_on_postgres() {
    discard_all_in_transactions("max_prepared_statements = 0").await;
}

async fn discard_all_in_transactions(general: &str) {
    let p = trust_pooler("pool_size = 1", general).await;
    let mut c = Raw::login(p.addr, "app", "app").await;
    let prepare = [ext::parse("s1", "select 7"), ext::sync()].concat();
    assert_eq!(tags(&round(&mut c, &prepare, 1).await), "1Z");
    let refused: [(&[&str], &[&str]); 4] = [
        (&["begin", "discard all"], &["25001"]),
        (
            &["begin", "select 1/0", "deallocate all"],
            &["22012", "25P02"],
        ),
        (&["begin", "select 1/0", "discard all"], &["22012", "25P02"]),
        (&["begin", "select 1/0"], &["22012"]),
    ];
    for (sql, want) in refused {
        let got = round(&mut c, &queries(sql), sql.len()).await;
        assert_eq!(errors(&got), want, "{sql:?}");
        if sql.len() == 2 {
            // Refused alone, the failure already known.
            let got = round(&mut c, &queries(&["discard all"]), 1).await;
            assert_eq!(errors(&got), ["25P02"], "{sql:?} then discard all");
        }
        round(&mut c, &queries(&["rollback"]), 1).await;
        let got = round(&mut c, &ext::run("s1", &[]), 1).await;
        assert_eq!(errors(&got), Vec::<String>::new(), "s1 after {sql:?}");
        assert_eq!(first_columns(&got), ["7"]);
    }
    // The same through the extended protocol, in a failed transaction.
    round(&mut c, &queries(&["begin", "select 1/0"]), 2).await;
    let extended = [
        ext::parse("", "deallocate all"),
        ext::bind("", &[]),
        ext::execute(),
        ext::sync(),
    ]
    .concat();
    let got = round(&mut c, &extended, 1).await;
    assert_eq!(errors(&got), ["25P02"]);
    round(&mut c, &queries(&["rollback"]), 1).await;
    let got = round(&mut c, &ext::run("s1", &[]), 1).await;
    assert_eq!(errors(&got), Vec::<String>::new(), "s1 after extended");
    let got = round(
        &mut c,
        &queries(&["begin", "deallocate all", "rollback"]),
        3,
    )
    .await;
    assert_eq!(errors(&got), Vec::<String>::new());
    let got = round(&mut c, &ext::run("s1", &[]), 1).await;
    assert_eq!(errors(&got), ["26000"], "DEALLOCATE ALL ran");
    assert_eq!(
        tags(&round(&mut c, &prepare, 1).await),
        "1Z",
        "the name is free"
    );
}

/// `DEALLOCATE ALL` run through the extended protocol (as pgjdbc,
/// tokio-postgres and psycopg's pipeline mode send every statement) drops
/// every statement on the server, as the simple-query form does: pgtarn
/// must prepare them again there, or the server's other clients, which
/// did nothing, get `26000 prepared statement does not exist`.
#[tokio::test]
async fn deallocate_all_through_the_extended_protocol_is_followed() {
    let p = trust_pooler("pool_size = 1", "").await;
    let a = p.connect().await;
    let b = p.connect().await;
    let sql = "select $1::int + 300";
    let (sa, sb) = (a.prepare(sql).await.unwrap(), b.prepare(sql).await.unwrap());
    for (c, s) in [(&a, &sa), (&b, &sb)] {
        assert_eq!(
            c.query_one(s, &[&1i32]).await.unwrap().get::<_, i32>(0),
            301
        );
    }
    a.execute("deallocate all", &[]).await.unwrap();
    let gone = a
        .query_one(&sa, &[&2i32])
        .await
        .map(|_| ())
        .map_err(|e| sqlstate(&e));
    assert_eq!(
        gone,
        Err(Some("26000".into())),
        "the client's own statement is gone"
    );
    let row = b.query_one(&sb, &[&2i32]).await;
    assert_eq!(
        row.map(|r| r.get::<_, i32>(0)).map_err(|e| sqlstate(&e)),
        Ok(302),
        "another client's statement survives"
    );
    let again = a.prepare(sql).await.unwrap();
    let row = a.query_one(&again, &[&3i32]).await;
    assert_eq!(
        row.map(|r| r.get::<_, i32>(0)).map_err(|e| sqlstate(&e)),
        Ok(303),
        "the client's statement prepared again works"
    );
}

/// `DEALLOCATE ALL` inside a multi-statement simple query drops every
/// statement on the server too: the server's other clients must not be
/// left with `26000 prepared statement does not exist`.
#[tokio::test]
async fn deallocate_all_inside_a_multi_statement_query_is_followed() {
    let p = trust_pooler("pool_size = 1", "").await;
    let a = p.connect().await;
    let b = p.connect().await;
    let s = b.prepare("select $1::int + 500").await.unwrap();
    assert_eq!(
        b.query_one(&s, &[&1i32]).await.unwrap().get::<_, i32>(0),
        501
    );
    a.batch_execute("select 1; deallocate all").await.unwrap();
    let row = b.query_one(&s, &[&2i32]).await;
    assert_eq!(
        row.map(|r| r.get::<_, i32>(0)).map_err(|e| sqlstate(&e)),
        Ok(502),
        "another client's statement survives"
    );
}

/// A SET in a statement that pgtarn answered the Parse of itself (its
/// query had been prepared before, here by another client) is followed
/// like any other: it reaches the client's settings, and never stays
/// behind on the server for the next client.
#[tokio::test]
async fn a_set_prepared_without_a_server_is_followed_too() {
    let p = trust_pooler("pool_size = 1", "").await;
    let set = "set search_path = pg_catalog";
    let mut a = Raw::login(p.addr, "app", "app").await;
    let r = round(&mut a, &[ext::parse("a", set), ext::sync()].concat(), 1).await;
    assert_eq!(tags(&r), "1Z");
    let mut b = Raw::login(p.addr, "app", "app").await;
    let r = round(&mut b, &[ext::parse("b", set), ext::sync()].concat(), 1).await;
    assert_eq!(tags(&r), "1Z");
    let r = round(&mut b, &ext::run("b", &[]), 1).await;
    assert_eq!(tags(&r), "2CZ");
    let show = [ext::parse("", "show search_path"), ext::run("", &[])].concat();
    let shown = first_columns(&round(&mut b, &show, 1).await);
    assert_eq!(shown, ["pg_catalog"], "b keeps its SET");
    let mut c = Raw::login(p.addr, "app", "app").await;
    assert_eq!(
        first_columns(&round(&mut c, &show, 1).await),
        ["\"$user\", public"],
        "b's SET stays with b, not with the server"
    );
}

/// Resident memory of this process (pgtarn runs in it), KiB.
fn rss_kib() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("statm");
    let pages: u64 = statm.split(' ').nth(1).unwrap().parse().unwrap();
    pages * 4
}

/// A statement that changes a setting is remembered (to follow the SET
/// when it is bound) only while the client has it: one closed again keeps
/// no memory. A client preparing and closing such statements under new
/// names (as drivers with a statement cache do) must not grow pgtarn.
#[tokio::test]
async fn closed_set_statements_keep_no_memory() {
    let p = trust_pooler("", "").await;
    let mut c = Raw::login(p.addr, "app", "app").await;
    let before = rss_kib();
    for i in 0..200 {
        // 1 MB names: what is kept of each shows in the process's memory.
        let name = format!("{i}{}", "n".repeat(1 << 20));
        let msgs = [
            ext::parse(&name, "set search_path = public"),
            ext::close(&name),
            ext::sync(),
        ]
        .concat();
        assert_eq!(tags(&round(&mut c, &msgs, 1).await), "13Z", "round {i}");
    }
    let grown = rss_kib().saturating_sub(before);
    assert!(grown < 64 * 1024, "RSS grew by {grown} KiB");
    c.query("select 1").await;
    assert_eq!(first_columns(&c.read_until(b'Z').await), ["1"]);
}

/// Puts the client's statement `s1` (`select * from {table}`) on one
/// server and leaves the client facing the other one, which never had
/// it, after `ddl` ran on a direct connection (so no server has reported
/// anything about it): returns the client and the replies to `then`
/// (ending in `syncs` ReadyForQuery), which uses `s1`.
async fn run_on_a_fresh_server_after(
    table: &str,
    ddl: &str,
    then: &[u8],
    syncs: usize,
) -> (Pooler, Raw, Vec<(u8, Bytes)>) {
    let (p, mut c, direct) = facing_a_fresh_server(table, "").await;
    direct.batch_execute(ddl).await.unwrap();
    let got = round(&mut c, then, syncs).await;
    (p, c, got)
}

/// A pooler (two servers, `general` settings) whose client has `s1`
/// (`select * from {table}`, a one-column table) prepared on one server
/// and faces the other one, which never had it; with a direct connection.
async fn facing_a_fresh_server(
    table: &str,
    general: &str,
) -> (Pooler, Raw, tokio_postgres::Client) {
    let p = trust_pooler("pool_size = 2", general).await;
    let (direct, conn) =
        tokio_postgres::connect(&PgServer::shared().app_conn_str(), tokio_postgres::NoTls)
            .await
            .unwrap();
    tokio::spawn(conn);
    direct
        .batch_execute(&format!(
            "drop table if exists {table}; create table {table} (a int); \
             insert into {table} values (1)"
        ))
        .await
        .unwrap();
    let login = || Raw::login(p.addr, "app", "app");
    let (mut c, mut d, mut e) = (login().await, login().await, login().await);
    let begin = queries(&["begin"]);
    let commit = queries(&["commit"]);
    // c prepares s1 on server A inside a transaction, so A stays c's while
    // d takes server B.
    round(&mut c, &begin, 1).await;
    let sql = format!("select * from {table}");
    let prep = [ext::parse("s1", &sql), ext::describe("s1"), ext::sync()].concat();
    assert_eq!(tags(&round(&mut c, &prep, 1).await), "1tTZ");
    round(&mut d, &begin, 1).await;
    // A goes to e; then B is the only idle server.
    round(&mut c, &commit, 1).await;
    round(&mut e, &begin, 1).await;
    round(&mut d, &commit, 1).await;
    (p, c, direct)
}

/// A statement parsed before DDL changed its result type, used on a server
/// that never had it before any server reported the change, fails as it
/// would on Postgres (0A000, with the routine drivers look for) instead of
/// returning rows of a shape the client never described; prepared again,
/// it has the new shape.
#[tokio::test]
async fn a_statement_prepared_afresh_after_ddl_fails_as_on_postgres() {
    let ddl = "alter table prep_fresh_a add column b int default 2";
    let (_p, mut c, got) =
        run_on_a_fresh_server_after("prep_fresh_a", ddl, &ext::run("s1", &[]), 1).await;
    assert_eq!(errors(&got), ["0A000"], "{}", tags(&got));
    let error = got.iter().find(|(t, _)| *t == b'E').unwrap();
    let fields = pgtarn::protocol::backend::error_fields(&error.1).unwrap();
    assert!(
        fields
            .message
            .contains("cached plan must not change result type")
    );
    assert!(error.1.windows(22).any(|w| w == b"RevalidateCachedQuery\0"));
    let again = [
        ext::close("s1"),
        ext::parse("s1", "select * from prep_fresh_a"),
        ext::describe("s1"),
        ext::run("s1", &[]),
    ]
    .concat();
    let got = round(&mut c, &again, 1).await;
    assert_eq!(tags(&got), "31tT2DCZ");
    let row = got.iter().find(|(t, _)| *t == b'D').unwrap();
    let cols = pgtarn::protocol::backend::data_row(&row.1).unwrap();
    assert_eq!(cols, [Some(&b"1"[..]), Some(&b"2"[..])]);
}

/// DDL that leaves the result type alone changes nothing for the client.
#[tokio::test]
async fn a_statement_prepared_afresh_after_harmless_ddl_just_runs() {
    let ddl = "create index on prep_fresh_b (a)";
    let (_p, _c, got) =
        run_on_a_fresh_server_after("prep_fresh_b", ddl, &ext::run("s1", &[]), 1).await;
    assert_eq!(tags(&got), "2DCZ");
    assert_eq!(first_columns(&got), ["1"]);
}

/// Inside a transaction block the same error fails the transaction, as
/// Postgres' own does: ReadyForQuery `E`, then 25P02 until it ends.
#[tokio::test]
async fn a_statement_prepared_afresh_after_ddl_fails_the_transaction() {
    let ddl = "alter table prep_fresh_c add column b int";
    let then = [queries(&["begin"]), ext::run("s1", &[])].concat();
    let (_p, mut c, got) = run_on_a_fresh_server_after("prep_fresh_c", ddl, &then, 2).await;
    assert_eq!(errors(&got), ["0A000"], "{}", tags(&got));
    assert_eq!(last_status(&got), 'E');
    let got = round(&mut c, &queries(&["select 1", "rollback"]), 2).await;
    assert_eq!(errors(&got), ["25P02"]);
    assert_eq!(last_status(&got), 'I');
}

/// Nor do `SET` statements whose Parse pgtarn refused (over the client's
/// limits): they are not the client's, and a client sending them under
/// ever new names must not grow pgtarn.
#[tokio::test]
async fn refused_set_statements_keep_no_memory() {
    let p = trust_pooler("", "max_client_prepared_statements = 2").await;
    let mut c = Raw::login(p.addr, "app", "app").await;
    let first = format!("0{}", "n".repeat(1 << 20));
    let before = rss_kib();
    for i in 0..200 {
        let name = format!("{i}{}", "n".repeat(1 << 20));
        let msgs = [ext::parse(&name, "set search_path = public"), ext::sync()].concat();
        let got = round(&mut c, &msgs, 1).await;
        match i {
            0 | 1 => assert_eq!(tags(&got), "1Z", "round {i}"),
            _ => assert_eq!(errors(&got), ["53400"], "round {i}"),
        }
    }
    let grown = rss_kib().saturating_sub(before);
    assert!(grown < 64 * 1024, "RSS grew by {grown} KiB");
    // The ones it has are still followed when bound.
    assert_eq!(tags(&round(&mut c, &ext::run(&first, &[]), 1).await), "2CZ");
    c.query("show search_path").await;
    assert_eq!(first_columns(&c.read_until(b'Z').await), ["public"]);
}

/// A statement the client prepared (and got ParseComplete for) right after
/// DDL changed its result type runs, even when a later Parse of the same
/// pipeline evicted the server's copy before its row shape came back
/// (`max_prepared_statements = 1`): on Postgres it just runs.
#[tokio::test]
async fn a_statement_prepared_after_ddl_runs_when_the_same_pipeline_evicted_it() {
    let p = trust_pooler("pool_size = 1", "max_prepared_statements = 1").await;
    let (direct, conn) =
        tokio_postgres::connect(&PgServer::shared().app_conn_str(), tokio_postgres::NoTls)
            .await
            .unwrap();
    tokio::spawn(conn);
    direct
        .batch_execute(
            "drop table if exists prep_evict_shape; create table prep_evict_shape (a int); \
             insert into prep_evict_shape values (1)",
        )
        .await
        .unwrap();
    let mut c = Raw::login(p.addr, "app", "app").await;
    let sql = "select * from prep_evict_shape";
    let prep = [ext::parse("s1", sql), ext::describe("s1"), ext::sync()].concat();
    assert_eq!(tags(&round(&mut c, &prep, 1).await), "1tTZ");
    direct
        .batch_execute("alter table prep_evict_shape add column b int default 2")
        .await
        .unwrap();
    // The server's copy is dropped; the client's statements too.
    round(&mut c, &queries(&["deallocate all"]), 1).await;
    // The query keeps the server attached, so s1 is prepared on it, then
    // s2 evicts it before s1's row shape is read.
    let pipeline = [
        queries(&["select 1"]),
        ext::parse("s1", sql),
        ext::parse("s2", "select 2"),
        ext::sync(),
    ]
    .concat();
    let got = round(&mut c, &pipeline, 2).await;
    assert_eq!(tags(&got), "TDCZ11Z");
    let got = round(&mut c, &ext::run("s1", &[]), 1).await;
    assert_eq!(errors(&got), Vec::<String>::new(), "{}", tags(&got));
    let row = got.iter().find(|(t, _)| *t == b'D').unwrap();
    let cols = pgtarn::protocol::backend::data_row(&row.1).unwrap();
    assert_eq!(cols, [Some(&b"1"[..]), Some(&b"2"[..])]);
    let got = round(&mut c, &ext::run("s2", &[]), 1).await;
    assert_eq!(errors(&got), Vec::<String>::new(), "{}", tags(&got));
    assert_eq!(first_columns(&got), ["2"]);
}

/// `query_timeout` bounds a Bind that waits for its statement to be
/// prepared afresh (here blocked on a lock) even when an earlier query
/// of the same pipeline has already completed.
#[tokio::test]
async fn query_timeout_cancels_a_fresh_prepare_behind_a_finished_query() {
    let table = "prep_fresh_timeout";
    let (_p, mut c, direct) = facing_a_fresh_server(table, "query_timeout = \"500ms\"").await;
    direct
        .batch_execute(&format!(
            "begin; lock table {table} in access exclusive mode"
        ))
        .await
        .unwrap();
    c.send(&[queries(&["select 1"]), ext::run("s1", &[])].concat())
        .await;
    let mut got = Vec::new();
    let replies = async {
        for _ in 0..2 {
            got.extend(c.read_until(b'Z').await);
        }
    };
    let timed = tokio::time::timeout(Duration::from_secs(5), replies).await;
    direct.batch_execute("rollback").await.unwrap();
    assert!(timed.is_ok(), "no reply within 5 s: {}", tags(&got));
    assert_eq!(errors(&got), ["57014"], "{}", tags(&got));
}

/// A client that leaves while its Bind waits for its statement's fresh
/// prepare (blocked on a lock) gives its server up at once, as it does
/// while any other message of its waits: the next client gets a server.
#[tokio::test]
async fn a_client_leaving_during_a_fresh_prepare_frees_its_server() {
    let table = "prep_fresh_leave";
    let (p, mut c, direct) = facing_a_fresh_server(table, "").await;
    direct
        .batch_execute(&format!(
            "begin; lock table {table} in access exclusive mode"
        ))
        .await
        .unwrap();
    c.send(&ext::run("s1", &[])).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(c);
    // One client takes the other server and keeps it.
    let mut e = Raw::login(p.addr, "app", "app").await;
    round(&mut e, &queries(&["begin"]), 1).await;
    let mut f = Raw::login(p.addr, "app", "app").await;
    f.query("select 1").await;
    let timed = tokio::time::timeout(Duration::from_secs(5), f.read_until(b'Z')).await;
    direct.batch_execute("rollback").await.unwrap();
    assert_eq!(first_columns(&timed.expect("a server within 5 s")), ["1"]);
}
