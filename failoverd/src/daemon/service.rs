//! One service's task: turns probe results into verdicts and verdicts into the VIP's table.
//!
//! It owns its backends' state, so no lock is needed: probers, DNS watchers
//! and operator calls all arrive as [`ServiceEvent`]s.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    sync::{mpsc, oneshot, watch},
    time::Instant,
};

use super::{
    backend::{BackendKey, BackendState},
    events::{Event, Events},
    prober::{ProbeHub, ProbeTarget, Subscription},
};
use crate::{
    breaker::{may_eject, BreakerEvent},
    config::{Failback, OnAllDown, ServiceConfig},
    control::{ControlError, DrainInfo, ExplainReport, OutBackend, ReachableBackend},
    datapath::{IdAllocator, TableBackend, Vip, VipTable},
    health::{HealthStatus, Probe, ProbeError, ProbeOk},
    reconcile::{WriterCommand, WriterMessage},
    select::{select, AllDown, Candidate, FailbackMode, Selection},
};

/// Makes a drain change durable; runs inside the service task after the
/// change was checked and before it is applied, so a failure changes nothing.
pub type Persist = Box<dyn FnOnce() -> Result<(), ControlError> + Send>;

/// The gauge values a service last exported.
#[derive(PartialEq)]
struct Published {
    active: Option<u8>,
    live: usize,
    backends: Vec<(BackendKey, &'static str, bool, bool)>,
}

/// What a service task reacts to.
pub enum ServiceEvent {
    /// A probe finished.
    Probe {
        /// Which backend.
        key: BackendKey,
        /// When the probe started.
        started: Instant,
        /// What it saw (shared by every service probing the same target).
        result: Arc<Result<ProbeOk, ProbeError>>,
    },
    /// A hostname backend now resolves to these addresses.
    Addrs {
        /// Index of the backend in the service's config.
        config_index: usize,
        /// Its addresses (with the configured port).
        addrs: Vec<SocketAddr>,
    },
    /// Operator: go back to the best live priority now (`failback: manual`).
    Failback {
        /// Answered once done.
        reply: oneshot::Sender<()>,
    },
    /// A snapshot for status and tests.
    Status {
        /// Answered with the snapshot.
        reply: oneshot::Sender<ServiceStatus>,
    },
    /// Operator: hold a backend out of new connections (`info: None` puts it back).
    Drain {
        /// Backend name.
        backend: String,
        /// Who, when, why; `None` to undrain.
        info: Option<DrainInfo>,
        /// Allow draining the last backend in the table.
        force: bool,
        /// Makes the change durable before it is applied.
        persist: Persist,
        /// Answered once the kernel's table reflects the change.
        reply: oneshot::Sender<Result<(), ControlError>>,
    },
    /// Where a connect to the VIP goes now, and why every other backend is out.
    Explain {
        /// Answered with the explanation.
        reply: oneshot::Sender<ExplainReport>,
    },
    /// Stop the task (reload removed or changed the service); answered with the table it last sent.
    Stop {
        /// Answered with the last table, which a successor adopts.
        reply: oneshot::Sender<Option<VipTable>>,
    },
}

/// A service as status shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceStatus {
    /// Service name.
    pub name: String,
    /// Its VIP.
    pub vip: Vip,
    /// The VIP's counter id in the datapath.
    pub vip_id: u32,
    /// The priority new connections go to; `None` when refused (or before the first write).
    pub active_priority: Option<u8>,
    /// Whether every backend had its first verdict (before that the pinned table is left alone).
    pub ready: bool,
    /// Each backend.
    pub backends: Vec<BackendStatus>,
}

/// A backend as status shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct BackendStatus {
    /// Name.
    pub name: String,
    /// Traffic address.
    pub addr: SocketAddr,
    /// unknown, healthy, unhealthy, ejected or drained.
    pub state: &'static str,
    /// Health verdict alone.
    pub health: HealthStatus,
    /// Breaker open or half-open.
    pub ejected: bool,
    /// Times the breaker opened.
    pub ejections: u32,
    /// Takes new connections now.
    pub in_table: bool,
    /// Weight.
    pub weight: u32,
    /// Priority.
    pub priority: u8,
    /// Counter id.
    pub id: u32,
    /// Last probe: `Ok(detail)` or `Err(reason: message)`, with its latency.
    pub last_probe: Option<(Result<String, String>, Duration)>,
    /// Time since its state last changed.
    pub in_state_for: Duration,
    /// Who drained it, when and why, while drained.
    pub drain: Option<DrainInfo>,
}

