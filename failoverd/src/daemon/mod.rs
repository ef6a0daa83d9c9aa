//! The daemon: probes every backend, decides which are live and keeps each VIP's table current.
//!
//! ```text
//! prober (per backend) ──► service task (per VIP) ──► writer (one) ──► datapath
//!   probe results           hysteresis, breaker,        writes only
//!                           priorities, weights,        changed tables
//!                           drains
//! ```
//! [`start`] returns a [`Running`] daemon; its [`DaemonHandle`] answers status,
//! drain, failback, explain and reload (the control API calls it); [`run`] is
//! the same until a shutdown future resolves.

mod backend;
pub mod control;
pub mod drains;
pub mod events;
mod prober;
mod service;

use std::{
    collections::BTreeMap,
    future::Future,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use tokio::{
    sync::{mpsc, oneshot, watch, Semaphore},
    task::JoinHandle,
};

pub use drains::{DrainStore, Drains};
pub use service::{BackendStatus, ServiceStatus};

use crate::{
    config::{BackendAddress, Config, HealthConfig, HealthKind, ServiceConfig, StatusMatch},
    control::{ControlError, DrainInfo, ExplainReport, ReloadReport},
    datapath::{Datapath, DatapathError, IdAllocator, IdsExhausted, Vip, VipTable},
    health::{HttpCheck, Probe},
    reconcile::{run_writer, Writer, WriterCommand, WriterMessage},
    resolve::{self, ResolveError, Resolver, ResolverSettings},
};
use service::{Persist, ServiceEvent, ServiceTask, Shared};

/// Probes in flight at once, across all backends.
pub const MAX_PROBES_IN_FLIGHT: usize = 256;

/// Why the daemon could not start or answer.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The datapath failed.
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    /// No counter id was left.
    #[error(transparent)]
    Ids(#[from] IdsExhausted),
    /// The resolver could not be set up.
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    /// No service has that name.
    #[error("no service named `{name}`")]
    UnknownService {
        /// The name asked for.
        name: String,
    },
    /// A reload changed something only a restart can change.
    #[error("`{section}` changed: only a restart applies it (the running config is unchanged)")]
    NeedsRestart {
        /// The config section.
        section: &'static str,
    },
    /// The daemon is shutting down.
    #[error("the daemon is stopping")]
    Stopped,
}

/// A running service: its task, its stop switch, and the config it runs.
struct ServiceHandle {
    config: ServiceConfig,
    /// The VIP's id in the kernel's counters.
    vip_id: u32,
    events: mpsc::Sender<ServiceEvent>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

struct Inner {
    services: tokio::sync::Mutex<BTreeMap<String, ServiceHandle>>,
    config: Mutex<Config>,
    shared: Arc<Shared>,
    resolver: Mutex<Option<Resolver>>,
    drains: Mutex<Drains>,
}

/// A cheap, cloneable handle on a running daemon.
#[derive(Clone)]
pub struct DaemonHandle {
    inner: Arc<Inner>,
}

/// A running daemon.
pub struct Running<D> {
    handle: DaemonHandle,
    shutdown: watch::Sender<bool>,
    writer: JoinHandle<Writer<D>>,
}

/// Starts probing and managing every service of `config` on `datapath`.
///
/// Tables already in the datapath (pinned by an earlier run) are adopted: a
/// VIP's table is left exactly as it is until every one of its backends has
/// had a first verdict. VIPs in the datapath that the config does not name
/// are removed. `drains` (from `state_dir`) are applied from the start. DNS
/// never delays start-up: hostname backends join when their names resolve.
pub async fn start<D: Datapath + 'static>(
    config: &Config,
    datapath: D,
    drains: Drains,
) -> Result<Running<D>, DaemonError> {
    let writer = Writer::new(datapath)?;
    let adopted = writer.written().clone();
    let ids = IdAllocator::from_tables(adopted.values());
    let (writer_tx, writer_rx) = mpsc::channel(1024);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);

    for vip in adopted
        .keys()
        .filter(|vip| !config.services.iter().any(|s| s.vip() == **vip))
    {
        tracing::info!(vip = %vip, "pinned VIP is not in the config; removing it");
        writer_tx
            .send(WriterCommand::Remove(*vip).into())
            .await
            .map_err(|_| DaemonError::Stopped)?;
    }
    let shared = Arc::new(Shared {
        writer: writer_tx,
        probes: prober::ProbeHub::new(Arc::new(Semaphore::new(MAX_PROBES_IN_FLIGHT))),
        readiness: service::Readiness::default(),
        ids: Arc::new(Mutex::new(ids)),
        events: Arc::new(events::Events::default()),
    });
    let inner = Arc::new(Inner {
        services: tokio::sync::Mutex::new(BTreeMap::new()),
        config: Mutex::new(config.clone()),
        shared,
        resolver: Mutex::new(None),
        drains: Mutex::new(drains),
    });
    let handle = DaemonHandle { inner };
    {
        let mut services = handle.inner.services.lock().await;
        for service in &config.services {
            let started = handle.start_service(service, adopted.get(&service.vip()))?;
            services.insert(service.name.clone(), started);
        }
    }
    let writer = tokio::spawn(run_writer(writer, writer_rx, shutdown_rx));
    Ok(Running {
        handle,
        shutdown: shutdown_tx,
        writer,
    })
}

