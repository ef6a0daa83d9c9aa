//! Control API answers as text for a terminal: the status table (80 columns), explain and reload reports, and the stable JSON form of status.

use std::borrow::Cow;

use super::{
    BackendReport, DrainInfo, ExplainReport, ProbeReport, ReloadReport, ServiceReport, StatusReport,
};

/// Width every line of the status table fits in: 80 columns.
pub const WIDTH: usize = 80;

const INDENT: &str = "  ";
const GAP: &str = "  ";

/// `failoverd status --output json`: the [`StatusReport`] pretty-printed, with a final newline.
pub fn status_json(report: &StatusReport) -> Result<String, serde_json::Error> {
    serde_json::to_string_pretty(report).map(|mut s| {
        s.push('\n');
        s
    })
}

/// `failoverd status`: per service a header line, then one line per backend,
/// every line at most [`WIDTH`] characters; `now_unix` dates the drains.
///
/// ```text
/// orders-db  10.96.0.10:5432/tcp  active priority 0  (ready)
///   BACKEND  ADDRESS        STATE    WEIGHT  PRIO  PROBE     IN STATE  CONNECTS
///   db-a     10.0.0.5:5432  healthy     100     0  ok 1.2ms     3m12s     12034
///   db-b     10.0.0.6:5432  drained     100     0  ok 0.9ms       10m       345
///     drained by alice 10m ago: maintenance
/// ```
pub fn status_table(report: &StatusReport, now_unix: u64) -> String {
    if report.services.is_empty() {
        return format!("no services (failoverd {})\n", report.version);
    }
    let rows: Vec<Vec<[String; COLUMNS]>> = report
        .services
        .iter()
        .map(|s| s.backends.iter().map(backend_row).collect())
        .collect();
    let widths = column_widths(rows.iter().flatten());
    let mut out = String::new();
    for (i, (service, rows)) in report.services.iter().zip(&rows).enumerate() {
        if i > 0 {
            out.push('\n');
        }
        for header in service_header(service) {
            line(&mut out, &header);
        }
        if let Some(error) = &service.datapath_error {
            line(
                &mut out,
                &format!("{INDENT}kernel table not as decided: {error}"),
            );
        }
        if service.backends.is_empty() {
            line(&mut out, &format!("{INDENT}(no backends)"));
            continue;
        }
        line(&mut out, &table_line(&TITLES.map(str::to_owned), &widths));
        for (backend, row) in service.backends.iter().zip(rows) {
            line(&mut out, &table_line(row, &widths));
            if let Some(drain) = &backend.drain {
                line(
                    &mut out,
                    &format!("{INDENT}  {}", drain_note(drain, now_unix)),
                );
            }
        }
    }
    out
}

