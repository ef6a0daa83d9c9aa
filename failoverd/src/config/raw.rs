//! The file as written: serde structs with every key optional and unknown keys refused.
//!
//! Only shape and scalar syntax are checked here, so that serde-saphyr's
//! errors (which carry the key path and position) cover them; the rules that
//! relate keys to each other live in `lower`.

use std::{
    cell::Cell,
    collections::BTreeMap,
    fmt,
    marker::PhantomData,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use serde::{de, Deserialize, Deserializer};

use super::{BackendAddress, Failback, HealthKind, OnAllDown};
use crate::{
    datapath::Protocol,
    health::{PgTls, RoleWanted},
};

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub datapath: Option<RawDatapath>,
    pub control: Option<RawControl>,
    pub metrics: Option<RawMetrics>,
    pub resolver: Option<RawResolver>,
    pub defaults: Option<RawDefaults>,
    pub fleet: Option<RawFleet>,
    pub services: Vec<RawService>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFleet {
    pub etcd: RawEtcd,
    pub host: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEtcd {
    pub endpoints: Vec<String>,
    pub prefix: Option<String>,
    pub tls: Option<RawEtcdTls>,
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    /// Only ever refused, like `health.password`: a secret does not belong in the config.
    #[serde(default, deserialize_with = "present")]
    pub password: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEtcdTls {
    pub ca: PathBuf,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDatapath {
    pub cgroup: Option<String>,
    pub pin_dir: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawControl {
    pub socket: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMetrics {
    pub listen: Option<Parsed<SocketAddr>>,
    pub per_backend: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawResolver {
    pub nameservers: Option<Vec<Parsed<Nameserver>>>,
    pub min_ttl: Option<Parsed<Duration>>,
    pub max_ttl: Option<Parsed<Duration>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDefaults {
    pub health: Option<RawHealth>,
    pub breaker: Option<RawBreaker>,
    pub passive: Option<RawPassive>,
    pub terminate: Option<RawTerminate>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawService {
    pub name: String,
    pub vip: Parsed<SocketAddr>,
    pub protocol: Option<Parsed<Protocol>>,
    pub on_all_down: Option<Parsed<OnAllDown>>,
    pub failback: Option<Parsed<Failback>>,
    pub health: Option<RawHealth>,
    pub breaker: Option<RawBreaker>,
    pub passive: Option<RawPassive>,
    pub terminate: Option<RawTerminate>,
    pub backends: Vec<RawBackend>,
}

/// `health`, in `defaults` or in a service.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealth {
    pub kind: Option<Parsed<HealthKind>>,
    pub interval: Option<Parsed<Duration>>,
    pub timeout: Option<Parsed<Duration>>,
    pub rise: Option<u32>,
    pub fall: Option<u32>,
    pub port: Option<u16>,
    pub path: Option<String>,
    pub host: Option<String>,
    pub expect_status: Option<RawStatus>,
    pub expect_body: Option<String>,
    // tcp with send/expect.
    pub send: Option<Parsed<Escaped>>,
    pub expect: Option<Parsed<EscapedText>>,
    pub expect_regex: Option<Parsed<regex::Regex>>,
    // postgres, mysql, redis.
    pub role: Option<Parsed<RoleWanted>>,
    pub user: Option<String>,
    pub username: Option<String>,
    pub database: Option<String>,
    pub password_file: Option<PathBuf>,
    /// Only ever refused: true when the key is written, whatever its value
    /// (even null), and the value itself is dropped unread.
    #[serde(default, deserialize_with = "present")]
    pub password: bool,
    pub max_lag: Option<Parsed<Duration>>,
    pub tls: Option<Parsed<PgTls>>,
    // exec.
    pub command: Option<Vec<String>>,
    pub env: Option<RawEnv>,
}

/// `env` as written: names to values, sorted by name. A name given twice is
/// refused (a plain map would keep the last one without a word).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct RawEnv(pub BTreeMap<String, String>);

impl<'de> Deserialize<'de> for RawEnv {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> de::Visitor<'de> for V {
            type Value = RawEnv;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping of variable names to values")
            }

            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<RawEnv, A::Error> {
                let mut env = BTreeMap::new();
                // Option: a null value is refused here, not read as the text `~`.
                while let Some((name, value)) = map.next_entry::<String, Option<String>>()? {
                    let Some(value) = value else {
                        return Err(de::Error::invalid_type(
                            de::Unexpected::Other("unit value"),
                            &"a string",
                        ));
                    };
                    if env.contains_key(&name) {
                        // serde-saphyr refuses a duplicate key first; kept should it ever not.
                        return Err(de::Error::custom(format!("duplicate key `{name}`")));
                    }
                    env.insert(name, value);
                }
                Ok(RawEnv(env))
            }
        }
        d.deserialize_map(V)
    }
}

/// A key that is refused whatever it holds: its value is skipped, not kept.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    de::IgnoredAny::deserialize(d).map(|_| true)
}

/// `breaker`, in `defaults` or in a service.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBreaker {
    pub failures: Option<u32>,
    pub open_for: Option<Parsed<Duration>>,
    pub max_open_for: Option<Parsed<Duration>>,
    pub max_ejected_percent: Option<u32>,
}

/// `passive`, in `defaults` or in a service.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPassive {
    pub consecutive_failures: Option<u32>,
}

/// `terminate`, in `defaults` or in a service.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTerminate {
    pub on_down: Option<bool>,
    pub on_failback: Option<bool>,
    pub drain_after: Option<Parsed<Grace>>,
}

/// `drain_after`: `never`, or a duration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Grace(pub Option<Duration>);

impl Scalar for Grace {
    const EXPECTING: &'static str = "never, or a duration such as 30s or 5m";

    fn parse(text: &str) -> Result<Self, String> {
        if text == "never" {
            return Ok(Grace(None));
        }
        humantime::parse_duration(text).map(|d| Grace(Some(d))).map_err(|e| {
            format!("invalid drain_after `{text}` ({e}): write never, or a duration such as 30s or 5m")
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBackend {
    pub address: Parsed<BackendAddress>,
    pub name: Option<String>,
    // Wider than the model's types so that an out-of-range value gets the
    // config's own message (with the allowed range) rather than serde's.
    pub weight: Option<u32>,
    pub priority: Option<u32>,
}

/// `expect_status` as written: `200`, `200-299` or `[200, 204]`. Codes are
/// range-checked later so that a bad one in a list is pointed at by index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum RawStatus {
    Range(u32, u32),
    List(Vec<u32>),
}

impl<'de> Deserialize<'de> for RawStatus {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> de::Visitor<'de> for V {
            type Value = RawStatus;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a status code, a range like 200-299, or a list of codes")
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawStatus, E> {
                let code = u32::try_from(v).unwrap_or(u32::MAX);
                Ok(RawStatus::List(vec![code]))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawStatus, E> {
                Err(E::custom(format!(
                    "invalid status code {v}: codes are 100 to 599"
                )))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawStatus, E> {
                parse_status_range(v).ok_or_else(|| {
                    E::custom(format!(
                        "invalid expect_status `{v}`: expected a code, a range like 200-299, or a list of codes"
                    ))
                })
            }

            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<RawStatus, A::Error> {
                let mut codes = Vec::new();
                while let Some(code) = seq.next_element::<u32>()? {
                    codes.push(code);
                }
                Ok(RawStatus::List(codes))
            }
        }
        d.deserialize_any(V)
    }
}

fn parse_status_range(s: &str) -> Option<RawStatus> {
    match s.split_once('-') {
        Some((lo, hi)) => Some(RawStatus::Range(
            lo.trim().parse().ok()?,
            hi.trim().parse().ok()?,
        )),
        None => Some(RawStatus::List(vec![s.trim().parse().ok()?])),
    }
}

/// A scalar written as text and parsed with a message of the config's own.
pub(super) trait Scalar: Sized {
    /// What serde says it expected when the YAML node is not a scalar.
    const EXPECTING: &'static str;
    fn parse(text: &str) -> Result<Self, String>;
}

/// A [`Scalar`] deserialized from its text; serde-saphyr adds the position to the error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Parsed<T>(pub T);

thread_local! {
    /// What the last [`Parsed`] that met no scalar expected, for the error
    /// translation: serde-saphyr refuses a collection there before any visitor
    /// runs, and its error says only that a string was expected.
    static SCALAR_EXPECTING: Cell<Option<&'static str>> = const { Cell::new(None) };
}

/// Takes what the last [`Parsed`] that met a collection expected, if one did.
pub(super) fn take_scalar_expecting() -> Option<&'static str> {
    SCALAR_EXPECTING.with(Cell::take)
}

impl<'de, T: Scalar> Deserialize<'de> for Parsed<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a, T>(&'a Cell<bool>, PhantomData<T>);
        impl<'de, T: Scalar> de::Visitor<'de> for V<'_, T> {
            type Value = Parsed<T>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(T::EXPECTING)
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Parsed<T>, E> {
                self.0.set(true);
                T::parse(v).map(Parsed).map_err(E::custom)
            }
        }
        let reached = Cell::new(false);
        // deserialize_str hands any plain scalar over as its text, so `interval: 5`
        // reaches the duration parser and gets its message ("time unit needed").
        let result = d.deserialize_str(V(&reached, PhantomData));
        if result.is_err() && !reached.get() {
            SCALAR_EXPECTING.with(|e| e.set(Some(T::EXPECTING)));
        }
        result
    }
}

impl Scalar for Duration {
    const EXPECTING: &'static str = "a duration such as 300ms, 1s or 5m";

    fn parse(text: &str) -> Result<Self, String> {
        humantime::parse_duration(text)
            .map_err(|e| format!("invalid duration `{text}` ({e}): write e.g. 300ms, 1s or 5m"))
    }
}

impl Scalar for SocketAddr {
    const EXPECTING: &'static str = "an address such as 10.0.0.5:80 or [2001:db8::5]:80";

    fn parse(text: &str) -> Result<Self, String> {
        refuse_zone_id(text)?;
        text.parse().map_err(|_| {
            format!("invalid address `{text}`: expected ip:port, with IPv6 in brackets as [2001:db8::5]:80")
        })
    }
}

/// Rust parses `[fe80::1%2]:80` and keeps the zone id, but nothing downstream
/// carries it: refused with the same reason as in backend addresses.
fn refuse_zone_id(text: &str) -> Result<(), String> {
    if text.contains('%') {
        return Err(format!(
            "zone id in `{text}` is not supported: {}",
            super::address::ZONE_ID_REASON
        ));
    }
    Ok(())
}

/// A `resolver.nameservers` entry: `ip:port`, or a bare IP meaning port 53.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Nameserver(pub SocketAddr);

impl Scalar for Nameserver {
    const EXPECTING: &'static str = "a nameserver such as 127.0.0.53:53";

    fn parse(text: &str) -> Result<Self, String> {
        refuse_zone_id(text)?;
        if let Ok(ip) = text.parse::<IpAddr>() {
            return Ok(Nameserver(SocketAddr::new(ip, 53)));
        }
        text.parse().map(Nameserver).map_err(|_| {
            format!("invalid nameserver `{text}`: expected ip or ip:port, with IPv6 in brackets as [2001:db8::53]:53")
        })
    }
}

impl Scalar for BackendAddress {
    const EXPECTING: &'static str = "an address such as 10.0.0.5:5432 or db.internal:5432";

    fn parse(text: &str) -> Result<Self, String> {
        text.parse().map_err(|e: super::AddressError| e.to_string())
    }
}

/// `send` as written, with `\r`, `\n`, `\t`, `\\` and `\xNN` turned into the bytes they stand for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Escaped(pub Vec<u8>);

impl Scalar for Escaped {
    const EXPECTING: &'static str = "text with \\r, \\n, \\t, \\\\ or \\xNN escapes";

    fn parse(text: &str) -> Result<Self, String> {
        unescape(text).map(Escaped)
    }
}

/// `expect`: unescaped as [`Escaped`], and text (the probe compares it as UTF-8).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct EscapedText(pub String);

impl Scalar for EscapedText {
    const EXPECTING: &'static str = "text with \\r, \\n, \\t, \\\\ or \\xNN escapes";

    fn parse(text: &str) -> Result<Self, String> {
        String::from_utf8(unescape(text)?)
            .map(EscapedText)
            .map_err(|_| {
                format!(
                    "`{}` is not UTF-8 once unescaped; match other bytes with expect_regex",
                    text.escape_debug()
                )
            })
    }
}

/// The bytes `text` stands for: `\r`, `\n`, `\t`, `\\` and `\xNN` (two hex digits)
/// are unescaped, every other character is kept as its UTF-8.
pub(super) fn unescape(text: &str) -> Result<Vec<u8>, String> {
    // Backslashes shown as written; only control characters (from YAML's own
    // double-quoted escapes) are escaped, to keep the message on one line.
    let shown = || {
        text.chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_default().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect::<String>()
    };
    let mut out = Vec::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            let mut buf = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            continue;
        }
        match chars.next() {
            Some('r') => out.push(b'\r'),
            Some('n') => out.push(b'\n'),
            Some('t') => out.push(b'\t'),
            Some('\\') => out.push(b'\\'),
            Some('x') => {
                let hex: String = chars.by_ref().take(2).collect();
                match u8::from_str_radix(&hex, 16) {
                    Ok(byte) if hex.len() == 2 && hex.chars().all(|h| h.is_ascii_hexdigit()) => {
                        out.push(byte);
                    }
                    _ => {
                        return Err(format!(
                            "invalid escape `\\x{}` in `{}`: \\x takes two hex digits, as in \\x00",
                            hex.escape_debug(),
                            shown()
                        ))
                    }
                }
            }
            Some(other) => {
                return Err(format!(
                    "invalid escape `\\{}` in `{}`: write \\r, \\n, \\t, \\\\ or \\xNN",
                    other.escape_debug(),
                    shown()
                ))
            }
            None => {
                return Err(format!(
                    "`{}` ends in a lone backslash: write \\\\ for a backslash",
                    shown()
                ))
            }
        }
    }
    Ok(out)
}

