//! Connect rate through a failoverd VIP, HAProxy and an iptables DNAT rule, against direct
//! connects to the backend, in one run.
//!
//! Run as root: `cargo bench -p failoverd --bench connect_rate`. Six clients take turns, round
//! after round, so a noisy machine slows all of them alike: direct from outside the cgroup (no
//! hook runs), direct from inside it (the hook runs and finds no VIP), through the VIP (the hook
//! rewrites), through HAProxy in `mode tcp`, and, inside a network namespace the bench creates,
//! direct and through a kube-proxy style `iptables -t nat -A OUTPUT ... -j DNAT` rule. Each
//! round is `connect + close` and `connect + 1-byte echo + close`.
//!
//! To keep a 2-core machine's noise out of the ratios the client is pinned to CPU 0 and the
//! backends to CPU 1 (HAProxy runs one thread per CPU, unpinned, its fastest setting here),
//! the order of paths rotates every round, and ratios are taken round by round (paired)
//! before the median. The kernel's own BPF run-time statistics give the connect4 hook's cost
//! per call directly. `FO_BENCH_QUICK=1` runs 3 short rounds.

#[path = "../tests/support/mod.rs"]
mod support;

mod common;

use std::{
    fs::File,
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc,
    },
    thread,
    time::{Duration, Instant},
};

use common::{
    free_port, kernel, linger_zero, median, median_ratio, pct, pin_to_cpu,
    programs::{attached, run_stats, BPF_CGROUP_INET4_CONNECT},
    quick, Haproxy, HAPROXY_BASE,
};
use failoverd::datapath::{
    BpfDatapath, CgroupSpec, Datapath, DatapathConfig, Protocol, TableBackend, Vip, VipTable,
};
use serde::{Deserialize, Serialize};
use support::{
    cgroup::TestCgroup,
    client::place_child,
    netns::{enter_netns_fd, TestNetns},
    pins::TestPinDir,
};

/// Environment variable carrying a client's JSON `Spec`; its presence makes the bench binary a
/// client.
const CLIENT_ENV: &str = "FO_BENCH_CLIENT";
/// The failoverd VIP.
const VIP: &str = "127.77.250.1:80";
/// A second failoverd VIP on the same backend (see `Target::SharedVip`).
const SHARED_VIP: &str = "127.77.250.2:80";
/// The address the iptables DNAT rule rewrites (inside the bench's netns).
const DNAT_VIP: &str = "127.77.251.1:80";
/// Rounds per mode (3 in quick mode).
const ROUNDS: usize = 15;
/// Connects per path, round and mode (2,000 in quick mode).
const CONNECTS_PER_ROUND: u32 = 10_000;
/// The client's CPU.
const CLIENT_CPU: usize = 0;
/// The backends' CPU.
const BACKEND_CPU: usize = 1;

/// What each connect does.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// `connect + close`.
    ConnectClose,
    /// `connect + write 1 byte + read the echo + close`.
    Echo,
}

/// A client run's instructions.
#[derive(Serialize, Deserialize)]
struct Spec {
    target: SocketAddr,
    mode: Mode,
    count: u32,
}

/// What a client run measured.
#[derive(Serialize, Deserialize, Default, Clone)]
struct Run {
    elapsed_ns: u64,
    latencies_ns: Vec<u32>,
    failed: u32,
}

fn main() {
    if let Ok(spec) = std::env::var(CLIENT_ENV) {
        let spec: Spec = serde_json::from_str(&spec).expect("bench client spec");
        println!("{}", serde_json::to_string(&client(&spec)).expect("report"));
        return;
    }
    // `cargo bench` passes `--bench`; nothing else is accepted.
    if let Err(e) = bench() {
        eprintln!("connect_rate: {e}");
        std::process::exit(1);
    }
}

/// One client run: `count` connects, each closed with a RST (SO_LINGER 0) so that no TIME_WAIT
/// piles up and eats the ephemeral ports between rounds.
fn client(spec: &Spec) -> Run {
    pin_to_cpu(CLIENT_CPU);
    let mut run = Run {
        latencies_ns: Vec::with_capacity(spec.count as usize),
        ..Run::default()
    };
    let start = Instant::now();
    for _ in 0..spec.count {
        let t = Instant::now();
        let Ok(mut s) = TcpStream::connect(spec.target) else {
            run.failed += 1;
            continue;
        };
        if spec.mode == Mode::Echo {
            // Bounded: a proxy that drops the connection must not hang the round.
            s.set_read_timeout(Some(Duration::from_secs(5))).ok();
            let mut b = [0u8; 1];
            if s.write_all(b"x")
                .and_then(|()| s.read_exact(&mut b))
                .is_err()
            {
                run.failed += 1;
                continue;
            }
        }
        linger_zero(&s);
        drop(s);
        run.latencies_ns
            .push(t.elapsed().as_nanos().min(u128::from(u32::MAX)) as u32);
    }
    run.elapsed_ns = start.elapsed().as_nanos() as u64;
    run
}

