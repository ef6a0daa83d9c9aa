//! failoverd at scale: 10,000 VIPs × 8 backends with the real daemon on this machine — time
//! until every table is in the kernel, memory, CPU spent probing, probe throughput, and how
//! long one VIP's change takes to reach the kernel — in two variants, one after the other:
//!
//! - **shared**: every VIP lists the same 8 backends (`127.0.0.1:<port k>`). The daemon probes
//!   a target (address, check, interval, timeout) once however many services list it, so this
//!   is 8 probe loops: it measures the deduplicated probing, and everything else a daemon with
//!   10,000 services does (config, tasks, fan-out of results, tables, control API).
//! - **distinct**: every backend its own loopback address (`127.110.x.y:<port k>`, 80,000
//!   targets), so the config asks for 80,000 TCP probes/s: more than 2 cores can do. It
//!   measures the probing ceiling of the machine and how the daemon behaves beyond it
//!   (`failoverd_probes_skipped_total`).
//!
//! Run as root: `cargo bench -p failoverd --bench scale`. The VIPs are `127.100.x.y:80`, all
//! distinct. The backends are 8 listeners in this process on `0.0.0.0:<port k>` (every
//! 127.0.0.0/8 destination is local on Linux, so `127.110.x.y:<port k>` reaches listener k;
//! the bench only ever connects to 127.0.0.0/8), with a 4096-deep backlog and
//! accept-and-close loops that count what they accept: that count is the probe rate the daemon
//! really achieves. Health: tcp, interval 1s, the other keys at their defaults.
//! `FO_BENCH_QUICK=1` runs 1,000 VIPs and short windows.

#[path = "../tests/support/mod.rs"]
mod support;

mod common;

use std::{
    collections::{BTreeMap, HashSet},
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    os::{
        fd::{AsRawFd, FromRawFd},
        unix::net::UnixStream,
    },
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use aya::maps::{HashMap as BpfHashMap, MapData};
use common::{kernel, median, quick};
use failoverd::{
    control::StatusReport,
    datapath::{PinnedMaps, Vip, VipTable},
};
use failoverd_shared::{map_names, Service, VipKey};
use support::{daemon::DaemonProcess, env::Env, kernel::tcp_vip};

/// VIPs (1,000 in quick mode).
const VIPS: usize = 10_000;
/// Backends per VIP.
const BACKENDS: usize = 8;
/// Listen backlog of each backend listener.
const BACKLOG: i32 = 4096;
/// How long to wait for every table to reach the kernel before giving up.
const LOAD_LIMIT: Duration = Duration::from_secs(180);
/// Pause between two looks at the kernel's map while loading (each look walks every key).
const LOAD_POLL: Duration = Duration::from_millis(50);
/// Quiet time after the last table arrives, before the steady window.
const SETTLE: Duration = Duration::from_secs(3);
/// The steady window over which RSS, CPU and probe rate are measured (10 s in quick mode).
const WINDOW: Duration = Duration::from_secs(60);
/// How often the steady window is sampled (5 s in quick mode).
const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// VIPs whose drain and undrain are timed (3 in quick mode).
const CHANGES: usize = 5;
/// How long a timed change may take to show in the kernel.
const CHANGE_LIMIT: Duration = Duration::from_secs(10);
/// Time between the two `/metrics` scrapes that give the skipped-probe rate (5 s in quick
/// mode).
const SKIP_WINDOW: Duration = Duration::from_secs(20);
/// How long one `/metrics` scrape may take (the daemon's own limit per connection is 30 s).
const SCRAPE_LIMIT: Duration = Duration::from_secs(40);
/// How long `GET /v1/status` may take. The daemon means to cut a control connection after
/// 60 s, but a request stuck in synchronous work is not cut (seen at 10,000 services).
const STATUS_LIMIT: Duration = Duration::from_secs(120);
/// The CLI's own limit for one request.
const CLI_LIMIT: Duration = Duration::from_secs(10);
/// The counter the daemon increments for every probe slot it skipped.
const SKIPPED_METRIC: &str = "failoverd_probes_skipped_total";

fn main() {
    if let Err(e) = bench() {
        eprintln!("scale: {e}");
        std::process::exit(1);
    }
}

/// Which addresses the VIPs' backends have.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Variant {
    /// Every VIP lists the same 8 addresses: 8 probe targets.
    Shared,
    /// Every backend of every VIP has an address of its own: VIPs × 8 probe targets.
    Distinct,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::Shared => "shared",
            Variant::Distinct => "distinct",
        }
    }

    /// Distinct probe targets for `vips` VIPs.
    fn targets(self, vips: usize) -> usize {
        match self {
            Variant::Shared => BACKENDS,
            Variant::Distinct => vips * BACKENDS,
        }
    }
}

