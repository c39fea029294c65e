//! The HorizontalPodAutoscaler controller (autoscaling/v2): every sync period, the resource
//! usage of the target's pods (from the node agents, as the metrics API serves it) against their
//! requests or an average value, Kubernetes' replica calculation (a 10 % tolerance, unready pods
//! and pods without metrics assumed at the least helpful level), then `behavior`: stabilisation
//! windows and rate policies, and the min/max bounds. The count is written to the workload's
//! `spec.replicas`, which it then owns: the Git sync keeps it unless a commit changes `replicas`
//! (see `sync::merge_live`). [`replicas_for`] and [`normalize`] are the pure cores.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use capstan_api::quantity::Quantity;
use capstan_runtime::{Action, Reconciler};
use serde_json::{Value, json};

use super::util::{NsName, is_ready, is_terminating};
use super::{Controller, ns_name, watches};
use crate::api::metrics::SummarySource;
use crate::context::{Context, kind};
use crate::events::{EventType, Recorder};
use crate::objects::ObjectError;

/// The annotation on a workload whose replicas an autoscaler owns: its name.
pub const AUTOSCALED_BY: &str = "capstan.dev/autoscaled-by";

/// Changes smaller than this ratio are not made (kube-controller-manager's default).
const TOLERANCE: f64 = 0.1;

/// A pod as the replica calculation sees it, for one resource.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub ready: bool,
    /// The pod's request of the resource (millicores or bytes); None when a container has none.
    pub request: Option<i64>,
    /// Its usage, when the node reported it.
    pub usage: Option<i64>,
}

/// What a resource metric's target asks for.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Target {
    /// Percent of the pods' requests.
    Utilization(i64),
    /// Per pod, in millicores or bytes.
    AverageValue(i64),
}

/// The replicas one metric proposes, and what it measured (utilization percent, average value).
#[derive(Debug, PartialEq)]
pub struct Proposal {
    pub replicas: i64,
    pub utilization: Option<i64>,
    pub average: i64,
}

/// Kubernetes' replica calculation for one resource metric: `current` replicas, the target's
/// pods as `samples` (CPU: unready pods are left out of the usage and, when scaling up, assumed
/// idle; pods without metrics are assumed at their request when scaling down and idle when
/// scaling up, so that neither pushes further than measured).
pub fn replicas_for(current: i64, samples: &[Sample], target: Target, cpu: bool) -> Result<Proposal, String> {
    let measured: Vec<&Sample> = samples.iter().filter(|s| s.usage.is_some() && (s.ready || !cpu)).collect();
    if measured.is_empty() {
        return Err("no metrics returned for any ready pod".into());
    }
    let usage: i64 = measured.iter().filter_map(|s| s.usage).sum();
    let ratio_of = |usage: i64, pods: &[&Sample]| -> Result<f64, String> {
        match target {
            Target::Utilization(pct) => {
                let requests: i64 = pods.iter().map(|s| s.request.unwrap_or(0)).sum();
                if requests <= 0 {
                    return Err("no requests to measure utilization against".into());
                }
                Ok(usage as f64 * 100.0 / requests as f64 / pct as f64)
            }
            Target::AverageValue(v) => Ok(usage as f64 / pods.len() as f64 / v as f64),
        }
    };
    let ratio = ratio_of(usage, &measured)?;
    let utilization = match target {
        Target::Utilization(pct) => Some((ratio * pct as f64).round() as i64),
        Target::AverageValue(_) => None,
    };
    let average = usage / measured.len() as i64;
    let missing: Vec<&Sample> = samples.iter().filter(|s| s.usage.is_none()).collect();
    let unready: Vec<&Sample> = samples.iter().filter(|s| s.usage.is_some() && cpu && !s.ready).collect();
    let proposal = |replicas| Proposal {
        replicas,
        utilization,
        average,
    };
    if missing.is_empty() && unready.is_empty() {
        if (ratio - 1.0).abs() <= TOLERANCE {
            return Ok(proposal(current));
        }
        return Ok(proposal((ratio * measured.len() as f64).ceil() as i64));
    }
    // Rebalance: what is not measured counts against the direction of the change.
    let mut pods: Vec<&Sample> = measured.clone();
    let mut assumed = usage;
    let scale_up = ratio > 1.0;
    for s in &missing {
        if !scale_up {
            assumed += match target {
                Target::Utilization(_) => s.request.unwrap_or(0),
                Target::AverageValue(v) => v,
            };
        }
        pods.push(s);
    }
    if scale_up {
        pods.extend(unready.iter().copied());
    }
    let new_ratio = ratio_of(assumed, &pods)?;
    if (new_ratio - 1.0).abs() <= TOLERANCE || (ratio > 1.0) != (new_ratio > 1.0) {
        return Ok(proposal(current));
    }
    let replicas = (new_ratio * pods.len() as f64).ceil() as i64;
    // Never the other way round from what was measured.
    if (scale_up && replicas < current) || (!scale_up && replicas > current) {
        return Ok(proposal(current));
    }
    Ok(proposal(replicas))
}

