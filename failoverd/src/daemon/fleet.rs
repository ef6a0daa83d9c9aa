//! Applying the fleet's desired state to the running daemon, and the control API's fleet
//! requests (`drain --fleet`, `undrain --fleet`, `status --fleet`).
//!
//! The etcd side is `crate::fleet`; this file only joins fleet services to the local file
//! (like a reload: unchanged services untouched, a refused set leaves the old one running),
//! turns fleet drains into drains, and records what it did (event, metric, log, and
//! `state_dir/fleet.json` for a restart while etcd is down).

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use super::{
    api::{daemon_error, now_unix, DaemonApi},
    events::Event,
    service::{DrainChange, DrainError},
    ReloadReport,
};
use crate::{
    config::{self, Config, ConfigError},
    control::{
        Caller, ControlError, DrainReport, DrainRequest, FleetLinkReport, FleetReport,
        UndrainRequest,
    },
    decision::Drain,
    fleet::{agent::FleetTarget, FleetDrain, FleetLink, FleetState, FleetStore, Keys},
};

/// How long `drain --fleet` waits for this host to apply its own drain: 5 s.
const APPLY_WAIT: Duration = Duration::from_secs(5);

/// The daemon's fleet link and the file its fleet state is kept in.
pub struct FleetSide {
    link: Arc<FleetLink>,
    store: FleetStore,
    /// The fleet services running now, for `status` (which must not wait for an apply).
    names: Mutex<Vec<String>>,
}

/// The local file's config and the fleet state applied on top of it.
pub struct Joined {
    /// The config as the file says it.
    local: Config,
    /// What runs: the fleet services applied, the drains and revision last seen.
    applied: FleetState,
    /// The last state seen from etcd (its services may have been refused).
    desired: FleetState,
    /// The last service set refused, not tried again until it or the file changes.
    refused: Option<BTreeMap<String, String>>,
}

impl Joined {
    /// No fleet state yet: the file alone.
    pub fn local(local: Config) -> Joined {
        Joined {
            local,
            applied: FleetState::default(),
            desired: FleetState::default(),
            refused: None,
        }
    }
}

/// `local` with the fleet services of `state`, each checked like a config file: the first
/// error, located in its etcd key or in the local file.
pub fn join_state(local: &Config, state: &FleetState, keys: &Keys) -> Result<Config, ConfigError> {
    let mut fleet = Vec::with_capacity(state.services.len());
    for (name, text) in &state.services {
        let key = keys.service(name);
        let service = config::fleet::parse_service(&key, text)?;
        fleet.push((key, service));
    }
    config::fleet::join(local, &fleet)
}

fn not_fleet() -> ControlError {
    ControlError::Invalid(
        "this daemon is not in fleet mode: its config has no `fleet` section".to_owned(),
    )
}

impl DaemonApi {
    /// Puts the API in fleet mode: `local` is the file's config, `applied` the fleet state
    /// the daemon was started with (from `state_dir`).
    pub fn with_fleet(
        mut self,
        link: Arc<FleetLink>,
        store: FleetStore,
        local: Config,
        applied: FleetState,
    ) -> Self {
        crate::metrics::fleet_services(applied.services.len());
        self.fleet = Some(FleetSide {
            link,
            store,
            names: Mutex::new(applied.services.keys().cloned().collect()),
        });
        self.joined = tokio::sync::Mutex::new(Joined {
            local,
            desired: applied.clone(),
            applied,
            refused: None,
        });
        self
    }

    /// The link to etcd, in fleet mode.
    pub fn fleet_link(&self) -> Option<&Arc<FleetLink>> {
        self.fleet.as_ref().map(|f| &f.link)
    }

    /// Applies a file's config `new` joined with the fleet services running now.
    pub(super) async fn reload_joined(&self, new: Config) -> Result<ReloadReport, ControlError> {
        let mut j = self.joined.lock().await;
        let joined = match &self.fleet {
            None => new.clone(),
            Some(side) => join_state(&new, &j.applied, side.link.keys())
                .map_err(|e| ControlError::BadConfig(e.to_string()))?,
        };
        let report = self.handle.reload(joined).await.map_err(daemon_error)?;
        j.local = new;
        // A fleet set refused for conflicting with the old file may fit the new one.
        if self.fleet.is_some() && j.desired.services != j.applied.services {
            j.refused = None;
            let desired = j.desired.clone();
            self.apply_services(&mut j, &desired).await;
        }
        Ok(report)
    }

