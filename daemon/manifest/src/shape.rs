//! Compiled kind schemas, and the one pass that checks a YAML tree against one and turns it into
//! JSON: unknown fields, wrong types and missing required fields become issues with a field
//! path and a position, and scalars are read as the schema says (a quoted `"80"` is a string,
//! a plain `500m` is a quantity).
//!
//! k8s-openapi ignores unknown fields and serde's type errors carry no position, so this pass is
//! what gives users Kubernetes' strict field validation with file, line and column.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::OnceLock;

use capstan_api::kinds::{KindInfo, REGISTRY};
use capstan_api::schema::{QUANTITY_DEFINITION, kind_schema};
use serde_json::{Map, Number, Value};

use crate::problem::ProblemCode;
use crate::yaml::{Node, NodeValue, Pos, Resolved, Scalar, ScalarKind};

type ShapeId = usize;

/// What a field may hold.
#[derive(Debug)]
enum Shape {
    /// Free-form: anything, read by YAML's own rules.
    Any,
    String,
    Integer,
    Number,
    Boolean,
    IntOrString,
    Quantity,
    Array(ShapeId),
    /// A mapping with arbitrary keys whose values all have one shape.
    Map(ShapeId),
    Object {
        fields: HashMap<String, ShapeId>,
        required: Vec<String>,
    },
}

/// The compiled shapes of one kind.
#[derive(Debug)]
pub struct KindShape {
    shapes: Vec<Shape>,
    root: ShapeId,
    /// Whether values are secret: messages then say what a value is, never what it says.
    redact: bool,
}

/// A problem found in a document, with the path and position of the offending node.
#[derive(Clone, Debug, PartialEq)]
pub struct Issue {
    pub pos: Pos,
    /// Dotted field path from the document root, e.g. `spec.replicas`.
    pub path: String,
    pub code: ProblemCode,
    pub message: String,
}

/// The compiled shape of every registry kind (and older version read from Git), built once.
pub fn shape_of(kind: &KindInfo) -> &'static KindShape {
    static SHAPES: OnceLock<Vec<KindShape>> = OnceLock::new();
    let all = || REGISTRY.iter().chain(capstan_api::kinds::OLDER.iter().map(|o| &o.written));
    let shapes = SHAPES.get_or_init(|| {
        all()
            .map(|k| KindShape {
                redact: k.is_secret(),
                ..KindShape::compile(&kind_schema(k))
            })
            .collect()
    });
    let index = all()
        .position(|k| k.group == kind.group && k.version == kind.version && k.kind == kind.kind)
        .expect("kinds come from the registry");
    &shapes[index]
}

impl KindShape {
    /// Compiles a standalone draft-07 schema as [`kind_schema`] makes it.
    pub fn compile(schema: &Value) -> KindShape {
        let mut compiler = Compiler {
            definitions: schema.get("definitions").and_then(Value::as_object),
            shapes: Vec::new(),
            by_ref: HashMap::new(),
        };
        let root = compiler.compile(schema, None);
        KindShape {
            shapes: compiler.shapes,
            root,
            redact: false,
        }
    }

    /// Checks `node` against the kind and returns its JSON form; every problem is pushed to
    /// `issues`. Fields with problems are left out of the result.
    pub fn convert(&self, node: &Node, issues: &mut Vec<Issue>) -> Value {
        let mut path = Vec::new();
        self.convert_at(self.root, node, &mut path, issues)
    }

