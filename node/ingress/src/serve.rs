//! The ingress's HTTP edge: a listener for HTTP and one for HTTPS (the certificate chosen by SNI,
//! HTTP/2 over ALPN, h2c and HTTP/1.1 on the plain port); each request routed by the current
//! table straight to a ready endpoint over a pooled connection, with the headers a backend
//! expects behind a proxy, upgrades (WebSocket) relayed, and connection failures of idempotent
//! requests retried on the next endpoint. HTTP/1.1 connections start on the [`fast`] path; this
//! module's hyper path serves HTTP/2 and whatever the fast path hands over.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body, Incoming};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::fast;
use crate::framing::{FORWARDED_FOR, FORWARDED_HOST, FORWARDED_PROTO, HOP_BY_HOP, REAL_IP};
use crate::table::{self, SecretRef, Tables};
use crate::upstream::{Failure, Pool, ProxyBody, Upstream};

/// Limits on what clients may send and how long they may take.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// The most a request's head may take (HTTP/1); larger gets 431.
    pub header_bytes: usize,
    /// The largest request body accepted (by its Content-Length); larger gets 413.
    pub body_bytes: u64,
    /// How long a client may take for its TLS handshake, its first request, and each request's
    /// head (idle keep-alive connections are closed after it too).
    pub header_timeout: Duration,
    /// How long a backend may take to start its answer; then 504.
    pub request_timeout: Duration,
    /// Client connections one listener serves at once; more wait in the kernel's backlog.
    pub connections: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            header_bytes: 64 * 1024,
            body_bytes: 100 * 1024 * 1024,
            header_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(60),
            connections: 4096,
        }
    }
}

/// How long an endpoint that refused a connection is tried last.
const FAILED_FOR: Duration = Duration::from_secs(5);

/// What every connection reads: the table (replaced whole on every change, so open connections
/// keep going), the certificates, and the endpoints that failed a moment ago.
#[derive(Debug)]
pub struct Shared {
    tables: RwLock<Arc<Tables>>,
    certificates: RwLock<Arc<HashMap<SecretRef, Arc<rustls::sign::CertifiedKey>>>>,
    default_certificate: Option<Arc<rustls::sign::CertifiedKey>>,
    failed: Mutex<HashMap<SocketAddrV4, Instant>>,
    /// When the last endpoint failed (ms since `started`; 0: never), so that requests skip the
    /// lock while none has failed lately.
    last_failure: AtomicU64,
    started: Instant,
    pub(crate) limits: Limits,
}

impl Shared {
    pub fn new(limits: Limits, default_certificate: Option<Arc<rustls::sign::CertifiedKey>>) -> Arc<Shared> {
        Arc::new(Shared {
            tables: RwLock::new(Arc::new(Tables::default())),
            certificates: RwLock::new(Arc::new(HashMap::new())),
            default_certificate,
            failed: Mutex::new(HashMap::new()),
            last_failure: AtomicU64::new(0),
            started: Instant::now(),
            limits,
        })
    }

