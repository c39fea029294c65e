//! `capstan node`: a node agent joining a running daemon with the node-token file, running the
//! pods bound to it on the local Docker Engine until SIGINT or SIGTERM.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use capstan_node::{Agent, NodeConfig};
use serde_json::json;

#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct Args {
    #[command(subcommand)]
    pub action: Option<Action>,
    /// The API server, e.g. https://127.0.0.1:6443; with several control-plane replicas, each
    /// one's URL separated by commas (the agent moves to the next when one cannot be reached).
    #[arg(long, required_unless_present = "cleanup_proxy")]
    pub server: Option<String>,
    /// The daemon's DATA_DIR/node-token (`<sha256 of the CA>::<secret>`).
    #[arg(long, required_unless_present = "cleanup_proxy")]
    pub token_file: Option<PathBuf>,
    /// The node's name; default: the host name.
    #[arg(long)]
    pub name: Option<String>,
    /// Where the agent keeps pod volumes; default: ~/.capstan/nodes/NAME.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// The node's HTTPS endpoint (logs, stats) for the API server.
    #[arg(long, default_value = "0.0.0.0:10250")]
    pub listen: String,
    /// Do not run the service proxy (for extra agents on a host that already runs one).
    #[arg(long)]
    pub no_proxy: bool,
    /// The address published in the Node; default: the host's address on its default route.
    #[arg(long)]
    pub node_ip: Option<IpAddr>,
    /// How pods reach pods on other hosts: `vxlan` (works across routed networks), `host-gw`
    /// (routes via each node's address; the nodes share one L2 segment) or `none`.
    #[arg(long, default_value = "vxlan")]
    pub pod_network: capstan_node::mesh::Backend,
    /// Keep every packet of the `vxlan` pod network on the kernel's forwarding path (no eBPF fast
    /// path for established TCP connections between nodes' pods).
    #[arg(long)]
    pub no_fast_path: bool,
    /// The Docker Engine to run pods on (`unix:///path`, `tcp://host:port`).
    #[arg(long, env = "DOCKER_HOST")]
    pub docker_host: Option<String>,
    /// Labels for the Node, `key=value,...`.
    #[arg(long, value_delimiter = ',')]
    pub node_labels: Vec<String>,
    /// Taints for the Node at registration, `key=value:Effect,...`.
    #[arg(long, value_delimiter = ',')]
    pub register_with_taints: Vec<String>,
    /// CPU capacity to report instead of the host's (e.g. `4`, `1500m`).
    #[arg(long)]
    pub cpus: Option<String>,
    /// Memory capacity to report instead of the host's (e.g. `8Gi`).
    #[arg(long)]
    pub memory: Option<String>,
    #[arg(long, default_value_t = 110)]
    pub max_pods: u32,
    /// Allow hostPath volumes and the host's namespaces (hostNetwork, hostPID, hostIPC) on this
    /// node.
    #[arg(long)]
    pub allow_host_path: bool,
    /// Where provisioned persistent volumes live (default: DATA_DIR/volumes).
    #[arg(long)]
    pub volume_dir: Option<PathBuf>,
    /// The image of pod sandboxes.
    #[arg(long, default_value = "capstan.local/pause:3")]
    pub pause_image: String,
    /// Crash-loop back-off: first wait, cap, and the clean run that resets it.
    #[arg(long, default_value = "10s")]
    pub restart_backoff: String,
    #[arg(long, default_value = "300s")]
    pub restart_backoff_max: String,
    #[arg(long, default_value = "10m")]
    pub restart_backoff_reset: String,
    /// How often the node's Lease is renewed.
    #[arg(long, default_value = "10s")]
    pub lease_interval: String,
    #[arg(long, default_value = "10.96.0.10")]
    pub cluster_dns: String,
    #[arg(long, default_value = "cluster.local")]
    pub cluster_domain: String,
    /// The proxy's dataplane: `ipvs`, `nftables`, or `auto` (IPVS where the kernel has it).
    #[arg(long, default_value = "auto")]
    pub proxy_mode: capstan_proxy::ProxyMode,
    /// The service range: traffic to it that no service takes is rejected on this host.
    #[arg(long, default_value = "10.96.0.0/16")]
    pub service_cidr: String,
    /// The pod range: connections from outside it to a service are masqueraded.
    #[arg(long, default_value = "10.244.0.0/16")]
    pub cluster_cidr: String,
    /// The IPVS scheduler for every service in IPVS mode: rr, wrr, lc, sh or mh.
    #[arg(long, default_value = "rr", value_parser = ["rr", "wrr", "lc", "sh", "mh"])]
    pub ipvs_scheduler: String,
    /// Remove the proxy's rules (nftables table, IPVS services and capstan-ipvs0, DOCKER-USER
    /// rules) and exit.
    #[arg(long)]
    pub cleanup_proxy: bool,
    /// The nftables table the proxy owns (tests use their own).
    #[arg(long, default_value = "capstan-proxy", hide = true)]
    pub proxy_table: String,
    /// Extra labels on every container and network the agent makes (`key=value`).
    #[arg(long, hide = true)]
    pub runtime_label: Vec<String>,
    #[command(flatten)]
    pub ingress: IngressArgs,
}

