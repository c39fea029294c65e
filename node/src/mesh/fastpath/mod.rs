//! The pod network's fast path: eBPF programs on the tc hooks that move an established TCP
//! connection's segments from a pod's veth out of the underlay (encapsulated here with VXLAN)
//! and from the node's device (the VXLAN device, or with host-gw the underlay) into the pod,
//! skipping both hosts' bridge, routing and netfilter for them (what a CNI's "host routing"
//! does), while connection tracking still sees every connection open, close, and every minute
//! in between ([`programs`] says how). The agent owns the maps: the remote nodes' pod ranges
//! (from the mesh's plan), the local pods (as they are wired) and the connections (written by
//! the programs). A node whose kernel refuses the programs keeps the kernel's path: slower, the
//! same behaviour.

pub mod programs;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::io;
use std::net::Ipv4Addr;

use capstan_api::cidr::Cidr;
use capstan_bpf::sys::{LoadError, Map, MapKind, Program};
use capstan_bpf::tc;
use capstan_netlink::rtnl::Rtnl;

use crate::mesh::plan::Mac;
pub use programs::REMOTE_VALUE;
pub use programs::{Device, Via};
use programs::{FLOW_KEY, FLOW_VALUE, MapFds, POD_INDEX, POD_KEY, POD_MAC, POD_VALUE, REMOTE_ADDRESS, REMOTE_KEY, REMOTE_MAC};

/// Connections remembered at once (least recently used go first: such a connection takes the
/// kernel's path from then on).
const FLOWS: u32 = 65_536;
/// Local pods and remote nodes the maps hold.
const PODS: u32 = 16_384;
const REMOTES: u32 = 4_096;

/// conntrack's window checks off: it sees a fast connection's segments only now and then, and
/// must not call the ones it sees (a FIN, a refresh) out of window. kube-proxy offers the same
/// (`--conntrack-tcp-be-liberal`) for asymmetric paths.
const BE_LIBERAL: &str = "/proc/sys/net/netfilter/nf_conntrack_tcp_be_liberal";

