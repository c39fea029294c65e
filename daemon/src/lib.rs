//! Capstan's control plane: the store, the watch cache, the Kubernetes-compatible API server over
//! HTTPS, the Git source and the sync that applies it. `Daemon::start` builds it all from a
//! [`DaemonConfig`] (validated first), runs it in the background, and `shutdown` stops it.

pub mod api;
pub mod audit;
pub mod auth;
pub mod cache;
pub mod context;
pub mod controllers;
pub mod events;
pub mod join;
pub mod kubeconfig;
pub mod kubelet;
pub mod leader;
pub mod nodelogs;
pub mod objects;
pub mod pki;
pub mod priority;
pub mod satoken;
pub mod scheduling;
pub mod sync;
pub mod webhook;
pub mod writeback;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use capstan_git::repo::Location;
use capstan_git::source::SourceConfig;
use capstan_store::{RedbStore, Store};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::auth::{Authenticator, LocalTokens};
use crate::cache::Cache;
use crate::objects::Objects;
use crate::pki::Ca;
use crate::sync::SyncStatus;

/// A source of the nodes' usage summaries other than the node agents.
#[derive(Clone)]
pub struct UsageSource(pub Arc<dyn api::metrics::SummarySource>);

impl std::fmt::Debug for UsageSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UsageSource")
    }
}

/// How the daemon is set up.
#[derive(Clone, Debug)]
pub struct DaemonConfig {
    /// Path or URL of the repository to track.
    pub repo: String,
    pub branch: Option<String>,
    /// Directory inside the repository that holds the manifests.
    pub path: String,
    pub data_dir: PathBuf,
    /// Where the API server listens (port 0: any free port).
    pub listen: SocketAddr,
    /// The address nodes and pods reach the API server at (in its certificate).
    pub advertise: Option<IpAddr>,
    /// More names and addresses for the API server's certificate (`--tls-san`).
    pub tls_sans: Vec<String>,
    /// How often a remote repository is fetched.
    pub poll_interval: Duration,
    /// The history kept for watches; older revisions are compacted away.
    pub history: leader::HistoryWindow,
    /// A node whose Lease is older than this is NotReady.
    pub node_grace: Duration,
    /// Pods on a NotReady node are evicted after this, unless they tolerate longer.
    pub eviction_timeout: Duration,
    /// How long an Event lives after it was last seen (kube-apiserver's --event-ttl).
    pub event_ttl: Duration,
    /// How often an autoscaler looks at its metrics.
    pub autoscaler_period: Duration,
    /// Where pods' resource usage comes from: the node agents when None (a test gives its own).
    pub usage: Option<UsageSource>,
    /// The pod range, split into a /24 per node.
    pub pod_cidr: capstan_api::cidr::Cidr,
    /// How often the status branch and notes are written (at most one commit per interval).
    pub status_interval: Duration,
    /// Revert the tracked branch's tip by a commit when its rollout misses the progress deadline.
    pub revert_failed_rollouts: bool,
    /// The shared secret of `POST /hooks/git`; `None`: no webhook.
    pub webhook_secret: Option<Vec<u8>>,
    /// `--kustomize`: the kustomize that builds the tree's roots; `None`: the one found.
    pub kustomize: Option<PathBuf>,
    /// Where the cluster's objects are kept.
    pub store: StoreChoice,
    /// With several replicas (on etcd): how long a leader that stopped renewing keeps its
    /// leadership, and how often the leader renews it.
    pub leader_lease: Duration,
    pub leader_renew: Duration,
}

/// The leader's lease by default: etcd's shortest with its default election timeout, so a
/// crashed leader is replaced within about 2.5 s.
pub const DEFAULT_LEADER_LEASE: Duration = Duration::from_secs(2);
/// How often the leader renews its lease by default (four times per lease).
pub const DEFAULT_LEADER_RENEW: Duration = Duration::from_millis(500);

