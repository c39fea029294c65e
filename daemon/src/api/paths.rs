//! Resource paths as kube-apiserver reads them: `/api/v1/...` and `/apis/{group}/{version}/...`,
//! collections and objects, namespaced or not, and subresources (`status`, `log`).

use capstan_api::KindInfo;
use capstan_api::kinds::by_plural;

use super::status::ApiError;

/// What a path names.
#[derive(Debug)]
pub enum Target {
    /// `/api/v1` or `/apis/apps/v1`: the resource list.
    GroupVersion { group: String, version: String },
    /// `/api/v1/pods`, `/api/v1/namespaces/ns/pods`.
    Collection {
        kind: &'static KindInfo,
        namespace: Option<String>,
    },
    /// `/api/v1/namespaces/ns/pods/web[/status]`, `/api/v1/nodes/n1`.
    Object {
        kind: &'static KindInfo,
        namespace: Option<String>,
        name: String,
        subresource: Option<String>,
    },
}

fn kind(group: &str, version: &str, plural: &str, path: &str) -> Result<&'static KindInfo, ApiError> {
    by_plural(group, plural)
        .filter(|k| k.version == version)
        .ok_or_else(|| ApiError::not_found(format!("the server could not find the requested resource ({path})")))
}

pub fn parse(path: &str) -> Result<Target, ApiError> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').filter(|s| !s.is_empty()).collect();
    let not_found = || ApiError::not_found(format!("the server could not find the requested resource ({path})"));
    let (group, version, rest) = match segs.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return Err(not_found()),
    };
    let gv = |s: &str| s.to_owned();
    match rest {
        [] => Ok(Target::GroupVersion {
            group: gv(group),
            version: gv(version),
        }),
        // `namespaces/{ns}/{plural}...` — unless `namespaces/{name}/status`, the Namespace's own.
        ["namespaces", ns, plural, tail @ ..] if !(tail.is_empty() && matches!(*plural, "status" | "finalize")) => {
            let k = kind(group, version, plural, path)?;
            if !k.namespaced {
                return Err(not_found());
            }
            let namespace = Some(ns.to_string());
            match tail {
                [] => Ok(Target::Collection { kind: k, namespace }),
                [name] => Ok(Target::Object {
                    kind: k,
                    namespace,
                    name: name.to_string(),
                    subresource: None,
                }),
                [name, sub] => Ok(Target::Object {
                    kind: k,
                    namespace,
                    name: name.to_string(),
                    subresource: Some(sub.to_string()),
                }),
                _ => Err(not_found()),
            }
        }
        [plural, tail @ ..] => {
            let k = kind(group, version, plural, path)?;
            match tail {
                [] => Ok(Target::Collection { kind: k, namespace: None }),
                [name] if !k.namespaced => Ok(Target::Object {
                    kind: k,
                    namespace: None,
                    name: name.to_string(),
                    subresource: None,
                }),
                [name, sub] if !k.namespaced => Ok(Target::Object {
                    kind: k,
                    namespace: None,
                    name: name.to_string(),
                    subresource: Some(sub.to_string()),
                }),
                _ => Err(not_found()),
            }
        }
    }
}

/// What a request asks, as Kubernetes' request-info resolver reads any path (served kinds or
/// not): for the audit trail and for non-resource authorisation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequestInfo<'a> {
    /// False for discovery, `/version`, `/metrics` and the like.
    pub resource_request: bool,
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, `deletecollection`; for
    /// a non-resource request the method in lower case.
    pub verb: &'static str,
    pub group: &'a str,
    pub version: &'a str,
    pub namespace: &'a str,
    pub resource: &'a str,
    pub subresource: &'a str,
    pub name: &'a str,
}

impl RequestInfo<'_> {
    /// The audit event's `objectRef`.
    pub fn object_ref(&self) -> Option<serde_json::Value> {
        if !self.resource_request {
            return None;
        }
        let mut o = serde_json::json!({"resource": self.resource, "apiGroup": self.group, "apiVersion": self.version});
        for (key, value) in [
            ("namespace", self.namespace),
            ("name", self.name),
            ("subresource", self.subresource),
        ] {
            if !value.is_empty() {
                o[key] = serde_json::json!(value);
            }
        }
        Some(o)
    }
}

fn lower_method(method: &http::Method) -> &'static str {
    match *method {
        http::Method::GET => "get",
        http::Method::POST => "post",
        http::Method::PUT => "put",
        http::Method::PATCH => "patch",
        http::Method::DELETE => "delete",
        http::Method::HEAD => "head",
        http::Method::OPTIONS => "options",
        _ => "other",
    }
}

