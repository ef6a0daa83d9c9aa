//! Health checks: the probes (tcp, http, send/expect, exec, and the role-aware database
//! checks), their errors, and the hysteresis that turns results into verdicts.

mod credentials;
mod exec;
mod expect;
mod http;
mod mysql;
mod postgres;
mod redis;
mod role;
pub mod state;
mod tcp;

use std::{future::Future, net::SocketAddr, path::PathBuf, pin::Pin, time::Duration};

pub use exec::{validate_exec, ExecCheck, ExecError};
pub use expect::{Expect, ExpectCheck};
pub use mysql::MysqlCheck;
pub use postgres::{PgCheck, PgTls};
pub use redis::RedisCheck;
pub use role::{Role, RoleWanted};
pub use state::{HealthState, HealthStatus};

/// What a passed probe saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeOk {
    /// From the probe's start to its verdict.
    pub latency: Duration,
    /// The evidence, short, for status, events and logs: `connected`, `HTTP 200`,
    /// `primary`, `replica, lag 0.4s`, `exit 0: ready`.
    pub detail: String,
    /// The role the backend claimed, for the role-aware checks (postgres, mysql, redis);
    /// `None` for the others. The decision core reads it to see two primaries at once.
    pub role: Option<Role>,
}

impl ProbeOk {
    /// A pass with no role (tcp, http, expect, exec).
    pub fn new(latency: Duration, detail: impl Into<String>) -> ProbeOk {
        ProbeOk {
            latency,
            detail: detail.into(),
            role: None,
        }
    }
}

