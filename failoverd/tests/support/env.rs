//! A trial's own cgroup and pin directory, and the datapath config that points at them.

use std::io;

use failoverd::datapath::{CgroupSpec, DatapathConfig};

use super::{cgroup::TestCgroup, pins::TestPinDir};

/// A test cgroup and pin directory. Fields drop in order: pins (detaching
/// the hooks) before the cgroup.
pub struct Env {
    /// The pin directory (not created until the datapath opens).
    pub pins: TestPinDir,
    /// The cgroup the hooks attach to and clients join.
    pub cgroup: TestCgroup,
}

impl Env {
    /// A fresh cgroup and pin directory; fails clearly unless running as root.
    pub fn new(tag: &str) -> io::Result<Env> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "these tests load BPF: run them as root",
            ));
        }
        Ok(Env {
            pins: TestPinDir::new(tag)?,
            cgroup: TestCgroup::new(tag)?,
        })
    }

    /// The datapath config for this trial's cgroup and pins.
    pub fn config(&self) -> DatapathConfig {
        DatapathConfig {
            cgroup: CgroupSpec::Path(self.cgroup.path().to_path_buf()),
            pin_dir: self.pins.path().to_path_buf(),
        }
    }

    /// The `datapath:` section of a daemon config for this trial, and a
    /// `metrics:` line on an ephemeral port so parallel daemons do not collide.
    pub fn yaml_datapath(&self) -> String {
        format!(
            "metrics: {{ listen: '127.0.0.1:0' }}\ndatapath:\n  cgroup: {}\n  pin_dir: {}\n",
            self.cgroup.path().display(),
            self.pins.path().display()
        )
    }
}
