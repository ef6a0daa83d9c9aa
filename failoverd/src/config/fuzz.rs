//! Fuzzing the loader with proptest: arbitrary bytes, YAML-shaped token soup,
//! and generated configs with hostile values. The loader must return a config
//! or a located error, never panic, and every config it accepts must be one
//! the daemon and the datapath can apply without overflowing or failing.

use std::{
    path::Path,
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use proptest::{prelude::*, test_runner::Config as ProptestConfig};

use super::{read::parse_bytes, BackendAddress, Config, ConfigError};
use crate::{
    cli::check::Summary,
    datapath::{TableBackend, Vip, VipTable},
    health::Probe,
};

/// Cases per strategy: together about a few seconds in a debug build.
const CASES: u32 = 2000;

fn settings() -> ProptestConfig {
    ProptestConfig {
        cases: CASES,
        // A failure prints its shrunk input; nothing is written next to the source.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Loads `bytes` and checks what came out; `Ok(Some(config))`: accepted.
fn check(bytes: &[u8]) -> Result<Option<Config>, TestCaseError> {
    match parse_bytes(bytes, Path::new("fuzz.yaml")) {
        Ok(config) => accepted_is_applicable(&config).map(|()| Some(config)),
        Err(ConfigError::Invalid {
            line,
            column,
            key,
            message,
            ..
        }) => {
            prop_assert!(line >= 1 && column >= 1, "{line}:{column}");
            prop_assert!(!key.is_empty() && !message.is_empty());
            Ok(None)
        }
        Err(other) => Err(TestCaseError::fail(format!(
            "text gave a non-located error: {other}"
        ))),
    }
}

/// What `run` and `reload` do with an accepted config must not overflow or fail.
fn accepted_is_applicable(config: &Config) -> Result<(), TestCaseError> {
    let now = std::time::Instant::now();
    let far = Duration::from_secs(2000 * 3600);
    let mut keys = std::collections::HashSet::new();
    for s in &config.services {
        let h = &s.health;
        for wait in [h.first_verdict_wait(), h.detection_bound()] {
            prop_assert!(wait < far, "{wait:?}");
            prop_assert!(now.checked_add(wait).is_some());
        }
        prop_assert!(h.timeout < h.interval);
        prop_assert!(s.breaker.open_for <= s.breaker.max_open_for);
        // The VIP is in the form the datapath decodes its own key to, and unique there.
        let vip = s.vip();
        prop_assert_eq!(Vip::from_key(&vip.key()), Some(vip));
        prop_assert!(keys.insert(vip.key()), "{} twice", vip);
        // The daemon builds the probe from the section: of the kind written, and an
        // exec program that `check` found runnable.
        let probe = Probe::for_config(h);
        let kind_matches = match (&probe, h.kind) {
            (Probe::Tcp | Probe::Expect(_), super::HealthKind::Tcp) => true,
            (Probe::Http(_), super::HealthKind::Http) => true,
            (Probe::Postgres(_), super::HealthKind::Postgres) => true,
            (Probe::Mysql(_), super::HealthKind::Mysql) => true,
            (Probe::Redis(_), super::HealthKind::Redis) => true,
            (Probe::Exec(e), super::HealthKind::Exec) => e
                .command
                .first()
                .is_some_and(|p| crate::health::validate_exec(Path::new(p)).is_ok()),
            _ => false,
        };
        prop_assert!(kind_matches, "{:?} for kind {}", probe, h.kind);
        let backends: Vec<TableBackend> = s
            .backends
            .iter()
            .filter_map(|b| match b.address {
                BackendAddress::Ip(addr) => Some(TableBackend { addr, id: 2 }),
                BackendAddress::Host { .. } => None,
            })
            .collect();
        let weights = vec![1; backends.len()];
        let table = VipTable::weighted(vip, 1, backends, &weights);
        let encoded = table.map(|t| t.encode(1).map(drop));
        prop_assert!(matches!(encoded, Ok(Ok(()))), "{}: {:?}", s.name, encoded);
    }
    // `check` prints every accepted config.
    prop_assert!(!Summary(config).to_string().is_empty());
    Ok(())
}

/// Pieces of YAML and of config values, glued at random.
fn token() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "services:",
        "\n",
        "  ",
        "    ",
        "- ",
        "-",
        "{",
        "}",
        "[",
        "]",
        ", ",
        ": ",
        ":",
        " ",
        "'",
        "\"",
        "\\",
        "#",
        " # c",
        "|",
        ">-",
        "&a ",
        "*a",
        "!!str ",
        "? ",
        "---\n",
        "...\n",
        "\u{feff}",
        "\r",
        "\t",
        "%YAML 1.2\n",
        "name: a",
        "name",
        "vip: 1.2.3.4:80",
        "vip",
        "'[::ffff:1.2.3.4]:80'",
        "'[fe80::1%1]:80'",
        "backends:",
        "address: 10.0.0.1:80",
        "address",
        "health:",
        "interval: 1s",
        "timeout",
        "18446744073709551615s",
        "99999999999999999999",
        "-1",
        "1e400",
        "rise: 4294967295",
        "kind: http",
        "kind: postgres",
        "kind: mysql",
        "kind: redis",
        "kind: exec",
        "role: replica",
        "max_lag: 1s",
        "tls: off",
        "password: x",
        "password_file: /pw",
        "command: [/bin/true]",
        "command: [/nonexistent]",
        "env: { A: b }",
        "send: 'PING\\r\\n'",
        "expect: '+PONG'",
        "expect_regex: '^(a|b'",
        "\\x",
        "path: /",
        "\"/a\\r\\nb\"",
        "breaker:",
        "open_for: 0s",
        "passive:",
        "consecutive_failures: 0",
        "terminate:",
        "drain_after: never",
        "drain_after: 0s",
        "on_down: true",
        "defaults:",
        "control:",
        "socket: /x",
        "resolver:",
        "nameservers: [1.1.1.1]",
        "é",
        "\u{0}",
        "\u{7f}",
    ])
}

