//! Scenario 7: every backend dies. Once the probes see it the VIP has no live backend and the
//! kernel refuses connects itself: ECONNREFUSED at once, never a hang. When one backend returns,
//! traffic resumes as soon as it has passed `rise` probes.

use std::time::Duration;

use libtest_mimic::Failed;

use crate::common::{detection_bound, finish, Pair, INTERVAL, MARGIN, WARM_UP};
use crate::record::Record;
use crate::support::{
    client::monotonic_ns,
    kernel::{check, exactly, until_table},
};
use crate::timeline::{ms, ms_between, Timeline};

/// Rise of the service: the returning backend needs this many good probes.
const RISE: u32 = 2;
/// The slowest refusal we accept: a refusal is a return from the connect hook, far below this
/// even on a loaded machine.
const FAST_REFUSAL: Duration = Duration::from_millis(50);
/// Refused attempts the load makes while every backend is down: the "refused, and fast" checks
/// cover at least these. Refusals are quick, so this is about as long as the others' hold.
const REFUSALS: u64 = 1_000;

/// Runs the scenario.
pub fn run(r: &mut Record) -> Result<(), Failed> {
    let mut p = Pair::start("cdown", "127.81.7.1:80")?;
    let load = p.load(Duration::from_millis(4_000))?;
    p.let_load_run(WARM_UP)?;

    let killed = monotonic_ns();
    p.a.kill();
    p.b.kill();
    // Attempts in flight at the kill may end otherwise (reset); later ones are all refused.
    let dead = monotonic_ns();
    let emptied = until_table(&p.env, p.vip, Duration::from_secs(3), exactly(&[]))?;
    r.note("table_empty_after_ms", ms(emptied));
    p.let_load_run(REFUSALS)?;

    let returned = monotonic_ns();
    r.note("held_ms", ms_between(killed, returned));
    p.b.restart()?;
    let resumed_table = p.until_only(p.b.addr())?;
    r.note("table_resumed_ms", ms(resumed_table));

    let (_, t) = finish(load, r, killed)?;
    r.stale = t.failed_in(killed, returned);
    let bound = RISE * INTERVAL + MARGIN;
    r.bound_ms = Some(ms(bound));
    let resumed = t
        .first_served_by_after(2, returned)
        .ok_or("no connect succeeded after a backend returned")?;
    r.recovery_ms = Some(ms(resumed));
    let after_kill = Timeline(t.0.iter().filter(|a| a.at_ns >= dead).copied().collect());
    note_refusal_speed(r, &after_kill);

    check(emptied <= detection_bound() + MARGIN, || {
        format!("the dead backends left the table after {emptied:?}")
    })?;
    let not_refused: Vec<_> = after_kill
        .failures()
        .filter(|a| a.errno != Some(libc::ECONNREFUSED))
        .collect();
    check(not_refused.is_empty(), || {
        format!("every connect to the dead VIP must be refused: {not_refused:?}")
    })?;
    let slowest = Duration::from_micros(after_kill.slowest_failure_us().unwrap_or(0).into());
    check(slowest <= FAST_REFUSAL, || {
        format!("a refused connect took {slowest:?}")
    })?;
    check(resumed <= bound, || {
        format!("traffic resumed {resumed:?} after the backend returned, bound {bound:?}")
    })
}

/// Records how long refused connects took.
fn note_refusal_speed(r: &mut Record, t: &Timeline) {
    for (name, q) in [
        ("refused_p50_us", 0.5),
        ("refused_p99_us", 0.99),
        ("refused_max_us", 1.0),
    ] {
        if let Some(us) = t.failure_quantile_us(q) {
            r.note(name, us);
        }
    }
}
