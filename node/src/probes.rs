//! Container probes as Kubernetes defines them: exec (a command in the container), httpGet
//! (2xx or 3xx from the pod's address), tcpSocket (a connection opens); with the initial delay,
//! period, timeout and success / failure thresholds (defaults: period 10 s, timeout 1 s,
//! failure threshold 3, success threshold 1).

use std::time::Duration;

use capstan_containers::Runtime;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Exec(Vec<String>),
    Http {
        path: String,
        port: u16,
        headers: Vec<(String, String)>,
    },
    Tcp {
        port: u16,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    pub action: Action,
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

/// A named port of the container, or a number.
fn port(v: &Value, container: &Value) -> Option<u16> {
    match v {
        Value::Number(n) => n.as_u64().map(|p| p as u16),
        Value::String(name) => container["ports"].as_array()?.iter().find(|p| p["name"] == name.as_str())?["containerPort"]
            .as_u64()
            .map(|p| p as u16),
        _ => None,
    }
}

impl Probe {
    /// Reads a probe of `container` (None if absent or without a known action).
    pub fn parse(probe: &Value, container: &Value) -> Option<Probe> {
        if !probe.is_object() {
            return None;
        }
        let action = if let Some(cmd) = probe["exec"]["command"].as_array() {
            Action::Exec(cmd.iter().filter_map(|c| c.as_str().map(str::to_owned)).collect())
        } else if probe["httpGet"].is_object() {
            let h = &probe["httpGet"];
            Action::Http {
                path: h["path"].as_str().unwrap_or("/").to_owned(),
                port: port(&h["port"], container)?,
                headers: h["httpHeaders"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|x| {
                        (
                            x["name"].as_str().unwrap_or_default().to_owned(),
                            x["value"].as_str().unwrap_or_default().to_owned(),
                        )
                    })
                    .collect(),
            }
        } else if probe["tcpSocket"].is_object() {
            Action::Tcp {
                port: port(&probe["tcpSocket"]["port"], container)?,
            }
        } else {
            return None;
        };
        let secs = |k: &str, d: u64| Duration::from_secs(probe[k].as_u64().unwrap_or(d));
        Some(Probe {
            action,
            initial_delay: secs("initialDelaySeconds", 0),
            period: secs("periodSeconds", 10).max(Duration::from_secs(1)),
            timeout: secs("timeoutSeconds", 1).max(Duration::from_secs(1)),
            success_threshold: probe["successThreshold"].as_u64().unwrap_or(1).max(1) as u32,
            failure_threshold: probe["failureThreshold"].as_u64().unwrap_or(3).max(1) as u32,
        })
    }

    /// Runs the probe once; a failure says why, in the kubelet's words (it goes into the
    /// `Unhealthy` event).
    pub async fn run(&self, runtime: &dyn Runtime, container_id: &str, pod_ip: &str) -> Result<(), String> {
        match &self.action {
            Action::Exec(cmd) => match runtime.exec(container_id, cmd, self.timeout).await {
                Ok(r) if r.exit_code == 0 => Ok(()),
                Ok(r) => Err(format!(
                    "command {:?} exited with {}: {}",
                    cmd.join(" "),
                    r.exit_code,
                    r.output.trim()
                )),
                Err(e) => Err(format!("command {:?} failed: {e}", cmd.join(" "))),
            },
            _ => self.run_network(pod_ip).await,
        }
    }

    /// Runs a TCP or HTTP probe against the pod's address.
    async fn run_network(&self, pod_ip: &str) -> Result<(), String> {
        match &self.action {
            Action::Exec(_) => Err("an exec probe runs in the container, not over the network".into()),
            Action::Tcp { port } => match tokio::time::timeout(self.timeout, TcpStream::connect((pod_ip, *port))).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(format!("dial tcp {pod_ip}:{port}: connect: {}", io_reason(&e))),
                Err(_) => Err(format!("dial tcp {pod_ip}:{port}: i/o timeout")),
            },
            Action::Http { path, port, headers } => {
                let url = format!("http://{pod_ip}:{port}{path}");
                match tokio::time::timeout(self.timeout, http_get(pod_ip, *port, path, headers)).await {
                    Ok(Ok(code)) if (200..400).contains(&code) => Ok(()),
                    Ok(Ok(code)) => Err(format!("HTTP probe failed with statuscode: {code}")),
                    Ok(Err(why)) => Err(format!("Get {url:?}: {why}")),
                    Err(_) => Err(format!(
                        "Get {url:?}: context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
                    )),
                }
            }
        }
    }
}

