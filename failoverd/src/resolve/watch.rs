//! Keeps a hostname's addresses current: a background task that re-resolves at each answer's
//! TTL, backs off while lookups fail, and publishes an [`AddrSet`] on a watch channel.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use tokio::sync::watch as channel;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::answer::{Outcome, TtlBounds};
use super::{error_chain, ResolveError, Resolver};

/// No name is ever queried more often than this, whatever the TTL or `min_ttl`: a zero TTL or
/// a misconfigured `min_ttl` must not turn the daemon into a DNS load generator.
const MIN_INTERVAL: Duration = Duration::from_millis(500);

/// First retry delay after a failed lookup (never below [`MIN_INTERVAL`] nor above the cap).
const FIRST_RETRY: Duration = Duration::from_secs(1);

/// The addresses a watched name currently stands for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AddrSet {
    /// Every address of the name with the watched port, sorted (IPv4 first); empty until the
    /// first answer. A failed lookup leaves it as it was.
    pub addrs: Vec<SocketAddr>,
    /// Whether any lookup has succeeded yet; stays `true` through later failures.
    pub resolved: bool,
    /// The error of the latest lookup with its causes, or `None` if it succeeded.
    pub last_error: Option<String>,
}

/// Keeps `host`'s addresses current, paired with `port`.
///
/// Returns at once — DNS never blocks the caller — with a receiver holding an empty, not yet
/// `resolved` [`AddrSet`], and the task's handle. The task resolves now, then again when the
/// answer's TTL (clamped to `[min_ttl, max_ttl]`) runs out. On failure it keeps the last good
/// addresses, sets `last_error`, and retries with exponential backoff: 1 s doubling up to
/// `min_ttl` (with up to 100% jitter, so names failing together spread out), i.e. a failing
/// name is retried about as often as the shortest TTL allows a healthy one to be refreshed.
/// When only one of A and AAAA fails, the other's new addresses are taken and the failed
/// family keeps its old ones. No name is queried more often than every 500 ms.
///
/// Receivers are woken only when the set changes. Each change of addresses is logged once at
/// info; a run of failures is logged once at warn when it starts and once at info when it ends.
///
/// The task stops when `shutdown` turns `true`, when its sender is dropped (no one could stop
/// it later), or when every [`AddrSet`] receiver is dropped — whether it is waiting on a
/// lookup or sleeping.
///
/// # Panics
///
/// Outside a tokio runtime, like [`tokio::spawn`].
pub fn watch(
    resolver: Resolver,
    host: String,
    port: u16,
    shutdown: channel::Receiver<bool>,
) -> (channel::Receiver<AddrSet>, JoinHandle<()>) {
    let (tx, rx) = channel::channel(AddrSet::default());
    let watcher = Watcher {
        retry: retry_policy(resolver.bounds()),
        resolver,
        host,
        port,
        tx,
        backoff: None,
        failures: 0,
    };
    (rx, tokio::spawn(watcher.run(shutdown)))
}

/// Retry delays after failures: from [`FIRST_RETRY`] doubling to a cap of `min_ttl`, both
/// floored at [`MIN_INTERVAL`]. Jitter adds up to the delay again.
fn retry_policy(bounds: TtlBounds) -> ExponentialBuilder {
    let cap = bounds.min.max(MIN_INTERVAL);
    ExponentialBuilder::new()
        .with_min_delay(FIRST_RETRY.min(cap))
        .with_max_delay(cap)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
}

struct Watcher {
    resolver: Resolver,
    host: String,
    port: u16,
    tx: channel::Sender<AddrSet>,
    retry: ExponentialBuilder,
    /// The current failure run's delays; `None` while lookups succeed.
    backoff: Option<ExponentialBackoff>,
    /// Length of the current failure run.
    failures: u64,
}

impl Watcher {
    async fn run(mut self, mut shutdown: channel::Receiver<bool>) {
        // Bounded by `shutdown` and by the receivers: each turn ends in a sleep of at least
        // MIN_INTERVAL, and every await below also waits for either way out.
        loop {
            let looked_up = tokio::select! {
                biased;
                () = stop_requested(&mut shutdown) => break,
                () = self.tx.closed() => break,
                looked_up = self.look_up() => looked_up,
            };
            let delay = match looked_up {
                Outcome::Complete(answer) => self.succeeded(answer.addrs, answer.ttl),
                Outcome::Failed { addrs, error } => self.failed(addrs, &error),
            };
            tokio::select! {
                biased;
                () = stop_requested(&mut shutdown) => break,
                () = self.tx.closed() => break,
                () = tokio::time::sleep(delay) => {}
            }
        }
        debug!(host = %self.host, "dns watch stopped");
    }

