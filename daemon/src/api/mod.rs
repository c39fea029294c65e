//! The Kubernetes-compatible API: discovery, get, list, watch, Table printing, the writes node
//! agents make, and helpful refusals of writes to desired state (which is changed in Git).
//! Requests are routed by parsing the path the way kube-apiserver does, then authorised by the
//! caller's identity.

mod discovery;
pub mod metrics;
mod openapi;
mod paths;
mod protobuf;
pub mod selectors;
pub mod status;
pub mod table;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use capstan_api::KindInfo;
use capstan_api::kinds::Origin;
use capstan_api::meta::ANNOTATION_SOURCE;
use futures::StreamExt;
use serde_json::{Value, json};

use crate::auth::{Authenticator, Identity};
use crate::cache::{Cache, CacheError, Change, Entry};
use crate::objects::Objects;
use crate::pki::Ca;
use paths::Target;
use selectors::{FieldSelector, LabelSelector};
use status::ApiError;
use table::Include;

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
        .route("/capstan/v1/nodes/{name}", axum::routing::delete(forget_node))
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
        .route("/capstan/v1/join", post(join));
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

/// `capstan node forget NAME` (administrators): revokes the node's credential and removes its
/// Node and Lease, so that its pods are replaced elsewhere and the name may join again.
async fn forget_node(
    State(state): State<Shared>,
    axum::Extension(id): axum::Extension<Identity>,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> Response {
    if id != Identity::Admin {
        return ApiError::forbidden(format!("{} may not forget nodes", id.user_name())).into_response();
    }
    let revoked = match state.auth.revoke_node(&name).await {
        Ok(r) => r,
        Err(e) => return ApiError::internal(e.to_string()).into_response(),
    };
    let mut removed = Vec::new();
    for (plural, namespace) in [("leases", "kube-node-lease"), ("nodes", "")] {
        let kind = capstan_api::kinds::by_name(plural).expect("served kind");
        match state.objects.delete(kind, namespace, &name, None).await {
            Ok(_) => removed.push(plural),
            Err(crate::objects::ObjectError::NotFound { .. }) => {}
            Err(e) => return ApiError::internal(e.to_string()).into_response(),
        }
    }
    if !revoked && removed.is_empty() {
        return ApiError::not_found(format!("no node named {name:?}")).into_response();
    }
    tracing::info!(node = %name, "node forgotten");
    json_response(
        StatusCode::OK,
        &json!({"node": name, "credentialRevoked": revoked, "removed": removed}),
    )
}

/// A node joins with the join secret the first time, and again with its own credential: the
/// shared secret cannot take over a name that already has one (`capstan node forget` frees it).
async fn join(State(state): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let token = bearer(&headers);
    let by_secret = token.is_some_and(|t| state.auth.is_join_secret(t));
    let caller = token.and_then(|t| state.auth.authenticate(t));
    if !by_secret && !matches!(caller, Some(Identity::Node(_))) {
        return ApiError::unauthorized().into_response();
    }
    let node = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v["nodeName"].as_str().map(str::to_owned));
    let Some(node) = node.filter(|n| capstan_api::names::dns1123_subdomain(n).is_none()) else {
        return ApiError::bad_request("a join request needs a valid nodeName").into_response();
    };
    match &caller {
        Some(Identity::Node(own)) if *own == node => {}
        Some(Identity::Node(own)) => {
            return ApiError::forbidden(format!("node {own:?} may not join as {node:?}")).into_response();
        }
        _ => match state.auth.node_has_credential(&node) {
            Ok(false) => {}
            Ok(true) => {
                return ApiError::new(
                    StatusCode::CONFLICT,
                    "AlreadyExists",
                    format!(
                        "node {node:?} has joined already: it re-joins with its own credential (kept in its data directory); to give the name to a new machine, run `capstan node forget {node}` first"
                    ),
                )
                .into_response();
            }
            Err(e) => return ApiError::internal(e.to_string()).into_response(),
        },
    }
    match &state.join {
        Some(j) => match j.join(node).await {
            Ok(v) => json_response(StatusCode::OK, &v),
            Err(e) => e.into_response(),
        },
        None => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "this server does not accept nodes",
        )
        .into_response(),
    }
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

/// Query parameters of reads.
#[derive(Debug, Default)]
struct ReadParams {
    labels: LabelSelector,
    fields: FieldSelector,
    limit: usize,
    continue_token: Option<String>,
    watch: bool,
    resource_version: Option<String>,
    timeout: Option<Duration>,
    bookmarks: bool,
    include: Option<String>,
}

