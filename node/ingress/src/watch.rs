//! The ingress's loop: reflect Ingresses and IngressClasses, the Gateway API objects, Services,
//! EndpointSlices and Namespaces through the API, and after each burst of changes swap in tables
//! built from all of them (open connections keep the one they started with), bind and release the
//! Gateways' listener ports, and read the TLS Secrets the tables name, each watched by its name
//! (a node may get and watch those, not list Secrets) so a renewed certificate is served at once.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use capstan_api::gateway::{Gateway, GatewayClass, HTTPRoute, ReferenceGrant};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::backends::Backends;
use crate::ingresses::{self, IngressPorts};
use crate::serve::{self, Shared};
use crate::table::{SecretRef, Tables};
use crate::{gateway, tls};

/// How long a burst of changes is gathered before the table is rebuilt.
const SETTLE: Duration = Duration::from_millis(5);
/// How often the TLS Secrets are read again besides their watches (a watch the API refuses, or
/// one that stalls, still sees a renewal this soon; unchanged ones cost no parsing: their
/// resourceVersion is compared).
const CERTIFICATE_REFRESH: Duration = Duration::from_secs(60);
/// How soon a Secret that could not be used is read again when the table changes.
const RETRY: Duration = Duration::from_secs(5);

/// The objects of a store's state, owned.
fn owned<K: Clone>(state: Vec<Arc<K>>) -> Vec<K> {
    state.iter().map(|o| (**o).clone()).collect()
}

/// Reflects `K` into a store, poking `changed` on every event, until `stop`.
fn reflect<K>(api: Api<K>, changed: Arc<Notify>, stop: CancellationToken) -> (Store<K>, tokio::task::JoinHandle<()>)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(api, watcher::Config::default()).default_backoff());
    let task = tokio::spawn(async move {
        let mut stream = stream.boxed();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                event = stream.next() => match event {
                    Some(Ok(_)) => changed.notify_one(),
                    Some(Err(e)) => tracing::warn!("ingress: watching {}: {e}", K::plural(&Default::default())),
                    None => return,
                },
            }
        }
    });
    (reader, task)
}

/// A watch of each TLS Secret in use, narrowed to its name, saying which one changed.
struct SecretWatches {
    running: HashMap<SecretRef, CancellationToken>,
    changed: tokio::sync::mpsc::UnboundedSender<SecretRef>,
}

impl SecretWatches {
    /// Watches the Secrets in `wanted` not watched yet and stops those no longer wanted.
    fn reconcile(&mut self, client: &kube::Client, wanted: &[SecretRef], stop: &CancellationToken) {
        self.running.retain(|r, token| {
            let keep = wanted.contains(r);
            if !keep {
                token.cancel();
            }
            keep
        });
        for r in wanted {
            if self.running.contains_key(r) {
                continue;
            }
            let token = stop.child_token();
            let api: Api<Secret> = Api::namespaced(client.clone(), &r.namespace);
            let config = watcher::Config::default().fields(&format!("metadata.name={}", r.name));
            let mut events = watcher(api, config).default_backoff().boxed();
            let (r2, changed, stopped) = (r.clone(), self.changed.clone(), token.clone());
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = stopped.cancelled() => return,
                        event = events.next() => match event {
                            // The first list and every change: read again (a version compare
                            // when nothing changed).
                            Some(Ok(watcher::Event::InitDone | watcher::Event::Apply(_) | watcher::Event::Delete(_))) => {
                                let _ = changed.send(r2.clone());
                            }
                            Some(Ok(_)) => {}
                            Some(Err(e)) => tracing::debug!(secret = %format!("{}/{}", r2.namespace, r2.name), "ingress: watching a TLS secret: {e}"),
                            None => return,
                        },
                    }
                }
            });
            self.running.insert(r.clone(), token);
        }
    }
}

/// Where the listeners of Gateways bind, beside the node's Ingress ports.
#[derive(Clone, Copy, Debug)]
pub struct Listening {
    pub ingress: IngressPorts,
    /// The address Gateway listeners bind on (with their own ports).
    pub address: IpAddr,
}

