//! A store whose every transaction also checks a fence: that the leader key of the term making
//! the write still exists with the creation revision it had when the term began. A replica that
//! no longer leads (paused past its lease, cut off from etcd) has its writes refused by the
//! store itself, in the same transaction, rather than by luck of timing.

use std::sync::Arc;

use crate::{BoxFuture, Compare, RangeResult, Result, Revision, Store, StoreError, Txn, TxnResult, WatchStream};

/// Another store's view for one leader's term.
pub struct FencedStore {
    inner: Arc<dyn Store>,
    fence: Compare,
}

impl std::fmt::Debug for FencedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FencedStore({:?})", self.fence)
    }
}

impl FencedStore {
    /// Writes through `inner` only while `key` exists, created at `revision`.
    pub fn new(inner: Arc<dyn Store>, key: &str, revision: Revision) -> FencedStore {
        FencedStore {
            inner,
            fence: Compare::CreateRevision(key.to_owned(), revision),
        }
    }
}

impl Store for FencedStore {
    fn revision(&self) -> Revision {
        self.inner.revision()
    }

    fn compacted_revision(&self) -> Revision {
        self.inner.compacted_revision()
    }

    fn get(&self, key: &str) -> Result<Option<crate::KeyValue>> {
        self.inner.get(key)
    }

    fn range(&self, prefix: &str, start_after: Option<&str>, limit: usize) -> Result<RangeResult> {
        self.inner.range(prefix, start_after, limit)
    }

    fn txn(&self, mut txn: Txn) -> BoxFuture<'_, Result<TxnResult>> {
        Box::pin(async move {
            // Last, so that the caller's own compares keep their indices.
            let fence_at = txn.compares.len();
            txn.compares.push(self.fence.clone());
            let result = self.inner.txn(txn).await?;
            if result.failed_compare == Some(fence_at) {
                let Compare::CreateRevision(key, revision) = &self.fence else {
                    unreachable!("the fence is a creation revision")
                };
                tracing::warn!(fence = %key, term = revision, "a write was refused by the fence: another replica leads now");
                return Err(StoreError::Fenced(format!(
                    "the term that began at revision {revision} is over ({key} changed): another replica leads"
                )));
            }
            Ok(result)
        })
    }

    fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream> {
        self.inner.watch(prefix, after)
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
    use crate::RedbStore;

    #[tokio::test]
    async fn writes_pass_while_the_term_lasts_and_are_refused_after() {
        let dir = tempfile::tempdir().unwrap();
        let raw: Arc<dyn Store> = Arc::new(RedbStore::open(&dir.path().join("s.redb")).unwrap());
        let term = raw.txn(Txn::default().put("/leader", "a")).await.unwrap().revision;
        let fenced = FencedStore::new(raw.clone(), "/leader", term);
        // The caller's compares keep their meaning and their indices.
        let r = fenced
            .txn(Txn::default().when(Compare::Missing("/x".into())).put("/x", "1"))
            .await
            .unwrap();
        assert!(r.succeeded);
        let again = fenced
            .txn(Txn::default().when(Compare::Missing("/x".into())).put("/x", "2"))
            .await
            .unwrap();
        assert_eq!(again.failed_compare, Some(0));
        // Another replica's term: the key is created anew.
        raw.txn(Txn::default().delete("/leader")).await.unwrap();
        raw.txn(Txn::default().put("/leader", "b")).await.unwrap();
        let refused = fenced.txn(Txn::default().put("/x", "3")).await;
        assert!(matches!(refused, Err(StoreError::Fenced(_))), "{refused:?}");
        assert_eq!(raw.get("/x").unwrap().unwrap().value, "1");
    }
}
