//! The kustomizations of a tree together: which are bases (named by another, so never applied by
//! themselves) and which are applied, which plain files lie inside a root (read only through its
//! kustomization), what each applied root's build reads, and so which roots a change touches.
//! Pure.

use std::collections::{BTreeMap, BTreeSet};

use crate::refs::Kustomization;

/// The kustomizations of one tree, by directory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Graph {
    roots: BTreeMap<String, Kustomization>,
    /// Directories some other root names.
    bases: BTreeSet<String>,
}

/// What a build reads: every file under `dirs`, and `files`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Inputs {
    pub dirs: BTreeSet<String>,
    pub files: BTreeSet<String>,
}

impl Inputs {
    /// Whether the build reads `path`.
    pub fn contains(&self, path: &str) -> bool {
        self.files.contains(path) || self.dirs.iter().any(|d| under(path, d))
    }
}

/// Whether `path` is `dir` itself or lies below it (`""` is the top, above everything).
pub fn under(path: &str, dir: &str) -> bool {
    dir.is_empty() || path == dir || (path.starts_with(dir) && path.as_bytes().get(dir.len()) == Some(&b'/'))
}

impl Graph {
    pub fn new(kustomizations: impl IntoIterator<Item = Kustomization>) -> Graph {
        let roots: BTreeMap<String, Kustomization> = kustomizations.into_iter().map(|k| (k.dir.clone(), k)).collect();
        let bases = roots
            .values()
            .flat_map(|k| k.dirs.iter().filter(move |d| **d != k.dir))
            .filter(|d| roots.contains_key(*d))
            .cloned()
            .collect();
        Graph { roots, bases }
    }

    pub fn is_empty(&self) -> bool {
        self.roots.is_empty()
    }

    pub fn get(&self, dir: &str) -> Option<&Kustomization> {
        self.roots.get(dir)
    }

    /// Every root, bases included.
    pub fn all(&self) -> impl Iterator<Item = &Kustomization> {
        self.roots.values()
    }

    /// The roots that are built and applied: those no other root names.
    pub fn applied(&self) -> impl Iterator<Item = &Kustomization> {
        self.roots.values().filter(|k| !self.bases.contains(&k.dir))
    }

    pub fn is_base(&self, dir: &str) -> bool {
        self.bases.contains(dir)
    }

    /// Whether a file lies in a root's directory (or below it), so that it is read only through
    /// that kustomization, never as a plain manifest.
    pub fn inside_a_root(&self, path: &str) -> bool {
        let mut dir = path;
        while let Some((parent, _)) = dir.rsplit_once('/') {
            if self.roots.contains_key(parent) {
                return true;
            }
            dir = parent;
        }
        self.roots.contains_key("")
    }

    /// What building `dir` reads: its own tree, and what it names, followed through the roots
    /// it names (a cycle, which kustomize reports, ends the walk).
    pub fn inputs(&self, dir: &str) -> Inputs {
        let mut inputs = Inputs::default();
        let mut todo = vec![dir.to_owned()];
        while let Some(d) = todo.pop() {
            if !inputs.dirs.insert(d.clone()) {
                continue;
            }
            if let Some(k) = self.roots.get(&d) {
                inputs.files.extend(k.files.iter().cloned());
                todo.extend(k.dirs.iter().cloned());
            }
        }
        // A directory inside another adds nothing.
        let dirs: Vec<String> = inputs.dirs.iter().cloned().collect();
        inputs.dirs.retain(|d| !dirs.iter().any(|o| o != d && under(d, o)));
        let dirs = inputs.dirs.clone();
        inputs.files.retain(|f| !dirs.iter().any(|d| under(f, d)));
        inputs
    }

    /// Every file the kustomizations of `dir`'s build name (its own, and those of the roots it
    /// names), sorted: patches, resources, generator inputs.
    pub fn named_files(&self, dir: &str) -> Vec<String> {
        let mut seen = BTreeSet::new();
        let mut files = BTreeSet::new();
        let mut todo = vec![dir.to_owned()];
        while let Some(d) = todo.pop() {
            if !seen.insert(d.clone()) {
                continue;
            }
            if let Some(k) = self.roots.get(&d) {
                files.extend(k.files.iter().cloned());
                todo.extend(k.dirs.iter().cloned());
            }
        }
        files.into_iter().collect()
    }

    /// The applied roots whose builds read any of `changed`.
    pub fn touched<'a>(&self, changed: impl IntoIterator<Item = &'a str> + Clone) -> BTreeSet<String> {
        self.applied()
            .filter(|k| {
                let inputs = self.inputs(&k.dir);
                changed.clone().into_iter().any(|p| inputs.contains(p))
            })
            .map(|k| k.dir.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(dir: &str, dirs: &[&str], files: &[&str]) -> Kustomization {
        Kustomization {
            dir: dir.into(),
            file: format!("{dir}/kustomization.yaml"),
            dirs: dirs.iter().map(|s| s.to_string()).collect(),
            files: files.iter().map(|s| s.to_string()).collect(),
            ..Kustomization::default()
        }
    }

    fn graph() -> Graph {
        Graph::new([
            k("app/base", &[], &["app/base/deploy.yaml"]),
            k("app/overlays/prod", &["app/base", "components/tls"], &["shared/patch.yaml"]),
            k("app/overlays/staging", &["app/base"], &[]),
            k("components/tls", &[], &[]),
            k("loop/a", &["loop/b"], &[]),
            k("loop/b", &["loop/a"], &[]),
        ])
    }

    #[test]
    fn bases_are_not_applied_and_files_inside_roots_are_theirs() {
        let g = graph();
        let applied: Vec<&str> = g.applied().map(|k| k.dir.as_str()).collect();
        assert_eq!(
            applied,
            vec!["app/overlays/prod", "app/overlays/staging"],
            "a cycle names both: neither applies"
        );
        assert!(g.is_base("app/base") && g.is_base("components/tls"));
        assert!(g.inside_a_root("app/base/deploy.yaml"));
        assert!(g.inside_a_root("app/overlays/prod/sub/x.yaml"));
        assert!(!g.inside_a_root("app/other.yaml") && !g.inside_a_root("shared/patch.yaml"));
    }

    #[test]
    fn a_build_reads_its_tree_and_what_it_names_and_a_change_touches_only_its_readers() {
        let g = graph();
        let prod = g.inputs("app/overlays/prod");
        assert_eq!(
            prod.dirs.iter().map(String::as_str).collect::<Vec<_>>(),
            vec!["app/base", "app/overlays/prod", "components/tls"]
        );
        assert_eq!(prod.files.iter().map(String::as_str).collect::<Vec<_>>(), vec!["shared/patch.yaml"]);
        let touched = |paths: &[&str]| g.touched(paths.iter().copied()).into_iter().collect::<Vec<_>>();
        assert_eq!(
            touched(&["app/base/deploy.yaml"]),
            vec!["app/overlays/prod", "app/overlays/staging"]
        );
        assert_eq!(touched(&["shared/patch.yaml"]), vec!["app/overlays/prod"]);
        assert_eq!(touched(&["app/overlays/staging/kustomization.yaml"]), vec!["app/overlays/staging"]);
        assert!(touched(&["app/basement/x.yaml", "other.yaml"]).is_empty());
        let _ = g.inputs("loop/a"); // a cycle ends
    }
}
