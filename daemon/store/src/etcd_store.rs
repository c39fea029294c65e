//! The store on etcd v3, for a control plane that outlives one machine. Writes are etcd
//! transactions, acknowledged once etcd's quorum has them. Reads come from a mirror of the
//! cluster's keys that one etcd watch keeps current, so `get` and `range` answer from memory
//! as on redb, and a transaction returns only once the mirror holds its revision (a replica
//! reads its own writes). Watches are etcd watches from the revision asked for, so compaction
//! answers "too old" exactly where etcd does. Every key sits under a prefix, so several
//! clusters may share one etcd.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use etcd_client as etcd;
use tokio::sync::{mpsc, watch};

use crate::{
    BoxFuture, Compare, Event, EventKind, KeyValue, Op, RangeResult, Result, Revision, Store, StoreError, Txn, TxnResult, WatchStream,
    prefix_end,
};

/// Longest wait for one etcd request; past it the store is unavailable (the API answers 503).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the connections to etcd are pinged (etcd's `--grpc-keepalive-min-time` is 5 s),
/// and how long a ping may go unanswered before the connection is taken for dead.
const KEEP_ALIVE: Duration = Duration::from_secs(6);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(3);
/// How often each member's address is probed, and how long a probe may take.
const PROBE_EVERY: Duration = Duration::from_secs(2);
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Keys one page of the initial load reads.
const PAGE: i64 = 2_000;
/// Longest pause between attempts to reach etcd again.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Where the etcd cluster is, and how to reach it.
#[derive(Clone)]
pub struct EtcdConfig {
    /// `host:port` of each member.
    pub endpoints: Vec<String>,
    /// Every key of this cluster is stored under it (kube-apiserver's `--etcd-prefix`).
    pub prefix: String,
    pub tls: Option<EtcdTls>,
    /// How long `open` keeps trying to reach etcd before it gives up.
    pub connect_for: Duration,
}

/// TLS to etcd: the CA that signed the members' certificates, and a client certificate when
/// the members ask for one.
#[derive(Clone)]
pub struct EtcdTls {
    pub ca_pem: Vec<u8>,
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for EtcdConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The client key is never printed.
        write!(
            f,
            "etcd://{} (prefix {}, tls {})",
            self.endpoints.join(","),
            self.prefix,
            self.tls.is_some()
        )
    }
}

/// The prefix kube-apiserver's `/registry` sits beside: Capstan's keys go under `/capstan`.
pub const DEFAULT_PREFIX: &str = "/capstan";

impl EtcdConfig {
    /// Parses `etcd://host:port[,host:port…]`.
    pub fn parse(url: &str) -> std::result::Result<EtcdConfig, String> {
        let rest = url
            .strip_prefix("etcd://")
            .ok_or_else(|| format!("{url:?} is not an etcd address: write etcd://host:2379[,host:2379…]"))?;
        let endpoints: Vec<String> = rest.trim_end_matches('/').split(',').map(str::trim).map(str::to_owned).collect();
        for e in &endpoints {
            let ok = e
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
            if !ok {
                return Err(format!("{url:?}: the etcd member {e:?} is not host:port"));
            }
        }
        Ok(EtcdConfig {
            endpoints,
            prefix: DEFAULT_PREFIX.to_owned(),
            tls: None,
            connect_for: Duration::from_secs(60),
        })
    }

    /// A member's URL as the etcd client's balancer knows it.
    fn member_url(&self, endpoint: &str) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{endpoint}")
    }

    /// How a client reaches the members: the cluster's TLS, if any, and `connect_timeout`.
    fn connect_options(&self, connect_timeout: Duration) -> etcd::ConnectOptions {
        let mut options = etcd::ConnectOptions::new().with_connect_timeout(connect_timeout);
        if let Some(tls) = &self.tls {
            let mut t = etcd::TlsOptions::new().ca_certificate(etcd::Certificate::from_pem(&tls.ca_pem));
            if let Some((cert, key)) = &tls.client {
                t = t.identity(etcd::Identity::from_pem(cert, key));
            }
            options = options.with_tls(t);
        }
        options
    }

    /// The members, as messages name them.
    pub fn describe(&self) -> String {
        self.endpoints.join(",")
    }

    /// The etcd key of a store key.
    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// Every key of this cluster starts with this.
    fn root(&self) -> String {
        format!("{}/", self.prefix)
    }

    /// The length of `root()`, what the store's keys lose of the etcd keys.
    fn root_len(&self) -> usize {
        self.prefix.len() + 1
    }
}

