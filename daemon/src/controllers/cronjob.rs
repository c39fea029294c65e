//! The CronJob controller: at each time the schedule names (in the CronJob's `timeZone`, else
//! the daemon's), a Job from the template — unless suspended, past `startingDeadlineSeconds`,
//! or (`Forbid`) the last run is still going; `Replace` stops the running one first. After a
//! control-plane outage only the most recent missed time runs (as Kubernetes). Finished Jobs
//! beyond the history limits go; `active`, `lastScheduleTime` and `lastSuccessfulTime` are kept
//! in the status. [`decide`] is the pure core.

use std::time::Duration;

use capstan_api::cron::Schedule;
use capstan_runtime::{Action, Reconciler};
use jiff::tz::TimeZone;
use serde_json::{Value, json};

use super::util::{NsName, is_terminating, owner_ref, seconds};
use super::{Controller, watches};
use crate::context::{Context, kind};
use crate::events::{EventType, Recorder};
use crate::objects::ObjectError;

/// The annotation giving a Job the time it was scheduled for (Kubernetes 1.32+).
pub const SCHEDULED_ANNOTATION: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";
/// The annotation kubectl puts on a Job it creates from a CronJob by hand.
pub const MANUAL_ANNOTATION: &str = "cronjob.kubernetes.io/instantiate";

pub struct CronJobController {
    pub ctx: Context,
    pub events: Recorder,
}

fn keys_for(obj: &Value) -> Vec<NsName> {
    super::util::owner_keys(obj, "CronJob")
}

pub fn controller(ctx: &Context) -> Controller<NsName, CronJobController> {
    Controller {
        name: "cronjob",
        reconciler: CronJobController {
            ctx: ctx.clone(),
            events: Recorder::new(ctx.objects.clone(), "cronjob-controller", None),
        },
        workers: 2,
        triggers: vec![watches("cronjobs", keys_for), watches("jobs", keys_for)],
    }
}

/// What one look at a CronJob decides.
#[derive(Debug, Default, PartialEq)]
pub struct Decision {
    /// A Job to create, for this scheduled time (Unix seconds).
    pub run_at: Option<i64>,
    /// Jobs to delete: finished ones beyond the history limits, and (Replace) the running ones.
    pub delete: Vec<String>,
    /// The new status.
    pub status: Value,
    /// Events: (warning?, reason, message).
    pub events: Vec<(bool, &'static str, String)>,
    /// Seconds until the next scheduled time.
    pub requeue: Option<i64>,
}

fn finished(job: &Value) -> Option<&'static str> {
    let conditions = job["status"]["conditions"].as_array()?;
    conditions
        .iter()
        .filter(|c| c["status"] == "True")
        .find_map(|c| match c["type"].as_str() {
            Some("Complete") => Some("Complete"),
            Some("Failed") => Some("Failed"),
            _ => None,
        })
}

/// The name of the Job for scheduled time `t`: the CronJob's name and the minute (Kubernetes'),
/// or the second for an `@every` schedule of less than a minute (whose runs Kubernetes would
/// give one name per minute, so that all but the first of each minute never ran).
pub fn job_name(cron_job: &str, t: i64, schedule: &Schedule) -> String {
    match schedule {
        Schedule::Every(secs) if *secs < 60 => format!("{cron_job}-{t}"),
        _ => format!("{cron_job}-{}", t / 60),
    }
}

