//! One service's task: the async shell around its decision core.
//!
//! It owns the service's channel, its probe subscriptions and its gauges; it feeds every
//! input to the [`ServiceState`], hands every transition to the [`Observer`] and every new
//! table to the writer. Nothing here decides anything.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use tokio::{
    sync::{mpsc, oneshot, watch, Notify},
    time::Instant,
};

use super::{
    drains::DrainStoreError,
    inbox,
    observer::{Gauges, Observer},
    prober::{ProbeHub, ProbeTarget, Published, Subscription},
    readiness::Readiness,
};
use crate::{
    datapath::{ConnectFailure, DatapathError, IdAllocator, IdsExhausted, Terminated, VipTable},
    decision::{
        CounterIds, Decision, Drain, Evidence, Explanation, Input, Keyed, Refused, ServiceState,
        ServiceStatus, SortedMap, Transition,
    },
    health::Probe,
    reconcile::{KernelView, WriterCommand, WriterMessage},
};

/// Makes a drain change durable. Runs on a blocking thread after the change was checked and
/// before it is applied, so a failure changes nothing.
pub type Persist = Box<dyn FnOnce() -> Result<(), DrainStoreError> + Send>;

/// What one termination the core asked for did, once the writer has done it.
pub type Aborted = Result<Terminated, DatapathError>;

/// A drain or an undrain.
#[derive(Clone, Debug)]
pub enum DrainChange {
    /// Hold the backend out of new connections.
    Drain {
        /// Who, when, why.
        drain: Drain,
        /// Allow draining the last live backend.
        force: bool,
        /// Also abort every socket translated to it, at once.
        terminate: bool,
    },
    /// Put it back.
    Undrain,
}

/// Why a drain change did not happen.
#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    /// The decision core refused it.
    #[error(transparent)]
    Refused(#[from] Refused),
    /// It could not be recorded in `state_dir`.
    #[error("could not record the drain, nothing changed")]
    Persist(#[source] DrainStoreError),
    /// No service has that name.
    #[error("no service named `{name}`")]
    UnknownService {
        /// The name asked for.
        name: String,
    },
    /// Recorded, but the datapath write failed; the writer retries it.
    #[error("the drain is recorded but the datapath write failed; it is being retried (see the daemon's log)")]
    NotWritten,
    /// Drained (recorded and written), but aborting its sockets failed.
    #[error("the backend is drained, but aborting its open sockets failed")]
    NotTerminated(#[source] DatapathError),
    /// The daemon is stopping.
    #[error("the daemon is stopping")]
    Stopped,
}

/// What a service task reacts to, besides probe results (which it reads from its targets'
/// feeds when its bell rings: see [`super::prober`]).
pub enum Message {
    /// A backend entry now resolves to these addresses.
    Addrs {
        /// Index of the backend in the service's config.
        config_index: usize,
        /// Its addresses, of the VIP's family.
        addrs: Vec<SocketAddr>,
    },
    /// Operator: drain or undrain; answered once the table was handed to the writer.
    /// Boxed: it is rare and large, and every slot of every service's channel is as large
    /// as the largest message.
    Drain(Box<DrainMessage>),
    /// The kernel saw a translated connect to one of the service's backends fail.
    ConnectFailed(ConnectFailure),
    /// Operator: go back to the best live priority now (`failback: manual`).
    Failback {
        /// Answered once decided.
        reply: oneshot::Sender<()>,
    },
    /// A snapshot for status.
    Status {
        /// Answered with the snapshot.
        reply: oneshot::Sender<ServiceStatus>,
    },
    /// Where a connect to the VIP goes now.
    Explain {
        /// Answered with the explanation.
        reply: oneshot::Sender<Explanation>,
    },
    /// Stop (a reload removed or changed the service); answered with the table it last
    /// decided or adopted, which a successor adopts.
    Stop {
        /// Answered with the table.
        reply: oneshot::Sender<Option<Arc<VipTable>>>,
    },
}

/// A drain change on its way to a service task.
pub struct DrainMessage {
    /// Backend name.
    pub backend: String,
    /// What to do.
    pub change: DrainChange,
    /// Records it before it is applied.
    pub persist: Persist,
    /// The outcome: with `terminate`, where what was aborted will be told (after the table
    /// write that took the backend out); awaited by the asker, not by the service task.
    pub reply: oneshot::Sender<Result<Vec<oneshot::Receiver<Aborted>>, DrainError>>,
}

/// What every service task shares.
pub struct Shared {
    /// Where tables go.
    pub writer: mpsc::Sender<WriterMessage>,
    /// The probe loops, shared across services.
    pub probes: ProbeHub,
    /// Services running, and how many are ready.
    pub readiness: Readiness,
    /// Counter ids.
    pub ids: Mutex<IdAllocator>,
    /// Metrics, events and logs of transitions.
    pub observer: Observer,
    /// What the writer knows of the kernel: VIPs it cannot make hold their table.
    pub kernel: KernelView,
    /// Backend ids to the service tasks that own them, for the kernel's connect failures.
    pub routes: super::passive::Routes,
}

impl Shared {
    /// Has the writer zero a freshly handed-out id's kernel counters (a backend that is never
    /// live is never installed, yet its counters are read).
    pub fn reset_counters(&self, id: u32) {
        if self
            .writer
            .try_send(WriterMessage::ResetCounters(id))
            .is_err()
        {
            // Full (or stopping): the writer also zeroes the id when it first installs it.
            tracing::debug!(id, "counter reset not queued");
        }
    }
}

/// The shared allocator, locked only for the moment an id is taken or given back; every id
/// handed out has its kernel counters zeroed.
struct LockedIds<'a>(&'a Shared);

impl CounterIds for LockedIds<'_> {
    fn allocate(&mut self) -> Result<u32, IdsExhausted> {
        let id = self
            .0
            .ids
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .allocate()?;
        self.0.reset_counters(id);
        Ok(id)
    }

    fn release(&mut self, id: u32) {
        self.0
            .ids
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .release(id);
    }
}

