//! The embedded store on redb. Reads run on redb's MVCC snapshots from any thread. Writes go
//! to one writer thread that takes every request waiting, runs them in one redb transaction and
//! commits once: concurrent writers share one fsync (group commit), and a write is acknowledged
//! only after that fsync. Committed events go to watchers through a broadcast channel, and to a
//! log table from which a watch starting in the past, or one that fell behind, is replayed.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::codec::{decode_events, decode_value, encode_events, encode_value};
use crate::{
    BoxFuture, Event, EventKind, KeyValue, Op, RangeResult, Result, Revision, Store, StoreError, Txn, TxnResult, WatchStream, prefix_end,
};

const KV: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("kv");
const LOG: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");
const META_REVISION: &str = "revision";
const META_COMPACTED: &str = "compacted";
/// redb's own page cache. Its default (1 GiB) lets the cache grow with the file, and the file
/// holds every revision until compaction: the daemon kept about 20 MB more after each
/// thousand pods came and went. Reads the cache misses come from the kernel's page cache.
const PAGE_CACHE_BYTES: usize = 16 << 20;

/// Most requests one group commit takes.
const MAX_BATCH: usize = 512;

enum Request {
    Txn(Txn, oneshot::Sender<Result<TxnResult>>),
    Compact(Revision, oneshot::Sender<Result<()>>),
}

struct Shared {
    db: Database,
    revision: AtomicU64,
    compacted: AtomicU64,
    events: broadcast::Sender<Arc<Vec<Event>>>,
}

/// The embedded store. Cheap to clone; the writer thread stops when the last clone is dropped.
#[derive(Clone)]
pub struct RedbStore {
    shared: Arc<Shared>,
    writer: mpsc::UnboundedSender<Request>,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RedbStore(revision {})", self.revision())
    }
}

fn read_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Read(e.to_string())
}

fn write_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Write(e.to_string())
}

impl RedbStore {
    /// Opens (or creates) the store in the file at `path`.
    pub fn open(path: &Path) -> Result<RedbStore> {
        let open_err = |e: &dyn std::fmt::Display| StoreError::Open {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| open_err(&e))?;
        }
        // The store holds every object, Secrets among them: readable by its owner alone, also
        // when it already exists with wider permissions.
        if !path.exists() {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| open_err(&e))?;
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|e| open_err(&e))?;
        let db = redb::Builder::new()
            .set_cache_size(PAGE_CACHE_BYTES)
            .create(path)
            .map_err(|e| open_err(&e))?;
        let (revision, compacted) = {
            let w = db.begin_write().map_err(|e| open_err(&e))?;
            let (rev, compacted) = {
                w.open_table(KV).map_err(|e| open_err(&e))?;
                w.open_table(LOG).map_err(|e| open_err(&e))?;
                let meta = w.open_table(META).map_err(|e| open_err(&e))?;
                let rev = meta.get(META_REVISION).map_err(|e| open_err(&e))?.map(|g| g.value()).unwrap_or(0);
                let compacted = meta.get(META_COMPACTED).map_err(|e| open_err(&e))?.map(|g| g.value()).unwrap_or(0);
                (rev, compacted)
            };
            w.commit().map_err(|e| open_err(&e))?;
            (rev, compacted)
        };
        let (events, _) = broadcast::channel(1024);
        let shared = Arc::new(Shared {
            db,
            revision: AtomicU64::new(revision),
            compacted: AtomicU64::new(compacted),
            events,
        });
        let (writer, requests) = mpsc::unbounded_channel();
        let writer_shared = shared.clone();
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || write_loop(writer_shared, requests))
            .map_err(|e| open_err(&e))?;
        Ok(RedbStore { shared, writer })
    }

    /// Events of revisions in `(after, upto]` whose key has `prefix`, from the log.
    fn replay(shared: &Shared, prefix: &str, after: Revision, upto: Revision) -> Result<Vec<Event>> {
        let compacted = shared.compacted.load(Ordering::SeqCst);
        if after < compacted {
            return Err(StoreError::Compacted {
                requested: after,
                compacted,
            });
        }
        let r = shared.db.begin_read().map_err(read_err)?;
        let log = r.open_table(LOG).map_err(read_err)?;
        let mut out = Vec::new();
        for entry in log.range(after + 1..=upto).map_err(read_err)? {
            let (rev, bytes) = entry.map_err(read_err)?;
            let events = decode_events(rev.value(), bytes.value()).ok_or_else(|| read_err("corrupt log record"))?;
            out.extend(events.into_iter().filter(|e| e.kv.key.starts_with(prefix)));
        }
        Ok(out)
    }
}

