//! How one attempt reaches a receiver: the [`Transport`] seam and [`HyperTransport`], the
//! production implementation on hyper-util's pooled legacy client (HTTP/1.1, plain or over
//! rustls for `https://` targets).
//!
//! A transport makes exactly one attempt and reports the status; timeouts, retries and
//! metrics belong to `delivery.rs`, so tests can swap in a scripted transport and run the
//! retry schedule under paused time.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use super::error::{AttemptError, WebhookError};
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

/// hyper-util's legacy client; `https://` targets are verified against the bundled Mozilla
/// roots, the system's trust store and, when configured, an extra CA file.
pub(crate) struct HyperTransport {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl HyperTransport {
    /// `idle_per_host` bounds pooled connections per receiver (one per delivery lane).
    /// `ca_file` adds PEM certificates to the trusted roots (a private CA, or a receiver's
    /// self-signed certificate); an unreadable or empty file is an error.
    pub(crate) fn new(idle_per_host: usize, ca_file: Option<&Path>) -> Result<Self, WebhookError> {
        let tls = client_tls(ca_file)?;
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.enforce_http(false);
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_max_idle_per_host(idle_per_host)
            .build(connector);
        Ok(HyperTransport { client })
    }
}

/// The TLS client settings of every `https://` delivery: ring, TLS 1.2 and 1.3, no client
/// certificate.
fn client_tls(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, WebhookError> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    // The system store is a bonus: a machine without one still has the bundled roots.
    let native = rustls_native_certs::load_native_certs();
    let _ = roots.add_parsable_certificates(native.certs);
    if let Some(path) = ca_file {
        let shown = path.display().to_string();
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect::<Result<_, _>>())
            .map_err(|e| WebhookError::CaFile {
                path: shown.clone(),
                reason: e.to_string(),
            })?;
        if certs.is_empty() {
            return Err(WebhookError::CaFile {
                path: shown,
                reason: "no PEM certificate in it".to_owned(),
            });
        }
        for cert in certs {
            roots.add(cert).map_err(|e| WebhookError::CaFile {
                path: shown.clone(),
                reason: e.to_string(),
            })?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| WebhookError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_that_cannot_be_used_is_a_start_up_error() {
        let missing = Path::new("/nonexistent/resound-ca.pem");
        let err = client_tls(Some(missing)).err().map(|e| e.to_string());
        assert!(
            err.as_deref()
                .is_some_and(|e| e.contains("/nonexistent/resound-ca.pem")),
            "{err:?}"
        );

        let dir = std::env::temp_dir().join(format!("resound-ca-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "no certificates here\n").unwrap();
        let err = client_tls(Some(&empty)).err().map(|e| e.to_string());
        assert!(
            err.as_deref()
                .is_some_and(|e| e.contains("no PEM certificate")),
            "{err:?}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn bundled_roots_are_trusted_without_a_ca_file() {
        let config = client_tls(None).unwrap();
        assert!(config.alpn_protocols.is_empty());
        assert!(HyperTransport::new(4, None).is_ok());
    }
}
