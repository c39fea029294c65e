//! The Deployment controller: one ReplicaSet per pod template (named by the template's hash),
//! rolled with RollingUpdate (maxSurge / maxUnavailable, 25 % each by default) or Recreate, a
//! revert re-using the old ReplicaSet (its revision moves to the top), paused deployments only
//! scaled, old ReplicaSets trimmed to revisionHistoryLimit, and the status `kubectl rollout
//! status` reads: observedGeneration, replicas, updated, ready, available, and the Available and
//! Progressing conditions (ProgressDeadlineExceeded when the rollout stalls).

use std::time::Duration;

use capstan_runtime::{Action, Reconciler};
use serde_json::{Value, json};

use super::util::{NsName, controller_ref, is_terminating, now, owner_ref, seconds, template_hash};
use super::{Controller, watches};
use crate::context::{Context, kind};
use crate::events::{EventType, Recorder};
use crate::objects::ObjectError;
use capstan_api::selector::workload_selects;
use capstan_api::time::now_rfc3339;

pub const REVISION_ANNOTATION: &str = "deployment.kubernetes.io/revision";

pub struct DeploymentController {
    pub ctx: Context,
    pub events: Recorder,
}

/// `25%` of `total`, or an absolute number; percentages round up for surge, down otherwise.
pub fn resolve(value: &Value, total: i64, round_up: bool, default_percent: i64) -> i64 {
    match value {
        Value::Number(n) => n.as_i64().unwrap_or(0),
        Value::String(s) if s.ends_with('%') => {
            let p: i64 = s.trim_end_matches('%').parse().unwrap_or(default_percent);
            if round_up { (total * p + 99) / 100 } else { total * p / 100 }
        }
        Value::String(s) => s.parse().unwrap_or(0),
        _ => {
            if round_up {
                (total * default_percent + 99) / 100
            } else {
                total * default_percent / 100
            }
        }
    }
}

fn replicas(rs: &Value) -> i64 {
    rs["spec"]["replicas"].as_i64().unwrap_or(0)
}

