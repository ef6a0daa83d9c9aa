//! `failoverd events`: every transition, failover, drain and reload, optionally followed live.

use crate::{
    cli::{
        command::{block_on, print, CommandError, SocketArgs},
        output::{Output, OutputArgs},
        render,
    },
    control::EventRecord,
};

/// Arguments of `failoverd events`.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = "Examples:\n  \
    failoverd events                  # what the daemon kept (the last 1,024)\n  \
    failoverd events --follow         # and then every new one as it happens\n  \
    failoverd events --follow --output json | jq .")]
pub struct EventsArgs {
    /// Keep printing new events until interrupted.
    #[arg(long)]
    pub follow: bool,
    /// One line of text per event (table), or one JSON object per line (json).
    #[command(flatten)]
    pub output: OutputArgs,
    /// Which daemon to ask.
    #[command(flatten)]
    pub socket: SocketArgs,
}

/// Runs `failoverd events`.
pub fn run(args: &EventsArgs) -> Result<(), CommandError> {
    let client = args.socket.client()?;
    block_on(async {
        let mut after = 0;
        // With --follow this runs until interrupted; each request is held by
        // the daemon for a few seconds when there is nothing new.
        loop {
            let report = client.events(after, after > 0 || args.follow).await?;
            for event in &report.events {
                print(&(line(event, args.output.output) + "\n"))?;
            }
            after = report.next;
            if !args.follow {
                return Ok(());
            }
        }
    })
}

/// One event as printed.
pub fn line(event: &EventRecord, format: Output) -> String {
    match format {
        Output::Json => serde_json::to_string(event).unwrap_or_default(),
        Output::Table => {
            let when = humantime::format_rfc3339_millis(
                std::time::UNIX_EPOCH + std::time::Duration::from_millis(event.at_unix_ms),
            );
            let mut out = format!("{when} {}", event.kind);
            for part in [Some(&event.service), event.backend.as_ref()]
                .into_iter()
                .flatten()
            {
                if !part.is_empty() {
                    out.push(' ');
                    out.push_str(part);
                }
            }
            match (&event.from, &event.to) {
                (Some(from), Some(to)) => out.push_str(&format!(" {from} -> {to}")),
                (None, Some(to)) => out.push_str(&format!(" -> {to}")),
                _ => {}
            }
            if !event.detail.is_empty() {
                out.push_str(&format!(" ({})", event.detail));
            }
            // Names, drain reasons and probe evidence may hold escape sequences: show them, do
            // not let them act on the terminal.
            render::terminal_safe(&out).into_owned()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failover_reads_as_one_line() {
        let event = EventRecord {
            seq: 3,
            at_unix_ms: 1_700_000_000_123,
            kind: "failover".into(),
            service: "orders-db".into(),
            backend: None,
            from: Some("0".into()),
            to: Some("1".into()),
            detail: "out: a unhealthy".into(),
        };
        assert_eq!(
            line(&event, Output::Table),
            "2023-11-14T22:13:20.123Z failover orders-db 0 -> 1 (out: a unhealthy)"
        );
        assert!(line(&event, Output::Json).contains("\"seq\":3"));
    }

    #[test]
    fn escape_sequences_are_shown_not_obeyed() {
        let event = EventRecord {
            seq: 4,
            at_unix_ms: 1_700_000_000_123,
            kind: "drain".into(),
            service: "orders-db".into(),
            backend: Some("a\u{9b}2J".into()),
            from: None,
            to: None,
            detail: "by eve: \x1b]0;pwned\x07\nfake event".into(),
        };
        let text = line(&event, Output::Table);
        assert_eq!(
            text,
            r"2023-11-14T22:13:20.123Z drain orders-db a\u{9b}2J (by eve: \x1b]0;pwned\x07\nfake event)"
        );
        // JSON output stays JSON: its own escaping already keeps control characters out.
        let json = line(&event, Output::Json);
        assert!(json.contains(r"\u001b]0;pwned\u0007\n"), "{json}");
    }
}
