//! The daemon's side of the control API: turns requests into calls on the running daemon.

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::PathBuf,
    sync::Mutex,
    time::{SystemTime, UNIX_EPOCH},
};

use super::{DaemonError, DaemonHandle, DrainStore, ServiceStatus};
use crate::control::EventsReport;
use crate::{
    config,
    control::{
        BackendReport, Caller, ControlError, ControlHandler, DrainInfo, DrainRequest,
        ExplainReport, FailbackRequest, ProbeReport, ReloadReport, ServiceReport, StatusReport,
        UndrainRequest,
    },
    datapath::{PinnedMaps, Protocol, Vip},
};

/// Answers the control API from a running daemon.
pub struct DaemonControl {
    handle: DaemonHandle,
    store: DrainStore,
    config_path: PathBuf,
    /// Kernel counters, read straight from the pinned maps (None with a fake datapath).
    counters: Option<Mutex<PinnedMaps>>,
}

impl DaemonControl {
    /// A handler for `handle`, persisting drains in `store`, reloading from `config_path`.
    pub fn new(
        handle: DaemonHandle,
        store: DrainStore,
        config_path: PathBuf,
        counters: Option<PinnedMaps>,
    ) -> Self {
        DaemonControl {
            handle,
            store,
            config_path,
            counters: counters.map(Mutex::new),
        }
    }

    fn kernel_connects(&self, id: u32) -> u64 {
        let Some(maps) = &self.counters else { return 0 };
        match maps.lock().expect("counters lock").counters(id) {
            Ok(c) => c.connects,
            Err(e) => {
                tracing::warn!(id, error = %e, "could not read kernel counters");
                0
            }
        }
    }

    /// One service's report; `configs` is the running config's services by name.
    fn report(
        &self,
        s: ServiceStatus,
        configs: &HashMap<&str, &crate::config::ServiceConfig>,
    ) -> ServiceReport {
        let service = configs.get(s.name.as_str());
        ServiceReport {
            name: s.name,
            vip: s.vip.addr.to_string(),
            protocol: s.vip.protocol.to_string(),
            active_priority: s.active_priority,
            ready: s.ready,
            on_all_down: service
                .map(|c| c.on_all_down.to_string())
                .unwrap_or_default(),
            failback: service.map(|c| c.failback.to_string()).unwrap_or_default(),
            backends: s
                .backends
                .into_iter()
                .map(|b| BackendReport {
                    kernel_connects: self.kernel_connects(b.id),
                    name: b.name,
                    address: b.addr.to_string(),
                    state: b.state.to_string(),
                    weight: b.weight,
                    priority: b.priority,
                    in_table: b.in_table,
                    last_probe: b.last_probe.map(|(outcome, latency)| ProbeReport {
                        ok: outcome.is_ok(),
                        detail: outcome.unwrap_or_else(|e| e),
                        latency_ms: latency.as_secs_f64() * 1000.0,
                    }),
                    in_state_seconds: b.in_state_for.as_secs_f64(),
                    ejections: b.ejections,
                    drain: b.drain,
                })
                .collect(),
        }
    }
}

fn daemon_error(e: DaemonError) -> ControlError {
    match e {
        DaemonError::UnknownService { .. } => ControlError::NotFound(e.to_string()),
        DaemonError::NeedsRestart { .. } => ControlError::Invalid(e.to_string()),
        other => ControlError::Failed(other.to_string()),
    }
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl ControlHandler for DaemonControl {
    async fn status(&self) -> Result<StatusReport, ControlError> {
        let services = self.handle.status().await.map_err(daemon_error)?;
        // One copy of the config and one index for the whole report: per service, they made
        // `status` quadratic (minutes at 10,000 services).
        let config = self.handle.config();
        let configs: HashMap<&str, &crate::config::ServiceConfig> = config
            .services
            .iter()
            .map(|c| (c.name.as_str(), c))
            .collect();
        Ok(StatusReport {
            version: env!("CARGO_PKG_VERSION").to_string(),
            services: services
                .into_iter()
                .map(|s| self.report(s, &configs))
                .collect(),
        })
    }

    async fn drain(&self, caller: Caller, request: DrainRequest) -> Result<(), ControlError> {
        let info = DrainInfo {
            by: caller.user,
            at_unix: now_unix(),
            reason: request.reason,
        };
        self.handle
            .set_drain(
                &self.store,
                &request.service,
                &request.backend,
                Some(info),
                request.force,
            )
            .await
    }

    async fn undrain(&self, _caller: Caller, request: UndrainRequest) -> Result<(), ControlError> {
        self.handle
            .set_drain(&self.store, &request.service, &request.backend, None, true)
            .await
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

    async fn reload(&self, caller: Caller) -> Result<ReloadReport, ControlError> {
        tracing::info!(by = %caller.user, path = %self.config_path.display(), "reload requested");
        let result = match config::load(&self.config_path) {
            Ok(new) => self.handle.reload(new).await.map_err(daemon_error),
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
        let to = Some(if result.is_ok() { "ok" } else { "error" }.to_string());
        self.handle.events().emit(super::events::Event {
            kind: "reload",
            service: "",
            backend: None,
            from: None,
            to,
            detail,
        });
        result
    }

    async fn events(&self, after: u64, wait: bool) -> Result<EventsReport, ControlError> {
        // Under the client's 10 s request timeout, with room to spare.
        const HOLD: std::time::Duration = std::time::Duration::from_secs(5);
        Ok(if wait {
            self.handle.events().wait_after(after, HOLD).await
        } else {
            self.handle.events().after(after)
        })
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
        let protocol: Protocol = match protocol.as_deref() {
            None => Protocol::Tcp,
            Some(p) => p.parse().map_err(ControlError::Invalid)?,
        };
        self.handle.explain(Vip { addr, protocol }).await
    }
}
