//! Exec and attach for plain SPDY clients (client-go's SPDY executor, kubectl with WebSockets
//! off), their SPDY/3.1 frames carried in WebSocket binary messages from the API server: a
//! stream per channel, named by its `streamtype` header (error, stdin, stdout, stderr, resize).
//! The process's output goes out on its streams, the client's input and terminal sizes come in
//! on theirs, and the end is a Status on the error stream, as remote-command v4 has it.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::WebSocket;
use bytes::Bytes;
use capstan_api::remotecommand as rc;
use capstan_containers::{Output, Runtime, Session, StreamSpec};
use futures::StreamExt;
use futures::stream::SplitStream;
use tokio::sync::{mpsc, watch};

use crate::spdy::{Frame, Out};
use crate::streams::{Input, pump};

/// How long the client may take to open the streams the output goes to (the kubelet's stream
/// creation timeout).
const STREAMS_WAIT: Duration = Duration::from_secs(30);
/// Output written to the client in one message, at most (about).
const BATCH: usize = 256 << 10;

/// The streams the client opened, by type.
#[derive(Clone, Debug, Default)]
struct Streams {
    error: Option<u32>,
    stdin: Option<u32>,
    stdout: Option<u32>,
    stderr: Option<u32>,
    resize: Option<u32>,
}

/// Runs the session: the client's streams joined to `session`, the process of `command` (empty
/// for an attach) in `container`; ends when the process ends or the client leaves.
pub(crate) async fn session(socket: WebSocket, runtime: Arc<dyn Runtime>, container: String, session: Session, spec: StreamSpec) {
    let Session {
        exec,
        mut output,
        input,
        end_of_input,
    } = session;
    let (sink, incoming) = socket.split();
    let (out_tx, out_rx) = mpsc::channel::<Out>(256);
    let writer = tokio::spawn(crate::spdy::write_frames(out_rx, sink, BATCH));
    let (streams_tx, mut streams_rx) = watch::channel(Streams::default());
    let (inputs_tx, inputs) = mpsc::channel(crate::streams::INPUTS);
    let client = Client {
        inputs: inputs_tx,
        out: out_tx.clone(),
        streams: streams_tx,
    };
    let mut reading = tokio::spawn(client.read(incoming));
    let stderr_wanted = spec.stderr && !spec.tty;
    let wanted = |s: &Streams| s.error.is_some() && (!spec.stdout || s.stdout.is_some()) && (!stderr_wanted || s.stderr.is_some());
    let streams = match tokio::time::timeout(STREAMS_WAIT, streams_rx.wait_for(wanted)).await {
        Ok(Ok(s)) => Some(s.clone()),
        _ => None,
    };
    let Some(streams) = streams else {
        tracing::info!("a SPDY exec client did not open its streams; the session ends");
        reading.abort();
        crate::streams::end_process(runtime.as_ref(), exec.as_deref()).await;
        drop(out_tx);
        let _ = writer.await;
        return;
    };
    let (error_stream, stdout, stderr) = (streams.error.unwrap_or_default(), streams.stdout, streams.stderr);
    let pumping = tokio::spawn(pump(inputs, runtime.clone(), container, exec.clone(), input, end_of_input));
    let mut failure = None;
    let client_left = loop {
        tokio::select! {
            chunk = output.next() => {
                let (stream, data) = match chunk {
                    Some(Ok(Output::Stdout(b))) => (stdout, b),
                    Some(Ok(Output::Stderr(b))) => (stderr.or(stdout), b),
                    Some(Err(e)) => {
                        failure = Some(e.to_string());
                        break false;
                    }
                    None => break false,
                };
                if let Some(stream) = stream
                    && out_tx.send(Out::Data { stream, fin: false, data }).await.is_err()
                {
                    break true;
                }
            }
            _ = &mut reading => break true,
        }
    };
    if client_left {
        crate::streams::end_process(runtime.as_ref(), exec.as_deref()).await;
    } else {
        let status = crate::streams::final_status(runtime.as_ref(), exec.as_deref(), failure, &spec.command).await;
        let _ = out_tx
            .send(Out::Data {
                stream: error_stream,
                fin: true,
                data: Bytes::from(status.to_string()),
            })
            .await;
        for stream in [stdout, stderr].into_iter().flatten() {
            let _ = out_tx
                .send(Out::Data {
                    stream,
                    fin: true,
                    data: Bytes::new(),
                })
                .await;
        }
    }
    reading.abort();
    pumping.abort();
    drop(out_tx);
    let _ = writer.await;
}

/// The client's side: its streams, and its input and terminal sizes passed on as [`Input`]s.
struct Client {
    inputs: mpsc::Sender<Input>,
    out: mpsc::Sender<Out>,
    streams: watch::Sender<Streams>,
}

impl Client {
    /// Reads the client's frames until it leaves.
    async fn read(self, incoming: SplitStream<WebSocket>) {
        let mut frames = crate::spdy::Frames::new(incoming);
        while let Some(frame) = frames.next().await {
            let frame = match frame {
                Ok(frame) => frame,
                Err(e) => {
                    tracing::warn!(error = %e, "exec: the client's SPDY stream is malformed; the session ends");
                    return;
                }
            };
            let streams = self.streams.borrow().clone();
            let inputs = match frame {
                Frame::SynStream { stream, headers, .. } => {
                    let kind = headers.iter().find(|(k, _)| k == "streamtype").map(|(_, v)| v.as_str());
                    let known = self.streams.send_if_modified(|s| {
                        let slot = match kind {
                            Some("error") => &mut s.error,
                            Some("stdin") => &mut s.stdin,
                            Some("stdout") => &mut s.stdout,
                            Some("stderr") => &mut s.stderr,
                            Some("resize") => &mut s.resize,
                            _ => return false,
                        };
                        *slot = Some(stream);
                        true
                    });
                    let reply = if known { Out::Reply(stream) } else { Out::Reset(stream) };
                    let _ = self.out.send(reply).await;
                    vec![]
                }
                Frame::Data { stream, fin, data } if Some(stream) == streams.stdin => {
                    let mut inputs = vec![Input::Stdin(data)];
                    if fin {
                        inputs.push(Input::EndOfStdin);
                    }
                    inputs
                }
                Frame::Data { stream, data, .. } if Some(stream) == streams.resize => sizes(&data),
                Frame::Headers { stream, fin: true } | Frame::RstStream { stream, .. } if Some(stream) == streams.stdin => {
                    vec![Input::EndOfStdin]
                }
                Frame::Ping { id } => {
                    let _ = self.out.send(Out::Ping(id)).await;
                    vec![]
                }
                Frame::GoAway => return,
                _ => vec![],
            };
            for input in inputs {
                if self.inputs.send(input).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Terminal sizes, as client-go writes them: JSON objects `{"Width":…,"Height":…}`, one
/// after another.
fn sizes(data: &[u8]) -> Vec<Input> {
    serde_json::Deserializer::from_slice(data)
        .into_iter::<serde_json::Value>()
        .map_while(Result::ok)
        .filter_map(|v| rc::parse_resize(v.to_string().as_bytes()))
        .map(|(width, height)| Input::Resize(width, height))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_go_writes_sizes_one_after_another() {
        let data = br#"{"Width":80,"Height":24}{"Width":120,"Height":40}"#;
        assert_eq!(sizes(data), [Input::Resize(80, 24), Input::Resize(120, 40)]);
        assert_eq!(sizes(b"{oops"), []);
    }
}
