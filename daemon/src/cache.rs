//! The watch cache: every object of every kind, decoded once and kept serialised, fed by one
//! store watch; what the API server reads, lists and watches from, as kube-apiserver does. It
//! keeps a window of recent events so that a watch can start at any recent resourceVersion; an
//! older one is answered "too old" (410 Expired), and the client lists again.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use capstan_api::{KindInfo, REGISTRY};
use capstan_store::{EventKind, Revision, Store, StoreError};
use serde_json::Value;
use tokio::sync::{broadcast, watch};

use crate::objects::{REGISTRY_PREFIX, decode, name_of, namespace_of};

/// Events kept for watches that start in the past.
const HISTORY: usize = 20_000;
/// Most bytes of object JSON the watch history keeps.
const HISTORY_BYTES: usize = 32 << 20;

/// One object as the cache holds it.
#[derive(Debug)]
pub struct Entry {
    pub object: Arc<Value>,
    /// The object serialised, with its resourceVersion.
    pub json: Bytes,
    pub namespace: String,
    pub name: String,
    pub revision: Revision,
    /// The uid of the object's controller, if it has one.
    pub controller: Option<String>,
}

impl Entry {
    fn new(object: Value, revision: Revision) -> Entry {
        let json = Bytes::from(serde_json::to_vec(&object).expect("a JSON value serialises"));
        Entry::with_json(object, json, revision)
    }

    fn with_json(object: Value, json: Bytes, revision: Revision) -> Entry {
        let controller = object["metadata"]["ownerReferences"]
            .as_array()
            .and_then(|refs| refs.iter().find(|r| r["controller"] == true))
            .and_then(|r| r["uid"].as_str())
            .map(str::to_owned);
        Entry {
            namespace: namespace_of(&object).to_owned(),
            name: name_of(&object).to_owned(),
            object: Arc::new(object),
            json,
            revision,
            controller,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Added,
    Modified,
    Deleted,
}

impl Change {
    pub fn as_str(self) -> &'static str {
        match self {
            Change::Added => "ADDED",
            Change::Modified => "MODIFIED",
            Change::Deleted => "DELETED",
        }
    }
}

/// A change as the watch history keeps it: the object's JSON alone (shared with the cache's
/// copy while that version is current), decoded again only for a watch that starts in the
/// past. A decoded object takes several times its JSON: old versions must not.
struct Past {
    kind: &'static KindInfo,
    change: Change,
    revision: Revision,
    namespace: String,
    json: Bytes,
}

impl Past {
    fn of(e: &CacheEvent) -> Past {
        Past {
            kind: e.kind,
            change: e.change,
            revision: e.entry.revision,
            namespace: e.entry.namespace.clone(),
            json: e.entry.json.clone(),
        }
    }

    fn revive(&self) -> Option<Arc<CacheEvent>> {
        let object: Value = serde_json::from_slice(&self.json).ok()?;
        Some(Arc::new(CacheEvent {
            kind: self.kind,
            change: self.change,
            entry: Arc::new(Entry::with_json(object, self.json.clone(), self.revision)),
        }))
    }
}

/// A change to one object.
#[derive(Debug)]
pub struct CacheEvent {
    pub kind: &'static KindInfo,
    pub change: Change,
    pub entry: Arc<Entry>,
}

impl CacheEvent {
    pub fn revision(&self) -> Revision {
        self.entry.revision
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("too old resource version: {requested} ({oldest})")]
    TooOld { requested: Revision, oldest: Revision },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The objects of one kind, and who controls them.
#[derive(Default)]
struct KindIndex {
    objects: BTreeMap<(String, String), Arc<Entry>>,
    /// Objects by the uid of their controller (ownerReference with `controller: true`).
    by_controller: HashMap<String, BTreeSet<(String, String)>>,
    /// Objects without a controller, per namespace (candidates for adoption).
    orphans: BTreeSet<(String, String)>,
}

impl KindIndex {
    fn insert(&mut self, entry: Arc<Entry>) -> bool {
        let key = (entry.namespace.clone(), entry.name.clone());
        let existed = self.remove(&key);
        match &entry.controller {
            Some(uid) => {
                self.by_controller.entry(uid.clone()).or_default().insert(key.clone());
            }
            None => {
                self.orphans.insert(key.clone());
            }
        }
        self.objects.insert(key, entry);
        existed
    }

