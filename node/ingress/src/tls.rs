//! Key pairs for the HTTPS listener: a `kubernetes.io/tls` Secret's `tls.crt` and `tls.key`
//! checked and turned into what rustls serves, and the self-signed default certificate answered
//! to clients whose server name no Ingress covers.

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

/// Why a key pair cannot be served.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TlsError {
    #[error("tls.crt holds no PEM certificate")]
    NoCertificate,
    #[error("tls.key holds no PEM private key")]
    NoKey,
    #[error("tls.key: {0}")]
    BadKey(String),
    #[error("tls.key does not belong to the certificate in tls.crt")]
    Mismatch,
}

/// The pair a TLS Secret holds, checked: the certificate chain parses, the key is one rustls can
/// sign with, and it is the certificate's key.
pub fn certified_key(cert_pem: &str, key_pem: &str) -> Result<CertifiedKey, TlsError> {
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut cert_pem.as_bytes()).filter_map(Result::ok).collect();
    if certs.is_empty() {
        return Err(TlsError::NoCertificate);
    }
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut key_pem.as_bytes())
        .ok()
        .flatten()
        .ok_or(TlsError::NoKey)?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| TlsError::BadKey(e.to_string()))?;
    let pair = CertifiedKey::new(certs, signer);
    pair.keys_match().map_err(|_| TlsError::Mismatch)?;
    Ok(pair)
}

/// A self-signed certificate for clients that name no host an Ingress covers (as ingress-nginx
/// answers with its "fake certificate").
pub fn default_certificate() -> CertifiedKey {
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["capstan-ingress.invalid".to_owned()]).expect("rcgen makes a self-signed certificate");
    certified_key(&cert.pem(), &signing_key.serialize_pem()).expect("a fresh self-signed pair is valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pair_must_match() {
        let a = rcgen::generate_simple_self_signed(vec!["a.example".to_owned()]).unwrap();
        let b = rcgen::generate_simple_self_signed(vec!["b.example".to_owned()]).unwrap();
        assert!(certified_key(&a.cert.pem(), &a.signing_key.serialize_pem()).is_ok());
        assert_eq!(
            certified_key(&a.cert.pem(), &b.signing_key.serialize_pem()).err(),
            Some(TlsError::Mismatch)
        );
        assert_eq!(
            certified_key("junk", &a.signing_key.serialize_pem()).err(),
            Some(TlsError::NoCertificate)
        );
        assert_eq!(certified_key(&a.cert.pem(), "junk").err(), Some(TlsError::NoKey));
    }
}
