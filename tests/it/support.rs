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

/// The default test app with `app_extra`'s lines in its table, then `more` (other `[[apps]]`,
/// other sections): a shorthand for [`TestConfig`].
pub fn config(app_extra: &str, more: &str) -> String {
    TestConfig::new().app_lines(app_extra).more(more).toml()
}

/// A value written into the TOML a [`TestConfig`] renders.
pub trait TomlValue {
    fn to_toml(&self) -> String;
}

impl TomlValue for &str {
    fn to_toml(&self) -> String {
        // A JSON string is a valid TOML basic string.
        Value::from(*self).to_string()
    }
}

impl TomlValue for String {
    fn to_toml(&self) -> String {
        self.as_str().to_toml()
    }
}

impl TomlValue for &std::path::Path {
    fn to_toml(&self) -> String {
        self.display().to_string().to_toml()
    }
}

impl TomlValue for bool {
    fn to_toml(&self) -> String {
        self.to_string()
    }
}

macro_rules! toml_numbers {
    ($($t:ty),*) => {$(
        impl TomlValue for $t {
            fn to_toml(&self) -> String {
                self.to_string()
            }
        }
    )*};
}
toml_numbers!(u16, u32, u64, usize, i32, i64, f64);

impl<T: TomlValue> TomlValue for &[T] {
    fn to_toml(&self) -> String {
        let items: Vec<String> = self.iter().map(TomlValue::to_toml).collect();
        format!("[{}]", items.join(", "))
    }
}

impl<T: TomlValue> TomlValue for Vec<T> {
    fn to_toml(&self) -> String {
        self.as_slice().to_toml()
    }
}

/// A server configuration for a test, built by section: loopback on port 0 with a 2 s grace
/// period, and the test app (`APP_ID`/`KEY`/`SECRET`, client events on). Every setting goes
/// into the table it belongs to, so no test edits the text another helper rendered.
///
/// ```ignore
/// TestConfig::new().app_setting("max_connections", 2).scaling(&prefix)
///     .scaling_setting("redis_url", REDIS).webhook(&url).toml()
/// ```
#[derive(Clone, Debug, Default)]
pub struct TestConfig {
    server: Vec<String>,
    tls: Vec<String>,
    scaling: Vec<String>,
    app: Vec<String>,
    app_lines: Vec<String>,
    webhooks: Vec<String>,
    more: Vec<String>,
}

impl TestConfig {
    pub fn new() -> TestConfig {
        TestConfig::default()
    }

    /// `key = value` in `[server]`.
    pub fn server_setting(mut self, key: &str, value: impl TomlValue) -> TestConfig {
        self.server.push(format!("{key} = {}", value.to_toml()));
        self
    }

    /// `[server.tls]` with these certificate and key files.
    pub fn tls(mut self, cert: &std::path::Path, key: &std::path::Path) -> TestConfig {
        self.tls = vec![
            format!("cert = {}", cert.to_toml()),
            format!("key = {}", key.to_toml()),
        ];
        self
    }

    /// `[scaling]` turned on, with `prefix` as the cluster's channel (key and topic prefix).
    pub fn scaling(mut self, prefix: &str) -> TestConfig {
        self.scaling
            .insert(0, format!("channel = {}", prefix.to_toml()));
        self.scaling.insert(0, "enabled = true".to_string());
        self
    }

    /// `key = value` in `[scaling]`.
    pub fn scaling_setting(mut self, key: &str, value: impl TomlValue) -> TestConfig {
        self.scaling.push(format!("{key} = {}", value.to_toml()));
        self
    }

    /// Lines of TOML in `[scaling]`, as the test wrote them.
    pub fn scaling_lines(mut self, lines: &str) -> TestConfig {
        self.scaling.push(lines.to_string());
        self
    }

    /// `key = value` in the test app's table.
    pub fn app_setting(mut self, key: &str, value: impl TomlValue) -> TestConfig {
        self.app.push(format!("{key} = {}", value.to_toml()));
        self
    }

