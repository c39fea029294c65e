//! Git access for the source (git2, blocking): open a local repository or keep a bare mirror of
//! a remote one, fetch the tracked branch, resolve its tip, and read a commit's manifests in
//! full or as the files changed since another commit.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use git2::{AutotagOption, Delta, DiffOptions, FetchOptions, Oid, RemoteCallbacks, Repository};

use capstan_kustomize::{Graph, Kustomizer, root_of};
use capstan_manifest::desired::{FileChange, Snapshot};

use crate::tree::{CommitTree, Paths};
use capstan_manifest::files::{FileFilter, FilesError, MAX_TREE_BYTES, TreeBudget};
use capstan_manifest::yaml::Budget;

/// Most symbolic links followed from one manifest to the file it stands for.
const MAX_LINK_HOPS: usize = 8;

/// Where the desired state lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// A repository on this machine, read in place (its refs are watched).
    Local(PathBuf),
    /// A repository reached over file://, https or ssh, mirrored into the data directory.
    Remote(String),
}

impl Location {
    /// A path or URL as given on the command line.
    pub fn parse(spec: &str) -> Location {
        let is_url = spec.contains("://") || (spec.contains('@') && spec.contains(':') && !Path::new(spec).exists());
        if is_url {
            Location::Remote(spec.to_owned())
        } else {
            Location::Local(PathBuf::from(spec))
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Location::Local(p) => p.display().to_string(),
            Location::Remote(u) => u.clone(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error("opening repository {location}: {message}")]
    Open { location: String, message: String },
    #[error("fetching {location}: {message}")]
    Fetch { location: String, message: String },
    #[error("branch {branch:?} does not exist in {location}")]
    BranchMissing { location: String, branch: String },
    #[error("repository {location} has no commits yet")]
    Empty { location: String },
    #[error("reading commit {commit}: {message}")]
    Read { commit: String, message: String },
    #[error("the tracked path {path:?} is not a directory in commit {commit}: nothing is applied or pruned until it is (check --path)")]
    MissingPath { commit: String, path: String },
    #[error(transparent)]
    Files(#[from] FilesError),
}

/// An opened repository and the branch it tracks.
pub struct GitRepo {
    repo: Repository,
    location: Location,
    branch: String,
    subpath: String,
    /// The branches the remote had at the last fetch (None for a local repository).
    remote_heads: Option<Vec<String>>,
    /// Most bytes of manifests one commit may hold in all.
    tree_bytes: usize,
    /// `--kustomize`: the kustomize to build with; `None`: look for one.
    kustomize: Option<PathBuf>,
    kustomizer: std::sync::OnceLock<Result<Kustomizer, String>>,
}

impl std::fmt::Debug for GitRepo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GitRepo({} {})", self.location.describe(), self.branch)
    }
}

/// The manifests of one commit.
#[derive(Clone, Debug)]
pub struct LoadedCommit {
    pub commit: Oid,
    pub snapshot: Snapshot,
    pub filter: FileFilter,
    /// Manifests stored as symbolic links: read as their targets, and again whenever the tree
    /// changes.
    pub links: std::collections::BTreeSet<String>,
    /// Files read to produce this snapshot (all of them, or only the changed ones).
    pub files_read: usize,
    /// The size of each file counted against the tree's budget ([`TreeBudget`]), kept so that
    /// a commit read by its changes is held to the same limit as one read in full.
    pub sizes: imbl::HashMap<String, u64>,
    /// Whether some file was left unread because the tree as a whole is over its budget.
    pub over_budget: bool,
    /// Every file of the tracked tree (kustomize builds may read any), and its kustomizations.
    pub paths: Paths,
    pub kustomize: Arc<Graph>,
    /// Kustomize roots built to produce this snapshot (all applied ones, or the touched ones).
    pub roots_built: usize,
}

fn credentials() -> RemoteCallbacks<'static> {
    let mut callbacks = RemoteCallbacks::new();
    callbacks.credentials(|url, username, allowed| {
        if allowed.contains(git2::CredentialType::SSH_KEY) {
            let user = username.unwrap_or("git");
            if let Ok(c) = git2::Cred::ssh_key_from_agent(user) {
                return Ok(c);
            }
            if let Some(home) = std::env::var_os("HOME") {
                for key in ["id_ed25519", "id_ecdsa", "id_rsa"] {
                    let path = Path::new(&home).join(".ssh").join(key);
                    if path.exists() {
                        return git2::Cred::ssh_key(user, None, &path, None);
                    }
                }
            }
        }
        if allowed.contains(git2::CredentialType::USER_PASS_PLAINTEXT) {
            if let Ok(token) = std::env::var("CAPSTAN_GIT_TOKEN") {
                return git2::Cred::userpass_plaintext(username.unwrap_or("git"), &token);
            }
            if let Ok(config) = git2::Config::open_default() {
                return git2::Cred::credential_helper(&config, url, username);
            }
        }
        git2::Cred::default()
    });
    callbacks
}

