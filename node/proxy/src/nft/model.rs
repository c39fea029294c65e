//! The ruleset model: the virtual services as the chains, rules, maps and elements of our
//! table ([`Ruleset::build`]), and the settings they follow. Pure.

use capstan_api::cidr::Cidr;
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use sha2::{Digest, Sha256};

use super::elements::{ClusterKey, Entry, PortKey, endpoints_map, node_port_endpoints_map};
use crate::model::{Backend, Frontend, Policy, Protocol, VirtualService};

/// The packet mark that asks the postrouting chain to masquerade (the bit kube-proxy uses).
pub(super) const MASQUERADE_MARK: u32 = 0x4000;

/// How a service's connections are spread over its endpoints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Spread {
    /// Each new connection picks an endpoint at random (kube-proxy's nftables mode).
    #[default]
    Random,
    /// New connections take the endpoints in turn (one counter per endpoint count).
    RoundRobin,
}

/// What the rules need to know about the cluster.
#[derive(Clone, Debug)]
pub struct NftSettings {
    /// Our table (family `ip`); nothing else is touched.
    pub table: String,
    /// Traffic to this range that no service takes is rejected, never routed out.
    pub service_cidr: Cidr,
    /// Connections from outside this range are masqueraded, so replies come back through us.
    pub pod_cidr: Cidr,
    pub spread: Spread,
}

impl NftSettings {
    pub fn new(table: impl Into<String>, service_cidr: Cidr, pod_cidr: Cidr) -> NftSettings {
        NftSettings {
            table: table.into(),
            service_cidr,
            pod_cidr,
            spread: Spread::Random,
        }
    }

    fn mark(&self) -> String {
        format!("meta mark set meta mark | {MASQUERADE_MARK:#x}")
    }

    fn generator(&self) -> &'static str {
        match self.spread {
            Spread::Random => "random",
            Spread::RoundRobin => "inc",
        }
    }
}

/// The base chains every table has; their content never depends on services.
pub(super) const BASE_CHAINS: [&str; 8] = [
    "nat-prerouting",
    "nat-output",
    "nat-postrouting",
    "filter-forward",
    "filter-output-post-dnat",
    "filter-input",
    "services",
    "reject-service",
];

/// The per-service part of the table: what changes when services and endpoints do.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ruleset {
    /// Pick chains and the chains of services with affinity, by name, with their rules.
    pub chains: BTreeMap<String, Vec<String>>,
    /// ClientIP affinity sets, by name, with their timeout in seconds.
    pub sets: BTreeMap<String, u32>,
    /// `service-ips`: a ClusterIP port → the chain it goes to.
    pub service_ips: BTreeMap<ClusterKey, String>,
    /// `node-ports`: a node port → the chain it goes to.
    pub node_ports: BTreeMap<PortKey, String>,
    /// `endpoints-<proto>`: (ClusterIP port, slot) → endpoint.
    pub endpoints: BTreeMap<(ClusterKey, u32), Backend>,
    /// `node-port-endpoints-<proto>`: (node port, slot) → endpoint.
    pub node_port_endpoints: BTreeMap<(PortKey, u32), Backend>,
    /// Node ports of services with no ready endpoint: rejected.
    pub no_endpoint_node_ports: BTreeSet<PortKey>,
    /// Endpoint addresses, each with the number of service ports using it: a connection DNAT'ed
    /// back to its own source is masqueraded, so that a pod can reach itself through its service.
    pub hairpin: BTreeMap<Ipv4Addr, u32>,
    /// How many service ports use each chain (pick chains are shared).
    chain_users: BTreeMap<String, u32>,
}

fn short_hash(text: &str) -> String {
    hex::encode(&Sha256::digest(text.as_bytes())[..4])
}

/// The name of a frontend's own chain: readable and unique (a hash of the frontend, then the
/// service's own name).
fn own_chain(vs: &VirtualService) -> String {
    let prefix = match vs.frontend {
        Frontend::ClusterIp(..) => "svc",
        Frontend::NodePort(_) => "nodeport",
    };
    let id = short_hash(&format!("{:?}/{}", vs.frontend, vs.protocol.name()));
    format!("{prefix}-{id}-{}", vs.service.replace(':', "/"))
}

