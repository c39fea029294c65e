//! The IPVS backend's pure core: the model's virtual services become IPVS virtual and real
//! servers, and two such tables become the least list of requests that turns one into the other
//! (one endpoint change is one destination request).

use capstan_api::cidr::Cidr;
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use super::family::{Message, RealServer, VirtualServer};
use super::kernel::Request;
use crate::model::{Frontend, Protocol, VirtualService};

/// Kubernetes' node port range; virtual services on a node address in it are ours.
pub const NODE_PORTS: std::ops::RangeInclusive<u16> = 30000..=32767;

/// How a kernel virtual service is named.
pub type Key = (Protocol, Ipv4Addr, u16);

/// What the kernel should hold (or holds): virtual servers by key, with their real servers
/// sorted.
pub type Table = BTreeMap<Key, (VirtualServer, Vec<RealServer>)>;

/// What the plan needs to know about the node.
#[derive(Clone, Debug)]
pub struct IpvsSettings {
    /// IPVS scheduler name: rr (default), wrr, lc, sh, mh.
    pub scheduler: String,
    pub service_cidr: Cidr,
    /// The node's own addresses: node ports get a virtual service on each.
    pub node_ips: Vec<Ipv4Addr>,
}

/// The kernel table for `services`.
pub fn table(services: &[VirtualService], settings: &IpvsSettings) -> Table {
    let mut out = Table::new();
    for vs in services {
        let addrs: Vec<(Ipv4Addr, u16)> = match vs.frontend {
            Frontend::ClusterIp(ip, port) => vec![(ip, port)],
            Frontend::NodePort(port) => settings.node_ips.iter().map(|ip| (*ip, port)).collect(),
        };
        let mut reals: Vec<RealServer> = vs
            .backends
            .iter()
            .map(|(addr, port)| RealServer {
                addr: *addr,
                port: *port,
                weight: 1,
            })
            .collect();
        reals.sort();
        reals.dedup();
        for (addr, port) in addrs {
            let server = VirtualServer {
                protocol: vs.protocol,
                addr,
                port,
                scheduler: settings.scheduler.clone(),
                persistence: vs.affinity.unwrap_or(0),
            };
            out.insert((vs.protocol, addr, port), (server, reals.clone()));
        }
    }
    out
}

/// The ClusterIPs that must be local addresses of the node (bound to the VIP interface) for
/// IPVS to see their traffic.
pub fn vips(table: &Table, settings: &IpvsSettings) -> BTreeSet<Ipv4Addr> {
    table
        .keys()
        .map(|(_, ip, _)| *ip)
        .filter(|ip| settings.service_cidr.contains(*ip))
        .collect()
}

/// Whether a virtual service found in the kernel is one a proxy with `settings` made: on a
/// service address, or on a node address in the node port range. Everything else is someone
/// else's and is never touched.
pub fn owned(key: &Key, settings: &IpvsSettings) -> bool {
    let (_, ip, port) = *key;
    settings.service_cidr.contains(ip) || (settings.node_ips.contains(&ip) && NODE_PORTS.contains(&port))
}

/// The requests that turn `current` into `wanted`. Entries of `current` that are not ours are
/// left alone.
pub fn diff(current: &Table, wanted: &Table, settings: &IpvsSettings) -> Vec<Request> {
    let mut out = Vec::new();
    for (key, (server, reals)) in wanted {
        match current.get(key) {
            None => {
                out.push(Request {
                    message: Message::new_service(server),
                    what: format!("new service {}", describe(server)),
                });
                out.extend(reals.iter().map(|r| new_dest(server, r)));
            }
            Some((old_server, old_reals)) => {
                if old_server != server {
                    out.push(Request {
                        message: Message::set_service(server),
                        what: format!("change of service {}", describe(server)),
                    });
                }
                out.extend(dest_diff(server, old_reals, reals));
            }
        }
    }
    for (key, (server, _)) in current {
        if !wanted.contains_key(key) && owned(key, settings) {
            out.push(Request {
                message: Message::del_service(server),
                what: format!("removal of service {}", describe(server)),
            });
        }
    }
    out
}

fn dest_diff(server: &VirtualServer, old: &[RealServer], new: &[RealServer]) -> Vec<Request> {
    let key = |r: &RealServer| (r.addr, r.port);
    let old_by: BTreeMap<_, _> = old.iter().map(|r| (key(r), r)).collect();
    let new_by: BTreeMap<_, _> = new.iter().map(|r| (key(r), r)).collect();
    let mut out = Vec::new();
    // Removals first: a stopping endpoint leaves before anything else happens.
    for (k, r) in &old_by {
        if !new_by.contains_key(k) {
            out.push(Request {
                message: Message::del_dest(server, r),
                what: format!("removal of {}:{} from {}", r.addr, r.port, describe(server)),
            });
        }
    }
    for (k, r) in &new_by {
        match old_by.get(k) {
            None => out.push(new_dest(server, r)),
            Some(o) if o.weight != r.weight => out.push(Request {
                message: Message::set_dest(server, r),
                what: format!("weight of {}:{} in {}", r.addr, r.port, describe(server)),
            }),
            Some(_) => {}
        }
    }
    out
}

