//! What only the kernel shows about translated sockets, as root: the reverse translation
//! without socket storage, kernel-observed connect failures (sock_ops, ring buffer), the
//! in-kernel suspect fast path, and socket termination.
//!
//! Every trial makes its own cgroup and pin directory through guards; clients are child
//! processes inside the test cgroup; traffic stays on 127.0.0.0/8.

mod support;

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    process::{Child, ChildStdout, Command, Stdio},
    time::Duration,
};

use failoverd::datapath::{
    BpfDatapath, ConnectFailure, ConnectFailureKind, Datapath, Protocol, TableBackend, Vip,
    VipTable,
};
use libtest_mimic::{Arguments, Failed, Trial};
use support::{
    backends::TcpBackend,
    client::{place_child, run_client, ClientReport, ClientSpec, Mode},
    env::Env,
    kernel::{check, loopback, tcp_vip},
};

type TestResult = Result<(), Failed>;
type TrialFn = fn() -> TestResult;

/// Env var that turns this binary into a "holder": a client that opens one connection and
/// waits on it (see [`maybe_run_holder`]).
const HOLDER_ENV: &str = "FO_TEST_HOLDER";

/// How long anything here waits for the kernel or a child.
const WAIT: Duration = Duration::from_secs(5);

fn main() {
    maybe_run_holder();
    support::client::maybe_run_client();
    let args = Arguments::from_args();
    let trials: Vec<(&'static str, TrialFn)> = vec![
        (
            "a_direct_connect_to_a_backend_sees_the_backend",
            a_direct_connect_to_a_backend_sees_the_backend,
        ),
        (
            "two_vips_on_one_backend_each_show_their_own_vip",
            two_vips_on_one_backend_each_show_their_own_vip,
        ),
        (
            "refused_connects_are_reported_in_a_run_and_direct_ones_never",
            refused_connects_are_reported_in_a_run_and_direct_ones_never,
        ),
        (
            "an_established_connect_ends_the_run",
            an_established_connect_ends_the_run,
        ),
        (
            "the_next_connect_avoids_a_suspect_backend",
            the_next_connect_avoids_a_suspect_backend,
        ),
        (
            "a_suspect_mark_never_leaves_nothing_to_pick",
            a_suspect_mark_never_leaves_nothing_to_pick,
        ),
        (
            "terminate_aborts_translated_tcp_and_spares_direct_sockets",
            terminate_aborts_translated_tcp_and_spares_direct_sockets,
        ),
        (
            "terminate_aborts_connected_udp",
            terminate_aborts_connected_udp,
        ),
    ];
    let trials = trials
        .into_iter()
        .map(|(name, f)| Trial::test(name, f))
        .collect();
    libtest_mimic::run(&args, trials).exit();
}

fn open(env: &Env) -> Result<BpfDatapath, Failed> {
    Ok(BpfDatapath::open(&env.config())?)
}

fn client(env: &Env, spec: &ClientSpec) -> Result<ClientReport, Failed> {
    Ok(run_client(&env.cgroup, None, spec)?)
}

fn backend(addr: SocketAddr, id: u32) -> TableBackend {
    TableBackend { addr, id }
}

fn one(vip: Vip, vip_id: u32, b: TableBackend) -> Result<VipTable, Failed> {
    Ok(VipTable::weighted(vip, vip_id, vec![b], &[1])?)
}

/// A loopback port nothing listens on (bound, then released): connects to it are refused.
fn dead_port() -> Result<SocketAddr, Failed> {
    let listener = TcpListener::bind(loopback())?;
    Ok(listener.local_addr()?)
}

/// Reads the next batch of connect failures, waiting at most [`WAIT`].
fn next_failures(
    rt: &tokio::runtime::Runtime,
    events: &mut Box<dyn failoverd::datapath::ConnectEvents>,
) -> Result<Vec<ConnectFailure>, Failed> {
    rt.block_on(async { tokio::time::timeout(WAIT, events.next_batch()).await })
        .map_err(|_| Failed::from("no connect failure reported within 5 s"))?
        .map_err(|e| Failed::from(e.to_string()))
}