struct Tracked {
    state: BackendState,
    /// Its probe results keep coming while this lives (a loop shared with every backend of
    /// any service that has the same target).
    _probes: Subscription,
    /// Its hostname no longer resolves to it, but it keeps taking connections until the
    /// addresses that replaced it have their first verdicts (make before break).
    retiring: bool,
    /// Its probe-latency histogram, looked up once rather than on every probe.
    latency: metrics::Histogram,
}

/// Shared by every service task.
pub struct Shared {
    /// Where tables go.
    pub writer: mpsc::Sender<WriterMessage>,
    /// The probe loops, shared across services.
    pub probes: ProbeHub,
    /// Services running, and how many of them are ready: readiness without asking each.
    pub readiness: Readiness,
    /// Counter ids.
    pub ids: Arc<Mutex<IdAllocator>>,
    /// The event feed.
    pub events: Arc<super::events::Events>,
}

/// Counts of services and of ready services, kept by the service tasks themselves, so that
/// readiness (polled by `/readyz` and the systemd notifier) costs one load, not a status
/// round trip to every service.
///
/// Both counts live in one word (services in the high half, ready ones in the low half) so
/// that one load sees them consistently while services come and go on a reload.
#[derive(Default)]
pub struct Readiness(std::sync::atomic::AtomicU64);

impl Readiness {
    /// One service, in the high half.
    const SERVICE: u64 = 1 << 32;

    /// Whether every running service has its first verdicts.
    pub fn all_ready(&self) -> bool {
        let both = self.0.load(std::sync::atomic::Ordering::SeqCst);
        both & 0xffff_ffff == both >> 32
    }

    fn service_started(&self) {
        self.0
            .fetch_add(Self::SERVICE, std::sync::atomic::Ordering::SeqCst);
    }

    fn service_ready(&self) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    fn service_ended(&self, was_ready: bool) {
        self.0.fetch_sub(
            Self::SERVICE + u64::from(was_ready),
            std::sync::atomic::Ordering::SeqCst,
        );
    }
}

/// The state and the loop of one service.
pub struct ServiceTask {
    config: ServiceConfig,
    vip: Vip,
    vip_id: u32,
    probe: Arc<Probe>,
    backends: BTreeMap<BackendKey, Tracked>,
    /// Ids the adopted table gave to addresses, reused so counters continue.
    adopted_ids: HashMap<SocketAddr, u32>,
    /// Drains restored from state_dir, by backend name, applied as backends appear.
    drains: BTreeMap<String, DrainInfo>,
    active: Option<u8>,
    panic: bool,
    /// What `publish` last exported, so unchanged gauges are not re-set on every probe.
    published: Option<Published>,
    last_sent: Option<VipTable>,
    ready: bool,
    events_tx: mpsc::Sender<ServiceEvent>,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
}

impl Drop for ServiceTask {
    fn drop(&mut self) {
        self.shared.readiness.service_ended(self.ready);
    }
}

impl ServiceTask {
    /// A task for `config`, reusing the VIP id and backend ids of an adopted table.
    pub fn new(
        config: ServiceConfig,
        vip_id: u32,
        adopted: Option<&VipTable>,
        drains: BTreeMap<String, DrainInfo>,
        events_tx: mpsc::Sender<ServiceEvent>,
        shared: Arc<Shared>,
        stop: watch::Receiver<bool>,
    ) -> Self {
        let probe = Arc::new(super::probe_for(&config.health));
        let mut priorities: Vec<u8> = config.backends.iter().map(|b| b.priority).collect();
        priorities.sort_unstable();
        priorities.dedup();
        crate::metrics::zero_service(&config.name, &priorities);
        shared.readiness.service_started();
        ServiceTask {
            vip: config.vip(),
            vip_id,
            probe,
            backends: BTreeMap::new(),
            adopted_ids: adopted
                .map(|t| t.backends.iter().map(|b| (b.addr, b.id)).collect())
                .unwrap_or_default(),
            // Traffic was wherever the pinned table sends it; selection starts from scratch.
            active: None,
            panic: false,
            published: None,
            drains,
            last_sent: adopted.cloned(),
            ready: false,
            config,
            events_tx,
            shared,
            stop,
        }
    }

