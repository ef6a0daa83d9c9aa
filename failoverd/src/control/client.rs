//! The control API's client: one HTTP/1.1 request per connection to the daemon's Unix socket.

use std::{
    io,
    path::{Path, PathBuf},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{
    client::conn::http1,
    header::{HeaderValue, CONTENT_TYPE, HOST},
    Method, Request, StatusCode,
};
use hyper_util::rt::TokioIo;
use serde::{de::DeserializeOwned, Serialize};
use tokio::net::UnixStream;

use super::{
    query, DrainReport, DrainRequest, ErrorBody, EventsReport, ExplainReport, FailbackRequest,
    FleetReport, ReloadReport, StatusReport, UndrainRequest,
};

/// How long one request may take, connecting included: 10 s.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a control request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be reached.
    #[error("cannot connect to {}: {source}{}", path.display(), connect_hint(source))]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The daemon did not answer in time.
    #[error("no answer from failoverd on {} within {}: is it stuck?", path.display(), humantime::format_duration(*timeout))]
    Timeout {
        /// The socket.
        path: PathBuf,
        /// How long the client waited.
        timeout: Duration,
    },
    /// The HTTP exchange failed (the daemon hung up, or spoke something else).
    #[error("{route} on {}: {source}", path.display())]
    Http {
        /// The request, e.g. `GET /v1/status`.
        route: String,
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: hyper::Error,
    },
    /// The daemon refused the request; `message` is its [`ErrorBody`], verbatim.
    #[error("{message}")]
    Server {
        /// HTTP status: 400, 403, 404, 422, 500, ...
        status: u16,
        /// What the daemon said.
        message: String,
    },
    /// The request could not be encoded.
    #[error("encoding the request for {route}: {source}")]
    Encode {
        /// The request.
        route: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// The answer was not what the protocol promises.
    #[error("unexpected answer from failoverd to {route}: {source}")]
    Decode {
        /// The request.
        route: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

impl ClientError {
    /// The HTTP status the daemon answered with, when it answered with an error.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Server { status, .. } => Some(*status),
            _ => None,
        }
    }
}

fn connect_hint(e: &io::Error) -> &'static str {
    match e.kind() {
        io::ErrorKind::PermissionDenied => {
            " (the control socket is root's: run this as root, e.g. with sudo)"
        }
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
            " (is failoverd running? --socket or --config name another socket)"
        }
        _ => "",
    }
}

/// Talks to a daemon's control socket.
#[derive(Debug, Clone)]
pub struct ControlClient {
    path: PathBuf,
}

