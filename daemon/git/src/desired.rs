//! The desired state of a whole tree of manifests, kept per file so that a new commit re-reads
//! only the files it changed, and the plan that takes the cluster from what was applied to it:
//! objects to create, update and prune, and the quarantined ones that keep their last good
//! version. A file that cannot be read never causes a prune.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use capstan_api::meta::{ANNOTATION_COMMIT, ANNOTATION_SOURCE};
use capstan_api::ObjectKey;
use serde::Serialize;
use serde_json::Value;

use crate::manifest::{FileLoad, Manifest, load_file};
use crate::problem::{Problem, ProblemCode};

/// A change to one file between two trees.
#[derive(Clone, Debug)]
pub enum FileChange {
    /// Added or modified, with its new content.
    Write(String, Vec<u8>),
    Remove(String),
}

/// The loaded manifests of one tree (a commit, or a directory), file by file.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    files: BTreeMap<String, Arc<FileLoad>>,
}

impl Snapshot {
    /// Loads every file, spread over the machine's cores.
    pub fn load(files: Vec<(String, Vec<u8>)>) -> Snapshot {
        let mut snapshot = Snapshot::default();
        snapshot.apply(files.into_iter().map(|(p, b)| FileChange::Write(p, b)).collect());
        snapshot
    }

    /// Applies changes in place, re-reading only the files they name.
    pub fn apply(&mut self, changes: Vec<FileChange>) {
        let mut writes = Vec::new();
        for change in changes {
            match change {
                FileChange::Write(p, b) => writes.push((p, b)),
                FileChange::Remove(p) => {
                    self.files.remove(&p);
                }
            }
        }
        for load in load_parallel(writes) {
            self.files.insert(load.path.clone(), Arc::new(load));
        }
    }

    /// The new snapshot after `changes`; this one is left as it was.
    pub fn with_changes(&self, changes: Vec<FileChange>) -> Snapshot {
        let mut next = self.clone();
        next.apply(changes);
        next
    }

    pub fn files(&self) -> impl Iterator<Item = &FileLoad> {
        self.files.values().map(|f| f.as_ref())
    }

    pub fn file(&self, path: &str) -> Option<&FileLoad> {
        self.files.get(path).map(|f| f.as_ref())
    }

    /// Assembles the objects of all files, finding objects defined more than once.
    pub fn desired(&self) -> DesiredState {
        let mut state = DesiredState::default();
        let mut places: BTreeMap<&ObjectKey, Vec<(&str, u32, u32)>> = BTreeMap::new();
        for file in self.files() {
            for m in &file.manifests {
                places.entry(&m.key).or_default().push((&file.path, m.pos.line, m.pos.column));
            }
            for (key, pos) in &file.quarantined {
                places.entry(key).or_default().push((&file.path, pos.line, pos.column));
            }
            state.problems.extend(file.problems.iter().cloned());
            if !file.intact {
                state.broken_files.insert(file.path.clone());
            }
        }
        let duplicates: BTreeSet<&ObjectKey> = places.iter().filter(|(_, p)| p.len() > 1).map(|(k, _)| *k).collect();
        for key in &duplicates {
            let at = &places[key];
            for (i, (file, line, column)) in at.iter().enumerate() {
                let others: Vec<String> = at.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, (f, l, _))| format!("{f}:{l}")).collect();
                state.problems.push(Problem {
                    file: (*file).to_owned(),
                    line: *line,
                    column: *column,
                    code: ProblemCode::Duplicate,
                    field: None,
                    object: Some((*key).clone()),
                    message: format!("{key} is defined more than once; also at {}", others.join(", ")),
                });
            }
        }
        for file in self.files() {
            for m in &file.manifests {
                if !duplicates.contains(&m.key) {
                    state.objects.insert(m.key.clone(), m.clone());
                }
            }
        }
        for p in &state.problems {
            if let Some(key) = &p.object {
                if !state.objects.contains_key(key) {
                    state.quarantined.entry(key.clone()).or_default().push(p.clone());
                }
            }
        }
        state.problems.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
        state
    }
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
        handles.into_iter().flat_map(|h| h.join().expect("loading a file does not panic")).collect()
    })
}

/// The objects a tree declares, and what is wrong with it.
#[derive(Clone, Debug, Default)]
pub struct DesiredState {
    /// Objects that loaded cleanly, by identity.
    pub objects: BTreeMap<ObjectKey, Manifest>,
    /// Objects that were identified but have problems, with their problems.
    pub quarantined: BTreeMap<ObjectKey, Vec<Problem>>,
    /// Files with a document that could not be identified: their objects are never pruned.
    pub broken_files: BTreeSet<String>,
    /// Every problem, sorted by file and position.
    pub problems: Vec<Problem>,
}

/// Identity-free content of an object, for deciding whether it changed: the commit annotation
/// records *when* it last changed, so it is not itself a change.
pub fn content(object: &Value) -> Value {
    let mut v = object.clone();
    if let Some(a) = v.pointer_mut("/metadata/annotations").and_then(Value::as_object_mut) {
        a.remove(ANNOTATION_COMMIT);
    }
    v
}

fn with_commit(object: &Value, commit: &str) -> Value {
    let mut v = object.clone();
    if let Some(a) = v.pointer_mut("/metadata/annotations").and_then(Value::as_object_mut) {
        a.insert(ANNOTATION_COMMIT.into(), Value::String(commit.to_owned()));
    }
    v
}