    pub fn tables(&self) -> Arc<Tables> {
        self.tables.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn set_tables(&self, tables: Tables) {
        *self.tables.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(tables);
    }

    pub fn set_certificates(&self, certificates: HashMap<SecretRef, Arc<rustls::sign::CertifiedKey>>) {
        *self.certificates.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(certificates);
    }

    pub(crate) fn recently_failed(&self, endpoint: &SocketAddrV4) -> bool {
        let last = self.last_failure.load(Ordering::Relaxed);
        if last == 0 || self.started.elapsed().as_millis() as u64 > last + FAILED_FOR.as_millis() as u64 {
            return false;
        }
        let failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        failed.get(endpoint).is_some_and(|at| at.elapsed() < FAILED_FOR)
    }

    pub(crate) fn mark_failed(&self, endpoint: SocketAddrV4) {
        let mut failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        failed.retain(|_, at| at.elapsed() < FAILED_FOR);
        failed.insert(endpoint, Instant::now());
        self.last_failure
            .store((self.started.elapsed().as_millis() as u64).max(1), Ordering::Relaxed);
    }
}

/// Chooses the certificate of a port by the client's server name: the one its Ingresses or
/// listeners name for that host, else the default.
#[derive(Debug)]
struct Certificates {
    shared: Arc<Shared>,
    port: u16,
}

impl rustls::server::ResolvesServerCert for Certificates {
    fn resolve(&self, hello: rustls::server::ClientHello<'_>) -> Option<Arc<rustls::sign::CertifiedKey>> {
        let shared = &self.shared;
        let tables = shared.tables();
        let table = tables.ports.get(&self.port).map(|p| &p.table);
        let secret = table.and_then(|t| t.certificate(hello.server_name().unwrap_or_default()));
        let named = secret.and_then(|s| shared.certificates.read().unwrap_or_else(|p| p.into_inner()).get(s).cloned());
        named.or_else(|| shared.default_certificate.clone())
    }
}

/// The TLS settings of an HTTPS listener on `port`.
pub fn tls_config(shared: &Arc<Shared>, port: u16) -> Arc<rustls::ServerConfig> {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Certificates {
            shared: shared.clone(),
            port,
        }));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

/// The listener threads: one per core.
fn workers() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// Binds `address` once per worker thread (SO_REUSEPORT: the kernel spreads the connections);
/// the address bound (the port chosen when 0 was asked for) and the sockets.
pub fn bind(address: SocketAddr) -> std::io::Result<(SocketAddr, Vec<TcpSocket>)> {
    let socket = |at: SocketAddr| -> std::io::Result<TcpSocket> {
        let s = if at.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
        s.set_reuseaddr(true)?;
        s.set_reuseport(true)?;
        s.bind(at)?;
        Ok(s)
    };
    let first = socket(address)?;
    let at = first.local_addr()?;
    let mut all = vec![first];
    for _ in 1..workers() {
        all.push(socket(at)?);
    }
    Ok((at, all))
}

/// The open connections of a listener's worker threads, kept even: the kernel spreads
/// connections over the SO_REUSEPORT sockets by a hash of their addresses, which among a few
/// dozen keep-alive connections can leave one thread with half as many again as another (and its
/// clients waiting longer), so a thread that accepts a connection while another holds fewer
/// passes it there (as Envoy's exact connection balance does).
#[derive(Debug)]
pub struct Spread {
    open: Vec<AtomicUsize>,
}

impl Spread {
    fn new(threads: usize) -> Spread {
        Spread {
            open: (0..threads).map(|_| AtomicUsize::new(0)).collect(),
        }
    }

    /// The thread that serves a connection thread `me` accepted: the one with the fewest open,
    /// `me` among equals; counted at once.
    fn choose(&self, me: usize) -> usize {
        let count = |i: usize| self.open[i].load(Ordering::Relaxed);
        let least = (0..self.open.len()).min_by_key(|&i| (count(i), i != me)).unwrap_or(me);
        self.open[least].fetch_add(1, Ordering::Relaxed);
        least
    }

    /// Each thread's open connections.
    pub fn open(&self) -> Vec<usize> {
        self.open.iter().map(|n| n.load(Ordering::Relaxed)).collect()
    }
}

/// A connection counted on its thread until it ends.
struct Counted {
    spread: Arc<Spread>,
    thread: usize,
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.spread.open[self.thread].fetch_sub(1, Ordering::Relaxed);
    }
}

/// A connection passed from the thread that accepted it to the one that serves it, already
/// counted there (the count goes with it, also when it is lost on the way).
type Passed = (std::net::TcpStream, SocketAddr, Counted);

/// A worker thread's place among its listener's: its number, the counts, and the other threads'
/// inboxes for connections.
struct Worker {
    me: usize,
    spread: Arc<Spread>,
    inboxes: Arc<Vec<mpsc::UnboundedSender<Passed>>>,
    inbox: mpsc::UnboundedReceiver<Passed>,
}

