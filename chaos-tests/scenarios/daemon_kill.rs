//! Scenario 5: SIGKILL the daemon under load, leave it dead for a while, restart it. The pinned
//! datapath keeps serving alone, and the restarted daemon adopts the table without rewriting it:
//! not one connect fails.

use std::time::Duration;

use failoverd::datapath::PinnedMaps;
use libtest_mimic::Failed;

use crate::common::{finish, Pair, HOLD, WARM_UP};
use crate::record::Record;
use crate::support::{client::monotonic_ns, kernel::check};
use crate::timeline::{ms, ms_between};

/// Runs the scenario.
pub fn run(r: &mut Record) -> Result<(), Failed> {
    let mut p = Pair::start("cdkill", "127.81.5.1:80")?;
    let generation = || -> Result<u64, Failed> {
        let tables = PinnedMaps::open(p.env.pins.path())?.tables()?;
        Ok(tables.get(&p.vip).ok_or("no table for the VIP")?.generation)
    };
    let before = generation()?;
    let load = p.load(Duration::from_millis(4_000))?;
    p.let_load_run(WARM_UP)?;

    let killed = monotonic_ns();
    p.d.sigkill();
    // The pinned datapath serves alone: the "no connect fails" check covers these attempts.
    p.let_load_run(HOLD)?;
    let restarting = monotonic_ns();
    p.d.start()?;
    p.d.wait_ready(Duration::from_secs(5))?;
    r.note("daemon_down_ms", ms_between(killed, restarting));
    r.note(
        "restart_to_ready_ms",
        ms_between(restarting, monotonic_ns()),
    );

    let (report, t) = finish(load, r, killed)?;
    r.recovery_ms = t.recovery(killed, u64::MAX).map(ms);
    let after = generation()?;
    r.note("table_rewritten", after != before);
    check(t.failures().count() == 0, || {
        format!("connects failed while the daemon was down or restarting: {report:?}")
    })?;
    check(after == before, || {
        format!("the restarted daemon rewrote the table (generation {before} -> {after})")
    })
}