/// Collects failures until `n` arrived.
fn failures(
    rt: &tokio::runtime::Runtime,
    events: &mut Box<dyn failoverd::datapath::ConnectEvents>,
    n: usize,
) -> Result<Vec<ConnectFailure>, Failed> {
    let mut all = Vec::new();
    for _ in 0..n {
        if all.len() >= n {
            break;
        }
        all.extend(next_failures(rt, events)?);
    }
    Ok(all)
}

fn runtime() -> Result<tokio::runtime::Runtime, Failed> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// Without any per-socket state on the TCP path, a socket that connected to a backend's
/// own address must still see that address, not the VIP that also names it.
fn a_direct_connect_to_a_backend_sees_the_backend() -> TestResult {
    let env = Env::new("direct")?;
    let b = TcpBackend::start(loopback(), 31)?;
    let mut dp = open(&env)?;
    let vip = tcp_vip("127.78.1.1:80");
    dp.apply(&one(vip, 3100, backend(b.addr(), 3101))?)?;

    let via_vip = client(&env, &ClientSpec::new(vip.addr, Mode::TcpReadId, 5))?;
    check(
        via_vip.id_count(31) == 5 && via_vip.peer_count(vip.addr) == 5,
        || format!("through the VIP: {via_vip:?}"),
    )?;
    let direct = client(&env, &ClientSpec::new(b.addr(), Mode::TcpReadId, 5))?;
    check(
        direct.id_count(31) == 5 && direct.peer_count(b.addr()) == 5,
        || format!("direct to the backend must see the backend: {direct:?}"),
    )?;
    let c = dp.counters(3100)?;
    check(c.connects == 5 && c.no_sock_storage == 0, || {
        format!("only the VIP connects count: {c:?}")
    })
}

/// The reverse map has one owner per backend address; the second VIP's sockets keep the
/// VIP in socket storage, so each client sees the VIP it named.
fn two_vips_on_one_backend_each_show_their_own_vip() -> TestResult {
    let env = Env::new("shared")?;
    let b = TcpBackend::start(loopback(), 32)?;
    let mut dp = open(&env)?;
    let first = tcp_vip("127.78.2.1:80");
    let second = tcp_vip("127.78.2.2:81");
    dp.apply(&one(first, 3200, backend(b.addr(), 3201))?)?;
    dp.apply(&one(second, 3210, backend(b.addr(), 3211))?)?;
    for vip in [first, second] {
        let r = client(&env, &ClientSpec::new(vip.addr, Mode::TcpReadId, 5))?;
        check(r.id_count(32) == 5 && r.peer_count(vip.addr) == 5, || {
            format!("{vip} should read back as itself: {r:?}")
        })?;
    }
    // The owner goes; the other VIP's sockets are unaffected, and a new owner can claim.
    dp.remove(&first)?;
    let r = client(&env, &ClientSpec::new(second.addr, Mode::TcpReadId, 3))?;
    check(r.peer_count(second.addr) == 3, || {
        format!("{second} after {first} was removed: {r:?}")
    })
}

