//! The value checks Kubernetes' API server makes beyond types, for the kinds people write:
//! label syntax, container and port rules, selectors that match their templates, Service ports.
//! A manifest Kubernetes would refuse is refused here, before it reaches the cluster.

use std::collections::HashSet;

use capstan_api::names;
use capstan_api::selector::Selector;
use serde_json::Value;

use crate::problem::{FieldPath, ProblemCode};

/// One refused value: where, what kind of problem, and why.
#[derive(Clone, Debug, PartialEq)]
pub struct Finding {
    pub path: FieldPath,
    pub code: ProblemCode,
    pub message: String,
}

#[derive(Default)]
pub(crate) struct Findings(Vec<Finding>);

impl Findings {
    pub(crate) fn invalid(&mut self, path: FieldPath, message: impl Into<String>) {
        self.0.push(Finding {
            path,
            code: ProblemCode::InvalidValue,
            message: message.into(),
        });
    }

    pub(crate) fn missing(&mut self, path: FieldPath, message: impl Into<String>) {
        self.0.push(Finding {
            path,
            code: ProblemCode::MissingField,
            message: message.into(),
        });
    }
}

/// Checks an object of `kind` that already has the right shape and types.
pub fn check(kind: &str, object: &Value) -> Vec<Finding> {
    let mut f = Findings::default();
    let root = FieldPath::default();
    check_meta(&mut f, &root.key("metadata"), &object["metadata"]);
    let spec = root.key("spec");
    match kind {
        "Pod" => check_pod_spec(&mut f, &spec, &object["spec"], None),
        "Deployment" | "ReplicaSet" | "DaemonSet" | "StatefulSet" => check_workload(&mut f, kind, &spec, &object["spec"]),
        "PersistentVolumeClaim" => check_claim_spec(&mut f, &spec, &object["spec"]),
        "PersistentVolume" => check_volume(&mut f, &spec, &object["spec"]),
        "StorageClass" => check_storage_class(&mut f, &root, object),
        "Job" => check_job(&mut f, &spec, &object["spec"]),
        "CronJob" => check_cron_job(&mut f, &spec, &object["spec"]),
        "HorizontalPodAutoscaler" => check_autoscaler(&mut f, &spec, &object["spec"]),
        "PodDisruptionBudget" => check_pdb(&mut f, &spec, &object["spec"]),
        "Service" => check_service(&mut f, &spec, &object["spec"]),
        "Ingress" => crate::ingress::check_ingress(&mut f, &spec, &object["spec"]),
        "IngressClass" => crate::ingress::check_ingress_class(&mut f, &spec, &object["spec"]),
        "NetworkPolicy" => crate::networkpolicy::check_network_policy(&mut f, &spec, &object["spec"]),
        "Gateway" => crate::ingress::check_gateway(&mut f, &spec, &object["spec"]),
        "HTTPRoute" => crate::ingress::check_http_route(&mut f, &spec, &object["spec"]),
        "Role" | "ClusterRole" => crate::rbac::check_role(&mut f, &root, object, kind == "ClusterRole"),
        "RoleBinding" | "ClusterRoleBinding" => crate::rbac::check_binding(&mut f, &root, object, kind == "ClusterRoleBinding"),
        "ConfigMap" => {
            check_config_keys(&mut f, &root.key("data"), &object["data"]);
            check_config_keys(&mut f, &root.key("binaryData"), &object["binaryData"]);
            check_data_size(&mut f, &root.key("data"), &object["data"], &object["binaryData"]);
        }
        "Secret" => {
            check_config_keys(&mut f, &root.key("data"), &object["data"]);
            check_config_keys(&mut f, &root.key("stringData"), &object["stringData"]);
            check_data_size(&mut f, &root.key("data"), &object["stringData"], &object["data"]);
        }
        _ => {}
    }
    f.0
}

fn check_meta(f: &mut Findings, path: &FieldPath, meta: &Value) {
    if let Some(labels) = meta["labels"].as_object() {
        check_labels(f, &path.key("labels"), labels);
    }
    if let Some(annotations) = meta["annotations"].as_object() {
        for key in annotations.keys() {
            if let Some(e) = names::qualified_name(key) {
                f.invalid(path.key("annotations").key(key), format!("invalid annotation key: {e}"));
            }
        }
    }
    if meta.get("generateName").is_some() && meta.get("name").is_none() {
        f.invalid(
            path.key("generateName"),
            "objects from Git need a fixed metadata.name; generateName is not supported",
        );
    }
}

fn check_labels(f: &mut Findings, path: &FieldPath, labels: &serde_json::Map<String, Value>) {
    for (key, value) in labels {
        if let Some(e) = names::qualified_name(key) {
            f.invalid(path.key(key), format!("invalid label key: {e}"));
        }
        if let Some(e) = value.as_str().and_then(names::label_value) {
            f.invalid(path.key(key), format!("invalid label value: {e}"));
        }
    }
}

fn check_config_keys(f: &mut Findings, path: &FieldPath, data: &Value) {
    let Some(data) = data.as_object() else { return };
    for key in data.keys() {
        let ok = !key.is_empty()
            && key.len() <= 253
            && key.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && key != "."
            && key != "..";
        if !ok {
            f.invalid(
                path.key(key),
                format!("a valid config key must consist of alphanumeric characters, '-', '_' or '.', got {key:?}"),
            );
        }
    }
}

/// The most a ConfigMap's or Secret's values may hold in all (Kubernetes' MaxSecretSize).
pub const MAX_DATA_BYTES: usize = 1 << 20;

/// Refuses values that add up to more than [`MAX_DATA_BYTES`]: `text` holds them as written,
/// `base64` encoded (counted as the bytes they decode to).
fn check_data_size(f: &mut Findings, path: &FieldPath, text: &Value, base64: &Value) {
    fn values(v: &Value) -> impl Iterator<Item = &str> {
        v.as_object().into_iter().flat_map(|m| m.values()).filter_map(Value::as_str)
    }
    let written: usize = values(text).map(str::len).sum();
    let decoded: usize = values(base64)
        .map(|v| (v.len() / 4 * 3).saturating_sub(v.bytes().rev().take_while(|b| *b == b'=').count()))
        .sum();
    if written + decoded > MAX_DATA_BYTES {
        f.invalid(
            path.clone(),
            format!(
                "Too long: the values hold {} bytes; Kubernetes allows at most {MAX_DATA_BYTES} (1 MiB)",
                written + decoded
            ),
        );
    }
}

