//! The pod network across hosts, on a lab of three real hosts (network namespaces with their own
//! Docker Engines, on one switch; `scripts/lab.sh`) and a control plane on the machine: pods
//! reach pods on other hosts by their own address without NAT, Services whose endpoints are on
//! another host answer by ClusterIP, by name and by NodePort, every host's pods reach the API;
//! the kernel holds the device, routes, neighbour and forwarding entries the backend needs, they
//! follow a host leaving and joining, and host-gw passes the same test.

mod common;

use std::time::{Duration, Instant};

use common::lab::{Lab, LabNode, MACHINE, host_ip, lab_available, ready_count};
use common::{Cluster, run};

const WORKLOADS: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: client-a, labels: {app: a}}
spec:
  nodeSelector: {kubernetes.io/hostname: h1}
  containers: [{name: app, image: "capstan.local/testapp:latest", imagePullPolicy: Never}]
---
apiVersion: v1
kind: Pod
metadata: {name: server-b, labels: {app: b}}
spec:
  nodeSelector: {kubernetes.io/hostname: h2}
  containers: [{name: app, image: "capstan.local/testapp:latest", imagePullPolicy: Never}]
---
apiVersion: v1
kind: Pod
metadata: {name: server-c, labels: {app: c}}
spec:
  nodeSelector: {kubernetes.io/hostname: h3}
  containers: [{name: app, image: "capstan.local/testapp:latest", imagePullPolicy: Never}]
---
apiVersion: v1
kind: Service
metadata: {name: svc-c}
spec:
  selector: {app: c}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: svc-a}
spec:
  selector: {app: a}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: np-b}
spec:
  type: NodePort
  selector: {app: b}
  ports: [{port: 80, targetPort: 8080, nodePort: 30080}]
"#;