/// Decides what to do for `cj` with its Jobs `jobs`, at `now`, with `schedule` read in `tz`.
pub fn decide(cj: &Value, jobs: &[&Value], schedule: &Schedule, tz: &TimeZone, now: i64) -> Decision {
    let mut d = Decision::default();
    let spec = &cj["spec"];
    let name = cj["metadata"]["name"].as_str().unwrap_or_default();
    let mut status = cj["status"].as_object().cloned().map(Value::Object).unwrap_or_else(|| json!({}));

    // Finished Jobs: the last success, and the history to keep.
    let mut succeeded: Vec<&Value> = Vec::new();
    let mut failed: Vec<&Value> = Vec::new();
    let mut active: Vec<&Value> = Vec::new();
    for j in jobs.iter().filter(|j| !is_terminating(j)) {
        match finished(j) {
            Some("Complete") => succeeded.push(j),
            Some(_) => failed.push(j),
            None => active.push(j),
        }
    }
    if let Some(last) = succeeded.iter().filter_map(|j| seconds(&j["status"]["completionTime"])).max()
        && seconds(&status["lastSuccessfulTime"]).is_none_or(|t| t < last)
    {
        status["lastSuccessfulTime"] = json!(capstan_api::time::format_seconds(last));
    }
    for (list, field, default) in [
        (&mut succeeded, "successfulJobsHistoryLimit", 3),
        (&mut failed, "failedJobsHistoryLimit", 1),
    ] {
        let keep = spec[field].as_i64().unwrap_or(default).max(0) as usize;
        list.sort_by_key(|j| j["metadata"]["creationTimestamp"].as_str().unwrap_or_default().to_owned());
        let extra = list.len().saturating_sub(keep);
        d.delete.extend(list[..extra].iter().map(|j| job_ref_name(j)));
    }

    let next = schedule.next_after(now, tz);
    d.requeue = next.map(|t| t - now);
    if spec["suspend"] != true {
        let created = seconds(&cj["metadata"]["creationTimestamp"]).unwrap_or(now);
        let mut earliest = seconds(&status["lastScheduleTime"]).unwrap_or(created);
        if let Some(deadline) = spec["startingDeadlineSeconds"].as_i64() {
            earliest = earliest.max(now - deadline);
        }
        let (due, missed) = schedule.most_recent(earliest, now, tz);
        if missed > 100 {
            d.events.push((
                true,
                "TooManyMissedTimes",
                "too many missed start times: more than 100; check clock skew or set startingDeadlineSeconds".into(),
            ));
        }
        if let Some(t) = due {
            let exists = jobs.iter().any(|j| j["metadata"]["name"] == job_name(name, t, schedule).as_str());
            let policy = spec["concurrencyPolicy"].as_str().unwrap_or("Allow");
            if exists {
                // Already made (the status was not written before a restart).
                status["lastScheduleTime"] = json!(capstan_api::time::format_seconds(t));
            } else if policy == "Forbid" && !active.is_empty() {
                d.events.push((
                    false,
                    "JobAlreadyActive",
                    "Not starting job because prior execution is running and concurrency policy is Forbid".into(),
                ));
            } else {
                if policy == "Replace" {
                    d.delete.extend(active.iter().map(|j| job_ref_name(j)));
                    active.clear();
                }
                d.run_at = Some(t);
                status["lastScheduleTime"] = json!(capstan_api::time::format_seconds(t));
            }
        }
    }
    let refs: Vec<Value> = active
        .iter()
        .filter(|j| !d.delete.contains(&job_ref_name(j)))
        .map(|j| {
            json!({"apiVersion": "batch/v1", "kind": "Job", "name": j["metadata"]["name"], "namespace": j["metadata"]["namespace"],
                   "uid": j["metadata"]["uid"], "resourceVersion": j["metadata"]["resourceVersion"]})
        })
        .collect();
    status["active"] = if refs.is_empty() { Value::Null } else { Value::Array(refs) };
    if let Some(o) = status.as_object_mut() {
        o.retain(|_, v| !v.is_null());
    }
    d.status = status;
    d
}

fn job_ref_name(j: &Value) -> String {
    j["metadata"]["name"].as_str().unwrap_or_default().to_owned()
}

/// The Job a CronJob runs at scheduled time `t`: its template, named for the minute, owned by
/// the CronJob, carrying the time it was for.
pub fn new_job(cj: &Value, t: i64, schedule: &Schedule, tz: &TimeZone) -> Value {
    let template = &cj["spec"]["jobTemplate"];
    let name = cj["metadata"]["name"].as_str().unwrap_or("cronjob");
    let mut meta = template["metadata"]
        .as_object()
        .cloned()
        .map(Value::Object)
        .unwrap_or_else(|| json!({}));
    meta["name"] = json!(job_name(name, t, schedule));
    meta["namespace"] = cj["metadata"]["namespace"].clone();
    meta["ownerReferences"] = json!([owner_ref(cj)]);
    let local = jiff::Timestamp::from_second(t).unwrap_or_default().to_zoned(tz.clone());
    meta["annotations"][SCHEDULED_ANNOTATION] = json!(local.strftime("%Y-%m-%dT%H:%M:%S%:z").to_string());
    if let Some(c) = cj.pointer("/metadata/annotations/capstan.dev~1commit") {
        meta["annotations"]["capstan.dev/commit"] = c.clone();
    }
    json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": template["spec"].clone()})
}

impl Reconciler<NsName> for CronJobController {
    type Error = ObjectError;