fn parse_query(query: &str) -> Result<ReadParams, ApiError> {
    let mut p = ReadParams::default();
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        match k.as_ref() {
            "labelSelector" => p.labels = LabelSelector::parse(&v)?,
            "fieldSelector" => p.fields = FieldSelector::parse(&v)?,
            "limit" => p.limit = v.parse().map_err(|_| ApiError::bad_request(format!("invalid limit {v:?}")))?,
            "continue" if !v.is_empty() => p.continue_token = Some(v.into_owned()),
            "watch" => p.watch = v == "true" || v == "1",
            "resourceVersion" if !v.is_empty() => {
                if v.parse::<u64>().is_err() {
                    return Err(ApiError::bad_request(format!(
                        "invalid resource version {v:?}: a resourceVersion is a number"
                    )));
                }
                p.resource_version = Some(v.into_owned());
            }
            "timeoutSeconds" => p.timeout = v.parse().ok().map(Duration::from_secs),
            "allowWatchBookmarks" => p.bookmarks = v == "true" || v == "1",
            "includeObject" => p.include = Some(v.into_owned()),
            _ => {}
        }
    }
    Ok(p)
}

fn wants_table(headers: &HeaderMap) -> bool {
    accept(headers).split(',').next().is_some_and(|first| first.contains("as=Table"))
}

/// May `id` read objects of `kind` in `namespace`?
fn authorize_read(state: &ApiState, id: &Identity, kind: &KindInfo, namespace: Option<&str>, name: Option<&str>) -> Result<(), ApiError> {
    match id {
        Identity::Admin => Ok(()),
        // Kubernetes' `view`: everything but Secrets (their values would let a viewer act as
        // the workloads that use them).
        Identity::ReadOnly if kind.is_secret() => Err(ApiError::forbidden(format!(
            "{} may not read secrets: the read-only credential has Kubernetes' view rights, which exclude Secrets",
            id.user_name()
        ))),
        Identity::ReadOnly => Ok(()),
        Identity::Node(node) => {
            if !kind.is_secret() {
                return Ok(());
            }
            // Like the Kubernetes node authoriser: only secrets of pods bound to this node.
            let (Some(ns), Some(name)) = (namespace, name) else {
                return Err(ApiError::forbidden(format!("node {node:?} may not list secrets")));
            };
            let pods_kind = capstan_api::kinds::by_name("pods").expect("pods are served");
            let (pods, _) = state.cache.list(pods_kind, Some(ns));
            let used = pods
                .iter()
                .any(|p| p.object["spec"]["nodeName"] == node.as_str() && pod_uses_secret(&p.object, name));
            if used {
                Ok(())
            } else {
                Err(ApiError::forbidden(format!(
                    "node {node:?} may not read secret {ns}/{name}: no pod on the node uses it"
                )))
            }
        }
        Identity::ServiceAccount { namespace: own, name: sa } => {
            if kind.namespaced && namespace == Some(own.as_str()) && !kind.is_secret() {
                Ok(())
            } else {
                Err(ApiError::forbidden(format!(
                    "service account {own}/{sa} may only read objects (not secrets) in namespace {own:?}"
                )))
            }
        }
    }
}

