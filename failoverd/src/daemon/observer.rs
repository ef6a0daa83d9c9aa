//! The one observer: turns each transition of the decision core into its metric, its event
//! and its log line, from the same value, and keeps the gauges in step with the core.

use std::sync::Arc;

use super::events::{Event, Events};
use crate::{
    datapath::{DatapathError, Terminated, Vip, VipTable},
    decision::{Evidence, PassiveHold, ServiceState, Termination, Transition},
    health::HealthStatus,
    metrics,
};

/// Records what services do. One per daemon, shared by every service task.
pub struct Observer {
    events: Arc<Events>,
}

/// A priority as metrics labels and log lines show it: the number, or `none` when refusing.
pub fn priority_label(p: Option<u8>) -> String {
    p.map_or_else(|| "none".to_string(), |p| p.to_string())
}

impl Observer {
    /// An observer writing events to `events`.
    pub fn new(events: Arc<Events>) -> Self {
        Observer { events }
    }

    /// The event feed.
    pub fn events(&self) -> &Events {
        &self.events
    }

    /// Records one transition of `service` (whose VIP is `vip`).
    pub fn record(&self, service: &str, vip: Vip, transition: &Transition) {
        let emit = |kind: &'static str,
                    backend: Option<&str>,
                    from: Option<String>,
                    to: Option<String>,
                    detail: String| {
            self.events.emit(Event {
                kind,
                service,
                backend,
                from,
                to,
                detail,
            });
        };
        match transition {
            Transition::Health {
                backend,
                addr,
                to,
                evidence,
            } => {
                metrics::transition(service, backend, to.word());
                emit(
                    "backend",
                    Some(backend),
                    None,
                    Some(to.word().into()),
                    evidence.to_string(),
                );
                if *to == HealthStatus::Unhealthy {
                    tracing::warn!(service, backend = %backend, addr = %addr, to = to.word(), evidence = %evidence, "backend is down");
                } else {
                    tracing::info!(service, backend = %backend, addr = %addr, to = to.word(), evidence = %evidence, "backend is up");
                }
            }
            Transition::Ejected {
                backend,
                open_for,
                ejections,
                evidence,
            } => {
                metrics::transition(service, backend, "ejected");
                metrics::ejection(service, backend);
                let open_for = humantime::format_duration(*open_for);
                emit(
                    "backend",
                    Some(backend),
                    None,
                    Some("ejected".into()),
                    format!("breaker open for {open_for}: {evidence}"),
                );
                tracing::warn!(service, backend = %backend, open_for = %open_for, ejections, evidence = %evidence, "breaker opened: backend ejected");
            }
            Transition::HalfOpened { backend } => {
                tracing::info!(service, backend = %backend, "breaker half-open: probing before readmitting");
            }
            Transition::Readmitted { backend } => {
                metrics::transition(service, backend, "readmitted");
                emit(
                    "backend",
                    Some(backend),
                    Some("ejected".into()),
                    Some("readmitted".into()),
                    "breaker closed".into(),
                );
                tracing::info!(service, backend = %backend, "breaker closed: backend readmitted");
            }
            Transition::Drained { backend, drain } => {
                metrics::transition(service, backend, "drained");
                let reason = drain.reason.as_deref().unwrap_or("");
                emit(
                    "drain",
                    Some(backend),
                    None,
                    Some("drained".into()),
                    if reason.is_empty() {
                        format!("by {}", drain.by)
                    } else {
                        format!("by {}: {reason}", drain.by)
                    },
                );
                tracing::info!(service, backend = %backend, by = %drain.by, reason, "backend drained");
            }
            Transition::Undrained { backend } => {
                metrics::transition(service, backend, "undrained");
                emit(
                    "drain",
                    Some(backend),
                    Some("drained".into()),
                    Some("undrained".into()),
                    String::new(),
                );
                tracing::info!(service, backend = %backend, "backend undrained");
            }
            Transition::AddressAdded { backend } => {
                tracing::info!(service, backend = %backend, "new address; probing it");
            }
            Transition::AddressRetiring { backend } => {
                tracing::info!(service, backend = %backend, "address no longer resolves; it keeps its connections until the new address has a verdict");
            }
            Transition::AddressRemoved { backend, why } => {
                tracing::info!(service, backend = %backend, why, "address removed");
                // The core no longer lists it and its probes are gone: its series go too.
                metrics::forget_backend(service, backend);
            }
            Transition::AddressRefused { addr, why } => {
                tracing::error!(service, addr = %addr, error = %why, "address left out");
            }
            Transition::Managed => {
                tracing::info!(service, vip = %vip, "every backend has its first verdict; the VIP's table is now managed");
            }
            Transition::TrafficStarts { priority } => {
                tracing::info!(service, vip = %vip, priority, "traffic starts");
            }
            Transition::FailedOver { from, to, out } => {
                metrics::failover(service, *from, Some(*to));
                let out = out.join(", ");
                emit(
                    "failover",
                    None,
                    Some(priority_label(*from)),
                    Some(to.to_string()),
                    if out.is_empty() {
                        String::new()
                    } else {
                        format!("out: {out}")
                    },
                );
                tracing::warn!(service, vip = %vip, from_priority = %priority_label(*from), to_priority = to, out = %out, "failover");
            }
            Transition::FailedBack { from, to } => {
                metrics::failover(service, Some(*from), Some(*to));
                emit(
                    "failover",
                    None,
                    Some(from.to_string()),
                    Some(to.to_string()),
                    String::new(),
                );
                tracing::info!(service, vip = %vip, from_priority = from, to_priority = to, "failback");
            }
            Transition::AllDown { from, out } => {
                let out = out.join(", ");
                if from.is_some() {
                    metrics::failover(service, *from, None);
                    emit(
                        "failover",
                        None,
                        Some(priority_label(*from)),
                        Some("none".into()),
                        if out.is_empty() {
                            String::new()
                        } else {
                            format!("out: {out}")
                        },
                    );
                }
                tracing::error!(service, vip = %vip, from_priority = %priority_label(*from), out = %out, "no live backend: connects are refused");
            }
            Transition::Panic { from, priority } => {
                if *from != Some(*priority) {
                    metrics::failover(service, *from, Some(*priority));
                }
                emit(
                    "failover",
                    None,
                    Some(priority_label(*from)),
                    Some(priority.to_string()),
                    "panic: no live backend, using every backend of the lowest priority".into(),
                );
                tracing::error!(service, vip = %vip, priority, "no live backend: panic mode, using every backend of the lowest priority");
            }
            Transition::SplitBrain { primaries, kept } => {
                metrics::split_brain(service, true);
                let kept_word = kept.as_deref().unwrap_or("none: connects are refused");
                emit(
                    "split_brain",
                    None,
                    None,
                    Some(primaries.join(", ")),
                    format!(
                        "more than one backend answers primary; connections stay on: {kept_word}"
                    ),
                );
                tracing::error!(service, vip = %vip, primaries = %primaries.join(", "), kept = kept_word, "split brain: more than one backend answers primary; the others get no connections");
            }
            Transition::SplitBrainEnded => {
                metrics::split_brain(service, false);
                emit(
                    "split_brain",
                    None,
                    None,
                    Some("ended".into()),
                    "one backend answers primary again".into(),
                );
                tracing::info!(service, vip = %vip, "split brain over: one backend answers primary");
            }
            Transition::FailbackRequested { from } => {
                tracing::info!(service, from_priority = %priority_label(*from), "failback requested");
            }
            Transition::TableTruncated { live, kept } => {
                tracing::warn!(
                    service,
                    live,
                    kept,
                    "more live backends than a table holds; using the first ones"
                );
            }
            Transition::TableUnbuildable { why } => {
                tracing::error!(service, error = %why, "cannot build the table; left as it is");
            }
            Transition::PassiveFailure {
                backend,
                kind,
                consecutive,
            } => {
                // One per failed connect: a metric and a debug line, never an event (a dead
                // backend under load fails thousands of connects a second).
                metrics::passive_failure(service, backend, kind.as_str());
                tracing::debug!(service, backend = %backend, kind = kind.as_str(), consecutive, "kernel saw a connect fail");
            }
            Transition::PassiveEjected {
                backend,
                kind,
                consecutive,
                open_for,
                ejections,
            } => {
                metrics::transition(service, backend, "ejected");
                metrics::ejection(service, backend);
                metrics::passive_ejection(service, backend);
                let until = if open_for.is_zero() {
                    "out until rise passing probes".to_string()
                } else {
                    format!("breaker open for {}", humantime::format_duration(*open_for))
                };
                let open_for = humantime::format_duration(*open_for);
                emit(
                    "backend",
                    Some(backend),
                    None,
                    Some("ejected".into()),
                    format!("passive: the kernel saw {consecutive} connects in a row fail ({kind}); {until}"),
                );
                tracing::warn!(service, backend = %backend, kind = kind.as_str(), consecutive, open_for = %open_for, ejections, "kernel-observed connect failures: backend ejected");
            }
            Transition::PassiveHeld {
                backend,
                consecutive,
                why,
            } => match why {
                PassiveHold::MaxEjected => {
                    tracing::warn!(service, backend = %backend, consecutive, why = why.as_str(), "kernel-observed connect failures, but ejecting it would exceed max_ejected_percent; kept");
                }
                PassiveHold::AlreadyOut => {
                    tracing::debug!(service, backend = %backend, consecutive, why = why.as_str(), "kernel-observed connect failures to a backend already out");
                }
            },
        }
    }

