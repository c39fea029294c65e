//! Persistent volumes, as Kubernetes' volume binder and a local-path provisioner: a claim is
//! bound to a matching volume (class, access modes, capacity, selector; a local volume only on
//! the node its first pod was scheduled to, under WaitForFirstConsumer), or a volume is made for
//! it on that node by the built-in `capstan.dev/local-path` provisioner; claims in use are
//! protected; a volume whose claim is gone is Released and, under reclaim Delete, removed once
//! its node agent has removed the directory. [`needs`] tells the scheduler what a pod's claims
//! ask of a node.

use std::collections::HashSet;

use capstan_api::quantity::Quantity;
use capstan_api::selector::Selector;
use capstan_api::storage::{
    CLAIM_PROTECTION, DEFAULT_CLASS_ANNOTATION, HOSTNAME_LABEL, LOCAL_VOLUME_FINALIZER, NODE_VOLUME_DIR_ANNOTATION,
    PROVISIONED_BY_ANNOTATION, PROVISIONER, SELECTED_NODE_ANNOTATION,
};
use capstan_runtime::{Action, Reconciler};
use capstan_scheduler::model::{NodeInfo, NodeTerm, VolumeNeeds};
use serde_json::{Value, json};

use super::util::{is_terminating, uid};
use super::{Controller, watches};
use crate::cache::Cache;
use crate::context::{Context, kind};
use crate::events::{EventType, Recorder};
use crate::objects::{ObjectError, Part, name_of};

/// What the controller looks at: a claim, or a volume.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Key {
    Claim(String, String),
    Volume(String),
}

pub struct VolumeController {
    pub ctx: Context,
    pub events: Recorder,
}

