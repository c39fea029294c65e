//! Exec, attach and port-forward (`pods/exec`, `pods/attach`, `pods/portforward`): kubectl's
//! WebSocket (`v5.channel.k8s.io` or v4; `SPDY/3.1+portforward.k8s.io`) or a plain SPDY/3.1
//! upgrade (older clients, client-go's SPDY executor) is authorised (`create` on the
//! subresource, as KEP-4006 requires of an upgrade that is a GET), audited, and relayed to the
//! pod's node agent — message for message, or a SPDY connection's bytes in binary messages —
//! which runs the process on the Engine or opens the connections in the pod. Running things
//! changes no desired state, so Git has no say in them.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::extract::Request;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use capstan_api::KindInfo;
use capstan_api::remotecommand::{self as rc, CLOSE, PROTOCOL_PORT_FORWARD, PROTOCOL_V4, PROTOCOL_V5};
use futures::{FutureExt, SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message as AgentMessage;

use super::status::ApiError;
use super::{ApiState, authorize};
use crate::auth::{Attributes, Identity, Verb};
use crate::events::{EventType, Recorder};
use crate::kubelet::AgentSocket;

/// The pod subresources that are streams rather than objects.
pub(super) const SUBRESOURCES: [&str; 3] = ["exec", "attach", "portforward"];

/// A session with no message either way for this long is closed (the kubelet's
/// `--streaming-connection-idle-timeout` default), so forgotten port-forwards do not hold
/// connections to node agents for ever.
const IDLE: Duration = Duration::from_secs(4 * 3600);

/// What kubectl asked for.
#[derive(Debug, Default, PartialEq, Eq)]
struct Asked {
    command: Vec<String>,
    container: Option<String>,
    /// The stream flags, as given (`stdin=true` ...).
    flags: Vec<(String, String)>,
}

fn parse(query: &str) -> Asked {
    let mut asked = Asked::default();
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        match k.as_ref() {
            "command" => asked.command.push(v.into_owned()),
            "container" if !v.is_empty() => asked.container = Some(v.into_owned()),
            k if rc::STREAM_FLAGS.contains(&k) => asked.flags.push((k.to_owned(), v.into_owned())),
            _ => {}
        }
    }
    asked
}

/// The subprotocol to speak: the newest the client offers of those `served`.
fn choose_protocol(headers: &HeaderMap, served: &[&'static str]) -> Option<&'static str> {
    let offered: Vec<&str> = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    served.iter().copied().find(|p| offered.contains(p))
}

fn upgrade_to(headers: &HeaderMap, protocol: &str) -> bool {
    headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(protocol))
}

/// The stream protocol a plain SPDY client gets: port-forward's, or v4 of the remote-command
/// protocol (the newest whose SPDY form the agent speaks).
fn choose_spdy_protocol(headers: &HeaderMap, forward: bool) -> Option<&'static str> {
    let wanted = if forward { rc::PORT_FORWARD_V1 } else { PROTOCOL_V4 };
    headers
        .get_all(rc::STREAM_PROTOCOL_HEADER)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == wanted)
        .then_some(wanted)
}