    /// Records what one termination did: its metric, its event and its log line.
    pub fn terminated(
        &self,
        service: &str,
        termination: &Termination,
        result: &Result<Terminated, DatapathError>,
    ) {
        let (backend, reason) = (&termination.backend, termination.reason.as_str());
        match result {
            Ok(done) => {
                metrics::sockets_terminated(service, backend, reason, u64::from(done.total()));
                self.events.emit(Event {
                    kind: "terminate",
                    service,
                    backend: Some(backend),
                    from: None,
                    to: Some(reason.to_string()),
                    detail: format!("{} tcp and {} udp sockets aborted", done.tcp, done.udp),
                });
                tracing::info!(service, backend = %backend, reason, tcp = done.tcp, udp = done.udp, "sockets to the backend aborted");
            }
            Err(e) => {
                self.events.emit(Event {
                    kind: "terminate",
                    service,
                    backend: Some(backend),
                    from: None,
                    to: Some(reason.to_string()),
                    detail: format!("failed: {e}"),
                });
                tracing::error!(service, backend = %backend, reason, error = %e, "could not abort the sockets to the backend");
            }
        }
    }

    /// Records one probe's per-backend metrics.
    pub fn probe(
        &self,
        service: &str,
        backend: &str,
        latency: &::metrics::Histogram,
        seconds: f64,
        evidence: &Evidence,
    ) {
        latency.record(seconds);
        if let Err(e) = &*evidence.0 {
            metrics::probe_failure(service, backend, e);
        }
    }
}

