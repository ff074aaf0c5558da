//! Test harness: start a server from a TOML snippet, WebSocket clients that speak JSON, and a
//! signed HTTP client.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;
use resound::config::{load, Sources};
use resound::protocol::auth::{
    channel_string_to_sign, sign_token, signed_query, signin_string_to_sign,
};
use resound::protocol::SocketId;
use resound::server::Server;
use resound::state::ServerState;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const KEY: &str = "it-key";
pub const SECRET: &str = "it-secret";
pub const APP_ID: &str = "1001";

/// The default test app, plus whatever `extra` adds (more `[[apps]]`, or keys for this app).
pub fn config(app_extra: &str, more: &str) -> String {
    format!(
        "[server]\nhost = \"127.0.0.1\"\nport = 0\nshutdown_grace_period = 2\n\n[[apps]]\nid = \"{APP_ID}\"\nkey = \"{KEY}\"\nsecret = \"{SECRET}\"\nenable_client_messages = true\n{app_extra}\n{more}"
    )
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub state: Arc<ServerState>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    pub async fn start(toml: &str) -> TestServer {
        // `RUST_LOG=resound=debug cargo nextest run ...` shows the server's logs.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let dir = std::env::temp_dir().join(format!("resound-it-{}", rand_suffix()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("resound.toml");
        std::fs::write(&path, toml).expect("write config");
        let config = load(&Sources {
            config_file: Some(&path),
            ..Sources::default()
        })
        .expect("config");
        let server = Server::bind(config).await.expect("bind");
        let addr = server.local_addr().expect("addr");
        let state = server.state();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async move {
            let _ = rx.await;
        }));
        TestServer {
            addr,
            state,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    pub async fn default() -> TestServer {
        TestServer::start(&config("", "")).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn ws_url(&self, key: &str, query: &str) -> String {
        format!("ws://{}/app/{}?{}", self.addr, key, query)
    }

    /// Sends the shutdown signal and waits until the server returned.
    pub async fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
    }

    pub async fn client(&self) -> Client {
        Client::connect(&self.ws_url(KEY, "protocol=7&client=js&version=8.4.0&flash=false")).await
    }

    pub fn api(&self) -> Api {
        Api::of_test_app(format!("http://{}", self.addr))
    }
}

