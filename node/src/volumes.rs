//! Pod volumes on the node's disk: emptyDir as a directory, configMap, secret, downwardAPI and
//! projected volumes written out as files (with their items, paths and modes), hostPath only
//! where the node allows it; and the bind mounts that put them into each container.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::spec::{ConfigError, References};

fn write_file(dir: &Path, rel: &str, content: &[u8], mode: u32) -> Result<(), ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    if rel.contains("..") || rel.starts_with('/') {
        return Err(ConfigError(format!("invalid path {rel:?} in a volume item")));
    }
    let path = dir.join(rel);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| ConfigError(format!("creating {}: {e}", parent.display())))?;
    }
    std::fs::write(&path, content).map_err(|e| ConfigError(format!("writing {}: {e}", path.display())))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| ConfigError(format!("chmod {}: {e}", path.display())))
}

/// Writes key → value data as files, all keys or only the listed items.
fn write_keys(
    dir: &Path,
    data: &std::collections::BTreeMap<String, String>,
    items: &Value,
    default_mode: u32,
    what: &str,
) -> Result<(), ConfigError> {
    match items.as_array() {
        Some(items) => {
            for item in items {
                let key = item["key"].as_str().unwrap_or_default();
                let value = data.get(key).ok_or_else(|| ConfigError(format!("{what}: key {key:?} not found")))?;
                let mode = item["mode"].as_u64().map_or(default_mode, |m| m as u32);
                write_file(dir, item["path"].as_str().unwrap_or(key), value.as_bytes(), mode)?;
            }
        }
        None => {
            for (k, v) in data {
                write_file(dir, k, v.as_bytes(), default_mode)?;
            }
        }
    }
    Ok(())
}

