//! Kubernetes objects in the store: where each object's key is, and the writes that keep an
//! object's metadata honest — uid and creationTimestamp set once, generation bumped when the
//! spec changes, resourceVersion being the store revision and every write a compare-and-swap on
//! it — and its spec defaulted as kube-apiserver does. Controllers, the sync and the API server
//! all write through here.

use std::sync::Arc;

use capstan_api::KindInfo;
use capstan_api::time::now_rfc3339;
use capstan_store::{Compare, KeyValue, Revision, Store, StoreError, Txn};
use serde_json::{Map, Value, json};

/// Root of every object key.
pub const REGISTRY_PREFIX: &str = "/registry/";

#[derive(Debug, Clone, thiserror::Error)]
pub enum ObjectError {
    #[error("{plural} {name:?} not found")]
    NotFound { plural: String, name: String },
    #[error("{plural} {name:?} already exists")]
    AlreadyExists { plural: String, name: String },
    #[error(
        "operation cannot be fulfilled on {plural} {name:?}: the object has been modified; please apply your changes to the latest version and try again"
    )]
    Conflict { plural: String, name: String },
    #[error("{plural} {name:?} is invalid: {message}")]
    Invalid { plural: String, name: String, message: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How a controller retries after each error: a conflict is re-read at once (another writer won
/// the race), an invalid object waits for a change to it, the rest back off.
impl capstan_runtime::ReconcileError for ObjectError {
    fn retry(&self) -> capstan_runtime::Retry {
        use capstan_runtime::Retry;
        match self {
            ObjectError::Conflict { .. } => Retry::After(std::time::Duration::ZERO),
            ObjectError::Invalid { .. } => Retry::Stalled,
            ObjectError::NotFound { .. } | ObjectError::AlreadyExists { .. } | ObjectError::Store(_) => Retry::Backoff,
        }
    }
}

/// The store key of an object.
pub fn key_of(kind: &KindInfo, namespace: &str, name: &str) -> String {
    let group = if kind.group.is_empty() { "core" } else { kind.group };
    if kind.namespaced {
        format!("{REGISTRY_PREFIX}{group}/{}/{namespace}/{name}", kind.plural)
    } else {
        format!("{REGISTRY_PREFIX}{group}/{}/{name}", kind.plural)
    }
}

/// The key prefix of a kind's objects, in one namespace or all.
pub fn prefix_of(kind: &KindInfo, namespace: Option<&str>) -> String {
    let group = if kind.group.is_empty() { "core" } else { kind.group };
    match namespace {
        Some(ns) if kind.namespaced => format!("{REGISTRY_PREFIX}{group}/{}/{ns}/", kind.plural),
        _ => format!("{REGISTRY_PREFIX}{group}/{}/", kind.plural),
    }
}

/// Reads the object a store value holds, with apiVersion, kind and resourceVersion filled in.
pub fn decode(kind: &KindInfo, kv: &KeyValue) -> Option<Value> {
    let mut v: Value = serde_json::from_slice(&kv.value).ok()?;
    let obj = v.as_object_mut()?;
    obj.insert("apiVersion".into(), Value::String(kind.api_version()));
    obj.insert("kind".into(), Value::String(kind.kind.to_owned()));
    let meta = obj.entry("metadata").or_insert_with(|| json!({}));
    if let Some(m) = meta.as_object_mut() {
        m.insert("resourceVersion".into(), Value::String(kv.mod_revision.to_string()));
    }
    Some(v)
}

/// Whether others must act before the object may go (`metadata.finalizers`).
pub fn has_finalizers(v: &Value) -> bool {
    v["metadata"]["finalizers"].as_array().is_some_and(|f| !f.is_empty())
}

pub fn name_of(v: &Value) -> &str {
    v.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default()
}

pub fn namespace_of(v: &Value) -> &str {
    v.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or_default()
}

pub fn resource_version_of(v: &Value) -> Option<Revision> {
    v.pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
}

/// Where pod admission reads the cluster's eviction timeout, in seconds (the settings in force).
pub type EvictionSeconds = Box<dyn Fn() -> u32 + Send + Sync>;

/// Reads and writes objects of any registry kind.
#[derive(Clone)]
pub struct Objects {
    store: Arc<dyn Store>,
    /// Set once the settings are known ([`Objects::admit_pods_with`]); until then, and in tests
    /// without it, Kubernetes' default of 300 s.
    eviction: Arc<std::sync::OnceLock<EvictionSeconds>>,
}

/// Kubernetes' default eviction timeout (DefaultTolerationSeconds).
const DEFAULT_EVICTION_SECONDS: u32 = 300;

impl std::fmt::Debug for Objects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Objects(revision {})", self.store.revision())
    }
}

