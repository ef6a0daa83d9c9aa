//! Fleet mode: services, drains and every host's view shared through etcd (docs/fleet.md).
//!
//! ```text
//! failoverd fleet publish ──► etcd <prefix>desired/services/<name>  (one txn)
//! failoverd drain --fleet ──► daemon ──► etcd <prefix>desired/drains/<service>/<backend>
//!                                          │ watch (every host)
//!                                          ▼
//!                          agent ──► DaemonApi::apply_fleet ──► reload / drains ──► kernel
//!                          agent ──► etcd <prefix>hosts/<host>  (lease: gone with the host)
//! ```
//! The etcd side lives here: [`keys`] (the layout), [`connect`] (TLS, auth), [`state`] (the
//! desired state and its copy in `state_dir`), [`publish`], [`view`] (each host's view and the
//! fleet matrix) and [`agent`] (the session: snapshot, watch, lease, reconnect). Applying a
//! state to the running daemon is the daemon's job (`daemon::fleet`).

pub mod agent;
pub mod connect;
pub mod keys;
pub mod publish;
pub mod state;
pub mod view;

pub use agent::{FleetLink, FleetStatus};
pub use keys::Keys;
pub use state::{FleetDrain, FleetState, FleetStore};
pub use view::{FleetMatrix, HostView};

use std::path::PathBuf;

/// Why a fleet operation failed. Nothing was changed in etcd when one is returned, unless
/// the variant says otherwise.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// No session with etcd right now (the daemon keeps serving its last fleet state).
    #[error("no working session with etcd ({endpoints}): {reason}; nothing was changed")]
    Unreachable {
        /// The endpoints tried, comma-separated.
        endpoints: String,
        /// The last error seen.
        reason: String,
    },
    /// An etcd request failed.
    #[error("etcd {op}: {source}")]
    Etcd {
        /// What was being done.
        op: &'static str,
        /// The client's error.
        #[source]
        source: etcd_client::Error,
    },
    /// An etcd request did not answer in time (for a write, whether it was made is unknown).
    #[error("etcd {op}: no answer within {secs} s")]
    Timeout {
        /// What was being done.
        op: &'static str,
        /// The limit.
        secs: u64,
    },
    /// A TLS file or the password file could not be read.
    #[error("reading {what} {path}: {source}")]
    Read {
        /// `fleet.etcd.tls.ca`, `fleet.etcd.password_file`…
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Someone else published between this publish's read and its write.
    #[error("another publish changed the fleet's services meanwhile (revision {revision}); nothing was changed: run it again")]
    Raced {
        /// The revision of the other publish.
        revision: i64,
    },
    /// `state_dir/fleet.json` could not be read or written.
    #[error("{op} {path}: {source}")]
    Store {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The watch was cancelled by etcd (its history was compacted past it).
    #[error("etcd cancelled the watch at revision {revision}{}: resyncing", if reason.is_empty() { String::new() } else { format!(" ({reason})") })]
    WatchCancelled {
        /// The compaction revision, 0 if none was given.
        revision: i64,
        /// etcd's reason.
        reason: String,
    },
    /// The watch or lease stream ended.
    #[error("etcd {what} stream ended")]
    StreamEnded {
        /// `watch` or `lease keep-alive`.
        what: &'static str,
    },
    /// The host's lease expired (etcd did not hear from this host in time).
    #[error("the host lease expired; re-registering")]
    LeaseExpired,
}

impl FleetError {
    /// Whether this says etcd could not be reached at all (no connection, no answer, no
    /// leader), as opposed to etcd refusing a request.
    pub fn is_unreachable(&self) -> bool {
        match self {
            FleetError::Unreachable { .. } | FleetError::Timeout { .. } => true,
            FleetError::Etcd { source, .. } => match source {
                etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
                // gRPC's codes are a wire contract: 4 DEADLINE_EXCEEDED, 14 UNAVAILABLE (no
                // connection, or no leader). etcd-client does not re-export tonic's `Code`.
                etcd_client::Error::GRpcStatus(s) => matches!(s.code() as i32, 4 | 14),
                _ => false,
            },
            _ => false,
        }
    }

    /// An etcd call's error, labelled with what it was.
    pub fn etcd(op: &'static str) -> impl FnOnce(etcd_client::Error) -> FleetError {
        move |source| FleetError::Etcd { op, source }
    }
}
