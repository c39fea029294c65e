//! YAML streams into trees of nodes that remember where each node was written, so that every
//! later error (schema, type, name, duplicate) can name a line and column.
//!
//! Built on the event parser that serde-saphyr uses (re-exported by it): anchors, aliases, merge
//! keys (`<<`) and the core tags are resolved here; scalars keep their source text and quoting so
//! that the schema, not a guess, decides whether `80` is a number or a string.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::hash::BuildHasher;

use serde_saphyr::granit_parser::{Event, Parser, ScalarStyle, Span};

/// A position in a file, both 1-based.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pos {
    pub line: u32,
    pub column: u32,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// A node of a YAML document and where it starts.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub value: NodeValue,
    pub pos: Pos,
}

#[derive(Clone, Debug, PartialEq)]
pub enum NodeValue {
    Scalar(Scalar),
    Seq(Vec<Node>),
    Map(Vec<Entry>),
}

/// One `key: value` pair of a mapping; keys are always strings (JSON's rule).
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub key: String,
    pub key_pos: Pos,
    pub value: Node,
}

/// A scalar's text as written (after escapes), and whether it was quoted or tagged, which
/// decides how it may be read.
#[derive(Clone, Debug, PartialEq)]
pub struct Scalar {
    pub text: String,
    pub kind: ScalarKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScalarKind {
    /// Written plain: `80`, `true`, `web`, or nothing at all.
    Plain,
    /// Quoted, a block scalar (`|`, `>`), or tagged `!!str`: always a string.
    Str,
    /// Tagged `!!int`, `!!float`, `!!bool` or `!!null`: must read as that type.
    Tagged(CoreType),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CoreType {
    Int,
    Float,
    Bool,
    Null,
}

/// What a scalar means when nothing (no schema) says what it should be.
#[derive(Clone, Debug, PartialEq)]
pub enum Resolved<'a> {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(&'a str),
}

impl Scalar {
    /// Reads the scalar by YAML's core schema, plus the `yes`/`no`/`on`/`off` booleans that
    /// Kubernetes' YAML 1.1 reader accepts.
    pub fn resolve(&self) -> Resolved<'_> {
        let t = self.text.as_str();
        match self.kind {
            ScalarKind::Str => Resolved::Str(t),
            ScalarKind::Tagged(CoreType::Null) => Resolved::Null,
            ScalarKind::Tagged(CoreType::Bool) => parse_bool(t).map_or(Resolved::Str(t), Resolved::Bool),
            ScalarKind::Tagged(CoreType::Int) => parse_int(t).map_or(Resolved::Str(t), Resolved::Int),
            ScalarKind::Tagged(CoreType::Float) => parse_float(t).map_or(Resolved::Str(t), Resolved::Float),
            ScalarKind::Plain => {
                if is_null(t) {
                    Resolved::Null
                } else if let Some(b) = parse_bool(t) {
                    Resolved::Bool(b)
                } else if let Some(i) = parse_int(t) {
                    Resolved::Int(i)
                } else if let Some(f) = parse_float(t) {
                    Resolved::Float(f)
                } else {
                    Resolved::Str(t)
                }
            }
        }
    }

    /// Whether the scalar is a YAML null (`~`, `null`, or an empty plain value).
    pub fn is_null(&self) -> bool {
        matches!(self.resolve(), Resolved::Null)
    }
}

fn is_null(t: &str) -> bool {
    matches!(t, "" | "~" | "null" | "Null" | "NULL")
}

fn parse_bool(t: &str) -> Option<bool> {
    match t {
        "true" | "True" | "TRUE" | "yes" | "Yes" | "YES" | "on" | "On" | "ON" => Some(true),
        "false" | "False" | "FALSE" | "no" | "No" | "NO" | "off" | "Off" | "OFF" => Some(false),
        _ => None,
    }
}

/// Integers as YAML writes them: decimal, `0x` hex, `0o` octal, with an optional sign.
pub fn parse_int(t: &str) -> Option<i64> {
    let (neg, digits) = match t.as_bytes().first()? {
        b'-' => (true, &t[1..]),
        b'+' => (false, &t[1..]),
        _ => (false, t),
    };
    let value = if let Some(hex) = digits.strip_prefix("0x") {
        i64::from_str_radix(hex, 16).ok()?
    } else if let Some(oct) = digits.strip_prefix("0o") {
        i64::from_str_radix(oct, 8).ok()?
    } else {
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse::<i64>().ok()?
    };
    Some(if neg { -value } else { value })
}

