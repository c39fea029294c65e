//! The container runtime the node agent drives: a narrow port (what a pod worker needs from a
//! runtime: networks, images, containers, exec, logs, stats) and its Docker Engine adapter on
//! bollard (and, for unit tests, an in-memory fake). The agent's logic never sees bollard types.

mod docker;
#[cfg(any(test, feature = "fake"))]
pub mod fake;

use std::collections::HashMap;
use std::time::Duration;

pub use docker::{Docker, bridge_name};
use futures::stream::BoxStream;

#[derive(Debug, Clone, thiserror::Error)]
pub enum RuntimeError {
    #[error("the container runtime is not reachable: {0}")]
    Unreachable(String),
    /// The image could not be pulled (or, with pull policy Never, is not present).
    #[error("{0}")]
    Image(String),
    #[error("container {container}: {message}")]
    Container { container: String, message: String },
    /// A container of that name exists already.
    #[error("container {container}: the name is in use: {message}")]
    NameInUse { container: String, message: String },
    #[error("network {network}: {message}")]
    Network { network: String, message: String },
    #[error("{0}")]
    Other(String),
}

impl RuntimeError {
    /// Whether the runtime answered that the object does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, RuntimeError::Container { message, .. } if message.contains("No such container") || message.contains("404"))
    }
}

/// When an image is fetched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

impl PullPolicy {
    /// A container's `imagePullPolicy`; anything else reads as `IfNotPresent`, as the API
    /// server's defaults (capstan_api::defaults) have filled it in for every stored pod.
    pub fn parse(policy: &str) -> PullPolicy {
        match policy {
            "Always" => PullPolicy::Always,
            "Never" => PullPolicy::Never,
            _ => PullPolicy::IfNotPresent,
        }
    }
}

/// How a container joins the network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetworkMode {
    /// On a bridge network (the pod sandbox), with an address from its range.
    Network(String),
    /// In the network namespace of another container (the pod's sandbox).
    Container(String),
    /// In a namespace of its own with only loopback, for the caller to connect (Docker's `none`).
    Isolated,
    /// In the host's network namespace (a pod with `hostNetwork`).
    Host,
}

/// Everything needed to create one container.
#[derive(Clone, Debug, Default)]
pub struct ContainerConfig {
    pub name: String,
    pub image: String,
    /// Replaces the image's entrypoint (Kubernetes' `command`).
    pub entrypoint: Option<Vec<String>>,
    /// Replaces the image's cmd (Kubernetes' `args`).
    pub cmd: Option<Vec<String>>,
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub labels: HashMap<String, String>,
    pub network: Option<NetworkMode>,
    pub hostname: Option<String>,
    /// `host:container[:ro]` bind mounts.
    pub binds: Vec<String>,
    pub memory_limit: Option<i64>,
    pub nano_cpus: Option<i64>,
    pub cpu_shares: Option<i64>,
    pub dns: Vec<String>,
    pub dns_search: Vec<String>,
    pub dns_options: Vec<String>,
    pub extra_hosts: Vec<String>,
    pub stop_signal: Option<String>,
    pub user: Option<String>,
    pub tty: bool,
    /// Keeps stdin open for `kubectl attach` (Kubernetes' `stdin`); `stdin_once` closes it when
    /// the first attached client leaves.
    pub open_stdin: bool,
    pub stdin_once: bool,
    pub privileged: bool,
    /// Docker's PID mode: `container:ID` to see another container's processes (an ephemeral
    /// container's `targetContainerName`), `host` for a pod with `hostPID`.
    pub pid_mode: Option<String>,
    /// Docker's IPC mode: `host` for a pod with `hostIPC`.
    pub ipc_mode: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Created,
    Running,
    Exited,
    Other,
}

/// What the runtime knows about a container.
#[derive(Clone, Debug)]
pub struct ContainerInfo {
    pub id: String,
    pub name: String,
    pub labels: HashMap<String, String>,
    pub state: State,
    pub exit_code: i64,
    pub oom_killed: bool,
    pub error: String,
    /// RFC 3339, as the runtime reports them.
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub image_id: String,
    /// The address on its network, for a sandbox.
    pub ip: Option<String>,
    /// Its main process on the host, while it runs (for its namespaces).
    pub pid: Option<u32>,
}

/// Resource usage of a container.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Usage {
    /// CPU time used so far, in nanoseconds.
    pub cpu_nanos: u64,
    pub memory_bytes: u64,
}

/// The result of running a command in a container.
#[derive(Clone, Debug)]
pub struct ExecResult {
    pub exit_code: i64,
    pub output: String,
}

/// A process to run in a container (exec), or the container's own process to join (attach),
/// and which of its streams to connect.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamSpec {
    /// The command of an exec; empty for an attach.
    pub command: Vec<String>,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

/// Output of a process: with a terminal everything comes as stdout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    Stdout(bytes::Bytes),
    Stderr(bytes::Bytes),
}

/// A process with its streams connected.
pub struct Session {
    /// The exec's id; None for an attach (the container is the process).
    pub exec: Option<String>,
    pub output: BoxStream<'static, Result<Output, RuntimeError>>,
    /// The process's stdin; shutting it down is end of input.
    pub input: std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>,
    /// Whether the client's end of input is passed on: for an exec, and for a container with
    /// `stdinOnce`. Otherwise Kubernetes keeps the container's stdin open for the next client
    /// and its output flowing, where the Engine would end the attach's output.
    pub end_of_input: bool,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Session({:?})", self.exec)
    }
}

