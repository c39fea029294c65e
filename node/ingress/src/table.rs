//! The routing table every listener reads, whatever declared it (Ingresses, HTTPRoutes): per
//! port, rules by host — an exact host before the longest matching wildcard before rules for any
//! host — and within a host the first matching rule in precedence order (Exact path, then the
//! longest prefix, then method, header and query matches, then the oldest object), each rule an
//! action: weighted backends, header edits, a redirect or a rewrite.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddrV4;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// A Service port behind a rule and its ready endpoints, chosen in turn.
#[derive(Debug)]
pub struct Target {
    /// `namespace/service:port`, for logs.
    pub name: String,
    /// The endpoints (pod address and target port), or why there are none.
    pub endpoints: Result<Vec<SocketAddrV4>, String>,
    next: AtomicUsize,
}

impl Target {
    pub fn new(name: String, endpoints: Result<Vec<SocketAddrV4>, String>) -> Target {
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

/// How a rule's path matches.
#[derive(Clone, Debug)]
pub enum PathMatch {
    Exact(String),
    /// On whole path elements; the prefix without its trailing slash (`/` is the empty prefix).
    Prefix(String),
    Regex(regex::Regex),
}

impl PathMatch {
    /// A Prefix match of `path` as written.
    pub fn prefix(path: &str) -> PathMatch {
        PathMatch::Prefix(path.trim_end_matches('/').to_owned())
    }

    fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Exact(p) => path == p,
            PathMatch::Prefix(p) => {
                p.is_empty()
                    || path
                        .strip_prefix(p.as_str())
                        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            }
            PathMatch::Regex(r) => r.is_match(path),
        }
    }

    /// Precedence: Exact first, then regular expressions, then prefixes (each longest first).
    fn rank(&self) -> (u8, std::cmp::Reverse<usize>) {
        match self {
            PathMatch::Exact(p) => (0, std::cmp::Reverse(p.len())),
            PathMatch::Regex(r) => (1, std::cmp::Reverse(r.as_str().len())),
            PathMatch::Prefix(p) => (2, std::cmp::Reverse(p.len())),
        }
    }
}

/// A header (name in lower case) or query parameter to match.
#[derive(Clone, Debug)]
pub enum ValueMatch {
    Exact(String, String),
    Regex(String, regex::Regex),
}

impl ValueMatch {
    fn matches(&self, value: impl Fn(&str) -> Option<String>) -> bool {
        match self {
            ValueMatch::Exact(name, want) => value(name).is_some_and(|v| v == *want),
            ValueMatch::Regex(name, r) => value(name).is_some_and(|v| r.is_match(&v)),
        }
    }
}

/// What a rule matches besides the host.
#[derive(Clone, Debug)]
pub struct Matcher {
    pub path: PathMatch,
    pub method: Option<String>,
    pub headers: Vec<ValueMatch>,
    pub query: Vec<ValueMatch>,
}

impl Matcher {
    pub fn path(path: PathMatch) -> Matcher {
        Matcher {
            path,
            method: None,
            headers: Vec::new(),
            query: Vec::new(),
        }
    }
}

/// A request as the matchers see it.
#[derive(Debug)]
pub struct Request<'a> {
    pub host: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    pub method: &'a str,
    pub headers: &'a dyn Headers,
}

impl std::fmt::Debug for dyn Headers + '_ {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Headers")
    }
}

/// A request's headers as the matchers read them, whether hyper parsed them or the fast path.
pub trait Headers {
    /// The values of the header `name` (any case), joined by commas; `None` when absent.
    fn joined(&self, name: &str) -> Option<String>;
}

impl Headers for hyper::HeaderMap {
    fn joined(&self, name: &str) -> Option<String> {
        let values: Vec<&str> = self.get_all(name).iter().filter_map(|v| v.to_str().ok()).collect();
        (!values.is_empty()).then(|| values.join(","))
    }
}

impl Request<'_> {
    fn header(&self, name: &str) -> Option<String> {
        self.headers.joined(name)
    }

    fn query_param(&self, name: &str) -> Option<String> {
        self.query.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k == name).then(|| v.to_owned())
        })
    }
}

/// Header edits (RequestHeaderModifier, ResponseHeaderModifier).
#[derive(Clone, Debug, Default)]
pub struct HeaderEdit {
    pub set: Vec<(String, String)>,
    pub add: Vec<(String, String)>,
    pub remove: Vec<String>,
}

