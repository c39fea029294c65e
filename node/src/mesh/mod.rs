//! The pod network across hosts: every pod reaches every pod on any node by its own address.
//! The agent publishes how to reach this node (its underlay address and VTEP MAC, as Node
//! annotations), watches the Nodes, and keeps the kernel's routes to the other nodes' pod ranges
//! in line ([`plan`] is the pure core, [`kernel`] the netlink edge, [`nftables`] the NAT for
//! traffic leaving the cluster and the guard of the VXLAN port): at every change of a Node, and in a full sync every
//! [`RESYNC`] that repairs what anyone else changed.

pub mod fastpath;
pub mod kernel;
pub mod nftables;
pub mod plan;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use capstan_api::cidr::Cidr;
use capstan_netlink::rtnl::Rtnl;
use futures::StreamExt;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::Event;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::client::ApiClient;
use crate::podnet::PodNet;
use fastpath::{Device, FastPath, Via};
pub use kernel::Underlay;
pub use plan::Backend;
use plan::{Local, Mesh, Peer, Skipped};

/// How often the kernel is compared with the plan even when no Node changed.
pub const RESYNC: Duration = Duration::from_secs(10);

/// How this node takes part.
#[derive(Clone, Debug)]
pub struct MeshConfig {
    pub node: String,
    pub backend: Backend,
    /// With VXLAN: load the eBPF fast path ([`fastpath`]).
    pub fast_path: bool,
    pub underlay: Underlay,
    /// The whole pod range: traffic between its addresses is never masqueraded.
    pub cluster_cidr: Cidr,
}

impl MeshConfig {
    /// Whether pods here reach other hosts' pods at all: not with `none`, and not on a
    /// loopback underlay (agents sharing one host for tests).
    pub fn active(&self) -> bool {
        self.backend != Backend::None && !self.underlay.address.is_loopback()
    }

    pub fn pod_mtu(&self) -> u32 {
        self.backend.pod_mtu(self.underlay.mtu)
    }
}

/// Finds the underlay: the interface that holds the node's address.
pub async fn detect(address: Ipv4Addr) -> Result<Underlay, kernel::KernelError> {
    blocking(move |rtnl| kernel::underlay(rtnl, address)).await
}

/// Runs `f` on a fresh route netlink socket, off the runtime.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce(&mut Rtnl) -> Result<T, kernel::KernelError> + Send + 'static,
) -> Result<T, kernel::KernelError> {
    tokio::task::spawn_blocking(move || {
        let mut rtnl = Rtnl::open().map_err(|source| kernel::KernelError {
            step: "opening a route netlink socket".into(),
            source,
        })?;
        f(&mut rtnl)
    })
    .await
    .unwrap_or_else(|e| {
        Err(kernel::KernelError {
            step: "the netlink thread".into(),
            source: std::io::Error::other(e.to_string()),
        })
    })
}

