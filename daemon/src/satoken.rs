//! Service-account tokens: ES256 JWTs signed with the cluster's service-account key (kept in the
//! data dir beside the CA), bound to a pod and expiring, issued through TokenRequest and
//! accepted by the API server as `system:serviceaccount:<namespace>:<name>`.
//!
//! The claims are those Kubernetes writes, so client libraries that read them work unchanged.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use rcgen::KeyPair;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _, UnparsedPublicKey};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::pki::{PkiError, write_private};

/// The issuer, and the audience a token must name to be accepted here (kube-apiserver's default).
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// The shortest lifetime a TokenRequest may ask for (Kubernetes: 10 minutes).
pub const MIN_SECONDS: i64 = 600;
/// The lifetime when none is asked for.
pub const DEFAULT_SECONDS: i64 = 3600;
/// Clock skew allowed on `nbf`/`exp`.
const LEEWAY: i64 = 60;

/// What a token says about its holder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claims {
    pub namespace: String,
    pub service_account: String,
    pub service_account_uid: String,
    /// The pod it is bound to: (name, uid).
    pub pod: Option<(String, String)>,
    pub audiences: Vec<String>,
    pub issued_at: i64,
    pub expires_at: i64,
}

pub struct Signer {
    key: EcdsaKeyPair,
    kid: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer(kid {})", self.kid)
    }
}

