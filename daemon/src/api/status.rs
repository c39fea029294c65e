//! Errors as Kubernetes `Status` objects: JSON with the HTTP code, a reason kubectl prints in
//! parentheses, and a message it prints verbatim.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::objects::ObjectError;

/// An API error, rendered as a `Status`.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: StatusCode,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
    /// Whether the message is also sent as a `Warning` header: kubectl prints warnings on a line
    /// of their own, before an error it would otherwise bury under the request it made.
    pub warn: bool,
}

impl ApiError {
    pub fn new(code: StatusCode, reason: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
            warn: false,
        }
    }

    /// The same error, with its message sent as a `Warning` header too.
    pub fn warned(mut self) -> ApiError {
        self.warn = true;
        self
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "NotFound", message)
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "BadRequest", message)
    }

    pub fn unauthorized() -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "Unauthorized: a valid bearer token is required",
        )
    }

    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "Forbidden", message)
    }

    pub fn method_not_allowed(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", message)
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", message)
    }

    pub fn with_details(mut self, name: &str, group: &str, kind: &str) -> ApiError {
        self.details = Some(json!({"name": name, "group": group, "kind": kind}));
        self
    }

    /// Adds a cause (`field: message`, as Kubernetes' field errors read) to the details, which
    /// kubectl lists under "is invalid".
    pub fn with_cause(mut self, error: &str) -> ApiError {
        let (field, message) = error.split_once(": ").unwrap_or(("", error));
        let reason = [
            ("Forbidden", "FieldValueForbidden"),
            ("Required value", "FieldValueRequired"),
            ("Duplicate value", "FieldValueDuplicate"),
            ("Not found", "FieldValueNotFound"),
        ]
        .iter()
        .find(|(prefix, _)| message.starts_with(prefix))
        .map_or("FieldValueInvalid", |(_, reason)| reason);
        let details = self.details.get_or_insert_with(|| json!({}));
        let cause = json!({"reason": reason, "message": message, "field": field});
        match details["causes"].as_array_mut() {
            Some(causes) => causes.push(cause),
            None => details["causes"] = json!([cause]),
        }
        self
    }

    /// The `Status` object.
    pub fn to_status(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code.as_u16(),
        });
        if let Some(d) = &self.details {
            s["details"] = d.clone();
        }
        s
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self.to_status()).unwrap_or_default();
        let mut resp = (self.code, [(axum::http::header::CONTENT_TYPE, "application/json")], body).into_response();
        if self.warn {
            add_warning(&mut resp, &self.message);
        }
        // The audit trail records why a request was refused.
        if matches!(
            self.code,
            StatusCode::FORBIDDEN | StatusCode::UNAUTHORIZED | StatusCode::METHOD_NOT_ALLOWED
        ) {
            resp.extensions_mut().insert(Refusal(self.message));
        }
        resp
    }
}

/// Why a response refuses its request, for the audit trail.
#[derive(Clone, Debug)]
pub struct Refusal(pub String);

/// Adds a `Warning: 299 - "text"` header (RFC 7234, as kube-apiserver sends them); kubectl
/// prints each distinct warning once. Text that cannot be a header value is left out.
pub fn add_warning(resp: &mut Response, text: &str) {
    let quoted = text.replace('\\', "\\\\").replace('"', "\\\"");
    if let Ok(v) = axum::http::HeaderValue::from_str(&format!("299 - \"{quoted}\"")) {
        resp.headers_mut().append(axum::http::header::WARNING, v);
    }
}

impl From<ObjectError> for ApiError {
    fn from(e: ObjectError) -> ApiError {
        let msg = e.to_string();
        match e {
            ObjectError::NotFound { .. } => ApiError::not_found(msg),
            ObjectError::AlreadyExists { .. } => ApiError::new(StatusCode::CONFLICT, "AlreadyExists", msg),
            ObjectError::Conflict { .. } => ApiError::new(StatusCode::CONFLICT, "Conflict", msg),
            ObjectError::Invalid { .. } => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", msg),
            // Nothing was written; the client may try again (kube-apiserver answers a lost
            // etcd the same way).
            ObjectError::Store(capstan_store::StoreError::Unavailable(_)) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", msg)
            }
            ObjectError::Store(_) => ApiError::internal(msg),
        }
    }
}
