//! The configuration as the daemon uses it: every default filled in, every rule checked.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    str::FromStr,
    sync::Arc,
    time::Duration,
};

use crate::{
    datapath::{CgroupSpec, DatapathConfig, Protocol, Vip},
    health::{Expect, PgTls, RoleWanted},
};

use super::{BackendAddress, StatusMatch};

/// Default of `control.socket`: `/run/failoverd/control.sock`.
// These belong with the others in `crate::dirs`; they live here until that file
// grows them, so that nothing else names the paths.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/failoverd/control.sock";
/// Default of `control.state_dir`: `/var/lib/failoverd`.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/failoverd";
/// Default of `metrics.listen`: `127.0.0.1:9477`.
pub const DEFAULT_METRICS_LISTEN: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)), 9477);
/// Default backend weight: 100.
pub const DEFAULT_WEIGHT: u32 = 100;
/// Largest backend weight: 1000.
pub const MAX_WEIGHT: u32 = 1000;
/// Shortest health-check interval: 10ms.
pub const MIN_INTERVAL: Duration = Duration::from_millis(10);
/// Longest health-check interval (and so timeout): 1h. A backend probed less
/// often than hourly is not being health-checked.
pub const MAX_INTERVAL: Duration = Duration::from_secs(3600);
/// Largest `rise`, `fall` and breaker `failures`: 1000, enough for a 10ms
/// interval to wait 10s, and small enough that no product the daemon forms
/// from them overflows.
pub const MAX_THRESHOLD: u32 = 1000;
/// Longest `open_for` and `max_open_for`: 1 day.
pub const MAX_OPEN_FOR: Duration = Duration::from_secs(86_400);
/// Longest `min_ttl` and `max_ttl`: 1 day.
pub const MAX_TTL: Duration = Duration::from_secs(86_400);
/// Longest `max_lag`: 1 day, room for a replica delayed on purpose.
pub const MAX_LAG: Duration = Duration::from_secs(86_400);
/// Longest `terminate.drain_after`: 1 day; a longer grace is a drain that never ends.
pub const MAX_DRAIN_AFTER: Duration = Duration::from_secs(86_400);

/// A whole configuration file, defaults filled in and validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// `datapath`: where the BPF hooks attach and pin.
    pub datapath: DatapathSection,
    /// `control`: the operator socket and the state directory.
    pub control: ControlSection,
    /// `metrics`: the HTTP listener for `/metrics`, `/healthz` and `/readyz`.
    pub metrics: MetricsSection,
    /// `resolver`: how hostname backends are resolved.
    pub resolver: ResolverSection,
    /// `services`: one entry per VIP, `defaults` already merged in. Each shared: the daemon
    /// runs a service on this very allocation, and a fleet join or a reload copies pointers,
    /// not 10,000 service configs.
    pub services: Vec<Arc<ServiceConfig>>,
    /// `fleet`: shared services and drains from etcd. Default: `None`, this host alone.
    pub fleet: Option<FleetSection>,
    /// The file this configuration came from (as given to [`super::load`]).
    pub source: PathBuf,
}

/// `fleet`: this daemon takes part in a fleet whose shared state lives in etcd
/// (see `docs/fleet.md`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FleetSection {
    /// `etcd`: how to reach the etcd cluster.
    pub etcd: EtcdSection,
    /// `host`: this host's name in the fleet (`hosts/<host>`, drains' `by`). Default: the
    /// machine's hostname.
    pub host: String,
}

/// `fleet.etcd`: the etcd v3 cluster that holds the fleet's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdSection {
    /// `endpoints`: client URLs, `http://host:port` or `https://host:port`; at least one.
    pub endpoints: Vec<String>,
    /// `prefix`: every key failoverd reads or writes starts with it; ends with `/`.
    /// Default: `/failoverd/`.
    pub prefix: String,
    /// `tls`: client TLS; required for `https://` endpoints. Default: none (plain HTTP).
    pub tls: Option<EtcdTls>,
    /// `username`: etcd user (auth enabled); needs `password_file`. Default: none.
    pub username: Option<String>,
    /// `password_file`: file whose first line is the etcd password; never logged.
    /// Default: none.
    pub password_file: Option<PathBuf>,
}

