//! The names the control plane and the node agents share about persistent volumes: the built-in
//! local-path provisioner and its default class, and the annotations and finalizers that hand a
//! volume from one to the other.

/// The built-in provisioner: a directory on the node under its volume root.
pub const PROVISIONER: &str = "capstan.dev/local-path";
/// The StorageClass Capstan creates (users may declare their own of the same name in Git).
pub const DEFAULT_CLASS: &str = "local-path";
/// Marks a StorageClass as the one claims without a class get.
pub const DEFAULT_CLASS_ANNOTATION: &str = "storageclass.kubernetes.io/is-default-class";
/// On a claim: the node the scheduler chose for its first pod (WaitForFirstConsumer).
pub const SELECTED_NODE_ANNOTATION: &str = "volume.kubernetes.io/selected-node";
/// On a volume: who provisioned it.
pub const PROVISIONED_BY_ANNOTATION: &str = "pv.kubernetes.io/provisioned-by";
/// On a claim: held while a pod uses it.
pub const CLAIM_PROTECTION: &str = "kubernetes.io/pvc-protection";
/// On a provisioned volume: held until its node agent has removed the directory.
pub const LOCAL_VOLUME_FINALIZER: &str = "capstan.dev/local-volume";
/// On a Node: the directory its agent keeps provisioned volumes under.
pub const NODE_VOLUME_DIR_ANNOTATION: &str = "capstan.dev/volume-dir";
/// On a claim or volume in Git: removing it from Git may delete its data.
pub const PRUNE_DATA_ANNOTATION: &str = "capstan.dev/prune-data";

/// The node label a provisioned volume's node affinity names.
pub const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";

/// Whether objects of `kind` hold data that removing them from Git must not delete unasked.
pub fn holds_data(kind: &str) -> bool {
    matches!(kind, "PersistentVolumeClaim" | "PersistentVolume")
}

/// Whether `pv` is a provisioned volume of `node` whose deletion waits for its node agent
/// (which removes the directory, then the finalizer).
pub fn awaits_removal(pv: &serde_json::Value, node: &str) -> bool {
    let pinned_here = pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|t| t["matchExpressions"].as_array().cloned().unwrap_or_default())
        .any(|e| e["key"] == HOSTNAME_LABEL && e["values"].as_array().is_some_and(|v| v.iter().any(|n| n == node)));
    !pv["metadata"]["deletionTimestamp"].is_null()
        && pv["metadata"]["annotations"][PROVISIONED_BY_ANNOTATION] == PROVISIONER
        && pv["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| f.iter().any(|x| x == LOCAL_VOLUME_FINALIZER))
        && pinned_here
}
