//! The ingress's pure core: Ingresses, IngressClasses, Services and EndpointSlices in, a routing
//! table out — which backend answers a host and path, with Kubernetes' precedence (an exact host
//! before a `*.` wildcard before rules for any host; the longest matching path, Exact before
//! Prefix at equal length), the certificates named for each host, and what to report: paths two
//! Ingresses claim and backends that do not exist.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddrV4;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use capstan_proxy::model;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressBackend, IngressClass};

/// The `spec.controller` of IngressClasses Capstan serves.
pub const CONTROLLER: &str = "capstan.dev/ingress-controller";
/// The IngressClass the daemon creates, marked as the cluster's default.
pub const DEFAULT_CLASS: &str = "capstan";
/// The annotation older manifests name their class with.
const CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";
/// The annotation that makes an IngressClass the default for Ingresses that name none.
pub const DEFAULT_CLASS_ANNOTATION: &str = "ingressclass.kubernetes.io/is-default-class";

/// How a rule's path matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PathMatch {
    Exact,
    /// On whole path elements; `ImplementationSpecific` is read as Prefix.
    Prefix,
}

/// A Service port behind a route and its ready endpoints, chosen in turn.
#[derive(Debug)]
pub struct Target {
    /// `namespace/service:port`, for logs.
    pub name: String,
    /// The endpoints (pod address and target port), or why there are none.
    pub endpoints: Result<Vec<SocketAddrV4>, String>,
    next: AtomicUsize,
}

impl Target {
    fn new(name: String, endpoints: Result<Vec<SocketAddrV4>, String>) -> Target {
        Target {
            name,
            endpoints,
            next: AtomicUsize::new(0),
        }
    }

    /// The endpoints in the order to try them: round robin over the ready ones, skipping those
    /// `failed` says failed a moment ago (unless every one did).
    pub fn order(&self, failed: impl Fn(&SocketAddrV4) -> bool) -> Vec<SocketAddrV4> {
        let Ok(all) = &self.endpoints else { return Vec::new() };
        if all.is_empty() {
            return Vec::new();
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % all.len();
        let turn = all[start..].iter().chain(&all[..start]).copied();
        let (good, bad): (Vec<_>, Vec<_>) = turn.partition(|e| !failed(e));
        good.into_iter().chain(bad).collect()
    }
}

/// One path of one host.
#[derive(Clone, Debug)]
pub struct Route {
    /// The path as written (Prefix: without its trailing slash; `/` is the empty prefix).
    pub path: String,
    pub kind: PathMatch,
    pub target: Arc<Target>,
    /// `namespace/name` of the Ingress.
    pub ingress: String,
}

impl Route {
    fn matches(&self, path: &str) -> bool {
        match self.kind {
            PathMatch::Exact => path == self.path,
            PathMatch::Prefix => {
                self.path.is_empty()
                    || path
                        .strip_prefix(self.path.as_str())
                        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            }
        }
    }
}

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

/// The TLS Secret an Ingress names for a host.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SecretRef {
    pub namespace: String,
    pub name: String,
}

/// Every route the ingress serves.
#[derive(Debug, Default)]
pub struct Table {
    hosts: HashMap<String, Vec<Route>>,
    /// By the suffix after `*.`.
    wildcards: HashMap<String, Vec<Route>>,
    any_host: Vec<Route>,
    default_backend: Option<Route>,
    /// Certificates by host (exact, or `*.suffix`); the oldest Ingress's wins.
    pub certificates: BTreeMap<String, SecretRef>,
    /// The Ingresses served, `namespace/name`.
    pub served: Vec<String>,
    pub conflicts: Vec<Conflict>,
    pub missing: Vec<Missing>,
}

impl Table {
    /// The route for a request to `host` (any case, with or without a port) and `path` (without
    /// the query): the routes of the most specific host entry that exists, then the default
    /// backend.
    pub fn route(&self, host: &str, path: &str) -> Option<&Route> {
        let host = normal_host(host);
        let routes = self
            .hosts
            .get(&host)
            .or_else(|| host.split_once('.').and_then(|(_, suffix)| self.wildcards.get(suffix)))
            .unwrap_or(&self.any_host);
        routes.iter().find(|r| r.matches(path)).or(self.default_backend.as_ref())
    }

