//! A throw-away network namespace for one trial, managed with iproute2 so it is visible in
//! `ip netns list` while the trial runs and easy to inspect when one hangs.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Mutex, PoisonError};

use super::{io_context, unique_name};

/// Where `ip netns` bind-mounts named namespaces.
const NETNS_RUN_DIR: &str = "/run/netns";

/// Serialises `ip netns add`: on the first use iproute2 turns `/run/netns` into a shared
/// bind mount of itself, and two concurrent first uses would stack two such mounts.
static ADD_LOCK: Mutex<()> = Mutex::new(());

/// A named network namespace (`fo-<tag>-<pid>-<n>`) with `lo` up and no other interface, hence
/// no default route: traffic a hook fails to rewrite gets ENETUNREACH or ECONNREFUSED instead
/// of leaving the machine.
///
/// Only child processes (through `client::place_child`) and dedicated server threads
/// (`enter_current_thread`) enter it; the test process as a whole stays where it is.
/// Dropped with `ip netns delete`.
#[derive(Debug)]
pub struct TestNetns {
    name: String,
}

impl TestNetns {
    /// `ip netns add NAME` then `ip -n NAME link set lo up`. Requires iproute2.
    pub fn new(tag: &str) -> io::Result<TestNetns> {
        let name = unique_name("fo", tag)?;
        {
            let _guard = ADD_LOCK.lock().unwrap_or_else(PoisonError::into_inner);
            run_ip(&["netns", "add", &name])?;
        }
        // From here on Drop deletes the namespace, also when bringing lo up fails.
        let netns = TestNetns { name };
        run_ip(&["-n", &netns.name, "link", "set", "lo", "up"])?;
        Ok(netns)
    }

    /// The name as `ip netns` knows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/NAME`, the bind mount that keeps the namespace alive.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(NETNS_RUN_DIR).join(&self.name)
    }

    /// Opens the namespace (close-on-exec), for `setns` in a thread or a `pre_exec` hook.
    ///
    /// A hook gets an fd opened here, before fork: a missing namespace is then reported in the
    /// parent with its path, and the child runs a single `setns` call.
    pub fn open(&self) -> io::Result<File> {
        let path = self.path();
        File::open(&path).map_err(|e| io_context(format!("opening {}", path.display()), e))
    }

    /// Moves the calling thread, and only it, into the namespace: `setns(CLONE_NEWNET)` is
    /// per-thread, so a dedicated server thread can live in the netns while the other trials'
    /// threads stay put. Sockets created afterwards by this thread belong to the namespace.
    pub fn enter_current_thread(&self) -> io::Result<()> {
        enter_netns_fd(&self.open()?)
    }
}

/// `setns(fd, CLONE_NEWNET)` for the calling thread; see `TestNetns::enter_current_thread`.
pub fn enter_netns_fd(ns: &File) -> io::Result<()> {
    // SAFETY: setns takes an fd we own for the duration of the call and a flag constant.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io_context(
            "setns(CLONE_NEWNET)",
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        if let Err(e) = run_ip(&["netns", "delete", &self.name]) {
            eprintln!("fo-test: netns {} not deleted: {e}", self.name);
        }
    }
}

/// Runs `ip ARGS...`, turning a non-zero exit into an error that carries ip's stderr.
fn run_ip(args: &[&str]) -> io::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| io_context("running ip (is iproute2 installed?)", e))?;
    if out.status.success() {
        return Ok(());
    }
    Err(io::Error::other(format!(
        "ip {} failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    )))
}
