//! Label selectors as Kubernetes reads them, in one place: the structured form objects carry
//! (`matchLabels`, `matchExpressions`, and node affinity's `Gt`/`Lt`), the string form of API
//! queries (`app=web,tier!=db`, `env in (a,b)`, `!canary`), and matching against labels.

use std::collections::BTreeMap;

use serde_json::Value;

/// How a requirement compares a label's value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
    /// The value, read as an integer, is greater than the one given (node affinity only).
    Gt,
    /// The value, read as an integer, is less than the one given (node affinity only).
    Lt,
    /// An operator Kubernetes does not know: validation refuses it, and it matches nothing.
    Unknown(String),
}

impl Operator {
    pub fn parse(s: &str) -> Operator {
        match s {
            "In" => Operator::In,
            "NotIn" => Operator::NotIn,
            "Exists" => Operator::Exists,
            "DoesNotExist" => Operator::DoesNotExist,
            "Gt" => Operator::Gt,
            "Lt" => Operator::Lt,
            other => Operator::Unknown(other.to_owned()),
        }
    }

    fn name(&self) -> &str {
        match self {
            Operator::In => "In",
            Operator::NotIn => "NotIn",
            Operator::Exists => "Exists",
            Operator::DoesNotExist => "DoesNotExist",
            Operator::Gt => "Gt",
            Operator::Lt => "Lt",
            Operator::Unknown(s) => s,
        }
    }
}

/// One requirement: `key` compared by `operator` with `values`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Requirement {
    pub key: String,
    pub operator: Operator,
    pub values: Vec<String>,
}

impl Requirement {
    /// Whether a label value (`None`: the label is not there) meets the requirement.
    pub fn admits(&self, value: Option<&str>) -> bool {
        let listed = || value.is_some_and(|v| self.values.iter().any(|x| x == v));
        let compare = |ord: std::cmp::Ordering| {
            let have = value.and_then(|v| v.parse::<i64>().ok());
            let given = self.values.first().and_then(|x| x.parse::<i64>().ok());
            have.zip(given).is_some_and(|(a, b)| a.cmp(&b) == ord)
        };
        match self.operator {
            Operator::In => listed(),
            Operator::NotIn => !listed(),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
            Operator::Gt => compare(std::cmp::Ordering::Greater),
            Operator::Lt => compare(std::cmp::Ordering::Less),
            Operator::Unknown(_) => false,
        }
    }
}

/// A string-form selector that does not parse, in the API server's words.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unable to parse requirement: {0}")]
pub struct SelectorError(String);

/// A label selector: all of its requirements hold. The empty selector selects everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selector(pub Vec<Requirement>);

impl Selector {
    /// A `LabelSelector` object (`matchLabels` become `In` requirements), or the
    /// `matchExpressions` list of a node selector term.
    pub fn from_json(v: &Value) -> Selector {
        let mut reqs = Vec::new();
        if let Some(ml) = v["matchLabels"].as_object() {
            for (k, val) in ml {
                reqs.push(Requirement {
                    key: k.clone(),
                    operator: Operator::In,
                    values: vec![val.as_str().unwrap_or_default().to_owned()],
                });
            }
        }
        reqs.extend(Selector::from_expressions(&v["matchExpressions"]).0);
        Selector(reqs)
    }

    /// A list of `{key, operator, values}` expressions.
    pub fn from_expressions(v: &Value) -> Selector {
        Selector(
            v.as_array()
                .into_iter()
                .flatten()
                .map(|e| Requirement {
                    key: e["key"].as_str().unwrap_or_default().to_owned(),
                    operator: Operator::parse(e["operator"].as_str().unwrap_or_default()),
                    values: e["values"]
                        .as_array()
                        .map(|vs| vs.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
                        .unwrap_or_default(),
                })
                .collect(),
        )
    }

    /// The string form of `?labelSelector=` and `kubectl -l`. Keys must be qualified names and
    /// values label values, as the API server requires: a selector that can match nothing by
    /// its syntax is an error, not an empty list.
    pub fn parse(s: &str) -> Result<Selector, SelectorError> {
        let mut reqs = Vec::new();
        let req = |key: &str, operator, values| Requirement {
            key: key.trim().to_owned(),
            operator,
            values,
        };
        for term in split_terms(s) {
            let r = if let Some(key) = term.strip_prefix('!') {
                req(key, Operator::DoesNotExist, vec![])
            } else if let Some((k, v)) = term.split_once("!=") {
                req(k, Operator::NotIn, vec![v.trim().to_owned()])
            } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                req(k, Operator::In, vec![v.trim().to_owned()])
            } else if let Some((k, v)) = term.split_once(" notin ") {
                req(k, Operator::NotIn, values(v)?)
            } else if let Some((k, v)) = term.split_once(" in ") {
                req(k, Operator::In, values(v)?)
            } else if term.chars().all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c)) {
                req(term, Operator::Exists, vec![])
            } else {
                return Err(SelectorError(format!("{term:?}")));
            };
            check(&r)?;
            reqs.push(r);
        }
        Ok(Selector(reqs))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether labels looked up by `get` are selected.
    pub fn matches_with<'a>(&self, get: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.0.iter().all(|r| r.admits(get(&r.key)))
    }

    /// Whether a label map is selected.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.matches_with(|k| labels.get(k).map(String::as_str))
    }

    /// Whether an object's `metadata.labels` (JSON, perhaps absent) is selected.
    pub fn matches_json(&self, labels: Option<&Value>) -> bool {
        self.matches_with(|k| labels.and_then(|l| l.get(k)).and_then(Value::as_str))
    }

    /// A canonical text, to key caches by selector.
    pub fn signature(&self) -> String {
        let mut parts: Vec<String> = self
            .0
            .iter()
            .map(|r| format!("{} {} {:?}", r.key, r.operator.name(), r.values))
            .collect();
        parts.sort();
        parts.join(";")
    }
}

