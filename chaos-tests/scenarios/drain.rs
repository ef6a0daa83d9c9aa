//! Scenario 9: an operator drains the primary under load, then undrains it. `drain` returns once
//! the kernel's table has changed: no connect fails, and none made after it returned reaches the
//! drained backend.

use std::time::Duration;

use libtest_mimic::Failed;

use crate::common::{finish, Pair, HOLD, WARM_UP};
use crate::record::Record;
use crate::support::{
    client::monotonic_ns,
    kernel::{check, table},
};
use crate::timeline::{ms, ms_between};

/// Runs the scenario.
pub fn run(r: &mut Record) -> Result<(), Failed> {
    let p = Pair::start("cdrain", "127.81.9.1:80")?;
    let load = p.load(Duration::from_millis(3_500))?;
    p.let_load_run(WARM_UP)?;

    let asked = monotonic_ns();
    p.d.ok(&["drain", "svc", "a", "--reason", "chaos"])?;
    let drained = monotonic_ns();
    r.note("drain_command_ms", ms_between(asked, drained));
    let after_drain = table(&p.env, p.vip)?;
    // The "none reaches the drained backend" check covers these attempts.
    p.let_load_run(HOLD)?;

    let undrained = monotonic_ns();
    r.note("held_ms", ms_between(drained, undrained));
    p.d.ok(&["undrain", "svc", "a"])?;
    let after_undrain = table(&p.env, p.vip)?;

    let (report, t) = finish(load, r, drained)?;
    r.stale =
        t.0.iter()
            .filter(|a| (drained..undrained).contains(&a.at_ns) && a.id == Some(1))
            .count() as u64;
    r.recovery_ms = t.recovery(asked, u64::MAX).map(ms);
    check(after_drain == Some(vec![p.b.addr()]), || {
        format!("drain returned before the kernel's table changed: {after_drain:?}")
    })?;
    check(after_undrain == Some(vec![p.a.addr()]), || {
        format!("undrain returned before the kernel's table changed: {after_undrain:?}")
    })?;
    check(t.failures().count() == 0, || {
        format!("no connect may fail during a drain: {report:?}")
    })?;
    check(r.stale == 0, || {
        format!(
            "{} connects reached the drained backend after drain returned",
            r.stale
        )
    })
}
