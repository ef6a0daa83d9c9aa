//! Log output: the `--log`/`--log-format` flags of the subcommands that log, and how lines
//! look where they go — a terminal, a pipe, or the systemd journal.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// `--log` and `--log-format`, on the subcommands that log (`run`, `demo`, `cleanup`, `vip`).
#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// Log filter (tracing syntax, e.g. `info` or `failoverd=debug`); RUST_LOG overrides.
    #[arg(long, default_value = "info")]
    pub log: String,
    /// Log lines as human text, or as one JSON object per line (for log shippers).
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

impl LogArgs {
    /// What a subcommand without the flags logs: warnings and errors only, so its own
    /// output is all a person or a script sees.
    pub fn quiet() -> Self {
        LogArgs {
            log: "warn".into(),
            log_format: LogFormat::Text,
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable text.
    Text,
    /// One JSON object per line.
    Json,
}

/// How text lines look, from where stderr goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Style {
    /// ANSI colours: only on a terminal, and never with `NO_COLOR` set (no-color.org).
    pub ansi: bool,
    /// A timestamp per line: not when stderr is the journal, which stamps every line itself.
    pub timestamps: bool,
}

impl Style {
    /// The style for stderr as this process has it.
    pub fn detect() -> Style {
        Style::decide(
            std::io::stderr().is_terminal(),
            std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty()),
            stderr_is_the_journal(),
        )
    }

    /// The rule, apart from the environment it reads.
    pub fn decide(terminal: bool, no_color: bool, journal: bool) -> Style {
        Style {
            ansi: terminal && !no_color,
            timestamps: !journal,
        }
    }
}

/// Whether stderr is the stream systemd connected to the journal: `JOURNAL_STREAM` holds its
/// `device:inode`, which a redirected stderr no longer has.
fn stderr_is_the_journal() -> bool {
    use std::os::{fd::AsFd, unix::fs::MetadataExt};
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = stream.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() else {
        return false;
    };
    let Ok(meta) = std::fs::File::from(fd).metadata() else {
        return false;
    };
    dev.parse() == Ok(meta.dev()) && ino.parse() == Ok(meta.ino())
}

/// Sets up the global subscriber on stderr.
pub fn init(args: &LogArgs) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&args.log));
    let style = Style::detect();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(style.ansi)
        .with_writer(std::io::stderr);
    match (args.log_format, style.timestamps) {
        (LogFormat::Text, true) => logs.init(),
        (LogFormat::Text, false) => logs.without_time().init(),
        (LogFormat::Json, _) => logs.json().flatten_event(true).init(),
    }
}

#[cfg(test)]
mod tests {
    use super::Style;

    #[test]
    fn colours_only_on_a_terminal_without_no_color_and_no_time_in_the_journal() {
        assert_eq!(
            Style::decide(true, false, false),
            Style {
                ansi: true,
                timestamps: true
            }
        );
        assert!(!Style::decide(false, false, false).ansi, "a pipe gets none");
        assert!(!Style::decide(true, true, false).ansi, "NO_COLOR wins");
        assert!(
            !Style::decide(false, false, true).timestamps,
            "journald stamps lines"
        );
    }
}