/// Reports `field` of `object` (an integer) when it is below `min`, in the API server's words.
fn at_least(f: &mut Findings, path: &FieldPath, object: &Value, field: &str, min: i64) {
    if let Some(n) = object[field].as_i64()
        && n < min
    {
        let rule = if min == 0 {
            "must be greater than or equal to 0".to_owned()
        } else if min == 1 {
            "must be greater than 0".to_owned()
        } else {
            format!("must be greater than or equal to {min}")
        };
        f.invalid(path.key(field), format!("{rule} (got {n})"));
    }
}

/// An int-or-percent field (`maxSurge: 25%`, `maxUnavailable: 1`): non-negative, a percent at
/// most 100 where `max_percent` says so; returns whether it is zero.
fn int_or_percent(f: &mut Findings, path: FieldPath, v: &Value, max_percent: bool) -> bool {
    match v {
        Value::Number(n) => {
            let n = n.as_i64().unwrap_or(-1);
            if n < 0 {
                f.invalid(path, format!("must be greater than or equal to 0 (got {n})"));
            }
            n == 0
        }
        Value::String(s) => match s.strip_suffix('%').and_then(|p| p.parse::<i64>().ok()) {
            Some(p) if p < 0 => {
                f.invalid(path, format!("must be greater than or equal to 0 (got {s:?})"));
                false
            }
            Some(p) if max_percent && p > 100 => {
                f.invalid(path, format!("must not be greater than 100% (got {s:?})"));
                false
            }
            Some(p) => p == 0,
            None => {
                f.invalid(
                    path,
                    format!("a valid percent string must be a numeric string followed by an ending '%' (got {s:?})"),
                );
                false
            }
        },
        _ => false,
    }
}

fn check_workload(f: &mut Findings, kind: &str, spec_path: &FieldPath, spec: &Value) {
    at_least(f, spec_path, spec, "replicas", 0);
    at_least(f, spec_path, spec, "minReadySeconds", 0);
    if kind == "Deployment" {
        at_least(f, spec_path, spec, "revisionHistoryLimit", 0);
        at_least(f, spec_path, spec, "progressDeadlineSeconds", 1);
        if let (Some(deadline), Some(ready)) = (spec["progressDeadlineSeconds"].as_i64(), spec["minReadySeconds"].as_i64())
            && deadline > 0
            && deadline <= ready
        {
            f.invalid(spec_path.key("progressDeadlineSeconds"), "must be greater than minReadySeconds");
        }
        let rolling = &spec["strategy"]["rollingUpdate"];
        if rolling.is_object() {
            let rp = spec_path.key("strategy").key("rollingUpdate");
            let surge_zero = int_or_percent(f, rp.key("maxSurge"), &rolling["maxSurge"], false);
            let unavailable_zero = int_or_percent(f, rp.key("maxUnavailable"), &rolling["maxUnavailable"], true);
            if surge_zero && unavailable_zero {
                f.invalid(rp.key("maxUnavailable"), "may not be 0 when `maxSurge` is 0");
            }
        }
    }
    if kind == "DaemonSet" {
        at_least(f, spec_path, spec, "revisionHistoryLimit", 0);
        let strategy = spec_path.key("updateStrategy");
        match spec["updateStrategy"]["type"].as_str() {
            None | Some("RollingUpdate" | "OnDelete") => {}
            Some(t) => f.invalid(
                strategy.key("type"),
                format!("unsupported value {t:?}: supported values: \"OnDelete\", \"RollingUpdate\""),
            ),
        }
        let rolling = &spec["updateStrategy"]["rollingUpdate"];
        if rolling.is_object() {
            let rp = strategy.key("rollingUpdate");
            let surge_zero = rolling["maxSurge"].is_null() || int_or_percent(f, rp.key("maxSurge"), &rolling["maxSurge"], true);
            let unavailable_zero = int_or_percent(f, rp.key("maxUnavailable"), &rolling["maxUnavailable"], true);
            if surge_zero && unavailable_zero && !rolling["maxUnavailable"].is_null() {
                f.invalid(rp.key("maxUnavailable"), "may not be 0 when `maxSurge` is 0");
            }
        }
    }
    if kind == "StatefulSet" {
        check_stateful_set(f, spec_path, spec);
    }
    let selector = &spec["selector"];
    let has_selector = selector["matchLabels"].as_object().is_some_and(|m| !m.is_empty())
        || selector["matchExpressions"].as_array().is_some_and(|m| !m.is_empty());
    if !has_selector {
        f.missing(
            spec_path.key("selector"),
            "a selector with matchLabels or matchExpressions is required",
        );
    }
    let template_path = spec_path.key("template");
    let labels = spec["template"]["metadata"]["labels"].as_object();
    if let Some(tl) = labels {
        check_labels(f, &template_path.key("metadata").key("labels"), tl);
    }
    if has_selector && !Selector::from_json(selector).matches_json(spec["template"]["metadata"].get("labels")) {
        f.invalid(
            template_path.key("metadata").key("labels"),
            "`selector` does not match template `labels`",
        );
    }
    if kind == "Deployment"
        && let Some(t) = spec["strategy"]["type"].as_str()
        && !matches!(t, "RollingUpdate" | "Recreate")
    {
        f.invalid(
            spec_path.key("strategy").key("type"),
            format!("unsupported value {t:?}: supported values: \"Recreate\", \"RollingUpdate\""),
        );
    }
    // A StatefulSet's claim templates are volumes of its pods.
    let mut pod_spec = spec["template"]["spec"].clone();
    let mut volumes = pod_spec["volumes"].as_array().cloned().unwrap_or_default();
    for name in spec["volumeClaimTemplates"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["metadata"]["name"].as_str())
    {
        volumes.push(serde_json::json!({"name": name, "persistentVolumeClaim": {"claimName": name}}));
    }
    if !volumes.is_empty() && pod_spec.is_object() {
        pod_spec["volumes"] = Value::Array(volumes);
    }
    check_pod_spec(f, &template_path.key("spec"), &pod_spec, Some("Always"));
}

const ACCESS_MODES: [&str; 4] = ["ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod"];