/// The Gateway listeners running: each port's stop token.
#[derive(Default)]
struct Listeners {
    running: HashMap<u16, CancellationToken>,
    failed: HashMap<u16, String>,
}

impl Listeners {
    /// Binds the ports `wanted` asks for that the Ingress listeners do not serve, and stops those
    /// no longer wanted; a port that cannot be bound is said once and tried at the next change.
    fn reconcile(&mut self, wanted: &BTreeMap<u16, bool>, listening: Listening, shared: &Arc<Shared>, stop: &CancellationToken) {
        let ingress = [listening.ingress.http, listening.ingress.https];
        self.running.retain(|port, token| {
            let keep = wanted.contains_key(port);
            if !keep {
                token.cancel();
            }
            keep
        });
        for (&port, &tls) in wanted {
            if ingress.contains(&Some(port)) || self.running.contains_key(&port) {
                continue;
            }
            match serve::bind(SocketAddr::new(listening.address, port)) {
                Ok((_, sockets)) => {
                    let token = stop.child_token();
                    serve::spawn_workers(sockets, port, tls, shared, &token);
                    self.running.insert(port, token);
                    self.failed.remove(&port);
                    tracing::info!(port, tls, "gateway listener bound");
                }
                Err(e) => {
                    let problem = format!("the gateway listener cannot bind {}:{port}: {e}", listening.address);
                    if self.failed.insert(port, problem.clone()).is_none() {
                        tracing::error!("{problem}");
                    }
                }
            }
        }
    }
}

/// Keeps `shared`'s tables, certificates and Gateway listeners in line with the API until
/// `stop`. `applied` counts the tables swapped in (tests and benchmarks wait on it).
pub async fn follow(client: kube::Client, shared: Arc<Shared>, listening: Listening, applied: watch::Sender<u64>, stop: CancellationToken) {
    let changed = Arc::new(Notify::new());
    let api = || client.clone();
    let (ingresses, t1) = reflect(Api::<Ingress>::all(api()), changed.clone(), stop.clone());
    let (ingress_classes, t2) = reflect(Api::<IngressClass>::all(api()), changed.clone(), stop.clone());
    let (services, t3) = reflect(Api::<Service>::all(api()), changed.clone(), stop.clone());
    let (slices, t4) = reflect(Api::<EndpointSlice>::all(api()), changed.clone(), stop.clone());
    let (gateway_classes, t5) = reflect(Api::<GatewayClass>::all(api()), changed.clone(), stop.clone());
    let (gateways, t6) = reflect(Api::<Gateway>::all(api()), changed.clone(), stop.clone());
    let (routes, t7) = reflect(Api::<HTTPRoute>::all(api()), changed.clone(), stop.clone());
    let (grants, t8) = reflect(Api::<ReferenceGrant>::all(api()), changed.clone(), stop.clone());
    let (namespaces, t9) = reflect(Api::<Namespace>::all(api()), changed.clone(), stop.clone());
    let tasks = [t1, t2, t3, t4, t5, t6, t7, t8, t9];
    let ready = async {
        let _ = tokio::join!(
            ingresses.wait_until_ready(),
            ingress_classes.wait_until_ready(),
            services.wait_until_ready(),
            slices.wait_until_ready(),
            gateway_classes.wait_until_ready(),
            gateways.wait_until_ready(),
            routes.wait_until_ready(),
            grants.wait_until_ready(),
            namespaces.wait_until_ready(),
        );
    };
    tokio::select! {
        _ = stop.cancelled() => return,
        _ = ready => {}
    }
    let mut loaded = Loaded::default();
    let mut listeners = Listeners::default();
    let (secret_changed, mut secret_changes) = tokio::sync::mpsc::unbounded_channel();
    let mut secret_watches = SecretWatches {
        running: HashMap::new(),
        changed: secret_changed,
    };
    let mut refresh = tokio::time::interval(CERTIFICATE_REFRESH);
    refresh.tick().await;
    let mut rebuild = true;
    loop {
        if rebuild {
            tokio::time::sleep(SETTLE).await;
            let (services, slices) = (services.state(), slices.state());
            let mut backends = Backends::new(services.iter().map(|s| &**s), slices.iter().map(|s| &**s));
            let mut tables = Tables::default();
            let ingress_classes: Vec<IngressClass> = owned(ingress_classes.state());
            ingresses::add(
                &mut tables,
                listening.ingress,
                ingresses.state().iter().map(|i| &**i),
                &ingress_classes,
                &mut backends,
            );
            let report = gateway::add(
                &mut tables,
                &owned(gateway_classes.state()),
                &owned(gateways.state()),
                &owned(routes.state()),
                &owned(grants.state()),
                &owned(namespaces.state()),
                &mut backends,
            );
            tables.finish();
            listeners.reconcile(&report.ports, listening, &shared, &stop);
            let wanted = tables.secrets();
            secret_watches.reconcile(&client, &wanted, &stop);
            let before = loaded.pairs.len();
            loaded.pairs.retain(|k, _| wanted.contains(k));
            loaded.failed.retain(|k, _| wanted.contains(k));
            let missing: Vec<SecretRef> = wanted
                .into_iter()
                .filter(|w| !loaded.pairs.contains_key(w) && loaded.failed.get(w).is_none_or(|at| at.elapsed() >= RETRY))
                .collect();
            if !missing.is_empty() || before != loaded.pairs.len() {
                loaded.load(&client, missing).await;
                shared.set_certificates(loaded.certificates());
            }
            // The certificates first: a new host's first HTTPS client gets its certificate.
            shared.set_tables(tables);
            applied.send_modify(|n| *n += 1);
        }
        rebuild = tokio::select! {
            _ = stop.cancelled() => break,
            _ = changed.notified() => true,
            Some(r) = secret_changes.recv() => {
                loaded.load(&client, vec![r]).await;
                shared.set_certificates(loaded.certificates());
                false
            }
            _ = refresh.tick() => {
                let all: Vec<SecretRef> = loaded.pairs.keys().chain(loaded.failed.keys()).cloned().collect();
                loaded.load(&client, all).await;
                shared.set_certificates(loaded.certificates());
                false
            }
        };
    }
    for t in tasks {
        let _ = t.await;
    }
}

