//! Shared probe targets end to end without root: many services on the same backends, the real
//! service tasks and writer over an in-memory datapath, probes answered by a script, and
//! tokio's paused clock.
//!
//! One probe per target reaches every service that lists it, every result of it (rise/fall
//! counting needs the whole sequence), and a daemon whose probes run late does not write a
//! first table with no live backend only because the verdicts are late.

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use failoverd::{
    config::{self, Config},
    daemon,
    datapath::{FakeDatapath, FakeHandle, FakeWrite, Protocol, Vip},
    health::{HealthCheck, HealthStatus, Probe, ProbeError, ProbeOk, ProbeResult},
};
use tokio::time::Instant;

const A: &str = "127.0.0.1:7301";
const B: &str = "127.0.0.1:7302";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn vip(i: usize) -> Vip {
    Vip {
        addr: addr(&format!("127.66.3.{}:80", i + 1)),
        protocol: Protocol::Tcp,
    }
}

/// How each address answers, and how many probes each got.
#[derive(Default)]
struct Script {
    /// Per address: the answers to give in turn, repeated (default: always pass).
    answers: Mutex<HashMap<SocketAddr, Vec<bool>>>,
    /// How long every probe takes (ignoring its timeout, as an overloaded daemon's do).
    takes: Duration,
    probes: Mutex<HashMap<SocketAddr, usize>>,
}

impl Script {
    fn probes(&self, a: &str) -> usize {
        *self.probes.lock().unwrap().get(&addr(a)).unwrap_or(&0)
    }
}

impl HealthCheck for Script {
    fn check<'a>(
        &'a self,
        _probe: &'a Probe,
        addr: SocketAddr,
        _timeout: Duration,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ProbeResult> + Send + 'a>> {
        let n = {
            let mut probes = self.probes.lock().unwrap();
            let n = probes.entry(addr).or_default();
            *n += 1;
            *n - 1
        };
        let up = self
            .answers
            .lock()
            .unwrap()
            .get(&addr)
            .is_none_or(|cycle| cycle[n % cycle.len()]);
        Box::pin(async move {
            tokio::time::sleep(self.takes).await;
            if up {
                Ok(ProbeOk {
                    latency: self.takes,
                    detail: "connected".into(),
                    role: None,
                })
            } else {
                Err(ProbeError::Refused { addr })
            }
        })
    }
}

/// `n` services, each with A at priority 0 and B at priority 1, and `health`.
fn config(dir: &Path, n: usize, health: &str) -> Config {
    let mut yaml = format!("control: {{ state_dir: {} }}\nservices:\n", dir.display());
    for i in 0..n {
        yaml.push_str(&format!(
            "  - name: s{i}\n    vip: '{}'\n    health: {health}\n    backends:\n      - {{ name: a, address: '{A}', priority: 0 }}\n      - {{ name: b, address: '{B}', priority: 1 }}\n",
            vip(i).addr
        ));
    }
    config::parse(&yaml, Path::new("<test>")).expect("test config")
}

fn state_dir(tag: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("fo-fanout-{tag}-{}", std::process::id()))
}

/// The backends `vip`'s table sends to (`None`: no table).
fn backends(kernel: &FakeHandle, vip: Vip) -> Option<Vec<SocketAddr>> {
    kernel
        .tables()
        .get(&vip)
        .map(|t| t.table.backends.iter().map(|b| b.addr).collect())
}

/// Waits (in paused time: instantly) until `f` holds, at most `limit` of daemon time.
async fn until(limit: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() <= limit, "not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    start.elapsed()
}

