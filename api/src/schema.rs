//! JSON Schemas for every kind in the registry, as written to `schemas/` for editors and as the
//! manifest loader compiles them: draft-07, objects closed to unknown fields (Kubernetes' strict
//! field validation), `apiVersion` and `kind` pinned, int-or-string fields spelled out.

use schemars::generate::SchemaSettings;
use serde_json::{Map, Value, json};

use crate::kinds::{KindInfo, REGISTRY};

/// Definition name of the Kubernetes quantity type (`500m`, `128Mi`, or a plain number).
pub const QUANTITY_DEFINITION: &str = "io.k8s.apimachinery.pkg.api.resource.Quantity";

/// File name of a kind's schema: `deployment-apps-v1.json`, `pod-v1.json`; the group is
/// shortened to its first label, as the community's kubernetes-json-schema does.
pub fn file_name(kind: &KindInfo) -> String {
    let kind_lower = kind.kind.to_ascii_lowercase();
    match kind.group.split('.').next() {
        Some(g) if !g.is_empty() => format!("{kind_lower}-{g}-{}.json", kind.version),
        _ => format!("{kind_lower}-{}.json", kind.version),
    }
}

/// File name of the schema that accepts any kind, dispatching on `apiVersion` and `kind`.
pub const ALL_FILE_NAME: &str = "all.json";

/// The standalone schema of one kind.
pub fn kind_schema(kind: &KindInfo) -> Value {
    let generator = SchemaSettings::draft07().into_generator();
    let mut schema = kind.schema(generator).to_value();
    close_objects(&mut schema, None);
    pin_type_meta(&mut schema, kind);
    schema
}

/// The schema that accepts a manifest of any kind, by reference to the per-kind files.
pub fn all_schema() -> Value {
    let api_versions: Vec<String> = {
        let mut v: Vec<String> = REGISTRY.iter().map(|k| k.api_version()).collect();
        v.dedup();
        v
    };
    let kinds: Vec<&str> = REGISTRY.iter().map(|k| k.kind).collect();
    let branches: Vec<Value> = REGISTRY
        .iter()
        .map(|k| {
            json!({
                "if": {
                    "properties": {
                        "apiVersion": {"const": k.api_version()},
                        "kind": {"const": k.kind}
                    },
                    "required": ["apiVersion", "kind"]
                },
                "then": {"$ref": file_name(k)}
            })
        })
        .collect();
    json!({
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": "Capstan manifest",
        "description": "Any object Capstan accepts from Git; the kind's own schema applies.",
        "type": "object",
        "required": ["apiVersion", "kind"],
        "properties": {
            "apiVersion": {"type": "string", "enum": api_versions},
            "kind": {"type": "string", "enum": kinds}
        },
        "allOf": branches
    })
}

/// Every schema file: one per kind, then `all.json`, with their file names.
pub fn all_files() -> Vec<(String, Value)> {
    let mut files: Vec<(String, Value)> = REGISTRY.iter().map(|k| (file_name(k), kind_schema(k))).collect();
    files.push((ALL_FILE_NAME.to_owned(), all_schema()));
    files
}

/// A kind as the OpenAPI documents describe it.
#[derive(Clone, Copy)]
pub struct OpenApiKind {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    schema: fn(schemars::SchemaGenerator) -> schemars::Schema,
}

impl From<&'static KindInfo> for OpenApiKind {
    fn from(k: &'static KindInfo) -> OpenApiKind {
        OpenApiKind {
            group: k.group,
            version: k.version,
            kind: k.kind,
            schema: k.schema_fn(),
        }
    }
}

fn root_schema<T: schemars::JsonSchema>(generator: schemars::SchemaGenerator) -> schemars::Schema {
    generator.into_root_schema_for::<T>()
}

