//! What a build prints, as its root's objects: each read and checked like a document of a plain
//! file, named after the file it came from (kustomize's origin annotation, which is then dropped)
//! and marked with its root; problems are located in that source file where the object can be
//! found there (by kind and name), so that they point at what the user wrote.

use std::collections::HashMap;

use capstan_api::meta::{ANNOTATION_DOCUMENT, ANNOTATION_KUSTOMIZATION};
use capstan_manifest::manifest::{FileLoad, OBJECT_BYTES, string_at};
use capstan_manifest::problem::{FieldPath, PathSeg, Problem, ProblemCode};
use capstan_manifest::yaml::{self, Document, Node, NodeValue, Pos};
use serde_json::Value;

use crate::Tree;
use crate::refs::{Kustomization, resolve};

/// The annotation kustomize records each object's origin in.
pub const ORIGIN: &str = "config.kubernetes.io/origin";

/// The objects of `k`'s build output `yaml`; `tree` gives the source files for locating, and
/// `named` the files the build's kustomizations name (patches among them): a field that a
/// patch set, and the source file does not have, is located in the patch.
pub fn load(k: &Kustomization, yaml: &[u8], tree: &dyn Tree, named: &[String]) -> FileLoad {
    let mut load = FileLoad {
        path: k.file.clone(),
        intact: true,
        ..FileLoad::default()
    };
    let at_root = |message: String| Problem::new(&k.file, Pos { line: 1, column: 1 }, ProblemCode::Syntax, message);
    let docs = match std::str::from_utf8(yaml)
        .map_err(|e| e.to_string())
        .and_then(|t| yaml::parse(t).map_err(|e| e.to_string()))
    {
        Ok(d) => d,
        Err(e) => {
            load.problems
                .push(at_root(format!("kustomize printed what Capstan cannot read: {e}")));
            load.intact = false;
            return load;
        }
    };
    let mut sources = Sources::new(tree);
    for mut doc in docs {
        let origin = take_origin(&mut doc.root);
        let source = origin
            .as_deref()
            .and_then(|o| origin_path(o))
            .and_then(|p| resolve(&k.dir, p))
            .unwrap_or_else(|| k.file.clone());
        let mut one = FileLoad {
            path: source.clone(),
            intact: true,
            ..FileLoad::default()
        };
        one.document(doc.index, &doc.root, doc.expanded_bytes > OBJECT_BYTES / 6);
        sources.read(&source);
        for f in named {
            sources.read(f);
        }
        let found = sources.find(&source, &doc.root);
        let patched = |field: &FieldPath| {
            named
                .iter()
                .filter(|f| **f != source)
                .find_map(|f| Some((f, exact(field, sources.find(f, &doc.root)?.1)?)))
        };
        let located = |mut p: Problem| {
            let field = p.field.as_deref().map(FieldPath::parse);
            let in_source = found.and_then(|(_, node)| exact(field.as_ref()?, node));
            // A patch that sets the field wins over the file the object came from: what the
            // patch says is what was built.
            match (field.as_ref().and_then(patched), in_source, found) {
                (Some((patch, pos)), _, _) => {
                    p.file = patch.clone();
                    (p.line, p.column) = (pos.line, pos.column);
                }
                (None, Some(pos), _) => (p.line, p.column) = (pos.line, pos.column),
                (None, None, Some((_, node))) => {
                    let pos = field.map_or(node.pos, |f| f.locate(node));
                    (p.line, p.column) = (pos.line, pos.column);
                }
                (None, None, None) => {}
            }
            p
        };
        load.problems.extend(one.problems.into_iter().map(located));
        load.warnings.extend(one.warnings.into_iter().map(located));
        for (key, pos) in one.quarantined {
            load.quarantined.push((key, found.map_or(pos, |(_, n)| n.pos)));
        }
        for m in one.manifests {
            let mut m = (*m).clone();
            if let Some((index, node)) = found {
                m.pos = node.pos;
                m.document = index;
            }
            let object = std::sync::Arc::make_mut(&mut m.object);
            if let Some(a) = object.pointer_mut("/metadata/annotations").and_then(Value::as_object_mut) {
                a.insert(ANNOTATION_KUSTOMIZATION.into(), Value::String(k.file.clone()));
                a.insert(ANNOTATION_DOCUMENT.into(), Value::String(m.document.to_string()));
            }
            load.manifests.push(std::sync::Arc::new(m));
        }
        load.intact &= one.intact;
    }
    load
}

