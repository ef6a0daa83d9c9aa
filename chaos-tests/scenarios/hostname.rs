//! Scenario 8: a backend named by hostname moves to a new address (a DNS change, as when a
//! database is replaced) while clients connect through the VIP. Both addresses stay up, so no
//! connect may fail; once the new answer's TTL has run out and the new address has passed its
//! probes, every new connect goes there.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use libtest_mimic::Failed;

use crate::common::{finish, let_load_run, service, INTERVAL, MARGIN, TCP_HEALTH, WARM_UP};
use crate::dns::TestDns;
use crate::record::Record;
use crate::support::{
    client::monotonic_ns,
    daemon::DaemonProcess,
    env::Env,
    kernel::{check, exactly, tcp_vip, until_table},
    server::{BackendProcess, ServerSpec},
};
use crate::timeline::ms;

/// The name the backend is configured by.
const NAME: &str = "db.chaos.failoverd.test";
/// TTL of the answers, and the resolver's clamp: re-resolution every second.
const TTL: Duration = Duration::from_secs(1);

/// Runs the scenario.
pub fn run(r: &mut Record) -> Result<(), Failed> {
    let env = Env::new("cdns")?;
    let old = BackendProcess::spawn(ServerSpec::tcp("127.0.0.41:0".parse()?, 41))?;
    let port = old.addr().port();
    let new = BackendProcess::spawn(ServerSpec::tcp(
        SocketAddr::new("127.0.0.42".parse()?, port),
        42,
    ))?;
    // The responder's tasks run on this runtime's threads for as long as it lives.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let dns = runtime.block_on(TestDns::start())?;
    dns.set(
        NAME,
        &["127.0.0.41".parse::<IpAddr>()?],
        TTL.as_secs() as u32,
    );

    let vip = tcp_vip("127.81.8.1:80");
    let resolver = format!(
        "resolver:\n  nameservers: ['{}']\n  min_ttl: 1s\n  max_ttl: 1s\n",
        dns.addr()
    );
    let services = service(
        "svc",
        vip.addr,
        TCP_HEALTH,
        &[("db", format!("{NAME}:{port}"), 0)],
    );
    let mut d = DaemonProcess::with_sections(&env, "cdns", &resolver, &services)?;
    d.start()?;
    until_table(&env, vip, Duration::from_secs(5), exactly(&[old.addr()]))?;

    let load = crate::common::load(&env, vip.addr, Duration::from_millis(4_500))?;
    let_load_run(&env, vip, WARM_UP)?;
    let changed = monotonic_ns();
    dns.set(
        NAME,
        &["127.0.0.42".parse::<IpAddr>()?],
        TTL.as_secs() as u32,
    );
    // The old answer may have just been cached: one TTL, then `rise` probes of the new address.
    let bound = TTL + 2 * INTERVAL + MARGIN;
    r.bound_ms = Some(ms(bound));
    let moved = until_table(
        &env,
        vip,
        bound + Duration::from_secs(2),
        exactly(&[new.addr()]),
    )?;
    let moved_at = monotonic_ns();
    r.note("table_moved_ms", ms(moved));

    let (report, t) = finish(load, r, changed)?;
    r.stale = t.served_by_after(41, moved_at);
    r.recovery_ms = t.recovery(changed, u64::MAX).map(ms);
    if let Some(first) = t.first_served_by_after(42, changed) {
        r.note("first_connect_to_new_address_ms", ms(first));
    }
    drop(dns);
    drop(runtime);
    check(moved <= bound, || {
        format!("the table followed the DNS change after {moved:?}, bound {bound:?}")
    })?;
    check(t.failures().count() == 0, || {
        format!("connects failed while the address changed: {report:?}")
    })?;
    check(r.stale == 0, || {
        format!(
            "{} connects reached the old address after the table moved",
            r.stale
        )
    })
}
