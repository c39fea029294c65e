//! The nftables backend: the virtual services as one table of our own — a verdict map from
//! VIP . protocol . port to a chain per service that spreads to a DNAT chain per endpoint —
//! written with `nft -f` in transactions, so that every change lands whole or not at all.
//!
//! Rendering is pure ([`Ruleset::build`], [`full_script`], [`delta_script`]); [`Nft`] is the thin
//! edge that runs `nft`, optionally inside a network namespace.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::process::Stdio;

use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::ProxyError;
use crate::model::{Frontend, Protocol, VirtualService};

/// The packet mark that asks the postrouting chain to masquerade (the bit kube-proxy uses).
const MASQUERADE_MARK: u32 = 0x4000;

/// How a service's connections are spread over its endpoints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Spread {
    /// Each new connection picks an endpoint at random (kube-proxy's nftables mode).
    #[default]
    Random,
    /// New connections take the endpoints in turn.
    RoundRobin,
}

/// What the rules need to know about the cluster.
#[derive(Clone, Debug)]
pub struct NftSettings {
    /// Our table (family `ip`); nothing else is touched.
    pub table: String,
    /// Traffic to this range that no service takes is rejected, never routed out.
    pub service_cidr: (Ipv4Addr, u8),
    /// Connections from outside this range are masqueraded, so replies come back through us.
    pub pod_cidr: (Ipv4Addr, u8),
    pub spread: Spread,
}

impl NftSettings {
    pub fn new(table: impl Into<String>, service_cidr: (Ipv4Addr, u8), pod_cidr: (Ipv4Addr, u8)) -> NftSettings {
        NftSettings {
            table: table.into(),
            service_cidr,
            pod_cidr,
            spread: Spread::Random,
        }
    }
}

/// The base chains, maps and sets every table has; their content never depends on services.
const BASE_CHAINS: [&str; 8] = [
    "nat-prerouting",
    "nat-output",
    "nat-postrouting",
    "filter-forward",
    "filter-output-post-dnat",
    "filter-input",
    "services",
    "reject-service",
];
const SERVICE_IPS: &str = "service-ips";
const NODE_PORTS: &str = "node-ports";
const NO_ENDPOINT_NODE_PORTS: &str = "no-endpoint-node-ports";
const HAIRPIN: &str = "hairpin";

/// The per-service part of the table: what changes when services and endpoints do.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ruleset {
    /// Service and endpoint chains, by name, with their rules.
    pub chains: BTreeMap<String, Vec<String>>,
    /// ClientIP affinity sets, by name, with their timeout in seconds.
    pub sets: BTreeMap<String, u32>,
    /// `service-ips` elements: `ip . proto . port` → verdict.
    pub service_ips: BTreeMap<String, String>,
    /// `node-ports` elements: `proto . port` → verdict.
    pub node_ports: BTreeMap<String, String>,
    /// Node ports of services with no ready endpoint: rejected.
    pub no_endpoint_node_ports: BTreeSet<String>,
    /// `ip . ip` of every endpoint: a connection DNAT'ed back to its own source is masqueraded,
    /// so that a pod can reach itself through its service.
    pub hairpin: BTreeSet<String>,
}

fn short_hash(text: &str) -> String {
    hex::encode(&Sha256::digest(text.as_bytes())[..4])
}

pub(crate) fn cidr((ip, bits): (Ipv4Addr, u8)) -> String {
    format!("{ip}/{bits}")
}

/// In IPVS mode, the one thing IPVS does not do: traffic to an address of the service range
/// that is no ClusterIP (not a local address on the VIP interface) is rejected on the host,
/// from the host and from pods alike, instead of being routed out. Replaces the table `table`.
pub fn ipvs_guard_script(table: &str, service_cidr: (Ipv4Addr, u8)) -> String {
    let c = cidr(service_cidr);
    format!(
        "table ip {table} {{}}\ndelete table ip {table}\ntable ip {table} {{\n\
         \tchain output {{ type filter hook output priority 0; policy accept; ip daddr {c} fib daddr type != local reject; }}\n\
         \tchain forward {{ type filter hook forward priority 0; policy accept; ip daddr {c} fib daddr type != local reject; }}\n}}\n"
    )
}

