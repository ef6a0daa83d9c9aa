//! Making sure the pin directory lives on a mounted BPF filesystem.

use std::{ffi::CString, io, os::unix::ffi::OsStrExt, path::Path};

use super::DatapathError;
use crate::dirs::BPFFS_MOUNT;

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

fn is_bpffs(path: &Path) -> io::Result<bool> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: statfs is plain data; zeroed is a valid initial value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is a valid NUL-terminated path and st a valid out pointer.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_type as i64 == BPF_FS_MAGIC)
}

/// Creates `pin_dir` on bpffs, mounting bpffs at /sys/fs/bpf first when the
/// directory belongs there and nothing is mounted (fresh machines often lack it).
pub fn prepare_pin_dir(pin_dir: &Path) -> Result<(), DatapathError> {
    let mount = Path::new(BPFFS_MOUNT);
    if pin_dir.starts_with(mount)
        && mount.is_dir()
        && !is_bpffs(mount).map_err(DatapathError::io("statfs", mount))?
    {
        // PID 1 has bpffs there but this mount namespace does not (`ip netns
        // exec` remounts /sys): a bpffs mounted here would be a new, private
        // instance whose pins, and hooks, vanish with this process.
        if super::cgroup::pid1_mount("bpf").as_deref() == Some(mount) {
            return Err(DatapathError::BpffsHidden {
                mount: mount.to_path_buf(),
                netns: super::cgroup::current_netns_name(),
            });
        }
        mount_bpffs(mount)?;
    }
    std::fs::create_dir_all(pin_dir).map_err(DatapathError::io("creating", pin_dir))?;
    if !is_bpffs(pin_dir).map_err(DatapathError::io("statfs", pin_dir))? {
        return Err(DatapathError::NotBpffs {
            path: pin_dir.to_path_buf(),
        });
    }
    Ok(())
}

fn mount_bpffs(at: &Path) -> Result<(), DatapathError> {
    let target = CString::new(at.as_os_str().as_bytes()).expect("mount path has no NUL");
    // SAFETY: all arguments are valid NUL-terminated strings or null data.
    let ret = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if ret != 0 {
        return Err(DatapathError::Io {
            op: "mounting bpffs at",
            path: at.to_path_buf(),
            source: io::Error::last_os_error(),
        });
    }
    tracing::info!(path = %at.display(), "mounted bpffs");
    Ok(())
}
