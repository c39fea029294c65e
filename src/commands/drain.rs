//! `capstan drain NODE` and `capstan uncordon NODE`: a node taken out of service as `kubectl
//! drain` does it — cordoned, then every pod on it but the DaemonSets' evicted through the
//! Eviction subresource, so that PodDisruptionBudgets are kept (an eviction the budget refuses is
//! tried again every 5 s), and waited for until the pods are gone — and put back.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use capstan_api::k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, EvictParams, ListParams};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The node to drain.
    pub node: String,
    /// An administrator's kubeconfig; default: ~/.capstan/kubeconfig.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Evict pods that no controller would replace (bare pods) too.
    #[arg(long)]
    pub force: bool,
    /// Give up after this many seconds (0: wait as long as it takes).
    #[arg(long, default_value_t = 0)]
    pub timeout: u64,
}

/// How long an eviction the budget refused waits before it is tried again (kubectl's).
const RETRY: Duration = Duration::from_secs(5);

fn api_message(e: kube::Error) -> anyhow::Error {
    match e {
        kube::Error::Api(s) => anyhow::anyhow!("{}", s.message),
        other => anyhow::Error::new(other),
    }
}

/// The pod's controller kind, if it has one.
fn controller_kind(p: &Pod) -> Option<&str> {
    p.metadata
        .owner_references
        .as_ref()?
        .iter()
        .find(|r| r.controller == Some(true))
        .map(|r| r.kind.as_str())
}

pub fn drain(args: Args) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let client = super::admin_client(args.kubeconfig.clone()).await?;
        let nodes: Api<Node> = Api::all(client.clone());
        nodes
            .cordon(&args.node)
            .await
            .map_err(api_message)
            .with_context(|| format!("cordoning node {}", args.node))?;
        println!("node/{} cordoned", args.node);
        let all: Api<Pod> = Api::all(client.clone());
        let on_node = all
            .list(&ListParams::default().fields(&format!("spec.nodeName={}", args.node)))
            .await
            .map_err(api_message)?;
        let mut targets = Vec::new();
        let mut unmanaged = Vec::new();
        for p in on_node.items {
            let name = format!(
                "{}/{}",
                p.metadata.namespace.as_deref().unwrap_or_default(),
                p.metadata.name.as_deref().unwrap_or_default()
            );
            match controller_kind(&p) {
                Some("DaemonSet") => println!("Warning: ignoring DaemonSet-managed pod {name}"),
                None if !args.force => unmanaged.push(name),
                _ => targets.push(p),
            }
        }
        if !unmanaged.is_empty() {
            bail!(
                "cannot delete pods that declare no controller (use --force to evict them; nothing will replace them): {}",
                unmanaged.join(", ")
            );
        }
        let deadline = (args.timeout > 0).then(|| Instant::now() + Duration::from_secs(args.timeout));
        let evictions = targets.into_iter().map(|p| {
            let client = client.clone();
            async move {
                let ns = p.metadata.namespace.clone().unwrap_or_default();
                let name = p.metadata.name.clone().unwrap_or_default();
                let uid = p.metadata.uid.clone();
                let pods: Api<Pod> = Api::namespaced(client, &ns);
                println!("evicting pod {ns}/{name}");
                loop {
                    match pods.evict(&name, &EvictParams::default()).await {
                        Ok(_) => break,
                        Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
                        Err(kube::Error::Api(s)) if s.code == 429 => {
                            let why = s.details.and_then(|d| d.causes.into_iter().next()).map(|c| c.message);
                            println!(
                                "error when evicting pods/{name:?} -n {ns:?} (will retry after 5s): {}{}",
                                s.message,
                                why.map(|w| format!(" ({w})")).unwrap_or_default()
                            );
                        }
                        Err(e) => return Err(api_message(e).context(format!("evicting pod {ns}/{name}"))),
                    }
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        bail!("timed out evicting pod {ns}/{name}");
                    }
                    tokio::time::sleep(RETRY).await;
                }
                // Gone, or replaced by a pod of the same name.
                loop {
                    match pods.get_opt(&name).await.map_err(api_message)? {
                        Some(now) if now.metadata.uid == uid => {}
                        _ => break,
                    }
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        bail!("timed out waiting for pod {ns}/{name} to go");
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                println!("pod/{name} evicted");
                Ok(())
            }
        });
        for r in futures::future::join_all(evictions).await {
            r?;
        }
        println!("node/{} drained", args.node);
        Ok(ExitCode::SUCCESS)
    })
}

pub fn uncordon(node: &str, kubeconfig: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let client = super::admin_client(kubeconfig).await?;
        Api::<Node>::all(client)
            .uncordon(node)
            .await
            .map_err(api_message)
            .with_context(|| format!("uncordoning node {node}"))?;
        println!("node/{node} uncordoned");
        Ok(ExitCode::SUCCESS)
    })
}
