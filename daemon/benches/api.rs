//! API server and store benchmark. Prints:
//! - store write throughput (durable, group commit) with 1 and 64 concurrent writers;
//! - GET of one pod over HTTPS, 64 concurrent clients: p50 and p99, also with 2,000 idle
//!   connections held open beside them, and as a person whose access RBAC decides among 1,000
//!   Roles and 1,000 RoleBindings (beside the administrator, whom RBAC does not restrict);
//! - LIST of 10,000 pods as JSON and as a Table: p50 and p99;
//! - watch fan-out: delay from a write to its arrival at each of 100 watchers.
//!
//! With `--store etcd` it starts a one-member etcd on loopback and measures, in the same run:
//! raw etcd puts (the etcd client alone: the physical limit) and Capstan's store writes on etcd
//! with 1 and 64 writers, then creates, GET, LIST and watch fan-out again with the daemon's
//! store on etcd, beside the redb figures.
//!
//! `cargo bench -p capstan-daemon --bench api [-- --store etcd]` (add `--quick` for the small
//! run CI does).

use std::sync::Arc;
use std::time::{Duration, Instant};

use capstan_daemon::{Daemon, DaemonConfig, StoreChoice};
use capstan_store::local_etcd::LocalEtcd;
use capstan_store::{Compare, EtcdConfig, EtcdStore, RedbStore, Store, Txn};
use futures::StreamExt;
use http_body_util::BodyExt;
use serde_json::json;

