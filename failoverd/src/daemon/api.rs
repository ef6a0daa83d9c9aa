//! The daemon's side of the control API: the one place that turns daemon answers into the
//! API's wire types and sentences (`status`, `explain`, `events`).
//!
//! It lives beside the daemon rather than in `control/` because the daemon serves the API
//! (`daemon::run` owns the control server): `control/` knows the protocol, the server and
//! the client, and nothing of the daemon.

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::PathBuf,
    sync::Mutex,
    time::{SystemTime, UNIX_EPOCH},
};

use super::{
    events::{Event, EventsAfter},
    service::{DrainChange, DrainError},
    DaemonError, DaemonHandle, DrainStore, ReloadReport,
};
use crate::{
    config::{self, ServiceConfig},
    control::{
        BackendReport, Caller, ControlError, ControlHandler, DrainInfo, DrainReport, DrainRequest,
        EventRecord, EventsReport, ExplainReport, FailbackRequest, KernelOutcomes, OutBackend,
        PassiveReport, ProbeReport, ReachableBackend, ServiceReport, StatusReport,
        TerminatedReport, UndrainRequest,
    },
    datapath::{CounterTotals, PinnedMaps, Protocol},
    decision::{Drain, Explanation, OutReason, PassiveStatus, ServiceStatus},
    health::HealthStatus,
};

/// How long `status` waits for the writer to catch up before it answers anyway.
const STATUS_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Answers the control API from a running daemon.
pub struct DaemonApi {
    pub(super) handle: DaemonHandle,
    pub(super) store: DrainStore,
    config_path: PathBuf,
    /// Kernel counters, read straight from the pinned maps (None with a fake datapath).
    counters: Option<Mutex<PinnedMaps>>,
    /// The link to the fleet's etcd, in fleet mode.
    pub(super) fleet: Option<super::fleet::FleetSide>,
    /// The config from the file and the fleet state applied on top of it: a reload of the
    /// file and a change from etcd both join the two, one at a time.
    pub(super) joined: tokio::sync::Mutex<super::fleet::Joined>,
}

impl DaemonApi {
    /// A handler for `handle`, persisting drains in `store`, reloading from `config_path`.
    pub fn new(
        handle: DaemonHandle,
        store: DrainStore,
        config_path: PathBuf,
        counters: Option<PinnedMaps>,
    ) -> Self {
        let local = handle.config();
        DaemonApi {
            handle,
            store,
            config_path,
            counters: counters.map(Mutex::new),
            fleet: None,
            joined: tokio::sync::Mutex::new(super::fleet::Joined::local(local)),
        }
    }

