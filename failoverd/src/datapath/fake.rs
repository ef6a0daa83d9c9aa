//! An in-memory [`Datapath`] for tests that must not need root or a kernel.
//!
//! A [`FakeHandle`] reaches the same in-memory "kernel" after the fake was
//! moved into a writer: a test can delete or alter an entry behind the
//! daemon's back, make writes fail with an errno, fill the services map, or
//! take the whole datapath apart, exactly as an operator or the kernel could.

use std::{
    collections::{BTreeMap, HashMap},
    io,
    sync::{Arc, Mutex, MutexGuard},
};

use failoverd_shared::map_names;

use tokio::sync::mpsc;

use super::{
    BoxFuture, ConnectEvents, ConnectFailure, CounterTotals, Datapath, DatapathError,
    InstalledTable, Terminated, Vip, VipTable,
};

/// Holds tables in memory, checks them exactly as the real datapath does, and
/// records every write so tests can assert that only changed VIPs were written.
#[derive(Debug, Default)]
pub struct FakeDatapath {
    kernel: Arc<Mutex<FakeKernel>>,
    /// Every successful `apply` and `remove`, in order.
    pub writes: Vec<FakeWrite>,
    /// When set, the next write fails with this error message instead.
    pub fail_next_write: Option<String>,
}

/// One write the fake saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FakeWrite {
    /// A table was installed.
    Apply(VipTable),
    /// A VIP was removed.
    Remove(Vip),
}

/// What the fake "kernel" holds; shared between a [`FakeDatapath`] and its handles.
#[derive(Debug, Default)]
struct FakeKernel {
    tables: BTreeMap<Vip, InstalledTable>,
    counters: HashMap<u32, CounterTotals>,
    generation: u64,
    /// Errno the next `fail_writes` writes fail with, and how many are left.
    failing_writes: Option<(i32, u32)>,
    /// Like the kernel's `max_entries`: a new VIP beyond it fails with E2BIG.
    max_entries: Option<usize>,
    /// Set when the datapath was "taken apart": what `check_intact` reports.
    broken: Option<String>,
    /// Set when `check_intact` cannot look (e.g. EMFILE): its errno.
    check_errno: Option<i32>,
    /// Every successful write, as [`FakeDatapath::writes`] but reachable from a handle.
    writes: Vec<FakeWrite>,
    /// Ids whose counters were reset, in order.
    resets: Vec<u32>,
    /// Where [`FakeHandle::connect_failed`] sends; the receiver is handed out once.
    failures_tx: Option<mpsc::UnboundedSender<ConnectFailure>>,
    failures_rx: Option<mpsc::UnboundedReceiver<ConnectFailure>>,
    /// Backend ids whose suspect marks were lifted, in order.
    suspect_clears: Vec<u32>,
    /// Every `terminate` call's backend ids, in order.
    terminations: Vec<Vec<u32>>,
    /// Sockets "open" per backend id: what a `terminate` of that id reports as aborted.
    open_sockets: HashMap<u32, Terminated>,
    /// Set: every `terminate` fails with this errno (recorded all the same).
    failing_terminations: Option<i32>,
}

/// A cloneable handle on a [`FakeDatapath`]'s in-memory kernel, for changing it
/// "behind the daemon's back" after the fake was handed to a writer.
#[derive(Clone, Debug)]
pub struct FakeHandle {
    kernel: Arc<Mutex<FakeKernel>>,
}

/// The error a failed map syscall gives on the real datapath, with `errno`.
fn syscall_error(op: &'static str, call: &'static str, errno: i32) -> DatapathError {
    DatapathError::Map {
        op,
        map: map_names::SERVICES,
        source: Box::new(aya::maps::MapError::SyscallError(aya::sys::SyscallError {
            call,
            io_error: io::Error::from_raw_os_error(errno),
        })),
    }
}

impl FakeDatapath {
    /// An empty fake.
    pub fn new() -> Self {
        Self::default()
    }

    /// A handle on this fake's tables and counters that stays usable after
    /// the fake was moved (into a writer, a daemon).
    pub fn handle(&self) -> FakeHandle {
        FakeHandle {
            kernel: Arc::clone(&self.kernel),
        }
    }

    /// Sets the counters a later [`Datapath::counters`] call returns for `id`.
    pub fn set_counters(&mut self, id: u32, totals: CounterTotals) {
        self.handle().set_counters(id, totals);
    }

