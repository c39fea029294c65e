//! The ingress's fast path for HTTP/1.1: a plain request (no body, no upgrade; see
//! [`framing::parse_request`]) whose rule forwards it as it came is relayed by hand over a pooled
//! raw connection, at a fraction of hyper's cost per request (the answer's bytes pass through as
//! they came, framed by its own headers). The first request that is not (a body, an upgrade, a
//! redirect, no route, HTTP/1.0, h2c...) hands the connection, with the bytes read so far, to
//! hyper's path for the rest of its life.

use std::net::SocketAddrV4;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::framing::{self, Answer, BadAnswer, Chunked, Framing, Parsed, Scan};
use crate::serve::{self, Missed, Relay};
use crate::table;
use crate::upstream;

/// How much is read at once, from a client or a backend.
const READ: usize = 16 << 10;

/// A raw connection to a backend, with the bytes read from it and not relayed yet.
pub struct Backend {
    stream: TcpStream,
    buf: BytesMut,
}

/// Why an exchange with a backend ended early.
#[derive(Debug, thiserror::Error)]
enum Broken {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Answer(#[from] BadAnswer),
    #[error("the backend closed the connection")]
    Closed,
}

/// A request's headers as the route matchers read them.
struct Raw<'h, 'b>(&'h [httparse::Header<'b>]);

impl table::Headers for Raw<'_, '_> {
    fn joined(&self, name: &str) -> Option<String> {
        let values: Vec<&str> = self
            .0
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .filter_map(|h| std::str::from_utf8(h.value).ok())
            .collect();
        (!values.is_empty()).then(|| values.join(","))
    }
}

/// Serves a client's HTTP/1.1 connection (over TLS or not) until it ends, or until a request
/// the fast path does not take: then hyper's path gets the connection.
pub(crate) async fn connection<I>(mut io: I, scheme: &'static str, relay: Relay)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = relay.shared.limits;
    let peer_ip = relay.peer_ip.to_str().unwrap_or_default().to_owned();
    let mut buf = BytesMut::with_capacity(READ);
    let (mut request, mut reply) = (Vec::with_capacity(1024), Vec::with_capacity(1024));
    loop {
        // The next request's head, in time: a client that is slow to send it, or an idle
        // keep-alive connection, is closed at the deadline.
        let deadline = Instant::now() + limits.header_timeout;
        while !framing::head_complete(&buf) {
            if buf.len() > limits.header_bytes {
                return hand_over(io, buf, scheme, relay).await;
            }
            buf.reserve(READ);
            match tokio::time::timeout_at(deadline, io.read_buf(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                Ok(Ok(_)) | Ok(Err(_)) => return,
                Err(_) => {
                    tracing::debug!(peer = %relay.peer, "ingress: no request in time; closing");
                    return;
                }
            }
        }
        let mut headers = [httparse::EMPTY_HEADER; framing::REQUEST_HEADERS];
        // A head over the limit too: hyper's path refuses it (431).
        let head = match framing::parse_request(&buf, &mut headers) {
            Parsed::Fast(head) if head.length <= limits.header_bytes => head,
            _ => return hand_over(io, buf, scheme, relay).await,
        };
        let tables = relay.shared.tables();
        let (path, query) = head.target.split_once('?').unwrap_or((head.target, ""));
        let rule = tables.ports.get(&relay.port).and_then(|p| {
            p.table.route(&table::Request {
                host: head.host,
                path,
                query,
                method: head.method,
                headers: &Raw(head.headers),
            })
        });
        let Some(rule) = rule.filter(|r| r.action.is_plain()) else {
            return hand_over(io, buf, scheme, relay).await;
        };
        let Some(backend) = rule
            .action
            .pick()
            .filter(|b| b.target.endpoints.as_ref().is_ok_and(|e| !e.is_empty()))
        else {
            return hand_over(io, buf, scheme, relay).await;
        };
        framing::request_head(&mut request, &head, &peer_ip, scheme);
        let (close, head_request, length) = (head.close, head.method == "HEAD", head.length);
        buf.advance(length);

        let target = &backend.target;
        let limit = rule.action.timeout.unwrap_or(limits.request_timeout);
        let asked = Ask {
            request: &request,
            head_request,
            close,
            limit,
        };
        let (mut conn, endpoint, answer) = match exchange(&relay, target, &asked, &mut reply).await {
            Ok(answered) => answered,
            Err(missed) => {
                missed_answer(&mut reply, &missed, close);
                if io.write_all(&reply).await.is_err() || io.flush().await.is_err() || close {
                    return;
                }
                continue;
            }
        };
        match relay_body(&mut io, &mut conn, &answer, &mut reply).await {
            Ok(()) => {
                if answer.reusable && conn.buf.is_empty() {
                    relay.backends.give_back(endpoint, conn);
                }
            }
            Err(e) => {
                // The answer is cut short: the client sees its connection close.
                tracing::debug!(%endpoint, backend = %target.name, error = %e, "ingress: answer not relayed whole");
                return;
            }
        }
        if close || answer.framing == Framing::UntilClose {
            let _ = io.shutdown().await;
            return;
        }
    }
}

/// A request head for a backend and how to read its answer.
struct Ask<'a> {
    request: &'a [u8],
    head_request: bool,
    /// The client's connection ends after the answer.
    close: bool,
    /// How long the backend may take to begin its answer (zero: no limit).
    limit: Duration,
}