/// The shared chain that spreads a frontend of protocol `p` with `n` endpoints: off-cluster
/// clients marked for masquerade, then DNAT to the endpoint in slot `numgen mod n` of the
/// frontend's data map.
fn pick_chain(node_port: bool, p: Protocol, n: usize, s: &NftSettings) -> (String, Vec<String>) {
    let g = s.generator();
    if node_port {
        let map = node_port_endpoints_map(p);
        let rules = vec![s.mark(), format!("dnat to {p} dport . numgen {g} mod {n} map @{map}")];
        (format!("nodeport-pick-{p}-{n}"), rules)
    } else {
        let rules = vec![
            format!("ip saddr != {} {}", s.pod_cidr, s.mark()),
            format!("dnat to ip daddr . {p} dport . numgen {g} mod {n} map @{}", endpoints_map(p)),
        ];
        (format!("pick-{p}-{n}"), rules)
    }
}

impl Ruleset {
    /// The rules for `services` (as [`crate::model::desired`] returns them).
    pub fn build(services: &[VirtualService], settings: &NftSettings) -> Ruleset {
        let mut rs = Ruleset::default();
        for vs in services {
            rs.add(&Ruleset::part(vs, settings));
        }
        rs
    }

    /// The rules of one virtual service.
    pub(super) fn part(vs: &VirtualService, s: &NftSettings) -> Ruleset {
        let mut rs = Ruleset::default();
        let node_port = matches!(vs.frontend, Frontend::NodePort(_));
        if vs.has_no_endpoints() {
            if let Frontend::NodePort(port) = vs.frontend {
                rs.no_endpoint_node_ports.insert((vs.protocol, port));
            }
            // A ClusterIP with no endpoint has no element: the service-range check rejects it.
            return rs;
        }
        for (ip, _) in vs.all_backends() {
            *rs.hairpin.entry(*ip).or_default() += 1;
        }
        let chain = match (&vs.policy, vs.affinity) {
            (Policy::Cluster, None) => {
                let (name, rules) = pick_chain(node_port, vs.protocol, vs.backends.len(), s);
                for (slot, b) in vs.backends.iter().enumerate() {
                    let slot = slot as u32;
                    match vs.frontend {
                        Frontend::ClusterIp(ip, port) => rs.endpoints.insert(((ip, vs.protocol, port), slot), *b),
                        Frontend::NodePort(port) => rs.node_port_endpoints.insert(((vs.protocol, port), slot), *b),
                    };
                }
                rs.chains.insert(name.clone(), rules);
                rs.chain_users.insert(name.clone(), 1);
                name
            }
            (Policy::Cluster, Some(_)) => {
                // Off-cluster clients are masqueraded so that the reply finds its way back.
                let first = match vs.frontend {
                    Frontend::ClusterIp(..) => format!("ip saddr != {} {}", s.pod_cidr, s.mark()),
                    Frontend::NodePort(_) => s.mark(),
                };
                rs.cascade(own_chain(vs), vec![first], &vs.backends, vs, "goto reject-service", s)
            }
            (Policy::Local { cluster }, _) => rs.local_chains(vs, cluster, s),
        };
        match vs.frontend {
            Frontend::ClusterIp(ip, port) => rs.service_ips.insert((ip, vs.protocol, port), chain),
            Frontend::NodePort(port) => rs.node_ports.insert((vs.protocol, port), chain),
        };
        rs
    }

    /// A frontend under the Local policy (this node's endpoints only, dropped when it has none):
    /// a ClusterIP masquerades off-cluster clients as usual; a node port keeps its clients'
    /// addresses, except that pods and the node itself go to the endpoints of the whole cluster
    /// (`cluster`, in a chain of its own; the node masqueraded, as it must be for the reply to
    /// come back). Returns the frontend's chain.
    fn local_chains(&mut self, vs: &VirtualService, cluster: &[Backend], s: &NftSettings) -> String {
        let chain = own_chain(vs);
        let first = match vs.frontend {
            Frontend::ClusterIp(..) => vec![format!("ip saddr != {} {}", s.pod_cidr, s.mark())],
            Frontend::NodePort(_) => {
                let whole = self.cascade(format!("{chain}/cluster"), Vec::new(), cluster, vs, "goto reject-service", s);
                vec![
                    format!("ip saddr {} goto {whole}", s.pod_cidr),
                    format!("fib saddr type local {} goto {whole}", s.mark()),
                ]
            }
        };
        self.cascade(chain, first, &vs.backends, vs, "drop", s)
    }

