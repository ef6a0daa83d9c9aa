//! One service's decision core: inputs in, the VIP's table and typed transitions out.
//!
//! Synchronous and deterministic: no channels, no clock reads (every input comes with
//! `now`), no metrics, no logging. The daemon's shell feeds it and acts on what it returns;
//! tests feed it a script.

use std::{collections::BTreeMap, net::SocketAddr, sync::Arc};

use tokio::time::Instant;

use super::{
    backend::{after, first_verdict_wait, verdict_stretch, Backend, BackendKey, Drain, LastProbe},
    input::{CounterIds, Input, Refused},
    sorted::SortedMap,
    transition::{Decision, Evidence, TerminateReason, Termination, Transition},
};
use crate::{
    breaker::{may_eject, BreakerParams},
    config::{Failback, OnAllDown, ServiceConfig},
    datapath::{TableBackend, Vip, VipTable},
    health::ProbeResult,
    select::{select, AllDown, Candidate, FailbackMode, Selection},
};

/// The state of one service and the rules that turn inputs into its VIP's table.
#[derive(Debug)]
pub struct ServiceState {
    /// Shared with the daemon's handle on the service: one copy per service, not one per
    /// holder.
    pub(super) config: Arc<ServiceConfig>,
    pub(super) vip: Vip,
    pub(super) vip_id: u32,
    /// The breaker's parameters, one allocation shared by every backend's breaker.
    pub(super) breaker: Arc<BreakerParams>,
    /// One sorted vector, not a tree: see [`SortedMap`].
    pub(super) backends: SortedMap<Backend>,
    /// Ids an adopted table gave to addresses, reused so kernel counters continue. A slice
    /// searched in order (a table's few backends), not a hash map: 16 bytes in every
    /// service, not 48.
    pub(super) adopted_ids: Box<[(SocketAddr, u32)]>,
    /// Drains by backend name, applied as backends appear (a hostname's addresses come late).
    pub(super) drains: BTreeMap<String, Drain>,
    /// The priority traffic goes to, as last decided (or as the adopted table shows).
    pub(super) active: Option<u8>,
    /// Whether the last decision was panic mode.
    pub(super) panic: bool,
    /// The table last decided, or the one adopted from the kernel before that.
    /// Shared with the writer, which keeps what it wrote: one copy per VIP, not two.
    pub(super) table: Option<Arc<VipTable>>,
    /// Every backend had its first verdict: the core manages the table.
    pub(super) managed: bool,
    /// An operator asked for a failback: the next decision ignores `failback: manual` once.
    failback_requested: bool,
    /// After this, a service none of whose backends has an address yet (unresolved
    /// hostnames) stops holding up readiness.
    resolve_due: Instant,
    /// `role: primary`: never spread over two backends that both claim primary.
    pub(super) one_primary: bool,
    /// While more than one backend claims primary: them, and the one kept. Boxed: rare, and
    /// 72 bytes in every service otherwise.
    pub(super) split: Option<Box<(Vec<BackendKey>, Option<BackendKey>)>>,
    /// How late probes start, as last fed ([`Input::ProbeLag`]): stretches first verdicts.
    probe_lag: std::time::Duration,
    /// Suspect marks to lift and sockets to abort, gathered while one input is handled and
    /// handed out with its [`Decision`].
    pub(super) effects: Effects,
}

/// What one input asks of the datapath besides a table.
#[derive(Debug, Default)]
pub(super) struct Effects {
    pub clear_suspect: Vec<u32>,
    pub terminate: Vec<Termination>,
    /// Backends removed during this input (DNS), by id: their names, for a termination
    /// asked for once the table without them is decided.
    pub removed: Vec<(u32, String)>,
}

impl Effects {
    /// Asks for `id`'s sockets to be aborted, once per input.
    pub fn terminate(&mut self, backend: &str, id: u32, reason: TerminateReason) {
        if !self.terminate.iter().any(|t| t.id == id) {
            self.terminate.push(Termination {
                backend: backend.to_string(),
                id,
                reason,
            });
        }
    }
}

