//! One backend address as the decision core tracks it: health, breaker, operator state and last probe.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::time::Instant;

use super::sorted::Keyed;
use crate::{
    breaker::{Breaker, BreakerParams},
    config::{BackendConfig, HealthConfig, ServiceConfig},
    datapath::ConnectFailureKind,
    health::{HealthState, HealthStatus, ProbeResult},
};

/// Identifies a backend within its service: the config entry it came from and
/// the address it resolved to (a hostname backend has one per address).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendKey {
    /// Index into the service's `backends` in the config.
    pub config_index: usize,
    /// The address traffic goes to.
    pub addr: SocketAddr,
}

/// An operator's drain: who, when and why. Kept in `state_dir` across restarts.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Drain {
    /// The user who asked (from the control socket's peer credentials).
    pub by: String,
    /// When, in seconds since the Unix epoch.
    pub at_unix: u64,
    /// The operator's reason, if given.
    pub reason: Option<String>,
    /// Set for a fleet drain (from etcd, `by` is `user@host`): only `undrain --fleet` or
    /// the fleet undoes it. Absent from drains written before fleet mode existed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fleet: bool,
}

/// The last probe of a backend, kept typed until something renders it.
#[derive(Clone, Debug)]
pub struct LastProbe {
    /// How long it took.
    pub latency: Duration,
    /// What it saw (shared with every service probing the same target).
    pub result: Arc<ProbeResult>,
}

/// What the kernel has told about one backend's translated connects (passive health).
#[derive(Clone, Debug, Default)]
pub struct PassiveState {
    /// The last failed connect the kernel reported: when, and how it failed.
    pub last_failure: Option<(Instant, ConnectFailureKind)>,
    /// Failures in a row as of the last report (the kernel keeps the count; an established
    /// connect resets it there, and the next report says so).
    pub consecutive: u32,
    /// Times kernel evidence ejected it.
    pub ejections: u32,
    /// Whether the breaker is open now because of kernel evidence (not probes).
    pub ejected: bool,
    /// The kernel marked it suspect and the mark is not lifted yet: lifted as soon as the
    /// backend is in the VIP's table (again), so a stale mark never diverts its traffic.
    pub marked: bool,
}

/// Everything the core knows about one backend address.
#[derive(Debug)]
pub struct Backend {
    /// Where it came from and where traffic goes. Never changed once made: its service's
    /// backends are kept in its order (see [`Keyed`]).
    pub key: BackendKey,
    /// Name used by status, logs and drain: the configured name, or
    /// `name@ip:port` for each address of a hostname backend.
    pub name: Arc<str>,
    /// Share of new connections within its priority group.
    pub weight: u32,
    /// 0 is preferred.
    pub priority: u8,
    /// Counter id in the datapath.
    pub id: u32,
    /// Rise/fall hysteresis over probe results.
    pub health: HealthState,
    /// Ejects it when it keeps failing.
    pub breaker: Breaker,
    /// Set while an operator holds it out of new connections (still probed).
    /// Boxed: rare, and 48 bytes more in every backend of every service otherwise.
    pub drain: Option<Box<Drain>>,
    /// The most recent probe.
    pub last_probe: Option<LastProbe>,
    /// When its state (health, breaker or drain) last changed.
    pub since: Instant,
    /// After this, no first verdict yet counts as a verdict of "not live" (see [`Self::has_verdict`]).
    pub verdict_due: Instant,
    /// Its hostname no longer resolves to it, but it keeps taking connections until the
    /// addresses that replaced it have their first verdicts (make before break).
    pub retiring: bool,
    /// Kernel-observed connect failures (passive health), once there were any: most backends
    /// never see one, and the state is 40 bytes in each of tens of thousands.
    passive: Option<Box<PassiveState>>,
    /// While drained with `terminate.drain_after` set: when what is still open to it is
    /// aborted.
    pub drain_deadline: Option<Instant>,
}

impl Keyed for Backend {
    type Key = BackendKey;

    fn key(&self) -> &BackendKey {
        &self.key
    }
}

