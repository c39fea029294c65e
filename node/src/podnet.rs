//! The node's pod network: the Engine starts each pod sandbox with no network (loopback only),
//! and this module connects it — an address from the node's range, kept per pod so that a new
//! sandbox keeps the pod's IP, and a veth pair from the sandbox's namespace to the node's bridge
//! (the bridge and its masquerading come with the node's Docker network). Attaching the sandbox
//! through Docker instead would start Docker's embedded DNS in every sandbox (iptables run inside
//! each namespace): the slowest part of a pod's start, for a resolver pods do not use.

use capstan_api::cidr::Cidr;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use capstan_netlink::rtnl::Rtnl;

use crate::mesh::fastpath::FastPath;
use crate::mesh::plan::Mac;
use netlink_packet_core::{DefaultNla, NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage, LinkProtoInfoBridge};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

/// The pod's interface inside its sandbox.
pub const POD_INTERFACE: &str = "eth0";

#[derive(Debug, thiserror::Error)]
pub enum PodNetError {
    #[error("the node has no pod range yet")]
    NoRange,
    #[error("no free address left in the node's pod range {0}")]
    Full(String),
    #[error("the sandbox is not running (no process to find its network namespace by)")]
    NotRunning,
    #[error("the pod asks for the host's network, but the node's address {0:?} is not an IPv4 address")]
    HostAddress(String),
    #[error("{step}: {source}{}", if source.raw_os_error() == Some(libc::EPERM) { " (the node agent needs CAP_NET_ADMIN)" } else { "" })]
    Kernel {
        step: String,
        #[source]
        source: io::Error,
    },
}

fn kernel(step: impl Into<String>) -> impl FnOnce(io::Error) -> PodNetError {
    let step = step.into();
    move |source| PodNetError::Kernel { step, source }
}

/// A pod range's gateway (the node's bridge): its first address.
pub fn gateway(range: Cidr) -> Ipv4Addr {
    range.nth(1).unwrap_or(range.network())
}

/// Addresses of one range, handed out per pod uid. The next address is looked for after the
/// last one given, so that a freed address is not reused at once (connections to the old pod
/// may still be on their way).
#[derive(Debug)]
pub struct Ipam {
    range: Cidr,
    by_pod: HashMap<String, Ipv4Addr>,
    owner: HashMap<Ipv4Addr, String>,
    /// The last address given, as an index of the usable ones (offset 2 is index 0).
    last: u32,
}

impl Ipam {
    /// A range like `10.244.1.0/24`; its first address is the gateway (the bridge).
    pub fn new(cidr: &str) -> Option<Ipam> {
        let range: Cidr = cidr.parse().ok().filter(|r: &Cidr| (8..=30).contains(&r.prefix()))?;
        Some(Ipam {
            range,
            by_pod: HashMap::new(),
            owner: HashMap::new(),
            last: range.size() as u32 - 4,
        })
    }

    pub fn prefix(&self) -> u8 {
        self.range.prefix()
    }

    pub fn gateway(&self) -> Ipv4Addr {
        gateway(self.range)
    }

    /// Records an address found in use (an adopted sandbox); false when it is outside the range
    /// or another pod holds it.
    pub fn reserve(&mut self, uid: &str, ip: Ipv4Addr) -> bool {
        if !self.range.contains(ip) || self.owner.get(&ip).is_some_and(|o| o != uid) {
            return false;
        }
        if let Some(old) = self.by_pod.insert(uid.to_owned(), ip) {
            self.owner.remove(&old);
        }
        self.owner.insert(ip, uid.to_owned());
        true
    }

