//! Control API answers as text for a terminal: the status table (80 columns), explain and reload reports, and the stable JSON form of status.

use std::borrow::Cow;

use crate::control::{
    BackendReport, DrainInfo, ExplainReport, PassiveReport, ProbeReport, ReloadReport,
    ServiceReport, StatusReport,
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
        if !service.split_brain.is_empty() {
            line(
                &mut out,
                &format!(
                    "{INDENT}SPLIT BRAIN: {} all answer primary; new connections stay on the one in the table",
                    safe(&service.split_brain.join(", "))
                ),
            );
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
            if let Some(note) = backend.passive.as_ref().and_then(passive_note) {
                line(&mut out, &format!("{INDENT}  {note}"));
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

/// `kernel: 3 failed connects in a row (refused, 2s ago); passive ejection`, or
/// nothing to say when the kernel's count is back at zero and nothing holds it out.
fn passive_note(p: &PassiveReport) -> Option<String> {
    let last = match (&p.last_failure, p.last_failure_seconds_ago) {
        (Some(kind), Some(ago)) => format!(
            " ({}, {} ago)",
            terminal_safe(kind),
            compact_duration(ago.max(0.0) as u64)
        ),
        _ => String::new(),
    };
    match (p.ejected, p.consecutive_failures) {
        (true, n) => Some(format!(
            "kernel: {n} failed connects in a row{last}; passive ejection"
        )),
        (false, 0) => None,
        (false, n) => Some(format!("kernel: {n} failed connects in a row{last}")),
    }
}

fn drain_note(d: &DrainInfo, now_unix: u64) -> String {
    let age = now_unix.saturating_sub(d.at_unix);
    let when = if age == 0 {
        "just now".to_owned()
    } else {
        format!("{} ago", compact_duration(age))
    };
    let by = terminal_safe(&d.by);
    // A fleet drain says so: it is undone with `undrain --fleet`, on every host.
    let drained = if d.fleet { "fleet-drained" } else { "drained" };
    match &d.reason {
        Some(reason) if !reason.is_empty() => {
            format!("{drained} by {by} {when}: {}", terminal_safe(reason))
        }
        _ => format!("{drained} by {by} {when}"),
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
mod tests;
