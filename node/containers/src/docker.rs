//! The Docker Engine adapter: the runtime port on bollard, over the local socket, with the API
//! version negotiated (the machines' Engine may be older than bollard's default).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::models::{ContainerCreateBody, EndpointSettings, HostConfig, Ipam, IpamConfig, NetworkCreateRequest, NetworkingConfig};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, EventsOptionsBuilder, ListContainersOptionsBuilder, LogsOptionsBuilder,
    RemoveContainerOptionsBuilder, StatsOptionsBuilder, StopContainerOptionsBuilder,
};
use futures::future::{BoxFuture, Shared};
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt, TryStreamExt};

use crate::{
    ContainerConfig, ContainerInfo, Event, ExecResult, ExecState, LogOptions, NetworkMode, NetworkSpec, Output, PullPolicy, Runtime,
    RuntimeError, Session, State, StreamSpec, Usage,
};

/// The Docker Engine, through bollard.
#[derive(Clone, Debug)]
pub struct Docker {
    client: bollard::Docker,
    pulls: Pulls,
}

/// Pulls under way, by image: pods starting together with the same image share one pull (as
/// the kubelet's serialized pulls do) instead of asking the registry once each.
#[derive(Clone, Default)]
struct Pulls(Arc<Mutex<HashMap<String, Shared<BoxFuture<'static, Result<(), String>>>>>>);

impl std::fmt::Debug for Pulls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pulls")
    }
}

impl Pulls {
    /// Pulls `image` through the Engine, or waits for the pull of it already under way.
    async fn pull(&self, client: &bollard::Docker, image: &str) -> Result<(), String> {
        let (client, (repo, tag)) = (client.clone(), split_image(image));
        self.once(image, async move {
            let options = CreateImageOptionsBuilder::default().from_image(&repo).tag(&tag).build();
            let pulled: Result<Vec<_>, _> = client.create_image(Some(options), None, None).try_collect().await;
            pulled.map(drop).map_err(|e| e.to_string())
        })
        .await
    }

    /// Runs `pull` for `image` unless a pull of it is under way; then waits for that one.
    async fn once(&self, image: &str, pull: impl Future<Output = Result<(), String>> + Send + 'static) -> Result<(), String> {
        let shared = {
            let mut under_way = self.0.lock().expect("pulls lock");
            under_way.entry(image.to_owned()).or_insert_with(|| pull.boxed().shared()).clone()
        };
        let result = shared.clone().await;
        let mut under_way = self.0.lock().expect("pulls lock");
        if under_way.get(image).is_some_and(|s| s.ptr_eq(&shared)) {
            under_way.remove(image);
        }
        result
    }
}

fn container_err(id: &str) -> impl Fn(bollard::errors::Error) -> RuntimeError + '_ {
    move |e| RuntimeError::Container {
        container: id.to_owned(),
        message: e.to_string(),
    }
}

/// The Engine's output frames as stdout and stderr (a terminal's output is stdout).
fn session_output(
    output: std::pin::Pin<Box<dyn futures::Stream<Item = Result<bollard::container::LogOutput, bollard::errors::Error>> + Send>>,
    id: String,
) -> BoxStream<'static, Result<Output, RuntimeError>> {
    use bollard::container::LogOutput;
    output
        .filter_map(move |chunk| {
            let item = match chunk {
                Ok(LogOutput::StdErr { message }) => Some(Ok(Output::Stderr(message))),
                Ok(LogOutput::StdOut { message } | LogOutput::Console { message }) => Some(Ok(Output::Stdout(message))),
                Ok(LogOutput::StdIn { .. }) => None,
                Err(e) => Some(Err(container_err(&id)(e))),
            };
            futures::future::ready(item)
        })
        .boxed()
}

impl Docker {
    /// Connects to the local Engine (DOCKER_HOST when set) and negotiates the API version.
    pub async fn connect() -> Result<Docker, RuntimeError> {
        Docker::connect_to(None).await
    }

