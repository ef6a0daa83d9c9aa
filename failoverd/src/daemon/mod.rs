//! The daemon: probes every backend, decides which are live and keeps each VIP's table current.
//!
//! ```text
//! prober (per target) ─┐
//! DNS watcher ─────────┼─► service task (per VIP) ──► writer (one) ──► datapath
//! operator (control) ──┘    shell around the pure     writes only
//!                           decision core; one        changed tables
//!                           observer records
//! ```
//! [`run`] owns every task — services, writer, control server, metrics server, SIGHUP
//! reloads, readiness and kernel-counter export — until its shutdown future resolves.
//! [`start`] starts the decision side alone (what tests drive with a fake datapath and a
//! scripted health check); its [`DaemonHandle`] answers status, drain, failback, explain
//! and reload.

pub mod api;
pub mod drains;
pub mod events;
pub mod fleet;
mod hostname;
mod inbox;
pub mod lock;
mod observer;
mod operator;
mod passive;
pub mod prober;
mod readiness;
mod reload;
pub mod run;
mod service;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex, PoisonError},
};

use tokio::{
    sync::{mpsc, oneshot, watch, Semaphore},
    task::JoinHandle,
};

pub use drains::{DrainStore, Drains};
pub use reload::ReloadReport;
pub use run::run;
pub use service::{DrainChange, DrainError};

use crate::{
    config::{BackendAddress, Config, ServiceConfig},
    datapath::{Datapath, DatapathError, IdAllocator, IdsExhausted, Protocol, VipTable},
    decision::{ServiceState, ServiceStatus},
    health::{HealthCheck, NetworkCheck},
    reconcile::{run_writer, WriteFailure, Writer, WriterCommand},
    resolve::{ResolveError, Resolver, ResolverSettings},
};
use service::{Message, ServiceTask, Shared};

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
    /// No service has that VIP.
    #[error("no service has the VIP {addr}{}", protocol.map(|p| format!(" ({p})")).unwrap_or_default())]
    UnknownVip {
        /// The address asked for.
        addr: SocketAddr,
        /// The protocol asked for, if any.
        protocol: Option<Protocol>,
    },
    /// Both a TCP and a UDP service have that address.
    #[error("both a tcp and a udp service have the VIP {addr}: say which with --protocol tcp|udp")]
    AmbiguousVip {
        /// The address asked for.
        addr: SocketAddr,
    },
    /// A reload changed something only a restart can change.
    #[error("`{section}` changed: only a restart applies it (the running config is unchanged)")]
    NeedsRestart {
        /// The config section.
        section: &'static str,
    },
    /// The daemon is stopping.
    #[error("the daemon is stopping")]
    Stopped,
}

/// A running service: its channel, its stop switch, its tasks and the config it runs.
struct ServiceHandle {
    /// The same allocation the service's decision core holds.
    config: Arc<ServiceConfig>,
    /// The VIP's id in the kernel's counters.
    vip_id: u32,
    tx: inbox::Sender,
    /// Stops its DNS watchers (`None` without hostname backends: a watch channel is a few
    /// hundred bytes, times every service). The task itself stops on `Message::Stop` or the
    /// daemon-wide [`Inner::stopping`].
    stop: Option<watch::Sender<bool>>,
    tasks: Vec<JoinHandle<()>>,
}

struct Inner {
    /// Held across a reload (which stops and starts services); only briefly otherwise.
    services: tokio::sync::RwLock<BTreeMap<String, ServiceHandle>>,
    /// One drain change or reload at a time, so the drains file always holds a consistent
    /// set. Never taken by status.
    changes: tokio::sync::Mutex<()>,
    /// The running config's sections, its `services` left out: each service's config lives
    /// once, shared by its handle and its task (see [`DaemonHandle::service_configs`]).
    config: Mutex<Config>,
    shared: Arc<Shared>,
    /// Turns true when the daemon stops: every service task watches it.
    stopping: watch::Sender<bool>,
    resolver: Mutex<Option<Resolver>>,
    drains: Mutex<Drains>,
}

impl Drop for Inner {
    /// A daemon dropped without [`Running::shutdown`] (a test, a failed start) stops its
    /// service tasks as one that shuts down does.
    fn drop(&mut self) {
        self.stopping.send_replace(true);
        for service in self.services.get_mut().values() {
            service.tx.ring();
        }
    }
}

/// A cheap, cloneable handle on a running daemon.
#[derive(Clone)]
pub struct DaemonHandle {
    inner: Arc<Inner>,
}

/// A running daemon (the decision side: services and writer).
pub struct Running<D> {
    handle: DaemonHandle,
    shutdown: watch::Sender<bool>,
    writer: JoinHandle<Writer<D>>,
    /// Routes the kernel's connect failures, when the datapath reports them.
    passive: Option<JoinHandle<()>>,
}

/// Starts probing (with the real network probes) and managing every service of `config`.
pub async fn start<D: Datapath + 'static>(
    config: &Config,
    datapath: D,
    drains: Drains,
) -> Result<Running<D>, DaemonError> {
    start_with(config, datapath, drains, Arc::new(NetworkCheck)).await
}

