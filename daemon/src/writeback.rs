//! Status written back into Git: a note on each applied commit (`refs/notes/capstan`: when it was
//! applied, what changed, what was quarantined, how its rollouts ended) and a status branch
//! (`refs/heads/capstan/status`) holding the observed status of every object, committed at most
//! once per interval and only when something changed. Secrets are never written.
//!
//! The texts are made by pure functions over the sync status and the cache; the thin edge writes
//! them with git2 into the tracked repository (for a remote: into its mirror, then pushed).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use capstan_git::notes::{self, Counts, Note, Outcome, QuarantinedObject, Revert, Rollout};
use capstan_git::{refs, status_branch};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::cache::{Cache, Entry};
use crate::context::kind;
use crate::sync::SyncStatus;

/// The kinds whose status goes to the status branch (never Secrets: they have no status, and
/// their data must not reach Git).
const STATUS_KINDS: [&str; 8] = [
    "namespaces",
    "nodes",
    "pods",
    "services",
    "deployments",
    "replicasets",
    "resourcequotas",
    "endpoints",
];

/// How a Deployment's rollout stands.
fn rollout(d: &Value) -> (&'static str, Option<String>) {
    let status = &d["status"];
    let conditions = status["conditions"].as_array().cloned().unwrap_or_default();
    let progressing = conditions.iter().find(|c| c["type"] == "Progressing");
    if let Some(p) = progressing
        && p["status"] == "False"
    {
        return ("failed", p["message"].as_str().map(str::to_owned));
    }
    let want = d["spec"]["replicas"].as_i64().unwrap_or(1);
    let generation_seen = status["observedGeneration"].as_i64() >= d["metadata"]["generation"].as_i64();
    let done = generation_seen
        && status["updatedReplicas"].as_i64().unwrap_or(0) == want
        && status["availableReplicas"].as_i64().unwrap_or(0) == want
        && status["replicas"].as_i64().unwrap_or(0) == want;
    if done { ("complete", None) } else { ("progressing", None) }
}

/// The note for the applied commit (see [`capstan_git::notes`]).
pub fn note(status: &SyncStatus, cache: &Cache, applied_at: &str) -> Option<Note> {
    let commit = status.applied_commit.as_deref()?;
    let (deployments, _) = cache.list(kind("deployments"), None);
    let mut rollouts = Vec::new();
    for d in deployments.iter() {
        // The Deployments this commit changed (their provenance names it).
        if d.object["metadata"]["annotations"]["capstan.dev/commit"] != commit {
            continue;
        }
        let (state, message) = rollout(&d.object);
        rollouts.push(Rollout {
            deployment: format!("{}/{}", d.namespace, d.name),
            state: state.to_owned(),
            message,
        });
    }
    // A commit with objects that did not apply (quarantined) is not complete, even with no
    // rollout to wait for.
    let outcome = if rollouts.iter().any(|r| r.state == "failed") {
        Outcome::Failed
    } else if rollouts.iter().any(|r| r.state != "complete") {
        Outcome::Progressing
    } else if !status.quarantined.is_empty() {
        Outcome::Quarantined
    } else {
        Outcome::Complete
    };
    let quarantined = status
        .quarantined
        .iter()
        .map(|q| QuarantinedObject {
            object: serde_json::to_value(&q.object).unwrap_or(Value::Null),
            kept_running: q.kept,
        })
        .collect();
    // A problem's message may quote a value; a Secret's values stay out of Git.
    let shown = |problems: &[capstan_manifest::problem::Problem]| -> Vec<Value> {
        problems
            .iter()
            .map(|p| {
                let mut v = serde_json::to_value(p).unwrap_or(Value::Null);
                if p.object.as_ref().is_some_and(|o| capstan_api::kinds::is_secret(&o.group, &o.kind)) {
                    v["message"] = json!("(not shown: the object is a Secret)");
                }
                v
            })
            .collect()
    };
    Some(Note {
        commit: commit.to_owned(),
        branch: status.branch.clone(),
        applied_at: applied_at.to_owned(),
        objects: Counts {
            created: status.created,
            updated: status.updated,
            pruned: status.pruned,
            unchanged: status.unchanged,
        },
        quarantined,
        problems: shown(&status.problems),
        warnings: shown(&status.warnings),
        rollouts,
        outcome,
        prune_held: status.prune_held.clone(),
        held: status.held.iter().filter_map(|k| serde_json::to_value(k).ok()).collect(),
        superseded_by: None,
        revert: Revert::default(),
    })
}

