//! Writes: the few changes the API accepts (node agents' observed state, pod deletion) and
//! the refusals that send changes to desired state to Git.

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::Response;
use capstan_api::KindInfo;
use capstan_api::meta::ANNOTATION_SOURCE;
use serde_json::{Value, json};

use super::paths::Target;
use super::status::ApiError;
use super::{ApiState, authorize, json_response};
use crate::auth::{Attributes, Identity, Verb};

/// The message that sends a user to Git for a change to desired state.
pub(super) fn managed_in_git(state: &ApiState, kind: &KindInfo, namespace: &str, name: &str, verb: &str) -> ApiError {
    let existing = state.cache.get(kind, namespace, name);
    let source = existing.as_ref().and_then(|e| {
        e.object
            .pointer("/metadata/annotations")
            .and_then(|a| a.get(ANNOTATION_SOURCE))
            .and_then(Value::as_str)
            .map(str::to_owned)
    });
    let git = &state.git;
    let branch = match (&git.branch, &state.sync) {
        (b, _) if !b.is_empty() => b.clone(),
        (_, Some(s)) if !s.borrow().branch.is_empty() => s.borrow().branch.clone(),
        _ => "its default branch".to_owned(),
    };
    let location = if git.path.is_empty() {
        git.repo.clone()
    } else {
        format!("{} (path {})", git.repo, git.path)
    };
    let what = if name.is_empty() {
        kind.resource()
    } else {
        format!("{} {name:?}", kind.resource())
    };
    let message = match (&existing, source) {
        (_, Some(file)) => format!(
            "{what} is managed in Git: to {verb} it, change {file} in {location} on branch {branch} and commit; Capstan applies the commit"
        ),
        (Some(_), None) => {
            format!("{what} is created by Capstan's controllers from objects in Git: change its owner in {location} on branch {branch}")
        }
        (None, None) => format!(
            "{what} cannot be {verb}d through the API: desired state is read from Git; add it to a manifest in {location} on branch {branch} and commit"
        ),
    };
    ApiError::method_not_allowed(message)
        .with_details(name, kind.group, kind.plural)
        .warned()
}

/// JSON merge patch (RFC 7386); strategic merge patches are applied the same way.
fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            let t = target.as_object_mut().expect("made an object");
            for (k, v) in p {
                if k.starts_with("$") {
                    continue; // strategic-merge directives
                }
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

pub(super) async fn write(
    state: &ApiState,
    id: &Identity,
    method: &Method,
    target: &Target,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (kind, namespace, name, subresource) = match target {
        Target::Object {
            kind,
            namespace,
            name,
            subresource,
        } => (*kind, namespace.clone().unwrap_or_default(), name.clone(), subresource.clone()),
        Target::Collection { kind, namespace } => {
            let name = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| v["metadata"]["name"].as_str().map(str::to_owned))
                .unwrap_or_default();
            (*kind, namespace.clone().unwrap_or_default(), name, None)
        }
        Target::GroupVersion { .. } => {
            return Err(ApiError::method_not_allowed("discovery documents are read-only"));
        }
    };
    let verb = match *method {
        Method::POST => Verb::Create,
        Method::PUT => Verb::Update,
        Method::PATCH => Verb::Patch,
        Method::DELETE => Verb::Delete,
        _ => {
            return Err(ApiError::method_not_allowed(format!("{method} is not supported")));
        }
    };
    let status_write = subresource.as_deref() == Some("status");
    let ns = Some(namespace.as_str()).filter(|n| !n.is_empty());
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let body = if verb == Verb::Create && is_job(kind) && ct.starts_with(super::protobuf::MEDIA_TYPE) {
        manual_run_from_protobuf(state, &namespace, &body).ok_or_else(|| {
            ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UnsupportedMediaType",
                "a Job is created through the API only as a run of a CronJob (kubectl create job NAME --from=cronjob/CRONJOB); other Jobs are declared in Git".to_owned(),
            )
        })?
    } else {
        body
    };
    let manual_run = verb == Verb::Create && is_manual_run(state, kind, &namespace, &body);
    authorize(
        state,
        id,
        &Attributes::new(verb, kind, ns, &name)
            .subresource(subresource.as_deref())
            .manual_run(manual_run),
    )?;
    if kind.kind == "Pod" && subresource.as_deref() == Some("eviction") {
        return super::eviction::evict(state, &namespace, &name).await;
    }
    let objects = &state.objects;
    let written = match verb {
        Verb::Delete => {
            if kind.kind == "Pod" {
                // `kubectl delete --force --grace-period=0`: the object goes now, whether or not
                // its node has stopped it (how an administrator releases a StatefulSet's pod
                // from a node that stopped answering).
                let force = serde_json::from_slice::<Value>(&body).is_ok_and(|o| o["gracePeriodSeconds"] == 0);
                request_pod_deletion(state, &namespace, &name, force || matches!(id, Identity::Node(_))).await?
            } else {
                objects.delete(kind, &namespace, &name, None).await?
            }
        }
        Verb::Create => {
            let mut obj: Value = serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("invalid JSON: {e}")))?;
            if kind.namespaced {
                obj["metadata"]["namespace"] = json!(namespace);
            }
            if kind.kind == "Event" && obj["metadata"]["name"].as_str().unwrap_or("").is_empty() {
                obj["metadata"]["name"] = json!(format!(
                    "{}.{}",
                    obj["involvedObject"]["name"].as_str().unwrap_or("event"),
                    uuid::Uuid::new_v4().simple()
                ));
            }
            objects.create(kind, obj).await?
        }
        Verb::Update => {
            let mut obj: Value = serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("invalid JSON: {e}")))?;
            obj["metadata"]["name"] = json!(name);
            if kind.namespaced {
                obj["metadata"]["namespace"] = json!(namespace);
            }
            objects.update(kind, obj, status_write).await?
        }
        _ => {
            if !(ct.starts_with("application/merge-patch+json") || ct.starts_with("application/strategic-merge-patch+json")) {
                return Err(ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "UnsupportedMediaType",
                    format!("patch type {ct:?} is not supported; use a merge patch"),
                ));
            }
            let patch: Value = serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("invalid JSON: {e}")))?;
            let cordon_only = kind.kind == "Node" && !matches!(id, Identity::Node(_));
            let mut beyond_cordon = false;
            let written = objects
                .modify(kind, &namespace, &name, status_write, |current| {
                    let before = current.clone();
                    merge_patch(current, &patch);
                    beyond_cordon = cordon_only && !only_unschedulable_changed(&before, current);
                    !beyond_cordon && *current != before
                })
                .await?;
            if beyond_cordon {
                return Err(ApiError::forbidden(format!(
                    "nodes {name:?}: a node is observed state, written by its agent; only cordoning (spec.unschedulable, as kubectl cordon and drain do) may be changed through the API"
                )));
            }
            written
        }
    };
    Ok(json_response(
        if verb == Verb::Create {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        &written,
    ))
}

