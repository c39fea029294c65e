//! Port-forward for the API server: kubectl's SPDY/3.1 session, carried in WebSocket binary
//! messages, whose streams come in pairs (`error` and `data`, sharing a `requestID` and a `port`)
//! for each connection kubectl accepted. Each pair is a TCP connection the agent opens inside the
//! pod's network namespace, so that a process listening only on the pod's loopback is reached,
//! as with the kubelet. A failed connection is reported on its error stream; the session and its
//! other connections go on.

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{WebSocket, WebSocketUpgrade};
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use bytes::Bytes;
use capstan_api::remotecommand::PROTOCOL_PORT_FORWARD;
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::server::{Shared, error, pod_containers};
use crate::spdy::{Frame, Out};
use crate::spec::SANDBOX;

/// How long a connection to the pod's port may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Data a connection reads from the pod at a time.
const CHUNK: usize = 64 << 10;
/// Frames written to the client in one message, at most (about).
const BATCH: usize = 256 << 10;
/// Streams a session may hold: half-made pairs, and connections (each a socket in the pod).
/// A stream beyond them is reset; kubectl makes one pair per local connection.
const MAX_PENDING: usize = 64;
const MAX_CONNECTIONS: usize = 1024;

/// `GET /portforward/{namespace}/{pod}?podUID=`.
pub(crate) async fn portforward(
    State(s): State<Arc<Shared>>,
    Path((namespace, pod)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    ws: WebSocketUpgrade,
) -> Response {
    let uid = url::form_urlencoded::parse(query.as_deref().unwrap_or("").as_bytes())
        .find(|(k, _)| k == "podUID")
        .map(|(_, v)| v.into_owned());
    let found = match pod_containers(&s, &namespace, &pod, SANDBOX, uid.as_deref()).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    let running = found.into_iter().find(|c| c.state == capstan_containers::State::Running);
    let pid = match running {
        Some(c) => s.runtime.inspect(&c.id).await.ok().and_then(|i| i.pid),
        None => None,
    };
    let Some(pid) = pid else {
        return error(StatusCode::BAD_REQUEST, format!("pod {pod:?} has no running sandbox to forward to"));
    };
    let netns = PathBuf::from(format!("/proc/{pid}/ns/net"));
    ws.protocols([PROTOCOL_PORT_FORWARD])
        .on_upgrade(move |socket| session(socket, netns, pod))
}

/// The streams of one connection, as they arrive.
#[derive(Default)]
struct Pair {
    port: Option<u16>,
    error: Option<u32>,
    data: Option<u32>,
}

/// Runs the session until the client leaves.
async fn session(socket: WebSocket, netns: PathBuf, pod: String) {
    let (sink, incoming) = socket.split();
    let (out_tx, out_rx) = mpsc::channel::<Out>(256);
    let writer = tokio::spawn(crate::spdy::write_frames(out_rx, sink, BATCH));
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    // Input for the pod, by data stream; dropped at the client's end of stream.
    let mut inputs: HashMap<u32, mpsc::Sender<Bytes>> = HashMap::new();
    let mut tasks: HashMap<u32, tokio::task::JoinHandle<()>> = HashMap::new();
    let mut frames = crate::spdy::Frames::new(incoming);
    while let Some(frame) = frames.next().await {
        let frame = match frame {
            Ok(frame) => frame,
            Err(e) => {
                tracing::warn!(pod, error = %e, "port-forward: the client's SPDY stream is malformed; the session ends");
                break;
            }
        };
        match frame {
            Frame::SynStream { stream, headers, .. } => {
                let header = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
                let request = header("requestid").unwrap_or_default();
                // Finished connections are forgotten here, where a new one may come, not per frame.
                tasks.retain(|_, t| !t.is_finished());
                let full = tasks.len() >= MAX_CONNECTIONS || (!pairs.contains_key(&request) && pairs.len() >= MAX_PENDING);
                if full {
                    tracing::warn!(pod, stream, "port-forward: too many streams in one session; this one is reset");
                    let _ = out_tx.send(Out::Reset(stream)).await;
                    continue;
                }
                let _ = out_tx.send(Out::Reply(stream)).await;
                let pair = pairs.entry(request.clone()).or_default();
                pair.port = header("port").and_then(|p| p.parse().ok()).or(pair.port);
                match header("streamtype").as_deref() {
                    Some("error") => pair.error = Some(stream),
                    Some("data") => pair.data = Some(stream),
                    _ => {
                        let _ = out_tx.send(Out::Reset(stream)).await;
                        continue;
                    }
                }
                if let (Some(error_stream), Some(data_stream)) = (pair.error, pair.data) {
                    let port = pair.port;
                    pairs.remove(&request);
                    let (tx, rx) = mpsc::channel(64);
                    inputs.insert(data_stream, tx);
                    let task = tokio::spawn(forward(netns.clone(), port, error_stream, data_stream, rx, out_tx.clone()));
                    tasks.insert(data_stream, task);
                }
            }
            Frame::Data { stream, fin, data } => {
                if let Some(input) = inputs.get(&stream)
                    && !data.is_empty()
                    && input.send(data).await.is_err()
                {
                    inputs.remove(&stream);
                }
                if fin {
                    inputs.remove(&stream);
                }
            }
            Frame::RstStream { stream, .. } => {
                inputs.remove(&stream);
                // The client gave up the connection (the forward ends both streams as it goes).
                if let Some(task) = tasks.remove(&stream) {
                    task.abort();
                }
            }
            Frame::Headers { stream, fin: true } => {
                inputs.remove(&stream);
            }
            Frame::Ping { id } => {
                let _ = out_tx.send(Out::Ping(id)).await;
            }
            Frame::GoAway => break,
            Frame::Headers { .. } | Frame::Ignored => {}
        }
    }
    for (_, task) in tasks {
        task.abort();
    }
    drop(out_tx);
    let _ = writer.await;
}

/// One connection: to `port` on the pod's loopback, its data both ways on `data_stream`, a
/// failure on `error_stream`; both streams end with it.
async fn forward(
    netns: PathBuf,
    port: Option<u16>,
    error_stream: u32,
    data_stream: u32,
    mut input: mpsc::Receiver<Bytes>,
    out: mpsc::Sender<Out>,
) {
    // Whatever happens (even an abort when the client resets), both streams are ended: kubectl
    // waits for the end of the error stream before it lets the connection go.
    struct Finish(mpsc::Sender<Out>, u32, u32);
    impl Drop for Finish {
        fn drop(&mut self) {
            let (out, error_stream, data_stream) = (self.0.clone(), self.1, self.2);
            tokio::spawn(async move {
                for stream in [data_stream, error_stream] {
                    let _ = out
                        .send(Out::Data {
                            stream,
                            fin: true,
                            data: Bytes::new(),
                        })
                        .await;
                }
            });
        }
    }
    let _finish = Finish(out.clone(), error_stream, data_stream);
    let Some(port) = port else {
        report(&out, error_stream, "the stream names no valid port".into()).await;
        return;
    };
    let tcp = match connect_in(netns, port).await {
        Ok(tcp) => tcp,
        Err(e) => {
            // Worded as the kubelet's (Go's) dial errors, which kubectl users know.
            let why = match e.kind() {
                std::io::ErrorKind::ConnectionRefused => "connect: connection refused".to_owned(),
                std::io::ErrorKind::TimedOut => "i/o timeout".to_owned(),
                _ => e.to_string(),
            };
            report(
                &out,
                error_stream,
                format!("error forwarding port {port} to pod: dial tcp4 127.0.0.1:{port}: {why}"),
            )
            .await;
            return;
        }
    };
    let (mut from_pod, mut to_pod) = tcp.into_split();
    // The client's data, on its own: the connection is over when the pod closes its side (the
    // client's input may have ended long before).
    let upstream = tokio::spawn(async move {
        while let Some(chunk) = input.recv().await {
            if to_pod.write_all(&chunk).await.is_err() {
                return;
            }
        }
        // The client's end of stream: the pod reads end of file.
        let _ = to_pod.shutdown().await;
    });
    let mut buf = vec![0u8; CHUNK];
    loop {
        match from_pod.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let data = Bytes::copy_from_slice(&buf[..n]);
                if out
                    .send(Out::Data {
                        stream: data_stream,
                        fin: false,
                        data,
                    })
                    .await
                    .is_err()
                {
                    break;
                }
            }
        }
    }
    upstream.abort();
}

async fn report(out: &mpsc::Sender<Out>, error_stream: u32, message: String) {
    let _ = out
        .send(Out::Data {
            stream: error_stream,
            fin: false,
            data: Bytes::from(message),
        })
        .await;
}

/// A TCP connection to `127.0.0.1:port` made inside the network namespace at `netns`: the
/// socket is made on a short-lived thread that entered the namespace, and keeps it.
async fn connect_in(netns: PathBuf, port: u16) -> std::io::Result<tokio::net::TcpStream> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let result = (|| -> std::io::Result<std::net::TcpStream> {
            let file = std::fs::File::open(&netns)?;
            rustix::thread::move_into_link_name_space(file.as_fd(), Some(rustix::thread::LinkNameSpaceType::Network))?;
            let stream = std::net::TcpStream::connect_timeout(&(std::net::Ipv4Addr::LOCALHOST, port).into(), CONNECT_TIMEOUT)?;
            stream.set_nonblocking(true)?;
            let _ = stream.set_nodelay(true);
            Ok(stream)
        })();
        let _ = tx.send(result);
    });
    let stream = rx.await.map_err(|_| std::io::Error::other("the namespace thread ended"))??;
    tokio::net::TcpStream::from_std(stream)
}
