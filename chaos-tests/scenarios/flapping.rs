//! Scenario 4: the primary's port comes and goes every 200–500 ms for 20 s. Hysteresis alone
//! would fail over and back on every cycle long enough to pass `fall` and then `rise` probes
//! (most of some 40 cycles); the circuit breaker ejects it for growing periods,
//! so failovers stay few and most connects go to the stable standby.

use std::time::Duration;

use libtest_mimic::Failed;

use crate::common::{finish, let_load_run, service, TCP_HEALTH};
use crate::record::Record;
use crate::support::{
    client::monotonic_ns,
    daemon::DaemonProcess,
    env::Env,
    kernel::{check, exactly, loopback, tcp_vip, until_table},
    server::{BackendProcess, ServerSpec},
};

/// How long the primary flaps.
const FLAPPING: Duration = Duration::from_secs(20);
/// Failovers (either way) allowed in that time. With the breaker below (open 1 s, doubling
/// up to 8 s) a flapper gets back in about five times in 20 s and each return costs two
/// failovers; the rest is room for the breaker's decay after a long up phase. Without the
/// breaker it would be up to two per cycle.
const MAX_FAILOVERS: usize = 16;
/// Attempts before the flapping starts: about 300 ms of load, so that nearly all of the load's
/// time is spent on the flapping.
const WARM_UP: u64 = 120;

/// Runs the scenario.
pub fn run(r: &mut Record) -> Result<(), Failed> {
    let env = Env::new("cflap")?;
    let mut a = BackendProcess::spawn(ServerSpec::tcp(loopback(), 1))?;
    let b = BackendProcess::spawn(ServerSpec::tcp(loopback(), 2))?;
    let vip = tcp_vip("127.81.4.1:80");
    let services = service(
        "svc",
        vip.addr,
        TCP_HEALTH,
        &[("a", a.addr().to_string(), 0), ("b", b.addr().to_string(), 1)],
    ) + "    breaker: { failures: 3, open_for: 1s, max_open_for: 8s, max_ejected_percent: 100 }\n";
    let mut d = DaemonProcess::new(&env, "cflap", &services)?;
    d.start()?;
    until_table(&env, vip, Duration::from_secs(5), exactly(&[a.addr()]))?;

    let load = crate::common::load(&env, vip.addr, FLAPPING + Duration::from_millis(500))?;
    let_load_run(&env, vip, WARM_UP)?;
    let flap_start = monotonic_ns();
    a.kill();
    a = BackendProcess::spawn(ServerSpec {
        flap_ms: 200,
        flap_max_ms: 500,
        ..ServerSpec::tcp(a.addr(), 1)
    })?;
    let (_, t) = finish(load, r, flap_start)?;

    let events = d.ok(&["events", "--output", "json"])?;
    let failovers = events
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["kind"] == "failover")
        .count();
    let status = d.status()?;
    let ejections = status.services[0]
        .backends
        .iter()
        .find(|x| x.name == "a")
        .map_or(0, |x| x.ejections);
    let to_standby = t.served_by_after(2, flap_start);
    let to_flapper = t.served_by_after(1, flap_start);
    r.stale = t.failed_after(flap_start);
    r.note("failovers", failovers as u64);
    r.note("max_failovers", MAX_FAILOVERS as u64);
    r.note("ejections", ejections);
    r.note("served_by_standby", to_standby);
    r.note("served_by_flapper", to_flapper);
    drop(a);

    check(failovers <= MAX_FAILOVERS, || {
        format!("{failovers} failovers in {FLAPPING:?}: the breaker did not hold the flapper out")
    })?;
    check(ejections >= 2, || {
        format!("the breaker ejected the flapper {ejections} times")
    })?;
    check(to_standby > to_flapper, || {
        format!("most connects should go to the standby: {to_standby} vs {to_flapper}")
    })
}
