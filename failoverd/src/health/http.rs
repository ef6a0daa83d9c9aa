//! The http probe: one HTTP/1.1 GET per connection, bounded as a whole by the timeout.

use std::{net::SocketAddr, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{
    body::Incoming,
    client::conn::http1,
    header::{CONNECTION, HOST, USER_AGENT},
    Request,
};
use hyper_util::rt::TokioIo;
use tokio::{task::JoinHandle, time::Instant};

use super::{tcp, HttpCheck, ProbeError, ProbeOk};

/// The most of a body that is read and searched for `expect_body`: a health
/// endpoint that streams megabytes must not cost the daemon megabytes.
pub(super) const BODY_LIMIT: usize = 64 * 1024;

/// Status codes accepted when a check lists none.
const DEFAULT_STATUS: (u16, u16) = (200, 399);

/// Sends `GET check.path` to `addr`; connect, request and body all count
/// against `timeout`, so a black-holed or trickling backend fails at it.
pub(super) async fn check(
    check: &HttpCheck,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<ProbeOk, ProbeError> {
    let started = Instant::now();
    let code = tokio::time::timeout(timeout, exchange(check, addr))
        .await
        .map_err(|_| ProbeError::Timeout {
            addr,
            after: timeout,
        })??;
    Ok(ProbeOk::new(started.elapsed(), format!("HTTP {code}")))
}

/// The probe without its deadline; returns the accepted status code.
async fn exchange(check: &HttpCheck, addr: SocketAddr) -> Result<u16, ProbeError> {
    // Built before connecting: a bad path or host is our fault, not the backend's,
    // and should not cost it a connection.
    let host = match &check.host {
        Some(host) => host.clone(),
        None => addr.to_string(),
    };
    let request = Request::get(check.path.as_str())
        .header(HOST, host)
        .header(CONNECTION, "close")
        .header(USER_AGENT, "failoverd")
        .body(Empty::<Bytes>::new())
        .map_err(|source| ProbeError::Request { addr, source })?;

    let stream = tcp::connect(addr).await?;
    let http_error = |source| ProbeError::Http { addr, source };
    let (mut sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(http_error)?;
    let _driver = AbortOnDrop(tokio::spawn(async move {
        if let Err(error) = connection.await {
            // The request side sees the same failure and reports it; this is detail.
            tracing::debug!(backend = %addr, error = %error, "probe connection ended with an error");
        }
    }));

    let response = sender.send_request(request).await.map_err(http_error)?;
    let code = response.status().as_u16();
    if !status_accepted(&check.expect_status, code) {
        return Err(ProbeError::Status { addr, code });
    }
    if let Some(expected) = &check.expect_body {
        let body = read_prefix(response.into_body(), BODY_LIMIT)
            .await
            .map_err(http_error)?;
        if !contains(&body, expected.as_bytes()) {
            return Err(ProbeError::Body {
                addr,
                expected: expected.clone(),
            });
        }
    }
    Ok(code)
}

/// Ends the connection task with the probe, however the probe ends: when the
/// timeout drops the probe midway, the task would otherwise keep the socket
/// (and a slot on the backend) open until the backend hangs up.
pub(super) struct AbortOnDrop(pub(super) JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn status_accepted(ranges: &[(u16, u16)], code: u16) -> bool {
    let ranges = if ranges.is_empty() {
        &[DEFAULT_STATUS][..]
    } else {
        ranges
    };
    ranges.iter().any(|&(lo, hi)| (lo..=hi).contains(&code))
}

/// Reads the body up to `limit` bytes and stops there, leaving the rest unread.
async fn read_prefix(mut body: Incoming, limit: usize) -> Result<Vec<u8>, hyper::Error> {
    let mut prefix = Vec::new();
    while prefix.len() < limit {
        let Some(frame) = body.frame().await else {
            break;
        };
        // Trailers carry no body text; only data frames are searched.
        if let Ok(data) = frame?.into_data() {
            let take = data.len().min(limit - prefix.len());
            prefix.extend_from_slice(&data[..take]);
        }
    }
    Ok(prefix)
}

/// Byte-wise substring search: a body need not be UTF-8 to contain ASCII text.
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use http_body_util::Full;
    use hyper::{service::service_fn, Response};
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::{TcpListener, TcpStream},
    };

    use super::*;

    const TIMEOUT: Duration = Duration::from_millis(200);
    /// Slack for a loaded test machine; the point is "at the timeout", not "eventually".
    const MARGIN: Duration = Duration::from_secs(1);

    fn get(path: &str) -> HttpCheck {
        HttpCheck {
            path: path.to_owned(),
            host: None,
            expect_status: vec![(200, 399)],
            expect_body: None,
        }
    }

    fn expecting_body(text: &str) -> HttpCheck {
        HttpCheck {
            expect_body: Some(text.to_owned()),
            ..get("/health")
        }
    }

    fn response(status: &str, body: &str) -> Vec<u8> {
        format!(
            "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    /// Reads a request head (bounded), the way a backend would before answering.
    async fn read_head(conn: &mut TcpStream) -> String {
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
            let n = conn.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        String::from_utf8(head).unwrap()
    }

    /// A one-connection server that writes `answer` after the request head and
    /// hands back the head it read.
    async fn canned(answer: Vec<u8>) -> (SocketAddr, JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let head = read_head(&mut conn).await;
            // The probe may hang up before reading it all (a body past 64 KiB):
            // that is its right, not a test failure.
            if let Err(e) = conn.write_all(&answer).await {
                eprintln!("canned server: {e}");
            }
            head
        });
        (addr, server)
    }

    /// A server that accepts, then never writes; it returns once the probe's
    /// side of the connection closes.
    async fn silent() -> (SocketAddr, JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            while matches!(conn.read(&mut buf).await, Ok(n) if n > 0) {}
        });
        (addr, server)
    }

    #[tokio::test]
    async fn passes_on_200_with_the_expected_body() {
        let (addr, _server) = canned(response("200 OK", "status: ready")).await;
        let ok = check(&expecting_body("ready"), addr, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(ok.detail, "HTTP 200");
    }

    #[tokio::test]
    async fn passes_against_a_hyper_server() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _server = tokio::spawn(async move {
            let (conn, _) = listener.accept().await.unwrap();
            let service = service_fn(|request: Request<Incoming>| async move {
                let body = format!("ok {}", request.uri().path());
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(conn), service)
                .await
            {
                eprintln!("hyper server: {e}");
            }
        });
        let probe = HttpCheck {
            path: "/ready".into(),
            ..expecting_body("ok /ready")
        };
        let ok = check(&probe, addr, Duration::from_secs(5)).await.unwrap();
        assert_eq!(ok.detail, "HTTP 200");
    }

    #[tokio::test]
    async fn sends_a_closing_get_with_host_and_user_agent() {
        let (addr, server) = canned(response("204 No Content", "")).await;
        let probe = HttpCheck {
            host: Some("db.example".into()),
            ..get("/healthz?deep=1")
        };
        check(&probe, addr, Duration::from_secs(5)).await.unwrap();
        let head = server.await.unwrap().to_ascii_lowercase();
        assert!(
            head.starts_with("get /healthz?deep=1 http/1.1\r\n"),
            "{head}"
        );
        assert!(head.contains("\r\nhost: db.example\r\n"), "{head}");
        assert!(head.contains("\r\nconnection: close\r\n"), "{head}");
        assert!(head.contains("\r\nuser-agent: failoverd\r\n"), "{head}");
    }

    #[tokio::test]
    async fn host_defaults_to_the_probed_address() {
        let (addr, server) = canned(response("200 OK", "")).await;
        check(&get("/"), addr, Duration::from_secs(5))
            .await
            .unwrap();
        let head = server.await.unwrap().to_ascii_lowercase();
        assert!(head.contains(&format!("\r\nhost: {addr}\r\n")), "{head}");
    }

    #[tokio::test]
    async fn fails_with_status_on_503() {
        let (addr, _server) = canned(response("503 Service Unavailable", "")).await;
        let err = check(&get("/"), addr, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(
            matches!(err, ProbeError::Status { code: 503, .. }),
            "{err:?}"
        );
        assert_eq!(err.reason(), "status");
    }

    #[test]
    fn accepts_only_the_listed_status_ranges() {
        assert!(status_accepted(&[(200, 200), (204, 204)], 204));
        assert!(!status_accepted(&[(200, 200), (204, 204)], 201));
        assert!(status_accepted(&[], 302));
        assert!(!status_accepted(&[], 404));
    }

    #[tokio::test]
    async fn fails_with_body_when_the_text_is_missing() {
        let (addr, _server) = canned(response("200 OK", "status: starting")).await;
        let err = check(&expecting_body("ready"), addr, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ProbeError::Body { expected, .. } if expected == "ready"),
            "{err:?}"
        );
        assert_eq!(err.reason(), "body");
    }

    #[tokio::test]
    async fn looks_for_the_text_only_in_the_first_64_kib() {
        let late = format!("{}ready", "x".repeat(BODY_LIMIT));
        let (addr, _server) = canned(response("200 OK", &late)).await;
        let err = check(&expecting_body("ready"), addr, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(err.reason(), "body");

        let early = format!("ready{}", "x".repeat(2 * BODY_LIMIT));
        let (addr, _server) = canned(response("200 OK", &early)).await;
        check(&expecting_body("ready"), addr, Duration::from_secs(5))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn times_out_at_the_timeout_when_the_backend_never_answers() {
        let (addr, _server) = silent().await;
        let started = Instant::now();
        let err = check(&get("/"), addr, TIMEOUT).await.unwrap_err();
        let elapsed = started.elapsed();
        assert!(
            matches!(err, ProbeError::Timeout { after, .. } if after == TIMEOUT),
            "{err:?}"
        );
        assert_eq!(err.reason(), "timeout");
        assert!(
            elapsed >= TIMEOUT && elapsed < TIMEOUT + MARGIN,
            "{elapsed:?}"
        );
    }

    #[tokio::test]
    async fn times_out_when_the_body_trickles() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _server = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            read_head(&mut conn).await;
            // Headers promise a body that never comes.
            conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nstat")
                .await
                .unwrap();
            let mut buf = [0u8; 1024];
            while matches!(conn.read(&mut buf).await, Ok(n) if n > 0) {}
        });
        let started = Instant::now();
        let err = check(&expecting_body("ready"), addr, TIMEOUT)
            .await
            .unwrap_err();
        assert_eq!(err.reason(), "timeout", "{err:?}");
        assert!(started.elapsed() < TIMEOUT + MARGIN);
    }

    #[tokio::test]
    async fn closes_its_connection_when_it_times_out() {
        let (addr, server) = silent().await;
        check(&get("/"), addr, TIMEOUT).await.unwrap_err();
        // The server returns only when it reads end of stream: proof that the
        // connection task died with the probe instead of holding the socket.
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("the probe's connection outlived the probe")
            .unwrap();
    }

    #[tokio::test]
    async fn is_refused_when_nothing_listens() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let err = check(&get("/"), addr, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(err.reason(), "refused", "{err:?}");
    }

    #[tokio::test]
    async fn a_garbled_answer_is_an_other_failure() {
        let (addr, _server) = canned(b"SSH-2.0-OpenSSH_9.6\r\n\r\n".to_vec()).await;
        let err = check(&get("/"), addr, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(err, ProbeError::Http { .. }), "{err:?}");
        assert_eq!(err.reason(), "other");
    }

    #[tokio::test]
    async fn a_bad_path_fails_without_connecting() {
        // Port 9 (discard) on loopback: nothing is expected there, and nothing is tried.
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let err = check(&get("not a path"), addr, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(err, ProbeError::Request { .. }), "{err:?}");
    }
}
