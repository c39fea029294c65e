//! One manifest file into objects: multi-document streams and `kind: List` are split, each
//! document is identified (apiVersion, kind, namespace, name), checked against its kind's schema,
//! decoded into its Rust type and value-checked. Good objects come out ready to apply; bad ones
//! are named so that they can keep their last good version.

use capstan_api::ObjectKey;
use capstan_api::kinds::{self, KindInfo, Origin};
use capstan_api::meta::{ANNOTATION_DOCUMENT, ANNOTATION_SOURCE, DEFAULT_NAMESPACE};
use capstan_api::names::{self, NameRule};
use std::sync::Arc;

use serde_json::Value;

use crate::problem::{FieldPath, Problem, ProblemCode};
use crate::shape::shape_of;
use crate::validate;
use crate::yaml::{self, Node, NodeValue, Pos, ScalarKind};

/// An object read from a manifest, ready to apply.
#[derive(Clone, Debug, PartialEq)]
pub struct Manifest {
    pub key: ObjectKey,
    /// The object as JSON, status removed, with the source and document annotations. Shared, so
    /// that the desired state of a new commit reuses the objects of unchanged files.
    pub object: Arc<Value>,
    pub file: String,
    pub document: usize,
    /// Where the object starts in the file.
    pub pos: Pos,
}

/// Everything one file yields.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FileLoad {
    pub path: String,
    pub manifests: Vec<Arc<Manifest>>,
    /// Objects that were identified but have problems: they keep their last good version.
    pub quarantined: Vec<(ObjectKey, Pos)>,
    pub problems: Vec<Problem>,
    /// What is accepted but changed on the way, as the API server warns (a namespace on a
    /// cluster-scoped object, cleared).
    pub warnings: Vec<Problem>,
    /// False when some document could not even be identified (syntax error, unknown kind,
    /// missing or invalid name): nothing that came from this file may then be pruned, since the
    /// broken document may be any of them.
    pub intact: bool,
}

/// The largest object Kubernetes stores, as JSON: etcd's default request limit, 1.5 MiB.
pub const OBJECT_BYTES: usize = 3 << 19;

/// Why `object` is too large to store, if it is.
fn too_large(object: &Value) -> Option<String> {
    let mut counter = Counter(0);
    serde_json::to_writer(&mut counter, object).ok()?;
    (counter.0 > OBJECT_BYTES).then(|| {
        format!(
            "the object is {} bytes as JSON; Kubernetes stores objects of at most {OBJECT_BYTES} bytes (1.5 MiB, etcd's request limit)",
            counter.0
        )
    })
}

/// Counts what is written to it.
struct Counter(usize);

impl std::io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Whether a path names a manifest file by its extension.
pub fn is_manifest_path(path: &str) -> bool {
    path.ends_with(".yaml") || path.ends_with(".yml")
}

/// Loads one file. `path` is relative to the repository root and is what errors and the source
/// annotation name.
pub fn load_file(path: &str, bytes: &[u8]) -> FileLoad {
    let mut load = FileLoad {
        path: path.to_owned(),
        intact: true,
        ..FileLoad::default()
    };
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            let line = 1 + bytes[..e.valid_up_to()].iter().filter(|b| **b == b'\n').count() as u32;
            load.fail(Problem::new(
                path,
                Pos { line, column: 1 },
                ProblemCode::Syntax,
                "file is not valid UTF-8",
            ));
            return load;
        }
    };
    let documents = match yaml::parse(text) {
        Ok(d) => d,
        Err(e) => {
            load.fail(Problem::new(path, e.pos, ProblemCode::Syntax, e.message));
            return load;
        }
    };
    for doc in &documents {
        // Only a document this large can hold an object over the limit: JSON writes a scalar
        // at most six times as long as its text (`\u0001` for a control character), and every
        // node costs far more in the budget than its commas and quotes.
        load.document(doc.index, &doc.root, doc.expanded_bytes > OBJECT_BYTES / 6);
    }
    load
}

