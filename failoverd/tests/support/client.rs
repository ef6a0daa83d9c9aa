//! The traffic side of the tests: a client that runs as a child process (a re-exec of the test
//! binary with `FO_TEST_CLIENT=<json spec>`) placed in the test cgroup, and optionally a test
//! netns, before it execs, and that reports what it saw as one JSON line.
//!
//! A child process, because cgroup hooks act per process and the test binary runs its trials on
//! parallel threads: moving the test process into a cgroup would put every trial in it.

use std::collections::BTreeMap;
use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::cgroup::TestCgroup;
use super::io_context;
use super::netns::TestNetns;

/// Environment variable carrying the JSON `ClientSpec`; its presence switches a test binary into
/// client mode (see `maybe_run_client`).
pub const CLIENT_ENV: &str = "FO_TEST_CLIENT";

/// Arguments given to the re-exec'd binary: should client mode somehow not trigger, libtest-mimic
/// runs no trial instead of recursing into the whole suite.
const NEVER_MATCHES: [&str; 2] = ["--exact", "__fo_client_never_matches__"];

/// How long the parent waits for a client beyond the spec's own `duration_ms`; far above any
/// sane spec (`count` × `timeout_ms`), it only keeps a wedged client from hanging the suite.
pub const CLIENT_DEADLINE: Duration = Duration::from_secs(60);

/// Poll interval while waiting for a client to exit.
const WAIT_POLL: Duration = Duration::from_millis(5);

/// Cap on a client's stdout: the report is one line, long only with a timeline (about 30 bytes
/// per attempt).
const MAX_REPORT_BYTES: u64 = 64 << 20;

/// Cap on a backend's reply read by `TcpReadId`: `B<id>\n` is at most 12 bytes.
const MAX_REPLY_BYTES: u64 = 64;

/// Errno recorded for a reply that is empty or not `B<id>`.
pub const EBADREPLY: i32 = libc::EBADMSG;

/// What the client does with each of its `count` attempts.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Connect over TCP, record `getpeername()`, read to EOF and record the `B<id>` answer.
    TcpReadId,
    /// Connect over TCP, record success or errno and how long `connect()` took, then close.
    TcpConnectOnly,
    /// On one unconnected UDP socket: `sendto(target, "ping")`, then `recvfrom` the answer and
    /// record its id and source address.
    UdpSendRecv,
    /// A long-lived connection: connect over TCP, read the `B<id>` line (from a backend that
    /// holds connections open), then wait up to the timeout for the connection to end. The
    /// attempt records the id and how it ended: its errno (ECONNABORTED when failoverd
    /// terminated it), `EBADREPLY` for EOF, ETIMEDOUT when it was still open.
    TcpHold,
}

/// Default per-operation timeout, in milliseconds.
fn default_timeout_ms() -> u64 {
    2000
}

/// What a client should do; serialised into `FO_TEST_CLIENT`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ClientSpec {
    /// Where to connect or send (typically a VIP).
    pub target: SocketAddr,
    /// What each attempt does.
    pub mode: Mode,
    /// Number of attempts, run one after another.
    pub count: u32,
    /// Use an AF_INET6 socket even for an IPv4 target, addressing it as `::ffff:a.b.c.d`
    /// (such a socket runs only the connect6/sendmsg6 hooks). Default `false`.
    #[serde(default)]
    pub v6_socket: bool,
    /// Timeout for each connect, read and recv, in milliseconds. Default 2000.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Attempts start every this many milliseconds (a fixed rate; an attempt that overruns
    /// delays the next one instead of causing a burst), so traffic can span a failover.
    /// Default 0: back to back.
    #[serde(default)]
    pub interval_ms: u64,
    /// Stop once this many milliseconds have passed, even before `count` attempts. Default 0:
    /// no time limit.
    #[serde(default)]
    pub duration_ms: u64,
    /// More targets: attempts cycle through `target`, then these, in order. Default none.
    #[serde(default)]
    pub more_targets: Vec<SocketAddr>,
    /// Record every attempt in `ClientReport::timeline`. Default `false`.
    #[serde(default)]
    pub timeline: bool,
}

