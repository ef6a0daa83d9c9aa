//! Scenario 1: kill -9 the primary under load. Connects fail only until the probes notice
//! (refused at once, never hanging), the table moves to the standby within the detection bound,
//! and when the primary returns traffic fails back without a single failed connect.

use std::time::Duration;

use libtest_mimic::Failed;

use crate::common::{detection_bound, finish, Pair, HOLD, MARGIN, WARM_UP};
use crate::record::Record;
use crate::support::{client::monotonic_ns, kernel::check};
use crate::timeline::{ms, ms_between};

/// Runs the scenario.
pub fn run(r: &mut Record) -> Result<(), Failed> {
    let mut p = Pair::start("ckill", "127.81.1.1:80")?;
    let bound = detection_bound() + MARGIN;
    r.bound_ms = Some(ms(bound));
    let load = p.load(Duration::from_millis(4_000))?;
    p.let_load_run(WARM_UP)?;

    let killed = monotonic_ns();
    p.a.kill();
    let switched = p.until_only(p.b.addr())?;
    r.note("table_switch_ms", ms(switched));
    // The standby serves alone for a while: the "no late failure" check covers these attempts.
    p.let_load_run(HOLD)?;

    let restarted = monotonic_ns();
    r.note("held_ms", ms_between(killed, restarted));
    p.a.restart()?;
    let failback = p.until_only(p.a.addr())?;
    r.note("failback_ms", ms(failback));

    let (_, t) = finish(load, r, killed)?;
    r.stale = t.failed_after(killed);
    let recovery = t
        .recovery(killed, restarted)
        .ok_or("no connect succeeded after the kill")?;
    r.recovery_ms = Some(ms(recovery));
    if let Some(first) = t.first_served_by_after(2, killed) {
        r.note("first_standby_connect_ms", ms(first));
    }
    check(switched <= bound, || {
        format!("the table moved to the standby after {switched:?}, bound {bound:?}")
    })?;
    check(t.failed_before(killed) == 0, || {
        "connects failed before the kill".into()
    })?;
    let late = t.failed_after(killed + bound.as_nanos() as u64);
    check(late == 0, || {
        format!("{late} connects failed later than {bound:?} after the kill")
    })?;
    check(t.failed_after(restarted) == 0, || {
        "a connect failed during the failback".into()
    })?;
    check(t.served_by_after(1, restarted) > 0, || {
        format!(
            "no connect reached the returned primary ({} ms of load after it)",
            ms_between(restarted, t.0.last().map_or(restarted, |a| a.at_ns))
        )
    })
}