impl DaemonHandle {
    fn start_service(
        &self,
        service: &ServiceConfig,
        adopted: Option<&VipTable>,
    ) -> Result<ServiceHandle, DaemonError> {
        let shared = &self.inner.shared;
        let vip_id = match adopted {
            Some(t) => t.vip_id,
            None => shared.ids.lock().expect("id lock").allocate()?,
        };
        tracing::info!(
            service = %service.name,
            vip = %service.vip(),
            backends = service.backends.len(),
            detection_bound = ?service.detection_bound(),
            adopted = adopted.is_some(),
            "service loaded; worst-case detection time is fall × interval + timeout"
        );
        let (tx, rx) = mpsc::channel(1024);
        let (stop_tx, stop_rx) = watch::channel(false);
        let drains = self
            .inner
            .drains
            .lock()
            .expect("drains lock")
            .get(&service.name)
            .cloned()
            .unwrap_or_default();
        let mut task = ServiceTask::new(
            service.clone(),
            vip_id,
            adopted,
            drains,
            tx.clone(),
            Arc::clone(shared),
            stop_rx.clone(),
        );
        let mut tasks = Vec::new();
        for (index, backend) in service.backends.iter().enumerate() {
            match &backend.address {
                BackendAddress::Ip(addr) => task.set_addrs(index, &[*addr]),
                BackendAddress::Host { host, port } => {
                    let resolver = self.resolver()?;
                    tasks.push(watch_hostname(
                        resolver,
                        host.clone(),
                        *port,
                        index,
                        tx.clone(),
                        stop_rx.clone(),
                    ));
                }
            }
        }
        tasks.push(tokio::spawn(task.run(rx)));
        Ok(ServiceHandle {
            vip_id,
            config: service.clone(),
            events: tx,
            stop: stop_tx,
            tasks,
        })
    }

    /// The resolver, made on first use (only configs with hostnames need one).
    fn resolver(&self) -> Result<Resolver, DaemonError> {
        let mut resolver = self.inner.resolver.lock().expect("resolver lock");
        if let Some(r) = resolver.as_ref() {
            return Ok(r.clone());
        }
        let settings = &self.inner.config.lock().expect("config lock").resolver;
        let made = Resolver::new(&ResolverSettings {
            nameservers: settings.nameservers.clone(),
            min_ttl: settings.min_ttl,
            max_ttl: settings.max_ttl,
        })?;
        *resolver = Some(made.clone());
        Ok(made)
    }

    async fn sender(&self, service: &str) -> Result<mpsc::Sender<ServiceEvent>, DaemonError> {
        let services = self.inner.services.lock().await;
        services
            .get(service)
            .map(|s| s.events.clone())
            .ok_or_else(|| DaemonError::UnknownService {
                name: service.to_string(),
            })
    }

