//! What most scenarios share: the probe settings and the detection bound they imply, a service
//! entry for the config, a VIP with a primary and a standby backend process behind a real
//! daemon, the load client, and the barrier that paces a scenario by the load's attempts.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use failoverd::datapath::{PinnedMaps, Vip};
use libtest_mimic::Failed;

use crate::record::Record;
use crate::support::{
    client::{monotonic_ns, spawn_client, ClientChild, ClientReport, ClientSpec, Mode},
    daemon::DaemonProcess,
    env::Env,
    kernel::{exactly, loopback, tcp_vip, until_table},
    server::{BackendProcess, ServerSpec},
};
use crate::timeline::Timeline;

/// Probe interval of every scenario's services.
pub const INTERVAL: Duration = Duration::from_millis(100);
/// Probe timeout.
pub const TIMEOUT: Duration = Duration::from_millis(50);
/// Failures in a row that mark a backend down.
pub const FALL: u32 = 3;
/// The `health:` entry matching the constants above.
pub const TCP_HEALTH: &str = "{ kind: tcp, interval: 100ms, timeout: 50ms, rise: 2, fall: 3 }";

/// Slack on top of a computed bound for scheduling on a loaded 2-core machine.
pub const MARGIN: Duration = Duration::from_millis(400);

/// How long a load client waits on a connect or a reply before it counts the attempt failed.
pub const CLIENT_TIMEOUT_MS: u64 = 300;

/// The longest a dead backend can stay in the table: `fall` failed probes, the last one
/// possibly a full timeout late.
pub fn detection_bound() -> Duration {
    INTERVAL * FALL + TIMEOUT
}

/// A `services:` entry: `backends` are (name, address as written, priority).
pub fn service(
    name: &str,
    vip: SocketAddr,
    health: &str,
    backends: &[(&str, String, u8)],
) -> String {
    service_with(name, vip, health, "", backends)
}

/// Like [`service`], with `extra` keys of the entry (whole lines, e.g.
/// `"    passive: { consecutive_failures: 3 }\n"`).
pub fn service_with(
    name: &str,
    vip: SocketAddr,
    health: &str,
    extra: &str,
    backends: &[(&str, String, u8)],
) -> String {
    let mut s =
        format!("  - name: {name}\n    vip: {vip}\n    health: {health}\n{extra}    backends:\n");
    for (n, addr, priority) in backends {
        s.push_str(&format!(
            "      - {{ name: {n}, address: '{addr}', priority: {priority} }}\n"
        ));
    }
    s
}

/// A VIP served by a primary `a` (id 1, priority 0) and a standby `b` (id 2, priority 1), both
/// real processes, behind a running daemon. Fields drop in order: daemon first, env last.
pub struct Pair {
    /// The daemon.
    pub d: DaemonProcess,
    /// The primary.
    pub a: BackendProcess,
    /// The standby.
    pub b: BackendProcess,
    /// The VIP.
    pub vip: Vip,
    /// The trial's cgroup and pins.
    pub env: Env,
}

impl Pair {
    /// Starts the backends and the daemon; returns once the kernel's table is `a` alone.
    pub fn start(tag: &str, vip: &str) -> Result<Pair, Failed> {
        Self::start_with(tag, vip, ServerSpec::tcp(loopback(), 1), TCP_HEALTH)
    }

    /// Like `start`, with `a` (and `b`, same kind with id 2) built from `a_spec`, and `health`.
    pub fn start_with(
        tag: &str,
        vip: &str,
        a_spec: ServerSpec,
        health: &str,
    ) -> Result<Pair, Failed> {
        Self::start_full(tag, vip, a_spec, health, "")
    }

