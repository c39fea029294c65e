//! `capstan up` end to end on the real Docker Engine and the host's nftables: the demo repository
//! is created, synced and run; the guestbook answers through its ClusterIP and node port, finding
//! redis by name through the cluster DNS; a commit rolls the frontend; Ctrl-C leaves the
//! containers and the rules in place and the next start adopts them; `--cleanup-proxy` removes the
//! rules.
//!
//! Needs the Docker Engine, root and nft: in CI their absence fails the test.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::*;

/// A `capstan up` process; interrupted (then killed) on drop.
struct Up {
    child: Child,
    out: std::path::PathBuf,
    err: std::path::PathBuf,
}

impl Up {
    fn start(data: &Path, run: &DockerRun, table: &str) -> Up {
        Up::start_on(data, run, table, CIDR, &[])
    }

    /// `capstan up` with pod range `cidr` and `extra` arguments (a repository to track).
    fn start_on(data: &Path, run: &DockerRun, table: &str, cidr: &str, extra: &[&str]) -> Up {
        let out = data.join(format!("up-{}.out", Instant::now().elapsed().as_nanos()));
        let err = out.with_extension("err");
        let node = format!("up-{}", std::process::id());
        let child = Command::new(env!("CARGO_BIN_EXE_capstan"))
            .args([
                "up",
                "--data-dir",
                path_str(data),
                "--listen",
                "0.0.0.0:0",
                "--node-listen",
                "0.0.0.0:0",
            ])
            .args(["--node-name", &node, "--cluster-cidr", cidr, "--proxy-table", table])
            .args(["--runtime-label", &run.label()])
            // One host: the pod network across hosts (a device and a table in the machine's own
            // namespace) is the lab's to test.
            .args(["--pod-network", "none"])
            .args(extra)
            .env("CAPSTAN_LOG", "info")
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .unwrap();
        Up { child, out, err }
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }

