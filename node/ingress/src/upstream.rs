//! Connections to the backends: HTTP/1.1 keep-alive connections kept idle per endpoint, each
//! driven by the request that uses it (its response and then its response body poll it) instead
//! of a task of its own, so a relayed request costs no hand-off between tasks. One pool per
//! listener thread: a connection is used on the thread that made it (the [`Pool`] the fast path
//! keeps its raw connections in too).

use std::collections::HashMap;
use std::future::{Future, poll_fn};
use std::net::SocketAddrV4;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, Connection, SendRequest};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// What the proxy sends and relays: any body of bytes.
pub type ProxyBody = BoxBody<Bytes, hyper::Error>;

type Conn = Connection<TokioIo<TcpStream>, ProxyBody>;

/// How long a connection may wait unused before it is closed rather than reused (backends
/// commonly close theirs after 60 s or more; nginx keeps its own for 60 s).
const IDLE_FOR: Duration = Duration::from_secs(50);
/// The most idle connections kept to one endpoint (nginx's `keepalive` is per worker too).
const IDLE_PER_ENDPOINT: usize = 128;
/// How long a backend may take to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Why a request did not reach a backend.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// No connection could be made: the request was not sent, another endpoint may take it.
    #[error("connect: {0}")]
    Connect(std::io::Error),
    /// The connection failed while the request was sent or its answer read.
    #[error(transparent)]
    Http(#[from] hyper::Error),
}

/// A connection to an endpoint with its request handle.
struct Leg {
    sender: SendRequest<ProxyBody>,
    conn: Conn,
}

/// Idle connections of one listener thread by endpoint, the most recently used taken first.
pub struct Pool<T> {
    idle: Arc<Mutex<HashMap<SocketAddrV4, Vec<(T, Instant)>>>>,
}

impl<T> Clone for Pool<T> {
    fn clone(&self) -> Pool<T> {
        Pool { idle: self.idle.clone() }
    }
}

impl<T> Default for Pool<T> {
    fn default() -> Pool<T> {
        Pool {
            idle: Arc::new(Mutex::new(HashMap::new())),
        }
    }
}

impl<T> Pool<T> {
    /// The most recently used idle connection to `endpoint` still young enough.
    pub fn take(&self, endpoint: SocketAddrV4) -> Option<T> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.get_mut(&endpoint)?;
        while let Some((conn, since)) = list.pop() {
            if since.elapsed() < IDLE_FOR {
                return Some(conn);
            }
        }
        None
    }

    pub fn give_back(&self, endpoint: SocketAddrV4, conn: T) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.entry(endpoint).or_default();
        // The oldest are the first to go stale: dropped first when the list is full (stale ones
        // are skipped by `take` and closed by `sweep`, not looked for on every request).
        if list.len() >= IDLE_PER_ENDPOINT {
            list.remove(0);
        }
        list.push((conn, Instant::now()));
    }

    /// Closes the connections unused for too long, and forgets endpoints with none left
    /// (endpoints come and go with pods).
    pub fn sweep(&self) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.retain(|_, list| {
            list.retain(|(_, since)| since.elapsed() < IDLE_FOR);
            !list.is_empty()
        });
    }
}

/// The hyper connections of one listener thread, pooled.
#[derive(Clone, Default)]
pub struct Upstream {
    idle: Pool<Leg>,
}

impl Upstream {
    /// Sends `request` to `endpoint` over an idle connection, or a new one; the answer's body
    /// drives the connection and gives it back once read to its end. A request with an
    /// `Upgrade` gets a connection of its own, driven by a task until the upgrade is done.
    pub async fn send(&self, endpoint: SocketAddrV4, mut request: Request<ProxyBody>) -> Result<Response<ProxyBody>, Failure> {
        if request.headers().contains_key(hyper::header::UPGRADE) {
            let (mut sender, conn) = connect(endpoint).await?;
            tokio::spawn(async move {
                if let Err(e) = conn.with_upgrades().await {
                    tracing::debug!(%endpoint, error = %e, "ingress: upgraded backend connection ended");
                }
            });
            let response = sender.send_request(request).await?;
            return Ok(response.map(BodyExt::boxed));
        }
        loop {
            let (mut leg, reused) = match self.idle.take(endpoint) {
                Some(leg) => (leg, true),
                None => {
                    let (sender, conn) = connect(endpoint).await?;
                    (Leg { sender, conn }, false)
                }
            };
            // An idle connection the backend closed meanwhile is noticed here, before sending.
            if reused && !ready(&mut leg).await {
                continue;
            }
            let answered = leg.sender.try_send_request(request);
            let conn = &mut leg.conn;
            let mut conn_done = false;
            tokio::pin!(answered);
            let outcome = poll_fn(|cx| {
                if !conn_done && Pin::new(&mut *conn).poll(cx).is_ready() {
                    conn_done = true;
                }
                answered.as_mut().poll(cx)
            })
            .await;
            match outcome {
                Ok(response) => {
                    let (parts, body) = response.into_parts();
                    let leg = (!conn_done).then_some(leg);
                    let body = Driven {
                        body,
                        leg,
                        ended: false,
                        endpoint,
                        upstream: self.clone(),
                    };
                    return Ok(Response::from_parts(parts, body.boxed()));
                }
                // Not written yet on a connection the backend closed: again on another.
                Err(mut e) if reused => match e.take_message() {
                    Some(unsent) => request = unsent,
                    None => return Err(e.into_error().into()),
                },
                Err(e) => return Err(e.into_error().into()),
            }
        }
    }

