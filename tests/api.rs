//! The API server through the real kubectl (the machine's dispatcher runs its bundled 1.33 for
//! our server) and through a real Rust client (kube), against a `capstan daemon` tracking a
//! repository committed with the git CLI.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::Cluster;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Secret};
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::watcher;

const NAMESPACE: &str = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n";
const WEB: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: shop
  labels: {app: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - {name: web, image: 'capstan.local/testapp:latest'}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
";
const DEBUG_POD: &str = "apiVersion: v1
kind: Pod
metadata:
  name: debug
  namespace: shop
  labels: {app: debug}
spec:
  containers:
  - {name: shell, image: 'capstan.local/testapp:latest', envFrom: [{secretRef: {name: db}}]}
";
const CONFIG: &str = "apiVersion: v1
kind: ConfigMap
metadata: {name: a, namespace: shop}
data: {k: v}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: b, namespace: shop}
data: {k: v}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: c, namespace: shop}
data: {k: v}
---
apiVersion: v1
kind: Secret
metadata: {name: db, namespace: shop}
stringData: {password: hunter2}
---
apiVersion: v1
kind: Secret
metadata: {name: unused, namespace: shop}
stringData: {token: abc}
";

/// The namespace's default service account reads its pods and config (deny by default).
const READER: &str = "apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: reader, namespace: shop}
rules:
- apiGroups: ['']
  resources: [pods, configmaps]
  verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: default-reads, namespace: shop}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: reader}
subjects: [{kind: ServiceAccount, name: default, namespace: shop}]
";

/// The database takes connections from the web pods only (stored and served, not enforced).
const POLICY: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db, namespace: shop}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: web}}}]
    ports: [{port: 5432}]
";

fn shop() -> Cluster {
    let c = Cluster::start(&[
        ("namespace.yaml", NAMESPACE),
        ("policy.yaml", POLICY),
        ("rbac.yaml", READER),
        ("apps/web.yaml", WEB),
        ("apps/debug.yaml", DEBUG_POD),
        ("config.yaml", CONFIG),
    ]);
    c.wait_until("the sync applies the commit", || {
        c.kubectl(&["get", "pod", "debug", "-n", "shop"]).status.success()
    });
    c
}

