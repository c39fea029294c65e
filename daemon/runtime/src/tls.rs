//! rustls configurations from PEM text, for both binaries: the API server's and the node
//! agent's listeners (the agent's asks for client certificates from the cluster CA) and the API
//! server's client of the agents. One crypto provider (ring), TLS 1.2 and 1.3, ALPN h2 and
//! http/1.1 on the servers.

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// PEM that does not make a TLS configuration.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(pub String);

fn err(e: impl std::fmt::Display) -> TlsError {
    TlsError(e.to_string())
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every certificate of a PEM text, in order (unreadable blocks are skipped).
pub fn certs(pem: &str) -> Vec<CertificateDer<'static>> {
    rustls_pemfile::certs(&mut pem.as_bytes()).filter_map(Result::ok).collect()
}

/// The first private key of a PEM text; `what` names it in the error.
pub fn key(pem: &str, what: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    rustls_pemfile::private_key(&mut pem.as_bytes())
        .ok()
        .flatten()
        .ok_or_else(|| TlsError(format!("the {what} is not a PEM private key")))
}

/// The certificates of `ca_pem` as the only roots of trust.
pub fn roots(ca_pem: &str) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for der in certs(ca_pem) {
        roots.add(der).map_err(err)?;
    }
    Ok(roots)
}

/// A server presenting `cert_pem` with `key_pem`; with `client_ca`, only clients holding a
/// certificate that CA signed are accepted.
pub fn server(cert_pem: &str, key_pem: &str, client_ca: Option<&str>) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(err)?;
    let builder = match client_ca {
        Some(ca) => {
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider())
                .build()
                .map_err(err)?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs(cert_pem), key(key_pem, "serving key")?)
        .map_err(err)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A client trusting only `ca_pem`, presenting `cert_pem` with `key_pem`.
pub fn client(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(err)?
        .with_root_certificates(roots(ca_pem)?)
        .with_client_auth_cert(certs(cert_pem), key(key_pem, "client key")?)
        .map_err(err)?;
    Ok(Arc::new(config))
}
