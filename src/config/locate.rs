//! Finding where a key is written in the configuration text.
//!
//! Error reporting only: once parsing or validation has failed, the text is
//! read a second time into a tree that records, for each key and array
//! element, the byte range of its value. With that tree an error's byte
//! offset becomes a dotted key path (`listener[1].bind`), and a key path
//! becomes a line number. Untrusted (operator) bytes reach this code; it only
//! reads them.
//!
//! The ranges come from the `toml` deserializer's span support, the protocol
//! behind `toml::Spanned`. `toml::Spanned` itself cannot be used here: it
//! fails outright on values that have no span (tables made by dotted keys,
//! date-times), whereas this reader accepts such values and records no range
//! for them. If the deserializer ever stops providing ranges, errors lose
//! their line numbers but are still reported.

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use std::collections::HashSet;
use std::fmt;
use std::ops::Range;

// The span protocol understood by the `toml` deserializer (see
// `serde_spanned`): asking for a struct with this name and these fields makes
// it answer with a map of start, end and value.
const SPANNED_NAME: &str = "$__serde_spanned_private_Spanned";
const SPANNED_START: &str = "$__serde_spanned_private_start";
const SPANNED_END: &str = "$__serde_spanned_private_end";
const SPANNED_VALUE: &str = "$__serde_spanned_private_value";
const SPANNED_FIELDS: &[&str] = &[SPANNED_START, SPANNED_END, SPANNED_VALUE];
// Date-times arrive as a one-entry map whose key starts with this prefix.
const TOML_PRIVATE_PREFIX: &str = "$__toml_private";

/// One step of a key path.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Key(String),
    Index(usize),
}

/// Every key and array element of a document, with the byte range of its value.
pub(crate) struct Locator {
    /// (dotted path, byte range of the value if known), in document order.
    entries: Entries,
    /// The paths of the entries that are tables.
    tables: HashSet<String>,
    /// Byte offsets of the start of each line.
    line_starts: Vec<usize>,
}

impl Locator {
    /// Reads `text` into a locator. `None` if the text is not valid TOML.
    pub(crate) fn new(text: &str) -> Option<Locator> {
        let root: Node = toml::from_str::<Located>(text).ok()?.node;
        let mut entries = Vec::new();
        let mut tables = HashSet::new();
        flatten(&root, &mut Vec::new(), &mut entries, &mut tables);
        Some(Locator {
            entries,
            tables,
            line_starts: line_starts(text),
        })
    }

    /// The 1-based line of the value at `path`, or of its nearest ancestor
    /// whose position is known.
    pub(crate) fn line_of_path(&self, path: &str) -> Option<usize> {
        let mut p = path;
        loop {
            if let Some((_, Some(r))) = self.entries.iter().find(|(k, _)| k == p) {
                return Some(self.line_of_offset(r.start));
            }
            p = parent_path(p)?;
        }
    }

    /// The path of the smallest value whose range covers `span`.
    pub(crate) fn path_covering(&self, span: &Range<usize>) -> Option<&str> {
        self.entries
            .iter()
            .filter_map(|(k, r)| r.as_ref().map(|r| (k, r)))
            .filter(|(_, r)| r.start <= span.start && span.end <= r.end)
            // Smallest range wins; on equal ranges the deeper (longer) path.
            .min_by_key(|(k, r)| (r.end - r.start, usize::MAX - k.len()))
            .map(|(k, _)| k.as_str())
    }

    /// The path of the key named `name` written at byte `offset`: the entry
    /// with that name whose value is on the same line, starting at or after
    /// `offset` (`name = value`) or covering it (`[name]`).
    pub(crate) fn path_of_key_at(&self, name: &str, offset: usize) -> Option<&str> {
        let line = self.line_of_offset(offset);
        self.entries
            .iter()
            .filter(|(k, _)| last_key(k) == Some(name))
            .filter_map(|(k, r)| r.as_ref().map(|r| (k, r)))
            .filter(|(_, r)| {
                (r.start <= offset && offset < r.end)
                    || (r.start >= offset && self.line_of_offset(r.start) == line)
            })
            .min_by_key(|(_, r)| r.start.abs_diff(offset))
            .map(|(k, _)| k.as_str())
    }

