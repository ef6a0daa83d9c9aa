//! Answer handling without I/O: sorting addresses, clamping TTLs, and judging a lookup whose A
//! or AAAA half failed against the addresses published before.

use std::net::IpAddr;
use std::time::Duration;

use hickory_resolver::net::NetError;

use super::ResolveError;

/// One lookup's result: every address the name resolves to, and how long to trust it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// A and AAAA addresses, sorted (IPv4 first) and without duplicates; never empty.
    pub addrs: Vec<IpAddr>,
    /// The smallest record TTL, clamped to `[min_ttl, max_ttl]`.
    pub ttl: Duration,
}

/// What one record type (A or AAAA) returned.
#[derive(Debug, Default)]
pub(crate) struct Family {
    /// Address and record TTL in seconds; empty when the name has no records of this type.
    pub(crate) records: Vec<(IpAddr, u32)>,
    /// The nameserver said the name does not exist at all.
    pub(crate) nxdomain: bool,
}

/// The A and AAAA halves of one lookup, before they are judged.
#[derive(Debug)]
pub(crate) struct Families {
    pub(crate) v4: Result<Family, NetError>,
    pub(crate) v6: Result<Family, NetError>,
}

/// `[min, max]` for re-resolution intervals; `min <= max` is checked by `Resolver::new`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TtlBounds {
    pub(crate) min: Duration,
    pub(crate) max: Duration,
}

impl TtlBounds {
    /// A record TTL as a re-resolution interval.
    pub(crate) fn clamp(self, ttl_secs: u32) -> Duration {
        // `max` then `min` rather than `Duration::clamp`, which panics on inverted bounds: a
        // resolver must never take the daemon down over a TTL.
        Duration::from_secs(u64::from(ttl_secs))
            .max(self.min)
            .min(self.max)
    }
}

/// Sorts (IPv4 before IPv6, then numerically) and drops duplicates, so that two answers with
/// the same addresses in another order compare equal and cause no churn downstream.
pub(crate) fn sorted_unique(mut addrs: Vec<IpAddr>) -> Vec<IpAddr> {
    addrs.sort_unstable();
    addrs.dedup();
    addrs
}

/// What the watch does with one lookup.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Both record types answered and there is at least one address.
    Complete(Answer),
    /// The lookup failed, wholly or in part.
    Failed {
        /// Addresses to publish instead of the previous ones, or `None` to keep those.
        addrs: Option<Vec<IpAddr>>,
        /// Why, for the log and `AddrSet::last_error`.
        error: ResolveError,
    },
}

impl Families {
    /// The strict reading for a one-shot lookup: if either record type failed, the lookup
    /// failed — half an answer would silently drop the other family's backends.
    pub(crate) fn into_answer(self, host: &str, bounds: TtlBounds) -> Result<Answer, ResolveError> {
        match (self.v4, self.v6) {
            (Ok(v4), Ok(v6)) => complete(host, bounds, v4, v6),
            (Err(source), _) | (_, Err(source)) => Err(lookup_error(host, source)),
        }
    }

    /// The reading for a watched name, given the addresses published before.
    ///
    /// When one record type answered with addresses and the other failed, the answered type's
    /// new addresses are taken and the failed type keeps its previous ones: a nameserver that
    /// keeps failing AAAA queries must not keep a name unresolved forever, and a transient
    /// AAAA failure must not drop the IPv6 backends. Anything else that fails keeps the
    /// previous addresses as they are.
    pub(crate) fn settle(self, host: &str, bounds: TtlBounds, previous: &[IpAddr]) -> Outcome {
        match (self.v4, self.v6) {
            (Ok(v4), Ok(v6)) => match complete(host, bounds, v4, v6) {
                Ok(answer) => Outcome::Complete(answer),
                Err(error) => Outcome::Failed { addrs: None, error },
            },
            (Ok(v4), Err(source)) => partial(host, previous, v4, source),
            (Err(source), Ok(v6)) => partial(host, previous, v6, source),
            (Err(source), Err(_)) => Outcome::Failed {
                addrs: None,
                error: lookup_error(host, source),
            },
        }
    }
}

fn complete(host: &str, bounds: TtlBounds, v4: Family, v6: Family) -> Result<Answer, ResolveError> {
    let nxdomain = v4.nxdomain || v6.nxdomain;
    let records: Vec<(IpAddr, u32)> = v4.records.into_iter().chain(v6.records).collect();
    let Some(ttl) = records.iter().map(|&(_, ttl)| ttl).min() else {
        return Err(ResolveError::NoAddresses {
            host: host.to_owned(),
            nxdomain,
        });
    };
    Ok(Answer {
        addrs: sorted_unique(records.into_iter().map(|(ip, _)| ip).collect()),
        ttl: bounds.clamp(ttl),
    })
}

/// One record type answered (`answered`), the other failed with `source`.
fn partial(host: &str, previous: &[IpAddr], answered: Family, source: NetError) -> Outcome {
    let error = lookup_error(host, source);
    let Some(&(first, _)) = answered.records.first() else {
        return Outcome::Failed { addrs: None, error };
    };
    let answered_v4 = first.is_ipv4();
    let kept = previous.iter().filter(|ip| ip.is_ipv4() != answered_v4);
    let addrs = answered
        .records
        .iter()
        .map(|&(ip, _)| ip)
        .chain(kept.copied())
        .collect();
    Outcome::Failed {
        addrs: Some(sorted_unique(addrs)),
        error,
    }
}

