//! The desired state of a whole tree of manifests, kept per file so that a new commit re-reads
//! only the files it changed, and the plan that takes the cluster from what was applied to it:
//! objects to create, update and prune, and the quarantined ones that keep their last good
//! version. A file that cannot be read never causes a prune.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use capstan_api::ObjectKey;
use capstan_api::meta::{ANNOTATION_COMMIT, ANNOTATION_KUSTOMIZATION, ANNOTATION_SOURCE};
use serde::Serialize;
use serde_json::Value;

use crate::manifest::{FileLoad, Manifest, load_file};
use crate::problem::{Problem, ProblemCode};

/// A change to one file between two trees.
#[derive(Clone, Debug)]
pub enum FileChange {
    /// Added or modified, with its new content.
    Write(String, Vec<u8>),
    /// Present but not readable as a manifest (a symbolic link that leaves the tree or
    /// dangles, a device): a located error that keeps the file's objects, never a prune.
    Unreadable(String, String),
    Remove(String),
    /// Loaded already (the build of a kustomize root, keyed by its kustomization file).
    Loaded(FileLoad),
}

impl FileChange {
    /// The path the change is about.
    pub fn path(&self) -> &str {
        match self {
            FileChange::Write(p, _) | FileChange::Unreadable(p, _) | FileChange::Remove(p) => p,
            FileChange::Loaded(l) => &l.path,
        }
    }
}

/// Where one object is defined: the file, the position, and its index among the file's good
/// manifests (None when it is quarantined there).
#[derive(Clone, Debug)]
struct Place {
    load: Arc<FileLoad>,
    line: u32,
    column: u32,
    manifest: Option<usize>,
}

/// What a change of tree touched: the object keys whose desired entry may differ, and the files
/// that changed. A plan only needs to look at these (see [`plan_delta`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Delta {
    pub keys: BTreeSet<ObjectKey>,
    pub files: BTreeSet<String>,
    /// Changed files that could not be read before the change: objects held because of them
    /// are not among `keys` and must be looked up by their source.
    pub broken_before: BTreeSet<String>,
}

/// The loaded manifests of one tree (a commit, or a directory), file by file, and the desired
/// state they make, maintained incrementally: applying a change costs in proportion to the
/// files it names, and cloning a snapshot is cheap (persistent maps share structure).
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    files: imbl::OrdMap<String, Arc<FileLoad>>,
    places: imbl::HashMap<ObjectKey, Arc<Vec<Place>>>,
    objects: imbl::OrdMap<ObjectKey, Arc<Manifest>>,
    /// Keys defined in more than one place, or defined once but broken.
    troubled: imbl::OrdSet<ObjectKey>,
    broken_files: imbl::OrdSet<String>,
    files_with_problems: imbl::OrdSet<String>,
    files_with_warnings: imbl::OrdSet<String>,
    /// What the last [`Self::apply`] changed; None for a snapshot loaded in full.
    delta: Option<Delta>,
}

impl Snapshot {
    /// Loads every file (writes and unreadable files), spread over the machine's cores.
    pub fn load(files: Vec<FileChange>) -> Snapshot {
        let mut snapshot = Snapshot::default();
        snapshot.apply(files);
        snapshot.delta = None;
        snapshot
    }

    /// Applies changes in place, re-reading only the files they name, and records the delta.
    pub fn apply(&mut self, changes: Vec<FileChange>) {
        let mut delta = Delta::default();
        let mut writes = Vec::new();
        let mut loaded = Vec::new();
        for change in changes {
            let path = match change {
                FileChange::Write(p, b) => {
                    writes.push((p.clone(), b));
                    p
                }
                FileChange::Unreadable(p, why) => {
                    loaded.push(FileLoad::unreadable(&p, why));
                    p
                }
                FileChange::Remove(p) => p,
                FileChange::Loaded(load) => {
                    let p = load.path.clone();
                    loaded.push(load);
                    p
                }
            };
            if self.broken_files.contains(&path) {
                delta.broken_before.insert(path.clone());
            }
            self.forget(&path, &mut delta.keys);
            delta.files.insert(path);
        }
        for load in load_parallel(writes).into_iter().chain(loaded) {
            self.remember(Arc::new(load), &mut delta.keys);
        }
        // Whether a Service has a selector decides whether its Endpoints may come from Git:
        // a changed Service looks at the endpoints declared for it again.
        let services: Vec<ObjectKey> = delta
            .keys
            .iter()
            .filter(|k| k.group.is_empty() && k.kind == "Service")
            .cloned()
            .collect();
        for svc in services {
            let theirs: Vec<ObjectKey> = endpoints_keys(&self.objects, Some(&svc.namespace))
                .filter(|k| endpoints_service(k, &self.objects).as_deref() == Some(svc.name.as_str()))
                .cloned()
                .collect();
            delta.keys.extend(theirs);
        }
        for key in &delta.keys {
            self.settle(key);
        }
        self.delta = Some(delta);
    }