    /// Names of the services, in order.
    pub async fn services(&self) -> Vec<String> {
        self.inner.services.lock().await.keys().cloned().collect()
    }

    /// The config the daemon runs now.
    pub fn config(&self) -> Config {
        self.inner.config.lock().expect("config lock").clone()
    }

    /// Sends a service back to its best live priority (for `failback: manual`).
    pub async fn failback(&self, service: &str) -> Result<(), DaemonError> {
        let (reply, done) = oneshot::channel();
        self.sender(service)
            .await?
            .send(ServiceEvent::Failback { reply })
            .await
            .map_err(|_| DaemonError::Stopped)?;
        done.await.map_err(|_| DaemonError::Stopped)
    }

    /// A snapshot of every service, in name order.
    pub async fn status(&self) -> Result<Vec<ServiceStatus>, DaemonError> {
        // Asked of every service at once: one at a time, a busy daemon with thousands of
        // services answered in seconds (each answer waits its turn in a service's queue).
        let mut asks = tokio::task::JoinSet::new();
        for (i, name) in self.services().await.into_iter().enumerate() {
            let handle = self.clone();
            asks.spawn(async move { (i, handle.service_status(&name).await) });
        }
        let mut out = Vec::with_capacity(asks.len());
        while let Some(joined) = asks.join_next().await {
            let (i, answer) = joined.map_err(|_| DaemonError::Stopped)?;
            match answer {
                Ok(s) => out.push((i, s)),
                // Removed by a reload meanwhile.
                Err(DaemonError::UnknownService { .. } | DaemonError::Stopped) => {}
                Err(e) => return Err(e),
            }
        }
        out.sort_by_key(|(i, _)| *i);
        Ok(out.into_iter().map(|(_, s)| s).collect())
    }

    /// A snapshot of one service.
    pub async fn service_status(&self, service: &str) -> Result<ServiceStatus, DaemonError> {
        let (reply, answer) = oneshot::channel();
        self.sender(service)
            .await?
            .send(ServiceEvent::Status { reply })
            .await
            .map_err(|_| DaemonError::Stopped)?;
        answer.await.map_err(|_| DaemonError::Stopped)
    }

    /// The event feed.
    pub fn events(&self) -> &events::Events {
        &self.inner.shared.events
    }

    /// Every service's name and its VIP's counter id, without asking the services.
    pub async fn vip_ids(&self) -> Vec<(String, u32)> {
        let services = self.inner.services.lock().await;
        services
            .iter()
            .map(|(name, s)| (name.clone(), s.vip_id))
            .collect()
    }

    /// Whether every service has its first verdicts in (what readiness means).
    pub async fn ready(&self) -> bool {
        self.inner.shared.readiness.all_ready()
    }

    /// Where a connect to one VIP goes now.
    pub async fn explain(&self, vip: Vip) -> Result<ExplainReport, ControlError> {
        let name = {
            let services = self.inner.services.lock().await;
            services
                .values()
                .find(|s| s.config.vip() == vip)
                .map(|s| s.config.name.clone())
        };
        let Some(name) = name else {
            return Err(ControlError::NotFound(format!(
                "no service has the VIP {vip}"
            )));
        };
        let (reply, answer) = oneshot::channel();
        let sender = self
            .sender(&name)
            .await
            .map_err(|e| ControlError::NotFound(e.to_string()))?;
        sender
            .send(ServiceEvent::Explain { reply })
            .await
            .map_err(|_| stopping())?;
        answer.await.map_err(|_| stopping())
    }

