//! Role-based access control as Kubernetes' RBAC authoriser decides it: the rules of Roles and
//! ClusterRoles (aggregation included) indexed by the users and groups their bindings name, so a
//! request is checked against the caller's own grants, never by scanning every binding.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use capstan_api::selector::Selector;
use serde_json::{Value, json};

/// Who asks: a user name and the groups it belongs to (`system:authenticated` included).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserInfo {
    pub name: String,
    pub groups: Vec<String>,
}

/// The group whose members RBAC never restricts, as in Kubernetes.
pub const MASTERS: &str = "system:masters";

impl UserInfo {
    pub fn is_master(&self) -> bool {
        self.groups.iter().any(|g| g == MASTERS)
    }
}

/// What is asked, in the attributes RBAC rules speak of.
#[derive(Clone, Copy, Debug)]
pub enum Request<'a> {
    Resource {
        verb: &'a str,
        group: &'a str,
        resource: &'a str,
        subresource: Option<&'a str>,
        /// None for cluster-scoped objects and requests across all namespaces.
        namespace: Option<&'a str>,
        /// Empty for collections and creations.
        name: &'a str,
    },
    NonResource {
        verb: &'a str,
        path: &'a str,
    },
}

impl<'a> Request<'a> {
    /// A resource request, its resource written as rules write it (`pods` or `pods/log`).
    pub fn resource(verb: &'a str, group: &'a str, resource: &'a str, namespace: Option<&'a str>, name: &'a str) -> Request<'a> {
        let (resource, subresource) = match resource.split_once('/') {
            Some((r, s)) => (r, Some(s)),
            None => (resource, None),
        };
        Request::Resource {
            verb,
            group,
            resource,
            subresource,
            namespace,
            name,
        }
    }
}

/// One `PolicyRule`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rule {
    pub verbs: Vec<String>,
    pub api_groups: Vec<String>,
    pub resources: Vec<String>,
    pub resource_names: Vec<String>,
    pub non_resource_urls: Vec<String>,
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
        .unwrap_or_default()
}

fn any_is(list: &[String], wanted: &str) -> bool {
    list.iter().any(|x| x == "*" || x == wanted)
}

impl Rule {
    pub fn from_json(v: &Value) -> Rule {
        Rule {
            verbs: strings(&v["verbs"]),
            api_groups: strings(&v["apiGroups"]),
            resources: strings(&v["resources"]),
            resource_names: strings(&v["resourceNames"]),
            non_resource_urls: strings(&v["nonResourceURLs"]),
        }
    }

    pub fn to_json(&self) -> Value {
        let mut v = json!({"verbs": self.verbs});
        if self.non_resource_urls.is_empty() {
            v["apiGroups"] = json!(self.api_groups);
            v["resources"] = json!(self.resources);
            if !self.resource_names.is_empty() {
                v["resourceNames"] = json!(self.resource_names);
            }
        } else {
            v["nonResourceURLs"] = json!(self.non_resource_urls);
        }
        v
    }

    /// Whether the rule allows `r` (the namespace is the binding's business, not the rule's).
    pub fn allows(&self, r: &Request<'_>) -> bool {
        match *r {
            Request::Resource {
                verb,
                group,
                resource,
                subresource,
                name,
                ..
            } => {
                any_is(&self.verbs, verb)
                    && any_is(&self.api_groups, group)
                    && self.resources.iter().any(|x| resource_matches(x, resource, subresource))
                    && (self.resource_names.is_empty() || (!name.is_empty() && self.resource_names.iter().any(|n| n == name)))
            }
            Request::NonResource { verb, path } => {
                any_is(&self.verbs, verb)
                    && self
                        .non_resource_urls
                        .iter()
                        .any(|u| u == "*" || u == path || u.strip_suffix('*').is_some_and(|prefix| path.starts_with(prefix)))
            }
        }
    }
}

