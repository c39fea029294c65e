//! The `capstan validate` and `capstan plan` commands, run as a user runs them, on files and
//! repositories made with the `git` CLI.

use std::path::Path;
use std::process::{Command, Output};

mod common;
use common::{copy_dir, git};

fn capstan(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_capstan"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("capstan runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn examples() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples-repo")
}

#[test]
fn validate_accepts_the_example_repository() {
    let o = capstan(&["validate", examples().to_str().unwrap()], Path::new("."));
    assert!(o.status.success(), "{}", stdout(&o));
    assert!(
        stdout(&o).starts_with("ok: 7 objects in 3 files, 1 kustomize root built with kustomize v"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn a_network_policy_validates_with_the_warning_that_it_is_not_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("policy.yaml"),
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: db, namespace: shop}\nspec:\n  podSelector: {matchLabels: {app: db}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {app: web}}}]\n    ports: [{port: 5432}]\n",
    )
    .unwrap();
    let o = capstan(&["validate", "."], d);
    assert!(o.status.success(), "{}", stdout(&o));
    assert_eq!(
        stdout(&o).lines().collect::<Vec<_>>(),
        [
            "warning: policy.yaml:2:7: kind: NetworkPolicy is stored and served but not enforced: Capstan's pod network does not restrict traffic by policy yet, so every pod still reaches every pod [networkpolicy.networking.k8s.io/db -n shop]",
            "ok: 1 objects in 1 files",
        ]
    );
    // A peer that is both an address block and a selector is an error, located.
    std::fs::write(
        d.join("policy.yaml"),
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: db, namespace: shop}\nspec:\n  podSelector: {}\n  egress:\n  - to: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]\n",
    )
    .unwrap();
    let o = capstan(&["validate", "."], d);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o).contains(
            "policy.yaml:7:20: spec.egress[0].to[0].ipBlock: may not be specified together with podSelector or namespaceSelector"
        ),
        "{}",
        stdout(&o)
    );
}

#[test]
fn validate_prints_every_problem_with_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("apps")).unwrap();
    std::fs::write(
        d.join("apps/web.yaml"),
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: three\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n      containers:\n      - name: web\n        image: web:1\n        imagePullPolicyy: Always\n",
    )
    .unwrap();
    std::fs::write(
        d.join("apps/cm.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ok}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: ok}\n",
    )
    .unwrap();
    std::fs::write(d.join("broken.yml"), "a: [1\n").unwrap();
    let o = capstan(&["validate", "."], d);
    assert_eq!(o.status.code(), Some(1));
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        [
            "apps/cm.yaml:1:1: configmap/ok -n default is defined more than once; also at apps/cm.yaml:5 [configmap/ok -n default]",
            "apps/cm.yaml:5:1: configmap/ok -n default is defined more than once; also at apps/cm.yaml:1 [configmap/ok -n default]",
            "apps/web.yaml:6:13: spec.replicas: expected an integer, got the string \"three\" [deployment.apps/web -n default]",
            "apps/web.yaml:14:9: spec.template.spec.containers[0].imagePullPolicyy: unknown field \"imagePullPolicyy\" (did you mean \"imagePullPolicy\"?) [deployment.apps/web -n default]",
            "broken.yml:1:4: unclosed bracket '['",
            "5 problems in 3 files (0 objects valid, 3 files checked)",
        ]
    );

    let o = capstan(&["validate", ".", "--output", "json"], d);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["problems"][2]["code"], "wrong-type");
    assert_eq!(v["problems"][2]["line"], 6);
    assert_eq!(v["problems"][2]["field"], "spec.replicas");
}

#[test]
fn plan_shows_what_a_branch_changes() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path();
    copy_dir(&examples(), repo);
    git(repo, &["init", "-q"]);
    git(repo, &["add", "-A"]);
    git(repo, &["commit", "-q", "-m", "guestbook"]);
    git(repo, &["checkout", "-q", "-b", "bump"]);
    let frontend = repo.join("guestbook/frontend.yaml");
    let text = std::fs::read_to_string(&frontend).unwrap().replace("guestbook:1", "guestbook:2");
    std::fs::write(&frontend, text).unwrap();
    std::fs::remove_file(repo.join("settings.yaml")).unwrap();
    std::fs::write(
        repo.join("extra.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: extra, namespace: guestbook}\n",
    )
    .unwrap();
    std::fs::write(
        repo.join("hpa.yaml"),
        "apiVersion: autoscaling/v2\nkind: HorizontalPodAutoscaler\nmetadata: {name: frontend, namespace: guestbook}\nspec:\n  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: frontend}\n  maxReplicas: 5\n  metrics: [{type: Resource, resource: {name: cpu, target: {type: Utilization, averageUtilization: 60}}}]\n",
    )
    .unwrap();
    git(repo, &["add", "-A"]);
    git(repo, &["commit", "-q", "-m", "bump"]);

    let o = capstan(&["plan", "main..bump"], repo);
    let out = stdout(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("  + create  configmap/extra -n guestbook  (extra.yaml)"), "{out}");
    assert!(
        out.contains("  ~ update  deployment.apps/frontend -n guestbook  (guestbook/frontend.yaml)"),
        "{out}"
    );
    assert!(
        out.contains(
            "        ~ spec.template.spec.containers[name=frontend].image: \"capstan.local/guestbook:1\" → \"capstan.local/guestbook:2\""
        ),
        "{out}"
    );
    // The autoscaler owns the replicas from now on; the plan says so.
    assert!(
        out.contains("        = spec.replicas: owned by HorizontalPodAutoscaler frontend (Git's value is its starting point)"),
        "{out}"
    );
    assert!(
        out.contains("  - prune   clustersettings.capstan.dev/cluster  (was in settings.yaml)"),
        "{out}"
    );
    assert!(
        out.contains("2 to create, 1 to update, 1 to prune, 0 broken, 5 unchanged; 0 problems"),
        "{out}"
    );

    // A broken change on top: the plan names the file and line, and exits 1.
    std::fs::write(
        &frontend,
        std::fs::read_to_string(&frontend)
            .unwrap()
            .replace("replicas: 3", "replicas: \"3\""),
    )
    .unwrap();
    git(repo, &["commit", "-q", "-am", "oops"]);
    let o = capstan(&["plan", "main..HEAD", "-o", "json"], repo);
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let q = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "quarantine")
        .unwrap();
    assert_eq!(q["object"]["name"], "frontend");
    assert_eq!(q["kept"], true);
    assert_eq!(q["problems"][0]["file"], "guestbook/frontend.yaml");
    assert_eq!(q["problems"][0]["field"], "spec.replicas");
}
