//! `capstan up`: everything in one process — the daemon with its embedded store, one node agent
//! on the local Docker Engine and the service proxy — tracking a repository; with none, a demo
//! repository made once from the example. Ctrl-C stops it; the containers keep running and are
//! adopted on the next start.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use capstan_daemon::context::kind;
use capstan_daemon::{Daemon, DaemonConfig};
use capstan_node::{Agent, NodeConfig};

/// The example repository, built into the binary so that `up` works from anywhere.
const EXAMPLE: &[(&str, &str)] = &[
    ("README.md", include_str!("../../examples-repo/README.md")),
    ("namespace.yaml", include_str!("../../examples-repo/namespace.yaml")),
    ("settings.yaml", include_str!("../../examples-repo/settings.yaml")),
    ("guestbook/config.yaml", include_str!("../../examples-repo/guestbook/config.yaml")),
    (
        "guestbook/kustomization.yaml",
        include_str!("../../examples-repo/guestbook/kustomization.yaml"),
    ),
    (
        "guestbook/frontend.yaml",
        include_str!("../../examples-repo/guestbook/frontend.yaml"),
    ),
    ("redis/redis.yaml", include_str!("../../examples-repo/redis/redis.yaml")),
];

/// The image recipes, where this binary was built from a source tree.
const IMAGES_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples-repo/images/build.sh");

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The repository to track (path or URL); with none, a demo repository is created in the
    /// data dir.
    pub repo: Option<String>,
    /// Default: ~/.capstan.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Where the API server listens. On every interface by default, so that pods reach it
    /// through the `kubernetes` Service at the host's address (TLS and tokens guard it).
    #[arg(long, default_value = "0.0.0.0:6443")]
    pub listen: String,
    /// Another name or address clients reach the API server at, for its certificate; may be
    /// repeated.
    #[arg(long = "tls-san")]
    pub tls_san: Vec<String>,
    /// The pod range, split into a /24 per node.
    #[arg(long, default_value = "10.244.0.0/16")]
    pub cluster_cidr: String,
    /// The node's name; default: the host name.
    #[arg(long)]
    pub node_name: Option<String>,
    /// The node's HTTPS endpoint (logs, stats).
    #[arg(long, default_value = "0.0.0.0:10250")]
    pub node_listen: String,
    /// Where provisioned persistent volumes live (default: DATA_DIR/nodes/NAME/volumes).
    #[arg(long)]
    pub volume_dir: Option<PathBuf>,
    /// Allow hostPath volumes and the host's namespaces (hostNetwork, hostPID, hostIPC) on the
    /// node, as `kubectl debug node/NAME` needs.
    #[arg(long)]
    pub allow_host_path: bool,
    /// How often a remote repository is fetched, in seconds.
    #[arg(long, default_value_t = 15)]
    pub poll_interval: u64,
    /// When the rollout of the tracked branch's tip misses its progress deadline, revert that
    /// commit by a commit of Capstan's own on the branch.
    #[arg(long)]
    pub revert_failed_rollouts: bool,
    /// How pods reach pods on other hosts (nodes joined with `capstan node`): `vxlan`,
    /// `host-gw` or `none`.
    #[arg(long, default_value = "vxlan")]
    pub pod_network: capstan_node::mesh::Backend,
    /// Keep every packet of the `vxlan` pod network on the kernel's forwarding path (no eBPF fast
    /// path for established TCP connections between nodes' pods).
    #[arg(long)]
    pub no_fast_path: bool,
    /// The address published in the Node; default: the host's address on its default route.
    #[arg(long)]
    pub node_ip: Option<std::net::IpAddr>,
    /// The Docker Engine to run pods on (`unix:///path`, `tcp://host:port`).
    #[arg(long, env = "DOCKER_HOST")]
    pub docker_host: Option<String>,
    /// The proxy's dataplane: `ipvs`, `nftables`, or `auto`.
    #[arg(long, default_value = "auto")]
    pub proxy_mode: capstan_proxy::ProxyMode,
    /// The nftables table the proxy owns (tests use their own).
    #[arg(long, default_value = "capstan-proxy", hide = true)]
    pub proxy_table: String,
    /// Extra labels on every container and network the node makes (`key=value`; tests).
    #[arg(long, hide = true)]
    pub runtime_label: Vec<String>,
    #[command(flatten)]
    pub ingress: super::node::IngressArgs,
    #[command(flatten)]
    pub store: super::store::StoreArgs,
}