    fn kernel(&self) -> MutexGuard<'_, FakeKernel> {
        lock(&self.kernel)
    }

    fn injected_failure(&mut self, call: &'static str) -> Result<(), DatapathError> {
        if let Some(message) = self.fail_next_write.take() {
            return Err(DatapathError::Injected { message });
        }
        let mut kernel = self.kernel();
        if let Some((errno, left)) = kernel.failing_writes {
            kernel.failing_writes = (left > 1).then_some((errno, left - 1));
            return Err(syscall_error("writing", call, errno));
        }
        Ok(())
    }
}

fn lock(kernel: &Mutex<FakeKernel>) -> MutexGuard<'_, FakeKernel> {
    // A test that panicked while holding the lock has failed already; its
    // state is still the best description of what the fake holds.
    kernel
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl FakeHandle {
    /// Sets the counters a later [`Datapath::counters`] call returns for `id`.
    pub fn set_counters(&self, id: u32, totals: CounterTotals) {
        lock(&self.kernel).counters.insert(id, totals);
    }

    /// The counters held for `id` (zero when none).
    pub fn counters(&self, id: u32) -> CounterTotals {
        lock(&self.kernel)
            .counters
            .get(&id)
            .copied()
            .unwrap_or_default()
    }

    /// Ids whose counters the datapath was asked to reset, in order.
    pub fn resets(&self) -> Vec<u32> {
        lock(&self.kernel).resets.clone()
    }

    /// Every table the fake holds now.
    pub fn tables(&self) -> BTreeMap<Vip, InstalledTable> {
        lock(&self.kernel).tables.clone()
    }

    /// Every successful write so far, in order.
    pub fn writes(&self) -> Vec<FakeWrite> {
        lock(&self.kernel).writes.clone()
    }

    /// Deletes a VIP's entry without the writer knowing (`bpftool map delete`).
    pub fn delete_entry(&self, vip: &Vip) {
        lock(&self.kernel).tables.remove(vip);
    }

    /// Replaces (or adds) a VIP's entry without the writer knowing.
    pub fn alter_entry(&self, table: VipTable) {
        let mut kernel = lock(&self.kernel);
        kernel.generation += 1;
        let generation = kernel.generation;
        kernel
            .tables
            .insert(table.vip, InstalledTable { table, generation });
    }

    /// Makes the next `count` writes (apply or remove) fail with `errno`, as a
    /// failed `bpf_map_update_elem`/`bpf_map_delete_elem` would.
    pub fn fail_writes(&self, errno: i32, count: u32) {
        lock(&self.kernel).failing_writes = (count > 0).then_some((errno, count));
    }

    /// Caps the number of VIPs like the services map's `max_entries`: adding
    /// a VIP beyond it fails with E2BIG, as the kernel's hash map does.
    pub fn set_max_entries(&self, max: Option<usize>) {
        lock(&self.kernel).max_entries = max;
    }

    /// Takes the datapath apart (`failoverd cleanup` while the daemon runs):
    /// [`Datapath::check_intact`] fails with `detail` until [`FakeHandle::restore`].
    pub fn take_apart(&self, detail: &str) {
        lock(&self.kernel).broken = Some(detail.to_string());
    }

    /// Makes [`Datapath::check_intact`] fail to look with `errno` (as opening
    /// a pin does with EMFILE when descriptors run out); `None` undoes it.
    pub fn fail_checks(&self, errno: Option<i32>) {
        lock(&self.kernel).check_errno = errno;
    }

    /// Undoes [`FakeHandle::take_apart`].
    pub fn restore(&self) {
        lock(&self.kernel).broken = None;
    }

    /// Reports a kernel-observed connect failure, as the ring buffer would.
    pub fn connect_failed(&self, failure: ConnectFailure) {
        let mut kernel = lock(&self.kernel);
        kernel.ensure_failure_channel();
        if let Some(tx) = &kernel.failures_tx {
            // The receiver lives as long as the daemon reading it; a test that reports
            // after the daemon stopped has nothing to tell.
            let _ = tx.send(failure);
        }
    }

    /// Backend ids whose suspect marks the daemon lifted, in order.
    pub fn suspect_clears(&self) -> Vec<u32> {
        lock(&self.kernel).suspect_clears.clone()
    }

    /// Every `terminate` call's backend ids, in order.
    pub fn terminations(&self) -> Vec<Vec<u32>> {
        lock(&self.kernel).terminations.clone()
    }

    /// Pretends sockets are open to `backend_id`: a later `terminate` of it reports them.
    pub fn set_open_sockets(&self, backend_id: u32, open: Terminated) {
        lock(&self.kernel).open_sockets.insert(backend_id, open);
    }

    /// Makes every later `terminate` fail with `errno` (`None`: succeed again), as a
    /// kernel without the iterator or `SOCK_DESTROY` would.
    pub fn fail_terminations(&self, errno: Option<i32>) {
        lock(&self.kernel).failing_terminations = errno;
    }
}

