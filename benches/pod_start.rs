//! Pod start latency on the real Docker Engine: the time from a pod being bound to its node
//! until its status says Running (p50, p99), one pod at a time and in a burst, beside the raw
//! create-and-start time of a container of the same image on the same bridge network, measured in
//! the same run (the physical limit; a pod is two containers, its sandbox and its program).
//!
//! StatefulSets: ten replicas all Ready under OrderedReady beside the floor of ordered creation
//! (the sum of ten single pod starts, each created unbound and waited for until Ready, in the
//! same run), and under Parallel beside a ten-replica Deployment.
//!
//! `cargo bench --bench pod_start` (`-- --quick`: 10 pods instead of 50). Needs the Docker Engine
//! and the images from examples-repo/images/build.sh.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use capstan_containers::{ContainerConfig, Docker, NetworkMode, Runtime};
use capstan_daemon::context::kind;
use serde_json::json;

mod common;
use common::{OneNode, ms, percentile};

const IMAGE: &str = "capstan.local/testapp:latest";

fn pod(i: usize, node: &str) -> serde_json::Value {
    json!({"metadata": {"name": format!("p-{i:03}"), "namespace": "bench"},
           "spec": {"nodeName": node, "terminationGracePeriodSeconds": 0,
                    "containers": [{"name": "app", "image": IMAGE, "args": ["sleep", "3600"]}]}})
}

