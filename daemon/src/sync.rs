//! The GitOps sync: turns each commit's desired state into objects in the store — create,
//! update, prune — honouring quarantine (a broken object keeps its last good version) and never
//! pruning because of an unreadable file. What was applied is recorded beside each object, so
//! that a restart resumes from it and an update is a three-way merge that keeps what the
//! cluster added (allocated ClusterIPs and node ports, bound nodes, controller annotations).

use std::collections::BTreeMap;
use std::sync::Arc;

use capstan_api::defaults::{TAINT_NOT_READY, TAINT_UNREACHABLE, tolerates_no_execute};
use capstan_api::{KindInfo, ObjectKey};
use capstan_git::source::CommitUpdate;
use capstan_manifest::desired::{Applied, AppliedSet, Plan, plan, plan_delta};
use capstan_manifest::problem::Problem;
use capstan_store::{Store, Txn};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::objects::{ObjectError, Objects, key_of};

/// Store prefix of the applied records: `/capstan/applied/<object key>`.
pub const APPLIED_PREFIX: &str = "/capstan/applied";
/// Store key of the sync status.
pub const STATUS_KEY: &str = "/capstan/sync/status";

/// Commits applied whose note is not yet final in Git: `/capstan/sync/unnoted/<commit>` holds
/// `{"branch", "appliedAt"}`. The write-back removes each once its note is final, so a leader
/// that takes over notes what its predecessor applied but had not noted.
pub const UNNOTED_PREFIX: &str = "/capstan/sync/unnoted/";

/// The cluster-wide sync state, as `capstan status` shows it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SyncStatus {
    pub branch: String,
    /// The last commit whose plan was applied.
    pub applied_commit: Option<String>,
    /// The last commit the source handed over (equal to applied unless applying failed).
    pub attempted_commit: Option<String>,
    pub created: usize,
    pub updated: usize,
    pub pruned: usize,
    pub unchanged: usize,
    pub quarantined: Vec<QuarantinedObject>,
    pub held: Vec<ObjectKey>,
    /// Why the commit's prunes are held (it would prune more than the prune limit allows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prune_held: Option<String>,
    pub problems: Vec<Problem>,
    /// What the commit applies, but not quite as written (or not with every effect it asks for).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<Problem>,
    /// Errors of the source or of writes, most recent last.
    pub errors: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct QuarantinedObject {
    pub object: ObjectKey,
    pub kept: bool,
}

/// Applies commits; one per daemon.
pub struct GitSync {
    objects: Objects,
    applied: AppliedSet,
    prune: bool,
    /// The prune setting the previous commit was applied with.
    last_prune: bool,
    status: watch::Sender<SyncStatus>,
    /// The last commit handed over, kept to retry writes that failed.
    last: Option<(Arc<capstan_git::repo::LoadedCommit>, String)>,
    /// Warnings about quarantined objects.
    events: crate::events::Recorder,
    /// Whether the last application left writes undone (retried on an interval).
    write_failed: bool,
}

impl std::fmt::Debug for GitSync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GitSync({} applied)", self.applied.len())
    }
}

fn applied_key(kind: &KindInfo, namespace: &str, name: &str) -> String {
    format!("{APPLIED_PREFIX}{}", key_of(kind, namespace, name))
}

impl GitSync {
    /// Loads what was applied before a restart.
    pub fn new(objects: Objects) -> Result<GitSync, ObjectError> {
        let objects_for_events = objects.clone();
        let mut applied = AppliedSet::new();
        for kv in objects.store().range(APPLIED_PREFIX, None, 0)?.kvs {
            let Ok(record) = serde_json::from_slice::<Value>(&kv.value) else {
                continue;
            };
            let Ok(key) = serde_json::from_value::<ObjectKey>(record["key"].clone()) else {
                continue;
            };
            let commit = record["commit"].as_str().unwrap_or_default();
            applied.insert(
                key,
                Applied {
                    object: Arc::new(record["object"].clone()),
                    commit: Arc::from(commit),
                },
            );
        }
        let status = stored_status(objects.store().as_ref())?;
        Ok(GitSync {
            objects,
            applied,
            prune: true,
            last_prune: true,
            status: watch::channel(status).0,
            last: None,
            events: crate::events::Recorder::new(objects_for_events, "capstan-sync", None),
            write_failed: false,
        })
    }

