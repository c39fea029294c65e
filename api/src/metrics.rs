//! The resource metrics API's kinds (`metrics.k8s.io/v1beta1`, as metrics-server serves them):
//! what `kubectl top` reads, typed once for the API's answers and the OpenAPI documents.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use schemars::JsonSchema;
use serde::Serialize;

pub const GROUP: &str = "metrics.k8s.io";
pub const VERSION: &str = "v1beta1";

pub const NODE_METRICS: &str = "NodeMetrics";
pub const POD_METRICS: &str = "PodMetrics";

/// The group's resources: (plural, kind, namespaced).
pub const RESOURCES: [(&str, &str, bool); 2] = [("nodes", NODE_METRICS, false), ("pods", POD_METRICS, true)];

/// Resources a usage names: `cpu` (cores) and `memory` (working set bytes).
pub type Usage = BTreeMap<String, Quantity>;

/// A node's resource usage, measured over the window that ends at the timestamp.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(rename = "io.k8s.metrics.pkg.apis.metrics.v1beta1.NodeMetrics")]
pub struct NodeMetrics {
    /// The schema's group and version: `metrics.k8s.io/v1beta1`.
    pub api_version: String,
    /// `NodeMetrics`.
    pub kind: String,
    /// The node's name and labels.
    pub metadata: ObjectMeta,
    /// When the usage was measured: the end of the window.
    pub timestamp: Time,
    /// How long the usage was measured over (a duration such as `10s`).
    pub window: String,
    /// CPU in cores and memory as its working set in bytes.
    pub usage: Usage,
}

/// A pod's resource usage, by container, measured over the window that ends at the timestamp.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(rename = "io.k8s.metrics.pkg.apis.metrics.v1beta1.PodMetrics")]
pub struct PodMetrics {
    /// The schema's group and version: `metrics.k8s.io/v1beta1`.
    pub api_version: String,
    /// `PodMetrics`.
    pub kind: String,
    /// The pod's name, namespace and labels.
    pub metadata: ObjectMeta,
    /// When the usage was measured: the end of the window.
    pub timestamp: Time,
    /// How long the usage was measured over (a duration such as `10s`).
    pub window: String,
    /// Each running container's usage.
    pub containers: Vec<ContainerMetrics>,
}

/// One container's resource usage.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
#[schemars(rename = "io.k8s.metrics.pkg.apis.metrics.v1beta1.ContainerMetrics")]
pub struct ContainerMetrics {
    /// The container's name in the pod's spec.
    pub name: String,
    /// CPU in cores and memory as its working set in bytes.
    pub usage: Usage,
}

impl NodeMetrics {
    pub fn new(metadata: ObjectMeta, timestamp: Time, window: String, usage: Usage) -> NodeMetrics {
        NodeMetrics {
            api_version: format!("{GROUP}/{VERSION}"),
            kind: NODE_METRICS.into(),
            metadata,
            timestamp,
            window,
            usage,
        }
    }
}

impl PodMetrics {
    pub fn new(metadata: ObjectMeta, timestamp: Time, window: String, containers: Vec<ContainerMetrics>) -> PodMetrics {
        PodMetrics {
            api_version: format!("{GROUP}/{VERSION}"),
            kind: POD_METRICS.into(),
            metadata,
            timestamp,
            window,
            containers,
        }
    }
}
