//! The Eviction subresource (`POST pods/NAME/eviction`, policy/v1): a pod is deleted only as its
//! PodDisruptionBudget allows — the budget's `disruptionsAllowed` taken by one and the pod
//! listed in its `disruptedPods` in one compare-and-swap, so that two evictions never spend the
//! same disruption — and otherwise refused with 429, which `kubectl drain` retries.

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::json;

use super::status::ApiError;
use super::{ApiState, json_response};
use crate::context::kind;
use crate::controllers::disruption::{Eviction, eviction};

fn refused(why: String) -> ApiError {
    let mut e = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "TooManyRequests",
        "Cannot evict pod as it would violate the pod's disruption budget.",
    );
    e.details = Some(json!({"causes": [{"reason": "DisruptionBudget", "message": why}]}));
    e
}

/// Evicts pod `name` of namespace `ns` if its budget allows.
pub(super) async fn evict(state: &ApiState, ns: &str, name: &str) -> Result<Response, ApiError> {
    let pods = kind("pods");
    let pdbs = kind("poddisruptionbudgets");
    let pod = state
        .cache
        .get(pods, ns, name)
        .ok_or_else(|| ApiError::not_found(format!("pods {name:?} not found")))?;
    let (budgets, _) = state.cache.list(pdbs, Some(ns));
    let refs: Vec<&serde_json::Value> = budgets.iter().map(|e| e.object.as_ref()).collect();
    match eviction(&pod.object, &refs) {
        Eviction::Free => {}
        Eviction::Ambiguous => {
            return Err(ApiError::internal(
                "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.",
            ));
        }
        Eviction::Refused(why) => return Err(refused(why)),
        Eviction::Counted(budget) => {
            let mut granted = false;
            let stamp = capstan_api::time::now_rfc3339();
            state
                .objects
                .modify(pdbs, ns, &budget, true, |b| {
                    let allowed = b["status"]["disruptionsAllowed"].as_i64().unwrap_or(0);
                    granted = allowed > 0;
                    if !granted {
                        return false;
                    }
                    b["status"]["disruptionsAllowed"] = json!(allowed - 1);
                    b["status"]["disruptedPods"][name] = json!(stamp);
                    true
                })
                .await?;
            if !granted {
                return Err(refused(format!("The disruption budget {budget} allows no more disruptions now")));
            }
        }
    }
    state.objects.delete_pod(ns, name, false).await?;
    Ok(json_response(
        StatusCode::CREATED,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
    ))
}