impl ClientSpec {
    /// A spec with the defaults: own-family socket, 2 s timeouts, no pause.
    pub fn new(target: SocketAddr, mode: Mode, count: u32) -> ClientSpec {
        ClientSpec {
            target,
            mode,
            count,
            v6_socket: false,
            timeout_ms: default_timeout_ms(),
            interval_ms: 0,
            duration_ms: 0,
            more_targets: Vec::new(),
            timeline: false,
        }
    }

    /// A client that makes one attempt every `interval_ms` for `duration_ms` and records each
    /// in a timeline: the load of a chaos scenario.
    pub fn load(target: SocketAddr, mode: Mode, interval_ms: u64, duration_ms: u64) -> ClientSpec {
        ClientSpec {
            interval_ms,
            duration_ms,
            timeline: true,
            ..ClientSpec::new(target, mode, u32::MAX)
        }
    }

    /// The address actually used: the IPv4-mapped IPv6 form when `v6_socket` is set.
    pub fn effective_target(&self) -> SocketAddr {
        self.effective(self.target)
    }

    /// Every target, in the order attempts cycle through them, as actually used.
    fn effective_targets(&self) -> Vec<SocketAddr> {
        std::iter::once(self.target)
            .chain(self.more_targets.iter().copied())
            .map(|t| self.effective(t))
            .collect()
    }

    fn effective(&self, target: SocketAddr) -> SocketAddr {
        match target {
            SocketAddr::V4(v4) if self.v6_socket => {
                SocketAddr::V6(SocketAddrV6::new(v4.ip().to_ipv6_mapped(), v4.port(), 0, 0))
            }
            other => other,
        }
    }

    fn timeout(&self) -> Duration {
        // std rejects zero timeouts; 1 ms is the closest meaningful value.
        Duration::from_millis(self.timeout_ms.max(1))
    }
}

/// What a client saw. Every attempt lands in exactly one of `ok` or `errors`, so
/// `ok + errors.values().sum() == count`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientReport {
    /// Answers per backend id.
    pub ids: BTreeMap<u32, u64>,
    /// Failed attempts per errno. Read/recv timeouts are recorded as `ETIMEDOUT`, an empty or
    /// malformed answer as `EBADREPLY` (`EBADMSG`).
    pub errors: BTreeMap<i32, u64>,
    /// Connections per `getpeername()` result (TCP), or answers per source address (UDP),
    /// formatted as `SocketAddr` does (`127.0.0.1:80`, `[::ffff:127.0.0.1]:80`).
    pub peers: BTreeMap<String, u64>,
    /// Slowest successful TCP connect, in nanoseconds.
    pub max_connect_ns: u64,
    /// Slowest failed TCP connect, in nanoseconds (a refused connect should be fast).
    pub max_failed_connect_ns: u64,
    /// Successful attempts.
    pub ok: u64,
    /// The client's cgroup v2 path from `/proc/self/cgroup` (e.g. `/fo-test-a-12-0`), proving
    /// where it ran; empty if unreadable.
    #[serde(default)]
    pub cgroup: String,
    /// Every attempt in order, when the spec asked for a timeline.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub timeline: Vec<Attempt>,
}

/// One attempt of a client with a timeline. Short field names keep a minute of attempts at a
/// millisecond apart to a few hundred kilobytes of report.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attempt {
    /// When the attempt started: `CLOCK_MONOTONIC` in nanoseconds, comparable with
    /// [`monotonic_ns`] in the parent (the clock is system-wide).
    #[serde(rename = "t")]
    pub at_ns: u64,
    /// Which target: 0 for `target`, `i` for `more_targets[i - 1]`.
    #[serde(rename = "v", default)]
    pub target: u32,
    /// The backend id that answered (`TcpReadId`, `UdpSendRecv`); `None` if it failed or the
    /// mode reads no answer.
    #[serde(rename = "id", default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u32>,
    /// The errno it failed with; `None` if it succeeded.
    #[serde(rename = "e", default, skip_serializing_if = "Option::is_none")]
    pub errno: Option<i32>,
    /// How long the attempt took, in microseconds.
    #[serde(rename = "d")]
    pub took_us: u32,
}

