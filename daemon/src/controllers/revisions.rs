//! ControllerRevisions of DaemonSets and StatefulSets: one per pod template, named by the
//! template's hash, numbered so that `kubectl rollout history` and `undo` see the order, and
//! pruned to the owner's `revisionHistoryLimit` (never a revision a pod still runs).

use std::collections::HashSet;

use capstan_api::KindInfo;
use serde_json::{Value, json};

use super::util::{owner_ref, template_hash};
use crate::context::{Context, kind};
use crate::objects::ObjectError;

/// The label naming the ControllerRevision a pod was made from.
pub const REVISION_HASH_LABEL: &str = "controller-revision-hash";

/// The revisions of the owner with uid `owner`.
pub fn of(ctx: &Context, owner: &str) -> Vec<Value> {
    ctx.cache
        .controlled_by(kind("controllerrevisions"), owner)
        .iter()
        .map(|e| (*e.object).clone())
        .collect()
}

/// The revision of `owner`'s current template (its hash): found, created, or (a template seen
/// before) made the newest again. None after a hash collision, which is counted in the owner's
/// status (`owner_kind` is where to write it) so that the next look hashes differently.
pub async fn current(
    ctx: &Context,
    owner_kind: &'static KindInfo,
    owner: &Value,
    revisions: &[Value],
) -> Result<Option<String>, ObjectError> {
    let (ns, name) = super::util::key_of(owner);
    let template = &owner["spec"]["template"];
    let collisions = owner["status"]["collisionCount"].as_i64().unwrap_or(0);
    let hash = template_hash(template, collisions);
    let rev_kind = kind("controllerrevisions");
    let newest = revisions.iter().filter_map(|r| r["revision"].as_i64()).max().unwrap_or(0);
    let same = |r: &Value| {
        let mut t = r["data"]["spec"]["template"].clone();
        if let Some(m) = t.as_object_mut() {
            m.remove("$patch");
        }
        t == *template
    };
    let rev_name = format!("{name}-{hash}");
    match revisions.iter().find(|r| r["metadata"]["name"] == rev_name.as_str()) {
        Some(r) if same(r) => {
            if r["revision"].as_i64().unwrap_or(0) < newest {
                ctx.objects
                    .modify(rev_kind, &ns, &rev_name, false, |r| {
                        r["revision"] = json!(newest + 1);
                        true
                    })
                    .await?;
            }
            Ok(Some(hash))
        }
        Some(_) => {
            ctx.objects
                .modify(owner_kind, &ns, &name, true, |d| {
                    d["status"]["collisionCount"] = json!(collisions + 1);
                    true
                })
                .await?;
            Ok(None)
        }
        None => {
            let mut labels = template["metadata"]["labels"].as_object().cloned().unwrap_or_default();
            labels.insert(REVISION_HASH_LABEL.into(), json!(hash));
            let mut data = template.clone();
            data["$patch"] = json!("replace");
            let revision = json!({
                "metadata": {"name": rev_name, "namespace": ns, "labels": labels, "ownerReferences": [owner_ref(owner)]},
                "data": {"spec": {"template": data}},
                "revision": newest + 1,
            });
            match ctx.objects.create(rev_kind, revision).await {
                Ok(_) | Err(ObjectError::AlreadyExists { .. }) => Ok(Some(hash)),
                Err(e) => Err(e),
            }
        }
    }
}

/// Removes the oldest revisions no pod runs beyond the owner's `revisionHistoryLimit`; `current`
/// is the revision in use, by hash or name.
pub async fn clean_history(ctx: &Context, owner: &Value, revisions: &[Value], pods: &[&Value], current: &str) -> Result<(), ObjectError> {
    let limit = owner["spec"]["revisionHistoryLimit"].as_i64().unwrap_or(10).max(0) as usize;
    let in_use: HashSet<&str> = pods
        .iter()
        .filter_map(|p| p["metadata"]["labels"][REVISION_HASH_LABEL].as_str())
        .chain([current])
        .collect();
    // DaemonSet pods carry the revision's hash, StatefulSet pods its name.
    let used = |r: &Value| {
        in_use.contains(r["metadata"]["labels"][REVISION_HASH_LABEL].as_str().unwrap_or_default())
            || in_use.contains(r["metadata"]["name"].as_str().unwrap_or_default())
    };
    let mut old: Vec<&Value> = revisions.iter().filter(|r| !used(r)).collect();
    if old.len() <= limit {
        return Ok(());
    }
    old.sort_by_key(|r| r["revision"].as_i64().unwrap_or(0));
    let ns = owner["metadata"]["namespace"].as_str().unwrap_or_default();
    for r in &old[..old.len() - limit] {
        let name = r["metadata"]["name"].as_str().unwrap_or_default();
        match ctx.objects.delete(kind("controllerrevisions"), ns, name, None).await {
            Ok(_) | Err(ObjectError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