    /// The TLS Secret for a server name (SNI): exact, then the wildcard one label up.
    pub fn certificate(&self, server_name: &str) -> Option<&SecretRef> {
        let host = normal_host(server_name);
        self.certificates.get(&host).or_else(|| {
            let (_, suffix) = host.split_once('.')?;
            self.certificates.get(&format!("*.{suffix}"))
        })
    }
}

/// A Host header's name: lower case, without the port.
fn normal_host(host: &str) -> String {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(v6),
        None => host.split(':').next().unwrap_or(host),
    };
    name.trim_end_matches('.').to_ascii_lowercase()
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

/// Builds the table from every Ingress (those of other classes are left out), Service and
/// EndpointSlice.
pub fn table<'a>(
    ingresses: impl IntoIterator<Item = &'a Ingress>,
    classes: &[IngressClass],
    services: impl IntoIterator<Item = &'a Service>,
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
) -> Table {
    let services: HashMap<(&str, &str), &Service> = services
        .into_iter()
        .map(|s| {
            (
                (
                    s.metadata.namespace.as_deref().unwrap_or("default"),
                    s.metadata.name.as_deref().unwrap_or_default(),
                ),
                s,
            )
        })
        .collect();
    let slices = model::by_service(slices);
    // The oldest first: it holds what two claim.
    let mut ingresses: Vec<&Ingress> = ingresses.into_iter().filter(|i| serves(i, classes)).collect();
    ingresses.sort_by_key(|i| (i.metadata.creation_timestamp.clone().map(|t| t.0), key(i)));

    let mut t = Table::default();
    let mut targets: HashMap<String, Arc<Target>> = HashMap::new();
    let mut claimed: HashMap<(String, String, PathMatch), String> = HashMap::new();
    for ingress in ingresses {
        let Some(spec) = &ingress.spec else { continue };
        let id = key(ingress);
        let namespace = ingress.metadata.namespace.as_deref().unwrap_or("default");
        t.served.push(id.clone());
        let mut target_of = |backend: &IngressBackend| -> Arc<Target> {
            let (name, endpoints) = resolve(namespace, backend, &services, &slices);
            if let Err(message) = &endpoints {
                t.missing.push(Missing {
                    ingress: id.clone(),
                    message: message.clone(),
                });
            }
            targets
                .entry(name.clone())
                .or_insert_with(|| Arc::new(Target::new(name, endpoints)))
                .clone()
        };
        if let Some(backend) = &spec.default_backend {
            let target = target_of(backend);
            if t.default_backend.is_none() {
                t.default_backend = Some(Route {
                    path: String::new(),
                    kind: PathMatch::Prefix,
                    target,
                    ingress: id.clone(),
                });
            }
        }
        for rule in spec.rules.iter().flatten() {
            let host = rule.host.as_deref().map(normal_host).unwrap_or_default();
            for p in rule.http.iter().flat_map(|h| &h.paths) {
                let kind = if p.path_type == "Exact" {
                    PathMatch::Exact
                } else {
                    PathMatch::Prefix
                };
                let written = p.path.as_deref().unwrap_or("/");
                let path = match kind {
                    PathMatch::Exact => written.to_owned(),
                    PathMatch::Prefix => written.trim_end_matches('/').to_owned(),
                };
                let claim = (host.clone(), path.clone(), kind);
                if let Some(holder) = claimed.get(&claim) {
                    if *holder != id {
                        t.conflicts.push(Conflict {
                            ingress: id.clone(),
                            host: host.clone(),
                            path: written.to_owned(),
                            holder: holder.clone(),
                        });
                    }
                    continue;
                }
                claimed.insert(claim, id.clone());
                let route = Route {
                    path,
                    kind,
                    target: target_of(&p.backend),
                    ingress: id.clone(),
                };
                let routes = if host.is_empty() {
                    &mut t.any_host
                } else if let Some(suffix) = host.strip_prefix("*.") {
                    t.wildcards.entry(suffix.to_owned()).or_default()
                } else {
                    t.hosts.entry(host.clone()).or_default()
                };
                routes.push(route);
            }
        }
        for tls in spec.tls.iter().flatten() {
            let Some(secret) = &tls.secret_name else { continue };
            for host in tls.hosts.iter().flatten() {
                t.certificates.entry(normal_host(host)).or_insert_with(|| SecretRef {
                    namespace: namespace.to_owned(),
                    name: secret.clone(),
                });
            }
        }
    }
    // Precedence: the longest path first; at equal length, Exact before Prefix.
    let order = |routes: &mut Vec<Route>| routes.sort_by(|a, b| b.path.len().cmp(&a.path.len()).then(a.kind.cmp(&b.kind)));
    t.hosts.values_mut().chain(t.wildcards.values_mut()).for_each(order);
    order(&mut t.any_host);
    t
}

