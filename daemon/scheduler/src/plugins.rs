//! The plugins: filters that say whether a node can take a pod (with Kubernetes' reason when it
//! cannot), and scores that rank the nodes that can.

use crate::ResourceScoring;
use crate::model::{NodeInfo, PodInfo, Taint};
use crate::snapshot::CycleState;

/// A filter's verdict on one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    Success,
    /// The node cannot take the pod; the reason is counted in the "0/N nodes are available"
    /// message.
    Unschedulable(String),
}

pub trait FilterPlugin: Send + Sync {
    fn name(&self) -> &'static str;
    /// Whether this filter has nothing to check for `pod` (Kubernetes' PreFilter "Skip"), so
    /// that it is not called once per node.
    fn skip(&self, _state: &CycleState, _pod: &PodInfo) -> bool {
        false
    }
    fn filter(&self, state: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status;
}

pub trait ScorePlugin: Send + Sync {
    fn name(&self) -> &'static str;
    /// Whether every node would get the same score from this plugin for `pod` (PreScore "Skip").
    fn skip(&self, _state: &CycleState, _pod: &PodInfo) -> bool {
        false
    }
    /// A raw score for one feasible node.
    fn score(&self, state: &CycleState, pod: &PodInfo, node: &NodeInfo) -> i64;
    /// Scales the raw scores of all feasible nodes into 0..=100.
    fn normalize(&self, scores: &mut [i64]) {
        let max = scores.iter().copied().max().unwrap_or(0);
        let min = scores.iter().copied().min().unwrap_or(0);
        if max == min {
            scores.iter_mut().for_each(|s| *s = if max > 0 { 100 } else { 0 });
            return;
        }
        for s in scores.iter_mut() {
            *s = (*s - min) * 100 / (max - min);
        }
    }
}

fn no(reason: impl Into<String>) -> Status {
    Status::Unschedulable(reason.into())
}

/// Persistent volumes: a pod whose claims cannot be used yet fits nowhere; one whose claims are
/// bound to volumes of some nodes (local volumes) fits only there.
struct VolumeBinding;

/// Kubernetes' reason for a node a pod's bound volume cannot reach.
pub const VOLUME_CONFLICT: &str = "node(s) had volume node affinity conflict";

impl FilterPlugin for VolumeBinding {
    fn name(&self) -> &'static str {
        "VolumeBinding"
    }
    fn skip(&self, _: &CycleState, pod: &PodInfo) -> bool {
        pod.volumes == crate::model::VolumeNeeds::default()
    }
    fn filter(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status {
        if let Some(why) = &pod.volumes.blocked {
            return no(why.clone());
        }
        let reachable = pod.volumes.node_terms.iter().all(|terms| terms.iter().any(|t| t.matches(node)));
        if reachable { Status::Success } else { no(VOLUME_CONFLICT) }
    }
}

/// `spec.nodeName` set by the pod: only that node.
struct NodeName;

impl FilterPlugin for NodeName {
    fn name(&self) -> &'static str {
        "NodeName"
    }
    fn skip(&self, _: &CycleState, pod: &PodInfo) -> bool {
        pod.node_name.is_none()
    }
    fn filter(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status {
        match &pod.node_name {
            Some(n) if *n != node.name => no("node(s) didn't match the requested node name"),
            _ => Status::Success,
        }
    }
}

struct NodeUnschedulable;

impl FilterPlugin for NodeUnschedulable {
    fn name(&self) -> &'static str {
        "NodeUnschedulable"
    }
    fn filter(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status {
        let tolerated = pod.tolerations.iter().any(|t| {
            t.tolerates(&Taint {
                key: "node.kubernetes.io/unschedulable".into(),
                value: String::new(),
                effect: "NoSchedule".into(),
            })
        });
        if node.unschedulable && !tolerated {
            no("node(s) were unschedulable")
        } else {
            Status::Success
        }
    }
}

struct TaintToleration;

fn taint_text(t: &Taint) -> String {
    format!("{{{}: {}}}", t.key, t.value)
}

impl FilterPlugin for TaintToleration {
    fn name(&self) -> &'static str {
        "TaintToleration"
    }
    fn filter(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status {
        if let Some(t) = pod.untolerated(node) {
            return no(format!("node(s) had untolerated taint {}", taint_text(t)));
        }
        // A node that does not report Ready carries Kubernetes' implicit not-ready taint.
        if !node.ready {
            let t = Taint {
                key: capstan_api::defaults::TAINT_NOT_READY.into(),
                value: String::new(),
                effect: "NoSchedule".into(),
            };
            if !pod.tolerations.iter().any(|tol| tol.tolerates(&t)) {
                return no(format!("node(s) had untolerated taint {}", taint_text(&t)));
            }
        }
        Status::Success
    }
}

impl ScorePlugin for TaintToleration {
    fn name(&self) -> &'static str {
        "TaintToleration"
    }
    fn skip(&self, state: &CycleState, _: &PodInfo) -> bool {
        !state.prefer_no_schedule
    }
    /// Fewer untolerated PreferNoSchedule taints is better (negated count, normalised).
    fn score(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> i64 {
        -(node
            .taints
            .iter()
            .filter(|t| t.effect == "PreferNoSchedule" && !pod.tolerations.iter().any(|tol| tol.tolerates(t)))
            .count() as i64)
    }
}

/// Why a node fails a pod's node selector or required node affinity.
pub const AFFINITY_MISMATCH: &str = "node(s) didn't match Pod's node affinity/selector";

struct NodeAffinity;

impl FilterPlugin for NodeAffinity {
    fn name(&self) -> &'static str {
        "NodeAffinity"
    }
    fn skip(&self, _: &CycleState, pod: &PodInfo) -> bool {
        pod.node_selector.is_empty() && pod.node_required.is_empty()
    }
    fn filter(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status {
        if pod.admitted_by(node) {
            Status::Success
        } else {
            no(AFFINITY_MISMATCH)
        }
    }
}

impl ScorePlugin for NodeAffinity {
    fn name(&self) -> &'static str {
        "NodeAffinity"
    }
    fn skip(&self, _: &CycleState, pod: &PodInfo) -> bool {
        pod.node_preferred.is_empty()
    }
    fn score(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> i64 {
        pod.node_preferred
            .iter()
            .filter(|(_, term)| term.matches(&node.labels))
            .map(|(w, _)| *w)
            .sum()
    }
}

struct NodeResourcesFit {
    scoring: ResourceScoring,
}

impl FilterPlugin for NodeResourcesFit {
    fn name(&self) -> &'static str {
        "NodeResourcesFit"
    }
    fn filter(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status {
        let (a, r, p) = (&node.allocatable, &node.requested, &pod.requests);
        if a.pods > 0 && r.pods + 1 > a.pods {
            return no("Too many pods");
        }
        if p.cpu_milli > 0 && r.cpu_milli.saturating_add(p.cpu_milli) > a.cpu_milli {
            return no("Insufficient cpu");
        }
        if p.memory > 0 && r.memory.saturating_add(p.memory) > a.memory {
            return no("Insufficient memory");
        }
        for (name, want) in &p.extended {
            if *want > 0 && r.extended.get(name).copied().unwrap_or(0) + want > a.extended.get(name).copied().unwrap_or(0) {
                return no(format!("Insufficient {name}"));
            }
        }
        Status::Success
    }
}

/// The fraction of a resource in use after placing the pod, in 0..=100.
fn used_percent(requested: i64, pod: i64, allocatable: i64) -> i64 {
    if allocatable <= 0 {
        return 100;
    }
    ((i128::from(requested) + i128::from(pod)) * 100 / i128::from(allocatable)).clamp(0, 100) as i64
}

impl ScorePlugin for NodeResourcesFit {
    fn name(&self) -> &'static str {
        "NodeResourcesFit"
    }
    fn score(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> i64 {
        let cpu = used_percent(node.requested.cpu_milli, pod.requests.cpu_milli, node.allocatable.cpu_milli);
        let mem = used_percent(node.requested.memory, pod.requests.memory, node.allocatable.memory);
        let used = (cpu + mem) / 2;
        match self.scoring {
            ResourceScoring::LeastAllocated => 100 - used,
            ResourceScoring::MostAllocated => used,
        }
    }
    fn normalize(&self, _: &mut [i64]) {}
}

struct BalancedAllocation;

impl ScorePlugin for BalancedAllocation {
    fn name(&self) -> &'static str {
        "NodeResourcesBalancedAllocation"
    }
    fn score(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> i64 {
        let cpu = used_percent(node.requested.cpu_milli, pod.requests.cpu_milli, node.allocatable.cpu_milli);
        let mem = used_percent(node.requested.memory, pod.requests.memory, node.allocatable.memory);
        100 - (cpu - mem).abs()
    }
    fn normalize(&self, _: &mut [i64]) {}
}

struct NodePorts;

impl FilterPlugin for NodePorts {
    fn name(&self) -> &'static str {
        "NodePorts"
    }
    fn skip(&self, _: &CycleState, pod: &PodInfo) -> bool {
        pod.host_ports.is_empty()
    }
    fn filter(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status {
        if pod.host_ports.iter().any(|hp| node.host_ports.contains(hp)) {
            no("node(s) didn't have free ports for the requested pod ports")
        } else {
            Status::Success
        }
    }
}

struct InterPodAffinity;

impl FilterPlugin for InterPodAffinity {
    fn name(&self) -> &'static str {
        "InterPodAffinity"
    }
    fn skip(&self, state: &CycleState, _: &PodInfo) -> bool {
        state.anti_forbidden.is_empty() && state.existing_anti.is_empty() && state.affinity_allowed.is_empty()
    }
    fn filter(&self, state: &CycleState, _pod: &PodInfo, node: &NodeInfo) -> Status {
        for (key, forbidden) in &state.anti_forbidden {
            if node.labels.get(key).is_some_and(|d| forbidden.contains(d)) {
                return no("node(s) didn't match pod anti-affinity rules");
            }
        }
        for (key, domains) in &state.existing_anti {
            if node.labels.get(key).is_some_and(|d| domains.contains(d)) {
                return no("node(s) didn't satisfy existing pods anti-affinity rules");
            }
        }
        for (key, allowed) in &state.affinity_allowed {
            let ok = match (allowed, node.labels.get(key)) {
                (_, None) => false,
                (None, Some(_)) => true,
                (Some(domains), Some(d)) => domains.contains(d),
            };
            if !ok {
                return no("node(s) didn't match pod affinity rules");
            }
        }
        Status::Success
    }
}