    /// The new snapshot after `changes`; this one is left as it was.
    pub fn with_changes(&self, changes: Vec<FileChange>) -> Snapshot {
        let mut next = self.clone();
        next.apply(changes);
        next
    }

    /// What the change that made this snapshot touched; None if it was loaded in full.
    pub fn delta(&self) -> Option<&Delta> {
        self.delta.as_ref()
    }

    /// Drops a file's contributions, noting the keys it defined.
    fn forget(&mut self, path: &str, dirty: &mut BTreeSet<ObjectKey>) {
        let Some(old) = self.files.remove(path) else {
            return;
        };
        self.broken_files.remove(path);
        self.files_with_problems.remove(path);
        self.files_with_warnings.remove(path);
        let keys = old.manifests.iter().map(|m| &m.key).chain(old.quarantined.iter().map(|(k, _)| k));
        for key in keys {
            if let Some(places) = self.places.get(key) {
                let rest: Vec<Place> = places.iter().filter(|p| p.load.path != path).cloned().collect();
                if rest.is_empty() {
                    self.places.remove(key);
                } else {
                    self.places.insert(key.clone(), Arc::new(rest));
                }
            }
            dirty.insert(key.clone());
        }
    }

    /// Adds a file's contributions, noting the keys it defines.
    fn remember(&mut self, load: Arc<FileLoad>, dirty: &mut BTreeSet<ObjectKey>) {
        let mut add = |snapshot: &mut Snapshot, key: &ObjectKey, line: u32, column: u32, manifest: Option<usize>| {
            let place = Place {
                load: load.clone(),
                line,
                column,
                manifest,
            };
            let places = match snapshot.places.get(key) {
                Some(p) => {
                    let mut p = (**p).clone();
                    p.push(place);
                    p
                }
                None => vec![place],
            };
            snapshot.places.insert(key.clone(), Arc::new(places));
            dirty.insert(key.clone());
        };
        for (i, m) in load.manifests.iter().enumerate() {
            add(self, &m.key, m.pos.line, m.pos.column, Some(i));
        }
        for (key, pos) in &load.quarantined {
            add(self, key, pos.line, pos.column, None);
        }
        if !load.intact {
            self.broken_files.insert(load.path.clone());
        }
        if !load.problems.is_empty() {
            self.files_with_problems.insert(load.path.clone());
        }
        if !load.warnings.is_empty() {
            self.files_with_warnings.insert(load.path.clone());
        }
        self.files.insert(load.path.clone(), load.clone());
    }

    /// Recomputes the desired entry of one key from its places.
    fn settle(&mut self, key: &ObjectKey) {
        let good = match self.places.get(key).map(|p| p.as_slice()) {
            Some([only]) => only.manifest.map(|i| only.load.manifests[i].clone()),
            _ => None,
        };
        let defined = self.places.contains_key(key);
        match good {
            Some(m) => {
                self.objects.insert(key.clone(), m);
                self.troubled.remove(key);
            }
            None => {
                self.objects.remove(key);
                if defined {
                    self.troubled.insert(key.clone());
                } else {
                    self.troubled.remove(key);
                }
            }
        }
    }

    pub fn files(&self) -> impl Iterator<Item = &FileLoad> {
        self.files.values().map(|f| f.as_ref())
    }

    pub fn file(&self, path: &str) -> Option<&FileLoad> {
        self.files.get(path).map(|f| f.as_ref())
    }

