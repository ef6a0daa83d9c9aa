//! Fleet mode end to end, as root: a real etcd (Debian's etcd-server) on loopback ports of its
//! own, and three real `failoverd run` daemons standing in for three hosts, each with its own
//! cgroup, pin directory, control socket, state directory, metrics port and `fleet.host`.
//!
//! One scenario, in steps that build on each other (three daemons and an etcd take a while to
//! start): publish, change, an invalid publish, a local/fleet conflict, fleet drains measured
//! into every kernel, the fleet matrix, etcd killed (daemons keep serving, fleet commands fail
//! clearly, `failoverd_fleet_connected` 0), a daemon restarted while etcd is down, etcd back,
//! and a daemon that comes back after the history it missed was compacted. Every wait is a
//! bounded poll for the wanted state, never a sleep followed by an assertion.

mod support;

use std::{
    net::SocketAddr,
    path::Path,
    process::{Command, Output},
    time::{Duration, Instant},
};

use failoverd::{
    control::{FleetReport, StatusReport},
    datapath::Vip,
};
use libtest_mimic::{Arguments, Failed, Trial};
use support::{
    backends::TcpBackend,
    client::{spawn_client, ClientSpec, Mode},
    daemon::DaemonProcess,
    env::Env,
    etcd::{self, EtcdProcess},
    kernel::{check, loopback, table, tcp_vip},
    server::{BackendProcess, ServerSpec},
    unique_name, TempDir,
};

type TestResult = Result<(), Failed>;

fn main() {
    support::client::maybe_run_client();
    support::server::maybe_run_server();
    let args = Arguments::from_args();
    let trials = vec![
        Trial::test(
            "fleet_publish_drain_matrix_and_etcd_loss",
            fleet_publish_drain_matrix_and_etcd_loss,
        ),
        Trial::test(
            "fleet_over_tls_with_etcd_auth",
            fleet_over_tls_with_etcd_auth,
        ),
        Trial::test(
            "fleet_drain_terminate_aborts_held_sockets_on_every_host",
            fleet_drain_terminate_aborts_held_sockets_on_every_host,
        ),
    ];
    libtest_mimic::run(&args, trials).exit();
}

/// How often the waits look.
const POLL: Duration = Duration::from_millis(2);

/// Polls `f` until it says true, for at most `limit`; the time it took.
fn until(
    what: &str,
    limit: Duration,
    mut f: impl FnMut() -> Result<bool, Failed>,
) -> Result<Duration, Failed> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f()? {
            return Ok(start.elapsed());
        }
        std::thread::sleep(POLL);
    }
    Err(format!("{what}: not within {limit:?}").into())
}

/// One host: its cgroup and pins, and its daemon.
struct Host {
    name: String,
    env: Env,
    d: DaemonProcess,
}

const HEALTH: &str = "{ kind: tcp, interval: 100ms, timeout: 50ms, rise: 2, fall: 3 }";

fn fleet_section(host: &str, etcd: &EtcdProcess, prefix: &str) -> String {
    format!(
        "fleet:\n  host: {host}\n  etcd:\n    endpoints: ['{}']\n    prefix: {prefix}\n",
        etcd.url()
    )
}

fn local_service(n: usize, backend: SocketAddr) -> String {
    format!(
        "  - name: local\n    vip: 10.201.0.{n}:80\n    health: {HEALTH}\n    backends:\n      - {{ name: x, address: '{backend}' }}\n"
    )
}

/// A fleet services file: `orders` with backends a, b, c, plus `extra` services by name and
/// VIP.
fn services_file(backends: &[SocketAddr; 3], extra: &[(&str, &str)]) -> String {
    let mut s = format!(
        "defaults:\n  health: {HEALTH}\nservices:\n  - name: orders\n    vip: 10.202.0.1:5432\n    backends:\n"
    );
    for (name, addr) in ["a", "b", "c"].iter().zip(backends) {
        s.push_str(&format!("      - {{ name: {name}, address: '{addr}' }}\n"));
    }
    for (name, vip) in extra {
        s.push_str(&format!(
            "  - name: {name}\n    vip: {vip}\n    backends:\n      - {{ name: a, address: '{}' }}\n",
            backends[0]
        ));
    }
    s
}

