//! Pod status, as a pure function of what the worker knows about each container: phase,
//! conditions (Initialized, ContainersReady, Ready, and PodScheduled kept), IPs, start time and
//! container statuses in the shape kubectl prints.

use serde_json::{Value, json};

/// A terminated container, for `state` and `lastState`.
#[derive(Clone, Debug, PartialEq)]
pub struct Terminated {
    pub exit_code: i64,
    pub reason: String,
    pub message: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub container_id: String,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ContainerState {
    Waiting { reason: String, message: String },
    Running { started_at: String },
    Terminated(Terminated),
}

/// What the worker knows about one container.
#[derive(Clone, Debug, PartialEq)]
pub struct ContainerStatus {
    pub name: String,
    pub image: String,
    pub image_id: String,
    pub container_id: Option<String>,
    pub restart_count: u32,
    pub state: ContainerState,
    pub last: Option<Terminated>,
    pub ready: bool,
    pub started: bool,
}

fn terminated_json(t: &Terminated) -> Value {
    let mut v = json!({"exitCode": t.exit_code, "reason": t.reason, "containerID": format!("docker://{}", t.container_id)});
    if !t.message.is_empty() {
        v["message"] = json!(t.message);
    }
    if let Some(s) = &t.started_at {
        v["startedAt"] = json!(s);
    }
    if let Some(f) = &t.finished_at {
        v["finishedAt"] = json!(f);
    }
    v
}

impl ContainerStatus {
    pub fn to_json(&self) -> Value {
        let state = match &self.state {
            ContainerState::Waiting { reason, message } => {
                let mut w = json!({"reason": reason});
                if !message.is_empty() {
                    w["message"] = json!(message);
                }
                json!({"waiting": w})
            }
            ContainerState::Running { started_at } => json!({"running": {"startedAt": started_at}}),
            ContainerState::Terminated(t) => json!({"terminated": terminated_json(t)}),
        };
        let mut v = json!({
            "name": self.name,
            "image": self.image,
            "imageID": self.image_id,
            "restartCount": self.restart_count,
            "ready": self.ready,
            "started": self.started,
            "state": state,
            "lastState": self.last.as_ref().map_or(json!({}), |t| json!({"terminated": terminated_json(t)})),
        });
        if let Some(id) = &self.container_id {
            v["containerID"] = json!(format!("docker://{id}"));
        }
        v
    }
}

/// The inputs of a pod's status.
#[derive(Debug)]
pub struct PodView<'a> {
    pub pod: &'a Value,
    pub init: &'a [ContainerStatus],
    pub containers: &'a [ContainerStatus],
    /// Whether every init container has completed.
    pub initialized: bool,
    /// Set when the pod can never run (an init container failed with restartPolicy Never).
    pub failed: Option<(String, String)>,
    pub pod_ip: Option<String>,
    pub host_ip: String,
    pub start_time: String,
    pub now: String,
}

fn condition(previous: &Value, ty: &str, ok: bool, reason: Option<&str>, now: &str) -> Value {
    let status = if ok { "True" } else { "False" };
    let prev = previous["conditions"].as_array().and_then(|c| c.iter().find(|c| c["type"] == ty));
    let transition = match prev {
        Some(p) if p["status"] == status => p["lastTransitionTime"].clone(),
        _ => json!(now),
    };
    let mut c = json!({"type": ty, "status": status, "lastProbeTime": null, "lastTransitionTime": transition});
    if let Some(r) = reason.filter(|_| !ok) {
        c["reason"] = json!(r);
    }
    c
}

