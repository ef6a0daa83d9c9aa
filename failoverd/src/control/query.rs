//! Query strings of the control API: the `explain` parameters, percent-decoded on the server and percent-encoded by the client.

/// The parameters of `GET /v1/explain?vip=ip:port[&protocol=tcp|udp]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ExplainQuery {
    /// `ip:port`, IPv6 as `[addr]:port`, exactly as sent (after decoding).
    pub vip: String,
    /// `tcp` or `udp` as sent; the handler checks the value. Default: none (tcp).
    pub protocol: Option<String>,
}

/// Parses the query of an explain request (`None` when the URI has none).
///
/// Strict on purpose: an unknown or repeated parameter is an error rather than
/// ignored, so a typo (`?protcol=udp`) cannot silently explain the TCP VIP.
pub(crate) fn parse_explain(query: Option<&str>) -> Result<ExplainQuery, String> {
    let mut vip = None;
    let mut protocol = None;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = decode(key)?;
        let value = decode(value)?;
        let slot = match key.as_str() {
            "vip" => &mut vip,
            "protocol" => &mut protocol,
            other => {
                return Err(format!(
                    "unknown query parameter `{other}`: expected `vip` and optionally `protocol`"
                ))
            }
        };
        if slot.replace(value).is_some() {
            return Err(format!("query parameter `{key}` is given more than once"));
        }
    }
    let vip = vip.ok_or_else(|| {
        "missing query parameter `vip`, e.g. /v1/explain?vip=10.96.0.10:5432".to_owned()
    })?;
    if vip.is_empty() {
        return Err("query parameter `vip` is empty: expected ip:port".to_owned());
    }
    Ok(ExplainQuery { vip, protocol })
}

/// `after` and `wait` of `/v1/events`.
#[derive(Debug)]
pub(crate) struct EventsQuery {
    pub(crate) after: u64,
    pub(crate) wait: bool,
}

/// Parses `/v1/events`' query: `after=N` (default 0), `wait=true|false` (default false).
pub(crate) fn parse_events(query: Option<&str>) -> Result<EventsQuery, String> {
    let mut q = EventsQuery {
        after: 0,
        wait: false,
    };
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match (decode(key)?.as_str(), decode(value)?) {
            ("after", v) => {
                q.after = v
                    .parse()
                    .map_err(|_| format!("`after={v}` is not a whole number"))?
            }
            ("wait", v) => {
                q.wait = v
                    .parse()
                    .map_err(|_| format!("`wait={v}` is not true or false"))?;
            }
            (other, _) => {
                return Err(format!(
                    "unknown query parameter `{other}`: expected `after` and `wait`"
                ))
            }
        }
    }
    Ok(q)
}

/// Percent-decodes one query component; `+` is a space, as in HTML forms.
fn decode(text: &str) -> Result<String, String> {
    let mut bytes = Vec::with_capacity(text.len());
    let mut rest = text.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        rest = tail;
        match b {
            b'+' => bytes.push(b' '),
            b'%' => {
                let hex = rest
                    .get(..2)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| format!("bad percent-encoding in query `{text}`"))?;
                bytes.push(hex);
                rest = &rest[2..];
            }
            other => bytes.push(other),
        }
    }
    String::from_utf8(bytes).map_err(|_| format!("query `{text}` is not UTF-8 once decoded"))
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// Percent-encodes `text` for a query component: everything but RFC 3986 unreserved characters.
pub(crate) fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0x0f)]));
        }
    }
    out
}

#[cfg(test)]
mod tests {

    #[test]
    fn events_query_defaults_and_parses() {
        let q = parse_events(None).unwrap();
        assert_eq!((q.after, q.wait), (0, false));
        let q = parse_events(Some("after=17&wait=true")).unwrap();
        assert_eq!((q.after, q.wait), (17, true));
    }

    #[test]
    fn events_query_names_what_is_wrong() {
        assert!(parse_events(Some("after=x"))
            .unwrap_err()
            .contains("after=x"));
        assert!(parse_events(Some("wait=yes"))
            .unwrap_err()
            .contains("wait=yes"));
        assert!(parse_events(Some("since=1")).unwrap_err().contains("since"));
    }

    use super::*;

    #[test]
    fn reads_vip_and_protocol() {
        let q = parse_explain(Some("vip=10.0.0.1:80&protocol=udp")).unwrap();
        assert_eq!(q.vip, "10.0.0.1:80");
        assert_eq!(q.protocol.as_deref(), Some("udp"));
    }

    #[test]
    fn protocol_is_optional() {
        let q = parse_explain(Some("vip=10.0.0.1:80")).unwrap();
        assert_eq!(q.protocol, None);
    }

    #[test]
    fn decodes_a_percent_encoded_ipv6_vip() {
        let q = parse_explain(Some("vip=%5B%3A%3A1%5D%3A80")).unwrap();
        assert_eq!(q.vip, "[::1]:80");
    }

    #[test]
    fn takes_an_unencoded_ipv6_vip_as_is() {
        let q = parse_explain(Some("vip=[::1]:80&protocol=tcp")).unwrap();
        assert_eq!(q.vip, "[::1]:80");
    }

    #[test]
    fn a_missing_vip_names_the_parameter() {
        let e = parse_explain(None).unwrap_err();
        assert!(e.contains("missing query parameter `vip`"), "{e}");
        let e = parse_explain(Some("protocol=udp")).unwrap_err();
        assert!(e.contains("missing query parameter `vip`"), "{e}");
    }

    #[test]
    fn an_unknown_parameter_is_refused() {
        let e = parse_explain(Some("vip=1.2.3.4:80&protcol=udp")).unwrap_err();
        assert!(e.contains("unknown query parameter `protcol`"), "{e}");
    }

    #[test]
    fn a_repeated_parameter_is_refused() {
        let e = parse_explain(Some("vip=1.2.3.4:80&vip=1.2.3.5:80")).unwrap_err();
        assert!(e.contains("`vip` is given more than once"), "{e}");
    }

    #[test]
    fn bad_percent_encoding_is_refused() {
        for query in ["vip=%zz", "vip=1.2.3.4%3", "vip=%FF"] {
            assert!(parse_explain(Some(query)).is_err(), "{query}");
        }
    }

    #[test]
    fn encoding_round_trips_through_decoding() {
        for text in ["[::1]:80", "10.0.0.1:5432", "a b&c=d%e+f/ü", ""] {
            assert_eq!(decode(&encode(text)).unwrap(), text);
        }
        assert_eq!(encode("[::1]:80"), "%5B%3A%3A1%5D%3A80");
    }
}