/// A running pod as a node agent reports it. Its owner is of a kind the cluster does not serve
/// (a custom controller's), which the garbage collector leaves alone: an owner of a served kind
/// that does not exist would have the collector delete all the pods while they are measured.
fn pod(i: usize) -> serde_json::Value {
    json!({
        "metadata": {"name": format!("pod-{i:05}"), "namespace": format!("ns-{}", i % 20), "labels": {"app": format!("app-{}", i % 100), "tier": "web"},
                     "ownerReferences": [{"apiVersion": "example.com/v1", "kind": "Rollout", "name": format!("app-{}-5d8f7c9b4", i % 100), "uid": "0f3c1e2a-7d1b-4c8e-9a55-3b1f2d4e6a7c", "controller": true}]},
        "spec": {"nodeName": format!("node-{}", i % 5), "containers": [{"name": "web", "image": "capstan.local/testapp:latest", "ports": [{"containerPort": 8080, "name": "http"}],
                 "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"cpu": "500m", "memory": "128Mi"}},
                 "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 2}}], "restartPolicy": "Always"},
        "status": {"phase": "Running", "podIP": format!("10.244.{}.{}", i % 5, i % 250 + 2), "hostIP": "127.0.0.1", "startTime": "2026-11-27T00:00:00Z",
                   "conditions": [{"type": "Ready", "status": "True"}, {"type": "ContainersReady", "status": "True"}, {"type": "PodScheduled", "status": "True"}],
                   "containerStatuses": [{"name": "web", "ready": true, "restartCount": 0, "image": "capstan.local/testapp:latest", "imageID": "sha256:abc",
                                          "state": {"running": {"startedAt": "2026-11-27T00:00:01Z"}}, "containerID": "docker://0123456789abcdef"}]}
    })
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn client(d: &Daemon) -> kube::Client {
    client_of(&d.kubeconfig).await
}

async fn client_of(path: &std::path::Path) -> kube::Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(path).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await.unwrap();
    kube::Client::try_from(config).unwrap()
}

async fn fetch(c: &kube::Client, path: &str, accept: &str) -> usize {
    let req = http::Request::get(path)
        .header("accept", accept)
        .body(kube::client::Body::empty())
        .unwrap();
    let resp = c.send(req).await.unwrap();
    assert!(resp.status().is_success(), "{path}: {}", resp.status());
    resp.into_body().collect().await.unwrap().to_bytes().len()
}

/// Durable writes per second of `writers` concurrent writers, each writing 1 KiB values;
/// with `create`, each a compare-and-swap that the key does not exist (as object creates are).
async fn store_throughput(store: Arc<dyn Store>, writers: usize, per_writer: usize, create: bool) -> f64 {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..per_writer {
                let key = format!("/k/{w}/{i}");
                let txn = if create {
                    Txn::default().when(Compare::Missing(key.clone()))
                } else {
                    Txn::default()
                };
                let r = s.txn(txn.put(key, vec![b'x'; 1024])).await.unwrap();
                assert!(r.succeeded);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    (writers * per_writer) as f64 / start.elapsed().as_secs_f64()
}

/// The same with the etcd client alone, what etcd itself can take here: plain puts, or with
/// `create` transactions that compare the key's creation revision with 0.
async fn raw_etcd(etcd: &LocalEtcd, writers: usize, per_writer: usize, create: bool) -> f64 {
    let client = etcd_client::Client::connect(etcd.endpoints(), None).await.unwrap();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let mut kv = client.kv_client();
        tasks.push(tokio::spawn(async move {
            for i in 0..per_writer {
                let key = format!("/raw{}/{w}/{i}", u8::from(create));
                if create {
                    let txn = etcd_client::Txn::new()
                        .when([etcd_client::Compare::create_revision(key.clone(), etcd_client::CompareOp::Equal, 0)])
                        .and_then([etcd_client::TxnOp::put(key, vec![b'x'; 1024], None)]);
                    assert!(kv.txn(txn).await.unwrap().succeeded());
                } else {
                    kv.put(key, vec![b'x'; 1024], None).await.unwrap();
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    (writers * per_writer) as f64 / start.elapsed().as_secs_f64()
}

/// GET latencies of 64 concurrent clients, each on its own (warmed-up) connection.
async fn get_latencies(d: &Daemon, rounds: usize) -> Vec<Duration> {
    get_latencies_as(&d.kubeconfig, rounds).await
}

/// The same, with the credential of `kubeconfig`.
async fn get_latencies_as(kubeconfig: &std::path::Path, rounds: usize) -> Vec<Duration> {
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let c = client_of(kubeconfig).await;
        // One request first, so that the TLS handshake is not counted as GET latency.
        fetch(&c, "/api/v1/namespaces/ns-0/pods/pod-00000", "application/json").await;
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            for i in 0..rounds * 5 {
                let t = Instant::now();
                fetch(
                    &c,
                    &format!("/api/v1/namespaces/ns-{}/pods/pod-{:05}", i % 20, i * 20 % 1000 + i % 20),
                    "application/json",
                )
                .await;
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    lat.sort();
    lat
}

#[tokio::main]
async fn main() {
    let quick = std::env::args().any(|a| a == "--quick") || std::env::var_os("CAPSTAN_BENCH_QUICK").is_some();
    let args: Vec<String> = std::env::args().collect();
    let on_etcd = args.windows(2).any(|w| w[0] == "--store" && w[1] == "etcd") || args.iter().any(|a| a == "--store=etcd");
    let pods = if quick { 1_000 } else { 10_000 };
    let rounds = if quick { 5 } else { 20 };
    let dir = tempfile::tempdir().unwrap();
    println!(
        "API benchmark{}: {pods} pods, HTTPS on loopback",
        if quick { " (quick)" } else { "" }
    );
    let (one_n, many_n) = if quick { (100, 20) } else { (500, 100) };
    let redb = |name: &str| -> Arc<dyn Store> { Arc::new(RedbStore::open(&dir.path().join(name)).unwrap()) };
    let one = store_throughput(redb("w1.redb"), 1, one_n, false).await;
    let many = store_throughput(redb("w64.redb"), 64, many_n, false).await;
    println!("  store writes (durable), 1 writer              {one:>9.0} /s");
    println!("  store writes (durable), 64 writers            {many:>9.0} /s   (group commit)");
    let etcd = if on_etcd {
        let etcd = LocalEtcd::start(&dir.path().join("etcd"), 1).await.unwrap();
        let config = EtcdConfig::parse(&etcd.url()).unwrap();
        for (create, writers, per) in [(false, 1, one_n), (false, 64, many_n), (true, 64, many_n)] {
            let raw = raw_etcd(&etcd, writers, per, create).await;
            let mut c = config.clone();
            c.prefix = format!("/bench{writers}{create}");
            let ours = store_throughput(Arc::new(EtcdStore::open(c).await.unwrap()), writers, per, create).await;
            let (what, peer) = if create {
                ("creates (CAS)", "raw etcd txns")
            } else {
                ("writes       ", "raw etcd puts")
            };
            println!(
                "  etcd: store {what}, {writers:>2} writer{}  {ours:>9.0} /s   {peer} {raw:>6.0} /s   {:.2}x   target >= 0.8x",
                if writers == 1 { " " } else { "s" },
                ours / raw
            );
        }
        Some((etcd, config))
    } else {
        None
    };

    daemon_figures(dir.path(), "redb", StoreChoice::Redb, pods, rounds, true).await;
    if let Some((_etcd, config)) = etcd {
        daemon_figures(dir.path(), "etcd", StoreChoice::Etcd(config), pods, rounds, false).await;
    }
}

/// Creates, GET, LIST and watch fan-out with the daemon's store on `store`; with `all`, also
/// the figures the store does not change (idle connections, RBAC).
async fn daemon_figures(base: &std::path::Path, label: &str, store: StoreChoice, pods: usize, rounds: usize, all: bool) {
    println!("  -- daemon on {label}");
    let dir = base.join(label);
    let repo = dir.join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    let git = |args: &[&str]| {
        capstan_git::fixture::git(&repo, args);
    };
    git(&["init", "-q"]);
    git(&["commit", "-q", "--allow-empty", "-m", "empty"]);
    let mut config = DaemonConfig::new(repo.to_str().unwrap(), dir.join("data"));
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.store = store;
    let d = Daemon::start(config).await.unwrap();
    let kind = capstan_api::kinds::by_name("pods").unwrap();
    // Pods are admitted only into namespaces that exist.
    let namespaces = capstan_api::kinds::by_name("namespaces").unwrap();
    let names = (0..20).map(|n| format!("ns-{n}")).chain(["fanout".to_owned()]);
    for name in names {
        d.objects.create(namespaces, json!({"metadata": {"name": name}})).await.unwrap();
    }
    d.cache.wait_for(d.store.revision()).await;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..64 {
        let objects = d.objects.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = w;
            while i < pods {
                objects.create(kind, pod(i)).await.unwrap();
                i += 64;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let created = start.elapsed();
    println!(
        "  create {pods} pods, 64 writers                {:>9}   ({:.0} objects/s)",
        ms(created),
        pods as f64 / created.as_secs_f64()
    );
    d.cache.wait_for(d.store.revision()).await;

    if !all {
        let lat = get_latencies(&d, rounds).await;
        let mut p99 = Vec::new();
        for _ in 0..3 {
            p99.push(pct(&get_latencies(&d, rounds).await, 0.99));
        }
        p99.sort();
        println!(
            "  GET one pod, 64 concurrent clients   p50 {:>9}  p99 {:>9}   target p99 < 10 ms",
            ms(pct(&lat, 0.5)),
            ms(p99[1])
        );
    } else {
        server_figures(&d, &dir, rounds).await;
    }
    list_and_watch(&d, pods, rounds).await;
    d.shutdown().await;
}

/// GET with and without 2,000 idle connections, and as a person whom RBAC restricts.
async fn server_figures(d: &Daemon, dir: &std::path::Path, rounds: usize) {
    // GET: 64 concurrent clients, each on its own connection; then again with 2,000 idle
    // connections held open (clients that connect and send nothing).
    // A first round warms the server up (allocator, caches), so that both figures are warm.
    // Then rounds without and with the idle connections, alternately (the machine's noise hits
    // both alike), each with fresh idle connections (the server closes them after 10 s).
    get_latencies(d, rounds).await;
    let (mut without, mut with) = (Vec::new(), Vec::new());
    let mut last = Vec::new();
    for _ in 0..3 {
        let lat = get_latencies(d, rounds).await;
        without.push(pct(&lat, 0.99));
        last = lat;
        let mut idle = Vec::with_capacity(2000);
        for _ in 0..2000 {
            idle.push(tokio::net::TcpStream::connect(d.api_addr).await.unwrap());
        }
        // Connected in the kernel is not yet accepted by the server: let it take them all first.
        tokio::time::sleep(Duration::from_secs(1)).await;
        with.push(pct(&get_latencies(d, rounds).await, 0.99));
        drop(idle);
    }
    without.sort();
    with.sort();
    println!(
        "  GET one pod, 64 concurrent clients   p50 {:>9}  p99 {:>9}   target p99 < 10 ms",
        ms(pct(&last, 0.5)),
        ms(without[1])
    );
    println!(
        "  the same with 2,000 idle connections               p99 {:>9}   {:.2}x without   target <= 1.1x",
        ms(with[1]),
        with[1].as_secs_f64() / without[1].as_secs_f64()
    );

    // RBAC: 1,000 Roles and 1,000 RoleBindings over the 20 namespaces, for other subjects and
    // for the group `readers` (view in each namespace), whose member reads pods through a certificate (authenticated once
    // per connection, as the admin token is a hash lookup: the difference is authorisation).
    let roles = capstan_api::kinds::by_plural("rbac.authorization.k8s.io", "roles").unwrap();
    let bindings = capstan_api::kinds::by_plural("rbac.authorization.k8s.io", "rolebindings").unwrap();
    for i in 0..1000 {
        let ns = format!("ns-{}", i % 20);
        let rules = json!([{"apiGroups": ["", "apps"], "resources": [format!("things-{i}"), "configmaps", "pods/log"], "verbs": ["get", "list", "watch"]},
                           {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"], "resourceNames": [format!("pod-{i:05}")]}]);
        d.objects
            .create(
                roles,
                json!({"metadata": {"name": format!("role-{i}"), "namespace": ns}, "rules": rules}),
            )
            .await
            .unwrap();
        let subject = if i < 20 {
            json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "readers"})
        } else {
            json!({"kind": "ServiceAccount", "name": format!("sa-{i}"), "namespace": ns})
        };
        let role_ref = if i < 20 {
            json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"})
        } else {
            json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": format!("role-{i}")})
        };
        d.objects
            .create(
                bindings,
                json!({"metadata": {"name": format!("binding-{i}"), "namespace": ns}, "roleRef": role_ref, "subjects": [subject]}),
            )
            .await
            .unwrap();
    }
    d.cache.wait_for(d.store.revision()).await;
    // The policy follows the cache at once; give it a moment to have compiled the last change.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ca = capstan_daemon::pki::Ca::load_or_create(&dir.join("data/pki")).unwrap();
    let cert = ca.issue_user("reader", &["readers".to_owned()], 3600).unwrap();
    let reader = dir.join("reader.kubeconfig");
    capstan_daemon::kubeconfig::write_certificate(&reader, &d.url(), &ca.cert_pem, "reader", &cert.cert_pem, &cert.key_pem).unwrap();
    get_latencies_as(&reader, rounds).await;
    let (mut admin, mut rbac) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        admin.push(pct(&get_latencies(d, rounds).await, 0.99));
        rbac.push(pct(&get_latencies_as(&reader, rounds).await, 0.99));
    }
    admin.sort();
    rbac.sort();
    println!(
        "  GET one pod as a person, RBAC with 1,000 roles + 1,000 bindings   p99 {:>9}   admin p99 {:>9}   {:.2}x   target <= 1.1x",
        ms(rbac[1]),
        ms(admin[1]),
        rbac[1].as_secs_f64() / admin[1].as_secs_f64()
    );
}

/// LIST of every pod (JSON and Table), and watch fan-out to 100 watchers.
async fn list_and_watch(d: &Daemon, pods: usize, rounds: usize) {
    let c = client(d).await;
    let kind = capstan_api::kinds::by_name("pods").unwrap();

    for (label, accept) in [
        ("JSON", "application/json"),
        ("Table", "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"),
    ] {
        let mut lat = Vec::new();
        let mut bytes = 0;
        for _ in 0..rounds.min(10) {
            let t = Instant::now();
            bytes = fetch(&c, "/api/v1/pods", accept).await;
            lat.push(t.elapsed());
        }
        lat.sort();
        println!(
            "  LIST {pods} pods ({label:<5}, {:>5.1} MB)     p50 {:>9}  p99 {:>9}   target < 150 ms",
            bytes as f64 / 1e6,
            ms(pct(&lat, 0.5)),
            ms(pct(&lat, 0.99))
        );
    }

    // Watch fan-out: 100 watchers, then writes; delay from the acknowledged write to arrival.
    let watchers = 100;
    let rev = d.store.revision();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, String, Instant)>();
    for w in 0..watchers {
        let c = client(d).await;
        let tx = tx.clone();
        tokio::spawn(async move {
            let req = http::Request::get(format!("/api/v1/namespaces/fanout/pods?watch=1&resourceVersion={rev}"))
                .body(kube::client::Body::empty())
                .unwrap();
            let resp = c.send(req).await.unwrap();
            let mut body = resp.into_body().into_data_stream();
            let mut buf = Vec::new();
            // The stream ends with an error when the daemon shuts down.
            while let Some(Ok(chunk)) = body.next().await {
                buf.extend_from_slice(&chunk);
                while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=pos).collect();
                    let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
                    let name = v["object"]["metadata"]["name"].as_str().unwrap_or_default().to_owned();
                    let _ = tx.send((w, name, Instant::now()));
                }
            }
        });
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut delays = Vec::new();
    for i in 0..rounds {
        let mut p = pod(i);
        p["metadata"]["namespace"] = json!("fanout");
        p["metadata"]["name"] = json!(format!("fan-{i}"));
        let name = format!("fan-{i}");
        d.objects.create(kind, p).await.unwrap();
        let written = Instant::now();
        let mut got = 0;
        while got < watchers {
            let (_, n, at) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .expect("every watcher gets the event")
                .unwrap();
            if n == name {
                delays.push(at.saturating_duration_since(written));
                got += 1;
            }
        }
    }
    delays.sort();
    println!(
        "  watch fan-out to {watchers} watchers           p50 {:>9}  p99 {:>9}   max {}   target < 50 ms",
        ms(pct(&delays, 0.5)),
        ms(pct(&delays, 0.99)),
        ms(*delays.last().unwrap())
    );
}
