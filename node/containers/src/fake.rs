//! An in-memory container runtime for unit tests of the agent's logic (feature `fake`): it keeps
//! containers as records, runs nothing, and lets a test decide how each image behaves and when a
//! container exits. Its timestamps follow tokio's clock, so tests may pause and advance time.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use tokio::time::Instant;

use crate::{
    ContainerConfig, ContainerInfo, Event, ExecResult, ExecState, LogOptions, NetworkSpec, PullPolicy, Runtime, RuntimeError, Session,
    State, StreamSpec, Usage,
};

/// What a container of an image does once started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    /// Runs until it is stopped (or a test makes it exit).
    Serve,
    /// Exits at once with this code.
    Exit(i64),
}

/// One container the fake holds.
#[derive(Clone, Debug)]
pub struct Record {
    pub info: ContainerInfo,
    pub config: ContainerConfig,
    /// The grace periods it was stopped with.
    pub stops: Vec<Duration>,
}

#[derive(Debug, Default)]
struct Inner {
    containers: Vec<Record>,
    next_id: u64,
    images: HashSet<String>,
    /// Images a pull would fetch.
    pullable: HashSet<String>,
    behaviour: HashMap<String, Behaviour>,
    /// Exit codes of exec'd commands, by container label value (see [`FakeRuntime::exec_exits`]).
    exec: HashMap<String, i64>,
    pulls: u32,
    /// When each container was started, by the name label's value.
    starts: Vec<(String, Instant)>,
}

/// The fake runtime.
#[derive(Debug)]
pub struct FakeRuntime {
    inner: Mutex<Inner>,
    /// The clock's origin: tokio's instant and the wall-clock second it stands for.
    origin: (Instant, i64),
    /// The label whose value names a container for [`FakeRuntime::exec_exits`].
    name_label: String,
    /// Containers' `start` and `die` events, as the Engine streams them.
    events: tokio::sync::broadcast::Sender<Event>,
}

impl FakeRuntime {
    /// A runtime holding no images; `name_label` is the label that names a container in a pod.
    pub fn new(name_label: &str) -> FakeRuntime {
        FakeRuntime {
            inner: Mutex::new(Inner::default()),
            origin: (Instant::now(), 1_700_000_000),
            name_label: name_label.to_owned(),
            events: tokio::sync::broadcast::channel(1024).0,
        }
    }

    /// When containers named `name` (by the name label) were started.
    pub fn starts(&self, name: &str) -> Vec<Instant> {
        self.lock().starts.iter().filter(|(n, _)| n == name).map(|(_, t)| *t).collect()
    }