impl Ruleset {
    /// The rules for `services` (as [`crate::model::desired`] returns them).
    pub fn build(services: &[VirtualService], settings: &NftSettings) -> Ruleset {
        let mut rs = Ruleset::default();
        let mark = format!("meta mark set meta mark | {MASQUERADE_MARK:#x}");
        for vs in services {
            let proto = vs.protocol.name();
            let (prefix, element) = match vs.frontend {
                Frontend::ClusterIp(ip, port) => ("svc", format!("{ip} . {proto} . {port}")),
                Frontend::NodePort(port) => ("nodeport", format!("{proto} . {port}")),
            };
            // Readable and unique: a hash of the frontend, then the service's own name.
            let id = short_hash(&format!("{:?}/{proto}", vs.frontend));
            let readable = vs.service.replace(':', "/");
            let chain = format!("{prefix}-{id}-{readable}");
            if vs.backends.is_empty() {
                if matches!(vs.frontend, Frontend::NodePort(_)) {
                    rs.no_endpoint_node_ports.insert(element);
                }
                // A ClusterIP with no endpoint has no element: the service-range check rejects it.
                continue;
            }
            let mut rules = Vec::new();
            match vs.frontend {
                // Off-cluster clients are masqueraded so that the reply finds its way back.
                Frontend::ClusterIp(..) => rules.push(format!("ip saddr != {} {mark}", cidr(settings.pod_cidr))),
                Frontend::NodePort(_) => rules.push(mark.clone()),
            }
            let generator = match settings.spread {
                Spread::Random => "random",
                Spread::RoundRobin => "inc",
            };
            // A cascade instead of a numgen verdict map: each anonymous map is a kernel set, and
            // the kernel's cost of adding one grows with the number already there.
            let n = vs.backends.len();
            for (i, (ip, port)) in vs.backends.iter().enumerate() {
                rs.hairpin.insert(format!("{ip} . {ip}"));
                // Endpoint i of the remaining n-i: uniform overall; with `inc` counters, each
                // rule's own counter makes the cascade an exact rotation.
                let pick = if i + 1 < n {
                    format!("numgen {generator} mod {} == 0 ", n - i)
                } else {
                    String::new()
                };
                let dnat = format!("meta l4proto {proto} dnat to {ip}:{port}");
                match vs.affinity {
                    None => rules.push(format!("{pick}{dnat}")),
                    Some(timeout) => {
                        // Sticky clients: one chain per endpoint that records the client.
                        let ep_id = short_hash(&format!("{chain}/{ip}:{port}"));
                        let ep_chain = format!("endpoint-{ep_id}-{readable}/{ip}/{port}");
                        let set = format!("affinity-{ep_id}");
                        rules.insert(1 + i, format!("ip saddr @{set} goto {ep_chain}"));
                        rules.push(format!("{pick}goto {ep_chain}"));
                        rs.chains.insert(ep_chain, vec![format!("update @{set} {{ ip saddr }}"), dnat]);
                        rs.sets.insert(set, timeout);
                    }
                }
            }
            rs.chains.insert(chain.clone(), rules);
            let verdict = format!("goto {chain}");
            match vs.frontend {
                Frontend::ClusterIp(..) => rs.service_ips.insert(element, verdict),
                Frontend::NodePort(_) => rs.node_ports.insert(element, verdict),
            };
        }
        rs
    }
}

impl Ruleset {
    fn extend(&mut self, other: &Ruleset) {
        self.chains.extend(other.chains.iter().map(|(k, v)| (k.clone(), v.clone())));
        self.sets.extend(other.sets.iter().map(|(k, v)| (k.clone(), *v)));
        self.service_ips
            .extend(other.service_ips.iter().map(|(k, v)| (k.clone(), v.clone())));
        self.node_ports.extend(other.node_ports.iter().map(|(k, v)| (k.clone(), v.clone())));
        self.no_endpoint_node_ports.extend(other.no_endpoint_node_ports.iter().cloned());
        self.hairpin.extend(other.hairpin.iter().cloned());
    }
}