    /// The kernel's counters of `id`; `None` without pinned counters or when unreadable.
    fn kernel_counters(&self, id: u32) -> Option<CounterTotals> {
        let maps = self.counters.as_ref()?;
        match super::lock(maps).counters(id) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(id, error = %e, "could not read kernel counters");
                None
            }
        }
    }

    /// One service's report; `configs` is the running config's services by name.
    fn report(&self, s: ServiceStatus, configs: &HashMap<&str, &ServiceConfig>) -> ServiceReport {
        let service = configs.get(s.name.as_str());
        let mut backends: Vec<BackendReport> = s
            .backends
            .into_iter()
            .map(|b| {
                let counters = self.kernel_counters(b.id);
                BackendReport {
                    kernel_connects: counters.map_or(0, |c| c.connects),
                    kernel_outcomes: counters.map(|c| KernelOutcomes {
                        established: c.established,
                        connect_failures: c.connect_failures,
                        syn_timeouts: c.syn_timeouts,
                        diverted: c.diverted,
                    }),
                    name: b.name,
                    address: b.addr.to_string(),
                    state: b.state.to_string(),
                    weight: b.weight,
                    priority: b.priority,
                    in_table: b.in_table,
                    last_probe: b.last_probe.map(|p| ProbeReport {
                        ok: p.result.is_ok(),
                        detail: match &*p.result {
                            Ok(ok) => ok.detail.clone(),
                            Err(e) => format!("{}: {e}", e.reason()),
                        },
                        latency_ms: p.latency.as_secs_f64() * 1000.0,
                    }),
                    in_state_seconds: b.in_state_for.as_secs_f64(),
                    ejections: b.ejections,
                    drain: b.drain.map(drain_info),
                    passive: passive_report(&b.passive),
                }
            })
            .collect();
        // A backend whose name resolves to nothing shows as such, not as missing.
        for (name, address) in s.unresolved {
            let entry = service.and_then(|c| c.backends.iter().find(|b| *b.name == *name));
            backends.push(BackendReport {
                name,
                address,
                state: "unresolved".into(),
                weight: entry.map_or(0, |b| b.weight),
                priority: entry.map_or(0, |b| b.priority),
                in_table: false,
                last_probe: None,
                in_state_seconds: 0.0,
                ejections: 0,
                kernel_connects: 0,
                drain: None,
                passive: None,
                kernel_outcomes: None,
            });
        }
        let datapath_error = self.handle.write_failure(&s.vip).map(|f| f.to_string());
        ServiceReport {
            name: s.name,
            vip: s.vip.addr.to_string(),
            protocol: s.vip.protocol.to_string(),
            active_priority: s.active_priority,
            ready: s.ready && datapath_error.is_none(),
            panic: s.panic,
            split_brain: s.split_brain,
            datapath_error,
            on_all_down: service
                .map(|c| c.on_all_down.to_string())
                .unwrap_or_default(),
            failback: service.map(|c| c.failback.to_string()).unwrap_or_default(),
            backends,
        }
    }
}

/// A backend's passive health for status; `None` while the kernel has told nothing.
fn passive_report(p: &PassiveStatus) -> Option<PassiveReport> {
    if p.last_failure.is_none() && p.ejections == 0 {
        return None;
    }
    Some(PassiveReport {
        consecutive_failures: p.consecutive,
        last_failure: p.last_failure.map(|(_, kind)| kind.to_string()),
        last_failure_seconds_ago: p.last_failure.map(|(ago, _)| ago.as_secs_f64()),
        ejections: p.ejections,
        ejected: p.ejected,
    })
}

fn drain_info(d: Drain) -> DrainInfo {
    DrainInfo {
        by: d.by,
        at_unix: d.at_unix,
        reason: d.reason,
        fleet: d.fleet,
    }
}

pub(super) fn daemon_error(e: DaemonError) -> ControlError {
    match e {
        DaemonError::UnknownService { .. } | DaemonError::UnknownVip { .. } => {
            ControlError::NotFound(e.to_string())
        }
        DaemonError::NeedsRestart { .. } | DaemonError::AmbiguousVip { .. } => {
            ControlError::Invalid(e.to_string())
        }
        other => ControlError::Failed(other.to_string()),
    }
}

fn drain_error(e: DrainError) -> ControlError {
    match &e {
        DrainError::Refused(r) if r.is_not_found() => ControlError::NotFound(e.to_string()),
        DrainError::UnknownService { .. } => ControlError::NotFound(e.to_string()),
        DrainError::Refused(_) => ControlError::Invalid(e.to_string()),
        DrainError::Persist(source) => ControlError::Failed(format!("{e}: {source}")),
        DrainError::NotTerminated(source) => ControlError::Failed(format!("{e}: {source}")),
        DrainError::NotWritten | DrainError::Stopped => ControlError::Failed(e.to_string()),
    }
}

