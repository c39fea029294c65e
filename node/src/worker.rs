//! One pod's worker: converges the Docker Engine to the pod's spec — sandbox, volumes, init
//! containers in order, then the containers — restarts them per the restart policy with
//! crash-loop back-off, runs their probes, stops them gracefully, and reports the pod's status.
//! It wakes on a new version of the pod, on a container event, or on its own timers.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use capstan_api::meta::{LABEL_CONTAINER, LABEL_POD_UID};
use capstan_containers::{ContainerInfo, PullPolicy, Runtime, RuntimeError, State};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::backoff::{Backoff, Streak};
use crate::client::ApiClient;
use crate::podnet::{PodNet, PodNetError};
use crate::probes::{Probe, ProbeState};
use crate::spec::{self, LABEL_ATTEMPT, NodeContext, References, SANDBOX};
use crate::status::{self, ContainerState, ContainerStatus, PodView, Terminated};
use crate::{references, volumes};

/// What all workers share.
pub struct Env {
    pub runtime: Arc<dyn Runtime>,
    pub api: ApiClient,
    pub ctx: NodeContext,
    /// Pod addresses and the sandboxes' connection to the node's bridge.
    pub net: PodNet,
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

/// The longest a stopping pod waits for the proxies to drop it before its containers are
/// signalled (also bounded by its grace period).
const MAX_UNREACHABLE_WAIT: Duration = Duration::from_secs(10);
/// After the last proxy dropped a stopping pod: time for connections it accepted just before.
const SETTLE: Duration = Duration::from_millis(250);

/// A mounted service-account token is renewed when this old: 80 % of the 3607 s it is asked for,
/// as the kubelet renews at 80 % of a token's lifetime.
const TOKEN_RENEW_AFTER: Duration = Duration::from_secs(2885);

/// How often a worker looks again when nothing wakes it.
const RESYNC: Duration = Duration::from_secs(10);

/// One container of the pod (or init container).
struct Slot {
    name: String,
    init: bool,
    spec: Value,
    /// Containers made so far beyond the first: Kubernetes' restartCount.
    restarts: u32,
    /// Whether a container has been made for this slot at all.
    made: bool,
    current: Option<ContainerInfo>,
    /// The container that exited before the current one (for `logs --previous`).
    previous: Option<String>,
    last: Option<Terminated>,
    /// The container whose exit has been handled (the back-off started for it).
    handled: Option<String>,
    waiting: Option<(String, String)>,
    crash: Streak,
    pull: Streak,
    pull_error: String,
    startup: Option<ProbeState>,
    liveness: Option<ProbeState>,
    readiness: Option<ProbeState>,
    started: bool,
    ready: bool,
    /// An init container that completed, or a container that will not run again.
    done: bool,
    /// A container made while the sandbox started, not started yet: (id, attempt).
    pending: Option<(String, u32)>,
}

impl Slot {
    fn new(spec: &Value, init: bool) -> Slot {
        Slot {
            name: spec["name"].as_str().unwrap_or_default().to_owned(),
            init,
            spec: spec.clone(),
            restarts: 0,
            made: false,
            current: None,
            previous: None,
            last: None,
            handled: None,
            waiting: None,
            crash: Streak::default(),
            pull: Streak::default(),
            pull_error: String::new(),
            startup: None,
            liveness: None,
            readiness: None,
            started: false,
            ready: false,
            done: false,
            pending: None,
        }
    }

    fn running(&self) -> bool {
        self.current.as_ref().is_some_and(|c| c.state == State::Running)
    }

