//! The Prometheus alert rules and the Grafana dashboard in `configs/` hold to
//! the metric contract of `docs/metrics.md`, pass promtool's own checks and
//! unit tests, and point at runbook sections that exist.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
};

use failoverd::metrics::catalog::{Kind, Metric, METRICS};
use serde::Deserialize;

/// Every metric failoverd exports: the catalog `/metrics` is described from and
/// `docs/metrics.md` is checked against (a public contract).
fn contract_metrics() -> impl Iterator<Item = &'static Metric> {
    METRICS.iter()
}

fn exported(name: &str) -> bool {
    contract_metrics().any(|m| m.name == name)
}

/// The contract's histograms, queried through their `_bucket`, `_sum` and `_count` series.
fn is_histogram(name: &str) -> bool {
    contract_metrics().any(|m| m.name == name && m.kind == Kind::Histogram)
}

/// Prometheus's own series the alert rules may use besides the contract.
const PROMETHEUS_METRICS: &[&str] = &["up"];

const SEVERITIES: &[&str] = &["critical", "warning", "info"];

#[derive(Deserialize)]
struct RuleFile {
    groups: Vec<RuleGroup>,
}

#[derive(Deserialize)]
struct RuleGroup {
    name: String,
    rules: Vec<Rule>,
}

#[derive(Deserialize)]
struct Rule {
    alert: Option<String>,
    record: Option<String>,
    expr: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the crate lives in the workspace")
        .to_path_buf()
}

fn read(relative: &str) -> String {
    let path = repo_root().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn alert_rules() -> Vec<Rule> {
    let file: RuleFile = serde_saphyr::from_str(&read("configs/prometheus/alerts.yml"))
        .unwrap_or_else(|e| panic!("configs/prometheus/alerts.yml: {e}"));
    assert_eq!(
        file.groups
            .iter()
            .map(|g| g.name.as_str())
            .collect::<Vec<_>>(),
        ["failoverd"],
        "alerts.yml has exactly one group, `failoverd`"
    );
    file.groups.into_iter().flat_map(|g| g.rules).collect()
}

/// Every `failoverd_*` and `process_*` identifier in a PromQL expression, histogram series
/// suffixes stripped. Label values (`job="failoverd"`) have no `_` after the prefix and do not
/// match.
fn failoverd_metrics(expr: &str) -> BTreeSet<String> {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut found = BTreeSet::new();
    for prefix in ["failoverd_", "process_"] {
        for (start, _) in expr.match_indices(prefix) {
            if expr[..start].chars().next_back().is_some_and(is_ident) {
                continue;
            }
            let name: String = expr[start..]
                .chars()
                .take_while(|&c| c.is_ascii_lowercase() || c == '_')
                .collect();
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .filter(|base| is_histogram(base))
                .map_or_else(|| name.clone(), str::to_string);
            found.insert(base);
        }
    }
    found
}

/// GitHub's anchor for a Markdown heading: lower case, spaces to `-`, other punctuation dropped.
fn github_anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

#[test]
fn alert_rules_pass_promtool() {
    let dir = repo_root().join("configs/prometheus");
    for args in [
        ["check", "rules", "alerts.yml"],
        ["test", "rules", "alerts_test.yml"],
    ] {
        // promtool resolves the test file's rule_files relative to the test file;
        // running in its directory keeps the messages short.
        let output = match Command::new("promtool")
            .args(args)
            .current_dir(&dir)
            .output()
        {
            Ok(output) => output,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "promtool not found: install the Debian package prometheus \
                 (scripts/install-deps.sh does)"
            ),
            Err(e) => panic!("run promtool {}: {e}", args.join(" ")),
        };
        assert!(
            output.status.success(),
            "promtool {} failed ({}) in {}\n--- stdout\n{}\n--- stderr\n{}",
            args.join(" "),
            output.status,
            dir.display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
        );
    }
}

