//! Failover under load, failoverd against HAProxy: `kill -9` of the primary backend while a
//! client opens a connection every millisecond; how many connects fail, and how long from the
//! kill until the backup serves.
//!
//! Run as root: `cargo bench -p failoverd --bench failover`. Each case runs the real tool on
//! its own: the `failoverd run` daemon (its own cgroup, pin dir, control socket and state dir;
//! the client inside the cgroup connects to the VIP), or Debian's `haproxy` in `mode tcp` with
//! the primary and a `backup` server (the client connects to its frontend). Both probe with the
//! same settings (interval 100 ms, timeout 50 ms, fall 3, rise 2), then each with its own
//! defaults. Backends are real processes answering `B<id>\n` (the test kit's
//! `BackendProcess`), so a SIGKILL is a real crash: the port refuses at once.
//!
//! The client is open-loop: an attempt starts every millisecond whether or not earlier ones
//! have finished, and each records its start, its end and what it got, on `CLOCK_MONOTONIC`,
//! which the bench also reads just before the kill. Each tool runs 11 times with the same
//! settings and 7 times with its defaults, alternating which goes first. `FO_BENCH_QUICK=1`
//! runs each case once.

#[path = "../tests/support/mod.rs"]
mod support;

mod common;

use std::{
    collections::BTreeMap,
    io::{self, Read},
    net::SocketAddr,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use common::{free_port, kernel, median, quick, raise_nofile, Haproxy, HAPROXY_BASE};
use serde::{Deserialize, Serialize};
use support::{
    client::{monotonic_ns, parse_id, place_child},
    daemon::DaemonProcess,
    env::Env,
    kernel::{exactly, loopback, tcp_vip, until_table},
    server::{BackendProcess, ServerSpec},
};
use tokio::io::AsyncReadExt;

/// Environment variable carrying a client's JSON `ClientSpec`.
const CLIENT_ENV: &str = "FO_BENCH_FAILOVER_CLIENT";
/// The failoverd VIP.
const VIP: &str = "127.77.252.1:80";
/// Runs per tool with the same probe settings (1 in quick mode): the kill lands anywhere in a
/// 100 ms probe cycle, so the times spread over one interval and a median needs a few runs.
const REPS_SAME: usize = 11;
/// Runs per tool with each tool's defaults (1 in quick mode): a run takes 10–25 s there.
const REPS_DEFAULTS: usize = 7;
/// Runs per variant in the passive case (1 in quick mode): medians and worst of at least 10.
const REPS_PASSIVE: usize = 10;
/// Traffic before the kill, so both tools are seen serving from the primary first; plus a
/// random part of one probe interval.
const WARMUP: Duration = Duration::from_secs(1);
/// A client attempt that takes longer fails with ETIMEDOUT; above HAProxy's retry budget
/// (3 retries, 1 s apart), so its own verdict on a connect is what gets counted.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Environment variable turning the bench binary into a holder of one long-lived connection.
const HOLDER_ENV: &str = "FO_BENCH_FAILOVER_HOLDER";
/// How long a held connection is watched after the freeze before it counts as "never".
const HELD_WATCH: Duration = Duration::from_secs(10);
/// Runs of each held-connection case (1 in quick mode).
const REPS_HELD: usize = 5;

/// An attempt longer than this was held: on loopback a healthy one takes well under 1 ms.
const HELD: Duration = Duration::from_millis(100);
/// Id the primary backend answers with.
const PRIMARY: i64 = 1;
/// Id the backup backend answers with.
const BACKUP: i64 = 2;

/// A client's instructions.
#[derive(Serialize, Deserialize)]
struct ClientSpec {
    target: SocketAddr,
    /// Start an attempt this often, in microseconds.
    every_us: u64,
    /// Stop starting attempts after this long, in milliseconds (then wait for those in flight).
    duration_ms: u64,
}

/// One attempt: start and end on `CLOCK_MONOTONIC` (ns), and the backend id it was answered
/// with, or minus the errno it failed with.
#[derive(Serialize, Deserialize, Clone, Copy)]
struct Attempt(u64, u64, i64);

/// What a client saw.
#[derive(Serialize, Deserialize)]
struct Timeline {
    attempts: Vec<Attempt>,
    /// Ticks the client could not start on time (it skips rather than bursts).
    missed_ticks: u64,
}

fn main() {
    support::server::maybe_run_server();
    if let Ok(target) = std::env::var(HOLDER_ENV) {
        std::process::exit(run_holder(&target));
    }
    if let Ok(spec) = std::env::var(CLIENT_ENV) {
        let spec: ClientSpec = serde_json::from_str(&spec).expect("bench client spec");
        match client(&spec) {
            Ok(t) => println!("{}", serde_json::to_string(&t).expect("timeline")),
            Err(e) => {
                eprintln!("failover client: {e}");
                std::process::exit(2);
            }
        }
        return;
    }
    if let Err(e) = bench() {
        eprintln!("failover: {e}");
        std::process::exit(1);
    }
}

/// The open-loop client: one task per attempt on a single-threaded runtime, started by a 1 ms
/// ticker, so a connect HAProxy holds for seconds does not delay the next ones.
fn client(spec: &ClientSpec) -> io::Result<Timeline> {
    // Thousands of attempts can be in flight while HAProxy retries a dead server.
    raise_nofile(20_000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let every = Duration::from_micros(spec.every_us);
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let start = tokio::time::Instant::now();
        let end = start + Duration::from_millis(spec.duration_ms);
        let mut tasks = tokio::task::JoinSet::new();
        let mut started = 0u64;
        loop {
            let at = ticker.tick().await;
            if at >= end {
                break;
            }
            started += 1;
            tasks.spawn(attempt(spec.target));
        }
        let expected = (spec.duration_ms * 1000) / spec.every_us.max(1);
        let mut attempts = Vec::with_capacity(started as usize);
        while let Some(done) = tasks.join_next().await {
            attempts.push(done.map_err(io::Error::other)?);
        }
        attempts.sort_by_key(|a| a.0);
        Ok(Timeline {
            attempts,
            missed_ticks: expected.saturating_sub(started),
        })
    })
}

