//! Gateway API objects into the routing table, with the status the Gateway API asks for: the
//! GatewayClasses of Capstan's controller, their Gateways' listeners (HTTP and HTTPS, a port each;
//! conflicts between them refused), the HTTPRoutes each listener admits (by section, port,
//! namespace and hostname), their matches, filters and weighted backends, and cross-namespace
//! references only where a ReferenceGrant allows them.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use capstan_api::gateway::{
    BackendObjectReference, Gateway, GatewayClass, HTTPRoute, HttpPathModifier, HttpRouteFilter, HttpRouteRule, Listener, ParentReference,
    ReferenceGrant,
};
use capstan_api::selector::Selector;
use k8s_openapi::api::core::v1::Namespace;

use crate::backends::{Backends, PortRef};
use crate::table::{
    Action, HeaderEdit, Matcher, Mirror, PathChange, PathMatch, Redirect, Rewrite, Rule, SecretRef, Tables, Target, ValueMatch, Weighted,
    Wildcard, normal_host,
};

/// The `controllerName` of GatewayClasses Capstan serves.
pub const CONTROLLER: &str = "capstan.dev/gateway-controller";
const GROUP: &str = capstan_api::gateway::GROUP;

/// One condition to report (the daemon adds times and generations).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cond {
    pub type_: &'static str,
    pub status: bool,
    pub reason: &'static str,
    pub message: String,
}

fn cond(type_: &'static str, status: bool, reason: &'static str, message: impl Into<String>) -> Cond {
    Cond {
        type_,
        status,
        reason,
        message: message.into(),
    }
}

/// A listener's state.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ListenerState {
    pub name: String,
    pub attached_routes: i32,
    pub conditions: Vec<Cond>,
}

/// A Gateway's state.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GatewayState {
    pub conditions: Vec<Cond>,
    pub listeners: Vec<ListenerState>,
}

/// A route's state under one of its parents.
#[derive(Clone, Debug, PartialEq)]
pub struct ParentState {
    pub parent_ref: ParentReference,
    pub conditions: Vec<Cond>,
}

/// What the Gateway API objects say, for the status writer.
#[derive(Debug, Default)]
pub struct Report {
    /// Capstan's GatewayClasses, by name.
    pub classes: Vec<String>,
    /// By `namespace/name`.
    pub gateways: BTreeMap<String, GatewayState>,
    /// By `namespace/name`: one entry per parent that is a Gateway of Capstan's.
    pub routes: BTreeMap<String, Vec<ParentState>>,
    /// The ports the listeners need, and whether they terminate TLS.
    pub ports: BTreeMap<u16, bool>,
}

