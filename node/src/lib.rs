//! The node agent (Capstan's kubelet): joins the cluster, registers its Node, heartbeats a Lease
//! and runs the pods bound to it on the Docker Engine, serving their logs to the API server.

pub mod backoff;
pub mod client;
pub mod join;
pub mod mesh;
pub mod podnet;
pub mod pods;
mod portforward;
pub mod probes;
pub mod references;
pub mod register;
pub mod server;
mod spdy;
mod spdy_exec;
pub mod spec;
pub mod stats;
pub mod status;
pub mod storage;
mod streams;
pub mod volumes;
pub mod worker;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use capstan_containers::{Docker, Runtime, RuntimeError};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::client::ApiClient;

/// How the agent is set up.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// The API server, `https://HOST:PORT`, or several replicas' separated by commas.
    pub server: String,
    pub token_file: PathBuf,
    pub name: String,
    pub data_dir: PathBuf,
    /// The node's HTTPS endpoint (logs, stats).
    pub listen: SocketAddr,
    /// The address published in the Node (default: the host's address on its default route).
    pub node_ip: Option<IpAddr>,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Value>,
    /// Capacity overrides (default: the host's).
    pub cpus: Option<String>,
    pub memory: Option<String>,
    pub max_pods: u32,
    pub backoff: Backoff,
    pub allow_host_path: bool,
    /// Where provisioned persistent volumes live; `None`: `data_dir/volumes`.
    pub volume_dir: Option<PathBuf>,
    pub pause_image: String,
    /// Labels added to every container and network the agent makes.
    pub runtime_labels: Vec<(String, String)>,
    pub cluster_dns: String,
    pub cluster_domain: String,
    /// How often the Lease is renewed.
    pub lease_interval: Duration,
    /// How long to keep trying to reach the server at start.
    pub join_patience: Duration,
    /// How pods reach the pods of other hosts.
    pub pod_network: mesh::Backend,
    /// With `vxlan`: the eBPF fast path for established TCP connections between nodes' pods.
    pub fast_path: bool,
    /// The whole pod range (pod-to-pod traffic is never masqueraded).
    pub cluster_cidr: capstan_api::cidr::Cidr,
    /// The Docker Engine (`unix:///path`, `tcp://host:port`); `None`: DOCKER_HOST or the local one.
    pub docker_host: Option<String>,
    /// The service proxy this agent runs (one per host); `None`: `--no-proxy`. When its DNS
    /// address is unset, the cluster DNS listens on the node's address, port 53 (unless that is
    /// a loopback address, which pods cannot be pointed at).
    pub proxy: Option<capstan_proxy::ProxyConfig>,
    /// The ingress this agent runs (Ingress routes on the node's HTTP and HTTPS ports); `None`:
    /// off.
    pub ingress: Option<capstan_ingress::IngressConfig>,
}

