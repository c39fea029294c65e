//! The registry of kinds Capstan knows: group, version, kind, plural, scope, short names, where
//! objects of the kind come from, and how to check an object against its Rust type.
//!
//! The manifest loader, the API server (discovery, routing) and the CLI all read this one table.

use k8s_openapi::api::{apps, autoscaling, batch, coordination, core, discovery, networking, policy, rbac, scheduling, storage};
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::de::DeserializeOwned;

use crate::capstan::ClusterSettings;

/// Where objects of a kind come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Desired state: declared in the Git repository. The API refuses to write it (the commit is
    /// the way to change it), although controllers may create objects of the kind (ReplicaSets of
    /// a Deployment, Pods of a ReplicaSet).
    Git,
    /// Observed state: written only by Capstan's own components (nodes, leases, endpoints,
    /// events). A manifest of such a kind is an error.
    Cluster,
}

/// One kind: its names, scope, origin, and type-level operations.
#[derive(Clone, Copy)]
pub struct KindInfo {
    /// API group; empty for the core group.
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    /// Lower-case plural, the URL path segment.
    pub plural: &'static str,
    /// Lower-case singular, as kubectl accepts it.
    pub singular: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    /// Categories for `kubectl get all`.
    pub categories: &'static [&'static str],
    pub origin: Origin,
    /// Whether the kind has a `/status` subresource.
    pub has_status: bool,
    schema: fn(SchemaGenerator) -> Schema,
    check: fn(&serde_json::Value) -> Result<(), TypeError>,
}

impl std::fmt::Debug for KindInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.api_version(), self.kind)
    }
}

/// An object that is well-formed JSON but does not decode into its kind's Rust type.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct TypeError {
    /// Dotted field path, e.g. `spec.template.spec.containers[0].ports[1].containerPort`.
    pub path: String,
    pub message: String,
}

impl KindInfo {
    /// Whether the kind's values are secret (the core Secret): never shown in messages, plans,
    /// logs or Git, and encrypted at rest.
    pub fn is_secret(&self) -> bool {
        is_secret(self.group, self.kind)
    }

    /// Whether the kind has a `/scale` subresource (an `autoscaling/v1` Scale).
    pub fn has_scale(&self) -> bool {
        self.group == "apps" && SCALABLE.contains(&self.kind)
    }

