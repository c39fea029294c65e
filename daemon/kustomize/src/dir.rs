//! A directory (a working tree, for `capstan validate`) read as `capstan validate` reads it, with
//! its kustomize roots built: the plain manifests outside roots as they are, each applied root as
//! the objects of its build.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use capstan_manifest::desired::FileChange;
use capstan_manifest::files::{FileFilter, FilesError, IGNORE_FILE, read_dir, read_in_tree};

use crate::{Kustomizer, Tree, build_roots, root_of};

/// A directory's files, as builds read them.
pub struct DirTree {
    top: PathBuf,
    files: BTreeSet<String>,
}

impl DirTree {
    /// Lists every file under `dir` (dot-directories are not entered).
    pub fn open(dir: &Path) -> Result<DirTree, FilesError> {
        let top = std::fs::canonicalize(dir).map_err(|source| FilesError::Read {
            path: dir.display().to_string(),
            source,
        })?;
        let mut files = BTreeSet::new();
        let mut stack = vec![top.clone()];
        while let Some(d) = stack.pop() {
            let entries = std::fs::read_dir(&d).map_err(|source| FilesError::Read {
                path: d.display().to_string(),
                source,
            })?;
            for entry in entries.flatten() {
                let path = entry.path();
                let Ok(kind) = entry.file_type() else { continue };
                if kind.is_dir() {
                    if !entry.file_name().to_string_lossy().starts_with('.') {
                        stack.push(path);
                    }
                } else if let Ok(rel) = path.strip_prefix(&top) {
                    files.insert(rel.to_string_lossy().replace('\\', "/"));
                }
            }
        }
        Ok(DirTree { top, files })
    }

    pub fn paths(&self) -> &BTreeSet<String> {
        &self.files
    }
}

impl Tree for DirTree {
    fn files_under(&self, dir: &str) -> Vec<String> {
        files_under(&self.files, dir)
    }

    fn read(&self, path: &str) -> Result<Vec<u8>, String> {
        read_in_tree(&self.top, &self.top.join(path))
    }

    fn is_file(&self, path: &str) -> bool {
        self.files.contains(path)
    }
}

/// The paths of `files` under `dir` (`""`: all).
pub fn files_under(files: &BTreeSet<String>, dir: &str) -> Vec<String> {
    if dir.is_empty() {
        return files.iter().cloned().collect();
    }
    let from = format!("{dir}/");
    files.range(from.clone()..).take_while(|p| p.starts_with(&from)).cloned().collect()
}

/// What a directory's kustomize roots came to: how many were built, and by which kustomize.
#[derive(Clone, Debug, Default)]
pub struct Built {
    pub roots: usize,
    /// `kustomize v5.5.0 (kubectl kustomize)`, or why there is none; `None` without roots.
    pub kustomize: Option<String>,
}

/// What `capstan validate DIR` loads: the plain manifests outside kustomize roots, and the
/// builds of the applied roots, with the kustomize at `explicit` (`--kustomize`) or the one
/// found.
pub fn load(dir: &Path, explicit: Option<&Path>) -> Result<(Vec<FileChange>, Built), FilesError> {
    let mut files = read_dir(dir)?;
    let tree = DirTree::open(dir)?;
    // `read_dir` has reported a broken ignore file already.
    let ignore = read_in_tree(&tree.top, &tree.top.join(IGNORE_FILE)).ok();
    let filter = FileFilter::new("", ignore.as_deref())?;
    let kustomizations: Vec<String> = tree
        .paths()
        .iter()
        .filter(|p| root_of(p).is_some() && !filter.ignores(p))
        .cloned()
        .collect();
    let graph = crate::graph(&tree, &kustomizations, "");
    if graph.is_empty() {
        return Ok((files, Built::default()));
    }
    files.retain(|f| root_of(f.path()).is_none() && !graph.inside_a_root(f.path()));
    let applied: Vec<String> = graph.applied().map(|k| k.dir.clone()).collect();
    let kustomizer = Kustomizer::find(explicit).map_err(|e| e.to_string());
    let kz = kustomizer.as_ref().map_err(String::as_str);
    files.extend(build_roots(kz, &graph, &applied, &tree).into_iter().map(FileChange::Loaded));
    let built = Built {
        roots: applied.len(),
        kustomize: Some(kustomizer.map_or_else(|e| e, |k| k.describe())),
    };
    Ok((files, built))
}