/// Whether a workload's `LabelSelector` selects an object. A selector with no terms selects
/// nothing here: a controller must never adopt every object of its namespace.
pub fn workload_selects(selector: &Value, object: &Value) -> bool {
    let s = Selector::from_json(selector);
    !s.is_empty() && s.matches_json(object.pointer("/metadata/labels"))
}

fn check(r: &Requirement) -> Result<(), SelectorError> {
    let key = &r.key;
    if let Some(e) = crate::names::qualified_name(key) {
        return Err(SelectorError(format!("invalid label key {key:?}: {e}")));
    }
    if matches!(r.operator, Operator::In | Operator::NotIn) && r.values.is_empty() {
        return Err(SelectorError(format!(
            "for 'in', 'notin' operators, values set can't be empty (key {key:?})"
        )));
    }
    for v in &r.values {
        if let Some(e) = crate::names::label_value(v) {
            return Err(SelectorError(format!("invalid label value: {e}")));
        }
    }
    Ok(())
}

/// Splits on commas that are not inside parentheses.
pub fn split_terms(s: &str) -> Vec<&str> {
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

fn values(list: &str) -> Result<Vec<String>, SelectorError> {
    let inner = list
        .trim()
        .strip_prefix('(')
        .and_then(|l| l.strip_suffix(')'))
        .ok_or_else(|| SelectorError(format!("expected a parenthesised list, got {list:?}")))?;
    Ok(inner.split(',').map(|v| v.trim().to_owned()).filter(|v| !v.is_empty()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn the_string_form_reads_like_kubectl() {
        let s = Selector::parse("app in (web, api),tier!=db,!canary,zone").unwrap();
        assert!(s.matches(&labels(&[("app", "web"), ("zone", "a")])));
        assert!(!s.matches(&labels(&[("app", "web"), ("zone", "a"), ("tier", "db")])));
        assert!(!s.matches(&labels(&[("app", "web"), ("zone", "a"), ("canary", "")])));
        assert!(!s.matches(&labels(&[("app", "web")])), "zone must exist");
        assert!(Selector::parse("").unwrap().matches(&labels(&[])), "empty selects everything");
        assert!(Selector::parse("app==web").unwrap().matches(&labels(&[("app", "web")])));
        for bad in ["app in ()", "a b", "-x=y", "app=not a value", "app in web"] {
            assert!(Selector::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            Selector::parse("app in ()").unwrap_err().to_string(),
            "unable to parse requirement: for 'in', 'notin' operators, values set can't be empty (key \"app\")"
        );
    }

    #[test]
    fn the_structured_form_and_node_affinity_operators() {
        let s = Selector::from_json(&json!({"matchLabels": {"app": "web"},
            "matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["db"]}]}));
        assert!(s.matches_json(Some(&json!({"app": "web"}))));
        assert!(!s.matches_json(Some(&json!({"app": "web", "tier": "db"}))));
        assert!(!s.matches_json(None));
        let gt = Selector::from_expressions(&json!([{"key": "cores", "operator": "Gt", "values": ["4"]}]));
        assert!(gt.matches(&labels(&[("cores", "8")])));
        assert!(!gt.matches(&labels(&[("cores", "4")])));
        assert!(!gt.matches(&labels(&[("cores", "many")])));
        let odd = Selector::from_expressions(&json!([{"key": "a", "operator": "Sometimes"}]));
        assert!(!odd.matches(&labels(&[("a", "")])), "an unknown operator matches nothing");
        assert!(!workload_selects(&json!({}), &json!({"metadata": {"labels": {"app": "x"}}})));
        assert!(workload_selects(
            &json!({"matchLabels": {"app": "x"}}),
            &json!({"metadata": {"labels": {"app": "x"}}})
        ));
    }

    proptest! {
        // The string form and the structured form of the same equality selector agree.
        #[test]
        fn both_forms_agree(key in "[a-z]{1,8}", value in "[a-z0-9]{1,8}", other in "[a-z0-9]{1,8}") {
            let parsed = Selector::parse(&format!("{key}={value}")).unwrap();
            let structured = Selector::from_json(&json!({"matchLabels": {key.clone(): value.clone()}}));
            for v in [&value, &other] {
                let l = labels(&[(&key, v)]);
                prop_assert_eq!(parsed.matches(&l), structured.matches(&l));
            }
            prop_assert_eq!(parsed.signature(), structured.signature());
        }
    }
}
