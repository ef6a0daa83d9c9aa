//! The core fed scripted kernel evidence (passive health) and asked what to abort (terminate).

use std::time::Duration;

use super::*;
use crate::{datapath::ConnectFailureKind, decision::TerminateReason};

const D: &str = "127.0.0.1:7004";

impl Rig {
    fn id(&self, a: &str) -> u32 {
        self.state
            .backends()
            .find(|b| b.key.addr == addr(a))
            .map(|b| b.id)
            .expect("a backend with that address")
    }

    /// The kernel reports a refused connect to `a`, the `consecutive`th in a row.
    fn refused_connect(&mut self, a: &str, consecutive: u32, suspect: bool) -> Decision {
        let backend_id = self.id(a);
        self.feed(Input::ConnectFailed {
            backend_id,
            kind: ConnectFailureKind::Refused,
            consecutive,
            suspect,
        })
    }

    /// `n` refused connects to `a` in a row, the kernel marking it at `threshold`.
    fn refused_run(&mut self, a: &str, n: u32, threshold: u32) -> Decision {
        let mut all = Decision::default();
        for i in 1..=n {
            let d = self.refused_connect(a, i, i >= threshold);
            all.transitions.extend(d.transitions);
            all.clear_suspect.extend(d.clear_suspect);
            all.terminate.extend(d.terminate);
            if d.table.is_some() {
                all.table = d.table;
            }
        }
        all
    }

    fn fallback_addrs(&self) -> Vec<SocketAddr> {
        self.state
            .table()
            .map(|t| t.fallback.iter().map(|b| b.addr).collect())
            .unwrap_or_default()
    }

    fn terminations(d: &Decision) -> Vec<(String, TerminateReason)> {
        d.terminate
            .iter()
            .map(|t| (t.backend.clone(), t.reason))
            .collect()
    }
}

fn passive_ejections(d: &Decision) -> Vec<&str> {
    d.transitions
        .iter()
        .filter_map(|t| match t {
            Transition::PassiveEjected { backend, .. } => Some(backend.as_str()),
            _ => None,
        })
        .collect()
}

fn held(d: &Decision) -> Vec<(&str, PassiveHold)> {
    d.transitions
        .iter()
        .filter_map(|t| match t {
            Transition::PassiveHeld { backend, why, .. } => Some((backend.as_str(), *why)),
            _ => None,
        })
        .collect()
}

/// A rig whose backends all passed `rise` probes: the table is managed.
fn managed(extra: &str, backends: &[&str], up: &[&str]) -> Rig {
    let mut r = rig(extra, backends);
    let all: Vec<(&str, bool)> = up.iter().map(|a| (*a, true)).collect();
    r.rounds(2, &all);
    assert!(r.state.is_managed());
    r
}

#[test]
fn the_threshold_of_refused_connects_ejects_the_primary_at_once() {
    let mut r = managed("", &PRIMARY_AND_BACKUP, &[A, B]);
    assert_eq!(r.table_addrs(), vec![addr(A)]);
    let d = r.refused_run(A, 2, 3);
    assert_eq!(d.table, None, "two of three change nothing");
    assert!(passive_ejections(&d).is_empty());
    let d = r.refused_connect(A, 3, true);
    assert_eq!(passive_ejections(&d), ["a"]);
    assert_eq!(
        r.table_addrs(),
        vec![addr(B)],
        "traffic moved to the backup"
    );
    assert!(moves(&d).iter().any(|t| matches!(
        t,
        Transition::FailedOver {
            from: Some(0),
            to: 1,
            ..
        }
    )));
    assert!(
        d.clear_suspect.is_empty(),
        "the daemon confirms the kernel's mark: nothing to lift"
    );
    let status = r.state.status(r.now);
    let a = &status.backends[0];
    assert_eq!(a.state, "ejected");
    assert_eq!(a.passive.consecutive, 3);
    assert!(a.passive.ejected);
    assert_eq!(a.passive.ejections, 1);
}

#[test]
fn an_established_connect_between_failures_restarts_the_count() {
    let mut r = managed("", &PRIMARY_AND_BACKUP, &[A, B]);
    // The kernel counts in a row and resets on an established connect; the daemon takes its
    // count as given: 1, 2, (success), 1, 2 never reaches 3.
    let mut d = r.refused_run(A, 2, 3);
    let again = r.refused_run(A, 2, 3);
    d.transitions.extend(again.transitions);
    assert!(passive_ejections(&d).is_empty());
    assert_eq!(r.table_addrs(), vec![addr(A)]);
}

