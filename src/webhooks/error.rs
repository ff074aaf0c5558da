//! Errors of the webhooks module.
//!
//! [`WebhookError`] is what the config layer and start-up see (bad URL, bad header, bad
//! settings, metric registration). [`AttemptError`] and [`BuildError`] stay inside the
//! dispatcher: a failed delivery never reaches the code that called `emit`; it is counted,
//! logged where it is handled, and retried or given up.

use std::time::Duration;

/// A configuration or start-up problem of the webhooks module.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// The target URL is not an absolute `http://` or `https://` URL with a host.
    #[error("webhook url {url:?} is invalid: {reason}")]
    InvalidUrl {
        /// The URL as configured, its user info and query redacted (`redact_url`).
        url: String,
        /// Why it was rejected.
        reason: String,
    },
    /// The extra CA file for `https://` targets cannot be used.
    #[error("webhook CA file {path:?} cannot be used: {reason}")]
    CaFile {
        /// The path as configured.
        path: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// The TLS client could not be set up.
    #[error("webhook TLS client: {0}")]
    Tls(String),
    /// A custom header has an invalid name or value, or would override a header the
    /// protocol owns (`Content-Type`, `X-Pusher-Key`, `X-Pusher-Signature`, framing headers).
    #[error("webhook header {name:?} rejected: {reason}")]
    InvalidHeader {
        /// The header name as configured.
        name: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// An event type name that is not one of the names of protocol.md 6.2.
    #[error("unknown webhook event type {0:?}")]
    UnknownKind(String),
    /// A dispatcher setting that cannot work (for example a zero queue capacity).
    #[error("invalid webhook dispatcher setting: {0}")]
    InvalidSettings(&'static str),
    /// `Webhooks::start` was called outside a tokio runtime.
    #[error("webhooks must be started inside a tokio runtime")]
    NoRuntime,
    /// A metric could not be registered (usually: the prefix is invalid or already used).
    #[error("registering webhook metrics failed: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// Why one webhook request could not be built (its events are then given up).
#[derive(Debug, thiserror::Error)]
pub(crate) enum BuildError {
    #[error("encoding the webhook body failed: {0}")]
    Encode(#[from] serde_json::Error),
    /// HMAC accepts keys of any length, so this cannot happen with HMAC-SHA256; it is an
    /// error rather than a panic because the crate allows no panic on the server path.
    #[error("the HMAC implementation rejected the signing key")]
    SigningKey,
    #[error("the app key is not a valid HTTP header value")]
    KeyHeader,
}

/// Why one delivery attempt did not produce an HTTP status.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AttemptError {
    #[error("no response within {0:?}")]
    Timeout(Duration),
    #[error("request failed: {0}")]
    Http(#[from] hyper_util::client::legacy::Error),
    #[cfg(test)]
    #[error("connection refused (simulated)")]
    Refused,
}

impl AttemptError {
    /// A short, secret-free description for logs (the request URL is never included).
    pub(crate) fn summary(&self) -> String {
        match self {
            AttemptError::Timeout(limit) => format!("timeout after {limit:?}"),
            AttemptError::Http(err) if err.is_connect() => "connection failed".to_owned(),
            AttemptError::Http(_) => "request failed".to_owned(),
            #[cfg(test)]
            AttemptError::Refused => "connection refused".to_owned(),
        }
    }
}
