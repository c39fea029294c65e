//! The `pods/ephemeralcontainers` subresource (`kubectl debug POD --image=…`): a write that only
//! adds debugging containers to a pod's spec, checked as Kubernetes checks it; the node agent
//! starts them in the pod's namespaces.

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};

use super::status::ApiError;
use super::writes::patcher;
use super::{ApiState, json_response};
use crate::auth::Verb;

/// Fields an ephemeral container may not set: it has no ports, probes, lifecycle, resources or
/// restart policy of its own (Kubernetes' `EphemeralContainerCommon` rules).
const FORBIDDEN: [&str; 8] = [
    "ports",
    "livenessProbe",
    "readinessProbe",
    "startupProbe",
    "lifecycle",
    "resources",
    "resizePolicy",
    "restartPolicy",
];

/// Applies `body` (a patch of the Pod, or for PUT the whole Pod) to the pod's ephemeral
/// containers; everything else in it is ignored, as Kubernetes' subresource does.
pub(super) async fn write(
    state: &ApiState,
    verb: Verb,
    namespace: &str,
    name: &str,
    content_type: &str,
    body: &[u8],
) -> Result<Response, ApiError> {
    let sent: Value = serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("invalid JSON: {e}")))?;
    let apply = if verb == Verb::Update { None } else { Some(patcher(content_type)?) };
    let kind = crate::context::kind("pods");
    // A strategic patch that names one container twice (`kubectl debug -c NAME` with a NAME in
    // use) would merge both into the existing one; Kubernetes refuses it as a duplicate.
    if let Some(message) = duplicate_in_patch(&sent) {
        return Err(invalid(name, &message));
    }
    let mut refused = None;
    let written = state
        .objects
        .modify(kind, namespace, name, false, |current| {
            let wanted = match apply {
                Some(apply) => {
                    let mut patched = current.clone();
                    apply(&mut patched, &sent);
                    patched["spec"]["ephemeralContainers"].take()
                }
                None => sent["spec"]["ephemeralContainers"].clone(),
            };
            let wanted = if wanted.is_null() { json!([]) } else { wanted };
            if let Err(message) = check(current, &wanted) {
                refused = Some(message);
                return false;
            }
            let before = current["spec"]["ephemeralContainers"].clone();
            if wanted.as_array().is_some_and(Vec::is_empty) && before.is_null() {
                return false;
            }
            current["spec"]["ephemeralContainers"] = wanted;
            current["spec"]["ephemeralContainers"] != before
        })
        .await?;
    match refused {
        Some(message) => Err(invalid(name, &message)),
        None => Ok(json_response(StatusCode::OK, &written)),
    }
}

/// Kubernetes' refusal of an invalid pod, with the field error as its cause (kubectl lists it).
fn invalid(name: &str, message: &str) -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "Invalid",
        format!("Pod {name:?} is invalid: {message}"),
    )
    .with_details(name, "", "pods")
    .with_cause(message)
}

/// A name given twice in a strategic patch's order of the ephemeral containers, as an error.
fn duplicate_in_patch(patch: &Value) -> Option<String> {
    let order = patch["spec"]["$setElementOrder/ephemeralContainers"].as_array()?;
    let names: Vec<&str> = order.iter().filter_map(|e| e["name"].as_str()).collect();
    let (i, name) = names.iter().enumerate().find(|(i, n)| names[..*i].contains(n))?;
    Some(format!("spec.ephemeralContainers[{i}].name: Duplicate value: {name:?}"))
}

