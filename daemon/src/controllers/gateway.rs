//! The Gateway API status controller: the conditions of Capstan's GatewayClasses, of their
//! Gateways and listeners (with the nodes' addresses, every node serving every listener), and of
//! each HTTPRoute under each of Capstan's Gateways it names — from the same pure core the nodes
//! route with (capstan-ingress's `gateway`), plus the TLS Secrets' contents, which only the
//! daemon reads.

use std::sync::Arc;

use capstan_api::gateway::{Gateway, GatewayClass, HTTPRoute, ReferenceGrant};
use capstan_ingress::backends::Backends;
use capstan_ingress::gateway::{self, Cond};
use capstan_ingress::table::Tables;
use capstan_runtime::{Action, Reconciler};
use k8s_openapi::api::core::v1::{Namespace, Service};
use serde_json::{Value, json};

use super::ingress::typed;
use super::{Controller, watches};
use crate::context::{Context, kind};
use crate::objects::ObjectError;

pub struct GatewayController {
    ctx: Context,
}

/// One key for all: a route's status depends on every Gateway and the other way round.
pub fn controller(ctx: &Context) -> Controller<(), GatewayController> {
    let all = |plural: &str| watches(plural, |_: &Value| vec![()]);
    Controller {
        name: "gateway",
        reconciler: GatewayController { ctx: ctx.clone() },
        workers: 1,
        triggers: [
            "gatewayclasses",
            "gateways",
            "httproutes",
            "referencegrants",
            "services",
            "namespaces",
            "nodes",
            "secrets",
        ]
        .into_iter()
        .map(all)
        .collect(),
    }
}

/// Conditions as the API writes them: a transition time kept while the status stays the same.
fn conditions(conds: &[Cond], current: &Value, generation: &Value) -> Value {
    let now = jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    Value::Array(
        conds
            .iter()
            .map(|c| {
                let status = if c.status { "True" } else { "False" };
                let since = current
                    .as_array()
                    .and_then(|cs| cs.iter().find(|o| o["type"] == c.type_ && o["status"] == status))
                    .map(|o| o["lastTransitionTime"].clone())
                    .unwrap_or_else(|| json!(now));
                json!({"type": c.type_, "status": status, "reason": c.reason, "message": c.message,
                       "observedGeneration": generation, "lastTransitionTime": since})
            })
            .collect(),
    )
}

impl Reconciler<()> for GatewayController {
    type Error = ObjectError;

    async fn reconcile(&self, _: ()) -> Result<Action, ObjectError> {
        let ctx = &self.ctx;
        ctx.caught_up().await;
        let cache = &ctx.cache;
        let classes: Vec<GatewayClass> = typed(cache, "gatewayclasses");
        let gateways: Vec<Gateway> = typed(cache, "gateways");
        let routes: Vec<HTTPRoute> = typed(cache, "httproutes");
        let grants: Vec<ReferenceGrant> = typed(cache, "referencegrants");
        let namespaces: Vec<Namespace> = typed(cache, "namespaces");
        let services: Vec<Service> = typed(cache, "services");
        let mut backends = Backends::new(&services, []);
        let mut report = gateway::add(
            &mut Tables::default(),
            &classes,
            &gateways,
            &routes,
            &grants,
            &namespaces,
            &mut backends,
        );

        for name in &report.classes {
            let Some(e) = cache.get(kind("gatewayclasses"), "", name) else {
                continue;
            };
            let conds = [Cond {
                type_: "Accepted",
                status: true,
                reason: "Accepted",
                message: "served by every node's ingress".into(),
            }];
            let status = json!({"conditions": conditions(&conds, &e.object["status"]["conditions"], &e.object["metadata"]["generation"])});
            ctx.objects.merge_status(kind("gatewayclasses"), &e.object, &status).await?;
        }

        let (nodes, _) = cache.list(kind("nodes"), None);
        let nodes: Vec<Arc<Value>> = nodes.iter().map(|e| e.object.clone()).collect();
        let addresses = super::ingress::node_addresses(&nodes);
        // Every node's address, ready or not: an address asked for is one of them or none.
        let all_node_ips: Vec<String> = nodes.iter().filter_map(|n| super::ingress::internal_ip(n)).collect();
        for g in &gateways {
            let (ns, name) = (
                g.metadata.namespace.clone().unwrap_or_default(),
                g.metadata.name.clone().unwrap_or_default(),
            );
            let Some(state) = report.gateways.get_mut(&format!("{ns}/{name}")) else {
                continue;
            };
            let Some(e) = cache.get(kind("gateways"), &ns, &name) else {
                continue;
            };
            // A certificate Secret must hold a valid key pair.
            for (listener, l) in g.spec.listeners.iter().zip(state.listeners.iter_mut()) {
                let Some(r) = listener
                    .tls
                    .as_ref()
                    .and_then(|t| t.certificate_refs.as_ref())
                    .and_then(|c| c.first())
                else {
                    continue;
                };
                let secret_ns = r.namespace.clone().unwrap_or_else(|| ns.clone());
                if let Some(problem) = super::ingress::tls_problem(cache, &secret_ns, &r.name)
                    && let Some(c) = l.conditions.iter_mut().find(|c| c.type_ == "ResolvedRefs" && c.status)
                {
                    *c = Cond {
                        type_: "ResolvedRefs",
                        status: false,
                        reason: "InvalidCertificateRef",
                        message: problem,
                    };
                }
            }
            // Addresses asked for: only the nodes' own can be given.
            let mut shown = addresses.clone();
            if let Some(wanted) = g.spec.addresses.as_deref().filter(|w| !w.is_empty()) {
                match requested_addresses(wanted, &all_node_ips) {
                    Ok(given) => shown = given,
                    Err(refused) => {
                        shown.clear();
                        state.conditions.retain(|c| c.type_ != refused.type_ && c.type_ != "Programmed");
                        if refused.type_ == "Accepted" {
                            state.conditions.push(Cond {
                                type_: "Programmed",
                                status: false,
                                reason: "Invalid",
                                message: "the Gateway is not accepted".into(),
                            });
                        }
                        state.conditions.push(refused);
                    }
                }
            }
            let current = &e.object["status"];
            let generation = &e.object["metadata"]["generation"];
            let listeners: Vec<Value> = state
                .listeners
                .iter()
                .map(|l| {
                    let before = current["listeners"]
                        .as_array()
                        .and_then(|ls| ls.iter().find(|o| o["name"] == l.name.as_str()))
                        .map(|o| o["conditions"].clone())
                        .unwrap_or(Value::Null);
                    json!({"name": l.name, "attachedRoutes": l.attached_routes,
                           "supportedKinds": [{"group": capstan_api::gateway::GROUP, "kind": "HTTPRoute"}],
                           "conditions": conditions(&l.conditions, &before, generation)})
                })
                .collect();
            let shown: Vec<Value> = shown.into_iter().map(|ip| json!({"type": "IPAddress", "value": ip})).collect();
            let status = json!({
                "addresses": shown,
                "conditions": conditions(&state.conditions, &current["conditions"], generation),
                "listeners": listeners,
            });
            ctx.objects.merge_status(kind("gateways"), &e.object, &status).await?;
        }

        for (id, parents) in &report.routes {
            let (ns, name) = id.split_once('/').unwrap_or_default();
            let Some(e) = cache.get(kind("httproutes"), ns, name) else {
                continue;
            };
            let current = &e.object["status"]["parents"];
            let generation = &e.object["metadata"]["generation"];
            // Other controllers' entries stay as they are.
            let mut entries: Vec<Value> = current
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| p["controllerName"] != gateway::CONTROLLER)
                .cloned()
                .collect();
            for p in parents {
                let parent_ref = serde_json::to_value(&p.parent_ref).unwrap_or_default();
                let before = current
                    .as_array()
                    .and_then(|ps| ps.iter().find(|o| o["parentRef"] == parent_ref))
                    .map(|o| o["conditions"].clone())
                    .unwrap_or(Value::Null);
                entries.push(json!({"parentRef": parent_ref, "controllerName": gateway::CONTROLLER,
                                    "conditions": conditions(&p.conditions, &before, generation)}));
            }
            ctx.objects
                .merge_status(kind("httproutes"), &e.object, &json!({"parents": entries}))
                .await?;
        }
        Ok(Action::AwaitChange)
    }
}

