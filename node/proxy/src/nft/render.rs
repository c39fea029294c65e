//! Rendering, pure: what changed between two rulesets as an [`Update`] (the scripts before and
//! after, and the element changes between them), the whole table against what the kernel
//! lists, and the IPVS guard table's script and hairpin set.

use capstan_api::cidr::Cidr;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use super::elements::{
    ElementOp, Entry, FIXED_SETS, HAIRPIN, NO_ENDPOINT_NODE_PORTS, NODE_PORTS, PortKey, SERVICE_IPS, endpoints_map, node_port_endpoints_map,
};
use super::model::{BASE_CHAINS, MASQUERADE_MARK, NftSettings, Ruleset};
use crate::model::{Frontend, Protocol, VirtualService};

/// In IPVS mode, what IPVS does not do, in a table of our own (replacing the table `table`):
/// traffic to an address of the service range that is no ClusterIP (not a local address on the
/// VIP interface) is rejected on the host, from the host and from pods alike, instead of being
/// routed out; and a pod that IPVS sends back to itself is masqueraded (the `hairpin` set, kept
/// by [`hairpin_update`]), or its own reply would never return through IPVS.
pub fn ipvs_guard_script(table: &str, service_cidr: Cidr) -> String {
    let c = service_cidr;
    format!(
        "table ip {table} {{}}\ndelete table ip {table}\ntable ip {table} {{\n\
         \tset {HAIRPIN} {{ type ipv4_addr . ipv4_addr; }}\n\
         \tchain output {{ type filter hook output priority 0; policy accept; ip daddr {c} fib daddr type != local reject; }}\n\
         \tchain forward {{ type filter hook forward priority 0; policy accept; ip daddr {c} fib daddr type != local reject; }}\n\
         \tchain postrouting {{ type nat hook postrouting priority 100; policy accept; ip saddr . ip daddr @{HAIRPIN} masquerade; }}\n}}\n"
    )
}

/// In IPVS mode: the hairpin elements for the endpoints of `services`, as an update from
/// `old` (what the set holds; `None`: unknown, so it is emptied and refilled). Returns the new
/// content too.
pub fn hairpin_update(old: Option<&BTreeSet<Ipv4Addr>>, services: &[VirtualService]) -> (Update, BTreeSet<Ipv4Addr>) {
    let new: BTreeSet<Ipv4Addr> = services.iter().flat_map(|vs| vs.all_backends().map(|(ip, _)| *ip)).collect();
    let mut u = Update::default();
    match old {
        Some(old) => {
            u.elements
                .extend(old.difference(&new).map(|ip| ElementOp::Delete(Entry::Hairpin(*ip))));
            u.elements.extend(new.difference(old).map(|ip| ElementOp::Add(Entry::Hairpin(*ip))));
        }
        None => {
            u.elements.push(ElementOp::Flush(HAIRPIN));
            u.elements.extend(new.iter().map(|ip| ElementOp::Add(Entry::Hairpin(*ip))));
        }
    }
    (u, new)
}

/// A change to the table, applied in three atomic steps (see the module's documentation).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Update {
    /// `nft -f` script: sets and chains to create or rewrite.
    pub pre: String,
    /// One netlink transaction: element changes, deletions first.
    pub elements: Vec<ElementOp>,
    /// `nft -f` script: chains and sets no longer used.
    pub post: String,
}

impl Update {
    pub fn is_empty(&self) -> bool {
        self.pre.is_empty() && self.elements.is_empty() && self.post.is_empty()
    }

    /// Everything the update does, as text (tests and logs).
    pub fn describe(&self) -> String {
        let mut out = self.pre.clone();
        for op in &self.elements {
            let _ = writeln!(out, "{op}");
        }
        out.push_str(&self.post);
        out
    }
}

/// For each touched key: the value it had, so that the change can be read off afterwards.
fn before<K: Ord + Clone, V: Clone>(map: &BTreeMap<K, V>, keys: impl IntoIterator<Item = K>) -> BTreeMap<K, Option<V>> {
    keys.into_iter().map(|k| (k.clone(), map.get(&k).cloned())).collect()
}

/// The keys whose value changed: (key, old, new), old or new `None` for absent.
fn changed<K: Ord + Clone, V: Clone + PartialEq>(before: BTreeMap<K, Option<V>>, now: &BTreeMap<K, V>) -> Vec<(K, Option<V>, Option<V>)> {
    before
        .into_iter()
        .filter_map(|(k, old)| {
            let new = now.get(&k).cloned();
            (old != new).then_some((k, old, new))
        })
        .collect()
}

