//! The worker's decisions on the fake runtime, in paused time: restart policies and the
//! crash-loop sequence, init containers, image pulls, probes, adoption and deletion. The API is
//! an in-memory stand-in behind the real client (pods by path, status patches, Events).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use capstan_api::meta::{LABEL_CONTAINER, LABEL_POD_UID};
use capstan_containers::Runtime;
use capstan_containers::fake::{Behaviour, FakeRuntime};
use futures::StreamExt;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::{Env, Input, Worker};
use crate::backoff::Backoff;
use crate::client::ApiClient;
use crate::podnet::PodNet;
use crate::spec::NodeContext;

const PAUSE: &str = "pause:test";
const POD: &str = "/api/v1/namespaces/default/pods/web";

/// What the in-memory API holds and saw.
#[derive(Default)]
struct Seen {
    objects: HashMap<String, Value>,
    /// Status patches, in order.
    statuses: Vec<Value>,
    /// Event reasons, in order.
    events: Vec<String>,
    deleted: Vec<String>,
}

type Api = Arc<Mutex<Seen>>;

fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

/// Answers the agent's requests from `api`: objects by path, empty lists for collections.
async fn answer(api: Api, req: http::Request<kube::client::Body>) -> Result<http::Response<String>, std::convert::Infallible> {
    let (parts, body) = req.into_parts();
    let body: Value = body
        .collect()
        .await
        .ok()
        .and_then(|b| serde_json::from_slice(&b.to_bytes()).ok())
        .unwrap_or(Value::Null);
    let path = parts.uri.path().to_owned();
    let mut seen = api.lock().unwrap();
    let reply = match parts.method.as_str() {
        "GET" => match seen.objects.get(&path) {
            Some(o) => Some(o.clone()),
            None if ["services", "endpointslices", "leases"].iter().any(|c| path.ends_with(c)) => Some(json!({"items": []})),
            None => None,
        },
        "PATCH" => {
            let object = path.trim_end_matches("/status").to_owned();
            seen.statuses.push(body["status"].clone());
            seen.objects.get_mut(&object).map(|o| {
                merge(o, &body);
                o.clone()
            })
        }
        "POST" => {
            seen.events.push(body["reason"].as_str().unwrap_or_default().to_owned());
            Some(body)
        }
        "DELETE" => {
            seen.deleted.push(path.clone());
            seen.objects.remove(&path)
        }
        _ => None,
    };
    let (code, body) = match reply {
        Some(v) => (200, v),
        None => (
            404,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"}),
        ),
    };
    Ok(http::Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(body.to_string())
        .expect("a response"))
}

struct Harness {
    runtime: Arc<FakeRuntime>,
    api: Api,
    env: Arc<Env>,
    _dir: tempfile::TempDir,
}

impl Harness {
    fn new() -> Harness {
        Harness::with_host_access(false)
    }

    /// A node started with `--allow-host-path` or without.
    fn with_host_access(allow_host_path: bool) -> Harness {
        let runtime = Arc::new(FakeRuntime::new(LABEL_CONTAINER));
        runtime.image(PAUSE, Behaviour::Serve);
        let api: Api = Arc::default();
        let served = api.clone();
        let service = tower::service_fn(move |req| answer(served.clone(), req));
        let client = ApiClient::new(kube::Client::new(service, "default"));
        let dir = tempfile::tempdir().unwrap();
        let net = std::sync::Arc::new(PodNet::addresses_only());
        net.set_range("10.244.0.0/24");
        let env = Arc::new(Env {
            runtime: runtime.clone(),
            api: client,
            ctx: NodeContext {
                node: "n1".into(),
                network: "capstan-n1".into(),
                host_ip: "10.0.0.1".into(),
                dns_ip: "10.96.0.10".into(),
                cluster_domain: "cluster.local".into(),
                pause_image: PAUSE.into(),
                volumes_dir: dir.path().join("volumes"),
            },
            net,
            backoff: Backoff::default(),
            allow_host_path,
            extra_labels: Vec::new(),
            pods_dir: dir.path().join("pods"),
        });
        Harness {
            runtime,
            api,
            env,
            _dir: dir,
        }
    }

