//! One control request: check the peer, find the route, decode, call the handler, encode the answer or the error.

use std::{error::Error as StdError, fmt, future::Future, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::{
    body::Body,
    header::{HeaderValue, ALLOW, CONTENT_LENGTH, CONTENT_TYPE},
    Request, Response, StatusCode,
};
use serde::{de::DeserializeOwned, Serialize};

use super::{
    peer::{self, Peer},
    query, ControlError, ControlHandler, DrainRequest, ErrorBody, FailbackRequest, UndrainRequest,
};

/// A response of the control API.
pub(crate) type Reply = Response<Full<Bytes>>;

/// Largest request body accepted: 64 KiB (the largest real one, a drain with a reason, is far smaller).
pub(crate) const MAX_BODY: usize = 64 * 1024;

/// How long a request body may take to arrive once its headers have: 10 s.
pub(crate) const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// Every route, with its path and method.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    Status,
    Drain,
    Undrain,
    Failback,
    Reload,
    Explain,
    Events,
    Fleet,
}

impl Route {
    const ALL: [Route; 8] = [
        Route::Status,
        Route::Drain,
        Route::Undrain,
        Route::Failback,
        Route::Reload,
        Route::Explain,
        Route::Events,
        Route::Fleet,
    ];

    fn path(self) -> &'static str {
        match self {
            Route::Status => "/v1/status",
            Route::Drain => "/v1/drain",
            Route::Undrain => "/v1/undrain",
            Route::Failback => "/v1/failback",
            Route::Reload => "/v1/reload",
            Route::Explain => "/v1/explain",
            Route::Events => "/v1/events",
            Route::Fleet => "/v1/fleet",
        }
    }

    /// `GET` or `POST`: also the `Allow` header of a 405.
    fn method(self) -> &'static str {
        match self {
            Route::Status | Route::Explain | Route::Events | Route::Fleet => "GET",
            Route::Drain | Route::Undrain | Route::Failback | Route::Reload => "POST",
        }
    }

    fn find(path: &str) -> Option<Route> {
        Route::ALL.into_iter().find(|r| r.path() == path)
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.method(), self.path())
    }
}

/// Answers one request from `peer` on a socket served by `server_uid`.
///
/// Never fails: every problem becomes a 4xx/5xx with an [`ErrorBody`].
pub(crate) async fn respond<H, B>(
    handler: &H,
    peer: &Peer,
    server_uid: u32,
    request: Request<B>,
) -> Reply
where
    H: ControlHandler,
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    match dispatch(handler, peer, server_uid, request).await {
        Ok(reply) => reply,
        Err(refusal) => refusal.reply(),
    }
}

async fn dispatch<H, B>(
    handler: &H,
    peer: &Peer,
    server_uid: u32,
    request: Request<B>,
) -> Result<Reply, Refusal>
where
    H: ControlHandler,
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    if !peer::allowed(peer.uid, server_uid) {
        tracing::warn!(
            uid = ?peer.uid,
            pid = peer.caller.pid,
            path = %request.uri().path(),
            "control: refused a request from another user"
        );
        return Err(Refusal::new(
            StatusCode::FORBIDDEN,
            format!("permission denied: only uid {server_uid} may use the control socket"),
        ));
    }
    let path = request.uri().path();
    let route = Route::find(path).ok_or_else(|| {
        let routes: Vec<String> = Route::ALL.iter().map(ToString::to_string).collect();
        Refusal::new(
            StatusCode::NOT_FOUND,
            format!("no route `{path}`; the routes are {}", routes.join(", ")),
        )
    })?;
    if request.method().as_str() != route.method() {
        let mut refusal = Refusal::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!(
                "method {} is not allowed on {}: use {route}",
                request.method(),
                route.path()
            ),
        );
        refusal.allow = Some(route.method());
        return Err(refusal);
    }
    match route {
        Route::Status => Ok(json(StatusCode::OK, &handler.status().await?)),
        Route::Explain => {
            let q = query::parse_explain(request.uri().query())
                .map_err(|e| Refusal::new(StatusCode::BAD_REQUEST, e))?;
            let report = handler.explain(q.vip, q.protocol).await?;
            Ok(json(StatusCode::OK, &report))
        }
        Route::Events => {
            let q = query::parse_events(request.uri().query())
                .map_err(|e| Refusal::new(StatusCode::BAD_REQUEST, e))?;
            Ok(json(
                StatusCode::OK,
                &handler.events(q.after, q.wait).await?,
            ))
        }
        Route::Fleet => Ok(json(StatusCode::OK, &handler.fleet().await?)),
        Route::Drain | Route::Undrain | Route::Failback | Route::Reload => {
            mutate(handler, peer, route, request).await
        }
    }
}

