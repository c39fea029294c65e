//! Helpers shared by the end-to-end tests: whether the Docker Engine is there (a test that needs
//! it fails in CI when it is missing, and skips loudly elsewhere), and resources labelled with a
//! per-run id that are removed when the guard drops, also when the test fails.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Label on every container, network and image a test makes; `scripts/test.sh` sweeps leftovers.
pub const TEST_LABEL: &str = "capstan.test";

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// True when the Docker Engine answers. In CI (CI=true) a missing Engine fails the test.
pub fn docker_available(test: &str) -> bool {
    let ok = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{test}: the Docker Engine is required in CI and does not answer");
        }
        eprintln!("\n*** SKIPPING {test}: no Docker Engine answers on this machine ***\n");
    }
    ok
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

pub fn run_ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Builds the example's and the tests' images (kept when they exist).
pub fn build_images() {
    run_ok(&mut Command::new(
        repo_root().join("examples-repo/images/build.sh"),
    ));
}

/// A run id and the Docker resources made under it, removed on drop.
pub struct DockerRun {
    pub id: String,
}

impl DockerRun {
    pub fn new(test: &str) -> DockerRun {
        DockerRun {
            id: format!("{test}-{}", std::process::id()),
        }
    }

    pub fn label(&self) -> String {
        format!("{TEST_LABEL}={}", self.id)
    }

    pub fn network(&self) -> String {
        let name = format!("capstan-test-{}", self.id);
        run_ok(Command::new("docker").args(["network", "create", "--label", &self.label(), &name]));
        name
    }

    /// Starts a detached container on `network`; returns its IP address there.
    pub fn container(&self, name: &str, network: &str, args: &[&str]) -> String {
        let full = format!("capstan-test-{}-{name}", self.id);
        run_ok(
            Command::new("docker")
                .args([
                    "run",
                    "-d",
                    "--name",
                    &full,
                    "--label",
                    &self.label(),
                    "--network",
                    network,
                ])
                .args(args),
        );
        run_ok(Command::new("docker").args([
            "inspect",
            "-f",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            &full,
        ]))
    }

    /// Runs a one-off container to completion and returns its output.
    pub fn oneoff(&self, network: &str, args: &[&str]) -> Output {
        run(Command::new("docker")
            .args([
                "run",
                "--rm",
                "--label",
                &self.label(),
                "--network",
                network,
            ])
            .args(args))
    }
}

impl Drop for DockerRun {
    fn drop(&mut self) {
        let filter = format!("label={}", self.label());
        let ids = run(Command::new("docker").args(["ps", "-aq", "--filter", &filter]));
        for id in String::from_utf8_lossy(&ids.stdout).split_whitespace() {
            let _ = run(Command::new("docker").args(["rm", "-f", id]));
        }
        let nets = run(Command::new("docker").args(["network", "ls", "-q", "--filter", &filter]));
        for id in String::from_utf8_lossy(&nets.stdout).split_whitespace() {
            let _ = run(Command::new("docker").args(["network", "rm", id]));
        }
    }
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}
