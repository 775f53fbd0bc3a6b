//! Throwaway PostgreSQL clusters for integration tests.
//!
//! [`PgServer::start`] runs `initdb` into a fresh temporary directory and
//! starts `postgres` on a random loopback port; [`PgServer::shared`] is a
//! lazily started per-process instance for tests that need no special
//! options.
//!
//! Teardown is layered so that no server outlives the test process:
//! * `Drop` (and [`PgServer::stop`]) sends SIGQUIT (immediate shutdown), waits
//!   with a deadline, escalates to SIGKILL of the process group, then removes
//!   the temporary directory.
//! * Every server is recorded in a registry that an `atexit` hook drains, so
//!   the never-dropped shared instance is stopped and removed on normal exit.
//! * Every child is spawned from one dedicated, never-exiting thread with
//!   `PR_SET_PDEATHSIG = SIGKILL`, so the postmaster dies with the test process
//!   even when that is killed abruptly. Directories (and SysV shared-memory
//!   segments) left behind that way are swept by the next run (the owning
//!   PID is encoded in the directory name).
//!
//! When running as root, `initdb` and `postgres` run as the `postgres` OS user
//! (privileges are dropped in `pre_exec`).

use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::panic;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, Once, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tokio::runtime::Runtime;
use tokio_postgres::NoTls;

/// Login role created in every cluster.
#[allow(dead_code)]
pub const APP_USER: &str = "app";
/// Password of [`APP_USER`] (stored as SCRAM-SHA-256).
#[allow(dead_code)]
pub const APP_PASSWORD: &str = "app-secret";
/// Database created in every cluster, owned by [`APP_USER`].
#[allow(dead_code)]
pub const APP_DB: &str = "app";

/// How long a server may take to accept logins after being spawned.
const START_DEADLINE: Duration = Duration::from_secs(30);
/// How long an immediate shutdown may take before SIGKILL.
const STOP_DEADLINE: Duration = Duration::from_secs(10);
/// How long `initdb` may take (generous: many may run concurrently).
const INITDB_DEADLINE: Duration = Duration::from_secs(120);
/// Interval between readiness / exit polls.
const POLL: Duration = Duration::from_millis(20);
/// Fresh ports tried before giving up when the chosen port gets taken.
const PORT_ATTEMPTS: usize = 5;
/// Prefix of temporary directories: `<prefix><pid>-<random>`.
const DIR_PREFIX: &str = "pgtarn-pg-";
/// Log lines quoted in panic messages.
const LOG_TAIL_LINES: usize = 40;
/// Server log lines meaning "try again" (port taken, old processes alive).
const RETRYABLE_LOG_MARKERS: &[&str] = &[
    "Address already in use",
    "could not create any TCP/IP sockets",
    "pre-existing shared memory block",
    "lock file",
];
/// Environment variables that would change what the PG binaries do.
const SCRUBBED_ENV: &[&str] = &[
    "PGDATA",
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGUSER",
    "PGDATABASE",
    "PGPASSWORD",
    "PGPASSFILE",
    "PGOPTIONS",
    "PGSERVICE",
    "PGSERVICEFILE",
    "PGSYSCONFDIR",
    "PGTZ",
    "PGCLIENTENCODING",
];
/// Panic message when no server binaries can be found.
const BINARIES_NOT_FOUND: &str = "PostgreSQL server binaries not found: install them \
     (Debian: apt-get install -y postgresql) or set PG_BINDIR";
/// `pg_hba.conf` used when [`PgOptions::hba`] is `None`.
const DEFAULT_HBA: &str = "\
# pgtarn test harness default
local all all trust
host  all all 127.0.0.1/32 scram-sha-256
";

/// Options for [`PgServer::start`].
#[derive(Debug, Clone, Default)]
pub struct PgOptions {
    /// Lines appended to `postgresql.conf` after the harness defaults (so
    /// they win). Do not override `unix_socket_directories` (the harness
    /// connects through that socket); `port` is given on the command line.
    pub extra_conf: Vec<String>,
    /// Whole `pg_hba.conf` content; `None` means local trust for all plus
    /// `host all all 127.0.0.1/32 scram-sha-256`. Keep a `local` line that
    /// lets `postgres` in (trust or any password method): the harness checks
    /// readiness and creates `app` over the unix socket.
    pub hba: Option<String>,
}

