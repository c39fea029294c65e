//! The value checks Kubernetes makes on Ingresses and IngressClasses — hostnames (DNS names, a
//! `*.` wildcard as the first label only, never an IP address or a port), path types and paths,
//! one backend kind with one port form, TLS hosts and Secret names, a class's controller — and
//! those of the Gateway API's CRDs on Gateways (listeners) and HTTPRoutes (matches, filters,
//! weights).

use capstan_api::names;
use serde_json::Value;

use crate::problem::FieldPath;
use crate::validate::Findings;

const PATH_TYPES: [&str; 3] = ["Exact", "Prefix", "ImplementationSpecific"];

/// Checks an Ingress's spec.
pub(crate) fn check_ingress(f: &mut Findings, path: &FieldPath, spec: &Value) {
    let rules = spec["rules"].as_array().map(Vec::as_slice).unwrap_or_default();
    if rules.is_empty() && spec["defaultBackend"].is_null() {
        f.missing(path.key("rules"), "either `defaultBackend` or `rules` must be specified");
    }
    if let Some(class) = spec["ingressClassName"].as_str()
        && let Some(e) = names::dns1123_subdomain(class)
    {
        f.invalid(path.key("ingressClassName"), e);
    }
    if !spec["defaultBackend"].is_null() {
        check_backend(f, &path.key("defaultBackend"), &spec["defaultBackend"]);
    }
    for (i, rule) in rules.iter().enumerate() {
        let at = path.key("rules").index(i);
        if let Some(host) = rule["host"].as_str() {
            check_host(f, at.key("host"), host);
        }
        let Some(paths) = rule["http"]["paths"].as_array() else {
            if !rule["http"].is_null() {
                f.missing(at.key("http").key("paths"), "paths must contain at least one path");
            }
            continue;
        };
        if paths.is_empty() {
            f.missing(at.key("http").key("paths"), "paths must contain at least one path");
        }
        for (j, p) in paths.iter().enumerate() {
            let pp = at.key("http").key("paths").index(j);
            check_path(f, &pp, p);
            check_backend(f, &pp.key("backend"), &p["backend"]);
        }
    }
    for (i, tls) in spec["tls"].as_array().into_iter().flatten().enumerate() {
        let at = path.key("tls").index(i);
        for (j, host) in tls["hosts"].as_array().into_iter().flatten().enumerate() {
            if let Some(host) = host.as_str() {
                check_host(f, at.key("hosts").index(j), host);
            }
        }
        if let Some(secret) = tls["secretName"].as_str()
            && let Some(e) = names::dns1123_subdomain(secret)
        {
            f.invalid(at.key("secretName"), e);
        }
    }
}

/// A rule's or TLS entry's host: a DNS name, a wildcard only as the whole first label.
fn check_host(f: &mut Findings, at: FieldPath, host: &str) {
    if host.parse::<std::net::IpAddr>().is_ok() {
        f.invalid(at, format!("{host:?}: must be a DNS name, not an IP address"));
        return;
    }
    if host.contains(':') {
        f.invalid(at, format!("{host:?}: a host is a DNS name without a port"));
        return;
    }
    let name = host.strip_prefix("*.").unwrap_or(host);
    if name.contains('*') {
        f.invalid(
            at,
            format!("{host:?}: a wildcard must be the whole first label (\"*.example.com\")"),
        );
    } else if let Some(e) = names::dns1123_subdomain(name) {
        f.invalid(at, format!("{host:?}: {e}"));
    }
}

/// A path and its type.
fn check_path(f: &mut Findings, at: &FieldPath, p: &Value) {
    let kind = match p["pathType"].as_str() {
        None => {
            f.missing(at.key("pathType"), "pathType is required: Exact, Prefix or ImplementationSpecific");
            return;
        }
        Some(k) if PATH_TYPES.contains(&k) => k,
        Some(k) => {
            let hint = crate::rbac::typo_of(k, PATH_TYPES)
                .map(|t| format!(" (did you mean {t:?}?)"))
                .unwrap_or_default();
            f.invalid(
                at.key("pathType"),
                format!("unsupported pathType {k:?}{hint}: Exact, Prefix or ImplementationSpecific"),
            );
            return;
        }
    };
    let Some(path) = p["path"].as_str() else {
        if kind != "ImplementationSpecific" {
            f.missing(at.key("path"), format!("a {kind} path is required"));
        }
        return;
    };
    if !path.starts_with('/') {
        f.invalid(at.key("path"), format!("{path:?}: must be an absolute path (starting with /)"));
    } else if kind != "ImplementationSpecific"
        && (path.contains("//") || path.contains("/./") || path.contains("/../") || path.ends_with("/..") || path.ends_with("/."))
    {
        f.invalid(at.key("path"), format!("{path:?}: must not contain '//', '/./' or '/../'"));
    }
}