#[test]
fn every_alert_has_summary_description_and_runbook() {
    const RUNBOOK: &str = "https://github.com/failoverd/failoverd/blob/main/docs/operations.md#";
    let operations = read("docs/operations.md");
    let headings: BTreeSet<String> = operations
        .lines()
        .filter_map(|line| line.strip_prefix("### "))
        .map(github_anchor)
        .collect();
    assert!(
        operations.lines().any(|line| line == "## Alerts"),
        "docs/operations.md has an `## Alerts` section"
    );

    let rules = alert_rules();
    let alerts: Vec<&Rule> = rules.iter().filter(|r| r.alert.is_some()).collect();
    assert!(!alerts.is_empty(), "alerts.yml has alerts");
    let mut seen = BTreeSet::new();
    for rule in alerts {
        let name = rule.alert.as_deref().unwrap_or_default();
        assert!(seen.insert(name), "{name}: alert defined twice");
        let severity = rule.labels.get("severity").map(String::as_str);
        assert!(
            severity.is_some_and(|s| SEVERITIES.contains(&s)),
            "{name}: labels.severity is {severity:?}, not one of {SEVERITIES:?}"
        );
        for key in ["summary", "description", "runbook_url"] {
            assert!(
                rule.annotations
                    .get(key)
                    .is_some_and(|v| !v.trim().is_empty()),
                "{name}: annotations.{key} is missing or empty"
            );
        }
        let url = &rule.annotations["runbook_url"];
        let anchor = url
            .strip_prefix(RUNBOOK)
            .unwrap_or_else(|| panic!("{name}: runbook_url {url} does not start with {RUNBOOK}"));
        assert_eq!(
            anchor,
            github_anchor(name),
            "{name}: the runbook anchor is the alert's own section"
        );
        assert!(
            headings.contains(anchor),
            "{name}: docs/operations.md has no `### {name}` heading for #{anchor}"
        );
    }
}

#[test]
fn dashboard_queries_only_metrics_that_exist() {
    let text = read("configs/grafana/failoverd.json");
    let dashboard: serde_json::Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("configs/grafana/failoverd.json: {e}"));

    assert!(
        dashboard["title"].as_str().is_some_and(|t| !t.is_empty()),
        "the dashboard has a title"
    );
    let panels = dashboard["panels"]
        .as_array()
        .expect("the dashboard has panels");
    assert!(!panels.is_empty(), "the dashboard has panels");
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("the dashboard has template variables");
    // The daemon runs on every host: one dashboard, an `instance` picker, and the services of
    // the instances picked.
    let variable = |name: &str| {
        variables
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("the dashboard has a `{name}` variable"))
    };
    let instance = variable("instance");
    assert!(
        instance
            .to_string()
            .contains("label_values(failoverd_build_info, instance)")
            && instance["multi"] == true
            && instance["includeAll"] == true,
        "the `instance` variable comes from label_values(failoverd_build_info, instance), \
         several or all at once: {instance}"
    );
    let service = variable("service");
    assert!(
        service.to_string().contains(
            r#"label_values(failoverd_service_active_priority{instance=~\"$instance\"}, service)"#
        ),
        "the `service` variable lists the services of the picked instances: {service}"
    );

    let mut exprs = Vec::new();
    collect_exprs(&dashboard["panels"], &mut exprs);
    assert!(!exprs.is_empty(), "the dashboard's panels have queries");
    let mut queried = BTreeSet::new();
    for expr in &exprs {
        assert!(
            expr.contains(r#"instance=~"$instance""#),
            "every query is limited to the picked instances (`instance=~\"$instance\"`): {expr}"
        );
        let metrics = failoverd_metrics(expr);
        assert!(
            !metrics.is_empty(),
            "query without a failoverd metric: {expr}"
        );
        for metric in metrics {
            assert!(
                exported(&metric),
                "the dashboard queries {metric}, which failoverd does not export: {expr}"
            );
            queried.insert(metric);
        }
    }
    for wanted in [
        "failoverd_service_active_priority",
        "failoverd_service_live_backends",
        "failoverd_connects_total",
        "failoverd_probe_duration_seconds",
        "failoverd_failovers_total",
        "failoverd_breaker_open",
        "failoverd_backend_state",
        "failoverd_probes_skipped_total",
        "failoverd_breaker_ejections_total",
        "failoverd_datapath_failing_vips",
        "failoverd_datapath_repairs_total",
        "failoverd_kernel_translation_errors_total",
        "failoverd_passive_ejections_total",
        "failoverd_sockets_terminated_total",
        "failoverd_connect_failures_total",
        "process_resident_memory_bytes",
        "process_open_fds",
    ] {
        assert!(queried.contains(wanted), "no panel shows {wanted}");
    }

    for rule in alert_rules() {
        let name = rule.alert.or(rule.record).unwrap_or_default();
        let metrics = failoverd_metrics(&rule.expr);
        let uses_prometheus_metric = PROMETHEUS_METRICS
            .iter()
            .any(|m| rule.expr.contains(&format!("{m}{{")));
        assert!(
            !metrics.is_empty() || uses_prometheus_metric,
            "{name}: expression queries no known metric: {}",
            rule.expr
        );
        for metric in metrics {
            assert!(
                exported(&metric),
                "{name}: alert queries {metric}, which failoverd does not export: {}",
                rule.expr
            );
        }
    }
}