    /// Connects to the Engine at `host` (`unix:///path`, `tcp://h:p`, `http://h:p`), or the
    /// local one, and negotiates the API version.
    pub async fn connect_to(host: Option<&str>) -> Result<Docker, RuntimeError> {
        let unreachable = |e: bollard::errors::Error| RuntimeError::Unreachable(format!("{}: {e}", host.unwrap_or("the local Engine")));
        let client = match host {
            None => bollard::Docker::connect_with_local_defaults(),
            Some(h) if h.starts_with("unix://") => bollard::Docker::connect_with_socket(h, 120, bollard::API_DEFAULT_VERSION),
            Some(h) if h.starts_with("tcp://") || h.starts_with("http://") => {
                bollard::Docker::connect_with_http(h, 120, bollard::API_DEFAULT_VERSION)
            }
            Some(h) => {
                return Err(RuntimeError::Unreachable(format!(
                    "{h:?} is no Engine address: expected unix:///path, tcp://host:port or http://host:port"
                )));
            }
        }
        .map_err(unreachable)?;
        let client = client.negotiate_version().await.map_err(unreachable)?;
        Ok(Docker {
            client,
            pulls: Pulls::default(),
        })
    }

    pub fn client(&self) -> &bollard::Docker {
        &self.client
    }

    fn info_of(&self, r: bollard::models::ContainerInspectResponse) -> ContainerInfo {
        let state = r.state.clone().unwrap_or_default();
        let status = match state.status {
            Some(bollard::models::ContainerStateStatusEnum::RUNNING) => State::Running,
            Some(bollard::models::ContainerStateStatusEnum::EXITED) | Some(bollard::models::ContainerStateStatusEnum::DEAD) => {
                State::Exited
            }
            Some(bollard::models::ContainerStateStatusEnum::CREATED) => State::Created,
            _ => State::Other,
        };
        let ip = r
            .network_settings
            .as_ref()
            .and_then(|n| n.networks.as_ref())
            .and_then(|nets| nets.values().find_map(|e| e.ip_address.clone().filter(|ip| !ip.is_empty())));
        let nonzero_time = |t: Option<String>| t.filter(|t| !t.starts_with("0001-"));
        let pid = state.pid.and_then(|p| u32::try_from(p).ok()).filter(|p| *p > 0);
        ContainerInfo {
            id: r.id.unwrap_or_default(),
            name: r.name.unwrap_or_default().trim_start_matches('/').to_owned(),
            labels: r.config.and_then(|c| c.labels).unwrap_or_default(),
            state: status,
            exit_code: state.exit_code.unwrap_or(0),
            oom_killed: state.oom_killed.unwrap_or(false),
            error: state.error.unwrap_or_default(),
            started_at: nonzero_time(state.started_at),
            finished_at: nonzero_time(state.finished_at),
            image_id: r.image.unwrap_or_default(),
            ip,
            pid,
        }
    }
}

