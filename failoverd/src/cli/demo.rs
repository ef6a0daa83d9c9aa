//! `failoverd demo`: a self-contained run of the datapath on loopback, on a built-in default.
//!
//! It makes a cgroup and a pin directory of its own, starts two TCP backends
//! on 127.0.0.1, points a 127.x VIP at them, and runs a client inside the
//! cgroup: weighted spread, a failover by hand, and a VIP with no live backend.
//! Everything it made is removed on the way out, also on error.

use std::{
    collections::BTreeMap,
    fs::OpenOptions,
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use super::vip::{set, WeightedBackend};
use crate::datapath::{
    cgroup2_mount, cleanup, BpfDatapath, CgroupSpec, DatapathConfig, Protocol, Vip,
};

/// Arguments of `failoverd demo`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Example:\n  failoverd demo --connects 2000")]
pub struct DemoArgs {
    /// The VIP the demo client connects to; must be a 127.x address so nothing leaves the host.
    #[arg(long, default_value = "127.77.0.1:80")]
    pub vip: SocketAddr,
    /// Connects per step.
    #[arg(long, default_value_t = 1000)]
    pub connects: u32,
}

/// Arguments of the hidden client `demo` runs inside its cgroup.
#[derive(Debug, clap::Args)]
pub struct DemoClientArgs {
    /// Where to connect.
    pub vip: SocketAddr,
    /// How many connects.
    #[arg(long)]
    pub count: u32,
}

/// Runs the demo, printing what happens.
pub fn run(args: &DemoArgs) -> Result<()> {
    if !matches!(args.vip.ip(), std::net::IpAddr::V4(ip) if ip.is_loopback()) {
        bail!(
            "--vip {}: the demo only uses 127.x VIPs, so no packet can leave this host",
            args.vip
        );
    }
    let pid = std::process::id();
    let cgroup = DemoCgroup::create(&cgroup2_mount()?.join(format!("failoverd-demo-{pid}")))?;
    let pins = DemoPins(PathBuf::from(format!("/sys/fs/bpf/failoverd-demo-{pid}")));
    let a = NamedBackend::start("backend-a")?;
    let b = NamedBackend::start("backend-b")?;

    let mut datapath = BpfDatapath::open(&DatapathConfig {
        cgroup: CgroupSpec::Path(cgroup.0.clone()),
        pin_dir: pins.0.clone(),
    })?;
    let vip = Vip {
        addr: args.vip,
        protocol: Protocol::Tcp,
    };
    println!("failoverd demo");
    println!("  hooks attached to cgroup {}", cgroup.0.display());
    println!("  maps and links pinned under {}", pins.0.display());
    println!(
        "  {} = 127.0.0.1:{}, {} = 127.0.0.1:{}\n",
        a.name,
        a.addr.port(),
        b.name,
        b.addr.port()
    );

    let weighted = [
        WeightedBackend {
            addr: a.addr,
            weight: 3,
        },
        WeightedBackend {
            addr: b.addr,
            weight: 1,
        },
    ];
    let took = timed(|| set(&mut datapath, vip, &weighted))?;
    println!(
        "1. {vip} -> {} weight 3, {} weight 1 (one map write, {took:?})",
        a.name, b.name
    );
    report(&client(&cgroup, vip.addr, args.connects)?, args.connects);

    let took = timed(|| set(&mut datapath, vip, &weighted[1..]))?;
    println!(
        "\n2. failover by hand: {vip} -> {} only (one map write, {took:?})",
        b.name
    );
    report(&client(&cgroup, vip.addr, args.connects)?, args.connects);

    let took = timed(|| set(&mut datapath, vip, &[]))?;
    println!("\n3. no live backend: {vip} -> nothing (one map write, {took:?})");
    report(&client(&cgroup, vip.addr, args.connects)?, args.connects);

    drop(datapath);
    println!("\ncleaning up: hooks detached, pins, cgroup and backends removed");
    Ok(())
}

fn timed<T>(f: impl FnOnce() -> Result<T, crate::datapath::DatapathError>) -> Result<Duration> {
    let start = Instant::now();
    f()?;
    Ok(start.elapsed())
}

/// What the client saw.
#[derive(Debug, Default)]
struct ClientReport {
    replies: BTreeMap<String, u64>,
    errors: BTreeMap<String, u64>,
    peer: Option<String>,
    max_refused_us: u64,
}

fn report(r: &ClientReport, connects: u32) {
    for (name, n) in &r.replies {
        println!(
            "   {name}: {n} of {connects} connects ({:.1}%)",
            100.0 * *n as f64 / f64::from(connects)
        );
    }
    if let Some(peer) = &r.peer {
        println!("   getpeername() inside the cgroup says {peer}: the application sees the VIP");
    }
    for (error, n) in &r.errors {
        println!(
            "   {n} connects failed: {error} (slowest {} µs)",
            r.max_refused_us
        );
    }
}

/// Runs the client inside the demo cgroup and reads its report.
fn client(cgroup: &DemoCgroup, vip: SocketAddr, count: u32) -> Result<ClientReport> {
    let procs = OpenOptions::new()
        .write(true)
        .open(cgroup.0.join("cgroup.procs"))
        .context("opening cgroup.procs")?;
    let fd = procs.as_raw_fd();
    let mut command = Command::new("/proc/self/exe");
    command.args([
        "demo-client",
        &vip.to_string(),
        "--count",
        &count.to_string(),
    ]);
    command.stdout(Stdio::piped());
    // SAFETY: the hook only calls write(2), which is async-signal-safe, on an
    // fd opened before the fork; "0" moves the calling (child) process.
    unsafe {
        command.pre_exec(move || {
            if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let output = command.output().context("running the demo client")?;
    if !output.status.success() {
        bail!("demo client failed: {}", output.status);
    }
    let mut report = ClientReport::default();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let mut fields = line.splitn(3, ' ');
        match (fields.next(), fields.next(), fields.next()) {
            (Some("reply"), Some(name), Some(n)) => {
                report.replies.insert(name.into(), n.parse()?);
            }
            (Some("error"), Some(n), Some(what)) => {
                report.errors.insert(what.into(), n.parse()?);
            }
            (Some("peer"), Some(peer), None) => report.peer = Some(peer.into()),
            (Some("max_refused_us"), Some(n), None) => report.max_refused_us = n.parse()?,
            _ => bail!("demo client printed an unexpected line: {line}"),
        }
    }
    Ok(report)
}

/// The hidden `demo-client` subcommand: connects `count` times and prints a tally.
pub fn run_client(args: &DemoClientArgs) -> Result<()> {
    let mut replies: BTreeMap<String, u64> = BTreeMap::new();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut peer = None;
    let mut max_refused = Duration::ZERO;
    for _ in 0..args.count {
        let start = Instant::now();
        match TcpStream::connect_timeout(&args.vip, Duration::from_secs(2)) {
            Ok(mut stream) => {
                peer.get_or_insert(stream.peer_addr()?);
                let mut name = String::new();
                stream.set_read_timeout(Some(Duration::from_secs(2)))?;
                stream.read_to_string(&mut name)?;
                *replies.entry(name).or_default() += 1;
            }
            Err(e) => {
                max_refused = max_refused.max(start.elapsed());
                *errors.entry(e.to_string()).or_default() += 1;
            }
        }
    }
    let mut out = std::io::stdout().lock();
    for (name, n) in replies {
        writeln!(out, "reply {name} {n}")?;
    }
    for (what, n) in errors {
        writeln!(out, "error {n} {what}")?;
    }
    if let Some(peer) = peer {
        writeln!(out, "peer {peer}")?;
    }
    writeln!(out, "max_refused_us {}", max_refused.as_micros())?;
    Ok(())
}

/// A child cgroup removed on drop (after its processes are gone).
struct DemoCgroup(PathBuf);

impl DemoCgroup {
    fn create(path: &Path) -> Result<Self> {
        std::fs::create_dir(path).with_context(|| format!("creating cgroup {}", path.display()))?;
        Ok(DemoCgroup(path.to_path_buf()))
    }
}

impl Drop for DemoCgroup {
    fn drop(&mut self) {
        // Clients were waited for; a leftover would only be a killed one.
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

/// A TCP server on 127.0.0.1 that answers every connection with its name.
struct NamedBackend {
    name: &'static str,
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl NamedBackend {
    fn start(name: &'static str) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding a demo backend")?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopping.load(Ordering::Relaxed) {
                    break;
                }
                if let Ok(mut s) = stream {
                    if let Err(e) = s.write_all(name.as_bytes()) {
                        tracing::debug!(backend = name, error = %e, "client left early");
                    }
                }
            }
        });
        Ok(NamedBackend {
            name,
            addr,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for NamedBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the accept loop so it sees the flag.
        let _wake = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!(backend = self.name, "backend thread panicked");
            }
        }
    }
}
