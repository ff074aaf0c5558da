//! How one attempt reaches a receiver: the [`Transport`] seam and [`HyperTransport`], the
//! production implementation on hyper-util's pooled legacy client (plain HTTP/1.1).
//!
//! A transport makes exactly one attempt and reports the status; timeouts, retries and
//! metrics belong to `delivery.rs`, so tests can swap in a scripted transport and run the
//! retry schedule under paused time.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::error::AttemptError;
use super::payload::OutgoingRequest;

/// The future of one attempt.
pub(crate) type Attempt<'a> =
    Pin<Box<dyn Future<Output = Result<StatusCode, AttemptError>> + Send + 'a>>;

/// Sends one request once. Implementations must be cancel safe: the caller drops the future
/// when its timeout fires.
pub(crate) trait Transport: Send + Sync + 'static {
    fn post<'a>(&'a self, request: &'a OutgoingRequest) -> Attempt<'a>;
}

/// Response bodies are read (so the connection can go back to the pool) up to this size and
/// discarded; a larger body just costs that connection.
const MAX_RESPONSE_BODY: usize = 64 * 1024;
/// Idle pooled connections to a receiver are closed after this long.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// hyper-util's legacy client over plain HTTP. `https://` targets are refused at
/// configuration time (`validate_target_url`), so no TLS connector is needed yet.
pub(crate) struct HyperTransport {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl HyperTransport {
    /// `idle_per_host` bounds pooled connections per receiver (one per delivery lane).
    pub(crate) fn new(idle_per_host: usize) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_max_idle_per_host(idle_per_host)
            .build(connector);
        HyperTransport { client }
    }
}

impl Transport for HyperTransport {
    fn post<'a>(&'a self, request: &'a OutgoingRequest) -> Attempt<'a> {
        Box::pin(async move {
            let mut http_request = Request::new(Full::new(request.body.clone()));
            *http_request.method_mut() = Method::POST;
            *http_request.uri_mut() = request.uri.clone();
            *http_request.headers_mut() = request.headers.clone();
            let response = self.client.request(http_request).await?;
            let status = response.status();
            // Only the status matters; a body that fails or is too large is not an error.
            let _ = Limited::new(response.into_body(), MAX_RESPONSE_BODY)
                .collect()
                .await;
            Ok(status)
        })
    }
}