/// Renders rules service by service and keeps them, so that a sync renders and diffs only the
/// services that changed since the last one: with 10,000 services, anything proportional to
/// all of them costs more than the kernel's work for one change.
#[derive(Debug, Default)]
pub struct Renderer {
    parts: HashMap<(Frontend, Protocol), (VirtualService, Ruleset)>,
    total: Ruleset,
    /// Pick chains no service uses any more, left in the kernel: a service whose endpoint
    /// count comes back (a pod replaced: one less, then one more) needs no rule change. The next
    /// full update removes them.
    kept: BTreeSet<String>,
}

/// Whether a chain is a pick chain (its rules depend on its name only).
fn is_pick(chain: &str) -> bool {
    chain.starts_with("pick-") || chain.starts_with("nodeport-pick-")
}

impl Renderer {
    /// What the table should hold after the last [`Renderer::render`].
    pub fn total(&self) -> &Ruleset {
        &self.total
    }

    /// The update that makes the kernel's table exactly what was last rendered, whatever it
    /// holds now (`kernel`, as listed); see [`full_update`].
    pub fn full_update(&mut self, s: &NftSettings, kernel: &Listing) -> Update {
        self.kept.clear();
        full_update(&self.total, s, kernel)
    }

    /// Takes `services` as the new desired state; returns the update from the previous one.
    pub fn render(&mut self, services: &[VirtualService], s: &NftSettings) -> Update {
        let mut seen = HashSet::with_capacity(services.len());
        let mut gone = Vec::new();
        let mut came = Vec::new();
        for vs in services {
            seen.insert(vs.key());
            if self.parts.get(&vs.key()).is_some_and(|(old, _)| old == vs) {
                continue;
            }
            if let Some((_, old)) = self.parts.remove(&vs.key()) {
                gone.push(old);
            }
            came.push((vs.clone(), Ruleset::part(vs, s)));
        }
        let removed: Vec<_> = self.parts.keys().filter(|k| !seen.contains(*k)).copied().collect();
        for k in removed {
            if let Some((_, old)) = self.parts.remove(&k) {
                gone.push(old);
            }
        }
        let parts = gone.iter().chain(came.iter().map(|(_, p)| p));
        let t = &self.total;
        let chains = before(&t.chains, parts.clone().flat_map(|p| p.chains.keys().cloned()));
        let sets = before(&t.sets, parts.clone().flat_map(|p| p.sets.keys().cloned()));
        let service_ips = before(&t.service_ips, parts.clone().flat_map(|p| p.service_ips.keys().copied()));
        let node_ports = before(&t.node_ports, parts.clone().flat_map(|p| p.node_ports.keys().copied()));
        let endpoints = before(&t.endpoints, parts.clone().flat_map(|p| p.endpoints.keys().copied()));
        let np_endpoints = before(
            &t.node_port_endpoints,
            parts.clone().flat_map(|p| p.node_port_endpoints.keys().copied()),
        );
        let no_ep: BTreeMap<PortKey, bool> = parts
            .clone()
            .flat_map(|p| p.no_endpoint_node_ports.iter().copied())
            .map(|k| (k, t.no_endpoint_node_ports.contains(&k)))
            .collect();
        let hairpin: BTreeMap<Ipv4Addr, bool> = parts
            .flat_map(|p| p.hairpin.keys().copied())
            .map(|ip| (ip, t.hairpin.contains_key(&ip)))
            .collect();

        for old in &gone {
            self.total.remove(old);
        }
        for (vs, part) in came {
            self.total.add(&part);
            self.parts.insert(vs.key(), (vs, part));
        }

        let t = &self.total;
        let mut u = Update::default();
        let table = &s.table;
        let sets = changed(sets, &t.sets);
        for (name, _, new) in &sets {
            if let Some(timeout) = new {
                add_set(&mut u.pre, table, name, *timeout);
            }
        }
        let mut chains = changed(chains, &t.chains);
        // A pick chain kept from before is there already, with its rules; one no longer used
        // is kept.
        chains.retain(|(name, old, new)| match (old, new) {
            (None, Some(_)) => !self.kept.remove(name),
            (Some(_), None) if is_pick(name) => !self.kept.insert(name.clone()),
            _ => true,
        });
        for (name, old, _) in &chains {
            if old.is_none() {
                let _ = writeln!(u.pre, "add chain ip {table} {name}");
            }
        }
        for (name, old, new) in &chains {
            if let Some(rules) = new {
                if old.is_some() {
                    let _ = writeln!(u.pre, "flush chain ip {table} {name}");
                }
                write_rules(&mut u.pre, table, name, rules);
            }
        }
        let mut adds = Vec::new();
        let mut element = |old: Option<Entry>, new: Option<Entry>| {
            u.elements.extend(old.map(ElementOp::Delete));
            adds.extend(new.map(ElementOp::Add));
        };
        for (k, old, new) in changed(service_ips, &t.service_ips) {
            element(old.map(|c| Entry::ServiceIp(k, c)), new.map(|c| Entry::ServiceIp(k, c)));
        }
        for (k, old, new) in changed(node_ports, &t.node_ports) {
            element(old.map(|c| Entry::NodePort(k, c)), new.map(|c| Entry::NodePort(k, c)));
        }
        for ((k, slot), old, new) in changed(endpoints, &t.endpoints) {
            element(old.map(|b| Entry::Endpoint(k, slot, b)), new.map(|b| Entry::Endpoint(k, slot, b)));
        }
        for ((k, slot), old, new) in changed(np_endpoints, &t.node_port_endpoints) {
            element(
                old.map(|b| Entry::NodePortEndpoint(k, slot, b)),
                new.map(|b| Entry::NodePortEndpoint(k, slot, b)),
            );
        }
        for (k, was) in no_ep {
            let is = t.no_endpoint_node_ports.contains(&k);
            if was != is {
                let e = Entry::NoEndpointNodePort(k);
                if was { element(Some(e), None) } else { element(None, Some(e)) }
            }
        }
        for (ip, was) in hairpin {
            let is = t.hairpin.contains_key(&ip);
            if was != is {
                let e = Entry::Hairpin(ip);
                if was { element(Some(e), None) } else { element(None, Some(e)) }
            }
        }
        u.elements.extend(adds);
        let stale_chains: Vec<&String> = chains.iter().filter(|(_, _, new)| new.is_none()).map(|(n, _, _)| n).collect();
        let stale_sets: Vec<&String> = sets.iter().filter(|(_, _, new)| new.is_none()).map(|(n, _, _)| n).collect();
        remove_stale(&mut u.post, table, stale_chains, stale_sets);
        u
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
    let mut definitions = vec![
        (
            SERVICE_IPS,
            "map",
            "type ipv4_addr . inet_proto . inet_service : verdict".to_owned(),
        ),
        (NODE_PORTS, "map", "type inet_proto . inet_service : verdict".to_owned()),
    ];
    for p in [Protocol::Tcp, Protocol::Udp] {
        // `typeof`: the slot is what `numgen` returns, an integer of the host's byte order.
        let endpoints = format!("typeof ip daddr . {p} dport . numgen random mod 1 : ip daddr . {p} dport");
        definitions.push((endpoints_map(p), "map", endpoints));
        let node_ports = format!("typeof {p} dport . numgen random mod 1 : ip daddr . {p} dport");
        definitions.push((node_port_endpoints_map(p), "map", node_ports));
    }
    definitions.extend([
        (NO_ENDPOINT_NODE_PORTS, "set", "type inet_proto . inet_service".to_owned()),
        (HAIRPIN, "set", "type ipv4_addr . ipv4_addr".to_owned()),
    ]);
    for (name, kind, definition) in definitions {
        let _ = writeln!(out, "add {kind} ip {t} {name} {{ {definition}; }}");
    }
    for chain in BASE_CHAINS {
        let _ = writeln!(out, "flush chain ip {t} {chain}");
    }
    let range = s.service_cidr;
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
            // Not on loopback: a reply from a pod cannot reach 127.0.0.1 (kube-proxy's
            // nftables mode does the same), so `curl localhost:NODEPORT` is refused at once
            // instead of hanging; the node's own addresses serve node ports.
            format!("fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @{NODE_PORTS}"),
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

/// The update that makes the table exactly `rs` whatever it holds now (`kernel`, as listed):
/// every chain rewritten, maps and sets refilled in one transaction, strays removed afterwards.
/// Affinity sets that stay keep their entries.
pub fn full_update(rs: &Ruleset, s: &NftSettings, kernel: &Listing) -> Update {
    let t = &s.table;
    let mut u = Update::default();
    base(&mut u.pre, s);
    for (name, timeout) in &rs.sets {
        add_set(&mut u.pre, t, name, *timeout);
    }
    for name in rs.chains.keys() {
        let _ = writeln!(u.pre, "add chain ip {t} {name}");
    }
    for (name, rules) in &rs.chains {
        let _ = writeln!(u.pre, "flush chain ip {t} {name}");
        write_rules(&mut u.pre, t, name, rules);
    }
    u.elements.extend(FIXED_SETS.iter().map(|set| ElementOp::Flush(set)));
    u.elements.extend(rs.entries().into_iter().map(ElementOp::Add));
    let stale_chains: Vec<&String> = kernel
        .chains
        .iter()
        .filter(|c| !rs.chains.contains_key(*c) && !BASE_CHAINS.contains(&c.as_str()))
        .collect();
    let stale_sets: Vec<&String> = kernel
        .sets
        .iter()
        .filter(|n| !rs.sets.contains_key(*n) && !FIXED_SETS.contains(&n.as_str()))
        .collect();
    remove_stale(&mut u.post, t, stale_chains, stale_sets);
    u
}
