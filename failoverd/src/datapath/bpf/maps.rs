//! The services and counters maps, opened from a freshly loaded object or straight from their pins.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use aya::{
    maps::{HashMap, IterableMap, Map, MapData, MapError, PerCpuHashMap},
    Ebpf,
};
use failoverd_shared::{map_names, Counters, Service, VipKey};

use super::{layout, DatapathError};
use crate::datapath::{CounterTotals, InstalledTable, Vip, VipTable};

/// Handles on the maps failoverd reads and writes.
pub struct PinnedMaps {
    services: HashMap<MapData, VipKey, Service>,
    counters: PerCpuHashMap<MapData, u32, Counters>,
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
        Self::from_maps(services, counters, pin_dir)
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
            open(map_names::SERVICES)?,
            open(map_names::COUNTERS)?,
            pin_dir,
        )
    }

    fn from_maps(services: Map, counters: Map, pin_dir: &Path) -> Result<Self, DatapathError> {
        Ok(PinnedMaps {
            services: HashMap::try_from(services)
                .map_err(DatapathError::map("opening", map_names::SERVICES))?,
            counters: PerCpuHashMap::try_from(counters)
                .map_err(DatapathError::map("opening", map_names::COUNTERS))?,
            pin_dir: pin_dir.to_path_buf(),
        })
    }

    /// The pin directory the maps live in.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Replaces a VIP's table in one map update.
    pub fn write(&mut self, vip: &Vip, value: &Service) -> Result<(), DatapathError> {
        self.services
            .insert(vip.key(), value, 0)
            .map_err(DatapathError::map("writing", map_names::SERVICES))
    }

    /// Removes a VIP; removing one that is absent is not an error.
    pub fn remove(&mut self, vip: &Vip) -> Result<(), DatapathError> {
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

    /// Every id the counters map holds counters for.
    pub fn counter_ids(&self) -> Result<Vec<u32>, DatapathError> {
        self.counters
            .keys()
            .collect::<Result<Vec<u32>, MapError>>()
            .map_err(DatapathError::map("listing", map_names::COUNTERS))
    }

    /// Deletes an id's per-CPU counters; the programs recreate them at zero
    /// on the next count. Deleting an absent id is not an error.
    pub fn reset_counters(&mut self, id: u32) -> Result<(), DatapathError> {
        match self.counters.remove(&id) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {
                Ok(())
            }
            Err(e) => Err(DatapathError::map("deleting from", map_names::COUNTERS)(e)),
        }
    }

    /// The kernel ids of the services and counters maps these handles write.
    pub fn map_ids(&self) -> Result<[(&'static str, u32); 2], DatapathError> {
        let services = self
            .services
            .map()
            .info()
            .map_err(DatapathError::map("reading info of", map_names::SERVICES))?;
        let counters = self
            .counters
            .map()
            .info()
            .map_err(DatapathError::map("reading info of", map_names::COUNTERS))?;
        Ok([
            (map_names::SERVICES, services.id()),
            (map_names::COUNTERS, counters.id()),
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

    /// Counters of one id, summed over CPUs; zero when nothing was counted.
    pub fn counters(&self, id: u32) -> Result<CounterTotals, DatapathError> {
        let per_cpu = match self.counters.get(&id, 0) {
            Ok(values) => values,
            Err(MapError::KeyNotFound) => return Ok(CounterTotals::default()),
            Err(e) => return Err(DatapathError::map("reading", map_names::COUNTERS)(e)),
        };
        Ok(per_cpu
            .iter()
            .fold(CounterTotals::default(), |acc, c| CounterTotals {
                connects: acc.connects + c.connects,
                rejected: acc.rejected + c.rejected,
                no_sock_storage: acc.no_sock_storage + c.no_sock_storage,
                bad_table: acc.bad_table + c.bad_table,
                family_mismatch: acc.family_mismatch + c.family_mismatch,
                established: acc.established + c.established,
                connect_failures: acc.connect_failures + c.connect_failures,
                syn_timeouts: acc.syn_timeouts + c.syn_timeouts,
                diverted: acc.diverted + c.diverted,
            }))
    }
}
