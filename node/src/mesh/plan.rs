//! The pure core of the pod network across hosts: from the Node objects, the peers this node
//! must reach and how (a route per peer's pod range, and for VXLAN the neighbour and forwarding
//! entries that route needs), and the difference between that and what the kernel holds.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use capstan_api::cidr::Cidr;
use serde_json::Value;

/// Node annotation: the MAC address of the node's VXLAN device.
pub const ANNOTATION_VTEP_MAC: &str = "capstan.dev/vtep-mac";
/// Node annotation: the address other nodes send the node's pod traffic to.
pub const ANNOTATION_UNDERLAY_IP: &str = "capstan.dev/underlay-ip";

/// How this node reaches the pod ranges of the others.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Backend {
    /// One VXLAN device; works across routed networks.
    #[default]
    Vxlan,
    /// A route per node via its address; the nodes must share one L2 segment.
    HostGw,
    /// Nothing: the pods reach only this node's pods (one host, or a network of your own).
    None,
}

impl std::str::FromStr for Backend {
    type Err = String;

    fn from_str(s: &str) -> Result<Backend, String> {
        match s {
            "vxlan" => Ok(Backend::Vxlan),
            "host-gw" => Ok(Backend::HostGw),
            "none" => Ok(Backend::None),
            other => Err(format!("unknown pod network {other:?}: expected vxlan, host-gw or none")),
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backend::Vxlan => "vxlan",
            Backend::HostGw => "host-gw",
            Backend::None => "none",
        })
    }
}

/// The bytes VXLAN adds to every packet (outer IPv4 20, UDP 8, VXLAN 8, inner Ethernet 14).
pub const VXLAN_OVERHEAD: u32 = 50;

impl Backend {
    /// The MTU pods get on an underlay of `underlay_mtu`.
    pub fn pod_mtu(self, underlay_mtu: u32) -> u32 {
        match self {
            Backend::Vxlan => underlay_mtu.saturating_sub(VXLAN_OVERHEAD),
            Backend::HostGw | Backend::None => underlay_mtu,
        }
    }
}

/// A MAC address.
pub type Mac = [u8; 6];

pub fn format_mac(mac: &Mac) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

pub fn parse_mac(text: &str) -> Option<Mac> {
    let parts: Vec<u8> = text.split(':').map(|p| u8::from_str_radix(p, 16).ok()).collect::<Option<_>>()?;
    parts.try_into().ok().filter(|m: &Mac| m.iter().any(|b| *b != 0) && m[0] & 1 == 0)
}

/// The VXLAN device's MAC, made from the node's underlay address so that a device made again
/// keeps it (peers need no update): locally administered, unicast.
pub fn vtep_mac(underlay: Ipv4Addr) -> Mac {
    let o = underlay.octets();
    [0x0a, 0xca, o[0], o[1], o[2], o[3]]
}

/// Another node, as its Node object describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub name: String,
    pub pod_cidr: Cidr,
    pub underlay: Ipv4Addr,
    /// Absent when the node runs no VXLAN device (another backend, or not yet published).
    pub vtep_mac: Option<Mac>,
}

/// A peer from its Node object; None when it has no pod range or no address yet.
pub fn peer(node: &Value) -> Option<Peer> {
    let name = node["metadata"]["name"].as_str()?.to_owned();
    let pod_cidr: Cidr = node["spec"]["podCIDR"].as_str()?.parse().ok()?;
    let annotations = &node["metadata"]["annotations"];
    let internal = || {
        node["status"]["addresses"].as_array()?.iter().find(|a| a["type"] == "InternalIP")?["address"]
            .as_str()
            .map(str::to_owned)
    };
    let underlay = annotations[ANNOTATION_UNDERLAY_IP]
        .as_str()
        .map(str::to_owned)
        .or_else(internal)?
        .parse()
        .ok()?;
    let vtep_mac = annotations[ANNOTATION_VTEP_MAC].as_str().and_then(parse_mac);
    Some(Peer {
        name,
        pod_cidr,
        underlay,
        vtep_mac,
    })
}

