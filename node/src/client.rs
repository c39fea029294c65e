//! The agent's side of the API: a kube client with the node's own credential, and the few
//! JSON requests a kubelet makes (get, create, merge-patch, delete, the pod watch). Its
//! connections notice a dead peer within seconds, so that an agent cut off from the control
//! plane finds it again soon after the network heals.

use futures::Stream;
use kube::api::{ApiResource, DynamicObject};
use kube::runtime::watcher;
use serde_json::Value;

/// An API error with its HTTP code (0 when the server was not reached).
#[derive(Clone, Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub code: u16,
    pub message: String,
}

impl ApiError {
    fn from_kube(e: kube::Error) -> ApiError {
        match e {
            kube::Error::Api(s) => ApiError {
                code: s.code,
                message: s.message,
            },
            other => ApiError {
                code: 0,
                message: other.to_string(),
            },
        }
    }
}

/// PEM certificates to DER, for kube's root store.
pub fn pem_certs(pem: &str) -> Vec<Vec<u8>> {
    capstan_runtime::tls::certs(pem).into_iter().map(|c| c.to_vec()).collect()
}

/// The API servers a `--server` value names: one URL, or several replicas' separated by commas.
pub fn servers(list: &str) -> impl Iterator<Item = &str> {
    list.split(',').map(str::trim).filter(|s| !s.is_empty())
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Backend = tower::util::BoxCloneSyncService<http::Request<kube::client::Body>, http::Response<hyper::body::Incoming>, BoxError>;

/// A client for `server` (one URL, or several control-plane replicas' separated by commas)
/// trusting `ca_pem` and sending `token`.
pub fn kube_client(server: &str, ca_pem: Option<&str>, token: Option<&str>) -> Result<kube::Client, String> {
    let backends = servers(server).map(|s| backend(s, ca_pem, token)).collect::<Result<Vec<_>, _>>()?;
    if backends.is_empty() {
        return Err(format!("invalid server URL {server:?}: no URL"));
    }
    let failover = Failover {
        servers: servers(server).map(str::to_owned).collect(),
        backends: backends.into(),
        current: Default::default(),
    };
    Ok(kube::Client::new(failover, "default"))
}

/// The HTTPS stack to one API server.
fn backend(server: &str, ca_pem: Option<&str>, token: Option<&str>) -> Result<Backend, String> {
    let uri: http::Uri = server.parse().map_err(|e| format!("invalid server URL {server:?}: {e}"))?;
    let mut config = kube::Config::new(uri);
    match ca_pem {
        Some(pem) => config.root_cert = Some(pem_certs(pem)),
        // Only to fetch the CA itself, whose hash is then checked against the join token.
        None => config.accept_invalid_certs = true,
    }
    config.auth_info.token = token.map(|t| secrecy::SecretString::from(t.to_owned()));
    use kube::client::ConfigExt;
    let mut tcp = hyper_util::client::legacy::connect::HttpConnector::new();
    tcp.enforce_http(false);
    tcp.set_nodelay(true);
    tcp.set_connect_timeout(Some(CONNECT_TIMEOUT));
    // A request or watch on a connection whose peer went away (a partition, a lost host)
    // would otherwise wait for the kernel's retransmissions to give up: about 15 minutes.
    tcp.set_keepalive(Some(KEEPALIVE_IDLE));
    tcp.set_keepalive_interval(Some(KEEPALIVE_INTERVAL));
    tcp.set_keepalive_retries(Some(KEEPALIVE_PROBES));
    tcp.set_tcp_user_timeout(Some(UNACKED_TIMEOUT));
    let tls = config.rustls_https_connector_with_connector(tcp).map_err(|e| e.to_string())?;
    let http = hyper_util::client::legacy::Builder::new(hyper_util::rt::TokioExecutor::new()).build(tls);
    let service = tower::ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(config.auth_layer().map_err(|e| e.to_string())?)
        .service(tower::ServiceExt::map_err(http, |e| -> BoxError { Box::new(e) }));
    Ok(tower::util::BoxCloneSyncService::new(service))
}

/// Requests go to the server in use; one that cannot be connected to moves the agent on to
/// the next server, so that its next request (the callers retry) reaches a live replica.
#[derive(Clone)]
struct Failover {
    servers: std::sync::Arc<[String]>,
    backends: std::sync::Arc<[Backend]>,
    current: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

/// Whether the request failed before reaching the server (nothing was sent).
fn is_connect_error(e: &BoxError) -> bool {
    e.downcast_ref::<hyper_util::client::legacy::Error>()
        .is_some_and(|e| e.is_connect())
}

impl tower::Service<http::Request<kube::client::Body>> for Failover {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = BoxError;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), BoxError>> {
        // Each request takes its own clone of a backend, readied there.
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<kube::client::Body>) -> Self::Future {
        use std::sync::atomic::Ordering;
        let n = self.backends.len();
        let i = self.current.load(Ordering::Relaxed) % n;
        let backend = self.backends[i].clone();
        let (servers, current) = (self.servers.clone(), self.current.clone());
        Box::pin(async move {
            let result = tower::ServiceExt::oneshot(backend, req).await;
            if n > 1
                && let Err(e) = &result
                && is_connect_error(e)
                && current
                    .compare_exchange(i, (i + 1) % n, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                tracing::warn!(from = %servers[i], to = %servers[(i + 1) % n], "the API server cannot be reached: trying the next");
            }
            result
        })
    }
}

const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// Keepalive probes after 5 s idle, every 2 s, 3 unanswered: a dead peer shows in about 11 s.
const KEEPALIVE_IDLE: std::time::Duration = std::time::Duration::from_secs(5);
const KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);
const KEEPALIVE_PROBES: u32 = 3;
/// Sent data unacknowledged this long ends the connection.
const UNACKED_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Clone)]
pub struct ApiClient {
    client: kube::Client,
}

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiClient")
    }
}

