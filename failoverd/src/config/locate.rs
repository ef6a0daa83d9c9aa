//! Where each key of a YAML file sits: the line and column of every key and
//! value, by dotted key path (`services[0].health.timeout`).
//!
//! serde forgets positions once a value is deserialized, so the rules checked
//! afterwards ask this map, built from the spanned events of granit-parser (the
//! parser under serde-saphyr, so both read the text the same way), where to point.

use std::collections::HashMap;

use granit_parser::{Event, Marker, Parser, ScalarStyle, Span, SpannedEventReceiver};

/// A 1-based line and column.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) struct Position {
    pub line: usize,
    pub column: usize,
}

impl Position {
    /// The start of the file: where errors that belong to no key point.
    pub const START: Position = Position { line: 1, column: 1 };

    fn from_marker(m: Marker) -> Position {
        // granit-parser counts lines from 1 and columns from 0.
        Position {
            line: m.line().max(1),
            column: m.col() + 1,
        }
    }
}

/// What an error is about: the key itself, or the value written after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Target {
    Key,
    Value,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Spot {
    /// `None` for sequence items and the document root, which have no key.
    key: Option<Position>,
    value: Position,
}

/// Positions by key path, from one parse of the text.
#[derive(Debug, Default)]
pub(super) struct Locator {
    spots: HashMap<String, Spot>,
    /// The key of the second occurrence of a key given twice in one mapping.
    duplicates: HashMap<String, Position>,
    second_document: Option<Position>,
    /// What starts at each node's position, for describing a value of the wrong type.
    nodes: HashMap<Position, NodeKind>,
    /// Collections still open where a syntax error ended the walk, outermost
    /// first: whether each is a sequence, and where it starts.
    open: Vec<(bool, Position)>,
}

/// A node as written, described in serde's words for a type error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum NodeKind {
    /// A scalar's text, and whether it was quoted (a quoted scalar is a string).
    Scalar {
        text: String,
        quoted: bool,
    },
    Map,
    Seq,
}

impl NodeKind {
    /// What serde's `Unexpected` would call it: `integer `1``, `string "x"`, `map`.
    pub fn describe(&self) -> String {
        match self {
            NodeKind::Map => "map".to_owned(),
            NodeKind::Seq => "sequence".to_owned(),
            NodeKind::Scalar { text, quoted: true } => format!("string {text:?}"),
            NodeKind::Scalar { text, .. } => {
                if text.parse::<i128>().is_ok() {
                    format!("integer `{text}`")
                } else if matches!(text.as_str(), "true" | "false") {
                    format!("boolean `{text}`")
                } else if matches!(text.as_str(), "" | "~" | "null") {
                    "unit value".to_owned()
                } else if text.parse::<f64>().is_ok() {
                    format!("floating point `{text}`")
                } else {
                    format!("string {text:?}")
                }
            }
        }
    }
}

impl Locator {
    /// Records every key and value of `text`. A syntax error ends the walk;
    /// what came before it is still located.
    pub fn new(text: &str) -> Locator {
        let mut walk = Walk::default();
        // serde-saphyr has already accepted or rejected the syntax and its
        // error is the one reported; this parse only looks for positions.
        if let Err(e) = Parser::new_from_str(text).load(&mut walk, true) {
            tracing::debug!(error = %e, "locating config keys stopped early");
        }
        let open = walk
            .stack
            .iter()
            .filter_map(|frame| match frame {
                Frame::Map { path, .. } => Some((false, path)),
                Frame::Seq { path, .. } => Some((true, path)),
                Frame::ComplexKey { .. } => None,
            })
            .filter_map(|(seq, path)| Some((seq, walk.locator.spots.get(path)?.value)))
            .collect();
        walk.locator.open = open;
        walk.locator
    }

    /// Where `path` (or, failing that, its nearest ancestor) is written.
    pub fn find(&self, path: &str, target: Target) -> Position {
        let mut at = Some(path);
        while let Some(p) = at {
            if let Some(spot) = self.spots.get(p) {
                return match target {
                    Target::Key if p == path => spot.key.unwrap_or(spot.value),
                    // An ancestor stands in for a missing key: point at its
                    // value, the mapping the key was missing from.
                    _ => spot.value,
                };
            }
            at = parent(p);
        }
        Position::START
    }

    /// The deepest path whose key (or value) is written at `pos`, if any: the
    /// other way round from [`Locator::find`].
    pub fn path_at(&self, pos: Position, target: Target) -> Option<String> {
        let written = self.spots.iter().filter_map(|(path, spot)| {
            let here = match target {
                Target::Key => spot.key == Some(pos),
                Target::Value => spot.value == pos,
            };
            here.then_some(path)
        });
        // A key given twice is only recorded once; its second occurrence is a key too.
        let again = self
            .duplicates
            .iter()
            .filter_map(|(path, &at)| (target == Target::Key && at == pos).then_some(path));
        written
            .chain(again)
            .max_by_key(|path| (path.len(), path.as_str()))
            .cloned()
    }

