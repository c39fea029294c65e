//! kubectl exec, attach, cp and port-forward on the real kubectl, daemon, node agent and Docker
//! Engine: exit codes and stderr kept apart, piped stdin ending cleanly, a terminal under
//! `script` with its size, `-c` and the default-container annotation, the same over plain SPDY,
//! a missing command, a 20 MB
//! binary file copied in and out unchanged, a client that leaves taking its process with it,
//! output of an attached container and input to one (`attach -i`, `stdinOnce`); `kubectl debug`
//! with an ephemeral container beside a target, piped and under a terminal; port-forward to
//! a pod and to a Service with concurrent connections, to a listener on the pod's loopback only,
//! and to a port nothing listens on; the read-only credential and a service account are refused,
//! and every session is audited in the log and as an Event on the pod; then the day-two actions
//! (node labels, rollout restart kept across a commit) and bad input (a missing container, an
//! agent that does not answer).

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use common::{Cluster, docker_cluster, pod_ready};
use serde_json::Value;

const BOX: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: box}
spec:
  selector: {app: box}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: box}
spec:
  replicas: 1
  selector: {matchLabels: {app: box}}
  template:
    metadata:
      labels: {app: box}
      annotations: {kubectl.kubernetes.io/default-container: app}
    spec:
      containers:
      - name: side
        image: capstan.local/testapp:latest
        imagePullPolicy: Never
        env: [{name: WHO, value: side}]
        # A web server on the pod's loopback only, for port-forward to reach.
        command: [sh, -c, "mkdir -p /tmp/www && echo loopback-only > /tmp/www/index.html && httpd -p 127.0.0.1:9090 -h /tmp/www && while true; do echo tick; sleep 1; done"]
      - name: app
        image: capstan.local/testapp:latest
        imagePullPolicy: Never
        env: [{name: WHO, value: app}]
      # Reads what an attached client types; its stdin closes when that client's input ends.
      - name: echo
        image: capstan.local/testapp:latest
        imagePullPolicy: Never
        command: [cat]
        stdin: true
        stdinOnce: true
"#;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn explain(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        text(&o.stdout),
        text(&o.stderr)
    )
}

/// kubectl with `input` on its stdin.
fn kubectl_with_input(c: &Cluster, args: &[&str], input: &[u8]) -> Output {
    kubectl_with(c, args, input, &[])
}

/// What makes kubectl speak plain SPDY for exec, attach, cp and port-forward, as kubectl before
/// 1.30 (exec) and 1.31 (port-forward) and client-go's SPDY executor do.
const PLAIN_SPDY: [(&str, &str); 2] = [
    ("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", "false"),
    ("KUBECTL_PORT_FORWARD_WEBSOCKETS", "false"),
];

/// kubectl with `input` on its stdin and `envs` in its environment.
fn kubectl_with(c: &Cluster, args: &[&str], input: &[u8], envs: &[(&str, &str)]) -> Output {
    let mut child = Command::new("kubectl")
        .envs(envs.iter().copied())
        .arg("--kubeconfig")
        .arg(c.kubeconfig())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out
}

fn the_pod(c: &Cluster) -> String {
    let pods: Value = c.json(&["get", "pods", "-l", "app=box"]);
    pods["items"][0]["metadata"]["name"].as_str().unwrap().to_owned()
}

