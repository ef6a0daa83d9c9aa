//! The operator control API: JSON over HTTP/1.1 on a Unix socket, its server and its client.
//!
//! [`protocol`] is the contract (messages and the [`ControlHandler`] the daemon
//! implements); [`server`] binds the socket and answers requests; [`client`]
//! is what the `failoverd status/drain/undrain/failback/reload/explain`
//! subcommands use (their arguments and terminal rendering live in `cli/`).
//! docs/control-api.md describes the wire protocol.

pub mod client;
mod connection;
mod peer;
pub mod protocol;
mod query;
mod routes;
pub mod server;

pub use protocol::*;
