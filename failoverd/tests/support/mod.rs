//! Root-only test kit for failoverd's integration tests: guards for a cgroup, a bpffs pin
//! directory and a network namespace, tiny TCP/UDP backends that answer with their id, and a
//! client that runs as a child process inside the test cgroup.
//!
//! Every test binary declares `mod support;` and uses only part of the kit, hence the blanket
//! `dead_code` allowance. The test process itself never joins a cgroup or a netns: trials run on
//! parallel threads, and moving the process would move all of them (see `client`).
#![allow(dead_code)]

pub mod backends;
pub mod cgroup;
pub mod client;
pub mod daemon;
pub mod env;
pub mod etcd;
pub mod kernel;
pub mod netns;
pub mod pins;
pub mod server;

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

/// Per-process counter; with the pid it keeps names apart across parallel trials and across
/// test binaries that run at the same time.
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// Returns `<prefix>-<tag>-<pid>-<n>`, unique within this process and among live processes.
///
/// `tag` must be non-empty and made of ASCII letters, digits, `-` or `_`: it ends up in a path
/// and on an `ip` command line, where anything else would need quoting.
pub fn unique_name(prefix: &str, tag: &str) -> io::Result<String> {
    let tag_ok = !tag.is_empty()
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !tag_ok {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("test tag {tag:?} must be non-empty ASCII letters, digits, '-' or '_'"),
        ));
    }
    let n = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    Ok(format!("{prefix}-{tag}-{}-{n}", std::process::id()))
}

/// Adds `what` to an I/O error's message while keeping its kind, so a failed trial names the
/// file or command that broke instead of a bare "No such file or directory".
pub fn io_context(what: impl std::fmt::Display, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// A directory removed (with its contents) on drop.
pub struct TempDir(pub std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        // Never created, or already gone: both fine.
        std::fs::remove_dir_all(&self.0).ok();
    }
}