/// Like [`start`], probing with `checker` (tests script outcomes with it).
///
/// Tables already in the datapath (pinned by an earlier run) are adopted: a VIP's table is
/// left exactly as it is until every one of its backends has had a first verdict. VIPs in
/// the datapath that the config does not name are removed. `drains` (from `state_dir`) are
/// applied from the start. DNS never delays start-up: hostname backends join when their
/// names resolve.
pub async fn start_with<D: Datapath + 'static>(
    config: &Config,
    datapath: D,
    drains: Drains,
    checker: Arc<dyn HealthCheck>,
) -> Result<Running<D>, DaemonError> {
    let mut datapath = datapath;
    // Taken before the writer owns the datapath: read by its own task, so a failure never
    // waits behind map writes.
    let connect_events = datapath.take_connect_events();
    let writer = Writer::new(datapath)?;
    let kernel = writer.view();
    let adopted = writer.written().clone();
    let ids = IdAllocator::from_tables(adopted.values().map(|t| &**t));
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
        probes: prober::ProbeHub::new(checker, Arc::new(Semaphore::new(MAX_PROBES_IN_FLIGHT))),
        readiness: readiness::Readiness::default(),
        ids: Mutex::new(ids),
        observer: observer::Observer::new(Arc::new(events::Events::default())),
        kernel,
        routes: passive::Routes::default(),
    });
    let handle = DaemonHandle {
        inner: Arc::new(Inner {
            services: tokio::sync::RwLock::new(BTreeMap::new()),
            changes: tokio::sync::Mutex::new(()),
            config: Mutex::new(sections(config)),
            shared,
            stopping: watch::channel(false).0,
            resolver: Mutex::new(None),
            drains: Mutex::new(drains),
        }),
    };
    {
        let mut services = handle.inner.services.write().await;
        for service in &config.services {
            // The writer's allocation of the adopted table: the core shares it.
            let started = handle.start_service(service, adopted.get(&service.vip()).cloned())?;
            services.insert(service.name.clone(), started);
        }
    }
    let passive = connect_events.map(|events| {
        tokio::spawn(passive::forward(
            events,
            Arc::clone(&handle.inner.shared),
            shutdown_rx.clone(),
        ))
    });
    let writer = tokio::spawn(run_writer(writer, writer_rx, shutdown_rx));
    Ok(Running {
        handle,
        shutdown: shutdown_tx,
        writer,
        passive,
    })
}