fn refused_connects_are_reported_in_a_run_and_direct_ones_never() -> TestResult {
    let env = Env::new("refused")?;
    let dead = dead_port()?;
    let mut dp = open(&env)?;
    let rt = runtime()?;
    let mut events = dp
        .take_connect_events()
        .ok_or("the datapath gave no connect events")?;
    let vip = tcp_vip("127.78.3.1:80");
    dp.apply(&one(vip, 3300, backend(dead, 3301))?.with_passive_threshold(3))?;

    let r = client(&env, &ClientSpec::new(vip.addr, Mode::TcpConnectOnly, 2))?;
    check(r.errno_count(libc::ECONNREFUSED) == 2, || format!("{r:?}"))?;
    let seen = failures(&rt, &mut events, 2)?;
    let runs: Vec<(u32, u32, bool)> = seen
        .iter()
        .map(|f| (f.backend_id, f.consecutive, f.suspect))
        .collect();
    check(runs == [(3301, 1, false), (3301, 2, false)], || {
        format!("two refused connects: {seen:?}")
    })?;
    check(
        seen.iter()
            .all(|f| f.kind == ConnectFailureKind::Refused && f.peer == dead && f.vip_id == 3300),
        || format!("kind, peer and VIP of {seen:?}"),
    )?;

    // Direct connects to the same dead address, from the same cgroup: never counted.
    let direct = client(&env, &ClientSpec::new(dead, Mode::TcpConnectOnly, 3))?;
    check(direct.errno_count(libc::ECONNREFUSED) == 3, || {
        format!("{direct:?}")
    })?;
    // The next failure through the VIP continues the run at 3: the direct ones did not
    // count, and it reaches the threshold.
    let r = client(&env, &ClientSpec::new(vip.addr, Mode::TcpConnectOnly, 1))?;
    check(r.errno_count(libc::ECONNREFUSED) == 1, || format!("{r:?}"))?;
    let third = failures(&rt, &mut events, 1)?;
    check(
        third.len() == 1 && third[0].consecutive == 3 && third[0].suspect,
        || format!("the third failure marks the backend suspect: {third:?}"),
    )?;
    let c = dp.counters(3301)?;
    check(c.connect_failures == 3 && c.established == 0, || {
        format!("counters of the dead backend: {c:?}")
    })
}

fn an_established_connect_ends_the_run() -> TestResult {
    let env = Env::new("established")?;
    let dead = dead_port()?;
    let mut dp = open(&env)?;
    let rt = runtime()?;
    let mut events = dp
        .take_connect_events()
        .ok_or("the datapath gave no connect events")?;
    let vip = tcp_vip("127.78.4.1:80");
    dp.apply(&one(vip, 3400, backend(dead, 3401))?.with_passive_threshold(5))?;
    client(&env, &ClientSpec::new(vip.addr, Mode::TcpConnectOnly, 2))?;
    let first = failures(&rt, &mut events, 2)?;
    check(first.last().map(|f| f.consecutive) == Some(2), || {
        format!("{first:?}")
    })?;

    // The backend comes up on the same port: one established connect.
    let listener = TcpListener::bind(dead)?;
    let r = client(&env, &ClientSpec::new(vip.addr, Mode::TcpConnectOnly, 1))?;
    check(r.errno_count(libc::ECONNREFUSED) == 0, || format!("{r:?}"))?;
    drop(listener);

    client(&env, &ClientSpec::new(vip.addr, Mode::TcpConnectOnly, 1))?;
    let after = failures(&rt, &mut events, 1)?;
    check(after.first().map(|f| f.consecutive) == Some(1), || {
        format!("a failure after an established connect starts a new run: {after:?}")
    })?;
    let c = dp.counters(3401)?;
    check(c.established == 1 && c.connect_failures == 3, || {
        format!("{c:?}")
    })
}

/// Threshold 1, a dead primary, a live backup in the fallback group: the first connect is
/// refused, and every later one goes to the backup without the daemon doing anything.
fn the_next_connect_avoids_a_suspect_backend() -> TestResult {
    let env = Env::new("suspect")?;
    let dead = dead_port()?;
    let backup = TcpBackend::start(loopback(), 35)?;
    let mut dp = open(&env)?;
    let vip = tcp_vip("127.78.5.1:80");
    let table = one(vip, 3500, backend(dead, 3501))?
        .with_fallback(vec![backend(backup.addr(), 3502)])
        .with_passive_threshold(1);
    dp.apply(&table)?;

    let r = client(&env, &ClientSpec::new(vip.addr, Mode::TcpReadId, 10))?;
    check(
        r.errno_count(libc::ECONNREFUSED) == 1 && r.id_count(35) == 9,
        || format!("one refused, then the backup: {r:?}"),
    )?;
    check(r.peer_count(vip.addr) == 9, || {
        format!("a diverted socket still reads back as the VIP: {r:?}")
    })?;
    let (a, b) = (dp.counters(3501)?, dp.counters(3502)?);
    check(a.diverted == 9 && b.connects == 9, || {
        format!("diverted from the primary {a:?}, to the backup {b:?}")
    })?;

    // The daemon lifts the mark: the primary is drawn again (and refused again).
    dp.clear_suspect(3501)?;
    let r = client(&env, &ClientSpec::new(vip.addr, Mode::TcpConnectOnly, 1))?;
    check(r.errno_count(libc::ECONNREFUSED) == 1, || {
        format!("after the mark is lifted: {r:?}")
    })
}