/// Why a probe failed.
///
/// [`ProbeError::reason`] gives a stable, low-cardinality label for metrics and
/// status; the `Display` text carries the detail for logs. No variant ever carries a
/// password: credentials are named by their file only.
#[derive(thiserror::Error, Debug)]
pub enum ProbeError {
    /// The backend's host answered the connect with a reset: nothing listens there.
    #[error("connection to {addr} refused")]
    Refused {
        /// Where the probe went.
        addr: SocketAddr,
    },
    /// No verdict within the probe's timeout (connect, or the whole exchange).
    #[error("no answer from {addr} within {}", humantime::format_duration(*after))]
    Timeout {
        /// Where the probe went.
        addr: SocketAddr,
        /// The timeout that ran out.
        after: Duration,
    },
    /// An http answer whose status is not among the expected ones.
    #[error("{addr} answered HTTP {code}, which is not an expected status")]
    Status {
        /// Where the probe went.
        addr: SocketAddr,
        /// The status it answered.
        code: u16,
    },
    /// An http answer whose body (its first 64 KiB) lacks the expected text.
    #[error("the body {addr} answered does not contain {expected:?}")]
    Body {
        /// Where the probe went.
        addr: SocketAddr,
        /// The text that was looked for.
        expected: String,
    },
    /// A socket error other than a refusal (unreachable, reset, ...).
    #[error("cannot probe {addr}")]
    Other {
        /// Where the probe went.
        addr: SocketAddr,
        /// What the socket said.
        #[source]
        source: std::io::Error,
    },
    /// The http exchange failed: a malformed answer, or the connection closed midway.
    #[error("http exchange with {addr} failed")]
    Http {
        /// Where the probe went.
        addr: SocketAddr,
        /// What hyper said.
        #[source]
        source: hyper::Error,
    },
    /// The http request could not be built from the check (a bad path or host).
    #[error("cannot build the http request for {addr}")]
    Request {
        /// Where the probe would have gone.
        addr: SocketAddr,
        /// What the request builder said.
        #[source]
        source: hyper::http::Error,
    },
    /// The backend answered with a role the check does not accept: a primary that is now
    /// a replica (a demotion, not a flake), or a replica that was promoted.
    #[error("{addr} is a {actual}, the check wants {wanted}")]
    WrongRole {
        /// Where the probe went.
        addr: SocketAddr,
        /// What the check accepts.
        wanted: RoleWanted,
        /// What the backend said it is.
        actual: Role,
    },
    /// A replica further behind its primary than `max_lag`, or one whose lag cannot be
    /// known (replication stopped, never replayed anything).
    #[error("{addr} lags {}, more than the {} allowed", match lag { Some(l) => format_secs(*l), None => "by an unknown time".to_owned() }, format_secs(*max))]
    Lag {
        /// Where the probe went.
        addr: SocketAddr,
        /// The lag seen; `None` when the replica cannot tell.
        lag: Option<Duration>,
        /// The check's `max_lag`.
        max: Duration,
    },
    /// The server refused the credentials (wrong user or password, no password given
    /// where one is needed, not allowed from this host).
    #[error("{addr} refused the login: {message}")]
    Auth {
        /// Where the probe went.
        addr: SocketAddr,
        /// The server's own words (never the password).
        message: String,
    },
    /// The `password_file` could not be read.
    #[error("cannot read the password file {}", path.display())]
    Credentials {
        /// The check's `password_file`.
        path: PathBuf,
        /// What the file system said.
        #[source]
        source: std::io::Error,
    },
    /// The backend does not speak the check's protocol, or broke it midway.
    #[error("{addr} does not answer as a {protocol} server: {detail}")]
    Protocol {
        /// Where the probe went.
        addr: SocketAddr,
        /// The protocol the check speaks: `postgres`, `mysql`, `redis`.
        protocol: &'static str,
        /// What was wrong with the answer.
        detail: String,
    },
    /// TLS was required and could not be had: the server does not offer it, or the
    /// handshake failed.
    #[error("no TLS with {addr}: {detail}")]
    Tls {
        /// Where the probe went.
        addr: SocketAddr,
        /// What went wrong.
        detail: String,
    },
    /// The server accepted the login but answered the check's query with an error
    /// (for example a user without the privilege to read the replica status).
    #[error("{addr} answered the check's query with an error: {message}")]
    Query {
        /// Where the probe went.
        addr: SocketAddr,
        /// The server's own words.
        message: String,
    },
    /// A send/expect reply without the expected text (before end of stream or 64 KiB).
    #[error("{addr} answered {got:?}, which does not match {expected}")]
    Expect {
        /// Where the probe went.
        addr: SocketAddr,
        /// The substring or regex looked for, as configured.
        expected: String,
        /// The start of what came back, lossily decoded, at most 128 bytes of it.
        got: String,
    },
    /// The exec check's command ran and failed: a non-zero exit, or killed by a signal.
    #[error("the check command for {addr} failed: {status}{}", if first_line.is_empty() { String::new() } else { format!(": {first_line}") })]
    Exit {
        /// The backend the command checked.
        addr: SocketAddr,
        /// `exit 1`, `killed by signal 9`.
        status: String,
        /// The first line of its stdout (may be empty).
        first_line: String,
    },
    /// The exec check's command could not be started.
    #[error("cannot run the check command for {addr}")]
    Spawn {
        /// The backend the command would have checked.
        addr: SocketAddr,
        /// Why not.
        #[source]
        source: ExecError,
    },
}