impl Scalar for regex::Regex {
    const EXPECTING: &'static str = "a regular expression";

    fn parse(text: &str) -> Result<Self, String> {
        regex::Regex::new(text).map_err(|e| {
            // A syntax error is a small drawing over several lines; its last line says what.
            let shown = e.to_string();
            let why = shown
                .lines()
                .rev()
                .find_map(|l| l.strip_prefix("error: "))
                .map_or_else(
                    || shown.lines().collect::<Vec<_>>().join(" "),
                    str::to_owned,
                );
            format!("invalid regex `{}`: {why}", text.escape_debug())
        })
    }
}

impl Scalar for RoleWanted {
    const EXPECTING: &'static str = "primary, replica or any";

    fn parse(text: &str) -> Result<Self, String> {
        match text {
            "primary" => Ok(RoleWanted::Primary),
            "replica" => Ok(RoleWanted::Replica),
            "any" => Ok(RoleWanted::Any),
            other => Err(format!(
                "unknown role `{other}`: expected primary, replica or any"
            )),
        }
    }
}

impl Scalar for PgTls {
    const EXPECTING: &'static str = "off, prefer or require";

    fn parse(text: &str) -> Result<Self, String> {
        match text {
            "off" => Ok(PgTls::Off),
            "prefer" => Ok(PgTls::Prefer),
            "require" => Ok(PgTls::Require),
            other => Err(format!(
                "unknown tls `{other}`: expected off, prefer or require"
            )),
        }
    }
}