/// A route to a peer's pod range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    pub gateway: Ipv4Addr,
    /// Through the VXLAN device, with the gateway declared on-link (it is the peer's `.0`,
    /// which has no address on any wire); otherwise via the underlay.
    pub vxlan: bool,
}

/// What the kernel should hold for the peers (and, read back, what it holds).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Mesh {
    /// Our routes, by the pod range they lead to.
    pub routes: BTreeMap<Cidr, Route>,
    /// VXLAN: each peer's `.0` → its VTEP MAC (permanent neighbour entries on the device).
    pub neighbours: BTreeMap<Ipv4Addr, Mac>,
    /// VXLAN: each VTEP MAC → the peer's underlay address (forwarding entries of the device).
    pub fdb: BTreeMap<Mac, Ipv4Addr>,
}

/// Why a peer is left out; each is logged once per change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Skipped {
    /// Same underlay address: another agent on this very host (its range is on a local bridge).
    SameHost(String),
    /// VXLAN, but the peer published no VTEP MAC (it runs another backend or is starting).
    NoVtep(String),
    /// host-gw, but the peer's address is not on this node's segment.
    NotOnSegment(String, Ipv4Addr),
    /// The peer claims this node's pod range, or a range overlapping one already taken.
    Overlap(String, Cidr),
}

impl std::fmt::Display for Skipped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Skipped::SameHost(n) => write!(f, "node {n} shares this host's address: its pods are local"),
            Skipped::NoVtep(n) => write!(f, "node {n} has published no VXLAN endpoint ({ANNOTATION_VTEP_MAC})"),
            Skipped::NotOnSegment(n, ip) => write!(f, "node {n} ({ip}) is not on this node's segment: host-gw cannot reach it"),
            Skipped::Overlap(n, c) => write!(f, "node {n}'s pod range {c} overlaps a range already routed"),
        }
    }
}

/// This node, as the plan needs it.
#[derive(Clone, Copy, Debug)]
pub struct Local {
    pub underlay: Ipv4Addr,
    /// The underlay's own network (host-gw peers must be in it).
    pub segment: Cidr,
    pub pod_cidr: Cidr,
}

fn overlaps(a: Cidr, b: Cidr) -> bool {
    a.contains(b.network()) || b.contains(a.network())
}

/// What the kernel should hold to reach `peers` with `backend`.
pub fn plan(backend: Backend, local: &Local, peers: &[Peer]) -> (Mesh, Vec<Skipped>) {
    let mut mesh = Mesh::default();
    let mut skipped = Vec::new();
    if backend == Backend::None {
        return (mesh, skipped);
    }
    let mut peers: Vec<&Peer> = peers.iter().collect();
    peers.sort_by(|a, b| a.name.cmp(&b.name));
    for p in peers {
        if p.underlay == local.underlay {
            skipped.push(Skipped::SameHost(p.name.clone()));
            continue;
        }
        if overlaps(p.pod_cidr, local.pod_cidr) || mesh.routes.keys().any(|c| overlaps(*c, p.pod_cidr)) {
            skipped.push(Skipped::Overlap(p.name.clone(), p.pod_cidr));
            continue;
        }
        match backend {
            Backend::Vxlan => {
                let Some(mac) = p.vtep_mac else {
                    skipped.push(Skipped::NoVtep(p.name.clone()));
                    continue;
                };
                let gateway = p.pod_cidr.network();
                mesh.neighbours.insert(gateway, mac);
                mesh.fdb.insert(mac, p.underlay);
                mesh.routes.insert(p.pod_cidr, Route { gateway, vxlan: true });
            }
            Backend::HostGw => {
                if !local.segment.contains(p.underlay) {
                    skipped.push(Skipped::NotOnSegment(p.name.clone(), p.underlay));
                    continue;
                }
                mesh.routes.insert(
                    p.pod_cidr,
                    Route {
                        gateway: p.underlay,
                        vxlan: false,
                    },
                );
            }
            Backend::None => {}
        }
    }
    (mesh, skipped)
}