/// A backend: a Service (name and one of port name or number) or a resource, not both.
fn check_backend(f: &mut Findings, at: &FieldPath, b: &Value) {
    let (service, resource) = (&b["service"], &b["resource"]);
    match (service.is_null(), resource.is_null()) {
        (true, true) => f.missing(at.key("service"), "a backend needs a service"),
        (false, false) => f.invalid(at.clone(), "a backend names a service or a resource, not both"),
        (false, true) => {
            match service["name"].as_str() {
                Some(name) => {
                    if let Some(e) = names::dns1035_label(name) {
                        f.invalid(at.key("service").key("name"), e);
                    }
                }
                None => f.missing(at.key("service").key("name"), "the Service's name is required"),
            }
            let port = &service["port"];
            match (port["name"].as_str(), port["number"].as_i64()) {
                (Some(_), Some(_)) => f.invalid(at.key("service").key("port"), "a port has a name or a number, not both"),
                (None, None) => f.missing(at.key("service").key("port"), "the Service port's name or number is required"),
                (None, Some(n)) if !(1..=65535).contains(&n) => f.invalid(
                    at.key("service").key("port").key("number"),
                    format!("{n}: must be between 1 and 65535"),
                ),
                (Some(name), None) => {
                    if let Some(e) = names::dns1123_label(name) {
                        f.invalid(at.key("service").key("port").key("name"), e);
                    }
                }
                _ => {}
            }
        }
        (true, false) => {}
    }
}

/// A Gateway: listeners with unique names, known protocols, valid ports and hostnames, and
/// certificates for HTTPS.
pub(crate) fn check_gateway(f: &mut Findings, path: &FieldPath, spec: &Value) {
    let listeners = spec["listeners"].as_array().map(Vec::as_slice).unwrap_or_default();
    if listeners.is_empty() {
        f.missing(path.key("listeners"), "a Gateway needs at least one listener");
    }
    let mut names = std::collections::HashSet::new();
    for (i, l) in listeners.iter().enumerate() {
        let at = path.key("listeners").index(i);
        let name = l["name"].as_str().unwrap_or_default();
        if !names.insert(name) {
            f.invalid(at.key("name"), format!("listener name {name:?} is used twice"));
        }
        if let Some(e) = names::dns1123_label(name) {
            f.invalid(at.key("name"), e);
        }
        let port = l["port"].as_i64().unwrap_or(0);
        if !(1..=65535).contains(&port) {
            f.invalid(at.key("port"), format!("{port}: must be between 1 and 65535"));
        }
        let protocol = l["protocol"].as_str().unwrap_or_default();
        const PROTOCOLS: [&str; 5] = ["HTTP", "HTTPS", "TLS", "TCP", "UDP"];
        if !PROTOCOLS.contains(&protocol) && !protocol.contains('/') {
            let hint = crate::rbac::typo_of(protocol, PROTOCOLS)
                .map(|t| format!(" (did you mean {t:?}?)"))
                .unwrap_or_default();
            f.invalid(at.key("protocol"), format!("unknown protocol {protocol:?}{hint}"));
        }
        if let Some(host) = l["hostname"].as_str() {
            check_host(f, at.key("hostname"), host);
        }
        let refs = l["tls"]["certificateRefs"].as_array().map_or(0, Vec::len);
        if protocol == "HTTPS" && l["tls"]["mode"].as_str().unwrap_or("Terminate") == "Terminate" && refs == 0 {
            f.missing(
                at.key("tls").key("certificateRefs"),
                "an HTTPS listener that terminates TLS needs a certificate",
            );
        }
    }
}

const FILTERS: [(&str, &str); 6] = [
    ("RequestHeaderModifier", "requestHeaderModifier"),
    ("ResponseHeaderModifier", "responseHeaderModifier"),
    ("RequestRedirect", "requestRedirect"),
    ("URLRewrite", "urlRewrite"),
    ("RequestMirror", "requestMirror"),
    ("ExtensionRef", "extensionRef"),
];

