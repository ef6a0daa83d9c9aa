//! Connect rate through a failoverd VIP against direct connects to the backend, in one run.
//!
//! Run as root: `cargo bench -p failoverd --bench connect_rate`. Three clients
//! take turns, round after round, so a noisy machine slows all of them alike:
//! direct from outside the cgroup (no hook runs), direct from inside it (the
//! hook runs and finds no VIP), and through the VIP (the hook rewrites). Each
//! round is `connect + close` and `connect + 1-byte echo + close`.

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
const ROUNDS: usize = 7;
const CONNECTS_PER_ROUND: u32 = 20_000;

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

    println!("connect rate, {ROUNDS} interleaved rounds of {CONNECTS_PER_ROUND} connects per path and mode");
    println!(
        "kernel {}, {} CPUs\n",
        kernel(),
        thread::available_parallelism()?.get()
    );
    for mode in [Mode::ConnectClose, Mode::Echo] {
        let mut runs: Vec<Vec<Run>> = vec![Vec::new(); PATHS.len()];
        for _ in 0..ROUNDS {
            for (i, p) in PATHS.iter().enumerate() {
                let target = if p.via_vip { vip.addr } else { backend.addr };
                let spec = Spec {
                    target,
                    mode,
                    count: CONNECTS_PER_ROUND,
                };
                runs[i].push(run_client(p.inside.then_some(&cgroup), &spec)?);
            }
        }
        let rates: Vec<f64> = runs.iter().map(|r| median_rate(r)).collect();
        println!("{mode:?}:");
        println!("| path | connects/s (median of rounds) | × direct (no hook) | p50 µs | p99 µs | failed |");
        println!("|---|---:|---:|---:|---:|---:|");
        for (i, p) in PATHS.iter().enumerate() {
            let mut lat: Vec<u32> = runs[i]
                .iter()
                .flat_map(|r| r.latencies_ns.iter().copied())
                .collect();
            lat.sort_unstable();
            let failed: u32 = runs[i].iter().map(|r| r.failed).sum();
            println!(
                "| {} | {:.0} | {:.3} | {:.1} | {:.1} | {} |",
                p.name,
                rates[i],
                rates[i] / rates[0],
                pct(&lat, 0.50) / 1e3,
                pct(&lat, 0.99) / 1e3,
                failed
            );
        }
        println!(
            "VIP / direct with the hook running: {:.3}\n",
            rates[2] / rates[1]
        );
    }
    Ok(())
}

fn median_rate(runs: &[Run]) -> f64 {
    let mut rates: Vec<f64> = runs
        .iter()
        .map(|r| f64::from(CONNECTS_PER_ROUND - r.failed) / (r.elapsed_ns as f64 / 1e9))
        .collect();
    rates.sort_by(|a, b| a.total_cmp(b));
    rates[rates.len() / 2]
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