impl ProbeError {
    /// A stable label for the failure: `refused`, `timeout`, `status`, `body`, `role`,
    /// `lag`, `auth`, `credentials`, `protocol`, `tls`, `query`, `expect`, `exit`,
    /// `spawn` or `other`.
    pub fn reason(&self) -> &'static str {
        match self {
            ProbeError::Refused { .. } => "refused",
            ProbeError::Timeout { .. } => "timeout",
            ProbeError::Status { .. } => "status",
            ProbeError::Body { .. } => "body",
            ProbeError::WrongRole { .. } => "role",
            ProbeError::Lag { .. } => "lag",
            ProbeError::Auth { .. } => "auth",
            ProbeError::Credentials { .. } => "credentials",
            ProbeError::Protocol { .. } => "protocol",
            ProbeError::Tls { .. } => "tls",
            ProbeError::Query { .. } => "query",
            ProbeError::Expect { .. } => "expect",
            ProbeError::Exit { .. } => "exit",
            ProbeError::Spawn { .. } => "spawn",
            ProbeError::Other { .. } | ProbeError::Http { .. } | ProbeError::Request { .. } => {
                "other"
            }
        }
    }

    /// The role the backend claimed although the probe failed: `WrongRole`'s actual role,
    /// `Replica` for a lagging replica; `None` when no role was seen. With
    /// [`ProbeOk::role`] this tells the decision core who claims to be primary.
    pub fn role_seen(&self) -> Option<Role> {
        match self {
            ProbeError::WrongRole { actual, .. } => Some(*actual),
            ProbeError::Lag { .. } => Some(Role::Replica),
            _ => None,
        }
    }

    /// True for a definite answer that the backend is not what the check wants (a
    /// demotion or promotion): the decision core acts on it at once instead of after
    /// `fall` failures. A lagging replica, a timeout or a refused login is not one.
    pub fn is_wrong_role(&self) -> bool {
        matches!(self, ProbeError::WrongRole { .. })
    }
}

/// The role a probe result shows, passed or failed: see [`ProbeOk::role`] and
/// [`ProbeError::role_seen`].
pub fn role_seen(result: &ProbeResult) -> Option<Role> {
    match result {
        Ok(ok) => ok.role,
        Err(e) => e.role_seen(),
    }
}

/// Runs a probe's whole exchange under its timeout: a slow or silent server fails with
/// [`ProbeError::Timeout`] at `timeout`, whatever step it stalls in.
pub(crate) async fn within<T>(
    addr: SocketAddr,
    timeout: Duration,
    exchange: impl Future<Output = Result<T, ProbeError>>,
) -> Result<T, ProbeError> {
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| ProbeError::Timeout {
            addr,
            after: timeout,
        })?
}

/// Seconds with one decimal, the way lag is shown in evidence: `0.4s`, `12.0s`.
pub(crate) fn format_secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

/// What an http probe asks and expects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpCheck {
    /// The request path, in origin form. Default (in the config): `/`.
    pub path: String,
    /// The `Host` header. `None`: the probed address, as `ip:port`.
    pub host: Option<String>,
    /// Accepted status codes as inclusive ranges; `[(200, 399)]` accepts 2xx and 3xx.
    /// Empty: the config default, 200-399.
    pub expect_status: Vec<(u16, u16)>,
    /// Text the first 64 KiB of the body must contain. `None`: the body is not read.
    pub expect_body: Option<String>,
}

/// What one probe saw: passed with a detail, or failed with a typed reason.
pub type ProbeResult = Result<ProbeOk, ProbeError>;

/// Runs probes (pingora's `HealthCheck` shape): [`NetworkCheck`] sends them over the
/// network; tests script the outcomes instead.
pub trait HealthCheck: Send + Sync + 'static {
    /// Probes `addr` once as `probe` says; fails at `timeout` at the latest.
    fn check<'a>(
        &'a self,
        probe: &'a Probe,
        addr: SocketAddr,
        timeout: Duration,
    ) -> Pin<Box<dyn Future<Output = ProbeResult> + Send + 'a>>;
}

/// The real probes, over the network (and `exec`'s local command).
#[derive(Clone, Copy, Debug, Default)]
pub struct NetworkCheck;

impl HealthCheck for NetworkCheck {
    fn check<'a>(
        &'a self,
        probe: &'a Probe,
        addr: SocketAddr,
        timeout: Duration,
    ) -> Pin<Box<dyn Future<Output = ProbeResult> + Send + 'a>> {
        Box::pin(probe.check(addr, timeout))
    }
}

