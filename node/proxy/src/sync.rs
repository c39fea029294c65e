//! The proxy's loop: watch Services and EndpointSlices, and after each burst of changes apply
//! the difference to the kernel in one transaction; rewrite the whole table every resync interval
//! to repair what anyone else changed. Nothing is applied before both lists are complete, so a
//! restarting proxy never empties the table; a clean exit leaves the rules in place.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::ipvs::IpvsBackend;
use crate::nft::{self, Nft, NftSettings};
use crate::{ProxyConfig, ProxyError, ProxyMode, firewall};
use crate::{dns, model};

/// What the watches have seen.
#[derive(Default)]
struct View {
    services: BTreeMap<String, Service>,
    slices: BTreeMap<String, EndpointSlice>,
    services_listed: bool,
    slices_listed: bool,
    /// The highest resourceVersion seen in any event: what an apply of this view reflects.
    revision: u64,
}

/// A running proxy.
pub struct Proxy {
    cancel: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    applied: watch::Receiver<u64>,
    synced: watch::Receiver<u64>,
    pub backend: &'static str,
}

impl Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy").field("backend", &self.backend).finish()
    }
}

impl Proxy {
    /// Chooses the backend, checks that it works, opens Docker's FORWARD chain for the pod range
    /// and starts the loop.
    pub async fn start(client: kube::Client, config: ProxyConfig) -> Result<Proxy, ProxyError> {
        let dataplane = Dataplane::choose(&config).await?;
        firewall::open(config.netns.as_deref(), &config.pod_cidr.to_string()).await?;

        let backend = dataplane.name();
        let view = Arc::new(Mutex::new(View::default()));
        let changed = Arc::new(Notify::new());
        let cancel = CancellationToken::new();
        let records = Arc::new(RwLock::new(dns::Records {
            domain: config.cluster_domain.clone(),
            ..dns::Records::default()
        }));
        let mut dns_task = None;
        if let Some(addr) = config.dns {
            // Bind here, so that a taken port is an error of start, not a log line later.
            // The host's resolver for names outside the cluster (never ourselves).
            let upstream = config.dns_upstream.filter(|up| *up != std::net::SocketAddr::from(addr));
            let server = dns::Server::bind(addr.into())
                .await
                .map_err(|source| ProxyError::Dns { addr, source })?
                .forwarding_to(upstream)
                .answering(config.pod_cidr);
            dns_task = Some(tokio::spawn(server.serve(records.clone(), cancel.clone())));
        }
        let (applied_tx, applied) = watch::channel(0u64);
        let (synced_tx, synced) = watch::channel(0u64);
        let mut tasks = vec![
            tokio::spawn(watch_kind(
                Api::<Service>::all(client.clone()),
                view.clone(),
                changed.clone(),
                cancel.clone(),
                |v| (&mut v.services, &mut v.services_listed),
            )),
            tokio::spawn(watch_kind(
                Api::<EndpointSlice>::all(client),
                view.clone(),
                changed.clone(),
                cancel.clone(),
                |v| (&mut v.slices, &mut v.slices_listed),
            )),
            tokio::spawn(apply_loop(
                config,
                dataplane,
                view,
                changed,
                records,
                cancel.clone(),
                (applied_tx, synced_tx),
            )),
        ];
        tasks.extend(dns_task);
        Ok(Proxy {
            cancel,
            tasks,
            applied,
            synced,
            backend,
        })
    }

    /// How many transactions have been applied so far; changes each time one lands.
    pub fn applied(&self) -> watch::Receiver<u64> {
        self.applied.clone()
    }

    /// The API revision (resourceVersion) of the Services and EndpointSlices the kernel reflects:
    /// a pod removed from the endpoints at revision R gets no new connection through this proxy
    /// once this is at least R. Published on the node's Lease for stopping pods to wait on.
    pub fn synced(&self) -> watch::Receiver<u64> {
        self.synced.clone()
    }