/// `pods`, `pods/log`, `*` and `*/scale` as Kubernetes matches them (there is no `pods/*`).
fn resource_matches(rule: &str, resource: &str, subresource: Option<&str>) -> bool {
    if rule == "*" {
        return true;
    }
    match subresource {
        None => rule == resource,
        Some(sub) => rule
            .strip_suffix(sub)
            .and_then(|r| r.strip_suffix('/'))
            .is_some_and(|r| r == resource || r == "*"),
    }
}

/// One subject's grants: everywhere (ClusterRoleBindings), and by namespace (RoleBindings).
#[derive(Clone, Debug, Default)]
struct Grants {
    cluster: Vec<Arc<[Rule]>>,
    namespaced: HashMap<String, Vec<Arc<[Rule]>>>,
}

impl Grants {
    /// The rule sets that apply in `namespace` (None: only the cluster-wide ones), each with
    /// whether it came through a RoleBinding.
    fn applying<'a>(&'a self, namespace: Option<&str>) -> impl Iterator<Item = (&'a Arc<[Rule]>, bool)> + 'a {
        let local = namespace.and_then(|ns| self.namespaced.get(ns)).into_iter().flatten();
        self.cluster.iter().map(|r| (r, false)).chain(local.map(|r| (r, true)))
    }
}

enum Subject {
    User(String),
    Group(String),
}

/// A binding whose role does not exist: allowed, as in Kubernetes, but it grants nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dangling {
    /// `RoleBinding app/readers` or `ClusterRoleBinding ops`.
    pub binding: String,
    /// `Role app/reader` or `ClusterRole ops`.
    pub role: String,
}

/// The RBAC objects of the cluster, compiled: each subject's grants, ready for lookups.
#[derive(Debug, Default)]
pub struct Policy {
    users: HashMap<String, Grants>,
    groups: HashMap<String, Grants>,
    /// Every ClusterRole's rules, aggregation resolved.
    cluster_roles: HashMap<String, Arc<[Rule]>>,
    pub dangling: Vec<Dangling>,
}

/// The four kinds, as objects.
#[derive(Debug, Default)]
pub struct Objects<'a> {
    pub cluster_roles: Vec<&'a Value>,
    pub roles: Vec<&'a Value>,
    pub cluster_role_bindings: Vec<&'a Value>,
    pub role_bindings: Vec<&'a Value>,
}

fn name_of(v: &Value) -> &str {
    v["metadata"]["name"].as_str().unwrap_or_default()
}

fn namespace_of(v: &Value) -> &str {
    v["metadata"]["namespace"].as_str().unwrap_or_default()
}

/// The rules of every ClusterRole, with aggregation resolved: a role with an `aggregationRule`
/// holds its own rules plus those of every ClusterRole its selectors match, transitively (as
/// Kubernetes' aggregation controller fills them in).
fn cluster_role_rules(roles: &[&Value]) -> HashMap<String, Arc<[Rule]>> {
    let by_name: HashMap<&str, &Value> = roles.iter().map(|r| (name_of(r), *r)).collect();
    fn resolve<'a>(
        name: &'a str,
        by_name: &HashMap<&'a str, &'a Value>,
        done: &mut HashMap<String, Arc<[Rule]>>,
        visiting: &mut HashSet<&'a str>,
    ) -> Arc<[Rule]> {
        if let Some(r) = done.get(name) {
            return r.clone();
        }
        let Some(role) = by_name.get(name) else {
            return Arc::from(Vec::new());
        };
        let mut rules: Vec<Rule> = role["rules"].as_array().into_iter().flatten().map(Rule::from_json).collect();
        if let Some(selectors) = role["aggregationRule"]["clusterRoleSelectors"].as_array()
            && visiting.insert(name)
        {
            let selectors: Vec<Selector> = selectors.iter().map(Selector::from_json).collect();
            let mut members: Vec<&str> = by_name
                .iter()
                .filter(|(n, r)| {
                    **n != name
                        && selectors
                            .iter()
                            .any(|s| !s.is_empty() && s.matches_json(r["metadata"].get("labels")))
                })
                .map(|(n, _)| *n)
                .collect();
            members.sort_unstable();
            for m in members {
                for rule in resolve(m, by_name, done, visiting).iter() {
                    if !rules.contains(rule) {
                        rules.push(rule.clone());
                    }
                }
            }
            visiting.remove(name);
        }
        let rules: Arc<[Rule]> = Arc::from(rules);
        if visiting.is_empty() {
            done.insert(name.to_owned(), rules.clone());
        }
        rules
    }
    let mut done = HashMap::new();
    for name in by_name.keys() {
        let mut visiting = HashSet::new();
        let rules = resolve(name, &by_name, &mut done, &mut visiting);
        done.insert((*name).to_owned(), rules);
    }
    done
}

