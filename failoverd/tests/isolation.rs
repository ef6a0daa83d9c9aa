//! Resource isolation end to end, as root: an unprivileged local user who holds more
//! connections to the metrics port than the daemon has file descriptors changes no VIP, the
//! control socket keeps answering, and the daemon logs the port it got for `listen: ...:0`.
//! Also, without root: the CLI ends quietly when its stdout pipe closes, and a panic in any
//! task of the daemon ends the process with SIGABRT after logging where it happened.

mod support;

use std::{
    fs::File,
    io::{self, BufRead, BufReader, Write},
    net::{SocketAddr, SocketAddrV4, TcpStream},
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::process::{CommandExt, ExitStatusExt},
    },
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use failoverd::datapath::Vip;
use libtest_mimic::{Arguments, Failed, Trial};
use support::{
    client::{spawn_client, ClientSpec, Mode},
    daemon::DaemonProcess,
    env::Env,
    io_context,
    kernel::{check, exactly, loopback, table, tcp_vip, until_table},
    server::{BackendProcess, ServerSpec},
    unique_name, TempDir,
};

type TestResult = Result<(), Failed>;
type TrialFn = fn() -> TestResult;

/// `<addr>,<count>,<hold_ms>`: the re-exec'd test binary opens `count` connections to `addr`
/// (an IPv4 address), prints `held <opened> <established>`, holds them for `hold_ms` and exits.
const HOLDER_ENV: &str = "FO_TEST_HOLD";
/// Set: the re-exec'd test binary installs the daemon's panic policy and panics in a task.
const PANIC_ENV: &str = "FO_TEST_PANIC";

fn main() {
    maybe_run_holder();
    maybe_run_panicker();
    support::client::maybe_run_client();
    support::server::maybe_run_server();
    let args = Arguments::from_args();
    let trials: Vec<(&'static str, TrialFn)> = vec![
        (
            "an_unprivileged_user_holding_metrics_connections_changes_no_vip",
            an_unprivileged_user_holding_metrics_connections_changes_no_vip,
        ),
        (
            "the_reserve_keeps_probes_alive_at_a_tiny_fd_limit",
            the_reserve_keeps_probes_alive_at_a_tiny_fd_limit,
        ),
        (
            "the_cli_ends_quietly_when_its_reader_goes_away",
            the_cli_ends_quietly_when_its_reader_goes_away,
        ),
        (
            "a_panic_in_a_task_ends_the_daemon_with_sigabrt",
            a_panic_in_a_task_ends_the_daemon_with_sigabrt,
        ),
    ];
    let trials = trials
        .into_iter()
        .map(|(name, f)| Trial::test(name, f))
        .collect();
    libtest_mimic::run(&args, trials).exit();
}

fn an_unprivileged_user_holding_metrics_connections_changes_no_vip() -> TestResult {
    // 256 descriptors: 600 held connections are more than the daemon could ever accept.
    flood_metrics("isoflood", "127.79.40.1:80", 256, 600, false)
}

fn the_reserve_keeps_probes_alive_at_a_tiny_fd_limit() -> TestResult {
    // 100 descriptors: the connection cap (64) plus the daemon's own descriptors pass the
    // metrics listener's reserve (a quarter of the limit), so the reserve is what stops it.
    flood_metrics("isotiny", "127.79.40.2:80", 100, 400, true)
}