/// Whether some line of `text` reads `words` (whitespace between them does not matter).
fn has_line(text: &str, words: &[&str]) -> bool {
    text.lines().any(|l| {
        let tokens: Vec<&str> = l.split_whitespace().collect();
        tokens.windows(words.len()).any(|w| w == words)
    })
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn kubectl_reads_everything() {
    let c = shop();
    let version = c.kubectl_ok(&["version"]);
    assert!(version.contains("Server Version: v1.33.0-capstan"), "{version}");

    let resources = c.kubectl_ok(&["api-resources"]);
    for line in ["pods  ", "deployments ", "deploy ", "apps/v1", "clustersettings", "endpointslices"] {
        assert!(resources.contains(line), "api-resources lacks {line:?}:\n{resources}");
    }

    let all = c.kubectl_ok(&["get", "deploy,rs,svc,ep", "-n", "shop"]);
    assert!(has_line(&all, &["deployment.apps/web", "0/2"]), "{all}");
    assert!(has_line(&all, &["service/web", "ClusterIP"]), "{all}");

    let wide = c.kubectl_ok(&["get", "pods", "-A", "-o", "wide"]);
    let header = wide.lines().next().unwrap();
    for col in [
        "NAMESPACE",
        "NAME",
        "READY",
        "STATUS",
        "RESTARTS",
        "AGE",
        "IP",
        "NODE",
        "NOMINATED NODE",
        "READINESS GATES",
    ] {
        assert!(header.contains(col), "{header}");
    }
    let row: Vec<&str> = wide.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(&row[..5], &["shop", "debug", "0/1", "Pending", "0"], "{wide}");

    let yaml = c.kubectl_ok(&["get", "pod", "debug", "-n", "shop", "-o", "yaml"]);
    assert!(yaml.contains("capstan.dev/source: apps/debug.yaml"), "{yaml}");
    assert!(yaml.contains("kind: Pod"), "{yaml}");
    assert!(yaml.contains("resourceVersion:"), "{yaml}");

    // A NetworkPolicy reads as on Kubernetes, with its defaults filled in.
    let policies = c.kubectl_ok(&["get", "netpol", "-n", "shop"]);
    assert!(
        has_line(&policies, &["NAME", "POD-SELECTOR", "AGE"]) && has_line(&policies, &["db", "app=db"]),
        "{policies}"
    );
    let policy = c.json(&["get", "networkpolicy", "db", "-n", "shop"]);
    assert_eq!(policy["spec"]["policyTypes"], serde_json::json!(["Ingress"]), "{policy}");
    assert_eq!(policy["spec"]["ingress"][0]["ports"][0]["protocol"], "TCP", "{policy}");
    let described = c.kubectl_ok(&["describe", "networkpolicy", "db", "-n", "shop"]);
    assert!(has_line(&described, &["PodSelector:", "app=db"]), "{described}");
    // ...and the commit's note says it restricts nothing yet.
    c.wait_until("the commit's note", || !c.note("HEAD").is_empty());
    let note = c.note("HEAD");
    assert!(
        note.contains("\"warnings\"") && note.contains("NetworkPolicy is stored and served but not enforced"),
        "{note}"
    );

    let described = c.kubectl_ok(&["describe", "pod", "debug", "-n", "shop"]);
    assert!(has_line(&described, &["Name:", "debug"]), "{described}");
    assert!(has_line(&described, &["Namespace:", "shop"]), "{described}");
    assert!(described.contains("capstan.local/testapp:latest"), "{described}");

    // Kubernetes' defaults are filled in on write, as kube-apiserver does: what users read is
    // what runs.
    let d: serde_json::Value = c.json(&["get", "deploy", "web", "-n", "shop"]);
    assert_eq!(d["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%", "{d}");
    assert_eq!(d["spec"]["revisionHistoryLimit"], 10);
    assert_eq!(d["spec"]["progressDeadlineSeconds"], 600);
    let t = &d["spec"]["template"]["spec"];
    assert_eq!(t["restartPolicy"], "Always");
    assert_eq!(t["terminationGracePeriodSeconds"], 30);
    assert_eq!(t["containers"][0]["imagePullPolicy"], "Always", "the tag is latest");
    let svc: serde_json::Value = c.json(&["get", "svc", "web", "-n", "shop"]);
    assert_eq!(svc["spec"]["ports"][0]["protocol"], "TCP", "{svc}");
    assert_eq!(svc["spec"]["sessionAffinity"], "None");
    assert_eq!(svc["spec"]["type"], "ClusterIP");
    let described_svc = c.kubectl_ok(&["describe", "svc", "web", "-n", "shop"]);
    assert!(has_line(&described_svc, &["Port:", "http", "80/TCP"]), "{described_svc}");
    assert!(has_line(&described_svc, &["Session", "Affinity:", "None"]), "{described_svc}");
    let sa = c.kubectl_ok(&["get", "pod", "debug", "-n", "shop", "-o", "jsonpath={.spec.serviceAccountName}"]);
    assert_eq!(sa, "default", "admission names the service account");

    // Selectors and pages.
    let labelled = c.kubectl_ok(&["get", "pods", "-n", "shop", "-l", "app in (debug),tier!=db", "-o", "name"]);
    assert_eq!(labelled.trim(), "pod/debug");
    assert_eq!(
        c.kubectl_ok(&["get", "pods", "-A", "--field-selector", "metadata.name=nope", "-o", "name"])
            .trim(),
        ""
    );
    let paged = c.kubectl_ok(&["get", "cm", "-n", "shop", "--chunk-size=1", "-o", "name"]);
    // Three from Git, and the cluster CA every namespace gets (as in Kubernetes).
    assert_eq!(
        paged.lines().collect::<Vec<_>>(),
        ["configmap/a", "configmap/b", "configmap/c", "configmap/kube-root-ca.crt"]
    );
    // stringData is folded into data, as the API server stores it.
    let secret = c.kubectl_ok(&["get", "secret", "db", "-n", "shop"]);
    assert!(has_line(&secret, &["db", "Opaque", "1"]), "{secret}");
    let password = c.kubectl_ok(&["get", "secret", "db", "-n", "shop", "-o", "jsonpath={.data.password}"]);
    assert_eq!(password, "aHVudGVyMg==");

    // `kubectl create token` (TokenRequest) for an administrator; the token is the account's.
    let token = c.kubectl_ok(&["create", "token", "default", "-n", "shop", "--duration", "20m"]);
    let token = token.trim();
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
    let own = c.kubectl_ok(&["--token", token, "get", "configmaps", "-n", "shop", "-o", "name"]);
    assert!(own.contains("configmap/a"), "{own}");
    let denied = c.kubectl(&["--token", token, "get", "pods", "-n", "default"]);
    assert!(
        stderr(&denied).contains(
            r#"User "system:serviceaccount:shop:default" cannot list resource "pods" in API group "" in the namespace "default""#
        ),
        "{}",
        stderr(&denied)
    );
}

#[test]
fn writes_to_desired_state_are_refused_with_the_git_file() {
    let c = shop();
    let manifest = c.dir.path().join("web.yaml");
    std::fs::write(&manifest, WEB.replace("replicas: 2", "replicas: 5")).unwrap();
    let o = c.kubectl(&["apply", "-f", manifest.to_str().unwrap()]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("Error from server (MethodNotAllowed)"), "{err}");
    assert!(
        err.contains("deployments.apps \"web\" is managed in Git: to patch it, change apps/web.yaml in"),
        "{err}"
    );
    assert!(err.contains("on branch main and commit"), "{err}");
    // ...and said first, on a line of its own, before kubectl's own warnings and the patch it
    // quotes.
    let first = err.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("Warning: deployments.apps \"web\" is managed in Git: to patch it, change apps/web.yaml in"),
        "{err}"
    );
    assert_eq!(err.matches("Warning: deployments.apps").count(), 1, "said once: {err}");

    // kubectl diff: a dry run shows what committing the changed file would make, and writes
    // nothing; the unchanged file shows no difference.
    let o = c.kubectl(&["diff", "-f", manifest.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}{}", String::from_utf8_lossy(&o.stdout), stderr(&o));
    let shown = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        has_line(&shown, &["-", "replicas:", "2"]) && has_line(&shown, &["+", "replicas:", "5"]),
        "{shown}"
    );
    assert!(!shown.contains("last-applied-configuration"), "{shown}");
    let same = c.dir.path().join("same.yaml");
    std::fs::write(&same, WEB).unwrap();
    let o = c.kubectl(&["diff", "-f", same.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}{}", String::from_utf8_lossy(&o.stdout), stderr(&o));
    let image = c.dir.path().join("image.yaml");
    std::fs::write(&image, WEB.replace("testapp:latest", "testapp:v2")).unwrap();
    let o = c.kubectl(&["diff", "-f", image.to_str().unwrap()]);
    let shown = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(has_line(&shown, &["+", "-", "image:", "capstan.local/testapp:v2"]), "{shown}");
    // The container's other fields (defaults the store filled in) are untouched by the patch.
    assert!(
        !shown
            .lines()
            .any(|l| (l.starts_with('+') || l.starts_with('-')) && l.contains("imagePullPolicy")),
        "{shown}"
    );
    // The OpenAPI documents carry the kinds' schemas: kubectl explain reads them (v3), and the
    // Swagger document of every kind is there for older clients (v2).
    let explained = c.kubectl_ok(&["explain", "deployment.spec.template.spec.containers.ports"]);
    assert!(explained.contains("FIELD: ports <[]ContainerPort>"), "{explained}");
    assert!(explained.contains("containerPort\t<integer> -required-"), "{explained}");
    for kind in [
        "httproute",
        "gatewayclass",
        "clustersettings",
        "ingress",
        "cronjob",
        "selfsubjectaccessreview",
        "nodemetrics",
    ] {
        let o = c.kubectl(&["explain", kind, "--recursive"]);
        assert!(o.status.success(), "kubectl explain {kind}: {}", stderr(&o));
    }
    let explained = c.kubectl_ok(&["explain", "podmetrics.containers"]);
    assert!(explained.contains("usage\t<map[string]Quantity>"), "{explained}");
    let v2: serde_json::Value = serde_json::from_str(&c.kubectl_ok(&["get", "--raw", "/openapi/v2"])).unwrap();
    assert_eq!(v2["swagger"], "2.0");
    assert_eq!(
        v2["definitions"]["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"]["x-kubernetes-patch-merge-key"],
        "name"
    );
    let o = c.kubectl(&["apply", "--dry-run=server", "-f", manifest.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("(server dry run)"), "{}", stderr(&o));
    let replicas = c.kubectl_ok(&["get", "deploy", "web", "-n", "shop", "-o", "jsonpath={.spec.replicas}"]);
    assert_eq!(replicas, "2", "a dry run wrote");

    // The scale subresource: the count read as a Scale (kubectl, and autoscalers of any kind of
    // workload); scaling is a change of desired state, refused with the file.
    c.wait_until("web's pods made", || {
        c.json(&["get", "deploy", "web", "-n", "shop"])["status"]["replicas"] == 2
    });
    let scale = c.json(&["get", "deploy", "web", "-n", "shop", "--subresource=scale"]);
    assert_eq!(
        (scale["apiVersion"].as_str(), scale["kind"].as_str()),
        (Some("autoscaling/v1"), Some("Scale")),
        "{scale}"
    );
    assert_eq!(scale["spec"]["replicas"], 2, "{scale}");
    assert_eq!(scale["status"], serde_json::json!({"replicas": 2, "selector": "app=web"}));
    let table = c.kubectl_ok(&["get", "deploy", "web", "-n", "shop", "--subresource=scale"]);
    assert!(
        has_line(&table, &["NAME", "DESIRED", "AVAILABLE"]) && has_line(&table, &["web", "2", "2"]),
        "{table}"
    );
    let o = c.kubectl(&["scale", "deploy/web", "-n", "shop", "--replicas=5"]);
    assert!(
        stderr(&o).contains("deployments.apps \"web\" is managed in Git: to scale it, change apps/web.yaml"),
        "{}",
        stderr(&o)
    );
    // kubectl finds the subresource in discovery, so an autoscaler made by hand is refused by
    // the server, saying where it belongs.
    // It tries autoscaling/v2 and, refused, autoscaling/v1 (read from manifests, not served):
    // both refusals say where the autoscaler belongs.
    let o = c.kubectl(&["autoscale", "deploy", "web", "-n", "shop", "--max=3"]);
    let err = stderr(&o);
    assert!(
        err.contains("Error from server (MethodNotAllowed): horizontalpodautoscalers.autoscaling cannot be created through the API: desired state is read from Git; add it to a manifest in"),
        "{err}"
    );
    assert!(!err.contains("could not find the requested resource"), "{err}");
    assert_eq!(
        c.kubectl_ok(&["get", "deploy", "web", "-n", "shop", "-o", "jsonpath={.spec.replicas}"]),
        "2"
    );

    let o = c.kubectl(&["delete", "svc", "web", "-n", "shop"]);
    assert!(
        stderr(&o).contains("services \"web\" is managed in Git: to delete it, change apps/web.yaml"),
        "{}",
        stderr(&o)
    );

    let o = c.kubectl(&["create", "configmap", "new", "-n", "shop", "--from-literal=a=b"]);
    assert!(
        stderr(&o).contains("cannot be created through the API: desired state is read from Git; add it to a manifest in"),
        "{}",
        stderr(&o)
    );

    let o = c.kubectl(&["--token", "not-a-token", "get", "pods", "-A"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("You must be logged in to the server"), "{}", stderr(&o));

    // The read-only kubeconfig reads.
    let ro = c.data.join("kubeconfig-readonly");
    let o = common::run(
        Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&ro)
            .args(["get", "deploy", "-n", "shop", "-o", "name"]),
    );
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "deployment.apps/web");
    // ...everything but Secrets, as Kubernetes' `view`.
    let o = common::run(
        Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&ro)
            .args(["get", "secret", "db", "-n", "shop"]),
    );
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains(r#"User "capstan:viewer" cannot get resource "secrets""#),
        "{}",
        stderr(&o)
    );

    // The data directory and the store are the daemon's alone.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&c.data), 0o700);
    assert_eq!(mode(&c.data.join("store.redb")), 0o600);
    // Secrets are encrypted at rest: their values are nowhere in the store file.
    let store = std::fs::read(c.data.join("store.redb")).unwrap();
    for clear in [&b"hunter2"[..], b"aHVudGVyMg"] {
        assert!(
            !store.windows(clear.len()).any(|w| w == clear),
            "{}",
            String::from_utf8_lossy(clear)
        );
    }
    assert!(store.windows(22).any(|w| w == b"capstan:enc:aesgcm:v1:"));
}

#[test]
fn kubectl_get_watch_prints_changes_as_they_happen() {
    let c = shop();
    let mut child = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(c.kubeconfig())
        .args(["get", "pods", "-n", "shop", "-w"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let wait_for = |needle: &str| {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(_) => panic!("kubectl get -w never printed {needle:?}\n{}", c.log()),
            }
        }
    };
    wait_for("debug");
    c.commit(
        &[("apps/worker.yaml", &DEBUG_POD.replace("name: debug", "name: worker"))],
        &[],
        "add a worker",
    );
    let row = wait_for("worker");
    assert!(row.contains("Pending"), "{row}");
    let _ = child.kill();
    let _ = child.wait();
}

/// A kube client for `token`, trusting the cluster CA in the admin kubeconfig.
async fn client(c: &Cluster, token: Option<&str>) -> kube::Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(c.kubeconfig()).unwrap();
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await.unwrap();
    if let Some(t) = token {
        config.auth_info.token = Some(secrecy::SecretString::from(t.to_owned()));
    }
    kube::Client::try_from(config).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rust_client_lists_gets_and_watches() {
    let c = tokio::task::spawn_blocking(shop).await.unwrap();
    let client = client(&c, None).await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "shop");
    let list = deployments.list(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 1);
    let web = deployments.get("web").await.unwrap();
    assert_eq!(web.spec.unwrap().replicas, Some(2));
    let scale = deployments.get_scale("web").await.unwrap();
    assert_eq!(scale.spec.unwrap().replicas, Some(2));
    let pods: Api<Pod> = Api::all(client.clone());
    let by_label = pods.list(&ListParams::default().labels("app=debug")).await.unwrap();
    assert_eq!(by_label.items.len(), 1);

    // A watcher (list, then watch) sees a change committed to Git.
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "shop");
    let mut events = watcher(cms, watcher::Config::default()).boxed();
    let committer = tokio::task::spawn_blocking({
        let repo = c.repo.clone();
        move || {
            std::fs::write(
                repo.join("config.yaml"),
                CONFIG.replace(
                    "metadata: {name: b, namespace: shop}\ndata: {k: v}",
                    "metadata: {name: b, namespace: shop}\ndata: {k: changed}",
                ),
            )
            .unwrap();
            common::git(&repo, &["commit", "-q", "-am", "change b"]);
        }
    });
    let changed = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(e) = events.try_next().await.unwrap() {
            if let watcher::Event::Apply(cm) = e
                && cm.data.as_ref().and_then(|d| d.get("k")).map(String::as_str) == Some("changed")
            {
                return cm;
            }
        }
        panic!("watch ended")
    })
    .await
    .expect("the change arrives through the watch");
    assert_eq!(changed.metadata.name.as_deref(), Some("b"));
    committer.await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_joins_with_the_token_file_and_is_limited_to_its_own_objects() {
    let c = tokio::task::spawn_blocking(shop).await.unwrap();
    let token_file = std::fs::read_to_string(c.data.join("node-token")).unwrap();
    let (ca_hash, secret) = token_file.trim().split_once("::").unwrap();
    let admin = client(&c, None).await;
    let base = admin.default_namespace().to_owned();
    assert_eq!(base, "default");

    // The CA is served without authentication and matches the hash the token pins.
    let kubeconfig = kube::config::Kubeconfig::read_from(c.kubeconfig()).unwrap();
    let server = kubeconfig.clusters[0].cluster.as_ref().unwrap().server.clone().unwrap();
    let mut insecure = kube::Config::new(server.parse().unwrap());
    insecure.accept_invalid_certs = true;
    let anonymous = kube::Client::try_from(insecure).unwrap();
    let ca_pem: String = anonymous
        .request_text(http::Request::get("/capstan/v1/ca").body(Vec::new()).unwrap())
        .await
        .unwrap();
    assert_eq!(capstan_daemon_hash(&ca_pem), ca_hash);

    // Join with the secret: a credential for this node alone.
    let mut join_config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await.unwrap();
    join_config.auth_info.token = Some(secrecy::SecretString::from(secret.to_owned()));
    let joiner = kube::Client::try_from(join_config).unwrap();
    let joined: serde_json::Value = joiner
        .request(
            http::Request::post("/capstan/v1/join")
                .header("content-type", "application/json")
                .body(br#"{"nodeName":"n1"}"#.to_vec())
                .unwrap(),
        )
        .await
        .unwrap();
    let node_token = joined["token"].as_str().unwrap().to_owned();
    assert!(joined["servingCert"].as_str().unwrap().starts_with("-----BEGIN CERTIFICATE-----"));
    let n1 = client(&c, Some(&node_token)).await;

    // The join secret cannot take the name over now; the node itself re-joins with its own
    // credential, which stays valid.
    let join_n1 = || {
        http::Request::post("/capstan/v1/join")
            .header("content-type", "application/json")
            .body(br#"{"nodeName":"n1"}"#.to_vec())
            .unwrap()
    };
    let err = joiner.request::<serde_json::Value>(join_n1()).await.unwrap_err();
    assert!(
        err.to_string().contains("node \"n1\" has joined already") && err.to_string().contains("capstan node forget n1"),
        "{err}"
    );
    let rejoined: serde_json::Value = n1.request(join_n1()).await.unwrap();
    let node_token = rejoined["token"].as_str().unwrap().to_owned();
    let n1 = client(&c, Some(&node_token)).await;

    let nodes: Api<Node> = Api::all(n1.clone());
    let node: Node = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "n1", "labels": {"kubernetes.io/hostname": "n1"}},
        "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "ready"}],
                   "nodeInfo": {"kubeletVersion": "v1.33.0-capstan", "osImage": "Debian", "kernelVersion": "6", "containerRuntimeVersion": "docker://20", "machineID": "", "systemUUID": "", "bootID": "", "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "amd64"},
                   "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}]}
    }))
    .unwrap();
    nodes.create(&PostParams::default(), &node).await.unwrap();
    let leases: Api<Lease> = Api::namespaced(n1.clone(), "kube-node-lease");
    let lease: Lease = serde_json::from_value(serde_json::json!({"metadata": {"name": "n1", "namespace": "kube-node-lease"}, "spec": {"holderIdentity": "n1", "leaseDurationSeconds": 40}})).unwrap();
    leases.create(&PostParams::default(), &lease).await.unwrap();

    // Not another node's object, and not secrets of pods elsewhere.
    let other: Node = serde_json::from_value(serde_json::json!({"metadata": {"name": "n2"}})).unwrap();
    let err = nodes.create(&PostParams::default(), &other).await.unwrap_err();
    assert!(err.to_string().contains("system:node:n1 may not create nodes \"n2\""), "{err}");
    let secrets: Api<Secret> = Api::namespaced(n1.clone(), "shop");
    assert!(secrets.get("unused").await.is_err(), "no pod on n1 uses that secret");
    assert!(secrets.list(&ListParams::default()).await.is_err());
    // Once the scheduler binds the debug pod (which reads `db`) to n1, n1 may read `db`.
    let pods: Api<Pod> = Api::namespaced(admin.clone(), "shop");
    for _ in 0..100 {
        if pods.get("debug").await.unwrap().spec.unwrap().node_name.as_deref() == Some("n1") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(secrets.get("db").await.is_ok(), "the pod bound to n1 uses it");

    // Service-account tokens (TokenRequest): a node gets them only for pods bound to it.
    let ask = |client: kube::Client, body: serde_json::Value| async move {
        client
            .request::<serde_json::Value>(
                http::Request::post("/api/v1/namespaces/shop/serviceaccounts/default/token")
                    .header("content-type", "application/json")
                    .body(body.to_string().into_bytes())
                    .unwrap(),
            )
            .await
    };
    let debug_uid = pods.get("debug").await.unwrap().metadata.uid.unwrap();
    let bound = |uid: &str| {
        serde_json::json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
        "spec": {"boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": "debug", "uid": uid}}})
    };
    let issued = ask(n1.clone(), bound(&debug_uid)).await.unwrap();
    assert_eq!(issued["spec"]["expirationSeconds"], 3600);
    assert_eq!(issued["spec"]["boundObjectRef"]["uid"], debug_uid.as_str());
    let token = issued["status"]["token"].as_str().unwrap().to_owned();
    let unbound = serde_json::json!({"spec": {}});
    let err = ask(n1.clone(), unbound.clone()).await.unwrap_err();
    assert!(
        err.to_string().contains("may only ask for tokens bound to pods on the node"),
        "{err}"
    );
    let err = ask(n1.clone(), bound("another-uid")).await.unwrap_err();
    assert!(err.to_string().contains("does not match the UID of pod debug"), "{err}");
    let err = ask(admin.clone(), serde_json::json!({"spec": {"expirationSeconds": 60}}))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("less than 10 minutes"), "{err}");
    assert!(
        ask(admin.clone(), unbound).await.is_ok(),
        "an administrator may ask for an unbound token"
    );
    // The token is the pod's service account: it reads what its Role grants, not secrets.
    let as_sa = client(&c, Some(&token)).await;
    let in_shop: Api<Pod> = Api::namespaced(as_sa.clone(), "shop");
    assert!(in_shop.get("debug").await.is_ok());
    let err = Api::<Secret>::namespaced(as_sa, "shop").get("db").await.unwrap_err();
    assert!(err.to_string().contains("cannot get resource \"secrets\""), "{err}");
    let deployments: Api<Deployment> = Api::namespaced(n1.clone(), "shop");
    assert!(deployments.list(&ListParams::default()).await.is_ok(), "nodes read desired state");

    let (described, c) = tokio::task::spawn_blocking(move || (c.kubectl_ok(&["describe", "node", "n1"]), c))
        .await
        .unwrap();
    assert!(has_line(&described, &["Name:", "n1"]), "{described}");
    assert!(has_line(&described, &["HolderIdentity:", "n1"]), "{described}");
    assert!(has_line(&described, &["Ready", "True"]), "{described}");

    // An administrator forgets the node: its credential stops working, Node and Lease go, and
    // the name may join again with the secret.
    let kubeconfig = c.kubeconfig();
    let forget = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_capstan"))
            .args(["node", "forget", "n1", "--kubeconfig"])
            .arg(kubeconfig)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(forget.status.success(), "{}", stderr(&forget));
    assert!(stderr(&forget).contains("n1: credential revoked, removed 2"), "{}", stderr(&forget));
    let err = Api::<Node>::all(n1).get("n1").await.unwrap_err();
    assert!(err.to_string().contains("Unauthorized"), "{err}");
    assert!(Api::<Node>::all(admin.clone()).get_opt("n1").await.unwrap().is_none());
    let again: serde_json::Value = joiner.request(join_n1()).await.unwrap();
    assert!(again["token"].is_string());
}

