//! `health` and `breaker`: a service's keys over `defaults`' keys over the
//! built-in defaults, key by key, and the rules that apply to the result.
//!
//! Each value is checked where it is written, so an error in
//! `defaults.health.timeout` points there and not at every service that
//! inherits it. A rule that relates two keys (timeout < interval) is checked on
//! the merged result and reported at the most specific section that wrote one of them.

use std::time::Duration;

use humantime::format_duration;

use super::{
    issues::Issues,
    locate::join,
    model::{MAX_INTERVAL, MAX_LAG, MAX_OPEN_FOR, MAX_THRESHOLD, MIN_INTERVAL},
    raw::{RawBreaker, RawHealth, RawStatus},
    BreakerConfig, DatabaseCheckConfig, ExecCheckConfig, HealthConfig, HealthKind, HttpCheckConfig,
    StatusMatch, TcpCheckConfig,
};
use crate::health::{Expect, RoleWanted};

/// One `health` or `breaker` mapping and its key path.
pub(super) struct Section<'a, R> {
    pub raw: &'a R,
    pub path: &'a str,
}

// Derived Copy would demand `R: Copy`; only references are copied.
impl<R> Clone for Section<'_, R> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<R> Copy for Section<'_, R> {}

/// Which section is being merged: its own keys come first.
pub(super) enum Scope<'a, R> {
    /// `defaults.health` or `defaults.breaker`, over the built-in defaults.
    Defaults(Section<'a, R>),
    /// A service's section (if it has one) over `defaults` (if given).
    Service {
        own: Option<Section<'a, R>>,
        inherited: Option<Section<'a, R>>,
        /// Where the service's section is or would be written: a required key
        /// missing from it is reported there.
        at: &'a str,
    },
}

impl<R> Clone for Scope<'_, R> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<R> Copy for Scope<'_, R> {}

/// A merged value and the key path that set it (`None`: the built-in default).
pub(super) struct Merged<T> {
    pub value: T,
    pub from: Option<String>,
}

impl<'a, R> Scope<'a, R> {
    pub(super) fn own(&self) -> Option<Section<'a, R>> {
        match *self {
            Scope::Defaults(s) => Some(s),
            Scope::Service { own, .. } => own,
        }
    }

    pub(super) fn get<T>(
        &self,
        key: &str,
        field: impl Fn(&'a R) -> Option<T>,
        builtin: T,
    ) -> Merged<T> {
        let inherited = match *self {
            Scope::Defaults(_) => None,
            Scope::Service { inherited, .. } => inherited,
        };
        for section in [self.own(), inherited].into_iter().flatten() {
            if let Some(value) = field(section.raw) {
                return Merged {
                    value,
                    from: Some(join(section.path, key)),
                };
            }
        }
        Merged {
            value: builtin,
            from: None,
        }
    }

    /// Where a value came from, when this scope did not write it: a message
    /// about an inherited value says where to find it.
    fn note<T>(&self, m: &Merged<T>) -> String {
        match &m.from {
            _ if self.wrote(m) => String::new(),
            Some(path) => format!(" (from {path})"),
            None => " (the built-in default)".to_owned(),
        }
    }

    /// Whether this scope's own section wrote the value, i.e. a rule broken by it is this scope's to report.
    fn wrote<T>(&self, m: &Merged<T>) -> bool {
        let own = self.own().map(|s| s.path);
        match (own, &m.from) {
            (Some(own), Some(from)) => from.strip_prefix(own).is_some_and(|k| k.starts_with('.')),
            _ => false,
        }
    }
}

fn dur(d: Duration) -> String {
    format_duration(d).to_string()
}

/// The message for a duration above its key's maximum.
pub(super) fn longer_than_max(key: &str, value: Duration, max: Duration) -> String {
    format!(
        "{key} {} is longer than the maximum of {}",
        dur(value),
        dur(max)
    )
}

/// The message for a count above [`MAX_THRESHOLD`].
pub(super) fn more_than_max(key: &str, value: u32) -> String {
    format!("{key} {value} is more than the maximum of {MAX_THRESHOLD}")
}

