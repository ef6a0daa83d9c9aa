//! `failoverd run`: the daemon, in the foreground until SIGTERM or SIGINT.

use std::path::PathBuf;

use std::{sync::Arc, time::Duration};

use crate::{
    config::{self, ConfigError},
    control::{self, Caller, ControlHandler},
    daemon::{
        self, control::DaemonControl, drains::DrainStoreError, DaemonError, DaemonHandle,
        DrainStore,
    },
    datapath::{cleanup, BpfDatapath, DatapathError, PinnedMaps},
};

/// Arguments of `failoverd run`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  \
    failoverd run                                   # /etc/failoverd/failoverd.yaml\n  \
    failoverd run --config ./failoverd.yaml --cleanup-on-exit")]
pub struct RunArgs {
    /// The config file.
    #[arg(long, default_value = crate::dirs::DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// Detach and unpin the datapath on exit. By default it stays pinned and
    /// keeps translating with the last tables, so a restart does not blip.
    #[arg(long)]
    pub cleanup_on_exit: bool,
}

/// Why `failoverd run` stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The config is invalid: nothing was touched.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The datapath could not be set up or cleaned up.
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
    /// The async runtime or the signal handlers could not be set up.
    #[error("setting up {what}: {source}")]
    Setup {
        /// What.
        what: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// Runs the daemon until SIGTERM or SIGINT.
pub fn run(args: &RunArgs) -> Result<(), RunError> {
    // The config is checked before anything live is touched.
    let config = config::load(&args.config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|source| RunError::Setup {
            what: "the async runtime",
            source,
        })?;
    let store = DrainStore::new(&config.control.state_dir);
    let drains = store.load()?;
    runtime.block_on(async {
        let stop = stop_signal().map_err(|source| RunError::Setup { what: "signal handlers", source })?;
        // The recorder first: what the daemon records while starting must not be lost.
        let prometheus = crate::metrics::install()?;
        crate::metrics::set_per_backend(config.metrics.per_backend);
        let metrics_listener = crate::metrics::bind(config.metrics.listen).await?;
        let datapath = BpfDatapath::open(&config.datapath.to_datapath_config())?;
        let counters = PinnedMaps::open(&config.datapath.pin_dir)?;
        let running = daemon::start(&config, datapath, drains).await?;
        let handle = running.handle();
        let exporter_maps = PinnedMaps::open(&config.datapath.pin_dir)?;
        let control = Arc::new(DaemonControl::new(handle.clone(), store, args.config.clone(), Some(counters)));
        let listener = control::server::bind(&config.control.socket)?;
        let (control_stop, control_stopped) = tokio::sync::watch::channel(false);
        let server = tokio::spawn(control::server::serve(listener, Arc::clone(&control), control_stopped));
        let hup = tokio::spawn(reload_on_sighup(Arc::clone(&control)));
        let ready = tokio::spawn(notify_when_ready(handle.clone()));
        let readiness = handle.clone();
        let metrics = tokio::spawn(crate::metrics::serve(
            metrics_listener,
            prometheus,
            move || {
                let handle = readiness.clone();
                async move { handle.ready().await }
            },
            control_stop.subscribe(),
        ));
        let kernel = tokio::spawn(export_kernel_counters(handle, exporter_maps));

        stop.await;
        notify(&[sd_notify::NotifyState::Stopping]);
        control_stop.send(true).ok();
        hup.abort();
        ready.abort();
        kernel.abort();
        if let Err(e) = metrics.await {
            tracing::error!(error = %e, "metrics listener ended abnormally");
        }
        if let Err(e) = server.await {
            tracing::error!(error = %e, "control server ended abnormally");
        }
        if let Err(e) = std::fs::remove_file(&config.control.socket) {
            tracing::warn!(socket = %config.control.socket.display(), error = %e, "could not remove the control socket");
        }
        tracing::info!("shutting down; the datapath stays pinned and keeps translating");
        drop(running.shutdown().await);
        if args.cleanup_on_exit {
            let report = cleanup(&config.datapath.pin_dir)?;
            tracing::info!(links = report.links, maps = report.maps, "datapath removed (--cleanup-on-exit)");
        }
        Ok(())
    })
}

/// Exports the kernel's per-CPU counters (summed) as Prometheus counters, every second.
async fn export_kernel_counters(handle: DaemonHandle, maps: PinnedMaps) {
    // Bounded by the daemon's life: this task is aborted at shutdown.
    loop {
        // Rejections per VIP, from the daemon's service list: no service is asked anything.
        for (name, vip_id) in handle.vip_ids().await {
            let rejected = maps.counters(vip_id).map(|c| c.rejected).unwrap_or(0);
            crate::metrics::kernel_rejections(&name, rejected);
        }
        // Connects per backend need each service's backend ids: only when they are exported.
        if crate::metrics::per_backend() {
            for service in handle.status().await.unwrap_or_default() {
                for backend in &service.backends {
                    match maps.counters(backend.id) {
                        Ok(c) => crate::metrics::kernel_connects(
                            &service.name,
                            &backend.name,
                            c.connects,
                        ),
                        Err(e) => {
                            tracing::debug!(backend = %backend.name, error = %e, "kernel counters unreadable")
                        }
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Tells systemd (Type=notify) the daemon is ready once every service has its
/// first verdicts: before that, a restart would only be adopting tables.
async fn notify_when_ready(handle: DaemonHandle) {
    // Bounded by the daemon's life: this task is aborted at shutdown.
    loop {
        if handle.ready().await {
            tracing::info!("every service has its first verdicts: ready");
            notify(&[sd_notify::NotifyState::Ready]);
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn notify(state: &[sd_notify::NotifyState<'_>]) {
    // A no-op outside systemd (no NOTIFY_SOCKET); a failure is worth a log line only.
    if let Err(e) = sd_notify::notify(state) {
        tracing::warn!(error = %e, "could not notify systemd");
    }
}

/// SIGHUP reloads the config like `failoverd reload`; an invalid one is logged and changes nothing.
async fn reload_on_sighup(control: Arc<DaemonControl>) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(hup) => hup,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGHUP; use failoverd reload");
            return;
        }
    };
    while hup.recv().await.is_some() {
        let caller = Caller {
            user: "SIGHUP".into(),
            pid: 0,
        };
        match control.reload(caller).await {
            Ok(report) => tracing::info!(?report, "SIGHUP: config reloaded"),
            Err(e) => {
                tracing::error!(error = %e, "SIGHUP: reload refused, the running config is unchanged")
            }
        }
    }
}

/// Resolves on the first SIGTERM or SIGINT.
fn stop_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM"),
            _ = int.recv() => tracing::info!("SIGINT"),
        }
    })
}
