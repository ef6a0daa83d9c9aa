//! failoverd: an eBPF datapath that translates VIPs into live backends at `connect()` time.
//!
//! The library is split by job: [`datapath`] owns the kernel maps and programs
//! (with an in-memory fake for tests), [`select`] turns weights into slot
//! tables, [`dirs`] names every default path, and [`cli`] holds one module per
//! subcommand of the `failoverd` binary.

pub mod breaker;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod datapath;
pub mod decision;
pub mod dirs;
pub mod fleet;
pub mod health;
pub mod interned;
pub mod limits;
pub mod metrics;
pub mod panics;
pub mod reconcile;
pub mod resolve;
pub mod select;