    /// Like `start_with`, with `extra` keys in the service entry (see [`service_with`]).
    pub fn start_full(
        tag: &str,
        vip: &str,
        a_spec: ServerSpec,
        health: &str,
        extra: &str,
    ) -> Result<Pair, Failed> {
        let env = Env::new(tag)?;
        let a = BackendProcess::spawn(a_spec.clone())?;
        let b = BackendProcess::spawn(ServerSpec {
            id: 2,
            // On the next loopback address, so that a per-service health port is free for both.
            bind: SocketAddr::new(second_ip(a_spec.bind), 0),
            flap_ms: 0,
            flap_max_ms: 0,
            health_bind: a_spec
                .health_bind
                .map(|h| SocketAddr::new(second_ip(h), h.port())),
            ..a_spec
        })?;
        let vip = tcp_vip(vip);
        let services = service_with(
            "svc",
            vip.addr,
            health,
            extra,
            &[
                ("a", a.addr().to_string(), 0),
                ("b", b.addr().to_string(), 1),
            ],
        );
        let mut d = DaemonProcess::new(&env, tag, &services)?;
        d.start()?;
        until_table(&env, vip, Duration::from_secs(5), exactly(&[a.addr()]))?;
        Ok(Pair { d, a, b, vip, env })
    }

    /// Waits (at most 3 s) until the kernel's table is `addr` alone; returns how long it took.
    pub fn until_only(&self, addr: SocketAddr) -> Result<Duration, Failed> {
        Ok(until_table(
            &self.env,
            self.vip,
            Duration::from_secs(3),
            exactly(&[addr]),
        )?)
    }

    /// Lets the load make `n` attempts on the VIP from now; returns how long that took.
    pub fn let_load_run(&self, n: u64) -> Result<Duration, Failed> {
        let_load_run(&self.env, self.vip, n)
    }

    /// Starts a load client in the trial's cgroup: one connect-and-read every millisecond for
    /// `duration`.
    pub fn load(&self, duration: Duration) -> Result<ClientChild, Failed> {
        load(&self.env, self.vip.addr, duration)
    }
}

/// `127.0.0.2` for `127.0.0.1` and so on: where the standby's health endpoint listens when the
/// primary's is on the service's health port.
fn second_ip(h: SocketAddr) -> std::net::IpAddr {
    match h.ip() {
        std::net::IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            std::net::Ipv4Addr::new(a, b, c, d.wrapping_add(1)).into()
        }
        other => other,
    }
}

/// A load client in `env`'s cgroup: one `TcpReadId` attempt per millisecond for `duration`,
/// each given `CLIENT_TIMEOUT_MS`, with a timeline.
pub fn load(env: &Env, target: SocketAddr, duration: Duration) -> Result<ClientChild, Failed> {
    let spec = ClientSpec {
        timeout_ms: CLIENT_TIMEOUT_MS,
        ..ClientSpec::load(target, Mode::TcpReadId, 1, duration.as_millis() as u64)
    };
    Ok(spawn_client(&env.cgroup, None, &spec)?)
}

/// Waits for a load client, adds its attempts to the record (its first failures timed from
/// `origin_ns`, the fault) and returns its report and timeline.
pub fn finish(
    load: ClientChild,
    r: &mut Record,
    origin_ns: u64,
) -> Result<(ClientReport, Timeline), Failed> {
    let mut report = load.wait_report()?;
    let timeline = Timeline(std::mem::take(&mut report.timeline));
    r.add_load(&report);
    r.keep_failures(&timeline, origin_ns);
    draw(r, &timeline, origin_ns);
    Ok((report, timeline))
}

/// Draws every attempt of the load around the fault as `<scenario>.svg` beside the record:
/// green answered, red failed, from 0.3 s before the fault to 0.5 s past its bound. A figure
/// that cannot be drawn is reported and changes no verdict.
fn draw(r: &Record, timeline: &Timeline, origin_ns: u64) {
    let marks: Vec<(f64, bool)> = timeline
        .0
        .iter()
        .map(|a| ((a.at_ns as f64 - origin_ns as f64) / 1e6, a.errno.is_none()))
        .collect();
    let end = r.bound_ms.unwrap_or(1_000.0).max(1_000.0) + 500.0;
    let file = crate::record::results_dir().join(format!("{}.svg", r.scenario));
    let title = format!("{}: every connect attempt around the fault", r.scenario);
    if let Err(e) = crate::figures::failover_timeline(
        &file,
        &title,
        "ms from the fault",
        &[("VIP", marks)],
        (-300.0, end),
    ) {
        eprintln!("chaos: drawing {} failed: {e}", file.display());
    }
}