/// Where the node's ingress (Ingress routes over HTTP and HTTPS) listens.
#[derive(clap::Args, Debug)]
pub struct IngressArgs {
    /// The ingress's HTTP listener (HTTP/1.1 and h2c), `ADDRESS:PORT`, or `off`.
    #[arg(long, default_value = "0.0.0.0:80")]
    pub ingress_http: String,
    /// The ingress's HTTPS listener (certificates from the Ingresses' TLS Secrets, by SNI),
    /// `ADDRESS:PORT`, or `off`.
    #[arg(long, default_value = "0.0.0.0:443")]
    pub ingress_https: String,
    /// Seconds a client may take for its TLS handshake, its first request and each request's
    /// head; an idle keep-alive connection is closed after it too.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub ingress_header_timeout: u64,
    /// Seconds a backend may take to start its answer (then 504), unless a route sets its
    /// own timeout.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub ingress_request_timeout: u64,
    /// The largest request body accepted, in MiB (larger: 413).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=65536))]
    pub ingress_max_body_mib: u64,
}

impl IngressArgs {
    /// The ingress's settings; `None` when both listeners are off.
    pub fn config(&self) -> anyhow::Result<Option<capstan_ingress::IngressConfig>> {
        let listener = |flag: &str, text: &str| -> anyhow::Result<Option<SocketAddr>> {
            if text == "off" {
                return Ok(None);
            }
            text.parse()
                .map(Some)
                .with_context(|| format!("--{flag} {text:?}: expected ADDRESS:PORT or off"))
        };
        let http = listener("ingress-http", &self.ingress_http)?;
        let https = listener("ingress-https", &self.ingress_https)?;
        let limits = capstan_ingress::Limits {
            header_timeout: Duration::from_secs(self.ingress_header_timeout),
            request_timeout: Duration::from_secs(self.ingress_request_timeout),
            body_bytes: self.ingress_max_body_mib << 20,
            ..Default::default()
        };
        Ok((http.is_some() || https.is_some()).then_some(capstan_ingress::IngressConfig { http, https, limits }))
    }
}

/// What `capstan node` does besides running an agent.
#[derive(clap::Subcommand, Debug)]
pub enum Action {
    /// Forget a node: revoke its credential and remove its Node and Lease (its pods are
    /// replaced elsewhere), so that a new machine may join under the name.
    Forget {
        name: String,
        /// An administrator's kubeconfig; default: ~/.capstan/kubeconfig.
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
    },
}

fn forget(name: &str, kubeconfig: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let client = super::admin_client(kubeconfig).await?;
        let request = http::Request::delete(format!("/capstan/v1/nodes/{name}")).body(Vec::new())?;
        let answer: serde_json::Value = client
            .request(request)
            .await
            .map_err(|e| match e {
                kube::Error::Api(s) => anyhow::anyhow!("{}", s.message),
                other => anyhow::Error::new(other),
            })
            .with_context(|| format!("forgetting node {name}"))?;
        eprintln!(
            "capstan node forget: {name}: credential {}, removed {}",
            if answer["credentialRevoked"] == true {
                "revoked"
            } else {
                "none held"
            },
            answer["removed"].as_array().map_or(0, Vec::len)
        );
        Ok(ExitCode::SUCCESS)
    })
}

fn duration(flag: &str, text: &str) -> anyhow::Result<Duration> {
    let d: jiff::SignedDuration = text
        .parse()
        .with_context(|| format!("--{flag} {text:?}: expected a duration such as 500ms, 10s or 5m"))?;
    Duration::try_from(d).with_context(|| format!("--{flag} {text:?}: must not be negative"))
}

pub fn pair(flag: &str, text: &str) -> anyhow::Result<(String, String)> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => bail!("--{flag} {text:?}: expected key=value"),
    }
}

fn taint(text: &str) -> anyhow::Result<serde_json::Value> {
    let (kv, effect) = text
        .rsplit_once(':')
        .with_context(|| format!("--register-with-taints {text:?}: expected key=value:Effect"))?;
    if !["NoSchedule", "PreferNoSchedule", "NoExecute"].contains(&effect) {
        bail!("--register-with-taints {text:?}: the effect must be NoSchedule, PreferNoSchedule or NoExecute");
    }
    let (key, value) = kv.split_once('=').unwrap_or((kv, ""));
    Ok(json!({"key": key, "value": value, "effect": effect}))
}