/// The status branch's files: `<plural>/<namespace>/<name>.json` (cluster-scoped kinds:
/// `<plural>/<name>.json`), each with the object's identity and status.
pub fn status_files(cache: &Cache) -> BTreeMap<String, String> {
    let mut files = BTreeMap::new();
    for plural in STATUS_KINDS {
        let k = kind(plural);
        let (objects, _) = cache.list(k, None);
        for o in objects.iter() {
            let mut status = o.object.get("status").cloned().unwrap_or(Value::Null);
            if plural == "endpoints" {
                status = o.object["subsets"].clone();
            }
            if plural == "nodes" {
                // Heartbeat times change every minute without news; leave them out.
                if let Some(conditions) = status["conditions"].as_array_mut() {
                    for c in conditions {
                        if let Some(m) = c.as_object_mut() {
                            m.remove("lastHeartbeatTime");
                        }
                    }
                }
            }
            files.insert(status_path(plural, o), status_file(o, status));
        }
    }
    files.extend(dangling_bindings(cache));
    files
}

/// Where an object's status file goes: `<plural>/<namespace>/<name>.json`, or
/// `<plural>/<name>.json` for cluster-scoped kinds.
fn status_path(plural: &str, o: &Entry) -> String {
    match o.namespace.as_str() {
        "" => format!("{plural}/{}.json", o.name),
        ns => format!("{plural}/{ns}/{}.json", o.name),
    }
}

/// A status file: the object's identity, its source file and `status`.
fn status_file(o: &Entry, status: Value) -> String {
    let doc = json!({
        "apiVersion": o.object["apiVersion"],
        "kind": o.object["kind"],
        "metadata": {"name": o.name, "namespace": o.object["metadata"]["namespace"],
                     "source": o.object["metadata"]["annotations"]["capstan.dev/source"]},
        "status": status,
    });
    serde_json::to_string_pretty(&doc).unwrap_or_default() + "\n"
}

/// Bindings whose role does not exist (allowed, as in Kubernetes, but they grant nothing): one
/// file each, its status the problem in the words `capstan plan` uses, for `capstan status`.
fn dangling_bindings(cache: &Cache) -> BTreeMap<String, String> {
    let exists = |k: &str, namespace: &str, name: &str| {
        let plural = if k == "Role" { "roles" } else { "clusterroles" };
        cache.get(kind(plural), namespace, name).is_some()
    };
    let mut files = BTreeMap::new();
    for plural in ["rolebindings", "clusterrolebindings"] {
        let (objects, _) = cache.list(kind(plural), None);
        for o in objects.iter() {
            let Some(problem) = capstan_manifest::rbac::missing_role_note(&o.object, &exists) else {
                continue;
            };
            files.insert(status_path(plural, o), status_file(o, json!({"problem": problem})));
        }
    }
    files
}

/// Where the write-back goes.
#[derive(Clone, Debug)]
pub struct Target {
    /// The repository written into: the tracked one itself, or the mirror of a remote.
    pub path: PathBuf,
    /// For a remote: its URL; notes and the status branch are pushed there after each write
    /// (retried at the next interval after a failure).
    pub push_to: Option<String>,
}

/// How the write-back writes.
#[derive(Clone, Debug)]
pub struct Settings {
    pub target: Target,
    /// At most one write per interval.
    pub interval: Duration,
    /// A failed rollout of the branch's tip is reverted by a commit (see
    /// [`capstan_git::revert`]).
    pub revert: bool,
    /// The store, as the control plane's status names it.
    pub store_name: String,
}