    /// A chain of its own named `chain`: `first`, then the `backends` picked by a cascade of
    /// rules, or `empty` when there are none. With ClientIP affinity, known clients go first to
    /// their endpoint's chain, which records its clients in a timeout set. Returns the name.
    fn cascade(
        &mut self,
        chain: String,
        mut rules: Vec<String>,
        backends: &[Backend],
        vs: &VirtualService,
        empty: &str,
        s: &NftSettings,
    ) -> String {
        let proto = vs.protocol.name();
        let readable = vs.service.replace(':', "/");
        let g = s.generator();
        let n = backends.len();
        let known = rules.len();
        for (i, (ip, port)) in backends.iter().enumerate() {
            // Endpoint i of the remaining n-i: uniform overall; with `inc` counters, each
            // rule's own counter makes the cascade an exact rotation.
            let pick = if i + 1 < n {
                format!("numgen {g} mod {} == 0 ", n - i)
            } else {
                String::new()
            };
            let dnat = format!("meta l4proto {proto} dnat to {ip}:{port}");
            let Some(timeout) = vs.affinity else {
                rules.push(format!("{pick}{dnat}"));
                continue;
            };
            let ep_id = short_hash(&format!("{chain}/{ip}:{port}/{timeout}"));
            let ep_chain = format!("endpoint-{ep_id}-{readable}/{ip}/{port}");
            let set = format!("affinity-{ep_id}");
            rules.insert(known + i, format!("ip saddr @{set} goto {ep_chain}"));
            rules.push(format!("{pick}goto {ep_chain}"));
            self.chains
                .insert(ep_chain.clone(), vec![format!("update @{set} {{ ip saddr }}"), dnat]);
            self.chain_users.insert(ep_chain, 1);
            self.sets.insert(set, timeout);
        }
        if backends.is_empty() {
            rules.push(empty.to_owned());
        }
        self.chains.insert(chain.clone(), rules);
        self.chain_users.insert(chain.clone(), 1);
        chain
    }

    /// Adds a part (keys of different service ports never collide; shared chains and hairpin
    /// addresses are counted).
    pub(super) fn add(&mut self, part: &Ruleset) {
        for (name, rules) in &part.chains {
            self.chains.insert(name.clone(), rules.clone());
        }
        for (name, n) in &part.chain_users {
            *self.chain_users.entry(name.clone()).or_default() += n;
        }
        self.sets.extend(part.sets.iter().map(|(k, v)| (k.clone(), *v)));
        self.service_ips.extend(part.service_ips.iter().map(|(k, v)| (*k, v.clone())));
        self.node_ports.extend(part.node_ports.iter().map(|(k, v)| (*k, v.clone())));
        self.endpoints.extend(part.endpoints.iter().map(|(k, v)| (*k, *v)));
        self.node_port_endpoints
            .extend(part.node_port_endpoints.iter().map(|(k, v)| (*k, *v)));
        self.no_endpoint_node_ports.extend(part.no_endpoint_node_ports.iter().copied());
        for (ip, n) in &part.hairpin {
            *self.hairpin.entry(*ip).or_default() += n;
        }
    }

    /// Takes away a part added before.
    pub(super) fn remove(&mut self, part: &Ruleset) {
        for (name, n) in &part.chain_users {
            let users = self.chain_users.entry(name.clone()).or_default();
            *users = users.saturating_sub(*n);
            if *users == 0 {
                self.chain_users.remove(name);
                self.chains.remove(name);
            }
        }
        for name in part.sets.keys() {
            self.sets.remove(name);
        }
        for k in part.service_ips.keys() {
            self.service_ips.remove(k);
        }
        for k in part.node_ports.keys() {
            self.node_ports.remove(k);
        }
        for k in part.endpoints.keys() {
            self.endpoints.remove(k);
        }
        for k in part.node_port_endpoints.keys() {
            self.node_port_endpoints.remove(k);
        }
        for k in &part.no_endpoint_node_ports {
            self.no_endpoint_node_ports.remove(k);
        }
        for (ip, n) in &part.hairpin {
            let count = self.hairpin.entry(*ip).or_default();
            *count = count.saturating_sub(*n);
            if *count == 0 {
                self.hairpin.remove(ip);
            }
        }
    }

    /// Every element of the fixed maps and sets.
    pub(super) fn entries(&self) -> Vec<Entry> {
        let mut out = Vec::with_capacity(self.service_ips.len() + self.endpoints.len() + self.hairpin.len());
        out.extend(self.service_ips.iter().map(|(k, c)| Entry::ServiceIp(*k, c.clone())));
        out.extend(self.node_ports.iter().map(|(k, c)| Entry::NodePort(*k, c.clone())));
        out.extend(self.endpoints.iter().map(|((k, slot), b)| Entry::Endpoint(*k, *slot, *b)));
        out.extend(
            self.node_port_endpoints
                .iter()
                .map(|((k, slot), b)| Entry::NodePortEndpoint(*k, *slot, *b)),
        );
        out.extend(self.no_endpoint_node_ports.iter().map(|k| Entry::NoEndpointNodePort(*k)));
        out.extend(self.hairpin.keys().map(|ip| Entry::Hairpin(*ip)));
        out
    }
}