/// Where the bare mirror of the remote `url` lives under `data_dir`.
pub fn mirror_dir(data_dir: &Path, url: &str) -> PathBuf {
    // FNV-1a: stable across runs and Rust versions, unlike DefaultHasher.
    let mut h: u64 = 0xcbf29ce484222325;
    for b in url.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    data_dir.join("git").join(format!("{h:016x}"))
}

/// The identity Capstan commits and writes notes as.
pub fn capstan_signature() -> Result<git2::Signature<'static>, git2::Error> {
    git2::Signature::now("Capstan", "capstan@localhost")
}

/// Pushes `refspecs` from `repo` to the remote `url` (with the source's credentials); an
/// error carries the first ref the remote refused.
pub fn push(repo: &Repository, url: &str, refspecs: &[&str]) -> Result<(), git2::Error> {
    let mut remote = repo.remote_anonymous(url)?;
    let refused = std::cell::RefCell::new(None::<String>);
    let mut callbacks = credentials();
    callbacks.push_update_reference(|name, status| {
        if let Some(why) = status {
            refused.borrow_mut().get_or_insert_with(|| format!("{name}: {why}"));
        }
        Ok(())
    });
    let mut options = git2::PushOptions::new();
    options.remote_callbacks(callbacks);
    remote.push(refspecs, Some(&mut options))?;
    drop(options);
    match refused.into_inner() {
        Some(why) => Err(git2::Error::from_str(&format!("the remote refused {why}"))),
        None => Ok(()),
    }
}

/// Fetches `refspecs` from the remote `url` into `repo`; a ref the remote does not have is
/// not an error.
pub fn fetch_refs(repo: &Repository, url: &str, refspecs: &[&str]) -> Result<(), git2::Error> {
    let mut remote = repo.remote_anonymous(url)?;
    let mut options = FetchOptions::new();
    options.remote_callbacks(credentials());
    options.download_tags(AutotagOption::None);
    remote.fetch(refspecs, Some(&mut options), None)
}

impl GitRepo {
    /// Opens the repository at `location`, tracking `branch` (default: the repository's HEAD
    /// branch) under `subpath`. A remote is mirrored under `data_dir` and fetched once.
    pub fn open(location: Location, branch: Option<&str>, subpath: &str, data_dir: &Path) -> Result<GitRepo, RepoError> {
        let describe = location.describe();
        let open_err = |e: git2::Error| RepoError::Open {
            location: describe.clone(),
            message: e.message().to_owned(),
        };
        let repo = match &location {
            Location::Local(path) => Repository::open(path).map_err(open_err)?,
            Location::Remote(url) => {
                let dir = mirror_dir(data_dir, url);
                match Repository::open_bare(&dir) {
                    Ok(r) => r,
                    Err(_) => {
                        std::fs::create_dir_all(&dir).map_err(|e| RepoError::Open {
                            location: describe.clone(),
                            message: e.to_string(),
                        })?;
                        Repository::init_bare(&dir).map_err(open_err)?
                    }
                }
            }
        };
        let branch = match branch {
            Some(b) => b.to_owned(),
            None => default_branch(&repo, &location)?,
        };
        let mut this = GitRepo {
            repo,
            location,
            branch,
            subpath: subpath.trim_matches('/').to_owned(),
            remote_heads: None,
            tree_bytes: MAX_TREE_BYTES,
            kustomize: None,
            kustomizer: std::sync::OnceLock::new(),
        };
        this.fetch()?;
        Ok(this)
    }

