//! The ReplicaSet controller: keeps `spec.replicas` active pods for each ReplicaSet, adopting
//! orphans its selector matches and releasing pods it no longer matches, creating pods from the
//! template (subject to ResourceQuota) and deleting the least valuable ones first, and reports
//! replicas, ready and available pods in its status.

use std::sync::Arc;
use std::time::Duration;

use capstan_runtime::{Action, Reconciler};
use serde_json::{Value, json};

use super::podcontrol;
use super::util::{
    NsName, controller_ref, is_active, is_available, is_controlled_by, is_ready, is_terminating, now, owner_ref, random_suffix,
};
use super::{Controller, watches};
use crate::context::{Context, kind};
use crate::events::Recorder;
use crate::objects::ObjectError;
use capstan_api::selector::workload_selects;

pub struct ReplicaSetController {
    pub ctx: Context,
    pub events: Recorder,
}

/// Orders pods for deletion: the least valuable first (Kubernetes' ranking, simplified):
/// unscheduled, then pending, then not ready, then the most recently created.
fn deletion_rank(p: &Value) -> (u8, u8, u8, std::cmp::Reverse<String>) {
    let scheduled = p["spec"]["nodeName"].as_str().is_some_and(|n| !n.is_empty());
    let running = p["status"]["phase"] == "Running";
    let created = p["metadata"]["creationTimestamp"].as_str().unwrap_or_default().to_owned();
    (scheduled as u8, running as u8, is_ready(p) as u8, std::cmp::Reverse(created))
}

/// Watches ReplicaSets and their pods; an orphan pod concerns every ReplicaSet of its
/// namespace (one of them may adopt it).
pub fn controller(ctx: &Context) -> Controller<NsName, ReplicaSetController> {
    let cache = ctx.cache.clone();
    let pods = move |p: &Value| {
        let keys = keys_for(p);
        if !keys.is_empty() || controller_ref(p).is_some() {
            return keys;
        }
        let ns = p["metadata"]["namespace"].as_str().unwrap_or_default();
        cache
            .list(kind("replicasets"), Some(ns))
            .0
            .iter()
            .map(|e| (e.namespace.clone(), e.name.clone()))
            .collect()
    };
    Controller {
        name: "replicaset",
        reconciler: ReplicaSetController {
            ctx: ctx.clone(),
            events: Recorder::new(ctx.objects.clone(), "replicaset-controller", None),
        },
        workers: 4,
        triggers: vec![watches("replicasets", keys_for), watches("pods", pods)],
    }
}

impl Reconciler<NsName> for ReplicaSetController {
    type Error = ObjectError;