/// Attempts the load makes before a fault: the "nothing failed before the fault" checks cover
/// at least these. About 800 ms of load at the 0.4 attempts per ms a load client manages on 2
/// shared cores (its nominal rate is 1 per ms).
pub const WARM_UP: u64 = 300;

/// Attempts the load makes while a fault holds, counted from the moment the table switched:
/// the "no failure after the detection bound" checks cover at least these. About 1.2 s of load.
pub const HOLD: u64 = 500;

/// The longest a barrier waits for its attempts: ten times what they take at the slow rate
/// above. A barrier that runs out means the load stopped (ended early, or its client died).
pub const BARRIER_LIMIT: Duration = Duration::from_secs(10);

/// How often a barrier reads the counters.
const BARRIER_POLL: Duration = Duration::from_millis(5);

/// A point in a scenario counted in the load's attempts on one VIP, as the kernel counts them
/// (connects it translated plus connects it refused for want of a live backend). The counters
/// live in the BPF program, so they move while the daemon is dead too.
pub struct Attempts {
    maps: PinnedMaps,
    vip: Vip,
    vip_id: u32,
    from: u64,
}

impl Attempts {
    /// Starts counting `vip`'s attempts at `at_ns` (`CLOCK_MONOTONIC`, as `monotonic_ns`),
    /// first waiting for it if it is ahead: for checks over a window that opens at a computed
    /// moment, such as "no failure later than the bound after the fault".
    pub fn from_instant(env: &Env, vip: Vip, at_ns: u64) -> Result<Attempts, Failed> {
        let ahead = Duration::from_nanos(at_ns.saturating_sub(monotonic_ns()));
        if ahead > BARRIER_LIMIT {
            return Err(format!("{ahead:?} is too far ahead to count from").into());
        }
        std::thread::sleep(ahead);
        Attempts::from_now(env, vip)
    }

    /// Starts counting `vip`'s attempts from now.
    pub fn from_now(env: &Env, vip: Vip) -> Result<Attempts, Failed> {
        let maps = PinnedMaps::open(env.pins.path())?;
        let vip_id = maps
            .tables()?
            .get(&vip)
            .ok_or_else(|| format!("no table for {vip} in the kernel"))?
            .table
            .vip_id;
        let mut attempts = Attempts {
            maps,
            vip,
            vip_id,
            from: 0,
        };
        attempts.from = attempts.total()?;
        Ok(attempts)
    }

    fn total(&self) -> Result<u64, Failed> {
        let c = self.maps.counters(self.vip_id)?;
        Ok(c.connects + c.rejected)
    }

    /// Waits (at most `BARRIER_LIMIT`, polling every 5 ms) until the kernel has seen `n`
    /// attempts on the VIP since this count began; returns how long the wait took.
    pub fn until(&self, n: u64) -> Result<Duration, Failed> {
        let start = Instant::now();
        let mut seen = 0;
        while start.elapsed() < BARRIER_LIMIT {
            seen = self.total()?.saturating_sub(self.from);
            if seen >= n {
                return Ok(start.elapsed());
            }
            std::thread::sleep(BARRIER_POLL);
        }
        Err(format!(
            "only {seen} of {n} attempts on {} within {BARRIER_LIMIT:?}: the load stopped",
            self.vip
        )
        .into())
    }
}

/// Lets the load on `vip` make `n` attempts from now; returns how long that took.
pub fn let_load_run(env: &Env, vip: Vip, n: u64) -> Result<Duration, Failed> {
    Attempts::from_now(env, vip)?.until(n)
}