/// `failoverd explain`: where a connect to the VIP goes and why every other backend is out.
pub fn explain_text(report: &ExplainReport) -> String {
    let mut out = String::new();
    let active = match report.active_priority {
        Some(p) => format!("priority {p} takes new connections"),
        None => "no priority takes new connections".to_owned(),
    };
    push_line(
        &mut out,
        &format!(
            "{} → service {}: {active}",
            terminal_safe(&report.vip),
            terminal_safe(&report.service)
        ),
    );
    if let Some(error) = &report.datapath_error {
        push_line(
            &mut out,
            &format!("the kernel does not hold this table, connects follow the kernel's: {error}"),
        );
    }
    if report.refused {
        push_line(
            &mut out,
            "connects are refused with ECONNREFUSED: no backend is live (on_all_down: reject)",
        );
    }
    if report.panic {
        push_line(
            &mut out,
            "panic (on_all_down: panic): no backend is live, so connects go to every backend\nof the lowest priority",
        );
    }
    let width = |field: fn(&str, &str) -> usize| {
        report
            .reachable
            .iter()
            .map(|b| field(&b.name, &b.address))
            .chain(report.out.iter().map(|b| field(&b.name, &b.address)))
            .max()
            .unwrap_or(0)
    };
    let name_width = width(|name, _| terminal_safe(name).chars().count());
    let address_width = width(|_, address| terminal_safe(address).chars().count());
    if report.reachable.is_empty() {
        push_line(&mut out, "reachable: none");
    } else {
        push_line(&mut out, "reachable (share of new connections):");
        for b in &report.reachable {
            push_line(
                &mut out,
                &format!(
                    "{INDENT}{}{GAP}{}{GAP}{:>6.1}%",
                    pad(&terminal_safe(&b.name), name_width),
                    pad(&terminal_safe(&b.address), address_width),
                    b.share_percent
                ),
            );
        }
    }
    if !report.out.is_empty() {
        push_line(&mut out, "out:");
        for b in &report.out {
            let head = format!(
                "{INDENT}{}{GAP}{}{GAP}",
                pad(&terminal_safe(&b.name), name_width),
                pad(&terminal_safe(&b.address), address_width)
            );
            let reason = terminal_safe(&b.reason);
            // The reason is the point of explain: wrap it rather than cut it.
            if head.chars().count() + reason.chars().count() <= WIDTH {
                push_line(&mut out, &format!("{head}{reason}"));
            } else {
                push_line(&mut out, head.trim_end());
                push_line(&mut out, &format!("{INDENT}    {reason}"));
            }
        }
    }
    out
}

/// `failoverd reload`: what changed.
pub fn reload_text(report: &ReloadReport) -> String {
    let mut out = String::new();
    line(
        &mut out,
        &format!(
            "reloaded: {} added, {} removed, {} changed, {} unchanged",
            report.added.len(),
            report.removed.len(),
            report.changed.len(),
            report.unchanged.len()
        ),
    );
    for (what, names) in [
        ("added", &report.added),
        ("removed", &report.removed),
        ("changed", &report.changed),
    ] {
        if !names.is_empty() {
            line(
                &mut out,
                &format!(
                    "{INDENT}{:<9}{}",
                    format!("{what}:"),
                    terminal_safe(&names.join(", "))
                ),
            );
        }
    }
    out
}

/// `text` safe to print on a terminal as one line: control characters are shown escaped
/// (`\x1b`, `\n`, `\u{9b}`) instead of acting on the terminal.
///
/// Names, addresses, drain reasons and probe evidence come from configs, operators and
/// backends' answers; printed raw, an escape sequence in one could clear the screen, rewrite
/// what `status` shows or set the window title. Escaped: C0 controls (newline and tab too: a
/// field is one line), DEL, C1 controls, and the Unicode bidirectional overrides and isolates
/// that reorder what is displayed.
pub fn terminal_safe(text: &str) -> Cow<'_, str> {
    escape(text, false)
}

/// Like [`terminal_safe`], but keeps newlines and tabs: for multi-line text such as an error
/// message.
pub fn terminal_safe_lines(text: &str) -> Cow<'_, str> {
    escape(text, true)
}

fn escape(text: &str, keep_lines: bool) -> Cow<'_, str> {
    let unsafe_char = |c: char| {
        let kept = keep_lines && (c == '\n' || c == '\t');
        !kept && (c.is_control() || is_bidi_control(c))
    };
    if !text.chars().any(unsafe_char) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            c if !unsafe_char(c) => out.push(c),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if u32::from(c) < 0x80 => out.push_str(&format!("\\x{:02x}", u32::from(c))),
            c => out.push_str(&format!("\\u{{{:x}}}", u32::from(c))),
        }
    }
    Cow::Owned(out)
}

/// U+202A–U+202E (embeddings, overrides) and U+2066–U+2069 (isolates).
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// [`terminal_safe`] as an owned string.
fn safe(text: &str) -> String {
    terminal_safe(text).into_owned()
}

