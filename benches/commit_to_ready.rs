//! Commit-to-Ready latency on the real Docker Engine: from the commit of a new 10-replica
//! Deployment and its Service until all 10 pods are Ready (readiness probe every second) and
//! the Service's endpoints list all 10. Two ways in: a local repository (noticed through notify)
//! and a file:// remote polled once an hour, brought in by `git push` and a signed webhook.
//! Target: under 3 s.
//!
//! `cargo bench --bench commit_to_ready` (3 rounds per way in; `-- --quick`: 1). Needs the Docker
//! Engine, curl, and the images from examples-repo/images/build.sh.

use std::process::Command;
use std::time::{Duration, Instant};

use capstan_containers::Runtime;
use capstan_daemon::context::kind;
use capstan_daemon::{Daemon, DaemonConfig};
use capstan_node::{Agent, NodeConfig};

const REPLICAS: usize = 10;
const SECRET: &str = "bench-secret";

use capstan_git::fixture::git;

fn manifest(name: &str) -> String {
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: bench}}
spec:
  replicas: {REPLICAS}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      terminationGracePeriodSeconds: 0
      containers:
      - name: app
        image: capstan.local/testapp:latest
        ports: [{{name: http, containerPort: 8080}}]
        readinessProbe: {{httpGet: {{path: /readyz, port: http}}, periodSeconds: 1}}
---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: bench}}
spec:
  selector: {{app: {name}}}
  ports: [{{name: http, port: 80, targetPort: http}}]
"
    )
}

struct Setup {
    _dir: tempfile::TempDir,
    repo: std::path::PathBuf,
    remote: bool,
    daemon: Daemon,
    agent: Agent,
    node: String,
}

