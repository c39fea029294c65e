//! TokenRequest: service-account tokens signed for a ServiceAccount, bound to a pod when asked.

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};

use super::status::ApiError;
use super::{ApiState, authorize, json_response, protobuf};
use crate::auth::{Attributes, Identity, Verb};

/// `POST .../serviceaccounts/NAME/token` (TokenRequest): a signed token for the ServiceAccount,
/// bound to a pod when asked (who may ask: `crate::auth::authorize`).
pub(super) fn token_request(
    state: &ApiState,
    id: &Identity,
    ns: &str,
    sa_name: &str,
    content_type: &str,
    body: &[u8],
) -> Result<Response, ApiError> {
    use crate::satoken::{Claims, DEFAULT_SECONDS, ISSUER, MIN_SECONDS};
    let signer = state.tokens.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "no service-account signing key",
        )
    })?;
    let request: Value = if content_type.starts_with(protobuf::MEDIA_TYPE) {
        protobuf::token_request(body).ok_or_else(|| ApiError::bad_request("the TokenRequest is not a Kubernetes protobuf body"))?
    } else {
        serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("the TokenRequest is not JSON: {e}")))?
    };
    let kind = |plural| capstan_api::kinds::by_name(plural).expect("served kind");
    let sa = state
        .cache
        .get(kind("serviceaccounts"), ns, sa_name)
        .ok_or_else(|| ApiError::not_found(format!("serviceaccounts {sa_name:?} not found")))?;
    let spec = &request["spec"];
    let seconds = spec["expirationSeconds"].as_i64().unwrap_or(DEFAULT_SECONDS);
    if seconds < MIN_SECONDS {
        return Err(ApiError::bad_request(
            "spec.expirationSeconds: may not specify a duration less than 10 minutes",
        ));
    }
    // Capped as kube-apiserver caps them with --service-account-max-token-expiration.
    let seconds = seconds.min(48 * 3600);
    let mut audiences: Vec<String> = spec["audiences"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str().map(str::to_owned))
        .collect();
    if audiences.is_empty() {
        audiences.push(ISSUER.to_owned());
    }
    let bound = &spec["boundObjectRef"];
    let pod = match bound["kind"].as_str() {
        None => None,
        Some("Pod") => {
            let pod_name = bound["name"].as_str().unwrap_or_default();
            let p = state
                .cache
                .get(kind("pods"), ns, pod_name)
                .ok_or_else(|| ApiError::not_found(format!("pods {pod_name:?} not found")))?;
            let uid = p.object["metadata"]["uid"].as_str().unwrap_or_default().to_owned();
            if bound["uid"].as_str().is_some_and(|u| !u.is_empty() && u != uid) {
                let asked = bound["uid"].as_str().unwrap_or_default();
                let message = format!("the UID in the bound object reference ({asked}) does not match the UID of pod {pod_name} ({uid})");
                return Err(ApiError::new(StatusCode::CONFLICT, "Conflict", message));
            }
            let uses = p.object["spec"]["serviceAccountName"].as_str().unwrap_or("default");
            if uses != sa_name {
                return Err(ApiError::bad_request(format!(
                    "pod {pod_name} runs as service account {uses:?}, not {sa_name:?}"
                )));
            }
            Some((pod_name.to_owned(), uid))
        }
        Some(other) => return Err(ApiError::bad_request(format!("cannot bind a token to a {other}: only pods"))),
    };
    let asked = Attributes::new(Verb::Create, kind("serviceaccounts"), Some(ns), sa_name)
        .subresource(Some("token"))
        .bound_pod(pod.as_ref().map(|p| p.0.as_str()));
    authorize(state, id, &asked)?;
    let now = jiff::Timestamp::now().as_second();
    let claims = Claims {
        namespace: ns.to_owned(),
        service_account: sa_name.to_owned(),
        service_account_uid: sa.object["metadata"]["uid"].as_str().unwrap_or_default().to_owned(),
        pod: pod.clone(),
        audiences: audiences.clone(),
        issued_at: now,
        expires_at: now + seconds,
    };
    let token = signer.issue(&claims).map_err(|e| ApiError::internal(e.to_string()))?;
    let expires = jiff::Timestamp::from_second(now + seconds)
        .map(capstan_api::time::format)
        .unwrap_or_default();
    let mut spec_out = json!({"audiences": audiences, "expirationSeconds": seconds});
    if let Some((name, uid)) = &pod {
        spec_out["boundObjectRef"] = json!({"kind": "Pod", "apiVersion": "v1", "name": name, "uid": uid});
    }
    let answer = json!({
        "kind": "TokenRequest",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"name": sa_name, "namespace": ns, "creationTimestamp": null},
        "spec": spec_out,
        "status": {"token": token, "expirationTimestamp": expires},
    });
    Ok(json_response(StatusCode::CREATED, &answer))
}
