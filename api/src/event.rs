//! Kubernetes Events (core/v1), built one way for every component that reports them: what
//! happened to which object, by whom and when, as `kubectl describe` and `get events` read them.
//! The daemon's recorder and the node agent both send these.

use serde_json::{Value, json};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

impl EventType {
    pub fn as_str(&self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

/// Who reports: the component (`kubelet`, `deployment-controller`, ...) and, for a node's
/// components, the node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    pub component: String,
    pub host: Option<String>,
}

/// What is reported, about which object (a JSON object with apiVersion, kind and metadata) and,
/// if it concerns a part of it, which (`spec.containers{web}`).
#[derive(Clone, Copy, Debug)]
pub struct Report<'a> {
    pub involved: &'a Value,
    pub field_path: Option<&'a str>,
    pub kind: EventType,
    pub reason: &'a str,
    pub message: &'a str,
}

impl Source {
    /// A new Event (count 1) at `now` (RFC 3339), named as client-go names them:
    /// `<object>.<hex of the time in nanoseconds>`, in the object's namespace (`default` for a
    /// cluster-scoped object).
    pub fn event(&self, r: &Report<'_>, now: &str) -> Value {
        let meta = &r.involved["metadata"];
        let namespace = meta["namespace"].as_str().filter(|n| !n.is_empty()).unwrap_or("default");
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let name = format!("{}.{nanos:x}", meta["name"].as_str().unwrap_or("object"));
        let mut involved = json!({
            "apiVersion": r.involved["apiVersion"], "kind": r.involved["kind"], "name": meta["name"],
            "namespace": meta["namespace"], "uid": meta["uid"],
        });
        if let Some(rv) = meta.get("resourceVersion") {
            involved["resourceVersion"] = rv.clone();
        }
        if let Some(f) = r.field_path {
            involved["fieldPath"] = json!(f);
        }
        let mut source = json!({"component": self.component});
        let mut event = json!({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": name, "namespace": namespace},
            "involvedObject": involved,
            "reason": r.reason,
            "message": r.message,
            "type": r.kind.as_str(),
            "count": 1,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "reportingComponent": self.component,
        });
        if let Some(h) = &self.host {
            source["host"] = json!(h);
            event["reportingInstance"] = json!(h);
        }
        event["source"] = source;
        event
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_names_its_object_and_reporter() {
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web-1", "namespace": "shop", "uid": "u1"}});
        let kubelet = Source {
            component: "kubelet".into(),
            host: Some("node-a".into()),
        };
        let report = Report {
            involved: &pod,
            field_path: Some("spec.containers{web}"),
            kind: EventType::Warning,
            reason: "BackOff",
            message: "Back-off restarting failed container",
        };
        let e = kubelet.event(&report, "2026-12-02T04:30:00Z");
        assert_eq!(e["metadata"]["namespace"], "shop");
        assert!(e["metadata"]["name"].as_str().unwrap().starts_with("web-1."));
        assert_eq!(e["involvedObject"]["fieldPath"], "spec.containers{web}");
        assert_eq!(e["involvedObject"]["uid"], "u1");
        assert_eq!(e["type"], "Warning");
        assert_eq!(e["source"], json!({"component": "kubelet", "host": "node-a"}));
        assert_eq!(e["reportingInstance"], "node-a");
        let node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a"}});
        let controller = Source {
            component: "node-controller".into(),
            host: None,
        };
        let e = controller.event(
            &Report {
                involved: &node,
                field_path: None,
                ..report
            },
            "2026-12-02T04:30:00Z",
        );
        assert_eq!(e["metadata"]["namespace"], "default", "a cluster-scoped object's events");
        assert!(e.get("reportingInstance").is_none());
    }
}
