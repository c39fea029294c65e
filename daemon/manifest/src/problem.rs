//! Problems found in a repository's manifests: what went wrong, in which file, at which line and
//! column, in which field of which object. Every loader stage reports through this one type so
//! that `capstan validate`, `capstan plan`, the sync status and the git notes print alike.

use std::fmt;

use capstan_api::ObjectKey;
use capstan_api::text::printable;
use serde::{Deserialize, Serialize};

use crate::yaml::{Node, NodeValue, Pos};

/// What kind of problem it is; stable names for `--output json`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProblemCode {
    /// Not well-formed YAML, or an unreadable file.
    Syntax,
    /// A document that is not a Kubernetes object (not a mapping, no apiVersion or kind).
    NotAnObject,
    /// An apiVersion/kind pair Capstan does not serve.
    UnknownKind,
    /// A kind that only Capstan itself writes (Node, Endpoints, Lease, ...).
    NotFromGit,
    /// A field the kind does not have.
    UnknownField,
    /// A field whose value has the wrong type.
    WrongType,
    /// A required field that is absent.
    MissingField,
    /// A name that breaks the kind's naming rule.
    InvalidName,
    /// A value of the right type that is still not allowed.
    InvalidValue,
    /// The same object defined twice.
    Duplicate,
}

/// One problem, located.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// Path of the file, relative to the repository (or directory) root.
    pub file: String,
    pub line: u32,
    pub column: u32,
    pub code: ProblemCode,
    /// Field path inside the object, e.g. `spec.template.spec.containers[0].image`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// The object concerned, when it could be identified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<ObjectKey>,
    pub message: String,
}

impl Problem {
    pub fn new(file: &str, pos: Pos, code: ProblemCode, message: impl Into<String>) -> Problem {
        Problem {
            file: file.to_owned(),
            line: pos.line,
            column: pos.column,
            code,
            field: None,
            object: None,
            message: message.into(),
        }
    }

    pub fn field(mut self, field: impl Into<String>) -> Problem {
        let f = field.into();
        self.field = (!f.is_empty()).then_some(f);
        self
    }

    pub fn object(mut self, key: Option<&ObjectKey>) -> Problem {
        self.object = key.cloned();
        self
    }

    /// Sort key: file, then position.
    pub fn sort_key(&self) -> (&str, u32, u32) {
        (&self.file, self.line, self.column)
    }
}

/// `file:line:col: field: message (object)`, the shape compilers and linters use.
impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Names come from the repository: escaped, so that none can forge a line.
        write!(f, "{}:{}:{}: ", printable(&self.file), self.line, self.column)?;
        if let Some(field) = &self.field {
            write!(f, "{}: ", printable(field))?;
        }
        write!(f, "{}", printable(&self.message))?;
        if let Some(obj) = &self.object {
            write!(f, " [{}]", printable(&obj.to_string()))?;
        }
        Ok(())
    }
}

/// One step of a field path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathSeg {
    Key(String),
    Index(usize),
}

/// A field path built by validators, rendered as Kubernetes does (`spec.ports[0].port`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldPath(pub Vec<PathSeg>);

impl FieldPath {
    pub fn key(&self, k: &str) -> FieldPath {
        let mut p = self.clone();
        p.0.push(PathSeg::Key(k.to_owned()));
        p
    }

    pub fn index(&self, i: usize) -> FieldPath {
        let mut p = self.clone();
        p.0.push(PathSeg::Index(i));
        p
    }

    /// Parses the paths serde_path_to_error prints (`spec.containers[0].ports[1].name`).
    pub fn parse(path: &str) -> FieldPath {
        let mut segs = Vec::new();
        for part in path.split('.').filter(|p| !p.is_empty() && *p != "?") {
            let (key, rest) = match part.find('[') {
                Some(i) => part.split_at(i),
                None => (part, ""),
            };
            if !key.is_empty() {
                segs.push(PathSeg::Key(key.to_owned()));
            }
            for idx in rest.split('[').filter_map(|s| s.strip_suffix(']')) {
                if let Ok(i) = idx.parse() {
                    segs.push(PathSeg::Index(i));
                }
            }
        }
        FieldPath(segs)
    }

    /// The position of the node this path names in `root`, or of its nearest ancestor that
    /// exists. A map entry's position is its value's.
    pub fn locate(&self, root: &Node) -> Pos {
        let mut node = root;
        for seg in &self.0 {
            let next = match (seg, &node.value) {
                (PathSeg::Key(k), NodeValue::Map(entries)) => entries.iter().find(|e| &e.key == k).map(|e| &e.value),
                (PathSeg::Index(i), NodeValue::Seq(items)) => items.get(*i),
                _ => None,
            };
            match next {
                Some(n) => node = n,
                None => break,
            }
        }
        node.pos
    }

    /// The position of the key of the last map entry on the path, when it exists.
    pub fn locate_key(&self, root: &Node) -> Option<Pos> {
        let (last, parent) = self.0.split_last()?;
        let PathSeg::Key(k) = last else { return None };
        let parent_pos = FieldPath(parent.to_vec());
        let mut node = root;
        for seg in &parent_pos.0 {
            node = match (seg, &node.value) {
                (PathSeg::Key(k), NodeValue::Map(entries)) => &entries.iter().find(|e| &e.key == k)?.value,
                (PathSeg::Index(i), NodeValue::Seq(items)) => items.get(*i)?,
                _ => return None,
            };
        }
        match &node.value {
            NodeValue::Map(entries) => entries.iter().find(|e| &e.key == k).map(|e| e.key_pos),
            _ => None,
        }
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for seg in &self.0 {
            match seg {
                PathSeg::Key(k) => {
                    if !first {
                        f.write_str(".")?;
                    }
                    f.write_str(k)?;
                }
                PathSeg::Index(i) => write!(f, "[{i}]")?,
            }
            first = false;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_round_trip_and_locate() {
        let p = FieldPath::parse("spec.containers[0].ports[1].name");
        assert_eq!(p.to_string(), "spec.containers[0].ports[1].name");
        let docs = crate::yaml::parse("spec:\n  containers:\n  - ports:\n    - {name: a}\n    - {name: b}\n").unwrap();
        assert_eq!(p.locate(&docs[0].root), Pos { line: 5, column: 14 });
        assert_eq!(p.locate_key(&docs[0].root), Some(Pos { line: 5, column: 8 }));
        // A path that goes further than the tree stops at the deepest node that exists.
        let p = FieldPath::parse("spec.containers[0].image");
        assert_eq!(p.locate(&docs[0].root), Pos { line: 3, column: 5 });
    }

    #[test]
    fn problems_print_like_a_compiler() {
        let p = Problem::new(
            "apps/web.yaml",
            Pos { line: 12, column: 9 },
            ProblemCode::WrongType,
            "expected an integer",
        )
        .field("spec.replicas");
        assert_eq!(p.to_string(), "apps/web.yaml:12:9: spec.replicas: expected an integer");
    }
}