/// `fleet.etcd.tls`: PEM files for a TLS connection to etcd.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdTls {
    /// `ca`: the CA that signed etcd's server certificates.
    pub ca: PathBuf,
    /// `cert`: this client's certificate, for etcd's `--client-cert-auth`. Default: none.
    pub cert: Option<PathBuf>,
    /// `key`: the private key of `cert`; given together with it. Default: none.
    pub key: Option<PathBuf>,
}

/// Default of `fleet.etcd.prefix`: `/failoverd/`.
pub const DEFAULT_FLEET_PREFIX: &str = "/failoverd/";

/// `datapath`: where the BPF hooks attach and pin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatapathSection {
    /// `cgroup`: the cgroup v2 directory whose processes see the VIPs. Default: `auto`, the cgroup v2 root.
    pub cgroup: CgroupSpec,
    /// `pin_dir`: the bpffs directory for pinned maps and links. Default: `/sys/fs/bpf/failoverd`.
    pub pin_dir: PathBuf,
}

impl Default for DatapathSection {
    fn default() -> Self {
        DatapathSection {
            cgroup: CgroupSpec::Auto,
            pin_dir: crate::dirs::default_pin_dir(),
        }
    }
}

impl DatapathSection {
    /// The datapath settings this section describes.
    pub fn to_datapath_config(&self) -> DatapathConfig {
        DatapathConfig {
            cgroup: self.cgroup.clone(),
            pin_dir: self.pin_dir.clone(),
        }
    }
}

/// `control`: the operator socket and the state directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlSection {
    /// `socket`: the Unix socket of the control API. Default: `/run/failoverd/control.sock`.
    pub socket: PathBuf,
    /// `state_dir`: where state that outlives a restart is kept. Default: `/var/lib/failoverd`.
    pub state_dir: PathBuf,
}

impl Default for ControlSection {
    fn default() -> Self {
        ControlSection {
            socket: PathBuf::from(DEFAULT_CONTROL_SOCKET),
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
        }
    }
}

/// `metrics`: the HTTP listener for `/metrics`, `/healthz` and `/readyz`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetricsSection {
    /// `listen`: address and port. Default: `127.0.0.1:9477`.
    pub listen: SocketAddr,
    /// `per_backend`: export the per-backend series (state, probes, transitions, connects).
    /// About 35 lines of `/metrics` per backend: at tens of thousands of backends, turn it
    /// off and keep the per-service and daemon-wide series. Default: `true`.
    pub per_backend: bool,
}

impl Default for MetricsSection {
    fn default() -> Self {
        MetricsSection {
            listen: DEFAULT_METRICS_LISTEN,
            per_backend: true,
        }
    }
}

/// `resolver`: how hostname backends are resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolverSection {
    /// `nameservers`: servers to ask. Default: `None`, the system's resolv.conf and hosts file.
    pub nameservers: Option<Vec<SocketAddr>>,
    /// `min_ttl`: re-resolve no sooner than this, whatever the answer's TTL; at most 1 day. Default: 5s.
    pub min_ttl: Duration,
    /// `max_ttl`: re-resolve no later than this, whatever the answer's TTL; at most 1 day. Default: 5m.
    pub max_ttl: Duration,
}

impl Default for ResolverSection {
    fn default() -> Self {
        ResolverSection {
            nameservers: None,
            min_ttl: Duration::from_secs(5),
            max_ttl: Duration::from_secs(300),
        }
    }
}

