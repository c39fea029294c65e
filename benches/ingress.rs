//! The ingress under load: requests/s and p50/p99 latency measured by wrk (Debian's package), with
//! keep-alive, against the same two backend pods three ways in one run — straight to one pod's
//! address (the floor), through Capstan's ingress, and through nginx (Debian's package, configured
//! here as a reverse proxy to the same pods with upstream keep-alive: the best-known peer) — over
//! HTTP and HTTPS. Capstan and nginx are measured in turns, alternating which goes first, and
//! compared by their mean requests/s and the median of their p99s over the turns. Targets:
//! Capstan ≥ 1.0× nginx's requests/s and p99 ≤ nginx's.
//!
//! And reconfiguration: from an Ingress change written to the store to the ingress answering the
//! new host (p50 and max over the rounds), beside nginx's `nginx -s reload` to its first answer
//! for a new server block. Target: < 100 ms.
//!
//! `cargo bench --bench ingress` (4 turns of 4 s; `-- --quick`: 2 turns of 2 s, 5 reconfigurations
//! instead of 20). Needs the Docker Engine, wrk, nginx and the images from
//! examples-repo/images/build.sh.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use base64::Engine;
use capstan_daemon::context::kind;
use serde_json::{Value, json};

mod common;
use common::{OneNode, ms, percentile, proc_cpu};

const HOST: &str = "bench.example";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One GET on a new connection: the status code (0 when nothing answered).
fn status(addr: SocketAddr, host: &str) -> u16 {
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return 0;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if write!(s, "GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").is_err() {
        return 0;
    }
    let mut head = [0u8; 12];
    if s.read_exact(&mut head).is_err() {
        return 0;
    }
    String::from_utf8_lossy(&head[9..12]).parse().unwrap_or(0)
}

/// What one wrk run measured.
struct Load {
    rps: f64,
    requests: u64,
    p50: Duration,
    p99: Duration,
    errors: u64,
    /// The proxy's CPU time per request, in user space and in the kernel (µs), where measured.
    cpu: Option<(f64, f64)>,
}

/// The CPU time so far (user, kernel seconds) of this process's threads named `ingress-PORT-*`.
fn ingress_cpu(port: u16) -> (f64, f64) {
    let prefix = format!("ingress-{port}-");
    let threads = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .flatten()
        .filter(|task| std::fs::read_to_string(task.path().join("comm")).is_ok_and(|comm| comm.starts_with(&prefix)));
    threads
        .filter_map(|task| proc_cpu(task.path().join("stat")))
        .fold((0.0, 0.0), |sum, c| (sum.0 + c.user, sum.1 + c.kernel))
}

/// The CPU time so far (user, kernel seconds) of the processes of process group `group`.
fn group_cpu(group: u32) -> (f64, f64) {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|process| proc_cpu(process.path().join("stat")))
        .filter(|c| c.group == i64::from(group))
        .fold((0.0, 0.0), |sum, c| (sum.0 + c.user, sum.1 + c.kernel))
}

/// `wrk` against `url` with the CPU the proxy (`cpu`) spent meanwhile.
fn measured(url: &str, seconds: u64, cpu: impl Fn() -> (f64, f64)) -> Load {
    let before = cpu();
    let mut load = wrk(url, seconds);
    let after = cpu();
    let per_request = |spent: f64| spent * 1e6 / load.requests.max(1) as f64;
    load.cpu = Some((per_request(after.0 - before.0), per_request(after.1 - before.1)));
    load
}

/// One proxy over its turns: mean requests/s, the median of the p99s, mean CPU per request.
struct Side {
    rps: f64,
    p99: Duration,
    cpu: (f64, f64),
}

impl Side {
    fn of<'a>(turns: impl ExactSizeIterator<Item = &'a Load>) -> Side {
        let n = turns.len() as f64;
        let (mut rps, mut p99s, mut cpu) = (0.0, Vec::new(), (0.0, 0.0));
        for l in turns {
            rps += l.rps;
            p99s.push(l.p99);
            let (user, kernel) = l.cpu.unwrap_or_default();
            cpu = (cpu.0 + user, cpu.1 + kernel);
        }
        Side {
            rps: rps / n,
            p99: percentile(&mut p99s, 0.5),
            cpu: (cpu.0 / n, cpu.1 / n),
        }
    }
}

