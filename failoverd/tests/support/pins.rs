//! A throw-away pin directory on bpffs for one trial, so the code under test pins its maps and
//! links somewhere unique and the guard removes them afterwards.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use super::{io_context, unique_name};

/// Where bpffs is expected; the daemon's own default pin directory lives under it too.
pub const BPFFS_ROOT: &str = "/sys/fs/bpf";

/// `statfs` magic of bpffs (`BPF_FS_MAGIC` in `linux/magic.h`).
const BPF_FS_MAGIC: u32 = 0xcafe_4a11;

/// Serialises the check-then-mount so parallel trials on a fresh machine do not stack two bpffs
/// mounts on `/sys/fs/bpf`.
static MOUNT_LOCK: Mutex<()> = Mutex::new(());

/// Returns whether `path` is on bpffs.
pub fn is_bpffs(path: &Path) -> io::Result<bool> {
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: statfs is plain data; all-zero bytes are a valid value for it.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: c_path is NUL-terminated and st is a valid, writable statfs.
    if unsafe { libc::statfs(c_path.as_ptr(), &mut st) } != 0 {
        return Err(io_context(
            format!("statfs {}", path.display()),
            io::Error::last_os_error(),
        ));
    }
    // f_type is 32 bits wide on some targets and 64 on others; the magic fits in 32.
    Ok(st.f_type as u32 == BPF_FS_MAGIC)
}

/// Mounts bpffs on `/sys/fs/bpf` unless it already is (a fresh machine has it unmounted).
pub fn ensure_bpffs() -> io::Result<()> {
    // A poisoned lock only means another trial panicked mid-check; the mount state is still
    // whatever the kernel says, so carry on.
    let _guard = MOUNT_LOCK.lock().unwrap_or_else(PoisonError::into_inner);
    let root = Path::new(BPFFS_ROOT);
    fs::create_dir_all(root).map_err(|e| io_context(format!("creating {BPFFS_ROOT}"), e))?;
    if is_bpffs(root)? {
        return Ok(());
    }
    // SAFETY: all pointers are NUL-terminated literals; data may be null for bpffs.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            c"/sys/fs/bpf".as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(io_context(
            "mount -t bpf bpf /sys/fs/bpf",
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// A unique, not yet existing directory path under `/sys/fs/bpf`
/// (`/sys/fs/bpf/fo-test-<tag>-<pid>-<n>`).
///
/// The directory is deliberately not created: creating it is part of what the code under test
/// does. On drop the directory and every pin in it are unlinked. Unlinking a pinned link only
/// detaches it once no fd refers to it any more; tests hold none after the daemon stops.
#[derive(Debug)]
pub struct TestPinDir {
    path: PathBuf,
}

impl TestPinDir {
    /// Makes sure bpffs is mounted and picks the path.
    pub fn new(tag: &str) -> io::Result<TestPinDir> {
        ensure_bpffs()?;
        let path = Path::new(BPFFS_ROOT).join(unique_name("fo-test", tag)?);
        // Only a crashed earlier run with the same pid can leave this behind; clear it so the
        // code under test really starts from nothing.
        if path.exists() {
            fs::remove_dir_all(&path)
                .map_err(|e| io_context(format!("removing stale {}", path.display()), e))?;
        }
        Ok(TestPinDir { path })
    }

    /// The pin directory (it may not exist yet).
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TestPinDir {
    fn drop(&mut self) {
        if !self.path.exists() {
            return;
        }
        if let Err(e) = fs::remove_dir_all(&self.path) {
            eprintln!("fo-test: pin dir {} not removed: {e}", self.path.display());
        }
    }
}