fn pod_uses_secret(pod: &Value, secret: &str) -> bool {
    let spec = &pod["spec"];
    let in_containers = ["containers", "initContainers"].iter().any(|list| {
        spec[list].as_array().into_iter().flatten().any(|c| {
            c["envFrom"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|e| e["secretRef"]["name"] == secret)
                || c["env"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|e| e["valueFrom"]["secretKeyRef"]["name"] == secret)
        })
    });
    let in_volumes = spec["volumes"].as_array().into_iter().flatten().any(|v| {
        v["secret"]["secretName"] == secret
            || v["projected"]["sources"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|s| s["secret"]["name"] == secret)
    });
    let pull = spec["imagePullSecrets"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|s| s["name"] == secret);
    in_containers || in_volumes || pull
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
    let result = match (&method, &target) {
        (&Method::GET, Target::GroupVersion { group, version }) => match discovery::resource_list(group, version) {
            Some(v) => Ok(json_response(StatusCode::OK, &v)),
            None => Err(ApiError::not_found(format!(
                "the server could not find the requested resource ({path})"
            ))),
        },
        (&Method::GET, Target::Collection { kind, namespace }) => {
            read_collection(&state, &id, kind, namespace.as_deref(), &query, &headers).await
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
            Some("log") if kind.kind == "Pod" => pod_logs(&state, &id, namespace, name, &query).await,
            None | Some("status") => {
                let read = read_object(&state, &id, kind, namespace, name, &headers, &query).await;
                // `kubectl apply` reads the object before it patches: the refusal it is about to
                // get is said first, on its own line, not only inside an error that quotes the patch.
                let applying = headers
                    .get("kubectl-command")
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|c| c.starts_with("kubectl apply"));
                match read {
                    Ok(mut resp) if applying && kind.origin == Origin::Git && resp.status() == StatusCode::OK => {
                        let ns = namespace.as_deref().unwrap_or_default();
                        let refusal = managed_in_git(&state, kind, ns, name, "patch");
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
                    token_request(&state, &id, namespace.as_deref().unwrap_or("default"), name, content_type, &body)
                }
                _ => write(&state, &id, &method, &target, &headers, body).await,
            }
        }
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

fn list_kind(kind: &KindInfo) -> String {
    format!("{}List", kind.kind)
}

fn entry_selected(e: &Entry, p: &ReadParams) -> bool {
    p.labels.matches(e.object.pointer("/metadata/labels")) && p.fields.matches(&e.object)
}

/// Continue tokens: base64 of `namespace/name` of the last item returned.
fn continue_after(token: &str) -> Result<(String, String), ApiError> {
    let bad = || ApiError::new(StatusCode::GONE, "Expired", "the continue token is invalid or expired; list again");
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
    let s = String::from_utf8(raw).map_err(|_| bad())?;
    let (ns, name) = s.split_once('/').ok_or_else(bad)?;
    Ok((ns.to_owned(), name.to_owned()))
}

async fn read_collection(
    state: &ApiState,
    id: &Identity,
    kind: &'static KindInfo,
    namespace: Option<&str>,
    query: &str,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    authorize_read(state, id, kind, namespace, None)?;
    let p = parse_query(query)?;
    if p.watch {
        return Ok(watch(state, kind, namespace, p, wants_table(headers)).await);
    }
    state.cache.wait_for(state.objects.store().revision()).await;
    let (entries, revision) = state.cache.list(kind, namespace);
    let mut selected: Vec<Arc<Entry>> = entries.into_iter().filter(|e| entry_selected(e, &p)).collect();
    if let Some(token) = &p.continue_token {
        let after = continue_after(token)?;
        selected.retain(|e| (e.namespace.as_str(), e.name.as_str()) > (after.0.as_str(), after.1.as_str()));
    }
    let mut continue_token = None;
    if p.limit > 0 && selected.len() > p.limit {
        selected.truncate(p.limit);
        let last = selected.last().expect("limit > 0");
        continue_token = Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{}/{}", last.namespace, last.name)));
    }
    let mut meta = json!({"resourceVersion": revision.to_string()});
    if let Some(c) = &continue_token {
        meta["continue"] = json!(c);
    }
    if wants_table(headers) {
        let include = Include::parse(p.include.as_deref());
        return Ok(table_response_bytes(table_bytes(kind, &meta, &selected, include)));
    }
    // Splice the cached, serialised items into the list without re-encoding them.
    let head =
        serde_json::to_vec(&json!({"kind": list_kind(kind), "apiVersion": kind.api_version(), "metadata": meta})).unwrap_or_default();
    let mut body = Vec::with_capacity(selected.iter().map(|e| e.json.len() + 1).sum::<usize>() + head.len() + 16);
    body.extend_from_slice(&head[..head.len() - 1]);
    body.extend_from_slice(b",\"items\":[");
    for (i, e) in selected.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(&e.json);
    }
    body.extend_from_slice(b"]}");
    Ok((StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// A Table of many objects, written straight into bytes: rows reuse the cached objects'
/// metadata instead of copying it into a new JSON tree.
fn table_bytes(kind: &KindInfo, meta: &Value, entries: &[Arc<Entry>], include: Include) -> Vec<u8> {
    let now = jiff::Timestamp::now().as_second();
    let mut out = Vec::with_capacity(entries.len() * 512 + 1024);
    out.extend_from_slice(b"{\"kind\":\"Table\",\"apiVersion\":\"meta.k8s.io/v1\",\"metadata\":");
    let _ = serde_json::to_writer(&mut out, meta);
    out.extend_from_slice(b",\"columnDefinitions\":");
    let _ = serde_json::to_writer(&mut out, &table::columns(kind));
    out.extend_from_slice(b",\"rows\":[");
    for (i, e) in entries.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"cells\":");
        let _ = serde_json::to_writer(&mut out, &table::cells(kind, &e.object, now));
        match include {
            Include::None => {}
            Include::Object => {
                out.extend_from_slice(b",\"object\":");
                out.extend_from_slice(&e.json);
            }
            Include::Metadata => {
                out.extend_from_slice(b",\"object\":{\"kind\":\"PartialObjectMetadata\",\"apiVersion\":\"meta.k8s.io/v1\",\"metadata\":");
                let _ = serde_json::to_writer(&mut out, &e.object["metadata"]);
                out.push(b'}');
            }
        }
        out.push(b'}');
    }
    out.extend_from_slice(b"]}");
    out
}

fn table_response_bytes(body: Vec<u8>) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json;as=Table;v=v1;g=meta.k8s.io")],
        body,
    )
        .into_response()
}