#[tokio::main]
async fn main() {
    let quick = std::env::args().any(|a| a == "--quick") || std::env::var_os("CAPSTAN_BENCH_QUICK").is_some();
    let n = if quick { 10 } else { 50 };
    let machine = OneNode::start("10.209.0.0/16", "bench").await;
    let (d, node, run_label) = (&machine.daemon, machine.node.clone(), machine.run_label.clone());
    let pods = kind("pods");
    let network = capstan_node::pods::network_name(&node);
    let docker = Docker::connect().await.unwrap();

    // Wait for the namespace and the node's network (a first pod proves both).
    let wait_running = |name: String| {
        let cache = d.cache.clone();
        async move {
            loop {
                if let Some(p) = cache.get(pods, "bench", &name)
                    && p.object["status"]["phase"] == "Running"
                {
                    return Instant::now();
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    };
    loop {
        match d.objects.create(pods, pod(999, &node)).await {
            Ok(_) => break,
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    tokio::time::timeout(Duration::from_secs(120), wait_running("p-999".into()))
        .await
        .expect("the first pod runs");

    // The physical limit: create and start a container of the same image on the same network.
    let mut raw = Vec::new();
    for i in 0..n {
        let c = ContainerConfig {
            name: format!("capstan-bench-raw-{}-{i}", std::process::id()),
            image: IMAGE.into(),
            cmd: Some(vec!["sleep".into(), "3600".into()]),
            network: Some(NetworkMode::Network(network.clone())),
            labels: HashMap::from([run_label.clone()]),
            ..ContainerConfig::default()
        };
        let t = Instant::now();
        let id = docker.create(&c).await.unwrap();
        docker.start(&id).await.unwrap();
        raw.push(t.elapsed());
        docker.remove(&id).await.unwrap();
    }

    // One pod at a time: bound, then Running.
    let mut one = Vec::new();
    for i in 0..n {
        let t = Instant::now();
        d.objects.create(pods, pod(i, &node)).await.unwrap();
        let done = wait_running(format!("p-{i:03}")).await;
        one.push(done - t);
    }
    // A burst: n pods bound at once.
    let t = Instant::now();
    let mut waits = Vec::new();
    for i in 0..n {
        d.objects.create(pods, pod(100 + i, &node)).await.unwrap();
        waits.push(tokio::spawn(wait_running(format!("p-{:03}", 100 + i))));
    }
    let mut burst = Vec::new();
    for w in waits {
        burst.push(w.await.unwrap() - t);
    }

    // StatefulSets: pods go through the scheduler, and count once Ready.
    let ready_pods = |prefix: String| {
        let cache = d.cache.clone();
        move || {
            cache
                .list(pods, Some("bench"))
                .0
                .iter()
                .filter(|p| p.name.starts_with(&prefix) && p.object["metadata"]["deletionTimestamp"].is_null())
                .filter(|p| {
                    p.object["status"]["conditions"]
                        .as_array()
                        .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
                })
                .count()
        }
    };
    let until = |count: Box<dyn Fn() -> usize>, wanted: usize| async move {
        while count() < wanted {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Instant::now()
    };
    const SET: usize = 10;
    let mut floor = Duration::ZERO;
    for i in 0..SET {
        let mut p = pod(200 + i, &node);
        p["spec"].as_object_mut().unwrap().remove("nodeName");
        p["metadata"]["name"] = json!(format!("single-{i}"));
        let t = Instant::now();
        d.objects.create(pods, p).await.unwrap();
        floor += until(Box::new(ready_pods(format!("single-{i}"))), 1).await - t;
    }
    let template = json!({"metadata": {"labels": {"app": "x"}}, "spec": {"terminationGracePeriodSeconds": 0,
        "containers": [{"name": "app", "image": IMAGE, "args": ["sleep", "3600"]}]}});
    let workload = |kind_name: &str, name: &str, policy: &str| {
        let mut t = template.clone();
        t["metadata"]["labels"]["app"] = json!(name);
        let mut o = json!({"metadata": {"name": name, "namespace": "bench"},
            "spec": {"replicas": SET, "selector": {"matchLabels": {"app": name}}, "template": t}});
        if kind_name == "statefulsets" {
            o["spec"]["serviceName"] = json!(name);
            o["spec"]["podManagementPolicy"] = json!(policy);
        }
        o
    };
    let mut timed = Vec::new();
    for (plural, name, policy) in [
        ("statefulsets", "ordered", "OrderedReady"),
        ("statefulsets", "parallel", "Parallel"),
        ("deployments", "deploy", ""),
    ] {
        let t = Instant::now();
        d.objects.create(kind(plural), workload(plural, name, policy)).await.unwrap();
        let done = tokio::time::timeout(Duration::from_secs(600), until(Box::new(ready_pods(format!("{name}-"))), SET))
            .await
            .expect("the workload's pods become ready");
        timed.push(done - t);
    }
    let (ordered, parallel, deploy) = (timed[0], timed[1], timed[2]);

    let (r50, r99) = (percentile(&mut raw, 0.5), percentile(&mut raw, 0.99));
    let (o50, o99) = (percentile(&mut one, 0.5), percentile(&mut one, 0.99));
    let (b50, b99) = (percentile(&mut burst, 0.5), percentile(&mut burst, 0.99));
    println!(
        "Pod start benchmark{}: {n} pods on the real Docker Engine",
        if quick { " (quick)" } else { "" }
    );
    println!(
        "  raw container create+start (same image, same network)   p50 {:>7}   p99 {:>7}",
        ms(r50),
        ms(r99)
    );
    println!(
        "  pod bound -> Running, one at a time                     p50 {:>7}   p99 {:>7}   ({:.2}x raw p99)",
        ms(o50),
        ms(o99),
        o99.as_secs_f64() / r99.as_secs_f64()
    );
    println!(
        "  pod bound -> Running, {n} bound at once                  p50 {:>7}   p99 {:>7}",
        ms(b50),
        ms(b99)
    );

    let secs = |d: Duration| format!("{:.2} s", d.as_secs_f64());
    println!(
        "  StatefulSet of {SET}, OrderedReady, all Ready               {:>8}   floor (sum of {SET} single starts) {:>8}   ({:.2}x; target <= 1.2x)",
        secs(ordered),
        secs(floor),
        ordered.as_secs_f64() / floor.as_secs_f64()
    );
    println!(
        "  StatefulSet of {SET}, Parallel, all Ready                   {:>8}   Deployment of {SET} {:>8}   ({:.2}x; target <= 1.1x)",
        secs(parallel),
        secs(deploy),
        parallel.as_secs_f64() / deploy.as_secs_f64()
    );

    // Clean up: the workloads first (their pods would come back), then the pods; the agent
    // stops and removes the pods' containers when they are deleted.
    for (plural, name) in [("statefulsets", "ordered"), ("statefulsets", "parallel"), ("deployments", "deploy")] {
        let _ = d.objects.delete(kind(plural), "bench", name, None).await;
    }
    for plural in ["replicasets", "controllerrevisions"] {
        for o in d.cache.list(kind(plural), Some("bench")).0.iter() {
            let _ = d.objects.delete(kind(plural), "bench", &o.name, None).await;
        }
    }
    machine.stop().await;
}
