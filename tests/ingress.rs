//! Ingress and the Gateway API on the real node agent, Docker Engine, daemon, kubectl, curl, wrk
//! and Python's websocket-client. Ingress: host and path routing over HTTP and HTTPS (two hosts,
//! two certificates chosen by SNI), Exact before Prefix and the longest prefix first, HTTP/2 over
//! ALPN and h2c, a WebSocket echo, the X-Forwarded headers a pod sees, a missing backend answered
//! with a 503 naming it and reported in an Event, a path two Ingresses claim (the older holds it),
//! a missing TLS Secret reported, the addresses in the Ingress's status, malformed requests and
//! oversized heads and bodies refused, slow clients closed, and a rolling update of the backend
//! under wrk through the ingress with no failed request. Gateway API: conditions, weighted split,
//! header match, redirect, rewrite, mirroring, an HTTPS listener, a held port reported, a commit
//! moving all traffic, a backend in another namespace refused until a ReferenceGrant allows it,
//! and a renewed certificate served (a bad renewal reported, the last good one kept).

mod common;

use std::io::{Read, Write};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{Cluster, docker_cluster, pod_ready};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use serde_json::Value;

/// A Deployment of `replicas` test apps with VERSION `version`, and its Service (port 80).
fn deployment(name: &str, version: &str, replicas: u32) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: shop}}
spec:
  replicas: {replicas}
  strategy: {{rollingUpdate: {{maxUnavailable: 0, maxSurge: 1}}}}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      terminationGracePeriodSeconds: 5
      containers:
      - name: app
        image: "capstan.local/testapp:latest"
        imagePullPolicy: Never
        env: [{{name: VERSION, value: "{version}"}}, {{name: TERM_DELAY, value: "2"}}]
        ports: [{{name: http, containerPort: 8080}}]
        readinessProbe: {{httpGet: {{path: /readyz, port: http}}, periodSeconds: 1}}
---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: shop}}
spec:
  selector: {{app: {name}}}
  ports: [{{name: http, port: 80, targetPort: http}}]
"#
    )
}

const INGRESSES: &str = r#"apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: shop, namespace: shop}
spec:
  tls: [{hosts: [shop.example], secretName: shop-tls}]
  rules:
  - host: shop.example
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: web, port: {name: http}}}}
      - {path: /api, pathType: Prefix, backend: {service: {name: api, port: {number: 80}}}}
      - {path: /api/exact, pathType: Exact, backend: {service: {name: web, port: {number: 80}}}}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: blog, namespace: shop}
spec:
  ingressClassName: nginx
  tls:
  - {hosts: [blog.example], secretName: blog-tls}
  - {hosts: [old.blog.example], secretName: absent}
  rules:
  - host: blog.example
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: api, port: {number: 80}}}}
      - {path: /missing, pathType: Prefix, backend: {service: {name: gone, port: {number: 80}}}}
"#;

const LATE: &str = r#"apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: late, namespace: shop}
spec:
  rules:
  - host: shop.example
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: api, port: {number: 80}}}}
"#;

/// A WebSocket client: connects to argv[1] with Host argv[2], sends a message, prints the echo.
const WEBSOCKET: &str = r#"
import ssl, sys, websocket
ws = websocket.create_connection(sys.argv[1], host=sys.argv[2], sslopt={"cert_reqs": ssl.CERT_NONE}, timeout=10)
ws.send("hello through the ingress")
print("echo:", ws.recv())
ws.close()
"#;

/// A CA and, for each host, a TLS Secret signed by it; the CA's PEM.
fn certificates(hosts: &[(&str, &str)]) -> (String, String) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "ingress test CA");
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, &ca_key);
    let mut secrets = String::new();
    for (secret, host) in hosts {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![host.to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, *host);
        let cert = params.signed_by(&key, &issuer).unwrap();
        let indent = |pem: String| pem.lines().map(|l| format!("    {l}\n")).collect::<String>();
        secrets.push_str(&format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: {secret}, namespace: shop}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}---\n",
            indent(cert.pem()),
            indent(key.serialize_pem())
        ));
    }
    (secrets, ca.pem())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// curl through the ingress: the status, the HTTP version and the body.
