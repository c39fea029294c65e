//! The store's contract on every backend: one global revision, compare-and-swap, ranges,
//! watches that deliver every change in order from any retained revision, compaction, and
//! keeping everything across a reopen. The same tests run on the embedded redb store, on a
//! one-member etcd and on a three-member etcd (real members on loopback). The redb store's
//! durability across `kill -9` is proven at the end; etcd's fault handling in tests/etcd.rs.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use capstan_store::local_etcd::LocalEtcd;
use capstan_store::{Compare, EtcdConfig, EtcdStore, EventKind, RedbStore, Revision, Store, StoreError, Txn};

/// Which backend a test runs on.
#[derive(Clone, Copy)]
enum Backend {
    Redb,
    Etcd(usize),
}

/// A backend's home for one test: a directory, and the etcd members when on etcd.
struct Fixture {
    backend: Backend,
    dir: tempfile::TempDir,
    etcd: Option<LocalEtcd>,
}

impl Fixture {
    async fn new(backend: Backend) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let etcd = match backend {
            Backend::Redb => None,
            Backend::Etcd(members) => Some(LocalEtcd::start(dir.path(), members).await.unwrap()),
        };
        Fixture { backend, dir, etcd }
    }

    /// Opens the store (again, for a reopen).
    async fn open(&self) -> Arc<dyn Store> {
        match self.backend {
            Backend::Redb => loop {
                // The writer thread of a store just dropped may still hold the file a moment.
                match RedbStore::open(&self.dir.path().join("store.redb")) {
                    Ok(s) => break Arc::new(s),
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            },
            Backend::Etcd(_) => {
                let config = EtcdConfig::parse(&self.etcd.as_ref().unwrap().url()).unwrap();
                Arc::new(EtcdStore::open(config).await.unwrap())
            }
        }
    }
}