/// One entry of `services`: a VIP and the backends behind it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceConfig {
    /// `name`: unique, `[A-Za-z0-9._:@-]`, at most 64 characters (it becomes a metric label).
    pub name: String,
    /// `vip`: the address applications connect to (port not 0).
    pub vip: SocketAddr,
    /// `protocol`: transport of the VIP. Default: tcp.
    pub protocol: Protocol,
    /// `on_all_down`: what connects get when no backend is live. Default: reject.
    pub on_all_down: OnAllDown,
    /// `failback`: whether traffic returns to a recovered higher priority by itself. Default: auto.
    pub failback: Failback,
    /// `health`: the probe, `defaults.health` merged in per key. Shared: services with equal
    /// sections (at scale nearly all, the defaults) hold one copy (see `lower`).
    pub health: Arc<HealthConfig>,
    /// `breaker`: the circuit breaker, `defaults.breaker` merged in per key.
    pub breaker: BreakerConfig,
    /// `passive`: kernel-observed connect failures (passive health), `defaults.passive` merged in per key.
    pub passive: PassiveConfig,
    /// `terminate`: when open sockets to a backend are aborted, `defaults.terminate` merged in per key.
    pub terminate: TerminateConfig,
    /// `backends`: 1 to 32 of them, in file order.
    pub backends: Vec<BackendConfig>,
}

impl ServiceConfig {
    /// The VIP as the datapath keys it: address, port and protocol.
    pub fn vip(&self) -> Vip {
        Vip {
            addr: self.vip,
            protocol: self.protocol,
        }
    }

    /// Worst-case time from a backend dying to its health verdict flipping:
    /// `fall × interval + timeout`.
    pub fn detection_bound(&self) -> Duration {
        self.health.detection_bound()
    }
}

/// `on_all_down`: what a connect to the VIP gets while no backend is live.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum OnAllDown {
    /// `reject`: `connect()` fails at once with ECONNREFUSED.
    #[default]
    Reject,
    /// `panic`: ignore health and use every backend of the lowest priority number.
    Panic,
}

/// `failback`: what happens when a backend of a better priority recovers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Failback {
    /// `auto`: traffic moves back as soon as it is healthy again.
    #[default]
    Auto,
    /// `manual`: traffic stays where it is until an operator moves it back,
    /// or its current priority has no live backend left.
    Manual,
}

/// `health`: how and how often backends are probed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthConfig {
    /// `kind`: the probe. Default: tcp.
    pub kind: HealthKind,
    /// `interval`: time between probe starts, 10ms to 1h. Default: 1s.
    pub interval: Duration,
    /// `timeout`: a probe that takes longer fails; shorter than `interval`. Default: 500ms.
    pub timeout: Duration,
    /// `rise`: consecutive successes that make a down backend up, 1 to 1000. Default: 2.
    pub rise: u32,
    /// `fall`: consecutive failures that make an up backend down, 1 to 1000. Default: 3.
    pub fall: u32,
    /// `port`: probe this port instead of the backend's. Default: `None`, the backend's port.
    pub port: Option<u16>,
    /// The http-only keys; their defaults when `kind` is another.
    pub http: HttpCheckConfig,
    /// The tcp-only keys (`send`, `expect`, `expect_regex`); their defaults when `kind` is another.
    pub tcp: TcpCheckConfig,
    /// The keys of the role-aware checks (postgres, mysql, redis); their defaults when `kind` is another.
    pub db: DatabaseCheckConfig,
    /// The exec-only keys; their defaults when `kind` is another.
    pub exec: ExecCheckConfig,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            kind: HealthKind::Tcp,
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
            rise: 2,
            fall: 3,
            port: None,
            http: HttpCheckConfig::default(),
            tcp: TcpCheckConfig::default(),
            db: DatabaseCheckConfig::default(),
            exec: ExecCheckConfig::default(),
        }
    }
}

impl HealthConfig {
    /// Worst-case detection time: `fall` failed probes one `interval` apart,
    /// the last of which waits its whole `timeout`.
    pub fn detection_bound(&self) -> Duration {
        self.interval
            .saturating_mul(self.fall)
            .saturating_add(self.timeout)
    }