/// A compact duration with its two largest units: `45s`, `3m12s`, `10m`, `2h5m`, `4d3h`.
pub fn compact_duration(seconds: u64) -> String {
    const MINUTE: u64 = 60;
    const HOUR: u64 = 60 * MINUTE;
    const DAY: u64 = 24 * HOUR;
    let two = |big: u64, big_unit: &str, small: u64, small_unit: &str| {
        if small == 0 {
            format!("{big}{big_unit}")
        } else {
            format!("{big}{big_unit}{small}{small_unit}")
        }
    };
    match seconds {
        s if s < MINUTE => format!("{s}s"),
        s if s < HOUR => two(s / MINUTE, "m", s % MINUTE, "s"),
        s if s < DAY => two(s / HOUR, "h", s % HOUR / MINUTE, "m"),
        s => two(s / DAY, "d", s % DAY / HOUR, "h"),
    }
}

const COLUMNS: usize = 8;
const TITLES: [&str; COLUMNS] = [
    "BACKEND", "ADDRESS", "STATE", "WEIGHT", "PRIO", "PROBE", "FOR", "CONNECTS",
];
/// Spaces before each column. Right-aligned numbers narrower than their
/// title (weight ≤ 4 digits, priority ≤ 3, connects ≤ 7) bring their own.
const GAPS: [usize; COLUMNS] = [0, 2, 2, 1, 1, 2, 2, 1];
const NAME: usize = 0;
const ADDRESS: usize = 1;
const PROBE: usize = 5;
/// Numbers read best right-aligned.
const RIGHT: [bool; COLUMNS] = [false, false, false, true, true, false, true, true];
/// Columns that give up width, in this order, when a row would pass [`WIDTH`], down to these minimums.
const SHRINK: [(usize, usize); 4] = [(PROBE, 8), (NAME, 12), (ADDRESS, 15), (NAME, 6)];

fn backend_row(b: &BackendReport) -> [String; COLUMNS] {
    [
        safe(&b.name),
        safe(&b.address),
        safe(&b.state),
        b.weight.to_string(),
        b.priority.to_string(),
        b.last_probe.as_ref().map_or_else(|| "-".to_owned(), probe),
        compact_duration(b.in_state_seconds.max(0.0) as u64),
        count(b.kernel_connects),
    ]
}

/// `ok 1.2ms`, or the failure's first words: `refused`, `timeout`, `HTTP 503`.
fn probe(p: &ProbeReport) -> String {
    if p.ok {
        return format!("ok {}", latency(p.latency_ms));
    }
    let head = p.detail.split(':').next().unwrap_or("").trim();
    if head.is_empty() {
        "failed".to_owned()
    } else {
        safe(head)
    }
}

fn latency(ms: f64) -> String {
    if ms < 10.0 {
        format!("{ms:.1}ms")
    } else if ms < 1000.0 {
        format!("{ms:.0}ms")
    } else {
        format!("{:.1}s", ms / 1000.0)
    }
}

/// Exact below ten million, then `12.3M`, `4.5G` up to `18.4E`: at most 7 characters.
fn count(n: u64) -> String {
    if n < 10_000_000 {
        return n.to_string();
    }
    let mut value = n as f64 / 1e6;
    for unit in ["M", "G", "T", "P"] {
        // 999.95 would print as 1000.0: move to the next unit instead.
        if value < 999.95 {
            return format!("{value:.1}{unit}");
        }
        value /= 1000.0;
    }
    format!("{value:.1}E")
}

fn drain_note(d: &DrainInfo, now_unix: u64) -> String {
    let age = now_unix.saturating_sub(d.at_unix);
    let when = if age == 0 {
        "just now".to_owned()
    } else {
        format!("{} ago", compact_duration(age))
    };
    let by = terminal_safe(&d.by);
    match &d.reason {
        Some(reason) if !reason.is_empty() => {
            format!("drained by {by} {when}: {}", terminal_safe(reason))
        }
        _ => format!("drained by {by} {when}"),
    }
}

