//! What each identity may do: every authorisation rule of the API in one table, decided from the
//! request's attributes (verb, resource, namespace, name) and the few facts about pods the node
//! rules need. RBAC will plug in here; the rule that Git writes desired state stays above it.

use std::sync::Arc;

use capstan_api::KindInfo;
use capstan_api::kinds::Origin;
use serde_json::Value;

use super::Identity;

/// The verbs of Kubernetes' authoriser that Capstan serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    Get,
    List,
    Watch,
    Create,
    Update,
    Patch,
    Delete,
}

impl Verb {
    /// The verb as Kubernetes spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "get",
            Verb::List => "list",
            Verb::Watch => "watch",
            Verb::Create => "create",
            Verb::Update => "update",
            Verb::Patch => "patch",
            Verb::Delete => "delete",
        }
    }

    fn reads(self) -> bool {
        matches!(self, Verb::Get | Verb::List | Verb::Watch)
    }
}

/// One request as the authoriser sees it.
#[derive(Clone, Copy, Debug)]
pub struct Attributes<'a> {
    pub verb: Verb,
    pub kind: &'static KindInfo,
    /// `status`, `log`, `token`, or none.
    pub subresource: Option<&'a str>,
    /// None for cluster-scoped kinds and for requests across all namespaces.
    pub namespace: Option<&'a str>,
    /// Empty for collections.
    pub name: &'a str,
    /// The pod a requested service-account token is to be bound to.
    pub bound_pod: Option<&'a str>,
    /// The object created is a run of something in Git, not desired state: a Job made by hand
    /// from a CronJob (`kubectl create job --from=cronjob/x`).
    pub manual_run: bool,
    /// The patch only restarts a workload's pods (`kubectl rollout restart`).
    pub restart: bool,
}

impl<'a> Attributes<'a> {
    pub fn new(verb: Verb, kind: &'static KindInfo, namespace: Option<&'a str>, name: &'a str) -> Attributes<'a> {
        Attributes {
            verb,
            kind,
            subresource: None,
            namespace: namespace.filter(|n| !n.is_empty()),
            name,
            bound_pod: None,
            manual_run: false,
            restart: false,
        }
    }

    pub fn subresource(mut self, sub: Option<&'a str>) -> Attributes<'a> {
        self.subresource = sub;
        self
    }

    pub fn bound_pod(mut self, pod: Option<&'a str>) -> Attributes<'a> {
        self.bound_pod = pod;
        self
    }

    pub fn manual_run(mut self, manual: bool) -> Attributes<'a> {
        self.manual_run = manual;
        self
    }

    pub fn restart(mut self, restart: bool) -> Attributes<'a> {
        self.restart = restart;
        self
    }
}

/// What the node rules need to know about pods (the cache, or a map in tests).
pub trait Facts {
    fn pod(&self, namespace: &str, name: &str) -> Option<Arc<Value>>;
    fn pods(&self, namespace: &str) -> Vec<Arc<Value>>;
    /// A PersistentVolume (a node releases the provisioned volumes of its own).
    fn volume(&self, _name: &str) -> Option<Arc<Value>> {
        None
    }
    /// A PersistentVolumeClaim (an administrator deletes the claims controllers made).
    fn claim(&self, _namespace: &str, _name: &str) -> Option<Arc<Value>> {
        None
    }
}

/// Why a request is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Denial {
    /// A change to desired state: it is made in Git (the caller is told where).
    InGit,
    /// Not this identity's to do.
    Forbidden(String),
}

/// May `id` do what `a` describes?
pub fn authorize(id: &Identity, a: &Attributes<'_>, facts: &dyn Facts) -> Result<(), Denial> {
    if a.kind.plural == "serviceaccounts" && a.subresource == Some("token") {
        return token_request(id, a, facts);
    }
    if a.kind.kind == "Pod" && matches!(a.subresource, Some("exec" | "attach" | "portforward")) {
        return pod_stream(id, a);
    }
    if a.verb.reads() {
        return read(id, a, facts);
    }
    write(id, a, facts)
}

fn forbidden(message: String) -> Result<(), Denial> {
    Err(Denial::Forbidden(message))
}

