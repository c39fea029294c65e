//! The kubeconfig the daemon writes for its users: the API server's https URL, the cluster CA
//! inline, and a bearer token, so that `kubectl --kubeconfig DATA_DIR/kubeconfig` works at once.

use std::path::Path;

use base64::Engine;

use crate::DaemonError;

/// Writes a kubeconfig with one cluster, user and context, readable by its owner only.
pub fn write(path: &Path, server: &str, ca_pem: &str, token: &str, user: &str) -> Result<(), DaemonError> {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let text = format!(
        "apiVersion: v1
kind: Config
clusters:
- name: capstan
  cluster:
    server: {server}
    certificate-authority-data: {ca}
users:
- name: {user}
  user:
    token: {token}
contexts:
- name: capstan
  context:
    cluster: capstan
    user: {user}
current-context: capstan
"
    );
    crate::pki::write_private(path, &text).map_err(|e| DaemonError::Write {
        path: path.display().to_string(),
        source: std::io::Error::other(e.to_string()),
    })
}
