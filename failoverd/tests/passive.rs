//! Passive health and socket termination end to end without root: the real service tasks,
//! writer, connect-failure reader and control handler over the in-memory datapath, kernel
//! evidence reported through its handle, probes answered by a script, tokio's paused clock.

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use failoverd::{
    config::{self, Config},
    control::{Caller, ControlHandler, DrainRequest, TerminatedReport},
    daemon::{self, api::DaemonApi, DrainStore, Running},
    datapath::{
        ConnectFailure, ConnectFailureKind, FakeDatapath, FakeHandle, Protocol, Terminated, Vip,
    },
    health::{HealthCheck, Probe, ProbeError, ProbeOk, ProbeResult},
};
use tokio::time::Instant;

/// Probe outcomes by address, set by the test: up (the default) or down.
#[derive(Default)]
struct Script(Mutex<HashMap<SocketAddr, bool>>);

impl Script {
    fn set(&self, addr: SocketAddr, up: bool) {
        self.0.lock().unwrap().insert(addr, up);
    }
}

impl HealthCheck for Script {
    fn check<'a>(
        &'a self,
        _probe: &'a Probe,
        addr: SocketAddr,
        _timeout: Duration,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ProbeResult> + Send + 'a>> {
        let up = *self.0.lock().unwrap().get(&addr).unwrap_or(&true);
        Box::pin(async move {
            if up {
                Ok(ProbeOk {
                    latency: Duration::from_millis(1),
                    detail: "connected".into(),
                    role: None,
                })
            } else {
                Err(ProbeError::Refused { addr })
            }
        })
    }
}

const A: &str = "127.0.0.1:7301";
const B: &str = "127.0.0.1:7302";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn tcp_vip(s: &str) -> Vip {
    Vip {
        addr: addr(s),
        protocol: Protocol::Tcp,
    }
}

