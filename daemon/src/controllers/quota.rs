//! ResourceQuota: what a namespace uses (pods, cpu and memory requests and limits, services,
//! config maps, secrets), kept in each quota's `status.used`, and the admission check that keeps
//! a controller from creating a pod that would go over.

use capstan_runtime::{Action, Reconciler};
use serde_json::{Map, Value, json};

use super::util::{NsName, is_active};
use std::sync::Arc;

use super::{Controller, ns_name, watches};
use crate::context::{Context, kind};
use crate::objects::ObjectError;
use capstan_api::quantity::Quantity;

/// The resources a set of pods uses, by quota key.
fn pod_usage(pods: &[&Value]) -> Vec<(&'static str, Quantity)> {
    let zero = Quantity::default();
    let (mut req_cpu, mut req_mem, mut lim_cpu, mut lim_mem) = (zero, zero, zero, zero);
    for p in pods {
        for c in p["spec"]["containers"].as_array().into_iter().flatten() {
            let r = &c["resources"];
            req_cpu = req_cpu.saturating_add(Quantity::of(&r["requests"]["cpu"]));
            req_mem = req_mem.saturating_add(Quantity::of(&r["requests"]["memory"]));
            lim_cpu = lim_cpu.saturating_add(Quantity::of(&r["limits"]["cpu"]));
            lim_mem = lim_mem.saturating_add(Quantity::of(&r["limits"]["memory"]));
        }
    }
    vec![
        ("pods", count(pods.len())),
        ("requests.cpu", req_cpu),
        ("cpu", req_cpu),
        ("requests.memory", req_mem),
        ("memory", req_mem),
        ("limits.cpu", lim_cpu),
        ("limits.memory", lim_mem),
    ]
}

fn count(n: usize) -> Quantity {
    Quantity::from_units(i64::try_from(n).unwrap_or(i64::MAX))
}

/// How a quantity is written back: cpu in cores or millicores, memory in Mi when whole,
/// counts plain.
fn format_quantity(key: &str, v: Quantity) -> String {
    const MI_MILLI: i64 = 1024 * 1024 * 1000;
    if key.ends_with("cpu") {
        v.to_string()
    } else if key.ends_with("memory") && v.milli_value() >= MI_MILLI && v.milli_value() % MI_MILLI == 0 {
        format!("{}Mi", v.milli_value() / MI_MILLI)
    } else {
        v.value().to_string()
    }
}

fn usage(ctx: &Context, ns: &str, extra: Option<&Value>) -> Vec<(&'static str, Quantity)> {
    let (pods, _) = ctx.cache.list(kind("pods"), Some(ns));
    let mut active: Vec<&Value> = pods.iter().map(|e| e.object.as_ref()).filter(|p| is_active(p)).collect();
    if let Some(p) = extra {
        active.push(p);
    }
    let mut u = pod_usage(&active);
    for (key, plural) in [("services", "services"), ("configmaps", "configmaps"), ("secrets", "secrets")] {
        u.push((key, count(ctx.cache.list(kind(plural), Some(ns)).0.len())));
    }
    u
}

/// Admits `pod` into namespace `ns`, or says which quota it would exceed (Kubernetes' message).
/// Creates `pod` if the namespace's quotas admit it: `Ok(Err(why))` when they do not. The check
/// and the create are one step (no other create fits under the same last unit of quota).
pub async fn create_pod(ctx: &Context, ns: &str, pod: Value) -> Result<Result<Value, String>, ObjectError> {
    let admission = ctx.admission.lock().await;
    // The cache must hold every pod created so far before the quota is counted.
    ctx.caught_up().await;
    if let Err(why) = admit(ctx, ns, &pod) {
        return Ok(Err(why));
    }
    let created = ctx.objects.create(kind("pods"), pod).await;
    ctx.caught_up().await;
    drop(admission);
    created.map(Ok)
}

