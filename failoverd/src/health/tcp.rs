//! The tcp probe: a connect that completes within the timeout, closed right away.

use std::{io, net::SocketAddr, time::Duration};

use tokio::{net::TcpStream, time::Instant};

use super::{ProbeError, ProbeOk};

/// Connects to `addr`, failing with [`ProbeError::Timeout`] at `timeout`.
pub(super) async fn check(addr: SocketAddr, timeout: Duration) -> Result<ProbeOk, ProbeError> {
    let started = Instant::now();
    let stream = tokio::time::timeout(timeout, connect(addr))
        .await
        .map_err(|_| ProbeError::Timeout {
            addr,
            after: timeout,
        })??;
    let latency = started.elapsed();
    // Closing at once keeps the probe from holding one of the backend's
    // connection slots; the backend sees a connect and a FIN, nothing more.
    drop(stream);
    Ok(ProbeOk::new(latency, "connected"))
}

/// Connects without a deadline of its own: callers bound it (the http probe
/// bounds the whole exchange, not only the connect).
pub(super) async fn connect(addr: SocketAddr) -> Result<TcpStream, ProbeError> {
    TcpStream::connect(addr)
        .await
        .map_err(|source| match source.kind() {
            io::ErrorKind::ConnectionRefused => ProbeError::Refused { addr },
            _ => ProbeError::Other { addr, source },
        })
}

#[cfg(test)]
mod tests {
    use tokio::net::{TcpListener, TcpSocket};

    use super::*;

    /// A listener whose accept queue is full: Linux drops further SYNs, so a
    /// connect to it neither completes nor is refused until its retries run out.
    async fn full_listener() -> (TcpListener, Vec<TcpStream>) {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        // Backlog 0 still queues one connection; the ones after it hang.
        let listener = socket.listen(0).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut queued = Vec::new();
        for _ in 0..8 {
            match tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => queued.push(stream),
                Ok(Err(e)) => panic!("filling the accept queue of {addr}: {e}"),
                Err(_) => return (listener, queued),
            }
        }
        panic!("the accept queue of {addr} never filled");
    }

    #[tokio::test]
    async fn passes_when_the_backend_accepts() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let ok = check(addr, Duration::from_secs(5)).await.unwrap();
        assert_eq!(ok.detail, "connected");
        assert!(ok.latency < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn closes_the_connection_right_away() {
        use tokio::io::AsyncReadExt;

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        check(addr, Duration::from_secs(5)).await.unwrap();
        let (mut conn, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf))
            .await
            .expect("the probe left its connection open");
        assert_eq!(read.unwrap(), 0, "expected end of stream");
    }

    #[tokio::test]
    async fn is_refused_when_nothing_listens() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let err = check(addr, Duration::from_secs(5)).await.unwrap_err();
        assert!(
            matches!(err, ProbeError::Refused { addr: a } if a == addr),
            "{err:?}"
        );
        assert_eq!(err.reason(), "refused");
    }

    #[tokio::test]
    async fn times_out_at_the_timeout_when_syns_go_unanswered() {
        let (listener, _queued) = full_listener().await;
        let addr = listener.local_addr().unwrap();
        // Paused from here: the runtime jumps to the timeout once the connect
        // is the only thing left waiting, so the assertion on time is exact.
        tokio::time::pause();
        let started = Instant::now();
        let timeout = Duration::from_secs(3);
        let err = check(addr, timeout).await.unwrap_err();
        assert!(
            matches!(err, ProbeError::Timeout { addr: a, after } if a == addr && after == timeout),
            "{err:?}"
        );
        let elapsed = started.elapsed();
        // The timer wheel rounds deadlines up to the next millisecond.
        assert!(
            elapsed >= timeout && elapsed <= timeout + Duration::from_millis(1),
            "{elapsed:?}"
        );
        assert_eq!(err.reason(), "timeout");
    }
}
