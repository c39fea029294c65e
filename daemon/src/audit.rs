//! The audit trail: one `audit.k8s.io/v1` Event (level Metadata, stage ResponseComplete) per
//! line of `DATA_DIR/audit.log` for every request refused and every request that is not a read,
//! rotated by size so that it never fills the disk.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::{Value, json};

use crate::auth::UserInfo;

/// Rotate when the log reaches this size (kube-apiserver's --audit-log-maxsize is in MiB too).
pub const MAX_BYTES: u64 = 100 << 20;
/// Rotated files kept: `audit.log.1` (newest) to `audit.log.5`.
pub const KEEP: usize = 5;

/// What one request was, for its audit event.
#[derive(Clone, Debug, Default)]
pub struct Request {
    /// None when the caller could not be authenticated (`system:anonymous`).
    pub user: Option<UserInfo>,
    pub verb: String,
    pub uri: String,
    pub source: Option<String>,
    pub user_agent: String,
    /// `objectRef`: resource, namespace, name, apiGroup, apiVersion, subresource.
    pub object: Option<Value>,
    /// When the request arrived (RFC 3339, microseconds).
    pub received: String,
}

/// Whether `verb` only reads.
pub fn is_read(verb: &str) -> bool {
    matches!(verb, "get" | "list" | "watch")
}

/// An append-only, size-rotated log of audit events.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    max_bytes: u64,
    file: Mutex<Option<(File, u64)>>,
}

/// The current time, as events write it (microseconds, as Kubernetes).
pub fn timestamp() -> String {
    capstan_api::time::now_micro()
}

impl AuditLog {
    pub fn new(path: &Path) -> AuditLog {
        AuditLog::with_limit(path, MAX_BYTES)
    }

    pub fn with_limit(path: &Path, max_bytes: u64) -> AuditLog {
        AuditLog {
            path: path.to_owned(),
            max_bytes,
            file: Mutex::new(None),
        }
    }

    /// The event Kubernetes would write for `r` answered with `code` (`refusal`: why not).
    pub fn event(r: &Request, code: u16, refusal: Option<&str>) -> Value {
        let user = match &r.user {
            Some(u) => json!({"username": u.name, "groups": u.groups}),
            None => json!({"username": "system:anonymous", "groups": ["system:unauthenticated"]}),
        };
        let allowed = !matches!(code, 401 | 403);
        let mut annotations = json!({"authorization.k8s.io/decision": if allowed { "allow" } else { "forbid" }});
        if let Some(reason) = refusal {
            annotations["authorization.k8s.io/reason"] = json!(reason);
        }
        let mut status = json!({"metadata": {}, "code": code});
        if code >= 400 {
            status["status"] = json!("Failure");
            if let Some(reason) = refusal {
                status["message"] = json!(reason);
            }
        }
        let mut e = json!({
            "kind": "Event",
            "apiVersion": "audit.k8s.io/v1",
            "level": "Metadata",
            "auditID": uuid::Uuid::new_v4().to_string(),
            "stage": "ResponseComplete",
            "requestURI": r.uri,
            "verb": r.verb,
            "user": user,
            "sourceIPs": r.source.iter().collect::<Vec<_>>(),
            "userAgent": r.user_agent,
            "responseStatus": status,
            "requestReceivedTimestamp": r.received,
            "stageTimestamp": timestamp(),
            "annotations": annotations,
        });
        if let Some(o) = &r.object {
            e["objectRef"] = o.clone();
        }
        e
    }

    /// Appends one event; a failure to write is logged, never the request's problem.
    pub fn write(&self, event: &Value) {
        let mut line = serde_json::to_vec(event).unwrap_or_default();
        line.push(b'\n');
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = self.append(&mut file, &line) {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot write the audit log");
            *file = None;
        }
    }

    fn append(&self, file: &mut Option<(File, u64)>, line: &[u8]) -> std::io::Result<()> {
        if file.as_ref().is_some_and(|(_, size)| size + line.len() as u64 > self.max_bytes) {
            *file = None;
            self.rotate()?;
        }
        if file.is_none() {
            let f = OpenOptions::new().create(true).append(true).open(&self.path)?;
            let size = f.metadata()?.len();
            *file = Some((f, size));
            if size > 0 && size + line.len() as u64 > self.max_bytes {
                *file = None;
                self.rotate()?;
                let f = OpenOptions::new().create(true).append(true).open(&self.path)?;
                *file = Some((f, 0));
            }
        }
        let (f, size) = file.as_mut().expect("opened above");
        f.write_all(line)?;
        *size += line.len() as u64;
        Ok(())
    }

    /// audit.log → audit.log.1 → … → audit.log.KEEP (the oldest goes).
    fn rotate(&self) -> std::io::Result<()> {
        let numbered = |n: usize| PathBuf::from(format!("{}.{n}", self.path.display()));
        for n in (1..KEEP).rev() {
            if numbered(n).exists() {
                std::fs::rename(numbered(n), numbered(n + 1))?;
            }
        }
        std::fs::rename(&self.path, numbered(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(verb: &str) -> Request {
        Request {
            user: Some(UserInfo {
                name: "alice".into(),
                groups: vec!["dev".into(), "system:authenticated".into()],
            }),
            verb: verb.into(),
            uri: "/api/v1/namespaces/app/pods/web/exec?command=sh".into(),
            source: Some("127.0.0.1".into()),
            user_agent: "kubectl".into(),
            object: Some(json!({"resource": "pods", "namespace": "app", "name": "web", "subresource": "exec", "apiVersion": "v1"})),
            received: timestamp(),
        }
    }

    #[test]
    fn events_have_kubernetes_shape() {
        let e = AuditLog::event(&request("create"), 403, Some("no"));
        assert_eq!(e["apiVersion"], "audit.k8s.io/v1");
        assert_eq!(e["kind"], "Event");
        assert_eq!(e["level"], "Metadata");
        assert_eq!(e["user"]["username"], "alice");
        assert_eq!(e["objectRef"]["subresource"], "exec");
        assert_eq!(e["annotations"]["authorization.k8s.io/decision"], "forbid");
        assert_eq!(e["responseStatus"]["code"], 403);
        let anonymous = AuditLog::event(
            &Request {
                user: None,
                ..request("get")
            },
            401,
            None,
        );
        assert_eq!(anonymous["user"]["username"], "system:anonymous");
    }

    #[test]
    fn the_log_rotates_and_keeps_five() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::with_limit(&path, 2_000);
        for _ in 0..100 {
            log.write(&AuditLog::event(&request("delete"), 200, None));
        }
        for n in 1..=KEEP {
            assert!(dir.path().join(format!("audit.log.{n}")).exists(), "{n}");
        }
        assert!(!dir.path().join(format!("audit.log.{}", KEEP + 1)).exists());
        for line in std::fs::read_to_string(&path).unwrap().lines() {
            let e: Value = serde_json::from_str(line).unwrap();
            assert_eq!(e["verb"], "delete");
        }
        assert!(std::fs::metadata(&path).unwrap().len() <= 2_000);
    }
}