/// A backend's name and its endpoints, or why it cannot answer.
fn resolve(
    namespace: &str,
    backend: &IngressBackend,
    services: &HashMap<(&str, &str), &Service>,
    slices: &BTreeMap<(&str, &str), Vec<&EndpointSlice>>,
) -> (String, Result<Vec<SocketAddrV4>, String>) {
    let Some(svc) = &backend.service else {
        let name = backend
            .resource
            .as_ref()
            .map(|r| format!("{}/{}", r.kind, r.name))
            .unwrap_or_default();
        return (
            format!("{namespace}/{name}"),
            Err(format!("backend {name} in {namespace}: only Service backends are supported")),
        );
    };
    let port = svc.port.as_ref();
    let port_text = port
        .and_then(|p| p.name.clone().or_else(|| p.number.map(|n| n.to_string())))
        .unwrap_or_default();
    let name = format!("{namespace}/{}:{port_text}", svc.name);
    let Some(service) = services.get(&(namespace, svc.name.as_str())) else {
        return (name, Err(format!("service {namespace}/{} does not exist", svc.name)));
    };
    let service_port = service.spec.as_ref().and_then(|s| {
        s.ports.iter().flatten().find(|sp| match port {
            Some(p) if p.name.is_some() => sp.name == p.name,
            Some(p) => Some(sp.port) == p.number,
            None => false,
        })
    });
    let Some(service_port) = service_port else {
        return (name, Err(format!("service {namespace}/{} has no port {port_text}", svc.name)));
    };
    let of_service = slices.get(&(namespace, svc.name.as_str())).map(Vec::as_slice).unwrap_or_default();
    let endpoints: Vec<SocketAddrV4> = model::tcp_backends(of_service, service_port.name.as_deref())
        .into_iter()
        .map(|(ip, port)| SocketAddrV4::new(ip, port))
        .collect();
    (name, Ok(endpoints))
}

#[cfg(test)]
mod tests {
    use super::*;
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

    fn build(ingresses: &[Ingress]) -> Table {
        let services = [service("web"), service("api"), service("docs")];
        let slices = [slice("web", "10.244.0.2"), slice("api", "10.244.0.3"), slice("docs", "10.244.0.4")];
        table(ingresses, &[], &services, &slices)
    }

    fn to(t: &Table, host: &str, path: &str) -> Option<String> {
        t.route(host, path).map(|r| r.target.name.clone())
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
            t.conflicts,
            [Conflict {
                ingress: "shop/new".into(),
                host: "a.example".into(),
                path: "/".into(),
                holder: "shop/old".into()
            }]
        );
        let route = t.route("a.example", "/x/1").unwrap();
        assert_eq!(route.target.endpoints, Err("service shop/gone does not exist".into()));
        assert_eq!(t.missing[0].ingress, "shop/new");
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
    fn round_robin_skips_failed_endpoints() {
        let a: SocketAddrV4 = "10.0.0.1:80".parse().unwrap();
        let b: SocketAddrV4 = "10.0.0.2:80".parse().unwrap();
        let t = Target::new("x".into(), Ok(vec![a, b]));
        assert_eq!(t.order(|_| false), [a, b]);
        assert_eq!(t.order(|_| false), [b, a]);
        assert_eq!(t.order(|e| *e == a), [b, a]);
    }

    #[test]
    fn certificates_by_exact_and_wildcard_name() {
        let t = build(&[ingress(
            "tls",
            "2026-01-01T00:00:00Z",
            json!({"tls": [{"hosts": ["a.example"], "secretName": "a"}, {"hosts": ["*.b.example"], "secretName": "b"}]}),
        )]);
        assert_eq!(t.certificate("A.example").unwrap().name, "a");
        assert_eq!(t.certificate("x.b.example").unwrap().name, "b");
        assert!(t.certificate("x.y.b.example").is_none());
    }
}
