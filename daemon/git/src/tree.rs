//! A commit's tracked tree as kustomize builds read it: every file's path (kept with the loaded
//! commit and updated by each diff), and the content of one, read from the commit with the same
//! rules for symbolic links as manifests.

use std::collections::BTreeSet;
use std::sync::Arc;

use capstan_kustomize::Tree;
use capstan_manifest::desired::FileChange;

/// Every file of a tracked tree (dot-directories left out), by path.
pub type Paths = Arc<BTreeSet<String>>;

/// One commit's tree, read on demand.
pub struct CommitTree<'r> {
    pub repo: &'r git2::Repository,
    pub tree: git2::Tree<'r>,
    /// The tracked sub-path (`""`: the whole repository).
    pub root: String,
    pub paths: Paths,
}

/// Whether a path of the tree lies in a dot-directory (never read, as for manifests).
pub fn in_dot_directory(path: &str) -> bool {
    let mut parts: Vec<&str> = path.split('/').collect();
    parts.pop();
    parts.iter().any(|p| p.starts_with('.'))
}

impl Tree for CommitTree<'_> {
    fn files_under(&self, dir: &str) -> Vec<String> {
        capstan_kustomize::dir::files_under(&self.paths, dir)
    }

    fn read(&self, path: &str) -> Result<Vec<u8>, String> {
        match crate::repo::read_entry(self.repo, &self.tree, &self.root, path) {
            Ok(FileChange::Write(_, bytes)) => Ok(bytes),
            Ok(FileChange::Unreadable(_, why)) => Err(why),
            Ok(_) => Err(format!("{path} is not in this commit")),
            Err(e) => Err(e.message().to_owned()),
        }
    }

    fn is_file(&self, path: &str) -> bool {
        self.paths.contains(path)
    }
}

/// One file of a tree: its path, blob and whether it is a symbolic link.
pub type Entry = (String, git2::Oid, bool);

/// Every file under `root` in `tree` (blobs and links), in tree order, leaving out
/// dot-directories: the one walk a full read makes.
pub fn list(tree: &git2::Tree<'_>, root: &str) -> Result<Vec<Entry>, git2::Error> {
    let mut out = Vec::new();
    tree.walk(git2::TreeWalkMode::PreOrder, |dir, entry| {
        let name = entry.name().unwrap_or_default();
        let path = format!("{dir}{name}");
        let inside = root.is_empty() || path == root || path.starts_with(&format!("{root}/")) || root.starts_with(&format!("{path}/"));
        if entry.kind() == Some(git2::ObjectType::Tree) {
            return if inside && !name.starts_with('.') {
                git2::TreeWalkResult::Ok
            } else {
                git2::TreeWalkResult::Skip
            };
        }
        if inside && entry.kind() == Some(git2::ObjectType::Blob) {
            let link = entry.filemode() == i32::from(git2::FileMode::Link);
            out.push((path, entry.id(), link));
        }
        git2::TreeWalkResult::Ok
    })?;
    Ok(out)
}

/// Applies one diff's file additions and removals to a listing.
pub fn update(paths: &BTreeSet<String>, removed: &[String], added: &[String]) -> BTreeSet<String> {
    let mut next = paths.clone();
    for p in removed {
        next.remove(p);
    }
    for p in added {
        if !in_dot_directory(p) {
            next.insert(p.clone());
        }
    }
    next
}