    /// `deployments.apps` or `pods`: how Kubernetes names a resource in messages.
    pub fn resource(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_owned()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// `group/version`, or just `version` for the core group.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The kind's standalone JSON Schema (definitions included), as `generator` lays it out.
    pub fn schema(&self, generator: SchemaGenerator) -> Schema {
        (self.schema)(generator)
    }

    /// The function that makes [`Self::schema`].
    pub fn schema_fn(&self) -> fn(SchemaGenerator) -> Schema {
        self.schema
    }

    /// Decodes `object` into the kind's Rust type; the error names the field that failed.
    pub fn check(&self, object: &serde_json::Value) -> Result<(), TypeError> {
        (self.check)(object)
    }

    /// Whether `name` (as a user or kubectl spells a resource) names this kind: plural,
    /// singular, kind, or a short name, optionally qualified with the group.
    pub fn matches_name(&self, name: &str) -> bool {
        let (name, group) = match name.split_once('.') {
            Some((n, g)) => (n, Some(g)),
            None => (name, None),
        };
        if group.is_some_and(|g| g != self.group) {
            return false;
        }
        let lower = name.to_ascii_lowercase();
        lower == self.plural
            || lower == self.singular
            || lower == self.kind.to_ascii_lowercase()
            || self.short_names.contains(&lower.as_str())
    }
}

fn schema_of<T: JsonSchema>(generator: SchemaGenerator) -> Schema {
    generator.into_root_schema_for::<T>()
}

/// Our own kinds' schemas: kube-derive leaves `metadata` out of the root (a CRD's metadata is
/// the API server's business), but a manifest must have one, so it is added here.
fn own_schema_of<T: JsonSchema>(mut generator: SchemaGenerator) -> Schema {
    let metadata = generator.subschema_for::<k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>();
    let mut root = generator.into_root_schema_for::<T>();
    if let Some(props) = root.get_mut("properties").and_then(|p| p.as_object_mut()) {
        props.insert("metadata".into(), metadata.to_value());
    }
    root
}

fn check_as<T: DeserializeOwned>(object: &serde_json::Value) -> Result<(), TypeError> {
    serde_path_to_error::deserialize::<_, T>(object).map(|_| ()).map_err(|e| TypeError {
        path: e.path().to_string(),
        message: e.inner().to_string(),
    })
}

/// Builds a registry entry for a k8s-openapi type, taking names and scope from its
/// `k8s_openapi::Resource` implementation.
macro_rules! k8s_kind {
    ($ty:ty, singular: $singular:literal, short: [$($short:literal),*], categories: [$($cat:literal),*],
     origin: $origin:ident, status: $status:literal, namespaced: $ns:literal) => {
        KindInfo {
            group: <$ty as k8s_openapi::Resource>::GROUP,
            version: <$ty as k8s_openapi::Resource>::VERSION,
            kind: <$ty as k8s_openapi::Resource>::KIND,
            plural: <$ty as k8s_openapi::Resource>::URL_PATH_SEGMENT,
            singular: $singular,
            namespaced: $ns,
            short_names: &[$($short),*],
            categories: &[$($cat),*],
            origin: Origin::$origin,
            has_status: $status,
            schema: schema_of::<$ty>,
            check: check_as::<$ty>,
        }
    };
}

/// Builds a registry entry for a Gateway API kind (our kube-derive types).
macro_rules! gateway_kind {
    ($ty:ident, $version:literal, $plural:literal, $singular:literal, [$($short:literal),*], namespaced: $ns:literal, status: $status:literal) => {
        KindInfo {
            group: crate::gateway::GROUP,
            version: $version,
            kind: stringify!($ty),
            plural: $plural,
            singular: $singular,
            namespaced: $ns,
            short_names: &[$($short),*],
            categories: &["gateway-api"],
            origin: Origin::Git,
            has_status: $status,
            schema: own_schema_of::<crate::gateway::$ty>,
            check: check_as::<crate::gateway::$ty>,
        }
    };
}

/// Every kind Capstan serves, in the order discovery lists them.
pub static REGISTRY: &[KindInfo] = &[
    k8s_kind!(core::v1::Namespace, singular: "namespace", short: ["ns"], categories: [],
        origin: Git, status: true, namespaced: false),
    k8s_kind!(core::v1::Node, singular: "node", short: ["no"], categories: [],
        origin: Cluster, status: true, namespaced: false),
    k8s_kind!(core::v1::Pod, singular: "pod", short: ["po"], categories: ["all"],
        origin: Git, status: true, namespaced: true),
    k8s_kind!(core::v1::Service, singular: "service", short: ["svc"], categories: ["all"],
        origin: Git, status: true, namespaced: true),
    k8s_kind!(core::v1::Endpoints, singular: "endpoints", short: ["ep"], categories: [],
        origin: Cluster, status: false, namespaced: true),
    k8s_kind!(core::v1::ConfigMap, singular: "configmap", short: ["cm"], categories: [],
        origin: Git, status: false, namespaced: true),
    k8s_kind!(core::v1::Secret, singular: "secret", short: [], categories: [],
        origin: Git, status: false, namespaced: true),
    k8s_kind!(core::v1::ServiceAccount, singular: "serviceaccount", short: ["sa"], categories: [],
        origin: Git, status: false, namespaced: true),
    k8s_kind!(core::v1::ResourceQuota, singular: "resourcequota", short: ["quota"], categories: [],
        origin: Git, status: true, namespaced: true),
    k8s_kind!(core::v1::PersistentVolumeClaim, singular: "persistentvolumeclaim", short: ["pvc"], categories: [],
        origin: Git, status: true, namespaced: true),
    k8s_kind!(core::v1::PersistentVolume, singular: "persistentvolume", short: ["pv"], categories: [],
        origin: Git, status: true, namespaced: false),
    k8s_kind!(core::v1::Event, singular: "event", short: ["ev"], categories: [],
        origin: Cluster, status: false, namespaced: true),
    k8s_kind!(apps::v1::Deployment, singular: "deployment", short: ["deploy"], categories: ["all"],
        origin: Git, status: true, namespaced: true),
    k8s_kind!(apps::v1::ReplicaSet, singular: "replicaset", short: ["rs"], categories: ["all"],
        origin: Git, status: true, namespaced: true),
    k8s_kind!(apps::v1::DaemonSet, singular: "daemonset", short: ["ds"], categories: ["all"],
        origin: Git, status: true, namespaced: true),
    k8s_kind!(apps::v1::StatefulSet, singular: "statefulset", short: ["sts"], categories: ["all"],
        origin: Git, status: true, namespaced: true),
    k8s_kind!(apps::v1::ControllerRevision, singular: "controllerrevision", short: [], categories: [],
        origin: Cluster, status: false, namespaced: true),
    k8s_kind!(batch::v1::Job, singular: "job", short: [], categories: ["all"],
        origin: Git, status: true, namespaced: true),
    k8s_kind!(batch::v1::CronJob, singular: "cronjob", short: ["cj"], categories: ["all"],
        origin: Git, status: true, namespaced: true),
    k8s_kind!(autoscaling::v2::HorizontalPodAutoscaler, singular: "horizontalpodautoscaler", short: ["hpa"], categories: ["all"],
        origin: Git, status: true, namespaced: true),
    k8s_kind!(policy::v1::PodDisruptionBudget, singular: "poddisruptionbudget", short: ["pdb"], categories: [],
        origin: Git, status: true, namespaced: true),
    k8s_kind!(networking::v1::Ingress, singular: "ingress", short: ["ing"], categories: [],
        origin: Git, status: true, namespaced: true),
    k8s_kind!(networking::v1::IngressClass, singular: "ingressclass", short: [], categories: [],
        origin: Git, status: false, namespaced: false),
    k8s_kind!(networking::v1::NetworkPolicy, singular: "networkpolicy", short: ["netpol"], categories: [],
        origin: Git, status: false, namespaced: true),
    k8s_kind!(discovery::v1::EndpointSlice, singular: "endpointslice", short: [], categories: [],
        origin: Cluster, status: false, namespaced: true),
    k8s_kind!(coordination::v1::Lease, singular: "lease", short: [], categories: [],
        origin: Cluster, status: false, namespaced: true),
    k8s_kind!(storage::v1::StorageClass, singular: "storageclass", short: ["sc"], categories: [],
        origin: Git, status: false, namespaced: false),
    k8s_kind!(scheduling::v1::PriorityClass, singular: "priorityclass", short: ["pc"], categories: [],
        origin: Git, status: false, namespaced: false),
    k8s_kind!(rbac::v1::ClusterRole, singular: "clusterrole", short: [], categories: [],
        origin: Git, status: false, namespaced: false),
    k8s_kind!(rbac::v1::ClusterRoleBinding, singular: "clusterrolebinding", short: [], categories: [],
        origin: Git, status: false, namespaced: false),
    k8s_kind!(rbac::v1::Role, singular: "role", short: [], categories: [],
        origin: Git, status: false, namespaced: true),
    k8s_kind!(rbac::v1::RoleBinding, singular: "rolebinding", short: [], categories: [],
        origin: Git, status: false, namespaced: true),
    gateway_kind!(GatewayClass, "v1", "gatewayclasses", "gatewayclass", ["gc"], namespaced: false, status: true),
    gateway_kind!(Gateway, "v1", "gateways", "gateway", ["gtw"], namespaced: true, status: true),
    gateway_kind!(HTTPRoute, "v1", "httproutes", "httproute", [], namespaced: true, status: true),
    gateway_kind!(ReferenceGrant, "v1beta1", "referencegrants", "referencegrant", ["refgrant"], namespaced: true, status: false),
    KindInfo {
        group: crate::capstan::GROUP,
        version: "v1alpha1",
        kind: "ClusterSettings",
        plural: "clustersettings",
        singular: "clustersettings",
        namespaced: false,
        short_names: &["settings"],
        categories: &[],
        origin: Origin::Git,
        has_status: false,
        schema: own_schema_of::<ClusterSettings>,
        check: check_as::<ClusterSettings>,
    },
];

/// A kind read from Git in an older version and kept in the version served: the manifest is
/// checked against the version it was written in, then upgraded.
pub struct OlderVersion {
    /// The kind as written (its schema and type check the manifest).
    pub written: KindInfo,
    /// The `apiVersion` it is served as.
    pub served_as: &'static str,
    /// Rewrites an object of the written version into the served one.
    pub upgrade: fn(&mut serde_json::Value),
}

impl OlderVersion {
    pub fn served(&self) -> &'static KindInfo {
        by_api_version(self.served_as, self.written.kind).expect("older versions upgrade to served kinds")
    }
}

