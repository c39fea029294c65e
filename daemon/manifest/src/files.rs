//! Which files of a tree are manifests: `*.yaml` and `*.yml` under the configured sub-path,
//! outside dot-directories (and not dot-files, such as CI configs), and not named by the
//! `.capstanignore` file (gitignore syntax) at the top of the sub-path.

use std::path::{Path, PathBuf};

use ignore::gitignore::{Gitignore, GitignoreBuilder};

use crate::desired::FileChange;
use crate::manifest::is_manifest_path;
use crate::yaml::Budget;

/// Name of the ignore file, read from the top of the tracked sub-path.
pub const IGNORE_FILE: &str = ".capstanignore";

#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error("{file}:{line}: invalid pattern: {message}")]
    Pattern { file: String, line: usize, message: String },
    #[error("reading {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}: {why}")]
    Unreadable { path: String, why: String },
}

/// Decides which paths (relative to the repository root, `/`-separated) are manifests.
#[derive(Clone, Debug)]
pub struct FileFilter {
    /// The sub-path, without leading or trailing `/`; empty for the whole repository.
    root: String,
    ignore: Option<Gitignore>,
}

impl FileFilter {
    /// A filter for `subpath`, with the content of its `.capstanignore` if there is one.
    pub fn new(subpath: &str, ignore_file: Option<&[u8]>) -> Result<FileFilter, FilesError> {
        let root = subpath.trim_matches('/').to_owned();
        let mut filter = FileFilter { root, ignore: None };
        if let Some(bytes) = ignore_file {
            let text = String::from_utf8_lossy(bytes);
            let mut builder = GitignoreBuilder::new("");
            for (i, line) in text.lines().enumerate() {
                builder.add_line(None, line).map_err(|e| FilesError::Pattern {
                    file: filter.ignore_file_path(),
                    line: i + 1,
                    message: e.to_string(),
                })?;
            }
            filter.ignore = Some(builder.build().map_err(|e| FilesError::Pattern {
                file: filter.ignore_file_path(),
                line: 0,
                message: e.to_string(),
            })?);
        }
        Ok(filter)
    }

    /// The path of the ignore file this filter reads, relative to the repository root.
    pub fn ignore_file_path(&self) -> String {
        if self.root.is_empty() {
            IGNORE_FILE.to_owned()
        } else {
            format!("{}/{IGNORE_FILE}", self.root)
        }
    }

    /// The sub-path this filter is rooted at.
    pub fn root(&self) -> &str {
        &self.root
    }

    /// The part of `path` below the sub-path, if it is below it.
    fn relative<'a>(&self, path: &'a str) -> Option<&'a str> {
        if self.root.is_empty() {
            return Some(path);
        }
        path.strip_prefix(self.root.as_str())?.strip_prefix('/')
    }

    /// Whether the file at `path` is left out whatever it is: outside the sub-path, in a
    /// dot-directory (or a dot-file), or named by the ignore file.
    pub fn ignores(&self, path: &str) -> bool {
        let Some(rel) = self.relative(path) else {
            return true;
        };
        if rel.split('/').any(|part| part.starts_with('.')) {
            return true;
        }
        self.ignore
            .as_ref()
            .is_some_and(|ig| ig.matched_path_or_any_parents(rel, false).is_ignore())
    }

    /// Whether the file at `path` (relative to the repository root) is a manifest.
    pub fn accepts(&self, path: &str) -> bool {
        is_manifest_path(path) && !self.ignores(path)
    }
}

/// Most bytes of manifests one commit or directory may hold in all, so that reading a tree is
/// bounded too; files past it are reported, not read.
pub const MAX_TREE_BYTES: usize = 256 << 20;

/// Counts the bytes of a tree as its files are read, so that a huge tree is refused file by file.
#[derive(Debug)]
pub struct TreeBudget {
    limit: usize,
    spent: usize,
    exceeded: bool,
}

impl Default for TreeBudget {
    fn default() -> TreeBudget {
        TreeBudget::new(MAX_TREE_BYTES)
    }
}

impl TreeBudget {
    /// A budget of `limit` bytes in all (tests use small ones).
    pub fn new(limit: usize) -> TreeBudget {
        TreeBudget {
            limit,
            spent: 0,
            exceeded: false,
        }
    }