/// Serves `GET|POST .../pods/{name}/{exec,attach,portforward}`, as a WebSocket or a plain SPDY
/// upgrade.
pub(super) async fn serve(
    state: Arc<ApiState>,
    id: &Identity,
    req: Request,
    kind: &'static KindInfo,
    namespace: Option<&str>,
    name: &str,
    sub: &str,
) -> Result<Response, ApiError> {
    let ns = namespace.unwrap_or("default");
    authorize(
        &state,
        id,
        &Attributes::new(Verb::Create, kind, Some(ns), name).subresource(Some(sub)),
    )?;
    let forward = sub == "portforward";
    let asked = parse(req.uri().query().unwrap_or(""));
    if sub == "exec" && asked.command.is_empty() {
        return Err(ApiError::bad_request("you must specify at least one command for the container"));
    }
    let pod = state
        .cache
        .get(kind, ns, name)
        .ok_or_else(|| ApiError::not_found(format!("pods {name:?} not found")))?;
    let pod = pod.object.clone();
    let container = if forward {
        String::new()
    } else {
        crate::nodelogs::pick_container(&pod, asked.container.as_deref())?
    };
    let phase = pod["status"]["phase"].as_str().unwrap_or_default();
    if matches!(phase, "Succeeded" | "Failed") {
        return Err(ApiError::bad_request(format!(
            "cannot {sub} into a container in a completed pod; current phase is {phase}"
        )));
    }
    let Some(node) = pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) else {
        return Err(ApiError::bad_request(format!("pod {name} does not have a host assigned")));
    };
    let served: &[&'static str] = if forward {
        &[PROTOCOL_PORT_FORWARD]
    } else {
        &[PROTOCOL_V5, PROTOCOL_V4]
    };
    let spdy = upgrade_to(req.headers(), rc::SPDY_UPGRADE);
    let upgrade = if spdy {
        let Some(protocol) = choose_spdy_protocol(req.headers(), forward) else {
            let wanted = if forward { rc::PORT_FORWARD_V1 } else { PROTOCOL_V4 };
            return Err(ApiError::bad_request(format!(
                "the SPDY client offers no stream protocol served for pods/{sub} ({} {wanted} is)",
                rc::STREAM_PROTOCOL_HEADER
            )));
        };
        let mut req = req;
        let Some(on_upgrade) = req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>() else {
            return Err(ApiError::bad_request("this connection cannot be upgraded"));
        };
        Upgrade::Spdy { protocol, on_upgrade }
    } else if upgrade_to(req.headers(), "websocket") {
        let Some(protocol) = choose_protocol(req.headers(), served) else {
            return Err(ApiError::bad_request(format!(
                "the client offers none of the stream protocols served for pods/{sub}: {}",
                served.join(", ")
            )));
        };
        let (mut parts, _) = req.into_parts();
        let upgrade = WebSocketUpgrade::from_request_parts(&mut parts, &())
            .await
            .map_err(|e| ApiError::bad_request(format!("the WebSocket upgrade is malformed: {e}")))?;
        Upgrade::WebSocket { protocol, upgrade }
    } else {
        return Err(ApiError::bad_request(format!(
            "pods/{sub} is a stream: upgrade the connection to WebSocket ({}) or SPDY/3.1",
            served.join(", ")
        )));
    };
    let Some(kubelets) = &state.kubelets else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "no node agent serves streams",
        ));
    };
    let seg = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let uid = pod["metadata"]["uid"].as_str().unwrap_or_default();
    let path = if forward {
        format!("/portforward/{}/{}?podUID={}", seg(ns), seg(name), seg(uid))
    } else {
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        for c in &asked.command {
            q.append_pair("command", c);
        }
        for (k, v) in &asked.flags {
            q.append_pair(k, v);
        }
        q.append_pair("podUID", uid);
        format!("/{sub}/{}/{}/{}?{}", seg(ns), seg(name), seg(&container), q.finish())
    };
    let agent_protocol = match (forward, spdy) {
        (true, _) => PROTOCOL_PORT_FORWARD,
        (false, true) => rc::PROTOCOL_SPDY_V4,
        (false, false) => PROTOCOL_V5,
    };
    let agent = kubelets.websocket(node, &path, agent_protocol).await?;
    record(&state, id, &pod, sub, &container, &asked.command);
    match upgrade {
        Upgrade::WebSocket { protocol, upgrade } => {
            let v4 = protocol == PROTOCOL_V4;
            Ok(upgrade.protocols([protocol]).on_upgrade(move |client| relay(client, agent, v4)))
        }
        Upgrade::Spdy { protocol, on_upgrade } => {
            tokio::spawn(async move {
                match on_upgrade.await {
                    Ok(client) => relay_spdy(hyper_util::rt::TokioIo::new(client), agent).await,
                    Err(e) => tracing::debug!(error = %e, "a SPDY upgrade did not complete"),
                }
            });
            Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header(header::CONNECTION, "Upgrade")
                .header(header::UPGRADE, rc::SPDY_UPGRADE)
                .header(rc::STREAM_PROTOCOL_HEADER, protocol)
                .body(axum::body::Body::empty())
                .map_err(|e| ApiError::internal(e.to_string()))
        }
    }
}

/// How the client's connection becomes a stream.
enum Upgrade {
    WebSocket {
        protocol: &'static str,
        upgrade: WebSocketUpgrade,
    },
    Spdy {
        protocol: &'static str,
        on_upgrade: hyper::upgrade::OnUpgrade,
    },
}

