//! The Endpoints and EndpointSlice controller: for each Service with a selector, the pods it
//! selects, ready ones as addresses and the others (and those shutting down) as not ready, with
//! named target ports resolved against each pod's container ports. For a Service without one,
//! the Endpoints declared for it (in Git: an external service) are mirrored into
//! EndpointSlices, which the proxies and the cluster DNS read (Kubernetes' EndpointSlice
//! mirroring).

use std::collections::BTreeMap;

use capstan_runtime::{Action, Reconciler};
use serde_json::{Value, json};

use super::util::{NsName, is_ready, is_terminating, map_selects, owner_ref, safe_encode};
use super::{Controller, ns_name, watches};
use crate::cache::Cache;
use crate::context::{Context, kind};
use crate::objects::ObjectError;

pub struct EndpointsController {
    pub ctx: Context,
}

/// Services in a pod's namespace whose selector matches it.
pub fn services_selecting(cache: &Cache, pod: &Value) -> Vec<NsName> {
    let ns = pod["metadata"]["namespace"].as_str().unwrap_or_default();
    cache
        .list(kind("services"), Some(ns))
        .0
        .iter()
        .filter(|s| map_selects(&s.object["spec"]["selector"], pod))
        .map(|s| (s.namespace.clone(), s.name.clone()))
        .collect()
}

/// A Service port's target on one pod: a number, or the container port with that name.
fn resolve_port(target: &Value, port: i64, pod: &Value) -> Option<i64> {
    match target {
        Value::Number(n) => n.as_i64(),
        Value::String(name) => pod["spec"]["containers"]
            .as_array()?
            .iter()
            .flat_map(|c| c["ports"].as_array().cloned().unwrap_or_default())
            .find(|p| p["name"] == name.as_str())
            .and_then(|p| p["containerPort"].as_i64()),
        _ => Some(port),
    }
}

/// The EndpointSlice name of a Service (stable, and distinct from other Services' names).
pub fn slice_name(svc: &Value) -> String {
    let uid = svc["metadata"]["uid"].as_str().unwrap_or_default();
    let suffix: String = safe_encode(&super::util::fnv32a(uid.as_bytes()).to_string())
        .chars()
        .take(5)
        .collect();
    format!("{}-{suffix}", svc["metadata"]["name"].as_str().unwrap_or_default())
}

/// Watches Services and the pods they select.
pub fn controller(ctx: &Context) -> Controller<NsName, EndpointsController> {
    let cache = ctx.cache.clone();
    Controller {
        name: "endpoints",
        reconciler: EndpointsController { ctx: ctx.clone() },
        workers: 2,
        triggers: vec![
            watches("services", ns_name),
            watches("pods", move |p: &Value| services_selecting(&cache, p)),
            // Endpoints someone declared (ours change with the pods and need no second look).
            watches("endpoints", |e: &Value| {
                if e["metadata"]["labels"][MANAGED] == "true" {
                    Vec::new()
                } else {
                    ns_name(e)
                }
            }),
        ],
    }
}

impl Reconciler<NsName> for EndpointsController {
    type Error = ObjectError;