/// An IO error as Go's net package says it (what users of the kubelet know).
fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
        std::io::ErrorKind::ConnectionReset => "connection reset by peer".into(),
        _ => e.to_string(),
    }
}

/// Most bytes of a response's status line and headers the prober reads.
const MAX_HEAD: usize = 64 << 10;
/// Redirects followed to the same host, as the kubelet's prober does.
const MAX_REDIRECTS: usize = 10;

/// GETs `path` and returns the status code, following redirects to the same host and port.
/// The answer is read until its headers end, however the server splits it into writes.
async fn http_get(ip: &str, port: u16, path: &str, headers: &[(String, String)]) -> Result<u16, String> {
    let mut path = path.to_owned();
    for _ in 0..=MAX_REDIRECTS {
        let (code, location) = http_request(ip, port, &path, headers).await?;
        let Some(location) = location.filter(|_| (300..400).contains(&code)) else {
            return Ok(code);
        };
        // Another host: the kubelet stops following and counts the redirect as success.
        match same_host_path(&location, ip, port) {
            Some(next) => path = next,
            None => return Ok(code),
        }
    }
    Err(format!("stopped after {MAX_REDIRECTS} redirects"))
}

/// The path of a redirect target on this same host and port, if it is one.
fn same_host_path(location: &str, ip: &str, port: u16) -> Option<String> {
    if location.starts_with('/') {
        return Some(location.to_owned());
    }
    let rest = location.strip_prefix("http://")?;
    let (host, path) = rest.split_once('/').map_or((rest, "/".to_owned()), |(h, p)| (h, format!("/{p}")));
    let same = host == format!("{ip}:{port}") || (port == 80 && host == ip);
    same.then_some(path)
}

async fn http_request(ip: &str, port: u16, path: &str, headers: &[(String, String)]) -> Result<(u16, Option<String>), String> {
    let mut s = TcpStream::connect((ip, port))
        .await
        .map_err(|e| format!("dial tcp {ip}:{port}: connect: {}", io_reason(&e)))?;
    let mut req =
        format!("GET {path} HTTP/1.1\r\nHost: {ip}:{port}\r\nUser-Agent: kube-probe/1.33\r\nAccept: */*\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.map_err(|e| io_reason(&e))?;
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 4096];
    let end = loop {
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        if head.len() > MAX_HEAD {
            return Err(format!("the response's headers exceed {MAX_HEAD} bytes"));
        }
        let n = s.read(&mut buf).await.map_err(|e| io_reason(&e))?;
        if n == 0 {
            return Err(if head.is_empty() { "EOF".into() } else { "unexpected EOF".into() });
        }
        head.extend_from_slice(&buf[..n]);
    };
    parse_head(&head[..end])
}

/// The status code and Location of a response head (status line and headers, no blank line).
fn parse_head(head: &[u8]) -> Result<(u16, Option<String>), String> {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let status = lines.next().unwrap_or_default();
    let mut parts = status.splitn(3, ' ');
    let (version, code) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    let code: u16 = match (version.starts_with("HTTP/1."), code.parse()) {
        (true, Ok(c)) if (100..600).contains(&c) => c,
        _ => return Err(format!("malformed HTTP response {status:?}")),
    };
    let location = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("location"))
        .map(|(_, v)| v.trim().to_owned());
    Ok((code, location))
}

/// How soon an eager probe looks again before its first success.
const EAGER_RETRY: Duration = Duration::from_millis(100);