/// Checks and merges `health`; the result is meaningful only if no issue was added.
pub(super) fn health(scope: Scope<'_, RawHealth>, issues: &mut Issues) -> HealthConfig {
    let builtin = HealthConfig::default();
    if let Some(own) = scope.own() {
        check_health_values(own, issues);
    }
    let kind = scope.get("kind", |h| h.kind.as_ref().map(|k| k.0), builtin.kind);
    let interval = scope.get(
        "interval",
        |h| h.interval.as_ref().map(|d| d.0),
        builtin.interval,
    );
    let timeout = scope.get(
        "timeout",
        |h| h.timeout.as_ref().map(|d| d.0),
        builtin.timeout,
    );

    if timeout.value >= interval.value && (scope.wrote(&timeout) || scope.wrote(&interval)) {
        let at = if scope.wrote(&timeout) {
            &timeout.from
        } else {
            &interval.from
        };
        let (t_note, i_note) = (scope.note(&timeout), scope.note(&interval));
        issues.value(
            at.clone().unwrap_or_default(),
            format!(
                "timeout {}{t_note} must be shorter than interval {}{i_note}",
                dur(timeout.value),
                dur(interval.value)
            ),
        );
    }

    if let Scope::Service { own: Some(own), .. } = scope {
        // In `defaults` every kind's keys are fine: each serves the services of its kind.
        for key in written_keys(own.raw) {
            let Some(kinds) = kinds_of(key).filter(|k| !k.contains(&kind.value)) else {
                continue;
            };
            let why = scope.note(&kind);
            let hint = match (key, kind.value) {
                ("user", HealthKind::Redis) => "; a redis check names its ACL user with username",
                ("username", HealthKind::Postgres | HealthKind::Mysql) => {
                    "; postgres and mysql checks name their login with user"
                }
                _ => "",
            };
            issues.key(
                join(own.path, key),
                format!(
                    "{key} applies to {} checks only, and this check's kind is {}{why}{hint}",
                    kinds_words(kinds),
                    kind.value
                ),
            );
        }
    }

    let http = match kind.value {
        // Another kind carries the http defaults, so that an http key in
        // `defaults` does not make two tcp services look different.
        HealthKind::Http => {
            let d = HttpCheckConfig::default();
            HttpCheckConfig {
                path: scope.get("path", |h| h.path.clone(), d.path).value,
                host: scope
                    .get("host", |h| h.host.clone().map(Some), d.host)
                    .value,
                expect_status: scope
                    .get(
                        "expect_status",
                        |h| h.expect_status.as_ref().map(to_status_match),
                        d.expect_status,
                    )
                    .value,
                expect_body: scope
                    .get(
                        "expect_body",
                        |h| h.expect_body.clone().map(Some),
                        d.expect_body,
                    )
                    .value,
            }
        }
        _ => HttpCheckConfig::default(),
    };
    let tcp = match kind.value {
        HealthKind::Tcp => tcp_check(scope, &kind, issues),
        _ => TcpCheckConfig::default(),
    };
    let db = if kind.value.has_role() {
        db_check(scope, kind.value, issues)
    } else {
        DatabaseCheckConfig::default()
    };
    let exec = match kind.value {
        HealthKind::Exec => exec_check(scope, &kind, issues),
        _ => ExecCheckConfig::default(),
    };

    HealthConfig {
        kind: kind.value,
        interval: interval.value,
        timeout: timeout.value,
        rise: scope.get("rise", |h| h.rise, builtin.rise).value,
        fall: scope.get("fall", |h| h.fall, builtin.fall).value,
        port: scope.get("port", |h| h.port.map(Some), builtin.port).value,
        http,
        tcp,
        db,
        exec,
    }
}