impl ScorePlugin for InterPodAffinity {
    fn name(&self) -> &'static str {
        "InterPodAffinity"
    }
    fn skip(&self, state: &CycleState, _: &PodInfo) -> bool {
        state.preferred.is_empty()
    }
    fn score(&self, state: &CycleState, _: &PodInfo, node: &NodeInfo) -> i64 {
        state
            .preferred
            .iter()
            .map(|(key, counts, weight)| node.labels.get(key).and_then(|d| counts.get(d)).map_or(0, |c| c * weight))
            .sum()
    }
}

struct PodTopologySpread;

impl FilterPlugin for PodTopologySpread {
    fn name(&self) -> &'static str {
        "PodTopologySpread"
    }
    fn skip(&self, state: &CycleState, _: &PodInfo) -> bool {
        !state.spread.iter().any(|s| s.4)
    }
    fn filter(&self, state: &CycleState, _: &PodInfo, node: &NodeInfo) -> Status {
        for (key, counts, min, max_skew, hard) in &state.spread {
            if !hard {
                continue;
            }
            let Some(domain) = node.labels.get(key) else {
                return no("node(s) didn't match pod topology spread constraints (missing required label)");
            };
            let here = counts.counts.get(domain).copied().unwrap_or(0);
            if here + 1 - min > *max_skew {
                return no("node(s) didn't match pod topology spread constraints");
            }
        }
        Status::Success
    }
}