fn rand_suffix() -> String {
    format!("{}-{}", std::process::id(), SocketId::random())
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub struct Client {
    pub ws: Ws,
    pub socket_id: String,
    pub established: Value,
}

pub const WAIT: Duration = Duration::from_secs(3);

impl Client {
    /// Connects and reads `connection_established`.
    pub async fn connect(url: &str) -> Client {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("connect");
        let mut c = Client {
            ws,
            socket_id: String::new(),
            established: Value::Null,
        };
        let ev = c.recv().await;
        assert_eq!(ev["event"], "pusher:connection_established", "{ev}");
        let data: Value =
            serde_json::from_str(ev["data"].as_str().expect("data is a string")).expect("json");
        c.socket_id = data["socket_id"].as_str().expect("socket_id").to_string();
        c.established = data;
        c
    }

    /// Connects and returns the raw stream without reading anything.
    pub async fn raw(url: &str) -> Ws {
        tokio_tungstenite::connect_async(url)
            .await
            .expect("connect")
            .0
    }

    pub fn sid(&self) -> SocketId {
        self.socket_id.parse().expect("socket id")
    }

    pub async fn send(&mut self, v: Value) {
        self.send_text(&v.to_string()).await;
    }

    pub async fn send_text(&mut self, s: &str) {
        self.ws
            .send(Message::text(s.to_string()))
            .await
            .expect("send");
    }

    /// The next text message as JSON (fails after `WAIT`).
    pub async fn recv(&mut self) -> Value {
        next_json(&mut self.ws)
            .await
            .expect("expected a message, got none")
    }

    /// Skips messages until `event` arrives.
    pub async fn recv_event(&mut self, event: &str) -> Value {
        loop {
            let v = self.recv().await;
            if v["event"] == event {
                return v;
            }
        }
    }

    /// Skips messages until `event` arrives, waiting through quiet spells longer than `recv`
    /// allows; fails after `within`.
    pub async fn await_event(&mut self, event: &str, within: Duration) -> Value {
        tokio::time::timeout(within, async {
            loop {
                if let Some(v) = next_json(&mut self.ws).await {
                    if v["event"] == event {
                        return v;
                    }
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no {event} within {within:?}"))
    }

    /// Asserts that nothing but pongs/pings arrives for `d`.
    pub async fn expect_silence(&mut self, d: Duration, what: &str) {
        if let Ok(Some(Ok(Message::Text(t)))) = tokio::time::timeout(d, self.ws.next()).await {
            panic!("{what}: unexpected message {t}");
        }
    }

    pub async fn subscribe(&mut self, channel: &str) -> Value {
        self.send(json!({"event":"pusher:subscribe","data":{"auth":"","channel":channel}}))
            .await;
        self.recv().await
    }

    pub async fn subscribe_private(&mut self, channel: &str) -> Value {
        let auth = sign_token(
            KEY,
            SECRET,
            &channel_string_to_sign(self.sid(), channel, None),
        );
        self.send(json!({"event":"pusher:subscribe","data":{"auth":auth,"channel":channel}}))
            .await;
        self.recv().await
    }

    pub async fn subscribe_presence(&mut self, channel: &str, channel_data: &str) -> Value {
        self.ask_presence(channel, channel_data).await;
        self.recv_event("pusher_internal:subscription_succeeded")
            .await
    }

    /// Sends a signed presence subscribe and returns the answer, whatever it is.
    pub async fn try_presence(&mut self, channel: &str, channel_data: &str) -> Value {
        self.ask_presence(channel, channel_data).await;
        self.recv().await
    }

    async fn ask_presence(&mut self, channel: &str, channel_data: &str) {
        let auth = sign_token(
            KEY,
            SECRET,
            &channel_string_to_sign(self.sid(), channel, Some(channel_data)),
        );
        self.send(json!({"event":"pusher:subscribe","data":{"auth":auth,"channel":channel,"channel_data":channel_data}})).await;
    }

    pub async fn signin(&mut self, user_data: &str) -> Value {
        let auth = sign_token(KEY, SECRET, &signin_string_to_sign(self.sid(), user_data));
        self.send(json!({"event":"pusher:signin","data":{"auth":auth,"user_data":user_data}}))
            .await;
        self.recv().await
    }

    /// Reads until the close frame; returns its code.
    /// Pings and expects the pong next: the connection is open, and every message it sent
    /// before was handled (a connection handles its messages in order).
    pub async fn assert_alive(&mut self, what: &str) {
        self.send(json!({"event":"pusher:ping"})).await;
        assert_eq!(self.recv().await["event"], "pusher:pong", "{what}");
    }

    pub async fn closed(&mut self) -> Option<u16> {
        closed_code(&mut self.ws).await
    }
}

pub async fn next_json(ws: &mut Ws) -> Option<Value> {
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                return Some(serde_json::from_str(&t).expect("valid JSON from server"))
            }
            Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Err(_) | Ok(Some(Err(_))) => return None,
            Ok(Some(Ok(_))) => continue,
        }
    }
}

/// Reads until a close frame (or the stream ends) and returns the close code.
pub async fn closed_code(ws: &mut Ws) -> Option<u16> {
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await {
            Ok(Some(Ok(Message::Close(Some(CloseFrame { code, .. }))))) => {
                return Some(code.into())
            }
            Ok(Some(Ok(Message::Close(None)))) | Ok(None) | Err(_) => return None,
            Ok(Some(Err(_))) => return None,
            Ok(Some(Ok(_))) => continue,
        }
    }
}

pub fn data_json(ev: &Value) -> Value {
    match &ev["data"] {
        Value::String(s) => serde_json::from_str(s).expect("data string holds JSON"),
        other => other.clone(),
    }
}

/// A signed HTTP API client (signing as the SDKs do).
pub struct Api {
    pub base: String,
    pub app_id: String,
    pub key: String,
    pub secret: String,
}

pub struct Reply {
    pub status: u16,
    pub body: Value,
    pub text: String,
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Api {
    /// The HTTP API of the test app at `base` (`http://host:port`).
    pub fn of_test_app(base: String) -> Api {
        Api {
            base,
            app_id: APP_ID.into(),
            key: KEY.into(),
            secret: SECRET.into(),
        }
    }

    pub fn path(&self, rest: &str) -> String {
        format!("/apps/{}{}", self.app_id, rest)
    }

    pub async fn post(&self, rest: &str, body: &Value) -> Reply {
        let body = body.to_string();
        let path = self.path(rest);
        let q = signed_query(
            &self.key,
            &self.secret,
            "POST",
            &path,
            now(),
            Some(body.as_bytes()),
            &[],
        );
        raw_request("POST", &format!("{}{}?{}", self.base, path, q), body).await
    }

    pub async fn get(&self, rest: &str, extra: &[(&str, &str)]) -> Reply {
        let path = self.path(rest);
        let q = signed_query(&self.key, &self.secret, "GET", &path, now(), None, extra);
        raw_request(
            "GET",
            &format!("{}{}?{}", self.base, path, q),
            String::new(),
        )
        .await
    }

    /// Repeats `GET rest` until its body is `expected` (10 s at most): for state that other
    /// nodes, or this node's handling of a departure, update after the client moved on.
    pub async fn get_until(&self, rest: &str, extra: &[(&str, &str)], expected: &Value) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let got = self.get(rest, extra).await.body;
            if &got == expected {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "GET {rest} {extra:?}: {got}, expected {expected}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn trigger(&self, channels: &[&str], name: &str, data: &str) -> Reply {
        self.post(
            "/events",
            &json!({"name": name, "data": data, "channels": channels}),
        )
        .await
    }
}

pub async fn raw_request(method: &str, url: &str, body: String) -> Reply {
    let client: HttpClient<_, Full<bytes::Bytes>> =
        HttpClient::builder(TokioExecutor::new()).build_http();
    let req = http::Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json")
        .body(Full::new(bytes::Bytes::from(body)))
        .expect("request");
    let resp = client.request(req).await.expect("http request");
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    let text = String::from_utf8_lossy(&bytes).to_string();
    Reply {
        status,
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
        text,
    }
}

/// A free loopback port (bound and released; good enough for tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until something listens on `port` (15 s at most).
pub async fn wait_up(port: u16) {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while std::time::Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("server on port {port} did not come up");
}

/// The value of the sample `name` (with its labels, if any) in a server's `/metrics`.
pub async fn sample(node: &TestServer, name: &str) -> f64 {
    raw_request("GET", &node.url("/metrics"), String::new())
        .await
        .text
        .lines()
        .find(|l| l.split(' ').next() == Some(name))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("{name} is not exported"))
}

/// Sends `sig` (`"-TERM"`, `"-STOP"`, ...) to a child process we started.
pub fn signal(child: &std::process::Child, sig: &str) {
    let sent = std::process::Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(sent.success(), "kill {sig} {}", child.id());
}

/// The real `resound` binary as a child process; killed (SIGKILL) when dropped.
pub struct ServerProcess {
    pub child: std::process::Child,
    pub port: u16,
}

impl ServerProcess {
    /// Starts `resound --config <config>` on a free port and waits until it listens.
    pub async fn start(config: &std::path::Path) -> ServerProcess {
        let port = free_port();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_resound"))
            .arg("--config")
            .arg(config)
            .env("RESOUND_SERVER__PORT", port.to_string())
            .env("RESOUND_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn resound");
        wait_up(port).await;
        ServerProcess { child, port }
    }
}

impl ServerProcess {
    pub fn ws_url(&self, key: &str, query: &str) -> String {
        format!("ws://127.0.0.1:{}/app/{key}?{query}", self.port)
    }

    /// A WebSocket client of the test app on this process.
    pub async fn client(&self) -> Client {
        Client::connect(&self.ws_url(KEY, "protocol=7")).await
    }

    /// The HTTP API of the test app on this process.
    pub fn api(&self) -> Api {
        Api::of_test_app(format!("http://127.0.0.1:{}", self.port))
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Client {
    /// Sends a signed presence subscribe and reads nothing.
    pub async fn try_presence_silently(&mut self, channel: &str, channel_data: &str) {
        self.ask_presence(channel, channel_data).await;
    }
}
