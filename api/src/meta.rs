//! Object identity and the metadata conventions every part of Capstan shares: provenance
//! annotations on objects from Git and the labels on every container.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::kinds::KindInfo;

/// Annotation: full SHA of the commit in which the object last changed in the repository.
pub const ANNOTATION_COMMIT: &str = "capstan.dev/commit";
/// Annotation: path of the file (relative to the repository root) the object came from.
pub const ANNOTATION_SOURCE: &str = "capstan.dev/source";
/// Annotation: zero-based index of the document in that file.
pub const ANNOTATION_DOCUMENT: &str = "capstan.dev/document";
/// Annotation: the kustomization file of the root whose build made the object (objects of
/// plain files have none).
pub const ANNOTATION_KUSTOMIZATION: &str = "capstan.dev/kustomization";

/// Pod-template annotation `kubectl rollout restart` sets: a restart an administrator asked for,
/// which is the cluster's, not Git's (a commit keeps it unless it sets the annotation itself).
pub const ANNOTATION_RESTARTED_AT: &str = "kubectl.kubernetes.io/restartedAt";

/// Whether `patch` (a merge patch) sets only the restart annotation of a pod template, as
/// `kubectl rollout restart` does.
pub fn is_restart_patch(patch: &serde_json::Value) -> bool {
    let only = |v: &serde_json::Value, key: &str| v.as_object().is_some_and(|m| m.len() == 1 && m.contains_key(key));
    let template = &patch["spec"]["template"];
    only(patch, "spec")
        && only(&patch["spec"], "template")
        && only(template, "metadata")
        && only(&template["metadata"], "annotations")
        && only(&template["metadata"]["annotations"], ANNOTATION_RESTARTED_AT)
        && template["metadata"]["annotations"][ANNOTATION_RESTARTED_AT].is_string()
}

/// Whether `object` came from the repository (it names the file or kustomization that made
/// it), rather than from a controller.
pub fn from_git(object: &serde_json::Value) -> bool {
    let a = &object["metadata"]["annotations"];
    a.get(ANNOTATION_SOURCE).is_some() || a.get(ANNOTATION_KUSTOMIZATION).is_some()
}

/// Container labels (see DESIGN.md): the pod's UID, name and namespace, the container's name,
/// the node running it, the hash of its spec, and the commit the pod came from.
pub const LABEL_POD_UID: &str = "capstan.dev/pod-uid";
pub const LABEL_POD: &str = "capstan.dev/pod";
pub const LABEL_NAMESPACE: &str = "capstan.dev/namespace";
pub const LABEL_CONTAINER: &str = "capstan.dev/container";
pub const LABEL_NODE: &str = "capstan.dev/node";
pub const LABEL_SPEC_HASH: &str = "capstan.dev/spec-hash";
pub const LABEL_COMMIT: &str = "capstan.dev/commit";

/// The namespace that namespaced objects without one land in.
pub const DEFAULT_NAMESPACE: &str = "default";

#[cfg(test)]
mod restart_tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_the_restart_annotation_makes_a_restart() {
        let at = |v: serde_json::Value| json!({"spec": {"template": {"metadata": {"annotations": {ANNOTATION_RESTARTED_AT: v}}}}});
        assert!(is_restart_patch(&at(json!("2026-12-06T03:00:00Z"))));
        assert!(!is_restart_patch(&at(json!(null))));
        let mut more = at(json!("now"));
        more["spec"]["replicas"] = json!(3);
        assert!(!is_restart_patch(&more));
        let mut image = at(json!("now"));
        image["spec"]["template"]["spec"] = json!({"containers": [{"name": "a", "image": "b"}]});
        assert!(!is_restart_patch(&image));
    }
}

/// Identity of an object: group, kind, namespace (empty for cluster-scoped kinds) and name.
/// The version is not part of identity, as in Kubernetes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ObjectKey {
    pub group: String,
    pub kind: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(kind: &KindInfo, namespace: &str, name: &str) -> Self {
        ObjectKey {
            group: kind.group.to_owned(),
            kind: kind.kind.to_owned(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }

    /// The registry entry for this key's kind.
    pub fn kind_info(&self) -> Option<&'static KindInfo> {
        crate::kinds::by_group_kind(&self.group, &self.kind)
    }
}

/// Printed as kubectl names objects: `deployment.apps/web -n shop`, `namespace/shop`.
impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = self.kind.to_ascii_lowercase();
        if self.group.is_empty() {
            write!(f, "{kind}/{}", self.name)?;
        } else {
            write!(f, "{kind}.{}/{}", self.group, self.name)?;
        }
        if !self.namespace.is_empty() {
            write!(f, " -n {}", self.namespace)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_print_like_kubectl() {
        let deploy = crate::kinds::by_name("deploy").unwrap();
        assert_eq!(ObjectKey::new(deploy, "shop", "web").to_string(), "deployment.apps/web -n shop");
        let ns = crate::kinds::by_name("ns").unwrap();
        assert_eq!(ObjectKey::new(ns, "", "shop").to_string(), "namespace/shop");
    }
}