fn failoverd(args: &[&str]) -> Result<Output, Failed> {
    Command::new(env!("CARGO_BIN_EXE_failoverd"))
        .args(args)
        .output()
        .map_err(|e| format!("running failoverd {args:?}: {e}").into())
}

fn publish(file: &Path, daemon_config: &Path) -> Result<Output, Failed> {
    failoverd(&[
        "fleet",
        "publish",
        "--config",
        &file.display().to_string(),
        "--daemon-config",
        &daemon_config.display().to_string(),
    ])
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn status(h: &Host) -> Result<StatusReport, Failed> {
    Ok(h.d.status()?)
}

fn fleet_services(h: &Host) -> Result<Vec<String>, Failed> {
    Ok(status(h)?.fleet.map(|f| f.services).unwrap_or_default())
}

fn connected(h: &Host) -> Result<bool, Failed> {
    Ok(status(h)?.fleet.is_some_and(|f| f.connected))
}

/// The `failoverd_fleet_connected` sample of a scrape.
fn connected_metric(h: &Host) -> Result<Option<String>, Failed> {
    let body = h.d.scrape()?;
    Ok(body
        .lines()
        .find(|l| l.starts_with("failoverd_fleet_connected "))
        .map(|l| {
            l.trim_start_matches("failoverd_fleet_connected ")
                .to_owned()
        }))
}

fn kernel_table(h: &Host, vip: Vip) -> Result<Option<Vec<SocketAddr>>, Failed> {
    Ok(table(&h.env, vip)?)
}

fn holds(h: &Host, vip: Vip, addr: SocketAddr) -> Result<bool, Failed> {
    Ok(kernel_table(h, vip)?.is_some_and(|t| t.contains(&addr)))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn fleet_publish_drain_matrix_and_etcd_loss() -> TestResult {
    if !etcd::available() {
        eprintln!(
            "\n\n*** SKIPPED: {} is missing; install etcd-server (scripts/install-deps.sh) ***\n",
            etcd::ETCD
        );
        return Ok(());
    }
    let mut etcd = EtcdProcess::start("fleet")?;
    let prefix = format!("/{}/", unique_name("fo", "fleet")?);
    let backends = [
        TcpBackend::start(loopback(), 1)?,
        TcpBackend::start(loopback(), 2)?,
        TcpBackend::start(loopback(), 3)?,
    ];
    let addrs = [backends[0].addr(), backends[1].addr(), backends[2].addr()];
    let (a, b) = (addrs[0], addrs[1]);
    let mut hosts = Vec::new();
    for n in 1..=3 {
        let name = format!("h{n}");
        let env = Env::new(&format!("fleet{n}"))?;
        let mut d = DaemonProcess::with_sections(
            &env,
            &format!("fleet{n}"),
            &fleet_section(&name, &etcd, &prefix),
            &local_service(n, addrs[2]),
        )?;
        d.start()?;
        hosts.push(Host { name, env, d });
    }
    for h in &hosts {
        until(
            &format!("{} connects to etcd", h.name),
            Duration::from_secs(15),
            || connected(h),
        )?;
    }
    let files = TempDir(std::env::temp_dir().join(unique_name("fo-fleet-files", "f")?));
    std::fs::create_dir_all(&files.0)?;
    let file = files.0.join("services.yaml");
    let daemon_config = hosts[0].d.config_path().to_path_buf();
    let orders = tcp_vip("10.202.0.1:5432");

    // Publish → every daemon applies it, into its kernel.
    std::fs::write(&file, services_file(&addrs, &[]))?;
    let out = publish(&file, &daemon_config)?;
    check(out.status.success(), || {
        format!("publish failed: {}", stderr(&out))
    })?;
    for h in &hosts {
        until(
            &format!("{} runs orders", h.name),
            Duration::from_secs(10),
            || Ok(fleet_services(h)? == ["orders"]),
        )?;
        until(
            &format!("{}'s kernel holds orders", h.name),
            Duration::from_secs(10),
            || Ok(kernel_table(h, orders)?.is_some_and(|t| t.contains(&a) && t.contains(&b))),
        )?;
    }

    // A change (one more service) → applied everywhere; the local service is untouched.
    std::fs::write(
        &file,
        services_file(&addrs, &[("cache", "10.202.0.2:6379")]),
    )?;
    let out = publish(&file, &daemon_config)?;
    check(out.status.success(), || {
        format!("publish failed: {}", stderr(&out))
    })?;
    for h in &hosts {
        until(
            &format!("{} runs cache", h.name),
            Duration::from_secs(10),
            || Ok(fleet_services(h)? == ["cache", "orders"]),
        )?;
        let events = h.d.ok(&["events", "-o", "json"])?;
        let applied = events
            .lines()
            .rfind(|l| l.contains("\"kind\":\"fleet\""))
            .unwrap_or_default()
            .to_owned();
        check(
            applied.contains("added [\\\"cache\\\"]") && applied.contains("changed []"),
            || format!("{}: the fleet event says what changed: {applied}", h.name),
        )?;
    }

    // An invalid publish is refused with a located error and changes nothing.
    let bad = files.0.join("bad.yaml");
    std::fs::write(&bad, services_file(&addrs, &[("cache", "10.202.0.2:0")]))?;
    let out = publish(&bad, &daemon_config)?;
    check(out.status.code() == Some(4), || {
        format!(
            "an invalid publish exits 4: {:?} {}",
            out.status,
            stderr(&out)
        )
    })?;
    check(
        stderr(&out).contains("bad.yaml:") && stderr(&out).contains("port 0"),
        || format!("the error is located: {}", stderr(&out)),
    )?;
    let diff = failoverd(&[
        "fleet",
        "diff",
        "--config",
        &file.display().to_string(),
        "--daemon-config",
        &daemon_config.display().to_string(),
    ])?;
    check(
        String::from_utf8_lossy(&diff.stdout).starts_with("nothing to change"),
        || {
            format!(
                "etcd still holds the last good set: {}",
                String::from_utf8_lossy(&diff.stdout)
            )
        },
    )?;

    // A fleet service with h1's local VIP: h1 refuses the set and keeps its old one; the
    // others apply it.
    std::fs::write(
        &file,
        services_file(
            &addrs,
            &[("cache", "10.202.0.2:6379"), ("clash", "10.201.0.1:80")],
        ),
    )?;
    let out = publish(&file, &daemon_config)?;
    check(out.status.success(), || {
        format!("publish failed: {}", stderr(&out))
    })?;
    for h in &hosts[1..] {
        until(
            &format!("{} runs clash", h.name),
            Duration::from_secs(10),
            || Ok(fleet_services(h)? == ["cache", "clash", "orders"]),
        )?;
    }
    until(
        "h1 reports the refused set",
        Duration::from_secs(10),
        || {
            let events = hosts[0].d.ok(&["events", "-o", "json"])?;
            Ok(events.lines().any(|l| {
                l.contains("\"kind\":\"fleet\"")
                    && l.contains("\"to\":\"error\"")
                    && l.contains("services[0].vip")
            }))
        },
    )?;
    check(fleet_services(&hosts[0])? == ["cache", "orders"], || {
        "h1 keeps its old fleet set".to_owned()
    })?;
    let metrics = hosts[0].d.scrape()?;
    check(
        metrics.contains("failoverd_fleet_applies_total{result=\"error\"} 1"),
        || "h1 counts the refusal".to_owned(),
    )?;
    std::fs::write(
        &file,
        services_file(&addrs, &[("cache", "10.202.0.2:6379")]),
    )?;
    let out = publish(&file, &daemon_config)?;
    check(out.status.success(), || {
        format!("publish failed: {}", stderr(&out))
    })?;
    for h in &hosts[1..] {
        until(
            &format!("{} drops clash", h.name),
            Duration::from_secs(10),
            || Ok(fleet_services(h)? == ["cache", "orders"]),
        )?;
    }

    // Fleet drains from h2 reach every kernel: measured from the command's return.
    let mut drains = Vec::new();
    let mut undrains = Vec::new();
    for _ in 0..10 {
        hosts[1].d.ok(&[
            "drain",
            "orders",
            "a",
            "--fleet",
            "--reason",
            "replica rebuild",
        ])?;
        let returned = Instant::now();
        until(
            "a fleet drain in every kernel",
            Duration::from_secs(5),
            || {
                for h in &hosts {
                    if holds(h, orders, a)? {
                        return Ok(false);
                    }
                }
                Ok(true)
            },
        )?;
        drains.push(returned.elapsed());
        hosts[1].d.ok(&["undrain", "orders", "a", "--fleet"])?;
        let returned = Instant::now();
        until(
            "a fleet undrain in every kernel",
            Duration::from_secs(5),
            || {
                for h in &hosts {
                    if !holds(h, orders, a)? {
                        return Ok(false);
                    }
                }
                Ok(true)
            },
        )?;
        undrains.push(returned.elapsed());
    }
    drains.sort();
    undrains.sort();
    println!(
        "fleet drain, command return → held by 3 kernels ({} runs): p50 {:?}, p99 {:?}, max {:?}; undrain: p50 {:?}, max {:?}",
        drains.len(),
        percentile(&drains, 0.5),
        percentile(&drains, 0.99),
        drains[drains.len() - 1],
        percentile(&undrains, 0.5),
        undrains[undrains.len() - 1],
    );

    // The drain shows as a fleet drain, with who, where, when and why; a plain undrain of
    // it is refused.
    hosts[1].d.ok(&[
        "drain",
        "orders",
        "a",
        "--fleet",
        "--reason",
        "replica rebuild",
    ])?;
    until("a drained on h3", Duration::from_secs(5), || {
        Ok(!holds(&hosts[2], orders, a)?)
    })?;
    let s = status(&hosts[2])?;
    let drain = s
        .services
        .iter()
        .find(|s| s.name == "orders")
        .and_then(|s| s.backends.iter().find(|b| b.name == "a"))
        .and_then(|b| b.drain.clone());
    check(
        drain.as_ref().is_some_and(|d| {
            d.fleet && d.by.ends_with("@h2") && d.reason.as_deref() == Some("replica rebuild")
        }),
        || format!("h3 shows a fleet drain by someone on h2: {drain:?}"),
    )?;
    let table_text = hosts[2].d.ok(&["status"])?;
    check(table_text.contains("fleet-drained by"), || {
        format!("the table says fleet-drained: {table_text}")
    })?;
    let plain = hosts[2].d.cli(&["undrain", "orders", "a"])?;
    check(
        !plain.status.success() && stderr(&plain).contains("--fleet"),
        || {
            format!(
                "a plain undrain of a fleet drain is refused: {}",
                stderr(&plain)
            )
        },
    )?;

    // The matrix: every host, `a` down (drained) on all three, `c` drained on h3 alone.
    hosts[2]
        .d
        .ok(&["drain", "orders", "c", "--reason", "local test"])?;
    until("the matrix shows both", Duration::from_secs(10), || {
        let json = hosts[0].d.ok(&["status", "--fleet", "-o", "json"])?;
        let m: FleetReport = serde_json::from_str(&json).map_err(|e| e.to_string())?;
        let Some(o) = m.services.iter().find(|s| s.name == "orders") else {
            return Ok(false);
        };
        let row = |n: &str| o.backends.iter().find(|b| b.name == n).cloned();
        let (Some(ra), Some(rc)) = (row("a"), row("c")) else {
            return Ok(false);
        };
        let c_down: Vec<&str> = rc.not_up.iter().map(|h| h.host.as_str()).collect();
        Ok(m.hosts.len() == 3
            && ra.up == 0
            && ra.not_up.len() == 3
            && rc.up == 2
            && rc.of == 3
            && c_down == ["h3"])
    })?;
    let matrix_text = hosts[0].d.ok(&["status", "--fleet"])?;
    println!("status --fleet:\n{matrix_text}");
    check(matrix_text.contains("not up on: h3 (drained)"), || {
        format!("the matrix names h3: {matrix_text}")
    })?;

    // etcd killed: every daemon keeps serving what it applied; fleet commands fail clearly.
    let before: Vec<_> = hosts
        .iter()
        .map(|h| kernel_table(h, orders))
        .collect::<Result<_, _>>()?;
    etcd.kill();
    for h in &hosts {
        until(
            &format!("{} reports etcd lost", h.name),
            Duration::from_secs(15),
            || Ok(connected_metric(h)?.as_deref() == Some("0")),
        )?;
    }
    let down = hosts[1].d.cli(&["drain", "orders", "b", "--fleet"])?;
    check(
        down.status.code() == Some(1)
            && stderr(&down).contains("no working session with etcd")
            && stderr(&down).contains("nothing was changed"),
        || {
            format!(
                "a fleet drain while etcd is down fails clearly: {:?} {}",
                down.status,
                stderr(&down)
            )
        },
    )?;
    let pub_down = publish(&file, &daemon_config)?;
    check(pub_down.status.code() == Some(3), || {
        format!(
            "a publish while etcd is down fails (exit 3): {:?} {}",
            pub_down.status,
            stderr(&pub_down)
        )
    })?;
    for (h, was) in hosts.iter().zip(&before) {
        check(&kernel_table(h, orders)? == was, || {
            format!(
                "{}: the kernel table is unchanged while etcd is down",
                h.name
            )
        })?;
        check(!connected(h)?, || {
            format!("{}: status says not connected", h.name)
        })?;
    }

    // A daemon restarted while etcd is down comes back with the same fleet services and drain.
    hosts[0].d.sigkill();
    hosts[0].d.start()?;
    check(fleet_services(&hosts[0])? == ["cache", "orders"], || {
        "h1 restarted without etcd keeps its fleet services".to_owned()
    })?;
    until(
        "h1's kernel still without a",
        Duration::from_secs(10),
        || Ok(kernel_table(&hosts[0], orders)? == before[0]),
    )?;

    // etcd back: every daemon reconnects and resyncs, with no change to its kernel.
    etcd.resume()?;
    for h in &hosts {
        until(
            &format!("{} reconnects", h.name),
            Duration::from_secs(30),
            || {
                // Every kernel, at every look while the daemons reconnect and resync.
                for (other, was) in hosts.iter().zip(&before) {
                    check(&kernel_table(other, orders)? == was, || {
                        format!("{}: a blip while reconnecting", other.name)
                    })?;
                }
                connected(h)
            },
        )?;
    }
    for (h, was) in hosts.iter().zip(&before) {
        check(&kernel_table(h, orders)? == was, || {
            format!("{}: no blip on reconnect", h.name)
        })?;
    }
    hosts[0].d.ok(&["undrain", "orders", "a", "--fleet"])?;
    for h in &hosts {
        until(
            &format!("{} takes a back", h.name),
            Duration::from_secs(5),
            || holds(h, orders, a),
        )?;
    }

    // h3 away while the fleet changes and the history is compacted: it resyncs in full.
    hosts[2].d.sigkill();
    std::fs::write(
        &file,
        services_file(
            &addrs,
            &[("cache", "10.202.0.2:6379"), ("late", "10.202.0.3:80")],
        ),
    )?;
    let out = publish(&file, &daemon_config)?;
    check(out.status.success(), || {
        format!("publish failed: {}", stderr(&out))
    })?;
    compact(&etcd)?;
    hosts[2].d.start()?;
    until(
        "h3 resyncs after compaction",
        Duration::from_secs(15),
        || Ok(connected(&hosts[2])? && fleet_services(&hosts[2])? == ["cache", "late", "orders"]),
    )?;
    Ok(())
}

/// Compacts etcd's history up to its current revision.
fn compact(etcd: &EtcdProcess) -> Result<(), Failed> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut client = etcd_client::Client::connect([etcd.url()], None)
            .await
            .map_err(|e| e.to_string())?;
        let status = client.status().await.map_err(|e| e.to_string())?;
        let revision = status.header().map_or(0, |h| h.revision());
        client
            .compact(revision, None)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<(), Failed>(())
    })
}