/// The TLS key pairs read so far (with the Secret's resourceVersion), and the Secrets that could
/// not be read or held no valid pair (when; said once, tried again after `RETRY`).
#[derive(Default)]
struct Loaded {
    pairs: HashMap<SecretRef, (String, Arc<rustls::sign::CertifiedKey>)>,
    failed: HashMap<SecretRef, Instant>,
}

impl Loaded {
    fn certificates(&self) -> HashMap<SecretRef, Arc<rustls::sign::CertifiedKey>> {
        self.pairs.iter().map(|(k, (_, c))| (k.clone(), c.clone())).collect()
    }

    /// Reads each Secret and keeps its key pair when it is new and valid; a Secret that cannot
    /// be read or holds no valid pair is logged once (the daemon reports it on the Ingress).
    async fn load(&mut self, client: &kube::Client, refs: Vec<SecretRef>) {
        for r in refs {
            let name = format!("{}/{}", r.namespace, r.name);
            let api: Api<Secret> = Api::namespaced(client.clone(), &r.namespace);
            let problem = match api.get(&r.name).await {
                Err(e) => format!("cannot read the TLS secret: {e}"),
                Ok(secret) => {
                    let version = secret.metadata.resource_version.clone().unwrap_or_default();
                    if self.pairs.get(&r).is_some_and(|(v, _)| *v == version) {
                        continue;
                    }
                    let data = secret.data.unwrap_or_default();
                    let field = |k: &str| data.get(k).map(|b| String::from_utf8_lossy(&b.0).into_owned()).unwrap_or_default();
                    match tls::certified_key(&field("tls.crt"), &field("tls.key")) {
                        Ok(key) => {
                            self.failed.remove(&r);
                            self.pairs.insert(r, (version, Arc::new(key)));
                            continue;
                        }
                        Err(e) => format!("the TLS secret holds no usable key pair: {e}"),
                    }
                }
            };
            if self.failed.insert(r, Instant::now()).is_none() {
                tracing::warn!(secret = %name, "ingress: {problem}");
            }
        }
    }
}
