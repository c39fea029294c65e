//! The etcd backend beyond the common contract (tests/store.rs): two stores on one etcd see each
//! other's writes and conflict as replicas do, clusters under different prefixes do not see each
//! other, a lost member or quorum makes writes fail as "unavailable" (never applied in part) and
//! everything recovers by itself, a lost member leaves the client (no write fails on its address), and an unreachable etcd at start is a clear error naming it.
//! Real etcd members on loopback.

use std::sync::Arc;
use std::time::Duration;

use capstan_store::local_etcd::LocalEtcd;
use capstan_store::{Compare, EtcdConfig, EtcdStore, EventKind, Store, StoreError, Txn};

async fn open(etcd: &LocalEtcd, prefix: &str) -> Arc<EtcdStore> {
    let mut config = EtcdConfig::parse(&etcd.url()).unwrap();
    config.prefix = prefix.to_owned();
    Arc::new(EtcdStore::open(config).await.unwrap())
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..400 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what} did not happen within 20 s");
}

/// Writes until one is acknowledged (etcd may need a moment to elect a leader again).
async fn write_eventually(s: &EtcdStore, key: &str) -> u64 {
    for _ in 0..200 {
        match s.txn(Txn::default().put(key, "v")).await {
            Ok(r) => return r.revision,
            Err(StoreError::Unavailable(_)) => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => panic!("writing {key}: {e}"),
        }
    }
    panic!("writing {key}: etcd did not come back");
}

#[tokio::test]
async fn two_replicas_share_one_cluster_and_prefixes_keep_clusters_apart() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = LocalEtcd::start(dir.path(), 1).await.unwrap();
    let a = open(&etcd, "/capstan").await;
    let b = open(&etcd, "/capstan").await;
    let other = open(&etcd, "/capstan-other").await;
    let mut watch_b = b.watch("/", b.revision()).unwrap();
    let created = a
        .txn(Txn::default().when(Compare::Missing("/x".into())).put("/x", "1"))
        .await
        .unwrap();
    assert!(created.succeeded);
    // B's watch delivers A's write, and B's reads catch up.
    let e = tokio::time::timeout(Duration::from_secs(10), watch_b.recv())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!((e.kind, e.kv.key.as_str(), e.revision()), (EventKind::Put, "/x", created.revision));
    eventually("B reads A's write", || b.get("/x").unwrap().is_some()).await;
    // Optimistic concurrency across replicas: A's update wins, B's stale one is refused.
    let won = a
        .txn(
            Txn::default()
                .when(Compare::ModRevision("/x".into(), created.revision))
                .put("/x", "a"),
        )
        .await
        .unwrap();
    assert!(won.succeeded);
    let lost = b
        .txn(
            Txn::default()
                .when(Compare::ModRevision("/x".into(), created.revision))
                .put("/x", "b"),
        )
        .await
        .unwrap();
    assert!(!lost.succeeded);
    assert_eq!(lost.failed_compare, Some(0));
    eventually("B reads A's update", || b.get("/x").unwrap().is_some_and(|kv| kv.value == "a")).await;
    // Another cluster on the same etcd sees none of it, and its keys stay its own.
    assert!(other.get("/x").unwrap().is_none());
    assert!(other.range("/", None, 0).unwrap().kvs.is_empty());
    other.txn(Txn::default().put("/x", "other")).await.unwrap();
    assert_eq!(a.get("/x").unwrap().unwrap().value, "a");
    assert_eq!(other.get("/x").unwrap().unwrap().value, "other");
}

#[tokio::test]
async fn losing_etcd_fails_writes_clearly_and_everything_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let mut etcd = LocalEtcd::start(dir.path(), 1).await.unwrap();
    let s = open(&etcd, "/capstan").await;
    s.txn(Txn::default().put("/before", "1")).await.unwrap();
    let mut watcher = s.watch("/", s.revision()).unwrap();
    etcd.kill(0);
    let err = s.txn(Txn::default().put("/during", "1")).await.unwrap_err();
    match &err {
        StoreError::Unavailable(why) => assert!(why.contains(&etcd.endpoints()[0]), "{why}"),
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(s.trouble().is_some());
    // Reads still answer from the mirror.
    assert_eq!(s.get("/before").unwrap().unwrap().value, "1");
    etcd.restart(0).await.unwrap();
    let rev = write_eventually(&s, "/after").await;
    // Nothing half-written, and the watch opened before the loss goes on without a gap.
    assert!(s.get("/during").unwrap().is_none());
    let e = tokio::time::timeout(Duration::from_secs(20), watcher.recv())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!((e.kv.key.as_str(), e.revision()), ("/after", rev));
    eventually("the store reports etcd reachable again", || s.trouble().is_none()).await;
}