pub fn request_info<'a>(method: &http::Method, path: &'a str, query: &str) -> RequestInfo<'a> {
    let mut segs = path.split('/').filter(|s| !s.is_empty());
    let (group, version) = match (segs.next(), segs.next()) {
        (Some("api"), Some(version)) => ("", version),
        (Some("apis"), Some(group)) => match segs.next() {
            Some(version) => (group, version),
            None => ("", ""),
        },
        _ => ("", ""),
    };
    let rest: Vec<&'a str> = segs.collect();
    if version.is_empty() || rest.is_empty() {
        return RequestInfo {
            verb: lower_method(method),
            ..RequestInfo::default()
        };
    }
    let (namespace, rest) = match rest.as_slice() {
        ["namespaces", ns, tail @ ..] if !matches!(tail, [] | ["status" | "finalize"]) => (*ns, tail),
        _ => ("", rest.as_slice()),
    };
    let (resource, name, subresource) = (
        rest[0],
        rest.get(1).copied().unwrap_or_default(),
        rest.get(2).copied().unwrap_or_default(),
    );
    let watching = query.split('&').any(|p| p == "watch=true" || p == "watch=1");
    let verb = match (method.as_str(), name.is_empty()) {
        ("GET", _) if matches!(subresource, "exec" | "attach" | "portforward") => "create",
        ("GET", true) if watching => "watch",
        ("GET", true) => "list",
        ("GET", false) => "get",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "deletecollection",
        ("DELETE", false) => "delete",
        _ => lower_method(method),
    };
    RequestInfo {
        resource_request: true,
        verb,
        group,
        version,
        namespace,
        resource,
        subresource,
        name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn describe(t: Target) -> String {
        match t {
            Target::GroupVersion { group, version } => format!("gv {group}/{version}"),
            Target::Collection { kind, namespace } => format!("list {} {namespace:?}", kind.plural),
            Target::Object {
                kind,
                namespace,
                name,
                subresource,
            } => format!("get {} {namespace:?} {name} {subresource:?}", kind.plural),
        }
    }

    #[test]
    fn paths() {
        let p = |s: &str| describe(parse(s).unwrap());
        assert_eq!(p("/api/v1"), "gv /v1");
        assert_eq!(p("/api/v1/pods"), "list pods None");
        assert_eq!(p("/api/v1/namespaces/shop/pods"), "list pods Some(\"shop\")");
        assert_eq!(
            p("/api/v1/namespaces/shop/pods/web/log"),
            "get pods Some(\"shop\") web Some(\"log\")"
        );
        assert_eq!(p("/api/v1/namespaces/shop"), "get namespaces None shop None");
        assert_eq!(p("/api/v1/namespaces/shop/status"), "get namespaces None shop Some(\"status\")");
        assert_eq!(p("/api/v1/namespaces"), "list namespaces None");
        assert_eq!(
            p("/apis/apps/v1/namespaces/shop/deployments/web"),
            "get deployments Some(\"shop\") web None"
        );
        assert_eq!(p("/api/v1/nodes/n1/status"), "get nodes None n1 Some(\"status\")");
        assert!(parse("/apis/apps/v2/deployments").is_err());
        assert!(parse("/api/v1/widgets").is_err());
        assert!(parse("/api/v1/namespaces/shop/nodes").is_err());
    }

    #[test]
    fn request_info_reads_any_path() {
        use http::Method;
        let i = request_info(&Method::GET, "/api/v1/namespaces/shop/pods/web/exec", "command=sh");
        assert_eq!((i.verb, i.resource, i.subresource), ("create", "pods", "exec"));
        assert_eq!((i.namespace, i.name), ("shop", "web"));
        let i = request_info(&Method::GET, "/apis/apps/v1/deployments", "watch=true");
        assert_eq!((i.verb, i.group, i.namespace), ("watch", "apps", ""));
        let i = request_info(&Method::DELETE, "/api/v1/namespaces/shop/pods", "");
        assert_eq!(i.verb, "deletecollection");
        let i = request_info(&Method::GET, "/api/v1/namespaces/shop", "");
        assert_eq!((i.resource, i.name, i.verb), ("namespaces", "shop", "get"));
        let i = request_info(&Method::PUT, "/api/v1/namespaces/shop/finalize", "");
        assert_eq!((i.resource, i.name, i.subresource), ("namespaces", "shop", "finalize"));
        let i = request_info(&Method::POST, "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", "");
        assert_eq!((i.verb, i.resource), ("create", "selfsubjectaccessreviews"));
        for path in ["/api", "/apis/apps/v1", "/metrics", "/version"] {
            let i = request_info(&Method::GET, path, "");
            assert!(!i.resource_request, "{path}");
            assert_eq!(i.verb, "get");
        }
    }
}