impl Attempt {
    /// Whether the attempt succeeded.
    pub fn ok(&self) -> bool {
        self.errno.is_none()
    }
}

/// `CLOCK_MONOTONIC` now, in nanoseconds: the clock of [`Attempt::at_ns`].
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

impl ClientReport {
    /// Answers from backend `id`.
    pub fn id_count(&self, id: u32) -> u64 {
        self.ids.get(&id).copied().unwrap_or(0)
    }

    /// Attempts that failed with `errno`.
    pub fn errno_count(&self, errno: i32) -> u64 {
        self.errors.get(&errno).copied().unwrap_or(0)
    }

    /// Connections to, or answers from, `peer`.
    pub fn peer_count(&self, peer: SocketAddr) -> u64 {
        self.peers.get(&peer.to_string()).copied().unwrap_or(0)
    }

    /// All attempts, successful or not.
    pub fn attempts(&self) -> u64 {
        self.ok + self.errors.values().sum::<u64>()
    }

    fn record_error(&mut self, errno: i32) -> Outcome {
        *self.errors.entry(errno).or_insert(0) += 1;
        (None, Some(errno))
    }

    fn record_peer(&mut self, peer: SocketAddr) {
        *self.peers.entry(peer.to_string()).or_insert(0) += 1;
    }

    /// Records a `B<id>` answer, or `EBADREPLY` if it is not one.
    fn record_reply(&mut self, reply: &[u8]) -> Outcome {
        match parse_id(reply) {
            Some(id) => {
                *self.ids.entry(id).or_insert(0) += 1;
                self.ok += 1;
                (Some(id), None)
            }
            None => self.record_error(EBADREPLY),
        }
    }
}

/// Parses `B<id>` with optional trailing whitespace.
pub fn parse_id(reply: &[u8]) -> Option<u32> {
    std::str::from_utf8(reply)
        .ok()?
        .trim_end()
        .strip_prefix('B')?
        .parse()
        .ok()
}

/// If `FO_TEST_CLIENT` is set, runs the client it describes, prints the report as one JSON line
/// and exits the process (code 0; 2 if the spec is unusable). Otherwise returns at once.
///
/// Call it first thing in every test binary's `main`, before libtest-mimic parses arguments.
pub fn maybe_run_client() {
    let Some(json) = std::env::var_os(CLIENT_ENV) else {
        return;
    };
    let code = match run_client_mode(&json) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("fo-test client: {e}");
            2
        }
    };
    std::process::exit(code);
}

fn run_client_mode(json: &OsStr) -> io::Result<()> {
    let json = json.to_str().ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, "FO_TEST_CLIENT is not UTF-8")
    })?;
    let spec: ClientSpec = serde_json::from_str(json)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("bad spec: {e}")))?;
    let report = run_attempts(&spec)?;
    let line = serde_json::to_string(&report).map_err(io::Error::other)?;
    let mut out = io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()
}

/// Runs the spec's attempts in this process. Only set-up failures (the UDP socket) are errors;
/// failed attempts are data in the report.
fn run_attempts(spec: &ClientSpec) -> io::Result<ClientReport> {
    let mut report = ClientReport {
        cgroup: own_cgroup().unwrap_or_default(),
        ..ClientReport::default()
    };
    let targets = spec.effective_targets();
    let timeout = spec.timeout();
    let udp = match spec.mode {
        Mode::UdpSendRecv => Some(udp_socket(targets[0], timeout)?),
        Mode::TcpReadId | Mode::TcpConnectOnly | Mode::TcpHold => None,
    };
    let interval = Duration::from_millis(spec.interval_ms);
    let start = Instant::now();
    let stop = (spec.duration_ms > 0).then(|| start + Duration::from_millis(spec.duration_ms));
    let mut next = start;
    for i in 0..spec.count {
        let now = Instant::now();
        if stop.is_some_and(|stop| now >= stop) {
            break;
        }
        if next > now {
            thread::sleep(next - now);
        }
        // A fixed rate, but an overrun (a timed-out attempt) only delays the schedule.
        next = next.max(Instant::now()) + interval;
        let index = i as usize % targets.len();
        let target = targets[index];
        let at_ns = monotonic_ns();
        let began = Instant::now();
        let (id, errno) = match (&udp, spec.mode) {
            (Some(socket), _) => udp_attempt(&mut report, socket, target),
            (None, Mode::TcpReadId) => tcp_attempt(&mut report, target, timeout, true),
            (None, Mode::TcpHold) => tcp_hold(&mut report, target, timeout),
            (None, _) => tcp_attempt(&mut report, target, timeout, false),
        };
        if spec.timeline {
            report.timeline.push(Attempt {
                at_ns,
                target: index as u32,
                id,
                errno,
                took_us: u32::try_from(began.elapsed().as_micros()).unwrap_or(u32::MAX),
            });
        }
    }
    Ok(report)
}