    fn remove(&mut self, key: &(String, String)) -> bool {
        let Some(old) = self.objects.remove(key) else { return false };
        match &old.controller {
            Some(uid) => {
                if let Some(set) = self.by_controller.get_mut(uid) {
                    set.remove(key);
                    if set.is_empty() {
                        self.by_controller.remove(uid);
                    }
                }
            }
            None => {
                self.orphans.remove(key);
            }
        }
        true
    }
}

struct Inner {
    kinds: Vec<KindIndex>,
    history: VecDeque<Past>,
    /// Bytes of the objects' JSON in `history`.
    history_bytes: usize,
    /// The cache has every event after this revision in `history`.
    history_from: Revision,
    revision: Revision,
}

/// See the module documentation.
pub struct Cache {
    inner: RwLock<Inner>,
    live: broadcast::Sender<Arc<CacheEvent>>,
    revision: watch::Sender<Revision>,
    /// Counts resyncs: each one ends every running watch with `TooOld` (its watcher lists again).
    resets: watch::Sender<u64>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Cache(revision {})", *self.revision.borrow())
    }
}

fn kind_index(key: &str) -> Option<usize> {
    let rest = key.strip_prefix(REGISTRY_PREFIX)?;
    let mut parts = rest.splitn(3, '/');
    let group = parts.next()?;
    let plural = parts.next()?;
    let group = if group == "core" { "" } else { group };
    REGISTRY.iter().position(|k| k.group == group && k.plural == plural)
}

fn index_of(kind: &KindInfo) -> usize {
    REGISTRY
        .iter()
        .position(|k| k.group == kind.group && k.kind == kind.kind)
        .expect("kinds come from the registry")
}

/// The objects of a listing, indexed by kind.
fn index(list: &capstan_store::RangeResult) -> Vec<KindIndex> {
    let mut kinds: Vec<KindIndex> = REGISTRY.iter().map(|_| KindIndex::default()).collect();
    for kv in &list.kvs {
        let Some(i) = kind_index(&kv.key) else {
            continue;
        };
        if let Some(obj) = decode(&REGISTRY[i], kv) {
            kinds[i].insert(Arc::new(Entry::new(obj, kv.mod_revision)));
        }
    }
    kinds
}

impl Cache {
    /// Loads every object and follows the store from there.
    pub async fn start(store: Arc<dyn Store>) -> Result<Arc<Cache>, CacheError> {
        let initial = store.range(REGISTRY_PREFIX, None, 0)?;
        let kinds = index(&initial);
        let (live, _) = broadcast::channel(65_536);
        let (revision, _) = watch::channel(initial.revision);
        let cache = Arc::new(Cache {
            inner: RwLock::new(Inner {
                kinds,
                history: VecDeque::new(),
                history_bytes: 0,
                history_from: initial.revision,
                revision: initial.revision,
            }),
            live,
            revision,
            resets: watch::channel(0).0,
        });
        // Every key, not only objects: the cache's revision must follow the store's, so that
        // a read can wait for "the cache has seen everything up to now".
        let mut events = store.watch("/", initial.revision)?;
        let feeder = Arc::downgrade(&cache);
        tokio::spawn(async move {
            loop {
                while let Some(event) = events.recv().await {
                    let Some(cache) = feeder.upgrade() else {
                        return;
                    };
                    match event {
                        Ok(e) => cache.apply(e),
                        Err(e) => {
                            tracing::warn!(error = %e, "the store watch behind the cache failed: reading everything again");
                            break;
                        }
                    }
                }
                // The history this cache followed is gone (it was cut off from the store for
                // long): read the store again and go on from there.
                let resumed = loop {
                    if feeder.strong_count() == 0 {
                        return;
                    }
                    let again = store.range(REGISTRY_PREFIX, None, 0).and_then(|list| {
                        let watch = store.watch("/", list.revision)?;
                        Ok((list, watch))
                    });
                    match again {
                        Ok(resumed) => break resumed,
                        Err(e) => {
                            tracing::warn!(error = %e, "reading the store again for the cache");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }
                };
                let Some(cache) = feeder.upgrade() else {
                    return;
                };
                cache.resync(&resumed.0);
                events = resumed.1;
            }
        });
        Ok(cache)
    }

    /// Brings the cache to `list` (every object, read at one revision) and ends every running
    /// watch with `TooOld`, as kube-apiserver's watch cache does when it is re-initialised:
    /// watchers list again, and watches resuming from before get 410.
    fn resync(&self, list: &capstan_store::RangeResult) {
        let kinds = index(list);
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        inner.kinds = kinds;
        inner.history.clear();
        inner.history_bytes = 0;
        inner.history_from = list.revision;
        inner.revision = inner.revision.max(list.revision);
        let rev = inner.revision;
        drop(inner);
        self.resets.send_modify(|n| *n += 1);
        self.revision.send_replace(rev);
        tracing::info!(revision = list.revision, "the cache follows the store again");
    }

    fn apply(&self, e: capstan_store::Event) {
        let Some(i) = kind_index(&e.kv.key) else {
            let rev = e.revision();
            let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
            inner.revision = inner.revision.max(rev);
            drop(inner);
            self.revision.send_replace(rev);
            return;
        };
        let kind = &REGISTRY[i];
        let Some(obj) = decode(kind, &e.kv) else {
            return;
        };
        let entry = Arc::new(Entry::new(obj, e.revision()));
        let key = (entry.namespace.clone(), entry.name.clone());
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        let change = match e.kind {
            EventKind::Put => {
                if inner.kinds[i].insert(entry.clone()) {
                    Change::Modified
                } else {
                    Change::Added
                }
            }
            EventKind::Delete => {
                inner.kinds[i].remove(&key);
                Change::Deleted
            }
        };
        let event = Arc::new(CacheEvent { kind, change, entry });
        inner.history_bytes += event.entry.json.len();
        inner.history.push_back(Past::of(&event));
        // Bounded in events and in bytes: a large object changed often must not pin its old
        // versions (watchers resuming from before the window get 410 and re-list).
        while inner.history.len() > HISTORY || (inner.history_bytes > HISTORY_BYTES && inner.history.len() > 1) {
            let Some(old) = inner.history.pop_front() else { break };
            inner.history_bytes -= old.json.len();
            inner.history_from = old.revision;
        }
        inner.revision = inner.revision.max(e.kv.mod_revision);
        let rev = inner.revision;
        let _ = self.live.send(event);
        drop(inner);
        self.revision.send_replace(rev);
    }

    pub fn revision(&self) -> Revision {
        *self.revision.borrow()
    }

    /// Waits (bounded) until the cache has caught up with `revision`.
    pub async fn wait_for(&self, revision: Revision) {
        if *self.revision.borrow() >= revision {
            return;
        }
        let mut rx = self.revision.subscribe();
        let _ = tokio::time::timeout(Duration::from_secs(3), rx.wait_for(|r| *r >= revision)).await;
    }

    pub fn get(&self, kind: &KindInfo, namespace: &str, name: &str) -> Option<Arc<Entry>> {
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        let ns = if kind.namespaced { namespace } else { "" };
        inner.kinds[index_of(kind)].objects.get(&(ns.to_owned(), name.to_owned())).cloned()
    }

    /// The objects of a kind in one namespace (or all), in namespace/name order, and the
    /// revision they are current at.
    pub fn list(&self, kind: &KindInfo, namespace: Option<&str>) -> (Vec<Arc<Entry>>, Revision) {
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        let map = &inner.kinds[index_of(kind)].objects;
        let items = match namespace.filter(|_| kind.namespaced) {
            Some(ns) => map
                .range((ns.to_owned(), String::new())..)
                .take_while(|((n, _), _)| n == ns)
                .map(|(_, e)| e.clone())
                .collect(),
            None => map.values().cloned().collect(),
        };
        (items, inner.revision)
    }

    /// The objects of a kind whose controller has uid `owner`.
    pub fn controlled_by(&self, kind: &KindInfo, owner: &str) -> Vec<Arc<Entry>> {
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        let index = &inner.kinds[index_of(kind)];
        index
            .by_controller
            .get(owner)
            .map(|keys| keys.iter().filter_map(|k| index.objects.get(k).cloned()).collect())
            .unwrap_or_default()
    }

    /// The objects of a kind in a namespace that have no controller.
    pub fn orphans(&self, kind: &KindInfo, namespace: &str) -> Vec<Arc<Entry>> {
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        let index = &inner.kinds[index_of(kind)];
        index
            .orphans
            .range((namespace.to_owned(), String::new())..)
            .take_while(|(ns, _)| ns == namespace)
            .filter_map(|k| index.objects.get(k).cloned())
            .collect()
    }

    /// Watches a kind (in one namespace or all) for changes after `after`.
    pub fn watch(&self, kind: &'static KindInfo, namespace: Option<&str>, after: Revision) -> Result<CacheWatch, CacheError> {
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        if after < inner.history_from {
            return Err(CacheError::TooOld {
                requested: after,
                oldest: inner.history_from,
            });
        }
        let live = self.live.subscribe();
        let mut resets = self.resets.subscribe();
        resets.mark_unchanged();
        let namespace = namespace.filter(|_| kind.namespaced).map(str::to_owned);
        let filter = Filter { kind, namespace };
        let backlog: VecDeque<Arc<CacheEvent>> = inner
            .history
            .iter()
            .filter(|p| p.revision > after && filter.accepts_kind(p.kind, &p.namespace))
            .filter_map(Past::revive)
            .collect();
        Ok(CacheWatch {
            backlog,
            live,
            resets,
            filter,
            last: after,
        })
    }
}

struct Filter {
    kind: &'static KindInfo,
    namespace: Option<String>,
}

impl Filter {
    fn accepts(&self, e: &CacheEvent) -> bool {
        self.accepts_kind(e.kind, &e.entry.namespace)
    }

