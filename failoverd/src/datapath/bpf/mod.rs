//! The kernel datapath: failoverd's BPF programs on a cgroup's socket hooks, with pinned maps and links.
//!
//! Everything is pinned under one directory on bpffs: the maps (so tables
//! survive the daemon) and the links (so the hooks stay attached when it
//! exits or crashes). Opening the datapath adopts whatever is pinned there
//! without clearing a single table.

mod bpffs;
mod cgroup;
mod error;
mod events;
mod layout;
mod links;
mod maps;
mod reverse;
mod sockdiag;
mod sys;
mod terminate;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use aya::{
    maps::{Array, HashMap, MapData, RingBuf},
    Ebpf, EbpfLoader,
};
use failoverd_shared::{map_names, Meta};

pub use cgroup::{cgroup2_mount, CgroupSpec};
pub use error::DatapathError;
pub use links::AttachReport;
pub use maps::PinnedMaps;

use super::{ConnectEvents, CounterTotals, Datapath, InstalledTable, Terminated, Vip, VipTable};

/// The BPF object compiled from `bpf/failoverd.bpf.c` by the build script.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/failoverd.bpf.o"));

/// Where the datapath attaches and pins.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatapathConfig {
    /// The cgroup whose processes see the VIPs. Default: the cgroup v2 root.
    pub cgroup: CgroupSpec,
    /// Where maps and links are pinned. Default: `/sys/fs/bpf/failoverd`.
    pub pin_dir: PathBuf,
}

impl Default for DatapathConfig {
    fn default() -> Self {
        DatapathConfig {
            cgroup: CgroupSpec::Auto,
            pin_dir: crate::dirs::default_pin_dir(),
        }
    }
}

/// failoverd's programs loaded, attached to a cgroup and pinned; tables written through its maps.
pub struct BpfDatapath {
    maps: PinnedMaps,
    cgroup: PathBuf,
    /// The kernel's id of `cgroup`: what a still-attached link reports.
    cgroup_id: u64,
    attach: AttachReport,
    adopted_maps: usize,
    next_generation: u64,
    /// The connect-failure ring buffer until the daemon takes it.
    events: Option<events::RingBufEvents>,
    /// Socket termination, or why this kernel cannot do it.
    terminator: Result<terminate::Terminator, String>,
    // Keeps the loaded programs open while this value lives (the pinned links keep
    // the hooks attached after it is gone) and runs the termination iterators.
    ebpf: Ebpf,
}

impl std::fmt::Debug for BpfDatapath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BpfDatapath")
            .field("pin_dir", &self.maps.pin_dir())
            .field("cgroup", &self.cgroup)
            .field("attach", &self.attach)
            .finish_non_exhaustive()
    }
}