pub fn admit(ctx: &Context, ns: &str, pod: &Value) -> Result<(), String> {
    let (quotas, _) = ctx.cache.list(kind("resourcequotas"), Some(ns));
    if quotas.is_empty() {
        return Ok(());
    }
    let after = usage(ctx, ns, Some(pod));
    let before = usage(ctx, ns, None);
    let requested = pod_usage(&[pod]);
    for q in &quotas {
        let Some(hard) = q.object["spec"]["hard"].as_object() else {
            continue;
        };
        let mut over = Vec::new();
        for (key, limit) in hard {
            let Some((_, total)) = after.iter().find(|(k, _)| k == key) else {
                continue;
            };
            let asked = requested.iter().find(|(k, _)| k == key).map_or_else(Quantity::default, |(_, v)| *v);
            if asked > Quantity::default() && *total > Quantity::of(limit) {
                let used = before.iter().find(|(k, _)| k == key).map_or_else(Quantity::default, |(_, v)| *v);
                over.push((key.clone(), asked, used, limit.clone()));
            }
        }
        if !over.is_empty() {
            let fmt = |f: &dyn Fn(&(String, Quantity, Quantity, Value)) -> String| over.iter().map(f).collect::<Vec<_>>().join(",");
            return Err(format!(
                "pods \"{}\" is forbidden: exceeded quota: {}, requested: {}, used: {}, limited: {}",
                pod["metadata"]["name"].as_str().unwrap_or_default(),
                q.name,
                fmt(&|(k, a, _, _)| format!("{k}={}", format_quantity(k, *a))),
                fmt(&|(k, _, u, _)| format!("{k}={}", format_quantity(k, *u))),
                fmt(&|(k, _, _, l)| format!("{k}={}", l.as_str().map(str::to_owned).unwrap_or_else(|| l.to_string()))),
            ));
        }
    }
    Ok(())
}

/// Keeps `status.hard` and `status.used` of each ResourceQuota current.
pub struct QuotaController {
    pub ctx: Context,
}

/// Watches ResourceQuotas and what they count (pods, Services, ConfigMaps, Secrets): a change
/// concerns every quota of its namespace.
pub fn controller(ctx: &Context) -> Controller<NsName, QuotaController> {
    let quotas_of = |cache: Arc<crate::cache::Cache>| {
        move |v: &Value| -> Vec<NsName> {
            let ns = v["metadata"]["namespace"].as_str().unwrap_or_default();
            cache
                .list(kind("resourcequotas"), Some(ns))
                .0
                .iter()
                .map(|e| (e.namespace.clone(), e.name.clone()))
                .collect()
        }
    };
    let counted = ["pods", "services", "configmaps", "secrets"].map(|plural| watches(plural, quotas_of(ctx.cache.clone())));
    let mut triggers = vec![watches("resourcequotas", ns_name)];
    triggers.extend(counted);
    Controller {
        name: "resourcequota",
        reconciler: QuotaController { ctx: ctx.clone() },
        workers: 1,
        triggers,
    }
}

impl Reconciler<NsName> for QuotaController {
    type Error = ObjectError;

    async fn reconcile(&self, (ns, name): NsName) -> Result<Action, ObjectError> {
        self.ctx.caught_up().await;
        let Some(q) = self.ctx.cache.get(kind("resourcequotas"), &ns, &name) else {
            return Ok(Action::AwaitChange);
        };
        let hard = q.object["spec"]["hard"].as_object().cloned().unwrap_or_default();
        let u = usage(&self.ctx, &ns, None);
        let mut used = Map::new();
        for key in hard.keys() {
            if let Some((_, v)) = u.iter().find(|(k, _)| k == key) {
                used.insert(key.clone(), json!(format_quantity(key, *v)));
            }
        }
        let status = json!({"hard": hard, "used": used});
        if q.object["status"] != status {
            self.ctx
                .objects
                .modify(kind("resourcequotas"), &ns, &name, true, |o| {
                    o["status"] = status.clone();
                    true
                })
                .await?;
        }
        Ok(Action::AwaitChange)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_are_written_like_kubernetes() {
        let q = |s: &str| s.parse::<Quantity>().unwrap();
        assert_eq!(format_quantity("requests.cpu", q("1.5")), "1500m");
        assert_eq!(format_quantity("limits.cpu", q("2")), "2");
        assert_eq!(format_quantity("requests.memory", q("128Mi")), "128Mi");
        assert_eq!(format_quantity("requests.memory", q("1G")), "1000000000");
        assert_eq!(format_quantity("pods", count(3)), "3");
        let sum = q("100m").saturating_add(q("0.2"));
        assert_eq!(format_quantity("cpu", sum), "300m", "exact: no floating-point residue");
    }
}