    /// Runs until shutdown.
    pub async fn run(mut self, mut events: mpsc::Receiver<ServiceEvent>) {
        let mut stop = self.stop.clone();
        loop {
            let deadline = self
                .backends
                .values()
                .filter_map(|b| b.state.breaker.next_deadline())
                .min();
            // Decide inside select!, act after it: the branch futures must be
            // gone before anything else is awaited.
            let event = tokio::select! {
                biased;
                _ = stop.wait_for(|stop| *stop) => return,
                event = events.recv() => match event {
                    Some(event) => Some(event),
                    None => return,
                },
                _ = sleep_until_opt(deadline) => None,
            };
            match event {
                Some(ServiceEvent::Stop { reply }) => {
                    reply.send(self.last_sent.take()).ok();
                    return;
                }
                Some(ServiceEvent::Probe {
                    key,
                    started,
                    result,
                }) => {
                    let changed = self.on_probe(key, started, &result);
                    // Until the first write, time alone (an overdue verdict) can change the
                    // outcome; afterwards only a change can.
                    if !changed && self.ready {
                        continue;
                    }
                }
                Some(event) => self.handle(event).await,
                None => self.tick_breakers(),
            }
            self.retire_replaced();
            self.reconcile().await;
        }
    }

    /// Sets the addresses of one config entry: starts probing new ones, and forgets gone ones
    /// (a live one only once its replacements have verdicts: see `retire_replaced`).
    pub fn set_addrs(&mut self, config_index: usize, addrs: &[SocketAddr]) {
        let gone: Vec<BackendKey> = self
            .backends
            .keys()
            .filter(|k| k.config_index == config_index && !addrs.contains(&k.addr))
            .copied()
            .collect();
        for key in gone {
            let Some(t) = self.backends.get_mut(&key) else {
                continue;
            };
            if t.state.is_live() && !addrs.is_empty() {
                if !t.retiring {
                    t.retiring = true;
                    tracing::info!(service = %self.config.name, backend = %t.state.name, "address no longer resolves; it keeps its connections until the new address has a verdict");
                }
            } else {
                self.remove_backend(&key, "address no longer resolves; backend removed");
            }
        }
        for key in addrs.iter().map(|&addr| BackendKey { config_index, addr }) {
            if let Some(t) = self.backends.get_mut(&key).filter(|t| t.retiring) {
                // The name resolves to it again: it stays.
                t.retiring = false;
            }
        }

        let backend_config = &self.config.backends[config_index];
        let from_hostname = matches!(
            backend_config.address,
            crate::config::BackendAddress::Host { .. }
        );
        for &addr in addrs {
            let key = BackendKey { config_index, addr };
            if self.backends.contains_key(&key) {
                continue;
            }
            let id = match self.adopted_ids.get(&addr) {
                Some(&id) => id,
                None => match self.shared.ids.lock().expect("id lock").allocate() {
                    Ok(id) => id,
                    Err(e) => {
                        tracing::error!(service = %self.config.name, addr = %addr, error = %e, "backend left out");
                        continue;
                    }
                },
            };
            let mut state = BackendState::new(&self.config, backend_config, key, from_hostname, id);
            crate::metrics::zero_backend(&self.config.name, &state.name);
            // Drains are keyed by backend name, which for a hostname's
            // addresses is only known here.
            state.drain = self.drains.get(&state.name).cloned();
            let probes = self.shared.probes.subscribe(
                ProbeTarget {
                    addr: state.probe_addr,
                    probe: Arc::clone(&self.probe),
                    interval: self.config.health.interval,
                    timeout: self.config.health.timeout,
                },
                key,
                self.events_tx.clone(),
            );
            if from_hostname {
                tracing::info!(service = %self.config.name, backend = %state.name, "new address; probing it");
            }
            self.backends.insert(
                key,
                Tracked {
                    latency: crate::metrics::probe_latency(&self.config.name, &state.name),
                    state,
                    _probes: probes,
                    retiring: false,
                },
            );
        }
    }

