//! What the scheduler sees: nodes (allocatable, labels, taints, the pods placed on them) and
//! pods (requests, selectors, affinities, tolerations, spread constraints), read once from the
//! API objects into plain structs so that the plugins never touch JSON.

use capstan_api::quantity::Quantity;
pub use capstan_api::selector::Selector;
use capstan_api::selector::{Operator, Requirement};
use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;

pub type Labels = BTreeMap<String, String>;

/// Amounts of resources: cpu in millicores, memory in bytes, a pod count, and extended resources.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    pub cpu_milli: i64,
    pub memory: i64,
    pub pods: i64,
    pub extended: BTreeMap<String, i64>,
}

impl Resources {
    /// Adds `other`, saturating: sums of absurd requests must read as "full", never wrap.
    pub fn add(&mut self, other: &Resources) {
        self.cpu_milli = self.cpu_milli.saturating_add(other.cpu_milli);
        self.memory = self.memory.saturating_add(other.memory);
        self.pods = self.pods.saturating_add(other.pods);
        for (k, v) in &other.extended {
            let sum = self.extended.entry(k.clone()).or_default();
            *sum = sum.saturating_add(*v);
        }
    }

    pub fn sub(&mut self, other: &Resources) {
        self.cpu_milli = self.cpu_milli.saturating_sub(other.cpu_milli);
        self.memory = self.memory.saturating_sub(other.memory);
        self.pods = self.pods.saturating_sub(other.pods);
        for (k, v) in &other.extended {
            let sum = self.extended.entry(k.clone()).or_default();
            *sum = sum.saturating_sub(*v);
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Taint {
    pub key: String,
    pub value: String,
    pub effect: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Toleration {
    pub key: String,
    pub operator: String,
    pub value: String,
    pub effect: String,
}

impl Toleration {
    pub fn tolerates(&self, t: &Taint) -> bool {
        if !self.effect.is_empty() && self.effect != t.effect {
            return false;
        }
        if self.operator == "Exists" {
            return self.key.is_empty() || self.key == t.key;
        }
        self.key == t.key && self.value == t.value
    }
}

/// A required node-affinity term: requirements on the node's labels (`matchExpressions`) and
/// on its fields (`matchFields`; Kubernetes knows one, `metadata.name`, which pins a
/// DaemonSet's pod to its node).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeTerm {
    pub labels: Selector,
    pub fields: Selector,
}

impl NodeTerm {
    pub fn from_json(term: &Value) -> NodeTerm {
        NodeTerm {
            labels: Selector::from_expressions(&term["matchExpressions"]),
            fields: Selector::from_expressions(&term["matchFields"]),
        }
    }

    pub fn matches(&self, node: &NodeInfo) -> bool {
        self.labels.matches(&node.labels) && self.fields.matches_with(|f| (f == "metadata.name").then_some(node.name.as_str()))
    }

    /// The node names the term allows, when its fields pin it to a list of names.
    pub fn names(&self) -> Option<&[String]> {
        self.fields
            .0
            .iter()
            .find(|r| r.key == "metadata.name" && r.operator == Operator::In)
            .map(|r| r.values.as_slice())
    }
}

/// A PodDisruptionBudget as preemption weighs it: the pods it covers and how many of them may
/// go now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Budget {
    pub namespace: String,
    pub selector: Selector,
    pub allowed: i64,
}

impl Budget {
    pub fn covers(&self, pod: &PodInfo) -> bool {
        pod.namespace == self.namespace && self.selector.matches(&pod.labels)
    }
}

/// How many of `victims` would be evicted beyond their budgets (Kubernetes counts these
/// "PDB violations" and prefers the preemption with fewest).
pub fn violations<'a>(budgets: &[Budget], victims: impl IntoIterator<Item = &'a PodInfo>) -> usize {
    let mut left: Vec<i64> = budgets.iter().map(|b| b.allowed).collect();
    let mut over = 0;
    for v in victims {
        if let Some(i) = budgets.iter().position(|b| b.covers(v)) {
            left[i] -= 1;
            if left[i] < 0 {
                over += 1;
            }
        }
    }
    over
}

/// A pod affinity or anti-affinity term: pods matching `selector` in `namespaces` (empty: the
/// pod's own), within the same `topology_key` domain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodAffinityTerm {
    pub selector: Selector,
    pub namespaces: Vec<String>,
    pub topology_key: String,
    pub weight: i64,
}