/// The keys of `health` that belong to some kinds only, and those kinds.
const KIND_KEYS: &[(&str, &[HealthKind])] = {
    use HealthKind::{Exec, Http, Mysql, Postgres, Redis, Tcp};
    &[
        ("path", &[Http]),
        ("host", &[Http]),
        ("expect_status", &[Http]),
        ("expect_body", &[Http]),
        ("send", &[Tcp]),
        ("expect", &[Tcp]),
        ("expect_regex", &[Tcp]),
        ("role", &[Postgres, Mysql, Redis]),
        ("user", &[Postgres, Mysql]),
        ("database", &[Postgres, Mysql]),
        ("password_file", &[Postgres, Mysql, Redis]),
        ("max_lag", &[Postgres, Mysql, Redis]),
        ("tls", &[Postgres]),
        ("username", &[Redis]),
        ("command", &[Exec]),
        ("env", &[Exec]),
    ]
};

fn kinds_of(key: &str) -> Option<&'static [HealthKind]> {
    KIND_KEYS
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(_, kinds)| *kinds)
}

/// `http`, `postgres and mysql`, `postgres, mysql and redis`.
fn kinds_words(kinds: &[HealthKind]) -> String {
    let words: Vec<String> = kinds.iter().map(ToString::to_string).collect();
    match words.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} and {last}", rest.join(", ")),
        _ => words.concat(),
    }
}

/// The kind-specific keys a section writes, in [`KIND_KEYS`] order.
fn written_keys(h: &RawHealth) -> Vec<&'static str> {
    let written = [
        h.path.is_some(),
        h.host.is_some(),
        h.expect_status.is_some(),
        h.expect_body.is_some(),
        h.send.is_some(),
        h.expect.is_some(),
        h.expect_regex.is_some(),
        h.role.is_some(),
        h.user.is_some(),
        h.database.is_some(),
        h.password_file.is_some(),
        h.max_lag.is_some(),
        h.tls.is_some(),
        h.username.is_some(),
        h.command.is_some(),
        h.env.is_some(),
    ];
    KIND_KEYS
        .iter()
        .zip(written)
        .filter_map(|((key, _), is_set)| is_set.then_some(*key))
        .collect()
}

/// What a section's `expect` or `expect_regex` says; a section writing both is refused
/// where it is written.
fn expect_of(h: &RawHealth) -> Option<Expect> {
    match (&h.expect, &h.expect_regex) {
        (Some(text), _) => Some(Expect::Substring(text.0 .0.clone())),
        (None, Some(re)) => Some(Expect::Regex(re.0.clone())),
        (None, None) => None,
    }
}

/// `send` and `expect`/`expect_regex`. The two expect keys are one choice: a
/// service that writes either replaces whichever `defaults` wrote.
fn tcp_check(
    scope: Scope<'_, RawHealth>,
    kind: &Merged<HealthKind>,
    issues: &mut Issues,
) -> TcpCheckConfig {
    let send = scope.get(
        "send",
        |h| h.send.as_ref().map(|s| s.0 .0.clone()),
        Vec::new(),
    );
    let expect = scope.get("expect", |h| expect_of(h).map(Some), None);
    if !send.value.is_empty() && expect.value.is_none() && (scope.wrote(&send) || scope.wrote(kind))
    {
        let at = if scope.wrote(&send) {
            send.from.clone()
        } else {
            kind.from.clone()
        };
        issues.value(
            at.unwrap_or_default(),
            format!(
                "send{} needs expect or expect_regex: without one the reply is not looked at",
                scope.note(&send)
            ),
        );
    }
    TcpCheckConfig {
        send: send.value,
        expect: expect.value,
    }
}