/// The subjects a binding names, as users and groups (a ServiceAccount is the user
/// `system:serviceaccount:NS:NAME`; its namespace defaults to the binding's).
fn subjects(binding: &Value) -> Vec<Subject> {
    let own_ns = namespace_of(binding);
    binding["subjects"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| {
            let name = s["name"].as_str()?.to_owned();
            match s["kind"].as_str()? {
                "User" => Some(Subject::User(name)),
                "Group" => Some(Subject::Group(name)),
                "ServiceAccount" => {
                    let ns = s["namespace"].as_str().filter(|n| !n.is_empty()).unwrap_or(own_ns);
                    Some(Subject::User(format!("system:serviceaccount:{ns}:{name}")))
                }
                _ => None,
            }
        })
        .collect()
}

impl Policy {
    /// Compiles the objects. Objects named like a built-in default replace it.
    pub fn build(objects: &Objects<'_>) -> Policy {
        let cluster_rules = cluster_role_rules(&objects.cluster_roles);
        let role_rules: HashMap<(&str, &str), Arc<[Rule]>> = objects
            .roles
            .iter()
            .map(|r| {
                let rules: Vec<Rule> = r["rules"].as_array().into_iter().flatten().map(Rule::from_json).collect();
                ((namespace_of(r), name_of(r)), Arc::from(rules))
            })
            .collect();
        let mut policy = Policy::default();
        let bindings = objects
            .cluster_role_bindings
            .iter()
            .map(|b| (b, None))
            .chain(objects.role_bindings.iter().map(|b| (b, Some(namespace_of(b)))));
        for (binding, namespace) in bindings {
            let role_name = binding["roleRef"]["name"].as_str().unwrap_or_default();
            let (rules, role) = match (binding["roleRef"]["kind"].as_str(), namespace) {
                (Some("Role"), Some(ns)) => (role_rules.get(&(ns, role_name)), format!("Role {ns}/{role_name}")),
                (Some("ClusterRole"), _) => (cluster_rules.get(role_name), format!("ClusterRole {role_name}")),
                (kind, _) => (None, format!("{} {role_name}", kind.unwrap_or("?"))),
            };
            let Some(rules) = rules else {
                let binding = match namespace {
                    Some(ns) => format!("RoleBinding {ns}/{}", name_of(binding)),
                    None => format!("ClusterRoleBinding {}", name_of(binding)),
                };
                policy.dangling.push(Dangling { binding, role });
                continue;
            };
            for subject in subjects(binding) {
                let grants = match subject {
                    Subject::User(u) => policy.users.entry(u).or_default(),
                    Subject::Group(g) => policy.groups.entry(g).or_default(),
                };
                match namespace {
                    Some(ns) => grants.namespaced.entry(ns.to_owned()).or_default().push(rules.clone()),
                    None => grants.cluster.push(rules.clone()),
                }
            }
        }
        policy.dangling.sort_by(|a, b| a.binding.cmp(&b.binding));
        policy.cluster_roles = cluster_rules;
        policy
    }

    /// A ClusterRole's rules with aggregation resolved (what Kubernetes' aggregation
    /// controller writes into an aggregated role).
    pub fn cluster_role(&self, name: &str) -> Option<&[Rule]> {
        self.cluster_roles.get(name).map(|r| &r[..])
    }

