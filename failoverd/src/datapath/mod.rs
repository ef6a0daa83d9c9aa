//! The datapath: where VIP tables live so the kernel can translate `connect()`.
//!
//! [`Datapath`] is the one interface the rest of failoverd writes through.
//! [`BpfDatapath`] is the real thing (BPF maps and cgroup hooks, pinned under
//! bpffs); [`FakeDatapath`] keeps tables in memory for tests without root.

mod bpf;
mod fake;
mod ids;
mod table;

use std::collections::BTreeMap;

pub use bpf::{
    cgroup2_mount, cleanup, AttachReport, BpfDatapath, CgroupSpec, CleanupReport, DatapathConfig,
    DatapathError, PinnedMaps,
};
pub use fake::{FakeDatapath, FakeWrite};
pub use ids::{IdAllocator, IdsExhausted};
pub use table::{Protocol, TableBackend, TableError, Vip, VipTable};

/// A table as the datapath holds it, with the generation it was written under.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstalledTable {
    /// The table.
    pub table: VipTable,
    /// Changes on every write of this VIP.
    pub generation: u64,
}

/// Counters of one VIP id or backend id, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CounterTotals {
    /// `connect()`/`sendmsg()` calls translated.
    pub connects: u64,
    /// Calls refused because the VIP had no live backend.
    pub rejected: u64,
    /// Calls that could not be translated.
    pub xlate_errors: u64,
}

impl<T: Datapath + ?Sized> Datapath for Box<T> {
    fn apply(&mut self, table: &VipTable) -> Result<(), DatapathError> {
        (**self).apply(table)
    }

    fn remove(&mut self, vip: &Vip) -> Result<(), DatapathError> {
        (**self).remove(vip)
    }

    fn tables(&self) -> Result<BTreeMap<Vip, InstalledTable>, DatapathError> {
        (**self).tables()
    }

    fn counters(&self, id: u32) -> Result<CounterTotals, DatapathError> {
        (**self).counters(id)
    }
}

/// Where VIP tables are installed.
///
/// Every write replaces one VIP's whole table at once: a reader sees the old
/// table or the new one, never a mix.
pub trait Datapath: Send {
    /// Installs `table` for its VIP, replacing what was there.
    fn apply(&mut self, table: &VipTable) -> Result<(), DatapathError>;

    /// Stops translating `vip`; its address passes through untouched again.
    /// Removing a VIP that is not installed is not an error.
    fn remove(&mut self, vip: &Vip) -> Result<(), DatapathError>;

    /// Every installed table, by VIP.
    fn tables(&self) -> Result<BTreeMap<Vip, InstalledTable>, DatapathError>;

    /// Counters of a VIP id or backend id; zero when nothing was counted yet.
    fn counters(&self, id: u32) -> Result<CounterTotals, DatapathError>;
}
