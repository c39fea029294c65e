//! Leadership among control-plane replicas that share one etcd. The leader holds one key under
//! the cluster's prefix, attached to an etcd lease it renews; when it dies the lease expires,
//! etcd deletes the key, and a waiting replica creates it. The key's creation revision names the
//! term and is the fence every write of the leader carries ([`crate::FencedStore`]), so a former
//! leader that was paused or cut off cannot write once another leads. Each replica measures time
//! on its own monotonic clock: nothing depends on clocks agreeing, and a wall-clock jump changes
//! nothing.

use std::time::Duration;

use etcd_client as etcd;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::{EtcdStore, Revision};

pub use crate::LEADER_KEY;

/// How a replica campaigns and keeps leadership.
#[derive(Clone, Debug)]
pub struct ElectionConfig {
    /// What the leader key says while this replica leads (its name and API address).
    pub identity: String,
    /// The lease: how long a leader that stopped renewing keeps the key (whole seconds; etcd
    /// raises values below its minimum, 2 s with its default election timeout).
    pub lease: Duration,
    /// How often the leader renews the lease.
    pub renew: Duration,
}

/// One term of leadership.
#[derive(Debug)]
pub struct Term {
    /// The leader key's creation revision: the fence.
    pub revision: Revision,
    lease: i64,
    lost: CancellationToken,
}

impl Term {
    /// Cancelled when the term ends (the lease could not be renewed in time, or it expired).
    pub fn lost(&self) -> CancellationToken {
        self.lost.clone()
    }
}

enum Attempt {
    Won(Term),
    /// Another replica leads; wait for its key to go (watch from after this revision).
    Held(Revision),
}

