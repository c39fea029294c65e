//! What the benchmarks on this machine's Engine share: the test images, a daemon on a fresh
//! repository declaring namespace `bench` with one node agent beside it, their teardown, and
//! percentiles.

#![allow(dead_code)] // each benchmark uses its part

use std::time::Duration;

use capstan_containers::{Docker, Runtime};
use capstan_daemon::context::kind;
use capstan_daemon::{Daemon, DaemonConfig};
use capstan_node::{Agent, NodeConfig};

/// A daemon and one node agent on the local Engine.
pub struct OneNode {
    pub dir: tempfile::TempDir,
    pub daemon: Daemon,
    pub agent: Agent,
    pub node: String,
    /// The label on everything the agent makes, which `scripts/test.sh` sweeps.
    pub run_label: (String, String),
}

impl OneNode {
    /// Builds the images, then starts a daemon (pods from `pod_cidr`) and agent `NAME-PID`.
    pub async fn start(pod_cidr: &str, name: &str) -> OneNode {
        OneNode::start_with(pod_cidr, name, |_| {}).await
    }

    /// As `start`, with the agent's configuration adjusted by `tune`.
    pub async fn start_with(pod_cidr: &str, name: &str, tune: impl FnOnce(&mut NodeConfig)) -> OneNode {
        let images = std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/examples-repo/images/build.sh")).status();
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
        config.pod_cidr = pod_cidr.parse().unwrap();
        let daemon = Daemon::start(config).await.unwrap();
        let run_label = ("capstan.test".to_owned(), format!("bench-{}", std::process::id()));
        let node = format!("{name}-{}", std::process::id());
        let mut nc = NodeConfig::new(daemon.url(), daemon.node_token.clone(), node.clone(), dir.path().join("node"));
        nc.listen = "127.0.0.1:0".parse().unwrap();
        nc.node_ip = Some("127.0.0.1".parse().unwrap());
        nc.runtime_labels = vec![run_label.clone()];
        tune(&mut nc);
        let agent = Agent::start(nc).await.unwrap();
        OneNode {
            dir,
            daemon,
            agent,
            node,
            run_label,
        }
    }

    /// The administrator's kubeconfig.
    pub fn kubeconfig(&self) -> std::path::PathBuf {
        self.dir.path().join("data/kubeconfig")
    }

    /// Deletes the pods left in `bench` (workloads that would bring them back go first, by the
    /// caller), waits for the agent to remove their containers, and stops everything.
    pub async fn stop(self) {
        let OneNode { daemon, agent, node, .. } = self;
        let pods = kind("pods");
        for p in daemon.cache.list(pods, Some("bench")).0.iter() {
            let _ = daemon.objects.delete(pods, "bench", &p.name, None).await;
        }
        let docker = Docker::connect().await.unwrap();
        let labels = [(capstan_api::meta::LABEL_NODE, node.as_str())];
        for _ in 0..600 {
            if docker.list(&labels).await.map(|l| l.is_empty()).unwrap_or(true) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        agent.shutdown().await;
        for c in docker.list(&labels).await.unwrap_or_default() {
            let _ = docker.remove(&c.id).await;
        }
        let _ = docker.remove_network(&capstan_node::pods::network_name(&node)).await;
        daemon.shutdown().await;
    }
}

/// The `p` quantile (0–1) of `samples`, by rank.
pub fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    let i = ((samples.len() as f64 * p).ceil() as usize).clamp(1, samples.len()) - 1;
    samples[i]
}

pub fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// What a `/proc/PID/stat` or `/proc/PID/task/TID/stat` file says of CPU time.
pub struct ProcCpu {
    /// User and kernel time so far, in seconds.
    pub user: f64,
    pub kernel: f64,
    /// The process group.
    pub group: i64,
}

/// The CPU time in the stat file at `path` (None when it is gone or unreadable).
pub fn proc_cpu(path: impl AsRef<std::path::Path>) -> Option<ProcCpu> {
    // /proc's clock ticks: Linux's USER_HZ, 100 on every architecture these benchmarks run on.
    const USER_HZ: f64 = 100.0;
    let stat = std::fs::read_to_string(path).ok()?;
    // The fields after the command name in parentheses (which may hold anything) start at the
    // state, field 3: the process group is field 5, utime and stime fields 14 and 15.
    let fields: Vec<&str> = stat.get(stat.rfind(')')? + 2..)?.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).copied();
    Some(ProcCpu {
        user: field(14)?.parse::<f64>().ok()? / USER_HZ,
        kernel: field(15)?.parse::<f64>().ok()? / USER_HZ,
        group: field(5)?.parse().ok()?,
    })
}
