//! Name and label syntax checks, with the rules and messages of Kubernetes' apimachinery
//! validation (DNS-1123 subdomains and labels, DNS-1035 labels, qualified names, label values).

/// Which syntax a kind's object names must follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameRule {
    /// Lower-case alphanumerics, '-' and '.', at most 253 characters (most kinds).
    Dns1123Subdomain,
    /// Lower-case alphanumerics and '-', at most 63 characters (Namespaces).
    Dns1123Label,
    /// A DNS-1123 label that starts with a letter (Services).
    Dns1035Label,
}

impl NameRule {
    /// The rule Kubernetes applies to names of `kind`.
    pub fn for_kind(kind: &str) -> NameRule {
        match kind {
            "Namespace" => NameRule::Dns1123Label,
            "Service" => NameRule::Dns1035Label,
            _ => NameRule::Dns1123Subdomain,
        }
    }

    /// `None` when `name` is valid, else the reason.
    pub fn check(self, name: &str) -> Option<String> {
        match self {
            NameRule::Dns1123Subdomain => dns1123_subdomain(name),
            NameRule::Dns1123Label => dns1123_label(name),
            NameRule::Dns1035Label => dns1035_label(name),
        }
    }
}

fn is_lower_alnum(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

/// Checks a DNS-1123 label: `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters.
pub fn dns1123_label(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("must not be empty".into());
    }
    if name.len() > 63 {
        return Some(format!("must be no more than 63 characters (is {})", name.len()));
    }
    let ok = name.chars().all(|c| is_lower_alnum(c) || c == '-') && name.starts_with(is_lower_alnum) && name.ends_with(is_lower_alnum);
    (!ok).then(|| {
        format!(
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or \
             '-', and must start and end with an alphanumeric character (e.g. 'my-name', or \
             '123-abc'), got {name:?}"
        )
    })
}

/// Checks a DNS-1035 label: a DNS-1123 label whose first character is a letter.
pub fn dns1035_label(name: &str) -> Option<String> {
    if let Some(e) = dns1123_label(name)
        && (name.len() > 63 || name.is_empty())
    {
        return Some(e);
    }
    let ok = name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| is_lower_alnum(c) || c == '-')
        && name.ends_with(is_lower_alnum);
    (!ok).then(|| {
        format!(
            "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start \
             with an alphabetic character, and end with an alphanumeric character (e.g. \
             'my-name', or 'abc-123'), got {name:?}"
        )
    })
}

/// Checks a DNS-1123 subdomain: dot-separated DNS-1123 labels, at most 253 characters.
pub fn dns1123_subdomain(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("must not be empty".into());
    }
    if name.len() > 253 {
        return Some(format!("must be no more than 253 characters (is {})", name.len()));
    }
    let ok = name.split('.').all(|part| {
        !part.is_empty()
            && part.chars().all(|c| is_lower_alnum(c) || c == '-')
            && part.starts_with(is_lower_alnum)
            && part.ends_with(is_lower_alnum)
    });
    (!ok).then(|| {
        format!(
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, \
             '-' or '.', and must start and end with an alphanumeric character (e.g. \
             'example.com'), got {name:?}"
        )
    })
}

fn is_alnum(c: char) -> bool {
    c.is_ascii_alphanumeric()
}

/// Checks a label or annotation key: an optional DNS-1123 subdomain prefix and `/`, then a name
/// of at most 63 characters of alphanumerics, '-', '_' and '.', starting and ending with an
/// alphanumeric.
pub fn qualified_name(key: &str) -> Option<String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix
        && let Some(e) = dns1123_subdomain(p)
    {
        return Some(format!("prefix part {e}"));
    }
    if name.is_empty() {
        return Some("name part must not be empty".into());
    }
    if name.len() > 63 {
        return Some(format!("name part must be no more than 63 characters (is {})", name.len()));
    }
    let ok = name.chars().all(|c| is_alnum(c) || matches!(c, '-' | '_' | '.')) && name.starts_with(is_alnum) && name.ends_with(is_alnum);
    (!ok).then(|| {
        format!(
            "name part must consist of alphanumeric characters, '-', '_' or '.', and must start \
             and end with an alphanumeric character (e.g. 'MyName', or 'my.name', or \
             '123-abc'), got {key:?}"
        )
    })
}

/// Checks a label value: empty, or at most 63 characters of alphanumerics, '-', '_' and '.',
/// starting and ending with an alphanumeric.
pub fn label_value(value: &str) -> Option<String> {
    if value.is_empty() {
        return None;
    }
    if value.len() > 63 {
        return Some(format!("must be no more than 63 characters (is {})", value.len()));
    }
    let ok = value.chars().all(|c| is_alnum(c) || matches!(c, '-' | '_' | '.')) && value.starts_with(is_alnum) && value.ends_with(is_alnum);
    (!ok).then(|| {
        format!(
            "a valid label must be an empty string or consist of alphanumeric characters, '-', \
             '_' or '.', and must start and end with an alphanumeric character, got {value:?}"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(dns1123_subdomain("web-1.shop").is_none());
        assert!(dns1123_subdomain("Web").is_some());
        assert!(dns1123_subdomain("web_1").is_some());
        assert!(dns1123_subdomain("-web").is_some());
        assert!(dns1123_subdomain("a..b").is_some());
        assert!(dns1123_label("shop").is_none());
        assert!(dns1123_label("shop.prod").is_some());
        assert!(dns1123_label(&"a".repeat(64)).is_some());
        assert!(dns1035_label("web").is_none());
        assert!(dns1035_label("1web").is_some());
        assert!(NameRule::for_kind("Service").check("9svc").is_some());
        assert!(NameRule::for_kind("ConfigMap").check("9cm").is_none());
    }

    #[test]
    fn labels() {
        assert!(qualified_name("app").is_none());
        assert!(qualified_name("app.kubernetes.io/name").is_none());
        assert!(qualified_name("App.Kubernetes.io/name").is_some());
        assert!(qualified_name("app/").is_some());
        assert!(label_value("").is_none());
        assert!(label_value("v1.2_3").is_none());
        assert!(label_value("a b").is_some());
    }
}