fn parse_float(t: &str) -> Option<f64> {
    match t {
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => return Some(f64::INFINITY),
        "-.inf" | "-.Inf" | "-.INF" => return Some(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Some(f64::NAN),
        _ => {}
    }
    // YAML floats need a digit; Rust's parser also accepts "inf" and "nan", which YAML does not.
    let bytes = t.as_bytes();
    let body = bytes.strip_prefix(b"-").or_else(|| bytes.strip_prefix(b"+")).unwrap_or(bytes);
    if !body.first().is_some_and(|b| b.is_ascii_digit() || *b == b'.')
        || !body.iter().any(u8::is_ascii_digit)
        || !body
            .iter()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'-' | b'+'))
    {
        return None;
    }
    t.parse::<f64>().ok()
}

/// One document of a stream, with its index among the stream's documents.
#[derive(Clone, Debug, PartialEq)]
pub struct Document {
    pub index: usize,
    pub root: Node,
    /// What the document costs in [`Budget::expanded_bytes`]: an upper bound of its size in
    /// YAML text with aliases expanded (each node counted at [`NODE_COST`] beside its text).
    pub expanded_bytes: usize,
}

/// A stream that is not well-formed YAML, or that uses something Capstan does not accept.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{pos}: {message}")]
pub struct YamlError {
    pub pos: Pos,
    pub message: String,
}

/// What one file may hold and expand to, so that hostile YAML is a located error rather than an
/// outage: every limit is checked before the memory it guards is spent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    /// Bytes of the file as written.
    pub file_bytes: usize,
    /// Size of the tree once aliases are expanded: scalar and key text, plus a fixed cost per
    /// node ([`NODE_COST`]), which is about what a node takes in memory.
    pub expanded_bytes: usize,
    /// Deepest nesting of collections, counted through aliases. Everything that walks a tree
    /// afterwards (conversion, JSON, the store) recurses, and JSON readers refuse more than 128.
    pub depth: usize,
}

/// What a node costs in [`Budget::expanded_bytes`] beside its text.
pub const NODE_COST: usize = 64;

impl Budget {
    /// The limits manifests are read with, in `capstan validate` and in the daemon alike.
    /// Kubernetes stores an object of at most 1.5 MiB; a file may hold several.
    pub const MANIFEST: Budget = Budget {
        file_bytes: 8 << 20,
        expanded_bytes: 32 << 20,
        depth: 100,
    };

    /// Why a file of `len` bytes is not read, if it is over the limit.
    pub fn file_too_large(&self, len: u64) -> Option<String> {
        let limit = self.file_bytes;
        (len > limit as u64).then(|| {
            format!(
                "file is {len} bytes; a manifest file may hold at most {limit} ({} MiB)",
                limit >> 20
            )
        })
    }
}

impl Default for Budget {
    fn default() -> Budget {
        Budget::MANIFEST
    }
}

/// Parses a multi-document stream within [`Budget::MANIFEST`]. Documents that are empty (only
/// comments, or a bare `---`) are returned as null scalars so that document indexes count every
/// document.
pub fn parse(text: &str) -> Result<Vec<Document>, YamlError> {
    parse_with(text, Budget::MANIFEST)
}

/// Parses a multi-document stream within `budget`.
pub fn parse_with(text: &str, budget: Budget) -> Result<Vec<Document>, YamlError> {
    if let Some(message) = budget.file_too_large(text.len() as u64) {
        return Err(YamlError {
            pos: Pos { line: 1, column: 1 },
            message,
        });
    }
    let mut builder = Builder {
        budget,
        ..Builder::default()
    };
    let mut parser = Parser::new_from_str(text);
    while let Some(event) = parser.next_event() {
        let (event, span) = event.map_err(|e| YamlError {
            pos: Pos {
                line: e.marker().line() as u32,
                column: e.marker().col() as u32 + 1,
            },
            // The parser has a nesting limit of its own, for flow collections.
            message: match e.info() {
                info if info.contains("recursion limit") => too_deep(budget.depth),
                info => info,
            },
        })?;
        if builder.event(event, span)? {
            break;
        }
    }
    Ok(builder.documents)
}

