//! The disruption controller: each PodDisruptionBudget's status, as Kubernetes computes it — the
//! pods it covers that are healthy (Ready), how many must stay so (from minAvailable, or from
//! maxUnavailable against the replicas their controllers want), and so how many may be evicted
//! now — and what the eviction subresource may do to a pod under them ([`eviction`]). A pod the
//! eviction subresource let go is listed in the budget's `disruptedPods` and not counted healthy
//! until it is gone (or two minutes have passed). [`budget`] and [`eviction`] are the pure cores.

use capstan_runtime::{Action, Reconciler};
use serde_json::{Value, json};

use super::util::{NsName, controller_ref, is_ready, is_terminating};
use super::{Controller, ns_name, watches};
use crate::context::{Context, kind};
use crate::objects::ObjectError;
use capstan_api::selector::workload_selects;

pub struct DisruptionController {
    pub ctx: Context,
}

/// The budgets in a pod's namespace (any of them may select it).
pub fn controller(ctx: &Context) -> Controller<NsName, DisruptionController> {
    let cache = ctx.cache.clone();
    let pods = move |p: &Value| {
        let ns = p["metadata"]["namespace"].as_str().unwrap_or_default();
        cache
            .list(kind("poddisruptionbudgets"), Some(ns))
            .0
            .iter()
            .map(|e| (e.namespace.clone(), e.name.clone()))
            .collect()
    };
    Controller {
        name: "disruption",
        reconciler: DisruptionController { ctx: ctx.clone() },
        workers: 1,
        triggers: vec![watches("poddisruptionbudgets", ns_name), watches("pods", pods)],
    }
}

/// How long a pod the eviction subresource let go stays out of its budget's healthy count while
/// it is being deleted (Kubernetes' DeletionTimeout).
pub const DISRUPTION_TIMEOUT: i64 = 120;

/// What the eviction subresource may do to a pod.
#[derive(Debug, PartialEq, Eq)]
pub enum Eviction {
    /// Delete it; no budget is concerned.
    Free,
    /// Delete it, taking one disruption from this budget.
    Counted(String),
    /// Not now: the budget's reason (HTTP 429, kubectl drain tries again).
    Refused(String),
    /// More than one budget covers the pod: Kubernetes refuses such evictions.
    Ambiguous,
}

/// Decides the eviction of `pod` under the budgets of its namespace, from their status (as the
/// eviction subresource does; the disruption controller keeps the status current).
pub fn eviction(pod: &Value, pdbs: &[&Value]) -> Eviction {
    let ended = matches!(pod["status"]["phase"].as_str(), Some("Succeeded" | "Failed" | "Pending"));
    if ended || is_terminating(pod) {
        return Eviction::Free;
    }
    let covering: Vec<&&Value> = pdbs
        .iter()
        .filter(|b| b["spec"]["selector"].is_object() && workload_selects(&b["spec"]["selector"], pod))
        .collect();
    let pdb = match covering.as_slice() {
        [] => return Eviction::Free,
        [one] => one,
        _ => return Eviction::Ambiguous,
    };
    let name = pdb["metadata"]["name"].as_str().unwrap_or_default().to_owned();
    let status = &pdb["status"];
    if status["observedGeneration"].as_i64().unwrap_or(0) < pdb["metadata"]["generation"].as_i64().unwrap_or(1) {
        return Eviction::Refused(format!("the disruption budget {name} is still being processed by the server"));
    }
    let (current, desired) = (
        status["currentHealthy"].as_i64().unwrap_or(0),
        status["desiredHealthy"].as_i64().unwrap_or(0),
    );
    if !is_ready(pod) {
        // An unhealthy pod counts for nothing: it may go when the policy says so, or while the
        // budget is met without it.
        if pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow" || (current >= desired && desired > 0) {
            return Eviction::Free;
        }
    }
    if status["disruptionsAllowed"].as_i64().unwrap_or(0) <= 0 {
        return Eviction::Refused(format!(
            "The disruption budget {name} needs {desired} healthy pods and has {current} currently"
        ));
    }
    Eviction::Counted(name)
}

/// What a budget's numbers come to.
#[derive(Debug, PartialEq, Eq)]
pub struct Budget {
    pub expected: i64,
    pub current_healthy: i64,
    pub desired_healthy: i64,
    pub disruptions_allowed: i64,
}

/// `n` of `total`, a count or a percentage (rounded up, as Kubernetes does for budgets).
fn scaled(bound: &Value, total: i64) -> Option<i64> {
    match bound {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => {
            let pct: i64 = s.strip_suffix('%')?.parse().ok()?;
            Some((total * pct + 99) / 100)
        }
        _ => None,
    }
}

