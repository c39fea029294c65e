//! Events expire: each is deleted `event_ttl` after it was last seen (kube-apiserver's
//! `--event-ttl`, one hour by default, which it leaves to etcd leases renewed on every write), so
//! that a busy cluster's Events, and the cache's copies of them, do not grow without end.

use std::time::Duration;

use capstan_api::time::{now_seconds, seconds};
use capstan_runtime::{Action, Reconciler};
use serde_json::Value;

use super::util::NsName;
use super::{Controller, ns_name, watches};
use crate::context::{Context, kind};
use crate::objects::ObjectError;

pub struct EventTtlController {
    pub ctx: Context,
}

/// Keyed by Event: every write of one (a new Event, or a count bumped) looks at it again.
pub fn controller(ctx: &Context) -> Controller<NsName, EventTtlController> {
    Controller {
        name: "event-ttl",
        reconciler: EventTtlController { ctx: ctx.clone() },
        workers: 1,
        triggers: vec![watches("events", ns_name)],
    }
}

/// When an Event was last seen, in Unix seconds: its series' last observation, its last
/// timestamp, its event time, or its creation, whichever it has (the newest wins).
pub fn last_seen(event: &Value) -> Option<i64> {
    [
        &event["series"]["lastObservedTime"],
        &event["lastTimestamp"],
        &event["eventTime"],
        &event["metadata"]["creationTimestamp"],
    ]
    .into_iter()
    .filter_map(seconds)
    .max()
}

impl Reconciler<NsName> for EventTtlController {
    type Error = ObjectError;

    async fn reconcile(&self, (ns, name): NsName) -> Result<Action, ObjectError> {
        let ctx = &self.ctx;
        let events = kind("events");
        let Some(event) = ctx.cache.get(events, &ns, &name) else {
            return Ok(Action::AwaitChange);
        };
        let ttl = ctx.settings.event_ttl.as_secs() as i64;
        let left = last_seen(&event.object).map_or(0, |seen| seen + ttl - now_seconds());
        if left > 0 {
            return Ok(Action::Requeue(Duration::from_secs(left as u64)));
        }
        match ctx.objects.delete(events, &ns, &name, None).await {
            Ok(_) | Err(ObjectError::NotFound { .. }) => Ok(Action::AwaitChange),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_event_was_last_seen_at_its_newest_time() {
        let e = json!({"metadata": {"creationTimestamp": "2026-12-05T10:00:00Z"}, "lastTimestamp": "2026-12-05T10:30:00Z"});
        assert_eq!(last_seen(&e), seconds(&json!("2026-12-05T10:30:00Z")));
        let series = json!({"metadata": {"creationTimestamp": "2026-12-05T10:00:00Z"},
            "eventTime": "2026-12-05T10:00:00.000000Z", "series": {"count": 4, "lastObservedTime": "2026-12-05T11:00:00.000000Z"}});
        assert_eq!(last_seen(&series), seconds(&json!("2026-12-05T11:00:00Z")));
        assert_eq!(last_seen(&json!({})), None);
    }
}