/// Removes the origin annotation from a built document (and the annotations, if it was the
/// only one); returns its text.
fn take_origin(root: &mut Node) -> Option<String> {
    let NodeValue::Map(entries) = &mut root.value else { return None };
    let meta = entries.iter_mut().find(|e| e.key == "metadata")?;
    let NodeValue::Map(meta) = &mut meta.value.value else { return None };
    let i = meta.iter().position(|e| e.key == "annotations")?;
    let NodeValue::Map(annotations) = &mut meta[i].value.value else {
        return None;
    };
    let j = annotations.iter().position(|e| e.key == ORIGIN)?;
    let origin = annotations.remove(j);
    if annotations.is_empty() {
        meta.remove(i);
    }
    match origin.value.value {
        NodeValue::Scalar(s) => Some(s.text),
        _ => None,
    }
}

/// The file an origin names, relative to the root: `path:` for an object read from a file,
/// `configuredIn:` for a generated one.
fn origin_path(origin: &str) -> Option<&str> {
    let field = |name: &str| {
        origin
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().trim_matches('"').trim_matches('\''))
            .filter(|v| !v.is_empty())
    };
    field("path:").or_else(|| field("configuredIn:"))
}

/// Source files, read and parsed once per build, and the document an object came from.
struct Sources<'a> {
    tree: &'a dyn Tree,
    parsed: HashMap<String, Vec<Document>>,
}

impl<'a> Sources<'a> {
    fn new(tree: &'a dyn Tree) -> Sources<'a> {
        Sources {
            tree,
            parsed: HashMap::new(),
        }
    }

    /// Reads and parses `file`, once.
    fn read(&mut self, file: &str) {
        if !self.parsed.contains_key(file) {
            let docs = self
                .tree
                .read(file)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .and_then(|t| yaml::parse(&t).ok())
                .unwrap_or_default();
            self.parsed.insert(file.to_owned(), docs);
        }
    }

    /// The document of `file` (read before) that `built` came from: same kind, and a name the
    /// built one contains (prefixes, suffixes and hashes are added by the build); its index
    /// and node.
    fn find(&self, file: &str, built: &Node) -> Option<(usize, &Node)> {
        let kind = string_at(built, &["kind"])?;
        let name = string_at(built, &["metadata", "name"])?;
        let docs = self.parsed.get(file)?;
        docs.iter()
            .filter(|d| string_at(&d.root, &["kind"]).as_ref() == Some(&kind))
            .filter_map(|d| Some((d, string_at(&d.root, &["metadata", "name"])?)))
            .filter(|(_, n)| name.contains(n.as_str()))
            .max_by_key(|(_, n)| n.len())
            .map(|(d, _)| (d.index, &d.root))
    }
}

/// Where `path` is in `root`, when all of it is there.
fn exact(path: &FieldPath, root: &Node) -> Option<Pos> {
    let mut node = root;
    for seg in &path.0 {
        node = match (seg, &node.value) {
            (PathSeg::Key(k), NodeValue::Map(entries)) => &entries.iter().find(|e| &e.key == k)?.value,
            (PathSeg::Index(i), NodeValue::Seq(items)) => items.get(*i)?,
            _ => return None,
        };
    }
    Some(node.pos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_name_files_relative_to_the_root() {
        assert_eq!(origin_path("path: ../base/deploy.yaml\n"), Some("../base/deploy.yaml"));
        assert_eq!(
            origin_path("configuredIn: kustomization.yaml\nconfiguredBy:\n  apiVersion: builtin\n  kind: ConfigMapGenerator\n"),
            Some("kustomization.yaml")
        );
        assert_eq!(origin_path("repo: https://example.com\n"), None);
    }

    #[test]
    fn the_origin_annotation_is_taken_out() {
        let mut docs =
            yaml::parse("metadata:\n  name: a\n  annotations:\n    config.kubernetes.io/origin: |\n      path: x.yaml\n").unwrap();
        assert_eq!(take_origin(&mut docs[0].root).as_deref(), Some("path: x.yaml\n"));
        assert_eq!(string_at(&docs[0].root, &["metadata", "name"]).as_deref(), Some("a"));
        let NodeValue::Map(entries) = &docs[0].root.value else { panic!() };
        let NodeValue::Map(meta) = &entries[0].value.value else { panic!() };
        assert!(meta.iter().all(|e| e.key != "annotations"), "no annotations left, none kept");
    }
}
