//! Operator drains, kept in `state_dir` so they survive restarts and reloads.
//!
//! The file is replaced atomically (temp file, fsync, rename, fsync of the
//! directory) before a drain command returns: a crash right after a drain
//! never brings the backend back.

use std::{
    collections::BTreeMap,
    fs::{self, File},
    io::{self, Write},
    path::{Path, PathBuf},
};

use crate::decision::Drain;

/// The file name inside `state_dir`.
pub const DRAINS_FILE: &str = "drains.json";

/// Drained backends: service name → backend name → who, when, why.
pub type Drains = BTreeMap<String, BTreeMap<String, Drain>>;

/// Why drains could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum DrainStoreError {
    /// Reading, writing or renaming failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The file is not valid drains JSON.
    #[error("{path}: not a drains file: {source}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
}

/// Where drains are kept.
#[derive(Clone, Debug)]
pub struct DrainStore {
    path: PathBuf,
}

impl DrainStore {
    /// The store in `state_dir` (created on first save).
    pub fn new(state_dir: &Path) -> Self {
        DrainStore {
            path: state_dir.join(DRAINS_FILE),
        }
    }

    /// The drains file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the drains; none when the file does not exist yet.
    pub fn load(&self) -> Result<Drains, DrainStoreError> {
        let text = match fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Drains::new()),
            Err(source) => {
                return Err(DrainStoreError::Io {
                    op: "reading",
                    path: self.path.clone(),
                    source,
                })
            }
        };
        serde_json::from_str(&text).map_err(|source| DrainStoreError::Corrupt {
            path: self.path.clone(),
            source,
        })
    }

    /// Replaces the file with `drains`, durably.
    pub fn save(&self, drains: &Drains) -> Result<(), DrainStoreError> {
        let io_err = |op, path: &Path| {
            let path = path.to_path_buf();
            move |source| DrainStoreError::Io { op, path, source }
        };
        let dir = self.path.parent().unwrap_or(Path::new("/"));
        fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
        let temp = self.path.with_extension("json.tmp");
        let mut file = File::create(&temp).map_err(io_err("creating", &temp))?;
        let json = serde_json::to_vec_pretty(drains).expect("drains serialize");
        file.write_all(&json).map_err(io_err("writing", &temp))?;
        file.sync_all().map_err(io_err("syncing", &temp))?;
        fs::rename(&temp, &self.path).map_err(io_err("renaming into", &self.path))?;
        // The rename is durable only once the directory entry is on disk.
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err("syncing", dir))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("fo-drains-{tag}-{}", std::process::id()));
        fs::remove_dir_all(&dir).ok();
        dir
    }

    #[test]
    fn a_missing_file_means_no_drains() {
        let dir = temp_dir("missing");
        assert!(DrainStore::new(&dir).load().unwrap().is_empty());
    }

    #[test]
    fn drains_round_trip_and_leave_no_temp_file() {
        let dir = temp_dir("roundtrip");
        let store = DrainStore::new(&dir);
        let mut drains = Drains::new();
        drains.entry("db".into()).or_default().insert(
            "a".into(),
            Drain {
                by: "alice".into(),
                at_unix: 1_700_000_000,
                reason: Some("kernel upgrade".into()),
            },
        );
        store.save(&drains).unwrap();
        assert_eq!(store.load().unwrap(), drains);
        assert!(!dir.join("drains.json.tmp").exists());
        fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_corrupt_file_is_an_error_naming_it() {
        let dir = temp_dir("corrupt");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(DRAINS_FILE), "{not json").unwrap();
        let err = DrainStore::new(&dir).load().unwrap_err().to_string();
        assert!(err.contains("drains.json"), "{err}");
        fs::remove_dir_all(&dir).ok();
    }
}
