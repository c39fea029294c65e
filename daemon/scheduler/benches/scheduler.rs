//! Scheduler throughput, modelled on Kubernetes' scheduler_perf. Prints pods/s and memory for:
//! SchedulingBasic (5,000 nodes; 10,000 and 50,000 pods), required pod anti-affinity (5,000
//! nodes, 2,000 pods), topology spread (5,000 nodes in 3 zones, 10,000 pods), node affinity
//! (5,000 nodes, 10,000 pods). Each pod is scheduled and assumed onto its node, as the loop does.
//!
//! `cargo bench -p capstan-scheduler --bench scheduler` (`-- --quick` for the small CI run).

use std::time::Instant;

use capstan_scheduler::{Config, Decision, NodeInfo, PodInfo, Scheduler, Snapshot};
use serde_json::{Value, json};

fn rss_mb() -> f64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: f64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0.0);
    pages * 4096.0 / 1e6
}

fn nodes(n: usize) -> Snapshot {
    let mut s = Snapshot::new();
    for i in 0..n {
        s.upsert_node(NodeInfo::from_json(&json!({
            "metadata": {"name": format!("node-{i}"), "labels": {"kubernetes.io/hostname": format!("node-{i}"), "topology.kubernetes.io/zone": format!("zone-{}", i % 3), "pool": format!("pool-{}", i % 10)}},
            "status": {"allocatable": {"cpu": "32", "memory": "128Gi", "pods": "110"}, "conditions": [{"type": "Ready", "status": "True"}]}
        })));
    }
    s
}

fn pod(i: usize, extra: &Value) -> PodInfo {
    let mut spec = json!({"containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10", "resources": {"requests": {"cpu": "100m", "memory": "500Mi"}}}]});
    if let Some(o) = extra.as_object() {
        for (k, v) in o {
            spec[k] = v.clone();
        }
    }
    PodInfo::from_json(
        &json!({"metadata": {"name": format!("pod-{i}"), "namespace": "bench", "labels": {"app": "bench", "color": "blue"}}, "spec": spec}),
    )
}

fn run(label: &str, node_count: usize, pod_count: usize, extra: Value) {
    let mut snapshot = nodes(node_count);
    let pods: Vec<PodInfo> = (0..pod_count).map(|i| pod(i, &extra)).collect();
    let before = rss_mb();
    let mut scheduler = Scheduler::new(Config::default());
    let start = Instant::now();
    let mut bound = 0;
    for p in pods {
        if let Decision::Bind(n) = scheduler.schedule(&snapshot, &p) {
            snapshot.assume(p, &n);
            bound += 1;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "  {label:<44} {:>7.0} pods/s   ({bound}/{pod_count} bound in {:.2} s; {:.0} MB resident, +{:.0} MB)",
        pod_count as f64 / secs,
        secs,
        rss_mb(),
        rss_mb() - before
    );
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick") || std::env::var_os("CAPSTAN_BENCH_QUICK").is_some();
    let (n, scale) = if quick { (500, 10) } else { (5000, 1) };
    println!(
        "scheduler benchmark{} (scheduler_perf workloads; Kubernetes CI thresholds: basic 680-810, anti-affinity 60, node affinity 220 pods/s)",
        if quick { " (quick)" } else { "" }
    );
    run(
        &format!("SchedulingBasic, {n} nodes, {} pods", 10_000 / scale),
        n,
        10_000 / scale,
        json!({}),
    );
    run(
        &format!("SchedulingBasic, {n} nodes, {} pods", 50_000 / scale),
        n,
        50_000 / scale,
        json!({}),
    );
    run(
        &format!("required anti-affinity, {n} nodes, {} pods", 2_000 / scale),
        n,
        2_000 / scale,
        json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{"labelSelector": {"matchLabels": {"color": "blue"}}, "topologyKey": "kubernetes.io/hostname"}]}}}),
    );
    run(
        &format!("topology spread (3 zones), {n} nodes, {} pods", 10_000 / scale),
        n,
        10_000 / scale,
        json!({"topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"color": "blue"}}}]}),
    );
    run(
        &format!("node affinity, {n} nodes, {} pods", 10_000 / scale),
        n,
        10_000 / scale,
        json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [{"key": "pool", "operator": "In", "values": ["pool-1", "pool-2", "pool-3"]}]}]}}}}),
    );
    println!("  targets on 2 cores: basic >= 10,000 pods/s, required anti-affinity >= 1,000 pods/s");
}