impl HeaderEdit {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }

    pub fn apply(&self, headers: &mut hyper::HeaderMap) {
        use hyper::header::{HeaderName, HeaderValue};
        for (name, value) in &self.set {
            if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value)) {
                headers.insert(n, v);
            }
        }
        for (name, value) in &self.add {
            if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value)) {
                headers.append(n, v);
            }
        }
        for name in &self.remove {
            headers.remove(name.as_str());
        }
    }
}

/// How a redirect or rewrite changes the path.
#[derive(Clone, Debug)]
pub enum PathChange {
    Full(String),
    /// The part the rule's prefix matched, replaced.
    Prefix(String),
}

impl PathChange {
    /// The new path for `path` matched by `matched`.
    pub fn apply(&self, path: &str, matched: &PathMatch) -> String {
        match self {
            PathChange::Full(p) => p.clone(),
            PathChange::Prefix(replacement) => {
                let rest = match matched {
                    PathMatch::Prefix(p) => path.get(p.len()..).unwrap_or_default(),
                    _ => path,
                };
                let joined = format!("{}/{}", replacement.trim_end_matches('/'), rest.trim_start_matches('/'));
                match joined.trim_end_matches('/') {
                    "" => "/".to_owned(),
                    p if rest.is_empty() && !replacement.ends_with('/') => p.to_owned(),
                    _ => joined,
                }
            }
        }
    }
}

/// A RequestRedirect: the parts of the URL it replaces.
#[derive(Clone, Debug, Default)]
pub struct Redirect {
    pub scheme: Option<String>,
    pub hostname: Option<String>,
    pub path: Option<PathChange>,
    pub port: Option<u16>,
    pub status: u16,
}

/// A URLRewrite.
#[derive(Clone, Debug, Default)]
pub struct Rewrite {
    pub hostname: Option<String>,
    pub path: Option<PathChange>,
}

/// One backend of a rule with its share of the traffic.
#[derive(Debug)]
pub struct Weighted {
    pub target: Arc<Target>,
    pub weight: u32,
    pub request_headers: HeaderEdit,
    pub response_headers: HeaderEdit,
    /// Mirrors of the requests sent to this backend (its own RequestMirror filters).
    pub mirrors: Vec<Mirror>,
}

/// A copy of a rule's requests sent to another backend as well, its answer ignored (the
/// Gateway API's RequestMirror): all of them, or `percent` of every hundred.
#[derive(Debug)]
pub struct Mirror {
    pub target: Arc<Target>,
    pub percent: u32,
    seen: AtomicUsize,
}

impl Mirror {
    pub fn new(target: Arc<Target>, percent: u32) -> Mirror {
        Mirror {
            target,
            percent: percent.min(100),
            seen: AtomicUsize::new(0),
        }
    }

    /// Whether this request is copied: `percent` of every hundred, spread evenly (the n-th is
    /// copied when it brings the count copied, n × percent / 100 rounded down, one higher).
    pub fn wanted(&self) -> bool {
        let n = self.seen.fetch_add(1, Ordering::Relaxed) % 100;
        let p = self.percent as usize;
        (n + 1) * p / 100 > n * p / 100
    }
}

/// What a matched rule does.
#[derive(Debug, Default)]
pub struct Action {
    pub backends: Vec<Weighted>,
    pub mirrors: Vec<Mirror>,
    pub request_headers: HeaderEdit,
    pub response_headers: HeaderEdit,
    pub redirect: Option<Redirect>,
    pub rewrite: Option<Rewrite>,
    /// How long a backend may take to answer (HTTPRoute `timeouts`; `None`: the listener's
    /// limit; zero: none).
    pub timeout: Option<std::time::Duration>,
    /// Smooth weighted round robin (nginx's): each backend's current weight.
    current: Mutex<Vec<i64>>,
}

impl Action {
    pub fn forward(backends: Vec<Weighted>) -> Action {
        Action {
            backends,
            ..Action::default()
        }
    }

    /// Whether requests go to the backends as they came: no redirect, rewrite, mirror or header
    /// edit (the fast path relays only those).
    pub fn is_plain(&self) -> bool {
        let edits = |e: &HeaderEdit| e.is_empty();
        self.redirect.is_none()
            && self.rewrite.is_none()
            && self.mirrors.is_empty()
            && edits(&self.request_headers)
            && edits(&self.response_headers)
            && self
                .backends
                .iter()
                .all(|b| b.mirrors.is_empty() && edits(&b.request_headers) && edits(&b.response_headers))
    }