/// One attempt: connect, read the reply to EOF, parse `B<id>`.
async fn attempt(target: SocketAddr) -> Attempt {
    let start = monotonic_ns();
    let outcome = match tokio::time::timeout(ATTEMPT_TIMEOUT, exchange(target)).await {
        Ok(Ok(id)) => i64::from(id),
        Ok(Err(e)) => -i64::from(e.raw_os_error().unwrap_or(libc::EIO)),
        Err(_) => -i64::from(libc::ETIMEDOUT),
    };
    Attempt(start, monotonic_ns(), outcome)
}

async fn exchange(target: SocketAddr) -> io::Result<u32> {
    let mut s = tokio::net::TcpStream::connect(target).await?;
    let mut reply = Vec::with_capacity(16);
    // `B<id>\n` is a few bytes; the cap bounds a misbehaving peer.
    (&mut s).take(64).read_to_end(&mut reply).await?;
    // A proxy that gives up closes without a reply: that connect failed too.
    parse_id(&reply).ok_or_else(|| io::Error::from_raw_os_error(libc::EBADMSG))
}

/// A client process; dropping it kills and reaps it.
struct ClientProc {
    child: Option<Child>,
    out: Option<thread::JoinHandle<io::Result<Vec<u8>>>>,
}

impl ClientProc {
    fn spawn(
        spec: &ClientSpec,
        env: Option<&Env>,
    ) -> Result<ClientProc, Box<dyn std::error::Error>> {
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.env(CLIENT_ENV, serde_json::to_string(spec)?)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        place_child(&mut cmd, env.map(|e| &e.cgroup), None)?;
        let mut child = cmd.spawn()?;
        let mut stdout = child.stdout.take().ok_or("client stdout not piped")?;
        let out = thread::spawn(move || {
            let mut buf = Vec::new();
            stdout.read_to_end(&mut buf)?;
            Ok(buf)
        });
        Ok(ClientProc {
            child: Some(child),
            out: Some(out),
        })
    }

