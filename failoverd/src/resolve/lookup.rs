//! The resolver: hickory configured for failoverd, and one A + AAAA lookup of a name.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::NetError;
use hickory_resolver::proto::rr::{IntoName, Name, RecordType};
use hickory_resolver::TokioResolver;
use tracing::warn;

use super::answer::{Answer, Families, Family, TtlBounds};
use super::hosts::HostsFile;
use super::{ResolveError, ResolverSettings};
use crate::dirs::SYSTEM_HOSTS;

/// Where glibc sends queries when `/etc/resolv.conf` is missing or names no nameserver; we do
/// the same so that failoverd resolves like every other program on the host.
const FALLBACK_NAMESERVER: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Resolves hostnames to backend addresses.
///
/// Cheap to clone: clones share one hickory resolver and its connections. Lookups must run
/// inside a tokio runtime, which hickory spawns its connection tasks on.
#[derive(Clone, Debug)]
pub struct Resolver {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    hickory: TokioResolver,
    bounds: TtlBounds,
    /// Asked before hickory, which never reads a hosts file itself (it would read it once).
    hosts: Option<HostsFile>,
}

impl Resolver {
    /// Builds a resolver from `settings`. Sends nothing on the network.
    ///
    /// With `nameservers`, queries go over UDP (TCP after a truncated answer) to exactly those
    /// servers, with no search domains and no hosts file. Without, `/etc/resolv.conf` (search
    /// domains, timeouts) applies, read once, here (the hosts file is not read until the
    /// first lookup); if it cannot be read or names no
    /// nameserver, a warning is logged and 127.0.0.1 is used, as glibc does. `/etc/hosts` is
    /// then asked first, as glibc's `files` source: a name it lists is answered from it alone,
    /// with the TTL `min_ttl`, and the file is read again whenever it has changed (see
    /// [`Resolver::with_hosts_file`]). Either way hickory's cache is off: re-resolution
    /// follows the TTL here, and a cache would only serve stale answers to it.
    pub fn new(settings: &ResolverSettings) -> Result<Resolver, ResolveError> {
        let hosts = settings
            .nameservers
            .is_none()
            .then(|| PathBuf::from(SYSTEM_HOSTS));
        Self::build(settings, hosts)
    }

    /// Like [`Resolver::new`], but `hosts_file` is asked before any nameserver, whatever
    /// `nameservers` says (with `nameservers: None` it takes the place of `/etc/hosts`).
    ///
    /// A name the file lists (any case, with or without a trailing dot; no search domains
    /// are applied to it) is answered from the file alone — both address families, no
    /// nameserver asked — with the TTL `min_ttl`, so that a [`watch`](super::watch) looks at
    /// the file again that often. Each lookup checks the file's inode, size and timestamps
    /// and reads it again if they changed: edits in place and files renamed over it are both
    /// seen. A missing file lists nothing; a file that cannot be read keeps what it said
    /// before, with a warning. Nothing is read here: the first lookup reads it.
    pub fn with_hosts_file(
        settings: &ResolverSettings,
        hosts_file: impl Into<PathBuf>,
    ) -> Result<Resolver, ResolveError> {
        Self::build(settings, Some(hosts_file.into()))
    }

    fn build(
        settings: &ResolverSettings,
        hosts_file: Option<PathBuf>,
    ) -> Result<Resolver, ResolveError> {
        if settings.min_ttl > settings.max_ttl {
            return Err(ResolveError::TtlRange {
                min_ttl: settings.min_ttl,
                max_ttl: settings.max_ttl,
            });
        }
        let (config, mut options) = match &settings.nameservers {
            Some(servers) => explicit_config(servers)?,
            None => system_config(),
        };
        options.cache_size = 0;
        // hickory would read the file once and never again: `HostsFile` reads it instead.
        options.use_hosts_file = ResolveHosts::Never;
        let hickory = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
            .with_options(options)
            .build()
            .map_err(|source| ResolveError::Setup { source })?;
        Ok(Resolver {
            inner: Arc::new(Inner {
                hickory,
                bounds: TtlBounds {
                    min: settings.min_ttl,
                    max: settings.max_ttl,
                },
                hosts: hosts_file.map(HostsFile::new),
            }),
        })
    }

