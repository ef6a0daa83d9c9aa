//! The daemon: probes every backend, decides which are live and keeps each VIP's table current.
//!
//! ```text
//! prober (per backend) ──► service task (per VIP) ──► writer (one) ──► datapath
//!   probe results           hysteresis, breaker,        writes only
//!                           priorities, weights         changed tables
//! ```
//! [`start`] returns a [`Running`] daemon that tests and the CLI can query and
//! stop; [`run`] is the same until a shutdown future resolves.

mod backend;
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

pub use service::{BackendStatus, ServiceStatus};

use crate::{
    config::{BackendAddress, Config, HealthConfig, HealthKind, StatusMatch},
    datapath::{Datapath, DatapathError, IdAllocator, IdsExhausted},
    health::{HttpCheck, Probe},
    reconcile::{run_writer, Writer, WriterCommand},
    resolve::{self, ResolveError, Resolver, ResolverSettings},
};
use service::{ServiceEvent, ServiceTask, Shared};

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
    /// The daemon is shutting down.
    #[error("the daemon is stopping")]
    Stopped,
}

/// A running daemon.
pub struct Running<D> {
    services: BTreeMap<String, mpsc::Sender<ServiceEvent>>,
    shutdown: watch::Sender<bool>,
    writer: JoinHandle<Writer<D>>,
    tasks: Vec<JoinHandle<()>>,
}

/// Starts probing and managing every service of `config` on `datapath`.
///
/// Tables already in the datapath (pinned by an earlier run) are adopted: a
/// VIP's table is left exactly as it is until every one of its backends has
/// had a first verdict. VIPs in the datapath that the config does not name
/// are removed. DNS never delays start-up: hostname backends join when their
/// names resolve.
pub async fn start<D: Datapath + 'static>(
    config: &Config,
    datapath: D,
) -> Result<Running<D>, DaemonError> {
    let writer = Writer::new(datapath)?;
    let adopted = writer.written().clone();
    let mut ids = IdAllocator::from_tables(adopted.values());
    let (writer_tx, writer_rx) = mpsc::channel(1024);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);

    for vip in adopted
        .keys()
        .filter(|vip| !config.services.iter().any(|s| s.vip() == **vip))
    {
        tracing::info!(vip = %vip, "pinned VIP is not in the config; removing it");
        writer_tx
            .send(WriterCommand::Remove(*vip))
            .await
            .map_err(|_| DaemonError::Stopped)?;
    }

    let mut plans = Vec::new();
    for service in &config.services {
        let adopted_table = adopted.get(&service.vip());
        let vip_id = match adopted_table {
            Some(t) => t.vip_id,
            None => ids.allocate()?,
        };
        tracing::info!(
            service = %service.name,
            vip = %service.vip(),
            backends = service.backends.len(),
            detection_bound = ?service.detection_bound(),
            adopted = adopted_table.is_some(),
            "service loaded; worst-case detection time is fall × interval + timeout"
        );
        plans.push((service.clone(), vip_id, adopted_table.cloned()));
    }

    let shared = Arc::new(Shared {
        writer: writer_tx,
        permits: Arc::new(Semaphore::new(MAX_PROBES_IN_FLIGHT)),
        ids: Arc::new(Mutex::new(ids)),
        shutdown: shutdown_rx.clone(),
    });
    let needs_dns = config.services.iter().any(|s| {
        s.backends
            .iter()
            .any(|b| matches!(b.address, BackendAddress::Host { .. }))
    });
    let resolver = if needs_dns {
        Some(Resolver::new(&ResolverSettings {
            nameservers: config.resolver.nameservers.clone(),
            min_ttl: config.resolver.min_ttl,
            max_ttl: config.resolver.max_ttl,
        })?)
    } else {
        None
    };

    let mut services = BTreeMap::new();
    let mut tasks = Vec::new();
    for (service, vip_id, adopted_table) in plans {
        let (tx, rx) = mpsc::channel(1024);
        let mut task = ServiceTask::new(
            service.clone(),
            vip_id,
            adopted_table.as_ref(),
            tx.clone(),
            Arc::clone(&shared),
        );
        for (index, backend) in service.backends.iter().enumerate() {
            match &backend.address {
                BackendAddress::Ip(addr) => task.set_addrs(index, &[*addr]),
                BackendAddress::Host { host, port } => {
                    let resolver = resolver
                        .clone()
                        .expect("a resolver exists when a hostname does");
                    tasks.push(watch_hostname(
                        resolver,
                        host.clone(),
                        *port,
                        index,
                        tx.clone(),
                        shutdown_rx.clone(),
                    ));
                }
            }
        }
        tasks.push(tokio::spawn(task.run(rx)));
        services.insert(service.name.clone(), tx);
    }
    let writer = tokio::spawn(run_writer(writer, writer_rx, shutdown_rx));
    Ok(Running {
        services,
        shutdown: shutdown_tx,
        writer,
        tasks,
    })
}

/// Forwards a hostname's resolved addresses to its service.
fn watch_hostname(
    resolver: Resolver,
    host: String,
    port: u16,
    config_index: usize,
    events: mpsc::Sender<ServiceEvent>,
    shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let (mut addrs, watcher) = resolve::watch(resolver, host, port, shutdown);
        loop {
            let set = addrs.borrow_and_update().clone();
            // Before the first answer there is nothing to probe; after a
            // failure the watcher keeps the last answer, so an empty set here
            // only means "not resolved yet".
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
    /// Names of the services.
    pub fn services(&self) -> impl Iterator<Item = &str> {
        self.services.keys().map(String::as_str)
    }

    /// Sends a service back to its best live priority (for `failback: manual`).
    pub async fn failback(&self, service: &str) -> Result<(), DaemonError> {
        let (reply, done) = oneshot::channel();
        self.sender(service)?
            .send(ServiceEvent::Failback { reply })
            .await
            .map_err(|_| DaemonError::Stopped)?;
        done.await.map_err(|_| DaemonError::Stopped)
    }

    /// A snapshot of every service, in name order.
    pub async fn status(&self) -> Result<Vec<ServiceStatus>, DaemonError> {
        let mut out = Vec::with_capacity(self.services.len());
        for name in self.services.keys() {
            out.push(self.service_status(name).await?);
        }
        Ok(out)
    }

    /// A snapshot of one service.
    pub async fn service_status(&self, service: &str) -> Result<ServiceStatus, DaemonError> {
        let (reply, answer) = oneshot::channel();
        self.sender(service)?
            .send(ServiceEvent::Status { reply })
            .await
            .map_err(|_| DaemonError::Stopped)?;
        answer.await.map_err(|_| DaemonError::Stopped)
    }

    fn sender(&self, service: &str) -> Result<&mpsc::Sender<ServiceEvent>, DaemonError> {
        self.services
            .get(service)
            .ok_or_else(|| DaemonError::UnknownService {
                name: service.to_string(),
            })
    }

    /// Stops every task and returns the datapath, untouched by the stop: its
    /// tables stay pinned and keep translating.
    pub async fn shutdown(self) -> D {
        // Receivers may all be gone already; the result does not matter.
        self.shutdown.send(true).ok();
        for task in self.tasks {
            if let Err(e) = task.await {
                tracing::error!(error = %e, "a daemon task ended abnormally");
            }
        }
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
    shutdown: impl Future<Output = ()>,
) -> Result<D, DaemonError> {
    let running = start(config, datapath).await?;
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
