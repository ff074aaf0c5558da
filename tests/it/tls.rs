//! TLS in the binary: `wss://` and `https://` on one port, certificate reload on SIGHUP.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::json;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::support::*;

struct CertFiles {
    dir: PathBuf,
    der: Vec<u8>,
}

fn write_cert(dir: &Path) -> CertFiles {
    std::fs::create_dir_all(dir).unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::write(dir.join("cert.pem"), ck.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), ck.signing_key.serialize_pem()).unwrap();
    CertFiles {
        dir: dir.to_path_buf(),
        der: ck.cert.der().to_vec(),
    }
}

fn tls_config(c: &CertFiles, app_extra: &str) -> String {
    TestConfig::new()
        .tls(&c.dir.join("cert.pem"), &c.dir.join("key.pem"))
        .app_lines(app_extra)
        .toml()
}

fn connector(trusted: &[u8]) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(trusted.to_vec())).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

async fn tls_stream(port: u16, trusted: &[u8]) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    connector(trusted)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS handshake with the trusted certificate")
}

type TlsWs = tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>;

/// A `wss://` connection; returns it, the certificate the server presented and the first
/// message (`connection_established`).
async fn wss(port: u16, trusted: &[u8]) -> (TlsWs, Vec<u8>, serde_json::Value) {
    let stream = tls_stream(port, trusted).await;
    let presented = stream.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    let url = format!("wss://localhost:{port}/app/{KEY}?protocol=7");
    let (mut ws, _) = tokio_tungstenite::client_async(url, stream)
        .await
        .expect("wss handshake");
    let first = recv(&mut ws).await;
    (ws, presented, first)
}

async fn recv(ws: &mut TlsWs) -> serde_json::Value {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return serde_json::from_str(&t).unwrap(),
            Ok(Some(Ok(_))) => continue,
            other => panic!("expected a message over wss, got {other:?}"),
        }
    }
}

async fn send(ws: &mut TlsWs, v: serde_json::Value) {
    use futures_util::SinkExt;
    ws.send(tokio_tungstenite::tungstenite::Message::text(v.to_string()))
        .await
        .unwrap();
}

async fn https_get(port: u16, trusted: &[u8], path: &str) -> (u16, String) {
    let stream = tls_stream(port, trusted).await;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header("host", "localhost")
        .body(Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).to_string())
}

fn temp_dir(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "resound-tls-{}-{name}",
        resound::protocol::SocketId::random()
    ))
}

#[tokio::test]
async fn wss_and_https_share_the_port() {
    let cert = write_cert(&temp_dir("a"));
    let s = TestServer::start(&tls_config(&cert, "tls_only = true")).await;
    let port = s.addr.port();
    let (mut ws, _, first) = wss(port, &cert.der).await;
    assert_eq!(
        first["event"], "pusher:connection_established",
        "tls_only accepts a TLS connection"
    );
    send(
        &mut ws,
        json!({"event":"pusher:subscribe","data":{"channel":"secure"}}),
    )
    .await;
    assert_eq!(
        recv(&mut ws).await["event"],
        "pusher_internal:subscription_succeeded"
    );
    let (status, body) = https_get(port, &cert.der, "/up").await;
    assert_eq!((status, body.as_str()), (200, r#"{"health":"OK"}"#));
    // Plain TCP to a TLS port never reaches the application.
    let plain = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/app/{KEY}")).await;
    assert!(
        plain.is_err(),
        "a plain ws:// connection must not be served on the TLS port"
    );
}

#[tokio::test]
async fn tls_only_refuses_plain_connections_with_4000() {
    let s = TestServer::start(&config("tls_only = true", "")).await;
    let mut ws = Client::raw(&s.ws_url(KEY, "protocol=7")).await;
    let first = next_json(&mut ws).await.unwrap();
    assert_eq!(first["data"]["code"], 4000);
    assert_eq!(closed_code(&mut ws).await, Some(4000));
}

#[tokio::test]
async fn unreadable_certificates_stop_start_up_naming_the_file() {
    let dir = temp_dir("bad");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("cert.pem"), "not a certificate").unwrap();
    std::fs::write(dir.join("key.pem"), "not a key").unwrap();
    let toml = tls_config(
        &CertFiles {
            dir: dir.clone(),
            der: Vec::new(),
        },
        "",
    );
    let path = dir.join("resound.toml");
    std::fs::write(&path, toml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_resound"))
        .arg("--config")
        .arg(&path)
        .env("RESOUND_SERVER__PORT", "0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cert.pem"), "{stderr}");
}

#[tokio::test]
async fn sighup_reloads_the_certificate_without_dropping_connections() {
    let dir = temp_dir("reload");
    let first = write_cert(&dir);
    let toml = tls_config(&first, "");
    let path = dir.join("resound.toml");
    std::fs::write(&path, toml).unwrap();
    let server = ServerProcess::start(&path).await;
    let port = server.port;
    let (mut old, presented, _) = wss(port, &first.der).await;
    assert_eq!(presented, first.der);
    let second = write_cert(&dir);
    signal(&server.child, "-HUP");
    let mut presented = Vec::new();
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        if let Ok(s) = connector(&second.der)
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
        {
            presented = s.get_ref().1.peer_certificates().unwrap()[0].to_vec();
            break;
        }
    }
    assert_eq!(
        presented, second.der,
        "new connections get the new certificate"
    );
    send(&mut old, json!({"event":"pusher:ping"})).await;
    assert_eq!(
        recv(&mut old).await["event"],
        "pusher:pong",
        "the open connection survived the reload"
    );
}