    /// The rule sets that apply to `user` in `namespace` (None: only the cluster-wide ones),
    /// each with whether it came through a RoleBinding.
    fn grants<'a>(&'a self, user: &'a UserInfo, namespace: Option<&'a str>) -> impl Iterator<Item = (&'a Arc<[Rule]>, bool)> + 'a {
        let own = self.users.get(user.name.as_str());
        let through_groups = user.groups.iter().filter_map(|g| self.groups.get(g.as_str()));
        own.into_iter().chain(through_groups).flat_map(move |g| g.applying(namespace))
    }

    /// Whether RBAC allows `user` to do `r`.
    pub fn allows(&self, user: &UserInfo, r: &Request<'_>) -> bool {
        if user.is_master() {
            return true;
        }
        let namespace = match r {
            Request::Resource { namespace, .. } => *namespace,
            Request::NonResource { .. } => None,
        };
        self.grants(user, namespace)
            .any(|(rules, _)| rules.iter().any(|rule| rule.allows(r)))
    }

    /// Every rule that applies to `user` in `namespace`, deduplicated, resource rules first
    /// (SelfSubjectRulesReview, `kubectl auth can-i --list`).
    pub fn rules(&self, user: &UserInfo, namespace: &str) -> (Vec<Rule>, Vec<Rule>) {
        if user.is_master() {
            return (
                vec![Rule {
                    verbs: vec!["*".into()],
                    api_groups: vec!["*".into()],
                    resources: vec!["*".into()],
                    ..Rule::default()
                }],
                vec![Rule {
                    verbs: vec!["*".into()],
                    non_resource_urls: vec!["*".into()],
                    ..Rule::default()
                }],
            );
        }
        let (mut resource, mut non_resource) = (Vec::new(), Vec::new());
        let ns = (!namespace.is_empty()).then_some(namespace);
        for (rules, local) in self.grants(user, ns) {
            for rule in rules.iter() {
                // A namespaced binding grants nothing on non-resource URLs.
                let list = if !rule.non_resource_urls.is_empty() {
                    if local {
                        continue;
                    }
                    &mut non_resource
                } else {
                    &mut resource
                };
                if !list.contains(rule) {
                    list.push(rule.clone());
                }
            }
        }
        (resource, non_resource)
    }

    /// The first right `target` holds (in `namespace`, or cluster-wide) that `requester` lacks:
    /// asking for a token of `target` would be an escalation. None when `requester` covers it.
    pub fn escalation(&self, requester: &UserInfo, target: &UserInfo, namespace: &str) -> Option<String> {
        if requester.is_master() {
            return None;
        }
        if target.is_master() {
            return Some("every right (system:masters)".into());
        }
        for (rules, local) in self.grants(target, Some(namespace)) {
            let ns = local.then_some(namespace);
            for rule in rules.iter() {
                if let Some(missing) = uncovered(self, requester, rule, ns) {
                    return Some(missing);
                }
            }
        }
        None
    }
}