fn revision(rs: &Value) -> i64 {
    rs["metadata"]["annotations"][REVISION_ANNOTATION]
        .as_str()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn status_i(v: &Value, f: &str) -> i64 {
    v["status"][f].as_i64().unwrap_or(0)
}

/// The template without the hash label and with its defaults, for comparing a ReplicaSet with
/// its Deployment (as Kubernetes' `EqualIgnoreHash`): a ReplicaSet written before the API
/// defaulted templates still matches its Deployment's defaulted template, so an upgrade rolls
/// nothing out.
fn plain_template(t: &Value) -> Value {
    let mut t = t.clone();
    if let Some(l) = t.pointer_mut("/metadata/labels").and_then(Value::as_object_mut) {
        l.remove("pod-template-hash");
    }
    capstan_api::defaults::pod_template(Some(&mut t));
    t
}

/// What one reconcile decided, for the status.
struct Outcome {
    new_rs: Option<Value>,
    all: Vec<Value>,
}

/// Watches Deployments and the ReplicaSets they own.
pub fn controller(ctx: &Context) -> Controller<NsName, DeploymentController> {
    Controller {
        name: "deployment",
        reconciler: DeploymentController {
            ctx: ctx.clone(),
            events: Recorder::new(ctx.objects.clone(), "deployment-controller", None),
        },
        workers: 4,
        triggers: vec![watches("deployments", keys_for), watches("replicasets", keys_for)],
    }
}

impl Reconciler<NsName> for DeploymentController {
    type Error = ObjectError;

    async fn reconcile(&self, (ns, name): NsName) -> Result<Action, ObjectError> {
        let ctx = &self.ctx;
        ctx.caught_up().await;
        let Some(d) = ctx.cache.get(kind("deployments"), &ns, &name) else {
            return Ok(Action::AwaitChange);
        };
        let d = (*d.object).clone();
        if is_terminating(&d) {
            return Ok(Action::AwaitChange);
        }
        // None: a hash collision was recorded; again at once, with the next hash.
        let Some(outcome) = self.roll(&d).await? else {
            return Ok(Action::Requeue(Duration::ZERO));
        };
        self.update_status(&d, &outcome).await
    }
}

impl DeploymentController {
    async fn roll(&self, d: &Value) -> Result<Option<Outcome>, ObjectError> {
        let ctx = &self.ctx;
        let ns = d["metadata"]["namespace"].as_str().unwrap_or_default().to_owned();
        let rs_kind = kind("replicasets");
        // Its own sets (by the controller index), and the orphans it may adopt.
        let d_uid = d["metadata"]["uid"].as_str().unwrap_or_default().to_owned();
        let mut owned: Vec<Value> = ctx
            .cache
            .controlled_by(rs_kind, &d_uid)
            .iter()
            .map(|e| (*e.object).clone())
            .collect();
        let sets = ctx.cache.orphans(rs_kind, &ns);
        // Adopt ReplicaSets that match the selector and have no controller.
        for e in &sets {
            if controller_ref(&e.object).is_none() && workload_selects(&d["spec"]["selector"], &e.object) && !is_terminating(&e.object) {
                let adopted = ctx
                    .objects
                    .modify(rs_kind, &ns, &e.name, false, |r| {
                        let mut refs = r["metadata"]["ownerReferences"].as_array().cloned().unwrap_or_default();
                        refs.push(owner_ref(d));
                        r["metadata"]["ownerReferences"] = Value::Array(refs);
                        true
                    })
                    .await?;
                owned.push(adopted);
            }
        }
        let template = &d["spec"]["template"];
        let desired = d["spec"]["replicas"].as_i64().unwrap_or(1).max(0);
        let max_revision = owned.iter().map(revision).max().unwrap_or(0);
        let wanted = plain_template(template);
        let mut new_rs = owned.iter().find(|r| plain_template(&r["spec"]["template"]) == wanted).cloned();
        let paused = d["spec"]["paused"] == true;
        let recreate = d["spec"]["strategy"]["type"] == "Recreate";

        if new_rs.is_none() && !paused {
            let collisions = d["status"]["collisionCount"].as_i64().unwrap_or(0);
            let hash = template_hash(template, collisions);
            let rs_name = format!("{}-{hash}", d["metadata"]["name"].as_str().unwrap_or_default());
            let mut t = template.clone();
            t["metadata"]["labels"]["pod-template-hash"] = json!(hash);
            let mut selector = d["spec"]["selector"].clone();
            selector["matchLabels"]["pod-template-hash"] = json!(hash);
            // A fresh rollout starts the new set at zero and lets the surge logic grow it;
            // a first deployment (nothing old) starts at the full count.
            let old_total: i64 = owned.iter().map(replicas).sum();
            let initial = if old_total == 0 { desired } else { 0 };
            let mut rs = json!({
                "metadata": {
                    "name": rs_name,
                    "namespace": ns,
                    "labels": t["metadata"]["labels"],
                    "annotations": {REVISION_ANNOTATION: (max_revision + 1).to_string()},
                    "ownerReferences": [owner_ref(d)],
                },
                "spec": {"replicas": initial, "minReadySeconds": d["spec"]["minReadySeconds"].as_i64().unwrap_or(0), "selector": selector, "template": t},
            });
            if let Some(c) = d.pointer("/metadata/annotations/capstan.dev~1commit") {
                rs["metadata"]["annotations"]["capstan.dev/commit"] = c.clone();
            }
            match ctx.objects.create(rs_kind, rs).await {
                Ok(created) => {
                    self.events.record(
                        d,
                        EventType::Normal,
                        "ScalingReplicaSet",
                        format!("Scaled up replica set {rs_name} from 0 to {initial}"),
                    );
                    owned.push(created.clone());
                    new_rs = Some(created);
                }
                Err(ObjectError::AlreadyExists { .. }) => {
                    // A hash collision with a set that is not ours: try again with another hash.
                    ctx.objects
                        .modify(
                            kind("deployments"),
                            &ns,
                            d["metadata"]["name"].as_str().unwrap_or_default(),
                            true,
                            |dep| {
                                dep["status"]["collisionCount"] = json!(collisions + 1);
                                true
                            },
                        )
                        .await?;
                    return Ok(None);
                }
                Err(e) => return Err(e),
            }
        } else if let Some(rs) = &new_rs {
            // A revert: the old set becomes the newest revision again.
            if revision(rs) < max_revision && !paused {
                let rs_name = rs["metadata"]["name"].as_str().unwrap_or_default().to_owned();
                let updated = ctx
                    .objects
                    .modify(rs_kind, &ns, &rs_name, false, |r| {
                        r["metadata"]["annotations"][REVISION_ANNOTATION] = json!((max_revision + 1).to_string());
                        true
                    })
                    .await?;
                owned.retain(|r| r["metadata"]["name"] != updated["metadata"]["name"]);
                owned.push(updated.clone());
                new_rs = Some(updated);
            }
        }
        let new_name = new_rs.as_ref().map(|r| r["metadata"]["name"].clone());
        let olds: Vec<Value> = owned
            .iter()
            .filter(|r| Some(&r["metadata"]["name"]) != new_name.as_ref())
            .cloned()
            .collect();

        if paused {
            // Paused: keep proportions, only follow a change of the replica count.
            if let Some(rs) = &new_rs
                && olds.iter().all(|o| replicas(o) == 0)
                && replicas(rs) != desired
            {
                self.scale(d, rs, desired).await?;
            }
        } else if let Some(rs) = new_rs.clone() {
            if recreate {
                let old_running: i64 = olds.iter().map(|o| status_i(o, "replicas")).sum();
                for o in olds.iter().filter(|o| replicas(o) > 0) {
                    self.scale(d, o, 0).await?;
                }
                if old_running == 0 && olds.iter().all(|o| replicas(o) == 0) && replicas(&rs) != desired {
                    self.scale(d, &rs, desired).await?;
                }
            } else {
                self.rolling(d, &rs, &olds, desired).await?;
            }
        }
        self.cleanup(d, &olds).await?;
        let all: Vec<Value> = ctx
            .cache
            .controlled_by(rs_kind, &d_uid)
            .iter()
            .map(|e| (*e.object).clone())
            .collect();
        let new_rs = new_name.and_then(|n| all.iter().find(|r| r["metadata"]["name"] == n).cloned());
        Ok(Some(Outcome { new_rs, all }))
    }

    async fn scale(&self, d: &Value, rs: &Value, to: i64) -> Result<Value, ObjectError> {
        let from = replicas(rs);
        let name = rs["metadata"]["name"].as_str().unwrap_or_default().to_owned();
        let ns = rs["metadata"]["namespace"].as_str().unwrap_or_default().to_owned();
        let r = self
            .ctx
            .objects
            .modify(kind("replicasets"), &ns, &name, false, |r| {
                if replicas(r) == to {
                    return false;
                }
                r["spec"]["replicas"] = json!(to);
                true
            })
            .await?;
        if from != to {
            let verb = if to > from { "up" } else { "down" };
            self.events.record(
                d,
                EventType::Normal,
                "ScalingReplicaSet",
                format!("Scaled {verb} replica set {name} from {from} to {to}"),
            );
        }
        Ok(r)
    }

    /// One step of a rolling update: grow the new set within maxSurge, shrink old sets within
    /// maxUnavailable (unhealthy old pods first).
    async fn rolling(&self, d: &Value, new_rs: &Value, olds: &[Value], desired: i64) -> Result<(), ObjectError> {
        let strategy = &d["spec"]["strategy"]["rollingUpdate"];
        let mut surge = resolve(&strategy["maxSurge"], desired, true, 25);
        let unavailable = resolve(&strategy["maxUnavailable"], desired, false, 25);
        if surge == 0 && unavailable == 0 {
            surge = 1;
        }
        let all_total = replicas(new_rs) + olds.iter().map(replicas).sum::<i64>();
        // Scale up the new set, within the surge.
        let new_replicas = replicas(new_rs);
        if new_replicas < desired {
            let room = (desired + surge - all_total).max(0);
            let target = (new_replicas + room).min(desired);
            if target > new_replicas {
                self.scale(d, new_rs, target).await?;
            }
        } else if new_replicas > desired {
            self.scale(d, new_rs, desired).await?;
        }
        // Scale down old sets, oldest first: pods that are not available serve nothing and go
        // first; available ones only as far as availability stays at desired - maxUnavailable.
        let min_available = desired - unavailable;
        // A set's availability never counts more than its target: a scale-down already decided
        // but not yet carried out must not be spent twice.
        let avail = |r: &Value| status_i(r, "availableReplicas").min(replicas(r));
        let available: i64 = avail(new_rs) + olds.iter().map(avail).sum::<i64>();
        let mut budget = (available - min_available).max(0);
        let mut olds_sorted: Vec<&Value> = olds.iter().filter(|o| replicas(o) > 0).collect();
        olds_sorted.sort_by_key(|o| revision(o));
        for o in olds_sorted {
            let healthy = replicas(o).min(status_i(o, "availableReplicas"));
            let cut = healthy.min(budget);
            budget -= cut;
            let target = healthy - cut;
            if target != replicas(o) {
                self.scale(d, o, target).await?;
            }
        }
        Ok(())
    }

    /// Deletes old, empty ReplicaSets beyond revisionHistoryLimit (oldest first).
    async fn cleanup(&self, d: &Value, olds: &[Value]) -> Result<(), ObjectError> {
        let limit = d["spec"]["revisionHistoryLimit"].as_i64().unwrap_or(10).max(0) as usize;
        let mut empty: Vec<&Value> = olds
            .iter()
            .filter(|o| replicas(o) == 0 && status_i(o, "replicas") == 0 && !is_terminating(o))
            .collect();
        if empty.len() <= limit {
            return Ok(());
        }
        empty.sort_by_key(|o| revision(o));
        let excess = empty.len() - limit;
        for o in empty.into_iter().take(excess) {
            let name = o["metadata"]["name"].as_str().unwrap_or_default();
            let ns = o["metadata"]["namespace"].as_str().unwrap_or_default();
            match self.ctx.objects.delete(kind("replicasets"), ns, name, None).await {
                Ok(_) | Err(ObjectError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    async fn update_status(&self, d: &Value, o: &Outcome) -> Result<Action, ObjectError> {
        let desired = d["spec"]["replicas"].as_i64().unwrap_or(1).max(0);
        let sum = |f: &str| o.all.iter().map(|r| status_i(r, f)).sum::<i64>();
        let (total, ready, available) = (sum("replicas"), sum("readyReplicas"), sum("availableReplicas"));
        let updated = o.new_rs.as_ref().map_or(0, |r| status_i(r, "replicas"));
        let strategy = &d["spec"]["strategy"];
        let max_unavailable = if strategy["type"] == "Recreate" {
            0
        } else {
            resolve(&strategy["rollingUpdate"]["maxUnavailable"], desired, false, 25)
        };
        let min_available = desired - max_unavailable;
        let complete = updated == desired
            && total == desired
            && available >= desired
            && o.new_rs.as_ref().is_some_and(|r| status_i(r, "availableReplicas") >= desired);
        let now_s = now_rfc3339();
        let old_status = &d["status"];
        let find = |ty: &str| {
            old_status["conditions"]
                .as_array()
                .and_then(|cs| cs.iter().find(|c| c["type"] == ty))
                .cloned()
        };
        let cond = |ty: &str, status: &str, reason: &str, message: String| -> Value {
            let prev = find(ty);
            let same = prev.as_ref().is_some_and(|p| p["status"] == status && p["reason"] == reason);
            let transition = if prev.as_ref().is_some_and(|p| p["status"] == status) {
                prev.as_ref().unwrap()["lastTransitionTime"].clone()
            } else {
                json!(now_s)
            };
            let update = if same {
                prev.as_ref().unwrap()["lastUpdateTime"].clone()
            } else {
                json!(now_s)
            };
            json!({"type": ty, "status": status, "reason": reason, "message": message, "lastUpdateTime": update, "lastTransitionTime": transition})
        };
        let available_cond = if available >= min_available {
            cond(
                "Available",
                "True",
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.".into(),
            )
        } else {
            cond(
                "Available",
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.".into(),
            )
        };
        let rs_name = o
            .new_rs
            .as_ref()
            .and_then(|r| r["metadata"]["name"].as_str())
            .unwrap_or_default()
            .to_owned();
        let deadline = d["spec"]["progressDeadlineSeconds"].as_i64().unwrap_or(600);
        let prev_progress = find("Progressing");
        // Progress is any change in the counts; the deadline runs from the last progress.
        let progressed = old_status["updatedReplicas"].as_i64().unwrap_or(-1) != updated
            || old_status["availableReplicas"].as_i64().unwrap_or(-1) != available
            || old_status["readyReplicas"].as_i64().unwrap_or(-1) != ready
            || old_status["observedGeneration"] != d["metadata"]["generation"];
        let mut requeue = None;
        let progressing = if d["spec"]["paused"] == true {
            cond("Progressing", "Unknown", "DeploymentPaused", "Deployment is paused".into())
        } else if complete {
            cond(
                "Progressing",
                "True",
                "NewReplicaSetAvailable",
                format!("ReplicaSet \"{rs_name}\" has successfully progressed."),
            )
        } else {
            let last = prev_progress
                .as_ref()
                .and_then(|p| seconds(&p["lastUpdateTime"]))
                .unwrap_or_else(now);
            let stalled = prev_progress.as_ref().is_some_and(|p| p["reason"] == "ProgressDeadlineExceeded");
            if (stalled && !progressed) || (!progressed && now() - last > deadline && prev_progress.is_some()) {
                if !stalled {
                    self.events.record(
                        d,
                        EventType::Warning,
                        "ProgressDeadlineExceeded",
                        format!("ReplicaSet \"{rs_name}\" has timed out progressing."),
                    );
                }
                cond(
                    "Progressing",
                    "False",
                    "ProgressDeadlineExceeded",
                    format!("ReplicaSet \"{rs_name}\" has timed out progressing."),
                )
            } else {
                let c = json!({"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated", "message": format!("ReplicaSet \"{rs_name}\" is progressing."),
                    "lastUpdateTime": match (&prev_progress, progressed) { (Some(p), false) => p["lastUpdateTime"].clone(), _ => json!(now_s) },
                    "lastTransitionTime": prev_progress.as_ref().filter(|p| p["status"] == "True").map(|p| p["lastTransitionTime"].clone()).unwrap_or_else(|| json!(now_s))});
                let since = if progressed { 0 } else { now() - last };
                requeue = Some(Duration::from_secs((deadline - since).clamp(1, 600) as u64));
                c
            }
        };
        let mut status = json!({
            "observedGeneration": d["metadata"]["generation"],
            "replicas": total,
            "updatedReplicas": updated,
            "readyReplicas": ready,
            "availableReplicas": available,
            "unavailableReplicas": (desired - available).max(0),
            "conditions": [available_cond, progressing],
        });
        if let Some(c) = old_status.get("collisionCount") {
            status["collisionCount"] = c.clone();
        }
        if *old_status != status {
            let name = d["metadata"]["name"].as_str().unwrap_or_default().to_owned();
            let ns = d["metadata"]["namespace"].as_str().unwrap_or_default().to_owned();
            self.ctx
                .objects
                .modify(kind("deployments"), &ns, &name, true, |dep| {
                    dep["status"] = status.clone();
                    true
                })
                .await?;
        }
        Ok(requeue.map_or(Action::AwaitChange, Action::Requeue))
    }
}

/// A Deployment's key from itself or from a ReplicaSet it controls.
pub fn keys_for(obj: &Value) -> Vec<NsName> {
    let ns = obj["metadata"]["namespace"].as_str().unwrap_or_default().to_owned();
    match obj["kind"].as_str() {
        Some("Deployment") => vec![(ns, obj["metadata"]["name"].as_str().unwrap_or_default().to_owned())],
        _ => controller_ref(obj)
            .filter(|r| r["kind"] == "Deployment")
            .and_then(|r| r["name"].as_str())
            .map(|n| vec![(ns, n.to_owned())])
            .unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replicaset_written_before_defaulting_matches_its_defaulted_deployment() {
        let written = json!({"metadata": {"labels": {"app": "web", "pod-template-hash": "abc"}}, "spec": {
            "containers": [{"name": "web", "image": "web:1", "ports": [{"containerPort": 80}]}]}});
        let mut defaulted = written.clone();
        defaulted["metadata"]["labels"].as_object_mut().unwrap().remove("pod-template-hash");
        capstan_api::defaults::pod_template(Some(&mut defaulted));
        assert_ne!(written, defaulted);
        assert_eq!(plain_template(&written), plain_template(&defaulted));
        let mut other = defaulted.clone();
        other["spec"]["containers"][0]["image"] = json!("web:2");
        assert_ne!(plain_template(&written), plain_template(&other));
    }

    #[test]
    fn surge_and_unavailability_resolve_like_kubernetes() {
        assert_eq!(resolve(&Value::Null, 10, true, 25), 3);
        assert_eq!(resolve(&Value::Null, 10, false, 25), 2);
        assert_eq!(resolve(&json!("50%"), 3, true, 25), 2);
        assert_eq!(resolve(&json!("50%"), 3, false, 25), 1);
        assert_eq!(resolve(&json!(2), 3, false, 25), 2);
        assert_eq!(resolve(&Value::Null, 1, false, 25), 0);
        assert_eq!(resolve(&Value::Null, 1, true, 25), 1);
    }
}
