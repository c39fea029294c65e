//! The pod network's own nftables table: NAT for pod traffic leaving the cluster (what pods send
//! outside the cluster's pod range is masqueraded, never what they send to another pod, so the
//! receiver sees the sender's address; the Engine's own masquerading is off for the node's
//! network then), and with VXLAN the tunnel's UDP port closed to every source but the peers, so
//! that no one else can inject frames into the pod network.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use capstan_api::cidr::Cidr;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use super::kernel::PORT;

/// Our table (family `ip`).
pub const TABLE: &str = "capstan-podnet";

/// The set of the peers' underlay addresses, the only sources the VXLAN port takes.
pub const PEERS: &str = "vxlan-peers";

/// The table's chains and rules, rewritten in one transaction; the peer set keeps its elements
/// (a restarted agent does not cut its peers off until its first sync).
pub fn script(cluster: Cidr, vxlan: bool) -> String {
    let mut s = format!(
        "add table ip {TABLE}
         add chain ip {TABLE} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}
         flush chain ip {TABLE} postrouting
         add rule ip {TABLE} postrouting ip saddr {cluster} ip daddr {cluster} return
         add rule ip {TABLE} postrouting ip saddr {cluster} ip daddr != 224.0.0.0/4 masquerade
         add chain ip {TABLE} input {{ type filter hook input priority filter - 10; policy accept; }}
         flush chain ip {TABLE} input
"
    );
    if vxlan {
        let _ = write!(
            s,
            "add set ip {TABLE} {PEERS} {{ type ipv4_addr; }}
             add rule ip {TABLE} input udp dport {PORT} ip saddr != @{PEERS} counter drop
"
        );
    }
    s
}

/// The peer set's new content, in one transaction.
pub fn peers_script(peers: &BTreeSet<Ipv4Addr>) -> String {
    let mut s = format!(
        "add set ip {TABLE} {PEERS} {{ type ipv4_addr; }}
flush set ip {TABLE} {PEERS}
"
    );
    if !peers.is_empty() {
        let list: Vec<String> = peers.iter().map(Ipv4Addr::to_string).collect();
        let _ = writeln!(s, "add element ip {TABLE} {PEERS} {{ {} }}", list.join(", "));
    }
    s
}

/// Writes the table (the same for every agent of a host, so agents sharing one may all write it).
pub async fn ensure(cluster: Cidr, vxlan: bool) -> Result<(), String> {
    run(&script(cluster, vxlan)).await
}

/// Lets VXLAN in from `peers` only.
pub async fn set_peers(peers: &BTreeSet<Ipv4Addr>) -> Result<(), String> {
    run(&peers_script(peers)).await
}

/// Removes the table (`capstan down`).
pub async fn remove() -> Result<(), String> {
    run(&format!("add table ip {TABLE}\ndelete table ip {TABLE}\n")).await
}

async fn run(script: &str) -> Result<(), String> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("running nft: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .await
            .map_err(|e| format!("writing to nft: {e}"))?;
    }
    let out = child.wait_with_output().await.map_err(|e| format!("running nft: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_to_pod_returns_before_the_masquerade() {
        let s = script("10.244.0.0/16".parse().unwrap(), false);
        let ret = s.find("ip saddr 10.244.0.0/16 ip daddr 10.244.0.0/16 return").unwrap();
        let masq = s.find("masquerade").unwrap();
        assert!(ret < masq, "{s}");
        assert!(!s.contains("8472"), "no VXLAN, no guard: {s}");
    }

    #[test]
    fn with_vxlan_only_peers_reach_the_tunnel_port() {
        let s = script("10.244.0.0/16".parse().unwrap(), true);
        assert!(s.contains("udp dport 8472 ip saddr != @vxlan-peers counter drop"), "{s}");
        assert!(!s.contains("flush set"), "a rewrite keeps the peers: {s}");
        let peers = ["10.250.0.12".parse().unwrap(), "10.250.0.13".parse().unwrap()].into();
        assert!(peers_script(&peers).ends_with(
            "flush set ip capstan-podnet vxlan-peers\nadd element ip capstan-podnet vxlan-peers { 10.250.0.12, 10.250.0.13 }\n"
        ));
        assert!(peers_script(&BTreeSet::new()).ends_with("flush set ip capstan-podnet vxlan-peers\n"));
    }
}