/// Sends the request to the endpoints of `target` in turn until one answers (a refused
/// connection: the next; a pooled connection the backend closed: again on a new one; the
/// requests here may all be sent again), and reads the answer's head; the client's head is in
/// `reply`.
async fn exchange(
    relay: &Relay,
    target: &table::Target,
    ask: &Ask<'_>,
    reply: &mut Vec<u8>,
) -> Result<(Backend, SocketAddrV4, Answer), Missed> {
    let mut last = String::new();
    for endpoint in target.order(|e| relay.shared.recently_failed(e)) {
        loop {
            let (mut conn, reused) = match relay.backends.take(endpoint) {
                Some(conn) => (conn, true),
                None => match upstream::connect_tcp(endpoint).await {
                    Ok(stream) => {
                        let buf = BytesMut::with_capacity(READ);
                        (Backend { stream, buf }, false)
                    }
                    Err(e) => {
                        tracing::debug!(%endpoint, backend = %target.name, error = %e, "ingress: endpoint refused the connection");
                        relay.shared.mark_failed(endpoint);
                        last = format!("{endpoint}: connect: {e}");
                        break;
                    }
                },
            };
            let answered = async {
                conn.stream.write_all(ask.request).await?;
                read_answer(&mut conn, ask.head_request, ask.close, reply).await
            };
            let outcome = if ask.limit.is_zero() {
                Ok(answered.await)
            } else {
                tokio::time::timeout(ask.limit, answered).await
            };
            match outcome {
                Ok(Ok(answer)) => return Ok((conn, endpoint, answer)),
                Ok(Err(Broken::Io(_) | Broken::Closed)) if reused && conn.buf.is_empty() => continue,
                Ok(Err(e)) => {
                    return Err(Missed::Failed {
                        backend: target.name.clone(),
                        endpoint,
                        error: e.to_string(),
                    });
                }
                Err(_) => {
                    return Err(Missed::Late {
                        backend: target.name.clone(),
                        endpoint,
                        limit: ask.limit,
                    });
                }
            }
        }
    }
    Err(Missed::Refused {
        backend: target.name.clone(),
        last,
    })
}

/// Reads a backend's answer head (informational ones skipped).
async fn read_answer(conn: &mut Backend, head_request: bool, close: bool, reply: &mut Vec<u8>) -> Result<Answer, Broken> {
    loop {
        if !conn.buf.is_empty()
            && let Some(answer) = framing::parse_answer(&conn.buf, head_request, close, reply)?
        {
            conn.buf.advance(answer.length);
            if answer.status >= 200 {
                return Ok(answer);
            }
            continue;
        }
        fill(conn).await?;
    }
}

/// Reads more of a backend's bytes.
async fn fill(conn: &mut Backend) -> Result<(), Broken> {
    conn.buf.reserve(READ);
    match conn.stream.read_buf(&mut conn.buf).await? {
        0 => Err(Broken::Closed),
        _ => Ok(()),
    }
}