/// `config` without its services: what the daemon keeps of a config beside the services'
/// own (a second copy of 10,000 service configs is megabytes).
fn sections(config: &Config) -> Config {
    Config {
        datapath: config.datapath.clone(),
        control: config.control.clone(),
        metrics: config.metrics.clone(),
        resolver: config.resolver.clone(),
        fleet: config.fleet.clone(),
        services: Vec::new(),
        source: config.source.clone(),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl DaemonHandle {
    fn start_service(
        &self,
        service: &Arc<ServiceConfig>,
        adopted: Option<Arc<VipTable>>,
    ) -> Result<ServiceHandle, DaemonError> {
        let shared = &self.inner.shared;
        let vip_id = match &adopted {
            Some(t) => t.vip_id,
            None => {
                let id = lock(&shared.ids).allocate()?;
                shared.reset_counters(id);
                id
            }
        };
        tracing::info!(
            service = %service.name,
            vip = %service.vip(),
            backends = service.backends.len(),
            detection_bound = %humantime::format_duration(service.detection_bound()),
            adopted = adopted.is_some(),
            "service loaded; worst-case detection time is fall × interval + timeout"
        );
        // Operators and DNS watchers only; probe results come through the targets' feeds,
        // which ring the same bell.
        let bell = Arc::new(tokio::sync::Notify::new());
        let (tx, rx) = inbox::inbox(Arc::clone(&bell));
        let mut dns_stop: Option<watch::Sender<bool>> = None;
        let drains = lock(&self.inner.drains)
            .get(&service.name)
            .cloned()
            .unwrap_or_default();
        // The config's own allocation: no copy per running service.
        let config = Arc::clone(service);
        let state = ServiceState::new(
            Arc::clone(&config),
            vip_id,
            adopted,
            drains,
            tokio::time::Instant::now(),
        );
        let mut initial = Vec::new();
        let mut tasks = Vec::new();
        for (index, backend) in service.backends.iter().enumerate() {
            match &backend.address {
                BackendAddress::Ip(addr) => initial.push((index, vec![*addr])),
                BackendAddress::Host { host, port } => tasks.push(hostname::watch(
                    self.resolver()?,
                    host.clone(),
                    *port,
                    service.vip,
                    index,
                    tx.clone(),
                    dns_stop
                        .get_or_insert_with(|| watch::channel(false).0)
                        .subscribe(),
                )),
            }
        }
        let task = ServiceTask::new(state, initial, bell, tx.clone(), Arc::clone(shared));
        tasks.push(tokio::spawn(task.run(rx, self.inner.stopping.subscribe())));
        Ok(ServiceHandle {
            vip_id,
            config,
            tx,
            stop: dns_stop,
            tasks,
        })
    }

    /// The resolver, made on first use (only configs with hostnames need one).
    fn resolver(&self) -> Result<Resolver, DaemonError> {
        let mut resolver = lock(&self.inner.resolver);
        if let Some(r) = resolver.as_ref() {
            return Ok(r.clone());
        }
        let settings = &lock(&self.inner.config).resolver;
        let made = Resolver::new(&ResolverSettings {
            nameservers: settings.nameservers.clone(),
            min_ttl: settings.min_ttl,
            max_ttl: settings.max_ttl,
        })?;
        *resolver = Some(made.clone());
        Ok(made)
    }

    async fn sender(&self, service: &str) -> Result<inbox::Sender, DaemonError> {
        self.inner
            .services
            .read()
            .await
            .get(service)
            .map(|s| s.tx.clone())
            .ok_or_else(|| DaemonError::UnknownService {
                name: service.to_string(),
            })
    }

    /// Sends `message` (made with a reply channel) to a service and awaits the answer.
    async fn ask<T>(
        &self,
        service: &str,
        message: impl FnOnce(oneshot::Sender<T>) -> Message,
    ) -> Result<T, DaemonError> {
        let (reply, answer) = oneshot::channel();
        self.sender(service)
            .await?
            .send(message(reply))
            .await
            .map_err(|_| DaemonError::Stopped)?;
        answer.await.map_err(|_| DaemonError::Stopped)
    }

    /// Names of the services, in order.
    pub async fn services(&self) -> Vec<String> {
        self.inner.services.read().await.keys().cloned().collect()
    }

    /// The config the daemon runs now, without its `services` (see [`Self::service_configs`]).
    pub fn config(&self) -> Config {
        lock(&self.inner.config).clone()
    }

    /// The config of every running service, in name order.
    pub async fn service_configs(&self) -> Vec<Arc<ServiceConfig>> {
        self.inner
            .services
            .read()
            .await
            .values()
            .map(|s| Arc::clone(&s.config))
            .collect()
    }

    /// Sends a service back to its best live priority (for `failback: manual`).
    pub async fn failback(&self, service: &str) -> Result<(), DaemonError> {
        self.ask(service, |reply| Message::Failback { reply }).await
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
        self.ask(service, |reply| Message::Status { reply }).await
    }

    /// The event feed.
    pub fn events(&self) -> &events::Events {
        self.inner.shared.observer.events()
    }

    /// Every service's name and its VIP's counter id, without asking the services.
    pub async fn vip_ids(&self) -> Vec<(String, u32)> {
        self.inner
            .services
            .read()
            .await
            .iter()
            .map(|(name, s)| (name.clone(), s.vip_id))
            .collect()
    }

    /// Whether every service serves what its verdicts allow (what readiness means): each has
    /// its first verdicts, and the kernel holds every table as decided.
    pub fn ready(&self) -> bool {
        let kernel = &self.inner.shared.kernel;
        self.inner.shared.readiness.all_ready()
            && kernel.failing_count() == 0
            && kernel.datapath_failure().is_none()
    }

    /// Why the kernel does not hold the table decided for `vip`, if it does not.
    pub fn write_failure(&self, vip: &crate::datapath::Vip) -> Option<WriteFailure> {
        self.inner.shared.kernel.failing(vip)
    }
}

/// Stops a service's task and returns the table it last decided or adopted.
async fn stop_service(handle: ServiceHandle) -> Option<Arc<VipTable>> {
    let (reply, answer) = oneshot::channel();
    let last = match handle.tx.send(Message::Stop { reply }).await {
        Ok(()) => answer.await.ok().flatten(),
        Err(_) => None,
    };
    // Stops its DNS watchers too.
    if let Some(stop) = &handle.stop {
        stop.send(true).ok();
    }
    for task in handle.tasks {
        if let Err(e) = task.await {
            tracing::error!(error = %e, "a service task ended abnormally");
        }
    }
    last
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

    /// Stops every task and returns the datapath, untouched by the stop: its tables stay
    /// pinned and keep translating.
    pub async fn shutdown(self) -> D {
        let services = std::mem::take(&mut *self.handle.inner.services.write().await);
        // Every service first, then the waiting: one by one, 10,000 services took seconds.
        self.handle.inner.stopping.send_replace(true);
        // Service tasks look at `stopping` when woken.
        for service in services.values() {
            service.tx.ring();
        }
        for stop in services.values().filter_map(|h| h.stop.as_ref()) {
            stop.send(true).ok();
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
        if let Some(passive) = self.passive {
            if let Err(e) = passive.await {
                tracing::error!(error = %e, "the connect-failure reader ended abnormally");
            }
        }
        match self.writer.await {
            Ok(writer) => writer.into_datapath(),
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
}
