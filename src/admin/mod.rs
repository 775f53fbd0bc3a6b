//! The admin console: a virtual database (`pgtarn`, also `pgbouncer` so
//! that existing tooling works) that `admin_users` and `stats_users` reach
//! with psql, speaking the simple query protocol.
//!
//! `stats_users` may run the `SHOW` commands; `admin_users` may also run
//! `PAUSE`, `RESUME`, `RECONNECT`, `KILL`, `RELOAD`, `SET` and `SHUTDOWN`.

mod command;
pub mod result;
mod set;
mod show;

use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::AsyncReadExt;
use tracing::info;

use crate::Context;
use crate::config::Config;
use crate::frontend::auth::{self, Credentials};
use crate::frontend::error::ClientError;
use crate::frontend::session::client_gone;
use crate::net::Stream;
use crate::protocol::backend::TxStatus;
use crate::protocol::encode::{self, Severity};
use crate::protocol::frame::client_streamable;
use crate::protocol::sqlstate as code;
use crate::protocol::startup::StartupMessage;
use crate::protocol::{Item, Splitter};
use crate::shutdown::Shutdown;
use crate::stats::clients::{KillReason, Listed};
pub use command::Command;

/// What a console user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Every command.
    Admin,
    /// `SHOW` commands only.
    Stats,
}

/// The role `user` has in `config`, if any.
pub fn role(config: &Config, user: &str) -> Option<Role> {
    let g = &config.pgtarn;
    if g.admin_users.iter().any(|u| u == user) {
        Some(Role::Admin)
    } else if g.stats_users.iter().any(|u| u == user) {
        Some(Role::Stats)
    } else {
        None
    }
}

/// Answers console commands for a user [`login`] let in, until the client
/// leaves, pgtarn shuts down, or an admin ends the session with
/// `KILL_CLIENT` (it is `listed` in `SHOW CLIENTS`).
pub async fn serve(
    mut stream: Stream,
    mut buf: BytesMut,
    role: Role,
    ctx: Arc<Context>,
    mut shutdown: Shutdown,
    listed: Listed,
) -> Result<(), (Stream, ClientError)> {
    let mut splitter = Splitter::new(ctx.config().pgtarn.max_message_len, client_streamable);
    // An extended-protocol message was refused: the rest up to Sync is
    // skipped (one error per Sync, as Postgres answers).
    let mut skipping = false;
    loop {
        let mut out = BytesMut::new();
        loop {
            let item = match splitter.next(&mut buf) {
                Ok(Some(item)) => item,
                Ok(None) => break,
                Err(e) => return Err((stream, e.into())),
            };
            let Item::Frame(f) = item else {
                return Err((
                    stream,
                    ClientError::Protocol(crate::protocol::ProtocolError::Malformed(
                        "oversized admin message",
                    )),
                ));
            };
            match f.tag() {
                b'X' => return Ok(()),
                // Skipping to Sync: a query is discarded too, as Postgres does.
                b'Q' if skipping => {}
                b'Q' => {
                    let sql =
                        String::from_utf8_lossy(f.body().strip_suffix(b"\0").unwrap_or(f.body()));
                    // A command may wait (PAUSE, WAIT_CLOSE): the session
                    // ends if its client leaves or pgtarn shuts down. A
                    // KILL_CLIENT or shutdown already given wins over the
                    // next command.
                    tokio::select! {
                        biased;
                        _ = shutdown.wait() => return Err((stream, ClientError::Shutdown)),
                        _ = listed.killed(KillReason::Admin) => return Err((stream, ClientError::Killed)),
                        _ = run(&sql, role, &ctx, &mut out) => {}
                        _ = client_gone(&mut stream, &mut buf) => return Ok(()),
                    }
                    encode::ready_for_query(&mut out, TxStatus::Idle);
                }
                _ => {
                    // One error per extended-protocol exchange: the rest up
                    // to Sync is skipped, as Postgres skips it after an
                    // error.
                    if !skipping {
                        let msg = "the admin console supports only the simple query protocol";
                        encode::error_response(
                            &mut out,
                            Severity::Error,
                            code::FEATURE_NOT_SUPPORTED,
                            msg,
                            None,
                        );
                        skipping = true;
                    }
                    if f.tag() == b'S' {
                        encode::ready_for_query(&mut out, TxStatus::Idle);
                        skipping = false;
                    }
                }
            }
        }
        if !out.is_empty() && stream.send(&out).await.is_err() {
            return Ok(());
        }
        buf.reserve(4096);
        let read = tokio::select! {
            biased;
            _ = shutdown.wait() => return Err((stream, ClientError::Shutdown)),
            _ = listed.killed(KillReason::Admin) => return Err((stream, ClientError::Killed)),
            r = stream.read_buf(&mut buf) => r,
        };
        match read {
            Ok(0) | Err(_) => return Ok(()),
            Ok(_) => {}
        }
    }
}