/// An exec's state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExecState {
    pub running: bool,
    pub exit_code: Option<i64>,
    /// Its process on the host, while it runs.
    pub pid: Option<u32>,
}

/// Options for reading logs.
#[derive(Clone, Debug, Default)]
pub struct LogOptions {
    pub follow: bool,
    pub tail: Option<u64>,
    pub timestamps: bool,
    pub since_seconds: Option<i64>,
}

/// Something that happened to a container (Docker's `die`, `start`, `oom`, ...).
#[derive(Clone, Debug)]
pub struct Event {
    pub container_id: String,
    pub action: String,
    /// The container's labels (and the runtime's own attributes).
    pub attributes: HashMap<String, String>,
}

/// A node's bridge network.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetworkSpec {
    pub name: String,
    pub subnet: String,
    pub gateway: String,
    pub labels: HashMap<String, String>,
    /// The bridge's MTU; `None`: the Engine's default.
    pub mtu: Option<u32>,
    /// Whether the Engine masquerades traffic leaving the bridge. Off when pod traffic crosses
    /// hosts: pod-to-pod must keep its source address, and the node masquerades the rest.
    pub masquerade: bool,
}

/// The port. Async methods return boxed futures so that the agent can hold `dyn Runtime`.
pub trait Runtime: Send + Sync + 'static {
    fn version(&self) -> futures::future::BoxFuture<'_, Result<String, RuntimeError>>;
    /// Creates the bridge network `spec` describes unless one with its name and subnet exists.
    fn ensure_network<'a>(&'a self, spec: &'a NetworkSpec) -> futures::future::BoxFuture<'a, Result<(), RuntimeError>>;
    fn remove_network<'a>(&'a self, name: &'a str) -> futures::future::BoxFuture<'a, Result<(), RuntimeError>>;
    /// Makes sure the image is present per `policy`; returns its id.
    fn ensure_image<'a>(&'a self, image: &'a str, policy: PullPolicy) -> futures::future::BoxFuture<'a, Result<String, RuntimeError>>;
    fn create<'a>(&'a self, config: &'a ContainerConfig) -> futures::future::BoxFuture<'a, Result<String, RuntimeError>>;
    fn start<'a>(&'a self, id: &'a str) -> futures::future::BoxFuture<'a, Result<(), RuntimeError>>;
    /// Sends `signal` (or the image's stop signal), waits `grace`, then kills.
    fn stop<'a>(
        &'a self,
        id: &'a str,
        grace: Duration,
        signal: Option<&'a str>,
    ) -> futures::future::BoxFuture<'a, Result<(), RuntimeError>>;
    fn remove<'a>(&'a self, id: &'a str) -> futures::future::BoxFuture<'a, Result<(), RuntimeError>>;
    fn inspect<'a>(&'a self, id: &'a str) -> futures::future::BoxFuture<'a, Result<ContainerInfo, RuntimeError>>;
    /// Containers (running or not) carrying all these labels.
    fn list<'a>(&'a self, labels: &'a [(&'a str, &'a str)]) -> futures::future::BoxFuture<'a, Result<Vec<ContainerInfo>, RuntimeError>>;
    fn exec<'a>(
        &'a self,
        id: &'a str,
        cmd: &'a [String],
        timeout: Duration,
    ) -> futures::future::BoxFuture<'a, Result<ExecResult, RuntimeError>>;
    /// Starts `spec.command` in container `id` with the streams `spec` asks for.
    fn exec_session<'a>(&'a self, id: &'a str, spec: &'a StreamSpec) -> futures::future::BoxFuture<'a, Result<Session, RuntimeError>>;
    /// Connects to the streams of container `id`'s own process.
    fn attach<'a>(&'a self, id: &'a str, spec: &'a StreamSpec) -> futures::future::BoxFuture<'a, Result<Session, RuntimeError>>;
    /// Resizes the terminal of an exec, or of container `id` when `exec` is None.
    fn resize<'a>(
        &'a self,
        id: &'a str,
        exec: Option<&'a str>,
        width: u16,
        height: u16,
    ) -> futures::future::BoxFuture<'a, Result<(), RuntimeError>>;
    fn exec_state<'a>(&'a self, exec: &'a str) -> futures::future::BoxFuture<'a, Result<ExecState, RuntimeError>>;
    fn logs<'a>(&'a self, id: &'a str, options: LogOptions) -> BoxStream<'a, Result<bytes::Bytes, RuntimeError>>;
    /// Container events for containers carrying all these labels, from now on.
    fn events<'a>(&'a self, labels: &'a [(&'a str, &'a str)]) -> BoxStream<'a, Result<Event, RuntimeError>>;
    fn usage<'a>(&'a self, id: &'a str) -> futures::future::BoxFuture<'a, Result<Usage, RuntimeError>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_policies() {
        assert_eq!(PullPolicy::parse("Always"), PullPolicy::Always);
        assert_eq!(PullPolicy::parse("Never"), PullPolicy::Never);
        assert_eq!(PullPolicy::parse("IfNotPresent"), PullPolicy::IfNotPresent);
    }
}