/// The smallest byte string greater than every string starting with `prefix` (etcd's range end).
fn etcd_range_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

struct Mirror {
    kvs: BTreeMap<String, KeyValue>,
    revision: Revision,
}

struct Inner {
    client: etcd::Client,
    config: EtcdConfig,
    mirror: RwLock<Mirror>,
    /// The mirror's revision, for writers waiting to read their own write.
    seen: watch::Sender<Revision>,
    compacted: AtomicU64,
    /// Why etcd cannot be used now, when it cannot.
    trouble: RwLock<Option<String>>,
    /// Dropped with the last clone of the store: the mirror's watch stops.
    _stop: watch::Sender<()>,
}

/// The store on etcd. Cheap to clone.
#[derive(Clone)]
pub struct EtcdStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EtcdStore({:?}, revision {})", self.inner.config, self.revision())
    }
}

/// How an etcd failure reads to the store's callers.
fn classify(config: &EtcdConfig, e: etcd::Error) -> StoreError {
    use tonic::Code;
    let at = config.describe();
    match &e {
        etcd::Error::GRpcStatus(s)
            if matches!(
                s.code(),
                Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown
            ) =>
        {
            StoreError::Unavailable(format!("etcd at {at}: {}", s.message()))
        }
        etcd::Error::GRpcStatus(s) => StoreError::Write(format!("etcd at {at}: {}", s.message())),
        etcd::Error::TransportError(_) | etcd::Error::IoError(_) => StoreError::Unavailable(format!("etcd at {at}: {e}")),
        _ => StoreError::Write(format!("etcd at {at}: {e}")),
    }
}

/// Whether etcd refused a request because the revision it names has been compacted.
fn is_compacted(e: &etcd::Error) -> bool {
    matches!(e, etcd::Error::GRpcStatus(s) if s.code() == tonic::Code::OutOfRange && s.message().contains("compacted"))
}

/// Runs one etcd request with the store's deadline.
async fn bounded<T>(config: &EtcdConfig, what: &str, f: impl Future<Output = Result<T, etcd::Error>>) -> Result<T> {
    match tokio::time::timeout(REQUEST_TIMEOUT, f).await {
        Ok(r) => r.map_err(|e| classify(config, e)),
        Err(_) => Err(StoreError::Unavailable(format!(
            "etcd at {} did not answer {what} within {} s",
            config.describe(),
            REQUEST_TIMEOUT.as_secs()
        ))),
    }
}

/// A store key and value from an etcd key-value, when it belongs to this cluster.
fn from_etcd(root_len: usize, kv: &etcd::KeyValue) -> Option<KeyValue> {
    let key = std::str::from_utf8(kv.key()).ok()?;
    // The root ends with '/', which is the first character of the store key.
    let key = key.get(root_len - 1..)?.to_owned();
    Some(KeyValue {
        key,
        value: Bytes::copy_from_slice(kv.value()),
        create_revision: kv.create_revision().max(0) as Revision,
        mod_revision: kv.mod_revision().max(0) as Revision,
    })
}

/// A watch event as the store delivers it: a delete carries the key's last value, from etcd's
/// previous key-value (or, should etcd not have it, from `fallback`).
fn event_from_etcd(root_len: usize, e: &etcd::Event, fallback: impl Fn(&str) -> Option<KeyValue>) -> Option<Event> {
    let kv = from_etcd(root_len, e.kv()?)?;
    match e.event_type() {
        etcd::EventType::Put => Some(Event { kind: EventKind::Put, kv }),
        etcd::EventType::Delete => {
            let last = e.prev_kv().and_then(|p| from_etcd(root_len, p)).or_else(|| fallback(&kv.key));
            let (value, create_revision) = last.map(|l| (l.value, l.create_revision)).unwrap_or_default();
            Some(Event {
                kind: EventKind::Delete,
                kv: KeyValue {
                    value,
                    create_revision,
                    ..kv
                },
            })
        }
    }
}

