//! Configuration: the YAML file, its defaults and its validation.
//!
//! [`load`] reads a file ([`load_async`] off the async workers) and [`parse`]
//! checks text; all return a [`Config`] with every default filled in and
//! `defaults` merged into each service, or the first problem in file order as
//! `file:line:column: key: message`.
//! The keys, their defaults and their rules are listed in `docs/configuration.md`.
//!
//! Checking happens in two passes. serde-saphyr deserializes into structs
//! that refuse unknown keys and parse each scalar (durations, addresses); its
//! errors are typed and carry their position. The rules that relate values to
//! each other (timeout < interval, unique names and VIPs, address families)
//! run afterwards on the deserialized values. For both, a locator built from
//! the spanned events of granit-parser (the parser under serde-saphyr) turns
//! key paths into positions and positions into key paths.

mod address;
mod depth;
mod error;
pub mod fleet;
mod issues;
mod locate;
mod lower;
mod merge;
mod model;
mod passive;
mod raw;
mod read;
mod status;
mod syntax;

use std::path::Path;

pub use address::{AddressError, BackendAddress};
pub use depth::MAX_DEPTH;
pub use error::ConfigError;
pub use model::{
    BackendConfig, BreakerConfig, Config, ControlSection, DatabaseCheckConfig, DatapathSection,
    EtcdSection, EtcdTls, ExecCheckConfig, Failback, FleetSection, HealthConfig, HealthKind,
    HttpCheckConfig, MetricsSection, OnAllDown, PassiveConfig, ResolverSection, ServiceConfig,
    TcpCheckConfig, TerminateConfig, DEFAULT_CONTROL_SOCKET, DEFAULT_FLEET_PREFIX,
    DEFAULT_METRICS_LISTEN, DEFAULT_STATE_DIR, DEFAULT_WEIGHT, MAX_DRAIN_AFTER, MAX_INTERVAL,
    MAX_LAG, MAX_OPEN_FOR, MAX_THRESHOLD, MAX_TTL, MAX_WEIGHT, MIN_INTERVAL,
};
pub use read::{load, load_async, MAX_FILE_SIZE};
pub use status::StatusMatch;
pub use syntax::MAX_NAME_LEN;

/// Checks configuration `text`; `source` is the file it came from, for
/// [`Config::source`] and error messages. Nothing is opened or resolved; the
/// one look at the file system is at each exec check's program
/// ([`crate::health::validate_exec`]), so that a typo there is a located error.
///
/// Text over [`MAX_FILE_SIZE`] or nested deeper than [`MAX_DEPTH`] is refused
/// before it is parsed (both would cost the parsers time or stack out of
/// proportion); a leading byte-order mark is skipped.
pub fn parse(text: &str, source: &Path) -> Result<Config, ConfigError> {
    let root_error = |pos: locate::Position, message: String| ConfigError::Invalid {
        file: source.to_path_buf(),
        line: pos.line,
        column: pos.column,
        key: error::ROOT_KEY.to_owned(),
        message,
    };
    if text.len() as u64 > MAX_FILE_SIZE {
        return Err(root_error(
            locate::Position::START,
            read::too_large_message(text.len() as u64),
        ));
    }
    // Editors on Windows write one; it is not part of the configuration.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if let Some(pos) = depth::too_deep(text) {
        return Err(root_error(
            pos,
            format!(
                "nesting is deeper than {MAX_DEPTH} levels; a failoverd config needs at most 5"
            ),
        ));
    }
    // Nothing left over from an earlier parse on this thread.
    raw::take_scalar_expecting();
    let raw: raw::RawConfig = from_yaml(text).map_err(|e| {
        // The deserializer works on what was parsed before a syntax error, so a
        // mis-indented line could surface as a "missing key" above it. A pass
        // that only parses finds the syntax error itself, which is what to fix.
        let syntax = from_yaml::<serde::de::IgnoredAny>(text).err();
        let e = syntax.unwrap_or(e);
        if matches!(e, serde_saphyr::Error::Eof { .. }) && text.trim().is_empty() {
            // An empty file is an empty mapping: what is missing is `services`.
            if let Err(empty) = from_yaml::<raw::RawConfig>("{}") {
                return error::from_saphyr(&empty, text, source.to_path_buf());
            }
        }
        error::from_saphyr(&e, text, source.to_path_buf())
    })?;
    let mut issues = issues::Issues::default();
    let config = lower::lower(raw, source, &mut issues);
    if issues.is_empty() {
        return Ok(config);
    }
    // Positions are only needed to report, so the second parse happens only then.
    let locator = locate::Locator::new(text);
    match issues.first(&locator) {
        None => Ok(config),
        Some((issue, pos)) => Err(ConfigError::Invalid {
            file: source.to_path_buf(),
            line: pos.line,
            column: pos.column,
            key: issue.path,
            message: issue.message,
        }),
    }
}

/// Deserializes `text` with serde-saphyr, without its node budget: the size
/// and depth checks above bound the work, and a config of 65,536 services has
/// more nodes than the default budget allows.
pub(super) fn from_yaml<'de, T: serde::Deserialize<'de>>(
    text: &'de str,
) -> Result<T, serde_saphyr::Error> {
    let mut options = serde_saphyr::Options::default();
    options.budget = None;
    options.with_snippet = false;
    // A null key (`? ` alone) then reaches the struct as text, which names it as
    // an unknown key and lists the expected ones.
    options.null_as_string = true;
    // YAML 1.2: `yes`, `on` and `off` are text; a boolean is `true` or `false`.
    options.strict_booleans = true;
    serde_saphyr::from_str_with_options(text, options)
}

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod tests;
