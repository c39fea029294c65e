//! Access control from Git, end to end with the real kubectl, the kube client and the official
//! Python client: a service account gets exactly what its Role, ClusterRole (aggregated, by
//! resource name, by non-resource URL) and bindings grant, changes follow commits, token requests
//! cannot escalate; people authenticate with client certificates from `capstan user add` (refused when
//! expired, revoked, reserved or from another CA); `kubectl auth can-i` and `whoami` answer; the
//! audit log holds the refusals as audit.k8s.io/v1 Events; `capstan plan` flags sweeping grants.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::Cluster;
use serde_json::Value;

const OBJECTS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: app}
---
apiVersion: v1
kind: Namespace
metadata: {name: other}
---
apiVersion: v1
kind: Namespace
metadata: {name: dev}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: bot, namespace: app}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: deployer, namespace: app}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: settings, namespace: app}
data: {a: b}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: private, namespace: app}
data: {a: b}
---
apiVersion: v1
kind: Secret
metadata: {name: db, namespace: app}
stringData: {password: hunter2}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: cfg, namespace: dev}
data: {a: b}
"#;

const ROLE: &str = r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: pod-reader, namespace: app}
rules:
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch]
- apiGroups: [""]
  resources: [configmaps]
  resourceNames: [settings]
  verbs: [get]
"#;

const BOT_READS: &str = r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: bot-reads, namespace: app}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: pod-reader}
subjects: [{kind: ServiceAccount, name: bot}]
"#;

const CLUSTER: &str = r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: monitoring}
aggregationRule:
  clusterRoleSelectors: [{matchLabels: {example.com/aggregate-to-monitoring: "true"}}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: node-reader
  labels: {example.com/aggregate-to-monitoring: "true"}
rules: [{apiGroups: [""], resources: [nodes], verbs: [get, list, watch]}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: lease-viewer
  labels: {rbac.authorization.k8s.io/aggregate-to-view: "true"}
rules: [{apiGroups: [coordination.k8s.io], resources: [leases], verbs: [get, list, watch]}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: metrics-scraper}
rules: [{nonResourceURLs: [/metrics], verbs: [get]}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: bot-monitoring}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: monitoring}
subjects: [{kind: ServiceAccount, name: bot, namespace: app}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: bot-metrics}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: metrics-scraper}
subjects: [{kind: ServiceAccount, name: bot, namespace: app}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: deployer-edits, namespace: app}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: edit}
subjects: [{kind: ServiceAccount, name: deployer}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: dev-view, namespace: dev}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: view}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: Group, name: dev}]
"#;

/// Lists pods in `app` and tries a secret and another namespace, as service account `argv[3]`.
const PYTHON: &str = r#"
import sys
from kubernetes import client
from kubernetes.client.exceptions import ApiException
cfg = client.Configuration()
cfg.host, cfg.ssl_ca_cert = sys.argv[1], sys.argv[2]
cfg.api_key = {"authorization": "Bearer " + sys.argv[3]}
api = client.CoreV1Api(client.ApiClient(cfg))
print("pods", len(api.list_namespaced_pod("app").items))
for what, call in [("secret", lambda: api.read_namespaced_secret("db", "app")), ("other", lambda: api.list_namespaced_pod("other"))]:
    try:
        call()
        print(what, "read")
    except ApiException as e:
        print(what, e.status)
"#;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn explain(o: &Output) -> String {
    format!("status {:?}\nstdout: {}\nstderr: {}", o.status, text(&o.stdout), text(&o.stderr))
}

fn capstan(args: &[&str]) -> Output {
    common::run(Command::new(env!("CARGO_BIN_EXE_capstan")).args(args))
}

/// kubectl with a kubeconfig of its own (a person's).
fn kubectl_as(kubeconfig: &Path, args: &[&str]) -> Output {
    common::run(Command::new("kubectl").arg("--kubeconfig").arg(kubeconfig).args(args))
}