impl FileLoad {
    /// A file that is there but could not be read: its objects keep their last good version.
    pub fn unreadable(path: &str, why: String) -> FileLoad {
        let mut load = FileLoad {
            path: path.to_owned(),
            ..FileLoad::default()
        };
        load.fail(Problem::new(path, Pos { line: 1, column: 1 }, ProblemCode::Syntax, why));
        load
    }

    fn fail(&mut self, problem: Problem) {
        self.problems.push(problem);
        self.intact = false;
    }

    /// Reads one document; `measure` says whether its objects may be too large to store.
    pub fn document(&mut self, index: usize, root: &Node, measure: bool) {
        let entries = match &root.value {
            NodeValue::Scalar(s) if s.is_null() => return, // an empty document
            NodeValue::Map(entries) => entries,
            _ => {
                self.fail(Problem::new(
                    &self.path,
                    root.pos,
                    ProblemCode::NotAnObject,
                    "a manifest must be a mapping with apiVersion, kind and metadata",
                ));
                return;
            }
        };
        let Some((api_version, kind)) = self.type_meta(root) else {
            return;
        };
        if kind == "List" && (api_version == "v1" || api_version.is_empty()) {
            let items = entries.iter().find(|e| e.key == "items").map(|e| &e.value);
            match items.map(|n| &n.value) {
                Some(NodeValue::Seq(items)) => {
                    for item in items {
                        if matches!(item.value, NodeValue::Map(_)) {
                            self.object(index, item, measure);
                        } else {
                            self.fail(Problem::new(
                                &self.path,
                                item.pos,
                                ProblemCode::NotAnObject,
                                "items of a List must be objects",
                            ));
                        }
                    }
                }
                None => {}
                Some(_) => {
                    self.fail(Problem::new(&self.path, root.pos, ProblemCode::WrongType, "a List's items must be a list").field("items"))
                }
            }
            return;
        }
        self.object(index, root, measure);
    }

    /// Reads apiVersion and kind, reporting (and marking the file broken) when either is missing.
    fn type_meta(&mut self, node: &Node) -> Option<(String, String)> {
        let api_version = string_field(node, "apiVersion");
        let kind = string_field(node, "kind");
        match (api_version, kind) {
            (Some(a), Some(k)) => Some((a, k)),
            (a, k) => {
                let missing = if a.is_none() { "apiVersion" } else { "kind" };
                let _ = k;
                self.fail(
                    Problem::new(
                        &self.path,
                        node.pos,
                        ProblemCode::NotAnObject,
                        format!(
                            "missing {missing}: every manifest needs apiVersion and kind{}",
                            not_a_manifest(node)
                        ),
                    )
                    .field(missing),
                );
                None
            }
        }
    }

