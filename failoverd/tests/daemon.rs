//! The daemon end to end, as root: real backend processes, the real datapath, clients in a cgroup.
//!
//! Each trial runs the daemon in-process on a config of its own (its own
//! cgroup, pins and VIP), kills or changes backends, and watches the kernel's
//! table change. Timing bounds are functional (fall × interval + timeout plus
//! a margin), not speed targets.

mod dns;
mod support;

use std::{
    future::Future,
    net::{IpAddr, SocketAddr},
    path::Path,
    time::{Duration, Instant},
};

use failoverd::{
    config,
    daemon::{self, Running},
    datapath::{BpfDatapath, Datapath, PinnedMaps, Vip},
    decision::ServiceStatus,
};
use libtest_mimic::{Arguments, Failed, Trial};
use support::{
    client::{run_client, ClientReport, ClientSpec, Mode},
    env::Env,
    kernel::{check, exactly, loopback, table, tcp_vip, until_table},
    server::{BackendProcess, ServerSpec},
};

type TestResult = Result<(), Failed>;
type TrialFn = fn() -> TestResult;

/// Slack on top of a computed detection bound: scheduling, the writer, the poll.
const MARGIN: Duration = Duration::from_millis(400);

fn main() {
    support::client::maybe_run_client();
    support::server::maybe_run_server();
    let args = Arguments::from_args();
    let trials: Vec<(&'static str, TrialFn)> = vec![
        (
            "killed_primary_fails_over_within_the_bound_and_back",
            killed_primary_fails_over_within_the_bound_and_back,
        ),
        (
            "manual_failback_waits_for_the_operator",
            manual_failback_waits_for_the_operator,
        ),
        (
            "http_503_or_a_wrong_body_takes_a_backend_out",
            http_503_or_a_wrong_body_takes_a_backend_out,
        ),
        (
            "flapping_backend_is_held_out_with_growing_ejections",
            flapping_backend_is_held_out_with_growing_ejections,
        ),
        ("all_down_rejects_at_once", all_down_rejects_at_once),
        (
            "all_down_panics_to_every_backend",
            all_down_panics_to_every_backend,
        ),
        (
            "hostname_backend_follows_its_dns_answer",
            hostname_backend_follows_its_dns_answer,
        ),
        (
            "restart_adopts_the_pinned_table_without_a_write",
            restart_adopts_the_pinned_table_without_a_write,
        ),
        (
            "run_stops_on_sigterm_and_leaves_the_datapath_pinned",
            run_stops_on_sigterm_and_leaves_the_datapath_pinned,
        ),
        (
            "check_and_run_refuse_a_bad_config_with_its_location",
            check_and_run_refuse_a_bad_config_with_its_location,
        ),
    ];
    let trials = trials
        .into_iter()
        .map(|(name, f)| Trial::test(name, f))
        .collect();
    libtest_mimic::run(&args, trials).exit();
}

fn block_on<F: Future<Output = TestResult>>(f: F) -> TestResult {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(f)
}

/// The daemon on a trial's own config.
async fn start(env: &Env, services_yaml: &str) -> Result<Running<BpfDatapath>, Failed> {
    let yaml = format!("{}services:\n{services_yaml}", env.yaml_datapath());
    let config = config::parse(&yaml, Path::new("<test>"))?;
    let datapath = BpfDatapath::open(&env.config())?;
    Ok(daemon::start(&config, datapath, daemon::Drains::new()).await?)
}

/// Polls the kernel table off the runtime's worker (the daemon runs on it too).
async fn wait_table(
    env: &Env,
    vip: Vip,
    limit: Duration,
    want: impl Fn(&Option<Vec<SocketAddr>>) -> bool,
) -> Result<Duration, Failed> {
    Ok(tokio::task::block_in_place(|| {
        until_table(env, vip, limit, want)
    })?)
}

fn exactly_one(addr: SocketAddr) -> impl Fn(&Option<Vec<SocketAddr>>) -> bool {
    exactly(&[addr])
}

