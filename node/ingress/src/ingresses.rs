//! Ingresses into the routing table: which Ingresses Capstan serves (by class), their rules on the
//! node's HTTP and HTTPS ports with Kubernetes' semantics (a `*.` wildcard covers one label;
//! Exact before Prefix; the older Ingress holds a host and path two claim), the certificates
//! their TLS sections name, and what to report: claimed paths and backends that do not exist.

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::networking::v1::{Ingress, IngressBackend, IngressClass};

use crate::backends::{Backends, PortRef};
use crate::table::{Action, Matcher, PathMatch, Rule, SecretRef, Tables, Weighted, Wildcard, normal_host};

/// The `spec.controller` of IngressClasses Capstan serves.
pub const CONTROLLER: &str = "capstan.dev/ingress-controller";
/// The IngressClass the daemon creates, marked as the cluster's default.
pub const DEFAULT_CLASS: &str = "capstan";
/// The annotation older manifests name their class with.
const CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";
/// The annotation that makes an IngressClass the default for Ingresses that name none.
pub const DEFAULT_CLASS_ANNOTATION: &str = "ingressclass.kubernetes.io/is-default-class";

/// Two Ingresses claiming one host and path: the older holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    /// `namespace/name` of the Ingress refused the path.
    pub ingress: String,
    pub host: String,
    pub path: String,
    /// `namespace/name` of the Ingress that holds it.
    pub holder: String,
}

/// A backend an Ingress names that cannot answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Missing {
    pub ingress: String,
    pub message: String,
}

/// What building the Ingresses' rules found.
#[derive(Debug, Default)]
pub struct Report {
    /// The Ingresses served, `namespace/name`.
    pub served: Vec<String>,
    pub conflicts: Vec<Conflict>,
    pub missing: Vec<Missing>,
}

/// The ports Ingresses are served on: the node's HTTP and HTTPS listeners.
#[derive(Clone, Copy, Debug)]
pub struct IngressPorts {
    pub http: Option<u16>,
    pub https: Option<u16>,
}

/// The class an Ingress names, if any.
fn class_of(ingress: &Ingress) -> Option<&str> {
    ingress
        .spec
        .as_ref()
        .and_then(|s| s.ingress_class_name.as_deref())
        .or_else(|| ingress.metadata.annotations.as_ref()?.get(CLASS_ANNOTATION).map(String::as_str))
}

/// Whether Capstan serves the Ingress: its class is Capstan's; or it names none and no other
/// controller's class is the default; or it names a class that does not exist (Capstan is the
/// cluster's only ingress controller, and manifests written for `nginx` or `traefik` must work
/// unchanged).
pub fn serves(ingress: &Ingress, classes: &[IngressClass]) -> bool {
    let ours = |c: &IngressClass| c.spec.as_ref().and_then(|s| s.controller.as_deref()) == Some(CONTROLLER);
    match class_of(ingress) {
        Some(name) => classes.iter().find(|c| c.metadata.name.as_deref() == Some(name)).is_none_or(ours),
        None => !classes.iter().any(|c| {
            c.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(DEFAULT_CLASS_ANNOTATION))
                .map(String::as_str)
                == Some("true")
                && !ours(c)
        }),
    }
}

fn key(ingress: &Ingress) -> String {
    format!(
        "{}/{}",
        ingress.metadata.namespace.as_deref().unwrap_or("default"),
        ingress.metadata.name.as_deref().unwrap_or_default()
    )
}

