//! Operator control end to end, as root: the real `failoverd run`, its control socket and CLI,
//! real backend processes and clients in a cgroup.
//!
//! Drains under load, drains that survive restarts and reloads, reloads that
//! refuse a broken config or remove a VIP, a SIGKILLed daemon under load, and
//! `status --output json` checked against the kernel's own map.

mod support;

use std::{
    net::SocketAddr,
    process::Command,
    time::{Duration, Instant},
};

use failoverd::datapath::{PinnedMaps, Vip};
use libtest_mimic::{Arguments, Failed, Trial};
use support::{
    client::{run_client, spawn_client, ClientSpec, Mode},
    daemon::DaemonProcess,
    env::Env,
    kernel::{check, exactly, loopback, table, tcp_vip, until_table},
    server::{BackendProcess, ServerSpec},
};

type TestResult = Result<(), Failed>;
type TrialFn = fn() -> TestResult;

fn main() {
    support::client::maybe_run_client();
    support::server::maybe_run_server();
    let args = Arguments::from_args();
    let trials: Vec<(&'static str, TrialFn)> = vec![
        (
            "drain_under_load_fails_nothing_and_takes_effect_before_returning",
            drain_under_load_fails_nothing_and_takes_effect_before_returning,
        ),
        (
            "drain_survives_restart_and_reload",
            drain_survives_restart_and_reload,
        ),
        (
            "draining_the_last_backend_needs_force",
            draining_the_last_backend_needs_force,
        ),
        (
            "reload_with_a_broken_config_keeps_the_old_one",
            reload_with_a_broken_config_keeps_the_old_one,
        ),
        (
            "reload_that_removes_a_vip_stops_its_translation",
            reload_that_removes_a_vip_stops_its_translation,
        ),
        (
            "sigkill_under_load_loses_no_connect",
            sigkill_under_load_loses_no_connect,
        ),
        (
            "sighup_reloads_like_the_command",
            sighup_reloads_like_the_command,
        ),
        (
            "events_follow_shows_a_failover_as_it_happens",
            events_follow_shows_a_failover_as_it_happens,
        ),
        (
            "status_json_agrees_with_the_kernel_map",
            status_json_agrees_with_the_kernel_map,
        ),
        (
            "a_user_without_root_cannot_use_the_control_socket",
            a_user_without_root_cannot_use_the_control_socket,
        ),
        (
            "a_second_daemon_on_the_same_pin_dir_stops_naming_the_first",
            a_second_daemon_on_the_same_pin_dir_stops_naming_the_first,
        ),
        (
            "systemd_hears_ready_then_watchdog_pets",
            systemd_hears_ready_then_watchdog_pets,
        ),
    ];
    let trials = trials
        .into_iter()
        .map(|(name, f)| Trial::test(name, f))
        .collect();
    libtest_mimic::run(&args, trials).exit();
}

fn service_yaml(name: &str, vip: Vip, backends: &[(&str, SocketAddr, u8)]) -> String {
    let mut s = format!(
        "  - name: {name}\n    vip: {}\n    health: {{ kind: tcp, interval: 100ms, timeout: 50ms, rise: 2, fall: 3 }}\n    backends:\n",
        vip.addr
    );
    for (n, addr, priority) in backends {
        s.push_str(&format!(
            "      - {{ name: {n}, address: '{addr}', priority: {priority} }}\n"
        ));
    }
    s
}

/// A running daemon with backends `a` (id 1) and `b` (id 2) behind one VIP,
/// `b` at `b_priority`, once the kernel's table holds what selection wants.
struct Pair {
    env: Env,
    a: BackendProcess,
    b: BackendProcess,
    vip: Vip,
    d: DaemonProcess,
}