    /// Waits (at most `limit`) for the client to finish and parses its timeline.
    fn wait(mut self, limit: Duration) -> Result<Timeline, Box<dyn std::error::Error>> {
        let mut child = self.child.take().ok_or("client already reaped")?;
        let start = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if start.elapsed() > limit {
                child.kill().ok();
                child.wait().ok();
                return Err(format!("client still running after {limit:?}; killed").into());
            }
            thread::sleep(Duration::from_millis(10));
        };
        let out = self
            .out
            .take()
            .ok_or("client output already read")?
            .join()
            .map_err(|_| "client reader panicked")??;
        if !status.success() {
            return Err(format!("client exited with {status}").into());
        }
        Ok(serde_json::from_slice(&out)?)
    }
}

impl Drop for ClientProc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().ok();
            child.wait().ok();
        }
        if let Some(out) = self.out.take() {
            // The pipe closed with the child; the thread ends.
            out.join().ok();
        }
    }
}

/// Which tool steers the traffic.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Tool {
    Failoverd,
    Haproxy,
}

/// Which probe settings.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Settings {
    /// interval 100 ms, timeout 50 ms, fall 3, rise 2 on both, active checks only.
    Same,
    /// Each tool's defaults.
    Defaults,
    /// 1 s probes, so only what each tool sees of the client's own connects can explain a
    /// fast failover: failoverd's kernel-observed connect failures, HAProxy's `observe layer4`.
    Passive,
}

impl Settings {
    fn label(self) -> &'static str {
        match self {
            Settings::Same => "same probes: 100 ms, timeout 50 ms, fall 3, rise 2",
            Settings::Defaults => "each tool's defaults",
            Settings::Passive => "passive health, 1 s probes",
        }
    }

    /// The configurations compared in this case.
    fn variants(self) -> &'static [Variant] {
        match self {
            Settings::Same | Settings::Defaults => &[Variant::Failoverd, Variant::Haproxy],
            Settings::Passive => &[
                Variant::FailoverdPassive1,
                Variant::FailoverdPassive3,
                Variant::HaproxyObserve,
                Variant::HaproxyObserveRedispatch,
            ],
        }
    }
}

/// One configuration of one tool.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Variant {
    /// failoverd, passive health at its default (on, 3) in the active-probe cases.
    Failoverd,
    /// HAProxy, active checks only.
    Haproxy,
    /// failoverd, `passive: { consecutive_failures: 1 }`.
    FailoverdPassive1,
    /// failoverd, `passive: { consecutive_failures: 3 }` (the default).
    FailoverdPassive3,
    /// HAProxy, `observe layer4 error-limit 1 on-error mark-down`.
    HaproxyObserve,
    /// The same with `option redispatch`.
    HaproxyObserveRedispatch,
}

impl Variant {
    fn tool(self) -> Tool {
        match self {
            Variant::Failoverd | Variant::FailoverdPassive1 | Variant::FailoverdPassive3 => {
                Tool::Failoverd
            }
            _ => Tool::Haproxy,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Variant::Failoverd => "failoverd",
            Variant::Haproxy => "HAProxy",
            Variant::FailoverdPassive1 => "failoverd, passive 1",
            Variant::FailoverdPassive3 => "failoverd, passive 3",
            Variant::HaproxyObserve => "HAProxy, observe layer4",
            Variant::HaproxyObserveRedispatch => "HAProxy, observe layer4 + redispatch",
        }
    }
}

