//! A real etcd (Debian's `etcd-server`) for a trial: loopback ports of its own, a temporary
//! data directory, and a guard that kills it and removes the directory however the trial
//! ends. It can be killed and started again on the same ports and data (etcd down, etcd back).

use std::{
    fs::File,
    io,
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use super::{io_context, unique_name};

/// Where Debian puts the server.
pub const ETCD: &str = "/usr/bin/etcd";

/// How long `start` waits for the client port to accept.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// One etcd member on loopback.
pub struct EtcdProcess {
    dir: PathBuf,
    client: SocketAddr,
    peer: SocketAddr,
    /// More flags for every start (e.g. `--max-txn-ops` for a bench's big publish).
    extra: Vec<String>,
    /// `https` when the flags give etcd a server certificate.
    scheme: &'static str,
    child: Option<Child>,
}

/// Whether the etcd binary is installed (`scripts/install-deps.sh` installs it).
pub fn available() -> bool {
    Path::new(ETCD).exists()
}

/// A loopback port nobody listens on right now. Another process could take it before etcd
/// binds it; `start` then fails clearly rather than talking to a stranger.
fn free_port() -> io::Result<SocketAddr> {
    TcpListener::bind("127.0.0.1:0")?.local_addr()
}

impl EtcdProcess {
    /// Starts a fresh single-member cluster and waits until its client port accepts.
    pub fn start(tag: &str) -> io::Result<EtcdProcess> {
        Self::start_with(tag, &[])
    }

    /// Like `start`, with more etcd flags.
    pub fn start_with(tag: &str, extra: &[&str]) -> io::Result<EtcdProcess> {
        let dir = std::env::temp_dir().join(unique_name("fo-etcd", tag)?);
        std::fs::create_dir_all(&dir).map_err(|e| io_context(dir.display(), e))?;
        let mut e = EtcdProcess {
            dir,
            client: free_port()?,
            peer: free_port()?,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            scheme: if extra.contains(&"--cert-file") {
                "https"
            } else {
                "http"
            },
            child: None,
        };
        e.resume()?;
        Ok(e)
    }

    /// The client URL, for `fleet.etcd.endpoints`.
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.client)
    }

    /// Starts the member again on the same ports and data (after `kill`).
    pub fn resume(&mut self) -> io::Result<()> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.dir.join("etcd.log"))
            .map_err(|e| io_context("etcd log", e))?;
        let peer = format!("http://{}", self.peer);
        let mut cmd = Command::new(ETCD);
        cmd.arg("--name")
            .arg("t")
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .args(["--listen-client-urls", &self.url()])
            .args(["--advertise-client-urls", &self.url()])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("t={peer}")])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        self.child = Some(cmd.spawn().map_err(|e| io_context("spawning etcd", e))?);
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if TcpStream::connect_timeout(&self.client, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Err(io::Error::other(format!(
                    "etcd exited with {status}: {}",
                    self.log_tail(20)
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "etcd did not listen within {START_TIMEOUT:?}: {}",
                self.log_tail(20)
            ),
        ))
    }

    /// SIGKILLs the member: etcd is down (its data stays for `resume`).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Already dead is fine: the point is that it is dead.
            child.kill().ok();
            child.wait().ok();
        }
    }

    /// The end of etcd's log, for failures.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for EtcdProcess {
    fn drop(&mut self) {
        self.kill();
        std::fs::remove_dir_all(&self.dir).ok();
    }
}