fn read(id: &Identity, a: &Attributes<'_>, facts: &dyn Facts) -> Result<(), Denial> {
    let secret = a.kind.is_secret();
    match id {
        Identity::Admin => Ok(()),
        // Kubernetes' `view`: everything but Secrets (their values would let a viewer act as
        // the workloads that use them).
        Identity::ReadOnly if secret => forbidden(format!(
            "{} may not read secrets: the read-only credential has Kubernetes' view rights, which exclude Secrets",
            id.user_name()
        )),
        Identity::ReadOnly => Ok(()),
        Identity::Node(_) if !secret => Ok(()),
        // Like the Kubernetes node authoriser: only secrets of pods bound to this node.
        Identity::Node(node) => match (a.namespace, a.name, a.verb) {
            (Some(ns), name, Verb::Get) if !name.is_empty() => {
                let used = facts
                    .pods(ns)
                    .iter()
                    .any(|p| p["spec"]["nodeName"] == node.as_str() && pod_uses_secret(p, name));
                if used {
                    Ok(())
                } else {
                    forbidden(format!("node {node:?} may not read secret {ns}/{name}: no pod on the node uses it"))
                }
            }
            _ => forbidden(format!("node {node:?} may not list secrets")),
        },
        Identity::ServiceAccount { namespace: own, name: sa } => {
            if a.kind.namespaced && a.namespace == Some(own.as_str()) && !secret {
                Ok(())
            } else {
                forbidden(format!(
                    "service account {own}/{sa} may only read objects (not secrets) in namespace {own:?}"
                ))
            }
        }
    }
}

fn write(id: &Identity, a: &Attributes<'_>, facts: &dyn Facts) -> Result<(), Denial> {
    let (kind, verb, name) = (a.kind, a.verb, a.name);
    let namespace = a.namespace.unwrap_or_default();
    let pod = || facts.pod(namespace, name);
    let status = a.subresource == Some("status");
    let allowed = match (id, kind.origin) {
        // Desired state changes only through Git, whoever asks...
        (Identity::Node(node), Origin::Git) => match kind.kind {
            "Pod" => (status || verb == Verb::Delete) && pod().is_some_and(|p| p["spec"]["nodeName"] == node.as_str()),
            // Dropping the finalizer of a deleted volume whose directory it removed.
            "PersistentVolume" => {
                matches!(verb, Verb::Patch | Verb::Update)
                    && facts.volume(name).is_some_and(|v| capstan_api::storage::awaits_removal(&v, node))
            }
            _ => false,
        },
        // ...except that an administrator may delete a pod a controller made (to restart it),
        // evict a pod (as its disruption budget allows), run a CronJob's Job by hand, and
        // restart a workload's pods (which changes nothing Git declares).
        (Identity::Admin, Origin::Git) => {
            (kind.kind == "Pod"
                && verb == Verb::Delete
                && pod().is_some_and(|p| p["metadata"]["ownerReferences"].as_array().is_some_and(|o| !o.is_empty())))
                || (kind.kind == "Pod" && verb == Verb::Create && a.subresource == Some("eviction"))
                || (kind.kind == "Job" && verb == Verb::Create && a.manual_run)
                || (matches!(kind.kind, "Deployment" | "StatefulSet" | "DaemonSet") && verb == Verb::Patch && a.restart)
                // A StatefulSet's claim is the cluster's, not Git's: deleting it (once no pod
                // uses it) is how its data is given up.
                || (kind.kind == "PersistentVolumeClaim"
                    && verb == Verb::Delete
                    && facts.claim(namespace, name).is_some_and(|c| !capstan_api::meta::from_git(&c)))
        }
        (Identity::Node(node), Origin::Cluster) => match kind.kind {
            "Node" => name == node,
            "Lease" => name == node && namespace == "kube-node-lease",
            "Event" => matches!(verb, Verb::Create | Verb::Patch | Verb::Update),
            _ => false,
        },
        // Observed state an administrator acts on: removing a node (and forgetting it), and
        // cordoning it (the write checks that only `spec.unschedulable` changes).
        (Identity::Admin, Origin::Cluster) => kind.kind == "Node" && matches!(verb, Verb::Delete | Verb::Patch) && !status,
        _ => false,
    };
    if allowed {
        return Ok(());
    }
    if kind.origin == Origin::Git && !matches!(id, Identity::Node(_)) {
        return Err(Denial::InGit);
    }
    let place = if namespace.is_empty() {
        String::new()
    } else {
        format!(" in namespace {namespace:?}")
    };
    forbidden(format!(
        "{} may not {} {} {name:?}{place}",
        id.user_name(),
        verb.as_str(),
        kind.resource()
    ))
}

