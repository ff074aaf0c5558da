//! Webhooks from a real server to a real receiver on loopback (protocol.md 6).

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::support::*;
use resound::protocol::auth::hmac_sha256_hex;

struct Hook {
    content_type: String,
    key: String,
    signature: String,
    body: Bytes,
}

/// A receiver answering 200 to everything; returns its URL and the requests it saw.
async fn receiver() -> (String, mpsc::UnboundedReceiver<Hook>) {
    let (port, rx) = serve_hooks(None).await;
    (format!("http://127.0.0.1:{port}/hooks"), rx)
}

/// The receiver, over TLS when `tls` is given; returns its port.
async fn serve_hooks(
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> (u16, mpsc::UnboundedReceiver<Hook>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let tx = tx.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let tx = tx.clone();
                    async move {
                        let h = |n: &str| {
                            req.headers()
                                .get(n)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .to_string()
                        };
                        let (content_type, key, signature) = (
                            h("content-type"),
                            h("x-pusher-key"),
                            h("x-pusher-signature"),
                        );
                        let body = req
                            .into_body()
                            .collect()
                            .await
                            .map(|c| c.to_bytes())
                            .unwrap_or_default();
                        let _ = tx.send(Hook {
                            content_type,
                            key,
                            signature,
                            body,
                        });
                        Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(
                            b"ok",
                        ))))
                    }
                });
                let builder = http1::Builder::new();
                match tls {
                    None => {
                        let _ = builder.serve_connection(TokioIo::new(tcp), svc).await;
                    }
                    Some(tls) => {
                        // A client that does not trust the certificate fails here.
                        if let Ok(stream) = tls.accept(tcp).await {
                            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                        }
                    }
                }
            });
        }
    });
    (port, rx)
}

/// A self-signed certificate for `localhost`: (acceptor, certificate PEM).
fn self_signed() -> (tokio_rustls::TlsAcceptor, String) {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert = CertificateDer::from(ck.cert.der().to_vec());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()));
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
    (
        tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config)),
        ck.cert.pem(),
    )
}

/// Collects events (flattened across requests) until `n` arrived or `wait` passed.
async fn events(rx: &mut mpsc::UnboundedReceiver<Hook>, n: usize, wait: Duration) -> Vec<Value> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    while out.len() < n {
        let Ok(Some(h)) = tokio::time::timeout_at(deadline, rx.recv()).await else {
            break;
        };
        assert_eq!(
            h.content_type, "application/json",
            "exactly application/json, no charset"
        );
        assert_eq!(h.key, KEY);
        assert_eq!(
            h.signature,
            hmac_sha256_hex(SECRET.as_bytes(), &h.body),
            "signature over the raw body"
        );
        let v: Value = serde_json::from_slice(&h.body).unwrap();
        assert!(
            v["time_ms"].as_u64().is_some_and(|t| t > 1_600_000_000_000),
            "time_ms in milliseconds"
        );
        out.extend(v["events"].as_array().cloned().unwrap_or_default());
    }
    out
}

/// Asserts that no event arrives for 2.5 s.
async fn no_events(rx: &mut mpsc::UnboundedReceiver<Hook>, why: &str) {
    let got = events(rx, 1, Duration::from_millis(2500)).await;
    assert!(got.is_empty(), "{why}: {got:?}");
}

fn hook_config(url: &str) -> String {
    hooked(url).toml()
}

/// The test app with `url` as its webhook target and removals held for 1 s.
fn hooked(url: &str) -> TestConfig {
    TestConfig::new()
        .app_setting("webhook_removal_delay", 1)
        .webhook(url)
}

