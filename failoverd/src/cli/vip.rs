//! `failoverd vip`: install, list and remove VIP tables by hand.
//!
//! The daemon normally owns the tables; these commands are for bring-up,
//! debugging and emergencies, and write through the same [`Datapath`] calls.
//! A running daemon reads back the VIPs it manages every 2 s and rewrites any
//! table changed behind its back, so a change made here to one of its VIPs
//! lasts about that long: stop the daemon first (the pinned tables stay).

use std::{fmt::Write as _, net::SocketAddr, str::FromStr};

use clap::Subcommand;

use super::DatapathArgs;
use crate::datapath::{
    BpfDatapath, CounterTotals, Datapath, DatapathError, IdAllocator, InstalledTable, PinnedMaps,
    Protocol, TableBackend, Vip, VipTable,
};

/// `failoverd vip` subcommands.
#[derive(Debug, Subcommand)]
pub enum VipCommand {
    /// Point a VIP at backends (attaching the datapath first if needed).
    #[command(after_help = "Examples:\n  \
        failoverd vip set 10.96.0.10:5432 10.0.0.5:5432=3 10.0.0.6:5432=1\n  \
        failoverd vip set '[fd00::10]:53' '[fd00::53]:53' --protocol udp\n  \
        failoverd vip set 10.96.0.10:5432          # no backends: connects fail with ECONNREFUSED")]
    Set(SetArgs),
    /// Show every VIP table with shares and kernel counters.
    List(ListArgs),
    /// Stop translating a VIP.
    Delete(DeleteArgs),
}

impl VipCommand {
    /// Log flags: `set` attaches the datapath and says so; the others log warnings only.
    pub fn logs(&self) -> crate::cli::logs::LogArgs {
        match self {
            VipCommand::Set(a) => a.logs.clone(),
            _ => crate::cli::logs::LogArgs::quiet(),
        }
    }
}

/// A backend on the command line: `ADDR:PORT` or `ADDR:PORT=WEIGHT` (weight 1 by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WeightedBackend {
    /// Where connects go.
    pub addr: SocketAddr,
    /// Share of new connections; 0 = none.
    pub weight: u32,
}

impl FromStr for WeightedBackend {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, weight) = match s.rsplit_once('=') {
            Some((addr, w)) => {
                let weight = w
                    .parse()
                    .map_err(|_| format!("weight `{w}` in `{s}` is not a whole number"))?;
                (addr, weight)
            }
            None => (s, 1),
        };
        let addr = addr
            .parse()
            .map_err(|_| format!("`{addr}` is not IP:PORT (IPv6 as [addr]:port)"))?;
        Ok(WeightedBackend { addr, weight })
    }
}

/// Arguments of `failoverd vip set`.
#[derive(Debug, clap::Args)]
pub struct SetArgs {
    /// Log filter and format.
    #[command(flatten)]
    pub logs: crate::cli::logs::LogArgs,
    /// The VIP, IP:PORT (IPv6 as [addr]:port).
    pub vip: SocketAddr,
    /// Backends, `IP:PORT[=WEIGHT]`; none = refuse connects with ECONNREFUSED.
    pub backends: Vec<WeightedBackend>,
    /// Transport protocol of the VIP.
    #[arg(long, default_value = "tcp")]
    pub protocol: Protocol,
    /// Where the datapath lives.
    #[command(flatten)]
    pub datapath: DatapathArgs,
}

/// Arguments of `failoverd vip list`.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// bpffs directory holding failoverd's pinned maps and links.
    #[arg(long, default_value = crate::dirs::DEFAULT_PIN_DIR)]
    pub pin_dir: std::path::PathBuf,
    /// How to print the tables.
    #[command(flatten)]
    pub output: crate::cli::output::OutputArgs,
}

/// One VIP's table as `vip list -o json` prints it; fields are only ever added.
#[derive(Debug, serde::Serialize)]
pub struct JsonTable {
    /// The VIP, `ip:port`.
    pub vip: String,
    /// `tcp` or `udp`.
    pub protocol: String,
    /// The VIP's counter id.
    pub vip_id: u32,
    /// Changes on every write of the table.
    pub generation: u64,
    /// No backend: connects are refused with ECONNREFUSED.
    pub refused: bool,
    /// The VIP's kernel counters.
    pub counters: Option<CounterTotals>,
    /// Its backends.
    pub backends: Vec<JsonTableBackend>,
}