/// Sets up this node's side (the VXLAN device, the masquerade, the annotations), then keeps the
/// routes to the other nodes in line until `stop`.
pub async fn run(api: ApiClient, config: MeshConfig, pod_cidr: Cidr, net: Arc<PodNet>, stop: CancellationToken) {
    let vtep = loop {
        match prepare(&api, &config, pod_cidr).await {
            Ok(v) => break v,
            Err(e) => tracing::warn!(error = %e, "setting up the pod network across hosts failed; retrying"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    };
    if !config.active() {
        return;
    }
    // The fast path's device: the tunnel, or with host-gw the underlay.
    let device = match (config.backend, vtep) {
        (Backend::Vxlan, Some(index)) => Some((
            Device {
                index,
                mac: plan::vtep_mac(config.underlay.address),
            },
            Via::Tunnel {
                underlay: config.underlay.index,
                local: config.underlay.address,
            },
        )),
        (Backend::HostGw, _) => Some((
            Device {
                index: config.underlay.index,
                mac: config.underlay.mac,
            },
            Via::Neighbour,
        )),
        _ => None,
    };
    let fast = match device {
        Some((device, via)) if config.fast_path => fast_path(device, via).await,
        _ => None,
    };
    match &fast {
        Some(f) => net.set_fast_path(f.clone()).await,
        None => {
            // Off, or none loaded: what an earlier agent left on the tunnel (ours alone), the
            // underlay (our filter only) and the pods' interfaces goes.
            let underlay = config.underlay.index;
            let _ = blocking(move |rtnl| {
                if let Some(index) = vtep {
                    let _ = capstan_bpf::tc::detach(rtnl, index);
                }
                Ok(capstan_bpf::tc::detach_ours(rtnl, underlay, "capstan_"))
            })
            .await;
            net.remove_fast_path().await;
        }
    }
    let local = Local {
        underlay: config.underlay.address,
        segment: config.underlay.segment,
        pod_cidr,
    };
    let mut nodes: BTreeMap<String, Value> = BTreeMap::new();
    let mut listed = false;
    let mut watch = api.watch_nodes().default_backoff().boxed();
    let mut tick = tokio::time::interval(RESYNC);
    let mut last_skipped: Vec<Skipped> = Vec::new();
    let mut last_peers: Vec<String> = Vec::new();
    let mut last_desired: Option<Mesh> = None;
    loop {
        // A full sync on the tick; on a Node event only when the plan changed (Nodes change
        // often, with every status update, and a sync dumps the kernel's tables).
        let mut full = false;
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => full = true,
            e = watch.next() => match e {
                Some(Ok(Event::Apply(n) | Event::InitApply(n))) => {
                    let v = serde_json::to_value(&n).unwrap_or_default();
                    nodes.insert(n.metadata.name.clone().unwrap_or_default(), v);
                    if !listed { continue; }
                }
                Some(Ok(Event::Delete(n))) => {
                    nodes.remove(n.metadata.name.as_deref().unwrap_or_default());
                }
                Some(Ok(Event::Init)) => { nodes.clear(); listed = false; continue; }
                Some(Ok(Event::InitDone)) => listed = true,
                Some(Err(e)) => { tracing::debug!(error = %e, "the node watch failed; it resumes"); continue; }
                None => return,
            }
        }
        if !listed {
            continue;
        }
        let peers: Vec<Peer> = nodes
            .iter()
            .filter(|(name, _)| **name != config.node)
            .filter_map(|(_, n)| plan::peer(n))
            .collect();
        let (desired, skipped) = plan::plan(config.backend, &local, &peers);
        if skipped != last_skipped {
            for s in &skipped {
                tracing::info!(node = %config.node, "not routed: {s}");
            }
            last_skipped = skipped;
        }
        if !full && last_desired.as_ref() == Some(&desired) {
            continue;
        }
        if vtep.is_some() {
            let peers = desired.fdb.values().copied().collect();
            if let Err(e) = nftables::set_peers(&peers).await {
                tracing::warn!(node = %config.node, error = %e, "letting the peers' VXLAN in failed; retrying");
            }
        }
        if let Some(f) = &fast {
            let remotes = fastpath_remotes(config.backend, &desired);
            if let Err(e) = f.set_remotes(&remotes) {
                tracing::warn!(node = %config.node, error = %e, "updating the fast path's remote nodes failed; retrying");
            }
        }
        last_desired = Some(desired.clone());
        match sync(desired.clone(), vtep).await {
            Ok(changes) if !changes.is_empty() => {
                tracing::debug!(node = %config.node, ?changes, "pod network changed");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(node = %config.node, error = %e, "programming the routes to other nodes failed; retrying"),
        }
        let routed: Vec<String> = desired.routes.iter().map(|(c, r)| format!("{c} via {}", r.gateway)).collect();
        if routed != last_peers {
            tracing::info!(node = %config.node, backend = %config.backend, routes = ?routed, "routes to other nodes' pods");
            last_peers = routed;
        }
    }
}

/// Loads the fast path for `device` and attaches its receiving side there; None (and the
/// kernel's path for everything) when this kernel or this process cannot.
async fn fast_path(device: Device, via: Via) -> Option<Arc<FastPath>> {
    let loaded = blocking(move |rtnl| {
        let fast = FastPath::load(device, via).map_err(|e| e.to_string());
        Ok(fast.and_then(|f| f.attach_device(rtnl, device.index).map(|()| f).map_err(|e| e.to_string())))
    })
    .await;
    match loaded {
        Ok(Ok(f)) => {
            tracing::info!(
                "pod network fast path: established TCP connections between nodes' pods skip the hosts' forwarding (eBPF on tc)"
            );
            Some(Arc::new(f))
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "pod network fast path not in use; every packet takes the kernel's forwarding path");
            None
        }
        Err(e) => {
            tracing::warn!(error = %e, "pod network fast path not in use");
            None
        }
    }
}

/// The remote pod ranges the fast path sends to: their node's address, and with VXLAN their
/// VTEP's MAC (the route's gateway is the remote VTEP; its MAC leads to the node's address).
fn fastpath_remotes(backend: Backend, mesh: &Mesh) -> BTreeMap<Cidr, [u8; fastpath::REMOTE_VALUE]> {
    mesh.routes
        .iter()
        .filter_map(|(range, r)| match backend {
            Backend::Vxlan => {
                let mac = mesh.neighbours.get(&r.gateway)?;
                let node = mesh.fdb.get(mac)?;
                Some((*range, fastpath::remote_value(*node, Some(mac))))
            }
            _ => Some((*range, fastpath::remote_value(r.gateway, None))),
        })
        .collect()
}

async fn remove_device_and_routes() -> Result<(), kernel::KernelError> {
    blocking(|rtnl| {
        kernel::delete_vtep(rtnl)?;
        let current = kernel::read(rtnl, None)?;
        kernel::apply(rtnl, &plan::diff(&Mesh::default(), &current), None)
    })
    .await
}

/// Removes what the pod network made on this host: the VXLAN device, the routes to other
/// nodes, its nftables table (`capstan down`).
pub async fn teardown() -> Result<(), String> {
    remove_device_and_routes().await.map_err(|e| e.to_string())?;
    nftables::remove().await
}

/// One full sync: reads what the kernel holds of ours and makes what differs.
async fn sync(desired: Mesh, vtep: Option<u32>) -> Result<plan::Changes, kernel::KernelError> {
    blocking(move |rtnl| {
        let current = kernel::read(rtnl, vtep)?;
        let changes = plan::diff(&desired, &current);
        kernel::apply(rtnl, &changes, vtep)?;
        Ok(changes)
    })
    .await
}

#[derive(Debug, thiserror::Error)]
enum PrepareError {
    #[error(transparent)]
    Kernel(#[from] kernel::KernelError),
    #[error("the pod network's nftables table: {0}")]
    Nftables(String),
    #[error("publishing the node's VXLAN endpoint: {0}")]
    Publish(#[from] crate::client::ApiError),
}

/// The device, the nftables table and the annotations; returns the VXLAN device's index.
async fn prepare(api: &ApiClient, config: &MeshConfig, pod_cidr: Cidr) -> Result<Option<u32>, PrepareError> {
    let underlay = config.underlay.clone();
    let vxlan = config.active() && config.backend == Backend::Vxlan;
    let mac = plan::vtep_mac(underlay.address);
    let vtep = if vxlan {
        let spec = kernel::Vtep {
            mtu: config.pod_mtu(),
            underlay: underlay.clone(),
            mac,
            pod_cidr,
        };
        Some(blocking(move |rtnl| kernel::ensure_vtep(rtnl, &spec)).await?)
    } else {
        // Another backend now: the device and the routes of an earlier one go. Not on a
        // loopback underlay: agents there share a host with others and own none of it.
        if !underlay.address.is_loopback() {
            remove_device_and_routes().await?;
        }
        None
    };
    if config.active() {
        nftables::ensure(config.cluster_cidr, vxlan).await.map_err(PrepareError::Nftables)?;
    }
    let annotations = json!({
        plan::ANNOTATION_UNDERLAY_IP: config.active().then(|| underlay.address.to_string()),
        plan::ANNOTATION_VTEP_MAC: vxlan.then(|| plan::format_mac(&mac)),
    });
    api.merge_patch(
        &format!("/api/v1/nodes/{}", config.node),
        &json!({"metadata": {"annotations": annotations}}),
    )
    .await?;
    tracing::info!(
        node = %config.node,
        backend = %config.backend,
        underlay = %underlay.name,
        address = %underlay.address,
        pod_mtu = config.pod_mtu(),
        active = config.active(),
        "pod network across hosts",
    );
    Ok(vtep)
}
