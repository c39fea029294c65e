//! Kustomize in the tracked tree, end to end on the daemon, the real kustomize (kubectl's), git and
//! kubectl: a base, two overlays (namespace, prefix, labels, images, generators with hashed names
//! the Deployment follows, strategic-merge and JSON 6902 patches, a component) and plain files;
//! the base never applied by itself, provenance naming the source files and the root; a bumped
//! image tag rolling only its overlay, shown by `capstan plan` and the note; a broken overlay
//! keeping its objects while the rest applies, its kustomization and kustomize's message named in
//! `capstan status` and the note; `capstan validate` on the same tree.

mod common;

use common::{Cluster, path_str};

const NAMESPACES: &str =
    "apiVersion: v1\nkind: Namespace\nmetadata: {name: staging}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: prod}\n";

const BASE_DEPLOYMENT: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: app
        image: capstan.local/testapp:1
        envFrom:
        - configMapRef: {name: web-config}
";

const BASE_SERVICE: &str = "apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
";

const BASE: &str = "resources: [deployment.yaml, service.yaml]
labels:
- pairs: {team: shop}
  includeSelectors: false
configMapGenerator:
- name: web-config
  literals: [COLOUR=blue]
";

const COMPONENT: &str = "apiVersion: kustomize.config.k8s.io/v1alpha1
kind: Component
patches:
- target: {kind: Deployment, name: web}
  patch: |-
    - op: add
      path: /metadata/annotations/monitoring
      value: \"on\"
";

fn overlay(env: &str, tag: &str, replicas: u32) -> String {
    format!(
        "resources: [../../base]
namespace: {env}
namePrefix: {env}-
components: [../../components/monitoring]
images:
- name: capstan.local/testapp
  newTag: \"{tag}\"
patches:
- path: replicas.yaml
secretGenerator:
- name: web-secret
  literals: [TOKEN=s3cret-{env}]
"
    ) + &format!("# replicas {replicas}\n")
}

fn replicas_patch(replicas: u32) -> String {
    format!("apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: web}}\nspec:\n  replicas: {replicas}\n")
}

fn files() -> Vec<(&'static str, String)> {
    vec![
        ("namespaces.yaml", NAMESPACES.to_owned()),
        ("base/kustomization.yaml", BASE.to_owned()),
        ("base/deployment.yaml", BASE_DEPLOYMENT.to_owned()),
        ("base/service.yaml", BASE_SERVICE.to_owned()),
        ("components/monitoring/kustomization.yaml", COMPONENT.to_owned()),
        ("overlays/staging/kustomization.yaml", overlay("staging", "2", 2)),
        ("overlays/staging/replicas.yaml", replicas_patch(2)),
        ("overlays/prod/kustomization.yaml", overlay("prod", "3", 3)),
        ("overlays/prod/replicas.yaml", replicas_patch(3)),
    ]
}

