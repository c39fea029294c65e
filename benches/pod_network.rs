//! The pod network across hosts, measured on the lab (`scripts/lab.sh`: hosts in network
//! namespaces with their own Engines on one switch): TCP throughput and connection set-up time
//! host→host over the switch (the floor), pod→pod on one host, pod→pod across hosts for each
//! backend (VXLAN with its eBPF fast path, and again with `--no-fast-path`), and
//! pod→ClusterIP→remote pod; and the time from a host's agent starting until its pod
//! answers from another host. Targets: cross-host throughput ≥ 0.8× host→host, ClusterIP set-up
//! within 1.2× of a direct pod-IP connection, a joining host reachable in < 2 s. Last, a host cut
//! off at the switch: how long until its Node is NotReady and its pod is Ready on another host,
//! with the lab's short settings (grace period, eviction timeout) beside their sum, the floor.
//! Beside the ratios, the kernel's own floors in the same run: bare namespaces as two hosts on a
//! veth pair, plain and through VXLAN, and pods on them wired on a bridge (as Capstan does) and
//! routed on their own veths (no Engine, no firewall, no agent). And where each path's time
//! goes: what the whole machine did during its runs (both cores' busy share, CPU time and context
//! switches per GB sent, read from /proc/stat by the sending program).
//!
//! Each ratio is measured in turns, each a pod→pod run beside a host→host run in alternating
//! order, and compares the best run of each side: single runs on this machine vary by up to a
//! third, always downwards (another process on the core), so one run per side gave anything
//! from 0.6× to 1.0× for the same code. Pod→pod on one host is measured so too: the pods' own
//! ends (a veth, a namespace, a container), which every cross-host path includes.
//!
//! `cargo bench --bench pod_network` (4 turns of 3 s runs, 1,000 connections; `-- --quick`: 3
//! turns of 1 s, 200 connections). Needs root and the Docker Engine; builds the test images.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::Cluster;
use common::lab::{LEASE_INTERVAL_SECS, Lab, LabNode, MACHINE, host_ip, pinned_pod};

const IMAGE: &str = "capstan.local/testapp:latest";

fn workloads() -> String {
    pinned_pod("client", "client", 1)
        + &pinned_pod("local", "local", 1)
        + &pinned_pod("remote", "remote", 2)
        + &pinned_pod("joiner", "joiner", 3)
        + "apiVersion: v1\nkind: Service\nmetadata: {name: remote}\nspec:\n  selector: {app: remote}\n  ports: [{port: 9000, targetPort: 9000}]\n"
        + MOVING
}

/// One replica on host 2 or 3 (preferring 2): the pod the cut-off measurement moves.
const MOVING: &str = r#"---
apiVersion: apps/v1
kind: Deployment
metadata: {name: moving}
spec:
  replicas: 1
  selector: {matchLabels: {app: moving}}
  template:
    metadata: {labels: {app: moving}}
    spec:
      affinity:
        nodeAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
            nodeSelectorTerms: [{matchExpressions: [{key: kubernetes.io/hostname, operator: In, values: [h2, h3]}]}]
          preferredDuringSchedulingIgnoredDuringExecution:
            - {weight: 100, preference: {matchExpressions: [{key: kubernetes.io/hostname, operator: In, values: [h2]}]}}
      containers:
      - name: app
        image: capstan.local/testapp:latest
        imagePullPolicy: Never
        readinessProbe: {httpGet: {path: /readyz, port: 8080}, periodSeconds: 1}
"#;

/// The lab's short failure settings (the daemon's flags).
const GRACE: u64 = 4;
const EVICTION: u64 = 2;

struct Bench {
    lab: Lab,
    cluster: Cluster,
    nodes: Vec<LabNode>,
    seconds: String,
    dials: String,
    /// How many turns each throughput ratio is measured in.
    turns: usize,
}

/// One `blast` run: bytes/s, and what the whole machine did meanwhile (the test program reads
/// /proc/stat around its sending): the busy share of all cores, CPU ms and context switches per
/// GB sent.
#[derive(Clone, Copy)]
struct Blast {
    rate: f64,
    machine: Option<[f64; 3]>,
}