    async fn reconcile(&self, (ns, name): NsName) -> Result<Action, ObjectError> {
        let ctx = &self.ctx;
        ctx.caught_up().await;
        let cron_jobs = kind("cronjobs");
        let jobs_kind = kind("jobs");
        let Some(entry) = ctx.cache.get(cron_jobs, &ns, &name) else {
            return Ok(Action::AwaitChange);
        };
        let cj = (*entry.object).clone();
        if is_terminating(&cj) {
            return Ok(Action::AwaitChange);
        }
        let schedule = match Schedule::parse(cj["spec"]["schedule"].as_str().unwrap_or_default()) {
            Ok(s) => s,
            Err(e) => {
                self.events
                    .record(&cj, EventType::Warning, "UnparseableSchedule", format!("unparseable schedule: {e}"));
                return Ok(Action::AwaitChange);
            }
        };
        let tz = match cj["spec"]["timeZone"].as_str() {
            Some(zone) => match jiff::tz::db().get(zone) {
                Ok(tz) => tz,
                Err(_) => {
                    self.events
                        .record(&cj, EventType::Warning, "UnknownTimeZone", format!("invalid timeZone: {zone:?}"));
                    return Ok(Action::AwaitChange);
                }
            },
            None => TimeZone::system(),
        };
        let owned = ctx.cache.controlled_by(jobs_kind, super::util::uid(&cj));
        let jobs: Vec<&Value> = owned.iter().map(|e| e.object.as_ref()).collect();
        let now = super::util::now();
        let d = decide(&cj, &jobs, &schedule, &tz, now);
        for job in &d.delete {
            match ctx.objects.delete(jobs_kind, &ns, job, None).await {
                Ok(_) | Err(ObjectError::NotFound { .. }) => {
                    self.events
                        .record(&cj, EventType::Normal, "SuccessfulDelete", format!("Deleted job {job}"));
                }
                Err(e) => return Err(e),
            }
        }
        for (warning, reason, message) in &d.events {
            let ty = if *warning { EventType::Warning } else { EventType::Normal };
            self.events.record(&cj, ty, reason, message.clone());
        }
        let mut status = d.status.clone();
        if let Some(t) = d.run_at {
            match ctx.objects.create(jobs_kind, new_job(&cj, t, &schedule, &tz)).await {
                Ok(job) => {
                    self.events.record(
                        &cj,
                        EventType::Normal,
                        "SuccessfulCreate",
                        format!("Created job {}", job["metadata"]["name"].as_str().unwrap_or_default()),
                    );
                    let r = json!({"apiVersion": "batch/v1", "kind": "Job", "name": job["metadata"]["name"], "namespace": ns,
                                   "uid": job["metadata"]["uid"], "resourceVersion": job["metadata"]["resourceVersion"]});
                    let mut active = status["active"].as_array().cloned().unwrap_or_default();
                    active.push(r);
                    status["active"] = Value::Array(active);
                }
                Err(ObjectError::AlreadyExists { .. }) => {}
                Err(e) => {
                    self.events
                        .record(&cj, EventType::Warning, "FailedCreate", format!("Error creating job: {e}"));
                    return Err(e);
                }
            }
        }
        if cj["status"] != status {
            ctx.objects
                .modify(cron_jobs, &ns, &name, true, |o| {
                    o["status"] = status.clone();
                    true
                })
                .await?;
        }
        Ok(match d.requeue {
            // A little after the time, so that it has come.
            Some(s) => Action::Requeue(Duration::from_secs(s.max(0) as u64) + Duration::from_millis(100)),
            None => Action::AwaitChange,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> i64 {
        text.parse::<jiff::Timestamp>().unwrap().as_second()
    }

    fn cj(policy: &str, status: Value) -> Value {
        json!({
            "apiVersion": "batch/v1", "kind": "CronJob",
            "metadata": {"name": "backup", "namespace": "ops", "uid": "u1", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"schedule": "*/1 * * * *", "concurrencyPolicy": policy, "jobTemplate": {"spec": {"template": {"spec": {}}}}},
            "status": status,
        })
    }

    fn job(name: &str, state: Option<&str>, created: &str) -> Value {
        let conditions = match state {
            Some(s) => json!([{"type": s, "status": "True"}]),
            None => json!([]),
        };
        json!({"metadata": {"name": name, "namespace": "ops", "uid": name, "creationTimestamp": created},
               "status": {"conditions": conditions, "completionTime": created}})
    }

    fn every_minute() -> Schedule {
        Schedule::parse("*/1 * * * *").unwrap()
    }

    #[test]
    fn a_job_at_each_scheduled_minute_named_for_it() {
        let now = at("2026-01-01T00:01:05Z");
        let d = decide(&cj("Allow", json!({})), &[], &every_minute(), &TimeZone::UTC, now);
        assert_eq!(d.run_at, Some(at("2026-01-01T00:01:00Z")));
        assert_eq!(d.status["lastScheduleTime"], "2026-01-01T00:01:00Z");
        assert_eq!(d.requeue, Some(55));
        let j = new_job(&cj("Allow", json!({})), d.run_at.unwrap(), &every_minute(), &TimeZone::UTC);
        assert_eq!(j["metadata"]["name"], format!("backup-{}", at("2026-01-01T00:01:00Z") / 60));
        assert_eq!(j["metadata"]["annotations"][SCHEDULED_ANNOTATION], "2026-01-01T00:01:00+00:00");
        // Nothing again within the same minute.
        let after = cj("Allow", json!({"lastScheduleTime": "2026-01-01T00:01:00Z"}));
        assert_eq!(decide(&after, &[], &every_minute(), &TimeZone::UTC, now + 10).run_at, None);
    }

    #[test]
    fn after_an_outage_only_the_latest_missed_time_runs() {
        let down = cj("Allow", json!({"lastScheduleTime": "2026-01-01T00:01:00Z"}));
        let d = decide(&down, &[], &every_minute(), &TimeZone::UTC, at("2026-01-01T00:07:30Z"));
        assert_eq!(d.run_at, Some(at("2026-01-01T00:07:00Z")));
        // Beyond the starting deadline: nothing to catch up.
        let mut late = down.clone();
        late["spec"]["schedule"] = json!("0 * * * *");
        late["spec"]["startingDeadlineSeconds"] = json!(60);
        let hourly = Schedule::parse("0 * * * *").unwrap();
        let d = decide(&late, &[], &hourly, &TimeZone::UTC, at("2026-01-01T01:05:00Z"));
        assert_eq!(d.run_at, None);
    }

    #[test]
    fn forbid_waits_for_the_running_job_and_replace_stops_it() {
        let status = json!({"lastScheduleTime": "2026-01-01T00:01:00Z"});
        let running = job("backup-1", None, "2026-01-01T00:01:00Z");
        let now = at("2026-01-01T00:02:01Z");
        let d = decide(&cj("Forbid", status.clone()), &[&running], &every_minute(), &TimeZone::UTC, now);
        assert_eq!(d.run_at, None);
        assert_eq!(d.events[0].1, "JobAlreadyActive");
        assert_eq!(d.status["active"][0]["name"], "backup-1");
        let d = decide(&cj("Replace", status.clone()), &[&running], &every_minute(), &TimeZone::UTC, now);
        assert_eq!(d.run_at, Some(at("2026-01-01T00:02:00Z")));
        assert_eq!(d.delete, ["backup-1"]);
        let d = decide(&cj("Allow", status), &[&running], &every_minute(), &TimeZone::UTC, now);
        assert!(d.run_at.is_some() && d.delete.is_empty());
    }

    #[test]
    fn history_beyond_the_limits_goes_and_the_last_success_is_kept() {
        let jobs = [
            job("b-1", Some("Complete"), "2026-01-01T00:01:00Z"),
            job("b-2", Some("Complete"), "2026-01-01T00:02:00Z"),
            job("b-3", Some("Failed"), "2026-01-01T00:03:00Z"),
            job("b-4", Some("Complete"), "2026-01-01T00:04:00Z"),
            job("b-5", Some("Complete"), "2026-01-01T00:05:00Z"),
            job("b-6", Some("Failed"), "2026-01-01T00:06:00Z"),
        ];
        let refs: Vec<&Value> = jobs.iter().collect();
        let mut suspended = cj("Allow", json!({}));
        suspended["spec"]["suspend"] = json!(true);
        let d = decide(&suspended, &refs, &every_minute(), &TimeZone::UTC, at("2026-01-01T00:07:00Z"));
        assert_eq!(d.run_at, None, "suspended");
        assert_eq!(d.delete, ["b-1", "b-3"]);
        assert_eq!(d.status["lastSuccessfulTime"], "2026-01-01T00:05:00Z");
    }
}
