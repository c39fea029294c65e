//! The Node object: registration with capacity, addresses and system facts read from the host,
//! then the heartbeat — the Lease renewed every interval, and the status (conditions from
//! memory and disk pressure) written when it changes and at least once a minute.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::client::{ApiClient, ApiError, path};

/// Facts about the host the Node reports.
#[derive(Clone, Debug)]
pub struct HostFacts {
    pub cpus: String,
    pub memory_bytes: u64,
    pub storage_bytes: u64,
    pub kernel: String,
    pub os_image: String,
    pub machine_id: String,
    pub boot_id: String,
    pub architecture: String,
}

fn read_trimmed(p: &str) -> String {
    std::fs::read_to_string(p).map(|s| s.trim().to_owned()).unwrap_or_default()
}

/// A `/proc/meminfo` field in bytes.
fn meminfo(field: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))?;
    line.split_whitespace().nth(1)?.parse::<u64>().ok().map(|kb| kb * 1024)
}

/// (total, available) bytes of the file system holding `dir`.
fn disk(dir: &Path) -> Option<(u64, u64)> {
    let s = rustix::fs::statvfs(dir).ok()?;
    Some((s.f_blocks * s.f_frsize, s.f_bavail * s.f_frsize))
}

impl HostFacts {
    pub fn read(data_dir: &Path) -> HostFacts {
        let os_image = std::fs::read_to_string("/etc/os-release")
            .ok()
            .and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("PRETTY_NAME=").map(|v| v.trim_matches('"').to_owned()))
            })
            .unwrap_or_else(|| "Linux".into());
        HostFacts {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()).to_string(),
            memory_bytes: meminfo("MemTotal").unwrap_or(0),
            storage_bytes: disk(data_dir).map_or(0, |d| d.0),
            kernel: read_trimmed("/proc/sys/kernel/osrelease"),
            os_image,
            machine_id: read_trimmed("/etc/machine-id"),
            boot_id: read_trimmed("/proc/sys/kernel/random/boot_id"),
            architecture: match std::env::consts::ARCH {
                "x86_64" => "amd64".into(),
                "aarch64" => "arm64".into(),
                other => other.into(),
            },
        }
    }
}

/// How the Node registers.
#[derive(Clone, Debug)]
pub struct Registration {
    pub name: String,
    pub ip: String,
    pub port: u16,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Value>,
    pub cpus: Option<String>,
    pub memory: Option<String>,
    pub max_pods: u32,
    pub runtime_version: String,
    /// Where the agent keeps its files (disk pressure is measured there).
    pub data_dir: std::path::PathBuf,
    /// Where provisioned volumes live (published on the Node for the provisioner).
    pub volume_dir: std::path::PathBuf,
}

/// The Node object as first registered.
pub fn node_object(r: &Registration, host: &HostFacts) -> Value {
    let mut labels = BTreeMap::from([
        ("kubernetes.io/hostname".to_owned(), r.name.clone()),
        ("kubernetes.io/os".to_owned(), "linux".to_owned()),
        ("kubernetes.io/arch".to_owned(), host.architecture.clone()),
        ("beta.kubernetes.io/os".to_owned(), "linux".to_owned()),
        ("beta.kubernetes.io/arch".to_owned(), host.architecture.clone()),
    ]);
    labels.extend(r.labels.clone());
    let capacity = json!({
        "cpu": r.cpus.clone().unwrap_or_else(|| host.cpus.clone()),
        "memory": r.memory.clone().unwrap_or_else(|| format!("{}Ki", host.memory_bytes / 1024)),
        "pods": r.max_pods.to_string(),
        "ephemeral-storage": format!("{}Ki", host.storage_bytes / 1024),
    });
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": r.name, "labels": labels,
            "annotations": {capstan_api::storage::NODE_VOLUME_DIR_ANNOTATION: r.volume_dir.display().to_string()}},
        "spec": if r.taints.is_empty() { json!({}) } else { json!({"taints": r.taints}) },
        "status": {
            "capacity": capacity,
            "allocatable": capacity,
            "addresses": [{"type": "InternalIP", "address": r.ip}, {"type": "Hostname", "address": r.name}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": r.port}},
            "nodeInfo": {
                "machineID": host.machine_id, "systemUUID": host.machine_id, "bootID": host.boot_id,
                "kernelVersion": host.kernel, "osImage": host.os_image,
                "containerRuntimeVersion": format!("docker://{}", r.runtime_version),
                "kubeletVersion": "v1.33.0-capstan", "kubeProxyVersion": "v1.33.0-capstan",
                "operatingSystem": "linux", "architecture": host.architecture,
            },
        },
    })
}

