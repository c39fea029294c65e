//! The controllers and the scheduling loop against the real store, in a real daemon tracking a
//! git repository: rollouts (and the rolling-update bounds at every moment), revert re-using the
//! old ReplicaSet, services and endpoints, quota, garbage collection, namespace drain, node loss
//! and eviction, two schedulers racing without double-binding, and claims bound to volumes (or
//! the reason they are not). Nodes are registered and pods
//! marked ready by a stand-in for the node agent (the real one is tested on Docker elsewhere).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use capstan_daemon::context::kind;
use capstan_daemon::{Daemon, DaemonConfig};
use serde_json::{Value, json};

use capstan_git::fixture::git;

struct Harness {
    _dir: tempfile::TempDir,
    repo: PathBuf,
    d: Daemon,
    kubelet_stop: Arc<AtomicBool>,
}

impl Harness {
    async fn start(files: &[(&str, &str)], tune: impl FnOnce(&mut DaemonConfig)) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("repo");
        std::fs::create_dir_all(&repo).unwrap();
        git(&repo, &["init", "-q"]);
        for (p, t) in files {
            std::fs::create_dir_all(repo.join(p).parent().unwrap()).unwrap();
            std::fs::write(repo.join(p), t).unwrap();
        }
        git(&repo, &["add", "-A"]);
        git(&repo, &["commit", "-q", "--allow-empty", "-m", "init"]);
        let mut config = DaemonConfig::new(repo.to_str().unwrap(), dir.path().join("data"));
        config.listen = "127.0.0.1:0".parse().unwrap();
        tune(&mut config);
        let d = Daemon::start(config).await.unwrap();
        Harness {
            _dir: dir,
            repo,
            d,
            kubelet_stop: Arc::new(AtomicBool::new(false)),
        }
    }

    fn commit(&self, files: &[(&str, &str)], removed: &[&str]) {
        for (p, t) in files {
            std::fs::create_dir_all(self.repo.join(p).parent().unwrap()).unwrap();
            std::fs::write(self.repo.join(p), t).unwrap();
        }
        for p in removed {
            git(&self.repo, &["rm", "-q", p]);
        }
        git(&self.repo, &["add", "-A"]);
        git(&self.repo, &["commit", "-q", "-m", "change"]);
    }

    fn list(&self, plural: &str, ns: Option<&str>) -> Vec<Value> {
        self.d.cache.list(kind(plural), ns).0.iter().map(|e| (*e.object).clone()).collect()
    }

    fn get(&self, plural: &str, ns: &str, name: &str) -> Option<Value> {
        self.d.cache.get(kind(plural), ns, name).map(|e| (*e.object).clone())
    }

    async fn eventually(&self, what: &str, mut f: impl FnMut(&Harness) -> bool) {
        for _ in 0..600 {
            if f(self) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("timed out waiting for {what}");
    }

    async fn add_node(&self, name: &str, cpu: &str) {
        let node = json!({
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "status": {"allocatable": {"cpu": cpu, "memory": "8Gi", "pods": "110"}, "capacity": {"cpu": cpu, "memory": "8Gi", "pods": "110"},
                       "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}]}
        });
        self.d.objects.create(kind("nodes"), node).await.unwrap();
        self.renew_lease(name).await;
    }

    async fn renew_lease(&self, name: &str) {
        let now = jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
        let leases = kind("leases");
        match self.d.objects.get(leases, "kube-node-lease", name).unwrap() {
            None => {
                let _ = self.d.objects.create(leases, json!({"metadata": {"name": name, "namespace": "kube-node-lease"}, "spec": {"holderIdentity": name, "renewTime": now}})).await;
            }
            Some(_) => {
                let _ = self
                    .d
                    .objects
                    .modify(leases, "kube-node-lease", name, false, |l| {
                        l["spec"]["renewTime"] = json!(now);
                        true
                    })
                    .await;
            }
        }
    }

    /// A stand-in for the node agents of `nodes`: bound pods become Running and Ready (after
    /// `delay`), pods marked for deletion go away, leases are renewed.
    fn kubelet(&self, nodes: &[&str], delay: Duration) -> tokio::task::JoinHandle<()> {
        let objects = self.d.objects.clone();
        let cache = self.d.cache.clone();
        let nodes: Vec<String> = nodes.iter().map(|n| n.to_string()).collect();
        let stop = self.kubelet_stop.clone();
        let mut since: HashMap<String, tokio::time::Instant> = HashMap::new();
        tokio::spawn(async move {
            let mut ip = 2;
            while !stop.load(Ordering::SeqCst) {
                for p in cache.list(kind("pods"), None).0.iter() {
                    let node = p.object["spec"]["nodeName"].as_str().unwrap_or_default().to_owned();
                    if !nodes.contains(&node) {
                        continue;
                    }
                    if !p.object["metadata"]["deletionTimestamp"].is_null() {
                        let _ = objects.delete(kind("pods"), &p.namespace, &p.name, None).await;
                        continue;
                    }
                    let ready = p.object["status"]["conditions"]
                        .as_array()
                        .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"));
                    if ready {
                        continue;
                    }
                    let first = *since
                        .entry(p.object["metadata"]["uid"].as_str().unwrap_or_default().to_owned())
                        .or_insert_with(tokio::time::Instant::now);
                    if first.elapsed() < delay {
                        continue;
                    }
                    ip += 1;
                    let stamp = capstan_api::time::now_rfc3339();
                    let _ = objects
                        .modify(kind("pods"), &p.namespace, &p.name, true, |pod| {
                            pod["status"]["phase"] = json!("Running");
                            pod["status"]["podIP"] = json!(format!("10.244.0.{}", ip % 250 + 2));
                            let mut conds = pod["status"]["conditions"].as_array().cloned().unwrap_or_default();
                            conds.retain(|c| c["type"] != "Ready");
                            conds.push(json!({"type": "Ready", "status": "True", "lastTransitionTime": stamp}));
                            pod["status"]["conditions"] = Value::Array(conds);
                            true
                        })
                        .await;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    }
}

const NS: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n";

fn deployment(image: &str, replicas: i64) -> String {
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: shop}}
spec:
  replicas: {replicas}
  revisionHistoryLimit: 3
  strategy: {{type: RollingUpdate, rollingUpdate: {{maxSurge: 1, maxUnavailable: 1}}}}
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      containers:
      - name: web
        image: {image}
        ports: [{{name: http, containerPort: 8080}}]
        resources: {{requests: {{cpu: 100m, memory: 32Mi}}}}
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: shop}}
spec:
  selector: {{app: web}}
  ports: [{{port: 80, targetPort: http}}]
"
    )
}

fn ready_count(h: &Harness, pods: &[Value]) -> usize {
    let _ = h;
    pods.iter()
        .filter(|p| {
            p["metadata"]["deletionTimestamp"].is_null()
                && p["status"]["conditions"]
                    .as_array()
                    .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
        })
        .count()
}