    /// How long a new backend may go without a first verdict before its VIP's
    /// table is built without it: enough probes for a verdict either way
    /// (`max(rise, fall)`), one more interval for the start jitter, and the
    /// last probe's timeout: `interval × (max(rise, fall) + 1) + timeout`.
    ///
    /// Saturates instead of overflowing; within the config's bounds it is at
    /// most 1001 hours, which any `Instant` can be moved by.
    pub fn first_verdict_wait(&self) -> Duration {
        let probes = self.rise.max(self.fall).saturating_add(1);
        self.interval
            .saturating_mul(probes)
            .saturating_add(self.timeout)
    }

    /// The port to probe for a backend listening on `backend_port`.
    pub fn probe_port(&self, backend_port: u16) -> u16 {
        self.port.unwrap_or(backend_port)
    }
}

/// `health.kind`: what a probe does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum HealthKind {
    /// `tcp`: a connect that completes within the timeout.
    #[default]
    Tcp,
    /// `http`: a GET whose status (and optionally body) match.
    Http,
    /// `postgres`: a login and `pg_is_in_recovery()`.
    Postgres,
    /// `mysql`: a login (MySQL or MariaDB) and `@@global.read_only`.
    Mysql,
    /// `redis`: `INFO replication` (after `AUTH` with a password file).
    Redis,
    /// `exec`: a local command; exit 0 passes.
    Exec,
}

impl HealthKind {
    /// Whether the check asks the backend its role (postgres, mysql, redis).
    pub fn has_role(self) -> bool {
        matches!(
            self,
            HealthKind::Postgres | HealthKind::Mysql | HealthKind::Redis
        )
    }
}

/// The http-only keys of `health`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpCheckConfig {
    /// `path`: the request path, starting with `/`. Default: `/`.
    pub path: String,
    /// `host`: the Host header. Default: `None`, the backend's address.
    pub host: Option<String>,
    /// `expect_status`: accepted status codes. Default: 200-399.
    pub expect_status: StatusMatch,
    /// `expect_body`: a substring the body must contain. Default: `None`, any body.
    pub expect_body: Option<String>,
}

impl Default for HttpCheckConfig {
    fn default() -> Self {
        HttpCheckConfig {
            path: "/".to_owned(),
            host: None,
            expect_status: StatusMatch::default(),
            expect_body: None,
        }
    }
}

/// The tcp-only keys of `health`: a send/expect exchange instead of a bare connect.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TcpCheckConfig {
    /// `send`: bytes written after the connect, `\r`, `\n`, `\t`, `\\` and `\xNN` unescaped.
    /// Default: empty, nothing is sent (for servers that speak first).
    pub send: Vec<u8>,
    /// `expect` (a substring, unescaped as `send`) or `expect_regex` (compiled at load): what
    /// the reply must contain. Default: `None`, a bare connect.
    pub expect: Option<Expect>,
}

/// The keys of the role-aware checks (postgres, mysql, redis).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DatabaseCheckConfig {
    /// `role`: the role that passes. Default: primary.
    pub role: RoleWanted,
    /// `user` (postgres, mysql): the login. Default: `None`, the check's own: `postgres`
    /// for postgres, `root` for mysql.
    pub user: Option<String>,
    /// `username` (redis): the ACL user for `AUTH`. Default: `None`, the `default` user.
    pub username: Option<String>,
    /// `database` (postgres, mysql). Default: `None`: postgres connects to the database
    /// named like the user, mysql selects none.
    pub database: Option<String>,
    /// `password_file`: an absolute path, read at every probe. Default: `None`, no password.
    pub password_file: Option<PathBuf>,
    /// `max_lag`: for a replica, the most lag that passes, above zero, at most 1 day. Only
    /// with `role` replica or any. Default: `None`, any lag.
    pub max_lag: Option<Duration>,
    /// `tls` (postgres): off, prefer or require. Default: prefer.
    pub tls: PgTls,
}

/// The exec-only keys of `health`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExecCheckConfig {
    /// `command`: an absolute path to an executable file, then its arguments (`{address}`,
    /// `{host}`, `{port}` substituted at each probe). Required with kind exec.
    pub command: Vec<String>,
    /// `env`: the command's whole environment, by name. Default: empty.
    pub env: Vec<(String, String)>,
}

