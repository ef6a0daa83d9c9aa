//! Backends as real processes, so a test can `kill -9` one: a re-exec of the test binary with
//! `FO_TEST_SERVER=<json spec>` that serves TCP or HTTP until killed.
//!
//! Every connection gets `B<id>\n` (for HTTP, as the body of a response with the spec's status).
//! In `flap` mode the server listens for `flap_ms`, stops listening for `flap_ms`, and so on, so
//! probes see it come and go (each phase lasting between `flap_ms` and `flap_max_ms`). With
//! `health_bind` it also answers HTTP 200 on a second address, a health endpoint that freezes
//! with the process (SIGSTOP) where a bare TCP connect would still be accepted by the kernel.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::backends::reply_for;
use super::io_context;

/// Environment variable carrying the JSON `ServerSpec`.
pub const SERVER_ENV: &str = "FO_TEST_SERVER";

/// How long `spawn` waits for the child to report that it listens.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// What a backend process serves.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ServerSpec {
    /// Where to listen (port 0: any; the real address is reported back).
    pub bind: SocketAddr,
    /// Its id, in every reply.
    pub id: u32,
    /// Answer as an HTTP server with this status (`None`: raw TCP, reply and close).
    pub http_status: Option<u16>,
    /// In HTTP mode, the body (default `B<id>\n`).
    pub body: Option<String>,
    /// Alternate listening / not listening every this many milliseconds (0: always listen).
    pub flap_ms: u64,
    /// When above `flap_ms`, each phase lasts a random time in `flap_ms..=flap_max_ms`.
    #[serde(default)]
    pub flap_max_ms: u64,
    /// A second address answering every request with HTTP 200 `ok` (a health endpoint).
    #[serde(default)]
    pub health_bind: Option<SocketAddr>,
    /// Raw TCP: after the reply, keep the connection open until the client closes it (a
    /// long-lived connection, e.g. a database session).
    #[serde(default)]
    pub hold: bool,
}

impl ServerSpec {
    /// A raw TCP backend.
    pub fn tcp(bind: SocketAddr, id: u32) -> Self {
        ServerSpec {
            bind,
            id,
            http_status: None,
            body: None,
            flap_ms: 0,
            flap_max_ms: 0,
            health_bind: None,
            hold: false,
        }
    }

    /// An HTTP backend answering `status`.
    pub fn http(bind: SocketAddr, id: u32, status: u16) -> Self {
        ServerSpec {
            bind,
            id,
            http_status: Some(status),
            body: None,
            flap_ms: 0,
            flap_max_ms: 0,
            health_bind: None,
            hold: false,
        }
    }
}

/// A backend process; `Drop` kills and reaps it.
#[derive(Debug)]
pub struct BackendProcess {
    child: Option<Child>,
    addr: SocketAddr,
    spec: ServerSpec,
}

