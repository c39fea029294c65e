//! The `capstan` command: run the daemon, a node, or both in one; validate manifests; plan a
//! pull request; read the sync status and history. The binary is thin: each subcommand lives in
//! its own module under `commands`.

mod commands;
mod output;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::output::Format;

#[derive(Parser)]
#[command(
    name = "capstan",
    version,
    about = "A GitOps-native container orchestrator: Git is the only store of desired state"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// All in one: the daemon, one local node and the proxy, with the embedded store.
    Up(Box<commands::up::Args>),
    /// Remove what `up` made: stop it, remove its containers, network and proxy rules, and
    /// with --purge its data directory.
    Down(commands::down::Args),
    /// Take a node out of service: cordon it and evict its pods (but the DaemonSets') as their
    /// PodDisruptionBudgets allow, waiting until they are gone.
    Drain(commands::drain::Args),
    /// People's credentials: client certificates whose rights RBAC in Git decides.
    #[command(subcommand)]
    User(commands::user::Command),
    /// Put a cordoned node back into service.
    Uncordon {
        node: String,
        /// An administrator's kubeconfig; default: ~/.capstan/kubeconfig.
        #[arg(long)]
        kubeconfig: Option<std::path::PathBuf>,
    },
    /// The control plane: Git source, store, API server, controllers, scheduler.
    Daemon {
        /// Path or URL (file://, https://, ssh) of the repository to track.
        #[arg(long)]
        repo: String,
        /// Branch to track; default: the repository's HEAD branch.
        #[arg(long)]
        branch: Option<String>,
        /// Directory inside the repository that holds the manifests.
        #[arg(long)]
        path: Option<String>,
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long)]
        listen: Option<String>,
        /// Another name or address clients reach the API server at (a load balancer or DNS
        /// name in front of the replicas), for its certificate; may be repeated.
        #[arg(long = "tls-san")]
        tls_san: Vec<String>,
        /// The pod range, split into a /24 per node.
        #[arg(long)]
        cluster_cidr: Option<String>,
        /// Accept `POST /hooks/git` (GitHub, Gitea or GitLab push webhooks) signed with the
        /// secret in this file, and fetch at once when one arrives.
        #[arg(long)]
        webhook_secret_file: Option<PathBuf>,
        /// How often a remote repository is fetched, in seconds.
        #[arg(long, default_value_t = 15)]
        poll_interval: u64,
        /// Seconds without a heartbeat after which a node is NotReady (kube-controller-manager's
        /// --node-monitor-grace-period).
        #[arg(long, default_value_t = 40)]
        node_grace_period: u64,
        /// Seconds a pod stays on a NotReady node before it is evicted, unless it tolerates
        /// longer (Kubernetes' default toleration of 300 s).
        #[arg(long, default_value_t = 300)]
        pod_eviction_timeout: u64,
        /// Seconds an Event is kept after it was last seen (kube-apiserver's --event-ttl).
        #[arg(long, default_value_t = 3600)]
        event_ttl: u64,
        /// Seconds between an autoscaler's looks at its metrics (kube-controller-manager's
        /// --horizontal-pod-autoscaler-sync-period).
        #[arg(long, default_value_t = 15)]
        horizontal_pod_autoscaler_sync_period: u64,
        /// The kustomize that builds kustomize roots (a `kustomize` or `kubectl` binary);
        /// default: `kustomize` on the PATH, else `kubectl kustomize`.
        #[arg(long)]
        kustomize: Option<PathBuf>,
        /// When the rollout of the tracked branch's tip misses its progress deadline, revert
        /// that commit by a commit of Capstan's own on the branch (pushed, for a remote).
        #[arg(long)]
        revert_failed_rollouts: bool,
        #[command(flatten)]
        store: Box<commands::store::StoreArgs>,
    },
    /// A node agent (and the proxy) joining a running daemon.
    Node(Box<commands::node::Args>),
    /// Check every manifest in a directory (or a repository's working tree); exit 1 on any problem.
    Validate {
        /// A directory or a single manifest file.
        path: PathBuf,
        /// The kustomize that builds kustomize roots (a `kustomize` or `kubectl` binary);
        /// default: `kustomize` on the PATH, else `kubectl kustomize`.
        #[arg(long)]
        kustomize: Option<PathBuf>,
        #[arg(long, short, value_enum, default_value_t = Format::Text)]
        output: Format,
    },
    /// Show what moving from one commit to another would do: objects added, changed, removed,
    /// quarantined.
    Plan {
        /// The repository; default: the current directory.
        #[arg(long, default_value = ".")]
        repo: PathBuf,
        /// Directory inside the repository that holds the manifests.
        #[arg(long, default_value = "")]
        path: String,
        /// Two revisions, `BASE..HEAD` (e.g. `main..feature`).
        range: String,
        /// The kustomize that builds kustomize roots (as for validate).
        #[arg(long)]
        kustomize: Option<PathBuf>,
        #[arg(long, short, value_enum, default_value_t = Format::Text)]
        output: Format,
    },
    /// The control plane's store: `capstan store migrate` moves a cluster from the embedded
    /// store to etcd.
    #[command(subcommand)]
    Store(commands::store::Command),
    /// The sync state: applied commit and per-object health.
    Status {
        /// The tracked repository (Capstan writes the status branch and notes into it).
        #[arg(long, default_value = ".")]
        repo: PathBuf,
        #[arg(long, short, value_enum, default_value_t = Format::Text)]
        output: Format,
    },
    /// Applied commits and their outcome, from the git notes.
    History {
        /// The tracked repository.
        #[arg(long, default_value = ".")]
        repo: PathBuf,
        /// The branch to walk; default: the checked-out one.
        #[arg(long)]
        branch: Option<String>,
        /// How many commits to show.
        #[arg(long, short = 'n', default_value_t = 20)]
        limit: usize,
        #[arg(long, short, value_enum, default_value_t = Format::Text)]
        output: Format,
    },
    /// Write the JSON Schema of every kind.
    Schemas {
        #[arg(long, default_value = "schemas")]
        out: PathBuf,
    },
}

