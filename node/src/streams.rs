//! Exec and attach for the API server: a WebSocket speaking Kubernetes' remote-command protocol
//! (`v5.channel.k8s.io`, or a plain SPDY client's frames: see `spdy_exec`) joined to a process
//! the Engine runs in the pod's container. A client
//! that leaves takes its exec'd process with it, so nothing it started outlives the session.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use bytes::Bytes;
use capstan_api::remotecommand::{self as rc, CLOSE, ERROR, PROTOCOL_V5, RESIZE, STDERR, STDIN, STDOUT};
use capstan_containers::{Output, Runtime, Session, StreamSpec};
use futures::stream::SplitStream;
use futures::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use std::collections::HashMap;

use crate::server::{Shared, StreamTarget, error, pod_containers};

/// How long an ended exec may take to report its exit code.
const EXIT_WAIT: Duration = Duration::from_secs(2);
/// Client messages queued for a process that is not reading its input.
pub(crate) const INPUTS: usize = 16;

/// What a stream request asks for.
#[derive(Debug, Default, PartialEq, Eq)]
struct Request {
    spec: StreamSpec,
    uid: Option<String>,
}

fn parse(query: &str) -> Request {
    let mut r = Request::default();
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        match k.as_ref() {
            "command" => r.spec.command.push(v.into_owned()),
            "stdin" => r.spec.stdin = rc::flag(&v),
            "stdout" => r.spec.stdout = rc::flag(&v),
            "stderr" => r.spec.stderr = rc::flag(&v),
            "tty" => r.spec.tty = rc::flag(&v),
            "podUID" => r.uid = Some(v.into_owned()),
            _ => {}
        }
    }
    // A terminal merges stderr into its one stream.
    r.spec.stderr &= !r.spec.tty;
    r
}

/// `GET /exec/{namespace}/{pod}/{container}?command=...&stdin=&stdout=&stderr=&tty=`.
pub(crate) async fn exec(
    State(s): State<Arc<Shared>>,
    Path((namespace, pod, container)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
    ws: WebSocketUpgrade,
) -> Response {
    let request = parse(query.as_deref().unwrap_or(""));
    if request.spec.command.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "you must specify at least one command for the container".into(),
        );
    }
    open(s, (namespace, pod, container), request, ws, true).await
}

/// `GET /attach/{namespace}/{pod}/{container}?stdin=&stdout=&stderr=&tty=`.
pub(crate) async fn attach(
    State(s): State<Arc<Shared>>,
    Path((namespace, pod, container)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
    ws: WebSocketUpgrade,
) -> Response {
    let mut request = parse(query.as_deref().unwrap_or(""));
    request.spec.command.clear();
    open(s, (namespace, pod, container), request, ws, false).await
}

/// Remembered stream targets at most (pods come and go; the map starts over when full).
const TARGETS: usize = 1024;

fn targets(s: &Shared) -> std::sync::MutexGuard<'_, HashMap<StreamTarget, String>> {
    s.stream_targets.lock().unwrap_or_else(|e| e.into_inner())
}

/// The process's streams in container `id`.
async fn session(s: &Shared, id: &str, request: &Request, exec: bool) -> Result<Session, capstan_containers::RuntimeError> {
    if exec {
        s.runtime.exec_session(id, &request.spec).await
    } else {
        s.runtime.attach(id, &request.spec).await
    }
}

