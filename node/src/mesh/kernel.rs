//! The kernel edge of the pod network across hosts, over route netlink: the underlay interface,
//! the VXLAN device, and the routes, neighbour and forwarding entries of a [`Mesh`], read back
//! and changed. Blocking, like [`Rtnl`]; callers run it off the runtime.

use std::io;
use std::net::{IpAddr, Ipv4Addr};

use capstan_api::cidr::Cidr;
use capstan_netlink::rtnl::Rtnl;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::plan::{Changes, Mac, Mesh, Route};

/// The VXLAN device (one per node).
pub const DEVICE: &str = "capstan.1";
/// The VXLAN network identifier and UDP port (flannel's defaults; the kernel's port).
pub const VNI: u32 = 1;
pub const PORT: u16 = 8472;
/// The protocol our routes carry, so that a full sync finds exactly ours (a number no routing
/// daemon in /etc/iproute2/rt_protos uses).
pub const PROTOCOL: u8 = 0xca;

#[derive(Debug, thiserror::Error)]
#[error("{step}: {source}{}", if source.raw_os_error() == Some(libc::EPERM) { " (the node agent needs CAP_NET_ADMIN)" } else { "" })]
pub struct KernelError {
    pub step: String,
    #[source]
    pub source: io::Error,
}

fn step(step: impl Into<String>) -> impl FnOnce(io::Error) -> KernelError {
    let step = step.into();
    move |source| KernelError { step, source }
}

/// The interface that carries the node's address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Underlay {
    pub name: String,
    pub index: u32,
    pub mtu: u32,
    pub address: Ipv4Addr,
    /// The address's network.
    pub segment: Cidr,
    /// Its hardware address (zero when it has none).
    pub mac: Mac,
}

/// The interface holding `address`.
pub fn underlay(rtnl: &mut Rtnl, address: Ipv4Addr) -> Result<Underlay, KernelError> {
    let mut get = AddressMessage::default();
    get.header.family = AddressFamily::Inet;
    let answers = rtnl
        .request(RouteNetlinkMessage::GetAddress(get), NLM_F_DUMP)
        .map_err(step("listing the host's addresses"))?;
    let (index, prefix) = answers
        .iter()
        .find_map(|m| match m {
            RouteNetlinkMessage::NewAddress(a)
                if a.attributes
                    .iter()
                    .any(|at| matches!(at, AddressAttribute::Local(IpAddr::V4(ip)) if *ip == address)) =>
            {
                Some((a.header.index, a.header.prefix_len))
            }
            _ => None,
        })
        .ok_or_else(|| KernelError {
            step: format!("finding the interface with the node's address {address}"),
            source: io::Error::from_raw_os_error(libc::EADDRNOTAVAIL),
        })?;
    let link = get_link(rtnl, Some(index))?
        .ok_or_else(|| step(format!("reading interface {index}"))(io::Error::from_raw_os_error(libc::ENODEV)))?;
    let mut name = String::new();
    let mut mtu = 1500;
    let mut mac = Mac::default();
    for a in &link.attributes {
        match a {
            LinkAttribute::IfName(n) => name = n.clone(),
            LinkAttribute::Mtu(m) => mtu = *m,
            LinkAttribute::Address(a) => mac = a.as_slice().try_into().unwrap_or_default(),
            _ => {}
        }
    }
    let segment = Cidr::new(address, prefix).unwrap_or(Cidr::fixed(address, 32));
    Ok(Underlay {
        name,
        index,
        mtu,
        address,
        segment,
        mac,
    })
}

/// An interface by index (`Some`) or, without one, the VXLAN device by name.
fn get_link(rtnl: &mut Rtnl, index: Option<u32>) -> Result<Option<LinkMessage>, KernelError> {
    let mut get = LinkMessage::default();
    match index {
        Some(i) => get.header.index = i,
        None => get.attributes = vec![LinkAttribute::IfName(DEVICE.into())],
    }
    match rtnl.request(RouteNetlinkMessage::GetLink(get), 0) {
        Ok(answers) => Ok(answers.into_iter().find_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => Some(l),
            _ => None,
        })),
        Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(step("reading an interface")(e)),
    }
}