    fn accepts_kind(&self, kind: &KindInfo, namespace: &str) -> bool {
        std::ptr::eq(kind, self.kind) && self.namespace.as_ref().is_none_or(|ns| ns == namespace)
    }
}

/// A running watch on the cache.
pub struct CacheWatch {
    backlog: VecDeque<Arc<CacheEvent>>,
    live: broadcast::Receiver<Arc<CacheEvent>>,
    resets: watch::Receiver<u64>,
    filter: Filter,
    last: Revision,
}

impl CacheWatch {
    /// The next event, or `TooOld` when this watcher fell too far behind.
    pub async fn next(&mut self) -> Result<Arc<CacheEvent>, CacheError> {
        if let Some(e) = self.backlog.pop_front() {
            self.last = e.revision();
            return Ok(e);
        }
        loop {
            let next = tokio::select! {
                biased;
                changed = self.resets.changed() => {
                    if changed.is_err() {
                        // The cache is gone (shutting down), as a closed broadcast below.
                        std::future::pending::<()>().await;
                    }
                    return Err(CacheError::TooOld {
                        requested: self.last,
                        oldest: self.last + 1,
                    });
                }
                next = self.live.recv() => next,
            };
            match next {
                Ok(e) if e.revision() > self.last && self.filter.accepts(&e) => {
                    self.last = e.revision();
                    return Ok(e);
                }
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    return Err(CacheError::TooOld {
                        requested: self.last,
                        oldest: self.last + 1,
                    });
                }
                Err(broadcast::error::RecvError::Closed) => std::future::pending::<()>().await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use capstan_store::{BoxFuture, KeyValue, RangeResult, RedbStore, Txn, TxnResult, WatchStream};
    use serde_json::json;

    use super::*;
    use crate::context::kind;
    use crate::objects::key_of;

    /// A store whose first watch is the test's to end (as a store whose history was compacted
    /// under a watcher cut off for long); the rest are the store's own.
    struct Cut {
        store: RedbStore,
        first: Mutex<Option<WatchStream>>,
    }

    impl Store for Cut {
        fn revision(&self) -> Revision {
            self.store.revision()
        }
        fn compacted_revision(&self) -> Revision {
            self.store.compacted_revision()
        }
        fn get(&self, key: &str) -> capstan_store::Result<Option<KeyValue>> {
            self.store.get(key)
        }
        fn range(&self, prefix: &str, start_after: Option<&str>, limit: usize) -> capstan_store::Result<RangeResult> {
            self.store.range(prefix, start_after, limit)
        }
        fn txn(&self, txn: Txn) -> BoxFuture<'_, capstan_store::Result<TxnResult>> {
            self.store.txn(txn)
        }
        fn watch(&self, prefix: &str, after: Revision) -> capstan_store::Result<WatchStream> {
            match self.first.lock().unwrap().take() {
                Some(w) => Ok(w),
                None => self.store.watch(prefix, after),
            }
        }
        fn compact(&self, revision: Revision) -> BoxFuture<'_, capstan_store::Result<()>> {
            self.store.compact(revision)
        }
    }

