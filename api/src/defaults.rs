//! Kubernetes' defaults for the fields a manifest may leave out, filled in on every write as
//! kube-apiserver's defaulting does (and, for new Pods, its ServiceAccount admission), so that
//! what `kubectl get -o yaml` and `describe` show is what runs.
//!
//! Every function here only adds what is missing, so applying it twice changes nothing.

use serde_json::{Map, Value, json};

use crate::KindInfo;

/// The mode files of Secret, ConfigMap, downward API and projected volumes get (0644).
pub const VOLUME_FILE_MODE: i64 = 0o644;

/// Fills in the defaults of an object of `kind`.
pub fn apply(kind: &KindInfo, object: &mut Value) {
    if !object.is_object() {
        return;
    }
    match (kind.group, kind.kind) {
        ("", "Pod") => pod(object),
        ("", "Service") => {
            if let Some(spec) = object.get_mut("spec") {
                service(spec);
            }
        }
        ("", "Secret") => set(object, "type", json!("Opaque")),
        ("", "Namespace") => {
            // Every namespace carries its name as a label, so selectors can pick namespaces.
            let name = object["metadata"]["name"].clone();
            if name.is_string()
                && let Some(labels) = object.get_mut("metadata").and_then(|m| place(m, "labels"))
            {
                set(labels, "kubernetes.io/metadata.name", name);
            }
        }
        ("apps", "Deployment") => {
            if let Some(spec) = object.get_mut("spec") {
                deployment(spec);
            }
        }
        ("apps", "ReplicaSet") => {
            if let Some(spec) = object.get_mut("spec") {
                set(spec, "replicas", json!(1));
                pod_template(spec.get_mut("template"));
            }
        }
        ("apps", "DaemonSet") => {
            if let Some(spec) = object.get_mut("spec") {
                daemon_set(spec);
            }
        }
        ("batch", "Job") => {
            if let Some(spec) = object.get_mut("spec") {
                job(spec);
            }
        }
        ("batch", "CronJob") => {
            if let Some(spec) = object.get_mut("spec").filter(|s| s.is_object()) {
                set(spec, "concurrencyPolicy", json!("Allow"));
                set(spec, "suspend", json!(false));
                set(spec, "successfulJobsHistoryLimit", json!(3));
                set(spec, "failedJobsHistoryLimit", json!(1));
                if let Some(template) = spec.get_mut("jobTemplate").and_then(|t| t.get_mut("spec")) {
                    job(template);
                }
            }
        }
        ("autoscaling", "HorizontalPodAutoscaler") => {
            if let Some(spec) = object.get_mut("spec").filter(|s| s.is_object()) {
                set(spec, "minReplicas", json!(1));
                // No metrics: 80 % of the pods' CPU requests, as Kubernetes defaults.
                set(
                    spec,
                    "metrics",
                    json!([{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}}]),
                );
            }
        }
        ("scheduling.k8s.io", "PriorityClass") => set(object, "preemptionPolicy", json!("PreemptLowerPriority")),
        ("networking.k8s.io", "NetworkPolicy") => {
            if let Some(spec) = object.get_mut("spec").filter(|s| s.is_object()) {
                network_policy(spec);
            }
        }
        _ => {}
    }
}

/// A NetworkPolicy: every pod of the namespace when no selector is given, the directions it
/// isolates (ingress always, egress when it has an egress rule), TCP for each port.
fn network_policy(spec: &mut Value) {
    set(spec, "podSelector", json!({}));
    let mut types = vec![json!("Ingress")];
    if spec.get("egress").and_then(Value::as_array).is_some_and(|e| !e.is_empty()) {
        types.push(json!("Egress"));
    }
    set(spec, "policyTypes", Value::Array(types));
    for direction in ["ingress", "egress"] {
        for rule in items(spec, direction) {
            for port in items(rule, "ports") {
                set(port, "protocol", json!("TCP"));
            }
        }
    }
}

/// The taints a node lifecycle controller puts on a node that is not ready or unreachable.
pub const TAINT_NOT_READY: &str = "node.kubernetes.io/not-ready";
pub const TAINT_UNREACHABLE: &str = "node.kubernetes.io/unreachable";

