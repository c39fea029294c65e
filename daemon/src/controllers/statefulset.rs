//! The StatefulSet controller: pods with a stable identity (`<set>-<ordinal>`, hostname and
//! subdomain from `serviceName`) and their own claims from `volumeClaimTemplates`, kept across
//! restarts of the pod; `OrderedReady` (one at a time, each Running and Ready before the next,
//! removed from the highest ordinal) or `Parallel`; rolling updates from the highest ordinal
//! down to `partition` within `maxUnavailable`, or `OnDelete`; ControllerRevisions for
//! `kubectl rollout`; claims kept unless `persistentVolumeClaimRetentionPolicy` says otherwise.
//! [`decide`] is the pure core: the set, its pods, the namespace's claims and the time in, what
//! to do out.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use capstan_runtime::{Action, Reconciler};
use serde_json::{Value, json};

use super::deployment::resolve;
use super::revisions::REVISION_HASH_LABEL;
use super::util::{NsName, is_available, is_ready, is_terminating, owner_ref};
use super::{Controller, watches};
use crate::context::{Context, kind};
use crate::events::{EventType, Recorder};
use crate::objects::{ObjectError, name_of};

/// The label naming a StatefulSet pod (a Service may select one pod by it).
pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
/// The label holding a pod's ordinal.
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";

pub struct StatefulSetController {
    pub ctx: Context,
    pub events: Recorder,
}

/// Watches StatefulSets and their pods.
pub fn controller(ctx: &Context) -> Controller<NsName, StatefulSetController> {
    let keys = |o: &Value| super::util::owner_keys(o, "StatefulSet");
    Controller {
        name: "statefulset",
        reconciler: StatefulSetController {
            ctx: ctx.clone(),
            events: Recorder::new(ctx.objects.clone(), "statefulset-controller", None),
        },
        workers: 4,
        triggers: vec![watches("statefulsets", keys), watches("pods", keys)],
    }
}

/// A pod template and the ControllerRevision it is (its name labels the pods).
#[derive(Clone, Copy, Debug)]
pub struct Revision<'a> {
    pub name: &'a str,
    pub template: &'a Value,
}

/// What one look at a StatefulSet decides.
#[derive(Debug, Default)]
pub struct Decision {
    /// Claims to create, before the pods that use them.
    pub claims: Vec<Value>,
    /// Pods to create.
    pub create: Vec<Value>,
    /// Pods to delete (gracefully).
    pub delete: Vec<String>,
    /// Pods bound to nodes that no longer exist: removed at once.
    pub gone: Vec<String>,
    /// Claims of ordinals scaled away, when the retention policy deletes them.
    pub delete_claims: Vec<String>,
    pub status: Value,
    /// Warning events: (reason, message).
    pub warnings: Vec<(&'static str, String)>,
    /// When to look again, if nothing else changes before (seconds).
    pub requeue: Option<i64>,
}

/// The ordinal of `pod` of set `set`, from its name.
pub fn ordinal_of(set: &str, pod: &str) -> Option<i64> {
    pod.strip_prefix(set)?.strip_prefix('-')?.parse().ok().filter(|n: &i64| *n >= 0)
}

/// The claim of template `template` for the pod of `ordinal`.
pub fn claim_name(template: &str, set: &str, ordinal: i64) -> String {
    format!("{template}-{set}-{ordinal}")
}

fn claim_templates(sts: &Value) -> impl Iterator<Item = &Value> {
    sts["spec"]["volumeClaimTemplates"].as_array().into_iter().flatten()
}

/// The claim a template gives the pod of `ordinal`: the template's spec, its labels and the
/// set's selector labels; owned by the set when the set's deletion is to take its claims.
pub fn new_claim(sts: &Value, template: &Value, ordinal: i64) -> Value {
    let set = name_of(sts);
    let mut labels = template["metadata"]["labels"].as_object().cloned().unwrap_or_default();
    for (k, v) in sts["spec"]["selector"]["matchLabels"].as_object().into_iter().flatten() {
        labels.insert(k.clone(), v.clone());
    }
    let mut claim = json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": claim_name(name_of(template), set, ordinal),
            "namespace": sts["metadata"]["namespace"],
            "labels": labels,
        },
        "spec": template["spec"],
    });
    if let Some(a) = template["metadata"]["annotations"].as_object() {
        claim["metadata"]["annotations"] = json!(a);
    }
    if sts["spec"]["persistentVolumeClaimRetentionPolicy"]["whenDeleted"] == "Delete" {
        claim["metadata"]["ownerReferences"] = json!([owner_ref(sts)]);
    }
    claim
}