fn too_deep(depth: usize) -> String {
    format!("nesting deeper than {depth} levels (counting through aliases)")
}

/// The size of a finished subtree, kept beside anchors so that an alias is priced before it
/// is copied.
#[derive(Clone, Copy, Debug, Default)]
struct Size {
    bytes: usize,
    /// Levels of collections in the subtree (0 for a scalar).
    height: usize,
}

#[derive(Default)]
struct Builder {
    budget: Budget,
    documents: Vec<Document>,
    root: Option<Node>,
    stack: Vec<Frame>,
    anchors: HashMap<usize, (Node, Size)>,
    /// Expanded bytes of the whole file so far.
    spent: usize,
    /// `spent` when the current document started.
    document_start: usize,
}

enum Frame {
    Seq {
        items: Vec<Node>,
        pos: Pos,
        anchor: usize,
        size: Size,
    },
    Map {
        entries: Vec<Entry>,
        /// Hashes of the keys so far: duplicate keys are found in linear time (a hit is
        /// confirmed against the entries, so a hash collision is never reported).
        seen: HashSet<u64>,
        merges: Vec<Node>,
        key: Option<(String, Pos)>,
        pos: Pos,
        anchor: usize,
        size: Size,
    },
}

impl Frame {
    fn size_mut(&mut self) -> &mut Size {
        match self {
            Frame::Seq { size, .. } | Frame::Map { size, .. } => size,
        }
    }
}

fn pos_of(span: &Span) -> Pos {
    Pos {
        line: span.start.line() as u32,
        column: span.start.col() as u32 + 1,
    }
}

fn null_node(pos: Pos) -> Node {
    Node {
        value: NodeValue::Scalar(Scalar {
            text: String::new(),
            kind: ScalarKind::Plain,
        }),
        pos,
    }
}

fn key_hash(key: &str) -> u64 {
    static STATE: std::sync::OnceLock<std::hash::RandomState> = std::sync::OnceLock::new();
    STATE.get_or_init(std::hash::RandomState::new).hash_one(key)
}

impl Builder {
    /// Handles one event; true at the end of the stream.
    fn event(&mut self, event: Event<'_>, span: Span) -> Result<bool, YamlError> {
        let pos = pos_of(&span);
        match event {
            Event::StreamEnd => return Ok(true),
            Event::DocumentStart(..) => {
                self.anchors.clear();
                self.root = None;
                self.document_start = self.spent;
            }
            Event::DocumentEnd => {
                let root = self.root.take().unwrap_or_else(|| null_node(pos));
                self.documents.push(Document {
                    index: self.documents.len(),
                    root,
                    expanded_bytes: self.spent - self.document_start,
                });
            }
            Event::Scalar(text, style, anchor, tag) => {
                let kind = match tag.as_deref() {
                    Some(tag) => scalar_kind_of_tag(tag, pos)?,
                    None if style == ScalarStyle::Plain => ScalarKind::Plain,
                    None => ScalarKind::Str,
                };
                let size = Size {
                    bytes: NODE_COST + text.len(),
                    height: 0,
                };
                self.spend(size, pos)?;
                let text = match text {
                    Cow::Borrowed(t) => t.to_owned(),
                    Cow::Owned(t) => t,
                };
                let node = Node {
                    value: NodeValue::Scalar(Scalar { text, kind }),
                    pos,
                };
                self.finish(node, size, anchor, pos)?;
            }
            Event::SequenceStart(_, anchor, tag) => {
                check_collection_tag(tag.as_deref(), "seq", pos)?;
                self.open(pos)?;
                self.stack.push(Frame::Seq {
                    items: Vec::new(),
                    pos,
                    anchor,
                    size: Size::default(),
                });
            }
            Event::MappingStart(_, anchor, tag) => {
                check_collection_tag(tag.as_deref(), "map", pos)?;
                self.open(pos)?;
                self.stack.push(Frame::Map {
                    entries: Vec::new(),
                    seen: HashSet::new(),
                    merges: Vec::new(),
                    key: None,
                    pos,
                    anchor,
                    size: Size::default(),
                });
            }
            Event::SequenceEnd => {
                if let Some(Frame::Seq { items, pos, anchor, size }) = self.stack.pop() {
                    let node = Node {
                        value: NodeValue::Seq(items),
                        pos,
                    };
                    self.finish(node, size.closed(), anchor, pos)?;
                }
            }
            Event::MappingEnd => {
                if let Some(Frame::Map {
                    mut entries,
                    merges,
                    pos,
                    anchor,
                    size,
                    ..
                }) = self.stack.pop()
                {
                    apply_merges(&mut entries, merges)?;
                    let node = Node {
                        value: NodeValue::Map(entries),
                        pos,
                    };
                    self.finish(node, size.closed(), anchor, pos)?;
                }
            }
            Event::Alias(id) => {
                let Some((_, size)) = self.anchors.get(&id) else {
                    return Err(YamlError {
                        pos,
                        message: "alias refers to no anchor defined before it in this document".into(),
                    });
                };
                let size = *size;
                self.fits(size.height, pos)?;
                self.spend(size, pos)?;
                let node = self.anchors[&id].0.clone();
                self.finish(node, size, 0, pos)?;
            }
            Event::UnresolvedAlias(name) => {
                return Err(YamlError {
                    pos,
                    message: format!("alias *{name} refers to no anchor in this document"),
                });
            }
            _ => {}
        }
        Ok(false)
    }

