//! Who is calling: bearer tokens mapped to identities (what each may do is `authorize`). The
//! admin and read-only tokens live in the data directory; node credentials are issued when a
//! node joins (see `join`) and kept, hashed, in the store so that they survive restarts.

mod authorize;
pub mod bootstrap;
mod live;
pub mod rbac;

pub use authorize::{Attributes, Denial, Facts, Verb, authorize, authorize_path};
pub use live::Rbac;
pub use rbac::{Policy, UserInfo};

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

use capstan_store::{Store, Txn};
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::pki::{PkiError, write_private};

/// Store prefix of node credentials: `/capstan/node-tokens/<node>` holds the token's hash.
const NODE_TOKEN_PREFIX: &str = "/capstan/node-tokens/";

/// Store prefix of revoked people: `/capstan/revoked-users/<user>` holds the second of the
/// revocation; certificates of the user that became valid then or earlier are refused.
const REVOKED_PREFIX: &str = "/capstan/revoked-users/";

/// Why a client certificate is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CertificateRefusal {
    #[error("the certificate names the reserved user {0:?}: system: and capstan: names belong to Capstan's own identities")]
    ReservedUser(String),
    #[error("the certificate names the reserved group {0:?}: system: groups are given by Capstan, not by certificates")]
    ReservedGroup(String),
    #[error("the certificates of user {0:?} issued before its revocation are refused: issue a new one with capstan user add")]
    Revoked(String),
}

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Identity {
    /// In `system:masters` (RBAC never restricts it); writes to desired state are still
    /// refused (they go through Git).
    Admin,
    /// In `capstan:viewers`, bound to `view` and `capstan:cluster-view`: reads, not Secrets.
    ReadOnly,
    /// A node agent: reads, and writes its own Node, Lease, pods' status and events.
    Node(String),
    /// A pod's service account: what RBAC grants it.
    ServiceAccount { namespace: String, name: String },
    /// A person, from a client certificate (`capstan user add`): what RBAC grants the name and
    /// groups.
    User { name: String, groups: Vec<String> },
}

impl Identity {
    /// The user name Kubernetes would report.
    pub fn user_name(&self) -> String {
        match self {
            Identity::Admin => "capstan:admin".into(),
            Identity::ReadOnly => "capstan:viewer".into(),
            Identity::Node(n) => format!("system:node:{n}"),
            Identity::ServiceAccount { namespace, name } => {
                format!("system:serviceaccount:{namespace}:{name}")
            }
            Identity::User { name, .. } => name.clone(),
        }
    }

    /// The user and groups RBAC sees, `system:authenticated` included.
    pub fn user_info(&self) -> UserInfo {
        let mut groups: Vec<String> = match self {
            Identity::Admin => vec![rbac::MASTERS.into()],
            Identity::ReadOnly => vec![bootstrap::VIEWERS.into()],
            Identity::Node(_) => vec!["system:nodes".into()],
            Identity::ServiceAccount { namespace, .. } => {
                vec!["system:serviceaccounts".into(), format!("system:serviceaccounts:{namespace}")]
            }
            Identity::User { groups, .. } => groups.clone(),
        };
        groups.push("system:authenticated".into());
        UserInfo {
            name: self.user_name(),
            groups,
        }
    }
}

/// A new random token: 32 bytes, hex.
pub fn new_token() -> String {
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    hex::encode(b)
}

fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Verifies a token that is not one of the stored ones (service-account JWTs).
pub type TokenVerifier = Arc<dyn Fn(&str) -> Option<Identity> + Send + Sync>;

/// Maps token hashes to identities.
pub struct Authenticator {
    tokens: RwLock<HashMap<String, Identity>>,
    join_secret_hash: String,
    store: Arc<dyn Store>,
    /// Verifies service-account tokens (set once the token controller runs).
    service_accounts: RwLock<Option<TokenVerifier>>,
    /// The store revision the credentials were last read at.
    credentials_seen: std::sync::atomic::AtomicU64,
    /// Revoked people: user → second of revocation.
    revoked: RwLock<HashMap<String, i64>>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Authenticator({} tokens)", self.tokens.read().map(|t| t.len()).unwrap_or(0))
    }
}

/// The tokens kept in the data directory.
#[derive(Clone, Debug)]
pub struct LocalTokens {
    pub admin: String,
    pub read_only: String,
    pub join_secret: String,
}