#[test]
fn one_refused_connect_ejects_at_a_threshold_of_one() {
    let mut r = managed(
        "    passive: { consecutive_failures: 1 }\n",
        &PRIMARY_AND_BACKUP,
        &[A, B],
    );
    let d = r.refused_connect(A, 1, true);
    assert_eq!(passive_ejections(&d), ["a"]);
    assert_eq!(r.table_addrs(), vec![addr(B)]);
}

#[test]
fn off_never_ejects_and_lifts_any_mark() {
    let mut r = managed(
        "    passive: { consecutive_failures: 0 }\n",
        &PRIMARY_AND_BACKUP,
        &[A, B],
    );
    assert_eq!(r.state.table().unwrap().passive_threshold, 0);
    let d = r.refused_connect(A, 10, true);
    assert!(passive_ejections(&d).is_empty());
    assert_eq!(d.clear_suspect, vec![r.id(A)]);
    assert_eq!(r.table_addrs(), vec![addr(A)]);
}

#[test]
fn a_failure_for_an_id_the_service_does_not_have_lifts_its_mark_only() {
    let mut r = managed("", &PRIMARY_AND_BACKUP, &[A, B]);
    let d = r.feed(Input::ConnectFailed {
        backend_id: 999,
        kind: ConnectFailureKind::SynTimeout,
        consecutive: 5,
        suspect: true,
    });
    assert_eq!(d.clear_suspect, vec![999]);
    assert_eq!(d.table, None);
    assert!(d.transitions.is_empty());
}

#[test]
fn passive_ejections_stop_at_max_ejected_percent_but_always_allow_one() {
    let four = [
        "{ name: a, address: '127.0.0.1:7001' }",
        "{ name: b, address: '127.0.0.1:7002' }",
        "{ name: c, address: '127.0.0.1:7003' }",
        "{ name: d, address: '127.0.0.1:7004' }",
    ];
    // 50% of four: two may go, the third is held and its mark lifted (it stays in the table).
    let mut r = managed("", &four, &[A, B, C, D]);
    assert_eq!(passive_ejections(&r.refused_run(A, 3, 3)), ["a"]);
    assert_eq!(passive_ejections(&r.refused_run(B, 3, 3)), ["b"]);
    let d = r.refused_run(C, 3, 3);
    assert!(passive_ejections(&d).is_empty());
    assert_eq!(held(&d), [("c", PassiveHold::MaxEjected)]);
    assert_eq!(d.clear_suspect, vec![r.id(C)]);
    assert_eq!(r.table_addrs(), vec![addr(C), addr(D)]);

    // 0%: still one (a lone primary must be able to fail over), never two.
    let mut r = managed(
        "    breaker: { max_ejected_percent: 0 }\n",
        &four[..2],
        &[A, B],
    );
    assert_eq!(passive_ejections(&r.refused_run(A, 3, 3)), ["a"]);
    let d = r.refused_run(B, 3, 3);
    assert_eq!(held(&d), [("b", PassiveHold::MaxEjected)]);
    assert_eq!(r.table_addrs(), vec![addr(B)]);
}

#[test]
fn a_backend_already_out_is_held_and_its_mark_waits_for_its_return() {
    let mut r = managed(
        "    breaker: { open_for: 1s }\n",
        &PRIMARY_AND_BACKUP,
        &[A, B],
    );
    r.rounds(3, &[(A, false), (B, true)]);
    assert_eq!(r.table_addrs(), vec![addr(B)]);
    let d = r.refused_connect(A, 3, true);
    assert_eq!(held(&d), [("a", PassiveHold::AlreadyOut)]);
    assert!(
        d.clear_suspect.is_empty(),
        "not in the table: nothing diverts from it"
    );
    // Back after rise probes: the mark goes with the table that names it again.
    let d = r.rounds(2, &[(A, true), (B, true)]);
    assert_eq!(r.table_addrs(), vec![addr(A)]);
    assert_eq!(d.clear_suspect, vec![r.id(A)]);
}

