//! HTTP/1.1 framing for the ingress's fast path, pure: which requests it relays by hand, the head
//! a backend gets for one, how a backend's answer is delimited and the head its client gets, and
//! chunked bodies scanned for their end as they pass through unchanged.

use httparse::Status;

/// Headers that describe one connection, not the message: never relayed (RFC 9110 §7.6.1).
pub const HOP_BY_HOP: [&str; 6] = ["connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding"];

/// The headers a backend behind the proxy reads (set by the proxy, replacing the client's).
pub const FORWARDED_FOR: &str = "x-forwarded-for";
pub const FORWARDED_PROTO: &str = "x-forwarded-proto";
pub const FORWARDED_HOST: &str = "x-forwarded-host";
pub const REAL_IP: &str = "x-real-ip";

/// The most header fields a request head may have on the fast path (more: hyper's path judges).
pub const REQUEST_HEADERS: usize = 100;
/// The most header fields of a backend's answer, and its longest head.
pub const ANSWER_HEADERS: usize = 128;
const ANSWER_HEAD: usize = 256 << 10;
/// The longest chunk-size line, and the most trailer bytes, of a chunked answer.
const CHUNK_LINE: usize = 4096;
const TRAILERS: usize = 64 << 10;

/// A request the fast path relays: HTTP/1.1, in origin form, with one Host, and no body, no
/// upgrade, no expectation, no connection option but `close` and `keep-alive`; and a method
/// that may be sent again when a pooled connection turns out closed.
#[derive(Debug)]
pub struct Head<'h, 'b> {
    pub method: &'b str,
    /// The path and query, as sent.
    pub target: &'b str,
    pub host: &'b str,
    /// The client asked for the connection to be closed after the answer.
    pub close: bool,
    /// The bytes of the head.
    pub length: usize,
    pub headers: &'h [httparse::Header<'b>],
}

/// What the start of a client's bytes is to the fast path.
#[derive(Debug)]
pub enum Parsed<'h, 'b> {
    Fast(Head<'h, 'b>),
    /// The head is not complete yet.
    Partial,
    /// Not for the fast path (or not HTTP at all): hyper's path serves it and judges it.
    Other,
}

/// Whether `buf` may hold a complete request head: its blank line is there, or it is not HTTP
/// already (then parsing it says so at once).
pub fn head_complete(buf: &[u8]) -> bool {
    if buf.windows(4).any(|w| w == b"\r\n\r\n") {
        return true;
    }
    let mut headers = [httparse::EMPTY_HEADER; REQUEST_HEADERS];
    !matches!(httparse::Request::new(&mut headers).parse(buf), Ok(Status::Partial))
}

