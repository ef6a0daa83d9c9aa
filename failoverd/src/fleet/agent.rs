//! The fleet session: connect, read the desired state at one revision, apply it, watch from
//! the next revision, keep `hosts/<host>` alive under a lease — and on any failure keep
//! serving what was applied, and start over with backoff.
//!
//! Starting over always reads the whole desired state at the current revision before it
//! watches again, so a history compacted while the daemon was away changes nothing: it never
//! asks for old revisions. A watch that etcd cancels anyway (compaction racing the resync)
//! ends the session and the next one resyncs.

use std::{
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};

use backon::{BackoffBuilder, ExponentialBuilder};
use etcd_client::{Client, EventType, GetOptions, PutOptions, WatchOptions};
use tokio::{sync::watch, time::Instant};

use super::{
    connect::{bounded, connect, endpoints, REQUEST_TIMEOUT},
    keys::Keys,
    publish::now_unix,
    state::{FleetDrain, FleetState},
    view::{self, HostView},
    FleetError,
};
use crate::{
    config::FleetSection,
    control::{FleetReport, StatusReport},
};

/// Time to live of `hosts/<host>`'s lease: 10 s. A host that stops (or loses etcd) drops
/// out of the matrix after it.
pub const LEASE_TTL_SECS: i64 = 10;

/// How often the host's view is compared with what it last published: 1 s.
const VIEW_EVERY: Duration = Duration::from_secs(1);

/// What the agent drives: the running daemon (a test double in unit tests).
pub trait FleetTarget: Send + Sync + 'static {
    /// Applies a desired state (services like a reload, drains like `drain`); a refused set
    /// is reported by the target itself and leaves the old one running.
    fn apply(&self, state: FleetState) -> impl Future<Output = ()> + Send;
    /// The daemon's status, for the host's view (`None` if it cannot answer now).
    fn status(&self) -> impl Future<Output = Option<StatusReport>> + Send;
}

/// This host's link to the fleet: shared by the agent (which keeps the session) and the
/// control API (which writes drains and reads the matrix through it).
pub struct FleetLink {
    section: FleetSection,
    keys: Keys,
    /// `Some` while the session works; fleet commands fail at once otherwise.
    client: Mutex<Option<Client>>,
    /// Why the last session ended, for the error a fleet command gets.
    last_error: Mutex<String>,
    /// The revision of the last desired state applied here.
    applied: watch::Sender<i64>,
}

/// The link as `status` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FleetStatus {
    /// Whether the session works.
    pub connected: bool,
    /// The revision last applied.
    pub revision: i64,
}

impl FleetLink {
    /// A link for `section`, not connected yet; `revision` is what `state_dir` held.
    pub fn new(section: FleetSection, revision: i64) -> Arc<FleetLink> {
        crate::metrics::fleet_register();
        Arc::new(FleetLink {
            keys: Keys::new(&section.etcd.prefix),
            section,
            client: Mutex::new(None),
            last_error: Mutex::new("not connected yet".into()),
            applied: watch::Sender::new(revision),
        })
    }

    /// This host's name in the fleet.
    pub fn host(&self) -> &str {
        &self.section.host
    }

    /// The key layout.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Whether the session works, and the revision applied.
    pub fn status(&self) -> FleetStatus {
        FleetStatus {
            connected: lock(&self.client).is_some(),
            revision: *self.applied.borrow(),
        }
    }

    fn client(&self) -> Result<Client, FleetError> {
        lock(&self.client)
            .clone()
            .ok_or_else(|| FleetError::Unreachable {
                endpoints: endpoints(&self.section.etcd),
                reason: lock(&self.last_error).clone(),
            })
    }

    fn connected(&self, client: Client) {
        *lock(&self.client) = Some(client);
        crate::metrics::fleet_connected(true);
    }

    fn disconnected(&self, why: &FleetError) {
        *lock(&self.client) = None;
        *lock(&self.last_error) = why.to_string();
        crate::metrics::fleet_connected(false);
    }

    fn applied(&self, revision: i64) {
        self.applied.send_if_modified(|r| {
            let newer = revision > *r;
            if newer {
                *r = revision;
            }
            newer
        });
    }