impl ScorePlugin for PodTopologySpread {
    fn name(&self) -> &'static str {
        "PodTopologySpread"
    }
    fn skip(&self, state: &CycleState, _: &PodInfo) -> bool {
        !state.spread.iter().any(|s| !s.4)
    }
    /// Fewer matching pods in the node's domain is better (soft constraints).
    fn score(&self, state: &CycleState, _: &PodInfo, node: &NodeInfo) -> i64 {
        -state
            .spread
            .iter()
            .filter(|s| !s.4)
            .map(|(key, counts, ..)| node.labels.get(key).and_then(|d| counts.counts.get(d)).copied().unwrap_or(0))
            .sum::<i64>()
    }
}

/// Every filter, cheapest first.
pub fn default_filters() -> Vec<Box<dyn FilterPlugin>> {
    vec![
        Box::new(NodeName),
        Box::new(NodeUnschedulable),
        Box::new(TaintToleration),
        Box::new(NodeAffinity),
        Box::new(NodeResourcesFit {
            scoring: ResourceScoring::LeastAllocated,
        }),
        Box::new(NodePorts),
        Box::new(VolumeBinding),
        Box::new(InterPodAffinity),
        Box::new(PodTopologySpread),
    ]
}

/// The scores with Kubernetes' default weights.
pub fn default_scores(scoring: ResourceScoring) -> Vec<(Box<dyn ScorePlugin>, i64)> {
    vec![
        (Box::new(TaintToleration), 3),
        (Box::new(NodeAffinity), 2),
        (Box::new(NodeResourcesFit { scoring }), 1),
        (Box::new(BalancedAllocation), 1),
        (Box::new(InterPodAffinity), 2),
        (Box::new(PodTopologySpread), 2),
    ]
}