    fn config_map(name: &str, value: &str) -> (String, Vec<u8>) {
        let v = json!({"metadata": {"name": name, "namespace": "default", "uid": name}, "data": {"v": value}});
        (key_of(kind("configmaps"), "default", name), serde_json::to_vec(&v).unwrap())
    }

    #[tokio::test]
    async fn a_cache_cut_off_past_compaction_reads_the_store_again_and_its_watchers_list_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(&dir.path().join("s.redb")).unwrap();
        let (a, b) = (config_map("a", "1"), config_map("b", "1"));
        store.txn(Txn::default().put(a.0.clone(), a.1).put(b.0.clone(), b.1)).await.unwrap();
        let (cut, first) = tokio::sync::mpsc::channel(1);
        let cache = Cache::start(Arc::new(Cut {
            store: store.clone(),
            first: Mutex::new(Some(first)),
        }))
        .await
        .unwrap();
        let before = cache.revision();
        let mut watcher = cache.watch(kind("configmaps"), None, before).unwrap();
        // While the cache hears nothing: a changed, b deleted, c created.
        let (a2, c) = (config_map("a", "2"), config_map("c", "1"));
        store.txn(Txn::default().put(a2.0, a2.1).delete(b.0).put(c.0, c.1)).await.unwrap();
        assert_eq!(
            cache.get(kind("configmaps"), "default", "b").map(|e| e.name.clone()),
            Some("b".into())
        );
        // The store says the cache's history is gone.
        cut.send(Err(StoreError::Compacted {
            requested: before,
            compacted: store.revision(),
        }))
        .await
        .unwrap();
        // Its watchers are told to list again, and what they list is the store's state.
        let ended = tokio::time::timeout(Duration::from_secs(5), watcher.next()).await.unwrap();
        assert!(matches!(ended, Err(CacheError::TooOld { .. })));
        let value = |name: &str| {
            cache
                .get(kind("configmaps"), "default", name)
                .map(|e| e.object["data"]["v"].clone())
        };
        assert_eq!(value("a"), Some(json!("2")));
        assert_eq!(value("b"), None);
        assert_eq!(value("c"), Some(json!("1")));
        assert!(
            cache.watch(kind("configmaps"), None, before).is_err(),
            "a watch from before the resync resumes"
        );
        // And it follows the store again.
        let mut watcher = cache.watch(kind("configmaps"), None, cache.revision()).unwrap();
        let d = config_map("d", "1");
        store.txn(Txn::default().put(d.0, d.1)).await.unwrap();
        let e = tokio::time::timeout(Duration::from_secs(5), watcher.next()).await.unwrap().unwrap();
        assert_eq!((e.change, e.entry.name.as_str()), (Change::Added, "d"));
    }
}
