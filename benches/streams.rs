//! The round trip of `kubectl exec POD -- true` (p50, p99) on the real kubectl, daemon, node agent
//! and Docker Engine, beside `docker exec CONTAINER true` on the same container in the same run
//! (the floor: both are a CLI starting and the Engine running the process; kubectl adds the API
//! server's and the agent's TLS hops and the relay). Target: at most 1.5× the floor plus 20 ms.
//!
//! And port-forward's throughput: 100 MB sent through `kubectl port-forward` to a sink in the pod
//! (until the sink has read it all and closed), beside the same sent straight to the pod's address
//! (the floor). Target: at least 0.5× the floor.
//!
//! `cargo bench --bench streams` (`-- --quick`: 20 exec runs each instead of 100, 2 transfers each
//! instead of 5). Needs the Docker Engine, kubectl and the images from examples-repo/images/build.sh.

use std::process::Command;
use std::time::{Duration, Instant};

use capstan_containers::{Docker, Runtime};
use capstan_daemon::context::kind;
use serde_json::json;

mod common;
use common::{OneNode, ms, percentile};

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

/// The kubectl binary itself. Google Cloud's `kubectl` is a dispatcher that starts a second
/// kubectl to learn the server's version and then executes `kubectl.MAJOR.MINOR` beside it: two
/// more Go programs starting on every call (about 75 ms here), which is the wrapper's cost, not
/// kubectl's. The versioned binary it would run is used when there is one; the dispatcher's own
/// figure is printed beside it.
fn kubectl_itself(server_version: &str) -> Option<std::path::PathBuf> {
    let out = Command::new("kubectl").args(["version", "--client"]).output().ok()?;
    if !String::from_utf8_lossy(&out.stdout).contains("-dispatcher") {
        return None;
    }
    let on_path = std::env::var_os("PATH")?;
    let dispatcher = std::env::split_paths(&on_path).map(|d| d.join("kubectl")).find(|p| p.is_file())?;
    let versioned = std::fs::canonicalize(dispatcher)
        .ok()?
        .with_file_name(format!("kubectl.{server_version}"));
    versioned.is_file().then_some(versioned)
}

/// User and system CPU time of process `pid` so far, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    common::proc_cpu(format!("/proc/{pid}/stat")).map_or(0.0, |c| c.user + c.kernel)
}