/// The changes that turn `current` into `desired`, in the order they are made: neighbour and
/// forwarding entries before the routes that use them, and removals of routes before the
/// entries they used.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub remove_routes: Vec<Cidr>,
    pub remove_fdb: Vec<(Mac, Ipv4Addr)>,
    pub remove_neighbours: Vec<(Ipv4Addr, Mac)>,
    pub set_neighbours: Vec<(Ipv4Addr, Mac)>,
    pub set_fdb: Vec<(Mac, Ipv4Addr)>,
    pub set_routes: Vec<(Cidr, Route)>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        *self == Changes::default()
    }
}

fn diff_map<K: Ord + Copy, V: PartialEq + Copy>(desired: &BTreeMap<K, V>, current: &BTreeMap<K, V>) -> (Vec<(K, V)>, Vec<(K, V)>) {
    let set = desired
        .iter()
        .filter(|(k, v)| current.get(k) != Some(v))
        .map(|(k, v)| (*k, *v))
        .collect();
    let remove = current
        .iter()
        .filter(|(k, v)| desired.get(k) != Some(v))
        .map(|(k, v)| (*k, *v))
        .collect();
    (set, remove)
}

pub fn diff(desired: &Mesh, current: &Mesh) -> Changes {
    let (set_routes, removed_routes) = diff_map(&desired.routes, &current.routes);
    let (set_neighbours, remove_neighbours) = diff_map(&desired.neighbours, &current.neighbours);
    let (set_fdb, remove_fdb) = diff_map(&desired.fdb, &current.fdb);
    Changes {
        // A changed route is replaced in place; only ranges no longer wanted are removed.
        remove_routes: removed_routes
            .into_iter()
            .map(|(c, _)| c)
            .filter(|c| !desired.routes.contains_key(c))
            .collect(),
        remove_fdb,
        remove_neighbours,
        set_neighbours,
        set_fdb,
        set_routes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, cidr: &str, ip: &str, mac: Option<&str>) -> Value {
        let mut annotations = json!({});
        if let Some(m) = mac {
            annotations[ANNOTATION_VTEP_MAC] = json!(m);
        }
        json!({
            "metadata": {"name": name, "annotations": annotations},
            "spec": {"podCIDR": cidr},
            "status": {"addresses": [{"type": "InternalIP", "address": ip}]},
        })
    }

    fn local() -> Local {
        Local {
            underlay: "10.250.0.11".parse().unwrap(),
            segment: "10.250.0.0/24".parse().unwrap(),
            pod_cidr: "10.244.1.0/24".parse().unwrap(),
        }
    }

    #[test]
    fn peers_come_from_node_objects_and_the_underlay_annotation_wins() {
        let mut n = node("b", "10.244.2.0/24", "10.250.0.12", Some("0a:ca:0a:fa:00:0c"));
        let p = peer(&n).unwrap();
        assert_eq!(p.underlay, Ipv4Addr::new(10, 250, 0, 12));
        assert_eq!(p.vtep_mac, Some([0x0a, 0xca, 10, 250, 0, 12]));
        n["metadata"]["annotations"][ANNOTATION_UNDERLAY_IP] = json!("192.168.9.9");
        assert_eq!(peer(&n).unwrap().underlay, Ipv4Addr::new(192, 168, 9, 9));
        assert!(peer(&json!({"metadata": {"name": "x"}, "spec": {}})).is_none(), "no range yet");
        assert_eq!(parse_mac("01:00:5e:00:00:01"), None, "a multicast MAC is no VTEP");
        assert_eq!(format_mac(&vtep_mac(Ipv4Addr::new(10, 250, 0, 12))), "0a:ca:0a:fa:00:0c");
    }

    #[test]
    fn vxlan_gives_a_neighbour_a_forwarding_entry_and_an_onlink_route_per_peer() {
        let peers: Vec<Peer> = [
            node("b", "10.244.2.0/24", "10.250.0.12", Some("0a:ca:0a:fa:00:0c")),
            node("c", "10.244.3.0/24", "10.9.0.13", Some("0a:ca:0a:09:00:0d")),
            node("d", "10.244.4.0/24", "10.250.0.14", None),
            node("twin", "10.244.5.0/24", "10.250.0.11", Some("0a:ca:0a:fa:00:0b")),
            node("thief", "10.244.1.0/24", "10.250.0.15", Some("0a:ca:0a:fa:00:0f")),
        ]
        .iter()
        .filter_map(peer)
        .collect();
        let (mesh, skipped) = plan(Backend::Vxlan, &local(), &peers);
        let b: Cidr = "10.244.2.0/24".parse().unwrap();
        assert_eq!(
            mesh.routes.get(&b),
            Some(&Route {
                gateway: Ipv4Addr::new(10, 244, 2, 0),
                vxlan: true
            })
        );
        assert_eq!(mesh.routes.len(), 2, "b and c, across the routed network too");
        assert_eq!(mesh.neighbours[&Ipv4Addr::new(10, 244, 3, 0)], [0x0a, 0xca, 10, 9, 0, 13]);
        assert_eq!(mesh.fdb[&[0x0a, 0xca, 10, 250, 0, 12]], Ipv4Addr::new(10, 250, 0, 12));
        assert_eq!(
            skipped,
            vec![
                Skipped::NoVtep("d".into()),
                Skipped::Overlap("thief".into(), "10.244.1.0/24".parse().unwrap()),
                Skipped::SameHost("twin".into()),
            ]
        );
    }

    #[test]
    fn host_gw_routes_via_the_peer_on_the_segment_only() {
        let peers: Vec<Peer> = [
            node("b", "10.244.2.0/24", "10.250.0.12", None),
            node("c", "10.244.3.0/24", "10.9.0.13", None),
        ]
        .iter()
        .filter_map(peer)
        .collect();
        let (mesh, skipped) = plan(Backend::HostGw, &local(), &peers);
        assert_eq!(mesh.routes.len(), 1);
        assert_eq!(mesh.routes.values().next().unwrap().gateway, Ipv4Addr::new(10, 250, 0, 12));
        assert!(mesh.neighbours.is_empty() && mesh.fdb.is_empty());
        assert_eq!(skipped, vec![Skipped::NotOnSegment("c".into(), Ipv4Addr::new(10, 9, 0, 13))]);
        assert_eq!(plan(Backend::None, &local(), &peers).0, Mesh::default());
    }

    #[test]
    fn the_diff_replaces_changed_entries_and_removes_the_rest() {
        let peers = |ip: &str| vec![peer(&node("b", "10.244.2.0/24", ip, Some("0a:ca:0a:fa:00:0c"))).unwrap()];
        let (before, _) = plan(Backend::Vxlan, &local(), &peers("10.250.0.12"));
        assert!(diff(&before, &before).is_empty());
        let created = diff(&before, &Mesh::default());
        assert_eq!(
            (created.set_neighbours.len(), created.set_fdb.len(), created.set_routes.len()),
            (1, 1, 1)
        );
        // The peer moved to another address: only its forwarding entry changes.
        let (moved, _) = plan(Backend::Vxlan, &local(), &peers("10.250.0.99"));
        let c = diff(&moved, &before);
        assert_eq!(c.set_fdb, vec![([0x0a, 0xca, 10, 250, 0, 12], Ipv4Addr::new(10, 250, 0, 99))]);
        assert_eq!(c.remove_fdb, vec![([0x0a, 0xca, 10, 250, 0, 12], Ipv4Addr::new(10, 250, 0, 12))]);
        assert!(c.set_routes.is_empty() && c.remove_routes.is_empty());
        // The peer left: everything goes.
        let gone = diff(&Mesh::default(), &before);
        assert_eq!(gone.remove_routes, vec!["10.244.2.0/24".parse().unwrap()]);
        assert_eq!((gone.remove_fdb.len(), gone.remove_neighbours.len()), (1, 1));
        // A backend switch replaces the route in place.
        let (hostgw, _) = plan(Backend::HostGw, &local(), &peers("10.250.0.12"));
        let c = diff(&hostgw, &before);
        assert_eq!(c.set_routes.len(), 1);
        assert!(c.remove_routes.is_empty());
    }

    #[test]
    fn pod_mtu_leaves_room_for_the_encapsulation() {
        assert_eq!(Backend::Vxlan.pod_mtu(1500), 1450);
        assert_eq!(Backend::HostGw.pod_mtu(1500), 1500);
        assert_eq!("host-gw".parse::<Backend>(), Ok(Backend::HostGw));
        assert!("flannel".parse::<Backend>().is_err());
    }
}