/// The claims a pod's volumes name.
pub fn claims_of(pod: &Value) -> impl Iterator<Item = &str> {
    pod["spec"]["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["persistentVolumeClaim"]["claimName"].as_str())
}

/// Watches claims, volumes, the pods that use claims, and classes (a class that appears lets
/// the claims waiting for it go on).
pub fn controller(ctx: &Context) -> Controller<Key, VolumeController> {
    // A claim's change (its deletion above all) concerns its volume too.
    let claim_keys = |o: &Value| {
        let ns = o["metadata"]["namespace"].as_str().unwrap_or_default().to_owned();
        let mut keys = vec![Key::Claim(ns, name_of(o).to_owned())];
        if let Some(v) = o["spec"]["volumeName"].as_str().filter(|v| !v.is_empty()) {
            keys.push(Key::Volume(v.to_owned()));
        }
        keys
    };
    let volume_keys = |o: &Value| {
        let mut keys = vec![Key::Volume(name_of(o).to_owned())];
        let r = &o["spec"]["claimRef"];
        if let (Some(ns), Some(n)) = (r["namespace"].as_str(), r["name"].as_str()) {
            keys.push(Key::Claim(ns.to_owned(), n.to_owned()));
        }
        keys
    };
    let pod_keys = |p: &Value| {
        let ns = p["metadata"]["namespace"].as_str().unwrap_or_default();
        claims_of(p).map(|c| Key::Claim(ns.to_owned(), c.to_owned())).collect()
    };
    let cache = ctx.cache.clone();
    let pending = move |_: &Value| {
        cache
            .list(kind("persistentvolumeclaims"), None)
            .0
            .iter()
            .filter(|c| c.object["spec"]["volumeName"].as_str().is_none_or(str::is_empty))
            .map(|c| Key::Claim(c.namespace.clone(), c.name.clone()))
            .collect()
    };
    Controller {
        name: "persistentvolume-binder",
        reconciler: VolumeController {
            ctx: ctx.clone(),
            events: Recorder::new(ctx.objects.clone(), "persistentvolume-controller", None),
        },
        workers: 2,
        triggers: vec![
            watches("persistentvolumeclaims", claim_keys),
            watches("persistentvolumes", volume_keys),
            watches("pods", pod_keys),
            watches("storageclasses", pending),
        ],
    }
}

/// The class claims without one get: the newest class marked default.
pub fn default_class(cache: &Cache) -> Option<String> {
    let (classes, _) = cache.list(kind("storageclasses"), None);
    classes
        .iter()
        .filter(|c| c.object["metadata"]["annotations"][DEFAULT_CLASS_ANNOTATION] == "true")
        .max_by_key(|c| c.object["metadata"]["creationTimestamp"].as_str().unwrap_or_default().to_owned())
        .map(|c| c.name.clone())
}

/// The class a claim asks for: its own (`""` is none), else the default.
fn class_of(claim: &Value, cache: &Cache) -> String {
    match claim["spec"]["storageClassName"].as_str() {
        Some(c) => c.to_owned(),
        None => default_class(cache).unwrap_or_default(),
    }
}

fn storage(v: &Value) -> i64 {
    Quantity::of(v).value()
}

/// The node terms a volume's node affinity requires (empty: any node).
pub fn volume_terms(pv: &Value) -> Vec<NodeTerm> {
    pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"]
        .as_array()
        .into_iter()
        .flatten()
        .map(NodeTerm::from_json)
        .collect()
}

/// Whether volume `pv` can serve `claim` of class `class` (on `node`, when given): free or
/// reserved for this claim, same class and mode, the access modes asked for, enough capacity,
/// labels the claim's selector matches.
pub fn serves(pv: &Value, claim: &Value, class: &str, node: Option<&NodeInfo>) -> bool {
    let spec = &pv["spec"];
    let claim_ref = &spec["claimRef"];
    let free = claim_ref.is_null()
        || (claim_ref["name"] == claim["metadata"]["name"]
            && claim_ref["namespace"] == claim["metadata"]["namespace"]
            && claim_ref["uid"].as_str().is_none_or(|u| u.is_empty() || u == uid(claim)));
    let modes: HashSet<&str> = spec["accessModes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let wanted_modes = claim["spec"]["accessModes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str);
    let volume_mode = |v: &Value| v["volumeMode"].as_str().unwrap_or("Filesystem").to_owned();
    free && !is_terminating(pv)
        && (!claim_ref.is_null() || pv["status"]["phase"].as_str().is_none_or(|p| p == "Available" || p == "Pending"))
        && spec["storageClassName"].as_str().unwrap_or_default() == class
        && volume_mode(spec) == volume_mode(&claim["spec"])
        && wanted_modes.into_iter().all(|m| modes.contains(m))
        && storage(&spec["capacity"]["storage"]) >= storage(&claim["spec"]["resources"]["requests"]["storage"])
        && (claim["spec"]["selector"].is_null()
            || Selector::from_json(&claim["spec"]["selector"]).matches_json(pv["metadata"].get("labels")))
        && node.is_none_or(|n| {
            let terms = volume_terms(pv);
            terms.is_empty() || terms.iter().any(|t| t.matches(n))
        })
}

/// The smallest volume that serves the claim (Kubernetes' binder picks the smallest fit).
pub fn best_volume<'a>(volumes: impl Iterator<Item = &'a Value>, claim: &Value, class: &str, node: Option<&NodeInfo>) -> Option<&'a Value> {
    volumes
        .filter(|pv| serves(pv, claim, class, node))
        .min_by_key(|pv| storage(&pv["spec"]["capacity"]["storage"]))
}

/// The volume the local-path provisioner makes for `claim` on `node`: a directory under the
/// node's volume root, pinned to the node, reserved for the claim.
pub fn provisioned_volume(claim: &Value, class: &Value, node: &str, volume_dir: &str) -> Value {
    let ns = claim["metadata"]["namespace"].as_str().unwrap_or_default();
    let claim_name = name_of(claim);
    let name = format!("pvc-{}", uid(claim));
    let path = format!("{}/{name}_{ns}_{claim_name}", volume_dir.trim_end_matches('/'));
    json!({
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {
            "name": name,
            "annotations": {PROVISIONED_BY_ANNOTATION: PROVISIONER},
            "finalizers": [LOCAL_VOLUME_FINALIZER],
        },
        "spec": {
            "capacity": {"storage": claim["spec"]["resources"]["requests"]["storage"]},
            "accessModes": claim["spec"]["accessModes"],
            "persistentVolumeReclaimPolicy": class["reclaimPolicy"].as_str().unwrap_or("Delete"),
            "storageClassName": name_of(class),
            "volumeMode": "Filesystem",
            "hostPath": {"path": path, "type": "DirectoryOrCreate"},
            "nodeAffinity": {"required": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": HOSTNAME_LABEL, "operator": "In", "values": [node]}]}
            ]}},
            "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": ns, "name": claim_name, "uid": uid(claim)},
        },
        "status": {"phase": "Bound"},
    })
}

