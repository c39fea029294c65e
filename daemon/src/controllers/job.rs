//! The Job controller: runs a Job's pods to completion — `parallelism` at a time until
//! `completions` succeed (each index once, in Indexed mode), a failed pod replaced after a
//! back-off (10 s doubling to 6 min) until `backoffLimit`, `podFailurePolicy` rules on exit codes,
//! `activeDeadlineSeconds`, `suspend` — and reports Complete or Failed with Kubernetes' reasons;
//! a finished Job is removed `ttlSecondsAfterFinished` later, its pods kept until then for
//! `kubectl logs`. [`decide`] is the pure core: the Job, its pods and the time in, what to do out.

use std::collections::BTreeSet;
use std::time::Duration;

use capstan_runtime::{Action, Reconciler};
use serde_json::{Value, json};

use super::util::{NsName, is_ready, is_terminating, owner_ref, random_suffix, seconds};
use super::{Controller, watches};
use crate::context::{Context, kind};
use crate::events::{EventType, Recorder};
use crate::objects::ObjectError;

/// The annotation (and the environment variable, `JOB_COMPLETION_INDEX`) giving an Indexed
/// Job's pod its index.
pub const INDEX_ANNOTATION: &str = "batch.kubernetes.io/job-completion-index";

/// Most pods one look at a Job creates (Kubernetes' MaxPodCreateDeletePerSync): a parallelism of
/// a million starts in steps, never all at once.
pub const MAX_CREATE_PER_SYNC: usize = 500;

/// Kubernetes' back-off after a failed pod: 10 s, doubling, at most 6 minutes.
const BACKOFF_BASE: i64 = 10;
const BACKOFF_MAX: i64 = 360;

pub struct JobController {
    pub ctx: Context,
    pub events: Recorder,
}

/// A Job's key from itself, or from a pod it controls.
fn keys_for(obj: &Value) -> Vec<NsName> {
    super::util::owner_keys(obj, "Job")
}

pub fn controller(ctx: &Context) -> Controller<NsName, JobController> {
    Controller {
        name: "job",
        reconciler: JobController {
            ctx: ctx.clone(),
            events: Recorder::new(ctx.objects.clone(), "job-controller", None),
        },
        workers: 2,
        triggers: vec![watches("jobs", keys_for), watches("pods", keys_for)],
    }
}

/// What one look at a Job decides.
#[derive(Debug, Default, PartialEq)]
pub struct Decision {
    /// Pods to create: one per entry, with its completion index in Indexed mode.
    pub create: Vec<Option<i64>>,
    /// Active pods to delete (the Job finished, was suspended, or runs too many).
    pub delete: Vec<String>,
    /// The Job's new status.
    pub status: Value,
    /// Events to record on the Job: (warning?, reason, message).
    pub events: Vec<(bool, &'static str, String)>,
    /// When to look again, if nothing else changes before.
    pub requeue: Option<i64>,
    /// The finished Job's time to live is over: remove it.
    pub remove: bool,
}

/// How a pod stands for its Job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Standing {
    Active,
    Succeeded,
    Failed,
    /// Being deleted before it finished.
    Terminating,
}

fn standing(pod: &Value) -> Standing {
    match pod["status"]["phase"].as_str() {
        Some("Succeeded") => Standing::Succeeded,
        Some("Failed") => Standing::Failed,
        _ if is_terminating(pod) => Standing::Terminating,
        _ => Standing::Active,
    }
}

fn index_of(pod: &Value) -> Option<i64> {
    pod["metadata"]["annotations"][INDEX_ANNOTATION].as_str()?.parse().ok()
}

fn holds(job: &Value, ty: &str) -> bool {
    job["status"]["conditions"]
        .as_array()
        .is_some_and(|c| c.iter().any(|c| c["type"] == ty && c["status"] == "True"))
}