    /// A pod `web` with these containers (and init containers), stored in the API.
    fn pod(&self, policy: &str, init: Value, containers: Value) -> Value {
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web", "namespace": "default", "uid": "0123456789abcdef"},
            "spec": {"nodeName": "n1", "restartPolicy": policy, "automountServiceAccountToken": false,
                     "enableServiceLinks": false, "initContainers": init, "containers": containers},
        });
        self.api.lock().unwrap().objects.insert(POD.into(), pod.clone());
        pod
    }

    /// Runs a worker for `pod` for `time` (paused, so at once), poking it on every container
    /// event as the agent does; returns its input for more.
    async fn run(&self, pod: Value, time: Duration) -> mpsc::UnboundedSender<Input> {
        let adopted = self.runtime.list(&[(LABEL_POD_UID, "0123456789abcdef")]).await.unwrap();
        let (tx, working) = self.worker(pod, adopted);
        let _ = tokio::time::timeout(time, working).await;
        tx
    }

    /// Runs a worker for `pod` in the background; returns its input and the task, to abort when
    /// done.
    fn spawn(&self, pod: Value) -> (mpsc::UnboundedSender<Input>, tokio::task::JoinHandle<()>) {
        let (tx, working) = self.worker(pod, Vec::new());
        (tx, tokio::spawn(working))
    }

    /// A worker for `pod` poked on every container event, as the agent does: its input, and the
    /// future that runs it.
    fn worker(
        &self,
        pod: Value,
        adopted: Vec<capstan_containers::ContainerInfo>,
    ) -> (mpsc::UnboundedSender<Input>, impl Future<Output = ()> + use<>) {
        let worker = Worker::new(self.env.clone(), pod, adopted);
        let (tx, rx) = mpsc::unbounded_channel();
        let poke = tx.clone();
        let runtime = self.runtime.clone();
        let events = async move {
            let mut events = runtime.events(&[]);
            while events.next().await.is_some() {
                let _ = poke.send(Input::Poke);
            }
        };
        (tx, async move {
            futures::future::join(worker.run(rx), events).await;
        })
    }

    fn last_status(&self) -> Value {
        self.api.lock().unwrap().statuses.last().cloned().unwrap_or_default()
    }

    fn events(&self) -> Vec<String> {
        self.api.lock().unwrap().events.clone()
    }

    /// Seconds between successive starts of container `name`.
    fn gaps(&self, name: &str) -> Vec<u64> {
        let starts = self.runtime.starts(name);
        starts.windows(2).map(|w| (w[1] - w[0]).as_secs()).collect()
    }
}

fn container(name: &str, image: &str) -> Value {
    json!({"name": name, "image": image, "imagePullPolicy": "IfNotPresent"})
}

