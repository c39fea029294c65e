//! Capstan's own kinds (`capstan.dev/v1alpha1`), defined kube-derive style so that they carry a
//! JSON Schema and a CustomResourceDefinition like any Kubernetes extension kind.

use kube_derive::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The group of Capstan's own kinds.
pub const GROUP: &str = "capstan.dev";

/// Cluster-wide settings kept in the repository next to the workloads, so that changing them is
/// a reviewed commit like any other change. At most one object of this kind may exist; every
/// field is optional and falls back to the documented default.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "capstan.dev",
    version = "v1alpha1",
    kind = "ClusterSettings",
    plural = "clustersettings",
    shortname = "settings",
    crates(kube_core = "::kube_core"),
    printcolumn = r#"{"name":"Service CIDR","type":"string","jsonPath":".spec.serviceCIDR"}"#,
    printcolumn = r#"{"name":"Prune","type":"boolean","jsonPath":".spec.prune"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterSettingsSpec {
    /// Range that Service ClusterIPs are allocated from. Default 10.96.0.0/16.
    #[serde(default, rename = "serviceCIDR", skip_serializing_if = "Option::is_none")]
    pub service_cidr: Option<String>,
    /// Range that each node's pod subnet (a /24) is carved from. Default 10.244.0.0/16.
    #[serde(default, rename = "podCIDR", skip_serializing_if = "Option::is_none")]
    pub pod_cidr: Option<String>,
    /// Seconds without a Lease renewal after which a node is marked NotReady. Default 40.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_grace_period_seconds: Option<u32>,
    /// Seconds that pods stay bound to a NotReady node before they are evicted, unless their own
    /// tolerations say otherwise. Default 300, as in Kubernetes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_eviction_timeout_seconds: Option<u32>,
    /// Whether objects removed from the repository are deleted from the cluster. Default true.
    /// With false, removed objects are reported and left running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prune: Option<bool>,
    /// The largest share (percent) of the applied objects one commit may prune. A commit that
    /// would prune more (and at least 10 objects) prunes nothing and is reported, until a commit
    /// raises the limit: a mistyped path or a bad merge must not empty the cluster. Default 50;
    /// 100 turns the check off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prune_limit_percent: Option<u32>,
    /// Whether Capstan reverts, with a commit of its own, a commit whose rollout missed its
    /// progress deadline. Default false: the failure is only reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revert_failed_rollouts: Option<bool>,
}

impl ClusterSettingsSpec {
    pub const DEFAULT_SERVICE_CIDR: &'static str = "10.96.0.0/16";
    pub const DEFAULT_POD_CIDR: &'static str = "10.244.0.0/16";
    pub const DEFAULT_NODE_GRACE_PERIOD_SECONDS: u32 = 40;
    pub const DEFAULT_POD_EVICTION_TIMEOUT_SECONDS: u32 = 300;
    pub const DEFAULT_PRUNE_LIMIT_PERCENT: u32 = 50;

    pub fn service_cidr(&self) -> &str {
        self.service_cidr.as_deref().unwrap_or(Self::DEFAULT_SERVICE_CIDR)
    }

    pub fn pod_cidr(&self) -> &str {
        self.pod_cidr.as_deref().unwrap_or(Self::DEFAULT_POD_CIDR)
    }

    pub fn node_grace_period_seconds(&self) -> u32 {
        self.node_grace_period_seconds.unwrap_or(Self::DEFAULT_NODE_GRACE_PERIOD_SECONDS)
    }

    pub fn pod_eviction_timeout_seconds(&self) -> u32 {
        self.pod_eviction_timeout_seconds
            .unwrap_or(Self::DEFAULT_POD_EVICTION_TIMEOUT_SECONDS)
    }

    pub fn prune(&self) -> bool {
        self.prune.unwrap_or(true)
    }

    pub fn prune_limit_percent(&self) -> u32 {
        self.prune_limit_percent.unwrap_or(Self::DEFAULT_PRUNE_LIMIT_PERCENT).min(100)
    }

    pub fn revert_failed_rollouts(&self) -> bool {
        self.revert_failed_rollouts.unwrap_or(false)
    }
}
