//! The decision core, fed scripts of inputs: no root, no clock, no sleep.

use std::{net::SocketAddr, path::Path, sync::Arc, time::Duration};

use tokio::time::Instant;

mod passive;

use super::*;
use crate::{
    datapath::{IdAllocator, TableBackend, VipTable},
    health::{HealthStatus, ProbeError, ProbeOk},
};

const A: &str = "127.0.0.1:7001";
const B: &str = "127.0.0.1:7002";
const C: &str = "127.0.0.1:7003";
const INTERVAL: Duration = Duration::from_millis(100);

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// A service, its id allocator and a clock that only moves when told.
struct Rig {
    state: ServiceState,
    ids: IdAllocator,
    now: Instant,
}

/// `backends` as YAML flow entries; `extra` are more service keys.
fn rig_with(extra: &str, backends: &[&str], adopted: Option<Arc<VipTable>>) -> Rig {
    let mut yaml = format!(
        "services:\n  - name: svc\n    vip: 127.66.0.1:80\n    health: {{ kind: tcp, interval: 100ms, timeout: 50ms, rise: 2, fall: 3 }}\n{extra}    backends:\n"
    );
    for b in backends {
        yaml.push_str(&format!("      - {b}\n"));
    }
    let config = crate::config::parse(&yaml, Path::new("<test>")).expect("test config");
    let service = config.services[0].clone();
    let now = Instant::now();
    let mut ids = IdAllocator::default();
    let vip_id = adopted
        .as_ref()
        .map_or_else(|| ids.allocate().unwrap(), |t| t.vip_id);
    let mut state = ServiceState::new(service.clone(), vip_id, adopted, Default::default(), now);
    for (i, b) in service.backends.iter().enumerate() {
        if let crate::config::BackendAddress::Ip(a) = b.address {
            state
                .handle(
                    Input::Addrs {
                        config_index: i,
                        addrs: vec![a],
                    },
                    now,
                    &mut ids,
                )
                .unwrap();
        }
    }
    Rig { state, ids, now }
}

fn rig(extra: &str, backends: &[&str]) -> Rig {
    rig_with(extra, backends, None)
}

fn ok() -> Arc<crate::health::ProbeResult> {
    Arc::new(Ok(ProbeOk {
        latency: Duration::from_millis(1),
        detail: "connected".into(),
        role: None,
    }))
}

fn refused(a: SocketAddr) -> Arc<crate::health::ProbeResult> {
    Arc::new(Err(ProbeError::Refused { addr: a }))
}

impl Rig {
    fn key(&self, a: &str) -> BackendKey {
        self.state
            .backends()
            .find(|b| b.key.addr == addr(a))
            .map(|b| b.key)
            .expect("a backend with that address")
    }

    fn feed(&mut self, input: Input) -> Decision {
        self.state
            .handle(input, self.now, &mut self.ids)
            .expect("input taken")
    }

    /// One probe round: every listed backend passes or fails, one interval later.
    fn round(&mut self, results: &[(&str, bool)]) -> Decision {
        self.now += INTERVAL;
        let mut all = Decision::default();
        for &(a, passed) in results {
            let key = self.key(a);
            let result = if passed { ok() } else { refused(key.addr) };
            let d = self.feed(Input::Probe {
                key,
                started: self.now,
                result,
            });
            all.transitions.extend(d.transitions);
            all.clear_suspect.extend(d.clear_suspect);
            all.terminate.extend(d.terminate);
            if d.table.is_some() {
                all.table = d.table;
            }
        }
        all
    }

    fn rounds(&mut self, n: usize, results: &[(&str, bool)]) -> Decision {
        let mut all = Decision::default();
        for _ in 0..n {
            let d = self.round(results);
            all.transitions.extend(d.transitions);
            all.clear_suspect.extend(d.clear_suspect);
            all.terminate.extend(d.terminate);
            if d.table.is_some() {
                all.table = d.table;
            }
        }
        all
    }

    fn table_addrs(&self) -> Vec<SocketAddr> {
        let mut v: Vec<SocketAddr> = self
            .state
            .table()
            .map(|t| t.backends.iter().map(|b| b.addr).collect())
            .unwrap_or_default();
        v.sort();
        v
    }
}

fn moves(d: &Decision) -> Vec<&Transition> {
    d.transitions
        .iter()
        .filter(|t| {
            matches!(
                t,
                Transition::TrafficStarts { .. }
                    | Transition::FailedOver { .. }
                    | Transition::FailedBack { .. }
                    | Transition::AllDown { .. }
                    | Transition::Panic { .. }
            )
        })
        .collect()
}

