//! Node lifecycle: each node gets a pod range (a /24 of the pod CIDR); a node whose Lease has not
//! been renewed within the grace period is marked NotReady (Ready=Unknown) and tainted
//! `node.kubernetes.io/unreachable` (NoSchedule, NoExecute); its pods are evicted once their
//! toleration of that taint runs out (default: the eviction timeout), so that their ReplicaSets
//! replace them elsewhere. Until then its pods are marked not Ready, so that Services stop
//! sending to them (the agent, once back, says Ready again). A node that renews its Lease again
//! loses the taints.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use capstan_runtime::{Action, Reconciler};
use serde_json::{Value, json};

use super::util::{now, seconds};
use super::{Controller, name_of, watches};
use crate::cache::Entry;
use crate::context::{Context, kind};
use crate::events::{EventType, Recorder};
use crate::objects::ObjectError;
use capstan_api::cidr::NODE_PREFIX;
use capstan_api::time::now_rfc3339;

pub use capstan_api::defaults::{TAINT_NOT_READY, TAINT_UNREACHABLE};

pub struct NodeLifecycle {
    pub ctx: Context,
    pub events: Recorder,
}

/// How long a pod tolerates `taint` with effect NoExecute: its toleration's seconds, forever
/// if it tolerates without a limit, or `default` without a toleration.
pub fn toleration_seconds(pod: &Value, taint: &str, default: i64) -> Option<i64> {
    let tolerations = pod["spec"]["tolerations"].as_array();
    let matching = tolerations.into_iter().flatten().find(|t| {
        let key_ok = t["key"].as_str().is_none_or(|k| k.is_empty() || k == taint) && (t["key"].is_string() || t["operator"] == "Exists");
        let effect_ok = t["effect"].as_str().is_none_or(|e| e.is_empty() || e == "NoExecute");
        key_ok && effect_ok
    });
    match matching {
        Some(t) => t["tolerationSeconds"].as_i64(),
        None => Some(default),
    }
}

impl NodeLifecycle {
    fn allocate_pod_cidr(&self, node: &str) -> Option<String> {
        let used: HashSet<String> = self
            .ctx
            .cache
            .list(kind("nodes"), None)
            .0
            .iter()
            .filter(|n| n.name != node)
            .filter_map(|n| n.object["spec"]["podCIDR"].as_str().map(str::to_owned))
            .collect();
        let range = self.ctx.settings.pod_cidr;
        (0..)
            .map_while(|i| range.subnet(NODE_PREFIX, i))
            .map(|c| c.to_string())
            .find(|c| !used.contains(c))
    }
}