/// Each test below, once per backend.
macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {
        mod redb {
            $(#[tokio::test] async fn $name() { super::$name(super::Fixture::new(super::Backend::Redb).await).await })*
        }
        mod etcd {
            $(#[tokio::test] async fn $name() { super::$name(super::Fixture::new(super::Backend::Etcd(1)).await).await })*
        }
        mod etcd3 {
            $(#[tokio::test] async fn $name() { super::$name(super::Fixture::new(super::Backend::Etcd(3)).await).await })*
        }
    };
}

on_every_backend!(
    revisions_cas_and_multi_key_transactions,
    ranges_by_prefix_with_pages,
    watches_deliver_every_change_in_order_from_any_retained_revision,
    many_watchers_and_many_writers_see_the_same_order,
    compaction_answers_too_old,
    a_reopened_store_keeps_everything,
    what_a_watch_delivers_can_be_read,
);

/// The next event of a watch, within a few seconds.
async fn next(w: &mut capstan_store::WatchStream) -> Result<capstan_store::Event, StoreError> {
    tokio::time::timeout(Duration::from_secs(10), w.recv()).await.unwrap().unwrap()
}

/// What a watch from `after` answers when that history is gone: at once, or as its first item.
async fn too_old(s: &dyn Store, after: Revision) -> (Revision, Revision) {
    let first = match s.watch("/", after) {
        Err(e) => Err(e),
        Ok(mut w) => next(&mut w).await.map(|e| e.revision()),
    };
    match first {
        Err(StoreError::Compacted { requested, compacted }) => (requested, compacted),
        other => panic!("expected Compacted, got {other:?}"),
    }
}
async fn revisions_cas_and_multi_key_transactions(f: Fixture) {
    let s = f.open().await;
    // etcd starts at revision 1, redb at 0: revisions below are counted from where it starts.
    let b = s.revision();
    let r1 = s
        .txn(Txn::default().when(Compare::Missing("/a".into())).put("/a", "1"))
        .await
        .unwrap();
    assert!(r1.succeeded);
    assert_eq!(r1.revision, b + 1);
    // Creating again fails: the key exists.
    let again = s
        .txn(Txn::default().when(Compare::Missing("/a".into())).put("/a", "x"))
        .await
        .unwrap();
    assert!(!again.succeeded);
    assert_eq!(again.failed_compare, Some(0));
    // Compare-and-swap on the modification revision.
    let stale = s
        .txn(Txn::default().when(Compare::ModRevision("/a".into(), 0)).put("/a", "2"))
        .await
        .unwrap();
    assert!(!stale.succeeded);
    // A key that does not exist has no modification revision to match, not even 0.
    let absent = s
        .txn(Txn::default().when(Compare::ModRevision("/zz".into(), 0)).put("/zz", "2"))
        .await
        .unwrap();
    assert!(!absent.succeeded);
    // The index names the compare that failed.
    let second = s
        .txn(
            Txn::default()
                .when(Compare::Exists("/a".into()))
                .when(Compare::ModRevision("/a".into(), b + 7))
                .put("/a", "2"),
        )
        .await
        .unwrap();
    assert_eq!(second.failed_compare, Some(1));
    let ok = s
        .txn(Txn::default().when(Compare::ModRevision("/a".into(), b + 1)).put("/a", "2"))
        .await
        .unwrap();
    assert!(ok.succeeded);
    assert_eq!(ok.prev[0].as_ref().unwrap().value, "1");
    // A transaction's write is read back at once.
    assert_eq!(s.get("/a").unwrap().unwrap().value, "2");
    // Several keys at one revision.
    let multi = s.txn(Txn::default().put("/b", "b").put("/c", "c").delete("/a")).await.unwrap();
    assert_eq!(multi.revision, b + 3);
    assert_eq!(multi.prev[2].as_ref().unwrap().value, "2");
    assert_eq!(s.get("/b").unwrap().unwrap().mod_revision, b + 3);
    assert_eq!(s.get("/c").unwrap().unwrap().create_revision, b + 3);
    assert!(s.get("/a").unwrap().is_none());
    // A failed compare writes nothing, not even the ops that would have succeeded.
    let failed = s
        .txn(Txn::default().when(Compare::Exists("/nope".into())).put("/d", "d"))
        .await
        .unwrap();
    assert!(!failed.succeeded);
    assert!(s.get("/d").unwrap().is_none());
    // Deleting what is not there changes nothing, not even the revision.
    s.txn(Txn::default().delete("/nope")).await.unwrap();
    assert_eq!(s.revision(), b + 3);
}

async fn ranges_by_prefix_with_pages(f: Fixture) {
    let s = f.open().await;
    let b = s.revision();
    for i in 0..10 {
        s.txn(Txn::default().put(format!("/pods/ns/p{i}"), "x")).await.unwrap();
    }
    s.txn(Txn::default().put("/pods/other/q", "x").put("/podsx", "no")).await.unwrap();
    let all = s.range("/pods/", None, 0).unwrap();
    assert_eq!(all.kvs.len(), 11);
    assert_eq!(all.revision, b + 11);
    let page = s.range("/pods/ns/", None, 4).unwrap();
    assert_eq!(page.kvs.len(), 4);
    assert!(page.more);
    let next = s.range("/pods/ns/", Some(&page.kvs[3].key), 4).unwrap();
    assert_eq!(next.kvs[0].key, "/pods/ns/p4");
    let last = s.range("/pods/ns/", Some(&next.kvs[3].key), 4).unwrap();
    assert_eq!(last.kvs.len(), 2);
    assert!(!last.more);
}

async fn watches_deliver_every_change_in_order_from_any_retained_revision(f: Fixture) {
    let s = f.open().await;
    let b = s.revision();
    for i in 1..=5 {
        s.txn(Txn::default().put(format!("/w/k{}", i % 2), format!("{i}"))).await.unwrap();
    }
    s.txn(Txn::default().put("/other", "x")).await.unwrap();
    // From the second write: the history (3rd, 4th, 5th), then live changes.
    let mut w = s.watch("/w/", b + 2).unwrap();
    s.txn(Txn::default().delete("/w/k1")).await.unwrap();
    s.txn(Txn::default().put("/w/k9", "9")).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..5 {
        let e = next(&mut w).await.unwrap();
        got.push((
            e.revision() - b,
            e.kind,
            e.kv.key.clone(),
            String::from_utf8(e.kv.value.to_vec()).unwrap(),
        ));
    }
    assert_eq!(
        got,
        [
            (3, EventKind::Put, "/w/k1".to_string(), "3".to_string()),
            (4, EventKind::Put, "/w/k0".to_string(), "4".to_string()),
            (5, EventKind::Put, "/w/k1".to_string(), "5".to_string()),
            // A delete carries the key's last value.
            (7, EventKind::Delete, "/w/k1".to_string(), "5".to_string()),
            (8, EventKind::Put, "/w/k9".to_string(), "9".to_string()),
        ]
    );
}

async fn many_watchers_and_many_writers_see_the_same_order(f: Fixture) {
    let s = f.open().await;
    let b = s.revision();
    let mut watchers: Vec<_> = (0..20).map(|_| s.watch("/", b).unwrap()).collect();
    let mut writers = Vec::new();
    for w in 0..8 {
        let s = s.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..50 {
                s.txn(Txn::default().put(format!("/k{w}-{i}"), "v")).await.unwrap();
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    assert_eq!(s.revision(), b + 400);
    for w in &mut watchers {
        let mut revs = Vec::new();
        while revs.len() < 400 {
            revs.push(next(w).await.unwrap().revision());
        }
        assert_eq!(revs, (b + 1..=b + 400).collect::<Vec<_>>());
    }
}

/// A watcher acting on an event reads at least what it was told, also when another replica
/// (a second store on the same etcd) made the change: a controller that sees a namespace appear
/// finds it when it creates something in it.
async fn what_a_watch_delivers_can_be_read(f: Fixture) {
    let s = f.open().await;
    let writer = match f.backend {
        Backend::Redb => s.clone(),
        Backend::Etcd(_) => f.open().await,
    };
    let mut w = s.watch("/", s.revision()).unwrap();
    let writing = tokio::spawn(async move {
        for i in 0..200 {
            writer.txn(Txn::default().put(format!("/seen/{i}"), "v")).await.unwrap();
        }
    });
    for _ in 0..200 {
        let event = next(&mut w).await.unwrap();
        let read = s.get(&event.kv.key).unwrap();
        assert!(
            read.is_some_and(|kv| kv.mod_revision >= event.kv.mod_revision),
            "{} was delivered at revision {} before it could be read",
            event.kv.key,
            event.kv.mod_revision
        );
    }
    writing.await.unwrap();
}

async fn compaction_answers_too_old(f: Fixture) {
    let s = f.open().await;
    let b = s.revision();
    for i in 0..10 {
        s.txn(Txn::default().put("/k", format!("{i}"))).await.unwrap();
    }
    s.compact(b + 6).await.unwrap();
    assert_eq!(s.compacted_revision(), b + 6);
    assert_eq!(too_old(s.as_ref(), b + 3).await, (b + 3, b + 6));
    let mut w = s.watch("/", b + 6).unwrap();
    assert_eq!(next(&mut w).await.unwrap().revision(), b + 7);
    // The data itself is untouched by compaction.
    assert_eq!(s.get("/k").unwrap().unwrap().value, "9");
}

async fn a_reopened_store_keeps_everything(f: Fixture) {
    let b = {
        let s = f.open().await;
        let b = s.revision();
        for i in 0..5 {
            s.txn(Txn::default().put(format!("/k{i}"), "v")).await.unwrap();
        }
        s.compact(b + 2).await.unwrap();
        b
    };
    let s = f.open().await;
    assert_eq!(s.revision(), b + 5);
    assert_eq!(s.range("/", None, 0).unwrap().kvs.len(), 5);
    // How far history was compacted is known again (etcd's answer comes from etcd itself).
    for _ in 0..100 {
        if s.compacted_revision() == b + 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(s.compacted_revision(), b + 2);
    let mut w = s.watch("/", b + 3).unwrap();
    assert_eq!(next(&mut w).await.unwrap().revision(), b + 4);
}

/// Child side of the kill -9 test: writes keys with 4 concurrent writers and prints each key
/// once its write is acknowledged.
#[tokio::test]
async fn child_writer() {
    let Ok(path) = std::env::var("CAPSTAN_STORE_CHILD") else {
        return;
    };
    let s = RedbStore::open(std::path::Path::new(&path)).unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for w in 0..4 {
        let s = s.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            for i in 0.. {
                let key = format!("/k{w}-{i}");
                let r = s.txn(Txn::default().put(key.clone(), vec![b'x'; 200])).await.unwrap();
                assert!(r.succeeded);
                tx.send(key).unwrap();
            }
        });
    }
    while let Some(key) = rx.recv().await {
        println!("ACK {key}");
    }
}

#[test]
fn nothing_acknowledged_is_lost_to_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_writer", "--nocapture", "--test-threads", "1"])
        .env("CAPSTAN_STORE_CHILD", &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut acked = BTreeSet::new();
    let reader = BufReader::new(child.stdout.take().unwrap());
    for line in reader.lines() {
        let line = line.unwrap();
        if let Some(key) = line.strip_prefix("ACK ") {
            acked.insert(key.to_owned());
        }
        if acked.len() >= 300 {
            break;
        }
    }
    // SIGKILL mid-stream: no chance to flush or shut down.
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(acked.len() >= 300);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let s = RedbStore::open(&path).unwrap();
        for key in &acked {
            assert!(s.get(key).unwrap().is_some(), "acknowledged key {key} was lost");
        }
        // Revisions stay dense: every revision up to the current one is in the log.
        let mut w = s.watch("/", 0).unwrap();
        let mut expect = 1;
        while expect <= s.revision() {
            let e = w.recv().await.unwrap().unwrap();
            assert_eq!(e.revision(), expect);
            expect += 1;
        }
    });
}
