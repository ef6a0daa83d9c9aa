//! Operator drains, kept in `state_dir` so they survive restarts and reloads.
//!
//! The file is replaced atomically (temp file, fsync, rename, fsync of the
//! directory) before a drain command returns: a crash right after a drain
//! never brings the backend back.
//!
//! `state_dir` must belong to the daemon's user and be writable by nobody else (it is created
//! 0700): then nobody else can plant a file or symlink in it. The writes do not rely on that
//! alone: the temporary file has an unpredictable name and is created with `O_CREAT | O_EXCL |
//! O_NOFOLLOW`, so an existing file or symlink at that name is never opened, let alone written
//! through. `drains.json` is 0600: drain reasons are for operators only.

use std::{
    collections::BTreeMap,
    fs::{self, DirBuilder, File, OpenOptions, Permissions},
    io::{self, Read, Write},
    os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use crate::decision::Drain;

/// The file name inside `state_dir`.
pub const DRAINS_FILE: &str = "drains.json";

/// Mode of `state_dir` when failoverd creates it: 0700.
pub const STATE_DIR_MODE: u32 = 0o700;

/// Mode of `drains.json`: 0600.
pub const FILE_MODE: u32 = 0o600;

/// Largest drains file read: 16 MiB (thousands of drains fit in a fraction of that).
const MAX_FILE_BYTES: u64 = 16 << 20;

/// Tries at a fresh temporary name when one is taken (practically never: 64 random bits).
const TEMP_ATTEMPTS: u32 = 8;

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
    /// `state_dir` could be changed by someone other than the daemon's user.
    #[error(
        "control.state_dir {path} is owned by uid {owner} with mode {mode:03o}; it must be owned by \
         uid {want_uid} (the daemon's user) and not writable by group or others, or anyone could \
         plant files in it: chown {want_uid} {path} && chmod 700 {path}",
        path = path.display()
    )]
    UnsafeStateDir {
        /// The directory.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// Its permission bits.
        mode: u32,
        /// The daemon's effective uid.
        want_uid: u32,
    },
    /// `state_dir` or the drains file is not the kind of file it should be.
    #[error("{path}: {what}", path = path.display())]
    WrongKind {
        /// The path.
        path: PathBuf,
        /// What is wrong: `is not a directory`, `is a symlink`, `is not a regular file`...
        what: &'static str,
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

    fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("/"))
    }

    /// Reads the drains; none when `state_dir` or the file does not exist yet.
    ///
    /// Refuses a `state_dir` others can write to, and a drains file that is a symlink or not a
    /// regular file (a FIFO would block the daemon's start).
    pub fn load(&self) -> Result<Drains, DrainStoreError> {
        match check_state_dir(self.dir()) {
            Err(DrainStoreError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                return Ok(Drains::new())
            }
            checked => checked?,
        }
        let read_err = |source| DrainStoreError::Io {
            op: "reading",
            path: self.path.clone(),
            source,
        };
        // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer.
        let file = match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&self.path)
        {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Drains::new()),
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                return Err(DrainStoreError::WrongKind {
                    path: self.path.clone(),
                    what: "is a symlink; refusing to follow it",
                })
            }
            Err(e) => return Err(read_err(e)),
        };
        if !file.metadata().map_err(read_err)?.is_file() {
            return Err(DrainStoreError::WrongKind {
                path: self.path.clone(),
                what: "is not a regular file",
            });
        }
        let mut text = String::new();
        file.take(MAX_FILE_BYTES)
            .read_to_string(&mut text)
            .map_err(read_err)?;
        serde_json::from_str(&text).map_err(|source| DrainStoreError::Corrupt {
            path: self.path.clone(),
            source,
        })
    }

    /// Replaces the file with `drains`, durably; creates `state_dir` (0700) when missing.
    pub fn save(&self, drains: &Drains) -> Result<(), DrainStoreError> {
        let io_err = |op, path: &Path| {
            let path = path.to_path_buf();
            move |source| DrainStoreError::Io { op, path, source }
        };
        let dir = self.dir();
        create_state_dir(dir)?;
        check_state_dir(dir)?;
        let json = serde_json::to_vec_pretty(drains).expect("drains serialize");
        let (temp, mut file) = create_temp(dir)?;
        let written = file
            .write_all(&json)
            .map_err(io_err("writing", &temp))
            .and_then(|()| file.sync_all().map_err(io_err("syncing", &temp)))
            .and_then(|()| {
                fs::rename(&temp, &self.path).map_err(io_err("renaming into", &self.path))
            });
        if let Err(e) = written {
            if let Err(cleanup) = fs::remove_file(&temp) {
                tracing::warn!(path = %temp.display(), error = %cleanup, "cannot remove the temporary drains file");
            }
            return Err(e);
        }
        // The rename is durable only once the directory entry is on disk.
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err("syncing", dir))?;
        Ok(())
    }
}

