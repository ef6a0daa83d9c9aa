//! What the decision core reacts to: typed inputs, and why an operator's input can be refused.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::time::Instant;

use super::backend::{BackendKey, Drain};
use crate::{
    datapath::{ConnectFailureKind, IdsExhausted},
    health::ProbeResult,
};

/// One input to a service's decision core.
///
/// Every source of evidence about a backend is a variant here, so that one place decides
/// which backends of a VIP take new connections.
#[derive(Clone, Debug)]
pub enum Input {
    /// A probe finished.
    Probe {
        /// Which backend.
        key: BackendKey,
        /// When the probe started.
        started: Instant,
        /// What it saw (shared by every service probing the same target).
        result: Arc<ProbeResult>,
    },
    /// A backend entry now resolves to these addresses (an IP backend: its one address).
    Addrs {
        /// Index of the backend in the service's config.
        config_index: usize,
        /// Its addresses, with the configured port, already filtered to the VIP's family.
        addrs: Vec<SocketAddr>,
    },
    /// An operator holds a backend out of new connections (`failoverd drain`).
    Drain {
        /// Backend name.
        backend: String,
        /// Who, when, why.
        drain: Drain,
        /// Allow draining the last live backend.
        force: bool,
        /// Also abort every socket the datapath translated to it, at once (`--terminate`).
        terminate: bool,
    },
    /// An operator puts a drained backend back (`failoverd undrain`).
    Undrain {
        /// Backend name.
        backend: String,
    },
    /// An operator sends traffic back to the best live priority (`failback: manual`).
    Failback,
    /// Time passed: breaker periods may have ended, first verdicts may be overdue, a
    /// drain's `drain_after` grace may be over.
    Tick,
    /// The kernel saw a translated connect to one of the service's backends fail (passive
    /// health; see [`crate::datapath::ConnectFailure`]).
    ConnectFailed {
        /// The backend's counter id.
        backend_id: u32,
        /// Refused, or no answer to the SYN.
        kind: ConnectFailureKind,
        /// Failures to it in a row, this one included, as the kernel counts them.
        consecutive: u32,
        /// Whether the kernel marked it suspect already (new connects avoid it).
        suspect: bool,
    },
    /// Probes start this late after their slots, daemon-wide, as the prober measured it
    /// lately: a first verdict is due that much later per probe it needs, so an overloaded
    /// daemon does not write a VIP with no live backend only because its probes are late.
    ProbeLag {
        /// The measured lateness (0 on a daemon that keeps up).
        lag: Duration,
    },
}

/// Why the core refused an operator's input; nothing changed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// No backend has that name.
    #[error("service {service} has no backend `{backend}` (it has: {})", known.join(", "))]
    UnknownBackend {
        /// The service.
        service: String,
        /// The name asked for.
        backend: String,
        /// The names it has.
        known: Vec<String>,
    },
    /// Draining it would leave the VIP with nothing live while it has something live now.
    #[error("{backend} is the last live backend {service} can send connections to (no other backend, of any priority, could take over); draining it leaves the VIP without one: pass --force to drain it anyway")]
    LastLive {
        /// The service.
        service: String,
        /// The backend.
        backend: String,
    },
    /// Undrain of a backend that is not drained.
    #[error("{backend} of {service} is not drained: nothing to undrain")]
    NotDrained {
        /// The service.
        service: String,
        /// The backend.
        backend: String,
    },
}

impl Refused {
    /// Whether the input named something that does not exist (as opposed to a refused action).
    pub fn is_not_found(&self) -> bool {
        matches!(self, Refused::UnknownBackend { .. })
    }
}

/// Where the core gets counter ids for addresses that join, and returns those that leave.
pub trait CounterIds {
    /// A fresh id.
    fn allocate(&mut self) -> Result<u32, IdsExhausted>;
    /// Makes `id` available again.
    fn release(&mut self, id: u32);
}

impl CounterIds for crate::datapath::IdAllocator {
    fn allocate(&mut self) -> Result<u32, IdsExhausted> {
        crate::datapath::IdAllocator::allocate(self)
    }

    fn release(&mut self, id: u32) {
        crate::datapath::IdAllocator::release(self, id);
    }
}
