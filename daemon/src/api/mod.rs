//! The Kubernetes-compatible API's router and middleware: requests are authenticated, routed by
//! parsing the path the way kube-apiserver does, authorised (`crate::auth::authorize`) and handed
//! to reads, watches, writes (helpful refusals of changes to desired state, which is made in
//! Git) or token requests.

mod discovery;
mod eviction;
pub mod metrics;
mod nodes;
mod openapi;
mod patch;
mod paths;
mod protobuf;
mod reads;
pub mod selectors;
pub mod status;
pub mod streams;
pub mod table;
mod tokens;
mod watch;
mod writes;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use capstan_api::kinds::Origin;
use serde_json::Value;

use crate::auth::{self, Attributes, Authenticator, Denial, Identity};
use crate::cache::Cache;
use crate::objects::Objects;
use crate::pki::Ca;
use paths::Target;
use status::ApiError;

/// Where desired state lives, for the messages that send users to Git.
#[derive(Clone, Debug, Default)]
pub struct GitInfo {
    pub repo: String,
    pub branch: String,
    pub path: String,
}

/// Answers join requests of nodes (see `crate::join`).
pub trait JoinHandler: Send + Sync {
    fn join(&self, node: String) -> futures::future::BoxFuture<'static, Result<Value, ApiError>>;
}

/// Serves container logs (the node agent's part is behind it).
pub trait LogSource: Send + Sync {
    fn logs(&self, pod: Value, query: String) -> futures::future::BoxFuture<'static, Result<Response, ApiError>>;
}

/// What the API handlers share.
pub struct ApiState {
    pub objects: Objects,
    pub cache: Arc<Cache>,
    pub auth: Arc<Authenticator>,
    pub ca: Arc<Ca>,
    pub git: GitInfo,
    pub server_address: String,
    pub join: Option<Arc<dyn JoinHandler>>,
    pub logs: Option<Arc<dyn LogSource>>,
    /// The node agents, for exec, attach and port-forward.
    pub kubelets: Option<crate::kubelet::KubeletClient>,
    /// Stream upgrades that failed at a node agent, for kubectl's fallback request.
    pub stream_failures: streams::RecentFailures,
    /// The node agents' usage, for the resource metrics API.
    pub metrics: Option<Arc<dyn metrics::SummarySource>>,
    /// Signs service-account tokens (TokenRequest).
    pub tokens: Option<Arc<crate::satoken::Signer>>,
    /// The sync's state (the branch actually tracked, for messages).
    pub sync: Option<tokio::sync::watch::Receiver<crate::sync::SyncStatus>>,
    /// Extra routes (webhooks, Capstan's own endpoints) merged in by the daemon.
    pub extra: Option<Router<Shared>>,
}

impl std::fmt::Debug for ApiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiState({})", self.server_address)
    }
}

type Shared = Arc<ApiState>;

/// Builds the router.
pub fn router(state: Shared) -> Router {
    let extra = state.extra.clone();
    let authed = Router::new()
        .route("/api", get(api_root))
        .route("/apis", get(apis_root))
        .route("/openapi/v3", get(openapi_index))
        .route("/openapi/v3/{*path}", get(openapi_gv))
        .merge(metrics::routes())
        .route("/capstan/v1/nodes/{name}", axum::routing::delete(nodes::forget_node))
        .fallback(resource)
        .layer(middleware::from_fn_with_state(state.clone(), authenticate));
    let mut open = Router::new()
        .route("/version", get(|| async { json_response(StatusCode::OK, &discovery::version()) }))
        // The Python client's VersionApi asks for /version/.
        .route("/version/", get(|| async { json_response(StatusCode::OK, &discovery::version()) }))
        .route("/healthz", get(|| async { "ok" }))
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }))
        .route("/capstan/v1/ca", get(ca_cert))
        .route("/capstan/v1/join", post(nodes::join));
    if let Some(extra) = extra {
        open = open.merge(extra);
    }
    open.merge(authed).with_state(state)
}

fn json_response(code: StatusCode, v: &Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_vec(v).unwrap_or_default(),
    )
        .into_response()
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

async fn authenticate(State(state): State<Shared>, mut req: Request, next: Next) -> Response {
    match bearer(req.headers()).and_then(|t| state.auth.authenticate(t)) {
        Some(id) => {
            req.extensions_mut().insert(id);
            next.run(req).await
        }
        None => ApiError::unauthorized().into_response(),
    }
}

async fn ca_cert(State(state): State<Shared>) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/x-pem-file")],
        state.ca.cert_pem.clone(),
    )
        .into_response()
}

fn accept(headers: &HeaderMap) -> &str {
    headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("")
}