/// Renders rules service by service and keeps them, so that a sync renders only the services
/// that changed since the last one (with 10,000 services, rendering them all costs more than the
/// transaction of one change).
#[derive(Debug, Default)]
pub struct Renderer {
    parts: HashMap<(Frontend, Protocol), (VirtualService, Ruleset)>,
}

impl Renderer {
    /// The rules for `services`, as [`Ruleset::build`] makes them.
    pub fn render(&mut self, services: &[VirtualService], settings: &NftSettings) -> Ruleset {
        let mut next = HashMap::with_capacity(services.len());
        for vs in services {
            let part = match self.parts.remove(&vs.key()) {
                Some((old, rules)) if &old == vs => rules,
                _ => Ruleset::build(std::slice::from_ref(vs), settings),
            };
            next.insert(vs.key(), (vs.clone(), part));
        }
        self.parts = next;
        let mut out = Ruleset::default();
        for vs in services {
            out.extend(&self.parts[&vs.key()].1);
        }
        out
    }
}

/// The names of the chains and sets a table holds in the kernel.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Listing {
    pub chains: BTreeSet<String>,
    pub sets: BTreeSet<String>,
}

/// Reads the chain and set names out of `nft list table` output.
pub fn parse_listing(text: &str) -> Listing {
    let mut out = Listing::default();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["chain", name, "{"] => {
                out.chains.insert((*name).to_owned());
            }
            ["set" | "map", name, "{"] => {
                out.sets.insert((*name).to_owned());
            }
            _ => {}
        }
    }
    out
}

fn base(out: &mut String, s: &NftSettings) {
    let t = &s.table;
    let _ = writeln!(out, "add table ip {t}");
    let hooks = [
        ("nat-prerouting", "type nat hook prerouting priority -100;"),
        ("nat-output", "type nat hook output priority -100;"),
        ("nat-postrouting", "type nat hook postrouting priority 100;"),
        // Before the filter chains of others, and (for output) after our DNAT: whatever still
        // goes to the service range was taken by no service.
        ("filter-forward", "type filter hook forward priority -110;"),
        ("filter-output-post-dnat", "type filter hook output priority -90;"),
        ("filter-input", "type filter hook input priority -110;"),
    ];
    for (chain, hook) in hooks {
        let _ = writeln!(out, "add chain ip {t} {chain} {{ {hook} policy accept; }}");
    }
    for chain in ["services", "reject-service"] {
        let _ = writeln!(out, "add chain ip {t} {chain}");
    }
    let _ = writeln!(
        out,
        "add map ip {t} {SERVICE_IPS} {{ type ipv4_addr . inet_proto . inet_service : verdict; }}"
    );
    let _ = writeln!(out, "add map ip {t} {NODE_PORTS} {{ type inet_proto . inet_service : verdict; }}");
    let _ = writeln!(out, "add set ip {t} {NO_ENDPOINT_NODE_PORTS} {{ type inet_proto . inet_service; }}");
    let _ = writeln!(out, "add set ip {t} {HAIRPIN} {{ type ipv4_addr . ipv4_addr; }}");
    for chain in BASE_CHAINS {
        let _ = writeln!(out, "flush chain ip {t} {chain}");
    }
    let range = cidr(s.service_cidr);
    let rules = [
        ("nat-prerouting", "jump services".to_owned()),
        ("nat-output", "jump services".to_owned()),
        ("nat-postrouting", format!("meta mark & {MASQUERADE_MARK:#x} != 0 masquerade")),
        (
            "nat-postrouting",
            format!("ct status dnat ip saddr . ip daddr @{HAIRPIN} masquerade"),
        ),
        ("services", format!("ip daddr . meta l4proto . th dport vmap @{SERVICE_IPS}")),
        (
            "services",
            format!("fib daddr type local meta l4proto . th dport vmap @{NODE_PORTS}"),
        ),
        ("filter-forward", format!("ct state new ip daddr {range} jump reject-service")),
        (
            "filter-output-post-dnat",
            format!("ct state new ip daddr {range} jump reject-service"),
        ),
        (
            "filter-input",
            format!("ct state new meta l4proto . th dport @{NO_ENDPOINT_NODE_PORTS} jump reject-service"),
        ),
        ("reject-service", "meta l4proto tcp reject with tcp reset".to_owned()),
        ("reject-service", "reject".to_owned()),
    ];
    for (chain, rule) in rules {
        let _ = writeln!(out, "add rule ip {t} {chain} {rule}");
    }
}