impl Backend {
    /// A backend with no verdict yet, seen first at `now`: never silently healthy.
    pub fn new(
        service: &ServiceConfig,
        breaker: &Arc<BreakerParams>,
        config: &BackendConfig,
        key: BackendKey,
        from_hostname: bool,
        id: u32,
        now: Instant,
    ) -> Self {
        let h = &service.health;
        Backend {
            key,
            name: if from_hostname {
                format!("{}@{}", config.name, key.addr).into()
            } else {
                // The config's own allocation: names are most of a backend's heap otherwise.
                Arc::clone(&config.name)
            },
            weight: config.weight,
            priority: config.priority,
            id,
            health: HealthState::new(h.rise, h.fall),
            breaker: Breaker::new(Arc::clone(breaker)),
            drain: None,
            last_probe: None,
            since: now,
            verdict_due: after(now, first_verdict_wait(service)),
            retiring: false,
            passive: None,
            drain_deadline: None,
        }
    }

    /// What the kernel has told about its translated connects (passive health).
    pub fn passive(&self) -> &PassiveState {
        static NONE: PassiveState = PassiveState {
            last_failure: None,
            consecutive: 0,
            ejections: 0,
            ejected: false,
            marked: false,
        };
        self.passive.as_deref().unwrap_or(&NONE)
    }

    /// The passive-health state to change, made on first use.
    pub(super) fn passive_mut(&mut self) -> &mut PassiveState {
        self.passive.get_or_insert_with(Box::default)
    }

    /// The passive-health state, if the kernel ever reported about it: to clear a flag
    /// without making a state for it.
    pub(super) fn passive_if_any(&mut self) -> Option<&mut PassiveState> {
        self.passive.as_deref_mut()
    }

    /// Where its probes go: its traffic address, or its `health.port` (derived, not kept: 32
    /// bytes in each of tens of thousands of backends).
    pub fn probe_addr(&self, health: &HealthConfig) -> SocketAddr {
        SocketAddr::new(self.key.addr.ip(), health.probe_port(self.key.addr.port()))
    }

    /// Holds it out of new connections for `drain`, from `now`; with `drain_after` set, what
    /// is still open to it is aborted once that grace is over.
    pub(super) fn set_drain(&mut self, drain: Drain, drain_after: Option<Duration>, now: Instant) {
        self.drain = Some(Box::new(drain));
        self.drain_deadline = drain_after.map(|grace| after(now, grace));
    }

    /// Takes new connections: healthy, breaker closed, not drained (weight is
    /// judged by selection, which also knows about panic mode).
    pub fn is_live(&self) -> bool {
        self.health.status() == HealthStatus::Healthy
            && !self.breaker.is_open()
            && self.drain.is_none()
    }

    /// Whether the first verdict is in, or overdue (then it stays out as `unknown`): due at
    /// [`Self::verdict_due`] plus `stretch`, what the measured probe lag adds (see
    /// [`verdict_stretch`]).
    pub fn has_verdict(&self, now: Instant, stretch: Duration) -> bool {
        self.health.status() != HealthStatus::Unknown || now >= after(self.verdict_due, stretch)
    }

    /// The state word status shows: drained, ejected, or the health status.
    pub fn state_word(&self) -> &'static str {
        if self.drain.is_some() {
            "drained"
        } else if self.breaker.is_open() || (self.passive().ejected && !self.is_live()) {
            "ejected"
        } else {
            self.health.status().word()
        }
    }
}

/// How long a backend may go without a first verdict before it counts as not live (see
/// `HealthConfig::first_verdict_wait`): a backend that alternates pass/fail never completes
/// a streak and must not hold its VIP's table hostage.
pub(crate) fn first_verdict_wait(service: &ServiceConfig) -> Duration {
    service.health.first_verdict_wait()
}

/// How much later a first verdict is due when probes start `lag` late: each of the probes
/// [`first_verdict_wait`] counts on (`max(rise, fall)`, plus the jittered first slot) may be
/// that late.
pub(crate) fn verdict_stretch(service: &ServiceConfig, lag: Duration) -> Duration {
    let h = &service.health;
    lag.saturating_mul(h.rise.max(h.fall).saturating_add(1))
}

/// `now + wait`, or [`FAR_FUTURE`] from now when that overflows.
pub(crate) fn after(now: Instant, wait: Duration) -> Instant {
    now.checked_add(wait).unwrap_or(now + FAR_FUTURE)
}

/// A stand-in for "never" that `Instant` arithmetic cannot overflow: thirty years.
pub(crate) const FAR_FUTURE: Duration = Duration::from_secs(30 * 365 * 86_400);
