//! The renderers against fixed reports: widths, columns, escapes.

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
        passive: None,
        kernel_outcomes: None,
        drain: None,
    }
}

fn fixture() -> StatusReport {
    let mut drained = backend("db-b", "10.0.0.6:5432", "drained");
    drained.drain = Some(DrainInfo {
        by: "alice".to_owned(),
        at_unix: NOW - 600,
        reason: Some("maintenance".to_owned()),
        fleet: false,
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
        fleet: false,
    });
    StatusReport {
        version: "0.1.0".to_owned(),
        fleet: None,
        services: vec![
            ServiceReport {
                name: "orders-db".to_owned(),
                vip: "10.96.0.10:5432".to_owned(),
                protocol: "tcp".to_owned(),
                active_priority: Some(0),
                ready: true,
                panic: false,
                split_brain: Vec::new(),
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
                split_brain: Vec::new(),
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
        fleet: None,
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

#[test]
fn status_shows_the_kernels_evidence_under_the_backend() {
    let mut a = backend("db-a", "10.0.0.5:5432", "ejected");
    a.passive = Some(PassiveReport {
        consecutive_failures: 3,
        last_failure: Some("refused".into()),
        last_failure_seconds_ago: Some(2.4),
        ejections: 1,
        ejected: true,
    });
    let mut b = backend("db-b", "10.0.0.6:5432", "healthy");
    // The kernel's count went back to zero (an established connect): nothing to say.
    b.passive = Some(PassiveReport {
        consecutive_failures: 0,
        last_failure: Some("refused".into()),
        last_failure_seconds_ago: Some(60.0),
        ejections: 0,
        ejected: false,
    });
    let mut report = fixture();
    report.services[0].backends = vec![a, b];
    let text = status_table(&report, NOW);
    assert!(
        text.contains("kernel: 3 failed connects in a row (refused, 2s ago); passive ejection"),
        "{text}"
    );
    assert_eq!(text.matches("kernel:").count(), 1, "{text}");
}
