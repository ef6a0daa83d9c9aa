//! The fleet's desired state as one daemon sees it, and its copy in `state_dir`.
//!
//! `fleet.json` holds the fleet services this host last *applied* (not merely saw: a set it
//! refused is not what it runs) and the fleet drains it last saw, with the etcd revision. A
//! daemon restarted while etcd is down starts from it, so it comes back with the same fleet
//! services; the drains themselves are also in `drains.json`, marked as fleet drains.

use std::{
    collections::BTreeMap,
    fs::{self, OpenOptions},
    io::{self, Write},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::{
    keys::{Desired, Keys},
    FleetError,
};

/// The file name inside `state_dir`.
pub const FLEET_FILE: &str = "fleet.json";

/// One fleet drain, as stored in etcd under `desired/drains/<service>/<backend>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetDrain {
    /// The user who asked (the control socket's peer on `host`).
    pub by: String,
    /// The host whose daemon wrote it.
    pub host: String,
    /// When, in seconds since the Unix epoch.
    pub at_unix: u64,
    /// The operator's reason, if given.
    #[serde(default)]
    pub reason: Option<String>,
    /// Drain even where it is the last live backend.
    #[serde(default)]
    pub force: bool,
    /// Also abort the sockets each host's VIP sent to the backend (`drain --terminate`).
    #[serde(default)]
    pub terminate: bool,
}

/// Fleet services and drains at one etcd revision.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetState {
    /// The etcd revision this state is at (0: never synced).
    pub revision: i64,
    /// Service name → its document (JSON config text, see `config::fleet`).
    pub services: BTreeMap<String, String>,
    /// Service → backend → drain.
    pub drains: BTreeMap<String, BTreeMap<String, FleetDrain>>,
}

impl FleetState {
    /// Sets (`Some`) or deletes (`None`) one key under `desired/`. A drain value that is not
    /// a drain record is skipped with a warning: one bad key must not block the others.
    pub fn set(&mut self, keys: &Keys, key: &str, value: Option<&[u8]>) {
        match keys.classify(key) {
            Desired::Service(name) => match value {
                Some(v) => {
                    self.services
                        .insert(name.to_owned(), String::from_utf8_lossy(v).into_owned());
                }
                None => {
                    self.services.remove(name);
                }
            },
            Desired::Drain { service, backend } => match value {
                Some(v) => match serde_json::from_slice::<FleetDrain>(v) {
                    Ok(d) => {
                        self.drains
                            .entry(service.to_owned())
                            .or_default()
                            .insert(backend.to_owned(), d);
                    }
                    Err(e) => {
                        tracing::warn!(key, error = %e, "skipping a fleet drain that is not a drain record")
                    }
                },
                None => {
                    if let Some(s) = self.drains.get_mut(service) {
                        s.remove(backend);
                        if s.is_empty() {
                            self.drains.remove(service);
                        }
                    }
                }
            },
            Desired::Other => {}
        }
    }

    /// The number of fleet drains.
    pub fn drain_count(&self) -> usize {
        self.drains.values().map(BTreeMap::len).sum()
    }
}

/// `state_dir/fleet.json`.
#[derive(Clone, Debug)]
pub struct FleetStore {
    path: PathBuf,
}

impl FleetStore {
    /// The store in `state_dir`.
    pub fn new(state_dir: &Path) -> FleetStore {
        FleetStore {
            path: state_dir.join(FLEET_FILE),
        }
    }

    /// The saved state; empty if there is none yet.
    pub fn load(&self) -> Result<FleetState, FleetError> {
        match fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| FleetError::Store {
                op: "parsing",
                path: self.path.clone(),
                source: io::Error::new(io::ErrorKind::InvalidData, e),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(FleetState::default()),
            Err(source) => Err(FleetError::Store {
                op: "reading",
                path: self.path.clone(),
                source,
            }),
        }
    }

    /// Replaces the saved state atomically (temporary file, fsync, rename): a crash leaves
    /// the old state or the new one, never half of one.
    pub fn save(&self, state: &FleetState) -> Result<(), FleetError> {
        let err = |op| {
            let path = self.path.clone();
            move |source| FleetError::Store { op, path, source }
        };
        let dir = self.path.parent().unwrap_or(Path::new("."));
        // An unpredictable name opened with O_EXCL | O_NOFOLLOW: nothing planted at the name
        // is followed or overwritten (same rules as drains.json).
        let tmp = dir.join(format!(".{FLEET_FILE}.{:016x}", fastrand::u64(..)));
        let body = serde_json::to_vec_pretty(state).expect("the fleet state serializes");
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
            .map_err(err("creating"))?;
        let written = file.write_all(&body).and_then(|()| file.sync_all());
        if let Err(e) = written.and_then(|()| fs::rename(&tmp, &self.path)) {
            if let Err(rm) = fs::remove_file(&tmp) {
                tracing::warn!(path = %tmp.display(), error = %rm, "could not remove a temporary file");
            }
            return Err(err("writing")(e));
        }
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(err("syncing the directory of"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain_json() -> &'static [u8] {
        br#"{"by":"alice","host":"h1","at_unix":1,"reason":"kernel"}"#
    }

    #[test]
    fn keys_set_and_delete_services_and_drains() {
        let k = Keys::new("/f/");
        let mut s = FleetState::default();
        s.set(&k, "/f/desired/services/db", Some(b"{}"));
        s.set(&k, "/f/desired/drains/db/a", Some(drain_json()));
        s.set(&k, "/f/desired/drains/db/b", Some(b"not json"));
        s.set(&k, "/f/desired/published", Some(b"{}"));
        assert_eq!(s.services.len(), 1);
        assert_eq!(s.drain_count(), 1);
        assert_eq!(s.drains["db"]["a"].reason.as_deref(), Some("kernel"));
        s.set(&k, "/f/desired/drains/db/a", None);
        s.set(&k, "/f/desired/services/db", None);
        assert_eq!(s, FleetState::default());
    }

    #[test]
    fn the_store_round_trips_and_starts_empty() {
        let dir = std::env::temp_dir().join(format!("fo-fleet-store-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let store = FleetStore::new(&dir);
        assert_eq!(store.load().unwrap(), FleetState::default());
        let mut s = FleetState {
            revision: 7,
            ..FleetState::default()
        };
        s.set(
            &Keys::new("/f/"),
            "/f/desired/drains/db/a",
            Some(drain_json()),
        );
        store.save(&s).unwrap();
        assert_eq!(store.load().unwrap(), s);
        fs::remove_dir_all(&dir).unwrap();
    }
}
