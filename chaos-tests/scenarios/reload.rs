//! Scenario 6: under load on one VIP, an operator reloads a broken config (refused with its
//! location; nothing changes in the kernel), then a good one that removes one VIP and adds
//! another. The untouched VIP never misses a connect and keeps its table; the removed VIP stops
//! translating before `reload` returns; the added one serves once its backend has its verdicts.

use std::time::{Duration, Instant};

use failoverd::datapath::{PinnedMaps, Vip};
use libtest_mimic::Failed;

use crate::common::{finish, let_load_run, service, TCP_HEALTH};
use crate::record::Record;
use crate::support::{
    client::{monotonic_ns, run_client, ClientSpec, Mode},
    daemon::DaemonProcess,
    env::Env,
    kernel::{check, exactly, loopback, tcp_vip, until_table},
    server::{BackendProcess, ServerSpec},
};
use crate::timeline::ms;

/// Attempts on the untouched VIP before the broken reload (about 500 ms of load).
const BEFORE_BROKEN: u64 = 200;
/// Attempts on it between the broken and the good reload (about 300 ms): the "untouched VIP
/// never fails" check covers them.
const BETWEEN: u64 = 120;

/// Runs the scenario.
pub fn run(r: &mut Record) -> Result<(), Failed> {
    let env = Env::new("creload")?;
    let a = BackendProcess::spawn(ServerSpec::tcp(loopback(), 1))?;
    let c = BackendProcess::spawn(ServerSpec::tcp(loopback(), 3))?;
    let (kept, removed, added) = (
        tcp_vip("127.81.6.1:80"),
        tcp_vip("127.81.6.2:80"),
        tcp_vip("127.81.6.3:80"),
    );
    let entry = |name: &str, vip: Vip, b: &BackendProcess| {
        service(
            name,
            vip.addr,
            TCP_HEALTH,
            &[("a", b.addr().to_string(), 0)],
        )
    };
    let first = entry("kept", kept, &a) + &entry("removed", removed, &c);
    let mut d = DaemonProcess::new(&env, "creload", &first)?;
    d.start()?;
    until_table(&env, kept, Duration::from_secs(5), exactly(&[a.addr()]))?;
    until_table(&env, removed, Duration::from_secs(5), exactly(&[c.addr()]))?;
    let generations = || -> Result<Vec<(Vip, u64)>, Failed> {
        let tables = PinnedMaps::open(env.pins.path())?.tables()?;
        let mut g: Vec<(Vip, u64)> = tables.iter().map(|(v, t)| (*v, t.generation)).collect();
        g.sort();
        Ok(g)
    };
    let before = generations()?;
    let load = crate::common::load(&env, kept.addr, Duration::from_millis(3_000))?;
    let_load_run(&env, kept, BEFORE_BROKEN)?;

    // Broken: a weight out of range, and a key that does not exist.
    let broken = entry("kept", kept, &a).replace("priority: 0", "priority: 0, weight: 5000")
        + "    colour: blue\n";
    d.write_config(&env, "", &broken)?;
    let broken_at = monotonic_ns();
    let out = d.cli(&["reload"])?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let location = format!("{}:", d.config_path().display());
    check(!out.status.success() && stderr.contains(&location), || {
        format!("a broken reload must fail naming {location}line:column: {stderr}")
    })?;
    r.note(
        "broken_reload_error",
        stderr.lines().next().unwrap_or("").to_owned(),
    );
    check(generations()? == before, || {
        "the broken reload changed a table in the kernel".into()
    })?;
    let_load_run(&env, kept, BETWEEN)?;

    let good = entry("kept", kept, &a) + &entry("added", added, &c);
    d.write_config(&env, "", &good)?;
    let asked = Instant::now();
    d.ok(&["reload"])?;
    r.note("good_reload_ms", ms(asked.elapsed()));
    let gone = run_client(
        &env.cgroup,
        None,
        &ClientSpec::new(removed.addr, Mode::TcpConnectOnly, 20),
    )?;
    until_table(&env, added, Duration::from_secs(3), exactly(&[c.addr()]))?;
    r.note("added_vip_serving_ms", ms(asked.elapsed()));
    let served = run_client(
        &env.cgroup,
        None,
        &ClientSpec::new(added.addr, Mode::TcpReadId, 20),
    )?;

    let (report, t) = finish(load, r, broken_at)?;
    r.recovery_ms = t.recovery(broken_at, u64::MAX).map(ms);
    let kept_generation = |g: &[(Vip, u64)]| g.iter().find(|(v, _)| *v == kept).map(|(_, n)| *n);
    let after = generations()?;
    check(t.failures().count() == 0, || {
        format!("connects to the untouched VIP failed during the reloads: {report:?}")
    })?;
    check(kept_generation(&after) == kept_generation(&before), || {
        "the untouched VIP's table was rewritten by the reload".into()
    })?;
    check(gone.errno_count(libc::ECONNREFUSED) == 20, || {
        format!("the removed VIP still translates after reload returned: {gone:?}")
    })?;
    check(!after.iter().any(|(v, _)| *v == removed), || {
        "the removed VIP's table is still in the kernel".into()
    })?;
    check(served.id_count(3) == 20, || {
        format!("the added VIP does not serve: {served:?}")
    })
}