/// When a pod ended: its containers' last finish, else its last status change.
fn finished_at(pod: &Value) -> Option<i64> {
    let containers = pod["status"]["containerStatuses"].as_array().into_iter().flatten();
    containers
        .filter_map(|c| seconds(&c["state"]["terminated"]["finishedAt"]))
        .max()
        .or_else(|| {
            pod["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| seconds(&c["lastTransitionTime"]))
                .max()
        })
}

/// What a failed pod means under the Job's `podFailurePolicy`: the first rule that matches
/// decides (FailJob, Ignore, Count, FailIndex); none matching counts the failure.
fn failure_action(job: &Value, pod: &Value) -> (String, Option<String>) {
    let rules = job["spec"]["podFailurePolicy"]["rules"].as_array();
    for (i, rule) in rules.into_iter().flatten().enumerate() {
        let action = rule["action"].as_str().unwrap_or("Count").to_owned();
        if let Some(on) = rule["onExitCodes"].as_object() {
            let values: Vec<i64> = on
                .get("values")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_i64)
                .collect();
            let only = on.get("containerName").and_then(Value::as_str);
            let matching = pod["status"]["containerStatuses"].as_array().into_iter().flatten().find_map(|c| {
                let code = c["state"]["terminated"]["exitCode"].as_i64()?;
                if code == 0 || only.is_some_and(|n| c["name"] != n) {
                    return None;
                }
                let hit = match on.get("operator").and_then(Value::as_str) {
                    Some("In") => values.contains(&code),
                    Some("NotIn") => !values.contains(&code),
                    _ => false,
                };
                hit.then(|| (c["name"].as_str().unwrap_or_default().to_owned(), code))
            });
            if let Some((container, code)) = matching {
                let why = format!(
                    "Container {container} for pod {}/{} failed with exit code {code} matching {action} rule at index {i}",
                    pod["metadata"]["namespace"].as_str().unwrap_or_default(),
                    pod["metadata"]["name"].as_str().unwrap_or_default()
                );
                return (action, Some(why));
            }
        }
        if let Some(conditions) = rule["onPodConditions"].as_array() {
            let hit = conditions.iter().any(|want| {
                let status = want["status"].as_str().unwrap_or("True");
                pod["status"]["conditions"]
                    .as_array()
                    .is_some_and(|cs| cs.iter().any(|c| c["type"] == want["type"] && c["status"] == status))
            });
            if hit {
                let why = format!(
                    "Pod {}/{} has condition {} matching {action} rule at index {i}",
                    pod["metadata"]["namespace"].as_str().unwrap_or_default(),
                    pod["metadata"]["name"].as_str().unwrap_or_default(),
                    conditions[0]["type"].as_str().unwrap_or_default()
                );
                return (action, Some(why));
            }
        }
    }
    ("Count".into(), None)
}

/// Indexes as Kubernetes writes them in `completedIndexes`: `0-2,5`.
fn compress(indexes: &BTreeSet<i64>) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut run: Option<(i64, i64)> = None;
    for &i in indexes {
        run = match run {
            Some((a, b)) if i == b + 1 => Some((a, i)),
            Some((a, b)) => {
                out.push(if a == b { a.to_string() } else { format!("{a}-{b}") });
                Some((i, i))
            }
            None => Some((i, i)),
        };
    }
    if let Some((a, b)) = run {
        out.push(if a == b { a.to_string() } else { format!("{a}-{b}") });
    }
    out.join(",")
}

fn condition(ty: &str, reason: &str, message: &str, at: &str) -> Value {
    json!({"type": ty, "status": "True", "reason": reason, "message": message, "lastProbeTime": at, "lastTransitionTime": at})
}

