//! Namespaces: the system namespaces and built-in Services exist from the start; an active
//! namespace says so in its status; a namespace being deleted (its manifest removed from Git)
//! has its pods drained first, then everything else in it removed, then itself.

use std::net::Ipv4Addr;
use std::time::Duration;

use capstan_api::REGISTRY;
use capstan_runtime::{Action, Reconciler};
use serde_json::json;

use super::endpoints::upsert;
use super::util::is_terminating;
use super::{Controller, name_of, watches};
use crate::context::{Context, kind};
use crate::objects::ObjectError;

pub const SYSTEM_NAMESPACES: [&str; 4] = ["default", "kube-system", "kube-public", "kube-node-lease"];
/// The ClusterIP of the `kubernetes` Service and of `kube-dns` (DESIGN.md).
pub const KUBERNETES_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 1);
pub const DNS_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

pub struct NamespaceController {
    pub ctx: Context,
}

/// Watches Namespaces.
pub fn controller(ctx: &Context) -> Controller<String, NamespaceController> {
    Controller {
        name: "namespace",
        reconciler: NamespaceController { ctx: ctx.clone() },
        workers: 2,
        triggers: vec![watches("namespaces", name_of)],
    }
}

impl Reconciler<String> for NamespaceController {
    type Error = ObjectError;