/// The running state of one probe of one container.
#[derive(Clone, Debug)]
pub struct ProbeState {
    pub probe: Probe,
    successes: u32,
    failures: u32,
    /// When the next probe that counts is due (Kubernetes' schedule).
    regular: Instant,
    /// When the next probe runs: the regular one, or an eager look before it.
    next: Instant,
    /// Until the first success, look again every [`EAGER_RETRY`] between regular probes; those
    /// looks count only when they succeed. A container that starts listening 200 ms after it
    /// started is then Ready 200 ms later, not a whole period later, and failures are counted
    /// on Kubernetes' schedule exactly as before.
    eager: bool,
    succeeded: bool,
    /// The verdict after the thresholds: None until decided.
    pub result: Option<bool>,
}

impl ProbeState {
    pub fn new(probe: Probe, started: Instant) -> ProbeState {
        let regular = started + probe.initial_delay;
        ProbeState {
            probe,
            successes: 0,
            failures: 0,
            regular,
            next: regular,
            eager: false,
            succeeded: false,
            result: None,
        }
    }

    /// The same, looking again soon until the first success (readiness and startup probes).
    pub fn eager(self) -> ProbeState {
        ProbeState { eager: true, ..self }
    }

    pub fn due(&self, now: Instant) -> bool {
        now >= self.next
    }

    pub fn next_at(&self) -> Instant {
        self.next
    }

