//! Read-only views of a service for operators: a status snapshot and an explanation of where
//! a connect goes. Plain data; the control layer turns them into wire types and sentences.

use std::{net::SocketAddr, time::Duration};

use tokio::time::Instant;

use super::{
    backend::{Drain, LastProbe},
    service::ServiceState,
    transition::Evidence,
};
use crate::{
    datapath::{ConnectFailureKind, Vip},
    health::HealthStatus,
};

/// A service as status shows it.
#[derive(Clone, Debug)]
pub struct ServiceStatus {
    /// Service name.
    pub name: String,
    /// Its VIP.
    pub vip: Vip,
    /// The VIP's counter id in the datapath.
    pub vip_id: u32,
    /// The priority new connections go to; `None` when refused (or before the first verdicts).
    pub active_priority: Option<u8>,
    /// Whether every backend had its first verdict (before that the pinned table is left alone).
    pub ready: bool,
    /// Whether nothing is live and `on_all_down: panic` spreads over every backend of the
    /// lowest priority.
    pub panic: bool,
    /// Each backend.
    pub backends: Vec<BackendStatus>,
    /// Config entries with no address yet (hostnames that do not resolve): name and
    /// `host:port`.
    pub unresolved: Vec<(String, String)>,
    /// While more than one backend answers primary (`role: primary`): their names.
    pub split_brain: Vec<String>,
}

/// A backend as status shows it.
#[derive(Clone, Debug)]
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
    /// The last probe.
    pub last_probe: Option<LastProbe>,
    /// Time since its state last changed.
    pub in_state_for: Duration,
    /// Who drained it, when and why, while drained.
    pub drain: Option<Drain>,
    /// What the kernel has told about its connects (passive health).
    pub passive: PassiveStatus,
}

/// A backend's passive health as status shows it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PassiveStatus {
    /// Failed connects in a row as of the kernel's last report.
    pub consecutive: u32,
    /// The last failed connect the kernel reported: how long ago, and how it failed.
    pub last_failure: Option<(Duration, ConnectFailureKind)>,
    /// Times kernel evidence ejected it.
    pub ejections: u32,
    /// Whether it is out now because of kernel evidence.
    pub ejected: bool,
}

/// Where a connect to a VIP goes now, and why every other backend is out.
#[derive(Clone, Debug)]
pub struct Explanation {
    /// The service.
    pub service: String,
    /// Its VIP.
    pub vip: Vip,
    /// The priority that takes new connections, if any (none before the first verdicts).
    pub active_priority: Option<u8>,
    /// Connects are refused with ECONNREFUSED.
    pub refused: bool,
    /// `on_all_down: panic` is in force.
    pub panic: bool,
    /// Backends a connect reaches, with their share of new connections in percent.
    pub reachable: Vec<(String, SocketAddr, f64)>,
    /// Every other backend and why it is out.
    pub out: Vec<(String, SocketAddr, OutReason)>,
}

/// Why a backend takes no new connections.
#[derive(Clone, Debug)]
pub enum OutReason {
    /// An operator drained it.
    Drained(Drain),
    /// The breaker holds it out.
    Ejected {
        /// Ejections not yet forgiven.
        ejections: u32,
    },
    /// The breaker holds it out because the kernel saw its connects fail (passive health).
    PassiveEjected {
        /// Failed connects in a row that ejected it.
        consecutive: u32,
        /// How the last one failed.
        kind: Option<ConnectFailureKind>,
        /// Ejections not yet forgiven (probe and passive ones alike).
        ejections: u32,
    },
    /// No verdict yet.
    Unknown,
    /// Its probes fail; the last one, if any.
    Unhealthy(Option<Evidence>),
    /// Weight 0.
    WeightZero,
    /// Healthy, but another priority takes the connections.
    Standby {
        /// Its priority.
        priority: u8,
        /// The priority that takes connections.
        active: u8,
    },
    /// Healthy, but it claims primary beside another (split brain) and is not the one kept.
    SplitBrain {
        /// The backend that keeps the connections, if any.
        kept: Option<String>,
    },
    /// Healthy, but the table is not managed yet (waiting for every first verdict).
    NotManagedYet,
    /// Healthy and not in the table for another reason (e.g. the table is full).
    NotInTable,
}

