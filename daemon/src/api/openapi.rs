//! The OpenAPI documents: `/openapi/v3` (an index of group-versions, each a document with every
//! kind's schema and the types it uses, as `kubectl explain`, kubectl's patch computation and
//! validators read them) and `/openapi/v2` (one Swagger document of all kinds). Built once, from
//! the kinds' schemas; each v3 document's hash (in the index's URL) changes with its content, so
//! kubectl's cache of an older document is not used.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use axum::body::Bytes;
use capstan_api::schema::{METRICS, OpenApiKind, REVIEWS};
use capstan_api::{KindInfo, REGISTRY};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

fn info() -> Value {
    json!({"title": "Capstan", "version": format!("v{}.{}", capstan_api::KUBERNETES_MAJOR, capstan_api::KUBERNETES_MINOR)})
}

/// Every document, rendered.
struct Documents {
    index: Bytes,
    /// By group-version path (`api/v1`, `apis/apps/v1`).
    groups: BTreeMap<String, Bytes>,
    v2: Bytes,
}

static DOCUMENTS: LazyLock<Documents> = LazyLock::new(|| {
    let all: Vec<OpenApiKind> = REGISTRY.iter().map(OpenApiKind::from).chain(REVIEWS).chain(METRICS).collect();
    let mut by_path: BTreeMap<String, Vec<OpenApiKind>> = BTreeMap::new();
    for k in &all {
        by_path.entry(gv_path(k.group, k.version)).or_default().push(*k);
    }
    let mut groups = BTreeMap::new();
    let mut index = Map::new();
    for (path, kinds) in &by_path {
        let served: Vec<&'static KindInfo> = REGISTRY.iter().filter(|k| gv_path(k.group, k.version) == *path).collect();
        let body = Bytes::from(serde_json::to_vec(&group_version(path, &served, kinds)).expect("JSON"));
        let hash = hex::encode_upper(&Sha256::digest(&body)[..16]);
        index.insert(
            path.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{path}?hash={hash}")}),
        );
        groups.insert(path.clone(), body);
    }
    let v2 = json!({
        "swagger": "2.0",
        "info": info(),
        "paths": {},
        "definitions": capstan_api::schema::openapi_definitions(&all, "#/definitions/"),
    });
    Documents {
        index: Bytes::from(serde_json::to_vec(&json!({"paths": index})).expect("JSON")),
        groups,
        v2: Bytes::from(serde_json::to_vec(&v2).expect("JSON")),
    }
});

/// One group-version's document: its kinds' schemas, and a `patch` operation per stored kind
/// (`served`) whose `fieldValidation` parameter tells kubectl the server validates fields itself.
fn group_version(path: &str, served: &[&'static KindInfo], kinds: &[OpenApiKind]) -> Value {
    let mut paths = Map::new();
    for k in served {
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
    // A review is a `create` on its collection (kubectl explain finds a kind by its path).
    for k in kinds.iter().filter(|k| REVIEWS.iter().any(|r| r.kind == k.kind)) {
        let op = json!({
            "x-kubernetes-group-version-kind": {"group": k.group, "version": k.version, "kind": k.kind},
            "x-kubernetes-action": "post",
            "responses": {"201": {"description": "Created"}}
        });
        paths.insert(format!("/{path}/{}s", k.kind.to_ascii_lowercase()), json!({"post": op}));
    }
    // A metrics kind is read from its collection.
    for (plural, kind, namespaced) in super::metrics::RESOURCES
        .iter()
        .filter(|(_, kind, _)| kinds.iter().any(|k| k.kind == *kind))
    {
        let op = json!({
            "x-kubernetes-group-version-kind": {"group": super::metrics::GROUP, "version": super::metrics::VERSION, "kind": kind},
            "x-kubernetes-action": "list",
            "responses": {"200": {"description": "OK"}}
        });
        let collection = if *namespaced {
            format!("/{path}/namespaces/{{namespace}}/{plural}")
        } else {
            format!("/{path}/{plural}")
        };
        paths.insert(collection, json!({"get": op}));
    }
    let schemas = capstan_api::schema::openapi_definitions(kinds, "#/components/schemas/");
    json!({
        "openapi": "3.0.0",
        "info": info(),
        "components": {"schemas": schemas},
        "paths": paths
    })
}

/// `GET /openapi/v3`: one entry per group-version.
pub fn index() -> Bytes {
    DOCUMENTS.index.clone()
}

/// `GET /openapi/v3/{api/v1 | apis/group/version}`.
pub fn group(path: &str) -> Option<Bytes> {
    DOCUMENTS.groups.get(path).cloned()
}

/// `GET /openapi/v2`.
pub fn v2() -> Bytes {
    DOCUMENTS.v2.clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_index_names_every_group_version_with_a_hash_of_its_document() {
        let index: Value = serde_json::from_slice(&index()).unwrap();
        let url = index["paths"]["apis/apps/v1"]["serverRelativeURL"].as_str().unwrap();
        let hash = url.split("hash=").nth(1).unwrap();
        assert_eq!(hash.len(), 32);
        let apps: Value = serde_json::from_slice(&group("apis/apps/v1").unwrap()).unwrap();
        assert!(apps["components"]["schemas"]["io.k8s.api.apps.v1.Deployment"].is_object());
        assert!(apps["components"]["schemas"]["io.k8s.api.core.v1.PodSpec"].is_object());
        assert!(apps["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"].is_object());
        assert!(group("apis/nothing/v1").is_none());
        let reviews: Value = serde_json::from_slice(&group("apis/authorization.k8s.io/v1").unwrap()).unwrap();
        assert!(reviews["components"]["schemas"]["io.k8s.api.authorization.v1.SelfSubjectAccessReview"].is_object());
        let metrics: Value = serde_json::from_slice(&group("apis/metrics.k8s.io/v1beta1").unwrap()).unwrap();
        let pod_metrics = &metrics["components"]["schemas"]["io.k8s.metrics.pkg.apis.metrics.v1beta1.PodMetrics"];
        assert_eq!(pod_metrics["x-kubernetes-group-version-kind"][0]["kind"], "PodMetrics");
        assert!(metrics["components"]["schemas"]["io.k8s.metrics.pkg.apis.metrics.v1beta1.ContainerMetrics"].is_object());
        assert!(metrics["paths"]["/apis/metrics.k8s.io/v1beta1/namespaces/{namespace}/pods"]["get"].is_object());
        let v2: Value = serde_json::from_slice(&v2()).unwrap();
        assert!(v2["definitions"]["io.k8s.api.core.v1.Pod"]["x-kubernetes-group-version-kind"].is_array());
    }
}