fn db_check(
    scope: Scope<'_, RawHealth>,
    kind: HealthKind,
    issues: &mut Issues,
) -> DatabaseCheckConfig {
    let d = DatabaseCheckConfig::default();
    let role = scope.get("role", |h| h.role.as_ref().map(|r| r.0), d.role);
    let max_lag = scope.get(
        "max_lag",
        |h| h.max_lag.as_ref().map(|l| Some(l.0)),
        d.max_lag,
    );
    if role.value == RoleWanted::Primary && max_lag.value.is_some() {
        // Only what the service wrote: a `defaults` max_lag serves its replica checks.
        if let (Scope::Service { .. }, true) = (scope, scope.wrote(&max_lag)) {
            issues.key(
                max_lag.from.clone().unwrap_or_default(),
                format!(
                    "max_lag applies to role replica or any, and this check's role is primary{}: a primary has no lag",
                    scope.note(&role)
                ),
            );
        }
    }
    let with = |key: &str| kinds_of(key).is_some_and(|k| k.contains(&kind));
    DatabaseCheckConfig {
        role: role.value,
        user: with("user")
            .then(|| scope.get("user", |h| h.user.clone().map(Some), None))
            .and_then(|m| m.value),
        username: with("username")
            .then(|| scope.get("username", |h| h.username.clone().map(Some), None))
            .and_then(|m| m.value),
        database: with("database")
            .then(|| scope.get("database", |h| h.database.clone().map(Some), None))
            .and_then(|m| m.value),
        password_file: scope
            .get(
                "password_file",
                |h| h.password_file.clone().map(Some),
                d.password_file,
            )
            .value,
        max_lag: max_lag.value,
        tls: if with("tls") {
            scope
                .get("tls", |h| h.tls.as_ref().map(|t| t.0), d.tls)
                .value
        } else {
            d.tls
        },
    }
}

