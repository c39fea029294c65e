//! Leader fail-over benchmark: three `capstan daemon` replicas on a three-member etcd (real
//! processes, loopback); the leader is killed with SIGKILL, and the benchmark measures, from the
//! kill, when another replica holds the leader key and when its Git sync has reconciled (written
//! the sync status: its first reconcile). Five rounds (three with `--quick`); the killed replica
//! is started again between rounds. Printed beside the floor, the leader lease, and client-go's
//! default lease (15 s), which bounds Kubernetes' own fail-over from below.
//!
//! `cargo bench --bench failover [-- --quick]`

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use capstan_store::local_etcd::LocalEtcd;

struct Replica {
    data: PathBuf,
    args: Vec<String>,
    child: Child,
}

impl Replica {
    fn spawn(data: &Path, args: &[String]) -> Child {
        let log = std::fs::File::create(data.with_extension("log")).unwrap();
        Command::new(env!("CARGO_BIN_EXE_capstan"))
            .arg("daemon")
            .args(args)
            .arg("--data-dir")
            .arg(data)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    /// The API URL it advertises (what the leader key names), once it wrote its kubeconfig.
    fn url(&self) -> Option<String> {
        let text = std::fs::read_to_string(self.data.join("kubeconfig")).ok()?;
        let line = text.lines().find(|l| l.trim_start().starts_with("server:"))?;
        Some(line.trim_start().trim_start_matches("server:").trim().trim_matches('"').to_owned())
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn value_of(kv: &mut etcd_client::KvClient, key: &str) -> Option<(String, i64)> {
    let r = kv.get(key, None).await.ok()?;
    let item = r.kvs().first()?;
    Some((String::from_utf8_lossy(item.value()).into_owned(), item.mod_revision()))
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

#[tokio::main]
async fn main() {
    let quick = std::env::args().any(|a| a == "--quick") || std::env::var_os("CAPSTAN_BENCH_QUICK").is_some();
    let rounds = if quick { 3 } else { 5 };
    let lease_secs = capstan_daemon::DEFAULT_LEADER_LEASE.as_secs();
    let dir = tempfile::tempdir().unwrap();
    let etcd = LocalEtcd::start(&dir.path().join("etcd"), 3).await.unwrap();
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    std::fs::write(repo.join("ns.yaml"), "apiVersion: v1\nkind: Namespace\nmetadata: {name: bench}\n").unwrap();
    for args in [&["init", "-q"][..], &["add", "-A"], &["commit", "-q", "-m", "bench"]] {
        capstan_git::fixture::git(&repo, args);
    }
    let args: Vec<String> = [
        "--repo",
        repo.to_str().unwrap(),
        "--store",
        &etcd.url(),
        "--listen",
        "127.0.0.1:0",
        "--leader-elect-lease-duration",
        &lease_secs.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let client = etcd_client::Client::connect(etcd.endpoints(), None).await.unwrap();
    let mut kv = client.kv_client();
    let (leader_key, status_key) = ("/capstan/capstan/leader", "/capstan/capstan/sync/status");

    let first = dir.path().join("r0");
    let mut replicas = vec![Replica {
        data: first.clone(),
        args: args.clone(),
        child: Replica::spawn(&first, &args),
    }];
    let deadline = Instant::now() + Duration::from_secs(60);
    while value_of(&mut kv, status_key).await.is_none() {
        assert!(
            Instant::now() < deadline,
            "the first replica did not sync (log: {})",
            first.with_extension("log").display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for i in 1..3 {
        let data = dir.path().join(format!("r{i}"));
        capstan_daemon::copy_replica_identity(&first, &data).unwrap();
        let child = Replica::spawn(&data, &args);
        replicas.push(Replica {
            data,
            args: args.clone(),
            child,
        });
    }
    while replicas.iter().any(|r| r.url().is_none()) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "Leader fail-over: 3 replicas on a 3-member etcd, lease {lease_secs} s, {rounds} rounds{}",
        if quick { " (quick)" } else { "" }
    );
    let (mut to_leader, mut to_reconcile) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        // Let the replica started last round settle (campaigning) first.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (leader, _) = value_of(&mut kv, leader_key).await.expect("a leader");
        let (_, synced_at) = value_of(&mut kv, status_key).await.expect("a sync status");
        let i = replicas
            .iter()
            .position(|r| r.url().as_deref() == Some(leader.as_str()))
            .expect("the leader is a replica");
        let killed = Instant::now();
        let _ = replicas[i].child.kill();
        let _ = replicas[i].child.wait();
        let mut led = None;
        let deadline = killed + Duration::from_secs(60);
        loop {
            assert!(Instant::now() < deadline, "round {round}: no replica took over");
            if led.is_none() && value_of(&mut kv, leader_key).await.is_some_and(|(l, _)| l != leader) {
                led = Some(killed.elapsed());
            }
            if led.is_some() && value_of(&mut kv, status_key).await.is_some_and(|(_, rev)| rev > synced_at) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let reconciled = killed.elapsed();
        to_leader.push(led.unwrap());
        to_reconcile.push(reconciled);
        println!(
            "  round {round}: new leader after {}, first reconcile after {}",
            secs(led.unwrap()),
            secs(reconciled)
        );
        let r = &mut replicas[i];
        r.child = Replica::spawn(&r.data, &r.args);
    }
    to_leader.sort();
    to_reconcile.sort();
    println!(
        "  kill -9 to a new leader          p50 {:>8}  max {:>8}",
        secs(pct(&to_leader, 0.5)),
        secs(*to_leader.last().unwrap())
    );
    println!(
        "  kill -9 to its first reconcile   p50 {:>8}  max {:>8}   target p50 < 3 s; floor: the lease, {lease_secs} s; client-go's default lease: 15 s",
        secs(pct(&to_reconcile, 0.5)),
        secs(*to_reconcile.last().unwrap())
    );
}
