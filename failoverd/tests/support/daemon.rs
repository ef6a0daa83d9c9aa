//! The real `failoverd run` as a child process of a trial: its config, control socket and state
//! directory in a temporary directory of its own, the CLI pointed at that socket, and a guard
//! that SIGKILLs the daemon and removes the directory when the trial ends, however it ends.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use failoverd::control::StatusReport;

use super::client::place_child;
use super::env::Env;
use super::netns::TestNetns;
use super::{io_context, unique_name};

/// How long `start` waits for the control socket to answer.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How often `start` and `wait_ready` ask.
const POLL: Duration = Duration::from_millis(20);

/// One trial's daemon: its files and, while it runs, its process.
pub struct DaemonProcess {
    dir: PathBuf,
    config: PathBuf,
    socket: PathBuf,
    child: Option<Child>,
    /// Where the daemon's stderr goes (its log), kept for a failing trial to show.
    log: PathBuf,
}

impl DaemonProcess {
    /// Writes a config with this trial's cgroup, pins, socket and state dir and the given
    /// `services:` entries; starts nothing.
    pub fn new(env: &Env, tag: &str, services: &str) -> io::Result<DaemonProcess> {
        Self::with_sections(env, tag, "", services)
    }

    /// Like `new`, with more top-level sections (e.g. `resolver:`, `defaults:`) before
    /// `services:`.
    pub fn with_sections(
        env: &Env,
        tag: &str,
        sections: &str,
        services: &str,
    ) -> io::Result<DaemonProcess> {
        let dir = std::env::temp_dir().join(unique_name("fo-daemon", tag)?);
        std::fs::create_dir_all(&dir).map_err(|e| io_context(dir.display(), e))?;
        let d = DaemonProcess {
            config: dir.join("failoverd.yaml"),
            socket: dir.join("run/control.sock"),
            log: dir.join("daemon.log"),
            dir,
            child: None,
        };
        d.write_config(env, sections, services)?;
        Ok(d)
    }

    /// Rewrites the config file (a later `reload` or `start` reads it). A `metrics:` line in
    /// `sections` replaces the trial's default one.
    pub fn write_config(&self, env: &Env, sections: &str, services: &str) -> io::Result<()> {
        let own_metrics = sections.lines().any(|l| l.starts_with("metrics:"));
        let defaults: String = env
            .yaml_datapath()
            .lines()
            .filter(|l| !(own_metrics && l.starts_with("metrics:")))
            .map(|l| format!("{l}\n"))
            .collect();
        let text = format!(
            "{defaults}{sections}control:\n  socket: {}\n  state_dir: {}\nservices:\n{services}",
            self.socket.display(),
            self.dir.join("state").display()
        );
        self.write_raw_config(&text)
    }

    /// Writes `text` as the config file verbatim (e.g. a broken one).
    pub fn write_raw_config(&self, text: &str) -> io::Result<()> {
        std::fs::write(&self.config, text).map_err(|e| io_context(self.config.display(), e))
    }

    /// The config file's path.
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// The control socket's path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts `failoverd run` and returns once its control socket answers.
    pub fn start(&mut self) -> io::Result<()> {
        self.start_in(None)
    }

    /// Like `start`, with the daemon inside `netns` (its probes then run there).
    pub fn start_in(&mut self, netns: Option<&TestNetns>) -> io::Result<()> {
        self.spawn("warn", netns)?;
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if self.cli(&["status"])?.status.success() {
                return Ok(());
            }
            self.check_alive()?;
            std::thread::sleep(POLL);
        }
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "the daemon's control socket never answered: {}",
                self.log_tail(20)
            ),
        ))
    }

    /// Starts `failoverd run --log <log>` (in `netns` if given) and returns at once: for a
    /// caller that times the start-up itself.
    pub fn spawn(&mut self, log: &str, netns: Option<&TestNetns>) -> io::Result<()> {
        let log_file = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| io_context(self.log.display(), e))?;
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_failoverd"));
        cmd.args(["run", "--log", log, "--config"])
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        place_child(&mut cmd, None, netns)?;
        self.child = Some(
            cmd.spawn()
                .map_err(|e| io_context("spawning failoverd run", e))?,
        );
        Ok(())
    }

    /// An error quoting the end of the log if the daemon has exited (or was never started).
    pub fn check_alive(&mut self) -> io::Result<()> {
        let Some(child) = self.child.as_mut() else {
            return Err(io::Error::other("failoverd is not running"));
        };
        match child.try_wait()? {
            None => Ok(()),
            Some(status) => {
                self.child = None;
                Err(io::Error::other(format!(
                    "failoverd run exited with {status}: {}",
                    self.log_tail(20)
                )))
            }
        }
    }

    /// Waits until every service has its first verdicts (`status` says ready).
    pub fn wait_ready(&self, limit: Duration) -> io::Result<()> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.status()?.services.iter().all(|s| s.ready) {
                return Ok(());
            }
            std::thread::sleep(POLL);
        }
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("the daemon was not ready within {limit:?}"),
        ))
    }

    /// SIGKILLs the daemon (the datapath stays pinned and keeps serving).
    pub fn sigkill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Already dead is fine: the point is that it is dead.
            child.kill().ok();
            child.wait().ok();
        }
    }

    /// Runs a client subcommand against this daemon's socket.
    pub fn cli(&self, args: &[&str]) -> io::Result<Output> {
        Command::new(env!("CARGO_BIN_EXE_failoverd"))
            .args(args)
            .arg("--socket")
            .arg(&self.socket)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| io_context(format!("running failoverd {args:?}"), e))
    }

    /// Like `cli`, but a failing command is an error carrying its stderr; returns stdout.
    pub fn ok(&self, args: &[&str]) -> io::Result<String> {
        let out = self.cli(args)?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "failoverd {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `status --output json`, parsed.
    pub fn status(&self) -> io::Result<StatusReport> {
        serde_json::from_str(&self.ok(&["status", "--output", "json"])?)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    /// `GET /metrics` from the running daemon (its listener found with `ss`: the trial's
    /// config asks for port 0), the whole response as text; bounded by socket timeouts.
    pub fn scrape(&self) -> io::Result<String> {
        use std::io::{Read, Write};
        let pid = self
            .pid()
            .ok_or_else(|| io::Error::other("the daemon is not running"))?;
        let out = Command::new("ss").args(["-Hltnp"]).output()?;
        let owner = format!("pid={pid},");
        let text = String::from_utf8_lossy(&out.stdout);
        let addr: std::net::SocketAddr = text
            .lines()
            .filter(|l| l.contains(&owner))
            .find_map(|l| l.split_whitespace().nth(3)?.parse().ok())
            .ok_or_else(|| io::Error::other(format!("no TCP listener of pid {pid} in ss")))?;
        let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
        let mut body = String::new();
        stream.read_to_string(&mut body)?;
        Ok(body)
    }

    /// The last `n` lines of the daemon's log, for error messages and reports.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Lines the daemon has logged so far.
    pub fn log_lines(&self) -> usize {
        std::fs::read_to_string(&self.log).map_or(0, |t| t.lines().count())
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        self.sigkill();
        std::fs::remove_dir_all(&self.dir).ok();
    }
}
