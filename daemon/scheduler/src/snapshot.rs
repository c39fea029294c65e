//! The cluster as the scheduler sees it: nodes with the pods placed on them, kept up to date
//! incrementally (a node changes, a pod is assumed or removed), plus the per-pod pre-computation
//! (the cycle state) that lets each node's filters run in constant time: which topology domains
//! an affinity term allows or forbids, and how many matching pods each spread domain holds.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use crate::model::{NodeInfo, PodAffinityTerm, PodInfo, Selector};

/// Counts of matching pods per topology domain, for one spread constraint.
#[derive(Clone, Debug, Default)]
pub struct SpreadCounts {
    pub counts: HashMap<String, i64>,
}

/// A set of topology domains: a plain set, or the domains with a non-zero count.
#[derive(Clone, Debug)]
pub enum Domains {
    Set(HashSet<String>),
    Counts(Arc<SpreadCounts>),
}

impl Domains {
    pub fn contains(&self, domain: &str) -> bool {
        match self {
            Domains::Set(s) => s.contains(domain),
            Domains::Counts(c) => c.counts.get(domain).is_some_and(|n| *n > 0),
        }
    }

    pub fn is_empty(&self) -> bool {
        match self {
            Domains::Set(s) => s.is_empty(),
            Domains::Counts(c) => c.counts.values().all(|n| *n <= 0),
        }
    }
}

/// What the plugins need to know about one pod against the whole cluster.
#[derive(Debug, Default)]
pub struct CycleState {
    /// Required anti-affinity of the pod: per term, the topology key and the domains that
    /// already hold a matching pod.
    pub anti_forbidden: Vec<(String, Domains)>,
    /// Domains forbidden because a placed pod's required anti-affinity matches this pod, per
    /// topology key.
    pub existing_anti: Vec<(String, Domains)>,
    /// Required affinity: per term, the key and the domains holding a matching pod; None when no
    /// pod matches anywhere and the pod matches its own term (the first of a group may go
    /// anywhere).
    pub affinity_allowed: Vec<(String, Option<HashSet<String>>)>,
    /// Spread constraints: key, counts, the smallest count over eligible domains, max skew,
    /// whether it is hard.
    pub spread: Vec<(String, Arc<SpreadCounts>, i64, i64, bool)>,
    /// Preferred (anti-)affinity: key, matching pods per domain, weight (negative for anti).
    pub preferred: Vec<(String, HashMap<String, i64>, i64)>,
    /// Whether any node has a PreferNoSchedule taint (else that score is the same everywhere).
    pub prefer_no_schedule: bool,
}

/// See the module documentation.
#[derive(Default)]
pub struct Snapshot {
    nodes: Vec<NodeInfo>,
    index: HashMap<String, usize>,
    /// Placed pods that carry required anti-affinity terms (usually few).
    anti_pods: Vec<(usize, Arc<PodInfo>)>,
    /// Placed pods' required anti-affinity terms grouped by (namespace, term): the term and its
    /// pods per domain, so that an incoming pod is checked against each group once.
    anti_groups: HashMap<(String, String), (PodAffinityTerm, Arc<SpreadCounts>)>,
    /// Domains per topology key (for the minimum of spread counts).
    domains: HashMap<String, HashSet<String>>,
    prefer_no_schedule: bool,
    /// Matching pods per domain, by (namespace, selector signature, key), with the selector, kept
    /// current as pods are assumed.
    spread_cache: Mutex<HashMap<(String, String, String), (Selector, Arc<SpreadCounts>)>>,
    /// Where the cluster's disruption budgets are read, when preemption weighs them (only
    /// then: most pods never need it).
    budgets: Option<BudgetSource>,
}

/// Reads the disruption budgets as they stand.
pub type BudgetSource = std::sync::Arc<dyn Fn() -> Vec<crate::model::Budget> + Send + Sync>;

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Snapshot({} nodes)", self.nodes.len())
    }
}

impl Snapshot {
    pub fn new() -> Snapshot {
        Snapshot::default()
    }

    pub fn nodes(&self) -> &[NodeInfo] {
        &self.nodes
    }

    pub fn node(&self, name: &str) -> Option<&NodeInfo> {
        self.index.get(name).map(|i| &self.nodes[*i])
    }

    /// The disruption budgets preemption weighs, read now.
    pub fn budgets(&self) -> Vec<crate::model::Budget> {
        self.budgets.as_ref().map(|read| read()).unwrap_or_default()
    }

    /// Where to read the disruption budgets from.
    pub fn read_budgets_with(&mut self, source: BudgetSource) {
        self.budgets = Some(source);
    }