#[test]
fn a_lone_backend_ejected_follows_on_all_down() {
    let one = ["{ name: a, address: '127.0.0.1:7001' }"];
    let mut r = managed("", &one, &[A]);
    let d = r.refused_run(A, 3, 3);
    assert_eq!(passive_ejections(&d), ["a"]);
    assert!(
        r.state.table().unwrap().slots.is_empty(),
        "reject: refusing"
    );
    assert!(moves(&d)
        .iter()
        .any(|t| matches!(t, Transition::AllDown { .. })));

    let mut r = managed("    on_all_down: panic\n", &one, &[A]);
    let d = r.refused_run(A, 3, 3);
    assert!(moves(&d)
        .iter()
        .any(|t| matches!(t, Transition::Panic { priority: 0, .. })));
    assert_eq!(
        r.table_addrs(),
        vec![addr(A)],
        "panic uses it whatever its state"
    );
    assert_eq!(
        d.clear_suspect,
        vec![r.id(A)],
        "in the table again: the kernel must not divert from the only backend"
    );
}

#[test]
fn a_passively_ejected_backend_returns_after_rise_probes() {
    let mut r = managed(
        "    breaker: { open_for: 1s, max_open_for: 4s }\n",
        &PRIMARY_AND_BACKUP,
        &[A, B],
    );
    r.refused_run(A, 3, 3);
    // As if `fall` probes had failed: no open period to wait out, only `rise` passes.
    assert_eq!(r.state.next_deadline(), None, "no breaker period runs");
    assert_eq!(r.table_addrs(), vec![addr(B)]);
    let d = r.round(&[(A, true), (B, true)]);
    assert_eq!(r.table_addrs(), vec![addr(B)], "one pass of rise 2");
    assert_eq!(d.table, None);
    assert!(
        r.state.status(r.now).backends[0].passive.ejected,
        "on trial, still out for what the kernel saw"
    );
    let d = r.round(&[(A, true), (B, true)]);
    assert_eq!(r.table_addrs(), vec![addr(A)]);
    assert!(d.transitions.iter().any(|t| matches!(
        t,
        Transition::Health {
            to: HealthStatus::Healthy,
            ..
        }
    )));
    assert_eq!(
        d.clear_suspect,
        vec![r.id(A)],
        "its mark goes as it returns"
    );
    assert!(!r.state.status(r.now).backends[0].passive.ejected);
}

#[test]
fn a_first_passive_ejection_waits_for_rise_and_repeats_grow_the_open_period() {
    let mut r = managed(
        "    breaker: { open_for: 1s, max_open_for: 3s }\n",
        &PRIMARY_AND_BACKUP,
        &[A, B],
    );
    let mut periods = Vec::new();
    for _ in 0..4 {
        let d = r.refused_run(A, 3, 3);
        periods.extend(d.transitions.iter().filter_map(|t| match t {
            Transition::PassiveEjected { open_for, .. } => Some(*open_for),
            _ => None,
        }));
        assert_eq!(r.table_addrs(), vec![addr(B)], "out at once");
        if let Some(end) = r.state.next_deadline() {
            r.now = end;
            r.feed(Input::Tick);
        }
        r.rounds(2, &[(A, true), (B, true)]);
        assert_eq!(r.table_addrs(), vec![addr(A)], "back after rise passes");
    }
    assert_eq!(
        periods,
        [0, 1, 2, 3].map(Duration::from_secs),
        "the first: until rise passes; repeats doubling, capped at max_open_for"
    );
}

#[test]
fn every_table_carries_the_threshold_and_the_next_prioritys_live_backends() {
    let three = [
        "{ name: a, address: '127.0.0.1:7001', priority: 0 }",
        "{ name: b, address: '127.0.0.1:7002', priority: 1 }",
        "{ name: c, address: '127.0.0.1:7003', priority: 1 }",
        "{ name: d, address: '127.0.0.1:7004', priority: 2 }",
    ];
    let mut r = managed(
        "    passive: { consecutive_failures: 5 }\n",
        &three,
        &[A, B, C, D],
    );
    assert_eq!(r.state.table().unwrap().passive_threshold, 5);
    assert_eq!(r.fallback_addrs(), vec![addr(B), addr(C)]);
    // One of the next group down: the other is the fallback.
    r.rounds(3, &[(A, true), (B, false), (C, true), (D, true)]);
    assert_eq!(r.fallback_addrs(), vec![addr(C)]);
    // The primary out: priority 1 takes traffic, priority 2 is the fallback.
    r.refused_run(A, 5, 5);
    assert_eq!(r.table_addrs(), vec![addr(C)]);
    assert_eq!(r.fallback_addrs(), vec![addr(D)]);
    // Nothing after the last priority.
    r.rounds(3, &[(A, false), (B, false), (C, false), (D, true)]);
    assert_eq!(r.table_addrs(), vec![addr(D)]);
    assert!(r.fallback_addrs().is_empty());
}