/// Why a backend is out, as `explain` says it.
fn out_sentence(reason: &OutReason) -> String {
    match reason {
        OutReason::Drained(d) => format!(
            "drained by {}{}",
            d.by,
            d.reason
                .as_ref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        ),
        OutReason::Ejected { ejections: 1 } => {
            "ejected by the breaker (first ejection)".to_string()
        }
        OutReason::Ejected { ejections } => {
            format!("ejected by the breaker ({ejections} ejections)")
        }
        OutReason::PassiveEjected {
            consecutive,
            kind,
            ejections,
        } => format!(
            "ejected by passive health: the kernel saw {consecutive} connects in a row fail{} ({})",
            kind.map(|k| format!(" ({k})")).unwrap_or_default(),
            match ejections {
                // A first passive ejection is a strike: no breaker period, only `rise`.
                0 => "back after rise passing probes".to_string(),
                1 => "first ejection".to_string(),
                n => format!("{n} ejections"),
            }
        ),
        OutReason::Unknown => "unknown: no verdict yet".to_string(),
        OutReason::Unhealthy(Some(evidence)) => format!("unhealthy: {evidence}"),
        OutReason::Unhealthy(None) => HealthStatus::Unhealthy.word().to_string(),
        OutReason::WeightZero => "weight 0".to_string(),
        OutReason::Standby { priority, active } => {
            format!("standby: priority {priority} while priority {active} takes connections")
        }
        OutReason::SplitBrain { kept: Some(kept) } => {
            format!("split brain: it answers primary too; connections stay on {kept}")
        }
        OutReason::SplitBrain { kept: None } => {
            "split brain: it answers primary too, and nothing says which is the real primary"
                .to_string()
        }
        OutReason::NotManagedYet => {
            "not managed yet: waiting for every backend's first verdict".to_string()
        }
        OutReason::NotInTable => "not in the table".to_string(),
    }
}

fn explain_report(e: Explanation, datapath_error: Option<String>) -> ExplainReport {
    ExplainReport {
        datapath_error,
        vip: e.vip.addr.to_string(),
        service: e.service,
        active_priority: e.active_priority,
        refused: e.refused,
        panic: e.panic,
        reachable: e
            .reachable
            .into_iter()
            .map(|(name, addr, share_percent)| ReachableBackend {
                name,
                address: addr.to_string(),
                share_percent,
            })
            .collect(),
        out: e
            .out
            .into_iter()
            .map(|(name, addr, reason)| OutBackend {
                name,
                address: addr.to_string(),
                reason: out_sentence(&reason),
            })
            .collect(),
    }
}

fn events_report(after: EventsAfter) -> EventsReport {
    EventsReport {
        events: after
            .events
            .into_iter()
            .map(|e| EventRecord {
                seq: e.seq,
                at_unix_ms: e.at_unix_ms,
                kind: e.kind.to_string(),
                service: e.service,
                backend: e.backend,
                from: e.from,
                to: e.to,
                detail: e.detail,
            })
            .collect(),
        next: after.next,
    }
}

fn reload_report(r: ReloadReport) -> crate::control::ReloadReport {
    crate::control::ReloadReport {
        added: r.added,
        removed: r.removed,
        changed: r.changed,
        unchanged: r.unchanged,
    }
}

