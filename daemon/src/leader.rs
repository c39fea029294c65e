//! The control plane's singletons — the Git source and sync, the status write-back, the
//! controllers, the scheduler and compaction — run on one replica at a time. On the embedded
//! store that is the only replica. On etcd it is the replica that won the election, and each of
//! its terms writes through a store fenced to that term, so a replica whose term ended cannot
//! write even before it notices; when a term ends its singletons stop and it campaigns again.
//! Every replica serves the API whoever leads.

use std::sync::Arc;
use std::time::Duration;

use capstan_git::source::{GitSource, SourceConfig, SourceEvent};
use capstan_store::Store;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::cache::Cache;
use crate::objects::Objects;
use crate::sync::{GitSync, SyncStatus};
use crate::webhook::TriggerSlot;
use crate::{context, controllers, scheduling, writeback};

/// What every term's singletons are made from.
pub struct Singletons {
    /// The API's objects (unfenced); each term writes through a fenced view of their store.
    pub objects: Objects,
    pub cache: Arc<Cache>,
    pub source: SourceConfig,
    pub target: writeback::Target,
    pub status_interval: Duration,
    pub revert_failed_rollouts: bool,
    pub settings: context::Settings,
    pub metrics: Arc<dyn crate::api::metrics::SummarySource>,
    /// The history kept for watches.
    pub history: HistoryWindow,
    /// The daemon-wide sync status, fed by each term's sync.
    pub sync_status: watch::Sender<SyncStatus>,
    /// Where the webhook finds the running term's Git source.
    pub trigger: TriggerSlot,
    /// The store, as `capstan status` names it (`redb`, `etcd://…`).
    pub store_name: String,
}

/// How this replica comes to lead.
pub enum Election {
    /// It is the only one (the embedded store): it leads from the start.
    Sole,
    /// Through etcd, against the other replicas.
    #[cfg(feature = "etcd")]
    Etcd(capstan_store::EtcdStore, capstan_store::election::ElectionConfig),
}

/// Runs the singletons whenever this replica leads, until `stop`.
pub async fn run(s: Singletons, election: Election, stop: CancellationToken) {
    loop {
        let (objects, term_over, term) = match &election {
            Election::Sole => (s.objects.clone(), stop.child_token(), None),
            #[cfg(feature = "etcd")]
            Election::Etcd(etcd, config) => {
                let Some(term) = etcd.campaign(config, &stop).await else {
                    return;
                };
                let fenced: Arc<dyn Store> = Arc::new(capstan_store::FencedStore::new(
                    s.objects.store().clone(),
                    capstan_store::election::LEADER_KEY,
                    term.revision,
                ));
                (s.objects.with_store(fenced), term.lost(), Some(term))
            }
        };
        let tasks = match start_term(&s, objects.clone(), term_over.clone()) {
            Ok(tasks) => tasks,
            Err(e) => {
                tracing::error!(error = %e, "starting the control plane's singletons");
                Vec::new()
            }
        };
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = term_over.cancelled() => {}
        }
        term_over.cancel();
        for t in tasks {
            let _ = t.await;
        }
        #[cfg(feature = "etcd")]
        if let (Election::Etcd(etcd, _), Some(term)) = (&election, &term)
            && !stop.is_cancelled()
        {
            confirm_over(etcd, &objects, term).await;
        }
        *s.trigger.write().unwrap_or_else(|p| p.into_inner()) = None;
        match (&election, term) {
            #[cfg(feature = "etcd")]
            (Election::Etcd(etcd, _), Some(term)) => {
                if stop.is_cancelled() {
                    etcd.resign(&term).await;
                    return;
                }
                tracing::warn!(term = term.revision, "the term ended: the singletons stopped; campaigning again");
            }
            _ => return,
        }
    }
}

/// After a term ended on this replica's own clock, checks it with etcd: a write through the
/// term's fence must be refused. When etcd still has this replica's key (the lease could not
/// be renewed in time, but has not run out), it resigns, so another replica need not wait.
#[cfg(feature = "etcd")]
async fn confirm_over(etcd: &capstan_store::EtcdStore, objects: &Objects, term: &capstan_store::election::Term) {
    match objects.store().txn(capstan_store::Txn::default()).await {
        Err(capstan_store::StoreError::Fenced(_)) => {
            tracing::info!(
                term = term.revision,
                "the term is over: etcd refuses this replica's writes by the fence"
            );
        }
        Ok(_) => {
            tracing::warn!(term = term.revision, "stepped down before the lease ran out: resigning it");
            etcd.resign(term).await;
        }
        Err(e) => tracing::warn!(term = term.revision, error = %e, "could not check the end of the term with etcd"),
    }
}