    /// Drains (`info: Some`) or undrains (`None`) a backend; the change is
    /// persisted to `store` and in the kernel's table before this returns.
    pub async fn set_drain(
        &self,
        store: &DrainStore,
        service: &str,
        backend: &str,
        info: Option<DrainInfo>,
        force: bool,
    ) -> Result<(), ControlError> {
        // One drain change at a time: the file always holds a consistent set.
        let mut services = self.inner.services.lock().await;
        let Some(handle) = services.get_mut(service) else {
            return Err(ControlError::NotFound(format!(
                "no service named `{service}`"
            )));
        };
        let mut next = self.inner.drains.lock().expect("drains lock").clone();
        match &info {
            Some(i) => {
                next.entry(service.to_string())
                    .or_default()
                    .insert(backend.to_string(), i.clone());
            }
            None => {
                if let Some(s) = next.get_mut(service) {
                    s.remove(backend);
                    if s.is_empty() {
                        next.remove(service);
                    }
                }
            }
        }
        let (store, to_save) = (store.clone(), next.clone());
        let persist: Persist = Box::new(move || {
            store.save(&to_save).map_err(|e| {
                ControlError::Failed(format!("could not record the drain, nothing changed: {e}"))
            })
        });
        let (reply, answer) = oneshot::channel();
        let event = ServiceEvent::Drain {
            backend: backend.to_string(),
            info,
            force,
            persist,
            reply,
        };
        handle.events.send(event).await.map_err(|_| stopping())?;
        let result = answer.await.map_err(|_| stopping())?;
        if !matches!(
            result,
            Err(ControlError::NotFound(_) | ControlError::Invalid(_))
        ) {
            // Persisted (and applied, or being retried): the file is the truth now.
            *self.inner.drains.lock().expect("drains lock") = next;
        }
        result
    }

    /// Applies a new config: unchanged services keep their state and table,
    /// removed VIPs leave the datapath, changed and new services start as on
    /// a fresh start (a changed one adopts its current table, so no blip).
    pub async fn reload(&self, new: Config) -> Result<ReloadReport, DaemonError> {
        {
            let old = self.inner.config.lock().expect("config lock");
            if old.datapath != new.datapath {
                return Err(DaemonError::NeedsRestart {
                    section: "datapath",
                });
            }
            if old.control != new.control {
                return Err(DaemonError::NeedsRestart { section: "control" });
            }
            if old.metrics != new.metrics {
                return Err(DaemonError::NeedsRestart { section: "metrics" });
            }
            if old.resolver != new.resolver {
                return Err(DaemonError::NeedsRestart {
                    section: "resolver",
                });
            }
        }
        let mut report = ReloadReport::default();
        let mut services = self.inner.services.lock().await;
        let names: Vec<String> = services.keys().cloned().collect();
        let mut adopt: BTreeMap<String, Option<VipTable>> = BTreeMap::new();
        for name in names {
            let keep = new.services.iter().find(|s| s.name == name);
            if keep == Some(&services[&name].config) {
                report.unchanged.push(name);
                continue;
            }
            let handle = services.remove(&name).expect("listed");
            let last = stop_service(handle).await;
            match keep {
                Some(next) if last.as_ref().is_some_and(|t| t.vip == next.vip()) => {
                    adopt.insert(name.clone(), last);
                    report.changed.push(name);
                }
                _ => {
                    if let Some(table) = last {
                        self.inner
                            .shared
                            .writer
                            .send(WriterCommand::Remove(table.vip).into())
                            .await
                            .map_err(|_| DaemonError::Stopped)?;
                    }
                    if keep.is_some() {
                        report.changed.push(name);
                    } else {
                        report.removed.push(name);
                    }
                }
            }
        }
        for service in &new.services {
            if services.contains_key(&service.name) {
                continue;
            }
            let adopted = adopt.remove(&service.name).flatten();
            if adopted.is_none() && !report.changed.contains(&service.name) {
                report.added.push(service.name.clone());
            }
            let started = self.start_service(service, adopted.as_ref())?;
            services.insert(service.name.clone(), started);
        }
        *self.inner.config.lock().expect("config lock") = new;
        // Return only once the kernel holds the result: a removed VIP is no
        // longer translated when `failoverd reload` returns.
        let (reply, written) = oneshot::channel();
        self.inner
            .shared
            .writer
            .send(WriterMessage::Barrier(reply))
            .await
            .map_err(|_| DaemonError::Stopped)?;
        if written.await != Ok(true) {
            tracing::warn!("reload applied; some datapath writes failed and are being retried");
        }
        tracing::info!(added = ?report.added, removed = ?report.removed, changed = ?report.changed, unchanged = report.unchanged.len(), "config reloaded");
        Ok(report)
    }
}

