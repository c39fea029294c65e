//! The RBAC policy in force: compiled from the cache's Roles, ClusterRoles and bindings (and the
//! built-in defaults), and compiled again whenever one of them changes; the built-in aggregated
//! roles (`admin`, `edit`, `view`) are written with the rules they aggregate, as Kubernetes'
//! aggregation controller does, so that `kubectl describe clusterrole view` shows them.

use std::sync::{Arc, RwLock};

use capstan_api::KindInfo;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::bootstrap;
use super::rbac::{self, Policy};
use crate::cache::Cache;
use crate::objects::Objects;

const KINDS: [&str; 4] = ["clusterroles", "roles", "clusterrolebindings", "rolebindings"];

fn kind(plural: &str) -> &'static KindInfo {
    capstan_api::kinds::by_plural("rbac.authorization.k8s.io", plural).expect("served kind")
}

/// The current policy, shared by every request.
#[derive(Debug)]
pub struct Rbac {
    current: RwLock<Arc<Policy>>,
}

impl Rbac {
    /// Compiles the policy the cache holds now.
    pub fn new(cache: &Cache) -> Arc<Rbac> {
        let rbac = Rbac {
            current: RwLock::new(Arc::new(Policy::default())),
        };
        rbac.replace(compile(cache));
        Arc::new(rbac)
    }

    /// The policy as it stands.
    pub fn policy(&self) -> Arc<Policy> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn replace(&self, policy: Policy) {
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        // A binding to a missing role is allowed (as in Kubernetes) but said once.
        for d in policy.dangling.iter().filter(|d| !current.dangling.contains(d)) {
            tracing::warn!(binding = %d.binding, role = %d.role, "the binding's role does not exist: it grants nothing until the role is added");
        }
        *current = Arc::new(policy);
    }

    /// Recompiles on every change of an RBAC object until `stop`.
    pub async fn follow(self: Arc<Self>, cache: Arc<Cache>, objects: Objects, stop: CancellationToken) {
        loop {
            let from = cache.revision();
            self.replace(compile(&cache));
            write_aggregated(&cache, &objects, &self.policy()).await;
            let watches: Result<Vec<_>, _> = KINDS.iter().map(|k| cache.watch(kind(k), None, from)).collect();
            let Ok(mut watches) = watches else {
                continue;
            };
            let changed = futures::future::select_all(watches.iter_mut().map(|w| Box::pin(w.next())));
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = changed => {}
            }
        }
    }
}

/// Writes the resolved rules into the stored aggregated ClusterRoles that are not Git's (a
/// Git-declared one is Git's to say, and the sync would undo the write).
async fn write_aggregated(cache: &Cache, objects: &Objects, policy: &Policy) {
    let roles = kind("clusterroles");
    for entry in cache.list(roles, None).0 {
        let stored = &entry.object;
        if stored.get("aggregationRule").is_none_or(Value::is_null) || capstan_api::meta::from_git(stored) {
            continue;
        }
        let Some(rules) = policy.cluster_role(&entry.name) else { continue };
        // Compared as rules, not as JSON, so that a stored form never makes this write again.
        let have: Vec<rbac::Rule> = stored["rules"]
            .as_array()
            .into_iter()
            .flatten()
            .map(rbac::Rule::from_json)
            .collect();
        if have == rules {
            continue;
        }
        let mut next = (**stored).clone();
        next["rules"] = Value::Array(rules.iter().map(|r| r.to_json()).collect());
        if let Err(e) = objects.update(roles, next, false).await {
            tracing::debug!(role = %entry.name, error = %e, "writing an aggregated role's rules; the next change retries");
        }
    }
}

/// The policy of the objects in `cache`, with each built-in default the cache lacks.
fn compile(cache: &Cache) -> Policy {
    let list = |plural: &str| -> Vec<Arc<Value>> { cache.list(kind(plural), None).0.iter().map(|e| e.object.clone()).collect() };
    let with_defaults = |mut have: Vec<Arc<Value>>, defaults: Vec<Value>| {
        for d in defaults {
            if !have.iter().any(|h| h["metadata"]["name"] == d["metadata"]["name"]) {
                have.push(Arc::new(d));
            }
        }
        have
    };
    let cluster_roles = with_defaults(list("clusterroles"), bootstrap::cluster_roles());
    let cluster_role_bindings = with_defaults(list("clusterrolebindings"), bootstrap::cluster_role_bindings());
    let roles = list("roles");
    let role_bindings = list("rolebindings");
    Policy::build(&rbac::Objects {
        cluster_roles: refs(&cluster_roles),
        roles: refs(&roles),
        cluster_role_bindings: refs(&cluster_role_bindings),
        role_bindings: refs(&role_bindings),
    })
}

fn refs(v: &[Arc<Value>]) -> Vec<&Value> {
    v.iter().map(|o| o.as_ref()).collect()
}