/// `orders-db  10.96.0.10:5432/tcp  active priority 0  (ready)`, on two lines when that passes [`WIDTH`].
fn service_header(s: &ServiceReport) -> Vec<String> {
    let active = match (s.active_priority, s.ready) {
        (Some(p), _) if s.panic => format!("PANIC on priority {p} (nothing live)"),
        (Some(p), _) => format!("active priority {p}"),
        (None, true) => "refusing connects".to_owned(),
        (None, false) => "no active priority".to_owned(),
    };
    let ready = match (&s.datapath_error, s.ready) {
        (Some(_), _) => "(DATAPATH FAILING)",
        (None, true) => "(ready)",
        (None, false) => "(not ready)",
    };
    let failback = if s.failback == "manual" {
        "  failback manual"
    } else {
        ""
    };
    let (name, vip) = (
        terminal_safe(&s.name),
        format!("{}/{}", terminal_safe(&s.vip), terminal_safe(&s.protocol)),
    );
    let state = format!("{active}{GAP}{ready}{failback}");
    let one = format!("{name}{GAP}{vip}{GAP}{state}");
    if one.chars().count() <= WIDTH {
        return vec![one];
    }
    let room = WIDTH.saturating_sub(GAP.len() + vip.chars().count()).max(8);
    vec![
        format!("{}{GAP}{vip}", ellipsize(&name, room)),
        format!("{INDENT}{state}"),
    ]
}

/// Natural widths (the widest cell or title), then narrowed until a row fits [`WIDTH`].
fn column_widths<'a>(rows: impl Iterator<Item = &'a [String; COLUMNS]>) -> [usize; COLUMNS] {
    let mut widths = TITLES.map(|t| t.chars().count());
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let total =
        |w: &[usize; COLUMNS]| INDENT.len() + w.iter().sum::<usize>() + GAPS.iter().sum::<usize>();
    for (column, minimum) in SHRINK {
        let over = total(&widths).saturating_sub(WIDTH);
        let spare = widths[column].saturating_sub(minimum);
        widths[column] -= over.min(spare);
    }
    widths
}

fn table_line(cells: &[String; COLUMNS], widths: &[usize; COLUMNS]) -> String {
    let mut out = String::from(INDENT);
    for (i, cell) in cells.iter().enumerate() {
        out.push_str(&" ".repeat(GAPS[i]));
        let cell = if i == ADDRESS {
            ellipsize_middle(cell, widths[i])
        } else {
            ellipsize(cell, widths[i])
        };
        let width = widths[i];
        if RIGHT[i] {
            out.push_str(&format!("{cell:>width$}"));
        } else {
            out.push_str(&format!("{cell:<width$}"));
        }
    }
    out.trim_end().to_owned()
}

/// Appends `text` and a newline, cut to [`WIDTH`] as a last resort.
fn line(out: &mut String, text: &str) {
    push_line(out, &ellipsize(text, WIDTH));
}

fn push_line(out: &mut String, text: &str) {
    out.push_str(text);
    out.push('\n');
}

fn pad(text: &str, width: usize) -> String {
    format!("{text:<width$}")
}

