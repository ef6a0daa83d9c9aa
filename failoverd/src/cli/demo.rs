//! `failoverd demo`: a self-contained run of the whole product on loopback, on a built-in default.
//!
//! It makes a cgroup and a pin directory of its own, starts two HTTP backends
//! on 127.0.0.1 (A preferred, B the backup), runs the daemon on a config it
//! prints, and runs a client inside the cgroup that sends a request through
//! the VIP every 10 ms. Then it kills A, shows the switch to B with the time it
//! took, brings A back, shows the failback, and removes everything it made —
//! also on error.

use std::{
    fs::OpenOptions,
    io::{BufRead, BufReader, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use tokio::sync::mpsc;

use crate::{
    config, daemon,
    datapath::{cgroup2_mount, cleanup, BpfDatapath},
};

/// Arguments of `failoverd demo`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Example:\n  failoverd demo")]
pub struct DemoArgs {
    /// Log filter and format.
    #[command(flatten)]
    pub logs: crate::cli::logs::LogArgs,
    /// The VIP the demo client talks to; must be a 127.x address so nothing leaves the host.
    #[arg(long, default_value = "127.77.0.1:80")]
    pub vip: SocketAddr,
}

/// Arguments of the hidden client `demo` runs inside its cgroup.
#[derive(Debug, clap::Args)]
pub struct DemoClientArgs {
    /// Where to send requests.
    pub vip: SocketAddr,
    /// Pause between requests, in milliseconds.
    #[arg(long, default_value_t = 10)]
    pub interval_ms: u64,
    /// Stop after this many seconds (the demo kills it sooner).
    #[arg(long, default_value_t = 120)]
    pub max_seconds: u64,
}

/// How long any one phase of the demo may take before it gives up.
const PHASE_LIMIT: Duration = Duration::from_secs(30);

/// Runs the demo, printing what happens.
pub fn run(args: &DemoArgs) -> Result<()> {
    if !matches!(args.vip.ip(), std::net::IpAddr::V4(ip) if ip.is_loopback()) {
        bail!(
            "--vip {}: the demo only uses 127.x VIPs, so no packet can leave this host",
            args.vip
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(demo(args.vip))
}

async fn demo(vip: SocketAddr) -> Result<()> {
    let pid = std::process::id();
    let cgroup = DemoCgroup::create(&cgroup2_mount()?.join(format!("failoverd-demo-{pid}")))?;
    let pins = DemoPins(PathBuf::from(format!("/sys/fs/bpf/failoverd-demo-{pid}")));
    let mut a = HttpBackend::start("backend-a", "127.0.0.1:0".parse()?)?;
    let a_addr = a.addr;
    let b = HttpBackend::start("backend-b", "127.0.0.1:0".parse()?)?;

    let yaml = format!(
        "datapath:\n  cgroup: {cgroup}\n  pin_dir: {pins}\n\
         services:\n  - name: demo\n    vip: {vip}\n    on_all_down: reject\n    failback: auto\n\
         \x20   health: {{ kind: http, path: /health, interval: 100ms, timeout: 50ms, rise: 2, fall: 3 }}\n\
         \x20   breaker: {{ failures: 5, open_for: 1s, max_open_for: 10s }}\n\
         \x20   backends:\n\
         \x20     - {{ name: a, address: '{a_addr}', priority: 0 }}\n\
         \x20     - {{ name: b, address: '{b_addr}', priority: 1 }}\n",
        cgroup = cgroup.0.display(),
        pins = pins.0.display(),
        b_addr = b.addr,
    );
    let config = config::parse(&yaml, Path::new("<demo>"))?;
    let bound = config.services[0].detection_bound();
    println!("failoverd demo: config\n\n{yaml}");
    println!("worst-case detection: fall × interval + timeout = {bound:?}\n");

    let datapath = BpfDatapath::open(&config.datapath.to_datapath_config())?;
    let running = daemon::start(&config, datapath, daemon::Drains::new()).await?;
    let mut client = DemoClient::spawn(&cgroup, vip)?;

    println!(
        "1. waiting for the first verdicts; a client in the cgroup sends GET {vip} every 10 ms"
    );
    let first = client.until_served_by("backend-a", PHASE_LIMIT).await?;
    println!(
        "   served by backend-a ({} requests before the table was written went untranslated)\n",
        first.failed
    );

    println!("2. killing backend-a (its port now refuses connections)");
    a.stop();
    let killed = Instant::now();
    let switched = client.until_served_by("backend-b", PHASE_LIMIT).await?;
    println!(
        "   failover to backend-b after {:?} (bound {bound:?}); {} requests failed meanwhile\n",
        killed.elapsed(),
        switched.failed
    );

    println!("3. bringing backend-a back on {a_addr}");
    a = HttpBackend::start("backend-a", a_addr)?;
    let back = Instant::now();
    let failback = client.until_served_by("backend-a", PHASE_LIMIT).await?;
    println!(
        "   failback to backend-a after {:?} (rise × interval, plus the breaker's open time if it opened); {} requests failed\n",
        back.elapsed(),
        failback.failed
    );

    let status = running.service_status("demo").await?;
    for backend in &status.backends {
        println!(
            "   {} {} {} (ejections: {})",
            backend.name, backend.addr, backend.state, backend.ejections
        );
    }
    drop(client);
    drop(running.shutdown().await);
    drop((a, b));
    println!("\ncleaning up: hooks detached, pins, cgroup and backends removed");
    Ok(())
}

/// What the client saw until the wanted backend answered.
struct Phase {
    failed: u64,
}

/// The client process in the demo cgroup, its output read line by line.
struct DemoClient {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
}

impl DemoClient {
    fn spawn(cgroup: &DemoCgroup, vip: SocketAddr) -> Result<Self> {
        let procs = OpenOptions::new()
            .write(true)
            .open(cgroup.0.join("cgroup.procs"))
            .context("opening cgroup.procs")?;
        let fd = procs.as_raw_fd();
        let mut command = Command::new("/proc/self/exe");
        command
            .args(["demo-client", &vip.to_string()])
            .stdout(Stdio::piped());
        // SAFETY: the hook only calls write(2), which is async-signal-safe, on
        // an fd opened before the fork; "0" moves the calling (child) process.
        unsafe {
            command.pre_exec(move || {
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command.spawn().context("starting the demo client")?;
        let stdout = child.stdout.take().context("client stdout")?;
        let (tx, lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(DemoClient { child, lines })
    }

    /// Reads client lines until one says `name` answered.
    async fn until_served_by(&mut self, name: &str, limit: Duration) -> Result<Phase> {
        let mut phase = Phase { failed: 0 };
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let line = tokio::time::timeout_at(deadline, self.lines.recv())
                .await
                .with_context(|| format!("no answer from {name} within {limit:?}"))?
                .context("the demo client exited")?;
            if line == format!("ok {name}") {
                return Ok(phase);
            }
            if line.starts_with("error") {
                phase.failed += 1;
            }
        }
    }
}

impl Drop for DemoClient {
    fn drop(&mut self) {
        if let Err(e) = self.child.kill() {
            tracing::debug!(error = %e, "demo client already gone");
        }
        if let Err(e) = self.child.wait() {
            tracing::error!(error = %e, "could not reap the demo client");
        }
    }
}

/// The hidden `demo-client` subcommand: one GET every interval, one line per answer.
pub fn run_client(args: &DemoClientArgs) -> Result<()> {
    let stop = Instant::now() + Duration::from_secs(args.max_seconds);
    let mut out = std::io::stdout().lock();
    while Instant::now() < stop {
        match get(args.vip) {
            Ok(body) => writeln!(out, "ok {body}")?,
            Err(e) => writeln!(out, "error {e}")?,
        }
        out.flush()?;
        std::thread::sleep(Duration::from_millis(args.interval_ms));
    }
    Ok(())
}

fn get(vip: SocketAddr) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&vip, Duration::from_millis(500))?;
    s.set_read_timeout(Some(Duration::from_millis(500)))?;
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: {vip}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    s.read_to_string(&mut response)?;
    Ok(response
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .trim()
        .to_string())
}

/// A child cgroup, removed on drop (its client was killed and reaped first).
struct DemoCgroup(PathBuf);

impl DemoCgroup {
    fn create(path: &Path) -> Result<Self> {
        std::fs::create_dir(path).with_context(|| format!("creating cgroup {}", path.display()))?;
        Ok(DemoCgroup(path.to_path_buf()))
    }
}

impl Drop for DemoCgroup {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir(&self.0) {
            tracing::error!(cgroup = %self.0.display(), error = %e, "could not remove the demo cgroup");
        }
    }
}

/// The demo's pin directory, cleaned up (hooks detached, pins removed) on drop.
struct DemoPins(PathBuf);

impl Drop for DemoPins {
    fn drop(&mut self) {
        if let Err(e) = cleanup(&self.0) {
            tracing::error!(pin_dir = %self.0.display(), error = %e, "could not clean up the demo datapath");
        }
    }
}

/// A minimal HTTP server answering every request with its name.
struct HttpBackend {
    name: &'static str,
    addr: SocketAddr,
    listener: Option<TcpListener>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl HttpBackend {
    fn start(name: &'static str, bind: SocketAddr) -> Result<Self> {
        let listener =
            TcpListener::bind(bind).with_context(|| format!("binding {name} on {bind}"))?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let accepting = listener.try_clone()?;
        let stopping = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            for stream in accepting.incoming() {
                if stopping.load(Ordering::Relaxed) {
                    break;
                }
                if let Ok(s) = stream {
                    if let Err(e) = answer(s, name) {
                        tracing::debug!(backend = name, error = %e, "request not answered");
                    }
                }
            }
        });
        Ok(HttpBackend {
            name,
            addr,
            listener: Some(listener),
            stop,
            thread: Some(thread),
        })
    }

    /// Stops accepting at once: new connects are refused, like a killed process.
    fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(listener) = self.listener.take() {
            // shutdown() wakes the blocked accept and stops the socket from
            // listening even where a copy of the fd lingers.
            // SAFETY: shutdown on a valid listening socket fd.
            unsafe { libc::shutdown(listener.as_raw_fd(), libc::SHUT_RDWR) };
        }
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!(backend = self.name, "backend thread panicked");
            }
        }
    }
}

impl Drop for HttpBackend {
    fn drop(&mut self) {
        self.stop();
    }
}

fn answer(mut s: TcpStream, name: &str) -> std::io::Result<()> {
    s.set_read_timeout(Some(Duration::from_millis(500)))?;
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 16 * 1024 {
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        request.extend_from_slice(&buf[..n]);
    }
    write!(
        s,
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{name}",
        name.len()
    )?;
    s.shutdown(Shutdown::Write)
}
