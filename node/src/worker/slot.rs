//! One container slot of a pod (a container or an init container) and its decisions, pure: what
//! an exit means under the restart policy, the crash-loop and image-pull back-offs, the waiting
//! reasons shown in the status, and when the worker should look again.

use std::time::Duration;

use capstan_containers::{ContainerInfo, PullPolicy, RuntimeError, State};
use serde_json::Value;
use tokio::time::Instant;

use crate::backoff::{Backoff, Streak};
use crate::probes::{Probe, ProbeState};
use crate::spec::LABEL_ATTEMPT;
use crate::status::Terminated;

/// When a worker should look again: the earliest time any part of it asked for, if any.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Wake(Option<Instant>);

impl Wake {
    pub const NONE: Wake = Wake(None);

    pub fn at(t: Instant) -> Wake {
        Wake(Some(t))
    }

    /// The earlier of the two.
    pub fn min(self, other: Wake) -> Wake {
        match (self.0, other.0) {
            (Some(a), Some(b)) => Wake(Some(a.min(b))),
            (a, b) => Wake(a.or(b)),
        }
    }

    /// The time asked for, or `fallback` when none was (and never later than it).
    pub fn or(self, fallback: Instant) -> Instant {
        self.0.map_or(fallback, |t| t.min(fallback))
    }
}

/// The pod's `restartPolicy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

impl RestartPolicy {
    pub fn parse(policy: Option<&str>) -> RestartPolicy {
        match policy {
            Some("Never") => RestartPolicy::Never,
            Some("OnFailure") => RestartPolicy::OnFailure,
            _ => RestartPolicy::Always,
        }
    }

    /// Whether a container that exited with `code` runs again. Init containers that failed
    /// are retried under `Always` too (Kubernetes treats it as OnFailure for them).
    pub fn restarts(self, init: bool, code: i64) -> bool {
        match self {
            RestartPolicy::Never => false,
            RestartPolicy::OnFailure => code != 0,
            RestartPolicy::Always => !init || code != 0,
        }
    }
}

/// What follows a container's exit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AfterExit {
    /// An init container completed: the next one may run.
    Completed,
    /// It will not run again; for an init container, the pod has failed (the message says why).
    Finished { pod_failed: Option<String> },
    /// Make the next attempt now.
    Restart,
    /// Make the next attempt when the crash-loop back-off ends; `first` when the wait is new
    /// (the worker reports it once, with an Event).
    BackOff { until: Instant, wait: Duration, first: bool },
}

/// A waiting container's reason and message, as its status shows them.
pub type Waiting = (String, String);

/// One container of the pod (or init container, or ephemeral container).
#[derive(Debug)]
pub struct Slot {
    pub name: String,
    pub init: bool,
    /// An ephemeral container (`kubectl debug`): run once, never restarted, outside the pod's
    /// phase and readiness.
    pub ephemeral: bool,
    pub spec: Value,
    /// Containers made so far beyond the first: Kubernetes' restartCount.
    pub restarts: u32,
    /// Whether a container has been made for this slot at all.
    pub made: bool,
    pub current: Option<ContainerInfo>,
    /// The container that exited before the current one (for `logs --previous`).
    pub previous: Option<String>,
    pub last: Option<Terminated>,
    /// The container whose exit has been handled (the back-off started for it).
    pub handled: Option<String>,
    pub waiting: Option<Waiting>,
    pub crash: Streak,
    pub pull: Streak,
    pub pull_error: String,
    pub startup: Option<ProbeState>,
    pub liveness: Option<ProbeState>,
    pub readiness: Option<ProbeState>,
    pub started: bool,
    pub ready: bool,
    /// An init container that completed, or a container that will not run again.
    pub done: bool,
    /// A container made while the sandbox started, not started yet: (id, attempt).
    pub pending: Option<(String, u32)>,
}

