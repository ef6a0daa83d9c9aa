//! The `failoverd` binary: parses the command line, sets up logging and hands over to the library.

use std::process::ExitCode;

use clap::Parser;
use failoverd::cli::{self, Cli, Command};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&cli.log));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        cli::LogFormat::Text => logs.init(),
        cli::LogFormat::Json => logs.json().flatten_event(true).init(),
    }
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("failoverd: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    // Every error type here already names its cause in its message, so main
    // prints `{e}` once rather than a context chain that repeats it.
    match command {
        Command::Run(args) => Ok(cli::run::run(&args)?),
        Command::Check(args) => Ok(cli::check::run(&args)?),
        Command::Status(args) => Ok(cli::status::run(&args)?),
        Command::Drain(args) => Ok(cli::drain::run(&args)?),
        Command::Undrain(args) => Ok(cli::drain::run_undrain(&args)?),
        Command::Failback(args) => Ok(cli::failback::run(&args)?),
        Command::Reload(args) => Ok(cli::reload::run(&args)?),
        Command::Explain(args) => Ok(cli::explain::run(&args)?),
        Command::Events(args) => Ok(cli::events::run(&args)?),
        Command::Vip(c) => Ok(cli::vip::run(&c)?),
        Command::Cleanup(args) => cli::cleanup::run(&args).map(drop).map_err(Into::into),
        Command::Demo(args) => cli::demo::run(&args),
        Command::DemoClient(args) => cli::demo::run_client(&args),
    }
}