    /// Lines of TOML in the test app's table, after its settings (they may end with
    /// sub-tables such as `[[apps.webhooks]]`).
    pub fn app_lines(mut self, lines: &str) -> TestConfig {
        self.app_lines.push(lines.to_string());
        self
    }

    /// A webhook target of the test app, for every event type.
    pub fn webhook(mut self, url: &str) -> TestConfig {
        self.webhooks
            .push(format!("[[apps.webhooks]]\nurl = {}", url.to_toml()));
        self
    }

    /// TOML after the test app: more `[[apps]]`, or top-level sections such as `[webhooks]`.
    pub fn more(mut self, toml: &str) -> TestConfig {
        self.more.push(toml.to_string());
        self
    }

    /// The configuration file's text.
    pub fn toml(&self) -> String {
        let mut out =
            String::from("[server]\nhost = \"127.0.0.1\"\nport = 0\nshutdown_grace_period = 2\n");
        for line in &self.server {
            out += &format!("{line}\n");
        }
        if !self.tls.is_empty() {
            out += &format!("\n[server.tls]\n{}\n", self.tls.join("\n"));
        }
        if !self.scaling.is_empty() {
            out += &format!("\n[scaling]\n{}\n", self.scaling.join("\n"));
        }
        out += &format!(
            "\n[[apps]]\nid = \"{APP_ID}\"\nkey = \"{KEY}\"\nsecret = \"{SECRET}\"\nenable_client_messages = true\n"
        );
        for line in self.app.iter().chain(&self.app_lines) {
            out += &format!("{line}\n");
        }
        for hook in &self.webhooks {
            out += &format!("\n{hook}\n");
        }
        for more in &self.more {
            out += &format!("\n{more}\n");
        }
        out
    }
}

