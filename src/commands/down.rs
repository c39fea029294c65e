//! `capstan down [--purge]`: removes what `capstan up` made — stops a running `up`, removes its
//! node's containers and Docker network, the proxy's rules and the pod network across hosts, and with `--purge` the data
//! directory (store, keys, kubeconfigs, the demo repository).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The data directory `capstan up` used; default: ~/.capstan.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Also remove the data directory: the store, the cluster's keys, the kubeconfigs and the
    /// demo repository. Nothing of the cluster is left.
    #[arg(long)]
    pub purge: bool,
    /// The nftables table the proxy owns (tests use their own).
    #[arg(long, default_value = "capstan-proxy", hide = true)]
    pub proxy_table: String,
}

/// Where `capstan up` writes its process id, so that `down` can stop it.
pub const PID_FILE: &str = "up.pid";

/// Stops the `capstan up` whose pid file is in `data`, if it runs: SIGTERM, as Ctrl-C would.
fn stop_running_up(data: &Path) -> anyhow::Result<()> {
    let Ok(text) = std::fs::read_to_string(data.join(PID_FILE)) else {
        return Ok(());
    };
    let pid = text.trim();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    if !String::from_utf8_lossy(&cmdline).contains("capstan") {
        return Ok(()); // gone, or the number now belongs to another program
    }
    eprintln!("capstan down: stopping capstan up (pid {pid})");
    std::process::Command::new("kill")
        .args(["-TERM", pid])
        .status()
        .context("running kill")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let data = match args.data_dir {
        Some(d) => d,
        None => super::daemon::default_data_dir()?,
    };
    stop_running_up(&data)?;
    let nodes: Vec<String> = std::fs::read_dir(data.join("nodes"))
        .map(|entries| entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        if !nodes.is_empty() {
            let docker = capstan_containers::Docker::connect().await.context("the Docker Engine")?;
            for node in &nodes {
                let removed = capstan_node::pods::remove_all(&docker, node)
                    .await
                    .with_context(|| format!("removing node {node}'s containers"))?;
                eprintln!("capstan down: node {node}: removed {removed} containers and its network");
            }
        }
        let mut proxy = super::node::proxy_config(&capstan_proxy::ProxyMode::Auto, "10.96.0.0/16", "10.244.0.0/16")?;
        proxy.table = args.proxy_table.clone();
        capstan_proxy::sync::cleanup(&proxy).await?;
        eprintln!("capstan down: removed the proxy's rules (table {})", proxy.table);
        capstan_node::mesh::teardown()
            .await
            .map_err(anyhow::Error::msg)
            .context("removing the pod network")?;
        eprintln!("capstan down: removed the pod network across hosts (device capstan.1, its routes, table capstan-podnet)");
        anyhow::Ok(())
    })?;
    if args.purge && data.exists() {
        std::fs::remove_dir_all(&data).with_context(|| format!("removing {}", data.display()))?;
        eprintln!("capstan down: removed {}", data.display());
    } else if data.exists() {
        eprintln!(
            "capstan down: kept {} (the store, keys and demo repository); --purge removes it",
            data.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}