/// The pod of `ordinal` from `revision`'s template: its identity (name, hostname, subdomain,
/// labels) and its claims in place of the template's volumes of the same names.
pub fn new_pod(sts: &Value, revision: Revision<'_>, ordinal: i64) -> Value {
    let set = name_of(sts);
    let name = format!("{set}-{ordinal}");
    let template = revision.template;
    let mut pod = json!({"metadata": template["metadata"].clone(), "spec": template["spec"].clone()});
    if !pod["metadata"].is_object() {
        pod["metadata"] = json!({});
    }
    pod["metadata"]["name"] = json!(name);
    pod["metadata"]["namespace"] = sts["metadata"]["namespace"].clone();
    pod["metadata"]["ownerReferences"] = json!([owner_ref(sts)]);
    pod["metadata"]["labels"][REVISION_HASH_LABEL] = json!(revision.name);
    pod["metadata"]["labels"][POD_NAME_LABEL] = json!(name);
    pod["metadata"]["labels"][POD_INDEX_LABEL] = json!(ordinal.to_string());
    if let Some(c) = sts.pointer("/metadata/annotations/capstan.dev~1commit") {
        pod["metadata"]["annotations"]["capstan.dev/commit"] = c.clone();
    }
    if !pod["spec"].is_object() {
        return pod;
    }
    pod["spec"]["hostname"] = json!(name);
    if let Some(service) = sts["spec"]["serviceName"].as_str().filter(|s| !s.is_empty()) {
        pod["spec"]["subdomain"] = json!(service);
    }
    let mut volumes = pod["spec"]["volumes"].as_array().cloned().unwrap_or_default();
    for t in claim_templates(sts) {
        let vol = name_of(t);
        volumes.retain(|v| v["name"] != vol);
        volumes.push(json!({"name": vol, "persistentVolumeClaim": {"claimName": claim_name(vol, set, ordinal)}}));
    }
    if !volumes.is_empty() {
        pod["spec"]["volumes"] = Value::Array(volumes);
    }
    pod
}

fn ended(pod: &Value) -> bool {
    matches!(pod["status"]["phase"].as_str(), Some("Failed" | "Succeeded"))
}

fn revision_of(pod: &Value) -> &str {
    pod["metadata"]["labels"][REVISION_HASH_LABEL].as_str().unwrap_or_default()
}

