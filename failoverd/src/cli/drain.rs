//! `failoverd drain` and `failoverd undrain`: take a backend out of new connections, and put it back.

use crate::{
    cli::command::{block_on, print, CommandError, SocketArgs},
    control::{DrainRequest, UndrainRequest},
};

/// Arguments of `failoverd drain`.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = "Examples:\n  \
    failoverd drain orders-db db-a --reason 'kernel upgrade'\n  \
    failoverd drain orders-db db-b --force    # even if it is the last live backend\n  \
    failoverd undrain orders-db db-a\n  \
    failoverd drain orders-db db-a --fleet --reason 'replica rebuild'   # every host\n\n\
    New connects stop going to the backend at once; open connections are left\n\
    alone. The drain survives daemon restarts and shows in `failoverd status`.\n\
    Draining the last live backend of a VIP is refused unless --force is given.")]
pub struct DrainArgs {
    /// The service, as named in the config.
    pub service: String,
    /// The backend, as named in the config (`name@ip:port` for one address of a hostname backend).
    pub backend: String,
    /// Why, shown by `failoverd status` next to who drained it and when.
    #[arg(long)]
    pub reason: Option<String>,
    /// Drain even the last live backend of the VIP (its connects then follow on_all_down).
    #[arg(long)]
    pub force: bool,
    /// Drain it on every host of the fleet (written to etcd through this daemon; needs `fleet`).
    #[arg(long)]
    pub fleet: bool,
    /// Which daemon to ask.
    #[command(flatten)]
    pub socket: SocketArgs,
}

/// Arguments of `failoverd undrain`.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = "Example:\n  \
    failoverd undrain orders-db db-a\n\n\
    The backend takes new connections again as soon as its health checks pass.")]
pub struct UndrainArgs {
    /// The service, as named in the config.
    pub service: String,
    /// The backend, as named in the config.
    pub backend: String,
    /// Undo a fleet drain, on every host of the fleet.
    #[arg(long)]
    pub fleet: bool,
    /// Which daemon to ask.
    #[command(flatten)]
    pub socket: SocketArgs,
}

/// Runs `failoverd drain`.
pub fn run(args: &DrainArgs) -> Result<(), CommandError> {
    let client = args.socket.client()?;
    let request = DrainRequest {
        service: args.service.clone(),
        backend: args.backend.clone(),
        reason: args.reason.clone(),
        force: args.force,
        fleet: args.fleet,
    };
    block_on(async { Ok(client.drain(&request).await?) })?;
    let scope = if args.fleet {
        " on every host of the fleet (applied here; the others apply it from etcd)"
    } else {
        ""
    };
    print(&format!(
        "drained {} of {}{scope}: new connections avoid it, open ones are left alone\n",
        args.backend, args.service
    ))
}

/// Runs `failoverd undrain`.
pub fn run_undrain(args: &UndrainArgs) -> Result<(), CommandError> {
    let client = args.socket.client()?;
    let request = UndrainRequest {
        service: args.service.clone(),
        backend: args.backend.clone(),
        fleet: args.fleet,
    };
    block_on(async { Ok(client.undrain(&request).await?) })?;
    let scope = if args.fleet {
        " on every host of the fleet"
    } else {
        ""
    };
    print(&format!(
        "undrained {} of {}{scope}: it takes new connections again while healthy\n",
        args.backend, args.service
    ))
}
