//! RBAC objects checked as Kubernetes' API server checks them, plus what it cannot know: a verb,
//! group or resource one letter away from a real one is a typo (a rule naming `pod` or `app`
//! never matches anything), reported with "did you mean". And the notes `capstan plan` adds for
//! a reviewer: grants of every right, or of reading Secrets cluster-wide.

use serde_json::Value;

use crate::problem::FieldPath;
use crate::validate::Findings;

const RBAC_GROUP: &str = "rbac.authorization.k8s.io";

/// The verbs Kubernetes' authorisers and admission know.
const VERBS: &[&str] = &[
    "get",
    "list",
    "watch",
    "create",
    "update",
    "patch",
    "delete",
    "deletecollection",
    "use",
    "bind",
    "escalate",
    "impersonate",
    "approve",
    "sign",
    "proxy",
];

/// Kubernetes' own API groups (`""` is core); rules for other groups (custom resources) are
/// not second-guessed.
const GROUPS: &[&str] = &[
    "",
    "apps",
    "batch",
    "autoscaling",
    "policy",
    "extensions",
    RBAC_GROUP,
    "networking.k8s.io",
    "storage.k8s.io",
    "scheduling.k8s.io",
    "coordination.k8s.io",
    "discovery.k8s.io",
    "events.k8s.io",
    "metrics.k8s.io",
    "node.k8s.io",
    "apiextensions.k8s.io",
    "apiregistration.k8s.io",
    "admissionregistration.k8s.io",
    "certificates.k8s.io",
    "authentication.k8s.io",
    "authorization.k8s.io",
    "flowcontrol.apiserver.k8s.io",
    "gateway.networking.k8s.io",
    "capstan.dev",
];

/// Resources of Kubernetes' groups that Capstan does not serve but rules name.
const OTHER_RESOURCES: &[&str] = &[
    "replicationcontrollers",
    "limitranges",
    "podtemplates",
    "bindings",
    "componentstatuses",
    "customresourcedefinitions",
    "apiservices",
    "certificatesigningrequests",
    "validatingwebhookconfigurations",
    "mutatingwebhookconfigurations",
    "validatingadmissionpolicies",
    "csidrivers",
    "csinodes",
    "csistoragecapacities",
    "volumeattachments",
    "runtimeclasses",
    "podsecuritypolicies",
    "tokenreviews",
    "subjectaccessreviews",
    "localsubjectaccessreviews",
    "selfsubjectaccessreviews",
    "selfsubjectrulesreviews",
    "selfsubjectreviews",
    "flowschemas",
    "prioritylevelconfigurations",
    "gateways",
    "gatewayclasses",
    "httproutes",
    "grpcroutes",
    "referencegrants",
    "nodes",
];

const SUBRESOURCES: &[&str] = &[
    "status",
    "log",
    "exec",
    "attach",
    "portforward",
    "proxy",
    "eviction",
    "binding",
    "token",
    "scale",
    "finalize",
    "ephemeralcontainers",
    "resize",
    "approval",
    "rollback",
];

/// The nearest of `known` to `word` when it is a typo of one (one or two edits away).
pub(crate) fn typo_of<'a>(word: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    if word == "*" {
        return None;
    }
    let mut best: Option<(usize, &str)> = None;
    for k in known {
        if k == word {
            return None;
        }
        let d = strsim::levenshtein(word, k);
        if d <= 2 && d < k.len().max(2) && best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, k));
        }
    }
    best.map(|(_, k)| k)
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn known_resources() -> Vec<&'static str> {
    capstan_api::REGISTRY
        .iter()
        .map(|k| k.plural)
        .chain(OTHER_RESOURCES.iter().copied())
        .collect()
}