/// The backends: listeners on `0.0.0.0` that accept and close, counting accepts.
struct Listeners {
    listeners: Vec<TcpListener>,
    accepts: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Listeners {
    fn start(n: usize) -> std::io::Result<Listeners> {
        let accepts = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let mut listeners = Vec::new();
        let mut threads = Vec::new();
        for _ in 0..n {
            // Every 127.0.0.0/8 address is local, so one wildcard listener per port serves
            // all the distinct variant's backend addresses on that port.
            let l = listen_deep(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)))?;
            let serving = l.try_clone()?;
            let (accepts, stop) = (Arc::clone(&accepts), Arc::clone(&stop));
            threads.push(thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match serving.accept() {
                        // Closed with a FIN at once. Not a RST: one that lands before the
                        // prober has seen its connect complete turns the connect itself into
                        // ECONNRESET, a failed probe that is the bench's fault.
                        Ok(_) => {
                            accepts.fetch_add(1, Ordering::Relaxed);
                        }
                        // EMFILE and friends: back off instead of spinning.
                        Err(_) => thread::sleep(Duration::from_millis(1)),
                    }
                }
            }));
            listeners.push(l);
        }
        Ok(Listeners {
            listeners,
            accepts,
            stop,
            threads,
        })
    }

    fn ports(&self) -> Vec<u16> {
        self.listeners
            .iter()
            .map(|l| l.local_addr().expect("bound listener").port())
            .collect()
    }

    fn accepts(&self) -> u64 {
        self.accepts.load(Ordering::Relaxed)
    }
}

impl Drop for Listeners {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for l in &self.listeners {
            // Wakes the blocked accept: shutdown on a listening socket makes it fail at once.
            // SAFETY: a plain syscall on a socket we keep open until the threads are joined.
            unsafe { libc::shutdown(l.as_raw_fd(), libc::SHUT_RDWR) };
        }
        for t in self.threads.drain(..) {
            t.join().ok();
        }
    }
}

/// A TCP listener with a `BACKLOG`-deep accept queue (std's `bind` listens with 128, which
/// tens of thousands of probes/s would overflow into dropped SYNs and probe timeouts).
fn listen_deep(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let SocketAddr::V4(v4) = addr else {
        return Err(std::io::Error::other("IPv4 only"));
    };
    // SAFETY: plain socket syscalls; the fd is owned by the TcpListener from here on, also on
    // the error paths.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let listener = TcpListener::from_raw_fd(fd);
        let sa = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: v4.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(*v4.ip()).to_be(),
            },
            sin_zero: [0; 8],
        };
        if libc::bind(
            fd,
            (&sa as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        ) != 0
            || libc::listen(fd, BACKLOG) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        Ok(listener)
    }
}

/// The i-th VIP: `127.100.x.y:80`, distinct for i < 64,000.
fn vip_of(i: usize) -> Vip {
    tcp_vip(&format!("127.100.{}.{}:80", i / 250, i % 250 + 1))
}

/// The index of a VIP made by `vip_of`.
fn vip_index(vip: &Vip) -> Option<usize> {
    let SocketAddr::V4(v4) = vip.addr else {
        return None;
    };
    let [_, _, x, y] = v4.ip().octets();
    (y >= 1).then(|| usize::from(x) * 250 + usize::from(y) - 1)
}

/// Backend `k` of VIP `i`: `127.0.0.1:<port k>` when shared; when distinct
/// `127.110.x.y:<port k>` and onwards, one address per (VIP, backend), never in the VIPs'
/// `127.100.0.0/16` nor on `127.0.0.1`, with last octets 1–250 like the VIPs.
fn backend_addr(variant: Variant, i: usize, k: usize, ports: &[u16]) -> SocketAddr {
    let ip = match variant {
        Variant::Shared => Ipv4Addr::LOCALHOST,
        Variant::Distinct => {
            let j = i * BACKENDS + k;
            Ipv4Addr::new(
                127,
                110 + (j / 62_500) as u8,
                ((j / 250) % 250) as u8,
                (j % 250 + 1) as u8,
            )
        }
    };
    SocketAddr::from((ip, ports[k]))
}

/// The `services:` list: every VIP with 8 backends, the first half at priority 0.
fn services_yaml(variant: Variant, vips: usize, ports: &[u16]) -> String {
    let mut s = String::with_capacity(vips * 600);
    for i in 0..vips {
        s.push_str(&format!(
            "  - name: s{i}\n    vip: {}\n    health: {{ kind: tcp, interval: 1s }}\n    backends:\n",
            vip_of(i).addr
        ));
        for k in 0..BACKENDS {
            s.push_str(&format!(
                "      - {{ name: b{k}, address: '{}', priority: {} }}\n",
                backend_addr(variant, i, k, ports),
                k / (BACKENDS / 2)
            ));
        }
    }
    s
}

