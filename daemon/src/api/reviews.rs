//! Asking the authoriser about oneself: SelfSubjectAccessReview (`kubectl auth can-i`),
//! SelfSubjectRulesReview (`kubectl auth can-i --list`) and SelfSubjectReview
//! (`kubectl auth whoami`), answered by the same rules that decide real requests.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::status::ApiError;
use super::{Shared, json_response, protobuf};
use crate::auth::{self, Attributes, Denial, Identity, Verb};

/// The review groups and their resources (plural, kind), for discovery.
pub const GROUPS: [(&str, &str, &[(&str, &str)]); 2] = [
    (
        "authorization.k8s.io",
        "v1",
        &[
            ("selfsubjectaccessreviews", "SelfSubjectAccessReview"),
            ("selfsubjectrulesreviews", "SelfSubjectRulesReview"),
        ],
    ),
    ("authentication.k8s.io", "v1", &[("selfsubjectreviews", "SelfSubjectReview")]),
];

/// The review's body as JSON, from JSON or kubectl's protobuf.
fn body(headers: &HeaderMap, bytes: &[u8]) -> Result<Value, ApiError> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if content_type.starts_with(protobuf::MEDIA_TYPE) {
        return protobuf::self_review(bytes).ok_or_else(|| ApiError::bad_request("the review is not a Kubernetes protobuf body"));
    }
    serde_json::from_slice(bytes).map_err(|e| ApiError::bad_request(format!("the review is not JSON: {e}")))
}

/// May the caller create reviews of this resource? (`system:basic-user` lets everyone.)
fn may_review(state: &Shared, id: &Identity, group: &'static str, resource: &'static str) -> Result<(), ApiError> {
    let user = id.user_info();
    let request = auth::rbac::Request::Resource {
        verb: "create",
        group,
        resource,
        subresource: None,
        namespace: None,
        name: "",
    };
    if matches!(id, Identity::Node(_)) || state.rbac.policy().allows(&user, &request) {
        return Ok(());
    }
    Err(ApiError::forbidden(format!(
        "{resource}.{group} is forbidden: User {:?} cannot create resource {resource:?} in API group {group:?} at the cluster scope",
        user.name
    )))
}

/// Changes a controller's objects allow by name (deleting an owned pod, restarting a workload):
/// asked about the collection, the answer is RBAC's, since some objects allow them.
fn possible_action(kind: &str, verb: Verb, subresource: &str) -> bool {
    matches!(
        (kind, verb, subresource),
        ("Pod", Verb::Delete, "")
            | ("Pod", Verb::Create, "eviction")
            | ("Job", Verb::Create, "")
            | ("Deployment" | "StatefulSet" | "DaemonSet", Verb::Patch, "")
            | ("PersistentVolumeClaim", Verb::Delete, "")
    )
}

/// The answer to one SelfSubjectAccessReview spec: (allowed, reason).
fn decide(state: &Shared, id: &Identity, spec: &Value) -> (bool, String) {
    let policy = state.rbac.policy();
    let user = id.user_info();
    if let Some(nr) = spec.get("nonResourceAttributes").filter(|v| v.is_object()) {
        let verb = nr["verb"].as_str().unwrap_or_default();
        let path = nr["path"].as_str().unwrap_or_default();
        return match auth::authorize_path(id, verb, path, &policy) {
            Ok(()) => (true, String::new()),
            Err(_) => (false, String::new()),
        };
    }
    let r = &spec["resourceAttributes"];
    let text = |k: &str| r[k].as_str().unwrap_or_default();
    let (verb, group, resource, subresource, namespace, name) = (
        text("verb"),
        text("group"),
        text("resource"),
        text("subresource"),
        text("namespace"),
        text("name"),
    );
    let namespace = (!namespace.is_empty()).then_some(namespace);
    let served = capstan_api::kinds::by_plural(group, resource);
    match (served, Verb::parse(verb)) {
        (Some(kind), Some(v)) if !(name.is_empty() && possible_action(kind.kind, v, subresource)) => {
            let a = Attributes::new(v, kind, namespace, name).subresource((!subresource.is_empty()).then_some(subresource));
            match auth::authorize(id, &a, state.cache.as_ref(), &policy) {
                Ok(()) => (true, String::new()),
                Err(Denial::InGit) => (
                    false,
                    format!("{} {} is desired state: changes to it are made in Git", verb, kind.resource()),
                ),
                // RBAC has no reason to give, as in Kubernetes; Capstan's own rules do.
                Err(Denial::NotGranted(_)) => (false, String::new()),
                Err(Denial::Forbidden(m)) => (false, m),
            }
        }
        _ => {
            let request = auth::rbac::Request::Resource {
                verb,
                group,
                resource,
                subresource: (!subresource.is_empty()).then_some(subresource),
                namespace,
                name,
            };
            (policy.allows(&user, &request), String::new())
        }
    }
}

