//! The HTTPS listener shared by the API server and the node agent's endpoint: accepts TCP
//! connections, completes TLS with a cluster-signed certificate, and hands each connection
//! (HTTP/1.1 or HTTP/2) to the router until shutdown — within a budget, so that clients that
//! never send, send slowly or open thousands of sockets cannot stop it answering others.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use http::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// The host's address on its default route (no packet is sent), else loopback: where a server
/// listening on every interface is reached from elsewhere.
pub fn default_ip() -> std::net::IpAddr {
    let probe = std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| s.connect("10.255.255.255:9").map(|_| s))
        .and_then(|s| s.local_addr());
    match probe {
        Ok(a) if !a.ip().is_unspecified() => a.ip(),
        _ => std::net::IpAddr::from([127, 0, 0, 1]),
    }
}

/// What one listener allows. The defaults follow kube-apiserver's where it has them.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Time from accepting a connection until its TLS handshake is done.
    pub handshake: Duration,
    /// Time for a request's headers to arrive (Go's ReadHeaderTimeout; slowloris clients are
    /// closed), and for a new connection's first request.
    pub header: Duration,
    /// How long a connection with no request in flight is kept (kube-apiserver: 90 s).
    pub idle: Duration,
    /// Connections served at once; more wait in the kernel's backlog. Also kept well below the
    /// process's file-descriptor limit.
    pub connections: usize,
    /// Streams one HTTP/2 connection may have in flight (Go's default is 250).
    pub streams_per_connection: u32,
    /// Requests in flight over all connections, watches and log streams excepted; more are
    /// answered 429 with Retry-After (kube-apiserver's --max-requests-inflight).
    pub in_flight: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            handshake: Duration::from_secs(10),
            header: Duration::from_secs(10),
            idle: Duration::from_secs(90),
            connections: 4096,
            streams_per_connection: 250,
            in_flight: 400,
        }
    }
}

/// Most open files this process may have (the soft limit), read from /proc.
fn file_limit() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Serves `router` over TLS on `listener` until `shutdown` is cancelled, with default limits.
pub async fn serve(listener: TcpListener, tls: Arc<rustls::ServerConfig>, router: Router, shutdown: CancellationToken) {
    serve_with(listener, tls, router, shutdown, Limits::default()).await
}

/// Serves `router` over TLS on `listener` until `shutdown` is cancelled.
pub async fn serve_with(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: Router,
    shutdown: CancellationToken,
    limits: Limits,
) {
    let acceptor = TlsAcceptor::from(tls);
    // Keep room for the store, Docker, netlink and the files the process itself opens.
    let connections = file_limit().map_or(limits.connections, |n| limits.connections.min(n.saturating_sub(256).max(16)));
    let slots = Arc::new(Semaphore::new(connections));
    let in_flight = Arc::new(Semaphore::new(limits.in_flight));
    let mut accept_errors = crate::ratelog::RateLimitedLog::new(Duration::from_secs(10));
    let mut backoff = Duration::ZERO;
    loop {
        let slot = tokio::select! {
            _ = shutdown.cancelled() => return,
            slot = slots.clone().acquire_owned() => slot.expect("never closed"),
        };
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => {
                    backoff = Duration::ZERO;
                    a
                }
                Err(e) => {
                    // Out of file descriptors, or the like: retrying at once would spin.
                    backoff = (backoff * 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
                    accept_errors.warn(|suppressed| tracing::warn!(error = %e, suppressed, "accepting a connection failed; backing off"));
                    tokio::time::sleep(backoff).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let activity = Arc::new(Activity::new());
        let in_flight = in_flight.clone();
        let router = router.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let tls = match tokio::time::timeout(limits.handshake, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(peer = %peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(peer = %peer, "TLS handshake timed out");
                    return;
                }
            };
            let client = Arc::new(Peer {
                address: peer,
                certificate: tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|c| c.as_ref().to_vec()),
                subject: std::sync::OnceLock::new(),
            });
            let service = tower::ServiceBuilder::new()
                .layer(tower::layer::layer_fn({
                    let activity = activity.clone();
                    move |inner| Tracked {
                        inner,
                        activity: activity.clone(),
                        in_flight: in_flight.clone(),
                        peer: client.clone(),
                    }
                }))
                .service(router);
            let service = TowerToHyperService::new(service);
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header)
                .max_buf_size(64 << 10);
            builder
                .http2()
                .timer(TokioTimer::new())
                .max_concurrent_streams(limits.streams_per_connection)
                .max_header_list_size(64 << 10)
                .keep_alive_interval(Some(Duration::from_secs(30)))
                .keep_alive_timeout(Duration::from_secs(20));
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
            tokio::pin!(conn);
            let mut check = tokio::time::interval(Duration::from_secs(1).min(limits.header));
            loop {
                tokio::select! {
                    _ = conn.as_mut() => return,
                    _ = shutdown.cancelled() => break,
                    _ = check.tick() => {
                        // Idle: no request in flight since the last one ended (or since the
                        // connection opened, for one that never sent a request).
                        if let Some(quiet) = activity.quiet_for() {
                            let limit = if activity.served() { limits.idle } else { limits.header };
                            if quiet >= limit {
                                break;
                            }
                        }
                    }
                }
            }
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
        });
    }
}

