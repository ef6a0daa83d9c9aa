//! The exec probe: a local command, run in a process group of its own with a cleared
//! environment; exit 0 passes and the first line of its stdout is the evidence. At the
//! timeout the whole group is killed and the command reaped.

use std::{
    io,
    net::SocketAddr,
    os::unix::{fs::PermissionsExt, process::ExitStatusExt},
    path::{Path, PathBuf},
    process::{ExitStatus, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use tokio::{
    io::AsyncReadExt,
    process::{Child, ChildStdout, Command},
    time::Instant,
};

use super::{ProbeError, ProbeOk};

/// The most of stdout kept for the evidence; the rest is read and dropped, so a chatty
/// command neither blocks on a full pipe nor costs memory.
pub(super) const STDOUT_LIMIT: usize = 4 * 1024;

/// What an exec probe runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecCheck {
    /// The program (an absolute path) and its arguments. In every element `{address}`
    /// becomes the probed `ip:port` (`[ip6]:port`), `{host}` its IP alone, `{port}` its
    /// port.
    pub command: Vec<String>,
    /// The command's whole environment: nothing else is inherited, not even `PATH`.
    /// Default: empty.
    pub env: Vec<(String, String)>,
}

/// Why a command cannot be run.
#[derive(thiserror::Error, Debug)]
pub enum ExecError {
    /// `command` names no program.
    #[error("the check command is empty")]
    Empty,
    /// The program is named by a relative path (there is no `PATH` to search).
    #[error("{} is not an absolute path", path.display())]
    NotAbsolute {
        /// The program as configured.
        path: PathBuf,
    },
    /// The program cannot be looked at (missing, or a directory on its path is not
    /// searchable).
    #[error("{} cannot be found", path.display())]
    Missing {
        /// The program as configured.
        path: PathBuf,
        /// What the file system said.
        #[source]
        source: io::Error,
    },
    /// The program is a directory or a device, not a file.
    #[error("{} is not a regular file", path.display())]
    NotAFile {
        /// The program as configured.
        path: PathBuf,
    },
    /// The program has no execute permission bit.
    #[error("{} is not executable", path.display())]
    NotExecutable {
        /// The program as configured.
        path: PathBuf,
    },
    /// The kernel refused to start it (a bad interpreter line, out of processes, ...).
    #[error("cannot start {}", path.display())]
    Start {
        /// The program as configured.
        path: PathBuf,
        /// What `posix_spawn`/`exec` said.
        #[source]
        source: io::Error,
    },
}

/// Checks that `path` can be run as an exec check's program: absolute, an existing
/// regular file, with an execute bit. `failoverd check` and config loading call it so a
/// typo is a located config error instead of a probe that always fails.
pub fn validate_exec(path: &Path) -> Result<(), ExecError> {
    if !path.is_absolute() {
        return Err(ExecError::NotAbsolute {
            path: path.to_path_buf(),
        });
    }
    let metadata = std::fs::metadata(path).map_err(|source| ExecError::Missing {
        path: path.to_path_buf(),
        source,
    })?;
    if !metadata.is_file() {
        return Err(ExecError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    if metadata.permissions().mode() & 0o111 == 0 {
        return Err(ExecError::NotExecutable {
            path: path.to_path_buf(),
        });
    }
    Ok(())
}

/// `arg` with `{address}`, `{host}` and `{port}` replaced for `addr`.
fn substitute(arg: &str, addr: SocketAddr) -> String {
    arg.replace("{address}", &addr.to_string())
        .replace("{host}", &addr.ip().to_string())
        .replace("{port}", &addr.port().to_string())
}

fn spawn(check: &ExecCheck, addr: SocketAddr) -> Result<Child, ExecError> {
    let (program, args) = check.command.split_first().ok_or(ExecError::Empty)?;
    let path = Path::new(program);
    validate_exec(path)?;
    let mut command = Command::new(path);
    command
        .args(args.iter().map(|a| substitute(a, addr)))
        .env_clear()
        .envs(check.env.iter().map(|(k, v)| (k, v)))
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        // Its own group: at the timeout everything it started dies with it.
        .process_group(0);
    command.spawn().map_err(|source| ExecError::Start {
        path: path.to_path_buf(),
        source,
    })
}

/// Kills the command's process group once: at the timeout, when the command has exited
/// (whatever it left running in the background goes too), or when the probe is dropped
/// midway.
struct Group {
    pgid: libc::pid_t,
    armed: AtomicBool,
}

impl Group {
    fn kill(&self) {
        if self.armed.swap(false, Ordering::AcqRel) {
            // SAFETY: kill has no memory preconditions; a negative pid names a group.
            if unsafe { libc::kill(-self.pgid, libc::SIGKILL) } != 0 {
                let error = io::Error::last_os_error();
                // ESRCH: the group is already empty, the usual case after a clean exit.
                if error.raw_os_error() != Some(libc::ESRCH) {
                    tracing::warn!(pgid = self.pgid, error = %error, "cannot kill an exec check's process group");
                }
            }
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs the command for `addr`; fails with [`ProbeError::Timeout`] at `timeout`, by
/// which time its process group is killed (and the command is reaped in the background).
pub(super) async fn check(
    check: &ExecCheck,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<ProbeOk, ProbeError> {
    let started = Instant::now();
    let mut child = spawn(check, addr).map_err(|source| ProbeError::Spawn { addr, source })?;
    let Some(pid) = child.id() else {
        // Only a child already reaped has no pid; tokio has not polled it yet.
        return Err(ProbeError::Other {
            addr,
            source: io::Error::other("the check command vanished at start"),
        });
    };
    let group = Group {
        pgid: pid as libc::pid_t,
        armed: AtomicBool::new(true),
    };
    let stdout = child.stdout.take();
    let run = async {
        let mut reader = std::pin::pin!(first_line(stdout));
        let mut line = None;
        let status = loop {
            tokio::select! {
                status = child.wait() => break status,
                l = &mut reader, if line.is_none() => line = Some(l),
            }
        };
        // Killed after the reap, so in principle the pid could be reused meanwhile; but
        // the kernel keeps a pid number taken while any process still has it as its
        // group id, and a reused pid would have to lead a new group of its own to be hit.
        group.kill();
        let line = match line {
            Some(line) => line,
            None => reader.await,
        };
        (status, line)
    };
    let outcome = tokio::time::timeout(timeout, run).await;
    match outcome {
        Ok((Ok(status), line)) => verdict(addr, status, line, started),
        Ok((Err(source), _)) => Err(ProbeError::Other { addr, source }),
        Err(_) => {
            group.kill();
            // SIGKILL cannot be caught, so this wait ends soon; it runs apart so the
            // probe still fails at its timeout even if the kernel takes a moment.
            tokio::spawn(async move {
                if let Err(error) = child.wait().await {
                    tracing::warn!(error = %error, "cannot reap a timed-out exec check");
                }
            });
            Err(ProbeError::Timeout {
                addr,
                after: timeout,
            })
        }
    }
}

fn verdict(
    addr: SocketAddr,
    status: ExitStatus,
    first_line: String,
    started: Instant,
) -> Result<ProbeOk, ProbeError> {
    match (status.code(), status.signal()) {
        (Some(0), _) => {
            let detail = if first_line.is_empty() {
                "exit 0".to_owned()
            } else {
                format!("exit 0: {first_line}")
            };
            Ok(ProbeOk::new(started.elapsed(), detail))
        }
        (Some(code), _) => Err(ProbeError::Exit {
            addr,
            status: format!("exit {code}"),
            first_line,
        }),
        (None, Some(signal)) => Err(ProbeError::Exit {
            addr,
            status: format!("killed by signal {signal}"),
            first_line,
        }),
        (None, None) => Err(ProbeError::Exit {
            addr,
            status: format!("ended with {status}"),
            first_line,
        }),
    }
}

/// The first line of `stdout` (at most [`STDOUT_LIMIT`] bytes of it, lossily decoded,
/// without its line end); reads on to end of stream and drops the rest.
async fn first_line(stdout: Option<ChildStdout>) -> String {
    let Some(mut stdout) = stdout else {
        return String::new();
    };
    let mut kept = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stdout.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                let room = STDOUT_LIMIT.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
            Err(error) => {
                tracing::debug!(error = %error, "reading an exec check's stdout failed");
                break;
            }
        }
    }
    let line = kept.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    String::from_utf8_lossy(line).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substitutes_address_host_and_port() {
        let v4: SocketAddr = "10.0.0.5:5432".parse().unwrap();
        assert_eq!(
            substitute("--target={address} -h {host} -p {port}", v4),
            "--target=10.0.0.5:5432 -h 10.0.0.5 -p 5432"
        );
        let v6: SocketAddr = "[::1]:6379".parse().unwrap();
        assert_eq!(substitute("{address} {host}", v6), "[::1]:6379 ::1");
    }

    #[test]
    fn validation_names_what_is_wrong() {
        let relative = validate_exec(Path::new("check.sh")).unwrap_err();
        assert_eq!(relative.to_string(), "check.sh is not an absolute path");
        let missing = validate_exec(Path::new("/nonexistent/check.sh")).unwrap_err();
        assert_eq!(missing.to_string(), "/nonexistent/check.sh cannot be found");
        let dir = validate_exec(Path::new("/")).unwrap_err();
        assert!(matches!(dir, ExecError::NotAFile { .. }), "{dir:?}");
        validate_exec(Path::new("/bin/sh")).unwrap();
    }

    #[test]
    fn an_empty_command_is_refused() {
        let check = ExecCheck {
            command: vec![],
            env: vec![],
        };
        let err = spawn(&check, "127.0.0.1:1".parse().unwrap()).unwrap_err();
        assert!(matches!(err, ExecError::Empty), "{err:?}");
    }
}