/// Relays a plain SPDY connection's bytes to the agent as binary messages and back, until
/// either side ends; the agent speaks SPDY itself.
async fn relay_spdy(client: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin, agent: AgentSocket) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut client_rx, mut client_tx) = tokio::io::split(client);
    let (mut agent_tx, mut agent_rx) = agent.split();
    let seen = Seen::new();
    let up = async {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = match client_rx.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            seen.touch();
            let data = bytes::Bytes::copy_from_slice(&buf[..n]);
            if agent_tx.send(AgentMessage::Binary(data)).await.is_err() {
                break;
            }
        }
        let _ = agent_tx.send(AgentMessage::Close(None)).await;
    };
    let down = async {
        while let Some(Ok(message)) = agent_rx.next().await {
            seen.touch();
            let data = match message {
                AgentMessage::Binary(data) => data,
                AgentMessage::Close(_) => break,
                _ => continue,
            };
            if client_tx.write_all(&data).await.is_err() || client_tx.flush().await.is_err() {
                break;
            }
        }
        let _ = client_tx.shutdown().await;
    };
    tokio::select! {
        _ = up => {}
        _ = down => {}
        _ = seen.idle_for(IDLE) => tracing::info!("closing a stream idle for {} h", IDLE.as_secs() / 3600),
    }
}

/// The audit line and the pod's Event: who ran what where.
fn record(state: &ApiState, id: &Identity, pod: &serde_json::Value, sub: &str, container: &str, command: &[String]) {
    let (ns, name) = (
        pod["metadata"]["namespace"].as_str().unwrap_or_default(),
        pod["metadata"]["name"].as_str().unwrap_or_default(),
    );
    let user = id.user_name();
    tracing::info!(target: "capstan::audit", user = %user, verb = "create", resource = %format!("pods/{sub}"), namespace = ns, pod = name, container, command = ?command, "audit");
    let (reason, message) = match sub {
        "exec" => ("Exec", format!("{user} ran {command:?} in container {container:?}")),
        "portforward" => ("PortForward", format!("{user} forwarded connections to the pod's ports")),
        _ => ("Attach", format!("{user} attached to container {container:?}")),
    };
    Recorder::new(state.objects.clone(), "kube-apiserver", None).record(pod, EventType::Normal, reason, message);
}

/// Relays messages both ways until either side ends. A v4 client gets no stream-close signals
/// (its protocol has none); port-forward's messages are bytes of SPDY frames, passed as they are.
async fn relay(client: WebSocket, agent: AgentSocket, v4: bool) {
    let (mut client_tx, mut client_rx) = client.split();
    let (mut agent_tx, mut agent_rx) = agent.split();
    let seen = Seen::new();
    let up = async {
        let read = |m: Message| match m {
            Message::Binary(data) => Relayed::Data(data),
            Message::Close(_) => Relayed::Close,
            _ => Relayed::Skip,
        };
        pump(&mut client_rx, &mut agent_tx, read, AgentMessage::Binary, &seen).await;
        let normal = tokio_tungstenite::tungstenite::protocol::CloseFrame {
            code: tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Normal,
            reason: "".into(),
        };
        let _ = agent_tx.send(AgentMessage::Close(Some(normal))).await;
    };
    let down = async {
        let read = |m: AgentMessage| match m {
            AgentMessage::Binary(data) if !(v4 && data.first() == Some(&CLOSE)) => Relayed::Data(data),
            AgentMessage::Close(_) => Relayed::Close,
            _ => Relayed::Skip,
        };
        pump(&mut agent_rx, &mut client_tx, read, Message::Binary, &seen).await;
        // A normal close: kubectl takes any other as a broken stream.
        let normal = axum::extract::ws::CloseFrame {
            code: axum::extract::ws::close_code::NORMAL,
            reason: "".into(),
        };
        let _ = client_tx.send(Message::Close(Some(normal))).await;
    };
    tokio::select! {
        _ = up => {}
        _ = down => {}
        _ = seen.idle_for(IDLE) => tracing::info!("closing a stream idle for {} h", IDLE.as_secs() / 3600),
    }
}

