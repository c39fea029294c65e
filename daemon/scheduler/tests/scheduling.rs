//! The scheduler's plugins, case by case, and its invariants under random clusters: no node is
//! ever over its allocatable, required anti-affinity is never broken, a hard spread constraint's
//! skew never exceeds maxSkew, and the same seed gives the same placements.

use std::collections::HashMap;

use capstan_scheduler::{Config, Decision, NodeInfo, PodInfo, ResourceScoring, Scheduler, Snapshot};
use proptest::prelude::*;
use serde_json::{Value, json};

fn node(name: &str, cpu: &str, memory: &str, labels: Value, taints: Value) -> NodeInfo {
    let mut l = labels;
    l["kubernetes.io/hostname"] = json!(name);
    NodeInfo::from_json(&json!({
        "metadata": {"name": name, "labels": l},
        "spec": {"taints": taints},
        "status": {"allocatable": {"cpu": cpu, "memory": memory, "pods": "110"}, "conditions": [{"type": "Ready", "status": "True"}]}
    }))
}

fn pod(name: &str, cpu: &str, spec: Value) -> PodInfo {
    let mut s = spec;
    s["containers"] = json!([{"name": "c", "image": "i", "resources": {"requests": {"cpu": cpu, "memory": "64Mi"}}}]);
    let labels = s.get("labels").cloned().unwrap_or(json!({}));
    if let Some(o) = s.as_object_mut() {
        o.remove("labels");
    }
    PodInfo::from_json(&json!({"metadata": {"name": name, "namespace": "ns", "labels": labels}, "spec": s}))
}

fn snapshot(nodes: Vec<NodeInfo>) -> Snapshot {
    let mut s = Snapshot::new();
    for n in nodes {
        s.upsert_node(n);
    }
    s
}

fn scheduler() -> Scheduler {
    Scheduler::new(Config::default())
}

fn bind(d: Decision) -> String {
    match d {
        Decision::Bind(n) => n,
        other => panic!("expected a binding, got {other:?}"),
    }
}

fn message(d: Decision) -> String {
    match d {
        Decision::Unschedulable(u) => u.message(),
        other => panic!("expected unschedulable, got {other:?}"),
    }
}

#[test]
fn resources_fit_and_least_allocated_spreads() {
    let s = snapshot(vec![
        node("small", "1", "128Mi", json!({}), json!([])),
        node("big", "8", "8Gi", json!({}), json!([])),
    ]);
    let mut sch = scheduler();
    assert_eq!(
        bind(sch.schedule(&s, &pod("p", "500m", json!({})))),
        "big",
        "the emptier node scores higher"
    );
    assert_eq!(
        message(sch.schedule(&s, &pod("huge", "16", json!({})))),
        "0/2 nodes are available: 2 Insufficient cpu."
    );
    let mut most = Scheduler::new(Config {
        scoring: ResourceScoring::MostAllocated,
        ..Config::default()
    });
    assert_eq!(
        bind(most.schedule(&s, &pod("p", "500m", json!({})))),
        "small",
        "bin-packing prefers the fuller node"
    );
}

#[test]
fn extended_resources_and_pod_counts() {
    let mut gpu = node("gpu", "4", "4Gi", json!({}), json!([]));
    gpu.allocatable.extended.insert("example.com/gpu".into(), 1);
    let s = snapshot(vec![gpu, node("cpu", "4", "4Gi", json!({}), json!([]))]);
    let mut p = pod("train", "1", json!({}));
    p.requests.extended.insert("example.com/gpu".into(), 1);
    assert_eq!(bind(scheduler().schedule(&s, &p)), "gpu");
    p.requests.extended.insert("example.com/gpu".into(), 2);
    assert_eq!(
        message(scheduler().schedule(&s, &p)),
        "0/2 nodes are available: 2 Insufficient example.com/gpu."
    );
}