/// An echo backend: accept, echo what arrives until EOF, close. Two threads on `BACKEND_CPU`.
struct Backend {
    addr: SocketAddr,
    /// Kept to shut it down on drop.
    listener: TcpListener,
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Backend {
    /// Listens on 127.0.0.1 (any port) in the network namespace `netns` is a handle on, or in
    /// the bench's own when `None`. A socket belongs to the namespace of the thread that creates
    /// it, so a helper thread enters the netns, binds, and hands the listener back; the serving
    /// threads then need no namespace of their own.
    fn start(netns: Option<File>) -> std::io::Result<Backend> {
        let listener = match netns {
            None => TcpListener::bind("127.0.0.1:0")?,
            Some(ns) => {
                let (tx, rx) = mpsc::channel();
                thread::spawn(move || {
                    let bound = enter_netns_fd(&ns).and_then(|()| TcpListener::bind("127.0.0.1:0"));
                    // The receiver waits for exactly this message.
                    tx.send(bound).ok();
                });
                rx.recv()
                    .map_err(|_| std::io::Error::other("netns bind thread died"))??
            }
        };
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..2)
            .map(|_| {
                let listener = listener.try_clone().expect("clone listener");
                let stop = Arc::clone(&stop);
                thread::spawn(move || {
                    pin_to_cpu(BACKEND_CPU);
                    while !stop.load(Ordering::Relaxed) {
                        let Ok((mut s, _)) = listener.accept() else {
                            continue;
                        };
                        let mut b = [0u8; 1];
                        while let Ok(1) = s.read(&mut b) {
                            if s.write_all(&b).is_err() {
                                break;
                            }
                        }
                    }
                })
            })
            .collect();
        Ok(Backend {
            addr,
            listener,
            stop,
            threads,
        })
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake every blocked accept so the threads see the stop flag: shutdown on a listening
        // socket makes accept fail at once, whichever netns the listener lives in (a wake-up
        // connect from here would reach only the bench's own namespace).
        // SAFETY: a plain syscall on a socket we keep open until the threads are joined.
        unsafe { libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR) };
        for t in self.threads.drain(..) {
            t.join().expect("backend thread");
        }
    }
}

/// Runs one client to completion, placed in `cgroup` and/or `netns`.
fn run_client(
    cgroup: Option<&TestCgroup>,
    netns: Option<&TestNetns>,
    spec: &Spec,
) -> Result<Run, Box<dyn std::error::Error>> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.env(CLIENT_ENV, serde_json::to_string(spec)?)
        .stdout(Stdio::piped());
    place_child(&mut cmd, cgroup, netns)?;
    let out = cmd.output()?;
    if !out.status.success() {
        return Err(format!("client exited with {}", out.status).into());
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// Where a path's client connects.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Target {
    /// The echo backend in the bench's netns.
    Backend,
    /// The failoverd VIP.
    Vip,
    /// HAProxy's frontend.
    Haproxy,
    /// The echo backend inside the bench's netns.
    NetnsBackend,
    /// The DNAT'ed address inside the bench's netns.
    Dnat,
    /// A second VIP naming the same backend: its sockets keep socket storage (the cost every
    /// TCP connect paid before layout v3).
    SharedVip,
}

/// One way to the backend.
struct Path {
    name: &'static str,
    /// The client joins the bench cgroup (the connect4 hook runs).
    inside: bool,
    /// The client runs in the bench's netns.
    in_netns: bool,
    target: Target,
}

/// Index of each path in `PATHS`, for the ratio lines.
const DIRECT: usize = 0;
const DIRECT_HOOK: usize = 1;
const THROUGH_VIP: usize = 2;
const THROUGH_HAPROXY: usize = 3;
const NETNS_DIRECT: usize = 4;
const THROUGH_DNAT: usize = 5;