    async fn reconcile(&self, name: String) -> Result<Action, ObjectError> {
        let ctx = &self.ctx;
        ctx.caught_up().await;
        let ns_kind = kind("namespaces");
        let Some(ns) = ctx.cache.get(ns_kind, "", &name) else {
            return Ok(Action::AwaitChange);
        };
        if !is_terminating(&ns.object) {
            if ns.object["status"]["phase"] != "Active" {
                ctx.objects
                    .modify(ns_kind, "", &name, true, |n| {
                        n["status"] = json!({"phase": "Active"});
                        true
                    })
                    .await?;
            }
            return Ok(Action::AwaitChange);
        }
        if ns.object["status"]["phase"] != "Terminating" {
            ctx.objects
                .modify(ns_kind, "", &name, true, |n| {
                    n["status"] = json!({"phase": "Terminating"});
                    true
                })
                .await?;
        }
        // Pods first: their containers stop gracefully on their nodes.
        let (pods, _) = ctx.cache.list(kind("pods"), Some(&name));
        if !pods.is_empty() {
            for p in &pods {
                ctx.objects.delete_pod(&name, &p.name, false).await?;
            }
            return Ok(Action::Requeue(Duration::from_secs(1)));
        }
        let mut left = 0;
        for k in REGISTRY.iter().filter(|k| k.namespaced) {
            let (items, _) = ctx.cache.list(k, Some(&name));
            for item in items {
                left += 1;
                match ctx.objects.delete(k, &name, &item.name, None).await {
                    Ok(_) | Err(ObjectError::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        if left > 0 {
            return Ok(Action::Requeue(Duration::from_millis(500)));
        }
        match ctx.objects.delete(ns_kind, "", &name, None).await {
            Ok(_) | Err(ObjectError::NotFound { .. }) => Ok(Action::AwaitChange),
            Err(e) => Err(e),
        }
    }
}

/// Whether `ns` exists and is not being deleted.
pub fn is_active(ctx: &Context, ns: &str) -> bool {
    ctx.cache
        .get(kind("namespaces"), "", ns)
        .is_some_and(|n| !is_terminating(&n.object))
}

/// Creates the system namespaces and the `kubernetes` and `kube-dns` Services if missing.
pub async fn ensure_builtins(ctx: &Context) -> Result<(), ObjectError> {
    let ns_kind = kind("namespaces");
    for ns in SYSTEM_NAMESPACES {
        if ctx.objects.get(ns_kind, "", ns)?.is_none() {
            match ctx
                .objects
                .create(ns_kind, json!({"metadata": {"name": ns}, "status": {"phase": "Active"}}))
                .await
            {
                Ok(_) | Err(ObjectError::AlreadyExists { .. }) => {}
                Err(e) => return Err(e),
            }
        }
    }
    let svc = kind("services");
    let api_port = ctx.settings.api_endpoint.1;
    let builtins = [
        json!({"metadata": {"name": "kubernetes", "namespace": "default", "labels": {"component": "apiserver", "provider": "kubernetes"}},
               "spec": {"type": "ClusterIP", "clusterIP": KUBERNETES_IP.to_string(), "clusterIPs": [KUBERNETES_IP.to_string()], "ports": [{"name": "https", "port": 443, "targetPort": api_port, "protocol": "TCP"}]}}),
        json!({"metadata": {"name": "kube-dns", "namespace": "kube-system", "labels": {"k8s-app": "kube-dns", "kubernetes.io/cluster-service": "true", "kubernetes.io/name": "CoreDNS"}},
               "spec": {"type": "ClusterIP", "clusterIP": DNS_IP.to_string(), "clusterIPs": [DNS_IP.to_string()],
                        "ports": [{"name": "dns", "port": 53, "targetPort": 53, "protocol": "UDP"}, {"name": "dns-tcp", "port": 53, "targetPort": 53, "protocol": "TCP"}]}}),
    ];
    for s in builtins {
        let (ns, name) = (
            s["metadata"]["namespace"].as_str().unwrap_or_default().to_owned(),
            s["metadata"]["name"].as_str().unwrap_or_default().to_owned(),
        );
        if ctx.objects.get(svc, &ns, &name)?.is_none() {
            match ctx.objects.create(svc, s).await {
                Ok(_) | Err(ObjectError::AlreadyExists { .. }) => {}
                Err(e) => return Err(e),
            }
        }
    }
    // The default StorageClass (a class of the same name in Git replaces it).
    let class = super::volume::builtin_class();
    if ctx
        .objects
        .get(kind("storageclasses"), "", capstan_api::storage::DEFAULT_CLASS)?
        .is_none()
    {
        match ctx.objects.create(kind("storageclasses"), class).await {
            Ok(_) | Err(ObjectError::AlreadyExists { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    // The default IngressClass, served by every node's ingress (one of the same name in Git
    // replaces it).
    let ingress_classes = kind("ingressclasses");
    if ctx
        .objects
        .get(ingress_classes, "", capstan_ingress::ingresses::DEFAULT_CLASS)?
        .is_none()
    {
        let class = json!({"metadata": {"name": capstan_ingress::ingresses::DEFAULT_CLASS,
                                        "annotations": {capstan_ingress::ingresses::DEFAULT_CLASS_ANNOTATION: "true"}},
                           "spec": {"controller": capstan_ingress::ingresses::CONTROLLER}});
        match ctx.objects.create(ingress_classes, class).await {
            Ok(_) | Err(ObjectError::AlreadyExists { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    // The default GatewayClass (likewise).
    let gateway_classes = kind("gatewayclasses");
    if ctx
        .objects
        .get(gateway_classes, "", capstan_ingress::ingresses::DEFAULT_CLASS)?
        .is_none()
    {
        let class = json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
                           "metadata": {"name": capstan_ingress::ingresses::DEFAULT_CLASS},
                           "spec": {"controllerName": capstan_ingress::gateway::CONTROLLER,
                                    "description": "Every node's built-in HTTP(S) proxy"}});
        match ctx.objects.create(gateway_classes, class).await {
            Ok(_) | Err(ObjectError::AlreadyExists { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    // The default RBAC objects, kept as this version defines them (one of the same name from
    // Git replaces it, as for the StorageClass).
    let defaults = [
        ("clusterroles", crate::auth::bootstrap::cluster_roles()),
        ("clusterrolebindings", crate::auth::bootstrap::cluster_role_bindings()),
    ];
    for (plural, objects) in defaults {
        let rbac = capstan_api::kinds::by_plural("rbac.authorization.k8s.io", plural).expect("served kind");
        for object in objects {
            let name = object["metadata"]["name"].as_str().unwrap_or_default().to_owned();
            upsert(ctx, rbac, "", &name, object, |cur, new| {
                // An aggregated role's rules are the aggregation's (`auth::live`), not these.
                let rules = !new["aggregationRule"].is_null() || cur["rules"] == new["rules"];
                capstan_api::meta::from_git(cur)
                    || rules
                        && ["aggregationRule", "roleRef", "subjects"].iter().all(|f| cur[f] == new[f])
                        && cur["metadata"]["labels"] == new["metadata"]["labels"]
            })
            .await?;
        }
    }
    Ok(())
}
