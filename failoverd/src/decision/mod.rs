//! The decision core: each service as a pure state machine.
//!
//! ```text
//! Input (probe result, addresses, drain, failback, tick)
//!   └─► ServiceState::handle(input, now) ─► Decision { table if changed, transitions }
//! ```
//! No channels, no clock reads, no metrics, no control-API types: the daemon's shell
//! (`daemon::service`) does the I/O and hands every [`Transition`] to one observer, and the
//! control layer renders [`ServiceStatus`] and [`Explanation`]. Tests feed scripts of inputs
//! and assert the exact transitions and tables.

mod addrs;
mod backend;
mod input;
mod report;
mod service;
mod sorted;
#[cfg(test)]
mod tests;
mod transition;

pub use backend::{Backend, BackendKey, Drain, LastProbe};
pub use input::{CounterIds, Input, Refused};
pub use report::{BackendStatus, Explanation, OutReason, ServiceStatus};
pub use service::ServiceState;
pub use sorted::SortedMap;
pub use transition::{Decision, Evidence, Transition};