impl ServiceState {
    /// A snapshot for `status`, as of `now`.
    pub fn status(&self, now: Instant) -> ServiceStatus {
        let in_table = |addr: SocketAddr| {
            self.managed
                && self
                    .table
                    .as_ref()
                    .is_some_and(|t| t.backends.iter().any(|b| b.addr == addr))
        };
        ServiceStatus {
            name: self.config.name.clone(),
            vip: self.vip,
            vip_id: self.vip_id,
            active_priority: self.active.filter(|_| self.managed),
            ready: self.managed,
            panic: self.managed && self.panic,
            unresolved: self.unresolved(),
            split_brain: self
                .split_brain()
                .map(|(all, _)| all.into_iter().map(str::to_string).collect())
                .unwrap_or_default(),
            backends: self
                .backends
                .values()
                .map(|b| BackendStatus {
                    name: b.name.to_string(),
                    addr: b.key.addr,
                    state: b.state_word(),
                    health: b.health.status(),
                    ejected: b.breaker.is_open(),
                    ejections: b.breaker.ejections(),
                    in_table: in_table(b.key.addr),
                    weight: b.weight,
                    priority: b.priority,
                    id: b.id,
                    last_probe: b.last_probe.clone(),
                    in_state_for: now.saturating_duration_since(b.since),
                    drain: b.drain.as_deref().cloned(),
                    passive: PassiveStatus {
                        consecutive: b.passive().consecutive,
                        last_failure: b
                            .passive()
                            .last_failure
                            .map(|(at, kind)| (now.saturating_duration_since(at), kind)),
                        ejections: b.passive().ejections,
                        ejected: b.passive().ejected && !b.is_live(),
                    },
                })
                .collect(),
        }
    }

    /// Where a connect to the VIP goes now.
    pub fn explain(&self) -> Explanation {
        let table = self.table.as_ref();
        let share = |addr: SocketAddr| -> f64 {
            let Some(t) = table else { return 0.0 };
            let total = t.slots.len().max(1) as f64;
            t.backends
                .iter()
                .zip(t.slot_counts())
                .find(|(b, _)| b.addr == addr)
                .map_or(0.0, |(_, n)| 100.0 * n as f64 / total)
        };
        let mut reachable = Vec::new();
        let mut out = Vec::new();
        for b in self.backends.values() {
            let percent = share(b.key.addr);
            if percent > 0.0 {
                reachable.push((b.name.to_string(), b.key.addr, percent));
                continue;
            }
            let split = self
                .split
                .as_deref()
                .filter(|(all, kept)| all.contains(&b.key) && kept.as_ref() != Some(&b.key));
            let reason = if let Some(d) = &b.drain {
                OutReason::Drained((**d).clone())
            } else if let Some((_, kept)) = split {
                OutReason::SplitBrain {
                    kept: kept
                        .as_ref()
                        .and_then(|k| self.backends.get(k))
                        .map(|k| k.name.to_string()),
                }
            } else if b.passive().ejected && !b.is_live() && b.drain.is_none() {
                OutReason::PassiveEjected {
                    consecutive: b.passive().consecutive,
                    kind: b.passive().last_failure.map(|(_, k)| k),
                    ejections: b.breaker.ejections(),
                }
            } else if b.breaker.is_open() {
                OutReason::Ejected {
                    ejections: b.breaker.ejections(),
                }
            } else {
                match b.health.status() {
                    HealthStatus::Unknown => OutReason::Unknown,
                    HealthStatus::Unhealthy => OutReason::Unhealthy(
                        b.last_probe.as_ref().map(|p| Evidence(p.result.clone())),
                    ),
                    HealthStatus::Healthy if b.weight == 0 => OutReason::WeightZero,
                    HealthStatus::Healthy => match self.active {
                        Some(active) if active != b.priority => OutReason::Standby {
                            priority: b.priority,
                            active,
                        },
                        _ if !self.managed => OutReason::NotManagedYet,
                        _ => OutReason::NotInTable,
                    },
                }
            };
            out.push((b.name.to_string(), b.key.addr, reason));
        }
        Explanation {
            service: self.config.name.clone(),
            vip: self.vip,
            active_priority: self.active.filter(|_| self.managed),
            refused: table.is_some_and(|t| t.slots.is_empty()),
            panic: self.panic,
            reachable,
            out,
        }
    }
}
