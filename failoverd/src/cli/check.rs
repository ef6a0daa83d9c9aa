//! `failoverd check`: validate a configuration file and summarise what it would do.

use std::{collections::BTreeMap, fmt, path::PathBuf};

use humantime::format_duration;

use crate::{
    cli::{
        command::{print, CommandError},
        output::{self, Output, OutputArgs},
    },
    config::{self, BackendConfig, Config, ConfigError, HealthConfig, ServiceConfig},
    health::Probe,
};

/// Arguments of `failoverd check`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Example:\n  \
    failoverd check --config /etc/failoverd/failoverd.yaml\n\n\
    A valid file prints a summary (per service: VIP, backends by priority, worst-case\n\
    detection time) and exits 0. An invalid one prints FILE:LINE:COLUMN: KEY: MESSAGE\n\
    for the first problem in the file and exits 4. Nothing is opened or resolved.\n\
    With -o json a valid file prints {\"file\", \"services\": [{\"name\", \"vip\", \"protocol\",\n\
    \"backends\", \"detection_bound_ms\", \"health_kind\", \"role\"}]}.")]
pub struct CheckArgs {
    /// The configuration file to check.
    #[arg(long, env = "FAILOVERD_CONFIG", default_value = crate::dirs::DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// How to print the summary.
    #[command(flatten)]
    pub output: OutputArgs,
}

/// Why `failoverd check` failed.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The file is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The summary could not be printed.
    #[error(transparent)]
    Output(#[from] CommandError),
}

/// The JSON form of a valid file's summary (`check -o json`); fields are only ever added.
#[derive(Debug, serde::Serialize)]
pub struct JsonSummary {
    /// The file checked.
    pub file: String,
    /// Its services, in file order.
    pub services: Vec<JsonService>,
}

/// One service of a [`JsonSummary`].
#[derive(Debug, serde::Serialize)]
pub struct JsonService {
    /// Name.
    pub name: String,
    /// VIP, `ip:port`.
    pub vip: String,
    /// `tcp` or `udp`.
    pub protocol: String,
    /// Backends configured.
    pub backends: usize,
    /// `fall × interval + timeout`, in milliseconds.
    pub detection_bound_ms: u128,
    /// `health.kind`: `tcp`, `http`, `postgres`, `mysql`, `redis` or `exec`.
    pub health_kind: String,
    /// The role the check wants (`primary`, `replica`, `any`) for postgres, mysql and
    /// redis; `null` for the other kinds.
    pub role: Option<String>,
}

/// Runs `failoverd check`: loads and validates the file, then prints [`Summary`].
pub fn run(args: &CheckArgs) -> Result<(), CheckError> {
    let config = config::load(&args.config)?;
    let text = match args.output.output {
        Output::Table => Summary(&config).to_string(),
        Output::Json => output::json(&JsonSummary {
            file: config.source.display().to_string(),
            services: config.services.iter().map(|s| json_service(s)).collect(),
        })?,
    };
    Ok(print(&text)?)
}

/// One service as `check -o json` prints it.
fn json_service(s: &ServiceConfig) -> JsonService {
    JsonService {
        name: s.name.clone(),
        vip: s.vip.to_string(),
        protocol: s.protocol.to_string(),
        backends: s.backends.len(),
        detection_bound_ms: s.detection_bound().as_millis(),
        health_kind: s.health.kind.to_string(),
        role: s
            .health
            .kind
            .has_role()
            .then(|| s.health.db.role.to_string()),
    }
}

/// What a valid configuration will do, for a person to read.
#[derive(Debug)]
pub struct Summary<'a>(pub &'a Config);

