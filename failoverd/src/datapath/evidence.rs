//! What the kernel tells the daemon about translated sockets, and what the daemon asks it
//! to do with them: connect failures it saw (passive health) and sockets to terminate.

use std::{fmt, future::Future, net::SocketAddr, pin::Pin};

use super::DatapathError;

/// How a translated connect failed, as the `sock_ops` program saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectFailureKind {
    /// `SYN_SENT → CLOSE`: refused (RST) or reset before the handshake completed.
    Refused,
    /// A SYN retransmission timeout while in `SYN_SENT`: no answer at all (a black hole).
    SynTimeout,
}

impl ConnectFailureKind {
    /// The label value used in metrics, events and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectFailureKind::Refused => "refused",
            ConnectFailureKind::SynTimeout => "syn_timeout",
        }
    }
}

impl fmt::Display for ConnectFailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One kernel-observed failed connect of a socket the datapath translated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectFailure {
    /// Counter id of the backend the socket was sent to (see [`super::TableBackend::id`]).
    pub backend_id: u32,
    /// Counter id of the VIP the application named.
    pub vip_id: u32,
    /// The backend's address, as the socket saw it.
    pub peer: SocketAddr,
    /// How it failed.
    pub kind: ConnectFailureKind,
    /// Failures to this backend id in a row, with no established connect in between,
    /// counting this one (the kernel keeps the count; an established connect resets it).
    pub consecutive: u32,
    /// Whether this failure made the kernel mark the backend suspect (`consecutive` reached
    /// the table's `passive_threshold`): new connects already avoid it.
    pub suspect: bool,
}

/// A boxed future, as the object-safe traits here return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The stream of kernel-observed connect failures (a BPF ring buffer on the real datapath).
///
/// Read by its own task, apart from the writer that owns the [`super::Datapath`], so a
/// failure reaches the decision core without waiting behind map writes.
pub trait ConnectEvents: Send {
    /// Waits for the next failures (at least one) and returns every one that is ready,
    /// oldest first. `Err` only when the source itself broke; it is then not read again.
    fn next_batch(&mut self) -> BoxFuture<'_, Result<Vec<ConnectFailure>, DatapathError>>;
}

/// What one [`super::Datapath::terminate`] call did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Terminated {
    /// TCP sockets aborted (the application sees ECONNABORTED).
    pub tcp: u32,
    /// Connected UDP sockets aborted.
    pub udp: u32,
}

impl Terminated {
    /// Sockets aborted in all.
    pub fn total(&self) -> u32 {
        self.tcp + self.udp
    }
}