    /// The desired state: cheap, since it is maintained as files change.
    pub fn desired(&self) -> DesiredState {
        let mut state = DesiredState {
            objects: self.objects.clone(),
            broken_files: self.broken_files.iter().cloned().collect(),
            ..DesiredState::default()
        };
        for path in &self.files_with_problems {
            state.problems.extend(self.files[path].problems.iter().cloned());
        }
        for path in &self.files_with_warnings {
            state.warnings.extend(self.files[path].warnings.iter().cloned());
        }
        // Endpoints declared in Git for a Service with a selector are the controller's.
        let declared: Vec<ObjectKey> = endpoints_keys(&self.objects, None).cloned().collect();
        for key in &declared {
            let Some(m) = state.objects.get(key).cloned() else { continue };
            let Some(service) = endpoints_service(key, &self.objects) else {
                continue;
            };
            let svc_key = ObjectKey {
                group: String::new(),
                kind: "Service".into(),
                namespace: key.namespace.clone(),
                name: service.clone(),
            };
            let selects = self
                .objects
                .get(&svc_key)
                .is_some_and(|s| s.object["spec"]["selector"].as_object().is_some_and(|m| !m.is_empty()));
            if selects {
                state.objects.remove(key);
                let problem = Problem {
                    file: m.file.clone(),
                    line: m.pos.line,
                    column: m.pos.column,
                    code: ProblemCode::NotFromGit,
                    field: Some("kind".into()),
                    object: Some(key.clone()),
                    message: format!(
                        "{} objects are written by Capstan itself for a Service with a selector ({}/{service} selects pods); declare endpoints in Git only for a Service without one",
                        key.kind, key.namespace
                    ),
                };
                state.quarantined.entry(key.clone()).or_default().push(problem.clone());
                state.problems.push(problem);
            }
        }
        for key in &self.troubled {
            let places = &self.places[key];
            if places.len() > 1 {
                for (i, p) in places.iter().enumerate() {
                    let others: Vec<String> = places
                        .iter()
                        .enumerate()
                        .filter(|(j, _)| *j != i)
                        .map(|(_, o)| format!("{}:{}", o.load.path, o.line))
                        .collect();
                    state.problems.push(Problem {
                        file: p.load.path.clone(),
                        line: p.line,
                        column: p.column,
                        code: ProblemCode::Duplicate,
                        field: None,
                        object: Some(key.clone()),
                        message: format!("{key} is defined more than once; also at {}", others.join(", ")),
                    });
                }
            }
        }
        for p in &state.problems {
            if let Some(key) = &p.object
                && self.troubled.contains(key)
            {
                state.quarantined.entry(key.clone()).or_default().push(p.clone());
            }
        }
        state.problems.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
        state
    }
}

/// The Endpoints and EndpointSlices among `objects` (in `namespace`, or all), found by range.
fn endpoints_keys<'a>(
    objects: &'a imbl::OrdMap<ObjectKey, Arc<Manifest>>,
    namespace: Option<&'a str>,
) -> impl Iterator<Item = &'a ObjectKey> + 'a {
    crate::manifest::ENDPOINTS_KINDS.into_iter().flat_map(move |(group, kind)| {
        let from = ObjectKey {
            group: group.into(),
            kind: kind.into(),
            namespace: namespace.unwrap_or_default().into(),
            name: String::new(),
        };
        objects
            .range(from..)
            .map(|(k, _)| k)
            .take_while(move |k| k.group == group && k.kind == kind && namespace.is_none_or(|n| k.namespace == n))
    })
}

/// The Service an Endpoints (its own name) or an EndpointSlice (its service-name label) belongs to.
fn endpoints_service(key: &ObjectKey, objects: &imbl::OrdMap<ObjectKey, Arc<Manifest>>) -> Option<String> {
    if key.kind == "Endpoints" {
        return Some(key.name.clone());
    }
    objects.get(key)?.object["metadata"]["labels"]["kubernetes.io/service-name"]
        .as_str()
        .map(str::to_owned)
}

fn load_parallel(files: Vec<(String, Vec<u8>)>) -> Vec<FileLoad> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(files.len().max(1));
    if threads <= 1 || files.len() < 16 {
        return files.iter().map(|(p, b)| load_file(p, b)).collect();
    }
    let chunk = files.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> = files
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().map(|(p, b)| load_file(p, b)).collect::<Vec<_>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("loading a file does not panic"))
            .collect()
    })
}