/// The gauge values a service last exported, to skip unchanged ones.
#[derive(Default, PartialEq)]
pub struct Gauges {
    active: Option<u8>,
    live: usize,
    backends: Vec<(Arc<str>, u8, &'static str, bool, bool)>,
}

impl Gauges {
    /// Exports `state`'s gauges where they differ from the last export.
    pub fn publish(&mut self, state: &ServiceState) {
        let table: Option<&VipTable> = state.table();
        let now = Gauges {
            active: state.active_priority(),
            live: state
                .backends()
                .filter(|b| b.is_live() && b.weight > 0)
                .count(),
            // Kept only to export them: without per-backend series, one copy of every
            // backend's name per service less.
            backends: state
                .backends()
                .filter(|_| metrics::per_backend())
                .map(|b| {
                    let up = state.is_managed()
                        && table.is_some_and(|t| t.backends.iter().any(|x| x.addr == b.key.addr));
                    (
                        b.name.clone(),
                        b.priority,
                        b.state_word(),
                        up,
                        b.breaker.is_open(),
                    )
                })
                .collect(),
        };
        if *self == now {
            return;
        }
        let name = &state.config().name;
        if (self.active, self.live) != (now.active, now.live) {
            metrics::service(name, now.active, now.live);
        }
        for b in &now.backends {
            if !self.backends.contains(b) {
                metrics::backend(name, &b.0, b.1, b.2, b.3, b.4);
            }
        }
        *self = now;
    }
}