/// `breaker`: ejects a backend that keeps failing, for growing periods.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BreakerConfig {
    /// `failures`: consecutive failures that open the breaker, 1 to 1000. Default: 5.
    pub failures: u32,
    /// `open_for`: the first ejection's length, above zero, at most 1 day. Default: 10s.
    pub open_for: Duration,
    /// `max_open_for`: the longest ejection, at least `open_for`, at most 1 day. Default: 5m.
    pub max_open_for: Duration,
    /// `max_ejected_percent`: never eject more than this share of a priority group, 0-100 (rounded down). Default: 50.
    pub max_ejected_percent: u8,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failures: 5,
            open_for: Duration::from_secs(10),
            max_open_for: Duration::from_secs(300),
            max_ejected_percent: 50,
        }
    }
}

/// `passive`: ejects a backend on the kernel's own evidence, failed connects of translated
/// sockets, without waiting for `fall` probes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PassiveConfig {
    /// `consecutive_failures`: this many kernel-observed connect failures to one backend in a
    /// row (no established connect in between) eject it at once, 0 to 1000; 0 turns passive
    /// health off. Default: 3.
    pub consecutive_failures: u32,
}

impl Default for PassiveConfig {
    fn default() -> Self {
        PassiveConfig {
            consecutive_failures: 3,
        }
    }
}

impl PassiveConfig {
    /// Whether kernel-observed failures eject backends at all.
    pub fn is_on(&self) -> bool {
        self.consecutive_failures > 0
    }
}

/// `terminate`: when the datapath aborts sockets it translated to a backend.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TerminateConfig {
    /// `on_down`: abort them when the backend leaves the table unhealthy, ejected, removed
    /// by a reload or demoted by a role check. Default: false.
    pub on_down: bool,
    /// `on_failback`: when traffic fails back, abort those to the priority it left, so
    /// long-lived connections move back too. Default: false.
    pub on_failback: bool,
    /// `drain_after`: abort what is still open to a drained backend this long after the
    /// drain, above zero, at most 1 day; `None` (`never`) leaves them open. Default: never.
    pub drain_after: Option<Duration>,
}

/// One entry of a service's `backends`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendConfig {
    /// `address`: `ip:port` (`[ipv6]:port`) or `hostname:port`; port not 0.
    pub address: BackendAddress,
    /// `name`: unique in the service. Default: the address as [`BackendAddress`] displays it.
    pub name: std::sync::Arc<str>,
    /// `weight`: share of connects among live backends of one priority, 0-1000; 0 takes none. Default: 100.
    pub weight: u32,
    /// `priority`: 0 is tried first, higher numbers only when all lower ones are down. Default: 0.
    pub priority: u8,
}

macro_rules! keyword_enum {
    ($ty:ident, $what:literal, $expected:literal, $($word:literal => $variant:ident),+) => {
        impl FromStr for $ty {
            type Err = String;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($word => Ok($ty::$variant),)+
                    other => Err(format!(concat!("unknown ", $what, " `{}`: expected ", $expected), other)),
                }
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(match self {
                    $($ty::$variant => $word,)+
                })
            }
        }
    };
}

