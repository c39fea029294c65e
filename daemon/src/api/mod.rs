//! The Kubernetes-compatible API's router and middleware: requests are authenticated, routed by
//! parsing the path the way kube-apiserver does, authorised (`crate::auth::authorize`) and handed
//! to reads, watches, writes (helpful refusals of changes to desired state, which is made in
//! Git) or token requests.

mod discovery;
mod ephemeral;
mod eviction;
pub mod metrics;
mod nodes;
mod openapi;
mod patch;
mod paths;
mod protobuf;
mod reads;
mod reviews;
mod scale;
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
    /// The RBAC policy in force.
    pub rbac: Arc<auth::Rbac>,
    pub ca: Arc<Ca>,
    pub git: GitInfo,
    pub server_address: String,
    pub join: Option<Arc<dyn JoinHandler>>,
    pub logs: Option<Arc<dyn LogSource>>,
    /// The node agents, for exec, attach and port-forward.
    pub kubelets: Option<crate::kubelet::KubeletClient>,
    /// The node agents' usage, for the resource metrics API.
    pub metrics: Option<Arc<dyn metrics::SummarySource>>,
    /// Signs service-account tokens (TokenRequest).
    pub tokens: Option<Arc<crate::satoken::Signer>>,
    /// The sync's state (the branch actually tracked, for messages).
    pub sync: Option<tokio::sync::watch::Receiver<crate::sync::SyncStatus>>,
    /// Extra routes (webhooks, Capstan's own endpoints) merged in by the daemon.
    pub extra: Option<Router<Shared>>,
    /// The audit trail (`DATA_DIR/audit.log`).
    pub audit: Option<Arc<crate::audit::AuditLog>>,
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
        .route("/openapi/v2", get(openapi_v2))
        .route("/openapi/v3", get(openapi_index))
        .route("/openapi/v3/{*path}", get(openapi_gv))
        .merge(metrics::routes())
        .route("/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", post(reviews::access))
        .route("/apis/authorization.k8s.io/v1/selfsubjectrulesreviews", post(reviews::rules))
        .route("/apis/authentication.k8s.io/v1/selfsubjectreviews", post(reviews::whoami))
        .route("/metrics", get(server_metrics))
        .route("/capstan/v1/nodes/{name}", axum::routing::delete(nodes::forget_node))
        .route("/capstan/v1/users/{name}/revoke", post(revoke_user))
        .fallback(resource)
        .layer(middleware::from_fn_with_state(state.clone(), authenticate));
    let mut open = Router::new()
        .route("/version", get(|| async { json_response(StatusCode::OK, &discovery::version()) }))
        // The Python client's VersionApi asks for /version/.
        .route("/version/", get(|| async { json_response(StatusCode::OK, &discovery::version()) }))
        .route("/healthz", get(|| async { "ok" }))
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/capstan/v1/ca", get(ca_cert))
        .route("/capstan/v1/join", post(nodes::join));
    if let Some(extra) = extra {
        open = open.merge(extra);
    }
    open.merge(authed).with_state(state)
}