    /// The path of the smallest table whose range covers `offset` (empty for
    /// the top level).
    pub(crate) fn table_at(&self, offset: usize) -> &str {
        self.entries
            .iter()
            .filter(|(k, _)| self.tables.contains(k))
            .filter_map(|(k, r)| r.as_ref().map(|r| (k, r)))
            .filter(|(_, r)| r.start <= offset && offset < r.end)
            .min_by_key(|(k, r)| (r.end - r.start, usize::MAX - k.len()))
            .map(|(k, _)| k.as_str())
            .unwrap_or("")
    }

    /// The 1-based line holding byte `offset`.
    pub(crate) fn line_of_offset(&self, offset: usize) -> usize {
        self.line_starts.partition_point(|&s| s <= offset).max(1)
    }
}

/// The 1-based line holding byte `offset` of `text`.
pub(crate) fn line_of_offset(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

fn line_starts(text: &str) -> Vec<usize> {
    let mut v = vec![0];
    v.extend(
        text.bytes()
            .enumerate()
            .filter(|&(_, b)| b == b'\n')
            .map(|(i, _)| i + 1),
    );
    v
}

fn parent_path(p: &str) -> Option<&str> {
    if let Some(stripped) = p.strip_suffix(']') {
        let open = stripped.rfind('[')?;
        return Some(&p[..open]);
    }
    p.rfind('.').map(|i| &p[..i])
}

fn last_key(p: &str) -> Option<&str> {
    if p.ends_with(']') {
        return None;
    }
    Some(match p.rfind('.') {
        Some(i) => &p[i + 1..],
        None => p,
    })
}

/// Formats a path: keys joined by dots, array indexes in brackets.
fn format_path(path: &[Segment]) -> String {
    let mut s = String::new();
    for seg in path {
        match seg {
            Segment::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            Segment::Index(i) => {
                s.push('[');
                s.push_str(&i.to_string());
                s.push(']');
            }
        }
    }
    s
}

type Entries = Vec<(String, Option<Range<usize>>)>;

fn flatten(node: &Node, path: &mut Vec<Segment>, out: &mut Entries, tables: &mut HashSet<String>) {
    let children: Vec<(Segment, &Located)> = match node {
        Node::Table(items) => items
            .iter()
            .map(|(k, child)| (Segment::Key(k.clone()), child))
            .collect(),
        Node::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, child)| (Segment::Index(i), child))
            .collect(),
        Node::Leaf => Vec::new(),
    };
    for (seg, child) in children {
        path.push(seg);
        let p = format_path(path);
        if matches!(child.node, Node::Table(_)) {
            tables.insert(p.clone());
        }
        out.push((p, child.span.clone()));
        flatten(&child.node, path, out, tables);
        path.pop();
    }
}

/// A TOML value reduced to its shape.
enum Node {
    Table(Vec<(String, Located)>),
    Array(Vec<Located>),
    Leaf,
}

/// A value and, when the deserializer provides it, its byte range.
struct Located {
    span: Option<Range<usize>>,
    node: Node,
}

impl Located {
    fn leaf() -> Located {
        Located {
            span: None,
            node: Node::Leaf,
        }
    }
}

impl<'de> serde::Deserialize<'de> for Located {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Located, D::Error> {
        d.deserialize_struct(
            SPANNED_NAME,
            SPANNED_FIELDS,
            LocatedVisitor {
                span_requested: true,
            },
        )
    }
}

/// Deserializes a value without asking for its range (the value inside a
/// span answer).
struct Plain;

impl<'de> DeserializeSeed<'de> for Plain {
    type Value = Located;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Located, D::Error> {
        d.deserialize_any(LocatedVisitor {
            span_requested: false,
        })
    }
}

struct LocatedVisitor {
    span_requested: bool,
}