/// `autoscaling/v1`'s one CPU target becomes v2's metric list.
fn autoscaling_v1_to_v2(object: &mut serde_json::Value) {
    object["apiVersion"] = serde_json::json!("autoscaling/v2");
    if let Some(spec) = object.get_mut("spec").and_then(serde_json::Value::as_object_mut) {
        let pct = spec.remove("targetCPUUtilizationPercentage").and_then(|v| v.as_i64()).unwrap_or(80);
        spec.insert(
            "metrics".into(),
            serde_json::json!([{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": pct}}}]),
        );
    }
}

/// The older versions Capstan reads (and serves only in their newer form).
pub static OLDER: &[OlderVersion] = &[OlderVersion {
    written: k8s_kind!(autoscaling::v1::HorizontalPodAutoscaler, singular: "horizontalpodautoscaler", short: ["hpa"], categories: ["all"],
        origin: Git, status: true, namespaced: true),
    served_as: "autoscaling/v2",
    upgrade: autoscaling_v1_to_v2,
}];

/// An older version of a kind by its group, version and plural, as an API path names it.
pub fn older_by_plural(group: &str, version: &str, plural: &str) -> Option<&'static OlderVersion> {
    OLDER
        .iter()
        .find(|o| o.written.group == group && o.written.version == version && o.written.plural == plural)
}

/// An older version of a kind, as written in a manifest.
pub fn older(api_version: &str, kind: &str) -> Option<&'static OlderVersion> {
    let (group, version) = split_api_version(api_version);
    OLDER
        .iter()
        .find(|o| o.written.group == group && o.written.version == version && o.written.kind == kind)
}

/// The kinds with a `scale` subresource, all in `apps`: what an autoscaler (or `kubectl scale`)
/// can scale.
pub const SCALABLE: [&str; 3] = ["Deployment", "ReplicaSet", "StatefulSet"];

/// Whether objects of `group`/`kind` hold secret values; see [`KindInfo::is_secret`].
pub fn is_secret(group: &str, kind: &str) -> bool {
    group.is_empty() && kind == "Secret"
}

/// Looks a kind up by `apiVersion` and `kind`, as written in a manifest.
pub fn by_api_version(api_version: &str, kind: &str) -> Option<&'static KindInfo> {
    let (group, version) = split_api_version(api_version);
    REGISTRY.iter().find(|k| k.group == group && k.version == version && k.kind == kind)
}

