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
/// Traffic before the kill, so both tools are seen serving from the primary first; plus a
/// random part of one probe interval.
const WARMUP: Duration = Duration::from_secs(1);
/// A client attempt that takes longer fails with ETIMEDOUT; above HAProxy's retry budget
/// (3 retries, 1 s apart), so its own verdict on a connect is what gets counted.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
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
    /// interval 100 ms, timeout 50 ms, fall 3, rise 2 on both.
    Same,
    /// Each tool's defaults.
    Defaults,
}

impl Settings {
    fn label(self) -> &'static str {
        match self {
            Settings::Same => "same probes: 100 ms, timeout 50 ms, fall 3, rise 2",
            Settings::Defaults => "each tool's defaults",
        }
    }
}

/// The case's settings as written in each tool's config, for the report.
fn settings_text(tool: Tool, settings: Settings) -> &'static str {
    match (tool, settings) {
        (Tool::Failoverd, Settings::Same) => "interval 100ms, timeout 50ms, rise 2, fall 3",
        (Tool::Haproxy, Settings::Same) => "check inter 100ms fall 3 rise 2, timeout check 50ms",
        (Tool::Failoverd, Settings::Defaults) => {
            "(none: interval 1s, timeout 500ms, rise 2, fall 3)"
        }
        (Tool::Haproxy, Settings::Defaults) => {
            "check (inter 2s, rise 2, fall 3; retries 3, no redispatch)"
        }
    }
}

/// The tool's probe interval in a case: the kill lands at a random point within one, so the
/// runs sample the whole detection range instead of one phase of the tool's check timer.
fn interval(tool: Tool, settings: Settings) -> Duration {
    match (tool, settings) {
        (_, Settings::Same) => Duration::from_millis(100),
        (Tool::Failoverd, Settings::Defaults) => Duration::from_secs(1),
        (Tool::Haproxy, Settings::Defaults) => Duration::from_secs(2),
    }
}

/// How long traffic runs after the kill: the worst-case detection time (fall × interval +
/// timeout, plus one interval for where in its cycle the kill lands) with room to spare.
fn window(tool: Tool, settings: Settings) -> Duration {
    match (tool, settings) {
        (_, Settings::Same) => Duration::from_secs(3),
        (Tool::Failoverd, Settings::Defaults) => Duration::from_secs(7),
        (Tool::Haproxy, Settings::Defaults) => Duration::from_secs(11),
    }
}

/// The HAProxy config of a case. Timeouts are those of Debian's stock config; with them a
/// refused connect to a server is retried 3 times, 1 s apart (HAProxy's turn-around timer is
/// min(timeout connect, 1 s)), before the client's connection is closed. With `timeout check`
/// set HAProxy bounds a check's connect by min(timeout connect, inter); a SIGKILLed backend on
/// loopback refuses at once, so no check here waits for any timeout.
fn haproxy_config(port: u16, a: SocketAddr, b: SocketAddr, settings: Settings) -> String {
    let (check, timeout_check) = match settings {
        Settings::Same => (
            "check inter 100ms fall 3 rise 2",
            "    timeout check 50ms\n",
        ),
        Settings::Defaults => ("check", ""),
    };
    format!(
        "global\n\
         {HAPROXY_BASE}\
         {timeout_check}\
         listen failover\n\
         \x20   bind 127.0.0.1:{port}\n\
         \x20   server a {a} {check}\n\
         \x20   server b {b} {check} backup\n"
    )
}