impl Store for RedbStore {
    fn revision(&self) -> Revision {
        self.shared.revision.load(Ordering::SeqCst)
    }

    fn compacted_revision(&self) -> Revision {
        self.shared.compacted.load(Ordering::SeqCst)
    }

    fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let r = self.shared.db.begin_read().map_err(read_err)?;
        let kv = r.open_table(KV).map_err(read_err)?;
        let found = kv.get(key).map_err(read_err)?;
        Ok(found.and_then(|v| decode_value(key, v.value())))
    }

    fn range(&self, prefix: &str, start_after: Option<&str>, limit: usize) -> Result<RangeResult> {
        let r = self.shared.db.begin_read().map_err(read_err)?;
        let revision = r
            .open_table(META)
            .map_err(read_err)?
            .get(META_REVISION)
            .map_err(read_err)?
            .map(|g| g.value())
            .unwrap_or(0);
        let kv = r.open_table(KV).map_err(read_err)?;
        let end = prefix_end(prefix);
        let mut kvs = Vec::new();
        let mut more = false;
        let iter = match start_after {
            Some(after) => kv.range::<&str>((std::ops::Bound::Excluded(after), std::ops::Bound::Excluded(end.as_str()))),
            None => kv.range::<&str>(prefix..end.as_str()),
        }
        .map_err(read_err)?;
        for entry in iter {
            let (k, v) = entry.map_err(read_err)?;
            if limit > 0 && kvs.len() == limit {
                more = true;
                break;
            }
            if let Some(decoded) = decode_value(k.value(), v.value()) {
                kvs.push(decoded);
            }
        }
        Ok(RangeResult { kvs, more, revision })
    }

    fn txn(&self, txn: Txn) -> BoxFuture<'_, Result<TxnResult>> {
        Box::pin(async move {
            let (tx, rx) = oneshot::channel();
            self.writer.send(Request::Txn(txn, tx)).map_err(|_| StoreError::Closed)?;
            rx.await.map_err(|_| StoreError::Closed)?
        })
    }

    fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream> {
        crate::retained(after, self.compacted_revision())?;
        // Subscribe before reading the revision, so that nothing falls between replay and live.
        let mut live = self.shared.events.subscribe();
        let upto = self.revision();
        let (tx, rx) = mpsc::channel(1024);
        let shared = self.shared.clone();
        let prefix = prefix.to_owned();
        tokio::spawn(async move {
            let mut last = after;
            let mut replay_to = Some(upto);
            loop {
                if let Some(upto) = replay_to.take()
                    && upto > last
                {
                    match RedbStore::replay(&shared, &prefix, last, upto) {
                        Ok(events) => {
                            for e in events {
                                if tx.send(Ok(e)).await.is_err() {
                                    return;
                                }
                            }
                            last = upto;
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e)).await;
                            return;
                        }
                    }
                }
                match live.recv().await {
                    Ok(batch) => {
                        for e in batch.iter().filter(|e| e.revision() > last) {
                            if e.kv.key.starts_with(&prefix) && tx.send(Ok(e.clone())).await.is_err() {
                                return;
                            }
                        }
                        if let Some(e) = batch.last() {
                            last = last.max(e.revision());
                        }
                    }
                    // Fell behind the broadcast: catch up from the log.
                    Err(broadcast::error::RecvError::Lagged(_)) => replay_to = Some(shared.revision.load(Ordering::SeqCst)),
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(rx)
    }

    fn compact(&self, revision: Revision) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let (tx, rx) = oneshot::channel();
            self.writer.send(Request::Compact(revision, tx)).map_err(|_| StoreError::Closed)?;
            rx.await.map_err(|_| StoreError::Closed)?
        })
    }
}

/// What one request of a batch produced, to be answered after the commit.
enum Outcome {
    Txn(oneshot::Sender<Result<TxnResult>>, TxnResult),
    Compact(oneshot::Sender<Result<()>>),
}