/// The daemon's services map, opened from its pin (read-only use).
fn open_services(env: &Env) -> Option<BpfHashMap<MapData, VipKey, Service>> {
    let data = MapData::from_pin(env.pins.path().join(map_names::SERVICES)).ok()?;
    BpfHashMap::try_from(aya::maps::Map::HashMap(data)).ok()
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> std::io::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the `(comm)`, which may itself hold spaces: state is the first, utime the
    // 12th and stime the 13th (fields 14 and 15 of proc(5)).
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| std::io::Error::other("odd /proc stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields
        .get(11)
        .zip(fields.get(12))
        .and_then(|(u, s)| Some(u.parse::<u64>().ok()? + s.parse::<u64>().ok()?))
        .ok_or_else(|| std::io::Error::other("no utime/stime in /proc stat"))?;
    Ok(ticks as f64 / clock_ticks())
}

/// `USER_HZ`, the unit of /proc's CPU times.
fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64
}

/// CPU seconds the whole machine spent busy (not idle, not waiting for I/O), from /proc/stat:
/// everything that ran, this bench and any other load included.
fn machine_busy_seconds() -> std::io::Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .ok_or_else(|| std::io::Error::other("no cpu line in /proc/stat"))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user already).
    let busy: u64 = v
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, t)| t)
        .sum();
    Ok(busy as f64 / clock_ticks())
}

/// A `/proc/<pid>/status` line's value in kB (`VmRSS`, `VmHWM`).
fn status_kb(pid: u32, key: &str) -> std::io::Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no {key} in /proc/{pid}/status")))
}

/// The TCP port the daemon's metrics listener got (the config says `127.0.0.1:0`): its only
/// listening TCP socket, found by matching the socket inodes of its fds against its network
/// namespace's `/proc/<pid>/net/tcp`.
fn metrics_port(pid: u32) -> std::io::Result<u16> {
    let mut inodes = HashSet::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        let Ok(link) = std::fs::read_link(entry?.path()) else {
            continue; // closed meanwhile
        };
        if let Some(inode) = link
            .to_str()
            .and_then(|l| l.strip_prefix("socket:["))
            .and_then(|l| l.strip_suffix(']'))
        {
            inodes.insert(inode.to_string());
        }
    }
    let tcp = std::fs::read_to_string(format!("/proc/{pid}/net/tcp"))?;
    for line in tcp.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        // sl local rem st tx:rx tr:when retrnsmt uid timeout inode; 0A is LISTEN.
        if f.len() > 9 && f[3] == "0A" && inodes.contains(f[9]) {
            if let Some(port) = f[1]
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
            {
                return Ok(port);
            }
        }
    }
    Err(std::io::Error::other(format!(
        "no listening TCP socket of pid {pid} in /proc/{pid}/net/tcp"
    )))
}

/// One `GET /metrics`: the body and how long the whole exchange took.
fn scrape(port: u16) -> std::io::Result<(String, Duration)> {
    let start = Instant::now();
    let mut s = TcpStream::connect_timeout(
        &SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        Duration::from_secs(5),
    )?;
    s.set_read_timeout(Some(SCRAPE_LIMIT))?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let took = start.elapsed();
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no HTTP header in the /metrics answer"))?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(std::io::Error::other(format!(
            "/metrics answered {}",
            head.lines().next().unwrap_or_default()
        )));
    }
    Ok((body.to_string(), took))
}

/// The sum of every series of `name` in a Prometheus text exposition.
fn metric_total(text: &str, name: &str) -> Option<f64> {
    let mut total = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if rest.starts_with(' ') || rest.starts_with('{') {
            let value: f64 = rest.rsplit(' ').next()?.parse().ok()?;
            *total.get_or_insert(0.0) += value;
        }
    }
    total
}

/// `GET /v1/status` on the control socket, as `failoverd status` sends it but without the
/// CLI's 10 s limit: how long the daemon takes to answer, and the answer.
fn raw_status(socket: &std::path::Path) -> Result<(Duration, StatusReport), String> {
    let start = Instant::now();
    let failed = |e: &dyn std::fmt::Display| {
        format!("failed after {:.2} s: {e}", start.elapsed().as_secs_f64())
    };
    let mut s = UnixStream::connect(socket).map_err(|e| failed(&e))?;
    s.set_read_timeout(Some(STATUS_LIMIT))
        .map_err(|e| failed(&e))?;
    s.write_all(b"GET /v1/status HTTP/1.1\r\nHost: failoverd\r\nConnection: close\r\n\r\n")
        .map_err(|e| failed(&e))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| failed(&e))?;
    let took = start.elapsed();
    let at = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| failed(&"no HTTP answer (connection closed)"))?;
    let head = String::from_utf8_lossy(&raw[..at]);
    if !head.starts_with("HTTP/1.1 200") {
        return Err(failed(&head.lines().next().unwrap_or_default()));
    }
    let report = serde_json::from_slice(&raw[at + 4..]).map_err(|e| failed(&e))?;
    Ok((took, report))
}

/// A timed change: the CLI's round trip, when the kernel's map moved, and the table it holds.
type Change = (Duration, Duration, VipTable);