impl NodeLifecycle {
    /// Sets Ready=False on the node's pods that still say Ready (Kubernetes' MarkPodsNotReady):
    /// nobody can tell whether they serve, so endpoints move them to notReadyAddresses.
    async fn mark_pods_not_ready(&self, on_node: &[Arc<Entry>]) -> Result<(), ObjectError> {
        let pods = kind("pods");
        for p in on_node.iter().filter(|p| pod_says_ready(&p.object)) {
            let stamp = now_rfc3339();
            let changed = self
                .ctx
                .objects
                .modify(pods, &p.namespace, &p.name, true, |pod| {
                    let Some(conds) = pod["status"]["conditions"].as_array_mut() else {
                        return false;
                    };
                    let mut changed = false;
                    for c in conds.iter_mut().filter(|c| c["type"] == "Ready" && c["status"] == "True") {
                        c["status"] = json!("False");
                        c["lastTransitionTime"] = json!(stamp);
                        changed = true;
                    }
                    changed
                })
                .await;
            match changed {
                Ok(_) => self
                    .events
                    .record(&p.object, EventType::Warning, "NodeNotReady", "Node is not ready"),
                Err(ObjectError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

fn pod_says_ready(pod: &Value) -> bool {
    pod["status"]["conditions"]
        .as_array()
        .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

/// Keyed by node name: watches Nodes, their Leases, and ClusterSettings (new grace or eviction
/// settings from Git: every node is looked at again).
pub fn controller(ctx: &Context) -> Controller<String, NodeLifecycle> {
    let cache = ctx.cache.clone();
    let lease = |l: &Value| {
        if l["metadata"]["namespace"] == "kube-node-lease" {
            name_of(l)
        } else {
            Vec::new()
        }
    };
    let all_nodes = move |_: &Value| cache.list(kind("nodes"), None).0.iter().map(|e| e.name.clone()).collect();
    Controller {
        name: "node-lifecycle",
        reconciler: NodeLifecycle {
            ctx: ctx.clone(),
            events: Recorder::new(ctx.objects.clone(), "node-controller", None),
        },
        workers: 1,
        triggers: vec![
            watches("nodes", name_of),
            watches("leases", lease),
            watches("clustersettings", all_nodes),
        ],
    }
}

impl Reconciler<String> for NodeLifecycle {
    type Error = ObjectError;

    async fn reconcile(&self, name: String) -> Result<Action, ObjectError> {
        let ctx = &self.ctx;
        ctx.caught_up().await;
        let nodes = kind("nodes");
        let Some(node) = ctx.cache.get(nodes, "", &name) else {
            return Ok(Action::AwaitChange);
        };
        let node = (*node.object).clone();
        if node["spec"]["podCIDR"].as_str().is_none_or(str::is_empty)
            && let Some(cidr) = self.allocate_pod_cidr(&name)
        {
            ctx.objects
                .modify(nodes, "", &name, false, |n| {
                    n["spec"]["podCIDR"] = json!(cidr);
                    n["spec"]["podCIDRs"] = json!([cidr]);
                    true
                })
                .await?;
            return Ok(Action::Requeue(Duration::ZERO));
        }
        let grace = ctx.live().node_grace.as_secs() as i64;
        let lease = ctx.cache.get(kind("leases"), "kube-node-lease", &name);
        let renewed = lease
            .as_ref()
            .and_then(|l| seconds(&l.object["spec"]["renewTime"]))
            .or_else(|| seconds(&node["metadata"]["creationTimestamp"]));
        let t = now();
        let stale = renewed.is_none_or(|r| t - r > grace);
        let taints = node["spec"]["taints"].as_array().cloned().unwrap_or_default();
        let has_taint = taints.iter().any(|tn| tn["key"] == TAINT_UNREACHABLE);
        if stale && !has_taint {
            self.events.record(
                &node,
                EventType::Normal,
                "NodeNotReady",
                format!("Node {name} status is now: NodeNotReady"),
            );
            let stamp = now_rfc3339();
            ctx.objects
                .modify(nodes, "", &name, false, |n| {
                    let mut taints = n["spec"]["taints"].as_array().cloned().unwrap_or_default();
                    taints.retain(|t| t["key"] != TAINT_UNREACHABLE);
                    taints.push(json!({"key": TAINT_UNREACHABLE, "effect": "NoSchedule", "timeAdded": stamp}));
                    taints.push(json!({"key": TAINT_UNREACHABLE, "effect": "NoExecute", "timeAdded": stamp}));
                    n["spec"]["taints"] = Value::Array(taints);
                    true
                })
                .await?;
            ctx.objects
                .modify(nodes, "", &name, true, |n| {
                    let mut conds = n["status"]["conditions"].as_array().cloned().unwrap_or_default();
                    for c in conds.iter_mut().filter(|c| c["type"] == "Ready") {
                        c["status"] = json!("Unknown");
                        c["reason"] = json!("NodeStatusUnknown");
                        c["message"] = json!("Kubelet stopped posting node status.");
                        c["lastTransitionTime"] = json!(stamp);
                    }
                    if !conds.iter().any(|c| c["type"] == "Ready") {
                        conds.push(json!({"type": "Ready", "status": "Unknown", "reason": "NodeStatusUnknown", "message": "Kubelet stopped posting node status.", "lastTransitionTime": stamp}));
                    }
                    n["status"]["conditions"] = Value::Array(conds);
                    true
                })
                .await?;
            return Ok(Action::Requeue(Duration::from_secs(1)));
        }
        if !stale && has_taint {
            ctx.objects
                .modify(nodes, "", &name, false, |n| {
                    if let Some(t) = n["spec"]["taints"].as_array_mut() {
                        t.retain(|t| t["key"] != TAINT_UNREACHABLE);
                    }
                    true
                })
                .await?;
            self.events.record(
                &node,
                EventType::Normal,
                "NodeReady",
                format!("Node {name} status is now: NodeReady"),
            );
            return Ok(Action::Requeue(Duration::from_secs(grace.max(1) as u64)));
        }
        if stale {
            let (all, _) = ctx.cache.list(kind("pods"), None);
            let on_node: Vec<Arc<Entry>> = all.into_iter().filter(|p| p.object["spec"]["nodeName"] == name.as_str()).collect();
            self.mark_pods_not_ready(&on_node).await?;
            // Evict the pods whose toleration has run out.
            let since = taints
                .iter()
                .filter(|t| t["key"] == TAINT_UNREACHABLE)
                .filter_map(|t| seconds(&t["timeAdded"]))
                .min()
                .unwrap_or(t);
            let default = ctx.live().eviction_timeout.as_secs() as i64;
            let mut next_check: Option<i64> = None;
            for p in &on_node {
                let Some(tolerate) = toleration_seconds(&p.object, TAINT_UNREACHABLE, default) else {
                    continue;
                };
                let due = since + tolerate;
                if t >= due {
                    self.events.record(
                        &p.object,
                        EventType::Normal,
                        "TaintManagerEviction",
                        format!("Marking for deletion Pod {}/{}", p.namespace, p.name),
                    );
                    // Nobody will stop the containers, so the object goes now; except a
                    // StatefulSet's pod, which is only marked: it may still run there, and two
                    // pods of one identity must never run at once. It goes when the node comes
                    // back, is deleted, or an administrator forces it.
                    let at_once = super::util::controller_ref(&p.object).is_none_or(|r| r["kind"] != "StatefulSet");
                    match ctx.objects.delete_pod(&p.namespace, &p.name, at_once).await {
                        Ok(_) | Err(ObjectError::NotFound { .. }) => {}
                        Err(e) => return Err(e),
                    }
                } else {
                    next_check = Some(next_check.map_or(due, |n| n.min(due)));
                }
            }
            return Ok(Action::Requeue(Duration::from_secs(
                next_check.map_or(5, |n| (n - t).clamp(1, 60)) as u64
            )));
        }
        // Healthy: look again when the lease would go stale.
        let left = renewed.map_or(grace, |r| grace - (t - r));
        Ok(Action::Requeue(Duration::from_secs(left.clamp(1, 3600) as u64 + 1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tolerations_decide_when_pods_go() {
        let none = json!({"spec": {}});
        assert_eq!(toleration_seconds(&none, TAINT_UNREACHABLE, 300), Some(300));
        let short = json!({"spec": {"tolerations": [{"key": TAINT_UNREACHABLE, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 5}]}});
        assert_eq!(toleration_seconds(&short, TAINT_UNREACHABLE, 300), Some(5));
        let forever = json!({"spec": {"tolerations": [{"operator": "Exists"}]}});
        assert_eq!(toleration_seconds(&forever, TAINT_UNREACHABLE, 300), None);
        let other = json!({"spec": {"tolerations": [{"key": "dedicated", "operator": "Equal", "value": "x", "effect": "NoSchedule"}]}});
        assert_eq!(toleration_seconds(&other, TAINT_UNREACHABLE, 300), Some(300));
    }
}