#[test]
fn exec_attach_and_cp_reach_the_pods_containers() {
    let Some((run, c)) = docker_cluster(
        "exec_attach_and_cp_reach_the_pods_containers",
        "streams",
        &[("box.yaml", BOX)],
        &["--cluster-cidr", "10.217.0.0/16"],
    ) else {
        return;
    };
    let node = format!("streams-{}", std::process::id());
    // hostPath volumes allowed: `kubectl debug node/…` mounts the node's root.
    let mut agent = c.node(&node, &run, &["--allow-host-path"]);
    let status = c.kubectl(&["rollout", "status", "deployment/box", "--timeout=120s"]);
    assert!(status.status.success(), "{}\n{}", explain(&status), c.log());
    c.wait_until_within("the pod to be ready", 60, || {
        let pods: Value = c.json(&["get", "pods", "-l", "app=box"]);
        pods["items"].as_array().unwrap().iter().any(pod_ready)
    });
    let pod = the_pod(&c);

    // Exit codes pass through, and stderr stays apart from stdout.
    let o = c.kubectl(&["exec", &pod, "--", "sh", "-c", "echo out; echo err >&2; exit 3"]);
    assert_eq!(o.status.code(), Some(3), "{}", explain(&o));
    assert_eq!(text(&o.stdout), "out\n", "{}", explain(&o));
    assert!(text(&o.stderr).contains("err\n"), "{}", explain(&o));
    assert!(text(&o.stderr).contains("command terminated with exit code 3"), "{}", explain(&o));
    let o = c.kubectl(&["exec", &pod, "--", "true"]);
    assert!(o.status.success(), "{}", explain(&o));

    // The default-container annotation, and -c.
    assert_eq!(c.kubectl_ok(&["exec", &pod, "--", "sh", "-c", "echo $WHO"]), "app\n");
    assert_eq!(c.kubectl_ok(&["exec", &pod, "-c", "side", "--", "sh", "-c", "echo $WHO"]), "side\n");
    assert_eq!(c.kubectl_ok(&["exec", "deploy/box", "--", "sh", "-c", "echo $WHO"]), "app\n");

    // Piped stdin: a large paste arrives whole and its end closes the process's input.
    let paste: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let o = kubectl_with_input(&c, &["exec", "-i", &pod, "--", "sha256sum"], &paste);
    assert!(o.status.success(), "{}", explain(&o));
    let expected = text(
        &Command::new("sha256sum")
            .stdin(std::fs::File::open(write_temp(&paste)).unwrap())
            .output()
            .unwrap()
            .stdout,
    );
    assert_eq!(text(&o.stdout).split_whitespace().next(), expected.split_whitespace().next());

    // A terminal: `script` gives kubectl one, whose size the process sees (kubectl sends it
    // once connected, so the shell waits a moment before it asks).
    let inner = format!(
        "stty rows 41 cols 103; kubectl --kubeconfig {} exec -it {pod} -- sh -c 'sleep 1; tty; stty size'",
        c.kubeconfig().display()
    );
    let o = common::run(Command::new("script").args(["-qec", &inner, "/dev/null"]));
    assert!(o.status.success(), "{}", explain(&o));
    let shown = text(&o.stdout);
    assert!(shown.contains("/dev/pts/"), "{shown:?}");
    assert!(shown.contains("41 103"), "{shown:?}");

    // A command that does not exist: the runtime's message and its exit code, as kubectl showed
    // them on Docker-based Kubernetes.
    let o = c.kubectl(&["exec", &pod, "--", "no-such-command"]);
    assert_eq!(o.status.code(), Some(126), "{}", explain(&o));
    assert!(
        text(&o.stdout).contains(r#"exec: "no-such-command": executable file not found"#),
        "{}",
        explain(&o)
    );

    // Plain SPDY: the exit code, stderr apart, piped input ending cleanly, a terminal with its
    // size, and port-forward to a pod's loopback.
    let o = kubectl_with(
        &c,
        &["exec", &pod, "--", "sh", "-c", "echo out; echo err >&2; exit 3"],
        b"",
        &PLAIN_SPDY,
    );
    assert_eq!(o.status.code(), Some(3), "{}", explain(&o));
    assert_eq!(text(&o.stdout), "out\n", "{}", explain(&o));
    assert!(text(&o.stderr).contains("err\n"), "{}", explain(&o));
    let o = kubectl_with(&c, &["exec", "-i", &pod, "--", "sha256sum"], &paste, &PLAIN_SPDY);
    assert_eq!(
        text(&o.stdout).split_whitespace().next(),
        expected.split_whitespace().next(),
        "{}",
        explain(&o)
    );
    let inner = format!(
        "stty rows 33 cols 77; KUBECTL_REMOTE_COMMAND_WEBSOCKETS=false kubectl --kubeconfig {} exec -it {pod} -- sh -c 'sleep 1; stty size'",
        c.kubeconfig().display()
    );
    let o = common::run(Command::new("script").args(["-qec", &inner, "/dev/null"]));
    assert!(text(&o.stdout).contains("33 77"), "{}", explain(&o));
    let (mut forward, port) = port_forward_with(&c, &[&format!("pod/{pod}"), ":9090"], &PLAIN_SPDY);
    let body = local_get(port[0], "/").unwrap_or_else(|e| panic!("through a plain SPDY tunnel: {e}"));
    assert!(body.contains("loopback-only"), "{body}");
    forward.kill().unwrap();
    forward.wait().unwrap();

    // cp both ways: 20 MB of random bytes, unchanged.
    let dir = tempfile::tempdir().unwrap();
    let original = dir.path().join("big");
    let mut data = vec![0u8; 20 << 20];
    rand_fill(&mut data);
    std::fs::write(&original, &data).unwrap();
    c.kubectl_ok(&["cp", original.to_str().unwrap(), &format!("{pod}:/tmp/big")]);
    let back = dir.path().join("back");
    c.kubectl_ok(&["cp", &format!("{pod}:/tmp/big"), back.to_str().unwrap()]);
    assert!(std::fs::read(&back).unwrap() == data, "the file came back changed");

    // A client that leaves takes its process with it.
    let mut leaving = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(c.kubeconfig())
        .args(["exec", &pod, "--", "sleep", "3131"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    c.wait_until_within("the exec'd sleep to run", 30, || {
        c.kubectl_ok(&["exec", &pod, "--", "ps"]).contains("sleep 3131")
    });
    leaving.kill().unwrap();
    leaving.wait().unwrap();
    c.wait_until_within("the exec'd sleep to end with its client", 30, || {
        !c.kubectl_ok(&["exec", &pod, "--", "ps"]).contains("sleep 3131")
    });

    // attach: the container's own output.
    let o = common::run(
        Command::new("timeout")
            .args(["5", "kubectl", "--kubeconfig"])
            .arg(c.kubeconfig())
            .args(["attach", &pod, "-c", "side"]),
    );
    assert!(text(&o.stdout).contains("tick"), "{}", explain(&o));

    // kubectl debug: an ephemeral container in the pod, seeing the target container's processes
    // (its PID 1 is the app's), reading piped input; it runs once and leaves the pod Running.
    let debug = |name: &str| {
        [
            "debug".to_owned(),
            pod.clone(),
            "--image=capstan.local/testapp:latest".to_owned(),
            "--image-pull-policy=Never".to_owned(),
            "--target=app".to_owned(),
            format!("--container={name}"),
        ]
    };
    let mut args = debug("debugger").to_vec();
    args.extend(["-i", "--", "sh", "-c", "read go; echo got-$go; cat /proc/1/cmdline; echo; ps"].map(str::to_owned));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = kubectl_with_input(&c, &args, b"on\n");
    assert!(o.status.success(), "{}\n{}", explain(&o), c.log());
    assert!(
        text(&o.stdout).contains("got-on\n/capstan-testapp"),
        "{}\nlogs: {}\n{}\n{}",
        explain(&o),
        explain(&c.kubectl(&["logs", &pod, "-c", "debugger"])),
        c.kubectl_ok(&["get", "pod", &pod, "-o", "yaml"]),
        c.log()
    );
    c.wait_until_within("the debugger's exit to be reported", 30, || {
        let p: Value = c.json(&["get", "pod", &pod]);
        p["status"]["ephemeralContainerStatuses"][0]["state"]["terminated"]["exitCode"] == 0
    });
    assert!(c.kubectl_ok(&["logs", &pod, "-c", "debugger"]).contains("got-on"));
    let p: Value = c.json(&["get", "pod", &pod]);
    assert!(pod_ready(&p), "the pod stays as it was: {p}");
    assert_eq!(p["status"]["containerStatuses"].as_array().unwrap().len(), 3, "{p}");
    // Under a terminal, as `kubectl debug -it` is mostly used.
    let inner = format!(
        "kubectl --kubeconfig {} {} -it -- sh -c 'sleep 1; tty; cat /proc/1/cmdline'",
        c.kubeconfig().display(),
        debug("shell").join(" ")
    );
    let o = common::run(Command::new("script").args(["-qec", &inner, "/dev/null"]));
    assert!(o.status.success(), "{}", explain(&o));
    assert!(text(&o.stdout).contains("/dev/pts/"), "{}", explain(&o));
    assert!(text(&o.stdout).contains("/capstan-testapp"), "{}", explain(&o));
    // A name in use, and a target the pod does not have, are refused with Kubernetes' words.
    let o = c.kubectl(&["debug", &pod, "--image=busybox", "-c", "debugger", "--", "true"]);
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains(r#"name: Duplicate value: "debugger""#), "{}", explain(&o));
    let o = c.kubectl(&["debug", &pod, "--image=busybox", "--target=nosuch", "--", "true"]);
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains(r#"targetContainerName: Not found: "nosuch""#),
        "{}",
        explain(&o)
    );

    // kubectl debug node/NAME: a pod on the node's network, processes and IPC, with the node's
    // root at /host; made and removed by hand (it is no desired state).
    let o = kubectl_with_input(
        &c,
        &[
            "debug",
            &format!("node/{node}"),
            "--image=capstan.local/testapp:latest",
            "--image-pull-policy=Never",
            "-i",
            "--",
            "sh",
            "-c",
            "read go; echo root=$(cat /host/etc/hostname); echo daemons=$(ps -o args | grep -c '[c]apstan daemon')",
        ],
        b"go\n",
    );
    assert!(o.status.success(), "{}\n{}", explain(&o), c.log());
    let hostname = std::fs::read_to_string("/etc/hostname").unwrap();
    let shown = text(&o.stdout);
    assert!(
        shown.contains(&format!("root={}", hostname.trim())),
        "the node's root at /host: {}",
        explain(&o)
    );
    assert!(!shown.contains("daemons=0"), "the node's processes: {}", explain(&o));
    let debugger = shown
        .split_whitespace()
        .find(|w| w.starts_with("node-debugger-"))
        .unwrap_or_else(|| panic!("kubectl names the pod it made: {}", explain(&o)))
        .to_owned();
    let p: Value = c.json(&["get", "pod", &debugger]);
    assert_eq!(p["status"]["podIP"], p["status"]["hostIP"], "on the node's network: {p}");
    c.kubectl_ok(&["delete", "pod", &debugger, "--wait=true"]);

    // port-forward: concurrent connections through one tunnel, to a pod and to a Service.
    let (mut forward, port) = port_forward(&c, &[&format!("pod/{pod}"), ":8080", ":9090"]);
    let fetches: Vec<_> = (0..8)
        .map(|i| {
            let port = port[i % 2];
            std::thread::spawn(move || local_get(port, "/"))
        })
        .collect();
    for (i, f) in fetches.into_iter().enumerate() {
        let body = f.join().unwrap().unwrap_or_else(|e| panic!("fetch {i} through the tunnel: {e}"));
        if i % 2 == 1 {
            // The web server that listens on the pod's loopback only.
            assert!(body.contains("loopback-only"), "{body}");
        }
    }
    forward.kill().unwrap();
    forward.wait().unwrap();
    let (mut forward, port) = port_forward(&c, &["svc/box", ":80"]);
    assert!(local_get(port[0], "/").is_ok());
    forward.kill().unwrap();
    forward.wait().unwrap();
    // A port nothing listens on: the refusal comes back on that connection's error stream.
    let (forward, port) = port_forward(&c, &[&format!("pod/{pod}"), ":9999"]);
    assert!(local_get(port[0], "/").is_err());
    let out = finish(forward);
    assert!(text(&out.stderr).contains("connection refused"), "{}", explain(&out));

    // Authorised: the read-only credential and a service account may not run commands.
    let ro = c.data.join("kubeconfig-readonly");
    let o = common::run(
        Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&ro)
            .args(["exec", &pod, "--", "true"]),
    );
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains(r#"User "capstan:viewer" cannot create resource "pods/exec""#),
        "{}",
        explain(&o)
    );
    let token = c.kubectl_ok(&["create", "token", "default"]);
    let o = common::run(
        Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&ro)
            .args(["port-forward", &pod, ":8080"]),
    );
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("pods/portforward"), "{}", explain(&o));
    let o = common::run(
        Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&ro)
            .args(["debug", &pod, "--image=busybox", "--", "true"]),
    );
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains(r#"cannot patch resource "pods/ephemeralcontainers""#),
        "{}",
        explain(&o)
    );
    let o = c.kubectl(&["--token", token.trim(), "exec", &pod, "--", "true"]);
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains(r#"User "system:serviceaccount:default:default" cannot"#),
        "{}",
        explain(&o)
    );

    // Audited: a log line and an Event on the pod.
    let log = c.log();
    assert!(
        log.lines()
            .any(|l| l.contains("capstan::audit") && l.contains(&pod) && l.contains("capstan:admin") && l.contains("sha256sum")),
        "no audit line for the exec in the daemon's log"
    );
    // ...and audit.k8s.io/v1 Events in DATA_DIR/audit.log: the exec, and the refused one.
    let audit: Vec<Value> = std::fs::read_to_string(c.data.join("audit.log"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let exec_by = |user: &str, decision: &str| {
        audit.iter().any(|e| {
            e["apiVersion"] == "audit.k8s.io/v1"
                && e["kind"] == "Event"
                && e["level"] == "Metadata"
                && e["objectRef"]["subresource"] == "exec"
                && e["objectRef"]["name"] == pod.as_str()
                && e["user"]["username"] == user
                && e["annotations"]["authorization.k8s.io/decision"] == decision
        })
    };
    assert!(exec_by("capstan:admin", "allow"), "no audit event of the exec");
    assert!(exec_by("capstan:viewer", "forbid"), "no audit event of the refused exec");
    c.wait_until_within("the pod's Exec event", 30, || {
        let events = c.kubectl_ok(&["get", "events", "--field-selector", &format!("involvedObject.name={pod}")]);
        events.contains("Exec") && events.contains("Attach") && events.contains("PortForward")
    });

    // A restarted container is a new one: an exec reaches the new one (the agent tries the
    // container it found last first, and looks again when that one refuses).
    c.kubectl_ok(&["exec", &pod, "-c", "app", "--", "touch", "/tmp/before-the-restart"]);
    let killed = std::process::Command::new("docker")
        .args(["ps", "-q", "--filter", &format!("name=k8s_app_{pod}_default_")])
        .output()
        .unwrap();
    let id = text(&killed.stdout).trim().to_owned();
    assert!(!id.is_empty() && !id.contains('\n'), "the app container: {}", explain(&killed));
    let o = std::process::Command::new("docker").args(["kill", &id]).output().unwrap();
    assert!(o.status.success(), "{}", explain(&o));
    c.wait_until_within("the app container restarted and the pod ready", 60, || {
        let p: Value = c.json(&["get", "pod", &pod]);
        let restarted = p["status"]["containerStatuses"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == "app" && s["restartCount"].as_u64() >= Some(1));
        restarted && pod_ready(&p)
    });
    let o = c.kubectl(&["exec", &pod, "-c", "app", "--", "test", "-e", "/tmp/before-the-restart"]);
    assert_eq!(o.status.code(), Some(1), "the exec reached the old container: {}", explain(&o));

    // Day-two actions that change no desired state. Nodes are observed state: an administrator
    // labels and annotates them.
    c.kubectl_ok(&["label", "node", &node, "team=blue"]);
    c.kubectl_ok(&["annotate", "node", &node, "note=rack 4"]);
    assert_eq!(
        c.kubectl_ok(&["get", "nodes", "-l", "team=blue", "-o", "name"]).trim(),
        format!("node/{node}")
    );

    // rollout restart: the pods are replaced, Git's template stays as it is, and a later commit
    // changing something else neither undoes the restart nor restarts again.
    c.kubectl_ok(&["rollout", "restart", "deployment/box"]);
    c.wait_until_within("the restart to replace the pod", 120, || {
        let pods: Value = c.json(&["get", "pods", "-l", "app=box"]);
        let items = pods["items"].as_array().unwrap();
        items.len() == 1 && items[0]["metadata"]["name"] != pod.as_str() && pod_ready(&items[0])
    });
    let restarted = the_pod(&c);
    let replica_sets = || c.kubectl_ok(&["get", "rs", "-l", "app=box", "-o", "name"]).lines().count();
    assert_eq!(replica_sets(), 2);
    c.commit(
        &[(
            "other.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: other}\ndata: {a: b}\n",
        )],
        &[],
        "something else",
    );
    c.wait_until_within("the other commit to apply", 60, || {
        c.kubectl(&["get", "configmap", "other"]).status.success()
    });
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert_eq!(the_pod(&c), restarted, "the pod was restarted again");
    assert_eq!(replica_sets(), 2);
    let deployment: Value = c.json(&["get", "deployment", "box"]);
    assert!(
        deployment["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"].is_string(),
        "{deployment}"
    );
    // Any other change to a workload is still Git's to make.
    let o = c.kubectl(&["scale", "deployment/box", "--replicas=3"]);
    assert!(!o.status.success() && text(&o.stderr).contains("box.yaml"), "{}", explain(&o));

    // attach -i: what the client sends reaches the container's own stdin.
    let o = kubectl_with_input(&c, &["attach", "-i", &restarted, "-c", "echo"], b"hello through attach\n");
    assert!(text(&o.stdout).contains("hello through attach"), "{}", explain(&o));

    // Bad input: a container the pod does not have, and a node agent that does not answer (the
    // error names the node, also after kubectl's fallback to SPDY).
    let o = c.kubectl(&["exec", &restarted, "-c", "nosuch", "--", "true"]);
    assert!(
        !o.status.success() && text(&o.stderr).contains("container nosuch is not valid"),
        "{}",
        explain(&o)
    );
    agent.kill9();
    let o = c.kubectl(&["exec", &restarted, "--", "true"]);
    assert!(!o.status.success(), "{}", explain(&o));
    assert!(
        text(&o.stderr).contains(&format!("the node agent of {node}")) && text(&o.stderr).contains("did not answer"),
        "{}",
        explain(&o)
    );
}

/// Starts `kubectl port-forward ARGS` and returns it with the local ports it listens on, in the
/// order given.
fn port_forward(c: &Cluster, args: &[&str]) -> (std::process::Child, Vec<u16>) {
    port_forward_with(c, args, &[])
}

/// As `port_forward`, with `envs` in kubectl's environment.
fn port_forward_with(c: &Cluster, args: &[&str], envs: &[(&str, &str)]) -> (std::process::Child, Vec<u16>) {
    use std::io::BufRead;
    let mut child = Command::new("kubectl")
        .envs(envs.iter().copied())
        .arg("--kubeconfig")
        .arg(c.kubeconfig())
        .arg("port-forward")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut ports = Vec::new();
    // "Forwarding from 127.0.0.1:43567 -> 8080", and again for [::1].
    while ports.len() < args.len() - 1 {
        match lines.next() {
            Some(Ok(line)) => {
                if let Some(rest) = line.strip_prefix("Forwarding from 127.0.0.1:") {
                    ports.push(rest.split_whitespace().next().unwrap().parse().unwrap());
                }
            }
            _ => panic!("kubectl port-forward ended: {}", explain(&finish(child))),
        }
    }
    // Keep draining its output so that it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, ports)
}

/// Stops a port-forward (if it still runs) and returns what it printed on stderr.
fn finish(mut child: std::process::Child) -> Output {
    std::thread::sleep(std::time::Duration::from_millis(500));
    let _ = child.kill();
    child.wait_with_output().unwrap()
}

/// GET `path` from 127.0.0.1:`port`: the body, or why not.
fn local_get(port: u16, path: &str) -> Result<String, String> {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").map_err(|e| e.to_string())?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).map_err(|e| e.to_string())?;
    if answer.starts_with("HTTP/1.") {
        Ok(answer)
    } else {
        Err(format!("no HTTP answer: {answer:?}"))
    }
}

fn write_temp(data: &[u8]) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("capstan-streams-{}", std::process::id()));
    std::fs::write(&path, data).unwrap();
    path
}

/// Bytes that do not compress and hold every value (xorshift; no dependency needed).
fn rand_fill(data: &mut [u8]) {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ u64::from(std::process::id());
    for b in data.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = (x >> 24) as u8;
    }
}
