//! The mysql probe (MySQL and MariaDB): a login (mysql_async) and `@@global.read_only`,
//! plus the replica status when a `max_lag` is set, bounded as a whole by the timeout.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use mysql_async::{prelude::Queryable, Conn, OptsBuilder, Row, Value};
use tokio::time::Instant;

use super::{
    credentials,
    role::{judge, Seen},
    within, ProbeError, ProbeOk, Role, RoleWanted,
};

/// What a mysql probe asks and accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MysqlCheck {
    /// The role that passes. Default: `Primary`.
    pub role: RoleWanted,
    /// The login user. Default: `root`.
    pub user: String,
    /// The database to select at login. Default: `None`, none.
    pub database: Option<String>,
    /// A file holding the password, read at each probe. Default: `None`, no password.
    pub password_file: Option<PathBuf>,
    /// For a replica: the most `Seconds_Behind_Master`/`Seconds_Behind_Source` that
    /// passes. Default: `None`, any lag (and the replica status is not read).
    pub max_lag: Option<Duration>,
}

impl Default for MysqlCheck {
    fn default() -> Self {
        MysqlCheck {
            role: RoleWanted::Primary,
            user: "root".to_owned(),
            database: None,
            password_file: None,
            max_lag: None,
        }
    }
}

/// MySQL server error codes that mean the login was refused: access denied (1045), to
/// the database (1044), unknown database (1049), host not allowed (1130), access denied
/// without a password (1698), auth plugin missing (1524).
const LOGIN_REFUSED: [u16; 6] = [1045, 1044, 1049, 1130, 1698, 1524];

/// ER_PARSE_ERROR: the server has no `SHOW REPLICA STATUS` (MariaDB < 10.5.1, MySQL < 8.0.22).
const PARSE_ERROR: u16 = 1064;

/// Logs in to `addr` and asks its role; connect, login and queries all count against
/// `timeout`. A MySQL server talks first, so a server of another protocol usually stays
/// silent and the probe fails with `timeout`.
pub(super) async fn check(
    check: &MysqlCheck,
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
        (Role::Primary, _) => "primary (read_only off)".to_owned(),
        (Role::Replica, Some(lag)) => {
            format!("replica (read_only on), lag {}", super::format_secs(lag))
        }
        (Role::Replica, None) => "replica (read_only on)".to_owned(),
    }
}

async fn exchange(check: &MysqlCheck, addr: SocketAddr) -> Result<Seen, ProbeError> {
    let password = credentials::read_optional(check.password_file.as_deref()).await?;
    let opts = OptsBuilder::default()
        .ip_or_hostname(addr.ip().to_string())
        .tcp_port(addr.port())
        .user(Some(check.user.clone()))
        .pass(password)
        .db_name(check.database.clone())
        // Otherwise the client asks for @@socket and reconnects through it: the probe
        // must test the address it was given.
        .prefer_socket(false)
        .stmt_cache_size(0);
    let mut conn = Conn::new(opts).await.map_err(|e| classify(addr, e))?;
    let result = ask(&mut conn, check, addr).await;
    // COM_QUIT, so the server does not count an aborted connection per probe.
    if let Err(error) = conn.disconnect().await {
        tracing::debug!(backend = %addr, error = %error, "mysql probe disconnect failed");
    }
    result
}

async fn ask(conn: &mut Conn, check: &MysqlCheck, addr: SocketAddr) -> Result<Seen, ProbeError> {
    // `super_read_only` (MySQL only) implies `read_only`, so one variable serves both.
    let read_only: Option<Row> = conn
        .query_first("SELECT @@global.read_only")
        .await
        .map_err(|e| classify(addr, e))?;
    let role = match read_only
        .as_ref()
        .and_then(|row| row.as_ref(0))
        .map(integer)
    {
        Some(Some(0)) => Role::Primary,
        Some(Some(_)) => Role::Replica,
        other => {
            return Err(protocol(
                addr,
                format!("@@global.read_only answered {other:?}"),
            ))
        }
    };
    let lag = if role == Role::Replica && check.max_lag.is_some() {
        replica_lag(conn, addr).await?
    } else {
        None
    };
    Ok(Seen { role, lag })
}