impl FakeKernel {
    fn ensure_failure_channel(&mut self) {
        if self.failures_tx.is_none() {
            let (tx, rx) = mpsc::unbounded_channel();
            self.failures_tx = Some(tx);
            self.failures_rx = Some(rx);
        }
    }
}

/// The fake's [`ConnectEvents`]: what [`FakeHandle::connect_failed`] sent.
struct FakeConnectEvents {
    rx: mpsc::UnboundedReceiver<ConnectFailure>,
}

impl ConnectEvents for FakeConnectEvents {
    fn next_batch(&mut self) -> BoxFuture<'_, Result<Vec<ConnectFailure>, DatapathError>> {
        Box::pin(async move {
            let Some(first) = self.rx.recv().await else {
                // Every sender is gone with the fake: nothing will ever come.
                return std::future::pending().await;
            };
            let mut batch = vec![first];
            while let Ok(more) = self.rx.try_recv() {
                batch.push(more);
            }
            Ok(batch)
        })
    }
}

impl Datapath for FakeDatapath {
    fn apply(&mut self, table: &VipTable) -> Result<(), DatapathError> {
        self.injected_failure("bpf_map_update_elem")?;
        let mut kernel = self.kernel();
        // Same validation as the kernel path: a table the BPF datapath would
        // refuse must not pass in tests.
        table.encode(kernel.generation + 1)?;
        let full = kernel
            .max_entries
            .is_some_and(|max| kernel.tables.len() >= max);
        if full && !kernel.tables.contains_key(&table.vip) {
            return Err(syscall_error("writing", "bpf_map_update_elem", libc::E2BIG));
        }
        kernel.generation += 1;
        let generation = kernel.generation;
        kernel.tables.insert(
            table.vip,
            InstalledTable {
                table: table.clone(),
                generation,
            },
        );
        kernel.writes.push(FakeWrite::Apply(table.clone()));
        drop(kernel);
        self.writes.push(FakeWrite::Apply(table.clone()));
        Ok(())
    }

    fn remove(&mut self, vip: &Vip) -> Result<(), DatapathError> {
        self.injected_failure("bpf_map_delete_elem")?;
        let mut kernel = self.kernel();
        kernel.tables.remove(vip);
        kernel.writes.push(FakeWrite::Remove(*vip));
        drop(kernel);
        self.writes.push(FakeWrite::Remove(*vip));
        Ok(())
    }

    fn tables(&self) -> Result<BTreeMap<Vip, InstalledTable>, DatapathError> {
        Ok(self.kernel().tables.clone())
    }

    fn table(&self, vip: &Vip) -> Result<Option<InstalledTable>, DatapathError> {
        Ok(self.kernel().tables.get(vip).cloned())
    }

    fn counters(&self, id: u32) -> Result<CounterTotals, DatapathError> {
        Ok(self.kernel().counters.get(&id).copied().unwrap_or_default())
    }

    fn counter_ids(&self) -> Result<Vec<u32>, DatapathError> {
        let mut ids: Vec<u32> = self.kernel().counters.keys().copied().collect();
        ids.sort_unstable();
        Ok(ids)
    }

    fn reset_counters(&mut self, id: u32) -> Result<(), DatapathError> {
        let mut kernel = self.kernel();
        kernel.counters.remove(&id);
        kernel.resets.push(id);
        Ok(())
    }

    fn check_intact(&self) -> Result<(), DatapathError> {
        let kernel = self.kernel();
        if let Some(detail) = &kernel.broken {
            return Err(DatapathError::Detached {
                pin_dir: "/fake".into(),
                detail: detail.clone(),
            });
        }
        match kernel.check_errno {
            Some(errno) => Err(DatapathError::Io {
                op: "opening",
                path: "/fake/links/fo_connect4".into(),
                source: io::Error::from_raw_os_error(errno),
            }),
            None => Ok(()),
        }
    }

    fn take_connect_events(&mut self) -> Option<Box<dyn ConnectEvents>> {
        let mut kernel = self.kernel();
        kernel.ensure_failure_channel();
        let rx = kernel.failures_rx.take()?;
        Some(Box::new(FakeConnectEvents { rx }))
    }

    fn clear_suspect(&mut self, backend_id: u32) -> Result<(), DatapathError> {
        self.kernel().suspect_clears.push(backend_id);
        Ok(())
    }

