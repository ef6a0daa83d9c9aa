//! Health checks: the probes (tcp, http), their errors, and the hysteresis that turns results into verdicts.

mod http;
pub mod state;
mod tcp;

use std::{future::Future, net::SocketAddr, pin::Pin, time::Duration};

pub use state::{HealthState, HealthStatus};

/// What a passed probe saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeOk {
    /// From the probe's start to its verdict.
    pub latency: Duration,
    /// A short word for status and logs: `connected`, `HTTP 200`.
    pub detail: String,
}

/// Why a probe failed.
///
/// [`ProbeError::reason`] gives a stable, low-cardinality label for metrics and
/// status; the `Display` text carries the detail for logs.
#[derive(thiserror::Error, Debug)]
pub enum ProbeError {
    /// The backend's host answered the connect with a reset: nothing listens there.
    #[error("connection to {addr} refused")]
    Refused {
        /// Where the probe went.
        addr: SocketAddr,
    },
    /// No verdict within the probe's timeout (connect, or for http the whole exchange).
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
}

impl ProbeError {
    /// A stable label for the failure: `refused`, `timeout`, `status`, `body` or `other`.
    pub fn reason(&self) -> &'static str {
        match self {
            ProbeError::Refused { .. } => "refused",
            ProbeError::Timeout { .. } => "timeout",
            ProbeError::Status { .. } => "status",
            ProbeError::Body { .. } => "body",
            ProbeError::Other { .. } | ProbeError::Http { .. } | ProbeError::Request { .. } => {
                "other"
            }
        }
    }
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

/// The real probes: a TCP connect, an HTTP exchange.
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
}

impl Probe {
    /// The probe a service's `health` section describes.
    pub fn for_config(health: &crate::config::HealthConfig) -> Probe {
        use crate::config::{HealthKind, StatusMatch};
        match health.kind {
            HealthKind::Tcp => Probe::Tcp,
            HealthKind::Http => Probe::Http(HttpCheck {
                path: health.http.path.clone(),
                host: health.http.host.clone(),
                expect_status: match &health.http.expect_status {
                    StatusMatch::Range(lo, hi) => vec![(*lo, *hi)],
                    StatusMatch::List(codes) => codes.iter().map(|&c| (c, c)).collect(),
                },
                expect_body: health.http.expect_body.clone(),
            }),
        }
    }

    /// Probes `addr` once; fails with [`ProbeError::Timeout`] at `timeout` at the latest.
    pub async fn check(&self, addr: SocketAddr, timeout: Duration) -> ProbeResult {
        match self {
            Probe::Tcp => tcp::check(addr, timeout).await,
            Probe::Http(check) => http::check(check, addr, timeout).await,
        }
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