/// Adds every Ingress Capstan serves (the oldest first: it holds what two claim) to `tables` on
/// `ports`, its backends from `backends`.
pub fn add<'a>(
    tables: &mut Tables,
    ports: IngressPorts,
    ingresses: impl IntoIterator<Item = &'a Ingress>,
    classes: &[IngressClass],
    backends: &mut Backends<'_>,
) -> Report {
    let mut ingresses: Vec<&Ingress> = ingresses.into_iter().filter(|i| serves(i, classes)).collect();
    ingresses.sort_by_key(|i| (i.metadata.creation_timestamp.clone().map(|t| t.0), key(i)));
    let mut report = Report::default();
    let mut claimed: HashMap<(String, String, bool), String> = HashMap::new();
    let mut default_taken = false;
    for ingress in ingresses {
        let Some(spec) = &ingress.spec else { continue };
        let id = key(ingress);
        let namespace = ingress.metadata.namespace.as_deref().unwrap_or("default");
        let created = ingress.metadata.creation_timestamp.as_ref().map(|t| t.0.to_string());
        report.served.push(id.clone());
        let mut target_of = |backend: &IngressBackend| {
            let target = match &backend.service {
                Some(svc) => {
                    let port = svc.port.as_ref();
                    let port = match (port.and_then(|p| p.name.clone()), port.and_then(|p| p.number)) {
                        (Some(name), _) => PortRef::Name(name),
                        (None, Some(n)) => PortRef::Number(n),
                        (None, None) => PortRef::Number(0),
                    };
                    backends.service(namespace, &svc.name, &port)
                }
                None => {
                    let name = backend
                        .resource
                        .as_ref()
                        .map(|r| format!("{}/{}", r.kind, r.name))
                        .unwrap_or_default();
                    backends.broken(
                        format!("{namespace}/{name}"),
                        format!("backend {name} in {namespace}: only Service backends are supported"),
                    )
                }
            };
            if let Err(message) = &target.endpoints {
                report.missing.push(Missing {
                    ingress: id.clone(),
                    message: message.clone(),
                });
            }
            Arc::new(Action::forward(vec![Weighted {
                target,
                weight: 1,
                request_headers: Default::default(),
                response_headers: Default::default(),
                mirrors: Vec::new(),
            }]))
        };
        let mut rules: Vec<(String, Rule)> = Vec::new();
        let mut index = 0;
        let mut rule = |matcher: Matcher, action: Arc<Action>| {
            index += 1;
            Rule {
                matcher,
                action,
                source: format!("Ingress {id}"),
                age: (created.clone(), id.clone(), index),
            }
        };
        if let Some(backend) = &spec.default_backend {
            let action = target_of(backend);
            if !default_taken {
                default_taken = true;
                rules.push((String::new(), rule(Matcher::path(PathMatch::prefix("/")), action)));
            }
        }
        for r in spec.rules.iter().flatten() {
            let host = r.host.as_deref().map(normal_host).unwrap_or_default();
            for p in r.http.iter().flat_map(|h| &h.paths) {
                let written = p.path.as_deref().unwrap_or("/");
                let exact = p.path_type == "Exact";
                let path = if exact {
                    PathMatch::Exact(written.to_owned())
                } else {
                    PathMatch::prefix(written)
                };
                let normal = match &path {
                    PathMatch::Exact(p) | PathMatch::Prefix(p) => p.clone(),
                    PathMatch::Regex(r) => r.as_str().to_owned(),
                };
                let claim = (host.clone(), normal, exact);
                if let Some(holder) = claimed.get(&claim) {
                    if *holder != id {
                        report.conflicts.push(Conflict {
                            ingress: id.clone(),
                            host: host.clone(),
                            path: written.to_owned(),
                            holder: holder.clone(),
                        });
                    }
                    continue;
                }
                claimed.insert(claim, id.clone());
                let action = target_of(&p.backend);
                rules.push((host.clone(), rule(Matcher::path(path), action)));
            }
        }
        for port in [ports.http.map(|p| (p, false)), ports.https.map(|p| (p, true))]
            .into_iter()
            .flatten()
        {
            let table = tables.port(port.0, port.1);
            for (host, rule) in &rules {
                table.add(host, Wildcard::OneLabel, rule.clone());
            }
        }
        if let Some(https) = ports.https {
            let table = tables.port(https, true);
            for tls in spec.tls.iter().flatten() {
                let Some(secret) = &tls.secret_name else { continue };
                for host in tls.hosts.iter().flatten() {
                    table.certificates.entry(normal_host(host)).or_insert_with(|| SecretRef {
                        namespace: namespace.to_owned(),
                        name: secret.clone(),
                    });
                }
            }
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use serde_json::{Value, json};

    fn ingress(name: &str, created: &str, spec: Value) -> Ingress {
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": "shop", "creationTimestamp": created}, "spec": spec}))
            .unwrap()
    }

    fn path(path: &str, kind: &str, service: &str) -> Value {
        json!({"path": path, "pathType": kind, "backend": {"service": {"name": service, "port": {"number": 80}}}})
    }

    fn service(name: &str) -> Service {
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": "shop"},
            "spec": {"clusterIP": "10.96.0.9", "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}))
        .unwrap()
    }

    fn slice(service: &str, ip: &str) -> EndpointSlice {
        serde_json::from_value(json!({"metadata": {"name": format!("{service}-x"), "namespace": "shop",
                "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": 8080}],
            "endpoints": [{"addresses": [ip], "conditions": {"ready": true}}]}))
        .unwrap()
    }

    fn build(ingresses: &[Ingress]) -> (Tables, Report) {
        let services = [service("web"), service("api"), service("docs")];
        let slices = [slice("web", "10.244.0.2"), slice("api", "10.244.0.3"), slice("docs", "10.244.0.4")];
        let mut backends = Backends::new(&services, &slices);
        let mut tables = Tables::default();
        let ports = IngressPorts {
            http: Some(80),
            https: Some(443),
        };
        let report = add(&mut tables, ports, ingresses, &[], &mut backends);
        tables.finish();
        (tables, report)
    }

    fn route<'t>(t: &'t Tables, host: &str, path: &str) -> Option<&'t Rule> {
        let headers = hyper::HeaderMap::new();
        let request = crate::table::Request {
            host,
            path,
            query: "",
            method: "GET",
            headers: &headers,
        };
        t.ports[&80].table.route(&request)
    }

    fn to(t: &(Tables, Report), host: &str, path: &str) -> Option<String> {
        route(&t.0, host, path).map(|r| r.action.backends[0].target.name.clone())
    }

    #[test]
    fn hosts_and_paths_follow_kubernetes_precedence() {
        let t = build(&[ingress(
            "shop",
            "2026-01-01T00:00:00Z",
            json!({"rules": [
                {"host": "shop.example", "http": {"paths": [
                    path("/", "Prefix", "web"), path("/api/", "Prefix", "api"), path("/api", "Exact", "docs"),
                    path("/api/v2", "ImplementationSpecific", "docs")]}},
                {"host": "*.example", "http": {"paths": [path("/", "Prefix", "docs")]}},
                {"http": {"paths": [path("/any", "Prefix", "api")]}}]}),
        )]);
        assert_eq!(to(&t, "shop.example", "/").as_deref(), Some("shop/web:80"));
        assert_eq!(to(&t, "SHOP.example:8080", "/cart").as_deref(), Some("shop/web:80"));
        // Exact beats Prefix at equal length; Prefix matches whole elements.
        assert_eq!(to(&t, "shop.example", "/api").as_deref(), Some("shop/docs:80"));
        assert_eq!(to(&t, "shop.example", "/api/").as_deref(), Some("shop/api:80"));
        assert_eq!(to(&t, "shop.example", "/api/orders").as_deref(), Some("shop/api:80"));
        assert_eq!(to(&t, "shop.example", "/apis").as_deref(), Some("shop/web:80"));
        // The longest prefix wins.
        assert_eq!(to(&t, "shop.example", "/api/v2/x").as_deref(), Some("shop/docs:80"));
        // A wildcard covers one label only.
        assert_eq!(to(&t, "blog.example", "/x").as_deref(), Some("shop/docs:80"));
        assert_eq!(to(&t, "a.blog.example", "/any/x").as_deref(), Some("shop/api:80"));
        assert_eq!(to(&t, "other", "/nothing"), None);
    }

    #[test]
    fn the_oldest_ingress_holds_a_claimed_path_and_missing_backends_are_named() {
        let old = ingress(
            "old",
            "2026-01-01T00:00:00Z",
            json!({"rules": [{"host": "a.example", "http": {"paths": [path("/", "Prefix", "web")]}}]}),
        );
        let new = ingress(
            "new",
            "2026-02-01T00:00:00Z",
            json!({"rules": [{"host": "a.example", "http": {"paths": [path("/", "Prefix", "api"), path("/x", "Prefix", "gone")]}}]}),
        );
        let t = build(&[new, old]);
        assert_eq!(to(&t, "a.example", "/").as_deref(), Some("shop/web:80"));
        assert_eq!(
            t.1.conflicts,
            [Conflict {
                ingress: "shop/new".into(),
                host: "a.example".into(),
                path: "/".into(),
                holder: "shop/old".into()
            }]
        );
        let rule = route(&t.0, "a.example", "/x/1").unwrap();
        assert_eq!(
            rule.action.backends[0].target.endpoints,
            Err("service shop/gone does not exist".into())
        );
        assert_eq!(t.1.missing[0].ingress, "shop/new");
    }

    #[test]
    fn classes_decide_which_ingresses_are_served() {
        let named = |class: &str| ingress("i", "2026-01-01T00:00:00Z", json!({"ingressClassName": class}));
        let class = |name: &str, controller: &str, default: bool| -> IngressClass {
            serde_json::from_value(
                json!({"metadata": {"name": name, "annotations": {DEFAULT_CLASS_ANNOTATION: default.to_string()}},
                "spec": {"controller": controller}}),
            )
            .unwrap()
        };
        let ours = class("capstan", CONTROLLER, true);
        let theirs = class("other", "example.com/other", false);
        assert!(serves(&named("capstan"), &[ours.clone(), theirs.clone()]));
        assert!(!serves(&named("other"), &[ours.clone(), theirs.clone()]));
        assert!(serves(&named("nginx"), std::slice::from_ref(&ours)), "a class nobody declares");
        let unnamed = ingress("i", "2026-01-01T00:00:00Z", json!({}));
        assert!(serves(&unnamed, &[ours]));
        assert!(!serves(&unnamed, &[class("other", "example.com/other", true)]));
    }

    #[test]
    fn certificates_by_exact_and_wildcard_name() {
        let t = build(&[ingress(
            "tls",
            "2026-01-01T00:00:00Z",
            json!({"tls": [{"hosts": ["a.example"], "secretName": "a"}, {"hosts": ["*.b.example"], "secretName": "b"}]}),
        )]);
        let https = &t.0.ports[&443].table;
        assert_eq!(https.certificate("A.example").unwrap().name, "a");
        assert_eq!(https.certificate("x.b.example").unwrap().name, "b");
        assert!(https.certificate("x.y.b.example").is_none());
    }
}