/// A daemon limited to `fd_limit` descriptors serves one VIP; a temporary unprivileged user
/// holds `held` connections to its metrics port while a client in the test cgroup connects
/// through the VIP: every connect must succeed, the table must not change, `status` must answer.
/// With `reserve_stops_it`, the descriptor reserve (not the cap) must be what stopped accepting.
fn flood_metrics(
    tag: &str,
    vip: &str,
    fd_limit: u64,
    held: u32,
    reserve_stops_it: bool,
) -> TestResult {
    let env = Env::new(tag)?;
    let a = BackendProcess::spawn(ServerSpec::tcp(loopback(), 1))?;
    let vip = tcp_vip(vip);
    let d = DaemonProcess::new(&env, tag, &service_yaml(vip, a.addr()))?;
    let daemon = LimitedDaemon::start(&d, tag, fd_limit)?;
    until_table(&env, vip, Duration::from_secs(5), exactly(&[a.addr()]))?;
    d.wait_ready(Duration::from_secs(5))?;
    let metrics = daemon.metrics_addr()?;

    let user = TestUser::new()?;
    let mut holder = Holder::start(&user, metrics, held, 6_000)?;
    let (opened, established) = holder.wait_held(Duration::from_secs(10))?;
    check(u64::from(opened) > fd_limit, || {
        format!("the holder opened only {opened} connections; it must hold more than the daemon's {fd_limit} descriptors")
    })?;
    // The cap is full and the backlog too: the rest wait in SYN_SENT for a slot.
    check(
        established as usize > failoverd::metrics::MAX_CONNECTIONS,
        || format!("only {established} of the holder's connections were established"),
    )?;

    // While they are held: 300 connects through the VIP over about 3 s (fall 3 × 100 ms would
    // take the VIP down within 0.4 s of probes failing).
    let mut spec = ClientSpec::new(vip.addr, Mode::TcpReadId, 300);
    spec.interval_ms = 10;
    let load = spawn_client(&env.cgroup, None, &spec)?;
    let mut statuses = 0;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        check(table(&env, vip)? == Some(vec![a.addr()]), || {
            format!(
                "the VIP's table changed under the flood: {:?}\n{}",
                table(&env, vip),
                daemon.log_tail(20)
            )
        })?;
        if statuses < 5 {
            let s = d.status().map_err(|e| {
                format!(
                    "the control socket stopped answering: {e}\n{}",
                    daemon.log_tail(20)
                )
            })?;
            check(s.services.iter().all(|s| s.ready), || {
                format!("status says not ready under the flood: {s:?}")
            })?;
            statuses += 1;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let report = load.wait_report()?;
    check(report.ok == 300 && report.id_count(1) == 300, || {
        format!(
            "every connect through the VIP must succeed while the metrics port is flooded: {report:?}\n{}",
            daemon.log_tail(20)
        )
    })?;
    check(holder.still_running()?, || {
        "the holder ended before the client did: the flood did not last".into()
    })?;
    drop(holder);

    let log = daemon.log_tail(usize::MAX);
    check(
        log.contains("few file descriptors left") == reserve_stops_it,
        || {
            format!(
                "the reserve should{} have stopped the listener:\n{log}",
                if reserve_stops_it { "" } else { " not" }
            )
        },
    )?;
    // Accept failures are logged once per burst, not once per failure.
    let lines = daemon.log_lines();
    check(lines < 200, || {
        format!(
            "the daemon logged {lines} lines during the flood:\n{}",
            daemon.log_tail(20)
        )
    })?;
    // The metrics port serves again once the flood is gone.
    let body = scrape(metrics)?;
    check(body.contains("failoverd_panics_total 0"), || {
        format!("a scrape after the flood: {body:.300}")
    })
}

fn service_yaml(vip: Vip, backend: SocketAddr) -> String {
    format!(
        "  - name: svc\n    vip: {}\n    health: {{ kind: tcp, interval: 100ms, timeout: 50ms, rise: 2, fall: 3 }}\n    backends:\n      - {{ name: a, address: '{backend}' }}\n",
        vip.addr
    )
}

/// `failoverd run` for `d`'s config with `RLIMIT_NOFILE` set to `limit` (soft and hard) before
/// exec; SIGKILLed on drop. The log is at `info` so the bound metrics address is in it.
struct LimitedDaemon {
    child: Child,
    log: PathBuf,
    _dir: TempDir,
}

impl LimitedDaemon {
    fn start(d: &DaemonProcess, tag: &str, limit: u64) -> io::Result<LimitedDaemon> {
        let dir = TempDir(std::env::temp_dir().join(unique_name("fo-isolog", tag)?));
        std::fs::create_dir_all(&dir.0).map_err(|e| io_context(dir.0.display(), e))?;
        let log = dir.0.join("daemon.log");
        let log_file = File::create(&log).map_err(|e| io_context(log.display(), e))?;
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_failoverd"));
        cmd.args(["run", "--log", "info", "--config"])
            .arg(d.config_path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        let rlimit = libc::rlimit {
            rlim_cur: limit,
            rlim_max: limit,
        };
        // SAFETY: setrlimit is async-signal-safe and `rlimit` is plain data copied into the hook.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setrlimit(libc::RLIMIT_NOFILE, &rlimit) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| io_context("spawning failoverd run", e))?;
        let mut daemon = LimitedDaemon {
            child,
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if d.cli(&["status"])?.status.success() {
                return Ok(daemon);
            }
            if let Some(status) = daemon.child.try_wait()? {
                return Err(io::Error::other(format!(
                    "failoverd run exited with {status}: {}",
                    daemon.log_tail(20)
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("the control socket never answered: {}", daemon.log_tail(20)),
        ))
    }

    /// The metrics listener's address, from the listening sockets of the daemon's pid (`ss`),
    /// checked against the address the daemon logged.
    fn metrics_addr(&self) -> io::Result<SocketAddr> {
        let out = Command::new("ss").args(["-Hltnp"]).output()?;
        let pid = format!("pid={},", self.child.id());
        let text = String::from_utf8_lossy(&out.stdout);
        let listening: Vec<SocketAddr> = text
            .lines()
            .filter(|l| l.contains(&pid))
            .filter_map(|l| l.split_whitespace().nth(3)?.parse().ok())
            .collect();
        let [addr] = listening[..] else {
            return Err(io::Error::other(format!(
                "want one TCP listener of the daemon, ss shows {listening:?}"
            )));
        };
        let log = std::fs::read_to_string(&self.log)?;
        let logged = log
            .lines()
            .find(|l| l.contains("metrics listening"))
            .and_then(|l| l.split("addr=").nth(1)?.split_whitespace().next())
            .and_then(|a| a.parse::<SocketAddr>().ok());
        if logged != Some(addr) {
            return Err(io::Error::other(format!(
                "metrics.listen has port 0: the daemon must log the port it got ({addr}); it logged {logged:?}"
            )));
        }
        Ok(addr)
    }

    fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    fn log_lines(&self) -> usize {
        std::fs::read_to_string(&self.log).map_or(0, |t| t.lines().count())
    }
}

impl Drop for LimitedDaemon {
    fn drop(&mut self) {
        // Already dead is fine: the point is that it is dead.
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

/// `GET /metrics`, the whole response as text; bounded by socket timeouts.
fn scrape(addr: SocketAddr) -> io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
    let mut body = String::new();
    io::Read::read_to_string(&mut stream, &mut body)?;
    Ok(body)
}

/// A system user with no home and no shell, removed on drop (`userdel`), even when the trial
/// fails.
struct TestUser {
    name: String,
    uid: u32,
    gid: u32,
}

impl TestUser {
    fn new() -> io::Result<TestUser> {
        // useradd allows 32 characters; pid and counter keep parallel trials and binaries apart.
        let name = unique_name("fo", "iso")?;
        let out = shadow_tool(
            Command::new("useradd")
                .args([
                    "--system",
                    "--no-create-home",
                    "--shell",
                    "/usr/sbin/nologin",
                ])
                .arg(&name),
        )?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "useradd {name}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let mut user = TestUser {
            name,
            uid: 0,
            gid: 0,
        };
        user.uid = id(&user.name, "-u")?;
        user.gid = id(&user.name, "-g")?;
        if user.uid == 0 {
            return Err(io::Error::other("the test user has uid 0"));
        }
        Ok(user)
    }
}

fn id(name: &str, flag: &str) -> io::Result<u32> {
    let out = Command::new("id").args([flag, name]).output()?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .map_err(|e| io::Error::other(format!("id {flag} {name}: {e}")))
}

/// Runs `useradd`/`userdel`, again while another process holds the password or group file's
/// lock ("cannot lock /etc/passwd; try again later"): at most 50 tries, 100 ms apart.
fn shadow_tool(cmd: &mut Command) -> io::Result<std::process::Output> {
    let mut tries = 0;
    loop {
        let out = cmd.output()?;
        tries += 1;
        let locked = String::from_utf8_lossy(&out.stderr).contains("lock");
        if out.status.success() || !locked || tries == 50 {
            return Ok(out);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        match shadow_tool(Command::new("userdel").arg(&self.name)) {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "fo-test: userdel {}: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) => eprintln!("fo-test: userdel {}: {e}", self.name),
        }
    }
}

/// The re-exec'd test binary, running as a [`TestUser`], holding connections; killed on drop.
struct Holder {
    child: Child,
    stdout: BufReader<std::process::ChildStdout>,
}

impl Holder {
    fn start(user: &TestUser, addr: SocketAddr, count: u32, hold_ms: u64) -> io::Result<Holder> {
        let mut child = Command::new(std::env::current_exe()?)
            .env(HOLDER_ENV, format!("{addr},{count},{hold_ms}"))
            .uid(user.uid)
            .gid(user.gid)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| io_context("spawning the holder", e))?;
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        Ok(Holder { child, stdout })
    }

    /// How many connections it opened and how many of those the kernel completed; waits for
    /// its one line (it prints it about a second after starting).
    fn wait_held(&mut self, limit: Duration) -> io::Result<(u32, u32)> {
        let mut line = String::new();
        // Bounded: the holder prints within its connect timeouts or exits; the deadline is the
        // backstop, checked after the line arrives.
        let started = Instant::now();
        self.stdout.read_line(&mut line)?;
        if started.elapsed() > limit {
            return Err(io::Error::other("the holder took too long to connect"));
        }
        line.trim()
            .strip_prefix("held ")
            .and_then(|n| n.split_once(' '))
            .and_then(|(opened, up)| Some((opened.parse().ok()?, up.parse().ok()?)))
            .ok_or_else(|| io::Error::other(format!("holder said {line:?}")))
    }

    fn still_running(&mut self) -> io::Result<bool> {
        Ok(self.child.try_wait()?.is_none())
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

/// If `FO_TEST_HOLD` is set: opens and holds the connections it names, then exits.
fn maybe_run_holder() {
    let Some(spec) = std::env::var_os(HOLDER_ENV) else {
        return;
    };
    let code = match hold(&spec.to_string_lossy()) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("fo-test holder: {e}");
            2
        }
    };
    std::process::exit(code);
}

fn hold(spec: &str) -> io::Result<()> {
    let bad = || io::Error::new(io::ErrorKind::InvalidInput, format!("bad spec {spec:?}"));
    let mut parts = spec.split(',');
    let addr: SocketAddr = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
    let SocketAddr::V4(addr) = addr else {
        return Err(bad());
    };
    let count: u32 = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
    let hold_ms: u64 = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
    // An unprivileged user may raise its soft limit to the hard one: take it all.
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid rlimit that outlives both calls.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    // Non-blocking connects: the ones the listener's backlog has no room for stay in SYN_SENT
    // and keep retrying, as an attacker's would, instead of stalling this loop.
    let sockets: Vec<OwnedFd> = (0..count)
        .map(|_| connect_nonblocking(addr))
        .collect::<io::Result<_>>()?;
    std::thread::sleep(Duration::from_millis(1_000));
    let established = sockets.iter().filter(|s| is_connected(s)).count();
    println!("held {} {established}", sockets.len());
    io::stdout().flush()?;
    std::thread::sleep(Duration::from_millis(hold_ms));
    drop(sockets);
    Ok(())
}

fn connect_nonblocking(addr: SocketAddrV4) -> io::Result<OwnedFd> {
    // SAFETY: socket() has no memory preconditions.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket() and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: `sin` is a valid sockaddr_in that outlives the call, and the length is its size.
    let rc = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            std::ptr::from_ref(&sin).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
    }
    Ok(fd)
}

/// Whether the handshake has completed (the socket has a peer).
fn is_connected(fd: &OwnedFd) -> bool {
    // SAFETY: sockaddr_storage is plain data; all-zero is valid.
    let mut peer: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `peer` and `len` are valid and writable for the call.
    unsafe {
        libc::getpeername(
            fd.as_raw_fd(),
            std::ptr::from_mut(&mut peer).cast(),
            &mut len,
        ) == 0
    }
}

fn the_cli_ends_quietly_when_its_reader_goes_away() -> TestResult {
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/failoverd.yaml");
    let config = config.to_string_lossy().into_owned();
    for args in [
        vec!["check", "--config", config.as_str()],
        vec!["--help"],
        vec!["vip", "--help"],
    ] {
        // A pipe whose read end is closed before the command writes: every write is EPIPE.
        let (reader, writer) = pipe()?;
        drop(reader);
        let out = Command::new(env!("CARGO_BIN_EXE_failoverd"))
            .args(&args)
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(writer)
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        check(
            !stderr.contains("panicked") && stderr.trim().is_empty(),
            || format!("failoverd {args:?} with a closed stdout: {stderr}"),
        )?;
        // Ended by SIGPIPE like other Unix tools (or exited 0 if it wrote nothing).
        check(
            out.status.signal() == Some(libc::SIGPIPE) || out.status.success(),
            || {
                format!(
                    "failoverd {args:?} with a closed stdout ended with {}",
                    out.status
                )
            },
        )?;
    }
    Ok(())
}

fn pipe() -> io::Result<(File, File)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and nothing else owns them.
    Ok(unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) })
}

fn a_panic_in_a_task_ends_the_daemon_with_sigabrt() -> TestResult {
    let out = Command::new(std::env::current_exe()?)
        .env(PANIC_ENV, "1")
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::null())
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    check(out.status.signal() == Some(libc::SIGABRT), || {
        format!(
            "a panicking task must end the process with SIGABRT, it ended with {}: {stderr}",
            out.status
        )
    })?;
    check(
        stderr.contains("ERROR")
            && stderr.contains("panic: the daemon stops")
            && stderr.contains("tests/isolation.rs:")
            && stderr.contains("boom in a task"),
        || format!("the panic must be logged with its location and message: {stderr}"),
    )?;
    check(!stderr.contains("still alive"), || {
        format!("the process went on after the panic: {stderr}")
    })
}

/// If `FO_TEST_PANIC` is set: a daemon-like process with the panic policy whose task panics.
fn maybe_run_panicker() {
    if std::env::var_os(PANIC_ENV).is_none() {
        return;
    }
    tracing_subscriber::fmt().with_writer(io::stderr).init();
    failoverd::panics::install();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let task = tokio::spawn(async { panic!("boom in a task") });
        // Without the policy tokio catches the panic and this process goes on, half alive.
        if task.await.is_err() {
            tokio::time::sleep(Duration::from_millis(200)).await;
            eprintln!("still alive");
        }
    });
    std::process::exit(0);
}
