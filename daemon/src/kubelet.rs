//! The API server's client of the node agents' HTTPS endpoints (the kubelet port): the node's
//! address and port from its Node object, the API server's client certificate, and the node's
//! certificate checked against the cluster CA.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{StatusCode, header};
use futures::future::BoxFuture;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::Value;

use crate::api::metrics::SummarySource;
use crate::api::status::ApiError;
use crate::cache::Cache;
use crate::pki::{Ca, PkiError};

/// How long a node agent has to accept the connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct KubeletClient {
    cache: Arc<Cache>,
    tls: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for KubeletClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KubeletClient")
    }
}

impl KubeletClient {
    /// Issues the API server's client certificate and trusts only the cluster CA.
    pub fn new(ca: &Ca, cache: Arc<Cache>) -> Result<KubeletClient, PkiError> {
        let client = ca.issue(capstan_runtime::tls::KUBELET_CLIENT, Some("system:masters"), &[], &[], false, true)?;
        let tls = capstan_runtime::tls::client(&ca.cert_pem, &client.cert_pem, &client.key_pem).map_err(|e| PkiError::Tls(e.0))?;
        Ok(KubeletClient { cache, tls })
    }

    /// `GET path` on `node`'s agent. Any answer is returned (the caller reads the code); a node
    /// that is unknown or does not answer is a 404 or 503 Status naming it.
    pub async fn get(&self, node: &str, path: &str) -> Result<http::Response<Incoming>, ApiError> {
        let (mut sender, unavailable) = self.connect(node, StatusCode::SERVICE_UNAVAILABLE).await?;
        let request = http::Request::get(path)
            .header(header::HOST, node)
            .body(Empty::<bytes::Bytes>::new())
            .map_err(|e| ApiError::internal(e.to_string()))?;
        sender.send_request(request).await.map_err(|e| unavailable(e.to_string()))
    }

    /// Opens a WebSocket speaking `protocol` to `path` on `node`'s agent (exec, attach). An agent
    /// that does not answer is a 502 naming the node; one that refuses gives its own message.
    pub async fn websocket(&self, node: &str, path: &str, protocol: &str) -> Result<AgentSocket, ApiError> {
        let (mut sender, unavailable) = self.connect(node, StatusCode::BAD_GATEWAY).await?;
        let mut key = [0u8; 16];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut key);
        let key = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, key);
        let request = http::Request::get(path)
            .header(header::HOST, node)
            .header(header::CONNECTION, "Upgrade")
            .header(header::UPGRADE, "websocket")
            .header(header::SEC_WEBSOCKET_VERSION, "13")
            .header(header::SEC_WEBSOCKET_KEY, &key)
            .header(header::SEC_WEBSOCKET_PROTOCOL, protocol)
            .body(Empty::<bytes::Bytes>::new())
            .map_err(|e| ApiError::internal(e.to_string()))?;
        let answer = sender.send_request(request).await.map_err(|e| unavailable(e.to_string()))?;
        let code = answer.status();
        if code != StatusCode::SWITCHING_PROTOCOLS {
            let body = answer.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            let message = String::from_utf8_lossy(&body).trim().to_owned();
            return Err(match code {
                StatusCode::NOT_FOUND | StatusCode::BAD_REQUEST => ApiError::bad_request(message),
                _ => unavailable(format!("{code}: {message}")),
            });
        }
        let expected = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
        if answer.headers().get(header::SEC_WEBSOCKET_ACCEPT).and_then(|v| v.to_str().ok()) != Some(expected.as_str()) {
            return Err(unavailable("the WebSocket handshake was not answered correctly".into()));
        }
        let upgraded = hyper::upgrade::on(answer).await.map_err(|e| unavailable(e.to_string()))?;
        Ok(tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            tokio_tungstenite::tungstenite::protocol::Role::Client,
            None,
        )
        .await)
    }

    /// An HTTP/1.1 connection (upgrades allowed) to `node`'s agent, and how to say it failed.
    async fn connect(
        &self,
        node: &str,
        failure: StatusCode,
    ) -> Result<(SendRequest<Empty<bytes::Bytes>>, impl Fn(String) -> ApiError + use<>), ApiError> {
        let nodes = capstan_api::kinds::by_name("nodes").expect("nodes are served");
        let node_obj = self
            .cache
            .get(nodes, "", node)
            .ok_or_else(|| ApiError::not_found(format!("node {node:?} not found")))?;
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
        let unavailable = {
            let (node, address) = (node.to_owned(), address.clone());
            move |e: String| {
                let reason = if failure == StatusCode::BAD_GATEWAY {
                    "BadGateway"
                } else {
                    "ServiceUnavailable"
                };
                ApiError::new(
                    failure,
                    reason,
                    format!("the node agent of {node} at {address}:{port} did not answer: {e}"),
                )
            }
        };
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect((address.as_str(), port as u16)))
            .await
            .map_err(|_| unavailable("timed out".into()))?
            .map_err(|e| unavailable(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let server_name = rustls::pki_types::ServerName::try_from(node.to_owned()).map_err(|e| unavailable(e.to_string()))?;
        let stream = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(server_name, tcp)
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        Ok((sender, unavailable))
    }
}

/// The API server's end of a stream to a node agent.
pub type AgentSocket = tokio_tungstenite::WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

impl SummarySource for KubeletClient {
    fn summary(&self, node: String) -> BoxFuture<'static, Result<Value, ApiError>> {
        let me = self.clone();
        Box::pin(async move {
            let answer = me.get(&node, "/stats/summary").await?;
            let code = answer.status();
            let body = answer
                .into_body()
                .collect()
                .await
                .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", e.to_string()))?
                .to_bytes();
            if code != StatusCode::OK {
                let message = format!("node {node}: {}", String::from_utf8_lossy(&body).trim());
                return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", message));
            }
            serde_json::from_slice(&body).map_err(|e| ApiError::internal(format!("node {node}: the usage summary is not JSON: {e}")))
        })
    }
}
