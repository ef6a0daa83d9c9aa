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
    /// No cgroup v2 hierarchy is mounted.
    #[error(
        "no cgroup2 mount in /proc/mounts: failoverd needs the unified hierarchy \
         (mount -t cgroup2 none /sys/fs/cgroup, or boot with systemd.unified_cgroup_hierarchy=1)"
    )]
    NoCgroup2Mount,
    /// The configured cgroup is not a directory of the cgroup v2 hierarchy.
    #[error("cgroup {path}: not a directory under the cgroup2 mount {mount}")]
    CgroupNotUnderMount {
        /// The configured cgroup.
        path: PathBuf,
        /// Where cgroup v2 is mounted.
        mount: PathBuf,
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
    /// A map operation failed.
    #[error("{op} map {map}: {source}")]
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

impl DatapathError {
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
