//! The IPVS backend on a real kernel. This host's kernel has no IPVS, so the one host-side test
//! boots Debian's kernel under qemu (scripts/ipvs-vm.sh) with this very test binary inside,
//! which then runs the `#[ignore]`d tests below as root in the VM: our family against the
//! kernel's answers and against the bytes ipvsadm sends, and real TCP through virtual services
//! the backend programs, checked with `ipvsadm -Ln`.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use capstan_proxy::ipvs::family::{Command as Cmd, Message, RealServer, VirtualServer, encode};
use capstan_proxy::ipvs::{Ipvs, IpvsBackend};
use capstan_proxy::model::{Frontend, Protocol, VirtualService};
use capstan_proxy::nft::{Nft, ipvs_guard_script};
use netlink_packet_core::ParseableParametrized;
use netlink_packet_generic::GenlHeader;

#[test]
fn ipvs_backend_on_a_real_kernel() {
    let ci = std::env::var("CI").as_deref() == Ok("true");
    let has_qemu = Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_qemu {
        assert!(!ci, "qemu-system-x86_64 is missing: scripts/install-deps.sh installs it");
        eprintln!("*** SKIPPED: qemu-system-x86_64 is missing (scripts/install-deps.sh installs it) ***");
        return;
    }
    let exe = std::env::current_exe().expect("test binary");
    let name = exe.file_name().and_then(|n| n.to_str()).expect("name").to_owned();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/ipvs-vm.sh");
    let out = Command::new(script)
        .arg(format!("/{name} --ignored --test-threads=1 --nocapture"))
        .arg(&exe)
        .output()
        .expect("run scripts/ipvs-vm.sh");
    let log = String::from_utf8_lossy(&out.stdout);
    println!("{log}");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the IPVS tests failed in the VM (serial log above)");
    assert!(
        log.contains("test result: ok. 3 passed"),
        "not every in-VM test ran and passed (serial log above)"
    );
}

fn sh(script: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(script).output().expect("sh");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{script}\nfailed: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Netlink messages ipvsadm sends while running `args`, seen on an nlmon interface: the genl
/// payloads (after the 16-byte netlink and 4-byte genl headers) of commands `cmd` to `family`.
fn ipvsadm_sends(args: &str, family: u16, cmd: u8) -> Vec<Vec<u8>> {
    sh("ip link show nlmon0 >/dev/null 2>&1 || /sbin/ip.iproute2 link add nlmon0 type nlmon; ip link set nlmon0 up");
    // An unbound packet socket sees every interface; only nlmon0 carries netlink messages, and
    // they are told apart by family and command.
    let protocol = socket2::Protocol::from(i32::from(0x0003u16.to_be())); // ETH_P_ALL
    let socket = socket2::Socket::new(socket2::Domain::PACKET, socket2::Type::RAW, Some(protocol)).expect("AF_PACKET socket");
    socket.set_nonblocking(true).expect("nonblocking");
    sh(&format!("ipvsadm {args}"));
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65536];
    while let Ok(n) = (&socket).read(&mut buf) {
        let p = &buf[..n];
        if p.len() >= 20 && u16::from_ne_bytes([p[4], p[5]]) == family && p[16] == cmd {
            let len = u32::from_ne_bytes([p[0], p[1], p[2], p[3]]) as usize;
            out.push(p[20..len.min(p.len())].to_vec());
        }
    }
    out
}

