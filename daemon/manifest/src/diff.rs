//! Field-level differences between two versions of an object, as a reviewer wants them on a
//! pull request: `spec.template.spec.containers[name=web].image: "web:1" → "web:2"`. Lists of
//! named items are matched by name, so inserting a container does not show every later one as
//! changed. Secret values are never shown.

use std::fmt;

use serde::Serialize;
use serde_json::Value;

/// One changed field.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum FieldChange {
    Added {
        path: String,
        value: String,
    },
    Removed {
        path: String,
        value: String,
    },
    Changed {
        path: String,
        from: String,
        to: String,
    },
    /// A field another owner sets in the cluster (an autoscaler's `spec.replicas`): the
    /// commit's value is a starting point, kept only when the commit changes it.
    Owned {
        path: String,
        by: String,
    },
}

impl fmt::Display for FieldChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FieldChange::Added { path, value } => write!(f, "+ {path}: {value}"),
            FieldChange::Removed { path, value } => write!(f, "- {path}: {value}"),
            FieldChange::Changed { path, from, to } => write!(f, "~ {path}: {from} → {to}"),
            FieldChange::Owned { path, by } => write!(f, "= {path}: owned by {by} (Git's value is its starting point)"),
        }
    }
}

/// Prefix of annotations Capstan writes itself; they are bookkeeping, not changes.
const OWN_ANNOTATIONS: &str = "capstan.dev/";

/// The differences from `old` to `new`. With `redact`, leaf values are hidden (Secrets).
pub fn diff(old: &Value, new: &Value, redact: bool) -> Vec<FieldChange> {
    let mut out = Vec::new();
    walk(&mut out, String::new(), old, new, redact);
    out
}

fn show(v: &Value, redact: bool) -> String {
    if redact {
        return "(hidden)".into();
    }
    let s = serde_json::to_string(v).unwrap_or_default();
    if s.chars().count() > 80 {
        let cut: String = s.chars().take(77).collect();
        format!("{cut}...")
    } else {
        s
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_owned() } else { format!("{path}.{key}") }
}

fn walk(out: &mut Vec<FieldChange>, path: String, old: &Value, new: &Value, redact: bool) {
    if old == new {
        return;
    }
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            let skip_own = path == "metadata.annotations";
            // Only the values under data/stringData of a Secret are secret.
            let child_redact = |k: &str| redact && (path.is_empty() && matches!(k, "data" | "stringData") || !path.is_empty());
            for (k, av) in a {
                if skip_own && k.starts_with(OWN_ANNOTATIONS) {
                    continue;
                }
                let p = join(&path, k);
                match b.get(k) {
                    Some(bv) => walk(out, p, av, bv, child_redact(k)),
                    None => out.push(FieldChange::Removed {
                        path: p,
                        value: show(av, child_redact(k)),
                    }),
                }
            }
            for (k, bv) in b {
                if skip_own && k.starts_with(OWN_ANNOTATIONS) {
                    continue;
                }
                if !a.contains_key(k) {
                    out.push(FieldChange::Added {
                        path: join(&path, k),
                        value: show(bv, child_redact(k)),
                    });
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => match (names(a), names(b)) {
            (Some(an), Some(bn)) => {
                for (name, av) in an.iter().zip(a) {
                    let p = format!("{path}[name={name}]");
                    match bn.iter().position(|n| n == name) {
                        Some(j) => walk(out, p, av, &b[j], redact),
                        None => out.push(FieldChange::Removed {
                            path: p,
                            value: show(av, redact),
                        }),
                    }
                }
                for (name, bv) in bn.iter().zip(b) {
                    if !an.contains(name) {
                        out.push(FieldChange::Added {
                            path: format!("{path}[name={name}]"),
                            value: show(bv, redact),
                        });
                    }
                }
            }
            _ if a.len() == b.len() => {
                for (i, (av, bv)) in a.iter().zip(b).enumerate() {
                    walk(out, format!("{path}[{i}]"), av, bv, redact);
                }
            }
            _ => out.push(FieldChange::Changed {
                path,
                from: show(old, redact),
                to: show(new, redact),
            }),
        },
        _ => out.push(FieldChange::Changed {
            path,
            from: show(old, redact),
            to: show(new, redact),
        }),
    }
}

/// The `name` of every item, if every item is an object with a distinct name.
fn names(items: &[Value]) -> Option<Vec<&str>> {
    let names: Vec<&str> = items.iter().map(|i| i.get("name").and_then(Value::as_str)).collect::<Option<_>>()?;
    let mut sorted = names.clone();
    sorted.sort_unstable();
    sorted.dedup();
    (sorted.len() == names.len() && !names.is_empty()).then_some(names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn named_lists_match_by_name() {
        let old = json!({"spec": {"containers": [{"name": "web", "image": "web:1"}, {"name": "log", "image": "log:1"}]}});
        let new = json!({"spec": {"containers": [{"name": "init", "image": "i:1"}, {"name": "web", "image": "web:2"}, {"name": "log", "image": "log:1"}]}});
        let d: Vec<String> = diff(&old, &new, false).iter().map(ToString::to_string).collect();
        assert_eq!(
            d,
            [
                "~ spec.containers[name=web].image: \"web:1\" → \"web:2\"",
                "+ spec.containers[name=init]: {\"image\":\"i:1\",\"name\":\"init\"}",
            ]
        );
    }

    #[test]
    fn own_annotations_are_not_changes_and_secrets_are_hidden() {
        let old = json!({"metadata": {"annotations": {"capstan.dev/commit": "a", "team": "x"}}, "data": {"pw": "YQ=="}});
        let new = json!({"metadata": {"annotations": {"capstan.dev/commit": "b", "team": "y"}}, "data": {"pw": "Yg==", "user": "dQ=="}});
        let d: Vec<String> = diff(&old, &new, true).iter().map(ToString::to_string).collect();
        assert_eq!(
            d,
            [
                "~ data.pw: (hidden) → (hidden)",
                "+ data.user: (hidden)",
                "~ metadata.annotations.team: \"x\" → \"y\"",
            ]
        );
    }
}
