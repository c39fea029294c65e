//! NAT for pod traffic leaving the cluster: a table of our own that masquerades what pods send
//! outside the cluster's pod range and never what they send to another pod (the receiver sees
//! the sender's address). The Engine's own masquerading is off for the node's network then.

use capstan_api::cidr::Cidr;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// Our table (family `ip`).
pub const TABLE: &str = "capstan-podnet";

/// The table, replaced whole in one transaction.
pub fn script(cluster: Cidr) -> String {
    format!(
        "add table ip {TABLE}\n\
         delete table ip {TABLE}\n\
         table ip {TABLE} {{\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tip saddr {cluster} ip daddr {cluster} return\n\
         \t\tip saddr {cluster} ip daddr != 224.0.0.0/4 masquerade\n\
         \t}}\n\
         }}\n"
    )
}

/// Writes the table (the same for every agent of a host, so agents sharing one may all write it).
pub async fn ensure(cluster: Cidr) -> Result<(), String> {
    run(&script(cluster)).await
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
        let s = script("10.244.0.0/16".parse().unwrap());
        let ret = s.find("ip saddr 10.244.0.0/16 ip daddr 10.244.0.0/16 return").unwrap();
        let masq = s.find("masquerade").unwrap();
        assert!(ret < masq, "{s}");
    }
}
