//! What a scenario measured, written as `<scenario>.json` in the results directory, and the
//! summary table (`summary.md`) rebuilt from every result file present there. The directory is
//! outside the source tree (cargo's target directory) unless `FAILOVERD_CHAOS_RESULTS` says
//! otherwise: running the tests never rewrites files in the tree.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use libtest_mimic::Failed;
use serde::{Deserialize, Serialize};

use crate::scenarios::Scenario;
use crate::support::client::ClientReport;
use crate::timeline::Timeline;

/// One scenario's result.
#[derive(Serialize, Deserialize, Default, Debug)]
pub struct Record {
    /// The scenario's name (its trial name).
    pub scenario: String,
    /// One line saying what it does.
    pub title: String,
    /// Whether every assertion held.
    pub passed: bool,
    /// The failed assertion, if any.
    pub error: Option<String>,
    /// When it started, in seconds since the Unix epoch.
    pub started_unix_s: u64,
    /// How long it ran, in seconds.
    pub wall_s: f64,
    /// Client attempts through the VIP(s).
    pub attempts: u64,
    /// Attempts that failed.
    pub failed: u64,
    /// Failed attempts by errno name.
    pub failed_by_errno: BTreeMap<String, u64>,
    /// Connects that reached a dead, frozen, unreachable or drained backend.
    pub stale: u64,
    /// From the fault to full recovery (the first success after the last failure), in ms;
    /// 0 when no client saw the fault.
    pub recovery_ms: Option<f64>,
    /// The bound the scenario holds recovery (or detection) to, in ms.
    pub bound_ms: Option<f64>,
    /// Scenario-specific numbers, by name.
    pub numbers: BTreeMap<String, serde_json::Value>,
    /// The first failed attempts (at most `MAX_FAILURES_KEPT`), for reading what happened.
    #[serde(default)]
    pub failures: Vec<FailedAttempt>,
}

/// How many failed attempts a record keeps.
const MAX_FAILURES_KEPT: usize = 50;

/// A failed attempt, as a record keeps it.
#[derive(Serialize, Deserialize, Debug)]
pub struct FailedAttempt {
    /// When it started, in ms after the scenario's origin (typically its fault).
    pub at_ms: f64,
    /// Which of the client's targets.
    pub target: u32,
    /// The errno's name.
    pub error: String,
    /// How long it took, in ms.
    pub took_ms: f64,
}

impl Record {
    /// Adds a client's attempts and failures.
    pub fn add_load(&mut self, report: &ClientReport) {
        self.attempts += report.attempts();
        for (errno, n) in &report.errors {
            self.failed += n;
            *self.failed_by_errno.entry(errno_name(*errno)).or_insert(0) += n;
        }
    }

    /// Keeps the first failed attempts of `timeline`, timed from `origin_ns` (a fault).
    pub fn keep_failures(&mut self, timeline: &Timeline, origin_ns: u64) {
        let room = MAX_FAILURES_KEPT.saturating_sub(self.failures.len());
        self.failures
            .extend(timeline.failures().take(room).map(|a| FailedAttempt {
                at_ms: round((a.at_ns as f64 - origin_ns as f64) / 1e6, 1),
                target: a.target,
                error: errno_name(a.errno.unwrap_or(0)),
                took_ms: round(f64::from(a.took_us) / 1000.0, 1),
            }));
    }

    /// Records a scenario-specific number.
    pub fn note(&mut self, key: &str, value: impl Into<serde_json::Value>) {
        self.numbers.insert(key.to_owned(), value.into());
    }
}

/// The symbolic name of the errnos a client can see.
pub fn errno_name(errno: i32) -> String {
    match errno {
        libc::ECONNREFUSED => "ECONNREFUSED".into(),
        libc::ETIMEDOUT => "ETIMEDOUT".into(),
        libc::ENETUNREACH => "ENETUNREACH".into(),
        libc::EHOSTUNREACH => "EHOSTUNREACH".into(),
        libc::ECONNRESET => "ECONNRESET".into(),
        libc::EBADMSG => "no answer (EOF)".into(),
        libc::EINPROGRESS => "EINPROGRESS".into(),
        other => format!("errno {other}"),
    }
}