fn exec_check(
    scope: Scope<'_, RawHealth>,
    kind: &Merged<HealthKind>,
    issues: &mut Issues,
) -> ExecCheckConfig {
    let command = scope.get("command", |h| h.command.clone(), Vec::new());
    if let Scope::Service { at, .. } = scope {
        // `defaults` may set kind exec and leave each service its own command.
        if command.from.is_none() {
            issues.value(
                join(at, "command"),
                format!(
                    "an exec check needs command: [path, args...]; this check's kind is exec{}",
                    scope.note(kind)
                ),
            );
        }
    }
    ExecCheckConfig {
        command: command.value,
        env: scope
            .get(
                "env",
                |h| {
                    h.env
                        .as_ref()
                        .map(|e| e.0.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                },
                Vec::new(),
            )
            .value,
    }
}

/// The rules one written `health` value must follow on its own.
fn check_health_values(s: Section<'_, RawHealth>, issues: &mut Issues) {
    let at = |key| join(s.path, key);
    let h = s.raw;
    if let Some(interval) = &h.interval {
        if interval.0 < MIN_INTERVAL {
            issues.value(
                at("interval"),
                format!(
                    "interval {} is shorter than the minimum of {}",
                    dur(interval.0),
                    dur(MIN_INTERVAL)
                ),
            );
        }
    }
    if let Some(interval) = h.interval.as_ref().filter(|i| i.0 > MAX_INTERVAL) {
        issues.value(
            at("interval"),
            longer_than_max("interval", interval.0, MAX_INTERVAL),
        );
    }
    if h.timeout.as_ref().is_some_and(|t| t.0.is_zero()) {
        issues.value(at("timeout"), "timeout must be longer than zero");
    }
    if let Some(timeout) = h.timeout.as_ref().filter(|t| t.0 > MAX_INTERVAL) {
        issues.value(
            at("timeout"),
            longer_than_max("timeout", timeout.0, MAX_INTERVAL),
        );
    }
    if h.rise == Some(0) {
        issues.value(
            at("rise"),
            "rise must be at least 1 (successes that mark a backend up)",
        );
    }
    if h.fall == Some(0) {
        issues.value(
            at("fall"),
            "fall must be at least 1 (failures that mark a backend down)",
        );
    }
    for (key, value) in [("rise", h.rise), ("fall", h.fall)] {
        if let Some(n) = value.filter(|&n| n > MAX_THRESHOLD) {
            issues.value(at(key), more_than_max(key, n));
        }
    }
    if h.port == Some(0) {
        issues.value(
            at("port"),
            "port 0 cannot be probed; give 1 to 65535 or leave the key out",
        );
    }
    if let Some(path) = &h.path {
        if let Err(message) = check_request_path(path) {
            issues.value(at("path"), message);
        }
    }
    if let Some(host) = &h.host {
        if let Err(message) = check_host_header(host) {
            issues.value(at("host"), message);
        }
    }
    if let Some(status) = &h.expect_status {
        check_status(status, &at("expect_status"), issues);
    }
    if h.expect_body.as_deref() == Some("") {
        issues.value(
            at("expect_body"),
            "expect_body is empty, which every body contains; leave the key out instead",
        );
    }
    check_role_values(s, issues);
    check_tcp_values(s, issues);
    check_exec_values(s, issues);
}

/// The values of the send/expect keys.
fn check_tcp_values(s: Section<'_, RawHealth>, issues: &mut Issues) {
    let at = |key| join(s.path, key);
    let h = s.raw;
    if h.send.as_ref().is_some_and(|b| b.0 .0.is_empty()) {
        issues.value(
            at("send"),
            "send is empty; leave the key out for a server that speaks first",
        );
    }
    if h.expect.as_ref().is_some_and(|t| t.0 .0.is_empty()) {
        issues.value(
            at("expect"),
            "expect is empty, which every reply contains; give the text the reply must contain",
        );
    }
    if let Some(re) = &h.expect_regex {
        if h.expect.is_some() {
            issues.key(at("expect_regex"), "give expect or expect_regex, not both");
        } else if re.0.is_match("") {
            issues.value(
                at("expect_regex"),
                format!(
                    "expect_regex `{}` matches an empty reply, so every reply (even none) would pass",
                    re.0.as_str().escape_debug()
                ),
            );
        }
    }
}

/// The values of the role-aware checks' keys.
fn check_role_values(s: Section<'_, RawHealth>, issues: &mut Issues) {
    let at = |key| join(s.path, key);
    let h = s.raw;
    if h.password {
        issues.key(
            at("password"),
            "an inline password is not accepted: put it in a file only failoverd's user can read and name that file with password_file",
        );
    }
    for (key, value) in [
        ("user", &h.user),
        ("username", &h.username),
        ("database", &h.database),
    ] {
        let Some(value) = value else { continue };
        if value.is_empty() {
            issues.value(
                at(key),
                format!("{key} is empty; leave the key out for the default"),
            );
        } else if let Some(c) = control_char(value) {
            issues.value(
                at(key),
                format!(
                    "{key} `{}` contains the control character `{c}`",
                    value.escape_debug()
                ),
            );
        }
    }
    if let Some(path) = h.password_file.as_ref().filter(|p| !p.is_absolute()) {
        issues.value(
            at("password_file"),
            format!(
                "password_file `{}` must be an absolute path",
                path.display()
            ),
        );
    }
    if let Some(lag) = &h.max_lag {
        if lag.0.is_zero() {
            issues.value(at("max_lag"), "max_lag must be longer than zero");
        } else if lag.0 > MAX_LAG {
            issues.value(at("max_lag"), longer_than_max("max_lag", lag.0, MAX_LAG));
        }
    }
}

/// The values of the exec keys: the program must be runnable now, so that a typo
/// is this error instead of a probe that always fails.
fn check_exec_values(s: Section<'_, RawHealth>, issues: &mut Issues) {
    let at = |key: &str| join(s.path, key);
    if let Some(command) = &s.raw.command {
        match command.first() {
            None => issues.value(
                at("command"),
                "command is empty: give [path, args...], the path absolute",
            ),
            Some(program) => {
                if let Err(e) = crate::health::validate_exec(std::path::Path::new(program)) {
                    let cause =
                        std::error::Error::source(&e).map_or(String::new(), |c| format!(" ({c})"));
                    issues.value(at("command[0]"), format!("{e}{cause}"));
                }
            }
        }
        for (i, arg) in command.iter().enumerate() {
            if arg.contains('\0') {
                issues.value(
                    at(&format!("command[{i}]")),
                    "a NUL byte cannot be passed to a program",
                );
            }
        }
    }
    for (name, value) in s.raw.env.iter().flat_map(|e| &e.0) {
        let valid = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            issues.key(
                at(&format!("env.{name}")),
                format!(
                    "`{}` is not an environment variable name: letters, digits and _, not starting with a digit",
                    name.escape_debug()
                ),
            );
        } else if value.contains('\0') {
            issues.value(
                at(&format!("env.{name}")),
                "a NUL byte cannot be passed in the environment",
            );
        }
    }
}

