//! Stateful workloads on the real node agent, Docker Engine, daemon and kubectl: a StatefulSet
//! with a headless Service and a claim template starts its pods in order, each Ready before the
//! next, on volumes the local-path provisioner made; each pod is named in its Service's
//! endpoints (the DNS names themselves are resolved in the lab test); a deleted pod
//! comes back with the same claim and data; scaling down removes the highest ordinals and keeps
//! their claims, scaling up finds the data again; a rolling update goes from the top and stops at
//! the partition. A claim removed from Git is held with its data; with `capstan.dev/prune-data`
//! it goes, and its directory with it.

mod common;

use std::time::Duration;

use common::{Cluster, docker_cluster, http_get, pod_ready};
use serde_json::Value;

fn web(replicas: u32, partition: u32, version: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  clusterIP: None
  selector: {{app: web}}
  ports: [{{name: http, port: 8080}}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: web}}
spec:
  serviceName: web
  replicas: {replicas}
  selector: {{matchLabels: {{app: web}}}}
  updateStrategy: {{type: RollingUpdate, rollingUpdate: {{partition: {partition}}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      containers:
      - name: app
        image: capstan.local/testapp:latest
        imagePullPolicy: Never
        env: [{{name: RECORD, value: /data/starts}}, {{name: VERSION, value: "{version}"}}]
        readinessProbe: {{httpGet: {{path: /readyz, port: 8080}}, periodSeconds: 1}}
        volumeMounts: [{{name: data, mountPath: /data}}]
  volumeClaimTemplates:
  - metadata: {{name: data}}
    spec:
      accessModes: [ReadWriteOnce]
      resources: {{requests: {{storage: 1Gi}}}}
"#
    )
}

const CLAIM: &str = r#"
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: scratch}
spec:
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 1Gi}}
---
apiVersion: v1
kind: Pod
metadata: {name: user}
spec:
  containers:
  - name: app
    image: capstan.local/testapp:latest
    imagePullPolicy: Never
    env: [{name: RECORD, value: /scratch/starts}]
    volumeMounts: [{name: s, mountPath: /scratch}]
  volumes: [{name: s, persistentVolumeClaim: {claimName: scratch}}]
"#;

fn pod(c: &Cluster, name: &str) -> Option<Value> {
    let out = c.kubectl(&["get", "pod", name, "-o", "json"]);
    out.status.success().then(|| serde_json::from_slice(&out.stdout).unwrap())
}

/// The pod's starts as its volume recorded them.
fn starts(c: &Cluster, name: &str) -> String {
    let p = pod(c, name).unwrap_or_default();
    let ip = p["status"]["podIP"].as_str().unwrap_or_default();
    http_get(ip, "/file?path=/data/starts").map(|(_, body)| body).unwrap_or_default()
}

