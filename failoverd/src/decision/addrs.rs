//! A backend entry's addresses: joining, make-before-break retirement, and removal.
//!
//! An IP backend has one address for life. A hostname backend has whatever its name
//! resolves to; when the answer changes, a live address that is no longer in it keeps its
//! connections until every address that replaced it has a first verdict, so a DNS change
//! never leaves a gap while the new address is probed for the first time.

use std::net::SocketAddr;

use tokio::time::Instant;

use super::{
    backend::{Backend, BackendKey},
    input::CounterIds,
    service::ServiceState,
    transition::Transition,
};
use crate::config::BackendAddress;

impl ServiceState {
    /// Sets the addresses of one config entry: new ones join (unknown until probed), gone
    /// ones leave (a live one only once its replacements have verdicts).
    pub(super) fn set_addrs(
        &mut self,
        config_index: usize,
        addrs: &[SocketAddr],
        now: Instant,
        ids: &mut dyn CounterIds,
        out: &mut Vec<Transition>,
    ) {
        let Some(entry) = self.config.backends.get(config_index).cloned() else {
            return; // Not an entry of this service's config: nothing to set.
        };
        let gone: Vec<BackendKey> = self
            .backends
            .keys()
            .filter(|k| k.config_index == config_index && !addrs.contains(&k.addr))
            .copied()
            .collect();
        for key in gone {
            let b = &mut self.backends.get_mut(&key).expect("listed above");
            if b.is_live() && !addrs.is_empty() {
                if !b.retiring {
                    b.retiring = true;
                    out.push(Transition::AddressRetiring {
                        backend: b.name.to_string(),
                    });
                }
            } else {
                self.remove_backend(&key, "address no longer resolves", ids, out);
            }
        }
        for &addr in addrs {
            let key = BackendKey { config_index, addr };
            if let Some(b) = self.backends.get_mut(&key) {
                // The name resolves to it again: it stays.
                b.retiring = false;
                continue;
            }
            let id = match self.adopted_id(addr) {
                Some(id) => id,
                None => match ids.allocate() {
                    Ok(id) => id,
                    Err(e) => {
                        out.push(Transition::AddressRefused {
                            addr,
                            why: e.to_string(),
                        });
                        continue;
                    }
                },
            };
            let from_hostname = matches!(entry.address, BackendAddress::Host { .. });
            let mut backend = Backend::new(
                &self.config,
                &self.breaker,
                &entry,
                key,
                from_hostname,
                id,
                now,
            );
            // An id from a pinned table may carry a suspect mark the kernel set while no
            // daemon (or the service's predecessor) was there to confirm or lift it: trust
            // no mark this core did not see. Lifted as soon as a table names the id; a
            // backend that is really dead is marked again after the threshold.
            if self.adopted_id(addr).is_some() {
                backend.passive_mut().marked = true;
            }
            // Drains are keyed by backend name, which for a hostname's addresses is only
            // known here.
            // A restored drain's grace (`drain_after`) counts from now: the core has no wall
            // clock to tell how much of it passed before a restart.
            if let Some(drain) = self.drains.get(&*backend.name).cloned() {
                backend.set_drain(drain, self.config.terminate.drain_after, now);
            }
            if from_hostname {
                out.push(Transition::AddressAdded {
                    backend: backend.name.to_string(),
                });
            }
            self.backends.insert(backend);
        }
    }

    /// Removes retiring addresses whose replacements (the entry's other addresses) all have
    /// verdicts, or that are no longer live themselves.
    pub(super) fn retire_replaced(
        &mut self,
        now: Instant,
        ids: &mut dyn CounterIds,
        out: &mut Vec<Transition>,
    ) {
        let stretch = self.verdict_stretch();
        let done: Vec<BackendKey> = self
            .backends
            .iter()
            .filter(|(key, b)| {
                b.retiring
                    && (!b.is_live()
                        || self.backends.iter().all(|(k, o)| {
                            k.config_index != key.config_index
                                || o.retiring
                                || o.has_verdict(now, stretch)
                        }))
            })
            .map(|(k, _)| *k)
            .collect();
        for key in done {
            self.remove_backend(&key, "address replaced", ids, out);
        }
    }

    /// Forgets a backend and frees its id (unless an adopted table gave it: the address may
    /// come back and continue its counters).
    fn remove_backend(
        &mut self,
        key: &BackendKey,
        why: &'static str,
        ids: &mut dyn CounterIds,
        out: &mut Vec<Transition>,
    ) {
        if let Some(b) = self.backends.remove(key) {
            if !self.adopted_ids.iter().any(|&(_, id)| id == b.id) {
                ids.release(b.id);
            }
            self.effects.removed.push((b.id, b.name.to_string()));
            out.push(Transition::AddressRemoved {
                backend: b.name.to_string(),
                why,
            });
        }
    }
}