/// How a backend is probed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    /// A TCP connect that completes, closed right away.
    Tcp,
    /// An HTTP/1.1 GET whose status (and optionally body) match.
    Http(HttpCheck),
    /// A TCP exchange: bytes sent, a substring or regex the reply must contain.
    Expect(ExpectCheck),
    /// A PostgreSQL login and `pg_is_in_recovery()`.
    Postgres(PgCheck),
    /// A MySQL/MariaDB login and `@@global.read_only`.
    Mysql(MysqlCheck),
    /// A Redis `INFO replication` (after `AUTH` when a password file is set).
    Redis(RedisCheck),
    /// A local command; exit 0 passes.
    Exec(ExecCheck),
}

impl Probe {
    /// The probe a service's `health` section describes: `tcp` with an `expect` is a
    /// send/expect exchange, the database kinds take the probe types' defaults for what
    /// the config leaves out (`user`: `postgres` for postgres, `root` for mysql).
    pub fn for_config(health: &crate::config::HealthConfig) -> Probe {
        use crate::config::{HealthKind, StatusMatch};
        let db = &health.db;
        match health.kind {
            HealthKind::Tcp => match &health.tcp.expect {
                None => Probe::Tcp,
                Some(expect) => Probe::Expect(ExpectCheck {
                    send: health.tcp.send.clone(),
                    expect: expect.clone(),
                }),
            },
            HealthKind::Http => Probe::Http(HttpCheck {
                path: health.http.path.clone(),
                host: health.http.host.clone(),
                expect_status: match &health.http.expect_status {
                    StatusMatch::Range(lo, hi) => vec![(*lo, *hi)],
                    StatusMatch::List(codes) => codes.iter().map(|&c| (c, c)).collect(),
                },
                expect_body: health.http.expect_body.clone(),
            }),
            HealthKind::Postgres => {
                let d = PgCheck::default();
                Probe::Postgres(PgCheck {
                    role: db.role,
                    user: db.user.clone().unwrap_or(d.user),
                    database: db.database.clone(),
                    password_file: db.password_file.clone(),
                    tls: db.tls,
                    max_lag: db.max_lag,
                })
            }
            HealthKind::Mysql => {
                let d = MysqlCheck::default();
                Probe::Mysql(MysqlCheck {
                    role: db.role,
                    user: db.user.clone().unwrap_or(d.user),
                    database: db.database.clone(),
                    password_file: db.password_file.clone(),
                    max_lag: db.max_lag,
                })
            }
            HealthKind::Redis => Probe::Redis(RedisCheck {
                role: db.role,
                username: db.username.clone(),
                password_file: db.password_file.clone(),
                max_lag: db.max_lag,
            }),
            HealthKind::Exec => Probe::Exec(ExecCheck {
                command: health.exec.command.clone(),
                env: health.exec.env.clone(),
            }),
        }
    }

    /// Probes `addr` once; fails with [`ProbeError::Timeout`] at `timeout` at the latest:
    /// every kind bounds its whole exchange (connect, login, query, reply) by it.
    pub async fn check(&self, addr: SocketAddr, timeout: Duration) -> ProbeResult {
        match self {
            Probe::Tcp => tcp::check(addr, timeout).await,
            Probe::Http(check) => http::check(check, addr, timeout).await,
            Probe::Expect(check) => expect::check(check, addr, timeout).await,
            Probe::Postgres(check) => postgres::check(check, addr, timeout).await,
            Probe::Mysql(check) => mysql::check(check, addr, timeout).await,
            Probe::Redis(check) => redis::check(check, addr, timeout).await,
            Probe::Exec(check) => exec::check(check, addr, timeout).await,
        }
    }
}

