//! Capstan's controller runtime, in the kube-rs style: a reconcile function returns an
//! [`Action`] (requeue after a delay, or wait for the next change); errors go back on the queue
//! with capped exponential back-off; the [`queue::WorkQueue`] deduplicates keys and never runs
//! one key twice at once. Shared by the daemon's controllers and the node agent.

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

/// A reconcile loop for one kind of key.
pub trait Reconciler<K>: Send + Sync + 'static {
    type Error: Display + Send;
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
                    Err(e) => {
                        let failures = queue.failures(&key) + 1;
                        tracing::warn!(controller = name, key = ?key, failures, error = %e, "reconcile failed; retrying with back-off");
                        queue.add_rate_limited(key.clone());
                    }
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