#[tokio::test(start_paused = true)]
async fn one_probe_per_target_reaches_every_service_and_moves_them_all() {
    const SERVICES: usize = 40;
    let script = Arc::new(Script::default());
    let datapath = FakeDatapath::default();
    let kernel = datapath.handle();
    let dir = state_dir("every");
    let config = config(
        &dir,
        SERVICES,
        "{ kind: tcp, interval: 100ms, timeout: 50ms, rise: 2, fall: 3 }",
    );
    let running = daemon::start_with(&config, datapath, daemon::Drains::new(), script.clone())
        .await
        .expect("daemon starts");
    until(Duration::from_secs(2), || {
        (0..SERVICES).all(|i| backends(&kernel, vip(i)) == Some(vec![addr(A)]))
    })
    .await;

    // Two seconds of probing at 100 ms: about 20 probes of each target, however many
    // services list it.
    let before = (script.probes(A), script.probes(B));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let probed = (script.probes(A) - before.0, script.probes(B) - before.1);
    assert!(
        (19..=21).contains(&probed.0) && (19..=21).contains(&probed.1),
        "one loop per target, not per service: {probed:?} probes in 2 s"
    );

    // A dies: every service sees it, within the detection bound.
    script.answers.lock().unwrap().insert(addr(A), vec![false]);
    let took = until(Duration::from_secs(2), || {
        (0..SERVICES).all(|i| backends(&kernel, vip(i)) == Some(vec![addr(B)]))
    })
    .await;
    assert!(took <= Duration::from_millis(450), "failover took {took:?}");
    running.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn every_service_counts_every_shared_result() {
    const SERVICES: usize = 40;
    // A answers pass, fail, pass, fail, …: with rise 2 and fall 3 no streak ever completes,
    // so A has no verdict in a service that saw every result. A service that missed one
    // fail would see two passes in a row and call A healthy.
    let script = Arc::new(Script::default());
    script
        .answers
        .lock()
        .unwrap()
        .insert(addr(A), vec![true, false]);
    let dir = state_dir("count");
    let config = config(
        &dir,
        SERVICES,
        "{ kind: tcp, interval: 100ms, timeout: 50ms, rise: 2, fall: 3 }",
    );
    let running = daemon::start_with(
        &config,
        FakeDatapath::default(),
        daemon::Drains::new(),
        script.clone(),
    )
    .await
    .expect("daemon starts");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(script.probes(A) >= 45, "A was probed all along");
    for status in running.status().await.expect("status") {
        let a = &status.backends[0];
        assert_eq!(a.health, HealthStatus::Unknown, "{}: {a:?}", status.name);
        assert_eq!(status.backends[1].health, HealthStatus::Healthy);
        assert_eq!(status.active_priority, Some(1), "{}", status.name);
    }
    running.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn late_first_verdicts_stretch_the_deadline_instead_of_refusing() {
    // Probes that take 2.5 intervals (as on a daemon far behind its probe schedule): each
    // starts 2 s after the slot it was due in, and the second pass — rise 2 — comes up to
    // 6.5 s after start, past the 4.5 s first-verdict wait (interval × (max(rise, fall) + 1)
    // + timeout). The measured lag stretches that wait, so the first table sends to A.
    let script = Arc::new(Script {
        takes: Duration::from_millis(2_500),
        ..Script::default()
    });
    let datapath = FakeDatapath::default();
    let kernel = datapath.handle();
    let dir = state_dir("late");
    let config = config(
        &dir,
        3,
        "{ kind: tcp, interval: 1s, timeout: 500ms, rise: 2, fall: 3 }",
    );
    let running = daemon::start_with(&config, datapath, daemon::Drains::new(), script.clone())
        .await
        .expect("daemon starts");
    let took = until(Duration::from_secs(20), || {
        (0..3).all(|i| backends(&kernel, vip(i)).is_some())
    })
    .await;
    assert!(
        took > Duration::from_millis(4_500),
        "the verdicts came after the unstretched deadline ({took:?}), or this proves nothing"
    );
    for i in 0..3 {
        let first = kernel
            .writes()
            .into_iter()
            .find_map(|w| match w {
                FakeWrite::Apply(t) if t.vip == vip(i) => Some(t),
                _ => None,
            })
            .expect("a first write");
        let to: Vec<SocketAddr> = first.backends.iter().map(|b| b.addr).collect();
        assert_eq!(to, vec![addr(A)], "s{i}'s first table sends to its primary");
    }
    running.shutdown().await;
}
