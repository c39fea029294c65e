//! Encryption at rest, kube-apiserver's shape: values under chosen key prefixes (Secrets) are
//! sealed with AES-256-GCM before they reach the backend and opened when read, with the store
//! key as associated data so that a sealed value cannot be moved to another key. A keyring holds
//! named keys: the first seals, every one opens, so keys can be rotated.

use std::sync::Arc;

use bytes::Bytes;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use tokio::sync::mpsc;

use crate::{BoxFuture, Event, KeyValue, Op, RangeResult, Result, Revision, Store, StoreError, Txn, TxnResult, WatchStream};

/// What a sealed value starts with, then the key's name and `:`, the nonce and the ciphertext.
const MAGIC: &[u8] = b"capstan:enc:aesgcm:v1:";

/// Named AES-256 keys; the first one seals.
pub struct Keyring {
    keys: Vec<(String, LessSafeKey)>,
    rng: SystemRandom,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Names only: key material never reaches a log.
        let names: Vec<&str> = self.keys.iter().map(|(n, _)| n.as_str()).collect();
        write!(f, "Keyring({names:?})")
    }
}

/// Why a keyring or a sealed value could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    #[error("line {line}: expected NAME:BASE64 of a 32-byte key")]
    Format { line: usize },
    #[error("the keyring holds no key")]
    Empty,
}

impl Keyring {
    /// Reads `name:base64` lines (comments with `#`); the first key seals.
    pub fn parse(text: &str) -> Result<Keyring, KeyringError> {
        use base64::Engine as _;
        let mut keys = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = || KeyringError::Format { line: i + 1 };
            let (name, b64) = line.split_once(':').ok_or_else(bad)?;
            let bytes = base64::engine::general_purpose::STANDARD.decode(b64.trim()).map_err(|_| bad())?;
            let key = UnboundKey::new(&AES_256_GCM, &bytes).map_err(|_| bad())?;
            if name.is_empty() || name.contains(':') {
                return Err(bad());
            }
            keys.push((name.to_owned(), LessSafeKey::new(key)));
        }
        if keys.is_empty() {
            return Err(KeyringError::Empty);
        }
        Ok(Keyring {
            keys,
            rng: SystemRandom::new(),
        })
    }

    /// A new keyring file's text: one fresh random key named `name`.
    pub fn generate(name: &str) -> String {
        use base64::Engine as _;
        let mut key = [0u8; 32];
        SystemRandom::new().fill(&mut key).expect("the system's random source works");
        format!(
            "# Capstan's encryption keys for Secrets at rest: NAME:BASE64 (32 bytes). The first key\n# encrypts; all decrypt. To rotate, add a new first line and restart the daemon.\n{name}:{}\n",
            base64::engine::general_purpose::STANDARD.encode(key)
        )
    }

    /// The name of the key that seals.
    pub fn primary(&self) -> &str {
        &self.keys[0].0
    }

    /// Seals `plain` for store key `key`.
    pub fn seal(&self, key: &str, plain: &[u8]) -> Bytes {
        let (name, k) = &self.keys[0];
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).expect("the system's random source works");
        let mut sealed = plain.to_vec();
        k.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(key.as_bytes()), &mut sealed)
            .expect("AES-GCM seals any length a store value has");
        let mut out = Vec::with_capacity(MAGIC.len() + name.len() + 1 + NONCE_LEN + sealed.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(name.as_bytes());
        out.push(b':');
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Bytes::from(out)
    }

    /// Opens a value of store key `key`; a value that is not sealed (written before encryption
    /// was on) is returned as it is. Also says which key sealed it.
    pub fn open(&self, key: &str, value: &Bytes) -> Result<(Bytes, Option<String>)> {
        let Some(rest) = value.strip_prefix(MAGIC) else {
            return Ok((value.clone(), None));
        };
        let undecodable = |why: &str| StoreError::Read(format!("{key}: {why}"));
        let colon = rest
            .iter()
            .position(|b| *b == b':')
            .ok_or_else(|| undecodable("sealed value without a key name"))?;
        let name = String::from_utf8_lossy(&rest[..colon]).into_owned();
        let body = &rest[colon + 1..];
        if body.len() < NONCE_LEN {
            return Err(undecodable("sealed value too short"));
        }
        let (_, k) = self
            .keys
            .iter()
            .find(|(n, _)| *n == name)
            .ok_or_else(|| undecodable(&format!("sealed with key {name:?}, which the keyring does not hold")))?;
        let nonce = Nonce::try_assume_unique_for_key(&body[..NONCE_LEN]).map_err(|_| undecodable("bad nonce"))?;
        let mut data = body[NONCE_LEN..].to_vec();
        let plain = k
            .open_in_place(nonce, Aad::from(key.as_bytes()), &mut data)
            .map_err(|_| undecodable(&format!("does not open with key {name:?} (altered, or moved from another key)")))?;
        Ok((Bytes::copy_from_slice(plain), Some(name)))
    }
}