/// A running throwaway PostgreSQL cluster; stopped and deleted on drop.
pub struct PgServer {
    /// TCP port on [`PgServer::host`].
    pub port: u16,
    /// Listen address, always `"127.0.0.1"`.
    pub host: &'static str,
    /// The cluster's data directory (inside a temporary directory).
    pub data_dir: PathBuf,
    /// Directory holding the server binaries (`postgres`, `psql`, ...).
    pub bin_dir: PathBuf,
    /// Directory of the server's unix socket (`.s.PGSQL.<port>`).
    pub socket_dir: PathBuf,
    /// Server log (stdout and stderr of the postmaster, appended across restarts).
    pub log_path: PathBuf,
    /// Password of the `postgres` superuser (random per cluster).
    pub superuser_password: String,
    /// OS user the server runs as when the tests run as root.
    owner: Option<Owner>,
    /// The postmaster, while running.
    child: Option<Child>,
    /// Key of this server in the exit-cleanup registry.
    registry_id: u64,
    /// The temporary directory; dropped (deleted) after the server stops.
    _root: TempDir,
}

/// Why one launch attempt failed.
enum Failure {
    /// Worth another attempt (port taken, previous processes still exiting).
    Retry(String),
    /// Not worth retrying; the message includes the server log tail.
    Fatal(String),
}

/// Why the server did not become ready.
enum NotReady {
    /// The postmaster exited.
    Exited(String),
    /// The deadline passed (or the server could not be observed).
    TimedOut(String),
}

impl PgServer {
    /// Starts a fresh throwaway cluster: `initdb` into a temporary directory,
    /// a random free loopback port, SCRAM passwords, `fsync = off`,
    /// `max_connections = 200` unless overridden; waits until it accepts
    /// logins and creates role `app` / `app-secret` and database `app`.
    /// Panics (with the server log tail) if that fails.
    pub fn start(opts: PgOptions) -> PgServer {
        let mut server = PgServer::prepare(find_bin_dir());
        server.init_cluster(&opts);
        server.launch_on_free_port();
        server.create_app_role();
        server
    }