fn pair(tag: &str, vip: &str, b_priority: u8) -> Result<Pair, Failed> {
    let env = Env::new(tag)?;
    let a = BackendProcess::spawn(ServerSpec::tcp(loopback(), 1))?;
    let b = BackendProcess::spawn(ServerSpec::tcp(loopback(), 2))?;
    let vip = tcp_vip(vip);
    let mut d = DaemonProcess::new(
        &env,
        tag,
        &service_yaml(
            "svc",
            vip,
            &[("a", a.addr(), 0), ("b", b.addr(), b_priority)],
        ),
    )?;
    d.start()?;
    let want: Vec<SocketAddr> = if b_priority == 0 {
        vec![a.addr(), b.addr()]
    } else {
        vec![a.addr()]
    };
    until_table(&env, vip, Duration::from_secs(5), exactly(&want))?;
    Ok(Pair { env, a, b, vip, d })
}

fn drain_under_load_fails_nothing_and_takes_effect_before_returning() -> TestResult {
    let Pair {
        env,
        a: _a,
        b,
        vip,
        d,
    } = pair("odrain", "127.79.1.1:80", 0)?;

    // About 1,000 connects per second while the drain happens.
    let mut spec = ClientSpec::new(vip.addr, Mode::TcpReadId, 2000);
    spec.interval_ms = 1;
    let load = spawn_client(&env.cgroup, None, &spec)?;
    std::thread::sleep(Duration::from_millis(500));
    d.ok(&["drain", "svc", "a", "--reason", "maintenance"])?;
    // The command has returned: the kernel's table must already be b alone.
    check(table(&env, vip)? == Some(vec![b.addr()]), || {
        "drain returned before the kernel table changed".into()
    })?;
    let after = run_client(
        &env.cgroup,
        None,
        &ClientSpec::new(vip.addr, Mode::TcpReadId, 200),
    )?;
    check(after.id_count(2) == 200, || {
        format!("a new connect reached the drained backend: {after:?}")
    })?;
    let report = load.wait_report()?;
    check(report.ok == 2000, || {
        format!("no connect may fail during a drain: {report:?}")
    })?;

    let status = d.status()?;
    let a_status = status.services[0]
        .backends
        .iter()
        .find(|x| x.name == "a")
        .expect("a in status");
    let drain = a_status
        .drain
        .as_ref()
        .ok_or("status must show the drain")?;
    check(
        a_status.state == "drained"
            && drain.reason.as_deref() == Some("maintenance")
            && drain.by == "root",
        || format!("status should say who drained it and why: {a_status:?}"),
    )?;
    d.ok(&["undrain", "svc", "a"])?;
    check(table(&env, vip)?.map(|t| t.len()) == Some(2), || {
        "undrain returned before a was back in the table".into()
    })
}

fn drain_survives_restart_and_reload() -> TestResult {
    let Pair {
        env,
        a: _a,
        b,
        vip,
        mut d,
    } = pair("opersist", "127.79.2.1:80", 0)?;
    d.ok(&["drain", "svc", "a", "--reason", "disk swap"])?;

    d.sigkill();
    d.start()?;
    // Once the restarted daemon has its verdicts the table is managed again: still b alone.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !d.status()?.services[0].ready {
        check(Instant::now() < deadline, || {
            "the restarted daemon never became ready".into()
        })?;
        std::thread::sleep(Duration::from_millis(20));
    }
    // `status` answers once the writer has written what the first verdicts decided.
    check(table(&env, vip)? == Some(vec![b.addr()]), || {
        "the drain was lost by the restart".into()
    })?;
    let a_status = d.status()?.services[0]
        .backends
        .iter()
        .find(|x| x.name == "a")
        .cloned()
        .expect("a");
    check(
        a_status
            .drain
            .as_ref()
            .and_then(|x| x.reason.clone())
            .as_deref()
            == Some("disk swap"),
        || format!("the restored drain keeps its reason: {a_status:?}"),
    )?;

    // `reload` returns once the kernel holds its result.
    d.ok(&["reload"])?;
    check(table(&env, vip)? == Some(vec![b.addr()]), || {
        "the drain was lost by the reload".into()
    })
}