fn downward_value(pod: &Value, item: &Value) -> String {
    let path = item["fieldRef"]["fieldPath"].as_str().unwrap_or_default();
    let m = &pod["metadata"];
    let map_text = |v: &Value| {
        v.as_object()
            .map(|o| {
                o.iter()
                    .map(|(k, v)| format!("{k}=\"{}\"", v.as_str().unwrap_or_default()))
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_default()
    };
    match path {
        "metadata.name" => m["name"].as_str().unwrap_or_default().to_owned(),
        "metadata.namespace" => m["namespace"].as_str().unwrap_or_default().to_owned(),
        "metadata.uid" => m["uid"].as_str().unwrap_or_default().to_owned(),
        "metadata.labels" => map_text(&m["labels"]),
        "metadata.annotations" => map_text(&m["annotations"]),
        _ => String::new(),
    }
}

/// Makes a claim's directory on first use, owned by the pod's `fsGroup` (group-writable, new
/// files inheriting the group), so that a container running as another user can write there.
fn claim_directory(path: &Path, fs_group: &Value) -> Result<(), ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    if path.exists() {
        return Ok(());
    }
    std::fs::create_dir_all(path).map_err(|e| ConfigError(format!("creating the volume directory {}: {e}", path.display())))?;
    let mode = match fs_group.as_u64().and_then(|g| u32::try_from(g).ok()) {
        Some(gid) => {
            std::os::unix::fs::chown(path, None, Some(gid)).map_err(|e| ConfigError(format!("chown {}: {e}", path.display())))?;
            0o2775
        }
        None => 0o777,
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|e| ConfigError(format!("chmod {}: {e}", path.display())))
}

/// Materialises the pod's volumes under `dir` (one directory per volume); returns where each
/// volume is on the host.
pub fn prepare(pod: &Value, dir: &Path, refs: &References, allow_host_path: bool) -> Result<HashMap<String, PathBuf>, ConfigError> {
    let mut out = HashMap::new();
    for v in pod["spec"]["volumes"].as_array().into_iter().flatten() {
        let name = v["name"].as_str().unwrap_or_default().to_owned();
        let target = dir.join(&name);
        let optional = |r: &Value| r["optional"] == true;
        if let Some(host) = v["hostPath"]["path"].as_str() {
            if !allow_host_path {
                return Err(ConfigError(format!(
                    "volume {name:?}: hostPath volumes are not allowed on this node (start it with --allow-host-path)"
                )));
            }
            out.insert(name, PathBuf::from(host));
            continue;
        }
        if let Some(claim) = v["persistentVolumeClaim"]["claimName"].as_str() {
            let path = refs
                .claims
                .get(claim)
                .ok_or_else(|| ConfigError(format!("persistentvolumeclaim {claim:?} is not bound to a volume yet")))?;
            claim_directory(path, &pod["spec"]["securityContext"]["fsGroup"])?;
            out.insert(name, path.clone());
            continue;
        }
        std::fs::create_dir_all(&target).map_err(|e| ConfigError(format!("creating {}: {e}", target.display())))?;
        if v.get("emptyDir").is_some() {
            // Nothing to write; the directory lives as long as the pod.
        } else if let Some(cm) = v.get("configMap") {
            let cm_name = cm["name"].as_str().unwrap_or_default();
            let mode = cm["defaultMode"].as_u64().unwrap_or(0o644) as u32;
            match refs.config_maps.get(cm_name) {
                Some(data) => write_keys(&target, data, &cm["items"], mode, &format!("configmap {cm_name:?}"))?,
                None if optional(cm) => {}
                None => return Err(ConfigError(format!("configmap \"{cm_name}\" not found"))),
            }
        } else if let Some(sec) = v.get("secret") {
            let sec_name = sec["secretName"].as_str().unwrap_or_default();
            let mode = sec["defaultMode"].as_u64().unwrap_or(0o644) as u32;
            match refs.secrets.get(sec_name) {
                Some(data) => write_keys(&target, data, &sec["items"], mode, &format!("secret {sec_name:?}"))?,
                None if optional(sec) => {}
                None => return Err(ConfigError(format!("secret \"{sec_name}\" not found"))),
            }
        } else if let Some(d) = v.get("downwardAPI") {
            for item in d["items"].as_array().into_iter().flatten() {
                write_file(
                    &target,
                    item["path"].as_str().unwrap_or_default(),
                    downward_value(pod, item).as_bytes(),
                    0o644,
                )?;
            }
        } else if let Some(p) = v.get("projected") {
            let mode = p["defaultMode"].as_u64().unwrap_or(0o644) as u32;
            for source in p["sources"].as_array().into_iter().flatten() {
                if let Some(cm) = source.get("configMap") {
                    let n = cm["name"].as_str().unwrap_or_default();
                    match refs.config_maps.get(n) {
                        Some(data) => write_keys(&target, data, &cm["items"], mode, &format!("configmap {n:?}"))?,
                        None if optional(cm) => {}
                        None => return Err(ConfigError(format!("configmap \"{n}\" not found"))),
                    }
                } else if let Some(sec) = source.get("secret") {
                    let n = sec["name"].as_str().unwrap_or_default();
                    match refs.secrets.get(n) {
                        Some(data) => write_keys(&target, data, &sec["items"], mode, &format!("secret {n:?}"))?,
                        None if optional(sec) => {}
                        None => return Err(ConfigError(format!("secret \"{n}\" not found"))),
                    }
                } else if let Some(d) = source.get("downwardAPI") {
                    for item in d["items"].as_array().into_iter().flatten() {
                        write_file(
                            &target,
                            item["path"].as_str().unwrap_or_default(),
                            downward_value(pod, item).as_bytes(),
                            mode,
                        )?;
                    }
                } else if let Some(t) = source.get("serviceAccountToken") {
                    let path = t["path"].as_str().unwrap_or("token");
                    let token = refs.service_account_token.clone().unwrap_or_default();
                    write_file(&target, path, token.as_bytes(), mode)?;
                }
            }
        } else {
            return Err(ConfigError(format!(
                "volume {name:?}: this kind of volume is not supported by Capstan's node agent"
            )));
        }
        out.insert(name, target);
    }
    Ok(out)
}

/// Docker bind mounts (`host:container[:ro]`) for a container's volumeMounts.
pub fn binds(container: &Value, volumes: &HashMap<String, PathBuf>) -> Result<Vec<String>, ConfigError> {
    let mut out = Vec::new();
    for m in container["volumeMounts"].as_array().into_iter().flatten() {
        let name = m["name"].as_str().unwrap_or_default();
        let host = volumes
            .get(name)
            .ok_or_else(|| ConfigError(format!("volume {name:?} is not prepared")))?;
        let host = match m["subPath"].as_str().filter(|s| !s.is_empty()) {
            Some(sub) => {
                let p = host.join(sub);
                if !p.exists() {
                    std::fs::create_dir_all(&p).map_err(|e| ConfigError(format!("creating {}: {e}", p.display())))?;
                }
                p
            }
            None => host.clone(),
        };
        let mut bind = format!("{}:{}", host.display(), m["mountPath"].as_str().unwrap_or_default());
        if m["readOnly"] == true {
            bind.push_str(":ro");
        }
        out.push(bind);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn volumes_are_written_and_mounted() {
        let dir = tempfile::tempdir().unwrap();
        let refs = References {
            config_maps: HashMap::from([(
                "cfg".to_owned(),
                [("app.conf".to_owned(), "x=1".to_owned()), ("other".to_owned(), "y".to_owned())]
                    .into_iter()
                    .collect(),
            )]),
            secrets: HashMap::from([(
                "db".to_owned(),
                [("password".to_owned(), "hunter2".to_owned())].into_iter().collect(),
            )]),
            ..References::default()
        };
        let pod = json!({"metadata": {"name": "p", "namespace": "ns", "labels": {"a": "b"}}, "spec": {"volumes": [
            {"name": "scratch", "emptyDir": {}},
            {"name": "conf", "configMap": {"name": "cfg", "items": [{"key": "app.conf", "path": "etc/app.conf"}]}},
            {"name": "creds", "secret": {"secretName": "db", "defaultMode": 256}},
            {"name": "info", "downwardAPI": {"items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]}}
        ]}});
        let vols = prepare(&pod, dir.path(), &refs, false).unwrap();
        assert_eq!(std::fs::read_to_string(vols["conf"].join("etc/app.conf")).unwrap(), "x=1");
        assert!(!vols["conf"].join("other").exists());
        assert_eq!(std::fs::read_to_string(vols["creds"].join("password")).unwrap(), "hunter2");
        assert_eq!(std::fs::read_to_string(vols["info"].join("labels")).unwrap(), "a=\"b\"");
        let c = json!({"volumeMounts": [{"name": "conf", "mountPath": "/etc/app", "readOnly": true}, {"name": "scratch", "mountPath": "/tmp/s"}]});
        let b = binds(&c, &vols).unwrap();
        assert!(b[0].ends_with(":/etc/app:ro"));
        let host = json!({"spec": {"volumes": [{"name": "h", "hostPath": {"path": "/etc"}}]}});
        assert!(
            prepare(&host, dir.path(), &refs, false)
                .unwrap_err()
                .0
                .contains("hostPath volumes are not allowed")
        );
    }
}
