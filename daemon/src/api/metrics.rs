//! The resource metrics API (`metrics.k8s.io/v1beta1`, what `kubectl top` reads): NodeMetrics
//! and PodMetrics made from the node agents' usage summaries, asked for when a client asks, as
//! metrics-server would have scraped them. A node that does not answer is left out, as
//! metrics-server leaves out nodes it could not scrape.

use std::collections::{BTreeMap, BTreeSet};

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use capstan_api::k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use capstan_api::k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use capstan_api::metrics::{ContainerMetrics, NodeMetrics, PodMetrics, Usage};
use futures::future::BoxFuture;
use serde_json::{Value, json};

use super::selectors::{FieldSelector, LabelSelector};
use super::status::ApiError;
use super::{Shared, authorize, json_response};
use crate::auth::Identity;
use crate::auth::{Attributes, Verb};

pub use capstan_api::metrics::{GROUP, RESOURCES, VERSION};
use capstan_api::metrics::{NODE_METRICS, POD_METRICS};

/// Reads a node agent's usage summary (the kubelet's Summary API shape).
pub trait SummarySource: Send + Sync {
    fn summary(&self, node: String) -> BoxFuture<'static, Result<Value, ApiError>>;
}

/// CPU and memory as metrics-server reports them: nano-cores, and the working set in KiB.
fn usage(of: &Value) -> Usage {
    let cpu = of["cpu"]["usageNanoCores"].as_u64().unwrap_or(0);
    let memory = of["memory"]["workingSetBytes"].as_u64().unwrap_or(0);
    Usage::from([
        ("cpu".to_owned(), Quantity(format!("{cpu}n"))),
        ("memory".to_owned(), Quantity(format!("{}Ki", memory / 1024))),
    ])
}

fn window(summary: &Value) -> String {
    let secs = summary["windowSeconds"].as_f64().unwrap_or(0.0);
    format!("{}s", secs.round().max(1.0) as u64)
}

/// When a usage was measured: its CPU sample's time (now, where the summary has none).
fn stamp(v: &Value) -> Time {
    Time(
        v["cpu"]["time"]
            .as_str()
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(jiff::Timestamp::now),
    )
}

fn labels(object: &Value) -> Option<BTreeMap<String, String>> {
    serde_json::from_value(object["metadata"]["labels"].clone()).ok()
}

fn to_value(metrics: impl serde::Serialize) -> Value {
    serde_json::to_value(metrics).expect("metrics serialise")
}

/// NodeMetrics of `node` from its agent's summary.
pub fn node_metrics(node: &Value, summary: &Value) -> Value {
    let n = &summary["node"];
    let at = stamp(n);
    let metadata = ObjectMeta {
        name: node["metadata"]["name"].as_str().map(str::to_owned),
        labels: labels(node),
        creation_timestamp: Some(at.clone()),
        ..Default::default()
    };
    to_value(NodeMetrics::new(metadata, at, window(summary), usage(n)))
}

/// PodMetrics of the pods of `summary` that `pods` (namespace, name) -> pod object keeps; the
/// uid must match, so a pod replaced under the same name is not given its predecessor's usage.
pub fn pod_metrics(summary: &Value, pods: &BTreeMap<(String, String), Value>) -> Vec<Value> {
    let mut out = Vec::new();
    for p in summary["pods"].as_array().into_iter().flatten() {
        let r = &p["podRef"];
        let key = (
            r["namespace"].as_str().unwrap_or_default().to_owned(),
            r["name"].as_str().unwrap_or_default().to_owned(),
        );
        let Some(pod) = pods.get(&key).filter(|pod| pod["metadata"]["uid"] == r["uid"]) else {
            continue;
        };
        let containers = p["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| ContainerMetrics {
                name: c["name"].as_str().unwrap_or_default().to_owned(),
                usage: usage(c),
            })
            .collect();
        let at = stamp(p);
        let metadata = ObjectMeta {
            name: Some(key.1),
            namespace: Some(key.0),
            labels: labels(pod),
            creation_timestamp: Some(at.clone()),
            ..Default::default()
        };
        out.push(to_value(PodMetrics::new(metadata, at, window(summary), containers)));
    }
    out
}

fn list(kind: &str, items: Vec<Value>) -> Value {
    json!({"kind": format!("{kind}List"), "apiVersion": format!("{GROUP}/{VERSION}"), "metadata": {}, "items": items})
}