    /// Waits for the summary; returns it.
    fn wait_up(&mut self) -> String {
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let out = self.stdout();
            if out.contains("Ctrl-C stops Capstan") {
                return out;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("capstan up exited ({status}):\n{out}\n{}", self.stderr());
            }
            assert!(Instant::now() < deadline, "no summary in 300 s:\n{out}\n{}", self.stderr());
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn interrupt(&mut self) -> std::process::ExitStatus {
        run_ok(Command::new("kill").args(["-INT", &self.child.id().to_string()]));
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "capstan up did not stop on SIGINT:\n{}", self.stderr());
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = Command::new("kill").args(["-INT", &self.child.id().to_string()]).status();
            std::thread::sleep(Duration::from_secs(2));
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The first test's pod range.
const CIDR: &str = "10.206.0.0/16";

/// One `capstan up` at a time: both would allocate the same ClusterIPs, and each proxy would
/// take the other's.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// What every `up` test needs first: the Engine, root and nft (else `None`: skipped locally,
/// failed in CI), its turn, the images, and its Docker label.
fn prelude(test: &str, label: &str) -> Option<(std::sync::MutexGuard<'static, ()>, DockerRun)> {
    if !docker_available(test) || !root_and_nft(test) {
        return None;
    }
    let turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    build_images();
    Some((turn, DockerRun::new(label)))
}

/// Removes the test's table and DOCKER-USER rules, also when the test fails.
struct ProxyRules {
    table: String,
    cidr: &'static str,
}

impl ProxyRules {
    fn cleanup(&self) -> std::process::Output {
        run(Command::new(env!("CARGO_BIN_EXE_capstan")).args([
            "node",
            "--cleanup-proxy",
            "--proxy-table",
            &self.table,
            "--cluster-cidr",
            self.cidr,
        ]))
    }
}

impl Drop for ProxyRules {
    fn drop(&mut self) {
        let _ = self.cleanup();
    }
}

fn http(addr: &str, method: &str, path: &str, body: &str) -> std::io::Result<String> {
    let addr: SocketAddr = addr.parse().unwrap();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    Ok(text)
}

/// A client opening a new connection to a Service every 10 ms until told to finish; it must
/// see no failure (a replaced pod leaves every proxy before it gets SIGTERM).
struct Client {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<(usize, Vec<String>)>,
}

impl Client {
    fn start(target: &str) -> Client {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (flag, target) = (stop.clone(), target.to_owned());
        let thread = std::thread::spawn(move || {
            let (mut total, mut failures) = (0, Vec::new());
            while !flag.load(std::sync::atomic::Ordering::SeqCst) {
                total += 1;
                match http(&target, "GET", "/", "") {
                    Ok(text) if text.starts_with("HTTP/1.0 200") || text.starts_with("HTTP/1.1 200") => {}
                    Ok(text) => failures.push(text.lines().next().unwrap_or_default().to_owned()),
                    Err(e) => failures.push(e.to_string()),
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            (total, failures)
        });
        Client { stop, thread }
    }

    fn finish(self, during: &str) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let (total, failures) = self.thread.join().unwrap();
        assert!(total > 50, "the client ran through {during} ({total} requests)");
        assert!(
            failures.is_empty(),
            "{} of {total} requests failed during {during}: {failures:?}",
            failures.len()
        );
    }
}

/// The frontend's ReplicaSet that holds the replicas (`replicaset.apps/NAME`).
fn scaled_frontend_rs(kubeconfig: &Path) -> String {
    kubectl(
        kubeconfig,
        &[
            "-n",
            "guestbook",
            "get",
            "rs",
            "-l",
            "app.kubernetes.io/name=frontend",
            "-o",
            "jsonpath={range .items[?(@.spec.replicas==3)]}replicaset.apps/{.metadata.name}{end}",
        ],
    )
}

/// The images of the frontend's pods.
fn frontend_images(kubeconfig: &Path) -> Vec<String> {
    let out = kubectl(
        kubeconfig,
        &[
            "-n",
            "guestbook",
            "get",
            "pods",
            "-l",
            "app.kubernetes.io/name=frontend",
            "-o",
            "jsonpath={range .items[*]}{.spec.containers[0].image}{\" \"}{end}",
        ],
    );
    out.split_whitespace().map(str::to_owned).collect()
}

fn kubectl(kubeconfig: &Path, args: &[&str]) -> String {
    run_ok(Command::new("kubectl").arg("--kubeconfig").arg(kubeconfig).args(args))
}

fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn root_and_nft(test: &str) -> bool {
    let ok = run(Command::new("id").arg("-u")).stdout.starts_with(b"0")
        && Command::new("nft").arg("-V").output().is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{test}: root and nft are required in CI"
        );
        eprintln!("\n*** SKIPPING {test}: needs root and nft ***\n");
    }
    ok
}

#[test]
fn up_runs_the_guestbook_rolls_it_by_commit_and_adopts_it_after_a_restart() {
    let Some((_serial, run)) = prelude("up_runs_the_guestbook", "up") else {
        return;
    };
    let table = format!("capstan-test-{}", std::process::id());
    let rules = ProxyRules {
        table: table.clone(),
        cidr: CIDR,
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();

    let mut up = Up::start(data, &run, &table);
    let summary = up.wait_up();
    assert!(summary.contains("pods ready       4/4"), "{summary}\n{}", up.stderr());
    let repo = data.join("demo-repo");
    assert!(repo.join("guestbook/frontend.yaml").exists(), "the demo repository is created");
    let kubeconfig = data.join("kubeconfig");
    assert!(summary.contains(path_str(&kubeconfig)));

    // The frontend's ClusterIP and node port, from the API.
    let vip = kubectl(
        &kubeconfig,
        &["-n", "guestbook", "get", "svc", "frontend", "-o", "jsonpath={.spec.clusterIP}"],
    );
    let node_ip = kubectl(
        &kubeconfig,
        &["get", "nodes", "-o", "jsonpath={.items[0].status.addresses[0].address}"],
    );
    let home = http(&format!("{vip}:80"), "GET", "/", "").unwrap();
    assert!(home.contains("Capstan guestbook"), "{home}");
    // An entry posted through the node port is read back through the ClusterIP: the frontends
    // reached redis by its name (cluster DNS) through its ClusterIP.
    let posted = http(&format!("{node_ip}:30080"), "POST", "/entries", "entry=signed-by-the-test").unwrap();
    assert!(posted.contains(" 200 ") && posted.contains("added"), "{posted}");
    let list = http(&format!("{vip}:80"), "GET", "/", "").unwrap();
    assert!(list.contains("signed-by-the-test"), "{list}");
    // From inside a pod: the Service by its short name (cluster DNS, namespace search path)
    // through the proxy, spread over the ready frontends.
    let inside = run_ok(Command::new("docker").args([
        "ps",
        "-q",
        "--filter",
        &format!("label={}", run.label()),
        "--filter",
        "label=capstan.dev/container=frontend",
    ]));
    let container = inside.lines().next().expect("a frontend container");
    let answers = run_ok(Command::new("docker").args(["exec", container, "/capstan-testapp", "get", "http://frontend/", "30"]));
    let served: std::collections::BTreeSet<&str> = answers.lines().filter_map(|l| l.split("served by ").nth(1)).collect();
    // All three, the asking pod included (hairpin through the bridge).
    assert_eq!(served.len(), 3, "30 requests reach every frontend: {served:?}\n{answers}");
    // The API from a pod, as in-cluster clients find it: the `kubernetes` Service's address and
    // port from the environment, through the proxy, to the API server on the host's address.
    let env = run_ok(Command::new("docker").args(["inspect", "-f", "{{range .Config.Env}}{{println .}}{{end}}", container]));
    let var = |name: &str| {
        env.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("{name} missing from the pod's environment:\n{env}"))
            .to_owned()
    };
    let api = format!("{}:{}", var("KUBERNETES_SERVICE_HOST"), var("KUBERNETES_SERVICE_PORT"));
    assert_eq!(api, "10.96.0.1:443");
    let endpoint = kubectl(
        &kubeconfig,
        &[
            "get",
            "endpoints",
            "kubernetes",
            "-n",
            "default",
            "-o",
            "jsonpath={.subsets[0].addresses[0].ip}",
        ],
    );
    assert_eq!(endpoint, node_ip, "the API is advertised at the host's address, which pods reach");
    let connected = run_ok(Command::new("docker").args(["exec", container, "/capstan-testapp", "connect", &api]));
    assert!(connected.contains("connected to 10.96.0.1:443"), "{connected}");
    // An address in the service range that no service has is rejected, not routed out.
    let stray = http("10.96.255.254:80", "GET", "/", "");
    assert!(
        matches!(&stray, Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused),
        "{stray:?}"
    );

    // A commit rolls the frontend to image 2, while a client keeps opening new connections to
    // the Service: none may fail (a replaced pod leaves every proxy before it gets SIGTERM, and
    // the guestbook exits at once on SIGTERM).
    let first_rs = scaled_frontend_rs(&kubeconfig);
    let client = Client::start(&format!("{vip}:80"));
    let frontend = std::fs::read_to_string(repo.join("guestbook/frontend.yaml")).unwrap();
    std::fs::write(repo.join("guestbook/frontend.yaml"), frontend.replace("guestbook:1", "guestbook:2")).unwrap();
    git(&repo, &["commit", "-qam", "frontend 2"]);
    kubectl(
        &kubeconfig,
        &["-n", "guestbook", "rollout", "status", "deploy/frontend", "--timeout=180s"],
    );
    // Until every old pod is gone, not only out of the endpoints.
    eventually("three pods of image 2, and only those", || {
        let images = frontend_images(&kubeconfig);
        (images.len() == 3 && images.iter().all(|i| i == "capstan.local/guestbook:2")).then_some(())
    });
    client.finish("the rollout");
    assert!(http(&format!("{vip}:80"), "GET", "/", "").unwrap().contains("signed-by-the-test"));

    // Git gets the history: a note on each applied commit, the rollout's outcome on the new one,
    // read by `capstan history`, and by git itself.
    let head = git(&repo, &["rev-parse", "HEAD"]);
    let capstan = |args: &[&str]| run_ok(Command::new(env!("CARGO_BIN_EXE_capstan")).args(args).current_dir(&repo));
    let history = eventually("the note on the new commit to say the rollout completed", || {
        let v: serde_json::Value = serde_json::from_str(&capstan(&["history", "-o", "json"])).ok()?;
        (v[0]["commit"] == head.as_str() && v[0]["note"]["outcome"] == "complete").then_some(v)
    });
    assert_eq!(history[0]["note"]["rollouts"][0]["deployment"], "guestbook/frontend", "{history}");
    // The first commit's rollout finished, or was overtaken by the second before the note saw it.
    assert!(
        ["complete", "superseded"].contains(&history[1]["note"]["outcome"].as_str().unwrap_or_default()),
        "{history}"
    );
    assert_eq!(history[1]["note"]["objects"]["created"], 7, "{history}");
    let listing = capstan(&["history"]);
    assert!(listing.contains("complete") && listing.contains("frontend 2"), "{listing}");
    assert!(git(&repo, &["notes", "--ref=capstan", "show", "HEAD"]).contains(&head));
    // The status branch: the observed state of each object, for the applied commit.
    let status = eventually("the status branch to show the new commit, rolled out", || {
        let v: serde_json::Value = serde_json::from_str(&capstan(&["status", "-o", "json"])).ok()?;
        let frontend = v["objects"]
            .as_array()?
            .iter()
            .find(|o| o["kind"] == "Deployment" && o["metadata"]["name"] == "frontend")?
            .clone();
        (v["desiredCommit"] == head.as_str() && frontend["status"]["updatedReplicas"] == 3 && frontend["status"]["readyReplicas"] == 3)
            .then_some(v)
    });
    assert!(status["objects"].as_array().unwrap().iter().all(|o| o["kind"] != "Secret"));
    let text = capstan(&["status"]);
    assert!(
        text.contains("frontend") && text.contains("3/3 ready") && text.contains("guestbook/frontend.yaml"),
        "{text}"
    );
    assert!(!git(&repo, &["log", "--oneline", "capstan/status"]).is_empty());
    assert_eq!(
        git(&repo, &["rev-parse", "HEAD"]),
        head,
        "write-back never moves the tracked branch"
    );

    // Rolling back through Git: a branch reverting the commit, `capstan plan` on it, the merge.
    // The first ReplicaSet comes back (reused, not a new one), and again no request fails.
    git(&repo, &["checkout", "-qb", "rollback"]);
    git(&repo, &["revert", "--no-edit", "HEAD"]);
    let plan = capstan(&["plan", "main..rollback"]);
    assert!(
        plan.contains("\"capstan.local/guestbook:2\" → \"capstan.local/guestbook:1\""),
        "{plan}"
    );
    let client = Client::start(&format!("{vip}:80"));
    git(&repo, &["checkout", "-q", "main"]);
    git(&repo, &["merge", "-q", "--ff-only", "rollback"]);
    eventually("three pods of image 1 again, and only those", || {
        let images = frontend_images(&kubeconfig);
        (images.len() == 3 && images.iter().all(|i| i == "capstan.local/guestbook:1")).then_some(())
    });
    client.finish("the rollback");
    let scaled = scaled_frontend_rs(&kubeconfig);
    assert_eq!(scaled.trim(), first_rs.trim(), "the revert reuses the first ReplicaSet");

    // Ctrl-C: a clean exit; the containers and the rules stay, and traffic keeps flowing.
    let before = run_ok(Command::new("docker").args(["ps", "-q", "--no-trunc", "--filter", &format!("label={}", run.label())]));
    assert!(up.interrupt().success(), "{}", up.stderr());
    assert!(http(&format!("{vip}:80"), "GET", "/", "").unwrap().contains("signed-by-the-test"));

    // The next start adopts the same containers.
    let mut again = Up::start(data, &run, &table);
    let summary = again.wait_up();
    assert!(summary.contains("pods ready       4/4"), "{summary}");
    let after = run_ok(Command::new("docker").args(["ps", "-q", "--no-trunc", "--filter", &format!("label={}", run.label())]));
    let sorted = |s: &str| {
        let mut v: Vec<String> = s.split_whitespace().map(str::to_owned).collect();
        v.sort();
        v
    };
    assert_eq!(sorted(&before), sorted(&after), "the containers are adopted, not replaced");
    assert!(again.interrupt().success());

    // `capstan down --purge` stops a running up and removes everything it made.
    let mut third = Up::start(data, &run, &table);
    third.wait_up();
    let made = run_ok(Command::new("docker").args(["ps", "-aq", "--filter", &format!("label={}", run.label())]));
    let made = made.split_whitespace().count();
    let out = Command::new(env!("CARGO_BIN_EXE_capstan"))
        .args(["down", "--purge", "--data-dir", path_str(data), "--proxy-table", &table])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains(&format!("removed {made} containers")), "{said}");
    assert!(third.child.try_wait().unwrap().is_some(), "the running up was stopped");
    let left = run_ok(Command::new("docker").args(["ps", "-aq", "--filter", &format!("label={}", run.label())]));
    assert!(left.trim().is_empty(), "{left}");
    let networks = run_ok(Command::new("docker").args(["network", "ls", "--format", "{{.Name}}"]));
    assert!(!networks.contains(&format!("capstan-up-{}", std::process::id())), "{networks}");
    let tables = run_ok(Command::new("nft").args(["list", "tables"]));
    assert!(!tables.contains(&table), "{tables}");
    assert!(!data.exists(), "the data directory is purged");
    drop(rules);
}