/// Most generated values are valid, so that whole configs are accepted often
/// enough to check what the daemon does with them; the rest are hostile.
fn duration(valid: impl Strategy<Value = String> + 'static) -> impl Strategy<Value = String> {
    prop_oneof![
        40 => valid,
        1 => (any::<u64>(), prop::sample::select(vec!["ns", "ms", "s", "m", "h", "d", "y"]))
            .prop_map(|(n, unit)| format!("{n}{unit}")),
        1 => any::<String>(),
    ]
}

fn seconds(range: std::ops::Range<u64>) -> impl Strategy<Value = String> {
    range.prop_map(|n| format!("{n}s"))
}

/// A count as YAML writes it: in range, huge, negative or not a number.
fn count() -> impl Strategy<Value = String> {
    prop_oneof![
        40 => (1u64..=1000).prop_map(|n| n.to_string()),
        1 => any::<u64>().prop_map(|n| n.to_string()),
        1 => any::<i64>().prop_map(|n| n.to_string()),
        1 => prop::sample::select(vec!["0", "1.5", "18446744073709551616", "~", "[]"])
            .prop_map(str::to_owned),
    ]
}

/// IPv4 written plain or IPv4-mapped at random, from a small pool half the
/// time, so that one address often appears in both spellings.
fn address() -> impl Strategy<Value = String> {
    let ipv4 = prop_oneof![any::<[u8; 4]>(), (0u8..4).prop_map(|n| [127, 0, 0, n]),];
    let port = prop_oneof![Just(80u16), 1u16..];
    prop_oneof![
        40 => (ipv4, port, any::<bool>()).prop_map(|(ip, port, mapped)| {
            let ip = std::net::Ipv4Addr::from(ip);
            if mapped {
                format!("[{}]:{port}", ip.to_ipv6_mapped())
            } else {
                format!("{ip}:{port}")
            }
        }),
        1 => (any::<[u16; 8]>(), any::<u16>()).prop_map(|(ip, port)| {
            format!("[{}]:{port}", std::net::Ipv6Addr::from(ip))
        }),
        1 => Just("[fe80::1%2]:80".to_owned()),
        1 => Just("127.0.0.1:0".to_owned()),
        1 => "[a-z]{1,10}(\\.[a-z]{1,5}){0,2}:[0-9]{1,6}",
        1 => any::<String>(),
    ]
}

fn text(valid: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop_oneof![
        30 => prop::sample::select(valid).prop_map(str::to_owned),
        1 => any::<String>(),
        1 => "/[ -~\\r\\n\\t\\x7f]{0,20}",
    ]
}

/// A JSON string is a YAML double-quoted scalar: any text survives the trip.
fn quoted(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_default()
}