/// Every `expr` string anywhere under `value` (panels, nested rows, targets).
fn collect_exprs(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr", serde_json::Value::String(expr)) => out.push(expr.clone()),
                    _ => collect_exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

#[test]
fn metric_names_are_found_in_promql() {
    let found = failoverd_metrics(
        r#"histogram_quantile(0.99, sum by (le) (rate(failoverd_probe_duration_seconds_bucket{job="failoverd"}[5m]))) / failoverd_connects_total"#,
    );
    assert_eq!(
        found.into_iter().collect::<Vec<_>>(),
        [
            "failoverd_connects_total",
            "failoverd_probe_duration_seconds"
        ]
    );
    assert!(failoverd_metrics(r#"up{job="failoverd"} == 0"#).is_empty());
    assert_eq!(
        failoverd_metrics(r#"process_open_fds{job="failoverd"} / process_max_fds"#)
            .into_iter()
            .collect::<Vec<_>>(),
        ["process_max_fds", "process_open_fds"]
    );
    assert_eq!(
        github_anchor("FailoverdVipNoLiveBackend"),
        "failoverdvipnolivebackend"
    );
}

/// A `/metrics` render of the real recorder, with series of every kind, is what Prometheus's
/// own linter expects: every metric has `# HELP` and `# TYPE`, names follow the conventions.
#[test]
fn a_real_metrics_render_passes_promtool_check_metrics() {
    use failoverd::metrics;
    use std::io::Write;

    let handle = metrics::install().expect("install the recorder");
    metrics::zero_service("svc", &[0, 1]);
    metrics::zero_backend("svc", "a");
    metrics::probe_latency("svc", "a").record(0.001);
    metrics::backend("svc", "a", 0, "healthy", true, false);
    metrics::service("svc", Some(0), 1);
    metrics::kernel_connects("svc", "a", 3);
    metrics::kernel_errors("svc", [0, 1, 0]);
    metrics::datapath_write(true);
    metrics::datapath_repair("altered");
    metrics::datapath_failing_vips(0);
    metrics::collect_process();
    let text = handle.render();
    for metric in contract_metrics() {
        let described = text
            .lines()
            .any(|l| l.starts_with(&format!("# HELP {} ", metric.name)));
        let rendered = text.lines().any(|l| l.starts_with(metric.name));
        assert!(
            described || !rendered,
            "{} is rendered without # HELP:\n{text}",
            metric.name
        );
    }

    let mut child = match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "promtool not found: install the Debian package prometheus \
             (scripts/install-deps.sh does)"
        ),
        Err(e) => panic!("run promtool check metrics: {e}"),
    };
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(text.as_bytes())
        .expect("write the render to promtool");
    let output = child.wait_with_output().expect("wait for promtool");
    assert!(
        output.status.success(),
        "promtool check metrics failed ({})\n--- stdout\n{}\n--- stderr\n{}\n--- render\n{text}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
}