/// The case's settings as written in each tool's config, for the report.
fn settings_text(variant: Variant, settings: Settings) -> &'static str {
    match (variant.tool(), settings) {
        (Tool::Failoverd, Settings::Same) => {
            "interval 100ms, timeout 50ms, rise 2, fall 3, passive off"
        }
        (Tool::Haproxy, Settings::Same) => "check inter 100ms fall 3 rise 2, timeout check 50ms",
        (Tool::Failoverd, Settings::Defaults) => {
            "(none: interval 1s, timeout 500ms, rise 2, fall 3, passive 3)"
        }
        (Tool::Haproxy, Settings::Defaults) => {
            "check (inter 2s, rise 2, fall 3; retries 3, no redispatch)"
        }
        (_, Settings::Passive) => match variant {
            Variant::FailoverdPassive1 => {
                "interval 1s, rise 2, fall 3, passive: { consecutive_failures: 1 }"
            }
            Variant::FailoverdPassive3 => {
                "interval 1s, rise 2, fall 3, passive: { consecutive_failures: 3 }"
            }
            Variant::HaproxyObserve => {
                "check inter 1s fall 3 rise 2 observe layer4 error-limit 1 on-error mark-down"
            }
            _ => "the same + option redispatch",
        },
    }
}

/// The tool's probe interval in a case: the kill lands at a random point within one, so the
/// runs sample the whole detection range instead of one phase of the tool's check timer.
fn interval(tool: Tool, settings: Settings) -> Duration {
    match (tool, settings) {
        (_, Settings::Same) => Duration::from_millis(100),
        (Tool::Failoverd, Settings::Defaults) | (_, Settings::Passive) => Duration::from_secs(1),
        (Tool::Haproxy, Settings::Defaults) => Duration::from_secs(2),
    }
}

/// How long traffic runs after the kill: the worst-case detection time (fall × interval +
/// timeout, plus one interval for where in its cycle the kill lands) with room to spare.
fn window(tool: Tool, settings: Settings) -> Duration {
    match (tool, settings) {
        (_, Settings::Same) => Duration::from_secs(3),
        (Tool::Failoverd, Settings::Defaults) | (_, Settings::Passive) => Duration::from_secs(7),
        (Tool::Haproxy, Settings::Defaults) => Duration::from_secs(11),
    }
}

/// The HAProxy config of a case. Timeouts are those of Debian's stock config; with them a
/// refused connect to a server is retried 3 times, 1 s apart (HAProxy's turn-around timer is
/// min(timeout connect, 1 s)), before the client's connection is closed. With `timeout check`
/// set HAProxy bounds a check's connect by min(timeout connect, inter); a SIGKILLed backend on
/// loopback refuses at once, so no check here waits for any timeout.
fn haproxy_config(
    port: u16,
    a: SocketAddr,
    b: SocketAddr,
    variant: Variant,
    settings: Settings,
) -> String {
    let (check, timeout_check) = match settings {
        Settings::Same => (
            "check inter 100ms fall 3 rise 2",
            "    timeout check 50ms\n",
        ),
        Settings::Defaults => ("check", ""),
        Settings::Passive => ("check inter 1s fall 3 rise 2", ""),
    };
    let observe = match variant {
        Variant::HaproxyObserve | Variant::HaproxyObserveRedispatch => {
            " observe layer4 error-limit 1 on-error mark-down"
        }
        _ => "",
    };
    let redispatch = match variant {
        Variant::HaproxyObserveRedispatch => "    option redispatch\n",
        _ => "",
    };
    format!(
        "global\n\
         {HAPROXY_BASE}\
         {timeout_check}\
         listen failover\n\
         \x20   bind 127.0.0.1:{port}\n\
         {redispatch}\
         \x20   server a {a} {check}{observe}\n\
         \x20   server b {b} {check} backup\n"
    )
}