fn meta_mut(v: &mut Value) -> &mut Map<String, Value> {
    let obj = v.as_object_mut().expect("objects are JSON objects");
    obj.entry("metadata")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .expect("metadata is an object")
}

/// What is stored: the object without resourceVersion (the store revision is the truth).
fn encode(v: &Value) -> Vec<u8> {
    let mut v = v.clone();
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
    }
    serde_json::to_vec(&v).expect("a JSON value serialises")
}

/// Whether a write should bump `metadata.generation`: anything but status and metadata changed.
fn spec_changed(old: &Value, new: &Value) -> bool {
    const SKIP: [&str; 4] = ["status", "metadata", "apiVersion", "kind"];
    let (Some(o), Some(n)) = (old.as_object(), new.as_object()) else {
        return old != new;
    };
    o.iter()
        .filter(|(k, _)| !SKIP.contains(&k.as_str()))
        .any(|(k, v)| n.get(k) != Some(v))
        || n.keys().filter(|k| !SKIP.contains(&k.as_str())).any(|k| !o.contains_key(k))
}

/// Which parts of an object a write may change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// Everything but `.status` (what a user's or a controller's update changes).
    Spec,
    /// Only `.status` (the status subresource).
    Status,
    /// Both at once (internal writers that set a field and its condition together).
    All,
}

impl Objects {
    pub fn new(store: Arc<dyn Store>) -> Objects {
        Objects {
            store,
            eviction: Arc::default(),
        }
    }

    /// The same objects written through another view of the store (a leader's fenced one);
    /// the pod admission settings are shared.
    pub fn with_store(&self, store: Arc<dyn Store>) -> Objects {
        Objects {
            store,
            eviction: self.eviction.clone(),
        }
    }

