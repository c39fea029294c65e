//! The pod's status as the agent reports it: each slot's container status, the pod's view for
//! `status::pod_status`, and the patch written when it changed.

use capstan_api::time::now_rfc3339;
use capstan_containers::State;
use serde_json::json;

use super::Worker;
use super::slot::{Slot, terminated};
use crate::status::{self, ContainerState, ContainerStatus, PodView};

impl Worker {
    pub(super) fn container_status(&self, s: &Slot) -> ContainerStatus {
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
                None if !s.init && !s.ephemeral && !self.initialized() => ContainerState::Waiting {
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

    /// Whether every init container has completed successfully.
    fn initialized(&self) -> bool {
        self.slots
            .iter()
            .filter(|s| s.init)
            .all(|s| s.done && s.current.as_ref().is_some_and(|c| c.exit_code == 0))
    }

    pub(super) fn view<'a>(&'a self, init: &'a [ContainerStatus], containers: &'a [ContainerStatus]) -> PodView<'a> {
        PodView {
            pod: &self.pod,
            init,
            containers,
            initialized: self.initialized(),
            failed: self.failed.clone(),
            pod_ip: self.pod_ip.clone(),
            host_ip: self.env.ctx.host_ip.clone(),
            start_time: self.start_time.clone(),
            now: now_rfc3339(),
        }
    }

    /// Writes the pod's status when it changed.
    pub(super) async fn report(&mut self) {
        if self.frozen {
            return;
        }
        let init: Vec<ContainerStatus> = self.slots.iter().filter(|s| s.init).map(|s| self.container_status(s)).collect();
        let containers: Vec<ContainerStatus> = self
            .slots
            .iter()
            .filter(|s| !s.init && !s.ephemeral)
            .map(|s| self.container_status(s))
            .collect();
        let mut status = status::pod_status(&self.view(&init, &containers));
        let ephemeral: Vec<_> = self
            .slots
            .iter()
            .filter(|s| s.ephemeral)
            .map(|s| self.container_status(s).to_json())
            .collect();
        if !ephemeral.is_empty() {
            status["ephemeralContainerStatuses"] = json!(ephemeral);
        }
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