/// Times one drain or undrain of backend `b0` (at `b0`) in service `i`: the CLI's round trip
/// (it returns once the kernel holds the change) and, independently, how long until a poller
/// on the pinned map sees the VIP's generation move. `None` when the kernel's table already
/// is what the change would make (a flapping backend), so nothing can be timed.
fn timed_change(
    daemon: &DaemonProcess,
    env: &Env,
    i: usize,
    b0: SocketAddr,
    verb: &str,
) -> Result<Option<Change>, Box<dyn std::error::Error>> {
    let vip = vip_of(i);
    let key = vip.key();
    let map = open_services(env).ok_or("services map not pinned")?;
    let current = map.get(&key, 0)?;
    let before = current.generation;
    let has_b0 = VipTable::decode(vip, &current)
        .backends
        .iter()
        .any(|b| b.addr == b0);
    if has_b0 != (verb == "drain") {
        // Flapping put the table where the change would: nothing would move in the kernel.
        return Ok(None);
    }
    let start = Instant::now();
    let poller = thread::spawn(move || -> Option<(Duration, Service)> {
        while start.elapsed() < CHANGE_LIMIT {
            if let Ok(s) = map.get(&key, 0) {
                if s.generation != before {
                    return Some((start.elapsed(), s));
                }
            }
            thread::sleep(Duration::from_micros(200));
        }
        None
    });
    let name = format!("s{i}");
    let args = match verb {
        "drain" => vec!["drain", &name, "b0", "--reason", "scale bench"],
        _ => vec!["undrain", &name, "b0"],
    };
    let cli = daemon.ok(&args).map(|_| start.elapsed());
    // Joined also when the CLI failed: the poller ends by itself within CHANGE_LIMIT.
    let seen = poller.join().map_err(|_| "map poller panicked")?;
    let cli = cli?;
    let (kernel, service) = seen.ok_or_else(|| {
        format!("{verb} of s{i}/b0 did not reach the kernel within {CHANGE_LIMIT:?}")
    })?;
    Ok(Some((cli, kernel, VipTable::decode(vip, &service))))
}

/// One look at the steady state.
#[derive(Clone, Copy)]
struct Sample {
    at: Instant,
    daemon_cpu: f64,
    bench_cpu: f64,
    machine_busy: f64,
    accepts: u64,
    rss_kb: u64,
}

impl Sample {
    fn take(pid: u32, listeners: &Listeners) -> std::io::Result<Sample> {
        Ok(Sample {
            at: Instant::now(),
            daemon_cpu: cpu_seconds(pid)?,
            bench_cpu: cpu_seconds(std::process::id())?,
            machine_busy: machine_busy_seconds()?,
            accepts: listeners.accepts(),
            rss_kb: status_kb(pid, "VmRSS")?,
        })
    }
}

/// What the two `/metrics` scrapes said.
struct Skipped {
    /// Skipped slots since the daemon started, at the first scrape.
    total: f64,
    /// Skipped slots per second between the scrapes.
    per_s: f64,
    /// Probes per second the backends accepted between the scrapes.
    done_per_s: f64,
    /// How long the first scrape took, and its size.
    scrape: Duration,
    bytes: usize,
}

/// Everything one variant measured.
struct Outcome {
    variant: Variant,
    vips: usize,
    yaml_mb: f64,
    pinned: Duration,
    first: Duration,
    half: Duration,
    all: Duration,
    /// The widest gap between two looks at the map while loading: the resolution of the
    /// load times.
    poll_gap: Duration,
    load_cpu: f64,
    window: f64,
    cores: f64,
    bench_cores: f64,
    machine_cores: f64,
    probe_rate: f64,
    rss0_kb: u64,
    rss_kb: u64,
    hwm_kb: u64,
    anon_kb: u64,
    file_kb: u64,
    threads: u64,
    shapes: BTreeMap<String, usize>,
    status: String,
    cli_ms: Vec<f64>,
    kernel_ms: Vec<f64>,
    changes_failed: usize,
    changes_tried: usize,
    skipped: Result<Skipped, String>,
}

impl Outcome {
    fn wanted(&self) -> f64 {
        self.variant.targets(self.vips) as f64
    }
}

