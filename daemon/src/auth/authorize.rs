//! What each identity may do: the rules of the API in one place, decided from the request's
//! attributes (verb, resource, namespace, name) and the few facts about pods the node rules
//! need. Nodes have a fixed authoriser (like Kubernetes' Node authoriser); everyone else is
//! decided by RBAC (`rbac`), under the rule above it that Git writes desired state.

use std::sync::Arc;

use capstan_api::KindInfo;
use capstan_api::kinds::Origin;
use serde_json::Value;

use super::Identity;
use super::rbac::{Policy, Request, UserInfo};

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

    pub fn parse(verb: &str) -> Option<Verb> {
        [
            Verb::Get,
            Verb::List,
            Verb::Watch,
            Verb::Create,
            Verb::Update,
            Verb::Patch,
            Verb::Delete,
        ]
        .into_iter()
        .find(|v| v.as_str() == verb)
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
    /// The API group asked for when it is not the kind's own (`metrics.k8s.io` pods).
    pub group: Option<&'static str>,
    /// `status`, `log`, `token`, or none.
    pub subresource: Option<&'a str>,
    /// None for cluster-scoped kinds and for requests across all namespaces.
    pub namespace: Option<&'a str>,
    /// Empty for collections.
    pub name: &'a str,
    /// The pod a requested service-account token is to be bound to.
    pub bound_pod: Option<&'a str>,
    /// The object created is a run made by hand, not desired state: a Job from a CronJob
    /// (`kubectl create job --from=cronjob/x`), a node debugger pod (`kubectl debug node/x`).
    pub manual_run: bool,
    /// The patch only restarts a workload's pods (`kubectl rollout restart`).
    pub restart: bool,
}