fn curl(scheme: &str, host: &str, port: u16, path: &str, extra: &[&str]) -> (u16, String, String) {
    let out = common::run(
        Command::new("curl")
            .args(["-sS", "--max-time", "10", "--resolve", &format!("{host}:{port}:127.0.0.1")])
            .args(["-w", "\n%{http_code} %{http_version}"])
            .args(extra)
            .arg(format!("{scheme}://{host}:{port}{path}")),
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, tail) = text.rsplit_once('\n').unwrap_or(("", &text));
    let mut tail = tail.split(' ');
    let code = tail.next().and_then(|c| c.parse().ok()).unwrap_or(0);
    let version = tail.next().unwrap_or_default().to_owned();
    (code, version, format!("{body}{}", String::from_utf8_lossy(&out.stderr)))
}

/// A raw request on a new connection: the answer's first line.
fn raw(port: u16, request: &[u8]) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(request);
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).lines().next().unwrap_or_default().to_owned()
}

fn ready_pods(c: &Cluster, app: &str) -> Vec<(String, String)> {
    let pods: Value = c.json(&["get", "pods", "-n", "shop", "-l", &format!("app={app}")]);
    pods["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| pod_ready(p) && p["metadata"]["deletionTimestamp"].is_null())
        .map(|p| {
            let version = p["spec"]["containers"][0]["env"][0]["value"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            (p["metadata"]["name"].as_str().unwrap_or_default().to_owned(), version)
        })
        .collect()
}

fn events(c: &Cluster, name: &str) -> String {
    c.kubectl_ok(&[
        "get",
        "events",
        "-n",
        "shop",
        "--field-selector",
        &format!("involvedObject.name={name}"),
    ])
}

#[test]
fn ingress_routes_hosts_and_paths_over_http_and_https_and_rolls_without_errors() {
    let (secrets, ca) = certificates(&[("shop-tls", "shop.example"), ("blog-tls", "blog.example")]);
    let web = deployment("web", "v1", 2);
    let api = deployment("api", "v1", 2);
    let Some((run, c)) = docker_cluster(
        "ingress_routes_hosts_and_paths_over_http_and_https_and_rolls_without_errors",
        "ingress",
        &[
            ("shop.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n"),
            ("web.yaml", &web),
            ("api.yaml", &api),
            ("tls.yaml", &secrets),
            ("ingress.yaml", INGRESSES),
        ],
        &["--cluster-cidr", "10.219.0.0/16"],
    ) else {
        return;
    };
    let ca_file = c.dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca).unwrap();
    let ca_file = ca_file.to_str().unwrap().to_owned();
    let (http, https) = (free_port(), free_port());
    let node = format!("ingress-{}", std::process::id());
    let agent = c.node(
        &node,
        &run,
        &[
            "--ingress-http",
            &format!("127.0.0.1:{http}"),
            "--ingress-https",
            &format!("127.0.0.1:{https}"),
            "--ingress-header-timeout",
            "3",
        ],
    );
    c.wait_until_within("two ready pods of web and of api", 120, || {
        ready_pods(&c, "web").len() == 2 && ready_pods(&c, "api").len() == 2
    });
    c.wait_until_within("the ingress to route shop.example", 30, || {
        let (code, _, body) = curl("http", "shop.example", http, "/", &[]);
        code == 200 && body.starts_with("hello from web-")
    });

    // Paths: the longest prefix wins, on whole elements; Exact beats Prefix.
    let backend = |path: &str| {
        let (_, _, body) = curl("http", "shop.example", http, path, &[]);
        body
    };
    assert!(backend("/cart").contains("on web-"), "{}", backend("/cart"));
    assert!(backend("/api").contains("on api-"), "{}", backend("/api"));
    assert!(backend("/api/orders").contains("on api-"), "{}", backend("/api/orders"));
    assert!(backend("/apis").contains("on web-"), "{}", backend("/apis"));
    assert!(backend("/api/exact").contains("on web-"), "{}", backend("/api/exact"));
    assert!(backend("/api/exact/more").contains("on api-"), "{}", backend("/api/exact/more"));
    // A class nobody declares (`nginx`) is served: manifests written for it work unchanged.
    let (code, _, body) = curl("http", "blog.example", http, "/", &[]);
    assert_eq!(code, 200, "{body}");
    assert!(body.starts_with("hello from api-"), "{body}");
    // A missing backend: 503 naming it; an unknown host: 404.
    let (code, _, body) = curl("http", "blog.example", http, "/missing/x", &[]);
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("service shop/gone does not exist"), "{body}");
    let (code, _, body) = curl("http", "nobody.example", http, "/", &[]);
    assert_eq!(code, 404, "{body}");

    // HTTPS: each host gets its own certificate by SNI (curl checks the name against it).
    for (host, app) in [("shop.example", "web"), ("blog.example", "api")] {
        let (code, version, body) = curl("https", host, https, "/", &["--cacert", &ca_file, "--http2"]);
        assert_eq!(code, 200, "{host}: {body}\n{}", agent.log());
        assert_eq!(version, "2", "{host}: HTTP/2 over ALPN");
        assert!(body.starts_with(&format!("hello from {app}-")), "{host}: {body}");
    }
    let (code, version, body) = curl("http", "shop.example", http, "/", &["--http2-prior-knowledge"]);
    assert_eq!((code, version.as_str()), (200, "2"), "h2c: {body}");
    // What the pod sees: the client's address and scheme, and the host asked for.
    let (_, _, headers) = curl("https", "shop.example", https, "/headers", &["--cacert", &ca_file]);
    let headers = headers.to_ascii_lowercase();
    assert!(headers.contains("x-forwarded-for: 127.0.0.1"), "{headers}");
    assert!(headers.contains("x-forwarded-proto: https"), "{headers}");
    assert!(headers.contains(&format!("x-forwarded-host: shop.example:{https}")), "{headers}");

    // A WebSocket through the ingress (websocket-client, which Debian's python3-kubernetes
    // brings), over HTTP and HTTPS.
    for (scheme, port) in [("ws", http), ("wss", https)] {
        let echo = common::run(Command::new("/usr/bin/python3").args([
            "-c",
            WEBSOCKET,
            &format!("{scheme}://127.0.0.1:{port}/ws"),
            &format!("shop.example:{port}"),
        ]));
        assert_eq!(
            String::from_utf8_lossy(&echo.stdout).trim(),
            "echo: hello through the ingress",
            "{scheme}: {}",
            String::from_utf8_lossy(&echo.stderr)
        );
    }

    // Status and Events.
    c.wait_until_within("the Ingress's address in its status", 30, || {
        c.kubectl_ok(&[
            "get",
            "ingress",
            "shop",
            "-n",
            "shop",
            "-o",
            "jsonpath={.status.loadBalancer.ingress[*].ip}",
        ]) == "127.0.0.1"
    });
    let table = c.kubectl_ok(&["get", "ingress", "-n", "shop"]);
    assert!(table.contains("shop.example") && table.contains("80, 443"), "{table}");
    c.wait_until_within("Events for the missing backend and TLS Secret", 30, || {
        let e = events(&c, "blog");
        e.contains("BackendNotFound") && e.contains("TLS secret shop/absent does not exist")
    });
    assert!(c.kubectl_ok(&["get", "ingressclass"]).contains("capstan.dev/ingress-controller"));

    // Bad requests: malformed, and a head larger than the limit.
    assert!(raw(http, b"NOT HTTP AT ALL\r\n\r\n").contains("400"), "malformed");
    let big = format!("GET / HTTP/1.1\r\nHost: shop.example\r\nX-Big: {}\r\n\r\n", "a".repeat(100 * 1024));
    assert!(raw(http, big.as_bytes()).contains("431"), "oversized head");
    let huge = b"POST / HTTP/1.1\r\nHost: shop.example\r\nContent-Length: 209715200\r\n\r\n";
    assert!(raw(http, huge).contains("413"), "a body over the limit");
    // Slow clients (--ingress-header-timeout 3): one that never finishes its request head and
    // one that sends nothing are closed, not held open.
    for (what, sent) in [
        ("a head never finished", &b"GET / HTTP/1.1\r\nHost: shop.example\r\n"[..]),
        ("nothing", b""),
    ] {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", http)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.write_all(sent).unwrap();
        let closed = s.read_to_end(&mut Vec::new());
        assert!(closed.is_ok(), "a client that sent {what} was not closed: {closed:?}");
    }

    // A later Ingress claiming the same host and path: the older keeps it, the later is told.
    c.commit(&[("late.yaml", LATE)], &[], "a second Ingress claims shop.example/");
    c.wait_until_within("the conflict reported on the later Ingress", 30, || {
        events(&c, "late").contains("is held by Ingress shop/shop")
    });
    assert!(backend("/").contains("hello from web-"));

    // A rolling update of web under a bounded wrk load through the ingress (4 connections,
    // keep-alive): no non-2xx answer and no connection error.
    let wrk = Command::new("wrk")
        .args([
            "-t1",
            "-c4",
            "-d300s",
            "-H",
            "Host: shop.example",
            &format!("http://127.0.0.1:{http}/"),
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("wrk (Debian's package) runs");
    c.commit(&[("web.yaml", &deployment("web", "v2", 2))], &[], "web v2");
    c.wait_until_within("web rolled to v2", 180, || {
        let pods = ready_pods(&c, "web");
        pods.len() == 2 && pods.iter().all(|(_, v)| v == "v2") && {
            let all = c.kubectl_ok(&["get", "pods", "-n", "shop", "-l", "app=web", "-o", "name"]);
            all.lines().count() == 2
        }
    });
    std::thread::sleep(Duration::from_secs(1));
    // wrk prints its summary on SIGINT.
    common::run(Command::new("kill").args(["-INT", &wrk.id().to_string()]));
    let out = wrk.wait_with_output().unwrap();
    let summary = String::from_utf8_lossy(&out.stdout);
    let requests: u64 = summary
        .lines()
        .find_map(|l| l.trim().split_once(" requests in ").and_then(|(n, _)| n.parse().ok()))
        .unwrap_or(0);
    assert!(requests > 100, "too few requests went through: {summary}");
    assert!(!summary.contains("Non-2xx"), "non-2xx answers during the rollout: {summary}");
    assert!(
        !summary.contains("Socket errors"),
        "connection errors during the rollout: {summary}"
    );
}

fn gateway(http: u16, https: u16) -> String {
    format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: web, namespace: shop}}
spec:
  gatewayClassName: capstan
  listeners:
  - {{name: http, port: {http}, protocol: HTTP, hostname: "*.gw.example"}}
  - name: https
    port: {https}
    protocol: HTTPS
    hostname: app.gw.example
    tls: {{certificateRefs: [{{name: gw-tls}}]}}
"#
    )
}

