//! ServiceAccounts: every active namespace has a `default` ServiceAccount.

use capstan_runtime::{Action, Reconciler};
use serde_json::json;

use super::{Context, kind};
use crate::objects::ObjectError;

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
        Ok(Action::AwaitChange)
    }
}