async fn client(env: &Env, vip: Vip, count: u32) -> Result<ClientReport, Failed> {
    let cgroup_env = env;
    let spec = ClientSpec::new(vip.addr, Mode::TcpReadId, count);
    let cgroup = &cgroup_env.cgroup;
    Ok(tokio::task::block_in_place(|| {
        run_client(cgroup, None, &spec)
    })?)
}

fn tcp_service(name: &str, vip: Vip, extra: &str, backends: &[(&str, SocketAddr, u8)]) -> String {
    let mut s = format!(
        "  - name: {name}\n    vip: {}\n    health: {{ kind: tcp, interval: 100ms, timeout: 50ms, rise: 2, fall: 3 }}\n{extra}    backends:\n",
        vip.addr
    );
    for (n, addr, priority) in backends {
        s.push_str(&format!(
            "      - {{ name: {n}, address: '{addr}', priority: {priority} }}\n"
        ));
    }
    s
}

fn killed_primary_fails_over_within_the_bound_and_back() -> TestResult {
    block_on(async {
        let env = Env::new("dkill")?;
        let mut a = BackendProcess::spawn(ServerSpec::tcp(loopback(), 1))?;
        let b = BackendProcess::spawn(ServerSpec::tcp(loopback(), 2))?;
        let vip = tcp_vip("127.78.1.1:80");
        // A single-backend group can never be ejected at 50%, so the breaker
        // stays out of this trial; the failures key only makes that explicit.
        let yaml = tcp_service(
            "kill",
            vip,
            "    breaker: { failures: 50 }\n",
            &[("a", a.addr(), 0), ("b", b.addr(), 1)],
        );
        let running = start(&env, &yaml).await?;
        wait_table(&env, vip, Duration::from_secs(5), exactly_one(a.addr())).await?;
        let report = client(&env, vip, 10).await?;
        check(report.id_count(1) == 10, || {
            format!("before the kill everything goes to a: {report:?}")
        })?;

        let bound = Duration::from_millis(3 * 100 + 50);
        a.kill();
        let took = wait_table(
            &env,
            vip,
            bound + MARGIN + Duration::from_secs(2),
            exactly_one(b.addr()),
        )
        .await?;
        check(took <= bound + MARGIN, || {
            format!("failover took {took:?}, bound {bound:?} + {MARGIN:?}")
        })?;
        let report = client(&env, vip, 10).await?;
        check(report.id_count(2) == 10, || {
            format!("after the kill everything goes to b: {report:?}")
        })?;

        a.restart()?;
        let took = wait_table(&env, vip, Duration::from_secs(5), exactly_one(a.addr())).await?;
        check(took <= Duration::from_millis(2 * 100) + MARGIN, || {
            format!("failback took {took:?}")
        })?;
        let report = client(&env, vip, 10).await?;
        check(report.id_count(1) == 10, || {
            format!("after the failback everything goes to a: {report:?}")
        })?;
        drop(running.shutdown().await);
        Ok(())
    })
}

