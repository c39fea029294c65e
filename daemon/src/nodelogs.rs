//! Container logs from the node agents: the API server's `pods/log` is proxied to the HTTPS
//! endpoint of the pod's node (its address and port from the Node object), authenticated with
//! the API server's client certificate and checking the node's certificate against the CA.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::future::BoxFuture;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde_json::Value;

use crate::api::LogSource;
use crate::api::status::ApiError;
use crate::cache::Cache;
use crate::pki::{Ca, PkiError};

/// The query parameters the node endpoint understands.
const PASSED: [&str; 6] = ["follow", "previous", "tailLines", "timestamps", "sinceSeconds", "limitBytes"];

pub struct NodeLogs {
    cache: Arc<Cache>,
    tls: Arc<rustls::ClientConfig>,
}

impl NodeLogs {
    /// Issues the API server's client certificate and trusts only the cluster CA.
    pub fn new(ca: &Ca, cache: Arc<Cache>) -> Result<NodeLogs, PkiError> {
        let client = ca.issue("kube-apiserver-kubelet-client", Some("system:masters"), &[], &[], false, true)?;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.cert_der.clone().into()).map_err(|e| PkiError::Tls(e.to_string()))?;
        let certs: Vec<_> = rustls_pemfile::certs(&mut client.cert_pem.as_bytes())
            .filter_map(Result::ok)
            .collect();
        let key = rustls_pemfile::private_key(&mut client.key_pem.as_bytes())
            .ok()
            .flatten()
            .ok_or(PkiError::Pem { path: "client key".into() })?;
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| PkiError::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_client_auth_cert(certs, key)
            .map_err(|e| PkiError::Tls(e.to_string()))?;
        Ok(NodeLogs { cache, tls: Arc::new(tls) })
    }
}

/// The container to read: the one named, or the pod's only one.
fn pick_container(pod: &Value, asked: Option<&str>) -> Result<String, ApiError> {
    let name = pod["metadata"]["name"].as_str().unwrap_or_default();
    let names: Vec<&str> = ["containers", "initContainers"]
        .iter()
        .flat_map(|l| pod["spec"][l].as_array().into_iter().flatten())
        .filter_map(|c| c["name"].as_str())
        .collect();
    match asked {
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
        let cache = self.cache.clone();
        let tls = self.tls.clone();
        Box::pin(async move {
            let name = pod["metadata"]["name"].as_str().unwrap_or_default().to_owned();
            let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default").to_owned();
            let Some(node) = pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()).map(str::to_owned) else {
                return Err(ApiError::bad_request(format!("pod {name} does not have a host assigned")));
            };
            let params: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes()).into_owned().collect();
            let asked = params.iter().find(|(k, _)| k == "container").map(|(_, v)| v.as_str());
            let container = pick_container(&pod, asked)?;
            let nodes = capstan_api::kinds::by_name("nodes").expect("nodes are served");
            let node_obj = cache
                .get(nodes, "", &node)
                .ok_or_else(|| ApiError::not_found(format!("node {node:?} of pod {name} not found")))?;
            let status = &node_obj.object["status"];
            let address = status["addresses"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|a| a["type"] == "InternalIP")
                .and_then(|a| a["address"].as_str())
                .unwrap_or("127.0.0.1")
                .to_owned();
            let port = status["daemonEndpoints"]["kubeletEndpoint"]["Port"].as_u64().unwrap_or(10250);
            let forwarded = {
                let mut f = url::form_urlencoded::Serializer::new(String::new());
                for (k, v) in params.iter().filter(|(k, _)| PASSED.contains(&k.as_str())) {
                    f.append_pair(k, v);
                }
                f.append_pair("podUID", pod["metadata"]["uid"].as_str().unwrap_or_default());
                f.finish()
            };
            let path = format!("/containerLogs/{ns}/{name}/{container}?{forwarded}");
            let unavailable = |e: String| {
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "ServiceUnavailable",
                    format!("the node agent of {node} at {address}:{port} did not answer: {e}"),
                )
            };
            let tcp = tokio::time::timeout(
                Duration::from_secs(5),
                tokio::net::TcpStream::connect((address.as_str(), port as u16)),
            )
            .await
            .map_err(|_| unavailable("timed out".into()))?
            .map_err(|e| unavailable(e.to_string()))?;
            let server_name = rustls::pki_types::ServerName::try_from(node.clone()).map_err(|e| unavailable(e.to_string()))?;
            let stream = tokio_rustls::TlsConnector::from(tls)
                .connect(server_name, tcp)
                .await
                .map_err(|e| unavailable(e.to_string()))?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| unavailable(e.to_string()))?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            let request = http::Request::get(path)
                .header(header::HOST, node.as_str())
                .body(Empty::<bytes::Bytes>::new())
                .map_err(|e| ApiError::internal(e.to_string()))?;
            let answer = sender.send_request(request).await.map_err(|e| unavailable(e.to_string()))?;
            let code = answer.status();
            if code != StatusCode::OK {
                let body = answer.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                let message = String::from_utf8_lossy(&body).trim().to_owned();
                // Kubernetes answers a missing (previous) container with a Bad Request.
                return Err(if code == StatusCode::NOT_FOUND {
                    ApiError::bad_request(message)
                } else {
                    unavailable(message)
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
