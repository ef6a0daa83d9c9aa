//! `failoverd completions SHELL` and `failoverd man`: shell completions and the man page,
//! generated from the same command-line definition the binary parses, so they never drift.

use std::io::{self, Write};

use clap::CommandFactory;

use super::Cli;

/// Arguments of `failoverd completions`.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = "Examples:\n  \
    failoverd completions bash > /usr/share/bash-completion/completions/failoverd\n  \
    failoverd completions zsh  > /usr/share/zsh/vendor-completions/_failoverd\n  \
    failoverd completions fish > /usr/share/fish/vendor_completions.d/failoverd.fish")]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// Prints the completion script for `args.shell` to standard output.
pub fn completions(args: &CompletionsArgs) {
    clap_complete::generate(
        args.shell,
        &mut Cli::command(),
        "failoverd",
        &mut io::stdout(),
    );
}

/// Prints the man page (roff, section 8) to standard output.
pub fn man() -> io::Result<()> {
    let mut page = Vec::new();
    clap_mangen::Man::new(Cli::command())
        .section("8")
        .render(&mut page)?;
    io::stdout().write_all(&page)
}
