//! Backend addresses: `ip:port`, `[ipv6]:port` or `hostname:port`.

use std::{fmt, net::SocketAddr, str::FromStr};

use super::syntax::check_hostname;

/// Why an IPv6 zone id (`%eth0`, `%2`) is refused wherever an address is written.
pub(crate) const ZONE_ID_REASON: &str =
    "the datapath keys VIPs and backends by address and port only, \
so the interface a link-local address needs would be lost; use a global or unique-local address";

/// Where a backend listens.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum BackendAddress {
    /// A literal address: `10.0.0.5:5432` or `[2001:db8::5]:5432`.
    Ip(SocketAddr),
    /// A name resolved at run time, re-resolved at the answer's TTL: `db-b.internal:5432`.
    Host {
        /// The hostname, as written.
        host: String,
        /// The port.
        port: u16,
    },
}

impl BackendAddress {
    /// The port connects go to.
    pub fn port(&self) -> u16 {
        match self {
            BackendAddress::Ip(addr) => addr.port(),
            BackendAddress::Host { port, .. } => *port,
        }
    }

    /// Whether two addresses name the same place as written: hostnames compare
    /// without regard to case or a trailing dot.
    pub fn same_as(&self, other: &BackendAddress) -> bool {
        match (self, other) {
            (BackendAddress::Ip(a), BackendAddress::Ip(b)) => a == b,
            (
                BackendAddress::Host { host: a, port: pa },
                BackendAddress::Host { host: b, port: pb },
            ) => {
                pa == pb
                    && a.trim_end_matches('.')
                        .eq_ignore_ascii_case(b.trim_end_matches('.'))
            }
            _ => false,
        }
    }
}

/// Writes the address in the config's syntax: `10.0.0.5:5432`, `[2001:db8::5]:5432`, `db-b.internal:5432`.
impl fmt::Display for BackendAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackendAddress::Ip(addr) => write!(f, "{addr}"),
            BackendAddress::Host { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

/// Why text is not a backend address.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// No `:port` at the end.
    #[error("missing port in `{text}`: expected ip:port or hostname:port")]
    MissingPort {
        /// The text given.
        text: String,
    },
    /// An IPv6 address without brackets, or brackets around something else.
    #[error("invalid address `{text}`: write IPv6 addresses in brackets, as [2001:db8::5]:5432")]
    Ipv6Syntax {
        /// The text given.
        text: String,
    },
    /// The port is not a number from 0 to 65535.
    #[error("invalid port `{port}` in `{text}`: expected a number from 1 to 65535")]
    Port {
        /// The text given.
        text: String,
        /// The port part.
        port: String,
    },
    /// An IPv6 zone id (`[fe80::1%eth0]:80`): see [`ZONE_ID_REASON`].
    #[error("zone id in `{text}` is not supported: {ZONE_ID_REASON}")]
    ZoneId {
        /// The text given.
        text: String,
    },
    /// The host part is neither an IP address nor a valid hostname.
    #[error("invalid hostname `{host}`: {reason}")]
    Hostname {
        /// The host part.
        host: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// Parses `ip:port`, `[ipv6]:port` or `hostname:port`. Port 0 parses; the
/// config rejects it separately so that the message can say why.
impl FromStr for BackendAddress {
    type Err = AddressError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        // `%` has no other meaning in an address or a hostname.
        if text.contains('%') {
            return Err(AddressError::ZoneId {
                text: text.to_owned(),
            });
        }
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Ok(BackendAddress::Ip(addr));
        }
        let owned = || text.to_owned();
        if text.starts_with('[') {
            return Err(AddressError::Ipv6Syntax { text: owned() });
        }
        let Some((host, port)) = text.rsplit_once(':') else {
            return Err(AddressError::MissingPort { text: owned() });
        };
        if host.contains(':') {
            return Err(AddressError::Ipv6Syntax { text: owned() });
        }
        let port = port.parse::<u16>().map_err(|_| AddressError::Port {
            text: owned(),
            port: port.to_owned(),
        })?;
        check_hostname(host).map_err(|reason| AddressError::Hostname {
            host: host.to_owned(),
            reason,
        })?;
        Ok(BackendAddress::Host {
            host: host.to_owned(),
            port,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<BackendAddress, AddressError> {
        s.parse()
    }

    #[test]
    fn ip_and_host_forms_parse_and_display_as_written() {
        for text in [
            "10.10.40.25:5432",
            "[2001:db8::5]:5432",
            "db-b.internal:5432",
        ] {
            assert_eq!(parse(text).unwrap().to_string(), text);
        }
        assert_eq!(
            parse("db-b.internal:5432").unwrap(),
            BackendAddress::Host {
                host: "db-b.internal".into(),
                port: 5432
            }
        );
        assert_eq!(parse("[::1]:80").unwrap().port(), 80);
    }

    #[test]
    fn malformed_addresses_say_what_is_wrong() {
        assert!(matches!(
            parse("db.internal"),
            Err(AddressError::MissingPort { .. })
        ));
        assert!(matches!(
            parse("2001:db8::5:5432"),
            Err(AddressError::Ipv6Syntax { .. })
        ));
        assert!(matches!(
            parse("[2001:db8::zz]:5432"),
            Err(AddressError::Ipv6Syntax { .. })
        ));
        assert!(matches!(
            parse("db.internal:99999"),
            Err(AddressError::Port { .. })
        ));
        assert!(matches!(
            parse("db_b.internal:5432"),
            Err(AddressError::Hostname { .. })
        ));
        assert!(matches!(
            parse("10.0.0:5432"),
            Err(AddressError::Hostname { .. })
        ));
    }

    #[test]
    fn zone_ids_are_refused_with_the_reason() {
        for text in ["[fe80::2%1]:80", "[fe80::2%eth0]:80", "fe80::2%1:80"] {
            let err = parse(text).unwrap_err();
            assert!(matches!(err, AddressError::ZoneId { .. }), "{text}: {err}");
            assert!(err.to_string().contains("link-local"), "{err}");
        }
    }

    #[test]
    fn hostnames_compare_without_case_or_trailing_dot() {
        let a = parse("DB.internal.:80").unwrap();
        assert!(a.same_as(&parse("db.internal:80").unwrap()));
        assert!(!a.same_as(&parse("db.internal:81").unwrap()));
        assert!(!a.same_as(&parse("10.0.0.1:80").unwrap()));
    }
}