impl Slot {
    pub fn new(spec: &Value, init: bool) -> Slot {
        Slot {
            name: spec["name"].as_str().unwrap_or_default().to_owned(),
            init,
            ephemeral: false,
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

    pub fn ephemeral(spec: &Value) -> Slot {
        Slot {
            ephemeral: true,
            ..Slot::new(spec, false)
        }
    }

    pub fn running(&self) -> bool {
        self.current.as_ref().is_some_and(|c| c.state == State::Running)
    }

    /// `spec.containers{name}` (or initContainers, ephemeralContainers), the field events name.
    pub fn field(&self) -> String {
        let list = match (self.init, self.ephemeral) {
            (true, _) => "initContainers",
            (_, true) => "ephemeralContainers",
            _ => "containers",
        };
        format!("spec.{list}{{{}}}", self.name)
    }

    pub fn image(&self) -> &str {
        self.spec["image"].as_str().unwrap_or_default()
    }

    /// The attempt number of the next container made for the slot.
    pub fn next_attempt(&self) -> u32 {
        if self.made { self.restarts + 1 } else { 0 }
    }

    pub fn arm_probes(&mut self, now: Instant) {
        let parse = |k: &str| Probe::parse(&self.spec[k], &self.spec).map(|p| ProbeState::new(p, now));
        // Startup and readiness look again soon while a fresh container is not up yet.
        self.startup = parse("startupProbe").map(ProbeState::eager);
        self.liveness = parse("livenessProbe");
        self.readiness = parse("readinessProbe").map(ProbeState::eager);
        self.started = self.startup.is_none();
        self.ready = false;
    }

    /// The slot's container `info` has exited: records it and says what follows.
    pub fn exited(&mut self, info: &ContainerInfo, policy: RestartPolicy, curve: &Backoff, now: Instant) -> AfterExit {
        let fresh = self.handled.as_deref() != Some(info.id.as_str());
        self.started = false;
        self.ready = false;
        if self.init && info.exit_code == 0 {
            self.done = true;
            self.handled = Some(info.id.clone());
            return AfterExit::Completed;
        }
        if !policy.restarts(self.init, info.exit_code) {
            self.done = true;
            self.handled = Some(info.id.clone());
            let pod_failed = self
                .init
                .then(|| format!("init container {:?} failed with exit code {}", self.name, info.exit_code));
            return AfterExit::Finished { pod_failed };
        }
        if fresh {
            self.handled = Some(info.id.clone());
            let ran = seconds_between(info.started_at.as_deref(), info.finished_at.as_deref());
            self.crash.crashed(curve, ran, now);
            self.last = Some(terminated(info));
        }
        if self.crash.ready(now) {
            return AfterExit::Restart;
        }
        let first = self.waiting.as_ref().is_none_or(|w| w.0 != "CrashLoopBackOff");
        AfterExit::BackOff {
            until: self.crash.until().unwrap_or(now),
            wait: self.crash.current(),
            first,
        }
    }

    /// Whether the image may be pulled now; while its back-off lasts the slot waits with
    /// ImagePullBackOff until the returned time.
    pub fn pull_allowed(&mut self, now: Instant) -> Result<(), Wake> {
        if self.pull.ready(now) {
            return Ok(());
        }
        let image = self.image().to_owned();
        self.waiting = Some((
            "ImagePullBackOff".into(),
            format!("Back-off pulling image \"{image}\": {}", self.pull_error),
        ));
        Err(self.pull.until().map_or(Wake::NONE, Wake::at))
    }

    /// A pull failed: the slot waits with ErrImagePull (ErrImageNeverPull when the policy
    /// forbids pulls) and looks again mid-way through the back-off, to report it.
    pub fn pull_failed(&mut self, e: &RuntimeError, policy: PullPolicy, curve: &Backoff, now: Instant) -> Wake {
        let until = self.pull.failed(curve, Duration::ZERO, now);
        let message = e.to_string();
        self.pull_error = message.clone();
        let reason = if matches!(e, RuntimeError::Image(_)) && policy == PullPolicy::Never {
            "ErrImageNeverPull"
        } else {
            "ErrImagePull"
        };
        self.waiting = Some((reason.into(), message));
        Wake::at(now + (until - now) / 2)
    }

    /// Making or starting a container failed: RunContainerError, with the crash-loop back-off.
    pub fn run_failed(&mut self, e: &RuntimeError, curve: &Backoff, now: Instant) -> Wake {
        self.waiting = Some(("RunContainerError".into(), e.to_string()));
        self.crash.failed(curve, Duration::ZERO, now);
        self.crash.until().map_or(Wake::NONE, Wake::at)
    }

    /// A new attempt runs: it becomes the current container, the one before it the previous
    /// (for `--previous`); returns the container that is no longer kept, and the probes' wake.
    pub fn started_attempt(&mut self, info: ContainerInfo, attempt: u32, now: Instant) -> (Option<String>, Wake) {
        let mut dropped = None;
        if let Some(old) = self.current.take() {
            dropped = self.previous.replace(old.id);
        }
        self.restarts = attempt;
        self.made = true;
        self.waiting = None;
        self.arm_probes(now);
        self.current = Some(info);
        let wake = [&self.startup, &self.liveness, &self.readiness]
            .into_iter()
            .flatten()
            .fold(Wake::NONE, |w, p| w.min(Wake::at(p.next_at())));
        (dropped, wake)
    }
}

/// How a container ended, as its status shows it.
pub fn terminated(info: &ContainerInfo) -> Terminated {
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

/// The attempt number a container carries in its labels.
pub fn attempt(c: &ContainerInfo) -> u32 {
    c.labels.get(LABEL_ATTEMPT).and_then(|a| a.parse().ok()).unwrap_or(0)
}

/// `20s`, `5m0s`, `150ms`: durations as the kubelet prints them.
pub fn human(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{}s", ms / 1000)
    } else {
        format!("{}m{}s", ms / 60_000, (ms % 60_000) / 1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::HashMap;

    fn exited(id: &str, code: i64, ran: u64) -> ContainerInfo {
        let at = |s: u64| format!("2026-12-02T06:{:02}:{:02}Z", s / 60, s % 60);
        ContainerInfo {
            id: id.into(),
            name: id.into(),
            labels: HashMap::new(),
            state: State::Exited,
            exit_code: code,
            oom_killed: false,
            error: String::new(),
            started_at: Some(at(0)),
            finished_at: Some(at(ran)),
            image_id: String::new(),
            ip: None,
            pid: None,
        }
    }

    /// The action in a word and the wait it comes with, in seconds.
    fn word(a: &AfterExit, now: Instant) -> (&'static str, u64) {
        match a {
            AfterExit::Completed => ("completed", 0),
            AfterExit::Finished { pod_failed: None } => ("finished", 0),
            AfterExit::Finished { pod_failed: Some(_) } => ("pod-failed", 0),
            AfterExit::Restart => ("restart", 0),
            AfterExit::BackOff { until, .. } => ("back-off", (*until - now).as_secs()),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn restart_policy_exit_code_and_attempt_decide_the_next_action_and_wait() {
        use RestartPolicy::*;
        let curve = Backoff::default();
        // (policy, init, exit code, exits so far in the streak) -> (action, wait in seconds)
        let table: &[(RestartPolicy, bool, i64, u32, (&str, u64))] = &[
            (Always, false, 0, 0, ("restart", 0)),
            (Always, false, 1, 0, ("restart", 0)),
            (Always, false, 1, 1, ("back-off", 10)),
            (Always, false, 0, 2, ("back-off", 20)),
            (Always, false, 137, 3, ("back-off", 40)),
            (Always, false, 1, 9, ("back-off", 300)),
            (OnFailure, false, 0, 0, ("finished", 0)),
            (OnFailure, false, 2, 0, ("restart", 0)),
            (OnFailure, false, 2, 1, ("back-off", 10)),
            (Never, false, 0, 0, ("finished", 0)),
            (Never, false, 1, 3, ("finished", 0)),
            (Always, true, 0, 0, ("completed", 0)),
            (Always, true, 1, 0, ("restart", 0)),
            (Always, true, 1, 2, ("back-off", 20)),
            (OnFailure, true, 0, 0, ("completed", 0)),
            (OnFailure, true, 1, 1, ("back-off", 10)),
            (Never, true, 0, 0, ("completed", 0)),
            (Never, true, 1, 0, ("pod-failed", 0)),
        ];
        for &(policy, init, code, streak, want) in table {
            let mut slot = Slot::new(&json!({"name": "c", "image": "i"}), init);
            let now = Instant::now();
            for n in 0..streak {
                // Earlier exits, each after a one-second run.
                let _ = slot.exited(&exited(&format!("old{n}"), 1, 1), Always, &curve, now);
            }
            let got = slot.exited(&exited("last", code, 1), policy, &curve, now);
            assert_eq!(word(&got, now), want, "{policy:?} init={init} exit={code} after {streak} exits");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_handled_exit_is_not_counted_twice_and_a_long_run_starts_the_curve_over() {
        let curve = Backoff::default();
        let mut slot = Slot::new(&json!({"name": "c", "image": "i"}), false);
        let now = Instant::now();
        assert_eq!(
            slot.exited(&exited("a", 1, 1), RestartPolicy::Always, &curve, now),
            AfterExit::Restart
        );
        let b = exited("b", 1, 1);
        let first = slot.exited(&b, RestartPolicy::Always, &curve, now);
        assert!(matches!(first, AfterExit::BackOff { first: true, .. }), "{first:?}");
        slot.waiting = Some(("CrashLoopBackOff".into(), String::new()));
        // The worker looks again before the wait ends: the same exit, the same wait.
        let again = slot.exited(&b, RestartPolicy::Always, &curve, now + Duration::from_secs(5));
        assert_eq!(word(&again, now), ("back-off", 10));
        assert!(matches!(again, AfterExit::BackOff { first: false, .. }));
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(slot.exited(&b, RestartPolicy::Always, &curve, Instant::now()), AfterExit::Restart);
        // Ten minutes of running before the exit: restarted at once.
        let later = Instant::now();
        assert_eq!(
            slot.exited(&exited("c", 1, 600), RestartPolicy::Always, &curve, later),
            AfterExit::Restart
        );
        assert_eq!(slot.last.as_ref().map(|t| t.reason.as_str()), Some("Error"));
    }

    #[tokio::test(start_paused = true)]
    async fn pull_failures_wait_with_the_kubelets_reasons() {
        let curve = Backoff::default();
        let mut slot = Slot::new(&json!({"name": "c", "image": "web:1"}), false);
        let now = Instant::now();
        assert!(slot.pull_allowed(now).is_ok());
        let e = RuntimeError::Image("pull access denied".into());
        let wake = slot.pull_failed(&e, PullPolicy::IfNotPresent, &curve, now);
        assert_eq!(
            wake,
            Wake::at(now + Duration::from_secs(5)),
            "looks again mid-way to report the back-off"
        );
        assert_eq!(slot.waiting.as_ref().map(|w| w.0.as_str()), Some("ErrImagePull"));
        let wait = slot.pull_allowed(now + Duration::from_secs(5)).unwrap_err();
        assert_eq!(wait, Wake::at(now + Duration::from_secs(10)));
        let (reason, message) = slot.waiting.clone().unwrap();
        assert_eq!(reason, "ImagePullBackOff");
        assert_eq!(message, "Back-off pulling image \"web:1\": pull access denied");
        assert!(slot.pull_allowed(now + Duration::from_secs(10)).is_ok());
        slot.pull_failed(&e, PullPolicy::Never, &curve, now);
        assert_eq!(slot.waiting.as_ref().map(|w| w.0.as_str()), Some("ErrImageNeverPull"));
    }

    #[test]
    fn wakes_take_the_earliest() {
        let t = Instant::now();
        let later = t + Duration::from_secs(3);
        assert_eq!(Wake::NONE.min(Wake::at(later)).min(Wake::at(t)), Wake::at(t));
        assert_eq!(Wake::NONE.or(later), later);
        assert_eq!(Wake::at(later + Duration::from_secs(1)).or(later), later);
        assert_eq!(human(Duration::from_millis(150)), "150ms");
        assert_eq!(human(Duration::from_secs(300)), "5m0s");
    }
}
