//! Capstan's ingress: Ingress routes served by an HTTP(S) proxy on every node, straight to the
//! ready endpoints of their Services (on any node, through the pod network).
//!
//! The pure core: [`table`] (the rules every listener reads), [`ingresses`] and [`gateway`]
//! (Ingresses and the Gateway API objects into rules, with what to report), [`backends`] (Service
//! ports to endpoints), [`framing`] (HTTP/1.1 heads and bodies for the fast path); the edges:
//! [`serve`] (the listeners and hyper's relay), [`fast`] (the HTTP/1.1 fast path), [`upstream`] (the
//! connections to the backends), [`tls`] (key pairs) and [`watch`] (the loop that keeps the
//! tables in line with the API).

pub mod backends;
pub mod fast;
pub mod framing;
pub mod gateway;
pub mod ingresses;
pub mod serve;
pub mod table;
pub mod tls;
pub mod upstream;
pub mod watch;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tokio::net::TcpSocket;
use tokio::sync::watch as channel;
use tokio_util::sync::CancellationToken;

pub use serve::Limits;

/// Where the ingress listens and what it allows.
#[derive(Clone, Debug)]
pub struct IngressConfig {
    /// The plain HTTP listener (HTTP/1.1 and h2c); `None`: off.
    pub http: Option<SocketAddr>,
    /// The HTTPS listener; `None`: off.
    pub https: Option<SocketAddr>,
    pub limits: Limits,
}

impl Default for IngressConfig {
    fn default() -> IngressConfig {
        IngressConfig {
            http: Some(SocketAddr::from(([0, 0, 0, 0], 80))),
            https: Some(SocketAddr::from(([0, 0, 0, 0], 443))),
            limits: Limits::default(),
        }
    }
}

/// A running ingress.
pub struct Ingress {
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    applied: channel::Receiver<u64>,
    /// The addresses bound (the port chosen when 0 was asked for).
    pub http: Option<SocketAddr>,
    pub https: Option<SocketAddr>,
    /// Listeners that could not be bound (a port another process holds): said, not fatal — the
    /// other listener and the node go on.
    pub problems: Vec<String>,
}

impl std::fmt::Debug for Ingress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ingress")
            .field("http", &self.http)
            .field("https", &self.https)
            .finish()
    }
}

/// Binds `address` for every worker thread, or says why not.
fn bind(what: &str, address: Option<SocketAddr>, problems: &mut Vec<String>) -> Option<(SocketAddr, Vec<TcpSocket>)> {
    let address = address?;
    match serve::bind(address) {
        Ok(b) => Some(b),
        Err(e) => {
            let problem = format!("the ingress's {what} listener cannot bind {address}: {e}");
            tracing::error!("{problem}");
            problems.push(problem);
            None
        }
    }
}

impl Ingress {
    /// Binds the listeners and starts following the API.
    pub async fn start(client: kube::Client, config: IngressConfig) -> Ingress {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let shared = serve::Shared::new(config.limits, Some(Arc::new(tls::default_certificate())));
        let stop = CancellationToken::new();
        let mut problems = Vec::new();
        let http = bind("HTTP", config.http, &mut problems);
        let https = bind("HTTPS", config.https, &mut problems);
        let (applied_tx, applied) = channel::channel(0);
        let mut ingress = Ingress {
            stop: stop.clone(),
            tasks: Vec::new(),
            applied,
            http: http.as_ref().map(|(a, _)| *a),
            https: https.as_ref().map(|(a, _)| *a),
            problems,
        };
        let port = |a: Option<SocketAddr>| a.map(|a| a.port());
        if let Some((at, sockets)) = http {
            serve::spawn_workers(sockets, at.port(), false, &shared, &stop);
        }
        if let Some((at, sockets)) = https {
            serve::spawn_workers(sockets, at.port(), true, &shared, &stop);
        }
        let listening = watch::Listening {
            ingress: ingresses::IngressPorts {
                http: port(ingress.http),
                https: port(ingress.https),
            },
            address: config.http.or(config.https).map(|a| a.ip()).unwrap_or(IpAddr::from([0, 0, 0, 0])),
        };
        ingress
            .tasks
            .push(tokio::spawn(watch::follow(client, shared, listening, applied_tx, stop)));
        tracing::info!(http = ?ingress.http, https = ?ingress.https, "ingress listening");
        ingress
    }

    /// Counts the routing tables swapped in; changes each time one is.
    pub fn applied(&self) -> channel::Receiver<u64> {
        self.applied.clone()
    }

    /// Stops accepting; open connections finish on their own.
    pub async fn shutdown(self) {
        self.stop.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
    }
}