/// The numbers of `pdb`, given its pods and the replicas their controllers want (`scale`: the
/// sum over the distinct controllers, `None` when some pod has none a budget can count). Pods
/// named in `disrupted` (let go by the eviction subresource) are not healthy.
pub fn budget(pdb: &Value, pods: &[&Value], scale: Option<i64>, disrupted: &serde_json::Map<String, Value>) -> Result<Budget, String> {
    let spec = &pdb["spec"];
    let healthy = pods
        .iter()
        .filter(|p| is_ready(p) && !is_terminating(p))
        .filter(|p| !disrupted.contains_key(p["metadata"]["name"].as_str().unwrap_or_default()))
        .count() as i64;
    let (min, max) = (&spec["minAvailable"], &spec["maxUnavailable"]);
    let (expected, desired) = match (min, max) {
        (Value::Number(_), Value::Null) => {
            let n = pods.len() as i64;
            (n, scaled(min, n).unwrap_or(0))
        }
        // Neither given (policy/v1 defaults none): nothing has to stay.
        (Value::Null, Value::Null) => (pods.len() as i64, 0),
        _ => {
            let expected = scale.ok_or("found no controllers for the pods: a percentage or maxUnavailable needs the replicas of a ReplicaSet, Deployment or StatefulSet")?;
            let desired = if min.is_null() {
                (expected - scaled(max, expected).unwrap_or(0)).max(0)
            } else {
                scaled(min, expected).unwrap_or(0)
            };
            (expected, desired)
        }
    };
    Ok(Budget {
        expected,
        current_healthy: healthy,
        desired_healthy: desired,
        disruptions_allowed: (healthy - desired).max(0),
    })
}

impl Reconciler<NsName> for DisruptionController {
    type Error = ObjectError;

