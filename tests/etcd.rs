//! The control plane with its store on etcd (`capstan daemon --store etcd://…`), on real etcd
//! members: the objects a commit makes live in etcd under the cluster's prefix, Secrets sealed;
//! while etcd is lost the daemon stays up, reads still answer, writes fail with 503 naming etcd
//! and /readyz says why; once etcd is back everything works again without a restart. A cluster
//! on the embedded store moves to etcd with `capstan store migrate` and back, keeping every object. etcd
//! over TLS with client certificates: the daemon's gets in, a connection without one is refused.
//! (The daemon killed mid-rollout on etcd, and several replicas, are in tests/gitops.rs.)

mod common;

use std::process::Command;

use common::{Cluster, run};

const FILES: &[(&str, &str)] = &[
    ("ns.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n"),
    (
        "secret.yaml",
        "apiVersion: v1\nkind: Secret\nmetadata: {name: db, namespace: shop}\nstringData: {password: hunter2-plain}\n",
    ),
    (
        "web.yaml",
        "apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: app, image: capstan-test-app:1}]
",
    ),
];

fn etcdctl(endpoints: &str, args: &[&str]) -> String {
    let out = run(Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg("--endpoints")
        .arg(endpoints)
        .args(args));
    assert!(out.status.success(), "etcdctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_cluster_on_etcd_keeps_its_objects_there_and_rides_out_losing_it() {
    let (_etcd_dir, mut etcd) = common::etcd(1);
    let endpoints = etcd.endpoints().join(",");
    let mut c = Cluster::start_with(FILES, &["--store", &etcd.url(), "--cluster-cidr", "10.223.0.0/16"]);
    c.wait_until("the deployment's two pods exist (pending: there is no node)", || {
        c.kubectl(&["get", "pods", "-n", "shop", "-o", "name"])
            .stdout
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .count()
            == 2
    });

    // The objects are in etcd, under the cluster's prefix; the Secret is sealed there.
    let keys = etcdctl(&endpoints, &["get", "--prefix", "/capstan/registry/", "--keys-only"]);
    assert!(keys.contains("/capstan/registry/apps/deployments/shop/web"), "{keys}");
    assert!(keys.contains("/capstan/registry/core/secrets/shop/db"), "{keys}");
    let sealed = etcdctl(&endpoints, &["get", "/capstan/registry/core/secrets/shop/db", "--print-value-only"]);
    assert!(!sealed.is_empty() && !sealed.contains("hunter2-plain") && !sealed.contains("aHVudGVyMi1wbGFpbg"));

    // etcd lost: reads answer, a write is refused as unavailable and names etcd, readiness
    // says why, and the daemon stays up.
    etcd.kill(0);
    let refused = c.kubectl(&["rollout", "restart", "deployment/web", "-n", "shop"]);
    let said = String::from_utf8_lossy(&refused.stderr).into_owned();
    assert!(!refused.status.success());
    assert!(said.contains("unavailable") && said.contains(&endpoints), "{said}");
    assert!(c.kubectl(&["get", "deployment", "web", "-n", "shop"]).status.success());
    c.wait_until("/readyz to report the lost store", || {
        !c.kubectl(&["get", "--raw", "/readyz"]).status.success()
    });

    // etcd back: the same write goes through and the controllers act on it.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(etcd.restart(0)).unwrap();
    c.wait_until("/readyz to be ready again", || {
        c.kubectl(&["get", "--raw", "/readyz"]).status.success()
    });
    c.wait_until("the restart to be accepted", || {
        c.kubectl(&["rollout", "restart", "deployment/web", "-n", "shop"]).status.success()
    });
    c.wait_until("new pods of the restarted template", || {
        let out = c.kubectl_ok(&[
            "get",
            "pods",
            "-n",
            "shop",
            "-o",
            "jsonpath={.items[*].metadata.annotations.kubectl\\.kubernetes\\.io/restartedAt}",
        ]);
        !out.trim().is_empty()
    });
    let exited = c.child.try_wait().unwrap();
    assert!(exited.is_none(), "the daemon exited: {exited:?}\n{}", c.log());
}

#[test]
fn a_cluster_moves_from_the_embedded_store_to_etcd_and_keeps_every_object() {
    let (_etcd_dir, etcd) = common::etcd(1);
    let mut c = Cluster::start_with(FILES, &["--cluster-cidr", "10.225.0.0/16"]);
    let pods = |c: &Cluster| c.kubectl_ok(&["get", "pods", "-n", "shop", "-o", "jsonpath={.items[*].metadata.name}"]);
    c.wait_until("the deployment's two pods exist", || pods(&c).split_whitespace().count() == 2);
    let identity = |c: &Cluster| {
        (
            c.kubectl_ok(&["get", "deployment", "web", "-n", "shop", "-o", "jsonpath={.metadata.uid}"]),
            pods(c),
            c.kubectl_ok(&["get", "secret", "db", "-n", "shop", "-o", "jsonpath={.data.password}"]),
        )
    };
    let before = identity(&c);
    let _ = c.child.kill();
    let _ = c.child.wait();

    let data = c.data.clone();
    let migrate = |extra: &[&str]| {
        run(Command::new(env!("CARGO_BIN_EXE_capstan"))
            .args(["store", "migrate", "--data-dir", data.to_str().unwrap(), "--store", &etcd.url()])
            .args(extra))
    };
    let out = migrate(&[]);
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success() && said.contains("copied"), "{said}");
    // Never over another cluster's keys.
    let again = migrate(&[]);
    let said = String::from_utf8_lossy(&again.stderr).into_owned();
    assert!(
        !again.status.success() && said.contains("already holds a cluster under /capstan"),
        "{said}"
    );

    c.restart_daemon_with(&["--store", &etcd.url()]);
    assert!(c.log().contains("store on etcd"), "{}", c.log());
    c.wait_until("the same objects, served from etcd", || identity(&c) == before);
    // The Secret is sealed in etcd as it was in the embedded store.
    let sealed = etcdctl(
        &etcd.endpoints().join(","),
        &["get", "/capstan/registry/core/secrets/shop/db", "--print-value-only"],
    );
    assert!(!sealed.contains("hunter2-plain"));

    // And back to the embedded store: refused while a replica leads, or over a store that holds
    // a cluster; then the same objects again.
    let _ = c.child.kill();
    let _ = c.child.wait();
    let out = migrate(&["--to", "redb"]);
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success() && (said.contains("a replica still leads") || said.contains("already holds a cluster")),
        "{said}"
    );
    std::fs::rename(c.data.join("store.redb"), c.data.join("store.redb.before-etcd")).unwrap();
    c.wait_until("the killed replica's lease to run out and the copy back", || {
        let out = migrate(&["--to", "redb"]);
        let said = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success() || said.contains("a replica still leads"), "{said}");
        out.status.success()
    });
    c.restart_daemon_without("--store");
    c.wait_until("the same objects, served from the embedded store again", || identity(&c) == before);
}

