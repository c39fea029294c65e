//! The Git source: follows the tracked branch and hands each new commit's manifests to the sync.
//! Local repositories are watched (notify on the refs, debounced) and read in place; remotes are
//! fetched on a jittered interval, at once on a webhook, and with capped back-off after a
//! failure. A failure (unreachable remote, deleted branch, empty repository) is reported and the
//! last good commit stays in force: the source never hands out an empty state because of one.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use git2::Oid;
use notify::RecursiveMode;
use rand::Rng;
use tokio::sync::mpsc;

use crate::repo::{GitRepo, LoadedCommit, Location, RepoError};

/// How the source is set up.
#[derive(Clone, Debug)]
pub struct SourceConfig {
    pub location: Location,
    /// The branch to track; the repository's HEAD branch when unset.
    pub branch: Option<String>,
    /// The directory inside the repository holding the manifests; empty for all of it.
    pub subpath: String,
    /// Where remote mirrors are kept.
    pub data_dir: PathBuf,
    /// How often a remote is fetched (±10 % jitter). Local repositories are also re-checked at
    /// this interval, in case a file-system event was missed.
    pub poll_interval: Duration,
    /// The longest wait between retries after failures.
    pub max_backoff: Duration,
    /// `--kustomize`: the kustomize that builds the tree's roots; `None`: the one found.
    pub kustomize: Option<PathBuf>,
}

impl SourceConfig {
    pub fn new(location: Location, data_dir: PathBuf) -> SourceConfig {
        SourceConfig {
            location,
            branch: None,
            subpath: String::new(),
            data_dir,
            poll_interval: Duration::from_secs(15),
            max_backoff: Duration::from_secs(300),
            kustomize: None,
        }
    }
}

/// What the source reports.
#[derive(Debug)]
pub enum SourceEvent {
    /// A new commit's manifests.
    Commit(CommitUpdate),
    /// Something went wrong; the last commit handed out stays in force.
    Failed(String),
}

/// A commit, its manifests, and how it relates to the one before.
#[derive(Debug)]
pub struct CommitUpdate {
    pub loaded: Arc<LoadedCommit>,
    pub branch: String,
    pub previous: Option<Oid>,
    /// The new commit does not descend from the previous one (history was rewritten).
    pub force_pushed: bool,
    /// When the change was noticed, for latency figures.
    pub noticed_at: Instant,
}

enum Wake {
    Changed,
    Trigger,
    Stop,
}

/// A running source; dropping it stops the source's thread.
#[derive(Debug)]
pub struct GitSource {
    wake: std_mpsc::Sender<Wake>,
}

impl GitSource {
    /// Starts following the repository on a thread of its own (git2 is blocking) and returns
    /// the handle and the stream of events.
    pub fn spawn(config: SourceConfig) -> (GitSource, mpsc::Receiver<SourceEvent>) {
        let (tx, rx) = mpsc::channel(16);
        let (wake_tx, wake_rx) = std_mpsc::channel();
        let watcher_wake = wake_tx.clone();
        std::thread::Builder::new()
            .name("git-source".into())
            .spawn(move || run(config, tx, wake_rx, watcher_wake))
            .expect("spawning a thread");
        (GitSource { wake: wake_tx }, rx)
    }

    /// Asks for a fetch now (a webhook arrived).
    pub fn trigger(&self) {
        let _ = self.wake.send(Wake::Trigger);
    }

    /// A cheap handle that can trigger fetches from elsewhere (the webhook handler).
    pub fn trigger_handle(&self) -> SourceTrigger {
        SourceTrigger { wake: self.wake.clone() }
    }
}

impl Drop for GitSource {
    fn drop(&mut self) {
        let _ = self.wake.send(Wake::Stop);
    }
}

/// Triggers a fetch of a running source.
#[derive(Clone, Debug)]
pub struct SourceTrigger {
    wake: std_mpsc::Sender<Wake>,
}

impl SourceTrigger {
    pub fn trigger(&self) {
        let _ = self.wake.send(Wake::Trigger);
    }
}

fn jittered(d: Duration) -> Duration {
    d.mul_f64(rand::rng().random_range(0.9..1.1))
}