    /// Where node `name` is in [`Snapshot::nodes`].
    pub fn position(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    fn index_domains(&mut self, node: &NodeInfo) {
        self.prefer_no_schedule |= node.taints.iter().any(|t| t.effect == "PreferNoSchedule");
        for (k, v) in &node.labels {
            self.domains.entry(k.clone()).or_default().insert(v.clone());
        }
    }

    /// Adds a node, or updates it keeping its pods.
    pub fn upsert_node(&mut self, mut node: NodeInfo) {
        self.index_domains(&node);
        match self.index.get(&node.name) {
            Some(&i) => {
                let old = std::mem::take(&mut self.nodes[i]);
                node.pods = old.pods;
                node.requested = old.requested;
                node.host_ports = old.host_ports;
                if old.labels != node.labels {
                    self.spread_cache.lock().unwrap_or_else(|p| p.into_inner()).clear();
                }
                self.nodes[i] = node;
            }
            None => {
                self.index.insert(node.name.clone(), self.nodes.len());
                self.nodes.push(node);
                self.spread_cache.lock().unwrap_or_else(|p| p.into_inner()).clear();
            }
        }
    }

    pub fn remove_node(&mut self, name: &str) {
        let Some(i) = self.index.remove(name) else { return };
        self.nodes.swap_remove(i);
        if i < self.nodes.len() {
            let moved = self.nodes[i].name.clone();
            self.index.insert(moved, i);
        }
        self.anti_pods.retain(|(n, _)| *n != i);
        let last = self.nodes.len();
        for (n, _) in self.anti_pods.iter_mut() {
            if *n == last {
                *n = i;
            }
        }
        self.anti_groups.clear();
        for (n, p) in self.anti_pods.clone() {
            self.group_anti(n, &p, 1);
        }
        self.spread_cache.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// Records `pod` as placed on `node` (bound, or about to be).
    pub fn assume(&mut self, pod: PodInfo, node: &str) -> bool {
        let Some(&i) = self.index.get(node) else { return false };
        let pod = Arc::new(pod);
        if !pod.anti_required.is_empty() {
            self.anti_pods.push((i, pod.clone()));
            self.group_anti(i, &pod, 1);
        }
        let mut cache = self.spread_cache.lock().unwrap_or_else(|p| p.into_inner());
        for ((ns, _, key), (selector, counts)) in cache.iter_mut() {
            if *ns == pod.namespace
                && selector.matches(&pod.labels)
                && let Some(domain) = self.nodes[i].labels.get(key)
            {
                *Arc::make_mut(counts).counts.entry(domain.clone()).or_default() += 1;
            }
        }
        drop(cache);
        self.nodes[i].add_pod(pod);
        true
    }

    /// Removes a placed pod (deleted, or moved).
    pub fn remove_pod(&mut self, namespace: &str, name: &str, node: &str) {
        let Some(&i) = self.index.get(node) else { return };
        if let Some(pod) = self.nodes[i].remove_pod(namespace, name) {
            self.anti_pods.retain(|(_, p)| !(p.namespace == namespace && p.name == name));
            self.group_anti(i, &pod, -1);
            self.spread_cache
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|(ns, _, _), _| ns != namespace);
        }
    }

    fn group_anti(&mut self, node: usize, pod: &PodInfo, delta: i64) {
        for term in &pod.anti_required {
            let Some(domain) = self.nodes[node].labels.get(&term.topology_key) else {
                continue;
            };
            let key = (
                pod.namespace.clone(),
                format!("{}|{:?}|{}", term.selector.signature(), term.namespaces, term.topology_key),
            );
            let entry = self
                .anti_groups
                .entry(key)
                .or_insert_with(|| (term.clone(), Arc::new(SpreadCounts::default())));
            *Arc::make_mut(&mut entry.1).counts.entry(domain.clone()).or_default() += delta;
        }
    }

    fn all_pods(&self) -> impl Iterator<Item = (&NodeInfo, &Arc<PodInfo>)> {
        self.nodes.iter().flat_map(|n| n.pods.iter().map(move |p| (n, p)))
    }

    /// Domains (values of `key`) of nodes holding a pod that `term` selects.
    fn domains_with(&self, owner_ns: &str, term: &PodAffinityTerm, skip: &[Arc<PodInfo>]) -> HashSet<String> {
        let mut out = HashSet::new();
        for (node, p) in self.all_pods() {
            if skip.iter().any(|s| s.namespace == p.namespace && s.name == p.name) {
                continue;
            }
            if let Some(d) = node.labels.get(&term.topology_key)
                && !out.contains(d)
                && term.selects(owner_ns, p)
            {
                out.insert(d.clone());
            }
        }
        out
    }

    fn spread_counts(&self, ns: &str, selector: &Selector, key: &str) -> Arc<SpreadCounts> {
        let cache_key = (ns.to_owned(), selector.signature(), key.to_owned());
        if let Some((_, c)) = self.spread_cache.lock().unwrap_or_else(|p| p.into_inner()).get(&cache_key) {
            return c.clone();
        }
        let mut counts = SpreadCounts::default();
        for (node, p) in self.all_pods() {
            if p.namespace == ns
                && selector.matches(&p.labels)
                && let Some(d) = node.labels.get(key)
            {
                *counts.counts.entry(d.clone()).or_default() += 1;
            }
        }
        let counts = Arc::new(counts);
        self.spread_cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(cache_key, (selector.clone(), counts.clone()));
        counts
    }

    /// Matching pods per domain and the smallest count, over the nodes `eligible` admits only
    /// (a spread constraint honouring the pod's node affinity or the nodes' taints; not cached).
    fn spread_counts_on(&self, ns: &str, selector: &Selector, key: &str, eligible: impl Fn(&NodeInfo) -> bool) -> (Arc<SpreadCounts>, i64) {
        let mut counts = SpreadCounts::default();
        for node in self.nodes.iter().filter(|n| eligible(n)) {
            let Some(d) = node.labels.get(key) else { continue };
            let n = node
                .pods
                .iter()
                .filter(|p| p.namespace == ns && selector.matches(&p.labels))
                .count() as i64;
            *counts.counts.entry(d.clone()).or_default() += n;
        }
        let min = counts.counts.values().copied().min().unwrap_or(0);
        (Arc::new(counts), min)
    }

    /// The cycle state of `pod`.
    pub fn cycle_state(&self, pod: &PodInfo) -> CycleState {
        self.cycle_state_without(pod, &[])
    }

    /// The cycle state of `pod` as if `gone` were not placed (for preemption).
    pub fn cycle_state_without(&self, pod: &PodInfo, gone: &[Arc<PodInfo>]) -> CycleState {
        let mut state = CycleState {
            prefer_no_schedule: self.prefer_no_schedule,
            ..CycleState::default()
        };
        for term in &pod.anti_required {
            let domains = if gone.is_empty() && term.namespaces.is_empty() {
                // The same counts the spread constraints keep: domains holding a matching pod.
                Domains::Counts(self.spread_counts(&pod.namespace, &term.selector, &term.topology_key))
            } else {
                Domains::Set(self.domains_with(&pod.namespace, term, gone))
            };
            state.anti_forbidden.push((term.topology_key.clone(), domains));
        }
        if gone.is_empty() {
            for ((ns, _), (term, counts)) in &self.anti_groups {
                if term.selects(ns, pod) {
                    state
                        .existing_anti
                        .push((term.topology_key.clone(), Domains::Counts(counts.clone())));
                }
            }
        } else {
            let mut forbidden: HashMap<String, HashSet<String>> = HashMap::new();
            for (i, placed) in &self.anti_pods {
                if gone.iter().any(|g| g.namespace == placed.namespace && g.name == placed.name) {
                    continue;
                }
                for term in &placed.anti_required {
                    if term.selects(&placed.namespace, pod)
                        && let Some(d) = self.nodes[*i].labels.get(&term.topology_key)
                    {
                        forbidden.entry(term.topology_key.clone()).or_default().insert(d.clone());
                    }
                }
            }
            state.existing_anti.extend(forbidden.into_iter().map(|(k, d)| (k, Domains::Set(d))));
        }
        for term in &pod.affinity_required {
            let domains = self.domains_with(&pod.namespace, term, gone);
            let allowed = if domains.is_empty() && term.selects(&pod.namespace, pod) {
                None
            } else {
                Some(domains)
            };
            state.affinity_allowed.push((term.topology_key.clone(), allowed));
        }
        for c in &pod.spread {
            let narrowed = (c.honor_affinity && (!pod.node_selector.is_empty() || !pod.node_required.is_empty()))
                || (c.honor_taints && self.nodes.iter().any(|n| pod.untolerated(n).is_some()));
            let (counts, min) = if narrowed {
                let eligible =
                    |n: &NodeInfo| (!c.honor_affinity || pod.admitted_by(n)) && (!c.honor_taints || pod.untolerated(n).is_none());
                self.spread_counts_on(&pod.namespace, &c.selector, &c.topology_key, eligible)
            } else {
                let counts = self.spread_counts(&pod.namespace, &c.selector, &c.topology_key);
                let min = self
                    .domains
                    .get(&c.topology_key)
                    .map(|ds| ds.iter().map(|d| counts.counts.get(d).copied().unwrap_or(0)).min().unwrap_or(0))
                    .unwrap_or(0);
                (counts, min)
            };
            state
                .spread
                .push((c.topology_key.clone(), counts, min, c.max_skew, c.do_not_schedule));
        }
        for (terms, sign) in [(&pod.affinity_preferred, 1i64), (&pod.anti_preferred, -1i64)] {
            for term in terms {
                let mut per_domain: HashMap<String, i64> = HashMap::new();
                for (node, p) in self.all_pods() {
                    if let Some(d) = node.labels.get(&term.topology_key)
                        && term.selects(&pod.namespace, p)
                    {
                        *per_domain.entry(d.clone()).or_default() += 1;
                    }
                }
                state.preferred.push((term.topology_key.clone(), per_domain, term.weight * sign));
            }
        }
        state
    }
}
