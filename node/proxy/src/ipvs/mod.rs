//! The IPVS backend: virtual services programmed through our own generic-netlink IPVS family
//! ([`family`] on the wire, [`kernel`] the socket), their addresses put on a dummy interface
//! ([`link`]), and [`plan`] deciding the least set of requests per change.

pub mod family;
pub mod kernel;
pub mod link;
pub mod plan;

use capstan_api::cidr::Cidr;
use std::collections::BTreeSet;
use std::net::Ipv4Addr;

pub use kernel::{Ipvs, KernelError};
pub use plan::{IpvsSettings, Table};

use crate::model::VirtualService;

/// What one apply did, for logs and the benchmark.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// IPVS requests sent (services and destinations).
    pub requests: usize,
    /// Service addresses added to or removed from the VIP interface.
    pub addresses: usize,
}

/// The kernel state the proxy owns, and what it last applied.
#[derive(Debug)]
pub struct IpvsBackend {
    pub ipvs: Ipvs,
    pub link: link::VipLink,
    settings: IpvsSettings,
    applied: Option<(Table, BTreeSet<Ipv4Addr>)>,
}

impl IpvsBackend {
    /// Opens the IPVS family (an error where the kernel has none) and the VIP interface, and
    /// turns on IPVS connection tracking so that the host's NAT rules see IPVS traffic. (What
    /// IPVS does not do, rejecting unused service addresses, is the nftables table of
    /// [`crate::nft::ipvs_guard_script`], applied beside it.)
    pub fn open(scheduler: &str, service_cidr: Cidr) -> Result<IpvsBackend, KernelError> {
        let ipvs = Ipvs::open()?;
        let mut link = link::VipLink::open()?;
        let node_ips = link.node_addresses()?;
        if let Err(e) = std::fs::write("/proc/sys/net/ipv4/vs/conntrack", "1") {
            tracing::warn!("proxy: could not turn on net.ipv4.vs.conntrack: {e}");
        }
        Ok(IpvsBackend {
            ipvs,
            link,
            settings: IpvsSettings {
                scheduler: scheduler.into(),
                service_cidr,
                node_ips,
            },
            applied: None,
        })
    }

    pub fn settings(&self) -> &IpvsSettings {
        &self.settings
    }

    /// Brings the kernel in line with `services`. `full`: read the kernel first and repair
    /// whatever differs (also re-reads the node's addresses); otherwise only the difference from
    /// the last apply is sent. After an error the next apply is full.
    pub fn apply(&mut self, services: &[VirtualService], full: bool) -> Result<Applied, KernelError> {
        // Taken, not copied: after an error it stays None and the next apply reads the kernel.
        let (current, current_vips) = match (self.applied.take(), full) {
            (Some(applied), false) => applied,
            _ => {
                self.settings.node_ips = self.link.node_addresses()?;
                let table = plan::from_listing(self.ipvs.list()?);
                let vips = self
                    .link
                    .addresses()?
                    .into_iter()
                    .filter(|ip| self.settings.service_cidr.contains(*ip))
                    .collect();
                (table, vips)
            }
        };
        let wanted = plan::table(services, &self.settings);
        let wanted_vips = plan::vips(&wanted, &self.settings);
        let mut done = Applied::default();
        // New addresses before their services, old ones after: never a moment where a service
        // exists without its address.
        for ip in wanted_vips.difference(&current_vips) {
            self.link.add(*ip)?;
            done.addresses += 1;
        }
        let requests = plan::diff(&current, &wanted, &self.settings);
        done.requests = requests.len();
        self.ipvs.execute(&requests)?;
        for ip in current_vips.difference(&wanted_vips) {
            self.link.remove(*ip)?;
            done.addresses += 1;
        }
        self.applied = Some((wanted, wanted_vips));
        Ok(done)
    }

    /// Removes every virtual service and address the proxy made (`--cleanup-proxy`).
    pub fn cleanup(mut self) -> Result<(), KernelError> {
        self.apply(&[], true)?;
        self.link.delete()
    }
}
