//! `-o/--output table|json`: one spelling for every subcommand that reads something.
//!
//! `table` is for people (at most 80 columns, escapes terminal controls); `json` is the
//! documented, stable form for scripts: fields are only ever added (docs/control-api.md).

use serde::Serialize;

use super::command::CommandError;

/// How a reading subcommand prints its answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Text for a terminal. Default.
    #[default]
    Table,
    /// JSON: one pretty-printed document, or for `events` one object per line.
    Json,
}

/// The `-o/--output` flag, flattened into each reading subcommand.
#[derive(Debug, Clone, Copy, Default, clap::Args)]
pub struct OutputArgs {
    /// table: text for people; json: the stable form for scripts.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// `value` as pretty-printed JSON with a final newline.
pub fn json<T: Serialize>(value: &T) -> Result<String, CommandError> {
    serde_json::to_string_pretty(value)
        .map(|mut s| {
            s.push('\n');
            s
        })
        .map_err(|e| CommandError::Output { source: e.into() })
}