/// What an autoscaler remembers between looks (kube-controller-manager keeps it in memory too):
/// its recent recommendations and scaling events, as (Unix seconds, replicas or change).
#[derive(Clone, Debug, Default)]
pub struct History {
    pub recommendations: Vec<(i64, i64)>,
    pub events: Vec<(i64, i64)>,
}

/// One direction's `behavior`: window, policies (kind, value, period) and how to pick.
#[derive(Clone, Debug)]
struct Rules {
    window: i64,
    policies: Vec<(String, i64, i64)>,
    select: String,
}

fn rules(behavior: &Value, up: bool) -> Rules {
    let b = &behavior[if up { "scaleUp" } else { "scaleDown" }];
    let default_policies = if up {
        vec![("Pods".to_owned(), 4, 15), ("Percent".to_owned(), 100, 15)]
    } else {
        vec![("Percent".to_owned(), 100, 15)]
    };
    let policies = b["policies"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .map(|p| {
                    (
                        p["type"].as_str().unwrap_or("Pods").to_owned(),
                        p["value"].as_i64().unwrap_or(1),
                        p["periodSeconds"].as_i64().unwrap_or(15),
                    )
                })
                .collect()
        })
        .unwrap_or(default_policies);
    Rules {
        window: b["stabilizationWindowSeconds"].as_i64().unwrap_or(if up { 0 } else { 300 }),
        policies,
        select: b["selectPolicy"].as_str().unwrap_or("Max").to_owned(),
    }
}

/// Why the count is what it is, for the conditions.
#[derive(Debug, PartialEq, Eq)]
pub enum Limited {
    No,
    TooMany,
    TooFew,
}

/// From the metrics' `desired` count to the one to set: stabilised over the windows, limited by
/// the rate policies, bounded by min and max. Records the recommendation in `history`.
pub fn normalize(spec: &Value, current: i64, desired: i64, history: &mut History, now: i64) -> (i64, Limited) {
    let behavior = &spec["behavior"];
    let (up, down) = (rules(behavior, true), rules(behavior, false));
    let (min, max) = (spec["minReplicas"].as_i64().unwrap_or(1), spec["maxReplicas"].as_i64().unwrap_or(1));
    let keep = up.window.max(down.window);
    history.recommendations.retain(|(t, _)| *t > now - keep.max(1));
    let (mut up_rec, mut down_rec) = (desired, desired);
    for &(t, r) in &history.recommendations {
        if t > now - up.window {
            up_rec = up_rec.min(r);
        }
        if t > now - down.window {
            down_rec = down_rec.max(r);
        }
    }
    history.recommendations.push((now, desired));
    let stabilized = current.max(up_rec).min(down_rec);
    let longest = up.policies.iter().chain(&down.policies).map(|p| p.2).max().unwrap_or(0);
    history.events.retain(|(t, _)| *t > now - longest);
    let changed_since = |period: i64, grew: bool| -> i64 {
        history
            .events
            .iter()
            .filter(|(t, c)| *t > now - period && (*c > 0) == grew)
            .map(|(_, c)| c.abs())
            .sum()
    };
    let (mut next, mut limited) = (stabilized, Limited::No);
    if stabilized > current {
        let limits: Vec<i64> = up
            .policies
            .iter()
            .map(|(kind, value, period)| {
                let start = current - changed_since(*period, true);
                if kind == "Percent" {
                    (start as f64 * (1.0 + *value as f64 / 100.0)).ceil() as i64
                } else {
                    start + value
                }
            })
            .collect();
        let limit = match up.select.as_str() {
            "Disabled" => current,
            "Min" => limits.iter().copied().min().unwrap_or(current),
            _ => limits.iter().copied().max().unwrap_or(current),
        };
        if stabilized > limit.min(max) {
            next = limit.min(max);
            limited = Limited::TooMany;
        }
    } else if stabilized < current {
        let limits: Vec<i64> = down
            .policies
            .iter()
            .map(|(kind, value, period)| {
                let start = current + changed_since(*period, false);
                if kind == "Percent" {
                    (start as f64 * (1.0 - *value as f64 / 100.0)).ceil() as i64
                } else {
                    start - value
                }
            })
            .collect();
        let limit = match down.select.as_str() {
            "Disabled" => current,
            "Min" => limits.iter().copied().max().unwrap_or(current),
            _ => limits.iter().copied().min().unwrap_or(current),
        };
        if stabilized < limit.max(min) {
            next = limit.max(min);
            limited = Limited::TooFew;
        }
    }
    if next > max {
        (next, limited) = (max, Limited::TooMany);
    } else if next < min {
        (next, limited) = (min, Limited::TooFew);
    }
    if next != current {
        history.events.push((now, next - current));
    }
    (next, limited)
}

