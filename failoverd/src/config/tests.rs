//! End-to-end tests of [`parse`]: text in, a [`Config`] or a located error out.

use std::{path::Path, sync::Arc, time::Duration};

use super::*;
use crate::datapath::{CgroupSpec, Protocol, Vip};

/// The example that defined the format (docs/configuration.md shows it).
const ISSUE_EXAMPLE: &str = "\
datapath:
  cgroup: auto
  pin_dir: /sys/fs/bpf/failoverd
control:
  socket: /run/failoverd/control.sock
  state_dir: /var/lib/failoverd
metrics:
  listen: 127.0.0.1:9477
resolver:
  nameservers: [127.0.0.53:53]
  min_ttl: 5s
  max_ttl: 5m
defaults:
  health: { kind: tcp, interval: 1s, timeout: 500ms, rise: 2, fall: 3 }
services:
  - name: orders-db
    vip: 1.2.3.4:5432
    protocol: tcp
    on_all_down: reject
    failback: auto
    health:
      kind: http
      interval: 1s
      timeout: 300ms
      rise: 2
      fall: 3
      port: 8008
      path: /primary
      host: db.internal
      expect_status: [200]
      expect_body: 'running'
    breaker:
      failures: 5
      open_for: 10s
      max_open_for: 5m
      max_ejected_percent: 50
    backends:
      - address: 10.10.40.25:5432
        name: a
        weight: 100
        priority: 0
      - address: db-b.internal:5432
        name: b
        priority: 1
";

const MINIMAL: &str = "\
services:
  - name: web
    vip: 10.96.0.80:80
    backends:
      - address: 10.0.0.1:80
";

fn ok(text: &str) -> Config {
    parse(text, Path::new("t.yaml")).unwrap_or_else(|e| panic!("{e}"))
}

/// `line:column: key: message` of the error `text` gets.
fn err(text: &str) -> String {
    match parse(text, Path::new("t.yaml")) {
        Ok(_) => panic!("parsed:\n{text}"),
        Err(e) => {
            let shown = e.to_string();
            shown
                .strip_prefix("t.yaml:")
                .unwrap_or_else(|| panic!("{shown}"))
                .to_owned()
        }
    }
}

/// MINIMAL with `extra` lines appended to its one service (indented already).
fn service_with(extra: &str) -> String {
    format!("{MINIMAL}{extra}")
}

#[test]
fn the_issue_example_parses_to_what_it_says() {
    let c = ok(ISSUE_EXAMPLE);
    assert_eq!(c.source, Path::new("t.yaml"));
    assert_eq!(
        c.resolver.nameservers,
        Some(vec!["127.0.0.53:53".parse().unwrap()])
    );
    let s = &c.services[0];
    assert_eq!(s.name, "orders-db");
    assert_eq!(
        s.vip(),
        Vip {
            addr: "1.2.3.4:5432".parse().unwrap(),
            protocol: Protocol::Tcp
        }
    );
    assert_eq!(s.health.kind, HealthKind::Http);
    assert_eq!(s.health.timeout, Duration::from_millis(300));
    assert_eq!(s.health.port, Some(8008));
    assert_eq!(s.health.http.path, "/primary");
    assert_eq!(s.health.http.host.as_deref(), Some("db.internal"));
    assert_eq!(s.health.http.expect_status, StatusMatch::List(vec![200]));
    assert_eq!(s.health.http.expect_body.as_deref(), Some("running"));
    assert_eq!(s.detection_bound(), Duration::from_millis(3300));
    assert_eq!(&*s.backends[1].name, "b");
    assert_eq!(
        s.backends[1].address,
        BackendAddress::Host {
            host: "db-b.internal".into(),
            port: 5432
        }
    );
    assert_eq!((s.backends[1].weight, s.backends[1].priority), (100, 1));
}

#[test]
fn a_minimal_file_gets_every_default() {
    let c = ok(MINIMAL);
    assert_eq!(c.datapath, DatapathSection::default());
    assert_eq!(c.datapath.cgroup, CgroupSpec::Auto);
    assert_eq!(c.control, ControlSection::default());
    assert_eq!(c.metrics, MetricsSection::default());
    assert_eq!(c.resolver, ResolverSection::default());
    let s = &c.services[0];
    assert_eq!(s.protocol, Protocol::Tcp);
    assert_eq!(s.on_all_down, OnAllDown::Reject);
    assert_eq!(s.failback, Failback::Auto);
    assert_eq!(*s.health, HealthConfig::default());
    assert_eq!(s.breaker, BreakerConfig::default());
    let b = &s.backends[0];
    assert_eq!(&*b.name, "10.0.0.1:80");
    assert_eq!((b.weight, b.priority), (100, 0));
}

#[test]
fn defaults_apply_per_key_to_every_service() {
    let c = ok(&format!(
        "defaults:\n  health: {{ interval: 2s, fall: 5 }}\n  breaker: {{ failures: 2 }}\n{MINIMAL}    health: {{ fall: 4 }}\n"
    ));
    let h = &c.services[0].health;
    assert_eq!(h.interval, Duration::from_secs(2)); // defaults
    assert_eq!(h.fall, 4); // the service
    assert_eq!(h.timeout, Duration::from_millis(500)); // built-in
    assert_eq!(c.services[0].breaker.failures, 2);
}

#[test]
fn per_backend_metrics_can_be_turned_off() {
    let c = ok(&format!(
        "metrics: {{ per_backend: false }}\n{}",
        service_with("")
    ));
    assert!(!c.metrics.per_backend);
    assert_eq!(c.metrics.listen, MetricsSection::default().listen);
}

#[test]
fn sections_may_be_empty() {
    let c = ok(&format!("datapath:\nresolver:\ndefaults:\n{MINIMAL}"));
    assert_eq!(c.resolver, ResolverSection::default());
}

#[test]
fn a_cgroup_path_and_other_paths_are_kept() {
    let c = ok(&format!(
        "datapath: {{ cgroup: /sys/fs/cgroup/app, pin_dir: /sys/fs/bpf/x }}\ncontrol: {{ socket: /tmp/s.sock }}\n{MINIMAL}"
    ));
    assert_eq!(
        c.datapath.cgroup,
        CgroupSpec::Path("/sys/fs/cgroup/app".into())
    );
    assert_eq!(
        c.datapath.to_datapath_config().pin_dir,
        Path::new("/sys/fs/bpf/x")
    );
    assert_eq!(c.control.socket, Path::new("/tmp/s.sock"));
    assert_eq!(c.control.state_dir, Path::new("/var/lib/failoverd"));
}

