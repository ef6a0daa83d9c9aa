//! The decision core: each service as a pure state machine.
//!
//! ```text
//! Input (probe result, kernel-observed connect failure, addresses, drain, failback, tick)
//!   └─► ServiceState::handle(input, now)
//!         ─► Decision { table if changed, transitions, suspect marks to lift, sockets to abort }
//! ```
//! No channels, no clock reads, no metrics, no control-API types: the daemon's shell
//! (`daemon::service`) does the I/O and hands every [`Transition`] to one observer, and the
//! control layer renders [`ServiceStatus`] and [`Explanation`]. Tests feed scripts of inputs
//! and assert the exact transitions and tables.

mod addrs;
mod backend;
mod input;
mod passive;
mod report;
mod service;
mod sorted;
mod terminate;
#[cfg(test)]
mod tests;
mod transition;

pub use backend::{Backend, BackendKey, Drain, LastProbe, PassiveState};
pub use input::{CounterIds, Input, Refused};
pub use report::{BackendStatus, Explanation, OutReason, PassiveStatus, ServiceStatus};
pub use service::ServiceState;
pub use sorted::{Keyed, SortedMap};
pub use transition::{Decision, Evidence, PassiveHold, TerminateReason, Termination, Transition};
