//! The controller manager: the reconcile loops that keep the cluster as desired, each on the
//! shared runtime (work queue, back-off), fed by the watch cache. Started by the daemon.

pub mod deployment;
pub mod endpoints;
pub mod events;
pub mod gc;
pub mod namespace;
pub mod node;
pub mod quota;
pub mod replicaset;
pub mod service;
pub mod serviceaccount;
pub mod util;

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use capstan_api::KindInfo;
use capstan_runtime::{Backoff, WorkQueue};
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use capstan_api::cidr::Cidr;

use crate::cache::Cache;
use crate::objects::Objects;
use events::Recorder;

/// Cluster settings the controllers follow (from ClusterSettings in Git, or defaults).
#[derive(Clone, Debug)]
pub struct Settings {
    pub service_cidr: Cidr,
    pub pod_cidr: Cidr,
    /// A node whose Lease is older than this is NotReady.
    pub node_grace: Duration,
    /// Pods on a NotReady node are evicted after this, unless they tolerate longer.
    pub eviction_timeout: Duration,
    /// Where the `kubernetes` Service's endpoints point.
    pub api_endpoint: (Ipv4Addr, u16),
    /// The cluster CA (PEM), published in every namespace as ConfigMap `kube-root-ca.crt`.
    pub root_ca: String,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            service_cidr: capstan_api::cidr::SERVICE_RANGE,
            pod_cidr: capstan_api::cidr::POD_RANGE,
            node_grace: Duration::from_secs(40),
            eviction_timeout: Duration::from_secs(300),
            api_endpoint: (Ipv4Addr::LOCALHOST, 6443),
            root_ca: String::new(),
        }
    }
}

/// What every controller gets.
#[derive(Clone)]
pub struct Context {
    pub objects: Objects,
    pub cache: Arc<Cache>,
    pub settings: Arc<Settings>,
    /// Held across a quota check and the create it admits, so that two creates cannot both
    /// fit under the same last unit of quota.
    pub admission: Arc<tokio::sync::Mutex<()>>,
}

impl Context {
    pub fn new(objects: Objects, cache: Arc<Cache>, settings: Settings) -> Context {
        Context {
            objects,
            cache,
            settings: Arc::new(settings),
            admission: Arc::new(tokio::sync::Mutex::new(())),
        }
    }
}

/// The ClusterSettings object from Git, if the repository has one.
pub fn cluster_settings(cache: &Cache) -> Option<capstan_api::capstan::ClusterSettingsSpec> {
    let (all, _) = cache.list(kind("clustersettings"), None);
    all.first().and_then(|e| serde_json::from_value(e.object["spec"].clone()).ok())
}

impl Context {
    /// The settings in force now: the ones the daemon started with, overridden by what the
    /// repository's ClusterSettings says about node grace and eviction (read live, so that a
    /// commit changes them). Address ranges are taken at start only: changing them under running
    /// Services and nodes would renumber them.
    pub fn live(&self) -> Settings {
        let mut s = (*self.settings).clone();
        if let Some(git) = cluster_settings(&self.cache) {
            if let Some(secs) = git.node_grace_period_seconds {
                s.node_grace = Duration::from_secs(secs.into());
            }
            if let Some(secs) = git.pod_eviction_timeout_seconds {
                s.eviction_timeout = Duration::from_secs(secs.into());
            }
        }
        s
    }

    /// Waits until the cache reflects every write made so far, so that a reconcile never acts on
    /// a state older than its own previous writes (this is what keeps a ReplicaSet from
    /// creating a pod twice).
    pub async fn caught_up(&self) {
        self.cache.wait_for(self.objects.store().revision()).await;
    }
}

/// The registry entry of a plural that is known to be served.
pub fn kind(plural: &str) -> &'static KindInfo {
    capstan_api::kinds::REGISTRY
        .iter()
        .find(|k| k.plural == plural)
        .expect("the plural is served")
}