#[test]
fn on_down_aborts_the_sockets_of_a_backend_that_leaves_the_table_down() {
    let mut r = managed(
        "    terminate: { on_down: true }\n",
        &PRIMARY_AND_BACKUP,
        &[A, B],
    );
    let d = r.rounds(3, &[(A, false), (B, true)]);
    assert_eq!(Rig::terminations(&d), [("a".into(), TerminateReason::Down)]);
    assert_eq!(d.terminate[0].id, r.id(A));

    // Off by default: nothing is aborted.
    let mut r = managed("", &PRIMARY_AND_BACKUP, &[A, B]);
    let d = r.rounds(3, &[(A, false), (B, true)]);
    assert!(d.terminate.is_empty());
    let d = r.refused_run(B, 3, 3);
    assert!(d.terminate.is_empty());
}

#[test]
fn on_down_covers_passive_ejections_and_demotions() {
    let mut r = managed(
        "    terminate: { on_down: true }\n",
        &PRIMARY_AND_BACKUP,
        &[A, B],
    );
    let d = r.refused_run(A, 3, 3);
    assert_eq!(Rig::terminations(&d), [("a".into(), TerminateReason::Down)]);

    let mut r = managed(
        "    terminate: { on_down: true }\n",
        &PRIMARY_AND_BACKUP,
        &[A, B],
    );
    let d = r.probe_with(A, demoted(addr(A)));
    assert_eq!(
        Rig::terminations(&d),
        [("a".into(), TerminateReason::Demoted)]
    );
}

#[test]
fn on_failback_aborts_the_sockets_of_the_priority_traffic_left() {
    let mut r = managed(
        "    terminate: { on_failback: true }\n",
        &PRIMARY_AND_BACKUP,
        &[A, B],
    );
    let d = r.rounds(3, &[(A, false), (B, true)]);
    assert!(d.terminate.is_empty(), "on_down is off");
    let d = r.rounds(2, &[(A, true), (B, true)]);
    assert_eq!(moves(&d), vec![&Transition::FailedBack { from: 1, to: 0 }]);
    assert_eq!(
        Rig::terminations(&d),
        [("b".into(), TerminateReason::Failback)]
    );
}

#[test]
fn a_plain_drain_never_aborts_and_drain_terminate_aborts_at_once() {
    let mut r = managed(
        "    terminate: { on_down: true, on_failback: true }\n",
        &PRIMARY_AND_BACKUP,
        &[A, B],
    );
    let d = r.feed(Input::Drain {
        backend: "a".into(),
        drain: drain("alice"),
        force: false,
        terminate: false,
    });
    assert_eq!(r.table_addrs(), vec![addr(B)]);
    assert!(d.terminate.is_empty(), "a drain lets connections finish");
    assert_eq!(
        r.state.next_deadline(),
        None,
        "no drain_after: nothing later either"
    );
    r.feed(Input::Undrain {
        backend: "a".into(),
    });
    let d = r.feed(Input::Drain {
        backend: "a".into(),
        drain: drain("alice"),
        force: false,
        terminate: true,
    });
    assert_eq!(
        Rig::terminations(&d),
        [("a".into(), TerminateReason::Drain)]
    );
}

#[test]
fn drain_after_aborts_what_is_left_once_the_grace_is_over() {
    let mut r = managed(
        "    terminate: { drain_after: 30s }\n",
        &PRIMARY_AND_BACKUP,
        &[A, B],
    );
    let drained_at = r.now;
    let d = r.feed(Input::Drain {
        backend: "a".into(),
        drain: drain("alice"),
        force: false,
        terminate: false,
    });
    assert!(d.terminate.is_empty());
    let due = drained_at + Duration::from_secs(30);
    assert_eq!(r.state.next_deadline(), Some(due));
    r.now = due - Duration::from_millis(1);
    assert!(r.feed(Input::Tick).terminate.is_empty());
    r.now = due;
    let d = r.feed(Input::Tick);
    assert_eq!(
        Rig::terminations(&d),
        [("a".into(), TerminateReason::DrainAfter)]
    );
    assert_eq!(r.state.next_deadline(), None, "once");
    assert!(r.feed(Input::Tick).terminate.is_empty());

    // An undrain before the grace is over cancels it.
    let mut r = managed(
        "    terminate: { drain_after: 30s }\n",
        &PRIMARY_AND_BACKUP,
        &[A, B],
    );
    r.feed(Input::Drain {
        backend: "a".into(),
        drain: drain("alice"),
        force: false,
        terminate: false,
    });
    r.feed(Input::Undrain {
        backend: "a".into(),
    });
    assert_eq!(r.state.next_deadline(), None);
}