/// The first atomic permission of `rule` (in `ns`) that `requester` does not hold.
fn uncovered(policy: &Policy, requester: &UserInfo, rule: &Rule, ns: Option<&str>) -> Option<String> {
    for verb in &rule.verbs {
        for url in &rule.non_resource_urls {
            if ns.is_none() && !policy.allows(requester, &Request::NonResource { verb, path: url }) {
                return Some(format!("{verb} on {url}"));
            }
        }
        for group in &rule.api_groups {
            for resource in &rule.resources {
                let names: Vec<&str> = if rule.resource_names.is_empty() {
                    vec![""]
                } else {
                    rule.resource_names.iter().map(String::as_str).collect()
                };
                for name in names {
                    if !policy.allows(requester, &Request::resource(verb, group, resource, ns, name)) {
                        let group = if group.is_empty() { String::new() } else { format!(".{group}") };
                        let place = ns.map(|n| format!(" in namespace {n:?}")).unwrap_or_else(|| " cluster-wide".into());
                        return Some(format!("{verb} {resource}{group}{place}"));
                    }
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str, groups: &[&str]) -> UserInfo {
        UserInfo {
            name: name.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }

    fn res<'a>(verb: &'a str, group: &'a str, resource: &'a str, ns: Option<&'a str>, name: &'a str) -> Request<'a> {
        Request::resource(verb, group, resource, ns, name)
    }

    fn objects() -> Vec<Value> {
        vec![
            json!({"kind": "Role", "metadata": {"name": "pod-reader", "namespace": "app"},
                   "rules": [{"apiGroups": [""], "resources": ["pods", "pods/log"], "verbs": ["get", "list", "watch"]}]}),
            json!({"kind": "RoleBinding", "metadata": {"name": "reads", "namespace": "app"},
                   "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
                   "subjects": [{"kind": "ServiceAccount", "name": "bot"}, {"kind": "Group", "name": "dev"}]}),
            json!({"kind": "ClusterRole", "metadata": {"name": "one-config"},
                   "rules": [{"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["settings"], "verbs": ["get"]}]}),
            json!({"kind": "ClusterRole", "metadata": {"name": "monitoring"}, "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"team": "ops"}}]}}),
            json!({"kind": "ClusterRole", "metadata": {"name": "ops-nodes", "labels": {"team": "ops"}},
                   "rules": [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list"]}]}),
            json!({"kind": "ClusterRole", "metadata": {"name": "ops-metrics", "labels": {"team": "ops"}}, "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"team": "metrics"}}]},
                   "rules": [{"nonResourceURLs": ["/metrics", "/debug/*"], "verbs": ["get"]}]}),
            json!({"kind": "ClusterRole", "metadata": {"name": "deep", "labels": {"team": "metrics"}},
                   "rules": [{"apiGroups": ["apps"], "resources": ["*/scale"], "verbs": ["get"]}]}),
            json!({"kind": "ClusterRoleBinding", "metadata": {"name": "alice-monitoring"},
                   "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "monitoring"},
                   "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "alice"}]}),
            json!({"kind": "RoleBinding", "metadata": {"name": "settings", "namespace": "web"},
                   "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "one-config"},
                   "subjects": [{"kind": "User", "name": "alice"}]}),
            json!({"kind": "RoleBinding", "metadata": {"name": "ghost", "namespace": "web"},
                   "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "missing"},
                   "subjects": [{"kind": "User", "name": "alice"}]}),
        ]
    }

    fn policy(objs: &[Value]) -> Policy {
        let of = |k: &str| objs.iter().filter(|o| o["kind"] == k).collect::<Vec<_>>();
        Policy::build(&Objects {
            cluster_roles: of("ClusterRole"),
            roles: of("Role"),
            cluster_role_bindings: of("ClusterRoleBinding"),
            role_bindings: of("RoleBinding"),
        })
    }

    #[test]
    fn bindings_grant_their_roles_rules_where_they_are() {
        let objs = objects();
        let p = policy(&objs);
        let bot = user(
            "system:serviceaccount:app:bot",
            &["system:serviceaccounts", "system:serviceaccounts:app", "system:authenticated"],
        );
        assert!(p.allows(&bot, &res("list", "", "pods", Some("app"), "")));
        assert!(p.allows(&bot, &res("get", "", "pods/log", Some("app"), "web")));
        assert!(!p.allows(&bot, &res("delete", "", "pods", Some("app"), "web")), "verb");
        assert!(!p.allows(&bot, &res("get", "", "secrets", Some("app"), "db")), "resource");
        assert!(!p.allows(&bot, &res("get", "", "pods/exec", Some("app"), "web")), "subresource");
        assert!(!p.allows(&bot, &res("list", "", "pods", Some("other"), "")), "namespace");
        assert!(
            !p.allows(&bot, &res("list", "", "pods", None, "")),
            "all namespaces need a cluster-wide grant"
        );
        assert!(!p.allows(&bot, &res("list", "apps", "pods", Some("app"), "")), "group");
        let dev = user("bob", &["dev", "system:authenticated"]);
        assert!(p.allows(&dev, &res("watch", "", "pods", Some("app"), "")), "through a group");
    }

    #[test]
    fn resource_names_aggregation_and_non_resource_urls() {
        let objs = objects();
        let p = policy(&objs);
        let alice = user("alice", &["system:authenticated"]);
        assert!(p.allows(&alice, &res("get", "", "configmaps", Some("web"), "settings")));
        assert!(!p.allows(&alice, &res("get", "", "configmaps", Some("web"), "other")));
        assert!(
            !p.allows(&alice, &res("list", "", "configmaps", Some("web"), "")),
            "names never match a list"
        );
        assert!(
            !p.allows(&alice, &res("get", "", "configmaps", Some("app"), "settings")),
            "bound in web only"
        );
        // `monitoring` aggregates ops-nodes and ops-metrics, and through it `deep`.
        assert!(p.allows(&alice, &res("list", "", "nodes", None, "")));
        assert!(p.allows(
            &alice,
            &Request::NonResource {
                verb: "get",
                path: "/metrics"
            }
        ));
        assert!(p.allows(
            &alice,
            &Request::NonResource {
                verb: "get",
                path: "/debug/pprof"
            }
        ));
        assert!(!p.allows(
            &alice,
            &Request::NonResource {
                verb: "get",
                path: "/healthz"
            }
        ));
        assert!(!p.allows(
            &alice,
            &Request::NonResource {
                verb: "post",
                path: "/metrics"
            }
        ));
        assert!(
            p.allows(&alice, &res("get", "apps", "deployments/scale", Some("x"), "d")),
            "*/scale"
        );
        assert!(!p.allows(&alice, &res("get", "apps", "deployments", Some("x"), "d")));
        assert_eq!(
            p.dangling,
            vec![Dangling {
                binding: "RoleBinding web/ghost".into(),
                role: "Role web/missing".into()
            }]
        );
        let nobody = user("mallory", &["system:authenticated"]);
        assert!(!p.allows(&nobody, &res("get", "", "pods", Some("app"), "x")), "deny by default");
        assert!(p.allows(&user("root", &[MASTERS]), &res("delete", "", "secrets", None, "")));
    }

    #[test]
    fn aggregation_cycles_end() {
        let objs = vec![
            json!({"kind": "ClusterRole", "metadata": {"name": "a", "labels": {"x": "1"}}, "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"y": "1"}}]},
                   "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]}),
            json!({"kind": "ClusterRole", "metadata": {"name": "b", "labels": {"y": "1"}}, "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"x": "1"}}]},
                   "rules": [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]}]}),
            json!({"kind": "ClusterRoleBinding", "metadata": {"name": "b"}, "roleRef": {"kind": "ClusterRole", "name": "a"}, "subjects": [{"kind": "User", "name": "u"}]}),
        ];
        let p = policy(&objs);
        let u = user("u", &[]);
        assert!(p.allows(&u, &res("get", "", "nodes", None, "n")));
        assert!(p.allows(&u, &res("get", "", "pods", Some("a"), "p")));
    }

    #[test]
    fn rules_review_and_escalation() {
        let objs = objects();
        let p = policy(&objs);
        let bot = user("system:serviceaccount:app:bot", &["system:authenticated"]);
        let (resource, non_resource) = p.rules(&bot, "app");
        assert_eq!(resource.len(), 1);
        assert_eq!(resource[0].resources, vec!["pods", "pods/log"]);
        assert!(non_resource.is_empty());
        let (resource, _) = p.rules(&bot, "web");
        assert!(resource.is_empty());
        let alice = user("alice", &["system:authenticated"]);
        assert!(p.escalation(&alice, &bot, "app").unwrap().contains("get pods in namespace \"app\""));
        let dev = user("bob", &["dev"]);
        assert_eq!(p.escalation(&dev, &bot, "app"), None, "bob holds what bot holds");
        assert_eq!(p.escalation(&user("root", &[MASTERS]), &alice, "web"), None);
    }
}
