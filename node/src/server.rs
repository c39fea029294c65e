//! The node's own HTTPS endpoint (the kubelet's port 10250): container logs for the API server's
//! `pods/log` (follow, tail, previous, timestamps, since, limit) and the Summary API (sampled
//! every 10 s, so CPU rates span a window). Callers must present a client certificate signed by
//! the cluster CA.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use capstan_api::meta::{LABEL_CONTAINER, LABEL_NAMESPACE, LABEL_NODE, LABEL_POD, LABEL_POD_UID};
use capstan_containers::{LogOptions, Runtime};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::NodeError;
use crate::join::Credentials;
use crate::spec::LABEL_ATTEMPT;
use crate::stats::Sampler;

/// How often the node's and its containers' usage is sampled, as the kubelet's housekeeping does.
const SAMPLE_EVERY: Duration = Duration::from_secs(10);

pub(crate) struct Shared {
    pub(crate) runtime: Arc<dyn Runtime>,
    node: String,
    sampler: Sampler,
    /// The newest sample, with the window its rates span.
    latest: Mutex<Option<serde_json::Value>>,
    /// The running container last found for a stream's (namespace, pod, container, pod uid):
    /// tried first, so that an exec skips the Engine's container list (a stale one refuses the
    /// exec, and the list is made then).
    pub(crate) stream_targets: Mutex<std::collections::HashMap<StreamTarget, String>>,
}

/// What a stream request names: namespace, pod, container, pod uid.
pub(crate) type StreamTarget = (String, String, String, Option<String>);

impl Shared {
    async fn sample(&self, window: Duration) -> serde_json::Value {
        let mut v = crate::stats::summary(self.runtime.as_ref(), &self.node, &self.sampler).await;
        v["windowSeconds"] = serde_json::json!(window.as_secs_f64());
        *self.latest.lock().expect("summary lock") = Some(v.clone());
        v
    }
}

/// Samples every `SAMPLE_EVERY` until `stop`.
async fn sample_loop(shared: Arc<Shared>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = tokio::time::Instant::now();
        shared.sample(now - last).await;
        last = now;
    }
}

/// The TLS configuration: the node's serving certificate; client certificates from the CA required.
fn tls(creds: &Credentials) -> Result<Arc<rustls::ServerConfig>, NodeError> {
    capstan_runtime::tls::server(
        &creds.serving_cert,
        &creds.serving_key,
        capstan_runtime::tls::Clients::Required(&creds.ca_pem),
    )
    .map_err(|e| NodeError::Tls(e.0))
}

/// Binds `listen` and serves until `stop`; returns the bound address.
pub async fn start(
    listen: SocketAddr,
    creds: &Credentials,
    runtime: Arc<dyn Runtime>,
    node: String,
    stop: CancellationToken,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), NodeError> {
    let tls = tls(creds)?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| NodeError::Listen { addr: listen, source })?;
    let addr = listener.local_addr().map_err(|source| NodeError::Listen { addr: listen, source })?;
    let shared = Arc::new(Shared {
        runtime,
        node,
        sampler: Sampler::default(),
        latest: Mutex::new(None),
        stream_targets: Mutex::default(),
    });
    tokio::spawn(sample_loop(shared.clone(), stop.clone()));
    let router = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/containerLogs/{namespace}/{pod}/{container}", get(logs))
        .route("/stats/summary", get(summary))
        .route("/exec/{namespace}/{pod}/{container}", get(crate::streams::exec))
        .route("/attach/{namespace}/{pod}/{container}", get(crate::streams::attach))
        .route("/portforward/{namespace}/{pod}", get(crate::portforward::portforward))
        .layer(axum::middleware::from_fn(only_the_api_server))
        .with_state(shared);
    let task = tokio::spawn(capstan_runtime::https::serve(listener, tls, router, stop));
    Ok((addr, task))
}

/// Every client certificate the cluster CA signed passes the handshake, people's included; only
/// the API server's may use the endpoint (it has authorised the request already).
async fn only_the_api_server(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let peer = req.extensions().get::<Arc<capstan_runtime::https::Peer>>();
    match peer.and_then(|p| p.subject()) {
        Some(s) if s.common_name == capstan_runtime::tls::KUBELET_CLIENT => next.run(req).await,
        other => error(
            StatusCode::FORBIDDEN,
            format!(
                "only the API server may call the node agent, not {:?}",
                other.map(|s| s.common_name.as_str()).unwrap_or_default()
            ),
        ),
    }
}

