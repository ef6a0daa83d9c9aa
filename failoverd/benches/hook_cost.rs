//! Cost per call of the connect4, connect6 and sock_ops programs, from the kernel's BPF run-time statistics.
//!
//! Run as root: `cargo bench -p failoverd --bench hook_cost`. A client child in a test cgroup
//! makes `FO_HOOK_N` (default 20,000) TCP `connect + close` calls to an IPv4 VIP, then as many
//! to an IPv6 VIP, `FO_HOOK_REPS` (default 3) times; around each run the bench reads
//! `run_time_ns` and `run_cnt` of the programs attached to that cgroup (`BPF_PROG_QUERY`) and
//! prints ns per call, per rep and the median. Only the client is in the cgroup (the backends
//! run in the bench process), so every counted sock_ops call is one of a translated socket.
//! The client sits on CPU 0 and the backends on CPU 1; each close is a RST (SO_LINGER 0) so no
//! TIME_WAIT eats the ephemeral ports. The last line, `ab:`, is meant for scripts that
//! interleave two builds (A/B) on a busy machine.

#[path = "../tests/support/mod.rs"]
mod support;

mod common;

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
};

use common::{
    kernel, linger_zero, median, pin_to_cpu,
    programs::{
        attached, run_stats, BPF_CGROUP_INET4_CONNECT, BPF_CGROUP_INET6_CONNECT,
        BPF_CGROUP_SOCK_OPS,
    },
};
use failoverd::datapath::{
    BpfDatapath, CgroupSpec, Datapath, DatapathConfig, Protocol, TableBackend, Vip, VipTable,
};
use support::{cgroup::TestCgroup, client::place_child, pins::TestPinDir};

/// Environment variable carrying the client's target and count; its presence makes the bench
/// binary the client.
const CLIENT_ENV: &str = "FO_HOOK_CLIENT";
/// The IPv4 VIP (anything in 127/8 that nothing listens on).
const VIP4: &str = "127.77.252.1:80";
/// The IPv6 VIP port on ::1 (the VIP key holds the port, so ::1 can be VIP and backend).
const VIP6_PORT: u16 = 9;
/// The client's CPU.
const CLIENT_CPU: usize = 0;
/// The backends' CPU.
const BACKEND_CPU: usize = 1;

fn main() {
    if let Ok(spec) = std::env::var(CLIENT_ENV) {
        client(&spec);
        return;
    }
    if let Err(e) = bench() {
        eprintln!("hook_cost: {e}");
        std::process::exit(1);
    }
}

/// `<addr> <count>`: connect + close `count` times; exits non-zero when any connect failed.
fn client(spec: &str) {
    pin_to_cpu(CLIENT_CPU);
    let (addr, count) = spec.split_once(' ').expect("client spec");
    let addr: SocketAddr = addr.parse().expect("client target");
    let count: u32 = count.parse().expect("client count");
    let mut failed = 0;
    for _ in 0..count {
        match TcpStream::connect(addr) {
            Ok(s) => linger_zero(&s),
            Err(_) => failed += 1,
        }
    }
    if failed > 0 {
        eprintln!("{failed} of {count} connects to {addr} failed");
        std::process::exit(1);
    }
}

