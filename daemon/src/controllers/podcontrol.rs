//! How controllers create and delete the pods they own, as Kubernetes' pod control does: creates
//! counted against the namespace's quota, and an Event on the owner for every create and delete
//! (`SuccessfulCreate`, `FailedCreate`, `SuccessfulDelete`).

use serde_json::Value;

use crate::context::{Context, kind};
use crate::events::{EventType, Recorder};
use crate::objects::ObjectError;

/// What became of each pod a controller asked to create: made, refused by a quota (why), or
/// an error of the store.
pub type Created = Result<Result<Value, String>, ObjectError>;

/// Creates `pods` in namespace `ns`: all at once where no quota limits the namespace (the
/// store's group commit makes them one write), else one at a time, each counted against the
/// quota, stopping at the first refusal.
pub async fn create_pods(ctx: &Context, ns: &str, pods: Vec<Value>) -> Vec<Created> {
    if ctx.cache.list(kind("resourcequotas"), Some(ns)).0.is_empty() {
        let pods_kind = kind("pods");
        return futures::future::join_all(pods.into_iter().map(|p| ctx.objects.create(pods_kind, p)))
            .await
            .into_iter()
            .map(|r| r.map(Ok))
            .collect();
    }
    let mut out = Vec::new();
    for pod in pods {
        let r = super::quota::create_pod(ctx, ns, pod).await;
        let refused = matches!(r, Ok(Err(_)));
        out.push(r);
        if refused {
            break;
        }
    }
    out
}

/// What a batch of creates for an owner came to.
#[derive(Default)]
pub struct Outcome {
    pub created: Vec<Value>,
    /// Why a quota refused a pod, if one did.
    pub refused: Option<String>,
}

/// Creates `pods` for `owner` (see [`create_pods`]) and records an Event on the owner for each;
/// the first store error is returned once every result has its Event.
pub async fn create_for(ctx: &Context, events: &Recorder, owner: &Value, ns: &str, pods: Vec<Value>) -> Result<Outcome, ObjectError> {
    let mut outcome = Outcome::default();
    let mut error = None;
    for r in create_pods(ctx, ns, pods).await {
        match r {
            Ok(Ok(p)) => {
                let name = p["metadata"]["name"].as_str().unwrap_or_default();
                events.record(owner, EventType::Normal, "SuccessfulCreate", format!("Created pod: {name}"));
                outcome.created.push(p);
            }
            Ok(Err(why)) => {
                events.record(owner, EventType::Warning, "FailedCreate", format!("Error creating: {why}"));
                outcome.refused = Some(why);
            }
            Err(e) => {
                events.record(owner, EventType::Warning, "FailedCreate", format!("Error creating: {e}"));
                error.get_or_insert(e);
            }
        }
    }
    match error {
        Some(e) => Err(e),
        None => Ok(outcome),
    }
}

/// Deletes pod `name` of `owner` (gracefully, or `at_once` where no agent will stop it) and
/// records the Event; a pod already gone is no error.
pub async fn delete_for(ctx: &Context, events: &Recorder, owner: &Value, ns: &str, name: &str, at_once: bool) -> Result<(), ObjectError> {
    match ctx.objects.delete_pod(ns, name, at_once).await {
        Ok(_) | Err(ObjectError::NotFound { .. }) => {
            events.record(owner, EventType::Normal, "SuccessfulDelete", format!("Deleted pod: {name}"));
            Ok(())
        }
        Err(e) => Err(e),
    }
}