    /// The process-wide shared instance (default options), started on first
    /// use and stopped/removed at process exit.
    #[allow(dead_code)]
    pub fn shared() -> &'static PgServer {
        static SHARED: OnceLock<Result<PgServer, String>> = OnceLock::new();
        let started = SHARED.get_or_init(|| {
            panic::catch_unwind(|| PgServer::start(PgOptions::default())).map_err(panic_text)
        });
        match started {
            Ok(server) => server,
            Err(why) => panic!("the shared PostgreSQL server failed to start: {why}"),
        }
    }

    /// tokio-postgres connection string over TCP for `user`/`password` to `db`.
    #[allow(dead_code)]
    pub fn conn_str(&self, user: &str, password: &str, db: &str) -> String {
        format!(
            "host={} port={} user={} password={} dbname={}",
            self.host,
            self.port,
            quote(user),
            quote(password),
            quote(db)
        )
    }

    /// Connection string as superuser `postgres` (with password) to `db`.
    #[allow(dead_code)]
    pub fn superuser_conn_str(&self, db: &str) -> String {
        self.conn_str("postgres", &self.superuser_password, db)
    }

    /// Connection string as `app`/`app-secret` to database `app`.
    #[allow(dead_code)]
    pub fn app_conn_str(&self) -> String {
        self.conn_str(APP_USER, APP_PASSWORD, APP_DB)
    }

    /// Opens a TCP connection as superuser to database `postgres`; the
    /// connection task is spawned on the current tokio runtime.
    #[allow(dead_code)]
    pub async fn superuser(&self) -> tokio_postgres::Client {
        connect(&self.superuser_conn_str("postgres")).await
    }

    /// Path of a binary (e.g. `psql`, `pgbench`) from the server's bindir.
    #[allow(dead_code)]
    pub fn bin(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }

    /// PID of the running postmaster, if any.
    #[allow(dead_code)]
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Stops the server with an immediate shutdown (SIGQUIT), escalating to
    /// SIGKILL after a deadline. Does nothing if it is not running.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = child_pid(&child);
        signal(pid, libc::SIGQUIT);
        if wait_with_deadline(&mut child, STOP_DEADLINE).is_none() {
            signal(-pid, libc::SIGKILL);
            let _ = child.wait();
        }
        registry_set_pid(self.registry_id, None);
    }

    /// Simulates a crash: SIGKILL to the postmaster and all its backends
    /// (they share a process group). Does nothing if it is not running.
    #[allow(dead_code)]
    pub fn kill(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        signal(-child_pid(&child), libc::SIGKILL);
        let _ = child.wait();
        registry_set_pid(self.registry_id, None);
    }

    /// Kills the server (as [`PgServer::kill`], if running) and starts it
    /// again on the same port and data directory (crash recovery runs);
    /// returns once it accepts logins.
    #[allow(dead_code)]
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            match self.launch_once() {
                Ok(()) => return,
                Err(Failure::Retry(_)) if Instant::now() < deadline => thread::sleep(POLL),
                Err(Failure::Retry(why) | Failure::Fatal(why)) => panic!("restart failed: {why}"),
            }
        }
    }

    /// Creates the temporary directory and the (not yet running) server value,
    /// so that `Drop` cleans up if a later step panics.
    fn prepare(bin_dir: PathBuf) -> PgServer {
        let owner = server_owner();
        let root = make_root_dir(owner);
        let socket_dir = root.path().to_path_buf();
        let data_dir = socket_dir.join("data");
        PgServer {
            port: 0,
            host: "127.0.0.1",
            log_path: data_dir.join("server.log"),
            registry_id: registry_add(&socket_dir),
            data_dir,
            bin_dir,
            socket_dir,
            superuser_password: random_password(),
            owner,
            child: None,
            _root: root,
        }
    }

    /// Runs `initdb` and writes the configuration files.
    fn init_cluster(&self, opts: &PgOptions) {
        self.run_initdb();
        let conf = harness_conf(&self.socket_dir, &opts.extra_conf);
        append_file(&self.data_dir.join("postgresql.conf"), &conf);
        let hba = opts.hba.as_deref().unwrap_or(DEFAULT_HBA);
        write_file(&self.data_dir.join("pg_hba.conf"), hba);
    }

    /// Runs `initdb` (superuser `postgres` with a password file, no sync).
    fn run_initdb(&self) {
        let pwfile = self.socket_dir.join("pwfile");
        write_file(&pwfile, &format!("{}\n", self.superuser_password));
        chown_to(&pwfile, self.owner);
        let log_path = self.socket_dir.join("initdb.log");
        let mut cmd = pg_command(&self.bin("initdb"), &self.socket_dir, &log_path);
        cmd.arg("-D")
            .arg(&self.data_dir)
            .arg("--pwfile")
            .arg(&pwfile);
        cmd.args(["-U", "postgres", "-N", "-E", "UTF8", "--locale=C"]);
        cmd.args(["--auth-host=scram-sha-256", "--auth-local=trust"]);
        let status = run_to_end(cmd, self.owner, INITDB_DEADLINE);
        let _ = fs::remove_file(&pwfile);
        if !status.success() {
            let log = log_tail(&log_path, 0);
            panic!(
                "initdb failed ({status}) in {}:\n{log}",
                self.data_dir.display()
            );
        }
    }

    /// Launches on fresh random ports until one attempt succeeds.
    fn launch_on_free_port(&mut self) {
        let mut last = String::new();
        for _ in 0..PORT_ATTEMPTS {
            self.port = free_port();
            match self.launch_once() {
                Ok(()) => return,
                Err(Failure::Retry(why)) => last = why,
                Err(Failure::Fatal(why)) => panic!("{why}"),
            }
        }
        panic!("PostgreSQL failed to start after {PORT_ATTEMPTS} ports; last attempt: {last}");
    }

    /// Spawns the postmaster on `self.port` and waits until it is ready.
    fn launch_once(&mut self) -> Result<(), Failure> {
        let log_offset = fs::metadata(&self.log_path).map_or(0, |m| m.len());
        if let Err(e) = self.spawn_postmaster() {
            return Err(Failure::Fatal(format!("cannot run postgres: {e}")));
        }
        let not_ready = match self.wait_ready() {
            Ok(()) => return Ok(()),
            Err(not_ready) => not_ready,
        };
        self.kill();
        Err(self.classify(not_ready, log_offset))
    }

    /// Starts `postgres -D <data> -p <port>` with output to the log file.
    fn spawn_postmaster(&mut self) -> io::Result<()> {
        let mut cmd = pg_command(&self.bin("postgres"), &self.socket_dir, &self.log_path);
        cmd.arg("-D").arg(&self.data_dir);
        cmd.arg("-p").arg(self.port.to_string());
        let child = spawn_child(cmd, self.owner)?;
        registry_set_pid(self.registry_id, Some(child_pid(&child)));
        self.child = Some(child);
        Ok(())
    }

    /// Polls a real login over the unix socket (which only our server can own)
    /// until it succeeds, the postmaster exits, or the deadline passes; then
    /// checks that the TCP port accepts connections.
    fn wait_ready(&mut self) -> Result<(), NotReady> {
        let cfg = self.socket_config("postgres");
        let child = self.child.as_mut().expect("postmaster spawned");
        on_runtime(|rt| poll_login(rt, &cfg, child))?;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .map(drop)
            .map_err(|e| {
                NotReady::TimedOut(format!("ready on the unix socket, not on {addr}: {e}"))
            })
    }

    /// Turns a failed start into a retry/fatal verdict with the log tail.
    fn classify(&self, not_ready: NotReady, log_offset: u64) -> Failure {
        let log = log_tail(&self.log_path, log_offset);
        let (exited, why) = match not_ready {
            NotReady::Exited(why) => (true, why),
            NotReady::TimedOut(why) => (false, why),
        };
        let text = format!(
            "PostgreSQL on port {} failed to start: {why}\n--- tail of {} ---\n{log}",
            self.port,
            self.log_path.display()
        );
        let retry = exited && RETRYABLE_LOG_MARKERS.iter().any(|m| log.contains(m));
        if retry {
            Failure::Retry(text)
        } else {
            Failure::Fatal(text)
        }
    }

    /// Creates role `app` (LOGIN, password `app-secret`) and database `app`.
    fn create_app_role(&self) {
        let cfg = self.socket_config("postgres");
        let result = on_runtime(|rt| rt.block_on(create_app_objects(&cfg)));
        if let Err(e) = result {
            panic!("creating role/database `app` failed: {e}");
        }
    }

    /// tokio-postgres config for the unix socket as superuser to `db`.
    fn socket_config(&self, db: &str) -> tokio_postgres::Config {
        let mut cfg = tokio_postgres::Config::new();
        cfg.host_path(&self.socket_dir).port(self.port).dbname(db);
        cfg.user("postgres").password(&self.superuser_password);
        cfg.connect_timeout(Duration::from_secs(5));
        cfg
    }
}

