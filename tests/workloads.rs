//! Workload controllers on the real node agents, Docker Engine, daemon and kubectl. Jobs: a
//! parallel Job runs its completions two at a time and `kubectl wait --for=condition=complete`
//! returns; an Indexed Job's pods see their index; a failing Job stops at its backoff limit with
//! Kubernetes' reason. DaemonSets: one pod per matching node agent, a joining agent gets one,
//! an update rolls out and `kubectl rollout status` follows it. CronJobs: runs on schedule, never
//! two at once under Forbid when a run is slow, exactly one catch-up run after the daemon was
//! down across several scheduled times, and `kubectl create job --from=cronjob/x`.
//! PodDisruptionBudgets: `capstan drain` and `kubectl drain` move a Deployment's pods to the other
//! node one eviction at a time and never leave fewer ready than `minAvailable`. Autoscaling: a
//! Deployment under CPU load scales up, a commit that changes only its image keeps the
//! autoscaled count, and it scales back down once the load stops; a StatefulSet below its
//! autoscaler's minimum is scaled up to it, and a commit keeps that count too.

mod common;

use std::time::{Duration, Instant};

use common::{Cluster, docker_cluster, http_get, path_str, pod_ready};
use serde_json::Value;

const JOBS: &str = r#"
apiVersion: batch/v1
kind: Job
metadata: {name: count}
spec:
  completions: 5
  parallelism: 2
  template:
    spec:
      restartPolicy: Never
      containers: [{name: app, image: "capstan.local/testapp:latest", imagePullPolicy: Never, args: ["exit", "0", "0.5"]}]
---
apiVersion: batch/v1
kind: Job
metadata: {name: indexed}
spec:
  completions: 3
  parallelism: 3
  completionMode: Indexed
  template:
    spec:
      restartPolicy: Never
      containers: [{name: app, image: "capstan.local/testapp:latest", imagePullPolicy: Never, args: ["env", "JOB_COMPLETION_INDEX"]}]
---
apiVersion: batch/v1
kind: Job
metadata: {name: failing}
spec:
  backoffLimit: 1
  template:
    spec:
      restartPolicy: Never
      containers: [{name: app, image: "capstan.local/testapp:latest", imagePullPolicy: Never, args: ["exit", "4"]}]
"#;

#[test]
fn jobs_run_to_completion_by_index_and_stop_at_their_backoff_limit() {
    let Some((run, c)) = docker_cluster(
        "jobs_run_to_completion_by_index_and_stop_at_their_backoff_limit",
        "jobs",
        &[("jobs.yaml", JOBS)],
        &["--cluster-cidr", "10.203.0.0/16"],
    ) else {
        return;
    };
    let _agent = c.node(&format!("jobs-{}", std::process::id()), &run, &[]);

    // kubectl waits for the condition as it would on Kubernetes.
    let waited = c.kubectl(&["wait", "--for=condition=complete", "job/count", "--timeout=120s"]);
    assert!(waited.status.success(), "{}\n{}", String::from_utf8_lossy(&waited.stderr), c.log());
    let count = c.json(&["get", "job", "count"]);
    assert_eq!(count["status"]["succeeded"], 5);
    let table = c.kubectl_ok(&["get", "job", "count"]);
    assert!(table.contains("Complete") && table.contains("5/5"), "{table}");

    let waited = c.kubectl(&["wait", "--for=condition=complete", "job/indexed", "--timeout=120s"]);
    assert!(waited.status.success(), "{}", String::from_utf8_lossy(&waited.stderr));
    let indexed = c.json(&["get", "job", "indexed"]);
    assert_eq!(indexed["status"]["completedIndexes"], "0-2");
    let pods = c.json(&["get", "pods", "-l", "batch.kubernetes.io/job-name=indexed"]);
    let mut seen: Vec<String> = pods["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let name = p["metadata"]["name"].as_str().unwrap();
            let index = p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]
                .as_str()
                .unwrap()
                .to_owned();
            let logs = c.kubectl_ok(&["logs", name]);
            assert_eq!(logs.trim(), format!("JOB_COMPLETION_INDEX={index}"), "{name}");
            index
        })
        .collect();
    seen.sort();
    assert_eq!(seen, ["0", "1", "2"]);

    // Two failures with a limit of one (the second after the 10 s back-off): Failed.
    let deadline = Instant::now() + Duration::from_secs(90);
    let failed = loop {
        let job = c.json(&["get", "job", "failing"]);
        let reason = job["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == "Failed" && c["status"] == "True")
            .map(|c| c["reason"].clone());
        if let Some(r) = reason {
            break (r, job);
        }
        assert!(Instant::now() < deadline, "the failing Job never failed: {job}");
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(failed.0, "BackoffLimitExceeded");
    assert_eq!(failed.1["status"]["failed"], 2);
    let events = c.kubectl_ok(&["get", "events", "--field-selector", "involvedObject.name=failing"]);
    assert!(events.contains("BackoffLimitExceeded"), "{events}");
}

fn daemon_set(version: &str) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: DaemonSet
metadata: {{name: agent}}
spec:
  selector: {{matchLabels: {{app: agent}}}}
  template:
    metadata: {{labels: {{app: agent}}}}
    spec:
      nodeSelector: {{role: worker}}
      containers:
      - name: app
        image: "capstan.local/testapp:latest"
        imagePullPolicy: Never
        env: [{{name: VERSION, value: "{version}"}}]
        readinessProbe: {{httpGet: {{path: /readyz, port: 8080}}, periodSeconds: 1}}
"#
    )
}