/// What kube-apiserver's admission adds to a Pod when it is created: the `default` service
/// account (ServiceAccount), and a toleration of the not-ready and unreachable taints for
/// `eviction_seconds` where the pod tolerates neither taint's NoExecute already
/// (DefaultTolerationSeconds: the cluster's eviction timeout, written into the pod).
pub fn admit_pod(pod: &mut Value, eviction_seconds: u32) {
    let Some(spec) = pod.get_mut("spec").filter(|s| s.is_object()) else {
        return;
    };
    set(spec, "serviceAccountName", json!("default"));
    for taint in [TAINT_NOT_READY, TAINT_UNREACHABLE] {
        if tolerates_no_execute(spec, taint) {
            continue;
        }
        let toleration = json!({"key": taint, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": eviction_seconds});
        match spec.get_mut("tolerations").and_then(Value::as_array_mut) {
            Some(list) => list.push(toleration),
            None => spec["tolerations"] = json!([toleration]),
        }
    }
}

/// Whether a pod spec has a toleration for the NoExecute effect of `taint` (by its key, or by
/// tolerating every key or every effect), as DefaultTolerationSeconds asks.
pub fn tolerates_no_execute(spec: &Value, taint: &str) -> bool {
    spec["tolerations"].as_array().into_iter().flatten().any(|t| {
        let key = t["key"].as_str().unwrap_or_default();
        let effect = t["effect"].as_str().unwrap_or_default();
        (key == taint || key.is_empty()) && (effect == "NoExecute" || effect.is_empty())
    })
}

/// The pull policy Kubernetes gives a container that names none: `Always` for an untagged or
/// `:latest` image, `IfNotPresent` for one with another tag or a digest.
pub fn image_pull_policy(image: &str) -> &'static str {
    let last = image.rsplit('/').next().unwrap_or(image);
    if image.contains('@') || (last.contains(':') && !last.ends_with(":latest")) {
        "IfNotPresent"
    } else {
        "Always"
    }
}

/// A pod template (of a Deployment or ReplicaSet) with its defaults: two templates that differ
/// only in defaults run the same pods.
pub fn pod_template(template: Option<&mut Value>) {
    pod_spec(template.and_then(|t| t.get_mut("spec")));
}

fn deployment(spec: &mut Value) {
    if !spec.is_object() {
        return;
    }
    set(spec, "replicas", json!(1));
    set(spec, "revisionHistoryLimit", json!(10));
    set(spec, "progressDeadlineSeconds", json!(600));
    if let Some(strategy) = place(spec, "strategy") {
        set(strategy, "type", json!("RollingUpdate"));
        if strategy["type"] == "RollingUpdate"
            && let Some(rolling) = place(strategy, "rollingUpdate")
        {
            set(rolling, "maxUnavailable", json!("25%"));
            set(rolling, "maxSurge", json!("25%"));
        }
    }
    pod_template(spec.get_mut("template"));
}

/// A DaemonSet's defaults: rolling updates one node at a time, without surge.
fn daemon_set(spec: &mut Value) {
    if !spec.is_object() {
        return;
    }
    set(spec, "revisionHistoryLimit", json!(10));
    if let Some(strategy) = place(spec, "updateStrategy") {
        set(strategy, "type", json!("RollingUpdate"));
        if strategy["type"] == "RollingUpdate"
            && let Some(rolling) = place(strategy, "rollingUpdate")
        {
            set(rolling, "maxUnavailable", json!(1));
            set(rolling, "maxSurge", json!(0));
        }
    }
    pod_template(spec.get_mut("template"));
}

/// A Job's defaults: one pod at a time, and one completion when neither count is given (a
/// parallelism alone makes a work queue, which has no completion count).
fn job(spec: &mut Value) {
    if !spec.is_object() {
        return;
    }
    if spec["completions"].is_null() && spec["parallelism"].is_null() {
        set(spec, "completions", json!(1));
    }
    set(spec, "parallelism", json!(1));
    set(spec, "backoffLimit", json!(6));
    set(spec, "completionMode", json!("NonIndexed"));
    set(spec, "suspend", json!(false));
    set(spec, "manualSelector", json!(false));
    set(spec, "podReplacementPolicy", json!("TerminatingOrFailed"));
    pod_template(spec.get_mut("template"));
}

/// The labels the API server puts on a Job's pod template (uid, name, uid, name); the first is
/// what its selector matches.
pub const JOB_LABELS: [&str; 4] = [
    "batch.kubernetes.io/controller-uid",
    "batch.kubernetes.io/job-name",
    "controller-uid",
    "job-name",
];

/// The labels a Job's selector matches and its pods carry, made from the Job's uid and name when
/// it is created (the API server's, so that a Job never adopts another's pods).
pub fn job_selector(job: &mut Value) {
    let (Some(uid), Some(name)) = (
        job["metadata"]["uid"].as_str().map(str::to_owned),
        job["metadata"]["name"].as_str().map(str::to_owned),
    ) else {
        return;
    };
    let Some(spec) = job.get_mut("spec").filter(|s| s.is_object()) else {
        return;
    };
    if spec["manualSelector"] == true {
        return;
    }
    spec["selector"] = json!({"matchLabels": {JOB_LABELS[0]: uid}});
    if let Some(template) = place(spec, "template")
        && let Some(meta) = place(template, "metadata")
        && let Some(pod_labels) = place(meta, "labels")
    {
        for (key, value) in JOB_LABELS.iter().zip([&uid, &name, &uid, &name]) {
            set(pod_labels, key, json!(value));
        }
    }
}

fn pod(pod: &mut Value) {
    let Some(spec) = pod.get_mut("spec").filter(|s| s.is_object()) else {
        return;
    };
    set(spec, "enableServiceLinks", json!(true));
    // A container that sets a limit but no request requests its limit.
    for list in ["initContainers", "containers"] {
        for c in items(spec, list) {
            let Some(resources) = c.get_mut("resources").filter(|r| r.is_object()) else {
                continue;
            };
            let Some(limits) = resources["limits"].as_object().cloned() else {
                continue;
            };
            if let Some(requests) = place(resources, "requests") {
                for (resource, limit) in limits {
                    set(requests, &resource, limit);
                }
            }
        }
    }
    pod_spec(Some(spec));
}

fn pod_spec(spec: Option<&mut Value>) {
    let Some(spec) = spec.filter(|s| s.is_object()) else {
        return;
    };
    set(spec, "restartPolicy", json!("Always"));
    set(spec, "terminationGracePeriodSeconds", json!(30));
    set(spec, "dnsPolicy", json!("ClusterFirst"));
    set(spec, "securityContext", json!({}));
    set(spec, "schedulerName", json!("default-scheduler"));
    let host_network = spec["hostNetwork"] == true;
    for list in ["initContainers", "containers"] {
        for c in items(spec, list) {
            container(c, host_network);
        }
    }
    for v in items(spec, "volumes") {
        volume(v);
    }
}

fn container(c: &mut Value, host_network: bool) {
    if !c.is_object() {
        return;
    }
    if let Some(image) = c["image"].as_str() {
        let policy = image_pull_policy(image);
        set(c, "imagePullPolicy", json!(policy));
    }
    set(c, "terminationMessagePath", json!("/dev/termination-log"));
    set(c, "terminationMessagePolicy", json!("File"));
    set(c, "resources", json!({}));
    for p in items(c, "ports") {
        set(p, "protocol", json!("TCP"));
        if host_network && let Some(port) = p.get("containerPort").cloned() {
            set(p, "hostPort", port);
        }
    }
    for e in items(c, "env") {
        if let Some(field) = at(e, &["valueFrom", "fieldRef"]) {
            set(field, "apiVersion", json!("v1"));
        }
    }
    for probe_field in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(p) = c.get_mut(probe_field) {
            probe(p);
        }
    }
    for hook in ["postStart", "preStop"] {
        if let Some(h) = at(c, &["lifecycle", hook, "httpGet"]) {
            http_get(h);
        }
    }
}

