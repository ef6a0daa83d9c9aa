//! The daemon's decisions end to end without root: the real service tasks, writer and
//! control handler over an in-memory datapath, probes answered by a script, and tokio's
//! paused clock — no kernel, no sleeps, no real time.

mod dns;

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use failoverd::{
    config::{self, Config},
    control::{Caller, ControlHandler, DrainRequest, UndrainRequest},
    daemon::{self, api::DaemonApi, DrainStore, Running},
    datapath::{
        CounterTotals, Datapath, DatapathError, FakeDatapath, InstalledTable, Protocol, Vip,
        VipTable,
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

/// A fake datapath the test can look into while the writer owns it.
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<FakeDatapath>>);

impl Datapath for Shared {
    fn apply(&mut self, table: &VipTable) -> Result<(), DatapathError> {
        self.0.lock().unwrap().apply(table)
    }
    fn remove(&mut self, vip: &Vip) -> Result<(), DatapathError> {
        self.0.lock().unwrap().remove(vip)
    }
    fn tables(&self) -> Result<std::collections::BTreeMap<Vip, InstalledTable>, DatapathError> {
        self.0.lock().unwrap().tables()
    }
    fn counters(&self, id: u32) -> Result<CounterTotals, DatapathError> {
        self.0.lock().unwrap().counters(id)
    }
    fn table(&self, vip: &Vip) -> Result<Option<InstalledTable>, DatapathError> {
        self.0.lock().unwrap().table(vip)
    }
    fn counter_ids(&self) -> Result<Vec<u32>, DatapathError> {
        self.0.lock().unwrap().counter_ids()
    }
    fn reset_counters(&mut self, id: u32) -> Result<(), DatapathError> {
        self.0.lock().unwrap().reset_counters(id)
    }
    fn check_intact(&self) -> Result<(), DatapathError> {
        self.0.lock().unwrap().check_intact()
    }
}

impl Shared {
    /// The backends the VIP's table sends to (`None`: no table; empty: refusing).
    fn backends(&self, vip: Vip) -> Option<Vec<SocketAddr>> {
        let tables = self.0.lock().unwrap().tables().unwrap();
        tables
            .get(&vip)
            .map(|t| t.table.backends.iter().map(|b| b.addr).collect())
    }

    fn writes(&self) -> usize {
        self.0.lock().unwrap().writes.len()
    }

    /// Reaches into the fake's kernel behind the writer's back.
    fn kernel(&self) -> failoverd::datapath::FakeHandle {
        self.0.lock().unwrap().handle()
    }
}

const A: &str = "127.0.0.1:7101";
const B: &str = "127.0.0.1:7102";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn tcp_vip(s: &str) -> Vip {
    Vip {
        addr: addr(s),
        protocol: Protocol::Tcp,
    }
}

fn config(state_dir: &Path, services: &str) -> Config {
    let yaml = format!(
        "control: {{ state_dir: {} }}\nservices:\n{services}",
        state_dir.display()
    );
    config::parse(&yaml, Path::new("<test>")).expect("test config")
}

fn primary_and_backup(name: &str, vip: &str, extra: &str) -> String {
    format!(
        "  - name: {name}\n    vip: {vip}\n    health: {{ kind: tcp, interval: 100ms, timeout: 50ms, rise: 2, fall: 3 }}\n{extra}    backends:\n      - {{ name: a, address: '{A}', priority: 0 }}\n      - {{ name: b, address: '{B}', priority: 1 }}\n"
    )
}

/// Waits (in paused time: instantly) until `f` holds, at most `limit` of daemon time.
async fn until(limit: Duration, mut f: impl FnMut() -> bool) -> Result<Duration, String> {
    let start = Instant::now();
    while !f() {
        if start.elapsed() > limit {
            return Err(format!("not within {limit:?}"));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(start.elapsed())
}

struct Rig {
    script: Arc<Script>,
    datapath: Shared,
    dir: tempdir::Dir,
}

mod tempdir {
    /// A directory removed on drop.
    pub struct Dir(pub std::path::PathBuf);
    impl Dir {
        pub fn new(tag: &str) -> Dir {
            let path = std::env::temp_dir().join(format!(
                "fo-decisions-{tag}-{}-{}",
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
}

impl Rig {
    fn new(tag: &str) -> Rig {
        Rig {
            script: Arc::new(Script::default()),
            datapath: Shared::default(),
            dir: tempdir::Dir::new(tag),
        }
    }

    async fn start(&self, config: &Config) -> Running<Shared> {
        daemon::start_with(
            config,
            self.datapath.clone(),
            daemon::Drains::new(),
            self.script.clone(),
        )
        .await
        .expect("daemon starts")
    }
}

#[tokio::test(start_paused = true)]
async fn fails_over_within_the_detection_bound_and_back() {
    let rig = Rig::new("failover");
    let vip = tcp_vip("127.66.1.1:80");
    let config = config(&rig.dir.0, &primary_and_backup("svc", "127.66.1.1:80", ""));
    let _running = rig.start(&config).await;
    until(Duration::from_secs(2), || {
        rig.datapath.backends(vip) == Some(vec![addr(A)])
    })
    .await
    .expect("the primary takes traffic once rise probes pass");
    rig.script.set(addr(A), false);
    let took = until(Duration::from_secs(2), || {
        rig.datapath.backends(vip) == Some(vec![addr(B)])
    })
    .await
    .expect("fails over");
    // fall × interval + timeout, plus one interval of probe phase.
    assert!(took <= Duration::from_millis(450), "failover took {took:?}");
    rig.script.set(addr(A), true);
    until(Duration::from_secs(2), || {
        rig.datapath.backends(vip) == Some(vec![addr(A)])
    })
    .await
    .expect("fails back once the primary passes rise probes");
}

#[tokio::test(start_paused = true)]
async fn a_restart_adopts_without_a_write_a_failover_event_or_undoing_a_manual_failover() {
    let rig = Rig::new("restart");
    let vip = tcp_vip("127.66.1.2:80");
    let config = config(
        &rig.dir.0,
        &primary_and_backup("svc", "127.66.1.2:80", "    failback: manual\n"),
    );
    let running = rig.start(&config).await;
    until(Duration::from_secs(2), || {
        rig.datapath.backends(vip) == Some(vec![addr(A)])
    })
    .await
    .unwrap();
    rig.script.set(addr(A), false);
    until(Duration::from_secs(2), || {
        rig.datapath.backends(vip) == Some(vec![addr(B)])
    })
    .await
    .unwrap();
    rig.script.set(addr(A), true);
    drop(running.shutdown().await);

    // Restart with the primary healthy: traffic stays on the backup (failback: manual).
    let writes = rig.datapath.writes();
    let running = rig.start(&config).await;
    let handle = running.handle();
    until(Duration::from_secs(2), || handle.ready())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(rig.datapath.backends(vip), Some(vec![addr(B)]));
    assert_eq!(
        rig.datapath.writes(),
        writes,
        "nothing to write: the kernel holds it"
    );
    let events = handle.events().after(0);
    assert!(
        events.events.iter().all(|e| e.kind != "failover"),
        "no failover happened: {:?}",
        events.events
    );
    let status = handle.service_status("svc").await.unwrap();
    assert_eq!(status.active_priority, Some(1));

    // A reload that changes the service keeps it too.
    let changed = self::config(
        &rig.dir.0,
        &primary_and_backup(
            "svc",
            "127.66.1.2:80",
            "    failback: manual\n    on_all_down: panic\n",
        ),
    );
    let report = handle.reload(changed).await.unwrap();
    assert_eq!(report.changed, vec!["svc".to_string()]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(rig.datapath.backends(vip), Some(vec![addr(B)]));
    handle.failback("svc").await.unwrap();
    until(Duration::from_secs(1), || {
        rig.datapath.backends(vip) == Some(vec![addr(A)])
    })
    .await
    .unwrap();
    drop(running.shutdown().await);
}

fn caller() -> Caller {
    Caller {
        user: "alice".into(),
        pid: 1,
    }
}

#[tokio::test(start_paused = true)]
async fn drains_are_in_the_table_when_the_call_returns_and_undrain_needs_a_drain() {
    let rig = Rig::new("drain");
    let vip = tcp_vip("127.66.1.3:80");
    let config = config(&rig.dir.0, &primary_and_backup("svc", "127.66.1.3:80", ""));
    let running = rig.start(&config).await;
    let handle = running.handle();
    let api = DaemonApi::new(
        handle.clone(),
        DrainStore::new(&rig.dir.0),
        rig.dir.0.join("none.yaml"),
        None,
    );
    until(Duration::from_secs(2), || {
        rig.datapath.backends(vip) == Some(vec![addr(A)])
    })
    .await
    .unwrap();
    let request = |backend: &str| DrainRequest {
        service: "svc".into(),
        backend: backend.into(),
        reason: Some("CHG-1".into()),
        force: false,
        fleet: false,
        terminate: false,
    };
    api.drain(caller(), request("a")).await.unwrap();
    assert_eq!(rig.datapath.backends(vip), Some(vec![addr(B)]), "at once");
    let drains = DrainStore::new(&rig.dir.0).load().unwrap();
    assert_eq!(drains["svc"]["a"].reason.as_deref(), Some("CHG-1"));
    let refused = api.drain(caller(), request("b")).await.unwrap_err();
    assert!(
        refused.to_string().contains("last live backend"),
        "{refused}"
    );
    let undrain = |backend: &str| UndrainRequest {
        service: "svc".into(),
        backend: backend.into(),
        fleet: false,
    };
    let refused = api.undrain(caller(), undrain("b")).await.unwrap_err();
    assert!(refused.to_string().contains("not drained"), "{refused}");
    api.undrain(caller(), undrain("a")).await.unwrap();
    assert_eq!(rig.datapath.backends(vip), Some(vec![addr(A)]));
    drop(running.shutdown().await);
}

#[tokio::test(start_paused = true)]
async fn explain_finds_a_udp_vip_without_being_told_the_protocol() {
    let rig = Rig::new("explain");
    let services = format!(
        "{}  - name: dns\n    vip: 127.66.1.5:53\n    protocol: udp\n    health: {{ kind: tcp, interval: 100ms, timeout: 50ms }}\n    backends:\n      - {{ name: a, address: '{A}' }}\n",
        primary_and_backup("web", "127.66.1.4:80", "")
    );
    let config = config(&rig.dir.0, &services);
    let running = rig.start(&config).await;
    let handle = running.handle();
    until(Duration::from_secs(2), || handle.ready())
        .await
        .unwrap();
    let api = DaemonApi::new(
        handle,
        DrainStore::new(&rig.dir.0),
        rig.dir.0.join("x"),
        None,
    );
    let report = api.explain("127.66.1.5:53".into(), None).await.unwrap();
    assert_eq!(report.service, "dns");
    let report = api.explain("127.66.1.4:80".into(), None).await.unwrap();
    assert_eq!(report.service, "web");
    assert_eq!(
        report.out[0].reason,
        "standby: priority 1 while priority 0 takes connections"
    );
    let missing = api
        .explain("127.66.1.5:53".into(), Some("tcp".into()))
        .await
        .unwrap_err();
    assert!(
        missing.to_string().contains("no service has the VIP"),
        "{missing}"
    );
    drop(running.shutdown().await);
}

#[tokio::test(start_paused = true)]
async fn reload_through_the_api_refuses_an_invalid_file_with_its_location() {
    let rig = Rig::new("reload");
    let path = rig.dir.0.join("failoverd.yaml");
    let services = primary_and_backup("svc", "127.66.1.6:80", "");
    std::fs::write(
        &path,
        format!(
            "control: {{ state_dir: {} }}\nservices:\n{services}",
            rig.dir.0.display()
        ),
    )
    .unwrap();
    let config = config::load(&path).unwrap();
    let running = rig.start(&config).await;
    let api = DaemonApi::new(
        running.handle(),
        DrainStore::new(&rig.dir.0),
        path.clone(),
        None,
    );
    std::fs::write(&path, "services:\n  - name: svc\n    vip: nope\n").unwrap();
    let refused = api.reload(caller()).await.unwrap_err();
    let message = refused.to_string();
    assert!(message.contains("failoverd.yaml:3:"), "located: {message}");
    let events = running.handle().events().after(0);
    let last = events.events.last().expect("a reload event");
    assert_eq!((last.kind, last.to.as_deref()), ("reload", Some("error")));
    drop(running.shutdown().await);
}

/// A name that resolves to both families feeds an IPv4 VIP only its IPv4 address.
#[tokio::test]
async fn a_dual_family_hostname_feeds_the_vip_its_own_family_only() {
    let dns = dns::TestDns::start().await.expect("test DNS");
    dns.set(
        "dual.test",
        &["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()],
        60,
    );
    let rig = Rig::new("dual");
    let vip = tcp_vip("127.66.1.7:80");
    let yaml = format!(
        "control: {{ state_dir: {} }}\nresolver: {{ nameservers: ['{}'] }}\nservices:\n  - name: svc\n    vip: 127.66.1.7:80\n    health: {{ kind: tcp, interval: 100ms, timeout: 50ms }}\n    backends:\n      - {{ name: db, address: 'dual.test:7103' }}\n",
        rig.dir.0.display(),
        dns.addr()
    );
    let config = config::parse(&yaml, Path::new("<test>")).unwrap();
    let running = rig.start(&config).await;
    until(Duration::from_secs(10), || {
        rig.datapath.backends(vip) == Some(vec![addr("127.0.0.1:7103")])
    })
    .await
    .expect("the IPv4 address alone is installed");
    let status = running.handle().service_status("svc").await.unwrap();
    assert_eq!(status.backends.len(), 1, "{:?}", status.backends);
    drop(running.shutdown().await);
}

/// One backend whose name never resolves must not keep the daemon unready (a `Type=notify`
/// start would time out on it): its service is reported with the backend unresolved.
#[tokio::test]
async fn an_nxdomain_backend_beside_healthy_services_leaves_the_daemon_ready() {
    let dns = dns::TestDns::start().await.expect("test DNS");
    let rig = Rig::new("nxdomain");
    let yaml = format!(
        "control: {{ state_dir: {} }}\nresolver: {{ nameservers: ['{}'] }}\nservices:\n{}  - name: lost\n    vip: 127.66.1.9:80\n    health: {{ kind: tcp, interval: 100ms, timeout: 50ms }}\n    backends:\n      - {{ name: gone, address: 'nxdomain.test:7104' }}\n",
        rig.dir.0.display(),
        dns.addr(),
        primary_and_backup("web", "127.66.1.8:80", ""),
    );
    let config = config::parse(&yaml, Path::new("<test>")).unwrap();
    let running = rig.start(&config).await;
    let handle = running.handle();
    until(Duration::from_secs(10), || handle.ready())
        .await
        .expect("ready once the unresolvable name is overdue");
    assert_eq!(
        rig.datapath.backends(tcp_vip("127.66.1.8:80")),
        Some(vec![addr(A)])
    );
    let api = DaemonApi::new(
        handle,
        DrainStore::new(&rig.dir.0),
        rig.dir.0.join("x"),
        None,
    );
    let status = api.status().await.unwrap();
    let lost = status.services.iter().find(|s| s.name == "lost").unwrap();
    assert_eq!(lost.backends[0].state, "unresolved");
    assert_eq!(lost.backends[0].address, "nxdomain.test:7104");
    drop(running.shutdown().await);
}

/// The kernel is the truth: a VIP whose table cannot be written shows as failing, with the
/// errno, and the daemon is not ready until the kernel holds it; an entry deleted behind the
/// daemon's back is put back.
#[tokio::test(start_paused = true)]
async fn status_and_readiness_report_what_the_kernel_holds() {
    let rig = Rig::new("kernel");
    let vip = tcp_vip("127.66.1.10:80");
    let config = config(&rig.dir.0, &primary_and_backup("svc", "127.66.1.10:80", ""));
    rig.datapath.kernel().fail_writes(libc::E2BIG, 1_000);
    let running = rig.start(&config).await;
    let handle = running.handle();
    let api = DaemonApi::new(
        handle.clone(),
        DrainStore::new(&rig.dir.0),
        rig.dir.0.join("x"),
        None,
    );
    let failing = until(Duration::from_secs(5), || {
        handle.write_failure(&vip).is_some()
    })
    .await;
    assert!(failing.is_ok(), "the failed write is seen");
    let status = api.status().await.unwrap();
    let svc = &status.services[0];
    assert!(!svc.ready, "not ready while the kernel lacks the table");
    let error = svc.datapath_error.clone().unwrap_or_default();
    assert!(error.contains("E2BIG"), "the errno is named: {error}");
    assert!(!handle.ready());

    rig.datapath.kernel().fail_writes(libc::E2BIG, 0);
    until(Duration::from_secs(40), || {
        handle.ready() && rig.datapath.backends(vip) == Some(vec![addr(A)])
    })
    .await
    .expect("recovers once the writes go through");
    assert!(api.status().await.unwrap().services[0]
        .datapath_error
        .is_none());

    rig.datapath.kernel().delete_entry(&vip);
    until(Duration::from_secs(5), || {
        rig.datapath.backends(vip) == Some(vec![addr(A)])
    })
    .await
    .expect("an entry deleted behind the daemon's back is restored within seconds");
    drop(running.shutdown().await);
}