#[tokio::test(start_paused = true)]
async fn a_crashing_container_restarts_at_once_then_backs_off_10_20_40_seconds() {
    let h = Harness::new();
    h.runtime.image("crash", Behaviour::Exit(1));
    let pod = h.pod("Always", json!([]), json!([container("app", "crash")]));
    h.run(pod, Duration::from_secs(100)).await;
    // Starts at 0, 0, 10, 30, 70 (the next would be at 150).
    assert_eq!(h.gaps("app"), [0, 10, 20, 40]);
    let status = h.last_status();
    let c = &status["containerStatuses"][0];
    assert_eq!(c["restartCount"], 4, "{status}");
    assert_eq!(c["state"]["waiting"]["reason"], "CrashLoopBackOff", "{status}");
    assert!(
        c["state"]["waiting"]["message"]
            .as_str()
            .unwrap()
            .starts_with("back-off 1m20s restarting failed container=app")
    );
    assert_eq!(c["lastState"]["terminated"]["exitCode"], 1);
    assert_eq!(status["phase"], "Running");
    let backoffs = h.events().iter().filter(|r| *r == "BackOff").count();
    assert_eq!(backoffs, 4, "one BackOff Event per wait: {:?}", h.events());
    // One exited container is kept for `logs --previous`, older ones are removed.
    let app: Vec<_> = h
        .runtime
        .containers()
        .into_iter()
        .filter(|r| r.info.labels[LABEL_CONTAINER] == "app")
        .collect();
    assert_eq!(app.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn restart_policies_decide_whether_an_exit_runs_again() {
    for (policy, code, starts, phase) in [
        ("Never", 1, 1, "Failed"),
        ("Never", 0, 1, "Succeeded"),
        ("OnFailure", 0, 1, "Succeeded"),
        ("OnFailure", 3, 3, "Running"),
        ("Always", 0, 3, "Running"),
    ] {
        let h = Harness::new();
        h.runtime.image("job", Behaviour::Exit(code));
        let pod = h.pod(policy, json!([]), json!([container("app", "job")]));
        h.run(pod, Duration::from_secs(15)).await;
        let status = h.last_status();
        assert_eq!(h.runtime.starts("app").len(), starts, "{policy} exit {code}: {status}");
        assert_eq!(status["phase"], phase, "{policy} exit {code}: {status}");
        if phase != "Running" {
            let exit = &status["containerStatuses"][0]["state"]["terminated"];
            assert_eq!(exit["exitCode"], code, "{status}");
            // A finished pod gives its address back; the sandbox is stopped.
            let again = h.env.net.assign("0123456789abcdef").unwrap().to_string();
            assert_ne!(status["podIP"], again.as_str(), "{status}");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn init_containers_run_one_at_a_time_before_the_containers() {
    let h = Harness::new();
    h.runtime.image("ok", Behaviour::Exit(0));
    h.runtime.image("serve", Behaviour::Serve);
    let pod = h.pod(
        "Always",
        json!([container("first", "ok"), container("second", "ok")]),
        json!([container("app", "serve")]),
    );
    h.run(pod, Duration::from_secs(5)).await;
    let [first, second, app] = ["first", "second", "app"].map(|n| h.runtime.starts(n));
    assert_eq!((first.len(), second.len(), app.len()), (1, 1, 1));
    assert!(first[0] <= second[0] && second[0] <= app[0]);
    let status = h.last_status();
    assert_eq!(status["phase"], "Running", "{status}");
    assert_eq!(status["initContainerStatuses"][1]["state"]["terminated"]["reason"], "Completed");
    assert_eq!(status["containerStatuses"][0]["ready"], true, "{status}");

    // A failing init container under Never fails the pod; the containers never start.
    let h = Harness::new();
    h.runtime.image("bad", Behaviour::Exit(2));
    h.runtime.image("serve", Behaviour::Serve);
    let pod = h.pod("Never", json!([container("first", "bad")]), json!([container("app", "serve")]));
    h.run(pod, Duration::from_secs(5)).await;
    assert!(h.runtime.starts("app").is_empty());
    let status = h.last_status();
    assert_eq!(status["phase"], "Failed", "{status}");
    assert_eq!(
        status["containerStatuses"][0]["state"]["waiting"]["reason"], "PodInitializing",
        "{status}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_missing_image_backs_off_its_pulls() {
    let h = Harness::new();
    let pod = h.pod("Always", json!([]), json!([container("app", "nowhere:1")]));
    h.run(pod.clone(), Duration::from_secs(7)).await;
    // Pulled at 0; at 5 s the worker looks again to report the back-off.
    assert_eq!(h.runtime.pulls(), 1);
    assert_eq!(
        h.last_status()["containerStatuses"][0]["state"]["waiting"]["reason"],
        "ImagePullBackOff"
    );
    // The image appears: the pull after the back-off (10 s) fetches it and the container runs.
    h.runtime.pullable("nowhere:1", Behaviour::Serve);
    h.run(pod, Duration::from_secs(10)).await;
    assert_eq!(h.runtime.pulls(), 2);
    assert_eq!(h.runtime.starts("app").len(), 1);
    assert!(h.last_status()["containerStatuses"][0]["state"]["running"].is_object());
}

#[tokio::test(start_paused = true)]
async fn failed_probes_restart_or_unready_a_container() {
    let h = Harness::new();
    h.runtime.image("serve", Behaviour::Serve);
    let probe = json!({"exec": {"command": ["check"]}, "periodSeconds": 1, "failureThreshold": 3});
    let mut live = container("live", "serve");
    live["livenessProbe"] = probe.clone();
    let mut ready = container("ready", "serve");
    ready["readinessProbe"] = probe;
    h.runtime.exec_exits("live", 1);
    h.runtime.exec_exits("ready", 1);
    let pod = h.pod("Always", json!([]), json!([live, ready]));
    h.run(pod, Duration::from_secs(6)).await;
    // Liveness: three failures a second apart, then the container is stopped and, a first
    // exit, restarted at once; readiness failures only take the container out of service.
    assert_eq!(h.runtime.starts("live").len(), 2, "{:?}", h.events());
    assert_eq!(h.runtime.starts("ready").len(), 1);
    let status = h.last_status();
    let by_name = |n: &str| {
        status["containerStatuses"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == n)
            .cloned()
            .unwrap()
    };
    assert_eq!(by_name("live")["restartCount"], 1, "{status}");
    assert_eq!(by_name("live")["lastState"]["terminated"]["exitCode"], 143, "{status}");
    assert_eq!(by_name("ready")["ready"], false, "{status}");
    assert_eq!(
        status["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Ready")
            .unwrap()["status"],
        "False"
    );
    let events = h.events();
    assert!(events.iter().any(|e| e == "Killing"), "{events:?}");
    assert!(events.iter().filter(|e| *e == "Unhealthy").count() >= 2, "{events:?}");
}

#[tokio::test(start_paused = true)]
async fn a_new_worker_adopts_the_running_containers_and_their_restart_count() {
    let h = Harness::new();
    h.runtime.image("crash", Behaviour::Exit(1));
    let pod = h.pod("Always", json!([]), json!([container("app", "crash")]));
    // Two restarts, then the agent stops (its workers go; the containers stay).
    h.run(pod.clone(), Duration::from_secs(5)).await;
    assert_eq!(h.runtime.starts("app").len(), 2);
    let sandboxes = h.runtime.starts(crate::spec::SANDBOX).len();
    h.runtime.behave("crash", Behaviour::Serve);
    // The next agent's worker keeps the sandbox and counts on from the adopted attempt.
    h.run(pod, Duration::from_secs(15)).await;
    assert_eq!(h.runtime.starts(crate::spec::SANDBOX).len(), sandboxes, "the sandbox is adopted");
    let status = h.last_status();
    let c = &status["containerStatuses"][0];
    assert_eq!(c["restartCount"], 2, "{status}");
    assert!(c["state"]["running"].is_object(), "{status}");
}

#[tokio::test(start_paused = true)]
async fn a_deleted_pod_is_stopped_within_its_grace_and_removed() {
    let h = Harness::new();
    h.runtime.image("serve", Behaviour::Serve);
    let mut pod = h.pod("Always", json!([]), json!([container("app", "serve")]));
    let input = h.run(pod.clone(), Duration::from_secs(2)).await;
    drop(input);
    pod["metadata"]["deletionTimestamp"] = json!("2026-12-02T07:00:00Z");
    pod["metadata"]["deletionGracePeriodSeconds"] = json!(7);
    h.run(pod, Duration::from_secs(30)).await;
    assert!(h.runtime.containers().is_empty(), "every container of the pod is removed");
    assert_eq!(h.api.lock().unwrap().deleted, [POD]);
    assert!(h.events().iter().any(|e| e == "Killing"));
}

#[tokio::test(start_paused = true)]
async fn readiness_changed_by_someone_else_is_said_again() {
    let h = Harness::new();
    h.runtime.image("serve", Behaviour::Serve);
    let pod = h.pod("Always", json!([]), json!([container("app", "serve")]));
    let (tx, running) = h.spawn(pod);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let ready = |s: &Value| s["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Ready").unwrap()["status"].clone();
    assert_eq!(ready(&h.last_status()), "True", "{}", h.last_status());
    let written = h.api.lock().unwrap().statuses.len();
    // The node controller lost touch with the node and marked the pod not Ready.
    let mut marked = h.api.lock().unwrap().objects[POD].clone();
    for c in marked["status"]["conditions"].as_array_mut().unwrap() {
        if c["type"] == "Ready" {
            c["status"] = json!("False");
        }
    }
    tx.send(Input::Pod(Box::new(marked))).unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let statuses = h.api.lock().unwrap().statuses.clone();
    assert_eq!(statuses.len(), written + 1, "one write saying Ready again: {statuses:?}");
    assert_eq!(ready(&h.last_status()), "True");
    running.abort();
}

#[tokio::test(start_paused = true)]
async fn an_ephemeral_container_runs_once_beside_the_target_and_leaves_the_pod_as_it_was() {
    let h = Harness::new();
    h.runtime.image("serve", Behaviour::Serve);
    h.runtime.image("debug", Behaviour::Exit(3));
    let pod = h.pod("Always", json!([]), json!([container("app", "serve")]));
    let (tx, running) = h.spawn(pod);
    tokio::time::sleep(Duration::from_secs(5)).await;
    // `kubectl debug --target=app` added a container that exits 3.
    let mut debugged = h.api.lock().unwrap().objects[POD].clone();
    let mut debugger = container("debugger-x", "debug");
    debugger["targetContainerName"] = json!("app");
    debugged["spec"]["ephemeralContainers"] = json!([debugger]);
    tx.send(Input::Pod(Box::new(debugged))).unwrap();
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(h.runtime.starts("debugger-x").len(), 1, "never restarted");
    let records = h.runtime.containers();
    let app = records.iter().find(|r| r.info.labels[LABEL_CONTAINER] == "app").unwrap();
    let debug = records.iter().find(|r| r.info.labels[LABEL_CONTAINER] == "debugger-x").unwrap();
    assert_eq!(debug.config.pid_mode, Some(format!("container:{}", app.info.id)));
    let status = h.last_status();
    let e = &status["ephemeralContainerStatuses"][0];
    assert_eq!(e["name"], "debugger-x", "{status}");
    assert_eq!(e["state"]["terminated"]["exitCode"], 3, "{status}");
    assert_eq!(status["phase"], "Running", "{status}");
    assert_eq!(status["containerStatuses"].as_array().unwrap().len(), 1, "{status}");
    assert!(h.events().iter().any(|e| e == "Started"));
    running.abort();
}

#[tokio::test(start_paused = true)]
async fn a_pod_on_the_hosts_namespaces_runs_only_where_the_node_allows_host_access() {
    let host_pod = |h: &Harness| {
        h.runtime.image("serve", Behaviour::Serve);
        let mut pod = h.pod("Always", json!([]), json!([container("app", "serve")]));
        for field in ["hostNetwork", "hostPID"] {
            pod["spec"][field] = json!(true);
        }
        h.api.lock().unwrap().objects.insert(POD.into(), pod.clone());
        pod
    };
    let h = Harness::new();
    h.run(host_pod(&h), Duration::from_secs(5)).await;
    let status = h.last_status();
    let waiting = &status["containerStatuses"][0]["state"]["waiting"];
    assert_eq!(
        waiting["message"],
        "the pod asks for the host's namespaces (hostNetwork, hostPID), which this node does not allow (start it with --allow-host-path)",
        "{status}"
    );
    assert!(h.runtime.containers().is_empty());

    let h = Harness::with_host_access(true);
    h.run(host_pod(&h), Duration::from_secs(5)).await;
    let status = h.last_status();
    assert_eq!(status["podIP"], "10.0.0.1", "the node's address: {status}");
    assert_eq!(status["phase"], "Running", "{status}");
    let records = h.runtime.containers();
    let sandbox = records.iter().find(|r| r.config.image == PAUSE).unwrap();
    assert_eq!(sandbox.config.network, Some(capstan_containers::NetworkMode::Host));
    let app = records.iter().find(|r| r.info.labels[LABEL_CONTAINER] == "app").unwrap();
    assert_eq!(app.config.pid_mode.as_deref(), Some("host"));
}
