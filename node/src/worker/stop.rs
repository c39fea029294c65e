//! Stopping: one container (preStop hook, stop signal, SIGKILL after the grace period) or the
//! whole pod once it is deleted — after the proxies have dropped it — and the pod object with it.

use std::time::Duration;

use capstan_api::event::EventType;
use capstan_api::meta::LABEL_POD_UID;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::Worker;
use crate::probes::Probe;
use crate::spec;

/// The longest a stopping pod waits for the proxies to drop it before its containers are
/// signalled (also bounded by its grace period).
const MAX_UNREACHABLE_WAIT: Duration = Duration::from_secs(10);
/// After the last proxy dropped a stopping pod: time for connections it accepted just before.
const SETTLE: Duration = Duration::from_millis(250);

impl Worker {
    /// preStop hook, then the stop signal, then SIGKILL after the grace period.
    pub(super) async fn stop_container(&self, spec: &Value, id: &str, grace: Duration) {
        let began = Instant::now();
        let hook = &spec["lifecycle"]["preStop"];
        if let Some(cmd) = hook["exec"]["command"].as_array() {
            let cmd: Vec<String> = cmd.iter().filter_map(|c| c.as_str().map(str::to_owned)).collect();
            if let Err(e) = self.env.runtime.exec(id, &cmd, grace.max(Duration::from_secs(1))).await {
                tracing::info!(pod = %self.name(), error = %e, "preStop hook failed");
            }
        } else if let Some(Probe { action, .. }) =
            Probe::parse(&json!({"httpGet": hook["httpGet"], "timeoutSeconds": grace.as_secs().max(1)}), spec)
            && hook["httpGet"].is_object()
        {
            let p = Probe {
                action,
                initial_delay: Duration::ZERO,
                period: Duration::from_secs(1),
                timeout: grace.max(Duration::from_secs(1)),
                success_threshold: 1,
                failure_threshold: 1,
            };
            if let Err(why) = p
                .run(self.env.runtime.as_ref(), id, self.pod_ip.as_deref().unwrap_or_default())
                .await
            {
                tracing::info!(pod = %self.name(), "preStop hook failed: {why}");
            }
        } else if let Some(secs) = hook["sleep"]["seconds"].as_u64() {
            tokio::time::sleep(Duration::from_secs(secs).min(grace)).await;
        }
        let left = grace.saturating_sub(began.elapsed());
        if let Err(e) = self.env.runtime.stop(id, left, None).await
            && !e.is_not_found()
        {
            tracing::warn!(pod = %self.name(), error = %e, "stopping a container failed");
        }
    }

    /// Before a stopping pod's containers are signalled: waits, at most `bound`, until no
    /// EndpointSlice lists the pod as ready and every live proxy (its node's Lease renewed in
    /// the last 40 s) has synced the slices that dropped it. Kubernetes leaves this race to
    /// preStop sleeps; here no new connection reaches a pod once it is told to stop.
    async fn wait_until_unreachable(&self, bound: Duration) {
        let Some(ip) = self.pod["status"]["podIP"].as_str().map(str::to_owned) else {
            return; // never had an address: nothing routes to it
        };
        let began = Instant::now();
        loop {
            if self.unreachable(&ip).await == Some(true) {
                // Let connections accepted just before the switch finish their request.
                tokio::time::sleep(SETTLE.min(bound.saturating_sub(began.elapsed()))).await;
                tracing::debug!(pod = %self.name(), waited_ms = began.elapsed().as_millis() as u64, "out of every proxy");
                return;
            }
            if began.elapsed() >= bound {
                tracing::info!(pod = %self.name(), "stopping before every proxy dropped the pod (waited {bound:?})");
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether no endpoint lists `ip` as ready and every live proxy has synced past the slices
    /// that list it as not ready; `None` when the API cannot tell.
    async fn unreachable(&self, ip: &str) -> Option<bool> {
        let slices = self
            .env
            .api
            .get(&format!("/apis/discovery.k8s.io/v1/namespaces/{}/endpointslices", self.namespace()))
            .await
            .ok()??;
        let mut revision = 0u64;
        for slice in slices["items"].as_array().into_iter().flatten() {
            for e in slice["endpoints"].as_array().into_iter().flatten() {
                if !e["addresses"].as_array().is_some_and(|a| a.iter().any(|a| a == ip)) {
                    continue;
                }
                if e["conditions"]["ready"] != false {
                    return Some(false); // still served
                }
                let rv = slice["metadata"]["resourceVersion"]
                    .as_str()
                    .and_then(|r| r.parse().ok())
                    .unwrap_or(0);
                revision = revision.max(rv);
            }
        }
        if revision == 0 {
            return Some(true); // in no service
        }
        let leases = self
            .env
            .api
            .get("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases")
            .await
            .ok()??;
        let now = jiff::Timestamp::now();
        let behind = leases["items"].as_array().into_iter().flatten().any(|l| {
            let Some(synced) = l["metadata"]["annotations"][crate::register::PROXY_SYNCED]
                .as_str()
                .and_then(|r| r.parse::<u64>().ok())
            else {
                return false; // no proxy on that node
            };
            let live = l["spec"]["renewTime"]
                .as_str()
                .and_then(|t| t.parse::<jiff::Timestamp>().ok())
                .is_some_and(|t| now.duration_since(t).as_secs() < 40);
            live && synced < revision
        });
        Some(!behind)
    }

    /// The pod is being deleted: stop everything gracefully, remove it, and let the object go.
    pub(super) async fn terminate(&mut self) {
        let grace = self.grace();
        let name = self.name().to_owned();
        tracing::info!(pod = %name, namespace = %self.namespace(), grace_seconds = grace.as_secs(), "stopping the pod");
        let began = Instant::now();
        self.wait_until_unreachable(grace.min(MAX_UNREACHABLE_WAIT)).await;
        let grace = grace.saturating_sub(began.elapsed());
        let mut stops = Vec::new();
        for s in &self.slots {
            if s.running()
                && let Some(c) = &s.current
            {
                self.event(
                    EventType::Normal,
                    "Killing",
                    format!("Stopping container {}", s.name),
                    Some(&s.field()),
                );
                stops.push(self.stop_container(&s.spec, &c.id, grace));
            }
        }
        futures::future::join_all(stops).await;
        let uid = self.uid.clone();
        let labels = [(LABEL_POD_UID, uid.as_str())];
        if let Ok(all) = self.env.runtime.list(&labels).await {
            for c in all {
                self.env.remove_container(&c.id, spec::is_sandbox(&c)).await;
            }
        }
        self.env.net.release(&self.uid);
        let _ = std::fs::remove_dir_all(self.env.pods_dir.join(&self.uid));
        if !self.gone {
            let path = crate::client::path("pods", self.namespace(), &name);
            // The object may have been replaced by a new pod of the same name: check the uid.
            if let Ok(Some(current)) = self.env.api.get(&path).await
                && current["metadata"]["uid"] == self.uid.as_str()
                && let Err(e) = self.env.api.delete(&path).await
            {
                tracing::warn!(pod = %name, error = %e, "deleting the pod object failed");
            }
        }
    }
}
