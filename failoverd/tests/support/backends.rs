//! Minimal TCP and UDP backends that answer every connection or datagram with `B<id>\n`, so a
//! client can tell which backend a VIP was steered to. Each serves on its own thread, optionally
//! inside a test netns, and stops when dropped.

use std::fs::File;
use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use super::io_context;
use super::netns::{enter_netns_fd, TestNetns};

/// How long a server thread blocks in poll before rechecking its stop flag; this bounds how long
/// dropping a backend takes.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Bound on writing the tiny reply: a client that never reads must not wedge the server.
const WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// The reply every backend sends: `B<id>\n`.
pub fn reply_for(id: u32) -> Vec<u8> {
    format!("B{id}\n").into_bytes()
}

/// A TCP server that accepts connections, writes `B<id>\n` on each and closes it.
///
/// Dropping it stops listening at once, so later connects to its address are refused, which is
/// how tests take a backend down.
#[derive(Debug)]
pub struct TcpBackend {
    addr: SocketAddr,
    id: u32,
    accepts: Arc<AtomicU64>,
    server: ServerThread,
}

impl TcpBackend {
    /// Listens on `bind` (port 0 picks a free port; see `addr`) in the test process's netns.
    pub fn start(bind: SocketAddr, id: u32) -> io::Result<TcpBackend> {
        Self::spawn(None, bind, id)
    }

    /// Like `start`, but the server thread first enters `netns`, so the listener lives there.
    pub fn start_in_netns(netns: &TestNetns, bind: SocketAddr, id: u32) -> io::Result<TcpBackend> {
        Self::spawn(Some(netns.open()?), bind, id)
    }

    fn spawn(netns: Option<File>, bind: SocketAddr, id: u32) -> io::Result<TcpBackend> {
        let accepts = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&accepts);
        let reply = reply_for(id);
        let (addr, server) = spawn_server(
            format!("fo-tcp-b{id}"),
            netns,
            move || {
                let listener = TcpListener::bind(bind)
                    .map_err(|e| io_context(format!("binding tcp backend on {bind}"), e))?;
                // Nonblocking so a readiness report that turns out stale (the peer reset before
                // accept) cannot block the loop past its stop check.
                listener.set_nonblocking(true)?;
                let addr = listener.local_addr()?;
                Ok((listener, addr))
            },
            move |listener: &TcpListener| match listener.accept() {
                Ok((stream, peer)) => {
                    counter.fetch_add(1, Ordering::Relaxed);
                    answer(stream, peer, &reply);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => eprintln!("fo-test: tcp backend {id}: accept failed: {e}"),
            },
            move |listener: &TcpListener| stop_listening(listener, id),
        )?;
        Ok(TcpBackend {
            addr,
            id,
            accepts,
            server,
        })
    }

    /// The address actually bound (with the real port when `bind` asked for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The id this backend answers with.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Connections accepted so far.
    pub fn accepts(&self) -> u64 {
        self.accepts.load(Ordering::Relaxed)
    }
}

/// Makes the listener refuse connections now, before its fd is closed.
///
/// Closing is not enough: another trial's thread may have just forked a child that holds a copy
/// of every fd until it execs, and while that copy lives the kernel keeps completing handshakes
/// on the listener. `shutdown` on a listening socket stops listening for all copies.
fn stop_listening(listener: &TcpListener, id: u32) {
    // SAFETY: a plain syscall on a socket the caller keeps open.
    if unsafe { libc::shutdown(listener.as_raw_fd(), libc::SHUT_RDWR) } != 0 {
        let e = io::Error::last_os_error();
        eprintln!("fo-test: tcp backend {id}: shutting the listener down failed: {e}");
    }
}

/// Writes the reply on an accepted connection and closes it.
fn answer(stream: TcpStream, peer: SocketAddr, reply: &[u8]) {
    // Accepted sockets do not inherit the listener's O_NONBLOCK on Linux, but std does not
    // promise that; make the timeout-bounded blocking write explicit.
    let result = stream
        .set_nonblocking(false)
        .and_then(|()| stream.set_write_timeout(Some(WRITE_TIMEOUT)))
        .and_then(|()| (&stream).write_all(reply));
    match result {
        Ok(()) => {}
        // TcpConnectOnly clients close right after connecting; a reply racing their close is
        // expected, not a fault of the backend.
        Err(e) if matches!(e.raw_os_error(), Some(libc::EPIPE | libc::ECONNRESET)) => {}
        Err(e) => eprintln!("fo-test: tcp backend: replying to {peer} failed: {e}"),
    }
}

/// A UDP server that answers every datagram with `B<id>\n`, sent back to its source.
#[derive(Debug)]
pub struct UdpBackend {
    addr: SocketAddr,
    id: u32,
    datagrams: Arc<AtomicU64>,
    server: ServerThread,
}

impl UdpBackend {
    /// Binds `bind` (port 0 picks a free port; see `addr`) in the test process's netns.
    pub fn start(bind: SocketAddr, id: u32) -> io::Result<UdpBackend> {
        Self::spawn(None, bind, id)
    }