    /// A collection opens: one more level of nesting, one more node.
    fn open(&mut self, pos: Pos) -> Result<(), YamlError> {
        self.fits(1, pos)?;
        self.spend(
            Size {
                bytes: NODE_COST,
                height: 1,
            },
            pos,
        )
    }

    /// Whether a subtree `height` levels high may sit at the current depth.
    fn fits(&self, height: usize, pos: Pos) -> Result<(), YamlError> {
        if self.stack.len() + height > self.budget.depth {
            return Err(YamlError {
                pos,
                message: too_deep(self.budget.depth),
            });
        }
        Ok(())
    }

    /// Counts a new node (or an alias's copy) against the file's expansion budget.
    fn spend(&mut self, size: Size, pos: Pos) -> Result<(), YamlError> {
        self.spent = self.spent.saturating_add(size.bytes);
        if self.spent > self.budget.expanded_bytes {
            return Err(YamlError {
                pos,
                message: format!(
                    "this file expands to more than {} MiB of YAML (anchors and aliases counted where they are used)",
                    self.budget.expanded_bytes >> 20
                ),
            });
        }
        Ok(())
    }

    /// Delivers a finished node to the collection being built, or makes it the document's root.
    /// `used_at` is where the node appears (an alias's own position, not its anchor's).
    fn finish(&mut self, node: Node, size: Size, anchor: usize, used_at: Pos) -> Result<(), YamlError> {
        if anchor != 0 {
            self.anchors.insert(anchor, (node.clone(), size));
        }
        let Some(frame) = self.stack.last_mut() else {
            self.root = Some(node);
            return Ok(());
        };
        let parent = frame.size_mut();
        parent.bytes = parent.bytes.saturating_add(size.bytes);
        parent.height = parent.height.max(size.height);
        match frame {
            Frame::Seq { items, .. } => items.push(node),
            Frame::Map {
                entries,
                seen,
                merges,
                key,
                ..
            } => match key.take() {
                None => {
                    let NodeValue::Scalar(scalar) = node.value else {
                        return Err(YamlError {
                            pos: used_at,
                            message: "mapping keys must be scalars".into(),
                        });
                    };
                    *key = Some((scalar.text, used_at));
                }
                Some((k, key_pos)) => {
                    if k == "<<" {
                        merges.push(node);
                    } else {
                        if !seen.insert(key_hash(&k))
                            && let Some(first) = entries.iter().find(|e| e.key == k)
                        {
                            return Err(YamlError {
                                pos: key_pos,
                                message: format!("duplicate key {k:?} (first at line {})", first.key_pos.line),
                            });
                        }
                        entries.push(Entry {
                            key: k,
                            key_pos,
                            value: node,
                        });
                    }
                }
            },
        }
        Ok(())
    }
}

impl Size {
    /// The size of a collection once closed: its own node and cost, plus its children.
    fn closed(self) -> Size {
        Size {
            bytes: self.bytes + NODE_COST,
            height: self.height + 1,
        }
    }
}

