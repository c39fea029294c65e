//! A minimal HTTP/1.1 server (a thread per connection) and client, enough for probes, tests and
//! the guestbook.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

pub struct Request {
    pub method: String,
    pub path: String,
    query: String,
    body: String,
    /// The client's address as this server sees it.
    pub peer: String,
    /// The request's headers as sent (`Name: value` lines).
    pub headers: Vec<String>,
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match u8::from_str_radix(&s[i + 1..i + 3], 16) {
                Ok(b) => {
                    out.push(b);
                    i += 2;
                }
                Err(_) => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn lookup(pairs: &str, key: &str) -> Option<String> {
    pairs
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| decode(v))
}

impl Request {
    pub fn query(&self, key: &str) -> Option<String> {
        lookup(&self.query, key)
    }

    pub fn form(&self, key: &str) -> Option<String> {
        lookup(self.body.trim(), key)
    }
}

pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn read_request(reader: &mut BufReader<&TcpStream>) -> Option<Request> {
    let stream = *reader.get_ref();
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_owned();
    let target = parts.next()?.to_owned();
    let mut length = 0usize;
    let mut headers = Vec::new();
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).ok()? == 0 || header == "\r\n" || header == "\n" {
            break;
        }
        headers.push(header.trim_end().to_owned());
        if let Some((k, v)) = header.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            length = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; length.min(1 << 20)];
    reader.read_exact(&mut body).ok()?;
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_owned(), q.to_owned()),
        None => (target, String::new()),
    };
    Some(Request {
        method,
        path,
        query,
        body: String::from_utf8_lossy(&body).into_owned(),
        peer: stream.peer_addr().map(|a| a.ip().to_string()).unwrap_or_default(),
        headers,
    })
}

/// The value of a request header.
fn header(req: &Request, name: &str) -> Option<String> {
    req.headers.iter().find_map(|h| {
        let (k, v) = h.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
    })
}

/// Whether the request asks to close the connection after the answer.
fn closes(req: &Request) -> bool {
    header(req, "connection").is_some_and(|v| v.eq_ignore_ascii_case("close"))
}

/// Serves forever on all addresses at `port`. Each connection answers one request and closes,
/// unless KEEP_ALIVE is set (for benchmarks): then it answers requests until the client closes
/// or asks to.
pub fn serve(port: u16, handler: impl Fn(&Request) -> (u16, String) + Send + Sync + 'static) {
    let listener = TcpListener::bind(("0.0.0.0", port)).unwrap_or_else(|e| {
        eprintln!("cannot listen on :{port}: {e}");
        std::process::exit(1);
    });
    let handler = Arc::new(handler);
    for stream in listener.incoming().flatten() {
        let handler = handler.clone();
        std::thread::spawn(move || {
            let keep_alive = std::env::var_os("KEEP_ALIVE").is_some();
            let _ = stream.set_read_timeout(Some(Duration::from_secs(if keep_alive { 300 } else { 10 })));
            let _ = stream.set_nodelay(keep_alive);
            let mut reader = BufReader::new(&stream);
            while let Some(req) = read_request(&mut reader) {
                if let Some(key) = header(&req, "sec-websocket-key") {
                    crate::ws::echo(&stream, &key);
                    break;
                }
                let again = keep_alive && !closes(&req);
                let (status, body) = handler(&req);
                let reason = match status {
                    200 => "OK",
                    400 => "Bad Request",
                    404 => "Not Found",
                    503 => "Service Unavailable",
                    _ => "Status",
                };
                let kind = if body.starts_with("<!doctype") { "text/html" } else { "text/plain" };
                let connection = if again { "keep-alive" } else { "close" };
                let answer = format!(
                    "HTTP/1.1 {status} {reason}\r\nContent-Type: {kind}; charset=utf-8\r\nContent-Length: {}\r\nConnection: {connection}\r\n\r\n{body}",
                    body.len()
                );
                let mut s = &stream;
                if std::env::var_os("TRICKLE").is_some() {
                    // One byte per write, as slow or oddly buffered servers send: probes must
                    // read the whole status line however it arrives.
                    let _ = stream.set_nodelay(true);
                    for b in answer.as_bytes() {
                        if s.write_all(&[*b]).is_err() {
                            break;
                        }
                        let _ = s.flush();
                        std::thread::sleep(Duration::from_micros(200));
                    }
                } else if s.write_all(answer.as_bytes()).is_err() {
                    break;
                }
                if !again {
                    break;
                }
            }
        });
    }
}

/// GETs `url` (http only) and returns the status and body.
pub fn get(url: &str, timeout: Duration) -> Result<(u16, String), String> {
    let rest = url.strip_prefix("http://").ok_or("only http:// URLs are supported")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, p.parse::<u16>().map_err(|e| format!("bad port: {e}"))?),
        None => (authority, 80),
    };
    let ip = crate::dns::resolve(host)?;
    let addr = (ip, port)
        .to_socket_addrs()
        .map_err(|e| e.to_string())?
        .next()
        .ok_or("no address")?;
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect {addr}: {e}"))?;
    stream.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n").map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream.read_to_string(&mut response).map_err(|e| format!("read: {e}"))?;
    let (head, body) = response.split_once("\r\n\r\n").ok_or("malformed response")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or("malformed status line")?;
    Ok((status, body.to_owned()))
}