    /// Like [`Self::convert`] for a node below the root, e.g. one field of an object.
    fn convert_at<'n>(&'n self, id: ShapeId, node: &'n Node, path: &mut Vec<Seg<'n>>, issues: &mut Vec<Issue>) -> Value {
        let shape = &self.shapes[id];
        if let NodeValue::Scalar(s) = &node.value
            && s.is_null()
        {
            // Kubernetes reads an explicit null as "not set", whatever the field's type.
            return Value::Null;
        }
        match (shape, &node.value) {
            (Shape::Any, _) => to_json(node),
            (Shape::String, NodeValue::Scalar(s)) => Value::String(s.text.clone()),
            (Shape::Quantity, NodeValue::Scalar(s)) => match check_quantity(&s.text) {
                Ok(()) => Value::String(s.text.clone()),
                Err(msg) => {
                    issue(issues, node.pos, path, ProblemCode::InvalidValue, msg);
                    Value::Null
                }
            },
            (Shape::IntOrString, NodeValue::Scalar(s)) => match (s.kind, s.resolve()) {
                (ScalarKind::Str, _) => Value::String(s.text.clone()),
                (_, Resolved::Int(i)) => Value::Number(i.into()),
                _ => Value::String(s.text.clone()),
            },
            (Shape::Integer, NodeValue::Scalar(s)) => match s.resolve() {
                Resolved::Int(i) if s.kind != ScalarKind::Str => Value::Number(i.into()),
                _ => {
                    issue(issues, node.pos, path, ProblemCode::WrongType, self.wrong_scalar("an integer", s));
                    Value::Null
                }
            },
            (Shape::Number, NodeValue::Scalar(s)) => match s.resolve() {
                Resolved::Int(i) if s.kind != ScalarKind::Str => Value::Number(i.into()),
                Resolved::Float(f) if s.kind != ScalarKind::Str && f.is_finite() => Number::from_f64(f).map_or(Value::Null, Value::Number),
                _ => {
                    issue(issues, node.pos, path, ProblemCode::WrongType, self.wrong_scalar("a number", s));
                    Value::Null
                }
            },
            (Shape::Boolean, NodeValue::Scalar(s)) => match s.resolve() {
                Resolved::Bool(b) if s.kind != ScalarKind::Str => Value::Bool(b),
                _ => {
                    issue(
                        issues,
                        node.pos,
                        path,
                        ProblemCode::WrongType,
                        self.wrong_scalar("a boolean (true or false)", s),
                    );
                    Value::Null
                }
            },
            (Shape::Array(item), NodeValue::Seq(items)) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, child) in items.iter().enumerate() {
                    path.push(Seg::Index(i));
                    out.push(self.convert_at(*item, child, path, issues));
                    path.pop();
                }
                Value::Array(out)
            }
            (Shape::Map(value), NodeValue::Map(entries)) => {
                // Collected, then built in one go (sorted, then filled bottom up): inserting
                // 100,000 keys one by one shifts keys within the tree's nodes at every step.
                let mut out = Vec::with_capacity(entries.len());
                for e in entries {
                    path.push(Seg::Key(&e.key));
                    let v = self.convert_at(*value, &e.value, path, issues);
                    path.pop();
                    out.push((e.key.clone(), v));
                }
                Value::Object(out.into_iter().collect())
            }
            (Shape::Object { fields, required }, NodeValue::Map(entries)) => {
                let mut out = Map::with_capacity(entries.len());
                for e in entries {
                    path.push(Seg::Key(&e.key));
                    match fields.get(e.key.as_str()) {
                        Some(field) => {
                            let v = self.convert_at(*field, &e.value, path, issues);
                            if !v.is_null() {
                                out.insert(e.key.clone(), v);
                            }
                        }
                        None => issue(issues, e.key_pos, path, ProblemCode::UnknownField, unknown_field(&e.key, fields)),
                    }
                    path.pop();
                }
                for r in required {
                    if !out.contains_key(r.as_str()) && !entries.iter().any(|e| &e.key == r) {
                        path.push(Seg::Key(r));
                        issue(
                            issues,
                            node.pos,
                            path,
                            ProblemCode::MissingField,
                            format!("missing required field {r:?}"),
                        );
                        path.pop();
                    }
                }
                Value::Object(out)
            }
            (expected, _) => {
                issue(
                    issues,
                    node.pos,
                    path,
                    ProblemCode::WrongType,
                    format!("expected {}, got {}", expected.describe(), self.describe_node(node)),
                );
                Value::Null
            }
        }
    }
}

