//! A linear pass over the text, before any YAML parser sees it, that refuses
//! nesting deeper than [`MAX_DEPTH`].
//!
//! Parsers cost more than linear time or stack in the depth (libyaml rescanned
//! its stack of possible keys for every token, so 500 KB of `{a: {a: …}}` took
//! most of a minute; a recursive loader overflows its stack at a few thousand
//! levels), and the locator keeps a frame per level. A config needs five.
//!
//! The pass counts what the parsers would nest: flow collections (`[`, `{`
//! outside quotes, comments and block scalars), block collections by their
//! indentation, and compact entries (`- - x`, `- key: x`) by their column. It
//! may count a level too many (a plain scalar continued on a deeper line), never
//! one too few for a file that parses: text it skips as quoted or as a block
//! scalar is text the parsers read the same way.

use super::locate::Position;

/// Deepest nesting accepted: 64 levels (a failoverd config has at most 5).
pub const MAX_DEPTH: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Seq,
    Map,
}

/// A block scalar (`|` or `>`) whose lines are being skipped.
#[derive(Debug)]
struct BlockScalar {
    /// Content must be indented more than this (`None`: at the document's top).
    parent: Option<usize>,
    /// Indentation of the first content line, once seen.
    indent: Option<usize>,
}

#[derive(Debug, Default)]
struct Scan {
    /// Open block collections: indentation column and kind.
    block: Vec<(usize, Kind)>,
    /// Open flow collections.
    flow: usize,
    /// Inside a quoted scalar that went on past the end of its line.
    quote: Option<u8>,
    block_scalar: Option<BlockScalar>,
    /// The next character that is not a space starts a node.
    node_start: bool,
    /// The last token was a quoted scalar or a closed flow collection: in
    /// flow context a `:` right after it is a value indicator (`{"a":1}`).
    json_key: bool,
}

/// Where `text` first nests deeper than [`MAX_DEPTH`], if it does.
pub(super) fn too_deep(text: &str) -> Option<Position> {
    let mut scan = Scan {
        node_start: true,
        ..Scan::default()
    };
    for (n, line) in text.split('\n').enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if let Err(byte) = scan.line(line.as_bytes()) {
            return Some(Position {
                line: n + 1,
                column: line.get(..byte).map_or(byte, |s| s.chars().count()) + 1,
            });
        }
    }
    None
}

fn is_blank(b: Option<&u8>) -> bool {
    matches!(b, None | Some(b' ' | b'\t'))
}

fn is_flow_indicator(b: Option<&u8>) -> bool {
    matches!(b, Some(b',' | b'[' | b']' | b'{' | b'}'))
}

impl Scan {
    fn depth(&self) -> usize {
        self.block.len() + self.flow
    }

    /// One line; `Err` carries the byte where the limit is crossed.
    fn line(&mut self, line: &[u8]) -> Result<(), usize> {
        let indent = line.iter().take_while(|&&b| b == b' ').count();
        let empty = line[indent..].iter().all(|&b| b == b' ' || b == b'\t');
        if let Some(scalar) = &mut self.block_scalar {
            if empty {
                return Ok(());
            }
            match scalar.indent {
                None if scalar.parent.is_none_or(|p| indent > p) => {
                    scalar.indent = Some(indent);
                    return Ok(());
                }
                Some(n) if indent >= n => return Ok(()),
                _ => self.block_scalar = None,
            }
        }
        let mut at = 0;
        if let Some(q) = self.quote {
            match skip_quoted(line, 0, q) {
                None => return Ok(()),
                Some(end) => {
                    self.quote = None;
                    self.node_start = false;
                    self.json_key = true;
                    at = end;
                }
            }
        } else if self.flow == 0 {
            let content = &line[indent..];
            if empty || content[0] == b'#' || (indent == 0 && content[0] == b'%') {
                return Ok(());
            }
            let marker = indent == 0
                && (content.starts_with(b"---") || content.starts_with(b"..."))
                && is_blank(content.get(3));
            if marker {
                self.block.clear();
                at = 3;
            } else {
                at = self.block_structure(line, indent)?;
            }
            self.node_start = true;
            self.json_key = false;
        }
        self.inline(line, at)
    }