    /// Like `start`, but the server thread first enters `netns`, so the socket lives there.
    pub fn start_in_netns(netns: &TestNetns, bind: SocketAddr, id: u32) -> io::Result<UdpBackend> {
        Self::spawn(Some(netns.open()?), bind, id)
    }

    fn spawn(netns: Option<File>, bind: SocketAddr, id: u32) -> io::Result<UdpBackend> {
        let datagrams = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&datagrams);
        let reply = reply_for(id);
        let mut buf = [0u8; 2048];
        let (addr, server) = spawn_server(
            format!("fo-udp-b{id}"),
            netns,
            move || {
                let socket = UdpSocket::bind(bind)
                    .map_err(|e| io_context(format!("binding udp backend on {bind}"), e))?;
                socket.set_nonblocking(true)?;
                let addr = socket.local_addr()?;
                Ok((socket, addr))
            },
            move |socket: &UdpSocket| match socket.recv_from(&mut buf) {
                Ok((_, from)) => {
                    counter.fetch_add(1, Ordering::Relaxed);
                    // A full socket buffer (EAGAIN) drops the reply, as a real UDP server would;
                    // the client counts it as a timeout.
                    if let Err(e) = socket.send_to(&reply, from) {
                        eprintln!("fo-test: udp backend {id}: reply to {from} failed: {e}");
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => eprintln!("fo-test: udp backend {id}: recv failed: {e}"),
            },
            // A copy of the socket briefly held by a concurrently forked child (see
            // `stop_listening`) may swallow a datagram or two; UDP tests tolerate loss anyway.
            |_: &UdpSocket| {},
        )?;
        Ok(UdpBackend {
            addr,
            id,
            datagrams,
            server,
        })
    }

    /// The address actually bound (with the real port when `bind` asked for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The id this backend answers with.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Datagrams received so far.
    pub fn datagrams(&self) -> u64 {
        self.datagrams.load(Ordering::Relaxed)
    }
}

/// The thread behind a backend; dropping it raises the stop flag and joins the thread, which
/// closes the socket.
#[derive(Debug)]
struct ServerThread {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for ServerThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                eprintln!("fo-test: backend server thread panicked");
            }
        }
    }
}

/// Starts a server thread: it enters `netns` if given, runs `setup` to create the socket, reports
/// the bound address (or the setup error) back, then calls `on_readable` each time the socket
/// polls readable until stopped, and finally `on_stop` before the socket is closed.
///
/// The socket is created inside the thread because a socket belongs to the netns of the thread
/// that creates it.
fn spawn_server<S, Setup, Serve, Stop>(
    name: String,
    netns: Option<File>,
    setup: Setup,
    mut on_readable: Serve,
    on_stop: Stop,
) -> io::Result<(SocketAddr, ServerThread)>
where
    S: AsRawFd,
    Setup: FnOnce() -> io::Result<(S, SocketAddr)> + Send + 'static,
    Serve: FnMut(&S) + Send + 'static,
    Stop: FnOnce(&S) + Send + 'static,
{
    let stop = Arc::new(AtomicBool::new(false));
    let stop_flag = Arc::clone(&stop);
    let (tx, rx) = mpsc::channel::<io::Result<SocketAddr>>();
    let thread = thread::Builder::new().name(name).spawn(move || {
        let ready = netns
            .as_ref()
            .map_or(Ok(()), enter_netns_fd)
            .and_then(|()| setup());
        let socket = match ready {
            Ok((socket, addr)) => {
                if tx.send(Ok(addr)).is_err() {
                    return; // The starter is gone; nobody will ever stop us, so do not serve.
                }
                socket
            }
            Err(e) => {
                // The starter is blocked in recv until this arrives or the thread ends.
                if tx.send(Err(e)).is_err() {
                    eprintln!("fo-test: backend setup failed and its starter is gone");
                }
                return;
            }
        };
        while !stop_flag.load(Ordering::Acquire) {
            match wait_readable(socket.as_raw_fd(), POLL_INTERVAL) {
                Ok(true) => on_readable(&socket),
                Ok(false) => {}
                Err(e) => {
                    eprintln!("fo-test: backend poll failed: {e}");
                    thread::sleep(POLL_INTERVAL);
                }
            }
        }
        on_stop(&socket);
    })?;
    let server = ServerThread {
        stop,
        thread: Some(thread),
    };
    let addr = rx
        .recv()
        .map_err(|_| io::Error::other("backend thread died before binding"))??;
    Ok((addr, server))
}

/// Waits up to `timeout` for `fd` to become readable; EINTR counts as "not yet".
fn wait_readable(fd: RawFd, timeout: Duration) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: pfd is a valid pollfd array of length 1 for the duration of the call.
    let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EINTR) {
            return Ok(false);
        }
        return Err(e);
    }
    Ok(rc > 0)
}