/// The keys of one kind, written right or hostile; some belong to another kind.
fn kind_keys(kind: &'static str) -> BoxedStrategy<String> {
    let lag = duration(prop_oneof![10 => seconds(1..100), 1 => Just("0s".to_owned())].boxed());
    let role = prop_oneof![
        10 => prop::sample::select(vec!["primary", "replica", "any"]),
        1 => Just("master"),
    ];
    let user = text(&["postgres", "failoverd", "root"]);
    let password_file = text(&["/etc/failoverd/pw", "/run/secrets/db"]);
    let stray = prop_oneof![12 => Just(""), 1 => prop::sample::select(vec![
        ", path: /x",
        ", role: any",
        ", user: u",
        ", username: u",
        ", tls: require",
        ", command: [/bin/true]",
        ", expect: ok",
        ", password: hunter2",
    ])];
    match kind {
        "http" => (text(&["/", "/health", "/a?b=c%20d"]), text(&["db.internal", "db.internal:8008", "[::1]:80"]), stray)
            .prop_map(|(path, host, stray)| {
                format!(", path: {}, host: {}{stray}", quoted(&path), quoted(&host))
            })
            .boxed(),
        "tcp" => (
            prop::option::of(text(&["PING\\r\\n", "\\x00\\x01", "QUIT\\n"])),
            prop_oneof![
                1 => Just(String::new()),
                1 => text(&["+PONG", "220 ", "\\r\\n"]).prop_map(|e| format!(", expect: {}", quoted(&e))),
                1 => text(&["^220 ", "^\\+PONG\\r\\n", "a+"]).prop_map(|e| format!(", expect_regex: {}", quoted(&e))),
            ],
            stray,
        )
            .prop_map(|(send, expect, stray)| {
                let send = send.map_or(String::new(), |s| format!(", send: {}", quoted(&s)));
                format!("{send}{expect}{stray}")
            })
            .boxed(),
        "exec" => (
            prop_oneof![
                8 => Just(Some(vec!["/bin/true".to_owned(), "{address}".to_owned()])),
                1 => prop::option::of(prop::collection::vec(
                    text(&["/bin/true", "/bin/sh", "/nonexistent/x", "bin/true", "/", "{address}", "-c"]),
                    0..4,
                )),
            ],
            prop::collection::vec(
                (
                    prop_oneof![10 => "[A-Za-z_][A-Za-z0-9_]{0,6}", 1 => "[0-9-]{1,3}"],
                    text(&["C", "5432", ""]),
                ),
                0..3,
            ),
            stray,
        )
            .prop_map(|(command, env, stray)| {
                let command = command.map_or(String::new(), |c| {
                    let items: Vec<String> = c.iter().map(|a| quoted(a)).collect();
                    format!(", command: [{}]", items.join(", "))
                });
                let env = if env.is_empty() {
                    String::new()
                } else {
                    let items: Vec<String> = env
                        .iter()
                        .map(|(k, v)| format!("{}: {}", quoted(k), quoted(v)))
                        .collect();
                    format!(", env: {{ {} }}", items.join(", "))
                };
                format!("{command}{env}{stray}")
            })
            .boxed(),
        database => (
            role,
            prop::option::of(user),
            prop::option::of(password_file),
            prop::option::of(lag),
            prop_oneof![
                10 => prop::sample::select(vec!["off", "prefer", "require"]),
                1 => Just("verify-full"),
            ],
            stray,
        )
            .prop_map(move |(role, user, password_file, lag, tls, stray)| {
                let mut keys = format!(", role: {role}");
                let login = if database == "redis" { "username" } else { "user" };
                if let Some(u) = user {
                    keys.push_str(&format!(", {login}: {}", quoted(&u)));
                }
                if let Some(p) = password_file {
                    keys.push_str(&format!(", password_file: {}", quoted(&p)));
                }
                if let Some(l) = lag {
                    keys.push_str(&format!(", max_lag: {}", quoted(&l)));
                }
                if database == "postgres" {
                    keys.push_str(&format!(", tls: {tls}, database: app"));
                }
                format!("{keys}{stray}")
            })
            .boxed(),
    }
}

prop_compose! {
    fn health()(
        kind in prop::sample::select(vec!["tcp", "http", "postgres", "mysql", "redis", "exec"]),
        interval in duration(seconds(1..3600)),
        timeout in duration((1u64..1000).prop_map(|n| format!("{n}ms"))),
        rise in count(),
        fall in count(),
    )(
        keys in kind_keys(kind),
        kind in Just(kind),
        interval in Just(interval),
        timeout in Just(timeout),
        rise in Just(rise),
        fall in Just(fall),
    ) -> String {
        format!(
            "{{ kind: {kind}, interval: {}, timeout: {}, rise: {rise}, fall: {fall}{keys} }}",
            quoted(&interval), quoted(&timeout)
        )
    }
}