/// Relays the answer whose head is in `reply` and whose body follows in `conn`: the head with
/// the body's first bytes in one write, the rest as it comes, up to where its framing ends it.
async fn relay_body<I>(io: &mut I, conn: &mut Backend, answer: &Answer, reply: &mut Vec<u8>) -> Result<(), Broken>
where
    I: AsyncWrite + Unpin,
{
    let (mut left, mut chunked) = (0, Chunked::default());
    if let Framing::Length(n) = answer.framing {
        left = n;
    }
    let mut head = Some(reply);
    loop {
        // How much of what is read belongs to the body, and whether the body ends there.
        let (now, end) = match answer.framing {
            Framing::Empty => (0, true),
            Framing::Length(_) => {
                let now = left.min(conn.buf.len() as u64);
                left -= now;
                (now as usize, left == 0)
            }
            Framing::Chunked => match chunked.scan(&conn.buf)? {
                Scan::More(n) => (n, false),
                Scan::End(n) => (n, true),
            },
            Framing::UntilClose => (conn.buf.len(), false),
        };
        match head.take() {
            Some(head) => {
                head.extend_from_slice(&conn.buf[..now]);
                io.write_all(head.as_slice()).await?;
            }
            None if now > 0 => io.write_all(&conn.buf[..now]).await?,
            None => {}
        }
        conn.buf.advance(now);
        if end {
            break;
        }
        match fill(conn).await {
            Err(Broken::Closed) if answer.framing == Framing::UntilClose => break,
            filled => filled?,
        }
    }
    io.flush().await?;
    Ok(())
}

/// The proxy's own answer when a backend gave none.
fn missed_answer(out: &mut Vec<u8>, missed: &Missed, close: bool) {
    let status = missed.status();
    let text = format!("{missed}\n");
    out.clear();
    out.extend_from_slice(
        format!(
            "HTTP/1.1 {} {}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or_default(),
            text.len()
        )
        .as_bytes(),
    );
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(text.as_bytes());
}

/// Gives the connection to hyper's path, the bytes read so far first.
async fn hand_over<I>(io: I, read: BytesMut, scheme: &'static str, relay: Relay)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = Rewind { read: read.freeze(), io };
    serve::connection(TokioIo::new(io), scheme, relay).await;
}

/// A connection whose first bytes were read already: they are read again first.
struct Rewind<I> {
    read: Bytes,
    io: I,
}