impl PodAffinityTerm {
    pub fn selects(&self, owner_namespace: &str, other: &PodInfo) -> bool {
        let ns_ok = if self.namespaces.is_empty() {
            other.namespace == owner_namespace
        } else {
            self.namespaces.contains(&other.namespace)
        };
        ns_ok && self.selector.matches(&other.labels)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpreadConstraint {
    pub max_skew: i64,
    pub topology_key: String,
    pub do_not_schedule: bool,
    /// The label selector, with `matchLabelKeys` turned into requirements on the pod's values.
    pub selector: Selector,
    /// `nodeAffinityPolicy: Honor` (the default): only nodes the pod's node selector and
    /// required node affinity admit count.
    pub honor_affinity: bool,
    /// `nodeTaintsPolicy: Honor` (default Ignore): only nodes whose taints the pod tolerates count.
    pub honor_taints: bool,
}

/// A pod, as far as scheduling goes.
#[derive(Clone, Debug, Default)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub labels: Labels,
    pub requests: Resources,
    pub priority: i64,
    /// Whether it may evict lower-priority pods (`preemptionPolicy` is not `Never`).
    pub preempts: bool,
    /// `spec.nodeName` asked for by the pod itself (the NodeName plugin).
    pub node_name: Option<String>,
    pub node_selector: Labels,
    /// Required node affinity: any of these terms (each all of its requirements).
    pub node_required: Vec<NodeTerm>,
    pub node_preferred: Vec<(i64, Selector)>,
    pub affinity_required: Vec<PodAffinityTerm>,
    pub affinity_preferred: Vec<PodAffinityTerm>,
    pub anti_required: Vec<PodAffinityTerm>,
    pub anti_preferred: Vec<PodAffinityTerm>,
    pub tolerations: Vec<Toleration>,
    pub spread: Vec<SpreadConstraint>,
    pub host_ports: Vec<(String, i64)>,
    /// What the pod's volumes ask of a node (filled in by the caller, which knows the claims).
    pub volumes: VolumeNeeds,
}

/// What a pod's persistent volumes ask of the node it goes to.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct VolumeNeeds {
    /// Why no node can take the pod yet (a claim that is missing, being deleted, or waiting to
    /// be bound), in Kubernetes' words.
    pub blocked: Option<String>,
    /// The node affinity of each volume the pod's claims are bound to: the node must match one
    /// term of every entry.
    pub node_terms: Vec<Vec<NodeTerm>>,
}

/// A node and what is placed on it.
#[derive(Clone, Debug, Default)]
pub struct NodeInfo {
    pub name: String,
    pub labels: Labels,
    pub taints: Vec<Taint>,
    pub unschedulable: bool,
    pub ready: bool,
    pub allocatable: Resources,
    pub requested: Resources,
    pub pods: Vec<Arc<PodInfo>>,
    pub host_ports: Vec<(String, i64)>,
}

impl NodeInfo {
    pub fn add_pod(&mut self, pod: Arc<PodInfo>) {
        self.requested.add(&pod.requests);
        self.host_ports.extend(pod.host_ports.iter().cloned());
        self.pods.push(pod);
    }

    pub fn remove_pod(&mut self, namespace: &str, name: &str) -> Option<Arc<PodInfo>> {
        let i = self.pods.iter().position(|p| p.namespace == namespace && p.name == name)?;
        let pod = self.pods.swap_remove(i);
        self.requested.sub(&pod.requests);
        for hp in &pod.host_ports {
            if let Some(j) = self.host_ports.iter().position(|h| h == hp) {
                self.host_ports.swap_remove(j);
            }
        }
        Some(pod)
    }
}

fn labels(v: &Value) -> Labels {
    v.as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

fn resources(v: &Value) -> Resources {
    let mut r = Resources::default();
    if let Some(m) = v.as_object() {
        for (k, q) in m {
            match k.as_str() {
                "cpu" => r.cpu_milli = Quantity::of(q).milli_value(),
                "memory" => r.memory = Quantity::of(q).value(),
                "pods" => r.pods = Quantity::of(q).value(),
                "ephemeral-storage" => {}
                other => {
                    r.extended.insert(other.to_owned(), Quantity::of(q).value());
                }
            }
        }
    }
    r
}

fn affinity_terms(v: &Value, weighted: bool) -> Vec<PodAffinityTerm> {
    v.as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            let (term, weight) = if weighted {
                (&t["podAffinityTerm"], t["weight"].as_i64().unwrap_or(1))
            } else {
                (t, 1)
            };
            PodAffinityTerm {
                selector: Selector::from_json(&term["labelSelector"]),
                namespaces: term["namespaces"]
                    .as_array()
                    .map(|n| n.iter().filter_map(|x| x.as_str().map(str::to_owned)).collect())
                    .unwrap_or_default(),
                topology_key: term["topologyKey"].as_str().unwrap_or_default().to_owned(),
                weight,
            }
        })
        .collect()
}

impl PodInfo {
    /// Whether the pod's node selector and required node affinity admit `node`.
    pub fn admitted_by(&self, node: &NodeInfo) -> bool {
        self.node_selector.iter().all(|(k, v)| node.labels.get(k) == Some(v))
            && (self.node_required.is_empty() || self.node_required.iter().any(|term| term.matches(node)))
    }

    /// The only nodes the pod's required node affinity allows, when every term pins it to names
    /// (a DaemonSet's pod): the scheduler need not look at the others (Kubernetes' NodeAffinity
    /// PreFilter).
    pub fn pinned_nodes(&self) -> Option<Vec<&str>> {
        if self.node_required.is_empty() {
            return None;
        }
        let mut names = Vec::new();
        for term in &self.node_required {
            names.extend(term.names()?.iter().map(String::as_str));
        }
        Some(names)
    }