/// Decides what to do for `sts`. `update` is the current template's revision; `current` the
/// revision in `status.currentRevision`, when it differs and is known (pods below the partition
/// are recreated from it); `claims` the namespace's claims by name; `nodes` the nodes that
/// exist; `now` in Unix seconds.
pub fn decide(
    sts: &Value,
    pods: &[&Value],
    claims: &HashMap<&str, &Value>,
    nodes: &HashSet<&str>,
    update: Revision<'_>,
    current: Option<Revision<'_>>,
    now: i64,
) -> Decision {
    let mut d = Decision::default();
    let set = name_of(sts);
    let spec = &sts["spec"];
    let replicas = spec["replicas"].as_i64().unwrap_or(1).max(0);
    let start = spec["ordinals"]["start"].as_i64().unwrap_or(0).max(0);
    let end = start + replicas;
    let min_ready = spec["minReadySeconds"].as_i64().unwrap_or(0);
    let monotonic = spec["podManagementPolicy"] != "Parallel";
    let rolling = spec["updateStrategy"]["type"].as_str().unwrap_or("RollingUpdate") == "RollingUpdate";
    let partition = if rolling {
        spec["updateStrategy"]["rollingUpdate"]["partition"].as_i64().unwrap_or(0).max(0)
    } else {
        0
    };
    let healthy = |p: &Value| !is_terminating(p) && p["status"]["phase"] == "Running" && is_available(p, min_ready, now);

    // Pods on nodes that left go at once; the rest by ordinal.
    let mut slots: BTreeMap<i64, &Value> = BTreeMap::new();
    let mut condemned: Vec<(i64, &Value)> = Vec::new();
    for p in pods {
        let node = p["spec"]["nodeName"].as_str().filter(|n| !n.is_empty());
        if node.is_some_and(|n| !nodes.contains(n)) {
            d.gone.push(name_of(p).to_owned());
            continue;
        }
        match ordinal_of(set, name_of(p)) {
            Some(o) if (start..end).contains(&o) => {
                slots.insert(o, p);
            }
            Some(o) => condemned.push((o, p)),
            // Not a name this set gives: none of its pods.
            None => condemned.push((i64::MAX, p)),
        }
    }
    condemned.sort_by_key(|(o, _)| std::cmp::Reverse(*o));

    // The replicas, lowest ordinal first.
    let mut waiting = false;
    for ord in start..end {
        if waiting {
            break;
        }
        match slots.get(&ord) {
            None => {
                let names: Vec<String> = claim_templates(sts).map(|t| claim_name(name_of(t), set, ord)).collect();
                if let Some(c) = names.iter().find(|n| claims.get(n.as_str()).is_some_and(|c| is_terminating(c))) {
                    d.warnings.push((
                        "FailedCreate",
                        format!("create Pod {set}-{ord} in StatefulSet {set} failed: PersistentVolumeClaim {c} is being deleted"),
                    ));
                    waiting = true;
                    continue;
                }
                for t in claim_templates(sts) {
                    if !claims.contains_key(claim_name(name_of(t), set, ord).as_str()) {
                        d.claims.push(new_claim(sts, t, ord));
                    }
                }
                let revision = match current {
                    Some(c) if ord < start + partition => c,
                    _ => update,
                };
                d.create.push(new_pod(sts, revision, ord));
                waiting = monotonic;
            }
            Some(p) if ended(p) && !is_terminating(p) => {
                // Recreated under the same name once the old one is gone.
                d.delete.push(name_of(p).to_owned());
                waiting = monotonic;
            }
            Some(p) => waiting = monotonic && !healthy(p),
        }
    }

    // Ordinals scaled away, highest first; one at a time, and only when all else is healthy,
    // unless Parallel.
    if !waiting {
        for (_, p) in &condemned {
            if is_terminating(p) {
                if monotonic {
                    break;
                }
                continue;
            }
            d.delete.push(name_of(p).to_owned());
            if monotonic {
                break;
            }
        }
    }
    let scaling_down = condemned.iter().any(|(o, _)| *o != i64::MAX);
    if spec["persistentVolumeClaimRetentionPolicy"]["whenScaled"] == "Delete" {
        let has_pod: HashSet<i64> = condemned.iter().map(|(o, _)| *o).collect();
        for t in claim_templates(sts) {
            let prefix = format!("{}-", name_of(t));
            for name in claims.keys() {
                let Some(o) = name.strip_prefix(&prefix).and_then(|rest| ordinal_of(set, rest)) else {
                    continue;
                };
                if !(start..end).contains(&o) && !has_pod.contains(&o) && !is_terminating(claims[name]) {
                    d.delete_claims.push((*name).to_owned());
                }
            }
        }
        d.delete_claims.sort();
    }

    // The rolling update: from the highest ordinal down to the partition, old pods go within
    // the budget of unavailable pods; their replacements come from the update revision.
    if rolling && !waiting && !scaling_down {
        let budget = match &spec["updateStrategy"]["rollingUpdate"]["maxUnavailable"] {
            Value::Null => 1,
            v => resolve(v, replicas, false, 0).max(1),
        };
        let unavailable = (start..end).filter(|o| slots.get(o).is_none_or(|p| !healthy(p))).count() as i64;
        let mut room = budget - unavailable;
        for ord in (start + partition..end).rev() {
            let Some(p) = slots.get(&ord) else { continue };
            if revision_of(p) != update.name && !is_terminating(p) && !d.delete.iter().any(|n| n == name_of(p)) {
                if room <= 0 {
                    break;
                }
                d.delete.push(name_of(p).to_owned());
                room -= 1;
            } else if monotonic && !healthy(p) {
                break;
            }
        }
    }

    // Status, as Kubernetes counts it.
    let live: Vec<&&Value> = pods.iter().filter(|p| !is_terminating(p)).collect();
    let count = |f: &dyn Fn(&Value) -> bool| live.iter().filter(|p| f(p)).count() as i64;
    let ready = count(&|p| p["status"]["phase"] == "Running" && is_ready(p));
    let available = count(&|p| p["status"]["phase"] == "Running" && is_available(p, min_ready, now));
    let updated = count(&|p| revision_of(p) == update.name);
    let mut current_name = sts["status"]["currentRevision"].as_str().unwrap_or(update.name);
    if updated == replicas && ready == replicas && live.len() as i64 == replicas {
        current_name = update.name;
    }
    let current_count = count(&|p| revision_of(p) == current_name);
    let mut st = json!({
        "observedGeneration": sts["metadata"]["generation"],
        "replicas": live.len(),
        "readyReplicas": ready,
        "availableReplicas": available,
        "currentReplicas": current_count,
        "updatedReplicas": updated,
        "currentRevision": current_name,
        "updateRevision": update.name,
    });
    if let Some(c) = sts["status"]["collisionCount"].as_i64() {
        st["collisionCount"] = json!(c);
    }
    d.status = st;
    if min_ready > 0 && ready > available {
        d.requeue = Some(1);
    }
    d
}