/// Finds the running container (the one found last time first), connects the process's
/// streams, then takes the WebSocket: a failure before that is an HTTP error the API server
/// relays.
async fn open(
    s: Arc<Shared>,
    (namespace, pod, container): (String, String, String),
    request: Request,
    ws: WebSocketUpgrade,
    exec: bool,
) -> Response {
    let target: StreamTarget = (namespace, pod, container, request.uid.clone());
    let known = targets(&s).get(&target).cloned();
    if let Some(id) = known {
        match session(&s, &id, &request, exec).await {
            Ok(session) => return upgrade(ws, s.runtime.clone(), id, session, request.spec),
            // Stopped, restarted or gone since: look again.
            Err(_) => {
                targets(&s).remove(&target);
            }
        }
    }
    let (namespace, pod, container, _) = &target;
    let found = match pod_containers(&s, namespace, pod, container, request.uid.as_deref()).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    if found.is_empty() {
        return error(StatusCode::NOT_FOUND, format!("container {container:?} in pod {pod:?} not found"));
    }
    let Some(running) = found.into_iter().find(|c| c.state == capstan_containers::State::Running) else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("container {container:?} in pod {pod:?} is not running"),
        );
    };
    let session = match session(&s, &running.id, &request, exec).await {
        Ok(session) => session,
        Err(e) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot connect to container {container:?}: {e}"),
            );
        }
    };
    {
        let mut known = targets(&s);
        if known.len() >= TARGETS {
            known.clear();
        }
        known.insert(target.clone(), running.id.clone());
    }
    upgrade(ws, s.runtime.clone(), running.id, session, request.spec)
}

/// Takes the WebSocket and relays the session in the protocol the client chose.
fn upgrade(ws: WebSocketUpgrade, runtime: Arc<dyn Runtime>, id: String, session: Session, spec: StreamSpec) -> Response {
    ws.protocols([PROTOCOL_V5, rc::PROTOCOL_SPDY_V4])
        .on_upgrade(move |socket| async move {
            if socket.protocol().is_some_and(|p| p == rc::PROTOCOL_SPDY_V4) {
                crate::spdy_exec::session(socket, runtime, id, session, spec).await;
            } else {
                relay(socket, runtime, id, session, spec).await;
            }
        })
}

/// What the client sends the process, whichever protocol carried it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Input {
    Stdin(Bytes),
    EndOfStdin,
    /// A terminal's size: width, height.
    Resize(u16, u16),
}

/// Passes the client's inputs to the process until the client leaves: stdin (dropped once the
/// process closed its own), end of input where the session passes it on, terminal sizes.
pub(crate) async fn pump(
    mut inputs: mpsc::Receiver<Input>,
    runtime: Arc<dyn Runtime>,
    container: String,
    exec: Option<String>,
    mut stdin: std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>,
    end_of_input: bool,
) {
    let mut open = true;
    while let Some(input) = inputs.recv().await {
        match input {
            Input::Stdin(data) if open && !data.is_empty() => open = stdin.write_all(&data).await.is_ok(),
            Input::EndOfStdin if open => {
                if end_of_input {
                    let _ = stdin.shutdown().await;
                }
                open = false;
            }
            Input::Resize(width, height) => {
                if let Err(e) = runtime.resize(&container, exec.as_deref(), width, height).await {
                    tracing::debug!(error = %e, "cannot resize the terminal");
                }
            }
            _ => {}
        }
    }
}

/// Runs the session: output to the client, the client's input, resizes and end of input to the
/// process, and the command's Status when it ends.
async fn relay(socket: WebSocket, runtime: Arc<dyn Runtime>, container: String, session: Session, spec: StreamSpec) {
    let Session {
        exec,
        mut output,
        input,
        end_of_input,
    } = session;
    let (mut sink, incoming) = socket.split();
    let (inputs_tx, inputs) = mpsc::channel(INPUTS);
    // Input runs on its own, so that a process blocked writing output never stalls its input.
    let mut reading = tokio::spawn(read(incoming, inputs_tx));
    let pumping = tokio::spawn(pump(inputs, runtime.clone(), container, exec.clone(), input, end_of_input));
    let mut failure = None;
    let client_left = loop {
        tokio::select! {
            chunk = output.next() => {
                let message = match chunk {
                    Some(Ok(Output::Stdout(b))) => rc::frame(STDOUT, &b),
                    Some(Ok(Output::Stderr(b))) => rc::frame(STDERR, &b),
                    Some(Err(e)) => {
                        failure = Some(e.to_string());
                        break false;
                    }
                    None => break false,
                };
                if sink.send(Message::Binary(message.into())).await.is_err() {
                    break true;
                }
            }
            _ = &mut reading => break true,
        }
    };
    if client_left {
        end_process(runtime.as_ref(), exec.as_deref()).await;
    } else {
        let status = final_status(runtime.as_ref(), exec.as_deref(), failure, &spec.command).await;
        let _ = sink
            .send(Message::Binary(rc::frame(ERROR, status.to_string().as_bytes()).into()))
            .await;
        // A normal close: kubectl takes any other as a broken stream.
        let _ = sink.send(Message::Close(Some(normal_close()))).await;
    }
    reading.abort();
    pumping.abort();
}