fn capstan_daemon_hash(pem: &str) -> String {
    use sha2::Digest;
    let der = pem.lines().filter(|l| !l.starts_with("-----")).collect::<String>();
    let bytes = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, der).unwrap();
    hex::encode(sha2::Sha256::digest(bytes))
}

#[test]
fn a_restarted_daemon_keeps_objects_and_versions() {
    let mut c = shop();
    let before = c.kubectl_ok(&[
        "get",
        "deploy",
        "web",
        "-n",
        "shop",
        "-o",
        "jsonpath={.metadata.uid} {.metadata.resourceVersion}",
    ]);
    c.kill9_and_restart_daemon();
    let after = c.kubectl_ok(&[
        "get",
        "deploy",
        "web",
        "-n",
        "shop",
        "-o",
        "jsonpath={.metadata.uid} {.metadata.resourceVersion}",
    ]);
    assert_eq!(before, after, "nothing was re-applied after the restart");
    // The new process's watch cache starts at the current revision: a watch from before it is
    // answered 410 Expired, in the stream, as kube-apiserver does; clients list again.
    let raw = c.kubectl_ok(&["get", "--raw", "/api/v1/namespaces/shop/configmaps?watch=1&resourceVersion=1"]);
    let event: serde_json::Value = serde_json::from_str(raw.lines().next().unwrap()).unwrap();
    assert_eq!(event["type"], "ERROR");
    assert_eq!(event["object"]["code"], 410);
    assert_eq!(event["object"]["reason"], "Expired");

    // A name clients reach the API server by (a load balancer's) goes into its certificate with
    // --tls-san: kubectl checking that name is refused before, and served after.
    let by_name = ["--tls-server-name", "api.capstan.test", "get", "ns", "shop", "-o", "name"];
    let o = c.kubectl(&by_name);
    assert!(!o.status.success() && stderr(&o).contains("x509"), "{}", stderr(&o));
    c.restart_daemon_with(&["--tls-san", "api.capstan.test"]);
    assert_eq!(c.kubectl_ok(&by_name).trim(), "namespace/shop");
}

