//! What one kustomization file reads, worked out without running kustomize: the directories
//! (bases, components, other roots) and the files (resources, patches, generator inputs) it
//! names, each resolved against the repository tree — and why a reference is refused: remote
//! resources, Helm charts, absolute paths, paths that leave the tracked tree. Pure.
//!
//! Confinement rests here: a build only sees the files its references name (see the build), and
//! a reference that would read anything else is a located problem before kustomize runs.

pub use capstan_manifest::files::join as resolve;
use capstan_manifest::problem::{Problem, ProblemCode};
use capstan_manifest::yaml::{self, Node, NodeValue, Pos, ScalarKind};

/// The file names kustomize looks for in a directory, in its order.
pub const FILE_NAMES: [&str; 3] = ["kustomization.yaml", "kustomization.yml", "Kustomization"];

/// Whether `path` names a kustomization file; its directory then, `""` for the top.
pub fn root_of(path: &str) -> Option<&str> {
    let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
    FILE_NAMES.contains(&name).then_some(dir)
}

/// One kustomization and what it reads.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Kustomization {
    /// Its directory, relative to the repository root (`""` for the top).
    pub dir: String,
    /// The kustomization file's path.
    pub file: String,
    /// Directories it names (resources, bases, components, generator and transformer
    /// kustomizations), relative to the repository root.
    pub dirs: Vec<String>,
    /// Files it names outside its own directory's tree, or inside it (all files, either way).
    pub files: Vec<String>,
    /// References it may not make, located in the kustomization file.
    pub problems: Vec<Problem>,
    /// Whether it says `buildMetadata: [originAnnotations]` itself, and whether it has a
    /// `buildMetadata` at all (the build adds the annotations the provenance needs).
    pub origin_annotations: bool,
    pub build_metadata: bool,
}

/// How a reference is read: a path, or (for patches and generator configs) inline YAML.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ref {
    /// A file or a directory (resources, bases, components, generators, transformers, validators).
    FileOrDir,
    /// A file only (patches, CRDs, configurations, generator inputs).
    File,
}

/// Reads the kustomization at `file` (`text`): what it references, resolved within the tracked
/// tree `root` (the sub-path, `""` for the whole repository). `is_file` says whether a path of
/// the tree is a file (anything else is taken for a directory).
pub fn read(file: &str, text: &str, root: &str, is_file: &dyn Fn(&str) -> bool) -> Kustomization {
    let dir = root_of(file).unwrap_or_default().to_owned();
    let mut k = Kustomization {
        dir: dir.clone(),
        file: file.to_owned(),
        ..Kustomization::default()
    };
    let docs = match yaml::parse(text) {
        Ok(d) => d,
        Err(e) => {
            k.problems.push(Problem::new(file, e.pos, ProblemCode::Syntax, e.message));
            return k;
        }
    };
    let Some(doc) = docs.first() else { return k };
    let NodeValue::Map(entries) = &doc.root.value else {
        if !matches!(&doc.root.value, NodeValue::Scalar(s) if s.is_null()) {
            k.problems.push(Problem::new(
                file,
                doc.root.pos,
                ProblemCode::NotAnObject,
                "a kustomization must be a mapping",
            ));
        }
        return k;
    };
    let mut reader = Reader { k: &mut k, root, is_file };
    for e in entries {
        let field = e.key.as_str();
        match field {
            "resources" | "bases" | "components" | "generators" | "transformers" | "validators" => {
                reader.list(field, &e.value, Ref::FileOrDir)
            }
            "crds" | "configurations" => reader.list(field, &e.value, Ref::File),
            "patchesStrategicMerge" => reader.list(field, &e.value, Ref::File),
            "patches" | "patchesJson6902" | "replacements" => {
                for (i, item) in items(&e.value) {
                    if let Some(path) = map_get(item, "path") {
                        reader.reference(&format!("{field}[{i}].path"), path, Ref::File);
                    }
                }
            }
            "openapi" => {
                if let Some(path) = map_get(&e.value, "path") {
                    reader.reference("openapi.path", path, Ref::File);
                }
            }
            "configMapGenerator" | "secretGenerator" => {
                for (i, item) in items(&e.value) {
                    for list in ["files", "envs"] {
                        for (j, entry) in map_get(item, list).into_iter().flat_map(items) {
                            let field = format!("{field}[{i}].{list}[{j}]");
                            match scalar(entry) {
                                // `key=path` or `path`.
                                Some(text) => {
                                    let path = text.split_once('=').map_or(text, |(_, p)| p);
                                    reader.path(&field, path, entry.pos, Ref::File);
                                }
                                None => reader.not_a_path(&field, entry.pos),
                            }
                        }
                    }
                    if let Some(env) = map_get(item, "env") {
                        reader.reference(&format!("{field}[{i}].env"), env, Ref::File);
                    }
                }
            }
            "helmCharts" | "helmGlobals" | "helmChartInflationGenerator" => reader.k.problems.push(
                Problem::new(
                    file,
                    e.key_pos,
                    ProblemCode::InvalidValue,
                    "Helm charts are not rendered by Capstan: render the chart into the repository (helm template) and commit its output",
                )
                .field(field),
            ),
            "buildMetadata" => {
                reader.k.build_metadata = true;
                reader.k.origin_annotations = items(&e.value).any(|(_, n)| scalar(n) == Some("originAnnotations"));
            }
            _ => {}
        }
    }
    k.dirs.sort();
    k.dirs.dedup();
    k.files.sort();
    k.files.dedup();
    k
}