fn normal_close() -> axum::extract::ws::CloseFrame {
    axum::extract::ws::CloseFrame {
        code: axum::extract::ws::close_code::NORMAL,
        reason: "".into(),
    }
}

/// The client's messages as inputs: stdin, resizes, and v5's end of stdin. Returns when the
/// client leaves.
async fn read(mut incoming: SplitStream<WebSocket>, inputs: mpsc::Sender<Input>) {
    while let Some(Ok(message)) = incoming.next().await {
        let data = match message {
            Message::Binary(data) => data,
            Message::Close(_) => break,
            _ => continue,
        };
        let input = match data.split_first() {
            Some((&STDIN, _)) => Input::Stdin(data.slice(1..)),
            Some((&RESIZE, rest)) => match rc::parse_resize(rest) {
                Some((width, height)) => Input::Resize(width, height),
                None => continue,
            },
            Some((&CLOSE, [STDIN])) => Input::EndOfStdin,
            _ => continue,
        };
        if inputs.send(input).await.is_err() {
            break;
        }
    }
}

/// The Status that ends a session whose output ended: the stream's failure, else the exec's
/// exit code (an attach ends as a success).
pub(crate) async fn final_status(
    runtime: &dyn Runtime,
    exec: Option<&str>,
    failure: Option<String>,
    command: &[String],
) -> serde_json::Value {
    match (failure, exec) {
        (Some(message), _) => rc::failure_status(&message),
        (None, Some(exec)) => match exit_code(runtime, exec).await {
            Some(code) => rc::exit_status(command, code),
            None => rc::failure_status("the command's exit code is unknown"),
        },
        (None, None) => rc::exit_status(command, 0),
    }
}

/// The exit code of an exec whose output ended. The Engine records the exit a moment after the
/// output closes (its exit event is handled apart from the streams), usually within a few
/// milliseconds: asked again after 1 ms, then twice as long each time, so that the common case
/// does not wait out a fixed interval on every `kubectl exec`.
async fn exit_code(runtime: &dyn Runtime, exec: &str) -> Option<i64> {
    let deadline = tokio::time::Instant::now() + EXIT_WAIT;
    let mut pause = Duration::from_millis(1);
    loop {
        match runtime.exec_state(exec).await {
            Ok(state) if !state.running => return state.exit_code,
            Ok(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            _ => return None,
        }
    }
}

/// Kills an exec'd process whose client left: the Engine has no call for it, so it is
/// signalled by its host pid. An attach (no exec) leaves the container running.
pub(crate) async fn end_process(runtime: &dyn Runtime, exec: Option<&str>) {
    let Some(exec) = exec else { return };
    let Ok(state) = runtime.exec_state(exec).await else {
        return;
    };
    let pid = state.pid.and_then(|p| rustix::process::Pid::from_raw(p as i32));
    if let (true, Some(pid)) = (state.running, pid) {
        match rustix::process::kill_process(pid, rustix::process::Signal::KILL) {
            Ok(()) => tracing::info!(
                exec,
                pid = pid.as_raw_nonzero().get(),
                "the client left: its exec'd process was killed"
            ),
            Err(e) => tracing::warn!(exec, error = %e, "the client left, and its exec'd process could not be killed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_names_the_command_and_streams() {
        let r = parse("command=sh&command=-c&command=echo+a%2Fb&stdin=true&stdout=true&stderr=true&tty=false&podUID=u1");
        assert_eq!(r.spec.command, ["sh", "-c", "echo a/b"]);
        assert!(r.spec.stdin && r.spec.stdout && r.spec.stderr && !r.spec.tty);
        assert_eq!(r.uid.as_deref(), Some("u1"));
        let tty = parse("command=sh&stdout=true&stderr=true&tty=true");
        assert!(tty.spec.tty && !tty.spec.stderr, "a terminal has one output stream");
    }
}
