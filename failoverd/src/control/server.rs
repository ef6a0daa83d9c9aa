//! The control socket's server: [`bind`] sets up the Unix socket with safe permissions, [`serve`] answers on it until shutdown.
//!
//! Requests are HTTP/1.1 with JSON bodies (routes in docs/control-api.md);
//! each connection runs on its own task, so one slow client holds up no other.

use std::{
    fs::{self, DirBuilder, Permissions},
    io,
    os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use tokio::{net::UnixListener, sync::watch, task::JoinSet};

use super::{connection, peer, ControlHandler};
use crate::limits::{AcceptGate, Listener};

/// Mode of the socket's directory when failoverd creates it: 0750.
pub const DIR_MODE: u32 = 0o750;
/// Mode of the socket: 0600, only its owner (root in production) may connect.
pub const SOCKET_MODE: u32 = 0o600;

/// How long connections get to finish their requests after shutdown before they are cut: 2 s.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// The most control connections served at once: 64. More wait in the socket's backlog, which
/// costs the daemon no file descriptor.
pub const MAX_CONNECTIONS: usize = 64;

/// Why the control socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The socket's directory could not be created.
    #[error("creating the control socket directory {}: {source}", path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A daemon already answers on the socket.
    #[error("another failoverd is running: it answers on {}; stop it first, or give this one another control.socket", path.display())]
    AlreadyRunning {
        /// The socket.
        path: PathBuf,
    },
    /// Something other than a socket has the socket's name; it is left alone.
    #[error("{} exists and is not a socket; refusing to replace it", path.display())]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// Whether the existing socket is live could not be told.
    #[error("checking whether a daemon answers on {}: {source}", path.display())]
    Probe {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The stale socket (or a leftover temporary one) could not be removed.
    #[error("removing the stale socket {}: {source}", path.display())]
    RemoveStale {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Binding, restricting or moving the socket into place failed.
    #[error("{what} the control socket {}: {source}", path.display())]
    Bind {
        /// `binding`, `setting the mode of` or `moving into place`.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// Binds the control socket at `path`, ready for [`serve`]. Call it inside a tokio runtime.
///
/// - Creates the parent directory with mode 0750 when it is missing; an
///   existing directory keeps its mode (it is the administrator's, e.g.
///   systemd's `RuntimeDirectory=`).
/// - Replaces a stale socket file (nothing answers on it) but fails with
///   [`ServerError::AlreadyRunning`] when a daemon answers, and never replaces
///   a file that is not a socket.
/// - The socket has mode 0600 from the moment it carries its name (it is
///   bound under a temporary name, restricted, then renamed), owned by the
///   running user: root in production.
pub fn bind(path: &Path) -> Result<UnixListener, ServerError> {
    create_parent(path)?;
    remove_stale(path)?;
    let temporary = temporary_name(path);
    remove_if_socket(&temporary)?;
    let bind_err = |what, source| ServerError::Bind {
        what,
        path: path.to_path_buf(),
        source,
    };
    let listener = UnixListener::bind(&temporary).map_err(|e| bind_err("binding", e))?;
    // bind() creates the file with 0777 & ~umask; the temporary name keeps
    // clients from connecting before the mode is tightened.
    let placed = fs::set_permissions(&temporary, Permissions::from_mode(SOCKET_MODE))
        .map_err(|e| bind_err("setting the mode of", e))
        .and_then(|()| fs::rename(&temporary, path).map_err(|e| bind_err("moving into place", e)));
    if let Err(e) = placed {
        if let Err(cleanup) = fs::remove_file(&temporary) {
            tracing::warn!(path = %temporary.display(), error = %cleanup, "control: cannot remove the temporary socket");
        }
        return Err(e);
    }
    tracing::info!(path = %path.display(), "control socket listening");
    Ok(listener)
}

/// Serves control requests on `listener` until `shutdown` turns true (or its sender is dropped).
///
/// Each connection runs on its own task. A malformed request gets a 400 with
/// an [`ErrorBody`](super::ErrorBody); bodies are capped at 64 KiB (413), a
/// client gets 10 s to send headers or a body, and a connection lasts at most
/// 60 s. At most [`MAX_CONNECTIONS`] are served at once, and none is accepted while the daemon
/// is short of file descriptors (see [`crate::limits`]); failed accepts back off from 100 ms to
/// 1 s and are logged once per burst. Peers other than this process's user or root get 403.
/// On shutdown, requests in flight get [`SHUTDOWN_GRACE`] to finish.
pub async fn serve<H: ControlHandler>(
    listener: UnixListener,
    handler: Arc<H>,
    mut shutdown: watch::Receiver<bool>,
) {
    let server_uid = peer::effective_uid();
    let mut connections = JoinSet::new();
    let mut gate = AcceptGate::new(Listener::Control, MAX_CONNECTIONS);
    // Ends when shutdown turns true or its sender goes away.
    while !*shutdown.borrow_and_update() {
        tokio::select! {
            biased;
            changed = shutdown.changed() => {
                if changed.is_err() {
                    tracing::debug!("control: the shutdown sender is gone; stopping");
                    break;
                }
            }
            Some(done) = connections.join_next(), if !connections.is_empty() => reap(done),
            (accepted, permit) = gate.accept(|| listener.accept()) => {
                let (stream, _) = accepted;
                let (handler, shutdown) = (Arc::clone(&handler), shutdown.clone());
                connections.spawn(async move {
                    // Released when the connection ends, letting the next one in.
                    let _permit = permit;
                    connection::serve(stream, handler, server_uid, shutdown).await;
                });
            }
        }
    }
    drop(listener);
    let grace = tokio::time::sleep(SHUTDOWN_GRACE);
    tokio::pin!(grace);
    // Ends when every connection has, or at the grace deadline.
    loop {
        tokio::select! {
            done = connections.join_next() => match done {
                Some(done) => reap(done),
                None => break,
            },
            () = &mut grace => {
                tracing::warn!(connections = connections.len(), "control: cutting connections still busy after shutdown");
                connections.abort_all();
                break;
            }
        }
    }
    tracing::info!("control socket closed");
}

fn reap(done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done {
        if e.is_panic() {
            tracing::error!(error = %e, "control: a connection task panicked");
        }
    }
}

fn create_parent(path: &Path) -> Result<(), ServerError> {
    let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) else {
        return Ok(());
    };
    let create_err = |source| ServerError::CreateDir {
        path: dir.to_path_buf(),
        source,
    };
    if let Some(above) = dir.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(above).map_err(create_err)?;
    }
    match DirBuilder::new().mode(DIR_MODE).create(dir) {
        // The mode given to mkdir is masked by the umask: set it exactly.
        Ok(()) => fs::set_permissions(dir, Permissions::from_mode(DIR_MODE)).map_err(create_err),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(create_err(e)),
    }
}

/// Removes `path` if it is a socket nothing answers on.
fn remove_stale(path: &Path) -> Result<(), ServerError> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(ServerError::Probe {
                path: path.to_path_buf(),
                source,
            })
        }
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(ServerError::NotASocket {
                path: path.to_path_buf(),
            })
        }
        Ok(_) => {}
    }
    match probe(path) {
        Ok(Answer::Live) => Err(ServerError::AlreadyRunning {
            path: path.to_path_buf(),
        }),
        Ok(Answer::Nobody) => {
            tracing::info!(path = %path.display(), "control: replacing a stale socket");
            remove_if_socket(path)
        }
        Err(source) => Err(ServerError::Probe {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Removes `path` if it is a socket; a missing file is fine, anything else is left alone.
fn remove_if_socket(path: &Path) -> Result<(), ServerError> {
    let is_socket = match fs::symlink_metadata(path) {
        Ok(meta) => meta.file_type().is_socket(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(ServerError::RemoveStale {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    if !is_socket {
        return Err(ServerError::NotASocket {
            path: path.to_path_buf(),
        });
    }
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(ServerError::RemoveStale {
            path: path.to_path_buf(),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// `control.sock` → `.control.sock.<pid>.tmp` next to it.
fn temporary_name(path: &Path) -> PathBuf {
    let name = path.file_name().map_or_else(
        || "control.sock".into(),
        |n| n.to_string_lossy().into_owned(),
    );
    path.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
}

/// Whether anything listens on an existing socket file.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    Live,
    Nobody,
}

/// Connects to `path` without blocking.
///
/// A blocking connect waits when the listener's backlog is full, which is
/// exactly when a wedged daemon still holds the socket; a non-blocking one
/// says EAGAIN and that counts as live.
fn probe(path: &Path) -> io::Result<Answer> {
    use socket2::{Domain, SockAddr, Socket, Type};
    let addr = SockAddr::unix(path)?;
    let socket = Socket::new(Domain::UNIX, Type::STREAM.nonblocking().cloexec(), None)?;
    match socket.connect(&addr) {
        Ok(()) => Ok(Answer::Live),
        Err(e) => match e.raw_os_error() {
            Some(libc::EAGAIN | libc::EINPROGRESS) => Ok(Answer::Live),
            Some(libc::ECONNREFUSED | libc::ENOENT) => Ok(Answer::Nobody),
            _ => Err(e),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_temporary_name_is_hidden_next_to_the_socket() {
        let t = temporary_name(Path::new("/run/failoverd/control.sock"));
        assert_eq!(t.parent(), Some(Path::new("/run/failoverd")));
        let name = t.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.starts_with(".control.sock.") && name.ends_with(".tmp"),
            "{name}"
        );
    }

    #[test]
    fn a_missing_socket_file_has_nobody_behind_it() {
        let path = std::env::temp_dir().join(format!("fo-probe-missing-{}", std::process::id()));
        assert_eq!(probe(&path).unwrap(), Answer::Nobody);
    }

    #[test]
    fn an_overlong_path_is_an_error_not_a_truncation() {
        let path = PathBuf::from(format!("/tmp/{}", "x".repeat(200)));
        assert_eq!(
            probe(&path).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
    }
}