/// Ready while the store takes writes (kube-apiserver's `etcd` readiness check): a replica that
/// lost etcd says so, and why. `?verbose` lists the checks, and which replica leads.
async fn readyz(State(state): State<Shared>, uri: axum::http::Uri) -> Response {
    let store = state.objects.store();
    let trouble = store.trouble();
    let verbose = uri
        .query()
        .is_some_and(|q| q.split('&').any(|p| p == "verbose" || p.starts_with("verbose=")));
    let code = if trouble.is_some() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    if !verbose && trouble.is_none() {
        return "ok".into_response();
    }
    let mut text = match &trouble {
        None => "[+]store ok\n".to_owned(),
        Some(why) => format!("[-]store failed: {why}\n"),
    };
    if let Some(leader) = store.get(capstan_store::LEADER_KEY).ok().flatten() {
        text.push_str(&format!("[+]leader {}\n", String::from_utf8_lossy(&leader.value)));
    }
    text.push_str(if trouble.is_some() {
        "readyz check failed\n"
    } else {
        "readyz check passed\n"
    });
    (code, text).into_response()
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

/// The caller: a bearer token (admin, viewer, node, service account) or a client certificate
/// from the cluster CA (a person).
fn identify(state: &ApiState, req: &Request) -> Result<Identity, ApiError> {
    if let Some(token) = bearer(req.headers()) {
        return state.auth.authenticate(token).ok_or_else(ApiError::unauthorized);
    }
    let peer = req.extensions().get::<Arc<capstan_runtime::https::Peer>>();
    match peer.and_then(|p| p.subject()) {
        Some(subject) => state
            .auth
            .authenticate_certificate(subject)
            .map_err(|refusal| ApiError::new(StatusCode::UNAUTHORIZED, "Unauthorized", format!("Unauthorized: {refusal}"))),
        None => Err(ApiError::unauthorized()),
    }
}

/// Authenticates, authorises the paths that name no resource (discovery, `/metrics`; resources
/// are authorised by their handlers), and writes the audit event of every refused request and
/// every request that is not a read.
async fn authenticate(State(state): State<Shared>, mut req: Request, next: Next) -> Response {
    // Cheap to keep (shared bytes): the audit event is only built for the requests it records.
    let received = jiff::Timestamp::now();
    let uri = req.uri().clone();
    let agent = req.headers().get(header::USER_AGENT).cloned();
    let source = req.extensions().get::<Arc<capstan_runtime::https::Peer>>().map(|p| p.address.ip());
    let info = paths::request_info(req.method(), uri.path(), uri.query().unwrap_or(""));
    let identity = identify(&state, &req);
    let response = match &identity {
        Err(e) => e.clone().into_response(),
        Ok(id) if !info.resource_request => match auth::authorize_path(id, info.verb, uri.path(), &state.rbac.policy()) {
            Ok(()) => {
                req.extensions_mut().insert(id.clone());
                next.run(req).await
            }
            Err(denial) => ApiError::forbidden(denial.message()).into_response(),
        },
        Ok(id) => {
            req.extensions_mut().insert(id.clone());
            next.run(req).await
        }
    };
    let code = response.status().as_u16();
    if let Some(log) = &state.audit
        && (matches!(code, 401 | 403) || !crate::audit::is_read(info.verb))
    {
        let request = crate::audit::Request {
            user: identity.ok().map(|id| id.user_info()),
            verb: info.verb.to_owned(),
            uri: uri.to_string(),
            source: source.map(|ip| ip.to_string()),
            user_agent: agent.as_ref().and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned(),
            object: info.object_ref(),
            received: capstan_api::time::format_micro(received),
        };
        let refusal = response.extensions().get::<status::Refusal>().map(|r| r.0.as_str());
        log.write(&crate::audit::AuditLog::event(&request, code, refusal));
    }
    response
}

/// `GET /metrics`: the API server's own figures in Prometheus' text format (who may read them
/// is RBAC's `nonResourceURLs`).
async fn server_metrics(State(state): State<Shared>) -> Response {
    let mut text =
        String::from("# HELP apiserver_storage_objects Number of stored objects by resource.\n# TYPE apiserver_storage_objects gauge\n");
    for kind in capstan_api::REGISTRY {
        let (items, _) = state.cache.list(kind, None);
        text.push_str(&format!(
            "apiserver_storage_objects{{resource=\"{}\"}} {}\n",
            kind.resource(),
            items.len()
        ));
    }
    text.push_str(&format!(
        "# HELP capstan_store_revision The store's current revision.\n# TYPE capstan_store_revision gauge\ncapstan_store_revision {}\n",
        state.cache.revision()
    ));
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// `POST /capstan/v1/users/NAME/revoke` (`capstan user revoke`): the user's certificates issued
/// until now stop working. Only `system:masters` may.
async fn revoke_user(
    State(state): State<Shared>,
    axum::Extension(id): axum::Extension<Identity>,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> Response {
    if !id.user_info().is_master() {
        return ApiError::forbidden(format!("{} may not revoke users: only system:masters may", id.user_name())).into_response();
    }
    match state.auth.revoke_user(&name).await {
        Ok(()) => json_response(StatusCode::OK, &serde_json::json!({"revoked": name})),
        Err(e) => ApiError::internal(e.to_string()).into_response(),
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

fn json_bytes(body: axum::body::Bytes) -> Response {
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn openapi_index() -> Response {
    json_bytes(openapi::index())
}

async fn openapi_gv(axum::extract::Path(path): axum::extract::Path<String>) -> Response {
    match openapi::group(&path) {
        Some(body) => json_bytes(body),
        None => ApiError::not_found(format!("no OpenAPI document for {path}")).into_response(),
    }
}

async fn openapi_v2() -> Response {
    json_bytes(openapi::v2())
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
        Err(e) => return older_version_write(&state, &method, &path, &query).unwrap_or(e).into_response(),
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
            Some("scale") if kind.has_scale() => scale::read(&state, &id, kind, namespace, name, &headers, &query).await,
            Some("ephemeralcontainers") if kind.kind == "Pod" => {
                reads::read_object(&state, &id, kind, namespace, name, &headers, &query).await
            }
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

/// A write to a version of a Git kind that is read from manifests but not served (an
/// `autoscaling/v1` HorizontalPodAutoscaler): refused as a write to the served version is, with
/// the Git file. A client that falls back to the older version when the newer refuses (`kubectl
/// autoscale`) then ends with that refusal, not with "not found".
fn older_version_write(state: &ApiState, method: &Method, path: &str, query: &str) -> Option<ApiError> {
    if method == Method::GET {
        return None;
    }
    let info = paths::request_info(method, path, query);
    let older = capstan_api::kinds::older_by_plural(info.group, info.version, info.resource)?;
    Some(writes::managed_in_git(state, older.served(), info.namespace, info.name, info.verb))
}

/// Asks the authorisation table; a refused change to desired state says where in Git to make it.
fn authorize(state: &ApiState, id: &Identity, a: &Attributes<'_>) -> Result<(), ApiError> {
    auth::authorize(id, a, state.cache.as_ref(), &state.rbac.policy()).map_err(|denial| match denial {
        Denial::InGit => {
            // Writing a Scale is scaling, whatever the method.
            let verb = if a.subresource == Some("scale") { "scale" } else { a.verb.as_str() };
            writes::managed_in_git(state, a.kind, a.namespace.unwrap_or_default(), a.name, verb)
        }
        other => ApiError::forbidden(other.message()),
    })
}