    /// The backend for the next request: each in proportion to its weight, interleaved; `None`
    /// when every weight is 0.
    pub fn pick(&self) -> Option<&Weighted> {
        let total: i64 = self.backends.iter().map(|b| i64::from(b.weight)).sum();
        if total == 0 {
            return None;
        }
        if self.backends.len() == 1 {
            return self.backends.first();
        }
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        current.resize(self.backends.len(), 0);
        let mut best = 0;
        for (i, b) in self.backends.iter().enumerate() {
            current[i] += i64::from(b.weight);
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        self.backends.get(best)
    }
}

/// One rule: what it matches, what it does, and who declared it.
#[derive(Clone, Debug)]
pub struct Rule {
    pub matcher: Matcher,
    pub action: Arc<Action>,
    /// `Ingress ns/name` or `HTTPRoute ns/name`.
    pub source: String,
    /// Among equals the oldest object wins, then the first by name, then the first rule.
    pub age: (Option<String>, String, usize),
}

impl Rule {
    fn matches(&self, r: &Request<'_>) -> bool {
        let m = &self.matcher;
        m.path.matches(r.path)
            && m.method.as_deref().is_none_or(|want| want.eq_ignore_ascii_case(r.method))
            && m.headers.iter().all(|h| h.matches(|n| r.header(n)))
            && m.query.iter().all(|q| q.matches(|n| r.query_param(n)))
    }

    fn precedence(&self) -> impl Ord + '_ {
        let m = &self.matcher;
        (
            m.path.rank(),
            m.method.is_none(),
            std::cmp::Reverse(m.headers.len()),
            std::cmp::Reverse(m.query.len()),
            &self.age,
        )
    }
}

/// How a wildcard host matches: one label (Ingress) or any number (Gateway API).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wildcard {
    OneLabel,
    AnyLabels,
}

/// The rules and certificates of one port.
#[derive(Debug, Default)]
pub struct Table {
    hosts: HashMap<String, Vec<Rule>>,
    /// By the suffix after `*.`, the longest first.
    wildcards: Vec<(String, Wildcard, Vec<Rule>)>,
    any_host: Vec<Rule>,
    /// Certificates by host (exact, or `*.suffix`, or "" for any); the first claim wins.
    pub certificates: BTreeMap<String, SecretRef>,
}

/// A TLS Secret a host's certificate is read from.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SecretRef {
    pub namespace: String,
    pub name: String,
}

/// A Host header's or server name's host: lower case, without the port or a final dot.
pub fn normal_host(host: &str) -> String {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(v6),
        None => host.split(':').next().unwrap_or(host),
    };
    name.trim_end_matches('.').to_ascii_lowercase()
}

impl Table {
    /// Adds a rule for `host` ("" for any host; `*.suffix` a wildcard of the given kind).
    pub fn add(&mut self, host: &str, wildcard: Wildcard, rule: Rule) {
        let host = normal_host(host);
        if host.is_empty() {
            self.any_host.push(rule);
        } else if let Some(suffix) = host.strip_prefix("*.") {
            match self.wildcards.iter_mut().find(|(s, w, _)| s == suffix && *w == wildcard) {
                Some((_, _, rules)) => rules.push(rule),
                None => self.wildcards.push((suffix.to_owned(), wildcard, vec![rule])),
            }
        } else {
            self.hosts.entry(host).or_default().push(rule);
        }
    }

    /// Puts every host's rules, and the wildcards, in precedence order.
    pub fn finish(&mut self) {
        let order = |rules: &mut Vec<Rule>| rules.sort_by(|a, b| a.precedence().cmp(&b.precedence()));
        self.hosts.values_mut().for_each(order);
        self.wildcards.iter_mut().for_each(|(_, _, r)| order(r));
        order(&mut self.any_host);
        self.wildcards.sort_by_key(|w| std::cmp::Reverse(w.0.len()));
    }

