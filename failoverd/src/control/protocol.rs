//! The control API's messages (JSON over HTTP/1.1 on a Unix socket) and the handler the daemon implements.
//!
//! These types are the stable contract of `failoverd status --output json`
//! and of docs/control-api.md: fields are only ever added.

use std::future::Future;

use serde::{Deserialize, Serialize};

/// `GET /v1/status`: every service and backend.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// failoverd's version.
    pub version: String,
    /// Services in name order.
    pub services: Vec<ServiceReport>,
    /// The daemon's link to its fleet; absent without a `fleet` section.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<FleetLinkReport>,
}

/// A daemon's link to its fleet, in a [`StatusReport`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetLinkReport {
    /// This host's name in the fleet.
    pub host: String,
    /// Whether its etcd session works (if not, it serves the last fleet state applied).
    pub connected: bool,
    /// The fleet revision applied here.
    pub revision: i64,
    /// The fleet services running here, in name order.
    pub services: Vec<String>,
}

/// One service in a [`StatusReport`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceReport {
    /// Service name.
    pub name: String,
    /// The VIP, `ip:port`.
    pub vip: String,
    /// `tcp` or `udp`.
    pub protocol: String,
    /// Priority that takes new connections; `null` when connects are refused or before the first verdicts.
    pub active_priority: Option<u8>,
    /// Whether every backend had its first verdict (before that the pinned table is left alone).
    pub ready: bool,
    /// Whether nothing is live and `on_all_down: panic` spreads connects over every backend
    /// of the lowest priority, whatever their health.
    #[serde(default)]
    pub panic: bool,
    /// While more than one backend answers primary (`role: primary`): their names. The VIP
    /// sends to one of them only (see each backend's `in_table`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub split_brain: Vec<String>,
    /// Set when the kernel does not hold the table the daemon decided for this VIP: the
    /// write failed (with its errno) or the datapath was taken apart. `ready` is then false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datapath_error: Option<String>,
    /// `reject` or `panic`.
    pub on_all_down: String,
    /// `auto` or `manual`.
    pub failback: String,
    /// Backends in config order (a hostname's addresses in address order).
    pub backends: Vec<BackendReport>,
}

/// One backend in a [`ServiceReport`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackendReport {
    /// Name (`name@ip:port` for each address of a hostname backend).
    pub name: String,
    /// Traffic address, `ip:port`.
    pub address: String,
    /// `unknown`, `healthy`, `unhealthy`, `ejected`, `drained`, or `unresolved` (a hostname
    /// that resolves to no address of the VIP's family).
    pub state: String,
    /// Weight within its priority group.
    pub weight: u32,
    /// Priority (0 is preferred).
    pub priority: u8,
    /// Whether new connections may go to it right now (it is in the VIP's table).
    pub in_table: bool,
    /// The last probe, if any.
    pub last_probe: Option<ProbeReport>,
    /// Seconds since its state last changed.
    pub in_state_seconds: f64,
    /// Times its breaker opened.
    pub ejections: u32,
    /// Connects to it the kernel translated (per-CPU counters, summed).
    pub kernel_connects: u64,
    /// Set while it is drained.
    pub drain: Option<DrainInfo>,
    /// What the kernel has told about its connects (passive health); absent while it has
    /// told nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passive: Option<PassiveReport>,
    /// What became of the connects the kernel translated to it (per-CPU counters, summed);
    /// absent without pinned counters (a test's in-memory datapath).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_outcomes: Option<KernelOutcomes>,
}

/// The kernel's counts of what became of a backend's translated connects.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelOutcomes {
    /// TCP connects that completed the handshake.
    pub established: u64,
    /// TCP connects refused or reset before the handshake completed.
    pub connect_failures: u64,
    /// SYN retransmission timeouts (no answer at all).
    pub syn_timeouts: u64,
    /// Connects sent elsewhere while it was marked suspect.
    pub diverted: u64,
}

/// A backend's kernel-observed connect failures, in a [`BackendReport`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PassiveReport {
    /// Failed connects in a row as of the kernel's last report (an established connect
    /// resets the kernel's count; the next report says so).
    pub consecutive_failures: u32,
    /// The last failed connect: `refused` or `syn_timeout`.
    pub last_failure: Option<String>,
    /// Seconds since the last failed connect.
    pub last_failure_seconds_ago: Option<f64>,
    /// Times kernel evidence ejected it.
    pub ejections: u32,
    /// Whether it is out now because of kernel evidence (until its breaker closes).
    pub ejected: bool,
}