/// The failoverd service of a case.
fn failoverd_service(a: SocketAddr, b: SocketAddr, settings: Settings) -> String {
    let health = match settings {
        Settings::Same => {
            "    health: { kind: tcp, interval: 100ms, timeout: 50ms, rise: 2, fall: 3 }\n"
        }
        Settings::Defaults => "",
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
fn run_case(tool: Tool, settings: Settings) -> Result<Outcome, Box<dyn std::error::Error>> {
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
                &failoverd_service(a.addr(), b.addr(), settings),
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
                &haproxy_config(front.port(), a.addr(), b.addr(), settings),
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

fn bench() -> Result<(), Box<dyn std::error::Error>> {
    let reps = |settings| match (quick(), settings) {
        (true, _) => 1,
        (false, Settings::Same) => REPS_SAME,
        (false, Settings::Defaults) => REPS_DEFAULTS,
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
    for settings in [Settings::Same, Settings::Defaults] {
        let mut results: BTreeMap<&'static str, Vec<Outcome>> = BTreeMap::new();
        for rep in 0..reps(settings) {
            // Alternate which tool goes first, so a slow phase of the machine hits both.
            let order = if rep % 2 == 0 {
                [Tool::Failoverd, Tool::Haproxy]
            } else {
                [Tool::Haproxy, Tool::Failoverd]
            };
            for tool in order {
                let o = run_case(tool, settings)?;
                let errors: Vec<String> = o
                    .errors
                    .iter()
                    .map(|(e, n)| format!("{n} {}", errno_name(*e)))
                    .collect();
                println!(
                    "{tool:?}, {}, run {}: {} attempts, {} failed [{}], first reply from backup at +{:.0} ms, last failed attempt started at {}, missed ticks {}",
                    settings.label(),
                    rep + 1,
                    o.attempts,
                    o.failed,
                    errors.join(", "),
                    o.first_backup_ms,
                    o.last_failure_ms.map_or("–".into(), |m| format!("+{m:.0} ms")),
                    o.missed_ticks
                );
                results.entry(name(tool)).or_default().push(o);
            }
        }
        // The first run of each tool, one above the other, around the kill.
        let figure: Vec<(&str, Vec<(f64, bool)>)> = [Tool::Failoverd, Tool::Haproxy]
            .into_iter()
            .map(|tool| (name(tool), results[name(tool)][0].marks.clone()))
            .collect();
        let (file, window) = match settings {
            Settings::Same => ("failover-same-settings.svg", (-50.0, 450.0)),
            Settings::Defaults => ("failover-defaults.svg", (-200.0, 6_000.0)),
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
        for tool in [Tool::Failoverd, Tool::Haproxy] {
            let runs = &results[name(tool)];
            let failed: Vec<f64> = runs.iter().map(|o| o.failed as f64).collect();
            let first: Vec<f64> = runs.iter().map(|o| o.first_backup_ms).collect();
            let last: Vec<f64> = runs
                .iter()
                .map(|o| o.last_failure_ms.unwrap_or(0.0))
                .collect();
            rows.push(format!(
                "| {} | {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |",
                name(tool),
                settings.label(),
                settings_text(tool, settings),
                median(failed.clone()),
                failed.iter().copied().fold(0.0, f64::max),
                median(first.clone()),
                first.iter().copied().fold(0.0, f64::max),
                median(last.clone()),
                last.iter().copied().fold(0.0, f64::max),
            ));
            let sorted = |mut v: Vec<f64>| {
                v.sort_by(f64::total_cmp);
                v.iter()
                    .map(|x| format!("{x:.0}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            spreads.push(format!(
                "{}, {}: kill → first reply from backup per run, sorted: {} ms; failed connects, sorted: {}",
                name(tool),
                settings.label(),
                sorted(first),
                sorted(failed)
            ));
        }
    }
    println!("\n| tool | case | probe settings | failed connects (median) | failed (worst) | kill → first reply from backup, ms (median) | (worst) | kill → last failed attempt, ms (median) | (worst) |");
    println!("|---|---|---|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        println!("{r}");
    }
    println!();
    for s in spreads {
        println!("{s}");
    }
    Ok(())
}

fn name(tool: Tool) -> &'static str {
    match tool {
        Tool::Failoverd => "failoverd",
        Tool::Haproxy => "HAProxy",
    }
}