macro_rules! from_str_scalar {
    ($($ty:ty => $expecting:literal),+ $(,)?) => {$(
        impl Scalar for $ty {
            const EXPECTING: &'static str = $expecting;

            fn parse(text: &str) -> Result<Self, String> {
                text.parse()
            }
        }
    )+};
}

from_str_scalar!(
    Protocol => "tcp or udp",
    OnAllDown => "reject or panic",
    Failback => "auto or manual",
    HealthKind => "tcp, http, postgres, mysql, redis or exec",
);

#[cfg(test)]
mod tests {
    use super::*;

    /// `key: message`, as the config reports it.
    fn health(yaml: &str) -> Result<RawHealth, String> {
        super::super::from_yaml(yaml).map_err(|e| {
            match super::super::error::from_saphyr(&e, yaml, "f.yaml".into()) {
                super::super::ConfigError::Invalid { key, message, .. } => {
                    format!("{key}: {message}")
                }
                other => other.to_string(),
            }
        })
    }

    #[test]
    fn expect_status_takes_a_code_a_range_or_a_list() {
        let h = |y| health(y).unwrap().expect_status.unwrap();
        assert_eq!(h("expect_status: 204"), RawStatus::List(vec![204]));
        assert_eq!(h("expect_status: 200-299"), RawStatus::Range(200, 299));
        assert_eq!(
            h("expect_status: [200, 204]"),
            RawStatus::List(vec![200, 204])
        );
        assert!(health("expect_status: ok")
            .unwrap_err()
            .contains("expect_status"));
    }

