//! Jobs on the real node agent, Docker Engine, daemon and kubectl: a parallel Job runs its
//! completions two at a time and `kubectl wait --for=condition=complete` returns; an Indexed
//! Job's pods see their index; a failing Job stops at its backoff limit with Kubernetes' reason.

mod common;

use std::time::{Duration, Instant};

use common::{Cluster, DockerRun, build_images, docker_available};
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

fn json(c: &Cluster, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    serde_json::from_str(&c.kubectl_ok(&all)).unwrap()
}

#[test]
fn jobs_run_to_completion_by_index_and_stop_at_their_backoff_limit() {
    if !docker_available("jobs_run_to_completion_by_index_and_stop_at_their_backoff_limit") {
        return;
    }
    build_images();
    let run = DockerRun::new("jobs");
    let c = Cluster::start_with(&[("jobs.yaml", JOBS)], &["--cluster-cidr", "10.203.0.0/16"]);
    let _agent = c.node(&format!("jobs-{}", std::process::id()), &run, &[]);

    // kubectl waits for the condition as it would on Kubernetes.
    let waited = c.kubectl(&["wait", "--for=condition=complete", "job/count", "--timeout=120s"]);
    assert!(waited.status.success(), "{}\n{}", String::from_utf8_lossy(&waited.stderr), c.log());
    let count = json(&c, &["get", "job", "count"]);
    assert_eq!(count["status"]["succeeded"], 5);
    let table = c.kubectl_ok(&["get", "job", "count"]);
    assert!(table.contains("Complete") && table.contains("5/5"), "{table}");

    let waited = c.kubectl(&["wait", "--for=condition=complete", "job/indexed", "--timeout=120s"]);
    assert!(waited.status.success(), "{}", String::from_utf8_lossy(&waited.stderr));
    let indexed = json(&c, &["get", "job", "indexed"]);
    assert_eq!(indexed["status"]["completedIndexes"], "0-2");
    let pods = json(&c, &["get", "pods", "-l", "batch.kubernetes.io/job-name=indexed"]);
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
        let job = json(&c, &["get", "job", "failing"]);
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