impl ServiceState {
    /// A service with no backends yet (feed [`Input::Addrs`] for each config entry).
    ///
    /// `adopted` is the table the kernel holds for the VIP (pinned by an earlier run, or the
    /// last table of the service a reload replaced): it is left exactly as it is until every
    /// backend has a first verdict, and it tells where traffic goes now — so a restart or a
    /// reload neither counts a failover that did not happen nor undoes a manual failover.
    pub fn new(
        config: impl Into<Arc<ServiceConfig>>,
        vip_id: u32,
        adopted: Option<Arc<VipTable>>,
        drains: BTreeMap<String, Drain>,
        now: Instant,
    ) -> Self {
        let config = config.into();
        ServiceState {
            breaker: Arc::new(BreakerParams {
                failures: config.breaker.failures,
                open_for: config.breaker.open_for,
                max_open_for: config.breaker.max_open_for,
                rise: config.health.rise,
            }),
            resolve_due: after(now, first_verdict_wait(&config)),
            one_primary: crate::health::Probe::for_config(&config.health).wants_one_primary(),
            split: None,
            probe_lag: std::time::Duration::ZERO,
            vip: config.vip(),
            vip_id,
            backends: SortedMap::new(),
            // The fallback group's too, so a restart rebuilds the very same table.
            adopted_ids: adopted
                .iter()
                .flat_map(|t| t.all_backends().map(|b| (b.addr, b.id)))
                .collect(),
            drains,
            active: None,
            panic: false,
            // The writer's own allocation of it (or the predecessor's): one copy while the
            // decision stays the same, as it does for good after most restarts.
            table: adopted,
            managed: false,
            failback_requested: false,
            effects: Effects::default(),
            config,
        }
    }

    /// The service's config.
    pub fn config(&self) -> &ServiceConfig {
        &self.config
    }

    /// The VIP's counter id.
    pub fn vip_id(&self) -> u32 {
        self.vip_id
    }

    /// Whether every backend had its first verdict and the core manages the table.
    pub fn is_managed(&self) -> bool {
        self.managed
    }

    /// Whether the VIP serves what its verdicts allow (what readiness means): the table is
    /// managed, or no backend has an address yet and it is past the time a first verdict
    /// was due — then an adopted table is left serving as it was, and the unresolved
    /// backends are reported as such rather than holding the whole daemon unready.
    pub fn is_settled(&self, now: Instant) -> bool {
        self.managed || (self.backends.is_empty() && now >= self.resolve_due)
    }

    /// Names and `host:port` of the config entries with no address yet.
    pub fn unresolved(&self) -> Vec<(String, String)> {
        self.config
            .backends
            .iter()
            .enumerate()
            .filter(|(i, _)| !self.backends.keys().any(|k| k.config_index == *i))
            .map(|(_, b)| (b.name.to_string(), b.address.to_string()))
            .collect()
    }

    /// The priority new connections go to, once the table is managed.
    pub fn active_priority(&self) -> Option<u8> {
        self.active.filter(|_| self.managed)
    }

    /// Whether panic mode is in force.
    pub fn is_panicking(&self) -> bool {
        self.managed && self.panic
    }

    /// The counter id an adopted table gave `addr`, if it named it.
    pub(super) fn adopted_id(&self, addr: SocketAddr) -> Option<u32> {
        self.adopted_ids
            .iter()
            .find(|(a, _)| *a == addr)
            .map(|&(_, id)| id)
    }

    /// Every backend that claims primary while more than one does, and the one kept.
    pub fn split_brain(&self) -> Option<(Vec<&str>, Option<&str>)> {
        let (claimants, kept) = self.split.as_deref()?;
        let name = |k: &BackendKey| self.backends.get(k).map(|b| &*b.name);
        Some((
            claimants.iter().filter_map(name).collect(),
            kept.as_ref().and_then(name),
        ))
    }

    /// The table last decided or adopted.
    pub fn table(&self) -> Option<&VipTable> {
        self.table.as_deref()
    }

    /// The table last decided or adopted, as the allocation the writer shares: for the
    /// service that takes over the VIP (a reload) to adopt without a copy.
    pub fn shared_table(&self) -> Option<Arc<VipTable>> {
        self.table.clone()
    }

    /// The backends, in key order.
    pub fn backends(&self) -> impl Iterator<Item = &Backend> {
        self.backends.values()
    }

    /// How much later than [`Backend::verdict_due`] first verdicts are due, given the probe
    /// lag last fed.
    pub fn verdict_stretch(&self) -> std::time::Duration {
        verdict_stretch(&self.config, self.probe_lag)
    }