impl StatefulSetController {
    /// Creates the claims a look decided on; one that exists already (made by an earlier look,
    /// or declared in Git) is used as it is.
    async fn create_claims(&self, sts: &Value, claims: Vec<Value>) -> Result<(), ObjectError> {
        for claim in claims {
            let name = name_of(&claim).to_owned();
            match self.ctx.objects.create(kind("persistentvolumeclaims"), claim).await {
                Ok(_) => self.events.record(
                    sts,
                    EventType::Normal,
                    "SuccessfulCreate",
                    format!("create Claim {name} in StatefulSet {} success", name_of(sts)),
                ),
                Err(ObjectError::AlreadyExists { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl Reconciler<NsName> for StatefulSetController {
    type Error = ObjectError;

    async fn reconcile(&self, (ns, name): NsName) -> Result<Action, ObjectError> {
        let ctx = &self.ctx;
        ctx.caught_up().await;
        let Some(entry) = ctx.cache.get(kind("statefulsets"), &ns, &name) else {
            return Ok(Action::AwaitChange);
        };
        let sts = (*entry.object).clone();
        if is_terminating(&sts) {
            return Ok(Action::AwaitChange);
        }
        let uid = super::util::uid(&sts).to_owned();
        let revisions = super::revisions::of(ctx, &uid);
        let Some(hash) = super::revisions::current(ctx, kind("statefulsets"), &sts, &revisions).await? else {
            return Ok(Action::Requeue(Duration::ZERO));
        };
        let update_name = format!("{name}-{hash}");
        let update = Revision {
            name: &update_name,
            template: &sts["spec"]["template"],
        };
        let current = sts["status"]["currentRevision"]
            .as_str()
            .filter(|c| *c != update_name)
            .and_then(|c| revisions.iter().find(|r| r["metadata"]["name"] == c))
            .map(|r| Revision {
                name: name_of(r),
                template: &r["data"]["spec"]["template"],
            });
        let owned = ctx.cache.controlled_by(kind("pods"), &uid);
        let pods: Vec<&Value> = owned.iter().map(|e| e.object.as_ref()).collect();
        let claim_entries = ctx.cache.list(kind("persistentvolumeclaims"), Some(&ns)).0;
        let claims: HashMap<&str, &Value> = claim_entries.iter().map(|e| (e.name.as_str(), e.object.as_ref())).collect();
        let node_entries = ctx.cache.list(kind("nodes"), None).0;
        let nodes: HashSet<&str> = node_entries.iter().map(|e| e.name.as_str()).collect();
        let d = decide(&sts, &pods, &claims, &nodes, update, current, super::util::now());

        for (reason, message) in &d.warnings {
            self.events.record(&sts, EventType::Warning, reason, message.clone());
        }
        let deletes = d.delete.iter().map(|p| (p, false)).chain(d.gone.iter().map(|p| (p, true)));
        for (pod, at_once) in deletes {
            super::podcontrol::delete_for(ctx, &self.events, &sts, &ns, pod, at_once).await?;
        }
        for claim in &d.delete_claims {
            match ctx.objects.delete(kind("persistentvolumeclaims"), &ns, claim, None).await {
                Ok(_) | Err(ObjectError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        let mut refused = false;
        if !d.create.is_empty() && super::namespace::is_active(ctx, &ns) {
            if let Some(service) = sts["spec"]["serviceName"].as_str().filter(|s| !s.is_empty())
                && ctx.cache.get(kind("services"), &ns, service).is_none()
            {
                self.events.record(
                    &sts,
                    EventType::Warning,
                    "ServiceNotFound",
                    format!("spec.serviceName: Service {ns}/{service} does not exist: the pods get no DNS names until it does"),
                );
            }
            self.create_claims(&sts, d.claims).await?;
            refused = super::podcontrol::create_for(ctx, &self.events, &sts, &ns, d.create)
                .await?
                .refused
                .is_some();
        }
        super::revisions::clean_history(ctx, &sts, &revisions, &pods, &update_name).await?;
        ctx.objects.merge_status(kind("statefulsets"), &sts, &d.status).await?;
        if refused {
            return Ok(Action::Requeue(Duration::from_secs(5)));
        }
        Ok(match d.requeue {
            Some(s) => Action::Requeue(Duration::from_secs(s.max(1) as u64)),
            // Pods on nodes that stop answering are looked at again now and then.
            None => Action::Requeue(Duration::from_secs(60)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_000_000;

    fn sts(replicas: i64, extra: Value) -> Value {
        let mut s = json!({
            "apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": {"name": "web", "namespace": "db", "uid": "u1", "generation": 1},
            "spec": {
                "replicas": replicas,
                "serviceName": "web",
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}},
                "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}],
            },
        });
        for (k, v) in extra.as_object().into_iter().flatten() {
            s["spec"][k] = v.clone();
        }
        s
    }

    fn pod(ord: i64, revision: &str, ready: bool) -> Value {
        json!({
            "metadata": {"name": format!("web-{ord}"), "labels": {"app": "web", REVISION_HASH_LABEL: revision}},
            "spec": {"nodeName": "n1"},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }, "lastTransitionTime": "1970-01-01T00:00:00Z"}]},
        })
    }

    fn look(set: &Value, pods: &[Value], claims: &[&str], update: &str) -> Decision {
        let claim_objects: Vec<Value> = claims.iter().map(|c| json!({"metadata": {"name": c}})).collect();
        let claims: HashMap<&str, &Value> = claims.iter().copied().zip(claim_objects.iter()).collect();
        let refs: Vec<&Value> = pods.iter().collect();
        let nodes = HashSet::from(["n1"]);
        let update = Revision {
            name: update,
            template: &set["spec"]["template"],
        };
        decide(set, &refs, &claims, &nodes, update, None, NOW)
    }

    fn names(pods: &[Value]) -> Vec<&str> {
        pods.iter().map(name_of).collect()
    }

    #[test]
    fn ordered_ready_creates_one_at_a_time_with_its_claim() {
        let set = sts(3, json!({}));
        let d = look(&set, &[], &[], "web-r1");
        assert_eq!(names(&d.create), ["web-0"]);
        assert_eq!(names(&d.claims), ["data-web-0"]);
        let p = &d.create[0];
        assert_eq!(p["spec"]["hostname"], "web-0");
        assert_eq!(p["spec"]["subdomain"], "web");
        assert_eq!(p["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"], "data-web-0");
        assert_eq!(p["metadata"]["labels"][POD_NAME_LABEL], "web-0");
        assert_eq!(p["metadata"]["labels"][REVISION_HASH_LABEL], "web-r1");
        assert_eq!(d.claims[0]["metadata"]["labels"]["app"], "web");
        assert!(
            d.claims[0]["metadata"]["ownerReferences"].is_null(),
            "claims outlive the set by default"
        );

        // web-0 is not ready yet: nothing more.
        let d = look(&set, &[pod(0, "web-r1", false)], &["data-web-0"], "web-r1");
        assert!(d.create.is_empty() && d.claims.is_empty());
        // Ready: web-1 next, reusing a claim that exists.
        let d = look(&set, &[pod(0, "web-r1", true)], &["data-web-0", "data-web-1"], "web-r1");
        assert_eq!(names(&d.create), ["web-1"]);
        assert!(d.claims.is_empty(), "an existing claim is reused");
    }

    #[test]
    fn parallel_creates_all_and_scales_down_at_once() {
        let set = sts(3, json!({"podManagementPolicy": "Parallel"}));
        let d = look(&set, &[], &[], "r1");
        assert_eq!(names(&d.create), ["web-0", "web-1", "web-2"]);
        let set = sts(1, json!({"podManagementPolicy": "Parallel"}));
        let d = look(&set, &[pod(0, "r1", true), pod(1, "r1", false), pod(2, "r1", true)], &[], "r1");
        assert_eq!(d.delete, ["web-2", "web-1"]);
    }

    #[test]
    fn scale_down_goes_from_the_highest_ordinal_and_keeps_claims() {
        let set = sts(1, json!({}));
        let pods = [pod(0, "r1", true), pod(1, "r1", true), pod(2, "r1", true)];
        let d = look(&set, &pods, &["data-web-0", "data-web-1", "data-web-2"], "r1");
        assert_eq!(d.delete, ["web-2"]);
        assert!(d.delete_claims.is_empty());
        let mut going = pod(2, "r1", true);
        going["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        let d = look(&set, &[pod(0, "r1", true), pod(1, "r1", true), going], &[], "r1");
        assert!(d.delete.is_empty(), "web-1 waits until web-2 is gone");
        // With whenScaled: Delete, the claims of ordinals without pods go.
        let set = sts(1, json!({"persistentVolumeClaimRetentionPolicy": {"whenScaled": "Delete"}}));
        let d = look(
            &set,
            &[pod(0, "r1", true), pod(1, "r1", true)],
            &["data-web-0", "data-web-1", "data-web-2"],
            "r1",
        );
        assert_eq!(d.delete, ["web-1"]);
        assert_eq!(d.delete_claims, ["data-web-2"]);
    }

    #[test]
    fn a_rolling_update_goes_down_from_the_top_and_stops_at_the_partition() {
        let set = sts(
            3,
            json!({"updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 1}}}),
        );
        let old = [pod(0, "r1", true), pod(1, "r1", true), pod(2, "r1", true)];
        let d = look(&set, &old, &[], "r2");
        assert_eq!(d.delete, ["web-2"]);
        let d = look(&set, &[pod(0, "r1", true), pod(1, "r1", true)], &[], "r2");
        assert_eq!(names(&d.create), ["web-2"]);
        assert_eq!(d.create[0]["metadata"]["labels"][REVISION_HASH_LABEL], "r2");
        assert!(d.delete.is_empty());
        let d = look(&set, &[pod(0, "r1", true), pod(1, "r1", true), pod(2, "r2", false)], &[], "r2");
        assert!(d.delete.is_empty(), "waits for web-2 to be ready");
        let d = look(&set, &[pod(0, "r1", true), pod(1, "r1", true), pod(2, "r2", true)], &[], "r2");
        assert_eq!(d.delete, ["web-1"]);
        let d = look(&set, &[pod(0, "r1", true), pod(1, "r2", true), pod(2, "r2", true)], &[], "r2");
        assert!(d.delete.is_empty(), "web-0 is below the partition");
        assert_eq!(d.status["updatedReplicas"], 2);
        assert_eq!(d.status["currentRevision"], "r2", "no current revision recorded: the update's");
    }

    #[test]
    fn pods_below_the_partition_are_recreated_from_the_current_revision() {
        let mut set = sts(2, json!({"updateStrategy": {"rollingUpdate": {"partition": 1}}}));
        set["status"]["currentRevision"] = json!("r1");
        let old_template = json!({"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "old"}]}});
        let refs: Vec<&Value> = Vec::new();
        let d = decide(
            &set,
            &refs,
            &HashMap::new(),
            &HashSet::new(),
            Revision {
                name: "r2",
                template: &set["spec"]["template"],
            },
            Some(Revision {
                name: "r1",
                template: &old_template,
            }),
            NOW,
        );
        assert_eq!(d.create[0]["spec"]["containers"][0]["image"], "old");
        assert_eq!(d.create[0]["metadata"]["labels"][REVISION_HASH_LABEL], "r1");
        assert_eq!(d.status["currentRevision"], "r1");
    }

    #[test]
    fn failed_pods_are_replaced_and_pods_of_departed_nodes_go_at_once() {
        let set = sts(2, json!({}));
        let mut failed = pod(0, "r1", false);
        failed["status"]["phase"] = json!("Failed");
        let mut elsewhere = pod(1, "r1", true);
        elsewhere["spec"]["nodeName"] = json!("gone");
        let d = look(&set, &[failed, elsewhere], &[], "r1");
        assert_eq!(d.delete, ["web-0"]);
        assert_eq!(d.gone, ["web-1"]);
        assert!(d.create.is_empty(), "web-0 is recreated once the failed one is gone");
    }

    #[test]
    fn a_claim_being_deleted_holds_its_pod() {
        let set = sts(1, json!({}));
        let claim = json!({"metadata": {"name": "data-web-0", "deletionTimestamp": "2026-01-01T00:00:00Z"}});
        let claims = HashMap::from([("data-web-0", &claim)]);
        let refs: Vec<&Value> = Vec::new();
        let update = Revision {
            name: "r1",
            template: &set["spec"]["template"],
        };
        let d = decide(&set, &refs, &claims, &HashSet::new(), update, None, NOW);
        assert!(d.create.is_empty());
        assert!(d.warnings[0].1.contains("is being deleted"));
    }

    #[test]
    fn ordinals_parse_only_from_the_sets_names() {
        assert_eq!(ordinal_of("web", "web-12"), Some(12));
        assert_eq!(ordinal_of("web", "web-x"), None);
        assert_eq!(ordinal_of("web", "webby-1"), None);
        assert_eq!(ordinal_of("web", "web--1"), None);
    }
}