    pub fn location(&self) -> &Location {
        &self.location
    }

    pub fn branch(&self) -> &str {
        &self.branch
    }

    pub fn repository(&self) -> &Repository {
        &self.repo
    }

    /// The directory to watch for ref changes (the git dir of a local repository).
    pub fn git_dir(&self) -> &Path {
        self.repo.path()
    }

    /// Brings the mirror of a remote up to date with the tracked branch; a no-op for a local
    /// repository, which is read in place.
    pub fn fetch(&mut self) -> Result<(), RepoError> {
        let Location::Remote(url) = &self.location else {
            return Ok(());
        };
        let mut remote = self.repo.remote_anonymous(url).map_err(|e| RepoError::Fetch {
            location: url.clone(),
            message: e.message().to_owned(),
        })?;
        let mut options = FetchOptions::new();
        options.remote_callbacks(credentials());
        options.download_tags(AutotagOption::None);
        let refspec = format!("+refs/heads/{0}:refs/heads/{0}", self.branch);
        remote
            .fetch(&[refspec.as_str()], Some(&mut options), None)
            .map_err(|e| RepoError::Fetch {
                location: url.clone(),
                message: e.message().to_owned(),
            })?;
        // A branch deleted on the remote leaves the mirror's copy behind; drop it so that the
        // deletion is reported rather than the stale tip applied.
        let heads: Vec<String> = remote
            .list()
            .map(|heads| {
                heads
                    .iter()
                    .filter_map(|h| h.name().strip_prefix("refs/heads/").map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        if !heads.contains(&self.branch) {
            let _ = self
                .repo
                .find_reference(&format!("refs/heads/{}", self.branch))
                .and_then(|mut r| r.delete());
        }
        self.remote_heads = Some(heads);
        Ok(())
    }

    /// The commit at the tip of the tracked branch.
    pub fn tip(&self) -> Result<Oid, RepoError> {
        let name = format!("refs/heads/{}", self.branch);
        match self.repo.find_reference(&name) {
            Ok(r) => r.peel_to_commit().map(|c| c.id()).map_err(|e| RepoError::Read {
                commit: name,
                message: e.message().to_owned(),
            }),
            Err(_) => {
                let empty = match &self.remote_heads {
                    Some(heads) => heads.is_empty(),
                    None => self.repo.references().map(|mut r| r.next().is_none()).unwrap_or(true),
                };
                if empty {
                    Err(RepoError::Empty {
                        location: self.location.describe(),
                    })
                } else {
                    Err(RepoError::BranchMissing {
                        location: self.location.describe(),
                        branch: self.branch.clone(),
                    })
                }
            }
        }
    }

    /// Whether `commit` descends from `ancestor` (false after a force-push that rewrote history).
    pub fn descends_from(&self, commit: Oid, ancestor: Oid) -> bool {
        commit == ancestor || self.repo.graph_descendant_of(commit, ancestor).unwrap_or(false)
    }

    fn read_err(commit: Oid) -> impl Fn(git2::Error) -> RepoError {
        move |e| RepoError::Read {
            commit: commit.to_string(),
            message: e.message().to_owned(),
        }
    }

    fn filter_at(&self, tree: &git2::Tree<'_>) -> Result<FileFilter, RepoError> {
        let probe = FileFilter::new(&self.subpath, None)?;
        let ignore = tree
            .get_path(Path::new(&probe.ignore_file_path()))
            .ok()
            .and_then(|e| self.repo.find_blob(e.id()).ok())
            .map(|b| b.content().to_vec());
        Ok(FileFilter::new(&self.subpath, ignore.as_deref())?)
    }

    /// The commit's tree, checked to hold the tracked sub-path: a mistyped `--path` is an
    /// error, never an empty tree whose "removed" objects would all be pruned.
    fn tree_of(&self, commit: Oid) -> Result<git2::Tree<'_>, RepoError> {
        let tree = self
            .repo
            .find_commit(commit)
            .and_then(|c| c.tree())
            .map_err(Self::read_err(commit))?;
        if !self.subpath.is_empty() {
            let found = tree.get_path(Path::new(&self.subpath)).ok();
            if found.is_none_or(|e| e.kind() != Some(git2::ObjectType::Tree)) {
                return Err(RepoError::MissingPath {
                    commit: commit.to_string(),
                    path: self.subpath.clone(),
                });
            }
        }
        Ok(tree)
    }

    /// Holds each commit to `bytes` of manifests in all instead of [`MAX_TREE_BYTES`] (tests).
    pub fn limit_tree_bytes(&mut self, bytes: usize) {
        self.tree_bytes = bytes;
    }

    /// Reads every manifest of `commit`.
    pub fn load(&self, commit: Oid) -> Result<LoadedCommit, RepoError> {
        let err = Self::read_err(commit);
        let tree = self.tree_of(commit)?;
        let filter = self.filter_at(&tree)?;
        let entries = crate::tree::list(&tree, filter.root()).map_err(&err)?;
        let listing = CommitTree {
            repo: &self.repo,
            tree: tree.clone(),
            root: filter.root().to_owned(),
            paths: Arc::new(entries.iter().map(|(p, _, _)| p.clone()).collect()),
        };
        let graph = self.kustomizations(&listing, &filter);
        // Files inside a kustomize root are read through its kustomization only.
        let plain = |path: &str| filter.accepts(path) && root_of(path).is_none() && !graph.inside_a_root(path);
        let mut blobs = Vec::new();
        let mut links = Vec::new();
        for (path, id, link) in entries.into_iter().filter(|(p, _, _)| plain(p)) {
            if link {
                links.push(path);
            } else {
                blobs.push((path, id));
            }
        }
        let mut files = Vec::with_capacity(blobs.len() + links.len());
        let odb = self.repo.odb().map_err(&err)?;
        let mut budget = TreeBudget::new(self.tree_bytes);
        let mut sizes = imbl::HashMap::new();
        for (path, id) in blobs {
            // The size is read from the object's header, so an oversized blob is never loaded.
            let (size, _) = odb.read_header(id).map_err(&err)?;
            files.push(match budget.take(size as u64) {
                Ok(()) => {
                    sizes.insert(path.clone(), size as u64);
                    FileChange::Write(path, self.repo.find_blob(id).map_err(&err)?.content().to_vec())
                }
                Err(why) => FileChange::Unreadable(path, why),
            });
        }
        for link in &links {
            files.push(self.read_link(&tree, filter.root(), link).map_err(&err)?);
        }
        let applied: Vec<String> = graph.applied().map(|k| k.dir.clone()).collect();
        files.extend(self.builds(&graph, &applied, &listing));
        let files_read = files.iter().filter(|f| !matches!(f, FileChange::Loaded(_))).count();
        Ok(LoadedCommit {
            commit,
            snapshot: Snapshot::load(files),
            filter,
            links: links.into_iter().collect(),
            files_read,
            sizes,
            over_budget: budget.exceeded(),
            paths: listing.paths,
            kustomize: Arc::new(graph),
            roots_built: applied.len(),
        })
    }

    /// Reads a manifest stored as a symbolic link as the file it points to, which must be a
    /// file inside the tracked tree (as a checkout and `kubectl apply -f` would read it).
    fn read_link(&self, tree: &git2::Tree<'_>, root: &str, link: &str) -> Result<FileChange, git2::Error> {
        read_entry(&self.repo, tree, root, link)
    }

    /// The kustomize that builds this repository's roots (found at first use).
    pub fn kustomizer(&self) -> Result<&Kustomizer, &str> {
        self.kustomizer
            .get_or_init(|| Kustomizer::find(self.kustomize.as_deref()).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(String::as_str)
    }

    /// Builds with the kustomize at `path` (`--kustomize`) instead of looking for one.
    pub fn use_kustomize(&mut self, path: Option<PathBuf>) {
        self.kustomize = path;
        self.kustomizer = std::sync::OnceLock::new();
    }

    /// The kustomizations of a tree: every kustomization file the filter does not leave out.
    fn kustomizations(&self, tree: &CommitTree<'_>, filter: &FileFilter) -> Graph {
        let files: Vec<String> = tree
            .paths
            .iter()
            .filter(|p| root_of(p).is_some() && !filter.ignores(p))
            .cloned()
            .collect();
        capstan_kustomize::graph(tree, &files, filter.root())
    }

    /// The builds of `dirs` (roots of `graph`), as changes to the snapshot.
    fn builds(&self, graph: &Graph, dirs: &[String], tree: &CommitTree<'_>) -> Vec<FileChange> {
        if dirs.is_empty() {
            return Vec::new();
        }
        capstan_kustomize::build_roots(self.kustomizer(), graph, dirs, tree)
            .into_iter()
            .map(FileChange::Loaded)
            .collect()
    }

    /// Reads `commit` by re-reading only the files changed since `previous`; when the ignore
    /// file itself changed, or the tree grew past its budget (which a full read applies file by
    /// file, in tree order), falls back to a full read.
    pub fn load_since(&self, previous: &LoadedCommit, commit: Oid) -> Result<LoadedCommit, RepoError> {
        if previous.commit == commit {
            return Ok(LoadedCommit {
                files_read: 0,
                roots_built: 0,
                ..previous.clone()
            });
        }
        if previous.over_budget {
            // Files left unread for the whole tree's sake may fit now: read it as a full read would.
            return self.load(commit);
        }
        let err = Self::read_err(commit);
        let old_tree = self.repo.find_commit(previous.commit).and_then(|c| c.tree()).map_err(&err)?;
        let new_tree = self.tree_of(commit)?;
        let mut options = DiffOptions::new();
        if !self.subpath.is_empty() {
            options.pathspec(&self.subpath);
        }
        let diff = self
            .repo
            .diff_tree_to_tree(Some(&old_tree), Some(&new_tree), Some(&mut options))
            .map_err(&err)?;
        let ignore_path = previous.filter.ignore_file_path();
        let mut changes = Vec::new();
        let mut links = previous.links.clone();
        let mut sizes = previous.sizes.clone();
        let odb = self.repo.odb().map_err(&err)?;
        let is_link = |f: &git2::DiffFile<'_>| f.mode() == git2::FileMode::Link;
        // Every path the diff touched, manifest or not (a kustomize build reads any file).
        let (mut gone, mut came, mut touched) = (Vec::new(), Vec::new(), Vec::new());
        for delta in diff.deltas() {
            let old_path = delta.old_file().path().map(|p| p.to_string_lossy().into_owned());
            let new_path = delta.new_file().path().map(|p| p.to_string_lossy().into_owned());
            if old_path.as_deref() == Some(ignore_path.as_str()) || new_path.as_deref() == Some(ignore_path.as_str()) {
                return self.load(commit);
            }
            match delta.status() {
                Delta::Added | Delta::Copied => came.extend(new_path.clone()),
                Delta::Deleted => gone.extend(old_path.clone()),
                Delta::Renamed => {
                    gone.extend(old_path.clone());
                    came.extend(new_path.clone());
                }
                _ => {}
            }
            touched.extend(old_path.iter().chain(new_path.iter()).cloned());
            match delta.status() {
                Delta::Deleted => {
                    if let Some(p) = old_path.filter(|p| previous.filter.accepts(p)) {
                        links.remove(&p);
                        sizes.remove(&p);
                        changes.push(FileChange::Remove(p));
                    }
                }
                _ => {
                    if let Some(p) = old_path.filter(|p| Some(p) != new_path.as_ref() && previous.filter.accepts(p)) {
                        links.remove(&p);
                        sizes.remove(&p);
                        changes.push(FileChange::Remove(p));
                    }
                    if let Some(p) = new_path.filter(|p| previous.filter.accepts(p)) {
                        let mode = delta.new_file().mode();
                        sizes.remove(&p);
                        if is_link(&delta.new_file()) {
                            // Read below with every other link, whose targets may have changed.
                            links.insert(p);
                        } else if mode == git2::FileMode::Blob || mode == git2::FileMode::BlobExecutable {
                            links.remove(&p);
                            let id = delta.new_file().id();
                            // Sized from the object's header, as in a full read.
                            let (size, _) = odb.read_header(id).map_err(&err)?;
                            changes.push(match Budget::MANIFEST.file_too_large(size as u64) {
                                None => {
                                    sizes.insert(p.clone(), size as u64);
                                    FileChange::Write(p, self.repo.find_blob(id).map_err(&err)?.content().to_vec())
                                }
                                Some(why) => FileChange::Unreadable(p, why),
                            });
                        } else {
                            links.remove(&p);
                            changes.push(FileChange::Remove(p));
                        }
                    }
                }
            }
        }
        let listing = CommitTree {
            repo: &self.repo,
            tree: new_tree.clone(),
            root: previous.filter.root().to_owned(),
            paths: if gone.is_empty() && came.is_empty() {
                previous.paths.clone()
            } else {
                Arc::new(crate::tree::update(&previous.paths, &gone, &came))
            },
        };
        let kustomize = self.kustomize_changes(previous, &listing, &touched, &mut changes, &mut links, &mut sizes)?;
        // A link's content is its target's: re-read every link when anything changed (links are
        // few, and a target, even one not read on its own, may change while the link stays).
        if diff.deltas().len() > 0 && !links.is_empty() {
            for link in &links {
                changes.push(self.read_link(&new_tree, previous.filter.root(), link).map_err(&err)?);
            }
        }
        if sizes.values().sum::<u64>() > self.tree_bytes as u64 {
            return self.load(commit);
        }
        let files_read = changes.iter().filter(|c| matches!(c, FileChange::Write(..))).count();
        let roots_built = changes.iter().filter(|c| matches!(c, FileChange::Loaded(_))).count();
        Ok(LoadedCommit {
            commit,
            snapshot: previous.snapshot.with_changes(changes),
            filter: previous.filter.clone(),
            links,
            files_read,
            sizes,
            over_budget: false,
            paths: listing.paths,
            kustomize,
            roots_built,
        })
    }

    /// What a change does to the kustomize side of the tree: the graph, re-read when a
    /// kustomization file changed; plain manifests that are now inside a root dropped (and ones
    /// that left every root read); roots that are no longer applied removed; and the applied
    /// roots whose builds read a changed file (or that are new) built again. `changes` and
    /// `links` come in as the plain files' changes, and go out fitted to the new graph.
    fn kustomize_changes(
        &self,
        previous: &LoadedCommit,
        listing: &CommitTree<'_>,
        touched: &[String],
        changes: &mut Vec<FileChange>,
        links: &mut BTreeSet<String>,
        sizes: &mut imbl::HashMap<String, u64>,
    ) -> Result<Arc<Graph>, RepoError> {
        let filter = &previous.filter;
        let old = &previous.kustomize;
        let regraph = touched.iter().any(|p| root_of(p).is_some());
        if !regraph && old.is_empty() {
            return Ok(old.clone());
        }
        let graph = if regraph {
            Arc::new(self.kustomizations(listing, filter))
        } else {
            old.clone()
        };
        let plain = |g: &Graph, p: &str| filter.accepts(p) && root_of(p).is_none() && !g.inside_a_root(p);
        changes.retain(|c| matches!(c, FileChange::Remove(_)) || plain(&graph, c.path()));
        links.retain(|l| plain(&graph, l));
        let mut dirty = graph.touched(touched.iter().map(String::as_str));
        if regraph {
            let err = Self::read_err(previous.commit);
            // Plain manifests that entered a root, or left one.
            let unchanged: BTreeSet<&str> = touched.iter().map(String::as_str).collect();
            for p in listing.paths.iter().filter(|p| !unchanged.contains(p.as_str())) {
                match (plain(old, p), plain(&graph, p)) {
                    (true, false) => {
                        links.remove(p);
                        sizes.remove(p);
                        changes.push(FileChange::Remove(p.clone()));
                    }
                    (false, true) if filter.accepts(p) => {
                        let read = read_entry(&self.repo, &listing.tree, filter.root(), p).map_err(&err)?;
                        if let FileChange::Write(_, bytes) = &read {
                            sizes.insert(p.clone(), bytes.len() as u64);
                        }
                        changes.push(read);
                    }
                    _ => {}
                }
            }
            // Roots applied before and not now (or under another file name) go; new ones build.
            for k in old.applied() {
                if graph.get(&k.dir).is_none_or(|n| n.file != k.file || graph.is_base(&k.dir)) {
                    changes.push(FileChange::Remove(k.file.clone()));
                }
            }
            for k in graph.applied() {
                if old.get(&k.dir).is_none_or(|o| o.file != k.file || old.is_base(&k.dir) || *o != *k) {
                    dirty.insert(k.dir.clone());
                }
            }
        }
        let dirty: Vec<String> = dirty.into_iter().collect();
        changes.extend(self.builds(&graph, &dirty, listing));
        Ok(graph)
    }
}

/// Reads `path` of `tree` as manifests are read: a symbolic link as the file it leads to, which
/// must be inside the tracked tree `root`; only files, within the per-file limit.
pub(crate) fn read_entry(repo: &Repository, tree: &git2::Tree<'_>, root: &str, path: &str) -> Result<FileChange, git2::Error> {
    let unreadable = |why: String| Ok(FileChange::Unreadable(path.to_owned(), why));
    let mut at = path.to_owned();
    for _ in 0..MAX_LINK_HOPS {
        let Ok(entry) = tree.get_path(Path::new(&at)) else {
            return unreadable(format!("symbolic link dangles: {at} is not in this commit"));
        };
        if entry.kind() != Some(git2::ObjectType::Blob) {
            return unreadable(format!("symbolic link leads to {at}, which is not a file"));
        }
        if entry.filemode() != i32::from(git2::FileMode::Link) {
            // Sized from the object's header, as every other file: an oversized target is
            // never loaded.
            let (size, _) = repo.odb()?.read_header(entry.id())?;
            if let Some(why) = Budget::MANIFEST.file_too_large(size as u64) {
                return unreadable(why);
            }
            let blob = repo.find_blob(entry.id())?;
            return Ok(FileChange::Write(path.to_owned(), blob.content().to_vec()));
        }
        let blob = repo.find_blob(entry.id())?;
        let target = String::from_utf8_lossy(blob.content());
        at = match capstan_manifest::files::resolve_link(&at, &target, root) {
            Ok(p) => p,
            Err(why) => return unreadable(why),
        };
    }
    unreadable(format!("symbolic link does not lead to a file within {MAX_LINK_HOPS} links"))
}

/// The branch HEAD points at: read locally, or asked of the remote.
fn default_branch(repo: &Repository, location: &Location) -> Result<String, RepoError> {
    let from_ref = |name: &str| name.strip_prefix("refs/heads/").map(str::to_owned);
    match location {
        Location::Local(_) => {
            let head = repo.find_reference("HEAD").map_err(|e| RepoError::Open {
                location: location.describe(),
                message: e.message().to_owned(),
            })?;
            Ok(head
                .symbolic_target()
                .ok()
                .flatten()
                .and_then(from_ref)
                .unwrap_or_else(|| "main".to_owned()))
        }
        Location::Remote(url) => {
            let fetch_err = |e: git2::Error| RepoError::Fetch {
                location: url.clone(),
                message: e.message().to_owned(),
            };
            let mut remote = repo.remote_anonymous(url).map_err(fetch_err)?;
            let connection = remote
                .connect_auth(git2::Direction::Fetch, Some(credentials()), None)
                .map_err(fetch_err)?;
            let branch = connection.default_branch().ok().and_then(|b| b.as_str().ok().and_then(from_ref));
            Ok(branch.unwrap_or_else(|| "main".to_owned()))
        }
    }
}