impl NodeConfig {
    pub fn new(
        server: impl Into<String>,
        token_file: impl Into<PathBuf>,
        name: impl Into<String>,
        data_dir: impl Into<PathBuf>,
    ) -> NodeConfig {
        NodeConfig {
            server: server.into(),
            token_file: token_file.into(),
            name: name.into(),
            data_dir: data_dir.into(),
            listen: SocketAddr::from(([0, 0, 0, 0], 10250)),
            node_ip: None,
            labels: BTreeMap::new(),
            taints: Vec::new(),
            cpus: None,
            memory: None,
            max_pods: 110,
            backoff: Backoff::default(),
            allow_host_path: false,
            volume_dir: None,
            pause_image: "capstan.local/pause:3".into(),
            runtime_labels: Vec::new(),
            cluster_dns: "10.96.0.10".into(),
            cluster_domain: "cluster.local".into(),
            lease_interval: Duration::from_secs(10),
            join_patience: Duration::from_secs(30),
            pod_network: mesh::Backend::default(),
            fast_path: true,
            cluster_cidr: capstan_api::cidr::POD_RANGE,
            docker_host: None,
            proxy: None,
            ingress: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("reading the token file {path}: {source}")]
    TokenFile { path: String, source: std::io::Error },
    #[error("the token file {path} does not hold <sha256 of the cluster CA>::<secret> (copy DATA_DIR/node-token from the daemon)")]
    TokenFormat { path: String },
    #[error("the API server {server} is not reachable: {message}")]
    Unreachable { server: String, message: String },
    #[error(
        "the CA served by {server} has SHA-256 {got}, but the token file pins {pinned}: refusing to join (wrong server, or someone in between)"
    )]
    CaMismatch { server: String, got: String, pinned: String },
    #[error("joining {server} as node {node:?}: {message}")]
    Join { server: String, node: String, message: String },
    #[error("the Docker Engine: {0}")]
    Runtime(#[from] RuntimeError),
    #[error("registering node {node:?}: {message}")]
    Register { node: String, message: String },
    #[error("listening on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("creating {path}: {source}")]
    Write { path: String, source: std::io::Error },
    #[error("the pod network: {0}")]
    PodNetwork(#[from] mesh::kernel::KernelError),
    #[error("the service proxy: {0}")]
    Proxy(#[from] capstan_proxy::ProxyError),
}

pub use capstan_runtime::https::default_ip;

/// A running agent.
pub struct Agent {
    pub name: String,
    /// Where the node's HTTPS endpoint listens.
    pub endpoint: SocketAddr,
    shutdown: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    proxy: Option<capstan_proxy::Proxy>,
    ingress: Option<capstan_ingress::Ingress>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Agent({})", self.name)
    }
}

impl Agent {
    /// Joins, registers and starts running pods.
    pub async fn start(config: NodeConfig) -> Result<Agent, NodeError> {
        if let Some(e) = capstan_api::names::dns1123_subdomain(&config.name) {
            return Err(NodeError::Register {
                node: config.name.clone(),
                message: format!("not a valid node name: {e}"),
            });
        }
        let pods_dir = config.data_dir.join("pods");
        std::fs::create_dir_all(&pods_dir).map_err(|source| NodeError::Write {
            path: pods_dir.display().to_string(),
            source,
        })?;
        let volume_dir = storage::prepare_root(config.volume_dir.clone().unwrap_or_else(|| config.data_dir.join("volumes")))?;
        let runtime: Arc<dyn Runtime> = Arc::new(Docker::connect_to(config.docker_host.as_deref()).await?);
        let runtime_version = runtime.version().await?;
        let creds = join::join(
            &config.server,
            &config.token_file,
            &config.name,
            &config.data_dir,
            config.join_patience,
        )
        .await?;
        let kube =
            client::kube_client(&config.server, Some(&creds.ca_pem), Some(&creds.token)).map_err(|message| NodeError::Unreachable {
                server: config.server.clone(),
                message,
            })?;
        let api = ApiClient::new(kube.clone());
        let shutdown = CancellationToken::new();
        let (endpoint, server_task) = server::start(config.listen, &creds, runtime.clone(), config.name.clone(), shutdown.clone()).await?;
        let ip = config.node_ip.unwrap_or_else(default_ip);
        let registration = register::Registration {
            name: config.name.clone(),
            ip: ip.to_string(),
            port: endpoint.port(),
            labels: config.labels.clone(),
            taints: config.taints.clone(),
            cpus: config.cpus.clone(),
            memory: config.memory.clone(),
            max_pods: config.max_pods,
            runtime_version,
            data_dir: config.data_dir.clone(),
            volume_dir: volume_dir.clone(),
        };
        let host = register::HostFacts::read(&config.data_dir);
        register::register(&api, &registration, &host)
            .await
            .map_err(|e| NodeError::Register {
                node: config.name.clone(),
                message: e.to_string(),
            })?;
        tracing::info!(node = %config.name, ip = %ip, endpoint = %endpoint, volumes = %volume_dir.display(), "node registered");

        let mesh = match ip {
            IpAddr::V4(v4) => {
                let underlay = mesh::detect(v4).await?;
                Some(mesh::MeshConfig {
                    node: config.name.clone(),
                    backend: config.pod_network,
                    fast_path: config.fast_path,
                    underlay,
                    cluster_cidr: config.cluster_cidr,
                })
            }
            IpAddr::V6(_) => None,
        };
        let proxy = match config.proxy.clone() {
            Some(mut p) => {
                if let (None, IpAddr::V4(v4)) = (p.dns, ip)
                    && !v4.is_loopback()
                {
                    p.dns = Some(std::net::SocketAddrV4::new(v4, 53));
                }
                p.cluster_domain = config.cluster_domain.clone();
                p.node_name = Some(config.name.clone());
                Some(capstan_proxy::Proxy::start(kube.clone(), p).await?)
            }
            None => None,
        };
        let ingress = match config.ingress.clone() {
            Some(i) => Some(capstan_ingress::Ingress::start(kube.clone(), i).await),
            None => None,
        };
        // A listener port another process holds: said on the Node, the rest goes on.
        for problem in ingress.iter().flat_map(|i| &i.problems) {
            register::node_event(&api, &config.name, "IngressListenFailed", problem).await;
        }
        let mut tasks = vec![server_task];
        tasks.push(tokio::spawn(register::heartbeat(
            api.clone(),
            runtime.clone(),
            config.name.clone(),
            config.data_dir.clone(),
            config.lease_interval,
            shutdown.clone(),
        )));
        tasks.push(tokio::spawn(storage::clean_released(
            api.clone(),
            config.name.clone(),
            volume_dir,
            shutdown.clone(),
        )));
        if let Some(p) = &proxy {
            tasks.push(tokio::spawn(register::publish_proxy_sync(
                api.clone(),
                config.name.clone(),
                p.synced(),
                shutdown.clone(),
            )));
        }
        let env = Arc::new(worker::Env {
            runtime,
            api,
            net: Arc::new(podnet::PodNet::new(
                capstan_containers::bridge_name(&pods::network_name(&config.name)),
                mesh.as_ref().map(mesh::MeshConfig::pod_mtu),
            )),
            ctx: spec::NodeContext {
                node: config.name.clone(),
                network: pods::network_name(&config.name),
                host_ip: ip.to_string(),
                dns_ip: config.cluster_dns.clone(),
                cluster_domain: config.cluster_domain.clone(),
                pause_image: config.pause_image.clone(),
                volumes_dir: pods_dir.clone(),
            },
            backoff: config.backoff,
            allow_host_path: config.allow_host_path,
            extra_labels: config.runtime_labels.clone(),
            pods_dir,
        });
        let stop = shutdown.clone();
        let extra = config.runtime_labels.clone();
        let mesh_api = env.api.clone();
        tasks.push(tokio::spawn(async move {
            let masquerade = !mesh.as_ref().is_some_and(mesh::MeshConfig::active);
            if let Some(cidr) = pods::prepare_network(&env, &extra, masquerade, &stop).await {
                if let (Some(m), Ok(range)) = (mesh, cidr.parse()) {
                    tokio::spawn(mesh::run(mesh_api, m, range, env.net.clone(), stop.clone()));
                }
                pods::run(env, stop).await;
            }
        }));
        Ok(Agent {
            name: config.name,
            endpoint,
            shutdown,
            tasks,
            proxy,
            ingress,
        })
    }

    /// Stops the agent; the pods' containers keep running for the next agent to adopt.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
        if let Some(p) = self.proxy {
            p.shutdown().await;
        }
        if let Some(i) = self.ingress {
            i.shutdown().await;
        }
    }
}
