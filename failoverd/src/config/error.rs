//! Config errors, and the translation of serde_yaml_ng's into `file:line:column: key: message`.

use std::{io, path::PathBuf};

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

/// serde_yaml_ng's error text, taken apart.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct SerdeMessage {
    /// The key path serde was at, `None` at the root or for syntax errors.
    pub path: Option<String>,
    /// The message without path and position.
    pub message: String,
}

/// Splits serde_yaml_ng's `path: message at line L column C` into its parts.
///
/// `line` and `column` are the error's own location: the position text is
/// removed only where it matches them, so a message that happens to contain
/// similar words is left alone. Syntax errors (`problem at line L column C,
/// context`) carry no path and keep their context.
pub(super) fn split_serde_message(text: &str, line: usize, column: usize) -> SerdeMessage {
    let at = format!(" at line {line} column {column}");
    let text = match text.strip_suffix(&at) {
        Some(rest) => rest.to_owned(),
        None => text.replacen(&at, "", 1),
    };
    match path_prefix_len(&text) {
        Some(len) => SerdeMessage {
            path: Some(text[..len].to_owned()),
            message: text[len + 2..].to_owned(),
        },
        None => SerdeMessage {
            path: None,
            message: text,
        },
    }
}

/// Length of a leading key path followed by `: `, if there is one.
///
/// A path is what serde_yaml_ng writes: segments of key characters joined by
/// `.`, each optionally followed by `[index]`; `?` stands for an unknown key.
/// Messages that open with ordinary words ("invalid type: …") do not match,
/// because a path never contains a space.
fn path_prefix_len(text: &str) -> Option<usize> {
    let end = text.find(": ")?;
    let path = &text[..end];
    let well_formed = !path.is_empty()
        && path.split('.').all(|segment| {
            let name_len = segment.find('[').unwrap_or(segment.len());
            let (name, mut indexes) = segment.split_at(name_len);
            let name_ok = name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '?'));
            while let Some(rest) = indexes.strip_prefix('[') {
                let Some(close) = rest.find(']') else {
                    return false;
                };
                if close == 0 || !rest[..close].chars().all(|c| c.is_ascii_digit()) {
                    return false;
                }
                indexes = &rest[close + 1..];
            }
            name_ok && indexes.is_empty() && !segment.is_empty()
        });
    well_formed.then_some(end)
}

/// Turns a serde_yaml_ng error into [`ConfigError::Invalid`], naming the key
/// that is wrong rather than the mapping serde was in.
pub(super) fn from_serde(err: &serde_yaml_ng::Error, text: &str, file: PathBuf) -> ConfigError {
    let serde_pos = err.location().map_or(Position::START, |l| Position {
        line: l.line(),
        column: l.column(),
    });
    let split = split_serde_message(&err.to_string(), serde_pos.line, serde_pos.column);
    let parent = split.path.as_deref().unwrap_or("");
    let mut key = split.path.clone().unwrap_or_else(|| ROOT_KEY.to_owned());
    let mut message = split.message;
    let mut pos = serde_pos;

    // Unknown, missing and duplicate keys are reported by serde at the mapping
    // they are in; the key itself is what the reader has to fix.
    for (serde_word, ours) in [
        ("unknown field `", "unknown key `"),
        ("missing field `", "missing key `"),
        ("duplicate field `", "duplicate key `"),
    ] {
        let Some(rest) = message.strip_prefix(serde_word) else {
            continue;
        };
        let Some(name_end) = rest.find('`') else {
            continue;
        };
        let name = &rest[..name_end];
        // An empty or null key (`? ` alone, `"": 1`) has no segment of its
        // own: the mapping it is in is what to point at and name.
        key = match (name.is_empty(), parent.is_empty()) {
            (false, _) => join(parent, name),
            (true, false) => parent.to_owned(),
            (true, true) => ROOT_KEY.to_owned(),
        };
        let locator = Locator::new(text);
        let better = match ours {
            // serde points at the root mapping for an unknown top-level key.
            "unknown key `" => locator
                .contains(&key)
                .then(|| locator.find(&key, Target::Key)),
            // serde points at the mapping; the second occurrence is the one to delete.
            "duplicate key `" => locator.duplicate(&key),
            // A missing key has no position of its own: the mapping is right.
            _ => None,
        };
        pos = better.unwrap_or(pos);
        let hint = match ours {
            "unknown key `" => did_you_mean(&rest[..name_end], rest)
                .map(|near| format!(" (did you mean `{near}`?)"))
                .unwrap_or_default(),
            _ => String::new(),
        };
        let empty = if name.is_empty() {
            " (an empty or null key)"
        } else {
            ""
        };
        message = format!("{ours}{name}`{empty}{hint}{}", &rest[name_end + 1..]);
        break;
    }

    if err.location().is_none() {
        // The one error without a position: a second `---` document.
        if let Some(second) = Locator::new(text).second_document() {
            pos = second;
            message = "a config file holds one YAML document; remove this `---` and what follows"
                .to_owned();
        }
    }

    ConfigError::Invalid {
        file,
        line: pos.line,
        column: pos.column,
        key,
        message,
    }
}

