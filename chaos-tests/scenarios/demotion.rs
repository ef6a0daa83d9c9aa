//! Scenario 14: a database failover, none left on the old primary. Real Redis: the primary
//! holds long-lived client connections through the VIP (subscribers, which Redis keeps across a
//! role change; blocked list pops it would unblock itself); the replica is promoted and the old
//! primary demoted while still running, so nothing closes their connections. The role check
//! sees "replica" and moves the VIP at once; `terminate.on_down` aborts the held connections,
//! so no client is left talking to a server that now refuses its writes.

use std::{
    io::Read,
    net::SocketAddr,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use libtest_mimic::Failed;

use crate::common::MARGIN;
use crate::record::Record;
use crate::servers::{missing, skip, Redis};
use crate::support::{
    client::{monotonic_ns, place_child},
    daemon::DaemonProcess,
    env::Env,
    kernel::{check, exactly, tcp_vip, until_table},
};
use crate::timeline::ms;

/// Held client connections.
const HELD: usize = 3;
/// Role probes: a demotion is acted on at the first "replica" answer.
const INTERVAL: Duration = Duration::from_millis(200);

/// A `redis-cli` in the trial's cgroup, subscribed through the VIP; killed on drop.
struct Blocked(Child);

impl Blocked {
    fn start(env: &Env, vip: SocketAddr) -> Result<Blocked, Failed> {
        let mut cmd = Command::new("/usr/bin/redis-cli");
        cmd.args(["-h", &vip.ip().to_string(), "-p", &vip.port().to_string()])
            .args(["SUBSCRIBE", "chaos"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        place_child(&mut cmd, Some(&env.cgroup), None)?;
        Ok(Blocked(cmd.spawn()?))
    }

    /// Waits (bounded by `limit`) for it to exit; when it did (monotonic ns) and what it said.
    fn wait(&mut self, limit: Duration) -> Result<(u64, String), Failed> {
        let deadline = Instant::now() + limit;
        loop {
            if self.0.try_wait()?.is_some() {
                let at = monotonic_ns();
                // Both pipes are small (a few lines) and the process has exited: no deadlock.
                let mut said = String::new();
                if let Some(mut out) = self.0.stdout.take() {
                    let _ = out.read_to_string(&mut said);
                }
                if let Some(mut err) = self.0.stderr.take() {
                    let _ = err.read_to_string(&mut said);
                }
                return Ok((at, said.trim().to_owned()));
            }
            if Instant::now() >= deadline {
                return Err(format!("a held redis-cli was still blocked after {limit:?}").into());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

impl Drop for Blocked {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Subscribers connected to a Redis server (`sub=` above 0 in its `CLIENT LIST`): the held
/// clients, and never the daemon's role probes, which come and go on their own.
fn subscribers(server: &Redis) -> Result<u64, Failed> {
    let list = server.cli(None, &["CLIENT", "LIST"]);
    Ok(list
        .lines()
        .filter(|l| {
            l.split_whitespace()
                .find_map(|f| f.strip_prefix("sub="))
                .and_then(|n| n.parse::<u64>().ok())
                .is_some_and(|n| n > 0)
        })
        .count() as u64)
}

/// Runs the scenario.
pub fn run(r: &mut Record) -> Result<(), Failed> {
    if let Some(absent) = missing(&["/usr/bin/redis-server", "/usr/bin/redis-cli"]) {
        skip("s14_redis_demotion", &absent);
        return Ok(());
    }
    let env = Env::new("cdemote")?;
    let a = Redis::start("chaos-redis-a", &[]);
    let a_port = a.addr().port().to_string();
    let b = Redis::start("chaos-redis-b", &["--replicaof", "127.0.0.1", &a_port]);
    let vip = tcp_vip("127.81.14.1:6379");
    let services = format!(
        "  - name: cache\n    vip: {}\n    health: {{ kind: redis, role: primary, interval: {}ms, timeout: 150ms, rise: 2, fall: 3 }}\n    terminate: {{ on_down: true }}\n    backends:\n      - {{ name: a, address: '{}' }}\n      - {{ name: b, address: '{}' }}\n",
        vip.addr,
        INTERVAL.as_millis(),
        a.addr(),
        b.addr()
    );
    let mut d = DaemonProcess::new(&env, "cdemote", &services)?;
    d.start()?;
    until_table(&env, vip, Duration::from_secs(10), exactly(&[a.addr()]))?;

    let mut held = (0..HELD)
        .map(|_| Blocked::start(&env, vip.addr))
        .collect::<Result<Vec<_>, _>>()?;
    // Barrier: the primary has every one of them subscribed.
    let deadline = Instant::now() + Duration::from_secs(5);
    while subscribers(&a)? < HELD as u64 {
        check(Instant::now() < deadline, || {
            "the held clients never reached the primary".into()
        })?;
        std::thread::sleep(Duration::from_millis(10));
    }

    // Failover: promote b, then demote a while it keeps running.
    let started = monotonic_ns();
    check(b.cli(None, &["REPLICAOF", "NO", "ONE"]) == "OK", || {
        "promoting b failed".into()
    })?;
    let b_port = b.addr().port().to_string();
    check(
        a.cli(None, &["REPLICAOF", "127.0.0.1", &b_port]) == "OK",
        || "demoting a failed".into(),
    )?;
    let demoted = monotonic_ns();
    let bound = INTERVAL + Duration::from_millis(150) + MARGIN;
    r.bound_ms = Some(ms(bound));
    let switched =
        until_table(&env, vip, Duration::from_secs(5), exactly(&[b.addr()])).map_err(|e| {
            format!(
                "{e}\nstatus: {}\n{}",
                d.ok(&["status"]).unwrap_or_default(),
                d.log_tail(30)
            )
        })?;
    r.note("table_switch_ms", ms(switched));
    let mut worst = 0u64;
    for h in &mut held {
        let (at, said) = h.wait(Duration::from_secs(5))?;
        check(said.contains("connection abort"), || {
            format!("a held client did not see its connection aborted: {said:?}")
        })?;
        worst = worst.max(at.saturating_sub(demoted));
    }
    let worst = Duration::from_nanos(worst);
    r.note("demotion_to_last_abort_ms", ms(worst));
    r.note(
        "promotion_to_demotion_ms",
        ms(Duration::from_nanos(demoted - started)),
    );
    r.recovery_ms = Some(ms(worst));
    // None left on the old primary.
    let left = subscribers(&a)?;
    r.stale = left;
    // New connections land on the new primary.
    let mut cmd = Command::new("/usr/bin/redis-cli");
    cmd.args([
        "-h",
        &vip.addr.ip().to_string(),
        "-p",
        &vip.addr.port().to_string(),
        "ROLE",
    ])
    .stdin(Stdio::null());
    place_child(&mut cmd, Some(&env.cgroup), None)?;
    let role = String::from_utf8_lossy(&cmd.output()?.stdout).into_owned();
    check(worst <= bound, || {
        format!("held connections were aborted {worst:?} after the demotion, bound {bound:?}")
    })?;
    check(left == 0, || {
        format!("{left} subscribers still connected to the demoted primary")
    })?;
    check(role.starts_with("master"), || {
        format!("a new connection through the VIP reached: {role}")
    })
}
