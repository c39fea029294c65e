//! What a pod's containers refer to, fetched from the API as the pod's node may read it: the
//! ConfigMaps and Secrets named by env, envFrom and volumes, the Services of its namespace (and
//! the `kubernetes` Service) for service-link variables, and a service-account token.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine;
use serde_json::{Value, json};

use crate::client::{ApiClient, ApiError};
use crate::spec::References;

/// Names of the ConfigMaps and Secrets a pod uses.
pub fn referenced(pod: &Value) -> (BTreeSet<String>, BTreeSet<String>) {
    let (mut cms, mut secrets) = (BTreeSet::new(), BTreeSet::new());
    let spec = &pod["spec"];
    let mut add = |v: &Value, into_secret: bool| {
        if let Some(n) = v.as_str() {
            if into_secret {
                secrets.insert(n.to_owned())
            } else {
                cms.insert(n.to_owned())
            };
        }
    };
    for list in ["initContainers", "containers"] {
        for c in spec[list].as_array().into_iter().flatten() {
            for e in c["envFrom"].as_array().into_iter().flatten() {
                add(&e["configMapRef"]["name"], false);
                add(&e["secretRef"]["name"], true);
            }
            for e in c["env"].as_array().into_iter().flatten() {
                add(&e["valueFrom"]["configMapKeyRef"]["name"], false);
                add(&e["valueFrom"]["secretKeyRef"]["name"], true);
            }
        }
    }
    for v in spec["volumes"].as_array().into_iter().flatten() {
        add(&v["configMap"]["name"], false);
        add(&v["secret"]["secretName"], true);
        for s in v["projected"]["sources"].as_array().into_iter().flatten() {
            add(&s["configMap"]["name"], false);
            add(&s["secret"]["name"], true);
        }
    }
    (cms, secrets)
}

fn decoded(obj: &Value, base64_fields: &[&str], text_fields: &[&str]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for f in text_fields {
        for (k, v) in obj[*f].as_object().into_iter().flatten() {
            out.insert(k.clone(), v.as_str().unwrap_or_default().to_owned());
        }
    }
    for f in base64_fields {
        for (k, v) in obj[*f].as_object().into_iter().flatten() {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(v.as_str().unwrap_or_default())
                .unwrap_or_default();
            out.insert(k.clone(), String::from_utf8_lossy(&bytes).into_owned());
        }
    }
    out
}

fn service_entry(svc: &Value) -> (String, String, Vec<(String, i64, String)>) {
    let ports = svc["spec"]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            (
                p["name"].as_str().unwrap_or_default().to_owned(),
                p["port"].as_i64().unwrap_or(0),
                p["protocol"].as_str().unwrap_or("TCP").to_owned(),
            )
        })
        .collect();
    (
        svc["metadata"]["name"].as_str().unwrap_or_default().to_owned(),
        svc["spec"]["clusterIP"].as_str().unwrap_or_default().to_owned(),
        ports,
    )
}

/// Fetches what `pod` refers to. Objects that do not exist are left out (the spec module turns
/// that into the right error, or ignores it for optional references).
pub async fn fetch(api: &ApiClient, pod: &Value) -> Result<References, ApiError> {
    let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default");
    let (cms, secrets) = referenced(pod);
    let mut refs = References::default();
    for name in cms {
        if let Some(cm) = api.get(&format!("/api/v1/namespaces/{ns}/configmaps/{name}")).await? {
            refs.config_maps.insert(name, decoded(&cm, &["binaryData"], &["data"]));
        }
    }
    for name in secrets {
        match api.get(&format!("/api/v1/namespaces/{ns}/secrets/{name}")).await {
            Ok(Some(s)) => {
                refs.secrets.insert(name, decoded(&s, &["data"], &["stringData"]));
            }
            Ok(None) => {}
            // Not readable by this node: as if it did not exist, with the API's reason logged.
            Err(e) if e.code == 403 => tracing::warn!(secret = %name, namespace = %ns, error = %e, "secret not readable"),
            Err(e) => return Err(e),
        }
    }
    for v in pod["spec"]["volumes"].as_array().into_iter().flatten() {
        let Some(claim) = v["persistentVolumeClaim"]["claimName"].as_str() else {
            continue;
        };
        let Some(c) = api.get(&format!("/api/v1/namespaces/{ns}/persistentvolumeclaims/{claim}")).await? else {
            continue;
        };
        let Some(volume) = c["spec"]["volumeName"].as_str().filter(|_| c["status"]["phase"] == "Bound") else {
            continue;
        };
        if let Some(path) = api
            .get(&format!("/api/v1/persistentvolumes/{volume}"))
            .await?
            .as_ref()
            .and_then(crate::storage::volume_path)
        {
            refs.claims.insert(claim.to_owned(), path);
        }
    }
    let links = pod["spec"]["enableServiceLinks"] != false;
    if links {
        let list = api.get(&format!("/api/v1/namespaces/{ns}/services")).await?.unwrap_or_default();
        refs.services = list["items"].as_array().into_iter().flatten().map(service_entry).collect();
    }
    // The API's own Service is in every pod's environment, links or not (in-cluster clients
    // find the API by it).
    if (ns != "default" || !links)
        && let Some(k) = api.get("/api/v1/namespaces/default/services/kubernetes").await?
    {
        refs.services.push(service_entry(&k));
    }
    if wants_token(pod) {
        let sa = pod["spec"]["serviceAccountName"].as_str().unwrap_or("default");
        let request = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"audiences": [], "expirationSeconds": 3600,
            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": pod["metadata"]["name"], "uid": pod["metadata"]["uid"]}}});
        match api
            .create(&format!("/api/v1/namespaces/{ns}/serviceaccounts/{sa}/token"), &request)
            .await
        {
            Ok(t) => refs.service_account_token = t["status"]["token"].as_str().map(str::to_owned),
            Err(e) => tracing::warn!(service_account = %sa, namespace = %ns, error = %e, "no service-account token for the pod"),
        }
    }
    Ok(refs)
}

/// Whether the pod mounts a service-account token (which expires, so it is renewed).
pub fn wants_token(pod: &Value) -> bool {
    pod["spec"]["volumes"].as_array().into_iter().flatten().any(|v| {
        v["projected"]["sources"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| s.get("serviceAccountToken").is_some())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_collected_from_env_and_volumes() {
        let pod = json!({"spec": {"containers": [{"envFrom": [{"configMapRef": {"name": "a"}}], "env": [{"valueFrom": {"secretKeyRef": {"name": "s1", "key": "k"}}}]}],
            "volumes": [{"secret": {"secretName": "s2"}}, {"projected": {"sources": [{"configMap": {"name": "b"}}]}}]}});
        let (cms, secrets) = referenced(&pod);
        assert_eq!(cms.into_iter().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(secrets.into_iter().collect::<Vec<_>>(), ["s1", "s2"]);
        let s = json!({"data": {"pw": "aHVudGVyMg=="}});
        assert_eq!(decoded(&s, &["data"], &[])["pw"], "hunter2");
    }
}
