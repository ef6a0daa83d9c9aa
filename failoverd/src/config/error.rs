//! Config errors, and the translation of serde-saphyr's into `file:line:column: key: message`.

use std::{io, path::PathBuf};

use granit_parser::{ErrorKind, ScanError};
use serde_saphyr::ExternalMessageSource;

use super::locate::{join, Locator, Position, Target};

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading config file {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the read returned.
        #[source]
        source: io::Error,
    },
    /// The path names a FIFO, a directory, a device or a socket: refused
    /// without reading, since a FIFO would block the reader until a writer came.
    #[error("reading config file {}: it is {kind}, not a regular file", path.display())]
    NotAFile {
        /// The path.
        path: PathBuf,
        /// What it is instead: `a FIFO`, `a directory`, …
        kind: &'static str,
    },
    /// The file was read but is not a valid configuration; the first problem, in file order.
    #[error("{}:{line}:{column}: {key}: {message}", file.display())]
    Invalid {
        /// The file.
        file: PathBuf,
        /// 1-based line of the offending value (or key).
        line: usize,
        /// 1-based column of the offending value (or key).
        column: usize,
        /// Dotted key path, like `services[0].health.timeout`; `(root)` for the file as a whole.
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// The key path reported for errors about the file as a whole.
pub(super) const ROOT_KEY: &str = "(root)";

/// serde's wording of the keys a struct expects, after `expected`.
fn one_of(names: &[&str]) -> String {
    match names {
        [] => "there are no keys".to_owned(),
        [one] => format!("expected `{one}`"),
        [a, b] => format!("expected `{a}` or `{b}`"),
        _ => {
            let listed: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
            format!("expected one of {}", listed.join(", "))
        }
    }
}

/// Where a syntax error is and what it is, worded as libyaml worded it (the
/// collection being parsed, with its position, after the problem).
fn syntax_error(scan: &ScanError, text: &str, locator: &Locator) -> (Position, String) {
    let mark = scan.marker();
    let mut pos = Position {
        line: mark.line().max(1),
        column: mark.col() + 1,
    };
    let within = |what: &str, sequence: bool| {
        locator
            .open_at_error(sequence)
            .map(|at| {
                format!(
                    ", while parsing {what} at line {} column {}",
                    at.line, at.column
                )
            })
            .unwrap_or_default()
    };
    let message = match scan.kind() {
        ErrorKind::ExpectedBlockSequenceEntry => format!(
            "did not find expected '-' indicator{}",
            within("a block collection", true)
        ),
        ErrorKind::ExpectedBlockMappingKey => {
            format!(
                "did not find expected key{}",
                within("a block mapping", false)
            )
        }
        ErrorKind::UnclosedFlowCollection { .. }
        | ErrorKind::UnexpectedEofFlowSequence
        | ErrorKind::UnexpectedEofFlowMapping
        | ErrorKind::UnexpectedEofImplicitFlowMapping
        | ErrorKind::UnexpectedEofBlockSequence
        | ErrorKind::UnexpectedEofBlockMapping
        | ErrorKind::UnexpectedEof => {
            // The text ended where more was needed: point at its end.
            let lines = text.split('\n').count();
            let last = text.rsplit('\n').next().unwrap_or("");
            pos = Position {
                line: lines,
                column: last.chars().count() + 1,
            };
            let what = match scan.kind() {
                ErrorKind::UnexpectedEofFlowSequence
                | ErrorKind::UnclosedFlowCollection { open: '[' } => {
                    within("a flow sequence", true)
                }
                ErrorKind::UnclosedFlowCollection { .. } => within("a flow mapping", false),
                ErrorKind::UnexpectedEofFlowMapping
                | ErrorKind::UnexpectedEofImplicitFlowMapping => within("a flow mapping", false),
                _ => String::new(),
            };
            format!("did not find expected node content{what}")
        }
        other => other.to_string(),
    };
    (pos, message)
}

/// `invalid type: integer `1`, expected a sequence`, as serde words it.
fn wrong_type(locator: &Locator, pos: Position, expected: &str) -> String {
    match locator.node_at(pos) {
        Some(node) => format!("invalid type: {}, expected {expected}", node.describe()),
        None => format!("invalid value, expected {expected}"),
    }
}

/// The error serde-saphyr reports, without the wrappers that add snippets or
/// the use site of an alias.
fn innermost(mut err: &serde_saphyr::Error) -> &serde_saphyr::Error {
    loop {
        match err {
            serde_saphyr::Error::WithSnippet { error, .. }
            | serde_saphyr::Error::AliasError { error, .. } => err = error,
            other => return other,
        }
    }
}

/// Turns a serde-saphyr error into [`ConfigError::Invalid`], naming the key
/// that is wrong rather than the mapping serde was in.
///
/// The error's variant says what went wrong and its location where; the key
/// path is the node the locator finds at that location. No error text is taken apart.
pub(super) fn from_saphyr(err: &serde_saphyr::Error, text: &str, file: PathBuf) -> ConfigError {
    use serde_saphyr::Error as E;
    let err = innermost(err);
    let locator = Locator::new(text);
    let mut pos = err
        .location()
        .filter(|l| l.line() > 0)
        .map_or(Position::START, |l| Position {
            line: usize::try_from(l.line()).unwrap_or(usize::MAX),
            column: usize::try_from(l.column()).unwrap_or(usize::MAX).max(1),
        });
    let key_at = locator.path_at(pos, Target::Key);
    let value_at = locator.path_at(pos, Target::Value);
    // The mapping a key at `pos` sits in: the parent of the key written there,
    // or else the collection that starts there.
    let mapping = key_at
        .as_deref()
        .and_then(super::locate::parent)
        .map(str::to_owned)
        .or_else(|| value_at.clone())
        .unwrap_or_default();
    let mut key = value_at
        .clone()
        .or_else(|| key_at.clone())
        .unwrap_or_default();
    let message = match err {
        E::SerdeUnknownField {
            field, expected, ..
        } => {
            let parent = mapping;
            // A null key (`? ` alone, `~: 1`) reaches serde as text of its own.
            let null_key = matches!(
                key_at.as_deref().and_then(|_| locator.node_at(pos)),
                Some(super::locate::NodeKind::Scalar { text, quoted: false })
                    if matches!(text.as_str(), "" | "~" | "null")
            ) || field.is_empty();
            let field: &str = if null_key { "" } else { field };
            key = if field.is_empty() {
                parent.clone()
            } else {
                join(&parent, field)
            };
            if locator.contains(&key) {
                pos = locator.find(&key, Target::Key);
            }
            let hint = did_you_mean(field, expected)
                .map(|near| format!(" (did you mean `{near}`?)"))
                .unwrap_or_default();
            let empty = if field.is_empty() {
                " (an empty or null key)"
            } else {
                ""
            };
            format!("unknown key `{field}`{empty}{hint}, {}", one_of(expected))
        }
        E::SerdeMissingField { field, .. } => {
            // A missing key has no position of its own: the mapping is right.
            key = join(value_at.as_deref().unwrap_or(""), field);
            pos = locator.find(&key, Target::Key);
            format!("missing key `{field}`")
        }
        E::DuplicateMappingKey { key: name, .. } => {
            let name = name.clone().unwrap_or_default();
            key = join(&mapping, &name);
            // The second occurrence is the one to delete.
            if let Some(second) = locator.duplicate(&key) {
                pos = second;
            }
            format!("duplicate key `{name}`")
        }
        E::SerdeInvalidType {
            unexpected,
            expected,
            ..
        } => format!("invalid type: {unexpected}, expected {expected}"),
        E::SerdeInvalidValue {
            unexpected,
            expected,
            ..
        } => format!("invalid value: {unexpected}, expected {expected}"),
        E::Message { msg, .. } => msg.clone(),
        E::InvalidBooleanStrict { .. } => wrong_type(&locator, pos, "a boolean"),
        E::InvalidScalar { ty, .. } => {
            let expected = match *ty {
                "boolean" | "bool" => "a boolean",
                other => other,
            };
            wrong_type(&locator, pos, expected)
        }
        E::Unexpected { expected, .. } => {
            let expected = match *expected {
                // A collection where a scalar belongs: say what the key takes.
                "string scalar" => super::raw::take_scalar_expecting().unwrap_or("a string"),
                "sequence start" => "a sequence",
                "mapping start" | "mapping" => "a mapping",
                other => other,
            };
            wrong_type(&locator, pos, expected)
        }
        E::ExternalMessage { source, msg, .. } => {
            key = String::new();
            match &**source {
                ExternalMessageSource::Parser(scan) => {
                    let (at, message) = syntax_error(scan, text, &locator);
                    pos = at;
                    message
                }
                _ => msg.clone(),
            }
        }
        E::MultipleDocuments { .. } => {
            key = String::new();
            if let Some(second) = locator.second_document() {
                pos = second;
            }
            "a config file holds one YAML document; remove this `---` and what follows".to_owned()
        }
        other => other.to_string(),
    };
    if key.is_empty() {
        key = ROOT_KEY.to_owned();
    }
    ConfigError::Invalid {
        file,
        line: pos.line,
        column: pos.column,
        key,
        message,
    }
}

/// The expected key closest to a misspelt one, if one is close.
fn did_you_mean<'a>(unknown: &str, expected: &[&'a str]) -> Option<&'a str> {
    expected
        .iter()
        .map(|&name| (edit_distance(unknown, name), name))
        .filter(|&(d, name)| d <= 2 && d < name.len())
        .min_by_key(|&(d, _)| d)
        .map(|(_, name)| name)
}

