//! The layout contract of the pinned maps, and the check that runs before any pinned map is reused.
//!
//! aya reuses a map pinned under the same name without looking at it; a map
//! left by a failoverd of another layout would then be read and written with
//! the wrong offsets. Every pinned map is checked here first.

use std::{mem::size_of, path::Path};

use aya::maps::{Array, MapData, MapType};
use failoverd_shared::{
    map_names, Counters, HotCounters, Meta, Passive, Reverse, Service, SockState, VipKey,
};

use super::DatapathError;

/// BPF_F_NO_PREALLOC: elements are allocated on update and freed after RCU.
const NO_PREALLOC: u32 = 1;

/// What a pinned map must look like to be reused.
struct Expected {
    name: &'static str,
    map_type: MapType,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    flags: u32,
}

fn expected() -> [Expected; 9] {
    [
        Expected {
            name: map_names::SERVICES,
            map_type: MapType::Hash,
            key_size: size_of::<VipKey>() as u32,
            value_size: size_of::<Service>() as u32,
            max_entries: failoverd_shared::MAX_SERVICES,
            flags: NO_PREALLOC,
        },
        Expected {
            name: map_names::SOCKETS,
            map_type: MapType::SkStorage,
            key_size: size_of::<i32>() as u32,
            value_size: size_of::<SockState>() as u32,
            max_entries: 0,
            flags: NO_PREALLOC,
        },
        Expected {
            name: map_names::COUNTERS,
            map_type: MapType::PerCpuHash,
            key_size: size_of::<u32>() as u32,
            value_size: size_of::<Counters>() as u32,
            max_entries: failoverd_shared::MAX_COUNTERS,
            flags: NO_PREALLOC,
        },
        Expected {
            name: map_names::CONNECTS,
            map_type: MapType::PerCpuArray,
            key_size: size_of::<u32>() as u32,
            value_size: size_of::<HotCounters>() as u32,
            max_entries: failoverd_shared::MAX_COUNTERS,
            flags: 0,
        },
        Expected {
            name: map_names::META,
            map_type: MapType::Array,
            key_size: size_of::<u32>() as u32,
            value_size: size_of::<Meta>() as u32,
            max_entries: 1,
            flags: 0,
        },
        Expected {
            name: map_names::REVERSE,
            map_type: MapType::Hash,
            key_size: size_of::<VipKey>() as u32,
            value_size: size_of::<Reverse>() as u32,
            max_entries: failoverd_shared::MAX_COUNTERS,
            flags: NO_PREALLOC,
        },
        Expected {
            name: map_names::PASSIVE,
            map_type: MapType::Array,
            key_size: size_of::<u32>() as u32,
            value_size: size_of::<Passive>() as u32,
            max_entries: failoverd_shared::MAX_COUNTERS,
            flags: 0,
        },
        Expected {
            name: map_names::EVENTS,
            map_type: MapType::RingBuf,
            key_size: 0,
            value_size: 0,
            max_entries: failoverd_shared::EVENTS_BYTES,
            flags: 0,
        },
        Expected {
            name: map_names::TERMINATE,
            map_type: MapType::Hash,
            key_size: size_of::<u32>() as u32,
            value_size: size_of::<u8>() as u32,
            max_entries: failoverd_shared::MAX_TERMINATE_TARGETS,
            flags: 0,
        },
    ]
}

/// What the pin directory held before this process touched it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PinnedState {
    /// How many of the maps were pinned (all checked and matching).
    pub maps_pinned: usize,
    /// Whether the meta map (checked and matching) was among them.
    pub meta_pinned: bool,
}

/// The layout version a pinned map's name carries (`failoverd_<what>_v<N>`).
fn name_version(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("failoverd_")?;
    let (_, version) = rest.rsplit_once("_v")?;
    version.parse().ok()
}

/// Refuses a pin directory holding maps of another layout version: their
/// names differ from this build's, so aya would not reuse them, but the
/// pinned links run programs that read them. Adopting those links would swap
/// in programs reading new, empty maps, and every VIP would pass through
/// untranslated until the daemon wrote its tables again.
fn check_other_versions(pin_dir: &Path) -> Result<(), DatapathError> {
    let Ok(entries) = std::fs::read_dir(pin_dir) else {
        // Not created yet: nothing is pinned.
        return Ok(());
    };
    for entry in entries {
        let entry = entry.map_err(DatapathError::io("listing", pin_dir))?;
        let name = entry.file_name();
        let Some(version) = name_version(&name.to_string_lossy()) else {
            continue;
        };
        if version != failoverd_shared::LAYOUT_VERSION {
            return Err(DatapathError::LayoutMismatch {
                path: entry.path(),
                pin_dir: pin_dir.to_path_buf(),
                detail: format!(
                    "a map of layout v{version}; this failoverd uses v{}",
                    failoverd_shared::LAYOUT_VERSION
                ),
            });
        }
    }
    Ok(())
}

/// Checks every map pinned under `pin_dir` against this build's layout, and
/// that no map of another layout version is pinned there.
pub fn check_pinned_maps(pin_dir: &Path) -> Result<PinnedState, DatapathError> {
    check_other_versions(pin_dir)?;
    let mut state = PinnedState {
        maps_pinned: 0,
        meta_pinned: false,
    };
    for want in expected() {
        let path = pin_dir.join(want.name);
        if !path.exists() {
            continue;
        }
        let mismatch = |detail: String| DatapathError::LayoutMismatch {
            path: path.clone(),
            pin_dir: pin_dir.to_path_buf(),
            detail,
        };
        let data =
            MapData::from_pin(&path).map_err(DatapathError::map("opening pinned", want.name))?;
        let info = data
            .info()
            .map_err(DatapathError::map("reading info of", want.name))?;
        let map_type = info
            .map_type()
            .map_err(DatapathError::map("reading type of", want.name))?;
        if map_type != want.map_type {
            return Err(mismatch(format!(
                "type {map_type:?}, expected {:?}",
                want.map_type
            )));
        }
        let found = (
            info.key_size(),
            info.value_size(),
            info.max_entries(),
            info.map_flags(),
        );
        let wanted = (want.key_size, want.value_size, want.max_entries, want.flags);
        if found != wanted {
            return Err(mismatch(format!(
                "key/value size, max entries, flags {found:?}, expected {wanted:?}"
            )));
        }
        if want.name == map_names::META {
            let meta: Array<MapData, Meta> = Array::try_from(aya::maps::Map::Array(data))
                .map_err(DatapathError::map("opening", map_names::META))?;
            let found = meta
                .get(&0, 0)
                .map_err(DatapathError::map("reading", map_names::META))?;
            // An all-zero meta is a map whose creator died before writing it.
            if found != Meta::CURRENT && found != Meta::default() {
                return Err(mismatch(format!(
                    "layout {found:?}, this failoverd writes {:?}",
                    Meta::CURRENT
                )));
            }
            state.meta_pinned = found == Meta::CURRENT;
        }
        state.maps_pinned += 1;
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_names_carry_their_layout_version() {
        assert_eq!(name_version("failoverd_services_v1"), Some(1));
        assert_eq!(name_version("failoverd_counters_v12"), Some(12));
        assert_eq!(
            name_version(map_names::SERVICES),
            Some(failoverd_shared::LAYOUT_VERSION)
        );
        assert_eq!(name_version("links"), None);
        assert_eq!(name_version("failoverd_notes"), None);
    }
}
