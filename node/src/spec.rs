//! Pod spec to container configuration, as a pure function: environment (env, envFrom, field and
//! resource references, service links), limits, volume mounts, DNS, labels and the spec hash that
//! tells when a running container no longer matches its spec.

use capstan_api::quantity::Quantity;
use std::collections::{BTreeMap, HashMap};

use capstan_api::meta::{LABEL_COMMIT, LABEL_CONTAINER, LABEL_NAMESPACE, LABEL_NODE, LABEL_POD, LABEL_POD_UID, LABEL_SPEC_HASH};
use capstan_containers::{ContainerConfig, ContainerInfo, NetworkMode};
use serde_json::{Value, json};

/// The name of the sandbox in container labels.
pub const SANDBOX: &str = "POD";
/// Container label: which attempt (restart) this container is.
pub const LABEL_ATTEMPT: &str = "capstan.dev/attempt";
/// Container label: marks the pod's sandbox.
pub const LABEL_SANDBOX: &str = "capstan.dev/sandbox";
/// Sandbox label: the pod's address (the Engine does not know it: the agent connects the sandbox).
pub const LABEL_POD_IP: &str = "capstan.dev/pod-ip";

/// Whether a container is a pod's sandbox.
pub fn is_sandbox(c: &ContainerInfo) -> bool {
    c.labels.get(LABEL_SANDBOX).is_some_and(|v| v == "true") || c.labels.get(LABEL_CONTAINER).is_some_and(|n| n == SANDBOX)
}

/// A sandbox's pod address: given by the agent (the label), or by Docker to a sandbox of an
/// older agent.
pub fn sandbox_ip(c: &ContainerInfo) -> Option<&String> {
    is_sandbox(c).then(|| c.labels.get(LABEL_POD_IP).or(c.ip.as_ref())).flatten()
}

/// What the node tells every pod: its own name, the cluster DNS, where volumes live.
#[derive(Clone, Debug)]
pub struct NodeContext {
    pub node: String,
    pub network: String,
    pub host_ip: String,
    pub dns_ip: String,
    pub cluster_domain: String,
    pub pause_image: String,
    pub volumes_dir: std::path::PathBuf,
}

/// What a container's environment may refer to besides the pod itself.
#[derive(Clone, Debug, Default)]
pub struct References {
    /// ConfigMaps and Secrets of the pod's namespace, by name, as key → value (decoded).
    pub config_maps: HashMap<String, BTreeMap<String, String>>,
    pub secrets: HashMap<String, BTreeMap<String, String>>,
    /// Services for service-link variables: (name, cluster IP, ports [(name, port, protocol)]).
    pub services: Vec<(String, String, Vec<(String, i64, String)>)>,
    /// A token for the pod's service account, for projected serviceAccountToken volumes.
    pub service_account_token: Option<String>,
    /// The claims the pod mounts that are bound, by name: where their volume is on this node.
    pub claims: HashMap<String, std::path::PathBuf>,
}

/// Why a container cannot be created yet (Kubernetes' CreateContainerConfigError).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Labels on every container of a pod.
pub fn labels(pod: &Value, node: &str, container: &str, hash: &str, attempt: u32) -> HashMap<String, String> {
    let m = &pod["metadata"];
    let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    let mut l = HashMap::from([
        (LABEL_POD_UID.to_owned(), s(&m["uid"])),
        (LABEL_POD.to_owned(), s(&m["name"])),
        (LABEL_NAMESPACE.to_owned(), s(&m["namespace"])),
        (LABEL_CONTAINER.to_owned(), container.to_owned()),
        (LABEL_NODE.to_owned(), node.to_owned()),
        (LABEL_SPEC_HASH.to_owned(), hash.to_owned()),
        (LABEL_ATTEMPT.to_owned(), attempt.to_string()),
    ]);
    if let Some(c) = m["annotations"]["capstan.dev/commit"].as_str() {
        l.insert(LABEL_COMMIT.to_owned(), c.to_owned());
    }
    l
}

/// A stable hash of a container's spec (FNV-1a of its JSON).
pub fn spec_hash(container: &Value) -> String {
    let bytes = serde_json::to_vec(container).unwrap_or_default();
    let mut h: u64 = 0xcbf29ce484222325;
    for b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{:08x}", h as u32)
}

