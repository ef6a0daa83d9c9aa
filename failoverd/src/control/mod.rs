//! The operator control API: JSON over HTTP/1.1 on a Unix socket, and its client.

pub mod protocol;

pub use protocol::*;