fn duration(text: &str) -> Duration {
    let (number, unit) = text.split_at(text.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(text.len()));
    let n: f64 = number.parse().unwrap_or(0.0);
    Duration::from_secs_f64(match unit {
        "us" => n / 1e6,
        "ms" => n / 1e3,
        "s" => n,
        "m" => n * 60.0,
        _ => 0.0,
    })
}

/// Runs wrk (2 threads, 32 connections) against `url` with Host `HOST`.
fn wrk(url: &str, seconds: u64) -> Load {
    let out = Command::new("wrk")
        .args([
            "-t2",
            "-c32",
            &format!("-d{seconds}s"),
            "--latency",
            "-H",
            &format!("Host: {HOST}"),
            url,
        ])
        .output()
        .expect("wrk runs (Debian's wrk package)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "wrk {url}: {text}{}", String::from_utf8_lossy(&out.stderr));
    let field = |prefix: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix).map(|r| r.trim().to_owned()))
            .unwrap_or_default()
    };
    let socket_errors: u64 = field("Socket errors:")
        .split(',')
        .filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok())
        .sum();
    let requests = text
        .lines()
        .find_map(|l| l.trim().split_once(" requests in ")?.0.parse().ok())
        .unwrap_or(0);
    Load {
        rps: field("Requests/sec:").parse().unwrap_or(0.0),
        requests,
        cpu: None,
        p50: duration(&field("50%")),
        p99: duration(&field("99%")),
        errors: socket_errors + field("Non-2xx or 3xx responses:").parse::<u64>().unwrap_or(0),
    }
}

/// nginx as a reverse proxy to `backends`, on its own ports, with `extra` servers included.
struct Nginx {
    dir: tempfile::TempDir,
    child: Child,
    http: u16,
    https: u16,
}

