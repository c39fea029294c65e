//! ServiceAccounts: every active namespace has a `default` ServiceAccount, and the cluster CA in
//! ConfigMap `kube-root-ca.crt` (Kubernetes' root-CA publisher), which the service-account
//! volume the node agents mount into pods reads its `ca.crt` from.

use capstan_runtime::{Action, Reconciler};
use serde_json::json;

use serde_json::Value;

use super::{Controller, name_of, watches};
use crate::context::{Context, kind};
use crate::objects::ObjectError;

/// The ConfigMap holding the cluster CA in every namespace.
pub const ROOT_CA_CONFIG_MAP: &str = "kube-root-ca.crt";

pub struct ServiceAccountController {
    pub ctx: Context,
}

/// Keyed by namespace: watches Namespaces, their ServiceAccounts and root CA ConfigMaps.
pub fn controller(ctx: &Context) -> Controller<String, ServiceAccountController> {
    let namespace = |v: &Value| vec![v["metadata"]["namespace"].as_str().unwrap_or_default().to_owned()];
    Controller {
        name: "serviceaccount",
        reconciler: ServiceAccountController { ctx: ctx.clone() },
        workers: 1,
        triggers: vec![
            watches("namespaces", name_of),
            watches("serviceaccounts", namespace),
            watches("configmaps", move |c: &Value| {
                if c["metadata"]["name"] == ROOT_CA_CONFIG_MAP {
                    namespace(c)
                } else {
                    Vec::new()
                }
            }),
        ],
    }
}

impl Reconciler<String> for ServiceAccountController {
    type Error = ObjectError;

    async fn reconcile(&self, ns: String) -> Result<Action, ObjectError> {
        let ctx = &self.ctx;
        ctx.caught_up().await;
        if !super::namespace::is_active(ctx, &ns) {
            return Ok(Action::AwaitChange);
        }
        let sa = kind("serviceaccounts");
        if ctx.cache.get(sa, &ns, "default").is_none() {
            match ctx
                .objects
                .create(sa, json!({"metadata": {"name": "default", "namespace": ns}}))
                .await
            {
                Ok(_) | Err(ObjectError::AlreadyExists { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        let ca = &ctx.settings.root_ca;
        let cms = kind("configmaps");
        if !ca.is_empty() && ctx.cache.get(cms, &ns, ROOT_CA_CONFIG_MAP).is_none() {
            let cm = json!({"metadata": {"name": ROOT_CA_CONFIG_MAP, "namespace": ns}, "data": {"ca.crt": ca}});
            match ctx.objects.create(cms, cm).await {
                Ok(_) | Err(ObjectError::AlreadyExists { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Action::AwaitChange)
    }
}