/// What the VXLAN device must be.
#[derive(Clone, Debug)]
pub struct Vtep {
    pub underlay: Underlay,
    pub mac: Mac,
    pub mtu: u32,
    /// The node's pod range: its `.0` goes on the device, so that the node's own traffic to
    /// other nodes' pods has a source address they route back through the overlay.
    pub pod_cidr: Cidr,
}

fn vxlan_data(link: &LinkMessage) -> Vec<InfoVxlan> {
    link.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
                LinkInfo::Data(InfoData::Vxlan(d)) => Some(d.clone()),
                _ => None,
            }),
            _ => None,
        })
        .unwrap_or_default()
}

/// Makes the VXLAN device as `vtep` says (made again when its identity, underlay or port
/// differ; its MTU and MAC set in place), up, with the pod range's `.0` as its only address.
/// Returns its index.
pub fn ensure_vtep(rtnl: &mut Rtnl, vtep: &Vtep) -> Result<u32, KernelError> {
    let existing = get_link(rtnl, None)?;
    let mut index = None;
    if let Some(link) = existing {
        let data = vxlan_data(&link);
        let matches = data.contains(&InfoVxlan::Id(VNI))
            && data.contains(&InfoVxlan::Local(vtep.underlay.address))
            && data.contains(&InfoVxlan::Link(vtep.underlay.index))
            && data.contains(&InfoVxlan::Port(PORT));
        if matches {
            index = Some(link.header.index);
        } else {
            delete_vtep(rtnl)?;
        }
    }
    let index = match index {
        Some(i) => {
            let mut set = LinkMessage::default();
            set.header.index = i;
            set.header.flags = LinkFlags::Up;
            set.header.change_mask = LinkFlags::Up;
            set.attributes = vec![LinkAttribute::Mtu(vtep.mtu), LinkAttribute::Address(vtep.mac.to_vec())];
            rtnl.request(RouteNetlinkMessage::SetLink(set), 0)
                .map_err(step(format!("setting the MTU and MAC of {DEVICE}")))?;
            i
        }
        None => {
            let mut new = LinkMessage::default();
            new.header.flags = LinkFlags::Up;
            new.header.change_mask = LinkFlags::Up;
            new.attributes = vec![
                LinkAttribute::IfName(DEVICE.into()),
                LinkAttribute::Address(vtep.mac.to_vec()),
                LinkAttribute::Mtu(vtep.mtu),
                LinkAttribute::LinkInfo(vec![
                    LinkInfo::Kind(InfoKind::Vxlan),
                    LinkInfo::Data(InfoData::Vxlan(vec![
                        InfoVxlan::Id(VNI),
                        InfoVxlan::Link(vtep.underlay.index),
                        InfoVxlan::Local(vtep.underlay.address),
                        InfoVxlan::Port(PORT),
                        InfoVxlan::Learning(false),
                    ])),
                ]),
            ];
            rtnl.request(RouteNetlinkMessage::NewLink(new), NLM_F_CREATE | NLM_F_EXCL)
                .map_err(step(format!("making the VXLAN device {DEVICE} on {}", vtep.underlay.name)))?;
            get_link(rtnl, None)?
                .ok_or_else(|| step(format!("reading {DEVICE}"))(io::Error::from_raw_os_error(libc::ENODEV)))?
                .header
                .index
        }
    };
    set_only_address(rtnl, index, vtep.pod_cidr.network())?;
    Ok(index)
}

