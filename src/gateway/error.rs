//! Errors as the Managed Agents API sends them: one envelope,
//! `{"type":"error","error":{"type":…,"message":…,"details":{"error_code":…}},"request_id":…}`,
//! with the status the SDK maps to its exception classes, and `x-should-retry: false` on the
//! 409s that a retry cannot fix (the SDK retries every 409 otherwise).

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::api::{ApiError, ErrorClass};

use super::store::StoreError;

/// An error answer, rendered with its request id by the gateway's outer layer.
#[derive(Debug, Clone)]
pub struct HttpError {
    /// The status.
    pub status: StatusCode,
    /// The envelope's `error.type`.
    pub kind: &'static str,
    /// What was wrong, for people.
    pub message: String,
    /// `error.details.error_code`, which the SDK maps to exception subclasses.
    pub code: Option<&'static str>,
}

impl HttpError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            message: message.into(),
            code: None,
        }
    }

    /// 400: the request is malformed or names something herd cannot honour.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    /// 401: no key, or not a valid one.
    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "authentication_error", message)
    }

    /// 403: the key may not do this.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "permission_error", message)
    }

    /// 404: no such object for this tenant (another tenant's object is one of these too).
    pub fn not_found(what: &str, id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found_error",
            format!("{what} {id:?} not found"),
        )
    }

    /// 409: the object changed, or its state forbids this now. Not retried.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict_error", message)
    }

    /// 413: a body over the gateway's bound.
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            message,
        )
    }

    /// 429: a bound on concurrent use (streams) is reached; retried by the SDK.
    pub fn busy(message: impl Into<String>) -> Self {
        Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", message)
    }

    /// 503: NATS is out of reach; the same request may succeed later (the SDK retries).
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded_error", message)
    }

    /// Adds `details.error_code`.
    pub fn code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    /// The envelope, with its request id.
    pub fn envelope(&self, request_id: &str) -> Value {
        let mut error = json!({"type": self.kind, "message": self.message});
        if let Some(code) = self.code {
            error["details"] = json!({"error_code": code});
        }
        json!({"type": "error", "error": error, "request_id": request_id})
    }

    /// The error for a status the router or a body extractor produced on its own (an
    /// unknown route, a wrong method, a body over the limit).
    pub fn for_status(status: StatusCode) -> Self {
        match status {
            StatusCode::NOT_FOUND => Self::new(
                status,
                "not_found_error",
                "no such route in the Managed Agents API",
            ),
            StatusCode::METHOD_NOT_ALLOWED => Self::new(
                status,
                "invalid_request_error",
                "this route does not take that method",
            ),
            StatusCode::PAYLOAD_TOO_LARGE => Self::too_large(format!(
                "the request body is larger than {} bytes",
                super::MAX_BODY_BYTES
            )),
            s if s.is_server_error() => Self::new(s, "api_error", "the gateway failed"),
            s => Self::new(s, "invalid_request_error", "the request was refused"),
        }
    }
}

impl IntoResponse for HttpError {
    /// The status and headers; the gateway's outer layer writes the envelope with the
    /// request id (which it made), finding the error in the response's extensions.
    fn into_response(self) -> Response {
        let mut r = self.status.into_response();
        if self.status == StatusCode::CONFLICT || self.status == StatusCode::BAD_REQUEST {
            r.headers_mut()
                .insert("x-should-retry", HeaderValue::from_static("false"));
        }
        r.extensions_mut().insert(self);
        r
    }
}

impl From<ApiError> for HttpError {
    fn from(e: ApiError) -> Self {
        let message = e.to_string();
        match e.class() {
            ErrorClass::NotFound => Self::new(StatusCode::NOT_FOUND, "not_found_error", message),
            ErrorClass::Conflict => Self::conflict(message),
            ErrorClass::Forbidden => Self::forbidden(message),
            ErrorClass::Invalid => Self::invalid(message),
            ErrorClass::Unavailable => Self::unavailable(message),
        }
    }
}

impl From<StoreError> for HttpError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict => Self::conflict(e.to_string()),
            StoreError::Full(_) => {
                Self::new(StatusCode::INSUFFICIENT_STORAGE, "api_error", e.to_string())
            }
            StoreError::Unavailable(_) => Self::unavailable(e.to_string()),
            StoreError::Corrupt { .. } => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "api_error",
                e.to_string(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_envelope_is_the_sdks() {
        let e = HttpError::not_found("environment", "env_x").code("environment_not_found");
        let v = e.envelope("req_1");
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "not_found_error");
        assert_eq!(v["error"]["details"]["error_code"], "environment_not_found");
        assert_eq!(v["request_id"], "req_1");
        let r = HttpError::conflict("stale").into_response();
        assert_eq!(r.status(), StatusCode::CONFLICT);
        assert_eq!(r.headers()["x-should-retry"], "false");
    }
}