    /// Removes retiring addresses whose replacements (the entry's other addresses) all have
    /// verdicts, or that are no longer live themselves. Until then a retiring address takes
    /// connections as before, so a DNS change never leaves a gap while the new address is
    /// probed for the first time.
    fn retire_replaced(&mut self) {
        let now = Instant::now();
        let done: Vec<BackendKey> = self
            .backends
            .iter()
            .filter(|(key, t)| {
                t.retiring
                    && (!t.state.is_live()
                        || self.backends.iter().all(|(k, o)| {
                            k.config_index != key.config_index
                                || o.retiring
                                || o.state.has_verdict(now)
                        }))
            })
            .map(|(k, _)| *k)
            .collect();
        for key in done {
            self.remove_backend(
                &key,
                "address no longer resolves and is replaced; backend removed",
            );
        }
    }

    /// Stops probing a backend and frees its id.
    fn remove_backend(&mut self, key: &BackendKey, why: &'static str) {
        if let Some(t) = self.backends.remove(key) {
            tracing::info!(service = %self.config.name, backend = %t.state.name, "{why}");
            if !self.adopted_ids.values().any(|&id| id == t.state.id) {
                self.shared.ids.lock().expect("id lock").release(t.state.id);
            }
        }
    }

    async fn handle(&mut self, event: ServiceEvent) {
        match event {
            ServiceEvent::Probe {
                key,
                started,
                result,
            } => {
                self.on_probe(key, started, &result);
            }
            ServiceEvent::Addrs {
                config_index,
                addrs,
            } => self.set_addrs(config_index, &addrs),
            ServiceEvent::Failback { reply } => {
                if self.active.is_some() {
                    tracing::info!(service = %self.config.name, from = ?self.active, "failback requested");
                }
                self.active = None;
                // The sender may have given up waiting; the failback stands anyway.
                reply.send(()).ok();
            }
            ServiceEvent::Status { reply } => {
                reply.send(self.status()).ok();
            }
            ServiceEvent::Drain {
                backend,
                info,
                force,
                persist,
                reply,
            } => {
                let result = self.drain(&backend, info, force, persist).await;
                reply.send(result).ok();
            }
            ServiceEvent::Explain { reply } => {
                reply.send(self.explain()).ok();
            }
            // Handled in `run`, which ends the task.
            ServiceEvent::Stop { .. } => {}
        }
    }

    /// Drains or undrains a backend: checks, persists, applies, and returns
    /// once the kernel's table reflects it.
    async fn drain(
        &mut self,
        backend: &str,
        info: Option<DrainInfo>,
        force: bool,
        persist: Persist,
    ) -> Result<(), ControlError> {
        let service = self.config.name.clone();
        let Some(key) = self
            .backends
            .iter()
            .find(|(_, t)| t.state.name == backend)
            .map(|(k, _)| *k)
        else {
            let names: Vec<&str> = self
                .backends
                .values()
                .map(|t| t.state.name.as_str())
                .collect();
            return Err(ControlError::NotFound(format!(
                "service {service} has no backend `{backend}` (it has: {})",
                names.join(", ")
            )));
        };
        if info.is_some() && !force && self.drain_leaves_nothing_live(&key) {
            return Err(ControlError::Invalid(format!(
                "{backend} is the last live backend {service} can send connections to (no other backend, of any priority, could take over); draining it leaves the VIP without one: pass --force to drain it anyway"
            )));
        }
        persist()?;
        match &info {
            Some(i) => {
                tracing::info!(service = %service, backend = %backend, by = %i.by, reason = ?i.reason, "backend drained");
                self.drains.insert(backend.to_string(), i.clone());
                crate::metrics::transition(&service, backend, "drained");
                self.shared.events.emit(Event {
                    kind: "drain",
                    service: &service,
                    backend: Some(backend),
                    from: None,
                    to: Some("drained".into()),
                    detail: format!(
                        "by {}{}",
                        i.by,
                        i.reason
                            .as_ref()
                            .map(|r| format!(": {r}"))
                            .unwrap_or_default()
                    ),
                });
            }
            None => {
                tracing::info!(service = %service, backend = %backend, "backend undrained");
                self.drains.remove(backend);
                crate::metrics::transition(&service, backend, "undrained");
                self.shared.events.emit(Event {
                    kind: "drain",
                    service: &service,
                    backend: Some(backend),
                    from: Some("drained".into()),
                    to: Some("undrained".into()),
                    detail: String::new(),
                });
            }
        }
        if let Some(t) = self.backends.get_mut(&key) {
            t.state.drain = info;
            t.state.since = Instant::now();
        }
        self.reconcile().await;
        let (reply, written) = oneshot::channel();
        if self
            .shared
            .writer
            .send(WriterMessage::Barrier(reply))
            .await
            .is_err()
        {
            return Err(ControlError::Failed("the daemon is stopping".into()));
        }
        match written.await {
            Ok(true) => Ok(()),
            Ok(false) => Err(ControlError::Failed(
                "the drain is recorded but the datapath write failed; it is being retried (see the daemon's log)".to_string(),
            )),
            Err(_) => Err(ControlError::Failed("the daemon is stopping".into())),
        }
    }