impl Setup {
    async fn start(remote: bool, cidr: capstan_api::cidr::Cidr) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("repo");
        std::fs::create_dir_all(&repo).unwrap();
        std::fs::write(repo.join("ns.yaml"), "apiVersion: v1\nkind: Namespace\nmetadata: {name: bench}\n").unwrap();
        git(&repo, &["init", "-q"]);
        git(&repo, &["add", "-A"]);
        git(&repo, &["commit", "-q", "-m", "namespace"]);
        let tracked = if remote {
            let bare = dir.path().join("remote.git");
            git(
                dir.path(),
                &["clone", "-q", "--bare", repo.to_str().unwrap(), bare.to_str().unwrap()],
            );
            git(&repo, &["remote", "add", "origin", bare.to_str().unwrap()]);
            format!("file://{}", bare.display())
        } else {
            repo.display().to_string()
        };
        let mut config = DaemonConfig::new(tracked, dir.path().join("data"));
        config.listen = "127.0.0.1:0".parse().unwrap();
        config.pod_cidr = cidr;
        config.poll_interval = Duration::from_secs(3600);
        config.webhook_secret = Some(SECRET.as_bytes().to_vec());
        let daemon = Daemon::start(config).await.unwrap();
        let node = format!("bench-c2r-{}-{}", std::process::id(), u8::from(remote));
        let mut nc = NodeConfig::new(daemon.url(), daemon.node_token.clone(), node.clone(), dir.path().join("node"));
        nc.listen = "127.0.0.1:0".parse().unwrap();
        nc.node_ip = Some("127.0.0.1".parse().unwrap());
        nc.runtime_labels = vec![("capstan.test".to_owned(), format!("bench-{}", std::process::id()))];
        let agent = Agent::start(nc).await.unwrap();
        Setup {
            _dir: dir,
            repo,
            remote,
            daemon,
            agent,
            node,
        }
    }

    /// Commits (and for a remote: pushes and calls the webhook).
    fn publish(&self, message: &str) {
        git(&self.repo, &["add", "-A"]);
        git(&self.repo, &["commit", "-q", "-m", message]);
        if self.remote {
            git(&self.repo, &["push", "-q", "origin", "HEAD"]);
            // As a forge sends it: each push names its commit (the same body twice is a replay).
            let head = Command::new("git")
                .args(["rev-parse", "HEAD"])
                .current_dir(&self.repo)
                .output()
                .expect("git");
            let body = format!(
                r#"{{"ref":"refs/heads/main","after":"{}"}}"#,
                String::from_utf8_lossy(&head.stdout).trim()
            );
            let body = body.as_str();
            let sig = hex::encode(capstan_daemon::webhook::hmac_sha256(SECRET.as_bytes(), body.as_bytes()));
            let ca = self.daemon.kubeconfig.parent().unwrap().join("pki/ca.crt");
            let out = Command::new("curl")
                .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
                .arg(ca)
                .args(["-X", "POST", "--data-binary", body, "-H"])
                .arg(format!("X-Hub-Signature-256: sha256={sig}"))
                .arg(format!("{}/hooks/git", self.daemon.url()))
                .output()
                .expect("curl");
            assert_eq!(String::from_utf8_lossy(&out.stdout), "202", "the webhook was not accepted");
        }
    }

    /// How many of `name`'s pods pass `f`.
    fn count(&self, name: &str, f: impl Fn(&serde_json::Value) -> bool) -> usize {
        let pods = self.daemon.cache.list(kind("pods"), Some("bench")).0;
        pods.iter()
            .filter(|p| p.name.starts_with(name) && p.object["metadata"]["deletionTimestamp"].is_null())
            .filter(|p| f(&p.object))
            .count()
    }

    fn ready(&self, name: &str) -> bool {
        let pods = self.daemon.cache.list(kind("pods"), Some("bench")).0;
        let ready = pods
            .iter()
            .filter(|p| p.name.starts_with(name) && p.object["metadata"]["deletionTimestamp"].is_null())
            .filter(|p| {
                p.object["status"]["conditions"]
                    .as_array()
                    .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
            })
            .count();
        let endpoints = self
            .daemon
            .cache
            .get(kind("endpoints"), "bench", name)
            .and_then(|e| e.object["subsets"][0]["addresses"].as_array().map(Vec::len))
            .unwrap_or(0);
        ready == REPLICAS && endpoints == REPLICAS
    }

    fn empty(&self) -> bool {
        self.daemon.cache.list(kind("pods"), Some("bench")).0.is_empty()
    }

    /// One round: the commit of `name`, timed until the Deployment is in the API (Git noticed and
    /// applied), until every pod is bound to the node, until every pod runs, and until all are
    /// Ready and in the endpoints; then its removal, until gone.
    async fn round(&self, name: &str) -> [Duration; 4] {
        std::fs::write(self.repo.join("web.yaml"), manifest(name)).unwrap();
        let t = Instant::now();
        self.publish(name);
        wait(&format!("{name} applied"), || {
            self.daemon.cache.get(kind("deployments"), "bench", name).is_some()
        })
        .await;
        let applied = t.elapsed();
        wait(&format!("{name} bound"), || {
            self.count(name, |p| p["spec"]["nodeName"].as_str().is_some_and(|n| !n.is_empty())) == REPLICAS
        })
        .await;
        let bound = t.elapsed();
        wait(&format!("{name} running"), || {
            self.count(name, |p| p["status"]["phase"] == "Running") == REPLICAS
        })
        .await;
        let running = t.elapsed();
        wait(&format!("{name} ready"), || self.ready(name)).await;
        let took = [applied, bound, running, t.elapsed()];
        std::fs::remove_file(self.repo.join("web.yaml")).unwrap();
        self.publish("remove");
        wait("the pods to go", || self.empty()).await;
        took
    }

    async fn stop(self) {
        self.agent.shutdown().await;
        self.daemon.shutdown().await;
        if let Ok(docker) = capstan_containers::Docker::connect().await {
            let _ = docker.remove_network(&capstan_node::pods::network_name(&self.node)).await;
        }
    }
}

async fn wait(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(180);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

#[tokio::main]
async fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let rounds = if quick { 1 } else { 3 };
    let images = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/examples-repo/images/build.sh")).status();
    assert!(images.is_ok_and(|s| s.success()), "building the test images failed");
    println!(
        "Commit-to-Ready benchmark{}: a {REPLICAS}-replica Deployment and its Service, commit -> all pods Ready and in the endpoints (real Docker Engine)",
        if quick { " (quick)" } else { "" }
    );
    for (remote, label, cidr) in [
        (false, "local repository (notify)", "10.211.0.0/16".parse().unwrap()),
        (true, "file:// remote, push + webhook", "10.212.0.0/16".parse().unwrap()),
    ] {
        let setup = Setup::start(remote, cidr).await;
        setup.round("warmup").await; // the node's network, the first image load
        let mut stages: [Vec<Duration>; 4] = Default::default();
        for r in 0..rounds {
            for (stage, took) in stages.iter_mut().zip(setup.round(&format!("web{r}")).await) {
                stage.push(took);
            }
        }
        for s in &mut stages {
            s.sort();
        }
        let [applied, bound, running, ready] = &stages;
        let p50 = |s: &Vec<Duration>| secs(s[s.len() / 2]);
        println!(
            "  {label:<32} ready p50 {}   max {}   (p50 from the commit: in the API {}, all bound {}, all Running {}; {rounds} rounds)",
            p50(ready),
            secs(ready[ready.len() - 1]),
            p50(applied),
            p50(bound),
            p50(running)
        );
        setup.stop().await;
    }
}