/// Kinds the API serves that are no objects in the registry (each request is answered, nothing
/// is stored) but that clients describe with `kubectl explain` all the same.
pub const REVIEWS: [OpenApiKind; 3] = [
    OpenApiKind {
        group: "authorization.k8s.io",
        version: "v1",
        kind: "SelfSubjectAccessReview",
        schema: root_schema::<k8s_openapi::api::authorization::v1::SelfSubjectAccessReview>,
    },
    OpenApiKind {
        group: "authorization.k8s.io",
        version: "v1",
        kind: "SelfSubjectRulesReview",
        schema: root_schema::<k8s_openapi::api::authorization::v1::SelfSubjectRulesReview>,
    },
    OpenApiKind {
        group: "authentication.k8s.io",
        version: "v1",
        kind: "SelfSubjectReview",
        schema: root_schema::<k8s_openapi::api::authentication::v1::SelfSubjectReview>,
    },
];

/// The resource metrics kinds, served by handlers of the API's own (nothing is stored).
pub const METRICS: [OpenApiKind; 2] = [
    OpenApiKind {
        group: crate::metrics::GROUP,
        version: crate::metrics::VERSION,
        kind: crate::metrics::NODE_METRICS,
        schema: root_schema::<crate::metrics::NodeMetrics>,
    },
    OpenApiKind {
        group: crate::metrics::GROUP,
        version: crate::metrics::VERSION,
        kind: crate::metrics::POD_METRICS,
        schema: root_schema::<crate::metrics::PodMetrics>,
    },
];

/// The OpenAPI definitions of `kinds`, by Kubernetes' names: each kind's schema, marked with
/// `x-kubernetes-group-version-kind` (as `kubectl explain` and kubectl's patch computation find
/// it), and every type it uses, its lists carrying the merge keys and strategies kubectl builds
/// strategic merge patches from; `$ref`s point under `prefix` (`#/definitions/` in OpenAPI v2,
/// `#/components/schemas/` in v3). Objects stay open, as Kubernetes' documents are: the API
/// server's strict field validation finds unknown fields.
pub fn openapi_definitions<'a>(kinds: impl IntoIterator<Item = &'a OpenApiKind>, prefix: &str) -> Map<String, Value> {
    let mut out = Map::new();
    for kind in kinds {
        let generator = SchemaSettings::draft07().into_generator();
        let mut schema = (kind.schema)(generator).to_value();
        let Some(root) = schema.as_object_mut() else { continue };
        root.remove("$schema");
        let definitions = root.remove("definitions");
        let name = match root.remove("title") {
            Some(Value::String(t)) if t.contains('.') => t,
            _ => {
                let domain: Vec<&str> = kind.group.split('.').rev().collect();
                format!("{}.{}.{}", domain.join("."), kind.version, kind.kind)
            }
        };
        root.insert(
            "x-kubernetes-group-version-kind".into(),
            json!([{"group": kind.group, "kind": kind.kind, "version": kind.version}]),
        );
        out.insert(name, schema);
        if let Some(Value::Object(defs)) = definitions {
            for (n, d) in defs {
                out.entry(n).or_insert(d);
            }
        }
    }
    for (name, definition) in out.iter_mut() {
        mark_list_merges(name, definition);
        retarget_refs(definition, prefix);
        openapi_3_0(definition);
    }
    out
}

/// What OpenAPI 3.0 (and kubectl) can read: an optional value as `type: X, nullable: true` where
/// JSON Schema (as schemars writes `Option`) says `type: [X, "null"]` or `anyOf: [S, {type:
/// null}]`, since kubectl reads `type` as one string; and items of any shape as Kubernetes marks
/// them (`x-kubernetes-preserve-unknown-fields`) rather than the schema `true`.
fn openapi_3_0(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            if map.get("items") == Some(&Value::Bool(true)) {
                map.insert("items".into(), json!({"x-kubernetes-preserve-unknown-fields": true}));
            }
            if let Some(Value::Array(types)) = map.get("type") {
                let kept: Vec<Value> = types.iter().filter(|t| *t != "null").cloned().collect();
                let nullable = kept.len() < types.len();
                match kept.as_slice() {
                    [one] => {
                        map.insert("type".into(), one.clone());
                    }
                    _ => {
                        map.remove("type");
                    }
                }
                if nullable {
                    map.insert("nullable".into(), Value::Bool(true));
                }
            }
            for key in ["anyOf", "oneOf"] {
                let Some(Value::Array(branches)) = map.get_mut(key) else { continue };
                let before = branches.len();
                branches.retain(|b| b.get("type") != Some(&json!("null")));
                if branches.len() < before {
                    if let [one] = branches.as_slice() {
                        let one = one.clone();
                        map.remove(key);
                        map.insert("allOf".into(), json!([one]));
                    }
                    map.insert("nullable".into(), Value::Bool(true));
                }
            }
            map.values_mut().for_each(openapi_3_0);
        }
        Value::Array(items) => items.iter_mut().for_each(openapi_3_0),
        _ => {}
    }
}