impl EtcdStore {
    /// Campaigns until this replica leads (or `stop`): `None` when stopped.
    pub async fn campaign(&self, election: &ElectionConfig, stop: &CancellationToken) -> Option<Term> {
        let mut pause = Duration::from_millis(100);
        loop {
            if stop.is_cancelled() {
                return None;
            }
            match self.try_lead(election).await {
                Ok(Attempt::Won(term)) => {
                    tracing::info!(identity = %election.identity, term = term.revision, "leading the control plane");
                    return Some(term);
                }
                Ok(Attempt::Held(after)) => {
                    pause = Duration::from_millis(100);
                    self.wait_for_vacancy(after, election.lease, stop).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "campaigning for leadership");
                    tokio::select! {
                        _ = stop.cancelled() => return None,
                        _ = tokio::time::sleep(pause) => {}
                    }
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    async fn try_lead(&self, election: &ElectionConfig) -> crate::Result<Attempt> {
        let key = self.etcd_key(LEADER_KEY);
        let mut leases = self.client().lease_client();
        // The lease runs on etcd from when it grants it, which is after now.
        let granted_after = Instant::now();
        let grant = self
            .bounded("a lease grant", leases.grant(lease_seconds(election.lease), None))
            .await?;
        let id = grant.id();
        let txn = etcd::Txn::new()
            .when([etcd::Compare::create_revision(key.clone(), etcd::CompareOp::Equal, 0)])
            .and_then([etcd::TxnOp::put(
                key.clone(),
                election.identity.clone(),
                Some(etcd::PutOptions::new().with_lease(id)),
            )]);
        let mut kv = self.client().kv_client();
        let outcome = self.bounded("a campaign", kv.txn(txn)).await;
        let revision = match &outcome {
            Ok(r) => r.header().map_or(0, |h| h.revision()).max(0) as Revision,
            Err(_) => 0,
        };
        match outcome {
            Ok(r) if r.succeeded() => {
                let lost = CancellationToken::new();
                tokio::spawn(keep(self.clone(), id, election.clone(), granted_after, lost.clone()));
                Ok(Attempt::Won(Term { revision, lease: id, lost }))
            }
            other => {
                let _ = tokio::time::timeout(election.renew, leases.revoke(id)).await;
                other.map(|_| Attempt::Held(revision))
            }
        }
    }

    /// Waits until the leader key is deleted (or a lease's time passed: look again anyway).
    async fn wait_for_vacancy(&self, after: Revision, lease: Duration, stop: &CancellationToken) {
        let key = self.etcd_key(LEADER_KEY);
        let mut watches = self.client().watch_client();
        let options = etcd::WatchOptions::new().with_start_revision(after as i64 + 1);
        let wait = async {
            let Ok(mut stream) = watches.watch(key, Some(options)).await else {
                return;
            };
            while let Ok(Some(resp)) = stream.message().await {
                if resp.canceled() || resp.events().iter().any(|e| e.event_type() == etcd::EventType::Delete) {
                    return;
                }
            }
        };
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = wait => {}
            _ = tokio::time::sleep(lease * 2) => {}
        }
    }

    /// Ends the term at once (on shutdown): the lease is revoked, the key goes, and another
    /// replica can lead without waiting for the lease to run out.
    pub async fn resign(&self, term: &Term) {
        term.lost.cancel();
        let mut leases = self.client().lease_client();
        let _ = tokio::time::timeout(Duration::from_secs(2), leases.revoke(term.lease)).await;
        tracing::info!(term = term.revision, "resigned the leadership");
    }

    /// Holds `key` = `value` while this replica runs (under a lease renewed every `renew`, so
    /// it goes within `ttl` of a crash), putting it back whenever it was lost; until `stop`.
    pub async fn announce(&self, key: &str, value: String, ttl: Duration, renew: Duration, stop: CancellationToken) {
        let key = self.etcd_key(key);
        let mut leases = self.client().lease_client();
        let mut kv = self.client().kv_client();
        loop {
            let held = async {
                let grant = self.bounded("a lease grant", leases.grant(lease_seconds(ttl), None)).await.ok()?;
                let id = grant.id();
                let put = kv.put(key.clone(), value.clone(), Some(etcd::PutOptions::new().with_lease(id)));
                self.bounded("a put", put).await.ok()?;
                let (mut keeper, mut stream) = leases.keep_alive(id).await.ok()?;
                loop {
                    tokio::time::sleep(renew).await;
                    if renew_once(&mut keeper, &mut stream, renew).await.is_none_or(|ttl| ttl <= 0) {
                        return Some(());
                    }
                }
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = held => {}
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(renew) => {}
            }
        }
    }
}

/// Renews a lease once: the time to live etcd answers with (0: the lease is gone), or None when
/// no answer came within `within`.
async fn renew_once(keeper: &mut etcd::LeaseKeeper, stream: &mut etcd::LeaseKeepAliveStream, within: Duration) -> Option<i64> {
    tokio::time::timeout(within, async {
        keeper.keep_alive().await.ok()?;
        stream.message().await.ok().flatten().map(|r| r.ttl())
    })
    .await
    .ok()
    .flatten()
}

/// A lease's time to live in etcd's whole seconds (at least 1).
fn lease_seconds(d: Duration) -> i64 {
    d.as_secs().max(1) as i64
}

/// Renews the term's lease until it ends; ends it when a renewal did not come back within the
/// lease (measured from when it was sent, so the leader stops before etcd could expire it).
async fn keep(store: EtcdStore, id: i64, election: ElectionConfig, granted_after: Instant, lost: CancellationToken) {
    let mut leases = store.client().lease_client();
    let mut renewed_at = granted_after;
    let mut channel = None;
    loop {
        tokio::select! {
            _ = lost.cancelled() => return,
            _ = tokio::time::sleep(election.renew) => {}
        }
        if channel.is_none() {
            channel = tokio::time::timeout(election.renew, leases.keep_alive(id))
                .await
                .ok()
                .and_then(Result::ok);
        }
        if let Some((keeper, stream)) = &mut channel {
            let sent = Instant::now();
            match renew_once(keeper, stream, election.renew).await {
                Some(ttl) if ttl > 0 => renewed_at = sent,
                Some(_) => {
                    tracing::warn!(term = %id, "the leadership lease expired: stepping down");
                    lost.cancel();
                    return;
                }
                None => channel = None,
            }
        }
        if renewed_at.elapsed() + election.renew >= election.lease {
            tracing::warn!(
                lease_ms = election.lease.as_millis() as u64,
                "the leadership lease could not be renewed in time: stepping down"
            );
            lost.cancel();
            return;
        }
    }
}