/// Sends 100 MB to the sink at `addr`, then waits for it to close: MB/s.
fn send(addr: &str) -> f64 {
    use std::io::{Read, Write};
    const TOTAL: usize = 100 << 20;
    let chunk = vec![0x5au8; 128 << 10];
    let t = Instant::now();
    let mut s = std::net::TcpStream::connect(addr).expect("the sink answers");
    let mut sent = 0;
    while sent < TOTAL {
        s.write_all(&chunk).expect("the sink takes the data");
        sent += chunk.len();
    }
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let _ = s.read_to_end(&mut Vec::new());
    (TOTAL as f64 / 1e6) / t.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    let quick = std::env::args().any(|a| a == "--quick") || std::env::var_os("CAPSTAN_BENCH_QUICK").is_some();
    let n = if quick { 20 } else { 100 };
    let one = OneNode::start("10.218.0.0/16", "bench-exec").await;
    let (d, node) = (&one.daemon, one.node.clone());
    let pods = kind("pods");
    let pod = json!({"metadata": {"name": "shell", "namespace": "bench"},
        "spec": {"nodeName": node, "terminationGracePeriodSeconds": 0,
                 "containers": [{"name": "app", "image": "capstan.local/testapp:latest", "args": ["sink", "9000"]}]}});
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
    let kubeconfig = one.kubeconfig();

    let server_version = format!("{}.{}", capstan_api::KUBERNETES_MAJOR, capstan_api::KUBERNETES_MINOR);
    let itself = kubectl_itself(&server_version);
    let program = itself.clone().unwrap_or_else(|| "kubectl".into());
    let dispatched = itself.is_some();

    let measure = tokio::task::spawn_blocking(move || {
        let kubectl_with = |program: &std::path::Path, args: &[&str]| {
            let mut c = Command::new(program);
            c.arg("--kubeconfig").arg(&kubeconfig).args(args);
            c
        };
        const EXEC: [&str; 6] = ["exec", "-n", "bench", "shell", "--", "true"];
        let kubectl = || kubectl_with(&program, &EXEC);
        let docker_exec = || {
            let mut c = Command::new("docker");
            c.args(["exec", &container, "true"]);
            c
        };
        // kubectl's own part: starting, reading its kubeconfig, one request over TLS.
        let kubectl_get = || kubectl_with(&program, &["get", "pod", "-n", "bench", "shell", "-o", "name"]);
        // Warm both paths (kubectl's discovery cache, the Engine's exec), then interleave.
        timed(2, kubectl);
        timed(2, docker_exec);
        let (mut k, mut f, mut g, mut w) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..n {
            k.extend(timed(1, kubectl));
            f.extend(timed(1, docker_exec));
            g.extend(timed(1, kubectl_get));
            if dispatched {
                w.extend(timed(1, || kubectl_with("kubectl".as_ref(), &EXEC)));
            }
        }
        (k, f, g, w)
    });
    let (mut k, mut f, mut g, mut w) = measure.await.unwrap();
    let (k50, k99, f50, f99) = (
        percentile(&mut k, 0.5),
        percentile(&mut k, 0.99),
        percentile(&mut f, 0.5),
        percentile(&mut f, 0.99),
    );
    let target = |floor: Duration| floor.mul_f64(1.5) + Duration::from_millis(20);
    println!("exec round trip, {n} runs each:");
    if let Some(itself) = &itself {
        println!(
            "  (kubectl on PATH is Google Cloud's dispatcher; measured: {}, the binary it runs for this server)",
            itself.display()
        );
    }
    println!("  kubectl exec -- true   p50 {}  p99 {}", ms(k50), ms(k99));
    println!(
        "  docker exec true       p50 {}  p99 {}   (floor, same container)",
        ms(f50),
        ms(f99)
    );
    println!(
        "  kubectl get pod        p50 {}  p99 {}   (kubectl's own start and one request, for reference)",
        ms(percentile(&mut g, 0.5)),
        ms(percentile(&mut g, 0.99))
    );
    if !w.is_empty() {
        println!(
            "  through the dispatcher p50 {}  p99 {}   (the same exec with the wrapper's two extra program starts)",
            ms(percentile(&mut w, 0.5)),
            ms(percentile(&mut w, 0.99))
        );
    }
    println!(
        "  Capstan's share        p50 {}        (kubectl exec p50 minus kubectl get p50: the upgrade, both hops, the Engine's exec)",
        ms(k50.saturating_sub(percentile(&mut g, 0.5)))
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

    // Port-forward throughput.
    let ip = d.cache.get(pods, "bench", "shell").unwrap().object["status"]["podIP"]
        .as_str()
        .unwrap()
        .to_owned();
    let kubeconfig = one.kubeconfig();
    let transfers = if quick { 2 } else { 5 };
    let (direct, forwarded, kubectl_cpu, capstan_cpu) = tokio::task::spawn_blocking(move || {
        let direct: Vec<f64> = (0..transfers).map(|_| send(&format!("{ip}:9000"))).collect();
        let mut forward = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["port-forward", "-n", "bench", "pod/shell", ":9000"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        let mut out = std::io::BufReader::new(forward.stdout.take().unwrap());
        while !line.starts_with("Forwarding from 127.0.0.1:") {
            line.clear();
            assert!(
                std::io::BufRead::read_line(&mut out, &mut line).unwrap() > 0,
                "kubectl port-forward ended"
            );
        }
        let port = line
            .trim_start_matches("Forwarding from 127.0.0.1:")
            .split_whitespace()
            .next()
            .unwrap()
            .to_owned();
        // Where the time goes: the CPU kubectl and Capstan (this process runs the API server and
        // the agent) spend on the forwarded transfers.
        let (k0, c0) = (cpu_seconds(forward.id()), cpu_seconds(std::process::id()));
        let forwarded: Vec<f64> = (0..transfers).map(|_| send(&format!("127.0.0.1:{port}"))).collect();
        let (k1, c1) = (cpu_seconds(forward.id()), cpu_seconds(std::process::id()));
        let _ = forward.kill();
        let _ = forward.wait();
        let per_100mb = |a: f64, b: f64| (b - a) / transfers as f64 * 1000.0;
        (direct, forwarded, per_100mb(k0, k1), per_100mb(c0, c1))
    })
    .await
    .unwrap();
    let best = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    let (direct, forwarded) = (best(&direct), best(&forwarded));
    println!("port-forward, 100 MB to a sink in the pod, best of {transfers}:");
    println!("  kubectl port-forward   {forwarded:.0} MB/s");
    println!("  pod address directly  {direct:.0} MB/s   (floor)");
    println!(
        "  ratio {:.2}x; target >= 0.5x: {}",
        forwarded / direct,
        if forwarded >= 0.5 * direct { "met" } else { "missed" }
    );
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("  CPU per 100 MB forwarded: kubectl {kubectl_cpu:.0} ms, Capstan's API server and agent {capstan_cpu:.0} ms ({cores} cores)");
    // What kubectl alone allows, with a core to itself and a server that cost nothing.
    let ceiling = 100.0 * 1.048_576 / (kubectl_cpu / 1000.0);
    println!(
        "  kubectl's own ceiling   {ceiling:.0} MB/s = {:.2}x the floor (100 MB over kubectl's CPU time)",
        ceiling / direct
    );

    one.stop().await;
}