fn add_set(out: &mut String, t: &str, name: &str, timeout: u32) {
    let _ = writeln!(
        out,
        "add set ip {t} {name} {{ type ipv4_addr; flags dynamic,timeout; timeout {timeout}s; }}"
    );
}

fn write_rules(out: &mut String, t: &str, chain: &str, rules: &[String]) {
    for r in rules {
        let _ = writeln!(out, "add rule ip {t} {chain} {r}");
    }
}

fn elements<'a>(out: &mut String, op: &str, t: &str, map: &str, items: impl IntoIterator<Item = String> + 'a) {
    let items: Vec<String> = items.into_iter().collect();
    if !items.is_empty() {
        let _ = writeln!(out, "{op} element ip {t} {map} {{ {} }}", items.join(", "));
    }
}

/// Deletes chains and sets no longer wanted: chains are flushed first, so that none is still
/// referenced when it goes.
fn remove_stale<'a>(
    out: &mut String,
    t: &str,
    chains: impl IntoIterator<Item = &'a String> + Clone,
    sets: impl IntoIterator<Item = &'a String>,
) {
    for c in chains.clone() {
        let _ = writeln!(out, "flush chain ip {t} {c}");
    }
    for c in chains {
        let _ = writeln!(out, "delete chain ip {t} {c}");
    }
    for s in sets {
        let _ = writeln!(out, "delete set ip {t} {s}");
    }
}

/// One transaction that makes the table exactly `rs` whatever it holds now (`kernel`, as listed):
/// every chain rewritten, maps refilled, strays removed. Affinity sets that stay keep their
/// entries.
pub fn full_script(rs: &Ruleset, s: &NftSettings, kernel: &Listing) -> String {
    let t = &s.table;
    let mut out = String::new();
    base(&mut out, s);
    for (name, timeout) in &rs.sets {
        add_set(&mut out, t, name, *timeout);
    }
    for (name, rules) in &rs.chains {
        let _ = writeln!(out, "add chain ip {t} {name}");
        let _ = writeln!(out, "flush chain ip {t} {name}");
        write_rules(&mut out, t, name, rules);
    }
    for map in [SERVICE_IPS, NODE_PORTS, NO_ENDPOINT_NODE_PORTS, HAIRPIN] {
        let kind = if [NO_ENDPOINT_NODE_PORTS, HAIRPIN].contains(&map) {
            "set"
        } else {
            "map"
        };
        let _ = writeln!(out, "flush {kind} ip {t} {map}");
    }
    elements(
        &mut out,
        "add",
        t,
        SERVICE_IPS,
        rs.service_ips.iter().map(|(k, v)| format!("{k} : {v}")),
    );
    elements(
        &mut out,
        "add",
        t,
        NODE_PORTS,
        rs.node_ports.iter().map(|(k, v)| format!("{k} : {v}")),
    );
    elements(
        &mut out,
        "add",
        t,
        NO_ENDPOINT_NODE_PORTS,
        rs.no_endpoint_node_ports.iter().cloned(),
    );
    elements(&mut out, "add", t, HAIRPIN, rs.hairpin.iter().cloned());
    let stale_chains: Vec<&String> = kernel
        .chains
        .iter()
        .filter(|c| !rs.chains.contains_key(*c) && !BASE_CHAINS.contains(&c.as_str()))
        .collect();
    let fixed = [SERVICE_IPS, NODE_PORTS, NO_ENDPOINT_NODE_PORTS, HAIRPIN];
    let stale_sets: Vec<&String> = kernel
        .sets
        .iter()
        .filter(|n| !rs.sets.contains_key(*n) && !fixed.contains(&n.as_str()))
        .collect();
    remove_stale(&mut out, t, stale_chains, stale_sets);
    out
}