/// Exec, attach and port-forward run things inside a pod: administrators only. They need
/// `create` on the subresource (KEP-4006: the WebSocket upgrade is a GET, and `get` alone must
/// not let a viewer in); a node never may, as in Kubernetes.
fn pod_stream(id: &Identity, a: &Attributes<'_>) -> Result<(), Denial> {
    let sub = a.subresource.unwrap_or_default();
    let place = a.namespace.unwrap_or("default");
    match id {
        Identity::Admin if a.verb == Verb::Create => Ok(()),
        Identity::ReadOnly => forbidden(format!(
            "{} may not create pods/{sub} in namespace {place:?}: the read-only credential has Kubernetes' view rights, which do not run commands in pods",
            id.user_name()
        )),
        Identity::Node(node) => forbidden(format!("node {node:?} may not create pods/{sub}: nodes never run commands in pods")),
        other => forbidden(format!(
            "{} may not {} pods/{sub} in namespace {place:?}",
            other.user_name(),
            a.verb.as_str()
        )),
    }
}

/// TokenRequest: administrators may ask for any token; a node only for one bound to a pod on
/// the node (as Kubernetes' node authoriser allows); nobody else.
fn token_request(id: &Identity, a: &Attributes<'_>, facts: &dyn Facts) -> Result<(), Denial> {
    match id {
        Identity::Admin => Ok(()),
        Identity::Node(node) => {
            let on_node = a
                .bound_pod
                .and_then(|p| facts.pod(a.namespace.unwrap_or_default(), p))
                .is_some_and(|p| p["spec"]["nodeName"] == node.as_str());
            if on_node {
                Ok(())
            } else {
                forbidden(format!("node {node:?} may only ask for tokens bound to pods on the node"))
            }
        }
        other => forbidden(format!("{} may not create service-account tokens", other.user_name())),
    }
}