    #[test]
    fn plain_numbers_reach_the_duration_parser() {
        let err = health("interval: 5").unwrap_err();
        assert!(err.starts_with("interval: invalid duration `5`"), "{err}");
        assert_eq!(
            health("interval: 1m30s").unwrap().interval,
            Some(Parsed(Duration::from_secs(90)))
        );
    }

    #[test]
    fn nameservers_default_to_port_53() {
        assert_eq!(
            Nameserver::parse("127.0.0.53").unwrap().0,
            "127.0.0.53:53".parse().unwrap()
        );
        assert_eq!(
            Nameserver::parse("[::1]:5353").unwrap().0,
            "[::1]:5353".parse().unwrap()
        );
        assert!(Nameserver::parse("dns.example").is_err());
    }

    #[test]
    fn send_escapes_become_bytes() {
        assert_eq!(unescape(r"PING\r\n").unwrap(), b"PING\r\n");
        assert_eq!(unescape(r"a\tb\\c").unwrap(), b"a\tb\\c");
        assert_eq!(unescape(r"\x00\xff\x7F").unwrap(), [0, 0xff, 0x7f]);
        assert_eq!(unescape("é").unwrap(), "é".as_bytes());
        assert_eq!(
            unescape(r"a\q").unwrap_err(),
            r"invalid escape `\q` in `a\q`: write \r, \n, \t, \\ or \xNN"
        );
        assert_eq!(
            unescape(r"\x4").unwrap_err(),
            r"invalid escape `\x4` in `\x4`: \x takes two hex digits, as in \x00"
        );
        assert_eq!(
            unescape(r"\x+1").unwrap_err(),
            r"invalid escape `\x+1` in `\x+1`: \x takes two hex digits, as in \x00"
        );
        assert_eq!(
            unescape("ab\\").unwrap_err(),
            r"`ab\` ends in a lone backslash: write \\ for a backslash"
        );
    }

