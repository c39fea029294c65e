//! The scheduling loop, apart from the controllers' work queue (its queue is ordered by priority
//! and each decision reads one snapshot of the whole cluster): keeps the scheduler's snapshot
//! current from the watch cache (nodes, and pods as they are bound, finish or go), takes pending
//! pods highest priority first, and binds each with compare-and-swap (a pod bound meanwhile by
//! anyone else is left alone: never two nodes). A pod that fits nowhere gets PodScheduled=False with the reasons and an event, and is
//! retried with back-off (1 s to 10 s) and whenever the cluster changes; preemption evicts the
//! victims and nominates the node.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use capstan_scheduler::{Config, Decision, NodeInfo, PodInfo, Scheduler, Snapshot};
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::cache::{CacheError, Change};
use crate::context::{Context, kind};
use crate::events::{EventType, Recorder};
use crate::objects::ObjectError;
use crate::priority::{self, Priority};
use capstan_api::time::now_rfc3339;

/// The name pods ask for in `spec.schedulerName` (or leave empty).
pub const SCHEDULER_NAME: &str = "default-scheduler";

type Key = (String, String);

fn is_pending(pod: &Value) -> bool {
    pod["spec"]["nodeName"].as_str().is_none_or(str::is_empty)
        && pod["metadata"]["deletionTimestamp"].is_null()
        && !matches!(pod["status"]["phase"].as_str(), Some("Succeeded" | "Failed"))
        && pod["spec"]["schedulerName"]
            .as_str()
            .is_none_or(|s| s.is_empty() || s == SCHEDULER_NAME)
}

fn is_placed(pod: &Value) -> Option<&str> {
    let node = pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty())?;
    (!matches!(pod["status"]["phase"].as_str(), Some("Succeeded" | "Failed"))).then_some(node)
}

struct Loop {
    ctx: Context,
    scheduler: Scheduler,
    snapshot: Snapshot,
    /// Where each placed pod is, to remove it from the snapshot later.
    placed: HashMap<Key, String>,
    /// Pending pods ready to try: (-priority, seq) → key.
    active: BTreeMap<(i64, u64), Key>,
    /// Pending pods waiting out their back-off: key → (attempts, not before).
    backoff: HashMap<Key, (u32, Instant)>,
    queued: HashMap<Key, (i64, u64)>,
    seq: u64,
    events: Recorder,
    /// Pods assumed onto a node whose binding write is in flight.
    binding: std::collections::HashSet<Key>,
    /// Where pods that preempted others wait for their victims to stop.
    nominated: HashMap<Key, String>,
    bound_tx: tokio::sync::mpsc::UnboundedSender<(Key, String, bool)>,
    /// When the loop started (see [`STARTUP_GRACE`]).
    started: Instant,
}

/// How long after start an unschedulable pod is retried quietly: the nodes are registering.
const STARTUP_GRACE: Duration = Duration::from_secs(15);