    /// When the core next needs a [`Input::Tick`]: a breaker's open period ends, a drain's
    /// `drain_after` grace is over, or (before the table is managed) a first verdict becomes
    /// overdue.
    pub fn next_deadline(&self) -> Option<Instant> {
        let breakers = self.backends.values().filter_map(|b| {
            let drain = b.drain_deadline.filter(|_| b.drain.is_some());
            match (b.breaker.next_deadline(), drain) {
                (Some(a), Some(d)) => Some(a.min(d)),
                (a, d) => a.or(d),
            }
        });
        let verdicts = self
            .backends
            .values()
            .filter(|_| !self.managed)
            .map(|b| after(b.verdict_due, self.verdict_stretch()));
        // Only a service with no address at all waits for `resolve_due`.
        let resolve = (!self.managed && self.backends.is_empty()).then_some(self.resolve_due);
        breakers.chain(verdicts).chain(resolve).min()
    }

    /// The threshold the kernel marks a backend suspect at: `passive.consecutive_failures`
    /// for a TCP VIP; 0 (off) for UDP, which has no connect for the kernel to watch.
    pub fn passive_threshold(&self) -> u32 {
        match self.vip.protocol {
            crate::datapath::Protocol::Tcp => self.config.passive.consecutive_failures,
            crate::datapath::Protocol::Udp => 0,
        }
    }

    /// Feeds one input observed at `now`. Operator inputs can be refused, and then change
    /// nothing; every other input is always taken.
    pub fn handle(
        &mut self,
        input: Input,
        now: Instant,
        ids: &mut dyn CounterIds,
    ) -> Result<Decision, Refused> {
        let mut out = Vec::new();
        let changed = match input {
            Input::Probe {
                key,
                started,
                result,
            } => self.probe(key, started, result, now, &mut out),
            Input::Addrs {
                config_index,
                addrs,
            } => {
                self.set_addrs(config_index, &addrs, now, ids, &mut out);
                true
            }
            Input::Drain {
                backend,
                drain,
                force,
                terminate,
            } => {
                self.drain(&backend, drain, force, terminate, now, &mut out)?;
                true
            }
            Input::Undrain { backend } => {
                self.undrain(&backend, now, &mut out)?;
                true
            }
            Input::Failback => {
                out.push(Transition::FailbackRequested { from: self.active });
                self.failback_requested = true;
                true
            }
            Input::Tick => {
                self.tick(now, &mut out);
                true
            }
            Input::ConnectFailed {
                backend_id,
                kind,
                consecutive,
                suspect,
            } => self.connect_failed(backend_id, kind, consecutive, suspect, now, &mut out),
            Input::ProbeLag { lag } => {
                self.probe_lag = lag;
                false
            }
        };
        self.retire_replaced(now, ids, &mut out);
        // Most probe results change nothing; until the table is managed, time alone (an
        // overdue first verdict) can change the outcome.
        let table = if changed || !self.managed {
            self.decide(now, &mut out)
        } else {
            None
        };
        self.lift_marks_in_table();
        let effects = std::mem::take(&mut self.effects);
        Ok(Decision {
            table,
            transitions: out,
            clear_suspect: effects.clear_suspect,
            terminate: effects.terminate,
        })
    }

    /// Whether draining `backend` would be refused, without draining it (the shell asks
    /// before it persists the drain).
    pub fn check_drain(&self, backend: &str, force: bool) -> Result<(), Refused> {
        self.drainable(backend, force).map(drop)
    }

    /// Whether undraining `backend` would be refused.
    pub fn check_undrain(&self, backend: &str) -> Result<(), Refused> {
        self.undrainable(backend).map(drop)
    }

    /// The key of `backend` if draining it is allowed.
    fn drainable(&self, backend: &str, force: bool) -> Result<BackendKey, Refused> {
        let key = self.key_of(backend)?;
        if !force && self.drain_leaves_nothing_live(&key) {
            return Err(Refused::LastLive {
                service: self.config.name.clone(),
                backend: backend.to_string(),
            });
        }
        Ok(key)
    }

    /// The key of `backend` if undraining it is allowed.
    fn undrainable(&self, backend: &str) -> Result<BackendKey, Refused> {
        let key = self.key_of(backend)?;
        if self.backends[&key].drain.is_none() {
            return Err(Refused::NotDrained {
                service: self.config.name.clone(),
                backend: backend.to_string(),
            });
        }
        Ok(key)
    }

    fn key_of(&self, backend: &str) -> Result<BackendKey, Refused> {
        self.backends
            .iter()
            .find(|(_, b)| *b.name == *backend)
            .map(|(k, _)| *k)
            .ok_or_else(|| Refused::UnknownBackend {
                service: self.config.name.clone(),
                backend: backend.to_string(),
                known: self.backends.values().map(|b| b.name.to_string()).collect(),
            })
    }

