//! The redb store's contract: one global revision, compare-and-swap, ranges, watches that
//! deliver every change in order from any retained revision, compaction, and durability across a
//! restart and across `kill -9` (nothing acknowledged is lost).

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use capstan_store::{Compare, EventKind, RedbStore, Store, StoreError, Txn};

fn open(dir: &tempfile::TempDir) -> RedbStore {
    RedbStore::open(&dir.path().join("store.redb")).unwrap()
}

#[tokio::test]
async fn revisions_cas_and_multi_key_transactions() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    assert_eq!(s.revision(), 0);
    let r1 = s
        .txn(Txn::default().when(Compare::Missing("/a".into())).put("/a", "1"))
        .await
        .unwrap();
    assert!(r1.succeeded);
    assert_eq!(r1.revision, 1);
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
    let ok = s
        .txn(Txn::default().when(Compare::ModRevision("/a".into(), 1)).put("/a", "2"))
        .await
        .unwrap();
    assert!(ok.succeeded);
    assert_eq!(ok.prev[0].as_ref().unwrap().value, "1");
    // Several keys at one revision.
    let multi = s.txn(Txn::default().put("/b", "b").put("/c", "c").delete("/a")).await.unwrap();
    assert_eq!(multi.revision, 3);
    assert_eq!(s.get("/b").unwrap().unwrap().mod_revision, 3);
    assert_eq!(s.get("/c").unwrap().unwrap().create_revision, 3);
    assert!(s.get("/a").unwrap().is_none());
    // A failed compare writes nothing, not even the ops that would have succeeded.
    let failed = s
        .txn(Txn::default().when(Compare::Exists("/nope".into())).put("/d", "d"))
        .await
        .unwrap();
    assert!(!failed.succeeded);
    assert!(s.get("/d").unwrap().is_none());
    assert_eq!(s.revision(), 3);
}

#[tokio::test]
async fn ranges_by_prefix_with_pages() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    for i in 0..10 {
        s.txn(Txn::default().put(format!("/pods/ns/p{i}"), "x")).await.unwrap();
    }
    s.txn(Txn::default().put("/pods/other/q", "x").put("/podsx", "no")).await.unwrap();
    let all = s.range("/pods/", None, 0).unwrap();
    assert_eq!(all.kvs.len(), 11);
    assert_eq!(all.revision, 11);
    let page = s.range("/pods/ns/", None, 4).unwrap();
    assert_eq!(page.kvs.len(), 4);
    assert!(page.more);
    let next = s.range("/pods/ns/", Some(&page.kvs[3].key), 4).unwrap();
    assert_eq!(next.kvs[0].key, "/pods/ns/p4");
    let last = s.range("/pods/ns/", Some(&next.kvs[3].key), 4).unwrap();
    assert_eq!(last.kvs.len(), 2);
    assert!(!last.more);
}

#[tokio::test]
async fn watches_deliver_every_change_in_order_from_any_retained_revision() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    for i in 1..=5 {
        s.txn(Txn::default().put(format!("/w/k{}", i % 2), format!("{i}"))).await.unwrap();
    }
    s.txn(Txn::default().put("/other", "x")).await.unwrap();
    // From revision 2: the history (3, 4, 5), then live changes.
    let mut w = s.watch("/w/", 2).unwrap();
    s.txn(Txn::default().delete("/w/k1")).await.unwrap();
    s.txn(Txn::default().put("/w/k9", "9")).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..5 {
        let e = tokio::time::timeout(Duration::from_secs(5), w.recv())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        got.push((
            e.revision(),
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
            (7, EventKind::Delete, "/w/k1".to_string(), "5".to_string()),
            (8, EventKind::Put, "/w/k9".to_string(), "9".to_string()),
        ]
    );
}

#[tokio::test]
async fn many_watchers_and_many_writers_see_the_same_order() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let mut watchers: Vec<_> = (0..20).map(|_| s.watch("/", 0).unwrap()).collect();
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
    assert_eq!(s.revision(), 400);
    for w in &mut watchers {
        let mut revs = Vec::new();
        while revs.len() < 400 {
            let e = tokio::time::timeout(Duration::from_secs(10), w.recv())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            revs.push(e.revision());
        }
        assert_eq!(revs, (1..=400).collect::<Vec<_>>());
    }
}

#[tokio::test]
async fn compaction_answers_too_old() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    for i in 0..10 {
        s.txn(Txn::default().put("/k", format!("{i}"))).await.unwrap();
    }
    s.compact(6).await.unwrap();
    assert_eq!(s.compacted_revision(), 6);
    match s.watch("/", 3) {
        Err(StoreError::Compacted {
            requested: 3,
            compacted: 6,
        }) => {}
        other => panic!("expected Compacted, got {other:?}"),
    }
    let mut w = s.watch("/", 6).unwrap();
    let e = tokio::time::timeout(Duration::from_secs(5), w.recv())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(e.revision(), 7);
    // The data itself is untouched by compaction.
    assert_eq!(s.get("/k").unwrap().unwrap().value, "9");
}

#[tokio::test]
async fn a_reopened_store_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = open(&dir);
        for i in 0..5 {
            s.txn(Txn::default().put(format!("/k{i}"), "v")).await.unwrap();
        }
        s.compact(2).await.unwrap();
    }
    // The writer thread of the first store may still hold the file for a moment.
    let s = loop {
        match RedbStore::open(&dir.path().join("store.redb")) {
            Ok(s) => break s,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    assert_eq!(s.revision(), 5);
    assert_eq!(s.compacted_revision(), 2);
    assert_eq!(s.range("/", None, 0).unwrap().kvs.len(), 5);
    let mut w = s.watch("/", 3).unwrap();
    assert_eq!(w.recv().await.unwrap().unwrap().revision(), 4);
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
