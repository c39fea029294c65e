//! The OpenAPI v3 documents kubectl fetches before a write: just enough (a `patch` operation per
//! kind with a `fieldValidation` parameter) that `kubectl apply` and `create` send their request
//! and the user sees why it is refused, instead of a client-side "failed to download openapi".

use capstan_api::REGISTRY;
use serde_json::{Map, Value, json};

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// `GET /openapi/v3`: one entry per group-version.
pub fn index() -> Value {
    let mut paths = Map::new();
    for k in REGISTRY {
        let p = gv_path(k.group, k.version);
        paths
            .entry(p.clone())
            .or_insert_with(|| json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash=capstan")}));
    }
    json!({"paths": paths})
}

/// `GET /openapi/v3/{api/v1 | apis/group/version}`.
pub fn group_version(path: &str) -> Option<Value> {
    let mut paths = Map::new();
    for k in REGISTRY.iter().filter(|k| gv_path(k.group, k.version) == path) {
        let object_path = if k.namespaced {
            format!("/{path}/namespaces/{{namespace}}/{}/{{name}}", k.plural)
        } else {
            format!("/{path}/{}/{{name}}", k.plural)
        };
        let op = json!({
            "x-kubernetes-group-version-kind": {"group": k.group, "version": k.version, "kind": k.kind},
            "x-kubernetes-action": "patch",
            "parameters": [{"name": "fieldValidation", "in": "query", "schema": {"type": "string"}}],
            "responses": {"200": {"description": "OK"}}
        });
        paths.insert(object_path, json!({"patch": op}));
    }
    if paths.is_empty() {
        return None;
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Capstan", "version": format!("v{}.{}", capstan_api::KUBERNETES_MAJOR, capstan_api::KUBERNETES_MINOR)},
        "components": {"schemas": {}},
        "paths": paths
    }))
}
