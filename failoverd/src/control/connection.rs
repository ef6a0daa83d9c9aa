//! One accepted control connection: HTTP/1.1 with bounded reads and lifetime, until it closes or the server shuts down.

use std::{convert::Infallible, sync::Arc, time::Duration};

use hyper::{server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::UnixStream, sync::watch};

use super::{peer::Peer, routes, ControlHandler};

/// How long a client may take to send a request's headers, or stay idle between requests: 10 s.
pub(crate) const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest a connection may stay open: 60 s.
///
/// The read timeouts do not cover a client that sends a request and then never
/// reads the answer (a large status fills the socket buffer and the write
/// waits). No real request takes this long: the client gives up after 10 s.
pub(crate) const MAX_LIFETIME: Duration = Duration::from_secs(60);

/// Serves HTTP/1.1 on `stream` until the client closes, a timeout hits, or
/// `shutdown` turns true (then the request in flight finishes and the
/// connection closes).
pub(crate) async fn serve<H: ControlHandler>(
    stream: UnixStream,
    handler: Arc<H>,
    server_uid: u32,
    mut shutdown: watch::Receiver<bool>,
) {
    let peer = Arc::new(Peer::of(&stream).await);
    let service = {
        let peer = Arc::clone(&peer);
        service_fn(move |request| {
            let handler = Arc::clone(&handler);
            let peer = Arc::clone(&peer);
            async move {
                Ok::<_, Infallible>(routes::respond(&*handler, &peer, server_uid, request).await)
            }
        })
    };
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let deadline = tokio::time::sleep(MAX_LIFETIME);
    tokio::pin!(deadline);
    let mut closing = *shutdown.borrow_and_update();
    if closing {
        connection.as_mut().graceful_shutdown();
    }
    // Bounded by `deadline`; shutdown is acted on once.
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(e) = result {
                    // Garbage, a header timeout or a client hanging up mid-request:
                    // hyper has answered 4xx where it could; nothing for an operator to do.
                    tracing::debug!(user = %peer.caller.user, pid = peer.caller.pid, error = %e, "control: connection ended with an error");
                }
                return;
            }
            () = &mut deadline => {
                tracing::warn!(
                    user = %peer.caller.user,
                    pid = peer.caller.pid,
                    "control: closing a connection open for longer than {}",
                    humantime::format_duration(MAX_LIFETIME)
                );
                return;
            }
            changed = shutdown.changed(), if !closing => {
                // A dropped sender can no longer ask for shutdown; treat it as one.
                if changed.is_err() || *shutdown.borrow_and_update() {
                    connection.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
        }
    }
}