    fn object(&mut self, document: usize, node: &Node, measure: bool) {
        let path = self.path.clone();
        let Some((api_version, kind_name)) = self.type_meta(node) else {
            return;
        };
        // An older version is checked as written, then upgraded to the version served.
        let older = kinds::older(&api_version, &kind_name);
        let Some(kind) = kinds::by_api_version(&api_version, &kind_name).or(older.map(|o| &o.written)) else {
            let msg = match kinds::by_kind(&kind_name) {
                Some(k) => format!("{kind_name} is served as apiVersion {}, not {api_version}", k.api_version()),
                None if !not_a_manifest(node).is_empty() => {
                    format!("unknown kind {kind_name} (apiVersion {api_version}){}", not_a_manifest(node))
                }
                None => format!(
                    "unknown kind {kind_name} (apiVersion {api_version}); Capstan serves {}",
                    kinds::REGISTRY
                        .iter()
                        .filter(|k| k.origin == Origin::Git)
                        .map(|k| k.kind)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
            let pos = FieldPath::parse("kind").locate(node);
            self.fail(Problem::new(&path, pos, ProblemCode::UnknownKind, msg).field("kind"));
            return;
        };
        if kind.origin == Origin::Cluster && !endpoints_kind(kind) {
            let pos = FieldPath::parse("kind").locate(node);
            self.problems.push(
                Problem::new(
                    &path,
                    pos,
                    ProblemCode::NotFromGit,
                    format!("{kind_name} objects are written by Capstan itself and cannot be declared in Git"),
                )
                .field("kind"),
            );
            return;
        }
        let Some(key) = self.identify(kind, node) else {
            return;
        };
        let problems_before = self.problems.len();
        let mut issues = Vec::new();
        let mut object = shape_of(kind).convert(node, &mut issues);
        for i in issues {
            self.problems.push(
                Problem {
                    field: (!i.path.is_empty()).then_some(i.path),
                    ..Problem::new(&path, i.pos, i.code, i.message)
                }
                .object(Some(&key)),
            );
        }
        // Every problem of the object at once: the type errors above, then what the typed
        // decode finds, then the value checks — except where a field already has a problem
        // (a value check would only say again that it is missing).
        let mut troubled: Vec<FieldPath> = self.problems[problems_before..]
            .iter()
            .filter_map(|p| p.field.as_deref().map(FieldPath::parse))
            .collect();
        if let Some(obj) = object.as_object_mut() {
            obj.remove("status");
        }
        set_namespace(&mut object, kind, &key.namespace);
        // A ConfigMap's `data` whose values are all strings cannot fail the typed decode (a map
        // of strings is all it is), and it may hold 100,000 entries: it is set aside meanwhile.
        let strings_aside = (kind.group.is_empty() && kind.kind == "ConfigMap")
            .then(|| object.as_object_mut())
            .flatten()
            .filter(|o| {
                o.get("data")
                    .and_then(Value::as_object)
                    .is_some_and(|d| d.values().all(Value::is_string))
            })
            .and_then(|o| o.remove("data"));
        // A copy to remove fields from is made only once a decode fails.
        let mut decoding: Option<Value> = None;
        for _ in 0..MAX_DECODE_ERRORS {
            let Err(e) = kind.check(decoding.as_ref().unwrap_or(&object)) else {
                break;
            };
            let field = FieldPath::parse(&e.path);
            // A field the schema pass already reported (left null there) is not news.
            if !troubled.iter().any(|t| related(t, &field)) {
                // The decoder quotes what it could not read (a base64 symbol, say).
                let message = if kind.is_secret() {
                    "cannot be decoded: data values must be base64 (the values of a Secret are not shown)".to_owned()
                } else {
                    e.message
                };
                self.problems.push(
                    Problem::new(&path, field.locate(node), ProblemCode::WrongType, message)
                        .field(field.to_string())
                        .object(Some(&key)),
                );
                troubled.push(field.clone());
            }
            if field.0.is_empty() || !remove_at(decoding.get_or_insert_with(|| object.clone()), &field) {
                break;
            }
        }
        if let Some(data) = strings_aside {
            object["data"] = data;
        }
        if let Some(o) = older {
            (o.upgrade)(&mut object);
        }
        for finding in validate::check(kind.kind, &object) {
            if troubled.iter().any(|t| related(t, &finding.path)) {
                continue;
            }
            let pos = finding
                .path
                .locate_key(node)
                .filter(|_| finding.code == ProblemCode::MissingField)
                .unwrap_or_else(|| finding.path.locate(node));
            self.problems.push(
                Problem::new(&path, pos, finding.code, finding.message)
                    .field(finding.path.to_string())
                    .object(Some(&key)),
            );
        }
        if measure && let Some(message) = too_large(&object) {
            self.problems
                .push(Problem::new(&path, node.pos, ProblemCode::InvalidValue, message).object(Some(&key)));
        }
        if self.problems.len() > problems_before {
            self.quarantined.push((key, node.pos));
            return;
        }
        if kind.is_secret() {
            merge_string_data(&mut object);
        }
        if kind.kind == "NetworkPolicy" {
            self.warnings.push(
                Problem::new(
                    &path,
                    FieldPath::parse("kind").locate(node),
                    ProblemCode::InvalidValue,
                    NETWORK_POLICY_NOT_ENFORCED,
                )
                .field("kind")
                .object(Some(&key)),
            );
        }
        annotate(&mut object, &path, document);
        self.manifests.push(Arc::new(Manifest {
            key,
            object: Arc::new(object),
            file: path,
            document,
            pos: node.pos,
        }));
    }

    /// Works out the object's identity, or reports why it has none (and marks the file broken).
    fn identify(&mut self, kind: &'static KindInfo, node: &Node) -> Option<ObjectKey> {
        let path = self.path.clone();
        let name_path = FieldPath::parse("metadata.name");
        let Some(name) = string_at(node, &["metadata", "name"]) else {
            let pos = name_path.locate(node);
            self.fail(
                Problem::new(
                    &path,
                    pos,
                    ProblemCode::MissingField,
                    "missing required field \"name\": objects from Git need a fixed name",
                )
                .field("metadata.name"),
            );
            return None;
        };
        if let Some(e) = NameRule::for_kind(kind.kind).check(&name) {
            self.fail(Problem::new(&path, name_path.locate(node), ProblemCode::InvalidName, e).field("metadata.name"));
            return None;
        }
        let ns_path = FieldPath::parse("metadata.namespace");
        let namespace = string_at(node, &["metadata", "namespace"]);
        let namespace = match (kind.namespaced, namespace) {
            (true, None) => DEFAULT_NAMESPACE.to_owned(),
            (true, Some(ns)) => {
                if let Some(e) = names::dns1123_label(&ns) {
                    self.fail(Problem::new(&path, ns_path.locate(node), ProblemCode::InvalidName, e).field("metadata.namespace"));
                    return None;
                }
                ns
            }
            (false, None) => String::new(),
            (false, Some(ns)) => {
                // The API server clears it and warns; so does Capstan.
                let key = ObjectKey::new(kind, "", &name);
                self.warnings.push(
                    Problem::new(
                        &path,
                        ns_path.locate(node),
                        ProblemCode::InvalidValue,
                        format!(
                            "{} objects are cluster-scoped: metadata.namespace {ns:?} is ignored (remove it)",
                            kind.kind
                        ),
                    )
                    .field("metadata.namespace")
                    .object(Some(&key)),
                );
                String::new()
            }
        };
        Some(ObjectKey::new(kind, &namespace, &name))
    }
}

/// What every NetworkPolicy is told: it is kept and served (kubectl, charts and tools read it),
/// and, as on Kubernetes with a network plugin that does not implement policies, it restricts
/// nothing yet.
pub const NETWORK_POLICY_NOT_ENFORCED: &str = "NetworkPolicy is stored and served but not enforced: Capstan's pod network does not restrict traffic by policy yet, so every pod still reaches every pod";

/// Most errors the typed decode reports for one object (each is removed and decoding tried
/// again, so that every one is reported, not only the first).
const MAX_DECODE_ERRORS: usize = 20;

/// Whether one path is the other or lies under it.
fn related(a: &FieldPath, b: &FieldPath) -> bool {
    let n = a.0.len().min(b.0.len());
    a.0[..n] == b.0[..n]
}

/// Removes the value at `path` from `object`; false if there is none.
fn remove_at(object: &mut Value, path: &FieldPath) -> bool {
    use crate::problem::PathSeg;
    let Some((last, parents)) = path.0.split_last() else {
        return false;
    };
    let mut v = object;
    for seg in parents {
        let next = match seg {
            PathSeg::Key(k) => v.get_mut(k.as_str()),
            PathSeg::Index(i) => v.get_mut(*i),
        };
        match next {
            Some(n) => v = n,
            None => return false,
        }
    }
    match (last, v) {
        (PathSeg::Key(k), Value::Object(m)) => m.remove(k.as_str()).is_some(),
        (PathSeg::Index(i), Value::Array(a)) if *i < a.len() => {
            a[*i] = Value::Null;
            true
        }
        _ => false,
    }
}

/// The text of a string scalar field of a mapping node (not null, not a collection).
fn string_field(node: &Node, key: &str) -> Option<String> {
    let NodeValue::Map(entries) = &node.value else {
        return None;
    };
    let value = &entries.iter().find(|e| e.key == key)?.value;
    match &value.value {
        NodeValue::Scalar(s) if !s.is_null() || s.kind == ScalarKind::Str => Some(s.text.clone()),
        _ => None,
    }
}

/// The string at `path` (map keys) in `node`, if there is one.
pub fn string_at(node: &Node, path: &[&str]) -> Option<String> {
    let (last, parents) = path.split_last()?;
    let mut n = node;
    for p in parents {
        let NodeValue::Map(entries) = &n.value else {
            return None;
        };
        n = &entries.iter().find(|e| e.key == *p)?.value;
    }
    string_field(n, last)
}

/// Writes the namespace the object lands in, so that a manifest without one reads as it is.
fn set_namespace(object: &mut Value, kind: &KindInfo, namespace: &str) {
    let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) else {
        return;
    };
    if kind.namespaced {
        meta.insert("namespace".into(), Value::String(namespace.to_owned()));
    } else {
        meta.remove("namespace");
    }
}

/// Folds a Secret's `stringData` into `data`, base64-encoded, as the API server does on write:
/// `stringData` wins over `data` for the same key, and is never stored or served itself.
fn merge_string_data(object: &mut Value) {
    use base64::Engine as _;
    let Some(obj) = object.as_object_mut() else {
        return;
    };
    let Some(Value::Object(string_data)) = obj.remove("stringData") else {
        return;
    };
    let data = obj.entry("data").or_insert_with(|| Value::Object(Default::default()));
    if let Some(data) = data.as_object_mut() {
        for (key, value) in string_data {
            let text = value.as_str().unwrap_or_default();
            data.insert(key, Value::String(base64::engine::general_purpose::STANDARD.encode(text)));
        }
    }
}

/// Endpoints and EndpointSlices: written by the endpoints controller for a Service with a
/// selector, but declared in Git for one without (an external service, Kubernetes' documented
/// pattern); the desired state tells the two apart (it knows the Services).
pub fn endpoints_kind(kind: &KindInfo) -> bool {
    ENDPOINTS_KINDS.contains(&(kind.group, kind.kind))
}

/// The kinds a Service's endpoints are written as: (group, kind).
pub const ENDPOINTS_KINDS: [(&str, &str); 2] = [("", "Endpoints"), ("discovery.k8s.io", "EndpointSlice")];

/// For a document that is no Kubernetes object: what it looks like instead (the configs of the
/// tools repositories keep beside their manifests), and how to leave the file out.
fn not_a_manifest(node: &Node) -> String {
    let api = string_field(node, "apiVersion").unwrap_or_default();
    let has = |key: &str| matches!(&node.value, NodeValue::Map(entries) if entries.iter().any(|e| e.key == key));
    let tool = if api.starts_with("skaffold/") {
        "a Skaffold config"
    } else if api.starts_with("kind.x-k8s.io/") {
        "a kind cluster config"
    } else if api.starts_with("ctlptl.dev/") {
        "a ctlptl config"
    } else if api.starts_with("kustomize.config.k8s.io/") {
        "a kustomization outside a kustomize root (its file must be named kustomization.yaml)"
    } else if (api == "v1" || api == "v2") && has("name") && has("version") {
        "a Helm chart's Chart.yaml"
    } else if has("steps") {
        "a CI pipeline (Cloud Build or similar)"
    } else if has("services") && !has("kind") {
        "a Docker Compose file"
    } else if has("kind") || has("apiVersion") {
        return String::new();
    } else {
        "not a Kubernetes object"
    };
    format!("; this looks like {tool}: if the file is not a manifest, name it in .capstanignore to leave it out")
}

fn annotate(object: &mut Value, file: &str, document: usize) {
    let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) else {
        return;
    };
    let annotations = meta.entry("annotations").or_insert_with(|| Value::Object(Default::default()));
    if let Some(a) = annotations.as_object_mut() {
        a.insert(ANNOTATION_SOURCE.into(), Value::String(file.to_owned()));
        a.insert(ANNOTATION_DOCUMENT.into(), Value::String(document.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(load: &FileLoad) -> Vec<String> {
        load.problems.iter().map(|p| p.to_string()).collect()
    }

    #[test]
    fn multi_document_files_and_lists() {
        let text = "# app\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\napiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: ConfigMap\n  metadata: {name: b, namespace: shop}\n---\n";
        let load = load_file("cm.yaml", text.as_bytes());
        assert!(load.problems.is_empty(), "{:?}", lines(&load));
        let keys: Vec<String> = load.manifests.iter().map(|m| m.key.to_string()).collect();
        assert_eq!(keys, ["configmap/a -n default", "configmap/b -n shop"]);
        assert_eq!(load.manifests[1].document, 1);
        assert_eq!(load.manifests[1].pos.line, 9);
        assert_eq!(load.manifests[0].object["metadata"]["annotations"]["capstan.dev/source"], "cm.yaml");
        assert_eq!(load.manifests[0].object["metadata"]["namespace"], "default");
    }

    #[test]
    fn an_autoscaling_v1_autoscaler_is_read_as_v2() {
        let text = "apiVersion: autoscaling/v1\nkind: HorizontalPodAutoscaler\nmetadata: {name: web}\nspec:\n  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: web}\n  maxReplicas: 4\n  targetCPUUtilizationPercentage: 70\n";
        let load = load_file("hpa.yaml", text.as_bytes());
        assert!(load.problems.is_empty(), "{:?}", lines(&load));
        let hpa = &load.manifests[0].object;
        assert_eq!(hpa["apiVersion"], "autoscaling/v2");
        assert_eq!(hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"], 70);
        assert!(hpa["spec"].get("targetCPUUtilizationPercentage").is_none());
        // Checked as written: a v2 field in a v1 manifest is unknown there.
        let mixed = text.replace("  targetCPUUtilizationPercentage: 70\n", "  metrics: []\n");
        let load = load_file("hpa.yaml", mixed.as_bytes());
        assert_eq!(
            lines(&load),
            ["hpa.yaml:7:3: spec.metrics: unknown field \"metrics\" [horizontalpodautoscaler.autoscaling/web -n default]"]
        );
    }

    #[test]
    fn a_bad_object_is_quarantined_and_the_rest_loads() {
        let text = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: good}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: bad}\ndata: {a: [1]}\n";
        let load = load_file("x.yaml", text.as_bytes());
        assert_eq!(load.manifests.len(), 1);
        assert_eq!(load.quarantined.len(), 1);
        assert!(load.intact);
        assert_eq!(
            lines(&load),
            ["x.yaml:8:11: data.a: expected a string, got a list [configmap/bad -n default]"]
        );
    }

    #[test]
    fn unidentifiable_documents_break_the_file() {
        for (text, expect) in [
            (
                "apiVersion: apps/v1\nkind: Deploymnt\nmetadata: {name: x}\n",
                "x.yaml:2:7: kind: unknown kind Deploymnt",
            ),
            (
                "apiVersion: extensions/v1beta1\nkind: Deployment\nmetadata: {name: x}\n",
                "x.yaml:2:7: kind: Deployment is served as apiVersion apps/v1, not extensions/v1beta1",
            ),
            (
                "apiVersion: skaffold/v4beta6\nkind: Config\nbuild: {}\n",
                "x.yaml:2:7: kind: unknown kind Config (apiVersion skaffold/v4beta6); this looks like a Skaffold config: if the file is not a manifest, name it in .capstanignore to leave it out",
            ),
            (
                "steps:\n- name: gcr.io/cloud-builders/docker\n",
                "x.yaml:1:1: apiVersion: missing apiVersion: every manifest needs apiVersion and kind; this looks like a CI pipeline (Cloud Build or similar): if the file is not a manifest, name it in .capstanignore to leave it out",
            ),
            (
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {labels: {}}\n",
                "x.yaml:3:11: metadata.name: missing required field \"name\"",
            ),
            (
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: Web}\n",
                "x.yaml:3:18: metadata.name: a lowercase RFC 1123 subdomain",
            ),
            (
                "kind: ConfigMap\nmetadata: {name: x}\n",
                "x.yaml:1:1: apiVersion: missing apiVersion",
            ),
            ("a: [1\n", "x.yaml:1:4: unclosed bracket"),
            ("- 1\n- 2\n", "x.yaml:1:1: a manifest must be a mapping"),
        ] {
            let load = load_file("x.yaml", text.as_bytes());
            assert!(!load.intact, "{text}");
            assert!(load.manifests.is_empty());
            assert!(
                lines(&load)[0].starts_with(expect),
                "{:?} does not start with {expect:?}",
                lines(&load)
            );
        }
    }

    #[test]
    fn kinds_owned_by_the_cluster_are_refused() {
        let load = load_file("n.yaml", b"apiVersion: v1\nkind: Node\nmetadata: {name: n1}\n");
        assert_eq!(
            lines(&load),
            ["n.yaml:2:7: kind: Node objects are written by Capstan itself and cannot be declared in Git"]
        );
        assert!(load.intact);
    }

    #[test]
    fn a_namespace_on_a_cluster_scoped_object_is_cleared_with_a_warning() {
        let load = load_file(
            "ns.yaml",
            b"apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, namespace: x}\n",
        );
        assert!(load.problems.is_empty() && load.quarantined.is_empty(), "{:?}", lines(&load));
        let m = &load.manifests[0];
        assert_eq!((m.key.namespace.as_str(), m.key.name.as_str()), ("", "shop"));
        assert!(m.object["metadata"].get("namespace").is_none(), "cleared, as the API server does");
        let w: Vec<String> = load.warnings.iter().map(|p| p.to_string()).collect();
        assert_eq!(
            w,
            [
                "ns.yaml:3:35: metadata.namespace: Namespace objects are cluster-scoped: metadata.namespace \"x\" is ignored (remove it) [namespace/shop]"
            ]
        );
    }

    #[test]
    fn a_network_policy_is_kept_and_told_it_is_not_enforced() {
        let text = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: db, namespace: shop}\nspec:\n  podSelector: {matchLabels: {app: db}}\n";
        let load = load_file("np.yaml", text.as_bytes());
        assert!(load.problems.is_empty() && load.quarantined.is_empty(), "{:?}", lines(&load));
        assert_eq!(load.manifests.len(), 1);
        let w: Vec<String> = load.warnings.iter().map(|p| p.to_string()).collect();
        assert_eq!(
            w,
            [format!(
                "np.yaml:2:7: kind: {NETWORK_POLICY_NOT_ENFORCED} [networkpolicy.networking.k8s.io/db -n shop]"
            )]
        );
    }

