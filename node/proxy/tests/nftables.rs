//! The nftables backend on the real kernel, inside network namespaces each test creates: a node
//! namespace holding the proxy's table, two endpoint namespaces behind veths, and a client
//! namespace routed through the node. Real TCP and UDP go through the DNAT rules.
//!
//! Needs root, `ip` and `nft`: in CI (CI=true) their absence fails the test; elsewhere it skips.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::process::Command;
use std::time::Duration;

use capstan_proxy::model::{Frontend, Protocol, VirtualService};
use capstan_proxy::nft::{self, Nft, NftSettings, Ruleset, Spread};

fn can_run() -> bool {
    let root = rustix::process::geteuid().is_root();
    let tools = ["ip", "nft"]
        .iter()
        .all(|t| Command::new(t).arg("-V").output().is_ok_and(|o| o.status.success()));
    if root && tools {
        return true;
    }
    let why = format!("these tests need root, ip and nft (root: {root}, tools: {tools})");
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{why}");
    eprintln!("*** SKIPPED: {why} ***");
    false
}

fn run(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// The namespaces of one test; removed on drop, also when the test fails.
struct Net {
    prefix: String,
}

impl Net {
    fn ns(&self, which: &str) -> String {
        format!("{}-{which}", self.prefix)
    }

    /// node ── veth ── e1 (10.244.1.2), e2 (10.244.2.2); node ── veth ── client (192.168.77.2).
    /// The node's default route points at the client, so that anything not caught would be
    /// routed out there.
    fn new(test: &str) -> Net {
        let net = Net {
            prefix: format!("cpx{}-{test}", std::process::id()),
        };
        for which in ["node", "e1", "e2", "client"] {
            run(&["ip", "netns", "add", &net.ns(which)]);
            run(&["ip", "-n", &net.ns(which), "link", "set", "lo", "up"]);
        }
        let node = net.ns("node");
        for (which, node_ip, peer_ip, gw) in [
            ("e1", "10.244.1.1/24", "10.244.1.2/24", "10.244.1.1"),
            ("e2", "10.244.2.1/24", "10.244.2.2/24", "10.244.2.1"),
            ("client", "192.168.77.1/24", "192.168.77.2/24", "192.168.77.1"),
        ] {
            let peer = net.ns(which);
            let dev = format!("v{which}");
            run(&[
                "ip", "-n", &node, "link", "add", &dev, "type", "veth", "peer", "name", "eth0", "netns", &peer,
            ]);
            run(&["ip", "-n", &node, "addr", "add", node_ip, "dev", &dev]);
            run(&["ip", "-n", &node, "link", "set", &dev, "up"]);
            run(&["ip", "-n", &peer, "addr", "add", peer_ip, "dev", "eth0"]);
            run(&["ip", "-n", &peer, "link", "set", "eth0", "up"]);
            run(&["ip", "-n", &peer, "route", "add", "default", "via", gw]);
        }
        run(&["ip", "-n", &node, "route", "add", "default", "via", "192.168.77.2"]);
        run(&["ip", "netns", "exec", &node, "sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        net
    }

    fn nft(&self) -> Nft {
        Nft::new(Some(self.ns("node")), "capstan-proxy")
    }

    /// Runs `f` on a thread inside namespace `which`.
    fn inside<T: Send + 'static>(&self, which: &str, f: impl FnOnce() -> T + Send + 'static) -> std::thread::JoinHandle<T> {
        let path = format!("/run/netns/{}", self.ns(which));
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).unwrap();
            rustix::thread::move_into_link_name_space(file.as_fd(), Some(rustix::thread::LinkNameSpaceType::Network)).unwrap();
            f()
        })
    }

    /// A TCP server on :8080 answering its name, and a UDP one on :5353, in namespace `which`.
    fn serve(&self, which: &'static str) {
        let tcp = self.inside(which, || TcpListener::bind("0.0.0.0:8080").unwrap()).join().unwrap();
        std::thread::spawn(move || {
            for mut s in tcp.incoming().flatten() {
                let _ = s.write_all(format!("hello from {which}\n").as_bytes());
            }
        });
        let udp = self.inside(which, || UdpSocket::bind("0.0.0.0:5353").unwrap()).join().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while let Ok((_, from)) = udp.recv_from(&mut buf) {
                let _ = udp.send_to(format!("udp from {which}").as_bytes(), from);
            }
        });
    }

    /// Connects from namespace `which` and reads the answer.
    fn get(&self, which: &str, to: &str) -> std::io::Result<String> {
        let to: SocketAddr = to.parse().unwrap();
        self.inside(which, move || {
            let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(3))?;
            s.set_read_timeout(Some(Duration::from_secs(3)))?;
            let mut text = String::new();
            s.read_to_string(&mut text)?;
            Ok(text.trim().to_owned())
        })
        .join()
        .unwrap()
    }

    fn udp(&self, which: &str, to: &str) -> std::io::Result<String> {
        let to: SocketAddr = to.parse().unwrap();
        self.inside(which, move || {
            let s = UdpSocket::bind("0.0.0.0:0")?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            s.send_to(b"ping", to)?;
            let mut buf = [0u8; 512];
            let n = s.recv(&mut buf)?;
            Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
        })
        .join()
        .unwrap()
    }

    fn nft_cli(&self, args: &str) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns("node"), "nft"])
            .args(args.split_whitespace())
            .output()
            .unwrap();
        assert!(out.status.success(), "nft {args}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for which in ["node", "e1", "e2", "client"] {
            let _ = Command::new("ip").args(["netns", "del", &self.ns(which)]).status();
        }
    }
}