/// What the last probe of a backend saw.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProbeReport {
    /// Passed or failed.
    pub ok: bool,
    /// `connected`, `HTTP 200`, or the failure (`refused: ...`, `timeout: ...`).
    pub detail: String,
    /// How long it took, in milliseconds.
    pub latency_ms: f64,
}

/// Who drained a backend, when and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainInfo {
    /// The user who asked (from the socket peer's credentials).
    pub by: String,
    /// When, in seconds since the Unix epoch.
    pub at_unix: u64,
    /// The operator's reason, if given.
    pub reason: Option<String>,
    /// A fleet drain (`drain --fleet`): `by` is `user@host`, and it is undone with
    /// `undrain --fleet` only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fleet: bool,
}

/// `POST /v1/drain`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainRequest {
    /// Service name.
    pub service: String,
    /// Backend name.
    pub backend: String,
    /// Why (shown by status).
    #[serde(default)]
    pub reason: Option<String>,
    /// Allow draining the last live backend of the VIP.
    #[serde(default)]
    pub force: bool,
    /// Also abort every socket the datapath translated to the backend, at once (after the
    /// table write that took it out). Sockets that named the backend's own address are
    /// never touched.
    #[serde(default)]
    pub terminate: bool,
    /// Drain on every host of the fleet (written to etcd through this daemon).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fleet: bool,
}

/// The answer to `POST /v1/drain` with `terminate` (a plain drain answers 204, no body).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainReport {
    /// What `terminate` aborted; `null` when it was not asked for.
    #[serde(default)]
    pub terminated: Option<TerminatedReport>,
}

/// Sockets aborted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TerminatedReport {
    /// TCP sockets.
    pub tcp: u32,
    /// Connected UDP sockets.
    pub udp: u32,
}

/// `POST /v1/undrain`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UndrainRequest {
    /// Service name.
    pub service: String,
    /// Backend name.
    pub backend: String,
    /// Undo a fleet drain on every host (deleted from etcd through this daemon).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fleet: bool,
}

/// `POST /v1/failback`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailbackRequest {
    /// Service name.
    pub service: String,
}

/// `POST /v1/reload`: what a successful reload changed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadReport {
    /// Services that were added.
    pub added: Vec<String>,
    /// Services that were removed (their VIPs left the datapath).
    pub removed: Vec<String>,
    /// Services whose config changed (restarted with fresh health state, drains kept).
    pub changed: Vec<String>,
    /// Services left exactly as they were.
    pub unchanged: Vec<String>,
}

/// `GET /v1/explain?vip=ip:port[&protocol=tcp|udp]`: where a connect to the VIP goes now.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExplainReport {
    /// The VIP asked about.
    pub vip: String,
    /// The service it belongs to.
    pub service: String,
    /// Priority that takes new connections, if any.
    pub active_priority: Option<u8>,
    /// True when connects are refused with ECONNREFUSED.
    pub refused: bool,
    /// True in `on_all_down: panic`.
    pub panic: bool,
    /// Set when the kernel does not hold the table the daemon decided: then connects go
    /// where the kernel's table says, not where this report says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datapath_error: Option<String>,
    /// Backends a connect reaches, with their share of new connections.
    pub reachable: Vec<ReachableBackend>,
    /// Every other backend, with the reason it is out.
    pub out: Vec<OutBackend>,
}

/// A backend a connect to the VIP can reach.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReachableBackend {
    /// Name.
    pub name: String,
    /// Address.
    pub address: String,
    /// Share of new connections, in percent (slots / 256).
    pub share_percent: f64,
}

/// A backend a connect to the VIP does not reach.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutBackend {
    /// Name.
    pub name: String,
    /// Address.
    pub address: String,
    /// Why: `drained by alice: maintenance`, `unhealthy: refused: ...`, `ejected by the breaker (3 ejections)`, `ejected by passive health: the kernel saw 3 connects in a row fail (refused) (first ejection)`, `weight 0`, `standby: priority 1 while priority 0 takes connections`, `unknown: no verdict yet`.
    pub reason: String,
}

/// One thing that happened: a backend changed state, a VIP failed over, an
/// operator drained, a config was reloaded. Also logged as one line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    /// Increasing number; ask for events after the last one you saw.
    pub seq: u64,
    /// When, in milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
    /// `backend` (health, breaker or passive health), `failover`, `drain`, `reload`, `split_brain`, `terminate` (sockets aborted).
    pub kind: String,
    /// The service (empty for a reload).
    pub service: String,
    /// The backend, for backend and drain events.
    pub backend: Option<String>,
    /// The state or priority before, when it has one.
    pub from: Option<String>,
    /// The state or priority after.
    pub to: Option<String>,
    /// Evidence: the probe error, the status code, the reason, who asked.
    pub detail: String,
}

