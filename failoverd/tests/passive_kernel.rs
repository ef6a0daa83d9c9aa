//! Passive health end to end through the kernel, as root: the real daemon over the real datapath, backends that
//! are real processes, clients in the trial's cgroup. Probes are slow (2 s, fall 3) so that
//! within a trial only the kernel's evidence can take a backend out; the trials await the
//! daemon's own counters (its metrics) before they look at the kernel's table.

mod support;

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use libtest_mimic::{Arguments, Failed, Trial};
use support::{
    client::{run_client, ClientReport, ClientSpec, Mode},
    daemon::DaemonProcess,
    env::Env,
    kernel::{check, exactly, loopback, table, tcp_vip, until_table},
    server::{BackendProcess, ServerSpec},
};

type TestResult = Result<(), Failed>;
type TrialFn = fn() -> TestResult;

/// Probes too slow to take anything out within a trial (three failures take 4 s or more).
const SLOW: &str = "{ kind: tcp, interval: 2s, timeout: 200ms, rise: 2, fall: 3 }";
/// Probes fast enough to bring a backend back within a trial.
const FAST_RISE: &str = "{ kind: tcp, interval: 100ms, timeout: 50ms, rise: 2, fall: 30 }";
/// How long a trial waits for the daemon.
const WAIT: Duration = Duration::from_secs(5);

fn main() {
    support::client::maybe_run_client();
    support::server::maybe_run_server();
    let args = Arguments::from_args();
    let trials: Vec<(&'static str, TrialFn)> = vec![
        (
            "refused_connects_eject_at_the_threshold_and_not_before",
            refused_connects_eject_at_the_threshold_and_not_before,
        ),
        (
            "a_passively_ejected_backend_returns_after_rise_probes",
            a_passively_ejected_backend_returns_after_rise_probes,
        ),
        (
            "passive_ejections_stop_at_max_ejected_percent",
            passive_ejections_stop_at_max_ejected_percent,
        ),
        (
            "a_lone_primary_can_be_ejected_and_on_all_down_decides",
            a_lone_primary_can_be_ejected_and_on_all_down_decides,
        ),
    ];
    let trials = trials
        .into_iter()
        .map(|(name, f)| Trial::test(name, f))
        .collect();
    libtest_mimic::run(&args, trials).exit();
}

/// A service entry: `backends` are (name, address, priority).
fn service(
    vip: SocketAddr,
    health: &str,
    extra: &str,
    backends: &[(&str, SocketAddr, u8)],
) -> String {
    let mut s =
        format!("  - name: svc\n    vip: {vip}\n    health: {health}\n{extra}    backends:\n");
    for (name, addr, priority) in backends {
        s.push_str(&format!(
            "      - {{ name: {name}, address: '{addr}', priority: {priority} }}\n"
        ));
    }
    s
}

fn connects(env: &Env, vip: SocketAddr, n: u32) -> Result<ClientReport, Failed> {
    let spec = ClientSpec {
        timeout_ms: 500,
        ..ClientSpec::new(vip, Mode::TcpConnectOnly, n)
    };
    Ok(run_client(&env.cgroup, None, &spec)?)
}