/// The pod's phase: Kubernetes' rules over its containers and restart policy.
pub fn phase(view: &PodView<'_>) -> &'static str {
    if view.failed.is_some() {
        return "Failed";
    }
    let policy = view.pod["spec"]["restartPolicy"].as_str().unwrap_or("Always");
    let cs = view.containers;
    if !view.initialized || cs.is_empty() {
        return "Pending";
    }
    let waiting_first = cs
        .iter()
        .any(|c| matches!(c.state, ContainerState::Waiting { .. }) && c.last.is_none() && c.restart_count == 0);
    if waiting_first {
        return "Pending";
    }
    let all_terminated = cs.iter().all(|c| matches!(c.state, ContainerState::Terminated(_)));
    if all_terminated {
        let failed = cs
            .iter()
            .any(|c| matches!(&c.state, ContainerState::Terminated(t) if t.exit_code != 0));
        return match (policy, failed) {
            ("Always", _) => "Running",
            ("OnFailure", true) => "Running",
            (_, true) => "Failed",
            (_, false) => "Succeeded",
        };
    }
    "Running"
}

/// The complete `status` of the pod.
pub fn pod_status(view: &PodView<'_>) -> Value {
    let previous = &view.pod["status"];
    let phase = phase(view);
    let containers_ready = !view.containers.is_empty() && view.containers.iter().all(|c| c.ready);
    let mut conditions = vec![
        condition(
            previous,
            "Initialized",
            view.initialized,
            Some("ContainersNotInitialized"),
            &view.now,
        ),
        condition(
            previous,
            "Ready",
            containers_ready && phase == "Running",
            Some("ContainersNotReady"),
            &view.now,
        ),
        condition(previous, "ContainersReady", containers_ready, Some("ContainersNotReady"), &view.now),
    ];
    if let Some(s) = previous["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "PodScheduled"))
    {
        conditions.push(s.clone());
    } else {
        conditions.push(condition(previous, "PodScheduled", true, None, &view.now));
    }
    let mut status = json!({
        "phase": phase,
        "conditions": conditions,
        "hostIP": view.host_ip,
        "hostIPs": [{"ip": view.host_ip}],
        "startTime": view.start_time,
        "containerStatuses": view.containers.iter().map(ContainerStatus::to_json).collect::<Vec<_>>(),
        "qosClass": qos_class(view.pod),
    });
    if !view.init.is_empty() {
        status["initContainerStatuses"] = Value::Array(view.init.iter().map(ContainerStatus::to_json).collect());
    }
    if let Some(ip) = &view.pod_ip {
        status["podIP"] = json!(ip);
        status["podIPs"] = json!([{"ip": ip}]);
    }
    if let Some((reason, message)) = &view.failed {
        status["reason"] = json!(reason);
        status["message"] = json!(message);
    }
    status
}

/// Guaranteed, Burstable or BestEffort, from requests and limits.
pub fn qos_class(pod: &Value) -> &'static str {
    let cs: Vec<&Value> = pod["spec"]["containers"].as_array().map(|a| a.iter().collect()).unwrap_or_default();
    let has = |c: &Value, section: &str| c["resources"][section].as_object().is_some_and(|m| !m.is_empty());
    if cs.iter().all(|c| !has(c, "requests") && !has(c, "limits")) {
        return "BestEffort";
    }
    let guaranteed = cs.iter().all(|c| {
        let l = &c["resources"]["limits"];
        let r = &c["resources"]["requests"];
        ["cpu", "memory"]
            .iter()
            .all(|k| !l[k].is_null() && (r[k].is_null() || r[k] == l[k]))
    });
    if guaranteed { "Guaranteed" } else { "Burstable" }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cs(state: ContainerState, ready: bool, restarts: u32) -> ContainerStatus {
        ContainerStatus {
            name: "c".into(),
            image: "i".into(),
            image_id: "sha".into(),
            container_id: Some("abc".into()),
            restart_count: restarts,
            state,
            last: None,
            ready,
            started: true,
        }
    }

    fn view<'a>(pod: &'a Value, containers: &'a [ContainerStatus]) -> PodView<'a> {
        PodView {
            pod,
            init: &[],
            containers,
            initialized: true,
            failed: None,
            pod_ip: Some("10.244.0.2".into()),
            host_ip: "127.0.0.1".into(),
            start_time: "t".into(),
            now: "t".into(),
        }
    }

    #[test]
    fn phases_follow_the_restart_policy() {
        let done = |code| {
            ContainerState::Terminated(Terminated {
                exit_code: code,
                reason: "Completed".into(),
                message: String::new(),
                started_at: None,
                finished_at: None,
                container_id: "abc".into(),
            })
        };
        let never = json!({"spec": {"restartPolicy": "Never"}});
        assert_eq!(phase(&view(&never, &[cs(done(0), false, 0)])), "Succeeded");
        assert_eq!(phase(&view(&never, &[cs(done(1), false, 0)])), "Failed");
        let on_failure = json!({"spec": {"restartPolicy": "OnFailure"}});
        assert_eq!(phase(&view(&on_failure, &[cs(done(0), false, 0)])), "Succeeded");
        let always = json!({"spec": {}});
        assert_eq!(
            phase(&view(
                &always,
                &[cs(
                    ContainerState::Waiting {
                        reason: "ContainerCreating".into(),
                        message: String::new()
                    },
                    false,
                    0
                )]
            )),
            "Pending"
        );
        assert_eq!(
            phase(&view(&always, &[cs(ContainerState::Running { started_at: "t".into() }, true, 0)])),
            "Running"
        );
        let crash = ContainerState::Waiting {
            reason: "CrashLoopBackOff".into(),
            message: String::new(),
        };
        assert_eq!(phase(&view(&always, &[cs(crash, false, 3)])), "Running");
    }

    #[test]
    fn conditions_and_statuses() {
        let pod = json!({"spec": {"containers": [{"resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]}, "status": {"conditions": [{"type": "PodScheduled", "status": "True", "lastTransitionTime": "x"}]}});
        let s = pod_status(&view(&pod, &[cs(ContainerState::Running { started_at: "t".into() }, true, 0)]));
        assert_eq!(s["phase"], "Running");
        let ready = s["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Ready").unwrap();
        assert_eq!(ready["status"], "True");
        assert_eq!(s["containerStatuses"][0]["containerID"], "docker://abc");
        assert_eq!(s["qosClass"], "Guaranteed");
        assert_eq!(s["podIP"], "10.244.0.2");
        assert_eq!(qos_class(&json!({"spec": {"containers": [{}]}})), "BestEffort");
    }
}