fn ready_names(c: &Cluster) -> Vec<String> {
    let pods = c.json(&["get", "pods", "-l", "app=web"]);
    let mut names: Vec<String> = pods["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| pod_ready(p) && p["metadata"]["deletionTimestamp"].is_null())
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    names
}

fn created(p: &Value) -> i64 {
    capstan_api::time::seconds(&p["metadata"]["creationTimestamp"]).unwrap()
}

fn ready_since(p: &Value) -> i64 {
    let c = p["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap();
    capstan_api::time::seconds(&c["lastTransitionTime"]).unwrap()
}

#[test]
fn a_stateful_set_keeps_identity_order_and_data() {
    let Some((run, c)) = docker_cluster(
        "a_stateful_set_keeps_identity_order_and_data",
        "stateful",
        &[("web.yaml", &web(3, 0, "1")), ("claim.yaml", CLAIM)],
        &["--cluster-cidr", "10.216.0.0/16"],
    ) else {
        return;
    };
    // Two agents: a pod whose volume is on one node must come back to that node.
    let agent = c.node(&format!("sts-a-{}", std::process::id()), &run, &[]);
    let _other = c.node(&format!("sts-b-{}", std::process::id()), &run, &[]);
    let status = c.kubectl(&["rollout", "status", "statefulset/web", "--timeout=180s"]);
    assert!(status.status.success(), "{}\n{}", String::from_utf8_lossy(&status.stderr), c.log());
    assert_eq!(ready_names(&c), ["web-0", "web-1", "web-2"]);

    // In order: each pod was created once the one before it was ready.
    let pods: Vec<Value> = (0..3).map(|i| pod(&c, &format!("web-{i}")).unwrap()).collect();
    for i in 1..3 {
        assert!(
            created(&pods[i]) >= ready_since(&pods[i - 1]),
            "web-{i} was created before web-{} was ready",
            i - 1
        );
    }
    for (i, p) in pods.iter().enumerate() {
        assert_eq!(p["spec"]["hostname"], format!("web-{i}"));
        assert_eq!(
            p["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"],
            format!("data-web-{i}")
        );
        assert_eq!(starts(&c, &format!("web-{i}")), format!("web-{i}\n"));
    }
    let claims = c.kubectl_ok(&["get", "pvc"]);
    assert!(
        claims.contains("data-web-2") && claims.contains("Bound") && claims.contains("local-path"),
        "{claims}"
    );

    // Each pod is named under the headless Service: the endpoints carry its hostname, from
    // which every host's DNS answers `web-N.web.default.svc.cluster.local` (resolved from a pod
    // in the lab test, where the agents run their proxies).
    c.wait_until_within("the pods' hostnames in the Service's endpoints", 30, || {
        let slices = c.json(&["get", "endpointslices", "-l", "kubernetes.io/service-name=web"]);
        let mut named: Vec<(String, String)> = slices["items"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
            .map(|e| {
                (
                    e["hostname"].as_str().unwrap_or_default().to_owned(),
                    e["addresses"][0].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        named.sort();
        let wanted: Vec<(String, String)> = pods
            .iter()
            .map(|p| {
                (
                    p["spec"]["hostname"].as_str().unwrap().to_owned(),
                    p["status"]["podIP"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        named == wanted
    });

    // Each pod runs on the node of its volume.
    let volume_node = |i: usize| {
        let claim = c.json(&["get", "pvc", &format!("data-web-{i}")]);
        let pv = c.json(&["get", "pv", claim["spec"]["volumeName"].as_str().unwrap()]);
        pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0]["values"][0].clone()
    };
    for (i, p) in pods.iter().enumerate() {
        assert_eq!(p["spec"]["nodeName"], volume_node(i), "web-{i} runs where its volume is");
    }

    // A deleted pod comes back under its name, on its claim and its node, with its data.
    c.kubectl_ok(&["delete", "pod", "web-1", "--wait=false"]);
    c.wait_until_within("web-1 back with its data", 120, || {
        pod(&c, "web-1").is_some_and(|p| pod_ready(&p) && p["metadata"]["deletionTimestamp"].is_null())
            && starts(&c, "web-1") == "web-1\nweb-1\n"
    });

    assert_eq!(pod(&c, "web-1").unwrap()["spec"]["nodeName"], volume_node(1));

    // Scale to 1: web-2 goes, then web-1; their claims stay.
    c.commit(&[("web.yaml", &web(1, 0, "1"))], &[], "scale to one");
    c.wait_until_within("one pod left", 120, || ready_names(&c) == ["web-0"] && pod(&c, "web-1").is_none());
    let claims = c.kubectl_ok(&["get", "pvc", "-o", "name"]);
    assert!(claims.contains("data-web-1") && claims.contains("data-web-2"), "{claims}");
    // An administrator gives up web-1's data: the set's claim is the cluster's to delete (a
    // claim from Git is not).
    let web1_volume = c.json(&["get", "pvc", "data-web-1"])["spec"]["volumeName"]
        .as_str()
        .unwrap()
        .to_owned();
    c.kubectl_ok(&["delete", "pvc", "data-web-1"]);
    c.wait_until_within("web-1's claim and volume gone", 60, || {
        !c.kubectl(&["get", "pvc", "data-web-1"]).status.success() && !c.kubectl(&["get", "pv", &web1_volume]).status.success()
    });
    let refused = c.kubectl(&["delete", "pvc", "scratch"]);
    assert!(!refused.status.success(), "a claim from Git is deleted in Git");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("claim.yaml"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    // Back to 3: web-2's data is there, web-1 starts afresh.
    c.commit(&[("web.yaml", &web(3, 0, "1"))], &[], "scale to three");
    c.wait_until_within("three pods again", 180, || ready_names(&c).len() == 3);
    assert_eq!(starts(&c, "web-2"), "web-2\nweb-2\n");
    assert_eq!(starts(&c, "web-1"), "web-1\n");

    // A rolling update with partition 1 replaces web-2, then web-1, and leaves web-0.
    c.commit(&[("web.yaml", &web(3, 1, "2"))], &[], "version 2 above the partition");
    c.wait_until_within("web-1 and web-2 at version 2", 180, || {
        let updated = c.json(&["get", "sts", "web"])["status"]["updatedReplicas"] == 2;
        updated && ready_names(&c).len() == 3
    });
    let version = |name: &str| pod(&c, name).unwrap()["spec"]["containers"][0]["env"][1]["value"].clone();
    assert_eq!(
        (version("web-0"), version("web-1"), version("web-2")),
        ("1".into(), "2".into(), "2".into())
    );
    let history = c.kubectl_ok(&["rollout", "history", "statefulset/web"]);
    assert!(history.contains('1') && history.contains('2'), "{history}");

    // A claim declared in Git binds when its pod is scheduled, on that pod's node.
    c.wait_until_within("the user pod ready", 90, || pod(&c, "user").is_some_and(|p| pod_ready(&p)));
    let scratch = c.json(&["get", "pvc", "scratch"]);
    let volume = scratch["spec"]["volumeName"].as_str().unwrap().to_owned();
    let pv = c.json(&["get", "pv", &volume]);
    assert_eq!(
        pod(&c, "user").unwrap()["spec"]["nodeName"],
        pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0]["values"][0],
        "the volume was made on the pod's node"
    );
    let dir = std::path::PathBuf::from(pv["spec"]["hostPath"]["path"].as_str().unwrap());
    assert!(dir.join("starts").exists(), "{}", dir.display());
    // Removing its file holds it (and its data); the pod goes.
    c.commit(&[], &["claim.yaml"], "drop the claim");
    c.wait_until_within("the user pod gone", 60, || pod(&c, "user").is_none());
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        c.kubectl(&["get", "pvc", "scratch"]).status.success(),
        "a claim removed from Git is held"
    );
    assert!(dir.join("starts").exists());
    let held = std::process::Command::new(env!("CARGO_BIN_EXE_capstan"))
        .arg("status")
        .current_dir(&c.repo)
        .output()
        .unwrap();
    let held = String::from_utf8_lossy(&held.stdout);
    assert!(
        held.contains("held            PersistentVolumeClaim default/scratch"),
        "capstan status reports the held claim: {held}"
    );
    // Brought back with prune-data, then removed: claim, volume and directory go.
    let disposable = CLAIM.replace(
        "metadata: {name: scratch}",
        "metadata: {name: scratch, annotations: {capstan.dev/prune-data: \"true\"}}",
    );
    c.commit(
        &[("claim.yaml", disposable.split("---").next().unwrap())],
        &[],
        "the claim's data may go",
    );
    c.wait_until_within("the annotation applied", 30, || {
        c.json(&["get", "pvc", "scratch"])["metadata"]["annotations"]["capstan.dev/prune-data"] == "true"
    });
    c.commit(&[], &["claim.yaml"], "drop it for good");
    let gone = |args: &[&str]| !c.kubectl(args).status.success();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !(gone(&["get", "pvc", "scratch"]) && gone(&["get", "pv", &volume]) && !dir.exists()) {
        assert!(
            std::time::Instant::now() < deadline,
            "claim, volume and directory not gone:\n{}\n{}\ndirectory there: {}\n{}",
            String::from_utf8_lossy(&c.kubectl(&["get", "pvc", "scratch", "-o", "yaml"]).stdout),
            String::from_utf8_lossy(&c.kubectl(&["get", "pv", &volume, "-o", "yaml"]).stdout),
            dir.exists(),
            agent.log().lines().filter(|l| l.contains("volume")).collect::<Vec<_>>().join("\n"),
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