fn run(config: SourceConfig, tx: mpsc::Sender<SourceEvent>, wake: std_mpsc::Receiver<Wake>, wake_tx: std_mpsc::Sender<Wake>) {
    let mut backoff = Duration::from_secs(1);
    let mut last: Option<Arc<LoadedCommit>> = None;
    let mut last_error: Option<String> = None;
    let mut repo: Option<GitRepo> = None;
    let mut _watcher = None;
    let mut noticed_at = Instant::now();
    loop {
        let result = (|| -> Result<Option<CommitUpdate>, RepoError> {
            let r = match repo.as_mut() {
                Some(r) => {
                    r.fetch()?;
                    r
                }
                None => {
                    let mut opened = GitRepo::open(config.location.clone(), config.branch.as_deref(), &config.subpath, &config.data_dir)?;
                    opened.use_kustomize(config.kustomize.clone());
                    match opened.kustomizer() {
                        Ok(k) => tracing::info!(kustomize = %k.describe(), "kustomize roots are built with"),
                        Err(why) => tracing::warn!("kustomize roots cannot be built: {why}"),
                    }
                    if let Location::Local(_) = config.location {
                        _watcher = watch_refs(&opened, wake_tx.clone());
                    }
                    tracing::info!(git.branch = opened.branch(), git.location = %config.location.describe(), "tracking branch");
                    repo.insert(opened)
                }
            };
            let tip = r.tip()?;
            if last.as_ref().is_some_and(|l| l.commit == tip) {
                return Ok(None);
            }
            let previous = last.as_ref().map(|l| l.commit);
            let force_pushed = previous.is_some_and(|p| !r.descends_from(tip, p));
            let loaded = match &last {
                // After a force-push the old commit may be gone; read everything.
                Some(prev) if !force_pushed => r.load_since(prev, tip)?,
                _ => r.load(tip)?,
            };
            Ok(Some(CommitUpdate {
                loaded: Arc::new(loaded),
                branch: r.branch().to_owned(),
                previous,
                force_pushed,
                noticed_at,
            }))
        })();
        let wait = match result {
            Ok(update) => {
                backoff = Duration::from_secs(1);
                last_error = None;
                if let Some(update) = update {
                    if update.force_pushed {
                        tracing::warn!(git.commit = %update.loaded.commit, git.previous = ?update.previous, "branch was force-pushed; reading the new history in full");
                    }
                    last = Some(update.loaded.clone());
                    if tx.blocking_send(SourceEvent::Commit(update)).is_err() {
                        return;
                    }
                }
                jittered(config.poll_interval)
            }
            Err(e) => {
                let msg = e.to_string();
                if last_error.as_ref() != Some(&msg) {
                    tracing::warn!(error = %msg, retry_in = ?backoff, "git source failed; keeping the last good commit");
                    if tx.blocking_send(SourceEvent::Failed(msg.clone())).is_err() {
                        return;
                    }
                    last_error = Some(msg);
                }
                if matches!(e, RepoError::Open { .. }) {
                    repo = None;
                }
                let w = backoff;
                backoff = (backoff * 2).min(config.max_backoff);
                jittered(w)
            }
        };
        match wake.recv_timeout(wait) {
            Ok(Wake::Stop) | Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
            Ok(Wake::Changed | Wake::Trigger) | Err(std_mpsc::RecvTimeoutError::Timeout) => {
                noticed_at = Instant::now();
                // Coalesce a burst of wake-ups into one check.
                while let Ok(w) = wake.try_recv() {
                    if matches!(w, Wake::Stop) {
                        return;
                    }
                }
            }
        }
        if tx.is_closed() {
            return;
        }
    }
}

/// Watches a local repository's refs (loose and packed) so that a commit or push is noticed
/// at once.
fn watch_refs(
    repo: &GitRepo,
    wake: std_mpsc::Sender<Wake>,
) -> Option<notify_debouncer_full::Debouncer<notify::RecommendedWatcher, notify_debouncer_full::RecommendedCache>> {
    let git_dir = repo.git_dir().to_path_buf();
    let mut debouncer = notify_debouncer_full::new_debouncer(
        Duration::from_millis(20),
        Some(Duration::from_millis(5)),
        move |result: notify_debouncer_full::DebounceEventResult| {
            if let Ok(events) = result {
                let relevant = events.iter().any(|e| {
                    e.paths.iter().any(|p| {
                        let s = p.to_string_lossy();
                        !s.ends_with(".lock")
                            // Capstan's own write-back refs are not news.
                            && !crate::refs::is_ours(&s)
                            && (s.contains("/refs/") || s.ends_with("packed-refs") || s.ends_with("HEAD"))
                    })
                });
                if relevant {
                    let _ = wake.send(Wake::Changed);
                }
            }
        },
    )
    .map_err(|e| tracing::warn!(error = %e, "cannot watch the repository; falling back to polling"))
    .ok()?;
    let refs = git_dir.join("refs");
    if let Err(e) = debouncer
        .watch(&refs, RecursiveMode::Recursive)
        .and_then(|_| debouncer.watch(&git_dir, RecursiveMode::NonRecursive))
    {
        tracing::warn!(error = %e, "cannot watch the repository; falling back to polling");
        return None;
    }
    Some(debouncer)
}