fn table_row(kind: &KindInfo, o: &Value, now: i64, include: Include) -> Value {
    let mut row = json!({"cells": table::cells(kind, o, now)});
    if let Some(obj) = table::row_object(o, include) {
        row["object"] = obj;
    }
    row
}

fn table_response(v: &Value) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json;as=Table;v=v1;g=meta.k8s.io")],
        serde_json::to_vec(v).unwrap_or_default(),
    )
        .into_response()
}

async fn read_object(
    state: &ApiState,
    id: &Identity,
    kind: &'static KindInfo,
    namespace: &Option<String>,
    name: &str,
    headers: &HeaderMap,
    query: &str,
) -> Result<Response, ApiError> {
    let ns = namespace.as_deref().unwrap_or("");
    authorize_read(state, id, kind, namespace.as_deref(), Some(name))?;
    state.cache.wait_for(state.objects.store().revision()).await;
    let entry = state.cache.get(kind, ns, name).ok_or_else(|| {
        ApiError::not_found(format!("{} {name:?} not found", qualified(kind))).with_details(name, kind.group, kind.plural)
    })?;
    if wants_table(headers) {
        let p = parse_query(query)?;
        let now = jiff::Timestamp::now().as_second();
        let t = json!({
            "kind": "Table", "apiVersion": "meta.k8s.io/v1",
            "metadata": {"resourceVersion": entry.revision.to_string()},
            "columnDefinitions": table::columns(kind),
            "rows": [table_row(kind, &entry.object, now, Include::parse(p.include.as_deref()))],
        });
        return Ok(table_response(&t));
    }
    Ok((StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], entry.json.clone()).into_response())
}

/// `deployments.apps` or `pods`: how Kubernetes names a resource in messages.
fn qualified(kind: &KindInfo) -> String {
    if kind.group.is_empty() {
        kind.plural.to_owned()
    } else {
        format!("{}.{}", kind.plural, kind.group)
    }
}

async fn pod_logs(state: &ApiState, id: &Identity, namespace: &Option<String>, name: &str, query: &str) -> Result<Response, ApiError> {
    let pods = capstan_api::kinds::by_name("pods").expect("pods are served");
    let ns = namespace.as_deref().unwrap_or("default");
    authorize_read(state, id, pods, Some(ns), Some(name))?;
    let pod = state
        .cache
        .get(pods, ns, name)
        .ok_or_else(|| ApiError::not_found(format!("pods {name:?} not found")))?;
    match &state.logs {
        Some(l) => l.logs((*pod.object).clone(), query.to_owned()).await,
        None => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "logs are not available: no node agent serves them",
        )),
    }
}

