//! Docker's FORWARD chain drops traffic between its networks; the pod range must cross it (pod to
//! pod across node networks, and replies of DNAT'ed service traffic). We open it in `DOCKER-USER`,
//! Docker's chain for users, for the pod range only, and close it again on cleanup.

use tokio::process::Command;

use crate::ProxyError;

/// Marks our rules so that cleanup removes exactly them.
const COMMENT: &str = "capstan-proxy";

fn rules(pod_cidr: &str) -> [Vec<String>; 2] {
    let rule = |dir: &str| {
        [dir, pod_cidr, "-m", "comment", "--comment", COMMENT, "-j", "ACCEPT"]
            .map(str::to_owned)
            .to_vec()
    };
    [rule("-s"), rule("-d")]
}

async fn iptables(netns: Option<&str>, args: &[String]) -> Result<bool, ProxyError> {
    let mut c = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "iptables"]);
            c
        }
        None => Command::new("iptables"),
    };
    let out = c.arg("-w").args(args).output().await.map_err(|source| ProxyError::Spawn {
        program: "iptables",
        source,
    })?;
    Ok(out.status.success())
}

async fn has_docker_user(netns: Option<&str>) -> Result<bool, ProxyError> {
    iptables(netns, &["-S".into(), "DOCKER-USER".into()]).await
}

/// Accepts the pod range in `DOCKER-USER` (where the chain exists: Docker makes it).
pub async fn open(netns: Option<&str>, pod_cidr: &str) -> Result<(), ProxyError> {
    if !has_docker_user(netns).await? {
        tracing::debug!("no DOCKER-USER chain: nothing to open");
        return Ok(());
    }
    for rule in rules(pod_cidr) {
        let check: Vec<String> = ["-C", "DOCKER-USER"].iter().map(|s| s.to_string()).chain(rule.clone()).collect();
        if iptables(netns, &check).await? {
            continue;
        }
        let insert: Vec<String> = ["-I", "DOCKER-USER", "1"].iter().map(|s| s.to_string()).chain(rule).collect();
        if !iptables(netns, &insert).await? {
            return Err(ProxyError::Iptables {
                args: insert.join(" "),
                stderr: "the rule could not be inserted".into(),
            });
        }
    }
    Ok(())
}

/// Removes what [`open`] added.
pub async fn close(netns: Option<&str>, pod_cidr: &str) -> Result<(), ProxyError> {
    if !has_docker_user(netns).await? {
        return Ok(());
    }
    for rule in rules(pod_cidr) {
        let delete: Vec<String> = ["-D", "DOCKER-USER"].iter().map(|s| s.to_string()).chain(rule).collect();
        while iptables(netns, &delete).await? {}
    }
    Ok(())
}