fn lookup_error(host: &str, source: NetError) -> ResolveError {
    ResolveError::Lookup {
        host: host.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUNDS: TtlBounds = TtlBounds {
        min: Duration::from_secs(2),
        max: Duration::from_secs(300),
    };

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("test address")
    }

    fn family(records: &[(&str, u32)]) -> Family {
        Family {
            records: records.iter().map(|&(a, ttl)| (ip(a), ttl)).collect(),
            nxdomain: false,
        }
    }

    #[test]
    fn ttl_below_min_is_raised_and_above_max_is_lowered() {
        assert_eq!(BOUNDS.clamp(1), Duration::from_secs(2));
        assert_eq!(BOUNDS.clamp(0), Duration::from_secs(2));
        assert_eq!(BOUNDS.clamp(3600), Duration::from_secs(300));
        assert_eq!(BOUNDS.clamp(60), Duration::from_secs(60));
        assert_eq!(BOUNDS.clamp(u32::MAX), Duration::from_secs(300));
    }

    #[test]
    fn inverted_bounds_clamp_to_max_instead_of_panicking() {
        let inverted = TtlBounds {
            min: Duration::from_secs(10),
            max: Duration::from_secs(1),
        };
        assert_eq!(inverted.clamp(5), Duration::from_secs(1));
    }

    #[test]
    fn addresses_are_sorted_ipv4_first_without_duplicates() {
        let sorted = sorted_unique(vec![
            ip("::1"),
            ip("127.0.0.3"),
            ip("127.0.0.1"),
            ip("127.0.0.3"),
            ip("::1"),
        ]);
        assert_eq!(sorted, vec![ip("127.0.0.1"), ip("127.0.0.3"), ip("::1")]);
    }

    #[test]
    fn answer_ttl_is_the_smallest_record_ttl_clamped() {
        let families = Families {
            v4: Ok(family(&[("127.0.0.2", 90), ("127.0.0.1", 30)])),
            v6: Ok(family(&[("::1", 60)])),
        };
        let answer = families.into_answer("db", BOUNDS).expect("answer");
        assert_eq!(answer.ttl, Duration::from_secs(30));
        assert_eq!(
            answer.addrs,
            vec![ip("127.0.0.1"), ip("127.0.0.2"), ip("::1")]
        );
    }

    #[test]
    fn no_records_of_either_type_is_no_addresses() {
        let families = Families {
            v4: Ok(Family {
                records: vec![],
                nxdomain: true,
            }),
            v6: Ok(Family {
                records: vec![],
                nxdomain: true,
            }),
        };
        let error = families.into_answer("gone", BOUNDS).expect_err("no answer");
        assert!(matches!(
            error,
            ResolveError::NoAddresses { ref host, nxdomain: true } if host == "gone"
        ));
    }

    #[test]
    fn one_shot_lookup_fails_when_either_record_type_fails() {
        let families = Families {
            v4: Ok(family(&[("127.0.0.1", 30)])),
            v6: Err(NetError::Timeout),
        };
        let error = families.into_answer("db", BOUNDS).expect_err("strict");
        assert!(matches!(error, ResolveError::Lookup { ref host, .. } if host == "db"));
    }

    #[test]
    fn watched_name_keeps_the_failed_types_previous_addresses() {
        let previous = [ip("127.0.0.1"), ip("::1")];
        let families = Families {
            v4: Ok(family(&[("127.0.0.9", 30)])),
            v6: Err(NetError::Timeout),
        };
        match families.settle("db", BOUNDS, &previous) {
            Outcome::Failed {
                addrs: Some(addrs),
                error: ResolveError::Lookup { .. },
            } => assert_eq!(addrs, vec![ip("127.0.0.9"), ip("::1")]),
            other => panic!("expected a partial update, got {other:?}"),
        }
    }

    #[test]
    fn watched_name_keeps_everything_when_the_answered_type_is_empty() {
        let previous = [ip("127.0.0.1"), ip("::1")];
        let families = Families {
            v4: Err(NetError::Timeout),
            v6: Ok(Family::default()),
        };
        assert!(matches!(
            families.settle("db", BOUNDS, &previous),
            Outcome::Failed { addrs: None, .. }
        ));
    }

    #[test]
    fn watched_name_keeps_everything_when_both_types_fail() {
        let families = Families {
            v4: Err(NetError::Timeout),
            v6: Err(NetError::Timeout),
        };
        assert!(matches!(
            families.settle("db", BOUNDS, &[ip("127.0.0.1")]),
            Outcome::Failed { addrs: None, .. }
        ));
    }

    #[test]
    fn watched_name_with_no_records_keeps_the_previous_addresses() {
        let families = Families {
            v4: Ok(Family::default()),
            v6: Ok(Family::default()),
        };
        assert!(matches!(
            families.settle("db", BOUNDS, &[ip("127.0.0.1")]),
            Outcome::Failed {
                addrs: None,
                error: ResolveError::NoAddresses {
                    nxdomain: false,
                    ..
                }
            }
        ));
    }
}
