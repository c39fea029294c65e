//! Running the real kustomize on one root: the files its build reads (and nothing else) are
//! written into a temporary directory of their own, the root's kustomization is told to record
//! where each object came from (origin annotations), and kustomize runs there without plugins,
//! exec functions or Helm, within a time and an output limit. The directory goes with the build.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::Tree;
use crate::graph::Inputs;
use crate::refs::Kustomization;

/// How long one build may take.
pub const BUILD_TIMEOUT: Duration = Duration::from_secs(60);
/// Most bytes of YAML one build may print.
pub const MAX_OUTPUT_BYTES: usize = 64 << 20;

/// The kustomize Capstan builds with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kustomizer {
    /// As named (`kubectl`, or `--kustomize`'s path), for messages.
    program: PathBuf,
    /// Where it is: a build runs this path, so that the process is spawned rather than forked
    /// (a bare name with the environment's PATH set makes the standard library fork, which
    /// copies the daemon's page tables: most of a build's cost on the daemon's side).
    path: PathBuf,
    /// `kubectl kustomize DIR` or `kustomize build DIR`.
    subcommand: &'static str,
    /// What it says its version is (`v5.5.0`).
    pub version: String,
    /// How long one build may take, and how much YAML it may print.
    pub timeout: Duration,
    pub max_output: usize,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NoKustomize(String);