/// Parses the request head at the start of `buf` into `headers`.
pub fn parse_request<'h, 'b>(buf: &'b [u8], headers: &'h mut [httparse::Header<'b>]) -> Parsed<'h, 'b> {
    let mut request = httparse::Request::new(headers);
    let length = match request.parse(buf) {
        Ok(Status::Complete(n)) => n,
        Ok(Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Other,
    };
    let (Some(method), Some(target), Some(1)) = (request.method, request.path, request.version) else {
        return Parsed::Other;
    };
    if !matches!(method, "GET" | "HEAD" | "OPTIONS" | "DELETE") || !target.starts_with('/') {
        return Parsed::Other;
    }
    let headers: &'h [httparse::Header<'b>] = request.headers;
    let (mut host, mut close) = (None, false);
    for h in headers {
        let name = h.name;
        if name.eq_ignore_ascii_case("host") {
            match (host, std::str::from_utf8(h.value)) {
                (None, Ok(v)) => host = Some(v),
                _ => return Parsed::Other,
            }
        } else if name.eq_ignore_ascii_case("content-length") {
            if h.value != b"0" {
                return Parsed::Other;
            }
        } else if name.eq_ignore_ascii_case("connection") {
            for option in list(h.value) {
                if option.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if !option.eq_ignore_ascii_case(b"keep-alive") && !option.is_empty() {
                    return Parsed::Other;
                }
            }
        } else if ["transfer-encoding", "upgrade", "expect"]
            .iter()
            .any(|n| name.eq_ignore_ascii_case(n))
        {
            return Parsed::Other;
        }
    }
    let Some(host) = host else {
        return Parsed::Other;
    };
    Parsed::Fast(Head {
        method,
        target,
        host,
        close,
        length,
        headers,
    })
}

/// Writes into `out` the head a backend gets for `head`: the client's headers without the
/// hop-by-hop ones, and the X-Forwarded headers for the client at `peer` over `scheme`.
pub fn request_head(out: &mut Vec<u8>, head: &Head<'_, '_>, peer: &str, scheme: &str) {
    out.clear();
    for part in [head.method, " ", head.target, " HTTP/1.1\r\n"] {
        out.extend_from_slice(part.as_bytes());
    }
    let mut earlier = None;
    for h in head.headers {
        let name = h.name;
        let ours = [FORWARDED_FOR, FORWARDED_PROTO, FORWARDED_HOST, REAL_IP];
        if HOP_BY_HOP.iter().chain(&ours).any(|n| name.eq_ignore_ascii_case(n)) {
            if earlier.is_none() && name.eq_ignore_ascii_case(FORWARDED_FOR) {
                earlier = std::str::from_utf8(h.value).ok();
            }
            continue;
        }
        field(out, name, h.value);
    }
    out.extend_from_slice(FORWARDED_FOR.as_bytes());
    out.extend_from_slice(b": ");
    if let Some(earlier) = earlier {
        out.extend_from_slice(earlier.as_bytes());
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(peer.as_bytes());
    out.extend_from_slice(b"\r\n");
    field(out, FORWARDED_PROTO, scheme.as_bytes());
    field(out, FORWARDED_HOST, head.host.as_bytes());
    field(out, REAL_IP, peer.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// The members of a comma-separated header value (Connection, Transfer-Encoding), trimmed.
fn list(value: &[u8]) -> impl DoubleEndedIterator<Item = &[u8]> {
    value.split(|b| *b == b',').map(<[u8]>::trim_ascii)
}

fn field(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// How a backend's answer body is delimited (RFC 9112 §6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// No body (an answer to HEAD, 204, 304).
    Empty,
    Length(u64),
    Chunked,
    /// Until the backend closes the connection.
    UntilClose,
}

/// A backend's answer head, parsed.
#[derive(Debug, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub framing: Framing,
    /// The backend keeps the connection open after this answer.
    pub reusable: bool,
    /// The bytes of the head.
    pub length: usize,
}

/// A backend's answer that cannot be relayed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BadAnswer {
    #[error("malformed answer head: {0}")]
    Malformed(String),
    #[error("invalid Content-Length")]
    Length,
    #[error("unexpected switch of protocols")]
    Switch,
    #[error("malformed chunked body")]
    Chunk,
    #[error("answer head over {ANSWER_HEAD} bytes")]
    TooLarge,
}

/// Parses the answer head at the start of `buf` (to a HEAD request if `head_request`) and writes into
/// `out` the head the client gets: the status, the backend's headers without the hop-by-hop ones
/// except the chunked Transfer-Encoding (the body passes through as it came), and `close` when
/// the client's connection ends after it. `Ok(None)` while the head is not complete; an
/// informational (1xx) answer is skipped, as `Answer::framing` `Empty` with status below 200.
pub fn parse_answer(buf: &[u8], head_request: bool, close: bool, out: &mut Vec<u8>) -> Result<Option<Answer>, BadAnswer> {
    let mut headers = [httparse::EMPTY_HEADER; ANSWER_HEADERS];
    let mut answer = httparse::Response::new(&mut headers);
    let length = match answer.parse(buf) {
        Ok(Status::Complete(n)) => n,
        Ok(Status::Partial) if buf.len() > ANSWER_HEAD => return Err(BadAnswer::TooLarge),
        Ok(Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(BadAnswer::TooLarge),
        Err(e) => return Err(BadAnswer::Malformed(e.to_string())),
    };
    let (Some(version), Some(status)) = (answer.version, answer.code) else {
        return Err(BadAnswer::Malformed("no status".into()));
    };
    if status == 101 {
        return Err(BadAnswer::Switch);
    }
    if status < 200 {
        return Ok(Some(Answer {
            status,
            framing: Framing::Empty,
            reusable: true,
            length,
        }));
    }
    let headers = &*answer.headers;
    // The connection's options: `close`, `keep-alive`, and headers that are hop-by-hop here.
    let mut reusable = version == 1;
    let mut named: Vec<&[u8]> = Vec::new();
    let (mut content_length, mut chunked, mut encoded) = (None, false, false);
    for h in headers {
        if h.name.eq_ignore_ascii_case("connection") {
            for option in list(h.value) {
                if option.eq_ignore_ascii_case(b"close") {
                    reusable = false;
                } else if option.eq_ignore_ascii_case(b"keep-alive") {
                    reusable |= version == 0;
                } else {
                    named.push(option);
                }
            }
        } else if h.name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(h.value)
                .ok()
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or(BadAnswer::Length)?;
            if content_length.is_some_and(|earlier| earlier != n) {
                return Err(BadAnswer::Length);
            }
            content_length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            encoded = true;
            // Only the last coding says how the body ends.
            let last = list(h.value).next_back().unwrap_or_default();
            chunked = last.eq_ignore_ascii_case(b"chunked");
        }
    }
    let framing = if head_request || status == 204 || status == 304 {
        Framing::Empty
    } else if encoded {
        if chunked { Framing::Chunked } else { Framing::UntilClose }
    } else {
        content_length.map_or(Framing::UntilClose, Framing::Length)
    };
    let reusable = reusable && framing != Framing::UntilClose;
    out.clear();
    out.extend_from_slice(format!("HTTP/1.1 {status} ").as_bytes());
    out.extend_from_slice(answer.reason.unwrap_or_default().as_bytes());
    out.extend_from_slice(b"\r\n");
    for h in headers {
        let name = h.name.as_bytes();
        // A Content-Length beside a Transfer-Encoding is wrong and ignored (RFC 9112 §6.3).
        let relayed = if h.name.eq_ignore_ascii_case("transfer-encoding") {
            framing != Framing::Empty
        } else if h.name.eq_ignore_ascii_case("content-length") {
            !encoded
        } else {
            !HOP_BY_HOP.iter().any(|n| h.name.eq_ignore_ascii_case(n)) && !named.iter().any(|n| n.eq_ignore_ascii_case(name))
        };
        if relayed {
            field(out, h.name, h.value);
        }
    }
    if close || framing == Framing::UntilClose {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok(Some(Answer {
        status,
        framing,
        reusable,
        length,
    }))
}

/// How far a chunked body goes into the bytes at hand.
#[derive(Debug, PartialEq, Eq)]
pub enum Scan {
    /// The first `n` bytes are the body's, more follow (`n` may be short of all: the rest is a
    /// chunk-size line not complete yet).
    More(usize),
    /// The body ends after the first `n` bytes.
    End(usize),
}

/// Where a chunked body's scan stands, between the pieces of it that arrive.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Chunked {
    /// At a chunk-size line.
    #[default]
    Size,
    /// In a chunk's data: this many bytes of it left.
    Data(u64),
    /// After a chunk's data: its CR, then its LF.
    Cr,
    Lf,
    /// In the trailer section (after the last chunk), this many bytes into it.
    Trailers(usize),
}

impl Chunked {
    /// Scans `buf`, the bytes of the body not scanned yet.
    pub fn scan(&mut self, buf: &[u8]) -> Result<Scan, BadAnswer> {
        let mut at = 0;
        loop {
            let rest = &buf[at..];
            match *self {
                Chunked::Size => match httparse::parse_chunk_size(rest) {
                    Ok(Status::Complete((n, size))) => {
                        at += n;
                        *self = if size == 0 { Chunked::Trailers(0) } else { Chunked::Data(size) };
                    }
                    Ok(Status::Partial) if rest.len() <= CHUNK_LINE => return Ok(Scan::More(at)),
                    _ => return Err(BadAnswer::Chunk),
                },
                Chunked::Data(left) => {
                    let take = left.min(rest.len() as u64);
                    at += take as usize;
                    if take < left {
                        *self = Chunked::Data(left - take);
                        return Ok(Scan::More(at));
                    }
                    *self = Chunked::Cr;
                }
                Chunked::Cr | Chunked::Lf => {
                    let Some(&b) = rest.first() else {
                        return Ok(Scan::More(at));
                    };
                    let (want, next) = if *self == Chunked::Cr {
                        (b'\r', Chunked::Lf)
                    } else {
                        (b'\n', Chunked::Size)
                    };
                    if b != want {
                        return Err(BadAnswer::Chunk);
                    }
                    at += 1;
                    *self = next;
                }
                Chunked::Trailers(seen) => {
                    let Some(line) = rest.windows(2).position(|w| w == b"\r\n") else {
                        if seen + rest.len() > TRAILERS {
                            return Err(BadAnswer::Chunk);
                        }
                        return Ok(Scan::More(at));
                    };
                    at += line + 2;
                    if line == 0 {
                        return Ok(Scan::End(at));
                    }
                    *self = Chunked::Trailers(seen + line + 2);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str, check: impl FnOnce(Parsed<'_, '_>)) {
        let mut headers = [httparse::EMPTY_HEADER; REQUEST_HEADERS];
        check(parse_request(raw.as_bytes(), &mut headers));
    }

    #[test]
    fn plain_requests_take_the_fast_path_and_the_rest_go_to_hyper() {
        parse(
            "GET /a?b=1 HTTP/1.1\r\nHost: shop.example\r\nConnection: keep-alive\r\n\r\nGET",
            |p| {
                let Parsed::Fast(h) = p else { panic!("{p:?}") };
                assert_eq!(
                    (h.method, h.target, h.host, h.close, h.length),
                    ("GET", "/a?b=1", "shop.example", false, 67)
                );
            },
        );
        parse(
            "HEAD / HTTP/1.1\r\nhost: a\r\nconnection: Close\r\ncontent-length: 0\r\n\r\n",
            |p| {
                assert!(matches!(p, Parsed::Fast(Head { close: true, .. })), "{p:?}");
            },
        );
        parse("GET / HTTP/1.1\r\nHost: a\r\n", |p| assert!(matches!(p, Parsed::Partial), "{p:?}"));
        for other in [
            "POST / HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET / HTTP/1.0\r\nHost: a\r\n\r\n",
            "GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "DELETE / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc",
            "GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: x-secret\r\n\r\n",
            "NOT HTTP AT ALL\r\n\r\n",
        ] {
            parse(other, |p| assert!(matches!(p, Parsed::Other), "{other:?}: {p:?}"));
        }
    }

    #[test]
    fn a_head_is_complete_at_its_blank_line_or_when_it_cannot_be_http() {
        assert!(!head_complete(b"GET / HTTP/1.1\r\nHost: a\r\n"));
        assert!(head_complete(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
        assert!(head_complete(b"\x16\x03\x01 not a request"));
        assert!(!head_complete(b""));
    }

    #[test]
    fn a_backend_gets_the_head_without_hop_by_hop_headers_and_with_the_forwarded_ones() {
        let raw = "GET /x HTTP/1.1\r\nHost: shop.example:8080\r\nConnection: keep-alive\r\nTE: trailers\r\n\
                   X-Forwarded-For: 10.0.0.9\r\nX-Forwarded-For: 10.0.0.8\r\nX-Real-IP: 6.6.6.6\r\nAccept: */*\r\n\r\n";
        parse(raw, |p| {
            let Parsed::Fast(h) = p else { panic!("{p:?}") };
            let mut out = Vec::new();
            request_head(&mut out, &h, "127.0.0.1", "https");
            assert_eq!(
                String::from_utf8(out).unwrap(),
                "GET /x HTTP/1.1\r\nHost: shop.example:8080\r\nAccept: */*\r\nx-forwarded-for: 10.0.0.9, 127.0.0.1\r\n\
                 x-forwarded-proto: https\r\nx-forwarded-host: shop.example:8080\r\nx-real-ip: 127.0.0.1\r\n\r\n"
            );
        });
    }

    fn answer(raw: &str, method: &str, close: bool) -> (Result<Option<Answer>, BadAnswer>, String) {
        let mut out = Vec::new();
        let parsed = parse_answer(raw.as_bytes(), method == "HEAD", close, &mut out);
        (parsed, String::from_utf8(out).unwrap())
    }

    #[test]
    fn an_answer_is_framed_by_its_headers_as_rfc_9112_says() {
        let framing = |raw: &str, method: &str| answer(raw, method, false).0.map(|a| a.map(|a| (a.framing, a.reusable)));
        let ok = |f, r| Ok(Some((f, r)));
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", "GET"),
            ok(Framing::Length(5), true)
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", "HEAD"),
            ok(Framing::Empty, true)
        );
        assert_eq!(framing("HTTP/1.1 204 No Content\r\n\r\n", "GET"), ok(Framing::Empty, true));
        assert_eq!(
            framing("HTTP/1.1 304 Not Modified\r\nETag: x\r\n\r\n", "GET"),
            ok(Framing::Empty, true)
        );
        assert_eq!(
            framing(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 9\r\n\r\n",
                "GET"
            ),
            ok(Framing::Chunked, true)
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", "GET"),
            ok(Framing::UntilClose, false)
        );
        assert_eq!(framing("HTTP/1.1 200 OK\r\n\r\n", "GET"), ok(Framing::UntilClose, false));
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", "GET"),
            ok(Framing::Length(0), false)
        );
        assert_eq!(
            framing("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", "GET"),
            ok(Framing::Length(1), false)
        );
        assert_eq!(
            framing("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\n", "GET"),
            ok(Framing::Length(1), true)
        );
        assert_eq!(framing("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n", "GET"), Ok(None));
        // Differing lengths, or a length that is not a number: not relayed (a smuggling vector).
        for bad in ["1, 2", "-1", "+5", "0x10", ""] {
            let raw = format!("HTTP/1.1 200 OK\r\nContent-Length: {bad}\r\n\r\n");
            assert_eq!(framing(&raw, "GET"), Err(BadAnswer::Length), "{bad:?}");
        }
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", "GET"),
            Err(BadAnswer::Length)
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n", "GET"),
            ok(Framing::Length(1), true)
        );
        assert_eq!(framing("HTTP/1.1 101 Switching\r\n\r\n", "GET"), Err(BadAnswer::Switch));
        assert!(matches!(
            framing("HTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\n", "GET"),
            Ok(Some((Framing::Empty, _)))
        ));
        assert!(matches!(framing("SSH-2.0-OpenSSH\r\n\r\n", "GET"), Err(BadAnswer::Malformed(_))));
    }

    #[test]
    fn the_client_gets_the_answer_head_without_hop_by_hop_headers() {
        let raw = "HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Hop\r\nKeep-Alive: timeout=5\r\nX-Hop: 1\r\n\
                   Transfer-Encoding: chunked\r\nContent-Length: 7\r\nContent-Type: text/plain\r\n\r\n";
        let (parsed, head) = answer(raw, "GET", true);
        assert_eq!(parsed.unwrap().unwrap().length, raw.len());
        assert_eq!(
            head,
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\nconnection: close\r\n\r\n"
        );
        let (_, head) = answer("HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\nno", "GET", false);
        assert_eq!(head, "HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\n");
    }

    /// Scans `body` split into `pieces` as they would arrive, keeping unscanned bytes: the bytes
    /// the body took, or the error.
    fn scan_in_pieces(body: &[u8], piece: usize) -> Result<usize, BadAnswer> {
        let (mut chunked, mut pending, mut taken) = (Chunked::default(), Vec::new(), 0);
        for part in body.chunks(piece) {
            pending.extend_from_slice(part);
            match chunked.scan(&pending)? {
                Scan::More(n) => {
                    taken += n;
                    pending.drain(..n);
                }
                Scan::End(n) => return Ok(taken + n),
            }
        }
        Err(BadAnswer::Malformed("no end".into()))
    }

    #[test]
    fn a_chunked_body_ends_where_its_last_chunk_and_trailers_do_however_it_arrives() {
        let body = b"5\r\nhello\r\n1;ext=1\r\n \r\n10\r\n0123456789abcdef\r\n0\r\nX-Sum: 1\r\n\r\nNEXT";
        let end = body.len() - 4;
        for piece in [1, 2, 3, 7, body.len()] {
            assert_eq!(scan_in_pieces(body, piece), Ok(end), "pieces of {piece}");
        }
        assert_eq!(scan_in_pieces(b"0\r\n\r\n", 1), Ok(5));
        for bad in [
            &b"5\r\nhelloXX0\r\n\r\n"[..],
            b"zz\r\n",
            b"5\r\nhello\r0\r\n\r\n",
            b"ffffffffffffffffff\r\n",
        ] {
            assert_eq!(scan_in_pieces(bad, 1), Err(BadAnswer::Chunk), "{:?}", String::from_utf8_lossy(bad));
        }
        let endless = [b'1'; CHUNK_LINE + 2];
        assert_eq!(Chunked::default().scan(&endless), Err(BadAnswer::Chunk));
    }
}