/// Checks a Role's or ClusterRole's rules.
pub(crate) fn check_role(f: &mut Findings, path: &FieldPath, object: &Value, cluster: bool) {
    let resources = known_resources();
    for (i, rule) in object["rules"].as_array().into_iter().flatten().enumerate() {
        let at = path.key("rules").index(i);
        let verbs = strings(&rule["verbs"]);
        if verbs.is_empty() {
            f.missing(at.key("verbs"), "verbs must contain at least one value");
        }
        for (j, verb) in verbs.iter().enumerate() {
            if let Some(k) = typo_of(verb, VERBS.iter().copied()) {
                f.invalid(at.key("verbs").index(j), format!("unknown verb {verb:?} (did you mean {k:?}?)"));
            }
        }
        let urls = strings(&rule["nonResourceURLs"]);
        let named = strings(&rule["resources"]);
        if !urls.is_empty() {
            if !cluster {
                f.invalid(at.key("nonResourceURLs"), "namespaced rules cannot apply to non-resource URLs");
            }
            if !named.is_empty() || !strings(&rule["apiGroups"]).is_empty() {
                f.invalid(at.clone(), "rules cannot apply to both regular resources and non-resource URLs");
            }
            for (j, url) in urls.iter().enumerate() {
                if !url.starts_with('/') && *url != "*" {
                    f.invalid(
                        at.key("nonResourceURLs").index(j),
                        format!("{url:?}: a non-resource URL starts with '/'"),
                    );
                }
            }
            continue;
        }
        if rule.get("apiGroups").is_none_or(Value::is_null) {
            f.missing(at.key("apiGroups"), "resource rules must supply at least one api group");
        }
        if named.is_empty() {
            f.missing(at.key("resources"), "resource rules must supply at least one resource");
        }
        let groups = strings(&rule["apiGroups"]);
        for (j, group) in groups.iter().enumerate() {
            if let Some(k) = typo_of(group, GROUPS.iter().copied().filter(|g| !g.is_empty())) {
                f.invalid(
                    at.key("apiGroups").index(j),
                    format!("unknown API group {group:?} (did you mean {k:?}?)"),
                );
            }
            if group.contains('/') {
                f.invalid(
                    at.key("apiGroups").index(j),
                    format!(
                        "{group:?} names a version: apiGroups hold the group alone, as \"{}\"",
                        group.split('/').next().unwrap_or_default()
                    ),
                );
            }
        }
        // Only for Kubernetes' own groups: custom resources are the repository's business.
        let ours = !groups.is_empty() && groups.iter().all(|g| *g == "*" || GROUPS.contains(g));
        for (j, resource) in named.iter().enumerate() {
            let (base, sub) = match resource.split_once('/') {
                Some((b, s)) => (b, Some(s)),
                None => (*resource, None),
            };
            let here = at.key("resources").index(j);
            if ours && base != "*" && !resources.contains(&base) {
                let hint = typo_of(base, resources.iter().copied()).or_else(|| {
                    resources
                        .iter()
                        .copied()
                        .find(|r| *r == format!("{base}s") || *r == format!("{base}es"))
                });
                if let Some(k) = hint {
                    f.invalid(here.clone(), format!("unknown resource {base:?} (did you mean {k:?}?)"));
                }
            }
            if let Some(sub) = sub
                && let Some(k) = typo_of(sub, SUBRESOURCES.iter().copied())
            {
                f.invalid(here, format!("unknown subresource {sub:?} (did you mean {k:?}?)"));
            }
        }
    }
}

/// Checks a RoleBinding's or ClusterRoleBinding's role and subjects.
pub(crate) fn check_binding(f: &mut Findings, path: &FieldPath, object: &Value, cluster: bool) {
    let role = &object["roleRef"];
    let at = path.key("roleRef");
    if role["apiGroup"] != RBAC_GROUP {
        f.invalid(at.key("apiGroup"), format!("supported values: {RBAC_GROUP:?}"));
    }
    match role["kind"].as_str() {
        Some("ClusterRole") => {}
        Some("Role") if !cluster => {}
        other => f.invalid(
            at.key("kind"),
            format!(
                "{:?}: supported values: {}",
                other.unwrap_or_default(),
                if cluster { "\"ClusterRole\"" } else { "\"Role\", \"ClusterRole\"" }
            ),
        ),
    }
    if role["name"].as_str().is_none_or(str::is_empty) {
        f.missing(at.key("name"), "the role's name is required");
    }
    for (i, s) in object["subjects"].as_array().into_iter().flatten().enumerate() {
        let at = path.key("subjects").index(i);
        if s["name"].as_str().is_none_or(str::is_empty) {
            f.missing(at.key("name"), "a subject's name is required");
        }
        let group = s["apiGroup"].as_str().unwrap_or_default();
        match s["kind"].as_str() {
            Some("ServiceAccount") => {
                if !group.is_empty() {
                    f.invalid(at.key("apiGroup"), "a ServiceAccount subject has no apiGroup (\"\")");
                }
                if cluster && s["namespace"].as_str().is_none_or(str::is_empty) {
                    f.missing(
                        at.key("namespace"),
                        "a ServiceAccount subject of a ClusterRoleBinding needs its namespace",
                    );
                }
            }
            Some("User" | "Group") => {
                if !group.is_empty() && group != RBAC_GROUP {
                    f.invalid(at.key("apiGroup"), format!("supported values: {RBAC_GROUP:?}"));
                }
            }
            other => f.invalid(
                at.key("kind"),
                format!(
                    "{:?}: supported values: \"ServiceAccount\", \"User\", \"Group\"",
                    other.unwrap_or_default()
                ),
            ),
        }
    }
}

