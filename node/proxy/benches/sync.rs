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

fn services(n: u32, changed: Option<u32>) -> Vec<VirtualService> {
    (0..n)
        .map(|i| {
            let vip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + 1 + i);
            let backends = (0..10u32)
                .map(|e| {
                    // The changed service's last endpoint moves to a new address.
                    let bump = if Some(i) == changed && e == 9 { 1 << 20 } else { 0 };
                    (Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 244, 0, 0)) + i * 10 + e + bump), 8080)
                })
                .collect();
            VirtualService {
                frontend: Frontend::ClusterIp(vip, 80),
                protocol: Protocol::Tcp,
                service: format!("bench/svc-{i}:http"),
                affinity: None,
                backends,
            }
        })
        .collect()
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// Inside the VM: the IPVS backend's figures.
fn ipvs_figures(n: u32, quick: bool) {
    use capstan_proxy::ipvs::IpvsBackend;
    let mut backend = IpvsBackend::open("rr", (Ipv4Addr::new(10, 96, 0, 0), 12)).expect("IPVS in the VM");
    let t = Instant::now();
    let done = backend.apply(&services(n, None), false).expect("the initial sync");
    let initial = t.elapsed();
    let mut changes = Vec::new();
    let mut messages = Vec::new();
    for round in 0..20u32 {
        let which = (round * 7919) % n;
        let wanted = services(n, (round % 2 == 0).then_some(which));
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
    let nft = Nft {
        netns: Some(ns.clone()),
        table: "capstan-proxy".into(),
    };
    let settings = NftSettings::new(
        "capstan-proxy",
        (Ipv4Addr::new(10, 96, 0, 0), 12),
        (Ipv4Addr::new(10, 244, 0, 0), 12),
    );

    let t = Instant::now();
    let before = services(n, None);
    let mut renderer = nft::Renderer::default();
    let rs = renderer.render(&before, &settings);
    let script = nft::full_script(&rs, &settings, &nft::Listing::default());
    let render = t.elapsed();
    let t = Instant::now();
    nft.apply(&script).await.expect("the initial sync");
    let initial = t.elapsed();

    // One endpoint change at a time, alternating back and forth, each its own transaction.
    let mut changes = Vec::new();
    let mut nft_times = Vec::new();
    let mut current = rs;
    for round in 0..20u32 {
        let which = (round * 7919) % n;
        let wanted = services(n, (round % 2 == 0).then_some(which));
        let t = Instant::now();
        let next = renderer.render(&wanted, &settings);
        let delta = nft::delta_script(&current, &next, &settings);
        let applying = Instant::now();
        nft.apply(&delta).await.expect("an endpoint change");
        nft_times.push(applying.elapsed());
        changes.push(t.elapsed());
        current = next;
    }
    changes.sort();
    nft_times.sort();
    let _ = Command::new("ip").args(["netns", "del", &ns]).status();

    println!(
        "Proxy sync benchmark (nftables, this host's kernel){}: {n} services x 10 endpoints",
        if quick { " (quick)" } else { "" }
    );
    println!(
        "  initial sync: {} ({} to render {} lines, the rest in nft)",
        ms(render + initial),
        ms(render),
        script.lines().count()
    );
    println!(
        "  one endpoint change (render, diff, transaction): p50 {}  max {}  (the nft transaction alone: p50 {})",
        ms(changes[changes.len() / 2]),
        ms(changes[changes.len() - 1]),
        ms(nft_times[nft_times.len() / 2])
    );
    ipvs_in_vm(quick);
}
