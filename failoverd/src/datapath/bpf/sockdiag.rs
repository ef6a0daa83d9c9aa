//! Aborting one socket from user space: sock_diag's `SOCK_DESTROY` over netlink.
//!
//! The termination iterators find the translated sockets; the kernel's `bpf_sock_destroy()`
//! kfunc could abort them in place, but aya 0.14 cannot relocate kfunc calls, so each
//! socket they report is destroyed here instead (`CONFIG_INET_DIAG_DESTROY`, what `ss -K`
//! uses). The application sees ECONNABORTED on its next read or write either way.

use std::{
    io,
    mem::size_of,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use failoverd_shared::DoomedSocket;

/// `SOCK_DESTROY` netlink message type.
const SOCK_DESTROY: u16 = 21;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLMSG_ERROR: u16 = 2;

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct NlMsgHdr {
    len: u32,
    kind: u16,
    flags: u16,
    seq: u32,
    pid: u32,
}

/// `struct inet_diag_sockid`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct SockId {
    sport_be: u16,
    dport_be: u16,
    src: [u32; 4],
    dst: [u32; 4],
    interface: u32,
    cookie: [u32; 2],
}

/// `struct inet_diag_req_v2`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct DiagReq {
    family: u8,
    protocol: u8,
    ext: u8,
    pad: u8,
    states: u32,
    id: SockId,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Request {
    header: NlMsgHdr,
    req: DiagReq,
}

/// A `NETLINK_SOCK_DIAG` socket that destroys sockets one request at a time.
pub struct SockDiag {
    fd: OwnedFd,
    seq: u32,
}

/// Whether a destroy found its socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destroyed {
    /// Aborted.
    Yes,
    /// Already gone (closed between the iterator's pass and this request).
    Gone,
}

impl SockDiag {
    /// Opens the netlink socket (in this process's network namespace).
    pub fn open() -> io::Result<Self> {
        // SAFETY: plain socket(2); the result is checked before it is owned.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                libc::NETLINK_SOCK_DIAG,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(SockDiag { fd, seq: 0 })
    }

    /// Destroys the socket `doomed` describes (its cookie guards against a reused 4-tuple).
    pub fn destroy(&mut self, doomed: &DoomedSocket) -> io::Result<Destroyed> {
        self.seq = self.seq.wrapping_add(1);
        let v4 = i32::from(doomed.family) == libc::AF_INET;
        // An AF_INET request carries its address in the first word.
        let addr = |words: [u32; 4]| if v4 { [words[3], 0, 0, 0] } else { words };
        let request = Request {
            header: NlMsgHdr {
                len: size_of::<Request>() as u32,
                kind: SOCK_DESTROY,
                flags: NLM_F_REQUEST | NLM_F_ACK,
                seq: self.seq,
                pid: 0,
            },
            req: DiagReq {
                family: doomed.family,
                protocol: doomed.proto,
                states: u32::MAX,
                id: SockId {
                    sport_be: doomed.src_port.to_be(),
                    dport_be: doomed.dst_port_be,
                    src: addr(doomed.src_be),
                    dst: addr(doomed.dst_be),
                    interface: 0,
                    cookie: [doomed.cookie as u32, (doomed.cookie >> 32) as u32],
                },
                ..Default::default()
            },
        };
        // SAFETY: `request` is a live repr(C) value of exactly the length sent; the
        // kernel's address is the zeroed sockaddr_nl below.
        let sent = unsafe {
            let mut kernel: libc::sockaddr_nl = std::mem::zeroed();
            kernel.nl_family = libc::AF_NETLINK as u16;
            libc::sendto(
                self.fd.as_raw_fd(),
                &request as *const Request as *const libc::c_void,
                size_of::<Request>(),
                0,
                &kernel as *const libc::sockaddr_nl as *const libc::sockaddr,
                size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        self.read_ack()
    }

    /// Reads the kernel's NLMSG_ERROR answer to the last request.
    fn read_ack(&mut self) -> io::Result<Destroyed> {
        let mut buf = [0u8; 512];
        // Bounded: the kernel answers each request with one message; stale answers of
        // an earlier request (impossible with one request at a time) are skipped.
        for _ in 0..8 {
            // SAFETY: reading into a local buffer of the length given.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                    0,
                )
            };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            let n = n as usize;
            if n < size_of::<NlMsgHdr>() + 4 {
                return Err(io::Error::other(format!(
                    "short netlink answer ({n} bytes)"
                )));
            }
            // SAFETY: at least a header's worth of bytes were read; unaligned read.
            let header: NlMsgHdr = unsafe { std::ptr::read_unaligned(buf.as_ptr().cast()) };
            if header.seq != self.seq {
                continue;
            }
            if header.kind != NLMSG_ERROR {
                return Err(io::Error::other(format!(
                    "unexpected netlink answer type {}",
                    header.kind
                )));
            }
            let at = size_of::<NlMsgHdr>();
            let errno = -i32::from_ne_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]);
            return match errno {
                0 => Ok(Destroyed::Yes),
                libc::ENOENT => Ok(Destroyed::Gone),
                e => Err(io::Error::from_raw_os_error(e)),
            };
        }
        Err(io::Error::other("no netlink answer to SOCK_DESTROY"))
    }
}