/// Adds `x-kubernetes-patch-merge-key` and `-strategy` to the list properties of definition
/// `name` that merge (see [`crate::merge`]).
fn mark_list_merges(name: &str, definition: &mut Value) {
    let containers = name.ends_with(".Container") || name.ends_with(".EphemeralContainer");
    let Some(properties) = definition.get_mut("properties").and_then(Value::as_object_mut) else {
        return;
    };
    for (field, property) in properties.iter_mut() {
        if property.get("type") != Some(&json!("array")) {
            continue;
        }
        let key = match crate::merge::list_merge(field, containers) {
            crate::merge::ListMerge::Replace => continue,
            crate::merge::ListMerge::Primitives => None,
            crate::merge::ListMerge::Key(key) => Some(key),
        };
        if let Some(key) = key {
            property["x-kubernetes-patch-merge-key"] = json!(key);
        }
        property["x-kubernetes-patch-strategy"] = json!(crate::merge::patch_strategy(field));
    }
}

/// Points every `#/definitions/…` reference under `prefix`.
fn retarget_refs(schema: &mut Value, prefix: &str) {
    match schema {
        Value::Object(map) => {
            for (key, child) in map.iter_mut() {
                match (key.as_str(), child) {
                    ("$ref", Value::String(r)) => {
                        if let Some(name) = r.strip_prefix("#/definitions/") {
                            *r = format!("{prefix}{name}");
                        }
                    }
                    (_, child) => retarget_refs(child, prefix),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|i| retarget_refs(i, prefix)),
        _ => {}
    }
}

/// Renders a schema as the committed file holds it: pretty JSON with a final newline.
pub fn render(schema: &Value) -> String {
    let mut out = serde_json::to_string_pretty(schema).expect("a JSON value always serialises");
    out.push('\n');
    out
}

/// Closes every object schema that lists its properties, so that a misspelt field is an error,
/// and spells out int-or-string types that draft-07 validators would otherwise accept as
/// anything. `definition` is the name of the definition being walked, if any.
fn close_objects(schema: &mut Value, definition: Option<&str>) {
    match schema {
        Value::Object(map) => {
            if map.contains_key("properties")
                && !map.contains_key("additionalProperties")
                && !map.contains_key("x-kubernetes-preserve-unknown-fields")
            {
                map.insert("additionalProperties".into(), Value::Bool(false));
            }
            if map.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true)) && !map.contains_key("anyOf") && !map.contains_key("type")
            {
                let number = if definition == Some(QUANTITY_DEFINITION) {
                    "number"
                } else {
                    "integer"
                };
                map.insert("anyOf".into(), json!([{"type": number}, {"type": "string"}]));
            }
            for (key, child) in map.iter_mut() {
                if key == "definitions" || key == "$defs" {
                    if let Value::Object(defs) = child {
                        for (name, def) in defs.iter_mut() {
                            close_objects(def, Some(name));
                        }
                    }
                } else if key != "enum" && key != "const" && key != "default" && key != "examples" {
                    close_objects(child, None);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|i| close_objects(i, None)),
        _ => {}
    }
}

/// Pins `apiVersion` and `kind` at the root to this kind and makes them required, so an editor
/// flags a manifest that names another kind or none.
fn pin_type_meta(schema: &mut Value, kind: &KindInfo) {
    let Some(root) = schema.as_object_mut() else {
        return;
    };
    let properties = root.entry("properties").or_insert_with(|| Value::Object(Map::new()));
    if let Some(props) = properties.as_object_mut() {
        props.insert(
            "apiVersion".into(),
            json!({"description": "The group and version of this kind.", "type": "string", "enum": [kind.api_version()]}),
        );
        props.insert(
            "kind".into(),
            json!({"description": "The kind of object.", "type": "string", "enum": [kind.kind]}),
        );
    }
    let required = root.entry("required").or_insert_with(|| Value::Array(Vec::new()));
    if let Some(req) = required.as_array_mut() {
        for field in ["apiVersion", "kind", "metadata"] {
            if !req.iter().any(|r| r == field) {
                req.push(Value::String(field.into()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::by_name;

    #[test]
    fn file_names_follow_the_community_convention() {
        assert_eq!(file_name(by_name("deploy").unwrap()), "deployment-apps-v1.json");
        assert_eq!(file_name(by_name("pod").unwrap()), "pod-v1.json");
        assert_eq!(file_name(by_name("lease").unwrap()), "lease-coordination-v1.json");
        assert_eq!(file_name(by_name("settings").unwrap()), "clustersettings-capstan-v1alpha1.json");
    }

    #[test]
    fn openapi_definitions_carry_kinds_and_merge_keys_with_kubernetes_names() {
        let kinds = [by_name("deploy").unwrap().into(), by_name("gateway").unwrap().into(), REVIEWS[0]];
        let defs = openapi_definitions(&kinds, "#/components/schemas/");
        assert!(defs["io.k8s.api.authorization.v1.SelfSubjectAccessReview"]["x-kubernetes-group-version-kind"].is_array());
        let deployment = &defs["io.k8s.api.apps.v1.Deployment"];
        assert_eq!(
            deployment["x-kubernetes-group-version-kind"],
            json!([{"group": "apps", "kind": "Deployment", "version": "v1"}])
        );
        assert_eq!(
            deployment["properties"]["spec"]["allOf"][0]["$ref"],
            "#/components/schemas/io.k8s.api.apps.v1.DeploymentSpec"
        );
        let pod_spec = &defs["io.k8s.api.core.v1.PodSpec"]["properties"];
        assert_eq!(pod_spec["containers"]["x-kubernetes-patch-merge-key"], "name");
        assert_eq!(pod_spec["volumes"]["x-kubernetes-patch-strategy"], "merge,retainKeys");
        assert_eq!(pod_spec["nodeSelector"].get("x-kubernetes-patch-strategy"), None);
        let container = &defs["io.k8s.api.core.v1.Container"]["properties"];
        assert_eq!(container["ports"]["x-kubernetes-patch-merge-key"], "containerPort");
        assert_eq!(container["args"].get("x-kubernetes-patch-merge-key"), None, "args replace");
        assert_eq!(
            defs["io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"]["properties"]["finalizers"]["x-kubernetes-patch-strategy"],
            "merge"
        );
        assert!(
            defs.contains_key("io.k8s.networking.gateway.v1.Gateway"),
            "{:?}",
            defs.keys().collect::<Vec<_>>()
        );
        let text = serde_json::to_string(&defs).unwrap();
        assert!(!text.contains("#/definitions/"));
        assert!(
            !text.contains(r#""type":["#) && !text.contains(r#""type":"null""#),
            "one type per schema, nullable instead of null"
        );
        let features =
            &openapi_definitions(&[by_name("gatewayclass").unwrap().into()], "")["GatewayClassStatus"]["properties"]["supportedFeatures"];
        assert_eq!(features["items"]["x-kubernetes-preserve-unknown-fields"], true, "{features}");
    }

    #[test]
    fn schemas_are_closed_and_pinned() {
        let s = kind_schema(by_name("deploy").unwrap());
        assert_eq!(s["additionalProperties"], false);
        assert_eq!(s["properties"]["kind"]["enum"][0], "Deployment");
        let container = &s["definitions"]["io.k8s.api.core.v1.Container"];
        assert_eq!(container["additionalProperties"], false);
        let labels = &s["definitions"]["io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"]["properties"]["labels"];
        assert_eq!(labels["additionalProperties"]["type"], "string");
        let quantity = &s["definitions"][QUANTITY_DEFINITION];
        assert_eq!(quantity["anyOf"][0]["type"], "number");
    }
}
