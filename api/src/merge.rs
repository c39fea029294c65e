//! How the lists of the built-in kinds merge in a strategic merge patch — their `patchMergeKey`
//! and `patchStrategy`, by field name — for the API server's patches and the OpenAPI documents
//! kubectl computes its patches from.

/// How a list field merges: on the key of its elements, as a set of values, or not at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListMerge {
    Key(&'static str),
    Primitives,
    Replace,
}

/// The merge of list `field`; `container_ports` tells a container's ports (keyed on
/// `containerPort`) from a Service's (on `port`).
pub fn list_merge(field: &str, container_ports: bool) -> ListMerge {
    match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "imagePullSecrets"
        | "env"
        | "resourceClaims"
        | "schedulingGates" => ListMerge::Key("name"),
        "ports" if container_ports => ListMerge::Key("containerPort"),
        "ports" => ListMerge::Key("port"),
        "volumeMounts" => ListMerge::Key("mountPath"),
        "volumeDevices" => ListMerge::Key("devicePath"),
        "hostAliases" => ListMerge::Key("ip"),
        "topologySpreadConstraints" => ListMerge::Key("topologyKey"),
        "ownerReferences" => ListMerge::Key("uid"),
        "conditions" => ListMerge::Key("type"),
        "finalizers" => ListMerge::Primitives,
        _ => ListMerge::Replace,
    }
}

/// The `x-kubernetes-patch-strategy` of a list that does not replace: volumes also retain
/// only the keys of the source a patch names (`$retainKeys`), so switching a volume's source
/// drops the old one.
pub fn patch_strategy(field: &str) -> &'static str {
    if matches!(field, "volumes" | "resourceClaims") {
        "merge,retainKeys"
    } else {
        "merge"
    }
}