#[test]
fn overlays_are_built_applied_rolled_and_kept_when_broken() {
    let files = files();
    let refs: Vec<(&str, &str)> = files.iter().map(|(p, t)| (*p, t.as_str())).collect();
    let c = Cluster::start(&refs);
    c.wait_until("both overlays applied", || {
        c.kubectl(&["get", "deployment", "-n", "prod", "prod-web"]).status.success()
            && c.kubectl(&["get", "deployment", "-n", "staging", "staging-web"]).status.success()
    });
    // Each overlay's objects: names, namespace, image tag, patches, component, labels.
    let prod = c.json(&["get", "deployment", "-n", "prod", "prod-web"]);
    assert_eq!(
        prod["spec"]["template"]["spec"]["containers"][0]["image"],
        "capstan.local/testapp:3"
    );
    assert_eq!(prod["spec"]["replicas"], 3);
    assert_eq!(prod["metadata"]["labels"]["team"], "shop");
    assert_eq!(prod["metadata"]["annotations"]["monitoring"], "on");
    let staging = c.json(&["get", "deployment", "-n", "staging", "staging-web"]);
    assert_eq!(
        staging["spec"]["template"]["spec"]["containers"][0]["image"],
        "capstan.local/testapp:2"
    );
    assert_eq!(staging["spec"]["replicas"], 2);
    // The generated ConfigMap has a hashed name, and the Deployment follows it.
    let config = prod["spec"]["template"]["spec"]["containers"][0]["envFrom"][0]["configMapRef"]["name"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        config.starts_with("prod-web-config-") && config.len() > "prod-web-config-".len(),
        "{config}"
    );
    let cm = c.json(&["get", "configmap", "-n", "prod", &config]);
    assert_eq!(cm["data"]["COLOUR"], "blue");
    let secrets = c.kubectl_ok(&["get", "secrets", "-n", "prod", "-o", "name"]);
    assert!(secrets.contains("secret/prod-web-secret-"), "{secrets}");
    // The base is never applied by itself.
    assert!(!c.kubectl(&["get", "deployment", "web"]).status.success());
    // Provenance: the file each object came from, the root, and no origin annotation.
    let a = &prod["metadata"]["annotations"];
    assert_eq!(a["capstan.dev/source"], "base/deployment.yaml");
    assert_eq!(a["capstan.dev/kustomization"], "overlays/prod/kustomization.yaml");
    assert!(a.get("config.kubernetes.io/origin").is_none(), "{a}");
    assert_eq!(
        cm["metadata"]["annotations"]["capstan.dev/source"], "base/kustomization.yaml",
        "a generated object comes from the kustomization that generates it"
    );

    // A new tag for prod: only prod's Deployment changes; plan and note say so.
    let staging_version = staging["metadata"]["resourceVersion"].clone();
    let before = common::run_ok(std::process::Command::new("git").args(["rev-parse", "HEAD"]).current_dir(&c.repo))
        .trim()
        .to_owned();
    let after = c.commit(
        &[("overlays/prod/kustomization.yaml", &overlay("prod", "4", 3))],
        &[],
        "prod: testapp 4",
    );
    c.wait_until("prod rolled to tag 4", || {
        c.kubectl_ok(&[
            "get",
            "deployment",
            "-n",
            "prod",
            "prod-web",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].image}",
        ]) == "capstan.local/testapp:4"
    });
    let staging_now = c.json(&["get", "deployment", "-n", "staging", "staging-web"]);
    assert_eq!(staging_now["metadata"]["resourceVersion"], staging_version, "staging untouched");
    let plan = common::run_ok(std::process::Command::new(env!("CARGO_BIN_EXE_capstan")).args([
        "plan",
        "--repo",
        path_str(&c.repo),
        &format!("{before}..{after}"),
    ]));
    assert!(plan.contains("prod-web") && plan.contains("capstan.local/testapp:4"), "{plan}");
    assert!(!plan.contains("staging-web"), "{plan}");
    c.wait_until("the note of the bump naming prod's Deployment", || {
        c.note(&after).contains("prod-web")
    });

    // A broken overlay: its objects stay; the other overlay and plain files still apply.
    let broken = c.commit(
        &[
            (
                "overlays/staging/kustomization.yaml",
                &overlay("staging", "2", 2).replace("replicas.yaml", "missing.yaml"),
            ),
            ("overlays/prod/kustomization.yaml", &overlay("prod", "5", 3)),
            ("later.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: later}\n"),
        ],
        &[],
        "staging broken, prod 5",
    );
    c.wait_until("prod at 5 and the plain file applied beside the broken overlay", || {
        c.kubectl(&["get", "configmap", "later"]).status.success()
            && c.kubectl_ok(&[
                "get",
                "deployment",
                "-n",
                "prod",
                "prod-web",
                "-o",
                "jsonpath={.spec.template.spec.containers[0].image}",
            ]) == "capstan.local/testapp:5"
    });
    assert!(
        c.kubectl(&["get", "deployment", "-n", "staging", "staging-web"]).status.success(),
        "the broken overlay's objects keep running"
    );
    c.wait_until(
        "an event on the kept Deployment naming the kustomization and kustomize's message",
        || {
            let events = c.kubectl_ok(&[
                "get",
                "events",
                "-n",
                "staging",
                "--field-selector",
                "reason=InvalidManifest",
                "-o",
                "jsonpath={.items[*].message}",
            ]);
            events.contains("overlays/staging/kustomization.yaml:1:1: kustomize build failed:") && events.contains("missing.yaml")
        },
    );
    c.wait_until("the note of the broken commit", || c.note(&broken).contains("missing.yaml"));
    let text = c.note(&broken);
    assert!(text.contains("overlays/staging/kustomization.yaml"), "{text}");
    let status = common::run_ok(
        std::process::Command::new(env!("CARGO_BIN_EXE_capstan"))
            .arg("status")
            .current_dir(&c.repo),
    );
    assert!(
        status.contains("overlays/staging/kustomization.yaml") && status.contains("missing.yaml"),
        "{status}"
    );
}

/// `capstan validate DIR`, with builds under `tmp` when given.
fn validate(dir: &std::path::Path, tmp: Option<&std::path::Path>) -> std::process::Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_capstan"));
    cmd.args(["validate", path_str(dir)]);
    if let Some(t) = tmp {
        cmd.env("TMPDIR", t);
    }
    cmd.output().unwrap()
}

#[test]
fn validate_builds_the_roots_of_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    for (path, text) in files() {
        let p = dir.path().join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    let out = validate(dir.path(), None);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("2 kustomize roots built"), "{text}");
    // A remote base and a patch that does not parse: located problems, exit 1.
    std::fs::write(
        dir.path().join("overlays/prod/kustomization.yaml"),
        "resources:\n- github.com/org/repo//deploy?ref=v1\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("overlays/staging/replicas.yaml"), "spec: [\n").unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let out = validate(dir.path(), Some(scratch.path()));
    let left: Vec<_> = std::fs::read_dir(scratch.path()).unwrap().collect();
    assert!(left.is_empty(), "the builds left {left:?} behind");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("overlays/prod/kustomization.yaml:2:3: resources[0]:") && text.contains("vendor the base into the repository"),
        "{text}"
    );
    assert!(
        text.contains("overlays/staging/kustomization.yaml:1:1: kustomize build failed:"),
        "{text}"
    );
    // A value a patch sets is located in the patch; one from the base, in the base.
    std::fs::write(dir.path().join("overlays/prod/kustomization.yaml"), overlay("prod", "3", 3)).unwrap();
    std::fs::write(
        dir.path().join("overlays/prod/replicas.yaml"),
        replicas_patch(3).replace("replicas: 3", "replicas: -1"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("base/service.yaml"),
        BASE_SERVICE.replace("port: 80", "port: 70000"),
    )
    .unwrap();
    let out = validate(dir.path(), None);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("overlays/prod/replicas.yaml:5:13: spec.replicas: must be greater than or equal to 0")
            && text.contains("[deployment.apps/prod-web -n prod]"),
        "{text}"
    );
    assert!(
        text.contains("base/service.yaml:7:18: spec.ports[0].port:") && text.contains("[service/prod-web -n prod]"),
        "{text}"
    );
}
