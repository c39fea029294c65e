//! Label and field selectors as the Kubernetes API accepts them: `app=web,tier!=db`,
//! `env in (prod,staging)`, `!canary`, and for fields `spec.nodeName=n1,status.phase!=Failed`.

use serde_json::Value;

use super::status::ApiError;

#[derive(Clone, Debug, PartialEq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

impl Requirement {
    /// Keys must be qualified names and values label values, as the API server requires: a
    /// selector that can match nothing by its syntax is a 400, not an empty list.
    fn check(&self) -> Result<(), ApiError> {
        let (key, values): (&str, &[String]) = match self {
            Requirement::Equals(k, v) | Requirement::NotEquals(k, v) => (k, std::slice::from_ref(v)),
            Requirement::In(k, vs) | Requirement::NotIn(k, vs) => (k, vs),
            Requirement::Exists(k) | Requirement::DoesNotExist(k) => (k, &[]),
        };
        if let Some(e) = capstan_api::names::qualified_name(key) {
            return Err(ApiError::bad_request(format!(
                "unable to parse requirement: invalid label key {key:?}: {e}"
            )));
        }
        if matches!(self, Requirement::In(..) | Requirement::NotIn(..)) && values.is_empty() {
            return Err(ApiError::bad_request(format!(
                "unable to parse requirement: for 'in', 'notin' operators, values set can't be empty (key {key:?})"
            )));
        }
        for v in values {
            if let Some(e) = capstan_api::names::label_value(v) {
                return Err(ApiError::bad_request(format!(
                    "unable to parse requirement: invalid label value: {e}"
                )));
            }
        }
        Ok(())
    }
}

/// A parsed label selector; the empty selector selects everything.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LabelSelector(Vec<Requirement>);

/// Splits on commas that are not inside parentheses.
fn split_terms(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out.into_iter().map(str::trim).filter(|t| !t.is_empty()).collect()
}

fn values(list: &str) -> Result<Vec<String>, ApiError> {
    let inner = list
        .trim()
        .strip_prefix('(')
        .and_then(|l| l.strip_suffix(')'))
        .ok_or_else(|| ApiError::bad_request(format!("unable to parse requirement: expected a parenthesised list, got {list:?}")))?;
    Ok(inner.split(',').map(|v| v.trim().to_owned()).filter(|v| !v.is_empty()).collect())
}

impl LabelSelector {
    pub fn parse(s: &str) -> Result<LabelSelector, ApiError> {
        let mut reqs = Vec::new();
        for term in split_terms(s) {
            let req = if let Some(key) = term.strip_prefix('!') {
                Requirement::DoesNotExist(key.trim().to_owned())
            } else if let Some((k, v)) = term.split_once("!=") {
                Requirement::NotEquals(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = term.split_once("==") {
                Requirement::Equals(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = term.split_once('=') {
                Requirement::Equals(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = term.split_once(" notin ") {
                Requirement::NotIn(k.trim().into(), values(v)?)
            } else if let Some((k, v)) = term.split_once(" in ") {
                Requirement::In(k.trim().into(), values(v)?)
            } else if term.chars().all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c)) {
                Requirement::Exists(term.to_owned())
            } else {
                return Err(ApiError::bad_request(format!("unable to parse requirement: {term:?}")));
            };
            req.check()?;
            reqs.push(req);
        }
        Ok(LabelSelector(reqs))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether an object with these labels (`metadata.labels`) is selected.
    pub fn matches(&self, labels: Option<&Value>) -> bool {
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.0.iter().all(|r| match r {
            Requirement::Equals(k, v) => get(k) == Some(v.as_str()),
            Requirement::NotEquals(k, v) => get(k) != Some(v.as_str()),
            Requirement::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Requirement::NotIn(k, vs) => !get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::DoesNotExist(k) => get(k).is_none(),
        })
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
