//! The pod's sandbox (the container holding its network namespace, wired to the node's bridge)
//! and its volumes: made before any container, made again when the sandbox dies.

use std::time::Duration;

use capstan_api::event::EventType;
use capstan_containers::{ContainerConfig, PullPolicy, Runtime, RuntimeError, State};
use tokio::time::Instant;

use super::Worker;
use super::slot::{Wake, terminated};
use crate::podnet::PodNetError;
use crate::spec::{self, LABEL_ATTEMPT, References, SANDBOX};
use crate::{references, volumes};

/// A mounted service-account token is renewed when this old: 80 % of the 3607 s it is asked for,
/// as the kubelet renews at 80 % of a token's lifetime.
pub(super) const TOKEN_RENEW_AFTER: Duration = Duration::from_secs(2885);

/// Why a sandbox could not be made.
#[derive(Debug, thiserror::Error)]
enum SandboxError {
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("setting up the pod network: {0}")]
    Network(PodNetError),
}

impl Worker {
    /// Makes sure the sandbox runs (volumes first); false while it cannot.
    pub(super) async fn ensure_sandbox(&mut self, now: Instant) -> (bool, Wake) {
        if let Some(sb) = &self.sandbox {
            match self.env.runtime.inspect(&sb.id).await {
                Ok(info) if info.state == State::Running => {
                    if self.pod_ip.is_none() {
                        self.pod_ip = info.ip.clone();
                    }
                    let ip = self.pod_ip.as_deref().and_then(|ip| ip.parse().ok());
                    if let (Some(pid), Some(ip), false) = (info.pid, ip, spec::host_network(&self.pod)) {
                        self.env.net.adopt(pid, &info.id, ip).await;
                    }
                    self.sandbox = Some(info);
                    return (true, Wake::NONE);
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
        let host = spec::host_namespaces_asked(&self.pod);
        if !host.is_empty() && !self.env.allow_host_path {
            let message = format!(
                "the pod asks for the host's namespaces ({}), which this node does not allow (start it with --allow-host-path)",
                host.join(", ")
            );
            if self.blocked.as_ref().is_none_or(|b| b.1 != message) {
                self.event(EventType::Warning, "FailedCreatePodSandBox", message.clone(), None);
            }
            self.blocked = Some(("ContainerCreating".into(), message));
            return (false, Wake::NONE);
        }
        if self.volumes.is_none()
            && let Err(message) = self.prepare_volumes().await
        {
            if self.blocked.as_ref().is_none_or(|b| b.1 != message) {
                self.event(EventType::Warning, "FailedMount", message.clone(), None);
            }
            self.blocked = Some(("ContainerCreating".into(), message));
            return (false, Wake::NONE);
        }
        let env = self.env.clone();
        let host_network = spec::host_network(&self.pod);
        let made = async {
            let ip = if host_network {
                let host = &env.ctx.host_ip;
                host.parse()
                    .map_err(|_| SandboxError::Network(PodNetError::HostAddress(host.clone())))?
            } else {
                env.net.assign(&self.uid).map_err(SandboxError::Network)?
            };
            env.runtime.ensure_image(&env.ctx.pause_image, PullPolicy::IfNotPresent).await?;
            let mut config = spec::sandbox(&self.pod, &env.ctx, ip);
            config.name = spec::container_name(&self.pod, SANDBOX, self.sandbox_attempt);
            config.labels.insert(LABEL_ATTEMPT.to_owned(), self.sandbox_attempt.to_string());
            config.labels.extend(env.extra_labels.iter().cloned());
            let id = create_replacing(env.runtime.as_ref(), &config).await?;
            Ok::<_, SandboxError>((id, ip))
        };
        let mut wake = Wake::NONE;
        let made = match made.await {
            Ok((id, ip)) => {
                // Starting a sandbox is the slow part: the containers that do not need its
                // address are made meanwhile, and only started once it is connected.
                let (started, early) = tokio::join!(env.runtime.start(&id), self.make_early(&id, now));
                wake = early;
                let connected = async {
                    started?;
                    let mut info = env.runtime.inspect(&id).await?;
                    let pid = info.pid.ok_or(SandboxError::Network(PodNetError::NotRunning))?;
                    if !host_network {
                        env.net.attach(pid, &id, ip).await.map_err(SandboxError::Network)?;
                    }
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
                (true, wake)
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
                (false, wake)
            }
        }
    }

    /// Makes (without starting) the containers that can be made before the sandbox runs: all of
    /// them when the pod has no init containers and none reads the pod's IP from the API.
    async fn make_early(&mut self, sandbox: &str, now: Instant) -> Wake {
        let mut wake = Wake::NONE;
        if self.slots.iter().any(|s| s.init) || spec::reads_pod_ip(&self.pod) {
            return wake;
        }
        for i in 0..self.slots.len() {
            if self.slots[i].current.is_some() || self.slots[i].done || self.slots[i].ephemeral {
                continue;
            }
            let config = match self.prepare(i, sandbox, now).await {
                Ok(c) => c,
                Err(w) => {
                    wake = wake.min(w);
                    continue;
                }
            };
            let (config, attempt) = config;
            // A failure here is met again, and reported, when the container is made the usual way.
            if let Ok(id) = create_replacing(self.env.runtime.as_ref(), &config).await {
                self.slots[i].pending = Some((id, attempt));
            }
        }
        wake
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
    pub(super) fn write_volumes(&mut self, refs: &References) -> Result<(), spec::ConfigError> {
        let dir = self.env.pods_dir.join(&self.uid).join("volumes");
        self.volumes = Some(volumes::prepare(&self.pod, &dir, refs, self.env.allow_host_path)?);
        self.token_written = references::wants_token(&self.pod).then(Instant::now);
        Ok(())
    }

    /// Writes the volumes again with what the pod refers to now (a new token); a failure keeps
    /// the old files and is tried again on the next pass.
    pub(super) async fn renew_volumes(&mut self) {
        let refs = match references::fetch(&self.env.api, &self.pod).await {
            Ok(r) => r,
            Err(e) => return tracing::warn!(pod = %self.name(), error = %e, "renewing the pod's token failed"),
        };
        if let Err(e) = self.write_volumes(&refs) {
            tracing::warn!(pod = %self.name(), error = %e.0, "rewriting the pod's volumes failed");
        }
    }
}

/// Creates the container; a leftover of the same name (an agent killed mid-way, a start that
/// failed) is removed first. Asking the Engine only on a clash saves a call per container.
pub(super) async fn create_replacing(runtime: &dyn Runtime, config: &ContainerConfig) -> Result<String, RuntimeError> {
    match runtime.create(config).await {
        Err(RuntimeError::NameInUse { .. }) => {
            runtime.remove(&config.name).await?;
            runtime.create(config).await
        }
        made => made,
    }
}