/// The expected key closest to a misspelt one, if one is close: serde lists
/// the expected keys in backticks after the unknown one.
fn did_you_mean<'a>(unknown: &str, listing: &'a str) -> Option<&'a str> {
    let expected = listing.split('`').skip(1).skip(1).step_by(2);
    expected
        .map(|name| (edit_distance(unknown, name), name))
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

    fn split(text: &str, line: usize, column: usize) -> (Option<String>, String) {
        let s = split_serde_message(text, line, column);
        (s.path, s.message)
    }

    fn parts(path: Option<&str>, message: &str) -> (Option<String>, String) {
        (path.map(str::to_owned), message.to_owned())
    }

    #[test]
    fn splits_path_message_and_position() {
        assert_eq!(
            split(
                "services[0].vip: invalid socket address syntax at line 3 column 10",
                3,
                10
            ),
            parts(Some("services[0].vip"), "invalid socket address syntax")
        );
    }

    #[test]
    fn keeps_colons_inside_the_message() {
        assert_eq!(
            split(
                "services[0].weight: invalid type: string \"a: b\", expected u32 at line 3 column 13",
                3,
                13
            ),
            parts(
                Some("services[0].weight"),
                "invalid type: string \"a: b\", expected u32"
            )
        );
    }

    #[test]
    fn a_message_without_path_is_not_mistaken_for_one() {
        let text = "invalid type: sequence, expected struct RawConfig";
        assert_eq!(split(text, 1, 1), parts(None, text));
        let text = "unknown field `bogus`, expected `services`";
        assert_eq!(split(text, 1, 1), parts(None, text));
    }

    #[test]
    fn syntax_errors_keep_their_context() {
        assert_eq!(
            split(
                "did not find expected key at line 3 column 5, while parsing a block mapping at line 1 column 1",
                3,
                5
            ),
            parts(
                None,
                "did not find expected key, while parsing a block mapping at line 1 column 1"
            )
        );
    }

    #[test]
    fn position_text_that_does_not_match_the_location_stays() {
        assert_eq!(
            split("a: bad at line 9 column 9", 2, 4),
            parts(Some("a"), "bad at line 9 column 9")
        );
    }

    #[test]
    fn recognises_every_path_form() {
        assert_eq!(path_prefix_len("a: x"), Some(1));
        assert_eq!(path_prefix_len("a.b_c[0][12].d-e: x"), Some(16));
        assert_eq!(path_prefix_len("services[0].?: x"), Some(13));
        assert_eq!(path_prefix_len("a b: x"), None);
        assert_eq!(path_prefix_len("a[]: x"), None);
        assert_eq!(path_prefix_len("a[x]: x"), None);
        assert_eq!(path_prefix_len("a..b: x"), None);
        assert_eq!(path_prefix_len(": x"), None);
        assert_eq!(path_prefix_len("no colon here"), None);
    }

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
        let err = serde_yaml_ng::from_str::<super::super::raw::RawConfig>(yaml).unwrap_err();
        invalid(from_serde(&err, yaml, "f.yaml".into()))
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