/// `POST /apis/authorization.k8s.io/v1/selfsubjectaccessreviews`.
pub(super) async fn access(
    State(state): State<Shared>,
    axum::Extension(id): axum::Extension<Identity>,
    headers: HeaderMap,
    bytes: axum::body::Bytes,
) -> Response {
    let answer = || -> Result<Response, ApiError> {
        may_review(&state, &id, "authorization.k8s.io", "selfsubjectaccessreviews")?;
        let review = body(&headers, &bytes)?;
        let spec = &review["spec"];
        if spec.get("resourceAttributes").is_none_or(Value::is_null) && spec.get("nonResourceAttributes").is_none_or(Value::is_null) {
            return Err(ApiError::bad_request(
                "spec.resourceAttributes: Invalid value: null: exactly one of nonResourceAttributes or resourceAttributes must be specified",
            ));
        }
        let (allowed, reason) = decide(&state, &id, spec);
        let mut status = json!({"allowed": allowed});
        if !reason.is_empty() {
            status["reason"] = json!(reason);
        }
        Ok(created("authorization.k8s.io/v1", "SelfSubjectAccessReview", spec.clone(), status))
    };
    answer().unwrap_or_else(IntoResponse::into_response)
}

/// `POST /apis/authorization.k8s.io/v1/selfsubjectrulesreviews`.
pub(super) async fn rules(
    State(state): State<Shared>,
    axum::Extension(id): axum::Extension<Identity>,
    headers: HeaderMap,
    bytes: axum::body::Bytes,
) -> Response {
    let answer = || -> Result<Response, ApiError> {
        may_review(&state, &id, "authorization.k8s.io", "selfsubjectrulesreviews")?;
        let review = body(&headers, &bytes)?;
        let namespace = review["spec"]["namespace"].as_str().unwrap_or_default();
        let (resource, non_resource) = state.rbac.policy().rules(&id.user_info(), namespace);
        let mut status = json!({
            "resourceRules": resource.iter().map(|r| r.to_json()).collect::<Vec<_>>(),
            "nonResourceRules": non_resource.iter().map(|r| r.to_json()).collect::<Vec<_>>(),
            // A node's rights come from the node authoriser, which lists no rules.
            "incomplete": matches!(id, Identity::Node(_)),
        });
        if matches!(id, Identity::Node(_)) {
            status["evaluationError"] = json!("node rights come from the node authoriser, which does not list them");
        }
        Ok(created(
            "authorization.k8s.io/v1",
            "SelfSubjectRulesReview",
            json!({"namespace": namespace}),
            status,
        ))
    };
    answer().unwrap_or_else(IntoResponse::into_response)
}

/// `POST /apis/authentication.k8s.io/v1/selfsubjectreviews`.
pub(super) async fn whoami(State(state): State<Shared>, axum::Extension(id): axum::Extension<Identity>) -> Response {
    if let Err(e) = may_review(&state, &id, "authentication.k8s.io", "selfsubjectreviews") {
        return e.into_response();
    }
    let user = id.user_info();
    let status = json!({"userInfo": {"username": user.name, "groups": user.groups}});
    created("authentication.k8s.io/v1", "SelfSubjectReview", Value::Null, status)
}

/// A review as answered (201, as kube-apiserver answers a create).
fn created(api_version: &str, kind: &str, spec: Value, status: Value) -> Response {
    let mut review = json!({"apiVersion": api_version, "kind": kind, "metadata": {"creationTimestamp": null}, "status": status});
    if !spec.is_null() {
        review["spec"] = spec;
    }
    json_response(StatusCode::CREATED, &review)
}