/// When a session last carried a message, either way.
struct Seen {
    start: tokio::time::Instant,
    /// Milliseconds after `start`.
    last: std::sync::atomic::AtomicU64,
}

impl Seen {
    fn new() -> Seen {
        Seen {
            start: tokio::time::Instant::now(),
            last: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// Ends once nothing has been seen for `limit`.
    async fn idle_for(&self, limit: Duration) {
        loop {
            let last = self.start + Duration::from_millis(self.last.load(std::sync::atomic::Ordering::Relaxed));
            if last.elapsed() >= limit {
                return;
            }
            tokio::time::sleep_until(last + limit).await;
        }
    }
}

/// What a message read on one side is to the other.
enum Relayed {
    Data(bytes::Bytes),
    Close,
    Skip,
}

/// Forwards `rx` to `tx` until either ends or `rx` closes. Everything already waiting goes out
/// before one flush: kubectl writes each SPDY frame as two messages, and a flush each would cost
/// a TLS record and a write each.
async fn pump<M, E, N, W>(
    rx: &mut (impl futures::Stream<Item = Result<M, E>> + Unpin),
    tx: &mut W,
    read: impl Fn(M) -> Relayed,
    write: impl Fn(bytes::Bytes) -> N,
    seen: &Seen,
) where
    W: futures::Sink<N> + Unpin,
{
    'session: while let Some(Ok(first)) = rx.next().await {
        seen.touch();
        let mut next = Some(first);
        while let Some(message) = next {
            next = waiting(rx);
            let data = match read(message) {
                Relayed::Data(data) => data,
                Relayed::Close => break 'session,
                Relayed::Skip => continue,
            };
            if tx.feed(write(data)).await.is_err() {
                break 'session;
            }
        }
        if tx.flush().await.is_err() {
            break;
        }
    }
}

/// The next message if one is already here (a bounded burst: at most what the socket holds).
fn waiting<S, M, E>(stream: &mut S) -> Option<M>
where
    S: futures::Stream<Item = Result<M, E>> + Unpin,
{
    stream.next().now_or_never().flatten().and_then(Result::ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_session_is_idle_only_when_nothing_passes_either_way() {
        let seen = Seen::new();
        let limit = Duration::from_secs(60);
        let idle = seen.idle_for(limit);
        tokio::pin!(idle);
        for _ in 0..5 {
            tokio::time::advance(Duration::from_secs(50)).await;
            seen.touch();
            assert!(futures::poll!(idle.as_mut()).is_pending(), "traffic keeps it open");
        }
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(futures::poll!(idle.as_mut()).is_ready());
    }

    #[test]
    fn the_query_gives_command_container_and_flags() {
        let a = parse("command=tar&command=cf&command=-&command=%2Fetc%2Fhosts&container=app&stdout=true&stderr=true&pretty=1");
        assert_eq!(a.command, ["tar", "cf", "-", "/etc/hosts"]);
        assert_eq!(a.container.as_deref(), Some("app"));
        assert_eq!(
            a.flags,
            [("stdout".to_owned(), "true".to_owned()), ("stderr".to_owned(), "true".to_owned())]
        );
    }

    #[test]
    fn the_newest_offered_protocol_is_spoken() {
        let mut h = HeaderMap::new();
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            "v4.channel.k8s.io, v5.channel.k8s.io".parse().unwrap(),
        );
        let exec = [PROTOCOL_V5, PROTOCOL_V4];
        assert_eq!(choose_protocol(&h, &exec), Some(PROTOCOL_V5));
        h.insert(header::SEC_WEBSOCKET_PROTOCOL, "v4.channel.k8s.io".parse().unwrap());
        assert_eq!(choose_protocol(&h, &exec), Some(PROTOCOL_V4));
        h.insert(header::SEC_WEBSOCKET_PROTOCOL, "channel.k8s.io".parse().unwrap());
        assert_eq!(choose_protocol(&h, &exec), None);
        h.insert(header::SEC_WEBSOCKET_PROTOCOL, PROTOCOL_PORT_FORWARD.parse().unwrap());
        assert_eq!(choose_protocol(&h, &[PROTOCOL_PORT_FORWARD]), Some(PROTOCOL_PORT_FORWARD));
    }
}
