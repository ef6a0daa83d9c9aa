//! Scenario 3: network faults between the host and its backends. The daemon and the clients run
//! in one network namespace, each backend in its own, joined by veth pairs; no namespace has a
//! default route, so nothing can leave the machine. Two faults on the primary's path, each
//! restored before the next:
//! - the link goes down: connects and probes fail at once (no route);
//! - an nftables rule drops every packet (a black hole): probes and connects time out.
//!
//! Each time the table must move to the standby within the detection bound, no connect may fail
//! later than that, and traffic fails back after the repair with nothing lost.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use libtest_mimic::Failed;

use crate::common::{
    detection_bound, finish, let_load_run, service, Attempts, CLIENT_TIMEOUT_MS, MARGIN,
    TCP_HEALTH, WARM_UP,
};
use crate::record::Record;
use crate::support::{
    backends::TcpBackend,
    client::{monotonic_ns, spawn_client, ClientSpec, Mode},
    daemon::DaemonProcess,
    env::Env,
    kernel::{check, exactly, tcp_vip, until_table},
    netns::TestNetns,
};
use crate::timeline::{ms, ms_between};

/// Attempts the load makes, per fault, between the moment no connect may fail any more (the
/// bound plus a client timeout after the fault) and the repair: the "no late failure" check
/// covers them. About the 450 ms that window lasted when each fault was held a fixed 1.5 s.
const LATE: u64 = 250;

/// Runs the scenario.
pub fn run(r: &mut Record) -> Result<(), Failed> {
    let env = Env::new("cnet")?;
    let host = TestNetns::new("cnet-host")?;
    let ns_a = TestNetns::new("cnet-a")?;
    let ns_b = TestNetns::new("cnet-b")?;
    wire(&host, "va", &ns_a, "10.201.1")?;
    wire(&host, "vb", &ns_b, "10.201.2")?;
    let a = TcpBackend::start_in_netns(&ns_a, "10.201.1.2:8080".parse()?, 1)?;
    let b = TcpBackend::start_in_netns(&ns_b, "10.201.2.2:8080".parse()?, 2)?;
    // Inside the host namespace only: with no default route there, a missed rewrite fails.
    let vip = tcp_vip("10.201.9.9:80");
    let services = service(
        "svc",
        vip.addr,
        TCP_HEALTH,
        &[
            ("a", a.addr().to_string(), 0),
            ("b", b.addr().to_string(), 1),
        ],
    );
    let mut d = DaemonProcess::new(&env, "cnet", &services)?;
    d.start_in(Some(&host))?;
    until_table(&env, vip, Duration::from_secs(5), exactly(&[a.addr()]))?;

    let spec = ClientSpec {
        timeout_ms: CLIENT_TIMEOUT_MS,
        ..ClientSpec::load(vip.addr, Mode::TcpReadId, 1, 9_000)
    };
    let load = spawn_client(&env.cgroup, Some(&host), &spec)?;
    let_load_run(&env, vip, WARM_UP)?;
    let bound = detection_bound() + MARGIN;
    // An attempt that started just before the switch may wait its whole timeout.
    let late_after = bound + Duration::from_millis(CLIENT_TIMEOUT_MS);

    let down = fault(
        r,
        "link_down",
        &env,
        vip,
        late_after,
        a.addr(),
        b.addr(),
        || ip(&["-n", host.name(), "link", "set", "va", "down"]),
        || ip(&["-n", host.name(), "link", "set", "va", "up"]),
    )?;
    let hole = fault(
        r,
        "blackhole",
        &env,
        vip,
        late_after,
        a.addr(),
        b.addr(),
        || {
            nft(&ns_a, &["add", "table", "inet", "chaos"])?;
            nft(
                &ns_a,
                &[
                    "add",
                    "chain",
                    "inet",
                    "chaos",
                    "input",
                    "{ type filter hook input priority 0; policy drop; }",
                ],
            )
        },
        || nft(&ns_a, &["delete", "table", "inet", "chaos"]),
    )?;

    let (_, t) = finish(load, r, down.start)?;
    r.bound_ms = Some(ms(bound));
    let mut worst = 0.0f64;
    for (name, f) in [("link_down", &down), ("blackhole", &hole)] {
        let failed = t.failed_in(f.start, f.repaired);
        r.stale += failed;
        r.note(&format!("{name}_failed"), failed);
        let recovery = t
            .recovery(f.start, f.repaired)
            .ok_or("no connect succeeded after a fault")?;
        worst = worst.max(ms(recovery));
        let late = t.failed_in(f.late_from, f.repaired);
        check(f.switched <= bound, || {
            format!(
                "{name}: the table moved to the standby after {:?}, bound {bound:?}",
                f.switched
            )
        })?;
        check(late == 0, || {
            format!("{name}: {late} connects failed after the detection bound")
        })?;
    }
    r.recovery_ms = Some(worst);
    let after = t.failed_in(down.repaired, hole.start) + t.failed_after(hole.repaired);
    check(after == 0, || {
        format!("{after} connects failed after a repair")
    })?;
    check(t.served_by_after(1, hole.repaired) > 0, || {
        "no connect reached the primary after the last repair".into()
    })?;
    drop(d);
    Ok(())
}