/// `POST .../serviceaccounts/NAME/token` (TokenRequest): a signed token for the ServiceAccount,
/// bound to a pod when asked. Administrators may ask for any; a node only for a pod bound to it
/// (as Kubernetes' node authoriser allows); nobody else.
fn token_request(state: &ApiState, id: &Identity, ns: &str, sa_name: &str, content_type: &str, body: &[u8]) -> Result<Response, ApiError> {
    use crate::satoken::{Claims, DEFAULT_SECONDS, ISSUER, MIN_SECONDS};
    let signer = state.tokens.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "no service-account signing key",
        )
    })?;
    let request: Value = if content_type.starts_with(protobuf::MEDIA_TYPE) {
        protobuf::token_request(body).ok_or_else(|| ApiError::bad_request("the TokenRequest is not a Kubernetes protobuf body"))?
    } else {
        serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("the TokenRequest is not JSON: {e}")))?
    };
    let kind = |plural| capstan_api::kinds::by_name(plural).expect("served kind");
    let sa = state
        .cache
        .get(kind("serviceaccounts"), ns, sa_name)
        .ok_or_else(|| ApiError::not_found(format!("serviceaccounts {sa_name:?} not found")))?;
    let spec = &request["spec"];
    let seconds = spec["expirationSeconds"].as_i64().unwrap_or(DEFAULT_SECONDS);
    if seconds < MIN_SECONDS {
        return Err(ApiError::bad_request(
            "spec.expirationSeconds: may not specify a duration less than 10 minutes",
        ));
    }
    // Capped as kube-apiserver caps them with --service-account-max-token-expiration.
    let seconds = seconds.min(48 * 3600);
    let mut audiences: Vec<String> = spec["audiences"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str().map(str::to_owned))
        .collect();
    if audiences.is_empty() {
        audiences.push(ISSUER.to_owned());
    }
    let bound = &spec["boundObjectRef"];
    let pod = match bound["kind"].as_str() {
        None => None,
        Some("Pod") => {
            let pod_name = bound["name"].as_str().unwrap_or_default();
            let p = state
                .cache
                .get(kind("pods"), ns, pod_name)
                .ok_or_else(|| ApiError::not_found(format!("pods {pod_name:?} not found")))?;
            let uid = p.object["metadata"]["uid"].as_str().unwrap_or_default().to_owned();
            if bound["uid"].as_str().is_some_and(|u| !u.is_empty() && u != uid) {
                let asked = bound["uid"].as_str().unwrap_or_default();
                let message = format!("the UID in the bound object reference ({asked}) does not match the UID of pod {pod_name} ({uid})");
                return Err(ApiError::new(StatusCode::CONFLICT, "Conflict", message));
            }
            let uses = p.object["spec"]["serviceAccountName"].as_str().unwrap_or("default");
            if uses != sa_name {
                return Err(ApiError::bad_request(format!(
                    "pod {pod_name} runs as service account {uses:?}, not {sa_name:?}"
                )));
            }
            Some((
                pod_name.to_owned(),
                uid,
                p.object["spec"]["nodeName"].as_str().unwrap_or_default().to_owned(),
            ))
        }
        Some(other) => return Err(ApiError::bad_request(format!("cannot bind a token to a {other}: only pods"))),
    };
    match id {
        Identity::Admin => {}
        Identity::Node(node) if pod.as_ref().is_some_and(|p| p.2 == *node) => {}
        Identity::Node(node) => {
            return Err(ApiError::forbidden(format!(
                "node {node:?} may only ask for tokens bound to pods on the node"
            )));
        }
        other => {
            return Err(ApiError::forbidden(format!(
                "{} may not create service-account tokens",
                other.user_name()
            )));
        }
    }
    let now = jiff::Timestamp::now().as_second();
    let claims = Claims {
        namespace: ns.to_owned(),
        service_account: sa_name.to_owned(),
        service_account_uid: sa.object["metadata"]["uid"].as_str().unwrap_or_default().to_owned(),
        pod: pod.as_ref().map(|p| (p.0.clone(), p.1.clone())),
        audiences: audiences.clone(),
        issued_at: now,
        expires_at: now + seconds,
    };
    let token = signer.issue(&claims).map_err(|e| ApiError::internal(e.to_string()))?;
    let expires = jiff::Timestamp::from_second(now + seconds)
        .map(capstan_api::time::format)
        .unwrap_or_default();
    let mut spec_out = json!({"audiences": audiences, "expirationSeconds": seconds});
    if let Some((name, uid, _)) = &pod {
        spec_out["boundObjectRef"] = json!({"kind": "Pod", "apiVersion": "v1", "name": name, "uid": uid});
    }
    let answer = json!({
        "kind": "TokenRequest",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"name": sa_name, "namespace": ns, "creationTimestamp": null},
        "spec": spec_out,
        "status": {"token": token, "expirationTimestamp": expires},
    });
    Ok(json_response(StatusCode::CREATED, &answer))
}