/// `GET /v1/events?after=N[&wait=true]`: the events after `N`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventsReport {
    /// Events with `seq > after`, oldest first (the daemon keeps the last 1,024).
    pub events: Vec<EventRecord>,
    /// Pass this as `after` next time.
    pub next: u64,
}

/// `GET /v1/fleet`: every host's view side by side (fleet mode only).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetReport {
    /// Every host with a live `hosts/<host>` key, in name order.
    pub hosts: Vec<FleetHostRow>,
    /// Every service any host runs, in name order.
    pub services: Vec<FleetServiceRow>,
}

/// One host in a [`FleetReport`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetHostRow {
    /// `fleet.host`.
    pub host: String,
    /// failoverd's version there.
    pub version: String,
    /// The fleet revision it last applied.
    pub revision: i64,
    /// Services it runs (local and fleet).
    pub services: usize,
    /// When its view last changed, in seconds since the Unix epoch.
    pub last_change_unix: u64,
}

/// One service in a [`FleetReport`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetServiceRow {
    /// Service name.
    pub name: String,
    /// Hosts that run it.
    pub hosts: usize,
    /// Its backends, in name order.
    pub backends: Vec<FleetBackendRow>,
}

/// One backend in a [`FleetServiceRow`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetBackendRow {
    /// Backend name.
    pub name: String,
    /// Hosts that see it healthy.
    pub up: usize,
    /// Hosts that run its service.
    pub of: usize,
    /// The hosts that do not see it healthy, with what they see.
    pub not_up: Vec<HostState>,
}

/// A host and the state it sees a backend in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostState {
    /// The host.
    pub host: String,
    /// `unhealthy`, `drained`, `unknown`…
    pub state: String,
}

/// The body of every error response (4xx/5xx).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong, for a human.
    pub error: String,
}

/// Why a control request failed; the server maps each kind to an HTTP status.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// The request named something that does not exist (404).
    #[error("{0}")]
    NotFound(String),
    /// The request is malformed or not allowed as asked (400), e.g. draining the last live backend without force.
    #[error("{0}")]
    Invalid(String),
    /// The new config is invalid; nothing changed (422). The message is `file:line:column: key: message`.
    #[error("{0}")]
    BadConfig(String),
    /// The daemon could not do it (500), e.g. persisting a drain failed; nothing changed.
    #[error("{0}")]
    Failed(String),
}

/// Who sent a request, from the Unix socket's peer credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// User name (or `uid N` when it has none).
    pub user: String,
    /// Process id of the client.
    pub pid: i32,
}

/// What the daemon does for each request. The server decodes, calls, encodes.
pub trait ControlHandler: Send + Sync + 'static {
    /// Every service and backend.
    fn status(&self) -> impl Future<Output = Result<StatusReport, ControlError>> + Send;
    /// Takes a backend out of new connections; persisted before it returns. With
    /// `terminate`, also aborts its translated sockets and reports how many.
    fn drain(
        &self,
        caller: Caller,
        request: DrainRequest,
    ) -> impl Future<Output = Result<DrainReport, ControlError>> + Send;
    /// Puts a drained backend back; persisted before it returns.
    fn undrain(
        &self,
        caller: Caller,
        request: UndrainRequest,
    ) -> impl Future<Output = Result<(), ControlError>> + Send;
    /// Sends a `failback: manual` service back to its best live priority.
    fn failback(
        &self,
        caller: Caller,
        request: FailbackRequest,
    ) -> impl Future<Output = Result<(), ControlError>> + Send;
    /// Re-reads the config file and applies what changed; an invalid config changes nothing.
    fn reload(
        &self,
        caller: Caller,
    ) -> impl Future<Output = Result<ReloadReport, ControlError>> + Send;
    /// Where a connect to `vip` (`ip:port`) goes now.
    fn explain(
        &self,
        vip: String,
        protocol: Option<String>,
    ) -> impl Future<Output = Result<ExplainReport, ControlError>> + Send;
    /// Events after `after`; with `wait`, holds the request (a few seconds at most) until there is one.
    fn events(
        &self,
        after: u64,
        wait: bool,
    ) -> impl Future<Output = Result<EventsReport, ControlError>> + Send;
    /// Every fleet host's view side by side; refused by a daemon without `fleet`.
    fn fleet(&self) -> impl Future<Output = Result<FleetReport, ControlError>> + Send {
        async {
            Err(ControlError::Invalid(
                "this daemon is not in fleet mode (its config has no `fleet` section)".into(),
            ))
        }
    }
}
