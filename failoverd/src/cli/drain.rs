//! `failoverd drain` and `failoverd undrain`: take a backend out of new connections, and put it back.

use crate::{
    cli::command::{block_on, print, CommandError, SocketArgs},
    control::{DrainRequest, TerminatedReport, UndrainRequest},
};

/// Arguments of `failoverd drain`.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = "Examples:\n  \
    failoverd drain orders-db db-a --reason 'kernel upgrade'\n  \
    failoverd drain orders-db db-b --force    # even if it is the last live backend\n  \
    failoverd drain orders-db db-a --terminate  # and abort its open connections now\n  \
    failoverd undrain orders-db db-a\n  \
    failoverd drain orders-db db-a --fleet --reason 'replica rebuild'   # every host\n\n\
    New connects stop going to the backend at once; open connections are left\n\
    alone (unless --terminate, or terminate.drain_after in the config). The drain survives daemon restarts and shows in `failoverd status`.\n\
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
    /// Also abort every open socket the VIP sent to the backend, at once: applications see
    /// ECONNABORTED and reconnect to a live backend. Sockets that named the backend's own
    /// address are never touched.
    #[arg(long)]
    pub terminate: bool,
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
        terminate: args.terminate,
        fleet: args.fleet,
    };
    let report = block_on(async { Ok(client.drain(&request).await?) })?;
    print(&drained_line(args, report.terminated))
}

/// What `failoverd drain` says it did.
fn drained_line(args: &DrainArgs, terminated: Option<TerminatedReport>) -> String {
    if args.fleet {
        // Each host applies (and terminates) from its own watch: no count comes back.
        let sockets = if args.terminate {
            "open sockets to it are aborted on each host as it applies the drain"
        } else {
            "open ones are left alone"
        };
        return format!(
            "drained {} of {} on every host of the fleet (applied here; the others apply it from etcd): new connections avoid it, {sockets}\n",
            args.backend, args.service
        );
    }
    match terminated {
        Some(t) => format!(
            "drained {} of {}: new connections avoid it; {} tcp and {} udp sockets to it aborted\n",
            args.backend, args.service, t.tcp, t.udp
        ),
        // Asked for, but a daemon from before --terminate answered: say what is known.
        None if args.terminate => format!(
            "drained {} of {}: new connections avoid it; the daemon did not report aborting sockets (is it older than this client?)\n",
            args.backend, args.service
        ),
        None => format!(
            "drained {} of {}: new connections avoid it, open ones are left alone\n",
            args.backend, args.service
        ),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn args(terminate: bool) -> DrainArgs {
        DrainArgs {
            service: "orders-db".into(),
            backend: "db-a".into(),
            reason: None,
            force: false,
            terminate,
            fleet: false,
            socket: SocketArgs::default(),
        }
    }

    #[test]
    fn the_line_says_what_happened_to_open_connections() {
        assert!(drained_line(&args(false), None).contains("open ones are left alone"));
        assert_eq!(
            drained_line(&args(true), Some(TerminatedReport { tcp: 12, udp: 1 })),
            "drained db-a of orders-db: new connections avoid it; 12 tcp and 1 udp sockets to it aborted\n"
        );
        assert!(drained_line(&args(true), None).contains("did not report aborting"));
        let fleet = DrainArgs {
            fleet: true,
            ..args(true)
        };
        assert!(drained_line(&fleet, None).contains("on every host of the fleet"));
        assert!(drained_line(&fleet, None).contains("aborted on each host"));
    }
}