/// Every key of the cluster, read page by page at one revision.
async fn load(client: &etcd::Client, config: &EtcdConfig) -> Result<(BTreeMap<String, KeyValue>, Revision)> {
    let root = config.root();
    let end = etcd_range_end(&root);
    let mut kv = client.kv_client();
    let mut kvs = BTreeMap::new();
    let mut start = root.clone().into_bytes();
    let mut revision = 0;
    loop {
        let mut options = etcd::GetOptions::new().with_range(end.clone()).with_limit(PAGE);
        if revision > 0 {
            options = options.with_revision(revision);
        }
        let page = bounded(config, "a range read", kv.get(start.clone(), Some(options))).await?;
        if revision == 0 {
            revision = page.header().map_or(0, |h| h.revision());
        }
        for item in page.kvs() {
            if let Some(kv) = from_etcd(root.len(), item) {
                kvs.insert(kv.key.clone(), kv);
            }
        }
        match page.kvs().last() {
            Some(last) if page.more() => {
                start = last.key().to_vec();
                start.push(0);
            }
            _ => break,
        }
    }
    Ok((kvs, revision.max(0) as Revision))
}

impl EtcdStore {
    /// Connects to etcd and loads the cluster's keys; while etcd cannot be reached it tries
    /// again, with back-off, for `config.connect_for`.
    pub async fn open(config: EtcdConfig) -> Result<EtcdStore> {
        let open_err = |message: String| StoreError::Open {
            path: format!("etcd://{}", config.describe()),
            message,
        };
        let options = config
            .connect_options(Duration::from_secs(2))
            // A member whose machine died sends no reset: its connection looks alive, and the
            // requests and the mirror's watch on it hang until a ping goes unanswered. Pings
            // every 6 s (etcd refuses them more often than every 5 s) with 3 s to answer find
            // it within 9 s, and the client moves to the other members.
            .with_keep_alive(KEEP_ALIVE, KEEP_ALIVE_TIMEOUT)
            .with_keep_alive_while_idle(true)
            // A member cut off from its quorum answers at once rather than after etcd's own
            // request timeout: the API says "unavailable" while another member may still lead.
            .with_require_leader(true);
        let client = etcd::Client::connect(&config.endpoints, Some(options))
            .await
            .map_err(|e| open_err(e.to_string()))?;
        let deadline = tokio::time::Instant::now() + config.connect_for;
        let mut pause = Duration::from_millis(200);
        let (kvs, revision) = loop {
            match load(&client, &config).await {
                Ok(loaded) => break loaded,
                Err(e) if tokio::time::Instant::now() + pause < deadline => {
                    tracing::warn!(etcd = %config.describe(), error = %e, retry_in_ms = pause.as_millis() as u64, "etcd is not reachable yet");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(MAX_BACKOFF);
                }
                Err(e) => {
                    return Err(open_err(format!("not reachable for {} s ({e})", config.connect_for.as_secs())));
                }
            }
        };
        let (seen, _) = watch::channel(revision);
        let (stop, stopped) = watch::channel(());
        let inner = Arc::new(Inner {
            client,
            config,
            mirror: RwLock::new(Mirror { kvs, revision }),
            seen,
            compacted: AtomicU64::new(0),
            trouble: RwLock::new(None),
            _stop: stop,
        });
        tokio::spawn(follow(Arc::downgrade(&inner), revision, stopped.clone()));
        tokio::spawn(learn_compacted(Arc::downgrade(&inner), stopped.clone()));
        tokio::spawn(keep_members(Arc::downgrade(&inner), stopped));
        tracing::info!(etcd = %inner.config.describe(), prefix = %inner.config.prefix, revision, "store on etcd");
        Ok(EtcdStore { inner })
    }

