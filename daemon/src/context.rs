//! What every reconcile loop of the daemon shares (the controllers, the scheduling loop, the
//! sync): the object store, the watch cache, and the cluster settings in force.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use capstan_api::KindInfo;
use capstan_api::cidr::Cidr;

use crate::cache::Cache;
use crate::objects::Objects;

/// Cluster settings the controllers follow (from ClusterSettings in Git, or defaults).
#[derive(Clone, Debug)]
pub struct Settings {
    pub service_cidr: Cidr,
    pub pod_cidr: Cidr,
    /// A node whose Lease is older than this is NotReady.
    pub node_grace: Duration,
    /// Pods on a NotReady node are evicted after this, unless they tolerate longer.
    pub eviction_timeout: Duration,
    /// Where the `kubernetes` Service's endpoints point.
    pub api_endpoint: (Ipv4Addr, u16),
    /// The cluster CA (PEM), published in every namespace as ConfigMap `kube-root-ca.crt`.
    pub root_ca: String,
    /// How long an Event lives after it was last seen.
    pub event_ttl: Duration,
    /// How often an autoscaler looks at its metrics.
    pub autoscaler_period: Duration,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            service_cidr: capstan_api::cidr::SERVICE_RANGE,
            pod_cidr: capstan_api::cidr::POD_RANGE,
            node_grace: Duration::from_secs(40),
            eviction_timeout: Duration::from_secs(300),
            api_endpoint: (Ipv4Addr::LOCALHOST, 6443),
            root_ca: String::new(),
            event_ttl: Duration::from_secs(3600),
            autoscaler_period: Duration::from_secs(15),
        }
    }
}

/// The settings in force: `flags`, overridden by the ClusterSettings in `cache` (see
/// [`Context::live`]).
fn live(flags: &Settings, cache: &Cache) -> Settings {
    let mut s = flags.clone();
    if let Some(git) = cluster_settings(cache) {
        if let Some(secs) = git.node_grace_period_seconds {
            s.node_grace = Duration::from_secs(secs.into());
        }
        if let Some(secs) = git.pod_eviction_timeout_seconds {
            s.eviction_timeout = Duration::from_secs(secs.into());
        }
    }
    s
}

/// What every controller gets.
#[derive(Clone)]
pub struct Context {
    pub objects: Objects,
    pub cache: Arc<Cache>,
    pub settings: Arc<Settings>,
    /// Held across a quota check and the create it admits, so that two creates cannot both
    /// fit under the same last unit of quota.
    pub admission: Arc<tokio::sync::Mutex<()>>,
    /// The node agents' usage summaries (for the autoscaler), where agents can be asked.
    pub metrics: Option<Arc<dyn crate::api::metrics::SummarySource>>,
}

impl Context {
    pub fn new(objects: Objects, cache: Arc<Cache>, settings: Settings) -> Context {
        let settings = Arc::new(settings);
        let (c, s) = (cache.clone(), settings.clone());
        objects.admit_pods_with(Box::new(move || {
            u32::try_from(live(&s, &c).eviction_timeout.as_secs()).unwrap_or(u32::MAX)
        }));
        Context {
            objects,
            cache,
            settings,
            admission: Arc::new(tokio::sync::Mutex::new(())),
            metrics: None,
        }
    }

    /// The same, with the node agents' usage summaries to read.
    pub fn with_metrics(mut self, metrics: Arc<dyn crate::api::metrics::SummarySource>) -> Context {
        self.metrics = Some(metrics);
        self
    }
}

/// The ClusterSettings object from Git, if the repository has one.
pub fn cluster_settings(cache: &Cache) -> Option<capstan_api::capstan::ClusterSettingsSpec> {
    let (all, _) = cache.list(kind("clustersettings"), None);
    all.first().and_then(|e| serde_json::from_value(e.object["spec"].clone()).ok())
}

impl Context {
    /// The settings in force now: the ones the daemon started with, overridden by what the
    /// repository's ClusterSettings says about node grace and eviction (read live, so that a
    /// commit changes them). Address ranges are taken at start only: changing them under running
    /// Services and nodes would renumber them.
    pub fn live(&self) -> Settings {
        live(&self.settings, &self.cache)
    }

    /// Waits until the cache reflects every write made so far, so that a reconcile never acts on
    /// a state older than its own previous writes (this is what keeps a ReplicaSet from
    /// creating a pod twice).
    pub async fn caught_up(&self) {
        self.cache.wait_for(self.objects.store().revision()).await;
    }
}

/// The registry entry of a plural that is known to be served.
pub fn kind(plural: &str) -> &'static KindInfo {
    capstan_api::kinds::REGISTRY
        .iter()
        .find(|k| k.plural == plural)
        .expect("the plural is served")
}
