//! Controller benchmark: one commit declares 1,000 Deployments of 10 replicas; prints the time
//! until the controllers have created the 10,000 pods (and the scheduler has bound them to 100
//! nodes), and the CPU time per reconcile.
//!
//! Then every Deployment is removed and the pods go: the resident memory at start, with the pods
//! and after they went; then the same once more, to show that what stays is reused, not leaked;
//! then once the rounds' Events have expired (a TTL of 30 s here instead of the hour).
//!
//! Then a DaemonSet on 1,000 nodes (the time to a pod bound on each), and 1,000 Jobs of one pod
//! in one commit, ended by a stand-in kubelet (the time to every Job Complete).
//!
//! `cargo bench -p capstan-daemon --bench controllers` (`-- --quick`: 100 Deployments, 100 Jobs).

use std::time::{Duration, Instant};

use capstan_daemon::context::kind;
use capstan_daemon::{Daemon, DaemonConfig};
use serde_json::json;

/// User plus system CPU time of this process.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: u64 = fields.get(11).and_then(|u| u.parse().ok()).unwrap_or(0) + fields.get(12).and_then(|s| s.parse().ok()).unwrap_or(0);
    Duration::from_secs_f64(ticks as f64 / 100.0)
}

#[tokio::main]
async fn main() {
    let quick = std::env::args().any(|a| a == "--quick") || std::env::var_os("CAPSTAN_BENCH_QUICK").is_some();
    let deployments = if quick { 100 } else { 1_000 };
    let replicas = 10;
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(repo.join("apps")).unwrap();
    std::fs::write(repo.join("ns.yaml"), "apiVersion: v1\nkind: Namespace\nmetadata: {name: bench}\n").unwrap();
    // Removing every Deployment at the end is meant: no prune limit.
    std::fs::write(
        repo.join("settings.yaml"),
        "apiVersion: capstan.dev/v1alpha1\nkind: ClusterSettings\nmetadata: {name: cluster}\nspec: {pruneLimitPercent: 100}\n",
    )
    .unwrap();
    for f in 0..deployments / 10 {
        let mut text = String::new();
        for i in f * 10..f * 10 + 10 {
            text.push_str(&format!(
                "---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: app-{i}, namespace: bench}}\nspec:\n  replicas: {replicas}\n  selector: {{matchLabels: {{app: app-{i}}}}}\n  template:\n    metadata: {{labels: {{app: app-{i}}}}}\n    spec:\n      containers: [{{name: c, image: 'capstan.local/testapp:latest', resources: {{requests: {{cpu: 10m, memory: 8Mi}}}}}}]\n"
            ));
        }
        std::fs::write(repo.join(format!("apps/f{f}.yaml")), text).unwrap();
    }
    let git = |args: &[&str]| {
        capstan_git::fixture::git(&repo, args);
    };
    git(&["init", "-q"]);
    git(&["add", "-A"]);
    git(&["commit", "-q", "-m", "bench"]);
    let mut config = DaemonConfig::new(repo.to_str().unwrap(), dir.path().join("data"));
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.event_ttl = EVENT_TTL;
    let start = Instant::now();
    let cpu0 = cpu_time();
    let r0 = capstan_runtime::RECONCILES.load(std::sync::atomic::Ordering::Relaxed);
    let d = Daemon::start(config).await.unwrap();
    let rss_start = rss_mb();
    for i in 0..100 {
        d.objects.create(kind("nodes"), fake_node(i)).await.unwrap();
    }
    let want = deployments * replicas;
    let (created_at, bound_at) = until_bound(&d, want, start).await;
    let cpu = cpu_time() - cpu0;
    let reconciles = capstan_runtime::RECONCILES.load(std::sync::atomic::Ordering::Relaxed) - r0;
    println!(
        "controller benchmark{}: one commit with {deployments} Deployments x {replicas} replicas, 100 nodes",
        if quick { " (quick)" } else { "" }
    );
    println!(
        "  commit to {want} pods created              {:>8.2} s   target < 5 s (for 10,000)",
        created_at.as_secs_f64()
    );
    println!("  commit to {want} pods bound by the scheduler {:>6.2} s", bound_at.as_secs_f64());
    println!(
        "  reconciles: {reconciles}, CPU {:.2} s in all, {:.0} us per reconcile (sync, scheduling and API included)",
        cpu.as_secs_f64(),
        cpu.as_secs_f64() * 1e6 / reconciles.max(1) as f64
    );

    // The pods go: every Deployment is removed from Git, and a stand-in kubelet confirms each
    // pod's deletion; then the memory the daemon still holds. Twice: memory the first round
    // kept must be reused by the second, not added to.
    let mut rounds = Vec::new();
    for round in 0..2 {
        if round > 0 {
            git(&["revert", "--quiet", "--no-edit", "HEAD"]);
            until_bound(&d, want, Instant::now()).await;
        }
        let rss_full = rss_mb();
        git(&["rm", "-q", "-r", "apps"]);
        git(&["commit", "-q", "-m", "remove every deployment"]);
        let gone = Instant::now();
        loop {
            let pods = d.cache.list(kind("pods"), Some("bench")).0;
            if pods.is_empty() && d.cache.list(kind("replicasets"), Some("bench")).0.is_empty() {
                break;
            }
            for p in pods.iter().filter(|p| !p.object["metadata"]["deletionTimestamp"].is_null()) {
                let _ = d.objects.delete(kind("pods"), "bench", &p.name, None).await;
            }
            assert!(gone.elapsed() < Duration::from_secs(300), "timed out with {} pods left", pods.len());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let gone_after = gone.elapsed();
        // Let the queues, caches and event recorders settle.
        tokio::time::sleep(Duration::from_secs(3)).await;
        rounds.push((rss_full, rss_mb(), gone_after, d.cache.list(kind("events"), None).0.len()));
    }
    let [(full1, after1, gone1, events1), (full2, after2, _, events2)] = rounds[..] else {
        unreachable!("two rounds")
    };
    println!(
        "  the {want} pods removed in {:.2} s; resident memory: {rss_start:.0} MB at start, {full1:.0} MB with the pods, {after1:.0} MB after they went",
        gone1.as_secs_f64()
    );
    println!(
        "  again (the same Deployments back, then gone): {full2:.0} MB with the pods, {after2:.0} MB after they went; Events alive: {events1} after the first round, {events2} after the second"
    );
    let expiring = Instant::now();
    while !d.cache.list(kind("events"), None).0.is_empty() {
        assert!(expiring.elapsed() < EVENT_TTL * 3, "the Events did not expire");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    println!(
        "  once every Event expired (--event-ttl {} s here): {:.0} MB",
        EVENT_TTL.as_secs(),
        rss_mb()
    );

    d.shutdown().await;

    // A DaemonSet on 1,000 nodes: the time from its commit to a pod bound on every node. A
    // new daemon, with 1,000 fresh nodes (the first one's have renewed no lease for minutes:
    // they are unreachable, and daemon pods do not start on such nodes).
    let config = DaemonConfig::new(repo.to_str().unwrap(), dir.path().join("data2"));
    let d = Daemon::start(DaemonConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..config
    })
    .await
    .unwrap();
    let nodes = 1_000;
    for i in 0..nodes {
        d.objects.create(kind("nodes"), fake_node(i)).await.unwrap();
    }
    std::fs::write(
        repo.join("daemonset.yaml"),
        "apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {name: agent, namespace: bench}\nspec:\n  selector: {matchLabels: {app: agent}}\n  template:\n    metadata: {labels: {app: agent}}\n    spec:\n      containers: [{name: c, image: 'capstan.local/testapp:latest', resources: {requests: {cpu: 10m, memory: 8Mi}}}]\n",
    )
    .unwrap();
    git(&["add", "-A"]);
    git(&["commit", "-q", "-m", "daemonset"]);
    let (created_at, bound_at) = until_bound(&d, nodes, Instant::now()).await;
    println!(
        "  a DaemonSet on {nodes} nodes: commit to a pod created for every node {:>6.2} s, bound to it {:.2} s   target < 2 s (slow-start batches 1, 2, 4, ... as Kubernetes, which also caps a sync at 250 creates)",
        created_at.as_secs_f64(),
        bound_at.as_secs_f64()
    );
    git(&["rm", "-q", "daemonset.yaml"]);
    git(&["commit", "-q", "-m", "no daemonset"]);

    // 1,000 Jobs of one pod each in one commit; a stand-in kubelet ends every bound pod with
    // success. The time until every Job is Complete.
    let jobs = if quick { 100 } else { 1_000 };
    std::fs::create_dir_all(repo.join("jobs")).unwrap();
    for f in 0..jobs / 10 {
        let mut text = String::new();
        for i in f * 10..f * 10 + 10 {
            text.push_str(&format!(
                "---\napiVersion: batch/v1\nkind: Job\nmetadata: {{name: job-{i}, namespace: bench}}\nspec:\n  template:\n    spec:\n      restartPolicy: Never\n      containers: [{{name: c, image: 'capstan.local/testapp:latest', resources: {{requests: {{cpu: 10m, memory: 8Mi}}}}}}]\n"
            ));
        }
        std::fs::write(repo.join(format!("jobs/f{f}.yaml")), text).unwrap();
    }
    git(&["add", "-A"]);
    git(&["commit", "-q", "-m", "jobs"]);
    let start = Instant::now();
    let kubelet = {
        let (objects, cache) = (d.objects.clone(), d.cache.clone());
        tokio::spawn(async move {
            loop {
                let pods = cache.list(kind("pods"), Some("bench")).0;
                let due: Vec<_> = pods
                    .iter()
                    .filter(|p| p.object["spec"]["nodeName"].is_string() && p.object["status"]["phase"] != "Succeeded")
                    .filter(|p| p.object["metadata"]["deletionTimestamp"].is_null())
                    .collect();
                let at = capstan_api::time::now_rfc3339();
                futures::future::join_all(due.iter().map(|p| {
                    objects.modify(kind("pods"), "bench", &p.name, true, |pod| {
                        pod["status"]["phase"] = json!("Succeeded");
                        pod["status"]["containerStatuses"] = json!([{"name": "c", "ready": false, "restartCount": 0,
                            "state": {"terminated": {"exitCode": 0, "finishedAt": at, "reason": "Completed"}}}]);
                        true
                    })
                }))
                .await;
                for p in pods.iter().filter(|p| !p.object["metadata"]["deletionTimestamp"].is_null()) {
                    let _ = objects.delete(kind("pods"), "bench", &p.name, None).await;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    loop {
        let (all, _) = d.cache.list(kind("jobs"), Some("bench"));
        let complete = all
            .iter()
            .filter(|j| {
                j.object["status"]["conditions"]
                    .as_array()
                    .is_some_and(|c| c.iter().any(|c| c["type"] == "Complete" && c["status"] == "True"))
            })
            .count();
        if complete == jobs {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "timed out with {complete} of {jobs} Jobs complete"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!(
        "  {jobs} Jobs of one pod in one commit: all Complete {:>6.2} s   target < 5 s (for 1,000)",
        start.elapsed().as_secs_f64()
    );
    kubelet.abort();
    d.shutdown().await;
}

/// A node with room for the benchmark's pods.
fn fake_node(i: usize) -> serde_json::Value {
    json!({"metadata": {"name": format!("node-{i}")}, "status": {"allocatable": {"cpu": "64", "memory": "256Gi", "pods": "250"}, "conditions": [{"type": "Ready", "status": "True"}]}})
}

/// Waits until the namespace `bench` has `want` pods, all bound: how long after `start` they
/// were all created, and all bound.
async fn until_bound(d: &Daemon, want: usize, start: Instant) -> (Duration, Duration) {
    let mut created_at = None;
    loop {
        let pods = d.cache.list(kind("pods"), Some("bench")).0;
        if created_at.is_none() && pods.len() >= want {
            created_at = Some(start.elapsed());
        }
        if pods.len() >= want && pods.iter().all(|p| p.object["spec"]["nodeName"].is_string()) {
            return (created_at.unwrap_or_default(), start.elapsed());
        }
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "timed out with {} of {want} pods",
            pods.len()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Events live this long in the benchmark (an hour by default).
const EVENT_TTL: Duration = Duration::from_secs(30);

/// This process's resident memory (VmRSS), in MB.
fn rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}