    pub fn status(&self) -> watch::Receiver<SyncStatus> {
        self.status.subscribe()
    }

    pub fn applied(&self) -> &AppliedSet {
        &self.applied
    }

    /// Applies one commit from the source; returns the plan that was carried out.
    pub async fn apply(&mut self, update: &CommitUpdate) -> Plan {
        self.last = Some((update.loaded.clone(), update.branch.clone()));
        // A delta is relative to the previous commit, which must be the one applied.
        let follows = update.previous.map(|p| p.to_string()) == self.status.borrow().applied_commit;
        self.apply_loaded(&update.loaded.clone(), &update.branch.clone(), !follows).await
    }

    /// Re-applies the last commit in full if its last application left write errors (not for
    /// errors of the source: a branch that went missing is reported, nothing is re-applied).
    pub async fn retry(&mut self) {
        if !self.write_failed {
            return;
        }
        if let Some((loaded, branch)) = self.last.clone() {
            self.apply_loaded(&loaded, &branch, true).await;
        }
    }

    async fn apply_loaded(&mut self, loaded: &capstan_git::repo::LoadedCommit, branch: &str, full: bool) -> Plan {
        let desired = loaded.snapshot.desired();
        let commit = loaded.commit.to_string();
        let settings = settings_of(&desired);
        let allowed = settings.prune.unwrap_or(self.prune);
        // Pruning again after it was off (or held) must look at every applied object, not only
        // the changed ones.
        let full = full || allowed != self.last_prune;
        let mut next = match loaded.snapshot.delta() {
            Some(delta) if !full => plan_delta(&self.applied, &desired, delta, &commit, allowed),
            _ => plan(&self.applied, &desired, &commit, allowed),
        };
        let limit = settings.prune_limit_percent();
        let prune_held = (allowed && mass_prune(next.prune.len(), self.applied.len(), limit)).then(|| {
            format!(
                "commit {} would prune {} of the {} objects applied, more than the prune limit of {limit} %: nothing is pruned until a commit sets ClusterSettings spec.pruneLimitPercent higher (or brings the objects back)",
                &commit[..commit.len().min(12)],
                next.prune.len(),
                self.applied.len()
            )
        });
        if let Some(why) = &prune_held {
            tracing::warn!(git.commit = %commit, "{why}");
            next = plan(&self.applied, &desired, &commit, false);
        }
        let plan = next;
        self.last_prune = allowed && prune_held.is_none();
        let mut errors = Vec::new();
        // What others need goes first when creating (as Helm orders an install) and last when
        // pruning: a pod is scheduled with its PriorityClass and counted by its quota, and
        // admitted under the ClusterSettings of its commit.
        let rank = |kind: &str| match kind {
            "ClusterSettings" | "Namespace" => 0,
            "PriorityClass" | "IngressClass" | "GatewayClass" | "ClusterRole" | "Role" => 1,
            "ClusterRoleBinding" | "RoleBinding" => 2,
            "ResourceQuota" | "ServiceAccount" | "ConfigMap" | "Secret" | "ReferenceGrant" => 2,
            "Service" => 3,
            _ => 4,
        };
        let order = |keys: &[ObjectKey]| -> Vec<ObjectKey> {
            let mut v = keys.to_vec();
            v.sort_by_key(|k| (rank(&k.kind), k.clone()));
            v
        };
        // Creates and updates in one order: a ClusterSettings change comes before the objects
        // created with it.
        for key in order(&[plan.create.as_slice(), plan.update.as_slice()].concat()) {
            if let Err(e) = self.write(&key, &plan.next[&key]).await {
                errors.push(format!("applying {key}: {e}"));
            }
        }
        let mut prune = order(&plan.prune);
        prune.reverse();
        for key in &prune {
            if let Err(e) = self.remove(key).await {
                errors.push(format!("pruning {key}: {e}"));
            }
        }
        self.write_failed = !errors.is_empty();
        if errors.is_empty() {
            self.applied = plan.next.clone();
        } else {
            // Keep what did get written; a later commit or restart retries the rest.
            for key in plan.create.iter().chain(&plan.update) {
                if !errors.iter().any(|e| e.contains(&key.to_string())) {
                    self.applied.insert(key.clone(), plan.next[key].clone());
                }
            }
            for key in &plan.prune {
                if !errors.iter().any(|e| e.contains(&key.to_string())) {
                    self.applied.remove(key);
                }
            }
        }
        for e in &errors {
            tracing::warn!(git.commit = %commit, error = %e, "sync write failed");
        }
        let status = SyncStatus {
            branch: branch.to_owned(),
            applied_commit: if errors.is_empty() {
                Some(commit.clone())
            } else {
                self.status.borrow().applied_commit.clone()
            },
            attempted_commit: Some(commit.clone()),
            created: plan.create.len(),
            updated: plan.update.len(),
            pruned: plan.prune.len(),
            unchanged: plan.unchanged,
            quarantined: plan
                .quarantined
                .iter()
                .map(|q| QuarantinedObject {
                    object: q.object.clone(),
                    kept: q.kept,
                })
                .collect(),
            held: plan.held.clone(),
            prune_held,
            problems: plan.problems.clone(),
            warnings: plan.warnings.clone(),
            errors,
        };
        self.publish(status).await;
        self.report_quarantine(&plan, &commit);
        tracing::info!(
            git.commit = %commit, created = plan.create.len(), updated = plan.update.len(), pruned = plan.prune.len(),
            quarantined = plan.quarantined.len(), problems = plan.problems.len(), "applied commit"
        );
        plan
    }