/// The largest `Seconds_Behind_*` over the replication channels; `None` when it is NULL
/// (a replication thread is stopped) or replication is not configured at all.
async fn replica_lag(conn: &mut Conn, addr: SocketAddr) -> Result<Option<Duration>, ProbeError> {
    let rows: Vec<Row> = match conn.query("SHOW REPLICA STATUS").await {
        Err(mysql_async::Error::Server(e)) if e.code == PARSE_ERROR => conn
            .query("SHOW SLAVE STATUS")
            .await
            .map_err(|e| classify(addr, e))?,
        other => other.map_err(|e| classify(addr, e))?,
    };
    if rows.is_empty() {
        return Ok(None);
    }
    let mut worst = Duration::ZERO;
    for row in &rows {
        let column = row.columns_ref().iter().position(|c| {
            let name = c.name_str();
            name == "Seconds_Behind_Master" || name == "Seconds_Behind_Source"
        });
        let Some(column) = column else {
            return Err(protocol(
                addr,
                "the replica status has no Seconds_Behind_Master or Seconds_Behind_Source"
                    .to_owned(),
            ));
        };
        match row.as_ref(column).and_then(integer) {
            Some(secs) => worst = worst.max(Duration::from_secs(secs.max(0) as u64)),
            None => return Ok(None),
        }
    }
    Ok(Some(worst))
}

/// An integer from either protocol's encoding (the text protocol sends digits);
/// `None` for NULL or anything else.
fn integer(value: &Value) -> Option<i64> {
    match value {
        Value::Int(i) => Some(*i),
        Value::UInt(u) => i64::try_from(*u).ok(),
        Value::Bytes(b) => std::str::from_utf8(b).ok()?.trim().parse().ok(),
        _ => None,
    }
}

fn protocol(addr: SocketAddr, detail: String) -> ProbeError {
    ProbeError::Protocol {
        addr,
        protocol: "mysql",
        detail,
    }
}

/// Sorts a mysql_async error into the probe's failure kinds.
fn classify(addr: SocketAddr, error: mysql_async::Error) -> ProbeError {
    match error {
        mysql_async::Error::Server(e) if LOGIN_REFUSED.contains(&e.code) => ProbeError::Auth {
            addr,
            message: e.message,
        },
        mysql_async::Error::Server(e) => ProbeError::Query {
            addr,
            message: format!("{} ({})", e.message, e.code),
        },
        mysql_async::Error::Io(mysql_async::IoError::Io(e))
            if e.kind() == std::io::ErrorKind::ConnectionRefused =>
        {
            ProbeError::Refused { addr }
        }
        other => protocol(addr, other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_integers_from_both_protocols() {
        assert_eq!(integer(&Value::Int(1)), Some(1));
        assert_eq!(integer(&Value::UInt(0)), Some(0));
        assert_eq!(integer(&Value::Bytes(b"12".to_vec())), Some(12));
        assert_eq!(integer(&Value::NULL), None);
    }

    #[test]
    fn evidence_shows_read_only_and_lag() {
        let seen = |role, lag| Seen { role, lag };
        assert_eq!(
            evidence(seen(Role::Primary, None)),
            "primary (read_only off)"
        );
        assert_eq!(
            evidence(seen(Role::Replica, Some(Duration::from_secs(3)))),
            "replica (read_only on), lag 3.0s"
        );
    }

    #[test]
    fn an_access_denied_is_an_auth_failure() {
        let addr: SocketAddr = "127.0.0.1:3306".parse().unwrap();
        let error = mysql_async::Error::Server(mysql_async::ServerError {
            code: 1045,
            message: "Access denied for user 'probe'@'localhost' (using password: YES)".into(),
            state: "28000".into(),
        });
        let err = classify(addr, error);
        assert_eq!(err.reason(), "auth");
        assert!(err.to_string().contains("Access denied"), "{err}");
    }
}
