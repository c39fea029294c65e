//! Proxy sync cost on the real kernel (nftables, inside a network namespace of its own): the
//! initial sync of N services × 10 endpoints, and one endpoint change among them. kube-proxy's
//! iptables mode took a median of about 5 s per change on a 5,000-node cluster.
//!
//! The same for the IPVS backend, on Debian's kernel booted under qemu (scripts/ipvs-vm.sh, this
//! binary inside it): those times come from an emulated CPU, so the number of netlink messages per
//! change is printed beside them.
//!
//! `cargo bench -p capstan-proxy --bench sync` (10,000 services; `-- --quick`: 1,000). Needs root,
//! nft and qemu.

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant};

use capstan_proxy::model::{Frontend, Protocol, VirtualService};
use capstan_proxy::nft::{self, Nft, NftSettings};

/// One endpoint change among the services.
#[derive(Clone, Copy, PartialEq)]
enum Change {
    None,
    /// Service i's last endpoint moves to a new address (a pod replaced).
    Moved(u32),
    /// Service i loses its last endpoint (a pod gone, not yet replaced).
    Removed(u32),
}

fn services(n: u32, change: Change) -> Vec<VirtualService> {
    (0..n)
        .map(|i| {
            let vip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + 1 + i);
            let count = if change == Change::Removed(i) { 9 } else { 10 };
            let backends = (0..count)
                .map(|e| {
                    let bump = if change == Change::Moved(i) && e == 9 { 1 << 20 } else { 0 };
                    (Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 244, 0, 0)) + i * 10 + e + bump), 8080)
                })
                .collect();
            VirtualService {
                frontend: Frontend::ClusterIp(vip, 80),
                protocol: Protocol::Tcp,
                service: format!("bench/svc-{i}:http"),
                affinity: None,
                backends,
                policy: Default::default(),
            }
        })
        .collect()
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// Inside the VM: the IPVS backend's figures.
fn ipvs_figures(n: u32, quick: bool) {
    use capstan_proxy::ipvs::IpvsBackend;
    let mut backend = IpvsBackend::open("rr", capstan_api::cidr::Cidr::fixed(Ipv4Addr::new(10, 96, 0, 0), 12)).expect("IPVS in the VM");
    let t = Instant::now();
    let done = backend.apply(&services(n, Change::None), false).expect("the initial sync");
    let initial = t.elapsed();
    let mut changes = Vec::new();
    let mut messages = Vec::new();
    for round in 0..20u32 {
        let which = (round * 7919) % n;
        let wanted = services(n, if round % 2 == 0 { Change::Moved(which) } else { Change::None });
        let sent = backend.ipvs.sent;
        let t = Instant::now();
        backend.apply(&wanted, false).expect("an endpoint change");
        changes.push(t.elapsed());
        messages.push(backend.ipvs.sent - sent);
    }
    changes.sort();
    messages.sort_unstable();
    println!(
        "IPVS-FIGURES Proxy sync benchmark (IPVS, Debian {} under qemu TCG: EMULATED CPU){}: {n} services x 10 endpoints",
        std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        if quick { " (quick)" } else { "" }
    );
    println!(
        "IPVS-FIGURES   initial sync: {} ({} netlink requests, {} addresses on capstan-ipvs0)",
        ms(initial),
        done.requests,
        done.addresses
    );
    println!(
        "IPVS-FIGURES   one endpoint change: p50 {}  max {}  ({} netlink messages per change)",
        ms(changes[changes.len() / 2]),
        ms(changes[changes.len() - 1]),
        messages[messages.len() / 2]
    );
    backend.cleanup().expect("cleanup");
}