    fn arm_probes(&mut self, now: Instant) {
        let parse = |k: &str| Probe::parse(&self.spec[k], &self.spec).map(|p| ProbeState::new(p, now));
        // Startup and readiness look again soon while a fresh container is not up yet.
        self.startup = parse("startupProbe").map(ProbeState::eager);
        self.liveness = parse("livenessProbe");
        self.readiness = parse("readinessProbe").map(ProbeState::eager);
        self.started = self.startup.is_none();
        self.ready = false;
    }
}

fn terminated(info: &ContainerInfo) -> Terminated {
    let reason = if info.oom_killed {
        "OOMKilled"
    } else if info.exit_code == 0 {
        "Completed"
    } else {
        "Error"
    };
    Terminated {
        exit_code: info.exit_code,
        reason: reason.to_owned(),
        message: info.error.clone(),
        started_at: info.started_at.clone(),
        finished_at: info.finished_at.clone(),
        container_id: info.id.clone(),
    }
}

fn seconds_between(from: Option<&str>, to: Option<&str>) -> Duration {
    let parse = |t: Option<&str>| t.and_then(capstan_api::time::parse);
    match (parse(from), parse(to)) {
        (Some(a), Some(b)) => Duration::from_secs(b.as_second().saturating_sub(a.as_second()).max(0) as u64),
        _ => Duration::ZERO,
    }
}

use capstan_api::event::{EventType, Report, Source};
use capstan_api::time::now_rfc3339;

/// The attempt number a container carries in its labels.
fn attempt(c: &ContainerInfo) -> u32 {
    c.labels.get(LABEL_ATTEMPT).and_then(|a| a.parse().ok()).unwrap_or(0)
}

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
                    if let Some(ip) = &self.pod_ip {
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

    fn restart_policy(&self) -> &str {
        self.pod["spec"]["restartPolicy"].as_str().unwrap_or("Always")
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
        self.pod = pod;
    }

    /// One pass: converge, report, and say when to look again.
    async fn sync(&mut self) -> Instant {
        let now = Instant::now();
        let mut next = now + RESYNC;
        self.converge(now, &mut next).await;
        self.fresh_refs = None;
        self.report().await;
        next
    }

    async fn converge(&mut self, now: Instant, next: &mut Instant) {
        if self.terminal {
            return;
        }
        if !self.ensure_sandbox(now, next).await {
            *next = (*next).min(now + Duration::from_secs(2));
            return;
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
        // Init containers, one at a time, in order.
        let first_regular = self.slots.iter().position(|s| !s.init).unwrap_or(self.slots.len());
        for i in 0..first_regular {
            if self.slots[i].done {
                continue;
            }
            self.step(i, now, next).await;
            if !self.slots[i].done || self.failed.is_some() {
                return;
            }
        }
        for i in first_regular..self.slots.len() {
            self.step(i, now, next).await;
        }
        let view_containers: Vec<ContainerStatus> = self.slots[first_regular..].iter().map(|s| self.container_status(s)).collect();
        let phase = status::phase(&self.view(&[], &view_containers));
        if (phase == "Succeeded" || phase == "Failed") && self.restart_policy() != "Always" {
            // Done for good: release the pod's address; the containers stay for their logs.
            self.terminal = true;
            if let Some(sb) = &self.sandbox {
                let _ = self.env.runtime.stop(&sb.id, Duration::ZERO, None).await;
                self.env.net.detach(&sb.id).await;
            }
            self.env.net.release(&self.uid);
        }
    }

    /// Makes sure the sandbox runs (volumes first); false while it cannot.
    async fn ensure_sandbox(&mut self, now: Instant, next: &mut Instant) -> bool {
        if let Some(sb) = &self.sandbox {
            match self.env.runtime.inspect(&sb.id).await {
                Ok(info) if info.state == State::Running => {
                    if self.pod_ip.is_none() {
                        self.pod_ip = info.ip.clone();
                    }
                    self.sandbox = Some(info);
                    return true;
                }
                Ok(_) | Err(_) => {
                    tracing::info!(pod = %self.name(), "the pod sandbox is not running; making a new one");
                    self.event(
                        EventType::Normal,
                        "SandboxChanged",
                        "Pod sandbox changed, it will be killed and re-created.".into(),
                        None,
                    );
                    let old = self.sandbox.take().map(|s| s.id);
                    self.reset_for_new_sandbox().await;
                    if let Some(id) = old {
                        self.env.remove_container(&id, true).await;
                    }
                    self.sandbox_attempt += 1;
                }
            }
        }
        if self.volumes.is_none() {
            match self.prepare_volumes().await {
                Ok(()) => {}
                Err(message) => {
                    if self.blocked.as_ref().is_none_or(|b| b.1 != message) {
                        self.event(EventType::Warning, "FailedMount", message.clone(), None);
                    }
                    self.blocked = Some(("ContainerCreating".into(), message));
                    return false;
                }
            }
        }
        let env = self.env.clone();
        let made = async {
            let ip = env.net.assign(&self.uid).map_err(SandboxError::Network)?;
            env.runtime.ensure_image(&env.ctx.pause_image, PullPolicy::IfNotPresent).await?;
            let mut config = spec::sandbox(&self.pod, &env.ctx, ip);
            config.name = spec::container_name(&self.pod, SANDBOX, self.sandbox_attempt);
            config.labels.insert(LABEL_ATTEMPT.to_owned(), self.sandbox_attempt.to_string());
            config.labels.extend(env.extra_labels.iter().cloned());
            let id = create_replacing(env.runtime.as_ref(), &config).await?;
            Ok::<_, SandboxError>((id, ip))
        };
        let made = match made.await {
            Ok((id, ip)) => {
                // Starting a sandbox is the slow part: the containers that do not need its
                // address are made meanwhile, and only started once it is connected.
                let (started, ()) = tokio::join!(env.runtime.start(&id), self.make_early(&id, now, next));
                let connected = async {
                    started?;
                    let mut info = env.runtime.inspect(&id).await?;
                    let pid = info.pid.ok_or(SandboxError::Network(PodNetError::NotRunning))?;
                    env.net.attach(pid, &id, ip).await.map_err(SandboxError::Network)?;
                    info.ip = Some(ip.to_string());
                    Ok(info)
                };
                let connected = connected.await;
                if connected.is_err() {
                    // Of no use unconnected; the next attempt makes a new one.
                    env.remove_container(&id, true).await;
                }
                connected
            }
            Err(e) => Err(e),
        };
        match made {
            Ok(info) => {
                self.pod_ip = info.ip.clone();
                self.sandbox = Some(info);
                self.blocked = None;
                true
            }
            Err(e) => {
                for s in &mut self.slots {
                    if let Some((id, _)) = s.pending.take() {
                        let _ = env.runtime.remove(&id).await;
                    }
                }
                let message = format!("Failed to create pod sandbox: {e}");
                if self.blocked.as_ref().is_none_or(|b| b.1 != message) {
                    self.event(EventType::Warning, "FailedCreatePodSandBox", message.clone(), None);
                }
                self.blocked = Some(("ContainerCreating".into(), message));
                false
            }
        }
    }

    /// Makes (without starting) the containers that can be made before the sandbox runs: all of
    /// them when the pod has no init containers and none reads the pod's IP from the API.
    async fn make_early(&mut self, sandbox: &str, now: Instant, next: &mut Instant) {
        if self.slots.iter().any(|s| s.init) || spec::reads_pod_ip(&self.pod) {
            return;
        }
        for i in 0..self.slots.len() {
            if self.slots[i].current.is_some() || self.slots[i].done {
                continue;
            }
            let Some((config, attempt)) = self.prepare(i, sandbox, now, next).await else {
                continue;
            };
            // A failure here is met again, and reported, when the container is made the usual way.
            if let Ok(id) = create_replacing(self.env.runtime.as_ref(), &config).await {
                self.slots[i].pending = Some((id, attempt));
            }
        }
    }

    /// The sandbox is gone: every container goes with it, and init containers run again.
    async fn reset_for_new_sandbox(&mut self) {
        for s in &mut self.slots {
            if let Some(c) = s.current.take() {
                let _ = self.env.runtime.stop(&c.id, Duration::ZERO, None).await;
                if let Ok(info) = self.env.runtime.inspect(&c.id).await {
                    s.last = Some(terminated(&info));
                }
                if let Some(p) = s.previous.replace(c.id) {
                    let _ = self.env.runtime.remove(&p).await;
                }
                s.restarts += 1;
            }
            s.done = false;
            s.handled = None;
            s.started = false;
            s.ready = false;
        }
        self.pod_ip = None;
    }

    async fn prepare_volumes(&mut self) -> Result<(), String> {
        let refs = references::fetch(&self.env.api, &self.pod)
            .await
            .map_err(|e| format!("reading the pod's references: {e}"))?;
        let pod_dir = self.env.pods_dir.join(&self.uid);
        if let Some(text) = spec::resolv_conf(&self.pod, &self.env.ctx) {
            std::fs::create_dir_all(&pod_dir)
                .and_then(|_| std::fs::write(pod_dir.join("resolv.conf"), text))
                .map_err(|e| format!("writing resolv.conf: {e}"))?;
        }
        self.write_volumes(&refs).map_err(|e| format!("MountVolume.SetUp failed: {e}"))?;
        // Fresh enough for the containers made right after.
        self.fresh_refs = Some(refs);
        Ok(())
    }

    /// Writes the pod's volumes from `refs`, noting when a token was written (to renew it).
    fn write_volumes(&mut self, refs: &References) -> Result<(), spec::ConfigError> {
        let dir = self.env.pods_dir.join(&self.uid).join("volumes");
        self.volumes = Some(volumes::prepare(&self.pod, &dir, refs, self.env.allow_host_path)?);
        self.token_written = references::wants_token(&self.pod).then(Instant::now);
        Ok(())
    }

    /// Writes the volumes again with what the pod refers to now (a new token); a failure keeps
    /// the old files and is tried again on the next pass.
    async fn renew_volumes(&mut self) {
        let refs = match references::fetch(&self.env.api, &self.pod).await {
            Ok(r) => r,
            Err(e) => return tracing::warn!(pod = %self.name(), error = %e, "renewing the pod's token failed"),
        };
        if let Err(e) = self.write_volumes(&refs) {
            tracing::warn!(pod = %self.name(), error = %e.0, "rewriting the pod's volumes failed");
        }
    }

    /// Converges one container.
    async fn step(&mut self, i: usize, now: Instant, next: &mut Instant) {
        let policy = self.restart_policy().to_owned();
        let current_state = self.slots[i].current.as_ref().map(|c| c.state);
        match current_state {
            Some(State::Running) => {
                self.slots[i].waiting = None;
                self.run_probes(i, now, next).await;
            }
            Some(State::Exited) => {
                let info = self.slots[i].current.clone().expect("checked");
                let slot = &mut self.slots[i];
                let fresh = slot.handled.as_deref() != Some(info.id.as_str());
                let t = terminated(&info);
                slot.started = false;
                slot.ready = false;
                if slot.init && info.exit_code == 0 {
                    slot.done = true;
                    slot.handled = Some(info.id.clone());
                    return;
                }
                let restart = match policy.as_str() {
                    "Never" => false,
                    "OnFailure" => info.exit_code != 0,
                    _ => !slot.init || info.exit_code != 0,
                };
                if !restart {
                    slot.done = true;
                    slot.handled = Some(info.id.clone());
                    if slot.init {
                        self.failed = Some((
                            "Failed".into(),
                            format!("init container {:?} failed with exit code {}", slot.name, info.exit_code),
                        ));
                    }
                    return;
                }
                if fresh {
                    slot.handled = Some(info.id.clone());
                    let ran = seconds_between(info.started_at.as_deref(), info.finished_at.as_deref());
                    slot.crash.crashed(&self.env.backoff, ran, now);
                    slot.last = Some(t);
                }
                if !slot.crash.ready(now) {
                    let wait = human(slot.crash.current());
                    let until = slot.crash.until();
                    let (name, init) = (slot.name.clone(), slot.init);
                    let first = slot.waiting.as_ref().is_none_or(|w| w.0 != "CrashLoopBackOff");
                    let pod = format!("{}_{}({})", self.name(), self.namespace(), self.uid);
                    if first {
                        let field = format!("spec.{}{{{name}}}", if init { "initContainers" } else { "containers" });
                        self.event(
                            EventType::Warning,
                            "BackOff",
                            format!("Back-off restarting failed container {name} in pod {pod}"),
                            Some(&field),
                        );
                    }
                    self.slots[i].waiting = Some((
                        "CrashLoopBackOff".into(),
                        format!("back-off {wait} restarting failed container={name} pod={pod}"),
                    ));
                    if let Some(u) = until {
                        *next = (*next).min(u);
                    }
                    return;
                }
                self.create(i, now, next).await;
            }
            Some(State::Created) | Some(State::Other) => {
                // Made but not started (an agent killed mid-way): start it.
                let id = self.slots[i].current.as_ref().map(|c| c.id.clone()).unwrap_or_default();
                if let Err(e) = self.env.runtime.start(&id).await {
                    self.slots[i].waiting = Some(("RunContainerError".into(), e.to_string()));
                    *next = (*next).min(now + Duration::from_secs(2));
                } else {
                    self.slots[i].arm_probes(now);
                }
            }
            None => {
                if self.slots[i].done {
                    return;
                }
                self.create(i, now, next).await;
            }
        }
    }

    /// Makes and starts the container's next attempt (made already when the sandbox started).
    async fn create(&mut self, i: usize, now: Instant, next: &mut Instant) {
        let env = self.env.clone();
        let field = self.field(i);
        let (id, attempt) = match self.slots[i].pending.take() {
            Some(made) => made,
            None => {
                let sandbox = self.sandbox.as_ref().map(|s| s.id.clone()).unwrap_or_default();
                let Some((config, attempt)) = self.prepare(i, &sandbox, now, next).await else {
                    return;
                };
                match create_replacing(env.runtime.as_ref(), &config).await {
                    Ok(id) => (id, attempt),
                    Err(e) => return self.run_failed(i, e, now, next),
                }
            }
        };
        let started = async {
            env.runtime.start(&id).await?;
            env.runtime.inspect(&id).await
        };
        match started.await {
            Ok(info) => {
                let slot = &mut self.slots[i];
                // Keep one exited container for `--previous`; older ones go.
                if let Some(old) = slot.current.take()
                    && let Some(p) = slot.previous.replace(old.id)
                {
                    let _ = env.runtime.remove(&p).await;
                }
                slot.restarts = attempt;
                slot.made = true;
                slot.waiting = None;
                slot.arm_probes(now);
                slot.current = Some(info);
                for p in [&slot.startup, &slot.liveness, &slot.readiness].into_iter().flatten() {
                    *next = (*next).min(p.next_at());
                }
                let name = slot.name.clone();
                self.event(EventType::Normal, "Started", format!("Started container {name}"), Some(&field));
            }
            Err(e) => self.run_failed(i, e, now, next),
        }
    }

    /// `spec.containers{name}` (or initContainers), the field events name.
    fn field(&self, i: usize) -> String {
        let s = &self.slots[i];
        format!("spec.{}{{{}}}", if s.init { "initContainers" } else { "containers" }, s.name)
    }

    fn run_failed(&mut self, i: usize, e: RuntimeError, now: Instant, next: &mut Instant) {
        let field = self.field(i);
        let slot = &mut self.slots[i];
        slot.waiting = Some(("RunContainerError".into(), e.to_string()));
        slot.crash.failed(&self.env.backoff, Duration::ZERO, now);
        if let Some(u) = slot.crash.until() {
            *next = (*next).min(u);
        }
        self.event(EventType::Warning, "Failed", format!("Error: {e}"), Some(&field));
    }

    /// The image and the configuration of the container's next attempt; None (with the reason
    /// in the slot) while they cannot be had.
    async fn prepare(
        &mut self,
        i: usize,
        sandbox: &str,
        now: Instant,
        next: &mut Instant,
    ) -> Option<(capstan_containers::ContainerConfig, u32)> {
        let env = self.env.clone();
        let image = self.slots[i].spec["image"].as_str().unwrap_or_default().to_owned();
        let field = self.field(i);
        if !self.slots[i].pull.ready(now) {
            let slot = &mut self.slots[i];
            slot.waiting = Some((
                "ImagePullBackOff".into(),
                format!("Back-off pulling image \"{image}\": {}", slot.pull_error),
            ));
            if let Some(u) = slot.pull.until() {
                *next = (*next).min(u);
            }
            return None;
        }
        let policy = PullPolicy::parse(
            self.slots[i].spec["imagePullPolicy"]
                .as_str()
                .unwrap_or_else(|| capstan_api::defaults::image_pull_policy(&image)),
        );
        match env.runtime.ensure_image(&image, policy).await {
            Ok(_) => self.slots[i].pull.reset(),
            Err(e) => {
                let message = e.to_string();
                self.event(
                    EventType::Warning,
                    "Failed",
                    format!("Failed to pull image \"{image}\": {message}"),
                    Some(&field),
                );
                let slot = &mut self.slots[i];
                let until = slot.pull.failed(&env.backoff, Duration::ZERO, now);
                slot.pull_error = message.clone();
                let reason = if matches!(e, RuntimeError::Image(_)) && policy == PullPolicy::Never {
                    "ErrImageNeverPull"
                } else {
                    "ErrImagePull"
                };
                slot.waiting = Some((reason.into(), message));
                // Look once mid-way, to report the back-off, then pull again when it ends.
                *next = (*next).min(now + (until - now) / 2);
                return None;
            }
        }
        let refs = match self.fresh_refs.clone() {
            Some(r) => r,
            None => match references::fetch(&env.api, &self.pod).await {
                Ok(r) => r,
                Err(e) => {
                    self.slots[i].waiting = Some(("CreateContainerConfigError".into(), format!("reading the pod's references: {e}")));
                    *next = (*next).min(now + Duration::from_secs(2));
                    return None;
                }
            },
        };
        let attempt = if self.slots[i].made { self.slots[i].restarts + 1 } else { 0 };
        match self.container_config(i, sandbox, &refs, attempt) {
            Ok(c) => Some((c, attempt)),
            Err(message) => {
                if self.slots[i].waiting.as_ref().is_none_or(|w| w.1 != message) {
                    self.event(EventType::Warning, "Failed", format!("Error: {message}"), Some(&field));
                }
                self.slots[i].waiting = Some(("CreateContainerConfigError".into(), message));
                *next = (*next).min(now + Duration::from_secs(2));
                None
            }
        }
    }

    fn container_config(
        &mut self,
        i: usize,
        sandbox: &str,
        refs: &References,
        attempt: u32,
    ) -> Result<capstan_containers::ContainerConfig, String> {
        // Fresh ConfigMap and Secret contents for every new container (written already when the
        // references were read in this pass); a failure keeps the last files.
        if self.fresh_refs.is_none() {
            let _ = self.write_volumes(refs);
        }
        let vols = self.volumes.clone().unwrap_or_default();
        let slot = &self.slots[i];
        let mut binds = volumes::binds(&slot.spec, &vols).map_err(|e| e.0)?;
        let resolv = self.env.pods_dir.join(&self.uid).join("resolv.conf");
        if resolv.exists() {
            // The cluster's DNS and the namespace search path, as the kubelet writes them.
            binds.push(format!("{}:/etc/resolv.conf:ro", resolv.display()));
        }
        let mut pod = self.pod.clone();
        if let Some(ip) = &self.pod_ip {
            pod["status"]["podIP"] = json!(ip);
        }
        pod["status"]["hostIP"] = json!(self.env.ctx.host_ip);
        let mut config = spec::container(&pod, &slot.spec, sandbox, &self.env.ctx, refs, binds, attempt).map_err(|e| e.0)?;
        config.labels.extend(self.env.extra_labels.iter().cloned());
        Ok(config)
    }

    /// Runs the probes that are due; acts on a verdict.
    async fn run_probes(&mut self, i: usize, now: Instant, next: &mut Instant) {
        let Some(id) = self.slots[i].current.as_ref().map(|c| c.id.clone()) else {
            return;
        };
        let ip = self.pod_ip.clone().unwrap_or_default();
        let runtime = self.env.runtime.clone();
        let field = format!("spec.containers{{{}}}", self.slots[i].name);
        // Startup first; liveness and readiness only once it has passed.
        if !self.slots[i].started {
            if let Some(mut p) = self.slots[i].startup.take() {
                if p.due(now) {
                    let outcome = p.probe.run(runtime.as_ref(), &id, &ip).await;
                    match p.record(outcome.is_ok(), Instant::now()) {
                        Some(true) => self.slots[i].started = true,
                        Some(false) => {
                            let why = outcome.err().unwrap_or_default();
                            self.event(
                                EventType::Warning,
                                "Unhealthy",
                                format!("Startup probe failed: {why}"),
                                Some(&field),
                            );
                            self.slots[i].startup = Some(p);
                            self.kill(i, "failed startup probe").await;
                            return;
                        }
                        None => {}
                    }
                }
                *next = (*next).min(p.next_at());
                self.slots[i].startup = Some(p);
            } else {
                self.slots[i].started = true;
            }
            if !self.slots[i].started {
                return;
            }
        }
        if let Some(mut p) = self.slots[i].liveness.take() {
            if p.due(now) {
                let outcome = p.probe.run(runtime.as_ref(), &id, &ip).await;
                if let Err(why) = &outcome {
                    tracing::debug!(pod = %self.name(), container = %self.slots[i].name, "liveness probe failed: {why}");
                }
                if p.record(outcome.is_ok(), Instant::now()) == Some(false) {
                    let why = outcome.err().unwrap_or_default();
                    self.event(
                        EventType::Warning,
                        "Unhealthy",
                        format!("Liveness probe failed: {why}"),
                        Some(&field),
                    );
                    self.slots[i].liveness = Some(p);
                    self.kill(i, "failed liveness probe").await;
                    return;
                }
            }
            *next = (*next).min(p.next_at());
            self.slots[i].liveness = Some(p);
        }
        match self.slots[i].readiness.take() {
            Some(mut p) => {
                if p.due(now) {
                    let outcome = p.probe.run(runtime.as_ref(), &id, &ip).await;
                    if p.record(outcome.is_ok(), Instant::now()) == Some(false) {
                        let why = outcome.err().unwrap_or_default();
                        self.event(
                            EventType::Warning,
                            "Unhealthy",
                            format!("Readiness probe failed: {why}"),
                            Some(&field),
                        );
                    }
                }
                self.slots[i].ready = p.result == Some(true);
                *next = (*next).min(p.next_at());
                self.slots[i].readiness = Some(p);
            }
            None => self.slots[i].ready = true,
        }
    }

    /// Stops a container the probes gave up on; the restart policy takes it from there.
    async fn kill(&mut self, i: usize, why: &str) {
        let Some(c) = self.slots[i].current.clone() else { return };
        let name = self.slots[i].name.clone();
        self.event(
            EventType::Normal,
            "Killing",
            format!("Container {name} {why}, will be restarted"),
            Some(&format!("spec.containers{{{name}}}")),
        );
        self.stop_container(&self.slots[i].spec.clone(), &c.id, self.grace()).await;
        if let Ok(info) = self.env.runtime.inspect(&c.id).await {
            self.slots[i].current = Some(info);
        }
        self.slots[i].ready = false;
    }

    /// preStop hook, then the stop signal, then SIGKILL after the grace period.
    async fn stop_container(&self, spec: &Value, id: &str, grace: Duration) {
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
    async fn terminate(&mut self) {
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
                    Some(&format!("spec.containers{{{}}}", s.name)),
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

    fn container_status(&self, s: &Slot) -> ContainerStatus {
        let image = s.spec["image"].as_str().unwrap_or_default().to_owned();
        let state = match (&s.waiting, &s.current) {
            (Some((reason, message)), _) => ContainerState::Waiting {
                reason: reason.clone(),
                message: message.clone(),
            },
            (None, Some(c)) if c.state == State::Running => ContainerState::Running {
                started_at: c.started_at.clone().unwrap_or_default(),
            },
            (None, Some(c)) if c.state == State::Exited => ContainerState::Terminated(terminated(c)),
            _ => match &self.blocked {
                Some((reason, message)) => ContainerState::Waiting {
                    reason: reason.clone(),
                    message: message.clone(),
                },
                None if !s.init && self.slots.iter().any(|o| o.init && !o.done) => ContainerState::Waiting {
                    reason: "PodInitializing".into(),
                    message: String::new(),
                },
                None => ContainerState::Waiting {
                    reason: "ContainerCreating".into(),
                    message: String::new(),
                },
            },
        };
        // While a new attempt waits, lastState shows how the previous one ended.
        let last = match &state {
            ContainerState::Terminated(t) => s.last.clone().filter(|l| l.container_id != t.container_id),
            _ => s.last.clone(),
        };
        ContainerStatus {
            name: s.name.clone(),
            image,
            image_id: s.current.as_ref().map(|c| c.image_id.clone()).unwrap_or_default(),
            container_id: s.current.as_ref().map(|c| c.id.clone()),
            restart_count: s.restarts,
            state,
            last,
            ready: s.ready && s.running(),
            started: s.started && s.running(),
        }
    }

    fn view<'a>(&'a self, init: &'a [ContainerStatus], containers: &'a [ContainerStatus]) -> PodView<'a> {
        PodView {
            pod: &self.pod,
            init,
            containers,
            initialized: self
                .slots
                .iter()
                .filter(|s| s.init)
                .all(|s| s.done && s.current.as_ref().is_some_and(|c| c.exit_code == 0)),
            failed: self.failed.clone(),
            pod_ip: self.pod_ip.clone(),
            host_ip: self.env.ctx.host_ip.clone(),
            start_time: self.start_time.clone(),
            now: now_rfc3339(),
        }
    }

    /// Writes the pod's status when it changed.
    async fn report(&mut self) {
        if self.frozen {
            return;
        }
        let init: Vec<ContainerStatus> = self.slots.iter().filter(|s| s.init).map(|s| self.container_status(s)).collect();
        let containers: Vec<ContainerStatus> = self.slots.iter().filter(|s| !s.init).map(|s| self.container_status(s)).collect();
        let status = status::pod_status(&self.view(&init, &containers));
        if self.sent.as_ref() == Some(&status) {
            return;
        }
        let path = format!("{}/status", crate::client::path("pods", self.namespace(), self.name()));
        match self.env.api.merge_patch(&path, &json!({"status": status})).await {
            Ok(written) => {
                self.pod["status"] = written["status"].clone();
                self.sent = Some(status);
            }
            Err(e) if e.code == 404 => self.gone = true,
            Err(e) => tracing::warn!(pod = %self.name(), error = %e, "writing the pod status failed"),
        }
    }
}

/// `20s`, `5m0s`, `150ms`: durations as the kubelet prints them.
fn human(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{}s", ms / 1000)
    } else {
        format!("{}m{}s", ms / 60_000, (ms % 60_000) / 1000)
    }
}

/// Creates the container; a leftover of the same name (an agent killed mid-way, a start that
/// failed) is removed first. Asking the Engine only on a clash saves a call per container.
async fn create_replacing(runtime: &dyn Runtime, config: &capstan_containers::ContainerConfig) -> Result<String, RuntimeError> {
    match runtime.create(config).await {
        Err(RuntimeError::NameInUse { .. }) => {
            runtime.remove(&config.name).await?;
            runtime.create(config).await
        }
        made => made,
    }
}

/// Why a sandbox could not be made.
#[derive(Debug, thiserror::Error)]
enum SandboxError {
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("setting up the pod network: {0}")]
    Network(PodNetError),
}