impl Runtime for Docker {
    fn version(&self) -> BoxFuture<'_, Result<String, RuntimeError>> {
        async move {
            let v = self.client.version().await.map_err(|e| RuntimeError::Unreachable(e.to_string()))?;
            Ok(v.version.unwrap_or_default())
        }
        .boxed()
    }

    fn ensure_network<'a>(&'a self, spec: &'a NetworkSpec) -> BoxFuture<'a, Result<(), RuntimeError>> {
        async move {
            let name = spec.name.as_str();
            if let Ok(existing) = self.client.inspect_network(name, None).await {
                let masquerading = existing
                    .options
                    .as_ref()
                    .and_then(|o| o.get(MASQUERADE_OPTION))
                    .is_none_or(|v| v != "false");
                let same = existing
                    .ipam
                    .and_then(|i| i.config)
                    .is_some_and(|c| c.iter().any(|c| c.subnet.as_deref() == Some(spec.subnet.as_str())));
                if same {
                    if masquerading != spec.masquerade {
                        // Making it again would cut every running pod off its bridge.
                        tracing::warn!(
                            network = name,
                            "the node's network was made with the Engine's masquerading {}: pod traffic across hosts is {}; `capstan down` and start again to change it",
                            if masquerading { "on" } else { "off" },
                            if masquerading { "masqueraded" } else { "not masqueraded by the Engine" },
                        );
                    }
                    return Ok(());
                }
                // The node's range changed: the old network goes (its pods went with it).
                let _ = self.client.remove_network(name).await;
            }
            let request = NetworkCreateRequest {
                name: name.to_owned(),
                driver: Some("bridge".into()),
                ipam: Some(Ipam {
                    driver: Some("default".into()),
                    config: Some(vec![IpamConfig {
                        subnet: Some(spec.subnet.clone()),
                        gateway: Some(spec.gateway.clone()),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }),
                labels: Some(spec.labels.clone()),
                options: Some(network_options(spec)),
                ..Default::default()
            };
            self.client.create_network(request).await.map_err(|e| RuntimeError::Network {
                network: name.to_owned(),
                message: e.to_string(),
            })?;
            Ok(())
        }
        .boxed()
    }

    fn remove_network<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), RuntimeError>> {
        async move {
            self.client.remove_network(name).await.map_err(|e| RuntimeError::Network {
                network: name.to_owned(),
                message: e.to_string(),
            })
        }
        .boxed()
    }

    fn ensure_image<'a>(&'a self, image: &'a str, policy: PullPolicy) -> BoxFuture<'a, Result<String, RuntimeError>> {
        async move {
            let present = self.client.inspect_image(image).await.ok();
            match (policy, &present) {
                (PullPolicy::Never, None) => {
                    return Err(RuntimeError::Image(format!(
                        "Container image \"{image}\" is not present with pull policy of Never"
                    )));
                }
                (PullPolicy::Never | PullPolicy::IfNotPresent, Some(i)) => return Ok(i.id.clone().unwrap_or_default()),
                _ => {}
            }
            match self.pulls.pull(&self.client, image).await {
                Ok(_) => {}
                // Always, but the registry is unreachable: an image already here still serves.
                Err(e) => match present {
                    Some(i) if policy == PullPolicy::Always => return Ok(i.id.unwrap_or_default()),
                    _ => return Err(RuntimeError::Image(format!("failed to pull image \"{image}\": {e}"))),
                },
            }
            let i = self
                .client
                .inspect_image(image)
                .await
                .map_err(|e| RuntimeError::Image(format!("failed to inspect image \"{image}\": {e}")))?;
            Ok(i.id.unwrap_or_default())
        }
        .boxed()
    }

    fn create<'a>(&'a self, c: &'a ContainerConfig) -> BoxFuture<'a, Result<String, RuntimeError>> {
        async move {
            let (network_mode, networking) = match &c.network {
                Some(NetworkMode::Network(n)) => (
                    Some(n.clone()),
                    Some(NetworkingConfig {
                        endpoints_config: Some(HashMap::from([(n.clone(), EndpointSettings::default())])),
                    }),
                ),
                Some(NetworkMode::Container(id)) => (Some(format!("container:{id}")), None),
                Some(NetworkMode::Isolated) => (Some("none".to_owned()), None),
                Some(NetworkMode::Host) => (Some("host".to_owned()), None),
                None => (None, None),
            };
            let joins_other = matches!(c.network, Some(NetworkMode::Container(_)));
            let host = HostConfig {
                binds: (!c.binds.is_empty()).then(|| c.binds.clone()),
                network_mode,
                memory: c.memory_limit,
                nano_cpus: c.nano_cpus,
                cpu_shares: c.cpu_shares,
                // DNS and hosts belong to the sandbox; containers joining it share them.
                dns: (!c.dns.is_empty() && !joins_other).then(|| c.dns.clone()),
                dns_search: (!c.dns_search.is_empty() && !joins_other).then(|| c.dns_search.clone()),
                dns_options: (!c.dns_options.is_empty() && !joins_other).then(|| c.dns_options.clone()),
                extra_hosts: (!c.extra_hosts.is_empty() && !joins_other).then(|| c.extra_hosts.clone()),
                privileged: c.privileged.then_some(true),
                pid_mode: c.pid_mode.clone(),
                ipc_mode: c.ipc_mode.clone(),
                ..Default::default()
            };
            let body = ContainerCreateBody {
                image: Some(c.image.clone()),
                entrypoint: c.entrypoint.clone(),
                cmd: c.cmd.clone(),
                env: Some(c.env.clone()),
                working_dir: c.working_dir.clone(),
                labels: Some(c.labels.clone()),
                hostname: if joins_other { None } else { c.hostname.clone() },
                stop_signal: c.stop_signal.clone(),
                user: c.user.clone(),
                tty: c.tty.then_some(true),
                open_stdin: c.open_stdin.then_some(true),
                stdin_once: c.stdin_once.then_some(true),
                attach_stdin: c.open_stdin.then_some(true),
                host_config: Some(host),
                networking_config: networking,
                ..Default::default()
            };
            let options = CreateContainerOptionsBuilder::default().name(&c.name).build();
            let r = self.client.create_container(Some(options), body).await.map_err(|e| match e {
                bollard::errors::Error::DockerResponseServerError { status_code: 409, message } => RuntimeError::NameInUse {
                    container: c.name.clone(),
                    message,
                },
                e => RuntimeError::Container {
                    container: c.name.clone(),
                    message: e.to_string(),
                },
            })?;
            Ok(r.id)
        }
        .boxed()
    }

    fn start<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), RuntimeError>> {
        async move { self.client.start_container(id, None).await.map_err(container_err(id)) }.boxed()
    }

    fn stop<'a>(&'a self, id: &'a str, grace: Duration, signal: Option<&'a str>) -> BoxFuture<'a, Result<(), RuntimeError>> {
        async move {
            let mut b = StopContainerOptionsBuilder::default().t(grace.as_secs().min(i32::MAX as u64) as i32);
            if let Some(s) = signal {
                b = b.signal(s);
            }
            match self.client.stop_container(id, Some(b.build())).await {
                Ok(()) => Ok(()),
                // 304: already stopped.
                Err(bollard::errors::Error::DockerResponseServerError { status_code: 304, .. }) => Ok(()),
                Err(e) => Err(container_err(id)(e)),
            }
        }
        .boxed()
    }

    fn remove<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), RuntimeError>> {
        async move {
            let options = RemoveContainerOptionsBuilder::default().force(true).v(true).build();
            match self.client.remove_container(id, Some(options)).await {
                Ok(()) | Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => Ok(()),
                Err(e) => Err(container_err(id)(e)),
            }
        }
        .boxed()
    }

    fn inspect<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<ContainerInfo, RuntimeError>> {
        async move {
            let r = self.client.inspect_container(id, None).await.map_err(container_err(id))?;
            Ok(self.info_of(r))
        }
        .boxed()
    }

    fn list<'a>(&'a self, labels: &'a [(&'a str, &'a str)]) -> BoxFuture<'a, Result<Vec<ContainerInfo>, RuntimeError>> {
        async move {
            let filters: HashMap<String, Vec<String>> =
                HashMap::from([("label".to_owned(), labels.iter().map(|(k, v)| format!("{k}={v}")).collect())]);
            let options = ListContainersOptionsBuilder::default().all(true).filters(&filters).build();
            let summaries = self
                .client
                .list_containers(Some(options))
                .await
                .map_err(|e| RuntimeError::Unreachable(e.to_string()))?;
            let mut out = Vec::with_capacity(summaries.len());
            for s in summaries {
                let Some(id) = s.id else { continue };
                match self.client.inspect_container(&id, None).await {
                    Ok(r) => out.push(self.info_of(r)),
                    Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => {}
                    Err(e) => return Err(container_err(&id)(e)),
                }
            }
            Ok(out)
        }
        .boxed()
    }

    fn exec<'a>(&'a self, id: &'a str, cmd: &'a [String], timeout: Duration) -> BoxFuture<'a, Result<ExecResult, RuntimeError>> {
        async move {
            let config = bollard::exec::CreateExecOptions {
                cmd: Some(cmd.to_vec()),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                ..Default::default()
            };
            let exec = self.client.create_exec(id, config).await.map_err(container_err(id))?;
            let run = async {
                let mut output = String::new();
                if let bollard::exec::StartExecResults::Attached { output: mut stream, .. } =
                    self.client.start_exec(&exec.id, None).await.map_err(container_err(id))?
                {
                    while let Some(chunk) = stream.next().await {
                        match chunk {
                            Ok(c) => output.push_str(&c.to_string()),
                            Err(e) => return Err(container_err(id)(e)),
                        }
                    }
                }
                let inspected = self.client.inspect_exec(&exec.id).await.map_err(container_err(id))?;
                Ok(ExecResult {
                    exit_code: inspected.exit_code.unwrap_or(-1),
                    output,
                })
            };
            match tokio::time::timeout(timeout, run).await {
                Ok(r) => r,
                Err(_) => Err(RuntimeError::Container {
                    container: id.to_owned(),
                    message: format!("command timed out after {timeout:?}"),
                }),
            }
        }
        .boxed()
    }

    fn exec_session<'a>(&'a self, id: &'a str, spec: &'a StreamSpec) -> BoxFuture<'a, Result<Session, RuntimeError>> {
        async move {
            let config = bollard::exec::CreateExecOptions {
                cmd: Some(spec.command.clone()),
                attach_stdin: Some(spec.stdin),
                attach_stdout: Some(spec.stdout),
                attach_stderr: Some(spec.stderr),
                tty: Some(spec.tty),
                ..Default::default()
            };
            let exec = self.client.create_exec(id, config).await.map_err(container_err(id))?;
            let start = bollard::exec::StartExecOptions {
                detach: false,
                tty: spec.tty,
                // Output passes in the chunks it comes in, not split into lines.
                output_capacity: Some(64 << 10),
            };
            match self.client.start_exec(&exec.id, Some(start)).await.map_err(container_err(id))? {
                bollard::exec::StartExecResults::Attached { output, input } => Ok(Session {
                    exec: Some(exec.id),
                    output: session_output(output, id.to_owned()),
                    input,
                    end_of_input: true,
                }),
                bollard::exec::StartExecResults::Detached => Err(RuntimeError::Container {
                    container: id.to_owned(),
                    message: "the Engine started the command detached".into(),
                }),
            }
        }
        .boxed()
    }

    fn attach<'a>(&'a self, id: &'a str, spec: &'a StreamSpec) -> BoxFuture<'a, Result<Session, RuntimeError>> {
        async move {
            let options = bollard::query_parameters::AttachContainerOptionsBuilder::default()
                .stream(true)
                .stdin(spec.stdin)
                .stdout(spec.stdout)
                .stderr(spec.stderr)
                .build();
            let inspected = self.client.inspect_container(id, None).await.map_err(container_err(id))?;
            let stdin_once = inspected.config.and_then(|c| c.stdin_once).unwrap_or(false);
            let attached = self.client.attach_container(id, Some(options)).await.map_err(container_err(id))?;
            Ok(Session {
                exec: None,
                output: session_output(attached.output, id.to_owned()),
                input: attached.input,
                end_of_input: stdin_once,
            })
        }
        .boxed()
    }

    fn resize<'a>(&'a self, id: &'a str, exec: Option<&'a str>, width: u16, height: u16) -> BoxFuture<'a, Result<(), RuntimeError>> {
        async move {
            match exec {
                Some(exec) => self
                    .client
                    .resize_exec(exec, bollard::exec::ResizeExecOptions { height, width })
                    .await
                    .map_err(container_err(id)),
                None => {
                    let options = bollard::query_parameters::ResizeContainerTTYOptionsBuilder::default()
                        .h(i32::from(height))
                        .w(i32::from(width))
                        .build();
                    self.client.resize_container_tty(id, options).await.map_err(container_err(id))
                }
            }
        }
        .boxed()
    }

    fn exec_state<'a>(&'a self, exec: &'a str) -> BoxFuture<'a, Result<ExecState, RuntimeError>> {
        async move {
            let inspected = self.client.inspect_exec(exec).await.map_err(container_err(exec))?;
            Ok(ExecState {
                running: inspected.running.unwrap_or(false),
                exit_code: inspected.exit_code,
                pid: inspected.pid.and_then(|p| u32::try_from(p).ok()).filter(|p| *p > 0),
            })
        }
        .boxed()
    }

    fn logs<'a>(&'a self, id: &'a str, o: LogOptions) -> BoxStream<'a, Result<bytes::Bytes, RuntimeError>> {
        let mut b = LogsOptionsBuilder::default()
            .follow(o.follow)
            .stdout(true)
            .stderr(true)
            .timestamps(o.timestamps);
        b = b.tail(&o.tail.map_or_else(|| "all".to_owned(), |t| t.to_string()));
        if let Some(s) = o.since_seconds {
            let since = (std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0)
                - s)
                .max(0);
            b = b.since(since as i32);
        }
        self.client
            .logs(id, Some(b.build()))
            .map(move |r| r.map(|o| o.into_bytes()).map_err(container_err(id)))
            .boxed()
    }

    fn events<'a>(&'a self, labels: &'a [(&'a str, &'a str)]) -> BoxStream<'a, Result<Event, RuntimeError>> {
        let mut filters: HashMap<String, Vec<String>> = HashMap::from([("type".to_owned(), vec!["container".to_owned()])]);
        filters.insert("label".to_owned(), labels.iter().map(|(k, v)| format!("{k}={v}")).collect());
        let options = EventsOptionsBuilder::default().filters(&filters).build();
        self.client
            .events(Some(options))
            .map(|r| {
                let m = r.map_err(|e| RuntimeError::Unreachable(e.to_string()))?;
                let actor = m.actor.unwrap_or_default();
                Ok(Event {
                    container_id: actor.id.unwrap_or_default(),
                    action: m.action.unwrap_or_default(),
                    attributes: actor.attributes.unwrap_or_default(),
                })
            })
            .boxed()
    }

    fn usage<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Usage, RuntimeError>> {
        async move {
            let options = StatsOptionsBuilder::default().stream(false).one_shot(true).build();
            let stats = self
                .client
                .stats(id, Some(options))
                .next()
                .await
                .ok_or_else(|| RuntimeError::Other("no stats".into()))?
                .map_err(container_err(id))?;
            let cpu = stats.cpu_stats.and_then(|c| c.cpu_usage).and_then(|u| u.total_usage).unwrap_or(0);
            let mem = stats.memory_stats.map(|m| {
                // Working set, as the kubelet reports it: usage minus inactive file cache.
                let inactive = m
                    .stats
                    .as_ref()
                    .and_then(|s| s.get("inactive_file").or(s.get("total_inactive_file")).copied())
                    .unwrap_or(0);
                m.usage.unwrap_or(0).saturating_sub(inactive)
            });
            Ok(Usage {
                cpu_nanos: cpu,
                memory_bytes: mem.unwrap_or(0),
            })
        }
        .boxed()
    }
}