/// The selectors of a list request.
fn selectors(query: Option<&str>) -> Result<(LabelSelector, FieldSelector), ApiError> {
    let (mut labels, mut fields) = (LabelSelector::parse("")?, FieldSelector::parse("")?);
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match k.as_ref() {
            "labelSelector" => labels = LabelSelector::parse(&v)?,
            "fieldSelector" => fields = FieldSelector::parse(&v)?,
            _ => {}
        }
    }
    Ok((labels, fields))
}

fn source(state: &super::ApiState) -> Result<&dyn SummarySource, ApiError> {
    state.metrics.as_deref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "the metrics API is not available: no node agent serves usage",
        )
    })
}

/// The summaries of `nodes`, asked for all at once; nodes that do not answer are left out.
pub async fn summaries(source: &dyn SummarySource, nodes: BTreeSet<String>) -> Vec<(String, Value)> {
    let asks = nodes.into_iter().map(|n| {
        let f = source.summary(n.clone());
        async move {
            match f.await {
                Ok(s) => Some((n, s)),
                Err(e) => {
                    tracing::debug!(node = %n, error = %e.message, "no usage summary from the node");
                    None
                }
            }
        }
    });
    futures::future::join_all(asks).await.into_iter().flatten().collect()
}

fn kind(plural: &str) -> &'static capstan_api::KindInfo {
    capstan_api::kinds::by_name(plural).expect("served kind")
}

async fn nodes(state: &super::ApiState, id: &Identity, name: Option<String>, query: Option<&str>) -> Result<Response, ApiError> {
    let verb = if name.is_some() { Verb::Get } else { Verb::List };
    authorize(
        state,
        id,
        &Attributes::new(verb, kind("nodes"), None, name.as_deref().unwrap_or_default()).in_group(GROUP),
    )?;
    let source = source(state)?;
    let (labels, fields) = selectors(query)?;
    let wanted: BTreeMap<String, Value> = match &name {
        Some(n) => {
            let node = state
                .cache
                .get(kind("nodes"), "", n)
                .ok_or_else(|| ApiError::not_found(format!("nodemetrics.metrics.k8s.io {n:?} not found")))?;
            BTreeMap::from([(n.clone(), (*node.object).clone())])
        }
        None => {
            let (all, _) = state.cache.list(kind("nodes"), None);
            all.iter()
                .filter(|e| labels.matches(e.object["metadata"].get("labels")) && fields.matches(&e.object))
                .map(|e| (e.name.clone(), (*e.object).clone()))
                .collect()
        }
    };
    let got = summaries(source, wanted.keys().cloned().collect()).await;
    let items: Vec<Value> = got.iter().map(|(n, s)| node_metrics(&wanted[n], s)).collect();
    answer(NODE_METRICS, name, items)
}

/// The one object asked for by name, or the list.
fn answer(kind: &str, name: Option<String>, items: Vec<Value>) -> Result<Response, ApiError> {
    match name {
        Some(n) => items.into_iter().next().map(|m| json_response(StatusCode::OK, &m)).ok_or_else(|| {
            let resource = kind.to_ascii_lowercase();
            ApiError::not_found(format!("{resource}.{GROUP} {n:?} not found"))
        }),
        None => Ok(json_response(StatusCode::OK, &list(kind, items))),
    }
}