    /// Closes the connections unused for too long.
    pub fn sweep(&self) {
        self.idle.sweep();
    }
}

/// A TCP connection to `endpoint`, made in time, without Nagle's delay.
pub async fn connect_tcp(endpoint: SocketAddrV4) -> Result<TcpStream, std::io::Error> {
    let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(endpoint)).await {
        Ok(connected) => connected?,
        Err(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no connection in {CONNECT_TIMEOUT:?}"),
            ));
        }
    };
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

async fn connect(endpoint: SocketAddrV4) -> Result<(SendRequest<ProxyBody>, Conn), Failure> {
    let stream = connect_tcp(endpoint).await.map_err(Failure::Connect)?;
    Ok(http1::Builder::new().writev(false).handshake(TokioIo::new(stream)).await?)
}

/// Polls an idle connection until it can take a request: false when it was closed.
async fn ready(leg: &mut Leg) -> bool {
    poll_fn(|cx| {
        if Pin::new(&mut leg.conn).poll(cx).is_ready() {
            return Poll::Ready(false);
        }
        leg.sender.poll_ready(cx).map(|r| r.is_ok())
    })
    .await
}

/// A backend's answer body that drives its connection while it is read, and gives the
/// connection back to the pool when it was read to its end (dropped before: closed).
struct Driven {
    body: Incoming,
    leg: Option<Leg>,
    /// The body was read to its end (a chunked one says so only by its last frame).
    ended: bool,
    endpoint: SocketAddrV4,
    upstream: Upstream,
}

impl Body for Driven {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        if let Some(leg) = &mut this.leg
            && Pin::new(&mut leg.conn).poll(cx).is_ready()
        {
            this.leg = None;
        }
        let frame = Pin::new(&mut this.body).poll_frame(cx);
        if let Poll::Ready(None) = frame {
            this.ended = true;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Driven {
    fn drop(&mut self) {
        if (self.ended || self.body.is_end_stream())
            && let Some(leg) = self.leg.take()
        {
            self.upstream.idle.give_back(self.endpoint, leg);
        }
    }
}

/// A server on loopback for tests: each connection it accepts served by `serve`; its address
/// and the count of connections accepted.
#[cfg(test)]
pub(crate) async fn loopback<F, S>(serve: F) -> (SocketAddrV4, Arc<std::sync::atomic::AtomicUsize>)
where
    F: Fn(TcpStream) -> S + Send + 'static,
    S: Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let std::net::SocketAddr::V4(at) = listener.local_addr().unwrap() else {
        unreachable!()
    };
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (s, _) = listener.accept().await.unwrap();
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(serve(s));
        }
    });
    (at, accepted)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::Empty;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A backend on loopback answering every request with `answer`, closing the connection
    /// after it when `close`; counts the connections it accepted.
    async fn backend(answer: &'static str, close: bool) -> (SocketAddrV4, Arc<AtomicUsize>) {
        loopback(move |mut s| async move {
            let mut seen = Vec::new();
            let mut buf = [0u8; 1024];
            loop {
                let Ok(n) = s.read(&mut buf).await else { return };
                if n == 0 {
                    return;
                }
                seen.extend_from_slice(&buf[..n]);
                while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                    seen.drain(..end + 4);
                    s.write_all(answer.as_bytes()).await.unwrap();
                    if close {
                        return;
                    }
                }
            }
        })
        .await
    }

    async fn get(upstream: &Upstream, at: SocketAddrV4) -> Bytes {
        let mut request = Request::new(Empty::new().map_err(|never| match never {}).boxed());
        *request.uri_mut() = "/".parse().unwrap();
        request.headers_mut().insert(hyper::header::HOST, "backend".parse().unwrap());
        let response = upstream.send(at, request).await.unwrap();
        response.into_body().collect().await.unwrap().to_bytes()
    }

    #[tokio::test]
    async fn a_connection_read_to_its_end_is_used_again_whatever_the_framing() {
        for answer in [
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        ] {
            let (at, accepted) = backend(answer, false).await;
            let upstream = Upstream::default();
            for _ in 0..5 {
                assert_eq!(get(&upstream, at).await, "ok");
            }
            assert_eq!(accepted.load(Ordering::SeqCst), 1, "{answer:?}");
        }
    }

    #[tokio::test]
    async fn a_connection_the_backend_closed_while_idle_is_not_used() {
        let (at, accepted) = backend("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", true).await;
        let upstream = Upstream::default();
        for _ in 0..3 {
            assert_eq!(get(&upstream, at).await, "ok");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_body_dropped_before_its_end_closes_its_connection() {
        let (at, accepted) = backend("HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nok", false).await;
        let upstream = Upstream::default();
        let mut request = Request::new(Empty::new().map_err(|never| match never {}).boxed());
        *request.uri_mut() = "/".parse().unwrap();
        drop(upstream.send(at, request).await.unwrap());
        assert!(upstream.idle.take(at).is_none());
        let refused = Upstream::default()
            .send(
                SocketAddrV4::new([127, 0, 0, 1].into(), 1),
                Request::new(Empty::new().map_err(|never| match never {}).boxed()),
            )
            .await;
        assert!(matches!(refused, Err(Failure::Connect(_))), "{refused:?}");
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }
}