/// The bridge driver's option that turns its masquerading off.
const MASQUERADE_OPTION: &str = "com.docker.network.bridge.enable_ip_masquerade";

fn network_options(spec: &NetworkSpec) -> HashMap<String, String> {
    let mut options = HashMap::from([
        ("com.docker.network.bridge.name".to_owned(), bridge_name(&spec.name)),
        (MASQUERADE_OPTION.to_owned(), spec.masquerade.to_string()),
    ]);
    if let Some(mtu) = spec.mtu {
        options.insert("com.docker.network.driver.mtu".to_owned(), mtu.to_string());
    }
    options
}

/// A Linux bridge name (at most 15 characters) for a Docker network.
pub fn bridge_name(network: &str) -> String {
    let h = network
        .bytes()
        .fold(0xcbf29ce484222325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100000001b3));
    format!("cap-{:08x}", h as u32)
}

/// `registry:5000/app:1` into (`registry:5000/app`, `1`); no tag means `latest`.
fn split_image(image: &str) -> (String, String) {
    if image.contains('@') {
        return (image.to_owned(), String::new());
    }
    let last_slash = image.rfind('/').map_or(0, |i| i + 1);
    match image[last_slash..].rfind(':') {
        Some(i) => (image[..last_slash + i].to_owned(), image[last_slash + i + 1..].to_owned()),
        None => (image.to_owned(), "latest".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pulls_of_one_image_under_way_together_are_one_pull() {
        let pulls = Pulls::default();
        let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let pull = |image: &'static str| {
            let count = count.clone();
            let pulls = pulls.clone();
            async move {
                let slow = async move {
                    count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Err("no registry".to_owned())
                };
                pulls.once(image, slow).await
            }
        };
        let together = futures::future::join_all([pull("a:1"), pull("a:1"), pull("a:1"), pull("b:1")]).await;
        assert!(together.iter().all(|r| r == &Err("no registry".to_owned())));
        assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 2, "one pull per image");
        // Once done, the next asks again.
        pull("a:1").await.unwrap_err();
        assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    #[test]
    fn image_references() {
        assert_eq!(split_image("redis"), ("redis".into(), "latest".into()));
        assert_eq!(split_image("redis:7"), ("redis".into(), "7".into()));
        assert_eq!(split_image("127.0.0.1:1/app:1"), ("127.0.0.1:1/app".into(), "1".into()));
        assert_eq!(split_image("127.0.0.1:1/app"), ("127.0.0.1:1/app".into(), "latest".into()));
        assert!(bridge_name("capstan-node-with-a-long-name").len() <= 15);
    }
}