prop_compose! {
    fn service()(
        name in prop_oneof![30 => "[a-z]{1,8}", 1 => any::<String>()],
        vip in address(),
        protocol in prop::sample::select(vec!["tcp", "udp"]),
        health in prop::option::of(health()),
        failures in count(),
        open_for in duration(seconds(1..100)),
        max_open_for in duration(seconds(100..86_400)),
        backends in prop_oneof![
            9 => prop::collection::vec((address(), count(), 0u32..258), 1..6),
            1 => prop::collection::vec((address(), count(), 0u32..258), 30..34),
        ],
    ) -> String {
        let mut text = format!(
            "  - name: {}\n    vip: {}\n    protocol: {protocol}\n    breaker: {{ failures: {failures}, open_for: {}, max_open_for: {} }}\n",
            quoted(&name), quoted(&vip), quoted(&open_for), quoted(&max_open_for)
        );
        if let Some(h) = health {
            text.push_str(&format!("    health: {h}\n"));
        }
        text.push_str("    backends:\n");
        for (address, weight, priority) in backends {
            text.push_str(&format!(
                "      - {{ address: {}, weight: {weight}, priority: {priority} }}\n",
                quoted(&address)
            ));
        }
        text
    }
}

prop_compose! {
    fn config()(
        services in prop::collection::vec(service(), 0..4),
        socket in prop_oneof![30 => "/[a-z/]{1,100}", 1 => "/[a-z/]{100,200}", 1 => any::<String>()],
        min_ttl in duration(seconds(0..100)),
        max_ttl in duration(seconds(100..86_400)),
        defaults in prop::option::of(health()),
        nesting in prop_oneof![12 => Just(0usize), 1 => 1usize..200],
        open in prop::sample::select(vec!["[", "{a: ", "- "]),
    ) -> String {
        let mut text = format!(
            "control: {{ socket: {} }}\nresolver: {{ min_ttl: {}, max_ttl: {} }}\n",
            quoted(&socket), quoted(&min_ttl), quoted(&max_ttl)
        );
        if let Some(h) = defaults {
            text.push_str(&format!("defaults: {{ health: {h} }}\n"));
        }
        text.push_str("services:\n");
        for s in services {
            text.push_str(&s);
        }
        if nesting > 0 {
            // Nesting of some depth, under a key the loader must refuse anyway.
            let close = match open { "[" => "]", "{a: " => "}", _ => "" };
            text.push_str(&format!("extra: {}1{}\n", open.repeat(nesting), close.repeat(nesting)));
        }
        text
    }
}

proptest! {
    #![proptest_config(settings())]

    #[test]
    fn arbitrary_bytes_load_or_fail_with_a_location(bytes in prop::collection::vec(any::<u8>(), 0..1024)) {
        check(&bytes)?;
    }

    #[test]
    fn yaml_token_soup_loads_or_fails_with_a_location(tokens in prop::collection::vec(token(), 0..200)) {
        check(tokens.concat().as_bytes())?;
    }
}

#[test]
fn generated_configs_load_or_fail_with_a_location() {
    let with_services = AtomicUsize::new(0);
    let kinds = std::sync::Mutex::new(std::collections::BTreeSet::new());
    proptest::test_runner::TestRunner::new(settings())
        .run(&config(), |text| {
            if let Some(config) = check(text.as_bytes())?.filter(|c| !c.services.is_empty()) {
                with_services.fetch_add(1, Ordering::Relaxed);
                let mut kinds = kinds
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                kinds.extend(config.services.iter().map(|s| s.health.kind.to_string()));
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
    // Every kind is among the accepted configs, so the checks above ran on each.
    let kinds = kinds
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    assert_eq!(
        kinds.into_iter().collect::<Vec<_>>(),
        ["exec", "http", "mysql", "postgres", "redis", "tcp"]
    );
    // Without accepted configs the checks on them would check nothing; about
    // a tenth of the cases are accepted with at least one service.
    let accepted = with_services.into_inner();
    assert!(accepted >= CASES as usize / 30, "only {accepted} accepted");
}