/// A network namespace of the test's own, routed to the host over a veth pair: a client that is
/// not on the cluster. Removed on drop.
struct ClientNamespace {
    name: String,
    host_dev: String,
}

impl ClientNamespace {
    fn new(name: &str, host_ip: &str, client_ip: &str) -> ClientNamespace {
        let ns = ClientNamespace {
            name: name.to_owned(),
            host_dev: format!("{name}-h"),
        };
        let ip = |args: &[&str]| run_ok(Command::new("ip").args(args));
        ip(&["netns", "add", &ns.name]);
        ip(&[
            "link",
            "add",
            &ns.host_dev,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &ns.name,
        ]);
        ip(&["addr", "add", &format!("{host_ip}/30"), "dev", &ns.host_dev]);
        ip(&["link", "set", &ns.host_dev, "up"]);
        ip(&["-n", &ns.name, "addr", "add", &format!("{client_ip}/30"), "dev", "eth0"]);
        ip(&["-n", &ns.name, "link", "set", "eth0", "up"]);
        ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        ip(&["-n", &ns.name, "route", "add", "default", "via", host_ip]);
        ns
    }

    /// `curl` from inside the namespace.
    fn get(&self, url: &str) -> std::process::Output {
        run(Command::new("ip").args(["netns", "exec", &self.name, "curl", "-sS", "-m", "5", url]))
    }
}

