//! What the decision core reports: the typed transitions one input caused, and the decision it returns.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use super::backend::Drain;
use crate::{
    datapath::{ConnectFailureKind, VipTable},
    health::{HealthStatus, ProbeResult},
};

/// What changed for one service after one input. The daemon's observer turns each
/// transition into its metric, its event and its log line, from this one value.
#[derive(Clone, Debug, PartialEq)]
pub enum Transition {
    /// A backend's health verdict flipped (rise or fall probes in a row).
    Health {
        /// Backend name.
        backend: String,
        /// Its traffic address.
        addr: SocketAddr,
        /// The new verdict.
        to: HealthStatus,
        /// The probe that decided it.
        evidence: Evidence,
    },
    /// The breaker opened: the backend is out for `open_for`.
    Ejected {
        /// Backend name.
        backend: String,
        /// How long it stays out before a trial.
        open_for: Duration,
        /// Ejections not yet forgiven, this one included.
        ejections: u32,
        /// The probe that tripped it.
        evidence: Evidence,
    },
    /// The open period ended: probing before readmitting.
    HalfOpened {
        /// Backend name.
        backend: String,
    },
    /// The breaker closed: the backend is readmitted.
    Readmitted {
        /// Backend name.
        backend: String,
    },
    /// An operator drained a backend.
    Drained {
        /// Backend name.
        backend: String,
        /// Who, when, why.
        drain: Drain,
    },
    /// An operator put a drained backend back.
    Undrained {
        /// Backend name.
        backend: String,
    },
    /// A hostname resolved to a new address: it is probed and joins once live.
    AddressAdded {
        /// Backend name (`name@ip:port`).
        backend: String,
    },
    /// A hostname no longer resolves to a live address: it keeps its traffic until the
    /// addresses that replace it have verdicts (make before break).
    AddressRetiring {
        /// Backend name.
        backend: String,
    },
    /// An address left the service (no longer resolved, or replaced).
    AddressRemoved {
        /// Backend name.
        backend: String,
        /// Why, for the log.
        why: &'static str,
    },
    /// An address could not join: no counter id was left.
    AddressRefused {
        /// The address.
        addr: SocketAddr,
        /// Why.
        why: String,
    },
    /// Every backend had its first verdict: from now on the core manages the VIP's table
    /// (before, an adopted table is left exactly as it was).
    Managed,
    /// The first table of a service with no earlier one (nothing adopted): traffic starts.
    TrafficStarts {
        /// The priority that takes it.
        priority: u8,
    },
    /// Traffic moved to a worse priority (or came back from refusing).
    FailedOver {
        /// The priority that had traffic; `None` when connects were refused.
        from: Option<u8>,
        /// The priority that has it now.
        to: u8,
        /// The backends of `from` that are out, with their state word.
        out: Vec<String>,
    },
    /// Traffic moved back to a better priority.
    FailedBack {
        /// The priority that had traffic.
        from: u8,
        /// The better one that has it now.
        to: u8,
    },
    /// Nothing is live and `on_all_down: reject`: connects are refused.
    AllDown {
        /// The priority that had traffic, if any.
        from: Option<u8>,
        /// The backends of `from` that are out, with their state word.
        out: Vec<String>,
    },
    /// Nothing is live and `on_all_down: panic`: every backend of the lowest priority is used.
    Panic {
        /// The priority that had traffic, if any.
        from: Option<u8>,
        /// The lowest priority, now used whatever its health.
        priority: u8,
    },
    /// More than one backend of a `role: primary` service answers "primary". Connections
    /// stay on the one that had them (`kept`); the others get none. With no such backend
    /// (a first start with two claimants) `kept` is `None` and connects are refused: without
    /// history nothing says which is the real primary, and writes to the wrong one are lost.
    SplitBrain {
        /// Every backend that claims primary.
        primaries: Vec<String>,
        /// The one that keeps the connections, if any.
        kept: Option<String>,
    },
    /// Only one backend claims primary again.
    SplitBrainEnded,
    /// An operator asked for a manual failback.
    FailbackRequested {
        /// The priority traffic was held on.
        from: Option<u8>,
    },
    /// More live backends than a table holds: the first ones are used.
    TableTruncated {
        /// Live backends.
        live: usize,
        /// Those kept.
        kept: usize,
    },
    /// The table could not be built (a bug, or weights the slot table cannot express).
    TableUnbuildable {
        /// Why.
        why: String,
    },
    /// The kernel saw a translated connect to the backend fail (passive health).
    PassiveFailure {
        /// Backend name.
        backend: String,
        /// How it failed.
        kind: ConnectFailureKind,
        /// Failures in a row, this one included.
        consecutive: u32,
    },
    /// Kernel evidence took the backend out at once, as if `fall` probes had failed: its
    /// breaker opened (a breaker ejection like any other).
    PassiveEjected {
        /// Backend name.
        backend: String,
        /// How the last connect failed.
        kind: ConnectFailureKind,
        /// Failures in a row.
        consecutive: u32,
        /// How long it stays out before a trial.
        open_for: Duration,
        /// Ejections not yet forgiven, this one included.
        ejections: u32,
    },
    /// Kernel evidence reached the threshold but the backend stays as it is.
    PassiveHeld {
        /// Backend name.
        backend: String,
        /// Failures in a row.
        consecutive: u32,
        /// Why it was not ejected.
        why: PassiveHold,
    },
}

