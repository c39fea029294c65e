//! The work queue every controller runs on: keyed by object, deduplicated (a key queued twice
//! runs once), never running one key twice at once (a key changed while it runs is run again
//! after), delayed requeues, capped exponential back-off with jitter on errors, and an overall
//! rate limit.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Back-off after failures: `base * 2^(failures-1)`, capped, with ±10 % jitter.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff {
            base: Duration::from_millis(50),
            max: Duration::from_secs(300),
        }
    }
}

impl Backoff {
    /// The delay after `failures` consecutive failures (1 for the first).
    pub fn delay(&self, failures: u32) -> Duration {
        let exp = failures.saturating_sub(1).min(30);
        let d = self.base.saturating_mul(1u32 << exp.min(20)).min(self.max);
        d.mul_f64(rand::rng().random_range(0.9..1.1)).min(self.max)
    }
}

struct State<K> {
    ready: VecDeque<K>,
    queued: HashSet<K>,
    running: HashSet<K>,
    /// Keys that changed while running: queued again when they finish.
    dirty: HashSet<K>,
    delayed: BTreeMap<(Instant, u64), K>,
    delayed_at: HashMap<K, (Instant, u64)>,
    failures: HashMap<K, u32>,
    seq: u64,
    closed: bool,
}

enum Step<K> {
    Closed,
    Key(K),
    Wait(Option<Instant>),
}

/// See the module documentation. Cheap to clone.
pub struct WorkQueue<K> {
    state: Arc<Mutex<State<K>>>,
    notify: Arc<Notify>,
    backoff: Backoff,
    /// Smallest interval between two keys handed out (an overall rate limit).
    min_interval: Duration,
    last: Arc<Mutex<Option<Instant>>>,
}

impl<K> Clone for WorkQueue<K> {
    fn clone(&self) -> Self {
        WorkQueue {
            state: self.state.clone(),
            notify: self.notify.clone(),
            backoff: self.backoff,
            min_interval: self.min_interval,
            last: self.last.clone(),
        }
    }
}