/// Runs the daemon on one variant's config and measures it.
fn run_variant(
    variant: Variant,
    vips: usize,
    listeners: &Listeners,
) -> Result<Outcome, Box<dyn std::error::Error>> {
    let (window, sample_every, changes, skip_window) = if quick() {
        (
            Duration::from_secs(10),
            Duration::from_secs(5),
            3,
            Duration::from_secs(5),
        )
    } else {
        (WINDOW, SAMPLE_EVERY, CHANGES, SKIP_WINDOW)
    };
    let ports = listeners.ports();
    let targets = variant.targets(vips);
    println!(
        "== {}: {vips} VIPs × {BACKENDS} backends, {targets} distinct probe targets, tcp every 1 s = {targets} probes/s wanted",
        variant.name()
    );
    let env = Env::new(&format!("scale-{}", variant.name()))?;
    let yaml = services_yaml(variant, vips, &ports);
    let yaml_mb = yaml.len() as f64 / 1e6;
    println!("config: {yaml_mb:.1} MB of YAML");

    // Loading: from spawn until every VIP has a table in the kernel.
    let start = Instant::now();
    // At 10,000 VIPs an operator turns the per-backend series off (docs/configuration.md):
    // with them, /metrics is ~200 MB per scrape and they hold most of the daemon's memory.
    let per_backend = std::env::var("FO_BENCH_PER_BACKEND").is_ok_and(|v| v == "1");
    let metrics = format!("metrics: {{ listen: '127.0.0.1:0', per_backend: {per_backend} }}\n");
    let mut daemon =
        DaemonProcess::with_sections(&env, &format!("scale-{}", variant.name()), &metrics, &yaml)?;
    daemon.spawn("warn", None)?;
    drop(yaml);
    let pid = daemon.pid().ok_or("the daemon did not start")?;
    let mut pinned = None;
    let mut looks: Vec<(Duration, usize)> = Vec::new();
    let mut map = None;
    while start.elapsed() < LOAD_LIMIT {
        daemon.check_alive()?;
        if map.is_none() {
            map = open_services(&env);
            if map.is_some() {
                pinned = Some(start.elapsed());
            }
        }
        if let Some(m) = &map {
            let n = m.keys().filter(Result::is_ok).count();
            looks.push((start.elapsed(), n));
            if n >= vips {
                break;
            }
        }
        thread::sleep(LOAD_POLL);
    }
    drop(map);
    let when = |at_least: usize| looks.iter().find(|(_, n)| *n >= at_least).map(|l| l.0);
    let all = when(vips).ok_or_else(|| {
        format!(
            "not every table reached the kernel within {LOAD_LIMIT:?} ({} of {vips})\n{}",
            looks.last().map_or(0, |l| l.1),
            daemon.log_tail(10)
        )
    })?;
    let first = when(1).unwrap_or_default();
    let half = when(vips / 2).unwrap_or_default();
    let poll_gap = looks
        .windows(2)
        .map(|w| w[1].0 - w[0].0)
        .max()
        .unwrap_or_default();
    let load_cpu = cpu_seconds(pid)?;
    println!(
        "load: maps pinned at {:.2} s, first table at {:.2} s, half at {:.2} s, all {vips} at {:.2} s after spawn (first → all {:.2} s; looks at the map up to {:.0} ms apart); daemon CPU so far {load_cpu:.1} s",
        pinned.unwrap_or_default().as_secs_f64(),
        first.as_secs_f64(),
        half.as_secs_f64(),
        all.as_secs_f64(),
        (all - first).as_secs_f64(),
        poll_gap.as_secs_f64() * 1e3,
    );

    // Steady state: RSS, CPU and probes over a window after a settle, sampled along the way.
    thread::sleep(SETTLE);
    let s0 = Sample::take(pid, listeners)?;
    let mut prev = s0;
    while s0.at.elapsed() < window {
        thread::sleep(sample_every.min(window.saturating_sub(s0.at.elapsed())));
        daemon.check_alive()?;
        let s = Sample::take(pid, listeners)?;
        let dt = (s.at - prev.at).as_secs_f64();
        println!(
            "  +{:>4.0} s: daemon {:.2} cores, bench {:.2} cores, machine {:.2} cores busy; probes done {:.0}/s; VmRSS {:.1} MiB",
            (s.at - s0.at).as_secs_f64(),
            (s.daemon_cpu - prev.daemon_cpu) / dt,
            (s.bench_cpu - prev.bench_cpu) / dt,
            (s.machine_busy - prev.machine_busy) / dt,
            (s.accepts - prev.accepts) as f64 / dt,
            s.rss_kb as f64 / 1024.0
        );
        prev = s;
    }
    let s1 = prev;
    let hwm_kb = status_kb(pid, "VmHWM")?;
    // Heap and the like against the binary's own pages; threads, for the runtime's size.
    let (anon_kb, file_kb) = (status_kb(pid, "RssAnon")?, status_kb(pid, "RssFile")?);
    let threads = status_kb(pid, "Threads")?;
    let dt = (s1.at - s0.at).as_secs_f64();
    let cores = (s1.daemon_cpu - s0.daemon_cpu) / dt;
    let probe_rate = (s1.accepts - s0.accepts) as f64 / dt;
    println!(
        "steady ({dt:.1} s window): daemon CPU {cores:.2} cores; probes done {probe_rate:.0}/s = {:.1}% of the {targets}/s wanted; VmRSS {:.1} → {:.1} MiB, VmHWM {:.1} MiB",
        100.0 * probe_rate / targets as f64,
        s0.rss_kb as f64 / 1024.0,
        s1.rss_kb as f64 / 1024.0,
        hwm_kb as f64 / 1024.0
    );
    println!(
        "memory at the end of the window: RssAnon {:.1} MiB, RssFile {:.1} MiB; {threads} threads",
        anon_kb as f64 / 1024.0,
        file_kb as f64 / 1024.0
    );

    // The kernel's view, independent of the daemon: the steady state is every VIP on its 4
    // priority-0 backends; anything else is a probe that failed or came too late.
    let tables = PinnedMaps::open(env.pins.path())?.tables()?;
    let mut shapes: BTreeMap<String, usize> = BTreeMap::new();
    for (vip, t) in &tables {
        let shape = match vip_index(vip).filter(|i| *i < vips) {
            None => format!("unknown VIP {}", vip.addr),
            Some(i) => {
                let mut want: Vec<SocketAddr> = (0..BACKENDS / 2)
                    .map(|k| backend_addr(variant, i, k, &ports))
                    .collect();
                want.sort();
                let mut got: Vec<SocketAddr> = t.table.backends.iter().map(|b| b.addr).collect();
                got.sort();
                if got == want {
                    "its 4 priority-0 backends".to_string()
                } else {
                    format!("{} backends, not its 4 priority-0 ones", got.len())
                }
            }
        };
        *shapes.entry(shape).or_insert(0) += 1;
    }
    drop(tables);
    println!("kernel tables at the end of the window: {shapes:?}");
    println!(
        "daemon log: {} lines at level warn; the last ones:\n{}",
        daemon.log_lines(),
        daemon.log_tail(3)
    );

    // One VIP's change, end to end.
    let mut cli_ms = Vec::new();
    let mut kernel_ms = Vec::new();
    let mut changes_failed = 0usize;
    for c in 0..changes {
        let i = (c * vips / changes + 7) % vips;
        let b0 = backend_addr(variant, i, 0, &ports);
        for verb in ["drain", "undrain"] {
            let took = Instant::now();
            let (cli, kernel, table) = match timed_change(&daemon, &env, i, b0, verb) {
                Ok(Some(c)) => c,
                Ok(None) => {
                    println!(
                        "{verb} s{i} b0: skipped, the kernel's table already is what it would make"
                    );
                    continue;
                }
                // The CLI giving up under load is a measurement, not a reason to stop.
                Err(e) => {
                    println!(
                        "{verb} s{i} b0: failed after {:.1} s: {e}",
                        took.elapsed().as_secs_f64()
                    );
                    changes_failed += 1;
                    continue;
                }
            };
            let has_b0 = table.backends.iter().any(|b| b.addr == b0);
            if has_b0 == (verb == "drain") {
                return Err(
                    format!("after {verb} of s{i}/b0 the kernel's table is {table:?}").into(),
                );
            }
            println!(
                "{verb} s{i} b0: CLI returned after {:.1} ms, kernel map changed after {:.1} ms",
                cli.as_secs_f64() * 1e3,
                kernel.as_secs_f64() * 1e3
            );
            cli_ms.push(cli.as_secs_f64() * 1e3);
            kernel_ms.push(kernel.as_secs_f64() * 1e3);
        }
    }

    // The daemon's own count of skipped probe slots, after the RSS reading: rendering every
    // series of 10,000 services is a large allocation that must not land in it.
    let skipped = (|| -> Result<Skipped, String> {
        let port = metrics_port(pid).map_err(|e| e.to_string())?;
        // Each scrape reads the counter soon after it starts: the rate is taken between the
        // two starts, and so are the probes done.
        let (a0, t0) = (listeners.accepts(), Instant::now());
        let (body, took) = scrape(port).map_err(|e| format!("scrape of :{port}: {e}"))?;
        let total = metric_total(&body, SKIPPED_METRIC)
            .ok_or_else(|| format!("no {SKIPPED_METRIC} in /metrics"))?;
        let bytes = body.len();
        drop(body);
        thread::sleep(skip_window.saturating_sub(t0.elapsed()));
        let (a1, dt) = (listeners.accepts(), t0.elapsed().as_secs_f64());
        let (body, _) = scrape(port).map_err(|e| format!("scrape of :{port}: {e}"))?;
        let later = metric_total(&body, SKIPPED_METRIC)
            .ok_or_else(|| format!("no {SKIPPED_METRIC} in /metrics"))?;
        Ok(Skipped {
            total,
            per_s: (later - total) / dt,
            done_per_s: (a1 - a0) as f64 / dt,
            scrape: took,
            bytes,
        })
    })();
    match &skipped {
        Ok(s) => println!(
            "{SKIPPED_METRIC}: {:.0} since start; {:.0}/s over the next {:.0} s, while the backends accepted {:.0} probes/s; one scrape took {:.2} s for {:.1} MB",
            s.total,
            s.per_s,
            skip_window.as_secs_f64(),
            s.done_per_s,
            s.scrape.as_secs_f64(),
            s.bytes as f64 / 1e6
        ),
        Err(e) => println!("{SKIPPED_METRIC}: not read: {e}"),
    }
    // What the daemon itself says, last: at this scale building the answer is a long stretch
    // of CPU that would distort the measurements above if they came after it. Asked on the
    // control socket directly, so the answer is timed even past the CLI's 10 s; the CLI itself
    // runs too when the daemon answered within its limit.
    let status = match raw_status(daemon.socket()) {
        Ok((took, report)) => {
            let mut states: BTreeMap<String, usize> = BTreeMap::new();
            for b in report.services.iter().flat_map(|s| &s.backends) {
                *states.entry(b.state.clone()).or_insert(0) += 1;
            }
            let cli = if took < CLI_LIMIT {
                let start = Instant::now();
                match daemon.ok(&["status", "--output", "json"]) {
                    Ok(_) => format!("the CLI took {:.2} s", start.elapsed().as_secs_f64()),
                    Err(e) => format!(
                        "the CLI failed after {:.2} s: {e}",
                        start.elapsed().as_secs_f64()
                    ),
                }
            } else {
                format!("beyond the CLI's {CLI_LIMIT:?}, after which it gives up")
            };
            format!(
                "{:.2} s ({cli}); backends by state {states:?}",
                took.as_secs_f64()
            )
        }
        Err(e) => e,
    };
    println!("`GET /v1/status` (what `failoverd status` asks): {status}");
    daemon.check_alive()?;
    println!();

    Ok(Outcome {
        variant,
        vips,
        yaml_mb,
        pinned: pinned.unwrap_or_default(),
        first,
        half,
        all,
        poll_gap,
        load_cpu,
        window: dt,
        cores,
        bench_cores: (s1.bench_cpu - s0.bench_cpu) / dt,
        machine_cores: (s1.machine_busy - s0.machine_busy) / dt,
        probe_rate,
        rss0_kb: s0.rss_kb,
        rss_kb: s1.rss_kb,
        hwm_kb,
        anon_kb,
        file_kb,
        threads,
        shapes,
        status,
        cli_ms,
        kernel_ms,
        changes_failed,
        changes_tried: changes * 2,
        skipped,
    })
}