impl Drop for PgServer {
    /// Stops the server; the temporary directory is deleted afterwards.
    fn drop(&mut self) {
        self.stop();
        release_shared_memory(&self.data_dir);
        registry_remove(self.registry_id);
    }
}

/// Connects with `conn_str` and spawns the connection task.
async fn connect(conn_str: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(conn_str, NoTls)
        .await
        .unwrap_or_else(|e| panic!("connecting with `{conn_str}` failed: {e}"));
    tokio::spawn(connection);
    client
}

/// Logs in and runs `select 1` once.
async fn probe_login(cfg: &tokio_postgres::Config) -> Result<(), tokio_postgres::Error> {
    let (client, connection) = cfg.connect(NoTls).await?;
    let connection = tokio::spawn(connection);
    let result = client.simple_query("select 1").await.map(drop);
    drop(client);
    let _ = connection.await;
    result
}

/// Creates the `app` role and database (separately: CREATE DATABASE cannot
/// run inside a multi-statement string).
async fn create_app_objects(cfg: &tokio_postgres::Config) -> Result<(), tokio_postgres::Error> {
    let (client, connection) = cfg.connect(NoTls).await?;
    let connection = tokio::spawn(connection);
    let role = format!("CREATE ROLE {APP_USER} LOGIN PASSWORD '{APP_PASSWORD}'");
    client.batch_execute(&role).await?;
    let db = format!("CREATE DATABASE {APP_DB} OWNER {APP_USER}");
    client.batch_execute(&db).await?;
    drop(client);
    let _ = connection.await;
    Ok(())
}

/// Polls [`probe_login`] until success, postmaster exit or the deadline.
fn poll_login(
    rt: &Runtime,
    cfg: &tokio_postgres::Config,
    child: &mut Child,
) -> Result<(), NotReady> {
    let deadline = Instant::now() + START_DEADLINE;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                return Err(NotReady::Exited(format!("postgres exited ({status})")));
            }
            Ok(None) => {}
            Err(e) => return Err(NotReady::TimedOut(format!("cannot observe postgres: {e}"))),
        }
        match rt.block_on(probe_login(cfg)) {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                return Err(NotReady::TimedOut(format!(
                    "no login within {START_DEADLINE:?}: {e}"
                )));
            }
            Err(_) => thread::sleep(POLL),
        }
    }
}

