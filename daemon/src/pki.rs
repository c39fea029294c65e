//! The cluster's certificate authority: generated at first start and kept in `DATA_DIR/pki`, it
//! signs the API server's serving certificate (with the SANs DESIGN.md fixes), node serving
//! certificates, and client certificates. Its SHA-256 is what a node's join token pins.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("generating a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{path}: not a valid PEM certificate or key")]
    Pem { path: String },
    #[error("TLS configuration: {0}")]
    Tls(String),
    #[error("{0}")]
    Names(String),
}

/// A certificate and its private key, PEM-encoded.
#[derive(Clone, Debug)]
pub struct CertKey {
    pub cert_pem: String,
    pub key_pem: String,
}

/// The cluster CA, able to sign.
pub struct Ca {
    pub cert_pem: String,
    pub cert_der: Vec<u8>,
    key: KeyPair,
    dir: PathBuf,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ca({})", self.hash())
    }
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "capstan-ca");
    dn.push(DnType::OrganizationName, "Capstan");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2124, 1, 1);
    params
}

fn read(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(|source| PkiError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// Writes a file readable by its owner only (keys, tokens).
pub fn write_private(path: &Path, contents: &str) -> Result<(), PkiError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| PkiError::Io {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(contents.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

fn pem_to_der(pem: &str, path: &Path) -> Result<Vec<u8>, PkiError> {
    capstan_runtime::tls::certs(pem)
        .first()
        .map(|c| c.to_vec())
        .ok_or_else(|| PkiError::Pem {
            path: path.display().to_string(),
        })
}

/// SHA-256 of a certificate's DER bytes, lower-case hex.
pub fn cert_hash(cert_pem: &str) -> Option<String> {
    let der = pem_to_der(cert_pem, Path::new("certificate")).ok()?;
    Some(hex::encode(Sha256::digest(&der)))
}

impl Ca {
    /// Loads the CA from `dir`, creating it on first start.
    pub fn load_or_create(dir: &Path) -> Result<Ca, PkiError> {
        let (cert_path, key_path) = (dir.join("ca.crt"), dir.join("ca.key"));
        if cert_path.exists() && key_path.exists() {
            let cert_pem = read(&cert_path)?;
            let key = KeyPair::from_pem(&read(&key_path)?).map_err(|_| PkiError::Pem {
                path: key_path.display().to_string(),
            })?;
            let cert_der = pem_to_der(&cert_pem, &cert_path)?;
            return Ok(Ca {
                cert_pem,
                cert_der,
                key,
                dir: dir.to_path_buf(),
            });
        }
        let key = KeyPair::generate()?;
        let cert = ca_params().self_signed(&key)?;
        write_private(&key_path, &key.serialize_pem())?;
        write_private(&cert_path, &cert.pem())?;
        tracing::info!(pki.dir = %dir.display(), "created the cluster CA");
        Ok(Ca {
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            key,
            dir: dir.to_path_buf(),
        })
    }

    /// SHA-256 of the CA certificate, as the node join token pins it.
    pub fn hash(&self) -> String {
        hex::encode(Sha256::digest(&self.cert_der))
    }

    pub fn cert_path(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// Signs a certificate for `common_name` with the given DNS names and IP addresses;
    /// `server` and `client` select the extended key usages.
    pub fn issue(
        &self,
        common_name: &str,
        organization: Option<&str>,
        dns: &[String],
        ips: &[IpAddr],
        server: bool,
        client: bool,
    ) -> Result<CertKey, PkiError> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        if let Some(o) = organization {
            dn.push(DnType::OrganizationName, o);
        }
        params.distinguished_name = dn;
        for name in dns {
            params.subject_alt_names.push(SanType::DnsName(name.clone().try_into()?));
        }
        for ip in ips {
            params.subject_alt_names.push(SanType::IpAddress(*ip));
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        if server {
            params.extended_key_usages.push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        if client {
            params.extended_key_usages.push(ExtendedKeyUsagePurpose::ClientAuth);
        }
        params.not_before = rcgen::date_time_ymd(2024, 1, 1);
        params.not_after = rcgen::date_time_ymd(2099, 1, 1);
        self.sign(&params)
    }

    /// A new key and its certificate of `params`, signed by the CA.
    fn sign(&self, params: &CertificateParams) -> Result<CertKey, PkiError> {
        let key = KeyPair::generate()?;
        let issuer = Issuer::new(ca_params(), &self.key);
        let cert = params.signed_by(&key, &issuer)?;
        Ok(CertKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A person's client certificate (`capstan user add`): CN = the user, O = the groups (at
    /// most two: rcgen writes one Organization attribute of each of its two forms), valid from
    /// now for `lifetime_seconds`.
    pub fn issue_user(&self, user: &str, groups: &[String], lifetime_seconds: i64) -> Result<CertKey, PkiError> {
        if groups.len() > 2 {
            return Err(PkiError::Names(format!(
                "a certificate carries at most two groups, not {}: bind the others through RBAC groups you already give",
                groups.len()
            )));
        }
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, user);
        if let Some(g) = groups.first() {
            dn.push(DnType::OrganizationName, g.as_str());
        }
        if let Some(g) = groups.get(1) {
            dn.push(DnType::CustomDnType(vec![2, 5, 4, 10]), g.as_str());
        }
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages.push(ExtendedKeyUsagePurpose::ClientAuth);
        let now = jiff::Timestamp::now().as_second();
        let at = |s: i64| time::OffsetDateTime::from_unix_timestamp(s).map_err(|e| PkiError::Names(e.to_string()));
        params.not_before = at(now)?;
        params.not_after = at(now + lifetime_seconds.max(1))?;
        self.sign(&params)
    }

    /// The API server's serving certificate, reissued when its names change; `extra` are more
    /// names or addresses clients reach it at (a load balancer in front of the replicas).
    pub fn apiserver_cert(&self, advertise: IpAddr, cluster_ip: IpAddr, extra: &[String]) -> Result<CertKey, PkiError> {
        let mut dns: Vec<String> = [
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
            "localhost",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut ips = vec![IpAddr::from([127, 0, 0, 1]), cluster_ip];
        if !ips.contains(&advertise) {
            ips.push(advertise);
        }
        for name in extra {
            match name.parse::<IpAddr>() {
                Ok(ip) if !ips.contains(&ip) => ips.push(ip),
                Ok(_) => {}
                Err(_) if !is_dns_name(name) => {
                    return Err(PkiError::Names(format!("--tls-san {name:?}: neither an IP address nor a DNS name")));
                }
                Err(_) if !dns.contains(name) => dns.push(name.clone()),
                Err(_) => {}
            }
        }
        let (cert_path, key_path, names_path) = (
            self.dir.join("apiserver.crt"),
            self.dir.join("apiserver.key"),
            self.dir.join("apiserver.names"),
        );
        let names = format!("{dns:?} {ips:?}");
        if cert_path.exists() && key_path.exists() && read(&names_path).ok().as_deref() == Some(names.as_str()) {
            return Ok(CertKey {
                cert_pem: read(&cert_path)?,
                key_pem: read(&key_path)?,
            });
        }
        let ck = self.issue("kube-apiserver", None, &dns, &ips, true, false)?;
        write_private(&key_path, &ck.key_pem)?;
        write_private(&cert_path, &ck.cert_pem)?;
        write_private(&names_path, &names)?;
        Ok(ck)
    }
}

/// A DNS name a certificate may carry: an RFC 1123 subdomain, its first label possibly `*`.
fn is_dns_name(name: &str) -> bool {
    capstan_api::names::dns1123_subdomain(name.strip_prefix("*.").unwrap_or(name)).is_none()
}

/// The API server's rustls configuration: its certificate and key; clients may present a
/// certificate `client_ca` signed (people's, from `capstan user add`).
pub fn server_config(ck: &CertKey, client_ca: &str) -> Result<Arc<rustls::ServerConfig>, PkiError> {
    capstan_runtime::tls::server(&ck.cert_pem, &ck.key_pem, capstan_runtime::tls::Clients::Optional(client_ca))
        .map_err(|e| PkiError::Tls(e.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ca_persists_and_signs_serving_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(dir.path()).unwrap();
        let again = Ca::load_or_create(dir.path()).unwrap();
        assert_eq!(ca.hash(), again.hash());
        assert_eq!(cert_hash(&ca.cert_pem).unwrap(), ca.hash());
        let ck = again
            .apiserver_cert("10.0.0.5".parse().unwrap(), "10.96.0.1".parse().unwrap(), &[])
            .unwrap();
        assert!(ck.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        server_config(&ck, &ca.cert_pem).unwrap();
        // Same names: the certificate on disk is reused.
        let same = ca
            .apiserver_cert("10.0.0.5".parse().unwrap(), "10.96.0.1".parse().unwrap(), &[])
            .unwrap();
        assert_eq!(same.cert_pem, ck.cert_pem);
        // Another name (a load balancer's): a new certificate.
        let more = ca
            .apiserver_cert(
                "10.0.0.5".parse().unwrap(),
                "10.96.0.1".parse().unwrap(),
                &["api.example".into(), "192.0.2.7".into()],
            )
            .unwrap();
        assert_ne!(more.cert_pem, ck.cert_pem);
        let bad = ca.apiserver_cert("10.0.0.5".parse().unwrap(), "10.96.0.1".parse().unwrap(), &["api example".into()]);
        assert!(bad.is_err_and(|e| e.to_string().contains(r#"--tls-san "api example""#)));
        assert!(is_dns_name("*.api.example") && !is_dns_name("-a.example") && !is_dns_name("a..b"));
    }

    #[test]
    fn a_persons_certificate_names_the_user_and_groups() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(dir.path()).unwrap();
        let groups = ["dev".to_owned(), "ops".to_owned()];
        let ck = ca.issue_user("alice", &groups, 3600).unwrap();
        let der = rustls_pemfile_der(&ck.cert_pem);
        let subject = capstan_runtime::tls::cert_subject(&der).unwrap();
        assert_eq!(subject.common_name, "alice");
        assert_eq!(subject.organizations, groups);
        assert!(subject.not_after - subject.not_before == 3600);
        assert!(ca.issue_user("bob", &["a".into(), "b".into(), "c".into()], 60).is_err());
    }

    fn rustls_pemfile_der(pem: &str) -> Vec<u8> {
        let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b64).unwrap()
    }
}
