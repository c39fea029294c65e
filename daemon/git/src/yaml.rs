//! YAML streams into trees of nodes that remember where each node was written, so that every
//! later error (schema, type, name, duplicate) can name a line and column.
//!
//! Built on the event parser that serde-saphyr uses (re-exported by it): anchors, aliases, merge
//! keys (`<<`) and the core tags are resolved here; scalars keep their source text and quoting so
//! that the schema, not a guess, decides whether `80` is a number or a string.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

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
}

/// A stream that is not well-formed YAML, or that uses something Capstan does not accept.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{pos}: {message}")]
pub struct YamlError {
    pub pos: Pos,
    pub message: String,
}

/// Most nodes one file may expand to, so that an alias bomb is an error rather than an outage.
const MAX_NODES: usize = 2_000_000;

/// Parses a multi-document stream. Documents that are empty (only comments, or a bare `---`)
/// are returned as null scalars so that document indexes count every document.
pub fn parse(text: &str) -> Result<Vec<Document>, YamlError> {
    let mut builder = Builder::default();
    let mut parser = Parser::new_from_str(text);
    while let Some(event) = parser.next_event() {
        let (event, span) = event.map_err(|e| YamlError {
            pos: Pos {
                line: e.marker().line() as u32,
                column: e.marker().col() as u32 + 1,
            },
            message: e.info(),
        })?;
        if builder.event(event, span)? {
            break;
        }
    }
    Ok(builder.documents)
}

#[derive(Default)]
struct Builder {
    documents: Vec<Document>,
    root: Option<Node>,
    stack: Vec<Frame>,
    anchors: HashMap<usize, Node>,
    nodes: usize,
}

enum Frame {
    Seq {
        items: Vec<Node>,
        pos: Pos,
        anchor: usize,
    },
    Map {
        entries: Vec<Entry>,
        merges: Vec<Node>,
        key: Option<(String, Pos)>,
        pos: Pos,
        anchor: usize,
    },
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

impl Builder {
    /// Handles one event; true at the end of the stream.
    fn event(&mut self, event: Event<'_>, span: Span) -> Result<bool, YamlError> {
        let pos = pos_of(&span);
        match event {
            Event::StreamEnd => return Ok(true),
            Event::DocumentStart(..) => {
                self.anchors.clear();
                self.root = None;
            }
            Event::DocumentEnd => {
                let root = self.root.take().unwrap_or_else(|| null_node(pos));
                self.documents.push(Document {
                    index: self.documents.len(),
                    root,
                });
            }
            Event::Scalar(text, style, anchor, tag) => {
                let kind = match tag.as_deref() {
                    Some(tag) => scalar_kind_of_tag(tag, pos)?,
                    None if style == ScalarStyle::Plain => ScalarKind::Plain,
                    None => ScalarKind::Str,
                };
                let text = match text {
                    Cow::Borrowed(t) => t.to_owned(),
                    Cow::Owned(t) => t,
                };
                let node = Node {
                    value: NodeValue::Scalar(Scalar { text, kind }),
                    pos,
                };
                self.finish(node, anchor, pos)?;
            }
            Event::SequenceStart(_, anchor, tag) => {
                check_collection_tag(tag.as_deref(), "seq", pos)?;
                self.stack.push(Frame::Seq {
                    items: Vec::new(),
                    pos,
                    anchor,
                });
            }
            Event::MappingStart(_, anchor, tag) => {
                check_collection_tag(tag.as_deref(), "map", pos)?;
                self.stack.push(Frame::Map {
                    entries: Vec::new(),
                    merges: Vec::new(),
                    key: None,
                    pos,
                    anchor,
                });
            }
            Event::SequenceEnd => {
                if let Some(Frame::Seq { items, pos, anchor }) = self.stack.pop() {
                    self.finish(
                        Node {
                            value: NodeValue::Seq(items),
                            pos,
                        },
                        anchor,
                        pos,
                    )?;
                }
            }
            Event::MappingEnd => {
                if let Some(Frame::Map {
                    mut entries,
                    merges,
                    pos,
                    anchor,
                    ..
                }) = self.stack.pop()
                {
                    apply_merges(&mut entries, merges)?;
                    self.finish(
                        Node {
                            value: NodeValue::Map(entries),
                            pos,
                        },
                        anchor,
                        pos,
                    )?;
                }
            }
            Event::Alias(id) => {
                let node = self.anchors.get(&id).cloned().ok_or_else(|| YamlError {
                    pos,
                    message: "alias refers to no anchor defined before it in this document".into(),
                })?;
                self.nodes += count_nodes(&node);
                if self.nodes > MAX_NODES {
                    return Err(YamlError {
                        pos,
                        message: format!("aliases expand this file to more than {MAX_NODES} nodes"),
                    });
                }
                self.finish(node, 0, pos)?;
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

    /// Delivers a finished node to the collection being built, or makes it the document's root.
    /// `used_at` is where the node appears (an alias's own position, not its anchor's).
    fn finish(&mut self, node: Node, anchor: usize, used_at: Pos) -> Result<(), YamlError> {
        self.nodes += 1;
        if anchor != 0 {
            self.anchors.insert(anchor, node.clone());
        }
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map { entries, merges, key, .. }) => match key.take() {
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
                        if let Some(first) = entries.iter().find(|e| e.key == k) {
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

fn count_nodes(node: &Node) -> usize {
    1 + match &node.value {
        NodeValue::Scalar(_) => 0,
        NodeValue::Seq(items) => items.iter().map(count_nodes).sum(),
        NodeValue::Map(entries) => entries.iter().map(|e| count_nodes(&e.value)).sum(),
    }
}

/// Applies `<<` merge keys: entries of the merged mappings are added where the mapping does not
/// set the key itself; earlier merge sources win over later ones.
fn apply_merges(entries: &mut Vec<Entry>, merges: Vec<Node>) -> Result<(), YamlError> {
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
                if !entries.iter().any(|e| e.key == entry.key) {
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
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..8 {
            let prev = i - 1;
            text.push_str(&format!(
                "a{i}: &a{i} [*a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}]\n"
            ));
        }
        let err = parse(&text).unwrap_err();
        assert!(err.message.contains("more than"), "{err}");
    }
}