pub struct TestServer {
    pub addr: SocketAddr,
    /// The debug console's own listener, when it has one.
    pub console_addr: Option<SocketAddr>,
    pub state: Arc<ServerState>,
    /// The configuration file it started from, which `reloader` reads again.
    pub config_path: std::path::PathBuf,
    pub reloader: Arc<resound::reload::Reloader>,
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
        let reload_path = path.clone();
        server.reload_from(Box::new(move || {
            load(&Sources {
                config_file: Some(&reload_path),
                ..Sources::default()
            })
        }));
        let reloader = server.reloader();
        let addr = server.local_addr().expect("addr");
        let console_addr = server.console_addr();
        let state = server.state();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async move {
            let _ = rx.await;
        }));
        TestServer {
            addr,
            console_addr,
            state,
            config_path: path,
            reloader,
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

    /// Asserts that no message arrives for `d` and that the connection is still open after it:
    /// a message, a close frame, a stream error or the end of the stream fails the test (only
    /// WebSocket pings and pongs are skipped), and a `pusher:ping` sent after the quiet spell
    /// must be answered by `pusher:pong` as the very next message. So a test of "nothing
    /// arrives" cannot pass because the server cut the socket. A test that expects a close
    /// uses [`Client::closed`] instead.
    pub async fn expect_silence(&mut self, d: Duration, what: &str) {
        let until = tokio::time::Instant::now() + d;
        loop {
            match tokio::time::timeout_at(until, self.ws.next()).await {
                Err(_) => break,
                Ok(Some(Ok(Message::Text(t)))) => panic!("{what}: unexpected message {t}"),
                Ok(Some(Ok(Message::Binary(b)))) => {
                    panic!("{what}: unexpected binary message of {} bytes", b.len())
                }
                Ok(Some(Ok(Message::Close(frame)))) => {
                    panic!("{what}: the server closed the connection ({frame:?})")
                }
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(e))) => panic!("{what}: the connection failed: {e}"),
                Ok(None) => panic!("{what}: the connection ended"),
            }
        }
        self.assert_alive(&format!("{what}: still open after the silence"))
            .await;
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

    /// Pings and expects the pong next: the connection is open, and every message it sent
    /// before was handled (a connection handles its messages in order).
    pub async fn assert_alive(&mut self, what: &str) {
        self.send(json!({"event":"pusher:ping"})).await;
        assert_eq!(self.recv().await["event"], "pusher:pong", "{what}");
    }

    /// Reads until the close frame; returns its code.
    pub async fn closed(&mut self) -> Option<u16> {
        closed_code(&mut self.ws).await
    }

    /// Connects to `url`: `None` when the connection is established, else the code of the
    /// `pusher:error` the server refused it with.
    pub async fn try_connect_code(url: &str) -> Option<u16> {
        let (mut ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("connect");
        let first = next_json(&mut ws).await.expect("a first message");
        match first["event"].as_str() {
            Some("pusher:connection_established") => None,
            _ => first["data"]["code"]
                .as_u64()
                .and_then(|c| u16::try_from(c).ok()),
        }
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
    pub headers: http::HeaderMap,
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
        self.post_with(rest, body, &[]).await
    }

    /// A signed POST with extra request `headers`.
    pub async fn post_with(&self, rest: &str, body: &Value, headers: &[(&str, &str)]) -> Reply {
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
        request_with(
            "POST",
            &format!("{}{}?{}", self.base, path, q),
            body,
            headers,
        )
        .await
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
    request_with(method, url, body, &[]).await
}

/// A request with extra `headers`; `Reply::headers` has the answer's.
pub async fn request_with(
    method: &str,
    url: &str,
    body: String,
    headers: &[(&str, &str)],
) -> Reply {
    let client: HttpClient<_, Full<bytes::Bytes>> =
        HttpClient::builder(TokioExecutor::new()).build_http();
    let mut req = http::Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(Full::new(bytes::Bytes::from(body)))
        .expect("request");
    let resp = client.request(req).await.expect("http request");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    let text = String::from_utf8_lossy(&bytes).to_string();
    Reply {
        status,
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
        text,
        headers,
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

#[test]
fn test_config_puts_each_setting_in_its_table() {
    let toml = TestConfig::new()
        .server_setting("path", "/reverb")
        .server_setting("outbound_queue_size", 16)
        .tls(
            std::path::Path::new("/tmp/cert.pem"),
            std::path::Path::new("/tmp/key.pem"),
        )
        .scaling("it-prefix")
        .scaling_setting("redis_url", "redis://127.0.0.1:6379/0")
        .scaling_setting("cluster_nodes", vec!["redis://a:1", "redis://b:2"])
        .app_setting("max_connections", 2)
        .app_lines("cache_ttl = 7")
        .webhook("http://127.0.0.1:9/hook")
        .more("[[apps]]\nid = \"2\"\nkey = \"k2\"\nsecret = \"s2\"")
        .toml();
    let file: resound::config::FileConfig = toml::from_str(&toml).expect("valid configuration");
    assert_eq!(file.server.path, "/reverb", "{toml}");
    assert_eq!(file.server.outbound_queue_size, 16);
    let tls = file.server.tls.expect("[server.tls]");
    assert_eq!(tls.cert, std::path::Path::new("/tmp/cert.pem"));
    assert!(file.scaling.enabled);
    assert_eq!(file.scaling.channel, "it-prefix");
    assert_eq!(file.scaling.redis_url, "redis://127.0.0.1:6379/0");
    assert_eq!(file.scaling.cluster_nodes, ["redis://a:1", "redis://b:2"]);
    let app = &file.apps[0];
    assert_eq!((app.id.as_str(), app.key.as_str()), (APP_ID, KEY));
    assert_eq!(app.max_connections, Some(2));
    assert_eq!(app.cache_ttl, Some(7));
    assert_eq!(app.webhooks.len(), 1);
    assert_eq!(app.webhooks[0].url, "http://127.0.0.1:9/hook");
    assert_eq!(file.apps[1].id, "2");
    assert_eq!(file.apps.len(), 2);
}

impl Client {
    /// Sends a signed presence subscribe and reads nothing.
    pub async fn try_presence_silently(&mut self, channel: &str, channel_data: &str) {
        self.ask_presence(channel, channel_data).await;
    }
}