/// Binds a pod: spec.nodeName with compare-and-swap (a pod bound meanwhile by anyone else is
/// left alone: never two nodes), then PodScheduled=True. Ok(false) when it was not ours to bind.
async fn bind(objects: &crate::objects::Objects, key: &Key, node: &str, priority: Priority) -> Result<bool, ObjectError> {
    let mut bound = false;
    let now = now_rfc3339();
    // One write: the node, and the PodScheduled condition with it.
    let result = objects
        .modify_part(kind("pods"), &key.0, &key.1, crate::objects::Part::All, |p| {
            // Decided afresh on every attempt: a conflict retry may find the pod bound already.
            bound = is_pending(p);
            if bound {
                p["spec"]["nodeName"] = json!(node);
                priority::apply(p, priority);
                let mut conds = p["status"]["conditions"].as_array().cloned().unwrap_or_default();
                conds.retain(|c| c["type"] != "PodScheduled");
                conds.push(json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": now}));
                p["status"]["conditions"] = Value::Array(conds);
                if p["status"]["phase"].is_null() {
                    p["status"]["phase"] = json!("Pending");
                }
            }
            bound
        })
        .await;
    match result {
        Ok(_) => Ok(bound),
        Err(ObjectError::NotFound { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

impl Loop {
    /// The pod's priority from its PriorityClass (see `crate::priority`).
    fn priority_of(&self, pod: &Value) -> Result<Priority, String> {
        let (classes, _) = self.ctx.cache.list(kind("priorityclasses"), None);
        let classes: Vec<&Value> = classes.iter().map(|c| c.object.as_ref()).collect();
        priority::resolve(pod, &classes)
    }

    /// The pod as the scheduler sees it, its priority resolved (0 for a class that is missing).
    fn info(&self, pod: &Value) -> PodInfo {
        let mut info = PodInfo::from_json(pod);
        if let Ok(p) = self.priority_of(pod) {
            info.priority = p.value;
            info.preempts = p.preempts;
        }
        info
    }

    fn enqueue(&mut self, key: Key, priority: i64) {
        if self.queued.contains_key(&key) || self.backoff.contains_key(&key) {
            return;
        }
        self.seq += 1;
        let slot = (-priority, self.seq);
        self.active.insert(slot, key.clone());
        self.queued.insert(key, slot);
    }

    /// The cluster changed: pods waiting out a back-off get another try now.
    fn flush_backoff(&mut self) {
        let waiting: Vec<Key> = self.backoff.keys().cloned().collect();
        for key in waiting {
            if let Some((attempts, _)) = self.backoff.get(&key).copied() {
                self.backoff.insert(key, (attempts, Instant::now()));
            }
        }
    }

    fn on_pod(&mut self, change: Change, pod: &Value) {
        let key = crate::controllers::util::key_of(pod);
        if self.binding.contains(&key) && change != Change::Deleted && is_pending(pod) {
            return; // assumed; its binding is in flight
        }
        if change != Change::Deleted && is_placed(pod).is_some_and(|n| self.placed.get(&key).is_some_and(|p| p == n)) {
            return; // already accounted on that node (requests do not change)
        }
        if let Some(node) = self.placed.remove(&key) {
            self.snapshot.remove_pod(&key.0, &key.1, &node);
            self.flush_backoff();
        }
        if change == Change::Deleted {
            self.nominated.remove(&key);
            self.queued.remove(&key).map(|slot| self.active.remove(&slot));
            self.backoff.remove(&key);
            return;
        }
        if let Some(node) = is_placed(pod) {
            self.nominated.remove(&key);
            self.queued.remove(&key).map(|slot| self.active.remove(&slot));
            self.backoff.remove(&key);
            if self.snapshot.assume(self.info(pod), node) {
                self.placed.insert(key, node.to_owned());
            }
        } else if is_pending(pod) {
            let priority = self.info(pod).priority;
            self.enqueue(key, priority);
        }
    }

    fn on_node(&mut self, change: Change, node: &Value) {
        let name = node["metadata"]["name"].as_str().unwrap_or_default();
        if change == Change::Deleted {
            self.snapshot.remove_node(name);
        } else {
            self.snapshot.upsert_node(NodeInfo::from_json(node));
        }
        self.flush_backoff();
    }

    /// A binding finished: on failure, the assumption is undone and the pod tried again.
    fn on_bound(&mut self, (key, node, ok): (Key, String, bool)) {
        self.binding.remove(&key);
        if !ok {
            if self.placed.get(&key) == Some(&node) {
                self.placed.remove(&key);
                self.snapshot.remove_pod(&key.0, &key.1, &node);
            }
            self.retry_later(key);
        } else if let Some(p) = self.ctx.cache.get(kind("pods"), &key.0, &key.1) {
            // Whatever the cache says now wins (bound by us, by another, or gone); the pod's
            // own watch event usually says it first.
            if is_placed(&p.object) != self.placed.get(&key).map(String::as_str) {
                let pod = (*p.object).clone();
                self.on_pod(Change::Modified, &pod);
            }
        }
    }

    /// Moves pods whose back-off ran out to the active queue; returns when the next one is due.
    fn promote(&mut self) -> Option<Instant> {
        let now = Instant::now();
        let due: Vec<Key> = self
            .backoff
            .iter()
            .filter(|(_, (_, t))| *t <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for key in due {
            self.backoff.remove(&key);
            let priority = self
                .ctx
                .cache
                .get(kind("pods"), &key.0, &key.1)
                .map(|p| self.info(&p.object).priority);
            if let Some(p) = priority {
                self.enqueue(key, p);
            }
        }
        self.backoff.values().map(|(_, t)| *t).min()
    }

    async fn schedule_one(&mut self, key: Key) -> Result<(), ObjectError> {
        let Some(entry) = self.ctx.cache.get(kind("pods"), &key.0, &key.1) else {
            return Ok(());
        };
        let pod = (*entry.object).clone();
        if !is_pending(&pod) {
            return Ok(());
        }
        let resolved = match self.priority_of(&pod) {
            Ok(p) => p,
            Err(message) => {
                // As Kubernetes' admission refuses such a pod: it waits, saying why.
                self.unschedulable(&key, &pod, message).await;
                return Ok(());
            }
        };
        let mut info = PodInfo::from_json(&pod);
        info.priority = resolved.value;
        info.preempts = resolved.preempts;
        info.volumes = crate::controllers::volume::needs(&self.ctx.cache, &pod);
        // Room made by preemption is kept for the pod it was made for: pods nominated to a node,
        // of this pod's priority or higher, count as placed there while this one is scheduled.
        let mut reserved = Vec::new();
        for (k, node) in &self.nominated {
            if *k == key {
                continue;
            }
            let Some(p) = self.ctx.cache.get(kind("pods"), &k.0, &k.1) else {
                continue;
            };
            let other = self.info(&p.object);
            if is_pending(&p.object) && other.priority >= info.priority && self.snapshot.assume(other, node) {
                reserved.push((k.clone(), node.clone()));
            }
        }
        let decision = self.scheduler.schedule(&self.snapshot, &info);
        for (k, node) in reserved {
            self.snapshot.remove_pod(&k.0, &k.1, &node);
        }
        match decision {
            Decision::Bind(node) => {
                // Assume at once and bind in the background (the binding cycle), so that the
                // next pod is placed while this write waits for its fsync.
                self.snapshot.assume(info, &node);
                self.placed.insert(key.clone(), node.clone());
                self.binding.insert(key.clone());
                let objects = self.ctx.objects.clone();
                let results = self.bound_tx.clone();
                let events = self.events.clone();
                let claims = crate::controllers::volume::to_select(&self.ctx.cache, &pod, &node);
                tokio::spawn(async move {
                    // Claims waiting for their first consumer learn its node before it is bound.
                    let outcome = match crate::controllers::volume::select_node(&objects, &claims, &node).await {
                        Ok(()) => bind(&objects, &key, &node, resolved).await,
                        Err(e) => Err(e),
                    };
                    if let Ok(true) = outcome {
                        events.record(
                            &pod,
                            EventType::Normal,
                            "Scheduled",
                            format!("Successfully assigned {}/{} to {node}", key.0, key.1),
                        );
                    }
                    let _ = results.send((key, node, outcome.is_ok()));
                });
            }
            Decision::Preempt { node, victims } => {
                // Victims of an earlier preemption for this pod still stopping: wait for them
                // rather than evict more (Kubernetes' PodEligibleToPreemptOthers).
                let nominated = self.nominated.get(&key).cloned();
                if let Some(nominated) = nominated.as_deref().or(pod["status"]["nominatedNodeName"].as_str()) {
                    let (all, _) = self.ctx.cache.list(kind("pods"), None);
                    let stopping = all.iter().any(|p| {
                        p.object["spec"]["nodeName"] == nominated
                            && !p.object["metadata"]["deletionTimestamp"].is_null()
                            && self.info(&p.object).priority < info.priority
                    });
                    if stopping {
                        self.retry_later(key);
                        return Ok(());
                    }
                }
                for (ns, name) in &victims {
                    if let Some(v) = self.ctx.cache.get(kind("pods"), ns, name) {
                        self.events.record(
                            &v.object,
                            EventType::Normal,
                            "Preempted",
                            format!(
                                "Preempted by pod {} on node {node}",
                                entry.object["metadata"]["uid"].as_str().unwrap_or_default()
                            ),
                        );
                    }
                    match self.ctx.objects.delete_pod(ns, name, false).await.map(drop) {
                        Ok(()) | Err(ObjectError::NotFound { .. }) => {}
                        Err(e) => return Err(e),
                    }
                }
                self.nominated.insert(key.clone(), node.clone());
                let _ = self
                    .ctx
                    .objects
                    .modify(kind("pods"), &key.0, &key.1, true, |p| {
                        p["status"]["nominatedNodeName"] = json!(node);
                        true
                    })
                    .await;
                self.retry_later(key);
            }
            Decision::Unschedulable(u) => self.unschedulable(&key, &pod, u.message()).await,
        }
        Ok(())
    }

    /// PodScheduled=False with `message` and a FailedScheduling event (once per message); tried
    /// again later.
    async fn unschedulable(&mut self, key: &Key, pod: &Value, message: String) {
        // At start, pods are often read before the first node has registered (or reported
        // Ready): no warning for what the next seconds settle, only a quick retry.
        if self.started.elapsed() < STARTUP_GRACE {
            self.backoff.insert(key.clone(), (0, Instant::now() + Duration::from_millis(500)));
            return;
        }
        let previous = pod["status"]["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == "PodScheduled"))
            .and_then(|c| c["message"].as_str())
            .map(str::to_owned);
        if previous.as_deref() != Some(&message) {
            self.events.record(pod, EventType::Warning, "FailedScheduling", message.clone());
            self.set_condition(key, "False", Some("Unschedulable"), Some(&message)).await;
        }
        self.retry_later(key.clone());
    }

    fn retry_later(&mut self, key: Key) {
        let attempts = self.backoff.get(&key).map_or(0, |(a, _)| *a) + 1;
        let delay = Duration::from_secs(1 << (attempts - 1).min(3)).min(Duration::from_secs(10));
        self.backoff.insert(key, (attempts, Instant::now() + delay));
    }

    async fn set_condition(&self, key: &Key, status: &str, reason: Option<&str>, message: Option<&str>) {
        let now = now_rfc3339();
        let _ = self
            .ctx
            .objects
            .modify(kind("pods"), &key.0, &key.1, true, |p| {
                let mut conds = p["status"]["conditions"].as_array().cloned().unwrap_or_default();
                conds.retain(|c| c["type"] != "PodScheduled");
                let mut c = json!({"type": "PodScheduled", "status": status, "lastProbeTime": null, "lastTransitionTime": now});
                if let Some(r) = reason {
                    c["reason"] = json!(r);
                }
                if let Some(m) = message {
                    c["message"] = json!(m);
                }
                conds.push(c);
                p["status"]["conditions"] = Value::Array(conds);
                if p["status"]["phase"].is_null() {
                    p["status"]["phase"] = json!("Pending");
                }
                true
            })
            .await;
    }
}

/// The disruption budgets as their status stands, for preemption to weigh.
fn budgets(cache: &crate::cache::Cache) -> Vec<capstan_scheduler::model::Budget> {
    let (all, _) = cache.list(kind("poddisruptionbudgets"), None);
    all.iter()
        .filter(|b| b.object["spec"]["selector"].is_object())
        .map(|b| capstan_scheduler::model::Budget {
            namespace: b.namespace.clone(),
            selector: capstan_api::selector::Selector::from_json(&b.object["spec"]["selector"]),
            allowed: b.object["status"]["disruptionsAllowed"].as_i64().unwrap_or(0),
        })
        .collect()
}

/// Runs the scheduling loop until `shutdown`.
pub async fn run(ctx: Context, config: Config, shutdown: CancellationToken) {
    let events = Recorder::new(ctx.objects.clone(), SCHEDULER_NAME, None);
    let mut snapshot = Snapshot::new();
    let cache = ctx.cache.clone();
    snapshot.read_budgets_with(std::sync::Arc::new(move || budgets(&cache)));
    let (bound_tx, mut bound_rx) = tokio::sync::mpsc::unbounded_channel::<(Key, String, bool)>();
    let mut l = Loop {
        ctx: ctx.clone(),
        scheduler: Scheduler::new(config),
        snapshot,
        placed: HashMap::new(),
        active: BTreeMap::new(),
        backoff: HashMap::new(),
        queued: HashMap::new(),
        seq: 0,
        events,
        binding: std::collections::HashSet::new(),
        nominated: HashMap::new(),
        bound_tx,
        started: Instant::now(),
    };
    'restart: loop {
        let (nodes, node_rev) = ctx.cache.list(kind("nodes"), None);
        for n in &nodes {
            l.on_node(Change::Added, &n.object);
        }
        let (pods, pod_rev) = ctx.cache.list(kind("pods"), None);
        for p in &pods {
            l.on_pod(Change::Added, &p.object);
        }
        let (Ok(mut node_watch), Ok(mut pod_watch)) = (
            ctx.cache.watch(kind("nodes"), None, node_rev),
            ctx.cache.watch(kind("pods"), None, pod_rev),
        ) else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        loop {
            let next_due = l.promote();
            if let Some((&slot, _)) = l.active.first_key_value() {
                let key = l.active.remove(&slot).expect("first entry exists");
                l.queued.remove(&key);
                if let Err(e) = l.schedule_one(key.clone()).await {
                    tracing::warn!(pod = %format!("{}/{}", key.0, key.1), error = %e, "binding failed; retrying");
                    l.retry_later(key);
                }
                // Apply what changed meanwhile before the next decision.
                while let Some(Ok(e)) = futures::FutureExt::now_or_never(node_watch.next()) {
                    l.on_node(e.change, &e.entry.object);
                }
                while let Some(Ok(e)) = futures::FutureExt::now_or_never(pod_watch.next()) {
                    l.on_pod(e.change, &e.entry.object);
                }
                while let Ok(r) = bound_rx.try_recv() {
                    l.on_bound(r);
                }
                continue;
            }
            let wait = async {
                match next_due {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = wait => {}
                e = node_watch.next() => match e {
                    Ok(e) => l.on_node(e.change, &e.entry.object),
                    Err(CacheError::TooOld { .. }) | Err(_) => continue 'restart,
                },
                e = pod_watch.next() => match e {
                    Ok(e) => l.on_pod(e.change, &e.entry.object),
                    Err(_) => continue 'restart,
                },
                Some(r) = bound_rx.recv() => l.on_bound(r),
            }
        }
    }
}