#[tokio::test]
async fn three_members_survive_one_lost_and_report_a_lost_quorum() {
    let dir = tempfile::tempdir().unwrap();
    let mut etcd = LocalEtcd::start(dir.path(), 3).await.unwrap();
    let s = open(&etcd, "/capstan").await;
    s.txn(Txn::default().put("/a", "1")).await.unwrap();
    etcd.kill(0);
    // Two of three keep a quorum: writes go on (after a re-election, if the leader was lost).
    write_eventually(&s, "/b").await;
    etcd.kill(1);
    // One of three cannot write: a clear "unavailable". (A write the last member took before it
    // noticed it had lost its quorum may still be applied, whole, once the quorum is back: an
    // unanswered write's outcome is unknown, as with etcd itself.)
    match s.txn(Txn::default().put("/c", "1").put("/c2", "1")).await {
        Err(StoreError::Unavailable(why)) => assert!(why.contains("etcd at"), "{why}"),
        Ok(_) => panic!("a write succeeded without a quorum"),
        Err(e) => panic!("expected Unavailable, got {e}"),
    }
    etcd.restart(0).await.unwrap();
    etcd.restart(1).await.unwrap();
    let rev = write_eventually(&s, "/d").await;
    eventually("the store to read its last write", || s.revision() >= rev).await;
    let (c, c2) = (s.get("/c").unwrap(), s.get("/c2").unwrap());
    assert_eq!(c.is_some(), c2.is_some(), "a transaction applied in part");
    assert!(s.get("/a").unwrap().is_some() && s.get("/b").unwrap().is_some() && s.get("/d").unwrap().is_some());
}

/// A member that is gone leaves the store's etcd client within seconds: every write after that
/// succeeds (the client's balancer would otherwise go on sending a share of them to its dead
/// address, to fail there); when it is back and another is lost, the same.
#[tokio::test]
async fn a_lost_member_leaves_the_client_so_no_write_fails_on_its_address() {
    let dir = tempfile::tempdir().unwrap();
    let mut etcd = LocalEtcd::start(dir.path(), 3).await.unwrap();
    let s = open(&etcd, "/capstan").await;
    // Once the client has had a few seconds to notice, a hundred writes in a row all succeed.
    let all_succeed = |what: &'static str| {
        let s = s.clone();
        async move {
            write_eventually(&s, "/settle").await;
            tokio::time::sleep(Duration::from_secs(5)).await;
            for i in 0..100 {
                if let Err(e) = s.txn(Txn::default().put(format!("/k{i}"), "v")).await {
                    panic!("write {i} with {what}: {e}");
                }
            }
        }
    };
    etcd.kill(0);
    all_succeed("one member of three gone").await;
    // Back, and another one lost: the client goes on with the two that answer.
    etcd.restart(0).await.unwrap();
    etcd.kill(1);
    all_succeed("the first member back and the second gone").await;
}

#[tokio::test]
async fn an_unreachable_etcd_at_start_is_a_clear_error_naming_it() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut config = EtcdConfig::parse(&format!("etcd://127.0.0.1:{port}")).unwrap();
    config.connect_for = Duration::from_secs(1);
    let err = EtcdStore::open(config).await.unwrap_err().to_string();
    assert!(err.contains(&format!("127.0.0.1:{port}")) && err.contains("not reachable"), "{err}");
    for bad in ["etcd://", "etcd://host", "http://127.0.0.1:2379", "etcd://a:1,b:x"] {
        assert!(EtcdConfig::parse(bad).is_err(), "{bad} was accepted");
    }
}
