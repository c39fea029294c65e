//! Capstan's scheduler: pure placement over an immutable snapshot of the cluster, in the shape
//! of the Kubernetes scheduling framework. For each pod, filter plugins say which nodes can take
//! it (and why the others cannot), score plugins rank the feasible ones, and the best wins (ties
//! broken by a seeded random choice, so a run is reproducible). A pod that fits nowhere is a
//! result with per-node reasons, not an error; a high-priority one may preempt lower-priority
//! pods. No IO and no clock: the daemon's scheduling loop feeds it and binds.
//!
//! ```text
//! pod ─► pre-filter (cycle state) ─► filter × sampled nodes ─► score × feasible ─► pick ─► Bind
//!                                         │ none feasible
//!                                         └─► preemption? ─► Preempt(node, victims) | Unschedulable(reasons)
//! ```

pub mod model;
mod plugins;
mod snapshot;

use std::collections::BTreeMap;

pub use model::{NodeInfo, PodInfo, Resources};
pub use plugins::{FilterPlugin, ScorePlugin, Status};
pub use snapshot::Snapshot;

/// How nodes are scored for resources.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResourceScoring {
    /// Spread load: prefer the emptiest node (Kubernetes' default).
    LeastAllocated,
    /// Bin-pack: prefer the fullest node that still fits.
    MostAllocated,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub scoring: ResourceScoring,
    /// Percentage of nodes to find feasible before scoring; None: Kubernetes' adaptive value
    /// (50 % minus 1 % per 125 nodes, at least 5 %), and never fewer than 100 nodes.
    pub percentage_of_nodes_to_score: Option<u32>,
    pub seed: u64,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            scoring: ResourceScoring::LeastAllocated,
            percentage_of_nodes_to_score: None,
            seed: 1,
        }
    }
}

/// The outcome of scheduling one pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Bind(String),
    /// Fits once these lower-priority pods (namespace, name) leave this node.
    Preempt {
        node: String,
        victims: Vec<(String, String)>,
    },
    Unschedulable(Unschedulable),
}

/// Why a pod fits nowhere: how many nodes gave each reason.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Unschedulable {
    pub nodes: usize,
    pub reasons: BTreeMap<String, usize>,
}

impl Unschedulable {
    /// Kubernetes' message: `0/5 nodes are available: 2 Insufficient cpu, 3 node(s) had
    /// untolerated taint {dedicated: gpu}.`
    pub fn message(&self) -> String {
        if self.nodes == 0 {
            return "0/0 nodes are available: no nodes are registered.".into();
        }
        let mut parts: Vec<String> = self.reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
        parts.sort();
        format!("0/{} nodes are available: {}.", self.nodes, parts.join(", "))
    }
}

/// A small deterministic generator (xorshift64*) for tie-breaking.
#[derive(Clone, Debug)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545F4914F6CDD1D)
    }
}

/// The scheduler: plugins, configuration, and the little state that carries between pods (where
/// the next node search starts, the tie-break generator).
pub struct Scheduler {
    config: Config,
    filters: Vec<Box<dyn FilterPlugin>>,
    scores: Vec<(Box<dyn ScorePlugin>, i64)>,
    next_start: usize,
    rng: Rng,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Scheduler({:?})", self.config)
    }
}

impl Scheduler {
    /// The default profile: every filter, and the scores with Kubernetes' weights.
    pub fn new(config: Config) -> Scheduler {
        let rng = Rng(config.seed.max(1));
        Scheduler {
            filters: plugins::default_filters(),
            scores: plugins::default_scores(config.scoring),
            config,
            next_start: 0,
            rng,
        }
    }

    fn nodes_to_find(&self, total: usize) -> usize {
        if total <= 100 {
            return total;
        }
        let pct = self
            .config
            .percentage_of_nodes_to_score
            .unwrap_or_else(|| (50i64 - total as i64 / 125).max(5) as u32)
            .clamp(1, 100);
        ((total * pct as usize) / 100).max(100).min(total)
    }