    /// Stops the loop; the rules stay, so traffic keeps flowing until the next start.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Removes everything a proxy made (`capstan node --cleanup-proxy`): our nftables table, the
/// IPVS services and addresses where the kernel has IPVS, and the firewall openings.
pub async fn cleanup(config: &ProxyConfig) -> Result<(), ProxyError> {
    let nft = Nft::new(config.netns.clone(), config.table.clone());
    nft.delete_table().await?;
    if config.netns.is_none() && config.mode != ProxyMode::Nftables && crate::kernel_has_ipvs() {
        let service_cidr = config.service_cidr;
        let scheduler = config.ipvs_scheduler.clone();
        tokio::task::spawn_blocking(move || IpvsBackend::open(&scheduler, service_cidr)?.cleanup())
            .await
            .expect("IPVS cleanup thread")?;
    }
    firewall::close(config.netns.as_deref(), &config.pod_cidr.to_string()).await
}

/// The nftables dataplane and what it last applied.
struct NftPlane {
    nft: Nft,
    settings: NftSettings,
    renderer: nft::Renderer,
    /// Whether the kernel holds what the renderer last rendered (false after an error).
    synced: bool,
}

/// The kernel dataplane in use, with what it last applied.
enum Dataplane {
    Nft(Box<NftPlane>),
    Ipvs(Box<IpvsPlane>),
}

/// The IPVS dataplane and its nftables guard table.
struct IpvsPlane {
    /// Blocking netlink calls, made on a blocking thread.
    backend: Arc<Mutex<IpvsBackend>>,
    guard: Nft,
    /// The guard's hairpin set as last written; `None`: unknown (rewritten whole).
    hairpin: Option<BTreeSet<Ipv4Addr>>,
}

impl Dataplane {
    /// IPVS when the kernel has it (or it is asked for), nftables otherwise; checks that the
    /// chosen one answers.
    async fn choose(config: &ProxyConfig) -> Result<Dataplane, ProxyError> {
        let has_ipvs = config.mode != ProxyMode::Nftables && crate::kernel_has_ipvs();
        let use_ipvs = match (config.mode, has_ipvs) {
            (ProxyMode::Ipvs, false) => return Err(ProxyError::NoIpvs),
            (ProxyMode::Ipvs | ProxyMode::Auto, true) => {
                if config.netns.is_some() {
                    return Err(ProxyError::IpvsNetns);
                }
                tracing::info!("proxy: the kernel has IPVS; programming services as IPVS virtual servers");
                true
            }
            (ProxyMode::Auto, false) => {
                tracing::info!("proxy: the kernel has no IPVS; programming services with nftables");
                false
            }
            (ProxyMode::Nftables, _) => {
                tracing::info!("proxy: programming services with nftables (--proxy-mode nftables)");
                false
            }
        };
        if use_ipvs {
            let (scheduler, cidr) = (config.ipvs_scheduler.clone(), config.service_cidr);
            let backend = tokio::task::spawn_blocking(move || IpvsBackend::open(&scheduler, cidr))
                .await
                .expect("IPVS open thread")?;
            let guard = Nft::new(None, config.table.clone());
            guard.apply(&nft::ipvs_guard_script(&config.table, config.service_cidr)).await?;
            return Ok(Dataplane::Ipvs(Box::new(IpvsPlane {
                backend: Arc::new(Mutex::new(backend)),
                guard,
                hairpin: None,
            })));
        }
        let nft = Nft::new(config.netns.clone(), config.table.clone());
        nft.list().await?; // nft is there and answers
        Ok(Dataplane::Nft(Box::new(NftPlane {
            nft,
            settings: NftSettings {
                table: config.table.clone(),
                service_cidr: config.service_cidr,
                pod_cidr: config.pod_cidr,
                spread: config.spread,
            },
            renderer: nft::Renderer::default(),
            synced: false,
        })))
    }

    fn name(&self) -> &'static str {
        match self {
            Dataplane::Nft(_) => "nftables",
            Dataplane::Ipvs(_) => "ipvs",
        }
    }

    /// Applies `services`: the difference from the last apply, or (`full`, or after an error)
    /// everything against what the kernel holds.
    async fn apply(&mut self, services: Vec<model::VirtualService>, full: bool) -> Result<(), ProxyError> {
        match self {
            Dataplane::Nft(plane) => {
                let NftPlane {
                    nft,
                    settings,
                    renderer,
                    synced,
                } = &mut **plane;
                let update = renderer.render(&services, settings);
                let result = if *synced && !full {
                    nft.apply_update(&update).await
                } else {
                    match nft.list().await {
                        Ok(text) => {
                            let listing = nft::parse_listing(&text);
                            nft.apply_update(&renderer.full_update(settings, &listing)).await
                        }
                        Err(e) => Err(e),
                    }
                };
                *synced = result.is_ok();
                result
            }
            Dataplane::Ipvs(plane) => {
                let backend = plane.backend.clone();
                let known = if full { None } else { plane.hairpin.as_ref() };
                let (update, hairpin) = nft::hairpin_update(known, &services);
                let done = tokio::task::spawn_blocking(move || backend.lock().expect("IPVS backend").apply(&services, full))
                    .await
                    .expect("IPVS apply thread")?;
                tracing::debug!(requests = done.requests, addresses = done.addresses, "proxy: IPVS applied");
                let result = plane.guard.apply_update(&update).await;
                plane.hairpin = result.is_ok().then_some(hairpin);
                result
            }
        }
    }