impl Blast {
    /// The program's line; a run that printed nothing has rate NaN.
    fn parse(line: &str) -> Blast {
        let values = common::lab::blast_figures(line);
        Blast {
            rate: values.first().copied().unwrap_or(f64::NAN),
            machine: values.get(1..4).map(|m| [m[0], m[1], m[2]]),
        }
    }
}

/// Throughput measured in alternating turns beside the host→host floor.
struct Turns {
    floor: Vec<Blast>,
    path: Vec<Blast>,
}

impl Turns {
    /// The best path run ÷ the best host→host run: what each can do when the machine lets it
    /// (interference only ever slows a run down, by up to a third here).
    fn ratio(&self) -> f64 {
        best(&self.path) / best(&self.floor)
    }

    fn best(&self) -> f64 {
        best(&self.path)
    }

    /// The range of the turns' own ratios.
    fn spread(&self) -> String {
        let mut r: Vec<f64> = self.path.iter().zip(&self.floor).map(|(p, f)| p.rate / f.rate).collect();
        r.sort_by(f64::total_cmp);
        format!("turns {:.2}–{:.2}×", r[0], r[r.len() - 1])
    }
}

fn best(runs: &[Blast]) -> f64 {
    runs.iter().map(|r| r.rate).fold(0.0, f64::max)
}