/// `FO_BENCH_SWEEP=1`: instead of the side-by-side run, the shared variant at growing
/// numbers of VIPs, drawn as RSS and table-load time against VIPs (docs/figures/).
const SWEEP_ENV: &str = "FO_BENCH_SWEEP";

/// The sweep's sizes.
const SWEEP: [usize; 4] = [1_000, 2_500, 5_000, 10_000];

/// `FO_BENCH_SWEEP_VIPS=10000[,2500…]`: only these sizes, and no figures (a quick look at one
/// size while changing the daemon's memory).
const SWEEP_VIPS_ENV: &str = "FO_BENCH_SWEEP_VIPS";

fn sweep(listeners: &Listeners) -> Result<(), Box<dyn std::error::Error>> {
    let chosen: Option<Vec<usize>> = std::env::var(SWEEP_VIPS_ENV)
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect());
    let sizes = chosen.clone().unwrap_or_else(|| SWEEP.to_vec());
    let mut rss = Vec::new();
    let mut load = Vec::new();
    for vips in sizes {
        let o = run_variant(Variant::Shared, vips, listeners)?;
        rss.push((vips as f64, o.rss_kb as f64 / 1024.0));
        load.push((vips as f64, o.all.as_secs_f64()));
        println!(
            "sweep: {vips} VIPs: VmRSS {:.1} MiB, every table in the kernel {:.2} s after spawn",
            o.rss_kb as f64 / 1024.0,
            o.all.as_secs_f64()
        );
    }
    if chosen.is_some() {
        return Ok(());
    }
    common::figures::line(
        &common::figures::path("scale-rss.svg"),
        "daemon VmRSS against VIPs (× 8 backends, shared probing, per_backend: false)",
        "VIPs",
        "MiB",
        &rss,
    )?;
    common::figures::line(
        &common::figures::path("scale-load.svg"),
        "spawn → every VIP's table in the kernel, against VIPs",
        "VIPs",
        "seconds",
        &load,
    )?;
    println!("figures: docs/figures/scale-rss.svg, docs/figures/scale-load.svg");
    Ok(())
}