impl Signer {
    /// Loads `dir/sa.key`, creating it (P-256) on first start.
    pub fn load_or_create(dir: &Path) -> Result<Signer, PkiError> {
        let path = dir.join("sa.key");
        let pem_err = || PkiError::Pem {
            path: path.display().to_string(),
        };
        let pair = if path.exists() {
            let text = std::fs::read_to_string(&path).map_err(|source| PkiError::Io {
                path: path.display().to_string(),
                source,
            })?;
            KeyPair::from_pem(&text).map_err(|_| pem_err())?
        } else {
            let pair = KeyPair::generate()?;
            write_private(&path, &pair.serialize_pem())?;
            tracing::info!(key = %path.display(), "created the service-account signing key");
            pair
        };
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &pair.serialize_der(), &SystemRandom::new())
            .map_err(|_| pem_err())?;
        let kid = B64.encode(Sha256::digest(key.public_key().as_ref()));
        Ok(Signer { key, kid })
    }

    /// A signed token carrying `claims`.
    pub fn issue(&self, c: &Claims) -> Result<String, PkiError> {
        let header = json!({"alg": "ES256", "kid": self.kid, "typ": "JWT"});
        let mut k8s = json!({
            "namespace": c.namespace,
            "serviceaccount": {"name": c.service_account, "uid": c.service_account_uid},
        });
        if let Some((name, uid)) = &c.pod {
            k8s["pod"] = json!({"name": name, "uid": uid});
        }
        let payload = json!({
            "aud": c.audiences,
            "exp": c.expires_at,
            "iat": c.issued_at,
            "nbf": c.issued_at,
            "iss": ISSUER,
            "sub": format!("system:serviceaccount:{}:{}", c.namespace, c.service_account),
            "kubernetes.io": k8s,
        });
        let signed = format!("{}.{}", B64.encode(header.to_string()), B64.encode(payload.to_string()));
        let sig = self
            .key
            .sign(&SystemRandom::new(), signed.as_bytes())
            .map_err(|_| PkiError::Tls("signing a service-account token failed".into()))?;
        Ok(format!("{signed}.{}", B64.encode(sig.as_ref())))
    }

    /// The claims of `token` if this key signed it, it is current at `now` (Unix seconds) and
    /// it is meant for this API server; None otherwise.
    pub fn verify(&self, token: &str, now: i64) -> Option<Claims> {
        let mut parts = token.split('.');
        let (h, p, s) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let header: Value = serde_json::from_slice(&B64.decode(h).ok()?).ok()?;
        if header["alg"] != "ES256" {
            return None;
        }
        let public = UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, self.key.public_key().as_ref());
        public.verify(format!("{h}.{p}").as_bytes(), &B64.decode(s).ok()?).ok()?;
        let payload: Value = serde_json::from_slice(&B64.decode(p).ok()?).ok()?;
        let (iat, exp) = (payload["iat"].as_i64()?, payload["exp"].as_i64()?);
        let nbf = payload["nbf"].as_i64().unwrap_or(iat);
        if payload["iss"] != ISSUER || now > exp + LEEWAY || now + LEEWAY < nbf {
            return None;
        }
        let audiences: Vec<String> = match &payload["aud"] {
            Value::String(a) => vec![a.clone()],
            Value::Array(a) => a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect(),
            _ => Vec::new(),
        };
        if !audiences.iter().any(|a| a == ISSUER) {
            return None;
        }
        let k = &payload["kubernetes.io"];
        let text = |v: &Value| v.as_str().map(str::to_owned);
        Some(Claims {
            namespace: text(&k["namespace"])?,
            service_account: text(&k["serviceaccount"]["name"])?,
            service_account_uid: text(&k["serviceaccount"]["uid"]).unwrap_or_default(),
            pod: k.get("pod").and_then(|pod| Some((text(&pod["name"])?, text(&pod["uid"])?))),
            audiences,
            issued_at: iat,
            expires_at: exp,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(now: i64) -> Claims {
        Claims {
            namespace: "shop".into(),
            service_account: "default".into(),
            service_account_uid: "sa-uid".into(),
            pod: Some(("web".into(), "pod-uid".into())),
            audiences: vec![ISSUER.into()],
            issued_at: now,
            expires_at: now + DEFAULT_SECONDS,
        }
    }

    #[test]
    fn tokens_verify_until_they_expire_and_only_with_our_key() {
        let dir = tempfile::tempdir().unwrap();
        let signer = Signer::load_or_create(dir.path()).unwrap();
        let now = 1_800_000_000;
        let token = signer.issue(&claims(now)).unwrap();
        assert_eq!(signer.verify(&token, now + 10), Some(claims(now)));
        // The key is kept: a restarted API server accepts the tokens it issued before.
        let again = Signer::load_or_create(dir.path()).unwrap();
        assert_eq!(again.verify(&token, now + 10), Some(claims(now)));
        assert_eq!(signer.verify(&token, now + DEFAULT_SECONDS + LEEWAY + 1), None, "expired");
        assert_eq!(signer.verify(&token, now - LEEWAY - 1), None, "not yet valid");
        let other = Signer::load_or_create(tempfile::tempdir().unwrap().path()).unwrap();
        assert_eq!(other.verify(&token, now + 10), None, "another cluster's key");
        // A changed claim breaks the signature.
        let parts: Vec<&str> = token.split('.').collect();
        let mut payload: Value = serde_json::from_slice(&B64.decode(parts[1]).unwrap()).unwrap();
        payload["kubernetes.io"]["namespace"] = json!("kube-system");
        let forged = format!("{}.{}.{}", parts[0], B64.encode(payload.to_string()), parts[2]);
        assert_eq!(signer.verify(&forged, now + 10), None);
        // Another audience is not for us.
        let elsewhere = signer
            .issue(&Claims {
                audiences: vec!["vault".into()],
                ..claims(now)
            })
            .unwrap();
        assert_eq!(signer.verify(&elsewhere, now + 10), None);
        assert_eq!(signer.verify("not.a.token", now), None);
    }

    #[test]
    fn claims_are_the_ones_kubernetes_writes() {
        let signer = Signer::load_or_create(tempfile::tempdir().unwrap().path()).unwrap();
        let token = signer.issue(&claims(1_800_000_000)).unwrap();
        let payload: Value = serde_json::from_slice(&B64.decode(token.split('.').nth(1).unwrap()).unwrap()).unwrap();
        assert_eq!(payload["sub"], "system:serviceaccount:shop:default");
        assert_eq!(payload["kubernetes.io"]["pod"], json!({"name": "web", "uid": "pod-uid"}));
        assert_eq!(payload["exp"].as_i64().unwrap() - payload["iat"].as_i64().unwrap(), DEFAULT_SECONDS);
        let header: Value = serde_json::from_slice(&B64.decode(token.split('.').next().unwrap()).unwrap()).unwrap();
        assert_eq!(header["alg"], "ES256");
    }
}
