//! `failoverd run`: the daemon, in the foreground until SIGTERM or SIGINT.

use std::path::PathBuf;

use crate::{
    config::{self, ConfigError},
    daemon::{
        self,
        run::{Opened, RunError as DaemonRunError},
    },
    datapath::{cleanup, BpfDatapath, DatapathError},
};

/// Arguments of `failoverd run`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  \
    failoverd run                                   # /etc/failoverd/failoverd.yaml\n  \
    failoverd run --config ./failoverd.yaml --cleanup-on-exit")]
pub struct RunArgs {
    /// Log filter and format.
    #[command(flatten)]
    pub logs: crate::cli::logs::LogArgs,
    /// The config file.
    #[arg(long, env = "FAILOVERD_CONFIG", default_value = crate::dirs::DEFAULT_CONFIG)]
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
    /// The daemon stopped with an error.
    #[error(transparent)]
    Daemon(#[from] DaemonRunError),
    /// `--cleanup-on-exit` failed.
    #[error(transparent)]
    Cleanup(#[from] DatapathError),
    /// The async runtime could not be set up.
    #[error("setting up the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

/// Runs the daemon until SIGTERM or SIGINT.
pub fn run(args: &RunArgs) -> Result<(), RunError> {
    // The config is checked before anything live is touched.
    let config = config::load(&args.config)?;
    let pin_dir = config.datapath.pin_dir.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(RunError::Runtime)?;
    runtime.block_on(async {
        let stop = daemon::run::stop_signal()?;
        let open = |config: &config::Config| {
            Ok(Opened {
                datapath: BpfDatapath::open(&config.datapath.to_datapath_config())?,
                pinned_counters: true,
            })
        };
        daemon::run(config, args.config.clone(), open, stop).await
    })?;
    if args.cleanup_on_exit {
        let report = cleanup(&pin_dir)?;
        tracing::info!(
            links = report.links,
            maps = report.maps,
            "datapath removed (--cleanup-on-exit)"
        );
    }
    Ok(())
}