    /// Waits until this host has applied `revision` (or a later one); false after `limit`.
    pub async fn wait_applied(&self, revision: i64, limit: Duration) -> bool {
        let mut rx = self.applied.subscribe();
        tokio::time::timeout(limit, rx.wait_for(|r| *r >= revision))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Writes a fleet drain; returns the revision it has.
    pub async fn put_drain(
        &self,
        service: &str,
        backend: &str,
        drain: &FleetDrain,
    ) -> Result<i64, FleetError> {
        let mut client = self.client()?;
        let value = serde_json::to_vec(drain).expect("a drain serializes");
        let resp = bounded(
            "writing the fleet drain",
            REQUEST_TIMEOUT,
            client.put(self.keys.drain(service, backend), value, None),
        )
        .await?;
        Ok(resp.header().map_or(0, |h| h.revision()))
    }

    /// Deletes a fleet drain; `None` if there was none.
    pub async fn delete_drain(
        &self,
        service: &str,
        backend: &str,
    ) -> Result<Option<i64>, FleetError> {
        let mut client = self.client()?;
        let resp = bounded(
            "deleting the fleet drain",
            REQUEST_TIMEOUT,
            client.delete(self.keys.drain(service, backend), None),
        )
        .await?;
        Ok((resp.deleted() > 0).then(|| resp.header().map_or(0, |h| h.revision())))
    }

    /// Every live host's view, side by side.
    pub async fn matrix(&self) -> Result<FleetReport, FleetError> {
        let mut client = self.client()?;
        let resp = bounded(
            "reading the hosts' views",
            REQUEST_TIMEOUT,
            client.get(self.keys.hosts(), Some(GetOptions::new().with_prefix())),
        )
        .await?;
        let mut views = Vec::with_capacity(resp.kvs().len());
        for kv in resp.kvs() {
            match serde_json::from_slice::<HostView>(kv.value()) {
                Ok(v) => views.push(v),
                Err(e) => tracing::warn!(
                    key = %String::from_utf8_lossy(kv.key()),
                    error = %e,
                    "skipping a host view failoverd cannot read"
                ),
            }
        }
        Ok(view::matrix(&views))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Reconnect delays: 200 ms doubling to 10 s, with jitter so that a thousand hosts do not
/// come back at etcd in the same instant.
fn backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(10))
        .with_jitter()
        .without_max_times()
        .build()
}

/// Resolves once `stop` turns true (or its sender is gone: the daemon is stopping either
/// way). The borrow `wait_for` returns is dropped here, before any other await.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    stop.wait_for(|s| *s).await.map(drop).unwrap_or(());
}