/// What one attempt came to: the answering backend's id, or the errno it failed with.
type Outcome = (Option<u32>, Option<i32>);

/// One TCP attempt: timed connect, peer name, and for `read_id` the answer.
fn tcp_attempt(
    report: &mut ClientReport,
    target: SocketAddr,
    timeout: Duration,
    read_id: bool,
) -> Outcome {
    // std makes an AF_INET6 socket for a V6 address, which is what `v6_socket` needs. The
    // timeout variant (non-blocking connect + poll) keeps a black-holed target from hanging
    // the client for the kernel's two-minute SYN retry budget.
    let start = Instant::now();
    let connected = TcpStream::connect_timeout(&target, timeout);
    let elapsed = nanos(start.elapsed());
    let stream = match connected {
        Ok(stream) => {
            report.max_connect_ns = report.max_connect_ns.max(elapsed);
            stream
        }
        Err(e) => {
            report.max_failed_connect_ns = report.max_failed_connect_ns.max(elapsed);
            return report.record_error(errno_of(&e));
        }
    };
    // peer_addr() is getpeername(): with a socket hook it must show the VIP, not the backend.
    match stream.peer_addr() {
        Ok(peer) => report.record_peer(peer),
        Err(e) => return report.record_error(errno_of(&e)),
    }
    if !read_id {
        report.ok += 1;
        return (None, None);
    }
    let mut reply = Vec::new();
    let read = stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| (&stream).take(MAX_REPLY_BYTES).read_to_end(&mut reply));
    match read {
        Ok(_) => report.record_reply(&reply),
        Err(e) => report.record_error(timeout_errno_of(&e)),
    }
}

/// One long-lived connection (see [`Mode::TcpHold`]).
fn tcp_hold(report: &mut ClientReport, target: SocketAddr, timeout: Duration) -> Outcome {
    let stream = match TcpStream::connect_timeout(&target, Duration::from_secs(2)) {
        Ok(stream) => stream,
        Err(e) => return report.record_error(errno_of(&e)),
    };
    if let Ok(peer) = stream.peer_addr() {
        report.record_peer(peer);
    }
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    if stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .is_err()
    {
        return report.record_error(libc::EIO);
    }
    while !line.ends_with(b"\n") && line.len() < MAX_REPLY_BYTES as usize {
        match (&stream).read(&mut byte) {
            Ok(1) => line.push(byte[0]),
            Ok(_) => return report.record_error(EBADREPLY),
            Err(e) => return report.record_error(timeout_errno_of(&e)),
        }
    }
    let id = parse_id(&line);
    if let Some(id) = id {
        *report.ids.entry(id).or_insert(0) += 1;
    }
    if stream.set_read_timeout(Some(timeout)).is_err() {
        return report.record_error(libc::EIO);
    }
    let errno = match (&stream).read(&mut byte) {
        Ok(0) => EBADREPLY,
        Ok(_) => libc::EPROTO,
        Err(e) => timeout_errno_of(&e),
    };
    *report.errors.entry(errno).or_insert(0) += 1;
    (id, Some(errno))
}