/// Serves a listener's sockets, each on a thread with a runtime of its own (as nginx runs a
/// worker per core): a connection, its requests and its pooled backend connections stay on one
/// thread (a new connection may be passed once, see [`Spread`]). They stop with `stop`.
pub fn spawn_workers(sockets: Vec<TcpSocket>, port: u16, tls: bool, shared: &Arc<Shared>, stop: &CancellationToken) -> Arc<Spread> {
    let count = sockets.len();
    let spread = Arc::new(Spread::new(count));
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..count).map(|_| mpsc::unbounded_channel()).unzip();
    let inboxes = Arc::new(senders);
    for ((i, socket), inbox) in sockets.into_iter().enumerate().zip(receivers) {
        let (shared, stop) = (shared.clone(), stop.clone());
        let worker = Worker {
            me: i,
            spread: spread.clone(),
            inboxes: inboxes.clone(),
            inbox,
        };
        let name = format!("ingress-{port}-{i}");
        let started = std::thread::Builder::new().name(name).spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
            match runtime {
                Ok(rt) => rt.block_on(async move {
                    match socket.listen(1024) {
                        Ok(l) => {
                            let connections = (shared.limits.connections / count).max(1);
                            serve(l, port, tls, connections, worker, shared, stop).await
                        }
                        Err(e) => tracing::error!(port, error = %e, "ingress: listen failed"),
                    }
                }),
                Err(e) => tracing::error!(error = %e, "ingress: cannot start a worker runtime"),
            }
        });
        if let Err(e) = started {
            tracing::error!(error = %e, "ingress: cannot start a worker thread");
        }
    }
    spread
}

/// Accepts up to `connections` at once on `listener`, and those other threads pass, until `stop`
/// (then stops accepting; open connections finish on their own), with TLS when `tls`; requests
/// are routed by the table of `port`.
async fn serve(
    listener: TcpListener,
    port: u16,
    tls: bool,
    connections: usize,
    mut worker: Worker,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    let acceptor = tls.then(|| tokio_rustls::TlsAcceptor::from(tls_config(&shared, port)));
    // The backend connections are this thread's: made, used and pooled here.
    let client = Upstream::default();
    let backends = Pool::default();
    let mirroring = Mirroring {
        client: client.clone(),
        room: Arc::new(Semaphore::new(MIRRORS_IN_FLIGHT)),
    };
    let (sweeping, sweeping_raw) = (client.clone(), backends.clone());
    let swept = stop.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(30));
        loop {
            tokio::select! {
                _ = swept.cancelled() => return,
                _ = every.tick() => {
                    sweeping.sweep();
                    sweeping_raw.sweep();
                }
            }
        }
    });
    let slots = Arc::new(Semaphore::new(connections));
    loop {
        let slot = tokio::select! {
            _ = stop.cancelled() => return,
            slot = slots.clone().acquire_owned() => slot.expect("never closed"),
        };
        let me = worker.me;
        let (stream, peer, counted) = tokio::select! {
            _ = stop.cancelled() => return,
            Some((passed, peer, counted)) = worker.inbox.recv() => match TcpStream::from_std(passed) {
                Ok(s) => (s, peer, counted),
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "ingress: a connection passed from another thread is lost");
                    continue;
                }
            },
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    // Counted on the thread chosen from now: there it ends with the connection.
                    let to = worker.spread.choose(me);
                    let counted = Counted {
                        spread: worker.spread.clone(),
                        thread: to,
                    };
                    if to == me {
                        (stream, peer, counted)
                    } else {
                        match stream.into_std() {
                            Ok(s) => {
                                if worker.inboxes[to].send((s, peer, counted)).is_err() {
                                    tracing::warn!(%peer, "ingress: a connection passed to a stopped thread is lost");
                                }
                            }
                            Err(e) => tracing::warn!(%peer, error = %e, "ingress: a connection could not be passed on"),
                        }
                        continue;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "ingress: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let relay = Relay {
            shared: shared.clone(),
            client: client.clone(),
            backends: backends.clone(),
            mirroring: mirroring.clone(),
            peer,
            peer_ip: HeaderValue::from_str(&peer.ip().to_string()).unwrap_or(HeaderValue::from_static("")),
            port,
        };
        let acceptor = acceptor.clone();
        let deadline = shared.limits.header_timeout;
        tokio::spawn(async move {
            let _held = (slot, counted);
            match acceptor {
                None => fast::connection(stream, "http", relay).await,
                Some(acceptor) => match tokio::time::timeout(deadline, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) if tls.get_ref().1.alpn_protocol() == Some(&b"h2"[..]) => {
                        connection(TokioIo::new(tls), "https", relay).await
                    }
                    Ok(Ok(tls)) => fast::connection(tls, "https", relay).await,
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "ingress: TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "ingress: TLS handshake timed out"),
                },
            }
        });
    }
}