/// The default log filter. The join fetches the cluster CA before it can check the server's
/// certificate (the CA's hash is then checked against the token file); kube-rs warns about that
/// one unverified request, which is no news to the user.
const DEFAULT_LOG: &str = "info,kube_client::client::tls=error";

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("CAPSTAN_LOG").unwrap_or_else(|_| DEFAULT_LOG.into()))
        .with_writer(std::io::stderr)
        // Colours only on a terminal: a log written to a file stays plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match cli.command {
        Command::Validate { path, kustomize, output } => commands::validate::run(&path, kustomize.as_deref(), output),
        Command::Plan {
            repo,
            path,
            range,
            kustomize,
            output,
        } => commands::plan::run(&repo, &path, &range, kustomize, output),
        Command::Schemas { out } => commands::schemas::run(&out),
        Command::Up(args) => commands::up::run(*args),
        Command::Down(args) => commands::down::run(args),
        Command::Drain(args) => commands::drain::drain(args),
        Command::User(command) => commands::user::run(command),
        Command::Uncordon { node, kubeconfig } => commands::drain::uncordon(&node, kubeconfig),
        Command::Daemon {
            repo,
            branch,
            path,
            data_dir,
            listen,
            tls_san,
            cluster_cidr,
            webhook_secret_file,
            poll_interval,
            node_grace_period,
            pod_eviction_timeout,
            event_ttl,
            horizontal_pod_autoscaler_sync_period,
            kustomize,
            revert_failed_rollouts,
            store,
        } => commands::daemon::run(commands::daemon::Args {
            repo,
            branch,
            path,
            data_dir,
            listen,
            tls_san,
            cluster_cidr,
            webhook_secret_file,
            poll_interval,
            node_grace_period,
            pod_eviction_timeout,
            event_ttl,
            horizontal_pod_autoscaler_sync_period,
            kustomize,
            revert_failed_rollouts,
            store: *store,
        }),
        Command::Node(args) => commands::node::run(*args),
        Command::Store(command) => commands::store::run(command),
        Command::Status { repo, output } => commands::status::run(&repo, output),
        Command::History {
            repo,
            branch,
            limit,
            output,
        } => commands::history::run(&repo, branch.as_deref(), limit, output),
    };
    match result {
        Ok(code) => code,
        // As `head` closing a pipe ends `git log`: at once, with SIGPIPE's status, no message.
        Err(e) if output::closed_pipe(&e) => ExitCode::from(141),
        Err(e) => {
            eprintln!("error: {}", describe(&e));
            ExitCode::from(2)
        }
    }
}

/// The error and its causes, each once: a cause whose text ends what is already written is left
/// out (many messages quote their source, and the source is in the chain as well).
fn describe(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.ends_with(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_error_chain_names_each_cause_once() {
        // Each layer quotes the one below, as thiserror messages with `{0}` do.
        let e = anyhow::Error::new(std::io::Error::other("Address already in use"))
            .context("cluster DNS on 192.0.2.2:53: Address already in use")
            .context("the service proxy: cluster DNS on 192.0.2.2:53: Address already in use")
            .context("starting the local node");
        assert_eq!(
            super::describe(&e),
            "starting the local node: the service proxy: cluster DNS on 192.0.2.2:53: Address already in use"
        );
    }
}