/// Runs `f` with a fresh current-thread runtime on a helper thread (callers
/// may themselves be inside a tokio runtime, where `block_on` would panic).
fn on_runtime<T: Send>(f: impl FnOnce(&Runtime) -> T + Send) -> T {
    thread::scope(|scope| {
        let worker = scope.spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("building a tokio runtime");
            f(&rt)
        });
        worker
            .join()
            .unwrap_or_else(|payload| panic::resume_unwind(payload))
    })
}

/// The directory with `initdb` and `postgres`: `$PG_BINDIR`, else
/// `pg_config --bindir` (if it has the server), else the newest
/// `/usr/lib/postgresql/*/bin`. Panics if none is found.
pub fn find_bin_dir() -> PathBuf {
    static BIN_DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    let found = BIN_DIR.get_or_init(|| {
        bin_dir_from_env()
            .or_else(bin_dir_from_pg_config)
            .or_else(newest_debian_bin_dir)
    });
    found
        .clone()
        .unwrap_or_else(|| panic!("{BINARIES_NOT_FOUND}"))
}

/// `$PG_BINDIR`, which must contain the server binaries if set.
fn bin_dir_from_env() -> Option<PathBuf> {
    let dir = PathBuf::from(std::env::var_os("PG_BINDIR").filter(|v| !v.is_empty())?);
    assert!(
        has_server(&dir),
        "PG_BINDIR={} has no initdb/postgres. {BINARIES_NOT_FOUND}",
        dir.display()
    );
    Some(dir)
}

/// `pg_config --bindir`, if that directory has the server binaries.
fn bin_dir_from_pg_config() -> Option<PathBuf> {
    let out = Command::new("pg_config").arg("--bindir").output().ok()?;
    let dir = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    (out.status.success() && has_server(&dir)).then_some(dir)
}

/// The highest-versioned `/usr/lib/postgresql/<version>/bin` with a server.
fn newest_debian_bin_dir() -> Option<PathBuf> {
    let entries = fs::read_dir("/usr/lib/postgresql").ok()?;
    let mut dirs: Vec<(Vec<u32>, PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            Some((
                version_key(&e.file_name().to_string_lossy())?,
                e.path().join("bin"),
            ))
        })
        .filter(|(_, dir)| has_server(dir))
        .collect();
    dirs.sort();
    dirs.pop().map(|(_, dir)| dir)
}

/// `"15"` -> `[15]`, `"9.6"` -> `[9, 6]`; `None` for other names.
fn version_key(name: &str) -> Option<Vec<u32>> {
    name.split('.').map(|part| part.parse().ok()).collect()
}

/// Whether `dir` holds both `initdb` and `postgres`.
fn has_server(dir: &Path) -> bool {
    dir.join("initdb").is_file() && dir.join("postgres").is_file()
}

/// Uid/gid the server runs as (when the tests run as root).
#[derive(Clone, Copy, Debug)]
struct Owner {
    /// User id of the `postgres` OS user.
    uid: libc::uid_t,
    /// Primary group id of the `postgres` OS user.
    gid: libc::gid_t,
}

/// `Some(postgres user)` when running as root (PG refuses to run as root).
fn server_owner() -> Option<Owner> {
    static OWNER: OnceLock<Option<Owner>> = OnceLock::new();
    *OWNER.get_or_init(|| {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return None;
        }
        // SAFETY: the name is NUL-terminated; the result is read at once,
        // and this runs once (getpwnam is not reentrant).
        let pw = unsafe { libc::getpwnam(c"postgres".as_ptr()) };
        assert!(
            !pw.is_null(),
            "running as root, but there is no `postgres` OS user to run the server as"
        );
        // SAFETY: pw is non-null and points to getpwnam's static passwd.
        Some(unsafe {
            Owner {
                uid: (*pw).pw_uid,
                gid: (*pw).pw_gid,
            }
        })
    })
}

/// A command for a PG binary: fixed cwd, C locale, no PG* environment, stdin
/// from /dev/null and stdout/stderr appended to `log`.
fn pg_command(program: &Path, cwd: &Path, log: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.current_dir(cwd).env("LC_ALL", "C").env("LANG", "C");
    for var in SCRUBBED_ENV {
        cmd.env_remove(var);
    }
    let file = OpenOptions::new().create(true).append(true).open(log);
    let file = file.unwrap_or_else(|e| panic!("opening {}: {e}", log.display()));
    let file_too = file.try_clone().expect("duplicating a log file handle");
    cmd.stdin(Stdio::null()).stdout(file).stderr(file_too);
    cmd
}