/// Feeds a queue from the cache: every object of `kind` now, then every change, each mapped to
/// the keys it concerns.
pub fn feed<K, F>(ctx: &Context, kind: &'static KindInfo, queue: WorkQueue<K>, map: F, shutdown: CancellationToken) -> JoinHandle<()>
where
    K: Clone + Eq + std::hash::Hash + std::fmt::Debug + Send + 'static,
    F: Fn(&Value) -> Vec<K> + Send + Sync + 'static,
{
    let cache = ctx.cache.clone();
    tokio::spawn(async move {
        loop {
            let (items, rev) = cache.list(kind, None);
            for e in &items {
                for k in map(&e.object) {
                    queue.add(k);
                }
            }
            let mut watch = match cache.watch(kind, None, rev) {
                Ok(w) => w,
                Err(_) => continue,
            };
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    next = watch.next() => match next {
                        Ok(e) => {
                            for k in map(&e.entry.object) {
                                queue.add(k);
                            }
                        }
                        // Fell behind: list again.
                        Err(_) => break,
                    }
                }
            }
        }
    })
}

fn ns_name(v: &Value) -> Vec<util::NsName> {
    vec![util::key_of(v)]
}

/// The registry entry of an object's kind.
fn kind_of(o: &Value) -> &'static KindInfo {
    let group = o["apiVersion"]
        .as_str()
        .map(|a| capstan_api::kinds::split_api_version(a).0)
        .unwrap_or_default();
    capstan_api::kinds::by_group_kind(group, o["kind"].as_str().unwrap_or_default()).unwrap_or_else(|| kind("pods"))
}

