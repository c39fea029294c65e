//! Resource usage, from Docker stats for containers and `/proc` for the node, in the shape of
//! the kubelet's Summary API (`/stats/summary`): CPU as cumulative core-nanoseconds and a rate in
//! nano-cores (from the previous sample), memory as the working set.

use std::collections::HashMap;
use std::sync::Mutex;

use capstan_api::meta::{LABEL_CONTAINER, LABEL_NAMESPACE, LABEL_NODE, LABEL_POD, LABEL_POD_UID};
use capstan_containers::{Runtime, State};
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::spec::LABEL_SANDBOX;

/// Previous CPU samples, for rates.
#[derive(Debug, Default)]
pub struct Sampler {
    previous: Mutex<HashMap<String, (u64, Instant)>>,
}

impl Sampler {
    /// The rate in nano-cores since the previous sample of `key` (0 on the first).
    fn rate(&self, key: &str, cpu_nanos: u64, now: Instant) -> u64 {
        let mut prev = self.previous.lock().expect("sampler lock");
        let rate = match prev.get(key) {
            Some((before, at)) if now > *at && cpu_nanos >= *before => {
                let elapsed = (now - *at).as_nanos().max(1) as f64;
                ((cpu_nanos - before) as f64 / elapsed * 1e9) as u64
            }
            _ => 0,
        };
        prev.insert(key.to_owned(), (cpu_nanos, now));
        rate
    }
}

fn node_cpu_nanos() -> u64 {
    // The first line of /proc/stat: jiffies (USER_HZ = 100) spent per mode; idle and iowait are not use.
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = text
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let busy: u64 = fields.iter().enumerate().filter(|(i, _)| *i != 3 && *i != 4).map(|(_, v)| v).sum();
    busy * 10_000_000
}

fn meminfo(field: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// The summary of the node and its pods' running containers.
pub async fn summary(runtime: &dyn Runtime, node: &str, sampler: &Sampler) -> Value {
    let now = Instant::now();
    let stamp = capstan_api::time::now_rfc3339();
    let node_cpu = node_cpu_nanos();
    let total = meminfo("MemTotal");
    let available = meminfo("MemAvailable");
    let containers = runtime.list(&[(LABEL_NODE, node)]).await.unwrap_or_default();
    let mut pods: HashMap<String, Value> = HashMap::new();
    for c in containers
        .iter()
        .filter(|c| c.state == State::Running && c.labels.get(LABEL_SANDBOX).is_none_or(|v| v != "true"))
    {
        let Ok(u) = runtime.usage(&c.id).await else { continue };
        let label = |k: &str| c.labels.get(k).cloned().unwrap_or_default();
        let uid = label(LABEL_POD_UID);
        let entry = pods.entry(uid.clone()).or_insert_with(|| {
            json!({"podRef": {"name": label(LABEL_POD), "namespace": label(LABEL_NAMESPACE), "uid": uid},
                   "cpu": {"time": stamp, "usageNanoCores": 0u64, "usageCoreNanoSeconds": 0u64},
                   "memory": {"time": stamp, "workingSetBytes": 0u64}, "containers": []})
        });
        let rate = sampler.rate(&c.id, u.cpu_nanos, now);
        let add = |v: &mut Value, n: u64| *v = json!(v.as_u64().unwrap_or(0) + n);
        add(&mut entry["cpu"]["usageNanoCores"], rate);
        add(&mut entry["cpu"]["usageCoreNanoSeconds"], u.cpu_nanos);
        add(&mut entry["memory"]["workingSetBytes"], u.memory_bytes);
        if let Some(list) = entry["containers"].as_array_mut() {
            list.push(json!({"name": label(LABEL_CONTAINER), "startTime": c.started_at,
                "cpu": {"time": stamp, "usageNanoCores": rate, "usageCoreNanoSeconds": u.cpu_nanos},
                "memory": {"time": stamp, "workingSetBytes": u.memory_bytes}}));
        }
    }
    let mut pods: Vec<Value> = pods.into_values().collect();
    pods.sort_by(|a, b| a["podRef"]["name"].as_str().cmp(&b["podRef"]["name"].as_str()));
    json!({
        "node": {
            "nodeName": node,
            "cpu": {"time": stamp, "usageNanoCores": sampler.rate("", node_cpu, now), "usageCoreNanoSeconds": node_cpu},
            "memory": {"time": stamp, "availableBytes": available, "usageBytes": total - available, "workingSetBytes": total.saturating_sub(available)},
        },
        "pods": pods,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn rates_come_from_consecutive_samples() {
        let s = Sampler::default();
        let t0 = Instant::now();
        assert_eq!(s.rate("c", 1_000_000_000, t0), 0);
        tokio::time::advance(std::time::Duration::from_secs(2)).await;
        // One CPU-second over two seconds: half a core.
        assert_eq!(s.rate("c", 2_000_000_000, Instant::now()), 500_000_000);
    }
}
