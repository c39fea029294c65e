//! The value checks Kubernetes makes on NetworkPolicies: at most the two directions, each peer
//! one of a pod/namespace selector pair or an address block (its exceptions strictly inside it),
//! and ports by number or name with a range only from a number.

use std::net::IpAddr;

use serde_json::Value;

use crate::problem::FieldPath;
use crate::validate::{Findings, check_protocol, port_name};

/// Checks a NetworkPolicy's spec.
pub(crate) fn check_network_policy(f: &mut Findings, path: &FieldPath, spec: &Value) {
    let types = path.key("policyTypes");
    let listed = spec["policyTypes"].as_array().map(Vec::as_slice).unwrap_or_default();
    if listed.len() > 2 {
        f.invalid(types.clone(), "may not specify more than two policyTypes");
    }
    for (i, t) in listed.iter().enumerate() {
        if let Some(t) = t.as_str()
            && !matches!(t, "Ingress" | "Egress")
        {
            f.invalid(
                types.index(i),
                format!("unsupported value {t:?}: supported values: \"Egress\", \"Ingress\""),
            );
        }
    }
    for (direction, peers) in [("ingress", "from"), ("egress", "to")] {
        for (i, rule) in spec[direction].as_array().into_iter().flatten().enumerate() {
            let at = path.key(direction).index(i);
            for (j, port) in rule["ports"].as_array().into_iter().flatten().enumerate() {
                check_port(f, &at.key("ports").index(j), port);
            }
            for (j, peer) in rule[peers].as_array().into_iter().flatten().enumerate() {
                check_peer(f, &at.key(peers).index(j), peer);
            }
        }
    }
}

fn check_port(f: &mut Findings, path: &FieldPath, port: &Value) {
    check_protocol(f, path.key("protocol"), &port["protocol"]);
    let number = match &port["port"] {
        Value::Number(n) => {
            let n = n.as_i64().unwrap_or(0);
            if !(1..=65535).contains(&n) {
                f.invalid(path.key("port"), format!("must be between 1 and 65535, inclusive (got {n})"));
            }
            Some(n)
        }
        Value::String(name) => {
            if let Some(e) = port_name(name) {
                f.invalid(path.key("port"), e);
            }
            None
        }
        _ => None,
    };
    if let Some(end) = port["endPort"].as_i64() {
        match number {
            None => f.invalid(
                path.key("endPort"),
                "may not be specified when `port` is a name or is not specified",
            ),
            Some(start) if end < start => f.invalid(path.key("endPort"), format!("must be greater than or equal to `port` ({start})")),
            Some(_) if end > 65535 => f.invalid(path.key("endPort"), format!("must be between 1 and 65535, inclusive (got {end})")),
            Some(_) => {}
        }
    }
}

fn check_peer(f: &mut Findings, path: &FieldPath, peer: &Value) {
    let selectors = !peer["podSelector"].is_null() || !peer["namespaceSelector"].is_null();
    let block = &peer["ipBlock"];
    if block.is_null() {
        if !selectors {
            f.missing(path.clone(), "must specify a peer: podSelector, namespaceSelector or ipBlock");
        }
        return;
    }
    if selectors {
        f.invalid(
            path.key("ipBlock"),
            "may not be specified together with podSelector or namespaceSelector",
        );
    }
    let Some(text) = block["cidr"].as_str() else { return };
    let Some(outer) = cidr(text) else {
        f.invalid(path.key("ipBlock").key("cidr"), format!("{text:?} is not a valid CIDR"));
        return;
    };
    for (k, except) in block["except"].as_array().into_iter().flatten().enumerate() {
        let Some(e) = except.as_str() else { continue };
        let at = path.key("ipBlock").key("except").index(k);
        match cidr(e) {
            None => f.invalid(at, format!("{e:?} is not a valid CIDR")),
            Some(inner) if !strictly_within(inner, outer) => f.invalid(at, format!("{e:?} must be a strict subset of `cidr` {text:?}")),
            Some(_) => {}
        }
    }
}