/// Creates the Node, or brings an existing one's labels and status up to date (a restarted
/// agent keeps its Node, its pod range and the taints the cluster put on it).
pub async fn register(api: &ApiClient, r: &Registration, host: &HostFacts) -> Result<Value, ApiError> {
    let node = node_object(r, host);
    let at = format!("/api/v1/nodes/{}", r.name);
    let current = match api.get(&at).await? {
        Some(c) => c,
        None => match api.create("/api/v1/nodes", &node).await {
            Ok(c) => c,
            Err(e) if e.code == 409 => api.get(&at).await?.unwrap_or_default(),
            Err(e) => return Err(e),
        },
    };
    let dir = capstan_api::storage::NODE_VOLUME_DIR_ANNOTATION;
    if current["metadata"]["labels"] != node["metadata"]["labels"]
        || current["metadata"]["annotations"][dir] != node["metadata"]["annotations"][dir]
    {
        let patch = json!({"metadata": {"labels": node["metadata"]["labels"], "annotations": {dir: node["metadata"]["annotations"][dir]}}});
        api.merge_patch(&at, &patch).await?;
    }
    let mut status = node["status"].clone();
    status["conditions"] = Value::Array(conditions(&current["status"], &Pressure::read(&r.data_dir), &now()));
    api.merge_patch(&format!("{at}/status"), &json!({"status": status})).await
}

use capstan_api::time::now_rfc3339 as now;

/// Memory and disk pressure, with the kubelet's default hard eviction thresholds
/// (memory.available < 100Mi, nodefs.available < 10%).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pressure {
    pub memory: bool,
    pub disk: bool,
    /// The container runtime does not answer: the node is not Ready, as the kubelet reports it.
    pub runtime_down: bool,
}

impl Pressure {
    pub fn read(dir: &Path) -> Pressure {
        let memory = meminfo("MemAvailable").is_some_and(|a| a < 100 * 1024 * 1024);
        let disk = disk(dir).is_some_and(|(total, avail)| total > 0 && avail * 10 < total);
        Pressure {
            memory,
            disk,
            runtime_down: false,
        }
    }
}

/// The Node's conditions; transition times kept while a condition holds.
pub fn conditions(previous: &Value, p: &Pressure, now: &str) -> Vec<Value> {
    let c = |ty: &str, bad: bool, reason_ok: &str, reason_bad: &str, msg_ok: &str, msg_bad: &str, status_when_bad: &str| {
        let status = if bad {
            status_when_bad
        } else if status_when_bad == "True" {
            "False"
        } else {
            "True"
        };
        let prev = previous["conditions"].as_array().and_then(|cs| cs.iter().find(|c| c["type"] == ty));
        let transition = match prev {
            Some(p) if p["status"] == status => p["lastTransitionTime"].clone(),
            _ => json!(now),
        };
        json!({"type": ty, "status": status, "reason": if bad { reason_bad } else { reason_ok }, "message": if bad { msg_bad } else { msg_ok },
               "lastHeartbeatTime": now, "lastTransitionTime": transition})
    };
    vec![
        c(
            "MemoryPressure",
            p.memory,
            "KubeletHasSufficientMemory",
            "KubeletHasInsufficientMemory",
            "node agent has sufficient memory available",
            "node agent has insufficient memory available",
            "True",
        ),
        c(
            "DiskPressure",
            p.disk,
            "KubeletHasNoDiskPressure",
            "KubeletHasDiskPressure",
            "node agent has no disk pressure",
            "node agent has disk pressure",
            "True",
        ),
        c(
            "PIDPressure",
            false,
            "KubeletHasSufficientPID",
            "KubeletHasInsufficientPID",
            "node agent has sufficient PID available",
            "",
            "True",
        ),
        c(
            "Ready",
            p.runtime_down,
            "KubeletReady",
            "KubeletNotReady",
            "capstan node agent is posting ready status",
            "container runtime is down: the Docker Engine does not answer",
            "False",
        ),
    ]
}

/// The Lease annotation holding the revision this host's proxy has synced.
pub const PROXY_SYNCED: &str = "capstan.dev/proxy-synced-revision";

/// Publishes each revision the proxy has synced on the node's Lease, where stopping pods on
/// every node read it (see `worker::wait_until_unreachable`).
pub async fn publish_proxy_sync(api: ApiClient, name: String, mut synced: tokio::sync::watch::Receiver<u64>, stop: CancellationToken) {
    let lease_path = path("leases", "kube-node-lease", &name);
    let mut published = 0;
    let mut retry = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            changed = synced.changed() => if changed.is_err() { return },
            _ = retry.tick() => {}
        }
        let revision = *synced.borrow_and_update();
        if revision == published {
            continue;
        }
        let patch = json!({"metadata": {"annotations": {PROXY_SYNCED: revision.to_string()}}});
        match api.merge_patch(&lease_path, &patch).await {
            Ok(_) => published = revision,
            Err(e) if e.code == 404 => {} // the heartbeat has not made the Lease yet
            Err(e) => tracing::debug!(node = %name, error = %e, "publishing the proxy's revision failed"),
        }
    }
}