impl Drop for ClientNamespace {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.host_dev]).status();
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// The mission end to end from nothing: `capstan up` tracks a bare repository by URL; the
/// example app, committed and pushed with the git CLI as a user would, comes up; its ClusterIP
/// answers a client in a network namespace of its own through the proxy; the commit's note and
/// the status branch are pushed back to the bare repository.
#[test]
fn a_push_to_a_bare_repository_brings_the_example_up_for_a_client_off_the_cluster() {
    let Some((_serial, docker)) = prelude("a_push_to_a_bare_repository", "up-bare") else {
        return;
    };
    let cidr = "10.207.0.0/16";
    let table = format!("capstan-test-b{}", std::process::id());
    let _rules = ProxyRules {
        table: table.clone(),
        cidr,
    };
    let dir = tempfile::tempdir().unwrap();
    let remote = dir.path().join("shop.git");
    let work = dir.path().join("work");
    git(dir.path(), &["init", "-q", "--bare", "-b", "main", path_str(&remote)]);
    git(dir.path(), &["clone", "-q", path_str(&remote), path_str(&work)]);
    std::fs::write(work.join("README.md"), "Our cluster.\n").unwrap();
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-qm", "an empty cluster"]);
    git(&work, &["push", "-q", "origin", "HEAD:main"]);

    let url = format!("file://{}", path_str(&remote));
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let mut up = Up::start_on(&data, &docker, &table, cidr, &[&url, "--poll-interval", "1"]);
    let summary = up.wait_up();
    let kubeconfig = data.join("kubeconfig");
    assert_eq!(
        kubectl(&kubeconfig, &["get", "pods", "-A", "-o", "name"]),
        "",
        "an empty cluster: {summary}"
    );

    // The app, committed and pushed.
    copy_dir(&repo_root().join("examples-repo"), &work);
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-qm", "the guestbook"]);
    git(&work, &["push", "-q", "origin", "HEAD:main"]);
    let head = git(&work, &["rev-parse", "HEAD"]);
    eventually("the guestbook's four pods Running and Ready", || {
        let out = kubectl(
            &kubeconfig,
            &[
                "-n",
                "guestbook",
                "get",
                "pods",
                "-o",
                "jsonpath={range .items[*]}{.status.phase}/{.status.conditions[?(@.type==\"Ready\")].status} {end}",
            ],
        );
        let pods: Vec<&str> = out.split_whitespace().collect();
        (pods.len() == 4 && pods.iter().all(|p| *p == "Running/True")).then_some(())
    });

    // A client off the cluster reaches the frontend's ClusterIP through the proxy.
    let vip = kubectl(
        &kubeconfig,
        &["-n", "guestbook", "get", "svc", "frontend", "-o", "jsonpath={.spec.clusterIP}"],
    );
    let client = ClientNamespace::new(&format!("cpb{}", std::process::id()), "192.168.251.1", "192.168.251.2");
    let page = eventually("the ClusterIP to answer the client namespace", || {
        let out = client.get(&format!("http://{vip}/"));
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    });
    assert!(page.contains("Capstan guestbook"), "{page}");

    // Git has the outcome, in the bare repository: the note on the pushed commit and the status
    // branch reflecting it.
    let bare = |args: &[&str]| run(Command::new("git").arg("--git-dir").arg(&remote).args(args));
    let note: serde_json::Value = eventually("the note on the pushed commit, rollout complete", || {
        let out = bare(&["notes", "--ref=capstan", "show", &head]);
        let note: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        (note["outcome"] == "complete").then_some(note)
    });
    assert_eq!(note["commit"], head.as_str(), "{note}");
    assert_eq!(note["objects"]["created"], 7, "{note}");
    let status = eventually("the status branch to reflect the pushed commit", || {
        let message = bare(&["log", "-1", "--format=%B", "capstan/status"]);
        String::from_utf8_lossy(&message.stdout)
            .contains(&format!("Capstan-Desired-Commit: {head}"))
            .then(|| bare(&["show", "capstan/status:deployments/guestbook/frontend.json"]))
    });
    let frontend: serde_json::Value = serde_json::from_slice(&status.stdout).expect("the frontend's status file");
    assert_eq!(frontend["status"]["readyReplicas"], 3, "{frontend}");
    assert_eq!(frontend["metadata"]["source"], "guestbook/frontend.yaml", "{frontend}");
    let tree = String::from_utf8_lossy(&bare(&["ls-tree", "-r", "--name-only", "capstan/status"]).stdout).into_owned();
    assert!(!tree.contains("secrets/"), "no Secret on the status branch:\n{tree}");
    assert!(up.interrupt().success(), "{}", up.stderr());
}
