//! The services and counters maps, opened from a freshly loaded object or straight from their pins.

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    os::fd::AsFd,
    path::{Path, PathBuf},
};

use aya::{
    maps::{
        Array, HashMap, IterableMap, Map, MapData, MapError, PerCpuArray, PerCpuHashMap,
        PerCpuValues,
    },
    Ebpf,
};
use failoverd_shared::{map_names, Counters, HotCounters, Passive, Service, VipKey};

use super::{layout, reverse::ReverseMap, DatapathError};
use crate::datapath::{CounterTotals, InstalledTable, Vip, VipTable};

/// What `aya::util::nr_cpus` reads: per-CPU values are one per possible CPU.
const POSSIBLE_CPUS: &str = "/sys/devices/system/cpu/possible";

/// Ids per syscall when the hot counters array is read whole: 4,096 × 16 B per possible CPU.
const COUNTER_BATCH: u32 = 4096;

/// Handles on the maps failoverd reads and writes.
pub struct PinnedMaps {
    services: HashMap<MapData, VipKey, Service>,
    /// What every healthy translated connect counts (connects, established), indexed by id.
    connects: PerCpuArray<MapData, HotCounters>,
    /// The other counters, an id's entry made when one of them first counts.
    counters: PerCpuHashMap<MapData, u32, Counters>,
    reverse: ReverseMap,
    passive: Array<MapData, Passive>,
    /// The threshold last written to the passive map per backend id, so an unchanged
    /// table costs no passive write.
    thresholds: std::collections::HashMap<u32, u32>,
    /// Possible CPUs, the length of every per-CPU value: read once, not on each of the
    /// 90,000 resets a first start at 10,000 VIPs makes.
    cpus: usize,
    pin_dir: PathBuf,
}

impl PinnedMaps {
    /// Takes the maps out of a loaded object (whose programs are already loaded).
    pub(super) fn from_ebpf(ebpf: &mut Ebpf, pin_dir: &Path) -> Result<Self, DatapathError> {
        let missing = |name: &str| DatapathError::NotPinned {
            pin_dir: pin_dir.to_path_buf(),
            path: pin_dir.join(name),
        };
        let services = ebpf
            .take_map(map_names::SERVICES)
            .ok_or_else(|| missing(map_names::SERVICES))?;
        let counters = ebpf
            .take_map(map_names::COUNTERS)
            .ok_or_else(|| missing(map_names::COUNTERS))?;
        let connects = ebpf
            .take_map(map_names::CONNECTS)
            .ok_or_else(|| missing(map_names::CONNECTS))?;
        let reverse = ebpf
            .take_map(map_names::REVERSE)
            .ok_or_else(|| missing(map_names::REVERSE))?;
        let passive = ebpf
            .take_map(map_names::PASSIVE)
            .ok_or_else(|| missing(map_names::PASSIVE))?;
        Self::from_maps([services, counters, connects, reverse, passive], pin_dir)
    }

