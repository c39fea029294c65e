//! The pod's containers on the Engine: each slot converged in turn — its next attempt made and
//! started when the slot's decisions (`slot`) say so, with the image and configuration it needs.

use std::time::Duration;

use capstan_api::event::EventType;
use capstan_containers::{ContainerConfig, PullPolicy, State};
use serde_json::json;
use tokio::time::Instant;

use super::Worker;
use super::sandbox::create_replacing;
use super::slot::{AfterExit, RestartPolicy, Wake, human};
use crate::spec::{self, References};
use crate::{references, volumes};

/// How soon a worker looks again after a failure that has no back-off of its own.
const RETRY: Duration = Duration::from_secs(2);

impl Worker {
    /// Converges one container.
    pub(super) async fn step(&mut self, i: usize, now: Instant) -> Wake {
        let policy = if self.slots[i].ephemeral {
            RestartPolicy::Never
        } else {
            self.restart_policy()
        };
        let current_state = self.slots[i].current.as_ref().map(|c| c.state);
        match current_state {
            Some(State::Running) => {
                self.slots[i].waiting = None;
                self.run_probes(i, now).await
            }
            Some(State::Exited) => {
                let info = self.slots[i].current.clone().expect("checked");
                match self.slots[i].exited(&info, policy, &self.env.backoff, now) {
                    AfterExit::Completed => Wake::NONE,
                    AfterExit::Finished { pod_failed } => {
                        if let Some(message) = pod_failed {
                            self.failed = Some(("Failed".into(), message));
                        }
                        Wake::NONE
                    }
                    AfterExit::Restart => self.create(i, now).await,
                    AfterExit::BackOff { until, wait, first } => {
                        let pod = format!("{}_{}({})", self.name(), self.namespace(), self.uid);
                        let (name, field) = (self.slots[i].name.clone(), self.slots[i].field());
                        if first {
                            let message = format!("Back-off restarting failed container {name} in pod {pod}");
                            self.event(EventType::Warning, "BackOff", message, Some(&field));
                        }
                        self.slots[i].waiting = Some((
                            "CrashLoopBackOff".into(),
                            format!("back-off {} restarting failed container={name} pod={pod}", human(wait)),
                        ));
                        Wake::at(until)
                    }
                }
            }
            Some(State::Created) | Some(State::Other) => {
                // Made but not started (an agent killed mid-way): start it.
                let id = self.slots[i].current.as_ref().map(|c| c.id.clone()).unwrap_or_default();
                if let Err(e) = self.env.runtime.start(&id).await {
                    self.slots[i].waiting = Some(("RunContainerError".into(), e.to_string()));
                    return Wake::at(now + RETRY);
                }
                self.slots[i].arm_probes(now);
                Wake::NONE
            }
            None if self.slots[i].done => Wake::NONE,
            // An ephemeral container runs once: gone (with its sandbox) is done.
            None if self.slots[i].ephemeral && self.slots[i].made => {
                self.slots[i].done = true;
                Wake::NONE
            }
            None => self.create(i, now).await,
        }
    }

    /// Makes and starts the container's next attempt (made already when the sandbox started).
    async fn create(&mut self, i: usize, now: Instant) -> Wake {
        let env = self.env.clone();
        let (id, attempt) = match self.slots[i].pending.take() {
            Some(made) => made,
            None => {
                let sandbox = self.sandbox.as_ref().map(|s| s.id.clone()).unwrap_or_default();
                let (config, attempt) = match self.prepare(i, &sandbox, now).await {
                    Ok(c) => c,
                    Err(wake) => return wake,
                };
                match create_replacing(env.runtime.as_ref(), &config).await {
                    Ok(id) => (id, attempt),
                    Err(e) => return self.run_failed(i, e, now),
                }
            }
        };
        let started = async {
            env.runtime.start(&id).await?;
            env.runtime.inspect(&id).await
        };
        match started.await {
            Ok(info) => {
                let (dropped, wake) = self.slots[i].started_attempt(info, attempt, now);
                // Keep one exited container for `--previous`; older ones go.
                if let Some(old) = dropped {
                    let _ = env.runtime.remove(&old).await;
                }
                let (name, field) = (self.slots[i].name.clone(), self.slots[i].field());
                self.event(EventType::Normal, "Started", format!("Started container {name}"), Some(&field));
                wake
            }
            Err(e) => self.run_failed(i, e, now),
        }
    }

    fn run_failed(&mut self, i: usize, e: capstan_containers::RuntimeError, now: Instant) -> Wake {
        let wake = self.slots[i].run_failed(&e, &self.env.backoff, now);
        let field = self.slots[i].field();
        self.event(EventType::Warning, "Failed", format!("Error: {e}"), Some(&field));
        wake
    }

    /// The image and the configuration of the container's next attempt; while they cannot be
    /// had, the reason is in the slot and the time to look again is returned.
    pub(super) async fn prepare(&mut self, i: usize, sandbox: &str, now: Instant) -> Result<(ContainerConfig, u32), Wake> {
        let env = self.env.clone();
        self.slots[i].pull_allowed(now)?;
        let image = self.slots[i].image().to_owned();
        let field = self.slots[i].field();
        let policy = PullPolicy::parse(
            self.slots[i].spec["imagePullPolicy"]
                .as_str()
                .unwrap_or_else(|| capstan_api::defaults::image_pull_policy(&image)),
        );
        match env.runtime.ensure_image(&image, policy).await {
            Ok(_) => self.slots[i].pull.reset(),
            Err(e) => {
                let message = format!("Failed to pull image \"{image}\": {e}");
                self.event(EventType::Warning, "Failed", message, Some(&field));
                return Err(self.slots[i].pull_failed(&e, policy, &env.backoff, now));
            }
        }
        let refs = match self.fresh_refs.clone() {
            Some(r) => r,
            None => match references::fetch(&env.api, &self.pod).await {
                Ok(r) => r,
                Err(e) => {
                    let message = format!("reading the pod's references: {e}");
                    self.slots[i].waiting = Some(("CreateContainerConfigError".into(), message));
                    return Err(Wake::at(now + RETRY));
                }
            },
        };
        let attempt = self.slots[i].next_attempt();
        match self.container_config(i, sandbox, &refs, attempt) {
            Ok(c) => Ok((c, attempt)),
            Err(message) => {
                if self.slots[i].waiting.as_ref().is_none_or(|w| w.1 != message) {
                    self.event(EventType::Warning, "Failed", format!("Error: {message}"), Some(&field));
                }
                self.slots[i].waiting = Some(("CreateContainerConfigError".into(), message));
                Err(Wake::at(now + RETRY))
            }
        }
    }

    fn container_config(&mut self, i: usize, sandbox: &str, refs: &References, attempt: u32) -> Result<ContainerConfig, String> {
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
        if let Some(target) = slot.spec["targetContainerName"].as_str().filter(|_| slot.ephemeral) {
            // Sees the target's processes, as `kubectl debug --target` promises.
            let running = self.slots.iter().find(|s| s.name == target && !s.ephemeral).filter(|s| s.running());
            let Some(c) = running.and_then(|s| s.current.as_ref()) else {
                return Err(format!("target container {target:?} is not running"));
            };
            config.pid_mode = Some(format!("container:{}", c.id));
        }
        config.labels.extend(self.env.extra_labels.iter().cloned());
        Ok(config)
    }
}