    fn announce(&self, info: &ContainerInfo, action: &str) {
        let _ = self.events.send(Event {
            container_id: info.id.clone(),
            action: action.to_owned(),
            attributes: info.labels.clone(),
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes `image` present, behaving as said.
    pub fn image(&self, image: &str, behaviour: Behaviour) {
        let mut i = self.lock();
        i.images.insert(image.to_owned());
        i.behaviour.insert(image.to_owned(), behaviour);
    }

    /// Makes `image` fetchable by a pull (it is not present until pulled).
    pub fn pullable(&self, image: &str, behaviour: Behaviour) {
        let mut i = self.lock();
        i.pullable.insert(image.to_owned());
        i.behaviour.insert(image.to_owned(), behaviour);
    }

    /// Changes how containers of `image` started from now on behave.
    pub fn behave(&self, image: &str, behaviour: Behaviour) {
        self.lock().behaviour.insert(image.to_owned(), behaviour);
    }

    /// Commands exec'd in containers named `name` (by the name label) exit with `code`.
    pub fn exec_exits(&self, name: &str, code: i64) {
        self.lock().exec.insert(name.to_owned(), code);
    }

    /// How many pulls were made.
    pub fn pulls(&self) -> u32 {
        self.lock().pulls
    }

    /// Every container held, oldest first.
    pub fn containers(&self) -> Vec<Record> {
        self.lock().containers.clone()
    }

    /// Makes the running container `id` exit with `code` now.
    pub fn exit(&self, id: &str, code: i64) {
        let now = self.now();
        let died = self.find(id, |r| finish(&mut r.info, code, now).then(|| r.info.clone()));
        if let Ok(Some(info)) = died {
            self.announce(&info, "die");
        }
    }

    /// tokio's clock as RFC 3339 (whole seconds, as the Engine's own are compared).
    fn now(&self) -> String {
        let secs = self.origin.1 + Instant::now().duration_since(self.origin.0).as_secs() as i64;
        jiff::Timestamp::from_second(secs).map(|t| t.to_string()).unwrap_or_default()
    }

    fn find<T>(&self, id: &str, f: impl FnOnce(&mut Record) -> T) -> Result<T, RuntimeError> {
        let mut i = self.lock();
        let r = i
            .containers
            .iter_mut()
            .find(|r| r.info.id == id || r.info.name == id)
            .ok_or_else(|| no_such(id))?;
        Ok(f(r))
    }
}

/// The fake runs no processes, so it has no streams to connect.
fn no_streams(id: &str) -> RuntimeError {
    RuntimeError::Container {
        container: id.to_owned(),
        message: "the fake runtime runs no processes".into(),
    }
}

fn no_such(id: &str) -> RuntimeError {
    RuntimeError::Container {
        container: id.to_owned(),
        message: "No such container".into(),
    }
}

/// Ends a running container; false when it was not running.
fn finish(info: &mut ContainerInfo, code: i64, now: String) -> bool {
    if info.state != State::Running {
        return false;
    }
    info.state = State::Exited;
    info.exit_code = code;
    info.finished_at = Some(now);
    info.pid = None;
    true
}

fn ready<'a, T: Send + 'a>(v: T) -> BoxFuture<'a, T> {
    Box::pin(std::future::ready(v))
}

impl Runtime for FakeRuntime {
    fn version(&self) -> BoxFuture<'_, Result<String, RuntimeError>> {
        ready(Ok("fake".into()))
    }

    fn ensure_network<'a>(&'a self, _spec: &'a NetworkSpec) -> BoxFuture<'a, Result<(), RuntimeError>> {
        ready(Ok(()))
    }

    fn remove_network<'a>(&'a self, _name: &'a str) -> BoxFuture<'a, Result<(), RuntimeError>> {
        ready(Ok(()))
    }

    fn ensure_image<'a>(&'a self, image: &'a str, policy: PullPolicy) -> BoxFuture<'a, Result<String, RuntimeError>> {
        let mut i = self.lock();
        let present = i.images.contains(image);
        let result = match policy {
            PullPolicy::Never if !present => Err(RuntimeError::Image(format!(
                "container image \"{image}\" is not present with pull policy of Never"
            ))),
            PullPolicy::IfNotPresent | PullPolicy::Never if present => Ok(format!("sha256:{image}")),
            _ => {
                i.pulls += 1;
                if i.pullable.contains(image) {
                    i.images.insert(image.to_owned());
                    Ok(format!("sha256:{image}"))
                } else {
                    Err(RuntimeError::Image(format!("pull access denied for {image}")))
                }
            }
        };
        ready(result)
    }

    fn create<'a>(&'a self, config: &'a ContainerConfig) -> BoxFuture<'a, Result<String, RuntimeError>> {
        let mut i = self.lock();
        if i.containers.iter().any(|r| r.info.name == config.name) {
            return ready(Err(RuntimeError::NameInUse {
                container: config.name.clone(),
                message: "Conflict".into(),
            }));
        }
        i.next_id += 1;
        let id = format!("fake{:04}", i.next_id);
        let info = ContainerInfo {
            id: id.clone(),
            name: config.name.clone(),
            labels: config.labels.clone(),
            state: State::Created,
            exit_code: 0,
            oom_killed: false,
            error: String::new(),
            started_at: None,
            finished_at: None,
            image_id: format!("sha256:{}", config.image),
            ip: None,
            pid: None,
        };
        i.containers.push(Record {
            info,
            config: config.clone(),
            stops: Vec::new(),
        });
        ready(Ok(id))
    }

    fn start<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), RuntimeError>> {
        let now = self.now();
        let behaviour = {
            let i = self.lock();
            let image = i.containers.iter().find(|r| r.info.id == id).map(|r| r.config.image.clone());
            image.and_then(|im| i.behaviour.get(&im).copied()).unwrap_or(Behaviour::Serve)
        };
        let started = self.find(id, |r| {
            r.info.state = State::Running;
            r.info.started_at = Some(now.clone());
            r.info.finished_at = None;
            r.info.pid = Some(1);
            let before = r.info.clone();
            let exited = matches!(behaviour, Behaviour::Exit(code) if finish(&mut r.info, code, now));
            (before, exited.then(|| r.info.clone()))
        });
        let result = started.map(|(info, died)| {
            let name = info.labels.get(&self.name_label).cloned().unwrap_or_default();
            self.lock().starts.push((name, Instant::now()));
            self.announce(&info, "start");
            if let Some(d) = died {
                self.announce(&d, "die");
            }
        });
        ready(result)
    }

