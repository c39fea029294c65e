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

/// The figures of the test program's `blast` line: bytes/s first, then (where it could read
/// /proc/stat) the machine's busy share, CPU ms and context switches per GB sent; NaN for a
/// figure that is not a number.
pub fn blast_figures(line: &str) -> Vec<f64> {
    line.split_whitespace().map(|v| v.parse().unwrap_or(f64::NAN)).collect()
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
        self.node_via(cluster, n, extra, &cluster.server())
    }

    /// As `node`, given the API servers' URLs (comma-separated: control-plane replicas).
    pub fn node_via(&self, cluster: &Cluster, n: usize, extra: &[&str], servers: &str) -> LabNode {
        let name = host_name(n);
        let data = cluster.dir.path().join(format!("lab-{name}"));
        let listen = format!("{}:10250", host_ip(n));
        let mut args: Vec<&str> = vec![env!("CARGO_BIN_EXE_capstan"), "node"];
        let token = cluster.data.join("node-token");
        args.extend(["--server", servers, "--token-file", path_str(&token)]);
        args.extend(["--name", &name, "--data-dir", path_str(&data), "--listen", &listen]);
        args.extend(["--restart-backoff", "1s", "--restart-backoff-max", "4s"]);
        let lease = format!("{LEASE_INTERVAL_SECS}s");
        args.extend(["--lease-interval", &lease]);
        args.extend(extra);
        let log = cluster.dir.path().join(format!("lab-{name}.log"));
        self.spawn(n, &name, &args, log, "info,capstan_node=debug")
    }

    /// The command that runs the rest of a command line on host `n`.
    pub fn on_host(&self, n: usize) -> Vec<String> {
        vec![path_str(&script()).to_owned(), "exec".into(), n.to_string()]
    }

    /// Runs `args` on host `n` as a process named `name`, its output appended to `log`.
    pub fn spawn(&self, n: usize, name: &str, args: &[&str], log: std::path::PathBuf, capstan_log: &str) -> LabNode {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
        let child = Command::new(script())
            .args(["exec", &n.to_string()])
            .args(args)
            .env("CAPSTAN_LOG", capstan_log)
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        LabNode {
            name: name.to_owned(),
            log,
            child: Some(child),
        }
    }

    /// An etcd member on each host (client port 2379 and peer port 2380 on the host's address),
    /// their data and logs under `dir`; returns them once the cluster answers, and its
    /// `--store` URL.
    pub fn etcd(&self, dir: &std::path::Path) -> (Vec<LabNode>, String) {
        let peers: Vec<String> = (1..=self.hosts).map(|n| format!("e{n}=http://{}:2380", host_ip(n))).collect();
        let initial = peers.join(",");
        let members: Vec<LabNode> = (1..=self.hosts)
            .map(|n| {
                let (name, ip) = (format!("e{n}"), host_ip(n));
                let (client, peer) = (format!("http://{ip}:2379"), format!("http://{ip}:2380"));
                let data = dir.join(&name);
                let args = [
                    "etcd",
                    "--name",
                    &name,
                    "--data-dir",
                    path_str(&data),
                    "--listen-client-urls",
                    &client,
                    "--advertise-client-urls",
                    &client,
                    "--listen-peer-urls",
                    &peer,
                    "--initial-advertise-peer-urls",
                    &peer,
                    "--initial-cluster",
                    &initial,
                    "--initial-cluster-state",
                    "new",
                    "--initial-cluster-token",
                    "capstan-lab",
                    "--log-level",
                    "warn",
                    "--logger",
                    "zap",
                ];
                self.spawn(n, &name, &args, dir.join(format!("{name}.log")), "info")
            })
            .collect();
        let endpoints: Vec<String> = (1..=self.hosts).map(|n| format!("{}:2379", host_ip(n))).collect();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let health = run(Command::new("etcdctl").args(["--endpoints", &endpoints.join(","), "endpoint", "health"]));
            if health.status.success() {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the lab's etcd did not become healthy: {}{}",
                String::from_utf8_lossy(&health.stdout),
                String::from_utf8_lossy(&health.stderr)
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        (members, format!("etcd://{}", endpoints.join(",")))
    }

    /// A further control-plane replica of `cluster` on host `n`, sharing its identity (CA,
    /// keys, join secret), started with `args` (its store and `--listen`).
    pub fn replica(&self, cluster: &Cluster, n: usize, args: &[&str]) -> LabNode {
        let name = format!("replica-{}", host_name(n));
        let data = cluster.dir.path().join(format!("data-{name}"));
        capstan_daemon::copy_replica_identity(&cluster.data, &data).unwrap();
        let mut full = vec![
            env!("CARGO_BIN_EXE_capstan"),
            "daemon",
            "--repo",
            path_str(&cluster.repo),
            "--data-dir",
            path_str(&data),
        ];
        full.extend(args);
        self.spawn(n, &name, &full, cluster.dir.path().join(format!("{name}.log")), "info")
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

/// A process on a lab host (a `capstan node`, a control-plane replica, an etcd member), killed
/// on drop.
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