/// The failoverd service of a case.
fn failoverd_service(a: SocketAddr, b: SocketAddr, variant: Variant, settings: Settings) -> String {
    // The active-probe case keeps passive health off, so it measures the probes alone.
    let health = match settings {
        Settings::Same => {
            "    health: { kind: tcp, interval: 100ms, timeout: 50ms, rise: 2, fall: 3 }\n    passive: { consecutive_failures: 0 }\n"
        }
        Settings::Defaults => "",
        Settings::Passive => match variant {
            Variant::FailoverdPassive1 => {
                "    health: { kind: tcp, interval: 1s }\n    passive: { consecutive_failures: 1 }\n"
            }
            _ => "    health: { kind: tcp, interval: 1s }\n    passive: { consecutive_failures: 3 }\n",
        },
    };
    format!(
        "  - name: failover\n    vip: {VIP}\n{health}    backends:\n\
         \x20     - {{ name: a, address: '{a}', priority: 0 }}\n\
         \x20     - {{ name: b, address: '{b}', priority: 1 }}\n"
    )
}

/// What one run measured, in milliseconds from the kill.
struct Outcome {
    attempts: usize,
    failed: usize,
    /// First reply from the backup (its attempt's end).
    first_backup_ms: f64,
    /// Start of the last attempt that failed: from then on every new connect succeeded.
    last_failure_ms: Option<f64>,
    errors: BTreeMap<i64, usize>,
    /// Attempts that took longer than [`HELD`]: a client kept waiting (HAProxy's retries
    /// and redispatch hide failures this way).
    held: usize,
    missed_ticks: u64,
    /// Every attempt: its start (ms from the kill) and whether it got an answer.
    marks: Vec<(f64, bool)>,
}

fn analyse(t: &Timeline, kill_ns: u64) -> Result<Outcome, Box<dyn std::error::Error>> {
    let ms = |ns: u64| (ns as f64 - kill_ns as f64) / 1e6;
    let served_before = t
        .attempts
        .iter()
        .filter(|a| a.2 == PRIMARY && a.1 < kill_ns)
        .count();
    if served_before == 0 {
        return Err("no connect was served by the primary before the kill".into());
    }
    let first_backup = t
        .attempts
        .iter()
        .filter(|a| a.2 == BACKUP)
        .map(|a| a.1)
        .min()
        .ok_or("no connect reached the backup within the window")?;
    let mut errors = BTreeMap::new();
    for a in t.attempts.iter().filter(|a| a.2 <= 0) {
        *errors.entry(-a.2).or_insert(0) += 1;
    }
    Ok(Outcome {
        attempts: t.attempts.len(),
        failed: t.attempts.iter().filter(|a| a.2 <= 0).count(),
        first_backup_ms: ms(first_backup),
        last_failure_ms: t
            .attempts
            .iter()
            .filter(|a| a.2 <= 0)
            .map(|a| ms(a.0))
            .reduce(f64::max),
        errors,
        held: t
            .attempts
            .iter()
            .filter(|a| a.1 - a.0 > HELD.as_nanos() as u64)
            .count(),
        missed_ticks: t.missed_ticks,
        marks: t.attempts.iter().map(|a| (ms(a.0), a.2 > 0)).collect(),
    })
}

/// Errno names for the report.
fn errno_name(e: i64) -> String {
    match e as i32 {
        libc::ECONNREFUSED => "ECONNREFUSED".into(),
        libc::ECONNRESET => "ECONNRESET".into(),
        libc::EBADMSG => "closed without reply".into(),
        libc::ETIMEDOUT => "ETIMEDOUT".into(),
        libc::EPIPE => "EPIPE".into(),
        other => format!("errno {other}"),
    }
}