    #[test]
    fn type_errors_found_by_decoding_are_located() {
        // Base64 in a Secret's data is checked by the Rust type, not the schema.
        let text = "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\ndata:\n  password: '%%%'\n";
        let load = load_file("s.yaml", text.as_bytes());
        assert_eq!(load.problems.len(), 1, "{:?}", lines(&load));
        let p = &load.problems[0];
        assert_eq!((p.line, p.field.as_deref()), (5, Some("data.password")));
    }

    #[test]
    fn value_checks_point_at_the_value() {
        let text = "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  ports:\n  - port: 99999\n";
        let load = load_file("s.yaml", text.as_bytes());
        assert_eq!(
            lines(&load),
            ["s.yaml:6:11: spec.ports[0].port: must be between 1 and 65535, inclusive (got 99999) [service/web -n default]"]
        );
    }

    #[test]
    fn secret_values_never_appear_in_messages() {
        let secret = "hunter2-do-not-print";
        for text in [
            format!("apiVersion: v1\nkind: Secret\nmetadata: {{name: s}}\nstringData: {secret}\n"),
            format!("apiVersion: v1\nkind: Secret\nmetadata: {{name: s}}\nimmutable: {secret}\n"),
            format!("apiVersion: v1\nkind: Secret\nmetadata: {{name: s}}\ndata: {{a: '{secret}%'}}\n"),
            format!("apiVersion: v1\nkind: Secret\nmetadata: {{name: s}}\ntype: [{secret}]\ndata: {secret}\n"),
            format!(
                "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Secret\n  metadata: {{name: s}}\n  stringData: {secret}\n"
            ),
        ] {
            let load = load_file("s.yaml", text.as_bytes());
            assert!(!load.problems.is_empty(), "{text}");
            for line in lines(&load) {
                assert!(!line.contains("hunter2"), "{line}");
                let json = serde_json::to_string(&load.problems).unwrap();
                assert!(!json.contains("hunter2"), "{json}");
            }
        }
        // Other kinds still quote what they got.
        let load = load_file("c.yaml", b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: plain\n");
        assert!(lines(&load)[0].contains("the string \"plain\""), "{:?}", lines(&load));
    }

    #[test]
    fn string_data_is_folded_into_data() {
        let text = "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\ndata: {a: YQ==, b: YQ==}\nstringData: {b: bee, c: see}\n";
        let load = load_file("s.yaml", text.as_bytes());
        let object = &load.manifests[0].object;
        assert_eq!(object["data"], serde_json::json!({"a": "YQ==", "b": "YmVl", "c": "c2Vl"}));
        assert!(object.get("stringData").is_none());
    }

    #[test]
    fn an_object_larger_than_kubernetes_stores_is_quarantined_with_the_limit() {
        let pod = |name: &str, bytes: usize| {
            let arg = "x".repeat(1000);
            let args = vec![arg.as_str(); bytes / 1000].join(", ");
            format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  containers: [{{name: c, image: i, args: [{args}]}}]\n")
        };
        let text = format!("{}---\n{}", pod("big", OBJECT_BYTES), pod("small", 10_000));
        let load = load_file("big.yaml", text.as_bytes());
        assert_eq!(load.manifests.len(), 1, "the small one loads");
        assert_eq!(load.quarantined.len(), 1);
        let problem = &load.problems[0];
        assert_eq!((problem.line, problem.code), (1, ProblemCode::InvalidValue), "{problem}");
        assert!(problem.message.contains("at most 1572864 bytes (1.5 MiB"), "{problem}");
        // Just under the limit is stored.
        let fits = pod("fits", OBJECT_BYTES - 100_000);
        assert_eq!(load_file("fits.yaml", fits.as_bytes()).manifests.len(), 1);
    }

    #[test]
    fn hostile_files_are_located_errors_that_break_only_their_file() {
        for text in [
            crate::hostile::alias_chain(500),
            crate::hostile::string_fan_out(100_000, 1_000),
            crate::hostile::fan_out(10, 9),
            crate::hostile::flow_nesting(1_000_000),
        ] {
            let load = load_file("bomb.yaml", text.as_bytes());
            assert!(!load.intact);
            assert_eq!(load.problems.len(), 1, "{:?}", lines(&load));
            assert_eq!(load.problems[0].code, ProblemCode::Syntax);
        }
        let load = load_file("wide.yaml", crate::hostile::wide_config_map(100_000).as_bytes());
        assert!(load.problems.is_empty(), "{:?}", lines(&load));
        assert_eq!(load.manifests[0].object["data"].as_object().unwrap().len(), 100_000);
    }

    #[test]
    fn every_problem_of_an_object_is_reported_at_once() {
        let text = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  replicas: three\n  revisionHistoryLimit: -1\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n      containers:\n      - {name: web, image: i, ports: [{containerPort: 99999}], imagePullPolicy: Sometimes}\n      - {name: side, image: [i]}\n";
        let load = load_file("d.yaml", text.as_bytes());
        let lines = lines(&load);
        for expect in [
            "spec.replicas: expected an integer",
            "spec.template.spec.containers[1].image: expected a string",
            "spec.revisionHistoryLimit: must be greater than or equal to 0",
            "spec.template.spec.containers[0].ports[0].containerPort: must be between 1 and 65535",
            "spec.template.spec.containers[0].imagePullPolicy: unsupported value",
        ] {
            assert!(lines.iter().any(|l| l.contains(expect)), "{expect}\nnot in {lines:#?}");
        }
        // The image with a type error is not reported again as missing.
        assert!(!lines.iter().any(|l| l.contains("a container needs an image")), "{lines:#?}");
    }

    #[test]
    fn every_decoding_error_is_reported() {
        let text = "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\ndata: {a: '%%%', b: '&&&', c: YQ==}\n";
        let load = load_file("s.yaml", text.as_bytes());
        let fields: Vec<_> = load.problems.iter().map(|p| p.field.clone().unwrap_or_default()).collect();
        assert_eq!(fields, ["data.a", "data.b"], "{:?}", lines(&load));
    }
}
