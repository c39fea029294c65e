//! Helpers shared by the end-to-end tests: whether the Docker Engine is there (a test that needs
//! it fails in CI when it is missing, and skips loudly elsewhere), and resources labelled with a
//! per-run id that are removed when the guard drops, also when the test fails.

#![allow(dead_code)]

pub mod lab;

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
    run_ok(&mut Command::new(repo_root().join("examples-repo/images/build.sh")));
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
                .args(["run", "-d", "--name", &full, "--label", &self.label(), "--network", network])
                .args(args),
        );
        run_ok(Command::new("docker").args(["inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", &full]))
    }

    /// Runs a one-off container to completion and returns its output.
    pub fn oneoff(&self, network: &str, args: &[&str]) -> Output {
        run(Command::new("docker")
            .args(["run", "--rm", "--label", &self.label(), "--network", network])
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

pub use capstan_git::fixture::git;

/// Real etcd members on loopback for a daemon's `--store` (their data in the directory
/// returned); declare them before the cluster, so that they outlive its daemon.
pub fn etcd(members: usize) -> (tempfile::TempDir, capstan_store::local_etcd::LocalEtcd) {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let etcd = rt
        .block_on(capstan_store::local_etcd::LocalEtcd::start(dir.path(), members))
        .expect("etcd members on loopback");
    (dir, etcd)
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A temporary directory with a repository `repo` holding `files` in one commit.
fn init_repo(files: &[(&str, &str)]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q"]);
    for (path, text) in files {
        let p = repo.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "--allow-empty", "-m", "initial"]);
    (dir, repo)
}

/// A `capstan daemon` process tracking a repository made with the git CLI, killed on drop.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub repo: PathBuf,
    pub data: PathBuf,
    pub child: std::process::Child,
    /// The daemon's command line, for restarts.
    args: Vec<String>,
    /// A command the daemon runs under (a lab host's `scripts/lab.sh exec N`), or none.
    wrapper: Vec<String>,
}

impl Cluster {
    /// Starts a daemon on a new repository holding `files` (path, content).
    pub fn start(files: &[(&str, &str)]) -> Cluster {
        Cluster::start_with(files, &[])
    }

    /// As `start`, with extra daemon flags.
    pub fn start_with(files: &[(&str, &str)], daemon_args: &[&str]) -> Cluster {
        let (dir, repo) = init_repo(files);
        let tracked = path_str(&repo).to_owned();
        Cluster::launch(dir, repo, &tracked, daemon_args)
    }

    /// As `start_with`, but the daemon tracks a bare clone of the working repository through a
    /// file:// URL (a remote: polled, or fetched on a webhook); `push` publishes to it.
    pub fn start_remote(files: &[(&str, &str)], daemon_args: &[&str]) -> Cluster {
        let (dir, repo) = init_repo(files);
        let remote = dir.path().join("remote.git");
        git(dir.path(), &["clone", "-q", "--bare", path_str(&repo), path_str(&remote)]);
        git(&repo, &["remote", "add", "origin", path_str(&remote)]);
        let url = format!("file://{}", path_str(&remote));
        Cluster::launch(dir, repo, &url, daemon_args)
    }

    /// Pushes the working repository's branch to the remote of `start_remote`.
    pub fn push(&self) {
        git(&self.repo, &["push", "-q", "origin", "HEAD"]);
    }

    /// As `start_with`, the daemon run under `wrapper` (a command that runs the rest of its
    /// command line, such as `scripts/lab.sh exec 1` for a lab host).
    pub fn start_under(wrapper: &[&str], files: &[(&str, &str)], daemon_args: &[&str]) -> Cluster {
        let (dir, repo) = init_repo(files);
        let tracked = path_str(&repo).to_owned();
        let wrapper: Vec<String> = wrapper.iter().map(|s| s.to_string()).collect();
        Cluster::launch_under(dir, repo, &tracked, daemon_args, wrapper)
    }

    fn launch(dir: tempfile::TempDir, repo: PathBuf, tracked: &str, daemon_args: &[&str]) -> Cluster {
        Cluster::launch_under(dir, repo, tracked, daemon_args, Vec::new())
    }

    fn launch_under(dir: tempfile::TempDir, repo: PathBuf, tracked: &str, daemon_args: &[&str], wrapper: Vec<String>) -> Cluster {
        let data = dir.path().join("data");
        let mut args: Vec<String> = ["daemon", "--repo", tracked, "--data-dir", path_str(&data)]
            .iter()
            .map(|s| s.to_string())
            .collect();
        if !daemon_args.contains(&"--listen") {
            args.extend(["--listen".into(), "127.0.0.1:0".into()]);
        }
        args.extend(daemon_args.iter().map(|s| s.to_string()));
        let child = Cluster::spawn_daemon(dir.path(), &wrapper, &args);
        let cluster = Cluster {
            dir,
            repo,
            data,
            child,
            args,
            wrapper,
        };
        cluster.wait_until("the API server answers", || {
            cluster.kubectl(&["get", "--raw", "/readyz"]).status.success()
        });
        cluster
    }

    fn spawn_daemon(dir: &Path, wrapper: &[String], args: &[String]) -> std::process::Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("daemon.log"))
            .unwrap();
        let mut command = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(env!("CARGO_BIN_EXE_capstan"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_capstan")),
        };
        command
            .args(args)
            .env("CAPSTAN_LOG", "info")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    /// Kills the daemon with SIGKILL and starts it again on the same data (and, given a fixed
    /// `--listen`, the same address, so that node agents find it again).
    pub fn kill9_and_restart_daemon(&mut self) {
        self.kill9_and_restart_daemon_after(std::time::Duration::ZERO);
    }

    /// As `kill9_and_restart_daemon`, with the daemon down for `down`.
    pub fn kill9_and_restart_daemon_after(&mut self, down: std::time::Duration) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::thread::sleep(down);
        self.child = Cluster::spawn_daemon(self.dir.path(), &self.wrapper, &self.args);
        self.wait_until("the restarted API server answers", || {
            self.kubectl(&["get", "--raw", "/readyz"]).status.success()
        });
    }

    /// Stops the daemon and starts it again on the same data with `extra` flags added.
    /// Restarts the daemon without the flag `flag` and its value (a later `restart_daemon_with`
    /// added).
    pub fn restart_daemon_without(&mut self, flag: &str) {
        if let Some(i) = self.args.iter().position(|a| a == flag) {
            self.args.drain(i..(i + 2).min(self.args.len()));
        }
        self.restart_daemon_with(&[]);
    }

    pub fn restart_daemon_with(&mut self, extra: &[&str]) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.args.extend(extra.iter().map(|s| s.to_string()));
        self.child = Cluster::spawn_daemon(self.dir.path(), &self.wrapper, &self.args);
        self.wait_until("the restarted API server answers", || {
            self.kubectl(&["get", "--raw", "/readyz"]).status.success()
        });
    }

    /// The API server's URL, from the kubeconfig the daemon wrote.
    pub fn server(&self) -> String {
        let text = std::fs::read_to_string(self.kubeconfig()).unwrap();
        let line = text.lines().find(|l| l.trim_start().starts_with("server:")).expect("a server line");
        line.trim_start().trim_start_matches("server:").trim().trim_matches('"').to_owned()
    }

    /// Starts a node agent `name` joined to this cluster, labelling what it makes with `run`'s
    /// label, with a short crash-loop back-off and heartbeat for tests.
    pub fn node(&self, name: &str, run: &DockerRun, extra: &[&str]) -> NodeAgent {
        self.node_via(name, run, extra, &self.server())
    }

    /// As `node`, joined through the API server at `server` (another control-plane replica).
    pub fn node_via(&self, name: &str, run: &DockerRun, extra: &[&str], server: &str) -> NodeAgent {
        let data = self.dir.path().join(format!("node-{name}"));
        let agent = NodeAgent {
            name: name.to_owned(),
            data,
            log: self.dir.path().join(format!("node-{name}.log")),
            server: server.to_owned(),
            token: self.data.join("node-token"),
            label: run.label(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
        };
        agent.spawn()
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.data.join("kubeconfig")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    /// Runs the real kubectl against the cluster.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        run(Command::new("kubectl").arg("--kubeconfig").arg(self.kubeconfig()).args(args))
    }

    /// Runs kubectl and returns its standard output, failing the test if it fails.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}{}\n--- daemon log ---\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The git note Capstan wrote on `commit` of the tracked repository (empty until there is one).
    pub fn note(&self, commit: &str) -> String {
        let out = run(Command::new("git")
            .args(["notes", "--ref=capstan", "show", commit])
            .current_dir(&self.repo));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs kubectl with `-o json` and parses what it prints, failing the test if it fails.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        serde_json::from_str(&self.kubectl_ok(&all)).unwrap()
    }

    /// Commits `files` (written) and `removed` (deleted) to the tracked repository.
    pub fn commit(&self, files: &[(&str, &str)], removed: &[&str], message: &str) -> String {
        for (path, text) in files {
            let p = self.repo.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        for path in removed {
            git(&self.repo, &["rm", "-q", path]);
        }
        git(&self.repo, &["add", "-A"]);
        git(&self.repo, &["commit", "-q", "-m", message]);
        git(&self.repo, &["rev-parse", "HEAD"])
    }

    pub fn wait_until(&self, what: &str, f: impl FnMut() -> bool) {
        self.wait_until_within(what, 30, f);
    }

    /// Waits up to `secs` for `f`, failing with the daemon's log when it never holds.
    pub fn wait_until_within(&self, what: &str, secs: u64, mut f: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        while !f() {
            if std::time::Instant::now() > deadline {
                panic!("timed out waiting for {what}\n--- daemon log ---\n{}", self.log());
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `capstan node` process, killed on drop (its containers are swept by the `DockerRun`).
pub struct NodeAgent {
    pub name: String,
    pub data: PathBuf,
    pub log: PathBuf,
    server: String,
    token: PathBuf,
    label: String,
    extra: Vec<String>,
    child: Option<std::process::Child>,
}

impl NodeAgent {
    fn spawn(mut self) -> NodeAgent {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_capstan"))
            .args([
                "node",
                "--server",
                &self.server,
                "--token-file",
                path_str(&self.token),
                "--name",
                &self.name,
                "--data-dir",
                path_str(&self.data),
            ])
            .args([
                "--listen",
                "127.0.0.1:0",
                "--node-ip",
                "127.0.0.1",
                "--no-proxy",
                "--runtime-label",
                &self.label,
            ])
            .args(["--restart-backoff", "1s", "--restart-backoff-max", "4s", "--lease-interval", "2s"])
            // Many agents share the host: the ingress only where a test asks for it.
            .args(if self.extra.iter().any(|a| a.starts_with("--ingress")) {
                &[][..]
            } else {
                &["--ingress-http", "off", "--ingress-https", "off"][..]
            })
            .args(&self.extra)
            .env("CAPSTAN_LOG", "info,capstan_node=debug")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        self
    }

    /// Kills the agent with SIGKILL: its containers keep running, nobody renews its lease.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kills the agent with SIGKILL (its containers keep running) and starts it again.
    pub fn kill9_and_restart(mut self) -> NodeAgent {
        self.kill9();
        self.spawn()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for NodeAgent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// GET from a pod's address on port 8080 (our own container on the node's bridge): the status
/// code and body.
pub fn http_get(ip: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let addr = format!("{ip}:8080").parse().ok()?;
    let mut s = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {ip}\r\nConnection: close\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Some((code, body))
}

/// A daemon on a repository of `files` with a run label for the Docker Engine, once the test
/// images are built; None (the test returns) where the Engine is missing outside CI.
pub fn docker_cluster(test: &str, label: &str, files: &[(&str, &str)], daemon_args: &[&str]) -> Option<(DockerRun, Cluster)> {
    if !docker_available(test) {
        return None;
    }
    build_images();
    Some((DockerRun::new(label), Cluster::start_with(files, daemon_args)))
}

/// Whether a pod (as kubectl prints it in JSON) says it is Ready.
pub fn pod_ready(pod: &serde_json::Value) -> bool {
    pod["status"]["conditions"]
        .as_array()
        .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}