    /// One lookup of A and AAAA, queried in parallel.
    ///
    /// Addresses are sorted (IPv4 first) and deduplicated; `ttl` is the smallest record TTL,
    /// clamped to `[min_ttl, max_ttl]`. Fails if either query fails (timeout, SERVFAIL, ...):
    /// half an answer would silently drop the other family's backends. A literal IP address is
    /// returned as is, with `ttl` = `max_ttl`; a name in the hosts file with its addresses
    /// there, with `ttl` = `min_ttl`.
    pub async fn lookup(&self, host: &str) -> Result<Answer, ResolveError> {
        self.query(host).await?.into_answer(host, self.inner.bounds)
    }

    /// The `[min_ttl, max_ttl]` this resolver clamps TTLs to.
    pub(crate) fn bounds(&self) -> TtlBounds {
        self.inner.bounds
    }

    /// Both halves of a lookup, for callers that judge a partial failure themselves.
    pub(crate) async fn query(&self, host: &str) -> Result<Families, ResolveError> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(literal(ip));
        }
        if let Some(addrs) = self.inner.hosts.as_ref().and_then(|h| h.lookup(host)) {
            return Ok(from_hosts(addrs));
        }
        let name = host.into_name().map_err(|source| ResolveError::Lookup {
            host: host.to_owned(),
            source: source.into(),
        })?;
        let (v4, v6) = tokio::join!(
            self.family(&name, RecordType::A),
            self.family(&name, RecordType::AAAA)
        );
        Ok(Families { v4, v6 })
    }

    async fn family(&self, name: &Name, record_type: RecordType) -> Result<Family, NetError> {
        match self.inner.hickory.lookup(name.clone(), record_type).await {
            Ok(lookup) => Ok(Family {
                records: lookup
                    .answers()
                    .iter()
                    // CNAMEs of the chain are in the answer too; their TTLs are already folded
                    // into the address records' by hickory.
                    .filter(|record| record.record_type() == record_type)
                    .filter_map(|record| record.data.ip_addr().map(|ip| (ip, record.ttl)))
                    .collect(),
                nxdomain: false,
            }),
            // NODATA and NXDOMAIN are answers, not failures: this family has no addresses.
            Err(error) if error.is_no_records_found() => Ok(Family {
                records: Vec::new(),
                nxdomain: error.is_nx_domain(),
            }),
            Err(error) => Err(error),
        }
    }
}

/// A literal never changes, so its TTL is "forever" — `max_ttl` after clamping.
fn literal(ip: IpAddr) -> Families {
    let found = Family {
        records: vec![(ip, u32::MAX)],
        nxdomain: false,
    };
    let (v4, v6) = match ip {
        IpAddr::V4(_) => (found, Family::default()),
        IpAddr::V6(_) => (Family::default(), found),
    };
    Families {
        v4: Ok(v4),
        v6: Ok(v6),
    }
}

/// A hosts file entry can be edited at any time, so its TTL is "now" — `min_ttl` after
/// clamping: a watch looks at the file again that often. Both families come from the file,
/// as with glibc: a family the file does not list for the name has no addresses.
fn from_hosts(addrs: Vec<IpAddr>) -> Families {
    let (v4, v6): (Vec<IpAddr>, Vec<IpAddr>) = addrs.into_iter().partition(IpAddr::is_ipv4);
    let family = |addrs: Vec<IpAddr>| Family {
        records: addrs.into_iter().map(|ip| (ip, 0)).collect(),
        nxdomain: false,
    };
    Families {
        v4: Ok(family(v4)),
        v6: Ok(family(v6)),
    }
}

fn explicit_config(servers: &[SocketAddr]) -> Result<(ResolverConfig, ResolverOpts), ResolveError> {
    if servers.is_empty() {
        return Err(ResolveError::NoNameservers);
    }
    let name_servers = servers
        .iter()
        .map(|server| {
            let mut udp = ConnectionConfig::udp();
            udp.port = server.port();
            let mut tcp = ConnectionConfig::tcp();
            tcp.port = server.port();
            NameServerConfig::new(server.ip(), true, vec![udp, tcp])
        })
        .collect();
    // Exactly the configured servers: no hosts file unless one is asked for
    // (`Resolver::with_hosts_file`), since its entries would shadow them unnoticed.
    Ok((
        ResolverConfig::from_name_servers(name_servers),
        ResolverOpts::default(),
    ))
}

