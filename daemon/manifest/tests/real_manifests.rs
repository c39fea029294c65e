//! Kubernetes manifests written the way people write them (rendered charts with `---` and
//! comments, kubectl-generated files with `creationTimestamp: null` and empty status, anchors
//! and merge keys, quoted numbers, `kind: List`, `...` document ends) load unchanged.

use std::path::Path;

use capstan_manifest::desired::Snapshot;
use capstan_manifest::files::read_dir;

#[test]
fn real_world_manifests_load_without_a_problem() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/real");
    let files = read_dir(&dir).unwrap();
    assert_eq!(files.len(), 4);
    let desired = Snapshot::load(files).desired();
    let problems: Vec<String> = desired.problems.iter().map(ToString::to_string).collect();
    assert!(problems.is_empty(), "{problems:#?}");
    let keys: Vec<String> = desired.objects.keys().map(ToString::to_string).collect();
    assert_eq!(keys.len(), 13, "{keys:#?}");

    let get = |kind: &str, ns: &str, name: &str| {
        &desired
            .objects
            .iter()
            .find(|(k, _)| k.kind == kind && k.namespace == ns && k.name == name)
            .unwrap_or_else(|| panic!("{kind} {ns}/{name}"))
            .1
            .object
    };
    let worker = get("Deployment", "jobs", "worker");
    assert_eq!(worker["spec"]["replicas"], 2);
    let containers = worker["spec"]["template"]["spec"]["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 2);
    assert_eq!(containers[1]["name"], "sidecar");
    assert_eq!(containers[1]["image"], "worker:1", "merged from the anchor");
    assert_eq!(containers[1]["args"][0], "--metrics");
    assert_eq!(containers[0]["resources"]["limits"]["cpu"], "1");
    assert_eq!(containers[0]["env"][1]["value"], "yes");

    let api = get("Deployment", "default", "api");
    assert!(api.get("status").is_none(), "status is not desired state");
    assert!(api["metadata"].get("creationTimestamp").is_none());

    let cm = get("ConfigMap", "default", "api-config");
    assert_eq!(cm["data"]["MAX_CONNECTIONS"], "100");
    assert!(cm["data"]["config.json"].as_str().unwrap().starts_with("{\"listen\""));

    let quota = get("ResourceQuota", "default", "compute");
    assert_eq!(quota["spec"]["hard"]["limits.cpu"], "8");
    let web = get("Service", "default", "web");
    assert_eq!(web["spec"]["ports"][1]["targetPort"], "metrics");
    assert_eq!(web["spec"]["ports"][0]["targetPort"], 8080);
    assert_eq!(get("Secret", "jobs", "worker-token")["data"]["token"], "dG9rZW4=");
    // stringData is folded into data, base64-encoded, as the API server stores it.
    let credentials = get("Secret", "jobs", "worker-credentials");
    assert_eq!(credentials["data"]["password"], "czNjcjN0OndpdGg6Y29sb25z");
    assert!(credentials.get("stringData").is_none());
}