/// Writes notes and the status branch into the target every interval until cancelled. Every
/// applied commit gets its note, also one that the next commit replaced within the same
/// interval, or that a leader before this one applied. `fence` is the store as this term of
/// leadership writes it.
pub async fn run(
    settings: Settings,
    mut sync: watch::Receiver<SyncStatus>,
    cache: Arc<Cache>,
    fence: Arc<dyn capstan_store::Store>,
    cancel: CancellationToken,
) {
    let Settings {
        target,
        interval,
        revert,
        store_name,
    } = settings;
    let mut push_pending = false;
    // The failed commits reverted (or tried): what their note says about it.
    let mut reverted: BTreeMap<String, Revert> = BTreeMap::new();
    // For a remote: whether its notes and status branch were fetched, to build on what an
    // earlier daemon wrote there (before the first write of ours).
    let mut fetched = false;
    // When each commit was first seen applied (by this daemon).
    let mut applied_at: BTreeMap<String, String> = BTreeMap::new();
    // The commits applied since the last write, oldest first, each with its latest status; the
    // first is the one the last write was about.
    let mut seen: Vec<SyncStatus> = Vec::new();
    // The last note written for the current commit: a final one (complete, failed) is kept.
    let mut last: Option<(String, Note)> = None;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            changed = sync.changed() => {
                if changed.is_err() {
                    return;
                }
                remember(&mut seen, &mut applied_at, sync.borrow_and_update().clone());
                continue;
            }
            _ = tick.tick() => {}
        }
        remember(&mut seen, &mut applied_at, sync.borrow_and_update().clone());
        let Some(status) = seen.last().cloned() else { continue };
        let Some(commit) = status.applied_commit.clone() else { continue };
        let mut notes = Vec::new();
        // Commits overtaken by a later one: their rollouts can no longer be told apart.
        for pair in seen.windows(2) {
            let (old, next) = (&pair[0], &pair[1]);
            let Some(old_commit) = old.applied_commit.clone() else { continue };
            let noted = last.as_ref().filter(|(c, _)| *c == old_commit).map(|(_, n)| n.clone());
            let mut n = match noted {
                Some(n) if n.outcome != Outcome::Progressing => continue, // already final
                Some(n) => n,
                None => match note(old, &cache, applied_at.get(&old_commit).map(String::as_str).unwrap_or_default()) {
                    Some(n) => n,
                    None => continue,
                },
            };
            n.outcome = Outcome::Superseded;
            n.superseded_by = next.applied_commit.clone();
            notes.push((old_commit, n));
        }
        let at = applied_at.get(&commit).cloned().unwrap_or_default();
        let mut revert_now = None;
        if let Some(mut n) = note(&status, &cache, &at) {
            // The repository's ClusterSettings decide when they say; the daemon's flag otherwise.
            let revert = crate::context::cluster_settings(&cache)
                .and_then(|g| g.revert_failed_rollouts)
                .unwrap_or(revert);
            if revert && n.outcome == Outcome::Failed && !reverted.contains_key(&commit) {
                revert_now = Some((status.branch.clone(), commit.clone(), n.failed_rollouts()));
            }
            if let Some(done) = reverted.get(&commit) {
                n.revert = done.clone();
            }
            last = Some((commit.clone(), n.clone()));
            notes.push((commit.clone(), n));
        }
        // Commits applied (by this replica or a leader before it) whose note is not final yet:
        // those overtaken get theirs now.
        let unnoted = unnoted(fence.as_ref());
        for (i, (pending, record)) in unnoted.iter().enumerate() {
            if *pending == commit || notes.iter().any(|(c, _)| c == pending) {
                continue;
            }
            let next = unnoted.get(i + 1).map_or(commit.clone(), |(c, _)| c.clone());
            notes.push((
                pending.clone(),
                Note {
                    commit: pending.clone(),
                    branch: record["branch"].as_str().unwrap_or_default().to_owned(),
                    applied_at: record["appliedAt"].as_str().unwrap_or_default().to_owned(),
                    outcome: Outcome::Superseded,
                    superseded_by: Some(next),
                    ..Note::default()
                },
            ));
        }
        // Only the leader writes to Git: a write-back whose term ended (its store is fenced to
        // the term) writes nothing, so two replicas never push notes or reverts for one commit.
        if let Err(capstan_store::StoreError::Fenced(why)) = fence.txn(capstan_store::Txn::default()).await {
            tracing::warn!(%why, "not writing notes or the status branch: this replica no longer leads");
            return;
        }
        let settled: Vec<String> = notes
            .iter()
            .filter(|(_, n)| n.outcome != Outcome::Progressing)
            .map(|(c, _)| c.clone())
            .filter(|c| unnoted.iter().any(|(u, _)| u == c))
            .collect();
        seen = vec![status];
        let mut files = status_files(&cache);
        files.insert("control-plane.json".into(), control_plane_file(fence.as_ref(), &store_name));
        let target = target.clone();
        let retry_push = push_pending;
        let must_fetch = target.push_to.is_some() && !fetched;
        let result = tokio::task::spawn_blocking(move || -> Result<(bool, bool, Option<String>, Option<(String, Revert)>), git2::Error> {
            // First the revert, so that the failed commit's note names it.
            let revert_outcome = revert_now.map(|(branch, failed, failures)| {
                use capstan_git::revert::{Reverted, revert_tip};
                let outcome = match revert_tip(&target.path, &branch, &failed, &failures, target.push_to.as_deref()) {
                    Ok(Reverted::Committed(oid)) => {
                        tracing::warn!(commit = %failed, revert = %oid, "a rollout missed its progress deadline; reverted it by a commit on {branch}");
                        Revert {
                            reverted_by: Some(oid.to_string()),
                            ..Revert::default()
                        }
                    }
                    Ok(Reverted::NotTip) => Revert {
                        revert_skipped: Some(format!("{branch} has moved past the commit")),
                        ..Revert::default()
                    },
                    Err(e) => {
                        tracing::warn!(commit = %failed, "reverting a failed rollout: {}", e.message());
                        Revert {
                            revert_error: Some(e.message().to_owned()),
                            ..Revert::default()
                        }
                    }
                };
                if let Some((_, n)) = notes.iter_mut().find(|(c, _)| *c == failed) {
                    n.revert = outcome.clone();
                }
                (failed, outcome)
            });
            let repo = git2::Repository::open(&target.path)?;
            if must_fetch && let Some(url) = &target.push_to {
                capstan_git::repo::fetch_refs(&repo, url, &refs::REFSPECS)?;
            }
            let mut noted = false;
            for (on, n) in &notes {
                noted |= notes::write(&repo, on, n)?;
            }
            let committed = status_branch::write(&repo, &files, &commit)?;
            let mut push_error = None;
            if let Some(url) = &target.push_to
                && (noted || committed || retry_push)
                && let Err(e) = capstan_git::repo::push(&repo, url, &refs::REFSPECS)
            {
                push_error = Some(format!("pushing notes and the status branch to {url}: {}", e.message()));
            }
            Ok((noted, committed, push_error, revert_outcome))
        })
        .await;
        match result {
            Ok(Ok((noted, committed, push_error, revert_outcome))) => {
                // A failed note is final (never rewritten from `last`); an error is tried again
                // at the next interval.
                if let Some((failed, outcome)) = revert_outcome
                    && outcome.revert_error.is_none()
                {
                    reverted.insert(failed, outcome);
                }
                fetched = true;
                if !settled.is_empty() {
                    let done = settled.iter().fold(capstan_store::Txn::default(), |txn, c| {
                        txn.delete(format!("{}{c}", crate::sync::UNNOTED_PREFIX))
                    });
                    if let Err(e) = fence.txn(done).await {
                        tracing::warn!(error = %e, "recording the notes written");
                    }
                }
                if noted || committed {
                    tracing::debug!(noted, committed, "status written to git");
                }
                push_pending = push_error.is_some();
                if let Some(e) = push_error {
                    tracing::warn!("{e}; retrying in {interval:?}");
                }
            }
            Ok(Err(e)) => tracing::warn!("writing status to git: {e}"),
            Err(e) => tracing::warn!("writing status to git: {e}"),
        }
    }
}