    /// Takes `len` bytes for one file, or says why the file is not read.
    pub fn take(&mut self, len: u64) -> Result<(), String> {
        if let Some(why) = Budget::MANIFEST.file_too_large(len) {
            return Err(why);
        }
        self.spent = self.spent.saturating_add(len as usize);
        if self.spent > self.limit {
            self.exceeded = true;
            return Err(format!(
                "the manifests of this tree exceed {} in all; this file and the rest are not read",
                mib(self.limit)
            ));
        }
        Ok(())
    }

    /// Whether some file was refused because the tree as a whole is too large.
    pub fn exceeded(&self) -> bool {
        self.exceeded
    }
}

/// A byte count as users read it: whole MiB when it is, bytes otherwise.
fn mib(bytes: usize) -> String {
    if bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{bytes} bytes")
    }
}

/// `rel`, a `/`-separated relative path, taken from the directory `dir` of the tree and
/// normalised (`.` and `..` worked out, no filesystem); `None` when it climbs above the top.
pub fn join(dir: &str, rel: &str) -> Option<String> {
    let mut parts: Vec<&str> = dir.split('/').filter(|p| !p.is_empty()).collect();
    for part in rel.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    Some(parts.join("/"))
}

/// Where a symbolic link stored at `link` (a `/`-separated path in the tree) with target text
/// `target` leads, worked out without a filesystem; an error when it leaves `root` (the tracked
/// sub-path, empty for the whole tree) or is absolute.
pub fn resolve_link(link: &str, target: &str, root: &str) -> Result<String, String> {
    let leaves = || format!("symbolic link to {target:?} leaves the tracked tree: only files inside it are read");
    if target.starts_with('/') {
        return Err(leaves());
    }
    let dir = link.rsplit_once('/').map_or("", |(d, _)| d);
    let resolved = join(dir, target).ok_or_else(leaves)?;
    let root = root.trim_matches('/');
    if !root.is_empty() && !resolved.starts_with(&format!("{root}/")) {
        return Err(leaves());
    }
    Ok(resolved)
}

/// Reads a regular file of at most the per-file limit. Devices, FIFOs and sockets are refused
/// without blocking (the file is opened non-blocking and checked after opening).
fn read_regular(path: &Path, budget: &mut TreeBudget) -> Result<Vec<u8>, String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| format!("cannot read: {e}"))?;
    let meta = file.metadata().map_err(|e| format!("cannot read: {e}"))?;
    if !meta.is_file() {
        return Err("not a regular file: only files are read as manifests".into());
    }
    budget.take(meta.len())?;
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // Bounded even if the file grows while it is read.
    file.take(Budget::MANIFEST.file_bytes as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read: {e}"))?;
    if let Some(why) = Budget::MANIFEST.file_too_large(bytes.len() as u64) {
        return Err(why);
    }
    Ok(bytes)
}

/// Reads `path`, a file of the directory `top` (canonical), with the same rules as manifests:
/// a symbolic link is read as the file it leads to inside `top`, only regular files are read,
/// within the per-file limit.
pub fn read_in_tree(top: &Path, path: &Path) -> Result<Vec<u8>, String> {
    let link = std::fs::symlink_metadata(path)
        .map_err(|e| format!("cannot read: {e}"))?
        .is_symlink();
    let real = if link { inside(top, path)? } else { path.to_path_buf() };
    read_regular(&real, &mut TreeBudget::default())
}

/// A path of the directory being read, followed through symbolic links: the file it stands
/// for, which must be inside `top` (canonical). Links are followed only for manifests, so a
/// link to a directory is never entered.
fn inside(top: &Path, path: &Path) -> Result<PathBuf, String> {
    let target = std::fs::read_link(path).map(|t| t.display().to_string()).unwrap_or_default();
    let real = std::fs::canonicalize(path).map_err(|_| format!("symbolic link to {target:?} dangles"))?;
    if !real.starts_with(top) {
        return Err(format!(
            "symbolic link to {target:?} leaves the tracked tree: only files inside it are read"
        ));
    }
    Ok(real)
}

