//! Events, as `kubectl describe` and `kubectl get events` show them: what happened to an object,
//! by which component, how often. Repeats of the same event bump its count instead of piling up.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use crate::objects::Objects;
use capstan_api::time::now_rfc3339;

pub use capstan_api::event::EventType;
use capstan_api::event::{Report, Source};

/// Records events for one component (`deployment-controller`, `default-scheduler`, ...).
#[derive(Clone)]
pub struct Recorder {
    objects: Objects,
    source: Source,
    /// (involved uid, reason, message) → event name, for counting repeats.
    seen: Arc<Mutex<HashMap<(String, String, String), String>>>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Recorder({})", self.source.component)
    }
}

fn events_kind() -> &'static capstan_api::KindInfo {
    capstan_api::kinds::by_name("events").expect("events are served")
}

impl Recorder {
    pub fn new(objects: Objects, component: impl Into<String>, host: Option<String>) -> Recorder {
        Recorder {
            objects,
            source: Source {
                component: component.into(),
                host,
            },
            seen: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Records an event about `involved` in the background.
    pub fn record(&self, involved: &Value, ty: EventType, reason: &str, message: impl Into<String>) {
        let message = message.into();
        let this = self.clone();
        let involved = involved.clone();
        let reason = reason.to_owned();
        tokio::spawn(async move {
            if let Err(e) = this.write(&involved, ty, &reason, &message).await {
                tracing::debug!(error = %e, reason = %reason, "cannot record an event");
            }
        });
    }

    async fn write(&self, involved: &Value, ty: EventType, reason: &str, message: &str) -> Result<(), crate::objects::ObjectError> {
        let meta = &involved["metadata"];
        let namespace = meta["namespace"].as_str().filter(|n| !n.is_empty()).unwrap_or("default").to_owned();
        let uid = meta["uid"].as_str().unwrap_or_default().to_owned();
        let dedupe = (uid.clone(), reason.to_owned(), message.to_owned());
        let existing = self.seen.lock().unwrap_or_else(|p| p.into_inner()).get(&dedupe).cloned();
        let now = now_rfc3339();
        if let Some(name) = existing {
            let bumped = self
                .objects
                .modify(events_kind(), &namespace, &name, false, |e| {
                    let count = e["count"].as_i64().unwrap_or(1) + 1;
                    e["count"] = json!(count);
                    e["lastTimestamp"] = json!(now);
                    true
                })
                .await;
            if bumped.is_ok() {
                return Ok(());
            }
        }
        let report = Report {
            involved,
            field_path: None,
            kind: ty,
            reason,
            message,
        };
        let event = self.source.event(&report, &now);
        let name = event["metadata"]["name"].as_str().unwrap_or_default().to_owned();
        self.objects.create(events_kind(), event).await?;
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() > 10_000 {
            seen.clear();
        }
        seen.insert(dedupe, name);
        Ok(())
    }
}