/// Runs `openssl` with `args` in `dir`.
fn openssl(dir: &Path, args: &[&str]) -> TestResult {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .map_err(|e| format!("running openssl: {e}"))?;
    check(out.status.success(), || {
        format!("openssl {args:?}: {}", stderr(&out))
    })
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, in `dir`.
fn certificates(dir: &Path) -> TestResult {
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )?;
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n")?;
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "1",
            "-subj",
            "/CN=fo-test-ca",
        ],
    )?;
    for who in ["server", "client"] {
        let (key, csr, pem, ext) = (
            format!("{who}.key"),
            format!("{who}.csr"),
            format!("{who}.pem"),
            format!("{who}.ext"),
        );
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                &format!("/CN={who}"),
            ],
        )?;
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "1",
                "-extfile",
                &ext,
            ],
        )?;
    }
    Ok(())
}

/// etcd with TLS (server certificate, client certificates required) and auth enabled: a
/// daemon with the CA, a client certificate and the right password connects, publishes
/// through its config and runs the service; one with a wrong password does not connect, says
/// why, and never logs the password.
fn fleet_over_tls_with_etcd_auth() -> TestResult {
    if !etcd::available() {
        eprintln!(
            "\n\n*** SKIPPED: {} is missing; install etcd-server (scripts/install-deps.sh) ***\n",
            etcd::ETCD
        );
        return Ok(());
    }
    let certs = TempDir(std::env::temp_dir().join(unique_name("fo-fleet-tls", "c")?));
    std::fs::create_dir_all(&certs.0)?;
    certificates(&certs.0)?;
    let p = |f: &str| certs.0.join(f).display().to_string();
    let etcd = EtcdProcess::start_with(
        "fleettls",
        &[
            "--cert-file",
            &p("server.pem"),
            "--key-file",
            &p("server.key"),
            "--trusted-ca-file",
            &p("ca.pem"),
            "--client-cert-auth",
        ],
    )?;
    let etcdctl = |args: &[&str]| -> TestResult {
        let out = Command::new("/usr/bin/etcdctl")
            .env("ETCDCTL_API", "3")
            .args([
                format!("--endpoints={}", etcd.url()),
                format!("--cacert={}", p("ca.pem")),
                format!("--cert={}", p("client.pem")),
                format!("--key={}", p("client.key")),
            ])
            .args(args)
            .output()
            .map_err(|e| format!("running etcdctl: {e}"))?;
        check(out.status.success(), || {
            format!("etcdctl {args:?}: {}", stderr(&out))
        })
    };
    etcdctl(&[
        "user",
        "add",
        "root",
        "--new-user-password=fleet-secret-1",
        "--interactive=false",
    ])?;
    etcdctl(&["auth", "enable"])?;
    std::fs::write(certs.0.join("good"), "fleet-secret-1\n")?;
    std::fs::write(certs.0.join("bad"), "wrong-secret-2\n")?;
    let prefix = format!("/{}/", unique_name("fo", "tls")?);
    let section = |host: &str, password: &str| {
        format!(
            "fleet:\n  host: {host}\n  etcd:\n    endpoints: ['{}']\n    prefix: {prefix}\n    tls: {{ ca: {}, cert: {}, key: {} }}\n    username: root\n    password_file: {}\n",
            etcd.url(),
            p("ca.pem"),
            p("client.pem"),
            p("client.key"),
            p(password)
        )
    };
    let backend = TcpBackend::start(loopback(), 1)?;
    let env_good = Env::new("fleettls1")?;
    let mut good =
        DaemonProcess::with_sections(&env_good, "fleettls1", &section("good", "good"), "  []\n")?;
    good.start()?;
    let env_bad = Env::new("fleettls2")?;
    let mut bad =
        DaemonProcess::with_sections(&env_bad, "fleettls2", &section("bad", "bad"), "  []\n")?;
    bad.start()?;
    let good_host = Host {
        name: "good".into(),
        env: env_good,
        d: good,
    };
    let bad_host = Host {
        name: "bad".into(),
        env: env_bad,
        d: bad,
    };
    until(
        "the daemon with the right password connects",
        Duration::from_secs(15),
        || connected(&good_host),
    )?;

    let file = certs.0.join("services.yaml");
    std::fs::write(
        &file,
        format!(
            "services:\n  - name: tls-svc\n    vip: 10.205.0.1:80\n    health: {HEALTH}\n    backends: [ {{ address: '{}' }} ]\n",
            backend.addr()
        ),
    )?;
    let out = publish(&file, good_host.d.config_path())?;
    check(out.status.success(), || {
        format!("publish over TLS with auth: {}", stderr(&out))
    })?;
    until("the service runs", Duration::from_secs(10), || {
        Ok(fleet_services(&good_host)? == ["tls-svc"])
    })?;

    let refused = bad_host.d.cli(&["status", "--fleet"])?;
    println!("a wrong password: {}", stderr(&refused).trim());
    check(
        !refused.status.success() && stderr(&refused).contains("no working session with etcd"),
        || {
            format!(
                "the wrong password leaves it disconnected: {}",
                stderr(&refused)
            )
        },
    )?;
    check(!connected(&bad_host)?, || "bad is not connected".to_owned())?;
    let log = bad_host.d.log_tail(10_000);
    check(
        !log.contains("wrong-secret-2") && !stderr(&refused).contains("wrong-secret-2"),
        || "the password appears in no log or error".to_owned(),
    )?;
    check(
        !good_host.d.log_tail(10_000).contains("fleet-secret-1"),
        || "nor the right one".to_owned(),
    )?;
    Ok(())
}