/// The objects a tree declares, and what is wrong with it.
#[derive(Clone, Debug, Default)]
pub struct DesiredState {
    /// Objects that loaded cleanly, by identity.
    pub objects: imbl::OrdMap<ObjectKey, Arc<Manifest>>,
    /// Objects that were identified but have problems, with their problems.
    pub quarantined: BTreeMap<ObjectKey, Vec<Problem>>,
    /// Files with a document that could not be identified: their objects are never pruned.
    pub broken_files: BTreeSet<String>,
    /// Every problem, sorted by file and position.
    pub problems: Vec<Problem>,
    /// What is applied, but not quite as written (see [`FileLoad::warnings`]).
    pub warnings: Vec<Problem>,
}

/// An object as applied: its content from Git (with source annotations) and the commit in
/// which that content last changed. The commit is kept beside the content, not in it, so that
/// deciding whether an object changed is a pointer or value comparison of the content alone.
#[derive(Clone, Debug, PartialEq)]
pub struct Applied {
    pub object: Arc<Value>,
    pub commit: Arc<str>,
}

impl Applied {
    /// The object as it goes into the cluster: the content plus the commit annotation.
    pub fn to_object(&self) -> Value {
        let mut v = (*self.object).clone();
        if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
            let annotations = meta.entry("annotations").or_insert_with(|| Value::Object(Default::default()));
            if let Some(a) = annotations.as_object_mut() {
                a.insert(ANNOTATION_COMMIT.into(), Value::String(self.commit.to_string()));
            }
        }
        v
    }

    /// Reads back an object written by [`Self::to_object`] (after a restart, from the store).
    pub fn from_object(mut object: Value) -> Applied {
        let commit = object
            .pointer_mut("/metadata/annotations")
            .and_then(Value::as_object_mut)
            .and_then(|a| a.remove(ANNOTATION_COMMIT))
            .and_then(|c| c.as_str().map(Arc::from))
            .unwrap_or_else(|| Arc::from(""));
        Applied {
            object: Arc::new(object),
            commit,
        }
    }
}

/// The objects applied to the cluster, by identity; a persistent map, so that each plan's
/// result shares all untouched entries with the one before.
pub type AppliedSet = imbl::OrdMap<ObjectKey, Applied>;

/// What one commit does to the cluster.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Plan {
    pub create: Vec<ObjectKey>,
    pub update: Vec<ObjectKey>,
    pub prune: Vec<ObjectKey>,
    /// Desired objects that stay as they are.
    pub unchanged: usize,
    /// Objects with problems in this commit; `kept` says whether a last good version runs on.
    pub quarantined: Vec<Quarantined>,
    /// Objects that are gone from the tree but not pruned, because the file they came from
    /// cannot be read, because pruning is off, or because they hold data (claims and volumes
    /// without `capstan.dev/prune-data: "true"`).
    pub held: Vec<ObjectKey>,
    /// Every problem of the commit.
    pub problems: Vec<Problem>,
    /// What is applied, but not quite as written.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<Problem>,
    /// The complete set of applied objects after this commit.
    #[serde(skip)]
    pub next: AppliedSet,
}

#[derive(Clone, Debug, Serialize)]
pub struct Quarantined {
    pub object: ObjectKey,
    /// True when a previously applied version keeps running.
    pub kept: bool,
    pub problems: Vec<Problem>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.create.is_empty() && self.update.is_empty() && self.prune.is_empty()
    }
}

/// The file an applied object is held by when it cannot be read: the kustomization of the root
/// that built it, or the plain file it came from.
pub fn source_of(applied: &Applied) -> Option<&str> {
    let annotations = applied.object.pointer("/metadata/annotations")?;
    annotations
        .get(ANNOTATION_KUSTOMIZATION)
        .or_else(|| annotations.get(ANNOTATION_SOURCE))
        .and_then(Value::as_str)
}

/// Whether an object gone from Git is held because deleting it would delete data: a claim or
/// volume, unless its last applied version said `capstan.dev/prune-data: "true"`.
fn keeps_data(key: &ObjectKey, applied: &Applied) -> bool {
    key.group.is_empty()
        && capstan_api::storage::holds_data(&key.kind)
        && applied.object["metadata"]["annotations"][capstan_api::storage::PRUNE_DATA_ANNOTATION] != "true"
}