/// A Gateway's `spec.addresses` against the nodes' addresses (every node serves every Gateway on
/// its own address, so those are all that can be given): the addresses to report, or the
/// condition saying why not — Accepted false for a type other than `IPAddress`, Programmed false
/// for an address no node has (the Gateway API's reasons).
fn requested_addresses(wanted: &[capstan_api::gateway::GatewayAddress], node_ips: &[String]) -> Result<Vec<String>, Cond> {
    if let Some(t) = wanted.iter().filter_map(|a| a.type_.as_deref()).find(|t| *t != "IPAddress") {
        return Err(Cond {
            type_: "Accepted",
            status: false,
            reason: "UnsupportedAddress",
            message: format!("address type {t:?} is not supported: only IPAddress, one of the nodes' addresses"),
        });
    }
    let missing: Vec<&str> = wanted
        .iter()
        .map(|a| a.value.as_str())
        .filter(|v| !node_ips.iter().any(|ip| ip == v))
        .collect();
    if !missing.is_empty() {
        return Err(Cond {
            type_: "Programmed",
            status: false,
            reason: "AddressNotAssigned",
            message: format!(
                "{} is not the address of any node: a Gateway is served on the nodes' own addresses ({})",
                missing.join(", "),
                node_ips.join(", ")
            ),
        });
    }
    Ok(wanted.iter().map(|a| a.value.clone()).collect())
}

#[cfg(test)]
mod tests {
    use capstan_api::gateway::GatewayAddress;

    use super::*;

    fn at(type_: Option<&str>, value: &str) -> GatewayAddress {
        GatewayAddress {
            type_: type_.map(str::to_owned),
            value: value.into(),
        }
    }

    #[test]
    fn only_the_nodes_own_addresses_can_be_asked_for() {
        let nodes = ["10.0.0.1".to_owned(), "10.0.0.2".to_owned()];
        assert_eq!(requested_addresses(&[at(None, "10.0.0.2")], &nodes).unwrap(), ["10.0.0.2"]);
        let refused = requested_addresses(&[at(Some("IPAddress"), "10.0.0.1"), at(None, "192.0.2.7")], &nodes).unwrap_err();
        assert_eq!(
            (refused.type_, refused.status, refused.reason),
            ("Programmed", false, "AddressNotAssigned")
        );
        assert!(
            refused.message.starts_with("192.0.2.7 is not the address of any node"),
            "{}",
            refused.message
        );
        let refused = requested_addresses(&[at(Some("Hostname"), "gw.example")], &nodes).unwrap_err();
        assert_eq!((refused.type_, refused.reason), ("Accepted", "UnsupportedAddress"));
    }
}