/// A directory removed on drop.
struct Dir(std::path::PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let path = std::env::temp_dir().join(format!(
            "fo-passive-{tag}-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&path).unwrap();
        Dir(path)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}

/// Probes 1 s apart, so that only the kernel's evidence can explain a fast failover.
fn config(dir: &Dir, vip: &str, extra: &str) -> Config {
    let yaml = format!(
        "control: {{ state_dir: {} }}\nservices:\n  - name: svc\n    vip: {vip}\n    health: {{ kind: tcp, interval: 1s, timeout: 500ms, rise: 2, fall: 3 }}\n{extra}    backends:\n      - {{ name: a, address: '{A}', priority: 0 }}\n      - {{ name: b, address: '{B}', priority: 1 }}\n",
        dir.0.display()
    );
    config::parse(&yaml, Path::new("<test>")).expect("test config")
}

/// Waits (in paused time: instantly) until `f` holds, at most `limit` of daemon time.
async fn until(limit: Duration, mut f: impl FnMut() -> bool) -> Result<Duration, String> {
    let start = Instant::now();
    while !f() {
        if start.elapsed() > limit {
            return Err(format!("not within {limit:?}"));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(start.elapsed())
}

struct Rig {
    script: Arc<Script>,
    kernel: FakeHandle,
    dir: Dir,
    vip: Vip,
    running: Running<FakeDatapath>,
}

impl Rig {
    /// A daemon on `vip` whose primary has taken the traffic.
    async fn start(tag: &str, vip: &str, extra: &str) -> Rig {
        let dir = Dir::new(tag);
        let config = config(&dir, vip, extra);
        let datapath = FakeDatapath::new();
        let kernel = datapath.handle();
        let script = Arc::new(Script::default());
        let running = daemon::start_with(
            &config,
            datapath,
            daemon::Drains::new(),
            Arc::clone(&script) as Arc<dyn HealthCheck>,
        )
        .await
        .expect("daemon starts");
        let rig = Rig {
            script,
            kernel,
            dir,
            vip: tcp_vip(vip),
            running,
        };
        until(Duration::from_secs(5), || {
            rig.backends() == Some(vec![addr(A)])
        })
        .await
        .expect("the primary takes traffic once rise probes pass");
        rig
    }

    /// The backends the VIP's table sends to.
    fn backends(&self) -> Option<Vec<SocketAddr>> {
        self.kernel
            .tables()
            .get(&self.vip)
            .map(|t| t.table.backends.iter().map(|b| b.addr).collect())
    }

    /// The counter id the kernel's table gives `a` (in the slots or the fallback group).
    fn id(&self, a: &str) -> u32 {
        let tables = self.kernel.tables();
        let id = tables[&self.vip]
            .table
            .all_backends()
            .find(|b| b.addr == addr(a))
            .map(|b| b.id);
        id.expect("the table names it")
    }

    /// The kernel reports the `consecutive`th refused connect to `a` in a row.
    fn refused(&self, a: &str, consecutive: u32, suspect: bool) {
        let tables = self.kernel.tables();
        self.kernel.connect_failed(ConnectFailure {
            backend_id: self.id(a),
            vip_id: tables[&self.vip].table.vip_id,
            peer: addr(a),
            kind: ConnectFailureKind::Refused,
            consecutive,
            suspect,
        });
    }

    fn api(&self) -> DaemonApi {
        DaemonApi::new(
            self.running.handle(),
            DrainStore::new(&self.dir.0),
            self.dir.0.join("none.yaml"),
            None,
        )
    }

    fn events_of(&self, kind: &str) -> Vec<String> {
        self.running
            .handle()
            .events()
            .after(0)
            .events
            .into_iter()
            .filter(|e| e.kind == kind)
            .map(|e| format!("{} {}", e.backend.unwrap_or_default(), e.detail))
            .collect()
    }
}

fn caller() -> Caller {
    Caller {
        user: "alice".into(),
        pid: 1,
    }
}

#[tokio::test(start_paused = true)]
async fn refused_connects_reported_by_the_kernel_eject_the_primary_long_before_a_probe() {
    let rig = Rig::start("eject", "127.66.3.1:80", "").await;
    let table = &rig.kernel.tables()[&rig.vip].table;
    assert_eq!(
        table.passive_threshold, 3,
        "the kernel is told the threshold"
    );
    assert_eq!(
        table.fallback.iter().map(|b| b.addr).collect::<Vec<_>>(),
        vec![addr(B)],
        "and where to send connects when it marks the primary"
    );
    rig.refused(A, 1, false);
    rig.refused(A, 2, false);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        rig.backends(),
        Some(vec![addr(A)]),
        "two of three: no change"
    );
    rig.refused(A, 3, true);
    let took = until(Duration::from_secs(1), || {
        rig.backends() == Some(vec![addr(B)])
    })
    .await
    .expect("the table is written without the primary");
    assert!(
        took < Duration::from_millis(10),
        "ejected on the kernel's evidence, not after a 1 s probe: {took:?}"
    );
    assert!(
        rig.kernel.suspect_clears().is_empty(),
        "the daemon confirmed the mark"
    );
    let events = rig.events_of("backend");
    assert!(
        events.iter().any(|e| e.starts_with("a passive:")),
        "{events:?}"
    );
    let status = rig.running.service_status("svc").await.unwrap();
    let a = &status.backends[0];
    assert_eq!((a.state, a.passive.consecutive), ("ejected", 3));
    assert!(a.passive.ejected);
    drop(rig.running.shutdown().await);
}

#[tokio::test(start_paused = true)]
async fn a_mark_the_daemon_does_not_confirm_is_lifted() {
    let rig = Rig::start(
        "lift",
        "127.66.3.2:80",
        "    passive: { consecutive_failures: 0 }\n",
    )
    .await;
    let a = rig.id(A);
    rig.refused(A, 5, true);
    until(Duration::from_secs(1), || {
        rig.kernel.suspect_clears() == vec![a]
    })
    .await
    .expect("passive health off: the kernel's mark is lifted");
    assert_eq!(rig.backends(), Some(vec![addr(A)]));

    // A failure for an id no service has (its backend gone meanwhile): lifted too.
    rig.kernel.connect_failed(ConnectFailure {
        backend_id: 4000,
        vip_id: 1,
        peer: addr(A),
        kind: ConnectFailureKind::SynTimeout,
        consecutive: 3,
        suspect: true,
    });
    until(Duration::from_secs(1), || {
        rig.kernel.suspect_clears() == vec![a, 4000]
    })
    .await
    .expect("an unknown id's mark is lifted");
    drop(rig.running.shutdown().await);
}

#[tokio::test(start_paused = true)]
async fn on_down_aborts_the_sockets_of_a_backend_once_the_table_without_it_is_written() {
    let rig = Rig::start(
        "on-down",
        "127.66.3.3:80",
        "    terminate: { on_down: true }\n",
    )
    .await;
    let a = rig.id(A);
    rig.kernel
        .set_open_sockets(a, Terminated { tcp: 2, udp: 1 });
    rig.script.set(addr(A), false);
    until(Duration::from_secs(10), || {
        rig.kernel.terminations() == vec![vec![a]]
    })
    .await
    .expect("the primary's sockets are aborted when it goes down");
    assert_eq!(
        rig.backends(),
        Some(vec![addr(B)]),
        "after the write that took it out"
    );
    until(Duration::from_secs(1), || {
        !rig.events_of("terminate").is_empty()
    })
    .await
    .unwrap();
    assert_eq!(
        rig.events_of("terminate"),
        ["a 2 tcp and 1 udp sockets aborted"]
    );
    drop(rig.running.shutdown().await);
}

#[tokio::test(start_paused = true)]
async fn drain_terminate_through_the_control_api_reports_what_it_aborted() {
    let rig = Rig::start(
        "drain-terminate",
        "127.66.3.4:80",
        "    terminate: { on_down: true }\n",
    )
    .await;
    let api = rig.api();
    let a = rig.id(A);
    rig.kernel
        .set_open_sockets(a, Terminated { tcp: 4, udp: 0 });
    let request = |terminate| DrainRequest {
        service: "svc".into(),
        backend: "a".into(),
        reason: None,
        force: false,
        terminate,
        fleet: false,
    };

    // A plain drain never touches open sockets, on_down or not.
    let report = api.drain(caller(), request(false)).await.unwrap();
    assert_eq!(report.terminated, None);
    assert_eq!(rig.backends(), Some(vec![addr(B)]));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(rig.kernel.terminations().is_empty());

    let report = api.drain(caller(), request(true)).await.unwrap();
    assert_eq!(
        report.terminated,
        Some(TerminatedReport { tcp: 4, udp: 0 }),
        "answered once aborted"
    );
    assert_eq!(rig.kernel.terminations(), vec![vec![a]]);
    drop(rig.running.shutdown().await);
}

#[tokio::test(start_paused = true)]
async fn drain_after_aborts_what_is_left_once_the_grace_is_over() {
    let rig = Rig::start(
        "drain-after",
        "127.66.3.5:80",
        "    terminate: { drain_after: 30s }\n",
    )
    .await;
    let api = rig.api();
    let a = rig.id(A);
    let request = DrainRequest {
        service: "svc".into(),
        backend: "a".into(),
        reason: None,
        force: false,
        terminate: false,
        fleet: false,
    };
    api.drain(caller(), request).await.unwrap();
    let drained = Instant::now();
    until(Duration::from_secs(60), || {
        rig.kernel.terminations() == vec![vec![a]]
    })
    .await
    .expect("aborted after the grace");
    let after = drained.elapsed();
    assert!(
        after >= Duration::from_secs(30) && after < Duration::from_millis(30_100),
        "{after:?}"
    );
    drop(rig.running.shutdown().await);
}

#[tokio::test(start_paused = true)]
async fn a_passively_ejected_primary_returns_after_rise_probes() {
    let rig = Rig::start(
        "return",
        "127.66.3.6:80",
        "    breaker: { open_for: 20s }\n",
    )
    .await;
    rig.refused(A, 3, true);
    until(Duration::from_millis(100), || {
        rig.backends() == Some(vec![addr(B)])
    })
    .await
    .expect("ejected");
    // Probes pass all along: a first passive ejection is as if `fall` probes had failed,
    // so it needs rise (2) passes at 1 s, never the breaker's 20 s.
    let back = until(Duration::from_secs(10), || {
        rig.backends() == Some(vec![addr(A)])
    })
    .await
    .expect("back after rise probes");
    assert!(
        back >= Duration::from_millis(500) && back <= Duration::from_secs(3),
        "{back:?}"
    );
    let a = rig.id(A);
    until(Duration::from_secs(1), || {
        rig.kernel.suspect_clears() == vec![a]
    })
    .await
    .expect("its mark is lifted as it returns");
    drop(rig.running.shutdown().await);
}

#[tokio::test(start_paused = true)]
async fn a_second_passive_ejection_beyond_max_ejected_percent_is_held_and_its_mark_lifted() {
    let dir = Dir::new("cap");
    let yaml = format!(
        "control: {{ state_dir: {} }}\nservices:\n  - name: svc\n    vip: 127.66.3.7:80\n    health: {{ kind: tcp, interval: 1s, timeout: 500ms, rise: 2, fall: 3 }}\n    breaker: {{ max_ejected_percent: 0 }}\n    backends:\n      - {{ name: a, address: '{A}' }}\n      - {{ name: b, address: '{B}' }}\n",
        dir.0.display()
    );
    let config = config::parse(&yaml, Path::new("<test>")).unwrap();
    let datapath = FakeDatapath::new();
    let kernel = datapath.handle();
    let running = daemon::start_with(
        &config,
        datapath,
        daemon::Drains::new(),
        Arc::new(Script::default()),
    )
    .await
    .unwrap();
    let rig = Rig {
        script: Arc::new(Script::default()),
        kernel,
        dir,
        vip: tcp_vip("127.66.3.7:80"),
        running,
    };
    until(Duration::from_secs(5), || {
        rig.backends() == Some(vec![addr(A), addr(B)])
    })
    .await
    .unwrap();
    rig.refused(A, 3, true);
    until(Duration::from_millis(100), || {
        rig.backends() == Some(vec![addr(B)])
    })
    .await
    .expect("one is always allowed, even at 0%");
    let b = rig.id(B);
    rig.refused(B, 3, true);
    until(Duration::from_millis(100), || {
        rig.kernel.suspect_clears() == vec![b]
    })
    .await
    .expect("the second is held and the kernel's mark lifted");
    assert_eq!(rig.backends(), Some(vec![addr(B)]));
    drop(rig.running.shutdown().await);
}

#[tokio::test(start_paused = true)]
async fn a_failed_abort_is_an_error_of_the_drain_not_a_count_of_zero() {
    let rig = Rig::start("abort-fails", "127.66.3.8:80", "").await;
    rig.kernel.fail_terminations(Some(libc::EOPNOTSUPP));
    let request = DrainRequest {
        service: "svc".into(),
        backend: "a".into(),
        reason: None,
        force: false,
        terminate: true,
        fleet: false,
    };
    let err = rig.api().drain(caller(), request).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("the backend is drained, but aborting its open sockets failed"),
        "{err}"
    );
    assert_eq!(rig.backends(), Some(vec![addr(B)]), "drained all the same");
    until(Duration::from_secs(1), || {
        rig.events_of("terminate")
            .iter()
            .any(|e| e.starts_with("a failed:"))
    })
    .await
    .expect("an event says the abort failed");
    drop(rig.running.shutdown().await);
}

#[tokio::test(start_paused = true)]
async fn explain_says_a_backend_is_out_by_passive_health() {
    let rig = Rig::start("explain", "127.66.3.9:80", "").await;
    rig.refused(A, 3, true);
    until(Duration::from_millis(100), || {
        rig.backends() == Some(vec![addr(B)])
    })
    .await
    .unwrap();
    let report = rig
        .api()
        .explain("127.66.3.9:80".into(), None)
        .await
        .unwrap();
    let a = report.out.iter().find(|b| b.name == "a").expect("a is out");
    assert_eq!(
        a.reason,
        "ejected by passive health: the kernel saw 3 connects in a row fail (refused) (back after rise passing probes)"
    );
    drop(rig.running.shutdown().await);
}