fn map_delta(out: &mut String, t: &str, map: &str, old: &BTreeMap<String, String>, new: &BTreeMap<String, String>) {
    let gone = old.iter().filter(|(k, v)| new.get(*k) != Some(*v)).map(|(k, _)| k.clone());
    elements(out, "delete", t, map, gone);
    let came = new
        .iter()
        .filter(|(k, v)| old.get(*k) != Some(*v))
        .map(|(k, v)| format!("{k} : {v}"));
    elements(out, "add", t, map, came);
}

/// One transaction from `old` (what the last successful apply wrote) to `new`, touching only
/// what differs: an endpoint change rewrites its service's chain and its endpoint chains, nothing
/// else. Empty when nothing differs.
pub fn delta_script(old: &Ruleset, new: &Ruleset, s: &NftSettings) -> String {
    let t = &s.table;
    let mut out = String::new();
    for (name, timeout) in &new.sets {
        if old.sets.get(name) != Some(timeout) {
            add_set(&mut out, t, name, *timeout);
        }
    }
    for (name, rules) in &new.chains {
        match old.chains.get(name) {
            Some(before) if before == rules => continue,
            Some(_) => {
                let _ = writeln!(out, "flush chain ip {t} {name}");
            }
            None => {
                let _ = writeln!(out, "add chain ip {t} {name}");
            }
        }
        write_rules(&mut out, t, name, rules);
    }
    map_delta(&mut out, t, SERVICE_IPS, &old.service_ips, &new.service_ips);
    map_delta(&mut out, t, NODE_PORTS, &old.node_ports, &new.node_ports);
    elements(
        &mut out,
        "delete",
        t,
        NO_ENDPOINT_NODE_PORTS,
        old.no_endpoint_node_ports.difference(&new.no_endpoint_node_ports).cloned(),
    );
    elements(
        &mut out,
        "add",
        t,
        NO_ENDPOINT_NODE_PORTS,
        new.no_endpoint_node_ports.difference(&old.no_endpoint_node_ports).cloned(),
    );
    elements(&mut out, "delete", t, HAIRPIN, old.hairpin.difference(&new.hairpin).cloned());
    elements(&mut out, "add", t, HAIRPIN, new.hairpin.difference(&old.hairpin).cloned());
    let stale_chains: Vec<&String> = old.chains.keys().filter(|c| !new.chains.contains_key(*c)).collect();
    let stale_sets: Vec<&String> = old.sets.keys().filter(|n| !new.sets.contains_key(*n)).collect();
    remove_stale(&mut out, t, stale_chains, stale_sets);
    out
}

/// Runs `nft` (inside `netns` when set: tests use namespaces of their own).
#[derive(Clone, Debug)]
pub struct Nft {
    pub netns: Option<String>,
    pub table: String,
}

