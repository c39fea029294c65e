//! The proxy's pure core: Services and their EndpointSlices in, the virtual services the kernel
//! should hold out — one per (address, protocol, port), each with the endpoints its traffic
//! policy lets it reach.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    fn parse(s: Option<&str>) -> Option<Protocol> {
        match s.unwrap_or("TCP") {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            _ => None, // SCTP: not proxied
        }
    }

    /// The name nftables and `/etc/protocols` use.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where traffic to a service is caught.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Frontend {
    /// The ClusterIP and the service port.
    ClusterIp(Ipv4Addr, u16),
    /// A port on every address of the node.
    NodePort(u16),
}

/// One real server: a ready endpoint's address and target port.
pub type Backend = (Ipv4Addr, u16);

/// Which endpoints a frontend's traffic may reach: Kubernetes' `internalTrafficPolicy` (for a
/// ClusterIP) and `externalTrafficPolicy` (for a node port).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Policy {
    /// Endpoints anywhere in the cluster (the `backends`).
    #[default]
    Cluster,
    /// Only this node's endpoints (the `backends`); with none here but some elsewhere, traffic
    /// is dropped. A node port keeps its clients' addresses (no masquerade), but traffic from
    /// pods and from the node itself goes to `cluster`, the endpoints anywhere (kube-proxy's
    /// short cut: in-cluster clients never depend on where the endpoints run).
    Local { cluster: Vec<Backend> },
}

/// One virtual service: a frontend, how it spreads, and the endpoints behind it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VirtualService {
    pub frontend: Frontend,
    pub protocol: Protocol,
    /// `namespace/name:port` of the Service port, for names and logs.
    pub service: String,
    /// sessionAffinity ClientIP: how long a client sticks to its endpoint, in seconds.
    pub affinity: Option<u32>,
    /// The endpoints traffic goes to, sorted: the ready ones, or the serving terminating ones
    /// when none is ready (as kube-proxy does). Empty under the Cluster policy: the service has
    /// none and its traffic is rejected.
    pub backends: Vec<Backend>,
    pub policy: Policy,
}

impl VirtualService {
    /// The identity of the virtual service in the kernel.
    pub fn key(&self) -> (Frontend, Protocol) {
        (self.frontend, self.protocol)
    }

    /// Every endpoint the frontend may send to, whatever the client.
    pub fn all_backends(&self) -> impl Iterator<Item = &Backend> {
        let cluster = match &self.policy {
            Policy::Cluster => &[][..],
            Policy::Local { cluster } => cluster,
        };
        self.backends.iter().chain(cluster)
    }

    /// Whether the service has no endpoint anywhere (its traffic is rejected).
    pub fn has_no_endpoints(&self) -> bool {
        self.all_backends().next().is_none()
    }
}

/// Kubernetes' default ClientIP affinity timeout (3 hours).
pub const DEFAULT_AFFINITY_SECONDS: u32 = 10_800;

/// The virtual services for `services`, with endpoints from `slices` (any order, any namespaces),
/// as the proxy on node `node` programs them (its endpoints are the local ones; `None`: no node,
/// every policy acts as Cluster). Services without a ClusterIP (headless, ExternalName, not yet
/// allocated) get none; IPv6 is ignored. The result is sorted by frontend and protocol.
pub fn desired<'a>(
    services: impl IntoIterator<Item = &'a Service>,
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    node: Option<&str>,
) -> Vec<VirtualService> {
    let by_service = by_service(slices);
    let mut out = Vec::new();
    for svc in services {
        let Some(spec) = &svc.spec else { continue };
        let ns = svc.metadata.namespace.as_deref().unwrap_or("default");
        let name = svc.metadata.name.as_deref().unwrap_or_default();
        let ty = spec.type_.as_deref().unwrap_or("ClusterIP");
        if ty == "ExternalName" {
            continue;
        }
        let cluster_ip = spec.cluster_ip.as_deref().and_then(|ip| ip.parse::<Ipv4Addr>().ok());
        let Some(cluster_ip) = cluster_ip else { continue };
        let affinity = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
            spec.session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .and_then(|t| u32::try_from(t).ok())
                .filter(|t| *t > 0)
                .unwrap_or(DEFAULT_AFFINITY_SECONDS)
        });
        let slices = by_service.get(&(ns, name)).map(Vec::as_slice).unwrap_or_default();
        for port in spec.ports.iter().flatten() {
            let Some(protocol) = Protocol::parse(port.protocol.as_deref()) else {
                continue;
            };
            let Ok(number) = u16::try_from(port.port) else { continue };
            let endpoints = port_endpoints(slices, port.name.as_deref(), protocol);
            let cluster = usable(&endpoints, |_| true);
            let policy = |local: Option<&str>| match (local, node) {
                (Some("Local"), Some(node)) => {
                    let here = usable(&endpoints, |e| e.node == Some(node));
                    (here, Policy::Local { cluster: cluster.clone() })
                }
                _ => (cluster.clone(), Policy::Cluster),
            };
            let label = format!("{ns}/{name}:{}", port.name.as_deref().unwrap_or(&number.to_string()));
            let mut push = |frontend, (backends, policy)| {
                out.push(VirtualService {
                    frontend,
                    protocol,
                    service: label.clone(),
                    affinity,
                    backends,
                    policy,
                })
            };
            push(
                Frontend::ClusterIp(cluster_ip, number),
                policy(spec.internal_traffic_policy.as_deref()),
            );
            if matches!(ty, "NodePort" | "LoadBalancer")
                && let Some(node_port) = port.node_port.and_then(|p| u16::try_from(p).ok()).filter(|p| *p > 0)
            {
                push(Frontend::NodePort(node_port), policy(spec.external_traffic_policy.as_deref()));
            }
        }
    }
    out.sort_by_key(VirtualService::key);
    // Two Services claiming one frontend (a conflict the allocator should have refused): the
    // first by name wins, deterministically.
    out.dedup_by_key(|v| v.key());
    out
}