    /// Places one pod on the snapshot's nodes (without changing the snapshot: the caller
    /// assumes the pod onto the chosen node once it is bound).
    pub fn schedule(&mut self, snapshot: &Snapshot, pod: &PodInfo) -> Decision {
        let state = snapshot.cycle_state(pod);
        let nodes = snapshot.nodes();
        let mut unschedulable = Unschedulable {
            nodes: nodes.len(),
            ..Default::default()
        };
        if nodes.is_empty() {
            return Decision::Unschedulable(unschedulable);
        }
        let want = self.nodes_to_find(nodes.len());
        let filters: Vec<&dyn FilterPlugin> = self.filters.iter().map(|f| f.as_ref()).filter(|f| !f.skip(&state, pod)).collect();
        let mut feasible: Vec<usize> = Vec::with_capacity(want);
        let start = self.next_start % nodes.len();
        let mut visited = 0;
        // A pod pinned to named nodes is checked against those only; the rest fail its affinity.
        let pinned: Option<Vec<usize>> = pod
            .pinned_nodes()
            .map(|names| names.iter().filter_map(|n| snapshot.position(n)).collect());
        let order: Box<dyn Iterator<Item = usize>> = match &pinned {
            Some(only) => {
                let others = nodes.len() - only.len();
                if others > 0 {
                    *unschedulable.reasons.entry(plugins::AFFINITY_MISMATCH.into()).or_default() += others;
                }
                Box::new(only.iter().copied())
            }
            None => Box::new((0..nodes.len()).map(|offset| (start + offset) % nodes.len())),
        };
        for i in order {
            visited += 1;
            match filters
                .iter()
                .map(|f| f.filter(&state, pod, &nodes[i]))
                .find(|s| *s != Status::Success)
            {
                None => {
                    feasible.push(i);
                    if feasible.len() >= want {
                        break;
                    }
                }
                Some(Status::Unschedulable(reason)) => *unschedulable.reasons.entry(reason).or_default() += 1,
                Some(Status::Success) => unreachable!("filtered out above"),
            }
        }
        self.next_start = (start + visited) % nodes.len();
        if feasible.is_empty() {
            if let Some((node, victims)) = self.preempt(snapshot, pod) {
                return Decision::Preempt { node, victims };
            }
            return Decision::Unschedulable(unschedulable);
        }
        if feasible.len() == 1 {
            return Decision::Bind(nodes[feasible[0]].name.clone());
        }
        let mut totals = vec![0i64; feasible.len()];
        let mut raw = vec![0i64; feasible.len()];
        for (plugin, weight) in self.scores.iter().filter(|(p, _)| !p.skip(&state, pod)) {
            for (j, &i) in feasible.iter().enumerate() {
                raw[j] = plugin.score(&state, pod, &nodes[i]);
            }
            plugin.normalize(&mut raw);
            for j in 0..feasible.len() {
                totals[j] += raw[j] * weight;
            }
        }
        // The best score wins; among equals, each is equally likely (reservoir sampling).
        let mut best = 0;
        let mut ties = 1u64;
        for j in 1..feasible.len() {
            if totals[j] > totals[best] {
                best = j;
                ties = 1;
            } else if totals[j] == totals[best] {
                ties += 1;
                if self.rng.next().is_multiple_of(ties) {
                    best = j;
                }
            }
        }
        Decision::Bind(nodes[feasible[best]].name.clone())
    }

    /// Finds a node where evicting pods of lower priority lets `pod` in: the candidate whose
    /// most important victim is least important, then with the fewest victims.
    fn preempt(&self, snapshot: &Snapshot, pod: &PodInfo) -> Option<(String, Vec<(String, String)>)> {
        if !pod.preempts {
            return None;
        }
        let budgets = &snapshot.budgets();
        let mut best: Option<(usize, i64, usize, String, Vec<(String, String)>)> = None;
        for node in snapshot.nodes() {
            let mut lower: Vec<&std::sync::Arc<PodInfo>> = node.pods.iter().filter(|p| p.priority < pod.priority).collect();
            if lower.is_empty() {
                continue;
            }
            // Lowest priority first; among equals, pods whose budget is spent last.
            lower.sort_by_key(|p| (p.priority, model::violations(budgets, [p.as_ref()]) > 0));
            let mut trial = node.clone();
            let mut victims = Vec::new();
            let mut fits = false;
            for v in lower {
                trial.remove_pod(&v.namespace, &v.name);
                victims.push(v.clone());
                let state = snapshot.cycle_state_without(pod, &victims);
                if self.filters.iter().all(|f| f.filter(&state, pod, &trial) == Status::Success) {
                    fits = true;
                    break;
                }
            }
            if !fits {
                continue;
            }
            let top = victims.iter().map(|v| v.priority).max().unwrap_or(i64::MIN);
            let candidate = (
                model::violations(budgets, victims.iter().map(|v| v.as_ref())),
                top,
                victims.len(),
                node.name.clone(),
                victims.iter().map(|v| (v.namespace.clone(), v.name.clone())).collect(),
            );
            // Fewest evictions beyond a disruption budget, then the least important victims,
            // then the fewest.
            if best
                .as_ref()
                .is_none_or(|b| (candidate.0, candidate.1, candidate.2) < (b.0, b.1, b.2))
            {
                best = Some(candidate);
            }
        }
        best.map(|(_, _, _, node, victims)| (node, victims))
    }
}
