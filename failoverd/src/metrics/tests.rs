//! The recorder's exposition: HELP and TYPE for every metric, the per-backend switch, and the
//! series of removed services and backends leaving `/metrics`.

use std::{cell::Cell, collections::BTreeSet, sync::Mutex};

use super::{catalog::METRICS, *};

/// Held by the tests that flip or depend on the global `per_backend` switch.
static PER_BACKEND_SWITCH: Mutex<()> = Mutex::new(());

thread_local! {
    /// The live services this thread's test records into and renders, instead of [`LIVE`]:
    /// tests run in parallel in one process, and one rendering a fresh recorder must see its
    /// own services' series only (as `metrics::with_local_recorder` does for the registry).
    pub(super) static LOCAL_LIVE: Cell<Option<&'static RwLock<Live>>> = const { Cell::new(None) };
}

/// What `record` leaves in a fresh recorder's exposition (and fresh blocks).
fn rendered(record: impl FnOnce()) -> String {
    let recorder = Recorder::new(&[]);
    let handle = recorder.handle();
    // Leaked: a few per test run, and `'static` is what `live_lock` hands out.
    let local: &'static RwLock<Live> = Box::leak(Box::new(RwLock::new(BTreeMap::new())));
    LOCAL_LIVE.with(|l| l.set(Some(local)));
    metrics::with_local_recorder(&recorder, || {
        describe_all();
        record()
    });
    let text = handle.render();
    LOCAL_LIVE.with(|l| l.set(None));
    text
}

/// Every per-backend and per-service series of `service`, with backends `backends`.
fn every_series_of(service: &str, backends: &[&str]) {
    zero_service(service, &[0, 1]);
    for b in backends {
        zero_backend(service, b);
        probe_latency(service, b).record(0.001);
        transition(service, b, "healthy");
        ejection(service, b);
        backend(service, b, 0, "healthy", true, false);
        kernel_connects(service, b, 7);
        kernel_outcomes(
            service,
            b,
            &crate::datapath::CounterTotals {
                established: 5,
                connect_failures: 2,
                syn_timeouts: 1,
                diverted: 1,
                ..Default::default()
            },
        );
        passive_failure(service, b, "refused");
        passive_ejection(service, b);
        sockets_terminated(service, b, "down", 3);
        probe_failure(
            service,
            b,
            &ProbeError::Timeout {
                addr: "127.0.0.1:1".parse().unwrap(),
                after: std::time::Duration::from_millis(50),
            },
        );
    }
    kernel_rejections(service, 2);
    kernel_errors(service, [1, 0, 0]);
    failover(service, Some(0), Some(1));
    self::service(service, Some(0), backends.len());
}

/// One series of every metric failoverd exports.
fn every_metric() {
    every_series_of("orders", &["db-a"]);
    probes_skipped(1);
    datapath_write(true);
    datapath_write(false);
    datapath_repair("missing");
    datapath_failing_vips(0);
    reload(true);
    fleet_connected(true);
    fleet_apply(true);
    fleet_services(1);
    gauge!(names::BUILD_INFO, "version" => "test").set(1.0);
    counter!(names::PANICS).increment(0);
    collect_process();
}

/// The metric names of a render's `# HELP`/`# TYPE` lines, with the rest of the line.
fn header_lines<'a>(text: &'a str, prefix: &str) -> Vec<(&'a str, &'a str)> {
    text.lines()
        .filter_map(|l| l.strip_prefix(prefix))
        .filter_map(|l| l.split_once(' '))
        .collect()
}

#[test]
fn every_metric_renders_with_its_help_and_type() {
    let _switch = PER_BACKEND_SWITCH.lock().unwrap_or_else(|e| e.into_inner());
    let text = rendered(every_metric);
    let help: BTreeSet<&str> = header_lines(&text, "# HELP ")
        .into_iter()
        .filter(|(_, help)| !help.trim().is_empty())
        .map(|(name, _)| name)
        .collect();
    let types = header_lines(&text, "# TYPE ");
    for metric in METRICS {
        // The kernel may not give every figure (e.g. an unlimited address space has no max).
        if metric.name == names::PROCESS_VIRTUAL_MEMORY_MAX && !text.contains(metric.name) {
            continue;
        }
        assert!(
            help.contains(metric.name),
            "no non-empty `# HELP {}`:\n{text}",
            metric.name
        );
        assert!(
            types.contains(&(metric.name, metric.kind.word())),
            "no `# TYPE {} {}`:\n{text}",
            metric.name,
            metric.kind.word()
        );
    }
    for (name, _) in &types {
        assert!(
            catalog::find(name).is_some(),
            "{name} is exported but not in the catalog:\n{text}"
        );
    }
    for (name, _) in &types {
        let metric = catalog::find(name).unwrap();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some(rest) = line.strip_prefix(name) else {
                continue;
            };
            // `{labels} value`, or ` value`; histograms add _bucket/_sum/_count.
            let Some(labels) = rest.strip_prefix('{').and_then(|r| r.split_once('}')) else {
                continue;
            };
            let got: Vec<&str> = labels
                .0
                .split(',')
                .filter_map(|kv| kv.split_once('=').map(|(k, _)| k))
                .filter(|k| *k != "le")
                .collect();
            assert_eq!(got, metric.labels, "labels of {line}");
        }
    }
}

