//! The HTTP listener for `/metrics`, `/healthz` and `/readyz`.

use std::{convert::Infallible, future::Future, net::SocketAddr, time::Duration};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{body::Incoming, service::service_fn, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::watch};

use super::{Handle, MetricsError};
use crate::limits::{AcceptGate, Listener};

/// The most metrics connections served at once: 64. More wait in the kernel's backlog, which
/// costs the daemon no file descriptor.
pub const MAX_CONNECTIONS: usize = 64;

/// How long a metrics client may take to send a request's headers, or stay idle between
/// requests: 5 s (a scraper sends its request at once).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest a metrics connection may stay open: 30 s, whatever it does (it also bounds a
/// client that never reads its answer).
pub const MAX_LIFETIME: Duration = Duration::from_secs(30);

/// Binds `metrics.listen` and logs the address it got (with port 0, the port the kernel chose).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, MetricsError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind { addr, source })?;
    match listener.local_addr() {
        Ok(bound) => tracing::info!(addr = %bound, "metrics listening"),
        Err(e) => {
            tracing::warn!(addr = %addr, error = %e, "metrics listening; its local address is unknown")
        }
    }
    Ok(listener)
}

/// Serves `/metrics`, `/healthz` (alive) and `/readyz` (`ready()` true: first
/// verdicts in, datapath attached) until `shutdown` turns true.
///
/// Each `/metrics` scrape first reads the process's own figures (RSS, fds, CPU: see
/// [`super::collect_process`]), so they are as fresh as the scrape.
///
/// Any local user can reach this port, so what a client may take is bounded: at most
/// [`MAX_CONNECTIONS`] at once, [`HEADER_TIMEOUT`] to send a request, [`MAX_LIFETIME`] in all,
/// and nothing is accepted while the daemon is short of file descriptors (the probes' reserve,
/// see [`crate::limits`]). Failed accepts back off from 100 ms to 1 s and are logged once per
/// burst.
pub async fn serve<R, F>(
    listener: TcpListener,
    handle: Handle,
    ready: R,
    mut shutdown: watch::Receiver<bool>,
) where
    R: Fn() -> F + Clone + Send + Sync + 'static,
    F: Future<Output = bool> + Send,
{
    let mut gate = AcceptGate::new(Listener::Metrics, MAX_CONNECTIONS);
    loop {
        let ((stream, _), permit) = tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => return,
            accepted = gate.accept(|| listener.accept()) => accepted,
        };
        let (handle, ready) = (handle.clone(), ready.clone());
        tokio::spawn(async move {
            // Released when the connection ends, letting the next one in.
            let _permit = permit;
            let service = service_fn(move |request: Request<Incoming>| {
                let (handle, ready) = (handle.clone(), ready.clone());
                async move { Ok::<_, Infallible>(respond(request.uri().path(), &handle, ready).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(MAX_LIFETIME, conn).await {
                Ok(Ok(())) => {}
                // A scrape that hangs up early, or a header timeout, is not worth more than a
                // debug line.
                Ok(Err(e)) => tracing::debug!(error = %e, "metrics connection ended with an error"),
                Err(_) => tracing::debug!("metrics connection cut at its deadline"),
            }
        });
    }
}

async fn respond<R, F>(path: &str, handle: &Handle, ready: R) -> Response<Full<Bytes>>
where
    R: Fn() -> F,
    F: Future<Output = bool>,
{
    let (status, body, content_type) = match path {
        "/metrics" => {
            super::collect_process();
            (StatusCode::OK, handle.render(), "text/plain; version=0.0.4")
        }
        "/healthz" => (StatusCode::OK, "ok\n".to_string(), "text/plain"),
        "/readyz" if ready().await => (StatusCode::OK, "ready\n".to_string(), "text/plain"),
        "/readyz" => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: waiting for first verdicts\n".to_string(),
            "text/plain",
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "not found: try /metrics, /healthz or /readyz\n".to_string(),
            "text/plain",
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A metrics server on an ephemeral port, stopped when the sender drops.
    async fn server() -> (SocketAddr, watch::Sender<bool>) {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let handle = super::super::Recorder::new(&[]).handle();
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(serve(listener, handle, || async { true }, stopped));
        (addr, stop)
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_sends_no_request_is_cut_after_the_header_timeout() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (addr, _stop) = server().await;
        let started = tokio::time::Instant::now();
        let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 64];
        // Paused time jumps to the next timer: the header timeout, not the 30 s deadline.
        let n = idle.read(&mut buf).await.unwrap_or(0);
        assert!(
            started.elapsed() >= HEADER_TIMEOUT && started.elapsed() < MAX_LIFETIME,
            "cut after {:?}; read {n} bytes",
            started.elapsed()
        );
        // A client that does send one is answered.
        let mut scraper = tokio::net::TcpStream::connect(addr).await.unwrap();
        scraper
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        scraper.read_to_string(&mut answer).await.unwrap();
        assert!(
            answer.starts_with("HTTP/1.1 200") && answer.ends_with("ok\n"),
            "{answer}"
        );
    }
}
