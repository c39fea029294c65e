//! The Ingress status controller: every Ingress the nodes' ingress serves gets the addresses it
//! answers on (`status.loadBalancer.ingress`: each ready node's InternalIP, as every node
//! listens), and Warning Events for what keeps it from answering: a backend Service or port that
//! does not exist, a host and path an older Ingress holds, a TLS Secret that is missing or holds
//! no valid key pair. The routing itself is capstan-ingress's pure core, shared with the nodes.

use std::sync::Arc;

use base64::Engine;
use capstan_ingress::backends::Backends;
use capstan_ingress::ingresses;
use capstan_ingress::table::Tables;
use capstan_runtime::{Action, Reconciler};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::{Controller, watches};
use crate::cache::Cache;
use crate::context::{Context, kind};
use crate::events::{EventType, Recorder};
use crate::objects::ObjectError;

pub struct IngressController {
    ctx: Context,
    events: Recorder,
}

/// One key for all: whether an Ingress is served, and how, depends on the others (claims),
/// Services, classes, Secrets and nodes; one reconcile builds the report once per burst.
pub fn controller(ctx: &Context) -> Controller<(), IngressController> {
    let all = |plural: &str| watches(plural, |_: &Value| vec![()]);
    Controller {
        name: "ingress",
        reconciler: IngressController {
            ctx: ctx.clone(),
            events: Recorder::new(ctx.objects.clone(), "ingress-controller", None),
        },
        workers: 1,
        triggers: ["ingresses", "ingressclasses", "services", "nodes", "secrets"]
            .into_iter()
            .map(all)
            .collect(),
    }
}

/// Every object of `plural` as the typed `T` (those that do not decode are left out).
pub fn typed<T: DeserializeOwned>(cache: &Cache, plural: &str) -> Vec<T> {
    let (entries, _) = cache.list(kind(plural), None);
    entries
        .iter()
        .filter_map(|e| serde_json::from_value((*e.object).clone()).ok())
        .collect()
}

/// A node's InternalIP.
pub fn internal_ip(node: &Value) -> Option<String> {
    node["status"]["addresses"].as_array()?.iter().find(|a| a["type"] == "InternalIP")?["address"]
        .as_str()
        .map(str::to_owned)
}

/// The InternalIP of every ready node, sorted.
pub fn node_addresses(nodes: &[Arc<Value>]) -> Vec<String> {
    let mut out: Vec<String> = nodes
        .iter()
        .filter(|n| {
            n["status"]["conditions"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
        })
        .filter_map(|n| internal_ip(n))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// What is wrong with the TLS Secret `name` in `namespace`, if anything.
pub fn tls_problem(cache: &Cache, namespace: &str, name: &str) -> Option<String> {
    let Some(secret) = cache.get(kind("secrets"), namespace, name) else {
        return Some(format!("TLS secret {namespace}/{name} does not exist"));
    };
    let field = |k: &str| {
        let text = secret.object["data"][k].as_str().unwrap_or_default();
        let bytes = base64::engine::general_purpose::STANDARD.decode(text).unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    capstan_ingress::tls::certified_key(&field("tls.crt"), &field("tls.key"))
        .err()
        .map(|e| format!("TLS secret {namespace}/{name} cannot be served: {e}"))
}

impl Reconciler<()> for IngressController {
    type Error = ObjectError;

    async fn reconcile(&self, _: ()) -> Result<Action, ObjectError> {
        let ctx = &self.ctx;
        ctx.caught_up().await;
        let ingresses: Vec<Ingress> = typed(&ctx.cache, "ingresses");
        let classes: Vec<IngressClass> = typed(&ctx.cache, "ingressclasses");
        let services: Vec<Service> = typed(&ctx.cache, "services");
        let mut backends = Backends::new(&services, []);
        let ports = ingresses::IngressPorts {
            http: Some(80),
            https: Some(443),
        };
        let report = ingresses::add(&mut Tables::default(), ports, &ingresses, &classes, &mut backends);
        let (nodes, _) = ctx.cache.list(kind("nodes"), None);
        let nodes: Vec<Arc<Value>> = nodes.iter().map(|e| e.object.clone()).collect();
        let addresses: Vec<Value> = node_addresses(&nodes).into_iter().map(|ip| json!({"ip": ip})).collect();
        for id in &report.served {
            let (ns, name) = id.split_once('/').unwrap_or_default();
            let Some(entry) = ctx.cache.get(kind("ingresses"), ns, name) else {
                continue;
            };
            let object = &entry.object;
            for m in report.missing.iter().filter(|m| m.ingress == *id) {
                self.events.record(object, EventType::Warning, "BackendNotFound", &m.message);
            }
            for c in report.conflicts.iter().filter(|c| c.ingress == *id) {
                self.events.record(
                    object,
                    EventType::Warning,
                    "HostPathConflict",
                    format!(
                        "host {:?} path {} is held by Ingress {} (the older claim wins)",
                        c.host, c.path, c.holder
                    ),
                );
            }
            let secrets = object["spec"]["tls"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|t| t["secretName"].as_str());
            for secret in secrets {
                if let Some(problem) = tls_problem(&ctx.cache, ns, secret) {
                    self.events.record(object, EventType::Warning, "InvalidTLSSecret", problem);
                }
            }
            ctx.objects
                .merge_status(kind("ingresses"), object, &json!({"loadBalancer": {"ingress": addresses}}))
                .await?;
        }
        Ok(Action::AwaitChange)
    }
}
