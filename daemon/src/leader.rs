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
    /// Revisions of history kept for watches.
    pub history_revisions: u64,
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
    tasks.push(tokio::spawn(compact(objects.store().clone(), s.history_revisions, over)));
    Ok(tasks)
}

/// Keeps a window of history for watches, as kube-apiserver asks etcd to.
async fn compact(store: Arc<dyn Store>, keep: u64, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {
                let rev = store.revision();
                if rev > keep && store.compacted_revision() < rev - keep
                    && let Err(e) = store.compact(rev - keep).await {
                        tracing::warn!(error = %e, "compaction failed");
                    }
            }
        }
    }
}