/// A store that seals the values of keys under `prefixes`.
pub struct EncryptedStore {
    inner: Arc<dyn Store>,
    keyring: Arc<Keyring>,
    prefixes: Vec<String>,
}

impl EncryptedStore {
    pub fn new(inner: Arc<dyn Store>, keyring: Keyring, prefixes: Vec<String>) -> EncryptedStore {
        EncryptedStore {
            inner,
            keyring: Arc::new(keyring),
            prefixes,
        }
    }

    fn sealed(&self, key: &str) -> bool {
        self.prefixes.iter().any(|p| key.starts_with(p.as_str()))
    }

    fn open_kv(&self, mut kv: KeyValue) -> Result<KeyValue> {
        if self.sealed(&kv.key) {
            kv.value = self.keyring.open(&kv.key, &kv.value)?.0;
        }
        Ok(kv)
    }

    /// Seals again every value that is not sealed with the primary key (plain ones written
    /// before encryption was on, or sealed with an older key); returns how many were written.
    pub async fn reseal(&self) -> Result<usize> {
        let mut count = 0;
        for prefix in &self.prefixes {
            for kv in self.inner.range(prefix, None, 0)?.kvs {
                let (_, by) = self.keyring.open(&kv.key, &kv.value)?;
                if by.as_deref() == Some(self.keyring.primary()) {
                    continue;
                }
                let plain = self.keyring.open(&kv.key, &kv.value)?.0;
                let txn = Txn::default()
                    .when(crate::Compare::ModRevision(kv.key.clone(), kv.mod_revision))
                    .put(kv.key.clone(), self.keyring.seal(&kv.key, &plain));
                if self.inner.txn(txn).await?.succeeded {
                    count += 1;
                }
            }
        }
        Ok(count)
    }
}

impl Store for EncryptedStore {
    fn revision(&self) -> Revision {
        self.inner.revision()
    }

    fn compacted_revision(&self) -> Revision {
        self.inner.compacted_revision()
    }

    fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        self.inner.get(key)?.map(|kv| self.open_kv(kv)).transpose()
    }

    fn range(&self, prefix: &str, start_after: Option<&str>, limit: usize) -> Result<RangeResult> {
        let mut r = self.inner.range(prefix, start_after, limit)?;
        r.kvs = r.kvs.into_iter().map(|kv| self.open_kv(kv)).collect::<Result<_>>()?;
        Ok(r)
    }

    fn txn(&self, mut txn: Txn) -> BoxFuture<'_, Result<TxnResult>> {
        for op in &mut txn.ops {
            if let Op::Put { key, value } = op
                && self.sealed(key)
            {
                *value = self.keyring.seal(key, value);
            }
        }
        Box::pin(async move {
            let mut r = self.inner.txn(txn).await?;
            r.prev = r
                .prev
                .into_iter()
                .map(|kv| kv.map(|kv| self.open_kv(kv)).transpose())
                .collect::<Result<_>>()?;
            Ok(r)
        })
    }

    fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream> {
        let mut inner = self.inner.watch(prefix, after)?;
        let (tx, rx) = mpsc::channel(1024);
        let keyring = self.keyring.clone();
        let prefixes = self.prefixes.clone();
        tokio::spawn(async move {
            while let Some(event) = inner.recv().await {
                let event = event.and_then(|mut e: Event| {
                    if prefixes.iter().any(|p| e.kv.key.starts_with(p.as_str())) && !e.kv.value.is_empty() {
                        e.kv.value = keyring.open(&e.kv.key, &e.kv.value)?.0;
                    }
                    Ok(e)
                });
                if tx.send(event).await.is_err() {
                    return;
                }
            }
        });
        Ok(rx)
    }

    fn compact(&self, revision: Revision) -> BoxFuture<'_, Result<()>> {
        self.inner.compact(revision)
    }

    fn trouble(&self) -> Option<String> {
        self.inner.trouble()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Arc<dyn Store>) {
        let dir = tempfile::tempdir().unwrap();
        let s: Arc<dyn Store> = Arc::new(crate::RedbStore::open(&dir.path().join("s.redb")).unwrap());
        (dir, s)
    }

    #[tokio::test]
    async fn secrets_are_sealed_in_the_backend_and_open_through_the_wrapper() {
        let (_dir, raw) = store();
        let keyring = Keyring::parse(&Keyring::generate("k1")).unwrap();
        let enc = EncryptedStore::new(raw.clone(), keyring, vec!["/registry/core/secrets/".into()]);
        let mut watch = enc.watch("/registry/", 0).unwrap();
        enc.txn(Txn::default().put("/registry/core/secrets/ns/db", Bytes::from_static(b"{\"data\":\"hunter2\"}")))
            .await
            .unwrap();
        enc.txn(Txn::default().put("/registry/core/configmaps/ns/c", Bytes::from_static(b"plain")))
            .await
            .unwrap();
        let at_rest = raw.get("/registry/core/secrets/ns/db").unwrap().unwrap().value;
        assert!(at_rest.starts_with(b"capstan:enc:aesgcm:v1:k1:"));
        assert!(
            !at_rest.windows(7).any(|w| w == b"hunter2"),
            "the value is not in the backend in clear"
        );
        assert_eq!(raw.get("/registry/core/configmaps/ns/c").unwrap().unwrap().value, "plain");
        assert_eq!(
            enc.get("/registry/core/secrets/ns/db").unwrap().unwrap().value,
            "{\"data\":\"hunter2\"}"
        );
        assert_eq!(
            enc.range("/registry/core/secrets/", None, 0).unwrap().kvs[0].value,
            "{\"data\":\"hunter2\"}"
        );
        let event = watch.recv().await.unwrap().unwrap();
        assert_eq!(event.kv.value, "{\"data\":\"hunter2\"}");
        // A sealed value moved to another key does not open.
        raw.txn(Txn::default().put("/registry/core/secrets/ns/other", at_rest))
            .await
            .unwrap();
        assert!(enc.get("/registry/core/secrets/ns/other").is_err());
    }

    #[tokio::test]
    async fn rotation_reseals_with_the_new_first_key_and_old_values_stay_readable_until_then() {
        let (_dir, raw) = store();
        let old = Keyring::generate("k1");
        let enc = EncryptedStore::new(raw.clone(), Keyring::parse(&old).unwrap(), vec!["/s/".into()]);
        enc.txn(Txn::default().put("/s/a", Bytes::from_static(b"one"))).await.unwrap();
        raw.txn(Txn::default().put("/s/b", Bytes::from_static(b"written before encryption")))
            .await
            .unwrap();
        let new_first = format!("{}{}", Keyring::generate("k2").lines().last().unwrap(), "\n") + &old;
        let rotated = EncryptedStore::new(raw.clone(), Keyring::parse(&new_first).unwrap(), vec!["/s/".into()]);
        assert_eq!(rotated.get("/s/a").unwrap().unwrap().value, "one");
        assert_eq!(rotated.reseal().await.unwrap(), 2);
        for key in ["/s/a", "/s/b"] {
            assert!(
                raw.get(key).unwrap().unwrap().value.starts_with(b"capstan:enc:aesgcm:v1:k2:"),
                "{key}"
            );
        }
        assert_eq!(rotated.reseal().await.unwrap(), 0);
        let only_new = Keyring::parse(new_first.lines().next().unwrap()).unwrap();
        let after = EncryptedStore::new(raw, only_new, vec!["/s/".into()]);
        assert_eq!(after.get("/s/b").unwrap().unwrap().value, "written before encryption");
        assert!(format!("{:?}", after.keyring).contains("k2"));
    }
}