#[test]
fn node_name_selector_affinity_and_unschedulable() {
    let mut cordoned = node("n3", "4", "4Gi", json!({"disk": "ssd"}), json!([]));
    cordoned.unschedulable = true;
    let s = snapshot(vec![
        node("n1", "4", "4Gi", json!({"disk": "ssd", "zone": "a"}), json!([])),
        node("n2", "4", "4Gi", json!({"disk": "hdd", "zone": "b"}), json!([])),
        cordoned,
    ]);
    let mut sch = scheduler();
    assert_eq!(bind(sch.schedule(&s, &pod("p", "100m", json!({"nodeName": "n2"})))), "n2");
    assert_eq!(
        bind(sch.schedule(&s, &pod("p", "100m", json!({"nodeSelector": {"disk": "ssd"}})))),
        "n1"
    );
    let affinity = json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "In", "values": ["b"]}]}]}}}});
    assert_eq!(bind(sch.schedule(&s, &pod("p", "100m", affinity))), "n2");
    let preferred = json!({"affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 100, "preference": {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}}]}}});
    for _ in 0..5 {
        assert_eq!(bind(sch.schedule(&s, &pod("p", "100m", preferred.clone()))), "n1");
    }
    let none = json!({"nodeSelector": {"disk": "nvme"}});
    assert_eq!(
        message(sch.schedule(&s, &pod("p", "100m", none))),
        "0/3 nodes are available: 1 node(s) were unschedulable, 2 node(s) didn't match Pod's node affinity/selector."
    );
}

#[test]
fn a_pod_pinned_by_node_name_fields_goes_there_or_says_why_not() {
    let s = snapshot(vec![
        node("a", "4", "4Gi", json!({}), json!([])),
        node("b", "4", "4Gi", json!({}), json!([])),
        node("c", "100m", "4Gi", json!({}), json!([])),
    ]);
    let pinned = |to: &str| {
        json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [to]}]}]}}}})
    };
    let mut sch = scheduler();
    for _ in 0..5 {
        assert_eq!(bind(sch.schedule(&s, &pod("d", "100m", pinned("b")))), "b");
    }
    // The pinned node's resources still count.
    assert_eq!(
        message(sch.schedule(&s, &pod("d", "1", pinned("c")))),
        "0/3 nodes are available: 1 Insufficient cpu, 2 node(s) didn't match Pod's node affinity/selector."
    );
    // Fields and labels together: both must hold.
    let mut both = pinned("a");
    both["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]["matchExpressions"] =
        json!([{"key": "disk", "operator": "In", "values": ["ssd"]}]);
    assert!(matches!(sch.schedule(&s, &pod("d", "100m", both)), Decision::Unschedulable(_)));
}