#[test]
#[ignore = "runs inside the qemu VM of ipvs_backend_on_a_real_kernel"]
fn family_matches_ipvsadm_and_reads_the_kernels_answers() {
    let mut ipvs = Ipvs::open().expect("the IPVS family resolves in the VM");
    let (version, size) = ipvs.info().expect("GET_INFO");
    println!("IPVS family id {} version {version:#08x} conn_tab_size {size}", ipvs.family());
    assert_eq!(version, 0x010201);

    // What ipvsadm sends, byte for byte, is what we send.
    let web = VirtualServer {
        protocol: Protocol::Tcp,
        addr: Ipv4Addr::new(10, 0, 0, 5),
        port: 443,
        scheduler: "wrr".into(),
        persistence: 0,
    };
    let sent = ipvsadm_sends("-A -t 10.0.0.5:443 -s wrr", ipvs.family(), 1);
    assert_eq!(sent.len(), 1, "one NEW_SERVICE seen");
    println!("IPVSADM-BYTES new_service tcp 10.0.0.5:443 wrr: {}", hex(&sent[0]));
    assert_eq!(hex(&sent[0]), hex(&encode(&Message::new_service(&web))));
    let real = RealServer {
        addr: Ipv4Addr::new(10, 0, 0, 2),
        port: 8443,
        weight: 3,
    };
    let sent = ipvsadm_sends("-a -t 10.0.0.5:443 -r 10.0.0.2:8443 -m -w 3", ipvs.family(), 5);
    assert_eq!(sent.len(), 1, "one NEW_DEST seen");
    println!("IPVSADM-BYTES new_dest 10.0.0.2:8443 w3: {}", hex(&sent[0]));
    // ipvsadm repeats the whole service entry and adds the tunnel attributes; the kernel needs
    // only the service's key and the destination, which must read the same.
    let theirs = Message::parse_with_param(&sent[0], GenlHeader { cmd: 5, version: 1 }).expect("ipvsadm's NEW_DEST parses");
    let ours = Message::new_dest(&web, &real);
    let key = |m: &Message| {
        m.service()
            .and_then(VirtualServer::from_attrs)
            .map(|s| (s.protocol, s.addr, s.port))
    };
    assert_eq!(key(&theirs), key(&ours));
    assert_eq!(theirs.dest().and_then(RealServer::from_attrs), Some(real));

    // The kernel's answers parse to what was made.
    sh("ipvsadm -A -u 10.0.0.9:53 -s sh -p 600");
    for raw in ipvs.dump_raw(Message::bare(Cmd::GetService)).expect("dump services") {
        println!("KERNEL-BYTES service: {}", hex(&raw));
    }
    for raw in ipvs.dump_raw(Message::get_dests(&web)).expect("dump dests") {
        println!("KERNEL-BYTES dest: {}", hex(&raw));
    }
    let listing = ipvs.list().expect("list");
    let udp = VirtualServer {
        protocol: Protocol::Udp,
        addr: Ipv4Addr::new(10, 0, 0, 9),
        port: 53,
        scheduler: "sh".into(),
        persistence: 600,
    };
    assert_eq!(listing.get(&web), Some(&vec![real]), "{listing:?}");
    assert_eq!(listing.get(&udp), Some(&vec![]), "{listing:?}");
    sh("ipvsadm -C");
}

/// Servers 10.0.0.2 and 10.0.0.3 (port 8080) in a netns behind veth-h (10.0.0.254), and a
/// client netns (10.0.1.2) routed through the VM's root netns, like a pod.
fn topology() {
    if Path::new("/run/topology").exists() {
        return;
    }
    sh(r#"set -e
        unshare -n sleep 100000 </dev/null >/dev/null 2>&1 & srv=$!
        unshare -n sleep 100000 </dev/null >/dev/null 2>&1 & cli=$!
        for p in $srv $cli; do
            while [ "$(readlink /proc/$p/ns/net)" = "$(readlink /proc/self/ns/net)" ]; do sleep 0.05; done
        done
        echo $cli > /run/client.pid
        echo $srv > /run/server.pid
        /sbin/ip.iproute2 link add veth-h type veth peer name veth-s
        /sbin/ip.iproute2 link set veth-s netns $srv
        /sbin/ip.iproute2 link add veth-p type veth peer name veth-c
        /sbin/ip.iproute2 link set veth-c netns $cli
        ip addr add 10.0.0.254/24 dev veth-h; ip link set veth-h up
        ip addr add 10.0.1.254/24 dev veth-p; ip link set veth-p up
        echo 1 > /proc/sys/net/ipv4/ip_forward
        mkdir -p /www2 /www3; echo two > /www2/index.html; echo three > /www3/index.html
        nsenter -t $srv -n sh -c 'ip link set lo up; ip addr add 10.0.0.2/24 dev veth-s; ip addr add 10.0.0.3/24 dev veth-s;
            ip link set veth-s up; ip route add default via 10.0.0.254;
            httpd -p 10.0.0.2:8080 -h /www2 </dev/null >/dev/null 2>&1; httpd -p 10.0.0.3:8080 -h /www3 </dev/null >/dev/null 2>&1'
        nsenter -t $cli -n sh -c 'ip link set lo up; ip addr add 10.0.1.2/24 dev veth-c; ip link set veth-c up;
            ip route add default via 10.0.1.254'
        touch /run/topology
    "#);
}

fn get(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").expect("send");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read");
    text.split("\r\n\r\n").nth(1).unwrap_or_default().trim().to_owned()
}