fn set_only_address(rtnl: &mut Rtnl, index: u32, ip: Ipv4Addr) -> Result<(), KernelError> {
    let mut get = AddressMessage::default();
    get.header.family = AddressFamily::Inet;
    let answers = rtnl
        .request(RouteNetlinkMessage::GetAddress(get), NLM_F_DUMP)
        .map_err(step("listing addresses"))?;
    let mut present = false;
    for m in answers {
        let RouteNetlinkMessage::NewAddress(a) = m else { continue };
        if a.header.index != index {
            continue;
        }
        let this = a
            .attributes
            .iter()
            .any(|at| matches!(at, AddressAttribute::Local(IpAddr::V4(x)) if *x == ip));
        if this && a.header.prefix_len == 32 {
            present = true;
        } else {
            rtnl.request(RouteNetlinkMessage::DelAddress(a), 0)
                .map_err(step(format!("removing an old address of {DEVICE}")))?;
        }
    }
    if !present {
        let mut add = AddressMessage::default();
        add.header.family = AddressFamily::Inet;
        add.header.prefix_len = 32;
        add.header.index = index;
        add.attributes = vec![AddressAttribute::Local(IpAddr::V4(ip)), AddressAttribute::Address(IpAddr::V4(ip))];
        rtnl.request(RouteNetlinkMessage::NewAddress(add), NLM_F_CREATE | NLM_F_REPLACE)
            .map_err(step(format!("giving {DEVICE} the address {ip}/32")))?;
    }
    Ok(())
}

/// Removes the VXLAN device, if there is one (its neighbour and forwarding entries and the
/// routes through it go with it).
pub fn delete_vtep(rtnl: &mut Rtnl) -> Result<(), KernelError> {
    let Some(link) = get_link(rtnl, None)? else {
        return Ok(());
    };
    let mut del = LinkMessage::default();
    del.header.index = link.header.index;
    match rtnl.request(RouteNetlinkMessage::DelLink(del), 0) {
        Err(e) if e.raw_os_error() != Some(libc::ENODEV) => Err(step(format!("removing {DEVICE}"))(e)),
        _ => Ok(()),
    }
}

fn route_message(dst: Cidr) -> RouteMessage {
    let mut m = RouteMessage::default();
    m.header.address_family = AddressFamily::Inet;
    m.header.destination_prefix_length = dst.prefix();
    m.header.table = RouteHeader::RT_TABLE_MAIN;
    m.header.protocol = RouteProtocol::Other(PROTOCOL);
    m.header.scope = RouteScope::Universe;
    m.header.kind = RouteType::Unicast;
    m.attributes = vec![RouteAttribute::Destination(RouteAddress::Inet(dst.network()))];
    m
}

fn neighbour_message(family: AddressFamily, index: u32, ip: Ipv4Addr, mac: Mac) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = family;
    m.header.ifindex = index;
    m.header.state = NeighbourState::Permanent;
    if family == AddressFamily::Bridge {
        // NTF_SELF: the entry belongs to the VXLAN device's own table, not a bridge's.
        m.header.flags = NeighbourFlags::Own;
    }
    m.attributes = vec![
        NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)),
        NeighbourAttribute::LinkLayerAddress(mac.to_vec()),
    ];
    m
}

/// What the kernel holds of ours: routes with our protocol, and the permanent entries of the
/// VXLAN device (`vtep`: its index, when there is one).
pub fn read(rtnl: &mut Rtnl, vtep: Option<u32>) -> Result<Mesh, KernelError> {
    let mut mesh = Mesh::default();
    let mut get = RouteMessage::default();
    get.header.address_family = AddressFamily::Inet;
    let routes = rtnl
        .request(RouteNetlinkMessage::GetRoute(get), NLM_F_DUMP)
        .map_err(step("listing routes"))?;
    for m in routes {
        let RouteNetlinkMessage::NewRoute(r) = m else { continue };
        if r.header.protocol != RouteProtocol::Other(PROTOCOL) || r.header.table != RouteHeader::RT_TABLE_MAIN {
            continue;
        }
        let mut dst = None;
        let mut gateway = None;
        let mut oif = None;
        for a in &r.attributes {
            match a {
                RouteAttribute::Destination(RouteAddress::Inet(d)) => dst = Some(*d),
                RouteAttribute::Gateway(RouteAddress::Inet(g)) => gateway = Some(*g),
                RouteAttribute::Oif(o) => oif = Some(*o),
                _ => {}
            }
        }
        if let (Some(d), Some(g)) = (dst, gateway)
            && let Some(c) = Cidr::new(d, r.header.destination_prefix_length)
        {
            let vxlan = vtep.is_some() && oif == vtep && r.header.flags.contains(RouteFlags::Onlink);
            mesh.routes.insert(c, Route { gateway: g, vxlan });
        }
    }
    let Some(index) = vtep else { return Ok(mesh) };
    for family in [AddressFamily::Inet, AddressFamily::Bridge] {
        let mut get = NeighbourMessage::default();
        get.header.family = family;
        let answers = rtnl
            .request(RouteNetlinkMessage::GetNeighbour(get), NLM_F_DUMP)
            .map_err(step(format!("listing the entries of {DEVICE}")))?;
        for m in answers {
            let RouteNetlinkMessage::NewNeighbour(n) = m else { continue };
            if n.header.ifindex != index {
                continue;
            }
            let mut ip = None;
            let mut mac = None;
            for a in &n.attributes {
                match a {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(d)) => ip = Some(*d),
                    // In an AF_BRIDGE answer the crate cannot tell the address's family.
                    NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => {
                        ip = <[u8; 4]>::try_from(b.as_slice()).ok().map(Ipv4Addr::from)
                    }
                    NeighbourAttribute::LinkLayerAddress(l) => mac = <Mac>::try_from(l.as_slice()).ok(),
                    _ => {}
                }
            }
            let (Some(ip), Some(mac)) = (ip, mac) else { continue };
            match family {
                AddressFamily::Bridge => {
                    mesh.fdb.insert(mac, ip);
                }
                _ => {
                    mesh.neighbours.insert(ip, mac);
                }
            }
        }
    }
    Ok(mesh)
}