#[tokio::test]
async fn occupancy_presence_client_and_cache_events_arrive_signed() {
    let (url, mut rx) = receiver().await;
    let s = TestServer::start(&hook_config(&url)).await;
    let mut a = s.client().await;
    a.subscribe_presence("presence-room", r#"{"user_id":"42"}"#)
        .await;
    let got = events(&mut rx, 2, Duration::from_secs(5)).await;
    assert!(
        got.contains(&json!({"name":"channel_occupied","channel":"presence-room"})),
        "{got:?}"
    );
    assert!(
        got.contains(&json!({"name":"member_added","channel":"presence-room","user_id":"42"})),
        "{got:?}"
    );

    let mut b = s.client().await;
    b.subscribe_presence("presence-room", r#"{"user_id":"7"}"#)
        .await;
    a.send(json!({"event":"client-typing","channel":"presence-room","data":{"typing":true}}))
        .await;
    b.subscribe("cache-empty").await;
    // member_added (7), client_event, channel_occupied and cache_miss (cache-empty).
    let got = events(&mut rx, 4, Duration::from_secs(5)).await;
    assert!(
        got.contains(&json!({"name":"member_added","channel":"presence-room","user_id":"7"})),
        "{got:?}"
    );
    let client = got
        .iter()
        .find(|e| e["name"] == "client_event")
        .expect("client_event webhook");
    assert_eq!(client["event"], "client-typing");
    assert_eq!(
        client["data"], "{\"typing\":true}",
        "client_event data is a string"
    );
    assert_eq!(client["user_id"], "42");
    assert_eq!(client["socket_id"], a.socket_id.as_str());
    assert!(
        got.iter()
            .any(|e| e == &json!({"name":"cache_miss","channel":"cache-empty"})),
        "{got:?}"
    );

    // Leaving: member_removed and channel_vacated after the removal delay.
    drop(a);
    let got = events(&mut rx, 1, Duration::from_secs(5)).await;
    assert_eq!(
        got,
        vec![json!({"name":"member_removed","channel":"presence-room","user_id":"42"})]
    );
}

#[tokio::test]
async fn a_quick_return_cancels_vacated_and_the_re_occupied() {
    let (url, mut rx) = receiver().await;
    let s = TestServer::start(&hook_config(&url)).await;
    let mut a = s.client().await;
    a.subscribe("reload").await;
    assert_eq!(
        events(&mut rx, 1, Duration::from_secs(5)).await,
        vec![json!({"name":"channel_occupied","channel":"reload"})]
    );
    // A page reload: leave and come back within the delay.
    drop(a);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut b = s.client().await;
    b.subscribe("reload").await;
    no_events(&mut rx, "a reload must not produce vacated/occupied").await;
    // A real departure is reported after the delay.
    drop(b);
    let got = events(&mut rx, 1, Duration::from_secs(5)).await;
    assert_eq!(
        got,
        vec![json!({"name":"channel_vacated","channel":"reload"})]
    );
}

#[tokio::test]
async fn a_dead_receiver_does_not_slow_publishing() {
    let s = TestServer::start(&hook_config("http://127.0.0.1:9/never")).await;
    let mut c = s.client().await;
    c.subscribe("burst").await;
    let api = s.api();
    for i in 0..100 {
        let items: Vec<Value> = (0..10)
            .map(|j| json!({"channel":"burst","name":"e","data":format!("{}", i * 10 + j)}))
            .collect();
        assert_eq!(
            api.post("/batch_events", &json!({"batch": items}))
                .await
                .status,
            200
        );
    }
    for i in 0..1000 {
        assert_eq!(
            c.recv().await["data"],
            format!("{i}"),
            "every message arrives in order"
        );
    }
}

#[tokio::test]
async fn https_receivers_get_signed_events_when_their_certificate_is_trusted() {
    let (acceptor, pem) = self_signed();
    let (port, mut rx) = serve_hooks(Some(acceptor)).await;
    let url = format!("https://localhost:{port}/hooks");
    let dir = std::env::temp_dir().join(format!("resound-it-webhook-ca-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, pem).unwrap();

    // Trusted through `[webhooks] ca_file`: delivered and signed.
    let trusted = hooked(&url)
        .more(&format!("[webhooks]\nca_file = {}", ca.as_path().to_toml()))
        .toml();
    let s = TestServer::start(&trusted).await;
    let mut c = s.client().await;
    c.subscribe("secure").await;
    assert_eq!(
        events(&mut rx, 1, Duration::from_secs(5)).await,
        vec![json!({"name":"channel_occupied","channel":"secure"})]
    );

    // Not trusted: the certificate is refused, nothing arrives, and the failure is retried.
    let s2 = TestServer::start(&hook_config(&url)).await;
    let mut c2 = s2.client().await;
    c2.subscribe("insecure").await;
    no_events(&mut rx, "an untrusted certificate must not be accepted").await;
    let retried = sample(
        &s2,
        &format!("resound_webhooks_retried_total{{app_id=\"{APP_ID}\"}}"),
    )
    .await;
    assert!(retried >= 1.0, "the TLS failure is retried");
    let _ = std::fs::remove_dir_all(&dir);
}