/// One watch event line.
/// One watch event as it goes on the wire: a few chunks, so that an object's JSON is sent from
/// the cache's own copy, shared by every watcher, never copied per watcher.
type EventChunks = Vec<Bytes>;

fn event_line(change: &str, object: &Value) -> EventChunks {
    let mut line = serde_json::to_vec(&json!({"type": change, "object": object})).unwrap_or_default();
    line.push(b'\n');
    vec![Bytes::from(line)]
}

fn event_line_raw(change: &str, object_json: &Bytes) -> EventChunks {
    let head = match change {
        "ADDED" => Bytes::from_static(b"{\"type\":\"ADDED\",\"object\":"),
        "MODIFIED" => Bytes::from_static(b"{\"type\":\"MODIFIED\",\"object\":"),
        "DELETED" => Bytes::from_static(b"{\"type\":\"DELETED\",\"object\":"),
        other => Bytes::from(format!("{{\"type\":\"{other}\",\"object\":")),
    };
    vec![head, object_json.clone(), Bytes::from_static(b"}\n")]
}

/// Events one watcher may have waiting to be sent. A watcher that falls this far behind is
/// closed (as kube-apiserver closes unresponsive watchers); its client lists and watches again.
const WATCH_BUFFER: usize = 1024;

fn expired(requested: u64, oldest: u64) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": format!("too old resource version: {requested} ({oldest})"), "reason": "Expired", "code": 410})
}

async fn watch(state: &ApiState, kind: &'static KindInfo, namespace: Option<&str>, p: ReadParams, table: bool) -> Response {
    let requested: Option<u64> = p.resource_version.as_deref().and_then(|v| v.parse().ok()).filter(|v| *v > 0);
    let now = || jiff::Timestamp::now().as_second();
    let include = Include::parse(p.include.as_deref());
    let render = move |change: &str, e: &Entry, first: &mut bool| -> EventChunks {
        if table {
            let cols = if std::mem::take(first) { table::columns(kind) } else { Vec::new() };
            let t = json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": e.revision.to_string()}, "columnDefinitions": cols, "rows": [table_row(kind, &e.object, now(), include)]});
            event_line(change, &t)
        } else {
            event_line_raw(change, &e.json)
        }
    };
    let (initial, from) = match requested {
        Some(rv) => (Vec::new(), rv),
        None => {
            // No resourceVersion: the current state as ADDED events first, then changes.
            let (entries, rev) = state.cache.list(kind, namespace);
            (entries.into_iter().filter(|e| entry_selected(e, &p)).collect::<Vec<_>>(), rev)
        }
    };
    let mut watcher = match state.cache.watch(kind, namespace, from) {
        Ok(w) => w,
        Err(CacheError::TooOld { requested, oldest }) => {
            return (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                event_line("ERROR", &expired(requested, oldest)).concat(),
            )
                .into_response();
        }
        Err(e) => return ApiError::internal(e.to_string()).into_response(),
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<EventChunks>(WATCH_BUFFER);
    let labels = p.labels.clone();
    let fields = p.fields.clone();
    let timeout = p.timeout.unwrap_or(Duration::from_secs(3600));
    let bookmarks = p.bookmarks;
    tokio::spawn(async move {
        let mut first = true;
        for e in &initial {
            if tx.send(render("ADDED", e, &mut first)).await.is_err() {
                return;
            }
        }
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut last_rev = from;
        let mut bookmark = tokio::time::interval(Duration::from_secs(60));
        bookmark.tick().await;
        loop {
            tokio::select! {
                _ = &mut deadline => return,
                _ = tx.closed() => return,
                _ = bookmark.tick(), if bookmarks => {
                    let b = json!({"kind": kind.kind, "apiVersion": kind.api_version(), "metadata": {"resourceVersion": last_rev.to_string()}});
                    if tx.send(event_line("BOOKMARK", &b)).await.is_err() {
                        return;
                    }
                }
                next = watcher.next() => match next {
                    Ok(ev) => {
                        last_rev = ev.revision();
                        let now_selected = labels.matches(ev.entry.object.pointer("/metadata/labels")) && fields.matches(&ev.entry.object);
                        // A change that moves an object out of the selection is a deletion for
                        // this watcher; into it, an addition (as the apiserver does).
                        let change = match ev.change {
                            Change::Deleted if now_selected => Some("DELETED"),
                            Change::Deleted => None,
                            Change::Added if now_selected => Some("ADDED"),
                            Change::Modified if now_selected => Some("MODIFIED"),
                            _ => None,
                        };
                        // The initial events wait for the client; later ones never do: a
                        // full buffer ends the watch rather than holding events for it.
                        if let Some(c) = change
                            && tx.try_send(render(c, &ev.entry, &mut first)).is_err() {
                                tracing::debug!(kind = kind.kind, "closing a watch that fell behind");
                                return;
                            }
                    }
                    Err(CacheError::TooOld { requested, oldest }) => {
                        let _ = tx.send(event_line("ERROR", &expired(requested, oldest))).await;
                        return;
                    }
                    Err(_) => return,
                }
            }
        }
    });
    let stream = tokio_stream_from(rx).map(Ok::<Bytes, std::io::Error>);
    let ct = if table {
        "application/json;as=Table;v=v1;g=meta.k8s.io"
    } else {
        "application/json"
    };
    let mut resp = Response::new(Body::from_stream(stream));
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    resp
}

fn tokio_stream_from(mut rx: tokio::sync::mpsc::Receiver<EventChunks>) -> impl futures::Stream<Item = Bytes> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).flat_map(futures::stream::iter)
}