impl fmt::Display for Summary<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = self.0;
        let count = c.services.len();
        writeln!(
            f,
            "{}: ok, {count} service{}",
            c.source.display(),
            if count == 1 { "" } else { "s" }
        )?;
        writeln!(
            f,
            "  datapath: cgroup {}, pins under {}",
            c.datapath.cgroup,
            c.datapath.pin_dir.display()
        )?;
        writeln!(
            f,
            "  control:  socket {}, state in {}",
            c.control.socket.display(),
            c.control.state_dir.display()
        )?;
        writeln!(f, "  metrics:  http://{}/metrics", c.metrics.listen)?;
        let servers = match &c.resolver.nameservers {
            None => "the system's nameservers".to_owned(),
            Some(list) => list
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        };
        writeln!(
            f,
            "  resolver: {servers}, re-resolving every {} to {}",
            format_duration(c.resolver.min_ttl),
            format_duration(c.resolver.max_ttl)
        )?;
        if let Some(fleet) = &c.fleet {
            // Where the fleet's services and drains come from (docs/fleet.md); the password
            // file is named, never read here.
            writeln!(
                f,
                "  fleet:    host {}, etcd {} under {}{}{}",
                fleet.host,
                fleet.etcd.endpoints.join(","),
                fleet.etcd.prefix,
                if fleet.etcd.tls.is_some() {
                    ", TLS"
                } else {
                    ""
                },
                fleet
                    .etcd
                    .username
                    .as_ref()
                    .map(|u| format!(", user {u}"))
                    .unwrap_or_default()
            )?;
        }
        for service in &c.services {
            writeln!(f)?;
            write_service(f, service)?;
        }
        Ok(())
    }
}

/// Passive health in one line: when kernel evidence ejects a backend.
fn describe_passive(s: &ServiceConfig) -> String {
    match s.passive.consecutive_failures {
        0 => "off".to_owned(),
        _ if s.protocol == crate::datapath::Protocol::Udp => {
            "off for udp (no handshake for the kernel to watch)".to_owned()
        }
        n => format!(
            "ejects after {n} failed connects in a row seen by the kernel (at least one backend, else at most {}% of a group)",
            s.breaker.max_ejected_percent
        ),
    }
}

/// When open sockets to a backend are aborted, in one line.
fn describe_terminate(s: &ServiceConfig) -> String {
    let t = &s.terminate;
    let mut when = Vec::new();
    if t.on_down {
        when.push("when a backend goes down".to_owned());
    }
    if t.on_failback {
        when.push("on failback".to_owned());
    }
    if let Some(grace) = t.drain_after {
        when.push(format!("{} after a drain", format_duration(grace)));
    }
    if when.is_empty() {
        "never (drain --terminate only)".to_owned()
    } else {
        format!("open sockets aborted {}", when.join(", "))
    }
}

fn write_service(f: &mut fmt::Formatter<'_>, s: &ServiceConfig) -> fmt::Result {
    writeln!(
        f,
        "service {}: vip {}, on_all_down {}, failback {}",
        s.name,
        s.vip(),
        s.on_all_down,
        s.failback
    )?;
    let h = &s.health;
    let port = h
        .port
        .map_or("the backend's port".to_owned(), |p| format!("port {p}"));
    let probe = describe_probe(h, &port);
    writeln!(
        f,
        "  health:    {probe}; every {}, timeout {}, rise {}, fall {}",
        format_duration(h.interval),
        format_duration(h.timeout),
        h.rise,
        h.fall
    )?;
    writeln!(
        f,
        "  detection: at most {} (fall {} × interval {} + timeout {})",
        format_duration(s.detection_bound()),
        h.fall,
        format_duration(h.interval),
        format_duration(h.timeout)
    )?;
    let b = &s.breaker;
    writeln!(
        f,
        "  breaker:   ejects after {} failures for {} up to {}, at most {}% of backends",
        b.failures,
        format_duration(b.open_for),
        format_duration(b.max_open_for),
        b.max_ejected_percent
    )?;
    writeln!(f, "  passive:   {}", describe_passive(s))?;
    writeln!(f, "  terminate: {}", describe_terminate(s))?;
    let mut by_priority: BTreeMap<u8, Vec<&BackendConfig>> = BTreeMap::new();
    for backend in &s.backends {
        by_priority
            .entry(backend.priority)
            .or_default()
            .push(backend);
    }
    for (priority, group) in by_priority {
        writeln!(f, "  priority {priority}:")?;
        let total: u64 = group.iter().map(|b| u64::from(b.weight)).sum();
        for backend in group {
            let share = if total == 0 {
                0.0
            } else {
                100.0 * f64::from(backend.weight) / total as f64
            };
            let address = backend.address.to_string();
            // An unnamed backend is named by its address: no need to say it twice.
            if *backend.name != *address {
                write!(f, "    {} {address}", backend.name)?;
            } else {
                write!(f, "    {address}")?;
            }
            writeln!(f, " weight {} ({share:.0}%)", backend.weight)?;
        }
    }
    Ok(())
}

