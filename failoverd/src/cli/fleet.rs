//! `failoverd fleet publish` and `fleet diff`: a services file against the fleet's etcd; and
//! the fleet matrix table of `failoverd status --fleet`.
//!
//! These talk to etcd directly (with the `fleet.etcd` section of the daemon's config), so a
//! fleet can be given its services before any daemon runs. Drains go through the local
//! daemon instead (`drain --fleet`), which knows its user and applies them at once.

use std::path::PathBuf;

use crate::{
    cli::{
        command::{print, CommandError},
        output::{json, Output, OutputArgs},
        render::terminal_safe,
    },
    config::{self, ConfigError, FleetSection},
    control::FleetReport,
    fleet::{
        connect::connect,
        publish::{self, now_unix, FleetDiff, Published},
        FleetError, Keys,
    },
};

/// `failoverd fleet …`.
#[derive(Debug, clap::Subcommand)]
pub enum FleetCommand {
    /// Validate a services file like `check` and write it to etcd as the fleet's services
    /// (one key per service, one transaction).
    #[command(after_help = "Example:\n  \
        failoverd fleet publish --config /etc/failoverd/fleet-services.yaml\n\n\
        The file holds `defaults` and `services` only. Services in etcd that the file no\n\
        longer lists are removed from every host. Every daemon with a `fleet` section\n\
        applies the change like a reload; one whose own file conflicts with it (same\n\
        name or VIP) refuses it, keeps its old set, and says so (event, metric, alert).")]
    Publish(PublishArgs),
    /// Show what `fleet publish` would change, writing nothing.
    #[command(after_help = "Example:\n  \
        failoverd fleet diff --config /etc/failoverd/fleet-services.yaml")]
    Diff(PublishArgs),
}

/// Arguments of `fleet publish` and `fleet diff`.
#[derive(Debug, Clone, clap::Args)]
pub struct PublishArgs {
    /// The services file (`defaults` and `services`).
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// The daemon config whose `fleet.etcd` section says how to reach etcd.
    #[arg(long, value_name = "FILE", env = "FAILOVERD_CONFIG", default_value = crate::dirs::DEFAULT_CONFIG)]
    pub daemon_config: PathBuf,
    /// How to print the answer.
    #[command(flatten)]
    pub output: OutputArgs,
}

/// Why a fleet subcommand failed.
#[derive(Debug, thiserror::Error)]
pub enum FleetCliError {
    /// The services file or the daemon config is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The daemon config has no `fleet` section.
    #[error("{path}: no `fleet` section: it does not say where the fleet's etcd is", path = path.display())]
    NotFleet {
        /// The daemon config.
        path: PathBuf,
    },
    /// etcd could not be reached, or refused.
    #[error(transparent)]
    Fleet(#[from] FleetError),
    /// Printing or the runtime failed.
    #[error(transparent)]
    Command(#[from] CommandError),
}

/// What `fleet publish -o json` prints.
#[derive(Debug, serde::Serialize)]
struct PublishReport<'a> {
    /// The etcd revision of the publish (the current one if nothing changed).
    revision: i64,
    #[serde(flatten)]
    diff: &'a FleetDiff,
}

/// Runs `failoverd fleet …`.
pub fn run(command: &FleetCommand) -> Result<(), FleetCliError> {
    let (args, write) = match command {
        FleetCommand::Publish(a) => (a, true),
        FleetCommand::Diff(a) => (a, false),
    };
    // Exactly what `check` does with the file.
    let services = config::load(&args.config)?;
    let text = std::fs::read_to_string(&args.config).map_err(|source| ConfigError::Io {
        path: args.config.clone(),
        source,
    })?;
    let documents = config::fleet::service_documents(&text, &services)?;
    let fleet = fleet_section(args)?;
    let keys = Keys::new(&fleet.etcd.prefix);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| CommandError::Runtime { source })?;
    let result = runtime.block_on(async {
        let mut client = connect(&fleet.etcd).await?;
        if write {
            let record = Published {
                by: format!("{}@{}", user(), fleet.host),
                at_unix: now_unix(),
                file: args.config.display().to_string(),
                services: documents.len(),
            };
            publish::publish(&mut client, &keys, &documents, &record).await
        } else {
            let now = publish::current(&mut client, &keys).await?;
            Ok((publish::diff(&now, &documents), now.revision))
        }
    });
    // Before the transaction nothing is written: say so. A transaction that got no answer
    // may or may not have been made, and its error says which step it was.
    let (diff, revision) = result.map_err(|e| match e {
        FleetError::Etcd {
            op: "publishing", ..
        }
        | FleetError::Timeout {
            op: "publishing", ..
        } => e,
        e if e.is_unreachable() => FleetError::Unreachable {
            endpoints: fleet.etcd.endpoints.join(","),
            reason: e.to_string(),
        },
        e => e,
    })?;
    let text = match args.output.output {
        Output::Json => json(&PublishReport {
            revision,
            diff: &diff,
        })?,
        Output::Table => diff_text(&diff, revision, write),
    };
    Ok(print(&text)?)
}