#[test]
fn a_render_shows_the_process_rss_and_open_fds() {
    let text = rendered(collect_process);
    for name in ["process_resident_memory_bytes", "process_open_fds"] {
        let value: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no `{name} VALUE` line:\n{text}"));
        assert!(value > 0.0, "{name} is {value}:\n{text}");
    }
}

#[test]
fn histograms_render_cumulative_buckets_sum_and_count() {
    let text = rendered(|| {
        zero_service("s", &[0]);
        zero_backend("s", "b");
        let h = probe_latency("s", "b");
        h.record(0.25);
        h.record(0.5);
        h.record(8.0);
    });
    for want in [
        r#"failoverd_probe_duration_seconds_bucket{service="s",backend="b",le="0.0005"} 0"#,
        r#"failoverd_probe_duration_seconds_bucket{service="s",backend="b",le="0.1"} 0"#,
        r#"failoverd_probe_duration_seconds_bucket{service="s",backend="b",le="0.25"} 1"#,
        r#"failoverd_probe_duration_seconds_bucket{service="s",backend="b",le="0.5"} 2"#,
        r#"failoverd_probe_duration_seconds_bucket{service="s",backend="b",le="5"} 2"#,
        r#"failoverd_probe_duration_seconds_bucket{service="s",backend="b",le="+Inf"} 3"#,
        r#"failoverd_probe_duration_seconds_sum{service="s",backend="b"} 8.75"#,
        r#"failoverd_probe_duration_seconds_count{service="s",backend="b"} 3"#,
    ] {
        assert!(text.lines().any(|l| l == want), "no line {want}:\n{text}");
    }
}

