//! The lab of hosts (`scripts/lab.sh`) for the tests: hosts in network namespaces of their own,
//! each with its own Docker Engine, on a switch the machine (10.250.0.1) is on too; node agents
//! started inside them; everything removed on drop, also when the test fails.

use std::process::{Child, Command, Output};

use super::{Cluster, build_images, docker_available, path_str, repo_root, run, run_ok};

/// The machine's own address on the lab's switch (where the control plane listens).
pub const MACHINE: &str = "10.250.0.1";

/// How often the lab's agents renew their Lease.
pub const LEASE_INTERVAL_SECS: u64 = 2;

pub fn host_ip(n: usize) -> String {
    format!("10.250.0.{}", 10 + n)
}

/// A test-app pod `name` labelled `app: APP`, pinned to lab host `n`, as a YAML document
/// ending in `---`.
pub fn pinned_pod(name: &str, app: &str, n: usize) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, labels: {{app: {app}}}}}\nspec:\n  nodeSelector: {{kubernetes.io/hostname: {}}}\n  containers: [{{name: app, image: \"capstan.local/testapp:latest\", imagePullPolicy: Never}}]\n---\n",
        host_name(n)
    )
}

pub fn host_name(n: usize) -> String {
    format!("h{n}")
}

fn script() -> std::path::PathBuf {
    repo_root().join("scripts/lab.sh")
}

/// True when the lab can run: the Engine, root and nft. In CI a missing part fails the test.
pub fn lab_available(test: &str) -> bool {
    if !docker_available(test) {
        return false;
    }
    let ok = run(Command::new("id").arg("-u")).stdout.starts_with(b"0") && Command::new("nsenter").arg("--version").output().is_ok();
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{test}: root and nsenter are required in CI"
        );
        eprintln!("\n*** SKIPPING {test}: the lab needs root ***\n");
    }
    ok
}

/// How many objects of `resource` (nodes, pods) have the condition Ready=True.
pub fn ready_count(cluster: &Cluster, resource: &str) -> usize {
    let out = cluster.kubectl(&[
        "get",
        resource,
        "-o",
        "jsonpath={range .items[*]}{.status.conditions[?(@.type==\"Ready\")].status}{\"\\n\"}{end}",
    ]);
    String::from_utf8_lossy(&out.stdout).lines().filter(|l| *l == "True").count()
}

/// A lab of `n` hosts, torn down on drop.
pub struct Lab {
    pub hosts: usize,
}

impl Lab {
    pub fn up(n: usize) -> Lab {
        build_images();
        // Leftovers of an interrupted run go first.
        run_ok(Command::new(script()).arg("down"));
        let lab = Lab { hosts: n };
        run_ok(Command::new(script()).args(["up", &n.to_string()]));
        lab
    }

    /// Runs `args` on host `n` (its network namespace, DOCKER_HOST its Engine).
    pub fn exec(&self, n: usize, args: &[&str]) -> Output {
        run(Command::new(script()).args(["exec", &n.to_string()]).args(args))
    }

    pub fn exec_ok(&self, n: usize, args: &[&str]) -> String {
        let out = self.exec(n, args);
        assert!(
            out.status.success(),
            "on host {n}: {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `scripts/lab.sh ACTION N`: unplug, plug, cut, mend, kill (see the script).
    pub fn host(&self, action: &str, n: usize) {
        run_ok(Command::new(script()).args([action, &n.to_string()]));
    }

    /// The id of the running container `container` of pod `pod` on host `n`.
    pub fn container_of(&self, n: usize, pod: &str, container: &str) -> String {
        let out = self.exec_ok(
            n,
            &[
                "docker",
                "ps",
                "-q",
                "--filter",
                &format!("label=capstan.dev/pod={pod}"),
                "--filter",
                &format!("label=capstan.dev/container={container}"),
            ],
        );
        out.split_whitespace()
            .next()
            .unwrap_or_else(|| panic!("no container {container} of pod {pod} on host {n}"))
            .to_owned()
    }

    /// Runs the test program inside a pod's container on host `n`.
    pub fn in_pod(&self, n: usize, pod: &str, container: &str, args: &[&str]) -> Output {
        let id = self.container_of(n, pod, container);
        let mut full = vec!["docker", "exec", id.as_str(), "/capstan-testapp"];
        full.extend(args);
        self.exec(n, &full)
    }

    /// Starts a node agent on host `n`, joined to `cluster` (which listens on [`MACHINE`]).
    pub fn node(&self, cluster: &Cluster, n: usize, extra: &[&str]) -> LabNode {
        let name = host_name(n);
        let data = cluster.dir.path().join(format!("lab-{name}"));
        let log = cluster.dir.path().join(format!("lab-{name}.log"));
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
        let listen = format!("{}:10250", host_ip(n));
        let child = Command::new(script())
            .args(["exec", &n.to_string(), env!("CARGO_BIN_EXE_capstan"), "node"])
            .args([
                "--server",
                &cluster.server(),
                "--token-file",
                path_str(&cluster.data.join("node-token")),
            ])
            .args(["--name", &name, "--data-dir", path_str(&data), "--listen", &listen])
            .args(["--restart-backoff", "1s", "--restart-backoff-max", "4s"])
            .args(["--lease-interval", &format!("{LEASE_INTERVAL_SECS}s")])
            .args(extra)
            .env("CAPSTAN_LOG", "info,capstan_node=debug")
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        LabNode {
            name,
            log,
            child: Some(child),
        }
    }

    /// The agents' logs and the hosts' kernel state, for a failure message.
    pub fn diagnostics(&self, nodes: &[&LabNode]) -> String {
        let mut out = String::new();
        for n in nodes {
            let log = std::fs::read_to_string(&n.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            out += &format!("\n--- {} (last lines) ---\n", n.name);
            for l in tail.iter().rev() {
                out += l;
                out += "\n";
            }
        }
        for h in 1..=self.hosts {
            for cmd in [
                &["ip", "route"][..],
                &["ip", "-d", "link", "show", "capstan.1"],
                &["bridge", "fdb", "show", "dev", "capstan.1"],
            ] {
                let o = self.exec(h, cmd);
                out += &format!(
                    "--- host {h}: {} ---\n{}{}",
                    cmd.join(" "),
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                );
            }
        }
        out
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = Command::new(script()).arg("down").status();
    }
}

/// A `capstan node` on a lab host, killed on drop.
pub struct LabNode {
    pub name: String,
    pub log: std::path::PathBuf,
    child: Option<Child>,
}

impl LabNode {
    /// Stops the agent (SIGKILL: its containers keep running).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for LabNode {
    fn drop(&mut self) {
        self.kill();
    }
}
