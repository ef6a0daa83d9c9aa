//! The role a database claims (primary or replica) and the role a check wants.

use std::{fmt, net::SocketAddr, time::Duration};

use super::ProbeError;

/// What a database server says it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Takes writes: Postgres not in recovery, MySQL/MariaDB with `read_only` off, a Redis
    /// `master`.
    Primary,
    /// Follows a primary, or refuses writes: Postgres in recovery, `read_only` on, a Redis
    /// `slave`.
    Replica,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Primary => "primary",
            Role::Replica => "replica",
        })
    }
}

/// The `role` a check accepts. Default: `Primary`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum RoleWanted {
    /// `primary`: only a primary passes.
    #[default]
    Primary,
    /// `replica`: only a replica passes (and `max_lag` applies).
    Replica,
    /// `any`: either passes; the role is still reported.
    Any,
}

impl RoleWanted {
    /// Whether a backend claiming `role` passes.
    pub fn accepts(self, role: Role) -> bool {
        match self {
            RoleWanted::Primary => role == Role::Primary,
            RoleWanted::Replica => role == Role::Replica,
            RoleWanted::Any => true,
        }
    }
}

impl fmt::Display for RoleWanted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RoleWanted::Primary => "primary",
            RoleWanted::Replica => "replica",
            RoleWanted::Any => "any",
        })
    }
}

/// What a database check saw, before judging it: the role and, for a replica, its lag
/// (`None`: not measured or unknowable).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Seen {
    pub role: Role,
    pub lag: Option<Duration>,
}

/// The verdict on what a database said: the role must be wanted, and a replica must be
/// within `max_lag` when one is set (a replica that cannot tell its lag fails then).
/// The role is judged first: a demoted primary is a `WrongRole`, never a `Lag`.
pub(super) fn judge(
    addr: SocketAddr,
    wanted: RoleWanted,
    max_lag: Option<Duration>,
    seen: Seen,
) -> Result<(), ProbeError> {
    if !wanted.accepts(seen.role) {
        return Err(ProbeError::WrongRole {
            addr,
            wanted,
            actual: seen.role,
        });
    }
    match (seen.role, max_lag) {
        (Role::Replica, Some(max)) => match seen.lag {
            Some(lag) if lag <= max => Ok(()),
            lag => Err(ProbeError::Lag { addr, lag, max }),
        },
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr() -> SocketAddr {
        "127.0.0.1:5432".parse().unwrap()
    }

    #[test]
    fn a_replica_answering_a_primary_check_is_a_wrong_role_not_a_lag() {
        let seen = Seen {
            role: Role::Replica,
            lag: None,
        };
        let err = judge(
            addr(),
            RoleWanted::Primary,
            Some(Duration::from_secs(1)),
            seen,
        )
        .unwrap_err();
        assert!(err.is_wrong_role(), "{err:?}");
        assert_eq!(err.reason(), "role");
        assert_eq!(err.role_seen(), Some(Role::Replica));
        assert_eq!(
            err.to_string(),
            "127.0.0.1:5432 is a replica, the check wants primary"
        );
    }

    #[test]
    fn max_lag_bounds_replicas_only() {
        let max = Some(Duration::from_secs(1));
        let replica = |lag| Seen {
            role: Role::Replica,
            lag,
        };
        judge(
            addr(),
            RoleWanted::Replica,
            max,
            replica(Some(Duration::from_millis(900))),
        )
        .unwrap();
        let err = judge(
            addr(),
            RoleWanted::Any,
            max,
            replica(Some(Duration::from_millis(1500))),
        )
        .unwrap_err();
        assert_eq!(err.reason(), "lag");
        assert_eq!(
            err.to_string(),
            "127.0.0.1:5432 lags 1.5s, more than the 1.0s allowed"
        );
        let err = judge(addr(), RoleWanted::Replica, max, replica(None)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "127.0.0.1:5432 lags by an unknown time, more than the 1.0s allowed"
        );
        // No max_lag: an unknown lag is no failure.
        judge(addr(), RoleWanted::Replica, None, replica(None)).unwrap();
        // A primary has no lag to judge.
        let primary = Seen {
            role: Role::Primary,
            lag: None,
        };
        judge(addr(), RoleWanted::Any, max, primary).unwrap();
    }

    #[test]
    fn each_wanted_role_accepts_what_it_names() {
        assert!(RoleWanted::Primary.accepts(Role::Primary));
        assert!(!RoleWanted::Primary.accepts(Role::Replica));
        assert!(RoleWanted::Replica.accepts(Role::Replica));
        assert!(!RoleWanted::Replica.accepts(Role::Primary));
        assert!(RoleWanted::Any.accepts(Role::Primary));
        assert!(RoleWanted::Any.accepts(Role::Replica));
        assert_eq!(RoleWanted::default(), RoleWanted::Primary);
    }
}