    /// Where the innermost sequence (or mapping) still open at a syntax error starts.
    pub fn open_at_error(&self, sequence: bool) -> Option<Position> {
        self.open
            .iter()
            .rev()
            .find(|(seq, _)| *seq == sequence)
            .map(|&(_, pos)| pos)
    }

    /// The node that starts at `pos`, if one does.
    pub fn node_at(&self, pos: Position) -> Option<&NodeKind> {
        self.nodes.get(&pos)
    }

    /// Whether `path` is written in the file.
    pub fn contains(&self, path: &str) -> bool {
        self.spots.contains_key(path)
    }

    /// The second occurrence of a key written twice in one mapping.
    pub fn duplicate(&self, path: &str) -> Option<Position> {
        self.duplicates.get(path).copied()
    }

    /// The `---` that starts a second document, if the file has one.
    pub fn second_document(&self) -> Option<Position> {
        self.second_document
    }
}

/// The path one level up: `a[1].b` → `a[1]` → `a` → `` (the root) → none.
pub(super) fn parent(path: &str) -> Option<&str> {
    if path.is_empty() {
        return None;
    }
    let cut = if path.ends_with(']') {
        path.rfind('[')
    } else {
        path.rfind('.')
    };
    Some(&path[..cut.unwrap_or(0)])
}

/// `parent.key`, or `key` at the root.
pub(super) fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

enum Frame {
    Map {
        path: String,
        /// The key just read, waiting for its value.
        key: Option<(String, Position)>,
        /// A block mapping's start mark lies after its first key; the first
        /// key's mark is where the mapping really begins.
        first_key_seen: bool,
    },
    Seq {
        path: String,
        next: usize,
    },
    /// Inside a mapping or sequence used as a key: nothing to record.
    ComplexKey {
        depth: usize,
    },
}

#[derive(Default)]
struct Walk {
    locator: Locator,
    stack: Vec<Frame>,
    documents: usize,
}

enum Node<'a> {
    Scalar(&'a str),
    Alias,
    Map,
    Seq,
}

impl<'input> SpannedEventReceiver<'input> for Walk {
    fn on_event(&mut self, ev: Event<'input>, span: Span) {
        let pos = Position::from_marker(span.start);
        if let Event::DocumentStart(..) = ev {
            self.documents += 1;
            if self.documents == 2 {
                self.locator.second_document = Some(pos);
            }
            return;
        }
        if self.documents > 1 {
            return; // only the first document is configuration
        }
        let kind = match ev {
            Event::Scalar(ref text, style, ..) => Some(NodeKind::Scalar {
                text: text.to_string(),
                quoted: !matches!(style, ScalarStyle::Plain),
            }),
            Event::MappingStart(..) => Some(NodeKind::Map),
            Event::SequenceStart(..) => Some(NodeKind::Seq),
            _ => None,
        };
        if let Some(kind) = kind {
            self.locator.nodes.entry(pos).or_insert(kind);
        }
        match ev {
            Event::Scalar(ref text, ..) => self.node(pos, Node::Scalar(text)),
            Event::Alias(_) => self.node(pos, Node::Alias),
            Event::MappingStart(..) => self.node(pos, Node::Map),
            Event::SequenceStart(..) => self.node(pos, Node::Seq),
            Event::MappingEnd | Event::SequenceEnd => self.end(),
            _ => {}
        }
    }
}

impl Walk {
    fn node(&mut self, pos: Position, node: Node<'_>) {
        let is_collection = matches!(node, Node::Map | Node::Seq);
        let (path, key) = match self.stack.last_mut() {
            None => (String::new(), None),
            Some(Frame::ComplexKey { depth }) => {
                if is_collection {
                    *depth += 1;
                }
                return;
            }
            Some(Frame::Seq { path, next }) => {
                let item = format!("{path}[{next}]");
                *next += 1;
                (item, None)
            }
            Some(Frame::Map {
                path,
                key,
                first_key_seen,
            }) => {
                if let Some((k, kpos)) = key.take() {
                    (k, Some(kpos))
                } else {
                    if !*first_key_seen {
                        *first_key_seen = true;
                        if let Some(spot) = self.locator.spots.get_mut(path.as_str()) {
                            spot.value = spot.value.min(pos);
                        }
                    }
                    let name = match node {
                        Node::Scalar(text) => text,
                        _ => "?",
                    };
                    *key = Some((join(path, name), pos));
                    if is_collection {
                        self.stack.push(Frame::ComplexKey { depth: 0 });
                    }
                    return;
                }
            }
        };
        self.record(&path, key, pos);
        match node {
            Node::Map => self.stack.push(Frame::Map {
                path,
                key: None,
                first_key_seen: false,
            }),
            Node::Seq => self.stack.push(Frame::Seq { path, next: 0 }),
            Node::Scalar(_) | Node::Alias => {}
        }
    }

