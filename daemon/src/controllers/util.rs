//! Small facts about objects that several controllers need: pod readiness and availability,
//! owner references, label selectors, the pod-template hash, and quantities.

use serde_json::{Value, json};

/// A namespaced object's key.
pub type NsName = (String, String);

pub fn key_of(v: &Value) -> NsName {
    (
        v.pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        v.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_owned(),
    )
}

pub fn uid(v: &Value) -> &str {
    v.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or_default()
}

pub fn is_terminating(v: &Value) -> bool {
    !v["metadata"]["deletionTimestamp"].is_null()
}

/// A pod counts toward its owner's replicas unless it is ending or has ended.
pub fn is_active(pod: &Value) -> bool {
    !is_terminating(pod) && !matches!(pod["status"]["phase"].as_str(), Some("Succeeded" | "Failed"))
}

pub fn condition<'a>(v: &'a Value, ty: &str) -> Option<&'a Value> {
    v["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == ty)
}

pub fn is_ready(pod: &Value) -> bool {
    condition(pod, "Ready").is_some_and(|c| c["status"] == "True")
}

pub use capstan_api::time::{now_seconds as now, seconds};

/// Ready for at least `min_ready_seconds` (Kubernetes' "available").
pub fn is_available(pod: &Value, min_ready_seconds: i64, now: i64) -> bool {
    if !is_ready(pod) {
        return false;
    }
    if min_ready_seconds <= 0 {
        return true;
    }
    condition(pod, "Ready")
        .and_then(|c| seconds(&c["lastTransitionTime"]))
        .is_some_and(|t| t + min_ready_seconds <= now)
}

/// The ownerReference marked as controller, if any.
pub fn controller_ref(v: &Value) -> Option<&Value> {
    v["metadata"]["ownerReferences"]
        .as_array()?
        .iter()
        .find(|o| o["controller"] == true)
}

pub fn is_controlled_by(v: &Value, owner: &Value) -> bool {
    controller_ref(v).is_some_and(|r| r["uid"] == owner["metadata"]["uid"])
}

/// An ownerReference pointing at `owner`, as its controller.
pub fn owner_ref(owner: &Value) -> Value {
    json!({
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
        "controller": true,
        "blockOwnerDeletion": true,
    })
}

/// The key of an object of `kind` from itself, or from an object it controls (its pods).
pub fn owner_keys(obj: &Value, kind: &str) -> Vec<NsName> {
    let ns = obj["metadata"]["namespace"].as_str().unwrap_or_default().to_owned();
    if obj["kind"] == kind {
        return vec![(ns, obj["metadata"]["name"].as_str().unwrap_or_default().to_owned())];
    }
    controller_ref(obj)
        .filter(|r| r["kind"] == kind)
        .and_then(|r| r["name"].as_str())
        .map(|n| vec![(ns, n.to_owned())])
        .unwrap_or_default()
}

/// Whether a Service's plain selector map selects a pod.
pub fn map_selects(selector: &Value, object: &Value) -> bool {
    let Some(sel) = selector.as_object().filter(|s| !s.is_empty()) else {
        return false;
    };
    sel.iter().all(|(k, v)| object["metadata"]["labels"][k] == *v)
}

/// FNV-1a, 32 bits, as Kubernetes hashes pod templates.
pub fn fnv32a(bytes: &[u8]) -> u32 {
    let mut h: u32 = 0x811c9dc5;
    for b in bytes {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x01000193);
    }
    h
}

/// Kubernetes' SafeEncodeString: digits mapped onto characters that spell no words.
pub fn safe_encode(s: &str) -> String {
    const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    s.bytes().map(|b| ALPHANUMS[b as usize % ALPHANUMS.len()] as char).collect()
}

/// The `pod-template-hash` of a pod template (labels of its own hash excluded).
pub fn template_hash(template: &Value, collision_count: i64) -> String {
    let mut t = template.clone();
    if let Some(l) = t["metadata"]["labels"].as_object_mut() {
        l.remove("pod-template-hash");
    }
    let mut bytes = serde_json::to_vec(&t).unwrap_or_default();
    if collision_count > 0 {
        bytes.extend_from_slice(collision_count.to_string().as_bytes());
    }
    safe_encode(&fnv32a(&bytes).to_string())
}

/// A short random suffix for generated names (`web-7d4f9c8b5-x2k9p`).
pub fn random_suffix() -> String {
    use rand::Rng;
    const CHARS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut r = rand::rng();
    (0..5).map(|_| CHARS[r.random_range(0..CHARS.len())] as char).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_hashes_are_stable_and_ignore_their_own_label() {
        let t = json!({"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "i:1"}]}});
        let mut labelled = t.clone();
        labelled["metadata"]["labels"]["pod-template-hash"] = json!("abc");
        assert_eq!(template_hash(&t, 0), template_hash(&labelled, 0));
        assert_ne!(template_hash(&t, 0), template_hash(&t, 1));
        let mut other = t.clone();
        other["spec"]["containers"][0]["image"] = json!("i:2");
        assert_ne!(template_hash(&t, 0), template_hash(&other, 0));
        assert!(template_hash(&t, 0).chars().all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)));
    }

    #[test]
    fn availability_needs_min_ready_seconds() {
        let pod = json!({"status": {"conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}});
        let t = "2026-01-01T00:00:00Z".parse::<jiff::Timestamp>().unwrap().as_second();
        assert!(is_available(&pod, 0, t));
        assert!(!is_available(&pod, 10, t + 5));
        assert!(is_available(&pod, 10, t + 10));
    }
}