/// Creates `dir` as a git repository holding the example, committed on `main`.
fn create_demo_repo(dir: &Path) -> anyhow::Result<()> {
    for (path, text) in EXAMPLE {
        let file = dir.join(path);
        std::fs::create_dir_all(file.parent().expect("files have a parent"))?;
        // The committed schema modelines point into the Capstan source; here they would dangle.
        let text: String = text
            .lines()
            .filter(|l| !l.starts_with("# yaml-language-server:"))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(&file, text).with_context(|| format!("writing {}", file.display()))?;
    }
    let repo = git2::Repository::init_opts(dir, git2::RepositoryInitOptions::new().initial_head("main"))?;
    let mut index = repo.index()?;
    index.add_all(["*"], git2::IndexAddOption::DEFAULT, None)?;
    index.write()?;
    let tree = repo.find_tree(index.write_tree()?)?;
    let sig = git2::Signature::now("Capstan", "capstan@localhost")?;
    repo.commit(Some("HEAD"), &sig, &sig, "The guestbook example", &tree, &[])?;
    Ok(())
}

/// Where the example's image recipes are: `$CAPSTAN_SOURCE`, a source tree the binary sits in
/// (target/release/capstan), or the tree it was built from — so a moved binary still finds them.
fn images_script() -> Option<PathBuf> {
    const RELATIVE: &str = "examples-repo/images/build.sh";
    let from_env = std::env::var_os("CAPSTAN_SOURCE").map(|s| PathBuf::from(s).join(RELATIVE));
    let from_binary = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.ancestors().skip(1).map(|dir| dir.join(RELATIVE)).find(|p| p.exists()));
    [from_env, from_binary, Some(PathBuf::from(IMAGES_SCRIPT))]
        .into_iter()
        .flatten()
        .find(|p| p.exists())
}

/// Builds the example's images if missing (no registry to pull them from).
fn build_images() {
    let Some(script) = images_script() else {
        eprintln!(
            "  (no image recipes found: set CAPSTAN_SOURCE to a Capstan source tree to build the example's images; pods whose images are missing will say so)"
        );
        return;
    };
    eprintln!(
        "  checking the example's images with {} (building what is missing; the first time takes a few minutes)",
        script.display()
    );
    match std::process::Command::new(&script).status() {
        Ok(s) if s.success() => {}
        Ok(s) => eprintln!("  building the images failed ({s}); pods whose images are missing will say so"),
        Err(e) => eprintln!("  running {}: {e}", script.display()),
    }
}

fn is_ready(pod: &serde_json::Value) -> bool {
    pod["status"]["conditions"]
        .as_array()
        .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let data_dir = match args.data_dir {
        Some(d) => d,
        None => super::daemon::default_data_dir()?,
    };
    let mut daemon_config = DaemonConfig::new(String::new(), data_dir.clone());
    daemon_config.listen = args
        .listen
        .parse()
        .with_context(|| format!("--listen {:?}: expected ADDRESS:PORT", args.listen))?;
    daemon_config.tls_sans = args.tls_san.clone();
    daemon_config.poll_interval = std::time::Duration::from_secs(args.poll_interval.max(1));
    daemon_config.revert_failed_rollouts = args.revert_failed_rollouts;
    daemon_config.store = args.store.choice()?;
    (daemon_config.leader_lease, daemon_config.leader_renew) = args.store.election()?;
    daemon_config.history = args.store.history()?;
    let mut proxy = super::node::proxy_config(&args.proxy_mode, "10.96.0.0/16", &args.cluster_cidr)?;
    proxy.table = args.proxy_table;
    daemon_config.pod_cidr = proxy.pod_cidr;
    let name = args.node_name.unwrap_or_else(super::node::host_name);
    let mut node = NodeConfig::new(
        String::new(),
        data_dir.join("node-token"),
        name.clone(),
        data_dir.join("nodes").join(&name),
    );
    node.listen = args
        .node_listen
        .parse()
        .with_context(|| format!("--node-listen {:?}: expected ADDRESS:PORT", args.node_listen))?;
    node.runtime_labels = args
        .runtime_label
        .iter()
        .map(|l| super::node::pair("runtime-label", l))
        .collect::<anyhow::Result<_>>()?;
    node.pod_network = args.pod_network;
    node.fast_path = !args.no_fast_path;
    node.node_ip = args.node_ip;
    node.volume_dir = args.volume_dir.clone();
    node.allow_host_path = args.allow_host_path;
    node.docker_host = args.docker_host.clone();
    node.cluster_cidr = proxy.pod_cidr;
    node.proxy = Some(proxy);
    node.ingress = args.ingress.config()?;
    std::fs::create_dir_all(&data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    // So that `capstan down` can stop this process.
    let pid_file = data_dir.join(super::down::PID_FILE);
    std::fs::write(&pid_file, std::process::id().to_string()).with_context(|| format!("writing {}", pid_file.display()))?;
    let (repo, demo) = match args.repo {
        Some(r) => (r, false),
        None => {
            let dir = data_dir.join("demo-repo");
            if !dir.join(".git").exists() {
                create_demo_repo(&dir).with_context(|| format!("creating the demo repository {}", dir.display()))?;
                eprintln!(
                    "capstan up: created the demo repository {} from the guestbook example",
                    dir.display()
                );
            }
            (dir.display().to_string(), true)
        }
    };
    build_images();

    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        daemon_config.repo = repo.clone();
        let daemon = Daemon::start(daemon_config).await?;
        eprintln!("capstan up: control plane at {}, tracking {repo}", daemon.url());
        node.server = daemon.url();
        node.token_file = daemon.node_token.clone();
        let agent = match Agent::start(node).await {
            Ok(a) => a,
            Err(e) => {
                daemon.shutdown().await;
                return Err(anyhow::Error::new(e).context("starting the local node"));
            }
        };
        eprintln!("capstan up: node {name} joined; running pods on the local Docker Engine");

        let outcome = tokio::select! {
            _ = super::daemon::wait_for_signal() => None,
            r = settle(&daemon) => Some(r),
        };
        if outcome.is_some() {
            print_summary(&daemon, demo.then_some(repo.as_str()));
            super::daemon::wait_for_signal().await;
        }
        eprintln!("capstan up: stopping (containers keep running and are adopted on the next start)");
        agent.shutdown().await;
        daemon.shutdown().await;
        let _ = std::fs::remove_file(&pid_file);
        Ok(ExitCode::SUCCESS)
    })
}