fn one_of(f: &mut Findings, path: FieldPath, value: &Value, allowed: &[&str]) {
    if let Some(v) = value.as_str()
        && !allowed.contains(&v)
    {
        let list: Vec<String> = allowed.iter().map(|a| format!("{a:?}")).collect();
        f.invalid(path, format!("unsupported value {v:?}: supported values: {}", list.join(", ")));
    }
}

fn check_access_modes(f: &mut Findings, path: &FieldPath, spec: &Value) {
    let modes = spec["accessModes"].as_array();
    if modes.is_none_or(|m| m.is_empty()) {
        f.missing(path.key("accessModes"), "at least 1 access mode is required");
    }
    for (i, m) in modes.into_iter().flatten().enumerate() {
        one_of(f, path.key("accessModes").index(i), m, &ACCESS_MODES);
    }
}

fn check_storage_quantity(f: &mut Findings, path: FieldPath, value: &Value, what: &str) {
    match capstan_api::quantity::Quantity::from_json(value) {
        None if value.is_null() => f.missing(path, format!("{what} must be specified")),
        Some(q) if q.milli_value() > 0 => {}
        _ => f.invalid(path, format!("{what} must be a quantity greater than zero (e.g. 1Gi)")),
    }
}

/// A claim (also a StatefulSet's claim template): access modes and a storage request.
fn check_claim_spec(f: &mut Findings, path: &FieldPath, spec: &Value) {
    check_access_modes(f, path, spec);
    check_storage_quantity(
        f,
        path.key("resources").key("requests").key("storage"),
        &spec["resources"]["requests"]["storage"],
        "a storage request",
    );
    one_of(f, path.key("volumeMode"), &spec["volumeMode"], &["Filesystem", "Block"]);
}

/// A PersistentVolume: capacity, access modes, a reclaim policy, and exactly one source that a
/// node can mount (hostPath or local).
fn check_volume(f: &mut Findings, path: &FieldPath, spec: &Value) {
    check_access_modes(f, path, spec);
    check_storage_quantity(f, path.key("capacity").key("storage"), &spec["capacity"]["storage"], "capacity");
    one_of(
        f,
        path.key("persistentVolumeReclaimPolicy"),
        &spec["persistentVolumeReclaimPolicy"],
        &["Retain", "Delete", "Recycle"],
    );
    let sources: Vec<&str> = ["hostPath", "local"].into_iter().filter(|k| spec.get(*k).is_some()).collect();
    match sources.as_slice() {
        [] => f.missing(
            path.clone(),
            "a volume source is required: Capstan's nodes mount hostPath and local volumes",
        ),
        [one] => {
            let p = &spec[*one]["path"];
            if !p.as_str().is_some_and(|p| p.starts_with('/')) {
                f.invalid(path.key(one).key("path"), "must be an absolute path");
            }
            if *one == "local" && spec["nodeAffinity"]["required"].is_null() {
                f.missing(path.key("nodeAffinity"), "a local volume needs nodeAffinity.required");
            }
        }
        _ => f.invalid(path.key(sources[1]), "may not specify more than 1 volume type"),
    }
}

fn check_storage_class(f: &mut Findings, root: &FieldPath, class: &Value) {
    if class["provisioner"].as_str().is_none_or(str::is_empty) {
        f.missing(root.key("provisioner"), "a provisioner is required");
    }
    one_of(f, root.key("reclaimPolicy"), &class["reclaimPolicy"], &["Delete", "Retain"]);
    one_of(
        f,
        root.key("volumeBindingMode"),
        &class["volumeBindingMode"],
        &["Immediate", "WaitForFirstConsumer"],
    );
}