    #[test]
    fn expect_must_stay_text_once_unescaped() {
        assert_eq!(EscapedText::parse(r"\xc3\xa9").unwrap().0, "é");
        assert!(EscapedText::parse(r"\xff")
            .unwrap_err()
            .contains("is not UTF-8 once unescaped"));
    }

    #[test]
    fn a_bad_regex_says_why_on_one_line() {
        let err = regex::Regex::parse("(a").unwrap_err();
        assert_eq!(err, "invalid regex `(a`: unclosed group");
    }

    #[test]
    fn role_and_tls_are_keywords() {
        assert_eq!(RoleWanted::parse("any").unwrap(), RoleWanted::Any);
        assert_eq!(PgTls::parse("off").unwrap(), PgTls::Off);
        assert_eq!(
            health("tls: off").unwrap().tls,
            Some(Parsed(PgTls::Off)),
            "YAML 1.2: off is a string, not a boolean"
        );
        assert!(RoleWanted::parse("master").is_err());
    }

    #[test]
    fn a_password_key_is_noticed_whatever_its_value() {
        assert!(health("password: hunter2").unwrap().password);
        assert!(health("password:").unwrap().password);
        assert!(!health("user: a").unwrap().password);
    }

    #[test]
    fn a_mapping_where_a_scalar_belongs_says_what_was_expected() {
        let err = health("interval: {a: 1}").unwrap_err();
        assert!(err.contains("expected a duration such as 300ms"), "{err}");
    }
}
