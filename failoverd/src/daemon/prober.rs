//! The probe loop of one backend: anchored to probe starts, jittered, capped in concurrency.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::{
    sync::{mpsc, watch, Semaphore},
    time::Instant,
};

use super::{backend::BackendKey, service::ServiceEvent};
use crate::health::Probe;

/// What a prober needs.
pub struct ProberParams {
    /// Which backend, for the report.
    pub key: BackendKey,
    /// Where to probe.
    pub addr: SocketAddr,
    /// How.
    pub probe: Arc<Probe>,
    /// Time between probe starts.
    pub interval: Duration,
    /// A probe fails at this time at the latest (shorter than `interval`).
    pub timeout: Duration,
    /// Caps probes in flight across the daemon.
    pub permits: Arc<Semaphore>,
}

/// Probes until shutdown or until the service stops listening.
///
/// Starts are anchored (`start + interval`, not `end + interval`), so a slow
/// probe does not stretch the detection time; the first start is jittered
/// over one interval so a thousand backends do not probe in lockstep.
pub async fn run(
    params: ProberParams,
    events: mpsc::Sender<ServiceEvent>,
    mut shutdown: watch::Receiver<bool>,
) {
    let jitter = params.interval.mul_f64(fastrand::f64());
    let mut next = Instant::now() + jitter;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        let started = Instant::now();
        let result = {
            let Ok(_permit) = params.permits.acquire().await else {
                return;
            };
            params.probe.check(params.addr, params.timeout).await
        };
        if events
            .send(ServiceEvent::Probe {
                key: params.key,
                started,
                result,
            })
            .await
            .is_err()
        {
            return;
        }
        next = started + params.interval;
        // Waiting for a permit may have eaten the slot: skip it rather than burst.
        let now = Instant::now();
        while next < now {
            next += params.interval;
        }
    }
}
