//! Parsing and running console commands.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;

use super::result::{ResultSet, command_complete, notice};
use super::show;
use crate::Context;
use crate::protocol::sqlstate as code;

/// A parsed console command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `SHOW <what>`.
    Show(String),
    /// `PAUSE [db]`.
    Pause(Option<String>),
    /// `RESUME [db]`.
    Resume(Option<String>),
    /// `RECONNECT [db]`.
    Reconnect(Option<String>),
    /// `KILL db`.
    Kill(String),
    /// `KILL_CLIENT id`: one client, by its `SHOW CLIENTS` id.
    KillClient(u64),
    /// `DISABLE db`: refuse new clients of `db`.
    Disable(String),
    /// `ENABLE db`: admit them again.
    Enable(String),
    /// `WAIT_CLOSE [db]`: wait until no server must close.
    WaitClose(Option<String>),
    /// `RELOAD`.
    Reload,
    /// `SHUTDOWN` or `SHUTDOWN WAIT_FOR_SERVERS`: the graceful drain.
    Shutdown,
    /// `SHUTDOWN WAIT_FOR_CLIENTS`: stop accepting, exit once every
    /// client has left.
    ShutdownWaitForClients,
    /// `SET key = value`: change one `[pgtarn]` setting.
    Set(String, String),
}

/// Why a command was refused: the ErrorResponse to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// SQLSTATE.
    pub code: &'static str,
    /// Message.
    pub message: String,
    /// Hint.
    pub hint: Option<&'static str>,
}

impl Refusal {
    /// A refusal with these fields.
    pub fn new(code: &'static str, message: String, hint: Option<&'static str>) -> Refusal {
        Refusal {
            code,
            message,
            hint,
        }
    }
}

/// The commands, as `SHOW HELP` lists them.
pub const HELP: &str = "SHOW HELP|CONFIG|DATABASES|POOLS|CLIENTS|SERVERS|USERS|LISTS|VERSION|STATE\n\tSHOW STATS|STATS_TOTALS|STATS_AVERAGES|TOTALS\n\tRELOAD\n\tPAUSE [<db>]\n\tRESUME [<db>]\n\tDISABLE <db>\n\tENABLE <db>\n\tRECONNECT [<db>]\n\tKILL <db>\n\tKILL_CLIENT <id>\n\tWAIT_CLOSE [<db>]\n\tSHUTDOWN [WAIT_FOR_SERVERS|WAIT_FOR_CLIENTS]\n\tSET <key> = <value>";

const HINT: &str = "Commands: SHOW HELP|CONFIG|DATABASES|POOLS|CLIENTS|SERVERS|USERS|LISTS|VERSION|STATE|STATS; RELOAD; PAUSE [db]; RESUME [db]; DISABLE db; ENABLE db; RECONNECT [db]; KILL db; KILL_CLIENT id; WAIT_CLOSE [db]; SHUTDOWN [WAIT_FOR_SERVERS|WAIT_FOR_CLIENTS]; SET key = value.";

/// How long `PAUSE` waits for running transactions before giving up.
const PAUSE_LIMIT: Duration = Duration::from_secs(60);

fn invalid(text: &str) -> Refusal {
    Refusal::new(
        code::SYNTAX_ERROR,
        format!("invalid command '{text}', use SHOW HELP;"),
        Some(HINT),
    )
}