/// Renews the Lease every `interval` and rewrites the status when the conditions change or a
/// minute has passed, until `stop`.
pub async fn heartbeat(
    api: ApiClient,
    runtime: std::sync::Arc<dyn capstan_containers::Runtime>,
    name: String,
    data_dir: std::path::PathBuf,
    interval: Duration,
    stop: CancellationToken,
) {
    let lease_path = path("leases", "kube-node-lease", &name);
    let node_status = format!("/api/v1/nodes/{name}/status");
    let mut last: Option<(Pressure, tokio::time::Instant)> = None;
    let mut tick = tokio::time::interval(interval);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let renew = capstan_api::time::now_micro();
        let renewed = match api
            .merge_patch(&lease_path, &json!({"spec": {"renewTime": renew, "holderIdentity": name}}))
            .await
        {
            Err(e) if e.code == 404 => {
                let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": name, "namespace": "kube-node-lease"},
                                   "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": renew}});
                api.create("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases", &lease)
                    .await
                    .map(|_| ())
            }
            other => other.map(|_| ()),
        };
        if let Err(e) = renewed {
            tracing::warn!(node = %name, error = %e, "renewing the node lease failed");
            // Cut off for long enough, the node controller marks the node Unknown: the
            // conditions are written again once the API answers, changed here or not.
            last = None;
            continue;
        }
        let mut pressure = Pressure::read(&data_dir);
        pressure.runtime_down = runtime.version().await.is_err();
        let due = last.is_none_or(|(p, at)| p != pressure || at.elapsed() >= Duration::from_secs(60));
        if !due {
            continue;
        }
        let Ok(Some(current)) = api.get(&format!("/api/v1/nodes/{name}")).await else {
            continue;
        };
        let conds = conditions(&current["status"], &pressure, &now());
        match api.merge_patch(&node_status, &json!({"status": {"conditions": conds}})).await {
            Ok(_) => last = Some((pressure, tokio::time::Instant::now())),
            Err(e) => tracing::warn!(node = %name, error = %e, "updating the node status failed"),
        }
    }
}

/// Posts a Warning Event about the node itself (best effort).
pub async fn node_event(api: &ApiClient, node: &str, reason: &str, message: &str) {
    let involved = json!({"kind": "Node", "apiVersion": "v1", "metadata": {"name": node, "uid": node}});
    let source = capstan_api::event::Source {
        component: "kubelet".into(),
        host: Some(node.to_owned()),
    };
    let report = capstan_api::event::Report {
        involved: &involved,
        field_path: None,
        kind: capstan_api::event::EventType::Warning,
        reason,
        message,
    };
    let event = source.event(&report, &capstan_api::time::now_rfc3339());
    if let Err(e) = api.create("/api/v1/namespaces/default/events", &event).await {
        tracing::warn!(node, error = %e, "posting an event about the node failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_node_reports_capacity_and_conditions() {
        let host = HostFacts {
            cpus: "2".into(),
            memory_bytes: 8 << 30,
            storage_bytes: 100 << 30,
            kernel: "6.1".into(),
            os_image: "Debian".into(),
            machine_id: "m".into(),
            boot_id: "b".into(),
            architecture: "amd64".into(),
        };
        let r = Registration {
            name: "n1".into(),
            ip: "127.0.0.1".into(),
            port: 10250,
            labels: BTreeMap::from([("zone".into(), "a".into())]),
            taints: vec![],
            cpus: Some("4".into()),
            memory: None,
            max_pods: 110,
            runtime_version: "20.10".into(),
            data_dir: "/".into(),
            volume_dir: "/var/lib/volumes".into(),
        };
        let n = node_object(&r, &host);
        assert_eq!(n["status"]["capacity"]["cpu"], "4");
        assert_eq!(n["status"]["capacity"]["memory"], "8388608Ki");
        assert_eq!(n["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"], 10250);
        assert_eq!(n["metadata"]["labels"]["zone"], "a");
        let ok = Pressure {
            memory: false,
            disk: false,
            runtime_down: false,
        };
        let first = conditions(&json!({}), &ok, "t1");
        let ready = first.iter().find(|c| c["type"] == "Ready").unwrap();
        assert_eq!(
            (ready["status"].as_str(), ready["lastTransitionTime"].as_str()),
            (Some("True"), Some("t1"))
        );
        let pressed = Pressure { memory: true, ..ok };
        let again = conditions(&json!({"conditions": first}), &pressed, "t2");
        let mem = again.iter().find(|c| c["type"] == "MemoryPressure").unwrap();
        assert_eq!(
            (mem["status"].as_str(), mem["lastTransitionTime"].as_str()),
            (Some("True"), Some("t2"))
        );
        let ready = again.iter().find(|c| c["type"] == "Ready").unwrap();
        assert_eq!(ready["lastTransitionTime"], "t1");
        let down = conditions(&json!({"conditions": again}), &Pressure { runtime_down: true, ..ok }, "t3");
        let ready = down.iter().find(|c| c["type"] == "Ready").unwrap();
        assert_eq!(
            (
                ready["status"].as_str(),
                ready["reason"].as_str(),
                ready["lastTransitionTime"].as_str()
            ),
            (Some("False"), Some("KubeletNotReady"), Some("t3"))
        );
        assert!(ready["message"].as_str().unwrap().starts_with("container runtime is down"));
    }
}