/// Whether `wanted` may replace the pod's ephemeral containers: the existing ones unchanged and
/// in place, each new one well-formed, named uniquely and aimed at a container of the pod.
fn check(pod: &Value, wanted: &Value) -> Result<(), String> {
    let field = "spec.ephemeralContainers";
    let Some(wanted) = wanted.as_array() else {
        return Err(format!("{field}: Invalid value: must be a list of containers"));
    };
    let existing = pod["spec"]["ephemeralContainers"].as_array().cloned().unwrap_or_default();
    for (i, old) in existing.iter().enumerate() {
        let name = old["name"].as_str().unwrap_or_default();
        match wanted.get(i) {
            Some(new) if new == old => {}
            Some(_) => {
                return Err(format!(
                    "{field}[{i}]: Forbidden: existing ephemeral container {name:?} may not be changed"
                ));
            }
            None => {
                return Err(format!(
                    "{field}: Forbidden: existing ephemeral container {name:?} may not be removed"
                ));
            }
        }
    }
    let list = |key: &str| pod["spec"][key].as_array().cloned().unwrap_or_default();
    let (containers, init) = (list("containers"), list("initContainers"));
    let volumes: Vec<Value> = list("volumes").iter().map(|v| v["name"].clone()).collect();
    let mut names: Vec<&str> = containers
        .iter()
        .chain(&init)
        .chain(&existing)
        .filter_map(|c| c["name"].as_str())
        .collect();
    for (i, c) in wanted.iter().enumerate().skip(existing.len()) {
        let at = format!("{field}[{i}]");
        let name = c["name"].as_str().unwrap_or_default();
        if name.is_empty() {
            return Err(format!("{at}.name: Required value"));
        }
        if let Some(why) = capstan_api::names::dns1123_label(name) {
            return Err(format!("{at}.name: Invalid value: {name:?}: {why}"));
        }
        if names.contains(&name) {
            return Err(format!("{at}.name: Duplicate value: {name:?}"));
        }
        names.push(name);
        if c["image"].as_str().unwrap_or_default().is_empty() {
            return Err(format!("{at}.image: Required value"));
        }
        // kubectl sends empty values (`resources: {}`) for what it leaves unset.
        let set = |v: &Value| match v {
            Value::Null => false,
            Value::Object(m) => !m.is_empty(),
            Value::Array(a) => !a.is_empty(),
            Value::String(s) => !s.is_empty(),
            _ => true,
        };
        if let Some(f) = FORBIDDEN.iter().find(|f| set(&c[**f])) {
            return Err(format!("{at}.{f}: Forbidden: cannot be set for an Ephemeral Container"));
        }
        if let Some(target) = c["targetContainerName"].as_str()
            && !containers.iter().chain(&init).any(|t| t["name"] == target)
        {
            return Err(format!(
                "{at}.targetContainerName: Not found: {target:?}: the pod has no container of that name"
            ));
        }
        for (j, m) in c["volumeMounts"].as_array().into_iter().flatten().enumerate() {
            if !volumes.contains(&m["name"]) {
                return Err(format!("{at}.volumeMounts[{j}].name: Not found: {}", m["name"]));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> Value {
        json!({"spec": {"containers": [{"name": "web", "image": "app:1"}], "initContainers": [{"name": "setup", "image": "app:1"}],
                        "volumes": [{"name": "data", "emptyDir": {}}]}})
    }

    #[test]
    fn new_ephemeral_containers_are_checked_as_kubernetes_checks_them() {
        let debugger = json!({"name": "debugger", "image": "busybox", "targetContainerName": "web", "stdin": true, "tty": true,
                              "volumeMounts": [{"name": "data", "mountPath": "/data"}]});
        assert_eq!(check(&pod(), &json!([debugger])), Ok(()));
        let with = |f: &str, v: Value| {
            let mut c = debugger.clone();
            c[f] = v;
            check(&pod(), &json!([c])).unwrap_err()
        };
        assert_eq!(
            with("ports", json!([{"containerPort": 80}])),
            "spec.ephemeralContainers[0].ports: Forbidden: cannot be set for an Ephemeral Container"
        );
        assert!(with("name", json!("web")).contains("Duplicate value: \"web\""));
        assert!(with("name", json!("setup")).contains("Duplicate value"));
        assert!(with("name", json!("Bad_Name")).contains(".name: Invalid value"));
        assert!(with("image", json!("")).ends_with(".image: Required value"));
        assert!(with("targetContainerName", json!("nosuch")).contains("targetContainerName: Not found: \"nosuch\""));
        assert!(with("volumeMounts", json!([{"name": "other", "mountPath": "/x"}])).contains("volumeMounts[0].name: Not found"));
        assert!(
            check(&pod(), &json!([debugger, debugger]))
                .unwrap_err()
                .contains("[1].name: Duplicate value")
        );
    }

    #[test]
    fn a_patch_naming_a_container_twice_is_a_duplicate() {
        // What `kubectl debug -c debugger` sends when the pod has a `debugger` already.
        let patch = json!({"spec": {"$setElementOrder/ephemeralContainers": [{"name": "other"}, {"name": "debugger"}, {"name": "debugger"}],
                                    "ephemeralContainers": [{"name": "debugger", "image": "busybox"}, {"name": "debugger", "image": "app:1"}]}});
        assert_eq!(
            duplicate_in_patch(&patch).as_deref(),
            Some("spec.ephemeralContainers[2].name: Duplicate value: \"debugger\"")
        );
        assert_eq!(duplicate_in_patch(&json!({"spec": {"ephemeralContainers": []}})), None);
    }

    #[test]
    fn existing_ephemeral_containers_are_never_changed_or_removed() {
        let mut p = pod();
        let first = json!({"name": "debugger", "image": "busybox"});
        p["spec"]["ephemeralContainers"] = json!([first]);
        let second = json!({"name": "debugger-2", "image": "busybox"});
        assert_eq!(check(&p, &json!([first, second])), Ok(()));
        assert!(check(&p, &json!([])).unwrap_err().contains("may not be removed"));
        assert!(check(&p, &json!([second])).unwrap_err().contains("may not be changed"));
        assert!(check(&p, &json!({})).unwrap_err().contains("must be a list"));
        let unset = json!({"name": "debugger-2", "image": "busybox", "resources": {}, "ports": []});
        assert_eq!(check(&p, &json!([first, unset])), Ok(()), "empty values are unset");
    }
}