fn stopping() -> ControlError {
    ControlError::Failed("the daemon is stopping".into())
}

/// Stops a service's task and returns the table it last sent.
async fn stop_service(handle: ServiceHandle) -> Option<VipTable> {
    let (reply, answer) = oneshot::channel();
    let last = match handle.events.send(ServiceEvent::Stop { reply }).await {
        Ok(()) => answer.await.ok().flatten(),
        Err(_) => None,
    };
    // Stops its probers and DNS watchers too.
    handle.stop.send(true).ok();
    for task in handle.tasks {
        if let Err(e) = task.await {
            tracing::error!(error = %e, "a service task ended abnormally");
        }
    }
    last
}

/// Forwards a hostname's resolved addresses to its service.
fn watch_hostname(
    resolver: Resolver,
    host: String,
    port: u16,
    config_index: usize,
    events: mpsc::Sender<ServiceEvent>,
    stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let (mut addrs, watcher) = resolve::watch(resolver, host, port, stop);
        loop {
            let set = addrs.borrow_and_update().clone();
            // Before the first answer there is nothing to probe; after a
            // failure the watcher keeps the last answer.
            if set.resolved {
                let addrs: Vec<SocketAddr> = set.addrs.clone();
                if events
                    .send(ServiceEvent::Addrs {
                        config_index,
                        addrs,
                    })
                    .await
                    .is_err()
                {
                    break;
                }
            }
            if addrs.changed().await.is_err() {
                break;
            }
        }
        watcher.abort();
    })
}

impl<D: Datapath + 'static> Running<D> {
    /// A handle for the control API and tests.
    pub fn handle(&self) -> DaemonHandle {
        self.handle.clone()
    }

    /// Sends a service back to its best live priority (for `failback: manual`).
    pub async fn failback(&self, service: &str) -> Result<(), DaemonError> {
        self.handle.failback(service).await
    }

    /// A snapshot of every service, in name order.
    pub async fn status(&self) -> Result<Vec<ServiceStatus>, DaemonError> {
        self.handle.status().await
    }

    /// A snapshot of one service.
    pub async fn service_status(&self, service: &str) -> Result<ServiceStatus, DaemonError> {
        self.handle.service_status(service).await
    }

    /// Stops every task and returns the datapath, untouched by the stop: its
    /// tables stay pinned and keep translating.
    pub async fn shutdown(self) -> D {
        let services = std::mem::take(&mut *self.handle.inner.services.lock().await);
        // Every service first, then the waiting: one by one, 10,000 services took seconds.
        for handle in services.values() {
            handle.stop.send(true).ok();
        }
        for (_, handle) in services {
            for task in handle.tasks {
                if let Err(e) = task.await {
                    tracing::error!(error = %e, "a daemon task ended abnormally");
                }
            }
        }
        // Receivers may all be gone already; the result does not matter.
        self.shutdown.send(true).ok();
        match self.writer.await {
            Ok(writer) => writer.into_datapath(),
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
}

/// Runs the daemon until `shutdown` resolves; returns the datapath.
pub async fn run<D: Datapath + 'static>(
    config: &Config,
    datapath: D,
    drains: Drains,
    shutdown: impl Future<Output = ()>,
) -> Result<D, DaemonError> {
    let running = start(config, datapath, drains).await?;
    shutdown.await;
    tracing::info!("shutting down; the datapath stays pinned and keeps translating");
    Ok(running.shutdown().await)
}

/// The probe a service's health config describes.
pub fn probe_for(health: &HealthConfig) -> Probe {
    match health.kind {
        HealthKind::Tcp => Probe::Tcp,
        HealthKind::Http => Probe::Http(HttpCheck {
            path: health.http.path.clone(),
            host: health.http.host.clone(),
            expect_status: match &health.http.expect_status {
                StatusMatch::Range(lo, hi) => vec![(*lo, *hi)],
                StatusMatch::List(codes) => codes.iter().map(|&c| (c, c)).collect(),
            },
            expect_body: health.http.expect_body.clone(),
        }),
    }
}
