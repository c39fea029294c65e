//! Capstan's store: what etcd is to Kubernetes. A versioned key-value store with one global
//! revision, compare-and-swap transactions, range reads, watches from any retained revision,
//! and compaction with a clear "too old" answer.
//!
//! [`Store`] is the contract; [`RedbStore`] is the embedded default (durable, group commit);
//! [`EtcdStore`] (feature `etcd`) keeps the same contract on an etcd cluster, for several
//! control-plane replicas.

mod codec;
#[cfg(feature = "etcd")]
pub mod election;
pub mod encrypted;
#[cfg(feature = "etcd")]
mod etcd_store;
pub mod fenced;
#[cfg(feature = "etcd")]
pub mod local_etcd;
mod redb_store;

use std::future::Future;
use std::pin::Pin;

pub use bytes::Bytes;
pub use encrypted::{EncryptedStore, Keyring};
#[cfg(feature = "etcd")]
pub use etcd_store::{DEFAULT_PREFIX as ETCD_DEFAULT_PREFIX, EtcdConfig, EtcdStore, EtcdTls};
pub use fenced::FencedStore;
pub use redb_store::RedbStore;
use tokio::sync::mpsc;

/// The store's global revision; every successful write transaction increments it by one.
pub type Revision = u64;

/// A key, its value and the revisions that created and last modified it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Bytes,
    pub create_revision: Revision,
    pub mod_revision: Revision,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change, as a watch delivers it. For a delete, `kv` holds the key's last value and
/// `kv.mod_revision` is the revision of the deletion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    pub kv: KeyValue,
}

impl Event {
    pub fn revision(&self) -> Revision {
        self.kv.mod_revision
    }
}

/// A condition a transaction checks before it writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Compare {
    /// The key exists.
    Exists(String),
    /// The key does not exist.
    Missing(String),
    /// The key was last modified at exactly this revision (optimistic concurrency).
    ModRevision(String, Revision),
    /// The key exists and was created at exactly this revision (a leader's fence: the leader
    /// key of its term).
    CreateRevision(String, Revision),
}

impl Compare {
    /// The key it checks.
    pub fn key(&self) -> &str {
        match self {
            Compare::Exists(k) | Compare::Missing(k) | Compare::ModRevision(k, _) | Compare::CreateRevision(k, _) => k,
        }
    }

    /// Whether it holds for the key's current value.
    pub fn holds(&self, current: Option<&KeyValue>) -> bool {
        match self {
            Compare::Exists(_) => current.is_some(),
            Compare::Missing(_) => current.is_none(),
            Compare::ModRevision(_, rev) => current.is_some_and(|kv| kv.mod_revision == *rev),
            Compare::CreateRevision(_, rev) => current.is_some_and(|kv| kv.create_revision == *rev),
        }
    }
}

/// A write inside a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Put { key: String, value: Bytes },
    Delete { key: String },
}

/// Compare-and-swap over several keys: when every compare holds, all ops apply at one new
/// revision; otherwise nothing is written.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Txn {
    pub compares: Vec<Compare>,
    pub ops: Vec<Op>,
}

impl Txn {
    pub fn when(mut self, c: Compare) -> Txn {
        self.compares.push(c);
        self
    }

    pub fn put(mut self, key: impl Into<String>, value: impl Into<Bytes>) -> Txn {
        self.ops.push(Op::Put {
            key: key.into(),
            value: value.into(),
        });
        self
    }

    pub fn delete(mut self, key: impl Into<String>) -> Txn {
        self.ops.push(Op::Delete { key: key.into() });
        self
    }
}

/// The outcome of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnResult {
    pub succeeded: bool,
    /// The new revision when it succeeded; the current one when it did not.
    pub revision: Revision,
    /// When it failed: the index of the first compare that did not hold.
    pub failed_compare: Option<usize>,
    /// For each op, the key's value before the transaction (None if it did not exist).
    pub prev: Vec<Option<KeyValue>>,
}

/// A page of a range read, consistent at `revision`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeResult {
    pub kvs: Vec<KeyValue>,
    /// More keys follow the last one returned.
    pub more: bool,
    pub revision: Revision,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("opening the store at {path}: {message}")]
    Open { path: String, message: String },
    #[error("store write failed: {0}")]
    Write(String),
    #[error("store read failed: {0}")]
    Read(String),
    #[error("revision {requested} has been compacted (oldest kept: {compacted})")]
    Compacted { requested: Revision, compacted: Revision },
    #[error("the store is shut down")]
    Closed,
    /// The store cannot be reached now (etcd lost its quorum or the connection): nothing was
    /// written; trying again later may succeed.
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    /// A leader's write refused by its fence: another replica leads now.
    #[error("refused by the fence: {0}")]
    Fenced(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A stream of watch events: events strictly after the revision asked for, in revision order,
/// each exactly once. It ends with `Err(Compacted)` when the watcher fell behind compaction.
pub type WatchStream = mpsc::Receiver<Result<Event>>;

/// The store contract; see the crate documentation.
pub trait Store: Send + Sync + 'static {
    /// The latest committed revision.
    fn revision(&self) -> Revision;
    /// The oldest revision a watch may start after.
    fn compacted_revision(&self) -> Revision;
    fn get(&self, key: &str) -> Result<Option<KeyValue>>;
    /// Keys with `prefix` after `start_after` (exclusive), in key order, at most `limit`
    /// (0: no limit).
    fn range(&self, prefix: &str, start_after: Option<&str>, limit: usize) -> Result<RangeResult>;
    /// Runs a transaction; acknowledged only once it is durable.
    fn txn(&self, txn: Txn) -> BoxFuture<'_, Result<TxnResult>>;
    /// Watches keys with `prefix`, delivering every event with a revision greater than `after`.
    fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream>;
    /// Forgets history before `revision`: watches may then only start at or after it.
    fn compact(&self, revision: Revision) -> BoxFuture<'_, Result<()>>;
    /// Why the store cannot serve writes now, when it cannot (for readiness and status).
    fn trouble(&self) -> Option<String> {
        None
    }
}

/// The store key the leader of several control-plane replicas holds; its value names the
/// leader's API address.
pub const LEADER_KEY: &str = "/capstan/leader";

/// Each control-plane replica on etcd holds `REPLICAS_PREFIX<its API address>` while it runs.
pub const REPLICAS_PREFIX: &str = "/capstan/replicas/";

/// Whether a watch may start after `after` when history before `compacted` is gone.
pub(crate) fn retained(after: Revision, compacted: Revision) -> Result<()> {
    if after < compacted {
        return Err(StoreError::Compacted {
            requested: after,
            compacted,
        });
    }
    Ok(())
}

/// The smallest key greater than every key with `prefix`, for range ends.
pub fn prefix_end(prefix: &str) -> String {
    format!("{prefix}\u{10FFFF}")
}
