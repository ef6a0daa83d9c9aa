//! `failoverd status`: every service and backend of the running daemon, as an 80-column table or as JSON.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::cli::{
    command::{block_on, print, CommandError, SocketArgs},
    output::{Output, OutputArgs},
    render,
};

/// Arguments of `failoverd status`.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = "Examples:\n  \
    failoverd status\n  \
    failoverd status --output json | jq '.services[] | {name, active_priority}'\n  \
    failoverd status --config /etc/failoverd/failoverd.yaml   # its control.socket\n\n\
    Per service: VIP, the priority taking new connections, readiness; per backend:\n\
    address, state, weight, priority, last probe, time in state and the connects\n\
    the kernel sent it. The JSON fields are described in docs/control-api.md.")]
pub struct StatusArgs {
    /// The fleet matrix instead: per service and backend, how many hosts see it up and which
    /// do not (read from etcd by this daemon; needs `fleet`).
    #[arg(long)]
    pub fleet: bool,
    /// How to print the answer.
    #[command(flatten)]
    pub output: OutputArgs,
    /// Which daemon to ask.
    #[command(flatten)]
    pub socket: SocketArgs,
}

/// Runs `failoverd status`: asks the daemon and prints its answer.
pub fn run(args: &StatusArgs) -> Result<(), CommandError> {
    let client = args.socket.client()?;
    if args.fleet {
        let report = block_on(async { Ok(client.fleet().await?) })?;
        let text = match args.output.output {
            Output::Table => crate::cli::fleet::matrix_table(&report, now_unix()),
            Output::Json => crate::cli::output::json(&report)?,
        };
        return print(&text);
    }
    let report = block_on(async { Ok(client.status().await?) })?;
    let text = match args.output.output {
        Output::Table => {
            let mut text = render::status_table(&report, now_unix());
            if let Some(f) = &report.fleet {
                let link = if f.connected {
                    "connected to etcd"
                } else {
                    "NOT connected to etcd (serving the last fleet state applied)"
                };
                text.push_str(&format!(
                    "\nfleet: host {}, {link}, revision {}, {} fleet services\n",
                    render::terminal_safe(&f.host),
                    f.revision,
                    f.services.len()
                ));
            }
            text
        }
        Output::Json => {
            render::status_json(&report).map_err(|e| CommandError::Output { source: e.into() })?
        }
    };
    print(&text)
}

/// Seconds since the Unix epoch; a clock before 1970 only makes drains look recent.
fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