/// Decides what to do for `job`, whose pods are `pods`, at `now` (Unix seconds).
pub fn decide(job: &Value, pods: &[&Value], now: i64) -> Decision {
    let mut d = Decision::default();
    let spec = &job["spec"];
    let stamp = capstan_api::time::format_seconds(now);
    let mut status = job["status"].as_object().cloned().map(Value::Object).unwrap_or_else(|| json!({}));
    let finished = holds(job, "Complete") || holds(job, "Failed");
    let active: Vec<&&Value> = pods.iter().filter(|p| standing(p) == Standing::Active).collect();
    let terminating = pods.iter().filter(|p| standing(p) == Standing::Terminating).count();
    let succeeded: Vec<&&Value> = pods.iter().filter(|p| standing(p) == Standing::Succeeded).collect();
    let failed: Vec<&&Value> = pods.iter().filter(|p| standing(p) == Standing::Failed).collect();
    let indexed = spec["completionMode"] == "Indexed";

    if finished {
        d.delete = active
            .iter()
            .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_owned))
            .collect();
        if let Some(ttl) = spec["ttlSecondsAfterFinished"].as_i64() {
            let ended = seconds(&status["completionTime"])
                .or_else(|| {
                    status["conditions"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter(|c| c["type"] == "Failed")
                        .find_map(|c| seconds(&c["lastTransitionTime"]))
                })
                .unwrap_or(now);
            if now >= ended + ttl {
                d.remove = true;
            } else {
                d.requeue = Some(ended + ttl - now);
            }
        }
        d.status = Value::Object(status.as_object().cloned().unwrap_or_default());
        return d;
    }

    // What the failed pods count for.
    let mut counted_failures = 0i64;
    let mut fail_job: Option<String> = None;
    let mut ignored = 0i64;
    for p in &failed {
        match failure_action(job, p) {
            (a, why) if a == "FailJob" => {
                counted_failures += 1;
                fail_job = fail_job.or(why);
            }
            (a, _) if a == "Ignore" => ignored += 1,
            _ => counted_failures += 1,
        }
    }
    // With restartPolicy OnFailure the pods restart in place: their restarts are the failures.
    if spec["template"]["spec"]["restartPolicy"] == "OnFailure" {
        counted_failures += pods
            .iter()
            .flat_map(|p| p["status"]["containerStatuses"].as_array().cloned().unwrap_or_default())
            .filter_map(|c| c["restartCount"].as_i64())
            .sum::<i64>();
    }

    let succeeded_indexes: BTreeSet<i64> = succeeded.iter().filter_map(|p| index_of(p)).collect();
    let completions = spec["completions"].as_i64();
    let parallelism = spec["parallelism"].as_i64().unwrap_or(1).max(0);
    let done = match (indexed, completions) {
        (true, Some(c)) => (0..c).all(|i| succeeded_indexes.contains(&i)),
        (false, Some(c)) => succeeded.len() as i64 >= c,
        (_, None) => !succeeded.is_empty() && active.is_empty(),
    };
    let suspended = spec["suspend"] == true;
    if !suspended && status["startTime"].is_null() {
        status["startTime"] = json!(stamp);
    }
    let deadline = spec["activeDeadlineSeconds"]
        .as_i64()
        .zip(seconds(&status["startTime"]))
        .map(|(secs, start)| start + secs);

    let mut end: Option<(&str, &str, String)> = None;
    if done {
        end = Some(("Complete", "CompletionsReached", "Reached expected number of succeeded pods".into()));
    } else if let Some(why) = fail_job {
        end = Some(("Failed", "PodFailurePolicy", why));
    } else if counted_failures > spec["backoffLimit"].as_i64().unwrap_or(6) {
        end = Some((
            "Failed",
            "BackoffLimitExceeded",
            "Job has reached the specified backoff limit".into(),
        ));
    } else if !suspended && deadline.is_some_and(|t| now >= t) {
        end = Some(("Failed", "DeadlineExceeded", "Job was active longer than specified deadline".into()));
    }

    let mut conditions: Vec<Value> = status["conditions"].as_array().cloned().unwrap_or_default();
    if let Some((ty, reason, message)) = end {
        d.delete = active
            .iter()
            .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_owned))
            .collect();
        let (target, target_reason) = if ty == "Complete" {
            ("SuccessCriteriaMet", "CompletionsReached")
        } else {
            ("FailureTarget", reason)
        };
        conditions.retain(|c| c["type"] != "Suspended");
        conditions.push(condition(target, target_reason, &message, &stamp));
        conditions.push(condition(ty, reason, &message, &stamp));
        if ty == "Complete" {
            status["completionTime"] = json!(stamp);
            d.events.push((false, "Completed", "Job completed".into()));
        } else {
            d.events.push((true, reason, message.clone()));
        }
        if let Some(ttl) = spec["ttlSecondsAfterFinished"].as_i64() {
            d.requeue = Some(ttl.max(0));
        }
    } else if suspended {
        d.delete = active
            .iter()
            .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_owned))
            .collect();
        if !holds(job, "Suspended") {
            conditions.retain(|c| c["type"] != "Suspended");
            conditions.push(condition("Suspended", "JobSuspended", "Job suspended", &stamp));
            d.events.push((false, "Suspended", "Job suspended".into()));
        }
        status["startTime"] = Value::Null;
    } else {
        if holds(job, "Suspended") {
            conditions.retain(|c| c["type"] != "Suspended");
            conditions.push(json!({"type": "Suspended", "status": "False", "reason": "JobResumed", "message": "Job resumed", "lastProbeTime": stamp, "lastTransitionTime": stamp}));
            d.events.push((false, "Resumed", "Job resumed".into()));
        }
        // A failed pod is replaced after the back-off of the failures so far.
        let last_failure = failed.iter().filter_map(|p| finished_at(p)).max();
        let wait = if counted_failures > 0 {
            let delay = (BACKOFF_BASE << (counted_failures - 1).min(10)).min(BACKOFF_MAX);
            last_failure.map_or(0, |t| (t + delay - now).max(0))
        } else {
            0
        };
        let running = active.len() as i64;
        if wait > 0 {
            d.requeue = Some(wait);
        } else if indexed {
            let c = completions.unwrap_or(0);
            let busy: BTreeSet<i64> = active.iter().filter_map(|p| index_of(p)).collect();
            let room = (parallelism - running).max(0) as usize;
            d.create = (0..c)
                .filter(|i| !succeeded_indexes.contains(i) && !busy.contains(i))
                .take(room.min(MAX_CREATE_PER_SYNC))
                .map(Some)
                .collect();
        } else {
            let remaining = match completions {
                Some(c) => (c - succeeded.len() as i64).max(0),
                None if succeeded.is_empty() => parallelism,
                None => 0,
            };
            let wanted = parallelism.min(remaining);
            if running < wanted {
                d.create = vec![None; ((wanted - running) as usize).min(MAX_CREATE_PER_SYNC)];
            } else if running > wanted {
                let mut extra: Vec<&&&Value> = active.iter().collect();
                extra.sort_by_key(|p| {
                    (
                        is_ready(p),
                        p["metadata"]["creationTimestamp"].as_str().unwrap_or_default().to_owned(),
                    )
                });
                d.delete = extra
                    .iter()
                    .take((running - wanted) as usize)
                    .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_owned))
                    .collect();
            }
        }
        if let Some(t) = deadline {
            d.requeue = Some(d.requeue.map_or(t - now, |r| r.min(t - now)).max(1));
        }
    }
    status["conditions"] = if conditions.is_empty() {
        Value::Null
    } else {
        Value::Array(conditions)
    };
    status["active"] = json!(active.len());
    status["ready"] = json!(active.iter().filter(|p| is_ready(p)).count());
    status["succeeded"] = json!(succeeded.len());
    status["failed"] = json!(failed.len() as i64 - ignored);
    status["terminating"] = json!(terminating);
    if indexed {
        status["completedIndexes"] = json!(compress(&succeeded_indexes));
    }
    if let Some(o) = status.as_object_mut() {
        o.retain(|_, v| !v.is_null());
    }
    d.status = status;
    d
}