fn settings(spread: Spread) -> NftSettings {
    let mut s = NftSettings::new("capstan-proxy", capstan_api::cidr::SERVICE_RANGE, capstan_api::cidr::POD_RANGE);
    s.spread = spread;
    s
}

fn vs(frontend: Frontend, protocol: Protocol, backends: &[&str], port: u16, affinity: Option<u32>) -> VirtualService {
    VirtualService {
        frontend,
        protocol,
        service: format!("test/svc:{}", protocol.name()),
        affinity,
        backends: backends.iter().map(|b| (b.parse().unwrap(), port)).collect(),
        policy: Default::default(),
    }
}

fn vip(ip: &str, port: u16) -> Frontend {
    Frontend::ClusterIp(ip.parse().unwrap(), port)
}

const E1: &str = "10.244.1.2";
const E2: &str = "10.244.2.2";

async fn apply_full(net: &Net, rs: &Ruleset, s: &NftSettings) {
    let nft = net.nft();
    let listing = nft::parse_listing(&nft.list().await.unwrap());
    nft.apply_update(&nft::full_update(rs, s, &listing)).await.unwrap();
}

fn refused(r: std::io::Result<String>) -> bool {
    matches!(r, Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused)
}

#[tokio::test]
async fn cluster_ips_node_ports_rejection_deltas_drift_and_cleanup() {
    if !can_run() {
        return;
    }
    let net = Net::new("a");
    net.serve("e1");
    net.serve("e2");
    let s = settings(Spread::Random);
    let services = vec![
        vs(vip("10.96.0.20", 80), Protocol::Tcp, &[E1, E2], 8080, None),
        vs(Frontend::NodePort(30080), Protocol::Tcp, &[E1, E2], 8080, None),
        vs(vip("10.96.0.21", 80), Protocol::Tcp, &[], 8080, None),
        vs(Frontend::NodePort(30081), Protocol::Tcp, &[], 8080, None),
        vs(vip("10.96.0.53", 53), Protocol::Udp, &[E2], 5353, None),
    ];
    let mut renderer = nft::Renderer::default();
    renderer.render(&services, &s);
    apply_full(&net, renderer.total(), &s).await;

    // A client off the cluster reaches both endpoints through the ClusterIP, and the node port.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..24 {
        seen.insert(net.get("client", "10.96.0.20:80").unwrap());
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), vec!["hello from e1", "hello from e2"]);
    assert!(net.get("client", "192.168.77.1:30080").unwrap().starts_with("hello from e"));
    // A process on the node itself (the output hook), and UDP.
    assert!(net.get("node", "10.96.0.20:80").unwrap().starts_with("hello from e"));
    assert!(net.get("node", "192.168.77.1:30080").unwrap().starts_with("hello from e"));
    // Node ports are served on the node's addresses, not on loopback (a pod's reply cannot
    // reach 127.0.0.1): refused at once there, never a hang.
    // (A hang would end in a timeout after 3 s, not in a refusal.)
    assert!(refused(net.get("node", "127.0.0.1:30080")), "localhost node ports are refused");
    let udp = net.udp("client", "10.96.0.53:53");
    assert_eq!(
        udp.as_deref().ok(),
        Some("udp from e2"),
        "{udp:?}\n{}",
        net.nft_cli("list table ip capstan-proxy")
    );
    // No endpoint, no service, wrong port: rejected at once, from the client and from the node.
    for (from, to) in [
        ("client", "10.96.0.21:80"),
        ("node", "10.96.0.21:80"),
        ("client", "10.96.7.7:80"),
        ("node", "10.96.7.7:80"),
        ("client", "10.96.0.20:81"),
        ("client", "192.168.77.1:30081"),
    ] {
        assert!(refused(net.get(from, to)), "{from} -> {to} is rejected");
    }

    // An endpoint leaves: the update touches that service's elements only.
    let mut next = services.clone();
    next[0].backends.retain(|(ip, _)| ip.to_string() == E1);
    let update = renderer.render(&next, &s);
    let text = update.describe();
    assert!(!text.contains("30080") && !text.contains("udp"), "{text}");
    net.nft().apply_update(&update).await.unwrap();
    for _ in 0..8 {
        assert_eq!(net.get("client", "10.96.0.20:80").unwrap(), "hello from e1");
    }
    assert!(net.get("client", "192.168.77.1:30080").is_ok(), "the node port still has both");
    // The endpoint moves to another address, the count unchanged: elements only, no rule.
    next[0].backends = vec![(E2.parse().unwrap(), 8080)];
    let update = renderer.render(&next, &s);
    assert!(update.pre.is_empty() && update.post.is_empty(), "{}", update.describe());
    net.nft().apply_update(&update).await.unwrap();
    for _ in 0..8 {
        assert_eq!(net.get("client", "10.96.0.20:80").unwrap(), "hello from e2");
    }
    // And back to both: the service moves to the two-endpoint pick chain again.
    let update = renderer.render(&services, &s);
    net.nft().apply_update(&update).await.unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..24 {
        seen.insert(net.get("client", "10.96.0.20:80").unwrap());
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    let new = renderer.total().clone();

    // Someone else empties our map; the periodic full rewrite repairs it.
    net.nft_cli("flush map ip capstan-proxy service-ips");
    assert!(refused(net.get("client", "10.96.0.20:80")));
    apply_full(&net, &new, &s).await;
    assert!(net.get("client", "10.96.0.20:80").unwrap().starts_with("hello from e"));
    // The same for the endpoints map.
    net.nft_cli("flush map ip capstan-proxy endpoints-tcp");
    assert!(net.get("client", "10.96.0.20:80").is_err());
    apply_full(&net, &new, &s).await;
    assert!(net.get("client", "10.96.0.20:80").unwrap().starts_with("hello from e"));
    // A stray chain someone added inside our table is removed by the rewrite too.
    net.nft_cli("add chain ip capstan-proxy svc-stray");
    apply_full(&net, &new, &s).await;
    assert!(!net.nft_cli("list table ip capstan-proxy").contains("svc-stray"));

    // Cleanup removes the table and nothing else.
    net.nft_cli("add table ip someone-else");
    net.nft().delete_table().await.unwrap();
    let tables = net.nft_cli("list tables");
    assert!(!tables.contains("capstan-proxy") && tables.contains("someone-else"), "{tables}");
}

