//! The reverse map: which VIP a translated TCP socket to a backend shows as its peer.
//!
//! A TCP connect writes no per-socket state (see `bpf/failoverd.bpf.c`): getpeername and the
//! termination iterator derive the VIP from the backend's address. That works while one VIP
//! owns the address; a second VIP naming the same address gets [`backend_flags::SHARED`] on
//! that backend, and its sockets record the VIP in socket storage instead.

use std::collections::HashMap;

use aya::maps::{HashMap as BpfHashMap, MapData, MapError};
use failoverd_shared::{backend_flags, map_names, Reverse, VipKey};

use super::DatapathError;
use crate::datapath::{Protocol, TableBackend, Vip};

/// The reverse map with a cache of what it holds, so a table write costs no syscall for
/// backends whose entry is already right.
pub struct ReverseMap {
    map: BpfHashMap<MapData, VipKey, Reverse>,
    /// What the map holds, by backend key; loaded on first use (readers never need it).
    cache: Option<Cache>,
}

#[derive(Default)]
struct Cache {
    entries: HashMap<VipKey, Reverse>,
    /// Backend keys each VIP owns, so removing a VIP is not a scan of every entry.
    owned: HashMap<VipKey, Vec<VipKey>>,
}

/// The reverse-map key of a backend of a TCP VIP.
fn backend_key(addr: std::net::SocketAddr) -> VipKey {
    Vip {
        addr,
        protocol: Protocol::Tcp,
    }
    .key()
}

impl ReverseMap {
    /// Wraps the map; nothing is read until the first write.
    pub fn new(map: BpfHashMap<MapData, VipKey, Reverse>) -> Self {
        ReverseMap { map, cache: None }
    }

    /// The map's handle, for its kernel id.
    pub fn map(&self) -> &MapData {
        aya::maps::IterableMap::map(&self.map)
    }

    fn cache<'a>(
        map: &BpfHashMap<MapData, VipKey, Reverse>,
        slot: &'a mut Option<Cache>,
    ) -> Result<&'a mut Cache, DatapathError> {
        if slot.is_none() {
            let mut cache = Cache::default();
            for entry in map.iter() {
                let (key, value) =
                    entry.map_err(DatapathError::map("reading", map_names::REVERSE))?;
                cache.owned.entry(value.vip).or_default().push(key);
                cache.entries.insert(key, value);
            }
            *slot = Some(cache);
        }
        Ok(slot.get_or_insert_with(Cache::default))
    }

    /// Makes `vip` the owner of `backend`'s address when no other VIP is, and returns the
    /// flags its table entry needs: [`backend_flags::SHARED`] when another VIP owns it.
    ///
    /// Called before the table naming the backend is written, so the first connect
    /// translated to it already finds its reverse entry. UDP VIPs never need one (their
    /// sockets always keep storage).
    pub fn claim(
        &mut self,
        vip: &Vip,
        vip_id: u32,
        backend: &TableBackend,
    ) -> Result<u16, DatapathError> {
        if vip.protocol != Protocol::Tcp {
            return Ok(0);
        }
        let key = backend_key(backend.addr);
        let want = Reverse {
            vip: vip.key(),
            vip_id,
            backend_id: backend.id,
        };
        let cache = Self::cache(&self.map, &mut self.cache)?;
        match cache.entries.get(&key) {
            Some(held) if held.vip != want.vip => return Ok(backend_flags::SHARED),
            Some(held) if *held == want => return Ok(0),
            Some(_) => {}
            None => cache.owned.entry(want.vip).or_default().push(key),
        }
        cache.entries.insert(key, want);
        self.map
            .insert(key, want, 0)
            .map_err(DatapathError::map("writing", map_names::REVERSE))?;
        Ok(0)
    }

    /// Forgets every backend address `vip` owns. Entries outlive a backend's leaving the
    /// table (sockets still open to it keep showing the VIP); they go with the VIP.
    pub fn release(&mut self, vip: &Vip) -> Result<(), DatapathError> {
        let vip_key = vip.key();
        let cache = Self::cache(&self.map, &mut self.cache)?;
        let Some(keys) = cache.owned.remove(&vip_key) else {
            return Ok(());
        };
        for key in keys {
            cache.entries.remove(&key);
            match self.map.remove(&key) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(MapError::SyscallError(e))
                    if e.io_error.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(DatapathError::map("removing from", map_names::REVERSE)(e)),
            }
        }
        Ok(())
    }
}
