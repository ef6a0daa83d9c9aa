//! What the writer knows of the kernel, for status and readiness: which VIPs fail and why.

use std::{
    collections::BTreeMap,
    fmt,
    sync::{Arc, RwLock},
    time::SystemTime,
};

use crate::datapath::{DatapathError, Vip};

/// Why the kernel does not hold what the writer wants for a VIP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteFailure {
    /// The error, as displayed (a failed map syscall ends with its errno).
    pub error: String,
    /// The kernel's errno, when a syscall failed.
    pub errno: Option<i32>,
    /// When the VIP started failing.
    pub since: SystemTime,
    /// Attempts that failed in a row.
    pub attempts: u32,
}

impl WriteFailure {
    pub(super) fn new(error: &DatapathError) -> Self {
        WriteFailure {
            error: error.to_string(),
            errno: error.errno(),
            since: SystemTime::now(),
            attempts: 1,
        }
    }
}

impl fmt::Display for WriteFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (failing since {}, {} attempt{})",
            self.error,
            humantime::format_rfc3339_seconds(self.since),
            self.attempts,
            if self.attempts == 1 { "" } else { "s" }
        )
    }
}

/// A cheap, cloneable view of what the writer knows about the kernel: which
/// VIPs it cannot make the kernel hold as wanted, and why. Obtained from
/// [`Writer::view`] before [`run_writer`] takes the writer; for status and readiness.
#[derive(Clone, Debug, Default)]
pub struct KernelView {
    state: Arc<RwLock<ViewState>>,
}

#[derive(Debug, Default)]
pub(super) struct ViewState {
    /// VIPs whose last write failed.
    pub(super) failing: BTreeMap<Vip, WriteFailure>,
    /// Set while the datapath itself is gone: every VIP fails with it.
    pub(super) datapath: Option<WriteFailure>,
    /// VIPs the writer manages (written or waiting to be).
    pub(super) managed: usize,
    /// Tables rewritten because the kernel did not hold them as written.
    pub(super) repairs: u64,
    /// Read-backs completed.
    pub(super) checks: u64,
}

impl KernelView {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, ViewState> {
        // The writer never panics while holding the lock; if it did, the
        // state is still the last one it published.
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn write(&self) -> std::sync::RwLockWriteGuard<'_, ViewState> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Why the kernel does not hold the wanted table for `vip`, or `None`
    /// when it does (as of the last write or read-back). While the datapath
    /// itself is gone every VIP fails with that.
    pub fn failing(&self, vip: &Vip) -> Option<WriteFailure> {
        let state = self.read();
        state.failing.get(vip).or(state.datapath.as_ref()).cloned()
    }

    /// How many VIPs the kernel does not hold as wanted.
    pub fn failing_count(&self) -> usize {
        let state = self.read();
        if state.datapath.is_some() {
            state.managed.max(state.failing.len())
        } else {
            state.failing.len()
        }
    }

    /// Every VIP whose last write failed, with why.
    pub fn failing_vips(&self) -> Vec<(Vip, WriteFailure)> {
        self.read()
            .failing
            .iter()
            .map(|(v, f)| (*v, f.clone()))
            .collect()
    }

    /// Why the datapath itself is not in place (maps unpinned, hooks detached), if so.
    pub fn datapath_failure(&self) -> Option<WriteFailure> {
        self.read().datapath.clone()
    }

    /// Tables rewritten so far because the kernel did not hold them as written.
    pub fn repairs(&self) -> u64 {
        self.read().repairs
    }

    /// Read-backs of the kernel completed so far.
    pub fn checks(&self) -> u64 {
        self.read().checks
    }
}