    /// A Warning event on each object that keeps running at its last good version because its
    /// manifest is broken in this commit, naming file, line and field (`kubectl describe` and
    /// `kubectl get events` show it). A Secret's problem is not quoted: it may hold a value.
    fn report_quarantine(&self, plan: &Plan, commit: &str) {
        let short = &commit[..commit.len().min(12)];
        // Objects whose own manifest is broken, and objects held because the file (or the
        // kustomization) they come from cannot be read or built.
        let held = plan.held.iter().filter_map(|key| {
            let source = capstan_manifest::desired::source_of(self.applied.get(key)?)?;
            let problems: Vec<Problem> = plan.problems.iter().filter(|p| p.file == source).cloned().collect();
            (!problems.is_empty()).then_some((key, problems))
        });
        let quarantined = plan.quarantined.iter().filter(|q| q.kept).map(|q| (&q.object, q.problems.clone()));
        for (key, problems) in quarantined.chain(held) {
            let Some(kind) = key.kind_info() else { continue };
            let Ok(Some(live)) = self.objects.get(kind, &key.namespace, &key.name) else {
                continue;
            };
            let problems: Vec<String> = problems
                .iter()
                .map(|p| {
                    if capstan_api::kinds::is_secret(&key.group, &key.kind) {
                        format!("{}:{}:{}: (not shown: the object is a Secret)", p.file, p.line, p.column)
                    } else {
                        let mut p = p.clone();
                        p.object = None;
                        p.to_string()
                    }
                })
                .collect();
            self.events.record(
                &live,
                crate::events::EventType::Warning,
                "InvalidManifest",
                format!(
                    "commit {short} is not applied to this object; its last good version keeps running: {}",
                    problems.join("; ")
                ),
            );
        }
    }

    /// Records a source failure in the status; the last applied state stays in force.
    pub async fn source_failed(&mut self, error: String) {
        let mut status = self.status.borrow().clone();
        status.errors.push(error);
        if status.errors.len() > 20 {
            status.errors.remove(0);
        }
        self.publish(status).await;
    }