async fn pods(
    state: &super::ApiState,
    id: &Identity,
    namespace: Option<String>,
    name: Option<String>,
    query: Option<&str>,
) -> Result<Response, ApiError> {
    let verb = if name.is_some() { Verb::Get } else { Verb::List };
    authorize(
        state,
        id,
        &Attributes::new(verb, kind("pods"), namespace.as_deref(), name.as_deref().unwrap_or_default()).in_group(GROUP),
    )?;
    let source = source(state)?;
    let (labels, fields) = selectors(query)?;
    let (all, _) = state.cache.list(kind("pods"), namespace.as_deref());
    let wanted: BTreeMap<(String, String), Value> = all
        .iter()
        .filter(|e| name.as_ref().is_none_or(|n| *n == e.name))
        .filter(|e| labels.matches(e.object["metadata"].get("labels")) && fields.matches(&e.object))
        .map(|e| ((e.namespace.clone(), e.name.clone()), (*e.object).clone()))
        .collect();
    // Only the nodes running the pods asked for.
    let hosts: BTreeSet<String> = wanted
        .values()
        .filter_map(|p| p["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()).map(str::to_owned))
        .collect();
    let mut items: Vec<Value> = summaries(source, hosts)
        .await
        .iter()
        .flat_map(|(_, s)| pod_metrics(s, &wanted))
        .collect();
    items.sort_by(|a, b| {
        let key = |v: &Value| (v["metadata"]["namespace"].to_string(), v["metadata"]["name"].to_string());
        key(a).cmp(&key(b))
    });
    answer(POD_METRICS, name, items)
}

fn identity(req_id: Option<axum::Extension<Identity>>) -> Identity {
    req_id.map(|axum::Extension(id)| id).expect("authenticated")
}

type Id = Option<axum::Extension<Identity>>;

/// The routes of the group (behind authentication).
pub fn routes() -> Router<Shared> {
    use axum::response::IntoResponse;
    let done = |r: Result<Response, ApiError>| r.unwrap_or_else(IntoResponse::into_response);
    Router::new()
        .route(
            "/apis/metrics.k8s.io/v1beta1",
            get(|| async { json_response(StatusCode::OK, &super::discovery::resource_list(GROUP, VERSION).unwrap_or_default()) }),
        )
        .route(
            "/apis/metrics.k8s.io/v1beta1/nodes",
            get(move |State(s): State<Shared>, id: Id, RawQuery(q): RawQuery| async move {
                done(nodes(&s, &identity(id), None, q.as_deref()).await)
            }),
        )
        .route(
            "/apis/metrics.k8s.io/v1beta1/nodes/{name}",
            get(move |State(s): State<Shared>, id: Id, Path(name): Path<String>| async move {
                done(nodes(&s, &identity(id), Some(name), None).await)
            }),
        )
        .route(
            "/apis/metrics.k8s.io/v1beta1/pods",
            get(move |State(s): State<Shared>, id: Id, RawQuery(q): RawQuery| async move {
                done(pods(&s, &identity(id), None, None, q.as_deref()).await)
            }),
        )
        .route(
            "/apis/metrics.k8s.io/v1beta1/namespaces/{namespace}/pods",
            get(
                move |State(s): State<Shared>, id: Id, Path(ns): Path<String>, RawQuery(q): RawQuery| async move {
                    done(pods(&s, &identity(id), Some(ns), None, q.as_deref()).await)
                },
            ),
        )
        .route(
            "/apis/metrics.k8s.io/v1beta1/namespaces/{namespace}/pods/{name}",
            get(
                move |State(s): State<Shared>, id: Id, Path((ns, name)): Path<(String, String)>| async move {
                    done(pods(&s, &identity(id), Some(ns), Some(name), None).await)
                },
            ),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary() -> Value {
        json!({
            "windowSeconds": 10.02,
            "node": {"nodeName": "n1", "cpu": {"time": "2026-11-27T10:00:00Z", "usageNanoCores": 250_000_000u64},
                     "memory": {"workingSetBytes": 2_147_483_648u64}},
            "pods": [
                {"podRef": {"name": "web", "namespace": "shop", "uid": "u1"},
                 "cpu": {"time": "2026-11-27T10:00:00Z", "usageNanoCores": 1_500_000u64},
                 "containers": [{"name": "app", "cpu": {"usageNanoCores": 1_500_000u64}, "memory": {"workingSetBytes": 5_242_880u64}}]},
                {"podRef": {"name": "old", "namespace": "shop", "uid": "gone"}, "containers": []}
            ]
        })
    }

    #[test]
    fn node_usage_is_in_kubernetes_quantities() {
        let node = json!({"metadata": {"name": "n1", "labels": {"zone": "a"}}});
        let m = node_metrics(&node, &summary());
        assert_eq!(m["usage"], json!({"cpu": "250000000n", "memory": "2097152Ki"}));
        assert_eq!(m["window"], "10s");
        assert_eq!(m["metadata"]["labels"]["zone"], "a");
        assert_eq!(m["timestamp"], "2026-11-27T10:00:00Z");
    }

    #[test]
    fn pods_are_matched_by_uid_and_filtered() {
        let pods = BTreeMap::from([
            (
                ("shop".to_owned(), "web".to_owned()),
                json!({"metadata": {"uid": "u1", "labels": {"app": "web"}}}),
            ),
            // Same name as a pod on the node, but a new pod: no usage of the old one.
            (("shop".to_owned(), "old".to_owned()), json!({"metadata": {"uid": "new"}})),
        ]);
        let m = pod_metrics(&summary(), &pods);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0]["metadata"]["name"], "web");
        assert_eq!(m[0]["metadata"]["labels"]["app"], "web");
        assert_eq!(
            m[0]["containers"],
            json!([{"name": "app", "usage": {"cpu": "1500000n", "memory": "5120Ki"}}])
        );
        assert!(pod_metrics(&summary(), &BTreeMap::new()).is_empty());
    }
}