#[test]
fn a_daemon_reaches_etcd_over_tls_with_its_client_certificate_and_none_other_gets_in() {
    let dir = tempfile::tempdir().unwrap();
    let ca = capstan_daemon::pki::Ca::load_or_create(&dir.path().join("etcd-pki")).unwrap();
    let localhost: std::net::IpAddr = "127.0.0.1".parse().unwrap();
    let server = ca.issue("etcd", None, &["localhost".into()], &[localhost], true, true).unwrap();
    let client = ca.issue("capstan", None, &[], &[], false, true).unwrap();
    let file = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let ca_file = file("ca.crt", &ca.cert_pem);
    let tls = capstan_store::local_etcd::ServerTls {
        cert: file("server.crt", &server.cert_pem),
        key: file("server.key", &server.key_pem),
        client_ca: ca_file.clone(),
    };
    let (client_cert, client_key) = (file("client.crt", &client.cert_pem), file("client.key", &client.key_pem));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let etcd = rt
        .block_on(capstan_store::local_etcd::LocalEtcd::start_with(
            &dir.path().join("etcd"),
            1,
            Some(tls),
        ))
        .unwrap();

    // Without a client certificate etcd refuses the connection: a clear error naming it.
    let mut config = capstan_store::EtcdConfig::parse(&etcd.url()).unwrap();
    config.connect_for = std::time::Duration::from_secs(1);
    config.tls = Some(capstan_store::EtcdTls {
        ca_pem: ca.cert_pem.as_bytes().to_vec(),
        client: None,
    });
    let refused = rt.block_on(capstan_store::EtcdStore::open(config)).unwrap_err().to_string();
    assert!(
        refused.contains(&etcd.endpoints()[0]) && refused.contains("not reachable"),
        "{refused}"
    );

    let path = |p: &std::path::Path| p.to_str().unwrap().to_owned();
    let (ca_arg, cert_arg, key_arg) = (path(&ca_file), path(&client_cert), path(&client_key));
    let c = Cluster::start_with(
        FILES,
        &[
            "--store",
            &etcd.url(),
            "--etcd-cafile",
            &ca_arg,
            "--etcd-certfile",
            &cert_arg,
            "--etcd-keyfile",
            &key_arg,
            "--cluster-cidr",
            "10.227.0.0/16",
        ],
    );
    c.wait_until("the deployment in the API", || {
        c.kubectl(&["get", "deployment", "web", "-n", "shop"]).status.success()
    });
    let keys = run(Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", &format!("https://{}", etcd.endpoints()[0])])
        .args(["--cacert", &ca_arg, "--cert", &cert_arg, "--key", &key_arg])
        .args(["get", "--prefix", "/capstan/registry/apps/deployments/", "--keys-only"]));
    assert!(String::from_utf8_lossy(&keys.stdout).contains("/capstan/registry/apps/deployments/shop/web"));
}

