//! The kubeconfigs Capstan writes for its users: the API server's https URL, the cluster CA
//! inline, and a bearer token (the daemon's admin and read-only ones) or a client certificate
//! (a person's, from `capstan user add`), so that `kubectl --kubeconfig FILE` works at once.

use std::path::Path;

use base64::Engine;

use crate::DaemonError;

/// Writes a kubeconfig with one cluster, user and context, readable by its owner only.
pub fn write(path: &Path, server: &str, ca_pem: &str, token: &str, user: &str) -> Result<(), DaemonError> {
    write_with(path, server, ca_pem, user, &format!("token: {token}"))
}

/// Writes a kubeconfig whose user presents a client certificate.
pub fn write_certificate(path: &Path, server: &str, ca_pem: &str, user: &str, cert_pem: &str, key_pem: &str) -> Result<(), DaemonError> {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let credential = format!("client-certificate-data: {}\n    client-key-data: {}", b64(cert_pem), b64(key_pem));
    write_with(path, server, ca_pem, user, &credential)
}

fn write_with(path: &Path, server: &str, ca_pem: &str, user: &str, credential: &str) -> Result<(), DaemonError> {
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
    {credential}
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