    fn terminate(&mut self, backend_ids: &[u32]) -> Result<Terminated, DatapathError> {
        let mut kernel = self.kernel();
        kernel.terminations.push(backend_ids.to_vec());
        if let Some(errno) = kernel.failing_terminations {
            return Err(syscall_error("terminating sockets", "sock_destroy", errno));
        }
        let mut done = Terminated::default();
        for id in backend_ids {
            if let Some(open) = kernel.open_sockets.remove(id) {
                done.tcp += open.tcp;
                done.udp += open.udp;
            }
        }
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::{Protocol, TableBackend, TableError};

    fn vip() -> Vip {
        Vip {
            addr: "127.1.0.1:80".parse().unwrap(),
            protocol: Protocol::Tcp,
        }
    }

    fn one_backend(port: u16) -> VipTable {
        let b = TableBackend {
            addr: format!("127.0.0.1:{port}").parse().unwrap(),
            id: 2,
        };
        VipTable::weighted(vip(), 1, vec![b], &[1]).unwrap()
    }

    #[test]
    fn apply_replaces_the_whole_table_and_bumps_generation() {
        let mut dp = FakeDatapath::new();
        let backend = |s: &str, id| TableBackend {
            addr: s.parse().unwrap(),
            id,
        };
        let a = VipTable::weighted(vip(), 1, vec![backend("127.0.0.1:1", 2)], &[1]).unwrap();
        let b = VipTable::weighted(vip(), 1, vec![backend("127.0.0.2:2", 3)], &[1]).unwrap();
        dp.apply(&a).unwrap();
        dp.apply(&b).unwrap();
        let tables = dp.tables().unwrap();
        assert_eq!(tables[&vip()].table, b);
        assert_eq!(tables[&vip()].generation, 2);
        assert_eq!(dp.writes.len(), 2);
    }

    #[test]
    fn invalid_table_is_refused_and_nothing_changes() {
        let mut dp = FakeDatapath::new();
        let bad = VipTable {
            vip: vip(),
            vip_id: 1,
            backends: vec![TableBackend {
                addr: "[::1]:80".parse().unwrap(),
                id: 2,
            }],
            slots: vec![0].into(),
            fallback: Vec::new(),
            passive_threshold: 0,
        };
        let err = dp.apply(&bad).unwrap_err();
        assert!(matches!(
            err,
            DatapathError::Table(TableError::FamilyMismatch { .. })
        ));
        assert!(dp.tables().unwrap().is_empty());
        assert!(dp.writes.is_empty());
    }

    #[test]
    fn injected_failure_fails_one_write() {
        let mut dp = FakeDatapath::new();
        dp.fail_next_write = Some("disk on fire".into());
        assert!(dp.remove(&vip()).is_err());
        assert!(dp.remove(&vip()).is_ok());
    }

    #[test]
    fn a_handle_changes_what_the_moved_fake_holds() {
        let mut dp = FakeDatapath::new();
        let handle = dp.handle();
        dp.apply(&one_backend(1)).unwrap();
        handle.delete_entry(&vip());
        assert_eq!(dp.table(&vip()).unwrap(), None);
        handle.alter_entry(one_backend(2));
        assert_eq!(dp.table(&vip()).unwrap().unwrap().table, one_backend(2));
        assert_eq!(handle.writes(), vec![FakeWrite::Apply(one_backend(1))]);
    }

    #[test]
    fn failing_writes_carry_their_errno() {
        let mut dp = FakeDatapath::new();
        dp.handle().fail_writes(libc::ENOMEM, 2);
        for _ in 0..2 {
            let e = dp.apply(&one_backend(1)).unwrap_err();
            assert_eq!(e.errno(), Some(libc::ENOMEM));
            assert!(e.to_string().contains("ENOMEM"), "{e}");
        }
        dp.apply(&one_backend(1)).unwrap();
    }

    #[test]
    fn a_full_map_refuses_new_vips_with_e2big_but_updates_existing_ones() {
        let mut dp = FakeDatapath::new();
        dp.handle().set_max_entries(Some(1));
        dp.apply(&one_backend(1)).unwrap();
        dp.apply(&one_backend(2)).unwrap();
        let other = VipTable::refusing(
            Vip {
                addr: "127.1.0.2:80".parse().unwrap(),
                protocol: Protocol::Tcp,
            },
            5,
        );
        assert_eq!(dp.apply(&other).unwrap_err().errno(), Some(libc::E2BIG));
    }

    #[test]
    fn reset_counters_forgets_the_counts() {
        let mut dp = FakeDatapath::new();
        let counts = CounterTotals {
            connects: 5,
            ..Default::default()
        };
        dp.set_counters(3, counts);
        assert_eq!(dp.counter_ids().unwrap(), vec![3]);
        dp.reset_counters(3).unwrap();
        assert_eq!(dp.counters(3).unwrap(), CounterTotals::default());
        assert_eq!(dp.handle().resets(), vec![3]);
    }
}