    async fn publish(&self, status: SyncStatus) {
        let bytes = serde_json::to_vec(&status).unwrap_or_default();
        let mut txn = Txn::default().put(STATUS_KEY, bytes);
        if let Some(commit) = &status.applied_commit
            && self.status.borrow().applied_commit.as_ref() != Some(commit)
        {
            let record = serde_json::json!({"branch": status.branch, "appliedAt": jiff::Timestamp::now().to_string()});
            txn = txn.put(format!("{UNNOTED_PREFIX}{commit}"), record.to_string());
        }
        if let Err(e) = self.objects.store().txn(txn).await {
            tracing::warn!(error = %e, "cannot record the sync status");
        }
        self.status.send_replace(status);
    }

    async fn write(&self, key: &ObjectKey, applied: &Applied) -> Result<(), ObjectError> {
        let kind = key.kind_info().expect("keys of desired objects name registry kinds");
        let record_key = applied_key(kind, &key.namespace, &key.name);
        let previous: Option<Value> = self
            .objects
            .store()
            .get(&record_key)?
            .and_then(|kv| serde_json::from_slice::<Value>(&kv.value).ok())
            .map(|r| r["object"].clone());
        let desired = applied.to_object();
        loop {
            let result = match self.objects.get(kind, &key.namespace, &key.name)? {
                None => self.objects.create(kind, desired.clone()).await.map(|_| ()),
                Some(live) if job_runs_anew(kind, &live, &desired) => {
                    // A Job's pod template and counts cannot change under it (the API server
                    // refuses); a commit that changes them means a new run: the Job is replaced
                    // (its pods go with it), as Flux's `force` does.
                    match self.objects.delete(kind, &key.namespace, &key.name, None).await {
                        Ok(_) | Err(ObjectError::NotFound { .. }) => continue,
                        Err(e) => Err(e),
                    }
                }
                Some(live) => {
                    let mut next = merge_live(kind, &live, previous.as_ref(), &desired);
                    next["metadata"]["resourceVersion"] = live["metadata"]["resourceVersion"].clone();
                    self.objects.update(kind, next, false).await.map(|_| ())
                }
            };
            match result {
                Err(ObjectError::Conflict { .. } | ObjectError::AlreadyExists { .. }) => continue,
                other => other?,
            }
            break;
        }
        let record = json!({"key": key, "commit": &*applied.commit, "object": &*applied.object});
        self.objects
            .store()
            .txn(Txn::default().put(record_key, serde_json::to_vec(&record).unwrap_or_default()))
            .await?;
        Ok(())
    }