/// One run of one case: backends, the tool, traffic, the kill, the timeline.
fn run_case(variant: Variant, settings: Settings) -> Result<Outcome, Box<dyn std::error::Error>> {
    let tool = variant.tool();
    let mut a = BackendProcess::spawn(ServerSpec::tcp(loopback(), PRIMARY as u32))?;
    let b = BackendProcess::spawn(ServerSpec::tcp(loopback(), BACKUP as u32))?;
    let spec = |target| ClientSpec {
        target,
        every_us: 1000,
        duration_ms: (WARMUP + interval(tool, settings) + window(tool, settings)).as_millis()
            as u64,
    };
    // Declared before the client so they outlive it (drop order is reverse).
    let env;
    let _daemon;
    let _haproxy;
    let client = match tool {
        Tool::Failoverd => {
            env = Env::new("failover")?;
            let vip = tcp_vip(VIP);
            let mut d = DaemonProcess::new(
                &env,
                "failover",
                &failoverd_service(a.addr(), b.addr(), variant, settings),
            )?;
            d.spawn("warn", None)?;
            until_table(&env, vip, Duration::from_secs(15), exactly(&[a.addr()]))
                .map_err(|e| format!("{e}\n{}", d.log_tail(10)))?;
            d.check_alive()?;
            _daemon = d;
            ClientProc::spawn(&spec(vip.addr), Some(&env))?
        }
        Tool::Haproxy => {
            let front = SocketAddr::from(([127, 0, 0, 1], free_port()?));
            _haproxy = Haproxy::start(
                "failover",
                &haproxy_config(front.port(), a.addr(), b.addr(), variant, settings),
                front,
            )?;
            ClientProc::spawn(&spec(front), None)?
        }
    };
    // A fixed delay would kill at the same phase of HAProxy's check timer every run (it
    // starts checking when it starts); failoverd's first probe is jittered already.
    thread::sleep(WARMUP + interval(tool, settings).mul_f64(fastrand::f64()));
    let kill_ns = monotonic_ns();
    a.kill();
    let limit = window(tool, settings) + ATTEMPT_TIMEOUT + Duration::from_secs(30);
    let timeline = client.wait(limit)?;
    drop(b);
    analyse(&timeline, kill_ns)
}