/// Why kernel evidence did not eject a backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PassiveHold {
    /// It is out already (unhealthy, ejected, drained, or not yet judged).
    AlreadyOut,
    /// Ejecting it would take out more than `max_ejected_percent` of its priority group,
    /// and one of the group is out already.
    MaxEjected,
}

impl PassiveHold {
    /// The word logs use.
    pub fn as_str(self) -> &'static str {
        match self {
            PassiveHold::AlreadyOut => "already_out",
            PassiveHold::MaxEjected => "max_ejected_percent",
        }
    }
}

/// Why the core asks for a backend's sockets to be aborted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TerminateReason {
    /// It left the table unhealthy or ejected (`terminate.on_down`).
    Down,
    /// A role check says it is no longer what the service wants (`terminate.on_down`).
    Demoted,
    /// A reload (or DNS) removed it while it was in the table (`terminate.on_down`).
    Removed,
    /// Traffic failed back and it belongs to the priority left (`terminate.on_failback`).
    Failback,
    /// `failoverd drain --terminate`.
    Drain,
    /// Its drain's `terminate.drain_after` grace is over.
    DrainAfter,
}

impl TerminateReason {
    /// The `reason` label of `failoverd_sockets_terminated_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            TerminateReason::Down => "down",
            TerminateReason::Demoted => "demoted",
            TerminateReason::Removed => "removed",
            TerminateReason::Failback => "failback",
            TerminateReason::Drain => "drain",
            TerminateReason::DrainAfter => "drain_after",
        }
    }
}

/// One backend whose translated sockets the shell is to abort, after the table write that
/// took it out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Termination {
    /// Backend name.
    pub backend: String,
    /// Its counter id, as the kernel's socket storage records it.
    pub id: u32,
    /// Why.
    pub reason: TerminateReason,
}

/// The probe result behind a transition, kept typed until it is rendered.
#[derive(Clone, Debug)]
pub struct Evidence(pub Arc<ProbeResult>);

impl PartialEq for Evidence {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.to_string() == other.to_string()
    }
}

impl std::fmt::Display for Evidence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &*self.0 {
            Ok(ok) => f.write_str(&ok.detail),
            Err(e) => write!(f, "{}: {e}", e.reason()),
        }
    }
}

/// What the core decided after one input.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Decision {
    /// The VIP's new table, when it differs from the last one decided (or adopted).
    pub table: Option<Arc<VipTable>>,
    /// What happened, in order.
    pub transitions: Vec<Transition>,
    /// Backend ids whose kernel suspect mark is to be lifted (the core did not eject them,
    /// or they are back in the table).
    pub clear_suspect: Vec<u32>,
    /// Backends whose sockets are to be aborted once `table` is written.
    pub terminate: Vec<Termination>,
}

impl Decision {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.table.is_none()
            && self.transitions.is_empty()
            && self.clear_suspect.is_empty()
            && self.terminate.is_empty()
    }
}