    fn needs_full(&self) -> bool {
        match self {
            Dataplane::Nft(plane) => !plane.synced,
            // The backend falls back to a full apply by itself; the hairpin set needs one.
            Dataplane::Ipvs(plane) => plane.hairpin.is_none(),
        }
    }
}

fn revision<K: Resource>(o: &K) -> u64 {
    o.meta().resource_version.as_deref().and_then(|r| r.parse().ok()).unwrap_or(0)
}

fn key<K: Resource>(o: &K) -> String {
    format!("{}/{}", o.meta().namespace.as_deref().unwrap_or_default(), o.name_any())
}

type Pick<K> = fn(&mut View) -> (&mut BTreeMap<String, K>, &mut bool);

async fn watch_kind<K>(api: Api<K>, view: Arc<Mutex<View>>, changed: Arc<Notify>, cancel: CancellationToken, pick: Pick<K>)
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    K::DynamicType: Default,
{
    let mut stream = watcher(api, watcher::Config::default()).default_backoff().boxed();
    let mut listing: Option<BTreeMap<String, K>> = None;
    loop {
        let event = tokio::select! {
            _ = cancel.cancelled() => return,
            e = stream.next() => e,
        };
        let Some(event) = event else { return };
        let event = match event {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!("proxy: watching {}: {e}", K::plural(&Default::default()));
                continue;
            }
        };
        let mut v = view.lock().expect("view lock");
        let seen = match &event {
            Event::InitApply(o) | Event::Apply(o) | Event::Delete(o) => revision(o),
            _ => 0,
        };
        v.revision = v.revision.max(seen);
        let (objects, listed) = pick(&mut v);
        match event {
            Event::Init => listing = Some(BTreeMap::new()),
            Event::InitApply(o) => {
                if let Some(l) = listing.as_mut() {
                    l.insert(key(&o), o);
                }
            }
            Event::InitDone => {
                *objects = listing.take().unwrap_or_default();
                *listed = true;
                changed.notify_one();
            }
            Event::Apply(o) => {
                objects.insert(key(&o), o);
                changed.notify_one();
            }
            Event::Delete(o) => {
                objects.remove(&key(&o));
                changed.notify_one();
            }
        }
    }
}

async fn apply_loop(
    config: ProxyConfig,
    mut dataplane: Dataplane,
    view: Arc<Mutex<View>>,
    changed: Arc<Notify>,
    records: Arc<RwLock<dns::Records>>,
    cancel: CancellationToken,
    (applied_tx, synced_tx): (watch::Sender<u64>, watch::Sender<u64>),
) {
    let mut first = true;
    let mut next_full = Instant::now();
    let mut last_apply = Instant::now() - config.min_sync_interval;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = changed.notified() => {}
            _ = tokio::time::sleep_until(next_full) => {}
        }
        // Let a burst of changes gather into one transaction.
        tokio::time::sleep_until(last_apply + config.min_sync_interval).await;
        let (services, revision) = {
            let v = view.lock().expect("view lock");
            if !(v.services_listed && v.slices_listed) {
                continue; // never apply half a picture
            }
            *records.write().expect("records lock") = dns::records(&config.cluster_domain, v.services.values(), v.slices.values());
            let services = model::desired(v.services.values(), v.slices.values());
            let services = match config.dns {
                Some(addr) => model::with_local_dns(services, addr),
                None => services,
            };
            (services, v.revision)
        };
        let count = services.len();
        let full = first || dataplane.needs_full() || Instant::now() >= next_full;
        let result = dataplane.apply(services, full).await;
        last_apply = Instant::now();
        match result {
            Ok(()) => {
                first = false;
                if full {
                    next_full = Instant::now() + config.resync_interval;
                }
                tracing::debug!(services = count, full, "proxy: applied");
                applied_tx.send_modify(|n| *n += 1);
                synced_tx.send_if_modified(|r| {
                    let newer = revision > *r;
                    *r = (*r).max(revision);
                    newer
                });
            }
            Err(e) => {
                tracing::warn!("proxy: {e}; retrying with a full rewrite");
                first = true;
                next_full = Instant::now() + Duration::from_secs(1);
            }
        }
    }
}