/// The holder: connects to `target`, reads the backend's `B<id>` line, prints `connected`,
/// then blocks reading until the socket errors (prints `error <errno> <monotonic ns>`), the
/// peer closes (`eof <ns>`) or [`HELD_WATCH`] passes (`timeout`).
fn run_holder(target: &str) -> i32 {
    use std::io::Write;
    let run = || -> io::Result<()> {
        let target: SocketAddr = target.parse().map_err(io::Error::other)?;
        let mut stream = std::net::TcpStream::connect_timeout(&target, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut buf = [0u8; 64];
        let n = stream.read(&mut buf)?;
        if parse_id(&buf[..n]).is_none() {
            return Err(io::Error::other("no B<id> reply"));
        }
        println!("connected");
        io::stdout().flush()?;
        stream.set_read_timeout(Some(HELD_WATCH + Duration::from_secs(5)))?;
        match stream.read(&mut buf) {
            Ok(0) => println!("eof {}", monotonic_ns()),
            Ok(_) => println!("data {}", monotonic_ns()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => println!("timeout"),
            Err(e) => println!("error {} {}", e.raw_os_error().unwrap_or(0), monotonic_ns()),
        }
        Ok(())
    };
    match run() {
        Ok(()) => 0,
        Err(e) => {
            println!("failed {e}");
            2
        }
    }
}

/// One held-connection run: a client holds an idle connection through the VIP to the
/// primary; the primary is frozen (SIGSTOP: a hung VM, a black hole); how long until the
/// client's socket errors, with `terminate.on_down` on or off. `None`: not within
/// [`HELD_WATCH`].
fn held_case(terminate: bool) -> Result<Option<f64>, Box<dyn std::error::Error>> {
    use std::io::BufRead;
    // A frozen process's kernel still completes TCP handshakes: only an HTTP request to its
    // health endpoint notices the freeze (the backup answers on the next loopback address).
    let health_port = free_port()?;
    let a = BackendProcess::spawn(ServerSpec {
        hold: true,
        health_bind: Some(SocketAddr::from(([127, 0, 0, 1], health_port))),
        ..ServerSpec::tcp(loopback(), PRIMARY as u32)
    })?;
    let b = BackendProcess::spawn(ServerSpec {
        health_bind: Some(SocketAddr::from(([127, 0, 0, 2], health_port))),
        ..ServerSpec::tcp(SocketAddr::from(([127, 0, 0, 2], 0)), BACKUP as u32)
    })?;
    let env = Env::new("held")?;
    let vip = tcp_vip(VIP);
    let service = format!(
        "  - name: held\n    vip: {VIP}\n    health: {{ kind: http, port: {health_port}, path: /health, interval: 100ms, timeout: 50ms, rise: 2, fall: 3 }}\n    terminate: {{ on_down: {terminate} }}\n    backends:\n\
         \x20     - {{ name: a, address: '{}', priority: 0 }}\n\
         \x20     - {{ name: b, address: '{}', priority: 1 }}\n",
        a.addr(),
        b.addr()
    );
    let mut d = DaemonProcess::new(&env, "held", &service)?;
    d.spawn("warn", None)?;
    until_table(&env, vip, Duration::from_secs(15), exactly(&[a.addr()]))
        .map_err(|e| format!("{e}\n{}", d.log_tail(10)))?;
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.env(HOLDER_ENV, vip.addr.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    place_child(&mut cmd, Some(&env.cgroup), None)?;
    let mut holder = cmd.spawn()?;
    let stdout = holder.stdout.take().ok_or("holder has no stdout")?;
    let mut lines = io::BufReader::new(stdout).lines();
    let first = lines.next().ok_or("holder exited")??;
    if first != "connected" {
        return Err(format!("holder: {first}").into());
    }
    let freeze_ns = monotonic_ns();
    a.signal(libc::SIGSTOP)?;
    let line = lines.next().ok_or("holder exited without a line")??;
    // Thaw before the guards kill it, so it dies at once.
    a.signal(libc::SIGCONT)?;
    let _ = holder.kill();
    let _ = holder.wait();
    drop(d);
    drop(b);
    let mut words = line.split_whitespace();
    Ok(match (words.next(), words.last()) {
        (Some("error" | "eof"), Some(ns)) => {
            let ns: u64 = ns.parse()?;
            Some((ns as f64 - freeze_ns as f64) / 1e6)
        }
        _ => None,
    })
}

fn held_connections() -> Result<Vec<String>, Box<dyn std::error::Error>> {
    let reps = if quick() { 1 } else { REPS_HELD };
    let mut rows = Vec::new();
    for terminate in [true, false] {
        let mut times = Vec::new();
        for rep in 0..reps {
            let t = held_case(terminate)?;
            println!(
                "held connection, terminate.on_down {terminate}, run {}: {}",
                rep + 1,
                t.map_or(format!("no error within {HELD_WATCH:?}"), |ms| format!(
                    "socket errored {ms:.0} ms after the freeze"
                ))
            );
            times.push(t);
        }
        let errored: Vec<f64> = times.iter().flatten().copied().collect();
        rows.push(format!(
            "| failoverd, terminate.on_down: {terminate} | HTTP, interval 100ms, timeout 50ms, fall 3 | {}/{} | {} | {} |",
            errored.len(),
            times.len(),
            if errored.is_empty() { "never".to_string() } else { format!("{:.0}", median(errored.clone())) },
            if errored.len() < times.len() { "never".to_string() } else { format!("{:.0}", errored.iter().copied().fold(0.0, f64::max)) },
        ));
    }
    Ok(rows)
}

fn bench() -> Result<(), Box<dyn std::error::Error>> {
    let reps = |settings| match (quick(), settings) {
        (true, _) => 1,
        (false, Settings::Same) => REPS_SAME,
        (false, Settings::Defaults) => REPS_DEFAULTS,
        (false, Settings::Passive) => REPS_PASSIVE,
    };
    println!(
        "failover: kill -9 of the primary while a client starts a connect every 1 ms; {} runs per tool with the same settings, {} with each tool's defaults",
        reps(Settings::Same),
        reps(Settings::Defaults)
    );
    println!(
        "kernel {}, {} CPUs; each attempt: connect, read `B<id>`, close; timeout {ATTEMPT_TIMEOUT:?}\n",
        kernel(),
        thread::available_parallelism()?.get()
    );
    let mut rows = Vec::new();
    let mut spreads = Vec::new();
    for settings in [Settings::Same, Settings::Defaults, Settings::Passive] {
        let variants = settings.variants();
        let mut results: BTreeMap<&'static str, Vec<Outcome>> = BTreeMap::new();
        for rep in 0..reps(settings) {
            // Rotate which variant goes first, so a slow phase of the machine hits all.
            for k in 0..variants.len() {
                let variant = variants[(rep + k) % variants.len()];
                let o = run_case(variant, settings)?;
                let errors: Vec<String> = o
                    .errors
                    .iter()
                    .map(|(e, n)| format!("{n} {}", errno_name(*e)))
                    .collect();
                println!(
                    "{}, {}, run {}: {} attempts, {} failed [{}], {} held, first reply from backup at +{:.1} ms, last failed attempt started at {}, missed ticks {}",
                    variant.name(),
                    settings.label(),
                    rep + 1,
                    o.attempts,
                    o.failed,
                    errors.join(", "),
                    o.held,
                    o.first_backup_ms,
                    o.last_failure_ms.map_or("–".into(), |m| format!("+{m:.1} ms")),
                    o.missed_ticks
                );
                results.entry(variant.name()).or_default().push(o);
            }
        }
        // The first run of each variant, one above the other, around the kill.
        let figure: Vec<(&str, Vec<(f64, bool)>)> = variants
            .iter()
            .map(|v| (v.name(), results[v.name()][0].marks.clone()))
            .collect();
        let (file, window) = match settings {
            Settings::Same => ("failover-same-settings.svg", (-50.0, 450.0)),
            Settings::Defaults => ("failover-defaults.svg", (-200.0, 6_000.0)),
            Settings::Passive => ("failover-passive.svg", (-5.0, 45.0)),
        };
        common::figures::failover_timeline(
            &common::figures::path(file),
            &format!(
                "kill -9 of the primary, 1 connect/ms: every attempt (green: answered, red: failed), {}",
                settings.label()
            ),
            "ms from kill -9 of the primary",
            &figure,
            window,
        )?;
        println!("figure: docs/figures/{file}");
        for variant in variants {
            let runs = &results[variant.name()];
            let failed: Vec<f64> = runs.iter().map(|o| o.failed as f64).collect();
            let held: Vec<f64> = runs.iter().map(|o| o.held as f64).collect();
            let first: Vec<f64> = runs.iter().map(|o| o.first_backup_ms).collect();
            let last: Vec<f64> = runs
                .iter()
                .map(|o| o.last_failure_ms.unwrap_or(0.0))
                .collect();
            let max = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
            rows.push(format!(
                "| {} | {} | {} | {:.0} | {:.0} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} |",
                variant.name(),
                settings.label(),
                settings_text(*variant, settings),
                median(failed.clone()),
                max(&failed),
                median(held.clone()),
                median(first.clone()),
                max(&first),
                median(last.clone()),
                max(&last),
            ));
            let sorted = |mut v: Vec<f64>| {
                v.sort_by(f64::total_cmp);
                v.iter()
                    .map(|x| format!("{x:.1}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            spreads.push(format!(
                "{}, {}: kill → first reply from backup per run, sorted: {} ms; failed connects, sorted: {}",
                variant.name(),
                settings.label(),
                sorted(first),
                sorted(failed)
            ));
        }
    }
    println!("\n| tool | case | settings | failed connects (median) | failed (worst) | held > 100 ms (median) | kill → first reply from backup, ms (median) | (worst) | kill → last failed attempt, ms (median) | (worst) |");
    println!("|---|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        println!("{r}");
    }
    println!();
    for s in spreads {
        println!("{s}");
    }
    let held = held_connections()?;
    println!("\n| held idle connection to the primary, primary frozen (SIGSTOP) | probes | client socket errored | freeze → error, ms (median) | (worst) |");
    println!("|---|---|---:|---:|---:|");
    for r in held {
        println!("{r}");
    }
    Ok(())
}