fn write_loop(shared: Arc<Shared>, mut requests: mpsc::UnboundedReceiver<Request>) {
    while let Some(first) = requests.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match requests.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let mut revision = shared.revision.load(Ordering::SeqCst);
        let mut compacted = shared.compacted.load(Ordering::SeqCst);
        let mut published = Vec::new();
        let result = (|| -> Result<Vec<Outcome>> {
            let w = shared.db.begin_write().map_err(write_err)?;
            let mut outcomes = Vec::with_capacity(batch.len());
            {
                let mut kv = w.open_table(KV).map_err(write_err)?;
                let mut log = w.open_table(LOG).map_err(write_err)?;
                let mut meta = w.open_table(META).map_err(write_err)?;
                for request in batch.drain(..) {
                    match request {
                        Request::Txn(txn, reply) => {
                            let result = apply_txn(&mut kv, &mut log, &txn, &mut revision, &mut published)?;
                            outcomes.push(Outcome::Txn(reply, result));
                        }
                        Request::Compact(to, reply) => {
                            let to = to.min(revision);
                            if to > compacted {
                                log.retain_in(..=to, |_, _| false).map_err(write_err)?;
                                compacted = to;
                            }
                            outcomes.push(Outcome::Compact(reply));
                        }
                    }
                }
                meta.insert(META_REVISION, revision).map_err(write_err)?;
                meta.insert(META_COMPACTED, compacted).map_err(write_err)?;
            }
            w.commit().map_err(write_err)?;
            Ok(outcomes)
        })();
        match result {
            Ok(outcomes) => {
                shared.revision.store(revision, Ordering::SeqCst);
                shared.compacted.store(compacted, Ordering::SeqCst);
                if !published.is_empty() {
                    let _ = shared.events.send(Arc::new(published));
                }
                for o in outcomes {
                    match o {
                        Outcome::Txn(reply, r) => {
                            let _ = reply.send(Ok(r));
                        }
                        Outcome::Compact(reply) => {
                            let _ = reply.send(Ok(()));
                        }
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "store commit failed");
                // The batch was rolled back; every request in it fails. Requests already moved
                // out of `batch` are answered by dropping their senders (Closed).
                for request in batch {
                    match request {
                        Request::Txn(_, reply) => drop(reply.send(Err(e.clone()))),
                        Request::Compact(_, reply) => drop(reply.send(Err(e.clone()))),
                    }
                }
            }
        }
    }
}

fn apply_txn(
    kv: &mut redb::Table<'_, &str, &[u8]>,
    log: &mut redb::Table<'_, u64, &[u8]>,
    txn: &Txn,
    revision: &mut Revision,
    published: &mut Vec<Event>,
) -> Result<TxnResult> {
    let current = |kv: &redb::Table<'_, &str, &[u8]>, key: &str| -> Result<Option<KeyValue>> {
        Ok(kv.get(key).map_err(write_err)?.and_then(|v| decode_value(key, v.value())))
    };
    for (i, c) in txn.compares.iter().enumerate() {
        if !c.holds(current(kv, c.key())?.as_ref()) {
            return Ok(TxnResult {
                succeeded: false,
                revision: *revision,
                failed_compare: Some(i),
                prev: Vec::new(),
            });
        }
    }
    if txn.ops.is_empty() {
        return Ok(TxnResult {
            succeeded: true,
            revision: *revision,
            failed_compare: None,
            prev: Vec::new(),
        });
    }
    let new_rev = *revision + 1;
    let mut events = Vec::with_capacity(txn.ops.len());
    let mut prev = Vec::with_capacity(txn.ops.len());
    for op in &txn.ops {
        match op {
            Op::Put { key, value } => {
                let old = current(kv, key)?;
                let create = old.as_ref().map_or(new_rev, |o| o.create_revision);
                kv.insert(key.as_str(), encode_value(create, new_rev, value).as_slice())
                    .map_err(write_err)?;
                events.push(Event {
                    kind: EventKind::Put,
                    kv: KeyValue {
                        key: key.clone(),
                        value: value.clone(),
                        create_revision: create,
                        mod_revision: new_rev,
                    },
                });
                prev.push(old);
            }
            Op::Delete { key } => {
                let old = current(kv, key)?;
                if let Some(o) = &old {
                    kv.remove(key.as_str()).map_err(write_err)?;
                    events.push(Event {
                        kind: EventKind::Delete,
                        kv: KeyValue {
                            key: key.clone(),
                            value: o.value.clone(),
                            create_revision: o.create_revision,
                            mod_revision: new_rev,
                        },
                    });
                }
                prev.push(old);
            }
        }
    }
    if !events.is_empty() {
        log.insert(new_rev, encode_events(&events).as_slice()).map_err(write_err)?;
        *revision = new_rev;
        published.extend(events);
    }
    Ok(TxnResult {
        succeeded: true,
        revision: *revision,
        failed_compare: None,
        prev,
    })
}