fn bench() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var(SWEEP_ENV).is_ok_and(|v| v == "1") {
        return sweep(&Listeners::start(BACKENDS)?);
    }
    let vips = if quick() { 1_000 } else { VIPS };
    println!(
        "scale: {vips} VIPs × {BACKENDS} backends, tcp probes every 1 s; variants: shared (the same 8 addresses in every VIP) and distinct (an address per backend)"
    );
    println!(
        "kernel {}, {} CPUs\n",
        kernel(),
        thread::available_parallelism()?.get()
    );
    let listeners = Listeners::start(BACKENDS)?;
    let mut outcomes = Vec::new();
    for variant in [Variant::Shared, Variant::Distinct] {
        outcomes.push(run_variant(variant, vips, &listeners)?);
    }
    print_table(&outcomes);
    Ok(())
}

/// A row of the side-by-side table: its label and how to fill a variant's cell.
type Row<'a> = (&'a str, Box<dyn Fn(&Outcome) -> String>);

/// The side-by-side table for docs/benchmarks.md.
fn print_table(outcomes: &[Outcome]) {
    let worst = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    let mib = |kb: u64| kb as f64 / 1024.0;
    let rows: Vec<Row> = vec![
        (
            "VIPs × backends",
            Box::new(|o| format!("{} × {BACKENDS}", o.vips)),
        ),
        (
            "distinct probe targets (probes/s wanted)",
            Box::new(|o| format!("{:.0}", o.wanted())),
        ),
        ("config size", Box::new(|o| format!("{:.1} MB", o.yaml_mb))),
        (
            "spawn → services map pinned",
            Box::new(|o| format!("{:.2} s", o.pinned.as_secs_f64())),
        ),
        (
            "spawn → first table in the kernel",
            Box::new(|o| format!("{:.2} s", o.first.as_secs_f64())),
        ),
        (
            "spawn → half the tables in the kernel",
            Box::new(|o| format!("{:.2} s", o.half.as_secs_f64())),
        ),
        (
            "spawn → all tables in the kernel",
            Box::new(|o| format!("{:.2} s", o.all.as_secs_f64())),
        ),
        (
            "first → last table in the kernel (resolution: one look at the map)",
            Box::new(|o| {
                format!(
                    "{:.2} s (±{:.0} ms)",
                    (o.all - o.first).as_secs_f64(),
                    o.poll_gap.as_secs_f64() * 1e3
                )
            }),
        ),
        (
            "daemon CPU from spawn to all tables",
            Box::new(|o| format!("{:.1} s", o.load_cpu)),
        ),
        ("steady window", Box::new(|o| format!("{:.0} s", o.window))),
        (
            "daemon CPU, steady",
            Box::new(|o| format!("{:.2} cores", o.cores)),
        ),
        (
            "bench process CPU (the 8 listeners), steady",
            Box::new(|o| format!("{:.2} cores", o.bench_cores)),
        ),
        (
            "machine busy, steady (all processes)",
            Box::new(|o| format!("{:.2} cores", o.machine_cores)),
        ),
        (
            "probes/s done (backends' accepts)",
            Box::new(|o| {
                format!(
                    "{:.0} ({:.1} %)",
                    o.probe_rate,
                    100.0 * o.probe_rate / o.wanted()
                )
            }),
        ),
        (
            "`failoverd_probes_skipped_total`: since start; per s afterwards",
            Box::new(|o| match &o.skipped {
                Ok(s) => format!("{:.0}; {:.0}/s", s.total, s.per_s),
                Err(e) => format!("not read ({e})"),
            }),
        ),
        (
            "probes/s done while skipped/s was counted",
            Box::new(|o| match &o.skipped {
                Ok(s) => format!("{:.0}", s.done_per_s),
                Err(_) => "–".into(),
            }),
        ),
        (
            "one `/metrics` scrape",
            Box::new(|o| match &o.skipped {
                Ok(s) => format!(
                    "{:.2} s, {:.1} MB",
                    s.scrape.as_secs_f64(),
                    s.bytes as f64 / 1e6
                ),
                Err(_) => "–".into(),
            }),
        ),
        (
            "VmRSS at the start → end of the window",
            Box::new(move |o| format!("{:.1} → {:.1} MiB", mib(o.rss0_kb), mib(o.rss_kb))),
        ),
        (
            "VmHWM at the end of the window",
            Box::new(move |o| format!("{:.1} MiB", mib(o.hwm_kb))),
        ),
        (
            "of VmRSS: anonymous (heap) / file-backed; daemon threads",
            Box::new(move |o| {
                format!(
                    "{:.1} / {:.1} MiB; {}",
                    mib(o.anon_kb),
                    mib(o.file_kb),
                    o.threads
                )
            }),
        ),
        (
            "kernel tables at the end of the window",
            Box::new(|o| format!("{:?}", o.shapes)),
        ),
        (
            "`GET /v1/status` (what `failoverd status` asks)",
            Box::new(|o| o.status.clone()),
        ),
        (
            "drain/undrain: CLI round trip, median (worst)",
            Box::new(move |o| {
                format!(
                    "{:.1} ({:.1}) ms",
                    median(o.cli_ms.clone()),
                    worst(&o.cli_ms)
                )
            }),
        ),
        (
            "drain/undrain: kernel map changed, median (worst)",
            Box::new(move |o| {
                format!(
                    "{:.1} ({:.1}) ms",
                    median(o.kernel_ms.clone()),
                    worst(&o.kernel_ms)
                )
            }),
        ),
        (
            "drain/undrain that failed",
            Box::new(|o| format!("{} of {}", o.changes_failed, o.changes_tried)),
        ),
    ];
    let names: Vec<&str> = outcomes.iter().map(|o| o.variant.name()).collect();
    println!("| measure | {} |", names.join(" | "));
    println!("|---|{}", "---:|".repeat(outcomes.len()));
    for (label, cell) in &rows {
        let cells: Vec<String> = outcomes.iter().map(cell).collect();
        println!("| {label} | {} |", cells.join(" | "));
    }
}
