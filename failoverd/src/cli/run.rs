//! `failoverd run`: the daemon, in the foreground until SIGTERM or SIGINT.

use std::path::PathBuf;

use crate::{
    config::{self, ConfigError},
    daemon::{self, drains::DrainStoreError, DaemonError, DrainStore},
    datapath::{cleanup, BpfDatapath, DatapathError},
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
    let drains = DrainStore::new(&config.control.state_dir).load()?;
    runtime.block_on(async {
        let stop = stop_signal().map_err(|source| RunError::Setup {
            what: "signal handlers",
            source,
        })?;
        let datapath = BpfDatapath::open(&config.datapath.to_datapath_config())?;
        let datapath = daemon::run(&config, datapath, drains, stop).await?;
        drop(datapath);
        if args.cleanup_on_exit {
            let report = cleanup(&config.datapath.pin_dir)?;
            tracing::info!(
                links = report.links,
                maps = report.maps,
                "datapath removed (--cleanup-on-exit)"
            );
        }
        Ok(())
    })
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