fn load_or_create(path: &Path) -> Result<String, PkiError> {
    match std::fs::read_to_string(path) {
        Ok(t) if !t.trim().is_empty() => Ok(t.trim().to_owned()),
        _ => {
            let t = new_token();
            write_private(path, &t)?;
            Ok(t)
        }
    }
}

impl LocalTokens {
    /// Reads the admin, read-only and join tokens from `dir`, creating them on first start.
    pub fn load_or_create(dir: &Path) -> Result<LocalTokens, PkiError> {
        Ok(LocalTokens {
            admin: load_or_create(&dir.join("admin-token"))?,
            read_only: load_or_create(&dir.join("readonly-token"))?,
            join_secret: load_or_create(&dir.join("join-secret"))?,
        })
    }
}

impl Authenticator {
    pub fn new(local: &LocalTokens, store: Arc<dyn Store>) -> Result<Authenticator, capstan_store::StoreError> {
        let mut tokens = HashMap::new();
        tokens.insert(hash(&local.admin), Identity::Admin);
        tokens.insert(hash(&local.read_only), Identity::ReadOnly);
        let auth = Authenticator {
            tokens: RwLock::new(tokens),
            join_secret_hash: hash(&local.join_secret),
            store,
            service_accounts: RwLock::new(None),
            revoked: RwLock::new(HashMap::new()),
            credentials_seen: std::sync::atomic::AtomicU64::new(0),
        };
        auth.reload_credentials()?;
        Ok(auth)
    }

