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
}
