//! The garbage collector: an object whose owners (ownerReferences) are all gone is deleted
//! (background cascade: a deleted Deployment takes its ReplicaSets, which take their pods).

use capstan_api::KindInfo;
use capstan_runtime::{Action, Reconciler};
use serde_json::Value;

use super::util::uid;
use std::sync::Arc;

use super::{Controller, util, watches};
use crate::context::{Context, kind};
use crate::objects::ObjectError;

/// (plural, namespace, name) of an object that has owners.
pub type Key = (&'static str, String, String);

pub struct GarbageCollector {
    pub ctx: Context,
}

/// The key of an object with owners; its dependents' keys when it is an owner that is gone.
pub fn key_for(obj: &Value) -> Vec<Key> {
    let plural = match obj["kind"].as_str() {
        Some("Pod") => "pods",
        Some("ReplicaSet") => "replicasets",
        Some("EndpointSlice") => "endpointslices",
        Some("ControllerRevision") => "controllerrevisions",
        Some("Job") => "jobs",
        Some("PersistentVolumeClaim") => "persistentvolumeclaims",
        _ => return Vec::new(),
    };
    let has_owners = obj["metadata"]["ownerReferences"].as_array().is_some_and(|o| !o.is_empty());
    if !has_owners {
        return Vec::new();
    }
    vec![(
        plural,
        obj["metadata"]["namespace"].as_str().unwrap_or_default().to_owned(),
        obj["metadata"]["name"].as_str().unwrap_or_default().to_owned(),
    )]
}

fn owner_kind(owner: &Value) -> Option<&'static KindInfo> {
    let group = owner["apiVersion"]
        .as_str()
        .map(|a| capstan_api::kinds::split_api_version(a).0)
        .unwrap_or_default();
    capstan_api::kinds::by_group_kind(group, owner["kind"].as_str()?)
}

/// The kinds whose objects have owners to outlive.
const DEPENDENTS: [&str; 6] = [
    "pods",
    "replicasets",
    "endpointslices",
    "controllerrevisions",
    "jobs",
    "persistentvolumeclaims",
];

/// Watches dependents (pods, ReplicaSets, EndpointSlices, ControllerRevisions, Jobs, claims) and
/// owners (ReplicaSets, Deployments, Services, Jobs, DaemonSets, StatefulSets):
/// an owner's deletion is a reason to look at each of its dependents.
pub fn controller(ctx: &Context) -> Controller<Key, GarbageCollector> {
    let with_dependents = |cache: Arc<crate::cache::Cache>| {
        move |o: &Value| -> Vec<Key> {
            let mut keys = key_for(o);
            // Only a deleted owner leaves dependents to collect.
            let (ns, name) = util::key_of(o);
            if o["metadata"]["deletionTimestamp"].is_null() && cache.get(kind_of(o), &ns, &name).is_some() {
                return keys;
            }
            let owner_uid = util::uid(o);
            for plural in DEPENDENTS {
                for e in cache.controlled_by(kind(plural), owner_uid) {
                    keys.push((plural, e.namespace.clone(), e.name.clone()));
                }
            }
            keys
        }
    };
    let owners = ["replicasets", "deployments", "services", "jobs", "daemonsets", "statefulsets"]
        .map(|plural| watches(plural, with_dependents(ctx.cache.clone())));
    let mut triggers = vec![
        watches("pods", key_for),
        watches("endpointslices", key_for),
        watches("controllerrevisions", key_for),
        watches("jobs", key_for),
        watches("persistentvolumeclaims", key_for),
    ];
    triggers.extend(owners);
    Controller {
        name: "garbage-collector",
        reconciler: GarbageCollector { ctx: ctx.clone() },
        workers: 2,
        triggers,
    }
}

/// The registry entry of an object's kind.
fn kind_of(o: &Value) -> &'static capstan_api::KindInfo {
    let group = o["apiVersion"]
        .as_str()
        .map(|a| capstan_api::kinds::split_api_version(a).0)
        .unwrap_or_default();
    capstan_api::kinds::by_group_kind(group, o["kind"].as_str().unwrap_or_default()).unwrap_or_else(|| kind("pods"))
}

impl Reconciler<Key> for GarbageCollector {
    type Error = ObjectError;

    async fn reconcile(&self, (plural, ns, name): Key) -> Result<capstan_runtime::Action, ObjectError> {
        let ctx = &self.ctx;
        ctx.caught_up().await;
        let k = kind(plural);
        let Some(obj) = ctx.cache.get(k, &ns, &name) else {
            return Ok(Action::AwaitChange);
        };
        let owners = obj.object["metadata"]["ownerReferences"].as_array().cloned().unwrap_or_default();
        if owners.is_empty() {
            return Ok(Action::AwaitChange);
        }
        let alive = owners.iter().any(|o| {
            let Some(ok) = owner_kind(o) else { return true }; // unknown kinds are left alone
            let owner_ns = if ok.namespaced { ns.as_str() } else { "" };
            ctx.cache
                .get(ok, owner_ns, o["name"].as_str().unwrap_or_default())
                .is_some_and(|e| uid(&e.object) == o["uid"].as_str().unwrap_or_default())
        });
        if alive {
            // Owners are deleted later; look again then (owner deletions requeue through the
            // periodic pass).
            return Ok(Action::Requeue(std::time::Duration::from_secs(30)));
        }
        tracing::debug!(object = %format!("{plural}/{ns}/{name}"), "owners are gone; deleting");
        let result = if plural == "pods" {
            ctx.objects.delete_pod(&ns, &name, false).await.map(drop)
        } else {
            ctx.objects.delete(k, &ns, &name, None).await.map(|_| ())
        };
        match result {
            Ok(()) | Err(ObjectError::NotFound { .. }) => Ok(Action::AwaitChange),
            Err(e) => Err(e),
        }
    }
}