fn cidr(flag: &str, text: &str) -> anyhow::Result<capstan_api::cidr::Cidr> {
    text.parse().with_context(|| format!("--{flag}"))
}

/// The proxy's settings from the flags.
pub fn proxy_config(mode: &capstan_proxy::ProxyMode, service_cidr: &str, cluster_cidr: &str) -> anyhow::Result<capstan_proxy::ProxyConfig> {
    Ok(capstan_proxy::ProxyConfig {
        mode: *mode,
        service_cidr: cidr("service-cidr", service_cidr)?,
        pod_cidr: cidr("cluster-cidr", cluster_cidr)?,
        ..capstan_proxy::ProxyConfig::default()
    })
}

pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_ascii_lowercase())
        .unwrap_or_else(|_| "node".into())
}

/// The agent's configuration from the flags.
pub fn config(args: Args) -> anyhow::Result<NodeConfig> {
    let name = args.name.unwrap_or_else(host_name);
    let data_dir = match args.data_dir {
        Some(d) => d,
        None => super::daemon::default_data_dir()?.join("nodes").join(&name),
    };
    let (Some(server), Some(token_file)) = (args.server, args.token_file) else {
        bail!("--server and --token-file are required");
    };
    let mut c = NodeConfig::new(server, token_file, name, data_dir);
    c.listen = args
        .listen
        .parse::<SocketAddr>()
        .with_context(|| format!("--listen {:?}: expected ADDRESS:PORT", args.listen))?;
    c.node_ip = args.node_ip;
    c.pod_network = args.pod_network;
    c.fast_path = !args.no_fast_path;
    c.docker_host = args.docker_host;
    c.cluster_cidr = cidr("cluster-cidr", &args.cluster_cidr)?;
    c.labels = args
        .node_labels
        .iter()
        .map(|l| pair("node-labels", l))
        .collect::<anyhow::Result<_>>()?;
    c.taints = args.register_with_taints.iter().map(|t| taint(t)).collect::<anyhow::Result<_>>()?;
    c.cpus = args.cpus;
    c.memory = args.memory;
    c.max_pods = args.max_pods;
    c.allow_host_path = args.allow_host_path;
    c.volume_dir = args.volume_dir;
    c.pause_image = args.pause_image;
    c.backoff.initial = duration("restart-backoff", &args.restart_backoff)?;
    c.backoff.max = duration("restart-backoff-max", &args.restart_backoff_max)?;
    c.backoff.reset_after = duration("restart-backoff-reset", &args.restart_backoff_reset)?;
    c.lease_interval = duration("lease-interval", &args.lease_interval)?;
    c.cluster_dns = args.cluster_dns;
    c.cluster_domain = args.cluster_domain;
    c.runtime_labels = args
        .runtime_label
        .iter()
        .map(|l| pair("runtime-label", l))
        .collect::<anyhow::Result<_>>()?;
    c.ingress = args.ingress.config()?;
    c.proxy = (!args.no_proxy)
        .then(|| proxy_config(&args.proxy_mode, &args.service_cidr, &args.cluster_cidr))
        .transpose()?
        .map(|p| capstan_proxy::ProxyConfig {
            table: args.proxy_table.clone(),
            ipvs_scheduler: args.ipvs_scheduler.clone(),
            ..p
        });
    Ok(c)
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if let Some(Action::Forget { name, kubeconfig }) = &args.action {
        return forget(name, kubeconfig.clone());
    }
    let rt = tokio::runtime::Runtime::new()?;
    if args.cleanup_proxy {
        let mut p = proxy_config(&args.proxy_mode, &args.service_cidr, &args.cluster_cidr)?;
        p.table = args.proxy_table.clone();
        rt.block_on(capstan_proxy::sync::cleanup(&p))?;
        eprintln!(
            "capstan node: removed the proxy's table {}, its IPVS services where the kernel has IPVS, and its DOCKER-USER rules",
            p.table
        );
        return Ok(ExitCode::SUCCESS);
    }
    let config = config(args)?;
    rt.block_on(async {
        let agent = Agent::start(config).await?;
        eprintln!("capstan node {}: running; endpoint {}", agent.name, agent.endpoint);
        super::daemon::wait_for_signal().await;
        eprintln!("capstan node {}: stopping (containers keep running)", agent.name);
        agent.shutdown().await;
        Ok(ExitCode::SUCCESS)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taints_and_durations_parse() {
        assert_eq!(
            taint("dedicated=db:NoSchedule").unwrap(),
            json!({"key": "dedicated", "value": "db", "effect": "NoSchedule"})
        );
        assert!(taint("x:Sometimes").is_err());
        assert_eq!(duration("d", "250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(duration("d", "5m").unwrap(), Duration::from_secs(300));
        assert!(duration("d", "soon").is_err());
    }
}