/// A backend of a [`JsonTable`].
#[derive(Debug, serde::Serialize)]
pub struct JsonTableBackend {
    /// `ip:port`.
    pub address: String,
    /// Its counter id.
    pub id: u32,
    /// Its share of new connections, in percent of the 256 slots.
    pub share_percent: f64,
    /// Its kernel counters.
    pub counters: Option<CounterTotals>,
}

/// The JSON form of one installed table.
pub fn json_table(
    installed: &InstalledTable,
    counters: impl Fn(u32) -> Option<CounterTotals>,
) -> JsonTable {
    let table = &installed.table;
    JsonTable {
        vip: table.vip.addr.to_string(),
        protocol: table.vip.protocol.to_string(),
        vip_id: table.vip_id,
        generation: installed.generation,
        refused: table.slots.is_empty(),
        counters: counters(table.vip_id),
        backends: table
            .backends
            .iter()
            .zip(table.slot_counts())
            .map(|(b, slots)| JsonTableBackend {
                address: b.addr.to_string(),
                id: b.id,
                share_percent: 100.0 * slots as f64 / table.slots.len().max(1) as f64,
                counters: counters(b.id),
            })
            .collect(),
    }
}

/// Arguments of `failoverd vip delete`.
#[derive(Debug, clap::Args)]
pub struct DeleteArgs {
    /// The VIP, IP:PORT.
    pub vip: SocketAddr,
    /// Transport protocol of the VIP.
    #[arg(long, default_value = "tcp")]
    pub protocol: Protocol,
    /// bpffs directory holding failoverd's pinned maps and links.
    #[arg(long, default_value = crate::dirs::DEFAULT_PIN_DIR)]
    pub pin_dir: std::path::PathBuf,
}

/// Runs a `failoverd vip` subcommand, printing its result.
pub fn run(command: &VipCommand) -> Result<(), DatapathError> {
    match command {
        VipCommand::Set(args) => {
            let mut datapath = BpfDatapath::open(&args.datapath.config())?;
            let vip = Vip {
                addr: args.vip,
                protocol: args.protocol,
            };
            let table = set(&mut datapath, vip, &args.backends)?;
            println!(
                "{}",
                describe(
                    &InstalledTable {
                        table,
                        generation: 0
                    },
                    |_| None,
                    false
                )
            );
        }
        VipCommand::List(args) => {
            let maps = PinnedMaps::open(&args.pin_dir)?;
            let tables = maps.tables()?;
            if args.output.output == crate::cli::output::Output::Json {
                let all: Vec<JsonTable> = tables
                    .values()
                    .map(|t| json_table(t, |id| maps.counters(id).ok()))
                    .collect();
                let text = serde_json::to_string_pretty(&all).unwrap_or_default();
                println!("{text}");
                return Ok(());
            }
            if tables.is_empty() {
                println!("no VIPs under {}", args.pin_dir.display());
            }
            for installed in tables.values() {
                println!("{}", describe(installed, |id| maps.counters(id).ok(), true));
            }
        }
        VipCommand::Delete(args) => {
            let mut maps = PinnedMaps::open(&args.pin_dir)?;
            let vip = Vip {
                addr: args.vip,
                protocol: args.protocol,
            };
            maps.remove(&vip)?;
            println!("{vip}: removed, connects pass through untranslated");
        }
    }
    Ok(())
}

/// Installs `backends` for `vip`, keeping the counter ids of backends it already had.
pub fn set(
    datapath: &mut dyn Datapath,
    vip: Vip,
    backends: &[WeightedBackend],
) -> Result<VipTable, DatapathError> {
    let tables = datapath.tables()?;
    let mut ids = IdAllocator::from_tables(tables.values().map(|t| &t.table));
    let existing = tables.get(&vip).map(|t| &t.table);
    // A fresh id may still hold counts of whoever had it before (no table
    // names it any more, but the kernel keeps its counters): they are reset
    // before the table that gives the id a new owner is installed.
    let mut fresh = Vec::new();
    let vip_id = match existing {
        Some(t) => t.vip_id,
        None => {
            let id = ids.allocate()?;
            fresh.push(id);
            id
        }
    };
    let mut table_backends = Vec::with_capacity(backends.len());
    for b in backends {
        let known = existing.and_then(|t| t.backends.iter().find(|e| e.addr == b.addr));
        let id = match known {
            Some(e) => e.id,
            None => {
                let id = ids.allocate()?;
                fresh.push(id);
                id
            }
        };
        table_backends.push(TableBackend { addr: b.addr, id });
    }
    let weights: Vec<u32> = backends.iter().map(|b| b.weight).collect();
    let table = VipTable::weighted(vip, vip_id, table_backends, &weights)?;
    for id in fresh {
        datapath.reset_counters(id)?;
    }
    datapath.apply(&table)?;
    Ok(table)
}

