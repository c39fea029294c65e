//! GitOps promises end to end, on the real daemon, node agent, Docker Engine, kubectl and git:
//! a commit with one broken file applies the rest, keeps the broken file's objects running at
//! their last good version, and names the file and line in the API (an event), in
//! `capstan status` and in the commit's git note; the fixing commit then rolls out. A node agent
//! killed with SIGKILL: its node goes NotReady and its pods are replaced on a second agent. The
//! daemon killed with SIGKILL in the middle of a rollout: it converges, no container is
//! duplicated, no ClusterIP changes. The broken file and the daemon killed also with the store on
//! etcd; and three replicas on etcd, the leader killed mid-rollout and the next one paused.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Cluster, DockerRun, build_images, docker_available, docker_cluster, pod_ready, run_ok};
use serde_json::Value;

const NAMESPACE: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n";

fn web(replicas: &str, colour: &str) -> String {
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: shop}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: app
        image: capstan.local/testapp:latest
        env: [{{name: COLOUR, value: {colour}}}]
        ports: [{{name: http, containerPort: 8080}}]
        readinessProbe: {{httpGet: {{path: /readyz, port: http}}, periodSeconds: 1}}
"
    )
}

fn settings(colour: &str) -> String {
    format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: settings, namespace: shop}}\ndata: {{colour: {colour}}}\n")
}

