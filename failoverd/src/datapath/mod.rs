//! The datapath: where VIP tables live so the kernel can translate `connect()`.
//!
//! [`Datapath`] is the one interface the rest of failoverd writes through.
//! [`BpfDatapath`] is the real thing (BPF maps and cgroup hooks, pinned under
//! bpffs); [`FakeDatapath`] keeps tables in memory for tests without root.

mod bpf;
mod evidence;
mod fake;
mod ids;
mod table;

use std::collections::BTreeMap;

pub use bpf::{
    cgroup2_mount, cleanup, AttachReport, BpfDatapath, CgroupSpec, CleanupReport, DatapathConfig,
    DatapathError, PinnedMaps,
};
pub use evidence::{BoxFuture, ConnectEvents, ConnectFailure, ConnectFailureKind, Terminated};
pub use fake::{FakeDatapath, FakeHandle, FakeWrite};
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

/// Counters of one VIP id or backend id, summed over CPUs; each counts one thing.
///
/// Under a backend id: `connects`, `no_sock_storage` and the kernel-observed outcomes
/// (`established`, `connect_failures`, `syn_timeouts`, `diverted`); the refusals
/// (`rejected`, `bad_table`, `family_mismatch`) under the VIP's id.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CounterTotals {
    /// `connect()`/`sendmsg()` calls translated.
    pub connects: u64,
    /// Calls refused with ECONNREFUSED because the VIP had no live backend.
    pub rejected: u64,
    /// Calls translated without socket storage: getpeername/recvmsg showed the backend.
    pub no_sock_storage: u64,
    /// Calls refused with EHOSTUNREACH: a slot of the table named no backend.
    pub bad_table: u64,
    /// Calls refused with EAFNOSUPPORT: an IPv6 backend for an AF_INET socket.
    pub family_mismatch: u64,
    /// Translated TCP connects that completed the handshake.
    pub established: u64,
    /// Translated TCP connects refused or reset before the handshake completed.
    pub connect_failures: u64,
    /// SYN retransmission timeouts of translated TCP connects (a black-holed backend).
    pub syn_timeouts: u64,
    /// Connects the kernel sent elsewhere because this backend was marked suspect.
    pub diverted: u64,
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

    fn table(&self, vip: &Vip) -> Result<Option<InstalledTable>, DatapathError> {
        (**self).table(vip)
    }

    fn counters(&self, id: u32) -> Result<CounterTotals, DatapathError> {
        (**self).counters(id)
    }

    fn counter_ids(&self) -> Result<Vec<u32>, DatapathError> {
        (**self).counter_ids()
    }

    fn reset_counters(&mut self, id: u32) -> Result<(), DatapathError> {
        (**self).reset_counters(id)
    }

    fn check_intact(&self) -> Result<(), DatapathError> {
        (**self).check_intact()
    }

    fn take_connect_events(&mut self) -> Option<Box<dyn ConnectEvents>> {
        (**self).take_connect_events()
    }

    fn clear_suspect(&mut self, backend_id: u32) -> Result<(), DatapathError> {
        (**self).clear_suspect(backend_id)
    }

    fn terminate(&mut self, backend_ids: &[u32]) -> Result<Terminated, DatapathError> {
        (**self).terminate(backend_ids)
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

    /// The table installed for one VIP, `None` when there is none. The
    /// default reads every table; implementations look up the one key.
    fn table(&self, vip: &Vip) -> Result<Option<InstalledTable>, DatapathError> {
        Ok(self.tables()?.remove(vip))
    }

    /// Counters of a VIP id or backend id; zero when nothing was counted yet.
    fn counters(&self, id: u32) -> Result<CounterTotals, DatapathError>;

    /// Every id the kernel holds non-zero counters for. Default: none (a
    /// datapath that keeps no counters, such as a test wrapper).
    fn counter_ids(&self) -> Result<Vec<u32>, DatapathError> {
        Ok(Vec::new())
    }

    /// Forgets the counters of `id`, so they count from zero for whoever gets
    /// the id next. Not an error when nothing was counted under it. Default:
    /// nothing to forget.
    fn reset_counters(&mut self, _id: u32) -> Result<(), DatapathError> {
        Ok(())
    }

    /// Whether the datapath itself is still in place (maps pinned, hooks
    /// attached), not only its tables: `Err` says what is gone and what to do.
    /// Default: always in place (nothing outside the process to lose).
    fn check_intact(&self) -> Result<(), DatapathError> {
        Ok(())
    }

    /// The kernel's stream of failed translated connects, handed out once (later calls
    /// return `None`). Default: none (a datapath that observes nothing).
    fn take_connect_events(&mut self) -> Option<Box<dyn ConnectEvents>> {
        None
    }

    /// Lifts the kernel's suspect mark of `backend_id` (its consecutive-failure count
    /// goes back to zero), when the daemon decides not to eject it. Default: nothing to lift.
    fn clear_suspect(&mut self, _backend_id: u32) -> Result<(), DatapathError> {
        Ok(())
    }

    /// Aborts every socket the datapath translated to one of `backend_ids` (TCP in any
    /// state, connected UDP); sockets that named a backend's own address are never
    /// touched. Default: nothing to abort.
    fn terminate(&mut self, _backend_ids: &[u32]) -> Result<Terminated, DatapathError> {
        Ok(Terminated::default())
    }
}