/// A VIP table as text: each backend with its share, and the kernel's
/// counters where `counters` knows them (`|_| None` for none).
///
/// The VIP line shows every counter of the VIP's id, each meaning one thing
/// (see docs/metrics.md); a backend line shows its connects, and its
/// translations without socket storage and the kernel-observed outcomes
/// (established, failed, SYN timeouts, diverted) when there were any. The
/// fallback group (passive health) follows the slot backends.
pub fn describe(
    installed: &InstalledTable,
    counters: impl Fn(u32) -> Option<CounterTotals>,
    with_generation: bool,
) -> String {
    let table = &installed.table;
    let mut out = format!("{}", table.vip);
    if with_generation {
        let _ = write!(out, "  generation {}", installed.generation);
    }
    if let Some(c) = counters(table.vip_id) {
        let _ = write!(
            out,
            "  connects {}  rejected {}  no-sock-storage {}  bad-table {}  family-mismatch {}",
            c.connects, c.rejected, c.no_sock_storage, c.bad_table, c.family_mismatch
        );
    }
    if table.slots.is_empty() {
        out.push_str("\n  no live backend: connects are refused with ECONNREFUSED");
    }
    for (b, slots) in table.backends.iter().zip(table.slot_counts()) {
        let share = 100.0 * slots as f64 / table.slots.len().max(1) as f64;
        let _ = write!(out, "\n  -> {:<40} {share:5.1}%", b.addr.to_string());
        if let Some(c) = counters(b.id) {
            backend_counters(&mut out, &c);
        }
    }
    if table.passive_threshold > 0 {
        let _ = write!(
            out,
            "\n  passive: {} failed connects in a row mark a backend suspect",
            table.passive_threshold
        );
    }
    for b in &table.fallback {
        let _ = write!(out, "\n  ~> {:<40} fallback", b.addr.to_string());
        if let Some(c) = counters(b.id) {
            backend_counters(&mut out, &c);
        }
    }
    out
}