fn probe(p: &mut Value) {
    if !p.is_object() {
        return;
    }
    set(p, "timeoutSeconds", json!(1));
    set(p, "periodSeconds", json!(10));
    set(p, "successThreshold", json!(1));
    set(p, "failureThreshold", json!(3));
    if let Some(h) = p.get_mut("httpGet") {
        http_get(h);
    }
    if let Some(g) = p.get_mut("grpc") {
        set(g, "service", json!(""));
    }
}

fn http_get(h: &mut Value) {
    set(h, "path", json!("/"));
    set(h, "scheme", json!("HTTP"));
}

fn volume(v: &mut Value) {
    let Some(fields) = v.as_object() else {
        return;
    };
    // A volume that names no source is an emptyDir.
    if fields.keys().all(|k| k == "name") {
        v["emptyDir"] = json!({});
        return;
    }
    for source in ["secret", "configMap", "downwardAPI", "projected"] {
        if let Some(s) = v.get_mut(source) {
            set(s, "defaultMode", json!(VOLUME_FILE_MODE));
        }
    }
    if let Some(d) = v.get_mut("downwardAPI") {
        field_refs(d);
    }
    if let Some(projected) = v.get_mut("projected") {
        for s in items(projected, "sources") {
            if let Some(t) = s.get_mut("serviceAccountToken") {
                set(t, "expirationSeconds", json!(3600));
            }
            if let Some(d) = s.get_mut("downwardAPI") {
                field_refs(d);
            }
        }
    }
    if let Some(h) = v.get_mut("hostPath") {
        set(h, "type", json!(""));
    }
}