pub struct Autoscaler {
    pub ctx: Context,
    pub events: Recorder,
    pub metrics: Option<Arc<dyn SummarySource>>,
    pub period: Duration,
    pub history: Mutex<HashMap<NsName, History>>,
}

pub fn controller(ctx: &Context) -> Controller<NsName, Autoscaler> {
    Controller {
        name: "horizontal-pod-autoscaler",
        reconciler: Autoscaler {
            ctx: ctx.clone(),
            events: Recorder::new(ctx.objects.clone(), "horizontal-pod-autoscaler", None),
            metrics: ctx.metrics.clone(),
            period: ctx.settings.autoscaler_period,
            history: Mutex::new(HashMap::new()),
        },
        workers: 2,
        triggers: vec![watches("horizontalpodautoscalers", ns_name)],
    }
}

/// A pod's request of `resource` (None when a container lacks one), in millicores or bytes.
fn request(pod: &Value, resource: &str) -> Result<i64, String> {
    let mut sum = 0;
    for c in pod["spec"]["containers"].as_array().into_iter().flatten() {
        let q = &c["resources"]["requests"][resource];
        if q.is_null() {
            return Err(format!(
                "missing request for {resource} in container {} of Pod {}",
                c["name"].as_str().unwrap_or_default(),
                pod["metadata"]["name"].as_str().unwrap_or_default()
            ));
        }
        sum += amount(resource, &Quantity::of(q));
    }
    Ok(sum)
}

fn amount(resource: &str, q: &Quantity) -> i64 {
    if resource == "cpu" { q.milli_value() } else { q.value() }
}

fn condition(ty: &str, ok: bool, reason: &str, message: &str, at: &str) -> Value {
    json!({"type": ty, "status": if ok { "True" } else { "False" }, "reason": reason, "message": message, "lastTransitionTime": at})
}

