//! `failoverd explain`: where a connect to a VIP goes right now, and why every other backend is out.

use std::net::SocketAddr;

use crate::{
    cli::{
        command::{block_on, print, CommandError, SocketArgs},
        output::{self, Output, OutputArgs},
        render,
    },
    datapath::Protocol,
};

/// Arguments of `failoverd explain`.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = "Examples:\n  \
    failoverd explain 10.96.0.10:5432\n  \
    failoverd explain '[fd00::10]:53' --protocol udp\n\n\
    Prints the backends a connect can reach with their share of new connections,\n\
    then every other backend with the reason it is out (drained, unhealthy,\n\
    ejected, weight 0, standby priority, no verdict yet).")]
pub struct ExplainArgs {
    /// The VIP: IP:PORT, an IPv6 address inside brackets.
    pub vip: SocketAddr,
    /// The VIP's protocol: tcp or udp. Needed only when a TCP and a UDP service share the
    /// address.
    #[arg(long)]
    pub protocol: Option<Protocol>,
    /// How to print the answer.
    #[command(flatten)]
    pub output: OutputArgs,
    /// Which daemon to ask.
    #[command(flatten)]
    pub socket: SocketArgs,
}

/// Runs `failoverd explain`.
pub fn run(args: &ExplainArgs) -> Result<(), CommandError> {
    let client = args.socket.client()?;
    let vip = args.vip.to_string();
    let protocol = args.protocol.map(|p| p.to_string());
    let report = block_on(async { Ok(client.explain(&vip, protocol.as_deref()).await?) })?;
    print(&match args.output.output {
        Output::Table => render::explain_text(&report),
        Output::Json => output::json(&report)?,
    })
}
