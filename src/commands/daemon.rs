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