/// On the host: boots the VM with this binary inside and prints its figures.
fn ipvs_in_vm(quick: bool) {
    let exe = std::env::current_exe().expect("bench binary");
    let name = exe.file_name().and_then(|n| n.to_str()).expect("name").to_owned();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/ipvs-vm.sh");
    let command = format!("/{name} --in-vm{}", if quick { " --quick" } else { "" });
    let out = Command::new(script)
        .arg(command)
        .arg(&exe)
        .output()
        .expect("run scripts/ipvs-vm.sh");
    let log = String::from_utf8_lossy(&out.stdout);
    let figures: Vec<&str> = log.lines().filter_map(|l| l.trim_end().strip_prefix("IPVS-FIGURES ")).collect();
    assert!(
        out.status.success() && !figures.is_empty(),
        "the IPVS benchmark failed in the VM:\n{log}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for l in figures {
        println!("{l}");
    }
}

#[tokio::main]
async fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let n = if quick { 1_000 } else { 10_000 };
    if std::env::args().any(|a| a == "--in-vm") {
        ipvs_figures(n, quick);
        return;
    }
    let ns = format!("capstan-bench-proxy-{}", std::process::id());
    let ok = Command::new("ip").args(["netns", "add", &ns]).status().is_ok_and(|s| s.success());
    assert!(
        ok,
        "creating a network namespace failed: the proxy benchmark needs root and iproute2"
    );
    let nft = Nft::new(Some(ns.clone()), "capstan-proxy");
    let settings = NftSettings::new(
        "capstan-proxy",
        capstan_api::cidr::Cidr::fixed(Ipv4Addr::new(10, 96, 0, 0), 12),
        capstan_api::cidr::Cidr::fixed(Ipv4Addr::new(10, 240, 0, 0), 12),
    );

    let t = Instant::now();
    let before = services(n, Change::None);
    let mut renderer = nft::Renderer::default();
    renderer.render(&before, &settings);
    let full = renderer.full_update(&settings, &nft::Listing::default());
    let render = t.elapsed();
    let t = Instant::now();
    nft.apply_update(&full).await.expect("the initial sync");
    let initial = t.elapsed();

    // One endpoint change at a time, undone by the next round, each applied on its own: an
    // endpoint moving to a new address (elements only), and one leaving and coming back (the
    // service also switches pick chain).
    let mut figures = Vec::new();
    for (label, change) in [
        ("an endpoint moves", Change::Moved as fn(u32) -> Change),
        ("an endpoint leaves or comes back", Change::Removed),
    ] {
        let mut times = Vec::new();
        let mut applying = Vec::new();
        let mut ops = Vec::new();
        for round in 0..20u32 {
            let which = (round * 7919) % n;
            let wanted = services(n, if round % 2 == 0 { change(which) } else { Change::None });
            let t = Instant::now();
            let update = renderer.render(&wanted, &settings);
            let kernel = Instant::now();
            nft.apply_update(&update).await.expect("an endpoint change");
            applying.push(kernel.elapsed());
            times.push(t.elapsed());
            ops.push(update.elements.len() + update.pre.lines().count() + update.post.lines().count());
        }
        times.sort();
        applying.sort();
        ops.sort_unstable();
        figures.push(format!(
            "  one change, {label} (render, diff, apply): p50 {}  max {}  (applying alone: p50 {}; {} element ops and nft lines)",
            ms(times[times.len() / 2]),
            ms(times[times.len() - 1]),
            ms(applying[applying.len() / 2]),
            ops[ops.len() / 2]
        ));
    }
    let _ = Command::new("ip").args(["netns", "del", &ns]).status();

    println!(
        "Proxy sync benchmark (nftables, this host's kernel){}: {n} services x 10 endpoints",
        if quick { " (quick)" } else { "" }
    );
    println!(
        "  initial sync: {} ({} to render {} rule lines and {} elements; applying: {})",
        ms(render + initial),
        ms(render),
        full.pre.lines().count() + full.post.lines().count(),
        full.elements.len(),
        ms(initial)
    );
    for f in figures {
        println!("{f}");
    }
    ipvs_in_vm(quick);
}