/// The one unconnected UDP socket of a `UdpSendRecv` client, of the target's family.
fn udp_socket(target: SocketAddr, timeout: Duration) -> io::Result<UdpSocket> {
    let any: IpAddr = match target {
        SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let socket = UdpSocket::bind(SocketAddr::new(any, 0))
        .map_err(|e| io_context(format!("binding udp client socket for {target}"), e))?;
    socket.set_read_timeout(Some(timeout))?;
    Ok(socket)
}

/// One UDP attempt. A reply that arrives after its attempt timed out is taken by the next
/// attempt; tests that care keep timeouts well above loopback latency.
fn udp_attempt(report: &mut ClientReport, socket: &UdpSocket, target: SocketAddr) -> Outcome {
    if let Err(e) = socket.send_to(b"ping", target) {
        return report.record_error(errno_of(&e));
    }
    let mut buf = [0u8; 512];
    match socket.recv_from(&mut buf) {
        Ok((n, from)) => {
            report.record_peer(from);
            report.record_reply(&buf[..n])
        }
        Err(e) => report.record_error(timeout_errno_of(&e)),
    }
}

/// The errno behind an I/O error; std's own errors without one (e.g. connect_timeout expiring)
/// are mapped to the closest errno.
fn errno_of(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(match e.kind() {
        io::ErrorKind::TimedOut => libc::ETIMEDOUT,
        io::ErrorKind::UnexpectedEof => EBADREPLY,
        _ => libc::EIO,
    })
}

/// Like `errno_of`, for reads on a socket with a read timeout, where expiry shows up as EAGAIN.
fn timeout_errno_of(e: &io::Error) -> i32 {
    match errno_of(e) {
        libc::EAGAIN => libc::ETIMEDOUT,
        other => other,
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// This process's cgroup v2 path (the `0::` line of `/proc/self/cgroup`).
fn own_cgroup() -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_owned)
}

/// Makes a child spawned from `cmd` join `cgroup` and/or `netns` between fork and exec, so it is
/// in place before its first instruction runs.
///
/// Everything is prepared here (the `cgroup.procs` path as a `CString`, the netns fd opened
/// close-on-exec); the hook itself only makes raw, async-signal-safe syscalls, as required after
/// fork in a multi-threaded process. A failing hook makes `spawn` return its errno.
pub fn place_child(
    cmd: &mut Command,
    cgroup: Option<&TestCgroup>,
    netns: Option<&TestNetns>,
) -> io::Result<()> {
    let procs = cgroup
        .map(|cg| {
            CString::new(cg.procs_path().into_os_string().into_encoded_bytes())
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
        })
        .transpose()?;
    let ns: Option<File> = netns.map(TestNetns::open).transpose()?;
    if procs.is_none() && ns.is_none() {
        return Ok(());
    }
    let hook = move || -> io::Result<()> {
        if let Some(ns) = &ns {
            setns_raw(ns)?;
        }
        if let Some(procs) = &procs {
            join_cgroup_raw(procs)?;
        }
        Ok(())
    };
    // SAFETY: the hook allocates nothing, takes no lock and calls only open/write/close/setns
    // on data prepared before fork; io::Error::last_os_error does not allocate either.
    unsafe {
        cmd.pre_exec(hook);
    }
    Ok(())
}

/// `setns(fd, CLONE_NEWNET)`; async-signal-safe.
fn setns_raw(ns: &File) -> io::Result<()> {
    // SAFETY: a plain syscall on an fd kept open by the caller.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Writes `0` ("the writing process") to `cgroup.procs`; async-signal-safe.
fn join_cgroup_raw(procs: &CStr) -> io::Result<()> {
    // SAFETY: procs is NUL-terminated and outlives the call.
    let fd = unsafe { libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just opened by us; the buffer is a 1-byte static.
    let written = unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) };
    let result = if written == 1 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    };
    // SAFETY: closing the fd opened above, exactly once.
    unsafe { libc::close(fd) };
    result
}

/// A running client process. `wait_report` collects its report; dropping the guard instead
/// kills and reaps it.
#[derive(Debug)]
pub struct ClientChild {
    child: Option<Child>,
    stdout: Option<JoinHandle<io::Result<Vec<u8>>>>,
    /// How long `wait_report` waits: `CLIENT_DEADLINE` plus the spec's `duration_ms`.
    deadline: Duration,
}