pub(crate) fn error(code: StatusCode, message: String) -> Response {
    (code, [(header::CONTENT_TYPE, "text/plain")], message).into_response()
}

async fn summary(State(s): State<Arc<Shared>>) -> Response {
    let latest = s.latest.lock().expect("summary lock").clone();
    let v = match latest {
        Some(v) => v,
        None => s.sample(Duration::ZERO).await,
    };
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], v.to_string()).into_response()
}

async fn logs(
    State(s): State<Arc<Shared>>,
    Path((namespace, pod, container)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
) -> Response {
    let mut options = LogOptions::default();
    let (mut previous, mut limit, mut uid) = (false, None::<usize>, None::<String>);
    for (k, v) in url::form_urlencoded::parse(query.as_deref().unwrap_or("").as_bytes()) {
        let on = capstan_api::remotecommand::flag(&v);
        match k.as_ref() {
            "follow" => options.follow = on,
            "previous" => previous = on,
            "timestamps" => options.timestamps = on,
            "tailLines" => options.tail = v.parse().ok(),
            "sinceSeconds" => options.since_seconds = v.parse().ok(),
            "limitBytes" => limit = v.parse().ok(),
            "podUID" => uid = Some(v.into_owned()),
            _ => {}
        }
    }
    let found = match pod_containers(&s, &namespace, &pod, &container, uid.as_deref()).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    let chosen = if previous { found.get(1) } else { found.first() };
    let Some(chosen) = chosen else {
        let what = if previous { "previous terminated container" } else { "container" };
        return error(StatusCode::NOT_FOUND, format!("{what} \"{container}\" in pod \"{pod}\" not found"));
    };
    let runtime = s.runtime.clone();
    let id = chosen.id.clone();
    let stream = async_stream(runtime, id, options, limit);
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain")], Body::from_stream(stream)).into_response()
}

/// The containers (all attempts, newest first) of a pod's container; a runtime that does not
/// answer is a 503.
pub(crate) async fn pod_containers(
    s: &Shared,
    namespace: &str,
    pod: &str,
    container: &str,
    uid: Option<&str>,
) -> Result<Vec<capstan_containers::ContainerInfo>, Response> {
    let labels = [
        (LABEL_NODE, s.node.as_str()),
        (LABEL_NAMESPACE, namespace),
        (LABEL_POD, pod),
        (LABEL_CONTAINER, container),
    ];
    let mut found = s.runtime.list(&labels).await.map_err(|e| {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the container runtime did not answer: {e}"),
        )
    })?;
    if let Some(uid) = uid {
        found.retain(|c| c.labels.get(LABEL_POD_UID).map(String::as_str) == Some(uid));
    }
    let attempt = |c: &capstan_containers::ContainerInfo| c.labels.get(LABEL_ATTEMPT).and_then(|a| a.parse::<u32>().ok()).unwrap_or(0);
    found.sort_by_key(|c| std::cmp::Reverse((c.started_at.clone(), attempt(c))));
    Ok(found)
}

/// The log stream, cut at `limit` bytes.
fn async_stream(
    runtime: Arc<dyn Runtime>,
    id: String,
    options: LogOptions,
    limit: Option<usize>,
) -> impl futures::Stream<Item = Result<bytes::Bytes, std::io::Error>> + Send {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(16);
    tokio::spawn(async move {
        let mut left = limit.unwrap_or(usize::MAX);
        let mut logs = runtime.logs(&id, options);
        while let Some(chunk) = logs.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
                    return;
                }
            };
            let chunk = if chunk.len() > left { chunk.slice(..left) } else { chunk };
            left -= chunk.len();
            if tx.send(Ok(chunk)).await.is_err() || left == 0 {
                return;
            }
        }
    });
    tokio_stream_from(rx)
}

fn tokio_stream_from<T: Send + 'static>(mut rx: tokio::sync::mpsc::Receiver<T>) -> impl futures::Stream<Item = T> + Send {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
