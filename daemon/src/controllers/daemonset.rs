//! The DaemonSet controller: one pod of a DaemonSet on every node its template admits (node
//! selector, required node affinity, taints — with the tolerations Kubernetes gives daemon
//! pods), each pinned to its node by node affinity and placed by the scheduler, so that taints
//! and resources count; rolling updates node by node within `maxUnavailable`, or surging within
//! `maxSurge`; `OnDelete`; a ControllerRevision per template, whose hash labels the pods.
//! [`decide`] is the pure core: the DaemonSet, the nodes, its pods and the time in, what to do out.

use std::collections::BTreeMap;
use std::time::Duration;

use capstan_runtime::{Action, Reconciler};
use capstan_scheduler::model::{NodeInfo, PodInfo};
use serde_json::{Value, json};

use super::deployment::resolve;
use super::revisions::REVISION_HASH_LABEL;
use super::util::{NsName, is_available, is_ready, is_terminating, owner_ref, random_suffix};
use super::{Controller, watches};
use crate::context::{Context, kind};
use crate::events::{EventType, Recorder};
use crate::objects::ObjectError;
/// The DaemonSet generation a pod was made from (kept for older tools).
const TEMPLATE_GENERATION_LABEL: &str = "pod-template-generation";

/// The tolerations every daemon pod gets: it keeps running on a node that is not ready, is
/// unreachable, under pressure or cordoned (and, with the host's network, whose pod network is
/// not up yet).
const DAEMON_TOLERATIONS: [(&str, &str); 6] = [
    (capstan_api::defaults::TAINT_NOT_READY, "NoExecute"),
    (capstan_api::defaults::TAINT_UNREACHABLE, "NoExecute"),
    ("node.kubernetes.io/disk-pressure", "NoSchedule"),
    ("node.kubernetes.io/memory-pressure", "NoSchedule"),
    ("node.kubernetes.io/pid-pressure", "NoSchedule"),
    ("node.kubernetes.io/unschedulable", "NoSchedule"),
];
const NETWORK_UNAVAILABLE: &str = "node.kubernetes.io/network-unavailable";

pub struct DaemonSetController {
    pub ctx: Context,
    pub events: Recorder,
}

/// Watches DaemonSets, their pods, and the nodes (a node joining, leaving or changing its
/// labels or taints concerns every DaemonSet).
pub fn controller(ctx: &Context) -> Controller<NsName, DaemonSetController> {
    let cache = ctx.cache.clone();
    let every = move |_: &Value| -> Vec<NsName> {
        cache
            .list(kind("daemonsets"), None)
            .0
            .iter()
            .map(|e| super::util::key_of(&e.object))
            .collect()
    };
    Controller {
        name: "daemonset",
        reconciler: DaemonSetController {
            ctx: ctx.clone(),
            events: Recorder::new(ctx.objects.clone(), "daemonset-controller", None),
        },
        workers: 4,
        triggers: vec![watches("daemonsets", keys_for), watches("pods", keys_for), watches("nodes", every)],
    }
}

/// A DaemonSet's key from itself, or from a pod it controls.
fn keys_for(obj: &Value) -> Vec<NsName> {
    super::util::owner_keys(obj, "DaemonSet")
}

