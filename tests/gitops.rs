//! GitOps promises end to end, on the real daemon, node agent, Docker Engine, kubectl and git:
//! a commit with one broken file applies the rest, keeps the broken file's objects running at
//! their last good version, and names the file and line in the API (an event), in
//! `capstan status` and in the commit's git note; the fixing commit then rolls out.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Cluster, DockerRun, build_images, docker_available, run_ok};
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

/// The shop's pods that are Ready: (name, COLOUR).
fn ready_pods(c: &Cluster) -> Vec<(String, String)> {
    let out = c.kubectl(&["get", "pods", "-n", "shop", "-o", "json"]);
    let Ok(list) = serde_json::from_slice::<Value>(&out.stdout) else {
        return Vec::new();
    };
    let mut pods: Vec<(String, String)> = list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .filter(|p| {
            p["status"]["conditions"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
        })
        .map(|p| {
            (
                p["metadata"]["name"].as_str().unwrap_or_default().to_owned(),
                p["spec"]["containers"][0]["env"][0]["value"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect();
    pods.sort();
    pods
}

#[test]
fn a_broken_file_keeps_its_objects_running_names_file_and_line_and_the_fix_rolls_out() {
    if !docker_available("a_broken_file_keeps_its_objects_running_names_file_and_line_and_the_fix_rolls_out") {
        return;
    }
    build_images();
    let run = DockerRun::new("gitops-broken");
    let c = Cluster::start_with(
        &[
            ("ns.yaml", NAMESPACE),
            ("web.yaml", &web("2", "blue")),
            ("settings.yaml", &settings("blue")),
        ],
        &["--cluster-cidr", "10.204.0.0/16"],
    );
    let _agent = c.node(&format!("gitops-{}", std::process::id()), &run, &[]);
    let before = wait("two blue pods ready", &c, || {
        let pods = ready_pods(&c);
        (pods.len() == 2 && pods.iter().all(|(_, colour)| colour == "blue")).then_some(pods)
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
        (pods.len() == 3 && pods.iter().all(|(_, colour)| colour == "red")).then_some(())
    });
}