/// The same request from the client netns (a pod's view).
fn get_from_client(url: &str) -> String {
    sh(&format!("nsenter -t $(cat /run/client.pid) -n timeout 5 wget -q -O - {url}"))
        .trim()
        .to_owned()
}

fn service(backends: &[Ipv4Addr], affinity: Option<u32>) -> VirtualService {
    VirtualService {
        frontend: Frontend::ClusterIp(Ipv4Addr::new(10, 96, 0, 10), 80),
        protocol: Protocol::Tcp,
        service: "default/web:http".into(),
        affinity,
        backends: backends.iter().map(|ip| (*ip, 8080)).collect(),
        policy: Default::default(),
    }
}

#[test]
#[ignore = "runs inside the qemu VM of ipvs_backend_on_a_real_kernel"]
fn backend_passes_tcp_and_follows_endpoint_changes() {
    topology();
    let (two, three) = (Ipv4Addr::new(10, 0, 0, 2), Ipv4Addr::new(10, 0, 0, 3));
    let vip: SocketAddr = "10.96.0.10:80".parse().expect("addr");
    // Someone else's virtual service: never touched.
    sh("ipvsadm -A -t 10.0.0.254:80 -s lc");
    let service_cidr = capstan_api::cidr::SERVICE_RANGE;
    let mut backend = IpvsBackend::open("rr", service_cidr).expect("open the IPVS backend");
    // The nftables table the proxy puts beside it, applied the way the proxy applies it.
    let guard = Nft::new(None, "capstan-proxy");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime
        .block_on(guard.apply(&ipvs_guard_script("capstan-proxy", service_cidr)))
        .expect("the guard table");
    assert_eq!(backend.link.name, "capstan-ipvs0");
    let mut node_port = service(&[two], None);
    node_port.frontend = Frontend::NodePort(30080);

    let done = backend
        .apply(&[service(&[two, three], None), node_port.clone()], true)
        .expect("apply");
    println!("first apply: {done:?}");
    let table = sh("ipvsadm -Ln");
    println!("{table}");
    assert!(table.contains("TCP  10.96.0.10:80 rr"), "{table}");
    assert!(table.contains("-> 10.0.0.2:8080"), "{table}");
    assert!(table.contains("-> 10.0.0.3:8080"), "{table}");
    assert!(table.contains("Masq"), "{table}");
    assert!(table.contains("TCP  10.0.0.254:30080 rr"), "node port on the node address: {table}");
    assert!(sh("ip addr show capstan-ipvs0").contains("10.96.0.10/32"));

    // Round robin over both, from the host and from a pod-like netns.
    let answers: Vec<String> = (0..8).map(|_| get(vip)).collect();
    assert_eq!(answers.iter().filter(|a| *a == "two").count(), 4, "{answers:?}");
    assert_eq!(answers.iter().filter(|a| *a == "three").count(), 4, "{answers:?}");
    let from_pod: Vec<String> = (0..4).map(|_| get_from_client("http://10.96.0.10/")).collect();
    assert!(
        from_pod.contains(&"two".into()) && from_pod.contains(&"three".into()),
        "{from_pod:?}"
    );
    assert_eq!(get("10.0.0.254:30080".parse().expect("addr")), "two");
    // An address of the service range that is no service is refused at once, from the host and
    // from a pod, not routed out (the default route leads to a netns that answers nothing).
    sh("ip route add default via 10.0.0.2 2>/dev/null || true");
    let stray = TcpStream::connect_timeout(&"10.96.0.99:80".parse().expect("addr"), Duration::from_secs(3));
    assert!(
        matches!(&stray, Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused),
        "{stray:?}"
    );
    let from_pod = Command::new("sh")
        .arg("-c")
        .arg("nsenter -t $(cat /run/client.pid) -n timeout 5 wget -q -O - http://10.96.0.99/ 2>&1")
        .output()
        .expect("wget");
    let said = String::from_utf8_lossy(&from_pod.stdout);
    assert!(said.contains("refused"), "from a pod: {said}");

    // One endpoint leaves: one request, and it gets no new connections.
    let done = backend.apply(&[service(&[two], None), node_port.clone()], false).expect("apply");
    assert_eq!(done.requests, 1, "{done:?}");
    assert!((0..4).all(|_| get(vip) == "two"));

    // Hairpin: the endpoint reaches its own service, which sends it back to itself. Without
    // masquerade its own address comes back to it as the source and the connection fails; with
    // the guard table's hairpin set (kept as the proxy keeps it) it is answered.
    let from_itself = || sh("nsenter -t $(cat /run/server.pid) -n timeout 4 wget -q -O - http://10.96.0.10/ 2>&1 || true");
    let without = from_itself();
    assert!(!without.contains("two"), "no hairpin without masquerade: {without}");
    let (update, _) = capstan_proxy::nft::hairpin_update(None, &[service(&[two], None)]);
    runtime.block_on(guard.apply_update(&update)).expect("the hairpin set");
    assert!(sh("nft list set ip capstan-proxy hairpin").contains("10.0.0.2 . 10.0.0.2"));
    assert_eq!(from_itself().trim(), "two", "the endpoint reaches itself through its service");

    // Session affinity: persistence, and every answer from one server.
    backend
        .apply(&[service(&[two, three], Some(600)), node_port.clone()], false)
        .expect("apply");
    assert!(sh("ipvsadm -Ln").contains("persistent 600"));
    let sticky: Vec<String> = (0..6).map(|_| get(vip)).collect();
    assert!(sticky.iter().all(|a| *a == sticky[0]), "{sticky:?}");

    // Drift made by someone else is repaired by a full apply.
    sh("ipvsadm -d -t 10.96.0.10:80 -r 10.0.0.3:8080");
    let done = backend.apply(&[service(&[two, three], Some(600)), node_port], true).expect("apply");
    assert_eq!(done.requests, 1, "only the missing real server is restored: {done:?}");
    assert!(sh("ipvsadm -Ln").contains("-> 10.0.0.3:8080"));

    // A removed service leaves the kernel and its address leaves the interface.
    backend.apply(&[], false).expect("apply");
    let table = sh("ipvsadm -Ln");
    assert!(!table.contains("10.96.0.10"), "{table}");
    assert!(table.contains("TCP  10.0.0.254:80 lc"), "the foreign service stays: {table}");
    assert!(!sh("ip addr show capstan-ipvs0").contains("10.96.0.10"));
    let refused = TcpStream::connect_timeout(&vip, Duration::from_secs(2));
    assert!(refused.is_err(), "nothing answers on a removed service");
    backend.cleanup().expect("cleanup");
    assert!(sh("ip link show capstan-ipvs0 2>&1 || true").contains("not exist") || !Path::new("/sys/class/net/capstan-ipvs0").exists());
    sh("ipvsadm -C");
}