#[tokio::test]
async fn round_robin_affinity_and_hairpin() {
    if !can_run() {
        return;
    }
    let net = Net::new("b");
    net.serve("e1");
    net.serve("e2");
    let s = settings(Spread::RoundRobin);
    let services = vec![
        vs(vip("10.96.0.30", 80), Protocol::Tcp, &[E1, E2], 8080, None),
        vs(vip("10.96.0.31", 80), Protocol::Tcp, &[E1, E2], 8080, Some(60)),
        vs(vip("10.96.0.32", 80), Protocol::Tcp, &[E1], 8080, None),
    ];
    apply_full(&net, &Ruleset::build(&services, &s), &s).await;

    // Round robin alternates exactly.
    let answers: Vec<String> = (0..6).map(|_| net.get("client", "10.96.0.30:80").unwrap()).collect();
    for pair in answers.windows(2) {
        assert_ne!(pair[0], pair[1], "{answers:?}");
    }
    // ClientIP affinity: one client stays on one endpoint.
    let first = net.get("client", "10.96.0.31:80").unwrap();
    for _ in 0..8 {
        assert_eq!(net.get("client", "10.96.0.31:80").unwrap(), first);
    }
    assert!(
        net.nft_cli("list table ip capstan-proxy").contains("192.168.77.2"),
        "the affinity set holds the client"
    );
    // An endpoint reaching its own service comes back to itself (masqueraded hairpin).
    let hairpin = net.get("e1", "10.96.0.32:80");
    assert_eq!(
        hairpin.as_deref().ok(),
        Some("hello from e1"),
        "{hairpin:?}\n{}",
        net.nft_cli("list table ip capstan-proxy")
    );
    // And endpoints reach each other's services through the node.
    assert!(net.get("e2", "10.96.0.30:80").unwrap().starts_with("hello from e"));
}