fn canary(v1: u32, v2: u32) -> String {
    format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: canary, namespace: shop}}
spec:
  parentRefs: [{{name: web}}]
  hostnames: [app.gw.example]
  rules:
  - matches: [{{headers: [{{name: X-Canary, value: always}}]}}]
    backendRefs: [{{name: app-v2, port: 80}}]
  - matches: [{{path: {{type: Exact, value: /old}}}}]
    filters: [{{type: RequestRedirect, requestRedirect: {{path: {{type: ReplaceFullPath, replaceFullPath: /new}}, statusCode: 301}}}}]
  - matches: [{{path: {{type: PathPrefix, value: /mirrored}}}}]
    filters:
    - {{type: URLRewrite, urlRewrite: {{path: {{type: ReplaceFullPath, replaceFullPath: /}}}}}}
    - {{type: RequestMirror, requestMirror: {{backendRef: {{name: app-v2, port: 80}}, percent: 50}}}}
    backendRefs: [{{name: app-v1, port: 80}}]
  - matches: [{{path: {{type: PathPrefix, value: /v1api}}}}]
    filters:
    - {{type: URLRewrite, urlRewrite: {{path: {{type: ReplacePrefixMatch, replacePrefixMatch: /}}}}}}
    - {{type: RequestHeaderModifier, requestHeaderModifier: {{set: [{{name: X-Route, value: canary}}]}}}}
    backendRefs: [{{name: app-v1, port: 80}}]
  - backendRefs:
    - {{name: app-v1, port: 80, weight: {v1}}}
    - {{name: app-v2, port: 80, weight: {v2}}}