/// `text` cut to `width` characters, the last one `…` when cut.
fn ellipsize(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(width.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// Like [`ellipsize`] but keeping the end: an address keeps its port (`[fd00:…:5]:5432`).
fn ellipsize_middle(text: &str, width: usize) -> String {
    let len = text.chars().count();
    if len <= width {
        return text.to_owned();
    }
    if width < 3 {
        return ellipsize(text, width);
    }
    let tail = (width - 1) / 2;
    let head = width - 1 - tail;
    let start: String = text.chars().take(head).collect();
    let end: String = text.chars().skip(len - tail).collect();
    format!("{start}…{end}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::{OutBackend, ReachableBackend};

    const NOW: u64 = 1_700_000_000;

    fn backend(name: &str, address: &str, state: &str) -> BackendReport {
        BackendReport {
            name: name.to_owned(),
            address: address.to_owned(),
            state: state.to_owned(),
            weight: 100,
            priority: 0,
            in_table: state == "healthy",
            last_probe: Some(ProbeReport {
                ok: true,
                detail: "connected".to_owned(),
                latency_ms: 1.234,
            }),
            in_state_seconds: 192.4,
            ejections: 0,
            kernel_connects: 12_034,
            drain: None,
        }
    }

    fn fixture() -> StatusReport {
        let mut drained = backend("db-b", "10.0.0.6:5432", "drained");
        drained.drain = Some(DrainInfo {
            by: "alice".to_owned(),
            at_unix: NOW - 600,
            reason: Some("maintenance".to_owned()),
        });
        let mut refused = backend("db-c", "10.0.0.7:5432", "unhealthy");
        refused.priority = 1;
        refused.last_probe = Some(ProbeReport {
            ok: false,
            detail: "refused: connection refused (os error 111)".to_owned(),
            latency_ms: 0.2,
        });
        let long_name = "a-backend-name-that-goes-on-and-on-for-sixty-four-characters-xx";
        let mut v6 = backend(
            long_name,
            "[fd00:1234:5678:9abc:def0:1234:5678:9abc]:65535",
            "unknown",
        );
        v6.last_probe = None;
        v6.weight = 1000;
        v6.priority = 255;
        v6.kernel_connects = u64::MAX;
        v6.in_state_seconds = 400_000.0;
        v6.drain = Some(DrainInfo {
            by: "bob".to_owned(),
            at_unix: NOW,
            reason: Some("r".repeat(200)),
        });
        StatusReport {
            version: "0.1.0".to_owned(),
            services: vec![
                ServiceReport {
                    name: "orders-db".to_owned(),
                    vip: "10.96.0.10:5432".to_owned(),
                    protocol: "tcp".to_owned(),
                    active_priority: Some(0),
                    ready: true,
                    panic: false,
                    datapath_error: None,
                    on_all_down: "reject".to_owned(),
                    failback: "auto".to_owned(),
                    backends: vec![
                        backend("db-a", "10.0.0.5:5432", "healthy"),
                        drained,
                        refused,
                    ],
                },
                ServiceReport {
                    name: "s".repeat(64),
                    vip: "[fd00:1234:5678:9abc:def0:1234:5678:10]:65535".to_owned(),
                    protocol: "udp".to_owned(),
                    active_priority: None,
                    ready: false,
                    panic: false,
                    datapath_error: None,
                    on_all_down: "panic".to_owned(),
                    failback: "manual".to_owned(),
                    backends: vec![v6],
                },
            ],
        }
    }

    #[test]
    fn every_status_line_fits_80_columns() {
        let table = status_table(&fixture(), NOW);
        for line in table.lines() {
            assert!(
                line.chars().count() <= WIDTH,
                "{} chars: {line}",
                line.chars().count()
            );
        }
    }

    #[test]
    fn the_status_table_shows_services_backends_and_drains() {
        let table = status_table(&fixture(), NOW);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[0],
            "orders-db  10.96.0.10:5432/tcp  active priority 0  (ready)"
        );
        assert!(lines[1].starts_with("  BACKEND"), "{table}");
        let a: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(
            a,
            [
                "db-a",
                "10.0.0.5:5432",
                "healthy",
                "100",
                "0",
                "ok",
                "1.2ms",
                "3m12s",
                "12034"
            ],
            "{table}"
        );
        assert!(lines[3].starts_with("  db-b "), "{table}");
        assert_eq!(lines[4], "    drained by alice 10m ago: maintenance");
        let c: Vec<&str> = lines[5].split_whitespace().collect();
        assert_eq!(c[2..6], ["unhealthy", "100", "1", "refused"], "{table}");
        assert!(
            table.contains("\n  no active priority  (not ready)  failback manual\n"),
            "a header too long for one line goes on two: {table}"
        );
        assert!(
            table.contains("…]:65535"),
            "the port survives the cut: {table}"
        );
        assert!(table.contains("drained by bob just now: rrr"), "{table}");
        assert!(table.contains("4d15h"), "{table}");
        assert!(table.contains("18.4E"), "{table}");
    }

    #[test]
    fn columns_line_up_across_services() {
        let table = status_table(&fixture(), NOW);
        let titles: Vec<&str> = table
            .lines()
            .filter(|l| l.starts_with("  BACKEND"))
            .collect();
        assert_eq!(titles.len(), 2);
        assert_eq!(titles[0], titles[1]);
    }

    #[test]
    fn an_empty_report_says_so() {
        let report = StatusReport {
            version: "0.1.0".to_owned(),
            services: vec![],
        };
        assert_eq!(
            status_table(&report, NOW),
            "no services (failoverd 0.1.0)\n"
        );
    }

    #[test]
    fn status_json_is_the_report_pretty_printed() {
        let report = fixture();
        let text = status_json(&report).unwrap();
        assert!(
            text.starts_with("{\n  \"version\": \"0.1.0\",\n  \"services\": ["),
            "{text}"
        );
        let back: StatusReport = serde_json::from_str(&text).unwrap();
        assert_eq!(back, report);
    }

    #[test]
    fn large_counts_stay_narrow() {
        let cases = [
            (9_999_999, "9999999"),
            (10_000_000, "10.0M"),
            (999_949_999, "999.9M"),
            (999_950_000, "1.0G"),
            (12_300_000_000, "12.3G"),
            (u64::MAX, "18.4E"),
        ];
        for (n, shown) in cases {
            assert_eq!(count(n), shown);
        }
    }

    #[test]
    fn durations_keep_their_two_largest_units() {
        let cases = [
            (0, "0s"),
            (45, "45s"),
            (192, "3m12s"),
            (600, "10m"),
            (7500, "2h5m"),
            (7200, "2h"),
            (97_200, "1d3h"),
        ];
        for (seconds, shown) in cases {
            assert_eq!(compact_duration(seconds), shown);
        }
    }

    #[test]
    fn explain_lists_shares_and_reasons() {
        let report = ExplainReport {
            datapath_error: None,
            vip: "10.96.0.10:5432".to_owned(),
            service: "orders-db".to_owned(),
            active_priority: Some(0),
            refused: false,
            panic: false,
            reachable: vec![
                ReachableBackend {
                    name: "db-a".to_owned(),
                    address: "10.0.0.5:5432".to_owned(),
                    share_percent: 75.0,
                },
                ReachableBackend {
                    name: "db-b".to_owned(),
                    address: "10.0.0.6:5432".to_owned(),
                    share_percent: 25.0,
                },
            ],
            out: vec![OutBackend {
                name: "db-c".to_owned(),
                address: "10.0.0.7:5432".to_owned(),
                reason: "standby: priority 1 while priority 0 is live".to_owned(),
            }],
        };
        let text = explain_text(&report);
        assert_eq!(
            text,
            "10.96.0.10:5432 → service orders-db: priority 0 takes new connections\n\
             reachable (share of new connections):\n  \
             db-a  10.0.0.5:5432    75.0%\n  \
             db-b  10.0.0.6:5432    25.0%\n\
             out:\n  \
             db-c  10.0.0.7:5432  standby: priority 1 while priority 0 is live\n"
        );
    }

    #[test]
    fn explain_says_when_connects_are_refused() {
        let report = ExplainReport {
            datapath_error: None,
            vip: "10.96.0.10:5432".to_owned(),
            service: "orders-db".to_owned(),
            active_priority: None,
            refused: true,
            panic: false,
            reachable: vec![],
            out: vec![OutBackend {
                name: "db-a".to_owned(),
                address: "10.0.0.5:5432".to_owned(),
                reason: format!("unhealthy: refused: {}", "x".repeat(80)),
            }],
        };
        let text = explain_text(&report);
        assert!(text.contains("refused with ECONNREFUSED"), "{text}");
        assert!(text.contains("reachable: none"), "{text}");
        assert!(
            text.contains("\n  db-a  10.0.0.5:5432\n      unhealthy: refused: xxx"),
            "{text}"
        );
    }

    #[test]
    fn reload_lists_what_changed() {
        let report = ReloadReport {
            added: vec!["payments".to_owned()],
            removed: vec![],
            changed: vec!["orders-db".to_owned(), "cache".to_owned()],
            unchanged: vec!["a".to_owned(); 5],
        };
        assert_eq!(
            reload_text(&report),
            "reloaded: 1 added, 0 removed, 2 changed, 5 unchanged\n  \
             added:   payments\n  \
             changed: orders-db, cache\n"
        );
    }

    /// Whether `text` would act on a terminal: any control character but newline, or a bidi
    /// control.
    fn acts_on_terminal(text: &str) -> bool {
        text.chars()
            .any(|c| (c.is_control() && c != '\n') || is_bidi_control(c))
    }

    #[test]
    fn control_characters_are_escaped_and_the_rest_kept() {
        assert_eq!(terminal_safe("db-a"), "db-a");
        assert!(matches!(terminal_safe("plain é → ok"), Cow::Borrowed(_)));
        assert_eq!(
            terminal_safe("a\x1b[2Jb\x07c\x7fd\u{9b}31me\r\nf\tg\0"),
            r"a\x1b[2Jb\x07c\x7fd\u{9b}31me\r\nf\tg\x00"
        );
        assert_eq!(terminal_safe("x\u{202e}gnp.exe"), r"x\u{202e}gnp.exe");
        assert_eq!(
            terminal_safe_lines("line one\n\tline two\x1b[0m"),
            "line one\n\tline two\\x1b[0m"
        );
    }

    #[test]
    fn status_escapes_what_operators_and_backends_wrote() {
        let mut report = fixture();
        let evil = "\x1b]0;pwned\x07\x1b[2J\u{9b}1m";
        report.services[0].name = format!("orders{evil}");
        let backend = &mut report.services[0].backends[1];
        backend.name = format!("db-b{evil}");
        backend.drain.as_mut().unwrap().reason = Some(format!("maintenance{evil}\nfake line"));
        backend.drain.as_mut().unwrap().by = format!("alice{evil}");
        report.services[0].backends[2].last_probe = Some(ProbeReport {
            ok: false,
            detail: format!("HTTP 500 {evil}: body"),
            latency_ms: 1.0,
        });
        let table = status_table(&report, NOW);
        assert!(!acts_on_terminal(&table), "{table:?}");
        assert!(
            table.contains(r"drained by alice\x1b]0;pwned\x07"),
            "{table}"
        );
        assert!(
            !table.contains("\nfake line"),
            "a reason stays on its line: {table}"
        );
        for line in table.lines() {
            assert!(line.chars().count() <= WIDTH, "{line}");
        }
    }

    #[test]
    fn explain_and_reload_escape_names_and_reasons() {
        // From JSON, as the client gets it: fields added to the report later keep their defaults.
        let report: ExplainReport = serde_json::from_value(serde_json::json!({
            "vip": "10.96.0.10:5432",
            "service": "orders\u{1b}[31m",
            "active_priority": 0,
            "refused": false,
            "panic": false,
            "reachable": [{"name": "a\u{9b}2J", "address": "10.0.0.5:5432", "share_percent": 100.0}],
            "out": [{
                "name": "b",
                "address": "10.0.0.6:5432",
                "reason": "drained by eve: \u{1b}[1A\u{1b}[2Kall fine"
            }],
        }))
        .unwrap();
        let text = explain_text(&report);
        assert!(!acts_on_terminal(&text), "{text:?}");
        assert!(
            text.contains(r"drained by eve: \x1b[1A\x1b[2Kall fine"),
            "{text}"
        );
        let reload = reload_text(&ReloadReport {
            added: vec!["new\x1b[8m".to_owned()],
            removed: vec![],
            changed: vec![],
            unchanged: vec![],
        });
        assert!(!acts_on_terminal(&reload), "{reload:?}");
    }
}
