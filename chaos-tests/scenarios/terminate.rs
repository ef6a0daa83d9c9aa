//! Scenarios 12 and 13: long-lived connections to a backend that is gone. A frozen primary
//! (SIGSTOP: a hung VM) holds idle connections open forever; with `terminate.on_down` they are
//! aborted the moment the primary leaves the table, the application reconnects through the VIP
//! and lands on the standby. A drain never touches them, `drain_after` does after its grace,
//! `drain --terminate` at once. A direct connection to a backend's own address is never touched.

use std::time::Duration;

use failoverd::datapath::{PinnedMaps, Vip};
use libtest_mimic::Failed;

use crate::common::{detection_bound, Pair, MARGIN, TCP_HEALTH};
use crate::record::Record;
use crate::support::{
    client::{monotonic_ns, spawn_client, ClientChild, ClientReport, ClientSpec, Mode},
    env::Env,
    kernel::{check, loopback},
    server::ServerSpec,
};
use crate::timeline::ms;

/// Long-lived connections each scenario holds through the VIP.
const HELD: usize = 3;

/// A backend that keeps every connection open after its reply.
fn holding() -> ServerSpec {
    ServerSpec {
        hold: true,
        ..ServerSpec::tcp(loopback(), 1)
    }
}

/// A holding backend with an HTTP health endpoint on `port`, and the check that probes it: a
/// frozen process's kernel still completes TCP handshakes, so only a request notices.
fn holding_with_health() -> Result<(ServerSpec, String), Failed> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let spec = ServerSpec {
        health_bind: Some(std::net::SocketAddr::from(([127, 0, 0, 1], port))),
        ..holding()
    };
    let health = format!(
        "{{ kind: http, port: {port}, path: /health, interval: 100ms, timeout: 50ms, rise: 2, fall: 3 }}"
    );
    Ok((spec, health))
}

/// A client holding one connection to `target` for at most `watch`.
fn hold(env: &Env, target: std::net::SocketAddr, watch: Duration) -> Result<ClientChild, Failed> {
    let spec = ClientSpec {
        timeout_ms: watch.as_millis() as u64,
        timeline: true,
        ..ClientSpec::new(target, Mode::TcpHold, 1)
    };
    Ok(spawn_client(&env.cgroup, None, &spec)?)
}

