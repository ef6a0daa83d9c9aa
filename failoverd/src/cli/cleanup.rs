//! `failoverd cleanup`: detach the hooks and remove every pin.

use std::path::PathBuf;

use crate::{
    config::{self, ConfigError},
    datapath::{cleanup, CleanupReport, DatapathError},
};

/// Arguments of `failoverd cleanup`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  \
    failoverd cleanup --config /etc/failoverd/failoverd.yaml\n  \
    failoverd cleanup --pin-dir /sys/fs/bpf/failoverd")]
pub struct CleanupArgs {
    /// Log filter and format.
    #[command(flatten)]
    pub logs: crate::cli::logs::LogArgs,
    /// bpffs directory holding failoverd's pinned maps and links.
    #[arg(long, default_value = crate::dirs::DEFAULT_PIN_DIR, conflicts_with = "config")]
    pub pin_dir: PathBuf,
    /// Remove the datapath this config describes (its `datapath.pin_dir`).
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// Why `failoverd cleanup` failed.
#[derive(Debug, thiserror::Error)]
pub enum CleanupError {
    /// The config could not be read: nothing was removed.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Detaching or unpinning failed.
    #[error(transparent)]
    Datapath(#[from] DatapathError),
}

/// Runs `failoverd cleanup`: after it, connects to VIPs are no longer translated.
pub fn run(args: &CleanupArgs) -> Result<CleanupReport, CleanupError> {
    let pin_dir = match &args.config {
        Some(path) => config::load(path)?.datapath.pin_dir,
        None => args.pin_dir.clone(),
    };
    let report = cleanup(&pin_dir)?;
    println!(
        "detached {} hooks, removed {} maps under {}",
        report.links,
        report.maps,
        pin_dir.display()
    );
    Ok(report)
}