#[derive(Debug, thiserror::Error)]
pub enum FastPathError {
    #[error("making the fast path's map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("assembling the fast path: {0}")]
    Asm(#[from] capstan_bpf::insn::AsmError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("attaching the fast path to interface {index}: {source}")]
    Attach {
        index: u32,
        #[source]
        source: io::Error,
    },
    #[error("the fast path's map of {what}: {source}")]
    Update {
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

/// The loaded programs and their maps.
#[derive(Debug)]
pub struct FastPath {
    remotes: Map,
    pods: Map,
    flows: Map,
    egress: Program,
    ingress: Program,
}

fn map(kind: MapKind, name: &'static str, key: usize, value: usize, max: u32) -> Result<Map, FastPathError> {
    Map::create(kind, name, key, value, max).map_err(|source| FastPathError::Map { name, source })
}

/// A remote range's value: the remote node's address and, with VXLAN, its VTEP's MAC.
pub fn remote_value(address: Ipv4Addr, vtep: Option<&Mac>) -> [u8; REMOTE_VALUE] {
    let mut v = [0; REMOTE_VALUE];
    if let Some(mac) = vtep {
        v[REMOTE_MAC..REMOTE_MAC + 6].copy_from_slice(mac);
    }
    v[REMOTE_ADDRESS..REMOTE_ADDRESS + 4].copy_from_slice(&address.octets());
    v
}

/// A local pod's value: its host-end interface and its MAC.
fn pod_value(index: u32, mac: &Mac) -> [u8; POD_VALUE] {
    let mut v = [0; POD_VALUE];
    v[POD_INDEX..POD_INDEX + 4].copy_from_slice(&index.to_ne_bytes());
    v[POD_MAC..POD_MAC + 6].copy_from_slice(mac);
    v
}

/// A remote pod range's key in the longest-prefix-match map.
fn remote_key(range: Cidr) -> [u8; REMOTE_KEY] {
    let mut k = [0; REMOTE_KEY];
    k[..4].copy_from_slice(&u32::from(range.prefix()).to_ne_bytes());
    k[4..].copy_from_slice(&range.network().octets());
    k
}

impl FastPath {
    /// Makes the maps and loads the programs for this node's `device`, sending `via` it.
    pub fn load(device: Device, via: Via) -> Result<FastPath, FastPathError> {
        let remotes = map(MapKind::LpmTrie, "capstan_remote", REMOTE_KEY, REMOTE_VALUE, REMOTES)?;
        let pods = map(MapKind::Hash, "capstan_pods", POD_KEY, POD_VALUE, PODS)?;
        let flows = map(MapKind::LruHash, "capstan_flows", FLOW_KEY, FLOW_VALUE, FLOWS)?;
        let fds = MapFds {
            remotes: remotes.fd(),
            pods: pods.fd(),
            flows: flows.fd(),
        };
        let egress = Program::classifier("capstan_egress", &programs::egress(fds, device, via)?)?;
        let ingress = Program::classifier("capstan_ingress", &programs::ingress(fds, device)?)?;
        if let Err(e) = std::fs::write(BE_LIBERAL, "1") {
            tracing::warn!(error = %e, path = BE_LIBERAL, "could not relax conntrack's TCP window checks");
        }
        Ok(FastPath {
            remotes,
            pods,
            flows,
            egress,
            ingress,
        })
    }

    /// Puts the ingress program on the device (the VXLAN device, or the underlay).
    pub fn attach_device(&self, rtnl: &mut Rtnl, index: u32) -> Result<(), FastPathError> {
        tc::attach_ingress(rtnl, index, &self.ingress).map_err(|source| FastPathError::Attach { index, source })
    }

    /// Puts the egress program on a pod's host-end interface `index` (made or replaced). With
    /// the pod's address and MAC, the ingress program delivers to it too.
    pub fn attach_pod(&self, rtnl: &mut Rtnl, index: u32, pod: Option<(Ipv4Addr, Mac)>) -> Result<(), FastPathError> {
        tc::attach_ingress(rtnl, index, &self.egress).map_err(|source| FastPathError::Attach { index, source })?;
        if let Some((ip, mac)) = pod {
            self.pods
                .update(&ip.octets(), &pod_value(index, &mac))
                .map_err(|source| FastPathError::Update { what: "pods", source })?;
        }
        Ok(())
    }

    /// The pod at `ip` is gone: nothing is delivered to it by the fast path any more.
    pub fn forget_pod(&self, ip: Ipv4Addr) {
        if let Err(e) = self.pods.delete(&ip.octets()) {
            tracing::warn!(%ip, error = %e, "removing a pod from the fast path failed");
        }
    }

    /// Makes the map of remote pod ranges equal `remotes` (see [`remote_value`]).
    pub fn set_remotes(&self, remotes: &BTreeMap<Cidr, [u8; REMOTE_VALUE]>) -> Result<(), FastPathError> {
        let update = |source| FastPathError::Update {
            what: "remote nodes",
            source,
        };
        let wanted: BTreeMap<[u8; REMOTE_KEY], [u8; REMOTE_VALUE]> = remotes.iter().map(|(range, v)| (remote_key(*range), *v)).collect();
        for key in self.remotes.keys().map_err(update)? {
            if !wanted.keys().any(|k| k[..] == key[..]) {
                self.remotes.delete(&key).map_err(update)?;
            }
        }
        for (key, value) in &wanted {
            if self.remotes.lookup(key).map_err(update)?.as_deref() != Some(&value[..]) {
                self.remotes.update(key, value).map_err(update)?;
            }
        }
        Ok(())
    }

    /// How many connections the fast path remembers (for tests and diagnostics).
    pub fn connections(&self) -> io::Result<usize> {
        self.flows.keys().map(|k| k.len())
    }
}