    /// Pods created from now on tolerate not-ready and unreachable nodes for what `seconds`
    /// says at their creation. The first call counts.
    pub fn admit_pods_with(&self, seconds: EvictionSeconds) {
        let _ = self.eviction.set(seconds);
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn get(&self, kind: &KindInfo, namespace: &str, name: &str) -> Result<Option<Value>, ObjectError> {
        Ok(self.store.get(&key_of(kind, namespace, name))?.and_then(|kv| decode(kind, &kv)))
    }

    /// Every object of a kind (in one namespace or all), with the revision of the read.
    pub fn list(&self, kind: &KindInfo, namespace: Option<&str>) -> Result<(Vec<Value>, Revision), ObjectError> {
        let r = self.store.range(&prefix_of(kind, namespace), None, 0)?;
        Ok((r.kvs.iter().filter_map(|kv| decode(kind, kv)).collect(), r.revision))
    }

    /// Creates an object: uid, creationTimestamp and generation are set here.
    pub async fn create(&self, kind: &KindInfo, mut object: Value) -> Result<Value, ObjectError> {
        let (ns, name) = (namespace_of(&object).to_owned(), name_of(&object).to_owned());
        if name.is_empty() {
            return Err(ObjectError::Invalid {
                plural: kind.plural.into(),
                name,
                message: "metadata.name is required".into(),
            });
        }
        capstan_api::defaults::apply(kind, &mut object);
        if kind.group.is_empty() && kind.kind == "Pod" {
            let seconds = self.eviction.get().map_or(DEFAULT_EVICTION_SECONDS, |f| f());
            capstan_api::defaults::admit_pod(&mut object, seconds);
        }
        {
            let m = meta_mut(&mut object);
            m.insert("uid".into(), Value::String(uuid::Uuid::new_v4().to_string()));
            m.insert("creationTimestamp".into(), Value::String(now_rfc3339()));
            m.insert("generation".into(), json!(1));
            m.remove("resourceVersion");
        }
        if kind.group == "batch" && kind.kind == "Job" {
            capstan_api::defaults::job_selector(&mut object);
        }
        if let Some(o) = object.as_object_mut() {
            o.insert("apiVersion".into(), Value::String(kind.api_version()));
            o.insert("kind".into(), Value::String(kind.kind.to_owned()));
        }
        let key = key_of(kind, &ns, &name);
        loop {
            let mut txn = Txn::default().when(Compare::Missing(key.clone()));
            // As the API server's namespace lifecycle admission: nothing new in a namespace that
            // does not exist or is being deleted. The compare on the namespace's revision makes
            // the check and the create one atomic step.
            if kind.namespaced {
                let ns_key = format!("{REGISTRY_PREFIX}core/namespaces/{ns}");
                let ns_kv = self.store.get(&ns_key)?;
                let terminating = ns_kv
                    .as_ref()
                    .and_then(|kv| serde_json::from_slice::<Value>(&kv.value).ok())
                    .is_some_and(|n| !n["metadata"]["deletionTimestamp"].is_null());
                match ns_kv {
                    None => {
                        return Err(ObjectError::Invalid {
                            plural: kind.plural.into(),
                            name,
                            message: format!("namespace {ns:?} not found"),
                        });
                    }
                    Some(_) if terminating => {
                        return Err(ObjectError::Invalid {
                            plural: kind.plural.into(),
                            name,
                            message: format!("namespace {ns:?} is being terminated"),
                        });
                    }
                    Some(kv) => txn = txn.when(Compare::ModRevision(ns_key, kv.mod_revision)),
                }
            }
            let r = self.store.txn(txn.put(key.clone(), encode(&object))).await?;
            if r.succeeded {
                meta_mut(&mut object).insert("resourceVersion".into(), Value::String(r.revision.to_string()));
                return Ok(object);
            }
            if r.failed_compare == Some(0) {
                return Err(ObjectError::AlreadyExists {
                    plural: kind.plural.into(),
                    name,
                });
            }
            // The namespace changed meanwhile: check it again.
        }
    }

    /// Replaces an object. With a resourceVersion in `object`, the write only succeeds if the
    /// stored object is still at that version; without one, it replaces whatever is there.
    /// uid and creationTimestamp are kept; generation goes up when the spec changed. With
    /// `status_only`, only `.status` of `object` is taken; otherwise `.status` is kept.
    pub async fn update(&self, kind: &KindInfo, object: Value, status_only: bool) -> Result<Value, ObjectError> {
        self.update_part(kind, object, if status_only { Part::Status } else { Part::Spec })
            .await
    }

    /// Like [`Self::update`], choosing which part of `object` is written.
    pub async fn update_part(&self, kind: &KindInfo, object: Value, part: Part) -> Result<Value, ObjectError> {
        let (ns, name) = (namespace_of(&object).to_owned(), name_of(&object).to_owned());
        let key = key_of(kind, &ns, &name);
        let not_found = || ObjectError::NotFound {
            plural: kind.plural.into(),
            name: name.clone(),
        };
        let current_kv = self.store.get(&key)?.ok_or_else(not_found)?;
        let current = decode(kind, &current_kv).ok_or_else(not_found)?;
        if resource_version_of(&object).is_some_and(|rv| rv != current_kv.mod_revision) {
            return Err(ObjectError::Conflict {
                plural: kind.plural.into(),
                name,
            });
        }
        self.write_over(kind, &key, current_kv.mod_revision, &current, object, part).await
    }

    /// Writes `object` over `current` (read at revision `at`) with compare-and-swap.
    async fn write_over(
        &self,
        kind: &KindInfo,
        key: &str,
        at: Revision,
        current: &Value,
        mut object: Value,
        part: Part,
    ) -> Result<Value, ObjectError> {
        let name = name_of(current).to_owned();
        match part {
            Part::Status => {
                let status = object.get("status").cloned();
                object = current.clone();
                match status {
                    Some(s) => object["status"] = s,
                    None => {
                        object.as_object_mut().map(|o| o.remove("status"));
                    }
                }
            }
            Part::Spec => match current.get("status") {
                Some(s) => object["status"] = s.clone(),
                None => {
                    object.as_object_mut().map(|o| o.remove("status"));
                }
            },
            Part::All => {}
        }
        if part != Part::Status {
            capstan_api::defaults::apply(kind, &mut object);
        }
        let generation = current.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(1);
        let bump = spec_changed(current, &object);
        {
            let m = meta_mut(&mut object);
            for field in ["uid", "creationTimestamp"] {
                if let Some(v) = current.pointer(&format!("/metadata/{field}")) {
                    m.insert(field.into(), v.clone());
                }
            }
            m.insert("generation".into(), json!(if bump { generation + 1 } else { generation }));
            if let Some(d) = current.pointer("/metadata/deletionTimestamp") {
                m.insert("deletionTimestamp".into(), d.clone());
            }
            m.insert("resourceVersion".into(), Value::String(at.to_string()));
        }
        if let Some(o) = object.as_object_mut() {
            o.insert("apiVersion".into(), Value::String(kind.api_version()));
            o.insert("kind".into(), Value::String(kind.kind.to_owned()));
        }
        if object == *current {
            return Ok(object);
        }
        // The last finalizer of an object being deleted is gone: the delete completes.
        let completes = has_finalizers(current) && !has_finalizers(&object) && !current["metadata"]["deletionTimestamp"].is_null();
        let txn = Txn::default().when(Compare::ModRevision(key.to_owned(), at));
        let txn = if completes {
            txn.delete(key.to_owned())
        } else {
            txn.put(key.to_owned(), encode(&object))
        };
        let r = self.store.txn(txn).await?;
        if !r.succeeded {
            return Err(ObjectError::Conflict {
                plural: kind.plural.into(),
                name,
            });
        }
        meta_mut(&mut object).insert("resourceVersion".into(), Value::String(r.revision.to_string()));
        Ok(object)
    }

    /// Reads, changes and writes an object, retrying on conflicts. `change` returns false to
    /// leave it as it is; it is called afresh on every attempt. Returns the object as written
    /// (or as found).
    pub async fn modify(
        &self,
        kind: &KindInfo,
        namespace: &str,
        name: &str,
        status_only: bool,
        change: impl FnMut(&mut Value) -> bool,
    ) -> Result<Value, ObjectError> {
        self.modify_part(kind, namespace, name, if status_only { Part::Status } else { Part::Spec }, change)
            .await
    }

    /// Like [`Self::modify`], choosing which part of the object the change may touch.
    pub async fn modify_part(
        &self,
        kind: &KindInfo,
        namespace: &str,
        name: &str,
        part: Part,
        mut change: impl FnMut(&mut Value) -> bool,
    ) -> Result<Value, ObjectError> {
        let key = key_of(kind, namespace, name);
        let not_found = || ObjectError::NotFound {
            plural: kind.plural.into(),
            name: name.into(),
        };
        loop {
            let kv = self.store.get(&key)?.ok_or_else(not_found)?;
            let current = decode(kind, &kv).ok_or_else(not_found)?;
            let mut next = current.clone();
            if !change(&mut next) {
                return Ok(current);
            }
            match self.write_over(kind, &key, kv.mod_revision, &current, next, part).await {
                Err(ObjectError::Conflict { .. }) => continue,
                other => return other,
            }
        }
    }

    /// Writes `fields` into the status of `current` (as read), keeping the status's other
    /// fields; nothing is written when they are there already.
    pub async fn merge_status(&self, kind: &KindInfo, current: &Value, fields: &Value) -> Result<(), ObjectError> {
        let mut status = current["status"]
            .as_object()
            .cloned()
            .map(Value::Object)
            .unwrap_or_else(|| json!({}));
        for (k, v) in fields.as_object().into_iter().flatten() {
            status[k] = v.clone();
        }
        if current["status"] == status {
            return Ok(());
        }
        self.modify(kind, namespace_of(current), name_of(current), true, |o| {
            o["status"] = status.clone();
            true
        })
        .await
        .map(drop)
    }

    /// Deletes a pod as the API server does: a pod bound to a node is marked (deletionTimestamp
    /// and its grace period) and its node agent stops it and then removes the object; a pod on
    /// no node, or with `at_once` (the agent's own final delete), goes at once. Returns the pod
    /// as it is afterwards, or `None` if there was none.
    pub async fn delete_pod(&self, namespace: &str, name: &str, at_once: bool) -> Result<Option<Value>, ObjectError> {
        let pods = capstan_api::kinds::by_name("pods").expect("pods are served");
        let Some(current) = self.get(pods, namespace, name)? else {
            return Ok(None);
        };
        let scheduled = current["spec"]["nodeName"].as_str().is_some_and(|n| !n.is_empty());
        if at_once || !scheduled {
            return match self.delete(pods, namespace, name, None).await {
                Ok(v) => Ok(Some(v)),
                Err(ObjectError::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            };
        }
        let grace = current["spec"]["terminationGracePeriodSeconds"].as_i64().unwrap_or(30);
        self.modify(pods, namespace, name, false, |p| {
            if !p["metadata"]["deletionTimestamp"].is_null() {
                return false;
            }
            p["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
            p["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
            true
        })
        .await
        .map(Some)
    }

    /// Deletes an object, optionally only if it is still at `expected` revision. Returns the
    /// object as it was. A Namespace is deleted as Kubernetes does it: the first delete marks it
    /// Terminating (nothing new may be created in it), the namespace controller removes what is
    /// in it, and its own delete then removes the namespace.
    pub async fn delete(&self, kind: &KindInfo, namespace: &str, name: &str, expected: Option<Revision>) -> Result<Value, ObjectError> {
        let key = key_of(kind, namespace, name);
        let not_found = || ObjectError::NotFound {
            plural: kind.plural.into(),
            name: name.into(),
        };
        let current_kv = self.store.get(&key)?.ok_or_else(not_found)?;
        let current = decode(kind, &current_kv).ok_or_else(not_found)?;
        if kind.group.is_empty() && kind.kind == "Namespace" && current["metadata"]["deletionTimestamp"].is_null() {
            let mut next = current.clone();
            next["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
            next["status"] = json!({"phase": "Terminating"});
            return self
                .write_over(kind, &key, current_kv.mod_revision, &current, next, Part::All)
                .await;
        }
        // Finalizers hold the object until those who set them have done their part
        // (Kubernetes' graceful deletion of pods is handled by delete_pod, not here).
        if has_finalizers(&current) && kind.kind != "Pod" {
            if !current["metadata"]["deletionTimestamp"].is_null() {
                return Ok(current);
            }
            let mut next = current.clone();
            next["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
            return self
                .write_over(kind, &key, current_kv.mod_revision, &current, next, Part::All)
                .await;
        }
        let rev = expected.unwrap_or(current_kv.mod_revision);
        let r = self
            .store
            .txn(Txn::default().when(Compare::ModRevision(key.clone(), rev)).delete(key))
            .await?;
        if !r.succeeded {
            return Err(ObjectError::Conflict {
                plural: kind.plural.into(),
                name: name.into(),
            });
        }
        Ok(current)
    }
}