    async fn reconcile(&self, (ns, name): NsName) -> Result<Action, ObjectError> {
        let ctx = &self.ctx;
        ctx.caught_up().await;
        let rs_kind = kind("replicasets");
        let pods_kind = kind("pods");
        let Some(rs) = ctx.cache.get(rs_kind, &ns, &name) else {
            return Ok(Action::AwaitChange);
        };
        let rs = (*rs.object).clone();
        if is_terminating(&rs) {
            return Ok(Action::AwaitChange);
        }
        let selector = &rs["spec"]["selector"];
        // Its own pods (by the controller index) and the orphans it may adopt; not every pod.
        let uid = rs["metadata"]["uid"].as_str().unwrap_or_default();
        let mut pods = ctx.cache.controlled_by(pods_kind, uid);
        pods.extend(ctx.cache.orphans(pods_kind, &ns));
        let mut owned = Vec::new();
        for entry in &pods {
            let pod = &entry.object;
            let matches = workload_selects(selector, pod);
            if is_controlled_by(pod, &rs) {
                if matches {
                    owned.push((**pod).clone());
                } else {
                    // Release: the pod's labels no longer match.
                    ctx.objects
                        .modify(pods_kind, &ns, &entry.name, false, |p| {
                            if let Some(refs) = p["metadata"]["ownerReferences"].as_array_mut() {
                                refs.retain(|r| r["uid"] != rs["metadata"]["uid"]);
                            }
                            true
                        })
                        .await?;
                }
            } else if matches && controller_ref(pod).is_none() && is_active(pod) {
                // Adopt an orphan.
                let adopted = ctx
                    .objects
                    .modify(pods_kind, &ns, &entry.name, false, |p| {
                        if controller_ref(p).is_some() {
                            return false;
                        }
                        let refs = p["metadata"]["ownerReferences"].as_array().cloned().unwrap_or_default();
                        let mut refs = refs;
                        refs.push(owner_ref(&rs));
                        p["metadata"]["ownerReferences"] = Value::Array(refs);
                        true
                    })
                    .await?;
                owned.push(adopted);
            }
        }
        let desired = rs["spec"]["replicas"].as_i64().unwrap_or(1).max(0) as usize;
        let mut active: Vec<Value> = owned.iter().filter(|p| is_active(p)).cloned().collect();
        let mut failure: Option<String> = None;
        if active.len() < desired && super::namespace::is_active(ctx, &ns) {
            let pods: Vec<Value> = (active.len()..desired).map(|_| self.new_pod(&rs)).collect();
            let outcome = podcontrol::create_for(ctx, &self.events, &rs, &ns, pods).await?;
            active.extend(outcome.created);
            failure = outcome.refused;
        } else if active.len() > desired {
            active.sort_by_key(deletion_rank);
            let excess = active.len() - desired;
            for pod in active.drain(..excess) {
                let pod_name = pod["metadata"]["name"].as_str().unwrap_or_default();
                podcontrol::delete_for(ctx, &self.events, &rs, &ns, pod_name, false).await?;
            }
        }
        // Status, from the pods as they are now.
        let min_ready = rs["spec"]["minReadySeconds"].as_i64().unwrap_or(0);
        let t = now();
        let ready = active.iter().filter(|p| is_ready(p)).count();
        let available = active.iter().filter(|p| is_available(p, min_ready, t)).count();
        let labelled = active.len();
        let mut status = json!({
            "replicas": active.len(),
            "fullyLabeledReplicas": labelled,
            "readyReplicas": ready,
            "availableReplicas": available,
            "observedGeneration": rs["metadata"]["generation"],
        });
        if let Some(message) = &failure {
            status["conditions"] = json!([{"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate", "message": message, "lastTransitionTime": capstan_api::time::now_rfc3339()}]);
        }
        let current = &rs["status"];
        let changed = [
            "replicas",
            "readyReplicas",
            "availableReplicas",
            "observedGeneration",
            "fullyLabeledReplicas",
        ]
        .iter()
        .any(|f| current[f] != status[f])
            || current["conditions"].as_array().is_some_and(|c| !c.is_empty()) != status["conditions"].is_array();
        if changed {
            ctx.objects
                .modify(rs_kind, &ns, &name, true, |r| {
                    r["status"] = status.clone();
                    true
                })
                .await?;
        }
        // Pods that are ready but not yet available need a look when minReadySeconds passes;
        // a quota failure is retried.
        if failure.is_some() {
            return Ok(Action::Requeue(Duration::from_secs(5)));
        }
        if min_ready > 0 && ready > available {
            return Ok(Action::Requeue(Duration::from_secs(1)));
        }
        Ok(Action::AwaitChange)
    }
}

impl ReplicaSetController {
    fn new_pod(&self, rs: &Value) -> Value {
        let template = &rs["spec"]["template"];
        let base = rs["metadata"]["name"].as_str().unwrap_or("pod");
        let mut pod = json!({
            "metadata": template["metadata"].clone(),
            "spec": template["spec"].clone(),
        });
        if !pod["metadata"].is_object() {
            pod["metadata"] = json!({});
        }
        pod["metadata"]["name"] = json!(format!("{base}-{}", random_suffix()));
        pod["metadata"]["namespace"] = rs["metadata"]["namespace"].clone();
        pod["metadata"]["ownerReferences"] = json!([owner_ref(rs)]);
        if let Some(c) = rs.pointer("/metadata/annotations/capstan.dev~1commit") {
            pod["metadata"]["annotations"]["capstan.dev/commit"] = c.clone();
        }
        pod
    }
}

/// A ReplicaSet's key from any object that may concern it: itself, or a pod it controls.
pub fn keys_for(obj: &Value) -> Vec<NsName> {
    super::util::owner_keys(obj, "ReplicaSet")
}

pub type Shared = Arc<ReplicaSetController>;