impl BackendProcess {
    /// Starts a backend process and waits until it listens.
    pub fn spawn(spec: ServerSpec) -> io::Result<BackendProcess> {
        let json = serde_json::to_string(&spec).map_err(io::Error::other)?;
        let mut child = Command::new(std::env::current_exe()?)
            .env(SERVER_ENV, json)
            .args(["--exact", "__fo_server_never_matches__"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        thread::spawn(move || {
            let mut line = String::new();
            let result = BufReader::new(stdout).read_line(&mut line).map(|_| line);
            // The receiver may have timed out already.
            tx.send(result).ok();
        });
        let line = match rx.recv_timeout(READY_TIMEOUT) {
            Ok(Ok(line)) => line,
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                child.kill().ok();
                child.wait().ok();
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "backend process did not start",
                ));
            }
        };
        let addr = line
            .trim()
            .strip_prefix("listening ")
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| io::Error::other(format!("backend process said {line:?}")))?;
        Ok(BackendProcess {
            child: Some(child),
            addr,
            spec,
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends `signal` (e.g. `libc::SIGSTOP` to freeze it, `libc::SIGCONT` to thaw it).
    pub fn signal(&self, signal: i32) -> io::Result<()> {
        let pid = self
            .pid()
            .ok_or_else(|| io::Error::other("backend process is not running"))?;
        let pid = libc::pid_t::try_from(pid).map_err(io::Error::other)?;
        // SAFETY: kill on our own child, which is not reaped while `child` is Some.
        if unsafe { libc::kill(pid, signal) } != 0 {
            return Err(io_context(
                format!("signal {signal} to backend {pid}"),
                io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    /// SIGKILLs it and reaps it: its port refuses connections from now on.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Already dead is fine: the point is that it is dead.
            child.kill().ok();
            child.wait().ok();
        }
    }

    /// Starts it again on the same address.
    pub fn restart(&mut self) -> io::Result<()> {
        self.kill();
        let spec = ServerSpec {
            bind: self.addr,
            ..self.spec.clone()
        };
        *self = BackendProcess::spawn(spec)?;
        Ok(())
    }
}

impl Drop for BackendProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// If `FO_TEST_SERVER` is set, serves as a backend until killed; otherwise returns.
pub fn maybe_run_server() {
    let Some(json) = std::env::var_os(SERVER_ENV) else {
        return;
    };
    let spec: ServerSpec = match json.to_str().map(serde_json::from_str) {
        Some(Ok(spec)) => spec,
        _ => {
            eprintln!("fo-test server: bad {SERVER_ENV}");
            std::process::exit(2);
        }
    };
    if let Err(e) = serve(&spec) {
        eprintln!("fo-test server: {e}");
        std::process::exit(2);
    }
    std::process::exit(0);
}

fn serve(spec: &ServerSpec) -> io::Result<()> {
    let first = TcpListener::bind(spec.bind)?;
    let addr = first.local_addr()?;
    first.set_nonblocking(true)?;
    let mut listener = Some(first);
    let health = spec.health_bind.map(TcpListener::bind).transpose()?;
    if let Some(h) = &health {
        h.set_nonblocking(true)?;
    }
    println!("listening {addr}");
    io::stdout().flush()?;
    // Bounded: a test kills its backends; an orphan still ends within the hour.
    let end = Instant::now() + Duration::from_secs(3600);
    let phase = || {
        let max = spec.flap_max_ms.max(spec.flap_ms);
        Duration::from_millis(fastrand::u64(spec.flap_ms..=max))
    };
    let mut phase_end = Instant::now() + phase();
    while Instant::now() < end {
        if let Some(h) = &health {
            if let Ok((stream, _)) = h.accept() {
                let health_spec = ServerSpec {
                    http_status: Some(200),
                    body: Some("ok\n".into()),
                    ..spec.clone()
                };
                thread::spawn(move || answer(stream, &health_spec));
            }
        }
        if spec.flap_ms > 0 && Instant::now() >= phase_end {
            phase_end = Instant::now() + phase();
            listener = match listener.take() {
                Some(l) => {
                    // SAFETY: shutdown on our own listening socket; it stops listening at once.
                    unsafe { libc::shutdown(l.as_raw_fd(), libc::SHUT_RDWR) };
                    None
                }
                None => {
                    let l = TcpListener::bind(addr)?;
                    l.set_nonblocking(true)?;
                    Some(l)
                }
            };
        }
        let Some(l) = &listener else {
            thread::sleep(Duration::from_millis(2));
            continue;
        };
        match l.accept() {
            Ok((stream, _)) => {
                let spec = spec.clone();
                thread::spawn(move || answer(stream, &spec));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(2))
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn answer(mut stream: TcpStream, spec: &ServerSpec) {
    // Errors here are a client that left early: nothing to report.
    stream.set_nonblocking(false).ok();
    stream.set_read_timeout(Some(Duration::from_secs(1))).ok();
    let reply = reply_for(spec.id);
    let Some(status) = spec.http_status else {
        stream.write_all(&reply).ok();
        if spec.hold {
            // Until the client closes (or the process is frozen or killed).
            stream.set_read_timeout(None).ok();
            let mut buf = [0u8; 64];
            while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
        }
        return;
    };
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 16 * 1024 {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let body = spec.body.clone().map(String::into_bytes).unwrap_or(reply);
    let head = format!(
        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).ok();
    stream.write_all(&body).ok();
}