/// Keeps the fleet session until `stop` turns true. `state` is the last state applied
/// (from `state_dir`); it is what the daemon serves while etcd cannot be reached.
pub async fn run<T: FleetTarget>(
    link: Arc<FleetLink>,
    target: Arc<T>,
    mut state: FleetState,
    mut stop: watch::Receiver<bool>,
) {
    let mut delays = backoff();
    loop {
        let mut reached = false;
        let result = session(&link, &*target, &mut state, &mut stop, &mut reached).await;
        let e = match result {
            Ok(()) => {
                link.disconnected(&FleetError::StreamEnded { what: "session" });
                return;
            }
            Err(e) => e,
        };
        link.disconnected(&e);
        if reached {
            delays = backoff();
        }
        let delay = delays.next().unwrap_or(Duration::from_secs(10));
        tracing::warn!(error = %e, retry_in = ?delay, "fleet: no session with etcd; serving the last fleet state applied");
        tokio::select! {
            () = stopped(&mut stop) => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// One session, from connect to its first failure (`Err`) or to `stop` (`Ok`). `reached`
/// turns true once the session is fully up (the backoff then starts over).
async fn session<T: FleetTarget>(
    link: &FleetLink,
    target: &T,
    state: &mut FleetState,
    stop: &mut watch::Receiver<bool>,
    reached: &mut bool,
) -> Result<(), FleetError> {
    let keys = &link.keys;
    let mut client = connect(&link.section.etcd).await?;
    let resp = bounded(
        "reading the fleet state",
        REQUEST_TIMEOUT,
        client.get(keys.desired(), Some(GetOptions::new().with_prefix())),
    )
    .await?;
    let revision = resp.header().map_or(0, |h| h.revision());
    let mut fresh = FleetState {
        revision,
        ..FleetState::default()
    };
    for kv in resp.kvs() {
        fresh.set(keys, &String::from_utf8_lossy(kv.key()), Some(kv.value()));
    }
    tracing::info!(
        revision,
        services = fresh.services.len(),
        drains = fresh.drain_count(),
        "fleet: synced with etcd"
    );
    *state = fresh;
    target.apply(state.clone()).await;
    link.applied(revision);

    let lease = bounded(
        "granting the host lease",
        REQUEST_TIMEOUT,
        client.lease_grant(LEASE_TTL_SECS, None),
    )
    .await?
    .id();
    let (mut keeper, mut kept) = bounded(
        "keeping the host lease alive",
        REQUEST_TIMEOUT,
        client.lease_keep_alive(lease),
    )
    .await?;
    let options = WatchOptions::new()
        .with_prefix()
        .with_start_revision(revision + 1);
    let mut watch = bounded(
        "watching the fleet state",
        REQUEST_TIMEOUT,
        client.watch(keys.desired(), Some(options)),
    )
    .await?;
    link.connected(client.clone());
    *reached = true;

    let mut last_view: Option<HostView> = None;
    let mut views = tokio::time::interval(VIEW_EVERY);
    let keep_every = Duration::from_secs(LEASE_TTL_SECS as u64 / 3);
    let mut keep = tokio::time::interval(keep_every);
    let mut kept_at = Instant::now();
    loop {
        tokio::select! {
            () = stopped(stop) => {
                // The host leaves the matrix now rather than when its lease runs out.
                if let Err(e) = bounded("revoking the host lease", Duration::from_secs(1), client.lease_revoke(lease)).await {
                    tracing::debug!(error = %e, "fleet: the lease will expire by itself");
                }
                return Ok(());
            }
            message = watch.message() => {
                let resp = match message {
                    Ok(Some(resp)) => resp,
                    Ok(None) => return Err(FleetError::StreamEnded { what: "watch" }),
                    Err(source) => return Err(FleetError::Etcd { op: "watching", source }),
                };
                if resp.canceled() || resp.compact_revision() > 0 {
                    return Err(FleetError::WatchCancelled {
                        revision: resp.compact_revision(),
                        reason: resp.cancel_reason().to_owned(),
                    });
                }
                if resp.events().is_empty() {
                    continue;
                }
                let mut revision = state.revision;
                for event in resp.events() {
                    let Some(kv) = event.kv() else { continue };
                    revision = revision.max(kv.mod_revision());
                    let key = String::from_utf8_lossy(kv.key());
                    match event.event_type() {
                        EventType::Put => state.set(keys, &key, Some(kv.value())),
                        EventType::Delete => state.set(keys, &key, None),
                    }
                }
                state.revision = revision;
                target.apply(state.clone()).await;
                link.applied(revision);
            }
            _ = keep.tick() => {
                if kept_at.elapsed() > Duration::from_secs(LEASE_TTL_SECS as u64) {
                    return Err(FleetError::LeaseExpired);
                }
                bounded("keeping the host lease alive", REQUEST_TIMEOUT, keeper.keep_alive()).await?;
            }
            answer = kept.message() => match answer {
                Ok(Some(r)) if r.ttl() > 0 => kept_at = Instant::now(),
                Ok(Some(_)) => return Err(FleetError::LeaseExpired),
                Ok(None) => return Err(FleetError::StreamEnded { what: "lease keep-alive" }),
                Err(source) => return Err(FleetError::Etcd { op: "keeping the host lease alive", source }),
            },
            _ = views.tick() => {
                let Some(status) = target.status().await else { continue };
                let mut v = HostView::from_status(link.host(), state.revision, &status);
                if last_view.as_ref().is_some_and(|l| l.same_as(&v)) {
                    continue;
                }
                v.last_change_unix = now_unix();
                let value = serde_json::to_vec(&v).expect("a host view serializes");
                let value_len = value.len();
                let put = client.put(keys.host(link.host()), value, Some(PutOptions::new().with_lease(lease)));
                match bounded("publishing the host view", REQUEST_TIMEOUT, put).await {
                    Ok(_) => last_view = Some(v),
                    // No etcd: the session is over.
                    Err(e) if e.is_unreachable() => return Err(e),
                    // etcd refused this view (too large for its request limit, or no
                    // permission on hosts/): the matrix lacks this host, but drains and
                    // services keep flowing. Said once per different view, not every second.
                    Err(e) => {
                        tracing::warn!(error = %e, bytes = value_len, "fleet: etcd refused this host's view; status --fleet will not show it");
                        last_view = Some(v);
                    }
                }
            }
        }
    }
}