/// The message that sends a user to Git for a change to desired state.
fn managed_in_git(state: &ApiState, kind: &KindInfo, namespace: &str, name: &str, verb: &str) -> ApiError {
    let existing = state.cache.get(kind, namespace, name);
    let source = existing.as_ref().and_then(|e| {
        e.object
            .pointer("/metadata/annotations")
            .and_then(|a| a.get(ANNOTATION_SOURCE))
            .and_then(Value::as_str)
            .map(str::to_owned)
    });
    let git = &state.git;
    let branch = match (&git.branch, &state.sync) {
        (b, _) if !b.is_empty() => b.clone(),
        (_, Some(s)) if !s.borrow().branch.is_empty() => s.borrow().branch.clone(),
        _ => "its default branch".to_owned(),
    };
    let location = if git.path.is_empty() {
        git.repo.clone()
    } else {
        format!("{} (path {})", git.repo, git.path)
    };
    let what = if name.is_empty() {
        qualified(kind)
    } else {
        format!("{} {name:?}", qualified(kind))
    };
    let message = match (&existing, source) {
        (_, Some(file)) => format!(
            "{what} is managed in Git: to {verb} it, change {file} in {location} on branch {branch} and commit; Capstan applies the commit"
        ),
        (Some(_), None) => {
            format!("{what} is created by Capstan's controllers from objects in Git: change its owner in {location} on branch {branch}")
        }
        (None, None) => format!(
            "{what} cannot be {verb}d through the API: desired state is read from Git; add it to a manifest in {location} on branch {branch} and commit"
        ),
    };
    ApiError::method_not_allowed(message)
        .with_details(name, kind.group, kind.plural)
        .warned()
}

