//! The round trip of `kubectl exec POD -- true` (p50, p99) on the real kubectl, daemon, node agent
//! and Docker Engine, beside `docker exec CONTAINER true` on the same container in the same run
//! (the floor: both are a CLI starting and the Engine running the process; kubectl adds the API
//! server's and the agent's TLS hops and the relay). Target: at most 1.5× the floor plus 20 ms.
//!
//! `cargo bench --bench streams` (`-- --quick`: 20 runs each instead of 100). Needs the Docker
//! Engine, kubectl and the images from examples-repo/images/build.sh.

use std::process::Command;
use std::time::{Duration, Instant};

use capstan_containers::{Docker, Runtime};
use capstan_daemon::context::kind;
use capstan_daemon::{Daemon, DaemonConfig};
use capstan_node::{Agent, NodeConfig};
use serde_json::json;

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    let i = ((samples.len() as f64 * p).ceil() as usize).clamp(1, samples.len()) - 1;
    samples[i]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// Runs `cmd` `n` times, each a success; the wall time of each.
fn timed(n: usize, mut cmd: impl FnMut() -> Command) -> Vec<Duration> {
    (0..n)
        .map(|_| {
            let t = Instant::now();
            let out = cmd().output().expect("the command runs");
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            t.elapsed()
        })
        .collect()
}

#[tokio::main]
async fn main() {
    let quick = std::env::args().any(|a| a == "--quick") || std::env::var_os("CAPSTAN_BENCH_QUICK").is_some();
    let n = if quick { 20 } else { 100 };
    let images = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/examples-repo/images/build.sh")).status();
    assert!(images.is_ok_and(|s| s.success()), "building the test images failed");

    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    std::fs::write(repo.join("ns.yaml"), "apiVersion: v1\nkind: Namespace\nmetadata: {name: bench}\n").unwrap();
    for args in [&["init", "-q"][..], &["add", "-A"], &["commit", "-q", "-m", "bench"]] {
        capstan_git::fixture::git(&repo, args);
    }
    let mut config = DaemonConfig::new(repo.to_str().unwrap(), dir.path().join("data"));
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.pod_cidr = "10.218.0.0/16".parse().unwrap();
    let d = Daemon::start(config).await.unwrap();
    let node = format!("bench-exec-{}", std::process::id());
    let mut nc = NodeConfig::new(d.url(), d.node_token.clone(), node.clone(), dir.path().join("node"));
    nc.listen = "127.0.0.1:0".parse().unwrap();
    nc.node_ip = Some("127.0.0.1".parse().unwrap());
    nc.runtime_labels = vec![("capstan.test".to_owned(), format!("bench-{}", std::process::id()))];
    let agent = Agent::start(nc).await.unwrap();
    let pods = kind("pods");
    let pod = json!({"metadata": {"name": "shell", "namespace": "bench"},
        "spec": {"nodeName": node, "terminationGracePeriodSeconds": 0,
                 "containers": [{"name": "app", "image": "capstan.local/testapp:latest", "args": ["sleep", "3600"]}]}});
    while d.objects.create(pods, pod.clone()).await.is_err() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while d
        .cache
        .get(pods, "bench", "shell")
        .is_none_or(|p| p.object["status"]["phase"] != "Running")
    {
        assert!(Instant::now() < deadline, "the pod did not run");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let docker = Docker::connect().await.unwrap();
    let labels = [
        (capstan_api::meta::LABEL_NODE, node.as_str()),
        (capstan_api::meta::LABEL_POD, "shell"),
        (capstan_api::meta::LABEL_CONTAINER, "app"),
    ];
    let container = docker.list(&labels).await.unwrap().remove(0).id;
    let kubeconfig = dir.path().join("data/kubeconfig");

    let measure = tokio::task::spawn_blocking(move || {
        let kubectl = || {
            let mut c = Command::new("kubectl");
            c.arg("--kubeconfig")
                .arg(&kubeconfig)
                .args(["exec", "-n", "bench", "shell", "--", "true"]);
            c
        };
        let docker_exec = || {
            let mut c = Command::new("docker");
            c.args(["exec", &container, "true"]);
            c
        };
        // Warm both paths (kubectl's discovery cache, the Engine's exec), then interleave.
        timed(2, kubectl);
        timed(2, docker_exec);
        let (mut k, mut f) = (Vec::new(), Vec::new());
        for _ in 0..n {
            k.extend(timed(1, kubectl));
            f.extend(timed(1, docker_exec));
        }
        (k, f)
    });
    let (mut k, mut f) = measure.await.unwrap();
    let (k50, k99, f50, f99) = (
        percentile(&mut k, 0.5),
        percentile(&mut k, 0.99),
        percentile(&mut f, 0.5),
        percentile(&mut f, 0.99),
    );
    let target = |floor: Duration| floor.mul_f64(1.5) + Duration::from_millis(20);
    println!("exec round trip, {n} runs each:");
    println!("  kubectl exec -- true   p50 {}  p99 {}", ms(k50), ms(k99));
    println!(
        "  docker exec true       p50 {}  p99 {}   (floor, same container)",
        ms(f50),
        ms(f99)
    );
    println!(
        "  ratio p50 {:.2}x, p99 {:.2}x; target <= 1.5x + 20 ms: p50 {} ({} allowed), p99 {} ({} allowed)",
        k50.as_secs_f64() / f50.as_secs_f64(),
        k99.as_secs_f64() / f99.as_secs_f64(),
        if k50 <= target(f50) { "met" } else { "missed" },
        ms(target(f50)),
        if k99 <= target(f99) { "met" } else { "missed" },
        ms(target(f99)),
    );

    let _ = d.objects.delete(pods, "bench", "shell", None).await;
    let node_labels = [(capstan_api::meta::LABEL_NODE, node.as_str())];
    for _ in 0..300 {
        if docker.list(&node_labels).await.map(|l| l.is_empty()).unwrap_or(true) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    agent.shutdown().await;
    for c in docker.list(&node_labels).await.unwrap_or_default() {
        let _ = docker.remove(&c.id).await;
    }
    let _ = docker.remove_network(&capstan_node::pods::network_name(&node)).await;
    d.shutdown().await;
}
