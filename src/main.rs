//! The `pgtarn` binary: parses arguments, sets up logging and OS signals,
//! then runs the pooler.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use pgtarn::config::Config;
use tracing_subscriber::EnvFilter;

/// A PostgreSQL connection pooler.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// The configuration file to run with.
    #[arg(long, short, default_value = "config/pgtarn.toml")]
    config: PathBuf,
    /// Validate this configuration file and exit (non-zero if invalid).
    #[arg(long, value_name = "FILE")]
    check_config: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    if let Some(path) = args.check_config {
        return match Config::load(&path) {
            Ok(_) => {
                println!("{}: configuration is valid", path.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{}: {e}", path.display());
                ExitCode::FAILURE
            }
        };
    }
    let config = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{}: {e}", args.config.display());
            return ExitCode::FAILURE;
        }
    };
    match serve(config, args.config.clone()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pgtarn: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(config: Config, path: std::path::PathBuf) -> std::io::Result<()> {
    let workers = config.pgtarn.worker_threads();
    // One thread runs a current-thread runtime: no work stealing, no
    // cross-thread wake-ups, and ~10 % less CPU per transaction than a
    // one-worker multi-thread runtime.
    let mut runtime = match workers {
        1 => tokio::runtime::Builder::new_current_thread(),
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
    };
    runtime.enable_all().build()?.block_on(async {
        let (trigger, shutdown) = pgtarn::shutdown::channel();
        let server = pgtarn::Pgtarn::bind(config).await?;
        let ctx = server.context();
        *ctx.config_path.lock().unwrap_or_else(|p| p.into_inner()) = Some(path);
        tokio::spawn(reload_on_sighup(ctx.clone()));
        tokio::spawn(pause_on_sigusr(ctx.clone()));
        tokio::spawn(async move {
            let Some(mut signals) = ShutdownSignals::new() else {
                return;
            };
            match signals.next().await {
                Signal::Term => ctx.request_shutdown(),
                Signal::Int => ctx.request_fast_shutdown(),
            }
            trigger.trigger();
            // During a graceful drain, SIGINT (or SIGTERM again) makes it fast.
            signals.next().await;
            ctx.request_fast_shutdown();
        });
        server.run(shutdown).await
    })
}

/// Re-reads the configuration at every `SIGHUP`.
async fn reload_on_sighup(ctx: std::sync::Arc<pgtarn::Context>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        return;
    };
    while hup.recv().await.is_some() {
        tracing::info!("SIGHUP received: reloading the configuration");
        // `reload` logs the outcome.
        let _ = ctx.reload();
    }
}

/// `SIGUSR1` pauses every database and `SIGUSR2` resumes them, as
/// PgBouncer does (the console's `PAUSE` and `RESUME`).
async fn pause_on_sigusr(ctx: std::sync::Arc<pgtarn::Context>) {
    use tokio::signal::unix::{SignalKind, signal};
    let usr1 = signal(SignalKind::user_defined1());
    let usr2 = signal(SignalKind::user_defined2());
    let (Ok(mut usr1), Ok(mut usr2)) = (usr1, usr2) else {
        return;
    };
    loop {
        tokio::select! {
            Some(()) = usr1.recv() => {
                tracing::info!("SIGUSR1 received: pausing every database");
                ctx.registry.pause(None);
                // As `PAUSE`: idle servers close once none is in use.
                let ctx = ctx.clone();
                tokio::spawn(async move {
                    let limit = std::time::Duration::from_secs(60);
                    ctx.registry.wait_paused(None, limit).await
                });
            }
            Some(()) = usr2.recv() => {
                tracing::info!("SIGUSR2 received: resuming every database");
                ctx.registry.resume(None);
            }
            else => return,
        }
    }
}

/// The shutdown signals: `SIGTERM` drains, `SIGINT` is fast.
enum Signal {
    Term,
    Int,
}

/// The `SIGTERM` and `SIGINT` streams, registered once.
struct ShutdownSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    /// `None` if the handlers cannot be installed.
    fn new() -> Option<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate()).ok()?;
        let int = signal(SignalKind::interrupt()).ok()?;
        Some(ShutdownSignals { term, int })
    }

    /// The next shutdown signal, logged.
    async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = self.term.recv() => {
                tracing::info!("SIGTERM received: graceful shutdown (shutdown_timeout)");
                Signal::Term
            }
            _ = self.int.recv() => {
                tracing::info!("SIGINT received: fast shutdown");
                Signal::Int
            }
        }
    }
}