    fn explain(&self) -> ExplainReport {
        let table = self.last_sent.as_ref();
        let shares: BTreeMap<SocketAddr, f64> = table
            .map(|t| {
                let total = t.slots.len().max(1) as f64;
                t.backends
                    .iter()
                    .zip(t.slot_counts())
                    .map(|(b, n)| (b.addr, 100.0 * n as f64 / total))
                    .collect()
            })
            .unwrap_or_default();
        let mut reachable = Vec::new();
        let mut out = Vec::new();
        for t in self.backends.values() {
            let b = &t.state;
            let address = b.key.addr.to_string();
            if let Some(&share) = shares.get(&b.key.addr).filter(|s| **s > 0.0) {
                reachable.push(ReachableBackend {
                    name: b.name.clone(),
                    address,
                    share_percent: share,
                });
                continue;
            }
            let reason = if let Some(d) = &b.drain {
                format!(
                    "drained by {}{}",
                    d.by,
                    d.reason
                        .as_ref()
                        .map(|r| format!(": {r}"))
                        .unwrap_or_default()
                )
            } else if b.breaker.is_open() {
                match b.breaker.ejections() {
                    1 => "ejected by the breaker (first ejection)".to_string(),
                    n => format!("ejected by the breaker ({n} ejections)"),
                }
            } else {
                match b.health.status() {
                    HealthStatus::Unknown => "unknown: no verdict yet".to_string(),
                    HealthStatus::Unhealthy => match b.last_probe.as_ref().map(|p| &p.outcome) {
                        Some(Err((reason, message))) => format!("unhealthy: {reason}: {message}"),
                        _ => "unhealthy".to_string(),
                    },
                    HealthStatus::Healthy if b.weight == 0 => "weight 0".to_string(),
                    HealthStatus::Healthy => {
                        match self.active {
                            Some(active) if active != b.priority => {
                                format!("standby: priority {} while priority {active} takes connections", b.priority)
                            }
                            _ if !self.ready => {
                                "not managed yet: waiting for every backend's first verdict"
                                    .to_string()
                            }
                            _ => "not in the table".to_string(),
                        }
                    }
                }
            };
            out.push(OutBackend {
                name: b.name.clone(),
                address,
                reason,
            });
        }
        ExplainReport {
            vip: self.vip.addr.to_string(),
            service: self.config.name.clone(),
            active_priority: if self.ready { self.active } else { None },
            refused: table.is_some_and(|t| t.slots.is_empty()),
            panic: self.panic,
            reachable,
            out,
        }
    }