/// The first control character in `text`, shown escaped: CR and LF would end
/// the request line or header early and let the rest pass as another header.
fn control_char(text: &str) -> Option<String> {
    text.chars()
        .find(|c| c.is_control())
        .map(|c| c.escape_default().to_string())
}

/// An http check's `path`: what the probe can send as its request target.
fn check_request_path(path: &str) -> Result<(), String> {
    let shown = path.escape_debug();
    if let Some(c) = control_char(path) {
        return Err(format!(
            "path `{shown}` contains the control character `{c}`, which cannot be sent in a request line"
        ));
    }
    if !path.starts_with('/') {
        return Err(format!("path `{shown}` must start with /"));
    }
    if path.contains(char::is_whitespace) {
        return Err(format!(
            "path `{shown}` contains a space; percent-encode it as %20"
        ));
    }
    // The probe builds its request from the path: what the http crate refuses
    // there would fail every probe, and the backend would look down.
    hyper::http::uri::PathAndQuery::try_from(path)
        .map(drop)
        .map_err(|e| format!("path `{shown}` is not a valid request target: {e}"))
}

/// An http check's `host`: a Host header value with no room for a second header.
fn check_host_header(host: &str) -> Result<(), String> {
    let shown = host.escape_debug();
    if let Some(c) = control_char(host) {
        return Err(format!(
            "host `{shown}` contains the control character `{c}`, which cannot be sent in a header"
        ));
    }
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(format!(
            "host `{shown}` is not a valid Host header (empty, or spaces inside)"
        ));
    }
    hyper::header::HeaderValue::from_str(host)
        .map(drop)
        .map_err(|e| format!("host `{shown}` is not a valid Host header: {e}"))
}

fn check_status(status: &RawStatus, path: &str, issues: &mut Issues) {
    let valid = |code: u32| (100..=599).contains(&code);
    match status {
        RawStatus::List(codes) if codes.is_empty() => {
            issues.value(path, "expect_status must list at least one code");
        }
        RawStatus::List(codes) => {
            for (i, &code) in codes.iter().enumerate() {
                if !valid(code) {
                    // A single code written without brackets has no `[0]`;
                    // the locator then falls back to `expect_status` itself.
                    issues.value(
                        format!("{path}[{i}]"),
                        format!("status code {code} is not an HTTP status (100 to 599)"),
                    );
                }
            }
        }
        RawStatus::Range(lo, hi) => {
            if !valid(*lo) || !valid(*hi) || lo > hi {
                issues.value(
                    path,
                    format!("status range {lo}-{hi} must run upwards within 100 to 599"),
                );
            }
        }
    }
}

fn to_status_match(status: &RawStatus) -> StatusMatch {
    // Only reached with codes already checked to be 100..=599.
    let code = |c: u32| u16::try_from(c).unwrap_or(u16::MAX);
    match status {
        RawStatus::Range(lo, hi) => StatusMatch::Range(code(*lo), code(*hi)),
        RawStatus::List(codes) => StatusMatch::List(codes.iter().map(|&c| code(c)).collect()),
    }
}