    /// Records a probe result; returns whether it changed anything selection looks at.
    fn probe(
        &mut self,
        key: BackendKey,
        started: Instant,
        result: Arc<ProbeResult>,
        now: Instant,
        out: &mut Vec<Transition>,
    ) -> bool {
        let Some(priority) = self.backends.get(&key).map(|b| b.priority) else {
            return false; // A result for an address removed meanwhile.
        };
        let (group, ejected) = self
            .backends
            .values()
            .filter(|b| b.priority == priority)
            .fold((0, 0), |(n, e), b| {
                (n + 1, e + usize::from(b.breaker.is_open()))
            });
        let may = may_eject(group, ejected, self.config.breaker.max_ejected_percent);
        let b = self.backends.get_mut(&key).expect("checked above");
        let passed = result.is_ok();
        b.last_probe = Some(LastProbe {
            latency: match &*result {
                Ok(ok) => ok.latency,
                Err(_) => now.saturating_duration_since(started),
            },
            result: Arc::clone(&result),
        });
        let mut changed = false;
        // A definite "I am not what you want" (a demoted primary) is acted on at once: a
        // demotion is not a flake to wait `fall` probes for.
        let verdict = match &*result {
            Err(e) if e.is_wrong_role() => b.health.fail_now(),
            _ => b.health.observe(passed),
        };
        if let Some(to) = verdict {
            changed = true;
            b.since = now;
            if to == crate::health::HealthStatus::Healthy {
                // Back by its probes: a passive strike (if that is what took it out) is over.
                if let Some(passive) = b.passive_if_any() {
                    passive.ejected = false;
                }
            }
            out.push(Transition::Health {
                backend: b.name.to_string(),
                addr: key.addr,
                to,
                evidence: Evidence(Arc::clone(&result)),
            });
        }
        // A server answering in the wrong role works: it is a standby, not a flake. Feeding
        // that to the breaker would eject a replica that waits to be promoted, and hold the
        // new primary out for `open_for` after a failover.
        let breaker_event = match &*result {
            Err(e) if e.is_wrong_role() => None,
            _ => b.breaker.observe(passed, now, may),
        };
        if let Some(event) = breaker_event {
            changed = true;
            b.since = now;
            // Readmitted, or re-opened by a failed trial probe: either way the breaker no
            // longer holds it out on kernel evidence alone. (Half-opening changes nothing:
            // it is still out for what the kernel saw.)
            if !matches!(event, crate::breaker::BreakerEvent::HalfOpened) {
                if let Some(passive) = b.passive_if_any() {
                    passive.ejected = false;
                }
            }
            out.extend(breaker_transition(&b.name, event, Some(Evidence(result))));
        }
        changed
    }

    fn tick(&mut self, now: Instant, out: &mut Vec<Transition>) {
        for b in self.backends.values_mut() {
            if let Some(event) = b.breaker.tick(now) {
                b.since = now;
                out.extend(breaker_transition(&b.name, event, None));
            }
            if b.drain.is_some() && b.drain_deadline.is_some_and(|d| now >= d) {
                b.drain_deadline = None;
                self.effects
                    .terminate(&b.name, b.id, TerminateReason::DrainAfter);
            }
        }
    }

    fn drain(
        &mut self,
        backend: &str,
        drain: Drain,
        force: bool,
        terminate: bool,
        now: Instant,
        out: &mut Vec<Transition>,
    ) -> Result<(), Refused> {
        let key = self.drainable(backend, force)?;
        self.drains.insert(backend.to_string(), drain.clone());
        let drain_after = self.config.terminate.drain_after;
        let b = self.backends.get_mut(&key).expect("found by key_of");
        b.set_drain(drain.clone(), drain_after, now);
        b.since = now;
        if terminate {
            // Aborted at once, and not again when the grace is over.
            b.drain_deadline = None;
            self.effects
                .terminate(&b.name, b.id, TerminateReason::Drain);
        }
        out.push(Transition::Drained {
            backend: backend.to_string(),
            drain,
        });
        Ok(())
    }