/// Spawns `cmd` and waits for it with a deadline (SIGKILL and panic after).
fn run_to_end(cmd: Command, owner: Option<Owner>, deadline: Duration) -> ExitStatus {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let mut child = spawn_child(cmd, owner).unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    if let Some(status) = wait_with_deadline(&mut child, deadline) {
        return status;
    }
    signal(-child_pid(&child), libc::SIGKILL);
    let _ = child.wait();
    panic!("{program} did not finish within {deadline:?}");
}

/// Polls `child` until it exits (`Some(status)`) or `deadline` passes (`None`).
fn wait_with_deadline(child: &mut Child, deadline: Duration) -> Option<ExitStatus> {
    let end = Instant::now() + deadline;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < end => thread::sleep(POLL),
            Ok(None) | Err(_) => return None,
        }
    }
}

/// A job for the spawner thread.
type SpawnJob = Box<dyn FnOnce() + Send>;

/// Spawns `cmd` in its own process group, as `owner` if given, with
/// `PR_SET_PDEATHSIG = SIGKILL`. The fork happens on the spawner thread,
/// which never exits, so the death signal fires only when the test process
/// dies (it fires when the *thread* that forked the child exits).
fn spawn_child(mut cmd: Command, owner: Option<Owner>) -> io::Result<Child> {
    // SAFETY: getpid has no preconditions.
    let test_pid = unsafe { libc::getpid() };
    // SAFETY: the hook only makes async-signal-safe syscalls, no allocation.
    unsafe { cmd.pre_exec(move || child_setup(owner, test_pid)) };
    cmd.process_group(0);
    let (reply_tx, reply_rx) = mpsc::channel();
    let job: SpawnJob = Box::new(move || drop(reply_tx.send(cmd.spawn())));
    spawner().send(job).expect("the spawner thread is gone");
    reply_rx.recv().expect("the spawner thread dropped a job")
}

/// The queue of the forever-living spawner thread.
fn spawner() -> &'static mpsc::Sender<SpawnJob> {
    static SPAWNER: OnceLock<mpsc::Sender<SpawnJob>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnJob>();
        thread::Builder::new()
            .name("pg-spawner".into())
            .spawn(move || rx.into_iter().for_each(|job| job()))
            .expect("spawning the pg-spawner thread");
        tx
    })
}

/// Runs in the forked child before exec: drop privileges, then set the
/// parent-death signal (changing credentials would clear it), then bail out
/// if the test process already died.
fn child_setup(owner: Option<Owner>, test_pid: libc::pid_t) -> io::Result<()> {
    if let Some(owner) = owner {
        drop_privileges(owner)?;
    }
    // SAFETY: plain syscalls.
    unsafe {
        check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL))?;
        if libc::getppid() != test_pid {
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
    }
    Ok(())
}

/// Switches to `owner` with no supplementary groups.
fn drop_privileges(owner: Owner) -> io::Result<()> {
    // SAFETY: plain syscalls.
    unsafe {
        check(libc::setgroups(0, std::ptr::null()))?;
        check(libc::setgid(owner.gid))?;
        check(libc::setuid(owner.uid))?;
    }
    Ok(())
}

/// Maps a `-1` syscall result to the current OS error.
fn check(ret: libc::c_int) -> io::Result<()> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The PID of `child` as a `pid_t`.
fn child_pid(child: &Child) -> libc::pid_t {
    libc::pid_t::try_from(child.id()).expect("pid fits in pid_t")
}

/// Sends `sig` to `pid` (a negative value addresses a process group).
fn signal(pid: libc::pid_t, sig: libc::c_int) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(pid, sig) };
}

/// A free loopback port (bound and released; may be taken again by the time
/// postgres binds it, which the caller handles by retrying).
fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("binding 127.0.0.1:0");
    listener.local_addr().expect("local_addr").port()
}

/// 24 random hex characters from `/dev/urandom`.
fn random_password() -> String {
    let mut bytes = [0u8; 12];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("reading /dev/urandom");
    bytes.iter().fold(String::new(), |mut hex, b| {
        let _ = write!(hex, "{b:02x}");
        hex
    })
}

