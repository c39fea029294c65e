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

    /// Runs the probe once: true on success.
    pub async fn run(&self, runtime: &dyn Runtime, container_id: &str, pod_ip: &str) -> bool {
        match &self.action {
            Action::Exec(cmd) => runtime.exec(container_id, cmd, self.timeout).await.is_ok_and(|r| r.exit_code == 0),
            Action::Tcp { port } => tokio::time::timeout(self.timeout, TcpStream::connect((pod_ip, *port)))
                .await
                .is_ok_and(|r| r.is_ok()),
            Action::Http { path, port, headers } => tokio::time::timeout(self.timeout, http_get(pod_ip, *port, path, headers))
                .await
                .unwrap_or(false),
        }
    }
}

async fn http_get(ip: &str, port: u16, path: &str, headers: &[(String, String)]) -> bool {
    let Ok(mut s) = TcpStream::connect((ip, port)).await else {
        return false;
    };
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {ip}:{port}\r\nUser-Agent: capstan-probe/1.0\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return false;
    }
    let mut head = [0u8; 32];
    let Ok(n) = s.read(&mut head).await else { return false };
    let line = String::from_utf8_lossy(&head[..n]);
    let code: u16 = line.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (200..400).contains(&code)
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
}