fn a_suspect_mark_never_leaves_nothing_to_pick() -> TestResult {
    let env = Env::new("nothingleft")?;
    let dead = dead_port()?;
    let mut dp = open(&env)?;
    let vip = tcp_vip("127.78.6.1:80");
    dp.apply(&one(vip, 3600, backend(dead, 3601))?.with_passive_threshold(1))?;
    let r = client(&env, &ClientSpec::new(vip.addr, Mode::TcpConnectOnly, 4))?;
    // Nothing to divert to: every connect still goes to the only backend (and is refused
    // by it, not by the hook: the hook's own refusal is counted as `rejected`).
    check(r.errno_count(libc::ECONNREFUSED) == 4, || format!("{r:?}"))?;
    let (v, a) = (dp.counters(3600)?, dp.counters(3601)?);
    check(
        v.rejected == 0 && a.connects == 4 && a.diverted == 0,
        || format!("VIP {v:?}, backend {a:?}"),
    )
}

/// A child that holds one connection: `FO_TEST_HOLDER=tcp|udp;TARGET`. It prints
/// `connected <peer>` once connected (UDP: after one echo), then waits: on the socket
/// erroring it prints `error <errno>`, on data `data`, and exits. Bounded by a 20 s read
/// timeout.
fn maybe_run_holder() {
    let Some(spec) = std::env::var_os(HOLDER_ENV) else {
        return;
    };
    let spec = spec.to_string_lossy().into_owned();
    let report = |result: std::io::Result<usize>| match result {
        Ok(0) => println!("eof"),
        Ok(_) => println!("data"),
        Err(e) => println!("error {}", e.raw_os_error().unwrap_or(0)),
    };
    let run = || -> std::io::Result<()> {
        let (kind, target) = spec
            .split_once(';')
            .ok_or_else(|| std::io::Error::other("spec"))?;
        let target: SocketAddr = target.parse().map_err(std::io::Error::other)?;
        let mut buf = [0u8; 64];
        if kind == "udp" {
            let socket = UdpSocket::bind("127.0.0.1:0")?;
            socket.connect(target)?;
            socket.set_read_timeout(Some(Duration::from_secs(20)))?;
            socket.send(b"ping")?;
            socket.recv(&mut buf)?;
            println!("connected {}", socket.peer_addr()?);
            std::io::stdout().flush()?;
            report(socket.recv(&mut buf));
        } else {
            let mut stream = TcpStream::connect_timeout(&target, Duration::from_secs(2))?;
            stream.set_read_timeout(Some(Duration::from_secs(20)))?;
            println!("connected {}", stream.peer_addr()?);
            std::io::stdout().flush()?;
            report(stream.read(&mut buf));
        }
        Ok(())
    };
    let code = match run() {
        Ok(()) => 0,
        Err(e) => {
            println!("failed {e}");
            2
        }
    };
    std::process::exit(code);
}

/// A running holder; killed and reaped on drop.
struct Holder {
    child: Child,
    lines: std::io::Lines<BufReader<ChildStdout>>,
}