"#
    )
}

const ELSEWHERE: &str = r#"apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: elsewhere, namespace: shop}
spec:
  gatewayClassName: capstan
  addresses: [{type: IPAddress, value: 192.0.2.7}]
  listeners: [{name: http, port: PORT, protocol: HTTP, hostname: elsewhere.example}]
"#;

/// An HTTPRoute `name` of shop on web's HTTP listener, for `host`, to one backend.
fn http_route(name: &str, host: &str, backend: &str) -> String {
    format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}, namespace: shop}}
spec:
  parentRefs: [{{name: web, sectionName: http}}]
  hostnames: [{host}]
  rules: [{{backendRefs: [{backend}]}}]
"#
    )
}

/// One GET on a new connection to 127.0.0.1:`port`: the status, the headers and the body.
fn get(port: u16, host: &str, path: &str, extra: &str) -> (u16, String, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, head.to_owned(), body.to_owned())
}

/// A condition's status and reason in an object's JSON status (at `conditions`).
fn condition(conditions: &Value, kind: &str) -> (String, String) {
    conditions
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == kind))
        .map(|c| {
            (
                c["status"].as_str().unwrap_or_default().to_owned(),
                c["reason"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .unwrap_or_default()
}

#[test]
fn gateway_api_routes_split_traffic_by_weight_and_a_commit_moves_it_without_errors() {
    let (secrets, ca) = certificates(&[("gw-tls", "app.gw.example")]);
    let (http, https, ingress) = (free_port(), free_port(), free_port());
    let Some((run, c)) = docker_cluster(
        "gateway_api_routes_split_traffic_by_weight_and_a_commit_moves_it_without_errors",
        "gateway",
        &[
            ("shop.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n"),
            ("v1.yaml", &deployment("app-v1", "v1", 1)),
            // v2 prints each request it gets: what the mirror received.
            (
                "v2.yaml",
                &deployment("app-v2", "v2", 1).replace(
                    r#"{name: TERM_DELAY, value: "2"}"#,
                    r#"{name: TERM_DELAY, value: "2"}, {name: LOG_REQUESTS, value: "1"}"#,
                ),
            ),
            ("tls.yaml", &secrets),
            ("gateway.yaml", &gateway(http, https)),
            ("route.yaml", &canary(90, 10)),
            ("broken.yaml", &http_route("broken", "broken.gw.example", "{name: gone, port: 80}")),
            ("elsewhere.yaml", &ELSEWHERE.replace("PORT", &free_port().to_string())),
        ],
        &["--cluster-cidr", "10.221.0.0/16"],
    ) else {
        return;
    };
    let ca_file = c.dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca).unwrap();
    let ca_file = ca_file.to_str().unwrap().to_owned();
    let node = format!("gateway-{}", std::process::id());
    // The node's HTTPS port is held by another process: the node says so, the rest works.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let held_port = held.local_addr().unwrap().port();
    let agent = c.node(
        &node,
        &run,
        &[
            "--ingress-http",
            &format!("127.0.0.1:{ingress}"),
            "--ingress-https",
            &format!("127.0.0.1:{held_port}"),
        ],
    );
    c.wait_until_within("a ready pod of each release", 120, || {
        ready_pods(&c, "app-v1").len() == 1 && ready_pods(&c, "app-v2").len() == 1
    });
    let release_of = |body: &str| {
        if body.starts_with("hello from app-v1-") {
            "v1"
        } else if body.starts_with("hello from app-v2-") {
            "v2"
        } else {
            "?"
        }
    };
    c.wait_until_within("the Gateway's listener to route app.gw.example", 30, || {
        get(http, "app.gw.example", "/", "").0 == 200
    });

    // Status: the class, the Gateway and its listeners, the routes under it.
    c.wait_until_within("the status of the Gateway and its routes", 30, || {
        let gw = c.json(&["get", "gateway", "web", "-n", "shop"]);
        let route = c.json(&["get", "httproute", "canary", "-n", "shop"]);
        condition(&gw["status"]["conditions"], "Programmed").0 == "True"
            && gw["status"]["listeners"][0]["attachedRoutes"] == 2
            && gw["status"]["addresses"][0]["value"] == "127.0.0.1"
            && condition(&route["status"]["parents"][0]["conditions"], "Accepted") == ("True".into(), "Accepted".into())
    });
    // An address no node has cannot be given.
    c.wait_until_within("the Gateway asking for another address refused", 30, || {
        let gw = c.json(&["get", "gateway", "elsewhere", "-n", "shop"]);
        condition(&gw["status"]["conditions"], "Programmed") == ("False".into(), "AddressNotAssigned".into())
    });
    let class = c.json(&["get", "gatewayclass", "capstan"]);
    assert_eq!(condition(&class["status"]["conditions"], "Accepted").0, "True");
    let broken = c.json(&["get", "httproute", "broken", "-n", "shop"]);
    assert_eq!(
        condition(&broken["status"]["parents"][0]["conditions"], "ResolvedRefs"),
        ("False".into(), "BackendNotFound".into()),
        "{broken}"
    );
    let (code, _, body) = get(http, "broken.gw.example", "/", "");
    assert_eq!(code, 500, "{body}");
    assert!(body.contains("service shop/gone does not exist"), "{body}");

    // 90/10 over 2,000 requests, within ±3 points.
    let mut v2 = 0;
    for _ in 0..2000 {
        let (code, _, body) = get(http, "app.gw.example", "/", "");
        assert_eq!(code, 200, "{body}");
        if release_of(&body) == "v2" {
            v2 += 1;
        }
    }
    assert!(
        (170..=230).contains(&v2),
        "{v2} of 2000 went to v2 (10% ± 3 points is 140..260; interleaved should be ~200)"
    );
    // Header match, redirect, rewrite with a header set.
    let (_, _, body) = get(http, "app.gw.example", "/", "X-Canary: always\r\n");
    assert_eq!(release_of(&body), "v2", "{body}");
    let (code, head, _) = get(http, "app.gw.example", "/old", "");
    assert_eq!(code, 301, "{head}");
    assert!(head.contains(&format!("location: http://app.gw.example:{http}/new")), "{head}");
    let (code, _, body) = get(http, "app.gw.example", "/v1api/headers", "");
    assert_eq!(code, 200, "{body}");
    assert!(
        body.to_ascii_lowercase().contains("x-route: canary"),
        "rewritten to /headers with the header set: {body}"
    );
    // RequestMirror at 50 %: v1 answers all ten requests (rewritten to /), and v2 gets a copy
    // of every second.
    let mirrored = || {
        let logs = c.kubectl_ok(&["logs", "-n", "shop", "deploy/app-v2"]);
        logs.lines().filter(|l| *l == "request GET /").count()
    };
    let before = mirrored();
    for i in 0..10 {
        let (code, _, body) = get(http, "app.gw.example", &format!("/mirrored/{i}"), "");
        assert_eq!((code, release_of(&body)), (200, "v1"), "{body}");
    }
    c.wait_until("five mirrored requests at v2", || mirrored() >= before + 5);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(mirrored(), before + 5, "v2 got a copy of every second request");
    // The HTTPS listener's certificate, by SNI.
    let (code, _, body) = curl("https", "app.gw.example", https, "/", &["--cacert", &ca_file]);
    assert_eq!(code, 200, "{body}\n{}", agent.log());
    // The listener's hostname bounds the route: another host under it has no route.
    assert_eq!(get(http, "other.gw.example", "/", "").0, 404);

    let events = c.kubectl_ok(&[
        "get",
        "events",
        "-n",
        "default",
        "--field-selector",
        &format!("involvedObject.name={node}"),
    ]);
    assert!(
        events.contains("IngressListenFailed") && events.contains(&format!("127.0.0.1:{held_port}")),
        "{events}"
    );
    drop(held);

    // The release: a commit to 0/100 under load moves all traffic, with no failed request.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut failures = Vec::new();
            let mut count = 0;
            while !stop.load(Ordering::SeqCst) {
                let (code, _, body) = get(http, "app.gw.example", "/", "");
                count += 1;
                if code != 200 {
                    failures.push(format!("{code} {body}"));
                }
            }
            (count, failures)
        })
    };
    c.commit(&[("route.yaml", &canary(0, 100))], &[], "release v2: all traffic");
    c.wait_until_within("all traffic on v2", 30, || {
        (0..20).all(|_| release_of(&get(http, "app.gw.example", "/", "").2) == "v2")
    });
    stop.store(true, Ordering::SeqCst);
    let (count, failures) = load.join().unwrap();
    assert!(count > 20, "the load ran: {count}");
    assert!(failures.is_empty(), "failed requests during the release: {failures:?}");

    // A backend in another namespace: refused until that namespace grants it.
    let other = deployment("app-x", "x", 1).replace("namespace: shop", "namespace: other");
    c.commit(
        &[
            (
                "other.yaml",
                &format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: other}}\n---\n{other}"),
            ),
            (
                "cross.yaml",
                &http_route("cross", "cross.gw.example", "{name: app-x, namespace: other, port: 80}"),
            ),
        ],
        &[],
        "a route to a Service of another namespace",
    );
    c.wait_until_within("the cross-namespace reference refused", 60, || {
        let route = c.json(&["get", "httproute", "cross", "-n", "shop"]);
        condition(&route["status"]["parents"][0]["conditions"], "ResolvedRefs") == ("False".into(), "RefNotPermitted".into())
    });
    assert_eq!(get(http, "cross.gw.example", "/", "").0, 500);
    c.commit(&[("grant.yaml", GRANT)], &[], "other lets shop's routes reach its Services");
    c.wait_until_within("the granted backend answering", 120, || {
        get(http, "cross.gw.example", "/", "").2.starts_with("hello from app-x-")
    });

    // The listener's certificate replaced by a commit: served from then on, no restart.
    let (renewed, renewed_ca) = certificates(&[("gw-tls", "app.gw.example")]);
    let renewed_ca_file = c.dir.path().join("renewed-ca.pem");
    std::fs::write(&renewed_ca_file, renewed_ca).unwrap();
    let renewed_ca_file = renewed_ca_file.to_str().unwrap().to_owned();
    c.commit(&[("tls.yaml", &renewed)], &[], "renew the Gateway's certificate");
    c.wait_until_within("the renewed certificate served (the node watches the Secret)", 10, || {
        curl("https", "app.gw.example", https, "/", &["--cacert", &renewed_ca_file]).0 == 200
    });
    let (code, _, said) = curl("https", "app.gw.example", https, "/", &["--cacert", &ca_file]);
    assert_eq!(code, 0, "the old certificate is no longer served: {said}");
    // A renewal whose key is not the certificate's: reported, the last good pair kept.
    let (other_pair, _) = certificates(&[("gw-tls", "app.gw.example")]);
    let key_of = |secret: &str| secret[secret.find("  tls.key:").unwrap()..].to_owned();
    let mismatched = renewed.replace(&key_of(&renewed), &key_of(&other_pair));
    c.commit(&[("tls.yaml", &mismatched)], &[], "a certificate with the wrong key");
    c.wait_until_within("the bad renewal reported by the node", 10, || {
        agent.log().contains("holds no usable key pair")
    });
    let (code, _, said) = curl("https", "app.gw.example", https, "/", &["--cacert", &renewed_ca_file]);
    assert_eq!(code, 200, "the last good certificate is still served: {said}");
}

const GRANT: &str = r#"apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: shop-routes, namespace: other}
spec:
  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: shop}]
  to: [{group: "", kind: Service}]
"#;