fn check_filters(f: &mut Findings, at: &FieldPath, filters: &Value) {
    for (i, filter) in filters.as_array().into_iter().flatten().enumerate() {
        let fp = at.index(i);
        let t = filter["type"].as_str().unwrap_or_default();
        match FILTERS.iter().find(|(name, _)| *name == t) {
            Some((_, field)) if filter[*field].is_null() => f.missing(fp.key(field), format!("a {t} filter needs {field}")),
            Some(_) => {}
            None => {
                let hint = crate::rbac::typo_of(t, FILTERS.iter().map(|(n, _)| *n))
                    .map(|k| format!(" (did you mean {k:?}?)"))
                    .unwrap_or_default();
                f.invalid(fp.key("type"), format!("unknown filter type {t:?}{hint}"));
            }
        }
        if let Some(percent) = filter["requestMirror"]["percent"].as_i64()
            && !(0..=100).contains(&percent)
        {
            f.invalid(
                fp.key("requestMirror").key("percent"),
                format!("{percent}: a share of requests, 0 to 100"),
            );
        }
        if let Some(code) = filter["requestRedirect"]["statusCode"].as_i64()
            && ![301, 302, 303, 307, 308].contains(&code)
        {
            f.invalid(
                fp.key("requestRedirect").key("statusCode"),
                format!("{code}: a redirect is 301, 302, 303, 307 or 308"),
            );
        }
    }
}

/// An HTTPRoute: hostnames, path matches, filters and backend weights.
pub(crate) fn check_http_route(f: &mut Findings, path: &FieldPath, spec: &Value) {
    for (i, host) in spec["hostnames"].as_array().into_iter().flatten().enumerate() {
        if let Some(host) = host.as_str() {
            check_host(f, path.key("hostnames").index(i), host);
        }
    }
    for (i, rule) in spec["rules"].as_array().into_iter().flatten().enumerate() {
        let at = path.key("rules").index(i);
        for (j, m) in rule["matches"].as_array().into_iter().flatten().enumerate() {
            let mp = at.key("matches").index(j).key("path");
            let t = m["path"]["type"].as_str().unwrap_or("PathPrefix");
            const TYPES: [&str; 3] = ["Exact", "PathPrefix", "RegularExpression"];
            if !TYPES.contains(&t) {
                // Ingress's name for it is the usual slip.
                let likely = if t == "Prefix" {
                    Some("PathPrefix")
                } else {
                    crate::rbac::typo_of(t, TYPES)
                };
                let hint = likely.map(|k| format!(" (did you mean {k:?}?)")).unwrap_or_default();
                f.invalid(mp.key("type"), format!("unknown path match type {t:?}{hint}"));
            }
            if let Some(v) = m["path"]["value"].as_str()
                && t != "RegularExpression"
                && !v.starts_with('/')
            {
                f.invalid(mp.key("value"), format!("{v:?}: must be an absolute path (starting with /)"));
            }
        }
        check_filters(f, &at.key("filters"), &rule["filters"]);
        for field in ["request", "backendRequest"] {
            if let Some(t) = rule["timeouts"][field].as_str()
                && let Err(e) = capstan_api::gateway::duration(t)
            {
                f.invalid(at.key("timeouts").key(field), e);
            }
        }
        for (j, b) in rule["backendRefs"].as_array().into_iter().flatten().enumerate() {
            let bp = at.key("backendRefs").index(j);
            if let Some(w) = b["weight"].as_i64()
                && !(0..=1_000_000).contains(&w)
            {
                f.invalid(bp.key("weight"), format!("{w}: a weight is between 0 and 1000000"));
            }
            let service = b["kind"].as_str().unwrap_or("Service") == "Service" && b["group"].as_str().unwrap_or("").is_empty();
            if service && b["port"].is_null() {
                f.missing(bp.key("port"), "a Service backend needs its port");
            }
            check_filters(f, &bp.key("filters"), &b["filters"]);
        }
    }
}