/// What a client connection's requests are relayed with.
#[derive(Clone)]
pub(crate) struct Relay {
    pub(crate) shared: Arc<Shared>,
    client: Upstream,
    /// The fast path's backend connections.
    pub(crate) backends: Pool<fast::Backend>,
    mirroring: Mirroring,
    pub(crate) peer: SocketAddr,
    /// The client's address as a header value (X-Forwarded-For, X-Real-IP).
    pub(crate) peer_ip: HeaderValue,
    /// The listener's port: its table routes the requests.
    pub(crate) port: u16,
}

/// Where mirrored copies go out, and the room for them in flight (none left: a copy is not
/// made).
#[derive(Clone)]
struct Mirroring {
    client: Upstream,
    room: Arc<Semaphore>,
}

/// Serves one client connection (HTTP/1.1 or HTTP/2, upgrades allowed).
pub(crate) async fn connection<I>(io: TokioIo<I>, scheme: &'static str, relay: Relay)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (shared, peer) = (relay.shared.clone(), relay.peer);
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .writev(false)
        .timer(TokioTimer::new())
        .header_read_timeout(shared.limits.header_timeout)
        .max_buf_size(shared.limits.header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(shared.limits.header_bytes).unwrap_or(u32::MAX));
    // A connection must bring its first request in time (hyper's head timer starts only once
    // the protocol is known, which takes the client's first bytes).
    let asked = Arc::new(AtomicBool::new(false));
    let first = asked.clone();
    let service = hyper::service::service_fn(move |req| {
        first.store(true, Ordering::Relaxed);
        handle(relay.clone(), scheme, req)
    });
    let conn = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);
    let ended = tokio::select! {
        ended = conn.as_mut() => Some(ended),
        _ = tokio::time::sleep(shared.limits.header_timeout) => None,
    };
    let ended = match ended {
        Some(ended) => ended,
        None if !asked.load(Ordering::Relaxed) => {
            tracing::debug!(%peer, "ingress: no request in time; closing");
            return;
        }
        None => conn.await,
    };
    if let Err(e) = ended {
        tracing::debug!(%peer, error = %e, "ingress: connection ended");
    }
}

/// A short plain-text answer from the proxy itself.
fn answer(status: StatusCode, text: String) -> Response<ProxyBody> {
    let mut r = Response::new(Full::new(Bytes::from(text)).map_err(|never| match never {}).boxed());
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

/// Why a backend gave no answer, as the proxy tells the client instead.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Missed {
    /// The request failed on its way, or its answer could not be read.
    #[error("backend {backend} ({endpoint}) failed: {error}")]
    Failed {
        backend: String,
        endpoint: SocketAddrV4,
        error: String,
    },
    /// No answer began in time.
    #[error("backend {backend} ({endpoint}) did not answer in {limit:?}")]
    Late {
        backend: String,
        endpoint: SocketAddrV4,
        limit: Duration,
    },
    /// No endpoint accepted a connection.
    #[error("no endpoint of {backend} accepted the connection (last: {last})")]
    Refused { backend: String, last: String },
}

impl Missed {
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            Missed::Late { .. } => StatusCode::GATEWAY_TIMEOUT,
            Missed::Failed { .. } | Missed::Refused { .. } => StatusCode::BAD_GATEWAY,
        }
    }

    fn answer(&self) -> Response<ProxyBody> {
        answer(self.status(), format!("{self}\n"))
    }
}

fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    // Also every header the Connection header names.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .filter(|n| !(upgrade && *n == header::UPGRADE))
        .collect();
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    for name in &named {
        headers.remove(name);
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
}

/// Where a redirect sends the client: the request's URL with the redirect's parts replaced. The
/// port, unless given, is the new scheme's well-known one, or else the listener's (`listener`),
/// as the Gateway API says; a well-known port is left out.
fn location(
    r: &table::Redirect,
    scheme: &str,
    host: &str,
    listener: u16,
    path: &str,
    query: Option<&str>,
    matched: &table::PathMatch,
) -> String {
    let scheme = r.scheme.as_deref().unwrap_or(scheme);
    let name = match host.rsplit_once(':') {
        Some((n, p)) if p.bytes().all(|b| b.is_ascii_digit()) && !n.ends_with(']') => n,
        _ => host,
    };
    let name = r.hostname.as_deref().unwrap_or(name);
    let port = match (r.port, r.scheme.is_some()) {
        (Some(p), _) => Some(p),
        (None, true) => None,
        (None, false) => Some(listener),
    };
    let port = port
        .filter(|p| !matches!((scheme, p), ("http", 80) | ("https", 443)))
        .map(|p| p.to_string());
    let path = r.path.as_ref().map(|c| c.apply(path, matched)).unwrap_or_else(|| path.to_owned());
    let mut url = format!("{scheme}://{name}");
    if let Some(p) = port {
        url.push(':');
        url.push_str(&p);
    }
    url.push_str(&path);
    if let Some(q) = query {
        url.push('?');
        url.push_str(q);
    }
    url
}