impl Nft {
    fn command(&self) -> Command {
        let mut c = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "nft"]);
                c
            }
            None => Command::new("nft"),
        };
        c.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        c
    }

    async fn run(&self, args: &[&str], input: Option<&str>) -> Result<String, ProxyError> {
        let mut cmd = self.command();
        cmd.args(args);
        let mut child = cmd.spawn().map_err(|source| ProxyError::Spawn { program: "nft", source })?;
        let mut stdin = child.stdin.take().expect("piped");
        if let Some(text) = input {
            stdin
                .write_all(text.as_bytes())
                .await
                .map_err(|source| ProxyError::Spawn { program: "nft", source })?;
        }
        drop(stdin);
        let out = child
            .wait_with_output()
            .await
            .map_err(|source| ProxyError::Spawn { program: "nft", source })?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(ProxyError::Nft {
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            })
        }
    }

    /// Applies one script as a single transaction.
    pub async fn apply(&self, script: &str) -> Result<(), ProxyError> {
        if script.is_empty() {
            return Ok(());
        }
        self.run(&["-f", "-"], Some(script)).await.map(drop)
    }

    /// The table as the kernel holds it (`nft list table`); empty when it does not exist.
    pub async fn list(&self) -> Result<String, ProxyError> {
        match self.run(&["list", "table", "ip", &self.table], None).await {
            Ok(text) => Ok(text),
            Err(ProxyError::Nft { stderr }) if stderr.contains("No such file or directory") => Ok(String::new()),
            Err(e) => Err(e),
        }
    }

    /// Removes our table, and with it every rule the proxy made.
    pub async fn delete_table(&self) -> Result<(), ProxyError> {
        let t = &self.table;
        self.apply(&format!("add table ip {t}\ndelete table ip {t}\n")).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Protocol;

    fn settings() -> NftSettings {
        NftSettings::new(
            "capstan-proxy",
            ("10.96.0.0".parse().unwrap(), 16),
            ("10.244.0.0".parse().unwrap(), 16),
        )
    }

    fn vs(frontend: Frontend, backends: &[(&str, u16)], affinity: Option<u32>) -> VirtualService {
        VirtualService {
            frontend,
            protocol: Protocol::Tcp,
            service: "shop/web:http".into(),
            affinity,
            backends: backends.iter().map(|(ip, p)| (ip.parse().unwrap(), *p)).collect(),
        }
    }

    fn vip(port: u16) -> Frontend {
        Frontend::ClusterIp("10.96.0.20".parse().unwrap(), port)
    }

    #[test]
    fn a_service_spreads_over_its_endpoints_by_a_cascade() {
        let rs = Ruleset::build(
            &[vs(
                vip(80),
                &[("10.244.0.5", 8080), ("10.244.0.7", 8080), ("10.244.0.9", 8080)],
                None,
            )],
            &settings(),
        );
        assert_eq!(rs.service_ips.len(), 1);
        let (element, verdict) = rs.service_ips.iter().next().unwrap();
        assert_eq!(element, "10.96.0.20 . tcp . 80");
        let chain = verdict.strip_prefix("goto ").unwrap();
        assert!(chain.starts_with("svc-") && chain.ends_with("-shop/web/http"), "{chain}");
        assert_eq!(
            rs.chains[chain],
            vec![
                "ip saddr != 10.244.0.0/16 meta mark set meta mark | 0x4000",
                "numgen random mod 3 == 0 meta l4proto tcp dnat to 10.244.0.5:8080",
                "numgen random mod 2 == 0 meta l4proto tcp dnat to 10.244.0.7:8080",
                "meta l4proto tcp dnat to 10.244.0.9:8080",
            ]
        );
        assert_eq!(rs.chains.len(), 1, "no chain per endpoint without affinity");
        assert!(rs.hairpin.contains("10.244.0.5 . 10.244.0.5"));
    }

    #[test]
    fn affinity_node_ports_and_services_without_endpoints() {
        let mut s = settings();
        s.spread = Spread::RoundRobin;
        let rs = Ruleset::build(
            &[
                vs(vip(80), &[("10.244.0.5", 8080), ("10.244.0.6", 8080)], Some(60)),
                vs(vip(81), &[], None),
                vs(Frontend::NodePort(30080), &[("10.244.0.5", 8080), ("10.244.0.6", 8080)], None),
                vs(Frontend::NodePort(30081), &[], None),
            ],
            &s,
        );
        assert_eq!(rs.service_ips.len(), 1, "a ClusterIP without endpoints has no element");
        assert_eq!(rs.sets.values().collect::<Vec<_>>(), vec![&60, &60]);
        let svc = rs.service_ips.values().next().unwrap().strip_prefix("goto ").unwrap();
        let rules = &rs.chains[svc];
        assert!(
            rules[1].starts_with("ip saddr @affinity-") && rules[2].starts_with("ip saddr @affinity-"),
            "{rules:?}"
        );
        assert!(rules[3].starts_with("numgen inc mod 2 == 0 goto endpoint-"), "{rules:?}");
        assert!(rules[4].starts_with("goto endpoint-"), "{rules:?}");
        let ep = rules[4].strip_prefix("goto ").unwrap();
        assert!(rs.chains[ep][0].starts_with("update @affinity-"));
        assert_eq!(rs.chains[ep][1], "meta l4proto tcp dnat to 10.244.0.6:8080");
        assert_eq!(rs.node_ports.keys().collect::<Vec<_>>(), vec!["tcp . 30080"]);
        let np = rs.node_ports.values().next().unwrap().strip_prefix("goto ").unwrap();
        assert_eq!(rs.chains[np][0], "meta mark set meta mark | 0x4000", "node ports always masquerade");
        assert!(rs.chains[np][1].starts_with("numgen inc mod 2 == 0 meta l4proto tcp dnat to 10.244.0.5:8080"));
        assert_eq!(rs.no_endpoint_node_ports.iter().collect::<Vec<_>>(), vec!["tcp . 30081"]);
    }

    #[test]
    fn the_renderer_matches_a_full_build_and_reuses_unchanged_services() {
        let s = settings();
        let mut other = vs(vip(443), &[("10.244.0.9", 8443)], Some(30));
        other.service = "shop/api:https".into();
        let first = vec![vs(vip(80), &[("10.244.0.5", 8080)], None), other.clone()];
        let second = vec![vs(vip(80), &[("10.244.0.6", 8080), ("10.244.0.5", 8080)], None), other];
        let mut r = Renderer::default();
        assert_eq!(r.render(&first, &s), Ruleset::build(&first, &s));
        assert_eq!(r.render(&second, &s), Ruleset::build(&second, &s));
        assert_eq!(
            r.render(&second[1..], &s),
            Ruleset::build(&second[1..], &s),
            "a removed service goes"
        );
    }

    #[test]
    fn an_endpoint_change_touches_only_its_service() {
        let s = settings();
        let mut other = vs(vip(443), &[("10.244.0.9", 8443)], None);
        other.service = "shop/api:https".into();
        let old = Ruleset::build(&[vs(vip(80), &[("10.244.0.5", 8080)], None), other.clone()], &s);
        let new = Ruleset::build(&[vs(vip(80), &[("10.244.0.6", 8080)], None), other], &s);
        let script = delta_script(&old, &new, &s);
        assert!(!script.contains("api"), "the other service is untouched:\n{script}");
        assert!(script.contains("dnat to 10.244.0.6:8080"));
        assert!(!script.contains("service-ips"), "the map entry is unchanged:\n{script}");
        assert!(
            script.contains("delete element ip capstan-proxy hairpin { 10.244.0.5 . 10.244.0.5 }"),
            "{script}"
        );
        assert_eq!(delta_script(&new, &new, &s), "", "no change, no transaction");
    }

    #[test]
    fn a_full_resync_removes_strays_and_keeps_base_chains() {
        let s = settings();
        let rs = Ruleset::build(&[vs(vip(80), &[("10.244.0.5", 8080)], Some(10))], &s);
        let kernel = parse_listing(
            "table ip capstan-proxy {\n\tmap service-ips {\n\t}\n\tset affinity-deadbeef {\n\t}\n\tchain services {\n\t}\n\tchain svc-old {\n\t}\n}\n",
        );
        assert!(kernel.chains.contains("svc-old") && kernel.sets.contains("service-ips"));
        let script = full_script(&rs, &s, &kernel);
        assert!(script.contains("delete chain ip capstan-proxy svc-old"));
        assert!(script.contains("delete set ip capstan-proxy affinity-deadbeef"));
        assert!(!script.contains("delete chain ip capstan-proxy services"));
        assert!(!script.contains("delete set ip capstan-proxy service-ips"));
        assert!(script.contains("ct state new ip daddr 10.96.0.0/16 jump reject-service"));
        assert!(
            script.contains("add element ip capstan-proxy hairpin { 10.244.0.5 . 10.244.0.5 }"),
            "{script}"
        );
    }
}
