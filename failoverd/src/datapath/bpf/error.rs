//! Errors of the BPF datapath: each says what went wrong and what to do about it.

use std::{io, path::PathBuf};

use super::super::TableError;

/// Why the datapath could not be set up, read or written.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    /// The process lacks a capability the kernel demands.
    #[error(
        "missing capabilities {missing:?}: run failoverd as root, or grant CAP_BPF, \
         CAP_NET_ADMIN and CAP_SYS_ADMIN (for mounting bpffs)"
    )]
    MissingCapability {
        /// Names of the capabilities that are missing.
        missing: Vec<&'static str>,
    },
    /// This kernel (or this build) cannot do what was asked.
    #[error("{what} is not available here: {detail}")]
    Unsupported {
        /// What was asked.
        what: &'static str,
        /// Why it cannot be done.
        detail: String,
    },
    /// No cgroup v2 hierarchy is mounted.
    #[error(
        "no cgroup2 mount in /proc/mounts: failoverd needs the unified hierarchy \
         (mount -t cgroup2 none /sys/fs/cgroup, or boot with systemd.unified_cgroup_hierarchy=1)"
    )]
    NoCgroup2Mount,
    /// cgroup v2 is mounted for PID 1 but not in this process's mount
    /// namespace: typically `ip netns exec`, which remounts /sys.
    #[error(
        "no cgroup2 mount in this process's mount namespace, though PID 1 has one at \
         {pid1_mount}: `ip netns exec` remounts /sys and hides it (and bpffs, so pins made \
         here would vanish with the process); start failoverd with \
         `nsenter --net=/run/netns/{}` instead, which keeps the mounts",
        netns.as_deref().unwrap_or("NAME")
    )]
    Cgroup2Hidden {
        /// Where PID 1 has cgroup v2 mounted.
        pid1_mount: PathBuf,
        /// The `ip netns` name of this process's network namespace, if found.
        netns: Option<String>,
    },
    /// The configured cgroup is not a directory of the cgroup v2 hierarchy.
    #[error("cgroup {path}: not a directory under the cgroup2 mount {mount}")]
    CgroupNotUnderMount {
        /// The configured cgroup.
        path: PathBuf,
        /// Where cgroup v2 is mounted.
        mount: PathBuf,
    },
    /// bpffs is mounted for PID 1 but not in this process's mount namespace.
    #[error(
        "bpffs is mounted at {mount} for PID 1 but not in this process's mount namespace \
         (`ip netns exec` remounts /sys): pins made here would be private to this process \
         and vanish with it; start failoverd with `nsenter --net=/run/netns/{}` instead",
        netns.as_deref().unwrap_or("NAME")
    )]
    BpffsHidden {
        /// Where PID 1 has bpffs.
        mount: PathBuf,
        /// The `ip netns` name of this process's network namespace, if found.
        netns: Option<String>,
    },
    /// The pin directory is not on a BPF filesystem.
    #[error("pin directory {path} is not on bpffs: choose a directory under a bpf mount (e.g. /sys/fs/bpf/failoverd)")]
    NotBpffs {
        /// The pin directory.
        path: PathBuf,
    },
    /// A filesystem operation failed.
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
    /// A pinned map was made by a failoverd with another layout.
    #[error(
        "pinned map {path} has another layout ({detail}); refusing to write it: \
         run `failoverd cleanup --pin-dir {pin_dir}` to remove the old datapath first"
    )]
    LayoutMismatch {
        /// The pinned map.
        path: PathBuf,
        /// The pin directory.
        pin_dir: PathBuf,
        /// What differs.
        detail: String,
    },
    /// A pinned link is attached somewhere else than the config says.
    #[error(
        "pinned link {path} {detail}: run `failoverd cleanup --pin-dir {pin_dir}` \
         or point the config at the same cgroup"
    )]
    ForeignLink {
        /// The pinned link.
        path: PathBuf,
        /// The pin directory.
        pin_dir: PathBuf,
        /// What differs.
        detail: String,
    },
    /// The embedded BPF object could not be loaded.
    #[error("loading the BPF object: {source}")]
    Load {
        /// aya's error.
        #[source]
        source: Box<aya::EbpfError>,
    },
    /// The kernel verifier refused a program.
    #[error("the kernel verifier rejected {program}: {source}\nverifier log:\n{log}")]
    Verifier {
        /// The program.
        program: &'static str,
        /// The syscall error.
        #[source]
        source: io::Error,
        /// The verifier's log.
        log: String,
    },
    /// A program operation failed.
    #[error("{op} {program}: {source}")]
    Program {
        /// What was being done.
        op: &'static str,
        /// The program.
        program: &'static str,
        /// aya's error.
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    /// Pinning a link failed.
    #[error("pinning {path}: {source}")]
    Pin {
        /// Where.
        path: PathBuf,
        /// aya's error.
        #[source]
        source: aya::pin::PinError,
    },
    /// A BPF syscall on a link failed.
    #[error("{op} on link {path}: {source}")]
    Link {
        /// What was being done.
        op: &'static str,
        /// The pinned link.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A map operation failed; the message ends with the kernel's errno.
    #[error("{op} map {map}: {source}{}", os_error_suffix(source))]
    Map {
        /// What was being done.
        op: &'static str,
        /// The map.
        map: &'static str,
        /// aya's error.
        #[source]
        source: Box<aya::maps::MapError>,
    },
    /// The datapath holds no maps at the pin directory.
    #[error("no failoverd datapath pinned at {pin_dir} (missing {path}): start failoverd first")]
    NotPinned {
        /// The pin directory.
        pin_dir: PathBuf,
        /// The first missing pin.
        path: PathBuf,
    },
    /// The pinned maps or hook links were removed or detached while this
    /// process held the datapath (e.g. `failoverd cleanup`, `bpftool`).
    #[error(
        "the datapath under {pin_dir} was taken apart while failoverd ran ({detail}): \
         connects to VIPs may no longer be translated; restart failoverd to attach it \
         again (and stop it before running `failoverd cleanup`)"
    )]
    Detached {
        /// The pin directory.
        pin_dir: PathBuf,
        /// What is gone.
        detail: String,
    },
    /// No counter id is left for a new VIP or backend.
    #[error(transparent)]
    Ids(#[from] crate::datapath::IdsExhausted),
    /// A table cannot be encoded.
    #[error(transparent)]
    Table(#[from] TableError),
    /// A failure injected by [`crate::datapath::FakeDatapath`] in tests.
    #[error("injected failure: {message}")]
    Injected {
        /// The message the test chose.
        message: String,
    },
}

/// `: <description> (os error N, ENAME)` for a failed map syscall, so the
/// errno reaches logs and `status` (aya's own message names only the syscall).
fn os_error_suffix(source: &aya::maps::MapError) -> String {
    match source {
        aya::maps::MapError::SyscallError(e) => match e.io_error.raw_os_error() {
            Some(errno) => format!(": {} ({})", e.io_error, errno_name(errno)),
            None => format!(": {}", e.io_error),
        },
        _ => String::new(),
    }
}

/// The symbolic name of the errnos a BPF map call returns, else `errno N`.
pub fn errno_name(errno: i32) -> String {
    let name = match errno {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EINTR => "EINTR",
        libc::EBADF => "EBADF",
        libc::E2BIG => "E2BIG",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::EINVAL => "EINVAL",
        libc::ENOSPC => "ENOSPC",
        libc::ENOTSUP => "ENOTSUP",
        _ => return format!("errno {errno}"),
    };
    name.to_string()
}

impl DatapathError {
    /// The kernel's errno behind this error, when a syscall failed.
    pub fn errno(&self) -> Option<i32> {
        let io = match self {
            DatapathError::Map { source, .. } => match source.as_ref() {
                aya::maps::MapError::SyscallError(e) => &e.io_error,
                _ => return None,
            },
            DatapathError::Io { source, .. }
            | DatapathError::Link { source, .. }
            | DatapathError::Verifier { source, .. } => source,
            _ => return None,
        };
        io.raw_os_error()
    }

    /// A map error with context.
    pub(super) fn map(
        op: &'static str,
        map: &'static str,
    ) -> impl FnOnce(aya::maps::MapError) -> Self {
        move |source| DatapathError::Map {
            op,
            map,
            source: Box::new(source),
        }
    }

    /// A filesystem error with context.
    pub(super) fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| DatapathError::Io { op, path, source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_map_write_names_its_errno() {
        let e = DatapathError::map("writing", "failoverd_services_v4")(
            aya::maps::MapError::SyscallError(aya::sys::SyscallError {
                call: "bpf_map_update_elem",
                io_error: io::Error::from_raw_os_error(libc::E2BIG),
            }),
        );
        let text = e.to_string();
        assert!(text.contains("E2BIG"), "{text}");
        assert!(text.contains("os error 7"), "{text}");
        assert!(text.contains("writing map failoverd_services_v4"), "{text}");
        assert_eq!(e.errno(), Some(libc::E2BIG));
    }
}