    fn undrain(
        &mut self,
        backend: &str,
        now: Instant,
        out: &mut Vec<Transition>,
    ) -> Result<(), Refused> {
        let key = self.undrainable(backend)?;
        self.drains.remove(backend);
        let b = self.backends.get_mut(&key).expect("found by key_of");
        b.drain = None;
        b.drain_deadline = None;
        b.since = now;
        out.push(Transition::Undrained {
            backend: backend.to_string(),
        });
        Ok(())
    }

    /// The selection candidates, in `self.backends` order. `also_drained` counts as drained,
    /// to ask what a drain would do before doing it. A backend held out by a split brain is
    /// not live.
    fn candidates(&self, also_drained: Option<&BackendKey>) -> Vec<Candidate> {
        let held_out = |key: &BackendKey| {
            self.split.as_deref().is_some_and(|(claimants, kept)| {
                claimants.contains(key) && kept.as_ref() != Some(key)
            })
        };
        self.backends
            .iter()
            .map(|(key, b)| Candidate {
                priority: b.priority,
                weight: b.weight,
                live: b.is_live() && !held_out(key),
                drained: b.drain.is_some() || also_drained == Some(key),
            })
            .collect()
    }

    /// Looks for more than one live backend answering "primary" (`role: primary`) and
    /// decides which keeps the connections: the one the table sends to now, never a newcomer.
    fn watch_for_split_brain(&mut self, out: &mut Vec<Transition>) {
        if !self.one_primary {
            return;
        }
        let claimants: Vec<BackendKey> = self
            .backends
            .iter()
            .filter(|(_, b)| {
                b.is_live()
                    && b.last_probe.as_ref().is_some_and(|p| {
                        crate::health::role_seen(&p.result) == Some(crate::health::Role::Primary)
                    })
            })
            .map(|(k, _)| *k)
            .collect();
        if claimants.len() < 2 {
            if self.split.take().is_some() {
                out.push(Transition::SplitBrainEnded);
            }
            return;
        }
        let in_table = |k: &BackendKey| {
            self.table
                .as_ref()
                .is_some_and(|t| t.backends.iter().any(|b| b.addr == k.addr))
        };
        // Keep whoever keeps the connections already; else the one the table sends to.
        let kept = match self.split.as_deref() {
            Some((_, Some(kept))) if claimants.contains(kept) => Some(*kept),
            _ => claimants.iter().find(|k| in_table(k)).copied(),
        };
        let changed = self
            .split
            .as_deref()
            .is_none_or(|(was, was_kept)| *was != claimants || *was_kept != kept);
        if changed {
            let name = |k: &BackendKey| self.backends[k].name.to_string();
            out.push(Transition::SplitBrain {
                primaries: claimants.iter().map(name).collect(),
                kept: kept.as_ref().map(name),
            });
        }
        self.split = Some(Box::new((claimants, kept)));
    }

    /// What traffic goes to, given `candidates`, the service's policies and where traffic
    /// goes now.
    fn select(&self, candidates: &[Candidate]) -> Selection {
        let all_down = match self.config.on_all_down {
            OnAllDown::Reject => AllDown::Reject,
            OnAllDown::Panic => AllDown::Panic,
        };
        let failback = match self.config.failback {
            Failback::Auto => FailbackMode::Auto,
            Failback::Manual => FailbackMode::Manual,
        };
        let current = if self.failback_requested {
            None
        } else {
            self.active
        };
        select(candidates, all_down, failback, current)
    }

    /// Whether draining `key` would leave the VIP with no live backend while it has one now
    /// (the standby of another priority taking over counts as live: that is what a drain of a
    /// primary is for).
    fn drain_leaves_nothing_live(&self, key: &BackendKey) -> bool {
        let serves_live = |s: &Selection| matches!(s, Selection::Group { .. });
        serves_live(&self.select(&self.candidates(None)))
            && !serves_live(&self.select(&self.candidates(Some(key))))
    }

    /// The priority of the backends the adopted table sends to (`None` when it refuses or
    /// names none of this service's addresses).
    fn adopted_priority(&self) -> Option<u8> {
        let table = self.table.as_ref()?;
        self.backends
            .values()
            .filter(|b| table.backends.iter().any(|t| t.addr == b.key.addr))
            .map(|b| b.priority)
            .min()
    }