fn wait<T>(what: &str, c: &Cluster, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\n--- daemon log ---\n{}",
            c.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The shop's pods that are Ready: (name, COLOUR, node).
fn ready_pods(c: &Cluster) -> Vec<(String, String, String)> {
    let out = c.kubectl(&["get", "pods", "-n", "shop", "-o", "json"]);
    let Ok(list) = serde_json::from_slice::<Value>(&out.stdout) else {
        return Vec::new();
    };
    let mut pods: Vec<(String, String, String)> = list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .filter(|p| pod_ready(p))
        .map(|p| {
            (
                p["metadata"]["name"].as_str().unwrap_or_default().to_owned(),
                p["spec"]["containers"][0]["env"][0]["value"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                p["spec"]["nodeName"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    pods.sort();
    pods
}

/// Commits four red pods that turn ready 3 s after they start, and waits until the rollout
/// has begun; returns the commit.
fn begin_slow_red_rollout(c: &Cluster) -> String {
    let slow = web("4", "red").replace(
        "env: [{name: COLOUR, value: red}]",
        "env: [{name: COLOUR, value: red}, {name: READY_AFTER, value: \"3\"}]",
    );
    let commit = c.commit(&[("web.yaml", &slow)], &[], "red, slowly");
    wait("the rollout to begin", c, || {
        pods_field(c, "spec.containers[0].env[0].value").contains("red").then_some(())
    });
    commit
}

/// Waits for four red pods ready and no blue one, and for the Deployment's status to follow
/// (a moment later).
fn wait_red_rolled_out(c: &Cluster) {
    wait("four red pods ready and no blue one", c, || {
        let pods = ready_pods(c);
        let all = pods_field(c, "spec.containers[0].env[0].value");
        (pods.len() == 4 && pods.iter().all(|(_, colour, _)| colour == "red") && !all.contains("blue")).then_some(())
    });
    wait("the deployment to report 4 updated, 4 available, 4 in all", c, || {
        let status = web_deployment(c, "{.status.updatedReplicas} {.status.availableReplicas} {.status.replicas}");
        (status == "4 4 4").then_some(())
    });
}

/// One running app container per Ready pod of the shop, no more.
fn assert_one_container_per_pod(c: &Cluster, run: &DockerRun) {
    let pods = ready_pods(c);
    let listed = run_ok(Command::new("docker").args([
        "ps",
        "--filter",
        &format!("label={}", run.label()),
        "--filter",
        "label=capstan.dev/container=app",
        "--format",
        "{{.Label \"capstan.dev/pod\"}}",
    ]));
    let mut names: Vec<&str> = listed.lines().collect();
    names.sort();
    let expected: Vec<&str> = pods.iter().map(|(name, _, _)| name.as_str()).collect();
    assert_eq!(names, expected, "running app containers, by pod");
}

/// A node's Ready condition: True, False or Unknown.
fn node_ready(c: &Cluster, node: &str) -> String {
    c.kubectl_ok(&[
        "get",
        "node",
        node,
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
    ])
}

/// A jsonpath of the shop's Deployment `web`.
fn web_deployment(c: &Cluster, jsonpath: &str) -> String {
    c.kubectl_ok(&["get", "deploy", "web", "-n", "shop", "-o", &format!("jsonpath={jsonpath}")])
}

/// One field of every pod in the shop, space-separated.
fn pods_field(c: &Cluster, field: &str) -> String {
    c.kubectl_ok(&["get", "pods", "-n", "shop", "-o", &format!("jsonpath={{.items[*].{field}}}")])
}

#[test]
fn a_broken_file_keeps_its_objects_running_names_file_and_line_and_the_fix_rolls_out() {
    broken_file_then_fix(
        "a_broken_file_keeps_its_objects_running_names_file_and_line_and_the_fix_rolls_out",
        "gitops-broken",
        &["--cluster-cidr", "10.204.0.0/16"],
    );
}

/// The same with the cluster's store on etcd.
#[test]
fn on_etcd_a_broken_file_keeps_its_objects_running_and_the_fix_rolls_out() {
    let (_etcd_dir, etcd) = common::etcd(1);
    broken_file_then_fix(
        "on_etcd_a_broken_file_keeps_its_objects_running_and_the_fix_rolls_out",
        "gitops-broken-etcd",
        &["--cluster-cidr", "10.226.0.0/16", "--store", &etcd.url()],
    );
}

fn broken_file_then_fix(test: &str, label: &str, args: &[&str]) {
    let Some((run, c)) = docker_cluster(
        test,
        label,
        &[
            ("ns.yaml", NAMESPACE),
            ("web.yaml", &web("2", "blue")),
            ("settings.yaml", &settings("blue")),
        ],
        args,
    ) else {
        return;
    };
    let _agent = c.node(&format!("gitops-{}", std::process::id()), &run, &[]);
    let before = wait("two blue pods ready", &c, || {
        let pods = ready_pods(&c);
        (pods.len() == 2 && pods.iter().all(|(_, colour, _)| colour == "blue")).then_some(pods)
    });

    // One commit: the ConfigMap changes, and web.yaml changes too but is broken (a word where
    // a number belongs).
    let broken = web("two", "red");
    let line = broken.lines().position(|l| l.contains("replicas: two")).unwrap() + 1;
    let commit = c.commit(
        &[("web.yaml", &broken), ("settings.yaml", &settings("green"))],
        &[],
        "green settings, and a typo",
    );
    wait("the rest of the commit applied", &c, || {
        (c.kubectl_ok(&["get", "configmap", "settings", "-n", "shop", "-o", "jsonpath={.data.colour}"]) == "green").then_some(())
    });
    // The API names file and line, on the object that kept running.
    let event = wait("an InvalidManifest event on the deployment", &c, || {
        let out = c.kubectl_ok(&[
            "get",
            "events",
            "-n",
            "shop",
            "--field-selector",
            "involvedObject.name=web,involvedObject.kind=Deployment",
            "-o",
            "jsonpath={range .items[?(@.reason==\"InvalidManifest\")]}{.message}{\"\\n\"}{end}",
        ]);
        (!out.trim().is_empty()).then_some(out)
    });
    assert!(event.contains(&format!("web.yaml:{line}:")), "{event}");
    assert!(event.contains("spec.replicas"), "{event}");
    assert!(event.contains(&commit[..12]), "{event}");
    // Nothing of web changed: the same two blue pods, and the Deployment as it was.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(ready_pods(&c), before);
    let env = c.kubectl_ok(&[
        "get",
        "deployment",
        "web",
        "-n",
        "shop",
        "-o",
        "jsonpath={.spec.template.spec.containers[0].env[0].value}",
    ]);
    assert_eq!(env, "blue");

    // Git gets it too: the note on the commit, and `capstan status`.
    let capstan = |args: &[&str]| run_ok(Command::new(env!("CARGO_BIN_EXE_capstan")).args(args).current_dir(&c.repo));
    let note: Value = wait("the note on the broken commit", &c, || {
        let text = Command::new("git")
            .args(["notes", "--ref=capstan", "show", &commit])
            .current_dir(&c.repo)
            .output()
            .ok()?;
        serde_json::from_slice(&text.stdout).ok()
    });
    assert_eq!(note["quarantined"][0]["object"]["name"], "web", "{note}");
    assert_eq!(note["quarantined"][0]["keptRunning"], true, "{note}");
    assert_eq!(note["problems"][0]["file"], "web.yaml", "{note}");
    assert_eq!(note["problems"][0]["line"], line, "{note}");
    let status = capstan(&["status"]);
    assert!(status.contains(&format!("problem         web.yaml:{line}:")), "{status}");
    assert!(status.contains("quarantined     Deployment shop/web"), "{status}");

    // The fix rolls out: three red pods.
    c.commit(&[("web.yaml", &web("3", "red"))], &[], "fix the typo");
    wait("three red pods ready", &c, || {
        let pods = ready_pods(&c);
        (pods.len() == 3 && pods.iter().all(|(_, colour, _)| colour == "red")).then_some(())
    });
}

#[test]
fn a_lost_node_goes_not_ready_and_its_pods_are_replaced_on_another() {
    let Some((run, c)) = docker_cluster(
        "a_lost_node_goes_not_ready_and_its_pods_are_replaced_on_another",
        "gitops-node-loss",
        &[("ns.yaml", NAMESPACE), ("web.yaml", &web("2", "blue"))],
        &[
            "--cluster-cidr",
            "10.207.0.0/16",
            "--node-grace-period",
            "4",
            "--pod-eviction-timeout",
            "2",
        ],
    ) else {
        return;
    };
    let (first, second) = (format!("loss-a-{}", std::process::id()), format!("loss-b-{}", std::process::id()));
    let mut a = c.node(&first, &run, &[]);
    wait("two pods ready on the first node", &c, || {
        let pods = ready_pods(&c);
        (pods.len() == 2 && pods.iter().all(|(_, _, node)| *node == first)).then_some(())
    });
    let _b = c.node(&second, &run, &[]);
    wait("the second node ready", &c, || (node_ready(&c, &second) == "True").then_some(()));
    a.kill9();
    wait("the first node NotReady", &c, || {
        (node_ready(&c, &first) == "Unknown").then_some(())
    });
    let taints = c.kubectl_ok(&["get", "node", &first, "-o", "jsonpath={.spec.taints[*].key}"]);
    assert!(taints.contains("node.kubernetes.io/unreachable"), "{taints}");
    wait("two pods ready on the second node, none left on the first", &c, || {
        let pods = ready_pods(&c);
        let all = pods_field(&c, "spec.nodeName");
        (pods.len() == 2 && pods.iter().all(|(_, _, node)| *node == second) && !all.contains(&first)).then_some(())
    });
}

const SERVICE: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec:\n  selector: {app: web}\n  ports: [{port: 80, targetPort: http}]\n";

#[test]
fn a_daemon_killed_mid_rollout_converges_without_duplicates() {
    daemon_killed_mid_rollout(
        "a_daemon_killed_mid_rollout_converges_without_duplicates",
        "gitops-daemon-kill",
        "10.208.0.0/16",
        &[],
    );
}

/// The same with the cluster's store on etcd: what the daemon knows after the restart comes
/// from etcd alone.
#[test]
fn a_daemon_on_etcd_killed_mid_rollout_converges_without_duplicates() {
    let (_etcd_dir, etcd) = common::etcd(1);
    daemon_killed_mid_rollout(
        "a_daemon_on_etcd_killed_mid_rollout_converges_without_duplicates",
        "gitops-etcd-kill",
        "10.222.0.0/16",
        &["--store", &etcd.url()],
    );
}

fn daemon_killed_mid_rollout(test: &str, label: &str, cidr: &str, extra: &[&str]) {
    // A fixed address, so that the node agent finds the restarted daemon.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let listen = format!("127.0.0.1:{port}");
    let mut args = vec!["--cluster-cidr", cidr, "--listen", &listen];
    args.extend_from_slice(extra);
    let Some((run, mut c)) = docker_cluster(
        test,
        label,
        &[("ns.yaml", NAMESPACE), ("web.yaml", &web("4", "blue")), ("svc.yaml", SERVICE)],
        &args,
    ) else {
        return;
    };
    let _agent = c.node(&format!("kill-{}", std::process::id()), &run, &[]);
    wait("four blue pods ready", &c, || {
        let pods = ready_pods(&c);
        (pods.len() == 4 && pods.iter().all(|(_, colour, _)| colour == "blue")).then_some(())
    });
    let cluster_ip = c.kubectl_ok(&["get", "svc", "web", "-n", "shop", "-o", "jsonpath={.spec.clusterIP}"]);

    // A slow rollout, interrupted once it has begun.
    begin_slow_red_rollout(&c);
    c.kill9_and_restart_daemon();
    wait_red_rolled_out(&c);
    assert_eq!(
        c.kubectl_ok(&["get", "svc", "web", "-n", "shop", "-o", "jsonpath={.spec.clusterIP}"]),
        cluster_ip,
        "the ClusterIP survived the restart"
    );
    // One running app container per pod, no more.
    assert_one_container_per_pod(&c, &run);
}

/// Another control-plane replica of the cluster in `c`: its own data directory holding the
/// first replica's identity (CA, service-account key, encryption keys, tokens), as an operator
/// copies it, and its own API address. Killed on drop.
struct Replica {
    data: std::path::PathBuf,
    log: std::path::PathBuf,
    child: std::process::Child,
}

impl Replica {
    fn start(c: &Cluster, i: usize, args: &[&str]) -> Replica {
        let data = c.dir.path().join(format!("data-{i}"));
        capstan_daemon::copy_replica_identity(&c.data, &data).unwrap();
        let log = c.dir.path().join(format!("daemon-{i}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_capstan"))
            .args(["daemon", "--repo", c.repo.to_str().unwrap(), "--data-dir", data.to_str().unwrap()])
            .args(args)
            .env("CAPSTAN_LOG", "info")
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        Replica { data, log, child }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Three control-plane replicas on a three-member etcd, one node agent joined through the second:
/// the leader killed with SIGKILL in the middle of a rollout → another replica takes over, the
/// rollout completes, no pod or ReplicaSet is made twice, the ClusterIP stays, each commit has
/// its note. Then the new leader paused (SIGSTOP) past its lease → the third replica leads; the
/// paused one, resumed, finds its writes refused by the fence and steps down.
#[test]
fn replicas_on_etcd_take_over_from_a_killed_leader_and_fence_a_paused_one() {
    let (_etcd_dir, etcd) = common::etcd(3);
    let url = etcd.url();
    let endpoints = etcd.endpoints().join(",");
    let ports: Vec<u16> = (0..3)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port())
        .collect();
    let listen: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let leader = || {
        let out = run_ok(Command::new("etcdctl").args(["--endpoints", &endpoints, "get", "/capstan/capstan/leader", "--print-value-only"]));
        out.trim().to_owned()
    };
    let args = |i: usize| -> Vec<&str> { vec!["--cluster-cidr", "10.224.0.0/16", "--store", &url, "--listen", &listen[i]] };
    let Some((run, mut c)) = docker_cluster(
        "replicas_on_etcd_take_over_from_a_killed_leader_and_fence_a_paused_one",
        "gitops-ha",
        &[("ns.yaml", NAMESPACE), ("web.yaml", &web("4", "blue")), ("svc.yaml", SERVICE)],
        &args(0),
    ) else {
        return;
    };
    wait("the first replica to lead", &c, || {
        (leader() == format!("https://{}", listen[0])).then_some(())
    });
    let others: Vec<Replica> = (1..3).map(|i| Replica::start(&c, i, &args(i))).collect();
    // From here kubectl goes through the second replica; the node agent knows all three and
    // starts with the first, the leader (when it is killed, the agent moves on).
    c.data = others[0].data.clone();
    wait("the second replica to answer", &c, || {
        c.kubectl(&["get", "--raw", "/readyz"]).status.success().then_some(())
    });
    let servers: Vec<String> = listen.iter().map(|l| format!("https://{l}")).collect();
    let agent = c.node_via(&format!("ha-{}", std::process::id()), &run, &[], &servers.join(","));
    wait("four blue pods ready", &c, || {
        let pods = ready_pods(&c);
        (pods.len() == 4 && pods.iter().all(|(_, colour, _)| colour == "blue")).then_some(())
    });
    let cluster_ip = c.kubectl_ok(&["get", "svc", "web", "-n", "shop", "-o", "jsonpath={.spec.clusterIP}"]);
    let first_commit = run_ok(Command::new("git").args(["rev-parse", "HEAD"]).current_dir(&c.repo))
        .trim()
        .to_owned();

    // A slow rollout, and the leader killed once it has begun.
    let red_commit = begin_slow_red_rollout(&c);
    let _ = c.child.kill();
    let _ = c.child.wait();
    let next = wait("another replica to lead", &c, || {
        let l = leader();
        (!l.is_empty() && l != format!("https://{}", listen[0])).then_some(l)
    });

    wait_red_rolled_out(&c);
    assert_eq!(
        c.kubectl_ok(&["get", "svc", "web", "-n", "shop", "-o", "jsonpath={.spec.clusterIP}"]),
        cluster_ip,
        "the ClusterIP survived the change of leader"
    );
    // One ReplicaSet per template, and one running app container per pod.
    let sets = c.kubectl_ok(&["get", "rs", "-n", "shop", "-o", "jsonpath={.items[*].metadata.name}"]);
    assert_eq!(sets.split_whitespace().count(), 2, "ReplicaSets: {sets}");
    assert_one_container_per_pod(&c, &run);
    // Each commit has its note (git keeps one per commit); the red one ends complete.
    for commit in [&first_commit, &red_commit] {
        let note: Value = wait("the commit's note", &c, || {
            let out = Command::new("git")
                .args(["notes", "--ref=capstan", "show", commit])
                .current_dir(&c.repo)
                .output()
                .ok()?;
            serde_json::from_slice::<Value>(&out.stdout).ok()
        });
        assert!(note["outcome"].is_string(), "{note}");
    }
    wait("the red commit's note to say complete", &c, || {
        let out = Command::new("git")
            .args(["notes", "--ref=capstan", "show", &red_commit])
            .current_dir(&c.repo)
            .output()
            .ok()?;
        let note: Value = serde_json::from_slice(&out.stdout).ok()?;
        (note["outcome"] == "complete").then_some(())
    });

    // The node agent moved to a live replica: its heartbeats go on.
    let agent_log = std::fs::read_to_string(&agent.log).unwrap_or_default();
    assert!(agent_log.contains("trying the next"), "{agent_log}");
    wait("the node to stay Ready", &c, || {
        let ready = c.kubectl_ok(&[
            "get",
            "nodes",
            "-o",
            "jsonpath={.items[0].status.conditions[?(@.type==\"Ready\")].status}",
        ]);
        (ready == "True").then_some(())
    });

    // Readiness and `capstan status` name the leader; status lists the replicas running.
    let ready = c.kubectl_ok(&["get", "--raw", "/readyz?verbose"]);
    assert!(
        ready.contains("[+]store ok") && ready.contains(&format!("[+]leader {next}")),
        "{ready}"
    );
    wait("capstan status to name the new leader and two replicas", &c, || {
        let out = Command::new(env!("CARGO_BIN_EXE_capstan"))
            .arg("status")
            .current_dir(&c.repo)
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let replicas = text.lines().find(|l| l.starts_with("replicas"))?.matches("https://").count();
        (text.contains(&format!("leader          {next}"))
            && text.contains(&format!("store           etcd://{endpoints}"))
            && replicas == 2)
            .then_some(())
    });

    // The new leader paused past its lease: the third replica takes over; the paused one,
    // resumed, has its writes refused by the fence and steps down.
    let (paused, other) = if next == format!("https://{}", listen[1]) {
        (&others[0], &others[1])
    } else {
        (&others[1], &others[0])
    };
    let pid = paused.child.id().to_string();
    run_ok(Command::new("kill").args(["-STOP", &pid]));
    let third = wait("the third replica to lead", &c, || {
        let l = leader();
        (!l.is_empty() && l != next).then_some(l)
    });
    run_ok(Command::new("kill").args(["-CONT", &pid]));
    wait("the resumed replica to find its term over", &c, || {
        let log = paused.log();
        (log.contains("refused by the fence") && log.contains("campaigning again")).then_some(())
    });
    assert_eq!(leader(), third, "the resumed replica did not take the leadership back");
    assert!(other.log().contains("leading the control plane"), "{}", other.log());
    // The cluster still converges under the third leader: a pod deleted is replaced.
    let victim = ready_pods(&c)[0].0.clone();
    c.kubectl_ok(&["delete", "pod", &victim, "-n", "shop", "--wait=false"]);
    wait("the deleted pod to be replaced", &c, || {
        let pods = ready_pods(&c);
        (pods.len() == 4 && pods.iter().all(|(name, _, _)| *name != victim)).then_some(())
    });
}

/// With `--revert-failed-rollouts`, a commit whose rollout misses its progress deadline is
/// reverted by a commit Capstan pushes to the remote: the note on the failed commit says why
/// and names the revert, and the cluster returns to the last good version.
#[test]
fn a_rollout_that_misses_its_deadline_is_reverted_by_a_commit_and_the_note_says_why() {
    let test = "a_rollout_that_misses_its_deadline";
    if !docker_available(test) {
        return;
    }
    build_images();
    let run = DockerRun::new("revert");
    let good = web("2", "blue");
    let c = Cluster::start_remote(
        &[("shop/namespace.yaml", NAMESPACE), ("shop/web.yaml", &good)],
        &["--revert-failed-rollouts", "--poll-interval", "1"],
    );
    let _node = c.node("revert-1", &run, &[]);
    wait("two blue pods", &c, || {
        let pods = ready_pods(&c);
        (pods.len() == 2 && pods.iter().all(|p| p.1 == "blue")).then_some(())
    });

    // An image tag that does not exist: the new pods never become ready.
    let bad = good
        .replace("image: capstan.local/testapp:latest", "image: capstan.local/testapp:does-not-exist")
        .replace("COLOUR, value: blue", "COLOUR, value: green")
        .replace("  replicas: 2\n", "  replicas: 2\n  progressDeadlineSeconds: 5\n");
    let failed = c.commit(&[("shop/web.yaml", &bad)], &[], "web: green");
    c.push();
    let remote = c.dir.path().join("remote.git");
    let bare = |args: &[&str]| run_ok(Command::new("git").arg("--git-dir").arg(&remote).args(args));
    let (revert, parent) = wait("Capstan's revert commit on the remote branch", &c, || {
        let line = bare(&["log", "-1", "--format=%H %P"]);
        let (tip, parent) = line.trim().split_once(' ')?;
        (parent == failed).then(|| (tip.to_owned(), parent.to_owned()))
    });
    assert_eq!(parent, failed);
    let message = bare(&["log", "-1", "--format=%B"]);
    assert!(message.starts_with("Revert \"web: green\""), "{message}");
    assert!(message.contains("shop/web: ") && message.contains("progress"), "{message}");
    assert_eq!(bare(&["log", "-1", "--format=%an"]).trim(), "Capstan");

    // The note on the failed commit: failed, why, and the revert.
    let note: Value = wait("the failed commit's note to name the revert", &c, || {
        let out = Command::new("git")
            .arg("--git-dir")
            .arg(&remote)
            .args(["notes", "--ref=capstan", "show", &failed])
            .output()
            .ok()?;
        let note: Value = serde_json::from_slice(&out.stdout).ok()?;
        (note["revertedBy"] == revert.as_str()).then_some(note)
    });
    assert_eq!(note["outcome"], "failed", "{note}");
    assert_eq!(note["rollouts"][0]["deployment"], "shop/web", "{note}");
    assert!(
        note["rollouts"][0]["message"].as_str().unwrap_or_default().contains("progress"),
        "{note}"
    );

    // The revert is applied: blue again, and nothing of the failed version is left.
    wait("the cluster back on the last good version", &c, || {
        let pods = ready_pods(&c);
        let images = pods_field(&c, "spec.containers[0].image");
        (pods.len() == 2 && pods.iter().all(|p| p.1 == "blue") && !images.contains("does-not-exist")).then_some(())
    });
    let applied = web_deployment(&c, "{.metadata.annotations.capstan\\.dev/commit}");
    assert_eq!(applied, revert, "the Deployment comes from the revert commit");
}
