//! Writes: the few changes the API accepts (node agents' observed state, pod deletion, restarts,
//! dry runs that show what a change would make) and the refusals that send changes to desired
//! state to Git.

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
use crate::controllers::autoscaler::AUTOSCALED_BY;

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
    // An autoscaled workload's count is its autoscaler's: that is the object to change.
    let autoscaler = existing
        .as_ref()
        .filter(|_| verb == "scale")
        .and_then(|e| e.object["metadata"]["annotations"][AUTOSCALED_BY].as_str().map(str::to_owned));
    let hpa_file = |hpa: &str| {
        let kind = capstan_api::kinds::by_name("horizontalpodautoscalers")?;
        let o = state.cache.get(kind, namespace, hpa)?;
        o.object["metadata"]["annotations"][ANNOTATION_SOURCE].as_str().map(str::to_owned)
    };
    let message = match (&existing, source) {
        (_, Some(file)) if let Some(hpa) = autoscaler => format!(
            "{what} is scaled by HorizontalPodAutoscaler {hpa:?}: to change its count, change the autoscaler's minReplicas and maxReplicas in {} in {location} on branch {branch} and commit",
            hpa_file(&hpa).unwrap_or(file)
        ),
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

pub(super) async fn write(
    state: &ApiState,
    id: &Identity,
    method: &Method,
    target: &Target,
    headers: &HeaderMap,
    query: &str,
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
    let unsupported = |message: String| ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "UnsupportedMediaType", message);
    let protobuf = verb == Verb::Create && ct.starts_with(super::protobuf::MEDIA_TYPE);
    let body = if protobuf && is_job(kind) {
        manual_run_from_protobuf(state, &namespace, &body).ok_or_else(|| {
            unsupported("a Job is created through the API only as a run of a CronJob (kubectl create job NAME --from=cronjob/CRONJOB); other Jobs are declared in Git".to_owned())
        })?
    } else if protobuf && kind.kind == "Pod" {
        let pod = super::protobuf::pod(&body).map_err(|why| unsupported(format!("reading the pod: {why}")))?;
        Bytes::from(serde_json::to_vec(&pod).unwrap_or_default())
    } else {
        body
    };
    if url::form_urlencoded::parse(query.as_bytes()).any(|(k, v)| k == "dryRun" && v == "All") {
        return dry_run(state, id, verb, kind, &namespace, &name, ct, &body);
    }
    let manual_run = verb == Verb::Create && is_manual_run(state, kind, &namespace, &body);
    let restart = verb == Verb::Patch
        && subresource.is_none()
        && serde_json::from_slice::<Value>(&body).is_ok_and(|p| capstan_api::meta::is_restart_patch(&p));
    authorize(
        state,
        id,
        &Attributes::new(verb, kind, ns, &name)
            .subresource(subresource.as_deref())
            .manual_run(manual_run)
            .restart(restart),
    )?;
    if kind.kind == "Pod" && subresource.as_deref() == Some("eviction") {
        return super::eviction::evict(state, &namespace, &name).await;
    }
    if kind.kind == "Pod" && subresource.as_deref() == Some("ephemeralcontainers") && verb != Verb::Delete {
        return super::ephemeral::write(state, verb, &namespace, &name, ct, &body).await;
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
            let patch: Value = serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("invalid JSON: {e}")))?;
            let apply = patcher(ct)?;
            let operator_only = kind.kind == "Node" && !matches!(id, Identity::Node(_));
            let mut beyond_operator = false;
            let written = objects
                .modify(kind, &namespace, &name, status_write, |current| {
                    let before = current.clone();
                    apply(current, &patch);
                    beyond_operator = operator_only && !only_operator_fields_changed(&before, current);
                    !beyond_operator && *current != before
                })
                .await?;
            if beyond_operator {
                return Err(ApiError::forbidden(format!(
                    "nodes {name:?}: a node is observed state, written by its agent; only cordoning (spec.unschedulable, as kubectl cordon and drain do), labels and annotations may be changed through the API"
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

/// How a patch of content type `ct` applies.
pub(super) fn patcher(ct: &str) -> Result<fn(&mut Value, &Value), ApiError> {
    if ct.starts_with("application/merge-patch+json") {
        Ok(super::patch::merge_patch)
    } else if ct.starts_with("application/strategic-merge-patch+json") || ct.starts_with("application/apply-patch") {
        // A server-side apply's object merges into the live one as a strategic patch would
        // (fields it names are set; Capstan keeps no field managers).
        Ok(super::patch::strategic_merge)
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            format!("patch type {ct:?} is not supported; use a merge or strategic merge patch"),
        ))
    }
}

/// The annotation client-side `kubectl apply` keeps; Capstan's sync is the applier, so objects
/// do not carry it, and a dry run does not add it (it would show as a change in every diff).
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// A dry run (`kubectl diff`, `kubectl apply --dry-run=server`): the object as the write would
/// make it, defaults filled in, and nothing written. Whoever may read the object may ask, since
/// nothing changes; the answer does not say Git would accept the change, only what it would be.
#[allow(clippy::too_many_arguments)]
fn dry_run(
    state: &ApiState,
    id: &Identity,
    verb: Verb,
    kind: &'static KindInfo,
    namespace: &str,
    name: &str,
    ct: &str,
    body: &[u8],
) -> Result<Response, ApiError> {
    let ns = Some(namespace).filter(|n| !n.is_empty());
    authorize(state, id, &Attributes::new(Verb::Get, kind, ns, name))?;
    let live = state.cache.get(kind, namespace, name).map(|e| (*e.object).clone());
    let not_found = || ApiError::not_found(format!("{} {name:?} not found", kind.resource()));
    let parse = |b: &[u8]| serde_json::from_slice::<Value>(b).map_err(|e| ApiError::bad_request(format!("invalid JSON: {e}")));
    let (code, mut object) = match verb {
        Verb::Delete => return Ok(json_response(StatusCode::OK, &live.ok_or_else(not_found)?)),
        Verb::Create => {
            let mut obj = parse(body)?;
            if kind.namespaced {
                obj["metadata"]["namespace"] = json!(namespace);
            }
            obj["metadata"]["creationTimestamp"] = json!(capstan_api::time::now_rfc3339());
            (StatusCode::CREATED, obj)
        }
        Verb::Update => (StatusCode::OK, parse(body)?),
        _ => {
            let mut obj = live.clone().ok_or_else(not_found)?;
            patcher(ct)?(&mut obj, &parse(body)?);
            (StatusCode::OK, obj)
        }
    };
    if let Some(live) = &live {
        for field in ["name", "namespace", "uid", "resourceVersion", "creationTimestamp", "generation"] {
            match live["metadata"].get(field) {
                Some(v) => object["metadata"][field] = v.clone(),
                None => {
                    if let Some(m) = object["metadata"].as_object_mut() {
                        m.remove(field);
                    }
                }
            }
        }
        if live["metadata"]["annotations"].get(LAST_APPLIED).is_none()
            && let Some(a) = object["metadata"]["annotations"].as_object_mut()
        {
            a.remove(LAST_APPLIED);
            if a.is_empty() {
                object["metadata"].as_object_mut().map(|m| m.remove("annotations"));
            }
        }
    }
    if let Some(m) = object["metadata"].as_object_mut() {
        m.remove("managedFields");
    }
    capstan_api::defaults::apply(kind, &mut object);
    if let Some(live) = &live
        && live.get("status").is_some()
    {
        // Status is the cluster's; a write of the object does not change it.
        object["status"] = live["status"].clone();
    }
    if let Some(live) = &live
        && object["spec"] != live["spec"]
        && let Some(generation) = live["metadata"]["generation"].as_i64()
    {
        object["metadata"]["generation"] = json!(generation + 1);
    }
    Ok(json_response(code, &object))
}

/// Whether `after` differs from `before` at most in what an operator sets on a node:
/// `spec.unschedulable`, labels and annotations (and the metadata the store keeps).
fn only_operator_fields_changed(before: &Value, after: &Value) -> bool {
    let plain = |v: &Value| {
        let mut v = v.clone();
        if let Some(spec) = v.get_mut("spec").and_then(Value::as_object_mut) {
            spec.remove("unschedulable");
        }
        if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
            for kept in ["resourceVersion", "managedFields", "generation", "labels", "annotations"] {
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

/// Whether `body` is a run made by hand, not desired state: a Job that `kubectl create job
/// --from=cronjob/x` made (marked as a manual run and controlled by a CronJob that exists), or a
/// node debugger (see [`is_node_debugger`]).
fn is_manual_run(state: &ApiState, kind: &KindInfo, namespace: &str, body: &[u8]) -> bool {
    let Ok(job) = serde_json::from_slice::<Value>(body) else {
        return false;
    };
    if kind.kind == "Pod" && kind.group.is_empty() {
        return is_node_debugger(&job);
    }
    if !is_job(kind) {
        return false;
    }
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

/// Whether `pod` is what `kubectl debug node/NAME` makes: bound by hand to a node, run once,
/// owned by nothing and not claiming to come from Git. Deleting it is allowed too, as for any
/// pod Git does not declare.
fn is_node_debugger(pod: &Value) -> bool {
    let owned = pod["metadata"]["ownerReferences"].as_array().is_some_and(|o| !o.is_empty());
    pod["spec"]["nodeName"].as_str().is_some_and(|n| !n.is_empty())
        && pod["spec"]["restartPolicy"] == "Never"
        && !owned
        && !capstan_api::meta::from_git(pod)
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