impl Kustomizer {
    /// `explicit` (`--kustomize PATH`), else a `kustomize` on the PATH, else `kubectl kustomize`.
    pub fn find(explicit: Option<&Path>) -> Result<Kustomizer, NoKustomize> {
        if let Some(p) = explicit {
            let is_kubectl = p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("kubectl"));
            return Kustomizer::probe(p.to_path_buf(), if is_kubectl { "kustomize" } else { "build" })
                .ok_or_else(|| NoKustomize(format!("--kustomize {}: it does not run as kustomize", p.display())));
        }
        Kustomizer::probe("kustomize".into(), "build")
            .or_else(|| Kustomizer::probe("kubectl".into(), "kustomize"))
            .ok_or_else(|| NoKustomize("neither kustomize nor kubectl is on the PATH: install one, or name it with --kustomize".into()))
    }

    fn probe(program: PathBuf, subcommand: &'static str) -> Option<Kustomizer> {
        let args: &[&str] = if subcommand == "build" {
            &["version"]
        } else {
            &["version", "--client"]
        };
        let path = on_path(&program)?;
        let out = Command::new(&path).args(args).stderr(Stdio::null()).output().ok()?;
        if !out.status.success() {
            return None;
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let version = text
            .lines()
            .find_map(|l| l.strip_prefix("Kustomize Version:"))
            .map(str::trim)
            .or_else(|| (subcommand == "build").then(|| text.trim()))
            .filter(|v| !v.is_empty())?
            .to_owned();
        Some(Kustomizer {
            program,
            path,
            subcommand,
            version,
            timeout: BUILD_TIMEOUT,
            max_output: MAX_OUTPUT_BYTES,
        })
    }

    /// `kustomize v5.5.0 (kubectl kustomize)`, for logs and `capstan validate`.
    pub fn describe(&self) -> String {
        let how = if self.subcommand == "build" {
            format!("{} build", self.program.display())
        } else {
            format!("{} kustomize", self.program.display())
        };
        format!("kustomize {} ({how})", self.version)
    }

    /// Builds `k`, reading `inputs` from `tree`: the YAML kustomize prints, or its message.
    pub fn build(&self, k: &Kustomization, inputs: &Inputs, tree: &dyn Tree) -> Result<Vec<u8>, String> {
        let dir = tempfile::Builder::new()
            .prefix("capstan-kustomize-")
            .tempdir_in(scratch())
            .map_err(|e| format!("a directory for the build: {e}"))?;
        let top = dir.path().join("tree");
        let mut paths: Vec<String> = inputs.dirs.iter().flat_map(|d| tree.files_under(d)).collect();
        paths.extend(inputs.files.iter().cloned());
        paths.sort();
        paths.dedup();
        for path in &paths {
            // A file named but not there: kustomize says so, naming it.
            let Ok(mut bytes) = tree.read(path) else { continue };
            if *path == k.file {
                bytes = with_origin_annotations(k, bytes);
            }
            let target = top.join(path);
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent).map_err(|e| format!("writing the build's files: {e}"))?;
            }
            std::fs::write(&target, bytes).map_err(|e| format!("writing the build's files: {e}"))?;
        }
        let root = if k.dir.is_empty() { top.clone() } else { top.join(&k.dir) };
        std::fs::create_dir_all(&root).map_err(|e| format!("writing the build's files: {e}"))?;
        let plugins = dir.path().join("no-plugins");
        let mut child = Command::new(&self.path)
            .arg(self.subcommand)
            .arg(&root)
            .arg("--load-restrictor=LoadRestrictionsNone")
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", dir.path())
            .env("KUSTOMIZE_PLUGIN_HOME", &plugins)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("running {}: {e}", self.program.display()))?;
        let mut stdout = child.stdout.take().expect("piped");
        let (timeout, max_output) = (self.timeout, self.max_output);
        // The build ends when kustomize closes its output (it exits): no polling, a build takes
        // tens of milliseconds. Past the time limit it is killed; a process it left behind that
        // still holds the output is not waited for (its reader is left to end with it).
        let (read_tx, read_rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut out = Vec::new();
            let read = (&mut stdout).take(max_output as u64 + 1).read_to_end(&mut out);
            let _ = read_tx.send(read.map(|_| out).unwrap_or_default());
        });
        let mut stderr = child.stderr.take().expect("piped");
        let (err_tx, err_rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut err = Vec::new();
            let _ = (&mut stderr).take(64 << 10).read_to_end(&mut err);
            // The rest is drained, so that kustomize never blocks on a full pipe.
            let _ = std::io::copy(&mut stderr, &mut std::io::sink());
            let _ = err_tx.send(err);
        });
        let out = read_rx.recv_timeout(timeout).ok();
        if out.as_ref().is_none_or(|o| o.len() > max_output) {
            let _ = child.kill();
        }
        let waited = child.wait();
        let err = err_rx.recv_timeout(Duration::from_secs(1)).unwrap_or_default();
        let (status, out) = match (waited, out) {
            (Err(e), _) => return Err(format!("waiting for kustomize: {e}")),
            (Ok(_), None) => (None, Vec::new()),
            (Ok(status), Some(out)) => (Some(status), out),
        };
        let scrub = |text: &str| {
            let prefix = format!("{}/", top.display());
            text.replace(&prefix, "").replace(&top.display().to_string(), ".").trim().to_owned()
        };
        match status {
            None => Err(format!("the build took longer than {} s and was stopped", timeout.as_secs_f64())),
            Some(_) if out.len() > max_output => Err(format!("the build printed more than {max_output} bytes of YAML and was stopped")),
            Some(s) if s.success() => Ok(out),
            Some(_) => Err(kustomize_message(&scrub(&String::from_utf8_lossy(&err)))),
        }
    }
}

/// `program` itself when it names a path, else the first executable of that name on the PATH.
fn on_path(program: &Path) -> Option<PathBuf> {
    if program.components().count() > 1 {
        return Some(program.to_path_buf());
    }
    let executable = |p: &Path| {
        use std::os::unix::fs::PermissionsExt;
        p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|p| executable(p))
}

/// Where builds put their files: `TMPDIR` when it is set, else memory (`/dev/shm`) where there
/// is one — creating and removing a directory tree per build costs a disk's file system more
/// than the build's own work (a fifth of a full load on this machine's ext4) — else `/tmp`.
fn scratch() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if std::env::var_os("TMPDIR").is_none() && shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

