//! One pod's worker: converges the Docker Engine to the pod's spec — sandbox, volumes, init
//! containers in order, then the containers — restarts them per the restart policy with
//! crash-loop back-off, runs their probes, stops them gracefully, and reports the pod's status.
//! It wakes on a new version of the pod, on a container event, or when one of its parts asked
//! to look again (the decisions themselves are pure, in `slot`).

mod containers;
mod probing;
mod report;
mod sandbox;
mod slot;
mod stop;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use capstan_api::event::{EventType, Report, Source};
use capstan_api::meta::LABEL_CONTAINER;
use capstan_api::time::now_rfc3339;
use capstan_containers::{ContainerInfo, Runtime, State};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::client::ApiClient;
use crate::podnet::PodNet;
use crate::spec::{self, NodeContext, References};
use crate::status::{self, ContainerStatus};
use sandbox::TOKEN_RENEW_AFTER;
use slot::{RestartPolicy, Slot, Wake, attempt, terminated};

/// What all workers share.
pub struct Env {
    pub runtime: Arc<dyn Runtime>,
    pub api: ApiClient,
    pub ctx: NodeContext,
    /// Pod addresses and the sandboxes' connection to the node's bridge.
    pub net: Arc<PodNet>,
    pub backoff: Backoff,
    pub allow_host_path: bool,
    /// Labels added to every container (the tests' sweep label).
    pub extra_labels: Vec<(String, String)>,
    /// Where pod directories (volumes) live.
    pub pods_dir: PathBuf,
}

impl Env {
    /// Removes a container; a sandbox's veth pair goes with it (see [`PodNet::detach`]).
    pub async fn remove_container(&self, id: &str, sandbox: bool) {
        let _ = self.runtime.remove(id).await;
        if sandbox {
            self.net.detach(id).await;
        }
    }
}

/// Messages to a worker.
#[derive(Debug)]
pub enum Input {
    /// A new version of the pod.
    Pod(Box<Value>),
    /// The pod is no longer bound to this node (deleted, or gone from the API).
    Gone,
    /// Something happened to one of its containers.
    Poke,
}

/// How often a worker looks again when nothing wakes it.
const RESYNC: Duration = Duration::from_secs(10);

pub struct Worker {
    env: Arc<Env>,
    pod: Value,
    uid: String,
    sandbox: Option<ContainerInfo>,
    sandbox_attempt: u32,
    slots: Vec<Slot>,
    pod_ip: Option<String>,
    start_time: String,
    volumes: Option<HashMap<String, PathBuf>>,
    /// Why the pod cannot start yet (volumes, sandbox), shown on its containers.
    blocked: Option<(String, String)>,
    failed: Option<(String, String)>,
    terminal: bool,
    sent: Option<Value>,
    /// The pod had already finished when this worker started: its status stays as written.
    frozen: bool,
    gone: bool,
    /// What the pod refers to, read in this pass (by the volumes), for the containers made in it.
    fresh_refs: Option<References>,
    /// When the volumes were last written, if they hold a service-account token.
    token_written: Option<Instant>,
}

