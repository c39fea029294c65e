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
