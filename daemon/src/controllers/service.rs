//! The Service controller: gives every Service a ClusterIP from the service range (or honours a
//! fixed one, refusing one outside the range or already taken, with a condition and an event)
//! and node ports (30000–32767) to NodePort and LoadBalancer ports. The allocation lives in the
//! Service itself, so it survives restarts; one worker, reading a cache that has caught up with
//! its own writes, never hands out an address twice.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use capstan_runtime::{Action, Reconciler};
use serde_json::{Value, json};

use super::util::NsName;
use super::{Controller, ns_name, watches};
use crate::context::{Context, kind};
use crate::events::{EventType, Recorder};
use crate::objects::ObjectError;

pub const NODE_PORT_RANGE: std::ops::RangeInclusive<i64> = 30000..=32767;

pub struct ServiceController {
    pub ctx: Context,
    pub events: Recorder,
}

impl ServiceController {
    fn used(&self, except: &NsName) -> (HashSet<Ipv4Addr>, HashSet<i64>) {
        let (svcs, _) = self.ctx.cache.list(kind("services"), None);
        let mut ips = HashSet::new();
        let mut ports = HashSet::new();
        for s in svcs
            .iter()
            .filter(|e| (e.namespace.as_str(), e.name.as_str()) != (except.0.as_str(), except.1.as_str()))
        {
            if let Some(ip) = s.object["spec"]["clusterIP"].as_str().and_then(|i| i.parse().ok()) {
                ips.insert(ip);
            }
            for p in s.object["spec"]["ports"].as_array().into_iter().flatten() {
                if let Some(np) = p["nodePort"].as_i64() {
                    ports.insert(np);
                }
            }
        }
        (ips, ports)
    }

    /// The lowest free address of the range above the reserved ones (.1 kubernetes, .10 DNS).
    fn free_ip(&self, used: &HashSet<Ipv4Addr>) -> Option<Ipv4Addr> {
        let range = self.ctx.settings.service_cidr;
        (11..range.size().saturating_sub(1))
            .filter_map(|i| range.nth(i))
            .find(|ip| !used.contains(ip))
    }
}

/// Watches Services. One worker: address and port allocations must not race each other.
pub fn controller(ctx: &Context) -> Controller<NsName, ServiceController> {
    Controller {
        name: "service",
        reconciler: ServiceController {
            ctx: ctx.clone(),
            events: Recorder::new(ctx.objects.clone(), "service-controller", None),
        },
        workers: 1,
        triggers: vec![watches("services", ns_name)],
    }
}

impl Reconciler<NsName> for ServiceController {
    type Error = ObjectError;

    async fn reconcile(&self, key: NsName) -> Result<Action, ObjectError> {
        let ctx = &self.ctx;
        ctx.caught_up().await;
        let Some(svc) = ctx.cache.get(kind("services"), &key.0, &key.1) else {
            return Ok(Action::AwaitChange);
        };
        let svc = (*svc.object).clone();
        let spec = &svc["spec"];
        if spec["type"] == "ExternalName" {
            return Ok(Action::AwaitChange);
        }
        let (used_ips, used_ports) = self.used(&key);
        let mut problem: Option<(&str, String)> = None;
        let mut new_ip = None;
        match spec["clusterIP"].as_str() {
            Some("None") => {}
            None | Some("") => match self.free_ip(&used_ips) {
                Some(ip) => new_ip = Some(ip),
                None => problem = Some(("ClusterIPRangeFull", "no free address is left in the service range".into())),
            },
            Some(fixed) => match fixed.parse::<Ipv4Addr>() {
                Ok(ip) if !ctx.settings.service_cidr.contains(ip) => {
                    problem = Some((
                        "ClusterIPOutOfRange",
                        format!("spec.clusterIP {ip} is not in the service range {}", ctx.settings.service_cidr),
                    ));
                }
                Ok(ip) if used_ips.contains(&ip) => {
                    problem = Some((
                        "ClusterIPAlreadyAllocated",
                        format!("spec.clusterIP {ip} is already used by another Service"),
                    ))
                }
                Ok(_) => {}
                Err(_) => problem = Some(("ClusterIPInvalid", format!("spec.clusterIP {fixed:?} is not an IPv4 address"))),
            },
        }
        let wants_node_ports = matches!(spec["type"].as_str(), Some("NodePort" | "LoadBalancer"));
        let mut taken = used_ports;
        let mut ports = spec["ports"].as_array().cloned().unwrap_or_default();
        let mut ports_changed = false;
        if wants_node_ports {
            for p in &mut ports {
                match p["nodePort"].as_i64() {
                    Some(np) if taken.contains(&np) => {
                        problem = Some((
                            "NodePortAlreadyAllocated",
                            format!("node port {np} is already used by another Service"),
                        ))
                    }
                    Some(np) if !NODE_PORT_RANGE.contains(&np) => {
                        problem = Some(("NodePortOutOfRange", format!("node port {np} is not in 30000-32767")))
                    }
                    Some(np) => {
                        taken.insert(np);
                    }
                    None => match NODE_PORT_RANGE.clone().find(|n| !taken.contains(n)) {
                        Some(np) => {
                            taken.insert(np);
                            p["nodePort"] = json!(np);
                            ports_changed = true;
                        }
                        None => problem = Some(("NodePortRangeFull", "no free node port is left".into())),
                    },
                }
            }
        }
        let name = key.1.clone();
        if new_ip.is_some() || ports_changed {
            ctx.objects
                .modify(kind("services"), &key.0, &name, false, |s| {
                    if let Some(ip) = new_ip {
                        s["spec"]["clusterIP"] = json!(ip.to_string());
                        s["spec"]["clusterIPs"] = json!([ip.to_string()]);
                        s["spec"]["ipFamilies"] = json!(["IPv4"]);
                        s["spec"]["ipFamilyPolicy"] = json!("SingleStack");
                    }
                    if ports_changed {
                        s["spec"]["ports"] = Value::Array(ports.clone());
                    }
                    true
                })
                .await?;
        }
        let condition = match &problem {
            Some((reason, message)) => {
                json!([{"type": "Allocated", "status": "False", "reason": reason, "message": message, "lastTransitionTime": capstan_api::time::now_rfc3339()}])
            }
            None => {
                json!([{"type": "Allocated", "status": "True", "reason": "Allocated", "message": "", "lastTransitionTime": capstan_api::time::now_rfc3339()}])
            }
        };
        let current = svc["status"]["conditions"].as_array().and_then(|c| c.first()).cloned();
        if current.as_ref().map(|c| (&c["status"], &c["reason"])) != Some((&condition[0]["status"], &condition[0]["reason"])) {
            if let Some((reason, message)) = &problem {
                self.events.record(&svc, EventType::Warning, reason, message.clone());
            }
            ctx.objects
                .modify(kind("services"), &key.0, &name, true, |s| {
                    s["status"]["conditions"] = condition.clone();
                    if s["status"]["loadBalancer"].is_null() {
                        s["status"]["loadBalancer"] = json!({});
                    }
                    true
                })
                .await?;
        }
        Ok(Action::AwaitChange)
    }
}
