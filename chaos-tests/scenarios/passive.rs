//! Scenario 11: kill -9 the primary under load with slow (1 s) probes and passive health on.
//! Only the kernel's evidence can explain a fast failover here: the first refused connects mark
//! the primary suspect in the kernel, the very next connect goes to the standby, and the daemon
//! confirms the ejection long before three probes could fail.

use std::time::Duration;

use libtest_mimic::Failed;

use crate::common::{finish, Pair, HOLD, MARGIN, WARM_UP};
use crate::record::Record;
use crate::support::{client::monotonic_ns, kernel::check, kernel::loopback, server::ServerSpec};
use crate::timeline::ms;

/// Probes too slow to explain a fast failover: three failed probes take at least 2 s.
const SLOW_HEALTH: &str = "{ kind: tcp, interval: 1s, timeout: 500ms, rise: 2, fall: 3 }";

/// Failures in a row that eject (the default).
const CONSECUTIVE: u64 = 3;

/// Runs the scenario.
pub fn run(r: &mut Record) -> Result<(), Failed> {
    let p = Pair::start_full(
        "cpassive",
        "127.81.11.1:80",
        ServerSpec::tcp(loopback(), 1),
        SLOW_HEALTH,
        "    passive: { consecutive_failures: 3 }\n",
    )?;
    // The daemon confirms within scheduling slack; the probes alone would need 2 s or more.
    let bound = MARGIN;
    r.bound_ms = Some(ms(bound));
    let load = p.load(Duration::from_millis(3_000))?;
    p.let_load_run(WARM_UP)?;

    let killed = monotonic_ns();
    let mut p = p;
    p.a.kill();
    let switched = p.until_only(p.b.addr())?;
    r.note("table_switch_ms", ms(switched));
    p.let_load_run(HOLD)?;

    let (_, t) = finish(load, r, killed)?;
    let failed = t.failed_after(killed);
    r.stale = failed;
    r.recovery_ms = t.recovery(killed, u64::MAX).map(ms);
    if let Some(first) = t.first_served_by_after(2, killed) {
        r.note("first_standby_connect_ms", ms(first));
    }
    let metrics = p.d.scrape()?;
    let ejected = metrics.lines().any(|l| {
        l.starts_with("failoverd_passive_ejections_total{")
            && l.contains("backend=\"a\"")
            && l.ends_with(" 1")
    });
    check(failed <= CONSECUTIVE + 1, || {
        format!(
            "{failed} connects failed; passive health should stop at {CONSECUTIVE} (+1 in flight)"
        )
    })?;
    check(switched <= bound, || {
        format!("the daemon confirmed the ejection after {switched:?}, bound {bound:?} (probes alone: 2 s+)")
    })?;
    check(ejected, || {
        format!(
            "no failoverd_passive_ejections_total{{backend=\"a\"}} 1 in:\n{}",
            metrics
                .lines()
                .filter(|l| l.starts_with("failoverd_passive"))
                .collect::<Vec<_>>()
                .join("\n")
        )
    })
}