    /// The configuration it was opened with.
    pub fn config(&self) -> &EtcdConfig {
        &self.inner.config
    }

    pub(crate) fn client(&self) -> &etcd::Client {
        &self.inner.client
    }

    /// The etcd key of a store key.
    pub(crate) fn etcd_key(&self, key: &str) -> String {
        self.inner.config.key(key)
    }

    /// Runs one etcd request with the store's deadline.
    pub(crate) async fn bounded<T>(&self, what: &str, f: impl Future<Output = Result<T, etcd::Error>>) -> Result<T> {
        bounded(&self.inner.config, what, f).await
    }
}

impl Inner {
    fn set_trouble(&self, trouble: Option<String>) {
        // Most calls (each watch response) say "still fine": a read lock answers those.
        if trouble.is_none() && self.trouble.read().unwrap_or_else(|p| p.into_inner()).is_none() {
            return;
        }
        let mut current = self.trouble.write().unwrap_or_else(|p| p.into_inner());
        match (current.as_ref(), &trouble) {
            (None, Some(t)) => tracing::warn!(etcd = %self.config.describe(), problem = %t, "the store lost etcd"),
            (Some(_), None) => tracing::info!(etcd = %self.config.describe(), "the store reaches etcd again"),
            _ => {}
        }
        *current = trouble;
    }

    /// Passes a result on, noting a lost etcd for readiness.
    fn noting_trouble<T>(&self, result: Result<T>) -> Result<T> {
        if let Err(StoreError::Unavailable(why)) = &result {
            self.set_trouble(Some(why.clone()));
        }
        result
    }

    /// Read-your-writes: waits until the mirror's watch has delivered `revision`, this
    /// replica's own write.
    async fn read_own_write(&self, revision: Revision) {
        let mut seen = self.seen.subscribe();
        if tokio::time::timeout(REQUEST_TIMEOUT, seen.wait_for(|r| *r >= revision))
            .await
            .is_err()
        {
            tracing::warn!(etcd = %self.config.describe(), revision, "the store's mirror has not seen its own write yet");
        }
    }

    fn mirror_get(&self, key: &str) -> Option<KeyValue> {
        self.mirror.read().unwrap_or_else(|p| p.into_inner()).kvs.get(key).cloned()
    }
}

/// Keeps the mirror current: one watch over the cluster's keys from the mirror's revision; a
/// broken watch is opened again where it stopped, and a mirror that fell behind compaction is
/// loaded again.
async fn follow(inner: std::sync::Weak<Inner>, mut revision: Revision, mut stop: watch::Receiver<()>) {
    let mut pause = Duration::from_millis(100);
    loop {
        let Some(store) = inner.upgrade() else { return };
        let root = store.config.root();
        // No previous values: the mirror needs only the keys of deletes (etcd would read the
        // previous version of every key for each event).
        let options = etcd::WatchOptions::new().with_prefix().with_start_revision(revision as i64 + 1);
        let mut client = store.client.watch_client();
        let opened = tokio::time::timeout(REQUEST_TIMEOUT, client.watch(root.clone(), Some(options))).await;
        let mut stream = match opened {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                store.set_trouble(Some(classify(&store.config, e).to_string()));
                drop(store);
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MAX_BACKOFF);
                continue;
            }
            Err(_) => {
                store.set_trouble(Some(format!("etcd at {} did not open a watch", store.config.describe())));
                drop(store);
                continue;
            }
        };
        drop(store);
        loop {
            let message = tokio::select! {
                _ = stop.changed() => return,
                m = stream.message() => m,
            };
            let Some(store) = inner.upgrade() else { return };
            match message {
                Ok(Some(resp)) if resp.canceled() => {
                    if resp.compact_revision() > 0 {
                        // Fell behind compaction: read everything again.
                        match load(&store.client, &store.config).await {
                            Ok((kvs, rev)) => {
                                let mut m = store.mirror.write().unwrap_or_else(|p| p.into_inner());
                                m.kvs = kvs;
                                m.revision = rev;
                                drop(m);
                                revision = rev;
                                store.seen.send_replace(rev);
                            }
                            Err(e) => store.set_trouble(Some(e.to_string())),
                        }
                    }
                    break;
                }
                Ok(Some(resp)) => {
                    pause = Duration::from_millis(100);
                    store.set_trouble(None);
                    if resp.events().is_empty() {
                        continue;
                    }
                    let mut m = store.mirror.write().unwrap_or_else(|p| p.into_inner());
                    for e in resp.events() {
                        let Some(event) = event_from_etcd(root.len(), e, |_| None) else {
                            continue;
                        };
                        revision = revision.max(event.kv.mod_revision);
                        match event.kind {
                            EventKind::Put => {
                                m.kvs.insert(event.kv.key.clone(), event.kv);
                            }
                            EventKind::Delete => {
                                m.kvs.remove(&event.kv.key);
                            }
                        }
                    }
                    m.revision = revision;
                    drop(m);
                    store.seen.send_replace(revision);
                }
                Ok(None) | Err(_) => {
                    let why = match message {
                        Err(e) => classify(&store.config, e).to_string(),
                        _ => format!("etcd at {} closed the watch", store.config.describe()),
                    };
                    store.set_trouble(Some(why));
                    break;
                }
            }
        }
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(MAX_BACKOFF);
    }
}