fn draining_the_last_backend_needs_force() -> TestResult {
    let env = Env::new("oforce")?;
    let a = BackendProcess::spawn(ServerSpec::tcp(loopback(), 1))?;
    let vip = tcp_vip("127.79.3.1:80");
    let mut d = DaemonProcess::new(
        &env,
        "force",
        &service_yaml("svc", vip, &[("a", a.addr(), 0)]),
    )?;
    d.start()?;
    until_table(&env, vip, Duration::from_secs(5), exactly(&[a.addr()]))?;
    let out = d.cli(&["drain", "svc", "a"])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    check(!out.status.success() && stderr.contains("--force"), || {
        format!("draining the last backend must ask for --force: {stderr}")
    })?;
    check(table(&env, vip)? == Some(vec![a.addr()]), || {
        "a refused drain changed the table".into()
    })?;
    let out = d.cli(&["drain", "svc", "nope"])?;
    check(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("nope"),
        || "an unknown backend must be named".into(),
    )?;
    d.ok(&["drain", "svc", "a", "--force"])?;
    check(table(&env, vip)? == Some(vec![]), || {
        "a forced drain of the last backend leaves an empty (refusing) table".into()
    })
}

fn reload_with_a_broken_config_keeps_the_old_one() -> TestResult {
    let env = Env::new("obadreload")?;
    let a = BackendProcess::spawn(ServerSpec::tcp(loopback(), 1))?;
    let vip = tcp_vip("127.79.4.1:80");
    let services = service_yaml("svc", vip, &[("a", a.addr(), 0)]);
    let mut d = DaemonProcess::new(&env, "badreload", &services)?;
    d.start()?;
    until_table(&env, vip, Duration::from_secs(5), exactly(&[a.addr()]))?;
    let before = d.status()?;

    // Line 11 (after datapath, control and the service's first lines): an unknown key.
    let broken = services.replace("    backends:\n", "    bakends: []\n    backends:\n");
    d.write_config(&env, "", &broken)?;
    let out = d.cli(&["reload"])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let location = format!("{}:", d.config_path().display());
    check(
        !out.status.success() && stderr.contains(&location) && stderr.contains("bakends"),
        || format!("reload must refuse with file:line:column and the key: {stderr}"),
    )?;
    let after = d.status()?;
    check(
        after.services.len() == before.services.len()
            && after.services[0].vip == before.services[0].vip,
        || "a refused reload changed the running config".into(),
    )?;
    check(table(&env, vip)? == Some(vec![a.addr()]), || {
        "a refused reload changed the table".into()
    })?;

    // `reload --config FILE` with the same broken file asks the daemon too (it used to
    // print the client's own parse error and never reach the daemon, whose reload metric,
    // alert and event then never saw the refusal).
    let refusals = || -> Result<usize, Failed> {
        let events = d.ok(&["events", "--output", "json"])?;
        Ok(events.matches("\"to\":\"error\"").count())
    };
    let before = refusals()?;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_failoverd"))
        .args(["reload", "--config"])
        .arg(d.config_path())
        .stdin(std::process::Stdio::null())
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    check(
        !out.status.success() && stderr.contains(&location) && stderr.contains("bakends"),
        || format!("reload --config must show the daemon's located error: {stderr}"),
    )?;
    check(refusals()? == before + 1, || {
        "the daemon must record the refusal of reload --config".into()
    })
}