impl<'a> Attributes<'a> {
    pub fn new(verb: Verb, kind: &'static KindInfo, namespace: Option<&'a str>, name: &'a str) -> Attributes<'a> {
        Attributes {
            verb,
            kind,
            group: None,
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

    pub fn in_group(mut self, group: &'static str) -> Attributes<'a> {
        self.group = Some(group);
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

    /// The request in RBAC's terms.
    pub fn request(&self) -> Request<'a> {
        Request::Resource {
            verb: self.verb.as_str(),
            group: self.group.unwrap_or(self.kind.group),
            resource: self.kind.plural,
            subresource: self.subresource,
            namespace: self.namespace,
            name: self.name,
        }
    }

    /// `pods/exec` or `deployments`, as RBAC rules name it.
    fn resource(&self) -> String {
        match self.subresource {
            Some(s) => format!("{}/{s}", self.kind.plural),
            None => self.kind.plural.to_owned(),
        }
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
    /// The Ingresses of a namespace (every node's ingress terminates their TLS).
    fn ingresses(&self, _namespace: &str) -> Vec<Arc<Value>> {
        Vec::new()
    }
    /// Every Gateway (every node serves their listeners, with the certificates they name).
    fn gateways(&self) -> Vec<Arc<Value>> {
        Vec::new()
    }
}

/// Why a request is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Denial {
    /// A change to desired state: it is made in Git (the caller is told where).
    InGit,
    /// Not this identity's to do, by one of Capstan's fixed rules (the reason says which).
    Forbidden(String),
    /// No RBAC rule grants it (Kubernetes' wording; RBAC itself gives no reason).
    NotGranted(String),
}

impl Denial {
    /// The message a 403 carries.
    pub fn message(self) -> String {
        match self {
            Denial::InGit => String::new(),
            Denial::Forbidden(m) | Denial::NotGranted(m) => m,
        }
    }
}

/// May `id` do what `a` describes?
pub fn authorize(id: &Identity, a: &Attributes<'_>, facts: &dyn Facts, policy: &Policy) -> Result<(), Denial> {
    let token = a.kind.plural == "serviceaccounts" && a.subresource == Some("token");
    let stream = a.kind.kind == "Pod" && matches!(a.subresource, Some("exec" | "attach" | "portforward"));
    if let Identity::Node(node) = id {
        return if token {
            node_token_request(node, a, facts)
        } else if stream {
            forbidden(format!(
                "node {node:?} may not create pods/{}: nodes never run commands in pods",
                a.resource().trim_start_matches("pods/")
            ))
        } else if a.verb.reads() {
            node_read(node, a, facts)
        } else {
            node_write(node, a, facts)
        };
    }
    // Git writes desired state, whatever RBAC says; what remains are actions on running things.
    if !a.verb.reads() && !token && !stream {
        match a.kind.origin {
            Origin::Git if !is_action(a, facts) => return Err(Denial::InGit),
            Origin::Cluster if !is_operator_action(a) => {
                return forbidden(format!(
                    "{} may not {} {} {:?}: it is observed state, written only by Capstan's own components",
                    id.user_name(),
                    a.verb.as_str(),
                    a.resource(),
                    a.name
                ));
            }
            _ => {}
        }
    }
    let user = id.user_info();
    if !policy.allows(&user, &a.request()) {
        return Err(Denial::NotGranted(rbac_denial(&user, a)));
    }
    // A token acts as its service account: asking for one must not gain a right.
    if token {
        let ns = a.namespace.unwrap_or_default();
        let target = Identity::ServiceAccount {
            namespace: ns.to_owned(),
            name: a.name.to_owned(),
        };
        if let Some(missing) = policy.escalation(&user, &target.user_info(), ns) {
            return forbidden(format!(
                "{} may not ask for a token of service account {ns}/{}: it may {missing}, which {} may not",
                user.name, a.name, user.name
            ));
        }
    }
    Ok(())
}

/// Kubernetes' wording of an RBAC refusal.
fn rbac_denial(user: &UserInfo, a: &Attributes<'_>) -> String {
    let group = a.group.unwrap_or(a.kind.group);
    let what = if a.name.is_empty() {
        a.resource()
    } else {
        format!("{} {:?}", a.resource(), a.name)
    };
    let place = match a.namespace {
        Some(ns) => format!("in the namespace {ns:?}"),
        None => "at the cluster scope".to_owned(),
    };
    format!(
        "{what} is forbidden: User {:?} cannot {} resource {:?} in API group {group:?} {place}",
        user.name,
        a.verb.as_str(),
        a.resource()
    )
}

/// A non-resource request (`/metrics`, discovery): RBAC's `nonResourceURLs`.
pub fn authorize_path(id: &Identity, verb: &str, path: &str, policy: &Policy) -> Result<(), Denial> {
    let user = id.user_info();
    if policy.allows(&user, &Request::NonResource { verb, path }) {
        return Ok(());
    }
    Err(Denial::NotGranted(format!(
        "forbidden: User {:?} cannot {verb} path {path:?}",
        user.name
    )))
}

fn forbidden(message: String) -> Result<(), Denial> {
    Err(Denial::Forbidden(message))
}

/// Changes that touch no desired state although their kind is Git's: deleting a pod Git does not
/// declare (a controller's, to restart it), evicting a pod (as its disruption budget allows),
/// adding a debugging container to a pod (`kubectl debug`), runs made by hand (a CronJob's Job,
/// a node debugger pod), restarting a workload's pods, and giving up a StatefulSet's claim (the
/// cluster's, not Git's). RBAC decides who may.
fn is_action(a: &Attributes<'_>, facts: &dyn Facts) -> bool {
    let (kind, verb) = (a.kind.kind, a.verb);
    let namespace = a.namespace.unwrap_or_default();
    // Every pod but the ones Git declares: a controller's, or one made by hand.
    let not_declared = |p: &Value| !capstan_api::meta::from_git(p);
    (kind == "Pod" && verb == Verb::Delete && a.subresource.is_none() && facts.pod(namespace, a.name).is_some_and(|p| not_declared(&p)))
        || (kind == "Pod" && verb == Verb::Create && a.subresource == Some("eviction"))
        || (kind == "Pod" && matches!(verb, Verb::Patch | Verb::Update) && a.subresource == Some("ephemeralcontainers"))
        || (matches!(kind, "Job" | "Pod") && verb == Verb::Create && a.subresource.is_none() && a.manual_run)
        || (matches!(kind, "Deployment" | "StatefulSet" | "DaemonSet") && verb == Verb::Patch && a.restart)
        || (kind == "PersistentVolumeClaim"
            && verb == Verb::Delete
            && facts.claim(namespace, a.name).is_some_and(|c| !capstan_api::meta::from_git(&c)))
}

/// Observed state an operator acts on: removing a node (and forgetting it), and cordoning or
/// labelling it (the write checks that only those fields change).
fn is_operator_action(a: &Attributes<'_>) -> bool {
    a.kind.kind == "Node" && matches!(a.verb, Verb::Delete | Verb::Patch) && a.subresource.is_none()
}

/// Nodes read everything but Secrets; like the Kubernetes node authoriser, only the secrets of
/// pods bound to the node — and the TLS Secrets Ingresses and Gateways name, which every node's
/// ingress serves — each by its name (a get, or a list or watch narrowed to it).
fn node_read(node: &str, a: &Attributes<'_>, facts: &dyn Facts) -> Result<(), Denial> {
    if !a.kind.is_secret() {
        return Ok(());
    }
    match (a.namespace, a.name, a.verb) {
        (Some(ns), name, Verb::Get | Verb::List | Verb::Watch) if !name.is_empty() => {
            let used = facts
                .pods(ns)
                .iter()
                .any(|p| p["spec"]["nodeName"] == node && pod_uses_secret(p, name));
            let terminated = || {
                facts.ingresses(ns).iter().any(|i| {
                    i["spec"]["tls"]
                        .as_array()
                        .is_some_and(|tls| tls.iter().any(|t| t["secretName"] == name))
                }) || facts.gateways().iter().any(|g| {
                    let gateway_ns = g["metadata"]["namespace"].as_str().unwrap_or_default();
                    g["spec"]["listeners"].as_array().into_iter().flatten().any(|l| {
                        l["tls"]["certificateRefs"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .any(|r| r["name"] == name && r["namespace"].as_str().unwrap_or(gateway_ns) == ns)
                    })
                })
            };
            if used || terminated() {
                Ok(())
            } else {
                forbidden(format!(
                    "node {node:?} may not read secret {ns}/{name}: no pod on the node and no Ingress uses it"
                ))
            }
        }
        _ => forbidden(format!("node {node:?} may not list secrets")),
    }
}

/// A node reports on and removes the pods bound to it, writes its own Node and Lease, and Events.
fn node_write(node: &str, a: &Attributes<'_>, facts: &dyn Facts) -> Result<(), Denial> {
    let (kind, verb, name) = (a.kind, a.verb, a.name);
    let namespace = a.namespace.unwrap_or_default();
    let status = a.subresource == Some("status");
    let allowed = match kind.origin {
        Origin::Git => match kind.kind {
            "Pod" => (status || verb == Verb::Delete) && facts.pod(namespace, name).is_some_and(|p| p["spec"]["nodeName"] == node),
            // Dropping the finalizer of a deleted volume whose directory it removed.
            "PersistentVolume" => {
                matches!(verb, Verb::Patch | Verb::Update)
                    && facts.volume(name).is_some_and(|v| capstan_api::storage::awaits_removal(&v, node))
            }
            _ => false,
        },
        Origin::Cluster => match kind.kind {
            "Node" => name == node,
            "Lease" => name == node && namespace == "kube-node-lease",
            "Event" => matches!(verb, Verb::Create | Verb::Patch | Verb::Update),
            _ => false,
        },
    };
    if allowed {
        return Ok(());
    }
    let place = if namespace.is_empty() {
        String::new()
    } else {
        format!(" in namespace {namespace:?}")
    };
    forbidden(format!(
        "system:node:{node} may not {} {} {name:?}{place}",
        verb.as_str(),
        kind.resource()
    ))
}

/// TokenRequest by a node: only for a token bound to a pod on the node (as Kubernetes' node
/// authoriser allows).
fn node_token_request(node: &str, a: &Attributes<'_>, facts: &dyn Facts) -> Result<(), Denial> {
    let on_node = a
        .bound_pod
        .and_then(|p| facts.pod(a.namespace.unwrap_or_default(), p))
        .is_some_and(|p| p["spec"]["nodeName"] == node);
    if on_node {
        Ok(())
    } else {
        forbidden(format!("node {node:?} may only ask for tokens bound to pods on the node"))
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
            // Not a controller's: declared in Git.
            let (owners, annotations) = if owned {
                (json!([{"kind": "ReplicaSet", "name": "rs"}]), json!({}))
            } else {
                (json!([]), json!({capstan_api::meta::ANNOTATION_SOURCE: "bare.yaml"}))
            };
            let p = json!({
                "metadata": {"name": name, "namespace": "app", "ownerReferences": owners, "annotations": annotations},
                "spec": {"nodeName": node, "containers": [{"name": "c", "env": [{"name": "P", "valueFrom": {"secretKeyRef": {"name": secret, "key": "k"}}}]}]},
            });
            (("app".to_owned(), name.to_owned()), Arc::new(p))
        };
        let debugger = json!({"metadata": {"name": "node-debugger-n2-x", "namespace": "app"},
                              "spec": {"nodeName": "n2", "restartPolicy": "Never", "containers": [{"name": "debugger"}]}});
        Pods(HashMap::from([
            pod("web-1", "n1", true, "db"),
            pod("bare", "n2", false, "other"),
            (("app".to_owned(), "node-debugger-n2-x".to_owned()), Arc::new(debugger)),
        ]))
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

    /// The built-in defaults, and in `app`: reads of config and pods for the default service
    /// account, and token requests (and config reads) for `bot`.
    fn policy() -> Policy {
        let mut roles = super::super::bootstrap::cluster_roles();
        roles.push(json!({"metadata": {"name": "reader", "namespace": "app"}, "rules": [
            {"apiGroups": [""], "resources": ["configmaps", "pods", "pods/log"], "verbs": ["get", "list", "watch"]}]}));
        roles.push(json!({"metadata": {"name": "tokens", "namespace": "app"}, "rules": [
            {"apiGroups": [""], "resources": ["serviceaccounts/token"], "verbs": ["create"]},
            {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "watch"]}]}));
        let bind = |name: &str, sa: &str| {
            json!({"metadata": {"name": name, "namespace": "app"}, "roleRef": {"kind": "Role", "name": name},
                   "subjects": [{"kind": "ServiceAccount", "name": sa}]})
        };
        let bindings = [bind("reader", "default"), bind("tokens", "bot")];
        let cluster_bindings = super::super::bootstrap::cluster_role_bindings();
        let (cluster_roles, roles): (Vec<&Value>, Vec<&Value>) = roles.iter().partition(|r| r["metadata"]["namespace"].is_null());
        Policy::build(&super::super::rbac::Objects {
            cluster_roles,
            roles,
            cluster_role_bindings: cluster_bindings.iter().collect(),
            role_bindings: bindings.iter().collect(),
        })
    }

    /// The outcome in a word, for the table: allowed, in-git, or forbidden.
    fn outcome(id: &Identity, a: Attributes<'_>) -> (&'static str, String) {
        match authorize(id, &a, &facts(), &policy()) {
            Ok(()) => ("allowed", String::new()),
            Err(Denial::InGit) => ("in-git", String::new()),
            Err(Denial::Forbidden(m) | Denial::NotGranted(m)) => ("forbidden", m),
        }
    }

    #[test]
    fn the_authorisation_table() {
        use Verb::*;
        let admin = Identity::Admin;
        let viewer = Identity::ReadOnly;
        let n1 = Identity::Node("n1".into());
        let app_sa = sa("app");
        let bot = Identity::ServiceAccount {
            namespace: "app".into(),
            name: "bot".into(),
        };
        let at = |verb, plural, ns: Option<&'static str>, name: &'static str| Attributes::new(verb, kind(plural), ns, name);
        let cases: Vec<(&Identity, Attributes<'_>, &str, &str)> = vec![
            // Reads.
            (&admin, at(List, "secrets", None, ""), "allowed", ""),
            (&viewer, at(List, "deployments", None, ""), "allowed", ""),
            (
                &viewer,
                at(Get, "secrets", Some("app"), "db"),
                "forbidden",
                "cannot get resource \"secrets\"",
            ),
            (&viewer, at(List, "nodes", None, ""), "allowed", ""),
            (&n1, at(Watch, "pods", None, ""), "allowed", ""),
            (&n1, at(Get, "secrets", Some("app"), "db"), "allowed", ""),
            (
                &n1,
                at(Get, "secrets", Some("app"), "other"),
                "forbidden",
                "no pod on the node and no Ingress uses it",
            ),
            (&n1, at(List, "secrets", Some("app"), ""), "forbidden", "may not list secrets"),
            // A watch narrowed to one Secret's name is authorised as a get of it.
            (&n1, at(Watch, "secrets", Some("app"), "db"), "allowed", ""),
            (
                &n1,
                at(Watch, "secrets", Some("app"), "other"),
                "forbidden",
                "no pod on the node and no Ingress uses it",
            ),
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
                "in the namespace \"other\"",
            ),
            (&app_sa, at(List, "configmaps", None, ""), "forbidden", "at the cluster scope"),
            (&app_sa, at(Get, "nodes", None, "n1"), "forbidden", "cannot get resource \"nodes\""),
            (
                &app_sa,
                at(Get, "secrets", Some("app"), "db"),
                "forbidden",
                "cannot get resource \"secrets\"",
            ),
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
                "allowed",
                "",
            ),
            (
                &viewer,
                at(Create, "pods", Some("app"), "web-1").subresource(Some("exec")),
                "forbidden",
                "cannot create resource \"pods/exec\"",
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
                "cannot create resource \"pods/portforward\"",
            ),
            // Writes to desired state go to Git...
            (&admin, at(Patch, "deployments", Some("app"), "web"), "in-git", ""),
            (&viewer, at(Create, "configmaps", Some("app"), "c"), "in-git", ""),
            // A run of a CronJob by hand is not desired state; another Job is.
            (&admin, at(Create, "jobs", Some("app"), "by-hand").manual_run(true), "allowed", ""),
            (&admin, at(Create, "jobs", Some("app"), "other"), "in-git", ""),
            // A restart is not desired state; another patch of the workload is.
            (&admin, at(Patch, "deployments", Some("app"), "web").restart(true), "allowed", ""),
            (
                &viewer,
                at(Patch, "deployments", Some("app"), "web").restart(true),
                "forbidden",
                "cannot patch resource \"deployments\" in API group \"apps\"",
            ),
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
                "forbidden",
                "cannot create resource \"pods/eviction\"",
            ),
            // `kubectl debug`: adding an ephemeral container is an action; the pod's spec stays Git's.
            (
                &admin,
                at(Patch, "pods", Some("app"), "web-1").subresource(Some("ephemeralcontainers")),
                "allowed",
                "",
            ),
            (
                &viewer,
                at(Patch, "pods", Some("app"), "web-1").subresource(Some("ephemeralcontainers")),
                "forbidden",
                "cannot patch resource \"pods/ephemeralcontainers\"",
            ),
            (
                &n1,
                at(Patch, "pods", Some("app"), "web-1").subresource(Some("ephemeralcontainers")),
                "forbidden",
                "",
            ),
            (&admin, at(Patch, "pods", Some("app"), "web-1"), "in-git", ""),
            (&admin, at(Patch, "nodes", None, "n1"), "allowed", ""),
            (
                &admin,
                at(Patch, "nodes", None, "n1").subresource(Some("status")),
                "forbidden",
                "may not patch",
            ),
            (
                &viewer,
                at(Create, "jobs", Some("app"), "by-hand").manual_run(true),
                "forbidden",
                "cannot create resource \"jobs\"",
            ),
            (&app_sa, at(Delete, "services", Some("app"), "s"), "in-git", ""),
            (&admin, at(Delete, "pods", Some("app"), "bare"), "in-git", ""),
            // `kubectl debug node/n2`: a pod made by hand is made and removed by hand.
            (
                &admin,
                at(Create, "pods", Some("app"), "node-debugger-n2-x").manual_run(true),
                "allowed",
                "",
            ),
            (&admin, at(Create, "pods", Some("app"), "web-2"), "in-git", ""),
            (
                &viewer,
                at(Create, "pods", Some("app"), "node-debugger-n2-x").manual_run(true),
                "forbidden",
                "cannot create resource \"pods\"",
            ),
            (&admin, at(Delete, "pods", Some("app"), "node-debugger-n2-x"), "allowed", ""),
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
                "User \"capstan:viewer\" cannot delete resource \"nodes\"",
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
                "cannot create resource \"serviceaccounts/token\"",
            ),
            (
                &viewer,
                at(Create, "serviceaccounts", Some("app"), "default").subresource(Some("token")),
                "forbidden",
                "cannot create resource \"serviceaccounts/token\"",
            ),
            // A token may not hold more than its asker: bot may not read pods, default may.
            (
                &bot,
                at(Create, "serviceaccounts", Some("app"), "default").subresource(Some("token")),
                "forbidden",
                "may not ask for a token of service account app/default: it may get pods in namespace \"app\"",
            ),
            (
                &bot,
                at(Create, "serviceaccounts", Some("app"), "bot").subresource(Some("token")),
                "allowed",
                "",
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