const PRIMARY_AND_BACKUP: [&str; 2] = [
    "{ name: a, address: '127.0.0.1:7001', priority: 0 }",
    "{ name: b, address: '127.0.0.1:7002', priority: 1 }",
];

#[test]
fn nothing_is_written_until_every_backend_has_a_verdict() {
    let mut r = rig("", &PRIMARY_AND_BACKUP);
    let d = r.round(&[(A, true), (B, true)]);
    assert_eq!(d.table, None, "one pass of rise 2 is no verdict");
    assert!(!r.state.is_managed());
    let d = r.round(&[(A, true), (B, true)]);
    assert_eq!(r.table_addrs(), vec![addr(A)]);
    assert!(d.table.is_some());
    assert!(d.transitions.contains(&Transition::Managed));
    assert_eq!(moves(&d), vec![&Transition::TrafficStarts { priority: 0 }]);
}

#[test]
fn fails_over_after_fall_failures_and_fails_back_after_rise() {
    let mut r = rig("", &PRIMARY_AND_BACKUP);
    r.rounds(2, &[(A, true), (B, true)]);
    let d = r.rounds(2, &[(A, false), (B, true)]);
    assert_eq!(d.table, None, "two failures of fall 3 change nothing");
    let d = r.round(&[(A, false), (B, true)]);
    assert_eq!(r.table_addrs(), vec![addr(B)]);
    match moves(&d).as_slice() {
        [Transition::FailedOver { from, to, out }] => {
            assert_eq!((*from, *to), (Some(0), 1));
            assert_eq!(out, &vec!["a unhealthy".to_string()]);
        }
        other => panic!("expected one failover, got {other:?}"),
    }
    let d = r.rounds(2, &[(A, true), (B, true)]);
    assert_eq!(r.table_addrs(), vec![addr(A)]);
    assert_eq!(moves(&d), vec![&Transition::FailedBack { from: 1, to: 0 }]);
}

#[test]
fn manual_failback_holds_the_backup_until_the_operator_asks() {
    let mut r = rig("    failback: manual\n", &PRIMARY_AND_BACKUP);
    r.rounds(2, &[(A, true), (B, true)]);
    r.rounds(3, &[(A, false), (B, true)]);
    let d = r.rounds(5, &[(A, true), (B, true)]);
    assert_eq!(r.table_addrs(), vec![addr(B)], "a recovered primary waits");
    assert!(moves(&d).is_empty());
    let d = r.feed(Input::Failback);
    assert_eq!(r.table_addrs(), vec![addr(A)]);
    assert_eq!(moves(&d), vec![&Transition::FailedBack { from: 1, to: 0 }]);
}

/// A table as the kernel holds it for the primary-and-backup service: `backends` in the
/// slots, `fallback` after them, the default passive threshold.
fn adopted_with(vip_id: u32, backends: &[(&str, u32)], fallback: &[(&str, u32)]) -> VipTable {
    let entries = |list: &[(&str, u32)]| -> Vec<TableBackend> {
        list.iter()
            .map(|&(a, id)| TableBackend { addr: addr(a), id })
            .collect()
    };
    adopted(vip_id, backends)
        .with_fallback(entries(fallback))
        .with_passive_threshold(3)
}

fn adopted(vip_id: u32, backends: &[(&str, u32)]) -> VipTable {
    let vip = crate::datapath::Vip {
        addr: addr("127.66.0.1:80"),
        protocol: crate::datapath::Protocol::Tcp,
    };
    let entries: Vec<TableBackend> = backends
        .iter()
        .map(|&(a, id)| TableBackend { addr: addr(a), id })
        .collect();
    let weights = vec![100; entries.len()];
    VipTable::weighted(vip, vip_id, entries, &weights).unwrap()
}

#[test]
fn adopting_a_table_that_stays_is_neither_a_write_nor_a_failover() {
    let table = Arc::new(adopted_with(9, &[(A, 10)], &[(B, 11)]));
    let mut r = rig_with("", &PRIMARY_AND_BACKUP, Some(Arc::clone(&table)));
    assert_eq!(
        r.state
            .backends()
            .find(|b| b.key.addr == addr(A))
            .unwrap()
            .id,
        10,
        "ids continue"
    );
    let d = r.rounds(2, &[(A, true), (B, true)]);
    assert_eq!(d.table, None, "the kernel already holds this table");
    assert_eq!(r.state.table(), Some(&*table));
    assert!(
        Arc::ptr_eq(&r.state.shared_table().unwrap(), &table),
        "the core keeps the adopted allocation (the writer's), not a copy of it"
    );
    assert!(
        moves(&d).is_empty(),
        "traffic did not move: {:?}",
        d.transitions
    );
}

