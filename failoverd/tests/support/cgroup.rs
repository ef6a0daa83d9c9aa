//! A throw-away cgroup v2 directory for one trial, removed (with anything still running in it)
//! when the guard drops.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use super::{io_context, unique_name};

/// How long `Drop` waits for killed processes to leave the cgroup before giving up. SIGKILLed
/// processes leave within milliseconds; the bound only keeps a wedged cgroup from hanging the
/// whole test binary.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Pause between polls of `cgroup.procs` while draining.
const DRAIN_POLL: Duration = Duration::from_millis(10);

/// Returns where cgroup2 is mounted, read from `/proc/mounts` (the first `cgroup2` entry).
///
/// Not hard-coded: it is `/sys/fs/cgroup` on unified hosts and `/sys/fs/cgroup/unified` on
/// hybrid ones such as the CI machine.
pub fn cgroup2_mount() -> io::Result<PathBuf> {
    let mounts =
        fs::read_to_string("/proc/mounts").map_err(|e| io_context("reading /proc/mounts", e))?;
    mounts
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .find(|fields| fields.len() > 2 && fields[2] == "cgroup2")
        .map(|fields| PathBuf::from(unescape_mount_field(fields[1])))
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no cgroup2 mount in /proc/mounts"))
}

/// Undoes the octal escapes (`\040` for a space, ...) the kernel applies to mount points in
/// `/proc/mounts`.
fn unescape_mount_field(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                out.push(d.iter().fold(0u8, |acc, c| (acc << 3) | (c - b'0')));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A uniquely named child cgroup directly under the cgroup2 mount
/// (`fo-test-<tag>-<pid>-<n>`).
///
/// Clients join it from a `pre_exec` hook (see `client::place_child`); the test process never
/// does. On drop every process left inside is SIGKILLed, the guard waits (at most 2 s) for the
/// cgroup to empty and then removes it, so a trial that fails half-way leaves nothing behind.
#[derive(Debug)]
pub struct TestCgroup {
    path: PathBuf,
}

impl TestCgroup {
    /// Creates the cgroup directory; fails if the name is somehow taken rather than share it.
    pub fn new(tag: &str) -> io::Result<TestCgroup> {
        let path = cgroup2_mount()?.join(unique_name("fo-test", tag)?);
        fs::create_dir(&path).map_err(|e| io_context(format!("creating {}", path.display()), e))?;
        Ok(TestCgroup { path })
    }

    /// The cgroup's directory, e.g. `/sys/fs/cgroup/unified/fo-test-dp-1234-0`; this is what a
    /// cgroup BPF program is attached to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `<path>/cgroup.procs`: writing a pid (or `0` for "myself") there moves a whole process.
    pub fn procs_path(&self) -> PathBuf {
        self.path.join("cgroup.procs")
    }

    /// Pids of the processes currently in this cgroup (not in its descendants).
    pub fn pids(&self) -> io::Result<Vec<i32>> {
        read_pids(&self.path)
    }

    /// Kills everything in `dir` and its descendants, then removes the directories bottom-up.
    fn destroy(dir: &Path, deadline: Instant) -> io::Result<()> {
        kill_all(dir)?;
        // The code under test does not create sub-cgroups today; remove them anyway so a
        // future one cannot make the rmdir below fail with EBUSY.
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                Self::destroy(&entry.path(), deadline)?;
            }
        }
        loop {
            let remaining = read_pids(dir)?;
            if remaining.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("processes {remaining:?} still in {}", dir.display()),
                ));
            }
            // Processes forked after the previous kill would otherwise survive.
            kill_all(dir)?;
            thread::sleep(DRAIN_POLL);
        }
        loop {
            match fs::remove_dir(dir) {
                Ok(()) => return Ok(()),
                // An exiting task can keep the cgroup populated for a moment after it has
                // vanished from cgroup.procs.
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                    thread::sleep(DRAIN_POLL);
                }
                Err(e) => return Err(io_context(format!("removing {}", dir.display()), e)),
            }
        }
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        if let Err(e) = Self::destroy(&self.path, Instant::now() + DRAIN_TIMEOUT) {
            // Drop cannot fail; say loudly what is left so the next run's `ls` makes sense.
            eprintln!(
                "fo-test: cgroup {} not cleaned up: {e}",
                self.path.display()
            );
        }
    }
}

/// Reads `<dir>/cgroup.procs` as a list of pids.
fn read_pids(dir: &Path) -> io::Result<Vec<i32>> {
    let procs = dir.join("cgroup.procs");
    let text = fs::read_to_string(&procs)
        .map_err(|e| io_context(format!("reading {}", procs.display()), e))?;
    text.lines()
        .map(|l| {
            l.trim().parse::<i32>().map_err(|e| {
                io::Error::new(io::ErrorKind::InvalidData, format!("bad pid {l:?}: {e}"))
            })
        })
        .collect()
}

/// SIGKILLs every process in `dir` (and, through `cgroup.kill`, its descendants).
fn kill_all(dir: &Path) -> io::Result<()> {
    let pids = read_pids(dir)?;
    // If a trial broke the rule and moved the test process in here, killing the cgroup would
    // kill the test binary and hide the real failure.
    let me = std::process::id() as i32;
    if pids.contains(&me) {
        return Err(io::Error::other(format!(
            "the test process itself ({me}) is in {}; refusing to kill it",
            dir.display()
        )));
    }
    // cgroup.kill (Linux 5.14+) kills atomically, racing no fork; fall back to pid by pid.
    let kill_file = dir.join("cgroup.kill");
    if kill_file.exists() {
        return fs::write(&kill_file, "1")
            .map_err(|e| io_context(format!("writing {}", kill_file.display()), e));
    }
    for pid in pids {
        // SAFETY: kill(2) takes plain integers and touches no memory of ours.
        if unsafe { libc::kill(pid, libc::SIGKILL) } != 0 {
            let e = io::Error::last_os_error();
            // ESRCH: it exited between the read and the kill, which is what we want anyway.
            if e.raw_os_error() != Some(libc::ESRCH) {
                return Err(io_context(format!("killing pid {pid}"), e));
            }
        }
    }
    Ok(())
}