/// The DaemonSet's pods: (node, VERSION, ready), sorted.
fn agents(c: &Cluster) -> Vec<(String, String, bool)> {
    let pods = c.json(&["get", "pods", "-l", "app=agent"]);
    let mut v: Vec<(String, String, bool)> = pods["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .map(|p| {
            let ready = pod_ready(p);
            (
                p["spec"]["nodeName"].as_str().unwrap_or("-").to_owned(),
                p["spec"]["containers"][0]["env"][0]["value"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                ready,
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn a_daemon_set_runs_on_every_matching_node_agent_and_rolls_out() {
    let Some((run, c)) = docker_cluster(
        "a_daemon_set_runs_on_every_matching_node_agent_and_rolls_out",
        "daemonsets",
        &[("ds.yaml", &daemon_set("1"))],
        &["--cluster-cidr", "10.210.0.0/16"],
    ) else {
        return;
    };
    let id = std::process::id();
    let (w1, db, w2) = (format!("ds-w1-{id}"), format!("ds-db-{id}"), format!("ds-w2-{id}"));
    let _a = c.node(&w1, &run, &["--node-labels", "role=worker"]);
    let _b = c.node(&db, &run, &["--node-labels", "role=db"]);
    c.wait_until_within("a ready pod on the worker", 90, || agents(&c) == [(w1.clone(), "1".into(), true)]);
    // A worker joining gets its pod within seconds; the db node still has none.
    let _c = c.node(&w2, &run, &["--node-labels", "role=worker"]);
    c.wait_until_within("a ready pod on each worker", 60, || {
        agents(&c) == [(w1.clone(), "1".into(), true), (w2.clone(), "1".into(), true)]
    });
    let table = c.kubectl_ok(&["get", "ds", "agent"]);
    assert!(table.contains("role=worker"), "{table}");
    let ds = c.json(&["get", "ds", "agent"]);
    assert_eq!(ds["status"]["desiredNumberScheduled"], 2, "{ds}");
    assert_eq!(ds["status"]["numberReady"], 2, "{ds}");

    // An update rolls node by node; kubectl follows it to the end.
    c.commit(&[("ds.yaml", &daemon_set("2"))], &[], "agent 2");
    let out = c.kubectl(&["rollout", "status", "ds/agent", "--timeout=120s"]);
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stderr), c.log());
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("successfully rolled out"), "{said}");
    c.wait_until_within("both workers on version 2", 30, || {
        agents(&c) == [(w1.clone(), "2".into(), true), (w2.clone(), "2".into(), true)]
    });
    let history = c.kubectl_ok(&["rollout", "history", "ds/agent"]);
    assert!(
        history.lines().filter(|l| l.trim_start().starts_with(['1', '2'])).count() == 2,
        "{history}"
    );
}

/// Two CronJobs every 5 s (`@every`, so the test takes seconds, not minutes; the five-field
/// schedules are the same code past parsing): a slow one under Forbid, a quick one under Allow.
const CRON_JOBS: &str = r#"
apiVersion: batch/v1
kind: CronJob
metadata: {name: slow}
spec:
  schedule: "@every 5s"
  concurrencyPolicy: Forbid
  successfulJobsHistoryLimit: 50
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: Never
          containers: [{name: app, image: "capstan.local/testapp:latest", imagePullPolicy: Never, args: ["exit", "0", "8"]}]
---
apiVersion: batch/v1
kind: CronJob
metadata: {name: quick}
spec:
  schedule: "@every 5s"
  successfulJobsHistoryLimit: 50
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: Never
          containers: [{name: app, image: "capstan.local/testapp:latest", imagePullPolicy: Never, args: ["exit", "0"]}]
"#;

/// The Jobs of CronJob `owner`: (name, scheduled time, start, end) in Unix seconds.
fn runs(c: &Cluster, owner: &str) -> Vec<(String, i64, Option<i64>, Option<i64>)> {
    let jobs = c.json(&["get", "jobs"]);
    let secs = |v: &Value| v.as_str().and_then(|s| s.parse::<jiff::Timestamp>().ok()).map(|t| t.as_second());
    let mut v: Vec<_> = jobs["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["metadata"]["ownerReferences"][0]["name"] == owner)
        .map(|j| {
            (
                j["metadata"]["name"].as_str().unwrap().to_owned(),
                secs(&j["metadata"]["annotations"]["batch.kubernetes.io/cronjob-scheduled-timestamp"]).unwrap_or(0),
                secs(&j["status"]["startTime"]),
                secs(&j["status"]["completionTime"]),
            )
        })
        .collect();
    v.sort_by_key(|r| r.1);
    v
}

#[test]
fn cron_jobs_run_on_schedule_never_overlap_under_forbid_and_catch_up_once() {
    // A fixed address, so that the node agent finds the restarted daemon.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let listen = format!("127.0.0.1:{port}");
    let Some((run, mut c)) = docker_cluster(
        "cron_jobs_run_on_schedule_never_overlap_under_forbid_and_catch_up_once",
        "cronjobs",
        &[("cron.yaml", CRON_JOBS)],
        &["--cluster-cidr", "10.213.0.0/16", "--listen", &listen],
    ) else {
        return;
    };
    let _agent = c.node(&format!("cron-{}", std::process::id()), &run, &[]);
    c.wait_until_within("three finished runs of the slow CronJob", 120, || {
        runs(&c, "slow").iter().filter(|r| r.3.is_some()).count() >= 3
    });
    // Under Forbid a run starts only after the one before it finished.
    let slow = runs(&c, "slow");
    for pair in slow.windows(2) {
        let (ended, started) = (pair[0].3, pair[1].2);
        if let (Some(e), Some(s)) = (ended, started) {
            assert!(s >= e, "{} started at {s} before {} ended at {e}: {slow:?}", pair[1].0, pair[0].0);
        }
    }
    let table = c.kubectl_ok(&["get", "cronjob", "quick"]);
    assert!(table.contains("@every 5s"), "{table}");

    // Down across several scheduled times: on restart, one catch-up run, not one per time missed.
    let before = runs(&c, "quick").len();
    let down_at = jiff::Timestamp::now().as_second();
    c.kill9_and_restart_daemon_after(Duration::from_secs(16));
    let up_at = jiff::Timestamp::now().as_second();
    c.wait_until_within("the catch-up run", 30, || runs(&c, "quick").len() > before);
    std::thread::sleep(Duration::from_secs(2));
    // The catch-up is the first run started after the restart; it stands for the latest time
    // missed, which may lie just before or just after `up_at` (the controller starts a moment
    // after the API answers). Regular runs come after it; every scheduled time from the outage
    // up to that start belongs to the one catch-up.
    let all = runs(&c, "quick");
    let caught_up = all
        .iter()
        .filter_map(|r| r.2)
        .filter(|s| *s >= up_at - 1)
        .min()
        .expect("a run started after the restart");
    let missed: Vec<_> = all.into_iter().filter(|r| r.1 > down_at + 1 && r.1 <= caught_up).collect();
    assert_eq!(missed.len(), 1, "one run for the times missed while down: {missed:?}");

    // A run by hand is allowed: it is a run of what Git declares, not a change to it.
    c.kubectl_ok(&["create", "job", "by-hand", "--from=cronjob/quick"]);
    // (Generous: in CI this test shares the two cores with the rest of the suite.)
    let waited = c.kubectl(&["wait", "--for=condition=complete", "job/by-hand", "--timeout=180s"]);
    assert!(waited.status.success(), "{}", String::from_utf8_lossy(&waited.stderr));
}

/// A real five-field schedule, every minute, whose run takes longer than a minute.
const MINUTELY: &str = r#"
apiVersion: batch/v1
kind: CronJob
metadata: {name: minutely}
spec:
  schedule: "*/1 * * * *"
  concurrencyPolicy: Forbid
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: Never
          containers: [{name: app, image: "capstan.local/testapp:latest", imagePullPolicy: Never, args: ["exit", "0", "65"]}]
"#;

#[test]
fn a_minute_schedule_runs_on_the_minute_named_by_it_and_never_two_at_once() {
    let Some((run, c)) = docker_cluster(
        "a_minute_schedule_runs_on_the_minute_named_by_it_and_never_two_at_once",
        "minutely",
        &[("cron.yaml", MINUTELY)],
        &["--cluster-cidr", "10.228.0.0/16"],
    ) else {
        return;
    };
    let _agent = c.node(&format!("minutely-{}", std::process::id()), &run, &[]);
    // The first run comes at the next minute and lasts 65 s, over the minute after it.
    c.wait_until_within("two runs, the first finished", 240, || {
        let r = runs(&c, "minutely");
        r.len() >= 2 && r[0].3.is_some() && r[1].2.is_some()
    });
    let r = runs(&c, "minutely");
    for (name, scheduled, started, _) in &r {
        assert_eq!(scheduled % 60, 0, "{name} is scheduled on a whole minute: {r:?}");
        // Kubernetes names a CronJob's Jobs by the scheduled time in minutes.
        assert_eq!(*name, format!("minutely-{}", scheduled / 60), "{r:?}");
        assert!(started.is_some_and(|s| s >= *scheduled), "{r:?}");
    }
    assert!(r[0].2.is_some_and(|s| s - r[0].1 < 20), "the first run starts on its minute: {r:?}");
    assert_eq!(r[1].1 - r[0].1, 60, "the next minute's run: {r:?}");
    // Forbid: the minute that came while the first run went starts only once it has finished.
    let (ended, started) = (r[0].3.unwrap(), r[1].2.unwrap());
    assert!(
        started >= ended,
        "the second run started at {started}, before the first ended at {ended}: {r:?}"
    );
    let table = c.kubectl_ok(&["get", "cronjob", "minutely"]);
    assert!(table.contains("*/1 * * * *"), "{table}");
}

const GUARDED: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 2
      containers:
      - name: app
        image: "capstan.local/testapp:latest"
        imagePullPolicy: Never
        readinessProbe: {httpGet: {path: /readyz, port: 8080}, periodSeconds: 1}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: web}
spec:
  minAvailable: 2
  selector: {matchLabels: {app: web}}
"#;

/// The web pods that are ready and not being deleted, by node.
fn ready_web(c: &Cluster) -> Vec<String> {
    let pods = c.json(&["get", "pods", "-l", "app=web"]);
    let mut v: Vec<String> = pods["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .filter(|p| pod_ready(p))
        .map(|p| p["spec"]["nodeName"].as_str().unwrap_or("-").to_owned())
        .collect();
    v.sort();
    v
}

/// Runs `drain` while watching the ready web pods; returns its output and the fewest ready seen.
fn drain_watched(c: &Cluster, drain: &mut std::process::Command) -> (std::process::Output, usize) {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    std::thread::scope(|s| {
        let watch = s.spawn(|| {
            let mut fewest = usize::MAX;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                fewest = fewest.min(ready_web(c).len());
                std::thread::sleep(Duration::from_millis(100));
            }
            fewest
        });
        let out = drain.output().unwrap();
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        (out, watch.join().unwrap())
    })
}

#[test]
fn draining_a_node_keeps_the_disruption_budget() {
    let Some((run, c)) = docker_cluster(
        "draining_a_node_keeps_the_disruption_budget",
        "drain",
        &[("web.yaml", GUARDED)],
        &["--cluster-cidr", "10.214.0.0/16"],
    ) else {
        return;
    };
    let id = std::process::id();
    let (a, b) = (format!("drain-a-{id}"), format!("drain-b-{id}"));
    let _a = c.node(&a, &run, &[]);
    c.wait_until_within("three ready pods on the first node", 90, || {
        ready_web(&c) == [a.clone(), a.clone(), a.clone()]
    });
    let _b = c.node(&b, &run, &[]);
    c.wait_until_within("the second node ready", 60, || {
        c.kubectl_ok(&[
            "get",
            "node",
            &b,
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
        ]) == "True"
    });
    c.wait_until_within("the budget to allow one disruption", 30, || {
        c.json(&["get", "pdb", "web"])["status"]["disruptionsAllowed"] == 1
    });

    let (out, fewest) = drain_watched(
        &c,
        std::process::Command::new(env!("CARGO_BIN_EXE_capstan")).args(["drain", &a, "--kubeconfig", path_str(&c.kubeconfig())]),
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}{}\n{}", String::from_utf8_lossy(&out.stderr), c.log());
    assert!(said.contains(&format!("node/{a} drained")), "{said}");
    assert!(said.contains("will retry after 5s"), "the budget held some evictions back: {said}");
    assert!(fewest >= 2, "only {fewest} ready pods during the drain\n{said}");
    assert_eq!(ready_web(&c), [b.clone(), b.clone(), b.clone()]);
    let node = c.json(&["get", "node", &a]);
    assert_eq!(node["spec"]["unschedulable"], true, "cordoned");
    // The drain is audited: the cordon and each eviction, as audit.k8s.io/v1 Events.
    let audit: Vec<serde_json::Value> = std::fs::read_to_string(c.data.join("audit.log"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let audited = |verb: &str, resource: &str, subresource: Option<&str>| {
        audit
            .iter()
            .filter(|e| {
                e["kind"] == "Event"
                    && e["verb"] == verb
                    && e["objectRef"]["resource"] == resource
                    && e["objectRef"]["subresource"].as_str() == subresource
                    && e["annotations"]["authorization.k8s.io/decision"] == "allow"
            })
            .filter_map(|e| e["objectRef"]["name"].as_str())
            .collect::<Vec<_>>()
    };
    assert!(
        audited("patch", "nodes", None).contains(&a.as_str()),
        "no audit event of the cordon"
    );
    let evicted = audited("create", "pods", Some("eviction"));
    assert!(evicted.len() >= 3, "audit events of the evictions: {evicted:?}");

    // And back, with kubectl itself.
    c.kubectl_ok(&["uncordon", &a]);
    c.wait_until_within("the budget to allow one disruption again", 30, || {
        c.json(&["get", "pdb", "web"])["status"]["disruptionsAllowed"] == 1
    });
    let (out, fewest) = drain_watched(
        &c,
        std::process::Command::new("kubectl").arg("--kubeconfig").arg(c.kubeconfig()).args([
            "drain",
            &b,
            "--ignore-daemonsets",
            "--timeout=180s",
        ]),
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}{}", String::from_utf8_lossy(&out.stderr));
    assert!(fewest >= 2, "only {fewest} ready pods during kubectl drain\n{said}");
    assert_eq!(ready_web(&c), [a.clone(), a.clone(), a.clone()]);
    // A node is observed state: an administrator cordons, labels and annotates it; anything
    // else (here a taint) is its agent's.
    c.kubectl_ok(&["label", "node", &a, "team=web"]);
    let refused = c.kubectl(&["taint", "node", &a, "team=web:NoSchedule"]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("only cordoning"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
}

fn scaled(version: &str) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: busy}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: busy}}}}
  template:
    metadata: {{labels: {{app: busy}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: app
        image: "capstan.local/testapp:latest"
        imagePullPolicy: Never
        env: [{{name: VERSION, value: "{version}"}}]
        resources: {{requests: {{cpu: 100m}}}}
        readinessProbe: {{httpGet: {{path: /readyz, port: 8080}}, periodSeconds: 1}}
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {{name: busy}}
spec:
  scaleTargetRef: {{apiVersion: apps/v1, kind: Deployment, name: busy}}
  minReplicas: 1
  maxReplicas: 3
  metrics:
  - type: Resource
    resource: {{name: cpu, target: {{type: Utilization, averageUtilization: 50}}}}
  behavior:
    scaleDown:
      stabilizationWindowSeconds: 5
      policies: [{{type: Percent, value: 100, periodSeconds: 5}}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: calm}}
spec:
  serviceName: calm
  replicas: 1
  selector: {{matchLabels: {{app: calm}}}}
  template:
    metadata: {{labels: {{app: calm}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: app
        image: "capstan.local/testapp:latest"
        imagePullPolicy: Never
        env: [{{name: VERSION, value: "{version}"}}]
        resources: {{requests: {{cpu: 100m}}}}
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {{name: calm}}
spec:
  scaleTargetRef: {{apiVersion: apps/v1, kind: StatefulSet, name: calm}}
  minReplicas: 2
  maxReplicas: 3
  metrics:
  - type: Resource
    resource: {{name: cpu, target: {{type: Utilization, averageUtilization: 50}}}}
"#
    )
}

fn replicas(c: &Cluster) -> i64 {
    c.json(&["get", "deployment", "busy"])["spec"]["replicas"].as_i64().unwrap_or(0)
}

#[test]
fn an_autoscaler_follows_the_load_and_a_commit_keeps_its_count() {
    let Some((run, c)) = docker_cluster(
        "an_autoscaler_follows_the_load_and_a_commit_keeps_its_count",
        "autoscale",
        &[("busy.yaml", &scaled("1"))],
        &["--cluster-cidr", "10.215.0.0/16", "--horizontal-pod-autoscaler-sync-period", "2"],
    ) else {
        return;
    };
    let _agent = c.node(&format!("hpa-{}", std::process::id()), &run, &[]);
    // The autoscaler exists only once the daemon has applied the commit: until then, not found.
    c.wait_until_within("the pod ready and the autoscaler measuring it", 90, || {
        let out = c.kubectl(&["get", "hpa", "busy", "-o", "json"]);
        out.status.success()
            && serde_json::from_slice::<Value>(&out.stdout)
                .is_ok_and(|hpa| hpa["status"]["currentMetrics"][0]["resource"]["current"]["averageUtilization"].is_i64())
    });
    let table = c.kubectl_ok(&["get", "hpa", "busy"]);
    assert!(table.contains("Deployment/busy") && table.contains("/50%"), "{table}");
    // Load: one pod keeps a core busy, ten times its request.
    let pod = c.json(&["get", "pods", "-l", "app=busy"])["items"][0].clone();
    let ip = pod["status"]["podIP"].as_str().unwrap().to_owned();
    assert_eq!(http_get(&ip, "/control/burn?seconds=60").map(|r| r.0), Some(200));
    c.wait_until_within("the Deployment scaled up to its maximum", 60, || replicas(&c) == 3);
    let hpa = c.json(&["get", "hpa", "busy"]);
    let limited = hpa["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["type"] == "ScalingLimited" && c["status"] == "True");
    assert!(limited, "{hpa}");
    let events = c.kubectl_ok(&["get", "events", "--field-selector", "involvedObject.name=busy"]);
    assert!(events.contains("SuccessfulRescale") && events.contains("New size: 3"), "{events}");

    // A commit that changes only the pods' environment keeps the autoscaled count.
    c.commit(&[("busy.yaml", &scaled("2"))], &[], "version 2");
    c.wait_until_within("the new template applied", 30, || {
        c.json(&["get", "deployment", "busy"])["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"] == "2"
    });
    assert_eq!(replicas(&c), 3, "the commit did not reset the autoscaled replicas");

    // The new pods do not burn: the load is gone and it scales back down.
    c.wait_until_within("the Deployment back at its minimum", 120, || replicas(&c) == 1);

    // A StatefulSet is scaled the same way: Git's one replica is below the autoscaler's
    // minimum, so it runs two, and the commit above (which changed its template) kept them.
    let table = c.kubectl_ok(&["get", "hpa", "calm"]);
    assert!(table.contains("StatefulSet/calm"), "{table}");
    c.wait_until_within("the StatefulSet at the autoscaler's minimum", 60, || {
        c.json(&["get", "statefulset", "calm"])["spec"]["replicas"] == 2
            && c.json(&["get", "pods", "-l", "app=calm"])["items"]
                .as_array()
                .is_some_and(|p| p.len() == 2)
    });
    let version = &c.json(&["get", "statefulset", "calm"])["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"];
    assert_eq!(version, "2");
    // Its Scale reads the autoscaler's count; scaling it by hand is refused, naming the
    // autoscaler and where its bounds are declared.
    let scale = c.json(&["get", "statefulset", "calm", "--subresource=scale"]);
    assert_eq!(
        (scale["spec"]["replicas"].as_i64(), scale["status"]["replicas"].as_i64()),
        (Some(2), Some(2)),
        "{scale}"
    );
    let o = c.kubectl(&["scale", "statefulset/calm", "--replicas=5"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("statefulsets.apps \"calm\" is scaled by HorizontalPodAutoscaler \"calm\": to change its count, change the autoscaler's minReplicas and maxReplicas in busy.yaml"),
        "{err}"
    );
}