/// The `fieldRef`s of a downward API source's items read `v1` fields.
fn field_refs(downward: &mut Value) {
    for item in items(downward, "items") {
        if let Some(f) = item.get_mut("fieldRef") {
            set(f, "apiVersion", json!("v1"));
        }
    }
}

fn service(spec: &mut Value) {
    if !spec.is_object() {
        return;
    }
    set(spec, "type", json!("ClusterIP"));
    set(spec, "sessionAffinity", json!("None"));
    if spec["sessionAffinity"] == "ClientIP"
        && let Some(client) = place(spec, "sessionAffinityConfig").and_then(|c| place(c, "clientIP"))
    {
        set(client, "timeoutSeconds", json!(10800));
    }
    let kind = spec["type"].as_str().unwrap_or("ClusterIP").to_owned();
    if kind != "ExternalName" {
        set(spec, "internalTrafficPolicy", json!("Cluster"));
    }
    if kind == "NodePort" || kind == "LoadBalancer" {
        set(spec, "externalTrafficPolicy", json!("Cluster"));
    }
    if kind == "LoadBalancer" {
        set(spec, "allocateLoadBalancerNodePorts", json!(true));
    }
    for p in items(spec, "ports") {
        set(p, "protocol", json!("TCP"));
        let unset = match &p["targetPort"] {
            Value::Null => true,
            Value::Number(n) => n.as_i64() == Some(0),
            Value::String(s) => s.is_empty(),
            _ => false,
        };
        if unset && let Some(port) = p.get("port").cloned() {
            p["targetPort"] = port;
        }
    }
}

// Nothing here indexes a `Value` mutably: serde_json's `IndexMut` inserts what it does not
// find, which would add fields the object never had.

/// Sets `field` of the mapping `at` to `value` unless it is there. A value of another type is
/// left as it is, for validation to report.
fn set(at: &mut Value, field: &str, value: Value) {
    if let Some(m) = at.as_object_mut() {
        m.entry(field).or_insert(value);
    }
}

/// The mapping `field` of the mapping `at`, made empty if it is missing; `None` if either is
/// something else.
fn place<'a>(at: &'a mut Value, field: &str) -> Option<&'a mut Value> {
    let m = at.as_object_mut()?;
    let v = m.entry(field).or_insert_with(|| Value::Object(Map::new()));
    v.is_object().then_some(v)
}

/// The value at `path` under `at`, if every step is there.
fn at<'a>(mut v: &'a mut Value, path: &[&str]) -> Option<&'a mut Value> {
    for field in path {
        v = v.get_mut(*field)?;
    }
    Some(v)
}