/// Checks and merges `breaker`; the result is meaningful only if no issue was added.
pub(super) fn breaker(scope: Scope<'_, RawBreaker>, issues: &mut Issues) -> BreakerConfig {
    let builtin = BreakerConfig::default();
    if let Some(own) = scope.own() {
        check_breaker_values(own, issues);
    }
    let open_for = scope.get(
        "open_for",
        |b| b.open_for.as_ref().map(|d| d.0),
        builtin.open_for,
    );
    let max_open_for = scope.get(
        "max_open_for",
        |b| b.max_open_for.as_ref().map(|d| d.0),
        builtin.max_open_for,
    );
    if max_open_for.value < open_for.value && (scope.wrote(&open_for) || scope.wrote(&max_open_for))
    {
        let at = if scope.wrote(&max_open_for) {
            &max_open_for.from
        } else {
            &open_for.from
        };
        let (max_note, open_note) = (scope.note(&max_open_for), scope.note(&open_for));
        issues.value(
            at.clone().unwrap_or_default(),
            format!(
                "max_open_for {}{max_note} must not be shorter than open_for {}{open_note}",
                dur(max_open_for.value),
                dur(open_for.value)
            ),
        );
    }
    let percent = scope.get(
        "max_ejected_percent",
        |b| b.max_ejected_percent,
        u32::from(builtin.max_ejected_percent),
    );
    BreakerConfig {
        failures: scope
            .get("failures", |b| b.failures, builtin.failures)
            .value,
        open_for: open_for.value,
        max_open_for: max_open_for.value,
        max_ejected_percent: u8::try_from(percent.value).unwrap_or(u8::MAX),
    }
}

