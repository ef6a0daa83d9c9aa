//! Every broken config under `tests/fixtures/bad` fails where its first line
//! says, every file under `tests/fixtures/good` and in `configs/` parses (the
//! commented examples of `configs/failoverd.yaml` too).
//!
//! A fixture starts with `# expect: LINE:COLUMN: KEY`: the position and key
//! path the error must name (1-based, counting that comment line).

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use failoverd::{
    config::{self, BackendAddress, ConfigError, HealthKind, StatusMatch},
    datapath::Protocol,
    health::{ExecCheck, Expect, MysqlCheck, PgCheck, PgTls, Probe, RedisCheck, RoleWanted},
};

/// Every fixture must fail, and there must be at least this many.
const MIN_FIXTURES: usize = 22;

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn bad_fixtures() -> Vec<PathBuf> {
    let dir = manifest_dir().join("tests/fixtures/bad");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

/// `(line, column, key)` from the fixture's first line.
fn expectation(path: &Path) -> (usize, usize, String) {
    let text = std::fs::read_to_string(path).expect("fixture is readable");
    let first = text.lines().next().unwrap_or_default();
    let spec = first.strip_prefix("# expect: ").unwrap_or_else(|| {
        panic!(
            "{}: first line must be `# expect: L:C: key`",
            path.display()
        )
    });
    let mut parts = spec.splitn(3, ':');
    let mut number = || {
        parts
            .next()
            .and_then(|n| n.trim().parse::<usize>().ok())
            .unwrap_or_else(|| panic!("{}: bad expect line `{first}`", path.display()))
    };
    let (line, column) = (number(), number());
    let key = parts.next().unwrap_or_default().trim().to_owned();
    assert!(
        !key.is_empty(),
        "{}: expect line names no key",
        path.display()
    );
    (line, column, key)
}

#[test]
fn every_bad_fixture_fails_at_the_expected_key_and_position() {
    let fixtures = bad_fixtures();
    assert!(
        fixtures.len() >= MIN_FIXTURES,
        "only {} fixtures",
        fixtures.len()
    );
    let mut wrong = Vec::new();
    for path in &fixtures {
        let (line, column, key) = expectation(path);
        let want = format!("{}:{line}:{column}: {key}: ", path.display());
        let err = match config::load(path) {
            Ok(_) => {
                wrong.push(format!("{}: parsed, but must fail", path.display()));
                continue;
            }
            Err(e) => e,
        };
        let shown = err.to_string();
        match err {
            ConfigError::Invalid {
                file,
                line: l,
                column: c,
                key: k,
                message,
            } => {
                if file != *path || (l, c, &k) != (line, column, &key) {
                    wrong.push(format!("expected {want}…\n     got {shown}"));
                } else if message.is_empty() || message.starts_with(char::is_uppercase) {
                    wrong.push(format!("message must be non-empty, lower-case: {shown}"));
                } else {
                    assert!(shown.starts_with(&want), "{shown}");
                }
            }
            other => wrong.push(format!("{}: not Invalid: {other}", path.display())),
        }
    }
    assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
}

#[test]
fn the_example_config_parses_to_what_it_says() {
    let path = manifest_dir().join("../configs/failoverd.yaml");
    let c = config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.source, path);
    assert_eq!(c.services.len(), 3);

    let orders = &c.services[0];
    assert_eq!(orders.name, "orders-db");
    assert_eq!(orders.vip, "10.96.0.10:5432".parse().unwrap());
    assert_eq!(orders.health.kind, HealthKind::Http);
    assert_eq!(orders.health.interval, Duration::from_secs(1));
    assert_eq!(orders.health.timeout, Duration::from_millis(300));
    assert_eq!(orders.health.port, Some(8008));
    assert_eq!(
        orders.health.http.expect_status,
        StatusMatch::List(vec![200])
    );
    assert_eq!(orders.detection_bound(), Duration::from_millis(3300));
    assert_eq!(
        orders.backends[1].address,
        BackendAddress::Host {
            host: "db-b.internal".into(),
            port: 5432
        }
    );
    assert_eq!(orders.backends[1].priority, 1);

    // No health section of its own: everything from `defaults`.
    let cache = &c.services[1];
    assert!(cache.vip.is_ipv6());
    assert_eq!(cache.health.kind, HealthKind::Tcp);
    assert_eq!(cache.health.timeout, Duration::from_millis(500));
    assert_eq!(cache.backends[0].weight, 300);
    assert_eq!(&*cache.backends[1].name, "[2001:db8:10::32]:6379");

    let dns = &c.services[2];
    assert_eq!(dns.protocol, Protocol::Udp);
    assert_eq!(dns.on_all_down, config::OnAllDown::Panic);
    assert_eq!(dns.failback, config::Failback::Manual);
}