    /// The rule for a request: the rules of the most specific host entry that matches, the first
    /// of them that matches the rest.
    pub fn route(&self, r: &Request<'_>) -> Option<&Rule> {
        // Most Host headers are normal already: no allocation for those.
        let bare = r.host.split(':').next().unwrap_or_default();
        let host: std::borrow::Cow<'_, str> =
            if r.host.starts_with('[') || bare.ends_with('.') || bare.bytes().any(|b| b.is_ascii_uppercase()) {
                normal_host(r.host).into()
            } else {
                bare.into()
            };
        let host = host.as_ref();
        let rules = self
            .hosts
            .get(host)
            .or_else(|| {
                self.wildcards.iter().find_map(|(suffix, kind, rules)| {
                    let label = host.strip_suffix(suffix.as_str())?.strip_suffix('.')?;
                    let fits = !label.is_empty() && (*kind == Wildcard::AnyLabels || !label.contains('.'));
                    fits.then_some(rules)
                })
            })
            .unwrap_or(&self.any_host);
        rules.iter().find(|rule| rule.matches(r))
    }

    /// The TLS Secret for a server name (SNI): exact, then the wildcard one label up (what a
    /// wildcard certificate covers), then the port's default.
    pub fn certificate(&self, server_name: &str) -> Option<&SecretRef> {
        let host = normal_host(server_name);
        self.certificates
            .get(&host)
            .or_else(|| {
                let (_, suffix) = host.split_once('.')?;
                self.certificates.get(&format!("*.{suffix}"))
            })
            .or_else(|| self.certificates.get(""))
    }
}

/// Every port's table: what the listeners serve.
#[derive(Debug, Default)]
pub struct Tables {
    pub ports: BTreeMap<u16, Port>,
}

/// One port: whether it terminates TLS, and its table.
#[derive(Debug, Default)]
pub struct Port {
    pub tls: bool,
    pub table: Table,
}

impl Tables {
    pub fn port(&mut self, port: u16, tls: bool) -> &mut Table {
        let p = self.ports.entry(port).or_default();
        p.tls |= tls;
        &mut p.table
    }

    pub fn finish(&mut self) {
        self.ports.values_mut().for_each(|p| p.table.finish());
    }

    /// Every TLS Secret any port names.
    pub fn secrets(&self) -> Vec<SecretRef> {
        let mut all: Vec<SecretRef> = self.ports.values().flat_map(|p| p.table.certificates.values().cloned()).collect();
        all.sort();
        all.dedup();
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mirror_copies_its_percentage_spread_evenly() {
        let copied = |percent: u32, requests: usize| {
            let m = Mirror::new(Arc::new(Target::new("m".into(), Ok(vec![]))), percent);
            (0..requests).map(|_| m.wanted()).collect::<Vec<bool>>()
        };
        assert_eq!(copied(50, 4), [false, true, false, true]);
        assert!(copied(100, 7).iter().all(|c| *c));
        assert!(copied(0, 7).iter().all(|c| !*c));
        assert_eq!(copied(10, 100).iter().filter(|c| **c).count(), 10);
        assert_eq!(copied(33, 200).iter().filter(|c| **c).count(), 66);
    }

    #[test]
    fn weights_are_kept_and_interleaved() {
        let t = |n: &str| Arc::new(Target::new(n.into(), Ok(Vec::new())));
        let w = |n: &str, weight| Weighted {
            target: t(n),
            weight,
            request_headers: HeaderEdit::default(),
            response_headers: HeaderEdit::default(),
            mirrors: Vec::new(),
        };
        let a = Action::forward(vec![w("a", 90), w("b", 10)]);
        let picks: Vec<String> = (0..1000).map(|_| a.pick().unwrap().target.name.clone()).collect();
        assert_eq!(picks.iter().filter(|p| *p == "b").count(), 100);
        // Never more than nine a's in a row: interleaved.
        assert!(picks.windows(10).all(|w| w.iter().any(|p| p == "b")));
        assert!(Action::forward(vec![w("a", 0)]).pick().is_none());
    }

    #[test]
    fn prefix_rewrites_keep_the_rest_of_the_path() {
        let m = PathMatch::prefix("/api/");
        assert_eq!(PathChange::Prefix("/v2".into()).apply("/api/users", &m), "/v2/users");
        assert_eq!(PathChange::Prefix("/".into()).apply("/api/users", &m), "/users");
        assert_eq!(PathChange::Prefix("/v2".into()).apply("/api", &m), "/v2");
        assert_eq!(PathChange::Full("/x".into()).apply("/api/users", &m), "/x");
    }
}