fn deployment_done(h: &Harness, image: &str, replicas: i64) -> bool {
    let Some(d) = h.get("deployments", "shop", "web") else {
        return false;
    };
    let s = &d["status"];
    let pods = h.list("pods", Some("shop"));
    s["observedGeneration"] == d["metadata"]["generation"]
        && s["updatedReplicas"] == replicas
        && s["replicas"] == replicas
        && s["availableReplicas"] == replicas
        && pods.len() as i64 == replicas
        && pods.iter().all(|p| p["spec"]["containers"][0]["image"] == image)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_stays_within_its_bounds_and_a_revert_reuses_the_old_replicaset() {
    let h = Harness::start(&[("ns.yaml", NS), ("web.yaml", &deployment("web:1", 4))], |_| {}).await;
    h.add_node("n1", "8").await;
    let _kubelet = h.kubelet(&["n1"], Duration::from_millis(150));
    h.eventually("the first rollout", |h| deployment_done(h, "web:1", 4)).await;
    let first_rs: Vec<String> = h
        .list("replicasets", Some("shop"))
        .iter()
        .map(|r| r["metadata"]["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(first_rs.len(), 1);

    // Service and endpoints follow the pods.
    let svc = h.get("services", "shop", "web").unwrap();
    assert!(svc["spec"]["clusterIP"].as_str().unwrap().starts_with("10.96."));
    h.eventually("endpoints with 4 ready addresses", |h| {
        h.get("endpoints", "shop", "web").is_some_and(|e| {
            e["subsets"][0]["addresses"].as_array().is_some_and(|a| a.len() == 4) && e["subsets"][0]["ports"][0]["port"] == 8080
        })
    })
    .await;

    // Roll to web:2, watching the bounds: never more than replicas + maxSurge pods, never fewer
    // than replicas - maxUnavailable ready.
    h.commit(&[("web.yaml", &deployment("web:2", 4))], &[]);
    let mut max_pods = 0;
    let mut min_ready = usize::MAX;
    for _ in 0..600 {
        let pods: Vec<Value> = h
            .list("pods", Some("shop"))
            .into_iter()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .collect();
        max_pods = max_pods.max(pods.len());
        min_ready = min_ready.min(ready_count(&h, &pods));
        if deployment_done(&h, "web:2", 4) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(deployment_done(&h, "web:2", 4), "the rollout finished");
    assert!(max_pods <= 5, "at most replicas + maxSurge pods: saw {max_pods}");
    assert!(min_ready >= 3, "at least replicas - maxUnavailable ready: saw {min_ready}");
    let d = h.get("deployments", "shop", "web").unwrap();
    let progressing = d["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Progressing")
        .unwrap();
    assert_eq!(progressing["reason"], "NewReplicaSetAvailable");

    // Revert: the first ReplicaSet comes back, with the newest revision.
    h.commit(&[("web.yaml", &deployment("web:1", 4))], &[]);
    h.eventually("the revert", |h| deployment_done(h, "web:1", 4)).await;
    let sets = h.list("replicasets", Some("shop"));
    assert_eq!(sets.len(), 2, "no third ReplicaSet");
    let active = sets.iter().find(|r| r["spec"]["replicas"] == 4).unwrap();
    assert_eq!(active["metadata"]["name"].as_str().unwrap(), first_rs[0]);
    assert_eq!(active["metadata"]["annotations"]["deployment.kubernetes.io/revision"], "3");
    h.kubelet_stop.store(true, Ordering::SeqCst);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_that_stalls_reports_progress_deadline_exceeded() {
    let stuck = deployment("web:1", 2).replace("replicas: 2\n", "replicas: 2\n  progressDeadlineSeconds: 2\n");
    let h = Harness::start(&[("ns.yaml", NS), ("web.yaml", &stuck)], |_| {}).await;
    h.add_node("n1", "8").await; // no kubelet: pods never become ready
    h.eventually("ProgressDeadlineExceeded", |h| {
        h.get("deployments", "shop", "web").is_some_and(|d| {
            d["status"]["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Progressing" && c["status"] == "False" && c["reason"] == "ProgressDeadlineExceeded")
            })
        })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_refuses_pods_and_the_replicaset_says_why() {
    let quota = "apiVersion: v1\nkind: ResourceQuota\nmetadata: {name: small, namespace: shop}\nspec:\n  hard: {pods: \"2\"}\n";
    let h = Harness::start(&[("ns.yaml", NS), ("q.yaml", quota), ("web.yaml", &deployment("web:1", 3))], |_| {}).await;
    h.eventually("two pods and a FailedCreate", |h| {
        let rs = h.list("replicasets", Some("shop"));
        h.list("pods", Some("shop")).len() == 2
            && rs.first().is_some_and(|r| {
                r["status"]["conditions"].as_array().is_some_and(|c| {
                    c.iter().any(|c| {
                        c["type"] == "ReplicaFailure"
                            && c["message"]
                                .as_str()
                                .unwrap_or_default()
                                .contains("exceeded quota: small, requested: pods=1, used: pods=2, limited: pods=2")
                    })
                })
            })
    })
    .await;
    h.eventually("the quota's status", |h| {
        h.get("resourcequotas", "shop", "small")
            .is_some_and(|q| q["status"]["used"]["pods"] == "2")
    })
    .await;
    h.eventually("a FailedCreate event", |h| {
        h.list("events", Some("shop")).iter().any(|e| e["reason"] == "FailedCreate")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_manifests_collects_garbage_and_drains_the_namespace() {
    let h = Harness::start(&[("ns.yaml", NS), ("web.yaml", &deployment("web:1", 2))], |_| {}).await;
    h.add_node("n1", "8").await;
    let _k = h.kubelet(&["n1"], Duration::ZERO);
    h.eventually("the rollout", |h| deployment_done(h, "web:1", 2)).await;
    h.commit(&[], &["web.yaml"]);
    h.eventually("the deployment, its replica set and pods to go", |h| {
        h.list("replicasets", Some("shop")).is_empty()
            && h.list("pods", Some("shop")).is_empty()
            && h.list("deployments", Some("shop")).is_empty()
    })
    .await;
    h.eventually("the endpoints to go", |h| h.get("endpoints", "shop", "web").is_none())
        .await;
    // Removing the namespace's manifest drains it, then deletes it.
    h.commit(&[("web.yaml", &deployment("web:1", 2))], &[]);
    h.eventually("pods back", |h| h.list("pods", Some("shop")).len() == 2).await;
    h.commit(&[], &["ns.yaml", "web.yaml"]);
    h.eventually("the namespace to go", |h| h.get("namespaces", "", "shop").is_none())
        .await;
    let left: Vec<String> = h
        .list("pods", Some("shop"))
        .iter()
        .map(|p| {
            format!(
                "{} {} node={} owner={} created={}",
                p["metadata"]["name"],
                p["metadata"]["deletionTimestamp"],
                p["spec"]["nodeName"],
                p["metadata"]["ownerReferences"][0]["name"],
                p["metadata"]["creationTimestamp"]
            )
        })
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert!(h.list("services", Some("shop")).is_empty());
    // What Capstan itself put in the namespace goes with it.
    assert!(
        h.list("configmaps", Some("shop")).is_empty(),
        "{:?}",
        h.list("configmaps", Some("shop"))
    );
    assert!(h.list("serviceaccounts", Some("shop")).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_expire_their_ttl_after_they_were_last_seen() {
    let h = Harness::start(&[("ns.yaml", NS), ("web.yaml", &deployment("web:1", 2))], |c| {
        c.event_ttl = Duration::from_secs(2);
    })
    .await;
    h.add_node("n1", "8").await;
    h.eventually("the rollout's events recorded", |h| {
        let reasons: Vec<Value> = h.list("events", Some("shop")).iter().map(|e| e["reason"].clone()).collect();
        reasons.contains(&json!("ScalingReplicaSet")) && reasons.contains(&json!("SuccessfulCreate"))
    })
    .await;
    h.eventually("every event gone after its two seconds", |h| h.list("events", None).is_empty())
        .await;
    assert_eq!(h.list("pods", Some("shop")).len(), 2, "only the events go");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_declared_in_git_for_an_external_service_are_mirrored_into_slices() {
    let external = "apiVersion: v1
kind: Service
metadata: {name: db, namespace: shop}
spec:
  ports: [{name: pg, port: 5432}]
---
apiVersion: v1
kind: Endpoints
metadata: {name: db, namespace: shop}
subsets:
- addresses: [{ip: 192.0.2.10}, {ip: 192.0.2.11}]
  ports: [{name: pg, port: 5432}]
";
    let h = Harness::start(
        &[("ns.yaml", NS), ("db.yaml", external), ("web.yaml", &deployment("web:1", 1))],
        |_| {},
    )
    .await;
    h.eventually("the declared Endpoints mirrored into a slice", |h| {
        h.list("endpointslices", Some("shop")).iter().any(|s| {
            s["metadata"]["labels"]["kubernetes.io/service-name"] == "db"
                && s["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"] == "endpointslicemirroring-controller.k8s.io"
                && s["endpoints"].as_array().is_some_and(|e| e.len() == 2)
                && s["ports"][0]["port"] == 5432
        })
    })
    .await;
    let ep = h.get("endpoints", "shop", "db").unwrap();
    assert_eq!(ep["subsets"][0]["addresses"][0]["ip"], "192.0.2.10", "left as declared");
    // The declared Endpoints go: so does their slice.
    h.commit(&[("db.yaml", external.split("---").next().unwrap())], &[]);
    h.eventually("the mirrored slice gone with the Endpoints", |h| {
        h.get("endpoints", "shop", "db").is_none()
            && !h
                .list("endpointslices", Some("shop"))
                .iter()
                .any(|s| s["metadata"]["labels"]["kubernetes.io/service-name"] == "db")
    })
    .await;
}

/// A stand-in kubelet for Jobs: a bound pod ends at once, succeeding unless its image says
/// `fail` (exit code 1).
fn job_kubelet(h: &Harness) -> tokio::task::JoinHandle<()> {
    let (objects, cache, stop) = (h.d.objects.clone(), h.d.cache.clone(), h.kubelet_stop.clone());
    tokio::spawn(async move {
        while !stop.load(Ordering::SeqCst) {
            for p in cache.list(kind("pods"), None).0.iter() {
                if p.object["spec"]["nodeName"].is_null() {
                    continue;
                }
                if !p.object["metadata"]["deletionTimestamp"].is_null() {
                    let _ = objects.delete(kind("pods"), &p.namespace, &p.name, None).await;
                    continue;
                }
                if p.object["status"]["phase"] == "Succeeded" || p.object["status"]["phase"] == "Failed" {
                    continue;
                }
                let fail = p.object["spec"]["containers"][0]["image"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("fail");
                let code = if fail { 1 } else { 0 };
                let at = capstan_api::time::now_rfc3339();
                let _ = objects
                    .modify(kind("pods"), &p.namespace, &p.name, true, |pod| {
                        pod["status"]["phase"] = json!(if fail { "Failed" } else { "Succeeded" });
                        pod["status"]["containerStatuses"] = json!([{"name": "c", "ready": false, "restartCount": 0,
                            "state": {"terminated": {"exitCode": code, "finishedAt": at, "reason": if fail { "Error" } else { "Completed" }}}}]);
                        true
                    })
                    .await;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
}

fn job_manifest(name: &str, image: &str, extra: &str) -> String {
    format!(
        "apiVersion: batch/v1
kind: Job
metadata: {{name: {name}, namespace: shop}}
spec:
{extra}  template:
    spec:
      restartPolicy: Never
      containers: [{{name: c, image: {image}}}]
"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_complete_fail_at_their_limit_and_go_after_their_ttl() {
    let jobs = job_manifest(
        "batch",
        "job:ok",
        "  completions: 3\n  parallelism: 2\n  ttlSecondsAfterFinished: 2\n",
    ) + "---\n"
        + &job_manifest("broken", "job:fail", "  backoffLimit: 0\n");
    let h = Harness::start(&[("ns.yaml", NS), ("jobs.yaml", &jobs)], |_| {}).await;
    h.add_node("n1", "8").await;
    let _k = job_kubelet(&h);
    let condition = |h: &Harness, job: &str, ty: &str| {
        h.get("jobs", "shop", job).and_then(|j| {
            j["status"]["conditions"]
                .as_array()?
                .iter()
                .find(|c| c["type"] == ty && c["status"] == "True")
                .map(|c| c["reason"].as_str().unwrap_or_default().to_owned())
        })
    };
    h.eventually("the batch Job complete", |h| condition(h, "batch", "Complete").is_some())
        .await;
    let batch = h.get("jobs", "shop", "batch").unwrap();
    assert_eq!(batch["status"]["succeeded"], 3);
    assert!(batch["status"]["completionTime"].is_string());
    // The API server's selector, from the Job's uid, and the labels its pods carry.
    let uid = batch["metadata"]["uid"].as_str().unwrap();
    assert_eq!(batch["spec"]["selector"]["matchLabels"]["batch.kubernetes.io/controller-uid"], uid);
    let pods: Vec<Value> = h
        .list("pods", Some("shop"))
        .into_iter()
        .filter(|p| p["metadata"]["labels"]["batch.kubernetes.io/job-name"] == "batch")
        .collect();
    assert_eq!(pods.len(), 3, "its pods are kept for their logs");
    h.eventually("the broken Job failed at its limit", |h| {
        condition(h, "broken", "Failed").as_deref() == Some("BackoffLimitExceeded")
    })
    .await;
    // Past its time to live the finished Job goes, and its pods with it.
    h.eventually("the batch Job and its pods removed after 2 s", |h| {
        h.get("jobs", "shop", "batch").is_none()
            && !h
                .list("pods", Some("shop"))
                .iter()
                .any(|p| p["metadata"]["labels"]["batch.kubernetes.io/job-name"] == "batch")
    })
    .await;
    assert!(h.get("jobs", "shop", "broken").is_some(), "no TTL, kept");

    // A commit that changes only what may change keeps the Job; one that changes its pods runs
    // it anew.
    let broken_uid = h.get("jobs", "shop", "broken").unwrap()["metadata"]["uid"].clone();
    let jobs = job_manifest("broken", "job:fail", "  backoffLimit: 1\n");
    h.commit(&[("jobs.yaml", &jobs)], &[]);
    h.eventually("the limit raised on the same Job", |h| {
        h.get("jobs", "shop", "broken")
            .is_some_and(|j| j["spec"]["backoffLimit"] == 1 && j["metadata"]["uid"] == broken_uid)
    })
    .await;
    let jobs = job_manifest("broken", "job:ok", "  backoffLimit: 1\n");
    h.commit(&[("jobs.yaml", &jobs)], &[]);
    h.eventually("a new run of the fixed Job, complete", |h| {
        h.get("jobs", "shop", "broken").is_some_and(|j| j["metadata"]["uid"] != broken_uid) && condition(h, "broken", "Complete").is_some()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jobs_pods_are_held_to_the_namespaces_quota() {
    let quota = "apiVersion: v1\nkind: ResourceQuota\nmetadata: {name: small, namespace: shop}\nspec:\n  hard: {pods: \"1\"}\n";
    let job = job_manifest("wide", "job:ok", "  completions: 3\n  parallelism: 3\n");
    let h = Harness::start(&[("ns.yaml", NS), ("q.yaml", quota), ("job.yaml", &job)], |_| {}).await;
    h.eventually("one pod, and the Job saying why not more", |h| {
        h.list("pods", Some("shop")).len() == 1
            && h.list("events", Some("shop"))
                .iter()
                .any(|e| e["reason"] == "FailedCreate" && e["message"].as_str().is_some_and(|m| m.contains("exceeded quota")))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(h.list("pods", Some("shop")).len(), 1, "never past the quota");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disruption_budgets_report_what_may_be_evicted() {
    let pdbs = "apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: web-min, namespace: shop}
spec:
  minAvailable: 2
  selector: {matchLabels: {app: web}}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: web-max, namespace: shop}
spec:
  maxUnavailable: 25%
  selector: {matchLabels: {app: web}}
";
    let h = Harness::start(
        &[("ns.yaml", NS), ("web.yaml", &deployment("web:1", 3)), ("pdb.yaml", pdbs)],
        |_| {},
    )
    .await;
    h.add_node("n1", "8").await;
    let _k = h.kubelet(&["n1"], Duration::ZERO);
    h.eventually("both budgets counting three healthy pods", |h| {
        let status = |n: &str| {
            h.get("poddisruptionbudgets", "shop", n)
                .map(|p| p["status"].clone())
                .unwrap_or_default()
        };
        let (min, max) = (status("web-min"), status("web-max"));
        min["currentHealthy"] == 3
            && min["desiredHealthy"] == 2
            && min["disruptionsAllowed"] == 1
            && max["expectedPods"] == 3
            && max["desiredHealthy"] == 2
            && max["disruptionsAllowed"] == 1
            && max["conditions"][0]["reason"] == "SufficientPods"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_node_is_tainted_and_its_pods_move() {
    let h = Harness::start(&[("ns.yaml", NS), ("web.yaml", &deployment("web:1", 2).replace("    spec:\n      containers:", "    spec:\n      tolerations: [{key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute, tolerationSeconds: 1}]\n      containers:"))], |c| {
        c.node_grace = Duration::from_secs(2);
    })
    .await;
    h.add_node("n1", "8").await;
    let k1 = h.kubelet(&["n1"], Duration::ZERO);
    h.eventually("pods on n1", |h| deployment_done(h, "web:1", 2)).await;
    assert!(
        h.get("nodes", "", "n1").unwrap()["spec"]["podCIDR"]
            .as_str()
            .unwrap()
            .ends_with("/24")
    );
    // n1 stops renewing its lease; n2 arrives.
    h.kubelet_stop.store(true, Ordering::SeqCst);
    k1.await.unwrap();
    h.kubelet_stop.store(false, Ordering::SeqCst);
    h.add_node("n2", "8").await;
    let stop_renew = Arc::new(AtomicBool::new(false));
    let renewer = {
        let objects = h.d.objects.clone();
        let stop = stop_renew.clone();
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let now = jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
                let _ = objects
                    .modify(kind("leases"), "kube-node-lease", "n2", false, |l| {
                        l["spec"]["renewTime"] = json!(now);
                        true
                    })
                    .await;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })
    };
    let _k2 = h.kubelet(&["n2"], Duration::ZERO);
    h.eventually("n1 NotReady and tainted", |h| {
        let n = h.get("nodes", "", "n1").unwrap();
        n["spec"]["taints"].as_array().is_some_and(|t| {
            t.iter()
                .any(|t| t["key"] == "node.kubernetes.io/unreachable" && t["effect"] == "NoExecute")
        }) && n["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "Unknown")
    })
    .await;
    h.eventually("the pods replaced on n2", |h| {
        let pods = h.list("pods", Some("shop"));
        pods.len() == 2 && pods.iter().all(|p| p["spec"]["nodeName"] == "n2") && ready_count(h, &pods) == 2
    })
    .await;
    stop_renew.store(true, Ordering::SeqCst);
    renewer.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unschedulable_pods_say_why_and_two_schedulers_never_double_bind() {
    let big = deployment("web:1", 2).replace("cpu: 100m", "cpu: \"6\"");
    let h = Harness::start(&[("ns.yaml", NS), ("web.yaml", &big)], |_| {}).await;
    h.add_node("n1", "8").await;
    // A second scheduling loop on the same store races the daemon's own.
    let ctx = capstan_daemon::context::Context::new(h.d.objects.clone(), h.d.cache.clone(), Default::default());
    let stop = tokio_util::sync::CancellationToken::new();
    let second = tokio::spawn(capstan_daemon::scheduling::run(
        ctx,
        capstan_scheduler::Config {
            seed: 7,
            ..Default::default()
        },
        stop.clone(),
    ));
    h.eventually("one pod bound, one unschedulable", |h| {
        let pods = h.list("pods", Some("shop"));
        pods.len() == 2
            && pods.iter().filter(|p| p["spec"]["nodeName"] == "n1").count() == 1
            && pods.iter().any(|p| {
                p["status"]["conditions"].as_array().is_some_and(|c| {
                    c.iter().any(|c| {
                        c["type"] == "PodScheduled"
                            && c["status"] == "False"
                            && c["message"] == "0/1 nodes are available: 1 Insufficient cpu."
                    })
                })
            })
    })
    .await;
    h.eventually("a FailedScheduling event", |h| {
        h.list("events", Some("shop")).iter().any(|e| e["reason"] == "FailedScheduling")
    })
    .await;
    // A second node arrives: the waiting pod is retried at once and placed there.
    h.add_node("n2", "8").await;
    // Pods never become ready here, but deleted ones are removed, as an agent would.
    let _k = h.kubelet(&["n1", "n2"], Duration::from_secs(3600));
    h.eventually("both pods bound on different nodes", |h| {
        let pods = h.list("pods", Some("shop"));
        let nodes: std::collections::HashSet<&str> = pods.iter().filter_map(|p| p["spec"]["nodeName"].as_str()).collect();
        nodes.len() == 2
    })
    .await;
    // Many pods at once with two schedulers: each bound exactly once, no node over capacity.
    h.commit(&[("web.yaml", &deployment("web:1", 40).replace("cpu: 100m", "cpu: 300m"))], &[]);
    let live = |h: &Harness| -> Vec<Value> {
        h.list("pods", Some("shop"))
            .into_iter()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .collect()
    };
    h.eventually("40 pods bound", |h| {
        let pods = live(h);
        pods.len() == 40 && pods.iter().all(|p| p["spec"]["nodeName"].is_string())
    })
    .await;
    // Each pod was bound once: exactly one of the two schedulers won each compare-and-swap
    // (the loser's write is skipped, so it records no Scheduled event). Capacity under two
    // uncoordinated schedulers is the node agent's admission to enforce, as in Kubernetes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut scheduled: HashMap<String, i64> = HashMap::new();
    for e in h.list("events", Some("shop")).iter().filter(|e| e["reason"] == "Scheduled") {
        *scheduled
            .entry(e["involvedObject"]["uid"].as_str().unwrap_or_default().to_owned())
            .or_default() += e["count"].as_i64().unwrap_or(1);
    }
    assert!(scheduled.values().all(|n| *n == 1), "a pod bound twice: {scheduled:?}");
    assert!(scheduled.len() >= 40);
    stop.cancel();
    second.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_rollout_status_follows_a_rollout_and_describe_shows_events() {
    let h = Harness::start(&[("ns.yaml", NS), ("web.yaml", &deployment("web:1", 3))], |_| {}).await;
    h.add_node("n1", "8").await;
    let _k = h.kubelet(&["n1"], Duration::from_millis(300));
    h.eventually("the first rollout", |h| deployment_done(h, "web:1", 3)).await;
    h.commit(&[("web.yaml", &deployment("web:2", 3))], &[]);
    let kubeconfig = h.d.kubeconfig.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["rollout", "status", "deployment/web", "-n", "shop", "--timeout=60s"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("deployment \"web\" successfully rolled out"), "{stdout}");
    assert!(deployment_done(&h, "web:2", 3));
    let kubeconfig = h.d.kubeconfig.clone();
    let described = tokio::task::spawn_blocking(move || {
        Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["describe", "deployment", "web", "-n", "shop"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&described.stdout);
    assert!(text.contains("ScalingReplicaSet"), "{text}");
    assert!(text.contains("NewReplicaSet:"), "{text}");
    assert!(
        text.contains("Progressing    True    NewReplicaSetAvailable") || text.contains("NewReplicaSetAvailable"),
        "{text}"
    );
}

const CLASSES: &str = "apiVersion: scheduling.k8s.io/v1
kind: PriorityClass
metadata: {name: batch}
value: 100
globalDefault: true
---
apiVersion: scheduling.k8s.io/v1
kind: PriorityClass
metadata: {name: critical}
value: 100000
---
apiVersion: scheduling.k8s.io/v1
kind: PriorityClass
metadata: {name: polite}
value: 100000
preemptionPolicy: Never
";

/// A bare pod asking for `cpu` with `class` (none: the global default).
fn classed_pod(name: &str, cpu: &str, class: Option<&str>) -> String {
    let class = class.map(|c| format!("\n  priorityClassName: {c}")).unwrap_or_default();
    format!(
        "apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: shop}}
spec:{class}
  containers: [{{name: app, image: app:1, resources: {{requests: {{cpu: \"{cpu}\"}}}}}}]
"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_classes_from_git_decide_which_pods_are_preempted() {
    let h = Harness::start(
        &[
            ("ns.yaml", NS),
            ("classes.yaml", CLASSES),
            (
                "batch.yaml",
                &(classed_pod("batch-1", "3", None) + "---\n" + &classed_pod("batch-2", "3", None)),
            ),
        ],
        |_| {},
    )
    .await;
    h.add_node("n1", "8").await;
    let _k = h.kubelet(&["n1"], Duration::from_millis(10));
    h.eventually("the batch pods bound with the default class's priority", |h| {
        ["batch-1", "batch-2"].iter().all(|n| {
            h.get("pods", "shop", n)
                .is_some_and(|p| p["spec"]["nodeName"] == "n1" && p["spec"]["priority"] == 100)
        })
    })
    .await;

    // A pod whose class does not preempt waits, saying why it fits nowhere.
    h.commit(&[("polite.yaml", &classed_pod("polite", "4", Some("polite")))], &[]);
    h.eventually("the polite pod unschedulable", |h| {
        h.get("pods", "shop", "polite").is_some_and(|p| {
            p["status"]["conditions"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["type"] == "PodScheduled" && c["status"] == "False"))
        })
    })
    .await;
    assert!(h.get("pods", "shop", "batch-1").is_some() && h.get("pods", "shop", "batch-2").is_some());
    // A class that does not exist: the pod waits with Kubernetes' words for it.
    h.commit(&[("typo.yaml", &classed_pod("typo", "1", Some("critcal")))], &[]);
    h.eventually("the typo named", |h| {
        h.list("events", Some("shop"))
            .iter()
            .any(|e| e["reason"] == "FailedScheduling" && e["message"] == "no PriorityClass with name critcal was found")
    })
    .await;

    // A critical pod evicts one batch pod (the fewest victims that make room), which gets an
    // event, and is placed on the node.
    h.commit(&[("critical.yaml", &classed_pod("critical", "4", Some("critical")))], &[]);
    h.eventually("the critical pod bound with its class's priority", |h| {
        h.get("pods", "shop", "critical")
            .is_some_and(|p| p["spec"]["nodeName"] == "n1" && p["spec"]["priority"] == 100_000)
    })
    .await;
    let left = ["batch-1", "batch-2"].iter().filter(|n| h.get("pods", "shop", n).is_some()).count();
    let said: Vec<String> = h
        .list("events", Some("shop"))
        .iter()
        .map(|e| format!("{} {}: {}", e["involvedObject"]["name"], e["reason"], e["message"]))
        .collect();
    assert_eq!(left, 1, "one batch pod made room: {said:#?}");
    let preempted: Vec<Value> = h
        .list("events", Some("shop"))
        .into_iter()
        .filter(|e| e["reason"] == "Preempted")
        .collect();
    assert_eq!(preempted.len(), 1, "{preempted:?}");
    assert!(preempted[0]["message"].as_str().unwrap().ends_with("on node n1"), "{preempted:?}");
    assert!(
        h.get("pods", "shop", "polite").is_some_and(|p| p["spec"]["nodeName"].is_null()),
        "the polite pod still waits"
    );
}

fn settings(prune: bool, grace_seconds: u32) -> String {
    format!(
        "apiVersion: capstan.dev/v1alpha1
kind: ClusterSettings
metadata: {{name: cluster}}
spec: {{prune: {prune}, nodeGracePeriodSeconds: {grace_seconds}}}
"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_settings_from_git_take_effect_with_the_commit() {
    let h = Harness::start(
        &[
            ("ns.yaml", NS),
            ("settings.yaml", &settings(false, 600)),
            ("web.yaml", &deployment("web:1", 1)),
        ],
        |_| {},
    )
    .await;
    h.add_node("n1", "8").await;
    h.eventually("the Deployment applied", |h| h.get("deployments", "shop", "web").is_some())
        .await;
    // Pods are admitted with the eviction timeout in force (DefaultTolerationSeconds): the
    // daemon's 300 s, as no ClusterSettings says otherwise.
    let tolerated = |h: &Harness, image: &str, seconds: u64| {
        let pods: Vec<Value> = h
            .list("pods", Some("shop"))
            .into_iter()
            .filter(|p| p["spec"]["containers"][0]["image"] == image)
            .collect();
        !pods.is_empty()
            && pods.iter().all(|p| {
                ["node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"]
                    .iter()
                    .all(|key| {
                        p["spec"]["tolerations"].as_array().is_some_and(|t| {
                            t.contains(&json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": seconds}))
                        })
                    })
            })
    };
    h.eventually("the pod tolerating lost nodes for 300 s", |h| tolerated(h, "web:1", 300))
        .await;

    // prune: false — a manifest removed from Git is reported as held and keeps running.
    h.commit(&[], &["web.yaml"]);
    let head = git_head(&h.repo);
    let mut status = h.d.sync_status.clone();
    h.eventually("the removal applied", |_| {
        status.borrow_and_update().applied_commit.as_deref() == Some(&head)
    })
    .await;
    assert!(h.get("deployments", "shop", "web").is_some(), "not pruned");
    assert!(
        h.d.sync_status
            .borrow()
            .held
            .iter()
            .any(|k| k.kind == "Deployment" && k.name == "web"),
        "reported as held"
    );
    // prune: true again — what was held goes with that commit.
    h.commit(&[("settings.yaml", &settings(true, 600))], &[]);
    h.eventually("the held Deployment pruned", |h| h.get("deployments", "shop", "web").is_none())
        .await;

    // The node grace period follows Git: n1 stops renewing and, with 600 s, stays Ready...
    let ready = |h: &Harness| {
        h.get("nodes", "", "n1").unwrap()["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(ready(&h), "600 s of grace");
    // ...and a commit setting 1 s makes it NotReady at once.
    h.commit(&[("settings.yaml", &settings(true, 1))], &[]);
    h.eventually("n1 NotReady under the new grace period", |h| !ready(h)).await;

    // An eviction timeout from Git is what pods created from then on tolerate.
    let evict_in_120 = settings(true, 1)
        .replace("grace", "")
        .replace("1}", "1, podEvictionTimeoutSeconds: 120}");
    assert!(
        evict_in_120.contains("nodeGracePeriodSeconds: 1, podEvictionTimeoutSeconds: 120}"),
        "{evict_in_120}"
    );
    h.commit(&[("settings.yaml", &evict_in_120), ("web.yaml", &deployment("web:2", 1))], &[]);
    h.eventually("the new pod tolerating lost nodes for 120 s", |h| tolerated(h, "web:2", 120))
        .await;
}

fn git_head(repo: &Path) -> String {
    let out = std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(repo)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_that_would_prune_most_of_the_cluster_is_held_until_the_limit_is_raised() {
    let configs: String = (0..12)
        .map(|i| format!("---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: c{i}, namespace: shop}}\n"))
        .collect();
    let h = Harness::start(&[("ns.yaml", NS), ("configs.yaml", &configs)], |_| {}).await;
    h.eventually("the ConfigMaps applied", |h| h.get("configmaps", "shop", "c11").is_some())
        .await;
    // A bad merge empties the file: 12 of 13 objects would go.
    h.commit(&[("configs.yaml", "# emptied by mistake\n")], &[]);
    let head = git_head(&h.repo);
    let mut status = h.d.sync_status.clone();
    h.eventually("the commit applied", |_| {
        status.borrow_and_update().applied_commit.as_deref() == Some(&head)
    })
    .await;
    let why = h.d.sync_status.borrow().prune_held.clone().expect("the prunes are held");
    assert!(
        why.contains("would prune 12 of the 13 objects applied, more than the prune limit of 50 %"),
        "{why}"
    );
    assert!(h.get("configmaps", "shop", "c0").is_some(), "nothing is pruned");
    // Raising the limit in Git is the confirmation: the held prunes go with that commit.
    h.commit(
        &[(
            "settings.yaml",
            "apiVersion: capstan.dev/v1alpha1\nkind: ClusterSettings\nmetadata: {name: cluster}\nspec: {pruneLimitPercent: 100}\n",
        )],
        &[],
    );
    h.eventually("the ConfigMaps pruned", |h| h.get("configmaps", "shop", "c0").is_none())
        .await;
    // The status is sent once the whole commit is applied, a moment after its deletes.
    h.eventually("the hold lifted in the sync status", |h| {
        h.d.sync_status.borrow().prune_held.is_none()
    })
    .await;
}

fn daemon_set(image: &str) -> String {
    format!(
        "apiVersion: apps/v1
kind: DaemonSet
metadata: {{name: agent, namespace: shop}}
spec:
  selector: {{matchLabels: {{app: agent}}}}
  updateStrategy: {{type: RollingUpdate, rollingUpdate: {{maxUnavailable: 1}}}}
  template:
    metadata: {{labels: {{app: agent}}}}
    spec:
      nodeSelector: {{role: worker}}
      containers: [{{name: c, image: {image}, resources: {{requests: {{cpu: 100m}}}}}}]
"
    )
}

/// Registers a node with `labels` (and a lease).
async fn labelled_node(h: &Harness, name: &str, labels: Value) {
    let node = json!({
        "metadata": {"name": name, "labels": labels},
        "status": {"allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"},
                   "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}]}
    });
    h.d.objects.create(kind("nodes"), node).await.unwrap();
    h.renew_lease(name).await;
}

/// The DaemonSet's live pods by node, with their images.
fn agents(h: &Harness) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = h
        .list("pods", Some("shop"))
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null() && p["metadata"]["labels"]["app"] == "agent")
        .map(|p| {
            (
                p["spec"]["nodeName"].as_str().unwrap_or("-").to_owned(),
                p["spec"]["containers"][0]["image"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_set_runs_one_pod_per_matching_node_and_rolls_node_by_node() {
    let h = Harness::start(&[("ns.yaml", NS), ("ds.yaml", &daemon_set("agent:1"))], |_| {}).await;
    for n in ["w1", "w2"] {
        labelled_node(&h, n, json!({"role": "worker"})).await;
    }
    labelled_node(&h, "db1", json!({"role": "db"})).await;
    let _k = h.kubelet(&["w1", "w2", "w3"], Duration::from_millis(300));
    let both = |image: &str| vec![("w1".to_owned(), image.to_owned()), ("w2".to_owned(), image.to_owned())];
    h.eventually("a pod bound on each worker, none on db1", |h| agents(h) == both("agent:1"))
        .await;
    // A node joining gets one; the scheduler bound it where the controller pinned it.
    labelled_node(&h, "w3", json!({"role": "worker"})).await;
    h.eventually("a pod on the new worker", |h| agents(h).iter().any(|(n, _)| n == "w3"))
        .await;
    h.eventually("the status counts three ready", |h| {
        h.get("daemonsets", "shop", "agent")
            .is_some_and(|d| d["status"]["numberReady"] == 3 && d["status"]["desiredNumberScheduled"] == 3)
    })
    .await;
    // An update rolls one node at a time: never more than one worker without an available pod.
    h.commit(&[("ds.yaml", &daemon_set("agent:2"))], &[]);
    let mut worst = 0;
    for _ in 0..600 {
        let pods = h.list("pods", Some("shop"));
        let serving = ["w1", "w2", "w3"]
            .iter()
            .filter(|n| {
                pods.iter().any(|p| {
                    p["spec"]["nodeName"] == **n
                        && p["metadata"]["deletionTimestamp"].is_null()
                        && p["status"]["conditions"]
                            .as_array()
                            .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
                })
            })
            .count();
        worst = worst.max(3 - serving);
        let done = h.get("daemonsets", "shop", "agent").is_some_and(|d| {
            d["status"]["updatedNumberScheduled"] == 3
                && d["status"]["numberAvailable"] == 3
                && d["status"]["observedGeneration"] == d["metadata"]["generation"]
        });
        if done && agents(&h).iter().all(|(_, i)| i == "agent:2") && agents(&h).len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(agents(&h).len(), 3, "{:?}", agents(&h));
    assert!(agents(&h).iter().all(|(_, i)| i == "agent:2"), "{:?}", agents(&h));
    assert!(worst <= 1, "{worst} workers were without an available pod at once");
    // One ControllerRevision per template, numbered in order, read by kubectl.
    let mut revisions: Vec<i64> = h
        .list("controllerrevisions", Some("shop"))
        .iter()
        .map(|r| r["revision"].as_i64().unwrap())
        .collect();
    revisions.sort();
    assert_eq!(revisions, [1, 2]);
    let kubeconfig = h.d.kubeconfig.clone();
    let (status, history) = tokio::task::spawn_blocking(move || {
        let kubectl = |args: &[&str]| {
            let out = Command::new("kubectl")
                .arg("--kubeconfig")
                .arg(&kubeconfig)
                .args(args)
                .output()
                .unwrap();
            assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        (
            kubectl(&["rollout", "status", "ds/agent", "-n", "shop", "--timeout=30s"]),
            kubectl(&["rollout", "history", "ds/agent", "-n", "shop"]),
        )
    })
    .await
    .unwrap();
    assert!(status.contains("daemon set \"agent\" successfully rolled out"), "{status}");
    assert!(history.contains('1') && history.contains('2'), "{history}");
    // A node that leaves takes its pod; a node relabelled out of the selector loses its pod.
    h.d.objects.delete(kind("nodes"), "", "w3", None).await.unwrap();
    h.d.objects
        .modify(kind("nodes"), "", "w2", false, |n| {
            n["metadata"]["labels"]["role"] = json!("db");
            true
        })
        .await
        .unwrap();
    h.eventually("only w1 keeps a pod", |h| {
        agents(h) == vec![("w1".to_owned(), "agent:2".to_owned())]
    })
    .await;
    // Removing the DaemonSet from Git takes its pods and revisions.
    h.commit(&[], &["ds.yaml"]);
    h.eventually("pods and revisions collected", |h| {
        agents(h).is_empty() && h.list("controllerrevisions", Some("shop")).is_empty()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evictions_keep_the_disruption_budget() {
    let pdb = "apiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata: {name: web, namespace: shop}\nspec:\n  minAvailable: 2\n  selector: {matchLabels: {app: web}}\n";
    let h = Harness::start(&[("ns.yaml", NS), ("web.yaml", &deployment("web:1", 3)), ("pdb.yaml", pdb)], |_| {}).await;
    h.add_node("n1", "8").await;
    // Replacements become ready after 2 s: longer than the evictions below take, so the budget
    // cannot recover between them.
    let _k = h.kubelet(&["n1"], Duration::from_secs(2));
    h.eventually("three ready and one disruption allowed", |h| {
        deployment_done(h, "web:1", 3)
            && h.get("poddisruptionbudgets", "shop", "web")
                .is_some_and(|b| b["status"]["disruptionsAllowed"] == 1)
    })
    .await;
    let kubeconfig = h.d.kubeconfig.clone();
    let pods: Vec<String> = h
        .list("pods", Some("shop"))
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_owned())
        .collect();
    // All at once: the budget is spent atomically, by one of them.
    let outcomes = tokio::task::spawn_blocking(move || {
        let runs: Vec<_> = pods
            .iter()
            .map(|p| {
                let path = format!("/api/v1/namespaces/shop/pods/{p}/eviction");
                let body = format!(
                    "{{\"apiVersion\":\"policy/v1\",\"kind\":\"Eviction\",\"metadata\":{{\"name\":\"{p}\",\"namespace\":\"shop\"}}}}"
                );
                let file = std::env::temp_dir().join(format!("eviction-{p}.json"));
                std::fs::write(&file, body).unwrap();
                Command::new("kubectl")
                    .arg("--kubeconfig")
                    .arg(&kubeconfig)
                    .args(["create", "--raw", &path, "-f"])
                    .arg(&file)
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        runs.into_iter()
            .map(|run| {
                let out = run.wait_with_output().unwrap();
                (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    // One eviction spends the one disruption; the others are refused until the budget recovers.
    assert_eq!(outcomes.iter().filter(|(ok, _)| *ok).count(), 1, "{outcomes:?}");
    assert!(
        outcomes
            .iter()
            .any(|(_, e)| e.contains("Cannot evict pod as it would violate the pod's disruption budget")),
        "{outcomes:?}"
    );
    // The evicted pod is replaced; once its replacement is ready the budget allows one again.
    h.eventually("the budget recovered", |h| {
        deployment_done(h, "web:1", 3)
            && h.get("poddisruptionbudgets", "shop", "web")
                .is_some_and(|b| b["status"]["disruptionsAllowed"] == 1)
    })
    .await;
}

const VOLUMES: &str = r#"
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: manual}
provisioner: kubernetes.io/no-provisioner
volumeBindingMode: Immediate
reclaimPolicy: Retain
---
apiVersion: v1
kind: PersistentVolume
metadata: {name: big}
spec: {capacity: {storage: 10Gi}, accessModes: [ReadWriteOnce], storageClassName: manual, hostPath: {path: /srv/big}, persistentVolumeReclaimPolicy: Retain}
---
apiVersion: v1
kind: PersistentVolume
metadata: {name: small}
spec: {capacity: {storage: 2Gi}, accessModes: [ReadWriteOnce], storageClassName: manual, hostPath: {path: /srv/small}, persistentVolumeReclaimPolicy: Retain}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: logs, namespace: shop, annotations: {capstan.dev/prune-data: "true"}}
spec: {storageClassName: manual, accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Gi}}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: typo, namespace: shop}
spec: {storageClassName: fsat, accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Gi}}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: shared, namespace: shop}
spec: {accessModes: [ReadWriteMany], resources: {requests: {storage: 1Gi}}}
---
apiVersion: v1
kind: Pod
metadata: {name: sharer, namespace: shop}
spec:
  containers: [{name: c, image: i}]
  volumes: [{name: s, persistentVolumeClaim: {claimName: shared}}]
---
apiVersion: v1
kind: Pod
metadata: {name: orphan, namespace: shop}
spec:
  containers: [{name: c, image: i}]
  volumes: [{name: s, persistentVolumeClaim: {claimName: nowhere}}]
"#;

fn event_texts(h: &Harness, name: &str) -> Vec<String> {
    h.list("events", Some("shop"))
        .iter()
        .filter(|e| e["involvedObject"]["name"] == name)
        .map(|e| {
            format!(
                "{}: {}",
                e["reason"].as_str().unwrap_or_default(),
                e["message"].as_str().unwrap_or_default()
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_bind_to_the_smallest_fit_or_say_why_not_and_retained_volumes_are_released() {
    let h = Harness::start(&[("ns.yaml", NS), ("volumes.yaml", VOLUMES)], |_| {}).await;
    let node = json!({
        "metadata": {"name": "n1", "labels": {"kubernetes.io/hostname": "n1"}, "annotations": {"capstan.dev/volume-dir": "/var/lib/volumes"}},
        "status": {"allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"},
                   "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}]}
    });
    h.d.objects.create(kind("nodes"), node).await.unwrap();
    h.renew_lease("n1").await;

    // An Immediate claim binds at once, to the smallest volume that fits; both say so.
    h.eventually("logs bound", |h| {
        h.get("persistentvolumeclaims", "shop", "logs")
            .is_some_and(|c| c["status"]["phase"] == "Bound")
    })
    .await;
    let logs = h.get("persistentvolumeclaims", "shop", "logs").unwrap();
    assert_eq!(logs["spec"]["volumeName"], "small");
    assert_eq!(logs["status"]["capacity"]["storage"], "2Gi");
    assert_eq!(logs["metadata"]["finalizers"], json!(["kubernetes.io/pvc-protection"]));
    let small = h.get("persistentvolumes", "", "small").unwrap();
    assert_eq!(small["spec"]["claimRef"]["name"], "logs");
    h.eventually("big available", |h| {
        h.get("persistentvolumes", "", "big")
            .is_some_and(|v| v["status"]["phase"] == "Available")
    })
    .await;

    // A class that does not exist, and an access mode local-path cannot give: events, no volume.
    h.eventually("the unknown class reported", |h| {
        event_texts(h, "typo")
            .iter()
            .any(|e| e == "ProvisioningFailed: storageclass.storage.k8s.io \"fsat\" not found")
    })
    .await;
    h.eventually("the shared claim's pod scheduled and the mode refused", |h| {
        h.get("pods", "shop", "sharer").is_some_and(|p| p["spec"]["nodeName"] == "n1")
            && event_texts(h, "shared")
                .iter()
                .any(|e| e.contains("access mode ReadWriteMany is not supported"))
    })
    .await;
    let shared = h.get("persistentvolumeclaims", "shop", "shared").unwrap();
    assert_eq!(
        shared["spec"]["storageClassName"], "local-path",
        "the default class is written down"
    );
    assert_eq!(shared["metadata"]["annotations"]["volume.kubernetes.io/selected-node"], "n1");
    assert_eq!(shared["status"]["phase"], "Pending");

    // A pod whose claim does not exist waits, saying so.
    h.eventually("the orphan pod unschedulable", |h| {
        h.get("pods", "shop", "orphan").is_some_and(|p| {
            p["status"]["conditions"].as_array().is_some_and(|c| {
                c.iter().any(|c| {
                    c["type"] == "PodScheduled"
                        && c["status"] == "False"
                        && c["message"]
                            .as_str()
                            .is_some_and(|m| m.contains("persistentvolumeclaim \"nowhere\" not found"))
                })
            })
        })
    })
    .await;

    // The claim removed from Git (it allows its data to go): its Retain volume is Released and
    // stays, with its claim reference.
    h.commit(
        &[(
            "volumes.yaml",
            &VOLUMES.replace("metadata: {name: logs", "metadata: {name: logs-gone"),
        )],
        &[],
    );
    h.eventually("small released", |h| {
        h.get("persistentvolumes", "", "small")
            .is_some_and(|v| v["status"]["phase"] == "Released")
    })
    .await;
    assert!(h.get("persistentvolumeclaims", "shop", "logs").is_none());
}

/// Usage as the node agents would report it: every pod of the StatefulSet `db` busy at 200m.
struct BusyDb(Arc<std::sync::OnceLock<Arc<capstan_daemon::cache::Cache>>>);

impl capstan_daemon::api::metrics::SummarySource for BusyDb {
    fn summary(&self, node: String) -> futures::future::BoxFuture<'static, Result<Value, capstan_daemon::api::status::ApiError>> {
        let pods: Vec<Value> = self
            .0
            .get()
            .map(|cache| cache.list(kind("pods"), Some("shop")).0)
            .unwrap_or_default()
            .iter()
            .filter(|p| p.object["spec"]["nodeName"] == node.as_str() && p.name.starts_with("db-"))
            .map(|p| {
                json!({"podRef": {"name": p.name, "namespace": "shop", "uid": p.object["metadata"]["uid"]},
                       "containers": [{"name": "db", "cpu": {"usageNanoCores": 200_000_000u64}, "memory": {"workingSetBytes": 1u64 << 20}}]})
            })
            .collect();
        Box::pin(async move { Ok(json!({"node": {"nodeName": node}, "pods": pods})) })
    }
}

fn stateful_db(image: &str) -> String {
    format!(
        "apiVersion: v1
kind: Service
metadata: {{name: db, namespace: shop}}
spec: {{clusterIP: None, selector: {{app: db}}, ports: [{{port: 5432}}]}}
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: db, namespace: shop}}
spec:
  serviceName: db
  replicas: 1
  selector: {{matchLabels: {{app: db}}}}
  template:
    metadata: {{labels: {{app: db}}}}
    spec:
      containers:
      - name: db
        image: {image}
        resources: {{requests: {{cpu: 100m}}}}
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {{name: db, namespace: shop}}
spec:
  scaleTargetRef: {{apiVersion: apps/v1, kind: StatefulSet, name: db}}
  minReplicas: 1
  maxReplicas: 3
  metrics:
  - type: Resource
    resource: {{name: cpu, target: {{type: Utilization, averageUtilization: 50}}}}
"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_autoscaler_scales_a_stateful_set_and_a_commit_keeps_its_count() {
    let cache = Arc::new(std::sync::OnceLock::new());
    let source = capstan_daemon::UsageSource(Arc::new(BusyDb(cache.clone())));
    let h = Harness::start(&[("ns.yaml", NS), ("db.yaml", &stateful_db("postgres:16"))], |c| {
        c.autoscaler_period = Duration::from_millis(500);
        c.usage = Some(source);
    })
    .await;
    let _ = cache.set(h.d.cache.clone());
    h.add_node("n1", "4").await;
    let _kubelet = h.kubelet(&["n1"], Duration::ZERO);
    // 200 % of the request against a 50 % target: four replicas wanted, three allowed.
    h.eventually("the StatefulSet scaled to its maximum", |h| {
        h.get("statefulsets", "shop", "db").is_some_and(|s| s["spec"]["replicas"] == 3)
            && h.list("pods", Some("shop"))
                .iter()
                .filter(|p| p["metadata"]["name"].as_str().is_some_and(|n| n.starts_with("db-")))
                .count()
                == 3
    })
    .await;
    let hpa = h.get("horizontalpodautoscalers", "shop", "db").unwrap();
    assert_eq!(hpa["status"]["desiredReplicas"], 3, "{hpa}");
    let set = h.get("statefulsets", "shop", "db").unwrap();
    assert_eq!(set["metadata"]["annotations"]["capstan.dev/autoscaled-by"], "db", "{set}");
    // A commit that changes only the image keeps the autoscaled count.
    h.commit(&[("db.yaml", &stateful_db("postgres:17"))], &[]);
    h.eventually("the new image applied", |h| {
        h.get("statefulsets", "shop", "db")
            .is_some_and(|s| s["spec"]["template"]["spec"]["containers"][0]["image"] == "postgres:17")
    })
    .await;
    assert_eq!(h.get("statefulsets", "shop", "db").unwrap()["spec"]["replicas"], 3);
}