/// Makes `changes` (see [`Changes`] for the order). `vtep`: the VXLAN device's index.
pub fn apply(rtnl: &mut Rtnl, changes: &Changes, vtep: Option<u32>) -> Result<(), KernelError> {
    let gone = |e: &io::Error| matches!(e.raw_os_error(), Some(libc::ESRCH) | Some(libc::ENOENT) | Some(libc::ENODEV));
    for dst in &changes.remove_routes {
        match rtnl.request(RouteNetlinkMessage::DelRoute(route_message(*dst)), 0) {
            Err(e) if !gone(&e) => return Err(step(format!("removing the route to {dst}"))(e)),
            _ => {}
        }
    }
    if let Some(index) = vtep {
        for (mac, ip) in &changes.remove_fdb {
            match rtnl.request(
                RouteNetlinkMessage::DelNeighbour(neighbour_message(AddressFamily::Bridge, index, *ip, *mac)),
                0,
            ) {
                Err(e) if !gone(&e) => return Err(step(format!("removing the forwarding entry for {ip}"))(e)),
                _ => {}
            }
        }
        for (ip, mac) in &changes.remove_neighbours {
            match rtnl.request(
                RouteNetlinkMessage::DelNeighbour(neighbour_message(AddressFamily::Inet, index, *ip, *mac)),
                0,
            ) {
                Err(e) if !gone(&e) => return Err(step(format!("removing the neighbour entry for {ip}"))(e)),
                _ => {}
            }
        }
        for (ip, mac) in &changes.set_neighbours {
            rtnl.request(
                RouteNetlinkMessage::NewNeighbour(neighbour_message(AddressFamily::Inet, index, *ip, *mac)),
                NLM_F_CREATE | NLM_F_REPLACE,
            )
            .map_err(step(format!("adding the neighbour entry for {ip}")))?;
        }
        for (mac, ip) in &changes.set_fdb {
            rtnl.request(
                RouteNetlinkMessage::NewNeighbour(neighbour_message(AddressFamily::Bridge, index, *ip, *mac)),
                NLM_F_CREATE | NLM_F_REPLACE,
            )
            .map_err(step(format!("adding the forwarding entry for {ip}")))?;
        }
    }
    for (dst, route) in &changes.set_routes {
        let mut m = route_message(*dst);
        m.attributes.push(RouteAttribute::Gateway(RouteAddress::Inet(route.gateway)));
        if route.vxlan {
            let Some(index) = vtep else { continue };
            m.header.flags = RouteFlags::Onlink;
            m.attributes.push(RouteAttribute::Oif(index));
        }
        rtnl.request(RouteNetlinkMessage::NewRoute(m), NLM_F_CREATE | NLM_F_REPLACE)
            .map_err(step(format!("adding the route to {dst} via {}", route.gateway)))?;
    }
    Ok(())
}
