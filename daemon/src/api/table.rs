//! Server-side printing: the `meta.k8s.io/v1` Table kubectl asks for on `get`, with the columns
//! the real kube-apiserver prints for each kind (`-o wide` columns at priority 1).

use capstan_api::KindInfo;
use serde_json::{Value, json};

/// How much of each object a Table row carries (`includeObject`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Include {
    None,
    Metadata,
    Object,
}

impl Include {
    pub fn parse(s: Option<&str>) -> Include {
        match s {
            Some("None") => Include::None,
            Some("Object") => Include::Object,
            _ => Include::Metadata,
        }
    }
}

/// kubectl's short human durations (`5s`, `3m2s`, `4h`, `12d`).
pub fn human_duration(secs: i64) -> String {
    if secs < 0 {
        return "<invalid>".into();
    }
    let (m, h, d) = (secs / 60, secs / 3600, secs / 86400);
    if secs < 120 {
        format!("{secs}s")
    } else if m < 10 {
        if secs % 60 == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{}s", secs % 60)
        }
    } else if m < 180 {
        format!("{m}m")
    } else if h < 8 {
        if m % 60 == 0 { format!("{h}h") } else { format!("{h}h{}m", m % 60) }
    } else if h < 48 {
        format!("{h}h")
    } else if h < 24 * 8 {
        if h % 24 == 0 { format!("{d}d") } else { format!("{d}d{}h", h % 24) }
    } else if d < 365 * 2 {
        format!("{d}d")
    } else if d < 365 * 8 {
        let y = d / 365;
        if d % 365 == 0 {
            format!("{y}y")
        } else {
            format!("{y}y{}d", d % 365)
        }
    } else {
        format!("{}y", d / 365)
    }
}