    /// Decides the table the VIP should have; returns it when it differs from the last.
    fn decide(&mut self, now: Instant, out: &mut Vec<Transition>) -> Option<Arc<VipTable>> {
        if !self.managed {
            // A pinned table stays as it is until every backend has a verdict. Afterwards a
            // backend that joins (a new DNS address) is simply not live until it has one. A
            // new VIP none of whose names resolves gets a refusing table once that is overdue.
            let nothing_resolves =
                self.backends.is_empty() && self.table.is_none() && now >= self.resolve_due;
            if !nothing_resolves
                && (self.backends.is_empty() || {
                    let stretch = self.verdict_stretch();
                    !self.backends.values().all(|b| b.has_verdict(now, stretch))
                })
            {
                return None;
            }
            self.managed = true;
            self.active = self.adopted_priority();
            out.push(Transition::Managed);
        }
        self.watch_for_split_brain(out);
        let candidates = self.candidates(None);
        let selection = self.select(&candidates);
        self.report_traffic_move(&selection, out);

        let mut members = selection.members().to_vec();
        if members.len() > failoverd_shared::MAX_BACKENDS {
            out.push(Transition::TableTruncated {
                live: members.len(),
                kept: failoverd_shared::MAX_BACKENDS,
            });
            members.truncate(failoverd_shared::MAX_BACKENDS);
        }
        let backends: Vec<&Backend> = self.backends.values().collect();
        let fallback: Vec<TableBackend> = self
            .fallback_group(&selection, &candidates)
            .into_iter()
            .map(|i| TableBackend {
                addr: backends[i].key.addr,
                id: backends[i].id,
            })
            .collect();
        let table = if members.is_empty() {
            VipTable::refusing(self.vip, self.vip_id)
        } else {
            let entries = members
                .iter()
                .map(|&(i, _)| TableBackend {
                    addr: backends[i].key.addr,
                    id: backends[i].id,
                })
                .collect();
            let weights: Vec<u32> = members.iter().map(|&(_, w)| w).collect();
            match VipTable::weighted(self.vip, self.vip_id, entries, &weights) {
                Ok(t) => t,
                Err(e) => {
                    out.push(Transition::TableUnbuildable { why: e.to_string() });
                    return None;
                }
            }
        }
        .with_fallback(fallback)
        .with_passive_threshold(self.passive_threshold());
        self.ask_terminations(&table, out);
        self.active = selection.priority();
        self.panic = matches!(selection, Selection::Panic { .. });
        self.failback_requested = false;
        if self.table.as_deref() == Some(&table) {
            return None;
        }
        let table = Arc::new(table);
        self.table = Some(Arc::clone(&table));
        Some(table)
    }

    /// Reports where traffic moves, only when it moves.
    fn report_traffic_move(&self, selection: &Selection, out: &mut Vec<Transition>) {
        let from = self.active;
        let was_refusing = self.table.as_ref().is_some_and(|t| t.slots.is_empty());
        let out_of = |priority: Option<u8>| -> Vec<String> {
            self.backends
                .values()
                .filter(|b| Some(b.priority) == priority && !b.is_live())
                .map(|b| format!("{} {}", b.name, b.state_word()))
                .collect()
        };
        match selection {
            Selection::Refuse if !was_refusing || self.table.is_none() => {
                out.push(Transition::AllDown {
                    from,
                    out: out_of(from),
                })
            }
            Selection::Refuse => {}
            Selection::Panic { priority, .. } if !self.panic || from != Some(*priority) => out
                .push(Transition::Panic {
                    from,
                    priority: *priority,
                }),
            Selection::Panic { .. } => {}
            Selection::Group { priority, .. } => {
                let to = *priority;
                match from {
                    _ if self.table.is_none() => {
                        out.push(Transition::TrafficStarts { priority: to })
                    }
                    Some(f) if f == to && !was_refusing => {}
                    Some(f) if to < f && !was_refusing => {
                        out.push(Transition::FailedBack { from: f, to })
                    }
                    _ => out.push(Transition::FailedOver {
                        from: if was_refusing { None } else { from },
                        to,
                        out: out_of(from),
                    }),
                }
            }
        }
    }
}

/// The transition a breaker event is, if it is one worth reporting.
fn breaker_transition(
    backend: &str,
    event: crate::breaker::BreakerEvent,
    evidence: Option<Evidence>,
) -> Option<Transition> {
    use crate::breaker::BreakerEvent;
    let backend = backend.to_string();
    Some(match event {
        BreakerEvent::Opened { for_, ejections } => Transition::Ejected {
            backend,
            open_for: for_,
            ejections,
            evidence: evidence?,
        },
        BreakerEvent::HalfOpened => Transition::HalfOpened { backend },
        BreakerEvent::Closed => Transition::Readmitted { backend },
    })
}
