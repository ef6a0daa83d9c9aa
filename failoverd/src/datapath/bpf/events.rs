//! The ring buffer of failed translated connects, read without polling.

use std::net::SocketAddr;

use aya::maps::{MapData, RingBuf};
use failoverd_shared::{event_kinds, map_names, ConnectEvent};
use tokio::io::{unix::AsyncFd, Interest};

use super::DatapathError;
use crate::datapath::{
    table::words_to_addr, BoxFuture, ConnectEvents, ConnectFailure, ConnectFailureKind,
};

/// Most records one batch carries: the rest wait for the next call, so a storm of
/// failures cannot starve the task that feeds the decision cores.
const MAX_BATCH: usize = 4096;

/// [`ConnectEvents`] over the pinned ring buffer.
pub struct RingBufEvents {
    /// Until the first read: registering with the reactor needs a running runtime.
    ring: Option<RingBuf<MapData>>,
    fd: Option<AsyncFd<RingBuf<MapData>>>,
}

impl RingBufEvents {
    /// Wraps the ring buffer, dropping what an earlier daemon left unread: failures seen
    /// while no daemon ran say nothing about the backends now (active probes decide first).
    pub fn new(mut ring: RingBuf<MapData>) -> Self {
        let mut stale = 0usize;
        while ring.next().is_some() {
            stale += 1;
        }
        if stale > 0 {
            tracing::debug!(
                stale,
                "dropped connect failures recorded while no daemon ran"
            );
        }
        RingBufEvents {
            ring: Some(ring),
            fd: None,
        }
    }
}

/// The failure a ring buffer record describes; `None` for a record of an unknown kind.
fn decode(record: &[u8]) -> Option<ConnectFailure> {
    if record.len() < std::mem::size_of::<ConnectEvent>() {
        return None;
    }
    // SAFETY: the record holds at least one ConnectEvent (plain old data, any bit pattern
    // valid); the read is unaligned-safe.
    let event: ConnectEvent = unsafe { std::ptr::read_unaligned(record.as_ptr().cast()) };
    let kind = match event.kind {
        event_kinds::REFUSED => ConnectFailureKind::Refused,
        event_kinds::SYN_TIMEOUT => ConnectFailureKind::SynTimeout,
        _ => return None,
    };
    Some(ConnectFailure {
        backend_id: event.backend_id,
        vip_id: event.vip_id,
        peer: SocketAddr::new(words_to_addr(event.addr_be), u16::from_be(event.port_be)),
        kind,
        consecutive: event.consecutive,
        suspect: event.suspect != 0,
    })
}

impl ConnectEvents for RingBufEvents {
    fn next_batch(&mut self) -> BoxFuture<'_, Result<Vec<ConnectFailure>, DatapathError>> {
        Box::pin(async move {
            let io = |source| DatapathError::Io {
                op: "waiting on",
                path: map_names::EVENTS.into(),
                source,
            };
            if let Some(ring) = self.ring.take() {
                // SAFETY: the ring buffer owns its map fd, which stays open and names the
                // same map until the AsyncFd (which owns the ring buffer) is dropped.
                let registered =
                    unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) };
                self.fd = Some(registered.map_err(|e| io(e.into()))?);
            }
            let fd = self.fd.as_mut().expect("registered above");
            loop {
                let mut guard = fd.readable_mut().await.map_err(io)?;
                let ring = guard.get_inner_mut();
                let mut batch = Vec::new();
                while batch.len() < MAX_BATCH {
                    let Some(record) = ring.next() else { break };
                    batch.extend(decode(&record));
                }
                if !batch.is_empty() {
                    return Ok(batch);
                }
                // Cleared only if nothing arrived since this readiness was seen.
                guard.clear_ready();
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_decodes_into_its_failure() {
        let event = ConnectEvent {
            ktime_ns: 1,
            backend_id: 7,
            vip_id: 3,
            addr_be: failoverd_shared::addr_words(
                std::net::Ipv4Addr::new(127, 0, 0, 2)
                    .to_ipv6_mapped()
                    .octets(),
            ),
            port_be: 8080u16.to_be(),
            kind: event_kinds::SYN_TIMEOUT,
            suspect: 1,
            consecutive: 3,
        };
        // SAFETY: viewing a plain repr(C) value as its bytes.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&event as *const ConnectEvent).cast::<u8>(),
                std::mem::size_of::<ConnectEvent>(),
            )
        };
        assert_eq!(
            decode(bytes),
            Some(ConnectFailure {
                backend_id: 7,
                vip_id: 3,
                peer: "127.0.0.2:8080".parse().unwrap(),
                kind: ConnectFailureKind::SynTimeout,
                consecutive: 3,
                suspect: true,
            })
        );
        assert_eq!(decode(&bytes[..8]), None);
    }
}