pub(super) fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl ControlHandler for DaemonApi {
    async fn status(&self) -> Result<StatusReport, ControlError> {
        let services = self.handle.status().await.map_err(daemon_error)?;
        // What the kernel holds, not what is on its way: every table decided before the
        // snapshot above is written (or known failing) before the report is made. Bounded,
        // so a writer stuck on a failing datapath cannot hold status up.
        if tokio::time::timeout(STATUS_WAIT, self.handle.barrier())
            .await
            .is_err()
        {
            tracing::debug!("status: the writer did not catch up within {STATUS_WAIT:?}");
        }
        // One copy of the config and one index for the whole report: per service, they made
        // `status` quadratic (minutes at 10,000 services).
        let config = self.handle.service_configs().await;
        let configs: HashMap<&str, &ServiceConfig> =
            config.iter().map(|c| (c.name.as_str(), &**c)).collect();
        Ok(StatusReport {
            version: env!("CARGO_PKG_VERSION").to_string(),
            services: services
                .into_iter()
                .map(|s| self.report(s, &configs))
                .collect(),
            fleet: self.fleet_link_report(),
        })
    }

    async fn drain(
        &self,
        caller: Caller,
        request: DrainRequest,
    ) -> Result<DrainReport, ControlError> {
        if request.fleet {
            return self.fleet_drain(caller, request).await;
        }
        let change = DrainChange::Drain {
            drain: Drain {
                by: caller.user,
                at_unix: now_unix(),
                reason: request.reason,
                fleet: false,
            },
            force: request.force,
            terminate: request.terminate,
        };
        let terminated = self
            .handle
            .set_drain(&self.store, &request.service, &request.backend, change)
            .await
            .map_err(drain_error)?;
        Ok(DrainReport {
            terminated: terminated.map(|t| TerminatedReport {
                tcp: t.tcp,
                udp: t.udp,
            }),
        })
    }

    async fn undrain(&self, caller: Caller, request: UndrainRequest) -> Result<(), ControlError> {
        if request.fleet {
            return self.fleet_undrain(caller, request).await;
        }
        self.refuse_local_undrain_of_fleet_drain(&request)?;
        self.handle
            .set_drain(
                &self.store,
                &request.service,
                &request.backend,
                DrainChange::Undrain,
            )
            .await
            .map(drop)
            .map_err(drain_error)
    }

    async fn failback(
        &self,
        _caller: Caller,
        request: FailbackRequest,
    ) -> Result<(), ControlError> {
        self.handle
            .failback(&request.service)
            .await
            .map_err(daemon_error)
    }

    async fn reload(&self, caller: Caller) -> Result<crate::control::ReloadReport, ControlError> {
        tracing::info!(by = %caller.user, path = %self.config_path.display(), "reload requested");
        // Parsing is CPU work on untrusted-size input: never on an async worker.
        let loaded = config::load_async(&self.config_path).await;
        let result = match loaded {
            Ok(new) => self.reload_joined(new).await.map(reload_report),
            Err(e) => Err(ControlError::BadConfig(e.to_string())),
        };
        if let Err(e) = &result {
            tracing::error!(error = %e, "reload refused: the running config is unchanged");
        }
        crate::metrics::reload(result.is_ok());
        let detail = match &result {
            Ok(r) => format!(
                "by {}: added {:?}, removed {:?}, changed {:?}",
                caller.user, r.added, r.removed, r.changed
            ),
            Err(e) => format!("by {}: refused: {e}", caller.user),
        };
        self.handle.events().emit(Event {
            kind: "reload",
            service: "",
            backend: None,
            from: None,
            to: Some(if result.is_ok() { "ok" } else { "error" }.to_string()),
            detail,
        });
        result
    }

    async fn fleet(&self) -> Result<crate::control::FleetReport, ControlError> {
        self.fleet_report().await
    }

    async fn events(&self, after: u64, wait: bool) -> Result<EventsReport, ControlError> {
        // Under the client's 10 s request timeout, with room to spare.
        const HOLD: std::time::Duration = std::time::Duration::from_secs(5);
        Ok(events_report(if wait {
            self.handle.events().wait_after(after, HOLD).await
        } else {
            self.handle.events().after(after)
        }))
    }

    async fn explain(
        &self,
        vip: String,
        protocol: Option<String>,
    ) -> Result<ExplainReport, ControlError> {
        let addr: SocketAddr = vip.parse().map_err(|_| {
            ControlError::Invalid(format!(
                "`{vip}` is not a VIP: expected ip:port ([ipv6]:port)"
            ))
        })?;
        let protocol: Option<Protocol> = match protocol.as_deref() {
            None => None,
            Some(p) => Some(p.parse().map_err(ControlError::Invalid)?),
        };
        let explanation = self
            .handle
            .explain(addr, protocol)
            .await
            .map_err(daemon_error)?;
        let failure = self.handle.write_failure(&explanation.vip);
        Ok(explain_report(explanation, failure.map(|f| f.to_string())))
    }
}