impl<K: Clone + Eq + Hash + Debug + Send + 'static> WorkQueue<K> {
    pub fn new(backoff: Backoff, min_interval: Duration) -> WorkQueue<K> {
        WorkQueue {
            state: Arc::new(Mutex::new(State {
                ready: VecDeque::new(),
                queued: HashSet::new(),
                running: HashSet::new(),
                dirty: HashSet::new(),
                delayed: BTreeMap::new(),
                delayed_at: HashMap::new(),
                failures: HashMap::new(),
                seq: 0,
                closed: false,
            })),
            notify: Arc::new(Notify::new()),
            backoff,
            min_interval,
            last: Arc::new(Mutex::new(None)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<K>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `key` now (a no-op if it is already queued).
    pub fn add(&self, key: K) {
        let mut s = self.lock();
        if s.closed {
            return;
        }
        if let Some(at) = s.delayed_at.remove(&key) {
            s.delayed.remove(&at);
        }
        if s.running.contains(&key) {
            s.dirty.insert(key);
            return;
        }
        if s.queued.insert(key.clone()) {
            s.ready.push_back(key);
            drop(s);
            self.notify.notify_one();
        }
    }

    /// Queues `key` after `delay`, unless it is queued sooner anyway.
    pub fn add_after(&self, key: K, delay: Duration) {
        if delay.is_zero() {
            return self.add(key);
        }
        let at = Instant::now() + delay;
        let mut s = self.lock();
        if s.closed || s.queued.contains(&key) {
            return;
        }
        if let Some(existing) = s.delayed_at.get(&key) {
            if existing.0 <= at {
                return;
            }
            let existing = *existing;
            s.delayed.remove(&existing);
        }
        s.seq += 1;
        let slot = (at, s.seq);
        s.delayed.insert(slot, key.clone());
        s.delayed_at.insert(key, slot);
        drop(s);
        self.notify.notify_one();
    }

    /// Queues `key` after its back-off delay, counting one more failure.
    pub fn add_rate_limited(&self, key: K) {
        let failures = {
            let mut s = self.lock();
            let f = s.failures.entry(key.clone()).or_insert(0);
            *f += 1;
            *f
        };
        self.add_after(key, self.backoff.delay(failures));
    }

    /// Forgets the failures of `key` (after a success).
    pub fn forget(&self, key: &K) {
        self.lock().failures.remove(key);
    }

    /// Consecutive failures of `key`.
    pub fn failures(&self, key: &K) -> u32 {
        self.lock().failures.get(key).copied().unwrap_or(0)
    }

    /// The next key to work on; None once the queue is shut down. The caller must call
    /// [`Self::done`] with it.
    pub async fn next(&self) -> Option<K> {
        loop {
            let step = self.step();
            let wait_until = match step {
                Step::Closed => return None,
                Step::Key(key) => {
                    self.pace().await;
                    return Some(key);
                }
                Step::Wait(at) => at,
            };
            match wait_until {
                Some(at) => {
                    tokio::select! {
                        _ = self.notify.notified() => {}
                        _ = tokio::time::sleep_until(at) => {}
                    }
                }
                None => self.notify.notified().await,
            }
        }
    }

    /// Hands out a ready key, or says how long to wait for one.
    fn step(&self) -> Step<K> {
        let mut s = self.lock();
        if s.closed {
            return Step::Closed;
        }
        let now = Instant::now();
        while let Some((&slot, _)) = s.delayed.first_key_value() {
            if slot.0 > now {
                break;
            }
            let key = s.delayed.remove(&slot).expect("first key exists");
            s.delayed_at.remove(&key);
            if s.running.contains(&key) {
                s.dirty.insert(key);
            } else if s.queued.insert(key.clone()) {
                s.ready.push_back(key);
            }
        }
        if let Some(key) = s.ready.pop_front() {
            s.queued.remove(&key);
            s.running.insert(key.clone());
            return Step::Key(key);
        }
        Step::Wait(s.delayed.first_key_value().map(|(slot, _)| slot.0))
    }

    async fn pace(&self) {
        if self.min_interval.is_zero() {
            return;
        }
        let wait = {
            let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let next = last.map_or(now, |l| (l + self.min_interval).max(now));
            *last = Some(next);
            next
        };
        tokio::time::sleep_until(wait).await;
    }

    /// Marks `key` finished; if it changed meanwhile, it is queued again.
    pub fn done(&self, key: &K) {
        let mut s = self.lock();
        s.running.remove(key);
        if s.dirty.remove(key) && s.queued.insert(key.clone()) {
            s.ready.push_back(key.clone());
            drop(s);
            self.notify.notify_one();
        }
    }

    /// Keys queued or waiting (for tests and metrics).
    pub fn len(&self) -> usize {
        let s = self.lock();
        s.ready.len() + s.delayed.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stops handing out keys; `next` returns None.
    pub fn shutdown(&self) {
        self.lock().closed = true;
        self.notify.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn deduplicates_and_never_runs_a_key_twice_at_once() {
        let q: WorkQueue<&str> = WorkQueue::new(Backoff::default(), Duration::ZERO);
        q.add("a");
        q.add("a");
        q.add("b");
        assert_eq!(q.next().await, Some("a"));
        // "a" changes while it runs: it is not handed out again until done.
        q.add("a");
        assert_eq!(q.next().await, Some("b"));
        q.done(&"b");
        assert_eq!(q.len(), 0);
        q.done(&"a");
        assert_eq!(q.next().await, Some("a"));
    }

    #[tokio::test(start_paused = true)]
    async fn delays_and_backoff() {
        let q: WorkQueue<&str> = WorkQueue::new(
            Backoff {
                base: Duration::from_secs(1),
                max: Duration::from_secs(8),
            },
            Duration::ZERO,
        );
        let start = Instant::now();
        q.add_after("x", Duration::from_secs(5));
        q.add_after("x", Duration::from_secs(2)); // the sooner wins
        assert_eq!(q.next().await, Some("x"));
        assert!(start.elapsed() >= Duration::from_secs(2) && start.elapsed() < Duration::from_secs(3));
        q.done(&"x");
        for expected in [1.0, 2.0, 4.0, 8.0, 8.0] {
            let t = Instant::now();
            q.add_rate_limited("x");
            assert_eq!(q.next().await, Some("x"));
            q.done(&"x");
            let secs = t.elapsed().as_secs_f64();
            assert!(
                secs >= expected * 0.89 && secs <= expected * 1.11,
                "expected ~{expected}s, waited {secs}s"
            );
        }
        q.forget(&"x");
        assert_eq!(q.failures(&"x"), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_rate_limit_spaces_keys_out() {
        let q: WorkQueue<u32> = WorkQueue::new(Backoff::default(), Duration::from_millis(100));
        for i in 0..5 {
            q.add(i);
        }
        let t = Instant::now();
        for _ in 0..5 {
            let k = q.next().await.unwrap();
            q.done(&k);
        }
        assert!(t.elapsed() >= Duration::from_millis(400));
    }

    #[test]
    fn the_default_curve_is_capped() {
        let b = Backoff {
            base: Duration::from_secs(10),
            max: Duration::from_secs(300),
        };
        assert!(b.delay(1) >= Duration::from_secs(9) && b.delay(1) <= Duration::from_secs(11));
        assert!(b.delay(3) >= Duration::from_secs(36) && b.delay(3) <= Duration::from_secs(44));
        assert!(b.delay(50) <= Duration::from_secs(300));
    }
}