/// An address block `ADDRESS/PREFIX` (IPv4 or IPv6), its network address and prefix length.
fn cidr(text: &str) -> Option<(IpAddr, u8)> {
    let (address, prefix) = text.split_once('/')?;
    let address: IpAddr = address.parse().ok()?;
    let prefix: u8 = prefix.parse().ok()?;
    let bits = if address.is_ipv4() { 32 } else { 128 };
    (prefix <= bits).then(|| (mask(address, prefix), prefix))
}

fn mask(address: IpAddr, prefix: u8) -> IpAddr {
    match address {
        IpAddr::V4(a) => {
            let keep = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4((u32::from(a) & keep).into())
        }
        IpAddr::V6(a) => {
            let keep = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6((u128::from(a) & keep).into())
        }
    }
}

/// Whether block `inner` lies inside `outer` and is smaller than it.
fn strictly_within(inner: (IpAddr, u8), outer: (IpAddr, u8)) -> bool {
    inner.0.is_ipv4() == outer.0.is_ipv4() && inner.1 > outer.1 && mask(inner.0, outer.1) == outer.0
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::validate::check;

    fn messages(spec: serde_json::Value) -> Vec<String> {
        let object = json!({"metadata": {"name": "p", "namespace": "shop"}, "spec": spec});
        check("NetworkPolicy", &object)
            .into_iter()
            .map(|f| format!("{}: {}", f.path, f.message))
            .collect()
    }

    #[test]
    fn what_charts_ship_passes() {
        let spec = json!({
            "podSelector": {"matchLabels": {"app": "db"}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}},
                                  {"namespaceSelector": {}, "podSelector": {"matchLabels": {"role": "monitor"}}}],
                         "ports": [{"port": 5432}, {"port": "metrics", "protocol": "TCP"}]}],
            "egress": [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8", "169.254.169.254/32"]}},
                               {"ipBlock": {"cidr": "::/0"}}],
                        "ports": [{"port": 32000, "endPort": 32768}, {"port": 53, "protocol": "UDP"}]}],
        });
        assert_eq!(messages(spec), Vec::<String>::new());
    }

    #[test]
    fn bad_directions_peers_blocks_and_ports_are_located() {
        let spec = json!({
            "podSelector": {},
            "policyTypes": ["Ingress", "Sideways", "Ingress"],
            "ingress": [{"from": [{}, {"ipBlock": {"cidr": "10.0.0.0/33"}},
                                  {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.0.0.0/8", "192.168.0.0/16", "nope"]},
                                   "podSelector": {}}],
                         "ports": [{"port": 0}, {"port": "Bad_Name"}, {"port": "http", "endPort": 90},
                                   {"port": 100, "endPort": 90}, {"port": 80, "protocol": "ICMP"}]}],
        });
        assert_eq!(
            messages(spec),
            [
                "spec.policyTypes: may not specify more than two policyTypes",
                "spec.policyTypes[1]: unsupported value \"Sideways\": supported values: \"Egress\", \"Ingress\"",
                "spec.ingress[0].ports[0].port: must be between 1 and 65535, inclusive (got 0)",
                "spec.ingress[0].ports[1].port: a port name must be at most 15 lower-case letters, digits and '-', with at least one letter, got \"Bad_Name\"",
                "spec.ingress[0].ports[2].endPort: may not be specified when `port` is a name or is not specified",
                "spec.ingress[0].ports[3].endPort: must be greater than or equal to `port` (100)",
                "spec.ingress[0].ports[4].protocol: unsupported value \"ICMP\": supported values: \"SCTP\", \"TCP\", \"UDP\"",
                "spec.ingress[0].from[0]: must specify a peer: podSelector, namespaceSelector or ipBlock",
                "spec.ingress[0].from[1].ipBlock.cidr: \"10.0.0.0/33\" is not a valid CIDR",
                "spec.ingress[0].from[2].ipBlock: may not be specified together with podSelector or namespaceSelector",
                "spec.ingress[0].from[2].ipBlock.except[0]: \"10.0.0.0/8\" must be a strict subset of `cidr` \"10.0.0.0/8\"",
                "spec.ingress[0].from[2].ipBlock.except[1]: \"192.168.0.0/16\" must be a strict subset of `cidr` \"10.0.0.0/8\"",
                "spec.ingress[0].from[2].ipBlock.except[2]: \"nope\" is not a valid CIDR",
            ]
        );
    }
}
