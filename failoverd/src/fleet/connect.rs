//! A client for the fleet's etcd: endpoints, TLS, user and password (from its file).
//!
//! The password is read here and handed to the client only: it is never logged, never put
//! in an error (errors name the file, not its content) and never written anywhere.

use std::{future::Future, path::Path, time::Duration};

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};

use super::FleetError;
use crate::config::EtcdSection;

/// How long one etcd request may take before the daemon calls etcd unreachable: 5 s.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a connection attempt may take: 3 s.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// HTTP/2 pings on an idle connection, so a vanished etcd is noticed without traffic: every
/// 2 s, dead after 3 s more without an answer.
const KEEPALIVE: (Duration, Duration) = (Duration::from_secs(2), Duration::from_secs(3));

/// Connects to the cluster `etcd` describes (authenticating if a user is configured).
pub async fn connect(etcd: &EtcdSection) -> Result<Client, FleetError> {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(CONNECT_TIMEOUT)
        .with_keep_alive(KEEPALIVE.0, KEEPALIVE.1)
        .with_keep_alive_while_idle(true);
    if let (Some(user), Some(file)) = (&etcd.username, &etcd.password_file) {
        options = options.with_user(user.clone(), read_password(file)?);
    }
    if let Some(tls) = &etcd.tls {
        let mut t = TlsOptions::new()
            .ca_certificate(Certificate::from_pem(read(&tls.ca, "fleet.etcd.tls.ca")?));
        if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
            t = t.identity(Identity::from_pem(
                read(cert, "fleet.etcd.tls.cert")?,
                read(key, "fleet.etcd.tls.key")?,
            ));
        }
        options = options.with_tls(t);
    }
    bounded(
        "connect",
        CONNECT_TIMEOUT,
        Client::connect(&etcd.endpoints, Some(options)),
    )
    .await
}

/// Runs one etcd call with a time limit: with every endpoint down, the balanced channel
/// waits for one to come back instead of failing.
pub async fn bounded<T>(
    op: &'static str,
    limit: Duration,
    call: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, FleetError> {
    match tokio::time::timeout(limit, call).await {
        Ok(result) => result.map_err(FleetError::etcd(op)),
        Err(_) => Err(FleetError::Timeout {
            op,
            secs: limit.as_secs(),
        }),
    }
}

/// The endpoints as one string, for messages.
pub fn endpoints(etcd: &EtcdSection) -> String {
    etcd.endpoints.join(",")
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, FleetError> {
    std::fs::read(path).map_err(|source| FleetError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// The password: the file's first line, without its line ending.
fn read_password(path: &Path) -> Result<String, FleetError> {
    let bytes = read(path, "fleet.etcd.password_file")?;
    let text = String::from_utf8(bytes).map_err(|_| FleetError::Read {
        what: "fleet.etcd.password_file",
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8"),
    })?;
    Ok(text.lines().next().unwrap_or_default().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_is_the_first_line_without_its_ending() {
        let dir = std::env::temp_dir().join(format!("fo-fleet-pw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("pw");
        std::fs::write(&file, "s3cret\nignored\n").unwrap();
        assert_eq!(read_password(&file).unwrap(), "s3cret");
        std::fs::write(&file, "s3cret\r\n").unwrap();
        assert_eq!(read_password(&file).unwrap(), "s3cret");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_missing_password_file_names_the_file_and_no_secret() {
        let e = read_password(Path::new("/nonexistent/pw")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/pw"), "{e}");
    }
}