/// Computes the plan from the objects currently applied to `desired`, for commit `commit`,
/// looking at every object.
pub fn plan(applied: &AppliedSet, desired: &DesiredState, commit: &str, prune: bool) -> Plan {
    let keys: BTreeSet<&ObjectKey> = desired
        .objects
        .keys()
        .chain(desired.quarantined.keys())
        .chain(applied.keys())
        .collect();
    plan_keys(applied, desired, keys.into_iter(), commit, prune)
}

/// Like [`plan`], looking only at what `delta` touched: the keys it names, and the applied
/// objects held because of a changed file that could not be read. `applied` must be the plan
/// result of the snapshot `delta` was applied to.
pub fn plan_delta(applied: &AppliedSet, desired: &DesiredState, delta: &Delta, commit: &str, prune: bool) -> Plan {
    let mut keys: BTreeSet<&ObjectKey> = delta.keys.iter().collect();
    if !delta.broken_before.is_empty() {
        for (key, a) in applied.iter() {
            if source_of(a).is_some_and(|s| delta.broken_before.contains(s)) {
                keys.insert(key);
            }
        }
    }
    plan_keys(applied, desired, keys.into_iter(), commit, prune)
}

fn plan_keys<'a>(
    applied: &AppliedSet,
    desired: &DesiredState,
    keys: impl Iterator<Item = &'a ObjectKey>,
    commit: &str,
    prune: bool,
) -> Plan {
    let mut plan = Plan {
        problems: desired.problems.clone(),
        warnings: desired.warnings.clone(),
        next: applied.clone(),
        ..Plan::default()
    };
    let commit: Arc<str> = Arc::from(commit);
    for key in keys {
        let old = applied.get(key);
        if let Some(m) = desired.objects.get(key) {
            match old {
                None => {
                    plan.create.push(key.clone());
                    plan.next.insert(
                        key.clone(),
                        Applied {
                            object: m.object.clone(),
                            commit: commit.clone(),
                        },
                    );
                }
                Some(old) if Arc::ptr_eq(&old.object, &m.object) || old.object == m.object => {
                    if !Arc::ptr_eq(&old.object, &m.object) {
                        plan.next.insert(
                            key.clone(),
                            Applied {
                                object: m.object.clone(),
                                commit: old.commit.clone(),
                            },
                        );
                    }
                }
                Some(_) => {
                    plan.update.push(key.clone());
                    plan.next.insert(
                        key.clone(),
                        Applied {
                            object: m.object.clone(),
                            commit: commit.clone(),
                        },
                    );
                }
            }
        } else if desired.quarantined.contains_key(key) {
            // Keeps its last good version, if it has one: nothing to do.
        } else if let Some(old) = old {
            let from_broken_file = source_of(old).is_some_and(|s| desired.broken_files.contains(s));
            if from_broken_file || !prune || keeps_data(key, old) {
                plan.held.push(key.clone());
            } else {
                plan.prune.push(key.clone());
                plan.next.remove(key);
            }
        }
    }
    for (key, problems) in &desired.quarantined {
        plan.quarantined.push(Quarantined {
            object: key.clone(),
            kept: applied.contains_key(key),
            problems: problems.clone(),
        });
    }
    plan.unchanged = desired.objects.len() - plan.create.len() - plan.update.len();
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    const WEB: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: web}\ndata: {v: '1'}\n";
    const API: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: api}\ndata: {v: '1'}\n";

    fn files(list: &[(&str, &str)]) -> Vec<FileChange> {
        list.iter()
            .map(|(p, t)| FileChange::Write(p.to_string(), t.as_bytes().to_vec()))
            .collect()
    }

    fn names(keys: &[ObjectKey]) -> Vec<&str> {
        keys.iter().map(|k| k.name.as_str()).collect()
    }

    #[test]
    fn create_update_unchanged_prune() {
        let s1 = Snapshot::load(files(&[("web.yaml", WEB), ("api.yaml", API)]));
        let p1 = plan(&AppliedSet::new(), &s1.desired(), "c1", true);
        assert_eq!(names(&p1.create), ["api", "web"]);
        assert_eq!(&*p1.next.values().next().unwrap().commit, "c1");
        assert_eq!(
            p1.next.values().next().unwrap().to_object()["metadata"]["annotations"]["capstan.dev/commit"],
            "c1"
        );

        let s2 = s1.with_changes(vec![
            FileChange::Write("web.yaml".into(), WEB.replace("'1'", "'2'").into_bytes()),
            FileChange::Remove("api.yaml".into()),
        ]);
        let p2 = plan(&p1.next, &s2.desired(), "c2", true);
        assert_eq!(names(&p2.update), ["web"]);
        assert_eq!(names(&p2.prune), ["api"]);

        let p3 = plan(&p2.next, &s2.desired(), "c3", true);
        assert!(p3.is_empty());
        assert_eq!(p3.unchanged, 1);
        // An unchanged object keeps the commit in which it last changed.
        assert_eq!(&*p3.next.values().next().unwrap().commit, "c2");
        let obj = p3.next.values().next().unwrap().to_object();
        assert_eq!(Applied::from_object(obj), p3.next.values().next().unwrap().clone());
    }

    #[test]
    fn claims_removed_from_git_are_held_unless_their_data_may_go() {
        const CLAIM: &str = "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: data}\nspec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Gi}}}\n";
        const DISPOSABLE: &str = "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: scratch, annotations: {capstan.dev/prune-data: 'true'}}\nspec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Gi}}}\n";
        let s1 = Snapshot::load(files(&[("a.yaml", CLAIM), ("b.yaml", DISPOSABLE)]));
        let p1 = plan(&AppliedSet::new(), &s1.desired(), "c1", true);
        assert_eq!(p1.create.len(), 2, "{:?}", p1.problems);
        let s2 = s1.with_changes(vec![FileChange::Remove("a.yaml".into()), FileChange::Remove("b.yaml".into())]);
        let p2 = plan(&p1.next, &s2.desired(), "c2", true);
        assert_eq!(names(&p2.held), ["data"]);
        assert_eq!(names(&p2.prune), ["scratch"]);
    }

    #[test]
    fn a_broken_file_never_prunes() {
        let s1 = Snapshot::load(files(&[("web.yaml", WEB), ("api.yaml", API)]));
        let p1 = plan(&AppliedSet::new(), &s1.desired(), "c1", true);
        let s2 = s1.with_changes(vec![FileChange::Write(
            "web.yaml".into(),
            b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: web\n".to_vec(),
        )]);
        let p2 = plan(&p1.next, &s2.desired(), "c2", true);
        assert!(p2.prune.is_empty());
        assert_eq!(names(&p2.held), ["web"]);
        assert_eq!(p2.problems.len(), 1);
        assert_eq!(p2.next.len(), 2);
    }

    #[test]
    fn a_quarantined_object_keeps_its_last_good_version() {
        let s1 = Snapshot::load(files(&[("web.yaml", WEB)]));
        let p1 = plan(&AppliedSet::new(), &s1.desired(), "c1", true);
        let s2 = s1.with_changes(vec![FileChange::Write(
            "web.yaml".into(),
            WEB.replace("{v: '1'}", "{v: [1]}").into_bytes(),
        )]);
        let p2 = plan(&p1.next, &s2.desired(), "c2", true);
        assert!(p2.is_empty());
        assert_eq!(p2.quarantined.len(), 1);
        assert!(p2.quarantined[0].kept);
        assert_eq!(p2.next, p1.next);
    }

    #[test]
    fn duplicates_are_quarantined_in_every_file() {
        let s = Snapshot::load(files(&[("a.yaml", WEB), ("b.yaml", WEB), ("api.yaml", API)]));
        let d = s.desired();
        assert_eq!(d.objects.len(), 1);
        let msgs: Vec<String> = d.problems.iter().map(|p| p.to_string()).collect();
        assert_eq!(
            msgs,
            [
                "a.yaml:1:1: configmap/web -n default is defined more than once; also at b.yaml:1 [configmap/web -n default]",
                "b.yaml:1:1: configmap/web -n default is defined more than once; also at a.yaml:1 [configmap/web -n default]",
            ]
        );
        assert!(d.quarantined.contains_key(&d.problems[0].object.clone().unwrap()));
    }

    /// A plan from a delta is the plan from the whole tree, whatever the sequence of edits.
    #[test]
    fn delta_plans_equal_full_plans() {
        use proptest::prelude::*;
        let edit = (0usize..6, 0usize..5);
        proptest!(ProptestConfig::with_cases(64), |(edits in proptest::collection::vec(edit, 1..12))| {
            let variants = |file: usize, v: usize| -> Option<String> {
                let name = format!("o{file}");
                match v {
                    0 => None,
                    1 => Some(format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}}}\ndata: {{v: '1'}}\n")),
                    2 => Some(format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}}}\ndata: {{v: '2'}}\n")),
                    3 => Some(format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}}}\ndata: {{v: [x]}}\n")),
                    // Defines another file's object: a duplicate, or broken YAML.
                    _ => Some(if file.is_multiple_of(2) { "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: o1}\n".to_string() } else { "a: [".to_string() }),
                }
            };
            let mut snapshot = Snapshot::default();
            let mut applied = AppliedSet::new();
            for (i, (file, v)) in edits.into_iter().enumerate() {
                let path = format!("f{file}.yaml");
                let change = match variants(file, v) {
                    Some(text) => FileChange::Write(path, text.into_bytes()),
                    None => FileChange::Remove(path),
                };
                snapshot = snapshot.with_changes(vec![change]);
                let desired = snapshot.desired();
                let commit = format!("c{i}");
                let inc = plan_delta(&applied, &desired, snapshot.delta().unwrap(), &commit, true);
                let full = plan(&applied, &desired, &commit, true);
                prop_assert_eq!(&inc.next, &full.next);
                prop_assert_eq!((&inc.create, &inc.update, &inc.prune), (&full.create, &full.update, &full.prune));
                applied = inc.next;
            }
        });
    }

    #[test]
    fn pruning_can_be_turned_off() {
        let s1 = Snapshot::load(files(&[("web.yaml", WEB)]));
        let p1 = plan(&AppliedSet::new(), &s1.desired(), "c1", true);
        let p2 = plan(&p1.next, &Snapshot::default().desired(), "c2", false);
        assert!(p2.prune.is_empty());
        assert_eq!(names(&p2.held), ["web"]);
    }

    #[test]
    fn endpoints_from_git_belong_to_services_without_a_selector() {
        let external = "apiVersion: v1\nkind: Service\nmetadata: {name: db}\nspec:\n  ports: [{port: 5432}]\n";
        let selecting = "apiVersion: v1\nkind: Service\nmetadata: {name: db}\nspec:\n  selector: {app: db}\n  ports: [{port: 5432}]\n";
        let endpoints = "apiVersion: v1\nkind: Endpoints\nmetadata: {name: db}\nsubsets:\n- addresses: [{ip: 192.0.2.10}]\n  ports: [{port: 5432}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: db-1\n  labels: {kubernetes.io/service-name: db}\naddressType: IPv4\nendpoints: [{addresses: [192.0.2.10]}]\nports: [{port: 5432}]\n";
        let s1 = Snapshot::load(files(&[("svc.yaml", external), ("ep.yaml", endpoints)]));
        let d1 = s1.desired();
        assert!(d1.problems.is_empty(), "{:?}", d1.problems);
        assert_eq!(d1.objects.len(), 3, "the Service, its Endpoints and its slice");
        // The Service gains a selector: its endpoints are the controller's now.
        let s2 = s1.with_changes(files(&[("svc.yaml", selecting)]));
        let d2 = s2.desired();
        let lines: Vec<String> = d2.problems.iter().map(|p| p.to_string()).collect();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(
            lines[0].starts_with(
                "ep.yaml:1:1: kind: Endpoints objects are written by Capstan itself for a Service with a selector (default/db selects pods)"
            ),
            "{lines:?}"
        );
        assert!(lines[1].starts_with("ep.yaml:8:1: kind: EndpointSlice objects"), "{lines:?}");
        assert_eq!(d2.objects.len(), 1);
        let delta = s2.delta().unwrap();
        assert!(
            delta.keys.iter().any(|k| k.kind == "Endpoints"),
            "the Service's change looks at its endpoints"
        );
        let p1 = plan(&AppliedSet::new(), &d1, "c1", true);
        let p2 = plan_delta(&p1.next, &d2, delta, "c2", true);
        assert!(p2.prune.is_empty() && p2.quarantined.len() == 2 && p2.quarantined.iter().all(|q| q.kept));
    }
}
