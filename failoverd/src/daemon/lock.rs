//! One daemon per datapath: exclusive locks on `state_dir` and on the pin directory, taken
//! before anything live is touched.
//!
//! Two daemons on one `pin_dir` overwrite each other's tables, and when one exits its VIPs
//! stay empty while the other never re-syncs. The second daemon must instead stop at once,
//! naming the first. `flock(2)` locks go away with the process, so a crash never leaves a
//! stale lock behind.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Read, Seek, Write},
    os::{
        fd::AsRawFd,
        unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt},
    },
    path::{Path, PathBuf},
};

/// The lock file's name inside `state_dir`.
pub const LOCK_FILE: &str = "failoverd.lock";

/// Held locks; dropping it releases them.
#[derive(Debug)]
pub struct DaemonLock {
    state: File,
    pin_dir: Option<File>,
}

/// Why the locks could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds the lock.
    #[error("another failoverd{} is running on {}: stop it first, or give this one another datapath.pin_dir and control.state_dir", pid.map(|p| format!(" (pid {p})")).unwrap_or_default(), path.display())]
    Held {
        /// What is locked.
        path: PathBuf,
        /// The holder, when it can be told.
        pid: Option<u32>,
    },
    /// A file or directory could not be opened or locked.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
}

fn io_error<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> LockError + 'a {
    move |source| LockError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

impl DaemonLock {
    /// Locks `state_dir` (creating it 0700) and `pin_dir` when it exists (a daemon that runs
    /// has created it; call [`DaemonLock::lock_pin_dir`] once the datapath made it).
    pub fn acquire(state_dir: &Path, pin_dir: &Path) -> Result<DaemonLock, LockError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(state_dir)
            .map_err(io_error("creating", state_dir))?;
        let path = state_dir.join(LOCK_FILE);
        let mut state = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .map_err(io_error("opening", &path))?;
        if !try_flock(&state).map_err(io_error("locking", &path))? {
            let mut text = String::new();
            state.read_to_string(&mut text).ok();
            return Err(LockError::Held {
                pid: text.trim().parse().ok(),
                path,
            });
        }
        // The holder's pid, for the next one's error message.
        state.set_len(0).map_err(io_error("writing", &path))?;
        state.rewind().map_err(io_error("writing", &path))?;
        writeln!(state, "{}", std::process::id()).map_err(io_error("writing", &path))?;
        let mut lock = DaemonLock {
            state,
            pin_dir: None,
        };
        if pin_dir.is_dir() {
            lock.lock_pin_dir(pin_dir)?;
        }
        Ok(lock)
    }

    /// Locks `pin_dir` unless it is locked already.
    pub fn lock_pin_dir(&mut self, pin_dir: &Path) -> Result<(), LockError> {
        if self.pin_dir.is_some() {
            return Ok(());
        }
        let dir = File::open(pin_dir).map_err(io_error("opening", pin_dir))?;
        if !try_flock(&dir).map_err(io_error("locking", pin_dir))? {
            return Err(LockError::Held {
                path: pin_dir.to_path_buf(),
                pid: dir.metadata().ok().and_then(|m| flock_holder(&m)),
            });
        }
        self.pin_dir = Some(dir);
        Ok(())
    }

    /// The state lock file (for tests).
    pub fn state_file(&self) -> &File {
        &self.state
    }
}

/// Takes an exclusive, non-blocking `flock`; `Ok(false)` when another holds it.
fn try_flock(file: &File) -> io::Result<bool> {
    // SAFETY: flock on a descriptor this function borrows for the call.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

/// The pid holding an flock on the file `meta` describes, from `/proc/locks`
/// (`N: FLOCK ADVISORY WRITE PID MAJ:MIN:INODE 0 EOF`, device numbers in hex).
fn flock_holder(meta: &fs::Metadata) -> Option<u32> {
    let locks = fs::read_to_string("/proc/locks").ok()?;
    let dev = meta.dev();
    let wanted = format!(
        "{:02x}:{:02x}:{}",
        libc::major(dev),
        libc::minor(dev),
        meta.ino()
    );
    locks.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.get(1) == Some(&"FLOCK") && fields.get(5) == Some(&wanted.as_str()))
            .then(|| fields.get(4)?.parse().ok())
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_naming_the_holder() {
        let dir = std::env::temp_dir().join(format!("fo-lock-{}", std::process::id()));
        let (state, pins) = (dir.join("state"), dir.join("pins"));
        fs::create_dir_all(&pins).unwrap();
        let first = DaemonLock::acquire(&state, &pins).expect("first lock");
        let second = DaemonLock::acquire(&state, &pins).expect_err("second lock");
        match &second {
            LockError::Held { path, pid } => {
                assert_eq!(path, &state.join(LOCK_FILE));
                assert_eq!(*pid, Some(std::process::id()));
            }
            other => panic!("expected Held, got {other}"),
        }
        // The pin directory alone (another state_dir) is refused too, with the holder.
        let other_state = dir.join("state2");
        match DaemonLock::acquire(&other_state, &pins).expect_err("pin dir lock") {
            LockError::Held { path, pid } => {
                assert_eq!(path, pins);
                assert_eq!(pid, Some(std::process::id()));
            }
            other => panic!("expected Held, got {other}"),
        }
        drop(first);
        DaemonLock::acquire(&state, &pins).expect("free again once dropped");
        fs::remove_dir_all(&dir).ok();
    }
}