/// Shows progress until the commit is applied and its pods are ready (or a few minutes pass).
async fn settle(daemon: &Daemon) {
    let pods = kind("pods");
    let start = Instant::now();
    let mut last = String::new();
    loop {
        let status = daemon.sync_status.borrow().clone();
        let (all, _) = daemon.cache.list(pods, None);
        let ready = all.iter().filter(|p| is_ready(&p.object)).count();
        let line = match &status.applied_commit {
            None if status.errors.is_empty() => "waiting for the first commit".to_owned(),
            None => format!(
                "the repository cannot be applied yet: {}",
                status.errors.last().cloned().unwrap_or_default()
            ),
            Some(c) => format!(
                "commit {} applied ({} objects, {} quarantined); pods ready {ready}/{}",
                &c[..c.len().min(12)],
                status.created + status.updated + status.unchanged,
                status.quarantined.len(),
                all.len()
            ),
        };
        if line != last {
            eprintln!("  {line}");
            last = line;
        }
        let settled = status.applied_commit.is_some()
            && ((!all.is_empty() && ready == all.len()) || (all.is_empty() && start.elapsed() > Duration::from_secs(10)));
        if settled || start.elapsed() > Duration::from_secs(300) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn print_summary(daemon: &Daemon, demo: Option<&str>) {
    let status = daemon.sync_status.borrow().clone();
    let (pods, _) = daemon.cache.list(kind("pods"), None);
    let ready = pods.iter().filter(|p| is_ready(&p.object)).count();
    println!();
    println!("Capstan is up.");
    println!("  applied commit   {}", status.applied_commit.as_deref().unwrap_or("(none yet)"));
    println!("  pods ready       {ready}/{}", pods.len());
    for p in pods.iter().filter(|p| !is_ready(&p.object)) {
        let why = p.object["status"]["containerStatuses"]
            .as_array()
            .into_iter()
            .flatten()
            .find_map(|c| c["state"]["waiting"]["reason"].as_str().map(str::to_owned))
            .unwrap_or_else(|| p.object["status"]["phase"].as_str().unwrap_or("Pending").to_owned());
        println!("    not ready: {}/{} ({why})", p.namespace, p.name);
    }
    let (services, _) = daemon.cache.list(kind("services"), None);
    for s in services
        .iter()
        .filter(|s| !["default", "kube-system"].contains(&s.namespace.as_str()))
    {
        let spec = &s.object["spec"];
        let ports: Vec<String> = spec["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| match p["nodePort"].as_i64() {
                Some(n) => format!("{}:{n}", p["port"]),
                None => p["port"].to_string(),
            })
            .collect();
        println!(
            "  service          {}/{}  {}  {}",
            s.namespace,
            s.name,
            spec["clusterIP"].as_str().unwrap_or("-"),
            ports.join(",")
        );
    }
    let kubeconfig = daemon.kubeconfig.display();
    println!("  kubeconfig       {kubeconfig}");
    println!();
    println!("Try it:");
    println!("  kubectl --kubeconfig {kubeconfig} get pods -A");
    if let Some(repo) = demo {
        println!("  cd {repo} && sed -i 's/guestbook:1/guestbook:2/' guestbook/frontend.yaml && git commit -qam 'frontend 2'");
        println!("  kubectl --kubeconfig {kubeconfig} -n guestbook rollout status deploy/frontend");
        println!("  git revert --no-edit HEAD     # and back");
    }
    println!("Ctrl-C stops Capstan; the containers keep running.");
}