    /// Reads the nodes' credentials and the revoked people from the store again. Another
    /// control-plane replica may have issued or revoked them.
    fn reload_credentials(&self) -> Result<(), capstan_store::StoreError> {
        let nodes = self.store.range(NODE_TOKEN_PREFIX, None, 0)?;
        let people = self.store.range(REVOKED_PREFIX, None, 0)?;
        let mut tokens = self.tokens.write().unwrap_or_else(|p| p.into_inner());
        tokens.retain(|_, id| !matches!(id, Identity::Node(_)));
        for kv in nodes.kvs {
            let node = kv.key.trim_start_matches(NODE_TOKEN_PREFIX).to_owned();
            tokens.insert(String::from_utf8_lossy(&kv.value).into_owned(), Identity::Node(node));
        }
        let mut revoked = self.revoked.write().unwrap_or_else(|p| p.into_inner());
        revoked.clear();
        for kv in people.kvs {
            let user = kv.key.trim_start_matches(REVOKED_PREFIX).to_owned();
            revoked.insert(user, String::from_utf8_lossy(&kv.value).parse().unwrap_or(i64::MAX));
        }
        self.credentials_seen
            .store(nodes.revision.min(people.revision), std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    /// Takes one change of a credential from the store's watch.
    fn apply_credential(&self, e: &capstan_store::Event) {
        let value = String::from_utf8_lossy(&e.kv.value).into_owned();
        let put = e.kind == capstan_store::EventKind::Put;
        if let Some(node) = e.kv.key.strip_prefix(NODE_TOKEN_PREFIX) {
            let mut tokens = self.tokens.write().unwrap_or_else(|p| p.into_inner());
            // The node's previous credential, and on a delete the last one, stop working.
            tokens.retain(|_, id| *id != Identity::Node(node.to_owned()));
            if put {
                tokens.insert(value, Identity::Node(node.to_owned()));
            }
        } else if let Some(user) = e.kv.key.strip_prefix(REVOKED_PREFIX) {
            let mut revoked = self.revoked.write().unwrap_or_else(|p| p.into_inner());
            if put {
                revoked.insert(user.to_owned(), value.parse().unwrap_or(i64::MAX));
            } else {
                revoked.remove(user);
            }
        }
        self.credentials_seen.fetch_max(e.revision(), std::sync::atomic::Ordering::SeqCst);
    }

    /// Follows credentials issued and revoked through any replica, until `stop`.
    pub async fn follow_credentials(self: Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        // Read everything again now and then, and whenever a watch broke.
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(30));
        loop {
            let from = self.credentials_seen.load(std::sync::atomic::Ordering::SeqCst);
            let watches = self
                .store
                .watch(NODE_TOKEN_PREFIX, from)
                .and_then(|n| Ok((n, self.store.watch(REVOKED_PREFIX, from)?)));
            if let Ok((mut nodes, mut people)) = watches {
                loop {
                    let event = tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tick.tick() => None,
                        e = nodes.recv() => Some(e),
                        e = people.recv() => Some(e),
                    };
                    match event {
                        // The event itself, not a read: the store's reads may not have it yet.
                        Some(Some(Ok(e))) => self.apply_credential(&e),
                        None => self.reload_or_warn(),
                        Some(_) => break,
                    }
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            self.reload_or_warn();
        }
    }

    fn reload_or_warn(&self) {
        if let Err(e) = self.reload_credentials() {
            tracing::warn!(error = %e, "reading credentials");
        }
    }

    /// The person a verified client certificate names (CN = user, O = groups), as Kubernetes
    /// reads it; reserved names and revoked certificates are refused.
    pub fn authenticate_certificate(&self, subject: &capstan_runtime::tls::CertSubject) -> Result<Identity, CertificateRefusal> {
        let name = &subject.common_name;
        if name.starts_with("system:") || name.starts_with("capstan:") || name == capstan_runtime::tls::KUBELET_CLIENT {
            return Err(CertificateRefusal::ReservedUser(name.clone()));
        }
        if let Some(g) = subject.organizations.iter().find(|g| g.starts_with("system:")) {
            return Err(CertificateRefusal::ReservedGroup(g.clone()));
        }
        let revoked = self.revoked.read().unwrap_or_else(|p| p.into_inner()).get(name).copied();
        if revoked.is_some_and(|at| subject.not_before <= at) {
            return Err(CertificateRefusal::Revoked(name.clone()));
        }
        Ok(Identity::User {
            name: name.clone(),
            groups: subject.organizations.clone(),
        })
    }

    /// Refuses every certificate of `user` issued until now (`capstan user revoke`).
    pub async fn revoke_user(&self, user: &str) -> Result<(), capstan_store::StoreError> {
        let now = jiff::Timestamp::now().as_second();
        self.store
            .txn(Txn::default().put(format!("{REVOKED_PREFIX}{user}"), now.to_string()))
            .await?;
        self.revoked.write().unwrap_or_else(|p| p.into_inner()).insert(user.to_owned(), now);
        Ok(())
    }

    /// The identity a bearer token stands for.
    pub fn authenticate(&self, token: &str) -> Option<Identity> {
        if let Some(id) = self.tokens.read().ok()?.get(&hash(token)).cloned() {
            return Some(id);
        }
        let verifier = self.service_accounts.read().ok()?.clone();
        verifier.and_then(|v| v(token))
    }

    /// Installs the verifier of service-account tokens.
    pub fn set_service_account_verifier(&self, verifier: TokenVerifier) {
        if let Ok(mut v) = self.service_accounts.write() {
            *v = Some(verifier);
        }
    }

    pub fn is_join_secret(&self, secret: &str) -> bool {
        hash(secret) == self.join_secret_hash
    }

    /// Issues (or re-issues) the credential of node `name`; the old one stops working.
    /// Whether `name` holds a node credential: such a node re-joins with that credential, not
    /// with the shared join secret (which would let anyone holding it take the node over).
    pub fn node_has_credential(&self, name: &str) -> Result<bool, capstan_store::StoreError> {
        Ok(self.store.get(&format!("{NODE_TOKEN_PREFIX}{name}"))?.is_some())
    }

    /// Revokes a node's credential (`capstan node forget`): its agent can no longer call the
    /// API, and a new agent may join under the name with the join secret.
    pub async fn revoke_node(&self, name: &str) -> Result<bool, capstan_store::StoreError> {
        let key = format!("{NODE_TOKEN_PREFIX}{name}");
        let Some(old) = self.store.get(&key)? else {
            return Ok(false);
        };
        self.store.txn(Txn::default().delete(key)).await?;
        let mut tokens = self.tokens.write().unwrap_or_else(|p| p.into_inner());
        tokens.remove(String::from_utf8_lossy(&old.value).as_ref());
        Ok(true)
    }

    pub async fn issue_node_token(&self, name: &str) -> Result<String, capstan_store::StoreError> {
        let token = new_token();
        let key = format!("{NODE_TOKEN_PREFIX}{name}");
        let old = self.store.get(&key)?;
        self.store.txn(Txn::default().put(key, hash(&token))).await?;
        let mut tokens = self.tokens.write().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = old {
            tokens.remove(String::from_utf8_lossy(&old.value).as_ref());
        }
        tokens.insert(hash(&token), Identity::Node(name.to_owned()));
        Ok(token)
    }
}

impl Facts for crate::cache::Cache {
    fn pod(&self, namespace: &str, name: &str) -> Option<Arc<serde_json::Value>> {
        self.get(crate::context::kind("pods"), namespace, name).map(|e| e.object.clone())
    }

    fn pods(&self, namespace: &str) -> Vec<Arc<serde_json::Value>> {
        let (pods, _) = self.list(crate::context::kind("pods"), Some(namespace));
        pods.into_iter().map(|e| e.object.clone()).collect()
    }

    fn ingresses(&self, namespace: &str) -> Vec<Arc<serde_json::Value>> {
        let (ingresses, _) = self.list(crate::context::kind("ingresses"), Some(namespace));
        ingresses.into_iter().map(|e| e.object.clone()).collect()
    }

    fn gateways(&self) -> Vec<Arc<serde_json::Value>> {
        let (gateways, _) = self.list(crate::context::kind("gateways"), None);
        gateways.into_iter().map(|e| e.object.clone()).collect()
    }

    fn claim(&self, namespace: &str, name: &str) -> Option<Arc<serde_json::Value>> {
        self.get(crate::context::kind("persistentvolumeclaims"), namespace, name)
            .map(|e| e.object.clone())
    }

    fn volume(&self, name: &str) -> Option<Arc<serde_json::Value>> {
        self.get(crate::context::kind("persistentvolumes"), "", name)
            .map(|e| e.object.clone())
    }
}

/// Accepts the service-account tokens `signer` issued while what they are bound to exists: the
/// ServiceAccount (same uid) and, for a pod-bound token, the pod (same uid), as Kubernetes checks.
pub fn service_account_verifier(signer: Arc<crate::satoken::Signer>, cache: Arc<crate::cache::Cache>) -> TokenVerifier {
    Arc::new(move |token: &str| {
        let claims = signer.verify(token, jiff::Timestamp::now().as_second())?;
        let kind = |plural| capstan_api::kinds::by_name(plural).expect("served kind");
        let sa = cache.get(kind("serviceaccounts"), &claims.namespace, &claims.service_account)?;
        if !claims.service_account_uid.is_empty() && sa.object["metadata"]["uid"] != claims.service_account_uid.as_str() {
            return None;
        }
        if let Some((pod, uid)) = &claims.pod {
            let p = cache.get(kind("pods"), &claims.namespace, pod)?;
            if p.object["metadata"]["uid"] != uid.as_str() {
                return None;
            }
        }
        Some(Identity::ServiceAccount {
            namespace: claims.namespace,
            name: claims.service_account,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tokens_map_to_identities_and_node_credentials_survive_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let local = LocalTokens::load_or_create(dir.path()).unwrap();
        assert_eq!(LocalTokens::load_or_create(dir.path()).unwrap().admin, local.admin);
        let store: Arc<dyn Store> = Arc::new(capstan_store::RedbStore::open(&dir.path().join("s.redb")).unwrap());
        let auth = Authenticator::new(&local, store.clone()).unwrap();
        assert_eq!(auth.authenticate(&local.admin), Some(Identity::Admin));
        assert_eq!(auth.authenticate(&local.read_only), Some(Identity::ReadOnly));
        assert_eq!(auth.authenticate("nonsense"), None);
        assert!(auth.is_join_secret(&local.join_secret));
        let t1 = auth.issue_node_token("n1").await.unwrap();
        assert_eq!(auth.authenticate(&t1), Some(Identity::Node("n1".into())));
        let t2 = auth.issue_node_token("n1").await.unwrap();
        assert_eq!(auth.authenticate(&t1), None, "a re-issued credential replaces the old one");
        let again = Authenticator::new(&local, store).unwrap();
        assert_eq!(again.authenticate(&t2), Some(Identity::Node("n1".into())));
    }

    #[tokio::test]
    async fn a_revoked_node_credential_stops_working() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(capstan_store::RedbStore::open(&dir.path().join("s.redb")).unwrap());
        let local = LocalTokens::load_or_create(dir.path()).unwrap();
        let auth = Authenticator::new(&local, store).unwrap();
        assert!(!auth.node_has_credential("n1").unwrap());
        let t = auth.issue_node_token("n1").await.unwrap();
        assert!(auth.node_has_credential("n1").unwrap());
        assert!(auth.revoke_node("n1").await.unwrap());
        assert_eq!(auth.authenticate(&t), None);
        assert!(!auth.node_has_credential("n1").unwrap());
        assert!(!auth.revoke_node("n1").await.unwrap());
    }
}
