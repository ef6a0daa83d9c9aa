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

/// Where cgroup v2 is mounted: `/sys/fs/cgroup` on most hosts,
/// `/sys/fs/cgroup/unified` on hybrid ones.
pub fn cgroup2_mount() -> Result<PathBuf, DatapathError> {
    let mounts =
        std::fs::read_to_string(PROC_MOUNTS).map_err(DatapathError::io("reading", PROC_MOUNTS))?;
    find_cgroup2(&mounts).ok_or(DatapathError::NoCgroup2Mount)
}

fn find_cgroup2(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_dev, dir, fstype) = (fields.next()?, fields.next()?, fields.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(unescape_mount_path(dir)))
    })
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
            find_cgroup2(mounts),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
    }

    #[test]
    fn no_cgroup2_line_means_none() {
        assert_eq!(
            find_cgroup2("cgroup /sys/fs/cgroup/cpu cgroup rw 0 0\n"),
            None
        );
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