impl Autoscaler {
    /// Usage per pod (namespace, name) of the target's pods: (millicores, bytes), from the
    /// summaries of the nodes they run on.
    async fn usage(&self, pods: &[&Value]) -> BTreeMap<String, (i64, i64)> {
        let mut out = BTreeMap::new();
        let Some(source) = &self.metrics else { return out };
        let nodes: std::collections::BTreeSet<String> = pods
            .iter()
            .filter_map(|p| p["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()).map(str::to_owned))
            .collect();
        let uids: HashMap<&str, &str> = pods
            .iter()
            .map(|p| {
                (
                    p["metadata"]["uid"].as_str().unwrap_or_default(),
                    p["metadata"]["name"].as_str().unwrap_or_default(),
                )
            })
            .collect();
        for (_, s) in crate::api::metrics::summaries(source.as_ref(), nodes).await {
            for p in s["pods"].as_array().into_iter().flatten() {
                let Some(name) = uids.get(p["podRef"]["uid"].as_str().unwrap_or_default()) else {
                    continue;
                };
                let (mut cpu, mut mem) = (0i64, 0i64);
                for c in p["containers"].as_array().into_iter().flatten() {
                    cpu += c["cpu"]["usageNanoCores"].as_i64().unwrap_or(0) / 1_000_000;
                    mem += c["memory"]["workingSetBytes"].as_i64().unwrap_or(0);
                }
                out.insert((*name).to_owned(), (cpu, mem));
            }
        }
        out
    }
}

impl Reconciler<NsName> for Autoscaler {
    type Error = ObjectError;

    async fn reconcile(&self, (ns, name): NsName) -> Result<Action, ObjectError> {
        let ctx = &self.ctx;
        ctx.caught_up().await;
        let hpas = kind("horizontalpodautoscalers");
        let Some(entry) = ctx.cache.get(hpas, &ns, &name) else {
            if let Ok(mut h) = self.history.lock() {
                h.remove(&(ns, name));
            }
            return Ok(Action::AwaitChange);
        };
        let hpa = (*entry.object).clone();
        let spec = &hpa["spec"];
        let stamp = capstan_api::time::now_rfc3339();
        let now = super::util::now();
        let target_kind = spec["scaleTargetRef"]["kind"].as_str().unwrap_or_default();
        let target_name = spec["scaleTargetRef"]["name"].as_str().unwrap_or_default();
        let plural = match target_kind {
            "Deployment" => Some("deployments"),
            "ReplicaSet" => Some("replicasets"),
            "StatefulSet" => Some("statefulsets"),
            _ => None,
        };
        let target_kind_info = plural.map(kind);
        let target = target_kind_info.and_then(|k| ctx.cache.get(k, &ns, target_name));
        let mut status = json!({"observedGeneration": hpa["metadata"]["generation"], "currentReplicas": 0, "desiredReplicas": 0});
        for field in ["lastScaleTime", "currentMetrics"] {
            if !hpa["status"][field].is_null() {
                status[field] = hpa["status"][field].clone();
            }
        }
        let mut conditions = Vec::new();
        let Some(target) = target else {
            let why = format!("the HPA controller was unable to get the target's current scale: {target_kind} {target_name:?} not found");
            conditions.push(condition("AbleToScale", false, "FailedGetScale", &why, &stamp));
            self.events.record(&hpa, EventType::Warning, "FailedGetScale", why);
            status["conditions"] = Value::Array(conditions);
            self.write_status(&hpa, status).await?;
            return Ok(Action::Requeue(self.period));
        };
        let current = target.object["spec"]["replicas"].as_i64().unwrap_or(1);
        status["currentReplicas"] = json!(current);
        conditions.push(condition(
            "AbleToScale",
            true,
            "ReadyForNewScale",
            "recommended size matches current size",
            &stamp,
        ));
        if current == 0 && spec["minReplicas"].as_i64().unwrap_or(1) != 0 {
            conditions.push(condition(
                "ScalingActive",
                false,
                "ScalingDisabled",
                "scaling is disabled since the replica count of the target is zero",
                &stamp,
            ));
            status["conditions"] = Value::Array(conditions);
            self.write_status(&hpa, status).await?;
            return Ok(Action::Requeue(self.period));
        }
        // The target's pods: those its selector picks that are not ending.
        let selector = &target.object["spec"]["selector"];
        let (all, _) = ctx.cache.list(kind("pods"), Some(&ns));
        let pods: Vec<&Value> = all
            .iter()
            .map(|e| e.object.as_ref())
            .filter(|p| capstan_api::selector::workload_selects(selector, p))
            .filter(|p| !is_terminating(p) && p["status"]["phase"] != "Failed" && p["status"]["phase"] != "Succeeded")
            .collect();
        let usage = self.usage(&pods).await;
        let mut proposals: Vec<(i64, String)> = Vec::new();
        let mut current_metrics = Vec::new();
        let mut failure: Option<String> = None;
        for m in spec["metrics"].as_array().into_iter().flatten() {
            let resource = m["resource"]["name"].as_str().unwrap_or("cpu");
            let t = &m["resource"]["target"];
            let goal = match t["type"].as_str() {
                Some("AverageValue") => Target::AverageValue(amount(resource, &Quantity::of(&t["averageValue"]))),
                _ => Target::Utilization(t["averageUtilization"].as_i64().unwrap_or(80)),
            };
            let mut samples = Vec::new();
            for p in &pods {
                let req = request(p, resource);
                if let (Target::Utilization(_), Err(e)) = (goal, &req) {
                    failure = Some(format!("failed to get {resource} utilization: {e}"));
                    break;
                }
                let name = p["metadata"]["name"].as_str().unwrap_or_default();
                samples.push(Sample {
                    ready: is_ready(p),
                    request: req.ok(),
                    usage: usage.get(name).map(|(c, b)| if resource == "cpu" { *c } else { *b }),
                });
            }
            if failure.is_some() {
                break;
            }
            match replicas_for(current, &samples, goal, resource == "cpu") {
                Ok(p) => {
                    let reason = match goal {
                        Target::Utilization(_) => format!("{resource} resource utilization (percentage of request)"),
                        Target::AverageValue(_) => format!("{resource} resource"),
                    };
                    let mut cur = json!({});
                    if let Some(u) = p.utilization {
                        cur["averageUtilization"] = json!(u);
                    }
                    cur["averageValue"] = json!(if resource == "cpu" {
                        format!("{}m", p.average)
                    } else {
                        p.average.to_string()
                    });
                    current_metrics.push(json!({"type": "Resource", "resource": {"name": resource, "current": cur}}));
                    proposals.push((p.replicas, reason));
                }
                Err(e) => {
                    failure = Some(format!(
                        "failed to get {resource} utilization: unable to get metrics for resource {resource}: {e}"
                    ));
                    break;
                }
            }
        }
        if let Some(why) = failure {
            conditions.push(condition("ScalingActive", false, "FailedGetResourceMetric", &why, &stamp));
            self.events.record(&hpa, EventType::Warning, "FailedGetResourceMetric", why);
            status["desiredReplicas"] = json!(current);
            status["conditions"] = Value::Array(conditions);
            self.write_status(&hpa, status).await?;
            return Ok(Action::Requeue(self.period));
        }
        status["currentMetrics"] = Value::Array(current_metrics);
        conditions.push(condition(
            "ScalingActive",
            true,
            "ValidMetricFound",
            "the HPA was able to successfully calculate a replica count from resource metrics",
            &stamp,
        ));
        let (wanted, reason) = proposals
            .into_iter()
            .max_by_key(|(r, _)| *r)
            .unwrap_or((current, "no metrics".into()));
        let (next, limited) = {
            let mut all = self.history.lock().unwrap_or_else(|e| e.into_inner());
            let history = all.entry((ns.clone(), name.clone())).or_default();
            normalize(spec, current, wanted, history, now)
        };
        conditions.push(match limited {
            Limited::No => condition(
                "ScalingLimited",
                false,
                "DesiredWithinRange",
                "the desired count is within the acceptable range",
                &stamp,
            ),
            Limited::TooMany => condition(
                "ScalingLimited",
                true,
                "TooManyReplicas",
                "the desired replica count is more than the maximum replica count",
                &stamp,
            ),
            Limited::TooFew => condition(
                "ScalingLimited",
                true,
                "TooFewReplicas",
                "the desired replica count is less than the minimum replica count",
                &stamp,
            ),
        });
        status["desiredReplicas"] = json!(next);
        if next != current {
            ctx.objects
                .modify(target_kind_info.expect("found by it"), &ns, target_name, false, |w| {
                    w["spec"]["replicas"] = json!(next);
                    w["metadata"]["annotations"][AUTOSCALED_BY] = json!(name);
                    true
                })
                .await?;
            let direction = if next > current { "above" } else { "below" };
            self.events.record(
                &hpa,
                EventType::Normal,
                "SuccessfulRescale",
                format!("New size: {next}; reason: {reason} {direction} target"),
            );
            status["lastScaleTime"] = json!(stamp);
            conditions[0] = condition(
                "AbleToScale",
                true,
                "SucceededRescale",
                &format!("the HPA controller was able to update the target scale to {next}"),
                &stamp,
            );
        } else if target.object["metadata"]["annotations"][AUTOSCALED_BY] != name.as_str() {
            ctx.objects
                .modify(target_kind_info.expect("found by it"), &ns, target_name, false, |w| {
                    w["metadata"]["annotations"][AUTOSCALED_BY] = json!(name);
                    true
                })
                .await?;
        }
        status["conditions"] = Value::Array(conditions);
        self.write_status(&hpa, status).await?;
        Ok(Action::Requeue(self.period))
    }
}

impl Autoscaler {
    /// Writes the status; conditions keep their transition time while they hold.
    async fn write_status(&self, hpa: &Value, mut status: Value) -> Result<(), ObjectError> {
        let old = hpa["status"]["conditions"].as_array().cloned().unwrap_or_default();
        for c in status["conditions"].as_array_mut().into_iter().flatten() {
            if let Some(before) = old.iter().find(|o| o["type"] == c["type"] && o["status"] == c["status"]) {
                c["lastTransitionTime"] = before["lastTransitionTime"].clone();
            }
        }
        if hpa["status"] == status {
            return Ok(());
        }
        let (ns, name) = super::util::key_of(hpa);
        self.ctx
            .objects
            .modify(kind("horizontalpodautoscalers"), &ns, &name, true, |h| {
                h["status"] = status.clone();
                true
            })
            .await
            .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pods(usages: &[Option<i64>], ready: bool) -> Vec<Sample> {
        usages
            .iter()
            .map(|u| Sample {
                ready,
                request: Some(100),
                usage: *u,
            })
            .collect()
    }

    #[test]
    fn the_replica_calculation_follows_kubernetes() {
        // Two pods at 100% of 100m against a 50% target: four.
        let p = replicas_for(2, &pods(&[Some(100), Some(100)], true), Target::Utilization(50), true).unwrap();
        assert_eq!((p.replicas, p.utilization), (4, Some(100)));
        // Within the 10% tolerance: unchanged.
        let p = replicas_for(2, &pods(&[Some(53), Some(53)], true), Target::Utilization(50), true).unwrap();
        assert_eq!(p.replicas, 2);
        // Idle: down to what the usage needs.
        let p = replicas_for(
            4,
            &pods(&[Some(10), Some(10), Some(10), Some(10)], true),
            Target::Utilization(50),
            true,
        )
        .unwrap();
        assert_eq!(p.replicas, 1);
        // A pod without metrics counts at its request when scaling down: less far down.
        let p = replicas_for(3, &pods(&[Some(10), Some(10), None], true), Target::Utilization(50), true).unwrap();
        assert_eq!(p.replicas, 3, "(10 + 10 + 100) / 300 = 40% of 50%: ceil(0.8 x 3)");
        // Unready pods are assumed idle when scaling up.
        let mut s = pods(&[Some(100), Some(100)], true);
        s.extend(pods(&[Some(0), Some(0)], false));
        assert_eq!(replicas_for(4, &s, Target::Utilization(50), true).unwrap().replicas, 4);
        // Average values.
        let p = replicas_for(1, &pods(&[Some(300)], true), Target::AverageValue(100), true).unwrap();
        assert_eq!(p.replicas, 3);
        assert!(replicas_for(1, &pods(&[None], true), Target::Utilization(50), true).is_err());
    }

    #[test]
    fn behavior_stabilises_and_limits_the_rate() {
        let spec = json!({"minReplicas": 1, "maxReplicas": 10});
        let mut h = History::default();
        // Up: at most max(4 pods, 100%) per 15 s.
        assert_eq!(normalize(&spec, 1, 10, &mut h, 1000), (5, Limited::TooMany));
        assert_eq!(
            normalize(&spec, 5, 10, &mut h, 1005),
            (5, Limited::TooMany),
            "the 4 added count for 15 s"
        );
        assert_eq!(normalize(&spec, 5, 10, &mut h, 1016).0, 10);
        // Down: the highest recommendation of the last 300 s holds.
        assert_eq!(normalize(&spec, 10, 2, &mut h, 1020).0, 10);
        assert_eq!(normalize(&spec, 10, 2, &mut h, 1400).0, 2);
        // A short window and a one-pod-per-period policy.
        let spec = json!({"minReplicas": 1, "maxReplicas": 10, "behavior": {"scaleDown": {"stabilizationWindowSeconds": 0, "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}]}}});
        let mut h = History::default();
        assert_eq!(normalize(&spec, 4, 1, &mut h, 0).0, 3);
        assert_eq!(normalize(&spec, 3, 1, &mut h, 30).0, 3);
        assert_eq!(normalize(&spec, 3, 1, &mut h, 61).0, 2);
        // Bounds.
        let spec = json!({"minReplicas": 2, "maxReplicas": 3, "behavior": {"scaleDown": {"stabilizationWindowSeconds": 0}}});
        assert_eq!(normalize(&spec, 3, 1, &mut History::default(), 0), (2, Limited::TooFew));
    }
}
