//! `daemon::run`: the whole daemon — lock, datapath, services, writer, control server,
//! metrics server, SIGHUP reloads, readiness and kernel-counter export — until shutdown.
//!
//! Every task stops on one shutdown signal (mini-redis's shape); `cli/run.rs` only parses
//! arguments and calls [`run`].

use std::{future::Future, path::PathBuf, sync::Arc, time::Duration};

use super::{
    api::DaemonApi,
    drains::DrainStoreError,
    lock::{DaemonLock, LockError},
    start, DaemonError, DaemonHandle, DrainStore,
};
use crate::{
    config::Config,
    control::{self, Caller, ControlHandler},
    datapath::{Datapath, DatapathError, PinnedMaps},
};

/// Why the daemon stopped with an error (nothing live was changed when it stopped early).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Another daemon holds the datapath or the state directory.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// The datapath could not be set up.
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    /// The daemon could not start.
    #[error(transparent)]
    Daemon(#[from] DaemonError),
    /// The drains in `state_dir` could not be read: refusing to guess which backends are drained.
    #[error(transparent)]
    Drains(#[from] DrainStoreError),
    /// The metrics listener could not be set up.
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
    /// The control socket could not be set up.
    #[error(transparent)]
    Control(#[from] control::server::ServerError),
    /// `state_dir/fleet.json` could not be read: refusing to guess the fleet state.
    #[error(transparent)]
    Fleet(#[from] crate::fleet::FleetError),
    /// The signal handlers could not be set up.
    #[error("setting up {what}: {source}")]
    Setup {
        /// What.
        what: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// The datapath as the daemon opened it.
pub struct Opened<D> {
    /// What the writer writes through.
    pub datapath: D,
    /// Whether the kernel's counters are pinned under `datapath.pin_dir` (false for a fake).
    pub pinned_counters: bool,
}

/// Runs the daemon on `config` (read from `config_path`, which reloads re-read) until
/// `shutdown` resolves; returns the datapath, still pinned and translating.
///
/// The locks are taken before anything live is touched: a second daemon on the same
/// `pin_dir` or `state_dir` stops with an error naming the first, before it binds a port.
pub async fn run<D, O, S>(
    config: Config,
    config_path: PathBuf,
    open: O,
    shutdown: S,
) -> Result<D, RunError>
where
    D: Datapath + 'static,
    O: FnOnce(&Config) -> Result<Opened<D>, DatapathError>,
    S: Future<Output = ()>,
{
    let pin_dir = config.datapath.pin_dir.clone();
    let mut lock = DaemonLock::acquire(&config.control.state_dir, &pin_dir)?;
    let store = DrainStore::new(&config.control.state_dir);
    let drains = store.load()?;
    // The recorder first: what the daemon records while starting must not be lost.
    let prometheus = crate::metrics::install()?;
    crate::metrics::set_per_backend(config.metrics.per_backend);
    let metrics_listener = crate::metrics::bind(config.metrics.listen).await?;
    let Opened {
        datapath,
        pinned_counters,
    } = open(&config)?;
    // A first start created the pin directory just now.
    lock.lock_pin_dir(&pin_dir)?;
    let counters = || -> Result<Option<PinnedMaps>, DatapathError> {
        pinned_counters
            .then(|| PinnedMaps::open(&pin_dir))
            .transpose()
    };
    let api_counters = counters()?;
    let exporter_counters = counters()?;
    // Fleet mode starts from the fleet state kept in state_dir: the same fleet services as
    // before the restart, whether or not etcd answers now.
    let mut refused_at_start = None;
    let fleet = match &config.fleet {
        None => None,
        Some(section) => {
            let fleet_store = crate::fleet::FleetStore::new(&config.control.state_dir);
            let mut saved = fleet_store.load()?;
            let link = crate::fleet::FleetLink::new(section.clone(), saved.revision);
            let joined = match super::fleet::join_state(&config, &saved, link.keys()) {
                Ok(joined) => joined,
                Err(e) => {
                    tracing::error!(error = %e, "fleet: the saved fleet services do not fit the config file; starting without them");
                    crate::metrics::fleet_apply(false);
                    saved.services.clear();
                    refused_at_start = Some(e.to_string());
                    config.clone()
                }
            };
            Some((link, fleet_store, saved, joined))
        }
    };
    let first = fleet.as_ref().map_or(&config, |(.., joined)| joined);
    let running = start(first, datapath, drains).await?;
    let handle = running.handle();
    let mut api = DaemonApi::new(handle.clone(), store, config_path, api_counters);
    let mut agent_start = None;
    if let Some((link, fleet_store, saved, _)) = fleet {
        api = api.with_fleet(
            Arc::clone(&link),
            fleet_store,
            config.clone(),
            saved.clone(),
        );
        agent_start = Some((link, saved));
    }
    if let Some(detail) = refused_at_start {
        handle.events().emit(super::events::Event {
            kind: "fleet",
            service: "",
            backend: None,
            from: None,
            to: Some("error".to_owned()),
            detail: format!("at start: the saved fleet services were refused, running without them until etcd answers: {detail}"),
        });
    }
    let api = Arc::new(api);
    let socket = config.control.socket.clone();
    let probe_cycle = longest_probe_cycle(&config);
    // The daemon keeps its own copy; at 10,000 services this one is megabytes.
    drop(config);
    let listener = control::server::bind(&socket)?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(control::server::serve(
        listener,
        Arc::clone(&api),
        stop_rx.clone(),
    ));
    let hup = tokio::spawn(reload_on_sighup(Arc::clone(&api), stop_rx.clone()));
    let ready = tokio::spawn(notify_when_ready(handle.clone(), stop_rx.clone()));
    let readiness = handle.clone();
    let metrics = tokio::spawn(crate::metrics::serve(
        metrics_listener,
        prometheus,
        move || {
            let ready = readiness.ready();
            async move { ready }
        },
        stop_rx.clone(),
    ));
    let watchdog = tokio::spawn(pet_watchdog(handle.clone(), probe_cycle, stop_rx.clone()));
    let fleet_agent = tokio::spawn({
        let (api, stop) = (Arc::clone(&api), stop_rx.clone());
        async move {
            if let Some((link, saved)) = agent_start {
                crate::fleet::agent::run(link, api, saved, stop).await;
            }
        }
    });
    let kernel = tokio::spawn(export_kernel_counters(handle, exporter_counters, stop_rx));

    shutdown.await;
    notify(&[sd_notify::NotifyState::Stopping]);
    stop_tx.send(true).ok();
    for (what, task) in [
        ("metrics listener", metrics),
        ("control server", server),
        ("SIGHUP handler", hup),
        ("readiness notifier", ready),
        ("watchdog", watchdog),
        ("kernel counter export", kernel),
        ("fleet agent", fleet_agent),
    ] {
        if let Err(e) = task.await {
            tracing::error!(task = what, error = %e, "a daemon task ended abnormally");
        }
    }
    if let Err(e) = std::fs::remove_file(&socket) {
        tracing::warn!(socket = %socket.display(), error = %e, "could not remove the control socket");
    }
    tracing::info!("shutting down; the datapath stays pinned and keeps translating");
    let datapath = running.shutdown().await;
    drop(lock);
    Ok(datapath)
}

/// Exports the kernel's per-CPU counters (summed) as Prometheus counters, every second.
async fn export_kernel_counters(
    handle: DaemonHandle,
    maps: Option<PinnedMaps>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let Some(maps) = maps else { return };
    loop {
        // Rejections per VIP, from the daemon's service list: no service is asked anything.
        for (name, vip_id) in handle.vip_ids().await {
            let c = maps.counters(vip_id).unwrap_or_default();
            crate::metrics::kernel_rejections(&name, c.rejected);
            crate::metrics::kernel_errors(
                &name,
                [c.no_sock_storage, c.bad_table, c.family_mismatch],
            );
        }
        // Connects per backend need each service's backend ids: only when they are exported.
        if crate::metrics::per_backend() {
            for service in handle.status().await.unwrap_or_default() {
                for backend in &service.backends {
                    match maps.counters(backend.id) {
                        Ok(c) => {
                            crate::metrics::kernel_connects(
                                &service.name,
                                &backend.name,
                                c.connects,
                            );
                            crate::metrics::kernel_outcomes(&service.name, &backend.name, &c);
                        }
                        Err(e) => {
                            tracing::debug!(backend = %backend.name, error = %e, "kernel counters unreadable")
                        }
                    }
                }
            }
        }
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Tells systemd (Type=notify) the daemon is ready once every service serves what its
/// verdicts allow: before that, a restart would only be adopting tables.
async fn notify_when_ready(handle: DaemonHandle, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        if handle.ready() {
            tracing::info!("every service has its first verdicts: ready");
            notify(&[sd_notify::NotifyState::Ready]);
            return;
        }
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
}

/// The longest `interval + timeout` of any service: a probe loop that has not finished a
/// probe in twice that is stuck.
fn longest_probe_cycle(config: &Config) -> Duration {
    config
        .services
        .iter()
        .map(|s| s.health.interval.saturating_add(s.health.timeout))
        .max()
        .unwrap_or_default()
}

/// Sends `WATCHDOG=1` to systemd (`WatchdogSec=`) at half its period, but only while the
/// daemon really makes progress: the writer answers a barrier in time, and the probe loops
/// keep finishing probes. A wedged daemon stops petting and systemd restarts it; the pinned
/// datapath keeps serving meanwhile.
async fn pet_watchdog(
    handle: DaemonHandle,
    probe_cycle: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let Some(period) = sd_notify::watchdog_enabled() else {
        return;
    };
    let every = period / 2;
    tracing::info!(period = %humantime::format_duration(period), "systemd watchdog enabled");
    let stuck_after = probe_cycle.saturating_mul(2).max(period);
    let (mut probes, _) = handle.probe_progress();
    let mut last_probe = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(every) => {}
        }
        let writer = tokio::time::timeout(every, handle.barrier()).await;
        let (done, targets) = handle.probe_progress();
        if done > probes {
            last_probe = tokio::time::Instant::now();
        }
        probes = done;
        let probing = targets == 0 || last_probe.elapsed() <= stuck_after;
        match writer {
            Ok(Ok(_)) if probing => notify(&[sd_notify::NotifyState::Watchdog]),
            Ok(Ok(_)) => {
                tracing::error!(since = ?last_probe.elapsed(), "watchdog not petted: no probe has finished")
            }
            _ => tracing::error!("watchdog not petted: the datapath writer does not answer"),
        }
    }
}

fn notify(state: &[sd_notify::NotifyState<'_>]) {
    // A no-op outside systemd (no NOTIFY_SOCKET); a failure is worth a log line only.
    if let Err(e) = sd_notify::notify(state) {
        tracing::warn!(error = %e, "could not notify systemd");
    }
}

/// SIGHUP reloads the config like `failoverd reload`; an invalid one is logged and changes
/// nothing.
async fn reload_on_sighup(api: Arc<DaemonApi>, mut stop: tokio::sync::watch::Receiver<bool>) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(hup) => hup,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGHUP; use failoverd reload");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            got = hup.recv() => if got.is_none() { return },
        }
        let caller = Caller {
            user: "SIGHUP".into(),
            pid: 0,
        };
        // A refusal is already logged, counted and turned into an event by the reload.
        if let Ok(report) = api.reload(caller).await {
            tracing::info!(
                added = ?report.added,
                removed = ?report.removed,
                changed = ?report.changed,
                "SIGHUP: config reloaded"
            );
        }
    }
}

/// Resolves on the first SIGTERM or SIGINT.
pub fn stop_signal() -> Result<impl Future<Output = ()>, RunError> {
    use tokio::signal::unix::{signal, SignalKind};
    let setup = |source| RunError::Setup {
        what: "signal handlers",
        source,
    };
    let mut term = signal(SignalKind::terminate()).map_err(setup)?;
    let mut int = signal(SignalKind::interrupt()).map_err(setup)?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM"),
            _ = int.recv() => tracing::info!("SIGINT"),
        }
    })
}
