//! Scenario 2: freeze the primary with SIGSTOP. Its kernel still completes TCP handshakes, so a
//! bare connect probe would keep passing: the service uses an HTTP health check, whose requests
//! now time out. Connects that reached the frozen primary before detection time out too; after
//! SIGCONT the primary rises again and traffic fails back with nothing lost.

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use libtest_mimic::Failed;

use crate::common::{
    finish, Attempts, Pair, CLIENT_TIMEOUT_MS, FALL, INTERVAL, MARGIN, TIMEOUT, WARM_UP,
};
use crate::record::Record;
use crate::support::{client::monotonic_ns, kernel::check, server::ServerSpec};
use crate::timeline::{ms, ms_between};

/// Attempts the load makes between the moment no connect may fail any more (the bound plus a
/// client timeout after the freeze) and SIGCONT: the "no late failure" check covers them.
/// About the 800 ms that window lasted when the freeze was held a fixed 1.5 s after the switch.
const LATE: u64 = 350;

/// Runs the scenario.
pub fn run(r: &mut Record) -> Result<(), Failed> {
    let health_port = free_port()?;
    let a_spec = ServerSpec {
        health_bind: Some(SocketAddr::from(([127, 0, 0, 1], health_port))),
        ..ServerSpec::tcp("127.0.0.1:0".parse()?, 1)
    };
    let health = format!(
        "{{ kind: http, port: {health_port}, path: /health, interval: 100ms, timeout: 50ms, rise: 2, fall: 3 }}"
    );
    let p = Pair::start_with("cfreeze", "127.81.2.1:80", a_spec, &health)?;
    // A probe that times out takes its whole timeout to say so.
    let bound = INTERVAL * FALL + TIMEOUT + MARGIN;
    r.bound_ms = Some(ms(bound));
    let load = p.load(Duration::from_millis(4_500))?;
    p.let_load_run(WARM_UP)?;

    let frozen = monotonic_ns();
    p.a.signal(libc::SIGSTOP)?;
    let switched = p.until_only(p.b.addr())?;
    r.note("table_switch_ms", ms(switched));
    // An attempt that started just before the switch may wait its whole timeout.
    let late_from = frozen + (bound + Duration::from_millis(CLIENT_TIMEOUT_MS)).as_nanos() as u64;
    Attempts::from_instant(&p.env, p.vip, late_from)?.until(LATE)?;

    let thawed = monotonic_ns();
    r.note("held_ms", ms_between(frozen, thawed));
    p.a.signal(libc::SIGCONT)?;
    let failback = p.until_only(p.a.addr())?;
    r.note("failback_ms", ms(failback));

    let (report, t) = finish(load, r, frozen)?;
    r.stale = t.failed_ending_in(frozen, thawed);
    r.recovery_ms = t.recovery(frozen, thawed).map(ms);
    check(switched <= bound, || {
        format!("the frozen primary left the table after {switched:?}, bound {bound:?}")
    })?;
    let late = t.failed_in(late_from, thawed);
    check(late == 0, || {
        format!("{late} connects failed after the frozen primary should have left the table")
    })?;
    let refused = report.errno_count(libc::ECONNREFUSED);
    check(refused == 0, || {
        format!("a frozen backend times out, it does not refuse: {refused} refused")
    })?;
    check(t.failed_after(thawed) == 0, || {
        "a connect failed after SIGCONT".into()
    })?;
    check(t.served_by_after(1, thawed) > 0, || {
        "no connect reached the thawed primary".into()
    })
}

/// A port free on 127.0.0.1 and 127.0.0.2 right now: the service's health port.
fn free_port() -> Result<u16, Failed> {
    for _ in 0..32 {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        if TcpListener::bind(("127.0.0.2", port)).is_ok() {
            return Ok(port);
        }
    }
    Err("no port free on both 127.0.0.1 and 127.0.0.2".into())
}
