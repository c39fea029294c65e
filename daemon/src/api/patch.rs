//! Patches as the API applies them: JSON merge patch (RFC 7386) and Kubernetes' strategic merge
//! patch, whose lists of named things (containers, env, ports, volumes ...) merge element by
//! element on their key instead of being replaced, with its directives (`$patch`,
//! `$setElementOrder`, `$retainKeys`, `$deleteFromPrimitiveList`).

use capstan_api::merge::ListMerge;
use serde_json::{Map, Value, json};

/// JSON merge patch (RFC 7386).
pub(super) fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            let t = target.as_object_mut().expect("made an object");
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

/// The merge of a list field, its elements telling a container's ports from a Service's.
fn list_merge(field: &str, elements: &[Value]) -> ListMerge {
    capstan_api::merge::list_merge(field, elements.iter().any(|e| e.get("containerPort").is_some()))
}

/// Applies a strategic merge patch to `target`.
pub(super) fn strategic_merge(target: &mut Value, patch: &Value) {
    match (target.as_object_mut(), patch.as_object()) {
        (Some(t), Some(p)) => merge_map(t, p),
        (_, Some(p)) => *target = Value::Object(without_directives(p)),
        _ => *target = patch.clone(),
    }
}

fn merge_map(target: &mut Map<String, Value>, patch: &Map<String, Value>) {
    if patch.get("$patch").and_then(Value::as_str) == Some("replace") {
        *target = without_directives(patch);
        return;
    }
    for (k, v) in patch {
        if k.starts_with('$') {
            continue;
        }
        if v.is_null() {
            target.remove(k);
            continue;
        }
        match (target.get_mut(k), v) {
            (Some(Value::Object(t)), Value::Object(p)) => {
                if p.get("$patch").and_then(Value::as_str) == Some("delete") {
                    target.remove(k);
                } else {
                    merge_map(t, p);
                }
            }
            (Some(Value::Array(t)), Value::Array(p)) => {
                let strategy = list_merge(k, t);
                merge_list(t, p, strategy);
            }
            (_, Value::Object(p)) => {
                if p.get("$patch").and_then(Value::as_str) != Some("delete") {
                    target.insert(k.clone(), Value::Object(without_directives(p)));
                }
            }
            (_, Value::Array(p)) => {
                let cleaned: Vec<Value> = p
                    .iter()
                    .filter(|e| e.get("$patch").is_none())
                    .map(|e| e.as_object().map_or_else(|| e.clone(), |m| Value::Object(without_directives(m))))
                    .collect();
                target.insert(k.clone(), Value::Array(cleaned));
            }
            (_, other) => {
                target.insert(k.clone(), other.clone());
            }
        }
    }
    for (k, v) in patch {
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/")
            && let (Some(Value::Array(list)), Some(gone)) = (target.get_mut(field), v.as_array())
        {
            list.retain(|e| !gone.contains(e));
        }
    }
    for (k, v) in patch {
        if let Some(field) = k.strip_prefix("$setElementOrder/")
            && let (Some(Value::Array(list)), Some(order)) = (target.get_mut(field), v.as_array())
        {
            reorder(list, order, list_merge(field, order));
        }
    }
    if let Some(keep) = patch.get("$retainKeys").and_then(Value::as_array) {
        target.retain(|k, _| keep.iter().any(|r| r == k));
    }
}

fn merge_list(target: &mut Vec<Value>, patch: &[Value], strategy: ListMerge) {
    if patch.iter().any(|e| e.get("$patch").and_then(Value::as_str) == Some("replace")) {
        *target = patch.iter().filter(|e| e.get("$patch").is_none()).cloned().collect();
        return;
    }
    match strategy {
        ListMerge::Replace => *target = patch.to_vec(),
        ListMerge::Primitives => {
            for e in patch {
                if !target.contains(e) {
                    target.push(e.clone());
                }
            }
        }
        ListMerge::Key(key) => {
            for element in patch {
                let Some(p) = element.as_object() else {
                    continue;
                };
                let at = target.iter().position(|t| t.get(key).is_some() && t.get(key) == p.get(key));
                let delete = p.get("$patch").and_then(Value::as_str) == Some("delete");
                match (at, delete) {
                    (Some(i), true) => {
                        target.remove(i);
                    }
                    (Some(i), false) => {
                        if let Some(t) = target[i].as_object_mut() {
                            merge_map(t, p);
                        }
                    }
                    (None, false) => target.push(Value::Object(without_directives(p))),
                    (None, true) => {}
                }
            }
        }
    }
}

