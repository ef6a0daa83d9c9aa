//! The postgres probe: a login over the Postgres protocol (tokio-postgres) and one
//! simple query, `pg_is_in_recovery()` and the replay lag, bounded as a whole by the timeout.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, OnceLock},
    time::Duration,
};

use tokio::{net::TcpStream, time::Instant};
use tokio_postgres::{
    config::SslMode,
    error::SqlState,
    tls::{MakeTlsConnect, TlsConnect},
    NoTls, SimpleQueryMessage,
};

use super::{
    credentials,
    http::AbortOnDrop,
    role::{judge, Seen},
    tcp, within, ProbeError, ProbeOk, Role, RoleWanted,
};

/// What a postgres probe asks and accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgCheck {
    /// The role that passes. Default: `Primary`.
    pub role: RoleWanted,
    /// The login role. Default: `postgres`.
    pub user: String,
    /// The database to connect to. Default: `None`, the one named like `user` (as libpq).
    pub database: Option<String>,
    /// A file holding the password, read at each probe. Default: `None`, no password
    /// (trust or peer setups; a server that asks for one fails the probe with `auth`).
    pub password_file: Option<PathBuf>,
    /// TLS to the server. Default: `Prefer`.
    pub tls: PgTls,
    /// For a replica: the most replay lag that passes. Default: `None`, any lag.
    pub max_lag: Option<Duration>,
}

impl Default for PgCheck {
    fn default() -> Self {
        PgCheck {
            role: RoleWanted::Primary,
            user: "postgres".to_owned(),
            database: None,
            password_file: None,
            tls: PgTls::Prefer,
            max_lag: None,
        }
    }
}

/// TLS to a Postgres server, with libpq's `sslmode` meanings for `disable`, `prefer` and
/// `require`: the connection is encrypted but the server's certificate is not verified
/// (a health probe guards against a wrong answer, not an impostor on the path; there is
/// no `verify-full` yet).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum PgTls {
    /// `off`: plain TCP.
    Off,
    /// `prefer`: TLS when the server offers it, plain when it declines.
    #[default]
    Prefer,
    /// `require`: TLS or fail (reason `tls`).
    Require,
}

/// Whether the server is in recovery and, for a replica, how far its replay is behind.
///
/// `now() - pg_last_xact_replay_timestamp()` alone grows while the primary is idle (no
/// new transactions to replay), so a replica that has replayed everything it received
/// while its WAL receiver is streaming counts as 0 behind. Reading `pg_stat_wal_receiver`'s
/// status needs `pg_read_all_stats` (or `pg_monitor`); without it the timestamp is used.
/// A replica that has replayed no transaction since it started has no timestamp: its lag
/// is unknown (NULL).
const QUERY: &str = "SELECT pg_is_in_recovery(), \
     CASE WHEN NOT pg_is_in_recovery() THEN NULL \
     WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() \
      AND EXISTS (SELECT 1 FROM pg_stat_wal_receiver WHERE status = 'streaming') THEN 0 \
     ELSE extract(epoch FROM now() - pg_last_xact_replay_timestamp()) END";