/// Reads the manifests of a directory (a working tree, for `capstan validate`), with paths
/// relative to `dir`. `.git` and other dot-directories are never entered. Symbolic links are
/// read as the file they point to when it is inside `dir`, and reported otherwise, as in the
/// Git reader; only regular files are read.
pub fn read_dir(dir: &Path) -> Result<Vec<FileChange>, FilesError> {
    let io_err = |p: &Path| {
        let path = p.display().to_string();
        move |source| FilesError::Read { path, source }
    };
    let top = std::fs::canonicalize(dir).map_err(io_err(dir))?;
    let mut budget = TreeBudget::default();
    let ignore_path = dir.join(IGNORE_FILE);
    let ignore = match std::fs::symlink_metadata(&ignore_path) {
        Err(_) => None,
        Ok(_) => {
            let bytes = inside(&top, &ignore_path)
                .and_then(|real| read_regular(&real, &mut budget))
                .map_err(|why| FilesError::Unreadable {
                    path: IGNORE_FILE.to_owned(),
                    why,
                })?;
            Some(bytes)
        }
    };
    let filter = FileFilter::new("", ignore.as_deref())?;
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).map_err(io_err(&d))? {
            let entry = entry.map_err(io_err(&d))?;
            let path = entry.path();
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let file_type = entry.file_type().map_err(io_err(&path))?;
            if file_type.is_dir() {
                stack.push(path);
                continue;
            }
            let rel = path.strip_prefix(dir).unwrap_or(&path).to_string_lossy().replace('\\', "/");
            if filter.accepts(&rel) {
                found.push((rel, path, file_type.is_symlink()));
            }
        }
    }
    found.sort();
    let mut out = Vec::with_capacity(found.len());
    for (rel, path, link) in found {
        let real = if link { inside(&top, &path) } else { Ok(path) };
        out.push(match real.and_then(|p| read_regular(&p, &mut budget)) {
            Ok(bytes) => FileChange::Write(rel, bytes),
            Err(why) => FileChange::Unreadable(rel, why),
        });
    }
    Ok(out)
}

/// Reads one file named on the command line, with the same rules as [`read_dir`].
pub fn read_file(path: &Path) -> FileChange {
    let name = path.display().to_string();
    match read_regular(path, &mut TreeBudget::default()) {
        Ok(bytes) => FileChange::Write(name, bytes),
        Err(why) => FileChange::Unreadable(name, why),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_paths_other_extensions_and_the_sub_path() {
        let f = FileFilter::new("deploy/prod", None).unwrap();
        assert!(f.accepts("deploy/prod/web.yaml"));
        assert!(f.accepts("deploy/prod/apps/web.yml"));
        assert!(!f.accepts("deploy/prod/README.md"));
        assert!(!f.accepts("deploy/production/web.yaml"));
        assert!(!f.accepts("deploy/prod/.github/workflows/ci.yaml"));
        assert!(!f.accepts("deploy/prod/.pre-commit-config.yaml"));
        assert!(!f.accepts("other/web.yaml"));
        assert_eq!(f.ignore_file_path(), "deploy/prod/.capstanignore");
    }

    #[test]
    fn capstanignore_uses_gitignore_syntax() {
        let f = FileFilter::new("", Some(b"# comment\ndrafts/\n*.draft.yaml\n!keep.draft.yaml\n/top.yaml\n")).unwrap();
        assert!(!f.accepts("drafts/web.yaml"));
        assert!(!f.accepts("apps/drafts/web.yaml"));
        assert!(!f.accepts("apps/web.draft.yaml"));
        assert!(f.accepts("apps/keep.draft.yaml"));
        assert!(!f.accepts("top.yaml"));
        assert!(f.accepts("apps/top.yaml"));
        assert!(f.accepts("apps/web.yaml"));
    }

    #[test]
    fn reading_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("apps/.hidden")).unwrap();
        std::fs::write(dir.path().join("apps/web.yaml"), "a: 1").unwrap();
        std::fs::write(dir.path().join("apps/.hidden/x.yaml"), "a: 1").unwrap();
        std::fs::write(dir.path().join("apps/skip.yaml"), "a: 1").unwrap();
        std::fs::write(dir.path().join(".capstanignore"), "skip.yaml\n").unwrap();
        let files = read_dir(dir.path()).unwrap();
        let names: Vec<&str> = files
            .iter()
            .map(|f| match f {
                FileChange::Write(p, _) => p.as_str(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(names, ["apps/web.yaml"]);
    }
}