impl<I: AsyncRead + Unpin> AsyncRead for Rewind<I> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.read.is_empty() {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        }
        let n = this.read.len().min(buf.remaining());
        buf.put_slice(&this.read[..n]);
        this.read.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Rewind<I> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[std::io::IoSlice<'_>]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::serve::{self, Limits, Shared};
    use crate::table::{Action, Matcher, PathMatch, Rule, Tables, Target, Weighted, Wildcard};

    /// A backend on loopback that answers by path: `/echo` its request head as a body of known
    /// length, `/chunked` in two pieces a moment apart, `/eof` delimited by closing, `/bye` and
    /// then closing (without saying so), `/garbage` not HTTP, `/slow` after 3 s; a POST gets the
    /// size of its body. Counts the connections it accepted.
    async fn backend() -> (SocketAddrV4, Arc<AtomicUsize>) {
        upstream::loopback(|mut s| async move {
            let mut seen = BytesMut::new();
            loop {
                let end = loop {
                    if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        break end + 4;
                    }
                    if s.read_buf(&mut seen).await.unwrap_or(0) == 0 {
                        return;
                    }
                };
                let head = String::from_utf8(seen.split_to(end).to_vec()).unwrap();
                let path = head.split(' ').nth(1).unwrap_or_default().to_owned();
                let length: usize = head
                    .lines()
                    .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length: ").map(|v| v.parse().unwrap()))
                    .unwrap_or(0);
                while seen.len() < length {
                    s.read_buf(&mut seen).await.unwrap();
                }
                seen.advance(length);
                let w = |text: String| text.into_bytes();
                let ok = |body: &str| w(format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len()));
                if head.starts_with("POST") {
                    s.write_all(&ok(&format!("got {length} bytes"))).await.unwrap();
                    continue;
                }
                match path.as_str() {
                    "/echo" => s.write_all(&ok(&head)).await.unwrap(),
                    "/chunked" => {
                        s.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel")
                            .await
                            .unwrap();
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        s.write_all(b"lo\r\n6\r\n world\r\n0\r\n\r\n").await.unwrap();
                    }
                    "/eof" => {
                        s.write_all(b"HTTP/1.1 200 OK\r\n\r\nuntil the end").await.unwrap();
                        return;
                    }
                    "/bye" => {
                        s.write_all(&ok("bye")).await.unwrap();
                        return;
                    }
                    "/garbage" => s.write_all(b"garbage\r\n\r\n").await.unwrap(),
                    "/slow" => {
                        tokio::time::sleep(Duration::from_secs(3)).await;
                        s.write_all(&ok("late")).await.unwrap();
                    }
                    _ => s.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n").await.unwrap(),
                }
            }
        })
        .await
    }

    /// The ingress on loopback with one rule for any host: `/` to `endpoints` (1 s to answer).
    async fn start_ingress(endpoints: Vec<SocketAddrV4>) -> (SocketAddr, CancellationToken) {
        let (at, stop, _) = start_spread(endpoints).await;
        (at, stop)
    }

    /// As [`start_ingress`], with the counts of the worker threads' connections.
    async fn start_spread(endpoints: Vec<SocketAddrV4>) -> (SocketAddr, CancellationToken, Arc<serve::Spread>) {
        let limits = Limits {
            header_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(1),
            ..Limits::default()
        };
        let shared = Shared::new(limits, None);
        let (at, sockets) = serve::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let mut tables = Tables::default();
        let backend = Weighted {
            target: Arc::new(Target::new("shop/app:80".into(), Ok(endpoints))),
            weight: 1,
            request_headers: Default::default(),
            response_headers: Default::default(),
            mirrors: Vec::new(),
        };
        let rule = Rule {
            matcher: Matcher::path(PathMatch::prefix("/")),
            action: Arc::new(Action::forward(vec![backend])),
            source: "Ingress shop/app".into(),
            age: (None, "app".into(), 0),
        };
        tables.port(at.port(), false).add("", Wildcard::OneLabel, rule);
        tables.finish();
        shared.set_tables(tables);
        let stop = CancellationToken::new();
        let spread = serve::spawn_workers(sockets, at.port(), false, &shared, &stop);
        (at, stop, spread)
    }

    /// A connection to the ingress, once its worker threads listen.
    async fn connect(at: SocketAddr) -> TcpStream {
        for _ in 0..100 {
            if let Ok(s) = TcpStream::connect(at).await {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the ingress does not listen on {at}");
    }

    /// Reads one answer: its head and its body (by length, chunked to its last chunk, or to the
    /// end).
    async fn answer(s: &mut TcpStream, pending: &mut BytesMut) -> (String, String) {
        let end = loop {
            if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            assert!(s.read_buf(pending).await.unwrap() > 0, "closed before an answer");
        };
        let head = String::from_utf8(pending.split_to(end).to_vec()).unwrap();
        let lower = head.to_ascii_lowercase();
        let length = lower
            .lines()
            .find_map(|l| l.strip_prefix("content-length: ").map(|v| v.parse::<usize>().unwrap()));
        let body = if let Some(length) = length {
            while pending.len() < length {
                assert!(s.read_buf(pending).await.unwrap() > 0);
            }
            pending.split_to(length)
        } else if lower.contains("transfer-encoding: chunked") {
            while !pending.ends_with(b"0\r\n\r\n") {
                assert!(s.read_buf(pending).await.unwrap() > 0);
            }
            pending.split()
        } else {
            while s.read_buf(pending).await.unwrap() > 0 {}
            pending.split()
        };
        (head, String::from_utf8(body.to_vec()).unwrap())
    }

    async fn exchange(s: &mut TcpStream, pending: &mut BytesMut, request: &str) -> (String, String) {
        s.write_all(request.as_bytes()).await.unwrap();
        answer(s, pending).await
    }

    fn get(path: &str) -> String {
        format!("GET {path} HTTP/1.1\r\nHost: shop.example\r\nX-Forwarded-For: 10.9.9.9\r\nConnection: keep-alive\r\n\r\n")
    }

    #[tokio::test]
    async fn plain_requests_share_pooled_connections_and_keep_their_framing() {
        let (at, accepted) = backend().await;
        let (ingress, stop) = start_ingress(vec![at]).await;
        let mut s = connect(ingress).await;
        let mut pending = BytesMut::new();
        let (head, body) = exchange(&mut s, &mut pending, &get("/echo")).await;
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(body.starts_with("GET /echo HTTP/1.1\r\nHost: shop.example\r\n"), "{body}");
        for forwarded in [
            "x-forwarded-for: 10.9.9.9, 127.0.0.1\r\n",
            "x-forwarded-proto: http\r\n",
            "x-forwarded-host: shop.example\r\n",
            "x-real-ip: 127.0.0.1\r\n",
        ] {
            assert!(body.contains(forwarded), "{forwarded:?} in {body}");
        }
        assert!(!body.to_ascii_lowercase().contains("connection:"), "hop-by-hop relayed: {body}");
        let (head, body) = exchange(&mut s, &mut pending, &get("/chunked")).await;
        assert!(head.contains("Transfer-Encoding: chunked"), "{head}");
        assert_eq!(body, "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n");
        // Two requests in one write: two answers, in order.
        s.write_all(format!("{}{}", get("/echo"), get("/nothing")).as_bytes())
            .await
            .unwrap();
        assert!(answer(&mut s, &mut pending).await.0.starts_with("HTTP/1.1 200"));
        assert!(answer(&mut s, &mut pending).await.0.starts_with("HTTP/1.1 404"));
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "one backend connection for all");
        // An answer delimited by the backend's close ends the client's connection too.
        let (head, body) = exchange(&mut s, &mut pending, &get("/eof")).await;
        assert!(head.to_ascii_lowercase().contains("connection: close"), "{head}");
        assert_eq!(body, "until the end");
        stop.cancel();
    }

    #[tokio::test]
    async fn a_request_the_fast_path_does_not_take_goes_to_hyper_with_what_was_read() {
        let (at, _) = backend().await;
        let (ingress, stop) = start_ingress(vec![at]).await;
        let mut s = connect(ingress).await;
        let mut pending = BytesMut::new();
        assert!(exchange(&mut s, &mut pending, &get("/echo")).await.0.starts_with("HTTP/1.1 200"));
        // A body: hyper's path, on the same connection, and the connection stays usable.
        let post = "POST /form HTTP/1.1\r\nHost: shop.example\r\nContent-Length: 5\r\n\r\nabcde";
        let (head, body) = exchange(&mut s, &mut pending, post).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert_eq!(body, "got 5 bytes");
        assert!(
            exchange(&mut s, &mut pending, &get("/echo"))
                .await
                .1
                .contains("x-forwarded-proto: http")
        );
        // A head over the limit, however fast it arrives: refused by hyper's path.
        let mut s = connect(ingress).await;
        let big = format!("GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n", "a".repeat(100 << 10));
        let (head, _) = exchange(&mut s, &mut BytesMut::new(), &big).await;
        assert!(head.starts_with("HTTP/1.1 431"), "{head}");
        stop.cancel();
    }

    #[tokio::test]
    async fn a_pooled_connection_the_backend_closed_is_replaced_and_failures_are_answered() {
        let (at, accepted) = backend().await;
        let refused = SocketAddrV4::new([127, 0, 0, 1].into(), 1);
        let (ingress, stop) = start_ingress(vec![refused, at]).await;
        let mut s = connect(ingress).await;
        let mut pending = BytesMut::new();
        for _ in 0..3 {
            let (head, body) = exchange(&mut s, &mut pending, &get("/bye")).await;
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
            assert_eq!(body, "bye");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
        let (head, body) = exchange(&mut s, &mut pending, &get("/garbage")).await;
        assert!(head.starts_with("HTTP/1.1 502"), "{head}");
        assert!(
            body.contains("backend shop/app:80") && body.contains("malformed answer head"),
            "{body}"
        );
        let (head, body) = exchange(&mut s, &mut pending, &get("/slow")).await;
        assert!(head.starts_with("HTTP/1.1 504"), "{head}");
        assert!(body.contains("did not answer in 1s"), "{body}");
        stop.cancel();
        let (ingress, stop) = start_ingress(vec![refused]).await;
        let mut s = connect(ingress).await;
        let (head, body) = exchange(&mut s, &mut BytesMut::new(), &get("/echo")).await;
        assert!(head.starts_with("HTTP/1.1 502"), "{head}");
        assert!(body.contains("no endpoint of shop/app:80 accepted the connection"), "{body}");
        stop.cancel();
    }

    #[tokio::test]
    async fn connections_are_spread_evenly_over_the_worker_threads() {
        let (at, _) = backend().await;
        let (ingress, stop, spread) = start_spread(vec![at]).await;
        let mut clients = Vec::new();
        for _ in 0..11 {
            let mut s = connect(ingress).await;
            let (head, _) = exchange(&mut s, &mut BytesMut::new(), &get("/echo")).await;
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
            clients.push(s);
        }
        let open = spread.open();
        assert_eq!(open.iter().sum::<usize>(), 11, "{open:?}");
        assert!(open.iter().max().unwrap() - open.iter().min().unwrap() <= 1, "{open:?}");
        drop(clients);
        stop.cancel();
    }
}