impl ApiClient {
    pub fn new(client: kube::Client) -> ApiClient {
        ApiClient { client }
    }

    async fn send(&self, req: http::Request<Vec<u8>>) -> Result<Value, ApiError> {
        self.client.request::<Value>(req).await.map_err(ApiError::from_kube)
    }

    /// The object at `path`, or None when it does not exist.
    pub async fn get(&self, path: &str) -> Result<Option<Value>, ApiError> {
        match self.send(http::Request::get(path).body(Vec::new()).expect("valid request")).await {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.code == 404 => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn create(&self, collection: &str, object: &Value) -> Result<Value, ApiError> {
        let req = http::Request::post(collection)
            .header("content-type", "application/json")
            .body(serde_json::to_vec(object).unwrap_or_default());
        self.send(req.expect("valid request")).await
    }

    pub async fn merge_patch(&self, path: &str, patch: &Value) -> Result<Value, ApiError> {
        let req = http::Request::patch(path)
            .header("content-type", "application/merge-patch+json")
            .body(serde_json::to_vec(patch).unwrap_or_default());
        self.send(req.expect("valid request")).await
    }

    /// Deletes the object; one already gone is fine.
    pub async fn delete(&self, path: &str) -> Result<(), ApiError> {
        match self
            .send(http::Request::delete(path).body(Vec::new()).expect("valid request"))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.code == 404 => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Watches the pods bound to `node` (list, then watch; relisting when the server asks).
    pub fn watch_pods(&self, node: &str) -> impl Stream<Item = Result<watcher::Event<DynamicObject>, watcher::Error>> + Send + use<> {
        let resource = ApiResource::erase::<k8s_openapi::api::core::v1::Pod>(&());
        let api: kube::Api<DynamicObject> = kube::Api::all_with(self.client.clone(), &resource);
        watcher::watcher(api, watcher::Config::default().fields(&format!("spec.nodeName={node}")))
    }

    /// Watches every Node (the pod network follows them).
    pub fn watch_nodes(&self) -> impl Stream<Item = Result<watcher::Event<DynamicObject>, watcher::Error>> + Send + use<> {
        self.watch_all::<k8s_openapi::api::core::v1::Node>()
    }

    /// Watches every PersistentVolume (the agent removes the directories of its node's).
    pub fn watch_volumes(&self) -> impl Stream<Item = Result<watcher::Event<DynamicObject>, watcher::Error>> + Send + use<> {
        self.watch_all::<k8s_openapi::api::core::v1::PersistentVolume>()
    }

    fn watch_all<K: kube::Resource<DynamicType = ()>>(
        &self,
    ) -> impl Stream<Item = Result<watcher::Event<DynamicObject>, watcher::Error>> + Send + use<K> {
        let resource = ApiResource::erase::<K>(&());
        let api: kube::Api<DynamicObject> = kube::Api::all_with(self.client.clone(), &resource);
        watcher::watcher(api, watcher::Config::default())
    }
}

/// The path of a namespaced object.
pub fn path(plural: &str, namespace: &str, name: &str) -> String {
    let base = match plural {
        "leases" => "/apis/coordination.k8s.io/v1",
        "events" => "/api/v1",
        _ => "/api/v1",
    };
    format!("{base}/namespaces/{namespace}/{plural}/{name}")
}