impl Holder {
    fn start(env: &Env, kind: &str, target: SocketAddr) -> Result<Holder, Failed> {
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.env(HOLDER_ENV, format!("{kind};{target}"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        place_child(&mut cmd, Some(&env.cgroup), None)?;
        let mut child = cmd.spawn()?;
        let stdout = child.stdout.take().ok_or("holder has no stdout")?;
        let mut holder = Holder {
            child,
            lines: BufReader::new(stdout).lines(),
        };
        let first = holder.next_line()?;
        check(first.starts_with("connected "), || {
            format!("holder to {target}: {first}")
        })?;
        Ok(holder)
    }

    /// The holder's next line (it writes one per event; its own read timeout bounds this).
    fn next_line(&mut self) -> Result<String, Failed> {
        Ok(self.lines.next().ok_or("holder exited without a line")??)
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A listener that accepts and keeps every connection open, so the test can write to one.
struct HoldingServer {
    listener: TcpListener,
}

impl HoldingServer {
    fn start() -> Result<HoldingServer, Failed> {
        Ok(HoldingServer {
            listener: TcpListener::bind(loopback())?,
        })
    }

    fn addr(&self) -> Result<SocketAddr, Failed> {
        Ok(self.listener.local_addr()?)
    }

    fn accept(&self) -> Result<TcpStream, Failed> {
        Ok(self.listener.accept()?.0)
    }
}

fn terminate_aborts_translated_tcp_and_spares_direct_sockets() -> TestResult {
    let env = Env::new("terminate")?;
    let server = HoldingServer::start()?;
    let mut dp = open(&env)?;
    let vip = tcp_vip("127.78.7.1:80");
    dp.apply(&one(vip, 3700, backend(server.addr()?, 3701))?)?;

    let mut translated = Holder::start(&env, "tcp", vip.addr)?;
    let _translated_peer = server.accept()?;
    let mut direct = Holder::start(&env, "tcp", server.addr()?)?;
    let mut direct_peer = server.accept()?;

    // Another backend's id: nothing of ours is touched.
    let none = dp.terminate(&[9999])?;
    check(none.total() == 0, || {
        format!("terminate of another id: {none:?}")
    })?;

    let done = dp.terminate(&[3701])?;
    check(done.tcp == 1 && done.udp == 0, || {
        format!("one translated TCP socket: {done:?}")
    })?;
    let line = translated.next_line()?;
    check(line == format!("error {}", libc::ECONNABORTED), || {
        format!("the translated client saw: {line}")
    })?;
    // The direct client still has its connection: data written to it arrives.
    direct_peer.write_all(b"x")?;
    let line = direct.next_line()?;
    check(line == "data", || format!("the direct client saw: {line}"))
}

fn terminate_aborts_connected_udp() -> TestResult {
    let env = Env::new("terminateudp")?;
    let echo = UdpSocket::bind(loopback())?;
    echo.set_read_timeout(Some(WAIT))?;
    let mut dp = open(&env)?;
    let vip = Vip {
        addr: "127.78.8.1:53".parse()?,
        protocol: Protocol::Udp,
    };
    dp.apply(&one(vip, 3800, backend(echo.local_addr()?, 3801))?)?;

    let mut buf = [0u8; 16];
    let answer = |echo: &UdpSocket, buf: &mut [u8]| -> Result<(), Failed> {
        let (n, from) = echo.recv_from(buf)?;
        echo.send_to(&buf[..n], from)?;
        Ok(())
    };
    let holder = std::thread::scope(|s| -> Result<Holder, Failed> {
        let server = s.spawn(|| answer(&echo, &mut buf));
        let holder = Holder::start(&env, "udp", vip.addr);
        server.join().map_err(|_| "echo thread panicked")??;
        holder
    });
    let mut holder = holder?;
    let done = dp.terminate(&[3801])?;
    check(done.udp == 1 && done.tcp == 0, || {
        format!("one connected UDP socket: {done:?}")
    })?;
    let line = holder.next_line()?;
    check(line == format!("error {}", libc::ECONNABORTED), || {
        format!("the UDP client saw: {line}")
    })
}