/// Learns how far etcd's history has been compacted (by anyone sharing it): a watch from the
/// first revision is cancelled with the compacted revision when there is one.
async fn learn_compacted(inner: std::sync::Weak<Inner>, mut stop: watch::Receiver<()>) {
    let Some(store) = inner.upgrade() else { return };
    let probe = format!("{}\u{0}compaction-probe", store.config.prefix);
    let mut client = store.client.watch_client();
    drop(store);
    let Ok(Ok(mut stream)) = tokio::time::timeout(
        REQUEST_TIMEOUT,
        client.watch(probe, Some(etcd::WatchOptions::new().with_start_revision(1))),
    )
    .await
    else {
        return;
    };
    let deadline = tokio::time::sleep(REQUEST_TIMEOUT);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = &mut deadline => return,
            m = stream.message() => match m {
                Ok(Some(resp)) if resp.canceled() => {
                    if let Some(store) = inner.upgrade() {
                        store.compacted.fetch_max(resp.compact_revision().max(0) as Revision, Ordering::SeqCst);
                    }
                    return;
                }
                Ok(Some(_)) => {}
                _ => return,
            }
        }
    }
}

impl Store for EtcdStore {
    fn revision(&self) -> Revision {
        *self.inner.seen.borrow()
    }

    fn compacted_revision(&self) -> Revision {
        self.inner.compacted.load(Ordering::SeqCst)
    }

    fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        Ok(self.inner.mirror_get(key))
    }

    fn range(&self, prefix: &str, start_after: Option<&str>, limit: usize) -> Result<RangeResult> {
        let m = self.inner.mirror.read().unwrap_or_else(|p| p.into_inner());
        let end = prefix_end(prefix);
        let lower = match start_after {
            Some(after) => Bound::Excluded(after),
            None => Bound::Included(prefix),
        };
        let mut kvs = Vec::new();
        let mut more = false;
        for (_, kv) in m.kvs.range::<str, _>((lower, Bound::Excluded(end.as_str()))) {
            if limit > 0 && kvs.len() == limit {
                more = true;
                break;
            }
            kvs.push(kv.clone());
        }
        Ok(RangeResult {
            kvs,
            more,
            revision: m.revision,
        })
    }

    fn txn(&self, txn: Txn) -> BoxFuture<'_, Result<TxnResult>> {
        Box::pin(async move {
            let inner = &self.inner;
            let config = &inner.config;
            let root_len = config.root_len();
            // A lone unconditional put needs no etcd transaction: the same write, on etcd's
            // cheaper put path (about a third more writes per second here).
            if txn.compares.is_empty()
                && let [Op::Put { key, value }] = txn.ops.as_slice()
            {
                let mut kv = inner.client.kv_client();
                let put = kv.put(config.key(key), value.to_vec(), Some(etcd::PutOptions::new().with_prev_key()));
                let response = inner.noting_trouble(bounded(config, "a put", put).await)?;
                let revision = response.header().map_or(0, |h| h.revision()).max(0) as Revision;
                inner.read_own_write(revision).await;
                return Ok(TxnResult {
                    succeeded: true,
                    revision,
                    failed_compare: None,
                    prev: vec![response.prev_key().and_then(|kv| from_etcd(root_len, kv))],
                });
            }
            let mut compares = Vec::new();
            let mut current = Vec::new();
            for c in &txn.compares {
                let key = config.key(c.key());
                let exists = || etcd::Compare::create_revision(key.clone(), etcd::CompareOp::Greater, 0);
                match c {
                    Compare::Exists(_) => compares.push(exists()),
                    Compare::Missing(_) => compares.push(etcd::Compare::create_revision(key.clone(), etcd::CompareOp::Equal, 0)),
                    // etcd reads a missing key's revisions as 0; here, as on redb, the key
                    // must exist.
                    Compare::ModRevision(_, rev) => {
                        compares.push(exists());
                        compares.push(etcd::Compare::mod_revision(key.clone(), etcd::CompareOp::Equal, *rev as i64));
                    }
                    Compare::CreateRevision(_, rev) => {
                        compares.push(exists());
                        compares.push(etcd::Compare::create_revision(key.clone(), etcd::CompareOp::Equal, *rev as i64));
                    }
                }
                // When the transaction fails, these reads tell which compare did not hold.
                current.push(etcd::TxnOp::get(key, None));
            }
            let ops: Vec<etcd::TxnOp> = txn
                .ops
                .iter()
                .map(|op| match op {
                    Op::Put { key, value } => {
                        etcd::TxnOp::put(config.key(key), value.to_vec(), Some(etcd::PutOptions::new().with_prev_key()))
                    }
                    Op::Delete { key } => etcd::TxnOp::delete(config.key(key), Some(etcd::DeleteOptions::new().with_prev_key())),
                })
                .collect();
            let request = etcd::Txn::new().when(compares).and_then(ops).or_else(current);
            let mut kv = inner.client.kv_client();
            let response = inner.noting_trouble(bounded(config, "a transaction", kv.txn(request)).await)?;
            let revision = response.header().map_or(0, |h| h.revision()).max(0) as Revision;
            if !response.succeeded() {
                let found: Vec<Option<KeyValue>> = response
                    .op_responses()
                    .iter()
                    .map(|r| match r {
                        etcd::TxnOpResponse::Get(g) => g.kvs().first().and_then(|kv| from_etcd(root_len, kv)),
                        _ => None,
                    })
                    .collect();
                let failed = txn.compares.iter().zip(&found).position(|(c, now)| !c.holds(now.as_ref()));
                return Ok(TxnResult {
                    succeeded: false,
                    revision,
                    failed_compare: Some(failed.unwrap_or(0)),
                    prev: Vec::new(),
                });
            }
            let prev: Vec<Option<KeyValue>> = response
                .op_responses()
                .iter()
                .map(|r| match r {
                    etcd::TxnOpResponse::Put(p) => p.prev_key().and_then(|kv| from_etcd(root_len, kv)),
                    etcd::TxnOpResponse::Delete(d) => d.prev_kvs().first().and_then(|kv| from_etcd(root_len, kv)),
                    _ => None,
                })
                .collect();
            let changed = txn
                .ops
                .iter()
                .zip(&prev)
                .any(|(op, prev)| matches!(op, Op::Put { .. }) || prev.is_some());
            if changed {
                inner.read_own_write(revision).await;
            }
            Ok(TxnResult {
                succeeded: true,
                revision,
                failed_compare: None,
                prev,
            })
        })
    }

    fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream> {
        crate::retained(after, self.compacted_revision())?;
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(relay(self.inner.clone(), prefix.to_owned(), after, tx));
        Ok(rx)
    }

    fn compact(&self, revision: Revision) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let to = revision.min(self.revision());
            if to <= self.compacted_revision() {
                return Ok(());
            }
            let mut kv = self.inner.client.kv_client();
            match tokio::time::timeout(REQUEST_TIMEOUT, kv.compact(to as i64, None)).await {
                Ok(Ok(_)) => {}
                // Another replica, or another cluster sharing etcd, compacted as far already.
                Ok(Err(e)) if is_compacted(&e) => {}
                Ok(Err(e)) => return Err(classify(&self.inner.config, e)),
                Err(_) => {
                    return Err(StoreError::Unavailable(format!(
                        "etcd at {} did not compact",
                        self.inner.config.describe()
                    )));
                }
            }
            self.inner.compacted.fetch_max(to, Ordering::SeqCst);
            Ok(())
        })
    }

    fn trouble(&self) -> Option<String> {
        self.inner.trouble.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Keeps the etcd client's balancer to the members that answer. The balancer goes on sending
/// requests to a member whose machine died, each failing only after the connect timeout, so a
/// share of all requests would fail for as long as it is away: a member that does not answer a
/// status request leaves the balancer until it does again (never the last one). Each member is
/// asked over a connection of its own, a real request (TLS and all), so that the probes leave
/// no "rejected connection" in etcd's log as bare TCP connects to a TLS port would.
async fn keep_members(inner: std::sync::Weak<Inner>, mut stop: watch::Receiver<()>) {
    let mut away = std::collections::BTreeSet::new();
    let mut probes_to: HashMap<String, etcd::Client> = HashMap::new();
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(PROBE_EVERY) => {}
        }
        let Some(store) = inner.upgrade() else { return };
        let (config, client) = (store.config.clone(), store.client.clone());
        drop(store);
        if config.endpoints.len() < 2 {
            return;
        }
        let mut probes = Vec::new();
        for endpoint in &config.endpoints {
            probes.push((endpoint.clone(), answers(&mut probes_to, &config, endpoint).await));
        }
        for (endpoint, back) in member_changes(&probes, &away) {
            let url = config.member_url(&endpoint);
            if back {
                if client.add_endpoint(&url).await.is_ok() {
                    tracing::info!(member = %endpoint, "an etcd member answers again");
                    away.remove(&endpoint);
                }
            } else if client.remove_endpoint(&url).await.is_ok() {
                tracing::warn!(member = %endpoint, "an etcd member does not answer; requests go to the others");
                away.insert(endpoint);
            }
        }
    }
}