const PATHS: [Path; 7] = [
    Path {
        name: "direct, no hook (outside the cgroup)",
        inside: false,
        in_netns: false,
        target: Target::Backend,
    },
    Path {
        name: "direct, hook runs (inside the cgroup)",
        inside: true,
        in_netns: false,
        target: Target::Backend,
    },
    Path {
        name: "through the failoverd VIP",
        inside: true,
        in_netns: false,
        target: Target::Vip,
    },
    Path {
        name: "through HAProxy (mode tcp)",
        inside: false,
        in_netns: false,
        target: Target::Haproxy,
    },
    Path {
        name: "direct, in the netns (conntrack on)",
        inside: false,
        in_netns: true,
        target: Target::NetnsBackend,
    },
    Path {
        name: "through iptables DNAT (in the netns)",
        inside: false,
        in_netns: true,
        target: Target::Dnat,
    },
    Path {
        name: "through a VIP sharing its backend (socket storage)",
        inside: true,
        in_netns: false,
        target: Target::SharedVip,
    },
];

/// HAProxy as a fair opponent on this 2-core machine: `nbthread 2` unpinned (its own default
/// here: one thread per CPU), which measured at least as fast as one thread pinned to the
/// backend's CPU or to the client's; no logging; no health checks (the VIP path has no daemon
/// probing either); a connection limit far above what one client opens, and within the 20,000
/// open files allowed here; the timeouts of Debian's stock config.
fn haproxy_config(port: u16, backend: SocketAddr) -> String {
    format!(
        "global\n\
         \x20   nbthread 2\n\
         {HAPROXY_BASE}\
         listen bench\n\
         \x20   bind 127.0.0.1:{port}\n\
         \x20   server b {backend}\n"
    )
}

/// Adds the kube-proxy style rule `OUTPUT -d DNAT_VIP -j DNAT --to-destination <to>` in `netns`;
/// it goes away with the namespace.
fn add_dnat(netns: &TestNetns, to: SocketAddr) -> Result<(), Box<dyn std::error::Error>> {
    let vip: SocketAddr = DNAT_VIP.parse()?;
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            netns.name(),
            "iptables",
            "-t",
            "nat",
            "-A",
            "OUTPUT",
        ])
        .args(["-d", &format!("{}/32", vip.ip()), "-p", "tcp"])
        .args(["--dport", &vip.port().to_string(), "-j", "DNAT"])
        .args(["--to-destination", &to.to_string()])
        .output()?;
    if !out.status.success() {
        return Err(format!(
            "iptables DNAT rule in {}: {}",
            netns.name(),
            String::from_utf8_lossy(&out.stderr).trim()
        )
        .into());
    }
    Ok(())
}

/// Everything the paths need, torn down in field order: HAProxy, backends, netns, pins (which
/// detaches the hooks), cgroup.
struct Setup {
    haproxy: Haproxy,
    backend: Backend,
    netns_backend: Backend,
    netns: TestNetns,
    _datapath: BpfDatapath,
    _pins: TestPinDir,
    cgroup: TestCgroup,
    vip: Vip,
    haproxy_addr: SocketAddr,
}

impl Setup {
    fn new() -> Result<Setup, Box<dyn std::error::Error>> {
        let cgroup = TestCgroup::new("bench")?;
        let pins = TestPinDir::new("bench")?;
        let netns = TestNetns::new("bench")?;
        let backend = Backend::start(None)?;
        let netns_backend = Backend::start(Some(netns.open()?))?;
        add_dnat(&netns, netns_backend.addr)?;
        let mut datapath = BpfDatapath::open(&DatapathConfig {
            cgroup: CgroupSpec::Path(cgroup.path().to_path_buf()),
            pin_dir: pins.path().to_path_buf(),
        })?;
        let vip = Vip {
            addr: VIP.parse()?,
            protocol: Protocol::Tcp,
        };
        datapath.apply(&VipTable::weighted(
            vip,
            1,
            vec![TableBackend {
                addr: backend.addr,
                id: 2,
            }],
            &[1],
        )?)?;
        datapath.apply(&VipTable::weighted(
            Vip {
                addr: SHARED_VIP.parse()?,
                protocol: Protocol::Tcp,
            },
            3,
            vec![TableBackend {
                addr: backend.addr,
                id: 4,
            }],
            &[1],
        )?)?;
        let haproxy_addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let haproxy = Haproxy::start(
            "rate",
            &haproxy_config(haproxy_addr.port(), backend.addr),
            haproxy_addr,
        )?;
        Ok(Setup {
            haproxy,
            backend,
            netns_backend,
            netns,
            _datapath: datapath,
            _pins: pins,
            cgroup,
            vip,
            haproxy_addr,
        })
    }

    fn target(&self, t: Target) -> Result<SocketAddr, Box<dyn std::error::Error>> {
        Ok(match t {
            Target::Backend => self.backend.addr,
            Target::Vip => self.vip.addr,
            Target::Haproxy => self.haproxy_addr,
            Target::NetnsBackend => self.netns_backend.addr,
            Target::Dnat => DNAT_VIP.parse()?,
            Target::SharedVip => SHARED_VIP.parse()?,
        })
    }
}

