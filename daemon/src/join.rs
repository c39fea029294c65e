//! Nodes joining the cluster (k3s style): a node presents the join secret from the node-token
//! file and gets a credential for itself alone, the CA, and a serving certificate for its own
//! HTTPS endpoint (where the API server fetches logs).

use std::net::IpAddr;
use std::sync::Arc;

use futures::future::BoxFuture;
use serde_json::{Value, json};

use crate::api::JoinHandler;
use crate::api::status::ApiError;
use crate::auth::Authenticator;
use crate::pki::Ca;

pub struct Joiner {
    pub auth: Arc<Authenticator>,
    pub ca: Arc<Ca>,
}

impl JoinHandler for Joiner {
    fn join(&self, node: String) -> BoxFuture<'static, Result<Value, ApiError>> {
        let auth = self.auth.clone();
        let ca = self.ca.clone();
        Box::pin(async move {
            let token = auth.issue_node_token(&node).await.map_err(|e| ApiError::internal(e.to_string()))?;
            let ips: Vec<IpAddr> = vec![IpAddr::from([127, 0, 0, 1])];
            let serving = ca
                .issue(
                    &format!("system:node:{node}"),
                    Some("system:nodes"),
                    &[node.clone(), "localhost".into()],
                    &ips,
                    true,
                    false,
                )
                .map_err(|e| ApiError::internal(e.to_string()))?;
            tracing::info!(node = %node, "node joined");
            Ok(json!({"token": token, "caCert": ca.cert_pem, "servingCert": serving.cert_pem, "servingKey": serving.key_pem}))
        })
    }
}
