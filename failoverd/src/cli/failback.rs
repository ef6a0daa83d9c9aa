//! `failoverd failback`: send a `failback: manual` service back to its best live priority.

use crate::{
    cli::command::{block_on, print, CommandError, SocketArgs},
    control::FailbackRequest,
};

/// Arguments of `failoverd failback`.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = "Example:\n  \
    failoverd failback orders-db\n\n\
    For services with `failback: manual`: after a failover, new connections stay\n\
    on the backup priority until this command moves them back to the lowest\n\
    priority with a live backend. Open connections are left alone.")]
pub struct FailbackArgs {
    /// The service, as named in the config.
    pub service: String,
    /// Which daemon to ask.
    #[command(flatten)]
    pub socket: SocketArgs,
}

/// Runs `failoverd failback`.
pub fn run(args: &FailbackArgs) -> Result<(), CommandError> {
    let client = args.socket.client()?;
    let request = FailbackRequest {
        service: args.service.clone(),
    };
    block_on(async { Ok(client.failback(&request).await?) })?;
    print(&format!(
        "{}: new connections go to its best live priority again\n",
        args.service
    ))
}