impl BpfDatapath {
    /// Loads the programs, reusing pinned maps, and attaches or adopts the hooks.
    ///
    /// Pinned maps are checked against this build's layout before anything is
    /// reused; a mismatch is refused with [`DatapathError::LayoutMismatch`] and
    /// nothing is written. Tables already pinned stay exactly as they are.
    pub fn open(config: &DatapathConfig) -> Result<Self, DatapathError> {
        check_capabilities()?;
        let cgroup = cgroup::resolve(&config.cgroup)?;
        let pin_dir = config.pin_dir.as_path();
        bpffs::prepare_pin_dir(pin_dir)?;
        let pinned = layout::check_pinned_maps(pin_dir)?;

        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(pin_dir)
            .load(OBJECT)
            .map_err(|e| DatapathError::Load {
                source: Box::new(e),
            })?;
        // Programs first: they hold the map fds (see aya's notes in shared/NOTES.md).
        for hook in &links::HOOKS {
            links::CgroupProgram::find(&mut ebpf, hook.program)?
                .load()
                .map_err(links::program_error("loading", hook.program))?;
        }
        // Termination is an extra: a kernel without the socket iterators still
        // translates, and says at start why it cannot terminate.
        let iterators = terminate::load(&mut ebpf).map_err(|e| e.to_string());
        if !pinned.meta_pinned {
            let meta = ebpf
                .map_mut(map_names::META)
                .ok_or(DatapathError::NotPinned {
                    pin_dir: pin_dir.to_path_buf(),
                    path: pin_dir.join(map_names::META),
                })?;
            let mut meta: Array<&mut MapData, Meta> =
                Array::try_from(meta).map_err(DatapathError::map("opening", map_names::META))?;
            meta.set(0, Meta::CURRENT, 0)
                .map_err(DatapathError::map("writing", map_names::META))?;
        }
        let attach = links::attach_all(&mut ebpf, &cgroup, pin_dir)?;
        let cgroup_id = cgroup::cgroup_id(&cgroup)?;
        let maps = PinnedMaps::from_ebpf(&mut ebpf, pin_dir)?;
        let next_generation = maps.max_generation()? + 1;
        let missing = |name: &str| DatapathError::NotPinned {
            pin_dir: pin_dir.to_path_buf(),
            path: pin_dir.join(name),
        };
        let ring = ebpf
            .take_map(map_names::EVENTS)
            .ok_or_else(|| missing(map_names::EVENTS))?;
        let ring =
            RingBuf::try_from(ring).map_err(DatapathError::map("opening", map_names::EVENTS))?;
        let targets = ebpf
            .take_map(map_names::TERMINATE)
            .ok_or_else(|| missing(map_names::TERMINATE))?;
        let targets: HashMap<MapData, u32, u8> = HashMap::try_from(targets)
            .map_err(DatapathError::map("opening", map_names::TERMINATE))?;
        let terminator = iterators.map(|()| terminate::Terminator::new(targets));
        match &terminator {
            Ok(_) => tracing::info!(
                "socket termination: BPF socket iterators find translated sockets, sock_diag SOCK_DESTROY aborts them"
            ),
            Err(why) => tracing::warn!(error = %why, "socket termination unavailable on this kernel"),
        }
        tracing::info!(
            cgroup = %cgroup.display(),
            pin_dir = %pin_dir.display(),
            adopted_maps = pinned.maps_pinned,
            attached = attach.attached,
            swapped = attach.updated,
            kept = attach.kept,
            "datapath ready"
        );
        Ok(BpfDatapath {
            maps,
            cgroup,
            cgroup_id,
            attach,
            adopted_maps: pinned.maps_pinned,
            next_generation,
            events: Some(events::RingBufEvents::new(ring)),
            terminator,
            ebpf,
        })
    }

    /// The cgroup directory the hooks are attached to.
    pub fn cgroup(&self) -> &Path {
        &self.cgroup
    }

    /// What attaching did: hooks attached anew, swapped, or kept.
    pub fn attach_report(&self) -> AttachReport {
        self.attach
    }

    /// How many maps were already pinned and were reused.
    pub fn adopted_maps(&self) -> usize {
        self.adopted_maps
    }
}

impl Datapath for BpfDatapath {
    fn apply(&mut self, table: &VipTable) -> Result<(), DatapathError> {
        self.maps.write_table(table, self.next_generation)?;
        self.next_generation += 1;
        Ok(())
    }

    fn take_connect_events(&mut self) -> Option<Box<dyn ConnectEvents>> {
        self.events
            .take()
            .map(|events| Box::new(events) as Box<dyn ConnectEvents>)
    }

    fn clear_suspect(&mut self, backend_id: u32) -> Result<(), DatapathError> {
        self.maps.clear_suspect(backend_id)
    }

    fn terminate(&mut self, backend_ids: &[u32]) -> Result<Terminated, DatapathError> {
        match &mut self.terminator {
            Ok(terminator) => terminator.run(&mut self.ebpf, backend_ids),
            Err(why) => Err(DatapathError::Unsupported {
                what: "socket termination",
                detail: why.clone(),
            }),
        }
    }

    fn remove(&mut self, vip: &Vip) -> Result<(), DatapathError> {
        self.maps.remove(vip)
    }

    fn tables(&self) -> Result<BTreeMap<Vip, InstalledTable>, DatapathError> {
        self.maps.tables()
    }

    fn table(&self, vip: &Vip) -> Result<Option<InstalledTable>, DatapathError> {
        self.maps.table(vip)
    }

    fn counters(&self, id: u32) -> Result<CounterTotals, DatapathError> {
        self.maps.counters(id)
    }

    fn counter_ids(&self) -> Result<Vec<u32>, DatapathError> {
        self.maps.counter_ids()
    }

    fn reset_counters(&mut self, id: u32) -> Result<(), DatapathError> {
        self.maps.reset_counters(id)
    }

