//! Watches: the cache's changes streamed to a client as watch events, selections applied.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use capstan_api::KindInfo;
use futures::StreamExt;
use serde_json::{Value, json};

use super::ApiState;
use super::reads::{ReadParams, entry_selected, table_row};
use super::status::ApiError;
use super::table::{self, Include};
use crate::cache::{CacheError, Change, Entry};

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

pub(super) async fn watch(state: &ApiState, kind: &'static KindInfo, namespace: Option<&str>, p: ReadParams, table: bool) -> Response {
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