impl<'de> Visitor<'de> for LocatedVisitor {
    type Value = Located;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any TOML value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Located, E> {
        Ok(Located::leaf())
    }
    fn visit_i64<E>(self, _: i64) -> Result<Located, E> {
        Ok(Located::leaf())
    }
    fn visit_u64<E>(self, _: u64) -> Result<Located, E> {
        Ok(Located::leaf())
    }
    fn visit_f64<E>(self, _: f64) -> Result<Located, E> {
        Ok(Located::leaf())
    }
    fn visit_str<E>(self, _: &str) -> Result<Located, E> {
        Ok(Located::leaf())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Located, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Located>()? {
            items.push(item);
        }
        Ok(Located {
            span: None,
            node: Node::Array(items),
        })
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Located, A::Error> {
        let mut items = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            if items.is_empty() && self.span_requested && key == SPANNED_START {
                return read_span_answer(map);
            }
            if items.is_empty() && key.starts_with(TOML_PRIVATE_PREFIX) {
                map.next_value::<IgnoredAny>()?;
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                return Ok(Located::leaf());
            }
            let value = map.next_value::<Located>()?;
            items.push((key, value));
        }
        Ok(Located {
            span: None,
            node: Node::Table(items),
        })
    }
}

/// Reads the rest of a span answer: the start key has been read.
fn read_span_answer<'de, A: MapAccess<'de>>(mut map: A) -> Result<Located, A::Error> {
    let start: usize = map.next_value()?;
    let mut end = start;
    let mut node = Node::Leaf;
    while let Some(key) = map.next_key::<String>()? {
        if key == SPANNED_END {
            end = map.next_value()?;
        } else if key == SPANNED_VALUE {
            node = map.next_value_seed(Plain)?.node;
        } else {
            map.next_value::<IgnoredAny>()?;
        }
    }
    Ok(Located {
        span: Some(start..end.max(start)),
        node,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "\
x = 1
when = 1979-05-27T07:32:00Z
[limits]
a = 3
b.c = 4

[[listener]]
bind = \"a\"

[[listener]]
mode = \"c\"
inl = { q = 1, r = [1, { s = 2 }] }
";

    #[test]
    fn paths_and_lines() {
        let loc = Locator::new(DOC).unwrap();
        assert_eq!(loc.line_of_path("x"), Some(1));
        assert_eq!(loc.line_of_path("when"), Some(2));
        assert_eq!(loc.line_of_path("limits"), Some(3));
        assert_eq!(loc.line_of_path("limits.a"), Some(4));
        assert_eq!(loc.line_of_path("limits.b.c"), Some(5));
        assert_eq!(loc.line_of_path("listener[0].bind"), Some(8));
        assert_eq!(loc.line_of_path("listener[1]"), Some(10));
        assert_eq!(loc.line_of_path("listener[1].inl.r[1].s"), Some(12));
        // Unknown child: the nearest known ancestor.
        assert_eq!(loc.line_of_path("listener[1].nothing"), Some(10));
        assert_eq!(loc.line_of_path("nothing"), None);
    }

    #[test]
    fn offsets_to_paths() {
        let loc = Locator::new(DOC).unwrap();
        let at = |needle: &str| DOC.find(needle).unwrap();
        let s = at("{ s = 2 }");
        assert_eq!(loc.path_covering(&(s..s + 9)), Some("listener[1].inl.r[1]"));
        let m = at("\"c\"");
        assert_eq!(loc.path_covering(&(m..m + 3)), Some("listener[1].mode"));
        assert_eq!(
            loc.path_of_key_at("mode", at("mode")),
            Some("listener[1].mode")
        );
        assert_eq!(loc.path_of_key_at("limits", at("limits")), Some("limits"));
        assert_eq!(loc.table_at(at("a = 3")), "limits");
        assert_eq!(loc.table_at(at("x = 1")), "");
    }

    #[test]
    fn invalid_toml_gives_no_locator() {
        assert!(Locator::new("[limits").is_none());
    }

    #[test]
    fn line_counting() {
        assert_eq!(line_of_offset("a\nb\nc", 0), 1);
        assert_eq!(line_of_offset("a\nb\nc", 2), 2);
        assert_eq!(line_of_offset("a\nb\nc", 99), 3);
    }
}