fn age(v: &Value, now: i64) -> String {
    let ts = v.as_str().and_then(|s| s.parse::<jiff::Timestamp>().ok());
    match ts {
        Some(t) => human_duration(now - t.as_second()),
        None => "<unknown>".into(),
    }
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn or_none(v: String) -> String {
    if v.is_empty() { "<none>".into() } else { v }
}

fn int(v: &Value) -> i64 {
    v.as_i64().unwrap_or(0)
}

fn col(name: &str, priority: u8) -> Value {
    let format = if name == "Name" { "name" } else { "" };
    json!({"name": name, "type": "string", "format": format, "description": "", "priority": priority})
}

/// A label selector (`matchLabels` and `matchExpressions`) as kubectl prints it.
fn selector_text(sel: &Value) -> String {
    or_none(selector_string(sel))
}

/// A label selector in the query syntax (`app=web,tier in (a,b)`; empty selects everything), as
/// Kubernetes writes one into a string field.
pub fn selector_string(sel: &Value) -> String {
    let mut parts: Vec<String> = sel["matchLabels"]
        .as_object()
        .map(|m| m.iter().map(|(k, v)| format!("{k}={}", s(v))).collect())
        .unwrap_or_default();
    for e in sel["matchExpressions"].as_array().into_iter().flatten() {
        let vals: Vec<String> = e["values"].as_array().map(|v| v.iter().map(s).collect()).unwrap_or_default();
        parts.push(match s(&e["operator"]).as_str() {
            "In" => format!("{} in ({})", s(&e["key"]), vals.join(",")),
            "NotIn" => format!("{} notin ({})", s(&e["key"]), vals.join(",")),
            "Exists" => s(&e["key"]),
            _ => format!("!{}", s(&e["key"])),
        });
    }
    parts.join(",")
}

fn list(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or_default()
}

fn containers_images(spec: &Value) -> (String, String) {
    let cs = list(&spec["containers"]);
    (
        cs.iter().map(|c| s(&c["name"])).collect::<Vec<_>>().join(","),
        cs.iter().map(|c| s(&c["image"])).collect::<Vec<_>>().join(","),
    )
}

/// A Job's status as kubectl 1.33 prints it.
fn job_status(o: &Value) -> String {
    let holds = |t: &str| {
        list(&o["status"]["conditions"])
            .iter()
            .any(|c| c["type"] == t && c["status"] == "True")
    };
    if holds("Complete") {
        "Complete"
    } else if holds("Failed") {
        "Failed"
    } else if holds("FailureTarget") {
        "FailureTarget"
    } else if holds("SuccessCriteriaMet") {
        "SuccessCriteriaMet"
    } else if holds("Suspended") {
        "Suspended"
    } else {
        "Running"
    }
    .to_owned()
}

/// How long a Job ran: from its start to its completion, or until now.
fn job_duration(o: &Value, now: i64) -> String {
    let start = capstan_api::time::seconds(&o["status"]["startTime"]);
    let end = capstan_api::time::seconds(&o["status"]["completionTime"]).unwrap_or(now);
    start.map_or_else(String::new, |s| human_duration(end - s))
}

/// The column definitions for a kind.
pub fn columns(kind: &KindInfo) -> Vec<Value> {
    let names: &[(&str, u8)] = match kind.kind {
        "Pod" => &[
            ("Name", 0),
            ("Ready", 0),
            ("Status", 0),
            ("Restarts", 0),
            ("Age", 0),
            ("IP", 1),
            ("Node", 1),
            ("Nominated Node", 1),
            ("Readiness Gates", 1),
        ],
        "Deployment" => &[
            ("Name", 0),
            ("Ready", 0),
            ("Up-to-date", 0),
            ("Available", 0),
            ("Age", 0),
            ("Containers", 1),
            ("Images", 1),
            ("Selector", 1),
        ],
        "ReplicaSet" => &[
            ("Name", 0),
            ("Desired", 0),
            ("Current", 0),
            ("Ready", 0),
            ("Age", 0),
            ("Containers", 1),
            ("Images", 1),
            ("Selector", 1),
        ],
        "Ingress" => &[("Name", 0), ("Class", 0), ("Hosts", 0), ("Address", 0), ("Ports", 0), ("Age", 0)],
        "IngressClass" => &[("Name", 0), ("Controller", 0), ("Parameters", 0), ("Age", 0)],
        "NetworkPolicy" => &[("Name", 0), ("Pod-Selector", 0), ("Age", 0)],
        "GatewayClass" => &[("Name", 0), ("Controller", 0), ("Accepted", 0), ("Age", 0)],
        "Gateway" => &[("Name", 0), ("Class", 0), ("Address", 0), ("Programmed", 0), ("Age", 0)],
        "HTTPRoute" => &[("Name", 0), ("Hostnames", 0), ("Age", 0)],
        "PodDisruptionBudget" => &[
            ("Name", 0),
            ("Min Available", 0),
            ("Max Unavailable", 0),
            ("Allowed Disruptions", 0),
            ("Age", 0),
        ],
        "DaemonSet" => &[
            ("Name", 0),
            ("Desired", 0),
            ("Current", 0),
            ("Ready", 0),
            ("Up-to-date", 0),
            ("Available", 0),
            ("Node Selector", 0),
            ("Age", 0),
            ("Containers", 1),
            ("Images", 1),
            ("Selector", 1),
        ],
        "ControllerRevision" => &[("Name", 0), ("Controller", 0), ("Revision", 0), ("Age", 0)],
        "HorizontalPodAutoscaler" => &[
            ("Name", 0),
            ("Reference", 0),
            ("Targets", 0),
            ("MinPods", 0),
            ("MaxPods", 0),
            ("Replicas", 0),
            ("Age", 0),
        ],
        "CronJob" => &[
            ("Name", 0),
            ("Schedule", 0),
            ("Timezone", 0),
            ("Suspend", 0),
            ("Active", 0),
            ("Last Schedule", 0),
            ("Age", 0),
            ("Containers", 1),
            ("Images", 1),
            ("Selector", 1),
        ],
        "Job" => &[
            ("Name", 0),
            ("Status", 0),
            ("Completions", 0),
            ("Duration", 0),
            ("Age", 0),
            ("Containers", 1),
            ("Images", 1),
            ("Selector", 1),
        ],
        "Service" => &[
            ("Name", 0),
            ("Type", 0),
            ("Cluster-IP", 0),
            ("External-IP", 0),
            ("Port(s)", 0),
            ("Age", 0),
            ("Selector", 1),
        ],
        "Endpoints" => &[("Name", 0), ("Endpoints", 0), ("Age", 0)],
        "EndpointSlice" => &[("Name", 0), ("AddressType", 0), ("Ports", 0), ("Endpoints", 0), ("Age", 0)],
        "Node" => &[
            ("Name", 0),
            ("Status", 0),
            ("Roles", 0),
            ("Age", 0),
            ("Version", 0),
            ("Internal-IP", 1),
            ("External-IP", 1),
            ("OS-Image", 1),
            ("Kernel-Version", 1),
            ("Container-Runtime", 1),
        ],
        "Namespace" => &[("Name", 0), ("Status", 0), ("Age", 0)],
        "ConfigMap" => &[("Name", 0), ("Data", 0), ("Age", 0)],
        "Secret" => &[("Name", 0), ("Type", 0), ("Data", 0), ("Age", 0)],
        "ServiceAccount" => &[("Name", 0), ("Secrets", 0), ("Age", 0)],
        "ResourceQuota" => &[("Name", 0), ("Request", 0), ("Limit", 0), ("Age", 0)],
        "Event" => &[
            ("Last Seen", 0),
            ("Type", 0),
            ("Reason", 0),
            ("Object", 0),
            ("Message", 0),
            ("Subobject", 1),
            ("Source", 1),
            ("First Seen", 1),
            ("Count", 1),
            ("Name", 1),
        ],
        "Lease" => &[("Name", 0), ("Holder", 0), ("Age", 0)],
        "StatefulSet" => &[("Name", 0), ("Ready", 0), ("Age", 0), ("Containers", 1), ("Images", 1)],
        "PersistentVolumeClaim" => &[
            ("Name", 0),
            ("Status", 0),
            ("Volume", 0),
            ("Capacity", 0),
            ("Access Modes", 0),
            ("StorageClass", 0),
            ("VolumeAttributesClass", 0),
            ("Age", 0),
            ("VolumeMode", 1),
        ],
        "PersistentVolume" => &[
            ("Name", 0),
            ("Capacity", 0),
            ("Access Modes", 0),
            ("Reclaim Policy", 0),
            ("Status", 0),
            ("Claim", 0),
            ("StorageClass", 0),
            ("VolumeAttributesClass", 0),
            ("Reason", 0),
            ("Age", 0),
            ("VolumeMode", 1),
        ],
        "StorageClass" => &[
            ("Name", 0),
            ("Provisioner", 0),
            ("ReclaimPolicy", 0),
            ("VolumeBindingMode", 0),
            ("AllowVolumeExpansion", 0),
            ("Age", 0),
        ],
        "Role" | "ClusterRole" => &[("Name", 0), ("Created At", 0)],
        "RoleBinding" | "ClusterRoleBinding" => &[
            ("Name", 0),
            ("Role", 0),
            ("Age", 0),
            ("Users", 1),
            ("Groups", 1),
            ("ServiceAccounts", 1),
        ],
        "PriorityClass" => &[
            ("Name", 0),
            ("Value", 0),
            ("Global-Default", 0),
            ("Age", 0),
            ("PreemptionPolicy", 0),
        ],
        _ => &[("Name", 0), ("Age", 0)],
    };
    names.iter().map(|(n, p)| col(n, *p)).collect()
}

/// The cells of one object's row.
pub fn cells(kind: &KindInfo, o: &Value, now: i64) -> Vec<Value> {
    let name = s(&o["metadata"]["name"]);
    let created = age(&o["metadata"]["creationTimestamp"], now);
    let cells: Vec<String> = match kind.kind {
        "Pod" => {
            let statuses = o["status"]["containerStatuses"].as_array().cloned().unwrap_or_default();
            let total = o["spec"]["containers"].as_array().map_or(0, Vec::len);
            let ready = statuses.iter().filter(|c| c["ready"] == true).count();
            let restarts: i64 = statuses.iter().map(|c| int(&c["restartCount"])).sum();
            let last = statuses
                .iter()
                .filter_map(|c| c["lastState"]["terminated"]["finishedAt"].as_str())
                .filter_map(|t| t.parse::<jiff::Timestamp>().ok())
                .max();
            let restarts = match last {
                Some(t) if restarts > 0 => {
                    format!("{restarts} ({} ago)", human_duration(now - t.as_second()))
                }
                _ => restarts.to_string(),
            };
            vec![
                name,
                format!("{ready}/{total}"),
                pod_status(o),
                restarts,
                created,
                or_none(s(&o["status"]["podIP"])),
                or_none(s(&o["spec"]["nodeName"])),
                "<none>".into(),
                "<none>".into(),
            ]
        }
        "Deployment" => {
            let (c, i) = containers_images(&o["spec"]["template"]["spec"]);
            vec![
                name,
                format!(
                    "{}/{}",
                    int(&o["status"]["readyReplicas"]),
                    o["spec"]["replicas"].as_i64().unwrap_or(1)
                ),
                int(&o["status"]["updatedReplicas"]).to_string(),
                int(&o["status"]["availableReplicas"]).to_string(),
                created,
                c,
                i,
                selector_text(&o["spec"]["selector"]),
            ]
        }
        "ReplicaSet" => {
            let (c, i) = containers_images(&o["spec"]["template"]["spec"]);
            vec![
                name,
                o["spec"]["replicas"].as_i64().unwrap_or(1).to_string(),
                int(&o["status"]["replicas"]).to_string(),
                int(&o["status"]["readyReplicas"]).to_string(),
                created,
                c,
                i,
                selector_text(&o["spec"]["selector"]),
            ]
        }
        "DaemonSet" => {
            let (c, i) = containers_images(&o["spec"]["template"]["spec"]);
            let node_selector: Vec<String> = o["spec"]["template"]["spec"]["nodeSelector"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect();
            let st = &o["status"];
            vec![
                name,
                int(&st["desiredNumberScheduled"]).to_string(),
                int(&st["currentNumberScheduled"]).to_string(),
                int(&st["numberReady"]).to_string(),
                int(&st["updatedNumberScheduled"]).to_string(),
                int(&st["numberAvailable"]).to_string(),
                or_none(node_selector.join(",")),
                created,
                c,
                i,
                selector_text(&o["spec"]["selector"]),
            ]
        }
        "CronJob" => {
            let (c, i) = containers_images(&o["spec"]["jobTemplate"]["spec"]["template"]["spec"]);
            let last = &o["status"]["lastScheduleTime"];
            vec![
                name,
                s(&o["spec"]["schedule"]),
                or_none(s(&o["spec"]["timeZone"])),
                (o["spec"]["suspend"] == true).to_string(),
                list(&o["status"]["active"]).len().to_string(),
                if last.is_string() { age(last, now) } else { "<none>".into() },
                created,
                c,
                i,
                selector_text(&o["spec"]["jobTemplate"]["spec"]["selector"]),
            ]
        }
        "HorizontalPodAutoscaler" => {
            let current = list(&o["status"]["currentMetrics"]);
            let targets: Vec<String> = list(&o["spec"]["metrics"])
                .iter()
                .map(|m| {
                    let resource = s(&m["resource"]["name"]);
                    let now = current.iter().find(|c| c["resource"]["name"] == m["resource"]["name"]);
                    let t = &m["resource"]["target"];
                    if t["type"] == "Utilization" {
                        let cur = now
                            .and_then(|c| c["resource"]["current"]["averageUtilization"].as_i64())
                            .map_or("<unknown>".to_owned(), |u| format!("{u}%"));
                        format!("{resource}: {cur}/{}%", int(&t["averageUtilization"]))
                    } else {
                        let cur = now.map_or("<unknown>".to_owned(), |c| s(&c["resource"]["current"]["averageValue"]));
                        format!("{resource}: {cur}/{}", s(&t["averageValue"]))
                    }
                })
                .collect();
            vec![
                name,
                format!(
                    "{}/{}",
                    s(&o["spec"]["scaleTargetRef"]["kind"]),
                    s(&o["spec"]["scaleTargetRef"]["name"])
                ),
                or_none(targets.join(", ")),
                o["spec"]["minReplicas"].as_i64().unwrap_or(1).to_string(),
                int(&o["spec"]["maxReplicas"]).to_string(),
                int(&o["status"]["currentReplicas"]).to_string(),
                created,
            ]
        }
        "ControllerRevision" => {
            let controller = list(&o["metadata"]["ownerReferences"])
                .iter()
                .find(|r| r["controller"] == true)
                .map(|r| {
                    let group = s(&r["apiVersion"]).split_once('/').map(|(g, _)| g.to_owned()).unwrap_or_default();
                    let kind = s(&r["kind"]).to_lowercase();
                    let resource = if group.is_empty() { kind } else { format!("{kind}.{group}") };
                    format!("{resource}/{}", s(&r["name"]))
                })
                .unwrap_or_default();
            vec![name, or_none(controller), int(&o["revision"]).to_string(), created]
        }
        "Ingress" => {
            let spec = &o["spec"];
            let class = spec["ingressClassName"]
                .as_str()
                .or(o["metadata"]["annotations"]["kubernetes.io/ingress.class"].as_str())
                .unwrap_or("<none>");
            let hosts: Vec<&str> = spec["rules"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| r["host"].as_str().unwrap_or("*"))
                .collect();
            let addresses: Vec<&str> = o["status"]["loadBalancer"]["ingress"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|i| i["ip"].as_str().or(i["hostname"].as_str()))
                .collect();
            let ports = if spec["tls"].as_array().is_some_and(|t| !t.is_empty()) {
                "80, 443"
            } else {
                "80"
            };
            vec![
                name,
                class.to_owned(),
                if hosts.is_empty() { "*".to_owned() } else { hosts.join(",") },
                addresses.join(","),
                ports.to_owned(),
                created,
            ]
        }
        "GatewayClass" | "Gateway" => {
            let condition = |t: &str| {
                o["status"]["conditions"]
                    .as_array()
                    .and_then(|cs| cs.iter().find(|c| c["type"] == t))
                    .and_then(|c| c["status"].as_str())
                    .unwrap_or("Unknown")
                    .to_owned()
            };
            if kind.kind == "GatewayClass" {
                vec![
                    name,
                    or_none(o["spec"]["controllerName"].as_str().unwrap_or_default().to_owned()),
                    condition("Accepted"),
                    created,
                ]
            } else {
                let address = o["status"]["addresses"][0]["value"].as_str().unwrap_or_default().to_owned();
                vec![
                    name,
                    o["spec"]["gatewayClassName"].as_str().unwrap_or_default().to_owned(),
                    address,
                    condition("Programmed"),
                    created,
                ]
            }
        }
        "HTTPRoute" => {
            let hosts: Vec<&str> = o["spec"]["hostnames"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|h| h.as_str())
                .collect();
            vec![name, if hosts.is_empty() { "*".to_owned() } else { hosts.join(",") }, created]
        }
        "IngressClass" => {
            let p = &o["spec"]["parameters"];
            let parameters = match p["name"].as_str() {
                Some(n) => format!("{}/{n}", p["kind"].as_str().unwrap_or_default()),
                None => "<none>".to_owned(),
            };
            vec![
                name,
                or_none(o["spec"]["controller"].as_str().unwrap_or_default().to_owned()),
                parameters,
                created,
            ]
        }
        "NetworkPolicy" => vec![name, selector_text(&o["spec"]["podSelector"]), created],
        "PodDisruptionBudget" => {
            let bound = |v: &Value| match v {
                Value::Null => "N/A".to_owned(),
                Value::String(t) => t.clone(),
                other => other.to_string(),
            };
            vec![
                name,
                bound(&o["spec"]["minAvailable"]),
                bound(&o["spec"]["maxUnavailable"]),
                int(&o["status"]["disruptionsAllowed"]).to_string(),
                created,
            ]
        }
        "Job" => {
            let (c, i) = containers_images(&o["spec"]["template"]["spec"]);
            vec![
                name,
                job_status(o),
                match o["spec"]["completions"].as_i64() {
                    Some(n) => format!("{}/{n}", int(&o["status"]["succeeded"])),
                    None => format!(
                        "{}/1 of {}",
                        int(&o["status"]["succeeded"]),
                        o["spec"]["parallelism"].as_i64().unwrap_or(1)
                    ),
                },
                job_duration(o, now),
                created,
                c,
                i,
                selector_text(&o["spec"]["selector"]),
            ]
        }
        "Service" => {
            let ty = o["spec"]["type"].as_str().unwrap_or("ClusterIP").to_owned();
            let ports: Vec<String> = o["spec"]["ports"]
                .as_array()
                .map(|ps| {
                    ps.iter()
                        .map(|p| {
                            let proto = p["protocol"].as_str().unwrap_or("TCP");
                            match p["nodePort"].as_i64() {
                                Some(np) => format!("{}:{np}/{proto}", int(&p["port"])),
                                None => format!("{}/{proto}", int(&p["port"])),
                            }
                        })
                        .collect()
                })
                .unwrap_or_default();
            let external = if ty == "LoadBalancer" {
                "<pending>".to_owned()
            } else {
                "<none>".to_owned()
            };
            let sel = o["spec"]["selector"]
                .as_object()
                .map(|m| m.iter().map(|(k, v)| format!("{k}={}", s(v))).collect::<Vec<_>>().join(","))
                .unwrap_or_default();
            vec![
                name,
                ty,
                or_none(s(&o["spec"]["clusterIP"])),
                external,
                or_none(ports.join(",")),
                created,
                or_none(sel),
            ]
        }
        "Endpoints" => {
            let mut eps = Vec::new();
            for subset in o["subsets"].as_array().into_iter().flatten() {
                for a in subset["addresses"].as_array().into_iter().flatten() {
                    for p in subset["ports"].as_array().into_iter().flatten() {
                        eps.push(format!("{}:{}", s(&a["ip"]), int(&p["port"])));
                    }
                }
            }
            let text = if eps.len() > 3 {
                format!("{} + {} more...", eps[..3].join(","), eps.len() - 3)
            } else {
                eps.join(",")
            };
            vec![name, or_none(text), created]
        }
        "EndpointSlice" => {
            let ports: Vec<String> = o["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| int(&p["port"]).to_string())
                .collect();
            let addrs: Vec<String> = o["endpoints"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|e| e["addresses"].as_array().cloned().unwrap_or_default())
                .map(|a| s(&a))
                .collect();
            let text = if addrs.len() > 3 {
                format!("{} + {} more...", addrs[..3].join(","), addrs.len() - 3)
            } else {
                addrs.join(",")
            };
            vec![name, s(&o["addressType"]), or_none(ports.join(",")), or_none(text), created]
        }
        "Node" => {
            let ready = o["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["type"] == "Ready")
                .map(|c| s(&c["status"]));
            let mut status = match ready.as_deref() {
                Some("True") => "Ready".to_owned(),
                Some("False") => "NotReady".to_owned(),
                _ => "Unknown".to_owned(),
            };
            if o["spec"]["unschedulable"] == true {
                status.push_str(",SchedulingDisabled");
            }
            let roles: Vec<String> = o["metadata"]["labels"]
                .as_object()
                .map(|l| {
                    l.keys()
                        .filter_map(|k| k.strip_prefix("node-role.kubernetes.io/").map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            let addr = |t: &str| {
                o["status"]["addresses"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|a| a["type"] == t)
                    .map(|a| s(&a["address"]))
                    .unwrap_or_default()
            };
            let info = &o["status"]["nodeInfo"];
            vec![
                name,
                status,
                or_none(roles.join(",")),
                created,
                s(&info["kubeletVersion"]),
                or_none(addr("InternalIP")),
                or_none(addr("ExternalIP")),
                s(&info["osImage"]),
                s(&info["kernelVersion"]),
                s(&info["containerRuntimeVersion"]),
            ]
        }
        "Namespace" => vec![name, o["status"]["phase"].as_str().unwrap_or("Active").to_owned(), created],
        "ConfigMap" => {
            let n = o["data"].as_object().map_or(0, |m| m.len()) + o["binaryData"].as_object().map_or(0, |m| m.len());
            vec![name, n.to_string(), created]
        }
        "Secret" => {
            let n = o["data"].as_object().map_or(0, |m| m.len());
            vec![name, o["type"].as_str().unwrap_or("Opaque").to_owned(), n.to_string(), created]
        }
        "ServiceAccount" => vec![name, o["secrets"].as_array().map_or(0, Vec::len).to_string(), created],
        "ResourceQuota" => {
            let (mut req, mut lim) = (Vec::new(), Vec::new());
            if let Some(hard) = o["status"]["hard"].as_object().or(o["spec"]["hard"].as_object()) {
                for (k, v) in hard {
                    let used = o["status"]["used"][k].as_str().unwrap_or("0").to_owned();
                    let item = format!(
                        "{}: {used}/{}",
                        k.trim_start_matches("requests.").trim_start_matches("limits."),
                        s(v)
                    );
                    if k.starts_with("limits.") { lim.push(item) } else { req.push(item) }
                }
            }
            vec![name, req.join(", "), lim.join(", "), created]
        }
        "Event" => {
            let last = o["lastTimestamp"]
                .as_str()
                .or(o["eventTime"].as_str())
                .or(o["metadata"]["creationTimestamp"].as_str())
                .map(|t| age(&json!(t), now))
                .unwrap_or_default();
            let first = o["firstTimestamp"]
                .as_str()
                .map(|t| age(&json!(t), now))
                .unwrap_or_else(|| last.clone());
            let inv = &o["involvedObject"];
            let source = [s(&o["source"]["component"]), s(&o["source"]["host"])]
                .into_iter()
                .filter(|x| !x.is_empty())
                .collect::<Vec<_>>()
                .join(", ");
            vec![
                last,
                s(&o["type"]),
                s(&o["reason"]),
                format!("{}/{}", s(&inv["kind"]).to_ascii_lowercase(), s(&inv["name"])),
                s(&o["message"]),
                s(&inv["fieldPath"]),
                source,
                first,
                o["count"].as_i64().unwrap_or(1).to_string(),
                name,
            ]
        }
        "Lease" => vec![name, or_none(s(&o["spec"]["holderIdentity"])), created],
        "StatefulSet" => {
            let (c, i) = containers_images(&o["spec"]["template"]["spec"]);
            let ready = format!(
                "{}/{}",
                int(&o["status"]["readyReplicas"]),
                o["spec"]["replicas"].as_i64().unwrap_or(1)
            );
            vec![name, ready, created, c, i]
        }
        "PersistentVolumeClaim" => {
            let class = o["spec"]["storageClassName"].as_str().unwrap_or_default();
            vec![
                name,
                or_default(s(&o["status"]["phase"]), "Pending"),
                s(&o["spec"]["volumeName"]),
                s(&o["status"]["capacity"]["storage"]),
                access_modes(&o["status"]["accessModes"]),
                class.to_owned(),
                "<unset>".into(),
                created,
                or_default(s(&o["spec"]["volumeMode"]), "Filesystem"),
            ]
        }
        "PersistentVolume" => {
            let claim = &o["spec"]["claimRef"];
            let claim = if claim.is_null() {
                String::new()
            } else {
                format!("{}/{}", s(&claim["namespace"]), s(&claim["name"]))
            };
            vec![
                name,
                s(&o["spec"]["capacity"]["storage"]),
                access_modes(&o["spec"]["accessModes"]),
                or_default(s(&o["spec"]["persistentVolumeReclaimPolicy"]), "Retain"),
                or_default(s(&o["status"]["phase"]), "Pending"),
                claim,
                s(&o["spec"]["storageClassName"]),
                "<unset>".into(),
                s(&o["status"]["reason"]),
                created,
                or_default(s(&o["spec"]["volumeMode"]), "Filesystem"),
            ]
        }
        "StorageClass" => {
            let default = o["metadata"]["annotations"]["storageclass.kubernetes.io/is-default-class"] == "true";
            vec![
                if default { format!("{name} (default)") } else { name },
                s(&o["provisioner"]),
                or_default(s(&o["reclaimPolicy"]), "Delete"),
                or_default(s(&o["volumeBindingMode"]), "Immediate"),
                (o["allowVolumeExpansion"] == true).to_string(),
                created,
            ]
        }
        "Role" | "ClusterRole" => vec![name, s(&o["metadata"]["creationTimestamp"])],
        "RoleBinding" | "ClusterRoleBinding" => {
            let subjects = |kind: &str| {
                list(&o["subjects"])
                    .iter()
                    .filter(|x| x["kind"] == kind)
                    .map(|x| match (kind, x["namespace"].as_str()) {
                        ("ServiceAccount", Some(ns)) => format!("{ns}/{}", s(&x["name"])),
                        ("ServiceAccount", None) => format!("/{}", s(&x["name"])),
                        _ => s(&x["name"]),
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            vec![
                name,
                format!("{}/{}", s(&o["roleRef"]["kind"]), s(&o["roleRef"]["name"])),
                created,
                subjects("User"),
                subjects("Group"),
                subjects("ServiceAccount"),
            ]
        }
        "PriorityClass" => vec![
            name,
            o["value"].as_i64().unwrap_or(0).to_string(),
            (o["globalDefault"] == true).to_string(),
            created,
            o["preemptionPolicy"].as_str().unwrap_or("PreemptLowerPriority").to_owned(),
        ],
        _ => vec![name, created],
    };
    cells.into_iter().map(Value::String).collect()
}

/// kubectl's short access modes: `RWO,ROX`.
fn access_modes(modes: &Value) -> String {
    modes
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(|m| match m {
            "ReadWriteOnce" => "RWO",
            "ReadOnlyMany" => "ROX",
            "ReadWriteMany" => "RWX",
            "ReadWriteOncePod" => "RWOP",
            other => other,
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn or_default(text: String, default: &str) -> String {
    if text.is_empty() { default.to_owned() } else { text }
}

/// The status kubectl shows for a pod (`Running`, `ContainerCreating`, `CrashLoopBackOff`,
/// `Init:0/1`, `Completed`, `Terminating`, ...).
pub fn pod_status(o: &Value) -> String {
    let st = &o["status"];
    let mut reason = st["reason"].as_str().or(st["phase"].as_str()).unwrap_or("Pending").to_owned();
    let inits = st["initContainerStatuses"].as_array().cloned().unwrap_or_default();
    let init_total = o["spec"]["initContainers"].as_array().map_or(0, Vec::len);
    let mut initializing = false;
    for (i, c) in inits.iter().enumerate() {
        let term = &c["state"]["terminated"];
        if !term.is_null() && int(&term["exitCode"]) == 0 {
            continue;
        }
        initializing = true;
        reason = if !term.is_null() {
            match term["reason"].as_str() {
                Some(r) if !r.is_empty() => format!("Init:{r}"),
                _ => format!("Init:ExitCode:{}", int(&term["exitCode"])),
            }
        } else if let Some(r) = c["state"]["waiting"]["reason"]
            .as_str()
            .filter(|r| !r.is_empty() && *r != "PodInitializing")
        {
            format!("Init:{r}")
        } else {
            format!("Init:{i}/{init_total}")
        };
        break;
    }
    if !initializing {
        let mut has_running = false;
        let containers = st["containerStatuses"].as_array().cloned().unwrap_or_default();
        for c in containers.iter().rev() {
            let state = &c["state"];
            if let Some(r) = state["waiting"]["reason"].as_str().filter(|r| !r.is_empty()) {
                reason = r.to_owned();
            } else if !state["terminated"].is_null() {
                reason = match state["terminated"]["reason"].as_str() {
                    Some(r) if !r.is_empty() => r.to_owned(),
                    _ => format!("ExitCode:{}", int(&state["terminated"]["exitCode"])),
                };
            } else if !state["running"].is_null() && c["ready"] == true {
                has_running = true;
            }
        }
        if reason == "Completed" && has_running {
            reason = "Running".into();
        }
    }
    if !o["metadata"]["deletionTimestamp"].is_null() {
        reason = if reason == "NodeLost" {
            "Unknown".into()
        } else {
            "Terminating".into()
        };
    }
    reason
}

/// The columns of an `autoscaling/v1` Scale (`kubectl get --subresource=scale`), as Kubernetes
/// prints them.
pub fn scale_columns() -> Vec<Value> {
    vec![col("Name", 0), col("Desired", 0), col("Available", 0)]
}

pub fn scale_cells(scale: &Value) -> Vec<Value> {
    vec![
        scale["metadata"]["name"].clone(),
        json!(int(&scale["spec"]["replicas"])),
        json!(int(&scale["status"]["replicas"])),
    ]
}

/// A row's `object`: the whole object, or its metadata as a PartialObjectMetadata.
pub fn row_object(o: &Value, include: Include) -> Option<Value> {
    match include {
        Include::None => None,
        Include::Object => Some(o.clone()),
        Include::Metadata => Some(json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"]})),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_kubectl() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(119), "119s");
        assert_eq!(human_duration(185), "3m5s");
        assert_eq!(human_duration(600), "10m");
        assert_eq!(human_duration(4 * 3600 + 60), "4h1m");
        assert_eq!(human_duration(30 * 3600), "30h");
        assert_eq!(human_duration(3 * 86400 + 3600), "3d1h");
        assert_eq!(human_duration(40 * 86400), "40d");
    }

    #[test]
    fn pod_statuses() {
        let waiting =
            json!({"status": {"phase": "Pending", "containerStatuses": [{"state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}});
        assert_eq!(pod_status(&waiting), "CrashLoopBackOff");
        let running = json!({"status": {"phase": "Running", "containerStatuses": [{"ready": true, "state": {"running": {}}}]}});
        assert_eq!(pod_status(&running), "Running");
        let init = json!({"spec": {"initContainers": [{}, {}]}, "status": {"phase": "Pending", "initContainerStatuses": [{"state": {"terminated": {"exitCode": 0}}}, {"state": {"running": {}}}]}});
        assert_eq!(pod_status(&init), "Init:1/2");
        let deleting = json!({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"}, "status": {"phase": "Running"}});
        assert_eq!(pod_status(&deleting), "Terminating");
    }

    #[test]
    fn service_and_deployment_rows() {
        let svc = json!({"metadata": {"name": "web"}, "spec": {"type": "NodePort", "clusterIP": "10.96.0.9", "ports": [{"port": 80, "nodePort": 30080, "protocol": "TCP"}], "selector": {"app": "web"}}});
        let kind = capstan_api::kinds::by_name("svc").unwrap();
        let c = cells(kind, &svc, 0);
        assert_eq!(c[1], "NodePort");
        assert_eq!(c[4], "80:30080/TCP");
        assert_eq!(c[6], "app=web");
        let d = json!({"metadata": {"name": "web"}, "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}}, "template": {"spec": {"containers": [{"name": "c", "image": "i:1"}]}}}, "status": {"readyReplicas": 2, "updatedReplicas": 3, "availableReplicas": 2}});
        let c = cells(capstan_api::kinds::by_name("deploy").unwrap(), &d, 0);
        assert_eq!(&c[1..4], &[json!("2/3"), json!("3"), json!("2")]);
        assert_eq!(c[7], "app=web");
        assert_eq!(columns(capstan_api::kinds::by_name("deploy").unwrap()).len(), c.len());
    }
}
