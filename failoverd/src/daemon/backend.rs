//! One backend address as the daemon tracks it: health, breaker, operator state and last probe.

use std::{net::SocketAddr, time::Duration};

use tokio::time::Instant;

use crate::{
    breaker::{Breaker, BreakerParams},
    config::{BackendConfig, ServiceConfig},
    control::DrainInfo,
    health::{HealthState, HealthStatus, ProbeError, ProbeOk},
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

/// The last probe of a backend.
#[derive(Clone, Debug)]
pub struct LastProbe {
    /// How long it took.
    pub latency: Duration,
    /// `Ok(detail)` or `Err((reason, message))`.
    pub outcome: Result<String, (&'static str, String)>,
}

/// Everything the daemon knows about one backend address.
#[derive(Debug)]
pub struct BackendState {
    /// Where it came from and where traffic goes.
    pub key: BackendKey,
    /// Name used by status, logs and (later) drain: the configured name, or
    /// `name@ip:port` for each address of a hostname backend.
    pub name: String,
    /// Where probes go (the traffic address, or its `health.port`).
    pub probe_addr: SocketAddr,
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
    pub drain: Option<DrainInfo>,
    /// The most recent probe.
    pub last_probe: Option<LastProbe>,
    /// When its state (health or breaker) last changed.
    pub since: Instant,
    /// After this, no first verdict yet counts as a verdict of "not live" (see [`Self::has_verdict`]).
    pub verdict_due: Instant,
}

impl BackendState {
    /// A backend with no verdict yet: never silently healthy.
    pub fn new(
        service: &ServiceConfig,
        config: &BackendConfig,
        key: BackendKey,
        from_hostname: bool,
        id: u32,
    ) -> Self {
        let probe_port = service.health.port.unwrap_or(key.addr.port());
        let h = &service.health;
        // Enough probes for a first verdict either way, plus one interval of
        // start jitter; a backend that alternates pass/fail never completes a
        // streak, and must not hold its VIP's table hostage.
        let verdict_wait = h.interval * (h.rise.max(h.fall) + 1) + h.timeout;
        let now = Instant::now();
        BackendState {
            key,
            name: if from_hostname {
                format!("{}@{}", config.name, key.addr)
            } else {
                config.name.clone()
            },
            probe_addr: SocketAddr::new(key.addr.ip(), probe_port),
            weight: config.weight,
            priority: config.priority,
            id,
            health: HealthState::new(service.health.rise, service.health.fall),
            breaker: Breaker::new(BreakerParams {
                failures: service.breaker.failures,
                open_for: service.breaker.open_for,
                max_open_for: service.breaker.max_open_for,
                rise: service.health.rise,
            }),
            drain: None,
            last_probe: None,
            since: now,
            verdict_due: now + verdict_wait,
        }
    }

    /// Takes new connections: healthy, breaker closed, not drained (weight is
    /// judged by selection, which also knows about panic mode).
    pub fn is_live(&self) -> bool {
        self.health.status() == HealthStatus::Healthy
            && !self.breaker.is_open()
            && self.drain.is_none()
    }

    /// Whether the first verdict is in, or overdue (then it stays out as `unknown`).
    pub fn has_verdict(&self, now: Instant) -> bool {
        self.health.status() != HealthStatus::Unknown || now >= self.verdict_due
    }

    /// The state word status shows: drained, ejected, or the health status.
    pub fn state_word(&self) -> &'static str {
        if self.drain.is_some() {
            "drained"
        } else if self.breaker.is_open() {
            "ejected"
        } else {
            match self.health.status() {
                HealthStatus::Unknown => "unknown",
                HealthStatus::Healthy => "healthy",
                HealthStatus::Unhealthy => "unhealthy",
            }
        }
    }

    /// Records a probe result.
    pub fn record(&mut self, started: Instant, result: &Result<ProbeOk, ProbeError>) {
        self.last_probe = Some(match result {
            Ok(ok) => LastProbe {
                latency: ok.latency,
                outcome: Ok(ok.detail.clone()),
            },
            Err(e) => LastProbe {
                latency: started.elapsed(),
                outcome: Err((e.reason(), e.to_string())),
            },
        });
    }
}