/// Starts one term's singletons, writing through `objects`, until `over`.
fn start_term(s: &Singletons, objects: Objects, over: CancellationToken) -> Result<Vec<JoinHandle<()>>, crate::objects::ObjectError> {
    let mut tasks = Vec::new();
    let mut sync = GitSync::new(objects.clone())?;
    let (source, mut events) = GitSource::spawn(s.source.clone());
    *s.trigger.write().unwrap_or_else(|p| p.into_inner()) = Some(source.trigger_handle());
    // Webhook calls that reached another replica.
    let requests = crate::webhook::follow_fetch_requests(objects.store().clone(), source.trigger_handle(), over.clone());
    tasks.push(tokio::spawn(requests));
    let term_status = sync.status();
    let stop = over.clone();
    tasks.push(tokio::spawn(async move {
        // The source lives as long as the term (dropping it stops its fetches).
        let _source = source;
        // Writes that failed (a namespace that does not exist yet, a conflict) are retried
        // by re-applying the last commit in full, as Flux re-reconciles on an interval.
        let mut retry = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = retry.tick() => sync.retry().await,
                event = events.recv() => match event {
                    Some(SourceEvent::Commit(update)) => {
                        sync.apply(&update).await;
                    }
                    Some(SourceEvent::Failed(e)) => sync.source_failed(e).await,
                    None => return,
                }
            }
        }
    }));
    // The daemon-wide status follows this term's sync.
    let (forward, stop) = (s.sync_status.clone(), over.clone());
    let mut from = term_status.clone();
    tasks.push(tokio::spawn(async move {
        forward.send_replace(from.borrow().clone());
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                changed = from.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    forward.send_replace(from.borrow().clone());
                }
            }
        }
    }));
    let writeback = writeback::Settings {
        target: s.target.clone(),
        interval: s.status_interval,
        revert: s.revert_failed_rollouts,
        store_name: s.store_name.clone(),
    };
    tasks.push(tokio::spawn(writeback::run(
        writeback,
        term_status,
        s.cache.clone(),
        objects.store().clone(),
        over.clone(),
    )));
    let ctx = context::Context::new(objects.clone(), s.cache.clone(), s.settings.clone()).with_metrics(s.metrics.clone());
    tasks.extend(controllers::start(ctx.clone(), over.clone()));
    tasks.push(tokio::spawn(scheduling::run(
        ctx,
        capstan_scheduler::Config::default(),
        over.clone(),
    )));
    tasks.push(tokio::spawn(compact(objects.store().clone(), s.history, over)));
    Ok(tasks)
}

/// How much history compaction keeps for watches: everything newer than `window`, as
/// kube-apiserver has etcd keep it (every 5 minutes it compacts to the revision it saw 5 minutes
/// before), but no more than `cap` revisions, so a burst of writes does not grow the history
/// without bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistoryWindow {
    pub window: Duration,
    pub cap: u64,
}

impl Default for HistoryWindow {
    fn default() -> HistoryWindow {
        HistoryWindow {
            window: Duration::from_secs(300),
            cap: 100_000,
        }
    }
}

/// The revision to compact to at `now`, when the store is at `rev`, given the revisions `seen`
/// at earlier looks (oldest first; those no longer needed are dropped): the newest one seen at
/// least a window ago, or `rev - cap` when that is newer.
fn compaction_target(seen: &mut std::collections::VecDeque<(Instant, u64)>, now: Instant, rev: u64, h: HistoryWindow) -> u64 {
    while seen.len() >= 2 && now.duration_since(seen[1].0) >= h.window {
        seen.pop_front();
    }
    let aged = seen
        .front()
        .filter(|(at, _)| now.duration_since(*at) >= h.window)
        .map_or(0, |(_, r)| *r);
    aged.max(rev.saturating_sub(h.cap))
}

/// Compacts the store's history as `history` says, looking every minute (or window, if shorter).
async fn compact(store: Arc<dyn Store>, history: HistoryWindow, stop: CancellationToken) {
    let mut tick = tokio::time::interval(history.window.min(Duration::from_secs(60)));
    let mut seen = std::collections::VecDeque::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {
                let (now, rev) = (Instant::now(), store.revision());
                let target = compaction_target(&mut seen, now, rev, history);
                seen.push_back((now, rev));
                if target > store.compacted_revision()
                    && let Err(e) = store.compact(target).await {
                        tracing::warn!(error = %e, "compaction failed");
                    }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compaction_keeps_a_window_of_history_and_at_most_its_cap() {
        let h = HistoryWindow {
            window: Duration::from_secs(300),
            cap: 1_000,
        };
        let start = Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);
        let mut seen = std::collections::VecDeque::new();
        // Looks every minute while 100 revisions come per minute: nothing is a window old yet.
        for minute in 0..5u64 {
            assert_eq!(compaction_target(&mut seen, at(minute * 60), minute * 100, h), 0);
            seen.push_back((at(minute * 60), minute * 100));
        }
        // At 5 minutes the revision seen at 0 is a window old; at 6 the one seen at 1.
        assert_eq!(compaction_target(&mut seen, at(300), 500, h), 0);
        seen.push_back((at(300), 500));
        assert_eq!(compaction_target(&mut seen, at(360), 600, h), 100);
        seen.push_back((at(360), 600));
        assert!(seen.len() <= 6, "looks older than needed are dropped: {seen:?}");
        // A burst: more than the cap within the window compacts to the cap.
        assert_eq!(compaction_target(&mut seen, at(420), 5_000, h), 4_000);
    }
}