/// Logs in to `addr` and asks its role; connect, TLS, login and query all count against
/// `timeout`.
pub(super) async fn check(
    check: &PgCheck,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<ProbeOk, ProbeError> {
    let started = Instant::now();
    let seen = within(addr, timeout, exchange(check, addr)).await?;
    judge(addr, check.role, check.max_lag, seen)?;
    Ok(ProbeOk {
        latency: started.elapsed(),
        detail: evidence(seen),
        role: Some(seen.role),
    })
}

fn evidence(seen: Seen) -> String {
    match (seen.role, seen.lag) {
        (Role::Primary, _) => "primary".to_owned(),
        (Role::Replica, Some(lag)) => format!("replica, lag {}", super::format_secs(lag)),
        (Role::Replica, None) => "replica, lag unknown".to_owned(),
    }
}

async fn exchange(check: &PgCheck, addr: SocketAddr) -> Result<Seen, ProbeError> {
    let password = credentials::read_optional(check.password_file.as_deref()).await?;
    let mut config = tokio_postgres::Config::new();
    config
        .user(&check.user)
        .dbname(check.database.as_deref().unwrap_or(&check.user))
        .application_name("failoverd");
    if let Some(password) = password {
        config.password(password);
    }
    let stream = tcp::connect(addr).await?;
    match check.tls {
        PgTls::Off => {
            config.ssl_mode(SslMode::Disable);
            query(&config, stream, NoTls, addr).await
        }
        PgTls::Prefer | PgTls::Require => {
            config.ssl_mode(if check.tls == PgTls::Require {
                SslMode::Require
            } else {
                SslMode::Prefer
            });
            let mut make = tokio_postgres_rustls::MakeRustlsConnect::new(tls_config().clone());
            let tls = <_ as MakeTlsConnect<TcpStream>>::make_tls_connect(
                &mut make,
                &addr.ip().to_string(),
            )
            .map_err(|e| ProbeError::Tls {
                addr,
                detail: e.to_string(),
            })?;
            query(&config, stream, tls, addr).await
        }
    }
}

async fn query<T>(
    config: &tokio_postgres::Config,
    stream: TcpStream,
    tls: T,
    addr: SocketAddr,
) -> Result<Seen, ProbeError>
where
    T: TlsConnect<TcpStream>,
    T::Stream: Send + 'static,
{
    let (client, connection) = config
        .connect_raw(stream, tls)
        .await
        .map_err(|e| classify(addr, e))?;
    let mut driver = AbortOnDrop(tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(backend = %addr, error = %error, "postgres probe connection ended with an error");
        }
    }));
    let messages = client
        .simple_query(QUERY)
        .await
        .map_err(|e| classify(addr, e))?;
    // Dropping the client sends Terminate; waiting for the driver lets it go out, so the
    // server logs a clean disconnect rather than an unexpected EOF on every probe.
    drop(client);
    if let Err(e) = (&mut driver.0).await {
        tracing::debug!(backend = %addr, error = %e, "postgres probe connection task failed");
    }
    let row = messages
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(row),
            _ => None,
        })
        .ok_or_else(|| protocol(addr, "the role query returned no row"))?;
    let role = match row.get(0) {
        Some("t") => Role::Replica,
        Some("f") => Role::Primary,
        other => {
            return Err(protocol(
                addr,
                &format!("pg_is_in_recovery() answered {other:?}"),
            ))
        }
    };
    let lag = match row.get(1) {
        None => None,
        Some(text) => {
            let secs: f64 = text
                .parse()
                .map_err(|_| protocol(addr, &format!("the replay lag {text:?} is no number")))?;
            // A replica's clock a little ahead of the primary's shows a negative lag.
            Some(Duration::try_from_secs_f64(secs.max(0.0)).unwrap_or(Duration::MAX))
        }
    };
    Ok(Seen { role, lag })
}

fn protocol(addr: SocketAddr, detail: &str) -> ProbeError {
    ProbeError::Protocol {
        addr,
        protocol: "postgres",
        detail: detail.to_owned(),
    }
}

/// Sorts a tokio-postgres error into the probe's failure kinds.
fn classify(addr: SocketAddr, error: tokio_postgres::Error) -> ProbeError {
    if let Some(db) = error.as_db_error() {
        let code = db.code();
        // Class 28 is "invalid authorization specification" (wrong password, no pg_hba
        // entry); a database that does not exist is a login the server refuses too.
        if code.code().starts_with("28") || *code == SqlState::INVALID_CATALOG_NAME {
            return ProbeError::Auth {
                addr,
                message: db.message().to_owned(),
            };
        }
        return ProbeError::Query {
            addr,
            message: format!("{} ({})", db.message(), code.code()),
        };
    }
    // tokio-postgres' Display leaves out the cause ("error performing TLS handshake"):
    // the evidence needs it.
    let mut text = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    if text.contains("password missing") {
        return ProbeError::Auth {
            addr,
            message: "the server asks for a password and the check has no password_file".to_owned(),
        };
    }
    if text.contains("TLS") {
        return ProbeError::Tls { addr, detail: text };
    }
    protocol(addr, &text)
}

/// One client config for every TLS probe: ring, TLS 1.2 and 1.3, no certificate check.
fn tls_config() -> &'static rustls::ClientConfig {
    static CONFIG: OnceLock<rustls::ClientConfig> = OnceLock::new();
    CONFIG.get_or_init(|| {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .expect("ring supports the default TLS versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoCertificateCheck(provider)))
            .with_no_client_auth()
    })
}

/// libpq's `sslmode=require`: any certificate, but the handshake's signatures are still
/// checked, so the session is encrypted to whoever holds the certificate's key.
#[derive(Debug)]
struct NoCertificateCheck(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoCertificateCheck {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evidence_names_the_role_and_the_lag() {
        let seen = |role, lag| Seen { role, lag };
        assert_eq!(evidence(seen(Role::Primary, None)), "primary");
        assert_eq!(
            evidence(seen(Role::Replica, Some(Duration::from_millis(400)))),
            "replica, lag 0.4s"
        );
        assert_eq!(evidence(seen(Role::Replica, None)), "replica, lag unknown");
    }

    #[test]
    fn the_tls_config_builds() {
        assert!(tls_config().alpn_protocols.is_empty());
    }
}