/// A backend's counters on its line: connects always, the rest when not zero.
fn backend_counters(out: &mut String, c: &CounterTotals) {
    let _ = write!(out, "  connects {}", c.connects);
    for (name, n) in [
        ("no-sock-storage", c.no_sock_storage),
        ("established", c.established),
        ("failed", c.connect_failures),
        ("syn-timeouts", c.syn_timeouts),
        ("diverted", c.diverted),
    ] {
        if n > 0 {
            let _ = write!(out, "  {name} {n}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::FakeDatapath;

    #[test]
    fn backend_syntax_takes_an_optional_weight() {
        assert_eq!(
            "127.0.0.1:80=3".parse::<WeightedBackend>(),
            Ok(WeightedBackend {
                addr: "127.0.0.1:80".parse().unwrap(),
                weight: 3
            })
        );
        assert_eq!("[::1]:80".parse::<WeightedBackend>().unwrap().weight, 1);
        let err = "127.0.0.1:80=x".parse::<WeightedBackend>().unwrap_err();
        assert!(err.contains("weight `x`"), "{err}");
        let err = "127.0.0.1".parse::<WeightedBackend>().unwrap_err();
        assert!(err.contains("IP:PORT"), "{err}");
    }

    #[test]
    fn set_keeps_ids_of_backends_it_already_had() {
        let mut dp = FakeDatapath::new();
        let vip = Vip {
            addr: "127.1.0.1:80".parse().unwrap(),
            protocol: Protocol::Tcp,
        };
        let a: WeightedBackend = "127.0.0.1:1".parse().unwrap();
        let b: WeightedBackend = "127.0.0.2:2".parse().unwrap();
        let first = set(&mut dp, vip, &[a]).unwrap();
        let second = set(&mut dp, vip, &[b, a]).unwrap();
        assert_eq!(second.vip_id, first.vip_id);
        assert_eq!(second.backends[1].id, first.backends[0].id);
        assert_ne!(second.backends[0].id, first.backends[0].id);
        assert_ne!(second.backends[0].id, second.vip_id);
    }

    #[test]
    fn set_without_backends_installs_a_refusing_table() {
        let mut dp = FakeDatapath::new();
        let vip = Vip {
            addr: "127.1.0.1:80".parse().unwrap(),
            protocol: Protocol::Tcp,
        };
        let table = set(&mut dp, vip, &[]).unwrap();
        assert!(table.slots.is_empty());
        assert!(describe(
            &InstalledTable {
                table,
                generation: 1
            },
            |_| None,
            true
        )
        .contains("ECONNREFUSED"));
    }

    #[test]
    fn list_names_each_counter_for_what_it_counts() {
        let vip = Vip {
            addr: "127.1.0.1:80".parse().unwrap(),
            protocol: Protocol::Tcp,
        };
        let backend = TableBackend {
            addr: "127.0.0.1:1".parse().unwrap(),
            id: 2,
        };
        let table = VipTable::weighted(vip, 1, vec![backend], &[1]).unwrap();
        let counters = |id| {
            Some(match id {
                1 => CounterTotals {
                    connects: 10,
                    rejected: 1,
                    no_sock_storage: 2,
                    bad_table: 3,
                    family_mismatch: 4,
                    ..Default::default()
                },
                _ => CounterTotals {
                    connects: 10,
                    no_sock_storage: 2,
                    ..Default::default()
                },
            })
        };
        let text = describe(
            &InstalledTable {
                table,
                generation: 1,
            },
            counters,
            false,
        );
        assert!(
            text.contains(
                "connects 10  rejected 1  no-sock-storage 2  bad-table 3  family-mismatch 4"
            ),
            "{text}"
        );
        assert!(text.contains("connects 10  no-sock-storage 2"), "{text}");
    }

    #[test]
    fn describe_shows_the_kernels_outcomes_the_threshold_and_the_fallback_group() {
        let vip = Vip {
            addr: "127.1.0.1:80".parse().unwrap(),
            protocol: Protocol::Tcp,
        };
        let backend = |addr: &str, id| crate::datapath::TableBackend {
            addr: addr.parse().unwrap(),
            id,
        };
        let table = VipTable::weighted(vip, 1, vec![backend("127.0.0.1:1", 2)], &[1])
            .unwrap()
            .with_fallback(vec![backend("127.0.0.2:1", 3)])
            .with_passive_threshold(3);
        let counters = |id| {
            Some(CounterTotals {
                connects: 10,
                established: 7,
                connect_failures: if id == 2 { 3 } else { 0 },
                diverted: if id == 2 { 1 } else { 0 },
                ..Default::default()
            })
        };
        let text = describe(
            &InstalledTable {
                table,
                generation: 1,
            },
            counters,
            false,
        );
        assert!(
            text.contains("connects 10  established 7  failed 3  diverted 1"),
            "{text}"
        );
        assert!(
            text.contains("passive: 3 failed connects in a row mark a backend suspect"),
            "{text}"
        );
        assert!(text.contains("~> 127.0.0.2:1"), "{text}");
    }

    #[test]
    fn set_resets_the_counters_of_ids_it_hands_out() {
        let mut dp = FakeDatapath::new();
        let stale = CounterTotals {
            connects: 99,
            ..Default::default()
        };
        // Counts left under ids 1 and 2 by backends no table names any more.
        dp.set_counters(1, stale);
        dp.set_counters(2, stale);
        let vip = Vip {
            addr: "127.1.0.1:80".parse().unwrap(),
            protocol: Protocol::Tcp,
        };
        let table = set(&mut dp, vip, &["127.0.0.1:1".parse().unwrap()]).unwrap();
        assert_eq!((table.vip_id, table.backends[0].id), (1, 2));
        assert_eq!(dp.counters(1).unwrap(), CounterTotals::default());
        assert_eq!(dp.counters(2).unwrap(), CounterTotals::default());
    }
}