/// Runs a request that changes something, and logs who asked, what, and how it ended.
async fn mutate<H, B>(
    handler: &H,
    peer: &Peer,
    route: Route,
    request: Request<B>,
) -> Result<Reply, Refusal>
where
    H: ControlHandler,
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let caller = &peer.caller;
    // The decoded request, for the log; empty when it could not be decoded.
    let mut asked = String::new();
    let result = match route {
        Route::Drain => call(route, request, &mut asked, |r: DrainRequest| {
            handler.drain(caller.clone(), r)
        })
        .await
        // A plain drain answers as it always did; only --terminate has something to say.
        .map(|report| match report.terminated {
            None => no_content(),
            Some(_) => json(StatusCode::OK, &report),
        }),
        Route::Undrain => call(route, request, &mut asked, |r: UndrainRequest| {
            handler.undrain(caller.clone(), r)
        })
        .await
        .map(|()| no_content()),
        Route::Failback => call(route, request, &mut asked, |r: FailbackRequest| {
            handler.failback(caller.clone(), r)
        })
        .await
        .map(|()| no_content()),
        // The body carries nothing; it is still read (and capped) so the
        // connection stays usable for a next request.
        Route::Reload => match read_body(route, request).await {
            Ok(_) => handler
                .reload(caller.clone())
                .await
                .map(|report| json(StatusCode::OK, &report))
                .map_err(Refusal::from),
            Err(refusal) => Err(refusal),
        },
        Route::Status | Route::Explain | Route::Events | Route::Fleet => Err(Refusal::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{route} changes nothing"),
        )),
    };
    let (user, pid) = (&caller.user, caller.pid);
    match &result {
        Ok(_) => {
            tracing::info!(%route, %user, pid, request = %asked, outcome = "done", "control request")
        }
        Err(r) => tracing::info!(
            %route, %user, pid, request = %asked,
            outcome = "refused", status = r.status.as_u16(), error = %r.message,
            "control request"
        ),
    }
    result
}

/// Decodes a `T` from the body, notes it in `asked`, and hands it to `f`.
async fn call<T, B, F, Fut, R>(
    route: Route,
    request: Request<B>,
    asked: &mut String,
    f: F,
) -> Result<R, Refusal>
where
    T: DeserializeOwned + fmt::Debug,
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
    F: FnOnce(T) -> Fut,
    Fut: Future<Output = Result<R, ControlError>>,
{
    let request: T = decode(route, request).await?;
    *asked = format!("{request:?}");
    Ok(f(request).await?)
}

/// Reads the JSON body of `request` into a `T`.
async fn decode<T, B>(route: Route, request: Request<B>) -> Result<T, Refusal>
where
    T: DeserializeOwned,
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let body = read_body(route, request).await?;
    serde_json::from_slice(&body).map_err(|e| {
        Refusal::new(
            StatusCode::BAD_REQUEST,
            format!("invalid request body for {route}: {e}"),
        )
    })
}

/// Reads the whole body, at most [`MAX_BODY`] bytes within [`BODY_TIMEOUT`].
async fn read_body<B>(route: Route, request: Request<B>) -> Result<Bytes, Refusal>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let too_large = || {
        Refusal::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body of {route} is larger than {MAX_BODY} bytes"),
        )
    };
    // Refuse a declared oversize body before reading any of it.
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > MAX_BODY as u64) {
        return Err(too_large());
    }
    let collect = Limited::new(request.into_body(), MAX_BODY).collect();
    match tokio::time::timeout(BODY_TIMEOUT, collect).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Ok(Err(e)) => Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            format!("reading the request body of {route}: {e}"),
        )),
        Err(_) => Err(Refusal::new(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request body of {route} did not arrive within {}",
                humantime::format_duration(BODY_TIMEOUT)
            ),
        )),
    }
}

/// The HTTP status of each kind of handler error.
fn status_of(e: &ControlError) -> StatusCode {
    match e {
        ControlError::NotFound(_) => StatusCode::NOT_FOUND,
        ControlError::Invalid(_) => StatusCode::BAD_REQUEST,
        ControlError::BadConfig(_) => StatusCode::UNPROCESSABLE_ENTITY,
        ControlError::Failed(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// A request answered with an error: a status and an [`ErrorBody`].
#[derive(Debug)]
struct Refusal {
    status: StatusCode,
    message: String,
    /// The `Allow` header of a 405.
    allow: Option<&'static str>,
}

impl Refusal {
    fn new(status: StatusCode, message: String) -> Self {
        Refusal {
            status,
            message,
            allow: None,
        }
    }

    fn reply(self) -> Reply {
        let mut reply = json(
            self.status,
            &ErrorBody {
                error: self.message,
            },
        );
        if let Some(allow) = self.allow {
            reply
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static(allow));
        }
        reply
    }
}

impl From<ControlError> for Refusal {
    fn from(e: ControlError) -> Self {
        Refusal::new(status_of(&e), e.to_string())
    }
}

fn json(status: StatusCode, value: &impl Serialize) -> Reply {
    let (status, body) = match serde_json::to_vec(value) {
        Ok(body) => (status, body),
        // Only a bug in a Serialize impl gets here; say so rather than send half a body.
        Err(e) => {
            tracing::error!(error = %e, "control: cannot encode an answer");
            let body = br#"{"error":"cannot encode the answer; the daemon's log says why"}"#;
            (StatusCode::INTERNAL_SERVER_ERROR, body.to_vec())
        }
    };
    let mut reply = Response::new(Full::new(Bytes::from(body)));
    *reply.status_mut() = status;
    reply
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    reply
}

fn no_content() -> Reply {
    let mut reply = Response::new(Full::new(Bytes::new()));
    *reply.status_mut() = StatusCode::NO_CONTENT;
    reply
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_route_has_one_path_and_method() {
        for route in Route::ALL {
            assert_eq!(Route::find(route.path()), Some(route));
        }
        assert_eq!(Route::find("/v1/status/"), None);
        assert_eq!(Route::Drain.to_string(), "POST /v1/drain");
    }

    #[test]
    fn handler_errors_map_to_their_status() {
        let cases = [
            (ControlError::NotFound("x".into()), 404),
            (ControlError::Invalid("x".into()), 400),
            (ControlError::BadConfig("x".into()), 422),
            (ControlError::Failed("x".into()), 500),
        ];
        for (e, status) in cases {
            assert_eq!(Refusal::from(e).reply().status().as_u16(), status);
        }
    }
}
