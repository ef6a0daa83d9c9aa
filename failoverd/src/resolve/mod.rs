//! Hostname backends: DNS lookups with hickory and re-resolution at the answer TTL.
//!
//! A backend written `hostname:port` becomes one backend per address the name resolves to.
//! [`Resolver::lookup`] asks once (A and AAAA); [`watch`] keeps a name's addresses current in
//! the background, so DNS never blocks daemon start-up, and a failed lookup keeps the last
//! good answer instead of emptying the backend set.
//!
//! Files: `lookup` holds the [`Resolver`] (hickory underneath, its cache off: TTLs are handled
//! here); `hosts` the hosts file, asked first and read again whenever it changes (hickory's own
//! would be read once); `answer` the I/O-free part — sorting, TTL clamping, judging a partial
//! answer; `watch` the re-resolution task and the [`AddrSet`] it publishes.

mod answer;
mod hosts;
mod lookup;
mod watch;

use std::error::Error;
use std::net::SocketAddr;
use std::time::Duration;

use hickory_resolver::net::NetError;

pub use answer::Answer;
pub use lookup::Resolver;
pub use watch::{watch, AddrSet};

/// Default lower bound of a re-resolution interval: 5 s.
pub const DEFAULT_MIN_TTL: Duration = Duration::from_secs(5);

/// Default upper bound of a re-resolution interval: 5 min.
pub const DEFAULT_MAX_TTL: Duration = Duration::from_secs(300);

/// How the daemon resolves hostname backends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolverSettings {
    /// Nameservers to ask (UDP; TCP after a truncated answer), with no search domains and no
    /// hosts file.
    /// Default `None`: the system's `/etc/resolv.conf` (read once) and `/etc/hosts` (read
    /// again whenever it changes; its names are re-resolved every `min_ttl`).
    pub nameservers: Option<Vec<SocketAddr>>,
    /// Shortest re-resolution interval: smaller TTLs are raised to this. Default 5 s.
    pub min_ttl: Duration,
    /// Longest re-resolution interval: larger TTLs are lowered to this. Default 5 min.
    pub max_ttl: Duration,
}

/// `nameservers: None` (system configuration), `min_ttl` 5 s, `max_ttl` 5 min.
impl Default for ResolverSettings {
    fn default() -> Self {
        ResolverSettings {
            nameservers: None,
            min_ttl: DEFAULT_MIN_TTL,
            max_ttl: DEFAULT_MAX_TTL,
        }
    }
}

/// Why a resolver could not be built or a name could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// hickory refused the resolver configuration.
    #[error("cannot build the dns resolver")]
    Setup {
        /// hickory's reason.
        #[source]
        source: NetError,
    },
    /// `nameservers` was given but empty: nothing could ever be resolved.
    #[error("resolver nameservers list is empty: leave it out to use /etc/resolv.conf")]
    NoNameservers,
    /// `min_ttl` is above `max_ttl`.
    #[error("resolver min_ttl ({min_ttl:?}) is greater than max_ttl ({max_ttl:?})")]
    TtlRange {
        /// The configured lower bound.
        min_ttl: Duration,
        /// The configured upper bound.
        max_ttl: Duration,
    },
    /// The query failed: timeout, SERVFAIL, unreachable nameserver, invalid name.
    #[error("dns lookup of {host} failed")]
    Lookup {
        /// The name looked up.
        host: String,
        /// hickory's error.
        #[source]
        source: NetError,
    },
    /// The name does not exist (NXDOMAIN) or has neither A nor AAAA records.
    #[error("dns lookup of {host} found no addresses: {}", if *.nxdomain { "no such name (nxdomain)" } else { "no A or AAAA records" })]
    NoAddresses {
        /// The name looked up.
        host: String,
        /// Whether the nameserver said the name does not exist at all.
        nxdomain: bool,
    },
}

/// Formats an error with its sources, `outer: inner: innermost`, for logs and
/// [`AddrSet::last_error`] where there is no reporter to walk the chain.
///
/// Some of hickory's errors print their source in their own message as well (`DNS error:
/// {0}` with `#[from]`), so a source the text already ends with is not repeated.
pub(crate) fn error_chain(error: &dyn Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    // Bounded: a chain longer than this is a cycle or a bug, and the first links say enough.
    for _ in 0..16 {
        let Some(next) = source else { break };
        let next_text = next.to_string();
        if !text.ends_with(&next_text) {
            text.push_str(": ");
            text.push_str(&next_text);
        }
        source = next.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_settings_use_the_system_config_and_5s_to_5min() {
        let settings = ResolverSettings::default();
        assert_eq!(settings.nameservers, None);
        assert_eq!(settings.min_ttl, Duration::from_secs(5));
        assert_eq!(settings.max_ttl, Duration::from_secs(300));
    }

    #[test]
    fn no_addresses_error_says_whether_the_name_exists() {
        let missing = ResolveError::NoAddresses {
            host: "db.internal".into(),
            nxdomain: true,
        };
        assert_eq!(
            missing.to_string(),
            "dns lookup of db.internal found no addresses: no such name (nxdomain)"
        );
        let empty = ResolveError::NoAddresses {
            host: "db.internal".into(),
            nxdomain: false,
        };
        assert!(empty.to_string().ends_with("no A or AAAA records"));
    }

    #[test]
    fn error_chain_does_not_repeat_a_source_already_in_the_message() {
        use hickory_resolver::net::DnsError;
        use hickory_resolver::proto::op::ResponseCode;

        let error = ResolveError::Lookup {
            host: "db.internal".into(),
            source: NetError::from(DnsError::ResponseCode(ResponseCode::ServFail)),
        };
        let text = error_chain(&error);
        assert_eq!(text.matches("Server Failure").count(), 1, "{text}");
        assert!(
            text.starts_with("dns lookup of db.internal failed: "),
            "{text}"
        );
    }

    #[test]
    fn error_chain_includes_the_source() {
        let error = ResolveError::Lookup {
            host: "db.internal".into(),
            source: NetError::Timeout,
        };
        assert_eq!(
            error_chain(&error),
            "dns lookup of db.internal failed: request timed out"
        );
    }
}