/// Applies `<<` merge keys: entries of the merged mappings are added where the mapping does not
/// set the key itself; earlier merge sources win over later ones.
fn apply_merges(entries: &mut Vec<Entry>, merges: Vec<Node>) -> Result<(), YamlError> {
    if merges.is_empty() {
        return Ok(());
    }
    let mut keys: HashSet<String> = entries.iter().map(|e| e.key.clone()).collect();
    for merge in merges {
        let sources = match merge.value {
            NodeValue::Map(m) => vec![m],
            NodeValue::Seq(items) => items
                .into_iter()
                .map(|item| match item.value {
                    NodeValue::Map(m) => Ok(m),
                    _ => Err(YamlError {
                        pos: item.pos,
                        message: "a merge key (<<) takes a mapping or a list of mappings".into(),
                    }),
                })
                .collect::<Result<_, _>>()?,
            NodeValue::Scalar(_) => {
                return Err(YamlError {
                    pos: merge.pos,
                    message: "a merge key (<<) takes a mapping or a list of mappings".into(),
                });
            }
        };
        for source in sources {
            for entry in source {
                if keys.insert(entry.key.clone()) {
                    entries.push(entry);
                }
            }
        }
    }
    Ok(())
}

fn scalar_kind_of_tag(tag: &serde_saphyr::granit_parser::Tag, pos: Pos) -> Result<ScalarKind, YamlError> {
    match tag.core_suffix() {
        Some("str") => Ok(ScalarKind::Str),
        Some("int") => Ok(ScalarKind::Tagged(CoreType::Int)),
        Some("float") => Ok(ScalarKind::Tagged(CoreType::Float)),
        Some("bool") => Ok(ScalarKind::Tagged(CoreType::Bool)),
        Some("null") => Ok(ScalarKind::Tagged(CoreType::Null)),
        _ => Err(YamlError {
            pos,
            message: format!("unsupported tag {} on a scalar", tag.original()),
        }),
    }
}