    async fn remove(&self, key: &ObjectKey) -> Result<(), ObjectError> {
        let kind = key.kind_info().expect("keys of desired objects name registry kinds");
        match self.objects.delete(kind, &key.namespace, &key.name, None).await {
            Ok(_) | Err(ObjectError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        self.objects
            .store()
            .txn(Txn::default().delete(applied_key(kind, &key.namespace, &key.name)))
            .await?;
        Ok(())
    }
}

/// The object to write when the desired content changed: the desired object, plus what the
/// cluster owns — status, labels and annotations that the previous desired version did not set,
/// and the spec fields Capstan's controllers fill in.
pub fn merge_live(kind: &KindInfo, live: &Value, previous: Option<&Value>, desired: &Value) -> Value {
    let mut next = desired.clone();
    for map in ["labels", "annotations"] {
        let live_map = live["metadata"][map].as_object().cloned().unwrap_or_default();
        let prev_map = previous.and_then(|p| p["metadata"][map].as_object()).cloned().unwrap_or_default();
        let mut merged: BTreeMap<String, Value> = BTreeMap::new();
        for (k, v) in &live_map {
            if !prev_map.contains_key(k) {
                merged.insert(k.clone(), v.clone());
            }
        }
        if let Some(d) = desired["metadata"][map].as_object() {
            for (k, v) in d {
                merged.insert(k.clone(), v.clone());
            }
        }
        if !merged.is_empty() {
            next["metadata"][map] = json!(merged);
        }
    }
    for field in ["ownerReferences", "finalizers"] {
        if let Some(v) = live["metadata"].get(field) {
            next["metadata"][field] = v.clone();
        }
    }
    // What the volume binder wrote: the class it defaulted to, the volume it bound.
    let kept: &[&str] = match kind.kind {
        "PersistentVolumeClaim" => &["volumeName", "storageClassName"],
        "PersistentVolume" => &["claimRef"],
        _ => &[],
    };
    for field in kept {
        if next["spec"].get(*field).is_none()
            && let Some(v) = live["spec"].get(*field)
        {
            next["spec"][*field] = v.clone();
        }
    }
    match kind.kind {
        "Service" => {
            for field in ["clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"] {
                if next["spec"].get(field).is_none()
                    && let Some(v) = live["spec"].get(field)
                {
                    next["spec"][field] = v.clone();
                }
            }
            let live_ports = live["spec"]["ports"].as_array().cloned().unwrap_or_default();
            if let Some(ports) = next["spec"]["ports"].as_array_mut() {
                for p in ports {
                    if p.get("nodePort").is_none() {
                        let same = live_ports.iter().find(|lp| {
                            lp["port"] == p["port"] && lp["protocol"].as_str().unwrap_or("TCP") == p["protocol"].as_str().unwrap_or("TCP")
                        });
                        if let Some(np) = same.and_then(|lp| lp.get("nodePort")) {
                            p["nodePort"] = np.clone();
                        }
                    }
                }
            }
        }
        "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet" => {
            // A restart an administrator asked for (`kubectl rollout restart`) stays: undoing it
            // would restart the pods again. A commit that sets the annotation itself wins.
            let restarted = &live["spec"]["template"]["metadata"]["annotations"][capstan_api::meta::ANNOTATION_RESTARTED_AT];
            if restarted.is_string()
                && next["spec"]["template"].is_object()
                && next["spec"]["template"]["metadata"]["annotations"][capstan_api::meta::ANNOTATION_RESTARTED_AT].is_null()
            {
                next["spec"]["template"]["metadata"]["annotations"][capstan_api::meta::ANNOTATION_RESTARTED_AT] = restarted.clone();
            }
            // An autoscaler owns the replicas: Git's count was the starting point, and a commit
            // that leaves `replicas` as it was keeps the autoscaled count.
            let autoscaled = live["metadata"]["annotations"][crate::controllers::autoscaler::AUTOSCALED_BY].is_string();
            let unchanged = previous.is_some_and(|p| p["spec"]["replicas"] == desired["spec"]["replicas"]);
            if autoscaled
                && unchanged
                && let Some(r) = live["spec"].get("replicas")
            {
                next["spec"]["replicas"] = r.clone();
            }
        }
        "Job" => {
            // The selector and pod labels the API server made from the Job's uid stay.
            if next["spec"].get("selector").is_none()
                && let Some(selector) = live["spec"].get("selector")
            {
                next["spec"]["selector"] = selector.clone();
            }
            if let Some(live_labels) = live["spec"]["template"]["metadata"]["labels"].as_object() {
                for key in [
                    "batch.kubernetes.io/controller-uid",
                    "batch.kubernetes.io/job-name",
                    "controller-uid",
                    "job-name",
                ] {
                    if let Some(v) = live_labels.get(key)
                        && next["spec"]["template"].is_object()
                    {
                        next["spec"]["template"]["metadata"]["labels"][key] = v.clone();
                    }
                }
            }
        }
        "Pod" => {
            for field in ["nodeName", "serviceAccountName"] {
                if next["spec"].get(field).is_none()
                    && let Some(v) = live["spec"].get(field)
                {
                    next["spec"][field] = v.clone();
                }
            }
            // The eviction tolerations admission added stay while the manifest has none of its own.
            let admitted: Vec<Value> = live["spec"]["tolerations"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|t| {
                    [TAINT_NOT_READY, TAINT_UNREACHABLE].contains(&t["key"].as_str().unwrap_or_default())
                        && t["effect"] == "NoExecute"
                        && !tolerates_no_execute(&next["spec"], t["key"].as_str().unwrap_or_default())
                })
                .cloned()
                .collect();
            if !admitted.is_empty() && next["spec"].is_object() {
                match next["spec"].get_mut("tolerations").and_then(Value::as_array_mut) {
                    Some(list) => list.extend(admitted),
                    None => next["spec"]["tolerations"] = Value::Array(admitted),
                }
            }
        }
        _ => {}
    }
    next
}

/// Whether the desired version of a Job changes what the API server keeps fixed once a Job
/// exists (everything in its spec but parallelism, the deadline, suspension, the back-off limit
/// and the time to live), so that it must run anew.
pub fn job_runs_anew(kind: &KindInfo, live: &Value, desired: &Value) -> bool {
    if kind.group != "batch" || kind.kind != "Job" {
        return false;
    }
    let generated = live["spec"]["manualSelector"] != true;
    // Both with their defaults (the live one has them), without what may change and without
    // what the API server generated.
    let fixed = |spec: &Value| -> Value {
        let mut job = json!({"spec": spec.clone()});
        capstan_api::defaults::apply(kind, &mut job);
        let mut spec = job["spec"].take();
        if let Some(s) = spec.as_object_mut() {
            for mutable in [
                "parallelism",
                "activeDeadlineSeconds",
                "suspend",
                "backoffLimit",
                "ttlSecondsAfterFinished",
            ] {
                s.remove(mutable);
            }
            if generated {
                s.remove("selector");
            }
        }
        if generated && let Some(labels) = spec.pointer_mut("/template/metadata/labels").and_then(Value::as_object_mut) {
            for key in [
                "batch.kubernetes.io/controller-uid",
                "batch.kubernetes.io/job-name",
                "controller-uid",
                "job-name",
            ] {
                labels.remove(key);
            }
            if labels.is_empty()
                && let Some(meta) = spec.pointer_mut("/template/metadata").and_then(Value::as_object_mut)
            {
                meta.remove("labels");
            }
        }
        if spec["template"]["metadata"].as_object().is_some_and(|m| m.is_empty())
            && let Some(t) = spec["template"].as_object_mut()
        {
            t.remove("metadata");
        }
        spec
    };
    fixed(&live["spec"]) != fixed(&desired["spec"])
}

/// The sync status last recorded in the store (by this replica or a leader before it).
pub fn stored_status(store: &dyn Store) -> Result<SyncStatus, capstan_store::StoreError> {
    Ok(store
        .get(STATUS_KEY)?
        .and_then(|kv| serde_json::from_slice::<SyncStatus>(&kv.value).ok())
        .unwrap_or_default())
}

/// Drops every applied record and sync status (for tests that reuse a store).
pub async fn reset(store: &Arc<dyn Store>) -> Result<(), capstan_store::StoreError> {
    let mut txn = Txn::default().delete(STATUS_KEY);
    for kv in store
        .range(APPLIED_PREFIX, None, 0)?
        .kvs
        .into_iter()
        .chain(store.range(UNNOTED_PREFIX, None, 0)?.kvs)
    {
        txn = txn.delete(kv.key);
    }
    store.txn(txn).await.map(|_| ())
}

/// The commit's ClusterSettings, or none set.
fn settings_of(desired: &capstan_manifest::desired::DesiredState) -> capstan_api::capstan::ClusterSettingsSpec {
    desired
        .objects
        .iter()
        .find(|(k, _)| k.kind == "ClusterSettings")
        .and_then(|(_, m)| serde_json::from_value(m.object["spec"].clone()).ok())
        .unwrap_or_default()
}

/// Fewest prunes that the prune limit holds back: removing one small app (a Deployment, its
/// Service, config and namespace) is an ordinary change even in a small cluster.
const MASS_PRUNE_MIN: usize = 10;

/// Whether pruning `prunes` of `applied` objects exceeds `limit_percent` of them (a tree emptied
/// by a mistake — a wrong path, a bad merge — rather than a change someone meant).
fn mass_prune(prunes: usize, applied: usize, limit_percent: u32) -> bool {
    prunes >= MASS_PRUNE_MIN && prunes * 100 > applied * limit_percent as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_autoscaled_count_is_kept_until_a_commit_changes_replicas() {
        let kind = capstan_api::kinds::by_name("deployments").unwrap();
        let live = json!({"metadata": {"name": "web", "annotations": {"capstan.dev/autoscaled-by": "web"}}, "spec": {"replicas": 7, "template": {"x": 1}}});
        let previous = json!({"metadata": {"name": "web"}, "spec": {"replicas": 2, "template": {"x": 1}}});
        let image_only = json!({"metadata": {"name": "web"}, "spec": {"replicas": 2, "template": {"x": 2}}});
        let next = merge_live(kind, &live, Some(&previous), &image_only);
        assert_eq!(next["spec"]["replicas"], 7);
        assert_eq!(next["spec"]["template"]["x"], 2);
        let rescaled = json!({"metadata": {"name": "web"}, "spec": {"replicas": 3, "template": {"x": 1}}});
        assert_eq!(
            merge_live(kind, &live, Some(&previous), &rescaled)["spec"]["replicas"],
            3,
            "Git changed replicas: its value wins"
        );
    }

    #[test]
    fn a_restart_survives_commits_that_do_not_set_it() {
        let kind = capstan_api::kinds::by_name("deployments").unwrap();
        let at = capstan_api::meta::ANNOTATION_RESTARTED_AT;
        let live = json!({"metadata": {"name": "web"}, "spec": {"template": {"metadata": {"annotations": {at: "t1"}}, "spec": {"x": 1}}}});
        let previous = json!({"metadata": {"name": "web"}, "spec": {"template": {"spec": {"x": 1}}}});
        let image = json!({"metadata": {"name": "web"}, "spec": {"template": {"spec": {"x": 2}}}});
        let next = merge_live(kind, &live, Some(&previous), &image);
        assert_eq!(next["spec"]["template"]["metadata"]["annotations"][at], "t1");
        assert_eq!(next["spec"]["template"]["spec"]["x"], 2);
        let set = json!({"metadata": {"name": "web"}, "spec": {"template": {"metadata": {"annotations": {at: "t0"}}, "spec": {"x": 1}}}});
        assert_eq!(
            merge_live(kind, &live, Some(&previous), &set)["spec"]["template"]["metadata"]["annotations"][at],
            "t0"
        );
    }

    #[test]
    fn a_three_way_merge_keeps_what_the_cluster_added() {
        let svc = capstan_api::kinds::by_name("svc").unwrap();
        let previous = json!({"metadata": {"name": "web", "labels": {"app": "web", "old": "x"}}, "spec": {"ports": [{"port": 80}]}});
        let live = json!({"metadata": {"name": "web", "labels": {"app": "web", "old": "x", "added-by-cluster": "y"}, "annotations": {"capstan.dev/commit": "c1"}},
            "spec": {"clusterIP": "10.96.0.20", "ports": [{"port": 80, "nodePort": 30001, "protocol": "TCP"}]}, "status": {"loadBalancer": {}}});
        let desired = json!({"metadata": {"name": "web", "labels": {"app": "web"}, "annotations": {"capstan.dev/commit": "c2"}}, "spec": {"type": "NodePort", "ports": [{"port": 80}, {"port": 81}]}});
        let next = merge_live(svc, &live, Some(&previous), &desired);
        assert_eq!(next["metadata"]["labels"], json!({"added-by-cluster": "y", "app": "web"}));
        assert_eq!(next["metadata"]["annotations"]["capstan.dev/commit"], "c2");
        assert_eq!(next["spec"]["clusterIP"], "10.96.0.20");
        assert_eq!(next["spec"]["ports"][0]["nodePort"], 30001);
        assert!(next["spec"]["ports"][1].get("nodePort").is_none());
    }

    #[test]
    fn a_commit_that_prunes_most_objects_is_held() {
        assert!(!mass_prune(9, 9, 50), "one small app is an ordinary change");
        assert!(mass_prune(10, 10, 50));
        assert!(!mass_prune(10, 20, 50));
        assert!(mass_prune(11, 20, 50));
        assert!(!mass_prune(100, 100, 100), "100 % turns the check off");
        assert!(mass_prune(1_000, 10_000, 0), "0 % holds any mass prune");
    }
}