struct Reader<'a> {
    k: &'a mut Kustomization,
    root: &'a str,
    is_file: &'a dyn Fn(&str) -> bool,
}

impl Reader<'_> {
    /// A list of references (strings; inline YAML, for patches and plugin configs, is skipped).
    fn list(&mut self, field: &str, node: &Node, how: Ref) {
        for (i, item) in items(node) {
            match (&item.value, scalar(item)) {
                (_, Some(text)) if text.contains('\n') => {} // an inline patch or config
                (_, Some(text)) => self.path(&format!("{field}[{i}]"), text, item.pos, how),
                (NodeValue::Map(_), None) => {} // an inline patch or config
                _ => self.not_a_path(&format!("{field}[{i}]"), item.pos),
            }
        }
    }

    fn reference(&mut self, field: &str, node: &Node, how: Ref) {
        match scalar(node) {
            Some(text) => self.path(field, text, node.pos, how),
            None => self.not_a_path(field, node.pos),
        }
    }

    fn not_a_path(&mut self, field: &str, pos: Pos) {
        self.problem(field, pos, "expected a path (a string)".into());
    }

    fn problem(&mut self, field: &str, pos: Pos, message: String) {
        let p = Problem::new(&self.k.file, pos, ProblemCode::InvalidValue, message).field(field);
        self.k.problems.push(p);
    }

    /// One path as written in the kustomization.
    fn path(&mut self, field: &str, text: &str, pos: Pos, how: Ref) {
        if is_remote(text) {
            return self.problem(
                field,
                pos,
                format!("{text:?} is remote: remote resources are not fetched: vendor the base into the repository"),
            );
        }
        if text.starts_with('/') {
            return self.problem(
                field,
                pos,
                format!("{text:?} is an absolute path: name files inside the repository, relative to the kustomization"),
            );
        }
        let Some(resolved) = resolve(&self.k.dir, text) else {
            return self.problem(field, pos, format!("{text:?} leaves the repository"));
        };
        let inside = self.root.is_empty() || resolved == self.root || resolved.starts_with(&format!("{}/", self.root));
        if !inside {
            return self.problem(
                field,
                pos,
                format!("{text:?} leaves the tracked tree {:?}: builds read only files inside it", self.root),
            );
        }
        if how == Ref::File || (self.is_file)(&resolved) {
            self.k.files.push(resolved);
        } else {
            self.k.dirs.push(resolved);
        }
    }
}

/// Whether a reference names something kustomize would fetch over the network: a URL, a Git
/// address (`github.com/org/repo//path?ref=v1`, `git@host:repo`), or a Git reference query.
fn is_remote(text: &str) -> bool {
    text.contains("://")
        || text.starts_with("git@")
        || text.contains("?ref=")
        || text.contains("?version=")
        || ["github.com/", "gitlab.com/", "bitbucket.org/"].iter().any(|h| text.starts_with(h))
}

fn items(node: &Node) -> impl Iterator<Item = (usize, &Node)> {
    let list = match &node.value {
        NodeValue::Seq(items) => items.as_slice(),
        _ => &[],
    };
    list.iter().enumerate()
}