    fn stop<'a>(&'a self, id: &'a str, grace: Duration, _signal: Option<&'a str>) -> BoxFuture<'a, Result<(), RuntimeError>> {
        let now = self.now();
        let stopped = self.find(id, |r| {
            r.stops.push(grace);
            // Stopped by SIGTERM: 128 + 15.
            finish(&mut r.info, 143, now).then(|| r.info.clone())
        });
        if let Ok(Some(info)) = &stopped {
            self.announce(info, "die");
        }
        ready(stopped.map(|_| ()))
    }

    fn remove<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), RuntimeError>> {
        let mut i = self.lock();
        let before = i.containers.len();
        i.containers.retain(|r| r.info.id != id && r.info.name != id);
        ready(if i.containers.len() < before { Ok(()) } else { Err(no_such(id)) })
    }

    fn inspect<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<ContainerInfo, RuntimeError>> {
        ready(self.find(id, |r| r.info.clone()))
    }

    fn list<'a>(&'a self, labels: &'a [(&'a str, &'a str)]) -> BoxFuture<'a, Result<Vec<ContainerInfo>, RuntimeError>> {
        let i = self.lock();
        let found = i
            .containers
            .iter()
            .filter(|r| labels.iter().all(|(k, v)| r.info.labels.get(*k).is_some_and(|x| x == v)))
            .map(|r| r.info.clone())
            .collect();
        ready(Ok(found))
    }

    fn exec<'a>(&'a self, id: &'a str, _cmd: &'a [String], _timeout: Duration) -> BoxFuture<'a, Result<ExecResult, RuntimeError>> {
        let result = self.find(id, |r| r.info.labels.get(&self.name_label).cloned()).map(|name| {
            let code = name.and_then(|n| self.lock().exec.get(&n).copied()).unwrap_or(0);
            ExecResult {
                exit_code: code,
                output: String::new(),
            }
        });
        ready(result)
    }

    fn exec_session<'a>(&'a self, id: &'a str, _spec: &'a StreamSpec) -> BoxFuture<'a, Result<Session, RuntimeError>> {
        ready(Err(no_streams(id)))
    }

    fn attach<'a>(&'a self, id: &'a str, _spec: &'a StreamSpec) -> BoxFuture<'a, Result<Session, RuntimeError>> {
        ready(Err(no_streams(id)))
    }

    fn resize<'a>(&'a self, id: &'a str, _exec: Option<&'a str>, _w: u16, _h: u16) -> BoxFuture<'a, Result<(), RuntimeError>> {
        ready(Err(no_streams(id)))
    }

    fn exec_state<'a>(&'a self, exec: &'a str) -> BoxFuture<'a, Result<ExecState, RuntimeError>> {
        ready(Err(no_streams(exec)))
    }

    fn logs<'a>(&'a self, _id: &'a str, _options: LogOptions) -> BoxStream<'a, Result<bytes::Bytes, RuntimeError>> {
        Box::pin(futures::stream::empty())
    }

    fn events<'a>(&'a self, labels: &'a [(&'a str, &'a str)]) -> BoxStream<'a, Result<Event, RuntimeError>> {
        let rx = self.events.subscribe();
        let stream = futures::stream::unfold(rx, move |mut rx| async move {
            loop {
                match rx.recv().await {
                    Ok(e) if labels.iter().all(|(k, v)| e.attributes.get(*k).is_some_and(|x| x == v)) => {
                        return Some((Ok(e), rx));
                    }
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                }
            }
        });
        Box::pin(stream)
    }

    fn usage<'a>(&'a self, _id: &'a str) -> BoxFuture<'a, Result<Usage, RuntimeError>> {
        ready(Ok(Usage::default()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn containers_follow_their_images_and_the_clock() {
        let rt = FakeRuntime::new("name");
        rt.image("crash", Behaviour::Exit(3));
        assert!(rt.ensure_image("crash", PullPolicy::IfNotPresent).await.is_ok());
        assert!(rt.ensure_image("missing", PullPolicy::Never).await.is_err());
        let config = ContainerConfig {
            name: "a".into(),
            image: "crash".into(),
            ..Default::default()
        };
        let id = rt.create(&config).await.unwrap();
        assert!(matches!(rt.create(&config).await, Err(RuntimeError::NameInUse { .. })));
        tokio::time::advance(Duration::from_secs(61)).await;
        rt.start(&id).await.unwrap();
        let info = rt.inspect(&id).await.unwrap();
        assert_eq!((info.state, info.exit_code), (State::Exited, 3));
        assert_eq!(info.started_at.as_deref(), Some("2023-11-14T22:14:21Z"));
        rt.remove(&id).await.unwrap();
        assert!(rt.inspect(&id).await.unwrap_err().is_not_found());
    }
}