    /// Records a probe result; returns whether it changed anything selection looks at (a
    /// health transition or a breaker event). Most results change nothing, and at thousands of
    /// backends a second the work skipped for them is most of the daemon's CPU.
    fn on_probe(
        &mut self,
        key: BackendKey,
        started: Instant,
        result: &Result<ProbeOk, ProbeError>,
    ) -> bool {
        let Some(priority) = self.backends.get(&key).map(|b| b.state.priority) else {
            return false; // A prober of a backend removed meanwhile.
        };
        let (mut group, mut ejected) = (0, 0);
        for b in self
            .backends
            .values()
            .filter(|b| b.state.priority == priority)
        {
            group += 1;
            ejected += usize::from(b.state.breaker.is_open());
        }
        let may = may_eject(group, ejected, self.config.breaker.max_ejected_percent);
        let name = &self.config.name;
        let Some(tracked) = self.backends.get_mut(&key) else {
            return false;
        };
        tracked.latency.record(started.elapsed().as_secs_f64());
        let b = &mut tracked.state;
        b.record(started, result);
        if let Err(e) = result {
            crate::metrics::probe_failure(name, &b.name, e);
        }
        let now = Instant::now();
        let evidence = || match result {
            Ok(ok) => ok.detail.clone(),
            Err(e) => e.to_string(),
        };
        let mut changed = false;
        if let Some(to) = b.health.observe(result.is_ok()) {
            changed = true;
            b.since = now;
            let evidence = evidence();
            crate::metrics::transition(name, &b.name, crate::metrics::health_word(to));
            self.shared.events.emit(Event {
                kind: "backend",
                service: name,
                backend: Some(&b.name),
                from: None,
                to: Some(crate::metrics::health_word(to).to_string()),
                detail: evidence.clone(),
            });
            match to {
                HealthStatus::Unhealthy => {
                    tracing::warn!(service = %name, backend = %b.name, addr = %key.addr, to = "unhealthy", evidence = %evidence, "backend is down")
                }
                _ => {
                    tracing::info!(service = %name, backend = %b.name, addr = %key.addr, to = ?to, evidence = %evidence, "backend is up")
                }
            }
        }
        if let Some(event) = b.breaker.observe(result.is_ok(), now, may) {
            changed = true;
            b.since = now;
            log_breaker(&self.shared.events, name, &b.name, &event, &evidence());
        }
        changed
    }

    fn tick_breakers(&mut self) {
        let now = Instant::now();
        for t in self.backends.values_mut() {
            if let Some(event) = t.state.breaker.tick(now) {
                t.state.since = now;
                log_breaker(
                    &self.shared.events,
                    &self.config.name,
                    &t.state.name,
                    &event,
                    "open period over",
                );
            }
        }
    }

    /// The selection candidates, in `self.backends` order. `also_drained` counts as drained,
    /// to ask what a drain would do before doing it.
    fn candidates(&self, also_drained: Option<&BackendKey>) -> Vec<Candidate> {
        self.backends
            .iter()
            .map(|(key, b)| Candidate {
                priority: b.state.priority,
                weight: b.state.weight,
                live: b.state.is_live(),
                drained: b.state.drain.is_some() || also_drained == Some(key),
            })
            .collect()
    }

    /// What traffic goes to, given `candidates`, this service's policies and the priority
    /// traffic goes to now.
    fn select(&self, candidates: &[Candidate]) -> Selection {
        let all_down = match self.config.on_all_down {
            OnAllDown::Reject => AllDown::Reject,
            OnAllDown::Panic => AllDown::Panic,
        };
        let failback = match self.config.failback {
            Failback::Auto => FailbackMode::Auto,
            Failback::Manual => FailbackMode::Manual,
        };
        select(candidates, all_down, failback, self.active)
    }

    /// Whether draining `key` would leave the VIP with no live backend while it has one now
    /// (the standby of another priority taking over counts as live: that is what a drain of a
    /// primary is for).
    fn drain_leaves_nothing_live(&self, key: &BackendKey) -> bool {
        let serves_live = |s: &Selection| matches!(s, Selection::Group { .. });
        serves_live(&self.select(&self.candidates(None)))
            && !serves_live(&self.select(&self.candidates(Some(key))))
    }

