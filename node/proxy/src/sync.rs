//! The proxy's loop: watch Services and EndpointSlices, and after each burst of changes apply
//! the difference to the kernel in one transaction; rewrite the whole table every resync interval
//! to repair what anyone else changed. Nothing is applied before both lists are complete, so a
//! restarting proxy never empties the table; a clean exit leaves the rules in place.

use std::collections::BTreeMap;
use std::fmt::Debug;
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

pub use crate::dataplane::cleanup;
use crate::dataplane::{self, Dataplane};
use crate::{ProxyConfig, ProxyError, firewall};
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
        let dataplane = dataplane::choose(&config).await?;
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
    mut dataplane: Box<dyn Dataplane>,
    view: Arc<Mutex<View>>,
    changed: Arc<Notify>,
    records: Arc<RwLock<dns::Records>>,
    cancel: CancellationToken,
    (applied_tx, synced_tx): (watch::Sender<u64>, watch::Sender<u64>),
) {
    let mut first = true;
    let mut next_full = Instant::now();
    let mut last_apply = Instant::now() - config.min_sync_interval;
    // Until both lists are in, only a change wakes the loop (the timer would spin it).
    let mut complete = false;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = changed.notified() => {}
            _ = tokio::time::sleep_until(next_full), if complete => {}
        }
        // Let a burst of changes gather into one transaction: what arrived meanwhile is in the
        // view read below, so its wake-up is spent here.
        tokio::time::sleep_until(last_apply + config.min_sync_interval).await;
        let _ = futures::FutureExt::now_or_never(changed.notified());
        let (services, revision) = {
            let v = view.lock().expect("view lock");
            complete = v.services_listed && v.slices_listed;
            if !complete {
                continue; // never apply half a picture
            }
            *records.write().expect("records lock") = dns::records(&config.cluster_domain, v.services.values(), v.slices.values());
            let services = model::desired(v.services.values(), v.slices.values(), config.node_name.as_deref());
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    struct Loop {
        view: Arc<Mutex<View>>,
        changed: Arc<Notify>,
        fake: dataplane::Fake,
        applied: watch::Receiver<u64>,
        synced: watch::Receiver<u64>,
        cancel: CancellationToken,
    }

    /// The loop on a fake dataplane, with one Service and its slice in view (not yet listed).
    fn start(failures: u32) -> Loop {
        let mut view = View::default();
        let service: Service = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default", "resourceVersion": "40"},
            "spec": {"clusterIP": "10.96.0.20", "ports": [{"port": 80, "protocol": "TCP"}]},
        }))
        .unwrap();
        let slice: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": "web-1", "namespace": "default", "resourceVersion": "42", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.244.0.5"], "conditions": {"ready": true}}],
            "ports": [{"port": 8080, "protocol": "TCP"}],
        }))
        .unwrap();
        view.services.insert(key(&service), service);
        view.slices.insert(key(&slice), slice);
        view.revision = 42;
        let view = Arc::new(Mutex::new(view));
        let changed = Arc::new(Notify::new());
        let fake = dataplane::Fake::default();
        *fake.failures.lock().unwrap() = failures;
        let (applied_tx, applied) = watch::channel(0u64);
        let (synced_tx, synced) = watch::channel(0u64);
        let cancel = CancellationToken::new();
        let config = ProxyConfig {
            dns_upstream: None,
            ..ProxyConfig::default()
        };
        tokio::spawn(apply_loop(
            config,
            Box::new(fake.clone()),
            view.clone(),
            changed.clone(),
            Arc::default(),
            cancel.clone(),
            (applied_tx, synced_tx),
        ));
        Loop {
            view,
            changed,
            fake,
            applied,
            synced,
            cancel,
        }
    }

    impl Loop {
        fn applies(&self) -> Vec<(usize, bool)> {
            self.fake.applies.lock().unwrap().clone()
        }

        fn list_both(&self) {
            let mut v = self.view.lock().unwrap();
            v.services_listed = true;
            v.slices_listed = true;
            drop(v);
            self.changed.notify_one();
        }
    }

    async fn wait(ms: u64) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_is_applied_before_both_lists_are_complete() {
        let l = start(0);
        l.view.lock().unwrap().services_listed = true;
        l.changed.notify_one();
        wait(5_000).await;
        assert!(l.applies().is_empty(), "half a picture is never applied: {:?}", l.applies());
        l.list_both();
        wait(500).await;
        assert_eq!(l.applies(), [(1, true)], "the first apply is a full one");
        assert_eq!(*l.applied.borrow(), 1);
        assert_eq!(*l.synced.borrow(), 42, "the revision the kernel now reflects is published");
        l.cancel.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_changes_is_one_apply_and_the_table_is_rewritten_every_resync() {
        let l = start(0);
        l.list_both();
        wait(500).await;
        for _ in 0..5 {
            l.changed.notify_one();
        }
        wait(500).await;
        assert_eq!(l.applies(), [(1, true), (1, false)]);
        // Nothing changes: the resync interval (30 s) rewrites the whole table anyway.
        wait(30_000).await;
        assert_eq!(l.applies(), [(1, true), (1, false), (1, true)]);
        l.cancel.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_apply_is_followed_by_a_full_rewrite_a_second_later() {
        let l = start(1);
        l.list_both();
        wait(500).await;
        assert_eq!(l.applies(), [(1, true)]);
        assert_eq!(*l.applied.borrow(), 0, "a failed apply is not counted");
        assert_eq!(*l.synced.borrow(), 0);
        wait(1_000).await;
        assert_eq!(l.applies(), [(1, true), (1, true)]);
        assert_eq!(*l.applied.borrow(), 1);
        assert_eq!(*l.synced.borrow(), 42);
        l.cancel.cancel();
    }
}