    /// The pod's address: the one it has, else the next free one.
    pub fn assign(&mut self, uid: &str) -> Result<Ipv4Addr, PodNetError> {
        if let Some(ip) = self.by_pod.get(uid) {
            return Ok(*ip);
        }
        // Offsets 0 (the network), 1 (the gateway) and the last (broadcast) are never given.
        let usable = self.range.size() as u32 - 3;
        for step in 1..=usable {
            let index = (self.last + step) % usable;
            let Some(ip) = self.range.nth(u64::from(2 + index)) else { break };
            if !self.owner.contains_key(&ip) {
                self.last = index;
                self.reserve(uid, ip);
                return Ok(ip);
            }
        }
        Err(PodNetError::Full(self.range.to_string()))
    }

    pub fn release(&mut self, uid: &str) {
        if let Some(ip) = self.by_pod.remove(uid) {
            self.owner.remove(&ip);
        }
    }
}

/// The node's pod network: its bridge and the addresses given out.
#[derive(Debug)]
pub struct PodNet {
    /// None: addresses are handed out but nothing is wired (see [`PodNet::addresses_only`]).
    bridge: Option<String>,
    /// The pods' MTU (the underlay's, less what the overlay adds); `None`: the kernel's default.
    mtu: Option<u32>,
    ipam: Mutex<Option<Ipam>>,
    /// The sandboxes this agent connected or adopted: host-end interface name → the pod's
    /// address and MAC (what the fast path needs to deliver to it; None: not found).
    wired: Mutex<HashMap<String, Option<(Ipv4Addr, Mac)>>>,
    /// The VXLAN fast path, once the pod network across hosts has loaded it.
    fast: Mutex<Option<Arc<FastPath>>>,
}

impl PodNet {
    pub fn new(bridge: String, mtu: Option<u32>) -> PodNet {
        PodNet {
            bridge: Some(bridge),
            mtu,
            ipam: Mutex::new(None),
            wired: Mutex::default(),
            fast: Mutex::default(),
        }
    }

    pub fn mtu(&self) -> Option<u32> {
        self.mtu
    }

    /// A pod network that hands out addresses and wires nothing: for unit tests of the worker
    /// on the fake runtime, whose sandboxes have no network namespace.
    #[cfg(test)]
    pub fn addresses_only() -> PodNet {
        PodNet {
            bridge: None,
            mtu: None,
            ipam: Mutex::new(None),
            wired: Mutex::default(),
            fast: Mutex::default(),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Ipam) -> T) -> Option<T> {
        lock(&self.ipam).as_mut().map(f)
    }

    /// Sets the node's range (once it is known, or when it changed: the old addresses went with
    /// the old network).
    pub fn set_range(&self, cidr: &str) {
        let mut ipam = lock(&self.ipam);
        if ipam.as_ref().is_none_or(|i| Some(i.range) != cidr.parse().ok()) {
            *ipam = Ipam::new(cidr);
        }
    }

    pub fn reserve(&self, uid: &str, ip: &str) {
        let Ok(ip) = ip.parse() else { return };
        if self.with(|i| i.reserve(uid, ip)) == Some(false) {
            tracing::warn!(pod_uid = uid, %ip, "an adopted sandbox holds an address outside the range or taken by another pod");
        }
    }

    pub fn assign(&self, uid: &str) -> Result<Ipv4Addr, PodNetError> {
        self.with(|i| i.assign(uid)).unwrap_or(Err(PodNetError::NoRange))
    }

    pub fn release(&self, uid: &str) {
        self.with(|i| i.release(uid));
    }

    /// Connects the running sandbox (main process `pid`, container `sandbox_id`) to the bridge
    /// with address `ip`.
    pub async fn attach(&self, pid: u32, sandbox_id: &str, ip: Ipv4Addr) -> Result<(), PodNetError> {
        let (prefix, gateway) = self.with(|i| (i.prefix(), i.gateway())).ok_or(PodNetError::NoRange)?;
        let Some(bridge) = self.bridge.clone() else { return Ok(()) };
        let link = Link {
            pid,
            host: host_interface(sandbox_id),
            bridge,
            ip,
            prefix,
            gateway,
            mtu: self.mtu,
        };
        let host = link.host.clone();
        let (index, mac) = tokio::task::spawn_blocking(move || link.attach())
            .await
            .unwrap_or_else(|e| Err(kernel("the attaching thread")(io::Error::other(e.to_string()))))?;
        self.wire(host, index, Some((ip, mac))).await;
        Ok(())
    }