impl Command {
    /// Parses one command (case-insensitive keywords; database names as
    /// written, optionally double-quoted).
    pub fn parse(text: &str) -> Result<Command, Refusal> {
        let trimmed = text.trim_start();
        if let Some(verb) = trimmed.get(..4)
            && verb.eq_ignore_ascii_case("SET ")
        {
            let (key, value) = super::set::split(&trimmed[4..]).ok_or_else(|| invalid(text))?;
            return Ok(Command::Set(key, value));
        }
        let words: Vec<&str> = text.split_whitespace().collect();
        let arg = |i: usize| words.get(i).map(|w| w.trim_matches('"').to_owned());
        let verb = words
            .first()
            .map(|w| w.to_ascii_uppercase())
            .unwrap_or_default();
        let cmd = match (verb.as_str(), words.len()) {
            ("SHOW", 2) => Command::Show(words[1].to_ascii_uppercase()),
            ("PAUSE", 1 | 2) => Command::Pause(arg(1)),
            ("RESUME", 1 | 2) => Command::Resume(arg(1)),
            ("RECONNECT", 1 | 2) => Command::Reconnect(arg(1)),
            ("KILL", 2) => Command::Kill(arg(1).unwrap_or_default()),
            ("KILL_CLIENT", 2) => {
                Command::KillClient(client_id(words[1]).ok_or_else(|| invalid(text))?)
            }
            ("DISABLE", 2) => Command::Disable(arg(1).unwrap_or_default()),
            ("ENABLE", 2) => Command::Enable(arg(1).unwrap_or_default()),
            ("WAIT_CLOSE", 1 | 2) => Command::WaitClose(arg(1)),
            ("RELOAD", 1) => Command::Reload,
            ("SHUTDOWN", 1) => Command::Shutdown,
            ("SHUTDOWN", 2) => match words[1].to_ascii_uppercase().as_str() {
                "WAIT_FOR_SERVERS" => Command::Shutdown,
                "WAIT_FOR_CLIENTS" => Command::ShutdownWaitForClients,
                _ => return Err(invalid(text)),
            },
            _ => return Err(invalid(text)),
        };
        if let Command::Show(what) = &cmd
            && !SHOWABLE.contains(&what.as_str())
        {
            return Err(invalid(text));
        }
        Ok(cmd)
    }

    /// True for commands `stats_users` may run.
    pub fn read_only(&self) -> bool {
        matches!(self, Command::Show(_))
    }

    /// The command tag it answers with.
    pub fn tag(&self) -> &'static str {
        match self {
            Command::Show(_) => "SHOW",
            Command::Pause(_) => "PAUSE",
            Command::Resume(_) => "RESUME",
            Command::Reconnect(_) => "RECONNECT",
            Command::Kill(_) => "KILL",
            Command::KillClient(_) => "KILL_CLIENT",
            Command::Disable(_) => "DISABLE",
            Command::Enable(_) => "ENABLE",
            Command::WaitClose(_) => "WAIT_CLOSE",
            Command::Reload => "RELOAD",
            Command::Shutdown | Command::ShutdownWaitForClients => "SHUTDOWN",
            Command::Set(..) => "SET",
        }
    }

    /// Runs the command, appending its answer to `out`.
    pub async fn execute(&self, ctx: &Arc<Context>, out: &mut BytesMut) -> Result<(), Refusal> {
        match self {
            Command::Show(what) => return show_command(what, ctx, out),
            Command::Pause(db) => {
                known(ctx, db.as_deref())?;
                ctx.registry.pause(db.as_deref());
                let drained = ctx.registry.wait_paused(db.as_deref(), PAUSE_LIMIT).await;
                if !drained {
                    return Err(Refusal::new(code::OBJECT_NOT_IN_PREREQUISITE_STATE, "PAUSE: transactions still running after 60s; the pool stays paused, servers in use were not closed".into(), None));
                }
            }
            Command::Resume(db) => {
                known(ctx, db.as_deref())?;
                if !ctx.registry.resume(db.as_deref()) {
                    return Err(Refusal::new(
                        code::OBJECT_NOT_IN_PREREQUISITE_STATE,
                        "pooler is not paused/suspended".into(),
                        None,
                    ));
                }
            }
            Command::Reconnect(db) => {
                known(ctx, db.as_deref())?;
                ctx.registry.reconnect(db.as_deref());
            }
            Command::Kill(db) => {
                known(ctx, Some(db))?;
                ctx.registry.pause(Some(db));
                ctx.kill_clients(db);
                ctx.registry.reconnect(Some(db));
            }
            Command::KillClient(id) => {
                if !ctx.kill_client(*id) {
                    return Err(Refusal::new(
                        code::UNDEFINED_OBJECT,
                        format!("client {id} not found"),
                        Some("SHOW CLIENTS lists the clients' ids."),
                    ));
                }
            }
            Command::Disable(db) => {
                known(ctx, Some(db))?;
                ctx.registry.set_disabled(db, true);
            }
            Command::Enable(db) => {
                known(ctx, Some(db))?;
                ctx.registry.set_disabled(db, false);
            }
            Command::WaitClose(db) => {
                known(ctx, db.as_deref())?;
                ctx.registry.wait_closed(db.as_deref()).await;
            }
            Command::Reload => {
                if let Err(e) = ctx.reload() {
                    return Err(Refusal::new(
                        code::CONFIG_FILE_ERROR,
                        format!("RELOAD failed, the old configuration stays in force: {e}"),
                        None,
                    ));
                }
            }
            Command::Shutdown => ctx.request_shutdown(),
            Command::ShutdownWaitForClients => ctx.request_shutdown_after_clients(),
            Command::Set(key, value) => super::set::apply(ctx, key, value)?,
        }
        command_complete(out, self.tag());
        Ok(())
    }
}

