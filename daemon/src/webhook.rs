//! The Git webhook, `POST /hooks/git`: outside bearer auth, so a forge can call it, but accepted
//! only with the forge's own proof of the shared secret (GitHub `X-Hub-Signature-256`, Gitea
//! `X-Gitea-Signature`: HMAC-SHA256 of the body; GitLab `X-Gitlab-Token`: the secret itself). An
//! accepted call makes the Git source fetch at once instead of at its next poll: on the leading
//! replica directly, on any other through the store (a key the leader's term watches).

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use capstan_git::source::SourceTrigger;
use capstan_runtime::ratelog::RateLimitedLog;
use capstan_store::{Store, Txn};
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::time::Instant;

/// The forge whose signature was accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forge {
    GitHub,
    Gitea,
    GitLab,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WebhookError {
    #[error("the call carries no signature (X-Hub-Signature-256, X-Gitea-Signature or X-Gitlab-Token)")]
    Unsigned,
    #[error("the {0} does not match the webhook secret")]
    Mismatch(&'static str),
}

/// Checks the call's proof of the secret.
pub fn verify(headers: &HeaderMap, body: &[u8], secret: &[u8]) -> Result<Forge, WebhookError> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    if let Some(sig) = header("x-hub-signature-256") {
        let given = sig.strip_prefix("sha256=").and_then(|h| hex::decode(h).ok()).unwrap_or_default();
        return equal(&given, &hmac_sha256(secret, body))
            .then_some(Forge::GitHub)
            .ok_or(WebhookError::Mismatch("X-Hub-Signature-256"));
    }
    if let Some(sig) = header("x-gitea-signature") {
        let given = hex::decode(sig).unwrap_or_default();
        return equal(&given, &hmac_sha256(secret, body))
            .then_some(Forge::Gitea)
            .ok_or(WebhookError::Mismatch("X-Gitea-Signature"));
    }
    if let Some(token) = header("x-gitlab-token") {
        return equal(token.as_bytes(), secret)
            .then_some(Forge::GitLab)
            .ok_or(WebhookError::Mismatch("X-Gitlab-Token"));
    }
    Err(WebhookError::Unsigned)
}

/// HMAC-SHA256 (RFC 2104).
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut k = [0u8; BLOCK];
    if key.len() > BLOCK {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| k.map(|b| b ^ byte);
    let inner = Sha256::new().chain_update(pad(0x36)).chain_update(message).finalize();
    Sha256::new().chain_update(pad(0x5c)).chain_update(inner).finalize().into()
}

/// Compares without stopping at the first difference, so timing tells nothing about the secret.
fn equal(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// How long a delivery is remembered, and how many at most: a replay within the window is
/// refused (GitHub and Gitea sign only the body, and a forge never sends one body twice; a
/// redelivery of an old push has nothing new to fetch anyway).
const REPLAY_WINDOW: Duration = Duration::from_secs(3600);
const REPLAY_MEMORY: usize = 10_000;

/// The deliveries seen within the window: their delivery ids and body digests.
#[derive(Default)]
struct Seen {
    order: VecDeque<(Instant, String)>,
    keys: HashSet<String>,
}

impl Seen {
    /// Records a delivery's keys; false if any was seen within the window.
    fn first_time(&mut self, keys: &[String], now: Instant) -> bool {
        while let Some((at, key)) = self.order.front() {
            if now.duration_since(*at) < REPLAY_WINDOW && self.order.len() < REPLAY_MEMORY {
                break;
            }
            self.keys.remove(key);
            self.order.pop_front();
        }
        if keys.iter().any(|k| self.keys.contains(k)) {
            return false;
        }
        for k in keys {
            self.keys.insert(k.clone());
            self.order.push_back((now, k.clone()));
        }
        true
    }
}

/// The keys a delivery is known by: the forge's delivery id, and the digest of its body.
fn delivery_keys(headers: &HeaderMap, body: &[u8]) -> Vec<String> {
    let mut keys = vec![format!("body:{}", hex::encode(Sha256::digest(body)))];
    for name in ["x-github-delivery", "x-gitea-delivery", "x-gitlab-event-uuid"] {
        if let Some(id) = headers.get(name).and_then(|v| v.to_str().ok()) {
            keys.push(format!("{name}:{id}"));
        }
    }
    keys
}

/// The Git source of the term running on this replica, if it leads.
pub type TriggerSlot = Arc<std::sync::RwLock<Option<SourceTrigger>>>;

/// Written by a replica that does not lead when a webhook call reaches it; the leader's term
/// watches it and fetches (see [`follow_fetch_requests`]).
pub const FETCH_KEY: &str = "/capstan/sync/fetch";

/// Makes `source` fetch whenever another replica writes [`FETCH_KEY`], until `stop`.
pub async fn follow_fetch_requests(store: Arc<dyn Store>, source: SourceTrigger, stop: tokio_util::sync::CancellationToken) {
    let mut requests = match store.watch(FETCH_KEY, store.revision()) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "webhook calls reaching other replicas will not be followed");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            request = requests.recv() => match request {
                Some(Ok(_)) => {
                    tracing::info!("webhook: another replica was called; fetching now");
                    source.trigger();
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "the watch of webhook calls ended");
                    return;
                }
                None => return,
            },
        }
    }
}