    /// A running sandbox an earlier agent connected: its interface and MAC are looked up once,
    /// so that the fast path delivers to it too.
    pub async fn adopt(&self, pid: u32, sandbox_id: &str, ip: Ipv4Addr) {
        let host = host_interface(sandbox_id);
        if self.bridge.is_none() || lock(&self.wired).contains_key(&host) {
            return;
        }
        let name = host.clone();
        let found = tokio::task::spawn_blocking(move || -> io::Result<(u32, Mac)> {
            let missing = || io::Error::from_raw_os_error(libc::ENODEV);
            let index = Rtnl::open()?.index_of(&name)?.ok_or_else(missing)?;
            let mut pod = Rtnl::open_in(&PathBuf::from(format!("/proc/{pid}/ns/net")))?;
            let eth0 = pod.index_of(POD_INTERFACE)?.ok_or_else(missing)?;
            Ok((index, mac_of(&mut pod, eth0)?))
        })
        .await;
        match found {
            Ok(Ok((index, mac))) => self.wire(host, index, Some((ip, mac))).await,
            other => {
                tracing::debug!(interface = %host, result = ?other.map(|r| r.map(|_| ())), "an adopted sandbox's interface was not found");
                lock(&self.wired).insert(host, None);
            }
        }
    }

    /// Records a connected sandbox and puts the fast path on it, if there is one yet.
    async fn wire(&self, host: String, index: u32, pod: Option<(Ipv4Addr, Mac)>) {
        // Recorded before the fast path is looked at: a fast path set meanwhile finds the pod
        // here, or the pod finds the fast path.
        lock(&self.wired).insert(host.clone(), pod);
        let Some(fast) = self.fast_path() else { return };
        let on = tokio::task::spawn_blocking(move || {
            let mut rtnl = Rtnl::open().map_err(|e| e.to_string())?;
            fast.attach_pod(&mut rtnl, index, pod).map_err(|e| e.to_string())
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        if let Err(e) = on {
            tracing::warn!(interface = %host, error = %e, "the pod takes the kernel's path: the fast path failed");
        }
    }

    fn fast_path(&self) -> Option<Arc<FastPath>> {
        lock(&self.fast).clone()
    }

    /// Takes the VXLAN fast path into use: on every interface of the node's bridge (a sandbox
    /// not yet adopted gets the egress side only until it is: what comes for it takes the
    /// kernel's path meanwhile), and on every sandbox connected from now on.
    pub async fn set_fast_path(&self, fast: Arc<FastPath>) {
        *lock(&self.fast) = Some(fast.clone());
        let Some(bridge) = self.bridge.clone() else { return };
        let wired = lock(&self.wired).clone();
        let done = tokio::task::spawn_blocking(move || -> io::Result<()> {
            let mut rtnl = Rtnl::open()?;
            for (name, index) in bridge_ports(&mut rtnl, &bridge)? {
                if let Err(e) = fast.attach_pod(&mut rtnl, index, wired.get(&name).copied().flatten()) {
                    tracing::warn!(interface = %name, error = %e, "the pod takes the kernel's path: the fast path failed");
                }
            }
            Ok(())
        })
        .await;
        if let Ok(Err(e)) = done {
            tracing::warn!(error = %e, "listing the bridge's interfaces for the fast path failed");
        }
    }

    /// Takes the fast path's programs off every interface of the node's bridge (`--no-fast-path`
    /// after an agent that had it).
    pub async fn remove_fast_path(&self) {
        *lock(&self.fast) = None;
        let Some(bridge) = self.bridge.clone() else { return };
        let done = tokio::task::spawn_blocking(move || -> io::Result<()> {
            let mut rtnl = Rtnl::open()?;
            for (_, index) in bridge_ports(&mut rtnl, &bridge)? {
                capstan_bpf::tc::detach(&mut rtnl, index)?;
            }
            Ok(())
        })
        .await;
        if let Ok(Err(e)) = done {
            tracing::warn!(error = %e, "taking the fast path off the pods' interfaces failed");
        }
    }

    /// Removes a sandbox's veth pair (both ends go together). The Engine may keep a stopped
    /// sandbox's namespace (seen after it restarts), and with it an interface answering ARP for
    /// the pod's address, which a new sandbox of the pod takes.
    pub async fn detach(&self, sandbox_id: &str) {
        if self.bridge.is_none() {
            return;
        }
        let name = host_interface(sandbox_id);
        if let Some(Some((ip, _))) = lock(&self.wired).remove(&name)
            && let Some(fast) = self.fast_path()
        {
            fast.forget_pod(ip);
        }
        let removed = tokio::task::spawn_blocking(move || delete_link(&mut Rtnl::open()?, &name)).await;
        if let Ok(Err(e)) = removed {
            tracing::warn!(sandbox = sandbox_id, error = %e, "removing the sandbox's interface failed");
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The sandboxes' interfaces on bridge `bridge`: (name, index).
fn bridge_ports(rtnl: &mut Rtnl, bridge: &str) -> io::Result<Vec<(String, u32)>> {
    let Some(master) = rtnl.index_of(bridge)? else {
        return Ok(Vec::new());
    };
    let answers = rtnl.request(
        RouteNetlinkMessage::GetLink(LinkMessage::default()),
        netlink_packet_core::NLM_F_DUMP,
    )?;
    Ok(answers
        .into_iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) if l.attributes.contains(&LinkAttribute::Controller(master)) => {
                l.attributes.iter().find_map(|a| match a {
                    LinkAttribute::IfName(n) if n.starts_with(HOST_PREFIX) => Some((n.clone(), l.header.index)),
                    _ => None,
                })
            }
            _ => None,
        })
        .collect())
}

/// Deletes interface `name` if there is one.
fn delete_link(rtnl: &mut Rtnl, name: &str) -> io::Result<()> {
    let Some(index) = rtnl.index_of(name)? else { return Ok(()) };
    let mut del = LinkMessage::default();
    del.header.index = index;
    match rtnl.request(RouteNetlinkMessage::DelLink(del), 0) {
        Err(e) if e.raw_os_error() != Some(libc::ENODEV) => Err(e),
        _ => Ok(()),
    }
}

/// `bridge link set dev NAME hairpin on`: the port's IFLA_BRPORT_MODE, in an AF_BRIDGE SetLink.
fn set_hairpin(rtnl: &mut Rtnl, name: &str) -> io::Result<()> {
    const IFLA_BRPORT_MODE: u16 = 4;
    let index = rtnl.index_of(name)?.ok_or_else(|| io::Error::from_raw_os_error(libc::ENODEV))?;
    let mut set = LinkMessage::default();
    set.header.interface_family = AddressFamily::Bridge;
    set.header.index = index;
    set.attributes = vec![LinkAttribute::ProtoInfoBridge(vec![LinkProtoInfoBridge::Other(DefaultNla::new(
        IFLA_BRPORT_MODE,
        vec![1],
    ))])];
    rtnl.request(RouteNetlinkMessage::SetLink(set), 0).map(|_| ())
}

/// The index of interface `name`, which must exist (`what` names it in the error).
fn index_of(rtnl: &mut Rtnl, name: &str, what: &str) -> Result<u32, PodNetError> {
    let step = format!("looking up {what}");
    match rtnl.index_of(name) {
        Ok(Some(index)) => Ok(index),
        Ok(None) => Err(kernel(step)(io::Error::from_raw_os_error(libc::ENODEV))),
        Err(e) => Err(kernel(step)(e)),
    }
}

/// The host end of a sandbox's veth pair: unique per sandbox, at most 15 characters.
pub fn host_interface(sandbox_id: &str) -> String {
    format!("{HOST_PREFIX}{}", &sandbox_id[..sandbox_id.len().min(12)])
}

const HOST_PREFIX: &str = "cap";

/// One sandbox's connection, made with blocking netlink calls.
struct Link {
    pid: u32,
    host: String,
    bridge: String,
    ip: Ipv4Addr,
    prefix: u8,
    gateway: Ipv4Addr,
    mtu: Option<u32>,
}

impl Link {
    /// Connects the sandbox; the host end's interface index and the pod's MAC.
    fn attach(&self) -> Result<(u32, Mac), PodNetError> {
        let mut host = Rtnl::open().map_err(kernel("opening a route netlink socket"))?;
        let bridge = index_of(&mut host, &self.bridge, &format!("bridge {}", self.bridge))?;
        // A leftover of an attempt that failed half-way.
        delete_link(&mut host, &self.host).map_err(kernel(format!("removing the leftover {}", self.host)))?;
        // The pair is made with its far end already inside the sandbox, named eth0 there, and the
        // near end on the bridge.
        let mut peer = LinkMessage::default();
        peer.attributes = vec![LinkAttribute::IfName(POD_INTERFACE.into()), LinkAttribute::NetNsPid(self.pid)];
        peer.attributes.extend(self.mtu.map(LinkAttribute::Mtu));
        let mut veth = LinkMessage::default();
        veth.header.flags = LinkFlags::Up;
        veth.header.change_mask = LinkFlags::Up;
        veth.attributes = vec![
            LinkAttribute::IfName(self.host.clone()),
            LinkAttribute::Controller(bridge),
            LinkAttribute::LinkInfo(vec![
                LinkInfo::Kind(InfoKind::Veth),
                LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
            ]),
        ];
        veth.attributes.extend(self.mtu.map(LinkAttribute::Mtu));
        host.request(RouteNetlinkMessage::NewLink(veth), NLM_F_CREATE | NLM_F_EXCL)
            .map_err(kernel(format!("making the veth pair {} on bridge {}", self.host, self.bridge)))?;
        // A pod reaching itself through its own Service is sent back out of the bridge port it
        // came in on, which a Linux bridge does only in hairpin mode (kubelet's `hairpin-veth`).
        // Over netlink, not sysfs: /sys shows the interfaces of the namespace it was mounted in.
        if let Err(e) = set_hairpin(&mut host, &self.host) {
            tracing::warn!(interface = %self.host, error = %e, "setting hairpin mode failed");
        }
        let host_index = index_of(&mut host, &self.host, &format!("the sandbox's interface {}", self.host))?;

        let netns = PathBuf::from(format!("/proc/{}/ns/net", self.pid));
        let mut pod = Rtnl::open_in(&netns).map_err(kernel("entering the sandbox's network namespace"))?;
        let eth0 = index_of(&mut pod, POD_INTERFACE, "eth0 in the sandbox")?;
        let mac = mac_of(&mut pod, eth0).map_err(kernel("reading eth0's MAC in the sandbox"))?;
        let mut address = AddressMessage::default();
        address.header.family = AddressFamily::Inet;
        address.header.prefix_len = self.prefix;
        address.header.index = eth0;
        address.attributes = vec![
            AddressAttribute::Local(IpAddr::V4(self.ip)),
            AddressAttribute::Address(IpAddr::V4(self.ip)),
            AddressAttribute::Broadcast(Ipv4Addr::from(u32::from(self.ip) | (u32::MAX >> self.prefix))),
        ];
        pod.request(RouteNetlinkMessage::NewAddress(address), NLM_F_CREATE | NLM_F_EXCL)
            .map_err(kernel(format!("giving the sandbox address {}/{}", self.ip, self.prefix)))?;
        let mut up = LinkMessage::default();
        up.header.index = eth0;
        up.header.flags = LinkFlags::Up;
        up.header.change_mask = LinkFlags::Up;
        pod.request(RouteNetlinkMessage::SetLink(up), 0)
            .map_err(kernel("setting eth0 up in the sandbox"))?;
        let mut route = RouteMessage::default();
        route.header.address_family = AddressFamily::Inet;
        route.header.table = RouteHeader::RT_TABLE_MAIN;
        route.header.protocol = RouteProtocol::Boot;
        route.header.scope = RouteScope::Universe;
        route.header.kind = RouteType::Unicast;
        route.attributes = vec![RouteAttribute::Gateway(RouteAddress::Inet(self.gateway)), RouteAttribute::Oif(eth0)];
        pod.request(RouteNetlinkMessage::NewRoute(route), NLM_F_CREATE | NLM_F_EXCL)
            .map_err(kernel(format!("adding the sandbox's default route via {}", self.gateway)))?;
        Ok((host_index, mac))
    }
}

/// The hardware address of interface `index`.
fn mac_of(rtnl: &mut Rtnl, index: u32) -> io::Result<Mac> {
    let mut get = LinkMessage::default();
    get.header.index = index;
    let answers = rtnl.request(RouteNetlinkMessage::GetLink(get), 0)?;
    answers
        .into_iter()
        .find_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => l.attributes.into_iter().find_map(|a| match a {
                LinkAttribute::Address(a) => a.try_into().ok(),
                _ => None,
            }),
            _ => None,
        })
        .ok_or_else(|| io::Error::from_raw_os_error(libc::ENODATA))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_skip_network_gateway_and_broadcast_and_are_not_reused_at_once() {
        let mut ipam = Ipam::new("10.244.3.0/29").unwrap();
        assert_eq!(ipam.gateway(), Ipv4Addr::new(10, 244, 3, 1));
        let got: Vec<Ipv4Addr> = ["a", "b", "c", "d", "e"].iter().map(|u| ipam.assign(u).unwrap()).collect();
        assert_eq!(got, (2..=6).map(|i| Ipv4Addr::new(10, 244, 3, i)).collect::<Vec<_>>());
        assert!(matches!(ipam.assign("f"), Err(PodNetError::Full(_))));
        // The same pod keeps its address.
        assert_eq!(ipam.assign("c").unwrap(), Ipv4Addr::new(10, 244, 3, 4));
        ipam.release("b");
        ipam.release("d");
        // The search goes on after the last address given: .3 before .5, then nothing.
        assert_eq!(ipam.assign("g").unwrap(), Ipv4Addr::new(10, 244, 3, 3));
        assert_eq!(ipam.assign("h").unwrap(), Ipv4Addr::new(10, 244, 3, 5));
        assert!(ipam.assign("i").is_err());
    }

    #[test]
    fn adopted_addresses_are_kept_and_conflicts_refused() {
        let mut ipam = Ipam::new("10.244.0.0/24").unwrap();
        assert!(ipam.reserve("old", Ipv4Addr::new(10, 244, 0, 2)));
        assert!(!ipam.reserve("other", Ipv4Addr::new(10, 244, 0, 2)));
        assert!(!ipam.reserve("outside", Ipv4Addr::new(10, 245, 0, 2)));
        assert_eq!(ipam.assign("old").unwrap(), Ipv4Addr::new(10, 244, 0, 2));
        assert_eq!(ipam.assign("new").unwrap(), Ipv4Addr::new(10, 244, 0, 3));
        assert!(Ipam::new("10.0.0.0/31").is_none());
        assert!(Ipam::new("nonsense").is_none());
    }

    #[test]
    fn host_interfaces_fit_a_linux_name() {
        assert_eq!(host_interface("0123456789abcdef0123"), "cap0123456789ab");
        assert!(host_interface("0123456789abcdef").len() <= 15);
    }
}
