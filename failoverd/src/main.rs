//! The `failoverd` binary: parses the command line, sets up logging and hands over to the library.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use failoverd::cli::{self, Cli, Command};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&cli.log));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("failoverd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        // Their errors already say file:line:column and what to do.
        Command::Run(args) => Ok(cli::run::run(&args)?),
        Command::Check(args) => Ok(cli::check::run(&args)?),
        Command::Vip(c) => cli::vip::run(&c).context("vip"),
        Command::Cleanup(args) => cli::cleanup::run(&args).map(drop).context("cleanup"),
        Command::Demo(args) => cli::demo::run(&args).context("demo"),
        Command::DemoClient(args) => cli::demo::run_client(&args).context("demo client"),
    }
}
