//! Connect rate through a failoverd VIP against direct connects to the backend, in one run.
//!
//! Run as root: `cargo bench -p failoverd --bench connect_rate`. Three clients
//! take turns, round after round, so a noisy machine slows all of them alike:
//! direct from outside the cgroup (no hook runs), direct from inside it (the
//! hook runs and finds no VIP), and through the VIP (the hook rewrites). Each
//! round is `connect + close` and `connect + 1-byte echo + close`.
//!
//! To keep a 2-core machine's noise out of the ratios the client is pinned to
//! CPU 0 and the backend to CPU 1, the order of paths rotates every round, and
//! ratios are taken round by round (paired) before the median. The kernel's own
//! BPF run-time statistics give the connect4 hook's cost per call directly.

#[path = "../tests/support/mod.rs"]
mod support;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::Instant,
};

use failoverd::datapath::{
    BpfDatapath, CgroupSpec, Datapath, DatapathConfig, Protocol, TableBackend, Vip, VipTable,
};
use serde::{Deserialize, Serialize};
use support::{cgroup::TestCgroup, client::place_child, pins::TestPinDir};

const CLIENT_ENV: &str = "FO_BENCH_CLIENT";
const VIP: &str = "127.77.250.1:80";
const ROUNDS: usize = 15;
const CONNECTS_PER_ROUND: u32 = 10_000;
const CLIENT_CPU: usize = 0;
const BACKEND_CPU: usize = 1;

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    ConnectClose,
    Echo,
}

#[derive(Serialize, Deserialize)]
struct Spec {
    target: SocketAddr,
    mode: Mode,
    count: u32,
}

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

/// One client run: `count` connects, each closed with a RST (SO_LINGER 0) so
/// that no TIME_WAIT piles up and eats the ephemeral ports between rounds.
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

/// Pins the calling thread to one CPU (ignored on a 1-CPU machine).
fn pin_to_cpu(cpu: usize) {
    if thread::available_parallelism().map_or(1, |n| n.get()) <= cpu {
        return;
    }
    // SAFETY: cpu_set_t is plain data; CPU_SET writes inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Calls and total run time of every loaded `fo_connect4` program (this
/// benchmark's is the only one while it runs).
fn connect4_stats() -> (u64, u64) {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| p.name_as_str() == Some("fo_connect4"))
        .fold((0, 0), |(n, t), p| {
            (n + p.run_count(), t + p.run_time().as_nanos() as u64)
        })
}

fn linger_zero(s: &TcpStream) {
    use std::os::fd::AsRawFd;
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket fd and a properly sized linger struct.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as u32,
        );
    }
}

/// An echo backend: accept, echo what arrives until EOF, close.
struct Backend {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Backend {
    fn start() -> std::io::Result<Backend> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
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
            stop,
            threads,
        })
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for _ in &self.threads {
            let _wake = TcpStream::connect(self.addr);
        }
        for t in self.threads.drain(..) {
            t.join().expect("backend thread");
        }
    }
}

fn run_client(cgroup: Option<&TestCgroup>, spec: &Spec) -> Result<Run, Box<dyn std::error::Error>> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.env(CLIENT_ENV, serde_json::to_string(spec)?)
        .stdout(Stdio::piped());
    place_child(&mut cmd, cgroup, None)?;
    let out = cmd.output()?;
    if !out.status.success() {
        return Err(format!("client exited with {}", out.status).into());
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

struct Path3 {
    name: &'static str,
    inside: bool,
    via_vip: bool,
}

const PATHS: [Path3; 3] = [
    Path3 {
        name: "direct, no hook (outside the cgroup)",
        inside: false,
        via_vip: false,
    },
    Path3 {
        name: "direct, hook runs (inside the cgroup)",
        inside: true,
        via_vip: false,
    },
    Path3 {
        name: "through the VIP",
        inside: true,
        via_vip: true,
    },
];

fn bench() -> Result<(), Box<dyn std::error::Error>> {
    let cgroup = TestCgroup::new("bench")?;
    let pins = TestPinDir::new("bench")?;
    let backend = Backend::start()?;
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

    // Run-time statistics cost a little on every BPF call; they are on only
    // while this process holds the fd.
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)?;

    println!("connect rate: {ROUNDS} rounds × {CONNECTS_PER_ROUND} connects per path and mode, path order rotating");
    println!(
        "kernel {}, {} CPUs, client on CPU {CLIENT_CPU}, backend on CPU {BACKEND_CPU}\n",
        kernel(),
        thread::available_parallelism()?.get()
    );
    for mode in [Mode::ConnectClose, Mode::Echo] {
        let mut rates: Vec<Vec<f64>> = vec![Vec::new(); PATHS.len()];
        let mut latencies: Vec<Vec<u32>> = vec![Vec::new(); PATHS.len()];
        let mut failed = [0u32; 3];
        let mut hook = [(0u64, 0u64); 3];
        for round in 0..ROUNDS {
            for k in 0..PATHS.len() {
                let i = (round + k) % PATHS.len();
                let p = &PATHS[i];
                let target = if p.via_vip { vip.addr } else { backend.addr };
                let spec = Spec {
                    target,
                    mode,
                    count: CONNECTS_PER_ROUND,
                };
                let before = connect4_stats();
                let run = run_client(p.inside.then_some(&cgroup), &spec)?;
                let after = connect4_stats();
                hook[i].0 += after.0 - before.0;
                hook[i].1 += after.1 - before.1;
                rates[i].push(
                    f64::from(CONNECTS_PER_ROUND - run.failed) / (run.elapsed_ns as f64 / 1e9),
                );
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
                median_ratio(&rates[i], &rates[0]),
                pct(&latencies[i], 0.50) / 1e3,
                pct(&latencies[i], 0.99) / 1e3,
                failed[i]
            );
        }
        println!(
            "VIP / direct with the hook running (median of rounds): {:.3}\n",
            median_ratio(&rates[2], &rates[1])
        );
    }
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// The median of round-by-round ratios: each pair ran back to back, so slow
/// phases of the machine cancel out.
fn median_ratio(a: &[f64], b: &[f64]) -> f64 {
    median(a.iter().zip(b).map(|(x, y)| x / y).collect())
}

fn pct(sorted: &[u32], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    f64::from(sorted[((sorted.len() - 1) as f64 * q) as usize])
}

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}