/// What `pod`'s claims ask of the node it goes to, read from the cache.
pub fn needs(cache: &Cache, pod: &Value) -> VolumeNeeds {
    let ns = pod["metadata"]["namespace"].as_str().unwrap_or_default();
    let mut needs = VolumeNeeds::default();
    for claim_name in claims_of(pod) {
        let blocked = |why: String| VolumeNeeds {
            blocked: Some(why),
            node_terms: Vec::new(),
        };
        let Some(claim) = cache.get(kind("persistentvolumeclaims"), ns, claim_name) else {
            return blocked(format!("persistentvolumeclaim \"{claim_name}\" not found"));
        };
        let claim = &claim.object;
        if is_terminating(claim) {
            return blocked(format!("persistentvolumeclaim \"{claim_name}\" is being deleted"));
        }
        if let Some(volume) = claim["spec"]["volumeName"].as_str().filter(|v| !v.is_empty()) {
            let Some(pv) = cache.get(kind("persistentvolumes"), "", volume) else {
                return blocked(format!("persistentvolume \"{volume}\" not found"));
            };
            let terms = volume_terms(&pv.object);
            if !terms.is_empty() {
                needs.node_terms.push(terms);
            }
            continue;
        }
        let class_name = class_of(claim, cache);
        let class = cache.get(kind("storageclasses"), "", &class_name);
        let waits = class
            .as_ref()
            .is_some_and(|c| c.object["volumeBindingMode"] == "WaitForFirstConsumer");
        if !waits {
            return blocked("pod has unbound immediate PersistentVolumeClaims".to_owned());
        }
    }
    needs
}

/// The claims of `pod` that wait for their first consumer's node and do not name `node` yet.
pub fn to_select(cache: &Cache, pod: &Value, node: &str) -> Vec<(String, String)> {
    let ns = pod["metadata"]["namespace"].as_str().unwrap_or_default();
    claims_of(pod)
        .filter_map(|c| cache.get(kind("persistentvolumeclaims"), ns, c))
        .filter(|c| {
            c.object["spec"]["volumeName"].as_str().is_none_or(str::is_empty)
                && c.object["metadata"]["annotations"][SELECTED_NODE_ANNOTATION] != node
        })
        .map(|c| (c.namespace.clone(), c.name.clone()))
        .collect()
}