/// Waits (at most 5 s) until the kernel counted `n` established connects to the VIP's first
/// backend: the holders are connected.
fn until_established(env: &Env, vip: Vip, n: u64) -> Result<(), Failed> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let maps = PinnedMaps::open(env.pins.path())?;
        let id = maps
            .tables()?
            .get(&vip)
            .and_then(|t| t.table.backends.first().map(|b| b.id))
            .ok_or("the VIP has no backend")?;
        if maps.counters(id)?.established >= n {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            return Err(format!("{n} connections were not established within 5 s").into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// When a holder's connection ended (monotonic ns) and with which errno.
fn ended(report: &ClientReport) -> Result<(u64, i32), Failed> {
    let a = report
        .timeline
        .first()
        .ok_or("the holder made no attempt")?;
    let errno = a.errno.ok_or("the holder's connection did not end")?;
    Ok((a.at_ns + u64::from(a.took_us) * 1_000, errno))
}

fn terminated(metrics: &str, reason: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("failoverd_sockets_terminated_total{")
                && l.contains(&format!("reason=\"{reason}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Scenario 12: the primary frozen with long-lived connections open, `terminate.on_down`.
pub fn frozen(r: &mut Record) -> Result<(), Failed> {
    let (spec, health) = holding_with_health()?;
    let p = Pair::start_full(
        "cterm",
        "127.81.12.1:80",
        spec,
        &health,
        "    terminate: { on_down: true }\n",
    )?;
    let bound = detection_bound() + MARGIN;
    r.bound_ms = Some(ms(bound));
    let watch = Duration::from_secs(8);
    let holders = (0..HELD)
        .map(|_| hold(&p.env, p.vip.addr, watch))
        .collect::<Result<Vec<_>, _>>()?;
    // A direct connection to the standby's own address: never touched.
    let direct = hold(&p.env, p.b.addr(), Duration::from_millis(1_500))?;
    until_established(&p.env, p.vip, HELD as u64)?;

    let frozen = monotonic_ns();
    p.a.signal(libc::SIGSTOP)?;
    let switched = p.until_only(p.b.addr());
    let reports = holders
        .into_iter()
        .map(ClientChild::wait_report)
        .collect::<Result<Vec<_>, _>>();
    p.a.signal(libc::SIGCONT)?;
    let switched = switched?;
    r.note("table_switch_ms", ms(switched));
    let mut worst = 0u64;
    for report in reports? {
        let (at, errno) = ended(&report)?;
        check(errno == libc::ECONNABORTED, || {
            format!("a held connection ended with errno {errno}, not ECONNABORTED: {report:?}")
        })?;
        worst = worst.max(at.saturating_sub(frozen));
    }
    let worst = Duration::from_nanos(worst);
    r.note("worst_freeze_to_abort_ms", ms(worst));
    r.recovery_ms = Some(ms(worst));
    let direct = direct.wait_report()?;
    check(direct.errors.get(&libc::ETIMEDOUT) == Some(&1), || {
        format!("the direct connection to the standby must stay open: {direct:?}")
    })?;
    check(worst <= bound, || {
        format!("held connections were aborted {worst:?} after the freeze, bound {bound:?}")
    })?;
    let metrics = p.d.scrape()?;
    let n = terminated(&metrics, "down");
    check(n == HELD as u64, || {
        format!("failoverd_sockets_terminated_total{{reason=\"down\"}} is {n}, want {HELD}")
    })
}

/// Scenario 13: a plain drain keeps held connections, `drain_after` aborts them after its
/// grace, `drain --terminate` at once.
pub fn drain(r: &mut Record) -> Result<(), Failed> {
    let grace = Duration::from_millis(500);
    let p = Pair::start_full(
        "cdrainterm",
        "127.81.13.1:80",
        holding(),
        TCP_HEALTH,
        "    terminate: { drain_after: 500ms }\n",
    )?;
    r.bound_ms = Some(ms(grace + MARGIN));
    let watch = Duration::from_secs(8);
    let holders = (0..HELD)
        .map(|_| hold(&p.env, p.vip.addr, watch))
        .collect::<Result<Vec<_>, _>>()?;
    until_established(&p.env, p.vip, HELD as u64)?;
    let drained = monotonic_ns();
    p.d.ok(&["drain", "svc", "a", "--reason", "chaos"])?;
    let mut first = u64::MAX;
    let mut last = 0u64;
    for holder in holders {
        let (at, errno) = ended(&holder.wait_report()?)?;
        check(errno == libc::ECONNABORTED, || {
            format!("a held connection ended with errno {errno} after the drain")
        })?;
        first = first.min(at.saturating_sub(drained));
        last = last.max(at.saturating_sub(drained));
    }
    let (first, last) = (Duration::from_nanos(first), Duration::from_nanos(last));
    r.note("drain_to_first_abort_ms", ms(first));
    r.note("drain_to_last_abort_ms", ms(last));
    check(first >= grace, || {
        format!("a held connection was aborted {first:?} after a plain drain, before the {grace:?} grace")
    })?;
    check(last <= grace + MARGIN, || {
        format!("held connections outlived the grace: {last:?}")
    })?;

    // Back, connections to it again, and this time `drain --terminate`.
    p.d.ok(&["undrain", "svc", "a"])?;
    p.until_only(p.a.addr())?;
    let before = PinnedMaps::open(p.env.pins.path())?;
    let id = before
        .tables()?
        .get(&p.vip)
        .and_then(|t| t.table.backends.first().map(|b| b.id))
        .ok_or("the VIP has no backend")?;
    let established = before.counters(id)?.established;
    let holders = (0..HELD)
        .map(|_| hold(&p.env, p.vip.addr, watch))
        .collect::<Result<Vec<_>, _>>()?;
    until_established(&p.env, p.vip, established + HELD as u64)?;
    let asked = monotonic_ns();
    p.d.ok(&["drain", "svc", "a", "--terminate"])?;
    let returned = monotonic_ns();
    let mut worst = 0u64;
    for holder in holders {
        let (at, errno) = ended(&holder.wait_report()?)?;
        check(errno == libc::ECONNABORTED, || {
            format!("drain --terminate left errno {errno}")
        })?;
        worst = worst.max(at.saturating_sub(asked));
    }
    let worst = Duration::from_nanos(worst);
    r.note("drain_terminate_ms", ms(worst));
    r.recovery_ms = Some(ms(worst));
    check(
        worst <= Duration::from_nanos(returned - asked) + MARGIN,
        || format!("drain --terminate took {worst:?} to abort the held connections"),
    )
}