#[test]
fn every_yaml_file_in_configs_parses() {
    let dir = manifest_dir().join("../configs");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("configs/ is readable") {
        let path = entry.expect("directory entry").path();
        // Only failoverd's own config files; alert rules and dashboards are other formats.
        let is_config = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("failoverd") && n.ends_with(".yaml"));
        if is_config {
            config::load(&path).unwrap_or_else(|e| panic!("{e}"));
            checked += 1;
        }
    }
    assert!(checked >= 1, "no failoverd*.yaml in {}", dir.display());
}

#[test]
fn the_database_fixture_builds_the_probes_it_says() {
    let path = manifest_dir().join("tests/fixtures/good/databases.yaml");
    let c = config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let probe = |name: &str| {
        let s = c.services.iter().find(|s| s.name == name).expect(name);
        Probe::for_config(&s.health)
    };
    let password_file = Some("/etc/failoverd/probe.pw".into());
    assert_eq!(
        probe("orders-pg"),
        Probe::Postgres(PgCheck {
            user: "failoverd".into(),
            database: Some("postgres".into()),
            password_file: password_file.clone(),
            tls: PgTls::Require,
            ..PgCheck::default()
        })
    );
    assert_eq!(
        probe("orders-pg-ro"),
        Probe::Postgres(PgCheck {
            role: RoleWanted::Replica,
            user: "failoverd".into(),
            password_file: password_file.clone(),
            max_lag: Some(Duration::from_secs(10)),
            ..PgCheck::default()
        })
    );
    assert!(matches!(probe("orders-patroni"), Probe::Http(h) if h.path == "/primary"));
    assert_eq!(
        probe("shop-mysql"),
        Probe::Mysql(MysqlCheck {
            user: "failoverd".into(),
            password_file: password_file.clone(),
            ..MysqlCheck::default()
        })
    );
    assert_eq!(
        probe("sessions-redis"),
        Probe::Redis(RedisCheck {
            username: Some("failoverd".into()),
            password_file,
            ..RedisCheck::default()
        })
    );
    match probe("smtp") {
        Probe::Expect(e) => {
            assert_eq!(e.send, b"EHLO failoverd\r\n");
            assert!(matches!(e.expect, Expect::Regex(r) if r.as_str() == "^250[ -]"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        probe("app"),
        Probe::Exec(ExecCheck {
            command: ["/bin/sh", "-c", "exit 0", "check", "{address}"]
                .map(String::from)
                .to_vec(),
            env: vec![("LANG".into(), "C".into())],
        })
    );
}

/// `configs/failoverd.yaml` carries commented examples between `# example: NAME` and
/// `# end example` lines; uncommented and appended to the file's services, each parses.
#[test]
fn the_commented_examples_in_the_example_config_parse() {
    let path = manifest_dir().join("../configs/failoverd.yaml");
    let text = std::fs::read_to_string(&path).expect("configs/failoverd.yaml");
    let mut examples: Vec<(String, String)> = Vec::new();
    let mut current: Option<(String, String)> = None;
    for line in text.lines() {
        let trimmed = line.trim_start();
        if let Some(name) = trimmed.strip_prefix("# example: ") {
            current = Some((name.to_owned(), String::new()));
        } else if trimmed == "# end example" {
            examples.extend(current.take());
        } else if let Some((_, body)) = current.as_mut() {
            // `  # - name: x` becomes `  - name: x`: the `# ` after the indentation goes.
            let indent = line.len() - trimmed.len();
            let uncommented = trimmed
                .strip_prefix("# ")
                .or_else(|| trimmed.strip_prefix('#'))
                .unwrap_or(trimmed);
            body.push_str(&format!("{}{uncommented}\n", " ".repeat(indent)));
        }
    }
    assert!(current.is_none(), "an example without `# end example`");
    assert!(
        examples.iter().any(|(name, _)| name == "postgres"),
        "no postgres example in {}",
        path.display()
    );
    for (name, body) in examples {
        let full = format!("{text}\n{body}");
        let c = config::parse(&full, &path).unwrap_or_else(|e| panic!("example {name}: {e}"));
        let last = c.services.last().expect("a service");
        if name == "postgres" {
            assert_eq!(last.health.kind, HealthKind::Postgres);
            assert_eq!(last.health.db.role, RoleWanted::Primary);
        }
    }
}

/// The systemd unit: a notify service with a watchdog that checks its config first, reloads
/// through `failoverd reload` (which waits and fails on an invalid file), restarts on failure
/// and keeps exactly the capabilities BPF needs.
#[test]
fn systemd_unit_runs_the_daemon_with_only_the_capabilities_it_needs() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/failoverd.service");
    let text = std::fs::read_to_string(&path).expect("configs/failoverd.service");
    let mut section = String::new();
    let mut keys: Vec<(String, String, String)> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_string();
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("line {}: not key=value: {line}", n + 1));
        keys.push((section.clone(), key.to_string(), value.to_string()));
    }
    let get = |s: &str, k: &str| {
        keys.iter()
            .find(|(sec, key, _)| sec == s && key == k)
            .map(|(_, _, v)| v.as_str())
    };
    assert_eq!(get("Service", "Type"), Some("notify"));
    assert!(get("Service", "ExecStartPre").is_some_and(|v| v.contains("failoverd check --config")));
    assert!(get("Service", "ExecStart").is_some_and(|v| v.contains("failoverd run --config")));
    assert!(get("Service", "ExecReload").is_some_and(|v| v.contains("failoverd reload --config")));
    assert!(get("Service", "WatchdogSec").is_some());
    assert_eq!(get("Service", "RestrictSUIDSGID"), Some("yes"));
    assert_eq!(get("Service", "UMask"), Some("0077"));
    assert_eq!(get("Service", "Restart"), Some("on-failure"));
    let caps = get("Service", "CapabilityBoundingSet").expect("capabilities");
    for cap in ["CAP_BPF", "CAP_NET_ADMIN", "CAP_SYS_ADMIN"] {
        assert!(caps.contains(cap), "{cap} missing from {caps}");
    }
    assert_eq!(get("Service", "RuntimeDirectoryMode"), Some("0750"));
    // The daemon refuses a state_dir others can write to, and creates it 0700 itself.
    assert_eq!(get("Service", "StateDirectoryMode"), Some("0700"));
    // systemd's default soft limit (1,024) is what a flood of metrics connections used up.
    let nofile: u64 = get("Service", "LimitNOFILE")
        .and_then(|v| v.parse().ok())
        .expect("LimitNOFILE= a number");
    assert!(nofile >= 65_536, "LimitNOFILE={nofile}");
    assert_eq!(get("Install", "WantedBy"), Some("multi-user.target"));
}

/// `systemd-analyze verify` accepts the unit (with its binary path pointed at the one cargo
/// built, since nothing is installed under /usr/bin here).
#[test]
fn systemd_analyze_verifies_the_unit() {
    let Ok(analyze) = which("systemd-analyze") else {
        eprintln!(
            "SKIPPED: systemd-analyze is not installed (scripts/install-deps.sh installs systemd)"
        );
        return;
    };
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/failoverd.service"),
    )
    .expect("unit");
    let dir = std::env::temp_dir().join(format!("fo-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let unit = dir.join("failoverd.service");
    std::fs::write(
        &unit,
        text.replace("/usr/bin/failoverd", env!("CARGO_BIN_EXE_failoverd")),
    )
    .expect("write unit");
    let out = std::process::Command::new(analyze)
        .arg("verify")
        .arg(&unit)
        .output()
        .expect("run systemd-analyze");
    std::fs::remove_dir_all(&dir).ok();
    assert!(
        out.status.success(),
        "systemd-analyze verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn which(name: &str) -> Result<std::path::PathBuf, ()> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or(())
}