struct Hook {
    secret: Vec<u8>,
    trigger: TriggerSlot,
    store: Arc<dyn Store>,
    seen: Mutex<Seen>,
    refused: Mutex<RateLimitedLog>,
}

/// The route, to merge into the API server's unauthenticated routes.
pub fn routes<S: Clone + Send + Sync + 'static>(secret: Vec<u8>, trigger: TriggerSlot, store: Arc<dyn Store>) -> Router<S> {
    let hook = Arc::new(Hook {
        secret,
        trigger,
        store,
        seen: Mutex::new(Seen::default()),
        refused: Mutex::new(RateLimitedLog::new(Duration::from_secs(10))),
    });
    Router::new().route("/hooks/git", post(handle).with_state(hook))
}

fn failure(code: StatusCode, reason: &str, message: String) -> Response {
    let status =
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message, "reason": reason, "code": code.as_u16()});
    (code, axum::Json(status)).into_response()
}

async fn handle(State(hook): State<Arc<Hook>>, headers: HeaderMap, body: Bytes) -> Response {
    match verify(&headers, &body, &hook.secret) {
        Ok(forge) => {
            let fresh = hook
                .seen
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .first_time(&delivery_keys(&headers, &body), Instant::now());
            if !fresh {
                return failure(
                    StatusCode::CONFLICT,
                    "AlreadyExists",
                    "this delivery was received before: replays are refused".into(),
                );
            }
            let leading = hook.trigger.read().unwrap_or_else(|p| p.into_inner()).clone();
            match leading {
                Some(source) => {
                    tracing::info!(?forge, "webhook: fetching now");
                    source.trigger();
                }
                None => {
                    let at = capstan_api::time::now_rfc3339();
                    if let Err(e) = hook.store.txn(Txn::default().put(FETCH_KEY, at)).await {
                        return failure(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "ServiceUnavailable",
                            format!("this replica does not lead and cannot tell the leader to fetch: {e}"),
                        );
                    }
                    tracing::info!(?forge, "webhook: the leading replica is told to fetch");
                }
            }
            (
                StatusCode::ACCEPTED,
                axum::Json(json!({"status": "accepted", "forge": format!("{forge:?}")})),
            )
                .into_response()
        }
        Err(e) => {
            // Anyone can call: refusals are logged at a bounded rate.
            hook.refused
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .warn(|suppressed| tracing::warn!(suppressed, "webhook refused: {e}"));
            failure(StatusCode::UNAUTHORIZED, "Unauthorized", e.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(name: &'static str, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, value.parse().unwrap());
        h
    }

    #[test]
    fn hmac_matches_rfc_4231_test_case_2() {
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(hex::encode(mac), "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    }

    #[test]
    fn hmac_with_a_key_longer_than_a_block_hashes_it_first() {
        // RFC 4231 test case 6.
        let mac = hmac_sha256(&[0xaa; 131], b"Test Using Larger Than Block-Size Key - Hash Key First");
        assert_eq!(hex::encode(mac), "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");
    }

    #[test]
    fn each_forge_is_accepted_with_the_secret_and_refused_without() {
        let body = br#"{"ref":"refs/heads/main"}"#;
        let sig = hex::encode(hmac_sha256(b"s3cret", body));
        assert_eq!(
            verify(&headers("x-hub-signature-256", &format!("sha256={sig}")), body, b"s3cret"),
            Ok(Forge::GitHub)
        );
        assert_eq!(verify(&headers("x-gitea-signature", &sig), body, b"s3cret"), Ok(Forge::Gitea));
        assert_eq!(verify(&headers("x-gitlab-token", "s3cret"), body, b"s3cret"), Ok(Forge::GitLab));
        assert_eq!(
            verify(
                &headers("x-hub-signature-256", &format!("sha256={sig}")),
                b"another body",
                b"s3cret"
            ),
            Err(WebhookError::Mismatch("X-Hub-Signature-256"))
        );
        assert_eq!(
            verify(&headers("x-gitlab-token", "guess"), body, b"s3cret"),
            Err(WebhookError::Mismatch("X-Gitlab-Token"))
        );
        assert_eq!(verify(&HeaderMap::new(), body, b"s3cret"), Err(WebhookError::Unsigned));
    }

    #[test]
    fn a_delivery_is_accepted_once_within_the_window() {
        let mut seen = Seen::default();
        let t0 = Instant::now();
        let a = delivery_keys(&headers("x-github-delivery", "id-1"), b"push 1");
        assert!(seen.first_time(&a, t0));
        assert!(!seen.first_time(&a, t0), "the same delivery again");
        let new_id_same_body = delivery_keys(&headers("x-github-delivery", "id-2"), b"push 1");
        assert!(
            !seen.first_time(&new_id_same_body, t0),
            "the delivery id is not signed: the body decides"
        );
        assert!(seen.first_time(&delivery_keys(&HeaderMap::new(), b"push 2"), t0));
        assert!(
            seen.first_time(&a, t0 + REPLAY_WINDOW + Duration::from_secs(1)),
            "forgotten after the window"
        );
    }
}