    /// Opens and closes block collections by the line's indentation and its
    /// leading `- ` and `? ` entries; returns where the line's content starts.
    fn block_structure(&mut self, line: &[u8], indent: usize) -> Result<usize, usize> {
        while self.block.last().is_some_and(|&(col, _)| col > indent) {
            self.block.pop();
        }
        let mut at = indent;
        loop {
            let entry = match line.get(at) {
                Some(b'-') if is_blank(line.get(at + 1)) => Some(Kind::Seq),
                Some(b'?') if is_blank(line.get(at + 1)) => Some(Kind::Map),
                _ => None,
            };
            // Anything else at this column (a key, or a scalar continuing a
            // value) is counted as a mapping: at worst one level too many.
            self.open(at, entry.unwrap_or(Kind::Map))?;
            if entry.is_none() {
                return Ok(at);
            }
            at += 1;
            while line.get(at) == Some(&b' ') {
                at += 1;
            }
            if at >= line.len() || line[at] == b'#' {
                return Ok(at);
            }
        }
    }

    fn open(&mut self, col: usize, kind: Kind) -> Result<(), usize> {
        match self.block.last().copied() {
            Some((c, k)) if c == col => match (k, kind) {
                (Kind::Map, Kind::Map) | (Kind::Seq, Kind::Seq) => return Ok(()),
                // A sequence may sit at its parent key's indentation.
                (Kind::Map, Kind::Seq) => self.block.push((col, kind)),
                // Back from such a sequence to the mapping's next key.
                (Kind::Seq, Kind::Map) => {
                    self.block.pop();
                    if self.block.last() != Some(&(col, Kind::Map)) {
                        self.block.push((col, kind));
                    }
                }
            },
            _ => self.block.push((col, kind)),
        }
        if self.depth() > MAX_DEPTH {
            return Err(col);
        }
        Ok(())
    }

    /// The rest of a line: flow collections, quotes, comments, block scalar headers.
    fn inline(&mut self, line: &[u8], mut at: usize) -> Result<(), usize> {
        let mut after_space = at == 0 || line[at - 1] == b' ' || line[at - 1] == b'\t';
        while at < line.len() {
            let b = line[at];
            if b == b' ' || b == b'\t' {
                after_space = true;
                at += 1;
                continue;
            }
            if b == b'#' && after_space {
                return Ok(());
            }
            after_space = false;
            if self.node_start {
                match b {
                    b'"' | b'\'' => {
                        match skip_quoted(line, at + 1, b) {
                            None => {
                                self.quote = Some(b);
                                return Ok(());
                            }
                            Some(end) => at = end,
                        }
                        self.node_start = false;
                        self.json_key = true;
                        continue;
                    }
                    b'[' | b'{' => {
                        self.flow += 1;
                        if self.depth() > MAX_DEPTH {
                            return Err(at);
                        }
                        at += 1;
                        continue;
                    }
                    b'|' | b'>' if self.flow == 0 => {
                        self.block_scalar = Some(BlockScalar {
                            parent: self.block.last().map(|&(col, _)| col),
                            indent: None,
                        });
                        return Ok(());
                    }
                    // An anchor or a tag: the node follows.
                    b'&' | b'!' => {
                        while at < line.len()
                            && !is_blank(line.get(at))
                            && !(self.flow > 0 && is_flow_indicator(line.get(at)))
                        {
                            at += 1;
                        }
                        continue;
                    }
                    b'-' | b'?' | b':' if is_blank(line.get(at + 1)) => {
                        at += 1;
                        continue;
                    }
                    _ => self.node_start = false,
                }
            }
            let json_key = std::mem::take(&mut self.json_key);
            match b {
                b']' | b'}' if self.flow > 0 => {
                    self.flow -= 1;
                    self.json_key = true;
                }
                b'[' | b'{' if self.flow > 0 => {
                    self.flow += 1;
                    self.node_start = true;
                    if self.depth() > MAX_DEPTH {
                        return Err(at);
                    }
                }
                b',' if self.flow > 0 => self.node_start = true,
                b':' if is_blank(line.get(at + 1))
                    || (self.flow > 0 && (json_key || is_flow_indicator(line.get(at + 1)))) =>
                {
                    self.node_start = true;
                }
                _ => {}
            }
            at += 1;
        }
        Ok(())
    }
}