#[test]
#[ignore = "runs inside the qemu VM of ipvs_backend_on_a_real_kernel"]
fn udp_services_and_every_scheduler_are_accepted() {
    let mut backend = IpvsBackend::open("rr", capstan_api::cidr::SERVICE_RANGE).expect("open");
    let dns = VirtualService {
        frontend: Frontend::ClusterIp(Ipv4Addr::new(10, 96, 0, 53), 53),
        protocol: Protocol::Udp,
        service: "kube-system/kube-dns:dns".into(),
        affinity: None,
        backends: vec![(Ipv4Addr::new(10, 0, 0, 2), 53), (Ipv4Addr::new(10, 0, 0, 3), 53)],
        policy: Default::default(),
    };
    backend.apply(std::slice::from_ref(&dns), true).expect("apply");
    let table = sh("ipvsadm -Ln");
    assert!(table.contains("UDP  10.96.0.53:53 rr"), "{table}");
    backend.cleanup().expect("cleanup");
    for scheduler in ["wrr", "lc", "sh", "mh"] {
        let mut b = IpvsBackend::open(scheduler, capstan_api::cidr::SERVICE_RANGE).expect("open");
        b.apply(std::slice::from_ref(&dns), true)
            .unwrap_or_else(|e| panic!("{scheduler}: {e}"));
        assert!(sh("ipvsadm -Ln").contains(&format!("UDP  10.96.0.53:53 {scheduler}")));
        b.cleanup().expect("cleanup");
    }
    assert!(!sh("ipvsadm -Ln").contains("10.96.0.53"));
}
