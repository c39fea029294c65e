//! The `scale` subresource of Deployments, ReplicaSets and StatefulSets: the workload's replica
//! count read as an `autoscaling/v1` Scale, which `kubectl get --subresource=scale`, `kubectl
//! autoscale` (it looks for the subresource in discovery) and tools that scale any workload
//! read. Writing a Scale is writing the workload's `replicas`, desired state: the write path
//! refuses it with the Git file, as it refuses a patch of the workload.

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use capstan_api::KindInfo;
use serde_json::{Value, json};

use super::ApiState;
use super::reads::{get_entry, parse_query, table_response, wants_table};
use super::status::ApiError;
use super::table::{self, Include};
use crate::auth::Identity;

/// The Scale's group, version and kind, as discovery names the subresource's answer.
pub const GROUP: &str = "autoscaling";
pub const VERSION: &str = "v1";
pub const KIND: &str = "Scale";

/// `workload` (stored at `resource_version`) as its Scale: the desired count (Kubernetes'
/// default of 1 where none is set), the pods it has, and its selector as a query string.
pub fn of(workload: &Value, resource_version: &str) -> Value {
    let m = &workload["metadata"];
    json!({
        "kind": KIND,
        "apiVersion": format!("{GROUP}/{VERSION}"),
        "metadata": {
            "name": m["name"],
            "namespace": m["namespace"],
            "uid": m["uid"],
            "resourceVersion": resource_version,
            "creationTimestamp": m["creationTimestamp"],
        },
        "spec": {"replicas": workload["spec"]["replicas"].as_i64().unwrap_or(1)},
        "status": {
            "replicas": workload["status"]["replicas"].as_i64().unwrap_or(0),
            "selector": table::selector_string(&workload["spec"]["selector"]),
        },
    })
}

/// `GET …/NAME/scale`: the workload's Scale, or a Table of it for kubectl.
pub(super) async fn read(
    state: &ApiState,
    id: &Identity,
    kind: &'static KindInfo,
    namespace: &Option<String>,
    name: &str,
    headers: &HeaderMap,
    query: &str,
) -> Result<Response, ApiError> {
    let entry = get_entry(state, id, kind, namespace, name, Some("scale")).await?;
    let scale = of(&entry.object, &entry.revision.to_string());
    if wants_table(headers) {
        let include = Include::parse(parse_query(query)?.include.as_deref());
        let mut row = json!({"cells": table::scale_cells(&scale)});
        if let Some(object) = table::row_object(&scale, include) {
            row["object"] = object;
        }
        return Ok(table_response(&json!({
            "kind": "Table", "apiVersion": "meta.k8s.io/v1",
            "metadata": {"resourceVersion": entry.revision.to_string()},
            "columnDefinitions": table::scale_columns(),
            "rows": [row],
        })));
    }
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_vec(&scale).unwrap_or_default(),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_workload_reads_as_its_scale() {
        let deployment = json!({
            "metadata": {"name": "web", "namespace": "shop", "uid": "u1", "creationTimestamp": "2026-12-07T00:00:00Z",
                         "labels": {"app": "web"}},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web", "tier": "front"},
                     "matchExpressions": [{"key": "track", "operator": "NotIn", "values": ["canary"]}]}},
            "status": {"replicas": 4, "readyReplicas": 3},
        });
        let s = of(&deployment, "42");
        assert_eq!(s["apiVersion"], "autoscaling/v1");
        assert_eq!(s["kind"], "Scale");
        assert_eq!(
            s["metadata"],
            json!({"name": "web", "namespace": "shop", "uid": "u1", "resourceVersion": "42",
                   "creationTimestamp": "2026-12-07T00:00:00Z"})
        );
        assert_eq!(s["spec"], json!({"replicas": 3}));
        assert_eq!(
            s["status"],
            json!({"replicas": 4, "selector": "app=web,tier=front,track notin (canary)"})
        );
        assert_eq!(table::scale_cells(&s), [json!("web"), json!(3), json!(4)]);
    }

    #[test]
    fn without_a_count_or_status_the_defaults_are_kubernetes() {
        let s = of(&json!({"metadata": {"name": "db"}, "spec": {"selector": {}}}), "7");
        assert_eq!(s["spec"]["replicas"], 1);
        assert_eq!(s["status"], json!({"replicas": 0, "selector": ""}));
    }
}
