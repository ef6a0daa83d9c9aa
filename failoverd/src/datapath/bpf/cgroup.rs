//! Finding the cgroup v2 hierarchy and the cgroup the hooks attach to.

use std::{
    fmt,
    path::{Path, PathBuf},
    str::FromStr,
};

use super::DatapathError;
use crate::dirs::PROC_MOUNTS;

/// Which cgroup's processes see the VIPs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum CgroupSpec {
    /// The root of the cgroup v2 hierarchy: every process on the host.
    #[default]
    Auto,
    /// A cgroup v2 directory: its processes and those of its descendants.
    Path(PathBuf),
}

impl FromStr for CgroupSpec {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "auto" => CgroupSpec::Auto,
            path => CgroupSpec::Path(PathBuf::from(path)),
        })
    }
}

impl fmt::Display for CgroupSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CgroupSpec::Auto => f.write_str("auto"),
            CgroupSpec::Path(p) => write!(f, "{}", p.display()),
        }
    }
}

/// PID 1's mount table: where the host's mounts are when this process's own
/// mount namespace hides them. Readable where `/proc/1/root` may not be.
const PID1_MOUNTINFO: &str = "/proc/1/mountinfo";

/// Where `ip netns add` keeps named network namespaces.
const NETNS_RUN_DIR: &str = "/run/netns";

/// Where cgroup v2 is mounted: `/sys/fs/cgroup` on most hosts,
/// `/sys/fs/cgroup/unified` on hybrid ones.
///
/// When this process's mount namespace has none but PID 1's has one, the
/// process was most likely started with `ip netns exec`, which remounts
/// `/sys` (hiding cgroup2 and bpffs): that is
/// [`DatapathError::Cgroup2Hidden`], which says to use `nsenter --net=`
/// instead. failoverd does not mount cgroup2 or bpffs privately to work
/// around it: a bpffs mounted in that namespace is a new, private instance,
/// so the pins (and with them the hooks) would vanish with the process.
pub fn cgroup2_mount() -> Result<PathBuf, DatapathError> {
    let mounts =
        std::fs::read_to_string(PROC_MOUNTS).map_err(DatapathError::io("reading", PROC_MOUNTS))?;
    if let Some(mount) = find_mount(&mounts, "cgroup2") {
        return Ok(mount);
    }
    match pid1_mount("cgroup2") {
        Some(pid1_mount) => Err(DatapathError::Cgroup2Hidden {
            pid1_mount,
            netns: current_netns_name(),
        }),
        None => Err(DatapathError::NoCgroup2Mount),
    }
}

/// The first mount of `fstype` in a `/proc/mounts` text.
fn find_mount(mounts: &str, fstype: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_dev, dir, fs) = (fields.next()?, fields.next()?, fields.next()?);
        (fs == fstype).then(|| PathBuf::from(unescape_mount_path(dir)))
    })
}

/// Where PID 1 has a mount of `fstype`, if it has one and its mount table is readable.
pub(super) fn pid1_mount(fstype: &str) -> Option<PathBuf> {
    let mountinfo = std::fs::read_to_string(PID1_MOUNTINFO).ok()?;
    find_mountinfo(&mountinfo, fstype)
}

/// The first mount of `fstype` in a `/proc/PID/mountinfo` text:
/// `ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTS`.
fn find_mountinfo(mountinfo: &str, fstype: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let fs = right.split_whitespace().next()?;
        let dir = left.split_whitespace().nth(4)?;
        (fs == fstype).then(|| PathBuf::from(unescape_mount_path(dir)))
    })
}

/// The `ip netns` name of this process's network namespace, if it has one.
pub(super) fn current_netns_name() -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let own = std::fs::metadata("/proc/self/ns/net").ok()?;
    std::fs::read_dir(NETNS_RUN_DIR)
        .ok()?
        .filter_map(Result::ok)
        .find(|entry| {
            std::fs::metadata(entry.path())
                .is_ok_and(|m| m.dev() == own.dev() && m.ino() == own.ino())
        })
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
}

/// /proc/mounts writes spaces and a few other bytes as octal escapes.
fn unescape_mount_path(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let code = rest
            .get(i + 1..i + 4)
            .and_then(|o| u8::from_str_radix(o, 8).ok());
        match code {
            Some(c) => {
                out.push(char::from(c));
                rest = &rest[i + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The cgroup directory a spec names, checked to lie in the cgroup v2 hierarchy.
pub fn resolve(spec: &CgroupSpec) -> Result<PathBuf, DatapathError> {
    let mount = cgroup2_mount()?;
    let path = match spec {
        CgroupSpec::Auto => return Ok(mount),
        CgroupSpec::Path(p) => p,
    };
    let canonical = path
        .canonicalize()
        .map_err(DatapathError::io("opening cgroup", path))?;
    if !canonical.starts_with(&mount) || !canonical.is_dir() {
        return Err(DatapathError::CgroupNotUnderMount {
            path: path.clone(),
            mount,
        });
    }
    Ok(canonical)
}

/// The kernel's id of a cgroup: the inode number of its directory.
pub fn cgroup_id(dir: &Path) -> Result<u64, DatapathError> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata(dir)
        .map_err(DatapathError::io("reading", dir))?
        .ino())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_unified_mount_on_a_hybrid_host() {
        let mounts = "\
tmpfs /sys/fs/cgroup tmpfs ro,nosuid 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,nosuid 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0
";
        assert_eq!(
            find_mount(mounts, "cgroup2"),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
    }

    #[test]
    fn no_cgroup2_line_means_none() {
        assert_eq!(
            find_mount("cgroup /sys/fs/cgroup/cpu cgroup rw 0 0\n", "cgroup2"),
            None
        );
    }

    #[test]
    fn finds_pid1s_cgroup2_and_bpffs_in_mountinfo() {
        let mountinfo = "\
23 1 0:21 / /sys rw,nosuid shared:7 - sysfs sysfs rw
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:10 - cgroup2 cgroup2 rw
42 23 0:39 / /sys/fs/bpf rw,relatime - bpf bpf rw
";
        assert_eq!(
            find_mountinfo(mountinfo, "cgroup2"),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            find_mountinfo(mountinfo, "bpf"),
            Some(PathBuf::from("/sys/fs/bpf"))
        );
        assert_eq!(find_mountinfo(mountinfo, "tmpfs"), None);
    }

    #[test]
    fn a_hidden_cgroup2_says_to_use_nsenter() {
        let e = DatapathError::Cgroup2Hidden {
            pid1_mount: "/sys/fs/cgroup".into(),
            netns: Some("blue".into()),
        };
        let text = e.to_string();
        assert!(text.contains("nsenter --net=/run/netns/blue"), "{text}");
        assert!(text.contains("ip netns exec"), "{text}");
        assert!(text.contains("/sys/fs/cgroup"), "{text}");
    }

    #[test]
    fn octal_escapes_are_decoded() {
        assert_eq!(
            unescape_mount_path(r"/mnt/my\040cgroups"),
            "/mnt/my cgroups"
        );
    }

    #[test]
    fn auto_and_paths_parse() {
        assert_eq!("auto".parse::<CgroupSpec>().unwrap(), CgroupSpec::Auto);
        assert_eq!(
            "/sys/fs/cgroup/app".parse::<CgroupSpec>().unwrap(),
            CgroupSpec::Path("/sys/fs/cgroup/app".into())
        );
    }
}