async fn handle(relay: Relay, scheme: &'static str, mut req: Request<Incoming>) -> Result<Response<ProxyBody>, Infallible> {
    let Relay {
        shared,
        client,
        backends: _,
        mirroring,
        peer,
        peer_ip,
        port,
    } = relay;
    let host = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).map(str::to_owned))
        .unwrap_or_default();
    let tables = shared.tables();
    let (path, query) = (req.uri().path().to_owned(), req.uri().query().map(str::to_owned));
    let rule = tables.ports.get(&port).and_then(|p| {
        p.table.route(&table::Request {
            host: &host,
            path: &path,
            query: query.as_deref().unwrap_or_default(),
            method: req.method().as_str(),
            headers: req.headers(),
        })
    });
    let Some(rule) = rule else {
        return Ok(answer(StatusCode::NOT_FOUND, format!("no route for {host}{path}\n")));
    };
    let action = &rule.action;
    if let Some(redirect) = &action.redirect {
        let to = location(redirect, scheme, &host, port, &path, query.as_deref(), &rule.matcher.path);
        let mut r = answer(StatusCode::from_u16(redirect.status).unwrap_or(StatusCode::FOUND), String::new());
        if let Ok(v) = HeaderValue::from_str(&to) {
            r.headers_mut().insert(header::LOCATION, v);
        }
        return Ok(r);
    }
    // The Gateway API answers 500 for a rule with no usable backend; Ingress controllers 503.
    let unavailable = if rule.source.starts_with("HTTPRoute") {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let Some(backend) = action.pick() else {
        return Ok(answer(
            unavailable,
            format!("no backend: {} has no backend with a weight\n", rule.source),
        ));
    };
    let target = backend.target.clone();
    match &target.endpoints {
        Err(why) => {
            return Ok(answer(unavailable, format!("no backend: {why} ({})\n", rule.source)));
        }
        Ok(e) if e.is_empty() => {
            return Ok(answer(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("no backend: service {} has no ready endpoints ({})\n", target.name, rule.source),
            ));
        }
        Ok(_) => {}
    }
    let length = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if length.is_some_and(|l| l > shared.limits.body_bytes) || req.body().size_hint().lower() > shared.limits.body_bytes {
        return Ok(answer(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n".into()));
    }

    let upgrade = req.headers().contains_key(header::UPGRADE) && req.version() == Version::HTTP_11;
    let client_side = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (parts, body) = req.into_parts();
    let mut headers = parts.headers;
    strip_hop_by_hop(&mut headers, upgrade);
    if !headers.contains_key(header::HOST)
        && let Ok(h) = HeaderValue::from_str(&host)
    {
        headers.insert(header::HOST, h);
    }
    let forwarded_for = match headers.get(FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(earlier) => HeaderValue::from_str(&format!("{earlier}, {}", peer.ip())).unwrap_or_else(|_| peer_ip.clone()),
        None => peer_ip.clone(),
    };
    headers.insert(HeaderName::from_static(FORWARDED_FOR), forwarded_for);
    headers.insert(HeaderName::from_static(FORWARDED_PROTO), HeaderValue::from_static(scheme));
    if let Ok(h) = HeaderValue::from_str(&host) {
        headers.insert(HeaderName::from_static(FORWARDED_HOST), h);
    }
    headers.insert(HeaderName::from_static(REAL_IP), peer_ip);
    action.request_headers.apply(&mut headers);
    backend.request_headers.apply(&mut headers);
    let mut path_and_query = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/").to_owned();
    if let Some(rewrite) = &action.rewrite {
        if let Some(h) = rewrite.hostname.as_deref().and_then(|h| HeaderValue::from_str(h).ok()) {
            headers.insert(header::HOST, h);
        }
        if let Some(change) = &rewrite.path {
            path_and_query = change.apply(&path, &rule.matcher.path);
            if let Some(q) = &query {
                path_and_query = format!("{path_and_query}?{q}");
            }
        }
    }

    // Without a body, a request whose connection failed can be sent again to the next endpoint.
    let replayable = body.is_end_stream()
        && matches!(
            parts.method,
            Method::GET | Method::HEAD | Method::OPTIONS | Method::DELETE | Method::PUT
        );
    let Ok(uri) = path_and_query.parse::<Uri>() else {
        return Ok(answer(StatusCode::BAD_REQUEST, "bad request path\n".into()));
    };
    let mut body = body.boxed();
    let mirrors: Vec<&table::Mirror> = action.mirrors.iter().chain(&backend.mirrors).filter(|m| m.wanted()).collect();
    if !mirrors.is_empty() && !upgrade {
        body = mirror(&mirroring, &mirrors, &parts.method, &uri, &headers, body, length).await;
    }
    let mut body = Some(body);
    let mut last_error = String::new();
    let order = target.order(|e| shared.recently_failed(e));
    let attempts = if replayable { order.len() } else { 1 };
    let mut headers = Some(headers);
    for (attempt, endpoint) in order.into_iter().enumerate() {
        let body = match body.take() {
            Some(b) => b,
            None if replayable => Empty::new().map_err(|never| match never {}).boxed(),
            None => break,
        };
        let mut up = Request::new(body);
        *up.method_mut() = parts.method.clone();
        *up.uri_mut() = uri.clone();
        // A copy only while another attempt may need the headers.
        let this = if attempt + 1 < attempts { headers.clone() } else { headers.take() };
        *up.headers_mut() = this.unwrap_or_default();
        let answered = client.send(endpoint, up);
        let limit = action.timeout.unwrap_or(shared.limits.request_timeout);
        let outcome = if limit.is_zero() {
            Ok(answered.await)
        } else {
            tokio::time::timeout(limit, answered).await
        };
        match outcome {
            Ok(Ok(response)) => {
                let mut response = respond(response, client_side);
                action.response_headers.apply(response.headers_mut());
                backend.response_headers.apply(response.headers_mut());
                return Ok(response);
            }
            Ok(Err(e @ Failure::Connect(_))) => {
                tracing::debug!(%endpoint, backend = %target.name, error = %e, "ingress: endpoint refused the connection");
                shared.mark_failed(endpoint);
                last_error = format!("{endpoint}: {e}");
            }
            Ok(Err(e)) => {
                let backend = target.name.clone();
                return Ok(Missed::Failed {
                    backend,
                    endpoint,
                    error: e.to_string(),
                }
                .answer());
            }
            Err(_) => {
                let backend = target.name.clone();
                return Ok(Missed::Late { backend, endpoint, limit }.answer());
            }
        }
    }
    let backend = target.name.clone();
    Ok(Missed::Refused { backend, last: last_error }.answer())
}

/// The largest request body copied to a mirror (read whole first; a larger one, or one of
/// unknown length, is not copied).
const MIRRORED_BODY: u64 = 64 << 10;
/// How long a mirror may take to answer a copy.
const MIRROR_TIMEOUT: Duration = Duration::from_secs(10);
/// The most mirrored copies one listener thread has in flight: a slow mirror must not hold
/// ever more memory and connections (beyond it copies are not made; mirroring is best effort).
const MIRRORS_IN_FLIGHT: usize = 256;

/// Sends a copy of the request to each mirror, and leaves it: the answers are read and dropped,
/// a failure only logged. Returns the body for the real request (read whole when it was
/// copied).
async fn mirror(
    mirroring: &Mirroring,
    mirrors: &[&table::Mirror],
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: ProxyBody,
    length: Option<u64>,
) -> ProxyBody {
    let bytes = if body.is_end_stream() {
        Bytes::new()
    } else if length.is_some_and(|l| l <= MIRRORED_BODY) {
        match body.collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) => {
                tracing::debug!(error = %e, "ingress: the request body could not be read for a mirror");
                return Full::new(Bytes::new()).map_err(|never| match never {}).boxed();
            }
        }
    } else {
        return body;
    };
    for m in mirrors {
        let Some(endpoint) = m.target.order(|_| false).into_iter().next() else {
            continue;
        };
        let Ok(slot) = mirroring.room.clone().try_acquire_owned() else {
            tracing::debug!(mirror = %m.target.name, "ingress: too many mirrored requests in flight; not copied");
            continue;
        };
        let mut copy = Request::new(Full::new(bytes.clone()).map_err(|never| match never {}).boxed());
        *copy.method_mut() = method.clone();
        *copy.uri_mut() = uri.clone();
        *copy.headers_mut() = headers.clone();
        let (client, name) = (mirroring.client.clone(), m.target.name.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let sent = async {
                let answer = client.send(endpoint, copy).await?;
                let _ = answer.into_body().collect().await;
                Ok::<(), Failure>(())
            };
            match tokio::time::timeout(MIRROR_TIMEOUT, sent).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(mirror = %name, error = %e, "ingress: a mirrored request failed"),
                Err(_) => tracing::debug!(mirror = %name, "ingress: a mirror did not answer in time"),
            }
        });
    }
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