    /// Computes the table the VIP should have and hands it to the writer if it changed.
    async fn reconcile(&mut self) {
        let now = Instant::now();
        if self.backends.is_empty() || !self.backends.values().all(|b| b.state.has_verdict(now)) {
            // Only before the first write: a pinned table stays as it is until
            // every backend has a verdict. Afterwards a backend that joins (a
            // new DNS address) is simply not live until it has one.
            if !self.ready {
                return;
            }
        }
        if !self.ready {
            self.ready = true;
            self.shared.readiness.service_ready();
            tracing::info!(
                service = %self.config.name,
                vip = %self.vip,
                "every backend has its first verdict; the VIP's table is now managed"
            );
        }
        let states: Vec<&BackendState> = self.backends.values().map(|b| &b.state).collect();
        let candidates = self.candidates(None);
        let selection = self.select(&candidates);
        self.log_priority_change(&selection, &states);
        self.active = selection.priority();
        self.panic = matches!(selection, Selection::Panic { .. });

        let mut members = selection.members().to_vec();
        if members.len() > failoverd_shared::MAX_BACKENDS {
            tracing::warn!(service = %self.config.name, live = members.len(), "more live backends than a table holds; using the first {}", failoverd_shared::MAX_BACKENDS);
            members.truncate(failoverd_shared::MAX_BACKENDS);
        }
        let table = if members.is_empty() {
            VipTable::refusing(self.vip, self.vip_id)
        } else {
            let backends = members
                .iter()
                .map(|&(i, _)| TableBackend {
                    addr: states[i].key.addr,
                    id: states[i].id,
                })
                .collect();
            let weights: Vec<u32> = members.iter().map(|&(_, w)| w).collect();
            match VipTable::weighted(self.vip, self.vip_id, backends, &weights) {
                Ok(t) => t,
                Err(e) => {
                    tracing::error!(service = %self.config.name, error = %e, "cannot build the table; left as it is");
                    return;
                }
            }
        };
        self.publish(
            &table,
            candidates.iter().filter(|c| c.live && c.weight > 0).count(),
        );
        if self.last_sent.as_ref() == Some(&table) {
            return;
        }
        self.last_sent = Some(table.clone());
        if self
            .shared
            .writer
            .send(WriterCommand::Apply(table).into())
            .await
            .is_err()
        {
            tracing::debug!(service = %self.config.name, "writer gone (shutting down)");
        }
    }