impl JobController {
    /// A pod for `job` (of completion `index`, in Indexed mode).
    fn new_pod(job: &Value, index: Option<i64>) -> Value {
        let template = &job["spec"]["template"];
        let name = job["metadata"]["name"].as_str().unwrap_or("job");
        let mut pod = json!({"metadata": template["metadata"].clone(), "spec": template["spec"].clone()});
        if !pod["metadata"].is_object() {
            pod["metadata"] = json!({});
        }
        pod["metadata"]["name"] = json!(match index {
            Some(i) => format!("{name}-{i}-{}", random_suffix()),
            None => format!("{name}-{}", random_suffix()),
        });
        pod["metadata"]["namespace"] = job["metadata"]["namespace"].clone();
        pod["metadata"]["ownerReferences"] = json!([owner_ref(job)]);
        if let Some(c) = job.pointer("/metadata/annotations/capstan.dev~1commit") {
            pod["metadata"]["annotations"]["capstan.dev/commit"] = c.clone();
        }
        if let Some(i) = index {
            pod["metadata"]["annotations"][INDEX_ANNOTATION] = json!(i.to_string());
            pod["metadata"]["labels"][INDEX_ANNOTATION] = json!(i.to_string());
            pod["spec"]["hostname"] = json!(format!("{name}-{i}"));
            for list in ["initContainers", "containers"] {
                for c in pod["spec"][list].as_array_mut().into_iter().flatten() {
                    let mut env = c["env"].as_array().cloned().unwrap_or_default();
                    env.retain(|e| e["name"] != "JOB_COMPLETION_INDEX");
                    env.push(json!({"name": "JOB_COMPLETION_INDEX", "value": i.to_string()}));
                    c["env"] = Value::Array(env);
                }
            }
        }
        pod
    }
}

