//! The operator control API: JSON over HTTP/1.1 on a Unix socket, its server, its client and its text rendering.
//!
//! [`protocol`] is the contract (messages and the [`ControlHandler`] the daemon
//! implements); [`server`] binds the socket and answers requests; [`client`]
//! is what the `failoverd status/drain/undrain/failback/reload/explain`
//! subcommands use, with [`command`] holding what those share and [`render`]
//! turning answers into text for a terminal. docs/control-api.md describes
//! the wire protocol.

pub mod client;
pub mod command;
mod connection;
mod peer;
pub mod protocol;
mod query;
pub mod render;
mod routes;
pub mod server;

pub use protocol::*;