/// The probe as it will run (what [`Probe::for_config`] makes of the section), in words:
/// its kind first and, for the database kinds, the role it wants.
fn describe_probe(h: &HealthConfig, port: &str) -> String {
    let password = |file: &Option<PathBuf>| {
        file.as_ref().map_or(String::new(), |p| {
            format!(", password from {}", p.display())
        })
    };
    let max_lag = |lag: Option<std::time::Duration>| {
        lag.map_or(String::new(), |l| {
            format!(", max lag {}", format_duration(l))
        })
    };
    match Probe::for_config(h) {
        Probe::Tcp => format!("tcp connect to {port}"),
        Probe::Http(http) => format!(
            "http GET {} on {port}, status {}{}",
            http.path,
            h.http.expect_status,
            http.expect_body
                .as_ref()
                .map_or(String::new(), |b| format!(", body containing {b:?}"))
        ),
        Probe::Expect(e) => {
            let send = if e.send.is_empty() {
                String::new()
            } else {
                format!(" sending {:?},", String::from_utf8_lossy(&e.send))
            };
            format!("tcp to {port},{send} expecting {}", e.expect)
        }
        Probe::Postgres(pg) => format!(
            "postgres on {port}, role {}, user {}, database {}, tls {}{}{}",
            pg.role,
            pg.user,
            pg.database.as_deref().unwrap_or(&pg.user),
            match pg.tls {
                crate::health::PgTls::Off => "off",
                crate::health::PgTls::Prefer => "prefer",
                crate::health::PgTls::Require => "require",
            },
            max_lag(pg.max_lag),
            password(&pg.password_file)
        ),
        Probe::Mysql(my) => format!(
            "mysql on {port}, role {}, user {}{}{}{}",
            my.role,
            my.user,
            my.database
                .as_ref()
                .map_or(String::new(), |d| format!(", database {d}")),
            max_lag(my.max_lag),
            password(&my.password_file)
        ),
        Probe::Redis(r) => format!(
            "redis on {port}, role {}{}{}{}",
            r.role,
            r.username
                .as_ref()
                .map_or(String::new(), |u| format!(", user {u}")),
            max_lag(r.max_lag),
            password(&r.password_file)
        ),
        Probe::Exec(x) => {
            let env: Vec<&str> = x.env.iter().map(|(k, _)| k.as_str()).collect();
            format!(
                "exec {:?}{}",
                x.command,
                if env.is_empty() {
                    ", empty environment".to_owned()
                } else {
                    format!(", environment {}", env.join(" "))
                }
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn summarises_backends_by_priority_and_the_detection_bound() {
        let text = "\
services:
  - name: orders-db
    vip: 10.96.0.10:5432
    health: { interval: 1s, timeout: 300ms, fall: 3 }
    backends:
      - { address: 10.0.0.7:5432, name: c, priority: 1 }
      - { address: 10.0.0.5:5432, name: a, weight: 300 }
      - { address: 10.0.0.6:5432, name: b }
";
        let config = config::parse(text, Path::new("f.yaml")).unwrap();
        let shown = Summary(&config).to_string();
        assert!(shown.starts_with("f.yaml: ok, 1 service\n"), "{shown}");
        assert!(
            shown
                .contains("  detection: at most 3s 300ms (fall 3 × interval 1s + timeout 300ms)\n"),
            "{shown}"
        );
        let backends = "  priority 0:\n    a 10.0.0.5:5432 weight 300 (75%)\n    b 10.0.0.6:5432 weight 100 (25%)\n  priority 1:\n    c 10.0.0.7:5432 weight 100 (100%)\n";
        assert!(shown.contains(backends), "{shown}");
    }

    #[test]
    fn the_summary_says_when_kernel_evidence_ejects_and_sockets_are_aborted() {
        let text = "\
services:
  - name: web
    vip: 10.96.0.80:80
    terminate: { on_down: true, drain_after: 5m }
    backends: [{ address: 10.0.0.5:80 }]
  - name: dns
    vip: 10.96.0.53:53
    protocol: udp
    backends: [{ address: 10.0.0.5:53 }]
";
        let config = config::parse(text, Path::new("f.yaml")).unwrap();
        let shown = Summary(&config).to_string();
        assert!(
            shown.contains("  passive:   ejects after 3 failed connects in a row seen by the kernel (at least one backend, else at most 50% of a group)\n"),
            "{shown}"
        );
        assert!(
            shown.contains(
                "  terminate: open sockets aborted when a backend goes down, 5m after a drain\n"
            ),
            "{shown}"
        );
        assert!(shown.contains("  passive:   off for udp"), "{shown}");
        assert!(
            shown.contains("  terminate: never (drain --terminate only)\n"),
            "{shown}"
        );
    }

    #[test]
    fn the_summary_names_the_kind_and_the_role() {
        let text = "\
services:
  - name: pg
    vip: 10.96.0.10:5432
    health: { kind: postgres, role: replica, max_lag: 10s, password_file: /etc/failoverd/pw }
    backends: [{ address: 10.0.0.5:5432 }]
  - name: my
    vip: 10.96.0.11:3306
    health: { kind: mysql, port: 3307 }
    backends: [{ address: 10.0.0.5:3306 }]
  - name: rd
    vip: 10.96.0.12:6379
    health: { kind: redis, role: any, username: probe }
    backends: [{ address: 10.0.0.5:6379 }]
  - name: smtp
    vip: 10.96.0.13:25
    health: { send: 'EHLO x\\r\\n', expect_regex: '^250' }
    backends: [{ address: 10.0.0.5:25 }]
  - name: app
    vip: 10.96.0.14:80
    health: { kind: exec, command: [/bin/true, '{address}'], env: { LANG: C } }
    backends: [{ address: 10.0.0.5:80 }]
";
        let config = config::parse(text, Path::new("f.yaml")).unwrap();
        let shown = Summary(&config).to_string();
        for line in [
            "  health:    postgres on the backend's port, role replica, user postgres, database postgres, tls prefer, max lag 10s, password from /etc/failoverd/pw; every 1s",
            "  health:    mysql on port 3307, role primary, user root; every 1s",
            "  health:    redis on the backend's port, role any, user probe; every 1s",
            "  health:    tcp to the backend's port, sending \"EHLO x\\r\\n\", expecting /^250/; every 1s",
            "  health:    exec [\"/bin/true\", \"{address}\"], environment LANG; every 1s",
        ] {
            assert!(shown.contains(line), "{line}\nnot in\n{shown}");
        }
        let kinds: Vec<(String, Option<String>)> = config
            .services
            .iter()
            .map(|s| json_service(s))
            .map(|j| (j.health_kind, j.role))
            .collect();
        let want = [
            ("postgres", Some("replica")),
            ("mysql", Some("primary")),
            ("redis", Some("any")),
            ("tcp", None),
            ("exec", None),
        ]
        .map(|(k, r)| (k.to_owned(), r.map(str::to_owned)));
        assert_eq!(kinds, want);
    }

    #[test]
    fn the_example_config_checks() {
        let path = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../configs/failoverd.yaml"
        ));
        run(&CheckArgs {
            config: path.to_path_buf(),
            output: Default::default(),
        })
        .unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn check_refuses_values_the_daemon_could_not_apply() {
        // Each of these passed check once and then broke run or reload.
        let fixtures = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/bad"));
        for (file, want) in [
            (
                "interval_too_long.yaml",
                (6, 17, "services[0].health.interval"),
            ),
            ("vip_v4_mapped_duplicate.yaml", (9, 10, "services[1].vip")),
            ("http_path_crlf.yaml", (7, 13, "services[0].health.path")),
            ("control_socket_too_long.yaml", (3, 11, "control.socket")),
        ] {
            let args = CheckArgs {
                config: fixtures.join(file),
                output: Default::default(),
            };
            match run(&args) {
                Err(CheckError::Config(ConfigError::Invalid {
                    line, column, key, ..
                })) => assert_eq!((line, column, key.as_str()), want, "{file}"),
                other => panic!("{file}: {other:?}"),
            }
        }
    }

    #[test]
    fn an_invalid_file_is_an_error() {
        let path = Path::new("/nonexistent/failoverd.yaml");
        assert!(matches!(
            run(&CheckArgs {
                config: path.to_path_buf(),
                output: Default::default(),
            }),
            Err(CheckError::Config(ConfigError::Io { .. }))
        ));
    }
}