fn manual_failback_waits_for_the_operator() -> TestResult {
    block_on(async {
        let env = Env::new("dmanual")?;
        let mut a = BackendProcess::spawn(ServerSpec::tcp(loopback(), 1))?;
        let b = BackendProcess::spawn(ServerSpec::tcp(loopback(), 2))?;
        let vip = tcp_vip("127.78.2.1:80");
        let yaml = tcp_service(
            "manual",
            vip,
            "    failback: manual\n",
            &[("a", a.addr(), 0), ("b", b.addr(), 1)],
        );
        let running = start(&env, &yaml).await?;
        wait_table(&env, vip, Duration::from_secs(5), exactly_one(a.addr())).await?;
        a.kill();
        wait_table(&env, vip, Duration::from_secs(3), exactly_one(b.addr())).await?;
        a.restart()?;
        // a is healthy again after rise × interval; wait well past that.
        let healthy = async {
            loop {
                let s = running.service_status("manual").await?;
                if s.backends
                    .iter()
                    .any(|x| x.name == "a" && x.state == "healthy")
                {
                    return Ok::<_, Failed>(());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), healthy)
            .await
            .map_err(|_| "a never became healthy")??;
        // Whatever a's recovery decided is in the kernel once the writer answers.
        running.handle().barrier().await?;
        check(table(&env, vip)? == Some(vec![b.addr()]), || {
            "manual failback must stay on b".into()
        })?;

        running.failback("manual").await?;
        wait_table(&env, vip, Duration::from_secs(2), exactly_one(a.addr())).await?;
        check(running.failback("nope").await.is_err(), || {
            "failback of an unknown service must fail".into()
        })?;
        drop(running.shutdown().await);
        Ok(())
    })
}

fn http_503_or_a_wrong_body_takes_a_backend_out() -> TestResult {
    block_on(async {
        let env = Env::new("dhttp")?;
        let unavailable = BackendProcess::spawn(ServerSpec {
            body: Some("running".into()),
            ..ServerSpec::http(loopback(), 1, 503)
        })?;
        let wrong_body = BackendProcess::spawn(ServerSpec {
            body: Some("starting".into()),
            ..ServerSpec::http(loopback(), 2, 200)
        })?;
        let good = BackendProcess::spawn(ServerSpec {
            body: Some("running".into()),
            ..ServerSpec::http(loopback(), 3, 200)
        })?;
        let vip = tcp_vip("127.78.3.1:80");
        let yaml = format!(
            "  - name: http\n    vip: {}\n    health: {{ kind: http, path: /health, expect_body: running, interval: 100ms, timeout: 50ms, rise: 2, fall: 2 }}\n    backends:\n\
             \x20     - {{ name: unavailable, address: '{}' }}\n      - {{ name: wrong-body, address: '{}' }}\n      - {{ name: good, address: '{}' }}\n",
            vip.addr,
            unavailable.addr(),
            wrong_body.addr(),
            good.addr()
        );
        let running = start(&env, &yaml).await?;
        wait_table(&env, vip, Duration::from_secs(5), exactly_one(good.addr())).await?;
        let status = running.service_status("http").await?;
        let reason = |name: &str| -> String {
            let b = status
                .backends
                .iter()
                .find(|b| b.name == name)
                .expect("backend in status");
            format!(
                "{} {:?}",
                b.state,
                b.last_probe.as_ref().map(|p| match &*p.result {
                    Ok(ok) => ok.detail.clone(),
                    Err(e) => format!("{}: {e}", e.reason()),
                })
            )
        };
        check(
            reason("unavailable").starts_with("unhealthy")
                && reason("unavailable").contains("status"),
            || format!("503 must be out for its status: {}", reason("unavailable")),
        )?;
        check(
            reason("wrong-body").starts_with("unhealthy") && reason("wrong-body").contains("body"),
            || {
                format!(
                    "a body without `running` must be out: {}",
                    reason("wrong-body")
                )
            },
        )?;
        drop(running.shutdown().await);
        Ok(())
    })
}

fn flapping_backend_is_held_out_with_growing_ejections() -> TestResult {
    block_on(async {
        let env = Env::new("dflap")?;
        let flapper = BackendProcess::spawn(ServerSpec {
            flap_ms: 300,
            ..ServerSpec::tcp(loopback(), 1)
        })?;
        let stable = BackendProcess::spawn(ServerSpec::tcp(loopback(), 2))?;
        let vip = tcp_vip("127.78.4.1:80");
        let yaml = format!(
            "  - name: flap\n    vip: {}\n    health: {{ kind: tcp, interval: 100ms, timeout: 50ms, rise: 2, fall: 2 }}\n\
             \x20   breaker: {{ failures: 2, open_for: 300ms, max_open_for: 10s, max_ejected_percent: 50 }}\n    backends:\n\
             \x20     - {{ name: flapper, address: '{}' }}\n      - {{ name: stable, address: '{}' }}\n",
            vip.addr,
            flapper.addr(),
            stable.addr()
        );
        let running = start(&env, &yaml).await?;
        // Sample the flapper's breaker for 8 s: when each ejection starts.
        // Each re-ejection doubles the open time, so the gaps between
        // ejections grow (a half-open failure re-ejects without closing).
        let mut ejected_at: Vec<Instant> = Vec::new();
        let mut seen = 0u32;
        let mut out_samples = 0u32;
        let mut late_samples = 0u32;
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(8) {
            let s: ServiceStatus = running.service_status("flap").await?;
            let f = s
                .backends
                .iter()
                .find(|b| b.name == "flapper")
                .expect("flapper in status");
            if f.ejections > seen {
                seen = f.ejections;
                ejected_at.push(Instant::now());
            }
            if started.elapsed() > Duration::from_secs(5) {
                late_samples += 1;
                out_samples += u32::from(!f.in_table);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let gaps: Vec<Duration> = ejected_at.windows(2).map(|w| w[1] - w[0]).collect();
        check(seen >= 3, || {
            format!("the breaker should have opened at least 3 times, opened {seen}")
        })?;
        check(gaps.len() >= 2 && gaps.last() > gaps.first(), || {
            format!("ejections should come further apart as open times double: gaps {gaps:?}")
        })?;
        check(out_samples * 10 >= late_samples * 7, || {
            format!("after 5 s the flapper should be out most of the time: out {out_samples} of {late_samples}")
        })?;
        drop(running.shutdown().await);
        Ok(())
    })
}

fn all_down_rejects_at_once() -> TestResult {
    block_on(async {
        let env = Env::new("ddown")?;
        let mut a = BackendProcess::spawn(ServerSpec::tcp(loopback(), 1))?;
        let vip = tcp_vip("127.78.5.1:80");
        // A listener on the VIP itself: a connect that slipped through
        // untranslated would be accepted here instead of refused.
        let on_vip = support::backends::TcpBackend::start(vip.addr, 99)?;
        let yaml = tcp_service(
            "down",
            vip,
            "    on_all_down: reject\n",
            &[("a", a.addr(), 0)],
        );
        let running = start(&env, &yaml).await?;
        wait_table(&env, vip, Duration::from_secs(5), exactly_one(a.addr())).await?;
        a.kill();
        wait_table(&env, vip, Duration::from_secs(3), |t| {
            t.as_ref().is_some_and(Vec::is_empty)
        })
        .await?;
        let spec = ClientSpec::new(vip.addr, Mode::TcpConnectOnly, 50);
        let report = tokio::task::block_in_place(|| run_client(&env.cgroup, None, &spec))?;
        check(report.errno_count(libc::ECONNREFUSED) == 50, || {
            format!("every connect must be refused: {report:?}")
        })?;
        check(report.max_failed_connect_ns < 100_000_000, || {
            format!("refusals must be immediate: {report:?}")
        })?;
        check(on_vip.accepts() == 0, || {
            "a connect reached the VIP address".into()
        })?;
        let status = running.service_status("down").await?;
        check(status.active_priority.is_none(), || {
            format!("no priority is active: {status:?}")
        })?;
        drop(running.shutdown().await);
        Ok(())
    })
}

fn all_down_panics_to_every_backend() -> TestResult {
    block_on(async {
        let env = Env::new("dpanic")?;
        let a = BackendProcess::spawn(ServerSpec::tcp(loopback(), 1))?;
        let b = BackendProcess::spawn(ServerSpec::tcp(loopback(), 2))?;
        let c = BackendProcess::spawn(ServerSpec::tcp(loopback(), 3))?;
        let closed = std::net::TcpListener::bind(loopback())?
            .local_addr()?
            .port();
        let vip = tcp_vip("127.78.6.1:80");
        // Health probes go to a closed port: every backend is down while its
        // traffic port still serves, which is what panic mode is for.
        let yaml = format!(
            "  - name: panic\n    vip: {}\n    on_all_down: panic\n    health: {{ kind: tcp, port: {closed}, interval: 100ms, timeout: 50ms, rise: 2, fall: 2 }}\n    backends:\n\
             \x20     - {{ name: a, address: '{}', priority: 0 }}\n      - {{ name: b, address: '{}', priority: 0 }}\n      - {{ name: c, address: '{}', priority: 1 }}\n",
            vip.addr,
            a.addr(),
            b.addr(),
            c.addr()
        );
        let running = start(&env, &yaml).await?;
        wait_table(
            &env,
            vip,
            Duration::from_secs(5),
            exactly(&[a.addr(), b.addr()]),
        )
        .await?;
        let report = client(&env, vip, 200).await?;
        check(
            report.ok == 200
                && report.id_count(1) > 0
                && report.id_count(2) > 0
                && report.id_count(3) == 0,
            || format!("panic spreads over the lowest priority only: {report:?}"),
        )?;
        drop(running.shutdown().await);
        Ok(())
    })
}

fn hostname_backend_follows_its_dns_answer() -> TestResult {
    block_on(async {
        let env = Env::new("ddns")?;
        let first = BackendProcess::spawn(ServerSpec::tcp("127.0.0.31:0".parse()?, 31))?;
        let port = first.addr().port();
        let second = BackendProcess::spawn(ServerSpec::tcp(
            SocketAddr::new("127.0.0.32".parse()?, port),
            32,
        ))?;
        let dns = dns::TestDns::start().await?;
        let name = "db.failoverd.test";
        dns.set(name, &["127.0.0.31".parse::<IpAddr>()?], 1);
        let vip = tcp_vip("127.78.7.1:80");
        let yaml = format!(
            "resolver:\n  nameservers: ['{}']\n  min_ttl: 1s\n  max_ttl: 2s\n{}services:\n{}",
            dns.addr(),
            env.yaml_datapath(),
            tcp_service("dns", vip, "", &[("db", "0.0.0.0:0".parse()?, 0)])
                .replace("'0.0.0.0:0'", &format!("'{name}:{port}'"))
        );
        let config = config::parse(&yaml, Path::new("<test>"))?;
        let running = daemon::start(
            &config,
            BpfDatapath::open(&env.config())?,
            daemon::Drains::new(),
        )
        .await?;
        wait_table(&env, vip, Duration::from_secs(5), exactly_one(first.addr())).await?;

        dns.set(name, &["127.0.0.32".parse::<IpAddr>()?], 1);
        // Within the TTL (clamped to 1 s) plus the new address's first verdict.
        wait_table(
            &env,
            vip,
            Duration::from_secs(1)
                + Duration::from_millis(2 * 100)
                + MARGIN
                + Duration::from_secs(2),
            exactly_one(second.addr()),
        )
        .await?;
        let report = client(&env, vip, 10).await?;
        check(report.id_count(32) == 10, || {
            format!("traffic must follow the new address: {report:?}")
        })?;
        drop(running.shutdown().await);
        Ok(())
    })
}

fn restart_adopts_the_pinned_table_without_a_write() -> TestResult {
    block_on(async {
        let env = Env::new("drestart")?;
        let a = BackendProcess::spawn(ServerSpec::tcp(loopback(), 1))?;
        let vip = tcp_vip("127.78.8.1:80");
        let stale = tcp_vip("127.78.8.2:80");
        let yaml = tcp_service("restart", vip, "", &[("a", a.addr(), 0)]);
        let running = start(&env, &yaml).await?;
        wait_table(&env, vip, Duration::from_secs(5), exactly_one(a.addr())).await?;
        let mut datapath = running.shutdown().await;
        // A VIP the next config does not name.
        let mut extra = datapath.tables()?[&vip].table.clone();
        extra.vip = stale;
        datapath.apply(&extra)?;
        let before = datapath.tables()?[&vip].generation;
        drop(datapath);

        let running = start(&env, &yaml).await?;
        // Until the first verdicts the pinned table stays exactly as it was.
        let early = PinnedMaps::open(env.pins.path())?.tables()?;
        check(
            early.get(&vip).map(|t| t.generation) == Some(before),
            || "the pinned table was rewritten at start".into(),
        )?;
        let ready = async {
            loop {
                if running.service_status("restart").await?.ready {
                    return Ok::<_, Failed>(());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), ready)
            .await
            .map_err(|_| "never ready")??;
        // Whatever the first verdicts decided is in the kernel once the writer answers.
        running.handle().barrier().await?;
        let after = PinnedMaps::open(env.pins.path())?.tables()?;
        check(after[&vip].generation == before, || {
            "an unchanged table must not be written again".into()
        })?;
        check(!after.contains_key(&stale), || {
            "a VIP the config does not name must be removed".into()
        })?;
        drop(running.shutdown().await);
        Ok(())
    })
}

/// A config file for the binary, removed on drop.
struct ConfigFile(std::path::PathBuf);

impl ConfigFile {
    fn write(tag: &str, text: &str) -> std::io::Result<ConfigFile> {
        let path = std::env::temp_dir().join(support::unique_name("fo-config", tag)? + ".yaml");
        std::fs::write(&path, text)?;
        Ok(ConfigFile(path))
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        // Already gone is fine.
        std::fs::remove_file(&self.0).ok();
    }
}

/// The `failoverd` binary as a child; SIGKILLed on drop if still running.
struct Daemon(std::process::Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        self.0.kill().ok();
        self.0.wait().ok();
    }
}

fn run_stops_on_sigterm_and_leaves_the_datapath_pinned() -> TestResult {
    block_on(async {
        let env = Env::new("drun")?;
        let a = BackendProcess::spawn(ServerSpec::tcp(loopback(), 1))?;
        let vip = tcp_vip("127.78.9.1:80");
        // The control socket and state go next to the config, not in /run.
        let state = std::env::temp_dir().join(support::unique_name("fo-run-state", "drun")?);
        let _state = support::TempDir(state.clone());
        let file = ConfigFile::write(
            "run",
            &format!(
                "{}control:\n  socket: {}\n  state_dir: {}\nservices:\n{}",
                env.yaml_datapath(),
                state.join("control.sock").display(),
                state.display(),
                tcp_service("run", vip, "", &[("a", a.addr(), 0)])
            ),
        )?;
        let mut daemon = Daemon(
            std::process::Command::new(env!("CARGO_BIN_EXE_failoverd"))
                .args(["run", "--log", "warn", "--config"])
                .arg(&file.0)
                .spawn()?,
        );
        wait_table(&env, vip, Duration::from_secs(10), exactly_one(a.addr())).await?;
        // SAFETY: a signal to our own child.
        unsafe { libc::kill(daemon.0.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = daemon.0.try_wait()? {
                break status;
            }
            check(Instant::now() < deadline, || {
                "failoverd did not stop on SIGTERM".into()
            })?;
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        check(status.success(), || {
            format!("failoverd exited with {status}")
        })?;
        let report = client(&env, vip, 5).await?;
        check(report.id_count(1) == 5, || {
            format!("with the daemon gone the pinned table still translates: {report:?}")
        })?;

        let out = std::process::Command::new(env!("CARGO_BIN_EXE_failoverd"))
            .args(["cleanup", "--config"])
            .arg(&file.0)
            .output()?;
        check(out.status.success(), || {
            format!(
                "cleanup --config failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
        check(!env.pins.path().exists(), || {
            "cleanup --config left the pins".into()
        })?;
        Ok(())
    })
}

fn check_and_run_refuse_a_bad_config_with_its_location() -> TestResult {
    let env = Env::new("dbad")?;
    let text = format!(
        "{}services:\n  - name: bad\n    vip: 127.78.10.1:80\n    health: {{ interval: 100ms, timeout: 100ms }}\n    backends:\n      - address: 127.0.0.1:1\n",
        env.yaml_datapath()
    );
    let file = ConfigFile::write("bad", &text)?;
    for command in ["check", "run"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_failoverd"))
            .args([command, "--config"])
            .arg(&file.0)
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        let location = format!("{}:8:", file.0.display());
        check(!out.status.success(), || {
            format!("{command} accepted a bad config")
        })?;
        check(
            stderr.contains(&location) && stderr.contains("timeout"),
            || format!("{command} should name {location}… and the key: {stderr}"),
        )?;
    }
    check(!env.pins.path().exists(), || {
        "a refused config touched the datapath".into()
    })
}