keyword_enum!(OnAllDown, "on_all_down", "reject or panic", "reject" => Reject, "panic" => Panic);
keyword_enum!(Failback, "failback", "auto or manual", "auto" => Auto, "manual" => Manual);
keyword_enum!(
    HealthKind,
    "health kind",
    "tcp, http, postgres, mysql, redis or exec",
    "tcp" => Tcp,
    "http" => Http,
    "postgres" => Postgres,
    "mysql" => Mysql,
    "redis" => Redis,
    "exec" => Exec
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detection_bound_is_fall_intervals_plus_one_timeout() {
        let health = HealthConfig {
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(300),
            fall: 3,
            ..HealthConfig::default()
        };
        assert_eq!(health.detection_bound(), Duration::from_millis(3300));
    }

    #[test]
    fn default_detection_bound_is_three_and_a_half_seconds() {
        assert_eq!(
            HealthConfig::default().detection_bound(),
            Duration::from_millis(3500)
        );
    }

    #[test]
    fn detection_bound_saturates_instead_of_overflowing() {
        let health = HealthConfig {
            interval: Duration::MAX,
            fall: 2,
            ..HealthConfig::default()
        };
        assert_eq!(health.detection_bound(), Duration::MAX);
    }

    #[test]
    fn first_verdict_wait_covers_the_longer_streak_jitter_and_a_timeout() {
        let health = HealthConfig {
            interval: Duration::from_secs(2),
            timeout: Duration::from_millis(300),
            rise: 2,
            fall: 5,
            ..HealthConfig::default()
        };
        assert_eq!(health.first_verdict_wait(), Duration::from_millis(12_300));
    }

    #[test]
    fn first_verdict_wait_saturates_instead_of_overflowing() {
        let health = HealthConfig {
            interval: Duration::from_secs(u64::MAX),
            rise: u32::MAX,
            ..HealthConfig::default()
        };
        assert_eq!(health.first_verdict_wait(), Duration::MAX);
    }

    #[test]
    fn the_largest_accepted_values_keep_every_product_small() {
        let health = HealthConfig {
            interval: MAX_INTERVAL,
            timeout: MAX_INTERVAL - Duration::from_millis(1),
            rise: MAX_THRESHOLD,
            fall: MAX_THRESHOLD,
            ..HealthConfig::default()
        };
        let year = Duration::from_secs(366 * 86_400);
        assert!(health.first_verdict_wait() < year);
        assert!(health.detection_bound() < year);
    }

    #[test]
    fn probe_port_defaults_to_the_backend_port() {
        let mut health = HealthConfig::default();
        assert_eq!(health.probe_port(5432), 5432);
        health.port = Some(8008);
        assert_eq!(health.probe_port(5432), 8008);
    }

    #[test]
    fn keywords_round_trip() {
        for k in [OnAllDown::Reject, OnAllDown::Panic] {
            assert_eq!(k.to_string().parse::<OnAllDown>(), Ok(k));
        }
        for k in [Failback::Auto, Failback::Manual] {
            assert_eq!(k.to_string().parse::<Failback>(), Ok(k));
        }
        for k in [HealthKind::Tcp, HealthKind::Http] {
            assert_eq!(k.to_string().parse::<HealthKind>(), Ok(k));
        }
        assert_eq!(
            "Reject".parse::<OnAllDown>(),
            Err("unknown on_all_down `Reject`: expected reject or panic".to_owned())
        );
    }

    #[test]
    fn sections_default_to_the_documented_values() {
        let d = DatapathSection::default();
        assert_eq!(d.cgroup, CgroupSpec::Auto);
        assert_eq!(d.pin_dir, PathBuf::from("/sys/fs/bpf/failoverd"));
        assert_eq!(d.to_datapath_config(), DatapathConfig::default());
        let c = ControlSection::default();
        assert_eq!(c.socket, PathBuf::from("/run/failoverd/control.sock"));
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/failoverd"));
        assert_eq!(
            MetricsSection::default().listen,
            "127.0.0.1:9477".parse::<SocketAddr>().unwrap()
        );
        let r = ResolverSection::default();
        assert_eq!(r.nameservers, None);
        assert_eq!(r.min_ttl, Duration::from_secs(5));
        assert_eq!(r.max_ttl, Duration::from_secs(300));
        let b = BreakerConfig::default();
        assert_eq!(
            (
                b.failures,
                b.open_for,
                b.max_open_for,
                b.max_ejected_percent
            ),
            (5, Duration::from_secs(10), Duration::from_secs(300), 50)
        );
        let h = HealthConfig::default();
        assert_eq!(h.http.path, "/");
        assert_eq!(h.http.expect_status, StatusMatch::Range(200, 399));
    }
}