fn ns_name(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> (String, String) {
    (
        meta.namespace.clone().unwrap_or_else(|| "default".to_owned()),
        meta.name.clone().unwrap_or_default(),
    )
}

fn age(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> (Option<String>, String) {
    let (ns, name) = ns_name(meta);
    (meta.creation_timestamp.as_ref().map(|t| t.0.to_string()), format!("{ns}/{name}"))
}

/// Whether a ReferenceGrant in `to_namespace` lets a `from_kind` of `from_namespace` refer to the
/// `to_kind` named `to_name`.
fn granted(
    grants: &[ReferenceGrant],
    from_kind: &str,
    from_namespace: &str,
    to_group: &str,
    to_kind: &str,
    to_namespace: &str,
    to_name: &str,
) -> bool {
    grants.iter().any(|g| {
        g.metadata.namespace.as_deref() == Some(to_namespace)
            && g.spec
                .from
                .iter()
                .any(|f| f.group == GROUP && f.kind == from_kind && f.namespace == from_namespace)
            && g.spec
                .to
                .iter()
                .any(|t| t.group == to_group && t.kind == to_kind && t.name.as_deref().is_none_or(|n| n == to_name))
    })
}

/// A listener that took its place, with what routes attach to.
struct Live<'a> {
    gateway: String,
    namespace: String,
    index: usize,
    listener: &'a Listener,
}

/// The hostnames a route serves on a listener (None: they do not intersect); an empty list is
/// every host.
fn effective(listener: Option<&str>, route: &[String]) -> Option<Vec<String>> {
    let listener = listener.map(normal_host);
    let covers = |wild: &str, host: &str| {
        wild.strip_prefix("*.")
            .is_some_and(|suffix| host.strip_suffix(suffix).is_some_and(|l| l.ends_with('.') && l.len() > 1))
    };
    match listener {
        None => Some(route.iter().map(|h| normal_host(h)).collect()),
        Some(l) if route.is_empty() => Some(vec![l]),
        Some(l) => {
            let hosts: Vec<String> = route
                .iter()
                .map(|h| normal_host(h))
                .filter_map(|h| {
                    if h == l || covers(&l, &h) {
                        Some(h)
                    } else if covers(&h, &l) {
                        Some(l.clone())
                    } else {
                        None
                    }
                })
                .collect();
            (!hosts.is_empty()).then_some(hosts)
        }
    }
}

fn header_edit(f: Option<&capstan_api::gateway::HttpHeaderFilter>) -> HeaderEdit {
    let Some(f) = f else { return HeaderEdit::default() };
    let pairs = |v: &Option<Vec<capstan_api::gateway::HttpHeader>>| {
        v.iter().flatten().map(|h| (h.name.to_ascii_lowercase(), h.value.clone())).collect()
    };
    HeaderEdit {
        set: pairs(&f.set),
        add: pairs(&f.add),
        remove: f.remove.iter().flatten().map(|n| n.to_ascii_lowercase()).collect(),
    }
}

fn path_change(p: Option<&HttpPathModifier>) -> Result<Option<PathChange>, String> {
    let Some(p) = p else { return Ok(None) };
    match (p.type_.as_str(), &p.replace_full_path, &p.replace_prefix_match) {
        ("ReplaceFullPath", Some(full), _) => Ok(Some(PathChange::Full(full.clone()))),
        ("ReplacePrefixMatch", _, Some(prefix)) => Ok(Some(PathChange::Prefix(prefix.clone()))),
        (t, _, _) => Err(format!("path modifier {t:?} without its value")),
    }
}

/// The filters of a rule into the action's edits, or why one is not supported; the backends
/// requests are mirrored to (with the percentage) are returned, to be resolved as backends are.
fn apply_filters(filters: &[HttpRouteFilter], action: &mut Action) -> Result<Vec<(BackendObjectReference, u32)>, String> {
    let mut mirrors = Vec::new();
    for f in filters {
        match f.type_.as_str() {
            "RequestHeaderModifier" => action.request_headers = header_edit(f.request_header_modifier.as_ref()),
            "ResponseHeaderModifier" => action.response_headers = header_edit(f.response_header_modifier.as_ref()),
            "RequestRedirect" => {
                let r = f.request_redirect.clone().unwrap_or_default();
                action.redirect = Some(Redirect {
                    scheme: r.scheme,
                    hostname: r.hostname,
                    path: path_change(r.path.as_ref())?,
                    port: r.port.and_then(|p| u16::try_from(p).ok()),
                    status: r.status_code.and_then(|s| u16::try_from(s).ok()).unwrap_or(302),
                });
            }
            "URLRewrite" => {
                let r = f.url_rewrite.clone().unwrap_or_default();
                action.rewrite = Some(Rewrite {
                    hostname: r.hostname,
                    path: path_change(r.path.as_ref())?,
                });
            }
            "RequestMirror" => {
                let m = f.request_mirror.clone().ok_or("filter RequestMirror without requestMirror")?;
                let percent = u32::try_from(m.percent.unwrap_or(100).clamp(0, 100)).unwrap_or(100);
                mirrors.push((m.backend_ref, percent));
            }
            other => return Err(format!("filter {other} is not supported by Capstan's gateway")),
        }
    }
    Ok(mirrors)
}

/// A backend reference of a route in namespace `rns`, resolved to its Service port's
/// endpoints; when it cannot be, a target that says why, and the ResolvedRefs reason.
fn resolve(
    backends: &mut Backends<'_>,
    grants: &[ReferenceGrant],
    rns: &str,
    b: &BackendObjectReference,
) -> (Arc<Target>, Option<(&'static str, String)>) {
    let bns = b.namespace.clone().unwrap_or_else(|| rns.to_owned());
    let kind = (b.group.as_deref().unwrap_or(""), b.kind.as_deref().unwrap_or("Service"));
    let label = format!("{bns}/{}", b.name);
    if kind != ("", "Service") {
        let why = format!("backend kind {}/{} is not supported", kind.0, kind.1);
        let condition = ("InvalidKind", format!("backend {label}: only Services are supported"));
        return (backends.broken(label, why), Some(condition));
    }
    if bns != rns && !granted(grants, "HTTPRoute", rns, "", "Service", &bns, &b.name) {
        let why = format!("no ReferenceGrant in {bns} lets HTTPRoutes of {rns} use Service {}", b.name);
        return (backends.broken(label, why.clone()), Some(("RefNotPermitted", why)));
    }
    let Some(port) = b.port else {
        let why = format!("backend {label}: a Service backend needs its port");
        return (backends.broken(label, why.clone()), Some(("BackendNotFound", why)));
    };
    let target = backends.service(&bns, &b.name, &PortRef::Number(port));
    let condition = target.endpoints.as_ref().err().map(|why| ("BackendNotFound", why.clone()));
    (target, condition)
}

/// A rule's matches (the default: every path).
fn matchers(rule: &HttpRouteRule) -> Result<Vec<Matcher>, String> {
    let regex = |pattern: &str| regex::Regex::new(pattern).map_err(|e| format!("regular expression {pattern:?}: {e}"));
    let values = |v: &Option<Vec<capstan_api::gateway::HttpValueMatch>>, lower: bool| -> Result<Vec<ValueMatch>, String> {
        v.iter()
            .flatten()
            .map(|m| {
                let name = if lower { m.name.to_ascii_lowercase() } else { m.name.clone() };
                match m.type_.as_deref().unwrap_or("Exact") {
                    "Exact" => Ok(ValueMatch::Exact(name, m.value.clone())),
                    "RegularExpression" => Ok(ValueMatch::Regex(name, regex(&m.value)?)),
                    t => Err(format!("match type {t:?} is not supported")),
                }
            })
            .collect()
    };
    let Some(matches) = rule.matches.as_ref().filter(|m| !m.is_empty()) else {
        return Ok(vec![Matcher::path(PathMatch::prefix("/"))]);
    };
    matches
        .iter()
        .map(|m| {
            let value = m.path.as_ref().and_then(|p| p.value.clone()).unwrap_or_else(|| "/".to_owned());
            let path = match m.path.as_ref().and_then(|p| p.type_.as_deref()).unwrap_or("PathPrefix") {
                "Exact" => PathMatch::Exact(value),
                "PathPrefix" => PathMatch::prefix(&value),
                "RegularExpression" => PathMatch::Regex(regex(&value)?),
                t => return Err(format!("path match type {t:?} is not supported")),
            };
            Ok(Matcher {
                path,
                method: m.method.clone(),
                headers: values(&m.headers, true)?,
                query: values(&m.query_params, false)?,
            })
        })
        .collect()
}

/// Adds the routes of Capstan's Gateways to `tables` and says what each object's status is.
pub fn add(
    tables: &mut Tables,
    classes: &[GatewayClass],
    gateways: &[Gateway],
    routes: &[HTTPRoute],
    grants: &[ReferenceGrant],
    namespaces: &[Namespace],
    backends: &mut Backends<'_>,
) -> Report {
    let mut report = Report {
        classes: classes
            .iter()
            .filter(|c| c.spec.controller_name == CONTROLLER)
            .filter_map(|c| c.metadata.name.clone())
            .collect(),
        ..Report::default()
    };
    let mut gateways: Vec<&Gateway> = gateways
        .iter()
        .filter(|g| report.classes.contains(&g.spec.gateway_class_name))
        .collect();
    gateways.sort_by_key(|g| age(&g.metadata));

    // Listeners: a port has one protocol, a port and hostname one listener; the oldest wins.
    let mut live: Vec<Live<'_>> = Vec::new();
    let mut port_protocol: HashMap<u16, &str> = HashMap::new();
    let mut port_host: HashMap<(u16, String), String> = HashMap::new();
    for g in &gateways {
        let (ns, name) = ns_name(&g.metadata);
        let id = format!("{ns}/{name}");
        let mut state = GatewayState::default();
        for (index, l) in g.spec.listeners.iter().enumerate() {
            let mut conditions = Vec::new();
            let port = u16::try_from(l.port).ok().filter(|p| *p > 0);
            let host = l.hostname.as_deref().map(normal_host).unwrap_or_default();
            let problem = match (l.protocol.as_str(), port) {
                (_, None) => Some(("UnsupportedValue", format!("port {} is not a valid port", l.port))),
                ("HTTP" | "HTTPS", Some(p)) => {
                    if port_protocol.get(&p).is_some_and(|used| *used != l.protocol) {
                        conditions.push(cond(
                            "Conflicted",
                            true,
                            "ProtocolConflict",
                            format!("port {p} is in use with another protocol"),
                        ));
                        Some(("ProtocolConflict", format!("port {p} is in use with another protocol")))
                    } else if let Some(holder) = port_host.get(&(p, host.clone())).filter(|h| **h != id) {
                        conditions.push(cond(
                            "Conflicted",
                            true,
                            "HostnameConflict",
                            format!("port {p} and this hostname belong to Gateway {holder}"),
                        ));
                        Some(("HostnameConflict", format!("port {p} and this hostname belong to Gateway {holder}")))
                    } else {
                        None
                    }
                }
                (other, _) => Some(("UnsupportedProtocol", format!("protocol {other} is not supported: HTTP or HTTPS"))),
            };
            let tls = l.protocol == "HTTPS";
            let mut resolved = cond("ResolvedRefs", true, "ResolvedRefs", "");
            if tls && problem.is_none() {
                let t = l.tls.clone().unwrap_or_default();
                let refs = t.certificate_refs.unwrap_or_default();
                if t.mode.as_deref().is_some_and(|m| m != "Terminate") {
                    resolved = cond(
                        "ResolvedRefs",
                        false,
                        "InvalidCertificateRef",
                        "only TLS mode Terminate is supported",
                    );
                } else if let Some(r) = refs.first() {
                    let secret_ns = r.namespace.clone().unwrap_or_else(|| ns.clone());
                    let kind_ok = r.group.as_deref().unwrap_or("").is_empty() && r.kind.as_deref().unwrap_or("Secret") == "Secret";
                    if !kind_ok {
                        resolved = cond(
                            "ResolvedRefs",
                            false,
                            "InvalidCertificateRef",
                            "a certificate reference must be a core Secret",
                        );
                    } else if secret_ns != ns && !granted(grants, "Gateway", &ns, "", "Secret", &secret_ns, &r.name) {
                        resolved = cond(
                            "ResolvedRefs",
                            false,
                            "RefNotPermitted",
                            format!("no ReferenceGrant in {secret_ns} lets Gateways of {ns} use Secret {}", r.name),
                        );
                    } else if let Some(p) = port {
                        tables.port(p, true).certificates.entry(host.clone()).or_insert(SecretRef {
                            namespace: secret_ns,
                            name: r.name.clone(),
                        });
                    }
                } else {
                    resolved = cond(
                        "ResolvedRefs",
                        false,
                        "InvalidCertificateRef",
                        "an HTTPS listener needs tls.certificateRefs",
                    );
                }
            }
            match (&problem, port) {
                (None, Some(p)) if resolved.status => {
                    port_protocol.insert(p, &l.protocol);
                    port_host.insert((p, host.clone()), id.clone());
                    report.ports.insert(p, tls);
                    tables.port(p, tls);
                    conditions.push(cond("Accepted", true, "Accepted", ""));
                    conditions.push(cond("Programmed", true, "Programmed", ""));
                    live.push(Live {
                        gateway: id.clone(),
                        namespace: ns.clone(),
                        index,
                        listener: l,
                    });
                }
                (None, _) => {
                    conditions.push(cond("Accepted", true, "Accepted", ""));
                    conditions.push(cond("Programmed", false, "Invalid", resolved.message.clone()));
                }
                (Some((reason, message)), _) => {
                    conditions.push(cond("Accepted", false, reason, message.clone()));
                    conditions.push(cond("Programmed", false, "Invalid", message.clone()));
                }
            }
            if !conditions.iter().any(|c| c.type_ == "Conflicted") {
                conditions.push(cond("Conflicted", false, "NoConflicts", ""));
            }
            conditions.push(resolved);
            state.listeners.push(ListenerState {
                name: l.name.clone(),
                attached_routes: 0,
                conditions,
            });
        }
        let programmed = state
            .listeners
            .iter()
            .any(|l| l.conditions.iter().any(|c| c.type_ == "Programmed" && c.status));
        state.conditions = vec![
            cond("Accepted", true, "Accepted", ""),
            if programmed {
                cond("Programmed", true, "Programmed", "")
            } else {
                cond("Programmed", false, "Invalid", "no listener is programmed")
            },
        ];
        report.gateways.insert(id, state);
    }

    let labels_of = |ns: &str| {
        namespaces
            .iter()
            .find(|n| n.metadata.name.as_deref() == Some(ns))
            .and_then(|n| n.metadata.labels.clone())
            .unwrap_or_default()
    };
    let mut routes: Vec<&HTTPRoute> = routes.iter().collect();
    routes.sort_by_key(|r| age(&r.metadata));
    for route in routes {
        let (rns, rname) = ns_name(&route.metadata);
        let id = format!("{rns}/{rname}");
        let (created, _) = age(&route.metadata);
        let hostnames = route.spec.hostnames.clone().unwrap_or_default();
        // The rules once for every parent: their matchers and actions, or why not.
        let mut resolved = cond("ResolvedRefs", true, "ResolvedRefs", "");
        let built: Result<Vec<(Vec<Matcher>, Arc<Action>)>, String> = route
            .spec
            .rules
            .iter()
            .flatten()
            .map(|rule| {
                let mut action = Action::default();
                let mirrors = apply_filters(rule.filters.as_deref().unwrap_or_default(), &mut action)?;
                // Each attempt is bounded by the backend timeout, else the request's.
                let timeouts = rule.timeouts.clone().unwrap_or_default();
                action.timeout = timeouts
                    .backend_request
                    .or(timeouts.request)
                    .map(|t| capstan_api::gateway::duration(&t))
                    .transpose()?;
                let mut resolving = |b: &BackendObjectReference| {
                    let (target, problem) = resolve(backends, grants, &rns, b);
                    if let Some((reason, why)) = problem {
                        resolved = cond("ResolvedRefs", false, reason, why);
                    }
                    target
                };
                for (b, percent) in &mirrors {
                    action.mirrors.push(Mirror::new(resolving(b), *percent));
                }
                for b in rule.backend_refs.iter().flatten() {
                    let reference = BackendObjectReference {
                        group: b.group.clone(),
                        kind: b.kind.clone(),
                        name: b.name.clone(),
                        namespace: b.namespace.clone(),
                        port: b.port,
                    };
                    let target = resolving(&reference);
                    // A backend's own filters: header edits, and mirrors of the requests it gets.
                    let mut edits = Action::default();
                    let mirrors = apply_filters(b.filters.as_deref().unwrap_or_default(), &mut edits)?
                        .iter()
                        .map(|(m, percent)| Mirror::new(resolving(m), *percent))
                        .collect();
                    action.backends.push(Weighted {
                        target,
                        weight: u32::try_from(b.weight.unwrap_or(1)).unwrap_or(0),
                        request_headers: edits.request_headers,
                        response_headers: edits.response_headers,
                        mirrors,
                    });
                }
                Ok((matchers(rule)?, Arc::new(action)))
            })
            .collect();
        let mut parents = Vec::new();
        for parent in route.spec.parent_refs.iter().flatten() {
            let group = parent.group.as_deref().unwrap_or(GROUP);
            let kind = parent.kind.as_deref().unwrap_or("Gateway");
            let gns = parent.namespace.clone().unwrap_or_else(|| rns.clone());
            let gid = format!("{gns}/{}", parent.name);
            if group != GROUP || kind != "Gateway" || !report.gateways.contains_key(&gid) {
                continue; // another controller's parent, or none: not ours to report
            }
            let by_ref: Vec<&Live<'_>> = live
                .iter()
                .filter(|l| l.gateway == gid)
                .filter(|l| parent.section_name.as_deref().is_none_or(|s| s == l.listener.name))
                .filter(|l| parent.port.is_none_or(|p| p == l.listener.port))
                .collect();
            let allowed: Vec<&&Live<'_>> = by_ref
                .iter()
                .filter(|l| {
                    let allowed = l.listener.allowed_routes.clone().unwrap_or_default();
                    let kinds_ok = allowed.kinds.as_ref().is_none_or(|k| {
                        k.iter()
                            .any(|k| k.kind == "HTTPRoute" && k.group.as_deref().unwrap_or(GROUP) == GROUP)
                    });
                    let from = allowed.namespaces.clone().unwrap_or_default();
                    let ns_ok = match from.from.as_deref().unwrap_or("Same") {
                        "All" => true,
                        "Selector" => from
                            .selector
                            .as_ref()
                            .and_then(|s| serde_json::to_value(s).ok())
                            .is_some_and(|s| Selector::from_json(&s).matches(&labels_of(&rns))),
                        _ => l.namespace == rns,
                    };
                    kinds_ok && ns_ok
                })
                .collect();
            let mut attached = Vec::new();
            for l in &allowed {
                if let Some(hosts) = effective(l.listener.hostname.as_deref(), &hostnames) {
                    attached.push((*l, hosts));
                }
            }
            let accepted = match (&built, by_ref.is_empty(), allowed.is_empty(), attached.is_empty()) {
                (Err(why), ..) => cond("Accepted", false, "UnsupportedValue", why.clone()),
                (_, true, ..) => cond(
                    "Accepted",
                    false,
                    "NoMatchingParent",
                    format!("Gateway {gid} has no listener matching the parentRef"),
                ),
                (_, _, true, _) => cond(
                    "Accepted",
                    false,
                    "NotAllowedByListeners",
                    format!("no listener of Gateway {gid} admits HTTPRoutes from {rns}"),
                ),
                (_, _, _, true) => cond(
                    "Accepted",
                    false,
                    "NoMatchingListenerHostname",
                    format!("no listener of Gateway {gid} serves the route's hostnames"),
                ),
                _ => cond("Accepted", true, "Accepted", ""),
            };
            if accepted.status
                && let Ok(rules) = &built
            {
                for (live, hosts) in attached {
                    if let Some(state) = report.gateways.get_mut(&gid).and_then(|g| g.listeners.get_mut(live.index)) {
                        state.attached_routes += 1;
                    }
                    let port = u16::try_from(live.listener.port).unwrap_or(0);
                    let tls = live.listener.protocol == "HTTPS";
                    let table = tables.port(port, tls);
                    let hosts = if hosts.is_empty() { vec![String::new()] } else { hosts };
                    for (i, (ms, action)) in rules.iter().enumerate() {
                        for (j, m) in ms.iter().enumerate() {
                            for host in &hosts {
                                table.add(
                                    host,
                                    Wildcard::AnyLabels,
                                    Rule {
                                        matcher: m.clone(),
                                        action: action.clone(),
                                        source: format!("HTTPRoute {id}"),
                                        age: (created.clone(), id.clone(), i * 1000 + j),
                                    },
                                );
                            }
                        }
                    }
                }
            }
            parents.push(ParentState {
                parent_ref: parent.clone(),
                conditions: vec![accepted, resolved.clone()],
            });
        }
        if !parents.is_empty() {
            report.routes.insert(id, parents);
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::Request;
    use serde_json::{Value, json};

    fn parse<T: serde::de::DeserializeOwned>(v: Value) -> T {
        serde_json::from_value(v).unwrap()
    }

    fn objects() -> (Vec<GatewayClass>, Vec<Gateway>) {
        let class = parse(json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
            "metadata": {"name": "capstan"}, "spec": {"controllerName": CONTROLLER}}));
        let gateway = parse(json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": "web", "namespace": "shop", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"gatewayClassName": "capstan", "listeners": [
                {"name": "http", "port": 80, "protocol": "HTTP", "hostname": "*.shop.example"},
                {"name": "tcp", "port": 9000, "protocol": "TCP"},
                {"name": "clash", "port": 80, "protocol": "HTTPS", "tls": {"certificateRefs": [{"name": "x"}]}}]}}));
        (vec![class], vec![gateway])
    }

    fn route(spec: Value) -> HTTPRoute {
        parse(json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": "r", "namespace": "shop", "creationTimestamp": "2026-01-02T00:00:00Z"}, "spec": spec}))
    }

    fn services() -> Vec<k8s_openapi::api::core::v1::Service> {
        ["v1", "v2"]
            .iter()
            .map(|n| parse(json!({"metadata": {"name": n, "namespace": "shop"}, "spec": {"ports": [{"port": 80}]}})))
            .collect()
    }

    #[test]
    fn listeners_routes_and_weights() {
        let (classes, gateways) = objects();
        let r = route(
            json!({"parentRefs": [{"name": "web"}], "hostnames": ["app.shop.example", "other.example"],
            "rules": [
                {"matches": [{"path": {"type": "PathPrefix", "value": "/api"}, "headers": [{"name": "X-Canary", "value": "yes"}]}],
                 "backendRefs": [{"name": "v2", "port": 80}]},
                {"backendRefs": [{"name": "v1", "port": 80, "weight": 90}, {"name": "v2", "port": 80, "weight": 10}]},
                {"matches": [{"path": {"type": "Exact", "value": "/old"}}],
                 "filters": [{"type": "RequestRedirect", "requestRedirect": {"path": {"type": "ReplaceFullPath", "replaceFullPath": "/new"}, "statusCode": 301}}]}]}),
        );
        let services = services();
        let mut backends = Backends::new(&services, []);
        let mut tables = Tables::default();
        let report = add(&mut tables, &classes, &gateways, &[r], &[], &[], &mut backends);
        tables.finish();
        let gw = &report.gateways["shop/web"];
        assert_eq!(gw.listeners[0].attached_routes, 1);
        let reason = |l: usize, t: &str| gw.listeners[l].conditions.iter().find(|c| c.type_ == t).unwrap().reason;
        assert_eq!(reason(1, "Accepted"), "UnsupportedProtocol");
        assert_eq!(reason(2, "Conflicted"), "ProtocolConflict");
        assert_eq!(report.routes["shop/r"][0].conditions[0].reason, "Accepted");

        let headers = |canary: bool| {
            let mut h = hyper::HeaderMap::new();
            if canary {
                h.insert("x-canary", "yes".parse().unwrap());
            }
            h
        };
        let (plain, canary) = (headers(false), headers(true));
        let req = |host: &'static str, path: &'static str, h: &'static hyper::HeaderMap| Request {
            host,
            path,
            query: "",
            method: "GET",
            headers: h,
        };
        let plain: &'static hyper::HeaderMap = Box::leak(Box::new(plain));
        let canary: &'static hyper::HeaderMap = Box::leak(Box::new(canary));
        let table = &tables.ports[&80].table;
        // The listener's hostname narrows the route's: other.example is not served.
        assert!(table.route(&req("other.example", "/", plain)).is_none());
        let api = table.route(&req("app.shop.example", "/api/x", canary)).unwrap();
        assert_eq!(api.action.backends[0].target.name, "shop/v2:80");
        let split = table.route(&req("app.shop.example", "/api/x", plain)).unwrap();
        let picks: Vec<String> = (0..100).map(|_| split.action.pick().unwrap().target.name.clone()).collect();
        assert_eq!(picks.iter().filter(|p| *p == "shop/v1:80").count(), 90);
        let old = table.route(&req("app.shop.example", "/old", plain)).unwrap();
        assert_eq!(old.action.redirect.as_ref().unwrap().status, 301);
    }

    #[test]
    fn missing_backends_and_foreign_namespaces_are_reported() {
        let (classes, gateways) = objects();
        let r = route(json!({"parentRefs": [{"name": "web", "sectionName": "http"}],
            "rules": [{"backendRefs": [{"name": "gone", "port": 80}, {"name": "db", "namespace": "data", "port": 5432}]}]}));
        let services = services();
        let mut backends = Backends::new(&services, []);
        let report = add(&mut Tables::default(), &classes, &gateways, &[r], &[], &[], &mut backends);
        let resolved = &report.routes["shop/r"][0].conditions[1];
        assert_eq!((resolved.status, resolved.reason), (false, "RefNotPermitted"));
        let outsider = route(json!({"parentRefs": [{"name": "web", "namespace": "shop"}]}));
        let mut outsider = outsider;
        outsider.metadata.namespace = Some("elsewhere".into());
        let report = add(&mut Tables::default(), &classes, &gateways, &[outsider], &[], &[], &mut backends);
        assert_eq!(report.routes["elsewhere/r"][0].conditions[0].reason, "NotAllowedByListeners");
    }

    #[test]
    fn hostnames_intersect() {
        assert_eq!(
            effective(Some("*.a.example"), &["x.a.example".into()]),
            Some(vec!["x.a.example".into()])
        );
        assert_eq!(
            effective(Some("x.a.example"), &["*.a.example".into()]),
            Some(vec!["x.a.example".into()])
        );
        assert_eq!(effective(Some("x.a.example"), &["y.a.example".into()]), None);
        assert_eq!(effective(None, &[]), Some(vec![]));
    }
}