/// Whether a rule lets its holder read Secrets (`get`, `list` or `watch` them, or `*`).
fn reads_secrets(rule: &Value) -> bool {
    let any = |v: &Value, wanted: &[&str]| strings(v).iter().any(|x| *x == "*" || wanted.contains(x));
    any(&rule["verbs"], &["get", "list", "watch"]) && any(&rule["apiGroups"], &[""]) && any(&rule["resources"], &["secrets"])
}

/// Whether a rule grants every verb on every resource of every group.
fn grants_everything(rule: &Value) -> bool {
    let all = |v: &Value| strings(v).contains(&"*");
    all(&rule["verbs"]) && all(&rule["apiGroups"]) && all(&rule["resources"])
}

/// A reviewer's note on an RBAC object of a plan: what it grants that deserves a second look.
/// `cluster_role` finds a ClusterRole's rules by name (those of the commit, or built in).
pub fn review_note(object: &Value, cluster_role: &dyn Fn(&str) -> Option<Vec<Value>>) -> Option<String> {
    let rules = |v: &Value| v["rules"].as_array().cloned().unwrap_or_default();
    match object["kind"].as_str()? {
        "ClusterRole" | "Role" if rules(object).iter().any(grants_everything) => {
            Some("grants every verb on every resource (\"*\" on \"*\")".into())
        }
        "ClusterRoleBinding" => {
            let role = object["roleRef"]["name"].as_str()?;
            let granted = cluster_role(role)?;
            let who = object["subjects"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|s| {
                    format!(
                        "{} {}",
                        s["kind"].as_str().unwrap_or_default(),
                        s["name"].as_str().unwrap_or_default()
                    )
                })
                .collect::<Vec<_>>()
                .join(", ");
            if granted.iter().any(grants_everything) {
                Some(format!("grants every right in the cluster (ClusterRole {role}) to {who}"))
            } else if granted.iter().any(reads_secrets) {
                Some(format!("lets {who} read Secrets cluster-wide (ClusterRole {role})"))
            } else {
                None
            }
        }
        _ => None,
    }
}

/// Whether `name` is one of the ClusterRoles every cluster has.
pub fn is_builtin_cluster_role(name: &str) -> bool {
    matches!(name, "cluster-admin" | "admin" | "edit" | "view") || name.starts_with("system:") || name.starts_with("capstan:")
}

