//! The query selectors of list and watch requests: label selectors (parsed and matched by
//! capstan_api::selector) and field selectors (`spec.nodeName=n1,status.phase!=Failed`).

use capstan_api::selector::{Selector, split_terms};
use serde_json::Value;

use super::status::ApiError;

/// A parsed label selector (capstan_api's, with its parse errors as 400s); the empty selector
/// selects everything.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LabelSelector(Selector);

impl LabelSelector {
    pub fn parse(s: &str) -> Result<LabelSelector, ApiError> {
        Selector::parse(s)
            .map(LabelSelector)
            .map_err(|e| ApiError::bad_request(e.to_string()))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether an object with these labels (`metadata.labels`) is selected.
    pub fn matches(&self, labels: Option<&Value>) -> bool {
        self.0.matches_json(labels)
    }
}

/// A parsed field selector: each term compares the value at a dotted path with a string.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FieldSelector(Vec<(String, bool, String)>);

impl FieldSelector {
    pub fn parse(s: &str) -> Result<FieldSelector, ApiError> {
        let mut terms = Vec::new();
        for term in split_terms(s) {
            let (path, equal, value) = if let Some((k, v)) = term.split_once("!=") {
                (k, false, v)
            } else if let Some((k, v)) = term.split_once("==") {
                (k, true, v)
            } else if let Some((k, v)) = term.split_once('=') {
                (k, true, v)
            } else {
                return Err(ApiError::bad_request(format!("invalid field selector: {term:?}")));
            };
            terms.push((path.trim().to_owned(), equal, value.trim().to_owned()));
        }
        Ok(FieldSelector(terms))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The value a term with `path` requires to be equal, if there is one (for indexes).
    pub fn required(&self, path: &str) -> Option<&str> {
        self.0.iter().find(|(p, eq, _)| p == path && *eq).map(|(_, _, v)| v.as_str())
    }

    pub fn matches(&self, object: &Value) -> bool {
        self.0.iter().all(|(path, equal, value)| {
            let mut v = object;
            for part in path.split('.') {
                v = v.get(part).unwrap_or(&Value::Null);
            }
            let actual = match v {
                Value::String(s) => s.clone(),
                Value::Null => String::new(),
                other => other.to_string(),
            };
            (actual == *value) == *equal
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn label_selectors() {
        let labels = json!({"app": "web", "tier": "front", "env": "prod"});
        let m = |s: &str| LabelSelector::parse(s).unwrap().matches(Some(&labels));
        assert!(m("app=web"));
        assert!(m("app==web,tier!=db"));
        assert!(m("env in (prod, staging),!canary"));
        assert!(!m("env notin (prod)"));
        assert!(m("tier"));
        assert!(!m("app=api"));
        assert!(m(""));
        assert!(LabelSelector::parse("a b c").is_err());
        for bad in [
            "app=we b",
            "a=b=c",
            "bad key!=x",
            "app in ()",
            "x=-leading",
            &format!("k={}", "v".repeat(64)),
        ] {
            assert!(LabelSelector::parse(bad).is_err(), "{bad}");
        }
        assert!(LabelSelector::parse("app.kubernetes.io/name=web,tier in (a,b)").is_ok());
    }

    #[test]
    fn field_selectors() {
        let pod = json!({"metadata": {"name": "p", "namespace": "ns"}, "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}});
        let m = |s: &str| FieldSelector::parse(s).unwrap().matches(&pod);
        assert!(m("spec.nodeName=n1,status.phase!=Succeeded,status.phase!=Failed"));
        assert!(m("metadata.name=p"));
        assert!(!m("metadata.namespace=other"));
        assert!(m("spec.schedulerName="));
        assert_eq!(
            FieldSelector::parse("spec.nodeName=n1").unwrap().required("spec.nodeName"),
            Some("n1")
        );
    }
}