async fn api_root(State(state): State<Shared>, headers: HeaderMap) -> Response {
    let agg = discovery::wants_aggregated(accept(&headers));
    discovery_response(agg, discovery::api(agg, &state.server_address))
}

async fn apis_root(headers: HeaderMap) -> Response {
    let agg = discovery::wants_aggregated(accept(&headers));
    discovery_response(agg, discovery::apis(agg))
}

fn discovery_response(aggregated: bool, v: Value) -> Response {
    let ct = if aggregated { discovery::AGGREGATED_V2 } else { "application/json" };
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, ct)],
        serde_json::to_vec(&v).unwrap_or_default(),
    )
        .into_response()
}

async fn openapi_index() -> Response {
    json_response(StatusCode::OK, &openapi::index())
}

async fn openapi_gv(axum::extract::Path(path): axum::extract::Path<String>) -> Response {
    match openapi::group_version(&path) {
        Some(v) => json_response(StatusCode::OK, &v),
        None => ApiError::not_found(format!("no OpenAPI document for {path}")).into_response(),
    }
}

/// Every path under `/api` and `/apis` that names resources.
async fn resource(State(state): State<Shared>, req: Request) -> Response {
    let id = req.extensions().get::<Identity>().cloned().expect("authenticated");
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let headers = req.headers().clone();
    let target = match paths::parse(&path) {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    if let Target::Object {
        kind,
        namespace,
        name,
        subresource: Some(sub),
    } = &target
        && kind.kind == "Pod"
        && streams::SUBRESOURCES.contains(&sub.as_str())
        && matches!(method, Method::GET | Method::POST)
    {
        return streams::serve(state.clone(), &id, req, kind, namespace.as_deref(), name, sub)
            .await
            .unwrap_or_else(IntoResponse::into_response);
    }
    let result = match (&method, &target) {
        (&Method::GET, Target::GroupVersion { group, version }) => match discovery::resource_list(group, version) {
            Some(v) => Ok(json_response(StatusCode::OK, &v)),
            None => Err(ApiError::not_found(format!(
                "the server could not find the requested resource ({path})"
            ))),
        },
        (&Method::GET, Target::Collection { kind, namespace }) => {
            reads::read_collection(&state, &id, kind, namespace.as_deref(), &query, &headers).await
        }
        (
            &Method::GET,
            Target::Object {
                kind,
                namespace,
                name,
                subresource,
            },
        ) => match subresource.as_deref() {
            Some("log") if kind.kind == "Pod" => reads::pod_logs(&state, &id, namespace, name, &query).await,
            None | Some("status") => {
                let read = reads::read_object(&state, &id, kind, namespace, name, &headers, &query).await;
                // `kubectl apply` reads the object before it patches: the refusal it is about to
                // get is said first, on its own line, not only inside an error that quotes the patch.
                let applying = headers
                    .get("kubectl-command")
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|c| c.starts_with("kubectl apply"));
                match read {
                    Ok(mut resp) if applying && kind.origin == Origin::Git && resp.status() == StatusCode::OK => {
                        let ns = namespace.as_deref().unwrap_or_default();
                        let refusal = writes::managed_in_git(&state, kind, ns, name, "patch");
                        status::add_warning(&mut resp, &refusal.message);
                        Ok(resp)
                    }
                    other => other,
                }
            }
            Some(other) => Err(ApiError::not_found(format!(
                "the server could not find the requested resource ({}/{other})",
                kind.plural
            ))),
        },
        _ => {
            let body = match axum::body::to_bytes(req.into_body(), 16 << 20).await {
                Ok(b) => b,
                Err(e) => {
                    return ApiError::bad_request(format!("reading the request body: {e}")).into_response();
                }
            };
            match &target {
                Target::Object {
                    kind,
                    namespace,
                    name,
                    subresource: Some(sub),
                } if method == Method::POST && kind.plural == "serviceaccounts" && sub == "token" => {
                    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
                    tokens::token_request(&state, &id, namespace.as_deref().unwrap_or("default"), name, content_type, &body)
                }
                _ => writes::write(&state, &id, &method, &target, &headers, &query, body).await,
            }
        }
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

/// Asks the authorisation table; a refused change to desired state says where in Git to make it.
fn authorize(state: &ApiState, id: &Identity, a: &Attributes<'_>) -> Result<(), ApiError> {
    auth::authorize(id, a, state.cache.as_ref()).map_err(|denial| match denial {
        Denial::InGit => writes::managed_in_git(state, a.kind, a.namespace.unwrap_or_default(), a.name, a.verb.as_str()),
        Denial::Forbidden(message) => ApiError::forbidden(message),
    })
}
