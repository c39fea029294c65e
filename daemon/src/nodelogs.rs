//! Container logs from the node agents: the API server's `pods/log` is proxied to the HTTPS
//! endpoint of the pod's node (see `crate::kubelet`).

use axum::body::Body;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::future::BoxFuture;
use http_body_util::BodyExt;
use serde_json::Value;

use crate::api::LogSource;
use crate::api::status::ApiError;
use crate::kubelet::KubeletClient;

/// The annotation naming the container kubectl picks when none is named.
const DEFAULT_CONTAINER: &str = "kubectl.kubernetes.io/default-container";

/// The query parameters the node endpoint understands.
const PASSED: [&str; 6] = ["follow", "previous", "tailLines", "timestamps", "sinceSeconds", "limitBytes"];

pub struct NodeLogs {
    kubelets: KubeletClient,
}

impl NodeLogs {
    pub fn new(kubelets: KubeletClient) -> NodeLogs {
        NodeLogs { kubelets }
    }
}

/// The container to read or run in: the one named, the pod's default-container annotation
/// (as kubectl honours it), or its only one.
pub(crate) fn pick_container(pod: &Value, asked: Option<&str>) -> Result<String, ApiError> {
    let name = pod["metadata"]["name"].as_str().unwrap_or_default();
    let names: Vec<&str> = ["containers", "initContainers", "ephemeralContainers"]
        .iter()
        .flat_map(|l| pod["spec"][l].as_array().into_iter().flatten())
        .filter_map(|c| c["name"].as_str())
        .collect();
    let default = pod["metadata"]["annotations"][DEFAULT_CONTAINER]
        .as_str()
        .filter(|c| names.contains(c));
    match asked.or(default) {
        Some(c) if names.contains(&c) => Ok(c.to_owned()),
        Some(c) => Err(ApiError::bad_request(format!("container {c} is not valid for pod {name}"))),
        None => {
            let regular: Vec<&str> = pod["spec"]["containers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c["name"].as_str())
                .collect();
            match regular.as_slice() {
                [only] => Ok((*only).to_owned()),
                _ => Err(ApiError::bad_request(format!(
                    "a container name must be specified for pod {name}, choose one of: [{}]",
                    regular.join(" ")
                ))),
            }
        }
    }
}

impl LogSource for NodeLogs {
    fn logs(&self, pod: Value, query: String) -> BoxFuture<'static, Result<Response, ApiError>> {
        let kubelets = self.kubelets.clone();
        Box::pin(async move {
            let name = pod["metadata"]["name"].as_str().unwrap_or_default().to_owned();
            let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default").to_owned();
            let Some(node) = pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()).map(str::to_owned) else {
                return Err(ApiError::bad_request(format!("pod {name} does not have a host assigned")));
            };
            let params: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes()).into_owned().collect();
            let asked = params.iter().find(|(k, _)| k == "container").map(|(_, v)| v.as_str());
            let container = pick_container(&pod, asked)?;
            let forwarded = {
                let mut f = url::form_urlencoded::Serializer::new(String::new());
                for (k, v) in params.iter().filter(|(k, _)| PASSED.contains(&k.as_str())) {
                    f.append_pair(k, v);
                }
                f.append_pair("podUID", pod["metadata"]["uid"].as_str().unwrap_or_default());
                f.finish()
            };
            let path = format!("/containerLogs/{ns}/{name}/{container}?{forwarded}");
            let answer = kubelets.get(&node, &path).await.map_err(|e| {
                if e.code == StatusCode::NOT_FOUND {
                    ApiError::not_found(format!("node {node:?} of pod {name} not found"))
                } else {
                    e
                }
            })?;
            let code = answer.status();
            if code != StatusCode::OK {
                let body = answer.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                let message = String::from_utf8_lossy(&body).trim().to_owned();
                // Kubernetes answers a missing (previous) container with a Bad Request.
                return Err(if code == StatusCode::NOT_FOUND {
                    ApiError::bad_request(message)
                } else {
                    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", message)
                });
            }
            Ok((
                StatusCode::OK,
                [(header::CONTENT_TYPE, "text/plain")],
                Body::new(answer.into_body()),
            )
                .into_response())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_container_is_named_or_the_only_one() {
        let one = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "web"}]}});
        assert_eq!(pick_container(&one, None).unwrap(), "web");
        let two =
            json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}, {"name": "b"}], "initContainers": [{"name": "i"}]}});
        assert_eq!(
            pick_container(&two, None).unwrap_err().message,
            "a container name must be specified for pod p, choose one of: [a b]"
        );
        assert_eq!(pick_container(&two, Some("i")).unwrap(), "i");
        assert_eq!(
            pick_container(&two, Some("x")).unwrap_err().message,
            "container x is not valid for pod p"
        );
    }
}