    /// Exports this service's gauges for the table it wants.
    fn publish(&mut self, table: &VipTable, live: usize) {
        let backends: Vec<(BackendKey, &'static str, bool, bool)> = self
            .backends
            .values()
            .map(|t| {
                let b = &t.state;
                let up = table.backends.iter().any(|x| x.addr == b.key.addr);
                (b.key, b.state_word(), up, b.breaker.is_open())
            })
            .collect();
        let now = Published {
            active: self.active,
            live,
            backends,
        };
        // Most probe results change nothing: skip the label lookups then.
        if self.published.as_ref() == Some(&now) {
            return;
        }
        crate::metrics::service(&self.config.name, now.active, now.live);
        for &(key, state, up, open) in &now.backends {
            if let Some(t) = self.backends.get(&key) {
                crate::metrics::backend(
                    &self.config.name,
                    &t.state.name,
                    t.state.priority,
                    state,
                    up,
                    open,
                );
            }
        }
        self.published = Some(now);
    }

    fn log_priority_change(&self, selection: &Selection, states: &[&BackendState]) {
        let to = selection.priority();
        if to == self.active {
            return;
        }
        // Start-up is not a failover: only a change away from a priority that had traffic counts.
        if self.active.is_some() || self.last_sent.as_ref().is_some_and(|t| t.slots.is_empty()) {
            crate::metrics::failover(&self.config.name, self.active, to);
            let label = |p: Option<u8>| p.map_or_else(|| "none".to_string(), |p| p.to_string());
            let out: Vec<String> = states
                .iter()
                .filter(|b| Some(b.priority) == self.active && !b.is_live())
                .map(|b| format!("{} {}", b.name, b.state_word()))
                .collect();
            self.shared.events.emit(Event {
                kind: "failover",
                service: &self.config.name,
                backend: None,
                from: Some(label(self.active)),
                to: Some(label(to)),
                detail: if out.is_empty() {
                    String::new()
                } else {
                    format!("out: {}", out.join(", "))
                },
            });
        }
        let out: Vec<String> = states
            .iter()
            .filter(|b| Some(b.priority) == self.active && !b.is_live())
            .map(|b| format!("{} {}", b.name, b.state_word()))
            .collect();
        match (self.active, to, selection) {
            (_, None, _) => {
                tracing::error!(service = %self.config.name, vip = %self.vip, from = ?self.active, out = ?out, "no live backend: connects are refused")
            }
            (None, Some(to), _) if self.last_sent.is_none() => {
                tracing::info!(service = %self.config.name, vip = %self.vip, priority = to, "traffic starts")
            }
            (_, Some(to), Selection::Panic { .. }) => {
                tracing::error!(service = %self.config.name, vip = %self.vip, priority = to, "no live backend: panic mode, using every backend of the lowest priority")
            }
            (Some(from), Some(to), _) if to < from => {
                tracing::info!(service = %self.config.name, vip = %self.vip, from_priority = from, to_priority = to, "failback")
            }
            (from, Some(to), _) => {
                tracing::warn!(service = %self.config.name, vip = %self.vip, from_priority = ?from, to_priority = to, out = ?out, "failover")
            }
        }
    }

    fn status(&self) -> ServiceStatus {
        let in_table: Vec<SocketAddr> = self
            .last_sent
            .as_ref()
            .map(|t| t.backends.iter().map(|b| b.addr).collect())
            .unwrap_or_default();
        ServiceStatus {
            name: self.config.name.clone(),
            vip: self.vip,
            vip_id: self.vip_id,
            active_priority: if self.ready { self.active } else { None },
            ready: self.ready,
            backends: self
                .backends
                .values()
                .map(|t| {
                    let b = &t.state;
                    BackendStatus {
                        name: b.name.clone(),
                        addr: b.key.addr,
                        state: b.state_word(),
                        health: b.health.status(),
                        ejected: b.breaker.is_open(),
                        ejections: b.breaker.ejections(),
                        in_table: self.ready && in_table.contains(&b.key.addr),
                        weight: b.weight,
                        priority: b.priority,
                        id: b.id,
                        last_probe: b.last_probe.as_ref().map(|p| {
                            let outcome = p
                                .outcome
                                .clone()
                                .map_err(|(reason, msg)| format!("{reason}: {msg}"));
                            (outcome, p.latency)
                        }),
                        in_state_for: b.since.elapsed(),
                        drain: b.drain.clone(),
                    }
                })
                .collect(),
        }
    }
}

fn log_breaker(
    events: &Events,
    service: &str,
    backend: &str,
    event: &BreakerEvent,
    evidence: &str,
) {
    match event {
        BreakerEvent::Opened { for_, .. } => {
            crate::metrics::transition(service, backend, "ejected");
            crate::metrics::ejection(service, backend);
            events.emit(Event {
                kind: "backend",
                service,
                backend: Some(backend),
                from: None,
                to: Some("ejected".into()),
                detail: format!("breaker open for {for_:?}: {evidence}"),
            });
        }
        BreakerEvent::Closed => {
            crate::metrics::transition(service, backend, "readmitted");
            events.emit(Event {
                kind: "backend",
                service,
                backend: Some(backend),
                from: Some("ejected".into()),
                to: Some("readmitted".into()),
                detail: "breaker closed".into(),
            });
        }
        BreakerEvent::HalfOpened => {}
    }
    match event {
        BreakerEvent::Opened { for_, ejections } => tracing::warn!(
            service = %service, backend = %backend, open_for = ?for_, ejections = ejections, evidence = %evidence,
            "breaker opened: backend ejected"
        ),
        BreakerEvent::HalfOpened => {
            tracing::info!(service = %service, backend = %backend, "breaker half-open: probing before readmitting")
        }
        BreakerEvent::Closed => {
            tracing::info!(service = %service, backend = %backend, "breaker closed: backend readmitted")
        }
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::Readiness;

    #[test]
    fn readiness_counts_services_that_come_and_go() {
        let r = Readiness::default();
        assert!(r.all_ready(), "no service: nothing to wait for");
        r.service_started();
        r.service_started();
        assert!(!r.all_ready());
        r.service_ready();
        assert!(!r.all_ready(), "one of two");
        r.service_ready();
        assert!(r.all_ready());
        // A reload replaces a ready service with a new one that has no verdicts yet.
        r.service_ended(true);
        r.service_started();
        assert!(!r.all_ready());
        r.service_ready();
        assert!(r.all_ready());
        r.service_ended(true);
        r.service_ended(true);
        assert!(r.all_ready());
    }
}