/// Whether `after` differs from `before` at most in `spec.unschedulable` (and the metadata the
/// store keeps).
fn only_unschedulable_changed(before: &Value, after: &Value) -> bool {
    let plain = |v: &Value| {
        let mut v = v.clone();
        if let Some(spec) = v.get_mut("spec").and_then(Value::as_object_mut) {
            spec.remove("unschedulable");
        }
        if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
            for kept in ["resourceVersion", "managedFields", "generation"] {
                meta.remove(kept);
            }
        }
        v
    };
    plain(before) == plain(after)
}

fn is_job(kind: &KindInfo) -> bool {
    kind.group == "batch" && kind.kind == "Job"
}

/// The JSON of a Job that `kubectl create job --from=cronjob/x` sent as protobuf: its metadata
/// from the body, its spec the CronJob's Job template (which is all kubectl copies), so the
/// rest of the body need not be read. None when it is not such a Job.
fn manual_run_from_protobuf(state: &ApiState, namespace: &str, body: &[u8]) -> Option<Bytes> {
    let mut job = super::protobuf::object_meta(body)?;
    let owner = job["metadata"]["ownerReferences"]
        .as_array()?
        .iter()
        .find(|r| r["kind"] == "CronJob" && r["controller"] == true)?
        .clone();
    let cron_job = state
        .cache
        .get(crate::context::kind("cronjobs"), namespace, owner["name"].as_str()?)?;
    job["spec"] = cron_job.object["spec"]["jobTemplate"]["spec"].clone();
    serde_json::to_vec(&job).ok().map(Bytes::from)
}

/// Whether `body` is a Job that `kubectl create job --from=cronjob/x` made: marked as a manual
/// run and controlled by a CronJob that exists. Such a Job is a run, not desired state.
fn is_manual_run(state: &ApiState, kind: &KindInfo, namespace: &str, body: &[u8]) -> bool {
    if !is_job(kind) {
        return false;
    }
    let Ok(job) = serde_json::from_slice::<Value>(body) else {
        return false;
    };
    let manual = job["metadata"]["annotations"][crate::controllers::cronjob::MANUAL_ANNOTATION] == "manual";
    let owner = job["metadata"]["ownerReferences"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["kind"] == "CronJob" && r["controller"] == true);
    manual
        && owner.is_some_and(|r| {
            state
                .cache
                .get(crate::context::kind("cronjobs"), namespace, r["name"].as_str().unwrap_or_default())
                .is_some_and(|c| c.object["metadata"]["uid"] == r["uid"])
        })
}

/// Deleting a pod is graceful: a pod that runs on a node is marked (deletionTimestamp) and its
/// node agent stops it and then removes the object; a pod on no node, the agent's own final
/// delete, or a forced delete removes the object at once.
async fn request_pod_deletion(state: &ApiState, namespace: &str, name: &str, at_once: bool) -> Result<Value, ApiError> {
    state
        .objects
        .delete_pod(namespace, name, at_once)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("pods {name:?} not found")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_patches() {
        let mut t = json!({"metadata": {"labels": {"a": "1", "b": "2"}}, "spec": {"x": [1, 2]}});
        merge_patch(&mut t, &json!({"metadata": {"labels": {"a": null, "c": "3"}}, "spec": {"x": [3]}}));
        assert_eq!(t, json!({"metadata": {"labels": {"b": "2", "c": "3"}}, "spec": {"x": [3]}}));
    }
}
