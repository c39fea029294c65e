//! A build that takes too long, or prints too much, is stopped with a clear error naming the
//! limit, and leaves nothing behind; the kustomize here is a stand-in script (named with
//! `--kustomize`, as a user would name theirs), since the real one cannot be made slow.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use capstan_kustomize::Kustomizer;
use capstan_kustomize::dir::DirTree;

/// A directory with one root, and a stand-in kustomize that runs `build` as told.
fn setup(build: &str) -> (tempfile::TempDir, Kustomizer) {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(tree.join("app")).unwrap();
    std::fs::write(tree.join("app/kustomization.yaml"), "resources: []\n").unwrap();
    let script = dir.path().join("kustomize");
    std::fs::write(
        &script,
        format!("#!/bin/sh\nif [ \"$1\" = version ]; then echo v0.0.0-stand-in; exit 0; fi\n{build}\n"),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let k = Kustomizer::find(Some(&script)).unwrap();
    assert_eq!(k.version, "v0.0.0-stand-in");
    (dir, k)
}

fn build(dir: &tempfile::TempDir, k: &Kustomizer) -> Result<Vec<u8>, String> {
    let tree = DirTree::open(&dir.path().join("tree")).unwrap();
    let files = vec!["app/kustomization.yaml".to_owned()];
    let graph = capstan_kustomize::graph(&tree, &files, "");
    let root = graph.get("app").unwrap();
    k.build(root, &graph.inputs("app"), &tree)
}

#[test]
fn a_build_past_its_time_is_stopped() {
    let (dir, mut k) = setup("exec sleep 30");
    k.timeout = Duration::from_millis(500);
    let started = Instant::now();
    let err = build(&dir, &k).unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(10), "stopped, not waited for");
    assert_eq!(err, "the build took longer than 0.5 s and was stopped");
}

#[test]
fn a_build_printing_too_much_is_stopped() {
    let (dir, mut k) = setup("exec yes 'apiVersion: v1'");
    k.max_output = 1 << 20;
    let err = build(&dir, &k).unwrap_err();
    assert_eq!(err, "the build printed more than 1048576 bytes of YAML and was stopped");
}

#[test]
fn a_build_that_fails_says_what_kustomize_said() {
    let (dir, k) = setup("echo 'Error: accumulating resources: nope' >&2; exit 1");
    assert_eq!(build(&dir, &k).unwrap_err(), "accumulating resources: nope");
}

#[test]
fn a_build_whose_child_keeps_the_output_open_is_not_waited_for() {
    // The stand-in forks a child that inherits the output and outlives it.
    let pids = tempfile::NamedTempFile::new().unwrap();
    let (dir, mut k) = setup(&format!("sleep 30 &\necho $! > {}\nwait", pids.path().display()));
    k.timeout = Duration::from_millis(500);
    let started = Instant::now();
    let err = build(&dir, &k);
    // The child is the test's to remove.
    let pid = std::fs::read_to_string(pids.path()).unwrap();
    let _ = std::process::Command::new("kill").arg(pid.trim()).status();
    let err = err.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    assert!(err.starts_with("the build took longer than 0.5 s"), "{err}");
}
