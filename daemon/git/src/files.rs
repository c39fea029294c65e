//! Which files of a tree are manifests: `*.yaml` and `*.yml` under the configured sub-path,
//! outside dot-directories (and not dot-files, such as CI configs), and not named by the
//! `.capstanignore` file (gitignore syntax) at the top of the sub-path.

use std::path::Path;

use ignore::gitignore::{Gitignore, GitignoreBuilder};

use crate::manifest::is_manifest_path;

/// Name of the ignore file, read from the top of the tracked sub-path.
pub const IGNORE_FILE: &str = ".capstanignore";

#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error("{file}:{line}: invalid pattern: {message}")]
    Pattern { file: String, line: usize, message: String },
    #[error("reading {path}: {source}")]
    Read { path: String, source: std::io::Error },
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

    /// Whether the file at `path` (relative to the repository root) is a manifest.
    pub fn accepts(&self, path: &str) -> bool {
        let Some(rel) = self.relative(path) else {
            return false;
        };
        if !is_manifest_path(rel) || rel.split('/').any(|part| part.starts_with('.')) {
            return false;
        }
        match &self.ignore {
            Some(ig) => !ig.matched_path_or_any_parents(rel, false).is_ignore(),
            None => true,
        }
    }
}

/// Reads the manifests of a directory (a working tree, for `capstan validate`), with paths
/// relative to `dir`. `.git` and other dot-directories are never entered.
pub fn read_dir(dir: &Path) -> Result<Vec<(String, Vec<u8>)>, FilesError> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|source| FilesError::Read {
            path: p.display().to_string(),
            source,
        })
    };
    let ignore_path = dir.join(IGNORE_FILE);
    let ignore = if ignore_path.exists() { Some(read(&ignore_path)?) } else { None };
    let filter = FileFilter::new("", ignore.as_deref())?;
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).map_err(|source| FilesError::Read {
            path: d.display().to_string(),
            source,
        })?;
        for entry in entries {
            let entry = entry.map_err(|source| FilesError::Read {
                path: d.display().to_string(),
                source,
            })?;
            let path = entry.path();
            let name = entry.file_name();
            if name.to_string_lossy().starts_with('.') {
                continue;
            }
            let file_type = entry.file_type().map_err(|source| FilesError::Read {
                path: path.display().to_string(),
                source,
            })?;
            if file_type.is_dir() {
                stack.push(path);
            } else {
                let rel = path.strip_prefix(dir).unwrap_or(&path).to_string_lossy().replace('\\', "/");
                if filter.accepts(&rel) {
                    out.push((rel, read(&path)?));
                }
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
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
        let names: Vec<&str> = files.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(names, ["apps/web.yaml"]);
    }
}