/// Logs `startup`'s user in to the console: authenticates like any user,
/// then checks the console role. Users who are neither admin nor stats
/// users get 42501 after authenticating.
pub async fn login(
    stream: &mut Stream,
    buf: &mut BytesMut,
    startup: &StartupMessage,
    ctx: &Arc<Context>,
    peer: crate::net::Peer,
) -> Result<Role, ClientError> {
    let user = startup.user().unwrap_or("");
    let config = ctx.config();
    let conn = crate::auth::hba::Connection {
        addr: peer.addr().map(|a| a.ip()),
        tls: stream.is_tls(),
        database: startup.database().unwrap_or(user),
        user,
    };
    let method = ctx.auth_method(config.pgtarn.auth_type, &conn)?;
    let users = ctx.users();
    let found = users.get(user).cloned();
    let tls = ctx.client_tls().filter(|_| stream.is_tls());
    let creds = Credentials {
        user: found.as_deref(),
        mock_nonce: &ctx.mock_nonce,
        channel_binding: tls.as_ref().map(|t| &t.end_point_hash[..]),
    };
    let mut out = BytesMut::with_capacity(256);
    auth::authenticate(stream, buf, user, creds, method, &mut out).await?;
    let Some(role) = role(&config, user) else {
        return Err(ClientError::NotAdmin(user.to_owned()));
    };
    info!(%user, ?role, "admin console login");
    for (k, val) in [
        ("server_version", "15.0 (pgtarn)"),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
    ] {
        encode::parameter_status(&mut out, k, val);
    }
    encode::backend_key_data(
        &mut out,
        crate::protocol::startup::CancelKey { pid: 0, secret: 0 },
    );
    encode::ready_for_query(&mut out, TxStatus::Idle);
    stream.send(&out).await?;
    Ok(role)
}

/// Runs one console query (possibly several `;`-separated commands).
async fn run(sql: &str, role: Role, ctx: &Arc<Context>, out: &mut BytesMut) {
    // A quoted value may hold a `;` (`SET server_reset_query = 'RESET
    // ALL; DISCARD ALL'`).
    let commands: Vec<&str> = crate::frontend::settings::split_statements(sql)
        .into_iter()
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    if commands.is_empty() {
        encode::message(out, b'I', |_| {});
        return;
    }
    for text in commands {
        let result = match Command::parse(text) {
            Ok(cmd) if role == Role::Stats && !cmd.read_only() => Err(command::Refusal::new(
                code::INSUFFICIENT_PRIVILEGE,
                format!("admin access needed for {}", cmd.tag()),
                None,
            )),
            Ok(cmd) => cmd.execute(ctx, out).await,
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            encode::error_response(out, Severity::Error, e.code, &e.message, e.hint);
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::frontend::settings::split_statements as split_commands;

    #[test]
    fn commands_split_at_semicolons_outside_quotes() {
        assert_eq!(
            split_commands("SHOW POOLS; SHOW STATS"),
            ["SHOW POOLS", " SHOW STATS"]
        );
        assert_eq!(
            split_commands("SET server_reset_query = 'RESET ALL; DISCARD ALL'; SHOW CONFIG"),
            [
                "SET server_reset_query = 'RESET ALL; DISCARD ALL'",
                " SHOW CONFIG"
            ]
        );
        assert_eq!(split_commands("KILL \"a;b\""), ["KILL \"a;b\""]);
        assert_eq!(
            split_commands("SET k = 'it''s; fine'"),
            ["SET k = 'it''s; fine'"]
        );
        // An unclosed quote keeps the rest in one command (refused by the
        // parser), never a panic.
        assert_eq!(split_commands("SET k = 'a; b"), ["SET k = 'a; b"]);
        assert_eq!(split_commands(""), [""]);
    }
}