/// Waits (at most 5 s) until the kernel of `h` counted `n` established connects to the VIP's
/// first backend: its holder is connected.
fn until_established(h: &Host, vip: Vip, n: u64) -> TestResult {
    until(
        &format!("{}: {n} held connections", h.name),
        Duration::from_secs(5),
        || {
            let maps = failoverd::datapath::PinnedMaps::open(h.env.pins.path())?;
            let Some(id) = maps
                .tables()?
                .get(&vip)
                .and_then(|t| t.table.backends.first().map(|b| b.id))
            else {
                return Ok(false);
            };
            Ok(maps.counters(id)?.established >= n)
        },
    )
    .map(drop)
}

/// `drain --fleet --terminate` on one host: every host, as it applies the drain, aborts the
/// connection its VIP sent to the backend (the application sees ECONNABORTED).
fn fleet_drain_terminate_aborts_held_sockets_on_every_host() -> TestResult {
    if !etcd::available() {
        eprintln!(
            "\n\n*** SKIPPED: {} is missing; install etcd-server (scripts/install-deps.sh) ***\n",
            etcd::ETCD
        );
        return Ok(());
    }
    let etcd = EtcdProcess::start("fleetterm")?;
    let prefix = format!("/{}/", unique_name("fo", "term")?);
    let a = BackendProcess::spawn(ServerSpec {
        hold: true,
        ..ServerSpec::tcp(loopback(), 1)
    })?;
    let b = TcpBackend::start(loopback(), 2)?;
    let mut hosts = Vec::new();
    for n in 1..=2 {
        let name = format!("t{n}");
        let env = Env::new(&format!("fleetterm{n}"))?;
        let mut d = DaemonProcess::with_sections(
            &env,
            &format!("fleetterm{n}"),
            &fleet_section(&name, &etcd, &prefix),
            "  []\n",
        )?;
        d.start()?;
        hosts.push(Host { name, env, d });
    }
    for h in &hosts {
        until(
            &format!("{} connects to etcd", h.name),
            Duration::from_secs(15),
            || connected(h),
        )?;
    }
    let vip = tcp_vip("10.206.0.1:80");
    let files = TempDir(std::env::temp_dir().join(unique_name("fo-fleet-term", "f")?));
    std::fs::create_dir_all(&files.0)?;
    let file = files.0.join("held.yaml");
    std::fs::write(
        &file,
        format!(
            "services:\n  - name: held\n    vip: {}\n    health: {HEALTH}\n    backends:\n      - {{ name: a, address: '{}', priority: 0 }}\n      - {{ name: b, address: '{}', priority: 1 }}\n",
            vip.addr,
            a.addr(),
            b.addr()
        ),
    )?;
    let out = publish(&file, hosts[0].d.config_path())?;
    check(out.status.success(), || {
        format!("publish failed: {}", stderr(&out))
    })?;
    for h in &hosts {
        until(
            &format!("{}'s kernel sends to a", h.name),
            Duration::from_secs(10),
            || Ok(kernel_table(h, vip)? == Some(vec![a.addr()])),
        )?;
    }
    let mut holders = Vec::new();
    for h in &hosts {
        let spec = ClientSpec {
            timeout_ms: 8_000,
            timeline: true,
            ..ClientSpec::new(vip.addr, Mode::TcpHold, 1)
        };
        holders.push(spawn_client(&h.env.cgroup, None, &spec)?);
        until_established(h, vip, 1)?;
    }
    let said = hosts[0]
        .d
        .ok(&["drain", "held", "a", "--fleet", "--terminate"])?;
    check(said.contains("aborted on each host"), || {
        format!("the drain says what happens: {said}")
    })?;
    for (h, holder) in hosts.iter().zip(holders) {
        let report = holder.wait_report()?;
        let errno = report.timeline.first().and_then(|attempt| attempt.errno);
        check(errno == Some(libc::ECONNABORTED), || {
            format!(
                "{}: the held connection ended with {errno:?}, want ECONNABORTED",
                h.name
            )
        })?;
        check(kernel_table(h, vip)? == Some(vec![b.addr()]), || {
            format!("{}: new connects go to b", h.name)
        })?;
    }
    Ok(())
}