fn fleet_section(args: &PublishArgs) -> Result<FleetSection, FleetCliError> {
    config::load(&args.daemon_config)?
        .fleet
        .ok_or_else(|| FleetCliError::NotFleet {
            path: args.daemon_config.clone(),
        })
}

/// The user running the command, for the publish record.
fn user() -> String {
    std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| {
            // SAFETY: getuid has no preconditions.
            format!("uid {}", unsafe { libc::getuid() })
        })
}

fn diff_text(d: &FleetDiff, revision: i64, written: bool) -> String {
    let mut out = String::new();
    let head = match (written, d.is_empty()) {
        (_, true) => {
            format!("nothing to change: etcd already holds these services (revision {revision})")
        }
        (true, false) => format!("published at revision {revision}"),
        (false, false) => format!("would change (etcd at revision {revision})"),
    };
    out.push_str(&head);
    out.push('\n');
    for (word, names) in [
        ("added", &d.added),
        ("removed", &d.removed),
        ("changed", &d.changed),
        ("unchanged", &d.unchanged),
    ] {
        if !names.is_empty() {
            let shown: Vec<String> = names
                .iter()
                .map(|n| terminal_safe(n).into_owned())
                .collect();
            line(
                &mut out,
                format!("  {word:<9} {}: {}", names.len(), shown.join(", ")),
            );
        }
    }
    out
}

/// The fleet matrix as text: hosts, then per service and backend how many hosts see it up
/// and which do not.
pub fn matrix_table(report: &FleetReport, now_unix: u64) -> String {
    let mut out = String::new();
    line(&mut out, format!("{} hosts", report.hosts.len()));
    for h in &report.hosts {
        line(
            &mut out,
            format!(
                "  {:<24} failoverd {}  revision {}  {} services  changed {}s ago",
                terminal_safe(&h.host),
                terminal_safe(&h.version),
                h.revision,
                h.services,
                now_unix.saturating_sub(h.last_change_unix)
            ),
        );
    }
    for s in &report.services {
        line(
            &mut out,
            format!("\n{}  on {} hosts", terminal_safe(&s.name), s.hosts),
        );
        for b in &s.backends {
            let mut row = format!("  {:<20} up on {}/{}", terminal_safe(&b.name), b.up, b.of);
            if !b.not_up.is_empty() {
                let who: Vec<String> = b
                    .not_up
                    .iter()
                    .map(|h| format!("{} ({})", terminal_safe(&h.host), terminal_safe(&h.state)))
                    .collect();
                row.push_str(&format!("  not up on: {}", who.join(", ")));
            }
            out.push_str(&row);
            out.push('\n');
        }
    }
    out
}

/// Appends `text` and a newline.
fn line(out: &mut String, text: String) {
    out.push_str(&text);
    out.push('\n');
}