/// JSON merge patch (RFC 7386); strategic merge patches are applied the same way.
fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            let t = target.as_object_mut().expect("made an object");
            for (k, v) in p {
                if k.starts_with("$") {
                    continue; // strategic-merge directives
                }
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

async fn write(
    state: &ApiState,
    id: &Identity,
    method: &Method,
    target: &Target,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (kind, namespace, name, subresource) = match target {
        Target::Object {
            kind,
            namespace,
            name,
            subresource,
        } => (*kind, namespace.clone().unwrap_or_default(), name.clone(), subresource.clone()),
        Target::Collection { kind, namespace } => {
            let name = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| v["metadata"]["name"].as_str().map(str::to_owned))
                .unwrap_or_default();
            (*kind, namespace.clone().unwrap_or_default(), name, None)
        }
        Target::GroupVersion { .. } => {
            return Err(ApiError::method_not_allowed("discovery documents are read-only"));
        }
    };
    let verb = match *method {
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        _ => {
            return Err(ApiError::method_not_allowed(format!("{method} is not supported")));
        }
    };
    let status_write = subresource.as_deref() == Some("status");
    let allowed = match (id, kind.origin) {
        // Desired state changes only through Git, whoever asks...
        (Identity::Node(node), Origin::Git) => {
            kind.kind == "Pod" && (status_write || verb == "delete") && pod_on_node(state, &namespace, &name, node)
        }
        // ...except that an administrator may delete a pod a controller made (to restart it).
        (Identity::Admin, Origin::Git) => kind.kind == "Pod" && verb == "delete" && pod_is_owned(state, &namespace, &name),
        (Identity::Node(node), Origin::Cluster) => match kind.kind {
            "Node" => name == *node,
            "Lease" => name == *node && namespace == "kube-node-lease",
            "Event" => verb == "create" || verb == "patch" || verb == "update",
            _ => false,
        },
        (Identity::Admin, Origin::Cluster) => kind.kind == "Node" && verb == "delete",
        _ => false,
    };
    if !allowed {
        if kind.origin == Origin::Git && !matches!(id, Identity::Node(_)) {
            return Err(managed_in_git(state, kind, &namespace, &name, verb));
        }
        return Err(ApiError::forbidden(format!(
            "{} may not {verb} {} {name:?}{}",
            id.user_name(),
            qualified(kind),
            if namespace.is_empty() {
                String::new()
            } else {
                format!(" in namespace {namespace:?}")
            }
        )));
    }
    let objects = &state.objects;
    let written = match verb {
        "delete" => {
            if kind.kind == "Pod" {
                request_pod_deletion(state, &namespace, &name, matches!(id, Identity::Node(_))).await?
            } else {
                objects.delete(kind, &namespace, &name, None).await?
            }
        }
        "create" => {
            let mut obj: Value = serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("invalid JSON: {e}")))?;
            if kind.namespaced {
                obj["metadata"]["namespace"] = json!(namespace);
            }
            if kind.kind == "Event" && obj["metadata"]["name"].as_str().unwrap_or("").is_empty() {
                obj["metadata"]["name"] = json!(format!(
                    "{}.{}",
                    obj["involvedObject"]["name"].as_str().unwrap_or("event"),
                    uuid::Uuid::new_v4().simple()
                ));
            }
            objects.create(kind, obj).await?
        }
        "update" => {
            let mut obj: Value = serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("invalid JSON: {e}")))?;
            obj["metadata"]["name"] = json!(name);
            if kind.namespaced {
                obj["metadata"]["namespace"] = json!(namespace);
            }
            objects.update(kind, obj, status_write).await?
        }
        _ => {
            let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
            if !(ct.starts_with("application/merge-patch+json") || ct.starts_with("application/strategic-merge-patch+json")) {
                return Err(ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "UnsupportedMediaType",
                    format!("patch type {ct:?} is not supported; use a merge patch"),
                ));
            }
            let patch: Value = serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("invalid JSON: {e}")))?;
            objects
                .modify(kind, &namespace, &name, status_write, |current| {
                    let before = current.clone();
                    merge_patch(current, &patch);
                    *current != before
                })
                .await?
        }
    };
    Ok(json_response(
        if verb == "create" { StatusCode::CREATED } else { StatusCode::OK },
        &written,
    ))
}

fn pod_on_node(state: &ApiState, namespace: &str, name: &str, node: &str) -> bool {
    let pods = capstan_api::kinds::by_name("pods").expect("pods are served");
    state
        .cache
        .get(pods, namespace, name)
        .is_some_and(|p| p.object["spec"]["nodeName"] == node)
}

fn pod_is_owned(state: &ApiState, namespace: &str, name: &str) -> bool {
    let pods = capstan_api::kinds::by_name("pods").expect("pods are served");
    state
        .cache
        .get(pods, namespace, name)
        .is_some_and(|p| p.object["metadata"]["ownerReferences"].as_array().is_some_and(|o| !o.is_empty()))
}

/// Deleting a pod is graceful: a pod that runs on a node is marked (deletionTimestamp) and its
/// node agent stops it and then removes the object; a pod on no node, or the agent's own
/// final delete, removes the object at once.
async fn request_pod_deletion(state: &ApiState, namespace: &str, name: &str, by_node: bool) -> Result<Value, ApiError> {
    state
        .objects
        .delete_pod(namespace, name, by_node)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("pods {name:?} not found")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_patches() {
        let mut t = json!({"metadata": {"labels": {"a": "1", "b": "2"}}, "spec": {"x": [1, 2]}});
        merge_patch(&mut t, &json!({"metadata": {"labels": {"a": null, "c": "3"}}, "spec": {"x": [3]}}));
        assert_eq!(t, json!({"metadata": {"labels": {"b": "2", "c": "3"}}, "spec": {"x": [3]}}));
    }
}