/// The median over `runs` of what the machine did (busy share, CPU ms and context switches
/// per GB), as a table row; interference comes and goes, so no single run stands for a path.
fn machine_row(what: &str, runs: &[Blast]) {
    let mut columns: [Vec<f64>; 3] = Default::default();
    for m in runs.iter().filter_map(|r| r.machine) {
        for (column, value) in columns.iter_mut().zip(m) {
            column.push(value);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    let [busy, cpu, switches] = columns.map(|mut c| median(&mut c));
    println!(
        "    {what:<44} busy {:>3.0} %   {cpu:>5.0} CPU-ms/GB   {:>5.1}k switches/GB",
        busy * 100.0,
        switches / 1e3
    );
}

fn out(o: &std::process::Output, what: &str) -> String {
    assert!(
        o.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

impl Bench {
    fn kubectl(&self, args: &[&str]) -> String {
        out(&self.cluster.kubectl(args), &format!("kubectl {args:?}"))
    }

    fn wait(&self, what: &str, secs: u64, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !f() {
            let refs: Vec<&LabNode> = self.nodes.iter().collect();
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}\n{}",
                self.lab.diagnostics(&refs)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Agents on every host, started anew with `args` (the pods stay and are adopted).
    fn start_nodes(&mut self, args: &[&str]) {
        for n in &mut self.nodes {
            n.kill();
        }
        self.nodes = (1..=self.lab.hosts).map(|n| self.lab.node(&self.cluster, n, args)).collect();
    }

    fn pod_ip(&self, pod: &str) -> String {
        self.kubectl(&["get", "pod", pod, "-o", "jsonpath={.status.podIP}"])
    }

    /// How long a `blast` runs (seconds) or how many connections a `dial` makes.
    fn amount(&self, what: &str) -> &str {
        if what == "blast" { &self.seconds } else { &self.dials }
    }

    /// The test program's `blast` or `dial` from the client pod: its output.
    fn pod_run(&self, what: &str, target: &str) -> String {
        let args = [what, target, self.amount(what)];
        out(&self.lab.in_pod(1, "client", "app", &args), what)
    }

    /// `dial` from the client pod: the median set-up time, µs.
    fn pod_dial(&self, target: &str) -> f64 {
        self.pod_run("dial", target).parse().unwrap()
    }

    /// `blast` from the client pod.
    fn pod_blast(&self, target: &str) -> Blast {
        Blast::parse(&self.pod_run("blast", target))
    }

    /// The same between the hosts themselves: host 1 to a sink on host 2's own network.
    fn host_to_host(&self, what: &str) -> String {
        let target = format!("{}:9100", host_ip(2));
        let args = [
            "docker",
            "run",
            "--rm",
            "--network",
            "host",
            IMAGE,
            what,
            &target,
            self.amount(what),
        ];
        out(&self.lab.exec(1, &args), "host run")
    }

    /// `self.turns` runs of `a` and of `b`, the order reversed each turn so that the machine's
    /// drift over a run favours neither.
    fn alternate<T>(&self, mut a: impl FnMut() -> T, mut b: impl FnMut() -> T) -> (Vec<T>, Vec<T>) {
        let (mut first, mut second) = (Vec::new(), Vec::new());
        for turn in 0..self.turns {
            if turn.is_multiple_of(2) {
                first.push(a());
                second.push(b());
            } else {
                second.push(b());
                first.push(a());
            }
        }
        (first, second)
    }

    /// Throughput to `target` from the client pod beside host→host, in alternating turns.
    fn against_floor(&self, target: &str) -> Turns {
        let (floor, path) = self.alternate(|| Blast::parse(&self.host_to_host("blast")), || self.pod_blast(target));
        Turns { floor, path }
    }

    fn start_sinks(&self) {
        for (host, pod) in [(1, "local"), (2, "remote")] {
            let id = self.lab.container_of(host, pod, "app");
            out(
                &self
                    .lab
                    .exec(host, &["docker", "exec", "-d", &id, "/capstan-testapp", "sink", "9000"]),
                "sink",
            );
        }
    }
}

fn gbit(bps: f64) -> String {
    format!("{:.2} Gbit/s", bps * 8.0 / 1e9)
}

fn row(what: &str, (bps, us): (f64, f64)) {
    println!("  {what:<44} {:>12}   set-up {:>6.0} µs", gbit(bps), us);
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick") || std::env::var_os("CAPSTAN_BENCH_QUICK").is_some();
    assert!(
        common::lab::lab_available("pod_network bench"),
        "the lab needs root and the Docker Engine"
    );
    let lab = Lab::up(3);
    let (grace, eviction) = (GRACE.to_string(), EVICTION.to_string());
    let cluster = Cluster::start_with(
        &[("workloads.yaml", &workloads())],
        &[
            "--listen",
            &format!("{MACHINE}:0"),
            "--node-grace-period",
            &grace,
            "--pod-eviction-timeout",
            &eviction,
        ],
    );
    let mut b = Bench {
        lab,
        cluster,
        nodes: Vec::new(),
        seconds: if quick { "1" } else { "3" }.into(),
        dials: if quick { "200" } else { "1000" }.into(),
        turns: if quick { 3 } else { 4 },
    };
    // The floor: a sink on host 2's own network.
    out(
        &b.lab.exec(
            2,
            &["docker", "run", "-d", "--network", "host", "--name", "sink", IMAGE, "sink", "9100"],
        ),
        "host sink",
    );
    println!(
        "pod_network: 3 lab hosts, {} s per throughput run, median of {} connections",
        b.seconds, b.dials
    );
    b.start_nodes(&["--pod-network", "vxlan"]);
    b.wait("five Ready pods", 120, || common::lab::ready_count(&b.cluster, "pods") == 5);
    b.start_sinks();
    let remote = format!("{}:9000", b.pod_ip("remote"));
    let vxlan = b.against_floor(&remote);
    let floor_setup: f64 = b.host_to_host("dial").parse().unwrap();
    // The pods' own ends: two pods on one host, beside host→host in turns as well.
    let local = format!("{}:9000", b.pod_ip("local"));
    let one_host = b.against_floor(&local);
    row("pod → pod, one host (best run)", (one_host.best(), b.pod_dial(&local)));
    let cluster_ip = b.kubectl(&["get", "service", "remote", "-o", "jsonpath={.spec.clusterIP}"]);
    let service = format!("{cluster_ip}:9000");
    // Set-up times in alternating turns too, the lowest median of each side.
    let (direct, via_service) = b.alternate(|| b.pod_dial(&remote), || b.pod_dial(&service));
    let lowest = |v: &[f64]| v.iter().copied().fold(f64::MAX, f64::min);
    let (vxlan_setup, service_setup) = (lowest(&direct), lowest(&via_service));
    row("pod → pod across hosts, vxlan (best run)", (vxlan.best(), vxlan_setup));
    let service = (b.pod_blast(&service).rate, service_setup);
    row("pod → ClusterIP → remote pod, vxlan", service);

    // A host joining: from its agent's start until its pod answers from host 1.
    b.nodes[2].kill();
    b.kubectl(&["delete", "node", "h3"]);
    let joiner_ip = b.pod_ip("joiner");
    let target = format!("{joiner_ip}:8080");
    b.wait("h3's pod unreachable", 30, || {
        !b.lab.in_pod(1, "client", "app", &["connect", &target]).status.success()
    });
    let started = Instant::now();
    b.nodes[2] = b.lab.node(&b.cluster, 3, &["--pod-network", "vxlan"]);
    b.wait("h3's pod reachable from h1", 60, || {
        let ip = b.pod_ip("joiner");
        !ip.is_empty()
            && b.lab
                .in_pod(1, "client", "app", &["connect", &format!("{ip}:8080")])
                .status
                .success()
    });
    let join = started.elapsed();

    // VXLAN again without the fast path: every segment through both hosts' forwarding.
    b.start_nodes(&["--pod-network", "vxlan", "--no-fast-path"]);
    b.wait("the fast path off h1's tunnel", 60, || {
        !out(&b.lab.exec(1, &["tc", "filter", "show", "dev", "capstan.1", "ingress"]), "tc").contains("capstan")
    });
    let remote = format!("{}:9000", b.pod_ip("remote"));
    let kernel_path = b.against_floor(&remote);
    row(
        "pod → pod across hosts, vxlan, kernel path",
        (kernel_path.best(), b.pod_dial(&remote)),
    );

    b.start_nodes(&["--pod-network", "host-gw"]);
    b.wait("host-gw routes on h1", 60, || {
        let routes = out(&b.lab.exec(1, &["ip", "route"]), "ip route");
        routes.contains("via 10.250.0.12 dev eth0")
    });
    let remote = format!("{}:9000", b.pod_ip("remote"));
    let host_gw = b.against_floor(&remote);
    row("pod → pod across hosts, host-gw (best run)", (host_gw.best(), b.pod_dial(&remote)));
    let host_runs: Vec<Blast> = [&vxlan, &one_host, &kernel_path, &host_gw]
        .iter()
        .flat_map(|t| t.floor.iter())
        .copied()
        .collect();
    row("host → host (the floor; best run)", (best(&host_runs), floor_setup));

    // A host cut off at the switch: until its Node is NotReady, and until its pod is Ready elsewhere.
    let moving = || {
        b.kubectl(&[
            "get",
            "pods",
            "-l",
            "app=moving",
            "-o",
            "jsonpath={range .items[*]}{.spec.nodeName} {.status.conditions[?(@.type==\"Ready\")].status}{\"\\n\"}{end}",
        ])
    };
    // It may have been placed before h2 joined: the host it runs on is the one cut off.
    let mut from = String::new();
    b.wait("the moving pod Ready", 60, || {
        from = moving()
            .lines()
            .find_map(|l| l.strip_suffix(" True").map(str::to_owned))
            .unwrap_or_default();
        !from.is_empty()
    });
    let (host, other) = if from == "h2" { (2, "h3") } else { (3, "h2") };
    b.lab.host("unplug", host);
    let cut = Instant::now();
    b.wait("the cut-off host NotReady", 60, || {
        b.kubectl(&[
            "get",
            "node",
            &from,
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
        ]) != "True"
    });
    let not_ready = cut.elapsed();
    b.wait("the moving pod Ready on the other host", 60, || {
        moving().lines().any(|l| l == format!("{other} True"))
    });
    let replaced = cut.elapsed();
    b.lab.host("plug", host);

    let floors = kernel_floors(&b.seconds);
    println!(
        "\n  cross-host pod throughput / host→host   vxlan {:.2}× ({}; without the fast path {:.2}×, {}), host-gw {:.2}× ({})   (target ≥ 0.8×; the best of {} alternating runs of each side)",
        vxlan.ratio(),
        vxlan.spread(),
        kernel_path.ratio(),
        kernel_path.spread(),
        host_gw.ratio(),
        host_gw.spread(),
        b.turns
    );
    println!(
        "  the pods' own ends: pod→pod on one host / host→host {:.2}× ({}); across hosts / on one host: vxlan {:.2}×, host-gw {:.2}×   (what the hosts between cost beyond the pods' own veths and namespaces)",
        one_host.ratio(),
        one_host.spread(),
        vxlan.best() / one_host.best(),
        host_gw.best() / one_host.best()
    );
    println!(
        "  where the time goes — the whole machine during each path's runs (median of its turns): both cores' busy share, CPU time and context switches per GB sent"
    );
    for (what, runs) in [
        ("host → host", &host_runs),
        ("pod → pod, one host", &one_host.path),
        ("pod → pod across hosts, vxlan", &vxlan.path),
        ("pod → pod across hosts, vxlan, kernel path", &kernel_path.path),
        ("pod → pod across hosts, host-gw", &host_gw.path),
    ] {
        machine_row(what, runs);
    }
    println!(
        "  the kernel alone, bare namespaces: host→host {} plain, {} through VXLAN = {:.2}×   (the floor of encapsulation on this machine)",
        gbit(floors.plain),
        gbit(floors.vxlan),
        floors.vxlan / floors.plain
    );
    println!(
        "    pod→pod across them: on a bridge {} = {:.2}×, routed on its own veth {} = {:.2}×   (the pod path's own floor, and without the bridge)",
        gbit(floors.bridged),
        floors.bridged / floors.plain,
        gbit(floors.routed),
        floors.routed / floors.plain
    );
    println!(
        "  ClusterIP set-up / direct pod-IP set-up  {:.2}×   (target ≤ 1.2×)",
        service_setup / vxlan_setup
    );
    println!(
        "  host joining → its pod reachable from h1 {:.2} s   (agent start to answer: registration, VXLAN endpoint, peers' routes; target < 2 s)",
        join.as_secs_f64()
    );
    println!(
        "  host cut off → Node NotReady {:.1} s, → its pod Ready on another host {:.1} s   (settings: --node-grace-period {GRACE}, --pod-eviction-timeout {EVICTION}, lease every {LEASE_INTERVAL_SECS} s; floor grace + eviction = {} s)",
        not_ready.as_secs_f64(),
        replaced.as_secs_f64(),
        GRACE + EVICTION
    );
}

/// The kernel's own floors, measured on namespaces of the bench's own with nothing else in the
/// path (no Engine, no firewall, no agent): two "hosts" on a veth pair, a VXLAN device on each
/// (VNI and port as the pod network's, MTU underlay − 50, static FDB and neighbour entries), and
/// on each host two "pods": one on a bridge holding the gateway address (as Capstan wires pods)
/// and one routed on its own veth (a /32 route, no bridge). Bytes/s host→host plain, host→host
/// through VXLAN, bridged pod → bridged pod and routed pod → routed pod, the best of three runs
/// each, taken in turn.
struct Floors {
    plain: f64,
    vxlan: f64,
    bridged: f64,
    routed: f64,
}

fn kernel_floors(seconds: &str) -> Floors {
    let sh = |script: &str| {
        let o = std::process::Command::new("sh").arg("-c").arg(script).output().unwrap();
        assert!(o.status.success(), "{script}: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).trim().to_owned()
    };
    // The test program, out of its image (no registry, no build here).
    let program = "/tmp/capstan-bench-testapp";
    sh(&format!(
        "id=$(docker create {IMAGE}) && docker cp $id:/capstan-testapp {program} && docker rm $id >/dev/null"
    ));
    let spaces = ["cbf-ha", "cbf-hb", "cbf-pa1", "cbf-pa2", "cbf-pb1", "cbf-pb2"];
    let cleanup = spaces.map(|n| format!("ip netns del {n} 2>/dev/null;")).concat() + " true";
    sh(&cleanup);
    // Host n (1 = a, 2 = b): underlay 10.253.0.n, VXLAN address 10.254.n.0, pods in 10.254.n.0/24:
    // bridged .2 behind the bridge's .1, routed .130 via the host's .1 (answered by the bridge's
    // address: any local address answers ARP on any interface).
    let mut script = String::from("set -e\n");
    for n in spaces {
        script += &format!("ip netns add {n}; ip -n {n} link set lo up\n");
    }
    script += "ip link add cbf-u1 type veth peer name cbf-u2
        ip link set cbf-u1 netns cbf-ha; ip link set cbf-u2 netns cbf-hb\n";
    for (n, h, other) in [(1, "cbf-ha", 2), (2, "cbf-hb", 1)] {
        let x = if n == 1 { "a" } else { "b" };
        script += &format!(
            "ip -n {h} addr add 10.253.0.{n}/24 dev cbf-u{n}; ip -n {h} link set cbf-u{n} up
            ip netns exec {h} sysctl -qw net.ipv4.ip_forward=1
            ip -n {h} link add vx type vxlan id 1 local 10.253.0.{n} dstport 8472 dev cbf-u{n} nolearning
            ip -n {h} link set vx mtu 1450 up; ip -n {h} addr add 10.254.{n}.0/32 dev vx
            ip -n {h} link add br0 type bridge; ip -n {h} addr add 10.254.{n}.1/24 dev br0; ip -n {h} link set br0 up
            ip link add cbf-b{x} type veth peer name eth0 netns cbf-p{x}1; ip link set cbf-b{x} netns {h}
            ip -n {h} link set cbf-b{x} mtu 1450 master br0 up
            ip -n cbf-p{x}1 link set eth0 mtu 1450 up; ip -n cbf-p{x}1 addr add 10.254.{n}.2/24 dev eth0
            ip -n cbf-p{x}1 route add default via 10.254.{n}.1
            ip link add cbf-r{x} type veth peer name eth0 netns cbf-p{x}2; ip link set cbf-r{x} netns {h}
            ip -n {h} link set cbf-r{x} mtu 1450 up; ip -n {h} route add 10.254.{n}.130/32 dev cbf-r{x} scope link
            ip -n cbf-p{x}2 link set eth0 mtu 1450 up; ip -n cbf-p{x}2 addr add 10.254.{n}.130/32 dev eth0
            ip -n cbf-p{x}2 route add 10.254.{n}.1/32 dev eth0 scope link
            ip -n cbf-p{x}2 route add default via 10.254.{n}.1 dev eth0
            ip -n {h} route add 10.254.{other}.0/24 via 10.254.{other}.0 dev vx onlink
"
        );
    }
    sh(&script);
    let mac = |h: &str| {
        sh(&format!(
            "ip -n {h} -o link show vx | grep -o 'link/ether [0-9a-f:]*' | cut -d' ' -f2"
        ))
    };
    let (mac_a, mac_b) = (mac("cbf-ha"), mac("cbf-hb"));
    sh(&format!(
        "set -e
        ip -n cbf-ha neigh add 10.254.2.0 lladdr {mac_b} dev vx nud permanent
        ip -n cbf-hb neigh add 10.254.1.0 lladdr {mac_a} dev vx nud permanent
        ip netns exec cbf-ha bridge fdb append {mac_b} dev vx dst 10.253.0.2
        ip netns exec cbf-hb bridge fdb append {mac_a} dev vx dst 10.253.0.1"
    ));
    let sinks: Vec<std::process::Child> = ["cbf-hb", "cbf-pb1", "cbf-pb2"]
        .iter()
        .map(|n| {
            std::process::Command::new("ip")
                .args(["netns", "exec", n, program, "sink", "9300"])
                .spawn()
                .unwrap()
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let blast = |from: &str, to: &str| -> f64 {
        let o = std::process::Command::new("ip")
            .args(["netns", "exec", from, program, "blast", &format!("{to}:9300"), seconds])
            .output()
            .unwrap();
        Blast::parse(&String::from_utf8_lossy(&o.stdout)).rate
    };
    let paths = [
        ("cbf-ha", "10.253.0.2"),
        ("cbf-ha", "10.254.2.0"),
        ("cbf-pa1", "10.254.2.2"),
        ("cbf-pa2", "10.254.2.130"),
    ];
    // Three rounds, each path in turn, the best run per path.
    let mut bests = [0.0_f64; 4];
    for _ in 0..3 {
        for (most, (from, to)) in bests.iter_mut().zip(paths) {
            *most = most.max(blast(from, to));
        }
    }
    for mut sink in sinks {
        let _ = sink.kill();
        let _ = sink.wait();
    }
    sh(&cleanup);
    let _ = std::fs::remove_file(program);
    Floors {
        plain: bests[0],
        vxlan: bests[1],
        bridged: bests[2],
        routed: bests[3],
    }
}
