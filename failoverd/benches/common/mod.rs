//! Pieces the side-by-side benchmarks share: quick mode, clocks, CPU pinning, statistics, and
//! guards for the HAProxy and failoverd processes a benchmark starts.
//!
//! Each bench target declares `mod common;` and uses only part of it, hence the blanket
//! `dead_code` allowance (the same reason as in the test kit).
#![allow(dead_code)]

use std::{
    fs::File,
    io,
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

pub mod figures;
pub mod programs;

use crate::support::{io_context, unique_name, TempDir};

/// Set to anything but `0` to shrink rounds, repetitions and durations for a fast iteration.
pub const QUICK_ENV: &str = "FO_BENCH_QUICK";

/// How long a started process gets to come up (listen, answer its control socket).
const STARTUP_LIMIT: Duration = Duration::from_secs(10);

/// How long a stopped process gets to exit after SIGTERM before it is SIGKILLed.
const STOP_LIMIT: Duration = Duration::from_secs(5);

/// The end of HAProxy's `global` section and its `defaults`, shared by the benches: TCP mode,
/// a connection limit far above what one client opens (and within the 20,000 open files
/// allowed here), and the timeouts of Debian's stock config. Follows a `global` line.
pub const HAPROXY_BASE: &str = "    maxconn 9000\n\
     defaults\n\
     \x20   mode tcp\n\
     \x20   maxconn 9000\n\
     \x20   timeout connect 5s\n\
     \x20   timeout client 50s\n\
     \x20   timeout server 50s\n";

/// Whether `FO_BENCH_QUICK` asks for the shrunk settings.
pub fn quick() -> bool {
    std::env::var_os(QUICK_ENV).is_some_and(|v| v != "0")
}

/// Pins the calling thread to one CPU (ignored when the machine has no such CPU).
pub fn pin_to_cpu(cpu: usize) {
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

/// Makes `close` send a RST instead of a FIN, so no TIME_WAIT is left behind on this side and
/// the ephemeral ports do not run out between rounds.
pub fn linger_zero(fd: &impl AsRawFd) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket fd and a properly sized linger struct.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as u32,
        );
    }
}

/// Raises this process's open-file limit to `n` (or the hard limit, if lower): an open-loop
/// client keeps thousands of connects in flight while a proxy holds them.
pub fn raise_nofile(n: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: lim is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return;
    }
    lim.rlim_cur = n.min(lim.rlim_max);
    // SAFETY: lim is a valid rlimit; lowering or raising the soft limit up to the hard one.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
}

/// The median (upper median for an even count); 0 for no values.
pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// The median of round-by-round ratios `a[i] / b[i]`: each pair ran back to back, so slow
/// phases of the machine cancel out.
pub fn median_ratio(a: &[f64], b: &[f64]) -> f64 {
    median(a.iter().zip(b).map(|(x, y)| x / y).collect())
}

/// The `q` quantile of sorted values (nearest rank, rounding down); 0 for no values.
pub fn pct(sorted: &[u32], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    f64::from(sorted[((sorted.len() - 1) as f64 * q) as usize])
}

/// The running kernel's release (`uname -r`).
pub fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// A free TCP port on 127.0.0.1 for a process that binds it itself (HAProxy). Another process
/// could take it in between; on this loopback-only machine nothing else binds ephemeral ports
/// for listening, and a clash shows up as HAProxy failing to start, not as wrong numbers.
pub fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Waits until `addr` accepts a TCP connection, at most `limit`.
pub fn wait_listening(addr: SocketAddr, limit: Duration) -> io::Result<()> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(10));
    }
    Err(io::Error::new(
        io::ErrorKind::TimedOut,
        format!("nothing listened on {addr} within {limit:?}"),
    ))
}

/// SIGTERMs a child, waits up to `STOP_LIMIT`, then SIGKILLs it; always reaps it.
fn stop_child(child: &mut Child) {
    // SAFETY: kill(2) on our own, not yet reaped child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let start = Instant::now();
    while start.elapsed() < STOP_LIMIT {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        thread::sleep(Duration::from_millis(10));
    }
    // It ignored SIGTERM for too long: the bench must not leave it behind.
    child.kill().ok();
    child.wait().ok();
}

/// The last `n` lines of a log file, for an error message.
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Debian's `haproxy`, run in the foreground (`-db`) on a config the bench generated in a temp
/// dir of its own. Dropping it stops and reaps the process and removes the dir.
pub struct Haproxy {
    child: Option<Child>,
    log: PathBuf,
    // Last: the config and log outlive the process.
    dir: TempDir,
}

impl Haproxy {
    /// Writes `config` and starts `haproxy -db -f <config>`; returns once `ready` accepts
    /// connections. HAProxy's own messages (server UP/DOWN, warnings) go to a log file in the
    /// temp dir, quoted in the error if it does not come up.
    pub fn start(tag: &str, config: &str, ready: SocketAddr) -> io::Result<Haproxy> {
        let dir = TempDir(std::env::temp_dir().join(unique_name("fo-bench-haproxy", tag)?));
        std::fs::create_dir_all(&dir.0)
            .map_err(|e| io_context(format!("creating {}", dir.0.display()), e))?;
        let cfg = dir.0.join("haproxy.cfg");
        std::fs::write(&cfg, config)?;
        let log = dir.0.join("haproxy.log");
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(File::create(&log)?)
            .stderr(File::create(dir.0.join("haproxy.err"))?)
            .spawn()
            .map_err(|e| io_context("starting haproxy (is Debian's haproxy installed?)", e))?;
        let mut h = Haproxy {
            child: Some(child),
            log,
            dir,
        };
        if let Err(e) = wait_listening(ready, STARTUP_LIMIT) {
            let err = tail(&h.dir.0.join("haproxy.err"), 20);
            h.stop();
            return Err(io::Error::other(format!(
                "haproxy did not start: {e}\n{err}"
            )));
        }
        Ok(h)
    }

    /// HAProxy's stdout so far (its server state changes), for a report.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child);
        }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        self.stop();
    }
}