    /// Opens the maps of a datapath pinned under `pin_dir`, without loading or
    /// attaching anything: for tools that read or edit tables of a running datapath.
    pub fn open(pin_dir: &Path) -> Result<Self, DatapathError> {
        for name in map_names::ALL {
            let path = pin_dir.join(name);
            if !path.exists() {
                return Err(DatapathError::NotPinned {
                    pin_dir: pin_dir.to_path_buf(),
                    path,
                });
            }
        }
        layout::check_pinned_maps(pin_dir)?;
        let open = |name: &'static str| {
            let data = MapData::from_pin(pin_dir.join(name))
                .map_err(DatapathError::map("opening pinned", name))?;
            Map::from_map_data(data).map_err(DatapathError::map("opening pinned", name))
        };
        Self::from_maps(
            [
                open(map_names::SERVICES)?,
                open(map_names::COUNTERS)?,
                open(map_names::CONNECTS)?,
                open(map_names::REVERSE)?,
                open(map_names::PASSIVE)?,
            ],
            pin_dir,
        )
    }

    fn from_maps(
        [services, counters, connects, reverse, passive]: [Map; 5],
        pin_dir: &Path,
    ) -> Result<Self, DatapathError> {
        Ok(PinnedMaps {
            services: HashMap::try_from(services)
                .map_err(DatapathError::map("opening", map_names::SERVICES))?,
            connects: PerCpuArray::try_from(connects)
                .map_err(DatapathError::map("opening", map_names::CONNECTS))?,
            counters: PerCpuHashMap::try_from(counters)
                .map_err(DatapathError::map("opening", map_names::COUNTERS))?,
            reverse: ReverseMap::new(
                HashMap::try_from(reverse)
                    .map_err(DatapathError::map("opening", map_names::REVERSE))?,
            ),
            passive: Array::try_from(passive)
                .map_err(DatapathError::map("opening", map_names::PASSIVE))?,
            thresholds: std::collections::HashMap::new(),
            cpus: aya::util::nr_cpus()
                .map_err(|(path, e)| DatapathError::io("reading", path)(e))?,
            pin_dir: pin_dir.to_path_buf(),
        })
    }

    /// The pin directory the maps live in.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Replaces a VIP's table in one map update, stamped with `generation`.
    ///
    /// What the programs read beside the table is written first, so the first connect
    /// translated by the new table finds it: the reverse entries of its TCP backends
    /// (and the [`failoverd_shared::backend_flags::SHARED`] flag where another VIP owns the
    /// address), and each backend's passive threshold — with its failure run reset when
    /// the backend (re)joins the table, so a readmitted backend starts clean.
    pub fn write_table(&mut self, table: &VipTable, generation: u64) -> Result<(), DatapathError> {
        let mut value = table.encode(generation)?;
        let before: HashSet<u32> = self
            .table(&table.vip)?
            .map(|t| t.table.all_backends().map(|b| b.id).collect())
            .unwrap_or_default();
        let named = usize::from(value.backend_count);
        for (entry, backend) in value.backends[..named].iter_mut().zip(table.all_backends()) {
            entry.flags = self.reverse.claim(&table.vip, table.vip_id, backend)?;
            self.set_threshold(
                backend.id,
                table.passive_threshold,
                !before.contains(&backend.id),
            )?;
        }
        self.services
            .insert(table.vip.key(), value, 0)
            .map_err(DatapathError::map("writing", map_names::SERVICES))
    }

    /// Installs a map value exactly as given, with nothing written beside it: for tests
    /// and tools that put in what no writer would (see [`PinnedMaps::write_table`]).
    pub fn write(&mut self, vip: &Vip, value: &Service) -> Result<(), DatapathError> {
        self.services
            .insert(vip.key(), value, 0)
            .map_err(DatapathError::map("writing", map_names::SERVICES))
    }

    /// Writes a backend id's passive threshold; `fresh` also resets its failure run.
    fn set_threshold(&mut self, id: u32, threshold: u32, fresh: bool) -> Result<(), DatapathError> {
        if !fresh && self.thresholds.get(&id) == Some(&threshold) {
            return Ok(());
        }
        let failures = if fresh {
            0
        } else {
            self.passive_entry(id)?.failures
        };
        self.passive
            .set(
                id,
                Passive {
                    failures,
                    threshold,
                },
                0,
            )
            .map_err(DatapathError::map("writing", map_names::PASSIVE))?;
        self.thresholds.insert(id, threshold);
        Ok(())
    }

    /// A backend id's passive entry (zero for an id never written).
    pub fn passive_entry(&self, id: u32) -> Result<Passive, DatapathError> {
        self.passive
            .get(&id, 0)
            .map_err(DatapathError::map("reading", map_names::PASSIVE))
    }

    /// Ends a backend id's failure run: new connects stop avoiding it.
    pub fn clear_suspect(&mut self, id: u32) -> Result<(), DatapathError> {
        let entry = self.passive_entry(id)?;
        if entry.failures == 0 {
            return Ok(());
        }
        self.passive
            .set(
                id,
                Passive {
                    failures: 0,
                    ..entry
                },
                0,
            )
            .map_err(DatapathError::map("writing", map_names::PASSIVE))
    }

    /// Removes a VIP and the reverse entries it owns; removing one that is absent is not
    /// an error.
    pub fn remove(&mut self, vip: &Vip) -> Result<(), DatapathError> {
        self.remove_table(vip)?;
        self.reverse.release(vip)
    }

    fn remove_table(&mut self, vip: &Vip) -> Result<(), DatapathError> {
        match self.services.remove(&vip.key()) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {
                Ok(())
            }
            Err(e) => Err(DatapathError::map("removing from", map_names::SERVICES)(e)),
        }
    }

    /// Every table in the services map.
    pub fn tables(&self) -> Result<BTreeMap<Vip, InstalledTable>, DatapathError> {
        let mut out = BTreeMap::new();
        for entry in self.services.iter() {
            let (key, value) = entry.map_err(DatapathError::map("reading", map_names::SERVICES))?;
            // A key of an unknown protocol was not written by this layout's
            // writer; skipping it keeps one odd entry from hiding the rest.
            let Some(vip) = Vip::from_key(&key) else {
                tracing::warn!(
                    proto = key.proto,
                    "services map holds a key of an unknown protocol"
                );
                continue;
            };
            out.insert(
                vip,
                InstalledTable {
                    table: VipTable::decode(vip, &value),
                    generation: value.generation,
                },
            );
        }
        Ok(out)
    }

    /// The table of one VIP, `None` when the map holds none.
    pub fn table(&self, vip: &Vip) -> Result<Option<InstalledTable>, DatapathError> {
        match self.services.get(&vip.key(), 0) {
            Ok(value) => Ok(Some(InstalledTable {
                table: VipTable::decode(*vip, &value),
                generation: value.generation,
            })),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(DatapathError::map("reading", map_names::SERVICES)(e)),
        }
    }

    /// Every id with counters: those with a non-zero hot counter (the array is read whole,
    /// in batches; done when the writer starts) and those the hash holds an entry for.
    pub fn counter_ids(&self) -> Result<Vec<u32>, DatapathError> {
        let mut ids = BTreeSet::new();
        let fd = self.connects.map().fd().as_fd();
        super::sys::per_cpu_array_for_each::<HotCounters>(
            fd,
            self.cpus,
            COUNTER_BATCH,
            |id, per_cpu| {
                if per_cpu.iter().any(|c| *c != HotCounters::default()) {
                    ids.insert(id);
                }
            },
        )
        .map_err(DatapathError::io(
            "listing",
            self.pin_dir.join(map_names::CONNECTS),
        ))?;
        for id in self.counters.keys() {
            ids.insert(id.map_err(DatapathError::map("listing", map_names::COUNTERS))?);
        }
        Ok(ids.into_iter().collect())
    }

    /// Zeroes an id's counters, so they count from zero for whoever gets the id next: its
    /// hot counters are overwritten with zeros for every possible CPU (an array cannot
    /// delete), its hash entry is deleted (the programs make it again, at zero, on the next
    /// count). Resetting an id that counted nothing, or one beyond the map, is not an error.
    pub fn reset_counters(&mut self, id: u32) -> Result<(), DatapathError> {
        if id < failoverd_shared::MAX_COUNTERS {
            let zero = PerCpuValues::try_from(vec![HotCounters::default(); self.cpus])
                .map_err(DatapathError::io("reading", POSSIBLE_CPUS))?;
            self.connects
                .set(id, zero, 0)
                .map_err(DatapathError::map("zeroing", map_names::CONNECTS))?;
        }
        match self.counters.remove(&id) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {
                Ok(())
            }
            Err(e) => Err(DatapathError::map("deleting from", map_names::COUNTERS)(e)),
        }
    }

    /// An id's per-CPU hot counters; none for an id beyond the array.
    fn hot_per_cpu(&self, id: u32) -> Result<Vec<HotCounters>, DatapathError> {
        if id >= failoverd_shared::MAX_COUNTERS {
            return Ok(Vec::new());
        }
        self.connects
            .get(&id, 0)
            .map(|values| values.iter().copied().collect())
            .map_err(DatapathError::map("reading", map_names::CONNECTS))
    }

    /// An id's per-CPU cold counters; none when the hash holds no entry for it.
    fn cold_per_cpu(&self, id: u32) -> Result<Vec<Counters>, DatapathError> {
        match self.counters.get(&id, 0) {
            Ok(values) => Ok(values.iter().copied().collect()),
            Err(MapError::KeyNotFound) => Ok(Vec::new()),
            Err(e) => Err(DatapathError::map("reading", map_names::COUNTERS)(e)),
        }
    }

    /// The kernel ids of the maps these handles write.
    pub fn map_ids(&self) -> Result<[(&'static str, u32); 5], DatapathError> {
        let id = |map: &MapData, name: &'static str| {
            map.info()
                .map(|info| (name, info.id()))
                .map_err(DatapathError::map("reading info of", name))
        };
        Ok([
            id(self.services.map(), map_names::SERVICES)?,
            id(self.counters.map(), map_names::COUNTERS)?,
            id(self.connects.map(), map_names::CONNECTS)?,
            id(self.reverse.map(), map_names::REVERSE)?,
            id(self.passive.map(), map_names::PASSIVE)?,
        ])
    }

    /// The highest generation any table carries (0 when there are none).
    pub fn max_generation(&self) -> Result<u64, DatapathError> {
        Ok(self
            .tables()?
            .values()
            .map(|t| t.generation)
            .max()
            .unwrap_or(0))
    }

    /// Counters of one id, summed over CPUs and over both maps; zero when nothing was
    /// counted.
    pub fn counters(&self, id: u32) -> Result<CounterTotals, DatapathError> {
        let hot = self
            .hot_per_cpu(id)?
            .iter()
            .fold(CounterTotals::default(), |acc, c| CounterTotals {
                connects: acc.connects + c.connects,
                established: acc.established + c.established,
                ..acc
            });
        Ok(self
            .cold_per_cpu(id)?
            .iter()
            .fold(hot, |acc, c| CounterTotals {
                connects: acc.connects,
                rejected: acc.rejected + c.rejected,
                no_sock_storage: acc.no_sock_storage + c.no_sock_storage,
                bad_table: acc.bad_table + c.bad_table,
                family_mismatch: acc.family_mismatch + c.family_mismatch,
                established: acc.established,
                connect_failures: acc.connect_failures + c.connect_failures,
                syn_timeouts: acc.syn_timeouts + c.syn_timeouts,
                diverted: acc.diverted + c.diverted,
            }))
    }
}
