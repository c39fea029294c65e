//! For tests and benchmarks: the `git` command line as a user runs it, with a fixed identity
//! and `main` as the first branch, so that the commits they make need no global configuration.

use std::path::Path;
use std::process::Command;

/// Runs `git ARGS` in `dir`; panics with git's own message if it fails. Returns what git
/// printed, trimmed.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=Test",
            "-c",
            "user.email=test@example.com",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?} in {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}
