//! The controller manager: the reconcile loops that keep the cluster as desired, each on the
//! shared runtime (work queue, back-off, error classes), fed by the watch cache through the
//! triggers each controller declares beside its reconcile. Started by the daemon.

pub mod apiserver;
pub mod autoscaler;
pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod disruption;
pub mod endpoints;
pub mod eventttl;
pub mod gateway;
pub mod gc;
pub mod ingress;
pub mod job;
pub mod namespace;
pub mod node;
pub mod podcontrol;
pub mod quota;
pub mod replicaset;
pub mod revisions;
pub mod service;
pub mod serviceaccount;
pub mod statefulset;
pub mod util;
pub mod volume;

use std::sync::Arc;
use std::time::Duration;

use capstan_api::KindInfo;
use capstan_runtime::{Backoff, Reconciler, WorkQueue};
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::context::{Context, kind};

/// Maps a changed object to the keys of the controller it concerns.
pub type KeyMap<K> = Box<dyn Fn(&Value) -> Vec<K> + Send + Sync>;

/// What a controller watches: objects of a kind, and how each maps to the controller's keys
/// (kube-runtime's `owns` and `watches`).
pub struct Trigger<K> {
    pub kind: &'static KindInfo,
    pub map: KeyMap<K>,
}

/// A trigger on objects of `plural`.
pub fn watches<K>(plural: &str, map: impl Fn(&Value) -> Vec<K> + Send + Sync + 'static) -> Trigger<K> {
    Trigger {
        kind: kind(plural),
        map: Box::new(map),
    }
}

/// One controller as it declares itself: its reconciler, what it watches, and how many keys it
/// works on at once.
pub struct Controller<K, R> {
    pub name: &'static str,
    pub reconciler: R,
    pub workers: usize,
    pub triggers: Vec<Trigger<K>>,
}

/// How every controller backs off after transient errors.
const BACKOFF: Backoff = Backoff {
    base: Duration::from_millis(100),
    max: Duration::from_secs(60),
};

impl<K, R> Controller<K, R>
where
    K: Clone + Eq + std::hash::Hash + std::fmt::Debug + Send + Sync + 'static,
    R: Reconciler<K>,
{
    /// Starts the controller's feeds and workers.
    pub fn spawn(self, ctx: &Context, shutdown: &CancellationToken) -> Vec<JoinHandle<()>> {
        let queue = WorkQueue::new(BACKOFF, Duration::ZERO);
        let mut tasks: Vec<JoinHandle<()>> = self
            .triggers
            .into_iter()
            .map(|t| feed(ctx, t.kind, queue.clone(), t.map, shutdown.clone()))
            .collect();
        let run = capstan_runtime::run(self.name, queue, Arc::new(self.reconciler), self.workers, shutdown.clone());
        tasks.push(tokio::spawn(run));
        tasks
    }
}

/// Feeds a queue from the cache: every object of `kind` now, then every change, each mapped to
/// the keys it concerns.
fn feed<K>(ctx: &Context, kind: &'static KindInfo, queue: WorkQueue<K>, map: KeyMap<K>, shutdown: CancellationToken) -> JoinHandle<()>
where
    K: Clone + Eq + std::hash::Hash + std::fmt::Debug + Send + 'static,
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

/// The key of an object itself: its namespace and name.
pub fn ns_name(v: &Value) -> Vec<util::NsName> {
    vec![util::key_of(v)]
}

/// The key of a cluster-scoped object (or a namespace's own): its name.
pub fn name_of(v: &Value) -> Vec<String> {
    vec![v["metadata"]["name"].as_str().unwrap_or_default().to_owned()]
}

/// Starts every controller; they stop when `shutdown` is cancelled.
pub fn start(ctx: Context, shutdown: CancellationToken) -> Vec<JoinHandle<()>> {
    let mut tasks = Vec::new();
    tasks.extend(replicaset::controller(&ctx).spawn(&ctx, &shutdown));
    tasks.extend(deployment::controller(&ctx).spawn(&ctx, &shutdown));
    tasks.extend(endpoints::controller(&ctx).spawn(&ctx, &shutdown));
    tasks.extend(service::controller(&ctx).spawn(&ctx, &shutdown));
    tasks.extend(namespace::controller(&ctx).spawn(&ctx, &shutdown));
    tasks.extend(serviceaccount::controller(&ctx).spawn(&ctx, &shutdown));
    tasks.extend(quota::controller(&ctx).spawn(&ctx, &shutdown));
    tasks.extend(gc::controller(&ctx).spawn(&ctx, &shutdown));
    tasks.extend(node::controller(&ctx).spawn(&ctx, &shutdown));
    tasks.extend(eventttl::controller(&ctx).spawn(&ctx, &shutdown));
    tasks.extend(job::controller(&ctx).spawn(&ctx, &shutdown));
    tasks.extend(daemonset::controller(&ctx).spawn(&ctx, &shutdown));
    tasks.extend(statefulset::controller(&ctx).spawn(&ctx, &shutdown));
    tasks.extend(volume::controller(&ctx).spawn(&ctx, &shutdown));
    tasks.extend(cronjob::controller(&ctx).spawn(&ctx, &shutdown));
    tasks.extend(autoscaler::controller(&ctx).spawn(&ctx, &shutdown));
    tasks.extend(disruption::controller(&ctx).spawn(&ctx, &shutdown));
    tasks.extend(ingress::controller(&ctx).spawn(&ctx, &shutdown));
    tasks.extend(gateway::controller(&ctx).spawn(&ctx, &shutdown));
    tasks.push(tokio::spawn(apiserver::run(ctx.clone(), shutdown.clone())));
    // The built-in objects: system namespaces, the `kubernetes` and `kube-dns` Services.
    let builtin_ctx = ctx.clone();
    tasks.push(tokio::spawn(async move {
        if let Err(e) = namespace::ensure_builtins(&builtin_ctx).await {
            tracing::error!(error = %e, "cannot create the built-in objects");
        }
    }));
    tasks
}