/// The elements of the list `field` of `at` (none if it is missing or not a list).
fn items<'a>(at: &'a mut Value, field: &str) -> impl Iterator<Item = &'a mut Value> {
    at.get_mut(field).and_then(Value::as_array_mut).into_iter().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::by_name;

    fn defaulted(kind: &str, mut v: Value) -> Value {
        apply(by_name(kind).unwrap(), &mut v);
        v
    }

    #[test]
    fn a_network_policy_selects_every_pod_isolates_as_its_rules_say_and_ports_are_tcp() {
        let p = defaulted(
            "networkpolicies",
            json!({"spec": {"ingress": [{"ports": [{"port": 80}, {"port": 53, "protocol": "UDP"}]}]}}),
        );
        assert_eq!(p["spec"]["podSelector"], json!({}));
        assert_eq!(p["spec"]["policyTypes"], json!(["Ingress"]));
        assert_eq!(
            p["spec"]["ingress"][0]["ports"],
            json!([{"port": 80, "protocol": "TCP"}, {"port": 53, "protocol": "UDP"}])
        );
        let p = defaulted(
            "networkpolicies",
            json!({"spec": {"podSelector": {"matchLabels": {"app": "db"}}, "egress": [{}]}}),
        );
        assert_eq!(p["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
        // An empty list of egress rules is no egress rule, as Kubernetes counts them.
        let p = defaulted("networkpolicies", json!({"spec": {"egress": []}}));
        assert_eq!(p["spec"]["policyTypes"], json!(["Ingress"]));
        let written = json!({"spec": {"podSelector": {}, "policyTypes": ["Egress"]}});
        assert_eq!(defaulted("networkpolicies", written.clone()), written);
    }

    #[test]
    fn a_deployment_gets_the_api_servers_defaults_once() {
        let d = json!({"metadata": {"name": "web"}, "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {
                "containers": [{"name": "web", "image": "nginx:1.27",
                    "ports": [{"containerPort": 80}],
                    "env": [{"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
                    "readinessProbe": {"httpGet": {"port": 80}}}],
                "volumes": [{"name": "scratch"}, {"name": "conf", "configMap": {"name": "web"}}]}}}});
        let once = defaulted("deployment", d);
        assert_eq!(once, defaulted("deployment", once.clone()), "idempotent");
        let spec = &once["spec"];
        assert_eq!(spec["replicas"], 1);
        assert_eq!(
            spec["strategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}})
        );
        assert_eq!(spec["revisionHistoryLimit"], 10);
        assert_eq!(spec["progressDeadlineSeconds"], 600);
        let pod = &spec["template"]["spec"];
        assert_eq!(pod["restartPolicy"], "Always");
        assert_eq!(pod["terminationGracePeriodSeconds"], 30);
        assert_eq!(pod["dnsPolicy"], "ClusterFirst");
        assert_eq!(pod["schedulerName"], "default-scheduler");
        let c = &pod["containers"][0];
        assert_eq!(c["imagePullPolicy"], "IfNotPresent");
        assert_eq!(c["ports"][0]["protocol"], "TCP");
        assert!(c["ports"][0].get("hostPort").is_none());
        assert_eq!(c["env"][0]["valueFrom"]["fieldRef"]["apiVersion"], "v1");
        assert_eq!(
            c["readinessProbe"],
            json!({"httpGet": {"port": 80, "path": "/", "scheme": "HTTP"}, "timeoutSeconds": 1,
                   "periodSeconds": 10, "successThreshold": 1, "failureThreshold": 3})
        );
        assert_eq!(pod["volumes"][0], json!({"name": "scratch", "emptyDir": {}}));
        assert_eq!(pod["volumes"][1]["configMap"]["defaultMode"], 420);
        assert!(pod["volumes"][1].get("secret").is_none(), "no other source appears");
    }

    #[test]
    fn what_is_set_is_kept_and_recreate_gets_no_rolling_parameters() {
        let d = json!({"spec": {"replicas": 0, "strategy": {"type": "Recreate"}, "template": {"spec": {
            "restartPolicy": "Never", "containers": [{"name": "a", "image": "x", "imagePullPolicy": "Never"}]}}}});
        let d = defaulted("deployment", d);
        assert_eq!(d["spec"]["replicas"], 0);
        assert_eq!(d["spec"]["strategy"], json!({"type": "Recreate"}));
        assert_eq!(d["spec"]["template"]["spec"]["restartPolicy"], "Never");
        assert_eq!(d["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"], "Never");
        // A field of the wrong type is left for validation.
        let odd = defaulted("deployment", json!({"spec": {"strategy": "fast"}}));
        assert_eq!(odd["spec"]["strategy"], "fast");
    }

    #[test]
    fn services_pods_and_the_rest() {
        let s = defaulted(
            "service",
            json!({"spec": {"type": "NodePort", "ports": [{"port": 80}, {"port": 53, "protocol": "UDP", "targetPort": "dns"}]}}),
        );
        assert_eq!(s["spec"]["sessionAffinity"], "None");
        assert_eq!(s["spec"]["externalTrafficPolicy"], "Cluster");
        assert_eq!(s["spec"]["internalTrafficPolicy"], "Cluster");
        assert_eq!(s["spec"]["ports"][0], json!({"port": 80, "protocol": "TCP", "targetPort": 80}));
        assert_eq!(s["spec"]["ports"][1]["targetPort"], "dns");
        let p = defaulted(
            "pod",
            json!({"spec": {"hostNetwork": true, "containers": [{"name": "a", "image": "redis",
            "ports": [{"containerPort": 6379}], "resources": {"limits": {"cpu": "1"}}}]}}),
        );
        let c = &p["spec"]["containers"][0];
        assert_eq!(c["imagePullPolicy"], "Always");
        assert_eq!(c["ports"][0]["hostPort"], 6379);
        assert_eq!(c["resources"]["requests"]["cpu"], "1", "a limit without a request is requested");
        assert_eq!(p["spec"]["enableServiceLinks"], true);
        assert_eq!(defaulted("secret", json!({"data": {}}))["type"], "Opaque");
        assert_eq!(
            defaulted("namespace", json!({"metadata": {"name": "shop"}}))["metadata"]["labels"]["kubernetes.io/metadata.name"],
            "shop"
        );
    }

    #[test]
    fn admission_adds_the_service_account_and_the_eviction_tolerations() {
        let mut p = json!({"spec": {"containers": []}});
        admit_pod(&mut p, 300);
        assert_eq!(p["spec"]["serviceAccountName"], "default");
        assert_eq!(
            p["spec"]["tolerations"],
            json!([
                {"key": TAINT_NOT_READY, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
                {"key": TAINT_UNREACHABLE, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}
            ])
        );
        // A pod's own tolerations of either taint (or of every NoExecute taint) are left as they are.
        let mut own = json!({"spec": {"serviceAccountName": "builder", "tolerations": [
            {"key": TAINT_UNREACHABLE, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 15},
            {"key": "dedicated", "operator": "Equal", "value": "db", "effect": "NoSchedule"}]}});
        admit_pod(&mut own, 60);
        assert_eq!(own["spec"]["serviceAccountName"], "builder");
        let tolerations = own["spec"]["tolerations"].as_array().unwrap();
        assert_eq!(tolerations.len(), 3);
        assert_eq!(tolerations[0]["tolerationSeconds"], 15);
        assert_eq!(tolerations[2]["key"], TAINT_NOT_READY);
        assert_eq!(tolerations[2]["tolerationSeconds"], 60);
        let mut everything = json!({"spec": {"tolerations": [{"operator": "Exists"}]}});
        admit_pod(&mut everything, 300);
        assert_eq!(everything["spec"]["tolerations"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn pull_policies() {
        assert_eq!(image_pull_policy("redis"), "Always");
        assert_eq!(image_pull_policy("redis:latest"), "Always");
        assert_eq!(image_pull_policy("redis:7"), "IfNotPresent");
        assert_eq!(image_pull_policy("127.0.0.1:5000/app"), "Always");
        assert_eq!(image_pull_policy("127.0.0.1:5000/app:2"), "IfNotPresent");
        assert_eq!(image_pull_policy("app@sha256:abc"), "IfNotPresent");
    }
}