/// A backend that accepts and closes connections, on `BACKEND_CPU`.
struct Backend {
    addr: SocketAddr,
    listener: TcpListener,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Backend {
    fn start(bind: &str) -> std::io::Result<Backend> {
        let listener = TcpListener::bind(bind)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let (l, s) = (listener.try_clone()?, Arc::clone(&stop));
        let thread = thread::spawn(move || {
            pin_to_cpu(BACKEND_CPU);
            // Accepted and dropped at once: a full backlog would drop SYNs and stall the
            // client for a second per retransmission.
            while !s.load(Ordering::Relaxed) {
                l.accept().ok();
            }
        });
        Ok(Backend {
            addr,
            listener,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // SAFETY: a plain syscall on a socket kept open until the thread is joined.
        unsafe { libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR) };
        if let Some(t) = self.thread.take() {
            t.join().expect("backend thread");
        }
    }
}

/// One client run of `n` connects to `target`, placed in `cgroup`.
fn run_client(
    cgroup: &TestCgroup,
    target: SocketAddr,
    n: u32,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.env(CLIENT_ENV, format!("{target} {n}"))
        .stdout(Stdio::null());
    place_child(&mut cmd, Some(cgroup), None)?;
    let status = cmd.status()?;
    if !status.success() {
        return Err(format!("client to {target} exited with {status}").into());
    }
    Ok(())
}

fn env_u32(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn bench() -> Result<(), Box<dyn std::error::Error>> {
    let n = env_u32("FO_HOOK_N", 20_000);
    let reps = env_u32("FO_HOOK_REPS", 3);
    // Torn down in reverse order of declaration: backends, datapath, pins, cgroup.
    let cgroup = TestCgroup::new("hookcost")?;
    let pins = TestPinDir::new("hookcost")?;
    let mut datapath = BpfDatapath::open(&DatapathConfig {
        cgroup: CgroupSpec::Path(cgroup.path().to_path_buf()),
        pin_dir: pins.path().to_path_buf(),
    })?;
    let backend4 = Backend::start("127.0.0.1:0")?;
    let backend6 = Backend::start("[::1]:0")?;
    let vip4 = Vip {
        addr: VIP4.parse()?,
        protocol: Protocol::Tcp,
    };
    let vip6 = Vip {
        addr: SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, VIP6_PORT)),
        protocol: Protocol::Tcp,
    };
    // A passive threshold, as the daemon's default config has: the connect path reads it.
    for (vip, vip_id, backend, id) in [(vip4, 1, backend4.addr, 2), (vip6, 3, backend6.addr, 4)] {
        let mut table =
            VipTable::weighted(vip, vip_id, vec![TableBackend { addr: backend, id }], &[1])?;
        table.passive_threshold = 3;
        datapath.apply(&table)?;
    }

    // Run-time statistics are on only while this fd is held.
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)?;
    let c4 = attached(cgroup.path(), BPF_CGROUP_INET4_CONNECT)?;
    let c6 = attached(cgroup.path(), BPF_CGROUP_INET6_CONNECT)?;
    let so = attached(cgroup.path(), BPF_CGROUP_SOCK_OPS)?;
    if c4.is_empty() || c6.is_empty() || so.is_empty() {
        return Err("connect4, connect6 or sock_ops is not attached to the bench cgroup".into());
    }
    println!(
        "hook cost: {reps} reps × {n} TCP connect+close per family; kernel {}, {} CPUs",
        kernel(),
        thread::available_parallelism()?.get()
    );
    println!("| rep | connect4 ns/call | sock_ops ns/call (v4) | sock_ops calls/connect (v4) | connect6 ns/call | sock_ops ns/call (v6) |");
    println!("|---|---:|---:|---:|---:|---:|");
    let (mut r4, mut r6, mut rs4, mut rs6) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for rep in 1..=reps {
        let one = |target: SocketAddr, prog: &[u32]| -> Result<_, Box<dyn std::error::Error>> {
            let (p0, s0) = (run_stats(prog), run_stats(&so));
            run_client(&cgroup, target, n)?;
            let (p1, s1) = (run_stats(prog), run_stats(&so));
            let calls = p1.0 - p0.0;
            if calls < u64::from(n) {
                return Err(format!("{calls} hook calls for {n} connects to {target}").into());
            }
            let per = |(c0, t0): (u64, u64), (c1, t1): (u64, u64)| {
                (t1 - t0) as f64 / (c1 - c0).max(1) as f64
            };
            Ok((
                per(p0, p1),
                per(s0, s1),
                (s1.0 - s0.0) as f64 / f64::from(n),
            ))
        };
        let (h4, s4, k4) = one(vip4.addr, &c4)?;
        let (h6, s6, _) = one(vip6.addr, &c6)?;
        println!("| {rep} | {h4:.0} | {s4:.0} | {k4:.2} | {h6:.0} | {s6:.0} |");
        r4.push(h4);
        r6.push(h6);
        rs4.push(s4);
        rs6.push(s6);
    }
    let (m4, m6, ms4, ms6) = (median(r4), median(r6), median(rs4), median(rs6));
    println!("| median | {m4:.0} | {ms4:.0} | | {m6:.0} | {ms6:.0} |");
    println!("ab: connect4={m4:.0} connect6={m6:.0} sockops4={ms4:.0} sockops6={ms6:.0}");
    Ok(())
}
