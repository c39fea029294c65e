//! ServiceAccounts: every active namespace has a `default` ServiceAccount, and the cluster CA in
//! ConfigMap `kube-root-ca.crt` (Kubernetes' root-CA publisher), which the service-account
//! volume the node agents mount into pods reads its `ca.crt` from.

use capstan_runtime::{Action, Reconciler};
use serde_json::json;

use super::{Context, kind};
use crate::objects::ObjectError;

/// The ConfigMap holding the cluster CA in every namespace.
pub const ROOT_CA_CONFIG_MAP: &str = "kube-root-ca.crt";

pub struct ServiceAccountController {
    pub ctx: Context,
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
