//! From the file as written to [`Config`]: defaults filled in, every rule checked.

use std::{
    collections::{hash_map::Entry, HashMap},
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use failoverd_shared::{VipKey, MAX_BACKENDS, MAX_COUNTERS, MAX_SERVICES, RESERVED_COUNTER_IDS};

use super::{
    issues::Issues,
    merge::{self, Scope, Section},
    model::DEFAULT_FLEET_PREFIX,
    model::{DEFAULT_WEIGHT, MAX_TTL, MAX_WEIGHT},
    passive,
    raw::{RawBackend, RawConfig, RawControl, RawDatapath, RawFleet, RawResolver, RawService},
    syntax::check_name,
    BackendAddress, BackendConfig, Config, ControlSection, DatapathSection, EtcdSection, EtcdTls,
    FleetSection, HealthConfig, MetricsSection, ResolverSection, ServiceConfig,
};
use crate::{
    datapath::{CgroupSpec, Protocol, Vip},
    interned::Recent,
};

/// Builds the configuration and records every broken rule in `issues`; the
/// result is meaningful only if `issues` stays empty.
pub(super) fn lower(raw: RawConfig, source: &Path, issues: &mut Issues) -> Config {
    let datapath = datapath(raw.datapath.as_ref(), issues);
    let control = control(raw.control.as_ref(), issues);
    let metrics = MetricsSection {
        listen: raw
            .metrics
            .as_ref()
            .and_then(|m| m.listen.as_ref())
            .map_or(MetricsSection::default().listen, |l| l.0),
        per_backend: raw
            .metrics
            .as_ref()
            .and_then(|m| m.per_backend)
            .unwrap_or(MetricsSection::default().per_backend),
    };
    let resolver = resolver(raw.resolver.as_ref(), issues);
    let fleet = raw.fleet.as_ref().map(|f| fleet(f, issues));

    let defaults = raw.defaults.as_ref();
    let default_health = defaults.and_then(|d| d.health.as_ref()).map(|raw| Section {
        raw,
        path: "defaults.health",
    });
    let default_breaker = defaults
        .and_then(|d| d.breaker.as_ref())
        .map(|raw| Section {
            raw,
            path: "defaults.breaker",
        });
    if let Some(section) = default_health {
        merge::health(Scope::Defaults(section), issues);
    }
    if let Some(section) = default_breaker {
        merge::breaker(Scope::Defaults(section), issues);
    }
    let default_passive = defaults
        .and_then(|d| d.passive.as_ref())
        .map(|raw| Section {
            raw,
            path: "defaults.passive",
        });
    let default_terminate = defaults
        .and_then(|d| d.terminate.as_ref())
        .map(|raw| Section {
            raw,
            path: "defaults.terminate",
        });
    if let Some(section) = default_passive {
        passive::passive(Scope::Defaults(section), issues);
    }
    if let Some(section) = default_terminate {
        passive::terminate(Scope::Defaults(section), issues);
    }

    // Every VIP address, whatever its protocol: a backend at one of them would
    // send connects back into a VIP.
    let vips: HashMap<SocketAddr, &str> = raw
        .services
        .iter()
        .map(|s| (kernel_form(s.vip.0), s.name.as_str()))
        .collect();
    let mut names: HashMap<&str, usize> = HashMap::new();
    // Keyed as the services map keys them, so that two spellings of one VIP
    // (`127.0.0.1:80` and `[::ffff:127.0.0.1]:80`) cannot both be accepted.
    let mut vip_owners: HashMap<VipKey, usize> = HashMap::new();
    let mut services = Vec::with_capacity(raw.services.len());
    // Equal sections (at scale nearly all, usually `defaults.health`; ~400 bytes and a few
    // allocations each, with every check kind's keys) share one allocation.
    let mut healths: Recent<HealthConfig> = Recent::new(16);
    for (i, s) in raw.services.iter().enumerate() {
        let path = format!("services[{i}]");
        let at = |key: &str| format!("{path}.{key}");
        if let Err(message) = check_name(&s.name) {
            issues.value(at("name"), message);
        } else {
            match names.entry(&s.name) {
                Entry::Vacant(e) => {
                    e.insert(i);
                }
                Entry::Occupied(e) => issues.value(
                    at("name"),
                    format!(
                        "service name `{}` is already used by services[{}]",
                        s.name,
                        e.get()
                    ),
                ),
            }
        }
        let vip = Vip {
            addr: kernel_form(s.vip.0),
            protocol: s.protocol.as_ref().map_or(Protocol::Tcp, |p| p.0),
        };
        if vip.addr.port() == 0 {
            issues.value(
                at("vip"),
                format!(
                    "vip {} has port 0; give the port applications connect to",
                    vip.addr
                ),
            );
        } else {
            match vip_owners.entry(vip.key()) {
                Entry::Vacant(e) => {
                    e.insert(i);
                }
                Entry::Occupied(e) => {
                    let first = *e.get();
                    let other = &raw.services[first];
                    let message = if other.vip.0 == s.vip.0 {
                        format!(
                            "vip {vip} is already used by service `{}` (services[{first}])",
                            other.name
                        )
                    } else {
                        format!(
                            "vip {}/{} is the same VIP as {}/{} of service `{}` (services[{first}]): \
                             the datapath keys an IPv4-mapped address as its IPv4 form",
                            s.vip.0, vip.protocol, other.vip.0, vip.protocol, other.name
                        )
                    };
                    issues.value(at("vip"), message);
                }
            }
        }
        let health_path = at("health");
        let health = merge::health(
            Scope::Service {
                own: s.health.as_ref().map(|raw| Section {
                    raw,
                    path: &health_path,
                }),
                inherited: default_health,
                at: &health_path,
            },
            issues,
        );
        let breaker_path = at("breaker");
        let breaker = merge::breaker(
            Scope::Service {
                own: s.breaker.as_ref().map(|raw| Section {
                    raw,
                    path: &breaker_path,
                }),
                inherited: default_breaker,
                at: &breaker_path,
            },
            issues,
        );
        let passive_path = at("passive");
        let passive = passive::passive(
            Scope::Service {
                own: s.passive.as_ref().map(|raw| Section {
                    raw,
                    path: &passive_path,
                }),
                inherited: default_passive,
                at: &passive_path,
            },
            issues,
        );
        let terminate_path = at("terminate");
        let terminate = passive::terminate(
            Scope::Service {
                own: s.terminate.as_ref().map(|raw| Section {
                    raw,
                    path: &terminate_path,
                }),
                inherited: default_terminate,
                at: &terminate_path,
            },
            issues,
        );
        services.push(Arc::new(ServiceConfig {
            name: s.name.clone(),
            vip: vip.addr,
            protocol: vip.protocol,
            on_all_down: s.on_all_down.as_ref().map(|v| v.0).unwrap_or_default(),
            failback: s.failback.as_ref().map(|v| v.0).unwrap_or_default(),
            health: healths.share(health),
            breaker,
            passive,
            terminate,
            backends: backends(s, &path, vip.addr, &vips, issues),
        }));
    }

    kernel_limits(&services, issues);
    Config {
        datapath,
        control,
        metrics,
        resolver,
        services,
        fleet,
        source: source.to_path_buf(),
    }
}

/// The datapath's fixed sizes: services in its map, counter ids for services
/// and backends. A file beyond them would load and then fail write by write.
pub(super) fn kernel_limits(services: &[Arc<ServiceConfig>], issues: &mut Issues) {
    let max_services = MAX_SERVICES as usize;
    if services.len() > max_services {
        issues.value(
            format!("services[{max_services}]"),
            format!(
                "a datapath holds at most {max_services} services (the size of its services map); this file lists {}",
                services.len()
            ),
        );
    }
    // One id per service and one per literal backend; hostname backends take
    // theirs when they resolve and are not counted here.
    let ids = (MAX_COUNTERS - RESERVED_COUNTER_IDS) as usize;
    let mut used = 0usize;
    for (i, s) in services.iter().enumerate() {
        let mut paths = std::iter::once(format!("services[{i}]")).chain(
            s.backends
                .iter()
                .enumerate()
                .filter(|(_, b)| matches!(b.address, BackendAddress::Ip(_)))
                .map(|(j, _)| format!("services[{i}].backends[{j}]")),
        );
        for path in &mut paths {
            used += 1;
            if used > ids {
                issues.value(
                    path,
                    format!(
                        "the datapath counts connects under {ids} ids, one per service and one per IP backend, and this is number {used}; split the services over more datapaths (pin_dir and cgroup) or list fewer backends"
                    ),
                );
                return;
            }
        }
    }
}

fn backends(
    s: &RawService,
    service_path: &str,
    vip: SocketAddr,
    vips: &HashMap<SocketAddr, &str>,
    issues: &mut Issues,
) -> Vec<BackendConfig> {
    let list_path = format!("{service_path}.backends");
    if s.backends.is_empty() {
        issues.value(&list_path, "a service needs at least one backend");
    }
    if s.backends.len() > MAX_BACKENDS {
        issues.value(
            format!("{list_path}[{MAX_BACKENDS}]"),
            format!(
                "a service holds at most {MAX_BACKENDS} backends (the size of the datapath's table); this one lists {}",
                s.backends.len()
            ),
        );
    }
    let mut out: Vec<BackendConfig> = Vec::with_capacity(s.backends.len());
    for (j, b) in s.backends.iter().enumerate() {
        let path = format!("{list_path}[{j}]");
        let backend = backend(b, &path, vip, vips, issues);
        if let Some(k) = out.iter().position(|o| o.address.same_as(&backend.address)) {
            issues.value(
                format!("{path}.address"),
                format!(
                    "address {} is already listed as {list_path}[{k}]",
                    b.address.0
                ),
            );
        } else if let Some(k) = out.iter().position(|o| o.name == backend.name) {
            // An unnamed backend is named by its address; point at what sets the name.
            let key = if b.name.is_some() { "name" } else { "address" };
            issues.value(
                format!("{path}.{key}"),
                format!(
                    "backend name `{}` is already used by {list_path}[{k}]",
                    backend.name
                ),
            );
        }
        out.push(backend);
    }
    out
}

fn backend(
    b: &RawBackend,
    path: &str,
    vip: SocketAddr,
    vips: &HashMap<SocketAddr, &str>,
    issues: &mut Issues,
) -> BackendConfig {
    let at = |key: &str| format!("{path}.{key}");
    let written = &b.address.0;
    let address = match written {
        BackendAddress::Ip(addr) => BackendAddress::Ip(kernel_form(*addr)),
        host @ BackendAddress::Host { .. } => host.clone(),
    };
    if address.port() == 0 {
        issues.value(
            at("address"),
            format!("address {address} has port 0; give the port the backend listens on"),
        );
    }
    if let BackendAddress::Ip(addr) = &address {
        if addr.is_ipv4() != vip.is_ipv4() {
            let family = |a: &SocketAddr| if a.is_ipv4() { "IPv4" } else { "IPv6" };
            let mapped = if written == &address {
                ""
            } else {
                " (IPv4-mapped)"
            };
            issues.value(
                at("address"),
                format!(
                    "address {written} is {}{mapped} but the vip {vip} is {}; a connect cannot change address family",
                    family(addr),
                    family(&vip)
                ),
            );
        } else if let Some(owner) = vips.get(addr) {
            issues.value(
                at("address"),
                format!("address {written} is the vip of service `{owner}`; a backend must be a real address"),
            );
        }
    }
    if let Some(name) = &b.name {
        if let Err(message) = check_name(name) {
            issues.value(at("name"), message);
        }
    }
    let weight = b.weight.unwrap_or(DEFAULT_WEIGHT);
    if weight > MAX_WEIGHT {
        issues.value(
            at("weight"),
            format!("weight {weight} is out of range 0 to {MAX_WEIGHT}"),
        );
    }
    let priority = b.priority.unwrap_or(0);
    if priority > u32::from(u8::MAX) {
        issues.value(
            at("priority"),
            format!("priority {priority} is out of range 0 to 255"),
        );
    }
    BackendConfig {
        name: b.name.clone().unwrap_or_else(|| written.to_string()).into(),
        address,
        weight,
        priority: u8::try_from(priority).unwrap_or(u8::MAX),
    }
}

/// An address as the datapath stores it: an IPv4-mapped IPv6 address
/// (`[::ffff:10.0.0.1]:80`) is its IPv4 address, since the maps hold IPv4 in
/// exactly that mapped form and the two cannot be told apart there.
fn kernel_form(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

fn datapath(raw: Option<&RawDatapath>, issues: &mut Issues) -> DatapathSection {
    let d = DatapathSection::default();
    let Some(raw) = raw else { return d };
    let cgroup = match raw.cgroup.as_deref() {
        None => d.cgroup,
        Some("auto") => CgroupSpec::Auto,
        Some(dir) => {
            // The daemon's working directory is not the operator's: a relative
            // cgroup would depend on how the daemon was started.
            if !Path::new(dir).is_absolute() {
                issues.value(
                    "datapath.cgroup",
                    format!("cgroup `{dir}` must be `auto` or an absolute path"),
                );
            }
            CgroupSpec::Path(PathBuf::from(dir))
        }
    };
    DatapathSection {
        cgroup,
        pin_dir: absolute(raw.pin_dir.as_ref(), "datapath.pin_dir", d.pin_dir, issues),
    }
}

/// Bytes of `sockaddr_un.sun_path`: a socket path holds one less, for its NUL.
const SUN_PATH_LEN: usize =
    std::mem::size_of::<libc::sockaddr_un>() - std::mem::size_of::<libc::sa_family_t>();

fn control(raw: Option<&RawControl>, issues: &mut Issues) -> ControlSection {
    let d = ControlSection::default();
    let Some(raw) = raw else { return d };
    if let Some(socket) = &raw.socket {
        let len = socket.as_os_str().len();
        if len >= SUN_PATH_LEN {
            // bind() would fail only after the hooks were attached.
            issues.value(
                "control.socket",
                format!(
                    "socket `{}` is {len} bytes long; a Unix socket path holds at most {} (sun_path is {SUN_PATH_LEN} bytes with the closing NUL)",
                    socket.display(),
                    SUN_PATH_LEN - 1
                ),
            );
        }
    }
    ControlSection {
        socket: absolute(raw.socket.as_ref(), "control.socket", d.socket, issues),
        state_dir: absolute(
            raw.state_dir.as_ref(),
            "control.state_dir",
            d.state_dir,
            issues,
        ),
    }
}

fn absolute(value: Option<&PathBuf>, key: &str, default: PathBuf, issues: &mut Issues) -> PathBuf {
    let Some(path) = value else { return default };
    if !path.is_absolute() {
        let name = key.rsplit('.').next().unwrap_or(key);
        issues.value(
            key,
            format!("{name} `{}` must be an absolute path", path.display()),
        );
    }
    path.clone()
}

fn resolver(raw: Option<&RawResolver>, issues: &mut Issues) -> ResolverSection {
    let d = ResolverSection::default();
    let Some(raw) = raw else { return d };
    if let Some(list) = &raw.nameservers {
        if list.is_empty() {
            issues.value(
                "resolver.nameservers",
                "nameservers is empty; list at least one, or leave the key out to use the system's",
            );
        }
        for (i, ns) in list.iter().enumerate() {
            if ns.0 .0.port() == 0 {
                issues.value(
                    format!("resolver.nameservers[{i}]"),
                    format!("nameserver {} has port 0", ns.0 .0),
                );
            }
        }
    }
    let min_ttl = raw.min_ttl.as_ref().map_or(d.min_ttl, |t| t.0);
    let max_ttl = raw.max_ttl.as_ref().map_or(d.max_ttl, |t| t.0);
    for (key, value) in [("min_ttl", &raw.min_ttl), ("max_ttl", &raw.max_ttl)] {
        if let Some(ttl) = value.as_ref().filter(|t| t.0 > MAX_TTL) {
            issues.value(
                format!("resolver.{key}"),
                merge::longer_than_max(key, ttl.0, MAX_TTL),
            );
        }
    }
    if min_ttl > max_ttl {
        let key = if raw.min_ttl.is_some() {
            "resolver.min_ttl"
        } else {
            "resolver.max_ttl"
        };
        issues.value(
            key,
            format!(
                "min_ttl {} must not be longer than max_ttl {}",
                humantime::format_duration(min_ttl),
                humantime::format_duration(max_ttl)
            ),
        );
    }
    ResolverSection {
        nameservers: raw
            .nameservers
            .as_ref()
            .map(|list| list.iter().map(|ns| ns.0 .0).collect()),
        min_ttl,
        max_ttl,
    }
}

/// Longest `fleet.host`: 253 bytes, a DNS name's limit (it becomes part of an etcd key).
const MAX_HOST_LEN: usize = 253;

fn fleet(raw: &RawFleet, issues: &mut Issues) -> FleetSection {
    let etcd = &raw.etcd;
    if etcd.endpoints.is_empty() {
        issues.value(
            "fleet.etcd.endpoints",
            "endpoints is empty; list the client URLs of the etcd members (http://host:2379)",
        );
    }
    for (i, e) in etcd.endpoints.iter().enumerate() {
        let tls = e.starts_with("https://");
        if !(tls || e.starts_with("http://")) || e.contains(char::is_whitespace) {
            issues.value(
                format!("fleet.etcd.endpoints[{i}]"),
                format!("endpoint `{e}` must be a URL: http://host:port or https://host:port"),
            );
        } else if tls && etcd.tls.is_none() {
            issues.value(
                format!("fleet.etcd.endpoints[{i}]"),
                format!(
                    "endpoint `{e}` is https but fleet.etcd.tls is missing; give at least its `ca`"
                ),
            );
        }
    }
    let prefix = etcd
        .prefix
        .clone()
        .unwrap_or_else(|| DEFAULT_FLEET_PREFIX.to_owned());
    if !prefix.starts_with('/') || !prefix.ends_with('/') || prefix.len() < 2 {
        // Without the trailing slash `/failoverd` would also match `/failoverd-staging/…`.
        issues.value(
            "fleet.etcd.prefix",
            format!("prefix `{prefix}` must start and end with `/` and name a directory, like /failoverd/"),
        );
    }
    if etcd.password {
        issues.key(
            "fleet.etcd.password",
            "an inline password is not accepted: put it in a file only failoverd's user can read and name that file with password_file",
        );
    }
    match (&etcd.username, &etcd.password_file) {
        (Some(_), None) => issues.value(
            "fleet.etcd.username",
            "username needs password_file (the file that holds the etcd password)",
        ),
        (None, Some(_)) => issues.value("fleet.etcd.password_file", "password_file needs username"),
        _ => {}
    }
    if let Some(user) = &etcd.username {
        if user.is_empty() {
            issues.value("fleet.etcd.username", "username is empty");
        }
    }
    let password_file = absolute(
        etcd.password_file.as_ref(),
        "fleet.etcd.password_file",
        PathBuf::new(),
        issues,
    );
    let tls = etcd.tls.as_ref().map(|t| {
        if t.cert.is_some() != t.key.is_some() {
            let key = if t.cert.is_some() {
                "fleet.etcd.tls.cert"
            } else {
                "fleet.etcd.tls.key"
            };
            issues.value(key, "cert and key go together: give both or neither");
        }
        EtcdTls {
            ca: absolute(Some(&t.ca), "fleet.etcd.tls.ca", PathBuf::new(), issues),
            cert: t
                .cert
                .as_ref()
                .map(|c| absolute(Some(c), "fleet.etcd.tls.cert", PathBuf::new(), issues)),
            key: t
                .key
                .as_ref()
                .map(|k| absolute(Some(k), "fleet.etcd.tls.key", PathBuf::new(), issues)),
        }
    });
    let host = match &raw.host {
        Some(host) => {
            if let Err(message) = check_host(host) {
                issues.value("fleet.host", message);
            }
            host.clone()
        }
        None => local_hostname(),
    };
    FleetSection {
        etcd: EtcdSection {
            endpoints: etcd.endpoints.clone(),
            prefix,
            tls,
            username: etcd.username.clone(),
            password_file: etcd.password_file.as_ref().map(|_| password_file),
        },
        host,
    }
}

/// A fleet host name: one etcd key segment, so no `/`, and shown in terminals, so printable.
fn check_host(host: &str) -> Result<(), String> {
    if host.is_empty() || host.len() > MAX_HOST_LEN {
        return Err(format!("host must be 1 to {MAX_HOST_LEN} bytes"));
    }
    if let Some(c) = host
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
    {
        return Err(format!(
            "host `{}` has {c:?}; use letters, digits, `.`, `-` and `_`",
            host.escape_debug()
        ));
    }
    Ok(())
}

/// The machine's hostname (what `fleet.host` defaults to); `localhost` if it has none.
pub(super) fn local_hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it
    // or truncates (then the last byte is set to 0 below).
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len() - 1) };
    if rc != 0 {
        return "localhost".to_owned();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len() - 1);
    let name = String::from_utf8_lossy(&buf[..end]).into_owned();
    if check_host(&name).is_ok() {
        name
    } else {
        "localhost".to_owned()
    }
}
