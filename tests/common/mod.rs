//! Shared integration-test harness: throwaway PostgreSQL servers ([`pg`])
//! and small async helpers. Every test binary does `mod common;`.

#[allow(dead_code)]
pub mod certs;
#[allow(dead_code)]
pub mod faultproxy;
pub mod pg;
#[allow(dead_code)]
pub mod pooler;
#[allow(dead_code)]
pub mod process;
#[allow(dead_code)]
pub mod raw;

#[allow(unused_imports)]
pub use pg::{APP_DB, APP_PASSWORD, APP_USER, PgOptions, PgServer};

use std::future::Future;
use std::time::Duration;

/// Interval between two evaluations of a [`wait_until`] condition.
#[allow(dead_code)]
const WAIT_POLL: Duration = Duration::from_millis(20);

/// Polls `f` every 20 ms until it yields `true`; panics naming `what` if
/// that has not happened within `deadline`. Uses tokio time, so it also
/// works with a paused clock.
#[allow(dead_code)]
pub async fn wait_until<F, Fut>(what: &str, deadline: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let end = tokio::time::Instant::now() + deadline;
    loop {
        if f().await {
            return;
        }
        if tokio::time::Instant::now() >= end {
            panic!("timed out after {deadline:?} waiting until {what}");
        }
        tokio::time::sleep(WAIT_POLL).await;
    }
}

/// Creates (anew) login role `user` with password `{user}-secret` on the
/// shared Postgres, allowed to connect to `app`; returns a superuser
/// connection, to drop it afterwards.
#[allow(dead_code)]
pub async fn second_user(user: &str) -> tokio_postgres::Client {
    let su = PgServer::shared().superuser().await;
    su.batch_execute(&format!(
        "drop role if exists {user}; create role {user} login password '{user}-secret'; \
         grant connect on database app to {user}"
    ))
    .await
    .expect("create the second user");
    su
}

/// The first column of the first row a simple query returns, as text
/// (`"NULL"` for NULL); panics naming the query if it fails or returns no
/// row.
#[allow(dead_code)]
pub async fn one(client: &tokio_postgres::Client, sql: &str) -> String {
    let msgs = client.simple_query(sql).await.expect(sql);
    msgs.iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => {
                Some(r.get(0).unwrap_or("NULL").to_owned())
            }
            _ => None,
        })
        .expect("a row")
}