/// The byte after the quote that closes a scalar opened by `quote`, scanning
/// from `from`; `None` if it is not closed on this line.
fn skip_quoted(line: &[u8], from: usize, quote: u8) -> Option<usize> {
    let mut at = from;
    while at < line.len() {
        match line[at] {
            b'\\' if quote == b'"' => at += 2,
            b'\'' if quote == b'\'' && line.get(at + 1) == Some(&b'\'') => at += 2,
            b if b == quote => return Some(at + 1),
            _ => at += 1,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(line: usize, column: usize) -> Option<Position> {
        Some(Position { line, column })
    }

    #[test]
    fn real_configs_are_shallow() {
        let text = "\
# comment with [[[[ and {{{{
services:
  - name: a
    vip: \"[2001:db8::1]:80\"
    health: { kind: http, expect_status: [200, 204], path: '/x[1]' }
    backends:
    - address: 10.0.0.1:80
      weight: 3
    - { address: '[2001:db8::2]:80' }
defaults:
  health:
    expect_body: |
      {{{{{{{{ [[[[[[
        ]]]] }}}}
    path: /a{b[c
";
        assert_eq!(too_deep(text), None);
        // At the root the line's content is counted as a mapping too: one level spare.
        assert_eq!(
            too_deep(&format!("{}{}", "[".repeat(63), "]".repeat(63))),
            None
        );
    }

    #[test]
    fn deep_flow_collections_are_found_where_they_cross_the_limit() {
        let text = format!(
            "services: []\nx: {}{}\n",
            "{a: ".repeat(100),
            "}".repeat(100)
        );
        // `services` and `x` are one block mapping: the 64th `{` is level 65.
        assert_eq!(too_deep(&text), at(2, 4 + 63 * 4));
        assert_eq!(too_deep(&"[".repeat(65)), at(1, 64));
    }

    #[test]
    fn deep_block_collections_are_found_too() {
        assert_eq!(too_deep(&format!("{}x\n", "- ".repeat(70))), at(1, 129));
        let mut text = String::new();
        for i in 0..70 {
            text.push_str(&" ".repeat(i));
            text.push_str("a:\n");
        }
        assert_eq!(too_deep(&text), at(65, 65));
        let mut text = String::new();
        for i in 0..70 {
            text.push_str(&"  ".repeat(i));
            text.push_str("- a:\n");
        }
        // Each line opens a sequence and the mapping inside its entry.
        assert!(too_deep(&text).is_some_and(|p| p.line == 33), "{text}");
    }

    #[test]
    fn brackets_in_quotes_comments_block_scalars_and_plain_text_do_not_count() {
        let deep = "[".repeat(100);
        for text in [
            format!("a: '{deep}'\n"),
            format!("a: \"{deep}\\\"\"\n"),
            format!("a: 'it''s {deep}'\n"),
            format!("a: 1 # {deep}\n"),
            format!("a: |\n  {deep}\n  {deep}\nb: 1\n"),
            format!("- >-\n    {deep}\n"),
            format!("a: x{deep}\n"),
            format!("a: \"multi\n  line {deep}\n  \"\nb: 2\n"),
        ] {
            assert_eq!(too_deep(&text), None, "{text}");
        }
    }

    #[test]
    fn a_block_scalar_ends_where_its_indentation_does() {
        let text = format!("- key: |\n    text\n  other: {}\n", "[".repeat(70));
        assert!(too_deep(&text).is_some_and(|p| p.line == 3));
    }

    #[test]
    fn a_quote_inside_a_plain_scalar_opens_nothing() {
        let text = format!("a: it's\nb: {}\n", "[".repeat(70));
        assert!(too_deep(&text).is_some_and(|p| p.line == 2));
        let text = format!("a: ['it''s', \"x\":{}]\n", "[".repeat(70));
        assert!(too_deep(&text).is_some());
    }
}
