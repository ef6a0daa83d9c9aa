//! `failoverd reload`: make the running daemon re-read its config file and apply what changed.

use crate::cli::{
    command::{block_on, print, CommandError, SocketArgs},
    output::{self, Output, OutputArgs},
    render,
};

/// Arguments of `failoverd reload`.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = "Examples:\n  \
    failoverd check --config /etc/failoverd/failoverd.yaml && failoverd reload\n  \
    failoverd reload --config /etc/failoverd/failoverd.yaml   # its control.socket\n\n\
    The daemon re-reads the file it was started with (--config here only finds the\n\
    socket, even in a file that does not validate: the daemon checks it). Added\n\
    services start, removed ones leave the datapath, changed ones restart with\n\
    fresh health state and keep their drains. An invalid file changes nothing:\n\
    the daemon's error (FILE:LINE:COLUMN: KEY: MESSAGE) is printed and the exit\n\
    code is non-zero.")]
pub struct ReloadArgs {
    /// How to print the answer.
    #[command(flatten)]
    pub output: OutputArgs,
    /// Which daemon to ask.
    #[command(flatten)]
    pub socket: SocketArgs,
}

/// Runs `failoverd reload`; an invalid config is a [`CommandError::Client`] whose message is the daemon's, verbatim.
pub fn run(args: &ReloadArgs) -> Result<(), CommandError> {
    // Never validated here: the daemon validates, answers with the located error, and
    // counts the refusal where its alerts see it.
    let client = crate::control::client::ControlClient::new(args.socket.path_even_if_invalid());
    let report = block_on(async { Ok(client.reload().await?) })?;
    print(&match args.output.output {
        Output::Table => render::reload_text(&report),
        Output::Json => output::json(&report)?,
    })
}
