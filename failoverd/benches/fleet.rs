//! Fleet mode at 20 hosts on this machine: a real etcd (Debian's etcd-server, loopback) and 20
//! real `failoverd run` daemons, each with its own cgroup, pin directory, control socket,
//! state directory, metrics port and `fleet.host` — the shape of issue 13's benchmark:
//!
//! - **fleet drain**: `drain --fleet` on one daemon, timed from the command returning until
//!   all 20 kernels no longer hold the backend (and the same for `undrain --fleet`); p50, p99
//!   and max over the runs.
//! - **fleet publish of 1,000 services**: `fleet publish` of 1,000 services (one backend each,
//!   shared, so probing stays small), timed from the command returning until every daemon's
//!   kernel holds all 1,000 VIPs.
//!
//! Run as root: `cargo bench -p failoverd --bench fleet`. `FO_BENCH_QUICK=1` runs 5 hosts,
//! 200 services and fewer drains. etcd runs with `--max-txn-ops 2048` (its default, 128,
//! refuses a transaction of 1,000 puts; docs/fleet.md says so).

#[path = "../tests/support/mod.rs"]
mod support;

mod common;

use std::{
    process::Command,
    time::{Duration, Instant},
};

use common::quick;
use failoverd::datapath::PinnedMaps;
use support::{
    backends::TcpBackend,
    daemon::DaemonProcess,
    env::Env,
    etcd::{self, EtcdProcess},
    kernel::{loopback, table, tcp_vip},
    unique_name, TempDir,
};

type Error = Box<dyn std::error::Error>;

fn main() -> Result<(), Error> {
    support::client::maybe_run_client();
    support::server::maybe_run_server();
    if !etcd::available() {
        eprintln!(
            "*** SKIPPED: {} is missing; install etcd-server ***",
            etcd::ETCD
        );
        return Ok(());
    }
    let (hosts_n, services_n, runs) = if quick() {
        (5, 200, 10)
    } else {
        (20, 1000, 30)
    };
    let etcd = EtcdProcess::start_with("fleetbench", &["--max-txn-ops", "2048"])?;
    let prefix = format!("/{}/", unique_name("fo", "bench")?);
    let backends = [
        TcpBackend::start(loopback(), 1)?,
        TcpBackend::start(loopback(), 2)?,
    ];
    let (a, b) = (backends[0].addr(), backends[1].addr());

    let started = Instant::now();
    let mut hosts: Vec<(Env, DaemonProcess)> = Vec::new();
    for n in 0..hosts_n {
        let env = Env::new(&format!("fb{n}"))?;
        let fleet = format!(
            "fleet:\n  host: h{n}\n  etcd:\n    endpoints: ['{}']\n    prefix: {prefix}\n",
            etcd.url()
        );
        let mut d = DaemonProcess::with_sections(&env, &format!("fb{n}"), &fleet, "  []\n")?;
        d.start()?;
        hosts.push((env, d));
    }
    println!("{hosts_n} daemons started in {:?}", started.elapsed());
    let files = TempDir(std::env::temp_dir().join(unique_name("fo-fleetbench", "f")?));
    std::fs::create_dir_all(&files.0)?;
    let daemon_config = hosts[0].1.config_path().to_path_buf();

    // One service with two backends, on every host.
    let orders = tcp_vip("10.203.0.1:5432");
    let file = files.0.join("one.yaml");
    std::fs::write(
        &file,
        format!(
            "defaults:\n  health: {{ kind: tcp, interval: 200ms, timeout: 100ms, rise: 1, fall: 2 }}\nservices:\n  - name: orders\n    vip: {}\n    backends:\n      - {{ name: a, address: '{a}' }}\n      - {{ name: b, address: '{b}' }}\n",
            orders.addr
        ),
    )?;
    publish(&file, &daemon_config)?;
    wait_all(
        &hosts,
        "orders with a and b in every kernel",
        Duration::from_secs(30),
        |env| Ok(table(env, orders)?.is_some_and(|t| t.contains(&a) && t.contains(&b))),
    )?;

    let mut drains = Vec::new();
    let mut undrains = Vec::new();
    for _ in 0..runs {
        hosts[0].1.ok(&["drain", "orders", "a", "--fleet"])?;
        drains.push(wait_all(
            &hosts,
            "a out of every kernel",
            Duration::from_secs(10),
            |env| Ok(!table(env, orders)?.is_some_and(|t| t.contains(&a))),
        )?);
        hosts[0].1.ok(&["undrain", "orders", "a", "--fleet"])?;
        undrains.push(wait_all(
            &hosts,
            "a back in every kernel",
            Duration::from_secs(10),
            |env| Ok(table(env, orders)?.is_some_and(|t| t.contains(&a))),
        )?);
    }
    report(&format!("fleet drain → {hosts_n} kernels"), &mut drains);
    report(&format!("fleet undrain → {hosts_n} kernels"), &mut undrains);

    // Many services at once.
    let many = files.0.join("many.yaml");
    let mut text = String::from(
        "defaults:\n  health: { kind: tcp, interval: 1s, timeout: 500ms }\nservices:\n",
    );
    text.push_str(&format!(
        "  - name: orders\n    vip: {}\n    health: {{ kind: tcp, interval: 200ms, timeout: 100ms, rise: 1, fall: 2 }}\n    backends:\n      - {{ name: a, address: '{a}' }}\n      - {{ name: b, address: '{b}' }}\n",
        orders.addr
    ));
    for i in 0..services_n {
        text.push_str(&format!(
            "  - name: s{i}\n    vip: 10.204.{}.{}:80\n    backends: [ {{ address: '{b}' }} ]\n",
            i / 250,
            i % 250 + 1
        ));
    }
    std::fs::write(&many, text)?;
    let publish_started = Instant::now();
    publish(&many, &daemon_config)?;
    let returned = publish_started.elapsed();
    let want = services_n + 1;
    let everywhere = wait_all(
        &hosts,
        "every service in every kernel",
        Duration::from_secs(600),
        |env| Ok(PinnedMaps::open(env.pins.path())?.tables()?.len() >= want),
    )?;
    println!(
        "fleet publish of {services_n} services: the command took {returned:?}; in all {hosts_n} kernels {everywhere:?} after it returned"
    );
    Ok(())
}