impl Nginx {
    fn start(backends: &[String], cert: &str, key: &str) -> Nginx {
        let dir = tempfile::tempdir().unwrap();
        let (http, https) = (free_port(), free_port());
        let d = dir.path().display();
        std::fs::write(dir.path().join("tls.crt"), cert).unwrap();
        std::fs::write(dir.path().join("tls.key"), key).unwrap();
        std::fs::write(dir.path().join("extra.conf"), "").unwrap();
        let servers: String = backends.iter().map(|b| format!("    server {b};\n")).collect();
        let proxy = "proxy_pass http://echo; proxy_http_version 1.1; proxy_set_header Connection \"\"; \
                     proxy_set_header Host $host; proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; \
                     proxy_set_header X-Forwarded-Proto $scheme;";
        let conf = format!(
            "user root;\nworker_processes auto;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
               upstream echo {{\n{servers}    keepalive 64;\n  }}\n\
               server {{ listen 127.0.0.1:{http} default_server; return 404; }}\n\
               server {{\n    listen 127.0.0.1:{http};\n    listen 127.0.0.1:{https} ssl http2;\n    server_name {HOST};\n\
                 ssl_certificate {d}/tls.crt;\n    ssl_certificate_key {d}/tls.key;\n    location / {{ {proxy} }}\n  }}\n\
               include {d}/extra.conf;\n}}\n"
        );
        std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
        // A process group of its own: the master and its workers go together (killing the master
        // alone leaves the workers serving, and holding their ports, after the bench).
        let child = Command::new("nginx")
            .args(["-p", &d.to_string(), "-c", &format!("{d}/nginx.conf"), "-g", "daemon off;"])
            .process_group(0)
            .spawn()
            .expect("nginx runs (Debian's nginx package)");
        let n = Nginx { dir, child, http, https };
        let deadline = Instant::now() + Duration::from_secs(10);
        while status(n.addr(n.http), HOST) != 200 {
            assert!(Instant::now() < deadline, "nginx did not answer: {}", n.log());
            std::thread::sleep(Duration::from_millis(20));
        }
        n
    }

    fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }

    /// Adds a server for `host` and reloads: the time to its first answer.
    fn reconfigure(&self, host: &str) -> Duration {
        let d = self.dir.path().display();
        let mut extra = std::fs::read_to_string(self.dir.path().join("extra.conf")).unwrap();
        extra.push_str(&format!(
            "server {{ listen 127.0.0.1:{}; server_name {host}; location / {{ proxy_pass http://echo; proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }}\n",
            self.http
        ));
        std::fs::write(self.dir.path().join("extra.conf"), extra).unwrap();
        let t = Instant::now();
        let reload = Command::new("nginx")
            .args(["-p", &d.to_string(), "-c", &format!("{d}/nginx.conf"), "-s", "reload"])
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(reload.success(), "nginx -s reload: {}", self.log());
        wait_for(self.addr(self.http), host, t)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `addr` for `host` until it answers 200: the time since `since`.
fn wait_for(addr: SocketAddr, host: &str, since: Instant) -> Duration {
    while status(addr, host) != 200 {
        assert!(since.elapsed() < Duration::from_secs(30), "{host} never answered");
        std::thread::sleep(Duration::from_micros(500));
    }
    since.elapsed()
}

fn rule(host: &str) -> Value {
    json!({"host": host, "http": {"paths": [{"path": "/", "pathType": "Prefix",
           "backend": {"service": {"name": "echo", "port": {"name": "http"}}}}]}})
}

#[tokio::main]
async fn main() {
    let quick = std::env::args().any(|a| a == "--quick") || std::env::var_os("CAPSTAN_BENCH_QUICK").is_some();
    let (seconds, turns, rounds) = if quick { (2, 2, 5) } else { (4, 4, 20) };
    let (http, https) = (free_port(), free_port());
    let one = OneNode::start_with("10.220.0.0/16", "bench-ingress", |nc| {
        nc.ingress = Some(capstan_ingress::IngressConfig {
            http: Some(SocketAddr::from(([127, 0, 0, 1], http))),
            https: Some(SocketAddr::from(([127, 0, 0, 1], https))),
            ..Default::default()
        });
    })
    .await;
    let d = &one.daemon;
    let cert = rcgen::generate_simple_self_signed(vec![HOST.to_owned()]).unwrap();
    let (cert_pem, key_pem) = (cert.cert.pem(), cert.signing_key.serialize_pem());
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let objects = [
        (
            "secrets",
            json!({"metadata": {"name": "tls", "namespace": "bench"}, "type": "kubernetes.io/tls",
                           "data": {"tls.crt": b64(&cert_pem), "tls.key": b64(&key_pem)}}),
        ),
        (
            "services",
            json!({"metadata": {"name": "echo", "namespace": "bench"},
                            "spec": {"selector": {"app": "echo"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}),
        ),
        (
            "ingresses",
            json!({"metadata": {"name": "echo", "namespace": "bench"},
                             "spec": {"tls": [{"hosts": [HOST], "secretName": "tls"}], "rules": [rule(HOST)]}}),
        ),
    ];
    for (plural, object) in objects {
        while d.objects.create(kind(plural), object.clone()).await.is_err() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let pods = kind("pods");
    for i in 0..2 {
        let pod = json!({"metadata": {"name": format!("echo-{i}"), "namespace": "bench", "labels": {"app": "echo"}},
            "spec": {"nodeName": one.node, "terminationGracePeriodSeconds": 0,
                     "containers": [{"name": "app", "image": "capstan.local/testapp:latest",
                                     "env": [{"name": "KEEP_ALIVE", "value": "1"}],
                                     "readinessProbe": {"httpGet": {"path": "/readyz", "port": 8080}, "periodSeconds": 1}}]}});
        d.objects.create(pods, pod).await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    let backends = loop {
        let ips: Vec<String> = (0..2)
            .filter_map(|i| {
                let p = d.cache.get(pods, "bench", &format!("echo-{i}"))?;
                let ready = p.object["status"]["conditions"]
                    .as_array()?
                    .iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True");
                ready.then(|| format!("{}:8080", p.object["status"]["podIP"].as_str().unwrap_or_default()))
            })
            .collect();
        if ips.len() == 2 {
            break ips;
        }
        assert!(Instant::now() < deadline, "the backend pods did not become ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let ingress = SocketAddr::from(([127, 0, 0, 1], http));
    tokio::task::spawn_blocking(move || wait_for(ingress, HOST, Instant::now()))
        .await
        .unwrap();

    let report = tokio::task::spawn_blocking(move || {
        let nginx = Nginx::start(&backends, &cert_pem, &key_pem);
        // Warm every path, then measure.
        for url in [
            format!("http://{}/", backends[0]),
            format!("http://127.0.0.1:{http}/"),
            format!("http://127.0.0.1:{}/", nginx.http),
        ] {
            wrk(&url, 1);
        }
        let direct = wrk(&format!("http://{}/", backends[0]), seconds);
        // Capstan and nginx in turns, each round's order the other way round, so that a machine
        // that speeds up or slows down over the run (it does, by ±15 %) favours neither.
        let mut pairs = Vec::new();
        let group = nginx.child.id();
        for (scheme, port, theirs) in [("HTTP", http, nginx.http), ("HTTPS", https, nginx.https)] {
            let ours = format!("{}://127.0.0.1:{port}/", scheme.to_lowercase());
            let theirs = format!("{}://127.0.0.1:{theirs}/", scheme.to_lowercase());
            let capstan = || measured(&ours, seconds, || ingress_cpu(port));
            let nginx = || measured(&theirs, seconds, || group_cpu(group));
            let turns: Vec<(Load, Load)> = (0..turns)
                .map(|round| {
                    if round % 2 == 0 {
                        let c = capstan();
                        (c, nginx())
                    } else {
                        let n = nginx();
                        (capstan(), n)
                    }
                })
                .collect();
            pairs.push((scheme, turns));
        }
        let nginx_reloads: Vec<Duration> = (0..rounds).map(|i| nginx.reconfigure(&format!("n{i}.example"))).collect();
        (direct, pairs, nginx_reloads)
    })
    .await
    .unwrap();
    let (direct, pairs, mut nginx_reloads) = report;

    // Reconfiguration: a host added to the Ingress in the store, until the ingress answers it.
    let mut capstan_reloads = Vec::new();
    for i in 0..rounds {
        let host = format!("r{i}.example");
        let t = Instant::now();
        d.objects
            .modify(kind("ingresses"), "bench", "echo", false, |o| {
                o["spec"]["rules"].as_array_mut().unwrap().push(rule(&host));
                true
            })
            .await
            .unwrap();
        capstan_reloads.push(tokio::task::spawn_blocking(move || wait_for(ingress, &host, t)).await.unwrap());
    }

    println!(
        "ingress under wrk -t2 -c32 with keep-alive, two backend pods (KEEP_ALIVE test app); {turns} turns of {seconds} s each for Capstan and nginx, in alternating order:"
    );
    let line = |name: &str, l: &Load| {
        let cpu = l
            .cpu
            .map(|(user, kernel)| format!("  CPU per request {user:.1} µs user + {kernel:.1} µs kernel"))
            .unwrap_or_default();
        println!(
            "  {name:<24} {:>9.0} req/s  p50 {:>8}  p99 {:>8}  errors {}{cpu}",
            l.rps,
            ms(l.p50),
            ms(l.p99),
            l.errors
        )
    };
    line("direct to one pod", &direct);
    for (scheme, turns) in &pairs {
        for (c, n) in turns {
            line(&format!("Capstan ingress, {scheme}"), c);
            line(&format!("nginx, {scheme}"), n);
        }
    }
    for (scheme, turns) in &pairs {
        let (c, n) = (Side::of(turns.iter().map(|t| &t.0)), Side::of(turns.iter().map(|t| &t.1)));
        println!(
            "  {scheme}: the proxy's CPU per request, user + kernel: Capstan {:.1} + {:.1} µs, nginx {:.1} + {:.1} µs",
            c.cpu.0, c.cpu.1, n.cpu.0, n.cpu.1
        );
        println!(
            "  {scheme}: Capstan {:.0} vs nginx {:.0} req/s = {:.2}x (target >= 1.0x: {}), p99 (median of the turns) {} vs {} (target <= nginx: {})",
            c.rps,
            n.rps,
            c.rps / n.rps,
            if c.rps >= n.rps { "met" } else { "missed" },
            ms(c.p99),
            ms(n.p99),
            if c.p99 <= n.p99 { "met" } else { "missed" },
        );
    }
    let (c50, cmax) = (percentile(&mut capstan_reloads, 0.5), percentile(&mut capstan_reloads, 1.0));
    println!(
        "reconfiguration, {rounds} rounds (change written → new host answered): Capstan p50 {} max {}; nginx -s reload p50 {} max {}; target < 100 ms: {}",
        ms(c50),
        ms(cmax),
        ms(percentile(&mut nginx_reloads, 0.5)),
        ms(percentile(&mut nginx_reloads, 1.0)),
        if cmax < Duration::from_millis(100) { "met" } else { "missed" },
    );
    d.objects.delete(kind("ingresses"), "bench", "echo", None).await.unwrap();
    one.stop().await;
}