/// Creates `dir` with mode 0700 when missing (its parents with the default mode).
fn create_state_dir(dir: &Path) -> Result<(), DrainStoreError> {
    let create_err = |source| DrainStoreError::Io {
        op: "creating",
        path: dir.to_path_buf(),
        source,
    };
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(create_err)?;
    }
    match DirBuilder::new().mode(STATE_DIR_MODE).create(dir) {
        // The mode given to mkdir is masked by the umask: set it exactly.
        Ok(()) => {
            fs::set_permissions(dir, Permissions::from_mode(STATE_DIR_MODE)).map_err(create_err)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(create_err(e)),
    }
}

/// `dir` must be a directory owned by this process's effective uid and not writable by group
/// or others.
fn check_state_dir(dir: &Path) -> Result<(), DrainStoreError> {
    let meta = fs::metadata(dir).map_err(|source| DrainStoreError::Io {
        op: "checking",
        path: dir.to_path_buf(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(DrainStoreError::WrongKind {
            path: dir.to_path_buf(),
            what: "control.state_dir is not a directory",
        });
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let want_uid = unsafe { libc::geteuid() };
    let mode = meta.mode() & 0o7777;
    if meta.uid() != want_uid || mode & 0o022 != 0 {
        return Err(DrainStoreError::UnsafeStateDir {
            path: dir.to_path_buf(),
            owner: meta.uid(),
            mode,
            want_uid,
        });
    }
    Ok(())
}

/// Creates `.drains.json.<pid>.<64 random bits>.tmp` in `dir`, mode 0600, failing rather than
/// opening anything (file or symlink) already at that name.
fn create_temp(dir: &Path) -> Result<(PathBuf, File), DrainStoreError> {
    let mut last = None;
    for _ in 0..TEMP_ATTEMPTS {
        let temp = dir.join(format!(
            ".{DRAINS_FILE}.{}.{:016x}.tmp",
            std::process::id(),
            fastrand::u64(..)
        ));
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&temp)
        {
            Ok(file) => return Ok((temp, file)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some((temp, e)),
            Err(source) => {
                return Err(DrainStoreError::Io {
                    op: "creating",
                    path: temp,
                    source,
                })
            }
        }
    }
    let (path, source) = last.expect("at least one attempt");
    Err(DrainStoreError::Io {
        op: "creating",
        path,
        source,
    })
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
                fleet: false,
            },
        );
        store.save(&drains).unwrap();
        assert_eq!(store.load().unwrap(), drains);
        let left: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, [DRAINS_FILE], "only the drains file is left");
        fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_corrupt_file_is_an_error_naming_it() {
        let dir = temp_dir("corrupt");
        create_state_dir(&dir).unwrap();
        fs::write(dir.join(DRAINS_FILE), "{not json").unwrap();
        let err = DrainStore::new(&dir).load().unwrap_err().to_string();
        assert!(err.contains("drains.json"), "{err}");
        fs::remove_dir_all(&dir).ok();
    }

    /// One drain, from the file format itself (whatever type the daemon keeps drains in).
    fn one_drain() -> Drains {
        serde_json::from_str(
            r#"{"db": {"a": {"by": "alice", "at_unix": 1700000000, "reason": "secret maintenance ticket"}}}"#,
        )
        .unwrap()
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().mode() & 0o7777
    }

    #[test]
    fn state_dir_is_created_0700_and_the_file_is_0600() {
        let dir = temp_dir("modes");
        let store = DrainStore::new(&dir);
        store.save(&one_drain()).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(store.path()), 0o600);
        fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn planted_symlinks_are_left_untouched_and_their_targets_unwritten() {
        let dir = temp_dir("symlink");
        create_state_dir(&dir).unwrap();
        let victim = std::env::temp_dir().join(format!("fo-drains-victim-{}", std::process::id()));
        fs::write(&victim, "precious\n").unwrap();
        // The old fixed temporary name, and the guessable part of the new one.
        let planted = [
            dir.join("drains.json.tmp"),
            dir.join(format!(".drains.json.{}.tmp", std::process::id())),
        ];
        for link in &planted {
            std::os::unix::fs::symlink(&victim, link).unwrap();
        }
        let store = DrainStore::new(&dir);
        store.save(&one_drain()).unwrap();
        store.save(&Drains::new()).unwrap();
        assert_eq!(fs::read_to_string(&victim).unwrap(), "precious\n");
        for link in &planted {
            assert!(fs::symlink_metadata(link).unwrap().file_type().is_symlink());
            assert_eq!(fs::read_link(link).unwrap(), victim);
        }
        assert!(fs::symlink_metadata(store.path()).unwrap().is_file());
        assert_eq!(mode(store.path()), 0o600);
        fs::remove_dir_all(&dir).ok();
        fs::remove_file(&victim).ok();
    }

    #[test]
    fn an_existing_temp_name_is_never_opened() {
        let dir = temp_dir("excl");
        create_state_dir(&dir).unwrap();
        let (temp, _file) = create_temp(&dir).unwrap();
        // The same name again: O_EXCL refuses it (create_temp would pick another name).
        let again = OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&temp);
        assert_eq!(again.unwrap_err().kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(mode(&temp), 0o600);
        fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_state_dir_others_can_write_is_refused_and_left_alone() {
        let dir = temp_dir("loose");
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, Permissions::from_mode(0o777)).unwrap();
        let store = DrainStore::new(&dir);
        let err = store.save(&one_drain()).unwrap_err().to_string();
        assert!(
            err.contains("mode 777") && err.contains(&*dir.to_string_lossy()),
            "{err}"
        );
        assert!(store.load().is_err(), "loading from it is refused too");
        assert!(!store.path().exists());
        assert_eq!(
            mode(&dir),
            0o777,
            "the administrator's directory keeps its mode"
        );
        fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_state_dir_owned_by_another_user_is_refused() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return; // only root can give a directory away
        }
        let dir = temp_dir("owner");
        create_state_dir(&dir).unwrap();
        std::os::unix::fs::chown(&dir, Some(65534), None).unwrap();
        let err = DrainStore::new(&dir).load().unwrap_err().to_string();
        assert!(err.contains("owned by uid 65534"), "{err}");
        fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_fifo_or_symlink_as_the_drains_file_is_refused_without_blocking() {
        let dir = temp_dir("fifo");
        create_state_dir(&dir).unwrap();
        let store = DrainStore::new(&dir);
        let path = std::ffi::CString::new(store.path().as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: `path` is NUL-terminated and outlives the call.
        assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);
        let err = store.load().unwrap_err().to_string();
        assert!(err.contains("not a regular file"), "{err}");
        fs::remove_file(store.path()).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", store.path()).unwrap();
        let err = store.load().unwrap_err().to_string();
        assert!(err.contains("symlink"), "{err}");
        fs::remove_dir_all(&dir).ok();
    }
}