/// The backend's answer for the client; a switch of protocols joins the two upgraded streams.
fn respond(mut response: Response<ProxyBody>, client_side: Option<hyper::upgrade::OnUpgrade>) -> Response<ProxyBody> {
    let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
    if switching && let Some(client_side) = client_side {
        let backend_side = hyper::upgrade::on(&mut response);
        tokio::spawn(async move {
            match tokio::try_join!(client_side, backend_side) {
                Ok((client, backend)) => {
                    let (mut client, mut backend) = (TokioIo::new(client), TokioIo::new(backend));
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut backend).await;
                }
                Err(e) => tracing::debug!(error = %e, "ingress: upgrade failed"),
            }
        });
    }
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers, switching);
    Response::from_parts(parts, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_goes_to_the_thread_with_the_fewest_open_the_accepting_one_among_equals() {
        let spread = Spread::new(3);
        assert_eq!(spread.choose(1), 1);
        assert_eq!(spread.choose(1), 0);
        assert_eq!(spread.choose(1), 2);
        assert_eq!(spread.choose(2), 2);
        assert_eq!(spread.open(), [1, 1, 2]);
        let spread = Arc::new(spread);
        drop(Counted {
            spread: spread.clone(),
            thread: 2,
        });
        assert_eq!(spread.open(), [1, 1, 1]);
        assert_eq!(spread.choose(0), 0);
    }
}
