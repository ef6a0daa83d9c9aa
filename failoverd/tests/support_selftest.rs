//! Proves the root-only test kit in `tests/support` works on this machine without any BPF:
//! cgroup placement and cleanup, bpffs pin directories, netns isolation, backends and clients.
//!
//! Run as root: `cargo test -p failoverd --test support_selftest`.

mod support;

use std::net::{SocketAddr, SocketAddrV6, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use libtest_mimic::{Arguments, Failed, Trial};

use support::backends::{TcpBackend, UdpBackend};
use support::cgroup::TestCgroup;
use support::client::{
    place_child, run_client, run_client_outside_cgroup, spawn_client, ClientReport, ClientSpec,
    Mode,
};
use support::netns::TestNetns;
use support::pins::{is_bpffs, TestPinDir};

fn main() {
    support::client::maybe_run_client();
    let args = Arguments::from_args();
    let trials = vec![
        Trial::test(
            "client_in_cgroup_reads_tcp_backend_id",
            client_in_cgroup_reads_tcp_backend_id,
        ),
        Trial::test(
            "cgroup_drop_kills_and_removes",
            cgroup_drop_kills_and_removes,
        ),
        Trial::test("udp_round_trip_from_cgroup", udp_round_trip_from_cgroup),
        Trial::test(
            "netns_backend_reachable_only_inside",
            netns_backend_reachable_only_inside,
        ),
        Trial::test(
            "v6_socket_uses_mapped_address",
            v6_socket_uses_mapped_address,
        ),
        Trial::test(
            "concurrent_clients_all_report",
            concurrent_clients_all_report,
        ),
        Trial::test("pin_dir_is_fresh_and_removed", pin_dir_is_fresh_and_removed),
    ];
    libtest_mimic::run(&args, trials).exit();
}

/// Fails with a clear message unless running as root: every trial here needs it.
fn require_root() -> Result<(), Failed> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("the support self-test needs root (cgroups, bpffs, netns)".into());
    }
    Ok(())
}

/// Fails with `what` when `cond` does not hold.
fn ensure(cond: bool, what: impl FnOnce() -> String) -> Result<(), Failed> {
    if cond {
        Ok(())
    } else {
        Err(what().into())
    }
}

fn loopback4() -> SocketAddr {
    "127.0.0.1:0".parse().expect("literal address")
}

fn loopback6() -> SocketAddr {
    "[::1]:0".parse().expect("literal address")
}

/// The client must really have run in `cg`, not merely have been asked to.
fn ensure_ran_in(report: &ClientReport, cg: &TestCgroup) -> Result<(), Failed> {
    let leaf = cg
        .path()
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("?");
    ensure(report.cgroup.ends_with(&format!("/{leaf}")), || {
        format!(
            "client ran in cgroup {:?}, expected .../{leaf}",
            report.cgroup
        )
    })
}

fn client_in_cgroup_reads_tcp_backend_id() -> Result<(), Failed> {
    require_root()?;
    let cg = TestCgroup::new("tcp")?;
    let backend = TcpBackend::start(loopback4(), 11)?;
    let report = run_client(
        &cg,
        None,
        &ClientSpec::new(backend.addr(), Mode::TcpReadId, 3),
    )?;
    ensure_ran_in(&report, &cg)?;
    ensure(report.id_count(11) == 3 && report.ok == 3, || {
        format!("expected 3 answers from B11: {report:?}")
    })?;
    ensure(report.peer_count(backend.addr()) == 3, || {
        format!("peer should be {}: {report:?}", backend.addr())
    })?;
    ensure(report.attempts() == 3 && report.max_connect_ns > 0, || {
        format!("bookkeeping off: {report:?}")
    })?;
    ensure(backend.accepts() == 3, || {
        format!("backend counted {} accepts", backend.accepts())
    })?;
    // A dropped backend must be gone, not lingering: that is how tests take one down.
    let addr = backend.addr();
    drop(backend);
    let refused = TcpStream::connect_timeout(&addr, Duration::from_secs(2));
    ensure(
        refused
            .as_ref()
            .err()
            .and_then(std::io::Error::raw_os_error)
            == Some(libc::ECONNREFUSED),
        || format!("connect to dropped backend gave {refused:?}"),
    )
}