/// Docker names: `k8s_<container>_<pod>_<namespace>_<uid>_<attempt>`, as the kubelet names them.
pub fn container_name(pod: &Value, container: &str, attempt: u32) -> String {
    let m = &pod["metadata"];
    let uid = m["uid"].as_str().unwrap_or_default();
    format!(
        "k8s_{container}_{}_{}_{}_{attempt}",
        m["name"].as_str().unwrap_or_default(),
        m["namespace"].as_str().unwrap_or_default(),
        &uid[..uid.len().min(8)]
    )
}

/// Whether the pod runs in the node's network namespace (`hostNetwork`): its address is the
/// node's and the agent wires nothing.
pub fn host_network(pod: &Value) -> bool {
    pod["spec"]["hostNetwork"] == true
}

/// The host namespaces the pod asks for (`hostNetwork`, `hostPID`, `hostIPC`), which a node
/// allows only as it allows hostPath volumes.
pub fn host_namespaces_asked(pod: &Value) -> Vec<&'static str> {
    ["hostNetwork", "hostPID", "hostIPC"]
        .into_iter()
        .filter(|f| pod["spec"][*f] == true)
        .collect()
}

/// Docker's PID and IPC modes for the pod's containers: the host's when the pod asks for them
/// (`hostPID`, `hostIPC`, as `kubectl debug node/NAME` does).
fn host_namespaces(pod: &Value) -> (Option<String>, Option<String>) {
    let host = |field: &str| (pod["spec"][field] == true).then(|| "host".to_owned());
    (host("hostPID"), host("hostIPC"))
}

