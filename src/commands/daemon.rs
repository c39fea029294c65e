//! `capstan daemon`: the control plane — Git source and sync, store, API server — until SIGINT
//! or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use capstan_daemon::{Daemon, DaemonConfig};

pub struct Args {
    pub repo: String,
    pub branch: Option<String>,
    pub path: Option<String>,
    pub data_dir: PathBuf,
    pub listen: Option<String>,
    pub tls_san: Vec<String>,
    /// The pod range split into a /24 per node (kube-controller-manager's --cluster-cidr).
    pub cluster_cidr: Option<String>,
    pub webhook_secret_file: Option<PathBuf>,
    pub poll_interval: u64,
    pub node_grace_period: u64,
    pub pod_eviction_timeout: u64,
    pub event_ttl: u64,
    pub horizontal_pod_autoscaler_sync_period: u64,
    pub kustomize: Option<PathBuf>,
    pub revert_failed_rollouts: bool,
    pub store: super::store::StoreArgs,
}

/// `~/.capstan`, where commands keep their state unless told otherwise.
pub fn default_data_dir() -> anyhow::Result<PathBuf> {
    let home = std::env::var_os("HOME").context("HOME is not set: pass --data-dir")?;
    Ok(PathBuf::from(home).join(".capstan"))
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut config = DaemonConfig::new(args.repo, args.data_dir);
    config.branch = args.branch;
    config.path = args.path.unwrap_or_default();
    if let Some(l) = args.listen {
        config.listen = l
            .parse::<SocketAddr>()
            .with_context(|| format!("--listen {l:?}: expected ADDRESS:PORT"))?;
    }
    config.tls_sans = args.tls_san;
    if let Some(c) = args.cluster_cidr {
        config.pod_cidr = c
            .parse::<capstan_api::cidr::Cidr>()
            .ok()
            .filter(|r| r.prefix() <= capstan_api::cidr::NODE_PREFIX)
            .with_context(|| format!("--cluster-cidr {c:?}: expected an IPv4 range of /24 or larger, such as 10.244.0.0/16"))?;
    }
    if let Some(f) = &args.webhook_secret_file {
        let secret = std::fs::read_to_string(f).with_context(|| format!("--webhook-secret-file {}", f.display()))?;
        let secret = secret.trim();
        anyhow::ensure!(!secret.is_empty(), "--webhook-secret-file {}: the file is empty", f.display());
        config.webhook_secret = Some(secret.as_bytes().to_vec());
    }
    config.poll_interval = std::time::Duration::from_secs(args.poll_interval.max(1));
    config.node_grace = std::time::Duration::from_secs(args.node_grace_period.max(1));
    config.eviction_timeout = std::time::Duration::from_secs(args.pod_eviction_timeout);
    config.event_ttl = std::time::Duration::from_secs(args.event_ttl.max(1));
    config.autoscaler_period = std::time::Duration::from_secs(args.horizontal_pod_autoscaler_sync_period.max(1));
    config.revert_failed_rollouts = args.revert_failed_rollouts;
    config.kustomize = args.kustomize;
    config.store = args.store.choice()?;
    (config.leader_lease, config.leader_renew) = args.store.election()?;
    config.history = args.store.history()?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let daemon = Daemon::start(config).await?;
        eprintln!(
            "capstan daemon: API at {}, kubeconfig {}",
            daemon.url(),
            daemon.kubeconfig.display()
        );
        wait_for_signal().await;
        eprintln!("capstan daemon: stopping");
        daemon.shutdown().await;
        Ok(ExitCode::SUCCESS)
    })
}

/// Waits for SIGINT (Ctrl-C) or SIGTERM.
pub async fn wait_for_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
