//! Kustomize in the tracked tree: a directory holding a kustomization is a root, built with the
//! real kustomize and applied like any other objects, unless another root names it (a base).
//! [`refs`] reads what a kustomization references and refuses what it may not (pure), [`graph`]
//! puts a tree's kustomizations together (pure), [`build`] runs kustomize, confined, and
//! [`output`] turns what it prints into the root's objects with their provenance. Both the Git
//! source and `capstan validate` read trees through [`Tree`].

pub mod build;
pub mod dir;
pub mod graph;
pub mod output;
pub mod refs;

use std::sync::atomic::{AtomicUsize, Ordering};

use capstan_manifest::manifest::FileLoad;
use capstan_manifest::problem::{Problem, ProblemCode};
use capstan_manifest::yaml::Pos;

pub use build::Kustomizer;
pub use graph::{Graph, Inputs};
pub use refs::{FILE_NAMES, Kustomization, root_of};

/// The files of a tree as builds read them (a commit's tree, or a directory).
pub trait Tree {
    /// Every file under `dir` (`""`: all), as paths relative to the repository root; files
    /// whose names start with a dot are included (`.env`), directories that do are not.
    fn files_under(&self, dir: &str) -> Vec<String>;
    /// A file's content; symbolic links are read as the file they lead to inside the tree.
    fn read(&self, path: &str) -> Result<Vec<u8>, String>;
    /// Whether `path` is a file of the tree (else it may be a directory, or nothing).
    fn is_file(&self, path: &str) -> bool;
}

/// Files read into memory, for builds on several threads at once.
struct MemoryTree(std::collections::BTreeMap<String, Result<Vec<u8>, String>>);

impl Tree for MemoryTree {
    fn files_under(&self, dir: &str) -> Vec<String> {
        self.0.keys().filter(|p| graph::under(p, dir)).cloned().collect()
    }

    fn read(&self, path: &str) -> Result<Vec<u8>, String> {
        self.0
            .get(path)
            .cloned()
            .unwrap_or_else(|| Err(format!("{path} is not in the tree")))
    }

    fn is_file(&self, path: &str) -> bool {
        self.0.get(path).is_some_and(Result::is_ok)
    }
}

/// Reads the kustomization files `files` of `tree` into their graph; `root` is the tracked
/// sub-path (`""` for the whole repository). A directory with two kustomization files keeps
/// the one kustomize would take first (and kustomize reports the clash when it builds).
pub fn graph(tree: &dyn Tree, files: &[String], root: &str) -> Graph {
    let mut chosen: std::collections::BTreeMap<&str, &String> = std::collections::BTreeMap::new();
    for f in files {
        let Some(dir) = root_of(f) else { continue };
        let rank = |p: &str| FILE_NAMES.iter().position(|n| p.ends_with(n)).unwrap_or(FILE_NAMES.len());
        match chosen.get(dir) {
            Some(other) if rank(other) <= rank(f) => {}
            _ => {
                chosen.insert(dir, f);
            }
        }
    }
    let is_file = |p: &str| tree.is_file(p);
    Graph::new(chosen.into_values().map(|f| match tree.read(f) {
        Ok(bytes) => refs::read(f, &String::from_utf8_lossy(&bytes), root, &is_file),
        Err(why) => Kustomization {
            dir: root_of(f).unwrap_or_default().to_owned(),
            file: f.clone(),
            problems: vec![Problem::new(f, Pos { line: 1, column: 1 }, ProblemCode::Syntax, why)],
            ..Kustomization::default()
        },
    }))
}

/// Builds the roots `dirs` of `graph` with `kustomizer` (several at once, up to the machine's
/// cores) into their loads, one per root, keyed by its kustomization file. A root whose
/// kustomization has problems is not built; a build that fails is one problem at its
/// kustomization file. Without a kustomizer, every root says why.
pub fn build_roots(kustomizer: Result<&Kustomizer, &str>, graph: &Graph, dirs: &[String], tree: &dyn Tree) -> Vec<FileLoad> {
    // Every input read once, here: a tree may not be shared between threads (Git's is not).
    let mut wanted = std::collections::BTreeSet::new();
    for dir in dirs {
        let inputs = graph.inputs(dir);
        wanted.extend(inputs.dirs.iter().flat_map(|d| tree.files_under(d)));
        wanted.extend(inputs.files);
    }
    // Held to the same budget as a tree's manifests: what is past it is not read (and a build
    // that needs it says the file is missing, naming it).
    let mut budget = capstan_manifest::files::TreeBudget::default();
    let tree = MemoryTree(
        wanted
            .into_iter()
            .map(|p| {
                let read = tree.read(&p).and_then(|bytes| budget.take(bytes.len() as u64).map(|()| bytes));
                (p, read)
            })
            .collect(),
    );
    let tree = &tree;
    let one = |dir: &String| -> FileLoad {
        let Some(k) = graph.get(dir) else {
            return FileLoad::default();
        };
        if !k.problems.is_empty() {
            let mut load = FileLoad {
                path: k.file.clone(),
                ..FileLoad::default()
            };
            load.problems = k.problems.clone();
            return load;
        }
        let failed = |why: String| FileLoad::unreadable(&k.file, format!("kustomize build failed: {why}"));
        match kustomizer {
            Err(why) => failed(why.to_owned()),
            Ok(kz) => match kz.build(k, &graph.inputs(dir), tree) {
                Ok(yaml) => output::load(k, &yaml, tree, &graph.named_files(dir)),
                Err(why) => failed(why),
            },
        }
    };
    // One more build at a time than there are cores: while one's process starts or its output is
    // read and checked here, the cores still have kustomize work.
    let threads = (std::thread::available_parallelism().map_or(1, |n| n.get()) + 1).min(dirs.len());
    if threads <= 1 {
        return dirs.iter().map(one).collect();
    }
    let next = AtomicUsize::new(0);
    let mut loads: Vec<(usize, FileLoad)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(dir) = dirs.get(i) else { break done };
                        done.push((i, one(dir)));
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("a build does not panic"))
            .collect()
    });
    loads.sort_by_key(|(i, _)| *i);
    loads.into_iter().map(|(_, l)| l).collect()
}