/// The sandbox container: it holds the pod's network namespace (made without a network: the
/// agent connects it with address `ip`), hostname, hosts file and DNS settings; for a pod on the
/// host's network, only the host's namespaces.
pub fn sandbox(pod: &Value, ctx: &NodeContext, ip: std::net::Ipv4Addr) -> ContainerConfig {
    let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default");
    let name = pod["metadata"]["name"].as_str().unwrap_or_default();
    let mut labels = labels(pod, &ctx.node, SANDBOX, "", 0);
    labels.insert(LABEL_SANDBOX.to_owned(), "true".to_owned());
    labels.insert(LABEL_POD_IP.to_owned(), ip.to_string());
    let dns_policy = pod["spec"]["dnsPolicy"].as_str().unwrap_or("ClusterFirst");
    let (dns, search, options) = if dns_policy == "Default" {
        (Vec::new(), Vec::new(), Vec::new())
    } else {
        let d = &ctx.cluster_domain;
        (
            vec![ctx.dns_ip.clone()],
            vec![format!("{ns}.svc.{d}"), format!("svc.{d}"), d.clone()],
            vec!["ndots:5".to_owned()],
        )
    };
    let hostname: String = pod["spec"]["hostname"].as_str().unwrap_or(name).chars().take(63).collect();
    let (pid_mode, ipc_mode) = host_namespaces(pod);
    if host_network(pod) {
        // The node's own name, hosts file and resolver, as the kubelet gives such a pod.
        return ContainerConfig {
            name: container_name(pod, SANDBOX, 0),
            image: ctx.pause_image.clone(),
            cmd: Some(vec!["pause".into()]),
            labels,
            network: Some(NetworkMode::Host),
            pid_mode,
            ipc_mode,
            ..ContainerConfig::default()
        };
    }
    ContainerConfig {
        name: container_name(pod, SANDBOX, 0),
        image: ctx.pause_image.clone(),
        cmd: Some(vec!["pause".into()]),
        labels,
        network: Some(NetworkMode::Isolated),
        hostname: Some(hostname.clone()),
        dns,
        dns_search: search,
        dns_options: options,
        extra_hosts: pod["spec"]["hostAliases"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|a| {
                a["hostnames"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .map(move |h| format!("{}:{}", h.as_str().unwrap_or_default(), a["ip"].as_str().unwrap_or_default()))
            })
            // As the kubelet's hosts file: the pod's own name resolves to its address.
            .chain([format!("{hostname}:{ip}")])
            .collect(),
        pid_mode,
        ipc_mode,
        ..ContainerConfig::default()
    }
}

/// The pod's `/etc/resolv.conf` for the ClusterFirst DNS policy (None: the node's own).
pub fn resolv_conf(pod: &Value, ctx: &NodeContext) -> Option<String> {
    let policy = pod["spec"]["dnsPolicy"].as_str().unwrap_or("ClusterFirst");
    if policy == "Default" || (policy == "ClusterFirst" && pod["spec"]["hostNetwork"] == true) {
        return None;
    }
    let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default");
    let d = &ctx.cluster_domain;
    let mut servers = vec![ctx.dns_ip.clone()];
    let mut search = vec![format!("{ns}.svc.{d}"), format!("svc.{d}"), d.clone()];
    let mut options = vec!["ndots:5".to_owned()];
    let config = &pod["spec"]["dnsConfig"];
    if policy == "None" {
        servers.clear();
        search.clear();
        options.clear();
    }
    servers.extend(
        config["nameservers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(str::to_owned)),
    );
    search.extend(
        config["searches"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(str::to_owned)),
    );
    for o in config["options"].as_array().into_iter().flatten() {
        let name = o["name"].as_str().unwrap_or_default();
        options.retain(|x| x.split(':').next() != Some(name));
        options.push(match o["value"].as_str() {
            Some(v) => format!("{name}:{v}"),
            None => name.to_owned(),
        });
    }
    let mut text = String::new();
    for s in servers {
        text.push_str(&format!("nameserver {s}\n"));
    }
    if !search.is_empty() {
        text.push_str(&format!("search {}\n", search.join(" ")));
    }
    if !options.is_empty() {
        text.push_str(&format!("options {}\n", options.join(" ")));
    }
    Some(text)
}

/// Service-link variables (`WEB_SERVICE_HOST`, `WEB_PORT_80_TCP`, ...), as the kubelet writes them.
pub fn service_env(services: &[(String, String, Vec<(String, i64, String)>)]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (name, ip, ports) in services {
        if ip.is_empty() || ip == "None" || ports.is_empty() {
            continue;
        }
        let n = name.to_ascii_uppercase().replace('-', "_");
        let (first_port, first_proto) = (ports[0].1, ports[0].2.to_ascii_lowercase());
        out.push((format!("{n}_SERVICE_HOST"), ip.clone()));
        out.push((format!("{n}_SERVICE_PORT"), first_port.to_string()));
        out.push((format!("{n}_PORT"), format!("{first_proto}://{ip}:{first_port}")));
        for (pname, port, proto) in ports {
            if !pname.is_empty() {
                out.push((
                    format!("{n}_SERVICE_PORT_{}", pname.to_ascii_uppercase().replace('-', "_")),
                    port.to_string(),
                ));
            }
            let p = proto.to_ascii_uppercase();
            let prefix = format!("{n}_PORT_{port}_{p}");
            out.push((prefix.clone(), format!("{}://{ip}:{port}", proto.to_ascii_lowercase())));
            out.push((format!("{prefix}_PROTO"), proto.to_ascii_lowercase()));
            out.push((format!("{prefix}_PORT"), port.to_string()));
            out.push((format!("{prefix}_ADDR"), ip.clone()));
        }
    }
    out
}

/// Where Kubernetes mounts the pod's service-account token, CA and namespace.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// The pod with the service-account volume Kubernetes' ServiceAccount admission adds (a token
/// bound to the pod, the cluster CA, the namespace) mounted read-only at [`SERVICE_ACCOUNT_DIR`]
/// in every container that does not mount something there itself; unchanged when the pod says
/// `automountServiceAccountToken: false` or has the volume already.
pub fn with_api_access(mut pod: Value) -> Value {
    const VOLUME: &str = "kube-api-access";
    let spec = &pod["spec"];
    let has = spec["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|v| v["name"].as_str().is_some_and(|n| n.starts_with(VOLUME)));
    if spec["automountServiceAccountToken"] == false || has {
        return pod;
    }
    let volume = json!({"name": VOLUME, "projected": {"defaultMode": 420, "sources": [
        {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
        {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
        {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}
    ]}});
    match pod["spec"]["volumes"].as_array_mut() {
        Some(list) => list.push(volume),
        None => pod["spec"]["volumes"] = json!([volume]),
    }
    for list in ["initContainers", "containers"] {
        for c in pod["spec"][list].as_array_mut().into_iter().flatten() {
            let mounted = c["volumeMounts"].as_array().into_iter().flatten().any(|m| {
                m["mountPath"]
                    .as_str()
                    .is_some_and(|p| p.trim_end_matches('/') == SERVICE_ACCOUNT_DIR)
            });
            if mounted {
                continue;
            }
            let mount = json!({"name": VOLUME, "mountPath": SERVICE_ACCOUNT_DIR, "readOnly": true});
            match c["volumeMounts"].as_array_mut() {
                Some(m) => m.push(mount),
                None => c["volumeMounts"] = json!([mount]),
            }
        }
    }
    pod
}

/// Whether a container's environment takes the pod's IP (so it cannot be made before the
/// sandbox has one).
pub fn reads_pod_ip(pod: &Value) -> bool {
    ["initContainers", "containers"]
        .iter()
        .flat_map(|l| pod["spec"][l].as_array().into_iter().flatten())
        .flat_map(|c| c["env"].as_array().into_iter().flatten())
        .any(|e| {
            e["valueFrom"]["fieldRef"]["fieldPath"]
                .as_str()
                .is_some_and(|p| p.starts_with("status.podIP"))
        })
}

fn field_ref(pod: &Value, path: &str) -> Option<String> {
    let m = &pod["metadata"];
    let s = |v: &Value| v.as_str().map(str::to_owned);
    if let Some(key) = path.strip_prefix("metadata.labels['").and_then(|r| r.strip_suffix("']")) {
        return s(&m["labels"][key]);
    }
    if let Some(key) = path.strip_prefix("metadata.annotations['").and_then(|r| r.strip_suffix("']")) {
        return s(&m["annotations"][key]);
    }
    match path {
        "metadata.name" => s(&m["name"]),
        "metadata.namespace" => s(&m["namespace"]),
        "metadata.uid" => s(&m["uid"]),
        "spec.nodeName" => s(&pod["spec"]["nodeName"]),
        "spec.serviceAccountName" => Some(pod["spec"]["serviceAccountName"].as_str().unwrap_or("default").to_owned()),
        "status.podIP" => s(&pod["status"]["podIP"]),
        "status.hostIP" => s(&pod["status"]["hostIP"]),
        _ => None,
    }
}

/// The environment of one container, in the order Kubernetes builds it: service links, then
/// envFrom, then env (later entries win).
pub fn environment(pod: &Value, container: &Value, refs: &References) -> Result<Vec<String>, ConfigError> {
    let mut env: Vec<(String, String)> = Vec::new();
    if pod["spec"]["enableServiceLinks"] != false {
        env.extend(service_env(&refs.services));
    } else {
        // The API's own Service stays, as the kubelet keeps it.
        let api: Vec<_> = refs.services.iter().filter(|s| s.0 == "kubernetes").cloned().collect();
        env.extend(service_env(&api));
    }
    for from in container["envFrom"].as_array().into_iter().flatten() {
        let prefix = from["prefix"].as_str().unwrap_or_default();
        let optional_of = |r: &Value| r["optional"] == true;
        if let Some(name) = from["configMapRef"]["name"].as_str() {
            match refs.config_maps.get(name) {
                Some(data) => env.extend(data.iter().map(|(k, v)| (format!("{prefix}{k}"), v.clone()))),
                None if optional_of(&from["configMapRef"]) => {}
                None => return Err(ConfigError(format!("configmap \"{name}\" not found"))),
            }
        }
        if let Some(name) = from["secretRef"]["name"].as_str() {
            match refs.secrets.get(name) {
                Some(data) => env.extend(data.iter().map(|(k, v)| (format!("{prefix}{k}"), v.clone()))),
                None if optional_of(&from["secretRef"]) => {}
                None => return Err(ConfigError(format!("secret \"{name}\" not found"))),
            }
        }
    }
    for e in container["env"].as_array().into_iter().flatten() {
        let name = e["name"].as_str().unwrap_or_default().to_owned();
        let value = if let Some(v) = e["value"].as_str() {
            // $(VAR) references to earlier variables, as Kubernetes expands them.
            expand(v, &env)
        } else if let Some(vf) = e.get("valueFrom") {
            if let Some(path) = vf["fieldRef"]["fieldPath"].as_str() {
                field_ref(pod, path).unwrap_or_default()
            } else if let Some(res) = vf["resourceFieldRef"]["resource"].as_str() {
                let (section, what) = res.split_once('.').unwrap_or(("limits", res));
                let q = &container["resources"][section][what];
                let divisor = vf["resourceFieldRef"]["divisor"].as_str().unwrap_or("1");
                // As the kubelet: the value in units of the divisor, rounded up.
                let div = divisor.parse::<Quantity>().map_or(1000, |d| d.milli_value()).max(1);
                Quantity::from_json(q)
                    .map(|v| (v.milli_value().saturating_add(div - 1) / div).to_string())
                    .unwrap_or_else(|| "0".into())
            } else if let Some(r) = vf.get("configMapKeyRef") {
                let (cm, key) = (r["name"].as_str().unwrap_or_default(), r["key"].as_str().unwrap_or_default());
                match refs.config_maps.get(cm).and_then(|d| d.get(key)) {
                    Some(v) => v.clone(),
                    None if r["optional"] == true => continue,
                    None => {
                        return Err(ConfigError(format!(
                            "couldn't find key {key} in ConfigMap {}/{cm}",
                            pod["metadata"]["namespace"].as_str().unwrap_or_default()
                        )));
                    }
                }
            } else if let Some(r) = vf.get("secretKeyRef") {
                let (sec, key) = (r["name"].as_str().unwrap_or_default(), r["key"].as_str().unwrap_or_default());
                match refs.secrets.get(sec).and_then(|d| d.get(key)) {
                    Some(v) => v.clone(),
                    None if r["optional"] == true => continue,
                    None => {
                        return Err(ConfigError(format!(
                            "couldn't find key {key} in Secret {}/{sec}",
                            pod["metadata"]["namespace"].as_str().unwrap_or_default()
                        )));
                    }
                }
            } else {
                String::new()
            }
        } else {
            String::new()
        };
        env.push((name, value));
    }
    // Later definitions win, as in Kubernetes; keep the first position of each name.
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out: Vec<(String, String)> = Vec::new();
    for (k, v) in env {
        match seen.get(&k) {
            Some(&i) => out[i].1 = v,
            None => {
                seen.insert(k.clone(), out.len());
                out.push((k, v));
            }
        }
    }
    Ok(out.into_iter().map(|(k, v)| format!("{k}={v}")).collect())
}

/// Expands `$(NAME)` with earlier variables; `$$(NAME)` escapes.
fn expand(value: &str, env: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(i) = rest.find("$(") {
        if i > 0 && rest.as_bytes()[i - 1] == b'$' {
            out.push_str(&rest[..i - 1]);
            out.push_str("$(");
            rest = &rest[i + 2..];
            continue;
        }
        out.push_str(&rest[..i]);
        match rest[i + 2..].find(')') {
            Some(j) => {
                let name = &rest[i + 2..i + 2 + j];
                match env.iter().rev().find(|(k, _)| k == name) {
                    Some((_, v)) => out.push_str(v),
                    None => {
                        out.push_str("$(");
                        out.push_str(name);
                        out.push(')');
                    }
                }
                rest = &rest[i + 3 + j..];
            }
            None => {
                out.push_str(&rest[i..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// The configuration of one container of the pod, joined to its sandbox.
pub fn container(
    pod: &Value,
    c: &Value,
    sandbox_id: &str,
    ctx: &NodeContext,
    refs: &References,
    binds: Vec<String>,
    attempt: u32,
) -> Result<ContainerConfig, ConfigError> {
    let name = c["name"].as_str().unwrap_or_default();
    let strings = |v: &Value| {
        v.as_array()
            .map(|a| a.iter().map(|x| x.as_str().unwrap_or_default().to_owned()).collect::<Vec<_>>())
    };
    let limits = &c["resources"]["limits"];
    let requests = &c["resources"]["requests"];
    // cgroup CPU shares are cores × 1024, as the kubelet sets them.
    let cpu_request = Quantity::from_json(&requests["cpu"])
        .or_else(|| Quantity::from_json(&limits["cpu"]))
        .map(|q| q.milli_value().saturating_mul(1024) / 1000);
    let (pid_mode, ipc_mode) = host_namespaces(pod);
    Ok(ContainerConfig {
        name: container_name(pod, name, attempt),
        image: c["image"].as_str().unwrap_or_default().to_owned(),
        entrypoint: strings(&c["command"]),
        cmd: strings(&c["args"]),
        env: environment(pod, c, refs)?,
        working_dir: c["workingDir"].as_str().map(str::to_owned),
        labels: labels(pod, &ctx.node, name, &spec_hash(c), attempt),
        network: Some(NetworkMode::Container(sandbox_id.to_owned())),
        binds,
        memory_limit: Quantity::from_json(&limits["memory"]).map(|q| q.value()),
        nano_cpus: Quantity::from_json(&limits["cpu"]).map(|q| q.nano_value()),
        cpu_shares: cpu_request.map(|s| s.max(2)),
        user: c["securityContext"]["runAsUser"].as_i64().map(|u| u.to_string()),
        tty: c["tty"] == true,
        open_stdin: c["stdin"] == true,
        stdin_once: c["stdinOnce"] == true,
        privileged: c["securityContext"]["privileged"] == true,
        pid_mode,
        ipc_mode,
        ..ContainerConfig::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod() -> Value {
        json!({"metadata": {"name": "web-1", "namespace": "shop", "uid": "0123456789abcdef", "labels": {"app": "web"}},
               "spec": {"nodeName": "n1", "containers": [{"name": "web", "image": "app:1"}]},
               "status": {"podIP": "10.244.0.5"}})
    }

    #[test]
    fn the_service_account_volume_is_added_unless_declined() {
        let pod = json!({"spec": {"containers": [{"name": "a"}, {"name": "b", "volumeMounts": [{"name": "own", "mountPath": SERVICE_ACCOUNT_DIR}]}],
            "volumes": [{"name": "own", "emptyDir": {}}]}});
        let p = with_api_access(pod.clone());
        assert_eq!(p["spec"]["volumes"][1]["name"], "kube-api-access");
        assert_eq!(p["spec"]["containers"][0]["volumeMounts"][0]["mountPath"], SERVICE_ACCOUNT_DIR);
        assert_eq!(p["spec"]["containers"][0]["volumeMounts"][0]["readOnly"], true);
        assert_eq!(
            p["spec"]["containers"][1]["volumeMounts"].as_array().unwrap().len(),
            1,
            "its own mount stays"
        );
        assert_eq!(with_api_access(p.clone()), p, "added once");
        let mut declined = pod;
        declined["spec"]["automountServiceAccountToken"] = json!(false);
        assert_eq!(with_api_access(declined.clone()), declined);
    }

    #[test]
    fn only_an_environment_with_the_pod_ip_needs_the_sandbox_first() {
        let plain = json!({"spec": {"containers": [{"name": "a", "env": [{"name": "N", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]}]}});
        assert!(!reads_pod_ip(&plain));
        let ip = json!({"spec": {"initContainers": [{"name": "i", "env": [{"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}]}],
            "containers": [{"name": "a"}]}});
        assert!(reads_pod_ip(&ip));
    }

    #[test]
    fn environment_in_kubernetes_order() {
        let refs = References {
            config_maps: HashMap::from([(
                "cfg".to_owned(),
                BTreeMap::from([("MODE".to_owned(), "prod".to_owned()), ("PORT".to_owned(), "1".to_owned())]),
            )]),
            secrets: HashMap::from([("db".to_owned(), BTreeMap::from([("password".to_owned(), "hunter2".to_owned())]))]),
            services: vec![(
                "redis-main".to_owned(),
                "10.96.0.12".to_owned(),
                vec![("redis".to_owned(), 6379, "TCP".to_owned())],
            )],
            ..References::default()
        };
        let c = json!({"name": "web", "envFrom": [{"configMapRef": {"name": "cfg"}}],
            "env": [{"name": "PORT", "value": "8080"}, {"name": "URL", "value": "http://$(REDIS_MAIN_SERVICE_HOST):$(PORT)"},
                    {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                    {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                    {"name": "PW", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}}]});
        let mut no_links = pod();
        no_links["spec"]["enableServiceLinks"] = json!(false);
        let mut with_api = refs.clone();
        with_api.services.push((
            "kubernetes".to_owned(),
            "10.96.0.1".to_owned(),
            vec![("https".to_owned(), 443, "TCP".to_owned())],
        ));
        let env = environment(&no_links, &json!({"name": "web"}), &with_api).unwrap();
        assert!(env.contains(&"KUBERNETES_SERVICE_HOST=10.96.0.1".to_owned()), "{env:?}");
        assert!(!env.iter().any(|e| e.starts_with("REDIS_MAIN_")), "{env:?}");
        let env = environment(&pod(), &c, &refs).unwrap();
        for want in [
            "REDIS_MAIN_SERVICE_HOST=10.96.0.12",
            "REDIS_MAIN_SERVICE_PORT=6379",
            "REDIS_MAIN_SERVICE_PORT_REDIS=6379",
            "REDIS_MAIN_PORT=tcp://10.96.0.12:6379",
            "REDIS_MAIN_PORT_6379_TCP_ADDR=10.96.0.12",
            "MODE=prod",
            "PORT=8080",
            "URL=http://10.96.0.12:8080",
            "POD=web-1",
            "APP=web",
            "IP=10.244.0.5",
            "PW=hunter2",
        ] {
            assert!(env.contains(&want.to_owned()), "{want} missing from {env:?}");
        }
        assert_eq!(env.iter().filter(|e| e.starts_with("PORT=")).count(), 1);
        let missing = json!({"name": "web", "envFrom": [{"secretRef": {"name": "nope"}}]});
        assert_eq!(environment(&pod(), &missing, &refs).unwrap_err().0, "secret \"nope\" not found");
    }

    #[test]
    fn containers_join_the_sandbox_with_limits_and_labels() {
        let ctx = NodeContext {
            node: "n1".into(),
            network: "capstan-n1".into(),
            host_ip: "127.0.0.1".into(),
            dns_ip: "10.96.0.10".into(),
            cluster_domain: "cluster.local".into(),
            pause_image: "capstan.local/pause:3".into(),
            volumes_dir: "/tmp".into(),
        };
        let c = json!({"name": "web", "image": "app:1", "command": ["/app"], "args": ["serve"], "resources": {"limits": {"cpu": "500m", "memory": "64Mi"}}});
        let cfg = container(&pod(), &c, "sandbox-id", &ctx, &References::default(), vec![], 2).unwrap();
        assert_eq!(cfg.name, "k8s_web_web-1_shop_01234567_2");
        assert_eq!(cfg.network, Some(NetworkMode::Container("sandbox-id".into())));
        assert_eq!(cfg.memory_limit, Some(64 * 1024 * 1024));
        assert_eq!(cfg.nano_cpus, Some(500_000_000));
        assert_eq!(cfg.entrypoint, Some(vec!["/app".to_owned()]));
        assert_eq!(cfg.labels["capstan.dev/pod-uid"], "0123456789abcdef");
        assert_eq!(cfg.labels["capstan.dev/attempt"], "2");
        assert_eq!(
            resolv_conf(&pod(), &ctx).unwrap(),
            "nameserver 10.96.0.10\nsearch shop.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n"
        );
        let sb = sandbox(&pod(), &ctx, std::net::Ipv4Addr::new(10, 244, 0, 7));
        assert_eq!(sb.dns, ["10.96.0.10"]);
        assert_eq!(sb.dns_search, ["shop.svc.cluster.local", "svc.cluster.local", "cluster.local"]);
        assert_eq!(sb.hostname.as_deref(), Some("web-1"));
        assert_eq!(sb.network, Some(NetworkMode::Isolated));
        assert_eq!(sb.extra_hosts, ["web-1:10.244.0.7"]);
        assert_eq!(sb.labels[LABEL_POD_IP], "10.244.0.7");
        assert_eq!((sb.pid_mode, cfg.pid_mode, cfg.ipc_mode), (None, None, None));

        // `kubectl debug node/n1`: the host's network, processes and IPC.
        let mut host = pod();
        for field in ["hostNetwork", "hostPID", "hostIPC"] {
            host["spec"][field] = json!(true);
        }
        let sb = sandbox(&host, &ctx, std::net::Ipv4Addr::new(127, 0, 0, 1));
        assert_eq!(sb.network, Some(NetworkMode::Host));
        assert_eq!((sb.hostname, sb.dns.len(), sb.extra_hosts.len()), (None, 0, 0));
        assert_eq!(sb.labels[LABEL_POD_IP], "127.0.0.1");
        let cfg = container(&host, &c, "sandbox-id", &ctx, &References::default(), vec![], 0).unwrap();
        assert_eq!((cfg.pid_mode.as_deref(), cfg.ipc_mode.as_deref()), (Some("host"), Some("host")));
        assert_eq!(resolv_conf(&host, &ctx), None, "the node's resolver");
    }
}