    fn end(&mut self) {
        if let Some(Frame::ComplexKey { depth }) = self.stack.last_mut() {
            if *depth > 0 {
                *depth -= 1;
                return;
            }
        }
        self.stack.pop();
    }

    fn record(&mut self, path: &str, key: Option<Position>, value: Position) {
        if self.locator.spots.contains_key(path) {
            // Keep the first occurrence (the one serde reads values from would
            // be the last, but a duplicate key is refused before any rule runs).
            self.locator
                .duplicates
                .entry(path.to_owned())
                .or_insert(key.unwrap_or(value));
        } else {
            self.locator
                .spots
                .insert(path.to_owned(), Spot { key, value });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = "\
# comment
services:
  - name: orders-db
    vip: \"10.96.0.10:5432\"
    health: { kind: http, expect_status: [200, 204] }
    backends:
      - address: 10.0.0.5:5432
      - address: 10.0.0.6:5432
        weight: 3
";

    fn at(line: usize, column: usize) -> Position {
        Position { line, column }
    }

    #[test]
    fn finds_keys_and_values_by_path() {
        let loc = Locator::new(YAML);
        assert_eq!(loc.find("services", Target::Key), at(2, 1));
        assert_eq!(loc.find("services[0].name", Target::Key), at(3, 5));
        assert_eq!(loc.find("services[0].name", Target::Value), at(3, 11));
        assert_eq!(loc.find("services[0].vip", Target::Value), at(4, 10));
        // Not written: the nearest ancestor that is, the sequence.
        assert_eq!(loc.find("services[1]", Target::Value), at(3, 3));
        assert_eq!(
            loc.find("services[0].backends[1].weight", Target::Value),
            at(9, 17)
        );
    }

    #[test]
    fn flow_collections_are_located_too() {
        let loc = Locator::new(YAML);
        assert_eq!(loc.find("services[0].health", Target::Value), at(5, 13));
        assert_eq!(
            loc.find("services[0].health.kind", Target::Value),
            at(5, 21)
        );
        assert_eq!(
            loc.find("services[0].health.expect_status[1]", Target::Value),
            at(5, 48)
        );
    }

    #[test]
    fn a_block_mapping_starts_at_its_first_key() {
        let loc = Locator::new(YAML);
        assert_eq!(loc.find("services[0]", Target::Value), at(3, 5));
        assert_eq!(loc.find("services[0].backends[1]", Target::Value), at(8, 9));
        assert_eq!(loc.find("", Target::Value), at(2, 1));
    }

    #[test]
    fn a_missing_key_points_at_the_mapping_it_is_missing_from() {
        let loc = Locator::new(YAML);
        assert!(!loc.contains("services[0].backends[0].weight"));
        assert_eq!(
            loc.find("services[0].backends[0].weight", Target::Key),
            at(7, 9)
        );
        assert_eq!(Locator::new("").find("services", Target::Key), at(1, 1));
    }

    #[test]
    fn remembers_duplicate_keys_and_second_documents() {
        let loc = Locator::new("a: 1\nb: 2\na: 3\n---\nc: 4\n");
        assert_eq!(loc.find("a", Target::Value), at(1, 4));
        assert_eq!(loc.duplicate("a"), Some(at(3, 1)));
        assert_eq!(loc.second_document(), Some(at(4, 1)));
        assert!(!loc.contains("c"));
    }

    #[test]
    fn a_syntax_error_keeps_what_came_before() {
        let loc = Locator::new("a: 1\nb: [2\n");
        assert_eq!(loc.find("a", Target::Value), at(1, 4));
    }

    #[test]
    fn complex_keys_are_skipped() {
        let loc = Locator::new("? [x, y]\n: 1\nb: 2\n");
        assert_eq!(loc.find("b", Target::Value), at(3, 4));
    }

    #[test]
    fn parents_walk_up_to_the_root() {
        assert_eq!(parent("a[1].b"), Some("a[1]"));
        assert_eq!(parent("a[1]"), Some("a"));
        assert_eq!(parent("a"), Some(""));
        assert_eq!(parent(""), None);
        assert_eq!(join("", "a"), "a");
        assert_eq!(join("a[0]", "b"), "a[0].b");
    }
}