/// When a fault started, when no connect may fail any more, and when it was repaired
/// (monotonic ns), and how long the table took to move.
struct Fault {
    start: u64,
    late_from: u64,
    repaired: u64,
    switched: Duration,
}

/// Applies a fault, waits for the table to move to `b`, holds it until the load has made `LATE`
/// attempts from `late_after` after the fault on, repairs it and waits for the table to return
/// to `a`. A table that did not move is repaired at once and reported.
#[allow(clippy::too_many_arguments)]
fn fault(
    r: &mut Record,
    name: &str,
    env: &Env,
    vip: failoverd::datapath::Vip,
    late_after: Duration,
    a: SocketAddr,
    b: SocketAddr,
    apply: impl FnOnce() -> Result<(), Failed>,
    repair: impl FnOnce() -> Result<(), Failed>,
) -> Result<Fault, Failed> {
    let start = monotonic_ns();
    apply()?;
    let switched = until_table(env, vip, Duration::from_secs(3), exactly(&[b]));
    let late_from = start + late_after.as_nanos() as u64;
    let held = switched
        .is_ok()
        .then(|| Attempts::from_instant(env, vip, late_from)?.until(LATE));
    let repaired = monotonic_ns();
    repair()?;
    let switched = switched?;
    r.note(&format!("{name}_table_switch_ms"), ms(switched));
    if let Some(held) = held {
        held?;
        r.note(&format!("{name}_held_ms"), ms_between(start, repaired));
    }
    let back = until_table(env, vip, Duration::from_secs(3), exactly(&[a]))?;
    r.note(&format!("{name}_failback_ms"), ms(back));
    Ok(Fault {
        start,
        late_from,
        repaired,
        switched,
    })
}

/// A veth pair: `host_if` (`<net>.1/24`) in `host`, `eth0` (`<net>.2/24`) in `backend`.
fn wire(host: &TestNetns, host_if: &str, backend: &TestNetns, net: &str) -> Result<(), Failed> {
    ip(&[
        "-n",
        host.name(),
        "link",
        "add",
        host_if,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        backend.name(),
    ])?;
    ip(&[
        "-n",
        host.name(),
        "addr",
        "add",
        &format!("{net}.1/24"),
        "dev",
        host_if,
    ])?;
    ip(&[
        "-n",
        backend.name(),
        "addr",
        "add",
        &format!("{net}.2/24"),
        "dev",
        "eth0",
    ])?;
    ip(&["-n", host.name(), "link", "set", host_if, "up"])?;
    ip(&["-n", backend.name(), "link", "set", "eth0", "up"])
}

fn ip(args: &[&str]) -> Result<(), Failed> {
    command("ip", args)
}

/// Runs an nftables command inside `ns`.
fn nft(ns: &TestNetns, args: &[&str]) -> Result<(), Failed> {
    let mut all = vec!["netns", "exec", ns.name(), "nft"];
    all.extend_from_slice(args);
    command("ip", &all)
}

fn command(program: &str, args: &[&str]) -> Result<(), Failed> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running {program} (installed by scripts/install-deps.sh?): {e}"))?;
    check(out.status.success(), || {
        format!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )
    })
}