impl ControlClient {
    /// A client of the socket at `path` (default in production: `/run/failoverd/control.sock`).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        ControlClient { path: path.into() }
    }

    /// The socket this client talks to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `GET /v1/status`: every service and backend.
    pub async fn status(&self) -> Result<StatusReport, ClientError> {
        let answer = self.call(Method::GET, "/v1/status".into(), None).await?;
        answer.json()
    }

    /// `GET /v1/fleet`: every fleet host's view side by side.
    pub async fn fleet(&self) -> Result<FleetReport, ClientError> {
        let answer = self.call(Method::GET, "/v1/fleet".into(), None).await?;
        answer.json()
    }

    /// `POST /v1/drain`: takes a backend out of new connections (with `terminate`, aborts
    /// its sockets and says how many).
    pub async fn drain(&self, request: &DrainRequest) -> Result<DrainReport, ClientError> {
        let answer = self.post("/v1/drain", request).await?;
        // 204 with no body: a plain drain, or a daemon from before --terminate.
        if answer.body.is_empty() {
            return Ok(DrainReport::default());
        }
        answer.json()
    }

    /// `POST /v1/undrain`: puts a drained backend back.
    pub async fn undrain(&self, request: &UndrainRequest) -> Result<(), ClientError> {
        self.post("/v1/undrain", request).await.map(drop)
    }

    /// `POST /v1/failback`: sends a `failback: manual` service back to its best live priority.
    pub async fn failback(&self, request: &FailbackRequest) -> Result<(), ClientError> {
        self.post("/v1/failback", request).await.map(drop)
    }

    /// `POST /v1/reload`: re-reads the daemon's config; an invalid one is a [`ClientError::Server`] with status 422.
    pub async fn reload(&self) -> Result<ReloadReport, ClientError> {
        let answer = self.call(Method::POST, "/v1/reload".into(), None).await?;
        answer.json()
    }

    /// `GET /v1/explain`: where a connect to `vip` (`ip:port`, IPv6 as `[addr]:port`) goes now.
    /// `protocol` is `tcp` (the default when `None`) or `udp`.
    pub async fn explain(
        &self,
        vip: &str,
        protocol: Option<&str>,
    ) -> Result<ExplainReport, ClientError> {
        let mut uri = format!("/v1/explain?vip={}", query::encode(vip));
        if let Some(p) = protocol {
            uri.push_str("&protocol=");
            uri.push_str(&query::encode(p));
        }
        let answer = self.call(Method::GET, uri, None).await?;
        answer.json()
    }

    /// Events after `after`; with `wait`, the daemon holds the request until there is one (a few seconds at most).
    pub async fn events(&self, after: u64, wait: bool) -> Result<EventsReport, ClientError> {
        let answer = self
            .call(
                Method::GET,
                format!("/v1/events?after={after}&wait={wait}"),
                None,
            )
            .await?;
        answer.json()
    }

    async fn post(&self, uri: &str, body: &impl Serialize) -> Result<Answer, ClientError> {
        let body = serde_json::to_vec(body).map_err(|source| ClientError::Encode {
            route: format!("POST {uri}"),
            source,
        })?;
        self.call(Method::POST, uri.to_owned(), Some(body)).await
    }

    /// Sends one request and reads the whole answer; a 4xx/5xx becomes [`ClientError::Server`].
    async fn call(
        &self,
        method: Method,
        uri: String,
        body: Option<Vec<u8>>,
    ) -> Result<Answer, ClientError> {
        let route = format!("{method} {}", uri.split('?').next().unwrap_or(&uri));
        let exchange = self.exchange(method, uri, body, &route);
        let (status, body) = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| ClientError::Timeout {
                path: self.path.clone(),
                timeout: REQUEST_TIMEOUT,
            })??;
        if status.is_success() {
            return Ok(Answer { route, body });
        }
        Err(ClientError::Server {
            status: status.as_u16(),
            message: error_message(status, &body),
        })
    }

    async fn exchange(
        &self,
        method: Method,
        uri: String,
        body: Option<Vec<u8>>,
        route: &str,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let http_err = |source| ClientError::Http {
            route: route.to_owned(),
            path: self.path.clone(),
            source,
        };
        let stream =
            UnixStream::connect(&self.path)
                .await
                .map_err(|source| ClientError::Connect {
                    path: self.path.clone(),
                    source,
                })?;
        let (mut sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(http_err)?;
        let has_body = body.is_some();
        let mut request = Request::new(Full::new(Bytes::from(body.unwrap_or_default())));
        *request.method_mut() = method;
        // `uri` is a fixed path plus a percent-encoded query: always a valid origin-form.
        *request.uri_mut() = match uri.parse() {
            Ok(uri) => uri,
            Err(e) => unreachable!("control client built an invalid URI `{uri}`: {e}"),
        };
        let headers = request.headers_mut();
        // HTTP/1.1 requires a Host; over a Unix socket any name does.
        headers.insert(HOST, HeaderValue::from_static("localhost"));
        if has_body {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        let answer = async {
            let response = sender.send_request(request).await?;
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            Ok((status, body))
        };
        tokio::pin!(connection);
        tokio::pin!(answer);
        // The connection future drives the socket; the answer needs it polled
        // until the body is in. It only ends first when the daemon hangs up.
        tokio::select! {
            biased;
            result = &mut answer => result.map_err(http_err),
            result = &mut connection => match result {
                Err(e) => Err(http_err(e)),
                Ok(()) => answer.await.map_err(http_err),
            },
        }
    }
}

/// A successful answer, not yet decoded.
struct Answer {
    route: String,
    body: Bytes,
}

impl Answer {
    fn json<T: DeserializeOwned>(self) -> Result<T, ClientError> {
        serde_json::from_slice(&self.body).map_err(|source| ClientError::Decode {
            route: self.route,
            source,
        })
    }
}

/// The daemon's [`ErrorBody`] message, or what there is when the body is not one.
fn error_message(status: StatusCode, body: &[u8]) -> String {
    if let Ok(ErrorBody { error }) = serde_json::from_slice(body) {
        return error;
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        format!("failoverd answered {status} without a message")
    } else {
        format!("failoverd answered {status}: {text}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permission_denied_says_to_run_as_root() {
        let e = ClientError::Connect {
            path: "/run/failoverd/control.sock".into(),
            source: io::Error::from(io::ErrorKind::PermissionDenied),
        };
        let shown = e.to_string();
        assert!(
            shown.starts_with("cannot connect to /run/failoverd/control.sock: "),
            "{shown}"
        );
        assert!(shown.contains("run this as root"), "{shown}");
    }

    #[test]
    fn a_missing_socket_asks_whether_failoverd_runs() {
        for kind in [io::ErrorKind::NotFound, io::ErrorKind::ConnectionRefused] {
            let e = ClientError::Connect {
                path: "/run/failoverd/control.sock".into(),
                source: io::Error::from(kind),
            };
            assert!(e.to_string().contains("is failoverd running?"), "{e}");
        }
    }

    #[test]
    fn a_server_error_shows_the_message_verbatim() {
        let body = br#"{"error":"f.yaml:3:5: services[0].vip: bad address"}"#;
        let e = ClientError::Server {
            status: 422,
            message: error_message(StatusCode::UNPROCESSABLE_ENTITY, body),
        };
        assert_eq!(e.to_string(), "f.yaml:3:5: services[0].vip: bad address");
        assert_eq!(e.status(), Some(422));
    }

    #[test]
    fn an_error_without_an_error_body_still_says_something() {
        assert_eq!(
            error_message(StatusCode::BAD_REQUEST, b""),
            "failoverd answered 400 Bad Request without a message"
        );
        assert_eq!(
            error_message(StatusCode::BAD_GATEWAY, b"oops\n"),
            "failoverd answered 502 Bad Gateway: oops"
        );
    }
}