/// Starts every controller; they stop when `shutdown` is cancelled.
pub fn start(ctx: Context, shutdown: CancellationToken) -> Vec<JoinHandle<()>> {
    let mut tasks = Vec::new();
    let objects = ctx.objects.clone();
    let backoff = Backoff {
        base: Duration::from_millis(100),
        max: Duration::from_secs(60),
    };
    macro_rules! controller {
        ($name:literal, $reconciler:expr, $workers:expr, [$(($plural:literal, $map:expr)),* $(,)?]) => {{
            let queue = WorkQueue::new(backoff, Duration::ZERO);
            $(tasks.push(feed(&ctx, kind($plural), queue.clone(), $map, shutdown.clone()));)*
            tasks.push(tokio::spawn(capstan_runtime::run($name, queue, Arc::new($reconciler), $workers, shutdown.clone())));
        }};
    }

    let rs_cache = ctx.cache.clone();
    controller!(
        "replicaset",
        replicaset::ReplicaSetController {
            ctx: ctx.clone(),
            events: Recorder::new(objects.clone(), "replicaset-controller", None)
        },
        4,
        [
            ("replicasets", replicaset::keys_for),
            ("pods", move |p: &Value| {
                let keys = replicaset::keys_for(p);
                if !keys.is_empty() || util::controller_ref(p).is_some() {
                    return keys;
                }
                // An orphan: every ReplicaSet of its namespace may want to adopt it.
                let ns = p["metadata"]["namespace"].as_str().unwrap_or_default();
                rs_cache
                    .list(kind("replicasets"), Some(ns))
                    .0
                    .iter()
                    .map(|e| (e.namespace.clone(), e.name.clone()))
                    .collect()
            }),
        ]
    );
    controller!(
        "deployment",
        deployment::DeploymentController {
            ctx: ctx.clone(),
            events: Recorder::new(objects.clone(), "deployment-controller", None)
        },
        4,
        [("deployments", deployment::keys_for), ("replicasets", deployment::keys_for),]
    );
    let svc_cache = ctx.cache.clone();
    controller!(
        "endpoints",
        endpoints::EndpointsController { ctx: ctx.clone() },
        2,
        [
            ("services", ns_name),
            ("pods", move |p: &Value| endpoints::services_selecting(&svc_cache, p)),
        ]
    );
    // One worker: allocations must not race each other.
    controller!(
        "service",
        service::ServiceController {
            ctx: ctx.clone(),
            events: Recorder::new(objects.clone(), "service-controller", None)
        },
        1,
        [("services", ns_name)]
    );
    controller!(
        "namespace",
        namespace::NamespaceController { ctx: ctx.clone() },
        2,
        [("namespaces", |n: &Value| vec![
            n["metadata"]["name"].as_str().unwrap_or_default().to_owned()
        ])]
    );
    controller!(
        "serviceaccount",
        serviceaccount::ServiceAccountController { ctx: ctx.clone() },
        1,
        [
            ("namespaces", |n: &Value| vec![
                n["metadata"]["name"].as_str().unwrap_or_default().to_owned()
            ]),
            ("serviceaccounts", |s: &Value| vec![
                s["metadata"]["namespace"].as_str().unwrap_or_default().to_owned()
            ]),
            ("configmaps", |c: &Value| {
                if c["metadata"]["name"] == serviceaccount::ROOT_CA_CONFIG_MAP {
                    vec![c["metadata"]["namespace"].as_str().unwrap_or_default().to_owned()]
                } else {
                    Vec::new()
                }
            }),
        ]
    );
    let quota_cache = ctx.cache.clone();
    let quotas_of = move |v: &Value| -> Vec<util::NsName> {
        let ns = v["metadata"]["namespace"].as_str().unwrap_or_default();
        quota_cache
            .list(kind("resourcequotas"), Some(ns))
            .0
            .iter()
            .map(|e| (e.namespace.clone(), e.name.clone()))
            .collect()
    };
    let (q1, q2, q3, q4) = (quotas_of.clone(), quotas_of.clone(), quotas_of.clone(), quotas_of);
    controller!(
        "resourcequota",
        quota::QuotaController { ctx: ctx.clone() },
        1,
        [
            ("resourcequotas", ns_name),
            ("pods", q1),
            ("services", q2),
            ("configmaps", q3),
            ("secrets", q4),
        ]
    );
    // An owner's change (its deletion above all) is a reason to look at its dependents.
    let gc_cache = ctx.cache.clone();
    let with_dependents = move |o: &Value| -> Vec<gc::Key> {
        let mut keys = gc::key_for(o);
        // Only a deleted owner leaves dependents to collect.
        if o["metadata"]["deletionTimestamp"].is_null()
            && gc_cache
                .get(kind_of(o), util::key_of(o).0.as_str(), util::key_of(o).1.as_str())
                .is_some()
        {
            return keys;
        }
        let owner_uid = util::uid(o);
        for plural in ["pods", "replicasets", "endpointslices"] {
            for e in gc_cache.controlled_by(kind(plural), owner_uid) {
                keys.push((plural, e.namespace.clone(), e.name.clone()));
            }
        }
        keys
    };
    let (d1, d2, d3) = (with_dependents.clone(), with_dependents.clone(), with_dependents);
    controller!(
        "garbage-collector",
        gc::GarbageCollector { ctx: ctx.clone() },
        2,
        [
            ("pods", gc::key_for),
            ("endpointslices", gc::key_for),
            ("replicasets", d1),
            ("deployments", d2),
            ("services", d3),
        ]
    );
    let node_cache = ctx.cache.clone();
    controller!(
        "node-lifecycle",
        node::NodeLifecycle {
            ctx: ctx.clone(),
            events: Recorder::new(objects.clone(), "node-controller", None)
        },
        1,
        [
            ("nodes", |n: &Value| vec![
                n["metadata"]["name"].as_str().unwrap_or_default().to_owned()
            ]),
            ("leases", |l: &Value| {
                if l["metadata"]["namespace"] == "kube-node-lease" {
                    vec![l["metadata"]["name"].as_str().unwrap_or_default().to_owned()]
                } else {
                    vec![]
                }
            }),
            // New grace or eviction settings from Git: every node is looked at again.
            ("clustersettings", move |_: &Value| node_cache
                .list(kind("nodes"), None)
                .0
                .iter()
                .map(|e| e.name.clone())
                .collect()),
        ]
    );
    // The built-in objects: system namespaces, the `kubernetes` and `kube-dns` Services.
    let builtin_ctx = ctx.clone();
    tasks.push(tokio::spawn(async move {
        if let Err(e) = namespace::ensure_builtins(&builtin_ctx).await {
            tracing::error!(error = %e, "cannot create the built-in objects");
        }
    }));
    tasks
}