#[test]
fn manual_failback_survives_a_restart_or_reload_through_the_adopted_table() {
    // The kernel sends to the backup (an earlier run failed over); the primary is back.
    let table = adopted(9, &[(B, 11)]);
    let mut r = rig_with(
        "    failback: manual\n",
        &PRIMARY_AND_BACKUP,
        Some(Arc::new(table)),
    );
    let d = r.rounds(2, &[(A, true), (B, true)]);
    assert_eq!(
        r.table_addrs(),
        vec![addr(B)],
        "no failback without the operator"
    );
    assert!(moves(&d).is_empty());
    assert_eq!(r.state.active_priority(), Some(1));
    r.feed(Input::Failback);
    assert_eq!(r.table_addrs(), vec![addr(A)]);
}

#[test]
fn all_down_refuses_and_panic_spreads_over_the_lowest_priority() {
    let mut r = rig("", &PRIMARY_AND_BACKUP);
    r.rounds(2, &[(A, true), (B, true)]);
    let d = r.rounds(3, &[(A, false), (B, false)]);
    assert!(r.state.table().unwrap().slots.is_empty(), "refusing");
    assert!(moves(&d)
        .iter()
        .any(|t| matches!(t, Transition::AllDown { from: Some(_), .. })));

    let two_primaries = [
        "{ name: a, address: '127.0.0.1:7001' }",
        "{ name: c, address: '127.0.0.1:7003' }",
        "{ name: b, address: '127.0.0.1:7002', priority: 1 }",
    ];
    let mut r = rig("    on_all_down: panic\n", &two_primaries);
    r.rounds(2, &[(A, true), (B, true), (C, true)]);
    let d = r.rounds(3, &[(A, false), (B, false), (C, false)]);
    assert_eq!(r.table_addrs(), vec![addr(A), addr(C)]);
    assert!(moves(&d)
        .iter()
        .any(|t| matches!(t, Transition::Panic { priority: 0, .. })));
    assert!(r.state.status(r.now).panic, "status shows panic mode");
    assert!(r.state.explain().panic);
}

#[test]
fn weights_set_the_shares_of_the_table() {
    let mut r = rig(
        "",
        &[
            "{ name: a, address: '127.0.0.1:7001', weight: 300 }",
            "{ name: b, address: '127.0.0.1:7002', weight: 100 }",
        ],
    );
    r.rounds(2, &[(A, true), (B, true)]);
    let e = r.state.explain();
    let share = |a: &str| e.reachable.iter().find(|x| x.1 == addr(a)).unwrap().2;
    assert!((share(A) - 75.0).abs() < 1.0, "{}", share(A));
    assert!((share(B) - 25.0).abs() < 1.0, "{}", share(B));
}