fn check_breaker_values(s: Section<'_, RawBreaker>, issues: &mut Issues) {
    let at = |key| join(s.path, key);
    let b = s.raw;
    if b.failures == Some(0) {
        issues.value(at("failures"), "failures must be at least 1");
    }
    if let Some(n) = b.failures.filter(|&n| n > MAX_THRESHOLD) {
        issues.value(at("failures"), more_than_max("failures", n));
    }
    if b.open_for.as_ref().is_some_and(|d| d.0.is_zero()) {
        issues.value(at("open_for"), "open_for must be longer than zero");
    }
    for (key, value) in [("open_for", &b.open_for), ("max_open_for", &b.max_open_for)] {
        if let Some(d) = value.as_ref().filter(|d| d.0 > MAX_OPEN_FOR) {
            issues.value(at(key), longer_than_max(key, d.0, MAX_OPEN_FOR));
        }
    }
    if let Some(p) = b.max_ejected_percent.filter(|&p| p > 100) {
        issues.value(
            at("max_ejected_percent"),
            format!("max_ejected_percent {p} is more than 100"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw_health(yaml: &str) -> RawHealth {
        serde_saphyr::from_str(yaml).unwrap()
    }

    fn raw_breaker(yaml: &str) -> RawBreaker {
        serde_saphyr::from_str(yaml).unwrap()
    }

    fn merged_health(
        own: Option<&RawHealth>,
        defaults: Option<&RawHealth>,
    ) -> (HealthConfig, Issues) {
        let mut issues = Issues::default();
        let scope = Scope::Service {
            own: own.map(|raw| Section {
                raw,
                path: "services[0].health",
            }),
            inherited: defaults.map(|raw| Section {
                raw,
                path: "defaults.health",
            }),
            at: "services[0].health",
        };
        (health(scope, &mut issues), issues)
    }

    fn only_issue(issues: Issues) -> (String, String) {
        let locator = super::super::locate::Locator::new("");
        let (issue, _) = issues.first(&locator).expect("an issue");
        (issue.path, issue.message)
    }

    #[test]
    fn nothing_written_gives_the_built_in_defaults() {
        let (h, issues) = merged_health(None, None);
        assert!(issues.is_empty());
        assert_eq!(h, HealthConfig::default());
        let mut issues = Issues::default();
        let b = breaker(
            Scope::Service {
                own: None,
                inherited: None,
                at: "services[0].breaker",
            },
            &mut issues,
        );
        assert_eq!(b, BreakerConfig::default());
    }

    #[test]
    fn service_keys_beat_defaults_keys_beat_built_ins() {
        let defaults = raw_health("{ kind: http, interval: 2s, timeout: 1s, path: /healthz }");
        let own = raw_health("{ interval: 5s, expect_status: [204] }");
        let (h, issues) = merged_health(Some(&own), Some(&defaults));
        assert!(issues.is_empty());
        assert_eq!(h.kind, HealthKind::Http); // from defaults
        assert_eq!(h.interval, Duration::from_secs(5)); // own
        assert_eq!(h.timeout, Duration::from_secs(1)); // defaults
        assert_eq!(h.rise, 2); // built-in
        assert_eq!(h.http.path, "/healthz"); // defaults
        assert_eq!(h.http.expect_status, StatusMatch::List(vec![204])); // own
    }

    #[test]
    fn breaker_keys_merge_the_same_way() {
        let defaults = raw_breaker("{ failures: 3, open_for: 30s }");
        let own = raw_breaker("{ failures: 7 }");
        let mut issues = Issues::default();
        let b = breaker(
            Scope::Service {
                own: Some(Section {
                    raw: &own,
                    path: "services[0].breaker",
                }),
                inherited: Some(Section {
                    raw: &defaults,
                    path: "defaults.breaker",
                }),
                at: "services[0].breaker",
            },
            &mut issues,
        );
        assert!(issues.is_empty());
        assert_eq!(b.failures, 7);
        assert_eq!(b.open_for, Duration::from_secs(30));
        assert_eq!(b.max_open_for, Duration::from_secs(300));
        assert_eq!(b.max_ejected_percent, 50);
    }

    #[test]
    fn timeout_not_below_interval_is_reported_at_the_service_key() {
        let own = raw_health("{ interval: 500ms, timeout: 500ms }");
        let (path, message) = only_issue(merged_health(Some(&own), None).1);
        assert_eq!(path, "services[0].health.timeout");
        assert_eq!(message, "timeout 500ms must be shorter than interval 500ms");
    }

    #[test]
    fn an_inherited_value_is_named_in_the_message() {
        let defaults = raw_health("{ timeout: 800ms }");
        let own = raw_health("{ interval: 500ms }");
        let (path, message) = only_issue(merged_health(Some(&own), Some(&defaults)).1);
        assert_eq!(path, "services[0].health.interval");
        assert_eq!(
            message,
            "timeout 800ms (from defaults.health.timeout) must be shorter than interval 500ms"
        );
    }

    #[test]
    fn a_rule_broken_only_by_defaults_is_reported_once_at_defaults() {
        let defaults = raw_health("{ timeout: 2s }");
        let (_, issues) = merged_health(None, Some(&defaults));
        assert!(issues.is_empty(), "the service inherits, it did not write");
        let mut issues = Issues::default();
        health(
            Scope::Defaults(Section {
                raw: &defaults,
                path: "defaults.health",
            }),
            &mut issues,
        );
        let (path, message) = only_issue(issues);
        assert_eq!(path, "defaults.health.timeout");
        assert_eq!(
            message,
            "timeout 2s must be shorter than interval 1s (the built-in default)"
        );
    }

    #[test]
    fn http_keys_on_a_tcp_check_are_refused_in_services_only() {
        let own = raw_health("{ path: /x }");
        let (path, message) = only_issue(merged_health(Some(&own), None).1);
        assert_eq!(path, "services[0].health.path");
        assert!(
            message.contains("kind is tcp (the built-in default)"),
            "{message}"
        );

        let defaults = raw_health("{ path: /x }");
        let (h, issues) = merged_health(None, Some(&defaults));
        assert!(issues.is_empty());
        assert_eq!(h.http, HttpCheckConfig::default());
    }

    #[test]
    fn out_of_range_status_codes_are_pointed_at_by_index() {
        let own = raw_health("{ kind: http, expect_status: [200, 700] }");
        let (path, message) = only_issue(merged_health(Some(&own), None).1);
        assert_eq!(path, "services[0].health.expect_status[1]");
        assert_eq!(
            message,
            "status code 700 is not an HTTP status (100 to 599)"
        );
    }

    #[test]
    fn max_open_for_below_open_for_is_refused() {
        let own = raw_breaker("{ open_for: 10m }");
        let mut issues = Issues::default();
        breaker(
            Scope::Service {
                own: Some(Section {
                    raw: &own,
                    path: "services[0].breaker",
                }),
                inherited: None,
                at: "services[0].breaker",
            },
            &mut issues,
        );
        let (path, message) = only_issue(issues);
        assert_eq!(path, "services[0].breaker.open_for");
        assert_eq!(
            message,
            "max_open_for 5m (the built-in default) must not be shorter than open_for 10m"
        );
    }
}
