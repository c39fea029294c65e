//! Capstan's controller runtime, in the kube-rs style: a reconcile function returns an
//! [`Action`] (requeue after a delay, or wait for the next change); an error says what to do
//! next ([`Retry`]: back off, wait a given time, or stall until the object changes — Flux's
//! error classes); the [`queue::WorkQueue`] deduplicates keys and never runs one key twice at
//! once. Shared by the daemon's controllers and the node agent.

pub mod https;
pub mod queue;
pub mod ratelog;
pub mod tls;

use std::fmt::{Debug, Display};
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

pub use queue::{Backoff, WorkQueue};
use tokio_util::sync::CancellationToken;

/// Reconciles run by every controller of this process (for benchmarks and metrics).
pub static RECONCILES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// What to do with a key after reconciling it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Reconcile again after this long, even if nothing changes (timers, polling).
    Requeue(Duration),
    /// Nothing to do until something changes.
    AwaitChange,
}

/// What a failed reconcile asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// A transient failure: again with capped exponential back-off.
    Backoff,
    /// Again after this long (a known wait, such as a conflict to re-read at once).
    After(Duration),
    /// Retrying cannot help (the object is invalid as it stands): nothing until it changes.
    Stalled,
}

/// A reconcile error, classified.
pub trait ReconcileError: Display + Send {
    fn retry(&self) -> Retry {
        Retry::Backoff
    }
}

impl ReconcileError for String {}

/// A reconcile loop for one kind of key.
pub trait Reconciler<K>: Send + Sync + 'static {
    type Error: ReconcileError;
    /// Brings the world in line for `key`. Level-triggered: it reads the current state and is
    /// never told what changed.
    fn reconcile(&self, key: K) -> impl Future<Output = Result<Action, Self::Error>> + Send;
}

/// Runs `workers` reconcilers over `queue` until `shutdown`.
pub async fn run<K, R>(name: &'static str, queue: WorkQueue<K>, reconciler: Arc<R>, workers: usize, shutdown: CancellationToken)
where
    K: Clone + Eq + Hash + Debug + Send + Sync + 'static,
    R: Reconciler<K>,
{
    let mut handles = Vec::new();
    for _ in 0..workers.max(1) {
        let queue = queue.clone();
        let reconciler = reconciler.clone();
        let shutdown = shutdown.clone();
        handles.push(tokio::spawn(async move {
            loop {
                let key = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    k = queue.next() => match k {
                        Some(k) => k,
                        None => return,
                    },
                };
                RECONCILES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                match reconciler.reconcile(key.clone()).await {
                    Ok(action) => {
                        queue.forget(&key);
                        if let Action::Requeue(d) = action {
                            queue.add_after(key.clone(), d);
                        }
                    }
                    Err(e) => match e.retry() {
                        Retry::Backoff => {
                            let failures = queue.failures(&key) + 1;
                            tracing::warn!(controller = name, key = ?key, failures, error = %e, "reconcile failed; retrying with back-off");
                            queue.add_rate_limited(key.clone());
                        }
                        Retry::After(d) => {
                            tracing::debug!(controller = name, key = ?key, error = %e, "reconcile deferred");
                            queue.add_after(key.clone(), d);
                        }
                        Retry::Stalled => {
                            tracing::warn!(controller = name, key = ?key, error = %e, "reconcile stalled until the object changes");
                            queue.forget(&key);
                        }
                    },
                }
                queue.done(&key);
            }
        }));
    }
    shutdown.cancelled().await;
    queue.shutdown();
    for h in handles {
        let _ = h.await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    struct Flaky {
        calls: AtomicU32,
        seen: Mutex<Vec<u32>>,
    }

    impl Reconciler<u32> for Flaky {
        type Error = String;
        async fn reconcile(&self, key: u32) -> Result<Action, String> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            self.seen.lock().unwrap().push(key);
            if n < 2 {
                Err(format!("attempt {n}"))
            } else {
                Ok(Action::AwaitChange)
            }
        }
    }

    /// Fails with the given class every time.
    struct Failing {
        retry: Retry,
        calls: AtomicU32,
    }

    #[derive(Debug)]
    struct Classified(Retry);

    impl Display for Classified {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{:?}", self.0)
        }
    }

    impl ReconcileError for Classified {
        fn retry(&self) -> Retry {
            self.0
        }
    }

    impl Reconciler<u32> for Failing {
        type Error = Classified;
        async fn reconcile(&self, _key: u32) -> Result<Action, Classified> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            Err(Classified(self.retry))
        }
    }

    /// Reconciles of one key failing with `retry` for 10 s.
    async fn calls_in_ten_seconds(retry: Retry) -> (u32, WorkQueue<u32>) {
        let q = WorkQueue::new(
            Backoff {
                base: Duration::from_secs(1),
                max: Duration::from_secs(60),
            },
            Duration::ZERO,
        );
        let r = Arc::new(Failing {
            retry,
            calls: AtomicU32::new(0),
        });
        let stop = CancellationToken::new();
        let task = tokio::spawn(run("test", q.clone(), r.clone(), 1, stop.clone()));
        q.add(1);
        tokio::time::sleep(Duration::from_millis(10_500)).await;
        stop.cancel();
        task.await.unwrap();
        (r.calls.load(Ordering::SeqCst), q)
    }

    #[tokio::test(start_paused = true)]
    async fn an_error_says_whether_to_back_off_wait_or_stall() {
        // Back-off 1, 2, 4 s after the first try: tries at 0, 1, 3, 7.
        assert_eq!(calls_in_ten_seconds(Retry::Backoff).await.0, 4);
        // A fixed wait of 2 s: tries at 0, 2, 4, 6, 8, 10.
        assert_eq!(calls_in_ten_seconds(Retry::After(Duration::from_secs(2))).await.0, 6);
        // Stalled: once, and the key is not held back when it changes next.
        let (calls, q) = calls_in_ten_seconds(Retry::Stalled).await;
        assert_eq!(calls, 1);
        assert_eq!(q.failures(&1), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn errors_are_retried_with_backoff_until_they_succeed() {
        let q = WorkQueue::new(
            Backoff {
                base: Duration::from_secs(1),
                max: Duration::from_secs(10),
            },
            Duration::ZERO,
        );
        let r = Arc::new(Flaky {
            calls: AtomicU32::new(0),
            seen: Mutex::new(Vec::new()),
        });
        let stop = CancellationToken::new();
        let task = tokio::spawn(run("test", q.clone(), r.clone(), 2, stop.clone()));
        q.add(7);
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(r.calls.load(Ordering::SeqCst), 3);
        assert_eq!(*r.seen.lock().unwrap(), vec![7, 7, 7]);
        assert_eq!(q.failures(&7), 0, "a success forgets the failures");
        stop.cancel();
        task.await.unwrap();
    }
}