/// Levenshtein distance over characters; key names are short.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let substitute = diagonal + usize::from(ca != cb);
            diagonal = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(row[j + 1] + 1);
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invalid(err: ConfigError) -> (usize, usize, String, String) {
        match err {
            ConfigError::Invalid {
                line,
                column,
                key,
                message,
                ..
            } => (line, column, key, message),
            other => panic!("not Invalid: {other}"),
        }
    }

    fn serde_error(yaml: &str) -> (usize, usize, String, String) {
        let err = super::super::from_yaml::<super::super::raw::RawConfig>(yaml).unwrap_err();
        invalid(from_saphyr(&err, yaml, "f.yaml".into()))
    }

    #[test]
    fn unknown_keys_are_named_and_pointed_at() {
        let (line, column, key, message) =
            serde_error("services:\n  - name: a\n    vip: 1.2.3.4:5\n    bogus: 1\n");
        assert_eq!((line, column, key.as_str()), (4, 5, "services[0].bogus"));
        assert!(
            message.starts_with("unknown key `bogus`, expected one of"),
            "{message}"
        );

        let (line, column, key, _) = serde_error("services: []\nbogus: 1\n");
        assert_eq!((line, column, key.as_str()), (2, 1, "bogus"));
    }

    #[test]
    fn a_near_miss_gets_a_suggestion() {
        let (_, _, _, message) =
            serde_error("services:\n  - name: a\n    vip: 1.2.3.4:5\n    helth: {}\n");
        assert!(
            message.starts_with(
                "unknown key `helth` (did you mean `health`?), expected one of `name`"
            ),
            "{message}"
        );
        let (_, _, _, message) = serde_error("services: []\nzzz: 1\n");
        assert!(!message.contains("did you mean"), "{message}");
    }

    #[test]
    fn edit_distance_counts_single_character_edits() {
        assert_eq!(edit_distance("helth", "health"), 1);
        assert_eq!(edit_distance("timout", "timeout"), 1);
        assert_eq!(edit_distance("nmae", "name"), 2);
        assert_eq!(edit_distance("", "vip"), 3);
    }

    #[test]
    fn an_empty_key_names_its_mapping() {
        let (_, _, key, message) = serde_error("? \n");
        assert_eq!(key, ROOT_KEY);
        assert!(
            message.starts_with("unknown key `` (an empty or null key), expected one of"),
            "{message}"
        );
        let (line, column, key, _) =
            serde_error("services:\n  - name: a\n    vip: 1.2.3.4:5\n    \"\": 1\n");
        assert_eq!((line, column, key.as_str()), (2, 5, "services[0]"));
    }

    #[test]
    fn missing_keys_point_at_their_mapping() {
        let (line, column, key, message) = serde_error("services:\n  - name: a\n");
        assert_eq!((line, column, key.as_str()), (2, 5, "services[0].vip"));
        assert_eq!(message, "missing key `vip`");
    }

    #[test]
    fn duplicate_keys_point_at_the_second_one() {
        let (line, column, key, _) =
            serde_error("services:\n  - name: a\n    name: b\n    vip: 1.2.3.4:5\n");
        assert_eq!((line, column, key.as_str()), (3, 5, "services[0].name"));
    }

    #[test]
    fn a_second_document_is_pointed_at() {
        let (line, column, key, _) = serde_error("services: []\n---\nservices: []\n");
        assert_eq!((line, column, key.as_str()), (2, 1, ROOT_KEY));
    }

    #[test]
    fn syntax_errors_name_the_root() {
        let (line, column, key, message) = serde_error("services: [\n");
        assert_eq!((line, column, key.as_str()), (2, 1, ROOT_KEY));
        assert!(
            message.starts_with("did not find expected node content"),
            "{message}"
        );
    }

    #[test]
    fn invalid_displays_file_line_column_key_message() {
        let err = ConfigError::Invalid {
            file: "/etc/failoverd/failoverd.yaml".into(),
            line: 12,
            column: 16,
            key: "services[0].health.timeout".into(),
            message: "timeout 1s must be shorter than interval 1s".into(),
        };
        assert_eq!(
            err.to_string(),
            "/etc/failoverd/failoverd.yaml:12:16: services[0].health.timeout: timeout 1s must be shorter than interval 1s"
        );
    }
}