/// A StatefulSet's own fields: policies, the update's partition and budget, and claim
/// templates whose names are their own (a template volume of the same name would be replaced
/// without a word in Kubernetes; here it is an error).
fn check_stateful_set(f: &mut Findings, path: &FieldPath, spec: &Value) {
    at_least(f, path, spec, "revisionHistoryLimit", 0);
    one_of(
        f,
        path.key("podManagementPolicy"),
        &spec["podManagementPolicy"],
        &["OrderedReady", "Parallel"],
    );
    let strategy = path.key("updateStrategy");
    one_of(
        f,
        strategy.key("type"),
        &spec["updateStrategy"]["type"],
        &["OnDelete", "RollingUpdate"],
    );
    let rolling = &spec["updateStrategy"]["rollingUpdate"];
    if rolling.is_object() {
        let rp = strategy.key("rollingUpdate");
        at_least(f, &rp, rolling, "partition", 0);
        if !rolling["maxUnavailable"].is_null() && int_or_percent(f, rp.key("maxUnavailable"), &rolling["maxUnavailable"], true) {
            f.invalid(rp.key("maxUnavailable"), "must be greater than 0");
        }
    }
    let policy = path.key("persistentVolumeClaimRetentionPolicy");
    for field in ["whenDeleted", "whenScaled"] {
        one_of(
            f,
            policy.key(field),
            &spec["persistentVolumeClaimRetentionPolicy"][field],
            &["Retain", "Delete"],
        );
    }
    if let Some(start) = spec["ordinals"]["start"].as_i64()
        && start < 0
    {
        f.invalid(
            path.key("ordinals").key("start"),
            format!("must be greater than or equal to 0 (got {start})"),
        );
    }
    let volumes: Vec<&str> = spec["template"]["spec"]["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["name"].as_str())
        .collect();
    let templates = path.key("volumeClaimTemplates");
    let mut seen = HashSet::new();
    for (i, t) in spec["volumeClaimTemplates"].as_array().into_iter().flatten().enumerate() {
        let tp = templates.index(i);
        match t["metadata"]["name"].as_str() {
            None => f.missing(tp.key("metadata").key("name"), "a claim template needs a name"),
            Some(n) => {
                if let Some(e) = names::dns1123_label(n) {
                    f.invalid(tp.key("metadata").key("name"), e);
                }
                if !seen.insert(n) {
                    f.invalid(tp.key("metadata").key("name"), format!("Duplicate value: {n:?}"));
                }
                if volumes.contains(&n) {
                    f.invalid(
                        tp.key("metadata").key("name"),
                        format!("the template's volume {n:?} has the same name: rename one (the claim would replace the volume)"),
                    );
                }
            }
        }
        check_claim_spec(f, &tp.key("spec"), &t["spec"]);
    }
}

/// A PodDisruptionBudget: one of minAvailable and maxUnavailable (a count or a percentage), and
/// a valid unhealthy-pod policy.
fn check_pdb(f: &mut Findings, path: &FieldPath, spec: &Value) {
    let (min, max) = (&spec["minAvailable"], &spec["maxUnavailable"]);
    if !min.is_null() && !max.is_null() {
        f.invalid(path.key("minAvailable"), "minAvailable and maxUnavailable cannot be both set");
    }
    if !min.is_null() {
        int_or_percent(f, path.key("minAvailable"), min, true);
    }
    if !max.is_null() {
        int_or_percent(f, path.key("maxUnavailable"), max, true);
    }
    if let Some(policy) = spec["unhealthyPodEvictionPolicy"].as_str()
        && !matches!(policy, "IfHealthyBudget" | "AlwaysAllow")
    {
        f.invalid(
            path.key("unhealthyPodEvictionPolicy"),
            format!("unsupported value {policy:?}: supported values: \"AlwaysAllow\", \"IfHealthyBudget\""),
        );
    }
}

/// A Job as the API server checks it: counts not negative, a deadline above zero, the Indexed
/// mode's rules, a template whose pods end (restartPolicy OnFailure or Never), no selector of
/// its own unless `manualSelector` says so (the API server makes one from the Job's uid).
fn check_job(f: &mut Findings, path: &FieldPath, spec: &Value) {
    for field in ["parallelism", "completions", "backoffLimit", "ttlSecondsAfterFinished"] {
        at_least(f, path, spec, field, 0);
    }
    at_least(f, path, spec, "activeDeadlineSeconds", 1);
    match spec["completionMode"].as_str() {
        None | Some("NonIndexed") => {}
        Some("Indexed") => {
            if spec["completions"].is_null() {
                f.missing(path.key("completions"), "when completionMode is Indexed, completions is required");
            }
            if spec["completions"].as_i64().is_some_and(|c| c > 100_000) {
                f.invalid(
                    path.key("completions"),
                    "must be less than or equal to 100000 when completionMode is Indexed",
                );
            }
        }
        Some(other) => f.invalid(
            path.key("completionMode"),
            format!("unsupported value {other:?}: supported values: \"NonIndexed\", \"Indexed\""),
        ),
    }
    if !spec["selector"].is_null() && spec["manualSelector"] != true {
        f.invalid(
            path.key("selector"),
            "`selector` will be auto-generated: leave it out, or set manualSelector: true",
        );
    }
    let template = path.key("template");
    if let Some(labels) = spec["template"]["metadata"]["labels"].as_object() {
        check_labels(f, &template.key("metadata").key("labels"), labels);
    }
    let restart = &spec["template"]["spec"]["restartPolicy"];
    match restart.as_str() {
        Some("OnFailure" | "Never") => {}
        Some(other) => f.invalid(
            template.key("spec").key("restartPolicy"),
            format!("unsupported value {other:?}: supported values: \"OnFailure\", \"Never\""),
        ),
        None => f.missing(
            template.key("spec").key("restartPolicy"),
            "a Job's pods must end: restartPolicy OnFailure or Never",
        ),
    }
    check_pod_spec(f, &template.key("spec"), &spec["template"]["spec"], None);
}

/// A CronJob: a schedule cron can read, a time zone the system knows, a known concurrency
/// policy, counts not negative, and a Job template that is a valid Job.
fn check_cron_job(f: &mut Findings, path: &FieldPath, spec: &Value) {
    match spec["schedule"].as_str() {
        Some(text) => {
            if let Err(e) = capstan_api::cron::Schedule::parse(text) {
                f.invalid(path.key("schedule"), format!("invalid schedule {text:?}: {e}"));
            }
        }
        None => f.missing(path.key("schedule"), "a schedule is required"),
    }
    if let Some(zone) = spec["timeZone"].as_str()
        && jiff::tz::db().get(zone).is_err()
    {
        f.invalid(
            path.key("timeZone"),
            format!("unknown time zone {zone:?}: use an IANA name such as \"Europe/Berlin\" or \"Etc/UTC\""),
        );
    }
    if let Some(p) = spec["concurrencyPolicy"].as_str()
        && !matches!(p, "Allow" | "Forbid" | "Replace")
    {
        f.invalid(
            path.key("concurrencyPolicy"),
            format!("unsupported value {p:?}: supported values: \"Allow\", \"Forbid\", \"Replace\""),
        );
    }
    for field in ["startingDeadlineSeconds", "successfulJobsHistoryLimit", "failedJobsHistoryLimit"] {
        at_least(f, path, spec, field, 0);
    }
    let template = path.key("jobTemplate");
    if let Some(labels) = spec["jobTemplate"]["metadata"]["labels"].as_object() {
        check_labels(f, &template.key("metadata").key("labels"), labels);
    }
    check_job(f, &template.key("spec"), &spec["jobTemplate"]["spec"]);
}

/// A HorizontalPodAutoscaler: a scalable target, sane bounds, and metrics Capstan can read
/// (resource metrics from the node agents; there is no custom or external metrics API).
fn check_autoscaler(f: &mut Findings, path: &FieldPath, spec: &Value) {
    let target = path.key("scaleTargetRef");
    match spec["scaleTargetRef"]["kind"].as_str() {
        Some(k) if capstan_api::kinds::SCALABLE.contains(&k) => {}
        Some(k) => f.invalid(
            target.key("kind"),
            format!("{k} cannot be scaled: an autoscaler scales a Deployment, ReplicaSet or StatefulSet"),
        ),
        None => f.missing(target.key("kind"), "the kind of the workload to scale is required"),
    }
    if spec["scaleTargetRef"]["name"].as_str().is_none_or(str::is_empty) {
        f.missing(target.key("name"), "the name of the workload to scale is required");
    }
    at_least(f, path, spec, "minReplicas", 1);
    match (spec["minReplicas"].as_i64().unwrap_or(1), spec["maxReplicas"].as_i64()) {
        (_, None) => f.missing(path.key("maxReplicas"), "maxReplicas is required"),
        (min, Some(max)) if max < min => f.invalid(
            path.key("maxReplicas"),
            format!("must be greater than or equal to `minReplicas` ({min})"),
        ),
        _ => {}
    }
    for (i, m) in spec["metrics"].as_array().into_iter().flatten().enumerate() {
        let mp = path.key("metrics").index(i);
        match m["type"].as_str() {
            Some("Resource") => {
                let name = m["resource"]["name"].as_str().unwrap_or_default();
                if !matches!(name, "cpu" | "memory") {
                    f.invalid(
                        mp.key("resource").key("name"),
                        format!("unsupported resource {name:?}: cpu or memory"),
                    );
                }
                let t = &m["resource"]["target"];
                match t["type"].as_str() {
                    Some("Utilization") if t["averageUtilization"].as_i64().is_some_and(|u| u > 0) => {}
                    Some("Utilization") => f.invalid(
                        mp.key("resource").key("target").key("averageUtilization"),
                        "must be greater than 0 for a Utilization target",
                    ),
                    Some("AverageValue") if !t["averageValue"].is_null() => {}
                    Some("AverageValue") => f.missing(
                        mp.key("resource").key("target").key("averageValue"),
                        "an AverageValue target needs averageValue",
                    ),
                    other => f.invalid(
                        mp.key("resource").key("target").key("type"),
                        format!("unsupported target type {other:?} for a resource metric: \"Utilization\" or \"AverageValue\""),
                    ),
                }
            }
            Some(t @ ("Pods" | "Object" | "External" | "ContainerResource")) => f.invalid(
                mp.key("type"),
                format!("{t} metrics are not served: Capstan's autoscaler reads resource metrics (cpu, memory) from the node agents"),
            ),
            other => f.invalid(mp.key("type"), format!("unsupported metric type {other:?}")),
        }
    }
}

fn check_pod_spec(f: &mut Findings, path: &FieldPath, spec: &Value, required_restart: Option<&str>) {
    at_least(f, path, spec, "terminationGracePeriodSeconds", 0);
    at_least(f, path, spec, "activeDeadlineSeconds", 1);
    let containers = spec["containers"].as_array();
    if containers.is_none_or(|c| c.is_empty()) {
        f.missing(path.key("containers"), "a pod needs at least one container");
    }
    if let Some(policy) = spec["restartPolicy"].as_str() {
        if !matches!(policy, "Always" | "OnFailure" | "Never") {
            f.invalid(
                path.key("restartPolicy"),
                format!("unsupported value {policy:?}: supported values: \"Always\", \"OnFailure\", \"Never\""),
            );
        } else if let Some(required) = required_restart
            && policy != required
        {
            f.invalid(
                path.key("restartPolicy"),
                format!("unsupported value {policy:?}: supported values: {required:?}"),
            );
        }
    }
    let volumes: Vec<&str> = spec["volumes"]
        .as_array()
        .map(|v| v.iter().filter_map(|v| v["name"].as_str()).collect())
        .unwrap_or_default();
    let mut seen_volumes = HashSet::new();
    for (i, name) in volumes.iter().enumerate() {
        let vp = path.key("volumes").index(i).key("name");
        if let Some(e) = names::dns1123_label(name) {
            f.invalid(vp.clone(), e);
        }
        if !seen_volumes.insert(*name) {
            f.invalid(vp, format!("duplicate volume name {name:?}"));
        }
    }
    let mut seen_containers = HashSet::new();
    for list in ["initContainers", "containers"] {
        let Some(items) = spec[list].as_array() else {
            continue;
        };
        for (i, c) in items.iter().enumerate() {
            let cp = path.key(list).index(i);
            check_container(f, &cp, c, &volumes);
            if let Some(name) = c["name"].as_str()
                && !seen_containers.insert(name.to_owned())
            {
                f.invalid(cp.key("name"), format!("duplicate container name {name:?}"));
            }
        }
    }
}

fn check_container(f: &mut Findings, path: &FieldPath, c: &Value, volumes: &[&str]) {
    if let Some(name) = c["name"].as_str()
        && let Some(e) = names::dns1123_label(name)
    {
        f.invalid(path.key("name"), e);
    }
    if c["image"].as_str().is_none_or(|i| i.trim().is_empty()) {
        f.missing(path.key("image"), "a container needs an image");
    }
    if let Some(p) = c["imagePullPolicy"].as_str()
        && !matches!(p, "Always" | "IfNotPresent" | "Never")
    {
        f.invalid(
            path.key("imagePullPolicy"),
            format!("unsupported value {p:?}: supported values: \"Always\", \"IfNotPresent\", \"Never\""),
        );
    }
    let mut port_names = HashSet::new();
    for (i, port) in c["ports"].as_array().into_iter().flatten().enumerate() {
        let pp = path.key("ports").index(i);
        check_port_number(f, pp.key("containerPort"), &port["containerPort"]);
        if !port["hostPort"].is_null() {
            check_port_number(f, pp.key("hostPort"), &port["hostPort"]);
        }
        check_protocol(f, pp.key("protocol"), &port["protocol"]);
        if let Some(name) = port["name"].as_str() {
            if let Some(e) = port_name(name) {
                f.invalid(pp.key("name"), e);
            } else if !port_names.insert(name) {
                f.invalid(pp.key("name"), format!("duplicate port name {name:?}"));
            }
        }
    }
    for (i, m) in c["volumeMounts"].as_array().into_iter().flatten().enumerate() {
        if let Some(name) = m["name"].as_str()
            && !volumes.contains(&name)
        {
            f.invalid(
                path.key("volumeMounts").index(i).key("name"),
                format!("no volume named {name:?} in the pod's volumes"),
            );
        }
    }
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        let p = &c[probe];
        if p.is_null() {
            continue;
        }
        let handlers = ["exec", "httpGet", "tcpSocket", "grpc"]
            .iter()
            .filter(|h| !p[**h].is_null())
            .count();
        if handlers != 1 {
            f.invalid(path.key(probe), "a probe needs exactly one of exec, httpGet, tcpSocket or grpc");
        }
        let pp = path.key(probe);
        for field in [
            "initialDelaySeconds",
            "timeoutSeconds",
            "periodSeconds",
            "successThreshold",
            "failureThreshold",
        ] {
            at_least(f, &pp, p, field, 0);
        }
        if probe != "readinessProbe"
            && let Some(n) = p["successThreshold"].as_i64()
            && n > 1
        {
            f.invalid(pp.key("successThreshold"), format!("must be 1 (got {n})"));
        }
        at_least(f, &pp, p, "terminationGracePeriodSeconds", 1);
    }
    check_resources(f, &path.key("resources"), &c["resources"]);
}