/// The built-in `kube-dns` Service, whose endpoints are each host's own DNS server.
pub const DNS_SERVICE: (&str, &str) = ("kube-system", "kube-dns");

/// Points the `kube-dns` ports that have no endpoints at this host's DNS server (port for port:
/// it answers UDP and TCP on one port).
pub fn with_local_dns(mut services: Vec<VirtualService>, dns: std::net::SocketAddrV4) -> Vec<VirtualService> {
    let prefix = format!("{}/{}:", DNS_SERVICE.0, DNS_SERVICE.1);
    for vs in &mut services {
        if vs.service.starts_with(&prefix) && vs.backends.is_empty() {
            vs.backends = vec![(*dns.ip(), dns.port())];
        }
    }
    services
}

/// The IPv4 EndpointSlices by the (namespace, name) of their Service.
pub fn by_service<'a>(slices: impl IntoIterator<Item = &'a EndpointSlice>) -> BTreeMap<(&'a str, &'a str), Vec<&'a EndpointSlice>> {
    let mut out: BTreeMap<(&str, &str), Vec<&EndpointSlice>> = BTreeMap::new();
    for s in slices {
        if s.address_type != "IPv4" {
            continue;
        }
        let ns = s.metadata.namespace.as_deref().unwrap_or("default");
        if let Some(name) = s.metadata.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL)) {
            out.entry((ns, name.as_str())).or_default().push(s);
        }
    }
    out
}

/// The endpoints (anywhere in the cluster) that TCP traffic to the Service port named
/// `port_name` may use, for proxies that choose the endpoint themselves (the ingress).
pub fn tcp_backends(slices: &[&EndpointSlice], port_name: Option<&str>) -> Vec<Backend> {
    usable(&port_endpoints(slices, port_name, Protocol::Tcp), |_| true)
}

/// One address of an endpoint, with what the proxy needs to choose it.
struct Endpoint<'a> {
    backend: Backend,
    node: Option<&'a str>,
    ready: bool,
    /// Terminating but still serving: used when no endpoint is ready.
    serving_terminating: bool,
}

/// The endpoints of the slice port named `port_name` (a Service port and its slice ports share
/// names; a single unnamed port matches the unnamed slice port).
fn port_endpoints<'a>(slices: &[&'a EndpointSlice], port_name: Option<&str>, protocol: Protocol) -> Vec<Endpoint<'a>> {
    let mut out = Vec::new();
    for slice in slices {
        let port = slice.ports.iter().flatten().find(|p| {
            p.name.as_deref().unwrap_or_default() == port_name.unwrap_or_default()
                && Protocol::parse(p.protocol.as_deref()) == Some(protocol)
        });
        let Some(target) = port.and_then(|p| p.port).and_then(|p| u16::try_from(p).ok()) else {
            continue;
        };
        for ep in &slice.endpoints {
            // Unset conditions: `ready` and `serving` mean true, `terminating` false (the API's
            // contract).
            let c = ep.conditions.as_ref();
            let ready = c.and_then(|c| c.ready).unwrap_or(true);
            let serving = c.and_then(|c| c.serving).unwrap_or(ready);
            let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
            for a in &ep.addresses {
                if let Ok(ip) = a.parse::<Ipv4Addr>() {
                    out.push(Endpoint {
                        backend: (ip, target),
                        node: ep.node_name.as_deref(),
                        ready,
                        serving_terminating: serving && terminating,
                    });
                }
            }
        }
    }
    out
}

