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
    sync::{mpsc, oneshot, watch, Semaphore},
    task::JoinHandle,
    time::Instant,
};

use super::{
    backend::{BackendKey, BackendState},
    prober::{self, ProberParams},
};
use crate::{
    breaker::{may_eject, BreakerEvent},
    config::{Failback, OnAllDown, ServiceConfig},
    datapath::{IdAllocator, TableBackend, Vip, VipTable},
    health::{HealthStatus, Probe, ProbeError, ProbeOk},
    reconcile::WriterCommand,
    select::{select, AllDown, Candidate, FailbackMode, Selection},
};

/// What a service task reacts to.
#[derive(Debug)]
pub enum ServiceEvent {
    /// A probe finished.
    Probe {
        /// Which backend.
        key: BackendKey,
        /// When the probe started.
        started: Instant,
        /// What it saw.
        result: Result<ProbeOk, ProbeError>,
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
}

/// A service as status shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceStatus {
    /// Service name.
    pub name: String,
    /// Its VIP.
    pub vip: Vip,
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
}

struct Tracked {
    state: BackendState,
    prober: JoinHandle<()>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.prober.abort();
    }
}

/// Shared by every service task.
pub struct Shared {
    /// Where tables go.
    pub writer: mpsc::Sender<WriterCommand>,
    /// Caps probes in flight.
    pub permits: Arc<Semaphore>,
    /// Counter ids.
    pub ids: Arc<Mutex<IdAllocator>>,
    /// Stops everything.
    pub shutdown: watch::Receiver<bool>,
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
    active: Option<u8>,
    last_sent: Option<VipTable>,
    ready: bool,
    events_tx: mpsc::Sender<ServiceEvent>,
    shared: Arc<Shared>,
}

impl ServiceTask {
    /// A task for `config`, reusing the VIP id and backend ids of an adopted table.
    pub fn new(
        config: ServiceConfig,
        vip_id: u32,
        adopted: Option<&VipTable>,
        events_tx: mpsc::Sender<ServiceEvent>,
        shared: Arc<Shared>,
    ) -> Self {
        let probe = Arc::new(super::probe_for(&config.health));
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
            last_sent: adopted.cloned(),
            ready: false,
            config,
            events_tx,
            shared,
        }
    }

    /// Runs until shutdown.
    pub async fn run(mut self, mut events: mpsc::Receiver<ServiceEvent>) {
        let mut shutdown = self.shared.shutdown.clone();
        loop {
            let deadline = self
                .backends
                .values()
                .filter_map(|b| b.state.breaker.next_deadline())
                .min();
            tokio::select! {
                biased;
                _ = shutdown.wait_for(|stop| *stop) => return,
                event = events.recv() => match event {
                    Some(event) => self.handle(event),
                    None => return,
                },
                _ = sleep_until_opt(deadline) => self.tick_breakers(),
            }
            self.reconcile().await;
        }
    }

    /// Sets the addresses of one config entry: starts probing new ones, forgets gone ones.
    pub fn set_addrs(&mut self, config_index: usize, addrs: &[SocketAddr]) {
        let gone: Vec<BackendKey> = self
            .backends
            .keys()
            .filter(|k| k.config_index == config_index && !addrs.contains(&k.addr))
            .copied()
            .collect();
        for key in gone {
            if let Some(t) = self.backends.remove(&key) {
                tracing::info!(service = %self.config.name, backend = %t.state.name, "address no longer resolves; backend removed");
                if !self.adopted_ids.values().any(|&id| id == t.state.id) {
                    self.shared.ids.lock().expect("id lock").release(t.state.id);
                }
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
            let state = BackendState::new(&self.config, backend_config, key, from_hostname, id);
            let prober = tokio::spawn(prober::run(
                ProberParams {
                    key,
                    addr: state.probe_addr,
                    probe: Arc::clone(&self.probe),
                    interval: self.config.health.interval,
                    timeout: self.config.health.timeout,
                    permits: Arc::clone(&self.shared.permits),
                },
                self.events_tx.clone(),
                self.shared.shutdown.clone(),
            ));
            if from_hostname {
                tracing::info!(service = %self.config.name, backend = %state.name, "new address; probing it");
            }
            self.backends.insert(key, Tracked { state, prober });
        }
    }

    fn handle(&mut self, event: ServiceEvent) {
        match event {
            ServiceEvent::Probe {
                key,
                started,
                result,
            } => self.on_probe(key, started, result),
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
        }
    }

    fn on_probe(&mut self, key: BackendKey, started: Instant, result: Result<ProbeOk, ProbeError>) {
        let Some(priority) = self.backends.get(&key).map(|b| b.state.priority) else {
            return; // A prober of a backend removed meanwhile.
        };
        let group: Vec<&BackendState> = self
            .backends
            .values()
            .map(|b| &b.state)
            .filter(|b| b.priority == priority)
            .collect();
        let ejected = group.iter().filter(|b| b.breaker.is_open()).count();
        let may = may_eject(
            group.len(),
            ejected,
            self.config.breaker.max_ejected_percent,
        );
        let name = self.config.name.clone();

        let Some(tracked) = self.backends.get_mut(&key) else {
            return;
        };
        let b = &mut tracked.state;
        b.record(started, &result);
        let now = Instant::now();
        let evidence = match &result {
            Ok(ok) => ok.detail.clone(),
            Err(e) => e.to_string(),
        };
        if let Some(to) = b.health.observe(result.is_ok()) {
            b.since = now;
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
            b.since = now;
            log_breaker(&name, &b.name, &event, &evidence);
        }
    }

    fn tick_breakers(&mut self) {
        let now = Instant::now();
        for t in self.backends.values_mut() {
            if let Some(event) = t.state.breaker.tick(now) {
                t.state.since = now;
                log_breaker(&self.config.name, &t.state.name, &event, "open period over");
            }
        }
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
            tracing::info!(
                service = %self.config.name,
                vip = %self.vip,
                "every backend has its first verdict; the VIP's table is now managed"
            );
        }
        let states: Vec<&BackendState> = self.backends.values().map(|b| &b.state).collect();
        let candidates: Vec<Candidate> = states
            .iter()
            .map(|b| Candidate {
                priority: b.priority,
                weight: b.weight,
                live: b.is_live(),
                drained: b.drained,
            })
            .collect();
        let all_down = match self.config.on_all_down {
            OnAllDown::Reject => AllDown::Reject,
            OnAllDown::Panic => AllDown::Panic,
        };
        let failback = match self.config.failback {
            Failback::Auto => FailbackMode::Auto,
            Failback::Manual => FailbackMode::Manual,
        };
        let selection = select(&candidates, all_down, failback, self.active);
        self.log_priority_change(&selection, &states);
        self.active = selection.priority();

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
        if self.last_sent.as_ref() == Some(&table) {
            return;
        }
        self.last_sent = Some(table.clone());
        if self
            .shared
            .writer
            .send(WriterCommand::Apply(table))
            .await
            .is_err()
        {
            tracing::debug!(service = %self.config.name, "writer gone (shutting down)");
        }
    }

    fn log_priority_change(&self, selection: &Selection, states: &[&BackendState]) {
        let to = selection.priority();
        if to == self.active {
            return;
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
                    }
                })
                .collect(),
        }
    }
}

fn log_breaker(service: &str, backend: &str, event: &BreakerEvent, evidence: &str) {
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