fn new_dest(server: &VirtualServer, r: &RealServer) -> Request {
    Request {
        message: Message::new_dest(server, r),
        what: format!("new real server {}:{} for {}", r.addr, r.port, describe(server)),
    }
}

fn describe(s: &VirtualServer) -> String {
    format!("{} {}:{}", s.protocol, s.addr, s.port)
}

/// The kernel's listing as a table.
pub fn from_listing(listing: BTreeMap<VirtualServer, Vec<RealServer>>) -> Table {
    listing
        .into_iter()
        .map(|(s, mut reals)| {
            reals.sort();
            ((s.protocol, s.addr, s.port), (s, reals))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipvs::family::Command;

    fn settings() -> IpvsSettings {
        IpvsSettings {
            scheduler: "rr".into(),
            service_cidr: capstan_api::cidr::SERVICE_RANGE,
            node_ips: vec![Ipv4Addr::new(192, 168, 1, 5)],
        }
    }

    fn web(backends: &[(u8, u16)]) -> VirtualService {
        VirtualService {
            frontend: Frontend::ClusterIp(Ipv4Addr::new(10, 96, 0, 10), 80),
            protocol: Protocol::Tcp,
            service: "default/web:http".into(),
            affinity: None,
            backends: backends.iter().map(|(h, p)| (Ipv4Addr::new(10, 244, 0, *h), *p)).collect(),
            policy: Default::default(),
        }
    }

    fn cmds(reqs: &[Request]) -> Vec<Command> {
        reqs.iter().map(|r| r.message.cmd).collect()
    }

    #[test]
    fn a_new_service_is_one_service_and_one_request_per_endpoint() {
        let s = settings();
        let wanted = table(&[web(&[(2, 8080), (3, 8080)])], &s);
        let reqs = diff(&Table::new(), &wanted, &s);
        assert_eq!(cmds(&reqs), [Command::NewService, Command::NewDest, Command::NewDest]);
        assert_eq!(vips(&wanted, &s), BTreeSet::from([Ipv4Addr::new(10, 96, 0, 10)]));
    }

    #[test]
    fn one_endpoint_change_touches_only_its_real_server() {
        let s = settings();
        let old = table(&[web(&[(2, 8080), (3, 8080)])], &s);
        let new = table(&[web(&[(2, 8080), (4, 8080)])], &s);
        let reqs = diff(&old, &new, &s);
        assert_eq!(cmds(&reqs), [Command::DelDest, Command::NewDest]);
        assert!(reqs[0].what.contains("10.244.0.3:8080"), "{}", reqs[0].what);
        assert!(diff(&new, &new, &s).is_empty());
    }

    #[test]
    fn affinity_is_persistence_and_a_change_of_it_is_one_set() {
        let s = settings();
        let old = table(&[web(&[(2, 8080)])], &s);
        let mut sticky = web(&[(2, 8080)]);
        sticky.affinity = Some(600);
        let new = table(&[sticky], &s);
        assert_eq!(new.values().next().map(|(v, _)| v.persistence), Some(600));
        assert_eq!(cmds(&diff(&old, &new, &s)), [Command::SetService]);
    }

    #[test]
    fn node_ports_sit_on_every_node_address_and_foreign_services_are_left_alone() {
        let mut s = settings();
        s.node_ips.push(Ipv4Addr::new(10, 0, 0, 1));
        let mut np = web(&[(2, 8080)]);
        np.frontend = Frontend::NodePort(30080);
        let wanted = table(&[np], &s);
        assert_eq!(wanted.len(), 2);
        assert!(vips(&wanted, &s).is_empty(), "node addresses are not VIPs");
        // The kernel also holds someone else's service and a stale one of ours.
        let mut current = wanted.clone();
        let foreign = VirtualServer {
            protocol: Protocol::Tcp,
            addr: Ipv4Addr::new(192, 168, 1, 5),
            port: 80,
            scheduler: "wlc".into(),
            persistence: 0,
        };
        current.insert((Protocol::Tcp, foreign.addr, 80), (foreign, vec![]));
        let stale = table(&[web(&[])], &s);
        current.extend(stale);
        let reqs = diff(&current, &wanted, &s);
        assert_eq!(cmds(&reqs), [Command::DelService]);
        assert!(reqs[0].what.contains("10.96.0.10:80"), "{}", reqs[0].what);
    }
}