#[test]
fn an_empty_service_list_is_a_valid_idle_config() {
    assert!(ok("services: []\n").services.is_empty());
}

#[test]
fn an_indentation_slip_is_reported_as_the_syntax_error_it_is() {
    let text = "services:\n  - name: web\n    vip: 10.96.0.80:80\n   backends: []\n";
    assert_eq!(
        err(text),
        "4:4: (root): did not find expected '-' indicator, while parsing a block collection at line 2 column 3"
    );
}

#[test]
fn a_file_without_services_is_refused() {
    assert_eq!(err(""), "1:1: services: missing key `services`");
}

#[test]
fn a_bad_value_in_defaults_points_at_defaults() {
    assert_eq!(
        err(&format!("defaults:\n  health:\n    timeout: 1s\n{MINIMAL}")),
        "3:14: defaults.health.timeout: timeout 1s must be shorter than interval 1s (the built-in default)"
    );
}

#[test]
fn the_first_problem_in_the_file_is_reported() {
    // Two problems: the second service's name is a duplicate (line 7) and the
    // first service's weight is out of range (line 6); line 6 comes first.
    let text = format!(
        "{MINIMAL}        weight: 5000\n  - name: web\n    vip: 10.96.0.81:80\n    backends: [{{ address: 10.0.0.2:80 }}]\n"
    );
    assert_eq!(
        err(&text),
        "6:17: services[0].backends[0].weight: weight 5000 is out of range 0 to 1000"
    );
}

#[test]
fn every_rule_has_its_own_message() {
    let cases: &[(&str, &str)] = &[
        (
            "    health: { interval: 5ms, timeout: 1ms }\n",
            "6:25: services[0].health.interval: interval 5ms is shorter than the minimum of 10ms",
        ),
        (
            "    health: { rise: 0 }\n",
            "6:21: services[0].health.rise: rise must be at least 1 (successes that mark a backend up)",
        ),
        (
            "    health: { kind: http, path: health }\n",
            "6:33: services[0].health.path: path `health` must start with /",
        ),
        (
            "    health: { expect_body: running }\n",
            "6:15: services[0].health.expect_body: expect_body applies to http checks only, and this check's kind is tcp (the built-in default)",
        ),
        (
            "    health: { kind: http, expect_status: 200-99 }\n",
            "6:42: services[0].health.expect_status: status range 200-99 must run upwards within 100 to 599",
        ),
        (
            "    breaker: { max_ejected_percent: 101 }\n",
            "6:37: services[0].breaker.max_ejected_percent: max_ejected_percent 101 is more than 100",
        ),
        (
            "    breaker: { failures: 0 }\n",
            "6:26: services[0].breaker.failures: failures must be at least 1",
        ),
        (
            "    protocol: sctp\n",
            "6:15: services[0].protocol: unknown protocol `sctp`: expected tcp or udp",
        ),
        (
            "        priority: 256\n",
            "6:19: services[0].backends[0].priority: priority 256 is out of range 0 to 255",
        ),
        (
            "      - address: 10.0.0.1:80\n",
            "6:18: services[0].backends[1].address: address 10.0.0.1:80 is already listed as services[0].backends[0]",
        ),
        (
            "      - address: 10.0.0.2:0\n",
            "6:18: services[0].backends[1].address: address 10.0.0.2:0 has port 0; give the port the backend listens on",
        ),
        (
            "      - address: 10.0.0.2:80\n        name: 10.0.0.1:80\n",
            "7:15: services[0].backends[1].name: backend name `10.0.0.1:80` is already used by services[0].backends[0]",
        ),
        (
            "      - address: db_2.internal:80\n",
            "6:18: services[0].backends[1].address: invalid hostname `db_2.internal`: only letters, digits, hyphens and dots are allowed",
        ),
    ];
    for (extra, want) in cases {
        assert_eq!(&err(&service_with(extra)), want, "for {extra:?}");
    }
}

#[test]
fn top_level_rules_have_their_own_messages() {
    let cases: &[(&str, &str)] = &[
        (
            "resolver: { min_ttl: 10m }\n",
            "1:22: resolver.min_ttl: min_ttl 10m must not be longer than max_ttl 5m",
        ),
        (
            "resolver: { nameservers: [] }\n",
            "1:26: resolver.nameservers: nameservers is empty; list at least one, or leave the key out to use the system's",
        ),
        (
            "datapath: { cgroup: app.slice }\n",
            "1:21: datapath.cgroup: cgroup `app.slice` must be `auto` or an absolute path",
        ),
        (
            "control: { state_dir: var/lib }\n",
            "1:23: control.state_dir: state_dir `var/lib` must be an absolute path",
        ),
        (
            "metrics: { listen: localhost:9477 }\n",
            "1:20: metrics.listen: invalid address `localhost:9477`: expected ip:port, with IPv6 in brackets as [2001:db8::5]:80",
        ),
        (
            "metrics: { per_backend: sometimes }\n",
            "1:25: metrics.per_backend: invalid type: string \"sometimes\", expected a boolean",
        ),
        (
            "defaults: { breaker: { open_for: 10m } }\n",
            "1:34: defaults.breaker.open_for: max_open_for 5m (the built-in default) must not be shorter than open_for 10m",
        ),
    ];
    for (extra, want) in cases {
        assert_eq!(&err(&format!("{extra}{MINIMAL}")), want, "for {extra:?}");
    }
}

#[test]
fn more_than_32_backends_point_at_the_33rd() {
    let mut text = "services:\n  - name: big\n    vip: 10.96.0.1:80\n    backends:\n".to_owned();
    for i in 0..33 {
        text.push_str(&format!("      - address: 10.0.1.{i}:80\n"));
    }
    assert_eq!(
        err(&text),
        "37:9: services[0].backends[32]: a service holds at most 32 backends (the size of the datapath's table); this one lists 33"
    );
}