/// An IngressClass: its controller is a domain-prefixed path (`example.com/ingress`).
pub(crate) fn check_ingress_class(f: &mut Findings, path: &FieldPath, spec: &Value) {
    match spec["controller"].as_str() {
        None => f.missing(
            path.key("controller"),
            "the controller is required (capstan.dev/ingress-controller for Capstan's)",
        ),
        Some(c) => {
            let domain = c.split_once('/').map(|(d, _)| d);
            if c.len() > 250 || domain.is_none_or(|d| names::dns1123_subdomain(d).is_some()) {
                f.invalid(
                    path.key("controller"),
                    format!("{c:?}: must be a domain-prefixed path such as capstan.dev/ingress-controller"),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::validate::tests::messages;
    use serde_json::{Value, json};

    fn ingress(rule: Value) -> Value {
        json!({"metadata": {"name": "web"}, "spec": {"rules": [rule]}})
    }

    #[test]
    fn hosts_paths_and_backends_are_checked() {
        let ok = ingress(json!({"host": "*.shop.example", "http": {"paths": [
            {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}}));
        assert!(messages("Ingress", ok).is_empty());
        let bad = ingress(json!({"host": "10.0.0.1", "http": {"paths": [
            {"path": "api", "pathType": "Prefx", "backend": {"service": {"name": "web", "port": {"number": 80}}}},
            {"path": "/a//b", "pathType": "Exact", "backend": {"service": {"name": "web", "port": {"name": "http", "number": 80}}}},
            {"path": "/", "pathType": "Prefix", "backend": {}}]}}));
        let m = messages("Ingress", bad);
        assert!(
            m.iter()
                .any(|m| m.contains("spec.rules[0].host") && m.contains("not an IP address")),
            "{m:?}"
        );
        assert!(
            m.iter().any(|m| m.contains("pathType") && m.contains("did you mean \"Prefix\"")),
            "{m:?}"
        );
        assert!(m.iter().any(|m| m.contains("paths[1].path") && m.contains("'//'")), "{m:?}");
        assert!(
            m.iter()
                .any(|m| m.contains("paths[1].backend.service.port") && m.contains("not both")),
            "{m:?}"
        );
        assert!(
            m.iter()
                .any(|m| m.contains("paths[2].backend.service") && m.contains("needs a service")),
            "{m:?}"
        );
        let wild = ingress(json!({"host": "shop.*.example"}));
        assert!(messages("Ingress", wild)[0].contains("whole first label"));
        assert!(messages("Ingress", json!({"metadata": {"name": "x"}, "spec": {}}))[0].contains("either `defaultBackend` or `rules`"));
    }

    #[test]
    fn gateways_and_routes_are_checked() {
        let gw = json!({"metadata": {"name": "g"}, "spec": {"gatewayClassName": "capstan", "listeners": [
            {"name": "web", "port": 80, "protocol": "HTTPS"},
            {"name": "web", "port": 70000, "protocol": "HTTTP", "hostname": "1.2.3.4"}]}});
        let m = messages("Gateway", gw);
        for want in [
            "needs a certificate",
            "used twice",
            "between 1 and 65535",
            "did you mean \"HTTP\"",
            "not an IP address",
        ] {
            assert!(m.iter().any(|m| m.contains(want)), "{want}: {m:?}");
        }
        let route = json!({"metadata": {"name": "r"}, "spec": {"hostnames": ["*.a.example"], "rules": [{
            "matches": [{"path": {"type": "Prefix", "value": "api"}}],
            "filters": [{"type": "RequestRedirect", "requestRedirect": {"statusCode": 404}}, {"type": "URLRewrit"},
                        {"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "m", "port": 80}, "percent": 150}}],
            "backendRefs": [{"name": "v1", "weight": -1}]}]}});
        let m = messages("HTTPRoute", route);
        for want in [
            "did you mean \"PathPrefix\"",
            "absolute path",
            "301, 302",
            "did you mean \"URLRewrite\"",
            "between 0 and 1000000",
            "needs its port",
            "150: a share of requests, 0 to 100",
        ] {
            assert!(m.iter().any(|m| m.contains(want)), "{want}: {m:?}");
        }
    }

    #[test]
    fn a_class_names_a_controller() {
        assert!(
            messages(
                "IngressClass",
                json!({"metadata": {"name": "c"}, "spec": {"controller": "capstan.dev/ingress-controller"}})
            )
            .is_empty()
        );
        assert!(
            messages("IngressClass", json!({"metadata": {"name": "c"}, "spec": {"controller": "nginx"}}))[0].contains("domain-prefixed")
        );
    }
}
