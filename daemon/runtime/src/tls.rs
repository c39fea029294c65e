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

/// Which client certificates a server asks for.
#[derive(Clone, Copy, Debug)]
pub enum Clients<'a> {
    /// None.
    Anonymous,
    /// One signed by this CA, always (the node agent's endpoint).
    Required(&'a str),
    /// One signed by this CA, when the client has one (the API server: people hold certificates,
    /// programs bearer tokens).
    Optional(&'a str),
}

/// A server presenting `cert_pem` with `key_pem`, checking client certificates as `clients` says.
pub fn server(cert_pem: &str, key_pem: &str, clients: Clients<'_>) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(err)?;
    let builder = match clients {
        Clients::Required(ca) | Clients::Optional(ca) => {
            let mut verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider());
            if matches!(clients, Clients::Optional(_)) {
                verifier = verifier.allow_unauthenticated();
            }
            builder.with_client_cert_verifier(verifier.build().map_err(err)?)
        }
        Clients::Anonymous => builder.with_no_client_auth(),
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

/// The common name of the client certificate the API server calls node agents with; node
/// agents accept no other (people hold certificates from the same CA).
pub const KUBELET_CLIENT: &str = "kube-apiserver-kubelet-client";

/// Who a certificate names: its subject's common name and organisations (Kubernetes reads them
/// as the user and groups), and when it became valid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertSubject {
    pub common_name: String,
    pub organizations: Vec<String>,
    /// Seconds since the epoch.
    pub not_before: i64,
    pub not_after: i64,
}

/// Reads the subject of a DER certificate (already verified by the TLS handshake).
pub fn cert_subject(der: &[u8]) -> Option<CertSubject> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let text = |attrs: Vec<&x509_parser::x509::AttributeTypeAndValue<'_>>| -> Vec<String> {
        attrs.into_iter().filter_map(|a| a.as_str().ok()).map(str::to_owned).collect()
    };
    Some(CertSubject {
        common_name: text(subject.iter_common_name().collect()).into_iter().next()?,
        organizations: text(subject.iter_organization().collect()),
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
    })
}