fn publish(file: &std::path::Path, daemon_config: &std::path::Path) -> Result<(), Error> {
    let out = Command::new(env!("CARGO_BIN_EXE_failoverd"))
        .args(["fleet", "publish", "--config"])
        .arg(file)
        .arg("--daemon-config")
        .arg(daemon_config)
        .output()?;
    if !out.status.success() {
        return Err(format!("publish: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(())
}

/// Time until `f` holds for every host, polling them in turn (a host once done is not asked
/// again); at most `limit`.
fn wait_all(
    hosts: &[(Env, DaemonProcess)],
    what: &str,
    limit: Duration,
    mut f: impl FnMut(&Env) -> Result<bool, Error>,
) -> Result<Duration, Error> {
    let start = Instant::now();
    let mut done = vec![false; hosts.len()];
    while start.elapsed() < limit {
        for (i, (env, _)) in hosts.iter().enumerate() {
            if !done[i] && f(env)? {
                done[i] = true;
            }
        }
        if done.iter().all(|d| *d) {
            return Ok(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let missing: Vec<usize> = (0..hosts.len()).filter(|i| !done[*i]).collect();
    Err(format!("{what}: hosts {missing:?} not within {limit:?}").into())
}

fn report(what: &str, samples: &mut [Duration]) {
    samples.sort();
    let at = |p: f64| samples[((samples.len() as f64 - 1.0) * p).round() as usize];
    println!(
        "{what} ({} runs): p50 {:?}, p99 {:?}, max {:?}",
        samples.len(),
        at(0.5),
        at(0.99),
        samples[samples.len() - 1]
    );
}