impl ClientChild {
    /// The client's pid.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Waits (at most `CLIENT_DEADLINE` beyond the spec's duration, then kills it) for the client to exit and parses its
    /// report.
    pub fn wait_report(mut self) -> io::Result<ClientReport> {
        let mut child = self
            .child
            .take()
            .ok_or_else(|| io::Error::other("client already reaped"))?;
        let status = wait_bounded(&mut child, self.deadline);
        // Read stdout only after exit (or kill): a killed child's pipe reaches EOF, so this join
        // cannot hang.
        let output = self
            .stdout
            .take()
            .map(|reader| {
                reader
                    .join()
                    .map_err(|_| io::Error::other("client stdout reader panicked"))?
            })
            .transpose()?
            .unwrap_or_default();
        let status = status?;
        if !status.success() {
            return Err(io::Error::other(format!(
                "client exited with {status} (its stderr is above)"
            )));
        }
        let text = String::from_utf8_lossy(&output);
        let line = text
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .ok_or_else(|| io::Error::other("client printed no report"))?;
        serde_json::from_str(line).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad client report {line:?}: {e}"),
            )
        })
    }
}

impl Drop for ClientChild {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Err(e) = child.kill().and_then(|()| child.wait().map(drop)) {
                eprintln!("fo-test: killing client {}: {e}", child.id());
            }
        }
        if let Some(reader) = self.stdout.take() {
            if reader.join().is_err() {
                eprintln!("fo-test: client stdout reader panicked");
            }
        }
    }
}

/// Waits for `child` up to `deadline`; past it, kills and reaps it and returns `TimedOut`.
fn wait_bounded(child: &mut Child, deadline: Duration) -> io::Result<ExitStatus> {
    let until = Instant::now() + deadline;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() >= until {
            child.kill()?;
            child.wait()?;
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "client {} still running after {deadline:?}; killed",
                    child.id()
                ),
            ));
        }
        thread::sleep(WAIT_POLL);
    }
}

/// Starts a client in `cgroup` (and in `netns` if given) and returns at once; for traffic that
/// must run while the test does something else, e.g. fails a backend over.
pub fn spawn_client(
    cgroup: &TestCgroup,
    netns: Option<&TestNetns>,
    spec: &ClientSpec,
) -> io::Result<ClientChild> {
    spawn_placed(Some(cgroup), netns, spec)
}

/// Runs a client in `cgroup` (and in `netns` if given) to completion and returns its report.
pub fn run_client(
    cgroup: &TestCgroup,
    netns: Option<&TestNetns>,
    spec: &ClientSpec,
) -> io::Result<ClientReport> {
    spawn_client(cgroup, netns, spec)?.wait_report()
}

/// Runs a client that joins no cgroup (it stays in the test process's cgroup), for checking
/// that processes outside the test cgroup are not translated.
pub fn run_client_outside_cgroup(spec: &ClientSpec) -> io::Result<ClientReport> {
    spawn_placed(None, None, spec)?.wait_report()
}

fn spawn_placed(
    cgroup: Option<&TestCgroup>,
    netns: Option<&TestNetns>,
    spec: &ClientSpec,
) -> io::Result<ClientChild> {
    let json = serde_json::to_string(spec).map_err(io::Error::other)?;
    let exe = std::env::current_exe().map_err(|e| io_context("locating the test binary", e))?;
    let mut cmd = Command::new(&exe);
    cmd.args(NEVER_MATCHES)
        .env(CLIENT_ENV, json)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    place_child(&mut cmd, cgroup, netns)?;
    let mut child = cmd
        .spawn()
        .map_err(|e| io_context(format!("spawning client {}", exe.display()), e))?;
    let stdout = child.stdout.take();
    // From here the guard owns the child, so any early return below kills it.
    let mut guard = ClientChild {
        child: Some(child),
        stdout: None,
        deadline: CLIENT_DEADLINE + Duration::from_millis(spec.duration_ms),
    };
    let stdout = stdout.ok_or_else(|| io::Error::other("client stdout was not piped"))?;
    guard.stdout = Some(
        thread::Builder::new()
            .name("fo-client-stdout".into())
            .spawn(move || read_capped(stdout))?,
    );
    Ok(guard)
}

/// Reads a client's stdout to EOF, at most `MAX_REPORT_BYTES`.
fn read_capped(stdout: ChildStdout) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    stdout.take(MAX_REPORT_BYTES).read_to_end(&mut out)?;
    Ok(out)
}