/// Requests and limits: each a non-negative quantity (the syntax and range are checked with the
/// types), and no request above its limit.
fn check_resources(f: &mut Findings, path: &FieldPath, resources: &Value) {
    use capstan_api::quantity::Quantity;
    for section in ["requests", "limits"] {
        for (name, q) in resources[section].as_object().into_iter().flatten() {
            if Quantity::from_json(q).is_some_and(|q| q.is_negative()) {
                f.invalid(path.key(section).key(name), "must be greater than or equal to 0");
            }
        }
    }
    for (name, request) in resources["requests"].as_object().into_iter().flatten() {
        let limit = resources["limits"].get(name).and_then(Quantity::from_json);
        if let (Some(request), Some(limit)) = (Quantity::from_json(request), limit)
            && request > limit
        {
            f.invalid(
                path.key("requests").key(name),
                format!("must be less than or equal to {name} limit of {limit}"),
            );
        }
    }
}

fn check_port_number(f: &mut Findings, path: FieldPath, v: &Value) {
    if let Some(n) = v.as_i64()
        && !(1..=65535).contains(&n)
    {
        f.invalid(path, format!("must be between 1 and 65535, inclusive (got {n})"));
    }
}

pub(crate) fn check_protocol(f: &mut Findings, path: FieldPath, v: &Value) {
    if let Some(p) = v.as_str()
        && !matches!(p, "TCP" | "UDP" | "SCTP")
    {
        f.invalid(
            path,
            format!("unsupported value {p:?}: supported values: \"SCTP\", \"TCP\", \"UDP\""),
        );
    }
}

