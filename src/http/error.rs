//! `ApiError`: every HTTP error, rendered in exactly one place as
//! `{"error": "<message>", "code": <status>}` (protocol.md 5.1). Internal causes never reach clients.

use bytes::Bytes;
use http::{header, Response, StatusCode};
use http_body_util::Full;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("Method not allowed")]
    MethodNotAllowed,
    #[error("Request timeout: the body did not arrive in time")]
    RequestTimeout,
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    TooManyRequests(String),
    /// A backend did not answer. The message is fixed: the cause is logged where the error is
    /// handled and never reaches the client.
    #[error("Service unavailable: the cluster backend did not answer")]
    Unavailable,
    #[error("Upgrade required: this endpoint speaks WebSocket")]
    UpgradeRequired,
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::UpgradeRequired => StatusCode::UPGRADE_REQUIRED,
        }
    }

    pub fn into_response(self) -> Response<Full<Bytes>> {
        let status = self.status();
        let body = serde_json::json!({"error": self.to_string(), "code": status.as_u16()});
        json_response(status, &body)
    }
}

/// A JSON response with `Content-Type: application/json`.
pub fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    let mut resp = Response::new(Full::new(Bytes::from(bytes)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}
