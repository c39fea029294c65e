//! kubectl exec, attach and cp on the real kubectl, daemon, node agent and Docker Engine: exit
//! codes and stderr kept apart, piped stdin ending cleanly, a terminal under `script` with its
//! size, `-c` and the default-container annotation, a missing command, a 20 MB binary file
//! copied in and out unchanged, a client that leaves taking its process with it, output of an
//! attached container; the read-only credential and a service account are refused, and every
//! exec is audited in the log and as an Event on the pod.

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use common::{Cluster, docker_cluster, pod_ready};
use serde_json::Value;

const BOX: &str = r#"
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
        command: [sh, -c, "while true; do echo tick; sleep 1; done"]
      - name: app
        image: capstan.local/testapp:latest
        imagePullPolicy: Never
        env: [{name: WHO, value: app}]
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
    let mut child = Command::new("kubectl")
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
    let pods: Value = serde_json::from_str(&c.kubectl_ok(&["get", "pods", "-l", "app=box", "-o", "json"])).unwrap();
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
    let _agent = c.node(&format!("streams-{}", std::process::id()), &run, &[]);
    let status = c.kubectl(&["rollout", "status", "deployment/box", "--timeout=120s"]);
    assert!(status.status.success(), "{}\n{}", explain(&status), c.log());
    c.wait_until_within("the pod to be ready", 60, || {
        let pods: Value = serde_json::from_str(&c.kubectl_ok(&["get", "pods", "-l", "app=box", "-o", "json"])).unwrap();
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

    // Authorised: the read-only credential and a service account may not run commands.
    let ro = c.data.join("kubeconfig-readonly");
    let o = common::run(
        Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&ro)
            .args(["exec", &pod, "--", "true"]),
    );
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("view rights"), "{}", explain(&o));
    let token = c.kubectl_ok(&["create", "token", "default"]);
    let o = c.kubectl(&["--token", token.trim(), "exec", &pod, "--", "true"]);
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("system:serviceaccount:default:default may not create pods/exec"),
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
    c.wait_until_within("the pod's Exec event", 30, || {
        let events = c.kubectl_ok(&["get", "events", "--field-selector", &format!("involvedObject.name={pod}")]);
        events.contains("Exec") && events.contains("Attach")
    });
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
