//! The node's side of persistent volumes: the volume root the local-path provisioner puts
//! directories under (checked writable at start, published on the Node), the directory of a
//! claim a pod mounts, and the removal of directories whose volumes were deleted (reclaim
//! Delete), after which the volume's finalizer is dropped so that it goes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use capstan_api::storage::{LOCAL_VOLUME_FINALIZER, awaits_removal};
use futures::StreamExt;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::Event;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::NodeError;
use crate::client::ApiClient;

/// How soon a volume whose removal failed is tried again.
const RETRY_INTERVAL: Duration = Duration::from_secs(10);

/// Makes the volume root and checks that the agent can write there; returns its absolute path.
pub fn prepare_root(dir: PathBuf) -> Result<PathBuf, NodeError> {
    let fail = |source: std::io::Error| NodeError::Write {
        path: format!("{} (the volume root, --volume-dir)", dir.display()),
        source,
    };
    std::fs::create_dir_all(&dir).map_err(fail)?;
    let probe = dir.join(".capstan-write-test");
    std::fs::write(&probe, b"").map_err(fail)?;
    std::fs::remove_file(&probe).map_err(fail)?;
    std::fs::canonicalize(&dir).map_err(fail)
}

/// Where a volume's data is on its node: a hostPath or local volume's path.
pub fn volume_path(pv: &Value) -> Option<PathBuf> {
    let spec = &pv["spec"];
    spec["hostPath"]["path"]
        .as_str()
        .or(spec["local"]["path"].as_str())
        .map(PathBuf::from)
}

/// Removes `path` if it lies inside `root` (never anything else, whatever a volume says).
fn remove_inside(root: &Path, path: &Path) -> std::io::Result<bool> {
    let Ok(real) = std::fs::canonicalize(path) else {
        return Ok(true); // gone already
    };
    if real == root || !real.starts_with(root) {
        return Ok(false);
    }
    std::fs::remove_dir_all(&real)?;
    Ok(true)
}

/// Removes the directory of `pv` (a deleted volume of this node), then drops its finalizer so
/// that it goes. False when either step failed (it is tried again later).
async fn release(api: &ApiClient, root: &Path, pv: &Value) -> bool {
    let name = pv["metadata"]["name"].as_str().unwrap_or_default();
    match volume_path(pv).map(|p| remove_inside(root, &p)) {
        Some(Ok(false)) => {
            tracing::warn!(volume = %name, root = %root.display(), "the volume's path is outside the volume root: its data is left in place");
        }
        Some(Err(e)) => {
            tracing::warn!(volume = %name, error = %e, "removing the volume's directory");
            return false;
        }
        Some(Ok(true)) | None => {}
    }
    let finalizers: Vec<Value> = pv["metadata"]["finalizers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|f| *f != LOCAL_VOLUME_FINALIZER)
        .cloned()
        .collect();
    let patch = json!({"metadata": {"finalizers": finalizers}});
    match api.merge_patch(&format!("/api/v1/persistentvolumes/{name}"), &patch).await {
        Ok(_) => {
            tracing::info!(volume = %name, "volume removed from the node");
            true
        }
        Err(e) if e.code == 404 => true,
        Err(e) => {
            tracing::warn!(volume = %name, error = %e, "releasing the volume");
            false
        }
    }
}

/// Follows the volumes: each deleted volume of this node has its directory removed and is let
/// go; one that failed is tried again on a tick.
pub async fn clean_released(api: ApiClient, node: String, root: PathBuf, shutdown: CancellationToken) {
    let mut watch = api.watch_volumes().default_backoff().boxed();
    let mut failed: BTreeMap<String, Value> = BTreeMap::new();
    let mut retry = tokio::time::interval(RETRY_INTERVAL);
    loop {
        let due: Vec<Value> = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = retry.tick() => std::mem::take(&mut failed).into_values().collect(),
            e = watch.next() => match e {
                Some(Ok(Event::Apply(v) | Event::InitApply(v))) => vec![serde_json::to_value(&v).unwrap_or_default()],
                Some(Ok(_)) => continue,
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "the volume watch failed; it resumes");
                    continue;
                }
                None => return,
            },
        };
        for pv in due.into_iter().filter(|pv| awaits_removal(pv, &node)) {
            if !release(&api, &root, &pv).await {
                failed.insert(pv["metadata"]["name"].as_str().unwrap_or_default().to_owned(), pv);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use capstan_api::storage::{HOSTNAME_LABEL, PROVISIONED_BY_ANNOTATION, PROVISIONER};

    #[test]
    fn only_paths_inside_the_root_are_removed() {
        let root = tempfile::tempdir().unwrap();
        let root_path = std::fs::canonicalize(root.path()).unwrap();
        let inside = root_path.join("pvc-1_ns_data");
        std::fs::create_dir_all(inside.join("sub")).unwrap();
        assert!(remove_inside(&root_path, &inside).unwrap());
        assert!(!inside.exists());
        let outside = tempfile::tempdir().unwrap();
        assert!(!remove_inside(&root_path, outside.path()).unwrap());
        assert!(outside.path().exists());
        assert!(!remove_inside(&root_path, &root_path.join("..")).unwrap());
    }

    #[test]
    fn a_deleted_provisioned_volume_of_this_node_awaits_removal() {
        let pv = json!({"metadata": {"name": "pvc-1", "deletionTimestamp": "2026-01-01T00:00:00Z",
                "annotations": {PROVISIONED_BY_ANNOTATION: PROVISIONER}, "finalizers": [LOCAL_VOLUME_FINALIZER]},
            "spec": {"hostPath": {"path": "/v/pvc-1"}, "nodeAffinity": {"required": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": HOSTNAME_LABEL, "operator": "In", "values": ["n1"]}]}]}}}});
        assert!(awaits_removal(&pv, "n1"));
        assert!(!awaits_removal(&pv, "n2"));
        assert_eq!(volume_path(&pv), Some(PathBuf::from("/v/pvc-1")));
    }
}