/// An IANA service name, as Kubernetes requires for named ports: at most 15 lower-case
/// alphanumerics and '-', with at least one letter, no leading, trailing or double '-'.
pub(crate) fn port_name(name: &str) -> Option<String> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && name.chars().any(|c| c.is_ascii_lowercase())
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--");
    (!ok).then(|| format!("a port name must be at most 15 lower-case letters, digits and '-', with at least one letter, got {name:?}"))
}

fn check_service(f: &mut Findings, path: &FieldPath, spec: &Value) {
    let ty = spec["type"].as_str().unwrap_or("ClusterIP");
    if !matches!(ty, "ClusterIP" | "NodePort" | "LoadBalancer" | "ExternalName") {
        f.invalid(
            path.key("type"),
            format!("unsupported value {ty:?}: supported values: \"ClusterIP\", \"ExternalName\", \"LoadBalancer\", \"NodePort\""),
        );
    }
    if let Some(a) = spec["sessionAffinity"].as_str()
        && !matches!(a, "None" | "ClientIP")
    {
        f.invalid(
            path.key("sessionAffinity"),
            format!("unsupported value {a:?}: supported values: \"ClientIP\", \"None\""),
        );
    }
    let ports = spec["ports"].as_array().map(Vec::as_slice).unwrap_or_default();
    if ports.is_empty() && ty != "ExternalName" && spec["clusterIP"].as_str() != Some("None") {
        f.missing(path.key("ports"), "a Service needs at least one port");
    }
    let mut seen = HashSet::new();
    for (i, p) in ports.iter().enumerate() {
        let pp = path.key("ports").index(i);
        check_port_number(f, pp.key("port"), &p["port"]);
        check_protocol(f, pp.key("protocol"), &p["protocol"]);
        match &p["targetPort"] {
            Value::Number(_) => check_port_number(f, pp.key("targetPort"), &p["targetPort"]),
            Value::String(name) => {
                if let Some(e) = port_name(name) {
                    f.invalid(pp.key("targetPort"), e);
                }
            }
            _ => {}
        }
        if let Some(n) = p["nodePort"].as_i64() {
            if ty == "ClusterIP" {
                f.invalid(pp.key("nodePort"), "may not be used when `type` is 'ClusterIP'");
            } else if !(30000..=32767).contains(&n) {
                f.invalid(
                    pp.key("nodePort"),
                    format!("provided port is not in the valid range 30000-32767 (got {n})"),
                );
            }
        }
        match p["name"].as_str() {
            Some(name) => {
                if let Some(e) = names::dns1123_label(name) {
                    f.invalid(pp.key("name"), e);
                } else if !seen.insert(name) {
                    f.invalid(pp.key("name"), format!("duplicate port name {name:?}"));
                }
            }
            None if ports.len() > 1 => f.missing(pp.key("name"), "ports must be named when a Service has more than one"),
            None => {}
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    /// What `check` says of an object, as `path: message` lines (for the checks' tests).
    pub(crate) fn messages(kind: &str, v: Value) -> Vec<String> {
        check(kind, &v).into_iter().map(|f| format!("{}: {}", f.path, f.message)).collect()
    }

    #[test]
    fn stateful_sets_claims_volumes_and_classes_are_checked_as_kubernetes_does() {
        let sts = |extra: Value| {
            let mut v = json!({"metadata": {"name": "web"}, "spec": {
                "serviceName": "web", "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [
                    {"name": "c", "image": "i", "volumeMounts": [{"name": "data", "mountPath": "/data"}]}]}},
                "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]}});
            for (k, x) in extra.as_object().into_iter().flatten() {
                v["spec"][k] = x.clone();
            }
            v
        };
        assert!(
            messages("StatefulSet", sts(json!({}))).is_empty(),
            "a claim template is a volume the containers may mount"
        );
        assert_eq!(
            messages(
                "StatefulSet",
                sts(json!({"podManagementPolicy": "Random", "updateStrategy": {"rollingUpdate": {"partition": -1}}}))
            ),
            [
                "spec.podManagementPolicy: unsupported value \"Random\": supported values: \"OrderedReady\", \"Parallel\"",
                "spec.updateStrategy.rollingUpdate.partition: must be greater than or equal to 0 (got -1)"
            ]
        );
        let mut clash = sts(json!({}));
        clash["spec"]["template"]["spec"]["volumes"] = json!([{"name": "data", "emptyDir": {}}]);
        assert!(
            messages("StatefulSet", clash)
                .iter()
                .any(|m| m.starts_with("spec.volumeClaimTemplates[0].metadata.name: the template's volume \"data\"")),
        );
        let claim =
            json!({"metadata": {"name": "c"}, "spec": {"accessModes": ["ReadWriteMost"], "resources": {"requests": {"storage": "0"}}}});
        assert_eq!(
            messages("PersistentVolumeClaim", claim),
            [
                "spec.accessModes[0]: unsupported value \"ReadWriteMost\": supported values: \"ReadWriteOnce\", \"ReadOnlyMany\", \"ReadWriteMany\", \"ReadWriteOncePod\"",
                "spec.resources.requests.storage: a storage request must be a quantity greater than zero (e.g. 1Gi)"
            ]
        );
        let local = json!({"metadata": {"name": "v"}, "spec": {"accessModes": ["ReadWriteOnce"], "capacity": {"storage": "5Gi"}, "local": {"path": "/mnt/disk"}}});
        assert_eq!(
            messages("PersistentVolume", local),
            ["spec.nodeAffinity: a local volume needs nodeAffinity.required"]
        );
        let nfs = json!({"metadata": {"name": "v"}, "spec": {"accessModes": ["ReadWriteMany"], "capacity": {"storage": "5Gi"}, "nfs": {"server": "x", "path": "/"}}});
        assert!(messages("PersistentVolume", nfs)[0].contains("Capstan's nodes mount hostPath and local volumes"));
        let class = json!({"metadata": {"name": "fast"}, "provisioner": "x", "volumeBindingMode": "Later"});
        assert_eq!(
            messages("StorageClass", class),
            ["volumeBindingMode: unsupported value \"Later\": supported values: \"Immediate\", \"WaitForFirstConsumer\""]
        );
    }

    #[test]
    fn config_maps_and_secrets_hold_at_most_a_mebibyte() {
        let half = "x".repeat(MAX_DATA_BYTES / 2);
        let fits = json!({"metadata": {"name": "c"}, "data": {"a": half, "b": half}});
        assert!(messages("ConfigMap", fits).is_empty());
        let over = json!({"metadata": {"name": "c"}, "data": {"a": half, "b": half, "c": "y"}});
        assert_eq!(
            messages("ConfigMap", over),
            ["data: Too long: the values hold 1048577 bytes; Kubernetes allows at most 1048576 (1 MiB)"]
        );
        // A Secret's data counts as the bytes it decodes to: 1 MiB of "x" is about 1.33 MiB of base64.
        let encoded = "eHh4".repeat(MAX_DATA_BYTES / 3);
        let secret = json!({"metadata": {"name": "s"}, "data": {"a": encoded}});
        assert!(messages("Secret", secret).is_empty());
        let more = json!({"metadata": {"name": "s"}, "data": {"a": encoded}, "stringData": {"b": "yy"}});
        assert_eq!(messages("Secret", more).len(), 1);
    }

    #[test]
    fn a_selector_must_match_its_template() {
        let d = json!({"metadata": {"name": "web"}, "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "api"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}});
        assert_eq!(
            messages("Deployment", d),
            ["spec.template.metadata.labels: `selector` does not match template `labels`"]
        );
    }

    #[test]
    fn daemon_sets_as_the_api_server_checks_them() {
        let ds = |strategy: Value| {
            json!({"metadata": {"name": "agent"}, "spec": {
                "selector": {"matchLabels": {"app": "agent"}},
                "updateStrategy": strategy,
                "template": {"metadata": {"labels": {"app": "agent"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}})
        };
        assert!(messages("DaemonSet", ds(json!({"type": "OnDelete"}))).is_empty());
        assert!(messages("DaemonSet", ds(json!({"rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}))).is_empty());
        assert_eq!(
            messages("DaemonSet", ds(json!({"rollingUpdate": {"maxUnavailable": 0}}))),
            ["spec.updateStrategy.rollingUpdate.maxUnavailable: may not be 0 when `maxSurge` is 0"]
        );
        assert_eq!(
            messages("DaemonSet", ds(json!({"type": "Rolling", "rollingUpdate": {"maxSurge": "150%"}}))),
            [
                "spec.updateStrategy.type: unsupported value \"Rolling\": supported values: \"OnDelete\", \"RollingUpdate\"",
                "spec.updateStrategy.rollingUpdate.maxSurge: must not be greater than 100% (got \"150%\")"
            ]
        );
    }

    #[test]
    fn cron_jobs_name_what_is_wrong_in_their_schedule_and_zone() {
        let cj = |schedule: &str, zone: &str| {
            json!({"metadata": {"name": "backup"}, "spec": {
                "schedule": schedule, "timeZone": zone, "concurrencyPolicy": "Forbid",
                "jobTemplate": {"spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "i"}]}}}}}})
        };
        assert!(messages("CronJob", cj("*/5 * * * *", "Europe/Berlin")).is_empty());
        assert_eq!(
            messages("CronJob", cj("*/5 25 * * *", "Mars/Olympus")),
            [
                "spec.schedule: invalid schedule \"*/5 25 * * *\": hour: \"25\" is out of range 0-23",
                "spec.timeZone: unknown time zone \"Mars/Olympus\": use an IANA name such as \"Europe/Berlin\" or \"Etc/UTC\""
            ]
        );
        let mut no_restart = cj("@hourly", "Etc/UTC");
        no_restart["spec"]["jobTemplate"]["spec"]["template"]["spec"]["restartPolicy"] = json!("Always");
        assert_eq!(
            messages("CronJob", no_restart),
            ["spec.jobTemplate.spec.template.spec.restartPolicy: unsupported value \"Always\": supported values: \"OnFailure\", \"Never\""]
        );
    }

    #[test]
    fn autoscalers_scale_what_can_be_scaled_on_metrics_that_exist() {
        let hpa = |kind: &str, metric: Value| {
            json!({"metadata": {"name": "web"}, "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": kind, "name": "web"},
                "minReplicas": 2, "maxReplicas": 5, "metrics": [metric]}})
        };
        let cpu = json!({"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}}});
        assert!(messages("HorizontalPodAutoscaler", hpa("Deployment", cpu.clone())).is_empty());
        assert_eq!(
            messages("HorizontalPodAutoscaler", hpa("DaemonSet", cpu)),
            ["spec.scaleTargetRef.kind: DaemonSet cannot be scaled: an autoscaler scales a Deployment, ReplicaSet or StatefulSet"]
        );
        let custom = json!({"type": "Pods", "pods": {"metric": {"name": "rps"}, "target": {"type": "AverageValue", "averageValue": "10"}}});
        assert!(
            messages("HorizontalPodAutoscaler", hpa("Deployment", custom))[0]
                .starts_with("spec.metrics[0].type: Pods metrics are not served")
        );
    }

    #[test]
    fn containers_ports_and_mounts() {
        let p = json!({"metadata": {"name": "p", "labels": {"bad key!": "x"}}, "spec": {"containers": [
            {"name": "web", "image": "i", "ports": [{"containerPort": 70000}], "volumeMounts": [{"name": "data", "mountPath": "/d"}]},
            {"name": "web", "image": "", "imagePullPolicy": "Sometimes"}]}});
        let m = messages("Pod", p);
        assert!(
            m.iter().any(|m| m.starts_with("metadata.labels.bad key!: invalid label key")),
            "{m:?}"
        );
        assert!(
            m.contains(&"spec.containers[0].ports[0].containerPort: must be between 1 and 65535, inclusive (got 70000)".to_string()),
            "{m:?}"
        );
        assert!(
            m.contains(&"spec.containers[0].volumeMounts[0].name: no volume named \"data\" in the pod's volumes".to_string()),
            "{m:?}"
        );
        assert!(
            m.contains(&"spec.containers[1].name: duplicate container name \"web\"".to_string()),
            "{m:?}"
        );
        assert!(
            m.contains(&"spec.containers[1].image: a container needs an image".to_string()),
            "{m:?}"
        );
        assert!(
            m.iter()
                .any(|m| m.starts_with("spec.containers[1].imagePullPolicy: unsupported value")),
            "{m:?}"
        );
    }

    #[test]
    fn services() {
        let s = json!({"metadata": {"name": "s"}, "spec": {"ports": [{"port": 80}, {"port": 81, "nodePort": 1}]}});
        let m = messages("Service", s);
        assert!(
            m.contains(&"spec.ports[1].nodePort: may not be used when `type` is 'ClusterIP'".to_string()),
            "{m:?}"
        );
        assert!(
            m.contains(&"spec.ports[0].name: ports must be named when a Service has more than one".to_string()),
            "{m:?}"
        );
        let ok = json!({"metadata": {"name": "s"}, "spec": {"type": "NodePort", "ports": [{"port": 80, "targetPort": "http", "nodePort": 30080}]}});
        assert!(messages("Service", ok).is_empty());
    }

    #[test]
    fn disruption_budgets_take_one_bound() {
        let both = json!({"metadata": {"name": "p"}, "spec": {"minAvailable": 1, "maxUnavailable": "150%", "selector": {"matchLabels": {"a": "b"}}}});
        let m = messages("PodDisruptionBudget", both);
        assert_eq!(
            m,
            [
                "spec.minAvailable: minAvailable and maxUnavailable cannot be both set",
                "spec.maxUnavailable: must not be greater than 100% (got \"150%\")"
            ]
        );
        let ok = json!({"metadata": {"name": "p"}, "spec": {"minAvailable": "50%", "selector": {"matchLabels": {"a": "b"}}}});
        assert!(messages("PodDisruptionBudget", ok).is_empty());
    }

    #[test]
    fn jobs_as_the_api_server_checks_them() {
        let j = json!({"metadata": {"name": "j"}, "spec": {
            "parallelism": -1, "backoffLimit": -2, "activeDeadlineSeconds": 0, "completionMode": "Indexed",
            "selector": {"matchLabels": {"a": "b"}},
            "template": {"spec": {"restartPolicy": "Always", "containers": [{"name": "c", "image": "i"}]}}}});
        let m = messages("Job", j);
        for expect in [
            "spec.parallelism: must be greater than or equal to 0 (got -1)",
            "spec.backoffLimit: must be greater than or equal to 0 (got -2)",
            "spec.activeDeadlineSeconds: must be greater than 0 (got 0)",
            "spec.completions: when completionMode is Indexed, completions is required",
            "spec.selector: `selector` will be auto-generated: leave it out, or set manualSelector: true",
            "spec.template.spec.restartPolicy: unsupported value \"Always\": supported values: \"OnFailure\", \"Never\"",
        ] {
            assert!(m.contains(&expect.to_owned()), "{expect}\nnot in {m:#?}");
        }
        assert_eq!(m.len(), 6, "{m:#?}");
        let ok = json!({"metadata": {"name": "j"}, "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "i"}]}}}});
        assert!(messages("Job", ok).is_empty());
    }

    #[test]
    fn negative_durations_counts_and_resources_are_refused() {
        let d = json!({"metadata": {"name": "web"}, "spec": {
            "replicas": 1, "progressDeadlineSeconds": -5, "revisionHistoryLimit": -1, "minReadySeconds": -2,
            "strategy": {"rollingUpdate": {"maxSurge": 0, "maxUnavailable": "0%"}},
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {
                "terminationGracePeriodSeconds": -1,
                "containers": [{"name": "c", "image": "i",
                    "readinessProbe": {"httpGet": {"port": 80}, "periodSeconds": -3},
                    "livenessProbe": {"tcpSocket": {"port": 80}, "successThreshold": 2},
                    "resources": {"requests": {"cpu": "2", "memory": "-1Mi"}, "limits": {"cpu": "1"}}}]}}}});
        let m = messages("Deployment", d);
        for expect in [
            "spec.progressDeadlineSeconds: must be greater than 0 (got -5)",
            "spec.revisionHistoryLimit: must be greater than or equal to 0 (got -1)",
            "spec.minReadySeconds: must be greater than or equal to 0 (got -2)",
            "spec.strategy.rollingUpdate.maxUnavailable: may not be 0 when `maxSurge` is 0",
            "spec.template.spec.terminationGracePeriodSeconds: must be greater than or equal to 0 (got -1)",
            "spec.template.spec.containers[0].readinessProbe.periodSeconds: must be greater than or equal to 0 (got -3)",
            "spec.template.spec.containers[0].livenessProbe.successThreshold: must be 1 (got 2)",
            "spec.template.spec.containers[0].resources.requests.memory: must be greater than or equal to 0",
            "spec.template.spec.containers[0].resources.requests.cpu: must be less than or equal to cpu limit of 1",
        ] {
            assert!(m.contains(&expect.to_owned()), "{expect}\nnot in {m:#?}");
        }
        assert_eq!(m.len(), 9, "{m:#?}");
    }
}