/// A note on a binding whose role is not in the commit (nor built in): allowed, as Kubernetes
/// allows it, but it grants nothing until the role exists.
pub fn missing_role_note(binding: &Value, exists: &dyn Fn(&str, &str, &str) -> bool) -> Option<String> {
    let role = &binding["roleRef"];
    let (kind, name) = (role["kind"].as_str()?, role["name"].as_str()?);
    let namespace = binding["metadata"]["namespace"].as_str().unwrap_or_default();
    let found = match kind {
        "ClusterRole" => is_builtin_cluster_role(name) || exists("ClusterRole", "", name),
        _ => exists("Role", namespace, name),
    };
    (!found).then(|| {
        let what = if kind == "Role" {
            format!("Role {namespace}/{name}")
        } else {
            format!("ClusterRole {name}")
        };
        format!("binds {what}, which does not exist: it grants nothing until the role is added")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::tests::messages;
    use serde_json::json;

    #[test]
    fn typos_in_rules_are_named_with_the_likely_word() {
        let role = json!({"metadata": {"name": "r", "namespace": "a"}, "rules": [
            {"apiGroups": ["app"], "resources": ["deployments"], "verbs": ["gets", "list"]},
            {"apiGroups": [""], "resources": ["pod", "pods/exce", "configmaps"], "verbs": ["*"]},
            {"apiGroups": ["monitoring.coreos.com"], "resources": ["servicemonitors"], "verbs": ["get", "frobnicate"]},
            {"apiGroups": ["apps/v1"], "resources": ["deployments"], "verbs": ["get"]},
            {"nonResourceURLs": ["/metrics"], "verbs": ["get"]},
        ]});
        let m = messages("Role", role);
        let has = |s: &str| m.iter().any(|x| x.contains(s));
        assert!(
            has("rules[0].apiGroups[0]: unknown API group \"app\" (did you mean \"apps\"?)"),
            "{m:?}"
        );
        assert!(has("rules[0].verbs[0]: unknown verb \"gets\" (did you mean \"get\"?)"), "{m:?}");
        assert!(
            has("rules[1].resources[0]: unknown resource \"pod\" (did you mean \"pods\"?)"),
            "{m:?}"
        );
        assert!(
            has("rules[1].resources[1]: unknown subresource \"exce\" (did you mean \"exec\"?)"),
            "{m:?}"
        );
        assert!(has("rules[3].apiGroups[0]: \"apps/v1\" names a version"), "{m:?}");
        assert!(
            has("rules[4].nonResourceURLs: namespaced rules cannot apply to non-resource URLs"),
            "{m:?}"
        );
        assert!(!m.iter().any(|x| x.contains("rules[2]")), "custom resources and verbs pass: {m:?}");
        assert_eq!(m.len(), 6, "{m:?}");
    }

    #[test]
    fn bindings_name_a_role_and_proper_subjects() {
        let ok = json!({"metadata": {"name": "b"}, "roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": "view"},
                        "subjects": [{"kind": "ServiceAccount", "name": "s", "namespace": "a"}, {"kind": "User", "name": "alice"},
                                     {"kind": "Group", "name": "dev", "apiGroup": RBAC_GROUP}]});
        assert!(messages("ClusterRoleBinding", ok).is_empty());
        let bad = json!({"metadata": {"name": "b"}, "roleRef": {"apiGroup": "rbac", "kind": "Role", "name": ""},
                         "subjects": [{"kind": "ServiceAccount", "name": "s"}, {"kind": "Robot", "name": "r"}]});
        let m = messages("ClusterRoleBinding", bad);
        for want in [
            "roleRef.apiGroup: supported values",
            "roleRef.kind: \"Role\": supported values: \"ClusterRole\"",
            "roleRef.name",
            "subjects[0].namespace",
            "subjects[1].kind: \"Robot\"",
        ] {
            assert!(m.iter().any(|x| x.contains(want)), "{want}: {m:?}");
        }
    }

    #[test]
    fn reviewers_are_told_of_sweeping_grants() {
        let admin = json!({"kind": "ClusterRole", "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]});
        assert!(review_note(&admin, &|_| None).unwrap().contains("every verb on every resource"));
        let roles = |name: &str| match name {
            "secret-reader" => Some(vec![json!({"apiGroups": [""], "resources": ["secrets"], "verbs": ["list"]})]),
            "view" => Some(vec![json!({"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]})]),
            _ => None,
        };
        let binding = |role: &str| json!({"kind": "ClusterRoleBinding", "roleRef": {"kind": "ClusterRole", "name": role}, "subjects": [{"kind": "User", "name": "alice"}]});
        assert_eq!(
            review_note(&binding("secret-reader"), &roles).unwrap(),
            "lets User alice read Secrets cluster-wide (ClusterRole secret-reader)"
        );
        assert_eq!(review_note(&binding("view"), &roles), None);
        let exists = |kind: &str, _: &str, name: &str| kind == "ClusterRole" && name == "mine";
        assert_eq!(missing_role_note(&binding("view"), &exists), None);
        assert_eq!(missing_role_note(&binding("mine"), &exists), None);
        assert!(
            missing_role_note(&binding("gone"), &exists)
                .unwrap()
                .contains("ClusterRole gone, which does not exist")
        );
    }
}