fn cgroup_drop_kills_and_removes() -> Result<(), Failed> {
    require_root()?;
    let cg = TestCgroup::new("drop")?;
    let path = cg.path().to_path_buf();
    let mut cmd = Command::new("sleep");
    cmd.arg("30").stdin(Stdio::null());
    place_child(&mut cmd, Some(&cg), None)?;
    let mut sleeper = cmd.spawn()?;
    let pid = sleeper.id() as i32;
    let placed = cg.pids()?.contains(&pid);
    drop(cg);
    // Reap (bounded) before judging, so a failure below never leaves a zombie or a sleeper.
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(status) = sleeper.try_wait()? {
            break Some(status);
        }
        if Instant::now() >= deadline {
            sleeper.kill()?;
            sleeper.wait()?;
            break None;
        }
        thread::sleep(Duration::from_millis(10));
    };
    ensure(placed, || format!("sleep {pid} was not in the cgroup"))?;
    ensure(!path.exists(), || {
        format!("{} still exists", path.display())
    })?;
    ensure(
        status.and_then(|s| s.signal()) == Some(libc::SIGKILL),
        || format!("sleep {pid} was not SIGKILLed by the drop: {status:?}"),
    )
}

fn udp_round_trip_from_cgroup() -> Result<(), Failed> {
    require_root()?;
    let cg = TestCgroup::new("udp")?;
    let backend = UdpBackend::start(loopback4(), 21)?;
    let report = run_client(
        &cg,
        None,
        &ClientSpec::new(backend.addr(), Mode::UdpSendRecv, 4),
    )?;
    ensure_ran_in(&report, &cg)?;
    ensure(report.id_count(21) == 4 && report.ok == 4, || {
        format!("expected 4 answers from B21: {report:?}")
    })?;
    ensure(report.peer_count(backend.addr()) == 4, || {
        format!("replies should come from {}: {report:?}", backend.addr())
    })?;
    ensure(backend.datagrams() == 4, || {
        format!("backend counted {} datagrams", backend.datagrams())
    })
}

/// Binds, without listening, a TCP socket on `addr` in the test process's netns, so for as
/// long as it is held no one else can listen there and connects are refused.
fn hold_port_closed(addr: SocketAddr) -> Result<OwnedFd, Failed> {
    let SocketAddr::V6(v6) = addr else {
        return Err("hold_port_closed only handles IPv6".into());
    };
    // SAFETY: plain socket(2) call; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_INET6, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(format!("socket: {}", std::io::Error::last_os_error()).into());
    }
    // SAFETY: fd is a fresh socket that nothing else owns.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_in6 is plain data; zero is a valid starting value.
    let mut sa: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
    sa.sin6_port = v6.port().to_be();
    sa.sin6_addr.s6_addr = v6.ip().octets();
    // SAFETY: sa is a valid sockaddr_in6 and the length matches it.
    let rc = unsafe {
        libc::bind(
            owned.as_raw_fd(),
            (&sa as *const libc::sockaddr_in6).cast(),
            std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(format!(
            "bind {addr} on the host: {}",
            std::io::Error::last_os_error()
        )
        .into());
    }
    Ok(owned)
}