#[test]
fn a_backend_a_reload_removed_from_the_table_is_aborted_as_removed() {
    let old = managed("", &PRIMARY_AND_BACKUP[..1], &[A]);
    let table = old.state.table().cloned().unwrap();
    let a_id = old.id(A);
    // The reload's config has only b; it adopts the table that sent to a.
    let mut r = rig_with(
        "    terminate: { on_down: true }\n",
        &["{ name: b, address: '127.0.0.1:7002' }"],
        Some(Arc::new(table)),
    );
    let d = r.rounds(2, &[(B, true)]);
    assert_eq!(r.table_addrs(), vec![addr(B)]);
    assert_eq!(d.terminate.len(), 1);
    assert_eq!(d.terminate[0].id, a_id);
    assert_eq!(d.terminate[0].reason, TerminateReason::Removed);
}

#[test]
fn an_address_dns_no_longer_gives_is_aborted_as_removed_under_its_name() {
    let mut r = rig(
        "    terminate: { on_down: true }\n",
        &[
            "{ name: h, address: 'db.internal:7001' }",
            "{ name: b, address: '127.0.0.1:7002', priority: 1 }",
        ],
    );
    r.feed(Input::Addrs {
        config_index: 0,
        addrs: vec![addr(A)],
    });
    r.rounds(2, &[(A, true), (B, true)]);
    assert_eq!(r.table_addrs(), vec![addr(A)]);
    let id = r.id(A);
    let d = r.feed(Input::Addrs {
        config_index: 0,
        addrs: Vec::new(),
    });
    assert_eq!(r.table_addrs(), vec![addr(B)]);
    assert_eq!(
        Rig::terminations(&d),
        [(format!("h@{A}"), TerminateReason::Removed)]
    );
    assert_eq!(d.terminate[0].id, id);
}

#[test]
fn a_restart_lifts_marks_it_did_not_see_on_the_ids_it_adopts() {
    let old = managed("", &PRIMARY_AND_BACKUP, &[A, B]);
    let table = old.state.table().cloned().unwrap();
    let (a_id, b_id) = (old.id(A), old.id(B));
    // The successor (a restart, or a reload's new task) adopts the table and sees its
    // backends join: a mark set while nobody watched is lifted, for the slot and the
    // fallback backend alike.
    let mut state = ServiceState::new(
        old.state.config().clone(),
        table.vip_id,
        Some(Arc::new(table)),
        Default::default(),
        old.now,
    );
    let mut ids = IdAllocator::default();
    let mut lifted = Vec::new();
    for (i, a) in [A, B].into_iter().enumerate() {
        let d = state
            .handle(
                Input::Addrs {
                    config_index: i,
                    addrs: vec![addr(a)],
                },
                old.now,
                &mut ids,
            )
            .unwrap();
        lifted.extend(d.clear_suspect);
    }
    assert_eq!(lifted, vec![a_id, b_id]);
    assert!(state.backends().all(|b| !b.passive().marked));
}

#[test]
fn a_udp_vip_tells_the_kernel_no_threshold() {
    let r = managed("    protocol: udp\n", &PRIMARY_AND_BACKUP, &[A, B]);
    assert_eq!(r.state.table().unwrap().passive_threshold, 0);
}

#[test]
fn a_drain_restored_at_start_gets_its_drain_after_grace_from_then() {
    let r = rig("    terminate: { drain_after: 30s }\n", &PRIMARY_AND_BACKUP);
    let config = r.state.config().clone();
    let start = r.now;
    let mut drains = std::collections::BTreeMap::new();
    drains.insert("a".to_string(), drain("alice"));
    let mut state = ServiceState::new(config, 1, None, drains, start);
    let mut ids = IdAllocator::default();
    state
        .handle(
            Input::Addrs {
                config_index: 0,
                addrs: vec![addr(A)],
            },
            start,
            &mut ids,
        )
        .unwrap();
    assert!(state.backends().next().unwrap().drain.is_some());
    let due = start + Duration::from_secs(30);
    assert!(state.next_deadline().is_some_and(|d| d <= due));
    let d = state.handle(Input::Tick, due, &mut ids).unwrap();
    assert_eq!(d.terminate.len(), 1);
    assert_eq!(d.terminate[0].reason, TerminateReason::DrainAfter);
}