/// Records the node the scheduler chose on each claim waiting for it (the binder then binds or
/// provisions there).
pub async fn select_node(objects: &crate::objects::Objects, claims: &[(String, String)], node: &str) -> Result<(), ObjectError> {
    for (ns, name) in claims {
        let r = objects
            .modify(kind("persistentvolumeclaims"), ns, name, false, |c| {
                if c["spec"]["volumeName"].as_str().is_some_and(|v| !v.is_empty()) {
                    return false;
                }
                c["metadata"]["annotations"][SELECTED_NODE_ANNOTATION] = json!(node);
                true
            })
            .await;
        match r {
            Ok(_) | Err(ObjectError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn has_finalizer(o: &Value, f: &str) -> bool {
    o["metadata"]["finalizers"].as_array().is_some_and(|l| l.iter().any(|x| x == f))
}

fn without_finalizer(o: &mut Value, f: &str) {
    if let Some(l) = o["metadata"]["finalizers"].as_array_mut() {
        l.retain(|x| x != f);
    }
}

impl VolumeController {
    /// Sets the status of a claim or volume `o` of `kind` to `status` (the whole of it); one
    /// that is gone meanwhile is no error.
    async fn set_status(&self, kind: &'static capstan_api::KindInfo, o: &Value, status: Value) -> Result<(), ObjectError> {
        if o["status"] == status {
            return Ok(());
        }
        let (ns, name) = super::util::key_of(o);
        let r = self
            .ctx
            .objects
            .modify(kind, &ns, &name, true, |c| {
                c["status"] = status.clone();
                true
            })
            .await;
        match r {
            Ok(_) | Err(ObjectError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn set_claim_status(&self, claim: &Value, phase: &str, pv: Option<&Value>) -> Result<(), ObjectError> {
        let mut status = json!({"phase": phase});
        if let Some(pv) = pv {
            status["capacity"] = pv["spec"]["capacity"].clone();
            status["accessModes"] = pv["spec"]["accessModes"].clone();
        }
        self.set_status(kind("persistentvolumeclaims"), claim, status).await
    }

    async fn set_volume_phase(&self, pv: &Value, phase: &str, message: Option<&str>) -> Result<(), ObjectError> {
        let mut status = json!({"phase": phase});
        if let Some(m) = message {
            status["message"] = json!(m);
        }
        self.set_status(kind("persistentvolumes"), pv, status).await
    }

    /// Binds `claim` to `pv`: the volume first (so that no other claim takes it), then the claim.
    async fn bind(&self, claim: &Value, pv: &Value) -> Result<(), ObjectError> {
        let (ns, name) = super::util::key_of(claim);
        let claim_uid = uid(claim).to_owned();
        let mut taken = false;
        self.ctx
            .objects
            .modify_part(kind("persistentvolumes"), "", name_of(pv), Part::All, |v| {
                let r = &v["spec"]["claimRef"];
                taken = !r.is_null() && (r["name"] != name.as_str() || r["uid"].as_str().is_some_and(|u| !u.is_empty() && u != claim_uid));
                if taken {
                    return false;
                }
                v["spec"]["claimRef"] =
                    json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": ns, "name": name, "uid": claim_uid});
                v["status"] = json!({"phase": "Bound"});
                true
            })
            .await?;
        if taken {
            return Ok(());
        }
        let volume = name_of(pv).to_owned();
        let status = json!({"phase": "Bound", "capacity": pv["spec"]["capacity"], "accessModes": pv["spec"]["accessModes"]});
        self.ctx
            .objects
            .modify_part(kind("persistentvolumeclaims"), &ns, &name, Part::All, |c| {
                c["spec"]["volumeName"] = json!(volume);
                c["metadata"]["annotations"]["pv.kubernetes.io/bind-completed"] = json!("yes");
                c["status"] = status.clone();
                true
            })
            .await?;
        Ok(())
    }

    async fn claim(&self, ns: &str, name: &str) -> Result<Action, ObjectError> {
        let ctx = &self.ctx;
        let Some(entry) = ctx.cache.get(kind("persistentvolumeclaims"), ns, name) else {
            return Ok(Action::AwaitChange);
        };
        let claim = (*entry.object).clone();
        if is_terminating(&claim) {
            // Protected while a pod that has not ended uses it
            // (one shutting down may still write to it).
            let in_use = ctx.cache.list(kind("pods"), Some(ns)).0.iter().any(|p| {
                !matches!(p.object["status"]["phase"].as_str(), Some("Succeeded" | "Failed")) && claims_of(&p.object).any(|c| c == name)
            });
            if !in_use && has_finalizer(&claim, CLAIM_PROTECTION) {
                ctx.objects
                    .modify_part(kind("persistentvolumeclaims"), ns, name, Part::All, |c| {
                        without_finalizer(c, CLAIM_PROTECTION);
                        true
                    })
                    .await?;
            }
            return Ok(Action::AwaitChange);
        }
        // Protection, and the default class written down as Kubernetes' admission does.
        let default = claim["spec"]["storageClassName"]
            .is_null()
            .then(|| default_class(&ctx.cache))
            .flatten();
        if !has_finalizer(&claim, CLAIM_PROTECTION) || default.is_some() {
            ctx.objects
                .modify(kind("persistentvolumeclaims"), ns, name, false, |c| {
                    if !has_finalizer(c, CLAIM_PROTECTION) {
                        let mut list = c["metadata"]["finalizers"].as_array().cloned().unwrap_or_default();
                        list.push(json!(CLAIM_PROTECTION));
                        c["metadata"]["finalizers"] = Value::Array(list);
                    }
                    if let Some(d) = &default
                        && c["spec"]["storageClassName"].is_null()
                    {
                        c["spec"]["storageClassName"] = json!(d);
                    }
                    true
                })
                .await?;
            return Ok(Action::AwaitChange);
        }
        if let Some(volume) = claim["spec"]["volumeName"].as_str().filter(|v| !v.is_empty()) {
            match ctx.cache.get(kind("persistentvolumes"), "", volume) {
                Some(pv) if pv.object["spec"]["claimRef"]["uid"] == uid(&claim) => {
                    self.set_claim_status(&claim, "Bound", Some(&pv.object)).await?;
                }
                Some(pv) if pv.object["spec"]["claimRef"].is_null() => self.bind(&claim, &pv.object).await?,
                _ => {
                    self.events.record(
                        &claim,
                        EventType::Warning,
                        "ClaimLost",
                        format!("Bound claim has lost reference to PersistentVolume {volume}. Data on the volume is lost!"),
                    );
                    self.set_claim_status(&claim, "Lost", None).await?;
                }
            }
            return Ok(Action::AwaitChange);
        }
        self.set_claim_status(&claim, "Pending", None).await?;
        let class_name = class_of(&claim, &ctx.cache);
        let class = if class_name.is_empty() {
            None
        } else {
            match ctx.cache.get(kind("storageclasses"), "", &class_name) {
                Some(c) => Some(c),
                None => {
                    self.events.record(
                        &claim,
                        EventType::Warning,
                        "ProvisioningFailed",
                        format!("storageclass.storage.k8s.io \"{class_name}\" not found"),
                    );
                    return Ok(Action::AwaitChange);
                }
            }
        };
        let waits = class
            .as_ref()
            .is_some_and(|c| c.object["volumeBindingMode"] == "WaitForFirstConsumer");
        let selected = claim["metadata"]["annotations"][SELECTED_NODE_ANNOTATION].as_str();
        if waits && selected.is_none() {
            self.events.record(
                &claim,
                EventType::Normal,
                "WaitForFirstConsumer",
                "waiting for first consumer to be created before binding",
            );
            return Ok(Action::AwaitChange);
        }
        let node = match selected {
            Some(n) => match ctx.cache.get(kind("nodes"), "", n) {
                Some(node) => Some(node),
                None => {
                    self.events.record(
                        &claim,
                        EventType::Warning,
                        "ProvisioningFailed",
                        format!("the selected node {n:?} does not exist"),
                    );
                    return Ok(Action::AwaitChange);
                }
            },
            None => None,
        };
        let node_info = node.as_ref().map(|n| NodeInfo::from_json(&n.object));
        let volumes = ctx.cache.list(kind("persistentvolumes"), None).0;
        if let Some(pv) = best_volume(volumes.iter().map(|v| v.object.as_ref()), &claim, &class_name, node_info.as_ref()) {
            self.bind(&claim, pv).await?;
            return Ok(Action::AwaitChange);
        }
        let Some(class) = class else {
            self.events.record(
                &claim,
                EventType::Normal,
                "FailedBinding",
                "no persistent volumes available for this claim and no storage class is set",
            );
            return Ok(Action::AwaitChange);
        };
        let provisioner = class.object["provisioner"].as_str().unwrap_or_default();
        if provisioner != PROVISIONER {
            self.events.record(
                &claim,
                EventType::Normal,
                "ExternalProvisioning",
                format!(
                    "Waiting for a volume to be created by the external provisioner {provisioner:?}: Capstan provisions only {PROVISIONER}"
                ),
            );
            return Ok(Action::AwaitChange);
        }
        let Some(node) = node else {
            self.events.record(
                &claim,
                EventType::Warning,
                "ProvisioningFailed",
                format!("{PROVISIONER} makes a volume on the node of the claim's first pod: its class {class_name:?} needs volumeBindingMode: WaitForFirstConsumer"),
            );
            return Ok(Action::AwaitChange);
        };
        let modes: Vec<&str> = claim["spec"]["accessModes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        if let Some(m) = modes.iter().find(|m| !matches!(**m, "ReadWriteOnce" | "ReadWriteOncePod")) {
            self.events.record(
                &claim,
                EventType::Warning,
                "ProvisioningFailed",
                format!("{PROVISIONER} volumes live on one node: access mode {m} is not supported (use ReadWriteOnce)"),
            );
            return Ok(Action::AwaitChange);
        }
        let Some(dir) = node.object["metadata"]["annotations"][NODE_VOLUME_DIR_ANNOTATION].as_str() else {
            self.events.record(
                &claim,
                EventType::Warning,
                "ProvisioningFailed",
                format!("node {:?} does not say where its volumes live (annotation {NODE_VOLUME_DIR_ANNOTATION}): is its agent older than the control plane?", node.name),
            );
            return Ok(Action::AwaitChange);
        };
        let pv = provisioned_volume(&claim, &class.object, &node.name, dir);
        let pv = match ctx.objects.create(kind("persistentvolumes"), pv).await {
            Ok(pv) => pv,
            Err(ObjectError::AlreadyExists { .. }) => {
                match ctx.objects.get(kind("persistentvolumes"), "", &format!("pvc-{}", uid(&claim)))? {
                    Some(pv) => pv,
                    None => return Ok(Action::Requeue(std::time::Duration::from_secs(1))),
                }
            }
            Err(e) => return Err(e),
        };
        self.events.record(
            &claim,
            EventType::Normal,
            "ProvisioningSucceeded",
            format!("Successfully provisioned volume {} on node {}", name_of(&pv), node.name),
        );
        self.bind(&claim, &pv).await?;
        Ok(Action::AwaitChange)
    }

    async fn volume(&self, name: &str) -> Result<Action, ObjectError> {
        let ctx = &self.ctx;
        let Some(entry) = ctx.cache.get(kind("persistentvolumes"), "", name) else {
            return Ok(Action::AwaitChange);
        };
        let pv = (*entry.object).clone();
        if is_terminating(&pv) {
            return Ok(Action::AwaitChange);
        }
        let claim_ref = &pv["spec"]["claimRef"];
        if claim_ref.is_null() {
            self.set_volume_phase(&pv, "Available", None).await?;
            return Ok(Action::AwaitChange);
        }
        let (ns, claim_name) = (
            claim_ref["namespace"].as_str().unwrap_or_default(),
            claim_ref["name"].as_str().unwrap_or_default(),
        );
        let claim = ctx.cache.get(kind("persistentvolumeclaims"), ns, claim_name);
        let claim_uid = claim_ref["uid"].as_str().unwrap_or_default();
        let same = claim.as_ref().is_some_and(|c| claim_uid.is_empty() || uid(&c.object) == claim_uid);
        if same {
            // Reserved for a claim (pre-bound), or bound: the claim's look binds it.
            return Ok(Action::AwaitChange);
        }
        // The claim is gone: the data stays unless the policy says Delete.
        match pv["spec"]["persistentVolumeReclaimPolicy"].as_str().unwrap_or("Retain") {
            "Delete" if pv["metadata"]["annotations"][PROVISIONED_BY_ANNOTATION] == PROVISIONER => {
                self.set_volume_phase(&pv, "Released", None).await?;
                // Held by its finalizer until the node agent has removed the directory.
                match ctx.objects.delete(kind("persistentvolumes"), "", name, None).await {
                    Ok(_) | Err(ObjectError::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            "Delete" => {
                let message = "Capstan deletes only the data of volumes it provisioned: remove this volume's data by hand, and the PersistentVolume from Git";
                self.events.record(&pv, EventType::Warning, "VolumeFailedDelete", message);
                self.set_volume_phase(&pv, "Failed", Some(message)).await?;
            }
            _ => self.set_volume_phase(&pv, "Released", None).await?,
        }
        Ok(Action::AwaitChange)
    }
}

impl Reconciler<Key> for VolumeController {
    type Error = ObjectError;

    async fn reconcile(&self, key: Key) -> Result<Action, ObjectError> {
        self.ctx.caught_up().await;
        match key {
            Key::Claim(ns, name) => self.claim(&ns, &name).await,
            Key::Volume(name) => self.volume(&name).await,
        }
    }
}

/// The default StorageClass Capstan creates: local-path, waiting for the first consumer.
pub fn builtin_class() -> Value {
    json!({
        "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
        "metadata": {"name": capstan_api::storage::DEFAULT_CLASS, "annotations": {DEFAULT_CLASS_ANNOTATION: "true"}},
        "provisioner": PROVISIONER,
        "reclaimPolicy": "Delete",
        "volumeBindingMode": "WaitForFirstConsumer",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(modes: Value, size: &str, selector: Value) -> Value {
        json!({"metadata": {"name": "data", "namespace": "db", "uid": "c1"},
               "spec": {"accessModes": modes, "resources": {"requests": {"storage": size}}, "selector": selector}})
    }

    fn pv(name: &str, size: &str, class: &str, labels: Value, node: Option<&str>) -> Value {
        let mut v = json!({"metadata": {"name": name, "labels": labels},
            "spec": {"capacity": {"storage": size}, "accessModes": ["ReadWriteOnce"], "storageClassName": class, "hostPath": {"path": "/srv"}}});
        if let Some(n) = node {
            v["spec"]["nodeAffinity"] = json!({"required": {"nodeSelectorTerms": [{"matchExpressions": [{"key": HOSTNAME_LABEL, "operator": "In", "values": [n]}]}]}});
        }
        v
    }

    fn node(name: &str) -> NodeInfo {
        NodeInfo::from_json(&json!({"metadata": {"name": name, "labels": {HOSTNAME_LABEL: name}}}))
    }

    #[test]
    fn the_smallest_matching_volume_is_chosen() {
        let c = claim(json!(["ReadWriteOnce"]), "1Gi", Value::Null);
        let volumes = [
            pv("big", "10Gi", "manual", json!({}), None),
            pv("small", "2Gi", "manual", json!({}), None),
            pv("tiny", "512Mi", "manual", json!({}), None),
            pv("other", "1Gi", "fast", json!({}), None),
        ];
        assert_eq!(name_of(best_volume(volumes.iter(), &c, "manual", None).unwrap()), "small");
        let rwx = claim(json!(["ReadWriteMany"]), "1Gi", Value::Null);
        assert!(best_volume(volumes.iter(), &rwx, "manual", None).is_none());
        let picky = claim(json!(["ReadWriteOnce"]), "1Gi", json!({"matchLabels": {"tier": "gold"}}));
        let gold = [pv("g", "5Gi", "manual", json!({"tier": "gold"}), None), volumes[1].clone()];
        assert_eq!(name_of(best_volume(gold.iter(), &picky, "manual", None).unwrap()), "g");
    }

    #[test]
    fn a_local_volume_serves_only_its_node_and_a_taken_one_none() {
        let c = claim(json!(["ReadWriteOnce"]), "1Gi", Value::Null);
        let local = pv("l", "5Gi", "manual", json!({}), Some("a"));
        assert!(serves(&local, &c, "manual", Some(&node("a"))));
        assert!(!serves(&local, &c, "manual", Some(&node("b"))));
        let mut taken = local.clone();
        taken["spec"]["claimRef"] = json!({"namespace": "db", "name": "other", "uid": "x"});
        assert!(!serves(&taken, &c, "manual", None));
        let mut reserved = local;
        reserved["spec"]["claimRef"] = json!({"namespace": "db", "name": "data"});
        assert!(
            serves(&reserved, &c, "manual", None),
            "a volume reserved for the claim by name serves it"
        );
    }

    #[test]
    fn provisioned_volumes_live_under_the_node_root_pinned_to_it() {
        let c = claim(json!(["ReadWriteOnce"]), "1Gi", Value::Null);
        let v = provisioned_volume(&c, &builtin_class(), "n1", "/var/lib/capstan/volumes/");
        assert_eq!(v["metadata"]["name"], "pvc-c1");
        assert_eq!(v["spec"]["hostPath"]["path"], "/var/lib/capstan/volumes/pvc-c1_db_data");
        assert_eq!(v["spec"]["persistentVolumeReclaimPolicy"], "Delete");
        assert_eq!(v["spec"]["claimRef"]["uid"], "c1");
        assert!(serves(&v, &c, "local-path", Some(&node("n1"))));
        assert!(!serves(&v, &c, "local-path", Some(&node("n2"))));
    }
}