/// The control plane as `capstan status` shows it: where the store is and whether it takes
/// writes, which replica leads, and the replicas running (on etcd).
fn control_plane_file(store: &dyn capstan_store::Store, store_name: &str) -> String {
    let leader = store
        .get(capstan_store::LEADER_KEY)
        .ok()
        .flatten()
        .map(|kv| String::from_utf8_lossy(&kv.value).into_owned());
    let replicas: Vec<Value> = store
        .range(capstan_store::REPLICAS_PREFIX, None, 0)
        .map(|r| r.kvs)
        .unwrap_or_default()
        .iter()
        .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
        .collect();
    let doc = json!({
        "apiVersion": "capstan.dev/v1",
        "kind": "ControlPlane",
        "metadata": {"name": "control-plane"},
        "status": {"store": store_name, "storeProblem": store.trouble(), "leader": leader, "replicas": replicas},
    });
    serde_json::to_string_pretty(&doc).unwrap_or_default() + "\n"
}

/// The commits awaiting a final note, in the order they were applied, with their records.
fn unnoted(store: &dyn capstan_store::Store) -> Vec<(String, Value)> {
    let Ok(page) = store.range(crate::sync::UNNOTED_PREFIX, None, 0) else {
        return Vec::new();
    };
    let mut out: Vec<(u64, String, Value)> = page
        .kvs
        .into_iter()
        .map(|kv| {
            let commit = kv.key.trim_start_matches(crate::sync::UNNOTED_PREFIX).to_owned();
            (kv.mod_revision, commit, serde_json::from_slice(&kv.value).unwrap_or_default())
        })
        .collect();
    out.sort_by_key(|(rev, _, _)| *rev);
    out.into_iter().map(|(_, c, v)| (c, v)).collect()
}