/// Two daemons on one datapath overwrote each other's tables, and the VIP stayed empty after
/// the second exited. The second must stop before touching anything, naming the first.
fn a_second_daemon_on_the_same_pin_dir_stops_naming_the_first() -> TestResult {
    let env = Env::new("otwo")?;
    let a = BackendProcess::spawn(ServerSpec::tcp(loopback(), 1))?;
    let vip = tcp_vip("127.79.9.1:80");
    let services = service_yaml("svc", vip, &[("a", a.addr(), 0)]);
    let mut first = DaemonProcess::new(&env, "first", &services)?;
    first.start()?;
    until_table(&env, vip, Duration::from_secs(5), exactly(&[a.addr()]))?;
    let generation = PinnedMaps::open(env.pins.path())?.tables()?[&vip].generation;

    // Its own socket, state dir and metrics port; the same pin_dir. Its one backend is dead:
    // had it run, it would have emptied the VIP.
    let dead = tcp_vip("127.79.9.2:81").addr;
    let second = DaemonProcess::new(&env, "second", &service_yaml("svc", vip, &[("x", dead, 0)]))?;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_failoverd"))
        .args(["run", "--config"])
        .arg(second.config_path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if std::time::Instant::now() > deadline {
            child.kill().ok();
            child.wait().ok();
            return Err("the second daemon kept running on a locked pin_dir".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("piped"), &mut stderr)?;
    let pid = first.pid().expect("first runs");
    check(
        !status.success()
            && stderr.contains(&format!("pid {pid}"))
            && stderr.contains(&env.pins.path().display().to_string()),
        || {
            format!("the second daemon must exit naming the first's pid {pid} and the pin dir: {stderr}")
        },
    )?;
    check(
        PinnedMaps::open(env.pins.path())?.tables()?[&vip].generation == generation,
        || "the second daemon wrote the table".into(),
    )?;
    check(first.status()?.services.len() == 1, || {
        "the first daemon stopped answering".into()
    })
}

/// Under systemd (`Type=notify`, `WatchdogSec=`) the daemon says READY=1 once its first
/// verdicts are in, then WATCHDOG=1 at half the period while it makes progress.
fn systemd_hears_ready_then_watchdog_pets() -> TestResult {
    let env = Env::new("onotify")?;
    let a = BackendProcess::spawn(ServerSpec::tcp(loopback(), 1))?;
    let vip = tcp_vip("127.79.10.1:80");
    let d = DaemonProcess::new(
        &env,
        "notify",
        &service_yaml("svc", vip, &[("a", a.addr(), 0)]),
    )?;
    let socket_path = d.config_path().with_file_name("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path)?;
    socket.set_read_timeout(Some(Duration::from_secs(5)))?;
    // Its stderr is a file standing in for the journal's stream: JOURNAL_STREAM names it.
    let log_path = d.config_path().with_file_name("journal.log");
    let log = std::fs::File::create(&log_path)?;
    let stream = {
        use std::os::unix::fs::MetadataExt;
        let meta = log.metadata()?;
        format!("{}:{}", meta.dev(), meta.ino())
    };
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_failoverd"))
        .args(["run", "--config"])
        .arg(d.config_path())
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "400000")
        .env("JOURNAL_STREAM", &stream)
        .env_remove("NO_COLOR")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()?;
    let mut heard = Vec::new();
    let mut buf = [0u8; 512];
    // READY=1 and two pets: a few seconds at most; bounded by count and the read timeout.
    for _ in 0..50 {
        let Ok(n) = socket.recv(&mut buf) else { break };
        heard.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        let pets = heard.iter().filter(|m| m.contains("WATCHDOG=1")).count();
        if heard.iter().any(|m| m.contains("READY=1")) && pets >= 2 {
            break;
        }
    }
    child.kill().ok();
    child.wait().ok();
    let ready_at = heard.iter().position(|m| m.contains("READY=1"));
    let pets = heard.iter().filter(|m| m.contains("WATCHDOG=1")).count();
    check(ready_at.is_some() && pets >= 2, || {
        format!("expected READY=1 and two WATCHDOG=1, heard {heard:?}")
    })?;
    check(table(&env, vip)? == Some(vec![a.addr()]), || {
        "ready was announced with the VIP's table in the kernel".into()
    })?;
    // The journal gets plain lines: no colour escapes, no timestamp of our own (journald
    // stamps each line).
    let logged = std::fs::read_to_string(&log_path)?;
    let first = logged.lines().next().unwrap_or_default().to_string();
    check(
        !logged.is_empty() && !logged.contains('\x1b') && !first.starts_with("20"),
        || format!("journal lines must be plain and unstamped: {first:?}"),
    )
}

fn reload_that_removes_a_vip_stops_its_translation() -> TestResult {
    let env = Env::new("oremove")?;
    let a = BackendProcess::spawn(ServerSpec::tcp(loopback(), 1))?;
    let b = BackendProcess::spawn(ServerSpec::tcp(loopback(), 2))?;
    let keep = tcp_vip("127.79.5.1:80");
    let gone = tcp_vip("127.79.5.2:80");
    let both = service_yaml("keep", keep, &[("a", a.addr(), 0)])
        + &service_yaml("gone", gone, &[("b", b.addr(), 0)]);
    let mut d = DaemonProcess::new(&env, "remove", &both)?;
    d.start()?;
    until_table(&env, keep, Duration::from_secs(5), exactly(&[a.addr()]))?;
    until_table(&env, gone, Duration::from_secs(5), exactly(&[b.addr()]))?;
    let kept_generation = PinnedMaps::open(env.pins.path())?.tables()?[&keep].generation;

    check(d.scrape()?.contains("service=\"gone\""), || {
        "the service to remove has series before the reload".into()
    })?;
    d.write_config(&env, "", &service_yaml("keep", keep, &[("a", a.addr(), 0)]))?;
    let out = d.ok(&["reload"])?;
    // Its series leave with it: alerts cannot keep firing for a service that is gone.
    let metrics = d.scrape()?;
    check(
        !metrics.contains("service=\"gone\"") && metrics.contains("service=\"keep\""),
        || "the removed service's series must leave /metrics, the kept one's stay".into(),
    )?;
    check(out.contains("gone"), || {
        format!("reload should report the removed service: {out}")
    })?;
    check(table(&env, gone)?.is_none(), || {
        "the removed VIP is still in the datapath".into()
    })?;
    let report = run_client(
        &env.cgroup,
        None,
        &ClientSpec::new(gone.addr, Mode::TcpReadId, 5),
    )?;
    check(report.errno_count(libc::ECONNREFUSED) == 5, || {
        format!("the removed VIP must not translate: {report:?}")
    })?;
    let tables = PinnedMaps::open(env.pins.path())?.tables()?;
    check(tables[&keep].generation == kept_generation, || {
        "an unchanged service's table was rewritten".into()
    })
}

fn events_follow_shows_a_failover_as_it_happens() -> TestResult {
    use std::io::{BufRead, BufReader};
    let Pair {
        env,
        mut a,
        b,
        vip,
        d,
    } = pair("oevents", "127.79.10.1:80", 1)?;
    let before = d.ok(&["events"])?;
    check(before.contains("backend svc a -> healthy"), || {
        format!("events should list a's first verdict: {before}")
    })?;

    let mut follow = Command::new(env!("CARGO_BIN_EXE_failoverd"))
        .args(["events", "--follow", "--output", "json", "--socket"])
        .arg(d.socket())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let stdout = follow.stdout.take().ok_or("no stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    a.kill();
    until_table(&env, vip, Duration::from_secs(5), exactly(&[b.addr()]))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    let found = loop {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            break false;
        };
        let Ok(line) = rx.recv_timeout(left) else {
            break false;
        };
        let event: serde_json::Value = serde_json::from_str(&line)?;
        if event["kind"] == "failover" && event["from"] == "0" && event["to"] == "1" {
            break true;
        }
        seen.push(line);
    };
    follow.kill().ok();
    follow.wait().ok();
    check(found, || {
        format!("no failover event 0 -> 1 arrived; saw {seen:?}")
    })
}

fn sighup_reloads_like_the_command() -> TestResult {
    let env = Env::new("ohup")?;
    let a = BackendProcess::spawn(ServerSpec::tcp(loopback(), 1))?;
    let b = BackendProcess::spawn(ServerSpec::tcp(loopback(), 2))?;
    let keep = tcp_vip("127.79.9.1:80");
    let added = tcp_vip("127.79.9.2:80");
    let mut d = DaemonProcess::new(
        &env,
        "hup",
        &service_yaml("keep", keep, &[("a", a.addr(), 0)]),
    )?;
    d.start()?;
    until_table(&env, keep, Duration::from_secs(5), exactly(&[a.addr()]))?;
    let both = service_yaml("keep", keep, &[("a", a.addr(), 0)])
        + &service_yaml("added", added, &[("b", b.addr(), 0)]);
    d.write_config(&env, "", &both)?;
    let pid = d.pid().ok_or("daemon not running")?;
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(pid as i32, libc::SIGHUP) };
    until_table(&env, added, Duration::from_secs(5), exactly(&[b.addr()]))?;
    check(d.status()?.services.len() == 2, || {
        "SIGHUP should have added the service".into()
    })
}

fn sigkill_under_load_loses_no_connect() -> TestResult {
    let env = Env::new("okill")?;
    let a = BackendProcess::spawn(ServerSpec::tcp(loopback(), 1))?;
    let b = BackendProcess::spawn(ServerSpec::tcp(loopback(), 2))?;
    let vip = tcp_vip("127.79.6.1:80");
    let mut d = DaemonProcess::new(
        &env,
        "kill",
        &service_yaml("svc", vip, &[("a", a.addr(), 0), ("b", b.addr(), 1)]),
    )?;
    d.start()?;
    until_table(&env, vip, Duration::from_secs(5), exactly(&[a.addr()]))?;
    let generation = PinnedMaps::open(env.pins.path())?.tables()?[&vip].generation;

    let mut spec = ClientSpec::new(vip.addr, Mode::TcpReadId, 3000);
    spec.interval_ms = 1;
    let load = spawn_client(&env.cgroup, None, &spec)?;
    std::thread::sleep(Duration::from_millis(700));
    d.sigkill();
    std::thread::sleep(Duration::from_millis(500));
    d.start()?;
    let report = load.wait_report()?;
    check(report.ok == 3000 && report.id_count(1) == 3000, || {
        format!("no connect may fail across a SIGKILL and restart: {report:?}")
    })?;
    let tables = PinnedMaps::open(env.pins.path())?.tables()?;
    check(tables[&vip].generation == generation, || {
        "the restart rewrote an unchanged table".into()
    })
}

fn status_json_agrees_with_the_kernel_map() -> TestResult {
    let env = Env::new("ostatus")?;
    let a = BackendProcess::spawn(ServerSpec::tcp(loopback(), 1))?;
    let b = BackendProcess::spawn(ServerSpec::tcp(loopback(), 2))?;
    let mut c = BackendProcess::spawn(ServerSpec::tcp(loopback(), 3))?;
    let vip = tcp_vip("127.79.7.1:80");
    let mut d = DaemonProcess::new(
        &env,
        "status",
        &service_yaml(
            "svc",
            vip,
            &[("a", a.addr(), 0), ("b", b.addr(), 0), ("c", c.addr(), 1)],
        ),
    )?;
    d.start()?;
    until_table(
        &env,
        vip,
        Duration::from_secs(5),
        exactly(&[a.addr(), b.addr()]),
    )?;
    c.kill();
    let report = run_client(
        &env.cgroup,
        None,
        &ClientSpec::new(vip.addr, Mode::TcpReadId, 100),
    )?;
    check(report.ok == 100, || format!("{report:?}"))?;
    std::thread::sleep(Duration::from_millis(600));

    let status = d.status()?;
    let maps = PinnedMaps::open(env.pins.path())?;
    let kernel = &maps.tables()?[&vip].table;
    let service = &status.services[0];
    check(service.active_priority == Some(0), || {
        format!("{service:?}")
    })?;
    let mut in_table: Vec<String> = service
        .backends
        .iter()
        .filter(|b| b.in_table)
        .map(|b| b.address.clone())
        .collect();
    let mut kernel_addrs: Vec<String> =
        kernel.backends.iter().map(|b| b.addr.to_string()).collect();
    in_table.sort();
    kernel_addrs.sort();
    check(in_table == kernel_addrs, || {
        format!("status says {in_table:?}, the kernel holds {kernel_addrs:?}")
    })?;
    for b in &service.backends {
        let id = kernel
            .backends
            .iter()
            .find(|k| k.addr.to_string() == b.address)
            .map(|k| k.id);
        if let Some(id) = id {
            let counted = maps.counters(id)?.connects;
            check(b.kernel_connects == counted, || {
                format!(
                    "{}: status {} vs kernel {counted}",
                    b.name, b.kernel_connects
                )
            })?;
        }
    }
    let total: u64 = service.backends.iter().map(|b| b.kernel_connects).sum();
    check(total >= 100, || {
        format!("the kernel counted {total} connects, the client made 100")
    })?;
    let c_status = service.backends.iter().find(|b| b.name == "c").expect("c");
    check(
        c_status.state == "unhealthy" && c_status.last_probe.as_ref().is_some_and(|p| !p.ok),
        || format!("{c_status:?}"),
    )?;

    // Every reading command speaks JSON with -o json, with the documented fields.
    let json = |args: &[&str]| -> Result<serde_json::Value, Failed> {
        Ok(serde_json::from_str(&d.ok(args)?)?)
    };
    let explain = json(&["explain", &vip.addr.to_string(), "-o", "json"])?;
    check(
        explain["service"] == "svc"
            && explain["reachable"]
                .as_array()
                .is_some_and(|r| !r.is_empty()),
        || format!("explain -o json: {explain}"),
    )?;
    let reload = json(&["reload", "-o", "json"])?;
    check(reload["unchanged"][0] == "svc", || {
        format!("reload -o json: {reload}")
    })?;
    // `vip list` reads the pinned maps itself: no daemon, no --socket.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_failoverd"))
        .args(["vip", "list", "-o", "json", "--pin-dir"])
        .arg(env.pins.path())
        .output()?;
    let tables: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    check(
        tables[0]["vip"] == vip.addr.to_string()
            && tables[0]["backends"]
                .as_array()
                .is_some_and(|b| !b.is_empty()),
        || format!("vip list -o json: {tables}"),
    )?;
    let events = d.ok(&["events", "-o", "json"])?;
    check(
        events
            .lines()
            .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok_and(|e| e["seq"].is_u64())),
        || format!("events -o json: one object per line: {events}"),
    )
}

fn a_user_without_root_cannot_use_the_control_socket() -> TestResult {
    let env = Env::new("ononroot")?;
    let a = BackendProcess::spawn(ServerSpec::tcp(loopback(), 1))?;
    let vip = tcp_vip("127.79.8.1:80");
    let mut d = DaemonProcess::new(
        &env,
        "nonroot",
        &service_yaml("svc", vip, &[("a", a.addr(), 0)]),
    )?;
    d.start()?;
    let out = Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_failoverd"))
        .args(["drain", "svc", "a", "--force", "--socket"])
        .arg(d.socket())
        .output()?;
    check(!out.status.success(), || "nobody drained a backend".into())?;
    check(d.status()?.services[0].backends[0].drain.is_none(), || {
        "the drain went through".into()
    })?;
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(d.socket())?.permissions())
            & 0o777;
    check(mode == 0o600, || {
        format!("the socket is {mode:o}, want 600")
    })?;
    Ok(())
}