/// Waits up to `secs` for `f`, failing with `context()` when it never holds.
fn wait(what: &str, secs: u64, context: impl Fn() -> String, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        if Instant::now() > deadline {
            panic!("timed out waiting for {what}\n{}", context());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

struct Setup {
    lab: Lab,
    cluster: Cluster,
    nodes: Vec<LabNode>,
}

impl Setup {
    fn context(&self) -> String {
        let refs: Vec<&LabNode> = self.nodes.iter().collect();
        format!(
            "{}\n--- daemon log tail ---\n{}",
            self.lab.diagnostics(&refs),
            tail(&self.cluster.log(), 30)
        )
    }

    fn pod_ip(&self, pod: &str) -> String {
        stdout(&self.cluster.kubectl(&["get", "pod", pod, "-o", "jsonpath={.status.podIP}"]))
    }

    fn start_nodes(&mut self, backend: &str) {
        self.nodes = (1..=self.lab.hosts)
            .map(|n| self.lab.node(&self.cluster, n, &["--pod-network", backend]))
            .collect();
    }
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The connectivity the Kubernetes network model promises, checked from host 1.
fn check_connectivity(s: &Setup, backend: &str) {
    let client_ip = s.pod_ip("client-a");
    let b_ip = s.pod_ip("server-b");
    // Pod to pod across hosts, by pod IP; the server sees the client's own pod IP.
    let url = format!("http://{b_ip}:8080/whoami");
    wait(
        &format!("{backend}: client-a (h1) reaching server-b (h2) at {b_ip}"),
        30,
        || s.context(),
        || {
            let o = s.lab.in_pod(1, "client-a", "app", &["get", &url]);
            o.status.success() && stdout(&o).trim() == client_ip
        },
    );
    // And back: h2's pod reaches h1's.
    let o = s
        .lab
        .in_pod(2, "server-b", "app", &["get", &format!("http://{client_ip}:8080/whoami")]);
    assert_eq!(stdout(&o).trim(), b_ip, "{backend}: server-b to client-a: {o:?}");
    // A Service whose only endpoint is on host 3, by ClusterIP and by name.
    let cluster_ip = stdout(&s.cluster.kubectl(&["get", "service", "svc-c", "-o", "jsonpath={.spec.clusterIP}"]));
    wait(
        &format!("{backend}: svc-c ({cluster_ip}) answering on h1"),
        30,
        || s.context(),
        || {
            let o = s.lab.in_pod(1, "client-a", "app", &["get", &format!("http://{cluster_ip}/")]);
            stdout(&o).contains("hello from server-c")
        },
    );
    let o = s
        .lab
        .in_pod(1, "client-a", "app", &["get", "http://svc-c.default.svc.cluster.local/whoami"]);
    assert_eq!(
        stdout(&o).trim(),
        client_ip,
        "{backend}: svc-c by name keeps the pod's source: {o:?}"
    );
    // A pod reaches itself through its own Service (hairpin).
    let o = s
        .lab
        .in_pod(1, "client-a", "app", &["get", "http://svc-a.default.svc.cluster.local/"]);
    assert!(
        stdout(&o).contains("hello from client-a"),
        "{backend}: client-a through svc-a: {o:?}"
    );
    // A NodePort on host 1 whose only endpoint is on host 2, from the machine.
    let node_port = format!("http://{}:30080/", host_ip(1));
    wait(
        &format!("{backend}: NodePort {node_port} reaching server-b"),
        30,
        || s.context(),
        || {
            let o = run(std::process::Command::new("curl").args(["-s", "-m", "3", &node_port]));
            stdout(&o).contains("hello from server-b")
        },
    );
    // The API through the `kubernetes` Service, from every host's pod.
    for (host, pod) in [(1, "client-a"), (2, "server-b"), (3, "server-c")] {
        let o = s.lab.in_pod(host, pod, "app", &["connect", "10.96.0.1:443"]);
        assert!(
            o.status.success(),
            "{backend}: {pod} on h{host} reaching the API: {o:?}\n{}",
            s.context()
        );
    }
}

fn setup(backend: &str) -> Option<Setup> {
    if !lab_available("lab") {
        return None;
    }
    let lab = Lab::up(3);
    let cluster = Cluster::start_with(
        &[("workloads.yaml", WORKLOADS)],
        &["--listen", &format!("{MACHINE}:0"), "--node-grace-period", "6"],
    );
    let mut s = Setup {
        lab,
        cluster,
        nodes: Vec::new(),
    };
    s.start_nodes(backend);
    wait("three Ready nodes", 60, || s.context(), || ready_count(&s.cluster, "nodes") == 3);
    wait("three Ready pods", 90, || s.context(), || ready_count(&s.cluster, "pods") == 3);
    Some(s)
}

#[test]
fn vxlan_and_host_gw_connect_pods_across_hosts_and_follow_hosts_leaving_and_joining() {
    let Some(mut s) = setup("vxlan") else { return };
    check_connectivity(&s, "vxlan");

    // The kernel state on host 1: the device as fixed (VNI 1, port 8472, no learning, MTU
    // underlay − 50), and per peer an onlink route, a neighbour and a forwarding entry.
    let link = s.lab.exec_ok(1, &["ip", "-d", "link", "show", "capstan.1"]);
    assert!(link.contains("mtu 1450"), "{link}");
    assert!(
        link.contains("vxlan id 1 local 10.250.0.11 dev eth0") && link.contains("dstport 8472") && link.contains("nolearning"),
        "{link}"
    );
    let peer_range = |n: usize| {
        stdout(
            &s.cluster
                .kubectl(&["get", "node", &format!("h{n}"), "-o", "jsonpath={.spec.podCIDR}"]),
        )
    };
    let (r2, r3) = (peer_range(2), peer_range(3));
    let routes = s.lab.exec_ok(1, &["ip", "route"]);
    for r in [&r2, &r3] {
        let via = r.trim_end_matches("/24");
        assert!(
            routes.contains(&format!("{r} via {via} dev capstan.1")) && routes.contains("onlink"),
            "{r}:\n{routes}"
        );
    }
    let fdb = s.lab.exec_ok(1, &["bridge", "fdb", "show", "dev", "capstan.1"]);
    assert!(
        fdb.contains("0a:ca:0a:fa:00:0c dst 10.250.0.12") && fdb.contains("dst 10.250.0.13"),
        "{fdb}"
    );
    let neigh = s.lab.exec_ok(1, &["ip", "neigh", "show", "dev", "capstan.1"]);
    assert!(
        neigh.contains(&format!("{} lladdr 0a:ca:0a:fa:00:0d PERMANENT", r3.trim_end_matches("/24"))),
        "{neigh}"
    );
    let annotations = stdout(&s.cluster.kubectl(&["get", "node", "h2", "-o", "jsonpath={.metadata.annotations}"]));
    assert!(
        annotations.contains("\"capstan.dev/vtep-mac\":\"0a:ca:0a:fa:00:0c\"") && annotations.contains("10.250.0.12"),
        "{annotations}"
    );
    // Pod-to-pod keeps its source (checked above); what leaves the cluster is masqueraded.
    let nat = s.lab.exec_ok(1, &["nft", "list", "table", "ip", "capstan-podnet"]);
    assert!(nat.contains("masquerade"), "{nat}");

    // Host 3 leaves (its agent stops, its Node is removed): host 1 forgets its range.
    s.nodes[2].kill();
    s.cluster.kubectl_ok(&["delete", "node", "h3"]);
    wait(
        "h1's route to h3 gone",
        30,
        || s.context(),
        || !s.lab.exec_ok(1, &["ip", "route"]).contains(&r3),
    );
    wait(
        "h1's forwarding entry for h3 gone",
        30,
        || s.context(),
        || {
            !s.lab
                .exec_ok(1, &["bridge", "fdb", "show", "dev", "capstan.1"])
                .contains("dst 10.250.0.13")
        },
    );
    // And joins again: routed again from host 1 (and its pod reachable again).
    s.nodes[2] = s.lab.node(&s.cluster, 3, &["--pod-network", "vxlan"]);
    wait(
        "h3 back and routed from h1",
        60,
        || s.context(),
        || {
            let range = peer_range(3);
            !range.is_empty() && s.lab.exec_ok(1, &["ip", "route"]).contains(&format!("{range} via"))
        },
    );

    // host-gw: every agent again with the other backend; the device goes, routes go via hosts.
    for n in &mut s.nodes {
        n.kill();
    }
    s.start_nodes("host-gw");
    wait(
        "the VXLAN device removed on h1",
        30,
        || s.context(),
        || !s.lab.exec(1, &["ip", "link", "show", "capstan.1"]).status.success(),
    );
    wait(
        "host-gw routes on h1",
        30,
        || s.context(),
        || {
            let routes = s.lab.exec_ok(1, &["ip", "route"]);
            routes.contains(&format!("{r2} via 10.250.0.12 dev eth0"))
        },
    );
    wait(
        "three Ready pods again",
        90,
        || s.context(),
        || ready_count(&s.cluster, "pods") == 3,
    );
    check_connectivity(&s, "host-gw");
}
