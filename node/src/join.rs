//! Joining the cluster (k3s style): read `<ca-hash>::<secret>` from the token file, fetch the
//! cluster CA, refuse it unless its SHA-256 matches the pinned hash, then present the secret and
//! receive this node's own credential and a serving certificate for its HTTPS endpoint.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::NodeError;
use crate::client::{kube_client, pem_certs};

/// What a joined node holds.
#[derive(Clone)]
pub struct Credentials {
    pub token: String,
    pub ca_pem: String,
    pub serving_cert: String,
    pub serving_key: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the token or the key.
        f.write_str("Credentials(..)")
    }
}

/// Reads a token file: `<sha256 of the CA>::<secret>`.
pub fn read_token(path: &Path) -> Result<(String, String), NodeError> {
    let text = std::fs::read_to_string(path).map_err(|source| NodeError::TokenFile {
        path: path.display().to_string(),
        source,
    })?;
    let (hash, secret) = text.trim().split_once("::").ok_or_else(|| NodeError::TokenFormat {
        path: path.display().to_string(),
    })?;
    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) || secret.is_empty() {
        return Err(NodeError::TokenFormat {
            path: path.display().to_string(),
        });
    }
    Ok((hash.to_ascii_lowercase(), secret.to_owned()))
}

/// SHA-256 of the first certificate in `pem`, lower-case hex.
pub fn ca_hash(pem: &str) -> Option<String> {
    pem_certs(pem).first().map(|der| hex::encode(Sha256::digest(der)))
}

/// Where a joined node keeps its own credential, so that it re-joins as itself.
fn credential_path(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join("credential")
}

/// Joins `server` (one URL, or several control-plane replicas' separated by commas) as
/// `node`, retrying while no server can be reached (it may be starting) for up to `patience`. A node that joined before presents its own credential (kept in
/// `data_dir`, 0600); the join secret is for the first time, or after `capstan node forget`.
pub async fn join(server: &str, token_file: &Path, node: &str, data_dir: &Path, patience: Duration) -> Result<Credentials, NodeError> {
    let (pinned, secret) = read_token(token_file)?;
    let saved = std::fs::read_to_string(credential_path(data_dir))
        .ok()
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty());
    let deadline = tokio::time::Instant::now() + patience;
    let mut own = saved;
    // Several control-plane replicas: an unreachable one sends the agent to the next.
    let servers: Vec<&str> = crate::client::servers(server).collect();
    let mut attempt = 0;
    loop {
        let presented = own.as_deref().unwrap_or(&secret);
        let server = servers[attempt % servers.len()];
        attempt += 1;
        match try_join(server, &pinned, presented, node).await {
            Err(NodeError::Unreachable { .. }) if attempt % servers.len() != 0 => {}
            Err(NodeError::Unreachable { .. }) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(500)).await
            }
            // The saved credential was revoked (the node was forgotten): join anew.
            Err(NodeError::Join { .. }) if own.is_some() => own = None,
            Ok(creds) => {
                save_credential(data_dir, &creds.token)?;
                return Ok(creds);
            }
            other => return other,
        }
    }
}

fn save_credential(data_dir: &Path, token: &str) -> Result<(), NodeError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = credential_path(data_dir);
    let write_err = |source| NodeError::Write {
        path: path.display().to_string(),
        source,
    };
    std::fs::create_dir_all(data_dir).map_err(write_err)?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .map_err(write_err)?;
    f.write_all(token.as_bytes()).map_err(write_err)
}

async fn try_join(server: &str, pinned: &str, secret: &str, node: &str) -> Result<Credentials, NodeError> {
    let unreachable = |message: String| NodeError::Unreachable {
        server: server.to_owned(),
        message,
    };
    let anonymous = kube_client(server, None, None).map_err(unreachable)?;
    let ca_pem = anonymous
        .request_text(http::Request::get("/capstan/v1/ca").body(Vec::new()).expect("valid request"))
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let got = ca_hash(&ca_pem).unwrap_or_default();
    if got != pinned {
        return Err(NodeError::CaMismatch {
            server: server.to_owned(),
            got,
            pinned: pinned.to_owned(),
        });
    }
    let joiner = kube_client(server, Some(&ca_pem), Some(secret)).map_err(unreachable)?;
    let body = serde_json::to_vec(&json!({"nodeName": node})).unwrap_or_default();
    let req = http::Request::post("/capstan/v1/join")
        .header("content-type", "application/json")
        .body(body)
        .expect("valid request");
    let answer: Value = joiner.request(req).await.map_err(|e| match e {
        kube::Error::Api(s) => NodeError::Join {
            server: server.to_owned(),
            node: node.to_owned(),
            message: s.message,
        },
        other => unreachable(other.to_string()),
    })?;
    let field = |k: &str| {
        answer[k].as_str().map(str::to_owned).ok_or_else(|| NodeError::Join {
            server: server.to_owned(),
            node: node.to_owned(),
            message: format!("the answer has no {k}"),
        })
    };
    Ok(Credentials {
        token: field("token")?,
        ca_pem,
        serving_cert: field("servingCert")?,
        serving_key: field("servingKey")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_files_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t");
        std::fs::write(&p, format!("{}::s3cret\n", "ab".repeat(32))).unwrap();
        assert_eq!(read_token(&p).unwrap(), ("ab".repeat(32), "s3cret".to_owned()));
        std::fs::write(&p, "nonsense").unwrap();
        assert!(matches!(read_token(&p), Err(NodeError::TokenFormat { .. })));
        assert!(matches!(read_token(&dir.path().join("missing")), Err(NodeError::TokenFile { .. })));
    }
}
