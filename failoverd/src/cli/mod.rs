//! The `failoverd` command line: one module per subcommand.

pub mod check;
pub mod cleanup;
pub mod command;
pub mod demo;
pub mod docs;
pub mod drain;
pub mod events;
pub mod exit;
pub mod explain;
pub mod failback;
pub mod fleet;
pub mod logs;
pub mod output;
pub mod reload;
pub mod render;
pub mod run;
pub mod status;
pub mod vip;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::datapath::CgroupSpec;

/// Kernel-level VIP failover: connect() to a virtual address reaches a live backend.
#[derive(Debug, Parser)]
#[command(
    name = "failoverd",
    version,
    after_help = "Examples:\n  \
        failoverd demo                                   # see it work, self-contained\n  \
        failoverd check --config /etc/failoverd/failoverd.yaml\n  \
        failoverd run --config /etc/failoverd/failoverd.yaml\n  \
        failoverd status\n  \
        failoverd drain orders-db a --reason \"kernel upgrade\"\n  \
        failoverd explain 10.96.0.10:5432\n  \
        failoverd vip set 10.96.0.10:5432 10.0.0.5:5432=3 10.0.0.6:5432=1\n  \
        failoverd vip list\n  \
        failoverd cleanup\n\n\
        Exit codes: 0 done; 1 the operation failed; 2 usage; 3 the daemon could not be\n\
        reached; 4 the config is invalid. Read commands take -o json. FAILOVERD_SOCKET and\n\
        FAILOVERD_CONFIG stand in for --socket and --config."
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon in the foreground: probe backends, keep every VIP on live ones.
    Run(run::RunArgs),
    /// Validate a config file without touching anything live.
    Check(check::CheckArgs),
    /// Every service and backend of the running daemon.
    Status(status::StatusArgs),
    /// Take a backend out of new connections (persisted; still probed).
    Drain(drain::DrainArgs),
    /// Put a drained backend back.
    Undrain(drain::UndrainArgs),
    /// Send a `failback: manual` service back to its best live priority.
    Failback(failback::FailbackArgs),
    /// Re-read the config and apply what changed; an invalid one changes nothing.
    Reload(reload::ReloadArgs),
    /// Where a connect to a VIP goes right now, and why not elsewhere.
    Explain(explain::ExplainArgs),
    /// Transitions, failovers, drains and reloads; `--follow` streams new ones.
    Events(events::EventsArgs),
    /// Install, list or remove VIP tables in the kernel datapath by hand.
    #[command(subcommand)]
    Vip(vip::VipCommand),
    /// Publish services to the fleet's etcd, or see what a publish would change.
    #[command(subcommand)]
    Fleet(fleet::FleetCommand),
    /// Detach failoverd's hooks and remove everything it pinned.
    Cleanup(cleanup::CleanupArgs),
    /// A self-contained run: two local HTTP backends, a VIP in a cgroup of its
    /// own, the daemon probing them, the primary killed and brought back.
    Demo(demo::DemoArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(docs::CompletionsArgs),
    /// Print the man page (roff).
    Man,
    /// Internal: the client `demo` runs inside its cgroup.
    #[command(hide = true)]
    DemoClient(demo::DemoClientArgs),
}

impl Command {
    /// The log flags of a subcommand that has them; the others log warnings only.
    pub fn log_args(&self) -> logs::LogArgs {
        match self {
            Command::Run(a) => a.logs.clone(),
            Command::Demo(a) => a.logs.clone(),
            Command::Cleanup(a) => a.logs.clone(),
            Command::Vip(v) => v.logs(),
            _ => logs::LogArgs::quiet(),
        }
    }
}

/// Where the datapath lives: shared by every subcommand that opens it.
#[derive(Debug, Clone, clap::Args)]
pub struct DatapathArgs {
    /// cgroup v2 directory whose processes see the VIPs; `auto` = the cgroup v2 root (every process).
    #[arg(long, default_value = "auto")]
    pub cgroup: CgroupSpec,
    /// bpffs directory holding failoverd's pinned maps and links.
    #[arg(long, default_value = crate::dirs::DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,
}

impl DatapathArgs {
    /// The datapath configuration these flags describe.
    pub fn config(&self) -> crate::datapath::DatapathConfig {
        crate::datapath::DatapathConfig {
            cgroup: self.cgroup.clone(),
            pin_dir: self.pin_dir.clone(),
        }
    }
}
