//! Runs the real `pgtarn` binary as a child process, for tests that measure
//! it from outside (memory) or drive it with command-line tools.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A pgtarn child process; killed on drop.
pub struct PgtarnProcess {
    /// Where clients connect.
    pub addr: SocketAddr,
    child: Child,
    _dir: tempfile::TempDir,
    /// The config file it runs with.
    pub config_path: PathBuf,
}

/// A free loopback port (bound, then released).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

#[allow(dead_code)]
impl PgtarnProcess {
    /// Starts the binary with `toml`, whose `listen_addr` must be
    /// `127.0.0.1:PORT`; waits (deadline 10 s) until it accepts.
    pub fn start(toml: &str, port: u16) -> PgtarnProcess {
        Self::start_logging(toml, port, "warn")
    }

    /// Like [`PgtarnProcess::start`] with the given `RUST_LOG` filter.
    pub fn start_logging(toml: &str, port: u16, filter: &str) -> PgtarnProcess {
        match Self::try_start(toml, port, filter) {
            Ok(p) => p,
            Err(log) => panic!("pgtarn exited before listening on port {port}:\n{log}"),
        }
    }

    /// Starts the binary with the config `make(port)` on a free port,
    /// trying other ports if one was taken meanwhile (a free port is only
    /// free when it is picked, and tests run in parallel).
    pub fn start_on_free_port(make: impl Fn(u16) -> String) -> PgtarnProcess {
        let mut last = String::new();
        for _ in 0..3 {
            let port = free_port();
            match Self::try_start(&make(port), port, "warn") {
                Ok(p) => return p,
                Err(log) => last = log,
            }
        }
        panic!("pgtarn did not start on three free ports; last log:\n{last}")
    }

    /// Starts the binary and waits (deadline 10 s) until it accepts; its
    /// log if it exits first.
    fn try_start(toml: &str, port: u16, filter: &str) -> Result<PgtarnProcess, String> {
        let mut p = Self::spawn(toml, port, filter);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(p.addr).is_err() {
            if let Ok(Some(status)) = p.child.try_wait() {
                return Err(format!("{status}: {}", p.log()));
            }
            assert!(
                Instant::now() < deadline,
                "pgtarn did not start listening on {}",
                p.addr
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(p)
    }

    /// Starts the binary without waiting for it.
    fn spawn(toml: &str, port: u16, filter: &str) -> PgtarnProcess {
        let dir = tempfile::tempdir().expect("tempdir");
        let config_path = dir.path().join("pgtarn.toml");
        std::fs::write(&config_path, toml).expect("write config");
        let log = std::fs::File::create(dir.path().join("pgtarn.log")).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_pgtarn"))
            .arg("--config")
            .arg(&config_path)
            .env("RUST_LOG", filter)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn pgtarn");
        PgtarnProcess {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            child,
            _dir: dir,
            config_path,
        }
    }

    /// Starts a second pgtarn on a port another one already listens on
    /// (`so_reuseport`); waits (deadline 10 s) for its "listening" log
    /// line, so `filter` must include info.
    pub fn start_beside(toml: &str, port: u16) -> PgtarnProcess {
        let p = Self::spawn(toml, port, "info");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !p.log().contains("pgtarn listening") {
            assert!(
                Instant::now() < deadline,
                "second pgtarn did not start: {}",
                p.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        p
    }

    /// Sends `signal` (e.g. `libc::SIGTERM`) to the process.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid.
        let r = unsafe { libc::kill(self.child.id() as i32, signal) };
        assert_eq!(r, 0, "kill({signal})");
    }

    /// Waits up to `limit` for the process to exit; true if it did.
    pub fn wait_exit(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Everything pgtarn has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("pgtarn.log")).unwrap_or_default()
    }

    /// The process id, to observe it under `/proc`.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory of the process, in KiB (VmRSS).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }
}

impl Drop for PgtarnProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
