//! `failoverd cleanup`: detach the hooks and remove every pin.

use std::path::PathBuf;

use crate::datapath::{cleanup, CleanupReport, DatapathError};

/// Arguments of `failoverd cleanup`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Example:\n  failoverd cleanup --pin-dir /sys/fs/bpf/failoverd")]
pub struct CleanupArgs {
    /// bpffs directory holding failoverd's pinned maps and links.
    #[arg(long, default_value = crate::dirs::DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,
}

/// Runs `failoverd cleanup`: after it, connects to VIPs are no longer translated.
pub fn run(args: &CleanupArgs) -> Result<CleanupReport, DatapathError> {
    let report = cleanup(&args.pin_dir)?;
    println!(
        "detached {} hooks, removed {} maps under {}",
        report.links,
        report.maps,
        args.pin_dir.display()
    );
    Ok(report)
}
