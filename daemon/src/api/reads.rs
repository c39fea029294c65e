//! Reads: get and list (JSON, Tables, continue tokens), and pod logs.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use capstan_api::KindInfo;
use serde_json::{Value, json};

use super::selectors::{FieldSelector, LabelSelector};
use super::status::ApiError;
use super::table::{self, Include};
use super::{ApiState, accept, authorize};
use crate::auth::{Attributes, Identity, Verb};
use crate::cache::Entry;

/// Query parameters of reads.
#[derive(Debug, Default)]
pub(super) struct ReadParams {
    pub(super) labels: LabelSelector,
    pub(super) fields: FieldSelector,
    pub(super) limit: usize,
    pub(super) continue_token: Option<String>,
    pub(super) watch: bool,
    pub(super) resource_version: Option<String>,
    pub(super) timeout: Option<Duration>,
    pub(super) bookmarks: bool,
    pub(super) include: Option<String>,
}

pub(super) fn parse_query(query: &str) -> Result<ReadParams, ApiError> {
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

pub(super) fn wants_table(headers: &HeaderMap) -> bool {
    accept(headers).split(',').next().is_some_and(|first| first.contains("as=Table"))
}

fn list_kind(kind: &KindInfo) -> String {
    format!("{}List", kind.kind)
}

pub(super) fn entry_selected(e: &Entry, p: &ReadParams) -> bool {
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

pub(super) async fn read_collection(
    state: &ApiState,
    id: &Identity,
    kind: &'static KindInfo,
    namespace: Option<&str>,
    query: &str,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let p = parse_query(query)?;
    let verb = if p.watch { Verb::Watch } else { Verb::List };
    // A collection narrowed to one name by its field selector is authorised as that object, as
    // Kubernetes does: a node may watch the one Secret it may get.
    let name = p.fields.required("metadata.name").unwrap_or_default();
    authorize(state, id, &Attributes::new(verb, kind, namespace, name))?;
    if p.watch {
        return Ok(super::watch::watch(state, kind, namespace, p, wants_table(headers)).await);
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

pub(super) fn table_row(kind: &KindInfo, o: &Value, now: i64, include: Include) -> Value {
    let mut row = json!({"cells": table::cells(kind, o, now)});
    if let Some(obj) = table::row_object(o, include) {
        row["object"] = obj;
    }
    row
}

pub(super) fn table_response(v: &Value) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json;as=Table;v=v1;g=meta.k8s.io")],
        serde_json::to_vec(v).unwrap_or_default(),
    )
        .into_response()
}

/// The stored object a `get` names, once `id` may read it (or its `subresource`) and the cache has
/// caught up with the store; 404 when there is none.
pub(super) async fn get_entry(
    state: &ApiState,
    id: &Identity,
    kind: &'static KindInfo,
    namespace: &Option<String>,
    name: &str,
    subresource: Option<&str>,
) -> Result<Arc<Entry>, ApiError> {
    let attributes = Attributes::new(Verb::Get, kind, namespace.as_deref(), name).subresource(subresource);
    authorize(state, id, &attributes)?;
    state.cache.wait_for(state.objects.store().revision()).await;
    state
        .cache
        .get(kind, namespace.as_deref().unwrap_or(""), name)
        .ok_or_else(|| ApiError::not_found(format!("{} {name:?} not found", kind.resource())).with_details(name, kind.group, kind.plural))
}

pub(super) async fn read_object(
    state: &ApiState,
    id: &Identity,
    kind: &'static KindInfo,
    namespace: &Option<String>,
    name: &str,
    headers: &HeaderMap,
    query: &str,
) -> Result<Response, ApiError> {
    let entry = get_entry(state, id, kind, namespace, name, None).await?;
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

pub(super) async fn pod_logs(
    state: &ApiState,
    id: &Identity,
    namespace: &Option<String>,
    name: &str,
    query: &str,
) -> Result<Response, ApiError> {
    let pods = capstan_api::kinds::by_name("pods").expect("pods are served");
    let ns = namespace.as_deref().unwrap_or("default");
    authorize(
        state,
        id,
        &Attributes::new(Verb::Get, pods, Some(ns), name).subresource(Some("log")),
    )?;
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