const SETTINGS: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\n  namespace: default\ndata:\n  colour: blue\n";

/// POSTs `body` to the daemon's /hooks/git with extra curl arguments; returns the HTTP status.
fn post_hook(c: &Cluster, body: &str, headers: &[String]) -> String {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
        .arg(c.data.join("pki/ca.crt"))
        .args(["-X", "POST", "-H", "Content-Type: application/json", "--data-binary", body]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    let out = cmd.arg(format!("{}/hooks/git", c.server())).output().expect("curl");
    assert!(out.status.success(), "curl: {}", stderr(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_signed_webhook_fetches_a_remote_at_once_and_an_unsigned_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("webhook-secret");
    std::fs::write(&secret_file, "s3cret\n").unwrap();
    // Polling once an hour: only the webhook can bring the new commit in time.
    let c = Cluster::start_remote(
        &[("settings.yaml", SETTINGS)],
        &["--poll-interval", "3600", "--webhook-secret-file", common::path_str(&secret_file)],
    );
    let colour = |c: &Cluster| c.kubectl_ok(&["get", "configmap", "settings", "-o", "jsonpath={.data.colour}"]);
    c.wait_until("the first commit applied", || {
        c.kubectl(&["get", "configmap", "settings"]).status.success()
    });
    assert_eq!(colour(&c), "blue");

    c.commit(&[("settings.yaml", &SETTINGS.replace("blue", "green"))], &[], "green");
    c.push();
    let body = r#"{"ref":"refs/heads/main"}"#;
    // Refused: no signature, a wrong one, a wrong token. Nothing is fetched.
    assert_eq!(post_hook(&c, body, &[]), "401");
    let wrong = hex::encode(capstan_daemon::webhook::hmac_sha256(b"guess", body.as_bytes()));
    assert_eq!(post_hook(&c, body, &[format!("X-Hub-Signature-256: sha256={wrong}")]), "401");
    assert_eq!(post_hook(&c, body, &["X-Gitlab-Token: guess".into()]), "401");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(colour(&c), "blue", "an unsigned call must not fetch");

    // GitHub's signature over the body with the secret: fetched and applied at once.
    let good = hex::encode(capstan_daemon::webhook::hmac_sha256(b"s3cret", body.as_bytes()));
    assert_eq!(post_hook(&c, body, &[format!("X-Hub-Signature-256: sha256={good}")]), "202");
    c.wait_until("the pushed commit applied after the webhook", || colour(&c) == "green");
    // The same signed delivery again is a replay: refused, whatever its delivery id says.
    assert_eq!(post_hook(&c, body, &[format!("X-Hub-Signature-256: sha256={good}")]), "409");
    assert_eq!(
        post_hook(
            &c,
            body,
            &[format!("X-Hub-Signature-256: sha256={good}"), "X-GitHub-Delivery: new-id".into()]
        ),
        "409"
    );

    // GitLab's token works too (a new push, a new body).
    let red = c.commit(&[("settings.yaml", &SETTINGS.replace("blue", "red"))], &[], "red");
    c.push();
    let next_body = r#"{"ref":"refs/heads/main","after":"2"}"#;
    assert_eq!(post_hook(&c, next_body, &["X-Gitlab-Token: s3cret".into()]), "202");
    c.wait_until("the next commit applied after the webhook", || colour(&c) == "red");

    // The write-back reaches the remote: the note on the commit and the status branch.
    let remote = c.dir.path().join("remote.git");
    let in_remote = |args: &[&str]| {
        let out = Command::new("git").arg("--git-dir").arg(&remote).args(args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // (The status branch commits only when observed status changes; a ConfigMap has none.)
    c.wait_until("the note and the status branch pushed to the remote", || {
        in_remote(&["notes", "--ref=capstan", "show", &red]).contains("\"outcome\": \"complete\"")
            && in_remote(&["log", "-1", "--format=%B", "refs/heads/capstan/status"]).contains("Capstan-Desired-Commit: ")
    });
    let status = in_remote(&["show", "refs/heads/capstan/status:namespaces/default.json"]);
    assert!(status.contains("Active"), "{status}");
}