    /// Records one outcome; returns the verdict when it changes.
    pub fn record(&mut self, ok: bool, now: Instant) -> Option<bool> {
        let looking_early = self.eager && !self.succeeded;
        if !ok && looking_early && now < self.regular {
            // An eager look that failed: not counted.
            self.next = (now + EAGER_RETRY).min(self.regular);
            return None;
        }
        self.regular = now + self.probe.period;
        self.succeeded |= ok;
        self.next = if self.eager && !self.succeeded {
            (now + EAGER_RETRY).min(self.regular)
        } else {
            self.regular
        };
        if ok {
            self.successes += 1;
            self.failures = 0;
            if self.successes >= self.probe.success_threshold && self.result != Some(true) {
                self.result = Some(true);
                return Some(true);
            }
        } else {
            self.failures += 1;
            self.successes = 0;
            if self.failures >= self.probe.failure_threshold && self.result != Some(false) {
                self.result = Some(false);
                return Some(false);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn probes_parse_with_kubernetes_defaults() {
        let c = json!({"ports": [{"name": "http", "containerPort": 8080}]});
        let p = Probe::parse(&json!({"httpGet": {"path": "/healthz", "port": "http"}}), &c).unwrap();
        assert_eq!(
            p.action,
            Action::Http {
                path: "/healthz".into(),
                port: 8080,
                headers: vec![]
            }
        );
        assert_eq!(
            (p.period, p.timeout, p.failure_threshold, p.success_threshold),
            (Duration::from_secs(10), Duration::from_secs(1), 3, 1)
        );
        assert!(Probe::parse(&json!({"httpGet": {"port": "nope"}}), &c).is_none());
        assert_eq!(
            Probe::parse(&json!({"tcpSocket": {"port": 6379}}), &c).unwrap().action,
            Action::Tcp { port: 6379 }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn thresholds_decide_the_verdict() {
        let probe = Probe {
            action: Action::Tcp { port: 1 },
            initial_delay: Duration::from_secs(5),
            period: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            success_threshold: 1,
            failure_threshold: 3,
        };
        let t0 = Instant::now();
        let mut s = ProbeState::new(probe, t0);
        assert!(!s.due(t0));
        assert!(s.due(t0 + Duration::from_secs(5)));
        assert_eq!(s.record(true, t0), Some(true));
        assert_eq!(s.record(false, t0), None);
        assert_eq!(s.record(false, t0), None);
        assert_eq!(s.record(false, t0), Some(false));
        assert_eq!(s.record(true, t0), Some(true));
    }

    #[tokio::test(start_paused = true)]
    async fn an_eager_probe_looks_again_soon_but_counts_failures_on_schedule() {
        let probe = Probe {
            action: Action::Tcp { port: 1 },
            initial_delay: Duration::ZERO,
            period: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            success_threshold: 1,
            failure_threshold: 3,
        };
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut s = ProbeState::new(probe.clone(), t0).eager();
        assert!(s.due(t0));
        // The regular probe at 0 fails and counts; the looks in between do not.
        assert_eq!(s.record(false, t0), None);
        assert_eq!(s.next_at(), ms(100));
        assert_eq!(s.record(false, ms(100)), None);
        assert_eq!(s.record(false, ms(200)), None);
        // The second and third regular probes fail: the verdict comes on Kubernetes' schedule.
        assert_eq!(s.record(false, ms(1000)), None);
        assert_eq!(s.record(false, ms(2000)), Some(false));
        // Up at 2.3 s: seen at the next look, not at 3 s.
        assert_eq!(s.next_at(), ms(2100));
        assert_eq!(s.record(false, ms(2100)), None);
        assert_eq!(s.record(false, ms(2200)), None);
        assert_eq!(s.record(true, ms(2300)), Some(true));
        // From then on, the period.
        assert_eq!(s.next_at(), ms(3300));
        assert_eq!(s.record(false, ms(3300)), None);
        assert_eq!(s.next_at(), ms(4300));

        // Without eagerness: the period between probes, as before.
        let mut plain = ProbeState::new(probe, t0);
        assert_eq!(plain.record(false, t0), None);
        assert_eq!(plain.next_at(), ms(1000));
    }

    /// A server on loopback that answers every connection with `answer`, written `chunk` bytes
    /// at a time with a pause between writes (as the example's frontend splits its status line).
    async fn trickling_server(answer: &'static [u8], chunk: usize) -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let _ = s.read(&mut buf).await;
                    for part in answer.chunks(chunk) {
                        if s.write_all(part).await.is_err() {
                            return;
                        }
                        let _ = s.flush().await;
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                });
            }
        });
        port
    }

    #[tokio::test]
    async fn the_status_line_is_read_however_the_server_splits_it() {
        let ok = trickling_server(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 1).await;
        for _ in 0..5 {
            assert_eq!(http_get("127.0.0.1", ok, "/healthz", &[]).await, Ok(200));
        }
        let split = trickling_server(b"HTTP/1.1 \r\n", 9).await;
        assert!(
            http_get("127.0.0.1", split, "/", &[]).await.is_err(),
            "a status line with no code is malformed"
        );
        let failing = trickling_server(b"HTTP/1.1 503 Service Unavailable\r\n\r\n", 3).await;
        assert_eq!(http_get("127.0.0.1", failing, "/", &[]).await, Ok(503));
        // Redirects elsewhere count as success, as in the kubelet.
        let away = trickling_server(b"HTTP/1.1 302 Found\r\nLocation: http://example.invalid/\r\n\r\n", 5).await;
        assert_eq!(http_get("127.0.0.1", away, "/", &[]).await, Ok(302));
    }

    #[test]
    fn redirects_are_followed_only_on_the_same_host() {
        assert_eq!(same_host_path("/next", "10.0.0.1", 8080), Some("/next".into()));
        assert_eq!(same_host_path("http://10.0.0.1:8080/x", "10.0.0.1", 8080), Some("/x".into()));
        assert_eq!(same_host_path("http://10.0.0.1/x", "10.0.0.1", 80), Some("/x".into()));
        assert_eq!(same_host_path("http://other:8080/x", "10.0.0.1", 8080), None);
        assert_eq!(parse_head(b"HTTP/1.0 301 Moved\r\nlocation: /a"), Ok((301, Some("/a".into()))));
        assert!(parse_head(b"SSH-2.0-OpenSSH").is_err());
    }

    #[tokio::test]
    async fn failures_say_why_in_the_kubelets_words() {
        let refused = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let probe = |action| Probe {
            action,
            initial_delay: Duration::ZERO,
            period: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            success_threshold: 1,
            failure_threshold: 1,
        };
        let tcp = probe(Action::Tcp { port: refused }).run_network("127.0.0.1").await;
        assert_eq!(tcp, Err(format!("dial tcp 127.0.0.1:{refused}: connect: connection refused")));
        let failing = trickling_server(b"HTTP/1.1 503 Service Unavailable\r\n\r\n", 64).await;
        let http = probe(Action::Http {
            path: "/healthz".into(),
            port: failing,
            headers: vec![],
        })
        .run_network("127.0.0.1")
        .await;
        assert_eq!(http, Err("HTTP probe failed with statuscode: 503".into()));
    }
}