/// Whether the member at `endpoint` answers a status request within the probe's time, over its
/// own connection in `clients` (made on first use; dropped after a failure, so the next probe
/// connects afresh).
async fn answers(clients: &mut HashMap<String, etcd::Client>, config: &EtcdConfig, endpoint: &str) -> bool {
    let ask = async {
        if !clients.contains_key(endpoint) {
            let options = config.connect_options(PROBE_TIMEOUT);
            let client = etcd::Client::connect([config.member_url(endpoint)], Some(options)).await.ok()?;
            clients.insert(endpoint.to_owned(), client);
        }
        clients.get_mut(endpoint)?.status().await.ok()
    };
    let answered = matches!(tokio::time::timeout(PROBE_TIMEOUT, ask).await, Ok(Some(_)));
    if !answered {
        clients.remove(endpoint);
    }
    answered
}

/// Which members leave the client (false) or come back to it (true), given whether each one's
/// address answered and which ones are away: a silent member leaves while another answers (the
/// client never ends up with none), an away one that answers comes back.
fn member_changes(probes: &[(String, bool)], away: &std::collections::BTreeSet<String>) -> Vec<(String, bool)> {
    let answering = probes.iter().any(|(_, ok)| *ok);
    probes
        .iter()
        .filter(|(endpoint, ok)| {
            if *ok {
                away.contains(endpoint)
            } else {
                answering && !away.contains(endpoint)
            }
        })
        .map(|(endpoint, ok)| (endpoint.clone(), *ok))
        .collect()
}