/// A backend's probe subscription, and with per-backend series what records its probes.
struct Probing {
    /// The backend's counter id: unique, never reused within a service while it lives, and
    /// 4 bytes where its [`crate::decision::BackendKey`] is 40.
    id: u32,
    subscription: Subscription,
    /// Boxed and only with `metrics.per_backend`: 40 bytes in each of tens of thousands of
    /// backends otherwise, for series that are not exported.
    series: Option<Box<ProbeSeries>>,
}

impl Keyed for Probing {
    type Key = u32;

    fn key(&self) -> &u32 {
        &self.id
    }
}

/// What records one backend's probes into its per-backend series.
struct ProbeSeries {
    /// Its latency histogram, looked up once.
    latency: metrics::Histogram,
    /// The backend's name, for its probe-failure series without a search per result.
    name: Arc<str>,
}

/// The shell of one service.
pub struct ServiceTask {
    state: ServiceState,
    probe: Arc<Probe>,
    /// One per backend of the core, by backend id.
    probing: SortedMap<Probing>,
    gauges: Gauges,
    /// Addresses of IP backends, fed to the core when the task starts.
    initial: Vec<(usize, Vec<SocketAddr>)>,
    ready: bool,
    /// Rung by the feeds of this service's probe targets on every result.
    bell: Arc<Notify>,
    /// Its own inbox's sender: what the passive-health routes hand its failures to.
    tx: inbox::Sender,
    /// The probe lag last fed to the core, in [`LAG_STEP`]s.
    fed_lag: Duration,
    shared: Arc<Shared>,
}

/// The probe lag is fed to the core in steps of this: a change smaller than it moves no
/// first-verdict deadline that matters, and feeding every millisecond of jitter would be an
/// input per wake.
const LAG_STEP: Duration = Duration::from_millis(10);

/// Whether a service task goes on after a message.
enum Handled {
    /// Next message, or back to waiting.
    Go,
    /// A `Stop` was answered: the task ends.
    Stop,
}