/// The sum of a counter's series whose labels contain every one of `labels`.
fn metric(d: &DaemonProcess, name: &str, labels: &[&str]) -> Result<f64, Failed> {
    let text = d.scrape()?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// Waits (bounded) until the counter reaches `at_least`.
fn until_metric(
    d: &DaemonProcess,
    name: &str,
    labels: &[&str],
    at_least: f64,
) -> Result<(), Failed> {
    let deadline = Instant::now() + WAIT;
    loop {
        let v = metric(d, name, labels)?;
        if v >= at_least {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{name}{labels:?} is {v} after {WAIT:?}, want ≥ {at_least}\n{}",
                d.log_tail(15)
            )
            .into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn refused_connects_eject_at_the_threshold_and_not_before() -> TestResult {
    let env = Env::new("pthreshold")?;
    let mut a = BackendProcess::spawn(ServerSpec::tcp(loopback(), 1))?;
    let b = BackendProcess::spawn(ServerSpec::tcp(loopback(), 2))?;
    let vip = tcp_vip("127.79.1.1:80");
    let services = service(
        vip.addr,
        SLOW,
        "    passive: { consecutive_failures: 3 }\n",
        &[("a", a.addr(), 0), ("b", b.addr(), 1)],
    );
    let mut d = DaemonProcess::new(&env, "pthreshold", &services)?;
    d.start()?;
    until_table(&env, vip, WAIT, exactly(&[a.addr()]))?;
    a.kill();

    let r = connects(&env, vip.addr, 2)?;
    check(r.errno_count(libc::ECONNREFUSED) == 2, || format!("{r:?}"))?;
    until_metric(
        &d,
        "failoverd_passive_failures_total",
        &["backend=\"a\""],
        2.0,
    )?;
    let now = table(&env, vip)?;
    check(now == Some(vec![a.addr()]), || {
        format!("two failures of three must not eject: table {now:?}")
    })?;

    let r = connects(&env, vip.addr, 1)?;
    check(r.errno_count(libc::ECONNREFUSED) == 1, || format!("{r:?}"))?;
    until_table(&env, vip, WAIT, exactly(&[b.addr()]))?;
    until_metric(
        &d,
        "failoverd_passive_ejections_total",
        &["backend=\"a\""],
        1.0,
    )?;
    // And the kernel sends the next connects to the backup already.
    let r = connects(&env, vip.addr, 5)?;
    check(r.ok == 5, || format!("after the ejection: {r:?}"))
}

fn a_passively_ejected_backend_returns_after_rise_probes() -> TestResult {
    let env = Env::new("prise")?;
    let mut a = BackendProcess::spawn(ServerSpec::tcp(loopback(), 1))?;
    let b = BackendProcess::spawn(ServerSpec::tcp(loopback(), 2))?;
    let vip = tcp_vip("127.79.2.1:80");
    let services = service(
        vip.addr,
        FAST_RISE,
        "    passive: { consecutive_failures: 1 }\n",
        &[("a", a.addr(), 0), ("b", b.addr(), 1)],
    );
    let mut d = DaemonProcess::new(&env, "prise", &services)?;
    d.start()?;
    until_table(&env, vip, WAIT, exactly(&[a.addr()]))?;
    a.kill();
    connects(&env, vip.addr, 1)?;
    until_table(&env, vip, WAIT, exactly(&[b.addr()]))?;
    until_metric(
        &d,
        "failoverd_passive_ejections_total",
        &["backend=\"a\""],
        1.0,
    )?;
    a.restart()?;
    // fall 30 keeps the probes from taking it out themselves: only the kernel's evidence
    // did; `rise` passing probes bring it back (bounded by a breaker period if one opened).
    let back = until_table(&env, vip, Duration::from_secs(15), exactly(&[a.addr()]))?;
    eprintln!("passively ejected backend back after {back:?}");
    Ok(())
}

fn passive_ejections_stop_at_max_ejected_percent() -> TestResult {
    let env = Env::new("ppercent")?;
    let mut group = (1..=4)
        .map(|id| BackendProcess::spawn(ServerSpec::tcp(loopback(), id)))
        .collect::<Result<Vec<_>, _>>()?;
    let addrs: Vec<SocketAddr> = group.iter().map(BackendProcess::addr).collect();
    let vip = tcp_vip("127.79.3.1:80");
    let names = ["a", "b", "c", "d"];
    let backends: Vec<(&str, SocketAddr, u8)> =
        names.iter().zip(&addrs).map(|(n, a)| (*n, *a, 0)).collect();
    let services = service(
        vip.addr,
        SLOW,
        "    passive: { consecutive_failures: 2 }\n    breaker: { max_ejected_percent: 50 }\n",
        &backends,
    );
    let mut d = DaemonProcess::new(&env, "ppercent", &services)?;
    d.start()?;
    until_table(&env, vip, WAIT, exactly(&addrs))?;
    // Every backend dies: a storm of refused connects, as a client-side fault would cause.
    for b in &mut group {
        b.kill();
    }
    connects(&env, vip.addr, 60)?;
    until_metric(&d, "failoverd_passive_ejections_total", &[], 2.0)?;
    // Every backend has now failed at least twice in a row (60 draws over 4), yet passive
    // evidence alone takes out no more than half the group.
    until_metric(&d, "failoverd_passive_failures_total", &[], 12.0)?;
    let left = table(&env, vip)?.unwrap_or_default();
    check(left.len() == 2, || {
        format!("max_ejected_percent 50 of 4 leaves 2 in the table: {left:?}")
    })?;
    let ejected = metric(&d, "failoverd_passive_ejections_total", &[])?;
    check(ejected == 2.0, || {
        format!("{ejected} passive ejections, want 2")
    })
}

fn a_lone_primary_can_be_ejected_and_on_all_down_decides() -> TestResult {
    let env = Env::new("plone")?;
    let mut a = BackendProcess::spawn(ServerSpec::tcp(loopback(), 1))?;
    let vip = tcp_vip("127.79.4.1:80");
    let services = service(
        vip.addr,
        SLOW,
        "    passive: { consecutive_failures: 2 }\n    breaker: { max_ejected_percent: 10 }\n    on_all_down: reject\n",
        &[("a", a.addr(), 0)],
    );
    let mut d = DaemonProcess::new(&env, "plone", &services)?;
    d.start()?;
    until_table(&env, vip, WAIT, exactly(&[a.addr()]))?;
    a.kill();
    connects(&env, vip.addr, 2)?;
    // 10 % of one backend rounds to none, but passive ejection may always take one: the
    // VIP now refuses at once (the hook's own ECONNREFUSED, counted as `rejected`).
    until_table(&env, vip, WAIT, |t| t.as_deref() == Some(&[]))?;
    let r = connects(&env, vip.addr, 3)?;
    check(r.errno_count(libc::ECONNREFUSED) == 3, || format!("{r:?}"))?;
    check(r.max_failed_connect_ns < 50_000_000, || {
        format!("refusals must be immediate: {r:?}")
    })
}