impl Worker {
    /// A worker for `pod`, adopting the containers already running for it.
    pub fn new(env: Arc<Env>, pod: Value, adopted: Vec<ContainerInfo>) -> Worker {
        let pod = spec::with_api_access(pod);
        let uid = pod["metadata"]["uid"].as_str().unwrap_or_default().to_owned();
        let spec = &pod["spec"];
        let mut slots: Vec<Slot> = spec["initContainers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| Slot::new(c, true))
            .collect();
        slots.extend(spec["containers"].as_array().into_iter().flatten().map(|c| Slot::new(c, false)));
        slots.extend(spec["ephemeralContainers"].as_array().into_iter().flatten().map(Slot::ephemeral));
        let start_time = pod["status"]["startTime"].as_str().map_or_else(now_rfc3339, str::to_owned);
        let mut w = Worker {
            env,
            pod,
            uid,
            sandbox: None,
            sandbox_attempt: 0,
            slots,
            pod_ip: None,
            start_time,
            volumes: None,
            blocked: None,
            failed: None,
            terminal: false,
            sent: None,
            frozen: false,
            gone: false,
            fresh_refs: None,
            token_written: None,
        };
        let phase = w.pod["status"]["phase"].as_str().unwrap_or_default();
        if phase == "Succeeded" || phase == "Failed" {
            // A finished pod never runs again, even if its containers are gone.
            w.terminal = true;
            w.frozen = true;
        }
        w.adopt(adopted);
        if w.terminal {
            w.env.net.release(&w.uid);
        }
        w
    }

    /// Takes over containers a previous agent made: the newest sandbox and, per container, the
    /// newest attempt (and the one before it, for `--previous`). Older ones go.
    fn adopt(&mut self, mut found: Vec<ContainerInfo>) {
        found.sort_by_key(|c| std::cmp::Reverse(attempt(c)));
        let now = Instant::now();
        let mut extra = Vec::new();
        for c in found {
            let name = c.labels.get(LABEL_CONTAINER).cloned().unwrap_or_default();
            if spec::is_sandbox(&c) {
                if self.sandbox.is_none() {
                    self.sandbox_attempt = attempt(&c);
                    self.pod_ip = spec::sandbox_ip(&c).cloned();
                    if let Some(ip) = self.pod_ip.as_ref().filter(|_| !spec::host_network(&self.pod)) {
                        self.env.net.reserve(&self.uid, ip);
                    }
                    self.sandbox = Some(c);
                } else {
                    extra.push((c.id, true));
                }
                continue;
            }
            let Some(slot) = self.slots.iter_mut().find(|s| s.name == name) else {
                extra.push((c.id, false));
                continue;
            };
            if slot.current.is_none() && !slot.made {
                slot.made = true;
                slot.restarts = attempt(&c);
                if c.state == State::Running {
                    slot.arm_probes(now);
                    // Adopted: it was already past its startup probe, and readiness is re-checked.
                    slot.started = true;
                }
                if c.state == State::Exited {
                    slot.handled = Some(c.id.clone());
                    slot.last = Some(terminated(&c));
                    if slot.init && c.exit_code == 0 {
                        slot.done = true;
                    }
                }
                slot.current = Some(c);
            } else if slot.previous.is_none() {
                if slot.last.is_none() || slot.current.as_ref().is_some_and(|c| c.state != State::Exited) {
                    slot.last = Some(terminated(&c));
                }
                slot.previous = Some(c.id);
            } else {
                extra.push((c.id, false));
            }
        }
        if !extra.is_empty() {
            let env = self.env.clone();
            tokio::spawn(async move {
                for (id, sandbox) in extra {
                    env.remove_container(&id, sandbox).await;
                }
            });
        }
    }

    fn namespace(&self) -> &str {
        self.pod["metadata"]["namespace"].as_str().unwrap_or("default")
    }

    fn name(&self) -> &str {
        self.pod["metadata"]["name"].as_str().unwrap_or_default()
    }

    fn restart_policy(&self) -> RestartPolicy {
        RestartPolicy::parse(self.pod["spec"]["restartPolicy"].as_str())
    }

    fn grace(&self) -> Duration {
        let secs = self.pod["metadata"]["deletionGracePeriodSeconds"]
            .as_i64()
            .or_else(|| self.pod["spec"]["terminationGracePeriodSeconds"].as_i64())
            .unwrap_or(30);
        Duration::from_secs(secs.max(0) as u64)
    }

    /// Posts a Kubernetes Event about the pod (best effort, in the background).
    fn event(&self, kind: EventType, reason: &str, message: String, field: Option<&str>) {
        let api = self.env.api.clone();
        let ns = self.namespace().to_owned();
        let involved = json!({"kind": "Pod", "apiVersion": "v1", "metadata": {"namespace": ns, "name": self.name(), "uid": self.uid}});
        let kubelet = Source {
            component: "kubelet".into(),
            host: Some(self.env.ctx.node.clone()),
        };
        let report = Report {
            involved: &involved,
            field_path: field,
            kind,
            reason,
            message: &message,
        };
        let event = kubelet.event(&report, &now_rfc3339());
        tokio::spawn(async move {
            if let Err(e) = api.create(&format!("/api/v1/namespaces/{ns}/events"), &event).await {
                tracing::debug!(error = %e, "posting an event failed");
            }
        });
    }

    /// Runs the worker until the pod is gone and its containers are removed.
    pub async fn run(mut self, mut inputs: mpsc::UnboundedReceiver<Input>) {
        loop {
            if self.gone || !self.pod["metadata"]["deletionTimestamp"].is_null() {
                self.terminate().await;
                return;
            }
            let next = self.sync().await;
            let mut received = tokio::select! {
                m = inputs.recv() => match m {
                    Some(m) => Some(m),
                    // The agent is stopping: leave the containers for the next agent to adopt.
                    None => return,
                },
                _ = tokio::time::sleep_until(next) => None,
            };
            // Take everything queued, keeping the newest pod.
            while let Some(m) = received.take().or_else(|| inputs.try_recv().ok()) {
                match m {
                    Input::Pod(p) => self.update_pod(*p),
                    Input::Gone => self.gone = true,
                    Input::Poke => {}
                }
            }
        }
    }

    fn update_pod(&mut self, pod: Value) {
        let pod = spec::with_api_access(pod);
        // A changed container spec (an image update) is picked up at the container's next
        // (re)creation; the hash label tells the agent it differs.
        let specs: Vec<Value> = pod["spec"]["initContainers"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(pod["spec"]["containers"].as_array().into_iter().flatten())
            .cloned()
            .collect();
        for s in &mut self.slots {
            if let Some(new) = specs.iter().find(|c| c["name"] == s.name.as_str()) {
                s.spec = new.clone();
            }
        }
        // Ephemeral containers are only ever added (the API refuses changes and removals).
        for c in pod["spec"]["ephemeralContainers"].as_array().into_iter().flatten() {
            if !self.slots.iter().any(|s| c["name"] == s.name.as_str()) {
                self.slots.push(Slot::ephemeral(c));
            }
        }
        // Someone else changed the pod's readiness (the node controller marks the pods of a node
        // it lost touch with not Ready): say again what this agent sees.
        let ready = |s: &Value| {
            s["conditions"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
                .map(|c| c["status"].clone())
        };
        if self.sent.as_ref().is_some_and(|sent| ready(sent) != ready(&pod["status"])) {
            self.sent = None;
        }
        self.pod = pod;
    }

    /// One pass: converge, report, and say when to look again.
    async fn sync(&mut self) -> Instant {
        let now = Instant::now();
        let wake = self.converge(now).await;
        self.fresh_refs = None;
        self.report().await;
        wake.or(now + RESYNC)
    }

    async fn converge(&mut self, now: Instant) -> Wake {
        if self.terminal {
            return Wake::NONE;
        }
        let (running, mut wake) = self.ensure_sandbox(now).await;
        if !running {
            return wake.min(Wake::at(now + Duration::from_secs(2)));
        }
        if self.token_written.is_some_and(|at| now.duration_since(at) >= TOKEN_RENEW_AFTER) {
            self.renew_volumes().await;
        }
        // Refresh what the Engine says about each container.
        for i in 0..self.slots.len() {
            if let Some(id) = self.slots[i].current.as_ref().map(|c| c.id.clone()) {
                match self.env.runtime.inspect(&id).await {
                    Ok(info) => self.slots[i].current = Some(info),
                    Err(e) if e.is_not_found() => self.slots[i].current = None,
                    Err(e) => tracing::warn!(pod = %self.name(), error = %e, "inspecting a container failed"),
                }
            }
        }
        // Ephemeral containers start as soon as the sandbox runs, even while init containers
        // have not finished: that is when one is most often needed.
        let first_ephemeral = self.slots.iter().position(|s| s.ephemeral).unwrap_or(self.slots.len());
        for i in first_ephemeral..self.slots.len() {
            wake = wake.min(self.step(i, now).await);
        }
        // Init containers, one at a time, in order.
        let first_regular = self.slots.iter().position(|s| !s.init).unwrap_or(self.slots.len());
        for i in 0..first_regular {
            if self.slots[i].done {
                continue;
            }
            wake = wake.min(self.step(i, now).await);
            if !self.slots[i].done || self.failed.is_some() {
                return wake;
            }
        }
        for i in first_regular..first_ephemeral {
            wake = wake.min(self.step(i, now).await);
        }
        let view_containers: Vec<ContainerStatus> = self.slots[first_regular..first_ephemeral]
            .iter()
            .map(|s| self.container_status(s))
            .collect();
        let phase = status::phase(&self.view(&[], &view_containers));
        if (phase == "Succeeded" || phase == "Failed") && self.restart_policy() != RestartPolicy::Always {
            // Done for good: release the pod's address; the containers stay for their logs.
            self.terminal = true;
            if let Some(sb) = &self.sandbox {
                let _ = self.env.runtime.stop(&sb.id, Duration::ZERO, None).await;
                self.env.net.detach(&sb.id).await;
            }
            self.env.net.release(&self.uid);
        }
        wake
    }
}