impl Drop for ServiceTask {
    fn drop(&mut self) {
        self.shared.readiness.service_ended(self.ready);
        let routed: Vec<u32> = self.probing.keys().copied().collect();
        self.shared.routes.set(&self.tx, &routed, &[]);
    }
}

impl ServiceTask {
    /// A task for `state`; `initial` are the addresses of its IP backends, `bell` its
    /// wake-up, rung by its inbox and its probe targets' feeds.
    pub fn new(
        state: ServiceState,
        initial: Vec<(usize, Vec<SocketAddr>)>,
        bell: Arc<Notify>,
        tx: inbox::Sender,
        shared: Arc<Shared>,
    ) -> Self {
        let config = state.config();
        let mut priorities: Vec<u8> = config.backends.iter().map(|b| b.priority).collect();
        priorities.sort_unstable();
        priorities.dedup();
        crate::metrics::zero_service(&config.name, &priorities);
        shared.readiness.service_started();
        ServiceTask {
            probe: shared
                .probes
                .shared_probe(Probe::for_config(&config.health)),
            state,
            probing: SortedMap::new(),
            gauges: Gauges::default(),
            initial,
            ready: false,
            bell,
            tx,
            fed_lag: Duration::ZERO,
            shared,
        }
    }

    /// Runs until `stop` turns true (or its sender is gone), or a `Stop` message.
    ///
    /// Every piece of work is awaited boxed ([`Box::pin`]): a task's future is as large as
    /// the largest state it may be suspended in, and the work's nested futures (an input
    /// handed to the writer, a drain written to disk) are over a kilobyte. Boxed, they take
    /// memory only while they run: one allocation per service per probe round (10,000 a
    /// second at 10,000 services, nothing beside a probe), while an idle service, nearly
    /// every service nearly all the time, holds just its state and its wake-ups.
    ///
    /// It waits on its bell and its next deadline only: the daemon's stop switch is looked at
    /// on every wake, and whoever turns it rings every service's bell (a third branch of the
    /// wait would be a future of ~100 bytes more in every service).
    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn would hold the task twice (see the comment in the body)"
    )]
    pub fn run(
        mut self,
        rx: inbox::Receiver,
        stop: watch::Receiver<bool>,
    ) -> impl std::future::Future<Output = ()> + Send {
        // An `async move` block over the arguments, not an `async fn`: an `async fn` keeps its
        // arguments in its future and then moves them into the body's locals, which rustc
        // does not overlap, so the 500-byte task was in every service's future twice (1,192
        // bytes in all). The block's captures are its locals: once.
        async move {
            for (config_index, addrs) in std::mem::take(&mut self.initial) {
                Box::pin(self.input(Input::Addrs {
                    config_index,
                    addrs,
                }))
                .await
                .ok();
            }
            let bell = Arc::clone(&self.bell);
            loop {
                if *stop.borrow() {
                    return;
                }
                let deadline = self.state.next_deadline();
                // Decide inside select!, act after it: the branch futures must be gone before
                // anything else is awaited.
                let rung = tokio::select! {
                    biased;
                    // A ring while busy was kept as a permit: nothing waits for another ring.
                    _ = bell.notified() => true,
                    _ = sleep_until_opt(deadline) => false,
                };
                if !rung {
                    Box::pin(self.on_tick()).await;
                    continue;
                }
                Box::pin(self.on_probes()).await;
                while let Some(message) = rx.try_recv() {
                    if let Handled::Stop = Box::pin(self.on_message(message)).await {
                        return;
                    }
                }
            }
        }
    }

    /// A deadline of the core's is due.
    async fn on_tick(&mut self) {
        // A deadline that the measured lag stretches is not due yet.
        self.follow_lag().await;
        self.input(Input::Tick).await.ok();
    }

    /// Acts on one operator or DNS message.
    async fn on_message(&mut self, message: Message) -> Handled {
        match message {
            Message::Stop { reply } => {
                reply.send(self.state.shared_table()).ok();
                return Handled::Stop;
            }
            Message::Addrs {
                config_index,
                addrs,
            } => {
                self.input(Input::Addrs {
                    config_index,
                    addrs,
                })
                .await
                .ok();
            }
            Message::Failback { reply } => {
                self.input(Input::Failback).await.ok();
                reply.send(()).ok();
            }
            Message::Status { reply } => {
                reply.send(self.state.status(Instant::now())).ok();
            }
            Message::Explain { reply } => {
                reply.send(self.state.explain()).ok();
            }
            Message::ConnectFailed(f) => {
                self.input(Input::ConnectFailed {
                    backend_id: f.backend_id,
                    kind: f.kind,
                    consecutive: f.consecutive,
                    suspect: f.suspect,
                })
                .await
                .ok();
            }
            Message::Drain(drain) => {
                let DrainMessage {
                    backend,
                    change,
                    persist,
                    reply,
                } = *drain;
                let result = self.drain(backend, change, persist).await;
                reply.send(result).ok();
            }
        }
        Handled::Go
    }

    /// Takes every result the service's targets published since it last looked, in order
    /// per target, then follows the probe lag.
    async fn on_probes(&mut self) {
        let mut batch: Vec<(u32, Published)> = Vec::new();
        let mut read = Vec::new();
        for (&id, p) in self.probing.iter() {
            let lost = p.subscription.read(&mut read);
            if lost > 0 {
                tracing::error!(service = %self.state.config().name, backend = %p.subscription.target().addr, lost, "probe results were lost: this service task stalled for over a thousand probe intervals");
            }
            batch.extend(read.drain(..).map(|r| (id, r)));
        }
        for (id, published) in batch {
            self.on_probe(id, published).await;
        }
        self.follow_lag().await;
    }

    async fn on_probe(&mut self, id: u32, published: Published) {
        // A handful of backends: a scan, not an index kept per service.
        let Some(key) = self.state.backends().find(|b| b.id == id).map(|b| b.key) else {
            return; // Removed (DNS) while its results waited.
        };
        if let Some(series) = self.probing.get(&id).and_then(|p| p.series.as_deref()) {
            self.shared.observer.probe(
                &self.state.config().name,
                &series.name,
                &series.latency,
                published.started.elapsed().as_secs_f64(),
                &Evidence(Arc::clone(&published.result)),
            );
        }
        self.input(Input::Probe {
            key,
            started: published.started,
            result: published.result,
        })
        .await
        .ok();
    }

    /// Tells the core how late probes run now, when that moved by a [`LAG_STEP`] or more.
    async fn follow_lag(&mut self) {
        let lag = self.shared.probes.lag();
        let step = LAG_STEP.as_nanos();
        let lag =
            Duration::from_nanos(u64::try_from(lag.as_nanos() / step * step).unwrap_or(u64::MAX));
        if lag != self.fed_lag {
            self.fed_lag = lag;
            self.input(Input::ProbeLag { lag }).await.ok();
        }
    }

    /// Checks, records, then applies a drain change; with `terminate`, answers where what
    /// was aborted will be told.
    async fn drain(
        &mut self,
        backend: String,
        change: DrainChange,
        persist: Persist,
    ) -> Result<Vec<oneshot::Receiver<Aborted>>, DrainError> {
        match &change {
            DrainChange::Drain { force, .. } => self.state.check_drain(&backend, *force)?,
            DrainChange::Undrain => self.state.check_undrain(&backend)?,
        }
        // fsync and rename block: not on an async worker.
        tokio::task::spawn_blocking(persist)
            .await
            .map_err(|_| DrainError::Stopped)?
            .map_err(DrainError::Persist)?;
        let input = match change {
            DrainChange::Drain {
                drain,
                force,
                terminate,
            } => Input::Drain {
                backend,
                drain,
                force,
                terminate,
            },
            DrainChange::Undrain => Input::Undrain { backend },
        };
        Ok(self.input(input).await?)
    }

    /// Feeds one input to the core and acts on its decision; returns, per termination it
    /// asked for, what the datapath aborted (dropping them changes nothing).
    async fn input(&mut self, input: Input) -> Result<Vec<oneshot::Receiver<Aborted>>, Refused> {
        let addresses_may_change = matches!(input, Input::Addrs { .. });
        let decision = self
            .state
            .handle(input, Instant::now(), &mut LockedIds(&self.shared))?;
        if addresses_may_change
            || decision
                .transitions
                .iter()
                .any(|t| matches!(t, Transition::AddressRemoved { .. }))
        {
            self.sync_probing();
        }
        Ok(self.act(decision).await)
    }

    /// Records the transitions, hands a new table to the writer, then what else the
    /// decision asks of the datapath (in that order: the writer does them in order).
    async fn act(&mut self, decision: Decision) -> Vec<oneshot::Receiver<Aborted>> {
        if !self.ready && self.state.is_settled(Instant::now()) {
            self.ready = true;
            self.shared.readiness.service_ready();
        }
        if decision.is_empty() {
            return Vec::new();
        }
        let (name, vip) = (&self.state.config().name, self.state.config().vip());
        for t in &decision.transitions {
            self.shared.observer.record(name, vip, t);
        }
        self.gauges.publish(&self.state);
        if let Some(table) = decision.table {
            if self
                .shared
                .writer
                .send(WriterCommand::Apply(table).into())
                .await
                .is_err()
            {
                tracing::debug!(service = %name, "writer gone (shutting down)");
            }
        }
        for id in decision.clear_suspect {
            if self
                .shared
                .writer
                .send(WriterMessage::ClearSuspect(id))
                .await
                .is_err()
            {
                tracing::debug!(service = %name, "writer gone (shutting down)");
            }
        }
        let mut aborted = Vec::with_capacity(decision.terminate.len());
        for termination in decision.terminate {
            let (reply, answer) = oneshot::channel();
            let message = WriterMessage::Terminate {
                backend_ids: vec![termination.id],
                reply,
            };
            if self.shared.writer.send(message).await.is_err() {
                tracing::debug!(service = %name, "writer gone (shutting down)");
                continue;
            }
            // Recorded off this task: the service goes on deciding while the kernel walks
            // its sockets.
            let (done, result) = oneshot::channel();
            let (shared, service) = (Arc::clone(&self.shared), name.clone());
            tokio::spawn(async move {
                let Ok(outcome) = answer.await else { return };
                shared.observer.terminated(&service, &termination, &outcome);
                // The asker (a drain --terminate) may not wait.
                done.send(outcome).ok();
            });
            aborted.push(result);
        }
        aborted
    }

    /// Subscribes new backends to their probe loops and unsubscribes removed ones, and
    /// routes the kernel's connect failures for their ids here.
    fn sync_probing(&mut self) {
        // The ids routed here are those of the last sync, which are the subscriptions' keys.
        let routed: Vec<u32> = self.probing.keys().copied().collect();
        let ids: Vec<u32> = self.state.backends().map(|b| b.id).collect();
        self.shared.routes.set(&self.tx, &routed, &ids);
        let config = self.state.config();
        self.probing
            .retain(|id, _| self.state.backends().any(|b| b.id == *id));
        for b in self.state.backends() {
            if self.probing.contains_key(&b.id) {
                continue;
            }
            crate::metrics::zero_backend(&config.name, &b.name);
            let subscription = self.shared.probes.subscribe(
                ProbeTarget {
                    addr: b.probe_addr(&config.health),
                    probe: Arc::clone(&self.probe),
                    interval: config.health.interval,
                    timeout: config.health.timeout,
                },
                Arc::clone(&self.bell),
            );
            self.probing.insert(Probing {
                id: b.id,
                subscription,
                series: crate::metrics::per_backend().then(|| {
                    Box::new(ProbeSeries {
                        latency: crate::metrics::probe_latency(&config.name, &b.name),
                        name: b.name.clone(),
                    })
                }),
            });
        }
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        // Boxed: a timer in every service's future would be memory even in the many that
        // have no deadline (a steady service has none).
        Some(d) => Box::pin(tokio::time::sleep_until(d)).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    /// Every slot of every service's channel is as large as the largest message: at 10,000
    /// services a few dozen bytes more per message are megabytes.
    #[test]
    fn messages_stay_small() {
        assert!(std::mem::size_of::<super::Message>() <= 72);
    }
}