impl Reconciler<NsName> for JobController {
    type Error = ObjectError;

    async fn reconcile(&self, (ns, name): NsName) -> Result<Action, ObjectError> {
        let ctx = &self.ctx;
        ctx.caught_up().await;
        let jobs = kind("jobs");
        let pods_kind = kind("pods");
        let Some(entry) = ctx.cache.get(jobs, &ns, &name) else {
            return Ok(Action::AwaitChange);
        };
        let job = (*entry.object).clone();
        if is_terminating(&job) {
            return Ok(Action::AwaitChange);
        }
        let uid = job["metadata"]["uid"].as_str().unwrap_or_default();
        let owned = ctx.cache.controlled_by(pods_kind, uid);
        let pods: Vec<&Value> = owned.iter().map(|e| e.object.as_ref()).collect();
        let d = decide(&job, &pods, super::util::now());
        if d.remove {
            return match ctx.objects.delete(jobs, &ns, &name, None).await {
                Ok(_) | Err(ObjectError::NotFound { .. }) => Ok(Action::AwaitChange),
                Err(e) => Err(e),
            };
        }
        for pod in &d.delete {
            super::podcontrol::delete_for(ctx, &self.events, &job, &ns, pod, false).await?;
        }
        let mut quota_refused = false;
        if !d.create.is_empty() && super::namespace::is_active(ctx, &ns) {
            let pods: Vec<Value> = d.create.iter().map(|i| Self::new_pod(&job, *i)).collect();
            let outcome = super::podcontrol::create_for(ctx, &self.events, &job, &ns, pods).await?;
            quota_refused = outcome.refused.is_some();
        }
        for (warning, reason, message) in &d.events {
            let ty = if *warning { EventType::Warning } else { EventType::Normal };
            self.events.record(&job, ty, reason, message.clone());
        }
        if job["status"] != d.status {
            ctx.objects
                .modify(jobs, &ns, &name, true, |j| {
                    j["status"] = d.status.clone();
                    true
                })
                .await?;
        }
        // A quota refusal is tried again; so is a Job with more pods to start than one look makes.
        let more = d.create.len() >= MAX_CREATE_PER_SYNC;
        Ok(match d.requeue {
            _ if quota_refused => Action::Requeue(Duration::from_secs(5)),
            _ if more => Action::Requeue(Duration::ZERO),
            Some(secs) => Action::Requeue(Duration::from_secs(secs.max(1) as u64)),
            None => Action::AwaitChange,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn job(spec: Value) -> Value {
        let mut spec = spec;
        spec["template"] = json!({"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "x"}]}});
        json!({"kind": "Job", "metadata": {"name": "j", "namespace": "ns", "uid": "u"}, "spec": spec, "status": {}})
    }

    fn pod(name: &str, phase: &str, index: Option<i64>, exit: Option<i64>) -> Value {
        let mut p = json!({"metadata": {"name": name, "namespace": "ns", "annotations": {}}, "status": {"phase": phase}});
        if let Some(i) = index {
            p["metadata"]["annotations"][INDEX_ANNOTATION] = json!(i.to_string());
        }
        if let Some(code) = exit {
            let at = capstan_api::time::format_seconds(NOW - 5);
            p["status"]["containerStatuses"] = json!([{"name": "c", "state": {"terminated": {"exitCode": code, "finishedAt": at}}}]);
        }
        p
    }

    fn types(d: &Decision) -> Vec<(String, String)> {
        d.status["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                (
                    c["type"].as_str().unwrap().to_owned(),
                    c["reason"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }

    #[test]
    fn pods_run_parallelism_at_a_time_until_the_completions_succeed() {
        let j = job(json!({"completions": 5, "parallelism": 2, "backoffLimit": 6}));
        let d = decide(&j, &[], NOW);
        assert_eq!(d.create, vec![None, None]);
        assert_eq!(d.status["active"], 0);
        assert!(d.status["startTime"].is_string());
        // Four done, one running: nothing more to start (one completion left).
        let done: Vec<Value> = (0..4).map(|i| pod(&format!("p{i}"), "Succeeded", None, Some(0))).collect();
        let running = pod("r", "Running", None, None);
        let mut all: Vec<&Value> = done.iter().collect();
        all.push(&running);
        let d = decide(&j, &all, NOW);
        assert!(d.create.is_empty() && d.delete.is_empty());
        assert_eq!((d.status["succeeded"].clone(), d.status["active"].clone()), (json!(4), json!(1)));
        // The fifth succeeds: Complete (with SuccessCriteriaMet), and the completion time.
        let fifth = pod("r", "Succeeded", None, Some(0));
        all.pop();
        all.push(&fifth);
        let d = decide(&j, &all, NOW);
        assert_eq!(
            types(&d),
            [
                ("SuccessCriteriaMet".into(), "CompletionsReached".into()),
                ("Complete".into(), "CompletionsReached".into())
            ]
        );
        assert!(d.status["completionTime"].is_string());
    }

    #[test]
    fn a_huge_parallelism_starts_in_steps() {
        let j = job(json!({"completions": 1_000_000, "parallelism": 1_000_000}));
        assert_eq!(decide(&j, &[], NOW).create.len(), MAX_CREATE_PER_SYNC);
    }

    #[test]
    fn failures_back_off_and_stop_at_the_backoff_limit() {
        let j = job(json!({"completions": 1, "parallelism": 1, "backoffLimit": 2}));
        // One failure 5 s ago: the replacement waits for the rest of the 10 s back-off.
        let f1 = pod("f1", "Failed", None, Some(1));
        let d = decide(&j, &[&f1], NOW);
        assert!(d.create.is_empty());
        assert_eq!(d.requeue, Some(5));
        assert_eq!(d.status["failed"], 1);
        // Two failures: 20 s of back-off from the last.
        let f2 = pod("f2", "Failed", None, Some(1));
        assert_eq!(decide(&j, &[&f1, &f2], NOW).requeue, Some(15));
        // Three failures with a limit of 2: Failed, BackoffLimitExceeded.
        let f3 = pod("f3", "Failed", None, Some(1));
        let d = decide(&j, &[&f1, &f2, &f3], NOW);
        assert_eq!(
            types(&d),
            [
                ("FailureTarget".into(), "BackoffLimitExceeded".into()),
                ("Failed".into(), "BackoffLimitExceeded".into())
            ]
        );
        assert_eq!(d.events[0].1, "BackoffLimitExceeded");
    }

    #[test]
    fn pod_failure_policy_rules_on_exit_codes() {
        let j = job(json!({"completions": 1, "backoffLimit": 0, "podFailurePolicy": {"rules": [
            {"action": "Ignore", "onExitCodes": {"operator": "In", "values": [3]}},
            {"action": "FailJob", "onExitCodes": {"containerName": "c", "operator": "In", "values": [42]}}]}}));
        // Exit 3 is ignored: not counted against a limit of 0; a new pod is started at once.
        let ignored = pod("a", "Failed", None, Some(3));
        let d = decide(&j, &[&ignored], NOW);
        assert_eq!(d.create, vec![None]);
        assert_eq!(d.status["failed"], 0);
        // Exit 42 fails the Job, naming the rule.
        let fatal = pod("b", "Failed", None, Some(42));
        let d = decide(&j, &[&ignored, &fatal], NOW);
        assert_eq!(types(&d)[1], ("Failed".into(), "PodFailurePolicy".into()));
        let message = d.status["conditions"][1]["message"].as_str().unwrap();
        assert_eq!(
            message,
            "Container c for pod ns/b failed with exit code 42 matching FailJob rule at index 1"
        );
    }

    #[test]
    fn indexed_jobs_run_each_index_once() {
        let j = job(json!({"completions": 4, "parallelism": 2, "completionMode": "Indexed"}));
        assert_eq!(decide(&j, &[], NOW).create, vec![Some(0), Some(1)]);
        let done0 = pod("a", "Succeeded", Some(0), Some(0));
        let run2 = pod("b", "Running", Some(2), None);
        let done3 = pod("c", "Succeeded", Some(3), Some(0));
        let d = decide(&j, &[&done0, &run2, &done3], NOW);
        assert_eq!(d.create, vec![Some(1)], "the lowest index neither done nor running");
        assert_eq!(d.status["completedIndexes"], "0,3");
        let pod = JobController::new_pod(&j, Some(1));
        assert_eq!(pod["metadata"]["annotations"][INDEX_ANNOTATION], "1");
        assert_eq!(
            pod["spec"]["containers"][0]["env"][0],
            json!({"name": "JOB_COMPLETION_INDEX", "value": "1"})
        );
        assert_eq!(pod["spec"]["hostname"], "j-1");
        assert_eq!(compress(&[0, 1, 2, 5, 7, 8].into_iter().collect()), "0-2,5,7-8");
    }

    #[test]
    fn deadlines_suspension_and_the_time_to_live() {
        let mut j = job(json!({"completions": 1, "activeDeadlineSeconds": 30, "ttlSecondsAfterFinished": 60}));
        j["status"]["startTime"] = json!(capstan_api::time::format_seconds(NOW - 31));
        let running = pod("r", "Running", None, None);
        let d = decide(&j, &[&running], NOW);
        assert_eq!(types(&d)[1], ("Failed".into(), "DeadlineExceeded".into()));
        assert_eq!(d.delete, vec!["r".to_owned()], "its running pod is stopped");
        // Finished: removed once its time to live is over, its pods kept until then.
        j["status"] = d.status.clone();
        let d = decide(&j, &[], NOW + 10);
        assert_eq!((d.remove, d.requeue), (false, Some(50)));
        assert!(decide(&j, &[], NOW + 61).remove);
        // Suspended: active pods go, the condition says so; resumed: pods again.
        let mut s = job(json!({"completions": 1, "suspend": true}));
        let d = decide(&s, &[&running], NOW);
        assert_eq!(d.delete, vec!["r".to_owned()]);
        assert_eq!(types(&d), [("Suspended".into(), "JobSuspended".into())]);
        s["status"] = d.status;
        s["spec"]["suspend"] = json!(false);
        let d = decide(&s, &[], NOW);
        assert_eq!(d.create, vec![None]);
        assert_eq!(d.status["conditions"][0]["status"], "False");
    }
}