#[test]
fn taints_and_tolerations() {
    let s = snapshot(vec![
        node(
            "gpu",
            "4",
            "4Gi",
            json!({}),
            json!([{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]),
        ),
        node(
            "soft",
            "4",
            "4Gi",
            json!({}),
            json!([{"key": "spot", "value": "true", "effect": "PreferNoSchedule"}]),
        ),
    ]);
    let mut sch = scheduler();
    for _ in 0..5 {
        assert_eq!(bind(sch.schedule(&s, &pod("p", "100m", json!({})))), "soft");
    }
    let tolerant = json!({"tolerations": [{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}, {"key": "spot", "operator": "Exists"}]});
    let mut picked = std::collections::HashSet::new();
    for _ in 0..20 {
        picked.insert(bind(sch.schedule(&s, &pod("p", "100m", tolerant.clone()))));
    }
    assert!(picked.contains("gpu"));
    let tainted_only = snapshot(vec![node(
        "gpu",
        "4",
        "4Gi",
        json!({}),
        json!([{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]),
    )]);
    assert_eq!(
        message(sch.schedule(&tainted_only, &pod("p", "100m", json!({})))),
        "0/1 nodes are available: 1 node(s) had untolerated taint {dedicated: gpu}."
    );
}

#[test]
fn inter_pod_affinity_and_anti_affinity() {
    let mut s = snapshot(vec![
        node("n1", "4", "4Gi", json!({"zone": "a"}), json!([])),
        node("n2", "4", "4Gi", json!({"zone": "b"}), json!([])),
    ]);
    let anti = |app: &str| json!({"labels": {"app": app}, "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{"labelSelector": {"matchLabels": {"app": app}}, "topologyKey": "kubernetes.io/hostname"}]}}});
    let mut sch = scheduler();
    let first = bind(sch.schedule(&s, &pod("web-1", "100m", anti("web"))));
    s.assume(pod("web-1", "100m", anti("web")), &first);
    let second = bind(sch.schedule(&s, &pod("web-2", "100m", anti("web"))));
    assert_ne!(first, second);
    s.assume(pod("web-2", "100m", anti("web")), &second);
    assert_eq!(
        message(sch.schedule(&s, &pod("web-3", "100m", anti("web")))),
        "0/2 nodes are available: 2 node(s) didn't match pod anti-affinity rules."
    );
    // The placed pods' anti-affinity also keeps a plain "web" pod away.
    assert_eq!(
        message(sch.schedule(&s, &pod("plain", "100m", json!({"labels": {"app": "web"}})))),
        "0/2 nodes are available: 2 node(s) didn't satisfy existing pods anti-affinity rules."
    );
    // Affinity: with the cache in zone b, the app goes to zone b.
    let mut s = snapshot(vec![
        node("n1", "4", "4Gi", json!({"zone": "a"}), json!([])),
        node("n2", "4", "4Gi", json!({"zone": "b"}), json!([])),
    ]);
    s.assume(pod("cache", "100m", json!({"labels": {"app": "cache"}})), "n2");
    let with_cache = json!({"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{"labelSelector": {"matchLabels": {"app": "cache"}}, "topologyKey": "zone"}]}}});
    for _ in 0..5 {
        assert_eq!(bind(sch.schedule(&s, &pod("app", "100m", with_cache.clone()))), "n2");
    }
}

#[test]
fn topology_spread_and_host_ports() {
    let mut s = snapshot(vec![
        node("a1", "8", "8Gi", json!({"zone": "a"}), json!([])),
        node("b1", "8", "8Gi", json!({"zone": "b"}), json!([])),
    ]);
    let spread = json!({"labels": {"app": "web"}, "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "web"}}}]});
    let mut sch = scheduler();
    let mut per_zone: HashMap<String, i64> = HashMap::new();
    for i in 0..6 {
        let n = bind(sch.schedule(&s, &pod(&format!("web-{i}"), "100m", spread.clone())));
        *per_zone.entry(n.clone()).or_default() += 1;
        s.assume(pod(&format!("web-{i}"), "100m", spread.clone()), &n);
    }
    assert_eq!(per_zone["a1"], 3);
    assert_eq!(per_zone["b1"], 3);
    let hp = PodInfo {
        host_ports: vec![("TCP".into(), 8080)],
        ..pod("hp-1", "100m", json!({}))
    };
    let s = snapshot(vec![node("n1", "4", "4Gi", json!({}), json!([]))]);
    let mut s = s;
    s.assume(hp.clone(), "n1");
    assert_eq!(
        message(sch.schedule(&s, &PodInfo { name: "hp-2".into(), ..hp })),
        "0/1 nodes are available: 1 node(s) didn't have free ports for the requested pod ports."
    );
}

#[test]
fn preemption_prefers_victims_whose_disruption_budget_allows_it() {
    // Two full nodes of equal low-priority pods; the pods on `a` are covered by a spent budget.
    let mut s = snapshot(vec![
        node("a", "1", "4Gi", json!({}), json!([])),
        node("b", "1", "4Gi", json!({}), json!([])),
    ]);
    for (n, app) in [("a", "guarded"), ("b", "free")] {
        let p = pod(&format!("{app}-1"), "1", json!({"labels": {"app": app}}));
        assert!(s.assume(p, n));
    }
    s.read_budgets_with(std::sync::Arc::new(|| {
        vec![capstan_scheduler::model::Budget {
            namespace: "ns".into(),
            selector: capstan_scheduler::model::Selector::from_json(&json!({"matchLabels": {"app": "guarded"}})),
            allowed: 0,
        }]
    }));
    let mut urgent = pod("urgent", "1", json!({}));
    urgent.priority = 1000;
    urgent.preempts = true;
    match scheduler().schedule(&s, &urgent) {
        Decision::Preempt { node, victims } => {
            assert_eq!(node, "b");
            assert_eq!(victims, [("ns".to_owned(), "free-1".to_owned())]);
        }
        other => panic!("expected a preemption, got {other:?}"),
    }
}

#[test]
fn a_high_priority_pod_preempts_the_lowest_priority_pods() {
    let mut s = snapshot(vec![
        node("n1", "2", "4Gi", json!({}), json!([])),
        node("n2", "2", "4Gi", json!({}), json!([])),
    ]);
    let low = |name: &str, prio: i64| PodInfo {
        priority: prio,
        ..pod(name, "1", json!({}))
    };
    s.assume(low("a", 10), "n1");
    s.assume(low("b", 10), "n1");
    s.assume(low("c", 100), "n2");
    s.assume(low("d", 100), "n2");
    let important = PodInfo {
        priority: 1000,
        ..pod("vip", "1500m", json!({}))
    };
    match scheduler().schedule(&s, &important) {
        Decision::Preempt { node, victims } => {
            assert_eq!(node, "n1", "the node whose victims matter least");
            assert_eq!(victims.len(), 2, "1500m needs both 1-cpu pods gone: {victims:?}");
        }
        other => panic!("expected preemption, got {other:?}"),
    }
    let polite = PodInfo {
        preempts: false,
        ..important.clone()
    };
    assert!(
        matches!(scheduler().schedule(&s, &polite), Decision::Unschedulable(_)),
        "preemptionPolicy: Never waits instead"
    );
    let equal = PodInfo {
        priority: 10,
        ..pod("peer", "1500m", json!({}))
    };
    assert!(
        matches!(scheduler().schedule(&s, &equal), Decision::Unschedulable(_)),
        "no preemption of pods of the same priority"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn invariants_hold_on_random_clusters(
        nodes in proptest::collection::vec((1u32..8, 1u32..8, 0usize..3), 1..12),
        pods in proptest::collection::vec((0u32..2500, 0usize..4), 1..60),
        seed in 1u64..1000,
    ) {
        let zones = ["a", "b", "c"];
        let mut s = Snapshot::new();
        for (i, (cpu, mem, zone)) in nodes.iter().enumerate() {
            s.upsert_node(node(&format!("n{i}"), &cpu.to_string(), &format!("{mem}Gi"), json!({"zone": zones[*zone]}), json!([])));
        }
        let mut a = Scheduler::new(Config { seed, ..Config::default() });
        let mut b = Scheduler::new(Config { seed, ..Config::default() });
        let mut s2 = Snapshot::new();
        for (i, (cpu, mem, zone)) in nodes.iter().enumerate() {
            s2.upsert_node(node(&format!("n{i}"), &cpu.to_string(), &format!("{mem}Gi"), json!({"zone": zones[*zone]}), json!([])));
        }
        let mut placed: Vec<(String, String, usize)> = Vec::new();
        for (i, (milli, app)) in pods.iter().enumerate() {
            // Per app: app1 pods repel each other, app2 and app3 spread over zones.
            let (anti, spread) = (&(*app == 1), &(*app >= 2));
            let app_name = format!("app{app}");
            let mut spec = json!({"labels": {"app": app_name}});
            if *anti {
                spec["affinity"] = json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{"labelSelector": {"matchLabels": {"app": app_name}}, "topologyKey": "kubernetes.io/hostname"}]}});
            }
            if *spread {
                spec["topologySpreadConstraints"] = json!([{"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": app_name}}}]);
            }
            let p = pod(&format!("p{i}"), &format!("{milli}m"), spec);
            let da = a.schedule(&s, &p);
            let db = b.schedule(&s2, &p);
            prop_assert_eq!(&da, &db, "the same seed gives the same decision");
            if let Decision::Bind(n) = da {
                s.assume(p.clone(), &n);
                s2.assume(p.clone(), &n);
                placed.push((n, app_name, i));
            }
        }
        for n in s.nodes() {
            prop_assert!(n.requested.cpu_milli <= n.allocatable.cpu_milli, "{} over cpu", n.name);
            prop_assert!(n.requested.memory <= n.allocatable.memory, "{} over memory", n.name);
            // Required anti-affinity: no two pods of an anti-affine app share a node.
            for p in &n.pods {
                if !p.anti_required.is_empty() {
                    let same = n.pods.iter().filter(|q| q.labels.get("app") == p.labels.get("app")).count();
                    prop_assert_eq!(same, 1, "anti-affinity broken on {}", n.name);
                }
            }
        }
        // Hard spread: per app with the constraint, zone counts never differ by more than 1
        // among zones that have nodes.
        let mut zone_counts: HashMap<(String, String), i64> = HashMap::new();
        for n in s.nodes() {
            for p in n.pods.iter().filter(|p| !p.spread.is_empty()) {
                *zone_counts.entry((p.labels["app"].clone(), n.labels["zone"].clone())).or_default() += 1;
            }
        }
        let present: std::collections::BTreeSet<&str> = s.nodes().iter().map(|n| n.labels["zone"].as_str()).collect();
        let apps: std::collections::BTreeSet<String> = zone_counts.keys().map(|(a, _)| a.clone()).collect();
        for app in apps {
            let counts: Vec<i64> = present.iter().map(|z| zone_counts.get(&(app.clone(), z.to_string())).copied().unwrap_or(0)).collect();
            let (min, max) = (*counts.iter().min().unwrap(), *counts.iter().max().unwrap());
            prop_assert!(max - min <= 1, "spread of {app} broken: {counts:?}");
        }
    }
}

#[test]
fn spread_policies_and_match_label_keys_narrow_what_counts() {
    let unreachable = json!([{"key": "node.kubernetes.io/unreachable", "effect": "NoSchedule"}, {"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"}]);
    let web = |name: &str, hash: &str, extra: Value| {
        let mut c = json!({"maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "web"}}});
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        PodInfo::from_json(
            &json!({"metadata": {"name": name, "namespace": "ns", "labels": {"app": "web", "pod-template-hash": hash}}, "spec": {
            "topologySpreadConstraints": [c],
            "tolerations": [{"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 15}],
            "containers": [{"name": "c", "image": "i"}]}}),
        )
    };
    let hosts = |h2_taints: Value| {
        snapshot(vec![
            node("h1", "2", "8Gi", json!({"zone": "a"}), json!([])),
            node("h2", "2", "8Gi", json!({"zone": "a"}), h2_taints),
            node("h3", "2", "8Gi", json!({"zone": "b"}), json!([])),
        ])
    };
    let mut sch = scheduler();

    // h2 lost (tainted unreachable, its pod evicted): by default its empty domain still counts
    // and the replacement cannot go anywhere; with nodeTaintsPolicy Honor it goes to h1 or h3.
    let mut s = hosts(unreachable);
    s.assume(web("web-1", "1", json!({})), "h1");
    s.assume(web("web-3", "1", json!({})), "h3");
    let ignored = message(sch.schedule(&s, &web("web-2", "1", json!({}))));
    assert!(ignored.contains("didn't match pod topology spread constraints"), "{ignored}");
    let honoured = bind(sch.schedule(&s, &web("web-2", "1", json!({"nodeTaintsPolicy": "Honor"}))));
    assert!(honoured == "h1" || honoured == "h3", "{honoured}");

    // matchLabelKeys: a new revision spreads by itself, whatever the old one's placement.
    let mut s = hosts(json!([]));
    s.assume(web("old-1", "1", json!({})), "h1");
    s.assume(web("old-2", "1", json!({})), "h1");
    s.assume(web("old-3", "1", json!({})), "h3");
    let keys = json!({"matchLabelKeys": ["pod-template-hash"]});
    let mut placed: Vec<String> = (0..3)
        .map(|i| {
            let p = web(&format!("new-{i}"), "2", keys.clone());
            let n = bind(sch.schedule(&s, &p));
            s.assume(p, &n);
            n
        })
        .collect();
    placed.sort();
    assert_eq!(placed, ["h1", "h2", "h3"]);

    // nodeAffinityPolicy Honor (the default): nodes the pod's selector excludes do not count.
    let mut s = hosts(json!([]));
    let in_zone_a = |name: &str, policy: &str| {
        let mut p = web(name, "1", json!({"nodeAffinityPolicy": policy}));
        p.node_selector.insert("zone".into(), "a".into());
        p
    };
    for i in 0..4 {
        let p = in_zone_a(&format!("a-{i}"), "Honor");
        let n = bind(sch.schedule(&s, &p));
        s.assume(p, &n);
    }
    assert_eq!(s.node("h1").unwrap().pods.len(), 2);
    assert_eq!(s.node("h2").unwrap().pods.len(), 2);
    let ignored = message(sch.schedule(&s, &in_zone_a("a-4", "Ignore")));
    assert!(
        ignored.contains("spread"),
        "h3's empty domain counts when the policy is Ignore: {ignored}"
    );
}