impl Shape {
    fn describe(&self) -> &'static str {
        match self {
            Shape::Any => "anything",
            Shape::String => "a string",
            Shape::Integer => "an integer",
            Shape::Number => "a number",
            Shape::Boolean => "a boolean (true or false)",
            Shape::IntOrString => "an integer or a string",
            Shape::Quantity => "a quantity (e.g. 500m, 128Mi, 2)",
            Shape::Array(_) => "a list",
            Shape::Map(_) | Shape::Object { .. } => "a mapping",
        }
    }
}

/// One step of a field path.
#[derive(Clone, Copy, Debug)]
enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

/// Renders a path as Kubernetes prints field paths: `spec.containers[0].image`.
fn render_path(path: &[Seg<'_>]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Seg::Index(i) => {
                let _ = write!(out, "[{i}]");
            }
        }
    }
    out
}

fn issue(issues: &mut Vec<Issue>, pos: Pos, path: &[Seg<'_>], code: ProblemCode, message: String) {
    issues.push(Issue {
        pos,
        path: render_path(path),
        code,
        message,
    });
}

impl KindShape {
    fn describe_node(&self, node: &Node) -> String {
        match &node.value {
            NodeValue::Seq(_) => "a list".into(),
            NodeValue::Map(_) => "a mapping".into(),
            NodeValue::Scalar(s) => self.describe_scalar(s),
        }
    }

    fn describe_scalar(&self, s: &Scalar) -> String {
        let (what, text) = match (s.kind, s.resolve()) {
            (ScalarKind::Str, _) | (_, Resolved::Str(_)) => ("string", format!("{:?}", s.text)),
            (_, Resolved::Bool(_)) => ("boolean", s.text.clone()),
            (_, Resolved::Int(_) | Resolved::Float(_)) => ("number", s.text.clone()),
            (_, Resolved::Null) => return "null".into(),
        };
        if self.redact {
            format!("a {what} (the values of a Secret are not shown)")
        } else {
            format!("the {what} {text}")
        }
    }

    fn wrong_scalar(&self, expected: &str, s: &Scalar) -> String {
        let mut msg = format!("expected {expected}, got {}", self.describe_scalar(s));
        if s.kind == ScalarKind::Str
            && !matches!(
                Scalar {
                    text: s.text.clone(),
                    kind: ScalarKind::Plain
                }
                .resolve(),
                Resolved::Str(_)
            )
        {
            msg.push_str(" (remove the quotes)");
        }
        msg
    }
}

fn unknown_field(key: &str, fields: &HashMap<String, ShapeId>) -> String {
    let best = fields
        .keys()
        .map(|f| (strsim::jaro_winkler(&key.to_ascii_lowercase(), &f.to_ascii_lowercase()), f))
        .filter(|(score, _)| *score > 0.85)
        .max_by(|a, b| a.0.total_cmp(&b.0));
    match best {
        Some((_, f)) => format!("unknown field {key:?} (did you mean {f:?}?)"),
        None => format!("unknown field {key:?}"),
    }
}

/// Checks a quantity as the API server does: syntax, and Kubernetes' range.
fn check_quantity(text: &str) -> Result<(), String> {
    text.parse::<capstan_api::quantity::Quantity>()
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Converts a node by YAML's own rules, for free-form fields.
pub fn to_json(node: &Node) -> Value {
    match &node.value {
        NodeValue::Scalar(s) => match s.resolve() {
            Resolved::Null => Value::Null,
            Resolved::Bool(b) => Value::Bool(b),
            Resolved::Int(i) => Value::Number(i.into()),
            Resolved::Float(f) => Number::from_f64(f).map_or_else(|| Value::String(s.text.clone()), Value::Number),
            Resolved::Str(t) => Value::String(t.to_owned()),
        },
        NodeValue::Seq(items) => Value::Array(items.iter().map(to_json).collect()),
        NodeValue::Map(entries) => Value::Object(entries.iter().map(|e| (e.key.clone(), to_json(&e.value))).collect()),
    }
}

struct Compiler<'a> {
    definitions: Option<&'a Map<String, Value>>,
    shapes: Vec<Shape>,
    by_ref: HashMap<String, ShapeId>,
}

impl Compiler<'_> {
    fn push(&mut self, shape: Shape) -> ShapeId {
        self.shapes.push(shape);
        self.shapes.len() - 1
    }

    fn compile(&mut self, schema: &Value, definition: Option<&str>) -> ShapeId {
        if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
            let name = reference.rsplit('/').next().unwrap_or(reference);
            if let Some(id) = self.by_ref.get(name) {
                return *id;
            }
            // Reserve the slot first so that recursive definitions terminate.
            let id = self.push(Shape::Any);
            self.by_ref.insert(name.to_owned(), id);
            if let Some(def) = self.definitions.and_then(|d| d.get(name)) {
                let compiled = self.compile(def, Some(name));
                // Only this reference points at `compiled`, so its slot is left unused.
                self.shapes[id] = std::mem::replace(&mut self.shapes[compiled], Shape::Any);
            }
            return id;
        }
        // Draft-07 wraps a `$ref` that has a description beside it in a one-element `allOf`.
        if let Some([only]) = schema.get("allOf").and_then(Value::as_array).map(Vec::as_slice) {
            return self.compile(only, definition);
        }
        if definition == Some(QUANTITY_DEFINITION) {
            return self.push(Shape::Quantity);
        }
        if schema.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true)) {
            return self.push(Shape::IntOrString);
        }
        let ty = match schema.get("type") {
            Some(Value::String(t)) => t.as_str(),
            // `["string", "null"]` and the like, as schemars writes optional fields of our kinds.
            Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).find(|t| *t != "null").unwrap_or(""),
            _ => "",
        };
        match ty {
            "string" => self.push(Shape::String),
            "integer" => self.push(Shape::Integer),
            "number" => self.push(Shape::Number),
            "boolean" => self.push(Shape::Boolean),
            "array" => {
                let item = match schema.get("items") {
                    Some(items) => self.compile(items, None),
                    None => self.push(Shape::Any),
                };
                self.push(Shape::Array(item))
            }
            "object" => {
                let properties = schema.get("properties").and_then(Value::as_object);
                let additional = schema.get("additionalProperties");
                match (properties, additional) {
                    (Some(props), _) => {
                        let mut fields = HashMap::with_capacity(props.len());
                        for (name, prop) in props {
                            let id = self.compile(prop, None);
                            fields.insert(name.clone(), id);
                        }
                        let required = schema
                            .get("required")
                            .and_then(Value::as_array)
                            .map(|r| r.iter().filter_map(Value::as_str).map(str::to_owned).collect())
                            .unwrap_or_default();
                        self.push(Shape::Object { fields, required })
                    }
                    (None, Some(additional)) if additional.is_object() => {
                        let value = self.compile(additional, None);
                        self.push(Shape::Map(value))
                    }
                    _ => self.push(Shape::Any),
                }
            }
            _ => {
                // `anyOf` of optional fields (`[{$ref}, {type: null}]`), as schemars writes them.
                if let Some(alts) = schema.get("anyOf").and_then(Value::as_array) {
                    let real: Vec<&Value> = alts
                        .iter()
                        .filter(|a| a.get("type") != Some(&Value::String("null".into())))
                        .collect();
                    if let [only] = real.as_slice() {
                        return self.compile(only, None);
                    }
                }
                self.push(Shape::Any)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::yaml;

    fn check(kind: &str, text: &str) -> (Value, Vec<Issue>) {
        let kind = capstan_api::kinds::by_name(kind).unwrap();
        let docs = yaml::parse(text).unwrap();
        let mut issues = Vec::new();
        let v = shape_of(kind).convert(&docs[0].root, &mut issues);
        (v, issues)
    }

    const DEPLOY: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web, tier: \"1\"}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: web
        image: web:1
        ports: [{containerPort: 8080, name: http}]
        env: [{name: PORT, value: \"8080\"}, {name: DEBUG, value: yes}]
        resources: {limits: {cpu: 0.5, memory: 128Mi}, requests: {cpu: 100m}}
        livenessProbe: {httpGet: {path: /, port: http}}
        readinessProbe: {httpGet: {path: /, port: 8080}}
";

    #[test]
    fn a_realistic_deployment_converts() {
        let (v, issues) = check("deploy", DEPLOY);
        assert!(issues.is_empty(), "{issues:?}");
        let c = &v["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["resources"]["limits"]["cpu"], "0.5");
        assert_eq!(c["env"][1]["value"], "yes");
        assert_eq!(c["livenessProbe"]["httpGet"]["port"], "http");
        assert_eq!(c["readinessProbe"]["httpGet"]["port"], 8080);
        assert_eq!(v["metadata"]["labels"]["tier"], "1");
        capstan_api::kinds::by_name("deploy").unwrap().check(&v).unwrap();
    }

    #[test]
    fn unknown_fields_wrong_types_and_missing_fields() {
        let text = DEPLOY
            .replace("replicas: 3", "replicas: \"3\"")
            .replace("image: web:1", "image: web:1\n        imagePullPolicyy: Always")
            .replace("- name: web\n", "- imag: x\n");
        let (_, issues) = check("deploy", &text);
        let by_path: Vec<(String, u32, &str)> = issues.iter().map(|i| (i.path.clone(), i.pos.line, i.message.as_str())).collect();
        assert!(
            by_path.iter().any(|(p, l, m)| p == "spec.replicas"
                && *l == 7
                && m.contains("expected an integer, got the string \"3\" (remove the quotes)")),
            "{by_path:?}"
        );
        assert!(
            by_path
                .iter()
                .any(|(p, l, m)| p == "spec.template.spec.containers[0].imagePullPolicyy"
                    && *l == 15
                    && m.contains("did you mean \"imagePullPolicy\"")),
            "{by_path:?}"
        );
        assert!(
            by_path
                .iter()
                .any(|(p, _, m)| p == "spec.template.spec.containers[0].imag" && m.contains("did you mean \"image\"")),
            "{by_path:?}"
        );
        assert!(
            by_path
                .iter()
                .any(|(p, _, m)| p == "spec.template.spec.containers[0].name" && m.contains("missing required field")),
            "{by_path:?}"
        );
    }

    #[test]
    fn quantities_are_checked() {
        assert!(check_quantity("500m").is_ok());
        assert!(check_quantity("1.5Gi").is_ok());
        assert!(check_quantity("2").is_ok());
        assert!(check_quantity("1e3").is_ok());
        assert!(check_quantity("12MB").is_err());
        assert!(check_quantity("lots").is_err());
        let (_, issues) = check(
            "pod",
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n  - name: c\n    resources: {limits: {memory: 12MB}}\n",
        );
        assert_eq!(issues.len(), 1);
        assert_eq!(issues[0].path, "spec.containers[0].resources.limits.memory");
        assert_eq!(issues[0].pos, Pos { line: 7, column: 34 });
    }

    #[test]
    fn nulls_read_as_unset_and_free_form_maps_stay_open() {
        let (v, issues) = check(
            "cm",
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\n  creationTimestamp: null\ndata:\n  a: \"1\"\n  b: x\n",
        );
        assert!(issues.is_empty(), "{issues:?}");
        assert!(v["metadata"].get("creationTimestamp").is_none());
        let (_, issues) = check("cm", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: {a: [1]}\n");
        assert_eq!(issues[0].message, "expected a string, got a list");
    }

    #[test]
    fn our_own_kind_is_closed_too() {
        let (_, issues) = check(
            "settings",
            "apiVersion: capstan.dev/v1alpha1\nkind: ClusterSettings\nmetadata: {name: cluster}\nspec:\n  serviceCIDR: 10.96.0.0/16\n  prunne: false\n",
        );
        assert_eq!(issues.len(), 1, "{issues:?}");
        assert!(issues[0].message.contains("did you mean \"prune\""), "{issues:?}");
    }
}