/// One watcher's etcd watch, relayed as store events; reopened where it stopped when the
/// connection breaks, ended with `Compacted` when etcd no longer has the revisions it needs.
/// An event goes out once the store's mirror has its revision: a watcher acting on it reads
/// (`get`, `range`) at least what it was told, never an older world (a controller seeing a
/// namespace appear must find it when it creates something in it).
async fn relay(inner: Arc<Inner>, prefix: String, after: Revision, tx: mpsc::Sender<Result<Event>>) {
    let config = inner.config.clone();
    let root_len = config.root_len();
    let weak = Arc::downgrade(&inner);
    let client = inner.client.clone();
    let mut mirrored = inner.seen.subscribe();
    drop(inner);
    let mut last = after;
    let mut pause = Duration::from_millis(100);
    loop {
        let options = etcd::WatchOptions::new()
            .with_range(etcd_range_end(&config.key(&prefix)))
            .with_start_revision(last as i64 + 1)
            .with_prev_key();
        let mut wc = client.watch_client();
        let opened = tokio::select! {
            _ = tx.closed() => return,
            r = tokio::time::timeout(REQUEST_TIMEOUT, wc.watch(config.key(&prefix), Some(options))) => r,
        };
        if let Ok(Ok(mut stream)) = opened {
            loop {
                let message = tokio::select! {
                    _ = tx.closed() => return,
                    m = stream.message() => m,
                };
                match message {
                    Ok(Some(resp)) if resp.canceled() => {
                        if resp.compact_revision() > 0 {
                            let _ = tx
                                .send(Err(StoreError::Compacted {
                                    requested: last,
                                    compacted: resp.compact_revision() as Revision,
                                }))
                                .await;
                            return;
                        }
                        break;
                    }
                    Ok(Some(resp)) => {
                        pause = Duration::from_millis(100);
                        let newest = resp.events().iter().filter_map(|e| e.kv()).map(|kv| kv.mod_revision()).max();
                        if let Some(newest) = newest {
                            tokio::select! {
                                _ = tx.closed() => return,
                                _ = mirrored.wait_for(|r| *r >= newest.max(0) as Revision) => {}
                            }
                        }
                        for e in resp.events() {
                            let fallback = |key: &str| weak.upgrade().and_then(|i| i.mirror_get(key));
                            let Some(event) = event_from_etcd(root_len, e, fallback) else {
                                continue;
                            };
                            last = last.max(event.kv.mod_revision);
                            if tx.send(Ok(event)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Ok(None) | Err(_) => break,
                }
            }
        }
        tokio::select! {
            _ = tx.closed() => return,
            _ = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(MAX_BACKOFF);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silent_members_leave_the_client_and_come_back_when_they_answer() {
        let probes =
            |oks: [bool; 3]| -> Vec<(String, bool)> { oks.iter().enumerate().map(|(i, ok)| (format!("m{i}:2379"), *ok)).collect() };
        let away = |names: &[&str]| names.iter().map(|n| format!("{n}:2379")).collect::<std::collections::BTreeSet<_>>();
        assert_eq!(member_changes(&probes([true, true, true]), &away(&[])), []);
        assert_eq!(
            member_changes(&probes([false, true, true]), &away(&[])),
            [("m0:2379".to_owned(), false)]
        );
        // Already away: nothing more to do until it answers, then it comes back.
        assert_eq!(member_changes(&probes([false, true, true]), &away(&["m0"])), []);
        assert_eq!(
            member_changes(&probes([true, true, true]), &away(&["m0"])),
            [("m0:2379".to_owned(), true)]
        );
        // None answers: the client keeps what it has rather than being left with nothing.
        assert_eq!(member_changes(&probes([false, false, false]), &away(&[])), []);
        assert_eq!(
            member_changes(&probes([true, false, false]), &away(&["m0"])),
            [
                ("m0:2379".to_owned(), true),
                ("m1:2379".to_owned(), false),
                ("m2:2379".to_owned(), false)
            ]
        );
    }
}
