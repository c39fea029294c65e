//! API discovery: `/version`, `/api`, `/apis` and the per-group-version resource lists, in both
//! the aggregated (v2) form kubectl 1.30+ asks for and the legacy form older clients use.

use capstan_api::kinds::Origin;
use capstan_api::{KUBERNETES_MAJOR, KUBERNETES_MINOR, KindInfo, REGISTRY};
use serde_json::{Value, json};

use super::{metrics, scale};

/// The media type of aggregated discovery v2; a response must carry exactly this.
pub const AGGREGATED_V2: &str = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

/// Whether the client accepts aggregated discovery v2 (kubectl 1.30 and later).
pub fn wants_aggregated(accept: &str) -> bool {
    accept.split(',').any(|part| {
        let p = part.replace(' ', "");
        p.contains("g=apidiscovery.k8s.io") && p.contains("v=v2;") && p.contains("as=APIGroupDiscoveryList")
            || p.ends_with("g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList")
    })
}

pub fn version() -> Value {
    json!({
        "major": KUBERNETES_MAJOR,
        "minor": KUBERNETES_MINOR,
        "gitVersion": format!("v{KUBERNETES_MAJOR}.{KUBERNETES_MINOR}.0-capstan.{}", env!("CARGO_PKG_VERSION")),
        "gitCommit": "capstan",
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "rust",
        "compiler": "rustc",
        "platform": "linux/amd64"
    })
}

fn verbs(kind: &KindInfo) -> Vec<&'static str> {
    match kind.origin {
        Origin::Git => vec!["get", "list", "watch"],
        Origin::Cluster => vec!["create", "delete", "get", "list", "patch", "update", "watch"],
    }
}

/// The groups served, each with its kinds, in registry order.
fn groups() -> Vec<(&'static str, &'static str, Vec<&'static KindInfo>)> {
    let mut out: Vec<(&str, &str, Vec<&KindInfo>)> = Vec::new();
    for k in REGISTRY {
        match out.iter_mut().find(|(g, v, _)| *g == k.group && *v == k.version) {
            Some((_, _, kinds)) => kinds.push(k),
            None => out.push((k.group, k.version, vec![k])),
        }
    }
    out
}

fn aggregated_resource(k: &KindInfo) -> Value {
    let gvk = json!({"group": k.group, "version": k.version, "kind": k.kind});
    let mut subresources = Vec::new();
    if k.has_status {
        subresources.push(json!({"subresource": "status", "responseKind": gvk, "verbs": ["get", "patch", "update"]}));
    }
    if k.has_scale() {
        let scale = json!({"group": scale::GROUP, "version": scale::VERSION, "kind": scale::KIND});
        subresources.push(json!({"subresource": "scale", "responseKind": scale, "verbs": ["get", "patch", "update"]}));
    }
    if k.kind == "Pod" {
        subresources.push(json!({"subresource": "log", "responseKind": {"group": "", "version": "v1", "kind": "Pod"}, "verbs": ["get"]}));
        subresources.push(json!({"subresource": "eviction", "responseKind": {"group": "policy", "version": "v1", "kind": "Eviction"}, "verbs": ["create"]}));
        subresources.push(json!({"subresource": "ephemeralcontainers", "responseKind": gvk, "verbs": ["get", "patch", "update"]}));
    }
    let mut r = json!({
        "resource": k.plural,
        "responseKind": gvk,
        "scope": if k.namespaced { "Namespaced" } else { "Cluster" },
        "singularResource": k.singular,
        "verbs": verbs(k),
    });
    if !k.short_names.is_empty() {
        r["shortNames"] = json!(k.short_names);
    }
    if !k.categories.is_empty() {
        r["categories"] = json!(k.categories);
    }
    if !subresources.is_empty() {
        r["subresources"] = Value::Array(subresources);
    }
    r
}

fn aggregated(core: bool) -> Value {
    let items: Vec<Value> = groups()
        .into_iter()
        .filter(|(g, _, _)| g.is_empty() == core)
        .map(|(g, v, kinds)| {
            json!({
                "metadata": {"name": g},
                "versions": [{
                    "version": v,
                    "freshness": "Current",
                    "resources": kinds.iter().map(|k| aggregated_resource(k)).collect::<Vec<_>>()
                }]
            })
        })
        .collect();
    let mut items = items;
    if !core {
        items.extend(virtual_groups().iter().map(virtual_aggregated));
    }
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items})
}

/// A group served by handlers of its own rather than from the store: the resource metrics
/// (from the node agents) and the access reviews.
struct Virtual {
    group: &'static str,
    version: &'static str,
    /// (plural, kind, namespaced, verbs)
    resources: Vec<(&'static str, &'static str, bool, &'static [&'static str])>,
}

fn virtual_groups() -> Vec<Virtual> {
    let mut out = vec![Virtual {
        group: metrics::GROUP,
        version: metrics::VERSION,
        resources: metrics::RESOURCES
            .iter()
            .map(|(p, k, ns)| (*p, *k, *ns, &["get", "list"][..]))
            .collect(),
    }];
    out.extend(super::reviews::GROUPS.iter().map(|(group, version, resources)| Virtual {
        group,
        version,
        resources: resources.iter().map(|(p, k)| (*p, *k, false, &["create"][..])).collect(),
    }));
    out
}