    /// The first of `node`'s NoSchedule or NoExecute taints the pod does not tolerate.
    pub fn untolerated<'a>(&self, node: &'a NodeInfo) -> Option<&'a Taint> {
        node.taints
            .iter()
            .find(|t| (t.effect == "NoSchedule" || t.effect == "NoExecute") && !self.tolerations.iter().any(|tol| tol.tolerates(t)))
    }

    /// Reads a Pod object.
    pub fn from_json(pod: &Value) -> PodInfo {
        let spec = &pod["spec"];
        let mut requests = Resources {
            pods: 1,
            ..Resources::default()
        };
        for c in spec["containers"].as_array().into_iter().flatten() {
            requests.add(&resources(&c["resources"]["requests"]));
        }
        // Init containers run one at a time: the pod needs the largest of them, if larger.
        for c in spec["initContainers"].as_array().into_iter().flatten() {
            let r = resources(&c["resources"]["requests"]);
            requests.cpu_milli = requests.cpu_milli.max(r.cpu_milli);
            requests.memory = requests.memory.max(r.memory);
        }
        let affinity = &spec["affinity"];
        let host_ports = spec["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|c| c["ports"].as_array().cloned().unwrap_or_default())
            .filter_map(|p| {
                p["hostPort"]
                    .as_i64()
                    .filter(|h| *h > 0)
                    .map(|h| (p["protocol"].as_str().unwrap_or("TCP").to_owned(), h))
            })
            .collect();
        PodInfo {
            namespace: pod["metadata"]["namespace"].as_str().unwrap_or_default().to_owned(),
            name: pod["metadata"]["name"].as_str().unwrap_or_default().to_owned(),
            uid: pod["metadata"]["uid"].as_str().unwrap_or_default().to_owned(),
            labels: labels(&pod["metadata"]["labels"]),
            requests,
            priority: spec["priority"].as_i64().unwrap_or(0),
            preempts: spec["preemptionPolicy"] != "Never",
            node_name: spec["nodeName"].as_str().filter(|n| !n.is_empty()).map(str::to_owned),
            node_selector: labels(&spec["nodeSelector"]),
            node_required: affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
                .as_array()
                .into_iter()
                .flatten()
                .map(NodeTerm::from_json)
                .collect(),
            node_preferred: affinity["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| {
                    (
                        p["weight"].as_i64().unwrap_or(1),
                        Selector::from_expressions(&p["preference"]["matchExpressions"]),
                    )
                })
                .collect(),
            affinity_required: affinity_terms(&affinity["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"], false),
            affinity_preferred: affinity_terms(&affinity["podAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"], true),
            anti_required: affinity_terms(
                &affinity["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"],
                false,
            ),
            anti_preferred: affinity_terms(
                &affinity["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"],
                true,
            ),
            tolerations: spec["tolerations"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|t| Toleration {
                    key: t["key"].as_str().unwrap_or_default().to_owned(),
                    operator: t["operator"].as_str().unwrap_or("Equal").to_owned(),
                    value: t["value"].as_str().unwrap_or_default().to_owned(),
                    effect: t["effect"].as_str().unwrap_or_default().to_owned(),
                })
                .collect(),
            spread: spec["topologySpreadConstraints"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| {
                    let mut selector = Selector::from_json(&c["labelSelector"]);
                    for key in c["matchLabelKeys"].as_array().into_iter().flatten().filter_map(Value::as_str) {
                        if let Some(v) = pod["metadata"]["labels"][key].as_str() {
                            selector.0.push(Requirement {
                                key: key.to_owned(),
                                operator: Operator::In,
                                values: vec![v.to_owned()],
                            });
                        }
                    }
                    SpreadConstraint {
                        max_skew: c["maxSkew"].as_i64().unwrap_or(1).max(1),
                        topology_key: c["topologyKey"].as_str().unwrap_or_default().to_owned(),
                        do_not_schedule: c["whenUnsatisfiable"].as_str().unwrap_or("DoNotSchedule") == "DoNotSchedule",
                        selector,
                        honor_affinity: c["nodeAffinityPolicy"].as_str() != Some("Ignore"),
                        honor_taints: c["nodeTaintsPolicy"].as_str() == Some("Honor"),
                    }
                })
                .collect(),
            host_ports,
            volumes: VolumeNeeds::default(),
        }
    }
}

impl NodeInfo {
    /// Reads a Node object (without its pods).
    pub fn from_json(node: &Value) -> NodeInfo {
        let status = &node["status"];
        let alloc = if status["allocatable"].is_object() {
            &status["allocatable"]
        } else {
            &status["capacity"]
        };
        NodeInfo {
            name: node["metadata"]["name"].as_str().unwrap_or_default().to_owned(),
            labels: labels(&node["metadata"]["labels"]),
            taints: node["spec"]["taints"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|t| Taint {
                    key: t["key"].as_str().unwrap_or_default().to_owned(),
                    value: t["value"].as_str().unwrap_or_default().to_owned(),
                    effect: t["effect"].as_str().unwrap_or_default().to_owned(),
                })
                .collect(),
            unschedulable: node["spec"]["unschedulable"] == true,
            ready: status["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True"),
            allocatable: resources(alloc),
            ..NodeInfo::default()
        }
    }
}