fn map_get<'a>(node: &'a Node, key: &str) -> Option<&'a Node> {
    match &node.value {
        NodeValue::Map(entries) => entries.iter().find(|e| e.key == key).map(|e| &e.value),
        _ => None,
    }
}

fn scalar(node: &Node) -> Option<&str> {
    match &node.value {
        NodeValue::Scalar(s) if s.kind != ScalarKind::Plain || !s.is_null() => Some(s.text.as_str()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(k: &Kustomization) -> Vec<&str> {
        k.files.iter().map(String::as_str).collect()
    }

    #[test]
    fn references_are_resolved_against_the_tree() {
        let text = "resources:\n- ../../base\n- deployment.yaml\ncomponents: [../../components/tls]\npatches:\n- path: patch.yaml\n- patch: |-\n    - op: replace\n      path: /spec/replicas\n      value: 3\n  target: {kind: Deployment}\npatchesStrategicMerge:\n- ../common/resources.yaml\nconfigMapGenerator:\n- name: cfg\n  files: [app.properties, key=conf/other.ini]\n  envs: [.env]\nsecretGenerator:\n- name: s\n  env: secret.env\nopenapi: {path: schema.json}\nbuildMetadata: [originAnnotations]\n";
        let is_file = |p: &str| p.ends_with(".yaml");
        let k = read("apps/overlays/prod/kustomization.yaml", text, "", &is_file);
        assert!(k.problems.is_empty(), "{:?}", k.problems);
        assert_eq!(k.dir, "apps/overlays/prod");
        assert_eq!(k.dirs, vec!["apps/base", "apps/components/tls"]);
        assert_eq!(
            files(&k),
            vec![
                "apps/overlays/common/resources.yaml",
                "apps/overlays/prod/.env",
                "apps/overlays/prod/app.properties",
                "apps/overlays/prod/conf/other.ini",
                "apps/overlays/prod/deployment.yaml",
                "apps/overlays/prod/patch.yaml",
                "apps/overlays/prod/schema.json",
                "apps/overlays/prod/secret.env",
            ]
        );
        assert!(k.origin_annotations && k.build_metadata);
    }

    #[test]
    fn remote_absolute_and_escaping_references_and_helm_are_refused_where_they_are_written() {
        let text = "resources:\n- github.com/org/repo//deploy?ref=v1\n- https://example.com/app.yaml\n- /etc/shadow\n- ../../../outside\nhelmCharts:\n- name: redis\n";
        let k = read("deploy/app/kustomization.yaml", text, "deploy", &|_| false);
        let lines: Vec<String> = k.problems.iter().map(|p| p.to_string()).collect();
        assert_eq!(lines.len(), 5, "{lines:#?}");
        assert!(
            lines[0].starts_with("deploy/app/kustomization.yaml:2:3: resources[0]: ")
                && lines[0].contains("remote resources are not fetched: vendor the base into the repository"),
            "{lines:#?}"
        );
        assert!(lines[1].contains("remote resources are not fetched"), "{lines:#?}");
        assert!(lines[2].contains("absolute path"), "{lines:#?}");
        assert!(lines[3].contains("leaves the repository"), "{lines:#?}");
        assert!(
            lines[4].starts_with("deploy/app/kustomization.yaml:6:1: helmCharts: Helm charts are not rendered"),
            "{lines:#?}"
        );
        assert!(k.dirs.is_empty() && k.files.is_empty());
        // Inside the repository but outside the tracked sub-path.
        let k = read(
            "deploy/app/kustomization.yaml",
            "resources: [../../other/base]\n",
            "deploy",
            &|_| false,
        );
        assert!(
            k.problems[0].message.contains("leaves the tracked tree \"deploy\""),
            "{:?}",
            k.problems
        );
    }

    #[test]
    fn kustomization_files_and_their_roots() {
        assert_eq!(root_of("a/b/kustomization.yaml"), Some("a/b"));
        assert_eq!(root_of("Kustomization"), Some(""));
        assert_eq!(root_of("a/kustomization.yml"), Some("a"));
        assert_eq!(root_of("a/kustomize.yaml"), None);
        assert_eq!(resolve("a/b", "../c/./d"), Some("a/c/d".into()));
        assert_eq!(resolve("a", "../../x"), None);
    }
}