fn virtual_aggregated(v: &Virtual) -> Value {
    let resources: Vec<Value> = v
        .resources
        .iter()
        .map(|(plural, kind, namespaced, verbs)| {
            json!({
                "resource": plural,
                "responseKind": {"group": v.group, "version": v.version, "kind": kind},
                "scope": if *namespaced { "Namespaced" } else { "Cluster" },
                "singularResource": "",
                "verbs": verbs,
            })
        })
        .collect();
    json!({
        "metadata": {"name": v.group},
        "versions": [{"version": v.version, "freshness": "Current", "resources": resources}]
    })
}

/// `GET /api`.
pub fn api(aggregated_form: bool, server: &str) -> Value {
    if aggregated_form {
        return aggregated(true);
    }
    json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server}]})
}

/// `GET /apis`.
pub fn apis(aggregated_form: bool) -> Value {
    if aggregated_form {
        return aggregated(false);
    }
    let groups: Vec<Value> = groups()
        .into_iter()
        .filter(|(g, _, _)| !g.is_empty())
        .map(|(g, v, _)| {
            let gv = json!({"groupVersion": format!("{g}/{v}"), "version": v});
            json!({"name": g, "versions": [gv.clone()], "preferredVersion": gv})
        })
        .collect();
    let mut groups = groups;
    for v in virtual_groups() {
        let gv = json!({"groupVersion": format!("{}/{}", v.group, v.version), "version": v.version});
        groups.push(json!({"name": v.group, "versions": [gv.clone()], "preferredVersion": gv}));
    }
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `GET /api/v1` or `GET /apis/{group}/{version}`; None for a group-version not served.
pub fn resource_list(group: &str, version: &str) -> Option<Value> {
    if let Some(v) = virtual_groups().into_iter().find(|v| v.group == group && v.version == version) {
        let resources: Vec<Value> = v
            .resources
            .iter()
            .map(|(plural, kind, namespaced, verbs)| json!({"name": plural, "singularName": "", "namespaced": namespaced, "kind": kind, "verbs": verbs}))
            .collect();
        return Some(
            json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": format!("{group}/{version}"), "resources": resources}),
        );
    }
    let (_, _, kinds) = groups().into_iter().find(|(g, v, _)| *g == group && *v == version)?;
    let mut resources = Vec::new();
    for k in kinds {
        let mut r = json!({
            "name": k.plural,
            "singularName": k.singular,
            "namespaced": k.namespaced,
            "kind": k.kind,
            "verbs": verbs(k),
        });
        if !k.short_names.is_empty() {
            r["shortNames"] = json!(k.short_names);
        }
        if !k.categories.is_empty() {
            r["categories"] = json!(k.categories);
        }
        resources.push(r);
        if k.has_status {
            resources.push(json!({"name": format!("{}/status", k.plural), "singularName": "", "namespaced": k.namespaced, "kind": k.kind, "verbs": ["get", "patch", "update"]}));
        }
        if k.has_scale() {
            resources.push(json!({"name": format!("{}/scale", k.plural), "singularName": "", "namespaced": k.namespaced, "group": scale::GROUP, "version": scale::VERSION, "kind": scale::KIND, "verbs": ["get", "patch", "update"]}));
        }
        if k.kind == "Pod" {
            resources.push(json!({"name": "pods/log", "singularName": "", "namespaced": true, "kind": "Pod", "verbs": ["get"]}));
            resources.push(json!({"name": "pods/eviction", "singularName": "", "namespaced": true, "group": "policy", "version": "v1", "kind": "Eviction", "verbs": ["create"]}));
            resources.push(json!({"name": "pods/ephemeralcontainers", "singularName": "", "namespaced": true, "kind": "Pod", "verbs": ["get", "patch", "update"]}));
        }
    }
    let gv = if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregated_discovery_is_asked_for_by_v2_only() {
        let kubectl = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";
        assert!(wants_aggregated(kubectl));
        let old = "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";
        assert!(!wants_aggregated(old));
        assert!(!wants_aggregated("application/json, */*"));
    }

    #[test]
    fn documents_list_every_kind() {
        let core = api(true, "");
        let pods = core["items"][0]["versions"][0]["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["resource"] == "pods")
            .unwrap();
        assert_eq!(pods["shortNames"][0], "po");
        assert_eq!(pods["scope"], "Namespaced");
        let groups = apis(false);
        assert!(groups["groups"].as_array().unwrap().iter().any(|g| g["name"] == "apps"));
        let apps = resource_list("apps", "v1").unwrap();
        assert!(apps["resources"].as_array().unwrap().iter().any(|r| r["name"] == "deployments"));
        assert!(resource_list("batch", "v1").is_some_and(|b| b["resources"].as_array().unwrap().iter().any(|r| r["name"] == "jobs")));
        assert!(resource_list("autoscaling", "v2").is_some());
        assert!(resource_list("autoscaling", "v1").is_none(), "served as v2 only");
    }
}
