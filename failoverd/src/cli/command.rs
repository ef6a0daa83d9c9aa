//! What every control subcommand (`status`, `drain`, `undrain`, `failback`, `reload`, `explain`) shares: the socket flags, the runtime and the error.

use std::{
    future::Future,
    io::{self, Write as _},
    path::PathBuf,
};

use crate::config::{self, ConfigError, DEFAULT_CONTROL_SOCKET};
use crate::control::client::{ClientError, ControlClient};

/// Which daemon to talk to: `--socket PATH` (or `FAILOVERD_SOCKET`), else the
/// `control.socket` of `--config FILE` (or `FAILOVERD_CONFIG`), else the default socket.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SocketArgs {
    /// The daemon's control socket; wins over --config. Default: /run/failoverd/control.sock.
    #[arg(long, value_name = "PATH", env = "FAILOVERD_SOCKET")]
    pub socket: Option<PathBuf>,
    /// Use the `control.socket` of this config file.
    #[arg(long, value_name = "FILE", env = "FAILOVERD_CONFIG")]
    pub config: Option<PathBuf>,
}

impl SocketArgs {
    /// The socket these flags name: `--socket`, else `--config`'s `control.socket`, else the default.
    pub fn path(&self) -> Result<PathBuf, ConfigError> {
        match (&self.socket, &self.config) {
            (Some(socket), _) => Ok(socket.clone()),
            (None, Some(config)) => Ok(config::load(config)?.control.socket),
            (None, None) => Ok(PathBuf::from(DEFAULT_CONTROL_SOCKET)),
        }
    }

    /// A client of that socket.
    pub fn client(&self) -> Result<ControlClient, ConfigError> {
        self.path().map(ControlClient::new)
    }

    /// Like [`Self::path`], but a `--config` that does not validate still names its socket:
    /// `control.socket` is read from the file as plain YAML, else the default is used. For
    /// `reload`, whose whole point is that the daemon validates the file and answers with
    /// the located error (and counts it in its metrics and alerts).
    pub fn path_even_if_invalid(&self) -> PathBuf {
        match (&self.socket, &self.config) {
            (Some(socket), _) => socket.clone(),
            (None, Some(file)) => config::load(file)
                .map(|c| c.control.socket)
                .unwrap_or_else(|_| socket_of_unvalidated(file)),
            (None, None) => PathBuf::from(DEFAULT_CONTROL_SOCKET),
        }
    }
}

/// `control.socket` of a config file that does not validate, read as plain YAML; the
/// default when the file has none or does not even parse.
fn socket_of_unvalidated(file: &std::path::Path) -> PathBuf {
    /// Only the one key; everything else in the file is skipped unread.
    #[derive(serde::Deserialize)]
    struct Doc {
        control: Option<Control>,
    }
    #[derive(serde::Deserialize)]
    struct Control {
        socket: Option<PathBuf>,
    }
    std::fs::read_to_string(file)
        .ok()
        .and_then(|text| serde_saphyr::from_str::<Doc>(&text).ok())
        .and_then(|doc| doc.control?.socket)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONTROL_SOCKET))
}

/// Why a control subcommand failed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// `--config` could not be read, so the socket is unknown.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The daemon could not be reached or refused the request; its message is shown verbatim.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The async runtime could not be set up.
    #[error("setting up the async runtime: {source}")]
    Runtime {
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The answer could not be written to standard output.
    #[error("writing to standard output: {source}")]
    Output {
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// Runs `future` on a small current-thread runtime: one request needs no more.
pub fn block_on<T>(
    future: impl Future<Output = Result<T, CommandError>>,
) -> Result<T, CommandError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| CommandError::Runtime { source })?
        .block_on(future)
}

/// Writes `text` to standard output. A closed pipe (`failoverd status | head`) is not an error.
pub fn print(text: &str) -> Result<(), CommandError> {
    let mut out = io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(CommandError::Output { source: e }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn the_socket_defaults_to_the_run_directory() {
        assert_eq!(
            SocketArgs::default().path().unwrap(),
            Path::new("/run/failoverd/control.sock")
        );
    }

    #[test]
    fn an_explicit_socket_wins() {
        let args = SocketArgs {
            socket: Some("/tmp/x.sock".into()),
            config: None,
        };
        assert_eq!(args.path().unwrap(), Path::new("/tmp/x.sock"));
    }

    /// A directory removed on drop, even when the test fails.
    struct TempDir(PathBuf);

    impl Drop for TempDir {
        fn drop(&mut self) {
            if let Err(e) = std::fs::remove_dir_all(&self.0) {
                eprintln!("could not remove {}: {e}", self.0.display());
            }
        }
    }

    #[test]
    fn a_config_names_its_control_socket() {
        let dir = TempDir(std::env::temp_dir().join(format!("fo-sockargs-{}", std::process::id())));
        std::fs::create_dir_all(&dir.0).unwrap();
        let file = dir.0.join("f.yaml");
        let text = "control: { socket: /tmp/elsewhere.sock }\nservices:\n  - name: s\n    vip: 10.96.0.1:80\n    backends: [ { address: 10.0.0.1:80 } ]\n";
        std::fs::write(&file, text).unwrap();
        let args = SocketArgs {
            socket: None,
            config: Some(file),
        };
        assert_eq!(args.path().unwrap(), Path::new("/tmp/elsewhere.sock"));
    }

    #[test]
    fn an_unreadable_config_is_an_error() {
        let args = SocketArgs {
            socket: None,
            config: Some("/nonexistent/failoverd.yaml".into()),
        };
        assert!(matches!(args.path(), Err(ConfigError::Io { .. })));
    }
}
