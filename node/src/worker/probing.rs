//! Probes of a running container (startup, then liveness and readiness) and what their
//! verdicts do: a failed startup or liveness probe stops the container for the restart policy.

use capstan_api::event::EventType;
use tokio::time::Instant;

use super::Worker;
use super::slot::Wake;

impl Worker {
    /// Runs the probes that are due; acts on a verdict.
    pub(super) async fn run_probes(&mut self, i: usize, now: Instant) -> Wake {
        let mut wake = Wake::NONE;
        let Some(id) = self.slots[i].current.as_ref().map(|c| c.id.clone()) else {
            return wake;
        };
        let ip = self.pod_ip.clone().unwrap_or_default();
        let runtime = self.env.runtime.clone();
        let field = self.slots[i].field();
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
                            return wake;
                        }
                        None => {}
                    }
                }
                wake = wake.min(Wake::at(p.next_at()));
                self.slots[i].startup = Some(p);
            } else {
                self.slots[i].started = true;
            }
            if !self.slots[i].started {
                return wake;
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
                    return wake;
                }
            }
            wake = wake.min(Wake::at(p.next_at()));
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
                wake = wake.min(Wake::at(p.next_at()));
                self.slots[i].readiness = Some(p);
            }
            None => self.slots[i].ready = true,
        }
        wake
    }

    /// Stops a container the probes gave up on; the restart policy takes it from there.
    async fn kill(&mut self, i: usize, why: &str) {
        let Some(c) = self.slots[i].current.clone() else { return };
        let name = self.slots[i].name.clone();
        self.event(
            EventType::Normal,
            "Killing",
            format!("Container {name} {why}, will be restarted"),
            Some(&self.slots[i].field()),
        );
        self.stop_container(&self.slots[i].spec.clone(), &c.id, self.grace()).await;
        if let Ok(info) = self.env.runtime.inspect(&c.id).await {
            self.slots[i].current = Some(info);
        }
        self.slots[i].ready = false;
    }
}