/// Adds a status to the commits seen since the last write (replacing the status of the same
/// commit), and records when each commit was first seen applied.
fn remember(seen: &mut Vec<SyncStatus>, applied_at: &mut BTreeMap<String, String>, status: SyncStatus) {
    let Some(commit) = status.applied_commit.clone() else { return };
    applied_at
        .entry(commit.clone())
        .or_insert_with(|| jiff::Timestamp::now().to_string());
    match seen.last_mut() {
        Some(last) if last.applied_commit.as_deref() == Some(commit.as_str()) => *last = status,
        _ => seen.push(status),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_applied_commit_is_remembered_until_the_next_write() {
        let status = |commit: &str, created: usize| SyncStatus {
            applied_commit: Some(commit.into()),
            created,
            ..SyncStatus::default()
        };
        let (mut seen, mut at) = (Vec::new(), BTreeMap::new());
        remember(&mut seen, &mut at, SyncStatus::default());
        remember(&mut seen, &mut at, status("a", 1));
        remember(&mut seen, &mut at, status("a", 2));
        remember(&mut seen, &mut at, status("b", 3));
        let commits: Vec<_> = seen.iter().map(|s| (s.applied_commit.clone().unwrap(), s.created)).collect();
        assert_eq!(commits, [("a".to_owned(), 2), ("b".to_owned(), 3)]);
        assert_eq!(at.len(), 2);
    }

    #[test]
    fn rollout_states() {
        let done = json!({"metadata": {"generation": 2}, "spec": {"replicas": 3},
            "status": {"observedGeneration": 2, "replicas": 3, "updatedReplicas": 3, "availableReplicas": 3}});
        assert_eq!(rollout(&done).0, "complete");
        let rolling = json!({"metadata": {"generation": 2}, "spec": {"replicas": 3},
            "status": {"observedGeneration": 2, "replicas": 4, "updatedReplicas": 1, "availableReplicas": 3}});
        assert_eq!(rollout(&rolling).0, "progressing");
        let stale = json!({"metadata": {"generation": 3}, "spec": {"replicas": 3},
            "status": {"observedGeneration": 2, "replicas": 3, "updatedReplicas": 3, "availableReplicas": 3}});
        assert_eq!(rollout(&stale).0, "progressing", "the controller has not seen the new spec yet");
        let failed = json!({"metadata": {"generation": 2}, "spec": {"replicas": 3},
            "status": {"conditions": [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                                       "message": "ReplicaSet \"web-1\" has timed out progressing."}]}});
        assert_eq!(
            rollout(&failed),
            ("failed", Some("ReplicaSet \"web-1\" has timed out progressing.".into()))
        );
    }
}
