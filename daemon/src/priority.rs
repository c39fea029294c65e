//! Pod priority as Kubernetes' Priority admission resolves it: the pod's `priorityClassName`
//! names a PriorityClass (from Git, or one of the two built-in system classes) whose value and
//! preemption policy the pod takes; a pod naming none takes the class marked `globalDefault`,
//! else priority 0. Resolved when the scheduler reads a pod, and written into the pod when it is
//! bound, so `kubectl get pod -o yaml` shows it.

use serde_json::{Value, json};

/// The classes every Kubernetes cluster has.
const BUILT_IN: [(&str, i64); 2] = [("system-cluster-critical", 2_000_000_000), ("system-node-critical", 2_000_001_000)];

/// A pod's priority and whether it may preempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Priority {
    pub value: i64,
    pub preempts: bool,
}

/// Resolves `pod` against `classes` (PriorityClass objects); Err names a class that does not
/// exist, with Kubernetes' words.
pub fn resolve(pod: &Value, classes: &[&Value]) -> Result<Priority, String> {
    let spec = &pod["spec"];
    let policy = |class: Option<&Value>| {
        let own = spec["preemptionPolicy"].as_str();
        let of_class = class.and_then(|c| c["preemptionPolicy"].as_str());
        own.or(of_class) != Some("Never")
    };
    if let Some(value) = spec["priority"].as_i64() {
        return Ok(Priority {
            value,
            preempts: policy(None),
        });
    }
    let named = spec["priorityClassName"].as_str().filter(|n| !n.is_empty());
    let class = match named {
        Some(name) => match classes.iter().find(|c| c["metadata"]["name"] == name) {
            Some(c) => Some(*c),
            None => match BUILT_IN.iter().find(|(n, _)| *n == name) {
                Some((_, value)) => {
                    return Ok(Priority {
                        value: *value,
                        preempts: policy(None),
                    });
                }
                None => return Err(format!("no PriorityClass with name {name} was found")),
            },
        },
        None => classes.iter().find(|c| c["globalDefault"] == true).copied(),
    };
    Ok(Priority {
        value: class.and_then(|c| c["value"].as_i64()).unwrap_or(0),
        preempts: policy(class),
    })
}

/// `pod` with its resolved priority in `spec.priority` and `spec.preemptionPolicy`.
pub fn apply(pod: &mut Value, p: Priority) {
    pod["spec"]["priority"] = json!(p.value);
    pod["spec"]["preemptionPolicy"] = json!(if p.preempts { "PreemptLowerPriority" } else { "Never" });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_give_pods_their_priority() {
        let high = json!({"metadata": {"name": "high"}, "value": 1000});
        let batch = json!({"metadata": {"name": "batch"}, "value": 10, "globalDefault": true, "preemptionPolicy": "Never"});
        let classes = [&high, &batch];
        let named = |n: &str| json!({"spec": {"priorityClassName": n}});
        assert_eq!(
            resolve(&named("high"), &classes),
            Ok(Priority {
                value: 1000,
                preempts: true
            })
        );
        assert_eq!(
            resolve(&json!({"spec": {}}), &classes),
            Ok(Priority {
                value: 10,
                preempts: false
            }),
            "the global default"
        );
        assert_eq!(resolve(&json!({"spec": {}}), &[&high]), Ok(Priority { value: 0, preempts: true }));
        assert_eq!(resolve(&named("system-node-critical"), &[]).unwrap().value, 2_000_001_000);
        assert_eq!(
            resolve(&named("nope"), &classes),
            Err("no PriorityClass with name nope was found".into())
        );
        // A pod that says its own policy keeps it; one with spec.priority already is left alone.
        let own = json!({"spec": {"priorityClassName": "high", "preemptionPolicy": "Never"}});
        assert!(!resolve(&own, &classes).unwrap().preempts);
        assert_eq!(resolve(&json!({"spec": {"priority": 7}}), &classes).unwrap().value, 7);
        let mut pod = named("high");
        apply(&mut pod, resolve(&named("high"), &classes).unwrap());
        assert_eq!(pod["spec"]["priority"], 1000);
        assert_eq!(pod["spec"]["preemptionPolicy"], "PreemptLowerPriority");
    }
}
