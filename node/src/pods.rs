//! The pods of this node: sets up the node's pod network, watches the pods bound to the node,
//! runs one worker per pod (by uid), routes container events to the workers, and removes the
//! containers of pods that are no longer bound here. Only containers labelled with this node's
//! name are ever touched, so several agents can share one Engine.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use capstan_api::meta::{LABEL_NODE, LABEL_POD_UID};
use futures::StreamExt;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::Event;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::spec;
use crate::worker::{Env, Input, Worker};

/// The node's Docker network name.
pub fn network_name(node: &str) -> String {
    format!("capstan-{node}")
}

/// Removes everything agent `node` made on the Engine: its containers (stopped first, one
/// second's grace) and its network (`capstan down`). Returns how many containers went.
pub async fn remove_all(runtime: &dyn capstan_containers::Runtime, node: &str) -> Result<usize, capstan_containers::RuntimeError> {
    let containers = runtime.list(&[(LABEL_NODE, node)]).await?;
    for c in &containers {
        let _ = runtime.stop(&c.id, std::time::Duration::from_secs(1), None).await;
        match runtime.remove(&c.id).await {
            Err(e) if !e.is_not_found() => return Err(e),
            _ => {}
        }
    }
    match runtime.remove_network(&network_name(node)).await {
        Err(e) if !e.is_not_found() => return Err(e),
        _ => {}
    }
    Ok(containers.len())
}

/// Waits for the node's pod range and makes the bridge network for it.
/// `masquerade`: whether the Engine masquerades what leaves the bridge (not when pod traffic
/// crosses hosts: see [`crate::mesh::masquerade`]).
pub async fn prepare_network(env: &Env, extra_labels: &[(String, String)], masquerade: bool, stop: &CancellationToken) -> Option<String> {
    let node = &env.ctx.node;
    let mut logged = false;
    loop {
        let cidr = match env.api.get(&format!("/api/v1/nodes/{node}")).await {
            Ok(Some(n)) => n["spec"]["podCIDR"].as_str().map(str::to_owned),
            _ => None,
        };
        if let Some(cidr) = cidr {
            let gw = cidr.parse().map(|r| crate::podnet::gateway(r).to_string()).unwrap_or_default();
            let mut labels: HashMap<String, String> = HashMap::from([(LABEL_NODE.to_owned(), node.clone())]);
            labels.extend(extra_labels.iter().cloned());
            let spec = capstan_containers::NetworkSpec {
                name: env.ctx.network.clone(),
                subnet: cidr.clone(),
                gateway: gw,
                labels,
                mtu: env.net.mtu(),
                masquerade,
            };
            match env.runtime.ensure_network(&spec).await {
                Ok(()) => {
                    env.net.set_range(&cidr);
                    tracing::info!(node = %node, pod_cidr = %cidr, network = %env.ctx.network, "pod network ready");
                    return Some(cidr);
                }
                Err(e) => tracing::warn!(node = %node, error = %e, "making the pod network failed; retrying"),
            }
        } else if !logged {
            tracing::info!(node = %node, "waiting for the cluster to assign this node a pod range");
            logged = true;
        }
        tokio::select! {
            _ = stop.cancelled() => return None,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// Forwards the Engine's container events (by pod uid) until `stop`, resubscribing when the
/// Engine goes away and comes back.
fn forward_events(env: Arc<Env>, tx: mpsc::UnboundedSender<String>, stop: CancellationToken) {
    tokio::spawn(async move {
        let node = env.ctx.node.clone();
        loop {
            let labels = [(LABEL_NODE, node.as_str())];
            let mut events = env.runtime.events(&labels);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    e = events.next() => match e {
                        Some(Ok(e)) => {
                            if let Some(uid) = e.attributes.get(LABEL_POD_UID) {
                                let _ = tx.send(uid.clone());
                            }
                        }
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, "the container event stream failed");
                            break;
                        }
                        None => break,
                    }
                }
            }
            // The Engine may be restarting: every worker looks again once it is back.
            let _ = tx.send(String::new());
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    });
}