/// A forge may call any replica: one that does not lead tells the leader through etcd, and the
/// push is applied at once although the replicas poll only hourly.
#[test]
fn a_webhook_call_to_a_replica_that_does_not_lead_makes_the_leader_fetch() {
    let (_etcd_dir, etcd) = common::etcd(1);
    let secret = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(secret.path(), "s3cret\n").unwrap();
    let secret_path = secret.path().to_str().unwrap().to_owned();
    let common_args = [
        "--store",
        &etcd.url(),
        "--poll-interval",
        "3600",
        "--webhook-secret-file",
        &secret_path,
    ];
    let settings = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\ndata: {colour: blue}\n";
    let c = Cluster::start_remote(&[("settings.yaml", settings)], &common_args);
    let colour = || c.kubectl_ok(&["get", "configmap", "settings", "-o", "jsonpath={.data.colour}"]);
    c.wait_until("the first commit applied", || {
        c.kubectl(&["get", "configmap", "settings"]).status.success()
    });

    // A second replica, sharing the first one's identity and etcd.
    let data = c.dir.path().join("data-1");
    capstan_daemon::copy_replica_identity(&c.data, &data).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let remote = format!("file://{}", c.dir.path().join("remote.git").display());
    let log = std::fs::File::create(c.dir.path().join("daemon-1.log")).unwrap();
    let mut second = Command::new(env!("CARGO_BIN_EXE_capstan"))
        .args(["daemon", "--repo", &remote, "--data-dir", data.to_str().unwrap()])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(common_args)
        .env("CAPSTAN_LOG", "info")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();

    c.commit(&[("settings.yaml", &settings.replace("blue", "green"))], &[], "green");
    c.push();
    let body = r#"{"ref":"refs/heads/main"}"#;
    let signature = hex::encode(capstan_daemon::webhook::hmac_sha256(b"s3cret", body.as_bytes()));
    let call = || {
        let out = run(Command::new("curl")
            .args(["-sk", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", "-d", body])
            .args(["-H", &format!("X-Hub-Signature-256: sha256={signature}")])
            .arg(format!("https://127.0.0.1:{port}/hooks/git")));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    c.wait_until("the second replica to take the call", || call() == "202");
    c.wait_until("the pushed commit applied by the leader", || colour() == "green");
    let said = std::fs::read_to_string(c.dir.path().join("daemon-1.log")).unwrap_or_default();
    assert!(said.contains("the leading replica is told to fetch"), "{said}");
    assert!(c.log().contains("another replica was called; fetching now"), "{}", c.log());
    let _ = second.kill();
    let _ = second.wait();
}

/// Pods reach the API through the `kubernetes` Service: its endpoints are every replica that
/// runs, followed as one comes and goes.
#[test]
fn the_kubernetes_service_lists_every_running_replica() {
    let (_etcd_dir, etcd) = common::etcd(1);
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let first = format!("127.0.0.1:{port}");
    let c = Cluster::start_with(
        FILES,
        &["--store", &etcd.url(), "--listen", &first, "--cluster-cidr", "10.229.0.0/16"],
    );
    let published = || {
        let o = c.kubectl(&["get", "endpointslice", "kubernetes", "-o", "jsonpath={.endpoints[*].addresses[0]}"]);
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    c.wait_until("the first replica published", || published() == "127.0.0.1");
    // A second replica on another loopback address, on the same port.
    let data = c.dir.path().join("data-1");
    capstan_daemon::copy_replica_identity(&c.data, &data).unwrap();
    let log = std::fs::File::create(c.dir.path().join("daemon-1.log")).unwrap();
    let mut second = Command::new(env!("CARGO_BIN_EXE_capstan"))
        .args(["daemon", "--repo", c.repo.to_str().unwrap(), "--data-dir", data.to_str().unwrap()])
        .args([
            "--store",
            &etcd.url(),
            "--listen",
            &format!("127.0.0.2:{port}"),
            "--cluster-cidr",
            "10.229.0.0/16",
        ])
        .env("CAPSTAN_LOG", "info")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    c.wait_until("both replicas published", || published() == "127.0.0.1 127.0.0.2");
    let endpoints = c.kubectl_ok(&["get", "endpoints", "kubernetes", "-o", "jsonpath={.subsets[0].addresses[*].ip}"]);
    assert_eq!(endpoints, "127.0.0.1 127.0.0.2");
    // Killed: gone from the Service once its lease runs out.
    second.kill().unwrap();
    second.wait().unwrap();
    c.wait_until("the killed replica unpublished", || published() == "127.0.0.1");
}
