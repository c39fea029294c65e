//! Service addresses as local addresses: IPVS only sees traffic to an address the node owns, so
//! every ClusterIP is put (as a /32) on a dummy interface `capstan-ipvs0`, or on `lo` where the
//! kernel has no dummy interfaces. Spoken over rtnetlink with a blocking socket.

use std::collections::BTreeSet;
use std::io;
use std::net::{IpAddr, Ipv4Addr};

use netlink_packet_core::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::kernel::KernelError;
use capstan_netlink::rtnl::Rtnl;

/// The interface the proxy makes for service addresses.
pub const VIP_INTERFACE: &str = "capstan-ipvs0";

/// Where the VIPs live.
#[derive(Debug)]
pub struct VipLink {
    rtnl: Rtnl,
    pub name: String,
    pub index: u32,
}

impl VipLink {
    /// Finds or makes `capstan-ipvs0` (up), falling back to `lo` where the kernel refuses dummy
    /// interfaces.
    pub fn open() -> Result<VipLink, KernelError> {
        let mut link = VipLink {
            rtnl: Rtnl::open()?,
            name: VIP_INTERFACE.into(),
            index: 0,
        };
        let mut create = LinkMessage::default();
        create.attributes = vec![
            LinkAttribute::IfName(VIP_INTERFACE.into()),
            LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Dummy)]),
        ];
        match link.request(RouteNetlinkMessage::NewLink(create), NLM_F_CREATE | NLM_F_EXCL) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                tracing::info!("proxy: this kernel has no dummy interfaces; service addresses go on lo");
                link.name = "lo".into();
            }
            Err(e) => return Err(e.into()),
        }
        link.index = link.index_of(&link.name.clone())?;
        let mut up = LinkMessage::default();
        up.header.index = link.index;
        up.header.flags = LinkFlags::Up;
        up.header.change_mask = LinkFlags::Up;
        link.request(RouteNetlinkMessage::SetLink(up), 0)?;
        Ok(link)
    }

    fn index_of(&mut self, name: &str) -> Result<u32, KernelError> {
        self.rtnl
            .index_of(name)?
            .ok_or_else(|| KernelError::Decode(format!("no index for interface {name}")))
    }

    /// The IPv4 addresses on the VIP interface.
    pub fn addresses(&mut self) -> Result<BTreeSet<Ipv4Addr>, KernelError> {
        let mut get = AddressMessage::default();
        get.header.family = AddressFamily::Inet;
        let answers = self.request(RouteNetlinkMessage::GetAddress(get), NLM_F_DUMP)?;
        let mut out = BTreeSet::new();
        for m in answers {
            if let RouteNetlinkMessage::NewAddress(a) = m
                && a.header.index == self.index
                && a.header.prefix_len == 32
            {
                for attr in &a.attributes {
                    if let AddressAttribute::Local(IpAddr::V4(ip)) = attr {
                        out.insert(*ip);
                    }
                }
            }
        }
        Ok(out)
    }

    /// The node's own IPv4 addresses (every interface but this one, loopback excluded): where
    /// node ports are served.
    pub fn node_addresses(&mut self) -> Result<Vec<Ipv4Addr>, KernelError> {
        let mut get = AddressMessage::default();
        get.header.family = AddressFamily::Inet;
        let answers = self.request(RouteNetlinkMessage::GetAddress(get), NLM_F_DUMP)?;
        let mut out = Vec::new();
        for m in answers {
            if let RouteNetlinkMessage::NewAddress(a) = m
                && a.header.index != self.index
            {
                for attr in &a.attributes {
                    if let AddressAttribute::Local(IpAddr::V4(ip)) = attr
                        && !ip.is_loopback()
                    {
                        out.push(*ip);
                    }
                }
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    fn address_message(&self, ip: Ipv4Addr) -> AddressMessage {
        let mut m = AddressMessage::default();
        m.header.family = AddressFamily::Inet;
        m.header.prefix_len = 32;
        m.header.index = self.index;
        m.attributes = vec![AddressAttribute::Local(IpAddr::V4(ip)), AddressAttribute::Address(IpAddr::V4(ip))];
        m
    }

    pub fn add(&mut self, ip: Ipv4Addr) -> Result<(), KernelError> {
        match self.request(RouteNetlinkMessage::NewAddress(self.address_message(ip)), NLM_F_CREATE | NLM_F_EXCL) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            r => r.map(|_| ()).map_err(|source| KernelError::Refused {
                what: format!("address {ip} on {}", self.name),
                source,
            }),
        }
    }

    pub fn remove(&mut self, ip: Ipv4Addr) -> Result<(), KernelError> {
        match self.request(RouteNetlinkMessage::DelAddress(self.address_message(ip)), 0) {
            Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => Ok(()),
            r => r.map(|_| ()).map_err(|source| KernelError::Refused {
                what: format!("removal of address {ip} from {}", self.name),
                source,
            }),
        }
    }

    /// Deletes the dummy interface (cleanup); on `lo` nothing is deleted here.
    pub fn delete(mut self) -> Result<(), KernelError> {
        if self.name != VIP_INTERFACE {
            return Ok(());
        }
        let mut del = LinkMessage::default();
        del.header.index = self.index;
        self.request(RouteNetlinkMessage::DelLink(del), 0)?;
        Ok(())
    }

    fn request(&mut self, message: RouteNetlinkMessage, flags: u16) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.rtnl.request(message, flags)
    }
}
