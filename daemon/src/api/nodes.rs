//! Nodes joining the cluster, and administrators forgetting them.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::status::ApiError;
use super::{Shared, authorize, bearer, json_response};
use crate::auth::{Attributes, Identity, Verb};

/// `capstan node forget NAME` (administrators): revokes the node's credential and removes its
/// Node and Lease, so that its pods are replaced elsewhere and the name may join again.
pub(super) async fn forget_node(
    State(state): State<Shared>,
    axum::Extension(id): axum::Extension<Identity>,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> Response {
    let nodes = capstan_api::kinds::by_name("nodes").expect("served kind");
    if let Err(e) = authorize(&state, &id, &Attributes::new(Verb::Delete, nodes, None, &name)) {
        return e.into_response();
    }
    let revoked = match state.auth.revoke_node(&name).await {
        Ok(r) => r,
        Err(e) => return ApiError::internal(e.to_string()).into_response(),
    };
    let mut removed = Vec::new();
    for (plural, namespace) in [("leases", "kube-node-lease"), ("nodes", "")] {
        let kind = capstan_api::kinds::by_name(plural).expect("served kind");
        match state.objects.delete(kind, namespace, &name, None).await {
            Ok(_) => removed.push(plural),
            Err(crate::objects::ObjectError::NotFound { .. }) => {}
            Err(e) => return ApiError::internal(e.to_string()).into_response(),
        }
    }
    if !revoked && removed.is_empty() {
        return ApiError::not_found(format!("no node named {name:?}")).into_response();
    }
    tracing::info!(node = %name, "node forgotten");
    json_response(
        StatusCode::OK,
        &json!({"node": name, "credentialRevoked": revoked, "removed": removed}),
    )
}

/// A node joins with the join secret the first time, and again with its own credential: the
/// shared secret cannot take over a name that already has one (`capstan node forget` frees it).
pub(super) async fn join(State(state): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let token = bearer(&headers);
    let by_secret = token.is_some_and(|t| state.auth.is_join_secret(t));
    let caller = token.and_then(|t| state.auth.authenticate(t));
    if !by_secret && !matches!(caller, Some(Identity::Node(_))) {
        return ApiError::unauthorized().into_response();
    }
    let node = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v["nodeName"].as_str().map(str::to_owned));
    let Some(node) = node.filter(|n| capstan_api::names::dns1123_subdomain(n).is_none()) else {
        return ApiError::bad_request("a join request needs a valid nodeName").into_response();
    };
    match &caller {
        // A node re-joins as itself only.
        Some(id) => {
            let nodes = capstan_api::kinds::by_name("nodes").expect("served kind");
            if let Err(e) = authorize(&state, id, &Attributes::new(Verb::Create, nodes, None, &node)) {
                return e.into_response();
            }
        }
        None => match state.auth.node_has_credential(&node) {
            Ok(false) => {}
            Ok(true) => {
                return ApiError::new(
                    StatusCode::CONFLICT,
                    "AlreadyExists",
                    format!(
                        "node {node:?} has joined already: it re-joins with its own credential (kept in its data directory); to give the name to a new machine, run `capstan node forget {node}` first"
                    ),
                )
                .into_response();
            }
            Err(e) => return ApiError::internal(e.to_string()).into_response(),
        },
    }
    match &state.join {
        Some(j) => match j.join(node).await {
            Ok(v) => json_response(StatusCode::OK, &v),
            Err(e) => e.into_response(),
        },
        None => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "this server does not accept nodes",
        )
        .into_response(),
    }
}