/// Which probes ask for a role, for the decision core's "one primary, always" rule.
impl Probe {
    /// Whether this probe passes only a primary (`role: primary` of a database check): then
    /// two backends that both answer "primary" are a split brain, and the VIP must never
    /// spread over both.
    pub fn wants_one_primary(&self) -> bool {
        let wanted = match self {
            Probe::Postgres(c) => c.role,
            Probe::Mysql(c) => c.role,
            Probe::Redis(c) => c.role,
            Probe::Tcp | Probe::Http(_) | Probe::Expect(_) | Probe::Exec(_) => return false,
        };
        wanted == RoleWanted::Primary
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr() -> SocketAddr {
        "127.0.0.1:80".parse().unwrap()
    }

    #[test]
    fn reasons_are_stable_labels() {
        let io = || std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        let cases = [
            (ProbeError::Refused { addr: addr() }, "refused"),
            (
                ProbeError::Timeout {
                    addr: addr(),
                    after: Duration::from_millis(500),
                },
                "timeout",
            ),
            (
                ProbeError::Status {
                    addr: addr(),
                    code: 503,
                },
                "status",
            ),
            (
                ProbeError::Body {
                    addr: addr(),
                    expected: "ok".into(),
                },
                "body",
            ),
            (
                ProbeError::Other {
                    addr: addr(),
                    source: io(),
                },
                "other",
            ),
        ];
        for (error, reason) in cases {
            assert_eq!(error.reason(), reason, "{error}");
        }
    }

    #[test]
    fn role_failures_say_what_was_seen() {
        let wrong = ProbeError::WrongRole {
            addr: addr(),
            wanted: RoleWanted::Primary,
            actual: Role::Replica,
        };
        assert_eq!(wrong.reason(), "role");
        assert!(wrong.is_wrong_role());
        assert_eq!(role_seen(&Err(wrong)), Some(Role::Replica));
        let lag = ProbeError::Lag {
            addr: addr(),
            lag: Some(Duration::from_secs(3)),
            max: Duration::from_secs(1),
        };
        assert_eq!(lag.reason(), "lag");
        assert!(!lag.is_wrong_role());
        let auth = ProbeError::Auth {
            addr: addr(),
            message: "password authentication failed for user \"probe\"".into(),
        };
        assert_eq!(auth.reason(), "auth");
        assert_eq!(role_seen(&Err(auth)), None);
        let ok = ProbeOk {
            role: Some(Role::Primary),
            ..ProbeOk::new(Duration::ZERO, "primary")
        };
        assert_eq!(role_seen(&Ok(ok)), Some(Role::Primary));
    }

    #[test]
    fn probes_can_run_on_spawned_tasks() {
        fn assert_send<T: Send>(_: &T) {}
        let http = Probe::Http(HttpCheck {
            path: "/".into(),
            host: None,
            expect_status: vec![(200, 399)],
            expect_body: None,
        });
        // Never polled: only its type matters.
        assert_send(&http.check(addr(), Duration::from_secs(1)));
        assert_send(&Probe::Tcp.check(addr(), Duration::from_secs(1)));
        let kinds = [
            Probe::Postgres(PgCheck::default()),
            Probe::Mysql(MysqlCheck::default()),
            Probe::Redis(RedisCheck::default()),
            Probe::Expect(ExpectCheck {
                send: b"PING\r\n".to_vec(),
                expect: Expect::Substring("+PONG".into()),
            }),
            Probe::Exec(ExecCheck {
                command: vec!["/bin/true".into()],
                env: vec![],
            }),
        ];
        for probe in &kinds {
            assert_send(&probe.check(addr(), Duration::from_secs(1)));
        }
    }

    #[test]
    fn a_bad_request_is_an_other_failure() {
        let source = hyper::Request::get("no spaces allowed")
            .body(())
            .unwrap_err();
        let error = ProbeError::Request {
            addr: addr(),
            source,
        };
        assert_eq!(error.reason(), "other");
    }

    #[test]
    fn messages_name_the_backend_and_the_detail() {
        let timeout = ProbeError::Timeout {
            addr: addr(),
            after: Duration::from_millis(500),
        };
        assert_eq!(
            timeout.to_string(),
            "no answer from 127.0.0.1:80 within 500ms"
        );
        let status = ProbeError::Status {
            addr: addr(),
            code: 503,
        };
        assert_eq!(
            status.to_string(),
            "127.0.0.1:80 answered HTTP 503, which is not an expected status"
        );
    }
}