fn check_collection_tag(tag: Option<&serde_saphyr::granit_parser::Tag>, expected: &str, pos: Pos) -> Result<(), YamlError> {
    match tag {
        None => Ok(()),
        Some(t) if t.core_suffix() == Some(expected) => Ok(()),
        Some(t) => Err(YamlError {
            pos,
            message: format!("unsupported tag {} on a collection", t.original()),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hostile as bombs;

    fn map(node: &Node) -> &[Entry] {
        match &node.value {
            NodeValue::Map(m) => m,
            other => panic!("not a map: {other:?}"),
        }
    }

    fn get<'a>(node: &'a Node, key: &str) -> &'a Node {
        &map(node).iter().find(|e| e.key == key).unwrap().value
    }

    fn scalar(node: &Node) -> &Scalar {
        match &node.value {
            NodeValue::Scalar(s) => s,
            other => panic!("not a scalar: {other:?}"),
        }
    }

    #[test]
    fn positions_are_one_based() {
        let docs = parse("# c\na: 1\nb:\n  c: \"x\"\n").unwrap();
        assert_eq!(docs.len(), 1);
        let root = &docs[0].root;
        assert_eq!(map(root)[0].key_pos, Pos { line: 2, column: 1 });
        let c = get(get(root, "b"), "c");
        assert_eq!(c.pos, Pos { line: 4, column: 6 });
        assert_eq!(scalar(c).kind, ScalarKind::Str);
    }

    #[test]
    fn documents_are_counted_including_empty_ones() {
        let docs = parse("---\na: 1\n---\n# only a comment\n---\nb: 2\n").unwrap();
        assert_eq!(docs.len(), 3);
        assert!(scalar(&docs[1].root).is_null());
        assert_eq!(docs[2].index, 2);
        assert_eq!(map(&docs[2].root)[0].key_pos.line, 6);
    }

    #[test]
    fn anchors_aliases_and_merge_keys() {
        let text = "base: &b {x: 1, y: 2}\nderived:\n  <<: *b\n  y: 3\nlist: [*b]\n";
        let docs = parse(text).unwrap();
        let d = get(&docs[0].root, "derived");
        let keys: Vec<_> = map(d).iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["y", "x"]);
        assert_eq!(scalar(get(d, "y")).text, "3");
        assert_eq!(scalar(get(d, "x")).text, "1");
    }

    #[test]
    fn duplicate_keys_are_errors() {
        let err = parse("a: 1\nb: 2\na: 3\n").unwrap_err();
        assert_eq!(err.pos, Pos { line: 3, column: 1 });
        assert!(err.message.contains("duplicate key \"a\" (first at line 1)"), "{err}");
    }

    #[test]
    fn syntax_errors_carry_a_position() {
        let err = parse("a: 1\nb: [1, 2\nc: 3\n").unwrap_err();
        assert_eq!(err.pos.line, 3);
        let err = parse("a:\n  - x\n y: 2\n").unwrap_err();
        assert!(err.pos.line >= 2, "{err}");
    }

    #[test]
    fn scalars_resolve_like_kubernetes_yaml() {
        let docs = parse("a: 80\nb: \"80\"\nc: yes\nd: ~\ne: 0.5\nf: !!str 1\ng: 0x1F\nh: 1.2.3\ni:\n").unwrap();
        let r = |k: &str| scalar(get(&docs[0].root, k)).resolve().clone();
        assert_eq!(r("a"), Resolved::Int(80));
        assert_eq!(r("b"), Resolved::Str("80"));
        assert_eq!(r("c"), Resolved::Bool(true));
        assert_eq!(r("d"), Resolved::Null);
        assert_eq!(r("e"), Resolved::Float(0.5));
        assert_eq!(r("f"), Resolved::Str("1"));
        assert_eq!(r("g"), Resolved::Int(31));
        assert_eq!(r("h"), Resolved::Str("1.2.3"));
        assert_eq!(r("i"), Resolved::Null);
    }

    #[test]
    fn alias_bombs_are_refused() {
        let err = parse(&bombs::fan_out(10, 8)).unwrap_err();
        assert!(err.message.contains("expands to more than 32 MiB"), "{err}");
    }

    #[test]
    fn large_strings_aliased_many_times_are_counted_in_bytes() {
        // 100 KB of text used 10,000 times: few nodes, a gigabyte of text.
        let err = parse(&bombs::string_fan_out(100_000, 10_000)).unwrap_err();
        assert!(err.message.contains("expands to more than"), "{err}");
        // Used a few times, the same string is fine.
        assert!(parse(&bombs::string_fan_out(100_000, 20)).is_ok());
    }

    #[test]
    fn nesting_is_bounded_also_through_chained_aliases() {
        let err = parse(&bombs::alias_chain(500)).unwrap_err();
        assert!(err.message.contains("nesting deeper than 100 levels"), "{err}");
        assert!(parse(&bombs::alias_chain(90)).is_ok());
        for depth in [101, 100_000] {
            let err = parse(&bombs::flow_nesting(depth)).unwrap_err();
            assert!(err.message.contains("nesting deeper than"), "{depth}: {err}");
        }
        let err = parse(&bombs::block_nesting(300)).unwrap_err();
        assert!(err.message.contains("nesting deeper than"), "{err}");
    }

    #[test]
    fn wide_mappings_are_read_in_linear_time() {
        let docs = parse(&bombs::wide_map(200_000)).unwrap();
        assert_eq!(map(&docs[0].root).len(), 200_000);
        let mut text = bombs::wide_map(50_000);
        text.push_str("k17: again\n");
        let err = parse(&text).unwrap_err();
        assert!(err.message.contains("duplicate key \"k17\" (first at line 18)"), "{err}");
    }

    #[test]
    fn files_over_the_size_limit_are_refused_before_parsing() {
        let text = "a: b\n".repeat((8 << 20) / 5 + 1);
        let err = parse(&text).unwrap_err();
        assert_eq!(err.pos, Pos { line: 1, column: 1 });
        assert!(err.message.contains("at most 8388608 (8 MiB)"), "{err}");
    }

    #[test]
    fn merge_keys_over_wide_mappings_stay_linear() {
        let mut text = String::from("base: &b {");
        for i in 0..50_000 {
            text.push_str(&format!("k{i}: {i}, "));
        }
        text.push_str("}\nderived:\n  <<: *b\n  k1: own\n");
        let docs = parse(&text).unwrap();
        let d = get(&docs[0].root, "derived");
        assert_eq!(map(d).len(), 50_000);
        assert_eq!(scalar(get(d, "k1")).text, "own");
    }
}