    async fn reconcile(&self, (ns, name): NsName) -> Result<Action, ObjectError> {
        let ctx = &self.ctx;
        ctx.caught_up().await;
        let pdbs = kind("poddisruptionbudgets");
        let Some(entry) = ctx.cache.get(pdbs, &ns, &name) else {
            return Ok(Action::AwaitChange);
        };
        let pdb = (*entry.object).clone();
        let (all, _) = ctx.cache.list(kind("pods"), Some(&ns));
        let selector = &pdb["spec"]["selector"];
        let pods: Vec<&Value> = all
            .iter()
            .map(|e| e.object.as_ref())
            .filter(|p| !matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed")))
            .filter(|p| selector.is_object() && workload_selects(selector, p))
            .collect();
        // Pods the eviction subresource let go count until they are gone, but not as healthy.
        let t = super::util::now();
        let mut disrupted = serde_json::Map::new();
        let mut expires: Option<i64> = None;
        for (pod, at) in pdb["status"]["disruptedPods"].as_object().into_iter().flatten() {
            let Some(since) = super::util::seconds(at) else { continue };
            let live = pods.iter().any(|p| p["metadata"]["name"] == pod.as_str() && !is_terminating(p));
            if live && since + DISRUPTION_TIMEOUT > t {
                disrupted.insert(pod.clone(), at.clone());
                expires = Some(expires.map_or(since + DISRUPTION_TIMEOUT, |e: i64| e.min(since + DISRUPTION_TIMEOUT)));
            }
        }
        // The replicas the pods' controllers want, each controller once.
        let mut seen = std::collections::BTreeSet::new();
        let mut scale = Some(0i64);
        for p in &pods {
            let Some(owner) = controller_ref(p) else {
                scale = None;
                break;
            };
            if !seen.insert(owner["uid"].as_str().unwrap_or_default().to_owned()) {
                continue;
            }
            let replicas = match owner["kind"].as_str() {
                Some("ReplicaSet") => ctx.cache.get(kind("replicasets"), &ns, owner["name"].as_str().unwrap_or_default()),
                _ => None,
            }
            .and_then(|rs| rs.object["spec"]["replicas"].as_i64());
            scale = scale.zip(replicas).map(|(a, b)| a + b);
        }
        let now = capstan_api::time::now_rfc3339();
        let condition = |allowed: bool, reason: &str, message: &str| {
            json!([{"type": "DisruptionAllowed", "status": if allowed { "True" } else { "False" }, "reason": reason, "message": message,
                "observedGeneration": pdb["metadata"]["generation"], "lastTransitionTime": now}])
        };
        let mut status = match budget(&pdb, &pods, scale, &disrupted) {
            Ok(b) => json!({
                "observedGeneration": pdb["metadata"]["generation"],
                "expectedPods": b.expected,
                "currentHealthy": b.current_healthy,
                "desiredHealthy": b.desired_healthy,
                "disruptionsAllowed": b.disruptions_allowed,
                "conditions": if b.disruptions_allowed > 0 {
                    condition(true, "SufficientPods", "")
                } else {
                    condition(false, "InsufficientPods", "")
                },
            }),
            Err(why) => json!({
                "observedGeneration": pdb["metadata"]["generation"],
                "disruptionsAllowed": 0,
                "conditions": condition(false, "SyncFailed", &why),
            }),
        };
        if !disrupted.is_empty() {
            status["disruptedPods"] = Value::Object(disrupted);
        }
        // A condition keeps its transition time while it holds.
        let same = |a: &Value, b: &Value| {
            let strip = |v: &Value| {
                let mut v = v.clone();
                for c in v["conditions"].as_array_mut().into_iter().flatten() {
                    c.as_object_mut().map(|c| c.remove("lastTransitionTime"));
                }
                v
            };
            strip(a) == strip(b)
        };
        if !same(&pdb["status"], &status) {
            ctx.objects
                .modify(pdbs, &ns, &name, true, |p| {
                    p["status"] = status.clone();
                    true
                })
                .await?;
        }
        Ok(match expires {
            Some(e) => Action::Requeue(std::time::Duration::from_secs((e - t).max(1) as u64)),
            None => Action::AwaitChange,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pods(ready: usize, not_ready: usize) -> Vec<Value> {
        let mut out = Vec::new();
        for i in 0..ready + not_ready {
            let status = if i < ready { "True" } else { "False" };
            out.push(json!({"metadata": {"name": format!("p{i}")}, "status": {"conditions": [{"type": "Ready", "status": status}]}}));
        }
        out
    }

    #[test]
    fn budgets_count_healthy_pods_against_their_bound() {
        let p = pods(3, 1);
        let refs: Vec<&Value> = p.iter().collect();
        let none = serde_json::Map::new();
        let min2 = json!({"spec": {"minAvailable": 2}});
        assert_eq!(
            budget(&min2, &refs, None, &none),
            Ok(Budget {
                expected: 4,
                current_healthy: 3,
                desired_healthy: 2,
                disruptions_allowed: 1
            })
        );
        // Percentages and maxUnavailable count against what the controllers want (5 here).
        let half = json!({"spec": {"minAvailable": "50%"}});
        assert_eq!(budget(&half, &refs, Some(5), &none).unwrap().desired_healthy, 3, "rounded up");
        let max1 = json!({"spec": {"maxUnavailable": 1}});
        let b = budget(&max1, &refs, Some(5), &none).unwrap();
        assert_eq!((b.desired_healthy, b.disruptions_allowed), (4, 0));
        assert!(budget(&max1, &refs, None, &none).unwrap_err().contains("found no controllers"));
    }

    #[test]
    fn evictions_take_what_the_budget_allows() {
        let pod = |ready: bool| {
            json!({"metadata": {"name": "web-1", "labels": {"app": "web"}}, "status": {"phase": "Running",
                   "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}})
        };
        let pdb = |name: &str, allowed: i64, current: i64| {
            json!({"metadata": {"name": name, "generation": 1}, "spec": {"minAvailable": 2, "selector": {"matchLabels": {"app": "web"}}},
                   "status": {"observedGeneration": 1, "disruptionsAllowed": allowed, "currentHealthy": current, "desiredHealthy": 2}})
        };
        let (open, shut) = (pdb("web", 1, 3), pdb("web", 0, 2));
        assert_eq!(eviction(&pod(true), &[&open]), Eviction::Counted("web".into()));
        assert_eq!(
            eviction(&pod(true), &[&shut]),
            Eviction::Refused("The disruption budget web needs 2 healthy pods and has 2 currently".into())
        );
        // An unready pod may go while the budget is met without it.
        assert_eq!(eviction(&pod(false), &[&shut]), Eviction::Free);
        assert_eq!(eviction(&pod(true), &[]), Eviction::Free);
        assert_eq!(eviction(&pod(true), &[&open, &pdb("other", 1, 3)]), Eviction::Ambiguous);
        let mut stale = open.clone();
        stale["metadata"]["generation"] = json!(2);
        assert!(matches!(eviction(&pod(true), &[&stale]), Eviction::Refused(m) if m.contains("still being processed")));
    }
}