/// Where the cluster's objects are kept (`--store`).
#[derive(Clone, Debug, Default)]
pub enum StoreChoice {
    /// The embedded store in `DATA_DIR/store.redb`: one machine.
    #[default]
    Redb,
    /// An etcd cluster, which several control-plane replicas may share.
    #[cfg(feature = "etcd")]
    Etcd(capstan_store::EtcdConfig),
}

impl DaemonConfig {
    pub fn new(repo: impl Into<String>, data_dir: impl Into<PathBuf>) -> DaemonConfig {
        DaemonConfig {
            repo: repo.into(),
            branch: None,
            path: String::new(),
            data_dir: data_dir.into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 6443)),
            advertise: None,
            tls_sans: Vec::new(),
            poll_interval: Duration::from_secs(15),
            history: leader::HistoryWindow::default(),
            node_grace: Duration::from_secs(40),
            eviction_timeout: Duration::from_secs(300),
            event_ttl: context::Settings::default().event_ttl,
            autoscaler_period: context::Settings::default().autoscaler_period,
            usage: None,
            pod_cidr: context::Settings::default().pod_cidr,
            status_interval: Duration::from_secs(3),
            revert_failed_rollouts: false,
            webhook_secret: None,
            kustomize: None,
            store: StoreChoice::Redb,
            leader_lease: DEFAULT_LEADER_LEASE,
            leader_renew: DEFAULT_LEADER_RENEW,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    #[error(transparent)]
    Store(#[from] capstan_store::StoreError),
    #[error(transparent)]
    Cache(#[from] cache::CacheError),
    #[error(transparent)]
    Objects(#[from] objects::ObjectError),
    #[error("listening on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("writing {path}: {source}")]
    Write { path: String, source: std::io::Error },
    #[error("the encryption keys in {path}: {message}")]
    Keyring { path: String, message: String },
    #[error("this replica does not belong to the cluster in the store: {0}")]
    Replica(String),
}

/// The files in a data directory that every control-plane replica of one cluster shares: the
/// cluster CA, the service-account signing key, the keys that seal Secrets, and the tokens.
pub const REPLICA_IDENTITY: [&str; 7] = [
    "pki/ca.crt",
    "pki/ca.key",
    "pki/sa.key",
    ENCRYPTION_KEYS,
    "admin-token",
    "readonly-token",
    "join-secret",
];

/// Copies a replica's identity ([`REPLICA_IDENTITY`]) into another's data directory, before
/// that one's first start.
pub fn copy_replica_identity(from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
    for file in REPLICA_IDENTITY {
        let target = to.join(file);
        if let Some(dir) = target.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::copy(from.join(file), target)?;
    }
    Ok(())
}

/// What the replicas of one cluster must agree on, recorded in the store by the first.
const CLUSTER_KEY: &str = "/capstan/cluster";

/// Records this replica's cluster identity and repository in the store, or, when another
/// replica did, checks that they agree: a replica with another CA would issue credentials the
/// others refuse, and one tracking another repository would fight over desired state.
async fn check_replica(store: &Arc<dyn Store>, ca_hash: &str, config: &DaemonConfig) -> Result<(), DaemonError> {
    use capstan_store::{Compare, Txn};
    let mine = serde_json::json!({
        "caHash": ca_hash,
        "repo": config.repo,
        "branch": config.branch,
        "path": config.path,
    });
    let first = store
        .txn(
            Txn::default()
                .when(Compare::Missing(CLUSTER_KEY.into()))
                .put(CLUSTER_KEY, mine.to_string()),
        )
        .await?;
    if first.succeeded {
        return Ok(());
    }
    let theirs: serde_json::Value = store
        .get(CLUSTER_KEY)?
        .and_then(|kv| serde_json::from_slice(&kv.value).ok())
        .unwrap_or_default();
    if theirs["caHash"] != mine["caHash"] {
        return Err(DaemonError::Replica(format!(
            "its cluster CA ({}/pki/ca.crt, {ca_hash}) is not the cluster's ({}): copy {} from a running replica's data directory before the first start",
            config.data_dir.display(),
            theirs["caHash"].as_str().unwrap_or("?"),
            REPLICA_IDENTITY.join(", ")
        )));
    }
    for (field, flag) in [("repo", "--repo"), ("branch", "--branch"), ("path", "--path")] {
        if theirs[field] != mine[field] {
            return Err(DaemonError::Replica(format!(
                "{flag} is {} here but {} for the cluster's other replicas",
                mine[field], theirs[field]
            )));
        }
    }
    Ok(())
}

/// Where the keys that encrypt Secrets at rest are kept (see [`capstan_store::Keyring`]).
pub const ENCRYPTION_KEYS: &str = "pki/encryption-keys";

/// The store keys whose values are encrypted at rest: Secrets, and the sync's record of the
/// Secrets it applied (which holds their content).
fn sealed_prefixes() -> Vec<String> {
    let secrets = objects::prefix_of(capstan_api::kinds::by_name("secrets").expect("served kind"), None);
    vec![secrets.clone(), format!("{}{secrets}", sync::APPLIED_PREFIX)]
}

/// Opens the store with Secrets encrypted at rest (a keyring is made on first start); values
/// not sealed with the keyring's first key (written before, or with an older key) are sealed
/// again now.
async fn open_store(data: &std::path::Path, choice: &StoreChoice) -> Result<(Arc<dyn Store>, Option<EtcdHandle>), DaemonError> {
    let (raw, etcd): (Arc<dyn Store>, Option<EtcdHandle>) = match choice {
        StoreChoice::Redb => (Arc::new(RedbStore::open(&data.join("store.redb"))?), None),
        #[cfg(feature = "etcd")]
        StoreChoice::Etcd(config) => {
            let etcd = capstan_store::EtcdStore::open(config.clone()).await?;
            (Arc::new(etcd.clone()), Some(etcd))
        }
    };
    let path = data.join(ENCRYPTION_KEYS);
    if !path.exists() {
        pki::write_private(&path, &capstan_store::Keyring::generate("key1"))?;
    }
    let text = std::fs::read_to_string(&path).map_err(|source| DaemonError::Write {
        path: path.display().to_string(),
        source,
    })?;
    let keyring = capstan_store::Keyring::parse(&text).map_err(|e| DaemonError::Keyring {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    let primary = keyring.primary().to_owned();
    let store = capstan_store::EncryptedStore::new(raw, keyring, sealed_prefixes());
    let resealed = store.reseal().await?;
    if resealed > 0 {
        tracing::info!(key = %primary, values = resealed, "encrypted Secrets at rest with the keyring's first key");
    }
    Ok((Arc::new(store), etcd))
}

/// The etcd store itself, for the election (the daemon's store wraps it).
#[cfg(feature = "etcd")]
type EtcdHandle = capstan_store::EtcdStore;
#[cfg(not(feature = "etcd"))]
type EtcdHandle = std::convert::Infallible;

/// A running control plane.
pub struct Daemon {
    pub store: Arc<dyn Store>,
    pub objects: Objects,
    pub cache: Arc<Cache>,
    pub auth: Arc<Authenticator>,
    pub ca: Arc<Ca>,
    /// The address the API server actually listens on.
    pub api_addr: SocketAddr,
    url: String,
    pub kubeconfig: PathBuf,
    pub node_token: PathBuf,
    pub sync_status: watch::Receiver<SyncStatus>,
    /// The running term's Git source, while this replica leads.
    pub source: webhook::TriggerSlot,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Daemon({})", self.api_addr)
    }
}

impl Daemon {
    /// Starts everything and returns once the API server listens.
    pub async fn start(config: DaemonConfig) -> Result<Daemon, DaemonError> {
        let data = &config.data_dir;
        std::fs::create_dir_all(data).map_err(|source| DaemonError::Write {
            path: data.display().to_string(),
            source,
        })?;
        // Tokens, keys and the store live here: the daemon's user alone may enter.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(data, std::fs::Permissions::from_mode(0o700)).map_err(|source| DaemonError::Write {
                path: data.display().to_string(),
                source,
            })?;
        }
        let (store, etcd) = open_store(data, &config.store).await?;
        let ca = Arc::new(Ca::load_or_create(&data.join("pki"))?);
        if etcd.is_some() {
            check_replica(&store, &ca.hash(), &config).await?;
        }
        let tokens = LocalTokens::load_or_create(data)?;
        let auth = Arc::new(Authenticator::new(&tokens, store.clone())?);
        let objects = Objects::new(store.clone());
        let cache = Cache::start(store.clone()).await?;
        let signer = Arc::new(satoken::Signer::load_or_create(&data.join("pki"))?);
        auth.set_service_account_verifier(auth::service_account_verifier(signer.clone(), cache.clone()));

        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| DaemonError::Listen {
                addr: config.listen,
                source,
            })?;
        let api_addr = listener.local_addr().map_err(|source| DaemonError::Listen {
            addr: config.listen,
            source,
        })?;
        // Listening on every interface: clients, and pods through the `kubernetes` Service, reach
        // the API at the host's own address.
        let advertise = config.advertise.unwrap_or(match api_addr.ip() {
            ip if ip.is_unspecified() => capstan_runtime::https::default_ip(),
            ip => ip,
        });
        let serving = ca.apiserver_cert(advertise, IpAddr::from([10, 96, 0, 1]), &config.tls_sans)?;
        let tls = pki::server_config(&serving, &ca.cert_pem)?;
        let server_url = format!("https://{}:{}", advertise, api_addr.port());

        let kubeconfig = data.join("kubeconfig");
        kubeconfig::write(&kubeconfig, &server_url, &ca.cert_pem, &tokens.admin, "capstan-admin")?;
        kubeconfig::write(
            &data.join("kubeconfig-readonly"),
            &server_url,
            &ca.cert_pem,
            &tokens.read_only,
            "capstan-viewer",
        )?;
        let node_token = data.join("node-token");
        pki::write_private(&node_token, &format!("{}::{}\n", ca.hash(), tokens.join_secret))?;

        let location = Location::parse(&config.repo);
        // The sync status the API and `up` read, whichever term of leadership feeds it.
        let (sync_feed, sync_status) = watch::channel(sync::stored_status(store.as_ref())?);
        let trigger: webhook::TriggerSlot = Arc::default();
        let shutdown = CancellationToken::new();
        let mut tasks = Vec::new();

        let mut source_config = SourceConfig::new(location.clone(), data.clone());
        source_config.branch = config.branch.clone();
        source_config.subpath = config.path.clone();
        source_config.poll_interval = config.poll_interval;
        source_config.kustomize = config.kustomize.clone();
        let target = match &location {
            Location::Local(path) => writeback::Target {
                path: path.clone(),
                push_to: None,
            },
            Location::Remote(url) => writeback::Target {
                path: capstan_git::repo::mirror_dir(data, url),
                push_to: Some(url.clone()),
            },
        };

        tasks.push(tokio::spawn(auth.clone().follow_credentials(shutdown.clone())));
        let rbac = auth::Rbac::new(&cache);
        tasks.push(tokio::spawn(rbac.clone().follow(cache.clone(), objects.clone(), shutdown.clone())));
        let kubelets = kubelet::KubeletClient::new(&ca, cache.clone())?;
        let usage: Arc<dyn api::metrics::SummarySource> = match &config.usage {
            Some(source) => source.0.clone(),
            None => Arc::new(kubelets.clone()),
        };
        let state = Arc::new(api::ApiState {
            objects: objects.clone(),
            cache: cache.clone(),
            auth: auth.clone(),
            rbac,
            ca: ca.clone(),
            git: api::GitInfo {
                repo: location.describe(),
                branch: config.branch.clone().unwrap_or_default(),
                path: config.path.clone(),
            },
            server_address: format!("{}:{}", advertise, api_addr.port()),
            join: Some(Arc::new(join::Joiner {
                auth: auth.clone(),
                ca: ca.clone(),
            })),
            logs: Some(Arc::new(nodelogs::NodeLogs::new(kubelets.clone()))),
            kubelets: Some(kubelets.clone()),
            metrics: Some(usage.clone()),
            tokens: Some(signer.clone()),
            sync: Some(sync_status.clone()),
            extra: config
                .webhook_secret
                .clone()
                .map(|secret| webhook::routes(secret, trigger.clone(), store.clone())),
            audit: Some(Arc::new(audit::AuditLog::new(&data.join("audit.log")))),
        });
        let router = api::router(state);
        tasks.push(tokio::spawn(capstan_runtime::https::serve(listener, tls, router, shutdown.clone())));

        let api_ip = match advertise {
            IpAddr::V4(v4) => v4,
            IpAddr::V6(_) => std::net::Ipv4Addr::LOCALHOST,
        };
        let settings = context::Settings {
            node_grace: config.node_grace,
            eviction_timeout: config.eviction_timeout,
            event_ttl: config.event_ttl,
            autoscaler_period: config.autoscaler_period,
            api_endpoint: (api_ip, api_addr.port()),
            pod_cidr: config.pod_cidr,
            root_ca: ca.cert_pem.clone(),
            ..context::Settings::default()
        };
        let singletons = leader::Singletons {
            objects: objects.clone(),
            cache: cache.clone(),
            source: source_config,
            target,
            status_interval: config.status_interval,
            revert_failed_rollouts: config.revert_failed_rollouts,
            settings,
            metrics: usage,
            history: config.history,
            sync_status: sync_feed,
            trigger: trigger.clone(),
            store_name: match &config.store {
                StoreChoice::Redb => "redb".to_owned(),
                #[cfg(feature = "etcd")]
                StoreChoice::Etcd(c) => format!("etcd://{}", c.describe()),
            },
        };
        #[cfg(feature = "etcd")]
        if let Some(etcd) = &etcd {
            // Every replica shows itself while it runs (`capstan status` lists them).
            let presence = serde_json::json!({"api": server_url, "since": jiff::Timestamp::now().to_string()});
            let (etcd, key, stop) = (
                etcd.clone(),
                format!("{}{server_url}", capstan_store::REPLICAS_PREFIX),
                shutdown.clone(),
            );
            let (ttl, renew) = (config.leader_lease, config.leader_renew);
            tasks.push(tokio::spawn(async move {
                etcd.announce(&key, presence.to_string(), ttl, renew, stop).await
            }));
        }
        let election = match etcd {
            None => leader::Election::Sole,
            #[cfg(feature = "etcd")]
            Some(etcd) => leader::Election::Etcd(
                etcd,
                capstan_store::election::ElectionConfig {
                    identity: server_url.clone(),
                    lease: config.leader_lease,
                    renew: config.leader_renew,
                },
            ),
            #[cfg(not(feature = "etcd"))]
            Some(never) => match never {},
        };
        tasks.push(tokio::spawn(leader::run(singletons, election, shutdown.clone())));
        tracing::info!(api = %server_url, kubeconfig = %kubeconfig.display(), repo = %location.describe(), "capstan daemon started");
        Ok(Daemon {
            store,
            objects,
            cache,
            auth,
            ca,
            api_addr,
            url: server_url,
            kubeconfig,
            node_token,
            sync_status,
            source: trigger,
            shutdown,
            tasks,
        })
    }

    /// The API server's URL at its advertised address (what kubeconfigs and nodes use).
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// Waits until the sync has applied a commit for which `done` holds (bounded by `timeout`).
    pub async fn wait_for_sync(&self, timeout: Duration, done: impl Fn(&SyncStatus) -> bool) -> Option<SyncStatus> {
        let mut rx = self.sync_status.clone();
        tokio::time::timeout(timeout, rx.wait_for(|s| done(s)))
            .await
            .ok()
            .and_then(|r| r.ok().map(|s| s.clone()))
    }

    /// Stops every task and waits for them.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
    }
}