/// Looks a kind up by group and `kind` only (any version).
pub fn by_group_kind(group: &str, kind: &str) -> Option<&'static KindInfo> {
    REGISTRY.iter().find(|k| k.group == group && k.kind == kind)
}

/// Looks a kind up by group and plural, as in an API path.
pub fn by_plural(group: &str, plural: &str) -> Option<&'static KindInfo> {
    REGISTRY.iter().find(|k| k.group == group && k.plural == plural)
}

/// Looks a kind up by a name kubectl or a user might type (`po`, `pods`, `deployment.apps`).
pub fn by_name(name: &str) -> Option<&'static KindInfo> {
    REGISTRY.iter().find(|k| k.matches_name(name))
}

/// Any kind with this `kind` field, whatever its group; used to suggest the right apiVersion.
pub fn by_kind(kind: &str) -> Option<&'static KindInfo> {
    REGISTRY.iter().find(|k| k.kind == kind)
}

/// Splits `apps/v1` into (`apps`, `v1`) and `v1` into (``, `v1`).
pub fn split_api_version(api_version: &str) -> (&str, &str) {
    match api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_resolve_like_kubectl() {
        assert_eq!(by_name("po").unwrap().kind, "Pod");
        assert_eq!(by_name("deployments.apps").unwrap().kind, "Deployment");
        assert_eq!(by_name("svc").unwrap().kind, "Service");
        assert_eq!(by_name("Settings").unwrap().kind, "ClusterSettings");
        assert!(by_name("deployments.batch").is_none());
    }

    #[test]
    fn registry_is_consistent() {
        for k in REGISTRY {
            assert_eq!(by_api_version(&k.api_version(), k.kind).unwrap().kind, k.kind);
            assert_eq!(by_plural(k.group, k.plural).unwrap().kind, k.kind);
        }
        assert!(!by_api_version("v1", "Namespace").unwrap().namespaced);
        assert!(by_api_version("apps/v1", "Deployment").unwrap().namespaced);
        assert_eq!(by_api_version("apps/v1", "Deployment").unwrap().plural, "deployments");
    }

    #[test]
    fn check_names_the_failing_field() {
        let pod = serde_json::json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"},
            "spec": {"containers": [{"name": "c", "ports": [{"containerPort": "eighty"}]}]}
        });
        let err = by_name("pod").unwrap().check(&pod).unwrap_err();
        assert_eq!(err.path, "spec.containers[0].ports[0].containerPort");
    }
}
