//! The ingress's loop: reflect Ingresses, IngressClasses, Services and EndpointSlices through the
//! API, and after each burst of changes swap in a table built from all of them (open connections
//! keep the one they started with); read the TLS Secrets the table names (a node may get those,
//! not list Secrets), again every minute so a renewed certificate is picked up.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::routes::{self, SecretRef};
use crate::serve::Shared;
use crate::tls;

/// How long a burst of changes is gathered before the table is rebuilt.
const SETTLE: Duration = Duration::from_millis(5);
/// How often the TLS Secrets are read again.
const CERTIFICATE_REFRESH: Duration = Duration::from_secs(60);
/// How soon a Secret that could not be used is read again when the table changes.
const RETRY: Duration = Duration::from_secs(5);

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

/// Keeps `shared`'s table and certificates in line with the API until `stop`. `applied` counts
/// the tables swapped in (tests and benchmarks wait on it).
pub async fn follow(client: kube::Client, shared: Arc<Shared>, applied: watch::Sender<u64>, stop: CancellationToken) {
    let changed = Arc::new(Notify::new());
    let (ingresses, a) = reflect(Api::<Ingress>::all(client.clone()), changed.clone(), stop.clone());
    let (classes, b) = reflect(Api::<IngressClass>::all(client.clone()), changed.clone(), stop.clone());
    let (services, c) = reflect(Api::<Service>::all(client.clone()), changed.clone(), stop.clone());
    let (slices, d) = reflect(Api::<EndpointSlice>::all(client.clone()), changed.clone(), stop.clone());
    let tasks = [a, b, c, d];
    let ready = async {
        let _ = tokio::join!(
            ingresses.wait_until_ready(),
            classes.wait_until_ready(),
            services.wait_until_ready(),
            slices.wait_until_ready()
        );
    };
    tokio::select! {
        _ = stop.cancelled() => return,
        _ = ready => {}
    }
    let mut loaded = Loaded::default();
    let mut refresh = tokio::time::interval(CERTIFICATE_REFRESH);
    refresh.tick().await;
    let mut rebuild = true;
    loop {
        if rebuild {
            tokio::time::sleep(SETTLE).await;
            let classes: Vec<IngressClass> = classes.state().iter().map(|c| (**c).clone()).collect();
            let ingresses = ingresses.state();
            let services = services.state();
            let slices = slices.state();
            let table = routes::table(
                ingresses.iter().map(|i| &**i),
                &classes,
                services.iter().map(|s| &**s),
                slices.iter().map(|s| &**s),
            );
            let wanted: Vec<SecretRef> = table.certificates.values().cloned().collect();
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
            shared.set_table(table);
            applied.send_modify(|n| *n += 1);
        }
        rebuild = tokio::select! {
            _ = stop.cancelled() => break,
            _ = changed.notified() => true,
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
