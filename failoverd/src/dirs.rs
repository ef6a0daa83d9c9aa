//! Every default path failoverd uses, in one place.

use std::path::PathBuf;

/// The config file `failoverd run` and `check` read unless `--config` says otherwise.
pub const DEFAULT_CONFIG: &str = "/etc/failoverd/failoverd.yaml";
/// Where the datapath pins its maps and links: `/sys/fs/bpf/failoverd`.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/failoverd";
/// Where bpffs is mounted when it is missing.
pub const BPFFS_MOUNT: &str = "/sys/fs/bpf";
/// The file the kernel lists its mounts in; the cgroup v2 mount is found there.
pub const PROC_MOUNTS: &str = "/proc/mounts";

/// [`DEFAULT_PIN_DIR`] as a path.
pub fn default_pin_dir() -> PathBuf {
    PathBuf::from(DEFAULT_PIN_DIR)
}
/// The system's hosts file, read before DNS for hostname backends (re-read when it changes).
pub const SYSTEM_HOSTS: &str = "/etc/hosts";
