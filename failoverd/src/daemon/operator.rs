//! What operators ask of a running daemon beyond status: explain, drain and undrain.

use std::net::SocketAddr;

use tokio::sync::oneshot;

use super::{
    lock,
    service::{DrainChange, DrainError, DrainMessage, Message, Persist},
    DaemonError, DaemonHandle, DrainStore,
};
use crate::{
    datapath::{Protocol, Terminated, Vip},
    decision::Explanation,
    reconcile::WriterMessage,
};

impl DaemonHandle {
    /// Where a connect to `addr` goes now. Without a protocol, the one service with that
    /// address (an error names both when a TCP and a UDP service share it).
    pub async fn explain(
        &self,
        addr: SocketAddr,
        protocol: Option<Protocol>,
    ) -> Result<Explanation, DaemonError> {
        let wanted = Vip {
            addr: canonical(addr),
            protocol: protocol.unwrap_or(Protocol::Tcp),
        };
        let names: Vec<(String, Vip)> = self
            .inner
            .services
            .read()
            .await
            .values()
            .map(|s| (s.config.name.clone(), s.config.vip()))
            .filter(|(_, vip)| {
                canonical(vip.addr) == wanted.addr && protocol.is_none_or(|p| vip.protocol == p)
            })
            .collect();
        let name = match names.as_slice() {
            [] => return Err(DaemonError::UnknownVip { addr, protocol }),
            [(name, _)] => name.clone(),
            _ => return Err(DaemonError::AmbiguousVip { addr }),
        };
        self.ask(&name, |reply| Message::Explain { reply }).await
    }

    /// Drains or undrains a backend: checked, recorded in `store`, and in the kernel's table
    /// before this returns. A drain with `terminate` also aborts the sockets translated to
    /// the backend, after that write, and returns what was aborted.
    pub async fn set_drain(
        &self,
        store: &DrainStore,
        service: &str,
        backend: &str,
        change: DrainChange,
    ) -> Result<Option<Terminated>, DrainError> {
        let terminate = matches!(
            change,
            DrainChange::Drain {
                terminate: true,
                ..
            }
        );
        let _one_at_a_time = self.inner.changes.lock().await;
        let tx = self
            .sender(service)
            .await
            .map_err(|_| DrainError::UnknownService {
                name: service.to_string(),
            })?;
        let mut next = lock(&self.inner.drains).clone();
        match &change {
            DrainChange::Drain { drain, .. } => {
                next.entry(service.to_string())
                    .or_default()
                    .insert(backend.to_string(), drain.clone());
            }
            DrainChange::Undrain => {
                if let Some(s) = next.get_mut(service) {
                    s.remove(backend);
                    if s.is_empty() {
                        next.remove(service);
                    }
                }
            }
        }
        let (store, to_save) = (store.clone(), next.clone());
        let persist: Persist = Box::new(move || store.save(&to_save));
        let (reply, answer) = oneshot::channel();
        tx.send(Message::Drain(Box::new(DrainMessage {
            backend: backend.to_string(),
            change,
            persist,
            reply,
        })))
        .await
        .map_err(|_| DrainError::Stopped)?;
        let aborted = answer.await.map_err(|_| DrainError::Stopped)??;
        // Recorded and handed to the writer: the file is the truth now.
        *lock(&self.inner.drains) = next;
        // Return only once the kernel holds it; no lock but the drain lock is held here.
        if !self.barrier().await.map_err(|_| DrainError::Stopped)? {
            return Err(DrainError::NotWritten);
        }
        if !terminate {
            return Ok(None);
        }
        let mut total = Terminated::default();
        for done in aborted {
            // Gone only when the writer stopped: the daemon is shutting down.
            let t = done
                .await
                .map_err(|_| DrainError::Stopped)?
                .map_err(DrainError::NotTerminated)?;
            total.tcp += t.tcp;
            total.udp += t.udp;
        }
        Ok(Some(total))
    }

    /// The drains in force (what `drains.json` holds).
    pub fn drains(&self) -> super::Drains {
        lock(&self.inner.drains).clone()
    }

    /// Probes finished so far and the probe targets running now: whether probing moves.
    pub fn probe_progress(&self) -> (u64, usize) {
        let probes = &self.inner.shared.probes;
        (probes.completed(), probes.targets())
    }

    /// Waits until the writer has written everything sent before; `true` when nothing is
    /// left to retry.
    pub async fn barrier(&self) -> Result<bool, DaemonError> {
        let (reply, written) = oneshot::channel();
        self.inner
            .shared
            .writer
            .send(WriterMessage::Barrier(reply))
            .await
            .map_err(|_| DaemonError::Stopped)?;
        written.await.map_err(|_| DaemonError::Stopped)
    }
}

/// An address as the kernel keys it: an IPv4-mapped IPv6 address is its IPv4 address.
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}