fn netns_backend_reachable_only_inside() -> Result<(), Failed> {
    require_root()?;
    let cg = TestCgroup::new("ns")?;
    let ns = TestNetns::new("self")?;
    let backend = TcpBackend::start_in_netns(&ns, loopback6(), 31)?;
    let inside = run_client(
        &cg,
        Some(&ns),
        &ClientSpec::new(backend.addr(), Mode::TcpReadId, 2),
    )?;
    ensure_ran_in(&inside, &cg)?;
    ensure(
        inside.id_count(31) == 2 && inside.peer_count(backend.addr()) == 2,
        || format!("client inside {} should reach B31: {inside:?}", ns.name()),
    )?;
    // Same address from the host netns: nothing may listen there, so it must be refused.
    let _closed = hold_port_closed(backend.addr())?;
    let outside = run_client(
        &cg,
        None,
        &ClientSpec::new(backend.addr(), Mode::TcpConnectOnly, 1),
    )?;
    ensure(
        outside.errno_count(libc::ECONNREFUSED) == 1 && outside.ok == 0,
        || {
            format!(
                "client outside {} should be refused: {outside:?}",
                ns.name()
            )
        },
    )?;
    ensure(outside.max_failed_connect_ns > 0, || {
        format!("failed connect not timed: {outside:?}")
    })?;
    ensure(backend.accepts() == 2, || {
        format!("backend counted {} accepts", backend.accepts())
    })
}

fn v6_socket_uses_mapped_address() -> Result<(), Failed> {
    require_root()?;
    let backend = TcpBackend::start(loopback4(), 41)?;
    let spec = ClientSpec {
        v6_socket: true,
        ..ClientSpec::new(backend.addr(), Mode::TcpReadId, 2)
    };
    let report = run_client_outside_cgroup(&spec)?;
    let SocketAddr::V4(v4) = backend.addr() else {
        return Err("backend should be IPv4".into());
    };
    let mapped = SocketAddr::V6(SocketAddrV6::new(v4.ip().to_ipv6_mapped(), v4.port(), 0, 0));
    ensure(
        report.id_count(41) == 2 && report.peer_count(mapped) == 2,
        || format!("expected 2 answers via {mapped}: {report:?}"),
    )
}

fn concurrent_clients_all_report() -> Result<(), Failed> {
    require_root()?;
    let cg = TestCgroup::new("conc")?;
    let backend = TcpBackend::start(loopback4(), 51)?;
    let spec = ClientSpec {
        interval_ms: 5,
        ..ClientSpec::new(backend.addr(), Mode::TcpReadId, 10)
    };
    let clients = (0..3)
        .map(|_| spawn_client(&cg, None, &spec))
        .collect::<Result<Vec<_>, _>>()?;
    // The clients overlap inside one cgroup; each must still report separately.
    let total: u64 = clients
        .into_iter()
        .map(|c| c.wait_report().map(|r| r.id_count(51)))
        .sum::<Result<u64, _>>()?;
    ensure(total == 30 && backend.accepts() == 30, || {
        format!(
            "expected 30 answers, got {total} ({} accepts)",
            backend.accepts()
        )
    })?;
    // A client that is never waited for must be killed by its guard, emptying the cgroup.
    let idle = ClientSpec {
        interval_ms: 1000,
        ..ClientSpec::new(backend.addr(), Mode::TcpConnectOnly, 30)
    };
    let child = spawn_client(&cg, None, &idle)?;
    drop(child);
    ensure(cg.pids()?.is_empty(), || {
        format!("cgroup not empty after dropping a client: {:?}", cg.pids())
    })
}

fn pin_dir_is_fresh_and_removed() -> Result<(), Failed> {
    require_root()?;
    let pins = TestPinDir::new("pins")?;
    let path = pins.path().to_path_buf();
    ensure(!path.exists(), || {
        format!("{} exists before use", path.display())
    })?;
    let parent = path.parent().ok_or("pin dir has no parent")?;
    ensure(is_bpffs(parent)?, || {
        format!("{} is not bpffs", parent.display())
    })?;
    // Only directories can be made on bpffs without BPF objects; nest one to exercise the
    // recursive removal.
    std::fs::create_dir_all(path.join("links"))?;
    drop(pins);
    ensure(!path.exists(), || {
        format!("{} survived the drop", path.display())
    })?;
    Ok(())
}