    async fn look_up(&self) -> Outcome {
        match self.resolver.query(&self.host).await {
            Ok(families) => {
                let previous: Vec<IpAddr> =
                    self.tx.borrow().addrs.iter().map(SocketAddr::ip).collect();
                families.settle(&self.host, self.resolver.bounds(), &previous)
            }
            Err(error) => Outcome::Failed { addrs: None, error },
        }
    }

    /// Publishes a full answer; returns when to look again.
    fn succeeded(&mut self, addrs: Vec<IpAddr>, ttl: Duration) -> Duration {
        if self.failures > 0 {
            info!(host = %self.host, failures = self.failures, "dns lookups recovered");
        }
        self.failures = 0;
        self.backoff = None;
        self.publish(Some(addrs), None, ttl);
        ttl.max(MIN_INTERVAL)
    }

    /// Records a failure (publishing the partial answer, if any); returns when to retry.
    fn failed(&mut self, addrs: Option<Vec<IpAddr>>, error: &ResolveError) -> Duration {
        let message = error_chain(error);
        if self.failures == 0 {
            warn!(host = %self.host, error = %message, "dns lookup failed; keeping the last addresses");
        } else {
            debug!(host = %self.host, error = %message, failures = self.failures + 1, "dns lookup still failing");
        }
        self.failures += 1;
        let retry = self.retry;
        let delay = self
            .backoff
            .get_or_insert_with(|| retry.build())
            .next()
            // Unreachable with `without_max_times`; the cap is the sensible answer anyway.
            .unwrap_or(self.resolver.bounds().min)
            .max(MIN_INTERVAL);
        self.publish(addrs, Some(message), delay);
        delay
    }

    /// Updates the published set, waking receivers only if something changed, and logs a
    /// change of addresses once. `addrs: None` keeps the current addresses.
    fn publish(&self, addrs: Option<Vec<IpAddr>>, error: Option<String>, ttl: Duration) {
        let port = self.port;
        self.tx.send_if_modified(|set| {
            let mut modified = false;
            if let Some(addrs) = addrs {
                let new: Vec<SocketAddr> = addrs
                    .into_iter()
                    .map(|ip| SocketAddr::new(ip, port))
                    .collect();
                if new != set.addrs {
                    info!(
                        host = %self.host,
                        old = ?set.addrs,
                        new = ?new,
                        ttl = ?ttl,
                        "dns addresses changed"
                    );
                    set.addrs = new;
                    modified = true;
                }
                if !set.resolved {
                    set.resolved = true;
                    modified = true;
                }
            }
            if set.last_error != error {
                set.last_error = error;
                modified = true;
            }
            modified
        });
    }
}

/// Resolves once `shutdown` is `true` or its sender is gone.
async fn stop_requested(shutdown: &mut channel::Receiver<bool>) {
    if shutdown.wait_for(|stop| *stop).await.is_err() {
        // The sender is gone, so no one could ever stop this task: stop now rather than leak.
        debug!("dns watch shutdown sender dropped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delays(bounds: TtlBounds, count: usize) -> Vec<Duration> {
        retry_policy(bounds).build().take(count).collect()
    }

    #[test]
    fn retries_start_at_one_second_and_double_up_to_min_ttl() {
        let bounds = TtlBounds {
            min: Duration::from_secs(5),
            max: Duration::from_secs(300),
        };
        let floors = [1, 2, 4, 5, 5, 5].map(Duration::from_secs);
        for (delay, floor) in delays(bounds, floors.len()).into_iter().zip(floors) {
            // Jitter adds up to the base delay again, never less than nothing.
            assert!(
                delay >= floor && delay <= floor * 2,
                "{delay:?} outside [{floor:?}, {:?}]",
                floor * 2
            );
        }
    }

    #[test]
    fn retries_never_come_faster_than_the_minimum_interval() {
        let bounds = TtlBounds {
            min: Duration::ZERO,
            max: Duration::ZERO,
        };
        for delay in delays(bounds, 20) {
            assert!(delay >= MIN_INTERVAL, "{delay:?}");
            assert!(delay <= MIN_INTERVAL * 2, "{delay:?}");
        }
    }
}