/// What kustomize said, without the logger's decoration: kubectl prints
/// `E1205 02:23:16.625968 27398 run.go:72] "command failed" err="…"`, kustomize `Error: …`.
fn kustomize_message(stderr: &str) -> String {
    let mut lines = stderr.lines().skip_while(|l| l.trim().is_empty());
    let line = lines.next().unwrap_or_default();
    // A message of several lines: `err=<` then the lines, tab-indented, then ` >`.
    if line.ends_with(" err=<") {
        let parts: Vec<&str> = lines
            .take_while(|l| l.trim() != ">")
            .map(|l| l.trim())
            .filter(|l| !l.is_empty() && *l != "`")
            .collect();
        return parts.join(" ");
    }
    if let Some((_, quoted)) = line.split_once(" err=\"") {
        let inner = quoted.strip_suffix('"').unwrap_or(quoted);
        return inner.replace("\\\"", "\"").replace("\\\\", "\\");
    }
    let text = stderr.trim();
    ["Error: ", "error: "]
        .iter()
        .find_map(|p| text.strip_prefix(p))
        .unwrap_or(text)
        .to_owned()
}

/// The root's kustomization, told to record each object's origin (`buildMetadata:
/// [originAnnotations]`), which the provenance annotations are made from.
fn with_origin_annotations(k: &Kustomization, bytes: Vec<u8>) -> Vec<u8> {
    if k.origin_annotations {
        return bytes;
    }
    let text = String::from_utf8_lossy(&bytes);
    // A kustomization written as a flow mapping (JSON), or with a buildMetadata of its own, is
    // read, changed and written back as JSON (which is YAML); any other gets a line more.
    if !k.build_metadata && !text.trim_start().starts_with('{') {
        let mut out = text.into_owned();
        if !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str("buildMetadata: [originAnnotations]\n");
        return out.into_bytes();
    }
    let Ok(docs) = capstan_manifest::yaml::parse(&text) else {
        return bytes;
    };
    let Some(doc) = docs.first() else { return bytes };
    let mut value = capstan_manifest::shape::to_json(&doc.root);
    let Some(map) = value.as_object_mut() else { return bytes };
    let list = map.entry("buildMetadata").or_insert_with(|| serde_json::Value::Array(Vec::new()));
    if let Some(items) = list.as_array_mut() {
        items.push(serde_json::Value::String("originAnnotations".into()));
    }
    serde_json::to_vec(&value).unwrap_or(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_name_is_found_on_the_path_and_a_path_kept() {
        let sh = on_path(Path::new("sh")).expect("sh is on the PATH");
        assert!(sh.is_absolute() && sh.ends_with("sh"), "{}", sh.display());
        assert_eq!(on_path(Path::new("./bin/kustomize")), Some(PathBuf::from("./bin/kustomize")));
        assert_eq!(on_path(Path::new("no-such-program-anywhere")), None);
    }

    fn k(origin: bool, build_metadata: bool) -> Kustomization {
        Kustomization {
            origin_annotations: origin,
            build_metadata,
            ..Kustomization::default()
        }
    }

    #[test]
    fn kustomize_messages_lose_the_loggers_decoration() {
        let kubectl = r#"E1205 02:23:16.625968   27398 run.go:72] "command failed" err="accumulating resources: open \"x\": no such file""#;
        assert_eq!(kustomize_message(kubectl), r#"accumulating resources: open "x": no such file"#);
        assert_eq!(
            kustomize_message("Error: accumulating resources: boom\n"),
            "accumulating resources: boom"
        );
    }

    #[test]
    fn the_root_is_told_to_record_origins_once() {
        let plain = with_origin_annotations(&k(false, false), b"resources: [a.yaml]".to_vec());
        assert_eq!(
            String::from_utf8(plain).unwrap(),
            "resources: [a.yaml]\nbuildMetadata: [originAnnotations]\n"
        );
        let own = with_origin_annotations(&k(false, true), b"buildMetadata: [managedByLabel]\n".to_vec());
        assert_eq!(
            String::from_utf8(own).unwrap(),
            r#"{"buildMetadata":["managedByLabel","originAnnotations"]}"#
        );
        let already = b"buildMetadata: [originAnnotations]\n".to_vec();
        assert_eq!(with_origin_annotations(&k(true, true), already.clone()), already);
    }
}