/// Orders `list` as `order` (elements named by their key, or values); elements it does not name
/// keep their place after those it does.
fn reorder(list: &mut Vec<Value>, order: &[Value], strategy: ListMerge) {
    let rank = |e: &Value| {
        order.iter().position(|o| match strategy {
            ListMerge::Key(key) => o.get(key).is_some() && o.get(key) == e.get(key),
            _ => o == e,
        })
    };
    let mut ranked: Vec<(usize, Value)> = list.drain(..).map(|e| (rank(&e).unwrap_or(usize::MAX), e)).collect();
    ranked.sort_by_key(|(r, _)| *r);
    list.extend(ranked.into_iter().map(|(_, e)| e));
}

/// A map from a patch with its directives taken out (at every depth).
fn without_directives(m: &Map<String, Value>) -> Map<String, Value> {
    m.iter()
        .filter(|(k, _)| !k.starts_with('$'))
        .map(|(k, v)| {
            let v = match v {
                Value::Object(o) => Value::Object(without_directives(o)),
                Value::Array(a) => Value::Array(
                    a.iter()
                        .map(|e| e.as_object().map_or_else(|| e.clone(), |o| Value::Object(without_directives(o))))
                        .collect(),
                ),
                other => other.clone(),
            };
            (k.clone(), v)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_patches() {
        let mut t = json!({"metadata": {"labels": {"a": "1", "b": "2"}}, "spec": {"x": [1, 2]}});
        merge_patch(&mut t, &json!({"metadata": {"labels": {"a": null, "c": "3"}}, "spec": {"x": [3]}}));
        assert_eq!(t, json!({"metadata": {"labels": {"b": "2", "c": "3"}}, "spec": {"x": [3]}}));
    }

    fn live() -> Value {
        json!({"spec": {"template": {"spec": {
            "containers": [
                {"name": "app", "image": "v1", "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                 "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}], "args": ["x", "y"]},
                {"name": "side", "image": "s1"}
            ],
            "volumes": [{"name": "data", "emptyDir": {}}]
        }}}})
    }

    #[test]
    fn named_elements_merge_on_their_key() {
        // What kubectl apply and diff send for a new image and one changed variable.
        let patch = json!({"spec": {"template": {"spec": {
            "$setElementOrder/containers": [{"name": "app"}, {"name": "side"}],
            "containers": [{"name": "app", "image": "v2", "$setElementOrder/env": [{"name": "A"}, {"name": "B"}],
                            "env": [{"name": "B", "value": "3"}], "args": ["z"]}]
        }}}});
        let mut t = live();
        strategic_merge(&mut t, &patch);
        let c = &t["spec"]["template"]["spec"]["containers"];
        assert_eq!(c[0]["image"], "v2");
        assert_eq!(c[0]["ports"][0]["protocol"], "TCP", "fields the patch does not name stay");
        assert_eq!(c[0]["env"], json!([{"name": "A", "value": "1"}, {"name": "B", "value": "3"}]));
        assert_eq!(c[0]["args"], json!(["z"]), "lists without a key are replaced");
        assert_eq!(c[1], json!({"name": "side", "image": "s1"}));
    }

    #[test]
    fn directives_delete_replace_and_order() {
        let mut t = live();
        strategic_merge(
            &mut t,
            &json!({"spec": {"template": {"spec": {
                "containers": [{"name": "side", "$patch": "delete"}, {"name": "new", "image": "n"}],
                "$setElementOrder/containers": [{"name": "new"}, {"name": "app"}],
                "volumes": [{"name": "cache", "emptyDir": {}}, {"$patch": "replace"}]
            }}}}),
        );
        let spec = &t["spec"]["template"]["spec"];
        let names: Vec<&str> = spec["containers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["new", "app"]);
        assert_eq!(spec["volumes"], json!([{"name": "cache", "emptyDir": {}}]));
        let mut t = json!({"metadata": {"finalizers": ["a", "b"]}, "spec": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}}}});
        strategic_merge(
            &mut t,
            &json!({"metadata": {"finalizers": ["c"], "$deleteFromPrimitiveList/finalizers": ["a"]},
                    "spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}}}),
        );
        assert_eq!(t["metadata"]["finalizers"], json!(["b", "c"]));
        assert_eq!(t["spec"]["strategy"], json!({"type": "Recreate"}));
    }

    #[test]
    fn a_services_ports_merge_on_the_port() {
        let mut t = json!({"spec": {"ports": [{"port": 80, "targetPort": 8080, "nodePort": 30080}]}});
        strategic_merge(&mut t, &json!({"spec": {"ports": [{"port": 80, "targetPort": 9090}]}}));
        assert_eq!(t["spec"]["ports"], json!([{"port": 80, "targetPort": 9090, "nodePort": 30080}]));
    }
}