#[test]
fn label_values_are_escaped() {
    let text = rendered(|| {
        zero_service("a\"b\\c\nd", &[]);
        self::service("a\"b\\c\nd", None, 0)
    });
    assert!(
        text.contains(r#"failoverd_service_live_backends{service="a\"b\\c\nd"} 0"#),
        "{text}"
    );
}

#[test]
fn per_backend_off_leaves_only_service_series() {
    // The switch is global: both halves live here, in order, under the lock.
    let _switch = PER_BACKEND_SWITCH.lock().unwrap_or_else(|e| e.into_inner());
    set_per_backend(true);
    let on = rendered(|| every_series_of("orders", &["db-a"]));
    assert!(on.contains(r#"backend="db-a""#), "{on}");
    set_per_backend(false);
    let off = rendered(|| every_series_of("orders", &["db-a"]));
    set_per_backend(true);
    assert!(
        !off.contains("db-a"),
        "no per-backend series when off:\n{off}"
    );
    assert!(
        off.contains(r#"failoverd_service_live_backends{service="orders"} 1"#)
            && off.contains(r#"failoverd_connects_rejected_total{service="orders"} 2"#),
        "service series stay:\n{off}"
    );
}

/// The series lines (not HELP/TYPE) of a render that carry `label`.
fn lines_with<'a>(text: &'a str, label: &str) -> Vec<&'a str> {
    text.lines()
        .filter(|l| !l.starts_with('#') && l.contains(label))
        .collect()
}

/// The global recorder, as the daemon installs it (once per process: other tests may share it,
/// so these use service names of their own).
#[test]
fn forget_service_removes_exactly_that_services_series() {
    let _switch = PER_BACKEND_SWITCH.lock().unwrap_or_else(|e| e.into_inner());
    let handle = install().expect("the global recorder");
    every_series_of("forget-gone", &["a", "b"]);
    every_series_of("forget-kept", &["a", "b"]);
    let before = handle.render();
    let gone = r#"service="forget-gone""#;
    let kept = r#"service="forget-kept""#;
    assert!(!lines_with(&before, gone).is_empty(), "{before}");
    let kept_before = lines_with(&before, kept);

    forget_service("forget-gone");

    let after = handle.render();
    assert_eq!(
        lines_with(&after, gone),
        Vec::<&str>::new(),
        "the removed service's series are gone"
    );
    assert_eq!(
        lines_with(&after, kept),
        kept_before,
        "the other service's series stay, unchanged"
    );
    assert!(
        after.contains("# HELP failoverd_probes_skipped_total ")
            && after.contains("failoverd_probes_skipped_total "),
        "daemon-wide series stay:\n{after}"
    );

    // Added back (a later reload), it starts from 0 again.
    every_series_of("forget-gone", &["a"]);
    let again = handle.render();
    assert!(
        again.contains(r#"failoverd_connects_total{service="forget-gone",backend="a"} 7"#)
            && again.contains(
                r#"failoverd_failovers_total{service="forget-gone",from_priority="0",to_priority="1"} 1"#
            ),
        "{again}"
    );
}

#[test]
fn forget_backend_removes_exactly_that_backends_series() {
    let _switch = PER_BACKEND_SWITCH.lock().unwrap_or_else(|e| e.into_inner());
    let handle = install().expect("the global recorder");
    let old = "db@192.0.2.1:5432";
    let new = "db@192.0.2.2:5432";
    every_series_of("forget-backend", &[old, new]);
    every_series_of("forget-backend-other", &[old]);
    let before = handle.render();
    let old_label = format!(r#"service="forget-backend",backend="{old}""#);
    let new_label = format!(r#"service="forget-backend",backend="{new}""#);
    let other = r#"service="forget-backend-other""#;
    assert!(!lines_with(&before, &old_label).is_empty(), "{before}");
    let (new_before, other_before) = (lines_with(&before, &new_label), lines_with(&before, other));

    forget_backend("forget-backend", old);

    let after = handle.render();
    assert_eq!(lines_with(&after, &old_label), Vec::<&str>::new());
    assert_eq!(lines_with(&after, &new_label), new_before);
    assert_eq!(
        lines_with(&after, other),
        other_before,
        "the same backend name in another service stays"
    );
    assert!(
        after.contains(r#"failoverd_service_live_backends{service="forget-backend"} 2"#),
        "the service's own series stay:\n{after}"
    );
}

#[test]
fn kernel_counts_recorded_after_forget_do_not_bring_the_series_back() {
    let _switch = PER_BACKEND_SWITCH.lock().unwrap_or_else(|e| e.into_inner());
    let handle = install().expect("the global recorder");
    // The kernel export's snapshot still lists the service and backend...
    zero_service("forget-late", &[0]);
    zero_backend("forget-late", "a");
    zero_service("forget-late-backend", &[0]);
    zero_backend("forget-late-backend", "gone");
    zero_backend("forget-late-backend", "kept");
    // ...when a reload removes them...
    forget_service("forget-late");
    forget_backend("forget-late-backend", "gone");
    // ...and then it records what it read.
    kernel_rejections("forget-late", 5);
    kernel_errors("forget-late", [1, 2, 3]);
    kernel_connects("forget-late", "a", 9);
    kernel_connects("forget-late-backend", "gone", 9);
    kernel_connects("forget-late-backend", "kept", 4);
    kernel_rejections("forget-late-backend", 1);

    let text = handle.render();
    assert_eq!(
        lines_with(&text, r#"service="forget-late""#),
        Vec::<&str>::new()
    );
    assert_eq!(lines_with(&text, r#"backend="gone""#), Vec::<&str>::new());
    assert!(
        text.contains(
            r#"failoverd_connects_total{service="forget-late-backend",backend="kept"} 4"#
        ),
        "{text}"
    );
    assert!(
        text.contains(r#"failoverd_connects_rejected_total{service="forget-late-backend"} 1"#),
        "{text}"
    );
}

/// A row of one of docs/metrics.md's `| metric | type | labels | meaning |` tables.
struct DocRow {
    name: String,
    kind: String,
    labels: Vec<String>,
    meaning: String,
}

fn doc_rows() -> Vec<DocRow> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/metrics.md");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    let plain = |cell: &str| cell.trim().replace('`', "");
    let mut rows = Vec::new();
    let mut in_table = false;
    for line in text.lines() {
        let cells: Vec<&str> = line.trim().trim_matches('|').split('|').collect();
        if !line.starts_with('|') {
            in_table = false;
            continue;
        }
        if cells.len() == 4 && plain(cells[0]) == "metric" && plain(cells[1]) == "type" {
            in_table = true;
            continue;
        }
        if !in_table || cells[0].trim().starts_with("---") {
            continue;
        }
        rows.push(DocRow {
            name: plain(cells[0]),
            kind: plain(cells[1]),
            labels: plain(cells[2])
                .split(',')
                .map(str::trim)
                .filter(|l| !l.is_empty() && *l != "–" && *l != "-")
                .map(str::to_string)
                .collect(),
            meaning: plain(cells[3]),
        });
    }
    rows
}

#[test]
fn the_doc_table_matches_the_catalog() {
    let rows = doc_rows();
    let documented: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
    let catalogued: Vec<&str> = METRICS.iter().map(|m| m.name).collect();
    assert_eq!(
        documented, catalogued,
        "docs/metrics.md's tables and catalog::METRICS list the same metrics, in the same order"
    );
    for (row, metric) in rows.iter().zip(METRICS) {
        assert_eq!(row.kind, metric.kind.word(), "type of {}", metric.name);
        assert_eq!(row.labels, metric.labels, "labels of {}", metric.name);
        assert!(
            row.meaning.starts_with(metric.help),
            "{}: the doc's meaning starts with the HELP text\n  doc:  {}\n  help: {}",
            metric.name,
            row.meaning,
            metric.help
        );
    }
}

/// A small service of two backends on two priorities, with something recorded into every one
/// of its families, and one daemon-wide counter between them in the name order.
fn small_service() {
    zero_service("shop", &[0, 1]);
    for (b, priority) in [("a", 0), ("b", 1)] {
        zero_backend("shop", b);
        let latency = probe_latency("shop", b);
        latency.record(0.0007);
        latency.record(0.3);
        backend("shop", b, priority, "healthy", priority == 0, false);
    }
    transition("shop", "b", "unhealthy");
    transition("shop", "b", "unknown");
    ejection("shop", "b");
    passive_failure("shop", "b", "syn_timeout");
    passive_ejection("shop", "b");
    backend("shop", "b", 1, "ejected", false, true);
    sockets_terminated("shop", "b", "down", 4);
    probe_failure(
        "shop",
        "b",
        &ProbeError::Refused {
            addr: "127.0.0.1:1".parse().unwrap(),
        },
    );
    kernel_connects("shop", "a", 11);
    kernel_outcomes(
        "shop",
        "a",
        &crate::datapath::CounterTotals {
            established: 9,
            connect_failures: 1,
            syn_timeouts: 1,
            diverted: 0,
            ..Default::default()
        },
    );
    kernel_rejections("shop", 3);
    kernel_errors("shop", [0, 2, 0]);
    failover("shop", Some(0), None);
    failover("shop", None, Some(0));
    self::service("shop", Some(0), 1);
    split_brain("shop", false);
    probes_skipped(2);
}

#[test]
fn a_small_service_renders_as_the_registry_did() {
    // The files are what the registry-based recorder rendered for `small_service`, before the
    // series moved to blocks: the same names, labels, values and order.
    let _switch = PER_BACKEND_SWITCH.lock().unwrap_or_else(|e| e.into_inner());
    set_per_backend(true);
    let on = rendered(small_service);
    set_per_backend(false);
    let off = rendered(small_service);
    set_per_backend(true);
    assert_eq!(on, include_str!("testdata/small-service-per-backend.prom"));
    assert_eq!(off, include_str!("testdata/small-service.prom"));
}

/// The series lines (not HELP/TYPE) of a render.
fn series_lines(text: &str) -> Vec<&str> {
    text.lines().filter(|l| !l.starts_with('#')).collect()
}

#[test]
fn zero_registration_shows_exactly_the_alert_counters_at_0() {
    let _switch = PER_BACKEND_SWITCH.lock().unwrap_or_else(|e| e.into_inner());
    set_per_backend(true);
    let text = rendered(|| {
        zero_service("z", &[0]);
        zero_backend("z", "a");
    });
    let mut want: Vec<String> = [
        "drained",
        "ejected",
        "healthy",
        "readmitted",
        "undrained",
        "unhealthy",
    ]
    .iter()
    .map(|to| {
        format!(r#"failoverd_backend_transitions_total{{service="z",backend="a",to="{to}"}} 0"#)
    })
    .collect();
    want.extend(
        [
            r#"failoverd_breaker_ejections_total{service="z",backend="a"} 0"#,
            r#"failoverd_connects_rejected_total{service="z"} 0"#,
            r#"failoverd_failovers_total{service="z",from_priority="0",to_priority="none"} 0"#,
            r#"failoverd_failovers_total{service="z",from_priority="none",to_priority="0"} 0"#,
            r#"failoverd_kernel_translation_errors_total{service="z",kind="bad_table"} 0"#,
            r#"failoverd_kernel_translation_errors_total{service="z",kind="family_mismatch"} 0"#,
            r#"failoverd_kernel_translation_errors_total{service="z",kind="no_sock_storage"} 0"#,
            r#"failoverd_passive_ejections_total{service="z",backend="a"} 0"#,
            r#"failoverd_split_brain{service="z"} 0"#,
        ]
        .map(String::from),
    );
    assert_eq!(series_lines(&text), want, "{text}");
}

#[test]
fn records_after_forget_backend_do_not_bring_its_series_back() {
    let _switch = PER_BACKEND_SWITCH.lock().unwrap_or_else(|e| e.into_inner());
    set_per_backend(true);
    let text = rendered(|| {
        zero_service("f", &[0]);
        zero_backend("f", "gone");
        let latency = probe_latency("f", "gone");
        forget_backend("f", "gone");
        latency.record(0.01);
        transition("f", "gone", "unhealthy");
        ejection("f", "gone");
        backend("f", "gone", 0, "unhealthy", false, false);
        passive_failure("f", "gone", "refused");
        passive_ejection("f", "gone");
        sockets_terminated("f", "gone", "removed", 1);
        kernel_connects("f", "gone", 1);
        probe_latency("f", "gone").record(0.02);
    });
    assert_eq!(lines_with(&text, "gone"), Vec::<&str>::new(), "{text}");
    assert!(text.contains(r#"failoverd_split_brain{service="f"} 0"#));
}

#[test]
fn histogram_buckets_are_cumulative() {
    let text = rendered(|| {
        zero_service("h", &[0]);
        zero_backend("h", "b");
        let h = probe_latency("h", "b");
        for seconds in [0.0001, 0.0005, 0.003, 0.003, 0.2, 7.0] {
            h.record(seconds);
        }
    });
    let buckets: Vec<u64> = text
        .lines()
        .filter(|l| l.starts_with("failoverd_probe_duration_seconds_bucket"))
        .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(
        buckets,
        [2, 2, 2, 4, 4, 4, 4, 4, 5, 5, 5, 5, 5, 6],
        "{text}"
    );
    assert!(
        text.contains(r#"failoverd_probe_duration_seconds_count{service="h",backend="b"} 6"#),
        "{text}"
    );
}

#[test]
fn the_closed_label_sets_hold_every_word_their_callers_record() {
    use crate::{datapath::ConnectFailureKind, decision::TerminateReason, health::HealthStatus};
    for status in [
        HealthStatus::Unknown,
        HealthStatus::Healthy,
        HealthStatus::Unhealthy,
    ] {
        assert!(labels::TRANSITIONS.contains(&status.word()));
        assert!(labels::STATES.contains(&status.word()));
    }
    for kind in [ConnectFailureKind::Refused, ConnectFailureKind::SynTimeout] {
        assert!(labels::CONNECT_KINDS.contains(&kind.as_str()));
    }
    for reason in [
        TerminateReason::Down,
        TerminateReason::Demoted,
        TerminateReason::Removed,
        TerminateReason::Failback,
        TerminateReason::Drain,
        TerminateReason::DrainAfter,
    ] {
        assert!(labels::TERMINATE_REASONS.contains(&reason.as_str()));
    }
    // Each set is in render order (the text format lists series by label text).
    for set in [
        &labels::TRANSITIONS[..],
        &labels::STATES,
        &labels::PROBE_REASONS,
        &labels::CONNECT_KINDS,
        &labels::TERMINATE_REASONS,
    ] {
        assert!(set.windows(2).all(|w| w[0] < w[1]), "{set:?}");
    }
    let bounds: Vec<String> = PROBE_BUCKETS.iter().map(f64::to_string).collect();
    assert_eq!(bounds, labels::PROBE_BUCKET_LE);
    let mut kinds: Vec<&str> = labels::KERNEL_ERROR_RENDER_ORDER
        .iter()
        .map(|&i| KERNEL_ERROR_KINDS[i])
        .collect();
    let rendered_order = kinds.clone();
    kinds.sort_unstable();
    assert_eq!(rendered_order, kinds);
}

#[test]
fn block_families_are_in_render_order() {
    let kinds = [
        catalog::Kind::Counter,
        catalog::Kind::Gauge,
        catalog::Kind::Histogram,
    ];
    let place = |k: catalog::Kind| kinds.iter().position(|x| *x == k);
    assert!(exposition::BLOCK_FAMILIES
        .windows(2)
        .all(|w| (place(w[0].1), w[0].0) < (place(w[1].1), w[1].0)));
    for (name, kind) in exposition::BLOCK_FAMILIES {
        assert_eq!(catalog::find(name).map(|m| m.kind), Some(*kind), "{name}");
    }
}
