//! Kubernetes' remote-command stream protocol (`v5.channel.k8s.io`), spoken by kubectl to the API
//! server for exec and attach and by the API server to the node agents: every WebSocket binary
//! message is one channel byte and its payload. Port-forward's subprotocol is named here too.

use serde_json::{Value, json};

/// The subprotocols served, newest first. v4 lacks the stream-close signal.
pub const PROTOCOL_V5: &str = "v5.channel.k8s.io";
pub const PROTOCOL_V4: &str = "v4.channel.k8s.io";
/// Port-forward's subprotocol: SPDY/3.1 frames carried in binary messages (kubectl 1.31+).
pub const PROTOCOL_PORT_FORWARD: &str = "SPDY/3.1+portforward.k8s.io";
/// Exec and attach as plain SPDY clients speak them (`v4.channel.k8s.io` over a SPDY/3.1
/// connection: a stream per channel), carried from the API server to the node agent the same
/// way: SPDY/3.1 frames in binary messages.
pub const PROTOCOL_SPDY_V4: &str = "SPDY/3.1+v4.channel.k8s.io";
/// The HTTP upgrade of a plain SPDY client, and the header naming its stream protocols.
pub const SPDY_UPGRADE: &str = "SPDY/3.1";
pub const STREAM_PROTOCOL_HEADER: &str = "X-Stream-Protocol-Version";
/// The stream protocol of plain SPDY port-forward.
pub const PORT_FORWARD_V1: &str = "portforward.k8s.io";

pub const STDIN: u8 = 0;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
/// The final Status of the command (metav1.Status JSON).
pub const ERROR: u8 = 3;
/// Terminal size changes: `{"Width": w, "Height": h}`.
pub const RESIZE: u8 = 4;
/// v5: `[CLOSE, channel]` says no more data comes on that channel (stdin's end of file).
pub const CLOSE: u8 = 255;

/// The query a node agent's exec and attach endpoints take, beside the command.
pub const STREAM_FLAGS: [&str; 4] = ["stdin", "stdout", "stderr", "tty"];

/// One message of the protocol.
pub fn frame(channel: u8, payload: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(payload.len() + 1);
    m.push(channel);
    m.extend_from_slice(payload);
    m
}

/// The Status that ends a command: Success, or kubectl's `NonZeroExitCode` carrying the code
/// (kubectl exits with it).
pub fn exit_status(command: &[String], code: i64) -> Value {
    if code == 0 {
        return json!({"metadata": {}, "status": "Success"});
    }
    json!({
        "metadata": {},
        "status": "Failure",
        "message": format!("command terminated with non-zero exit code: error executing command {command:?}, exit code {code}"),
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
    })
}

/// The Status of a stream that failed (kubectl prints the message).
pub fn failure_status(message: &str) -> Value {
    json!({"metadata": {}, "status": "Failure", "message": message, "reason": "InternalError", "code": 500})
}

/// A terminal size message's width and height.
pub fn parse_resize(payload: &[u8]) -> Option<(u16, u16)> {
    let v: Value = serde_json::from_slice(payload).ok()?;
    let dim = |k: &str| v[k].as_u64().and_then(|n| u16::try_from(n).ok());
    Some((dim("Width")?, dim("Height")?))
}

/// The boolean query flags Kubernetes accepts (`true`, `1`), here and in `pods/log`.
pub fn flag(value: &str) -> bool {
    matches!(value, "true" | "1" | "True")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_non_zero_exit_carries_its_code_as_kubectl_reads_it() {
        let s = exit_status(&["sh".into(), "-c".into(), "exit 3".into()], 3);
        assert_eq!(s["reason"], "NonZeroExitCode");
        assert_eq!(s["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(s["details"]["causes"][0]["message"], "3");
        assert_eq!(exit_status(&[], 0)["status"], "Success");
    }

    #[test]
    fn resize_messages_are_read_and_bad_ones_ignored() {
        assert_eq!(parse_resize(br#"{"Width":120,"Height":40}"#), Some((120, 40)));
        assert_eq!(parse_resize(b"{}"), None);
        assert_eq!(parse_resize(br#"{"Width":70000,"Height":1}"#), None);
        assert_eq!(frame(STDOUT, b"hi"), vec![1, b'h', b'i']);
    }
}