const SHOWABLE: [&str; 14] = [
    "STATE",
    "HELP",
    "CONFIG",
    "DATABASES",
    "POOLS",
    "CLIENTS",
    "SERVERS",
    "USERS",
    "LISTS",
    "VERSION",
    "STATS",
    "STATS_TOTALS",
    "STATS_AVERAGES",
    "TOTALS",
];

/// A client id as `SHOW CLIENTS` shows it: decimal, or `0x` hex as in
/// its `ptr` column.
fn client_id(word: &str) -> Option<u64> {
    match word.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => word.parse().ok(),
    }
}

fn known(ctx: &Context, db: Option<&str>) -> Result<(), Refusal> {
    match db {
        Some(name) if !ctx.config().databases.contains_key(name) => Err(Refusal::new(
            code::INVALID_CATALOG_NAME,
            format!("no such database: {name}"),
            None,
        )),
        _ => Ok(()),
    }
}

fn show_command(what: &str, ctx: &Context, out: &mut BytesMut) -> Result<(), Refusal> {
    let rs: ResultSet = match what {
        "HELP" => {
            notice(out, "Console usage", HELP);
            command_complete(out, "SHOW");
            return Ok(());
        }
        "POOLS" => show::pools(ctx),
        "STATS" => show::stats(ctx),
        "TOTALS" => show::totals(ctx),
        "STATS_TOTALS" => show::stats_totals(ctx),
        "STATS_AVERAGES" => show::stats_averages(ctx),
        "LISTS" => show::lists(ctx),
        "CLIENTS" => show::clients(ctx),
        "SERVERS" => show::servers(ctx),
        "DATABASES" => show::databases(ctx),
        "CONFIG" => show::config(ctx),
        "USERS" => show::users(ctx),
        "STATE" => show::state(ctx),
        _ => show::version(),
    };
    rs.encode(out);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_case_insensitively() {
        assert_eq!(
            Command::parse("show pools"),
            Ok(Command::Show("POOLS".into()))
        );
        assert_eq!(
            Command::parse("PAUSE app"),
            Ok(Command::Pause(Some("app".into())))
        );
        assert_eq!(Command::parse("resume"), Ok(Command::Resume(None)));
        assert_eq!(
            Command::parse("SHOW lists"),
            Ok(Command::Show("LISTS".into()))
        );
        assert!(HELP.contains("|LISTS|") && HINT.contains("|LISTS|"));
        assert_eq!(
            Command::parse("kill \"app\""),
            Ok(Command::Kill("app".into()))
        );
        let e = Command::parse("SHOW FOO").unwrap_err();
        assert_eq!(e.code, "42601");
        assert!(e.message.contains("SHOW HELP"));
        assert!(Command::parse("DROP TABLE x").is_err());
        assert!(Command::parse("KILL").is_err());
        let wait = Command::parse("shutdown wait_for_clients");
        assert_eq!(wait, Ok(Command::ShutdownWaitForClients));
        let drain = Command::parse("SHUTDOWN WAIT_FOR_SERVERS");
        assert_eq!(drain, Ok(Command::Shutdown));
        assert!(Command::parse("SHUTDOWN NOW").is_err());
        assert_eq!(
            Command::parse("kill_client 12"),
            Ok(Command::KillClient(12))
        );
        assert_eq!(
            Command::parse("KILL_CLIENT 0x1f"),
            Ok(Command::KillClient(31))
        );
        assert!(Command::parse("KILL_CLIENT x").is_err());
        assert_eq!(
            Command::parse("disable app"),
            Ok(Command::Disable("app".into()))
        );
        assert!(Command::parse("ENABLE").is_err());
        assert_eq!(Command::parse("wait_close"), Ok(Command::WaitClose(None)));
        assert_eq!(
            Command::parse("show state"),
            Ok(Command::Show("STATE".into()))
        );
        assert!(HELP.contains("KILL_CLIENT") && HINT.contains("WAIT_CLOSE"));
    }
}