/// What one commit does to the cluster.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Plan {
    pub create: Vec<ObjectKey>,
    pub update: Vec<ObjectKey>,
    pub prune: Vec<ObjectKey>,
    /// Objects that stay as they are because they did not change.
    pub unchanged: usize,
    /// Objects with problems in this commit; `kept` says whether a last good version runs on.
    pub quarantined: Vec<Quarantined>,
    /// Objects that are gone from the tree but not pruned, because the file they came from
    /// cannot be read, or because pruning is off.
    pub held: Vec<ObjectKey>,
    /// Every problem of the commit.
    pub problems: Vec<Problem>,
    /// The complete set of objects after this commit, with commit annotations.
    #[serde(skip)]
    pub next: BTreeMap<ObjectKey, Value>,
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

/// Computes the plan from the objects currently applied (with their annotations, as the
/// previous plan's `next` holds them) to `desired`, for commit `commit`.
pub fn plan(applied: &BTreeMap<ObjectKey, Value>, desired: &DesiredState, commit: &str, prune: bool) -> Plan {
    let mut plan = Plan { problems: desired.problems.clone(), ..Plan::default() };
    for (key, m) in &desired.objects {
        match applied.get(key) {
            None => {
                plan.create.push(key.clone());
                plan.next.insert(key.clone(), with_commit(&m.object, commit));
            }
            Some(old) if content(old) == m.object => {
                plan.unchanged += 1;
                plan.next.insert(key.clone(), old.clone());
            }
            Some(_) => {
                plan.update.push(key.clone());
                plan.next.insert(key.clone(), with_commit(&m.object, commit));
            }
        }
    }
    for (key, problems) in &desired.quarantined {
        let kept = applied.get(key);
        if let Some(old) = kept {
            plan.next.insert(key.clone(), old.clone());
        }
        plan.quarantined.push(Quarantined { object: key.clone(), kept: kept.is_some(), problems: problems.clone() });
    }
    for (key, old) in applied {
        if plan.next.contains_key(key) {
            continue;
        }
        let source = old.pointer("/metadata/annotations").and_then(|a| a.get(ANNOTATION_SOURCE)).and_then(Value::as_str);
        let from_broken_file = source.is_some_and(|s| desired.broken_files.contains(s));
        if from_broken_file || !prune {
            plan.held.push(key.clone());
            plan.next.insert(key.clone(), old.clone());
        } else {
            plan.prune.push(key.clone());
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    const WEB: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: web}\ndata: {v: '1'}\n";
    const API: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: api}\ndata: {v: '1'}\n";

    fn files(list: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
        list.iter().map(|(p, t)| (p.to_string(), t.as_bytes().to_vec())).collect()
    }

    fn names(keys: &[ObjectKey]) -> Vec<&str> {
        keys.iter().map(|k| k.name.as_str()).collect()
    }

    #[test]
    fn create_update_unchanged_prune() {
        let s1 = Snapshot::load(files(&[("web.yaml", WEB), ("api.yaml", API)]));
        let p1 = plan(&BTreeMap::new(), &s1.desired(), "c1", true);
        assert_eq!(names(&p1.create), ["api", "web"]);
        assert_eq!(p1.next.values().next().unwrap()["metadata"]["annotations"]["capstan.dev/commit"], "c1");

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
        assert_eq!(p3.next.values().next().unwrap()["metadata"]["annotations"]["capstan.dev/commit"], "c2");
    }

    #[test]
    fn a_broken_file_never_prunes() {
        let s1 = Snapshot::load(files(&[("web.yaml", WEB), ("api.yaml", API)]));
        let p1 = plan(&BTreeMap::new(), &s1.desired(), "c1", true);
        let s2 = s1.with_changes(vec![FileChange::Write("web.yaml".into(), b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: web\n".to_vec())]);
        let p2 = plan(&p1.next, &s2.desired(), "c2", true);
        assert!(p2.prune.is_empty());
        assert_eq!(names(&p2.held), ["web"]);
        assert_eq!(p2.problems.len(), 1);
        assert_eq!(p2.next.len(), 2);
    }

    #[test]
    fn a_quarantined_object_keeps_its_last_good_version() {
        let s1 = Snapshot::load(files(&[("web.yaml", WEB)]));
        let p1 = plan(&BTreeMap::new(), &s1.desired(), "c1", true);
        let s2 = s1.with_changes(vec![FileChange::Write("web.yaml".into(), WEB.replace("{v: '1'}", "{v: [1]}").into_bytes())]);
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
        assert_eq!(msgs, [
            "a.yaml:1:1: configmap/web -n default is defined more than once; also at b.yaml:1 [configmap/web -n default]",
            "b.yaml:1:1: configmap/web -n default is defined more than once; also at a.yaml:1 [configmap/web -n default]",
        ]);
        assert!(d.quarantined.contains_key(&d.problems[0].object.clone().unwrap()));
    }

    #[test]
    fn pruning_can_be_turned_off() {
        let s1 = Snapshot::load(files(&[("web.yaml", WEB)]));
        let p1 = plan(&BTreeMap::new(), &s1.desired(), "c1", true);
        let p2 = plan(&p1.next, &Snapshot::default().desired(), "c2", false);
        assert!(p2.prune.is_empty());
        assert_eq!(names(&p2.held), ["web"]);
    }
}