/// Quotes a connection-string value.
fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Harness settings for `postgresql.conf`, then `extra` (later lines win).
fn harness_conf(socket_dir: &Path, extra: &[String]) -> String {
    let socket_dir = socket_dir.display().to_string().replace('\'', "''");
    let mut conf = format!(
        "\n# pgtarn test harness\n\
         listen_addresses = '127.0.0.1'\n\
         unix_socket_directories = '{socket_dir}'\n\
         password_encryption = 'scram-sha-256'\n\
         fsync = off\n\
         max_connections = 200\n"
    );
    for line in extra {
        conf.push_str(line);
        conf.push('\n');
    }
    conf
}

/// Appends `text` to `path` (panics on error).
fn append_file(path: &Path, text: &str) {
    let result = OpenOptions::new().append(true).open(path);
    let result = result.and_then(|mut f| io::Write::write_all(&mut f, text.as_bytes()));
    result.unwrap_or_else(|e| panic!("appending to {}: {e}", path.display()));
}

/// Writes `text` to `path` (panics on error).
fn write_file(path: &Path, text: &str) {
    fs::write(path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

/// Gives `path` to `owner`, if any.
fn chown_to(path: &Path, owner: Option<Owner>) {
    if let Some(o) = owner {
        let result = std::os::unix::fs::chown(path, Some(o.uid), Some(o.gid));
        result.unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
    }
}

/// The last [`LOG_TAIL_LINES`] lines of `path` written after byte `offset`.
fn log_tail(path: &Path, offset: u64) -> String {
    let mut text = String::new();
    let read = File::open(path).and_then(|mut f| {
        f.seek(SeekFrom::Start(offset))?;
        let mut bytes = Vec::new();
        f.read_to_end(&mut bytes)?;
        text = String::from_utf8_lossy(&bytes).into_owned();
        Ok(())
    });
    if let Err(e) = read {
        return format!("(cannot read {}: {e})", path.display());
    }
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
}

/// The message of a caught panic.
fn panic_text(payload: Box<dyn std::any::Any + Send>) -> String {
    let text = payload.downcast_ref::<&str>().map(ToString::to_string);
    text.or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(non-string panic)".into())
}

/// Creates `<tmp>/pgtarn-pg-<pid>-XXXX` owned by `owner`, after sweeping
/// directories left by dead test processes.
fn make_root_dir(owner: Option<Owner>) -> TempDir {
    static SWEEP: Once = Once::new();
    let base = temp_base(owner);
    SWEEP.call_once(|| sweep_stale_dirs(&base));
    let prefix = format!("{DIR_PREFIX}{}-", std::process::id());
    let dir = tempfile::Builder::new().prefix(&prefix).tempdir_in(&base);
    let dir = dir.unwrap_or_else(|e| panic!("creating a temp dir in {}: {e}", base.display()));
    chown_to(dir.path(), owner);
    // Unix socket paths are limited to ~107 bytes.
    let socket_len = dir.path().join(".s.PGSQL.65535.lock").as_os_str().len();
    assert!(
        socket_len < 100,
        "temp dir path too long for a unix socket: {}",
        dir.path().display()
    );
    dir
}

/// `$TMPDIR` (or `/tmp`); when the server runs as another user, falls back
/// to `/tmp` unless every ancestor of `$TMPDIR` is world-traversable.
fn temp_base(owner: Option<Owner>) -> PathBuf {
    let base = std::env::temp_dir();
    let traversable = |p: &Path| fs::metadata(p).is_ok_and(|m| m.permissions().mode() & 0o001 != 0);
    if owner.is_none() || base.ancestors().all(traversable) {
        base
    } else {
        PathBuf::from("/tmp")
    }
}

/// Removes `pgtarn-pg-<pid>-*` directories whose process no longer exists.
fn sweep_stale_dirs(base: &Path) {
    let Ok(entries) = fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let pid = name
            .to_str()
            .and_then(|n| n.strip_prefix(DIR_PREFIX))
            .and_then(|rest| rest.split('-').next());
        match pid.and_then(|p| p.parse::<libc::pid_t>().ok()) {
            Some(pid) if !process_exists(pid) => {
                release_shared_memory(&entry.path().join("data"));
                let _ = fs::remove_dir_all(entry.path());
            }
            _ => {}
        }
    }
}

/// Removes the small SysV shared-memory segment of a cluster whose
/// postmaster was killed (a clean shutdown removes it along with
/// `postmaster.pid`, whose 7th line is `<key> <shmid>`). Only an unattached
/// segment with the recorded key is removed.
fn release_shared_memory(data_dir: &Path) {
    let Ok(pid_file) = fs::read_to_string(data_dir.join("postmaster.pid")) else {
        return;
    };
    let ids: Vec<i64> = pid_file.lines().nth(6).map_or_else(Vec::new, |line| {
        line.split_whitespace()
            .filter_map(|n| n.parse().ok())
            .collect()
    });
    let [key, shmid] = ids[..] else {
        return;
    };
    let (Ok(key), Ok(shmid)) = (libc::key_t::try_from(key), libc::c_int::try_from(shmid)) else {
        return;
    };
    // SAFETY: shmget only looks the key up.
    if unsafe { libc::shmget(key, 0, 0) } != shmid {
        return;
    }
    // Killed backends may take a moment to detach.
    let end = Instant::now() + Duration::from_secs(2);
    while shm_attached(shmid) == Some(true) && Instant::now() < end {
        thread::sleep(POLL);
    }
    if shm_attached(shmid) == Some(false) {
        // SAFETY: IPC_RMID takes no buffer.
        unsafe { libc::shmctl(shmid, libc::IPC_RMID, std::ptr::null_mut()) };
    }
}

/// Whether SysV segment `shmid` has attached processes (`None`: gone).
fn shm_attached(shmid: libc::c_int) -> Option<bool> {
    // SAFETY: IPC_STAT writes into a zeroed shmid_ds we own.
    unsafe {
        let mut stat: libc::shmid_ds = std::mem::zeroed();
        (libc::shmctl(shmid, libc::IPC_STAT, &mut stat) == 0).then_some(stat.shm_nattch > 0)
    }
}

/// Whether a process with this PID exists (in our PID namespace).
fn process_exists(pid: libc::pid_t) -> bool {
    // SAFETY: signal 0 only checks for existence.
    let alive = unsafe { libc::kill(pid, 0) } == 0;
    alive || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// A server known to the exit-time cleanup.
struct Registered {
    /// Registry key.
    id: u64,
    /// Postmaster PID while running.
    pid: Option<libc::pid_t>,
    /// Temporary directory to delete.
    dir: PathBuf,
}

/// Servers alive in this process, drained by [`cleanup_at_exit`].
static REGISTRY: Mutex<Vec<Registered>> = Mutex::new(Vec::new());

/// Locks the registry, ignoring poisoning (entries stay consistent).
fn registry() -> std::sync::MutexGuard<'static, Vec<Registered>> {
    REGISTRY
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Records a new server directory; installs the `atexit` hook once.
fn registry_add(dir: &Path) -> u64 {
    static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    static HOOK: Once = Once::new();
    // SAFETY: the hook is an `extern "C" fn()` that never unwinds.
    HOOK.call_once(|| assert_eq!(unsafe { libc::atexit(cleanup_at_exit) }, 0, "atexit failed"));
    let id = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    registry().push(Registered {
        id,
        pid: None,
        dir: dir.to_path_buf(),
    });
    id
}

/// Updates the postmaster PID of server `id`.
fn registry_set_pid(id: u64, pid: Option<libc::pid_t>) {
    if let Some(entry) = registry().iter_mut().find(|e| e.id == id) {
        entry.pid = pid;
    }
}

/// Forgets server `id` (its `Drop` cleaned up).
fn registry_remove(id: u64) {
    registry().retain(|e| e.id != id);
}

/// At process exit: SIGQUIT every registered postmaster, wait with a deadline,
/// SIGKILL the stragglers' process groups, and delete their directories.
extern "C" fn cleanup_at_exit() {
    let entries = std::mem::take(&mut *registry());
    let pids: Vec<libc::pid_t> = entries.iter().filter_map(|e| e.pid).collect();
    for &pid in &pids {
        signal(pid, libc::SIGQUIT);
    }
    let end = Instant::now() + STOP_DEADLINE;
    for &pid in &pids {
        if !reaped_by(pid, end) {
            signal(-pid, libc::SIGKILL);
            // SAFETY: blocking wait for our own child.
            unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
        }
    }
    for entry in &entries {
        let _ = fs::remove_dir_all(&entry.dir);
    }
}

/// Polls until child `pid` has been reaped (true) or `end` passes (false).
fn reaped_by(pid: libc::pid_t, end: Instant) -> bool {
    loop {
        if reaped(pid) {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        thread::sleep(POLL);
    }
}

/// Non-blocking reap of child `pid`; true once it has exited (or is not ours).
fn reaped(pid: libc::pid_t) -> bool {
    // SAFETY: WNOHANG wait on our own child.
    unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) != 0 }
}
