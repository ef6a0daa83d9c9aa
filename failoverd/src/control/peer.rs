//! Who is on the other end of a control connection: SO_PEERCRED, the user's name, and whether that user may use the socket.

use std::{ffi::CStr, mem, ptr};

use tokio::net::UnixStream;

use super::Caller;

/// The peer of one accepted connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Peer {
    /// Its effective uid when it connected; `None` when the kernel did not say.
    pub uid: Option<u32>,
    /// What the handler is told about it.
    pub caller: Caller,
}

impl Peer {
    /// Reads the peer's credentials from `stream` and looks up its user name.
    pub async fn of(stream: &UnixStream) -> Peer {
        let cred = match stream.peer_cred() {
            Ok(cred) => cred,
            Err(e) => {
                tracing::warn!(error = %e, "control: cannot read the peer's credentials; refusing its requests");
                return Peer {
                    uid: None,
                    caller: Caller {
                        user: "unknown peer".to_owned(),
                        pid: 0,
                    },
                };
            }
        };
        let uid = cred.uid();
        // getpwuid_r may ask NSS (LDAP, sssd) and block: keep it off the runtime's threads.
        let user = match tokio::task::spawn_blocking(move || user_name(uid)).await {
            Ok(Some(name)) => name,
            Ok(None) => format!("uid {uid}"),
            Err(e) => {
                tracing::warn!(uid, error = %e, "control: user name lookup failed");
                format!("uid {uid}")
            }
        };
        Peer {
            uid: Some(uid),
            caller: Caller {
                user,
                pid: cred.pid().unwrap_or(0),
            },
        }
    }
}

/// Whether a peer with `peer_uid` may use a socket served by `server_uid`: the same user, or root.
///
/// The socket's 0600 mode already keeps other users out; this holds even if
/// someone loosens the mode or the socket is passed to another process.
pub(crate) fn allowed(peer_uid: Option<u32>, server_uid: u32) -> bool {
    matches!(peer_uid, Some(uid) if uid == server_uid || uid == 0)
}

/// The effective uid of this process.
pub(crate) fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// The name of user `uid` from the password database, if it has one.
pub(crate) fn user_name(uid: u32) -> Option<String> {
    // Records are small; the buffer grows only for unusual NSS backends, and
    // at most to 1 MiB so a misbehaving one cannot make it grow forever.
    let mut size = 1024;
    while size <= 1 << 20 {
        let mut buf = vec![0 as libc::c_char; size];
        // SAFETY: passwd is plain data (integers and pointers); all-zero is a valid value.
        let mut entry: libc::passwd = unsafe { mem::zeroed() };
        let mut result: *mut libc::passwd = ptr::null_mut();
        // SAFETY: every pointer is valid for the call and `buf.len()` is the
        // buffer's real size; getpwuid_r writes only into `entry` and `buf`.
        let rc =
            unsafe { libc::getpwuid_r(uid, &mut entry, buf.as_mut_ptr(), buf.len(), &mut result) };
        if rc == libc::ERANGE {
            size *= 4;
            continue;
        }
        if rc != 0 || result.is_null() || entry.pw_name.is_null() {
            return None;
        }
        // SAFETY: on success pw_name points at a NUL-terminated string inside `buf`, which is alive here.
        let name = unsafe { CStr::from_ptr(entry.pw_name) };
        return Some(name.to_string_lossy().into_owned());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_user_and_root_are_allowed() {
        assert!(allowed(Some(1000), 1000));
        assert!(allowed(Some(0), 1000));
        assert!(allowed(Some(0), 0));
    }

    #[test]
    fn other_users_and_unknown_peers_are_refused() {
        assert!(!allowed(Some(65534), 0));
        assert!(!allowed(Some(1001), 1000));
        assert!(!allowed(None, 0));
    }

    #[test]
    fn root_is_named_root() {
        assert_eq!(user_name(0).as_deref(), Some("root"));
    }

    #[test]
    fn a_uid_without_an_entry_has_no_name() {
        assert_eq!(user_name(3_999_999_999), None);
    }
}