fn system_config() -> (ResolverConfig, ResolverOpts) {
    match hickory_resolver::system_conf::read_system_conf() {
        Ok(system) => system,
        Err(error) => {
            warn!(
                error = %error,
                fallback = %FALLBACK_NAMESERVER,
                "cannot use /etc/resolv.conf; resolving through the fallback nameserver"
            );
            let fallback = NameServerConfig::udp_and_tcp(FALLBACK_NAMESERVER);
            (
                ResolverConfig::from_name_servers(vec![fallback]),
                ResolverOpts::default(),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn min_ttl_above_max_ttl_is_refused() {
        let settings = ResolverSettings {
            nameservers: Some(vec!["127.0.0.1:53".parse().expect("addr")]),
            min_ttl: Duration::from_secs(60),
            max_ttl: Duration::from_secs(5),
        };
        assert!(matches!(
            Resolver::new(&settings),
            Err(ResolveError::TtlRange { .. })
        ));
    }

    #[test]
    fn empty_nameserver_list_is_refused() {
        let settings = ResolverSettings {
            nameservers: Some(Vec::new()),
            ..ResolverSettings::default()
        };
        assert!(matches!(
            Resolver::new(&settings),
            Err(ResolveError::NoNameservers)
        ));
    }

    #[test]
    fn explicit_nameservers_keep_their_ports_with_no_search_domains() {
        let servers = ["127.0.0.1:5353".parse().expect("addr")];
        let (config, _) = explicit_config(&servers).expect("config");
        let [server] = config.name_servers() else {
            panic!("expected one nameserver, got {:?}", config.name_servers());
        };
        assert_eq!(server.ip, IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert!(server.connections.iter().all(|c| c.port == 5353));
        assert_eq!(server.connections.len(), 2);
        assert!(config.search().is_empty());
    }

    #[test]
    fn only_a_resolver_without_nameservers_reads_the_system_hosts_file() {
        let explicit = ResolverSettings {
            nameservers: Some(vec!["127.0.0.1:53".parse().expect("addr")]),
            ..ResolverSettings::default()
        };
        let hosts_path = |r: Resolver| r.inner.hosts.as_ref().map(|h| h.path().to_owned());
        assert_eq!(
            hosts_path(Resolver::new(&explicit).expect("resolver")),
            None
        );
        let system = Resolver::new(&ResolverSettings::default()).expect("resolver");
        assert_eq!(hosts_path(system), Some(PathBuf::from("/etc/hosts")));
        let injected = Resolver::with_hosts_file(&explicit, "/tmp/hosts").expect("resolver");
        assert_eq!(hosts_path(injected), Some(PathBuf::from("/tmp/hosts")));
    }

    #[test]
    fn a_hosts_file_answer_has_both_families_and_lives_min_ttl() {
        let bounds = TtlBounds {
            min: Duration::from_secs(5),
            max: Duration::from_secs(300),
        };
        let addrs = vec!["127.0.0.5".parse().expect("ip"), "::1".parse().expect("ip")];
        let answer = from_hosts(addrs.clone())
            .into_answer("db", bounds)
            .expect("answer");
        assert_eq!(answer.addrs, addrs);
        assert_eq!(answer.ttl, Duration::from_secs(5));
    }

    #[test]
    fn literal_address_resolves_to_itself_for_max_ttl() {
        let bounds = TtlBounds {
            min: Duration::from_secs(5),
            max: Duration::from_secs(300),
        };
        let answer = literal("::1".parse().expect("ip"))
            .into_answer("::1", bounds)
            .expect("answer");
        assert_eq!(answer.addrs, vec!["::1".parse::<IpAddr>().expect("ip")]);
        assert_eq!(answer.ttl, Duration::from_secs(300));
    }
}
