//! The seam between the proxy's loop and a kernel dataplane: a [`Dataplane`] applies the
//! virtual services (a difference, or everything against what the kernel holds) and says when it
//! needs a full rewrite. Implemented by nftables and by IPVS (with its nftables guard table);
//! [`choose`] picks one for the kernel at hand; a fake records applies for the loop's tests.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;

use crate::ipvs::IpvsBackend;
use crate::model::VirtualService;
use crate::nft::{self, Nft, NftSettings};
use crate::{ProxyConfig, ProxyError, ProxyMode, firewall};

/// A kernel dataplane, with what it last applied.
pub trait Dataplane: Send {
    /// `nftables` or `ipvs`, for logs.
    fn name(&self) -> &'static str;
    /// Applies `services`: the difference from the last apply, or (`full`, or after an error)
    /// everything against what the kernel holds.
    fn apply(&mut self, services: Vec<VirtualService>, full: bool) -> BoxFuture<'_, Result<(), ProxyError>>;
    /// Whether the next apply must be a full one (the last one failed, or state is unknown).
    fn needs_full(&self) -> bool;
}

/// The nftables dataplane and what it last applied.
struct NftPlane {
    nft: Nft,
    settings: NftSettings,
    renderer: nft::Renderer,
    /// Whether the kernel holds what the renderer last rendered (false after an error).
    synced: bool,
}

/// The IPVS dataplane and its nftables guard table.
struct IpvsPlane {
    /// Blocking netlink calls, made on a blocking thread.
    backend: Arc<Mutex<IpvsBackend>>,
    guard: Nft,
    /// The guard's hairpin set as last written; `None`: unknown (rewritten whole).
    hairpin: Option<BTreeSet<Ipv4Addr>>,
}

/// IPVS when the kernel has it (or it is asked for), nftables otherwise; checks that the
/// chosen one answers.
pub async fn choose(config: &ProxyConfig) -> Result<Box<dyn Dataplane>, ProxyError> {
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
        return Ok(Box::new(IpvsPlane {
            backend: Arc::new(Mutex::new(backend)),
            guard,
            hairpin: None,
        }));
    }
    let nft = Nft::new(config.netns.clone(), config.table.clone());
    nft.list().await?; // nft is there and answers
    Ok(Box::new(NftPlane {
        nft,
        settings: NftSettings {
            table: config.table.clone(),
            service_cidr: config.service_cidr,
            pod_cidr: config.pod_cidr,
            spread: config.spread,
        },
        renderer: nft::Renderer::default(),
        synced: false,
    }))
}

impl Dataplane for NftPlane {
    fn name(&self) -> &'static str {
        "nftables"
    }

    fn apply(&mut self, services: Vec<VirtualService>, full: bool) -> BoxFuture<'_, Result<(), ProxyError>> {
        Box::pin(async move {
            let update = self.renderer.render(&services, &self.settings);
            let result = if self.synced && !full {
                self.nft.apply_update(&update).await
            } else {
                match self.nft.list().await {
                    Ok(text) => {
                        let listing = nft::parse_listing(&text);
                        let whole = self.renderer.full_update(&self.settings, &listing);
                        self.nft.apply_update(&whole).await
                    }
                    Err(e) => Err(e),
                }
            };
            self.synced = result.is_ok();
            result
        })
    }

    fn needs_full(&self) -> bool {
        !self.synced
    }
}

impl Dataplane for IpvsPlane {
    fn name(&self) -> &'static str {
        "ipvs"
    }

    fn apply(&mut self, services: Vec<VirtualService>, full: bool) -> BoxFuture<'_, Result<(), ProxyError>> {
        Box::pin(async move {
            let backend = self.backend.clone();
            let known = if full { None } else { self.hairpin.as_ref() };
            let (update, hairpin) = nft::hairpin_update(known, &services);
            let done = tokio::task::spawn_blocking(move || backend.lock().expect("IPVS backend").apply(&services, full))
                .await
                .expect("IPVS apply thread")?;
            tracing::debug!(requests = done.requests, addresses = done.addresses, "proxy: IPVS applied");
            let result = self.guard.apply_update(&update).await;
            self.hairpin = result.is_ok().then_some(hairpin);
            result
        })
    }

    /// The backend falls back to a full apply by itself; the hairpin set needs one.
    fn needs_full(&self) -> bool {
        self.hairpin.is_none()
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

/// A dataplane that records what it is asked to apply, for the loop's tests.
#[cfg(test)]
#[derive(Clone, Default)]
pub struct Fake {
    /// Each apply: how many services, and whether it was full.
    pub applies: Arc<Mutex<Vec<(usize, bool)>>>,
    /// Applies that fail from now on, one each.
    pub failures: Arc<Mutex<u32>>,
    synced: bool,
}

#[cfg(test)]
impl Dataplane for Fake {
    fn name(&self) -> &'static str {
        "fake"
    }

    fn apply(&mut self, services: Vec<VirtualService>, full: bool) -> BoxFuture<'_, Result<(), ProxyError>> {
        self.applies.lock().unwrap().push((services.len(), full));
        let mut failures = self.failures.lock().unwrap();
        let result = if *failures > 0 {
            *failures -= 1;
            Err(ProxyError::Nft { stderr: "refused".into() })
        } else {
            Ok(())
        };
        self.synced = result.is_ok();
        Box::pin(std::future::ready(result))
    }

    fn needs_full(&self) -> bool {
        !self.synced
    }
}