fn bench() -> Result<(), Box<dyn std::error::Error>> {
    let (rounds, per_round) = if quick() {
        (3, 2_000)
    } else {
        (ROUNDS, CONNECTS_PER_ROUND)
    };
    let setup = Setup::new()?;

    // Run-time statistics cost a little on every BPF call; they are on only
    // while this process holds the fd.
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)?;
    let hook_ids = attached(setup.cgroup.path(), BPF_CGROUP_INET4_CONNECT)?;
    if hook_ids.is_empty() {
        return Err("no connect4 program is attached to the bench cgroup".into());
    }

    println!("connect rate: {rounds} rounds × {per_round} connects per path and mode, path order rotating");
    println!(
        "kernel {}, {} CPUs, client on CPU {CLIENT_CPU}, backends on CPU {BACKEND_CPU}, HAProxy unpinned\n",
        kernel(),
        thread::available_parallelism()?.get()
    );
    for mode in [Mode::ConnectClose, Mode::Echo] {
        let n = PATHS.len();
        let mut rates: Vec<Vec<f64>> = vec![Vec::new(); n];
        let mut latencies: Vec<Vec<u32>> = vec![Vec::new(); n];
        let mut failed = vec![0u32; n];
        let mut hook = vec![(0u64, 0u64); n];
        for round in 0..rounds {
            for k in 0..n {
                let i = (round + k) % n;
                let p = &PATHS[i];
                let spec = Spec {
                    target: setup.target(p.target)?,
                    mode,
                    count: per_round,
                };
                let before = run_stats(&hook_ids);
                let run = run_client(
                    p.inside.then_some(&setup.cgroup),
                    p.in_netns.then_some(&setup.netns),
                    &spec,
                )?;
                let after = run_stats(&hook_ids);
                hook[i].0 += after.0 - before.0;
                hook[i].1 += after.1 - before.1;
                rates[i].push(f64::from(per_round - run.failed) / (run.elapsed_ns as f64 / 1e9));
                latencies[i].extend(run.latencies_ns);
                failed[i] += run.failed;
            }
        }
        println!("{mode:?}:");
        println!("| path | connects/s (median) | ratio to direct, no hook (median of rounds) | p50 µs | p99 µs | connect4 hook ns/call | failed |");
        println!("|---|---:|---:|---:|---:|---:|---:|");
        for (i, p) in PATHS.iter().enumerate() {
            latencies[i].sort_unstable();
            let hook_ns = hook[i]
                .1
                .checked_div(hook[i].0)
                .map_or("–".to_string(), |ns| ns.to_string());
            println!(
                "| {} | {:.0} | {:.3} | {:.1} | {:.1} | {hook_ns} | {} |",
                p.name,
                median(rates[i].clone()),
                median_ratio(&rates[i], &rates[DIRECT]),
                pct(&latencies[i], 0.50) / 1e3,
                pct(&latencies[i], 0.99) / 1e3,
                failed[i]
            );
        }
        let bars: Vec<(&str, f64)> = PATHS
            .iter()
            .enumerate()
            .map(|(i, p)| (p.name, median(rates[i].clone())))
            .collect();
        let file = match mode {
            Mode::ConnectClose => "connect-rate-connect-close.svg",
            Mode::Echo => "connect-rate-echo.svg",
        };
        common::figures::bars(
            &common::figures::path(file),
            &format!("connects per second, median of rounds ({mode:?})"),
            "connects/s",
            &bars,
        )?;
        println!("figure: docs/figures/{file}");
        println!(
            "VIP / direct with the hook running (median of rounds): {:.3}",
            median_ratio(&rates[THROUGH_VIP], &rates[DIRECT_HOOK])
        );
        println!(
            "VIP / HAProxy (median of rounds): {:.2}",
            median_ratio(&rates[THROUGH_VIP], &rates[THROUGH_HAPROXY])
        );
        println!(
            "VIP / iptables DNAT (median of rounds): {:.2}",
            median_ratio(&rates[THROUGH_VIP], &rates[THROUGH_DNAT])
        );
        println!(
            "DNAT / direct in the same netns (median of rounds): {:.3}\n",
            median_ratio(&rates[THROUGH_DNAT], &rates[NETNS_DIRECT])
        );
    }
    let down = setup.haproxy.log();
    if !down.trim().is_empty() {
        println!("HAProxy said:\n{down}");
    }
    Ok(())
}