/// The endpoints of those `endpoints` that `wanted` takes which traffic may use: the ready ones,
/// or when none is ready the serving terminating ones (so that a rollout's last old pod still
/// answers while it drains); sorted, without duplicates.
fn usable(endpoints: &[Endpoint<'_>], wanted: impl Fn(&Endpoint<'_>) -> bool) -> Vec<Backend> {
    let pick = |f: &dyn Fn(&Endpoint<'_>) -> bool| -> Vec<Backend> {
        let mut out: Vec<Backend> = endpoints.iter().filter(|e| wanted(e) && f(e)).map(|e| e.backend).collect();
        out.sort();
        out.dedup();
        out
    };
    let ready = pick(&|e| e.ready);
    if ready.is_empty() {
        pick(&|e| e.serving_terminating)
    } else {
        ready
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(v: serde_json::Value) -> Service {
        serde_json::from_value(v).unwrap()
    }

    fn slice(v: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(v).unwrap()
    }

    fn web() -> Service {
        svc(json!({"metadata": {"name": "web", "namespace": "shop"},
            "spec": {"type": "NodePort", "clusterIP": "10.96.0.20", "ports": [
                {"name": "http", "port": 80, "targetPort": "http", "nodePort": 30080},
                {"name": "dns", "port": 53, "protocol": "UDP"}]}}))
    }

    fn web_slice() -> EndpointSlice {
        slice(
            json!({"metadata": {"name": "web-1", "namespace": "shop", "labels": {SERVICE_NAME_LABEL: "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}, {"name": "dns", "port": 5353, "protocol": "UDP"}],
            "endpoints": [
                {"addresses": ["10.244.0.7"], "conditions": {"ready": true}},
                {"addresses": ["10.244.0.5"]},
                {"addresses": ["10.244.0.9"], "conditions": {"ready": false, "serving": true, "terminating": true}}]}),
        )
    }

    #[test]
    fn ports_by_name_protocols_and_node_ports() {
        let out = desired([&web()], [&web_slice()], None);
        let frontends: Vec<_> = out.iter().map(|v| (v.frontend, v.protocol)).collect();
        assert_eq!(
            frontends,
            vec![
                (Frontend::ClusterIp("10.96.0.20".parse().unwrap(), 53), Protocol::Udp),
                (Frontend::ClusterIp("10.96.0.20".parse().unwrap(), 80), Protocol::Tcp),
                (Frontend::NodePort(30080), Protocol::Tcp),
            ]
        );
        let ready = vec![("10.244.0.5".parse().unwrap(), 8080), ("10.244.0.7".parse().unwrap(), 8080)];
        assert_eq!(out[1].backends, ready, "not-ready endpoints are left out, the rest sorted");
        assert_eq!(out[2].backends, ready);
        assert_eq!(out[0].backends[0].1, 5353);
        assert_eq!(out[1].service, "shop/web:http");
        assert_eq!(out[1].affinity, None);
    }

    #[test]
    fn services_without_endpoints_stay_with_none() {
        let out = desired([&web()], [], None);
        assert_eq!(out.len(), 3);
        assert!(out.iter().all(|v| v.backends.is_empty()));
    }

    #[test]
    fn affinity_headless_external_name_and_slices_of_other_services() {
        let sticky = svc(json!({"metadata": {"name": "s", "namespace": "a"},
            "spec": {"clusterIP": "10.96.0.30", "sessionAffinity": "ClientIP", "ports": [{"port": 80}]}}));
        let timed = svc(json!({"metadata": {"name": "t", "namespace": "a"},
            "spec": {"clusterIP": "10.96.0.31", "sessionAffinity": "ClientIP",
                     "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}}, "ports": [{"port": 80}]}}));
        let headless = svc(json!({"metadata": {"name": "h", "namespace": "a"}, "spec": {"clusterIP": "None", "ports": [{"port": 80}]}}));
        let external =
            svc(json!({"metadata": {"name": "e", "namespace": "a"}, "spec": {"type": "ExternalName", "externalName": "x.example"}}));
        // A slice of a same-named Service in another namespace, and an unnamed port.
        let other = slice(
            json!({"metadata": {"name": "s-1", "namespace": "b", "labels": {SERVICE_NAME_LABEL: "s"}},
            "addressType": "IPv4", "ports": [{"port": 9}], "endpoints": [{"addresses": ["10.244.1.1"]}]}),
        );
        let own = slice(
            json!({"metadata": {"name": "s-1", "namespace": "a", "labels": {SERVICE_NAME_LABEL: "s"}},
            "addressType": "IPv4", "ports": [{"port": 8080}], "endpoints": [{"addresses": ["10.244.0.3"]}]}),
        );
        let out = desired([&sticky, &timed, &headless, &external], [&other, &own], None);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].affinity, Some(DEFAULT_AFFINITY_SECONDS));
        assert_eq!(out[0].backends, vec![("10.244.0.3".parse().unwrap(), 8080)]);
        assert_eq!(out[1].affinity, Some(60));
        assert!(out[1].backends.is_empty());
    }

    fn addr(ip: &str, port: u16) -> Backend {
        (ip.parse().unwrap(), port)
    }

    /// `web` with the given traffic policies, and endpoints on nodes n1 (ready and terminating)
    /// and n2 (ready).
    fn local_web(internal: &str, external: &str) -> (Service, EndpointSlice) {
        let mut s = web();
        let spec = s.spec.as_mut().unwrap();
        spec.internal_traffic_policy = Some(internal.into());
        spec.external_traffic_policy = Some(external.into());
        let slice = slice(
            json!({"metadata": {"name": "web-1", "namespace": "shop", "labels": {SERVICE_NAME_LABEL: "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080}, {"name": "dns", "port": 5353, "protocol": "UDP"}],
            "endpoints": [
                {"addresses": ["10.244.1.5"], "nodeName": "n1"},
                {"addresses": ["10.244.1.6"], "nodeName": "n1", "conditions": {"ready": false, "serving": true, "terminating": true}},
                {"addresses": ["10.244.2.5"], "nodeName": "n2", "conditions": {"ready": true}}]}),
        );
        (s, slice)
    }

    #[test]
    fn traffic_policies_choose_this_nodes_endpoints_and_keep_the_clusters_beside() {
        let all = vec![addr("10.244.1.5", 8080), addr("10.244.2.5", 8080)];
        let (s, sl) = local_web("Cluster", "Local");
        let out = desired([&s], [&sl], Some("n2"));
        assert_eq!(
            (out[1].backends.clone(), out[1].policy.clone()),
            (all.clone(), Policy::Cluster),
            "ClusterIP"
        );
        let node_port = &out[2];
        assert_eq!(node_port.backends, vec![addr("10.244.2.5", 8080)], "node port: n2's own");
        assert_eq!(node_port.policy, Policy::Local { cluster: all.clone() });
        // A node with no endpoint: none local (dropped), the cluster's still known.
        let out = desired([&s], [&sl], Some("n3"));
        assert!(out[2].backends.is_empty() && !out[2].has_no_endpoints());
        // Internal Local applies to the ClusterIP only.
        let (s, sl) = local_web("Local", "Cluster");
        let out = desired([&s], [&sl], Some("n1"));
        assert_eq!(out[1].backends, vec![addr("10.244.1.5", 8080)]);
        assert_eq!(out[1].policy, Policy::Local { cluster: all.clone() });
        assert_eq!(
            (out[2].backends.clone(), out[2].policy.clone()),
            (all, Policy::Cluster),
            "node port"
        );
        // Without a node name, Local cannot be told apart: Cluster.
        let out = desired([&s], [&sl], None);
        assert!(out.iter().all(|v| v.policy == Policy::Cluster));
    }

    #[test]
    fn serving_terminating_endpoints_are_used_only_when_none_is_ready() {
        let (s, mut sl) = local_web("Local", "Local");
        // n1's ready endpoint goes: its terminating one is all n1 has left, and is used there;
        // the cluster as a whole still has n2's ready one.
        sl.endpoints.remove(0);
        let out = desired([&s], [&sl], Some("n1"));
        assert_eq!(out[1].backends, vec![addr("10.244.1.6", 8080)]);
        assert_eq!(
            out[1].policy,
            Policy::Local {
                cluster: vec![addr("10.244.2.5", 8080)]
            }
        );
        // Nothing ready anywhere: the serving terminating endpoint takes the traffic.
        sl.endpoints.pop();
        let out = desired([&s], [&sl], None);
        assert_eq!(out[1].backends, vec![addr("10.244.1.6", 8080)]);
    }
}