#[test]
fn load_reports_unreadable_files_with_their_path() {
    let missing = Path::new("/nonexistent/failoverd.yaml");
    let err = load(missing).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("reading config file /nonexistent/failoverd.yaml: "),
        "{err}"
    );
    match err {
        ConfigError::Io { path, source } => {
            assert_eq!(path, missing);
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_ipv4_mapped_vip_is_the_same_vip_as_its_ipv4_form() {
    let first_v4 = "services:\n  - name: a\n    vip: 127.89.0.1:80\n    backends: [{ address: 127.0.0.1:81 }]\n  - name: b\n    vip: '[::ffff:127.89.0.1]:80'\n    backends: [{ address: 127.0.0.1:82 }]\n";
    assert_eq!(
        err(first_v4),
        "6:10: services[1].vip: vip [::ffff:127.89.0.1]:80/tcp is the same VIP as 127.89.0.1:80/tcp of service `a` (services[0]): the datapath keys an IPv4-mapped address as its IPv4 form"
    );
    let first_mapped = "services:\n  - name: a\n    vip: '[::ffff:127.89.0.1]:80'\n    backends: [{ address: 127.0.0.1:81 }]\n  - name: b\n    vip: 127.89.0.1:80\n    backends: [{ address: 127.0.0.1:82 }]\n";
    assert!(err(first_mapped).starts_with("6:10: services[1].vip: vip 127.89.0.1:80/tcp is the same VIP as [::ffff:127.89.0.1]:80/tcp"));
    // Another protocol is another VIP, in the kernel as in the file.
    ok(&first_v4.replace(
        "    vip: '[::ffff:127.89.0.1]:80'\n",
        "    vip: '[::ffff:127.89.0.1]:80'\n    protocol: udp\n",
    ));
}

#[test]
fn ipv4_mapped_addresses_are_used_in_their_ipv4_form() {
    let c = ok("services:\n  - name: a\n    vip: '[::ffff:127.89.0.1]:80'\n    backends:\n      - address: '[::ffff:127.0.0.1]:81'\n      - address: 127.0.0.2:81\n");
    let s = &c.services[0];
    // As the datapath decodes its own key: a restarted daemon adopts this VIP.
    assert_eq!(s.vip(), Vip::from_key(&s.vip().key()).unwrap());
    assert_eq!(s.vip, "127.89.0.1:80".parse().unwrap());
    assert_eq!(
        s.backends[0].address,
        BackendAddress::Ip("127.0.0.1:81".parse().unwrap())
    );
    assert_eq!(&*s.backends[0].name, "[::ffff:127.0.0.1]:81");
}

#[test]
fn ipv4_mapped_backends_are_compared_in_their_ipv4_form() {
    assert_eq!(
        err(&service_with("      - address: '[::ffff:10.0.0.1]:80'\n")),
        "6:18: services[0].backends[1].address: address [::ffff:10.0.0.1]:80 is already listed as services[0].backends[0]"
    );
    assert_eq!(
        err("services:\n  - name: a\n    vip: '[2001:db8::1]:80'\n    backends: [{ address: '[::ffff:10.0.0.1]:80' }]\n"),
        "4:27: services[0].backends[0].address: address [::ffff:10.0.0.1]:80 is IPv4 (IPv4-mapped) but the vip [2001:db8::1]:80 is IPv6; a connect cannot change address family"
    );
    assert_eq!(
        err(&format!("{MINIMAL}  - name: b\n    vip: 10.96.0.81:80\n    backends: [{{ address: '[::ffff:10.96.0.80]:80' }}]\n")),
        "8:27: services[1].backends[0].address: address [::ffff:10.96.0.80]:80 is the vip of service `web`; a backend must be a real address"
    );
}

#[test]
fn zone_ids_are_refused_wherever_an_address_is_written() {
    let reason = "zone id in `[fe80::2%1]:80` is not supported: the datapath keys VIPs and backends by address and port only, so the interface a link-local address needs would be lost; use a global or unique-local address";
    assert_eq!(
        err("services:\n  - name: a\n    vip: '[fe80::2%1]:80'\n    backends: [{ address: '[fd00::1]:80' }]\n"),
        format!("3:10: services[0].vip: {reason}")
    );
    assert_eq!(
        err("services:\n  - name: a\n    vip: '[fd00::2]:80'\n    backends: [{ address: '[fe80::2%1]:80' }]\n"),
        format!("4:27: services[0].backends[0].address: {reason}")
    );
    assert!(err(&format!(
        "metrics: {{ listen: '[fe80::2%1]:80' }}\n{MINIMAL}"
    ))
    .starts_with("1:20: metrics.listen: zone id in"));
    assert!(err(&format!(
        "resolver: {{ nameservers: ['fe80::53%2'] }}\n{MINIMAL}"
    ))
    .starts_with("1:27: resolver.nameservers[0]: zone id in"));
}

#[test]
fn every_duration_and_count_has_a_maximum() {
    let cases: &[(&str, &str)] = &[
        (
            "    health: { interval: 18446744073709551615s }\n",
            "6:25: services[0].health.interval: interval 584542046090years 7months 15days 17h 5m 3s is longer than the maximum of 1h",
        ),
        (
            "    health: { interval: 2h, timeout: 1s }\n",
            "6:25: services[0].health.interval: interval 2h is longer than the maximum of 1h",
        ),
        (
            "    health: { timeout: 2h }\n",
            "6:24: services[0].health.timeout: timeout 2h is longer than the maximum of 1h",
        ),
        (
            "    health: { rise: 4294967295 }\n",
            "6:21: services[0].health.rise: rise 4294967295 is more than the maximum of 1000",
        ),
        (
            "    health: { fall: 1001 }\n",
            "6:21: services[0].health.fall: fall 1001 is more than the maximum of 1000",
        ),
        (
            "    breaker: { failures: 1001 }\n",
            "6:26: services[0].breaker.failures: failures 1001 is more than the maximum of 1000",
        ),
        (
            "    breaker: { open_for: 2days, max_open_for: 3days }\n",
            "6:26: services[0].breaker.open_for: open_for 2days is longer than the maximum of 1day",
        ),
        (
            "    breaker: { max_open_for: 25h }\n",
            "6:30: services[0].breaker.max_open_for: max_open_for 1day 1h is longer than the maximum of 1day",
        ),
    ];
    for (extra, want) in cases {
        assert_eq!(&err(&service_with(extra)), want, "for {extra:?}");
    }
    assert_eq!(
        err(&format!("resolver: {{ max_ttl: 2days }}\n{MINIMAL}")),
        "1:22: resolver.max_ttl: max_ttl 2days is longer than the maximum of 1day"
    );
    assert_eq!(
        err(&format!("defaults: {{ health: {{ interval: 1000000h }} }}\n{MINIMAL}")),
        "1:33: defaults.health.interval: interval 114years 28days 4h is longer than the maximum of 1h"
    );
}

#[test]
fn the_largest_values_accepted_are_the_documented_maxima() {
    let c = ok(&format!(
        "resolver: {{ min_ttl: 1day, max_ttl: 1day }}\n{}",
        service_with(
            "    health: { interval: 1h, timeout: 59m, rise: 1000, fall: 1000 }\n    breaker: { failures: 1000, open_for: 1day, max_open_for: 1day }\n"
        )
    ));
    let h = &c.services[0].health;
    assert_eq!(h.interval, MAX_INTERVAL);
    assert_eq!((h.rise, h.fall), (MAX_THRESHOLD, MAX_THRESHOLD));
    assert_eq!(c.services[0].breaker.max_open_for, MAX_OPEN_FOR);
    assert_eq!(c.resolver.max_ttl, MAX_TTL);
    assert_eq!(
        h.first_verdict_wait(),
        Duration::from_secs(3600 * 1001 + 59 * 60)
    );
}

/// A directory of its own under the system's temp dir, removed on drop.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir =
            std::env::temp_dir().join(format!("failoverd-config-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("creating a temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            eprintln!("removing {}: {e}", self.0.display());
        }
    }
}

#[test]
fn deep_flow_nesting_is_refused_before_parsing() {
    // About 500 KB: libyaml needs minutes for this, quadratic in the depth.
    let depth = 125_000;
    let text = format!(
        "services: []\nx: {}{}\n",
        "{a: ".repeat(depth),
        "}".repeat(depth)
    );
    assert!(text.len() > 500_000);
    let started = std::time::Instant::now();
    let message = err(&text);
    let elapsed = started.elapsed();
    assert_eq!(
        message,
        "2:256: (root): nesting is deeper than 64 levels; a failoverd config needs at most 5"
    );
    // Generous for a debug build on a shared machine; the parse took minutes.
    assert!(elapsed < Duration::from_secs(2), "took {elapsed:?}");
    let seqs = format!("services: {}{}\n", "[".repeat(depth), "]".repeat(depth));
    assert!(err(&seqs).starts_with("1:74: (root): nesting is deeper than 64 levels"));
}

#[test]
fn deep_block_nesting_is_refused_instead_of_overflowing_the_stack() {
    // The locator's parser recursed once per level and aborted the process.
    let text = format!("services: []\nx:\n  {}1\n", "- ".repeat(5000));
    assert_eq!(
        err(&text),
        "3:129: (root): nesting is deeper than 64 levels; a failoverd config needs at most 5"
    );
}

#[test]
fn a_byte_order_mark_is_skipped() {
    let c = ok(&format!("\u{feff}{MINIMAL}"));
    assert_eq!(c.services[0].name, "web");
    // Columns count from after the mark, as an editor shows them, and rules
    // checked after deserializing are located as without it.
    assert_eq!(
        err("\u{feff}services: 1\n"),
        "1:11: services: invalid type: integer `1`, expected a sequence"
    );
    assert_eq!(
        err(&format!("\u{feff}{MINIMAL}        weight: 5000\n")),
        "6:17: services[0].backends[0].weight: weight 5000 is out of range 0 to 1000"
    );
    assert_eq!(ok(&format!("\u{feff}---\n{MINIMAL}")).services.len(), 1);
}

#[test]
fn text_over_the_size_limit_is_refused_unparsed() {
    let padding = "#".repeat(usize::try_from(MAX_FILE_SIZE).unwrap());
    assert_eq!(
        err(&format!("{MINIMAL}{padding}\n")),
        format!(
            "1:1: (root): the config is {} bytes, more than the limit of 16 MiB (16777216 bytes)",
            MINIMAL.len() + padding.len() + 1
        )
    );
}

#[test]
fn load_refuses_a_fifo_without_blocking() {
    let dir = TempDir::new("fifo");
    let fifo = dir.0.join("failoverd.yaml");
    let c_path = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0, "mkfifo");
    // In a thread: opening a FIFO for reading blocks until a writer comes,
    // and a hang must fail this test, not stall it.
    let (tx, rx) = std::sync::mpsc::channel();
    let path = fifo.clone();
    std::thread::spawn(move || tx.send(load(&path).map(|_| ())));
    let result = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("load of a FIFO still blocked after 5s");
    let err = result.unwrap_err();
    assert!(
        matches!(err, ConfigError::NotAFile { kind: "a FIFO", .. }),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "reading config file {}: it is a FIFO, not a regular file",
            fifo.display()
        )
    );
    let err = load(&dir.0).unwrap_err();
    assert!(
        matches!(
            err,
            ConfigError::NotAFile {
                kind: "a directory",
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn load_refuses_big_and_non_utf8_files_with_located_errors() {
    let dir = TempDir::new("load");
    let big = dir.0.join("big.yaml");
    let file = std::fs::File::create(&big).unwrap();
    file.set_len(MAX_FILE_SIZE + 1).unwrap();
    assert_eq!(
        load(&big).unwrap_err().to_string(),
        format!("{}:1:1: (root): the config is 16777217 bytes, more than the limit of 16 MiB (16777216 bytes)", big.display())
    );
    let latin1 = dir.0.join("latin1.yaml");
    std::fs::write(&latin1, b"services: []\n# caf\xe9\n").unwrap();
    assert_eq!(
        load(&latin1).unwrap_err().to_string(),
        format!(
            "{}:2:6: (root): the file is not UTF-8: byte 0xe9 cannot start a character here",
            latin1.display()
        )
    );
    let bom = dir.0.join("bom.yaml");
    std::fs::write(&bom, format!("\u{feff}{MINIMAL}")).unwrap();
    assert_eq!(load(&bom).unwrap().services.len(), 1);
}

#[test]
fn load_async_parses_off_the_async_workers() {
    // A config that takes a while to parse, on a single-threaded runtime: if
    // parsing ran on the runtime's thread, the other task could not run meanwhile.
    let dir = TempDir::new("async");
    let path = dir.0.join("big.yaml");
    let mut text = String::from("services:\n");
    for i in 0..3000 {
        text.push_str(&format!(
            "  - name: s{i}\n    vip: 10.1.{}.{}:80\n    backends: [{{ address: 10.2.0.1:80 }}]\n",
            i / 250,
            i % 250
        ));
    }
    std::fs::write(&path, &text).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let (config, ticks_during_load) = runtime.block_on(async {
        let ticks = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = ticks.clone();
        let ticker = tokio::spawn(async move {
            loop {
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tokio::task::yield_now().await;
            }
        });
        let config = load_async(&path).await;
        let seen = ticks.load(std::sync::atomic::Ordering::Relaxed);
        ticker.abort();
        (config, seen)
    });
    assert_eq!(config.unwrap().services.len(), 3000);
    assert!(ticks_during_load > 0, "the runtime's thread was blocked");
}

#[test]
fn more_services_than_the_services_map_holds_are_refused() {
    let count = failoverd_shared::MAX_SERVICES as usize + 1;
    let mut text = String::with_capacity(count * 80);
    text.push_str("services:\n");
    for i in 0..count {
        text.push_str(&format!(
            "- {{ name: s{i}, vip: '10.{}.{}.{}:80', backends: [{{ address: 'h.internal:80' }}] }}\n",
            i >> 16,
            (i >> 8) & 255,
            i & 255
        ));
    }
    assert_eq!(
        err(&text),
        "65538:3: services[65536]: a datapath holds at most 65536 services (the size of its services map); this file lists 65537"
    );
}

#[test]
fn more_services_and_backends_than_counter_ids_are_refused() {
    let ids = (failoverd_shared::MAX_COUNTERS - failoverd_shared::RESERVED_COUNTER_IDS) as usize;
    // Built directly: a file this size takes seconds to parse in a debug build.
    let mut service = Arc::unwrap_or_clone(ok(MINIMAL).services.remove(0));
    let backend = service.backends.remove(0);
    service.backends = (0..32).map(|_| backend.clone()).collect();
    let per_service = 33;
    let full = ids / per_service;
    let service = Arc::new(service);
    let mut services = vec![Arc::clone(&service); full];
    let check = |services: &[Arc<ServiceConfig>]| {
        let mut issues = super::issues::Issues::default();
        super::lower::kernel_limits(services, &mut issues);
        issues
            .first(&super::locate::Locator::new(""))
            .map(|(issue, _)| (issue.path, issue.message))
    };
    assert_eq!(check(&services), None);
    // The ids left over are fewer than one more service needs.
    let left = ids - full * per_service;
    assert!(left < per_service);
    services.push(Arc::clone(&service));
    let (path, message) = check(&services).expect("refused");
    assert_eq!(path, format!("services[{full}].backends[{}]", left - 1));
    assert!(
        message.starts_with(&format!(
            "the datapath counts connects under {ids} ids, one per service and one per IP backend, and this is number {}",
            ids + 1
        )),
        "{message}"
    );
    // Hostname backends take their ids as they resolve: not counted here.
    let last = Arc::make_mut(services.last_mut().unwrap());
    for b in &mut last.backends {
        b.address = BackendAddress::Host {
            host: "db.internal".into(),
            port: 80,
        };
    }
    assert_eq!(check(&services), None);
}

#[test]
fn control_characters_in_http_path_and_host_are_refused() {
    let cases: &[(&str, &str)] = &[
        (
            "    health: { kind: http, path: \"/health\\r\\nX-Injected: 1\" }\n",
            "6:33: services[0].health.path: path `/health\\r\\nX-Injected: 1` contains the control character `\\r`, which cannot be sent in a request line",
        ),
        (
            "    health: { kind: http, path: \"/a\\tb\" }\n",
            "6:33: services[0].health.path: path `/a\\tb` contains the control character `\\t`, which cannot be sent in a request line",
        ),
        (
            "    health: { kind: http, path: /a b }\n",
            "6:33: services[0].health.path: path `/a b` contains a space; percent-encode it as %20",
        ),
        (
            "    health: { kind: http, host: \"db.internal\\nX-Injected: 1\" }\n",
            "6:33: services[0].health.host: host `db.internal\\nX-Injected: 1` contains the control character `\\n`, which cannot be sent in a header",
        ),
        (
            "    health: { kind: http, host: \"db\\u007f\" }\n",
            "6:33: services[0].health.host: host `db\\u{7f}` contains the control character `\\u{7f}`, which cannot be sent in a header",
        ),
    ];
    for (extra, want) in cases {
        assert_eq!(&err(&service_with(extra)), want, "for {extra:?}");
    }
    // In `defaults` too, where the http keys are allowed whatever the kind.
    assert!(err(&format!(
        "defaults: {{ health: {{ path: \"/x\\r\\n\" }} }}\n{MINIMAL}"
    ))
    .starts_with("1:29: defaults.health.path: path `/x\\r\\n` contains the control character"));
}

#[test]
fn every_accepted_path_and_host_builds_the_probe_request() {
    let c = ok(&service_with(
        "    health: { kind: http, path: '/health?full=1&x=%20', host: 'db.internal:8008' }\n",
    ));
    let http = &c.services[0].health.http;
    let request = hyper::Request::get(http.path.as_str())
        .header(hyper::header::HOST, http.host.as_deref().unwrap())
        .body(());
    assert!(request.is_ok(), "{request:?}");
}

#[test]
fn a_control_socket_path_longer_than_sun_path_is_refused() {
    let long = format!("/run/{}/control.sock", "d".repeat(100));
    assert_eq!(
        err(&format!("control: {{ socket: {long} }}\n{MINIMAL}")),
        format!("1:20: control.socket: socket `{long}` is 118 bytes long; a Unix socket path holds at most 107 (sun_path is 108 bytes with the closing NUL)")
    );
    let longest = format!("/{}", "s".repeat(106));
    assert_eq!(
        ok(&format!("control: {{ socket: {longest} }}\n{MINIMAL}"))
            .control
            .socket,
        Path::new(&longest)
    );
}

#[test]
fn each_database_kind_takes_its_keys() {
    let c = ok(&service_with(
        "    health:\n      kind: postgres\n      role: replica\n      user: probe\n      database: app\n      password_file: /etc/failoverd/pg.pw\n      max_lag: 10s\n      tls: require\n",
    ));
    let h = &c.services[0].health;
    assert_eq!(h.kind, HealthKind::Postgres);
    assert_eq!(
        h.db,
        DatabaseCheckConfig {
            role: crate::health::RoleWanted::Replica,
            user: Some("probe".into()),
            username: None,
            database: Some("app".into()),
            password_file: Some("/etc/failoverd/pg.pw".into()),
            max_lag: Some(Duration::from_secs(10)),
            tls: crate::health::PgTls::Require,
        }
    );
    let h = &ok(&service_with("    health: { kind: mysql }\n")).services[0].health;
    assert_eq!(h.db, DatabaseCheckConfig::default());
    let h = &ok(&service_with(
        "    health: { kind: redis, role: any, username: probe, password_file: /run/pw, max_lag: 15s }\n",
    ))
    .services[0]
        .health;
    assert_eq!(h.db.role, crate::health::RoleWanted::Any);
    assert_eq!(h.db.username.as_deref(), Some("probe"));
}

#[test]
fn tcp_send_and_expect_are_unescaped_and_compiled_at_load() {
    let h = &ok(&service_with(
        "    health: { send: 'PING\\r\\n\\x00', expect: '+PONG\\r\\n' }\n",
    ))
    .services[0]
        .health;
    assert_eq!(h.tcp.send, b"PING\r\n\0");
    assert_eq!(
        h.tcp.expect,
        Some(crate::health::Expect::Substring("+PONG\r\n".into()))
    );
    let h = &ok(&service_with(
        "    health: { kind: tcp, expect_regex: '^SSH-2\\.0' }\n",
    ))
    .services[0]
        .health;
    assert!(h.tcp.send.is_empty());
    assert!(
        matches!(&h.tcp.expect, Some(crate::health::Expect::Regex(r)) if r.as_str() == "^SSH-2\\.0")
    );
}

#[test]
fn an_exec_check_takes_an_executable_and_its_environment() {
    let h = &ok(&service_with(
        "    health:\n      kind: exec\n      command: [/bin/sh, -c, 'exit 0', '{address}']\n      env: { PGPORT: 5432, LANG: C }\n",
    ))
    .services[0]
        .health;
    assert_eq!(h.exec.command, ["/bin/sh", "-c", "exit 0", "{address}"]);
    assert_eq!(
        h.exec.env,
        [
            ("LANG".to_owned(), "C".to_owned()),
            ("PGPORT".to_owned(), "5432".to_owned())
        ]
    );
}

#[test]
fn every_role_check_rule_has_its_own_message() {
    let not_executable = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    let cases: Vec<(String, String)> = [
        (
            "    health: { kind: postgres, path: /x }\n",
            "6:31: services[0].health.path: path applies to http checks only, and this check's kind is postgres",
        ),
        (
            "    health: { kind: http, role: primary }\n",
            "6:27: services[0].health.role: role applies to postgres, mysql and redis checks only, and this check's kind is http",
        ),
        (
            "    health: { kind: redis, user: probe }\n",
            "6:28: services[0].health.user: user applies to postgres and mysql checks only, and this check's kind is redis; a redis check names its ACL user with username",
        ),
        (
            "    health: { kind: postgres, username: probe }\n",
            "6:31: services[0].health.username: username applies to redis checks only, and this check's kind is postgres; postgres and mysql checks name their login with user",
        ),
        (
            "    health: { kind: mysql, tls: require }\n",
            "6:28: services[0].health.tls: tls applies to postgres checks only, and this check's kind is mysql",
        ),
        (
            "    health: { command: [/bin/true] }\n",
            "6:15: services[0].health.command: command applies to exec checks only, and this check's kind is tcp (the built-in default)",
        ),
        (
            "    health: { kind: http, expect: ok }\n",
            "6:27: services[0].health.expect: expect applies to tcp checks only, and this check's kind is http",
        ),
        (
            "    health: { kind: oracle }\n",
            "6:21: services[0].health.kind: unknown health kind `oracle`: expected tcp, http, postgres, mysql, redis or exec",
        ),
        (
            "    health: { kind: postgres, password: hunter2 }\n",
            "6:31: services[0].health.password: an inline password is not accepted: put it in a file only failoverd's user can read and name that file with password_file",
        ),
        (
            "    health: { kind: postgres, role: leader }\n",
            "6:37: services[0].health.role: unknown role `leader`: expected primary, replica or any",
        ),
        (
            "    health: { kind: postgres, tls: verify-full }\n",
            "6:36: services[0].health.tls: unknown tls `verify-full`: expected off, prefer or require",
        ),
        (
            "    health: { kind: postgres, user: '' }\n",
            "6:37: services[0].health.user: user is empty; leave the key out for the default",
        ),
        (
            "    health: { kind: postgres, max_lag: 1s }\n",
            "6:31: services[0].health.max_lag: max_lag applies to role replica or any, and this check's role is primary (the built-in default): a primary has no lag",
        ),
        (
            "    health: { kind: mysql, role: replica, max_lag: 0s }\n",
            "6:52: services[0].health.max_lag: max_lag must be longer than zero",
        ),
        (
            "    health: { kind: mysql, role: any, max_lag: 2days }\n",
            "6:48: services[0].health.max_lag: max_lag 2days is longer than the maximum of 1day",
        ),
        (
            "    health: { kind: redis, password_file: secrets/pw }\n",
            "6:43: services[0].health.password_file: password_file `secrets/pw` must be an absolute path",
        ),
        (
            "    health: { send: 'PING\\r\\n' }\n",
            "6:21: services[0].health.send: send needs expect or expect_regex: without one the reply is not looked at",
        ),
        (
            "    health: { send: '', expect: x }\n",
            "6:21: services[0].health.send: send is empty; leave the key out for a server that speaks first",
        ),
        (
            "    health: { expect: '' }\n",
            "6:23: services[0].health.expect: expect is empty, which every reply contains; give the text the reply must contain",
        ),
        (
            "    health: { send: 'a\\q', expect: ok }\n",
            "6:21: services[0].health.send: invalid escape `\\q` in `a\\q`: write \\r, \\n, \\t, \\\\ or \\xNN",
        ),
        (
            "    health: { expect_regex: '(' }\n",
            "6:29: services[0].health.expect_regex: invalid regex `(`: unclosed group",
        ),
        (
            "    health: { expect_regex: 'a*' }\n",
            "6:29: services[0].health.expect_regex: expect_regex `a*` matches an empty reply, so every reply (even none) would pass",
        ),
        (
            "    health: { expect: ok, expect_regex: ok }\n",
            "6:27: services[0].health.expect_regex: give expect or expect_regex, not both",
        ),
        (
            "    health: { kind: exec }\n",
            "6:13: services[0].health.command: an exec check needs command: [path, args...]; this check's kind is exec",
        ),
        (
            "    health: { kind: exec, command: [] }\n",
            "6:36: services[0].health.command: command is empty: give [path, args...], the path absolute",
        ),
        (
            "    health: { kind: exec, command: [bin/check] }\n",
            "6:37: services[0].health.command[0]: bin/check is not an absolute path",
        ),
        (
            "    health: { kind: exec, command: [/nonexistent/failoverd-check] }\n",
            "6:37: services[0].health.command[0]: /nonexistent/failoverd-check cannot be found (No such file or directory (os error 2))",
        ),
        (
            "    health: { kind: exec, command: [/dev/null] }\n",
            "6:37: services[0].health.command[0]: /dev/null is not a regular file",
        ),
        (
            "    health: { kind: exec, command: [/bin/true, \"a\\0b\"] }\n",
            "6:48: services[0].health.command[1]: a NUL byte cannot be passed to a program",
        ),
        (
            "    health: { kind: exec, command: [/bin/true], env: { 1X: a } }\n",
            "6:56: services[0].health.env.1X: `1X` is not an environment variable name: letters, digits and _, not starting with a digit",
        ),
    ]
    .into_iter()
    .map(|(a, b)| (a.to_owned(), b.to_owned()))
    .chain([(
        format!("    health: {{ kind: exec, command: [{not_executable}] }}\n"),
        format!("6:37: services[0].health.command[0]: {not_executable} is not executable"),
    )])
    .collect();
    let mut wrong = Vec::new();
    for (extra, want) in &cases {
        let got = err(&service_with(extra));
        if &got != want {
            wrong.push(format!("for {extra:?}\n  want {want}\n   got {got}"));
        }
    }
    assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
}

#[test]
fn defaults_serve_each_kind_with_its_own_keys() {
    // Keys of every kind in `defaults`: each service takes those of its kind.
    let c = ok(&format!(
        "defaults:\n  health: {{ role: replica, user: probe, path: /ready, command: [/bin/true], expect: '+OK' }}\n{MINIMAL}    health: {{ kind: mysql }}\n  - name: api\n    vip: 10.96.0.81:80\n    health: {{ kind: http }}\n    backends: [{{ address: 10.0.0.2:80 }}]\n  - name: cache\n    vip: 10.96.0.82:80\n    health: {{ expect_regex: '^\\+OK' }}\n    backends: [{{ address: 10.0.0.3:80 }}]\n"
    ));
    let mysql = &c.services[0].health;
    assert_eq!(mysql.db.role, crate::health::RoleWanted::Replica);
    assert_eq!(mysql.db.user.as_deref(), Some("probe"));
    assert_eq!(mysql.http, HttpCheckConfig::default());
    assert_eq!(mysql.exec, ExecCheckConfig::default());
    let http = &c.services[1].health;
    assert_eq!(http.http.path, "/ready");
    assert_eq!(http.db, DatabaseCheckConfig::default());
    // A service's expect_regex replaces defaults' expect: the two are one choice.
    assert!(matches!(
        &c.services[2].health.tcp.expect,
        Some(crate::health::Expect::Regex(_))
    ));

    // kind exec in defaults, each service with its own command.
    let text = format!(
        "defaults:\n  health: {{ kind: exec, env: {{ A: b }} }}\n{MINIMAL}    health: {{ command: [/bin/true] }}\n"
    );
    let h = &ok(&text).services[0].health;
    assert_eq!(h.exec.command, ["/bin/true"]);
    assert_eq!(h.exec.env, [("A".to_owned(), "b".to_owned())]);
    assert_eq!(
        err(&format!("defaults:\n  health: {{ kind: exec }}\n{MINIMAL}")),
        "4:5: services[0].health.command: an exec check needs command: [path, args...]; this check's kind is exec (from defaults.health.kind)"
    );
    // Refused where written, in defaults too.
    assert_eq!(
        err(&format!("defaults:\n  health: {{ password: x }}\n{MINIMAL}")),
        "2:13: defaults.health.password: an inline password is not accepted: put it in a file only failoverd's user can read and name that file with password_file"
    );
}

#[test]
fn probes_are_built_from_every_kind() {
    use crate::health::{
        ExecCheck, Expect, ExpectCheck, MysqlCheck, PgCheck, PgTls, Probe, RedisCheck, RoleWanted,
    };
    let probe = |health: &str| {
        let c = ok(&service_with(&format!("    health: {health}\n")));
        Probe::for_config(&c.services[0].health)
    };
    assert_eq!(probe("{ kind: tcp }"), Probe::Tcp);
    assert!(
        matches!(probe("{ kind: http, path: /primary }"), Probe::Http(h) if h.path == "/primary")
    );
    assert_eq!(
        probe("{ send: 'PING\\r\\n', expect: '+PONG' }"),
        Probe::Expect(ExpectCheck {
            send: b"PING\r\n".to_vec(),
            expect: Expect::Substring("+PONG".into()),
        })
    );
    assert_eq!(
        probe("{ expect_regex: '^220 ' }"),
        Probe::Expect(ExpectCheck {
            send: vec![],
            expect: Expect::Regex(regex::Regex::new("^220 ").unwrap()),
        })
    );
    assert_eq!(
        probe("{ kind: postgres }"),
        Probe::Postgres(PgCheck::default())
    );
    assert_eq!(
        probe("{ kind: postgres, role: replica, user: probe, database: app, password_file: /pw, max_lag: 5s, tls: off }"),
        Probe::Postgres(PgCheck {
            role: RoleWanted::Replica,
            user: "probe".into(),
            database: Some("app".into()),
            password_file: Some("/pw".into()),
            tls: PgTls::Off,
            max_lag: Some(Duration::from_secs(5)),
        })
    );
    assert_eq!(
        probe("{ kind: mysql }"),
        Probe::Mysql(MysqlCheck::default())
    );
    assert_eq!(
        probe("{ kind: mysql, role: any, user: probe, database: app, password_file: /pw, max_lag: 3s }"),
        Probe::Mysql(MysqlCheck {
            role: RoleWanted::Any,
            user: "probe".into(),
            database: Some("app".into()),
            password_file: Some("/pw".into()),
            max_lag: Some(Duration::from_secs(3)),
        })
    );
    assert_eq!(
        probe("{ kind: redis }"),
        Probe::Redis(RedisCheck::default())
    );
    assert_eq!(
        probe("{ kind: redis, role: replica, username: probe, password_file: /pw, max_lag: 20s }"),
        Probe::Redis(RedisCheck {
            role: RoleWanted::Replica,
            username: Some("probe".into()),
            password_file: Some("/pw".into()),
            max_lag: Some(Duration::from_secs(20)),
        })
    );
    assert_eq!(
        probe("{ kind: exec, command: [/bin/true, '{host}'], env: { X: y } }"),
        Probe::Exec(ExecCheck {
            command: vec!["/bin/true".into(), "{host}".into()],
            env: vec![("X".into(), "y".into())],
        })
    );
}

#[test]
fn an_env_name_given_twice_is_refused_at_the_second() {
    let got = err(&service_with(
        "    health:\n      kind: exec\n      command: [/bin/true]\n      env:\n        A: b\n        A: c\n",
    ));
    assert_eq!(got, "11:9: services[0].health.env.A: duplicate key `A`");
}

mod fleet_section {
    use super::*;

    const ETCD: &str = "fleet:\n  host: h1\n  etcd:\n    endpoints: [http://10.0.0.9:2379]\n";

    #[test]
    fn defaults_fill_the_prefix_and_nothing_is_fleet_without_the_section() {
        assert_eq!(ok(MINIMAL).fleet, None);
        let f = ok(&format!("{ETCD}{MINIMAL}")).fleet.unwrap();
        assert_eq!(f.etcd.prefix, "/failoverd/");
        assert_eq!(f.host, "h1");
        assert_eq!(f.etcd.tls, None);
    }

    #[test]
    fn the_host_defaults_to_the_hostname() {
        let text = format!("fleet:\n  etcd:\n    endpoints: [http://10.0.0.9:2379]\n{MINIMAL}");
        assert!(!ok(&text).fleet.unwrap().host.is_empty());
    }

    #[test]
    fn bad_fleet_values_are_located() {
        let cases = [
            ("fleet:\n  etcd:\n    endpoints: []\n", "3:16: fleet.etcd.endpoints: endpoints is empty"),
            ("fleet:\n  etcd:\n    endpoints: [10.0.0.9:2379]\n", "3:17: fleet.etcd.endpoints[0]: endpoint `10.0.0.9:2379` must be a URL"),
            ("fleet:\n  etcd:\n    endpoints: [https://e:2379]\n", "3:17: fleet.etcd.endpoints[0]: endpoint `https://e:2379` is https but fleet.etcd.tls is missing"),
            ("fleet:\n  etcd:\n    endpoints: [http://e:2379]\n    prefix: /failoverd\n", "4:13: fleet.etcd.prefix: prefix `/failoverd` must start and end with `/`"),
            ("fleet:\n  etcd:\n    endpoints: [http://e:2379]\n    password: x\n", "4:5: fleet.etcd.password: an inline password is not accepted"),
            ("fleet:\n  etcd:\n    endpoints: [http://e:2379]\n    username: u\n", "4:15: fleet.etcd.username: username needs password_file"),
            ("fleet:\n  etcd:\n    endpoints: [http://e:2379]\n    username: u\n    password_file: pw\n", "5:20: fleet.etcd.password_file: password_file `pw` must be an absolute path"),
            ("fleet:\n  etcd:\n    endpoints: [http://e:2379]\n    tls: { ca: /ca.pem, cert: /c.pem }\n", "4:31: fleet.etcd.tls.cert: cert and key go together"),
            ("fleet:\n  host: a/b\n  etcd:\n    endpoints: [http://e:2379]\n", "2:9: fleet.host: host `a/b` has '/'"),
        ];
        for (fleet, want) in cases {
            let got = err(&format!("{fleet}{MINIMAL}"));
            assert!(got.starts_with(want), "{fleet}\ngot:  {got}\nwant: {want}");
        }
    }
}

#[test]
fn passive_health_is_on_with_three_and_terminate_is_off_by_default() {
    let s = &ok(MINIMAL).services[0];
    assert_eq!(s.passive, PassiveConfig::default());
    assert_eq!(s.passive.consecutive_failures, 3);
    assert!(s.passive.is_on());
    assert_eq!(s.terminate, TerminateConfig::default());
    assert_eq!(s.terminate.drain_after, None);
}

#[test]
fn passive_and_terminate_merge_from_defaults_key_by_key() {
    let text = "\
defaults:
  passive: { consecutive_failures: 0 }
  terminate: { on_down: true, drain_after: 30s }
services:
  - name: web
    vip: 10.96.0.80:80
    terminate: { on_failback: true, drain_after: never }
    backends:
      - address: 10.0.0.1:80
  - name: db
    vip: 10.96.0.81:80
    passive: { consecutive_failures: 1 }
    backends:
      - address: 10.0.0.2:80
";
    let c = ok(text);
    let (web, db) = (&c.services[0], &c.services[1]);
    assert!(!web.passive.is_on(), "0 from defaults turns it off");
    assert_eq!(
        web.terminate,
        TerminateConfig {
            on_down: true,
            on_failback: true,
            drain_after: None,
        },
        "a service's `never` overrides the defaults' grace"
    );
    assert_eq!(db.passive.consecutive_failures, 1);
    assert_eq!(db.terminate.drain_after, Some(Duration::from_secs(30)));
}

#[test]
fn bad_passive_and_terminate_values_are_located() {
    let cases = [
        (
            "defaults: { passive: { consecutive_failures: 1001 } }\n",
            "1:46: defaults.passive.consecutive_failures: consecutive_failures 1001 is more than the maximum of 1000",
        ),
        (
            "defaults: { terminate: { drain_after: 0s } }\n",
            "1:39: defaults.terminate.drain_after: drain_after must be longer than zero: to abort at once, drain with --terminate",
        ),
        (
            "defaults: { terminate: { drain_after: 2d } }\n",
            "1:39: defaults.terminate.drain_after: drain_after 2days is longer than the maximum of 1day",
        ),
    ];
    for (extra, want) in cases {
        assert_eq!(&err(&format!("{extra}{MINIMAL}")), want, "for {extra:?}");
    }
    let e = err(&format!(
        "defaults: {{ terminate: {{ drain_after: soon }} }}\n{MINIMAL}"
    ));
    assert!(e.contains("invalid drain_after `soon`"), "{e}");
}

#[test]
fn services_with_equal_health_sections_share_one_copy() {
    let c = ok(r#"
defaults:
  health: { kind: http, path: /healthz }
services:
  - name: a
    vip: 10.9.0.1:80
    backends: [{ address: 10.0.0.1:80 }]
  - name: b
    vip: 10.9.0.2:80
    backends: [{ address: 10.0.0.2:80 }]
  - name: c
    vip: 10.9.0.3:80
    health: { path: /other }
    backends: [{ address: 10.0.0.3:80 }]
  - name: d
    vip: 10.9.0.4:80
    backends: [{ address: 10.0.0.4:80 }]
"#);
    let health = |i: usize| &c.services[i].health;
    assert!(std::sync::Arc::ptr_eq(health(0), health(1)));
    assert!(std::sync::Arc::ptr_eq(health(0), health(3)));
    assert!(!std::sync::Arc::ptr_eq(health(0), health(2)));
    assert_eq!(health(2).http.path, "/other");
    assert_eq!(health(3).http.path, "/healthz");
}