    /// Applies a desired state from etcd: services first (like a reload), then drains.
    pub async fn apply_fleet(&self, state: FleetState) {
        let Some(side) = &self.fleet else { return };
        let mut j = self.joined.lock().await;
        j.desired = state.clone();
        self.apply_services(&mut j, &state).await;
        j.applied.revision = state.revision;
        j.applied.drains = state.drains.clone();
        *super::lock(&side.names) = j.applied.services.keys().cloned().collect();
        crate::metrics::fleet_services(j.applied.services.len());
        self.apply_drains(&side.link, &state).await;
        if let Err(e) = side.store.save(&j.applied) {
            tracing::error!(error = %e, "fleet: could not keep the fleet state in state_dir; a restart while etcd is down would start without it");
        }
    }

    async fn apply_services(&self, j: &mut Joined, state: &FleetState) {
        let Some(side) = &self.fleet else { return };
        if state.services == j.applied.services || j.refused.as_ref() == Some(&state.services) {
            return;
        }
        let result = match join_state(&j.local, state, side.link.keys()) {
            Ok(joined) => self.handle.reload(joined).await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let revision = state.revision;
        let detail = match &result {
            Ok(r) => {
                j.applied.services = state.services.clone();
                j.refused = None;
                tracing::info!(revision, added = ?r.added, removed = ?r.removed, changed = ?r.changed, "fleet: services applied");
                format!(
                    "revision {revision}: added {:?}, removed {:?}, changed {:?}",
                    r.added, r.removed, r.changed
                )
            }
            Err(e) => {
                j.refused = Some(state.services.clone());
                tracing::error!(revision, error = %e, "fleet: services refused; the old fleet set keeps running");
                format!("revision {revision}: refused, the old fleet set keeps running: {e}")
            }
        };
        crate::metrics::fleet_apply(result.is_ok());
        self.handle.events().emit(Event {
            kind: "fleet",
            service: "",
            backend: None,
            from: None,
            to: Some(if result.is_ok() { "ok" } else { "error" }.to_string()),
            detail,
        });
    }

    /// Makes the fleet drains in force here what `state` says; leaves local drains alone.
    async fn apply_drains(&self, link: &FleetLink, state: &FleetState) {
        let current = self.handle.drains();
        for (service, backends) in &state.drains {
            for (backend, d) in backends {
                let want = Drain {
                    by: format!("{}@{}", d.by, d.host),
                    at_unix: d.at_unix,
                    reason: d.reason.clone(),
                    fleet: true,
                };
                if current.get(service).and_then(|b| b.get(backend)) == Some(&want) {
                    continue;
                }
                let change = DrainChange::Drain {
                    drain: want,
                    force: d.force,
                    terminate: d.terminate,
                };
                self.fleet_drain_change(link, service, backend, change)
                    .await;
            }
        }
        for (service, backends) in &current {
            for (backend, d) in backends {
                let wanted = state
                    .drains
                    .get(service)
                    .is_some_and(|b| b.contains_key(backend));
                if d.fleet && !wanted {
                    self.fleet_drain_change(link, service, backend, DrainChange::Undrain)
                        .await;
                }
            }
        }
    }

    async fn fleet_drain_change(
        &self,
        link: &FleetLink,
        service: &str,
        backend: &str,
        change: DrainChange,
    ) {
        let what = if matches!(change, DrainChange::Undrain) {
            "undrain"
        } else {
            "drain"
        };
        match self
            .handle
            .set_drain(&self.store, service, backend, change)
            .await
        {
            Ok(terminated) => tracing::info!(
                service,
                backend,
                host = link.host(),
                ?terminated,
                "fleet: {what} applied"
            ),
            // A service or backend this host does not have: the drain is for other hosts.
            Err(DrainError::UnknownService { .. }) => {}
            Err(DrainError::Refused(r)) if r.is_not_found() => {}
            Err(e) => {
                tracing::warn!(service, backend, error = %e, "fleet: {what} refused on this host");
                self.handle.events().emit(Event {
                    kind: "fleet",
                    service,
                    backend: Some(backend),
                    from: None,
                    to: Some("error".to_owned()),
                    detail: format!("fleet {what} refused on this host: {e}"),
                });
            }
        }
    }

    /// `drain --fleet`: checked against this host's services, written to etcd, and applied
    /// here before it returns (every other host applies it from its watch).
    pub(super) async fn fleet_drain(
        &self,
        caller: Caller,
        request: DrainRequest,
    ) -> Result<DrainReport, ControlError> {
        let side = self.fleet.as_ref().ok_or_else(not_fleet)?;
        self.known_backend(&request.service, &request.backend)
            .await?;
        let drain = FleetDrain {
            by: caller.user,
            host: side.link.host().to_owned(),
            at_unix: now_unix(),
            reason: request.reason,
            force: request.force,
            terminate: request.terminate,
        };
        let revision = side
            .link
            .put_drain(&request.service, &request.backend, &drain)
            .await
            .map_err(|e| ControlError::Failed(e.to_string()))?;
        self.await_applied(side, revision).await?;
        let here = self.handle.drains();
        match here.get(&request.service).and_then(|b| b.get(&request.backend)) {
            // Each host terminates as it applies the drain: no count to report from here.
            Some(d) if d.fleet => Ok(DrainReport::default()),
            _ => Err(ControlError::Failed(format!(
                "the fleet drain is in etcd (revision {revision}) but this host refused it (see `failoverd events`); `undrain --fleet` takes it back"
            ))),
        }
    }

    /// `undrain --fleet`: deleted from etcd, and undone here before it returns.
    pub(super) async fn fleet_undrain(
        &self,
        _caller: Caller,
        request: UndrainRequest,
    ) -> Result<(), ControlError> {
        let side = self.fleet.as_ref().ok_or_else(not_fleet)?;
        let deleted = side
            .link
            .delete_drain(&request.service, &request.backend)
            .await
            .map_err(|e| ControlError::Failed(e.to_string()))?;
        let Some(revision) = deleted else {
            return Err(ControlError::NotFound(format!(
                "no fleet drain of `{}` in service `{}`",
                request.backend, request.service
            )));
        };
        self.await_applied(side, revision).await
    }

    async fn await_applied(&self, side: &FleetSide, revision: i64) -> Result<(), ControlError> {
        if side.link.wait_applied(revision, APPLY_WAIT).await {
            Ok(())
        } else {
            Err(ControlError::Failed(format!(
                "written to etcd (revision {revision}), but this host did not apply it within {} s: its etcd session may have just ended (see `failoverd status`)",
                APPLY_WAIT.as_secs()
            )))
        }
    }

    async fn known_backend(&self, service: &str, backend: &str) -> Result<(), ControlError> {
        // The running services: the daemon keeps no second copy of their configs.
        let configs = self.handle.service_configs().await;
        let s = configs
            .iter()
            .find(|s| s.name == service)
            .ok_or_else(|| ControlError::NotFound(format!("no service named `{service}`")))?;
        // `name@ip:port` names one address of a hostname backend.
        let known = s.backends.iter().any(|b| {
            *b.name == *backend
                || backend
                    .strip_prefix(&*b.name)
                    .is_some_and(|rest| rest.starts_with('@'))
        });
        if known {
            Ok(())
        } else {
            Err(ControlError::NotFound(format!(
                "service `{service}` has no backend named `{backend}`"
            )))
        }
    }

    /// A plain `undrain` of a fleet drain would last only until the next fleet change:
    /// refused, naming the right command.
    pub(super) fn refuse_local_undrain_of_fleet_drain(
        &self,
        request: &UndrainRequest,
    ) -> Result<(), ControlError> {
        if self.fleet.is_none() {
            return Ok(());
        }
        match self
            .handle
            .drains()
            .get(&request.service)
            .and_then(|b| b.get(&request.backend))
        {
            Some(d) if d.fleet => Err(ControlError::Invalid(format!(
                "`{}` of `{}` is drained fleet-wide by {}: undrain it with --fleet",
                request.backend, request.service, d.by
            ))),
            _ => Ok(()),
        }
    }

    /// The fleet matrix, read from etcd now.
    pub(super) async fn fleet_report(&self) -> Result<FleetReport, ControlError> {
        let side = self.fleet.as_ref().ok_or_else(not_fleet)?;
        side.link
            .matrix()
            .await
            .map_err(|e| ControlError::Failed(e.to_string()))
    }

    /// The link's state for `status`, in fleet mode.
    pub(super) fn fleet_link_report(&self) -> Option<FleetLinkReport> {
        let side = self.fleet.as_ref()?;
        let s = side.link.status();
        Some(FleetLinkReport {
            host: side.link.host().to_owned(),
            connected: s.connected,
            revision: s.revision,
            services: super::lock(&side.names).clone(),
        })
    }
}

impl FleetTarget for DaemonApi {
    async fn apply(&self, state: FleetState) {
        self.apply_fleet(state).await;
    }

    async fn status(&self) -> Option<crate::control::StatusReport> {
        use crate::control::ControlHandler;
        match ControlHandler::status(self).await {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::debug!(error = %e, "fleet: no status for the host view");
                None
            }
        }
    }
}