/// Runs the node's pods until `stop`. Containers keep running when the agent stops; the next
/// agent adopts them.
pub async fn run(env: Arc<Env>, stop: CancellationToken) {
    let node = env.ctx.node.clone();
    let mut workers: HashMap<String, mpsc::UnboundedSender<Input>> = HashMap::new();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<String>();
    let (event_tx, mut event_rx) = mpsc::unbounded_channel::<String>();
    forward_events(env.clone(), event_tx, stop.clone());
    let mut watch = env.api.watch_pods(&node).default_backoff().boxed();
    let mut listing: Option<Vec<Value>> = None;
    let mut cleanup = tokio::time::interval(Duration::from_secs(60));
    let mut listed_once = false;
    // The pods that have containers already (made by an earlier agent): only their workers need
    // to look for containers to adopt; a pod bound later has none, and its start skips the call.
    let existing = env.runtime.list(&[(LABEL_NODE, env.ctx.node.as_str())]).await.ok();
    // Their sandboxes' addresses are taken before any new pod is given one.
    for c in existing.iter().flatten() {
        if let (Some(uid), Some(ip)) = (c.labels.get(LABEL_POD_UID), spec::sandbox_ip(c)) {
            env.net.reserve(uid, ip);
        }
    }
    let had_containers: Option<HashSet<String>> =
        existing.map(|all| all.into_iter().filter_map(|c| c.labels.get(LABEL_POD_UID).cloned()).collect());

    let spawn = |pod: Value, workers: &mut HashMap<String, mpsc::UnboundedSender<Input>>| {
        let uid = pod["metadata"]["uid"].as_str().unwrap_or_default().to_owned();
        let (tx, rx) = mpsc::unbounded_channel();
        workers.insert(uid.clone(), tx);
        let env = env.clone();
        let done = done_tx.clone();
        let stop = stop.clone();
        let adopt = had_containers.as_ref().is_none_or(|had| had.contains(&uid));
        tokio::spawn(async move {
            let adopted = if adopt {
                env.runtime
                    .list(&[(LABEL_POD_UID, uid.as_str()), (LABEL_NODE, env.ctx.node.as_str())])
                    .await
                    .unwrap_or_default()
            } else {
                Vec::new()
            };
            let worker = Worker::new(env, pod, adopted);
            tokio::select! {
                _ = worker.run(rx) => {}
                _ = stop.cancelled() => {}
            }
            let _ = done.send(uid);
        });
    };
    let dispatch = |pod: Value, workers: &mut HashMap<String, mpsc::UnboundedSender<Input>>| {
        let uid = pod["metadata"]["uid"].as_str().unwrap_or_default().to_owned();
        let mine = pod["spec"]["nodeName"] == node.as_str();
        match workers.get(&uid) {
            Some(tx) => {
                let _ = tx.send(if mine { Input::Pod(Box::new(pod)) } else { Input::Gone });
            }
            None if mine => spawn(pod, workers),
            None => {}
        }
    };

    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            Some(uid) = done_rx.recv() => {
                if workers.get(&uid).is_some_and(|tx| tx.is_closed()) {
                    workers.remove(&uid);
                }
            }
            Some(uid) = event_rx.recv() => {
                if uid.is_empty() {
                    for tx in workers.values() {
                        let _ = tx.send(Input::Poke);
                    }
                } else if let Some(tx) = workers.get(&uid) {
                    let _ = tx.send(Input::Poke);
                }
            }
            _ = cleanup.tick(), if listed_once => remove_orphans(&env, &workers).await,
            event = watch.next() => match event {
                Some(Ok(Event::Init)) => listing = Some(Vec::new()),
                Some(Ok(Event::InitApply(o))) => listing.get_or_insert_with(Vec::new).push(serde_json::to_value(o).unwrap_or_default()),
                Some(Ok(Event::InitDone)) => {
                    let pods = listing.take().unwrap_or_default();
                    let present: HashSet<&str> = pods.iter().filter_map(|p| p["metadata"]["uid"].as_str()).collect();
                    for (uid, tx) in &workers {
                        if !present.contains(uid.as_str()) {
                            let _ = tx.send(Input::Gone);
                        }
                    }
                    for p in pods {
                        dispatch(p, &mut workers);
                    }
                    if !listed_once {
                        listed_once = true;
                        remove_orphans(&env, &workers).await;
                    }
                }
                Some(Ok(Event::Apply(o))) => dispatch(serde_json::to_value(o).unwrap_or_default(), &mut workers),
                Some(Ok(Event::Delete(o))) => {
                    if let Some(tx) = o.metadata.uid.as_ref().and_then(|u| workers.get(u)) {
                        let _ = tx.send(Input::Gone);
                    }
                }
                Some(Err(e)) => tracing::warn!(node = %node, error = %e, "watching the node's pods failed; retrying"),
                None => return,
            }
        }
    }
}

/// Stops and removes this node's containers whose pod has no worker (deleted while the agent
/// was away, or bound elsewhere now).
async fn remove_orphans(env: &Env, workers: &HashMap<String, mpsc::UnboundedSender<Input>>) {
    let Ok(all) = env.runtime.list(&[(LABEL_NODE, env.ctx.node.as_str())]).await else {
        return;
    };
    let mut gone_pods = HashSet::new();
    for c in all {
        let Some(uid) = c.labels.get(LABEL_POD_UID) else { continue };
        if workers.contains_key(uid) {
            continue;
        }
        tracing::info!(container = %c.name, "removing a container of a pod no longer bound to this node");
        let _ = env.runtime.stop(&c.id, Duration::from_secs(2), None).await;
        env.remove_container(&c.id, spec::is_sandbox(&c)).await;
        gone_pods.insert(uid.clone());
    }
    for uid in gone_pods {
        env.net.release(&uid);
        let _ = std::fs::remove_dir_all(env.pods_dir.join(uid));
    }
}
