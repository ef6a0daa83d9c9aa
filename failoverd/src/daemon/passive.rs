//! The kernel's connect-failure stream, routed to the services that own the backends.
//!
//! ```text
//! ring buffer ─► ConnectEvents::next_batch ─► Routes: backend id ─► service task ─► core
//!                                               └─ unknown id, marked suspect ─► writer: lift
//! ```
//! Read by its own task, apart from the writer that owns the datapath, so a failure reaches
//! its service without waiting behind map writes; the service's answer (a new table, a mark
//! to lift) goes to the writer like any other.

use std::sync::{Mutex, PoisonError};

use tokio::sync::watch;

use super::{inbox::Sender, service::Message};
use crate::{
    datapath::{ConnectEvents, ConnectFailure},
    reconcile::WriterMessage,
};

/// Which service task owns each backend counter id: one lookup per failure, no name search
/// and no lock a service holds for long. Each task keeps its own ids in step.
///
/// Indexed by id: ids are small and dense (the allocator hands them out from 1 up), so a
/// vector of 8-byte slots is about a third of a hash map's memory at 80,000 backends, and
/// never more than `MAX_COUNTERS` slots (2 MiB).
#[derive(Default)]
pub struct Routes(Mutex<Vec<Option<Sender>>>);

impl Routes {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Option<Sender>>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes `ids` route to `tx`, and the ids `tx` had before that are not in `ids` route
    /// nowhere.
    pub fn set(&self, tx: &Sender, had: &[u32], ids: &[u32]) {
        let mut routes = self.lock();
        for &id in had.iter().filter(|id| !ids.contains(id)) {
            // A reload may have handed the id to a successor task already: only our own goes.
            if let Some(slot) = routes.get_mut(id as usize) {
                if slot.as_ref().is_some_and(|owner| owner.same_inbox(tx)) {
                    *slot = None;
                }
            }
        }
        for &id in ids {
            let i = id as usize;
            if routes.len() <= i {
                routes.resize_with(i + 1, || None);
            }
            routes[i] = Some(tx.clone());
        }
    }

    /// The task that owns `backend_id`, if any.
    fn owner(&self, backend_id: u32) -> Option<Sender> {
        self.lock().get(backend_id as usize).cloned().flatten()
    }
}

/// Reads the kernel's connect failures until `stop` turns true or the source breaks, and
/// hands each to the service that owns its backend. `next_batch` is dropped unfinished at
/// shutdown, so a source must not lose what it already took when that happens. A failure for an id no service owns
/// (its backend was removed meanwhile) changes nothing, but a suspect mark it set is lifted.
pub async fn forward(
    mut events: Box<dyn ConnectEvents>,
    shared: std::sync::Arc<super::service::Shared>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let batch = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => return,
            batch = events.next_batch() => batch,
        };
        let batch = match batch {
            Ok(batch) => batch,
            Err(e) => {
                tracing::error!(error = %e, "the kernel's connect-failure stream broke; passive health is off until a restart (probes still decide)");
                return;
            }
        };
        for failure in batch {
            route(&shared, failure).await;
        }
    }
}

async fn route(shared: &super::service::Shared, failure: ConnectFailure) {
    match shared.routes.owner(failure.backend_id) {
        // Never waits: the service's inbox queues it and rings the task.
        Some(tx) => {
            if tx.send(Message::ConnectFailed(failure)).await.is_err() {
                tracing::debug!(
                    id = failure.backend_id,
                    "service stopped; connect failure dropped"
                );
            }
        }
        None => {
            tracing::debug!(id = failure.backend_id, peer = %failure.peer, "connect failure for a backend no service has");
            if failure.suspect
                && shared
                    .writer
                    .send(WriterMessage::ClearSuspect(failure.backend_id))
                    .await
                    .is_err()
            {
                tracing::debug!("writer gone (shutting down)");
            }
        }
    }
}