/// The pod a DaemonSet runs on `node`: its template with the daemon tolerations, pinned to the
/// node by a required node affinity on the node's name (the scheduler binds it there, or says
/// why not), labelled with the template's revision.
pub fn new_pod(ds: &Value, node: &str, hash: &str) -> Value {
    let template = &ds["spec"]["template"];
    let name = ds["metadata"]["name"].as_str().unwrap_or("daemon");
    let mut pod = json!({"metadata": template["metadata"].clone(), "spec": template["spec"].clone()});
    if !pod["metadata"].is_object() {
        pod["metadata"] = json!({});
    }
    pod["metadata"]["name"] = json!(format!("{name}-{}", random_suffix()));
    pod["metadata"]["namespace"] = ds["metadata"]["namespace"].clone();
    pod["metadata"]["ownerReferences"] = json!([owner_ref(ds)]);
    pod["metadata"]["labels"][REVISION_HASH_LABEL] = json!(hash);
    if let Some(g) = ds["metadata"]["generation"].as_i64() {
        pod["metadata"]["labels"][TEMPLATE_GENERATION_LABEL] = json!(g.to_string());
    }
    if let Some(c) = ds.pointer("/metadata/annotations/capstan.dev~1commit") {
        pod["metadata"]["annotations"]["capstan.dev/commit"] = c.clone();
    }
    add_daemon_tolerations(&mut pod["spec"]);
    if pod["spec"].is_object() {
        let terms = json!([{"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}]);
        pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"] = json!({"nodeSelectorTerms": terms});
    }
    pod
}

fn add_daemon_tolerations(spec: &mut Value) {
    if !spec.is_object() {
        return;
    }
    let host_network = spec["hostNetwork"] == true;
    let mut list = spec["tolerations"].as_array().cloned().unwrap_or_default();
    let wanted = DAEMON_TOLERATIONS
        .iter()
        .copied()
        .chain(host_network.then_some((NETWORK_UNAVAILABLE, "NoSchedule")));
    for (key, effect) in wanted {
        list.retain(|t| !(t["key"] == key && t["effect"] == effect));
        list.push(json!({"key": key, "operator": "Exists", "effect": effect}));
    }
    spec["tolerations"] = Value::Array(list);
}

/// Whether a daemon pod should be started on `node`, and whether one there may keep running
/// (Kubernetes' NodeShouldRunDaemonPod): the node must pass the template's node selector and
/// required affinity; an untolerated NoSchedule taint stops new pods, an untolerated NoExecute
/// taint removes running ones.
pub fn should_run(template_pod: &PodInfo, node: &NodeInfo) -> (bool, bool) {
    if !template_pod.admitted_by(node) {
        return (false, false);
    }
    let untolerated = |effect: &str| {
        node.taints
            .iter()
            .any(|t| t.effect == effect && !template_pod.tolerations.iter().any(|tol| tol.tolerates(t)))
    };
    let evicted = untolerated("NoExecute");
    (!evicted && !untolerated("NoSchedule"), !evicted)
}

/// What one look at a DaemonSet decides.
#[derive(Debug, Default, PartialEq)]
pub struct Decision {
    /// Nodes that get a new pod.
    pub create: Vec<String>,
    /// Pods to delete.
    pub delete: Vec<String>,
    /// Pods of nodes that left: removed at once, as no agent will stop them.
    pub gone: Vec<String>,
    /// The counts of the DaemonSet's status.
    pub status: Value,
    /// Warning events: (reason, message).
    pub warnings: Vec<(&'static str, String)>,
    /// When to look again, if nothing else changes before (seconds).
    pub requeue: Option<i64>,
}

fn name_of(pod: &Value) -> String {
    pod["metadata"]["name"].as_str().unwrap_or_default().to_owned()
}

/// The node a daemon pod is for: where it is bound, or where its affinity pins it.
fn target_node(pod: &Value) -> Option<&str> {
    if let Some(n) = pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) {
        return Some(n);
    }
    let terms =
        pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"].as_array()?;
    terms.iter().find_map(|t| {
        t["matchFields"]
            .as_array()?
            .iter()
            .find(|f| f["key"] == "metadata.name" && f["operator"] == "In")?["values"][0]
            .as_str()
    })
}

fn is_updated(pod: &Value, hash: &str) -> bool {
    pod["metadata"]["labels"][REVISION_HASH_LABEL] == hash
}

/// Decides what to do for `ds` (whose current template has revision `hash`), given every node
/// and the DaemonSet's pods, at `now` (Unix seconds).
pub fn decide(ds: &Value, nodes: &[&Value], pods: &[&Value], hash: &str, now: i64) -> Decision {
    let mut d = Decision::default();
    let spec = &ds["spec"];
    let min_ready = spec["minReadySeconds"].as_i64().unwrap_or(0);
    let mut template = json!({"metadata": spec["template"]["metadata"].clone(), "spec": spec["template"]["spec"].clone()});
    add_daemon_tolerations(&mut template["spec"]);
    let template_pod = PodInfo::from_json(&template);
    let rolling = spec["updateStrategy"]["type"].as_str().unwrap_or("RollingUpdate") == "RollingUpdate";
    let available = |p: &Value| is_available(p, min_ready, now);

    // The pods by the node they are for, oldest first.
    let mut by_node: BTreeMap<&str, Vec<&Value>> = BTreeMap::new();
    for p in pods {
        match target_node(p) {
            Some(n) => by_node.entry(n).or_default().push(p),
            // A pod pinned nowhere is none of ours to keep.
            None if !is_terminating(p) => d.delete.push(name_of(p)),
            None => {}
        }
    }
    for list in by_node.values_mut() {
        list.sort_by_key(|p| {
            (
                p["metadata"]["creationTimestamp"].as_str().unwrap_or_default().to_owned(),
                name_of(p),
            )
        });
    }
    let known: std::collections::HashSet<&str> = nodes.iter().filter_map(|n| n["metadata"]["name"].as_str()).collect();
    // A node that left loses its daemon pods (no agent will stop them: they go at once).
    for (node, list) in &by_node {
        if !known.contains(node) {
            d.gone.extend(list.iter().map(|p| name_of(p)));
        }
    }

    // Each node's verdict, once: (name, should run, may keep running).
    let verdicts: Vec<(&str, bool, bool)> = nodes
        .iter()
        .map(|n| {
            let (run, keep) = should_run(&template_pod, &NodeInfo::from_json(n));
            (n["metadata"]["name"].as_str().unwrap_or_default(), run, keep)
        })
        .collect();
    let desired = verdicts.iter().filter(|v| v.1).count() as i64;
    let r = &spec["updateStrategy"]["rollingUpdate"];
    let max_surge = if rolling { resolve(&r["maxSurge"], desired, true, 0) } else { 0 };
    let mut max_unavailable = if rolling {
        resolve(&r["maxUnavailable"], desired, true, 0)
    } else {
        0
    };
    if rolling && max_surge == 0 && max_unavailable == 0 {
        max_unavailable = 1;
    }

    // Manage: every node that should run a pod has one; the others have none.
    let mut status = BTreeMap::from([
        ("desiredNumberScheduled", desired),
        ("currentNumberScheduled", 0),
        ("numberMisscheduled", 0),
        ("numberReady", 0),
        ("updatedNumberScheduled", 0),
        ("numberAvailable", 0),
    ]);
    // Per node, for the rolling update: (node, the old pod, the new pod), live pods only.
    let mut update_view: Vec<(&str, Option<&Value>, Option<&Value>)> = Vec::new();
    for &(node, run, keep) in &verdicts {
        let here: &[&Value] = by_node.get(node).map(Vec::as_slice).unwrap_or_default();
        if run {
            if let Some(first) = here.first() {
                *status.get_mut("currentNumberScheduled").expect("counted") += 1;
                if is_ready(first) {
                    *status.get_mut("numberReady").expect("counted") += 1;
                }
                if available(first) {
                    *status.get_mut("numberAvailable").expect("counted") += 1;
                }
                if is_updated(first, hash) {
                    *status.get_mut("updatedNumberScheduled").expect("counted") += 1;
                }
            }
        } else if !here.is_empty() {
            *status.get_mut("numberMisscheduled").expect("counted") += 1;
        }
        if !keep {
            d.delete.extend(here.iter().filter(|p| !is_terminating(p)).map(|p| name_of(p)));
            continue;
        }
        let mut running: Vec<&Value> = Vec::new();
        for p in here.iter().filter(|p| !is_terminating(p)) {
            match p["status"]["phase"].as_str() {
                Some("Failed") => {
                    d.warnings.push((
                        "FailedDaemonPod",
                        format!("Found failed daemon pod {} on node {node}, will try to kill it", name_of(p)),
                    ));
                    d.delete.push(name_of(p));
                }
                Some("Succeeded") => d.delete.push(name_of(p)),
                _ => running.push(p),
            }
        }
        if running.is_empty() {
            if run {
                d.create.push(node.to_owned());
            }
            continue;
        }
        if max_surge == 0 {
            // One pod per node: the oldest stays.
            d.delete.extend(running[1..].iter().map(|p| name_of(p)));
            let pod = running[0];
            if is_updated(pod, hash) {
                update_view.push((node, None, Some(pod)));
            } else {
                update_view.push((node, Some(pod), None));
            }
            continue;
        }
        // Surging: at most the oldest old pod and the oldest new one; the old goes once the new
        // one is available (or the old one is no longer ready).
        let newest = running.iter().find(|p| is_updated(p, hash)).copied();
        let oldest_old = running.iter().find(|p| !is_updated(p, hash)).copied();
        for p in &running {
            let kept = newest.is_some_and(|n| std::ptr::eq(*p, n)) || oldest_old.is_some_and(|o| std::ptr::eq(*p, o));
            if !kept {
                d.delete.push(name_of(p));
            }
        }
        match (oldest_old, newest) {
            (Some(old), Some(new)) if !is_ready(old) || available(new) => {
                d.delete.push(name_of(old));
                update_view.push((node, None, Some(new)));
            }
            (old, new) => update_view.push((node, old, new)),
        }
    }

    // Roll: replace old pods within the budget of unavailable (or surplus) pods.
    if rolling {
        if max_surge == 0 {
            let mut unavailable = d.create.len() as i64;
            let mut free = Vec::new();
            let mut candidates = Vec::new();
            for (_, old, new) in &update_view {
                match (old, new) {
                    (None, Some(new)) if !available(new) => unavailable += 1,
                    (Some(old), None) if !available(old) => {
                        // Replaced at once: it serves nothing now.
                        free.push(name_of(old));
                        unavailable += 1;
                    }
                    (Some(old), None) => candidates.push(name_of(old)),
                    _ => {}
                }
            }
            let room = (max_unavailable - unavailable).max(0) as usize;
            d.delete.extend(free);
            d.delete.extend(candidates.into_iter().take(room));
        } else {
            let mut surging = 0i64;
            let mut free = Vec::new();
            let mut candidates = Vec::new();
            for (node, old, new) in &update_view {
                match (old, new) {
                    (Some(_), Some(_)) => surging += 1,
                    (Some(old), None) if !available(old) => free.push(node.to_string()),
                    (Some(_), None) => candidates.push(node.to_string()),
                    _ => {}
                }
            }
            let room = (max_surge - surging).max(0) as usize;
            d.create.extend(free);
            d.create.extend(candidates.into_iter().take(room));
        }
    }

    d.delete.sort();
    d.delete.dedup();
    let mut st = json!({"observedGeneration": ds["metadata"]["generation"]});
    for (k, v) in &status {
        st[*k] = json!(v);
    }
    st["numberUnavailable"] = json!(desired - status["numberAvailable"]);
    if let Some(c) = ds["status"]["collisionCount"].as_i64() {
        st["collisionCount"] = json!(c);
    }
    d.status = st;
    if min_ready > 0 && status["numberReady"] > status["numberAvailable"] {
        d.requeue = Some(1);
    }
    d
}

/// Pods a look creates in one batch at first; each batch that succeeds doubles the next
/// (Kubernetes' slow start: a template every create of which fails fails once, not a
/// thousand times).
const SLOW_START: usize = 1;

impl Reconciler<NsName> for DaemonSetController {
    type Error = ObjectError;

    async fn reconcile(&self, (ns, name): NsName) -> Result<Action, ObjectError> {
        let ctx = &self.ctx;
        ctx.caught_up().await;
        let Some(entry) = ctx.cache.get(kind("daemonsets"), &ns, &name) else {
            return Ok(Action::AwaitChange);
        };
        let ds = (*entry.object).clone();
        if is_terminating(&ds) {
            return Ok(Action::AwaitChange);
        }
        let uid = super::util::uid(&ds).to_owned();
        let revisions = super::revisions::of(ctx, &uid);
        let Some(hash) = super::revisions::current(ctx, kind("daemonsets"), &ds, &revisions).await? else {
            return Ok(Action::Requeue(Duration::ZERO));
        };
        let owned = ctx.cache.controlled_by(kind("pods"), &uid);
        let pods: Vec<&Value> = owned.iter().map(|e| e.object.as_ref()).collect();
        let node_entries = ctx.cache.list(kind("nodes"), None).0;
        let nodes: Vec<&Value> = node_entries.iter().map(|e| e.object.as_ref()).collect();
        let d = decide(&ds, &nodes, &pods, &hash, super::util::now());

        for (reason, message) in &d.warnings {
            self.events.record(&ds, EventType::Warning, reason, message.clone());
        }
        let deletes = d.delete.iter().map(|p| (p, false)).chain(d.gone.iter().map(|p| (p, true)));
        for (pod, at_once) in deletes {
            super::podcontrol::delete_for(ctx, &self.events, &ds, &ns, pod, at_once).await?;
        }
        let mut failed = false;
        if !d.create.is_empty() && super::namespace::is_active(ctx, &ns) {
            let mut batch = SLOW_START;
            let mut pos = 0;
            while pos < d.create.len() && !failed {
                let end = (pos + batch).min(d.create.len());
                let pods: Vec<Value> = d.create[pos..end].iter().map(|n| new_pod(&ds, n, &hash)).collect();
                failed = super::podcontrol::create_for(ctx, &self.events, &ds, &ns, pods)
                    .await?
                    .refused
                    .is_some();
                pos = end;
                batch *= 2;
            }
        }
        super::revisions::clean_history(ctx, &ds, &revisions, &pods, &hash).await?;
        ctx.objects.merge_status(kind("daemonsets"), &ds, &d.status).await?;
        if failed {
            return Ok(Action::Requeue(Duration::from_secs(5)));
        }
        Ok(match d.requeue {
            Some(s) => Action::Requeue(Duration::from_secs(s.max(1) as u64)),
            None => Action::AwaitChange,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_000_000;

    fn ds(strategy: Value) -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "DaemonSet",
            "metadata": {"name": "agent", "namespace": "ops", "uid": "u1", "generation": 2},
            "spec": {
                "selector": {"matchLabels": {"app": "agent"}},
                "updateStrategy": strategy,
                "template": {"metadata": {"labels": {"app": "agent"}}, "spec": {"nodeSelector": {"role": "worker"}, "containers": [{"name": "c", "image": "i"}]}},
            },
        })
    }

    fn node(name: &str, labels: Value, taints: Value) -> Value {
        json!({"metadata": {"name": name, "labels": labels}, "spec": {"taints": taints}})
    }

    fn worker(name: &str) -> Value {
        node(name, json!({"role": "worker"}), json!([]))
    }

    fn pod(name: &str, node: &str, hash: &str, ready: bool, created: &str) -> Value {
        json!({
            "metadata": {"name": name, "labels": {"app": "agent", REVISION_HASH_LABEL: hash}, "creationTimestamp": created},
            "spec": {"nodeName": node},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }, "lastTransitionTime": "1970-01-01T00:00:00Z"}]},
        })
    }

    fn refs(v: &[Value]) -> Vec<&Value> {
        v.iter().collect()
    }

    #[test]
    fn a_pod_on_every_node_the_template_admits() {
        let nodes = [
            worker("a"),
            worker("b"),
            node("c", json!({"role": "db"}), json!([])),
            node(
                "d",
                json!({"role": "worker"}),
                json!([{"key": "gpu", "value": "yes", "effect": "NoSchedule"}]),
            ),
            // Not ready and cordoned: daemon pods tolerate both.
            node(
                "e",
                json!({"role": "worker"}),
                json!([{"key": "node.kubernetes.io/not-ready", "effect": "NoExecute"}, {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}]),
            ),
        ];
        let pods = [pod("agent-c1", "c", "h1", true, "1")];
        let d = decide(&ds(json!({"type": "RollingUpdate"})), &refs(&nodes), &refs(&pods), "h1", NOW);
        assert_eq!(d.create, ["a", "b", "e"]);
        assert_eq!(d.delete, ["agent-c1"], "a node the selector no longer admits loses its pod");
        assert_eq!(d.status["desiredNumberScheduled"], 3);
        assert_eq!(d.status["numberMisscheduled"], 1);
        assert_eq!(d.status["numberUnavailable"], 3);
    }

    #[test]
    fn new_pods_are_pinned_to_their_node_and_tolerate_what_daemons_do() {
        let mut set = ds(json!({}));
        set["spec"]["template"]["spec"]["tolerations"] =
            json!([{"key": "node.kubernetes.io/not-ready", "effect": "NoExecute", "tolerationSeconds": 5}]);
        let p = new_pod(&set, "a", "h1");
        assert_eq!(
            p["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]["matchFields"]
                [0]["values"],
            json!(["a"])
        );
        assert_eq!(p["metadata"]["labels"][REVISION_HASH_LABEL], "h1");
        assert_eq!(p["metadata"]["labels"][TEMPLATE_GENERATION_LABEL], "2");
        let tolerations = p["spec"]["tolerations"].as_array().unwrap();
        assert_eq!(tolerations.len(), 6);
        let not_ready = tolerations.iter().find(|t| t["key"] == "node.kubernetes.io/not-ready").unwrap();
        assert!(
            not_ready["tolerationSeconds"].is_null(),
            "a daemon pod is never evicted from a node that is not ready"
        );
        let info = PodInfo::from_json(&p);
        assert!(info.admitted_by(&NodeInfo::from_json(&worker("a"))));
        assert!(!info.admitted_by(&NodeInfo::from_json(&worker("b"))));
        assert_eq!(target_node(&p), Some("a"));
    }

    #[test]
    fn an_untolerated_no_execute_taint_removes_the_pod() {
        let nodes = [node(
            "a",
            json!({"role": "worker"}),
            json!([{"key": "drain", "effect": "NoExecute"}]),
        )];
        let pods = [pod("agent-a", "a", "h1", true, "1")];
        let d = decide(&ds(json!({})), &refs(&nodes), &refs(&pods), "h1", NOW);
        assert_eq!(d.delete, ["agent-a"]);
        assert!(d.create.is_empty());
    }

    #[test]
    fn a_rolling_update_replaces_one_node_at_a_time() {
        let nodes = [worker("a"), worker("b"), worker("c")];
        let strategy = json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}});
        let old = [
            pod("agent-a", "a", "h1", true, "1"),
            pod("agent-b", "b", "h1", true, "2"),
            pod("agent-c", "c", "h1", true, "3"),
        ];
        let d = decide(&ds(strategy.clone()), &refs(&nodes), &refs(&old), "h2", NOW);
        assert_eq!(d.delete.len(), 1, "{d:?}");
        assert!(d.create.is_empty());
        assert_eq!(d.status["updatedNumberScheduled"], 0);

        // a's pod is gone: a gets the new template, and nothing else goes while a is not ready.
        let mid = [pod("agent-b", "b", "h1", true, "2"), pod("agent-c", "c", "h1", true, "3")];
        let d = decide(&ds(strategy.clone()), &refs(&nodes), &refs(&mid), "h2", NOW);
        assert_eq!(d.create, ["a"]);
        assert!(d.delete.is_empty());
        let starting = [
            pod("agent-a2", "a", "h2", false, "4"),
            pod("agent-b", "b", "h1", true, "2"),
            pod("agent-c", "c", "h1", true, "3"),
        ];
        let d = decide(&ds(strategy.clone()), &refs(&nodes), &refs(&starting), "h2", NOW);
        assert!(d.delete.is_empty() && d.create.is_empty(), "{d:?}");
        // Once it is available, the next node's old pod goes.
        let ready = [
            pod("agent-a2", "a", "h2", true, "4"),
            pod("agent-b", "b", "h1", true, "2"),
            pod("agent-c", "c", "h1", true, "3"),
        ];
        let d = decide(&ds(strategy), &refs(&nodes), &refs(&ready), "h2", NOW);
        assert_eq!(d.delete.len(), 1);
        assert_eq!(d.status["updatedNumberScheduled"], 1);
        // An old pod that is not ready anyway goes at once, beyond the budget.
        let broken = [
            pod("agent-a", "a", "h1", false, "1"),
            pod("agent-b", "b", "h1", false, "2"),
            pod("agent-c", "c", "h1", true, "3"),
        ];
        let d = decide(&ds(json!({})), &refs(&nodes), &refs(&broken), "h2", NOW);
        assert_eq!(d.delete, ["agent-a", "agent-b"]);
    }

    #[test]
    fn a_surging_update_starts_the_new_pod_before_the_old_one_goes() {
        let nodes = [worker("a"), worker("b")];
        let strategy = json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}});
        let old = [pod("agent-a", "a", "h1", true, "1"), pod("agent-b", "b", "h1", true, "2")];
        let d = decide(&ds(strategy.clone()), &refs(&nodes), &refs(&old), "h2", NOW);
        assert_eq!(d.create, ["a"]);
        assert!(d.delete.is_empty());
        let both = [
            pod("agent-a", "a", "h1", true, "1"),
            pod("agent-a2", "a", "h2", false, "3"),
            pod("agent-b", "b", "h1", true, "2"),
        ];
        let d = decide(&ds(strategy.clone()), &refs(&nodes), &refs(&both), "h2", NOW);
        assert!(d.create.is_empty() && d.delete.is_empty(), "{d:?}");
        let up = [
            pod("agent-a", "a", "h1", true, "1"),
            pod("agent-a2", "a", "h2", true, "3"),
            pod("agent-b", "b", "h1", true, "2"),
        ];
        let d = decide(&ds(strategy), &refs(&nodes), &refs(&up), "h2", NOW);
        assert_eq!(d.delete, ["agent-a"]);
        assert_eq!(d.create, ["b"]);
    }

    #[test]
    fn on_delete_replaces_only_what_the_user_deleted() {
        let nodes = [worker("a"), worker("b")];
        let pods = [pod("agent-a", "a", "h1", true, "1")];
        let d = decide(&ds(json!({"type": "OnDelete"})), &refs(&nodes), &refs(&pods), "h2", NOW);
        assert!(d.delete.is_empty());
        assert_eq!(d.create, ["b"]);
        assert_eq!(d.status["updatedNumberScheduled"], 0);
    }
}