/// What a connection is doing: requests in flight, and since when none has been.
struct Activity {
    opened: Instant,
    in_flight: AtomicUsize,
    requests: AtomicUsize,
    /// Milliseconds after `opened` at which the last request in flight ended.
    quiet_since_ms: AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            opened: Instant::now(),
            in_flight: AtomicUsize::new(0),
            requests: AtomicUsize::new(0),
            quiet_since_ms: AtomicU64::new(0),
        }
    }

    /// How long no request has been in flight; None while one is.
    fn quiet_for(&self) -> Option<Duration> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let since = Duration::from_millis(self.quiet_since_ms.load(Ordering::Acquire));
        Some(self.opened.elapsed().saturating_sub(since))
    }

    fn served(&self) -> bool {
        self.requests.load(Ordering::Acquire) > 0
    }
}

/// Marks a request in flight on its connection until its response body is done, and holds one
/// of the server's in-flight permits meanwhile (long-running requests excepted).
#[derive(Clone)]
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
    in_flight: Arc<Semaphore>,
    peer: Arc<Peer>,
}

/// The other end of a connection, as each of its requests carries it (an extension): its
/// address, and the certificate it presented, verified against the listener's client CA.
#[derive(Debug)]
pub struct Peer {
    pub address: std::net::SocketAddr,
    /// DER of the leaf certificate, when the client presented one.
    pub certificate: Option<Vec<u8>>,
    /// Its subject, read once for all the connection's requests.
    subject: std::sync::OnceLock<Option<crate::tls::CertSubject>>,
}

impl Peer {
    /// Who the client certificate names, if there is one.
    pub fn subject(&self) -> Option<&crate::tls::CertSubject> {
        self.subject
            .get_or_init(|| self.certificate.as_deref().and_then(crate::tls::cert_subject))
            .as_ref()
    }
}

/// Requests that stay open by design: watches, log follows, upgrades (exec, port-forward).
fn long_running(req: &Request<hyper::body::Incoming>) -> bool {
    let query = req.uri().query().unwrap_or_default();
    query.split('&').any(|p| p == "watch=true" || p == "watch=1" || p == "follow=true")
        || req.uri().path().contains("/watch/")
        || req.headers().contains_key(http::header::UPGRADE)
}

impl<S> tower::Service<Request<hyper::body::Incoming>> for Tracked<S>
where
    S: tower::Service<Request<hyper::body::Incoming>, Response = Response<Body>, Error = std::convert::Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Response<Body>, std::convert::Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<hyper::body::Incoming>) -> Self::Future {
        req.extensions_mut().insert(self.peer.clone());
        let guard = InFlight::enter(self.activity.clone());
        let permit = if long_running(&req) {
            None
        } else {
            match self.in_flight.clone().try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => return Box::pin(async move { Ok(too_many_requests(guard)) }),
            }
        };
        let fut = self.inner.call(req);
        Box::pin(async move {
            let response = fut.await?;
            Ok(response.map(|body| {
                Body::new(Guarded {
                    body,
                    _guard: guard,
                    _permit: permit,
                })
            }))
        })
    }
}

fn too_many_requests(guard: InFlight) -> Response<Body> {
    let body = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"too many requests, please try again later","reason":"TooManyRequests","details":{"retryAfterSeconds":1},"code":429}"#;
    let mut response = Response::new(Body::new(Guarded {
        body: Body::from(body),
        _guard: guard,
        _permit: None,
    }));
    *response.status_mut() = http::StatusCode::TOO_MANY_REQUESTS;
    let headers = response.headers_mut();
    headers.insert(http::header::RETRY_AFTER, http::HeaderValue::from_static("1"));
    headers.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    response
}

/// One request in flight on a connection; the connection goes quiet when the last one ends.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn enter(activity: Arc<Activity>) -> InFlight {
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        activity.requests.fetch_add(1, Ordering::AcqRel);
        InFlight(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.0;
        a.quiet_since_ms.store(a.opened.elapsed().as_millis() as u64, Ordering::Release);
        a.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its request counted until the body is done or dropped.
struct Guarded {
    body: Body,
    _guard: InFlight,
    _permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl http_body::Body for Guarded {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