    /// The maps this process writes must still be the pinned ones, and every
    /// pinned link still attached to the cgroup. This process's map fds keep
    /// the maps alive whatever happens to the pins, so writes keep
    /// "succeeding" after `failoverd cleanup`; only this check notices that
    /// the kernel no longer uses them.
    fn check_intact(&self) -> Result<(), DatapathError> {
        let pin_dir = self.maps.pin_dir();
        let gone = |detail: String| DatapathError::Detached {
            pin_dir: pin_dir.to_path_buf(),
            detail,
        };
        for (name, id) in self.maps.map_ids()? {
            let path = pin_dir.join(name);
            if !path.exists() {
                return Err(gone(format!("map pin {} was removed", path.display())));
            }
            let pinned = aya::maps::MapData::from_pin(&path)
                .and_then(|data| data.info())
                .map_err(DatapathError::map("opening pinned", name))?;
            if pinned.id() != id {
                return Err(gone(format!(
                    "map pin {} now names map id {}, this process writes id {id}",
                    path.display(),
                    pinned.id()
                )));
            }
        }
        for hook in &links::HOOKS {
            let pin = links::link_pin_path(pin_dir, hook.program);
            if !pin.exists() {
                return Err(gone(format!("link pin {} was removed", pin.display())));
            }
            let info = sys::obj_get(&pin)
                .and_then(|fd| sys::cgroup_link_info(std::os::fd::AsFd::as_fd(&fd)))
                .map_err(|source| DatapathError::Link {
                    op: "reading info of",
                    path: pin.clone(),
                    source,
                })?;
            // A detached cgroup link reports cgroup id 0.
            if info.cgroup_id != self.cgroup_id {
                return Err(gone(format!(
                    "link {} is no longer attached to {}",
                    pin.display(),
                    self.cgroup.display()
                )));
            }
        }
        Ok(())
    }
}

/// Checks up front for what the kernel would refuse later with a bare EPERM.
fn check_capabilities() -> Result<(), DatapathError> {
    let caps =
        sys::effective_capabilities().map_err(DatapathError::io("reading", "/proc/self/status"))?;
    let has = |bit: u32| caps & (1u64 << bit) != 0;
    let admin = has(sys::CAP_SYS_ADMIN);
    let mut missing = Vec::new();
    if !(has(sys::CAP_BPF) || admin) {
        missing.push("CAP_BPF");
    }
    if !(has(sys::CAP_NET_ADMIN) || admin) {
        missing.push("CAP_NET_ADMIN");
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(DatapathError::MissingCapability { missing })
    }
}

/// What [`cleanup`] removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CleanupReport {
    /// Hook links detached and unpinned.
    pub links: usize,
    /// Map pins removed.
    pub maps: usize,
}

/// Detaches every hook and removes every pin failoverd owns under `pin_dir`,
/// then the directory itself if nothing else is left in it.
///
/// Connects to VIPs are no longer translated afterwards. Files failoverd does
/// not own are left alone.
pub fn cleanup(pin_dir: &Path) -> Result<CleanupReport, DatapathError> {
    let mut report = CleanupReport::default();
    if !pin_dir.exists() {
        return Ok(report);
    }
    report.links = links::detach_all(pin_dir)?;
    let links_dir = pin_dir.join("links");
    if links_dir.exists()
        && links_dir
            .read_dir()
            .map(|mut d| d.next().is_none())
            .unwrap_or(false)
    {
        std::fs::remove_dir(&links_dir).map_err(DatapathError::io("removing", &links_dir))?;
    }
    let entries = std::fs::read_dir(pin_dir).map_err(DatapathError::io("listing", pin_dir))?;
    for entry in entries {
        let entry = entry.map_err(DatapathError::io("listing", pin_dir))?;
        let name = entry.file_name();
        // Maps of any layout version: `failoverd_<thing>_v<N>`.
        if name.to_string_lossy().starts_with("failoverd_") {
            let path = entry.path();
            std::fs::remove_file(&path).map_err(DatapathError::io("removing", &path))?;
            report.maps += 1;
        }
    }
    match std::fs::remove_dir(pin_dir) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => {
            tracing::warn!(pin_dir = %pin_dir.display(), "pin directory holds files failoverd does not own; left in place");
        }
        Err(e) => return Err(DatapathError::io("removing", pin_dir)(e)),
    }
    Ok(report)
}
