//! The exit codes of `failoverd`, documented and stable, so scripts and systemd can tell
//! an unreachable daemon from an invalid config from a refused operation.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | done |
//! | 1 | the operation failed (refused by the daemon, a datapath error, …) |
//! | 2 | usage: unknown flag, missing argument (clap's own code) |
//! | 3 | the daemon could not be reached (no socket, nobody listening, no answer in time) |
//! | 4 | the config is invalid (`check`, `run`, and `reload` when the daemon refuses the file) |

use std::error::Error;

use super::command::CommandError;
use crate::{config::ConfigError, control::client::ClientError};

/// The operation failed.
pub const FAILED: u8 = 1;
/// Usage error (clap exits with it by itself).
pub const USAGE: u8 = 2;
/// The daemon could not be reached.
pub const UNREACHABLE: u8 = 3;
/// The config is invalid.
pub const BAD_CONFIG: u8 = 4;

/// The exit code for an error a subcommand returned.
pub fn code(error: &(dyn Error + 'static)) -> u8 {
    if error.downcast_ref::<ConfigError>().is_some()
        || matches!(
            error.downcast_ref::<super::check::CheckError>(),
            Some(super::check::CheckError::Config(_))
        )
        || matches!(
            error.downcast_ref::<super::run::RunError>(),
            Some(super::run::RunError::Config(_))
        )
        || matches!(
            error.downcast_ref::<super::cleanup::CleanupError>(),
            Some(super::cleanup::CleanupError::Config(_))
        )
        || matches!(
            error.downcast_ref::<super::fleet::FleetCliError>(),
            Some(super::fleet::FleetCliError::Config(_))
        )
    {
        return BAD_CONFIG;
    }
    // etcd, for a fleet command, is what the daemon is for the others: not reached.
    if matches!(
        error.downcast_ref::<super::fleet::FleetCliError>(),
        Some(super::fleet::FleetCliError::Fleet(
            crate::fleet::FleetError::Unreachable { .. } | crate::fleet::FleetError::Timeout { .. }
        ))
    ) {
        return UNREACHABLE;
    }
    match error.downcast_ref::<CommandError>() {
        Some(CommandError::Config(_)) => BAD_CONFIG,
        Some(CommandError::Client(client)) => client_code(client),
        _ => FAILED,
    }
}

fn client_code(error: &ClientError) -> u8 {
    match error {
        ClientError::Connect { .. } | ClientError::Timeout { .. } => UNREACHABLE,
        // 422: the daemon refused the config file (reload).
        ClientError::Server { status: 422, .. } => BAD_CONFIG,
        _ => FAILED,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_of_failure_has_its_code() {
        let unreachable = CommandError::Client(ClientError::Connect {
            path: "/nope".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        });
        assert_eq!(code(&unreachable), UNREACHABLE);
        let refused_config = CommandError::Client(ClientError::Server {
            status: 422,
            message: "f.yaml:1:1: x: bad".into(),
        });
        assert_eq!(code(&refused_config), BAD_CONFIG);
        let not_found = CommandError::Client(ClientError::Server {
            status: 404,
            message: "no service named `x`".into(),
        });
        assert_eq!(code(&not_found), FAILED);
        let bad = crate::config::parse("services: [", std::path::Path::new("t.yaml")).unwrap_err();
        assert_eq!(code(&bad), BAD_CONFIG);
    }
}