/// The environment variable that names the results directory, overriding the default.
pub const RESULTS_ENV: &str = "FAILOVERD_CHAOS_RESULTS";

/// Where records go: `$FAILOVERD_CHAOS_RESULTS` when set and not empty (a relative path is
/// taken from the workspace root, not from `failoverd/`, where cargo runs the test), else
/// `chaos-results/` in cargo's temporary directory for integration tests, `target/tmp/` (under
/// `$CARGO_TARGET_DIR` when that is set).
pub fn results_dir() -> PathBuf {
    match std::env::var_os(RESULTS_ENV) {
        Some(dir) if !dir.is_empty() => {
            // `failoverd/`'s parent; the package always has one.
            let package = Path::new(env!("CARGO_MANIFEST_DIR"));
            package.parent().unwrap_or(package).join(dir)
        }
        _ => Path::new(env!("CARGO_TARGET_TMPDIR")).join("chaos-results"),
    }
}

/// Runs a scenario, writes its record (pass or fail) and returns its verdict.
pub fn run(scenario: &Scenario) -> Result<(), Failed> {
    let mut record = Record {
        scenario: scenario.name.to_owned(),
        title: scenario.title.to_owned(),
        started_unix_s: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        ..Record::default()
    };
    let start = Instant::now();
    let verdict = (scenario.run)(&mut record);
    record.wall_s = round(start.elapsed().as_secs_f64(), 2);
    record.passed = verdict.is_ok();
    record.error = verdict.as_ref().err().map(|e| format!("{e:?}"));
    if let Err(e) = write_record(&record) {
        eprintln!("chaos: writing the result of {} failed: {e}", scenario.name);
    }
    verdict
}

fn write_record(record: &Record) -> io::Result<()> {
    let dir = results_dir();
    std::fs::create_dir_all(&dir)?;
    let json = serde_json::to_string_pretty(record).map_err(io::Error::other)?;
    std::fs::write(dir.join(format!("{}.json", record.scenario)), json + "\n")
}

/// Rebuilds `summary.md` from every `<scenario>.json` in the results directory and prints it.
pub fn write_summary() -> io::Result<()> {
    let dir = results_dir();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(());
    };
    let mut records: Vec<Record> = entries
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|text| serde_json::from_str(&text).ok())
        .collect();
    records.sort_by(|a, b| a.scenario.cmp(&b.scenario));
    let table = summary_table(&records);
    std::fs::write(dir.join("summary.md"), &table)?;
    println!(
        "\n{table}\nchaos: records and summary.md in {}",
        dir.display()
    );
    Ok(())
}

/// The summary as a Markdown table, one row per scenario.
pub fn summary_table(records: &[Record]) -> String {
    let mut out = String::from(
        "| scenario | result | attempts | failed | stale | fault → recovered | bound | details |\n\
         |---|---|---:|---:|---:|---:|---:|---|\n",
    );
    for r in records {
        let ms = |v: Option<f64>| v.map_or("–".to_owned(), |v| format!("{v:.0} ms"));
        let details: Vec<String> = r
            .numbers
            .iter()
            .map(|(k, v)| format!("{k}={}", v.to_string().trim_matches('"')))
            .collect();
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.scenario,
            if r.passed { "pass" } else { "FAIL" },
            r.attempts,
            r.failed,
            r.stale,
            ms(r.recovery_ms),
            ms(r.bound_ms),
            details.join(", ")
        ));
    }
    out
}

/// `v` rounded to `places` decimals, for readable JSON.
pub fn round(v: f64, places: i32) -> f64 {
    let f = 10f64.powi(places);
    (v * f).round() / f
}