/// `capstan user add NAME --group G... --data-dir DATA --out OUT [extra]`, which must succeed.
fn add_user(data: &Path, name: &str, groups: &[&str], out: &Path, extra: &[&str]) {
    let mut args = vec![
        "user",
        "add",
        name,
        "--data-dir",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    for g in groups {
        args.extend(["--group", g]);
    }
    args.extend_from_slice(extra);
    let o = capstan(&args);
    assert!(o.status.success(), "{}", explain(&o));
}

fn forbidden(o: &Output, words: &str) {
    assert!(!o.status.success(), "{}", explain(o));
    assert!(text(&o.stderr).contains(words), "expected {words:?}: {}", explain(o));
}

#[test]
fn service_accounts_and_people_get_what_git_grants() {
    let c = Cluster::start(&[
        ("objects.yaml", OBJECTS),
        ("rbac/role.yaml", ROLE),
        ("rbac/bot-reads.yaml", BOT_READS),
        ("rbac/cluster.yaml", CLUSTER),
    ]);
    c.wait_until("the sync applies the RBAC objects", || {
        c.kubectl(&["get", "rolebinding", "dev-view", "-n", "dev"]).status.success()
    });
    // Served with kubectl's columns, the defaults beside those of Git.
    let bindings = c.kubectl_ok(&["get", "rolebindings", "-n", "app", "-o", "wide"]);
    assert!(bindings.contains("Role/pod-reader") && bindings.contains("/bot"), "{bindings}");
    let roles = c.kubectl_ok(&["get", "clusterroles"]);
    for name in ["cluster-admin", "admin", "edit", "view", "monitoring"] {
        assert!(roles.lines().any(|l| l.starts_with(&format!("{name} "))), "{name}: {roles}");
    }

    let token = c.kubectl_ok(&["create", "token", "bot", "-n", "app"]);
    let bot = |args: &[&str]| {
        let mut all = vec!["--token", token.trim()];
        all.extend_from_slice(args);
        c.kubectl(&all)
    };
    assert!(bot(&["get", "pods", "-n", "app"]).status.success());
    forbidden(
        &bot(&["get", "pods", "-n", "other"]),
        r#"pods is forbidden: User "system:serviceaccount:app:bot" cannot list resource "pods" in API group "" in the namespace "other""#,
    );
    forbidden(&bot(&["get", "secret", "db", "-n", "app"]), r#"cannot get resource "secrets""#);
    // resourceNames: one ConfigMap, not another, and not the list.
    assert!(bot(&["get", "configmap", "settings", "-n", "app"]).status.success());
    forbidden(&bot(&["get", "configmap", "private", "-n", "app"]), "cannot get resource");
    forbidden(&bot(&["get", "configmaps", "-n", "app"]), "cannot list resource");
    // Aggregation: `monitoring` holds node-reader's rules.
    assert!(bot(&["get", "nodes"]).status.success(), "{}", explain(&bot(&["get", "nodes"])));
    // nonResourceURLs.
    let metrics = bot(&["get", "--raw", "/metrics"]);
    assert!(text(&metrics.stdout).contains("apiserver_storage_objects"), "{}", explain(&metrics));
    assert!(bot(&["get", "--raw", "/healthz"]).status.success());
    let nobody = c.kubectl_ok(&["create", "token", "default", "-n", "app"]);
    forbidden(
        &c.kubectl(&["--token", nobody.trim(), "get", "--raw", "/metrics"]),
        "cannot get path \"/metrics\"",
    );
    forbidden(&c.kubectl(&["--token", nobody.trim(), "get", "pods", "-n", "app"]), "cannot list");

    // The kube client sees the same.
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        use k8s_openapi::api::core::v1::{Pod, Secret};
        let kubeconfig = kube::config::Kubeconfig::read_from(c.kubeconfig()).unwrap();
        let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await.unwrap();
        config.auth_info.token = Some(secrecy::SecretString::from(token.trim().to_owned()));
        let client = kube::Client::try_from(config).unwrap();
        let pods: kube::Api<Pod> = kube::Api::namespaced(client.clone(), "app");
        pods.list(&Default::default()).await.unwrap();
        let secrets: kube::Api<Secret> = kube::Api::namespaced(client, "app");
        match secrets.get("db").await {
            Err(kube::Error::Api(s)) => assert_eq!(s.code, 403, "{s:?}"),
            other => panic!("expected 403, got {other:?}"),
        }
    });

    // And so does the official Python client (Debian's python3-kubernetes).
    let python = common::run(Command::new("/usr/bin/python3").args([
        "-c",
        PYTHON,
        &c.server(),
        c.data.join("pki/ca.crt").to_str().unwrap(),
        token.trim(),
    ]));
    assert_eq!(text(&python.stdout).trim(), "pods 0\nsecret 403\nother 403", "{}", explain(&python));

    // kubectl auth can-i and whoami.
    assert_eq!(text(&bot(&["auth", "can-i", "list", "pods", "-n", "app"]).stdout).trim(), "yes");
    assert_eq!(text(&bot(&["auth", "can-i", "get", "secrets", "-n", "app"]).stdout).trim(), "no");
    assert_eq!(
        text(&bot(&["auth", "can-i", "get", "configmaps/settings", "-n", "app"]).stdout).trim(),
        "yes"
    );
    assert_eq!(text(&bot(&["auth", "can-i", "get", "/metrics"]).stdout).trim(), "yes");
    let list = text(&bot(&["auth", "can-i", "--list", "-n", "app"]).stdout);
    assert!(
        list.lines().any(|l| l.starts_with("pods ") && l.contains("[get list watch]")),
        "{list}"
    );
    assert!(
        list.lines().any(|l| l.starts_with("configmaps ") && l.contains("[settings]")),
        "{list}"
    );
    assert!(list.lines().any(|l| l.contains("/metrics")), "{list}");
    let whoami = text(&bot(&["auth", "whoami"]).stdout);
    assert!(
        whoami.contains("system:serviceaccount:app:bot") && whoami.contains("system:serviceaccounts:app"),
        "{whoami}"
    );
    // An administrator may do anything RBAC covers, but desired state is Git's.
    let admin_deploys = c.kubectl(&["auth", "can-i", "create", "deployments", "-n", "app"]);
    assert!(text(&admin_deploys.stdout).starts_with("no"), "{}", explain(&admin_deploys));
    assert_eq!(c.kubectl_ok(&["auth", "can-i", "delete", "pods", "-n", "app"]).trim(), "yes");

    // A commit adding a rule takes effect; so does one removing the binding.
    c.commit(
        &[(
            "rbac/role.yaml",
            &format!("{ROLE}- apiGroups: [\"\"]\n  resources: [secrets, serviceaccounts/token]\n  verbs: [get, create]\n"),
        )],
        &[],
        "bot reads secrets and asks for tokens",
    );
    c.wait_until("the new rule to let bot read the secret", || {
        bot(&["get", "secret", "db", "-n", "app"]).status.success()
    });
    // Asking for a token is no way around RBAC: not for an account holding more.
    assert!(bot(&["create", "token", "bot", "-n", "app"]).status.success());
    forbidden(
        &bot(&["create", "token", "deployer", "-n", "app"]),
        "may not ask for a token of service account app/deployer",
    );
    c.commit(&[], &["rbac/bot-reads.yaml"], "bot loses its binding");
    c.wait_until("the removed binding to revoke bot's reads", || {
        !bot(&["get", "pods", "-n", "app"]).status.success()
    });
    // A binding to a role that does not exist is allowed, grants nothing, and `capstan status`
    // says so (from the status branch).
    c.commit(
        &[(
            "rbac/ghost.yaml",
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {name: ghost, namespace: app}\n\
             roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: not-there}\n\
             subjects: [{kind: ServiceAccount, name: bot, namespace: app}]\n",
        )],
        &[],
        "bind a role that is not there",
    );
    c.wait_until("capstan status to report the binding to a missing role", || {
        let out = common::run(Command::new(env!("CARGO_BIN_EXE_capstan")).arg("status").current_dir(&c.repo));
        text(&out.stdout).contains("problem         RoleBinding app/ghost: binds Role app/not-there, which does not exist")
    });
    assert!(!bot(&["get", "pods", "-n", "app"]).status.success());

    // People: a certificate from the cluster CA; the `dev` group is bound to `view` in dev.
    let alice = c.dir.path().join("alice.kubeconfig");
    let data = c.data.to_str().unwrap();
    add_user(&c.data, "alice", &["dev"], &alice, &[]);
    assert!(kubectl_as(&alice, &["get", "configmap", "cfg", "-n", "dev"]).status.success());
    forbidden(
        &kubectl_as(&alice, &["get", "configmaps", "-n", "app"]),
        r#"User "alice" cannot list resource "configmaps""#,
    );
    let whoami = text(&kubectl_as(&alice, &["auth", "whoami", "-o", "json"]).stdout);
    let whoami: Value = serde_json::from_str(&whoami).unwrap();
    assert_eq!(whoami["status"]["userInfo"]["username"], "alice");
    assert_eq!(
        whoami["status"]["userInfo"]["groups"],
        serde_json::json!(["dev", "system:authenticated"])
    );
    // A role of Git's labelled aggregate-to-view adds to the built-in `view`, whose stored
    // rules show what it aggregates.
    assert!(kubectl_as(&alice, &["get", "leases", "-n", "dev"]).status.success());
    c.wait_until("view to show the aggregated rules", || {
        let view: Value = c.json(&["get", "clusterrole", "view"]);
        let rules = view["rules"].as_array().cloned().unwrap_or_default();
        let grants = |resource: &str| {
            rules
                .iter()
                .any(|r| r["resources"].as_array().is_some_and(|l| l.iter().any(|x| x == resource)))
        };
        grants("pods") && grants("leases") && !grants("secrets")
    });
    let list = text(&kubectl_as(&alice, &["auth", "can-i", "--list", "-n", "dev"]).stdout);
    assert!(
        list.lines().any(|l| l.starts_with("configmaps ") && l.contains("[get list watch]")),
        "{list}"
    );
    assert!(!list.contains("secrets"), "view does not read secrets: {list}");

    // Refused: reserved names, expired and revoked certificates, another CA's.
    let node_like = capstan(&["user", "add", "system:node:n1", "--data-dir", data]);
    assert!(!node_like.status.success());
    assert!(text(&node_like.stderr).contains("reserved"), "{}", explain(&node_like));
    let eve = c.dir.path().join("eve.kubeconfig");
    add_user(&c.data, "eve", &[], &eve, &["--valid-for", "1s"]);
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert!(!kubectl_as(&eve, &["get", "configmap", "cfg", "-n", "dev"]).status.success());
    let elsewhere = tempfile::tempdir().unwrap();
    let other_ca = capstan_daemon::pki::Ca::load_or_create(elsewhere.path()).unwrap();
    let forged = other_ca.issue_user("alice", &["dev".to_owned()], 3600).unwrap();
    let mallory = c.dir.path().join("mallory.kubeconfig");
    let ca_pem = std::fs::read_to_string(c.data.join("pki/ca.crt")).unwrap();
    capstan_daemon::kubeconfig::write_certificate(&mallory, &c.server(), &ca_pem, "alice", &forged.cert_pem, &forged.key_pem).unwrap();
    assert!(!kubectl_as(&mallory, &["get", "configmap", "cfg", "-n", "dev"]).status.success());
    let revoked = capstan(&["user", "revoke", "alice", "--kubeconfig", c.kubeconfig().to_str().unwrap()]);
    assert!(revoked.status.success(), "{}", explain(&revoked));
    forbidden(&kubectl_as(&alice, &["get", "configmap", "cfg", "-n", "dev"]), "Unauthorized");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    add_user(&c.data, "alice", &["dev"], &alice, &[]);
    assert!(
        kubectl_as(&alice, &["get", "configmap", "cfg", "-n", "dev"]).status.success(),
        "a new certificate works"
    );

    // The audit log: refusals, with who and why, as audit.k8s.io/v1 Events.
    let events: Vec<Value> = std::fs::read_to_string(c.data.join("audit.log"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        events
            .iter()
            .all(|e| e["apiVersion"] == "audit.k8s.io/v1" && e["kind"] == "Event" && e["level"] == "Metadata")
    );
    let refused = |user: &str, resource: &str| {
        events.iter().any(|e| {
            e["user"]["username"] == user
                && e["objectRef"]["resource"] == resource
                && e["annotations"]["authorization.k8s.io/decision"] == "forbid"
                && e["annotations"]["authorization.k8s.io/reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("cannot"))
        })
    };
    assert!(refused("alice", "configmaps"), "alice's refusal is not in the audit log");
    assert!(
        refused("system:serviceaccount:app:bot", "secrets"),
        "bot's refusal is not in the audit log"
    );
    assert!(
        events
            .iter()
            .any(|e| e["objectRef"]["subresource"] == "token" && e["verb"] == "create" && e["responseStatus"]["code"] == 201),
        "token requests are actions, audited"
    );
    assert!(
        events
            .iter()
            .any(|e| e["user"]["username"] == "system:anonymous" || e["responseStatus"]["code"] == 401)
    );
}

#[test]
fn plan_flags_sweeping_grants_and_bindings_to_missing_roles() {
    let (dir, repo) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let _ = dir;
    let repo = repo.path();
    let git = |args: &[&str]| common::run_ok(Command::new("git").arg("-C").arg(repo).args(args));
    git(&["init", "-q", "-b", "main"]);
    git(&["config", "user.email", "t@example.com"]);
    git(&["config", "user.name", "t"]);
    std::fs::write(repo.join("ns.yaml"), "apiVersion: v1\nkind: Namespace\nmetadata: {name: app}\n").unwrap();
    git(&["add", "-A"]);
    git(&["commit", "-q", "-m", "base"]);
    std::fs::write(
        repo.join("rbac.yaml"),
        r#"apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: ci-admin}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: cluster-admin}
subjects: [{kind: ServiceAccount, name: ci, namespace: app}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: auditors}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: secret-reader}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: Group, name: auditors}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: secret-reader}
rules: [{apiGroups: [""], resources: [secrets], verbs: [list]}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: ghost, namespace: app}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: not-there}
subjects: [{kind: User, name: bob}]
"#,
    )
    .unwrap();
    git(&["add", "-A"]);
    git(&["commit", "-q", "-m", "grants"]);
    let o = capstan(&["plan", "--repo", repo.to_str().unwrap(), "HEAD~1..HEAD"]);
    let out = text(&o.stdout);
    assert!(o.status.success(), "{}", explain(&o));
    assert!(
        out.contains("review: grants every right in the cluster (ClusterRole cluster-admin) to ServiceAccount ci"),
        "{out}"
    );
    assert!(
        out.contains("review: lets Group auditors read Secrets cluster-wide (ClusterRole secret-reader)"),
        "{out}"
    );
    assert!(out.contains("binds Role app/not-there, which does not exist"), "{out}");
    // A typo is an error located at its field, and `validate` says the likely word.
    std::fs::write(
        repo.join("typo.yaml"),
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {name: t, namespace: app}\nrules: [{apiGroups: [app], resources: [deployments], verbs: [get]}]\n",
    )
    .unwrap();
    let o = capstan(&["validate", repo.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(
        text(&o.stdout).contains("unknown API group \"app\" (did you mean \"apps\"?)"),
        "{}",
        explain(&o)
    );
}
