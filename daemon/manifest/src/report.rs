//! What a change of commit does, object by object, in a form to print or serialise: created,
//! updated (with the fields that changed), pruned, quarantined, held. `capstan plan` prints it
//! for a pull request; the sync records it on each applied commit.

use capstan_api::ObjectKey;
use capstan_api::meta::ANNOTATION_SOURCE;
use serde::Serialize;
use serde_json::Value;

use crate::desired::{Applied, AppliedSet, Plan, Quarantined};
use crate::diff::{FieldChange, diff};
use crate::problem::Problem;

/// One object's part in a plan.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "action", rename_all = "lowercase")]
pub enum Entry {
    Create {
        object: ObjectKey,
        file: String,
    },
    Update {
        object: ObjectKey,
        file: String,
        changes: Vec<FieldChange>,
    },
    Prune {
        object: ObjectKey,
        file: String,
    },
    /// Broken in this commit; `kept` says whether its last good version runs on.
    Quarantine {
        object: ObjectKey,
        kept: bool,
        problems: Vec<Problem>,
    },
    /// Gone from the tree but kept: its file cannot be read, or pruning is off.
    Hold {
        object: ObjectKey,
        file: String,
    },
}

/// A plan between two commits, with field-level changes.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub base: String,
    pub head: String,
    pub entries: Vec<Entry>,
    pub unchanged: usize,
    pub problems: Vec<Problem>,
    /// What HEAD applies, but not quite as written.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<Problem>,
}

fn source_of(object: Option<&Applied>) -> String {
    object
        .and_then(|o| o.object.pointer("/metadata/annotations"))
        .and_then(|a| a.get(ANNOTATION_SOURCE))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

impl Report {
    /// Builds the report of `plan`, which was computed from `applied`.
    pub fn new(base: &str, head: &str, applied: &AppliedSet, plan: &Plan) -> Report {
        // Workloads whose replicas an autoscaler of HEAD owns: (namespace, kind, name) -> it.
        let autoscaled: std::collections::BTreeMap<(String, String, String), String> = plan
            .next
            .iter()
            .filter(|(k, _)| k.group == "autoscaling" && k.kind == "HorizontalPodAutoscaler")
            .filter_map(|(k, a)| {
                let target = &a.object["spec"]["scaleTargetRef"];
                Some((
                    (
                        k.namespace.clone(),
                        target["kind"].as_str()?.to_owned(),
                        target["name"].as_str()?.to_owned(),
                    ),
                    format!("HorizontalPodAutoscaler {}", k.name),
                ))
            })
            .collect();
        let mut entries = Vec::new();
        for key in &plan.create {
            entries.push(Entry::Create {
                object: key.clone(),
                file: source_of(plan.next.get(key)),
            });
        }
        for key in &plan.update {
            let (old, new) = (&applied[key], &plan.next[key]);
            let redact = capstan_api::kinds::is_secret(&key.group, &key.kind);
            entries.push(Entry::Update {
                object: key.clone(),
                file: source_of(Some(new)),
                changes: {
                    let mut changes = diff(&old.object, &new.object, redact);
                    if let Some(by) = autoscaled.get(&(key.namespace.clone(), key.kind.clone(), key.name.clone())) {
                        let path = "spec.replicas";
                        if !changes
                            .iter()
                            .any(|c| matches!(c, FieldChange::Changed { path: p, .. } if p == path))
                        {
                            changes.push(FieldChange::Owned {
                                path: path.into(),
                                by: by.clone(),
                            });
                        }
                    }
                    changes
                },
            });
        }
        for key in &plan.prune {
            entries.push(Entry::Prune {
                object: key.clone(),
                file: source_of(applied.get(key)),
            });
        }
        for Quarantined { object, kept, problems } in &plan.quarantined {
            entries.push(Entry::Quarantine {
                object: object.clone(),
                kept: *kept,
                problems: problems.clone(),
            });
        }
        for key in &plan.held {
            entries.push(Entry::Hold {
                object: key.clone(),
                file: source_of(applied.get(key)),
            });
        }
        let mut warnings = plan.warnings.clone();
        warnings.extend(rbac_notes(plan));
        Report {
            base: base.to_owned(),
            head: head.to_owned(),
            entries,
            unchanged: plan.unchanged,
            problems: plan.problems.clone(),
            warnings,
        }
    }

    pub fn count(&self, f: impl Fn(&Entry) -> bool) -> usize {
        self.entries.iter().filter(|e| f(e)).count()
    }
}

/// Notes for the reviewer on the RBAC objects a plan creates or changes (`crate::rbac`).
fn rbac_notes(plan: &Plan) -> Vec<Problem> {
    let cluster_role = |name: &str| -> Option<Vec<Value>> {
        let declared = plan
            .next
            .iter()
            .find(|(k, _)| k.kind == "ClusterRole" && k.name == name)
            .map(|(_, a)| a.object["rules"].as_array().cloned().unwrap_or_default());
        // The built-in roles that grant much: everything, or (admin, edit) Secrets.
        declared.or_else(|| match name {
            "cluster-admin" => Some(vec![serde_json::json!({"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]})]),
            "admin" | "edit" => Some(vec![
                serde_json::json!({"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "watch"]}),
            ]),
            _ => None,
        })
    };
    plan.create
        .iter()
        .chain(&plan.update)
        .filter(|k| k.group == "rbac.authorization.k8s.io")
        .filter_map(|k| {
            let object = &plan.next.get(k)?.object;
            let exists = |kind: &str, ns: &str, name: &str| plan.next.keys().any(|o| o.kind == kind && o.namespace == ns && o.name == name);
            let note = crate::rbac::review_note(object, &cluster_role).or_else(|| crate::rbac::missing_role_note(object, &exists))?;
            let file = source_of(plan.next.get(k));
            Some(
                Problem::new(
                    &file,
                    crate::yaml::Pos { line: 1, column: 1 },
                    crate::problem::ProblemCode::InvalidValue,
                    format!("review: {note}"),
                )
                .object(Some(k)),
            )
        })
        .collect()
}