#[test]
fn the_breaker_ejects_repeat_failures_within_max_ejected_percent() {
    let extra = "    breaker: { failures: 2, open_for: 10s, max_ejected_percent: 50 }\n";
    let mut r = rig(
        extra,
        &[
            "{ name: a, address: '127.0.0.1:7001' }",
            "{ name: c, address: '127.0.0.1:7003' }",
        ],
    );
    r.rounds(2, &[(A, true), (C, true)]);
    let d = r.rounds(2, &[(A, false), (C, false)]);
    let ejected: Vec<&str> = d
        .transitions
        .iter()
        .filter_map(|t| match t {
            Transition::Ejected { backend, .. } => Some(backend.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(ejected.len(), 1, "50% of two is one: {ejected:?}");
    // The open period ends with time alone: a tick half-opens it.
    r.now += Duration::from_secs(10);
    let d = r.feed(Input::Tick);
    assert!(d
        .transitions
        .iter()
        .any(|t| matches!(t, Transition::HalfOpened { .. })));
    // Its next ejection lasts twice as long.
    let d = r.round(&[(A, false), (C, false)]);
    assert!(d.transitions.iter().any(|t| matches!(
        t,
        Transition::Ejected { open_for, ejections: 2, .. } if *open_for == Duration::from_secs(20)
    )));
}

fn drain(by: &str) -> Drain {
    Drain {
        by: by.into(),
        at_unix: 1,
        reason: Some("maintenance".into()),
        fleet: false,
    }
}

#[test]
fn drains_move_traffic_and_refuse_to_leave_nothing_live() {
    let mut r = rig("", &PRIMARY_AND_BACKUP);
    r.rounds(2, &[(A, true), (B, true)]);
    // Draining the primary hands traffic to the standby: allowed.
    let d = r.feed(Input::Drain {
        backend: "a".into(),
        drain: drain("alice"),
        force: false,
        terminate: false,
    });
    assert_eq!(r.table_addrs(), vec![addr(B)]);
    assert!(d
        .transitions
        .iter()
        .any(|t| matches!(t, Transition::Drained { .. })));
    // Draining the standby too would leave nothing: refused, and nothing changes.
    let before = r.state.table().cloned();
    let refused = r
        .state
        .handle(
            Input::Drain {
                backend: "b".into(),
                drain: drain("alice"),
                force: false,
                terminate: false,
            },
            r.now,
            &mut r.ids,
        )
        .unwrap_err();
    assert!(matches!(refused, Refused::LastLive { .. }));
    assert_eq!(r.state.table().cloned(), before);
    // Undrain of a backend that is not drained is refused and keeps its time in state.
    let since = r.state.status(r.now).backends[1].in_state_for;
    r.now += Duration::from_secs(5);
    let refused = r
        .state
        .handle(
            Input::Undrain {
                backend: "b".into(),
            },
            r.now,
            &mut r.ids,
        )
        .unwrap_err();
    assert!(matches!(refused, Refused::NotDrained { .. }), "{refused}");
    assert_eq!(
        r.state.status(r.now).backends[1].in_state_for,
        since + Duration::from_secs(5)
    );
    assert!(matches!(
        r.state.check_drain("zz", false),
        Err(Refused::UnknownBackend { .. })
    ));
    r.feed(Input::Undrain {
        backend: "a".into(),
    });
    assert_eq!(r.table_addrs(), vec![addr(A)]);
}

#[test]
fn a_dns_change_keeps_the_old_address_until_the_new_one_has_a_verdict() {
    let mut r = rig("", &["{ name: db, address: 'db.test.invalid:7001' }"]);
    let d = r.feed(Input::Addrs {
        config_index: 0,
        addrs: vec![addr(A)],
    });
    assert!(d
        .transitions
        .iter()
        .any(|t| matches!(t, Transition::AddressAdded { .. })));
    r.rounds(2, &[(A, true)]);
    assert_eq!(r.table_addrs(), vec![addr(A)]);
    let old_id = r.state.backends().next().unwrap().id;
    // The name moves to B: A keeps the traffic while B is probed.
    r.feed(Input::Addrs {
        config_index: 0,
        addrs: vec![addr(B)],
    });
    assert_eq!(r.table_addrs(), vec![addr(A)], "make before break");
    r.round(&[(A, true), (B, true)]);
    assert_eq!(r.table_addrs(), vec![addr(A)]);
    r.round(&[(A, true)]);
    // B's second pass: A is retired, and its id given back.
    r.now += INTERVAL;
    let mut ids = Recording(Vec::new());
    let d = r
        .state
        .handle(
            Input::Probe {
                key: r.key(B),
                started: r.now,
                result: ok(),
            },
            r.now,
            &mut ids,
        )
        .unwrap();
    assert_eq!(r.table_addrs(), vec![addr(B)]);
    assert!(d
        .transitions
        .iter()
        .any(|t| matches!(t, Transition::AddressRemoved { .. })));
    assert_eq!(ids.0, vec![old_id], "its id is free again");
}

/// Records the ids given back.
struct Recording(Vec<u32>);

impl CounterIds for Recording {
    fn allocate(&mut self) -> Result<u32, crate::datapath::IdsExhausted> {
        Err(crate::datapath::IdsExhausted)
    }

    fn release(&mut self, id: u32) {
        self.0.push(id);
    }
}

#[test]
fn a_name_that_never_resolves_stops_holding_up_readiness_once_overdue() {
    let mut r = rig("", &["{ name: db, address: 'nxdomain.test.invalid:7001' }"]);
    assert!(!r.state.is_settled(r.now));
    let due = r.state.next_deadline().expect("a deadline to tick at");
    r.now = due;
    let d = r.feed(Input::Tick);
    assert!(r.state.is_settled(r.now));
    assert!(
        r.state.table().unwrap().slots.is_empty(),
        "a new VIP refuses"
    );
    assert!(d.table.is_some());
    assert_eq!(
        r.state.status(r.now).unresolved,
        vec![("db".to_string(), "nxdomain.test.invalid:7001".to_string())]
    );
}

#[test]
fn an_unresolved_name_leaves_an_adopted_table_serving() {
    let table = adopted(9, &[(A, 10)]);
    let mut r = rig_with(
        "",
        &["{ name: db, address: 'nxdomain.test.invalid:7001' }"],
        Some(Arc::new(table.clone())),
    );
    r.now += Duration::from_secs(60);
    let d = r.feed(Input::Tick);
    assert_eq!(d.table, None);
    assert_eq!(r.state.table(), Some(&table));
    assert!(r.state.is_settled(r.now), "ready: serving what it can");
}

#[test]
fn a_backend_that_never_completes_a_streak_is_overdue_not_blocking() {
    let mut r = rig("", &PRIMARY_AND_BACKUP);
    // A alternates; B is healthy. The table waits for A until its first verdict is overdue.
    for i in 0..3 {
        let d = r.round(&[(A, i % 2 == 0), (B, true)]);
        assert_eq!(d.table, None);
    }
    r.now = r.state.next_deadline().expect("A's verdict deadline");
    r.feed(Input::Tick);
    assert_eq!(r.table_addrs(), vec![addr(B)]);
    let status = r.state.status(r.now);
    assert_eq!(status.backends[0].health, HealthStatus::Unknown);
}

fn answers(role: crate::health::Role) -> Arc<crate::health::ProbeResult> {
    Arc::new(Ok(ProbeOk {
        latency: Duration::from_millis(1),
        detail: role.to_string(),
        role: Some(role),
    }))
}

fn demoted(a: SocketAddr) -> Arc<crate::health::ProbeResult> {
    Arc::new(Err(ProbeError::WrongRole {
        addr: a,
        wanted: crate::health::RoleWanted::Primary,
        actual: crate::health::Role::Replica,
    }))
}

impl Rig {
    /// One probe result for one backend, one interval later.
    fn probe_with(&mut self, a: &str, result: Arc<crate::health::ProbeResult>) -> Decision {
        self.now += INTERVAL;
        let key = self.key(a);
        self.feed(Input::Probe {
            key,
            started: self.now,
            result,
        })
    }
}

const TWO_DATABASES: [&str; 2] = [
    "{ name: a, address: '127.0.0.1:7001' }",
    "{ name: b, address: '127.0.0.1:7002' }",
];

#[test]
fn a_demoted_primary_is_out_at_once_not_after_fall_probes() {
    use crate::health::Role::Primary;
    let mut r = rig("", &PRIMARY_AND_BACKUP);
    r.state.one_primary = true;
    for _ in 0..2 {
        r.probe_with(A, answers(Primary));
        r.probe_with(B, demoted(addr(B)));
    }
    assert_eq!(r.table_addrs(), vec![addr(A)]);
    // One "I am a replica" from A: out now, though fall is 3.
    let d = r.probe_with(A, demoted(addr(A)));
    assert!(d.transitions.iter().any(|t| matches!(
        t,
        Transition::Health {
            to: HealthStatus::Unhealthy,
            ..
        }
    )));
    assert!(
        r.state.table().unwrap().slots.is_empty(),
        "no primary left: refused rather than sent to a replica"
    );
}

#[test]
fn a_standby_answering_its_role_is_never_ejected_and_joins_at_once_when_promoted() {
    use crate::health::Role::Primary;
    let mut r = rig("", &TWO_DATABASES);
    r.state.one_primary = true;
    // Long enough for any breaker to have opened on B's "I am a replica" answers.
    for _ in 0..20 {
        r.probe_with(A, answers(Primary));
        r.probe_with(B, demoted(addr(B)));
    }
    let status = r.state.status(r.now);
    let b = status.backends.iter().find(|b| b.name == "b").unwrap();
    assert!(!b.ejected, "a replica in its role is not a flake: {b:?}");
    // Failover: B promoted, A demoted. After `rise` answers B takes the VIP, no breaker wait.
    r.probe_with(B, answers(Primary));
    r.probe_with(A, demoted(addr(A)));
    r.probe_with(B, answers(Primary));
    assert_eq!(r.table_addrs(), vec![addr(B)]);
}

#[test]
fn two_primaries_keep_the_vip_on_the_one_that_had_it() {
    use crate::health::Role::Primary;
    let mut r = rig("", &TWO_DATABASES);
    r.state.one_primary = true;
    for _ in 0..2 {
        r.probe_with(A, answers(Primary));
        r.probe_with(B, demoted(addr(B)));
    }
    assert_eq!(r.table_addrs(), vec![addr(A)]);
    // B is promoted while A still answers primary: B is the newcomer.
    r.probe_with(B, answers(Primary));
    let d = r.probe_with(B, answers(Primary));
    assert_eq!(
        r.table_addrs(),
        vec![addr(A)],
        "never both, never the newcomer"
    );
    assert!(d.transitions.iter().any(|t| matches!(
        t,
        Transition::SplitBrain { primaries, kept: Some(kept) } if primaries.len() == 2 && kept == "a"
    )));
    assert_eq!(r.state.status(r.now).split_brain, vec!["a", "b"]);
    let e = r.state.explain();
    assert!(e.out.iter().any(|(name, _, why)| name == "b"
        && matches!(why, OutReason::SplitBrain { kept: Some(k) } if k == "a")));
    // A is demoted: the split is over and B, the only primary, takes the VIP.
    let d = r.probe_with(A, demoted(addr(A)));
    assert!(d.transitions.contains(&Transition::SplitBrainEnded));
    assert_eq!(r.table_addrs(), vec![addr(B)]);
}

#[test]
fn two_primaries_at_a_first_start_get_no_connection() {
    use crate::health::Role::Primary;
    let mut r = rig("", &TWO_DATABASES);
    r.state.one_primary = true;
    let mut last = Decision::default();
    for _ in 0..2 {
        r.probe_with(A, answers(Primary));
        last = r.probe_with(B, answers(Primary));
    }
    assert!(
        r.state.table().unwrap().slots.is_empty(),
        "without history, neither: writes to the wrong primary would be lost"
    );
    assert!(last
        .transitions
        .iter()
        .any(|t| matches!(t, Transition::SplitBrain { kept: None, .. })));
}

#[test]
fn without_role_primary_two_primaries_share_the_vip() {
    use crate::health::Role::Primary;
    let mut r = rig("", &TWO_DATABASES);
    for _ in 0..2 {
        r.probe_with(A, answers(Primary));
        r.probe_with(B, answers(Primary));
    }
    assert_eq!(r.table_addrs(), vec![addr(A), addr(B)]);
}

#[test]
fn late_probes_stretch_the_first_verdict_deadline() {
    let mut r = rig("", &PRIMARY_AND_BACKUP);
    let unstretched = r.state.next_deadline().expect("a first-verdict deadline");
    // Probes start 200 ms late: each of the max(rise, fall) + 1 = 4 probe slots a first
    // verdict counts on may be that late.
    let d = r.feed(Input::ProbeLag {
        lag: Duration::from_millis(200),
    });
    assert_eq!(d, Decision::default(), "lag alone decides nothing");
    let stretched = r.state.next_deadline().expect("still a deadline");
    assert_eq!(stretched - unstretched, Duration::from_millis(800));
    // At the old deadline nothing is overdue: no table with no live backend is written.
    r.now = unstretched;
    let d = r.feed(Input::Tick);
    assert_eq!(d.table, None);
    assert!(!r.state.is_managed());
    // The late verdicts arrive: the first table sends to the primary.
    let d = r.rounds(2, &[(A, true), (B, true)]);
    assert_eq!(r.table_addrs(), vec![addr(A)]);
    assert!(!d
        .transitions
        .iter()
        .any(|t| matches!(t, Transition::AllDown { .. })));

    // Without the lag, the same moment writes a VIP that refuses: what a first start under
    // probe overload did before.
    let mut r = rig("", &PRIMARY_AND_BACKUP);
    r.now = r.state.next_deadline().expect("the unstretched deadline");
    let d = r.feed(Input::Tick);
    assert!(d.table.expect("written").slots.is_empty());
}

#[test]
fn the_stretch_follows_the_lag_back_down() {
    let mut r = rig("", &PRIMARY_AND_BACKUP);
    let unstretched = r.state.next_deadline().unwrap();
    r.feed(Input::ProbeLag {
        lag: Duration::from_secs(1),
    });
    r.feed(Input::ProbeLag {
        lag: Duration::ZERO,
    });
    assert_eq!(r.state.next_deadline(), Some(unstretched));
}
