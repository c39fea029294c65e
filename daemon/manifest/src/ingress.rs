//! The value checks Kubernetes makes on Ingresses and IngressClasses: hostnames (DNS names, a
//! `*.` wildcard as the first label only, never an IP address or a port), path types and paths,
//! one backend kind with one port form, TLS hosts and Secret names, and a class's controller.

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
    use crate::validate::check;
    use serde_json::{Value, json};

    fn messages(kind: &str, object: Value) -> Vec<String> {
        check(kind, &object)
            .into_iter()
            .map(|f| format!("{}: {}", f.path, f.message))
            .collect()
    }

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