    async fn reconcile(&self, (ns, name): NsName) -> Result<Action, ObjectError> {
        let ctx = &self.ctx;
        ctx.caught_up().await;
        let ep_kind = kind("endpoints");
        let Some(svc) = ctx.cache.get(kind("services"), &ns, &name) else {
            if ctx
                .cache
                .get(ep_kind, &ns, &name)
                .is_some_and(|e| e.object["metadata"]["labels"][MANAGED] == "true")
            {
                match ctx.objects.delete(ep_kind, &ns, &name, None).await {
                    Ok(_) | Err(ObjectError::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            return Ok(Action::AwaitChange);
        };
        let svc = (*svc.object).clone();
        let selector = &svc["spec"]["selector"];
        if selector.as_object().is_none_or(|s| s.is_empty()) {
            // Endpoints of a selector-less Service are not ours; their slices are.
            mirror(ctx, &svc).await?;
            return Ok(Action::AwaitChange);
        }
        let svc_ports = svc["spec"]["ports"].as_array().cloned().unwrap_or_default();
        let (pods, _) = ctx.cache.list(kind("pods"), Some(&ns));
        // Group addresses by the ports they resolve to (named ports may differ per pod).
        let mut subsets: BTreeMap<String, (Vec<Value>, Vec<Value>, Vec<Value>)> = BTreeMap::new();
        let mut slice_endpoints = Vec::new();
        let mut slice_ports: Option<Vec<Value>> = None;
        for pe in &pods {
            let pod = &pe.object;
            if !map_selects(selector, pod) {
                continue;
            }
            let Some(ip) = pod["status"]["podIP"].as_str().filter(|i| !i.is_empty()) else {
                continue;
            };
            if matches!(pod["status"]["phase"].as_str(), Some("Succeeded" | "Failed")) {
                continue;
            }
            let ports: Vec<Value> = svc_ports
                .iter()
                .filter_map(|p| {
                    let port = p["port"].as_i64()?;
                    let target = resolve_port(&p["targetPort"], port, pod)?;
                    let mut ep = json!({"port": target, "protocol": p["protocol"].as_str().unwrap_or("TCP")});
                    if let Some(n) = p["name"].as_str() {
                        ep["name"] = json!(n);
                    }
                    Some(ep)
                })
                .collect();
            let terminating = is_terminating(pod);
            // A Service may publish pods before they are ready (a StatefulSet's peers finding
            // each other while they start).
            let ready = (is_ready(pod) || svc["spec"]["publishNotReadyAddresses"] == true) && !terminating;
            let mut address = json!({
                "ip": ip,
                "nodeName": pod["spec"]["nodeName"],
                "targetRef": {"kind": "Pod", "name": pod["metadata"]["name"], "namespace": ns, "uid": pod["metadata"]["uid"]},
            });
            // A pod whose subdomain is this Service is named under it in DNS by its hostname.
            let hostname = pod["spec"]["hostname"]
                .as_str()
                .filter(|h| !h.is_empty() && pod["spec"]["subdomain"] == name.as_str());
            if let Some(h) = hostname {
                address["hostname"] = json!(h);
            }
            let entry = subsets
                .entry(serde_json::to_string(&ports).unwrap_or_default())
                .or_insert_with(|| (ports.clone(), Vec::new(), Vec::new()));
            if ready {
                entry.1.push(address)
            } else {
                entry.2.push(address)
            }
            slice_ports.get_or_insert(ports);
            let mut endpoint = json!({
                "addresses": [ip],
                "conditions": {"ready": ready, "serving": is_ready(pod), "terminating": terminating},
                "nodeName": pod["spec"]["nodeName"],
                "targetRef": {"kind": "Pod", "name": pod["metadata"]["name"], "namespace": ns, "uid": pod["metadata"]["uid"]},
            });
            if let Some(h) = hostname {
                endpoint["hostname"] = json!(h);
            }
            slice_endpoints.push(endpoint);
        }
        let subsets: Vec<Value> = subsets
            .into_values()
            .map(|(ports, ready, not_ready)| {
                let mut s = json!({"ports": ports});
                if !ready.is_empty() {
                    s["addresses"] = Value::Array(ready);
                }
                if !not_ready.is_empty() {
                    s["notReadyAddresses"] = Value::Array(not_ready);
                }
                s
            })
            .collect();
        let mut labels = svc["metadata"]["labels"].as_object().cloned().unwrap_or_default();
        labels.insert(MANAGED.into(), json!("true"));
        let endpoints = json!({"metadata": {"name": name, "namespace": ns, "labels": labels}, "subsets": subsets});
        upsert(ctx, ep_kind, &ns, &name, endpoints, |cur, new| {
            cur["subsets"] == new["subsets"] && cur["metadata"]["labels"] == new["metadata"]["labels"]
        })
        .await?;

        let slice_kind = kind("endpointslices");
        let sname = slice_name(&svc);
        let slice = json!({
            "metadata": {
                "name": sname, "namespace": ns,
                "labels": {"kubernetes.io/service-name": name, "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.capstan.dev"},
                "ownerReferences": [owner_ref(&svc)],
            },
            "addressType": "IPv4",
            "endpoints": slice_endpoints,
            "ports": slice_ports.unwrap_or_default(),
        });
        upsert(ctx, slice_kind, &ns, &sname, slice, |cur, new| {
            cur["endpoints"] == new["endpoints"] && cur["ports"] == new["ports"]
        })
        .await?;
        Ok(Action::AwaitChange)
    }
}

/// The label on the Endpoints this controller writes.
const MANAGED: &str = "endpoints.capstan.dev/managed";
/// Who manages a mirrored slice (Kubernetes' own name for the mirroring controller).
const MIRRORED_BY: &str = "endpointslicemirroring-controller.k8s.io";

/// A selector-less Service's declared Endpoints as EndpointSlices, one per subset (none when it
/// has no Endpoints, or they say `endpointslice.kubernetes.io/skip-mirror: "true"`); slices
/// mirrored before and no longer wanted go.
async fn mirror(ctx: &Context, svc: &Value) -> Result<(), ObjectError> {
    let ns = svc["metadata"]["namespace"].as_str().unwrap_or_default();
    let name = svc["metadata"]["name"].as_str().unwrap_or_default();
    let slice_kind = kind("endpointslices");
    let endpoints = ctx.cache.get(kind("endpoints"), ns, name).map(|e| (*e.object).clone());
    let skip = endpoints
        .as_ref()
        .is_some_and(|e| e["metadata"]["labels"]["endpointslice.kubernetes.io/skip-mirror"] == "true");
    let mut wanted = Vec::new();
    for (i, subset) in endpoints
        .iter()
        .filter(|_| !skip)
        .flat_map(|e| e["subsets"].as_array().cloned().unwrap_or_default())
        .enumerate()
    {
        let endpoint = |a: &Value, ready: bool| {
            let mut e = json!({
                "addresses": [a["ip"]],
                "conditions": {"ready": ready, "serving": ready, "terminating": false},
                "nodeName": a["nodeName"],
                "targetRef": a["targetRef"],
            });
            if let Some(h) = a.get("hostname") {
                e["hostname"] = h.clone();
            }
            e
        };
        let mut list: Vec<Value> = subset["addresses"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| endpoint(a, true))
            .collect();
        list.extend(
            subset["notReadyAddresses"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|a| endpoint(a, false)),
        );
        let ports: Vec<Value> = subset["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| json!({"name": p["name"], "port": p["port"], "protocol": p["protocol"].as_str().unwrap_or("TCP")}))
            .collect();
        let sname = format!("{}-m{i}", slice_name(svc));
        let slice = json!({
            "metadata": {
                "name": sname, "namespace": ns,
                "labels": {"kubernetes.io/service-name": name, "endpointslice.kubernetes.io/managed-by": MIRRORED_BY},
                "ownerReferences": [owner_ref(svc)],
            },
            "addressType": "IPv4",
            "endpoints": list,
            "ports": ports,
        });
        upsert(ctx, slice_kind, ns, &sname, slice, |cur, new| {
            cur["endpoints"] == new["endpoints"] && cur["ports"] == new["ports"]
        })
        .await?;
        wanted.push(sname);
    }
    let (slices, _) = ctx.cache.list(slice_kind, Some(ns));
    for s in slices.iter().filter(|s| {
        let labels = &s.object["metadata"]["labels"];
        labels["kubernetes.io/service-name"] == name && labels["endpointslice.kubernetes.io/managed-by"] == MIRRORED_BY
    }) {
        if !wanted.contains(&s.name) {
            match ctx.objects.delete(slice_kind, ns, &s.name, None).await {
                Ok(_) | Err(ObjectError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

/// Creates `object`, or replaces the current one unless `same` says nothing changed.
pub(super) async fn upsert(
    ctx: &Context,
    kind: &'static capstan_api::KindInfo,
    ns: &str,
    name: &str,
    object: Value,
    same: impl Fn(&Value, &Value) -> bool,
) -> Result<(), ObjectError> {
    match ctx.objects.get(kind, ns, name)? {
        None => match ctx.objects.create(kind, object).await {
            Ok(_) | Err(ObjectError::AlreadyExists { .. }) => Ok(()),
            Err(e) => Err(e),
        },
        Some(cur) if same(&cur, &object) => Ok(()),
        Some(cur) => {
            let mut next = object;
            next["metadata"]["resourceVersion"] = cur["metadata"]["resourceVersion"].clone();
            ctx.objects.update(kind, next, false).await.map(|_| ())
        }
    }
}