/// Whether `pod` refers to Secret `secret` (env, envFrom, volumes, projected volumes, pull secrets).
fn pod_uses_secret(pod: &Value, secret: &str) -> bool {
    fn list(v: &Value) -> &[Value] {
        v.as_array().map(Vec::as_slice).unwrap_or_default()
    }
    let spec = &pod["spec"];
    let in_containers = ["containers", "initContainers"].iter().any(|c| {
        list(&spec[c]).iter().any(|c| {
            list(&c["envFrom"]).iter().any(|e| e["secretRef"]["name"] == secret)
                || list(&c["env"]).iter().any(|e| e["valueFrom"]["secretKeyRef"]["name"] == secret)
        })
    });
    let in_volumes = list(&spec["volumes"])
        .iter()
        .any(|v| v["secret"]["secretName"] == secret || list(&v["projected"]["sources"]).iter().any(|s| s["secret"]["name"] == secret));
    let pull = list(&spec["imagePullSecrets"]).iter().any(|s| s["name"] == secret);
    in_containers || in_volumes || pull
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::HashMap;

    /// Pods by namespace and name.
    struct Pods(HashMap<(String, String), Arc<Value>>);

    impl Facts for Pods {
        fn pod(&self, namespace: &str, name: &str) -> Option<Arc<Value>> {
            self.0.get(&(namespace.to_owned(), name.to_owned())).cloned()
        }
        fn pods(&self, namespace: &str) -> Vec<Arc<Value>> {
            self.0
                .iter()
                .filter(|((ns, _), _)| ns == namespace)
                .map(|(_, p)| p.clone())
                .collect()
        }
    }

    fn facts() -> Pods {
        let pod = |name: &str, node: &str, owned: bool, secret: &str| {
            let owners = if owned {
                json!([{"kind": "ReplicaSet", "name": "rs"}])
            } else {
                json!([])
            };
            let p = json!({
                "metadata": {"name": name, "namespace": "app", "ownerReferences": owners},
                "spec": {"nodeName": node, "containers": [{"name": "c", "env": [{"name": "P", "valueFrom": {"secretKeyRef": {"name": secret, "key": "k"}}}]}]},
            });
            (("app".to_owned(), name.to_owned()), Arc::new(p))
        };
        Pods(HashMap::from([pod("web-1", "n1", true, "db"), pod("bare", "n2", false, "other")]))
    }

    fn kind(plural: &str) -> &'static KindInfo {
        capstan_api::kinds::by_name(plural).expect("served kind")
    }

    fn sa(ns: &str) -> Identity {
        Identity::ServiceAccount {
            namespace: ns.into(),
            name: "default".into(),
        }
    }

    /// The outcome in a word, for the table: allowed, in-git, or forbidden.
    fn outcome(id: &Identity, a: Attributes<'_>) -> (&'static str, String) {
        match authorize(id, &a, &facts()) {
            Ok(()) => ("allowed", String::new()),
            Err(Denial::InGit) => ("in-git", String::new()),
            Err(Denial::Forbidden(m)) => ("forbidden", m),
        }
    }

    #[test]
    fn the_authorisation_table() {
        use Verb::*;
        let admin = Identity::Admin;
        let viewer = Identity::ReadOnly;
        let n1 = Identity::Node("n1".into());
        let app_sa = sa("app");
        let at = |verb, plural, ns: Option<&'static str>, name: &'static str| Attributes::new(verb, kind(plural), ns, name);
        let cases: Vec<(&Identity, Attributes<'_>, &str, &str)> = vec![
            // Reads.
            (&admin, at(List, "secrets", None, ""), "allowed", ""),
            (&viewer, at(List, "deployments", None, ""), "allowed", ""),
            (&viewer, at(Get, "secrets", Some("app"), "db"), "forbidden", "exclude Secrets"),
            (&n1, at(Watch, "pods", None, ""), "allowed", ""),
            (&n1, at(Get, "secrets", Some("app"), "db"), "allowed", ""),
            (
                &n1,
                at(Get, "secrets", Some("app"), "other"),
                "forbidden",
                "no pod on the node uses it",
            ),
            (&n1, at(List, "secrets", Some("app"), ""), "forbidden", "may not list secrets"),
            (&n1, at(Watch, "secrets", Some("app"), "db"), "forbidden", "may not list secrets"),
            (&app_sa, at(List, "configmaps", Some("app"), ""), "allowed", ""),
            (
                &app_sa,
                at(Get, "pods", Some("app"), "web-1").subresource(Some("log")),
                "allowed",
                "",
            ),
            (
                &app_sa,
                at(List, "configmaps", Some("other"), ""),
                "forbidden",
                "in namespace \"app\"",
            ),
            (&app_sa, at(List, "configmaps", None, ""), "forbidden", "in namespace \"app\""),
            (&app_sa, at(Get, "nodes", None, "n1"), "forbidden", "in namespace \"app\""),
            (&app_sa, at(Get, "secrets", Some("app"), "db"), "forbidden", "not secrets"),
            // Running things in pods: administrators, with `create` (not a GET's `get`).
            (
                &admin,
                at(Create, "pods", Some("app"), "web-1").subresource(Some("exec")),
                "allowed",
                "",
            ),
            (
                &admin,
                at(Get, "pods", Some("app"), "web-1").subresource(Some("exec")),
                "forbidden",
                "may not get pods/exec",
            ),
            (
                &viewer,
                at(Create, "pods", Some("app"), "web-1").subresource(Some("exec")),
                "forbidden",
                "view rights",
            ),
            (
                &n1,
                at(Create, "pods", Some("app"), "web-1").subresource(Some("attach")),
                "forbidden",
                "nodes never",
            ),
            (
                &app_sa,
                at(Create, "pods", Some("app"), "web-1").subresource(Some("portforward")),
                "forbidden",
                "may not create pods/portforward",
            ),
            // Writes to desired state go to Git...
            (&admin, at(Patch, "deployments", Some("app"), "web"), "in-git", ""),
            (&viewer, at(Create, "configmaps", Some("app"), "c"), "in-git", ""),
            // A run of a CronJob by hand is not desired state; another Job is.
            (&admin, at(Create, "jobs", Some("app"), "by-hand").manual_run(true), "allowed", ""),
            (&admin, at(Create, "jobs", Some("app"), "other"), "in-git", ""),
            // A restart is not desired state; another patch of the workload is.
            (&admin, at(Patch, "deployments", Some("app"), "web").restart(true), "allowed", ""),
            (&viewer, at(Patch, "deployments", Some("app"), "web").restart(true), "in-git", ""),
            (&admin, at(Patch, "replicasets", Some("app"), "web-1").restart(true), "in-git", ""),
            (
                &admin,
                at(Create, "pods", Some("app"), "web-1").subresource(Some("eviction")),
                "allowed",
                "",
            ),
            (
                &viewer,
                at(Create, "pods", Some("app"), "web-1").subresource(Some("eviction")),
                "in-git",
                "",
            ),
            (&admin, at(Patch, "nodes", None, "n1"), "allowed", ""),
            (
                &admin,
                at(Patch, "nodes", None, "n1").subresource(Some("status")),
                "forbidden",
                "may not patch",
            ),
            (&viewer, at(Create, "jobs", Some("app"), "by-hand").manual_run(true), "in-git", ""),
            (&app_sa, at(Delete, "services", Some("app"), "s"), "in-git", ""),
            (&admin, at(Delete, "pods", Some("app"), "bare"), "in-git", ""),
            // ...but an administrator restarts a controller's pod by deleting it,
            (&admin, at(Delete, "pods", Some("app"), "web-1"), "allowed", ""),
            // and a node reports on and removes the pods bound to it, and only those.
            (
                &n1,
                at(Update, "pods", Some("app"), "web-1").subresource(Some("status")),
                "allowed",
                "",
            ),
            (&n1, at(Delete, "pods", Some("app"), "web-1"), "allowed", ""),
            (
                &n1,
                at(Update, "pods", Some("app"), "web-1"),
                "forbidden",
                "may not update pods \"web-1\"",
            ),
            (&n1, at(Delete, "pods", Some("app"), "bare"), "forbidden", "may not delete pods"),
            (
                &n1,
                at(Patch, "deployments", Some("app"), "web"),
                "forbidden",
                "may not patch deployments.apps",
            ),
            // Observed state: a node writes its own Node and Lease, and Events.
            (&n1, at(Update, "nodes", None, "n1").subresource(Some("status")), "allowed", ""),
            (&n1, at(Create, "nodes", None, "n1"), "allowed", ""),
            (
                &n1,
                at(Patch, "nodes", None, "n2"),
                "forbidden",
                "system:node:n1 may not patch nodes \"n2\"",
            ),
            (&n1, at(Update, "leases", Some("kube-node-lease"), "n1"), "allowed", ""),
            (
                &n1,
                at(Update, "leases", Some("default"), "n1"),
                "forbidden",
                "in namespace \"default\"",
            ),
            (&n1, at(Create, "events", Some("app"), ""), "allowed", ""),
            (&n1, at(Delete, "events", Some("app"), "e"), "forbidden", "may not delete events"),
            (&admin, at(Delete, "nodes", None, "n2"), "allowed", ""),
            (
                &admin,
                at(Update, "nodes", None, "n2"),
                "forbidden",
                "capstan:admin may not update nodes",
            ),
            (
                &viewer,
                at(Delete, "nodes", None, "n2"),
                "forbidden",
                "capstan:viewer may not delete nodes",
            ),
            (&app_sa, at(Create, "events", Some("app"), ""), "forbidden", "may not create events"),
            // Token requests.
            (
                &admin,
                at(Create, "serviceaccounts", Some("app"), "default").subresource(Some("token")),
                "allowed",
                "",
            ),
            (
                &n1,
                at(Create, "serviceaccounts", Some("app"), "default")
                    .subresource(Some("token"))
                    .bound_pod(Some("web-1")),
                "allowed",
                "",
            ),
            (
                &n1,
                at(Create, "serviceaccounts", Some("app"), "default")
                    .subresource(Some("token"))
                    .bound_pod(Some("bare")),
                "forbidden",
                "bound to pods on the node",
            ),
            (
                &n1,
                at(Create, "serviceaccounts", Some("app"), "default").subresource(Some("token")),
                "forbidden",
                "bound to pods on the node",
            ),
            (
                &app_sa,
                at(Create, "serviceaccounts", Some("app"), "default").subresource(Some("token")),
                "forbidden",
                "may not create service-account tokens",
            ),
            (
                &viewer,
                at(Create, "serviceaccounts", Some("app"), "default").subresource(Some("token")),
                "forbidden",
                "may not create service-account tokens",
            ),
        ];
        for (id, a, want, reason) in cases {
            let (got, message) = outcome(id, a);
            assert_eq!(
                got,
                want,
                "{} {} {:?}/{}: {message}",
                id.user_name(),
                a.verb.as_str(),
                a.namespace,
                a.kind.plural
            );
            assert!(message.contains(reason), "{message:?} should say {reason:?}");
        }
    }

    #[test]
    fn secrets_in_use_are_found_wherever_a_pod_names_them() {
        let pod = json!({"spec": {
            "initContainers": [{"envFrom": [{"secretRef": {"name": "a"}}]}],
            "volumes": [{"secret": {"secretName": "b"}}, {"projected": {"sources": [{"secret": {"name": "c"}}]}}],
            "imagePullSecrets": [{"name": "d"}],
        }});
        for s in ["a", "b", "c", "d"] {
            assert!(pod_uses_secret(&pod, s), "{s}");
        }
        assert!(!pod_uses_secret(&pod, "e"));
    }
}
